//! The library API against a real HTTP server (`tests/peers/flaky.rs` of the workspace) and
//! qemu-img: random access with a tiny block cache (eviction and readahead under pressure),
//! progress counters, and error kinds.

#[path = "../../tests/peers/flaky.rs"]
mod flaky;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use disk_formats::convert::ConvertOptions;
use disk_formats::{ErrorKind, OpenOptions};
use flaky::{Behaviour, FlakyServer};
use importer::{HttpOptions, ImportOptions, Method, Progress, RangeOptions, RetryPolicy, Source};
use sha2::{Digest, Sha256};

const SIZE: u64 = 8 << 20;

/// An 8 MiB raw disk with scattered data, and its qcow2 made by qemu-img.
fn images(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let raw_path = dir.join("raw.img");
    let file = std::fs::File::create(&raw_path).expect("raw.img");
    file.set_len(SIZE).expect("size");
    for i in 0..24u64 {
        let offset = (i * 337 * 1024) % (SIZE - 65536);
        let block: Vec<u8> =
            (0..65536u32).map(|j| (j as u64 ^ (i * 31)).wrapping_mul(2654435761) as u8).collect();
        file.write_all_at(&block, offset).expect("data");
    }
    drop(file);
    let qcow2_path = dir.join("img.qcow2");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=4096"])
        .arg(&raw_path)
        .arg(&qcow2_path)
        .status()
        .expect("running qemu-img");
    assert!(status.success());
    (std::fs::read(raw_path).expect("raw"), std::fs::read(qcow2_path).expect("qcow2"))
}

fn options(dir: &Path, range: RangeOptions, progress: Arc<Progress>) -> ImportOptions {
    ImportOptions {
        http: HttpOptions {
            range,
            retry: RetryPolicy { max_retries: 2, ..RetryPolicy::default() },
            ..HttpOptions::default()
        },
        checksum: None,
        open: OpenOptions::default(),
        convert: ConvertOptions::default(),
        create: storage::CreateOptions::default(),
        scratch_dir: dir.to_path_buf(),
        progress,
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

#[test]
fn tiny_cache_with_readahead_reads_qcow2_correctly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (raw, qcow2) = images(dir.path());
    let server = FlakyServer::start(qcow2.clone(), Vec::new(), Behaviour::Full);
    let progress = Arc::new(Progress::new());
    let range = RangeOptions { block_size: 16 << 10, cache_blocks: 3, readahead_blocks: 2 };
    let out = dir.path().join("out.img");

    let source: Source = server.url("img.qcow2").parse().expect("url");
    let stats = importer::import_blocking(&source, &out, &options(dir.path(), range, Arc::clone(&progress)))
        .expect("import");

    assert_eq!(stats.method, Method::RangeRequests);
    assert_eq!(sha256(&std::fs::read(&out).expect("output")), sha256(&raw));
    let blocks = (qcow2.len() as u64).div_ceil(16 << 10);
    assert!(stats.range_requests >= blocks, "{} requests for {blocks} blocks", stats.range_requests);
    let snapshot = progress.snapshot();
    assert_eq!(snapshot.done, SIZE);
    assert_eq!(snapshot.total, Some(SIZE));
}

#[test]
fn permanent_range_failure_surfaces_as_the_http_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, qcow2) = images(dir.path());
    // The first request (bytes=0-) works; then every range gets 404.
    let server = FlakyServer::start(qcow2, vec![Behaviour::Full], Behaviour::Status(404));
    let out = dir.path().join("out.img");

    let source: Source = server.url("img.qcow2").parse().expect("url");
    let err = importer::import_blocking(
        &source,
        &out,
        &options(dir.path(), RangeOptions::default(), Arc::default()),
    )
    .expect_err("404 on ranges");

    assert!(err.to_string().starts_with("HTTP 404"), "{err}");
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(!err.is_retryable());
}

#[test]
fn checksum_mismatch_has_the_checksum_kind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (raw, _) = images(dir.path());
    let server = FlakyServer::start(raw, Vec::new(), Behaviour::Full);
    let mut opts = options(dir.path(), RangeOptions::default(), Arc::default());
    opts.checksum = Some(format!("sha1:{}", "0".repeat(40)).parse().expect("checksum"));

    let source: Source = server.url("raw.img").parse().expect("url");
    let err = importer::import_blocking(&source, &dir.path().join("out.img"), &opts).expect_err("mismatch");

    assert_eq!(err.kind(), ErrorKind::Checksum);
    assert!(err.to_string().starts_with("checksum mismatch: expected sha1:0000"), "{err}");
}
