//! `diskplane import docker://…` end to end against a real registry (Debian's docker-registry,
//! started per test by `tests/peers/registry.rs`), with containerDisks built and pushed by
//! `fixtures/make-containerdisk.py` and `qemu-img convert -O raw` as the oracle.
//!
//! Needs docker-registry, apache2-utils, openssl, python3, qemu-img, GNU tar, zstd
//! (see `.ci/packages.txt`).

#[allow(dead_code)]
#[path = "peers/common.rs"]
mod common;
#[path = "peers/registry.rs"]
mod registry;
#[allow(dead_code)]
#[path = "peers/tls.rs"]
mod tls;

use common::{run_ok, sha256_file};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use registry::{Pushed, Registry, USER};

// ---------------------------------------------------------------------------------------------
// Helpers

const DISK_SIZE: u64 = 12 << 20;

/// A raw disk with pseudo-random data runs (seeded, so two seeds give two disks) and holes.
fn raw_disk(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).expect("creating the disk");
    file.set_len(DISK_SIZE).expect("sizing the disk");
    let mut state = seed | 1;
    let mut random = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    for (offset, len) in [(0u64, 1usize << 20), (4 << 20, 512 << 10), (DISK_SIZE - (1 << 20), 1 << 20)] {
        file.write_all_at(&random(len), offset).expect("writing data");
    }
    path
}

fn qcow2_of(raw: &Path) -> PathBuf {
    let out = raw.with_extension("qcow2");
    run_ok(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(raw).arg(&out));
    out
}

/// A layer tar made by GNU tar with `--sparse`: the disk becomes a GNU sparse entry.
fn sparse_layer_tar(dir: &Path, disk: &Path) -> PathBuf {
    let root = dir.join("layer-root");
    std::fs::create_dir_all(root.join("disk")).expect("layer root");
    run_ok(Command::new("cp").arg("--sparse=always").arg(disk).arg(root.join("disk/disk.img")));
    let tar = dir.join("layer.tar");
    run_ok(
        Command::new("tar").args(["--format=gnu", "-S", "-cf"]).arg(&tar).arg("-C").arg(&root).arg("disk"),
    );
    tar
}

/// sha256 of `qemu-img convert -O raw IMAGE`.
fn oracle(image: &Path) -> String {
    let out = image.with_extension("oracle.raw");
    run_ok(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(image).arg(&out));
    sha256_file(&out)
}

fn file_entry(name: &str, path: &Path) -> String {
    format!("{name}=@{}", path.display())
}

fn import(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diskplane"))
        .arg("import")
        .args(args)
        .output()
        .expect("running diskplane")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_success(out: &Output) {
    assert!(out.status.success(), "import failed: {}", stderr(out));
}

#[track_caller]
fn assert_fails(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "stderr: {}", stderr(out));
    assert!(stderr(out).contains(needle), "expected {needle:?} in: {}", stderr(out));
    assert_eq!(stderr(out).lines().count(), 1, "one line: {}", stderr(out));
}

/// A registry with one image `disks/NAME:v1` holding `layers`, and a scratch dir.
struct Setup {
    registry: Registry,
    work: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Self { registry: Registry::start(), work: tempfile::tempdir().expect("tempdir") }
    }

    fn dir(&self) -> &Path {
        self.work.path()
    }

    fn out(&self) -> PathBuf {
        self.dir().join("out.img")
    }

    fn source(&self, repo_ref: &str) -> String {
        format!("docker://{}/{repo_ref}", self.registry.host())
    }

    fn push(&self, reference: &str, layers: &[(&str, Vec<String>)]) -> Pushed {
        self.registry.push(reference, "amd64", layers)
    }

    /// Imports from the plain instance (`--insecure` = plain HTTP).
    fn import(&self, repo_ref: &str, extra: &[&str]) -> Output {
        let source = self.source(repo_ref);
        let out = self.out();
        let mut args = vec![source.as_str(), out.to_str().expect("utf-8 path"), "--insecure"];
        args.extend_from_slice(extra);
        import(&args)
    }

    fn no_output_left(&self) {
        let left: Vec<_> = std::fs::read_dir(self.dir())
            .expect("listing")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("out.img"))
            .collect();
        assert!(left.is_empty(), "output left behind: {left:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Successful imports

#[test]
fn raw_disk_in_a_gzip_layer_of_gnu_sparse_entries_is_imported() {
    let s = Setup::new();
    let raw = raw_disk(s.dir(), "disk.raw", 1);
    let tar = sparse_layer_tar(s.dir(), &raw);
    s.push("disks/raw:v1", &[("gzip", vec![format!("@{}", tar.display())])]);

    let out = s.import("disks/raw:v1", &[]);

    assert_success(&out);
    assert_eq!(sha256_file(&s.out()), oracle(&raw));
}

#[test]
fn qcow2_disk_in_an_uncompressed_layer_is_imported_under_other_layers() {
    let s = Setup::new();
    let raw = raw_disk(s.dir(), "disk.raw", 2);
    let qcow2 = qcow2_of(&raw);
    let hosts = s.dir().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").expect("hosts");
    s.push(
        "disks/qcow2:v1",
        &[
            ("gzip", vec!["etc/".into(), file_entry("etc/hosts", &hosts)]),
            ("none", vec!["disk/".into(), file_entry("disk/disk.qcow2", &qcow2)]),
            ("gzip", vec![file_entry("etc/motd", &hosts)]),
        ],
    );

    let out = s.import("disks/qcow2:v1", &[]);

    assert_success(&out);
    assert_eq!(sha256_file(&s.out()), oracle(&qcow2));
}

#[test]
fn zstd_layer_is_imported() {
    let s = Setup::new();
    let raw = raw_disk(s.dir(), "disk.raw", 3);
    let qcow2 = qcow2_of(&raw);
    s.push("disks/zstd:v1", &[("zstd", vec![file_entry("./disk/disk.img", &qcow2)])]);

    let out = s.import("disks/zstd:v1", &[]);

    assert_success(&out);
    assert_eq!(sha256_file(&s.out()), oracle(&qcow2));
}

#[test]
fn the_newest_layer_with_a_disk_wins() {
    let s = Setup::new();
    let old = raw_disk(s.dir(), "old.raw", 4);
    let new = raw_disk(s.dir(), "new.raw", 5);
    s.push(
        "disks/layered:v1",
        &[
            ("gzip", vec![file_entry("disk/disk.img", &old)]),
            ("gzip", vec![file_entry("disk/disk.img", &new)]),
        ],
    );

    let out = s.import("disks/layered:v1", &[]);

    assert_success(&out);
    assert_eq!(sha256_file(&s.out()), oracle(&new));
}

#[test]
fn a_multi_arch_index_resolves_to_the_asked_platform() {
    let s = Setup::new();
    let amd = raw_disk(s.dir(), "amd64.raw", 6);
    let arm = raw_disk(s.dir(), "arm64.raw", 7);
    let amd_image =
        s.registry.push("disks/multi:amd64", "amd64", &[("gzip", vec![file_entry("disk/disk.img", &amd)])]);
    let arm_image =
        s.registry.push("disks/multi:arm64", "arm64", &[("gzip", vec![file_entry("disk/disk.img", &arm)])]);
    s.registry.push_index("disks/multi:v1", &[("linux/amd64", &amd_image), ("linux/arm64/v8", &arm_image)]);

    let arm_out = s.import("disks/multi:v1", &["--platform", "linux/arm64"]);
    assert_success(&arm_out);
    assert_eq!(sha256_file(&s.out()), oracle(&arm));

    let amd_out = s.import("disks/multi:v1", &["--platform", "linux/amd64"]);
    assert_success(&amd_out);
    assert_eq!(sha256_file(&s.out()), oracle(&amd));

    let none = s.import("disks/multi:v1", &["--platform", "linux/s390x"]);
    assert_fails(&none, 4, "no manifest for platform linux/s390x (it has: linux/amd64, linux/arm64/v8)");
}

#[test]
fn a_digest_reference_is_imported() {
    let s = Setup::new();
    let raw = raw_disk(s.dir(), "disk.raw", 8);
    let pushed = s.push("disks/pinned:v1", &[("gzip", vec![file_entry("disk/disk.img", &raw)])]);

    let out = s.import(&format!("disks/pinned@{}", pushed.digest), &[]);

    assert_success(&out);
    assert_eq!(sha256_file(&s.out()), oracle(&raw));
}

// ---------------------------------------------------------------------------------------------
// Refusals

#[test]
fn an_image_without_a_disk_is_rejected() {
    let s = Setup::new();
    let hosts = s.dir().join("hosts");
    std::fs::write(&hosts, "x\n").expect("hosts");
    s.push("disks/nodisk:v1", &[("gzip", vec!["etc/".into(), file_entry("etc/hosts", &hosts)])]);

    let out = s.import("disks/nodisk:v1", &[]);

    assert_fails(&out, 3, "no disk image found under /disk/ in any layer");
    s.no_output_left();
}

#[test]
fn a_layer_with_dot_dot_traversal_is_rejected() {
    let s = Setup::new();
    let raw = raw_disk(s.dir(), "disk.raw", 9);
    s.push(
        "disks/traversal:v1",
        &[("gzip", vec![file_entry("../../etc/evil", &raw), file_entry("disk/disk.img", &raw)])],
    );

    let out = s.import("disks/traversal:v1", &[]);

    assert_fails(&out, 3, "escapes the image root");
    s.no_output_left();
}

#[test]
fn a_disk_that_is_a_symlink_is_rejected() {
    let s = Setup::new();
    s.push("disks/symlink:v1", &[("gzip", vec!["disk/".into(), "disk/disk.img->/etc/shadow".into()])]);

    let out = s.import("disks/symlink:v1", &[]);

    assert_fails(&out, 3, "disk/disk.img is a symbolic link under disk/");
    s.no_output_left();
}

#[test]
fn a_disk_that_is_a_hard_link_is_rejected() {
    let s = Setup::new();
    let hosts = s.dir().join("hosts");
    std::fs::write(&hosts, "x\n").expect("hosts");
    s.push(
        "disks/hardlink:v1",
        &[("none", vec![file_entry("etc/hosts", &hosts), "disk/disk.img=>etc/hosts".into()])],
    );

    let out = s.import("disks/hardlink:v1", &[]);

    assert_fails(&out, 3, "hard link");
    s.no_output_left();
}

#[test]
fn a_tampered_uncompressed_blob_fails_the_digest_check_and_leaves_no_output() {
    let s = Setup::new();
    let raw = raw_disk(s.dir(), "disk.raw", 10);
    let pushed = s.push("disks/tampered:v1", &[("none", vec![file_entry("disk/disk.img", &raw)])]);
    // Flip one byte of disk data inside the stored blob (same size, different digest).
    let blob = s.registry.blob_path(&pushed.layers[0]);
    let file = std::fs::OpenOptions::new().write(true).read(true).open(&blob).expect("opening the blob");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, 4096).expect("reading");
    file.write_all_at(&[byte[0] ^ 0xff], 4096).expect("tampering");
    drop(file);

    let out = s.import("disks/tampered:v1", &[]);

    assert_fails(&out, 6, &format!("blob {} digest mismatch", pushed.layers[0]));
    s.no_output_left();
}

#[test]
fn a_tampered_gzip_blob_reports_the_digest_not_the_gzip_error() {
    let s = Setup::new();
    let raw = raw_disk(s.dir(), "disk.raw", 11);
    let pushed = s.push("disks/tampered-gz:v1", &[("gzip", vec![file_entry("disk/disk.img", &raw)])]);
    let blob = s.registry.blob_path(&pushed.layers[0]);
    let file = std::fs::OpenOptions::new().write(true).read(true).open(&blob).expect("opening the blob");
    let len = file.metadata().expect("metadata").len();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, len / 2).expect("reading");
    file.write_all_at(&[byte[0] ^ 0x55], len / 2).expect("tampering");
    drop(file);

    let out = s.import("disks/tampered-gz:v1", &[]);

    assert_fails(&out, 6, "digest mismatch");
    s.no_output_left();
}

#[test]
fn a_missing_image_is_reported_as_not_found() {
    let s = Setup::new();

    let out = s.import("disks/absent:v1", &[]);

    assert_fails(&out, 1, &format!("image {}/disks/absent:v1 not found", s.registry.host()));
    s.no_output_left();
}

#[test]
fn a_plain_http_registry_without_insecure_gets_a_hint() {
    let s = Setup::new();
    let out_path = s.out();

    let out = import(&[&s.source("disks/any:v1"), out_path.to_str().expect("utf-8")]);

    assert_fails(&out, 1, "--insecure");
}

// ---------------------------------------------------------------------------------------------
// TLS and authentication (a second instance: TLS with a test CA + htpasswd, same storage)

fn secure_setup() -> (Setup, u16, PathBuf) {
    let mut s = Setup::new();
    let port = s.registry.start_secure();
    let raw = raw_disk(s.dir(), "disk.raw", 12);
    s.push("disks/private:v1", &[("gzip", vec![file_entry("disk/disk.img", &raw)])]);
    (s, port, raw)
}

fn secure_import(s: &Setup, port: u16, extra: &[&str]) -> Output {
    let source = format!("docker://127.0.0.1:{port}/disks/private:v1");
    let out = s.out();
    let mut args = vec![source.as_str(), out.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    import(&args)
}

#[test]
fn tls_with_the_ca_and_credentials_succeeds() {
    let (s, port, raw) = secure_setup();
    let ca = s.registry.ca_cert();
    let password = s.registry.password_file();

    let out = secure_import(
        &s,
        port,
        &[
            "--ca-cert",
            ca.to_str().expect("utf-8"),
            "--username",
            USER,
            "--password-file",
            password.to_str().expect("utf-8"),
        ],
    );

    assert_success(&out);
    assert_eq!(sha256_file(&s.out()), oracle(&raw));
}

#[test]
fn tls_without_the_ca_is_a_clear_trust_error() {
    let (s, port, _) = secure_setup();
    let password = s.registry.password_file();

    let out =
        secure_import(&s, port, &["--username", USER, "--password-file", password.to_str().expect("utf-8")]);

    assert_fails(&out, 1, "is not trusted (pass its CA with --ca-cert");
    s.no_output_left();
}

#[test]
fn auth_required_without_credentials_is_a_clear_error() {
    let (s, port, _) = secure_setup();
    let ca = s.registry.ca_cert();

    let out = secure_import(&s, port, &["--ca-cert", ca.to_str().expect("utf-8")]);

    assert_fails(&out, 1, "requires authentication");
    s.no_output_left();
}

#[test]
fn wrong_credentials_are_a_clear_error() {
    let (s, port, _) = secure_setup();
    let ca = s.registry.ca_cert();
    let wrong = s.dir().join("wrong-password");
    std::fs::write(&wrong, "nope\n").expect("password");

    let out = secure_import(
        &s,
        port,
        &[
            "--ca-cert",
            ca.to_str().expect("utf-8"),
            "--username",
            USER,
            "--password-file",
            wrong.to_str().expect("utf-8"),
        ],
    );

    assert_fails(&out, 1, &format!("refused the credentials of user {USER}"));
    s.no_output_left();
}

// ---------------------------------------------------------------------------------------------
// Memory

/// Peak RSS (VmHWM, KiB) of a child, sampled from /proc until it exits.
fn run_measuring_peak(cmd: &mut Command) -> (Output, u64) {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning");
    let status_path = format!("/proc/{}/status", child.id());
    let sampler = std::thread::spawn(move || {
        let mut peak = 0u64;
        while let Ok(status) = std::fs::read_to_string(&status_path) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            match hwm {
                Some(kib) => peak = peak.max(kib),
                None => break, // a zombie: the process is gone
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        peak
    });
    let output = child.wait_with_output().expect("waiting");
    (output, sampler.join().expect("sampler"))
}

#[test]
fn a_large_layer_streams_in_bounded_memory() {
    const DATA: u64 = 256 << 20;
    let s = Setup::new();
    let raw = s.dir().join("big.raw");
    let mut file = std::fs::File::create(&raw).expect("creating");
    let mut random = std::io::Read::take(std::fs::File::open("/dev/urandom").expect("urandom"), DATA);
    std::io::copy(&mut random, &mut file).expect("filling");
    file.set_len(DATA + (64 << 20)).expect("a trailing hole");
    drop(file);
    s.push("disks/big:v1", &[("none", vec![file_entry("disk/disk.img", &raw)])]);
    let source = s.source("disks/big:v1");
    let out_path = s.out();

    let (out, peak_kib) = run_measuring_peak(Command::new(env!("CARGO_BIN_EXE_diskplane")).args([
        "import",
        &source,
        out_path.to_str().expect("utf-8"),
        "--insecure",
    ]));

    eprintln!("peak RSS of the import: {} MiB", peak_kib >> 10);
    assert_success(&out);
    assert_eq!(sha256_file(&s.out()), sha256_file(&raw));
    assert!(peak_kib < 96 << 10, "peak RSS {peak_kib} KiB for a {DATA}-byte layer");
}
