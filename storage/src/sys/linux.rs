//! Linux: sparse files, block devices and in-kernel copies.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use rustix::fs::{FallocateFlags, SeekFrom};
use rustix::io::Errno;

/// Whether `path` is (or links to) a block device. `false` when it does not exist.
pub fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.file_type().is_block_device())
}

/// The size of a block device in bytes (its metadata says 0). Moves the file offset, which the
/// crate never uses: all I/O is positional.
pub fn device_size(file: &File) -> io::Result<u64> {
    Ok(rustix::fs::seek(file, SeekFrom::End(0))?)
}

/// The logical block size of a block device: the alignment its write-zeroes need.
pub fn logical_block_size(file: &File) -> io::Result<u32> {
    Ok(rustix::fs::ioctl_blksszget(file)?)
}

/// Deallocates `[offset, offset + len)` so that it reads as zeros, keeping the size. On a file
/// this punches a hole; on a block device it is a write-zeroes that may unmap (a loop device
/// punches a hole in its backing file), and fails with `EOPNOTSUPP` when the device cannot.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    Ok(rustix::fs::fallocate(file, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len)?)
}

/// Zeroes `[offset, offset + len)` keeping the size. On a block device this is a write-zeroes
/// that keeps the blocks allocated; the kernel writes zero pages when the device has no
/// write-zeroes command.
pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    Ok(rustix::fs::fallocate(file, FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE, offset, len)?)
}

/// Allocates blocks for `[offset, offset + len)` of a file (fallocate mode 0), keeping data.
pub fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    Ok(rustix::fs::fallocate(file, FallocateFlags::empty(), offset, len)?)
}

/// Flushes the data of `file` (and the metadata needed to read it) to stable storage; on a
/// block device this flushes the device's write cache.
pub fn datasync(file: &File) -> io::Result<()> {
    Ok(rustix::fs::fdatasync(file)?)
}

/// Starts writing back the dirty pages of `[offset, offset + len)` without waiting for them
/// (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`). Not a durability guarantee: `datasync`
/// still has to follow.
#[allow(unsafe_code)]
pub fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len)) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    // SAFETY: `file` is an open descriptor for the duration of the call; sync_file_range reads
    // no memory of ours, it only takes integers.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Writes back the dirty pages of `[offset, offset + len)` and waits until they are on the
/// device (`sync_file_range` with `WAIT_BEFORE | WRITE | WAIT_AFTER`). Not a durability
/// guarantee (no device cache flush, no metadata): `datasync` still has to follow.
///
/// # Errors
/// A write-back error of those pages. The kernel reports it to this call *instead of* a later
/// `fdatasync` on the same descriptor (the error cursor advances), so the caller must keep it.
#[allow(unsafe_code)]
pub fn wait_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len)) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    let flags =
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: as in `start_writeback`: an open descriptor and integers, no memory of ours.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Drops the clean cached pages of `[offset, offset + len)` (`POSIX_FADV_DONTNEED`; dirty
/// pages stay). Best effort: a hint the kernel may ignore.
pub fn drop_cached(file: &File, offset: u64, len: u64) {
    if let Some(len) = std::num::NonZeroU64::new(len) {
        let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed);
    }
}

/// Opens the file behind `file` a second time for writing with `O_DIRECT` (through
/// `/proc/self/fd`, so it is the same inode even if the path was replaced since), so that large
/// aligned writes go from our buffer to the device without a copy into the page cache.
///
/// # Errors
/// `EINVAL` (see [`is_unsupported`]) where the file system has no direct I/O (tmpfs), or any
/// error of `open` (no `/proc`).
pub fn reopen_direct_for_writing(file: &File) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let flags = rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::CLOEXEC;
    Ok(File::from(rustix::fs::open(path.as_str(), flags, rustix::fs::Mode::empty())?))
}

/// See [`bound_allocator_retention`]: larger buffers are mapped, smaller ones reused.
#[cfg(target_env = "gnu")]
const MALLOC_MMAP_THRESHOLD: i32 = 1 << 20;

/// See [`bound_allocator_retention`]: free memory an arena keeps at its top.
#[cfg(target_env = "gnu")]
const MALLOC_TRIM_THRESHOLD: i32 = 32 << 20;

/// Fixes glibc's mmap and trim thresholds instead of letting them grow by themselves.
///
/// - Mmap threshold 1 MiB ([`MALLOC_MMAP_THRESHOLD`]): buffers above it (8 MiB conversion
///   windows, 4 MiB pieces) are mapped and unmapped, so memory stays bounded by what is in
///   flight. Left dynamic, glibc raises the threshold to the largest buffer freed and then
///   serves every later buffer up to that size from per-thread arenas and keeps the freed
///   ones: a streaming pipeline whose buffers move between threads grows by tens of MiB.
/// - Buffers below it, the network's receive buffers among them (hyper reads a socket into
///   buffers of up to ~400 KiB, a new one per read while the last one is still queued for the
///   converter), come from the arenas and are reused. With the earlier 128 KiB threshold each
///   of them was a fresh mapping: a page fault per 4 KiB in the receive copy and an `munmap`
///   per buffer, contending for the address-space lock (a 2 GiB upload spent 1.6 s of system
///   time on it, against 0.4 s now).
/// - Trim threshold 32 MiB ([`MALLOC_TRIM_THRESHOLD`]): fixing the mmap threshold also fixes
///   the trim threshold at its default 128 KiB, so freed receive buffers at the top of an
///   arena went back to the kernel at once and were faulted in again; up to 32 MiB of free
///   arena top now stays for the next buffers.
///
/// A no-op on other C libraries.
#[allow(unsafe_code)]
pub fn bound_allocator_retention() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt only changes allocator tuning; it takes integers and touches none of
        // our memory. Called at start-up, it races with no allocation of ours.
        let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD) };
        // SAFETY: as above.
        let _ = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD) };
    }
}

/// One `copy_file_range` call: copies up to `len` bytes, advancing both offsets; returns how
/// many bytes were copied (0 at the end of `src`).
pub fn copy_range(
    src: &File,
    src_offset: &mut u64,
    dst: &File,
    dst_offset: &mut u64,
    len: usize,
) -> io::Result<usize> {
    loop {
        match rustix::fs::copy_file_range(src, Some(&mut *src_offset), dst, Some(&mut *dst_offset), len) {
            Err(Errno::INTR) => {}
            other => return Ok(other?),
        }
    }
}

/// Whether an error of `copy_file_range`, `fallocate` or `FICLONE` means "this file system,
/// device or kernel cannot do that here", so that the caller should fall back to plain I/O.
pub fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::OPNOTSUPP | Errno::NOSYS | Errno::XDEV | Errno::INVAL | Errno::NOTTY)
    )
}

/// Makes `dst` share all of `src`'s blocks (`FICLONE`): an instant copy on file systems with
/// reflinks (XFS, btrfs, bcachefs). `dst` takes `src`'s size.
///
/// # Errors
/// `EOPNOTSUPP` / `EXDEV` / `EINVAL` (see [`is_unsupported`]) when the file system cannot
/// reflink these files; the caller then copies.
pub fn reflink(src: &File, dst: &File) -> io::Result<()> {
    Ok(rustix::fs::ioctl_ficlone(dst, src)?)
}

/// The next data extent of `file` at or after `offset`, as `(start, len)`, or `None` when only
/// holes (or nothing) remain. File systems that do not track holes report the whole rest of
/// the file as one extent.
pub fn next_data(file: &File, offset: u64) -> io::Result<Option<(u64, u64)>> {
    let start = match rustix::fs::seek(file, SeekFrom::Data(offset)) {
        Ok(start) => start,
        // ENXIO: no data at or after `offset` (or `offset` is past the end).
        Err(Errno::NXIO) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // There is always a hole at the end of the file, so this finds the end of the extent.
    let end = rustix::fs::seek(file, SeekFrom::Hole(start))?;
    Ok(Some((start, end.saturating_sub(start))))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn file_with_extents(extents: &[(u64, usize)], len: u64) -> File {
        let file = tempfile::tempfile().expect("temp file");
        file.set_len(len).expect("set_len");
        for &(offset, size) in extents {
            file.write_all_at(&vec![0xa5; size], offset).expect("write");
        }
        file
    }

    #[test]
    fn next_data_walks_the_data_extents_of_a_sparse_file() {
        let file = file_with_extents(&[(0, 4096), (MIB, 8192)], 4 * MIB);

        assert_eq!(next_data(&file, 0).expect("seek"), Some((0, 4096)));
        assert_eq!(next_data(&file, 100).expect("seek"), Some((100, 3996)));
        assert_eq!(next_data(&file, 4096).expect("seek"), Some((MIB, 8192)));
        assert_eq!(next_data(&file, MIB + 8192).expect("seek"), None);
    }

    #[test]
    fn next_data_past_the_end_is_none() {
        let file = file_with_extents(&[(0, 4096)], 4096);

        assert_eq!(next_data(&file, 4096).expect("seek"), None);
        assert_eq!(next_data(&file, 10 * MIB).expect("seek"), None);
    }

    #[test]
    fn punch_hole_deallocates_and_reads_zeros() {
        let file = file_with_extents(&[(0, MIB as usize)], MIB);

        punch_hole(&file, 4096, MIB - 8192).expect("punch");

        assert_eq!(next_data(&file, 4096).expect("seek"), Some((MIB - 4096, 4096)));
        let mut buf = vec![0xffu8; 8192];
        file.read_exact_at(&mut buf, 4096).expect("read");
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(file.metadata().expect("stat").len(), MIB);
    }

    #[test]
    fn reflink_shares_the_content_or_reports_unsupported() {
        let src = file_with_extents(&[(0, 65536)], 65536);
        let dir = tempfile::tempdir().expect("temp dir");
        let dst = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("dst"))
            .expect("dst");

        match reflink(&src, &dst) {
            Ok(()) => {
                let mut buf = vec![0u8; 65536];
                dst.read_exact_at(&mut buf, 0).expect("read");
                assert!(buf.iter().all(|&b| b == 0xa5));
            }
            Err(e) if is_unsupported(&e) => eprintln!("skipping: no reflinks on this file system ({e})"),
            Err(e) => panic!("FICLONE failed: {e}"),
        }
    }

    #[test]
    fn is_block_device_is_false_for_files_and_missing_paths() {
        let file = tempfile::NamedTempFile::new().expect("temp file");

        assert!(!is_block_device(file.path()));
        assert!(!is_block_device(Path::new("/nonexistent/diskplane")));
    }
}
