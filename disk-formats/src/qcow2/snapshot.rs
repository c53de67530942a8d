//! The internal snapshot table, read only to list snapshots (we convert the active layer).
//!
//! Each entry (big-endian), padded to a multiple of 8 bytes:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0      | 8    | snapshot L1 table offset |
//! | 8      | 4    | snapshot L1 table entries |
//! | 12     | 2    | id string length |
//! | 14     | 2    | name length |
//! | 16     | 16   | date (s, ns), VM clock (ns) |
//! | 32     | 4    | VM state size |
//! | 36     | 4    | extra data size |
//! | 40     | n    | extra data: VM state size (8), virtual disk size (8), icount (8) ... |
//! |        |      | id string, then name (not NUL-terminated) |

use crate::image::SnapshotInfo;
use crate::io::ReadAt;
use crate::limits;
use crate::{Error, Result};

use super::header::{be16, be32, be64};

/// Fixed part of a snapshot table entry.
pub(crate) const ENTRY_HEADER_BYTES: usize = 40;
/// Extra data from this size on carries the snapshot's virtual disk size at offset 8.
const EXTRA_WITH_DISK_SIZE: usize = 16;
/// Table bytes fetched per read, so that many small entries cost few reads.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The variable lengths announced by an entry's fixed part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryLengths {
    pub extra: usize,
    pub id: usize,
    pub name: usize,
}

impl EntryLengths {
    /// Decodes the fixed part of an entry (`head` holds at least [`ENTRY_HEADER_BYTES`]).
    pub(crate) fn parse(head: &[u8], at: u64) -> Result<EntryLengths> {
        let field = |off, len| -> Result<usize> {
            let v = if len == 2 { be16(head, off).map(u32::from) } else { be32(head, off) };
            let v =
                v.ok_or_else(|| Error::invalid(format!("snapshot table entry at offset {at} is truncated")))?;
            Ok(v as usize)
        };
        let lengths = EntryLengths { id: field(12, 2)?, name: field(14, 2)?, extra: field(36, 4)? };
        if lengths.extra as u64 > limits::MAX_SNAPSHOT_EXTRA_DATA_BYTES {
            return Err(Error::invalid(format!(
                "snapshot table entry at offset {at} has {} bytes of extra data, more than the limit of {}",
                lengths.extra,
                limits::MAX_SNAPSHOT_EXTRA_DATA_BYTES
            )));
        }
        Ok(lengths)
    }

    /// Bytes after the fixed part (extra data, id, name).
    pub(crate) fn body(self) -> usize {
        self.extra + self.id + self.name
    }

    /// Bytes of the whole entry including padding.
    pub(crate) fn padded_total(self) -> usize {
        (ENTRY_HEADER_BYTES + self.body()).div_ceil(8) * 8
    }
}

/// Decodes an entry's body (extra data, id, name); `default_size` is the image's virtual size,
/// which snapshots without the disk size in their extra data (version 2) share.
pub(crate) fn parse_body(lengths: EntryLengths, body: &[u8], default_size: u64) -> SnapshotInfo {
    let extra = &body[..lengths.extra.min(body.len())];
    let virtual_size = if extra.len() >= EXTRA_WITH_DISK_SIZE {
        be64(extra, 8).unwrap_or(default_size)
    } else {
        default_size
    };
    let text = |from: usize, len: usize| {
        let bytes = body.get(from..from.saturating_add(len)).unwrap_or_default();
        String::from_utf8_lossy(bytes).into_owned()
    };
    SnapshotInfo {
        id: text(lengths.extra, lengths.id),
        name: text(lengths.extra + lengths.id, lengths.name),
        virtual_size,
    }
}

/// Reads `count` entries of the table at `offset`; returns them and the table's length in bytes.
pub(crate) fn read_table(
    source: &dyn ReadAt,
    file_size: u64,
    offset: u64,
    count: u32,
    default_size: u64,
) -> Result<(Vec<SnapshotInfo>, u64)> {
    let mut reader =
        ChunkReader { source, file_size, table_start: offset, buffer_start: offset, buf: Vec::new() };
    let mut snapshots = Vec::with_capacity(count.min(1024) as usize);
    let mut pos = offset;
    for _ in 0..count {
        let head = reader.get(pos, ENTRY_HEADER_BYTES)?;
        let lengths = EntryLengths::parse(head, pos)?;
        let body_at = pos + ENTRY_HEADER_BYTES as u64;
        let body = reader.get(body_at, lengths.body())?;
        snapshots.push(parse_body(lengths, body, default_size));
        pos = pos
            .checked_add(lengths.padded_total() as u64)
            .ok_or_else(|| Error::invalid("snapshot table offset overflows"))?;
    }
    Ok((snapshots, pos - offset))
}

/// Buffered reads of the snapshot table, bounded by [`limits::MAX_SNAPSHOT_TABLE_BYTES`] and the
/// end of file.
struct ChunkReader<'a> {
    source: &'a dyn ReadAt,
    file_size: u64,
    /// File offset of the table.
    table_start: u64,
    /// File offset of `buf[0]`.
    buffer_start: u64,
    buf: Vec<u8>,
}

impl ChunkReader<'_> {
    fn get(&mut self, at: u64, len: usize) -> Result<&[u8]> {
        let table_start = self.table_start;
        let end =
            at.checked_add(len as u64).ok_or_else(|| Error::invalid("snapshot table offset overflows"))?;
        if end.saturating_sub(table_start) > limits::MAX_SNAPSHOT_TABLE_BYTES {
            return Err(Error::too_large(format!(
                "snapshot table at offset {table_start} is larger than the limit of {} bytes",
                limits::MAX_SNAPSHOT_TABLE_BYTES
            )));
        }
        if end > self.file_size {
            return Err(Error::invalid(format!(
                "image is truncated: snapshot table entry at offset {at} lies past end of file ({} bytes)",
                self.file_size
            )));
        }
        let have = self.buffer_start..self.buffer_start + self.buf.len() as u64;
        if !(have.contains(&at) && end <= have.end) {
            let want = (len.max(READ_CHUNK_BYTES) as u64).min(self.file_size - at) as usize;
            self.buf.resize(want, 0);
            self.source
                .read_exact_at(&mut self.buf, at)
                .map_err(|e| Error::io(format!("reading the snapshot table at offset {at}"), e))?;
            self.buffer_start = at;
        }
        let from = (at - self.buffer_start) as usize;
        Ok(&self.buf[from..from + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    /// Fixed part of an entry: id "7" (1 byte), name "nightly" (7 bytes), 16 bytes of extra data.
    const HEAD: [u8; 40] = [
        0, 0, 0, 0, 0, 0x05, 0, 0, // 0: L1 table offset
        0, 0, 0, 2, //                8: L1 entries
        0, 1, //                     12: id length
        0, 7, //                     14: name length
        0, 0, 0, 0, 0, 0, 0, 0, //   16: date
        0, 0, 0, 0, 0, 0, 0, 0, //   24: VM clock
        0, 0, 0, 0, //               32: VM state size
        0, 0, 0, 16, //              36: extra data size
    ];

    #[test]
    fn entry_with_disk_size_in_extra_data_reports_it() {
        let lengths = EntryLengths::parse(&HEAD, 0).expect("parse");
        assert_eq!(lengths, EntryLengths { extra: 16, id: 1, name: 7 });
        assert_eq!(lengths.padded_total(), 64);
        let mut body = vec![0u8; 8];
        body.extend_from_slice(&(5u64 << 30).to_be_bytes());
        body.extend_from_slice(b"7nightly");
        let info = parse_body(lengths, &body, 1 << 30);
        assert_eq!(info, SnapshotInfo { id: "7".into(), name: "nightly".into(), virtual_size: 5 << 30 });
    }

    #[test]
    fn entry_without_extra_data_has_the_image_virtual_size() {
        let lengths = EntryLengths { extra: 0, id: 1, name: 1 };
        assert_eq!(parse_body(lengths, b"1a", 1 << 30).virtual_size, 1 << 30);
    }

    #[test]
    fn entry_with_too_much_extra_data_is_rejected() {
        let mut head = HEAD;
        head[36..40].copy_from_slice(&2048u32.to_be_bytes());
        assert_eq!(EntryLengths::parse(&head, 0).err().map(|e| e.kind()), Some(ErrorKind::InvalidImage));
    }
}
