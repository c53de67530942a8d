//! `diskplane upload-proxy` end to end: real processes on 127.0.0.1 — the proxy (TLS, global
//! key) in front of `diskplane worker upload-server` (TLS, the DataVolume's derived key), both
//! with certificates of a throw-away CA made by openssl, or (last section) upload servers with
//! certificates issued by the controller's CA module as in a cluster; `curl` as the client (as
//! CDI's doc/upload.md does) and `qemu-img convert -O raw` as the oracle.
//!
//! Needs qemu-img, curl and openssl (see `.ci/packages.txt`).

#[allow(dead_code)]
#[path = "peers/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "peers/tls.rs"]
mod tls;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, run_ok, sha256_file};
use controller::kube::certs::CertificateAuthority;
use tls::{TestPki, make_pki};
use uploader::token::{Claims, DEFAULT_TTL, TokenKey, UploadContent, unix_now};

const NS: &str = "tenant";
const UID: &str = "0b6a5d2e-7f7c-4d4e-9a59-1c2d3e4f5a6b";

/// A child process killed when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test's directory, PKI and global key.
struct Cluster {
    dir: tempfile::TempDir,
    pki: TestPki,
    global: TokenKey,
    global_file: PathBuf,
}

fn cluster() -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = make_pki(dir.path());
    let global_file = dir.path().join("global.key");
    std::fs::write(&global_file, b"the cluster's global upload key!").expect("writing the key");
    let global = TokenKey::from_file(&global_file).expect("key");
    Cluster { dir, pki, global, global_file }
}

impl Cluster {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The upload Pod of DataVolume `NS/name`: its key file holds the derived key (what the
    /// controller writes into the Secret `cdi-upload-<name>`). Returns it and its https base URL.
    fn upload_server(&self, name: &str, size: &str) -> (Running, String) {
        self.upload_server_with(name, size, &self.pki.cert, &self.pki.key)
    }

    /// [`Cluster::upload_server`] serving `cert` / `key`.
    fn upload_server_with(&self, name: &str, size: &str, cert: &Path, key: &Path) -> (Running, String) {
        let key_file = self.path(&format!("{name}.derived-key"));
        std::fs::write(&key_file, self.global.derive_hex(NS, name, UID)).expect("writing the derived key");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_diskplane"));
        cmd.args(["worker", "upload-server", "--namespace", NS, "--name", name, "--size", size])
            .args(["--listen", "127.0.0.1:0", "--exit-on-success", "--volume"])
            .arg(self.volume(name))
            .arg("--token-key")
            .arg(&key_file)
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .arg("--scratch-dir")
            .arg(self.dir.path());
        start(cmd, "upload-server")
    }

    fn volume(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}.img"))
    }

    /// The proxy in front of `upstream` (a template), with the test CA for https upstreams.
    fn proxy(&self, upstream: &str, extra: &[&str]) -> (Running, String) {
        self.proxy_with_ca(upstream, &self.pki.ca, extra)
    }

    /// [`Cluster::proxy`] verifying https upstreams against `ca`.
    fn proxy_with_ca(&self, upstream: &str, ca: &Path, extra: &[&str]) -> (Running, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_diskplane"));
        cmd.args(["upload-proxy", "--listen", "127.0.0.1:0", "--upstream", upstream])
            .arg("--tls-cert")
            .arg(&self.pki.cert)
            .arg("--tls-key")
            .arg(&self.pki.key)
            .arg("--token-key")
            .arg(&self.global_file)
            .args(extra);
        if upstream.starts_with("https://") {
            cmd.arg("--upstream-ca").arg(ca);
        }
        start(cmd, "upload-proxy")
    }

    /// A cluster token for `NS/name`, signed with its derived key.
    fn token(&self, name: &str, content: UploadContent) -> String {
        let claims = Claims::upload(NS, name, unix_now(), DEFAULT_TTL).for_data_volume(UID, content);
        self.global.derive(NS, name, UID).issue(&claims)
    }

    /// `curl` against the proxy: status, body.
    fn curl(&self, url: &str, args: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&self.pki.ca)
            .args(["-o", "-", "-w", "\n%{http_code}"])
            .args(args)
            .arg(url)
            .output()
            .expect("running curl");
        assert!(out.status.success(), "curl {args:?} {url}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("curl's status line");
        (code.trim().parse().unwrap_or_else(|_| panic!("status {code:?}")), body.to_owned())
    }
}

/// Starts `cmd` and reads its "listening on URL" line.
fn start(mut cmd: Command, what: &str) -> (Running, String) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting diskplane");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("reading stdout");
    let Some(url) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        let mut err = String::new();
        let _ = child.stderr.take().expect("stderr").read_to_string(&mut err);
        panic!("{what} did not start: {line:?} {err}");
    };
    let url = url.to_owned();
    (Running(child), url)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// A 20 MiB raw disk with data, text and holes → `disk.qcow2` and qemu-img's raw conversion.
fn qcow2_and_reference(dir: &Path) -> (PathBuf, String) {
    let raw = dir.join("source.raw");
    let mut bytes = vec![0u8; 20 << 20];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for block in bytes.chunks_mut(64 << 10).step_by(3) {
        for b in block.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
    }
    bytes[5 << 20..(5 << 20) + 11].copy_from_slice(b"hello proxy");
    std::fs::write(&raw, &bytes).expect("writing source.raw");
    let qcow2 = dir.join("disk.qcow2");
    run_ok(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2));
    let reference = dir.join("reference.raw");
    run_ok(
        Command::new("qemu-img").args(["convert", "-f", "qcow2", "-O", "raw"]).arg(&qcow2).arg(&reference),
    );
    (qcow2, sha256_file(&reference))
}

#[test]
fn a_qcow2_uploaded_through_the_proxy_matches_qemu_img() {
    let c = cluster();
    let (qcow2, reference) = qcow2_and_reference(c.dir.path());
    let (mut server, upstream) = c.upload_server("disk", "64M");
    let (_proxy, proxy) = c.proxy(&upstream, &[]);
    let token = c.token("disk", UploadContent::Kubevirt);

    assert_eq!(c.curl(&format!("{proxy}/healthz"), &[]), (200, "OK".to_owned()));
    // virtctl's capability probe, forwarded to the upload server.
    let (status, _) = c.curl(&format!("{proxy}/v1beta1/upload-async"), &["-I", "-H", &bearer(&token)]);
    assert_eq!(status, 200);
    let data = format!("@{}", qcow2.display());
    let (status, body) = c.curl(
        &format!("{proxy}/v1beta1/upload"),
        &["-H", &bearer(&token), "-H", "Content-Type: application/octet-stream", "--data-binary", &data],
    );

    assert_eq!(status, 200, "{body}");
    let exit = server.0.wait().expect("waiting for upload-server");
    assert!(exit.success(), "upload-server exited {exit}");
    assert_eq!(sha256_file(&c.volume("disk")), reference);
}

#[test]
fn bad_headers_are_400_and_bad_tokens_401_and_nothing_is_stored() {
    let c = cluster();
    let (_server, upstream) = c.upload_server("disk", "64M");
    let (_proxy, proxy) = c.proxy(&upstream, &[]);
    let url = format!("{proxy}/v1beta1/upload");
    let body = ["--data-binary", "not an image"];
    let now = unix_now();

    let (status, text) = c.curl(&url, &body);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("no Authorization header"), "{text}");
    for header in ["Authorization: Basic dXNlcjpwdw==", "Authorization: Bearer", "Authorization: Bearer a=b"]
    {
        let (status, text) = c.curl(&url, &[&body[..], &["-H", header]].concat());
        assert_eq!(status, 400, "{header}: {text}");
        assert!(text.contains("malformed Authorization header"), "{header}: {text}");
    }

    // Signed with disk's (leaked) derived key, but naming another volume.
    let other = Claims::upload(NS, "other", now, DEFAULT_TTL).for_data_volume(UID, UploadContent::Kubevirt);
    let for_other = c.global.derive(NS, "disk", UID).issue(&other);
    // Expired ten minutes ago.
    let old =
        Claims::upload(NS, "disk", now - 900, DEFAULT_TTL).for_data_volume(UID, UploadContent::Kubevirt);
    let expired = c.global.derive(NS, "disk", UID).issue(&old);
    // Derived from another cluster's global key.
    let foreign_global = TokenKey::from_bytes(b"another cluster's global key....".to_vec()).expect("key");
    let claims = Claims::upload(NS, "disk", now, DEFAULT_TTL).for_data_volume(UID, UploadContent::Kubevirt);
    let other_key = foreign_global.derive(NS, "disk", UID).issue(&claims);
    // The volume's own key, but the claims altered to name another uid.
    let old_uid =
        Claims::upload(NS, "disk", now, DEFAULT_TTL).for_data_volume("old-uid", UploadContent::Kubevirt);
    let stale = c.global.derive(NS, "disk", UID).issue(&old_uid);
    for (token, expect) in [
        (for_other, "signature is invalid (token for DataVolume tenant/other)"),
        (expired, "expired"),
        (other_key, "signature is invalid"),
        (stale, "signature is invalid"),
    ] {
        let (status, text) = c.curl(&url, &[&body[..], &["-H", &bearer(&token)]].concat());
        assert_eq!(status, 401, "{token}: {text}");
        assert!(text.contains(expect), "{text}");
    }

    assert!(!c.volume("disk").exists(), "nothing may be stored after refused uploads");
    // The upload server is still waiting for its upload.
    let (status, _) = c.curl(&format!("{upstream}/healthz"), &[]);
    assert_eq!(status, 200);
}

#[test]
fn the_upload_servers_answers_pass_through_and_archives_go_to_upload_archive() {
    let c = cluster();
    let (_server, upstream) = c.upload_server("disk", "64M");
    let (_proxy, proxy) = c.proxy(&upstream, &[]);
    let url = format!("{proxy}/v1beta1/upload");

    // A valid token for volume "b", routed (by the test's fixed upstream) to disk's server:
    // the server refuses it with its own key and its answer reaches the client unchanged.
    let for_b = c.token("b", UploadContent::Kubevirt);
    let (status, text) = c.curl(&url, &["-H", &bearer(&for_b), "--data-binary", "x"]);
    assert_eq!(status, 401, "{text}");
    assert!(!text.contains("error in upload-proxy"), "{text}");

    // A token of an earlier DataVolume of the same name (deleted, re-created with a new uid):
    // the proxy verifies it with the old uid's key, the upload Pod refuses it with the new one.
    let old = Claims::upload(NS, "disk", unix_now(), DEFAULT_TTL)
        .for_data_volume("old-uid", UploadContent::Kubevirt);
    let stale = c.global.derive(NS, "disk", "old-uid").issue(&old);
    let (status, text) = c.curl(&url, &["-H", &bearer(&stale), "--data-binary", "x"]);
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("signature is invalid"), "{text}");

    // An archive DataVolume's token: the proxy rewrites the path to /v1beta1/upload-archive,
    // which this disk-image volume refuses (proving the rewrite).
    let archive = c.token("disk", UploadContent::Archive);
    let (status, text) = c.curl(&url, &["-H", &bearer(&archive), "--data-binary", "x"]);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not an archive"), "{text}");
    assert!(!c.volume("disk").exists());
}

#[test]
fn an_unreachable_upload_server_is_503_naming_the_volume() {
    let c = cluster();
    let upstream = format!("https://127.0.0.1:{}", free_port());
    let (_proxy, proxy) = c.proxy(&upstream, &["--upstream-wait-secs", "2"]);
    let token = c.token("disk", UploadContent::Kubevirt);

    let (status, text) =
        c.curl(&format!("{proxy}/v1beta1/upload"), &["-H", &bearer(&token), "--data-binary", "x"]);

    assert_eq!(status, 503, "{text}");
    assert!(text.starts_with("error in upload-proxy: "), "{text}");
    assert!(text.contains("DataVolume tenant/disk"), "{text}");
    assert!(text.contains("not reachable"), "{text}");
}

#[test]
fn the_proxy_refuses_bad_configuration() {
    let c = cluster();
    for (args, expect) in [
        (vec!["--upstream", "https://127.0.0.1:9"], "--upstream-ca"),
        (vec!["--upstream", "ftp://127.0.0.1:9"], "must start with https:// or http://"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_diskplane"))
            .args(["upload-proxy", "--listen", "127.0.0.1:0", "--token-key"])
            .arg(&c.global_file)
            .arg("--tls-cert")
            .arg(&c.pki.cert)
            .arg("--tls-key")
            .arg(&c.pki.key)
            .args(&args)
            .output()
            .expect("running diskplane");
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
    let short = c.path("short.key");
    std::fs::write(&short, b"short").expect("key");
    let out = Command::new(env!("CARGO_BIN_EXE_diskplane"))
        .args(["upload-proxy", "--listen", "127.0.0.1:0", "--upstream", "http://127.0.0.1:9", "--token-key"])
        .arg(&short)
        .arg("--tls-cert")
        .arg(&c.pki.cert)
        .arg("--tls-key")
        .arg(&c.pki.key)
        .output()
        .expect("running diskplane");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("at least 16"), "{}", stderr(&out));
}

/// Peak resident memory of a process, from /proc (kB → bytes).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
    let kb: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM value");
    kb * 1024
}

/// A 1 GiB sparse raw image streams through: the proxy's peak memory stays far below the body.
#[test]
fn a_large_body_streams_through_with_bounded_proxy_memory() {
    const SIZE: u64 = 1 << 30;
    const BOUND: u64 = 96 << 20;
    let c = cluster();
    let image = c.path("large.raw");
    let mut data = vec![0u8; 1 << 20];
    data[..14].copy_from_slice(b"first mebibyte");
    std::fs::write(&image, &data).expect("writing large.raw");
    let file = std::fs::OpenOptions::new().write(true).open(&image).expect("opening large.raw");
    file.set_len(SIZE).expect("sizing large.raw");
    drop(file);
    let (mut server, upstream) = c.upload_server("large", "1G");
    let (proxy_process, proxy) = c.proxy(&upstream, &[]);
    let token = c.token("large", UploadContent::Kubevirt);

    let path = image.display().to_string();
    // -T streams the file (PUT, with Content-Length); --data-binary would read it into memory.
    let (status, body) = c.curl(&format!("{proxy}/v1beta1/upload"), &["-H", &bearer(&token), "-T", &path]);

    assert_eq!(status, 200, "{body}");
    let peak = peak_rss(proxy_process.0.id());
    assert!(peak < BOUND, "the proxy's peak RSS was {peak} bytes for a {SIZE}-byte body");
    println!("proxy peak RSS {} MiB for a {} MiB body", peak >> 20, SIZE >> 20);
    assert!(server.0.wait().expect("waiting").success());
    assert_eq!(sha256_file(&c.volume("large")), sha256_file(&image));
}

/// The upload server refuses an image larger than its volume as soon as it read the header,
/// while the body is still streaming: its 400 reaches the client through the proxy.
#[test]
fn an_early_refusal_of_the_upload_server_passes_through_mid_body() {
    let c = cluster();
    let (qcow2, _) = qcow2_and_reference(c.dir.path());
    let (_server, upstream) = c.upload_server("small", "4M");
    let (_proxy, proxy) = c.proxy(&upstream, &[]);
    let token = c.token("small", UploadContent::Kubevirt);

    let path = qcow2.display().to_string();
    let (status, text) = c.curl(&format!("{proxy}/v1beta1/upload"), &["-H", &bearer(&token), "-T", &path]);

    assert_eq!(status, 400, "{text}");
    assert!(text.contains("exceeds the limit"), "{text}");
    assert!(!text.contains("error in upload-proxy"), "{text}");
    assert!(!c.volume("small").exists());
}

// ---------------------------------------------------------------------------------------------
// Upload pods with certificates from the controller's CA (`controller::kube::certs`), as in a
// cluster: the proxy trusts only the CA bundle the controller publishes.

/// A CA made by the controller's module, its bundle written to `<prefix>-ca.crt`.
fn controller_ca(c: &Cluster, prefix: &str) -> (CertificateAuthority, PathBuf) {
    let ca = CertificateAuthority::generate(now(), None).expect("a CA");
    let bundle = c.path(&format!("{prefix}-ca.crt"));
    std::fs::write(&bundle, ca.bundle_pem()).expect("writing the bundle");
    (ca, bundle)
}

/// A serving certificate from `ca` for `names`, written to `<prefix>.crt` / `<prefix>.key`.
fn serving(c: &Cluster, ca: &CertificateAuthority, prefix: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let leaf = ca.issue(&names, now()).expect("a serving certificate");
    let (cert, key) = (c.path(&format!("{prefix}.crt")), c.path(&format!("{prefix}.key")));
    std::fs::write(&cert, &leaf.cert_pem).expect("writing the certificate");
    std::fs::write(&key, &leaf.key_pem).expect("writing the key");
    (cert, key)
}

fn now() -> i64 {
    i64::try_from(unix_now()).expect("time")
}

#[test]
fn a_qcow2_uploaded_to_a_pod_with_a_controller_issued_certificate_matches_qemu_img() {
    let c = cluster();
    let (qcow2, reference) = qcow2_and_reference(c.dir.path());
    let (ca, bundle) = controller_ca(&c, "controller");
    // The address the proxy dials is the certificate's name (in a cluster: the Service's).
    let (cert, key) = serving(&c, &ca, "pod", &["127.0.0.1"]);
    let (mut server, upstream) = c.upload_server_with("disk", "64M", &cert, &key);
    assert!(upstream.starts_with("https://127.0.0.1:"), "{upstream}");
    let (_proxy, proxy) = c.proxy_with_ca(&upstream, &bundle, &[]);
    let token = c.token("disk", UploadContent::Kubevirt);

    let data = format!("@{}", qcow2.display());
    let (status, body) = c.curl(
        &format!("{proxy}/v1beta1/upload"),
        &["-H", &bearer(&token), "-H", "Content-Type: application/octet-stream", "--data-binary", &data],
    );

    assert_eq!(status, 200, "{body}");
    assert!(server.0.wait().expect("waiting for upload-server").success());
    assert_eq!(sha256_file(&c.volume("disk")), reference);
}

#[test]
fn upload_pod_certificates_of_another_ca_or_name_are_refused_naming_tls_and_nothing_is_written() {
    let c = cluster();
    let (ours, bundle) = controller_ca(&c, "ours");
    let (theirs, _) = controller_ca(&c, "theirs");
    let (foreign_cert, foreign_key) = serving(&c, &theirs, "foreign", &["127.0.0.1"]);
    // Ours, but for a Service name: the proxy dials 127.0.0.1.
    let (named_cert, named_key) = serving(&c, &ours, "named", &["cdi-upload-disk.tenant.svc"]);
    for (cert, key, expect) in
        [(&foreign_cert, &foreign_key, "UnknownIssuer"), (&named_cert, &named_key, "not valid for name")]
    {
        let (_server, upstream) = c.upload_server_with("disk", "64M", cert, key);
        let (_proxy, proxy) = c.proxy_with_ca(&upstream, &bundle, &["--upstream-wait-secs", "2"]);
        let token = c.token("disk", UploadContent::Kubevirt);

        let (status, text) =
            c.curl(&format!("{proxy}/v1beta1/upload"), &["-H", &bearer(&token), "--data-binary", "x"]);

        assert_eq!(status, 503, "{text}");
        assert!(text.starts_with("error in upload-proxy: "), "{text}");
        assert!(text.contains("certificate") && text.contains(expect), "{expect}: {text}");
        assert!(!c.volume("disk").exists(), "nothing may be written");
    }
}

#[test]
fn the_proxy_trusts_a_renewed_ca_once_its_bundle_file_changes() {
    let c = cluster();
    let (_old, bundle) = controller_ca(&c, "old");
    let (renewed, renewed_bundle) = controller_ca(&c, "renewed");
    let (cert, key) = serving(&c, &renewed, "pod", &["127.0.0.1"]);
    let (mut server, upstream) = c.upload_server_with("disk", "64M", &cert, &key);
    let extra = ["--upstream-wait-secs", "1", "--upstream-ca-reload-secs", "1"];
    let (_proxy, proxy) = c.proxy_with_ca(&upstream, &bundle, &extra);
    let token = c.token("disk", UploadContent::Kubevirt);
    let probe =
        |c: &Cluster| c.curl(&format!("{proxy}/v1beta1/upload-async"), &["-I", "-H", &bearer(&token)]).0;
    assert_eq!(probe(&c), 503, "the old bundle does not know the pod's CA");

    // What the kubelet does to the mounted ConfigMap after the controller renewed its CA.
    std::fs::copy(&renewed_bundle, &bundle).expect("replacing the bundle");
    let deadline = Instant::now() + Duration::from_secs(60);
    while probe(&c) != 200 {
        assert!(Instant::now() < deadline, "the proxy never took the renewed bundle");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (qcow2, reference) = qcow2_and_reference(c.dir.path());
    let data = format!("@{}", qcow2.display());
    let (status, body) =
        c.curl(&format!("{proxy}/v1beta1/upload"), &["-H", &bearer(&token), "--data-binary", &data]);

    assert_eq!(status, 200, "{body}");
    assert!(server.0.wait().expect("waiting for upload-server").success());
    assert_eq!(sha256_file(&c.volume("disk")), reference);
}
