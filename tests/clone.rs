//! `diskplane clone` end to end, on real file systems and between real processes:
//! - XFS with reflinks on a loop device (needs root, mkfs.xfs, mount): the clone is identical,
//!   shares the source's blocks, and writing to it leaves the source alone;
//! - the test directory's own file system (ext4 here): auto falls back to sparse copy, says
//!   why, and keeps holes;
//! - a loop block device as the target (sparse copy by read/write);
//! - the host-assisted stream between two `diskplane` processes over TLS with a test CA made by
//!   the openssl CLI (wrong token, tampered and dropped streams through an in-test proxy, a
//!   target too small).
//!
//! Tests needing what is missing are skipped with the reason printed. Needs openssl and
//! xfsprogs (see `.ci/packages.txt`).

#[allow(dead_code)]
#[path = "peers/loopdev.rs"]
mod loopdev;
#[allow(dead_code)]
#[path = "peers/tls.rs"]
mod tls;

use loopdev::LoopDevice;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;

use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const TOKEN: &str = "s3cret-clone-token";

// ---------------------------------------------------------------------------------------------
// Helpers.

fn diskplane() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diskplane"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running diskplane")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "diskplane failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// A sparse file of `len` bytes holding patterned (non-zero) data in `extents`.
fn sparse_file(path: &Path, len: u64, extents: &[(u64, u64)]) {
    let file = File::create(path).expect("create");
    file.set_len(len).expect("set_len");
    for &(offset, size) in extents {
        let mut at = offset;
        while at < offset + size {
            let n = (offset + size - at).min(4 * MIB);
            let data: Vec<u8> = (at..at + n).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1).collect();
            file.write_all_at(&data, at).expect("write");
            at += n;
        }
    }
    file.sync_all().expect("sync");
}

fn sha256(path: &Path, len: u64) -> String {
    let mut file = File::open(path).expect("open").take(len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 4 * MIB as usize];
    loop {
        let n = file.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").blocks() * 512
}

/// Every entry of `dir` (to check no partial output was left behind).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn tool_works(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// An XFS file system with reflinks in a loop-mounted image, unmounted (and the loop device
/// freed) when dropped, also when a test fails.
struct XfsMount {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl XfsMount {
    fn new() -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("xfs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        File::create(&image).and_then(|f| f.set_len(1 << 30)).expect("image");
        match Command::new("mkfs.xfs").args(["-q", "-m", "reflink=1"]).arg(&image).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                eprintln!("skipping: mkfs.xfs failed: {}", String::from_utf8_lossy(&out.stderr).trim());
                return None;
            }
            Err(e) => {
                eprintln!("skipping: cannot run mkfs.xfs ({e}); install xfsprogs");
                return None;
            }
        }
        match Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mnt).output() {
            Ok(out) if out.status.success() => Some(Self { dir, mounted: true }),
            Ok(out) => {
                eprintln!("skipping: mount -o loop failed: {}", String::from_utf8_lossy(&out.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("skipping: cannot run mount ({e})");
                None
            }
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join("mnt").join(name)
    }

    /// Bytes in use on the file system.
    fn used(&self) -> u64 {
        let out = Command::new("df").args(["-B1", "--output=used"]).arg(self.path("")).output().expect("df");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df output")
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        if self.mounted {
            // A loop mount frees its loop device on unmount (autoclear).
            match Command::new("umount").arg(self.dir.path().join("mnt")).status() {
                Ok(status) if status.success() => {}
                other => eprintln!("warning: unmounting the test XFS failed: {other:?}"),
            }
        }
    }
}

/// A test CA and a server certificate for 127.0.0.1 signed by it (rustls refuses a CA
/// certificate used as the server's own), plus the token file.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Option<Self> {
        if !tool_works("openssl", "version") {
            eprintln!("skipping: openssl is not installed");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        tls::make_pki(d);
        std::fs::write(d.join("token"), format!("{TOKEN}\n")).expect("token");
        std::fs::write(d.join("wrong-token"), "not-the-token\n").expect("token");
        Some(Self { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A `diskplane clone --listen` process serving `src` once; killed when dropped if still
/// running.
struct SourceProcess {
    child: Child,
    port: u16,
}

impl SourceProcess {
    fn start(src: &Path, pki: &Pki, tls: bool) -> Self {
        let mut cmd = diskplane();
        cmd.args(["clone", "--listen", "127.0.0.1:0", "--timeout", "20", "-o", "json"])
            .arg(src)
            .arg("--token-file")
            .arg(pki.path("token"));
        if tls {
            cmd.arg("--tls-cert").arg(pki.path("tls.crt")).arg("--tls-key").arg(pki.path("tls.key"));
        } else {
            cmd.arg("--insecure");
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn source");
        let mut line = String::new();
        let stdout = child.stdout.as_mut().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|addr| addr.rsplit_once(':'))
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the source: {line:?}"));
        Self { child, port }
    }

    /// Waits for the source to exit: (success, stdout rest, stderr).
    fn finish(mut self) -> (bool, String, String) {
        let status = self.child.wait().expect("wait");
        let mut out = String::new();
        let mut err = String::new();
        let _ = self.child.stdout.take().expect("stdout").read_to_string(&mut out);
        let _ = self.child.stderr.take().expect("stderr").read_to_string(&mut err);
        (status.success(), out, err)
    }
}

impl Drop for SourceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the proxy does to the source → target bytes.
#[derive(Clone, Copy)]
enum Mischief {
    /// Flips one bit of the byte at this position.
    FlipByteAt(u64),
    /// Closes both connections once this many bytes went through.
    CutAfter(u64),
}

/// A one-connection TCP proxy in front of `upstream_port`; returns its port.
fn proxy(upstream_port: u16, mischief: Mischief) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        let Ok((client, _)) = listener.accept() else { return };
        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else { return };
        let (mut c_read, mut s_write) =
            (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
        // Target → source: untouched.
        thread::spawn(move || {
            let _ = std::io::copy(&mut c_read, &mut s_write);
            let _ = s_write.shutdown(Shutdown::Write);
        });
        // Source → target: tampered with.
        let (mut s_read, mut c_write) = (server, client);
        let mut buf = vec![0u8; 64 * 1024];
        let mut passed = 0u64;
        loop {
            let n = match s_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let range = passed..passed + n as u64;
            match mischief {
                Mischief::FlipByteAt(at) if range.contains(&at) => buf[(at - passed) as usize] ^= 0x10,
                Mischief::CutAfter(limit) if range.end >= limit => {
                    let keep = (limit - passed) as usize;
                    let _ = c_write.write_all(&buf[..keep]);
                    let _ = c_write.shutdown(Shutdown::Both);
                    let _ = s_read.shutdown(Shutdown::Both);
                    return;
                }
                _ => {}
            }
            if c_write.write_all(&buf[..n]).is_err() {
                break;
            }
            passed += n as u64;
        }
        let _ = c_write.shutdown(Shutdown::Write);
    });
    port
}

fn receive_cmd(url: &str, dst: &Path, pki: &Pki, token: &str) -> Command {
    let mut cmd = diskplane();
    cmd.args(["clone", url])
        .arg(dst)
        .args(["--timeout", "20", "-o", "json", "--token-file"])
        .arg(pki.path(token));
    if url.starts_with("tls://") {
        cmd.arg("--ca-cert").arg(pki.path("ca.crt"));
    } else {
        cmd.arg("--insecure");
    }
    cmd
}

/// A source of 64 MiB: data at the start, in the middle and at the end, holes between.
fn stream_source(dir: &Path) -> PathBuf {
    let src = dir.join("src.img");
    sparse_file(&src, 64 * MIB, &[(0, 3 * MIB + 4096), (20 * MIB, 5 * MIB), (63 * MIB, MIB)]);
    src
}

// ---------------------------------------------------------------------------------------------
// Reflink on XFS.

#[test]
fn reflink_on_xfs_is_identical_shares_blocks_and_leaves_the_source_alone() {
    let Some(xfs) = XfsMount::new() else { return };
    let src = xfs.path("src.img");
    let dst = xfs.path("clone.img");
    sparse_file(&src, 256 * MIB, &[(0, 32 * MIB), (100 * MIB, 32 * MIB)]);
    let source_sha = sha256(&src, 256 * MIB);
    let used_before = xfs.used();

    let report = json(&run(diskplane().args(["clone", "-o", "json", "--verify"]).arg(&src).arg(&dst)));

    assert_eq!(report["strategy"], "reflink", "{report}");
    assert_eq!(report["fallbackReason"], serde_json::Value::Null);
    assert_eq!(report["bytesCopied"], 0);
    assert_eq!(sha256(&dst, size(&dst)), source_sha);
    let grew = xfs.used().saturating_sub(used_before);
    assert!(grew < 4 * MIB, "the clone took {grew} bytes of free space: blocks are not shared");

    // Copy on write: the clone changes, the source does not.
    File::options().write(true).open(&dst).expect("open clone").write_all_at(&[0xee; 8192], 4096).expect("w");
    assert_eq!(sha256(&src, 256 * MIB), source_sha);
    assert_ne!(sha256(&dst, 256 * MIB), source_sha);
}

#[test]
fn reflink_to_a_bigger_target_grows_it_with_zeros() {
    let Some(xfs) = XfsMount::new() else { return };
    let src = xfs.path("src.img");
    let dst = xfs.path("clone.img");
    sparse_file(&src, 16 * MIB, &[(MIB, MIB)]);

    let report = json(&run(diskplane()
        .args(["clone", "-o", "json", "--verify", "--size", "48M"])
        .arg(&src)
        .arg(&dst)));

    assert_eq!(report["strategy"], "reflink");
    assert_eq!(report["targetSize"], 48 * MIB);
    assert_eq!(size(&dst), 48 * MIB);
    assert_eq!(sha256(&dst, 16 * MIB), sha256(&src, 16 * MIB));
}

// ---------------------------------------------------------------------------------------------
// Sparse copy.

fn reflinks_here(dir: &Path) -> bool {
    let out = Command::new("stat").args(["-f", "-c", "%T"]).arg(dir).output().expect("stat -f");
    let fs = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    fs == "xfs" || fs == "btrfs"
}

#[test]
fn without_reflinks_auto_falls_back_to_sparse_copy_says_why_and_keeps_holes() {
    let dir = tempfile::tempdir().expect("temp dir");
    if reflinks_here(dir.path()) {
        eprintln!("skipping: the temporary directory's file system has reflinks");
        return;
    }
    let src = dir.path().join("src.img");
    let dst = dir.path().join("clone.img");
    sparse_file(&src, 128 * MIB, &[(0, MIB), (64 * MIB, 8 * MIB)]);

    let report = json(&run(diskplane().args(["clone", "-o", "json"]).arg(&src).arg(&dst)));

    assert_eq!(report["strategy"], "sparse-copy", "{report}");
    assert_eq!(report["method"], "copy_file_range");
    let reason = report["fallbackReason"].as_str().expect("a fallback reason");
    assert!(reason.starts_with("reflink: the file system cannot reflink"), "{reason}");
    assert_eq!(report["bytesCopied"], 9 * MIB);
    assert_eq!(sha256(&dst, size(&dst)), sha256(&src, size(&src)));
    assert!(allocated(&dst) <= allocated(&src) + MIB, "{} vs {}", allocated(&dst), allocated(&src));
    assert_eq!(report["targetAllocated"], allocated(&dst));
}

#[test]
fn forcing_reflink_where_there_are_none_fails_as_unsupported() {
    let dir = tempfile::tempdir().expect("temp dir");
    if reflinks_here(dir.path()) {
        eprintln!("skipping: the temporary directory's file system has reflinks");
        return;
    }
    let src = dir.path().join("src.img");
    sparse_file(&src, 4 * MIB, &[(0, MIB)]);

    let out = run(diskplane().args(["clone", "--strategy", "reflink"]).arg(&src).arg(dir.path().join("c")));

    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("the reflink strategy cannot be used here"), "{}", stderr(&out));
    assert_eq!(entries(dir.path()), ["src.img"]);
}

#[test]
fn a_smaller_target_is_refused_as_too_large() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("src.img");
    sparse_file(&src, 8 * MIB, &[(0, MIB)]);

    let out = run(diskplane().args(["clone", "--size", "4M"]).arg(&src).arg(dir.path().join("c")));

    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("source is larger than the target"), "{}", stderr(&out));
    assert_eq!(entries(dir.path()), ["src.img"]);
}

#[test]
fn block_device_target_is_written_by_read_write_with_holes_zeroed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("src.img");
    sparse_file(&src, 32 * MIB, &[(MIB, 2 * MIB), (30 * MIB, MIB)]);
    // The device starts full of 0xff: every hole of the source must be zeroed on it.
    let backing = dir.path().join("backing.img");
    std::fs::write(&backing, vec![0xff; 40 * MIB as usize]).expect("backing");
    let Some(device) =
        LoopDevice::attach("block_device_target_is_written_by_read_write_with_holes_zeroed", &backing)
    else {
        return;
    };

    let report = json(&run(diskplane().args(["clone", "-o", "json"]).arg(&src).arg(device.path())));

    assert_eq!(report["strategy"], "sparse-copy", "{report}");
    assert_eq!(report["method"], "read/write");
    assert_eq!(report["targetSize"], 40 * MIB);
    assert_eq!(report["targetAllocated"], serde_json::Value::Null);
    assert_eq!(sha256(device.path(), 32 * MIB), sha256(&src, 32 * MIB));
    let mut tail = vec![0xffu8; 8 * MIB as usize];
    File::open(device.path()).expect("open").read_exact_at(&mut tail, 32 * MIB).expect("read");
    assert!(tail.iter().all(|&b| b == 0), "the device's tail past the source is not zeroed");
}

// ---------------------------------------------------------------------------------------------
// Host-assisted stream between two processes.

#[test]
fn stream_over_tls_between_two_processes_is_identical_and_keeps_holes() {
    let Some(pki) = Pki::new() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let src = stream_source(dir.path());
    let dst = dir.path().join("clone.img");
    let source = SourceProcess::start(&src, &pki, true);

    let out = run(&mut receive_cmd(&format!("tls://127.0.0.1:{}", source.port), &dst, &pki, "token"));
    let (served, served_report, served_err) = source.finish();

    let report = json(&out);
    assert!(served, "source side failed: {served_err}");
    assert_eq!(report["strategy"], "stream");
    assert_eq!(report["method"], "tls-stream");
    let expected = sha256(&src, 64 * MIB);
    // The stream checks a digest of its frames, not the logical sha256 (not reported).
    assert!(report["sha256"].is_null(), "{report}");
    assert_eq!(report["verification"], "stream-xxh3");
    assert_eq!(sha256(&dst, size(&dst)), expected);
    assert_eq!(size(&dst), 64 * MIB);
    assert!(allocated(&dst) <= allocated(&src) + MIB, "{} vs {}", allocated(&dst), allocated(&src));
    assert!(served_report.contains("tls-stream"), "{served_report}");
}

#[test]
fn stream_with_a_wrong_token_is_refused() {
    let Some(pki) = Pki::new() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let src = stream_source(dir.path());
    let source = SourceProcess::start(&src, &pki, true);

    let out = run(&mut receive_cmd(
        &format!("tls://127.0.0.1:{}", source.port),
        &dir.path().join("clone.img"),
        &pki,
        "wrong-token",
    ));
    let (served, _, served_err) = source.finish();

    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("refused the token"), "{}", stderr(&out));
    assert!(!served);
    assert!(served_err.contains("wrong token"), "{served_err}");
    assert_eq!(entries(dir.path()), ["src.img"]);
}

#[test]
fn tampered_plain_stream_fails_the_checksum_and_leaves_no_clone() {
    let Some(pki) = Pki::new() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let src = stream_source(dir.path());
    let source = SourceProcess::start(&src, &pki, false);
    // Past status (1) + header (28) + the first frame header (17): inside the first DATA.
    let port = proxy(source.port, Mischief::FlipByteAt(100_000));

    let out = run(&mut receive_cmd(
        &format!("tcp://127.0.0.1:{port}"),
        &dir.path().join("clone.img"),
        &pki,
        "token",
    ));
    let (served, _, served_err) = source.finish();

    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("checksum mismatch"), "{}", stderr(&out));
    assert!(!served, "the source must learn that the target failed");
    assert!(served_err.contains("failed to write the clone"), "{served_err}");
    assert_eq!(entries(dir.path()), ["src.img"]);
}

#[test]
fn tampered_tls_stream_fails_and_leaves_no_clone() {
    let Some(pki) = Pki::new() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let src = stream_source(dir.path());
    let source = SourceProcess::start(&src, &pki, true);
    let port = proxy(source.port, Mischief::FlipByteAt(200_000));

    let out = run(&mut receive_cmd(
        &format!("tls://127.0.0.1:{port}"),
        &dir.path().join("clone.img"),
        &pki,
        "token",
    ));
    let (served, _, _) = source.finish();

    assert!(!out.status.success());
    assert!(stderr(&out).contains("receiving the clone stream"), "{}", stderr(&out));
    assert!(!served);
    assert_eq!(entries(dir.path()), ["src.img"]);
}

#[test]
fn dropped_connection_fails_and_leaves_no_clone() {
    let Some(pki) = Pki::new() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let src = stream_source(dir.path());
    let source = SourceProcess::start(&src, &pki, true);
    let port = proxy(source.port, Mischief::CutAfter(2 * MIB));

    let out = run(&mut receive_cmd(
        &format!("tls://127.0.0.1:{port}"),
        &dir.path().join("clone.img"),
        &pki,
        "token",
    ));
    let (served, _, _) = source.finish();

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("the source closed the connection"), "{}", stderr(&out));
    assert!(!served);
    assert_eq!(entries(dir.path()), ["src.img"]);
}

#[test]
fn stream_to_a_smaller_target_is_too_large_on_both_sides() {
    let Some(pki) = Pki::new() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let src = stream_source(dir.path());
    let source = SourceProcess::start(&src, &pki, true);

    let out = run(receive_cmd(
        &format!("tls://127.0.0.1:{}", source.port),
        &dir.path().join("clone.img"),
        &pki,
        "token",
    )
    .args(["--size", "32M"]));
    let (served, _, served_err) = source.finish();

    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("source is larger than the target"), "{}", stderr(&out));
    assert!(!served);
    assert!(served_err.contains("source is larger than the target"), "{served_err}");
    assert_eq!(entries(dir.path()), ["src.img"]);
}
