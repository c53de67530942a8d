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

use std::sync::Mutex;

use disk_formats::WriteAt;
use disk_formats::convert::{ConvertOptions, convert_image};
use disk_formats::qcow2::stream::{Residual, Routed, route};

/// Largest virtual size [`stream_like_the_engine`] converts (both outputs live in memory).
pub const MAX_STREAM_VIRTUAL_BYTES: u64 = 8 << 20;

/// A target in memory of a fixed capacity.
struct Mem(Mutex<Vec<u8>>);

impl WriteAt for Mem {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut bytes = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let end = start.checked_add(buf.len()).filter(|&end| end <= bytes.len());
        let end = end.ok_or_else(|| io::Error::new(io::ErrorKind::FileTooLarge, "past the capacity"))?;
        bytes[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
        self.write_all_at(&zeros, offset)
    }

    fn unwritten_reads_zero(&self) -> bool {
        true
    }

    fn capacity(&self) -> u64 {
        self.0.lock().map_or(0, |b| b.len() as u64)
    }
}

fn one_thread() -> ConvertOptions {
    ConvertOptions { threads: 1, ..ConvertOptions::default() }
}

/// Streams `data` as a qcow2 upload would (pieces of a size taken from the data, through the
/// router into a target, the rest into a scratch buffer, then the residual conversion) and
/// converts the whole of `data` with the engine, both into targets of
/// [`MAX_STREAM_VIRTUAL_BYTES`]. The router is an optimisation, never a judge:
///
/// - when the stream converts, the engine converts too, to the same bytes;
/// - when only the engine converts, the stream refused a host cluster used by two guest
///   offsets (the one image the streaming path refuses and the engine reads).
pub fn stream_like_the_engine(data: &[u8]) {
    let opts = OpenOptions { max_virtual_size: MAX_STREAM_VIRTUAL_BYTES };
    let capacity = MAX_STREAM_VIRTUAL_BYTES as usize;
    let whole: Arc<dyn ReadAt> = Arc::new(data.to_vec());
    let reference = disk_formats::open_as(whole, Format::Qcow2, &opts).and_then(|image| {
        let target = Mem(Mutex::new(vec![0; capacity]));
        convert_image(&*image, &target, &one_thread())?;
        Ok(target.0.into_inner().unwrap_or_default())
    });

    let piece = 1 + data.first().map_or(0, |&b| usize::from(b)) * 97;
    let target = Mem(Mutex::new(vec![0; capacity]));
    let routed = Routed::new();
    let mut spill = vec![0u8; data.len()];
    let received = route(&target, &routed, data.len() as u64, |router| {
        for chunk in data.chunks(piece) {
            router.route(chunk, &mut |at, part| {
                let at = at as usize;
                spill[at..at + part.len()].copy_from_slice(part);
                Ok(())
            })?;
        }
        Ok::<_, disk_formats::Error>(())
    });
    let arrived = |_: u64| Ok(());
    let streamed = received.and_then(|()| {
        let image = disk_formats::open_as(Arc::new(spill), Format::Qcow2, &opts)?;
        let residual = Residual::new(image, &routed, &arrived);
        convert_image(&residual, &target, &one_thread())?;
        Ok(target.0.into_inner().unwrap_or_default())
    });

    match (reference, streamed) {
        (Ok(want), Ok(got)) => assert!(want == got, "the streamed conversion differs from the engine's"),
        (Err(e), Ok(_)) => panic!("the stream converted what the engine refused: {e}"),
        (Ok(_), Err(e)) => {
            assert!(e.to_string().contains("is used by guest offsets"), "only the stream refused: {e}")
        }
        (Err(_), Err(_)) => {}
    }
}
