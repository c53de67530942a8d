//! The shared engine of the block-table formats (VMDK sparse extents, VHD, VHDX, VDI): each maps
//! the guest space in fixed-size blocks, one table entry per block.
//!
//! A format implements [`BlockTable`] (what one block is and where it lives, every number checked);
//! [`map`] and [`read_at`] here turn that into the [`Image`](crate::Image) contract: segments that
//! coalesce runs of blocks stored the same way, reads that never leave the file, and compressed
//! blocks decoded through [`BlockTable::decode`].
//!
//! The engine checks, for every data block, that its guest-visible bytes lie inside the file
//! ("image is truncated" otherwise, where qemu would read zeros).

use crate::image::{Segment, SegmentKind};
use crate::io::ReadAt;
use crate::{Error, Result};

/// Most blocks one [`map`] call looks at: a segment may end early, and a hostile image with
/// 512-byte blocks cannot make one call walk millions of entries.
const MAX_BLOCKS_PER_MAP: u64 = 1 << 16;

/// How one block of guest bytes is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Block {
    /// Never written: reads as zeros.
    Unallocated,
    /// Explicitly zero.
    Zero,
    /// Stored verbatim at `host` in the file (the block's first guest byte).
    Data { host: u64 },
    /// Stored compressed at `host`; [`BlockTable::decode`] produces it.
    Compressed { host: u64 },
}

/// A format that maps the guest space through a table of fixed-size blocks.
pub(crate) trait BlockTable: Send + Sync {
    /// Bytes per block (at least 512).
    fn block_size(&self) -> u64;

    /// The guest-visible size in bytes.
    fn virtual_size(&self) -> u64;

    /// The size of the file the host offsets refer to.
    fn file_size(&self) -> u64;

    /// The file.
    fn source(&self) -> &dyn ReadAt;

    /// How block `index` (`< virtual_size / block_size`, rounded up) is stored; every number
    /// read from the image is checked here.
    fn block(&self, index: u64) -> Result<Block>;

    /// Decodes the compressed block `index` stored at `host`: the block's bytes from its start,
    /// at least as many as the guest will read from it.
    fn decode(&self, index: u64, host: u64) -> Result<Vec<u8>> {
        let _ = host;
        Err(Error::invalid(format!("block {index} is compressed, which this format does not allow")))
    }

    /// The name of the format in messages ("VMDK", "VHD", ...).
    fn name(&self) -> &'static str;
}

/// The block at `index`, with a data block's visible bytes checked to lie inside the file.
fn checked_block(t: &dyn BlockTable, index: u64) -> Result<Block> {
    let block = t.block(index)?;
    if let Block::Data { host } = block {
        let start = index * t.block_size();
        let visible = t.block_size().min(t.virtual_size() - start);
        if host.checked_add(visible).is_none_or(|end| end > t.file_size()) {
            return Err(Error::invalid(format!(
                "image is truncated: {} data block {index} (guest offset {start}) at host offset {host} lies past end of file ({} bytes)",
                t.name(),
                t.file_size()
            )));
        }
    }
    if let Block::Compressed { host } = block
        && host >= t.file_size()
    {
        return Err(Error::invalid(format!(
            "image is truncated: {} compressed block {index} at host offset {host} lies past end of file ({} bytes)",
            t.name(),
            t.file_size()
        )));
    }
    Ok(block)
}

fn kind_of(block: Block, skip: u64) -> SegmentKind {
    match block {
        Block::Unallocated => SegmentKind::Unallocated,
        Block::Zero => SegmentKind::Zero,
        Block::Data { host } => SegmentKind::Data { host: host + skip },
        Block::Compressed { .. } => SegmentKind::Encoded,
    }
}

/// [`Image::map`](crate::Image::map) for a block table.
pub(crate) fn map(t: &dyn BlockTable, offset: u64, max_len: u64) -> Result<Segment> {
    let size = t.virtual_size();
    if offset >= size || max_len == 0 {
        return Err(Error::invalid(format!(
            "map of {max_len} bytes at guest offset {offset} is outside the virtual size {size}"
        )));
    }
    let bs = t.block_size();
    let end = offset.saturating_add(max_len).min(size);
    let index = offset / bs;
    let skip = offset % bs;
    let kind = kind_of(checked_block(t, index)?, skip);
    let mut len = (bs - skip).min(end - offset);
    let mut next = index + 1;
    while offset + len < end && next - index < MAX_BLOCKS_PER_MAP {
        // A bad entry further on ends the segment; the next call reports it.
        let Ok(block) = checked_block(t, next) else { break };
        let merges = match (kind, block) {
            (SegmentKind::Data { host }, Block::Data { host: h }) => host.checked_add(len) == Some(h),
            (SegmentKind::Encoded, Block::Compressed { .. })
            | (SegmentKind::Zero, Block::Zero)
            | (SegmentKind::Unallocated, Block::Unallocated) => true,
            _ => false,
        };
        if !merges {
            break;
        }
        len = (len + bs).min(end - offset);
        next += 1;
    }
    Ok(Segment { offset, len, kind })
}

/// [`Image::read_at`](crate::Image::read_at) for a block table.
pub(crate) fn read_at(t: &dyn BlockTable, buf: &mut [u8], offset: u64) -> Result<()> {
    let size = t.virtual_size();
    let end = offset.checked_add(buf.len() as u64).filter(|&end| end <= size).ok_or_else(|| {
        Error::invalid(format!(
            "read of {} bytes at guest offset {offset} is outside the virtual size {size}",
            buf.len()
        ))
    })?;
    let bs = t.block_size();
    let mut pos = offset;
    while pos < end {
        let index = pos / bs;
        let in_block = pos % bs;
        let n = (bs - in_block).min(end - pos);
        let from = (pos - offset) as usize;
        let dst = &mut buf[from..from + n as usize];
        match checked_block(t, index)? {
            Block::Unallocated | Block::Zero => dst.fill(0),
            Block::Data { host } => {
                let at = host + in_block;
                t.source().read_exact_at(dst, at).map_err(|e| {
                    Error::io(format!("reading {n} bytes for guest offset {pos} at host offset {at}"), e)
                })?;
            }
            Block::Compressed { host } => {
                let block = t.decode(index, host)?;
                let want = (in_block + n) as usize;
                let Some(src) = block.get(in_block as usize..want) else {
                    return Err(Error::invalid(format!(
                        "{} compressed block {index} at host offset {host} decodes to {} bytes, fewer than the {want} read from it",
                        t.name(),
                        block.len()
                    )));
                };
                dst.copy_from_slice(src);
            }
        }
        pos += n;
    }
    Ok(())
}

/// Reads exactly `len` bytes at `offset` (`len` is bounded by the caller).
pub(crate) fn read_bytes(source: &dyn ReadAt, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| Error::too_large(format!("{what}: {len} bytes")))?;
    let mut buf = vec![0u8; len];
    source.read_exact_at(&mut buf, offset).map_err(|e| Error::io(what, e))?;
    Ok(buf)
}

/// Checks that `[offset, offset + len)` lies inside a file of `file_size` bytes.
pub(crate) fn check_in_file(what: &str, offset: u64, len: u64, file_size: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= file_size => Ok(()),
        _ => Err(Error::invalid(format!(
            "image is truncated: {what} at offset {offset} ({len} bytes) lies past end of file ({file_size} bytes)"
        ))),
    }
}

/// Little-endian integer readers over a byte slice whose length the caller has checked.
pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// See [`le16`].
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// See [`le16`].
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Big-endian readers, see [`le16`].
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// See [`be16`].
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// See [`be16`].
pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

/// Printable form of a name or string read from an image (control and non-ASCII bytes escaped,
/// at most 200 bytes shown).
pub(crate) fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(200) {
        if b.is_ascii_graphic() || b == b' ' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if bytes.len() > 200 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks of 1 KiB: 0 data at 4096, 1 data at 5120 (contiguous), 2 zero, 3 unallocated,
    /// 4 data past end of file.
    struct Table {
        file: Vec<u8>,
    }

    impl BlockTable for Table {
        fn block_size(&self) -> u64 {
            1024
        }
        fn virtual_size(&self) -> u64 {
            5 * 1024
        }
        fn file_size(&self) -> u64 {
            self.file.len() as u64
        }
        fn source(&self) -> &dyn ReadAt {
            &self.file
        }
        fn block(&self, index: u64) -> Result<Block> {
            Ok(match index {
                0 => Block::Data { host: 4096 },
                1 => Block::Data { host: 5120 },
                2 => Block::Zero,
                3 => Block::Unallocated,
                _ => Block::Data { host: 6000 },
            })
        }
        fn name(&self) -> &'static str {
            "test"
        }
    }

    fn table() -> Table {
        let mut file = vec![0u8; 6144];
        file[4096..].fill(7);
        Table { file }
    }

    #[test]
    fn contiguous_data_blocks_coalesce_and_kinds_split() {
        let t = table();
        assert_eq!(
            map(&t, 100, 1 << 20).unwrap(),
            Segment { offset: 100, len: 1948, kind: SegmentKind::Data { host: 4196 } }
        );
        assert_eq!(map(&t, 2048, 1 << 20).unwrap().kind, SegmentKind::Zero);
        assert_eq!(
            map(&t, 3072, 10).unwrap(),
            Segment { offset: 3072, len: 10, kind: SegmentKind::Unallocated }
        );
    }

    #[test]
    fn data_block_past_end_of_file_is_an_error_naming_it() {
        let t = table();
        let err = map(&t, 4096, 1024).unwrap_err();
        assert!(err.to_string().contains("past end of file"), "{err}");
        let mut buf = vec![0u8; 1024];
        assert!(read_at(&t, &mut buf, 4096).is_err());
    }

    #[test]
    fn reads_cross_blocks_of_every_kind() {
        let t = table();
        let mut buf = vec![0xaau8; 4096];
        read_at(&t, &mut buf, 0).unwrap();
        assert!(buf[..2048].iter().all(|&b| b == 7));
        assert!(buf[2048..].iter().all(|&b| b == 0));
    }
}
