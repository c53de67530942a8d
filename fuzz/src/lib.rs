//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Every target feeds hostile bytes to one parser of `disk-formats` and asserts the crate's
//! documented contract: errors are fine, panics, unbounded allocation and hangs are not.

use std::io::{self, Cursor, Read};

use disk_formats::Format;
use disk_formats::compress::decoder;

/// Most output one input may decompress to. A few bytes of zstd or xz can claim gigabytes;
/// past this the target stops reading, so each run stays fast and the cap tests only that the
/// decoder itself does not allocate in proportion to the claimed size.
pub const MAX_DECOMPRESSED_BYTES: u64 = 64 << 20;

/// Decompresses `data` as `format` into a sink, reading at most [`MAX_DECOMPRESSED_BYTES`].
/// Returns how many bytes came out, or the error the decoder reported.
pub fn decompress_capped(format: Format, data: &[u8]) -> io::Result<u64> {
    let inner: Box<dyn Read + Send + '_> = Box::new(Cursor::new(data));
    let reader = decoder(format, inner).map_err(io::Error::other)?;
    let mut capped = reader.take(MAX_DECOMPRESSED_BYTES);
    io::copy(&mut capped, &mut io::sink())
}

use std::sync::Arc;

use disk_formats::{Image, OpenOptions, ReadAt, SegmentKind, open_image};

/// Most segments one input may walk: an image may claim 64 TiB of tiny segments, and a fuzz run
/// has to stay in milliseconds.
pub const MAX_SEGMENTS: usize = 10_000;

/// Longest range asked of one `map` call, so that a huge unallocated image is walked in steps
/// that each stay cheap (10 000 steps of 1 GiB cover 10 TiB).
pub const MAX_MAP_LEN: u64 = 1 << 30;

/// Bytes read at the start and at the end of every segment.
pub const SAMPLE_BYTES: usize = 4096;

/// Opens `data` as whatever it probes as and, if it opens, walks its extent map over the
/// virtual size (at most [`MAX_SEGMENTS`] segments), checking the `Image` contract:
///
/// - `map(offset, max_len)` starts at `offset`, is 1..=`max_len` bytes long and never ends past
///   the virtual size;
/// - zero and unallocated segments read as zeros;
/// - a `Data { host }` segment reads the same bytes as the data source at `host`.
///
/// Errors from the image are fine (the walk stops at the first `map` error); panics are not.
pub fn open_and_walk(data: &[u8]) {
    let source: Arc<dyn ReadAt> = Arc::new(data.to_vec());
    let Ok(image) = open_image(source, &OpenOptions::default()) else { return };
    let _ = image.info();
    walk(&*image);
}

/// Walks the extent map of an opened image; see [`open_and_walk`].
pub fn walk(image: &dyn Image) {
    let size = image.virtual_size();
    let mut offset = 0u64;
    let mut buf = vec![0u8; SAMPLE_BYTES];
    let mut raw = vec![0u8; SAMPLE_BYTES];
    for _ in 0..MAX_SEGMENTS {
        if offset >= size {
            break;
        }
        let max_len = (size - offset).min(MAX_MAP_LEN);
        let Ok(seg) = image.map(offset, max_len) else { break };
        assert_eq!(seg.offset, offset, "map({offset}, {max_len}) returned {seg:?}");
        assert!(seg.len >= 1 && seg.len <= max_len, "map({offset}, {max_len}) returned {seg:?}");

        let n = usize::try_from(seg.len).unwrap_or(SAMPLE_BYTES).min(SAMPLE_BYTES);
        let tail = seg.len - n as u64;
        let starts: &[u64] = if tail == 0 { &[0] } else { &[0, tail] };
        for &within in starts {
            let chunk = &mut buf[..n];
            chunk.fill(0xa5);
            if image.read_at(chunk, offset + within).is_err() {
                continue;
            }
            match seg.kind {
                SegmentKind::Zero | SegmentKind::Unallocated => {
                    assert!(chunk.iter().all(|&b| b == 0), "{seg:?} read non-zero bytes at +{within}");
                }
                SegmentKind::Data { host } => {
                    let Some(at) = host.checked_add(within) else { continue };
                    let want = &mut raw[..n];
                    if image.data_source().read_exact_at(want, at).is_ok() {
                        assert!(want == chunk, "{seg:?} read differs from its host bytes at +{within}");
                    }
                }
                SegmentKind::Encoded => {}
            }
        }
        offset += seg.len;
    }
}
