//! `diskplane worker upload-server --content-type archive` (the upload Pod of an archive
//! DataVolume) as a real process on 127.0.0.1 over a temporary directory, with `curl` as the
//! client, GNU tar making the archives and `qemu-img` making a disk image that is not one. The
//! termination message is read as the kube driver reads it.
//!
//! Needs curl, tar, gzip and qemu-img (see `.ci/packages.txt`).

#[allow(dead_code)]
#[path = "peers/common.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

/// The most bytes of file content each test volume takes.
const VOLUME_SIZE: &str = "32M";

// ---------------------------------------------------------------------------------------------
// Archives, made once per target dir.

/// `src/` (files of three modes, a private directory, a relative symlink, 1 MiB of data) and
/// `tree.tar.gz` of it; `evil.tar` with a `../x` member; `lost.tar` holding `lost+found/`;
/// `disk.qcow2`, an image that is not an archive.
fn archives() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::made_once("worker-upload-archives-v1", make_archives))
}

fn make_archives(dir: &Path) {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("etc/private")).expect("dirs");
    std::fs::write(src.join("etc/hostname"), b"worker-archive\n").expect("file");
    std::fs::write(src.join("etc/private/secret"), b"s3cret\n").expect("file");
    std::fs::write(src.join("run.sh"), b"#!/bin/sh\necho hi\n").expect("file");
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(src.join("data.bin"), &data).expect("file");
    std::os::unix::fs::symlink("etc/hostname", src.join("hostname")).expect("symlink");
    for (path, mode) in [("run.sh", 0o755), ("etc/private/secret", 0o600), ("etc/private", 0o750)] {
        std::fs::set_permissions(src.join(path), std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    tar(&src, &["-czf", "../tree.tar.gz", "."]);

    std::fs::create_dir_all(dir.join("inside")).expect("dir");
    std::fs::write(dir.join("inside/ok"), b"fine").expect("file");
    std::fs::write(dir.join("x"), b"escaped").expect("file");
    // -P keeps the member name `../x` as given (GNU tar strips it otherwise).
    tar(&dir.join("inside"), &["-cPf", "../evil.tar", "ok", "../x"]);

    std::fs::create_dir_all(dir.join("lost/lost+found")).expect("dir");
    std::fs::write(dir.join("lost/lost+found/file"), b"mine").expect("file");
    std::fs::write(dir.join("lost/other"), b"other").expect("file");
    tar(&dir.join("lost"), &["-cf", "../lost.tar", "other", "lost+found"]);

    common::run_ok(
        Command::new("qemu-img").args(["create", "-f", "qcow2", "disk.qcow2", "1M"]).current_dir(dir),
    );
    std::fs::write(dir.join("done"), "").expect("done marker");
}

fn tar(dir: &Path, args: &[&str]) {
    common::run_ok(Command::new("tar").args(args).current_dir(dir));
}

fn archive(name: &str) -> PathBuf {
    archives().join(name)
}

// ---------------------------------------------------------------------------------------------
// The worker process.

fn diskplane() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diskplane"))
}

/// An upload-server for `default/disk` over `<tmp>/volume/`, a directory that already holds
/// `lost+found` (as a freshly formatted mount does); the termination message goes to
/// `<tmp>/termination-log`.
struct Worker {
    child: Child,
    tmp: tempfile::TempDir,
    base: String,
}

impl Worker {
    /// Starts the server; `volume` is the `--volume` path relative to the temp dir.
    fn start(volume: &str, configure: impl FnOnce(&mut Command)) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(tmp.path().join("volume/lost+found")).expect("volume dir");
        std::fs::write(tmp.path().join("key"), b"a worker upload key of 32 bytes!").expect("key");
        let mut cmd = diskplane();
        cmd.args(["worker", "upload-server", "--name", "disk", "--size", VOLUME_SIZE])
            .args(["--listen", "127.0.0.1:0", "--exit-on-success"])
            .arg("--volume")
            .arg(tmp.path().join(volume))
            .arg("--token-key")
            .arg(tmp.path().join("key"))
            .env("TERMINATION_LOG", tmp.path().join("termination-log"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("starting the upload server");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("listening line");
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected: {line:?}"))
            .to_owned();
        Self { child, tmp, base }
    }

    /// The kube driver's way: `--volume /data/disk.img` and `UPLOAD_CONTENTTYPE=archive`.
    fn start_like_the_upload_pod() -> Self {
        Self::start("volume/disk.img", |cmd| {
            cmd.env("UPLOAD_CONTENTTYPE", "archive");
        })
    }

    fn dir(&self) -> PathBuf {
        self.tmp.path().join("volume")
    }

    /// A token from `diskplane worker upload-token` with this server's key.
    fn token(&self) -> String {
        let out = diskplane()
            .args(["worker", "upload-token", "--name", "disk", "--token-key"])
            .arg(self.tmp.path().join("key"))
            .output()
            .expect("upload-token");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
    }

    fn upload(&self, file: &Path, route: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {}", self.token()))
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!("{}{route}", self.base))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// The names in the volume directory, sorted.
    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir())
            .expect("listing the volume")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn still_running(&mut self) -> bool {
        self.child.try_wait().expect("polling the server").is_none()
    }

    fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("waiting for the server")
    }

    /// The termination message as JSON.
    fn result(&self) -> Value {
        let text = std::fs::read_to_string(self.tmp.path().join("termination-log"))
            .expect("a termination message was written");
        serde_json::from_str(&text).expect("the termination message is JSON")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The volume holds `lost+found` and exactly the tree, with its contents and modes.
fn assert_tree_extracted(worker: &Worker) {
    let (dir, src) = (worker.dir(), archive("src"));
    for file in ["etc/hostname", "etc/private/secret", "run.sh", "data.bin"] {
        let got = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(got, std::fs::read(src.join(file)).expect(file), "{file} differs");
    }
    let mode =
        |path: &str| std::fs::symlink_metadata(dir.join(path)).expect(path).permissions().mode() & 0o777;
    assert_eq!(mode("run.sh"), 0o755);
    assert_eq!(mode("etc/private/secret"), 0o600);
    assert_eq!(mode("etc/private"), 0o750);
    assert_eq!(std::fs::read_link(dir.join("hostname")).expect("symlink"), Path::new("etc/hostname"));
    assert_eq!(worker.entries(), ["data.bin", "etc", "hostname", "lost+found", "run.sh"], "leftovers");
}

/// Bytes of file content in the tree.
fn tree_bytes() -> u64 {
    ["etc/hostname", "etc/private/secret", "run.sh", "data.bin"]
        .iter()
        .map(|f| std::fs::metadata(archive("src").join(f)).expect(f).len())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn an_archive_is_extracted_into_the_volume_directory_and_the_server_exits_with_its_result() {
    let mut worker = Worker::start_like_the_upload_pod();

    let (status, body) = worker.upload(&archive("tree.tar.gz"), "/v1beta1/upload-archive");

    assert_eq!(status, 200, "{body}");
    let exit = worker.wait();
    assert!(exit.success(), "{exit:?}");
    assert_tree_extracted(&worker);
    let result = worker.result();
    assert_eq!(result["result"], "Succeeded", "{result}");
    assert_eq!(result["virtualSize"], tree_bytes(), "{result}");
    assert_eq!(result["allocatedBytes"], tree_bytes(), "{result}");
}

#[test]
fn the_content_type_flag_on_a_directory_volume_takes_archives_on_the_plain_upload_route() {
    let mut worker = Worker::start("volume", |cmd| {
        cmd.args(["--content-type", "archive"]);
    });

    let (status, body) = worker.upload(&archive("tree.tar.gz"), "/v1beta1/upload");

    assert_eq!(status, 200, "{body}");
    assert!(worker.wait().success());
    assert_tree_extracted(&worker);
}

#[test]
fn a_parent_dir_member_gets_400_naming_it_writes_nothing_and_a_good_archive_follows() {
    let mut worker = Worker::start_like_the_upload_pod();

    let (status, body) = worker.upload(&archive("evil.tar"), "/v1beta1/upload-archive");

    assert_eq!(status, 400, "{body}");
    assert!(body.contains("archive entry \"../x\" leaves the target directory"), "{body}");
    assert_eq!(worker.entries(), ["lost+found"], "written into the volume");
    assert!(!worker.tmp.path().join("x").exists(), "written outside the volume");
    assert!(worker.still_running(), "a failed upload does not end the server");

    let (status, body) = worker.upload(&archive("tree.tar.gz"), "/v1beta1/upload-archive");
    assert_eq!(status, 200, "{body}");
    assert!(worker.wait().success());
    assert_tree_extracted(&worker);
}

#[test]
fn an_archive_member_that_exists_in_the_volume_gets_400_and_nothing_is_moved() {
    let mut worker = Worker::start_like_the_upload_pod();

    let (status, body) = worker.upload(&archive("lost.tar"), "/v1beta1/upload-archive");

    assert_eq!(status, 400, "{body}");
    assert!(body.contains("the archive entry \"lost+found\" already exists in"), "{body}");
    assert_eq!(worker.entries(), ["lost+found"], "moved in or left behind");
    assert!(worker.dir().join("lost+found").read_dir().expect("lost+found").next().is_none());
    assert!(worker.still_running());
}

#[test]
fn a_disk_image_sent_to_an_archive_volume_gets_400() {
    let mut worker = Worker::start_like_the_upload_pod();

    let (status, body) = worker.upload(&archive("disk.qcow2"), "/v1beta1/upload-archive");

    assert_eq!(status, 400, "{body}");
    assert!(body.contains("needs a tar archive, but the source holds qcow2"), "{body}");
    assert_eq!(worker.entries(), ["lost+found"]);
    assert!(worker.still_running());
}

#[test]
fn an_archive_volume_without_a_size_is_refused_with_a_termination_message() {
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::write(tmp.path().join("key"), b"a worker upload key of 32 bytes!").expect("key");
    let out = diskplane()
        .args(["worker", "upload-server", "--content-type", "archive", "--listen", "127.0.0.1:0"])
        .arg("--volume")
        .arg(tmp.path())
        .arg("--token-key")
        .arg(tmp.path().join("key"))
        .env("TERMINATION_LOG", tmp.path().join("termination-log"))
        .output()
        .expect("running upload-server");

    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("an archive volume needs --size"), "{stderr}");
    let text = std::fs::read_to_string(tmp.path().join("termination-log")).expect("termination message");
    let result: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(result["result"], "Failed", "{result}");
    assert!(result["message"].as_str().is_some_and(|m| m.contains("needs --size")), "{result}");
}
