//! `diskplane worker …` run for real, as the kube driver runs them in worker Pods: processes
//! against real peers (nginx from `tests/peers/nginx.sh`, Debian's docker-registry, a gated
//! std::net server for progress), a temporary directory standing in for the PVC mounted at
//! `/data`, a loop device for a Block PVC, and `qemu-img convert -O raw` as the oracle. Every
//! test reads the JSON termination message the kube driver reads.
//!
//! Needs nginx, openssl (nginx.sh's certificates), qemu-img, docker-registry, python3, tar, losetup (root; the loop
//! device test is skipped with the reason printed otherwise).

#[allow(dead_code)]
#[path = "peers/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "peers/loopdev.rs"]
mod loopdev;
#[allow(dead_code)]
#[path = "peers/nginx.rs"]
mod nginx;
#[allow(dead_code)]
#[path = "peers/registry.rs"]
mod registry;
#[allow(dead_code)]
#[path = "peers/tls.rs"]
mod tls;

use loopdev::LoopDevice;
use nginx::Nginx;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{free_port, run_ok, sha256_file, sha256_prefix};
use controller::kube::certs::CertificateAuthority;

const MIB: u64 = 1 << 20;
/// Virtual size of the test disk.
const DISK_SIZE: u64 = 24 * MIB;

// ---------------------------------------------------------------------------------------------
// Images, made once per target dir.

fn images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::made_once("worker-images-v1", make_images))
}

/// raw.img (random runs, text, holes), img.qcow2 of it, tree.tar.gz, and the oracle.
fn make_images(dir: &Path) {
    let raw = dir.join("raw.img");
    let file = std::fs::File::create(&raw).expect("creating raw.img");
    file.set_len(DISK_SIZE).expect("sizing raw.img");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = |len: u64| -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    for (offset, len) in [(0, 2 * MIB), (5 * MIB, 3 * MIB), (DISK_SIZE - MIB, MIB)] {
        file.write_all_at(&random(len), offset).expect("writing data");
    }
    let text: Vec<u8> = b"worker pods import disks. ".iter().copied().cycle().take(MIB as usize).collect();
    file.write_all_at(&text, 12 * MIB).expect("writing text");
    drop(file);
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(dir.join("img.qcow2")),
    );
    let converted = dir.join("oracle.raw");
    run_ok(
        Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(dir.join("img.qcow2")).arg(&converted),
    );
    std::fs::write(dir.join("oracle.sha256"), sha256_file(&converted)).expect("writing the oracle");
    std::fs::remove_file(&converted).expect("removing the oracle image");

    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).expect("creating tree/");
    std::fs::write(tree.join("etc/hosts"), "127.0.0.1 localhost\n").expect("writing tree/");
    std::fs::write(tree.join("big"), vec![0x5au8; 3 << 20]).expect("writing tree/");
    run_ok(Command::new("tar").arg("-C").arg(&tree).arg("-czf").arg(dir.join("tree.tar.gz")).arg("."));
    std::fs::write(dir.join("done"), "").expect("marking the images done");
}

/// sha256 of `qemu-img convert -O raw img.qcow2`.
fn oracle() -> String {
    std::fs::read_to_string(images().join("oracle.sha256")).expect("reading the oracle")
}

/// sha256 of `len` zero bytes.
fn zeros_sha256(len: u64) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("zeros");
    std::fs::File::create(&path).and_then(|f| f.set_len(len)).expect("zero file");
    sha256_file(&path)
}

// ---------------------------------------------------------------------------------------------
// Peers.

/// Serves `data` (200, no ranges) in two halves: the second only after [`Gated::open`], so a
/// test can look at an import in the middle without racing it.
struct Gated {
    port: u16,
    gate: Arc<AtomicBool>,
}

impl Gated {
    fn start(data: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the gated server");
        let port = listener.local_addr().expect("local addr").port();
        let gate = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&gate);
        let data = Arc::new(data);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (flag, data) = (Arc::clone(&flag), Arc::clone(&data));
                std::thread::spawn(move || serve_gated(stream, &data, &flag));
            }
        });
        Self { port, gate }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/raw.img", self.port)
    }

    fn open(&self) {
        self.gate.store(true, Ordering::SeqCst);
    }
}

fn serve_gated(mut stream: TcpStream, data: &[u8], gate: &AtomicBool) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut line = String::new();
    let mut head = false;
    while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        head |= line.starts_with("HEAD ");
        if line == "\r\n" {
            break;
        }
        line.clear();
    }
    let header = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", data.len());
    if stream.write_all(header.as_bytes()).is_err() || head {
        return;
    }
    let half = data.len() / 2;
    if stream.write_all(&data[..half]).is_err() {
        return;
    }
    while !gate.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = stream.write_all(&data[half..]);
}

// ---------------------------------------------------------------------------------------------
// Running workers.

/// A temporary directory standing in for the PVC mounted at /data, and one for the
/// termination message (as Kubernetes mounts it).
struct Pod {
    data: tempfile::TempDir,
    term: tempfile::TempDir,
}

impl Pod {
    fn new() -> Self {
        Self { data: tempfile::tempdir().expect("data dir"), term: tempfile::tempdir().expect("term dir") }
    }

    fn disk(&self) -> PathBuf {
        self.data.path().join("disk.img")
    }

    fn termination_log(&self) -> PathBuf {
        self.term.path().join("termination-log")
    }

    fn worker(&self, role: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_diskplane"));
        cmd.args(["worker", role]).env("TERMINATION_LOG", self.termination_log());
        cmd
    }

    fn import(&self, args: &[&str]) -> Output {
        self.worker("import").arg("--volume").arg(self.disk()).args(args).output().expect("running diskplane")
    }

    /// The termination message as JSON.
    fn result(&self) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.termination_log()).expect("a termination message was written");
        assert!(text.len() < 4096, "termination message too long: {}", text.len());
        serde_json::from_str(&text).expect("the termination message is JSON")
    }

    /// Entries of the data dir.
    fn left(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.data.path())
            .expect("listing the data dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_succeeded(pod: &Pod, out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "worker failed: {}", stderr(out));
    let result = pod.result();
    assert_eq!(result["result"], "Succeeded", "{result}");
    result
}

/// Non-zero exit with one line on stderr, a Failed message, and no disk left in /data.
#[track_caller]
fn assert_failed(pod: &Pod, out: &Output, code: i32) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(code), "stderr: {}", stderr(out));
    assert_eq!(stderr(out).lines().count(), 1, "one line on stderr: {}", stderr(out));
    let result = pod.result();
    assert_eq!(result["result"], "Failed", "{result}");
    assert!(result["reason"].is_string() && result["message"].is_string(), "{result}");
    assert_eq!(pod.left(), Vec::<String>::new(), "nothing may be left in /data after a failure");
    result
}

// ---------------------------------------------------------------------------------------------
// import: http.

#[test]
fn http_qcow2_import_configured_by_env_matches_qemu_img_and_grows_to_the_size() {
    let nginx = Nginx::start(images());
    let pod = Pod::new();
    let out = pod
        .worker("import")
        .env("IMPORTER_VOLUME", pod.disk())
        .env("IMPORTER_SOURCE", "http")
        .env("IMPORTER_ENDPOINT", nginx.file_url("img.qcow2"))
        .env("IMPORTER_CONTENTTYPE", "kubevirt")
        .env("IMPORTER_IMAGE_SIZE", "32Mi")
        .env("INSECURE_TLS", "false")
        .output()
        .expect("running diskplane");
    let result = assert_succeeded(&pod, &out);

    assert_eq!(pod.left(), ["disk.img"]);
    assert_eq!(
        sha256_prefix(&pod.disk(), DISK_SIZE),
        oracle(),
        "the image differs from qemu-img's conversion"
    );
    let meta = std::fs::metadata(pod.disk()).expect("disk.img");
    assert_eq!(meta.len(), 32 * MIB, "disk.img is grown to IMPORTER_IMAGE_SIZE");
    assert_eq!(result["virtualSize"], 32 * MIB);
    let allocated = result["allocatedBytes"].as_u64().expect("allocatedBytes");
    assert_eq!(allocated, meta.blocks() * 512);
    assert!(allocated > 0 && allocated < DISK_SIZE, "the disk stays sparse: {allocated} allocated");
}

/// A certConfigMap-like directory holding the test CA, and a Secret-like directory with the
/// basic-auth credentials (`accessKeyId`, `secretKey`).
fn cert_and_secret_dirs(nginx: &Nginx, password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("certs")).expect("certs dir");
    std::fs::copy(nginx.ca(), dir.path().join("certs/ca.crt")).expect("copying the CA");
    std::fs::create_dir(dir.path().join("secret")).expect("secret dir");
    std::fs::write(dir.path().join("secret/accessKeyId"), "diskplane").expect("accessKeyId");
    std::fs::write(dir.path().join("secret/secretKey"), password).expect("secretKey");
    dir
}

#[test]
fn https_with_the_cert_dir_and_basic_auth_from_the_secret_dir() {
    let nginx = Nginx::start(images());
    let password = std::fs::read_to_string(nginx.password_file()).expect("password");
    let dirs = cert_and_secret_dirs(&nginx, &password);
    let pod = Pod::new();
    let out = pod
        .worker("import")
        .arg("--volume")
        .arg(pod.disk())
        .args(["--source", "http", "--endpoint", &nginx.https_url("auth/img.qcow2")])
        .arg("--cert-dir")
        .arg(dirs.path().join("certs"))
        .env("IMPORTER_SECRET_DIR", dirs.path().join("secret"))
        .output()
        .expect("running diskplane");
    assert_succeeded(&pod, &out);
    assert_eq!(sha256_file(&pod.disk()), oracle());
}

#[test]
fn a_wrong_password_and_an_untrusted_certificate_are_terminal() {
    let nginx = Nginx::start(images());
    let dirs = cert_and_secret_dirs(&nginx, "wrong-password");
    let pod = Pod::new();
    let endpoint = nginx.https_url("auth/img.qcow2");
    let certs = dirs.path().join("certs");
    let secret = dirs.path().join("secret");
    let args = ["--source", "http", "--endpoint", &endpoint, "--retries", "0"];
    let out = pod
        .worker("import")
        .arg("--volume")
        .arg(pod.disk())
        .args(args)
        .arg("--cert-dir")
        .arg(&certs)
        .arg("--secret-dir")
        .arg(&secret)
        .output()
        .expect("running diskplane");
    let result = assert_failed(&pod, &out, 1);
    assert_eq!(result["retryable"], false);
    assert!(result["message"].as_str().unwrap_or_default().contains("401"), "{result}");

    let out = pod.import(&args);
    let result = assert_failed(&pod, &out, 1);
    assert_eq!(result["retryable"], false);
    assert!(result["message"].as_str().unwrap_or_default().contains("certificate"), "{result}");
}

#[test]
fn a_checksum_mismatch_is_terminal_with_cdis_reason() {
    let nginx = Nginx::start(images());
    let pod = Pod::new();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out =
        pod.import(&["--source", "http", "--endpoint", &nginx.file_url("raw.img"), "--checksum", &wrong]);
    let result = assert_failed(&pod, &out, 6);
    assert_eq!(result["reason"], "ChecksumError");
    assert_eq!(result["retryable"], false);
}

#[test]
fn http_404_fails_terminally_naming_the_status() {
    let nginx = Nginx::start(images());
    let pod = Pod::new();
    let out =
        pod.import(&["--source", "http", "--endpoint", &nginx.file_url("missing.qcow2"), "--size", "32M"]);
    let result = assert_failed(&pod, &out, 1);
    assert_eq!(result["retryable"], false);
    assert_eq!(result["reason"], "Error");
    let message = result["message"].as_str().unwrap_or_default();
    assert!(message.contains("HTTP 404 Not Found"), "{message}");
}

#[test]
fn connection_refused_fails_retryably() {
    let pod = Pod::new();
    let url = format!("http://127.0.0.1:{}/disk.img", free_port());
    let out = pod.import(&["--source", "http", "--endpoint", &url, "--size", "32M", "--retries", "0"]);
    let result = assert_failed(&pod, &out, 1);
    assert_eq!(result["retryable"], true, "{result}");
}

#[test]
fn an_image_larger_than_the_size_is_terminal_and_leaves_no_disk() {
    let nginx = Nginx::start(images());
    let pod = Pod::new();
    let out = pod.import(&["--source", "http", "--endpoint", &nginx.file_url("img.qcow2"), "--size", "16Mi"]);
    let result = assert_failed(&pod, &out, 7);
    assert_eq!(result["retryable"], false);
    let message = result["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("DataVolume too small to contain image"), "{message}");
}

#[test]
fn bad_arguments_fail_with_a_terminal_message() {
    let pod = Pod::new();
    let out = pod.import(&["--source", "http", "--endpoint", "ftp://example.com/x.img", "--size", "1M"]);
    let result = assert_failed(&pod, &out, 4);
    assert_eq!(result["retryable"], false);
    assert!(result["message"].as_str().unwrap_or_default().contains("ftp"), "{result}");
}

// ---------------------------------------------------------------------------------------------
// import: blank, archive, registry, block device.

#[test]
fn blank_makes_a_sparse_zero_disk_of_the_size() {
    let pod = Pod::new();
    let out = pod.import(&["--source", "none", "--size", "8Mi"]);
    let result = assert_succeeded(&pod, &out);
    assert_eq!(pod.left(), ["disk.img"]);
    assert_eq!(std::fs::metadata(pod.disk()).expect("disk.img").len(), 8 * MIB);
    assert_eq!(sha256_file(&pod.disk()), zeros_sha256(8 * MIB));
    assert_eq!(result["virtualSize"], 8 * MIB);
    assert_eq!(result["allocatedBytes"], 0);
}

#[test]
fn archive_is_extracted_beside_what_the_volume_already_holds() {
    let nginx = Nginx::start(images());
    let pod = Pod::new();
    std::fs::create_dir(pod.data.path().join("lost+found")).expect("lost+found");
    let out = pod.import(&[
        "--source",
        "http",
        "--endpoint",
        &nginx.file_url("tree.tar.gz"),
        "--content-type",
        "archive",
        "--size",
        "64Mi",
    ]);
    let result = assert_succeeded(&pod, &out);
    assert_eq!(pod.left(), ["big", "etc", "lost+found"]);
    assert_eq!(
        std::fs::read_to_string(pod.data.path().join("etc/hosts")).expect("etc/hosts"),
        "127.0.0.1 localhost\n"
    );
    assert_eq!(result["virtualSize"], (3 << 20) + 20);
}

#[test]
fn registry_containerdisk_is_imported() {
    let registry = registry::Registry::start();
    let qcow2 = images().join("img.qcow2");
    registry.push(
        "disks/worker:v1",
        "amd64",
        &[("gzip", vec![format!("disk/disk.img=@{}", qcow2.display())])],
    );
    let pod = Pod::new();
    let endpoint = format!("docker://{}/disks/worker:v1", registry.host());
    let out = pod.import(&[
        "--source",
        "registry",
        "--endpoint",
        &endpoint,
        "--insecure-tls",
        "--size",
        &DISK_SIZE.to_string(),
    ]);
    assert_succeeded(&pod, &out);
    assert_eq!(sha256_file(&pod.disk()), oracle());
}

#[test]
fn registry_image_not_found_is_image_pull_failed() {
    let registry = registry::Registry::start();
    let pod = Pod::new();
    let endpoint = format!("docker://{}/disks/absent:v1", registry.host());
    let out =
        pod.import(&["--source", "registry", "--endpoint", &endpoint, "--insecure-tls", "--size", "32M"]);
    assert!(!out.status.success());
    let result = pod.result();
    assert_eq!(result["reason"], "ImagePullFailed", "{result}");
    assert_eq!(pod.left(), Vec::<String>::new());
}

/// A 32 MiB loop device full of old data (0xaa), standing in for a Block PVC; `None` (with
/// the reason printed) when this machine cannot make one.
fn block_pvc(test: &str, work: &Path) -> Option<LoopDevice> {
    if !loopdev::usable(test) {
        return None;
    }
    let backing = work.join("pvc.img");
    std::fs::write(&backing, vec![0xaau8; (32 * MIB) as usize]).expect("backing file");
    LoopDevice::attach(test, &backing)
}

#[test]
fn blank_on_a_block_device_zeroes_all_of_it() {
    const TEST: &str = "blank_on_a_block_device_zeroes_all_of_it";
    let work = tempfile::tempdir().expect("tempdir");
    let Some(dev) = block_pvc(TEST, work.path()) else { return };
    let pod = Pod::new();
    let out = pod
        .worker("import")
        .arg("--volume")
        .arg(dev.path())
        .args(["--source", "blank"])
        .output()
        .expect("running diskplane");
    let result = assert_succeeded(&pod, &out);
    assert_eq!(sha256_file(dev.path()), zeros_sha256(32 * MIB), "old data shows through the blank disk");
    assert_eq!(result["virtualSize"], 32 * MIB);
}

#[test]
fn import_onto_a_block_device_writes_the_image_and_zeroes_old_data() {
    const TEST: &str = "import_onto_a_block_device_writes_the_image_and_zeroes_old_data";
    let work = tempfile::tempdir().expect("tempdir");
    // Old contents everywhere: holes of the image must read as zeros afterwards.
    let Some(dev) = block_pvc(TEST, work.path()) else { return };
    let pod = Pod::new();
    let nginx = Nginx::start(images());
    let out = pod
        .worker("import")
        .arg("--volume")
        .arg(dev.path())
        .args(["--source", "http", "--endpoint", &nginx.file_url("img.qcow2")])
        .output()
        .expect("running diskplane");
    let result = assert_succeeded(&pod, &out);
    assert_eq!(sha256_prefix(dev.path(), DISK_SIZE), oracle(), "device content differs from qemu-img's");
    assert_eq!(result["virtualSize"], 32 * MIB, "a device's size is the disk's");
}

// ---------------------------------------------------------------------------------------------
// Metrics.

fn scrape(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: worker\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(name) && !l.starts_with('#'))?.rsplit(' ').next()?.parse().ok()
}

#[test]
fn metrics_show_progress_in_the_middle_of_an_import() {
    let raw = std::fs::read(images().join("raw.img")).expect("raw.img");
    let server = Gated::start(raw);
    let pod = Pod::new();
    let port = free_port();
    let mut child = pod
        .worker("import")
        .arg("--volume")
        .arg(pod.disk())
        .args(["--source", "http", "--endpoint", &server.url(), "--size", "24Mi"])
        .args(["--metrics-listen", &format!("127.0.0.1:{port}"), "--owner-uid", "dv-uid-1"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the worker");

    // The server holds back the second half until the test saw progress, so there is no race.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        if let Some(text) = scrape(port)
            && metric(&text, "diskplane_progress_ratio").is_some_and(|r| r > 0.0)
        {
            break text;
        }
        assert!(child.try_wait().expect("polling the worker").is_none(), "the worker exited early");
        assert!(Instant::now() < deadline, "no progress seen in the metrics");
        std::thread::sleep(Duration::from_millis(50));
    };
    server.open();

    let ratio = metric(&text, "diskplane_progress_ratio{ownerUID=\"dv-uid-1\"}").expect("ratio with label");
    assert!(ratio > 0.0 && ratio <= 1.0, "{text}");
    assert_eq!(metric(&text, "diskplane_bytes_total"), Some(DISK_SIZE as f64), "{text}");
    assert!(metric(&text, "diskplane_bytes_written_total").is_some_and(|b| b > 0.0), "{text}");
    let percent = metric(&text, "kubevirt_cdi_import_progress_total").expect("CDI's metric");
    assert!(percent > 0.0 && percent <= 100.0, "{text}");

    let out = child.wait_with_output().expect("waiting for the worker");
    assert_succeeded(&pod, &out);
    assert_eq!(sha256_file(&pod.disk()), sha256_file(&images().join("raw.img")));
}

// ---------------------------------------------------------------------------------------------
// Clone between two worker processes.

/// The name the controller puts in a clone source's certificate (`names::clone_source_server_name`):
/// the target dials the source's address and checks this name.
const SOURCE_NAME: &str = "uid-1-source-pod.vms.pod";

/// What the controller puts in a clone's Secret, made with its CA module: the source's
/// certificate for [`SOURCE_NAME`] (`tls.crt`, `tls.key`), the CA bundle (`ca.crt`) and a
/// token.
fn pki(dir: &Path) {
    let now =
        i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()).expect("time");
    let ca = CertificateAuthority::generate(now, None).expect("a CA");
    let leaf = ca.issue(&[SOURCE_NAME.to_owned()], now).expect("a serving certificate");
    for (file, text) in [("tls.crt", &leaf.cert_pem), ("tls.key", &leaf.key_pem), ("ca.crt", &leaf.ca_pem)] {
        std::fs::write(dir.join(file), text).expect("writing the clone's Secret files");
    }
    std::fs::write(dir.join("token"), "worker-clone-token\n").expect("token");
}

/// `clone-source` serving `source`'s disk once with the certificate in `certs`; returns the
/// process and its address.
fn clone_source(source: &Pod, certs: &Path) -> (std::process::Child, String) {
    let mut serving = source
        .worker("clone-source")
        .arg("--volume")
        .arg(source.disk())
        .args(["--listen", "127.0.0.1:0", "--timeout-secs", "60"])
        .arg("--tls-cert")
        .arg(certs.join("tls.crt"))
        .arg("--tls-key")
        .arg(certs.join("tls.key"))
        .arg("--token-file")
        .arg(certs.join("token"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting clone-source");
    let mut line = String::new();
    BufReader::new(serving.stdout.take().expect("stdout")).read_line(&mut line).expect("reading stdout");
    let addr =
        line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let addr = addr.to_owned();
    (serving, addr)
}

/// `clone-target` receiving from `addr` into `target`, checking [`SOURCE_NAME`] against `ca`.
fn clone_target(target: &Pod, addr: &str, ca: &Path, token: &Path) -> Output {
    target
        .worker("clone-target")
        .arg("--volume")
        .arg(target.disk())
        .args(["--source-url", &format!("https://{addr}"), "--timeout-secs", "60"])
        .args(["--tls-server-name", SOURCE_NAME])
        .arg("--ca-cert")
        .arg(ca)
        .arg("--token-file")
        .arg(token)
        .output()
        .expect("running clone-target")
}

#[test]
fn clone_source_and_target_over_tls_with_controller_issued_certificates_give_an_identical_sparse_disk() {
    let certs = tempfile::tempdir().expect("pki dir");
    pki(certs.path());
    let source = Pod::new();
    run_ok(Command::new("cp").arg("--sparse=always").arg(images().join("raw.img")).arg(source.disk()));
    let (serving, addr) = clone_source(&source, certs.path());

    let target = Pod::new();
    let out = clone_target(&target, &addr, &certs.path().join("ca.crt"), &certs.path().join("token"));
    let target_result = assert_succeeded(&target, &out);
    let served = serving.wait_with_output().expect("waiting for clone-source");
    let source_result = assert_succeeded(&source, &served);

    let want = sha256_file(&source.disk());
    assert_eq!(sha256_file(&target.disk()), want, "the clone differs from the source");
    assert_eq!(source_result["virtualSize"], DISK_SIZE, "{source_result}");
    let meta = std::fs::metadata(target.disk()).expect("clone");
    assert_eq!(meta.len(), DISK_SIZE);
    assert!(
        meta.blocks() * 512 < DISK_SIZE / 2,
        "the clone is not sparse: {} bytes allocated",
        meta.blocks() * 512
    );
    assert_eq!(target_result["virtualSize"], DISK_SIZE);
    assert_eq!(target_result["allocatedBytes"], meta.blocks() * 512, "{target_result}");
}

#[test]
fn clone_targets_refuse_a_source_certificate_of_another_ca_or_name_and_write_nothing() {
    let certs = tempfile::tempdir().expect("pki dir");
    pki(certs.path());
    let other = tempfile::tempdir().expect("another CA");
    pki(other.path());
    let source = Pod::new();
    run_ok(Command::new("cp").arg("--sparse=always").arg(images().join("raw.img")).arg(source.disk()));
    let token = certs.path().join("token");
    // Another CA's bundle; then ours but a server name the certificate does not carry.
    for (ca, name, expect) in [
        (other.path().join("ca.crt"), SOURCE_NAME, "UnknownIssuer"),
        (certs.path().join("ca.crt"), "uid-2-source-pod.vms.pod", "not valid for name"),
    ] {
        let (mut serving, addr) = clone_source(&source, certs.path());
        let target = Pod::new();

        let out = target
            .worker("clone-target")
            .arg("--volume")
            .arg(target.disk())
            .args(["--source-url", &format!("https://{addr}"), "--tls-server-name", name])
            .arg("--ca-cert")
            .arg(&ca)
            .arg("--token-file")
            .arg(&token)
            .output()
            .expect("running clone-target");

        let result = assert_failed(&target, &out, out.status.code().unwrap_or(-1));
        assert_ne!(out.status.code(), Some(0));
        assert!(result["message"].as_str().is_some_and(|m| m.contains(expect)), "{expect}: {result}");
        let _ = serving.kill();
        let _ = serving.wait();
    }
}

#[test]
fn clone_target_with_a_refused_connection_fails_retryably() {
    let certs = tempfile::tempdir().expect("pki dir");
    std::fs::write(certs.path().join("token"), "worker-clone-token\n").expect("token");
    let target = Pod::new();
    let out = target
        .worker("clone-target")
        .arg("--volume")
        .arg(target.disk())
        .args(["--source-url", &format!("tcp://127.0.0.1:{}", free_port()), "--insecure"])
        .arg("--token-file")
        .arg(certs.path().join("token"))
        .output()
        .expect("running clone-target");
    let result = assert_failed(&target, &out, 1);
    assert_eq!(result["retryable"], true, "{result}");
}

// ---------------------------------------------------------------------------------------------
// Upload server.

#[test]
fn upload_server_writes_the_result_contract_when_it_exits_after_an_upload() {
    let pod = Pod::new();
    let key = pod.term.path().join("key");
    std::fs::write(&key, b"a worker test key of 32 bytes!!!").expect("key");
    let metrics_port = free_port();
    let mut server = pod
        .worker("upload-server")
        .arg("--volume")
        .arg(pod.disk())
        .args(["--name", "disk", "--size", "32M", "--listen", "127.0.0.1:0", "--exit-on-success"])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .arg("--token-key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting upload-server");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("reading stdout");
    let base =
        line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let metrics = scrape(metrics_port).expect("the metrics endpoint answers while waiting");
    assert!(metrics.contains("kubevirt_cdi_upload_progress_total 0.00"), "{metrics}");

    let token =
        pod.worker("upload-token").args(["--name", "disk", "--token-key"]).arg(&key).output().expect("token");
    assert!(token.status.success(), "{}", stderr(&token));
    let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
    let image = images().join("img.qcow2");
    let curl = Command::new("curl")
        .args(["-sS", "-f", "-H", &format!("Authorization: Bearer {token}"), "--data-binary"])
        .arg(format!("@{}", image.display()))
        .arg(format!("{base}/v1beta1/upload"))
        .output()
        .expect("running curl");
    assert!(curl.status.success(), "upload failed: {}", stderr(&curl));

    let out = server.wait_with_output().expect("waiting for upload-server");
    let result = assert_succeeded(&pod, &out);
    assert_eq!(sha256_prefix(&pod.disk(), DISK_SIZE), oracle());
    let meta = std::fs::metadata(pod.disk()).expect("disk.img");
    assert_eq!(result["virtualSize"], meta.len(), "{result}");
    assert_eq!(result["allocatedBytes"], meta.blocks() * 512, "{result}");
}
