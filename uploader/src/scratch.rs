//! An uncompressed qcow2 body written to a scratch file straight from the channel's pieces.
//!
//! A qcow2 needs random access, so its body lands in a scratch file first and is converted
//! from there. The shared path (`disk_formats::convert::unpack_to_scratch`) reads the stream
//! into a window buffer and writes it 4 KiB block by 4 KiB block; here each piece that crossed
//! the channel (≥ 256 KiB) is written as it is, one positional write per run of non-zero 4 KiB
//! blocks: no copy into a buffer of our own, a few thousand writes per GiB instead of a quarter
//! of a million. All-zero blocks stay holes, so the scratch file is as sparse as the image.
//!
//! [`fill`] reports its progress after every piece, so that a converter can read the file
//! while it is still being written ([`crate::growing`]).
//!
//! ## Caveats
//! Compressed bodies (gzip, xz, zstd around a qcow2) still take the shared path: their
//! unwrapped bytes exist only inside the decompressor.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use disk_formats::OpenOptions;
use disk_formats::convert::is_zero;
use disk_formats::qcow2::stream::Router;
use importer::pipe::ChannelReader;

use crate::error::Result;

/// Zero detection granularity (aligned to the file offset), as the converter's.
const BLOCK: u64 = 4096;

/// Scratch room the header allows beyond the virtual size: metadata (tables, refcounts) and
/// internal snapshots may take as much again, plus 64 MiB for small images.
const SLACK_BYTES: u64 = 64 << 20;

/// The largest scratch file a qcow2 with this `head` may need: twice its virtual size plus
/// [`SLACK_BYTES`], never above twice the size limit.
pub(crate) fn bound(head: &[u8], open: &OpenOptions) -> u64 {
    let cap = open.max_virtual_size.saturating_mul(2);
    let virtual_size = head.get(24..32).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    match virtual_size {
        Some(size) => size.saturating_mul(2).saturating_add(SLACK_BYTES).min(cap),
        None => cap,
    }
}

/// Writes `head` and then the rest of `reader` (up to its end marker) into a new anonymous
/// file in `dir`, at most `bound` bytes; returns the file (deleted when dropped).
///
/// # Errors
/// `TooLarge` beyond `bound`; the stream's error when it stops without its end marker; I/O
/// errors of the scratch file.
pub(crate) fn write(head: &[u8], reader: &mut ChannelReader, dir: &Path, bound: u64) -> Result<File> {
    let file = create(dir)?;
    fill(&file, head, reader, bound, None, &mut |_| true)?;
    Ok(file)
}

/// A new anonymous scratch file in `dir` (deleted when dropped).
///
/// # Errors
/// I/O errors creating it.
pub(crate) fn create(dir: &Path) -> Result<File> {
    tempfile::tempfile_in(dir).map_err(|e| {
        disk_formats::Error::io(format!("creating a scratch file in {}", dir.display()), e).into()
    })
}

/// Writes `head` and then the rest of `reader` (up to its end marker) into `file` from offset
/// 0, at most `bound` bytes; with a `router`, every byte passes through it first and only what
/// it does not route is written (routed data leaves holes). After each piece, `written` is
/// called with the bytes written so far (everything below is on the file or a hole that reads
/// as zeros once the file is sized);
/// when it returns false the fill stops there and returns `None`. Otherwise returns the
/// length, to which the file is sized at the end.
///
/// # Errors
/// As [`write`].
pub(crate) fn fill(
    file: &File,
    head: &[u8],
    reader: &mut ChannelReader,
    bound: u64,
    mut router: Option<&mut Router<'_>>,
    written: &mut dyn FnMut(u64) -> bool,
) -> Result<Option<u64>> {
    let mut at = 0u64;
    put(file, head, &mut at, bound, router.as_deref_mut())?;
    if !written(at) {
        return Ok(None);
    }
    while let Some(piece) =
        reader.next_bytes().map_err(|e| disk_formats::Error::io("reading the upload", e))?
    {
        put(file, &piece, &mut at, bound, router.as_deref_mut())?;
        if !written(at) {
            return Ok(None);
        }
    }
    file.set_len(at).map_err(|e| disk_formats::Error::io("sizing the scratch file", e))?;
    Ok(Some(at))
}

/// Writes `data` at `*at` (sparsely, or what `router` leaves of it) and moves `*at` past it;
/// refuses to pass `bound`.
fn put(file: &File, data: &[u8], at: &mut u64, bound: u64, router: Option<&mut Router<'_>>) -> Result<()> {
    let end = at.saturating_add(data.len() as u64);
    if end > bound {
        return Err(disk_formats::Error::too_large(format!(
            "the uploaded qcow2 is larger than its header allows ({bound} bytes)"
        ))
        .into());
    }
    match router {
        Some(router) => router.route(data, &mut |offset, part| write_sparse(file, part, offset))?,
        None => {
            write_sparse(file, data, *at)
                .map_err(|e| disk_formats::Error::io("writing the scratch file", e))?;
        }
    }
    *at = end;
    Ok(())
}

/// Writes the non-zero [`BLOCK`]s of `data` (placed at `at`), one write per run of them.
fn write_sparse(file: &File, data: &[u8], at: u64) -> io::Result<()> {
    let mut run_start = None;
    let mut i = 0usize;
    while i < data.len() {
        let offset = at + i as u64;
        let to_boundary = usize::try_from(BLOCK - offset % BLOCK).unwrap_or(usize::MAX);
        let end = i.saturating_add(to_boundary).min(data.len());
        match (is_zero(&data[i..end]), run_start) {
            (false, None) => run_start = Some(i),
            (true, Some(start)) => {
                file.write_all_at(&data[start..i], at + start as u64)?;
                run_start = None;
            }
            _ => {}
        }
        i = end;
    }
    if let Some(start) = run_start {
        file.write_all_at(&data[start..], at + start as u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use importer::pipe::{CHANNEL_PIECES, Piece};
    use tokio::sync::mpsc;

    fn reader(pieces: Vec<Vec<u8>>, end: bool) -> ChannelReader {
        let (tx, rx) = mpsc::channel(CHANNEL_PIECES + 1);
        for piece in pieces {
            tx.try_send(Piece::Data(Bytes::from(piece))).unwrap();
        }
        if end {
            tx.try_send(Piece::End).unwrap();
        }
        ChannelReader::new(rx)
    }

    fn allocated_bytes(file: &File) -> u64 {
        use std::os::unix::fs::MetadataExt;
        file.metadata().unwrap().blocks() * 512
    }

    #[test]
    fn pieces_land_at_their_offsets_and_zero_blocks_stay_holes() {
        let dir = tempfile::tempdir().unwrap();
        let head = vec![1u8; 100];
        // A piece crossing block boundaries: data, a whole zero block, data at the end.
        let mut piece = vec![2u8; 3 * BLOCK as usize];
        piece[BLOCK as usize..2 * BLOCK as usize].fill(0);
        let zeros = vec![0u8; 64 * BLOCK as usize];
        let tail = vec![3u8; 10];
        let mut r = reader(vec![piece.clone(), zeros.clone(), tail.clone()], true);

        let file = write(&head, &mut r, dir.path(), 1 << 30).unwrap();

        let expected = [head, piece, zeros, tail].concat();
        let mut got = vec![0u8; expected.len()];
        file.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, expected);
        assert_eq!(file.metadata().unwrap().len(), expected.len() as u64);
        assert!(allocated_bytes(&file) < 16 * BLOCK, "zero blocks were written: {}", allocated_bytes(&file));
    }

    #[test]
    fn a_body_beyond_the_bound_is_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = reader(vec![vec![5u8; 8192]], true);
        let err = write(b"head", &mut r, dir.path(), 4096).unwrap_err();
        assert_eq!(err.kind(), disk_formats::ErrorKind::TooLarge);
        assert!(err.to_string().contains("larger than its header allows"), "{err}");
    }

    #[test]
    fn a_stream_without_its_end_marker_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = reader(vec![vec![5u8; 100]], false);
        assert!(write(b"head", &mut r, dir.path(), 1 << 20).is_err());
    }

    #[test]
    fn the_bound_follows_the_header_and_the_limit() {
        let mut head = vec![0u8; 64];
        head[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        let open = OpenOptions { max_virtual_size: 4 << 30 };
        assert_eq!(bound(&head, &open), (2 << 30) + SLACK_BYTES);
        let small = OpenOptions { max_virtual_size: 1 << 29 };
        assert_eq!(bound(&head, &small), 1 << 30);
        assert_eq!(bound(&[], &open), 8 << 30);
    }
}
