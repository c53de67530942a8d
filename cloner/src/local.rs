//! Clones inside one host: reflink, sparse copy, or the stream over a socket pair; checked
//! after the fast paths, falling back on to the next strategy when a check fails.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use disk_formats::WriteAt;
use disk_formats::convert::is_zero;
use storage::{CreateOptions, Volume};

use crate::error::{Error, Result};
use crate::source::{IO_CHUNK, SourceVolume, allocated_bytes, sha256_of};
use crate::{CloneOptions, CloneReport, Strategy, stream, wire};

/// Bytes compared at each end of a data extent after a fast path.
const SAMPLE_BYTES: u64 = 1 << 20;
/// Most bytes read for sampling (per side), so that a source of many small extents is not
/// read whole; the last extent is always sampled.
const SAMPLE_BUDGET: u64 = 256 << 20;
/// Granularity of zero detection inside data extents.
pub(crate) const ZERO_BLOCK: usize = 64 << 10;
/// The order tried when no strategy is forced.
const AUTO_ORDER: [Strategy; 3] = [Strategy::Reflink, Strategy::SparseCopy, Strategy::Stream];

/// Clones `src` onto `dst` (a file, created or replaced, or a block device).
///
/// # Errors
/// [`Error::TargetTooSmall`] when the target cannot hold the source;
/// [`Error::StrategyUnavailable`] when a forced strategy cannot run here;
/// [`Error::VerifyFailed`] when a forced fast path gives a wrong result; I/O errors otherwise.
/// An error of a strategy that is not about support (EIO, ENOSPC) is returned, not fallen
/// back from.
pub fn clone_volume(src: &Path, dst: &Path, opts: &CloneOptions) -> Result<CloneReport> {
    clone_with_hook(src, dst, opts, &|_, _| {})
}

/// What one attempt gave.
enum Attempt {
    Done {
        method: &'static str,
        bytes_copied: u64,
        check: bool,
    },
    /// Cannot run here; the reason.
    Unavailable(String),
}

/// [`clone_volume`] with `after` called on the target after each attempt, before it is
/// checked (tests corrupt the target there to see the fallback).
pub(crate) fn clone_with_hook(
    src: &Path,
    dst: &Path,
    opts: &CloneOptions,
    after: &dyn Fn(Strategy, &Path),
) -> Result<CloneReport> {
    let source = SourceVolume::open(src)?;
    let target_size = plan_target(dst, source.size, opts.target_size)?;
    let order: &[Strategy] = match &opts.strategy {
        Some(strategy) => std::slice::from_ref(strategy),
        None => &AUTO_ORDER,
    };
    let mut reasons = Vec::new();
    for (i, &strategy) in order.iter().enumerate() {
        let last = i + 1 == order.len();
        let attempt = match strategy {
            Strategy::Reflink => reflink(&source, dst, target_size)?,
            Strategy::SparseCopy => sparse_copy(&source, dst, target_size, opts.detect_zeroes)?,
            Strategy::Stream => local_stream(&source, dst, target_size, opts.detect_zeroes)?,
        };
        let (method, bytes_copied, check) = match attempt {
            Attempt::Done { method, bytes_copied, check } => (method, bytes_copied, check),
            Attempt::Unavailable(reason) if last => {
                return Err(Error::StrategyUnavailable { strategy, reason: joined(reasons, reason) });
            }
            Attempt::Unavailable(reason) => {
                reasons.push(format!("{strategy}: {reason}"));
                continue;
            }
        };
        after(strategy, dst);
        let mut verification = "stream-xxh3";
        if check {
            verification = if opts.verify { "sha256" } else { "sampled" };
            if let Err(detail) = verify(&source, dst, target_size, opts.verify)? {
                if last {
                    return Err(Error::VerifyFailed { strategy, detail });
                }
                reasons.push(format!("{strategy}: the result did not match the source ({detail})"));
                continue;
            }
        }
        let target_allocated = File::open(dst).ok().and_then(|f| allocated_bytes(&f));
        return Ok(CloneReport {
            strategy,
            method,
            fallback_reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
            verification,
            bytes_copied,
            source_size: source.size,
            target_size,
            source_allocated: source.allocated(),
            target_allocated,
            sha256: None,
        });
    }
    unreachable!("the strategy order is never empty")
}

fn joined(mut reasons: Vec<String>, last: String) -> String {
    reasons.push(last);
    reasons.join("; ")
}

/// The size the target will have: a block device's own size, else `requested` or the
/// source's; never smaller than the source.
pub(crate) fn plan_target(dst: &Path, source_size: u64, requested: Option<u64>) -> Result<u64> {
    let target_size = match std::fs::metadata(dst) {
        Ok(meta) if meta.file_type().is_block_device() => {
            let device = File::open(dst).map_err(|e| Error::io(dst, "opening the target device", e))?;
            (&device)
                .seek(SeekFrom::End(0))
                .map_err(|e| Error::io(dst, "reading the block device size", e))?
        }
        _ => requested.unwrap_or(source_size),
    };
    if target_size < source_size {
        return Err(Error::TargetTooSmall { source_size, target_size });
    }
    Ok(target_size)
}

fn reflink(source: &SourceVolume, dst: &Path, target_size: u64) -> Result<Attempt> {
    if source.is_block_device {
        return Ok(Attempt::Unavailable("the source is a block device".into()));
    }
    if storage::is_block_device(dst) {
        return Ok(Attempt::Unavailable("the target is a block device".into()));
    }
    let target = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)
        .map_err(|e| Error::io(dst, "creating the file", e))?;
    match storage::reflink(&source.file, &target) {
        Ok(()) => {}
        Err(e) if storage::is_unsupported(&e) => {
            return Ok(Attempt::Unavailable(format!("the file system cannot reflink these files ({e})")));
        }
        Err(e) => return Err(Error::io(dst, "reflinking (FICLONE) from the source", e)),
    }
    if target_size > source.size {
        target
            .set_len(target_size)
            .map_err(|e| Error::io(dst, format!("growing the clone to {target_size} bytes"), e))?;
    }
    target.sync_data().map_err(|e| Error::io(dst, "flushing to stable storage", e))?;
    Ok(Attempt::Done { method: "FICLONE", bytes_copied: 0, check: true })
}

fn create_target(dst: &Path, target_size: u64) -> Result<Volume> {
    Ok(Volume::create(dst, Some(target_size), target_size, &CreateOptions::default())?)
}

fn sparse_copy(source: &SourceVolume, dst: &Path, target_size: u64, detect_zeroes: bool) -> Result<Attempt> {
    let volume = create_target(dst, target_size)?;
    let write_err = |e| Error::io(dst, "writing the clone", e);
    let mut in_kernel = !detect_zeroes;
    let mut buf = Vec::new();
    let mut copied = 0u64;
    let mut pos = 0;
    for extent in source.extents() {
        let (start, len) = extent?;
        volume.write_zeroes(pos, start - pos).map_err(write_err)?;
        if in_kernel {
            in_kernel = copy_in_kernel(source, &volume, start, len)?;
        }
        if !in_kernel {
            if buf.is_empty() {
                buf = vec![0u8; IO_CHUNK];
            }
            copy_by_hand(source, &volume, start, len, detect_zeroes, &mut buf)?;
        }
        copied += len;
        pos = start + len;
    }
    // Up to the end of the target: a new file is all hole already, a device gets zeroed.
    volume.write_zeroes(pos, target_size - pos).map_err(write_err)?;
    volume.finish()?;
    let method = if in_kernel { "copy_file_range" } else { "read/write" };
    Ok(Attempt::Done { method, bytes_copied: copied, check: true })
}

/// Copies `[start, start + len)` with `copy_file_range` in pieces of [`stream::WRITEBACK_BYTES`],
/// starting the writeback of each piece as soon as it is copied, so that the disk writes while
/// the next piece is copied (one huge call would leave all of it to the final flush).
/// `Ok(false)` when the kernel cannot copy these files (then nothing was copied, or the caller
/// copies the whole extent again by hand).
fn copy_in_kernel(source: &SourceVolume, volume: &Volume, start: u64, len: u64) -> Result<bool> {
    let end = start + len;
    let mut at = start;
    while at < end {
        let n = (end - at).min(stream::WRITEBACK_BYTES);
        match volume.copy_from_file(&source.file, at, at, n) {
            Ok(true) => volume.start_writeback(at, n),
            Ok(false) => return Ok(false),
            Err(e) => return Err(Error::io(volume.path(), format!("copying {n} bytes at offset {at}"), e)),
        }
        at += n;
    }
    Ok(true)
}

/// Copies `[start, start + len)` through `buf`; with `detect_zeroes` zero blocks are
/// written as zeroes (holes), not as data.
fn copy_by_hand(
    source: &SourceVolume,
    volume: &Volume,
    start: u64,
    len: u64,
    detect_zeroes: bool,
    buf: &mut [u8],
) -> Result<()> {
    let dst = volume.path();
    let end = start + len;
    let mut at = start;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        let chunk = &mut buf[..n];
        source.read_exact_at(chunk, at)?;
        if detect_zeroes {
            write_skipping_zeroes(volume, chunk, at).map_err(|e| Error::io(dst, "writing the clone", e))?;
        } else {
            volume
                .write_all_at(chunk, at)
                .map_err(|e| Error::io(dst, format!("writing {n} bytes at offset {at}"), e))?;
        }
        at += n as u64;
    }
    Ok(())
}

/// Writes `chunk` at `offset`, runs of all-zero [`ZERO_BLOCK`]s as write-zeroes.
fn write_skipping_zeroes(volume: &Volume, chunk: &[u8], offset: u64) -> std::io::Result<()> {
    for (run_start, run_len, zero) in zero_runs(chunk) {
        let at = offset + run_start as u64;
        if zero {
            volume.write_zeroes(at, run_len as u64)?;
        } else {
            volume.write_all_at(&chunk[run_start..run_start + run_len], at)?;
        }
    }
    Ok(())
}

/// Splits `chunk` into maximal runs of all-zero / non-zero [`ZERO_BLOCK`]s:
/// `(start, len, is_zero)`.
pub(crate) fn zero_runs(chunk: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut runs: Vec<(usize, usize, bool)> = Vec::new();
    for (i, block) in chunk.chunks(ZERO_BLOCK).enumerate() {
        let zero = is_zero(block);
        match runs.last_mut() {
            Some((_, len, z)) if *z == zero => *len += block.len(),
            _ => runs.push((i * ZERO_BLOCK, block.len(), zero)),
        }
    }
    runs
}

/// The stream's two sides in this process, over a socket pair: the path for when neither
/// reflink nor the kernel copy can be trusted.
fn local_stream(source: &SourceVolume, dst: &Path, target_size: u64, detect_zeroes: bool) -> Result<Attempt> {
    let (mut tx, mut rx) =
        UnixStream::pair().map_err(|e| Error::network("creating a socket pair for the local stream", e))?;
    let header = wire::Header { size: source.size, allocated: source.allocated().unwrap_or(source.size) };
    let (sent, received) = std::thread::scope(|scope| {
        let sender = scope.spawn(move || -> Result<stream::Sent> {
            let mut out = std::io::BufWriter::with_capacity(256 << 10, &mut tx);
            stream::write_header(&mut out, &header)?;
            let sent = stream::send_frames(source, &mut out, detect_zeroes)?;
            stream::flush(&mut out)?;
            Ok(sent)
        });
        let received: Result<stream::Received> = (|| {
            let mut input = std::io::BufReader::with_capacity(256 << 10, &mut rx);
            let header = stream::read_header(&mut input)?;
            let volume = create_target(dst, target_size)?;
            let received = stream::receive_frames(&mut input, &header, &volume)?;
            volume
                .write_zeroes(header.size, target_size - header.size)
                .map_err(|e| Error::io(dst, "zeroing the end of the target", e))?;
            volume.finish()?;
            Ok(received)
        })();
        // A failed receiver must not leave the sender blocked on a full socket.
        drop(rx);
        let sent =
            sender.join().unwrap_or_else(|_| Err(Error::Protocol("the stream sender panicked".into())));
        (sent, received)
    });
    // The side that failed first has the real reason; the other one only saw its peer go.
    let received = match (sent, received) {
        (Err(e), Err(Error::Network { .. } | Error::Protocol(_))) | (Err(e), Ok(_)) => return Err(e),
        (_, Err(e)) => return Err(e),
        (Ok(_), Ok(received)) => received,
    };
    Ok(Attempt::Done { method: "stream", bytes_copied: received.data_bytes, check: false })
}

/// Compares the target with the source: sizes, then samples (first and last MiB of each data
/// extent, within a budget), then with `full` the sha256 of both. `Ok(Err(detail))` names
/// the first difference.
fn verify(
    source: &SourceVolume,
    dst: &Path,
    target_size: u64,
    full: bool,
) -> Result<std::result::Result<(), String>> {
    let target = File::open(dst).map_err(|e| Error::io(dst, "opening the clone to check it", e))?;
    let meta = target.metadata().map_err(|e| Error::io(dst, "inspecting the clone", e))?;
    if meta.is_file() && meta.len() != target_size {
        return Ok(Err(format!("the clone has {} bytes instead of {target_size}", meta.len())));
    }
    let extents: Vec<(u64, u64)> = source.extents().collect::<Result<_>>()?;
    let mut a = vec![0u8; SAMPLE_BYTES as usize];
    let mut b = vec![0u8; SAMPLE_BYTES as usize];
    let mut spent = 0u64;
    for (i, &(start, len)) in extents.iter().enumerate() {
        if spent >= SAMPLE_BUDGET && i + 1 != extents.len() {
            continue;
        }
        let head = len.min(SAMPLE_BYTES);
        let tail_start = (start + len - head).max(start + head);
        for (at, n) in [(start, head), (tail_start, start + len - tail_start)] {
            if n == 0 {
                continue;
            }
            let n_usize = n as usize;
            source.read_exact_at(&mut a[..n_usize], at)?;
            target
                .read_exact_at(&mut b[..n_usize], at)
                .map_err(|e| Error::io(dst, format!("reading {n} bytes at offset {at} to check them"), e))?;
            if a[..n_usize] != b[..n_usize] {
                return Ok(Err(format!("{n} bytes at offset {at} differ")));
            }
            spent += n;
        }
    }
    if full {
        let expected = sha256_of(&source.file, &source.path, source.size)?;
        let actual = sha256_of(&target, dst, source.size)?;
        if expected != actual {
            return Ok(Err(format!(
                "sha256 of the clone is {}, the source's is {}",
                wire::hex(&actual),
                wire::hex(&expected)
            )));
        }
        if let Some(offset) = first_non_zero(&target, dst, source.size, target_size)? {
            return Ok(Err(format!("the grown part past the source's end is not zero at offset {offset}")));
        }
    }
    Ok(Ok(()))
}

/// The offset of a non-zero block in `[from, to)` of `file`, if any.
fn first_non_zero(file: &File, path: &Path, from: u64, to: u64) -> Result<Option<u64>> {
    let mut buf = vec![0u8; IO_CHUNK];
    let mut at = from;
    while at < to {
        let n = (to - at).min(IO_CHUNK as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)
            .map_err(|e| Error::io(path, format!("reading {n} bytes at offset {at}"), e))?;
        if !is_zero(&buf[..n]) {
            return Ok(Some(at));
        }
        at += n as u64;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;

    use super::*;

    const MIB: u64 = 1 << 20;

    struct Scratch {
        dir: tempfile::TempDir,
    }

    impl Scratch {
        fn new() -> Self {
            Self { dir: tempfile::tempdir().expect("temp dir") }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// A sparse file of `len` bytes with `extents` of patterned data.
        fn sparse_file(&self, name: &str, len: u64, extents: &[(u64, u64)]) -> PathBuf {
            let path = self.path(name);
            let file = File::create(&path).expect("create");
            file.set_len(len).expect("set_len");
            for &(offset, size) in extents {
                let data: Vec<u8> = (0..size).map(|i| ((offset + i) % 251) as u8 | 1).collect();
                file.write_all_at(&data, offset).expect("write");
            }
            path
        }
    }

    fn contents(path: &Path) -> Vec<u8> {
        std::fs::read(path).expect("read")
    }

    fn allocated(path: &Path) -> u64 {
        std::fs::metadata(path).expect("stat").blocks() * 512
    }

    fn opts(strategy: Option<Strategy>) -> CloneOptions {
        CloneOptions { strategy, ..CloneOptions::default() }
    }

    #[test]
    fn every_strategy_that_runs_here_makes_an_identical_clone() {
        let scratch = Scratch::new();
        let src =
            scratch.sparse_file("src", 16 * MIB, &[(0, 4096), (3 * MIB, 2 * MIB + 17), (15 * MIB, MIB)]);

        for strategy in [Strategy::Reflink, Strategy::SparseCopy, Strategy::Stream] {
            let dst = scratch.path(&format!("dst-{strategy}"));
            match clone_volume(&src, &dst, &opts(Some(strategy))) {
                Ok(report) => {
                    assert_eq!(report.strategy, strategy);
                    assert_eq!(contents(&dst), contents(&src), "{strategy}");
                }
                Err(Error::StrategyUnavailable { reason, .. }) => {
                    eprintln!("{strategy} unavailable: {reason}")
                }
                Err(e) => panic!("{strategy}: {e}"),
            }
        }
    }

    #[test]
    fn sparse_copy_keeps_holes() {
        let scratch = Scratch::new();
        let src = scratch.sparse_file("src", 64 * MIB, &[(MIB, MIB), (40 * MIB, 3 * MIB)]);
        let dst = scratch.path("dst");

        let report = clone_volume(&src, &dst, &opts(Some(Strategy::SparseCopy))).expect("clone");

        assert_eq!(report.bytes_copied, 4 * MIB);
        assert!(allocated(&dst) <= allocated(&src) + 64 * 1024, "{} vs {}", allocated(&dst), allocated(&src));
        assert_eq!(contents(&dst), contents(&src));
    }

    #[test]
    fn stream_keeps_holes_and_detect_zeroes_drops_zero_blocks() {
        let scratch = Scratch::new();
        let src = scratch.sparse_file("src", 32 * MIB, &[(2 * MIB, MIB)]);
        // An allocated extent of zeros: data to SEEK_DATA, a hole after zero detection.
        File::options()
            .write(true)
            .open(&src)
            .expect("open")
            .write_all_at(&vec![0; 4 << 20], 8 * MIB)
            .expect("w");
        let dst = scratch.path("dst");
        let options =
            CloneOptions { strategy: Some(Strategy::Stream), detect_zeroes: true, ..Default::default() };

        let report = clone_volume(&src, &dst, &options).expect("clone");

        assert_eq!(contents(&dst), contents(&src));
        assert!(allocated(&dst) <= MIB + 64 * 1024, "allocated {}", allocated(&dst));
        assert_eq!(report.verification, "stream-xxh3");
    }

    #[test]
    fn auto_reports_the_strategy_and_why_faster_ones_were_skipped() {
        let scratch = Scratch::new();
        let src = scratch.sparse_file("src", 8 * MIB, &[(0, MIB)]);
        let dst = scratch.path("dst");

        let report = clone_volume(&src, &dst, &CloneOptions::default()).expect("clone");

        match report.strategy {
            Strategy::Reflink => assert_eq!(report.fallback_reason, None),
            _ => {
                let reason = report.fallback_reason.expect("a reason");
                assert!(reason.starts_with("reflink: "), "{reason}");
            }
        }
        assert_eq!(contents(&dst), contents(&src));
    }

    #[test]
    fn a_corrupted_fast_path_result_falls_back_to_the_next_strategy() {
        let scratch = Scratch::new();
        let src = scratch.sparse_file("src", 8 * MIB, &[(MIB, 2 * MIB)]);
        let dst = scratch.path("dst");
        let corrupt_fast_paths = |strategy: Strategy, path: &Path| {
            if strategy != Strategy::Stream {
                File::options()
                    .write(true)
                    .open(path)
                    .expect("open")
                    .write_all_at(b"garbage", MIB)
                    .expect("w");
            }
        };

        let report =
            clone_with_hook(&src, &dst, &CloneOptions::default(), &corrupt_fast_paths).expect("clone");

        assert_eq!(report.strategy, Strategy::Stream);
        let reason = report.fallback_reason.expect("reason");
        assert!(reason.contains("sparse-copy: the result did not match the source"), "{reason}");
        assert_eq!(contents(&dst), contents(&src));
    }

    #[test]
    fn a_corrupted_forced_fast_path_is_a_checksum_error() {
        let scratch = Scratch::new();
        let src = scratch.sparse_file("src", 4 * MIB, &[(0, 4 * MIB)]);
        let dst = scratch.path("dst");
        let corrupt_tail = |_: Strategy, path: &Path| {
            File::options().write(true).open(path).expect("open").write_all_at(b"x", 3 * MIB + 5).expect("w");
        };

        let err =
            clone_with_hook(&src, &dst, &opts(Some(Strategy::SparseCopy)), &corrupt_tail).expect_err("bad");

        assert_eq!(err.kind(), disk_formats::ErrorKind::Checksum);
        assert!(err.to_string().contains("does not match the source"), "{err}");
    }

    #[test]
    fn full_verification_catches_a_difference_between_the_samples() {
        let scratch = Scratch::new();
        let src = scratch.sparse_file("src", 8 * MIB, &[(0, 8 * MIB)]);
        let dst = scratch.path("dst");
        let corrupt_middle = |_: Strategy, path: &Path| {
            File::options().write(true).open(path).expect("open").write_all_at(b"x", 4 * MIB).expect("w");
        };
        let options =
            CloneOptions { strategy: Some(Strategy::SparseCopy), verify: true, ..Default::default() };

        let sampled = clone_with_hook(&src, &dst, &opts(Some(Strategy::SparseCopy)), &corrupt_middle);
        let full = clone_with_hook(&src, &dst, &options, &corrupt_middle);

        assert!(sampled.is_ok(), "samples do not cover the middle of an 8 MiB extent");
        assert!(full.expect_err("full check").to_string().contains("sha256 of the clone"));
    }

    #[test]
    fn a_bigger_target_grows_and_reads_zeros_past_the_source() {
        let scratch = Scratch::new();
        let src = scratch.sparse_file("src", 4 * MIB, &[(0, MIB)]);
        let dst = scratch.path("dst");
        let options = CloneOptions { target_size: Some(16 * MIB), verify: true, ..Default::default() };

        let report = clone_volume(&src, &dst, &options).expect("clone");

        assert_eq!(report.target_size, 16 * MIB);
        let cloned = contents(&dst);
        assert_eq!(cloned.len() as u64, 16 * MIB);
        assert_eq!(&cloned[..4 * MIB as usize], &contents(&src)[..]);
        assert!(is_zero(&cloned[4 * MIB as usize..]));
    }

    #[test]
    fn a_smaller_target_is_too_large_an_error() {
        let scratch = Scratch::new();
        let src = scratch.sparse_file("src", 4 * MIB, &[(0, MIB)]);
        let dst = scratch.path("dst");
        let options = CloneOptions { target_size: Some(MIB), ..Default::default() };

        let err = clone_volume(&src, &dst, &options).expect_err("too small");

        assert_eq!(err.kind(), disk_formats::ErrorKind::TooLarge);
        assert!(err.to_string().starts_with("source is larger than the target"), "{err}");
        assert!(!dst.exists());
    }

    #[test]
    fn zero_runs_merge_neighbouring_blocks_of_the_same_kind() {
        let mut chunk = vec![0u8; 4 * ZERO_BLOCK + 10];
        chunk[ZERO_BLOCK] = 1;
        chunk[2 * ZERO_BLOCK + 5] = 1;
        chunk[4 * ZERO_BLOCK + 9] = 1;

        let runs = zero_runs(&chunk);

        assert_eq!(
            runs,
            vec![
                (0, ZERO_BLOCK, true),
                (ZERO_BLOCK, 2 * ZERO_BLOCK, false),
                (3 * ZERO_BLOCK, ZERO_BLOCK, true),
                (4 * ZERO_BLOCK, 10, false),
            ]
        );
    }
}
