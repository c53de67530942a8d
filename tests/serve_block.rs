//! `volumeMode: Block` DataVolumes in `diskplane serve`: loop devices over pool files.
//! A real server process (`tests/peers/serve.rs`), nginx (`tests/peers/nginx.sh`), `qemu-img
//! convert -O raw` as the oracle, `losetup` to look at (and, to simulate a reboot, detach)
//! the devices.
//!
//! Needs root and `/dev/loop-control`: without them every test prints `SKIPPED` with the
//! reason (to stderr, uncaptured) and returns. Also needs nginx, qemu-img, losetup (util-linux).

#[allow(dead_code)]
#[path = "peers/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "peers/loopdev.rs"]
mod loopdev;
#[allow(dead_code)]
#[path = "peers/nginx.rs"]
mod nginx;
#[path = "peers/serve.rs"]
mod serve;

use nginx::Nginx;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{run_ok, sha256_file, sha256_prefix};
use serde_json::Value;
use serve::{DetachLoopsOnDrop, Serve};

const MIB: u64 = 1 << 20;
/// Virtual size of the test disk.
const DISK_SIZE: u64 = 24 * MIB;

fn images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::made_once("serve-block-images-v1", make_images))
}

fn make_images(dir: &Path) {
    let raw = dir.join("raw.img");
    let file = std::fs::File::create(&raw).expect("raw.img");
    file.set_len(DISK_SIZE).expect("sizing raw.img");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    for (offset, len) in
        [(0u64, 2 * MIB as usize), (7 * MIB, 3 * MIB as usize), (DISK_SIZE - MIB, MIB as usize)]
    {
        file.write_all_at(&random(len), offset).expect("writing data");
    }
    drop(file);
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(dir.join("img.qcow2")),
    );
    std::fs::remove_file(&raw).expect("removing raw.img");
    let oracle = dir.join("oracle.raw");
    run_ok(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(dir.join("img.qcow2")).arg(&oracle));
    std::fs::write(dir.join("sha256"), sha256_file(&oracle)).expect("oracle");
    std::fs::remove_file(&oracle).expect("removing the oracle image");
    std::fs::write(dir.join("done"), "").expect("done");
}

/// sha256 of `qemu-img convert -O raw` of the test disk (its whole virtual size).
fn oracle() -> String {
    std::fs::read_to_string(images().join("sha256")).expect("oracle")
}

fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    (dir, data)
}

/// A DataVolume manifest: `source` is the YAML under `spec.source` (indented 4).
fn dv(name: &str, source: &str, mode: &str, size: &str) -> String {
    format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: {name}\nspec:\n  source:\n{source}  storage:\n    volumeMode: {mode}\n    resources:\n      requests:\n        storage: {size}\n"
    )
}

fn http_source(url: &str) -> String {
    format!("    http:\n      url: {url}\n")
}

fn pvc_source(name: &str) -> String {
    format!("    pvc:\n      namespace: default\n      name: {name}\n")
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn phase(dv: &Value) -> &str {
    dv["status"]["phase"].as_str().unwrap_or("")
}

/// The device named by the DataVolume's `diskplane.io/device` annotation.
fn device_of(dv: &Value) -> PathBuf {
    let device = dv["metadata"]["annotations"]["diskplane.io/device"]
        .as_str()
        .unwrap_or_else(|| panic!("no device annotation: {dv}"));
    PathBuf::from(device)
}

/// Bytes of the file actually allocated on disk.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").blocks() * 512
}

/// `losetup -j FILE`: the devices attached over the file (empty output when none).
fn losetup_j(file: &Path) -> String {
    let out = Command::new("losetup").arg("-j").arg(file).output().expect("losetup");
    assert_ok(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether every byte of `path` in `[offset, end)` is zero.
fn zeros(path: &Path, offset: u64, end: u64) -> bool {
    let file = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; MIB as usize];
    let mut at = offset;
    while at < end {
        let n = (end - at).min(MIB) as usize;
        file.read_exact_at(&mut buf[..n], at).expect("read");
        if buf[..n].iter().any(|&b| b != 0) {
            return false;
        }
        at += n as u64;
    }
    true
}

fn volume_dir(data: &Path, name: &str) -> PathBuf {
    data.join("volumes/default").join(name)
}

/// Polls `get dv` until `check` holds (a guard against hanging, not a timing assertion).
fn wait_for(server: &Serve, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let dv = server.dv(name);
        if check(&dv) {
            return dv;
        }
        assert!(Instant::now() < deadline, "{name}: never {what}: {dv}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn http_qcow2_into_a_block_volume_survives_restart_and_reboot_and_delete_detaches() {
    if !loopdev::usable("http_qcow2_into_a_block_volume") {
        return;
    }
    let nginx = Nginx::start(images());
    let (tmp, data) = data_dir();
    let _detach = DetachLoopsOnDrop(data.clone());
    let server = Serve::start(&data, &[]);
    // 30 MiB: the device is larger than the image (24 MiB); the rest must read as zeros.
    assert_ok(&server.apply(&dv("blk", &http_source(&nginx.file_url("img.qcow2")), "Block", "30Mi"), &[]));
    assert_ok(&server.wait("blk", "120s"));
    let object = server.dv("blk");
    assert_eq!(phase(&object), "Succeeded");
    let device = device_of(&object);
    assert!(
        std::fs::metadata(&device).expect("device").file_type().is_block_device(),
        "{}",
        device.display()
    );
    let yaml = String::from_utf8_lossy(&server.cli(&["get", "dv", "blk", "-o", "yaml"]).stdout).into_owned();
    assert!(yaml.contains(&format!("diskplane.io/device: {}", device.display())), "{yaml}");

    let dir = volume_dir(&data, "blk");
    let backing = dir.join("block.img");
    assert_eq!(std::fs::read_link(dir.join("disk.img")).expect("disk.img link"), device);
    assert_eq!(std::fs::metadata(&backing).expect("block.img").len(), 30 * MIB);
    assert_eq!(sha256_prefix(&device, DISK_SIZE), oracle(), "device content = qemu-img's");
    assert!(zeros(&device, DISK_SIZE, 30 * MIB), "the device past the image reads zeros");
    let used = allocated(&backing);
    println!("block.img: {used} bytes allocated of {} (image data: 6 MiB)", 30 * MIB);
    assert!(used < DISK_SIZE, "the backing file stays sparse: {used} bytes allocated");
    assert!(losetup_j(&backing).contains(device.to_str().expect("utf-8")), "losetup sees the device");

    // Restart: the device stays attached and the DataVolume stays Succeeded.
    server.kill9();
    let server = Serve::start(&data, &[]);
    let object = server.dv("blk");
    assert_eq!(phase(&object), "Succeeded");
    assert_eq!(device_of(&object), device);

    // Reboot (loop devices are gone): restart re-attaches one, the content is intact.
    server.kill9();
    run_ok(Command::new("losetup").arg("-d").arg(&device));
    assert_eq!(losetup_j(&backing), "", "detached like after a reboot");
    let server = Serve::start(&data, &[]);
    let object = wait_for(&server, "blk", "re-attached", |dv| {
        dv["metadata"]["annotations"]["diskplane.io/device"].as_str().is_some_and(|d| Path::new(d).exists())
    });
    assert_eq!(phase(&object), "Succeeded");
    assert_eq!(object["status"]["restartCount"], 0);
    let device = device_of(&object);
    assert!(losetup_j(&backing).contains(device.to_str().expect("utf-8")));
    assert_eq!(std::fs::read_link(dir.join("disk.img")).expect("disk.img link"), device);
    assert_eq!(sha256_prefix(&device, DISK_SIZE), oracle(), "content kept over the reboot");

    // Delete: the device is detached and the file removed.
    let witness = tmp.path().join("witness"); // a second name for the backing inode
    std::fs::hard_link(&backing, &witness).expect("hard link");
    assert_ok(&server.cli(&["delete", "dv", "blk"]));
    assert_eq!(losetup_j(&witness), "", "no loop device left over the backing file");
    assert!(!dir.exists(), "the volume is gone");
}

#[test]
fn blank_block_volume_reads_zeros_and_allocates_nothing() {
    if !loopdev::usable("blank_block_volume") {
        return;
    }
    let (_tmp, data) = data_dir();
    let _detach = DetachLoopsOnDrop(data.clone());
    let server = Serve::start(&data, &[]);
    // Not a whole number of MiB: the device is rounded up like CDI's Block PVCs.
    assert_ok(&server.apply(&dv("empty", "    blank: {}\n", "Block", "20000Ki"), &[]));
    assert_ok(&server.wait("empty", "60s"));
    let device = device_of(&server.dv("empty"));
    let backing = volume_dir(&data, "empty").join("block.img");
    let size = std::fs::metadata(&backing).expect("block.img").len();
    assert_eq!(size, 20 * MIB, "20000 KiB rounded up to 20 MiB");
    assert!(zeros(&device, 0, size));
    assert_eq!(allocated(&backing), 0, "a blank Block volume allocates nothing");
}

#[test]
fn image_larger_than_the_block_volume_fails_and_nothing_is_ready() {
    if !loopdev::usable("image_larger_than_the_block_volume") {
        return;
    }
    let nginx = Nginx::start(images());
    let (_tmp, data) = data_dir();
    let _detach = DetachLoopsOnDrop(data.clone());
    let server = Serve::start(&data, &[]);
    assert_ok(&server.apply(&dv("small", &http_source(&nginx.file_url("img.qcow2")), "Block", "16Mi"), &[]));
    let out = server.wait("small", "120s");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DataVolume too small to contain image"), "{err}");
    let object = server.dv("small");
    assert_eq!(phase(&object), "Failed");
    assert_eq!(object["status"]["restartCount"], 0, "terminal, not retried");
    let dir = volume_dir(&data, "small");
    assert!(std::fs::symlink_metadata(dir.join("disk.img")).is_err(), "nothing committed");
    assert!(zeros(&device_of(&object), 0, 16 * MIB), "the failed attempt's bytes are discarded");
}

#[test]
fn clone_block_to_filesystem_and_back_keeps_the_bytes() {
    if !loopdev::usable("clone_block_to_filesystem_and_back") {
        return;
    }
    let nginx = Nginx::start(images());
    let (_tmp, data) = data_dir();
    let _detach = DetachLoopsOnDrop(data.clone());
    let server = Serve::start(&data, &[]);
    let manifest = format!(
        "{}---\n{}---\n{}",
        dv("src", &http_source(&nginx.file_url("img.qcow2")), "Block", "24Mi"),
        dv("as-file", &pvc_source("src"), "Filesystem", "24Mi"),
        dv("back", &pvc_source("as-file"), "Block", "24Mi"),
    );
    assert_ok(&server.apply(&manifest, &[]));
    for name in ["src", "as-file", "back"] {
        assert_ok(&server.wait(name, "120s"));
    }
    let src = device_of(&server.dv("src"));
    let file = volume_dir(&data, "as-file").join("disk.img");
    let back = device_of(&server.dv("back"));
    assert!(std::fs::symlink_metadata(&file).expect("disk.img").file_type().is_file(), "a Filesystem volume");
    assert_ne!(src, back);
    assert_eq!(sha256_file(&src), oracle(), "Block source");
    assert_eq!(sha256_file(&file), oracle(), "Block → Filesystem");
    assert_eq!(sha256_file(&back), oracle(), "Filesystem → Block");
    let (file_used, back_used) = (allocated(&file), allocated(&volume_dir(&data, "back").join("block.img")));
    println!("allocated: Filesystem clone {file_used} bytes, Block clone {back_used} bytes, of {DISK_SIZE}");
    assert!(file_used < DISK_SIZE, "the clone of a device stays sparse: {file_used}");
    assert!(back_used < DISK_SIZE, "the clone onto a device stays thin: {back_used}");
    for name in ["src", "as-file", "back"] {
        assert_ok(&server.cli(&["delete", "dv", name]));
    }
}

/// Runs curl; returns the HTTP status and the body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn upload_into_a_block_volume_writes_the_device() {
    if !loopdev::usable("upload_into_a_block_volume") {
        return;
    }
    let (_tmp, data) = data_dir();
    let _detach = DetachLoopsOnDrop(data.clone());
    let server = Serve::start(&data, &[]);
    assert_ok(&server.apply(&dv("up", "    upload: {}\n", "Block", "24Mi"), &[]));
    wait_for(&server, "up", "UploadReady", |dv| phase(dv) == "UploadReady");
    let request = r#"{"apiVersion":"upload.cdi.kubevirt.io/v1beta1","kind":"UploadTokenRequest","metadata":{"name":"t","namespace":"default"},"spec":{"pvcName":"up"}}"#;
    let url = format!(
        "{}/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/default/uploadtokenrequests",
        server.url()
    );
    let (status, body) =
        curl(&["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", request, &url]);
    assert_eq!(status, 201, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("token answer");
    let token = answer["status"]["token"].as_str().expect("status.token");
    let auth = format!("Authorization: Bearer {token}");
    let data_arg = format!("@{}", images().join("img.qcow2").display());
    let upload_url = format!("{}/v1beta1/upload", server.url());
    let (status, body) = curl(&[
        "-H",
        &auth,
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &data_arg,
        &upload_url,
    ]);
    assert_eq!(status, 200, "{body}");
    let object = wait_for(&server, "up", "Succeeded", |dv| phase(dv) == "Succeeded");
    let device = device_of(&object);
    assert_eq!(std::fs::read_link(volume_dir(&data, "up").join("disk.img")).expect("disk.img link"), device);
    assert_eq!(sha256_file(&device), oracle(), "uploaded qcow2 = qemu-img's raw");
    assert_ok(&server.cli(&["delete", "dv", "up"]));
}
