//! Loop devices: a block device over a regular file (`/dev/loop-control`, the `LOOP_*` ioctls).
//!
//! rustix has no wrappers for these, so the ioctls go through libc here, each behind
//! `#[allow(unsafe_code)]` with a `// SAFETY:` comment. The structures are the kernel's
//! `struct loop_info64` and `struct loop_config` (`<linux/loop.h>`), laid out as `repr(C)`.
//!
//! Devices are attached without `LO_FLAGS_AUTOCLEAR`: they stay until [`loop_detach`], so a
//! device outlives the process that attached it (a restarted server finds it again with
//! [`loop_find`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;
/// How often a free device is looked for when another process takes it first (`EBUSY`).
const ATTACH_TRIES: usize = 16;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

impl LoopInfo64 {
    fn zeroed() -> LoopInfo64 {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }

    /// Informational only (`losetup -l` shows it); truncated to what fits.
    fn with_name(mut self, path: &Path) -> LoopInfo64 {
        let bytes = path.as_os_str().as_encoded_bytes();
        let len = bytes.len().min(LO_NAME_SIZE - 1);
        self.lo_file_name[..len].copy_from_slice(&bytes[..len]);
        self
    }
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

// The kernel's sizes: a mismatch would make the ioctls read or write past our structs.
const _: () = assert!(size_of::<LoopInfo64>() == 232);
const _: () = assert!(size_of::<LoopConfig>() == 304);

/// `ioctl(fd, request, arg)` where `arg` is an integer.
#[allow(unsafe_code)]
fn ioctl_int(file: &File, request: libc::c_ulong, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: the descriptor is open for the duration of the call, and each request passed
    // here (LOOP_CTL_GET_FREE, LOOP_SET_FD, LOOP_CLR_FD) takes an integer, not a pointer, so
    // the kernel touches none of our memory.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, arg) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// `ioctl(fd, request, &mut value)` for a `repr(C)` struct the request reads or fills.
///
/// # Safety
/// `T` must be the exact structure `request` reads or writes.
#[allow(unsafe_code)]
unsafe fn ioctl_ptr<T>(file: &File, request: libc::c_ulong, value: &mut T) -> io::Result<()> {
    // SAFETY: the caller guarantees that `T` is what `request` expects; `value` is a live,
    // exclusive borrow for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, std::ptr::from_mut(value)) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Attaches a free loop device over `backing` (opened read-write) and returns its path
/// (`/dev/loopN`). Uses `LOOP_CONFIGURE` (Linux 5.8+), else `LOOP_SET_FD` +
/// `LOOP_SET_STATUS64`. The device is not auto-cleared: detach it with [`loop_detach`].
///
/// # Errors
/// Opening `/dev/loop-control` (missing: no loop driver; `EACCES`: needs root), the device node,
/// or the ioctls.
pub fn loop_attach(backing: &Path) -> io::Result<PathBuf> {
    let file = OpenOptions::new().read(true).write(true).open(backing)?;
    let control = OpenOptions::new().read(true).write(true).open("/dev/loop-control")?;
    let mut last = io::Error::from(io::ErrorKind::ResourceBusy);
    for _ in 0..ATTACH_TRIES {
        let number = ioctl_int(&control, LOOP_CTL_GET_FREE, 0)?;
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = OpenOptions::new().read(true).write(true).open(&path)?;
        match configure(&device, &file, backing) {
            Ok(()) => return Ok(path),
            // Another process took the device between GET_FREE and our attach: try the next.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn configure(device: &File, backing: &File, name: &Path) -> io::Result<()> {
    let fd = u32::try_from(backing.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let info = LoopInfo64::zeroed().with_name(name);
    let mut config = LoopConfig { fd, block_size: 0, info, reserved: [0; 8] };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `LoopConfig` mirrors.
    #[allow(unsafe_code)]
    let configured = unsafe { ioctl_ptr(device, LOOP_CONFIGURE, &mut config) };
    match configured {
        Ok(()) => Ok(()),
        // Kernels before 5.8 do not know LOOP_CONFIGURE.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTTY)) => {
            ioctl_int(device, LOOP_SET_FD, libc::c_ulong::from(fd))?;
            let mut info = LoopInfo64::zeroed().with_name(name);
            // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64`, which `LoopInfo64` mirrors.
            #[allow(unsafe_code)]
            let status = unsafe { ioctl_ptr(device, LOOP_SET_STATUS64, &mut info) };
            if let Err(e) = status {
                let _ = ioctl_int(device, LOOP_CLR_FD, 0);
                return Err(e);
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Detaches the loop device `device` (`LOOP_CLR_FD`). A device still held open (by qemu, a
/// mount) is detached by the kernel when the last user closes it. Detaching a device that
/// has nothing attached is not an error.
///
/// # Errors
/// Opening the device or the ioctl.
pub fn loop_detach(device: &Path) -> io::Result<()> {
    let file = OpenOptions::new().read(true).open(device)?;
    match ioctl_int(&file, LOOP_CLR_FD, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// The `(device, inode)` of the file behind the loop device, `None` when nothing is attached.
fn backing_of(device: &Path) -> io::Result<Option<(u64, u64)>> {
    let file = OpenOptions::new().read(true).open(device)?;
    let mut info = LoopInfo64::zeroed();
    // SAFETY: LOOP_GET_STATUS64 fills a `struct loop_info64`, which `LoopInfo64` mirrors.
    #[allow(unsafe_code)]
    let status = unsafe { ioctl_ptr(&file, LOOP_GET_STATUS64, &mut info) };
    match status {
        Ok(()) => Ok(Some((info.lo_device, info.lo_inode))),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The loop devices attached over `backing` (the same file: device and inode numbers, as
/// `losetup -j` compares them), in `/sys/block` order. Empty when there is none or the
/// machine has no loop driver.
///
/// # Errors
/// `stat` of `backing`.
pub fn loop_find(backing: &Path) -> io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(backing)?;
    let wanted = (meta.dev(), meta.ino());
    let Ok(entries) = std::fs::read_dir("/sys/block") else { return Ok(Vec::new()) };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("loop")) else { continue };
        // Only attached devices have a backing file: skip the others without opening them.
        if !entry.path().join("loop/backing_file").exists() {
            continue;
        }
        let device = Path::new("/dev").join(name);
        if let Ok(Some(backing)) = backing_of(&device)
            && backing == wanted
        {
            found.push(device);
        }
    }
    found.sort_by_key(|p| p.to_str().and_then(|s| s.strip_prefix("/dev/loop")?.parse::<u64>().ok()));
    Ok(found)
}

/// Whether this process can attach loop devices: `/dev/loop-control` opens read-write.
pub fn loop_available() -> io::Result<()> {
    OpenOptions::new().read(true).write(true).open("/dev/loop-control").map(drop)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    /// Loop devices need root and the loop driver: the test says so and stops without them.
    fn loop_usable() -> bool {
        match loop_available() {
            Ok(()) => true,
            Err(e) => {
                eprintln!("SKIPPED: loop devices unavailable (/dev/loop-control: {e})");
                false
            }
        }
    }

    #[test]
    fn attach_find_write_detach() {
        if !loop_usable() {
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let backing = dir.path().join("block.img");
        let file = File::create(&backing).expect("backing");
        file.set_len(4 << 20).expect("size");
        drop(file);

        let device = loop_attach(&backing).expect("attach");
        assert_eq!(loop_find(&backing).expect("find"), vec![device.clone()]);
        let dev = OpenOptions::new().write(true).open(&device).expect("open device");
        dev.write_all_at(b"through the device", 1 << 20).expect("write");
        dev.sync_all().expect("flush");
        drop(dev);
        let mut buf = [0u8; 18];
        File::open(&backing).expect("backing").read_exact_at(&mut buf, 1 << 20).expect("read");
        assert_eq!(&buf, b"through the device");

        loop_detach(&device).expect("detach");
        assert!(loop_find(&backing).expect("find").is_empty());
    }

    #[test]
    fn find_is_empty_for_a_file_without_device() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        assert!(loop_find(file.path()).expect("find").is_empty());
    }
}
