//! Block-device volumes, on a loop device over a sparse backing file. Needs root and
//! `losetup`; each test is skipped, with the reason printed, when a loop device cannot be set up.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use disk_formats::WriteAt;
use storage::{CreateOptions, Preallocation, Volume, WriteCache};

const MIB: u64 = 1 << 20;

/// A loop device, detached when dropped (also when a test fails).
struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    /// Attaches `backing` to a free loop device, or says why it cannot.
    fn attach(backing: &Path) -> Option<Self> {
        let output = match Command::new("losetup").args(["--find", "--show"]).arg(backing).output() {
            Ok(output) => output,
            Err(e) => {
                eprintln!("skipping: cannot run losetup: {e}");
                return None;
            }
        };
        if !output.status.success() {
            eprintln!("skipping: losetup failed: {}", String::from_utf8_lossy(&output.stderr).trim());
            return None;
        }
        let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
        Some(Self { path: path.into() })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        match Command::new("losetup").arg("--detach").arg(&self.path).status() {
            Ok(status) if status.success() => {}
            other => eprintln!("warning: detaching {} failed: {other:?}", self.path.display()),
        }
    }
}

/// A backing file of `len` bytes, every byte `fill` (so every block is allocated).
fn backing_file(dir: &Path, len: u64, fill: u8) -> PathBuf {
    let path = dir.join("backing.img");
    std::fs::write(&path, vec![fill; len as usize]).expect("backing file");
    path
}

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

#[test]
fn block_volume_writes_data_and_zeroes_and_the_backing_file_stays_thin() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backing = backing_file(dir.path(), 16 * MIB, 0xaa);
    let Some(device) = LoopDevice::attach(&backing) else { return };
    let pattern: Vec<u8> = (0..MIB).map(|i| (i % 253) as u8 + 1).collect();

    let volume = Volume::create(&device.path, Some(16 * MIB), 1, &CreateOptions::default()).expect("create");
    volume.write_all_at(&pattern, 0).expect("write");
    volume.write_zeroes(MIB, 14 * MIB).expect("aligned zeroes");
    volume.write_zeroes(15 * MIB + 100, 1000).expect("unaligned zeroes");
    volume.finish().expect("finish");

    for path in [&device.path, &backing] {
        assert_eq!(read_at(path, 0, MIB), pattern, "{}", path.display());
        assert!(is_zeros(&read_at(path, MIB, 14 * MIB)), "{}", path.display());
        let tail = read_at(path, 15 * MIB, MIB);
        assert!(tail[..100].iter().all(|&b| b == 0xaa), "{}", path.display());
        assert!(is_zeros(&tail[100..1100]), "{}", path.display());
        assert!(tail[1100..].iter().all(|&b| b == 0xaa), "{}", path.display());
    }
    // 1 MiB of data and 1 MiB never touched stay allocated; the 14 zeroed MiB are unmapped.
    assert!(allocated(&backing) <= 3 * MIB, "backing file has {} bytes allocated", allocated(&backing));
}

#[test]
fn block_volume_reports_the_device_geometry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backing = backing_file(dir.path(), 8 * MIB, 0);
    let Some(device) = LoopDevice::attach(&backing) else { return };

    let volume = Volume::create(&device.path, None, 1, &CreateOptions::default()).expect("create");

    assert!(storage::is_block_device(&device.path));
    assert!(volume.is_block_device());
    assert!(!volume.unwritten_reads_zero());
    assert_eq!(volume.capacity(), 8 * MIB);
    assert_eq!(volume.path(), device.path);
}

#[test]
fn block_volume_refuses_what_does_not_fit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backing = backing_file(dir.path(), 8 * MIB, 0);
    let Some(device) = LoopDevice::attach(&backing) else { return };

    let too_big = Volume::create(&device.path, Some(8 * MIB + 512), u64::MAX, &CreateOptions::default())
        .expect_err("image larger than the device");
    let volume = Volume::create(&device.path, Some(8 * MIB), 1, &CreateOptions::default()).expect("create");
    let write = volume.write_all_at(&[1; 1024], 8 * MIB - 512).expect_err("write past the end");
    let zero = volume.write_zeroes(8 * MIB, 512).expect_err("zero past the end");

    assert_eq!(too_big.kind(), disk_formats::ErrorKind::TooLarge);
    assert!(too_big.to_string().contains(&device.path.display().to_string()), "{too_big}");
    for err in [write, zero] {
        assert_eq!(err.to_string(), format!("write past the end of the volume (capacity {} bytes)", 8 * MIB));
    }
    assert!(volume.set_len(8 * MIB).is_ok());
    assert_eq!(
        volume.set_len(8 * MIB + 1).expect_err("longer than the device").kind(),
        disk_formats::ErrorKind::TooLarge
    );
}

#[test]
fn block_volume_leaves_copies_to_the_caller_and_ignores_preallocation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let backing = backing_file(dir.path(), 4 * MIB, 0);
    let Some(device) = LoopDevice::attach(&backing) else { return };
    let source = tempfile::tempfile().expect("source");
    source.write_all_at(&[1; 4096], 0).expect("source data");

    let opts = CreateOptions { preallocation: Preallocation::Full, ..CreateOptions::default() };
    let volume = Volume::create(&device.path, Some(4 * MIB), 1, &opts).expect("create");

    assert!(!volume.copy_from_file(&source, 0, 0, 4096).expect("copy"));
    volume.finish().expect("finish");
}

/// A tmpfs mounted on a temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes, or says why it cannot.
    fn mount(size: u64) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(status) if status.success() => Some(Self { dir }),
            other => {
                eprintln!("skipping: cannot mount a tmpfs: {other:?}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        match Command::new("umount").arg(self.dir.path()).status() {
            Ok(status) if status.success() => {}
            other => eprintln!("warning: unmounting {} failed: {other:?}", self.dir.path().display()),
        }
    }
}

#[test]
fn bounded_writeback_error_of_an_early_range_fails_finish() {
    // A device whose first 16 MiB cannot be written: the loop device's backing file lies on a
    // full tmpfs and only its first 16 MiB are unallocated, so writing back there fails (no
    // space) while every later range overwrites allocated pages and succeeds. The early
    // range's error is seen by the bounded cache's wait (past WRITEBACK_IN_FLIGHT_BYTES), and
    // the kernel reports it only once: finish must still fail.
    const RANGE: u64 = 16 * MIB;
    let ranges = 2 * storage::WRITEBACK_IN_FLIGHT_BYTES / RANGE;
    let size = ranges * RANGE;
    let Some(tmpfs) = Tmpfs::mount(size) else { return };
    let backing = tmpfs.dir.path().join("backing.img");
    let file = File::create(&backing).expect("backing file");
    file.set_len(size).expect("backing size");
    file.write_all_at(&vec![0xaa; (size - RANGE) as usize], RANGE).expect("allocating past the first range");
    let filler = File::create(tmpfs.dir.path().join("filler")).expect("filler");
    let mut at = 0;
    while filler.write_all_at(&[0x55; 64 * 1024], at).is_ok() {
        at += 64 * 1024;
    }
    let Some(device) = LoopDevice::attach(&backing) else { return };
    let opts = CreateOptions { write_cache: WriteCache::Bounded, ..CreateOptions::default() };
    let volume = Volume::create(&device.path, Some(size), 1, &opts).expect("create");

    for i in 0..ranges {
        volume.write_all_at(&vec![i as u8 + 1; MIB as usize], i * RANGE).expect("write into the cache");
        volume.start_writeback(i * RANGE, RANGE);
    }
    let err = volume.finish().expect_err("the first range never reached the device");

    let text = err.to_string();
    assert!(text.contains("writing back to the device"), "{text}");
    assert!(text.contains(&device.path.display().to_string()), "{text}");
    // Every later range did reach the device.
    drop(device);
    for i in 1..ranges {
        assert_eq!(read_at(&backing, i * RANGE, MIB), vec![i as u8 + 1; MIB as usize], "range {i}");
    }
}
