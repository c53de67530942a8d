//! Memory stays bounded whatever the image size: converting a 1 TiB sparse qcow2 (and a
//! zlib-compressed image with 2 MiB clusters, the largest decompression buffers) must peak
//! below 64 MiB of resident memory. The peak is read from the kernel (`ru_maxrss` of the
//! child, through python3's `resource` module), not estimated.

use std::path::Path;
use std::process::Command;

const RSS_LIMIT_KIB: u64 = 64 * 1024;

fn qemu_img(args: &[&str]) {
    let status = Command::new("qemu-img").args(args).status().expect("qemu-img runs");
    assert!(status.success(), "qemu-img {args:?} failed");
}

fn qemu_io(image: &Path, commands: &[&str]) {
    let mut cmd = Command::new("qemu-io");
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    let out = cmd.arg(image).output().expect("qemu-io runs");
    assert!(out.status.success(), "qemu-io {commands:?} failed");
}

/// Runs `diskplane convert IMAGE OUT` and returns the child's peak RSS in KiB.
fn convert_peak_rss_kib(image: &Path, out: &Path) -> u64 {
    let script = "import resource, subprocess, sys\n\
                  r = subprocess.run(sys.argv[1:])\n\
                  print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)";
    let output = Command::new("python3")
        .args(["-c", script, env!("CARGO_BIN_EXE_diskplane"), "convert"])
        .arg(image)
        .arg(out)
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.split_whitespace();
    let code: i32 = fields.next().and_then(|f| f.parse().ok()).expect("exit code printed");
    let rss: u64 = fields.next().and_then(|f| f.parse().ok()).expect("rss printed");
    assert_eq!(code, 0, "convert failed: {}", String::from_utf8_lossy(&output.stderr));
    rss
}

#[test]
fn one_tib_sparse_qcow2_converts_within_64_mib() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("big.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", image.to_str().unwrap(), "1T"]);
    qemu_io(&image, &["write -P 0x5a 0 1M", "write -P 0xa5 512G 1M", "write -P 0x33 1023G 4M"]);
    let out = dir.path().join("big.raw");

    let rss = convert_peak_rss_kib(&image, &out);

    assert!(rss < RSS_LIMIT_KIB, "peak RSS {rss} KiB is above {RSS_LIMIT_KIB} KiB");
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(meta.len(), 1 << 40);
    let allocated = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    assert!(allocated < 64 << 20, "output allocates {allocated} bytes for 6 MiB of data");
}

#[test]
fn compressed_qcow2_with_2_mib_clusters_converts_within_64_mib() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", plain.to_str().unwrap(), "1G"]);
    qemu_io(&plain, &["write -P 0x11 0 256M", "write -P 0x22 600M 128M"]);
    let image = dir.path().join("zlib.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-c",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=2M",
        plain.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    let out = dir.path().join("zlib.raw");

    let rss = convert_peak_rss_kib(&image, &out);

    assert!(rss < RSS_LIMIT_KIB, "peak RSS {rss} KiB is above {RSS_LIMIT_KIB} KiB");
}
