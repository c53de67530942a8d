//! [`Volume`]: a regular file or a block device that an image is written into.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use disk_formats::WriteAt;
use disk_formats::convert::direct::aligned_middle;

use crate::error::{Error, Result};
use crate::sys;

/// What happens to the space the image leaves empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Preallocation {
    /// Leave it unallocated: holes in a file, unmapped blocks on a thin device.
    #[default]
    Off,
    /// When the volume is finished, allocate all of a file (fallocate mode 0), as
    /// `qemu-img convert -o preallocation=falloc` does. A block device is left as it is.
    Full,
}

/// How written data reaches the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WriteCache {
    /// Large aligned writes bypass the page cache (`O_DIRECT`, like `qemu-img convert -t none`):
    /// each one waits for the device, but costs the least CPU. Right where the data is produced
    /// by CPU work that the writes must not slow down (inflating compressed clusters) or
    /// copied in-kernel from a local file (which goes through the cache anyway).
    #[default]
    Direct,
    /// Every write goes through the page cache and returns at once; writeback of each finished
    /// range ([`WriteAt::start_writeback`]) starts immediately, and once more than
    /// [`WRITEBACK_IN_FLIGHT_BYTES`] of ranges are behind it the oldest is waited for and
    /// dropped from the cache. The device is kept busy with a deep queue while the producer
    /// goes on, and the cache holds little more than that much of the volume, dirty or clean
    /// (a pod's memory limit counts page cache: unbounded dirty pages are how CDI's importer
    /// pods got OOM-killed). It costs more CPU than `Direct` (the copy into the cache), so it
    /// pays where the writer has CPU to spare and would otherwise wait for the device: a qcow2
    /// upload with 1 GiB of data took 0.55-0.57 s this way against 0.69-0.75 s with `Direct`
    /// (`bench/upload.sh`; a local `diskplane convert` of the file takes 0.47-0.55 s), while a
    /// raw upload or an HTTP import, whose receiving needs the CPU, was no faster with it.
    Bounded,
}

/// Range bytes (holes included) whose writeback [`WriteCache::Bounded`] lets run behind the
/// writer before it waits for the oldest.
pub const WRITEBACK_IN_FLIGHT_BYTES: u64 = 128 << 20;

/// How [`Volume::create`] sets the volume up.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Allocation of the space the image leaves empty.
    pub preallocation: Preallocation,
    /// How written data reaches the device.
    pub write_cache: WriteCache,
}

/// Largest range given to one `fallocate` or `copy_file_range` call on a device or across
/// file systems, so that a single system call stays short (and a signal is seen in time).
const MAX_CALL_BYTES: u64 = 1 << 30;

/// Alignment assumed for write-zeroes when a block device does not report its logical block
/// size: a multiple of every common size (512 and 4096).
const DEFAULT_LOGICAL_BLOCK: u64 = 4096;

/// Smallest aligned part of a write that goes through the direct descriptor. A direct write
/// waits for the device, so small ones would each cost a round trip; they stay in the page
/// cache and are written back later.
const DIRECT_MIN_BYTES: usize = 128 * 1024;

/// Zeros written by hand where nothing cheaper works (zero-initialised: costs no binary size).
static ZEROS: [u8; 256 * 1024] = [0; 256 * 1024];

/// How a block device zeroes ranges, from cheapest down; moves down when the device refuses.
const ZERO_BY_UNMAP: u8 = 0;
const ZERO_BY_WRITE_ZEROES: u8 = 1;
const ZERO_BY_WRITING: u8 = 2;

#[derive(Debug)]
enum Target {
    /// A regular file this volume created or truncated: unwritten ranges are holes.
    File,
    /// A block device: old contents stay until overwritten or zeroed.
    BlockDevice {
        /// Write-zeroes must be aligned to this (power of two).
        logical_block: u64,
        /// One of the `ZERO_BY_*` methods: the cheapest the device accepted so far.
        zeroing: AtomicU8,
    },
}

/// A target for image bytes: a sparse regular file or a block device, opened for writing.
///
/// Implements [`WriteAt`], which the converter writes through. Writes are positional and may
/// come from several threads. Nothing is durable until [`Volume::finish`] returns `Ok`.
#[derive(Debug)]
pub struct Volume {
    file: File,
    path: PathBuf,
    target: Target,
    capacity: u64,
    preallocation: Preallocation,
    /// End of the highest byte that may have been written. A file volume starts empty, so past
    /// this point it holds only holes and zeroing there is free.
    written_end: AtomicU64,
    /// The same file opened with `O_DIRECT` (`None` where that cannot be opened): large aligned
    /// writes go through it, from the caller's buffer straight to the device.
    direct: Option<File>,
    /// Cleared when the direct descriptor refuses a write (alignment stricter than assumed):
    /// from then on everything goes through the page cache.
    direct_ok: AtomicBool,
    /// [`WriteCache::Bounded`]: the ranges whose writeback was started and not yet waited for.
    /// `None` for [`WriteCache::Direct`].
    in_flight: Option<Mutex<InFlight>>,
}

/// Ranges under writeback, oldest first, and their total length.
#[derive(Debug, Default)]
struct InFlight {
    ranges: VecDeque<(u64, u64)>,
    bytes: u64,
    /// The first write-back error found while waiting: reported by [`Volume::finish`] (the
    /// kernel reports it once, to the wait, not again to the final flush).
    error: Option<io::Error>,
}

impl Volume {
    /// Opens or creates the target at `path`.
    ///
    /// - A block device is opened for writing, without truncation: capacity = device size, and
    ///   [`WriteAt::unwritten_reads_zero`] is `false`, so zero runs are written as write-zeroes
    ///   (unmapping where the device can, so a thin device stays thin) and read back as zeros.
    /// - A regular file, or a path that does not exist, is created or truncated to `size` bytes
    ///   as a sparse file ([`WriteAt::unwritten_reads_zero`] is `true`). With `size` = `None`
    ///   (a stream of unknown length) the file starts empty, grows as it is written, and its
    ///   capacity is `max_size`: call [`Volume::set_len`] once the size is known.
    ///
    /// # Errors
    /// [`Error::DeviceTooSmall`] when `size` exceeds the block device, [`Error::TooLarge`] when
    /// it exceeds `max_size` for a file, [`Error::NotAVolume`] for a directory, FIFO, ...,
    /// [`Error::Io`] when opening or sizing fails.
    ///
    /// # Caveats
    /// An existing file at `path` is truncated: its old content is gone even if the write later
    /// fails. Write to a temporary name and rename for all-or-nothing output.
    pub fn create(path: &Path, size: Option<u64>, max_size: u64, opts: &CreateOptions) -> Result<Volume> {
        match std::fs::metadata(path) {
            Ok(meta) if meta.file_type().is_block_device() => Self::open_block_device(path, size, opts),
            Ok(meta) if meta.is_file() => Self::create_file(path, size, max_size, opts),
            Ok(_) => Err(Error::NotAVolume { path: path.into() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::create_file(path, size, max_size, opts),
            Err(e) => Err(Error::io(path, "looking up the target", e)),
        }
    }

    fn open_block_device(path: &Path, size: Option<u64>, opts: &CreateOptions) -> Result<Volume> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, "opening the block device for writing", e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, "inspecting the opened target", e))?;
        if !meta.file_type().is_block_device() {
            // Replaced between the lookup and the open.
            return Err(Error::NotAVolume { path: path.into() });
        }
        let capacity =
            sys::device_size(&file).map_err(|e| Error::io(path, "reading the block device size", e))?;
        if let Some(needed) = size
            && needed > capacity
        {
            return Err(Error::DeviceTooSmall { path: path.into(), needed, capacity });
        }
        let logical_block = sys::logical_block_size(&file)
            .map(u64::from)
            .ok()
            .filter(|size| size.is_power_of_two())
            .unwrap_or(DEFAULT_LOGICAL_BLOCK);
        let direct = open_direct(&file, opts.write_cache);
        Ok(Volume {
            file,
            path: path.into(),
            target: Target::BlockDevice { logical_block, zeroing: AtomicU8::new(ZERO_BY_UNMAP) },
            capacity,
            preallocation: opts.preallocation,
            written_end: AtomicU64::new(0),
            direct_ok: AtomicBool::new(direct.is_some()),
            direct,
            in_flight: in_flight(opts.write_cache),
        })
    }

    fn create_file(path: &Path, size: Option<u64>, max_size: u64, opts: &CreateOptions) -> Result<Volume> {
        if let Some(size) = size
            && size > max_size
        {
            return Err(Error::TooLarge { path: path.into(), size, limit: max_size });
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io(path, "creating the file", e))?;
        let len = size.unwrap_or(0);
        file.set_len(len).map_err(|e| Error::io(path, format!("setting the length to {len} bytes"), e))?;
        let direct = open_direct(&file, opts.write_cache);
        Ok(Volume {
            file,
            path: path.into(),
            target: Target::File,
            capacity: size.unwrap_or(max_size),
            preallocation: opts.preallocation,
            written_end: AtomicU64::new(0),
            direct_ok: AtomicBool::new(direct.is_some()),
            direct,
            in_flight: in_flight(opts.write_cache),
        })
    }

    /// Whether the volume is a block device.
    pub fn is_block_device(&self) -> bool {
        matches!(self.target, Target::BlockDevice { .. })
    }

    /// The path the volume was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the length of a file volume (once a stream's size is known). A block device keeps
    /// its size: `len` only has to fit.
    ///
    /// # Errors
    /// [`Error::DeviceTooSmall`] when `len` exceeds a block device; [`Error::Io`] otherwise.
    pub fn set_len(&self, len: u64) -> Result<()> {
        match self.target {
            Target::BlockDevice { .. } if len > self.capacity => {
                Err(Error::DeviceTooSmall { path: self.path.clone(), needed: len, capacity: self.capacity })
            }
            Target::BlockDevice { .. } => Ok(()),
            Target::File => self
                .file
                .set_len(len)
                .map_err(|e| Error::io(&self.path, format!("setting the length to {len} bytes"), e)),
        }
    }

    /// Preallocates if asked, then flushes data to stable storage (`fdatasync`; on a block
    /// device this also flushes the device's write cache). The volume is complete only when
    /// this returns `Ok`.
    ///
    /// # Errors
    /// [`Error::Io`] when allocation or the flush fails: out of space, or a write-back error of
    /// an earlier write.
    pub fn finish(self) -> Result<()> {
        let lost = self
            .in_flight
            .as_ref()
            .and_then(|q| q.lock().unwrap_or_else(PoisonError::into_inner).error.take());
        if let Some(e) = lost {
            return Err(Error::io(&self.path, "writing back to the device", e));
        }
        if self.preallocation == Preallocation::Full && !self.is_block_device() {
            self.preallocate().map_err(|e| Error::io(&self.path, "preallocating", e))?;
        }
        sys::datasync(&self.file).map_err(|e| Error::io(&self.path, "flushing to stable storage", e))
    }

    /// Allocates every hole of the file; where the file system cannot fallocate, writes zeros
    /// into the holes.
    fn preallocate(&self) -> io::Result<()> {
        let len = self.file.metadata()?.len();
        if len == 0 {
            return Ok(());
        }
        match sys::allocate(&self.file, 0, len) {
            Err(e) if sys::is_unsupported(&e) => fill_holes(&self.file, len),
            other => other,
        }
    }

    /// Checks that `[offset, offset + len)` lies inside the volume; returns its end.
    fn check_range(&self, offset: u64, len: u64) -> io::Result<u64> {
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity => Ok(end),
            _ => Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("write past the end of the volume (capacity {} bytes)", self.capacity),
            )),
        }
    }

    /// Splits a write of `len` bytes from `buf` at `offset` into a head and a tail that go
    /// through the page cache and an aligned middle that goes through the direct descriptor:
    /// returns the middle's start in `buf` and its length, or `None` when the whole write goes
    /// through the page cache (no direct descriptor, buffer and offset not aligned alike, or
    /// the middle too small to be worth a synchronous write).
    fn direct_part(&self, buf: &[u8], offset: u64) -> Option<(usize, usize)> {
        if self.direct.is_none() || !self.direct_ok.load(Ordering::Relaxed) {
            return None;
        }
        aligned_middle(buf, offset, DIRECT_MIN_BYTES)
    }

    /// Writes `buf` at `offset`, its aligned middle with direct I/O where possible.
    fn write_data(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let Some((head, middle)) = self.direct_part(buf, offset) else {
            return self.file.write_all_at(buf, offset);
        };
        self.file.write_all_at(&buf[..head], offset)?;
        let at = offset + head as u64;
        if let Some(direct) = &self.direct {
            match direct.write_all_at(&buf[head..head + middle], at) {
                Ok(()) => {}
                Err(e) if sys::is_unsupported(&e) => {
                    // Rejected before anything was written: stricter alignment than assumed.
                    self.direct_ok.store(false, Ordering::Relaxed);
                    self.file.write_all_at(&buf[head..head + middle], at)?;
                }
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(&buf[head + middle..], at + middle as u64)
    }

    /// Makes a range of a file read as zeros: punches a hole where something may have been
    /// written, and does nothing past that.
    fn zero_file(&self, offset: u64, end: u64) -> io::Result<()> {
        let end = end.min(self.written_end.load(Ordering::Relaxed));
        if offset >= end {
            return Ok(());
        }
        match sys::punch_hole(&self.file, offset, end - offset) {
            Err(e) if sys::is_unsupported(&e) => write_zeros(&self.file, offset, end - offset),
            other => other,
        }
    }

    /// Zeroes a range of a block device: the unaligned edges by writing zeros, the aligned
    /// middle with the cheapest method the device accepts.
    fn zero_device(&self, offset: u64, end: u64, logical_block: u64, zeroing: &AtomicU8) -> io::Result<()> {
        let aligned_start = offset.next_multiple_of(logical_block);
        let aligned_end = end - end % logical_block;
        if aligned_start >= aligned_end {
            return write_zeros(&self.file, offset, end - offset);
        }
        write_zeros(&self.file, offset, aligned_start - offset)?;
        let mut pos = aligned_start;
        while pos < aligned_end {
            // MAX_CALL_BYTES is a multiple of every logical block size.
            let len = (aligned_end - pos).min(MAX_CALL_BYTES);
            self.zero_aligned(pos, len, zeroing)?;
            pos += len;
        }
        write_zeros(&self.file, aligned_end, end - aligned_end)
    }

    fn zero_aligned(&self, offset: u64, len: u64, zeroing: &AtomicU8) -> io::Result<()> {
        loop {
            let method = zeroing.load(Ordering::Relaxed);
            let result = match method {
                // Write-zeroes that may unmap: a loop device punches a hole in its backing
                // file, a thin LV or an SSD releases the blocks. Reads back zeros, always.
                ZERO_BY_UNMAP => sys::punch_hole(&self.file, offset, len),
                // Write-zeroes that keeps blocks allocated; the kernel writes zero pages itself
                // when the device has no such command.
                ZERO_BY_WRITE_ZEROES => sys::zero_range(&self.file, offset, len),
                ZERO_BY_WRITING..=u8::MAX => return write_zeros(&self.file, offset, len),
            };
            match result {
                Err(e) if sys::is_unsupported(&e) => {
                    let _ =
                        zeroing.compare_exchange(method, method + 1, Ordering::Relaxed, Ordering::Relaxed);
                }
                other => return other,
            }
        }
    }
}

/// The `O_DIRECT` descriptor for [`WriteCache::Direct`] (`None` where the file system has no
/// direct I/O); none for [`WriteCache::Bounded`].
fn open_direct(file: &File, cache: WriteCache) -> Option<File> {
    match cache {
        WriteCache::Direct => sys::reopen_direct_for_writing(file).ok(),
        WriteCache::Bounded => None,
    }
}

/// The writeback queue of [`WriteCache::Bounded`].
fn in_flight(cache: WriteCache) -> Option<Mutex<InFlight>> {
    match cache {
        WriteCache::Direct => None,
        WriteCache::Bounded => Some(Mutex::new(InFlight::default())),
    }
}

/// Writes zeros into every hole of the first `len` bytes of `file`, so that all of it is
/// allocated (for file systems without fallocate).
fn fill_holes(file: &File, len: u64) -> io::Result<()> {
    let mut pos = 0;
    while pos < len {
        let (hole_end, next) = match sys::next_data(file, pos)? {
            Some((start, data_len)) => (start.min(len), start.saturating_add(data_len.max(1))),
            None => (len, len),
        };
        write_zeros(file, pos, hole_end.saturating_sub(pos))?;
        pos = next;
    }
    Ok(())
}

/// Writes `len` zero bytes at `offset`.
fn write_zeros(file: &File, mut offset: u64, len: u64) -> io::Result<()> {
    let end = offset + len;
    while offset < end {
        let n = (end - offset).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

impl WriteAt for Volume {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = self.check_range(offset, buf.len() as u64)?;
        // Recorded first: a write that fails halfway may still have landed in part.
        self.written_end.fetch_max(end, Ordering::Relaxed);
        self.write_data(buf, offset)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let end = self.check_range(offset, len)?;
        match &self.target {
            Target::File => self.zero_file(offset, end),
            Target::BlockDevice { logical_block, zeroing } => {
                self.zero_device(offset, end, *logical_block, zeroing)
            }
        }
    }

    fn unwritten_reads_zero(&self) -> bool {
        !self.is_block_device()
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }

    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts writeback of a finished range so the
    /// final `fdatasync` does not have to write the whole volume at once (with a large page
    /// cache the kernel would otherwise start writing only at the end). Best effort.
    ///
    /// With [`WriteCache::Bounded`], also waits for the oldest ranges to reach the device (and
    /// drops them from the cache) once more than [`WRITEBACK_IN_FLIGHT_BYTES`] are in flight.
    /// A write-back error found there is kept for [`Volume::finish`] to report.
    fn start_writeback(&self, offset: u64, len: u64) {
        let _ = sys::start_writeback(&self.file, offset, len);
        let Some(in_flight) = &self.in_flight else {
            return;
        };
        let mut in_flight = in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        in_flight.ranges.push_back((offset, len));
        in_flight.bytes += len;
        while in_flight.bytes > WRITEBACK_IN_FLIGHT_BYTES
            && let Some((offset, len)) = in_flight.ranges.pop_front()
        {
            in_flight.bytes -= len;
            match sys::wait_writeback(&self.file, offset, len) {
                Ok(()) => sys::drop_cached(&self.file, offset, len),
                // A file system without it: its writeback is the kernel's, as with `Direct`.
                Err(e) if sys::is_unsupported(&e) => {}
                Err(e) => {
                    in_flight.error.get_or_insert(e);
                }
            }
        }
    }

    /// `copy_file_range` from `src`; `Ok(false)` when the kernel cannot copy between these
    /// files (different file systems on older kernels, a block device, no support), so that
    /// the caller copies by hand.
    fn copy_from_file(&self, src: &File, src_offset: u64, offset: u64, len: u64) -> io::Result<bool> {
        let end = self.check_range(offset, len)?;
        if self.is_block_device() {
            // copy_file_range works between regular files only.
            return Ok(false);
        }
        self.written_end.fetch_max(end, Ordering::Relaxed);
        let (mut from, mut to) = (src_offset, offset);
        while to < end {
            // At most MAX_CALL_BYTES (1 GiB): fits a usize on every target.
            let chunk = (end - to).min(MAX_CALL_BYTES) as usize;
            match sys::copy_range(src, &mut from, &self.file, &mut to, chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the source file ends at offset {from}, inside the {len} bytes to copy from offset {src_offset}"
                        ),
                    ));
                }
                Ok(_) => {}
                Err(e) if sys::is_unsupported(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;

    fn allocated(path: &Path) -> u64 {
        std::fs::metadata(path).expect("stat").blocks() * 512
    }

    fn read_at(path: &Path, offset: u64, len: u64) -> Vec<u8> {
        let mut buf = vec![0u8; len as usize];
        File::open(path).expect("open").read_exact_at(&mut buf, offset).expect("read");
        buf
    }

    fn is_zeros(buf: &[u8]) -> bool {
        buf.iter().all(|&b| b == 0)
    }

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
    }

    #[test]
    fn new_file_volume_is_sparse_and_holds_what_was_written() {
        let scratch = Scratch::new();
        let path = scratch.path("disk.img");
        let volume =
            Volume::create(&path, Some(64 * MIB), 64 * MIB, &CreateOptions::default()).expect("create");

        volume.write_all_at(&[0x11; 4096], 0).expect("write");
        volume.write_all_at(&[0x22; 4096], 10 * MIB).expect("write");
        volume.write_all_at(&[0x33; 4096], 64 * MIB - 4096).expect("write");
        volume.finish().expect("finish");

        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 64 * MIB);
        assert!(allocated(&path) <= 64 * KIB, "allocated {} bytes", allocated(&path));
        assert_eq!(read_at(&path, 0, 4096), vec![0x11; 4096]);
        assert!(is_zeros(&read_at(&path, 4096, 10 * MIB - 4096)));
        assert_eq!(read_at(&path, 10 * MIB, 4096), vec![0x22; 4096]);
        assert_eq!(read_at(&path, 64 * MIB - 4096, 4096), vec![0x33; 4096]);
    }

    #[test]
    fn file_volume_reports_its_geometry() {
        let scratch = Scratch::new();
        let path = scratch.path("disk.img");

        let volume = Volume::create(&path, Some(MIB), 8 * MIB, &CreateOptions::default()).expect("create");

        assert!(!volume.is_block_device());
        assert!(volume.unwritten_reads_zero());
        assert_eq!(volume.capacity(), MIB);
        assert_eq!(volume.path(), path);
    }

    #[test]
    fn existing_file_is_truncated() {
        let scratch = Scratch::new();
        let path = scratch.path("disk.img");
        std::fs::write(&path, vec![0xee; 2 * MIB as usize]).expect("old content");

        let volume = Volume::create(&path, Some(MIB), MIB, &CreateOptions::default()).expect("create");
        volume.finish().expect("finish");

        assert!(is_zeros(&read_at(&path, 0, MIB)));
        assert_eq!(allocated(&path), 0);
    }

    #[test]
    fn write_zeroes_punches_a_hole_in_written_data() {
        let scratch = Scratch::new();
        let path = scratch.path("disk.img");
        let volume =
            Volume::create(&path, Some(2 * MIB), 2 * MIB, &CreateOptions::default()).expect("create");
        volume.write_all_at(&vec![0xff; 2 * MIB as usize], 0).expect("write");

        volume.write_zeroes(256 * KIB, MIB).expect("zero");
        volume.finish().expect("finish");

        assert!(is_zeros(&read_at(&path, 256 * KIB, MIB)));
        assert_eq!(read_at(&path, 0, 256 * KIB), vec![0xff; 256 * KIB as usize]);
        assert_eq!(read_at(&path, 1280 * KIB, 768 * KIB), vec![0xff; 768 * KIB as usize]);
        assert!(allocated(&path) <= MIB + 64 * KIB, "allocated {} bytes", allocated(&path));
    }

    #[test]
    fn write_zeroes_where_nothing_was_written_is_free_and_harmless() {
        let scratch = Scratch::new();
        let path = scratch.path("disk.img");
        let volume =
            Volume::create(&path, Some(4 * MIB), 4 * MIB, &CreateOptions::default()).expect("create");
        volume.write_all_at(&[7; 4096], 0).expect("write");

        volume.write_zeroes(MIB, 3 * MIB).expect("zero");
        volume.write_zeroes(100, 1000).expect("zero inside written data");
        volume.finish().expect("finish");

        let head = read_at(&path, 0, 4096);
        assert_eq!(&head[..100], &[7; 100]);
        assert!(is_zeros(&head[100..1100]));
        assert_eq!(&head[1100..], &[7; 4096 - 1100]);
        assert!(is_zeros(&read_at(&path, MIB, 3 * MIB)));
    }

    #[test]
    fn writing_past_the_capacity_fails() {
        let scratch = Scratch::new();
        let volume = Volume::create(&scratch.path("disk.img"), Some(MIB), MIB, &CreateOptions::default())
            .expect("create");

        let write = volume.write_all_at(&[1; 2], MIB - 1).expect_err("past the end");
        let zero = volume.write_zeroes(MIB, 1).expect_err("past the end");
        let overflow = volume.write_zeroes(u64::MAX, 2).expect_err("overflow");

        for err in [write, zero, overflow] {
            assert_eq!(err.to_string(), format!("write past the end of the volume (capacity {MIB} bytes)"));
        }
    }

    #[test]
    fn large_writes_aligned_or_not_land_byte_for_byte_and_leave_holes() {
        let scratch = Scratch::new();
        let path = scratch.path("disk.img");
        let volume =
            Volume::create(&path, Some(16 * MIB), 16 * MIB, &CreateOptions::default()).expect("create");
        if volume.direct.is_none() {
            eprintln!("note: no O_DIRECT in the temp dir (tmpfs?); only the buffered path runs");
        }
        let data: Vec<u8> = (0..2 * MIB + 8192).map(|i| (i % 241) as u8 + 1).collect();
        // A buffer whose address is congruent to the file offset modulo 4 KiB: unaligned head
        // and tail through the page cache, the middle direct.
        let mut backing = vec![0u8; data.len() + 8192];
        let base = backing.as_ptr().align_offset(4096);
        let (offset, skew) = (4 * MIB + 100, 100);
        let buf = &mut backing[base + skew..base + skew + data.len()];
        buf.copy_from_slice(&data);
        assert!(volume.direct_part(buf, offset).is_none_or(|(head, _)| head == 3996));

        volume.write_all_at(buf, offset).expect("aligned-alike write");
        // The same bytes from a buffer aligned unlike its offset: all through the page cache.
        volume.write_all_at(&data[1..], 10 * MIB + 7).expect("unaligned write");
        volume.finish().expect("finish");

        assert_eq!(read_at(&path, offset, data.len() as u64), data);
        assert_eq!(read_at(&path, 10 * MIB + 7, data.len() as u64 - 1), &data[1..]);
        assert!(is_zeros(&read_at(&path, 0, 4 * MIB + 100)));
        assert!(allocated(&path) <= 5 * MIB + 64 * KIB, "allocated {} bytes", allocated(&path));
    }

    #[test]
    fn copy_from_file_copies_in_the_kernel() {
        let scratch = Scratch::new();
        let path = scratch.path("disk.img");
        let data: Vec<u8> = (0..3 * MIB).map(|i| (i % 251) as u8).collect();
        std::fs::write(scratch.path("src"), &data).expect("source");
        let src = File::open(scratch.path("src")).expect("open source");
        let volume =
            Volume::create(&path, Some(4 * MIB), 4 * MIB, &CreateOptions::default()).expect("create");

        let copied = volume.copy_from_file(&src, 4096, MIB, 2 * MIB).expect("copy");
        volume.finish().expect("finish");

        if !copied {
            eprintln!("note: copy_file_range is not available here; the caller would copy by hand");
            return;
        }
        assert_eq!(read_at(&path, MIB, 2 * MIB), &data[4096..4096 + 2 * MIB as usize]);
        assert!(is_zeros(&read_at(&path, 0, MIB)));
    }

    #[test]
    fn copy_from_a_short_source_fails_as_unexpected_eof() {
        let scratch = Scratch::new();
        std::fs::write(scratch.path("src"), vec![5u8; 8192]).expect("source");
        let src = File::open(scratch.path("src")).expect("open source");
        let volume = Volume::create(&scratch.path("disk.img"), Some(MIB), MIB, &CreateOptions::default())
            .expect("create");

        match volume.copy_from_file(&src, 0, 0, 65536) {
            Ok(false) => eprintln!("note: copy_file_range is not available here"),
            Ok(true) => panic!("copying past the end of the source succeeded"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}"),
        }
    }

    #[test]
    fn copy_past_the_capacity_fails() {
        let scratch = Scratch::new();
        let src = tempfile::tempfile().expect("source");
        let volume = Volume::create(&scratch.path("disk.img"), Some(MIB), MIB, &CreateOptions::default())
            .expect("create");

        let err = volume.copy_from_file(&src, 0, MIB - 10, 11).expect_err("past the end");

        assert!(err.to_string().contains("capacity"), "{err}");
    }

    #[test]
    fn volume_of_unknown_size_grows_to_max_size_and_takes_its_length_at_the_end() {
        let scratch = Scratch::new();
        let path = scratch.path("disk.img");
        let volume = Volume::create(&path, None, 16 * MIB, &CreateOptions::default()).expect("create");
        assert_eq!(volume.capacity(), 16 * MIB);
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 0);

        volume.write_all_at(&[9; 4096], 4 * MIB).expect("write");
        volume.set_len(8 * MIB).expect("set_len");
        volume.finish().expect("finish");

        assert_eq!(std::fs::metadata(&path).expect("stat").len(), 8 * MIB);
        assert_eq!(read_at(&path, 4 * MIB, 4096), vec![9; 4096]);
        assert!(is_zeros(&read_at(&path, 0, 4 * MIB)));
    }

    #[test]
    fn full_preallocation_allocates_the_whole_file_and_keeps_data() {
        let scratch = Scratch::new();
        let path = scratch.path("disk.img");
        let opts = CreateOptions { preallocation: Preallocation::Full, ..CreateOptions::default() };
        let volume = Volume::create(&path, Some(8 * MIB), 8 * MIB, &opts).expect("create");
        volume.write_all_at(&[3; 4096], MIB).expect("write");

        volume.finish().expect("finish");

        assert!(allocated(&path) >= 8 * MIB, "allocated {} bytes", allocated(&path));
        assert_eq!(read_at(&path, MIB, 4096), vec![3; 4096]);
        assert!(is_zeros(&read_at(&path, 0, MIB)));
    }

    #[test]
    fn fill_holes_allocates_every_hole_and_keeps_data() {
        let scratch = Scratch::new();
        let path = scratch.path("holes.img");
        let file = File::options().read(true).write(true).create_new(true).open(&path).expect("create");
        file.set_len(4 * MIB).expect("set_len");
        file.write_all_at(&[1; 4096], MIB).expect("write");
        file.write_all_at(&[2; 4096], 4 * MIB - 4096).expect("write");

        fill_holes(&file, 4 * MIB).expect("fill");

        assert!(allocated(&path) >= 4 * MIB, "allocated {} bytes", allocated(&path));
        assert_eq!(read_at(&path, MIB, 4096), vec![1; 4096]);
        assert_eq!(read_at(&path, 4 * MIB - 4096, 4096), vec![2; 4096]);
        assert!(is_zeros(&read_at(&path, 0, MIB)));
    }

    #[test]
    fn bounded_cache_waits_for_the_oldest_ranges_past_the_in_flight_limit() {
        // Ranges of 48 MiB, each with 1 MiB of data and the rest holes: range bytes count.
        const RANGE: u64 = 48 * MIB;
        let scratch = Scratch::new();
        let path = scratch.path("disk.img");
        let opts = CreateOptions { write_cache: WriteCache::Bounded, ..CreateOptions::default() };
        let volume = Volume::create(&path, Some(8 * RANGE), 8 * RANGE, &opts).expect("create");
        assert!(volume.direct.is_none(), "bounded writes all go through the page cache");
        let data: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 + 1).collect();
        let most_ranges = (WRITEBACK_IN_FLIGHT_BYTES / RANGE) as usize;

        for i in 0..8 {
            volume.write_all_at(&data, i * RANGE).expect("write");
            volume.start_writeback(i * RANGE, RANGE);
            let in_flight = volume.in_flight.as_ref().expect("bounded").lock().expect("lock");
            assert!(in_flight.bytes <= WRITEBACK_IN_FLIGHT_BYTES, "{} bytes in flight", in_flight.bytes);
            assert_eq!(in_flight.ranges.iter().map(|&(_, len)| len).sum::<u64>(), in_flight.bytes);
            assert_eq!(in_flight.ranges.len(), (i as usize + 1).min(most_ranges));
            assert_eq!(in_flight.ranges.back(), Some(&(i * RANGE, RANGE)), "the newest range is in flight");
        }
        volume.finish().expect("finish");

        for i in 0..8 {
            assert_eq!(read_at(&path, i * RANGE, MIB), data, "range {i}");
            assert!(is_zeros(&read_at(&path, i * RANGE + MIB, MIB)), "hole after range {i}");
        }
    }

    #[test]
    fn finish_flushes_and_returns_ok() {
        // fdatasync's effect cannot be observed from here; this checks that finishing an
        // empty, a written and a zeroed volume succeeds and leaves the content in place.
        let scratch = Scratch::new();
        let path = scratch.path("disk.img");
        let volume = Volume::create(&path, Some(MIB), MIB, &CreateOptions::default()).expect("create");
        volume.write_all_at(b"flushed", 0).expect("write");

        volume.finish().expect("finish");

        assert_eq!(read_at(&path, 0, 7), b"flushed");
    }

    #[test]
    fn file_larger_than_max_size_is_refused() {
        let scratch = Scratch::new();
        let path = scratch.path("disk.img");

        let err =
            Volume::create(&path, Some(2 * MIB), MIB, &CreateOptions::default()).expect_err("too large");

        assert_eq!(err.kind(), disk_formats::ErrorKind::TooLarge);
        assert!(err.to_string().contains("disk.img"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn a_directory_is_not_a_volume() {
        let scratch = Scratch::new();

        let err =
            Volume::create(scratch.dir.path(), Some(MIB), MIB, &CreateOptions::default()).expect_err("dir");

        assert_eq!(err.kind(), disk_formats::ErrorKind::Unsupported);
        assert!(matches!(err, Error::NotAVolume { .. }));
    }

    #[test]
    fn create_in_a_missing_directory_names_the_path_and_the_operation() {
        let scratch = Scratch::new();
        let path = scratch.path("missing/disk.img");

        let err = Volume::create(&path, Some(MIB), MIB, &CreateOptions::default()).expect_err("no dir");

        assert_eq!(err.kind(), disk_formats::ErrorKind::Io);
        assert_eq!(err.to_string(), format!("{}: creating the file", path.display()));
        assert!(std::error::Error::source(&err).is_some());
    }
}
