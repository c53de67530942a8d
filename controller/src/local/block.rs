//! `volumeMode: Block` volumes of the local pool: a loop device over a sparse backing file.
//!
//! ```text
//! volumes/<ns>/<name>/block.img   the backing file, sparse, sized like CDI sizes a Block PVC
//!                                 (the request rounded up to 1 MiB, no filesystem overhead)
//! /dev/loopN                      attached over block.img while the volume exists; workers
//!                                 write to the device, zero runs become holes in block.img
//! volumes/<ns>/<name>/disk.img    once committed: a symbolic link to /dev/loopN
//! ```
//! The device is found again by its backing file (device and inode, like `losetup -j`), so
//! nothing about it is stored: after a restart (or a reboot, which detaches every loop device)
//! [`attach`] re-attaches what is missing and the `disk.img` link is pointed at the new device.
//!
//! ## Caveats
//! - Needs root (or access to `/dev/loop-control` and the loop devices) and the loop driver.
//! - No direct I/O on the loop device: data passes the page cache of both the device and the
//!   backing file.

use std::fs;
use std::path::{Path, PathBuf};

use disk_formats::WriteAt;

use super::error::{Error, Result};

/// Block volumes are a whole number of MiB, like CDI's Block PVCs.
pub const ALIGNMENT: u64 = 1 << 20;

/// The size of the backing file (and device) for a requested capacity: rounded up to 1 MiB.
pub fn device_size(capacity: u64) -> u64 {
    capacity.div_ceil(ALIGNMENT).saturating_mul(ALIGNMENT)
}

/// Why this machine cannot have Block volumes, `None` when it can.
pub fn unavailable() -> Option<String> {
    storage::loop_available().err().map(|e| {
        format!("volumeMode: Block needs loop devices, and /dev/loop-control cannot be opened ({e}); run serve as root")
    })
}

/// Creates the sparse backing file of `size` bytes (replacing a leftover one) and flushes it.
///
/// # Errors
/// [`Error::Io`].
pub fn create_backing(path: &Path, size: u64) -> Result<()> {
    let file = fs::File::create(path).map_err(|e| Error::io("creating the block backing file", path, e))?;
    file.set_len(size).map_err(|e| Error::io("sizing the block backing file", path, e))?;
    file.sync_all().map_err(|e| Error::io("flushing", path, e))
}

/// The loop device attached over `backing`, if any.
pub fn device(backing: &Path) -> Option<PathBuf> {
    storage::loop_find(backing).ok()?.into_iter().next()
}

/// The loop device over `backing`, attaching one if none is.
///
/// # Errors
/// [`Error::Io`] when no device can be attached.
pub fn attach(backing: &Path) -> Result<PathBuf> {
    if let Some(device) = device(backing) {
        return Ok(device);
    }
    storage::loop_attach(backing).map_err(|e| Error::io("attaching a loop device over", backing, e))
}

/// Detaches every loop device over `backing`. Nothing to do when the file is gone.
///
/// # Errors
/// [`Error::Io`] when a device cannot be detached.
pub fn detach(backing: &Path) -> Result<()> {
    let Ok(devices) = storage::loop_find(backing) else { return Ok(()) };
    for device in devices {
        storage::loop_detach(&device).map_err(|e| Error::io("detaching loop device", &device, e))?;
    }
    Ok(())
}

/// Zeroes the whole device, releasing the backing file's blocks (a discard through the device,
/// so its page cache stays coherent), and flushes it.
///
/// # Errors
/// [`Error::Io`].
pub fn zero(device: &Path) -> Result<()> {
    if !storage::is_block_device(device) {
        // Never let the volume code create a regular file where a device was expected.
        let e = std::io::Error::new(std::io::ErrorKind::NotFound, "not a block device");
        return Err(Error::io("zeroing", device, e));
    }
    let io = |e: storage::Error| Error::io("zeroing", device, std::io::Error::other(e));
    let volume =
        storage::Volume::create(device, None, u64::MAX, &storage::CreateOptions::default()).map_err(io)?;
    let size = volume.capacity();
    volume.write_zeroes(0, size).map_err(|e| Error::io("zeroing", device, e))?;
    volume.finish().map_err(io)
}

/// Flushes the device (and through it the backing file) to stable storage.
///
/// # Errors
/// [`Error::Io`].
pub fn flush(device: &Path) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(device)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("flushing", device, e))
}

/// Makes `link` a symbolic link to `device`, atomically (a temporary link renamed over it).
/// Nothing is written when it already points there.
///
/// # Errors
/// [`Error::Io`].
pub fn link(link: &Path, device: &Path) -> Result<bool> {
    if fs::read_link(link).is_ok_and(|target| target == device) {
        return Ok(false);
    }
    let tmp = link.with_file_name(".disk.img.link");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(device, &tmp).map_err(|e| Error::io("linking the device", &tmp, e))?;
    fs::rename(&tmp, link).map_err(|e| Error::io("linking the device", link, e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_size_rounds_up_to_a_mebibyte() {
        assert_eq!(device_size(1), ALIGNMENT);
        assert_eq!(device_size(ALIGNMENT), ALIGNMENT);
        assert_eq!(device_size(ALIGNMENT + 512), 2 * ALIGNMENT);
        assert_eq!(device_size(1 << 30), 1 << 30);
    }

    #[test]
    fn link_replaces_and_reports_changes() {
        let dir = tempfile::tempdir().unwrap();
        let link_path = dir.path().join("disk.img");
        assert!(link(&link_path, Path::new("/dev/loop7")).unwrap());
        assert!(!link(&link_path, Path::new("/dev/loop7")).unwrap());
        assert!(link(&link_path, Path::new("/dev/loop9")).unwrap());
        assert_eq!(fs::read_link(&link_path).unwrap(), Path::new("/dev/loop9"));
        assert!(!dir.path().join(".disk.img.link").exists());
    }
}
