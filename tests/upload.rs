//! The upload server end to end: real `diskplane worker upload-server` processes on 127.0.0.1,
//! `curl` (raw body and multipart, with and without token) and our own `diskplane upload
//! --upload-url --token` as clients, raw std::net clients for broken bodies, and
//! `qemu-img convert -O raw` as the oracle for every image.
//!
//! Needs qemu-img, curl, gzip and openssl (see `.ci/packages.txt`).

#[allow(dead_code)]
#[path = "peers/common.rs"]
mod common;
use common::sha256_file;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Images, made once per target dir and shared by all tests.

/// Virtual size of the test disk.
const DISK_SIZE: u64 = 24 << 20;

/// Size of every test volume: room for the disk, not for twice the disk.
const VOLUME_SIZE: &str = "32M";

fn images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::made_once("upload-images-v1", make_images))
}

/// raw.img (random data, text and zero runs), img.qcow2, img.qcow2 compressed, raw.img.gz,
/// a qcow2 with a backing file, a raw image larger than a volume, and each one's reference
/// conversion `*.ref` by qemu-img.
fn make_images(dir: &Path) {
    let raw = dir.join("raw.img");
    let file = std::fs::File::create(&raw).expect("creating raw.img");
    file.set_len(DISK_SIZE).expect("sizing raw.img");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
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
    file.write_all_at(&random(3 << 20), 1 << 20).expect("data");
    file.write_all_at(&b"diskplane upload test ".repeat(40_000), 9 << 20).expect("text");
    file.write_all_at(&random(1 << 20), DISK_SIZE - (1 << 20)).expect("tail");
    drop(file);
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", "raw.img", "img.qcow2"], dir);
    qemu_img(&["convert", "-c", "-f", "raw", "-O", "qcow2", "raw.img", "compressed.qcow2"], dir);
    let gz = Command::new("gzip").args(["-k", "-1", "raw.img"]).current_dir(dir).status().expect("gzip");
    assert!(gz.success());
    qemu_img(&["create", "-f", "qcow2", "-b", "raw.img", "-F", "raw", "backed.qcow2"], dir);
    let big = std::fs::File::create(dir.join("big.img")).expect("big.img");
    big.write_all_at(b"too big", 0).expect("big");
    big.set_len(48 << 20).expect("sizing big.img");
    for name in ["raw.img", "img.qcow2", "compressed.qcow2"] {
        qemu_img(&["convert", "-O", "raw", name, &format!("{name}.ref")], dir);
    }
    std::fs::write(dir.join("done"), "").expect("done marker");
}

/// Runs qemu-img in `dir`, which must succeed; returns what it printed.
fn qemu_img(args: &[&str], dir: &Path) -> String {
    let out = Command::new("qemu-img").args(args).current_dir(dir).output().expect("running qemu-img");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "qemu-img {args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn image(name: &str) -> PathBuf {
    images().join(name)
}

// ---------------------------------------------------------------------------------------------
// The server process and the clients.

fn diskplane() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diskplane"))
}

/// A `diskplane worker upload-server` for `default/disk` writing `<dir>/disk.img`.
struct Server {
    child: Child,
    dir: tempfile::TempDir,
    base: String,
}

impl Server {
    fn start() -> Self {
        Self::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Self {
        Self::launch(VOLUME_SIZE, extra)
    }

    /// A server whose volume takes `size` (`K`, `M`, `G` or `T` suffix, as the worker takes it).
    fn start_sized(size: &str) -> Self {
        Self::launch(size, &[])
    }

    fn launch(size: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("key"), b"a test key of thirty-two bytes!!").expect("key");
        let mut child = diskplane()
            .args(["worker", "upload-server", "--name", "disk", "--size", size, "--listen", "127.0.0.1:0"])
            .arg("--volume")
            .arg(dir.path().join("disk.img"))
            .arg("--token-key")
            .arg(dir.path().join("key"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the upload server");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("listening line");
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected: {line:?}"))
            .to_owned();
        Self { child, dir, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The server's peak resident memory so far (VmHWM), in bytes.
    fn peak_rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc status");
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
        let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM value");
        kib << 10
    }

    fn port(&self) -> u16 {
        self.base.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")
    }

    fn volume(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    /// A token from `diskplane worker upload-token` with this server's key.
    fn token(&self, name: &str, ttl: &str) -> String {
        let out = diskplane()
            .args(["worker", "upload-token", "--name", name, "--ttl", ttl, "--token-key"])
            .arg(self.dir.path().join("key"))
            .output()
            .expect("upload-token");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
    }

    fn good_token(&self) -> String {
        self.token("disk", "5m")
    }

    /// Files in the volume's directory other than the key: the volume and any leftovers.
    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("listing")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "key")
            .collect();
        names.sort();
        names
    }

    /// Waits until a failed upload was cleaned up: the server takes uploads again (503 is the
    /// only answer while the previous one is still being torn down).
    fn wait_until_idle(&self, token: &str) {
        for _ in 0..600 {
            let (status, _) = curl(&[
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-X",
                "POST",
                "--data-binary",
                "",
                &self.url("/v1beta1/upload"),
            ]);
            // An empty body is an empty raw image: 400 (too small to be anything) or 200.
            if status != 503 {
                assert_ne!(status, 200, "an empty body must not be taken as an upload");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server stayed busy");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

fn curl_upload(server: &Server, token: Option<&str>, file: &Path, route: &str) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let data = format!("@{}", file.display());
    let mut args: Vec<&str> = Vec::new();
    if let Some(auth) = &auth {
        args.extend(["-H", auth]);
    }
    args.extend(["-H", "Content-Type: application/octet-stream", "--data-binary", &data]);
    let url = server.url(route);
    args.push(&url);
    curl(&args)
}

/// `diskplane upload disk --upload-url URL --token T --image-path FILE [extra]`.
fn our_upload(url: &str, token: &str, file: &Path, extra: &[&str]) -> Output {
    diskplane()
        .args(["upload", "disk", "--retries", "2", "--upload-url", url, "--token", token, "--image-path"])
        .arg(file)
        .args(extra)
        .output()
        .expect("diskplane upload")
}

fn assert_volume_is(server: &Server, reference: &str) {
    assert_eq!(
        sha256_file(&server.volume()),
        sha256_file(&image(reference)),
        "volume differs from {reference}"
    );
    assert_eq!(server.files(), vec!["disk.img".to_owned()], "leftover files");
}

fn assert_nothing_kept(server: &Server) {
    assert!(server.files().is_empty(), "files left behind: {:?}", server.files());
}

// ---------------------------------------------------------------------------------------------
// Formats and routes.

#[test]
fn curl_raw_body_uploads_of_raw_qcow2_and_gzip_match_qemu_img() {
    for (file, reference) in [
        ("raw.img", "raw.img.ref"),
        ("img.qcow2", "img.qcow2.ref"),
        ("compressed.qcow2", "compressed.qcow2.ref"),
        ("raw.img.gz", "raw.img.ref"),
    ] {
        let server = Server::start();
        let (status, body) =
            curl_upload(&server, Some(&server.good_token()), &image(file), "/v1beta1/upload");
        assert_eq!(status, 200, "{file}: {body}");
        assert_volume_is(&server, reference);
    }
}

#[test]
fn multipart_form_upload_matches_qemu_img() {
    let server = Server::start();
    let auth = format!("Authorization: Bearer {}", server.good_token());
    let note = "note=ignored part".to_owned();
    let file = format!("file=@{}", image("img.qcow2").display());
    let (status, body) = curl(&["-H", &auth, "-F", &note, "-F", &file, &server.url("/v1beta1/upload-form")]);
    assert_eq!(status, 200, "{body}");
    assert_volume_is(&server, "img.qcow2.ref");
}

#[test]
fn multipart_without_a_file_part_is_refused() {
    let server = Server::start();
    let auth = format!("Authorization: Bearer {}", server.good_token());
    let (status, body) = curl(&["-H", &auth, "-F", "other=@/dev/null", &server.url("/v1alpha1/upload-form")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no part named \"file\""), "{body}");
    assert_nothing_kept(&server);
}

#[test]
fn async_upload_answers_then_finishes_and_virtctl_probe_works() {
    let server = Server::start();
    let token = server.good_token();
    let (probe, _) =
        curl(&["-I", "-H", &format!("Authorization: Bearer {token}"), &server.url("/v1beta1/upload-async")]);
    assert_eq!(probe, 200);

    let (status, body) = curl_upload(&server, Some(&token), &image("img.qcow2"), "/v1alpha1/upload-async");
    assert_eq!(status, 200, "{body}");

    // Processing goes on after the answer: 503 while busy, 409 once done.
    let mut last = 0;
    for _ in 0..600 {
        (last, _) = curl_upload(&server, Some(&token), &image("raw.img"), "/v1beta1/upload");
        if last != 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(last, 409);
    assert_volume_is(&server, "img.qcow2.ref");
}

#[test]
fn other_methods_archive_health_and_ca() {
    let server = Server::start();
    assert_eq!(curl(&[&server.url("/v1beta1/upload")]).0, 404, "GET on an upload route");
    assert_eq!(curl(&["-I", &server.url("/v1beta1/upload")]).0, 404, "HEAD on the sync route");
    let auth = format!("Authorization: Bearer {}", server.good_token());
    let (status, body) =
        curl(&["-H", &auth, "-X", "POST", "--data-binary", "x", &server.url("/v1beta1/upload-archive")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("takes a disk image (contentType: kubevirt), not an archive"), "{body}");
    assert_nothing_kept(&server);
    assert_eq!(curl(&[&server.url("/healthz")]), (200, "OK".to_owned()));
    assert_eq!(curl(&[&server.url("/v1beta1/ca.crt")]).0, 404, "no CA without TLS");
}

// ---------------------------------------------------------------------------------------------
// Tokens.

#[test]
fn missing_wrong_expired_and_foreign_tokens_get_401() {
    let server = Server::start();
    let other_key = tempfile::NamedTempFile::new().expect("key");
    std::fs::write(other_key.path(), b"another key, also 32 bytes long").expect("key");
    let out = diskplane()
        .args(["worker", "upload-token", "--name", "disk", "--token-key"])
        .arg(other_key.path())
        .output()
        .expect("token");
    let wrong_key = String::from_utf8(out.stdout).expect("utf-8").trim().to_owned();

    let cases = [
        (None, "no upload token"),
        (Some("garbage".to_owned()), "malformed upload token"),
        (Some(wrong_key), "signature is invalid"),
        (Some(server.token("disk", "0")), "expired"),
        (Some(server.token("other", "5m")), "upload token is for default/other, not for default/disk"),
    ];
    for (token, message) in cases {
        let (status, body) = curl_upload(&server, token.as_deref(), &image("raw.img"), "/v1beta1/upload");
        assert_eq!(status, 401, "{message}: {body}");
        assert!(body.contains(message), "expected {message:?} in {body:?}");
    }
    assert_nothing_kept(&server);
    // The refusals left the volume free.
    assert_eq!(curl_upload(&server, Some(&server.good_token()), &image("raw.img"), "/v1beta1/upload").0, 200);
}

// ---------------------------------------------------------------------------------------------
// Bad input and broken transfers.

#[test]
fn a_second_upload_after_success_gets_409() {
    let server = Server::start();
    let token = server.good_token();
    assert_eq!(curl_upload(&server, Some(&token), &image("raw.img"), "/v1beta1/upload").0, 200);

    let (status, body) = curl_upload(&server, Some(&token), &image("img.qcow2"), "/v1beta1/upload");

    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already been uploaded"), "{body}");
    assert_volume_is(&server, "raw.img.ref");
}

#[test]
fn a_body_larger_than_the_volume_gets_400_and_nothing_is_kept() {
    let server = Server::start();
    let (status, body) =
        curl_upload(&server, Some(&server.good_token()), &image("big.img"), "/v1beta1/upload");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("capacity"), "{body}");
    assert_nothing_kept(&server);
}

#[test]
fn a_qcow2_larger_than_the_volume_is_refused_from_its_header() {
    let dir = tempfile::tempdir().expect("dir");
    qemu_img(&["create", "-f", "qcow2", "huge.qcow2", "1T"], dir.path());
    let server = Server::start();
    let (status, body) =
        curl_upload(&server, Some(&server.good_token()), &dir.path().join("huge.qcow2"), "/v1beta1/upload");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("exceeds the limit"), "{body}");
    assert_nothing_kept(&server);
}

#[test]
fn a_qcow2_with_a_backing_file_gets_400_naming_it() {
    let server = Server::start();
    let (status, body) =
        curl_upload(&server, Some(&server.good_token()), &image("backed.qcow2"), "/v1beta1/upload");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("backing file"), "{body}");
    assert_nothing_kept(&server);
}

/// Sends the request line, headers and `sent` of `total` body bytes of `file`, and leaves the
/// connection open (dropping the stream closes it half way).
fn partial_upload(server: &Server, token: &str, file: &Path, sent: usize) -> TcpStream {
    let data = std::fs::read(file).expect("reading the image");
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
    let head = format!(
        "POST /v1beta1/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    stream.write_all(head.as_bytes()).expect("headers");
    stream.write_all(&data[..sent]).expect("half the body");
    stream.flush().expect("flush");
    stream
}

#[test]
fn a_truncated_body_keeps_nothing_and_the_upload_can_be_retried() {
    for file in ["raw.img", "img.qcow2"] {
        let server = Server::start();
        let token = server.good_token();
        let stream = partial_upload(&server, &token, &image(file), 5 << 20);
        stream.shutdown(std::net::Shutdown::Both).expect("closing half way");
        drop(stream);

        server.wait_until_idle(&token);
        assert_nothing_kept(&server);

        let (status, body) = curl_upload(&server, Some(&token), &image(file), "/v1beta1/upload");
        assert_eq!(status, 200, "{file} retry: {body}");
        assert_volume_is(&server, &format!("{file}.ref"));
    }
}

/// Waits until the server answers 503 (an upload holds the volume); returns the message.
fn wait_until_busy(server: &Server, token: &str) -> String {
    let mut status = 0;
    let mut body = String::new();
    for _ in 0..600 {
        (status, body) = curl_upload(server, Some(token), &image("raw.img"), "/v1beta1/upload");
        if status == 503 {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("never busy: last answer {status} {body}");
}

#[test]
fn a_concurrent_upload_to_the_same_volume_gets_503() {
    let server = Server::start();
    let token = server.good_token();
    // The first upload holds the volume as soon as its headers were read.
    let first = partial_upload(&server, &token, &image("raw.img"), 1 << 20);

    let body = wait_until_busy(&server, &token);

    assert!(body.contains("already in progress"), "{body}");

    drop(first);
    server.wait_until_idle(&token);
    assert_eq!(curl_upload(&server, Some(&token), &image("raw.img"), "/v1beta1/upload").0, 200);
    assert_volume_is(&server, "raw.img.ref");
}

#[test]
fn checksum_mismatch_gets_400_and_a_matching_one_succeeds() {
    let server = Server::start();
    let token = server.good_token();
    let auth = format!("Authorization: Bearer {token}");
    let data = format!("@{}", image("img.qcow2").display());
    let wrong = format!("X-Checksum: sha256:{}", "0".repeat(64));

    let (status, body) =
        curl(&["-H", &auth, "-H", &wrong, "--data-binary", &data, &server.url("/v1beta1/upload")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("checksum mismatch"), "{body}");
    assert_nothing_kept(&server);

    let right = server.url(&format!("/v1beta1/upload?checksum=sha256:{}", sha256_file(&image("img.qcow2"))));
    let (status, body) = curl(&["-H", &auth, "--data-binary", &data, &right]);
    assert_eq!(status, 200, "{body}");
    assert_volume_is(&server, "img.qcow2.ref");
}

// ---------------------------------------------------------------------------------------------
// Our client.

#[test]
fn our_client_uploads_with_a_checksum_and_reports_the_servers_refusal() {
    let server = Server::start();
    let token = server.good_token();

    let out = our_upload(&server.base, &token, &image("compressed.qcow2"), &["--checksum"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_volume_is(&server, "compressed.qcow2.ref");

    let out = our_upload(&server.base, &token, &image("raw.img"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("409") && stderr.contains("already been uploaded"), "{stderr}");
}

#[test]
fn our_client_retries_while_the_volume_is_busy() {
    let server = Server::start();
    let token = server.good_token();
    let holder = partial_upload(&server, &token, &image("raw.img"), 1 << 20);
    wait_until_busy(&server, &token);
    let mut client = diskplane()
        .args([
            "upload",
            "disk",
            "--retries",
            "20",
            "--upload-url",
            &server.base,
            "--token",
            &token,
            "--image-path",
        ])
        .arg(image("img.qcow2"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("diskplane upload");
    let mut stderr = BufReader::new(client.stderr.take().expect("stderr"));
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stderr.read_line(&mut line).expect("stderr") > 0, "the client ended without retrying");
        if line.contains("retrying") {
            break;
        }
    }
    assert!(line.contains("503") && line.contains("already in progress"), "{line}");

    drop(holder);

    let status = client.wait().expect("client");
    assert!(status.success());
    assert_volume_is(&server, "img.qcow2.ref");
}

#[test]
fn our_client_exits_non_zero_with_the_message_for_a_hostile_image() {
    let server = Server::start();
    let out = our_upload(&server.url("/v1beta1/upload"), &server.good_token(), &image("backed.qcow2"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("400") && stderr.contains("backing file"), "{stderr}");
    assert_nothing_kept(&server);
}

// ---------------------------------------------------------------------------------------------
// TLS.

/// A test CA and a server certificate for 127.0.0.1 signed by it.
fn pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    std::fs::write(
        d.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let steps: Vec<Vec<&str>> = vec![
        [
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=upload test CA"],
        ]
        .concat(),
        [&["req"][..], &ec, &["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=127.0.0.1"]].concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    ];
    for args in steps {
        let out = Command::new("openssl").args(&args).current_dir(d).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    dir
}

#[test]
fn tls_uploads_with_the_ca_from_curl_and_our_client() {
    let pki = pki();
    let path = |name: &str| pki.path().join(name).to_string_lossy().into_owned();
    let tls = ["--tls-cert", &path("leaf.pem"), "--tls-key", &path("leaf.key"), "--tls-ca", &path("ca.pem")];

    // curl: the CA is served to clients, and uploads work with it.
    let server = Server::start_with(&tls);
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let (status, ca) = curl(&["--cacert", &path("ca.pem"), &server.url("/v1beta1/ca.crt")]);
    assert_eq!(status, 200);
    assert_eq!(ca.trim(), std::fs::read_to_string(path("ca.pem")).expect("ca").trim());
    let auth = format!("Authorization: Bearer {}", server.good_token());
    let data = format!("@{}", image("img.qcow2").display());
    let (status, body) = curl(&[
        "--cacert",
        &path("ca.pem"),
        "-H",
        &auth,
        "--data-binary",
        &data,
        &server.url("/v1beta1/upload"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert_volume_is(&server, "img.qcow2.ref");

    // Our client: refused without the CA, fine with it.
    let server = Server::start_with(&tls);
    let token = server.good_token();
    let out = our_upload(&server.base, &token, &image("raw.img.gz"), &[]);
    assert!(!out.status.success(), "an untrusted server must be refused");
    assert_nothing_kept(&server);
    let out = our_upload(&server.base, &token, &image("raw.img.gz"), &["--ca-cert", &path("ca.pem")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_volume_is(&server, "raw.img.ref");
}

#[test]
fn form_async_upload_finishes_and_exit_on_success_stops_the_server() {
    let mut server = Server::start_with(&["--exit-on-success"]);
    let auth = format!("Authorization: Bearer {}", server.good_token());
    let file = format!("file=@{}", image("raw.img.gz").display());

    let (status, body) = curl(&["-H", &auth, "-F", &file, &server.url("/v1beta1/upload-form-async")]);

    assert_eq!(status, 200, "{body}");
    // Like CDI's upload Pod, the server exits 0 once the upload is complete.
    let exit = server.child.wait().expect("waiting for the server");
    assert!(exit.success(), "{exit:?}");
    assert_volume_is(&server, "raw.img.ref");
}

// ---------------------------------------------------------------------------------------------
// Archive volumes (`contentType: archive`): the upload server of the `uploader` crate in this
// process, over a directory volume, with curl as the client and GNU tar making the archives.

/// An upload server for `default/disk` taking archives into `<dir>/fs`.
struct ArchiveServer {
    dir: tempfile::TempDir,
    base: String,
    token: String,
    backend: std::sync::Arc<uploader::backend::SingleVolumeBackend>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ArchiveServer {
    fn start() -> Self {
        use uploader::backend::{Content, SingleVolumeBackend, UploadTarget};
        use uploader::server::{DEFAULT_IDLE_TIMEOUT, ServerConfig};
        use uploader::token::{Claims, DEFAULT_TTL, TokenKey, unix_now};

        let dir = tempfile::tempdir().expect("temp dir");
        let target = UploadTarget {
            path: dir.path().join("fs"),
            max_size: 32 << 20,
            scratch_dir: dir.path().to_owned(),
            create: storage::CreateOptions::default(),
        };
        let backend = std::sync::Arc::new(
            SingleVolumeBackend::new("default", "disk", target).with_content(Content::Archive),
        );
        let key = TokenKey::from_bytes(b"a test key of thirty-two bytes!!".to_vec()).expect("key");
        let token = key.issue(&Claims::upload("default", "disk", unix_now(), DEFAULT_TTL));
        let config =
            ServerConfig { key, backend: backend.clone(), ca_pem: None, idle_timeout: DEFAULT_IDLE_TIMEOUT };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let addr = "127.0.0.1:0".parse().expect("address");
            let on_ready = move |a| ready_tx.send(a).expect("ready");
            let shutdown = async move {
                let _ = stopped.await;
            };
            uploader::server::serve_blocking(addr, None, config, on_ready, shutdown).expect("serving");
        });
        let addr = ready_rx.recv().expect("the server's address");
        Self { dir, base: format!("http://{addr}"), token, backend, stop: Some(stop), thread: Some(thread) }
    }

    fn upload(&self, file: &Path, route: &str) -> (u16, String) {
        let auth = format!("Authorization: Bearer {}", self.token);
        let data = format!("@{}", file.display());
        curl(&["-H", &auth, "--data-binary", &data, &format!("{}{route}", self.base)])
    }

    fn fs(&self) -> PathBuf {
        self.dir.path().join("fs")
    }

    /// Everything in the volume's parent directory: `fs` once extracted, and any leftovers.
    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("listing")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for ArchiveServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs GNU tar in `dir`.
fn tar(dir: &Path, args: &[&str]) {
    let out = Command::new("tar").args(args).current_dir(dir).output().expect("running tar");
    assert!(out.status.success(), "tar {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A tree `src/` with a nested file, an empty file, a relative symlink, and 3 MiB of data.
fn make_tree(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("etc/conf.d")).expect("dirs");
    std::fs::write(src.join("etc/hostname"), b"diskplane-archive\n").expect("file");
    std::fs::write(src.join("etc/conf.d/empty"), b"").expect("file");
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(src.join("data.bin"), &big).expect("file");
    std::os::unix::fs::symlink("etc/hostname", src.join("hostname")).expect("symlink");
    src
}

fn assert_tree_extracted(server: &ArchiveServer, src: &Path) {
    let fs = server.fs();
    for file in ["etc/hostname", "etc/conf.d/empty", "data.bin"] {
        assert_eq!(
            std::fs::read(fs.join(file)).expect(file),
            std::fs::read(src.join(file)).expect(file),
            "{file} differs"
        );
    }
    assert_eq!(std::fs::read_link(fs.join("hostname")).expect("symlink"), Path::new("etc/hostname"));
    assert_eq!(server.entries(), vec!["fs".to_owned()], "leftovers beside the volume");
}

#[test]
fn curl_archive_uploads_plain_and_gzip_are_extracted_with_their_contents() {
    let work = tempfile::tempdir().expect("temp dir");
    let src = make_tree(work.path());
    tar(&src, &["-cf", "../tree.tar", "."]);
    tar(&src, &["-czf", "../tree.tar.gz", "."]);

    for (archive, route) in
        [("tree.tar", "/v1beta1/upload-archive"), ("tree.tar.gz", "/v1alpha1/upload-archive")]
    {
        let server = ArchiveServer::start();
        let (status, body) = server.upload(&work.path().join(archive), route);
        assert_eq!(status, 200, "{archive}: {body}");
        assert_tree_extracted(&server, &src);
        assert_eq!(server.backend.state(), uploader::backend::VolumeState::Done);

        // One upload per volume, as for disks.
        let (status, body) = server.upload(&work.path().join(archive), route);
        assert_eq!(status, 409, "{body}");
    }
}

#[test]
fn an_archive_volume_extracts_what_the_plain_upload_route_sends() {
    // CDI's upload proxy sends every upload to an archive volume to /upload-archive.
    let work = tempfile::tempdir().expect("temp dir");
    let src = make_tree(work.path());
    tar(&src, &["-cJf", "../tree.tar.xz", "."]);

    let server = ArchiveServer::start();
    let (status, body) = server.upload(&work.path().join("tree.tar.xz"), "/v1beta1/upload");
    assert_eq!(status, 200, "{body}");
    assert_tree_extracted(&server, &src);
}

#[test]
fn an_archive_with_a_parent_dir_entry_gets_400_naming_it_and_nothing_is_written() {
    let work = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(work.path().join("inside")).expect("dir");
    std::fs::write(work.path().join("inside/ok"), b"fine").expect("file");
    std::fs::write(work.path().join("x"), b"escaped").expect("file");
    // -P keeps the member name `../x` as given (GNU tar strips it otherwise).
    tar(&work.path().join("inside"), &["-cPf", "../evil.tar", "ok", "../x"]);

    let server = ArchiveServer::start();
    let (status, body) = server.upload(&work.path().join("evil.tar"), "/v1beta1/upload-archive");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("archive entry \"../x\" leaves the target directory"), "{body}");
    assert!(server.entries().is_empty(), "written: {:?}", server.entries());
    assert!(!server.dir.path().join("x").exists(), "written outside the volume");
    assert_eq!(server.backend.state(), uploader::backend::VolumeState::Ready, "not done");
}

#[test]
fn a_disk_image_sent_to_an_archive_volume_gets_400() {
    let server = ArchiveServer::start();
    let (status, body) = server.upload(&image("img.qcow2"), "/v1beta1/upload-archive");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("needs a tar archive, but the source holds qcow2"), "{body}");
    assert!(server.entries().is_empty(), "written: {:?}", server.entries());
}

// ---------------------------------------------------------------------------------------------
// A qcow2 converted while its body arrives (raw body with Content-Length), and the old path.

/// reversed.qcow2: data clusters written by qemu-io in descending guest offsets, so the file
/// holds the end of the disk first and guest offset 0 last (the converter reading in guest
/// order waits for nearly the whole body); and its reference conversion by qemu-img.
fn reversed_qcow2() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        common::made_once("upload-images-reversed-v1", |dir| {
            qemu_img(&["create", "-q", "-f", "qcow2", "reversed.qcow2", "24M"], dir);
            let mut io = Command::new("qemu-io");
            io.current_dir(dir).args(["-f", "qcow2"]);
            for mib in (0..24u64).rev() {
                // 256 KiB of a pattern at each MiB, plus a partial cluster just after it.
                io.arg("-c").arg(format!("write -P {} {}M 256k", 0x20 + mib, mib));
                io.arg("-c").arg(format!("write -P {} {} 5k", 0x80 + mib, (mib << 20) + (300 << 10)));
            }
            let out = io.arg("reversed.qcow2").output().expect("running qemu-io");
            assert!(out.status.success(), "qemu-io: {}", String::from_utf8_lossy(&out.stderr));
            qemu_img(&["convert", "-O", "raw", "reversed.qcow2", "reversed.qcow2.ref"], dir);
            std::fs::write(dir.join("done"), "").expect("done marker");
        })
    })
}

fn assert_volume_matches(server: &Server, reference: &Path) {
    assert_eq!(sha256_file(&server.volume()), sha256_file(reference), "volume differs from {reference:?}");
    assert_eq!(server.files(), vec!["disk.img".to_owned()], "leftover files");
}

#[test]
fn a_qcow2_with_clusters_in_reverse_guest_order_uploads_like_qemu_img_converts_it() {
    let dir = reversed_qcow2();
    // The premise: guest offset 0 is stored after guest offset 23 MiB.
    let map = Command::new("qemu-img")
        .args(["map", "--output=json", "reversed.qcow2"])
        .current_dir(dir)
        .output()
        .expect("qemu-img map");
    let map = String::from_utf8_lossy(&map.stdout);
    let host_of = |guest: u64| -> u64 {
        let key = format!("\"start\": {guest},");
        let line = map.lines().find(|l| l.contains(&key)).unwrap_or_else(|| panic!("{guest} in {map}"));
        let (_, rest) = line.split_once("\"offset\": ").expect("a data extent");
        rest.trim_end_matches(['}', ',', ' ', ']']).parse().expect("host offset")
    };
    assert!(host_of(0) > host_of(23 << 20), "the image is not in reverse order:\n{map}");

    let server = Server::start();
    let (status, body) =
        curl_upload(&server, Some(&server.good_token()), &dir.join("reversed.qcow2"), "/v1beta1/upload");
    assert_eq!(status, 200, "{body}");
    assert_volume_matches(&server, &dir.join("reversed.qcow2.ref"));
}

/// The qcow2 layouts of [`layout_qcow2s`]: file name and `qemu-img convert` options.
const LAYOUTS: [(&str, &[&str]); 5] = [
    ("clusters-512.qcow2", &["-o", "cluster_size=512"]),
    ("clusters-2m.qcow2", &["-o", "cluster_size=2M"]),
    ("extended-l2.qcow2", &["-o", "extended_l2=on,cluster_size=128k"]),
    ("compressed-layout.qcow2", &["-c"]),
    ("prealloc-metadata.qcow2", &["-o", "preallocation=metadata"]),
];

/// The content of reversed.qcow2 written by `qemu-img convert` in the layouts that take
/// different paths while streaming (plain data routed to the volume as it arrives, the rest
/// converted from the scratch file): 512-byte and 2 MiB clusters, extended L2 entries with
/// subclusters, compressed clusters, and preallocated metadata (every L2 table before any
/// data); each with its reference conversion by qemu-img.
fn layout_qcow2s() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        common::made_once("upload-images-layouts-v1", |dir| {
            let raw = reversed_qcow2().join("reversed.qcow2.ref");
            let raw = raw.to_str().expect("a UTF-8 path");
            for (name, opts) in LAYOUTS {
                let mut args = vec!["convert", "-q", "-f", "raw", "-O", "qcow2"];
                args.extend_from_slice(opts);
                args.extend([raw, name]);
                qemu_img(&args, dir);
                qemu_img(&["convert", "-O", "raw", name, &format!("{name}.ref")], dir);
            }
            std::fs::write(dir.join("done"), "").expect("done marker");
        })
    })
}

#[test]
fn qcow2_layouts_streamed_into_the_volume_match_qemu_img() {
    let dir = layout_qcow2s();
    for (name, _) in LAYOUTS {
        let server = Server::start();
        let (status, body) =
            curl_upload(&server, Some(&server.good_token()), &dir.join(name), "/v1beta1/upload");
        assert_eq!(status, 200, "{name}: {body}");
        assert_volume_matches(&server, &dir.join(format!("{name}.ref")));
    }
}

/// A sparse raw disk of 24 MiB: data in 16 places (whole MiB, a partial cluster, a byte),
/// holes elsewhere, written by the file system as such.
fn sparse_raw(dir: &Path) -> PathBuf {
    let path = dir.join("sparse.raw");
    let file = std::fs::File::create(&path).expect("sparse.raw");
    file.set_len(24 << 20).expect("size");
    for i in 0..16u64 {
        let offset = i * (3 << 19) + i * 4096;
        let len = if i % 5 == 0 { 1 << 20 } else { 12_345 };
        std::os::unix::fs::FileExt::write_all_at(&file, &vec![0x30 + i as u8; len], offset).expect("write");
    }
    path
}

#[test]
fn our_client_sends_a_sparse_raw_image_as_a_qcow2_of_its_data_and_the_volume_is_the_file() {
    let dir = tempfile::tempdir().expect("dir");
    let raw = sparse_raw(dir.path());
    for (extra, sparse) in [(&[][..], true), (&["--no-sparse"][..], false)] {
        let server = Server::start();

        let out = our_upload(&server.base, &server.good_token(), &raw, extra);

        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{extra:?}: {stderr}");
        assert_eq!(stderr.contains("as a qcow2 of its data"), sparse, "{extra:?}: {stderr}");
        assert_volume_matches(&server, &raw);
    }
}

#[test]
fn the_qcow2_our_client_sends_passes_qemu_img_check_and_equals_the_raw_disk() {
    let dir = tempfile::tempdir().expect("dir");
    let raw_path = sparse_raw(dir.path());
    let raw = std::fs::File::open(&raw_path).expect("open");
    let mut extents = Vec::new();
    let mut at = 0;
    while let Some((start, len)) = storage::next_data(&raw, at).expect("SEEK_DATA") {
        extents.push((start, len));
        at = start + len;
    }
    assert!(extents.len() >= 16, "the file system keeps the holes: {extents:?}");
    let encoder = disk_formats::qcow2::encode::Encoder::new(24 << 20, &extents).expect("planned");
    let mut stream = std::fs::File::create(dir.path().join("sent.qcow2")).expect("create");

    encoder.write(&raw, &mut |chunk| std::io::Write::write_all(&mut stream, &chunk)).expect("encoded");

    let report = qemu_img(&["check", "-f", "qcow2", "sent.qcow2"], dir.path());
    assert!(report.contains("No errors were found on the image."), "{report}");
    let said = qemu_img(&["compare", "-f", "raw", "-F", "qcow2", "sparse.raw", "sent.qcow2"], dir.path());
    assert!(said.contains("Images are identical."), "{said}");
    assert!(encoder.stream_len() < 16 << 20, "only the data is sent: {} bytes", encoder.stream_len());
}

/// Large inputs for the memory test: a 1 GiB raw disk that is mostly holes (1 GiB on the wire
/// all the same) and a qcow2 holding 512 MiB of data, written in guest order by qemu-io (the
/// layout whose data is routed straight to the volume); each with its qemu-img conversion.
fn large_images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        common::made_once("upload-images-large-v1", |dir| {
            let raw = std::fs::File::create(dir.join("large.raw")).expect("large.raw");
            raw.set_len(1 << 30).expect("size");
            for mib in (0..1024u64).step_by(64) {
                std::os::unix::fs::FileExt::write_all_at(&raw, &vec![mib as u8 | 1; 1 << 20], mib << 20)
                    .expect("write");
            }
            qemu_img(&["create", "-q", "-f", "qcow2", "large.qcow2", "1G"], dir);
            let mut io = Command::new("qemu-io");
            io.current_dir(dir).args(["-f", "qcow2"]);
            for mib in (0..1024u64).step_by(8) {
                io.arg("-c").arg(format!("write -P {} {}M 4M", 0x10 + (mib / 8) % 200, mib));
            }
            let out = io.arg("large.qcow2").output().expect("running qemu-io");
            assert!(out.status.success(), "qemu-io: {}", String::from_utf8_lossy(&out.stderr));
            qemu_img(&["convert", "-O", "raw", "large.qcow2", "large.qcow2.ref"], dir);
            std::fs::write(dir.join("done"), "").expect("done marker");
        })
    })
}

/// Bytes of `path` in the page cache (util-linux `fincore`).
fn cached_bytes(path: &Path) -> u64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("running fincore");
    assert!(out.status.success(), "fincore: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().unwrap_or_else(|_| panic!("fincore printed {text:?}"))
}

#[test]
fn the_server_s_memory_and_page_cache_stay_bounded_for_a_large_raw_and_a_large_qcow2() {
    // The issue's bound for the upload server during an upload.
    const BOUND: u64 = 64 << 20;
    let dir = large_images();
    for (name, reference) in [("large.raw", "large.raw"), ("large.qcow2", "large.qcow2.ref")] {
        let server = Server::start_sized("1G");
        let auth = format!("Authorization: Bearer {}", server.good_token());
        let file = dir.join(name);
        let file = file.to_str().expect("a UTF-8 path");

        // -T streams the file (--data-binary would read all of it into curl's memory first).
        let (status, body) = curl(&["-H", &auth, "-T", file, &server.url("/v1beta1/upload")]);

        assert_eq!(status, 200, "{name}: {body}");
        let peak = server.peak_rss();
        assert!(peak < BOUND, "{name}: the server's peak RSS is {} MiB", peak >> 20);
        // The volume is written through a bounded page cache: of the qcow2's 512 MiB of data,
        // at most the writeback still in flight at the end stays cached.
        let cached = cached_bytes(&server.volume());
        assert!(
            cached <= storage::WRITEBACK_IN_FLIGHT_BYTES,
            "{name}: {} MiB of the volume stay in the page cache",
            cached >> 20
        );
        assert_volume_matches(&server, &dir.join(reference));
    }
}

#[test]
fn a_qcow2_body_cut_half_way_gets_400_naming_the_bytes_keeps_nothing_and_can_be_retried() {
    let file = reversed_qcow2().join("reversed.qcow2");
    let len = std::fs::metadata(&file).expect("size").len() as usize;
    let server = Server::start();
    let token = server.good_token();
    let sent = len / 2;
    let mut stream = partial_upload(&server, &token, &file, sent);
    stream.shutdown(std::net::Shutdown::Write).expect("closing half way");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(&format!("ended early after {sent} bytes")), "{answer}");
    drop(stream);

    server.wait_until_idle(&token);
    assert_nothing_kept(&server);
    let (status, body) = curl_upload(&server, Some(&token), &file, "/v1beta1/upload");
    assert_eq!(status, 200, "retry: {body}");
    assert_volume_matches(&server, &reversed_qcow2().join("reversed.qcow2.ref"));
}

#[test]
fn a_chunked_qcow2_body_without_a_length_is_converted_after_it_arrived() {
    for (dir, name) in [(images(), "img.qcow2"), (reversed_qcow2(), "reversed.qcow2")] {
        let server = Server::start();
        let auth = format!("Authorization: Bearer {}", server.good_token());
        let data = format!("@{}", dir.join(name).display());
        let (status, body) = curl(&[
            "-H",
            &auth,
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &data,
            &server.url("/v1beta1/upload"),
        ]);
        assert_eq!(status, 200, "{name}: {body}");
        assert_volume_matches(&server, &dir.join(format!("{name}.ref")));
    }
}
