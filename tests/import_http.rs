//! `diskplane import` end to end against real peers: nginx started per test by
//! `tests/peers/nginx.sh` (plain, HTTPS with a test CA, basic auth, redirect, Range disabled),
//! a misbehaving std::net server (`tests/peers/flaky.rs`) for dropped connections and 5xx, and
//! `qemu-img convert -O raw` as the oracle for every image.
//!
//! Needs nginx, openssl, qemu-img, gzip, xz and zstd (see `.ci/packages.txt`).

#[allow(dead_code)]
#[path = "peers/common.rs"]
mod common;
#[path = "peers/flaky.rs"]
mod flaky;
#[allow(dead_code)]
#[path = "peers/nginx.rs"]
mod nginx;

use common::{run_ok, sha256_file};
use nginx::Nginx;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flaky::{Behaviour, FlakyServer};

// ---------------------------------------------------------------------------------------------
// Images, made once per target dir and shared by all tests (and test processes).

/// Virtual size of the test disk: big enough for several 4 MiB range blocks.
const DISK_SIZE: u64 = 48 << 20;

fn images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::made_once("import-http-images-v3", make_images))
}

/// A raw disk with random data, text and zero runs, and every form the tests serve.
fn make_images(dir: &Path) {
    let raw = dir.join("raw.img");
    let file = std::fs::File::create(&raw).expect("creating raw.img");
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
    use std::os::unix::fs::FileExt;
    for (offset, len) in [(0u64, 3usize << 20), (6 << 20, 3 << 20), (17 << 20, 2 << 20), (30 << 20, 3 << 20)]
    {
        file.write_all_at(&random(len), offset).expect("writing data");
    }
    let text: Vec<u8> =
        b"diskplane imports disks over http. ".iter().copied().cycle().take(2 << 20).collect();
    file.write_all_at(&text, 24 << 20).expect("writing text");
    file.write_all_at(&random(1 << 20), DISK_SIZE - (1 << 20)).expect("writing the last MiB");
    drop(file);

    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(dir.join("img.qcow2")),
    );
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(dir.join("imgz.qcow2")),
    );
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw"])
            .arg(dir.join("hostile.qcow2"))
            .arg("48M"),
    );
    for (tool, args, input, output) in [
        ("gzip", &["-c"][..], "raw.img", "raw.img.gz"),
        ("xz", &["-c", "-0", "-T1"][..], "raw.img", "raw.img.xz"),
        ("zstd", &["-q", "-c"][..], "raw.img", "raw.img.zst"),
        ("gzip", &["-c"][..], "img.qcow2", "img.qcow2.gz"),
    ] {
        let out = std::fs::File::create(dir.join(output)).expect("creating a compressed image");
        run_ok(Command::new(tool).args(args).arg(dir.join(input)).stdout(out));
    }
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized"])
            .arg(&raw)
            .arg(dir.join("img.vmdk")),
    );
    run_ok(Command::new("qemu-img").args(["create", "-q", "-f", "qed"]).arg(dir.join("img.qed")).arg("48M"));
    make_archives(dir);
    // The oracle: what qemu-img makes of each image.
    for name in ["raw.img", "img.qcow2", "imgz.qcow2", "img.vmdk"] {
        let converted = dir.join(format!("{name}.oracle"));
        run_ok(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(dir.join(name)).arg(&converted));
        std::fs::write(dir.join(format!("{name}.sha256")), sha256_file(&converted))
            .expect("writing the oracle");
        std::fs::remove_file(&converted).expect("removing the oracle image");
    }
    std::fs::write(dir.join("done"), "").expect("marking the images done");
}

/// `tree/` (files, a subdirectory, an inner symlink, a hard link) as `tree.tar.gz`, and tars
/// that try to leave the target, written by Python's tarfile so the hostile names stay raw.
fn make_archives(dir: &Path) {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc/conf.d")).expect("creating tree/");
    std::fs::write(tree.join("etc/hosts"), "127.0.0.1 localhost\n").expect("writing tree/");
    std::fs::write(tree.join("etc/conf.d/big"), vec![0x5au8; 3 << 20]).expect("writing tree/");
    std::os::unix::fs::symlink("etc/hosts", tree.join("hosts")).expect("symlink in tree/");
    std::fs::hard_link(tree.join("etc/hosts"), tree.join("hosts.hard")).expect("hard link in tree/");
    run_ok(Command::new("tar").arg("-C").arg(&tree).arg("-czf").arg(dir.join("tree.tar.gz")).arg("."));
    let script = r#"
import io, sys, tarfile
out = sys.argv[1]
def one(name, kind=tarfile.REGTYPE, link="", data=b"pwned"):
    with tarfile.open(f"{out}/{name}", "w", format=tarfile.GNU_FORMAT) as t:
        for entry_name, entry_kind, entry_link in kind:
            info = tarfile.TarInfo(entry_name)
            info.type = entry_kind
            info.linkname = entry_link
            info.size = len(data) if entry_kind == tarfile.REGTYPE else 0
            t.addfile(info, io.BytesIO(data) if entry_kind == tarfile.REGTYPE else None)
one("traversal.tar", [("ok", tarfile.REGTYPE, ""), ("../../evil", tarfile.REGTYPE, "")])
one("symlink-escape.tar", [("etc", tarfile.SYMTYPE, "/etc"), ("etc/evil", tarfile.REGTYPE, "")])
"#;
    run_ok(Command::new("python3").arg("-c").arg(script).arg(dir));
}

/// sha256 of `qemu-img convert -O raw` of the image `name` (compressed forms: of what they wrap).
fn oracle(name: &str) -> String {
    let base = name.trim_end_matches(".gz").trim_end_matches(".xz").trim_end_matches(".zst");
    std::fs::read_to_string(images().join(format!("{base}.sha256"))).expect("reading the oracle")
}

// ---------------------------------------------------------------------------------------------
// Running diskplane.

struct Run {
    code: i32,
    stderr: String,
}

fn import(source: &str, out: &Path, extra: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_diskplane"))
        .arg("import")
        .arg(source)
        .arg(out)
        .args(extra)
        .output()
        .expect("running diskplane");
    Run {
        code: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn assert_imported(run: &Run, out: &Path, image: &str) {
    assert_eq!(run.code, 0, "import of {image} failed: {}", run.stderr);
    assert_eq!(sha256_file(out), oracle(image), "imported {image} differs from qemu-img's conversion");
    let len = std::fs::metadata(out).expect("output metadata").len();
    assert_eq!(len, DISK_SIZE, "output size");
}

/// Exit code, message, and nothing left in the output directory (no OUT, no partial file).
fn assert_failed(run: &Run, code: i32, needle: &str, out_dir: &Path) {
    assert_eq!(run.code, code, "unexpected exit code; stderr: {}", run.stderr);
    assert!(run.stderr.contains(needle), "stderr {:?} does not mention {needle:?}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "one line on stderr: {:?}", run.stderr);
    let left: Vec<_> = std::fs::read_dir(out_dir)
        .expect("listing the output dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "output dir not empty after a failure: {left:?}");
}

fn out_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("output dir");
    let out = dir.path().join("disk.img");
    (dir, out)
}

/// Range requests for bounded ranges (`bytes=A-B`) that nginx answered for `uri`.
fn bounded_ranges(log: &[String], uri: &str) -> Vec<String> {
    log.iter().filter(|l| l.contains(&format!(" {uri} range=bytes=")) && !l.ends_with('-')).cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Streams: raw and compressed raw.

#[test]
fn raw_image_streams_sparse_and_identical() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    let run = import(&nginx.url("files/raw.img"), &out, &[]);
    assert_imported(&run, &out, "raw.img");
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&out).expect("metadata").blocks() * 512;
    assert!(allocated < DISK_SIZE / 2, "zero runs became holes ({allocated} bytes allocated)");
}

#[test]
fn gzip_raw_streams_identical() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    assert_imported(&import(&nginx.url("files/raw.img.gz"), &out, &[]), &out, "raw.img.gz");
}

#[test]
fn xz_raw_streams_identical() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    assert_imported(&import(&nginx.url("files/raw.img.xz"), &out, &[]), &out, "raw.img.xz");
}

#[test]
fn zstd_raw_streams_identical() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    assert_imported(&import(&nginx.url("files/raw.img.zst"), &out, &[]), &out, "raw.img.zst");
}

// ---------------------------------------------------------------------------------------------
// qcow2: Range requests, and the scratch fallbacks.

#[test]
fn qcow2_is_read_in_place_with_range_requests() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    assert_imported(&import(&nginx.url("files/img.qcow2"), &out, &[]), &out, "img.qcow2");
    let log = nginx.access_log();
    let ranges = bounded_ranges(&log, "/files/img.qcow2");
    assert!(ranges.len() >= 3, "expected several bounded Range requests, log: {log:#?}");
    assert!(ranges.iter().all(|l| l.starts_with("206 ")), "all ranges answered 206: {log:#?}");
}

#[test]
fn compressed_cluster_qcow2_is_read_in_place_with_range_requests() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    assert_imported(&import(&nginx.url("files/imgz.qcow2"), &out, &[]), &out, "imgz.qcow2");
    assert!(!bounded_ranges(&nginx.access_log(), "/files/imgz.qcow2").is_empty());
}

#[test]
fn qcow2_without_range_support_goes_through_scratch() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    assert_imported(&import(&nginx.url("noranges/img.qcow2"), &out, &[]), &out, "img.qcow2");
    let log = nginx.access_log();
    assert!(log.iter().all(|l| l.starts_with("200 ")), "ranges are refused, one plain download: {log:#?}");
    assert_eq!(log.len(), 1, "a single request: {log:#?}");
}

#[test]
fn gzip_wrapped_qcow2_goes_through_scratch() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    assert_imported(&import(&nginx.url("files/img.qcow2.gz"), &out, &[]), &out, "img.qcow2");
    assert!(bounded_ranges(&nginx.access_log(), "/files/img.qcow2.gz").is_empty());
}

#[test]
fn qcow2_with_a_checksum_is_hashed_in_one_sequential_pass() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    let sum = format!("sha256:{}", sha256_file(&images().join("img.qcow2")));
    let run = import(&nginx.url("files/img.qcow2"), &out, &["--checksum", &sum]);
    assert_imported(&run, &out, "img.qcow2");
    assert!(bounded_ranges(&nginx.access_log(), "/files/img.qcow2").is_empty());
}

// ---------------------------------------------------------------------------------------------
// TLS, auth, redirects.

#[test]
fn https_with_the_test_ca_works() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    let ca = nginx.ca();
    let run = import(&nginx.https_url("files/img.qcow2"), &out, &["--ca-cert", ca.to_str().expect("utf-8")]);
    assert_imported(&run, &out, "img.qcow2");
}

#[test]
fn https_with_a_ca_directory_works() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    let certs = tempfile::tempdir().expect("cert dir");
    std::fs::copy(nginx.ca(), certs.path().join("ca.crt")).expect("copying the CA");
    let run = import(
        &nginx.https_url("files/raw.img.zst"),
        &out,
        &["--ca-cert", certs.path().to_str().expect("utf-8")],
    );
    assert_imported(&run, &out, "raw.img.zst");
}

#[test]
fn https_without_the_ca_fails_at_once_with_a_tls_error() {
    let nginx = Nginx::start(images());
    let (dir, out) = out_dir();
    let started = Instant::now();
    let run = import(&nginx.https_url("files/raw.img.gz"), &out, &[]);
    assert_failed(&run, 1, "TLS handshake failed", dir.path());
    assert!(run.stderr.contains("UnknownIssuer"), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(5), "TLS trust failures are not retried");
}

#[test]
fn https_insecure_works_without_the_ca() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    assert_imported(&import(&nginx.https_url("files/img.qcow2"), &out, &["--insecure"]), &out, "img.qcow2");
}

#[test]
fn basic_auth_with_credentials_works() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    let password = nginx.password_file();
    let run = import(
        &nginx.url("auth/img.qcow2"),
        &out,
        &["--username", "diskplane", "--password-file", password.to_str().expect("utf-8")],
    );
    assert_imported(&run, &out, "img.qcow2");
}

#[test]
fn basic_auth_without_credentials_is_401() {
    let nginx = Nginx::start(images());
    let (dir, out) = out_dir();
    let url = nginx.url("auth/raw.img");
    let run = import(&url, &out, &[]);
    assert_failed(&run, 1, &format!("HTTP 401 Unauthorized for {url}"), dir.path());
}

#[test]
fn redirects_are_followed() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    assert_imported(&import(&nginx.url("redirect/img.qcow2"), &out, &[]), &out, "img.qcow2");
    assert!(nginx.access_log().iter().any(|l| l.starts_with("302 GET /redirect/img.qcow2")));
}

#[test]
fn missing_object_is_404_at_once() {
    let nginx = Nginx::start(images());
    let (dir, out) = out_dir();
    let url = nginx.url("files/nope.img");
    let run = import(&url, &out, &[]);
    assert_failed(&run, 1, &format!("HTTP 404 Not Found for {url}"), dir.path());
    assert_eq!(nginx.access_log().len(), 1, "404 is not retried");
}

// ---------------------------------------------------------------------------------------------
// Checksums.

#[test]
fn matching_checksums_of_every_algorithm_pass() {
    let nginx = Nginx::start(images());
    let file = images().join("raw.img.xz");
    for (algo, tool) in
        [("sha256", "sha256sum"), ("sha512", "sha512sum"), ("sha1", "sha1sum"), ("md5", "md5sum")]
    {
        let out_text = Command::new(tool).arg(&file).output().expect("running a *sum tool").stdout;
        let hex = String::from_utf8_lossy(&out_text).split_whitespace().next().expect("a digest").to_owned();
        let (_dir, out) = out_dir();
        let run = import(&nginx.url("files/raw.img.xz"), &out, &["--checksum", &format!("{algo}:{hex}")]);
        assert_imported(&run, &out, "raw.img.xz");
    }
}

#[test]
fn wrong_checksum_fails_with_exit_6_and_leaves_nothing() {
    let nginx = Nginx::start(images());
    let (dir, out) = out_dir();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let run = import(&nginx.url("files/raw.img.gz"), &out, &["--checksum", &wrong]);
    let actual = sha256_file(&images().join("raw.img.gz"));
    assert_failed(&run, 6, &format!("checksum mismatch: expected {wrong}, got sha256:{actual}"), dir.path());
}

#[test]
fn wrong_checksum_does_not_clobber_an_existing_output() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    std::fs::write(&out, b"precious").expect("writing an existing output");
    let wrong = format!("md5:{}", "f".repeat(32));
    let run = import(&nginx.url("files/raw.img"), &out, &["--checksum", &wrong]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert_eq!(std::fs::read(&out).expect("reading the output"), b"precious");
}

// ---------------------------------------------------------------------------------------------
// Limits and hostile images.

#[test]
fn raw_image_over_max_virtual_size_is_refused_before_downloading() {
    let nginx = Nginx::start(images());
    let (dir, out) = out_dir();
    let run = import(&nginx.url("files/raw.img"), &out, &["--max-virtual-size", "16M"]);
    assert_failed(&run, 7, "exceeds the limit of 16777216 bytes", dir.path());
}

#[test]
fn compressed_raw_over_max_virtual_size_is_refused() {
    let nginx = Nginx::start(images());
    let (dir, out) = out_dir();
    let run = import(&nginx.url("files/raw.img.zst"), &out, &["--max-virtual-size", "16M"]);
    assert_failed(&run, 7, "16777216", dir.path());
}

#[test]
fn qcow2_over_max_virtual_size_is_refused() {
    let nginx = Nginx::start(images());
    let (dir, out) = out_dir();
    let run = import(&nginx.url("files/img.qcow2"), &out, &["--max-virtual-size", "16M"]);
    assert_failed(&run, 7, "exceeds the limit of 16777216 bytes", dir.path());
}

#[test]
fn stream_optimized_vmdk_goes_through_scratch() {
    let nginx = Nginx::start(images());
    let (_dir, out) = out_dir();
    assert_imported(&import(&nginx.url("files/img.vmdk"), &out, &[]), &out, "img.vmdk");
}

#[test]
fn formats_we_do_not_read_are_refused_before_downloading() {
    let nginx = Nginx::start(images());
    let (dir, out) = out_dir();
    let run = import(&nginx.url("files/img.qed"), &out, &[]);
    assert_failed(&run, 4, "image format qed is not supported", dir.path());
}

#[test]
fn qcow2_with_a_backing_file_is_denied() {
    let nginx = Nginx::start(images());
    let (dir, out) = out_dir();
    let run = import(&nginx.url("files/hostile.qcow2"), &out, &[]);
    assert_failed(&run, 5, "backing file", dir.path());
}

// ---------------------------------------------------------------------------------------------
// Resume and retries, against the misbehaving server.

fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(images().join(name)).expect("reading a test image")
}

#[test]
fn dropped_connections_resume_where_they_stopped() {
    let server = FlakyServer::start(
        image_bytes("raw.img.gz"),
        vec![Behaviour::Truncate(3 << 20), Behaviour::Truncate(2 << 20)],
        Behaviour::Full,
    );
    let (_dir, out) = out_dir();
    let run = import(&server.url("raw.img.gz"), &out, &[]);
    assert_imported(&run, &out, "raw.img.gz");
    let ranges: Vec<_> = server.seen().into_iter().map(|s| s.range.unwrap_or_default()).collect();
    assert_eq!(ranges, ["bytes=0-", "bytes=3145728-", "bytes=5242880-"]);
}

#[test]
fn range_reads_resume_inside_a_block_after_a_drop() {
    // Request 0 is the first `bytes=0-`; request 1 is whichever block the parallel reads asked
    // for first, and is cut after 1 MiB.
    let server = FlakyServer::start(
        image_bytes("img.qcow2"),
        vec![Behaviour::Full, Behaviour::Truncate(1 << 20)],
        Behaviour::Full,
    );
    let (_dir, out) = out_dir();
    let run = import(&server.url("img.qcow2"), &out, &[]);
    assert_imported(&run, &out, "img.qcow2");
    let seen = server.seen();
    let cut = seen[1].range.as_deref().and_then(|r| r.strip_prefix("bytes=")).expect("a ranged request");
    let (start, end) = cut.split_once('-').expect("a bounded range");
    let start: u64 = start.parse().expect("range start");
    let resumed = format!("bytes={}-{end}", start + (1 << 20));
    assert!(seen.iter().any(|s| s.range.as_deref() == Some(resumed.as_str())), "no {resumed}: {seen:#?}");
}

#[test]
fn a_server_error_once_is_retried() {
    let server =
        FlakyServer::start(image_bytes("raw.img.zst"), vec![Behaviour::Status(503)], Behaviour::Full);
    let (_dir, out) = out_dir();
    assert_imported(&import(&server.url("raw.img.zst"), &out, &[]), &out, "raw.img.zst");
    assert_eq!(server.seen().len(), 2);
}

#[test]
fn drops_beyond_the_retry_budget_fail_cleanly() {
    let server =
        FlakyServer::start(image_bytes("raw.img.gz"), vec![Behaviour::Truncate(1 << 20)], Behaviour::Close);
    let (dir, out) = out_dir();
    let run = import(&server.url("raw.img.gz"), &out, &["--retries", "2"]);
    assert_failed(&run, 1, "giving up after 2 retries at byte 1048576", dir.path());
    assert_eq!(server.seen().len(), 3, "one request and two retries");
}

#[test]
fn an_object_that_changes_while_resuming_fails_at_once() {
    let server = FlakyServer::start(
        image_bytes("raw.img.gz"),
        vec![Behaviour::Truncate(1 << 20), Behaviour::NewVersion],
        Behaviour::Full,
    );
    let (dir, out) = out_dir();
    let run = import(&server.url("raw.img.gz"), &out, &[]);
    assert_failed(&run, 1, "changed during the import: ETag was", dir.path());
    assert_eq!(server.seen().len(), 2, "a changed object is not retried");
}

#[test]
fn qcow2_with_a_backing_file_is_denied_without_range_support_too() {
    let nginx = Nginx::start(images());
    let (dir, out) = out_dir();
    let run = import(&nginx.url("noranges/hostile.qcow2"), &out, &[]);
    assert_failed(&run, 5, "backing file", dir.path());
}

// ---------------------------------------------------------------------------------------------
// contentType: archive.

/// Every entry under `root`, as `path kind size-or-link sha256`, sorted.
fn tree_listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("listing") {
            let path = entry.expect("entry").path();
            let rel = path.strip_prefix(root).expect("inside").display().to_string();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            if meta.file_type().is_symlink() {
                out.push(format!("{rel} link {}", std::fs::read_link(&path).expect("link").display()));
            } else if meta.is_dir() {
                out.push(format!("{rel} dir"));
                walk(root, &path, out);
            } else {
                out.push(format!("{rel} file {} {}", meta.len(), sha256_file(&path)));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn archive_is_extracted_into_the_target_directory() {
    let nginx = Nginx::start(images());
    let dir = tempfile::tempdir().expect("output dir");
    let out = dir.path().join("fs");
    let run = import(&nginx.url("files/tree.tar.gz"), &out, &["--content-type", "archive"]);
    assert_eq!(run.code, 0, "stderr: {}", run.stderr);
    assert_eq!(tree_listing(&out), tree_listing(&images().join("tree")));
    assert_eq!(
        std::fs::read_to_string(out.join("hosts")).expect("through the symlink"),
        "127.0.0.1 localhost\n"
    );
}

#[test]
fn archive_entries_leaving_the_target_are_refused_and_nothing_is_written() {
    for (name, needle) in [
        ("traversal.tar", "\"../../evil\" leaves the target directory"),
        ("symlink-escape.tar", "links to /etc outside the target directory"),
    ] {
        let nginx = Nginx::start(images());
        let dir = tempfile::tempdir().expect("output dir");
        let run = import(
            &nginx.url(&format!("files/{name}")),
            &dir.path().join("fs"),
            &["--content-type", "archive"],
        );
        assert_failed(&run, 5, needle, dir.path());
    }
}

#[test]
fn archive_with_a_wrong_checksum_leaves_the_target_untouched() {
    let nginx = Nginx::start(images());
    let dir = tempfile::tempdir().expect("output dir");
    let bad = format!("sha256:{}", "0".repeat(64));
    let run = import(
        &nginx.url("files/tree.tar.gz"),
        &dir.path().join("fs"),
        &["--content-type", "archive", "--checksum", &bad],
    );
    assert_failed(&run, 6, "checksum mismatch", dir.path());
}

#[test]
fn a_disk_image_is_not_an_archive() {
    let nginx = Nginx::start(images());
    let dir = tempfile::tempdir().expect("output dir");
    let run = import(&nginx.url("files/img.qcow2"), &dir.path().join("fs"), &["--content-type", "archive"]);
    assert_failed(&run, 3, "needs a tar archive, but the source holds qcow2", dir.path());
}
