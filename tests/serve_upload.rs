//! Uploads into DataVolumes of a real `diskplane serve` process: our `diskplane upload` CLI
//! and `curl` (raw body and multipart) as clients, UploadTokenRequests for tokens, a raw
//! std::net client for a body that stops half way, and `qemu-img convert -O raw` as the oracle.
//!
//! Needs qemu-img and curl (see `.ci/packages.txt`).

#[allow(dead_code)]
#[path = "peers/common.rs"]
mod common;
#[path = "peers/serve.rs"]
mod serve;

use common::sha256_file;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serve::Serve;

use uploader::token::{Claims, DEFAULT_TTL, TokenKey, unix_now};

/// Virtual size of the test disk = the size of every test volume, so the volume's bytes are
/// exactly qemu-img's conversion.
const DISK_SIZE: u64 = 64 << 20;
const VOLUME_SIZE: &str = "64Mi";

// ---------------------------------------------------------------------------------------------
// Images, made once per target dir.

fn images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::made_once("serve-upload-images-v1", make_images))
}

/// raw.img (random data, text, zero runs), img.qcow2, a qcow2 with a backing file, and the
/// reference conversion `img.qcow2.ref` by qemu-img.
fn make_images(dir: &Path) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(dir.join("raw.img")).expect("creating raw.img");
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
    file.write_all_at(&random(3 << 20), 1 << 20).expect("data");
    file.write_all_at(&b"diskplane serve upload ".repeat(50_000), 20 << 20).expect("text");
    file.write_all_at(&random(1 << 20), DISK_SIZE - (1 << 20)).expect("tail");
    drop(file);
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", "raw.img", "img.qcow2"], dir);
    qemu_img(&["convert", "-O", "raw", "img.qcow2", "img.qcow2.ref"], dir);
    qemu_img(&["create", "-f", "qcow2", "-b", "raw.img", "-F", "raw", "backed.qcow2"], dir);
    std::fs::write(dir.join("done"), "").expect("done marker");
}

fn qemu_img(args: &[&str], dir: &Path) {
    let out = Command::new("qemu-img").args(args).current_dir(dir).output().expect("running qemu-img");
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn image(name: &str) -> PathBuf {
    images().join(name)
}

// ---------------------------------------------------------------------------------------------
// The server and the clients.

fn start() -> (Serve, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = Serve::start(&dir.path().join("data"), &[]);
    (serve, dir)
}

/// A server whose token key is a file the test also holds.
fn start_with_key() -> (Serve, TokenKey, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("token.key");
    std::fs::write(&key_file, b"serve-upload-test-key-0123456789").expect("key file");
    let key = TokenKey::from_file(&key_file).expect("key");
    let key_arg = key_file.to_str().expect("utf-8 path").to_owned();
    let serve = Serve::start(&dir.path().join("data"), &["--upload-token-key", &key_arg]);
    (serve, key, dir)
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

fn post_json(serve: &Serve, path: &str, body: &Value) -> (u16, String) {
    let url = format!("{}{path}", serve.url());
    let body = body.to_string();
    curl(&["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", &body, &url])
}

fn create_dv(serve: &Serve, name: &str, source: Value) {
    let dv = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": name},
        "spec": {"source": source, "storage": {"resources": {"requests": {"storage": VOLUME_SIZE}}}},
    });
    let (status, body) =
        post_json(serve, "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes", &dv);
    assert_eq!(status, 201, "creating {name}: {body}");
}

/// POSTs an UploadTokenRequest for `pvc`; returns the status and the answer.
fn token_request(serve: &Serve, pvc: &str) -> (u16, Value) {
    let request = json!({
        "apiVersion": "upload.cdi.kubevirt.io/v1beta1",
        "kind": "UploadTokenRequest",
        "metadata": {"name": "t", "namespace": "default"},
        "spec": {"pvcName": pvc},
    });
    let path = "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/default/uploadtokenrequests";
    let (status, body) = post_json(serve, path, &request);
    (status, serde_json::from_str(&body).unwrap_or_else(|_| json!({"raw": body})))
}

fn token_for(serve: &Serve, pvc: &str) -> String {
    let (status, answer) = token_request(serve, pvc);
    assert_eq!(status, 201, "{answer}");
    answer["status"]["token"].as_str().expect("status.token").to_owned()
}

/// `GET` the DataVolume over the API.
fn dv(serve: &Serve, name: &str) -> Value {
    let (status, body) = serve::http(
        serve.port,
        "GET",
        &format!("/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/{name}"),
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("DataVolume JSON")
}

fn phase(serve: &Serve, name: &str) -> String {
    dv(serve, name)["status"]["phase"].as_str().unwrap_or("").to_owned()
}

fn condition(dv: &Value, type_: &str) -> Value {
    dv["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or(Value::Null)
}

/// Polls until `check` holds for the DataVolume (60 s at most: a state, not a duration, is
/// what the tests wait for).
fn wait_for(serve: &Serve, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let object = dv(serve, name);
        if check(&object) {
            return object;
        }
        assert!(Instant::now() < deadline, "{name} never {what}: {object}\n{}", serve.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_upload_ready(serve: &Serve, name: &str) {
    wait_for(serve, name, "UploadReady", |d| d["status"]["phase"] == "UploadReady");
}

fn curl_upload(serve: &Serve, token: Option<&str>, file: &Path, route: &str) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let data = format!("@{}", file.display());
    let mut args: Vec<&str> = Vec::new();
    if let Some(auth) = &auth {
        args.extend(["-H", auth]);
    }
    args.extend(["-H", "Content-Type: application/octet-stream", "--data-binary", &data]);
    let url = format!("{}{route}", serve.url());
    args.push(&url);
    curl(&args)
}

/// Most attempts of [`upload_retrying_at_once`]: the DataVolume takes a new upload right after
/// a failed one (no back-off); 503 can only come from the one reconcile pass between the
/// failure and the new upload worker.
const RETRY_ATTEMPTS: u32 = 10;

/// Uploads `file` right after a failed upload, as a client retrying at once would: another
/// attempt only on 503, at most [`RETRY_ATTEMPTS`] of them 50 ms apart (half a second in all,
/// far less than the 10 s back-off other workers wait).
fn upload_retrying_at_once(serve: &Serve, token: &str, file: &Path) -> (u16, String) {
    let mut answer = (0, String::new());
    for _ in 0..RETRY_ATTEMPTS {
        answer = curl_upload(serve, Some(token), file, "/v1beta1/upload");
        if answer.0 != 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    answer
}

fn volume_dir(serve: &Serve, name: &str) -> PathBuf {
    serve.data_dir.join("volumes/default").join(name)
}

/// Files in the volume directory besides its record.
fn files(serve: &Serve, name: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(volume_dir(serve, name))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|n| n != "volume.json");
    names.sort();
    names
}

fn assert_uploaded(serve: &Serve, name: &str) {
    let object = wait_for(serve, name, "Succeeded", |d| d["status"]["phase"] == "Succeeded");
    assert_eq!(condition(&object, "Ready")["status"], "True", "{object}");
    assert_eq!(
        sha256_file(&serve.disk(name)),
        sha256_file(&image("img.qcow2.ref")),
        "{name} differs from qemu-img's conversion"
    );
    assert_eq!(files(serve, name), vec!["disk.img".to_owned()], "leftover files");
}

/// A failed upload: counted in `restartCount` (`restarts`), the DataVolume stays
/// `UploadReady` and not Ready, the server logged `needle`, and nothing is in the volume
/// directory. (The Running condition names the failure only until the next upload worker
/// starts, which is at once.)
fn assert_failed_upload_recorded(serve: &Serve, name: &str, restarts: u64, needle: &str) {
    let object = wait_for(serve, name, "counted the failure", |d| d["status"]["restartCount"] == restarts);
    assert_eq!(object["status"]["phase"], "UploadReady", "{object}");
    assert_ne!(condition(&object, "Ready")["status"], "True", "{object}");
    assert!(files(serve, name).is_empty(), "files left behind: {:?}", files(serve, name));
    let log = serve.log();
    assert!(log.contains(&format!("{name}: upload failed: ")) && log.contains(needle), "{log}");
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn our_cli_creates_the_datavolume_uploads_a_qcow2_and_waits() {
    let (serve, _dir) = start();
    let out = serve.cli(&[
        "upload",
        "cli-disk",
        "--image-path",
        image("img.qcow2").to_str().expect("utf-8"),
        "--size",
        VOLUME_SIZE,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "diskplane upload: {stderr}\n{}", serve.log());
    assert!(stderr.contains("created DataVolume default/cli-disk"), "{stderr}");
    assert!(stderr.contains("DataVolume default/cli-disk Succeeded"), "{stderr}");
    assert_uploaded(&serve, "cli-disk");
    assert_eq!(dv(&serve, "cli-disk")["spec"]["source"], json!({"upload": {}}));
}

#[test]
fn token_requests_need_an_upload_datavolume() {
    let (serve, _dir) = start();
    create_dv(&serve, "blank", json!({"blank": {}}));

    let (status, answer) = token_request(&serve, "missing");
    assert_eq!(status, 404, "{answer}");
    assert!(answer["message"].as_str().is_some_and(|m| m.contains("default/missing not found")), "{answer}");
    let (status, answer) = token_request(&serve, "blank");
    assert_eq!(status, 404, "{answer}");
    assert!(answer["message"].as_str().is_some_and(|m| m.contains("not an upload target")), "{answer}");

    create_dv(&serve, "up", json!({"upload": {}}));
    let (status, answer) = token_request(&serve, "up");
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["kind"], "UploadTokenRequest");
    assert_eq!(answer["spec"]["pvcName"], "up");
    assert!(answer["status"]["token"].as_str().is_some_and(|t| !t.is_empty()), "{answer}");
}

#[test]
fn curl_raw_and_multipart_uploads_match_qemu_img_and_a_second_upload_gets_409() {
    let (serve, _dir) = start();
    create_dv(&serve, "raw-body", json!({"upload": {}}));
    create_dv(&serve, "form", json!({"upload": {}}));
    wait_upload_ready(&serve, "raw-body");
    wait_upload_ready(&serve, "form");

    let token = token_for(&serve, "raw-body");
    let (status, body) = curl_upload(&serve, Some(&token), &image("img.qcow2"), "/v1beta1/upload");
    assert_eq!(status, 200, "{body}\n{}", serve.log());
    assert_uploaded(&serve, "raw-body");

    let token_form = token_for(&serve, "form");
    let auth = format!("Authorization: Bearer {token_form}");
    let part = format!("file=@{}", image("img.qcow2").display());
    let url = format!("{}/v1beta1/upload-form", serve.url());
    let (status, body) = curl(&["-H", &auth, "-F", &part, &url]);
    assert_eq!(status, 200, "{body}\n{}", serve.log());
    assert_uploaded(&serve, "form");

    let (status, body) = curl_upload(&serve, Some(&token), &image("img.qcow2"), "/v1beta1/upload");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already been uploaded"), "{body}");
    assert_uploaded(&serve, "raw-body");

    // virtctl's probe of the async route.
    let (status, _) = curl(&["-I", &format!("{}/v1beta1/upload-async", serve.url())]);
    assert_eq!(status, 200);
}

#[test]
fn missing_garbage_expired_and_foreign_tokens_get_401() {
    let (serve, key, _dir) = start_with_key();
    create_dv(&serve, "a", json!({"upload": {}}));
    create_dv(&serve, "b", json!({"upload": {}}));
    wait_upload_ready(&serve, "a");
    let file = image("img.qcow2");

    let (status, body) = curl_upload(&serve, None, &file, "/v1beta1/upload");
    assert_eq!((status, body.contains("no upload token")), (401, true), "{body}");

    let (status, body) = curl_upload(&serve, Some("garbage"), &file, "/v1beta1/upload");
    assert_eq!((status, body.contains("malformed upload token")), (401, true), "{body}");

    let expired = key.issue(&Claims::upload("default", "a", unix_now() - 600, DEFAULT_TTL));
    let (status, body) = curl_upload(&serve, Some(&expired), &file, "/v1beta1/upload");
    assert_eq!((status, body.contains("expired")), (401, true), "{body}");

    let other_key = TokenKey::from_bytes(vec![7u8; 32]).expect("key");
    let forged = other_key.issue(&Claims::upload("default", "a", unix_now(), DEFAULT_TTL));
    let (status, body) = curl_upload(&serve, Some(&forged), &file, "/v1beta1/upload");
    assert_eq!((status, body.contains("signature is invalid")), (401, true), "{body}");

    // A token for b with its claims swapped for a's: the signature no longer matches.
    let for_b = token_for(&serve, "b");
    let for_a = key.issue(&Claims::upload("default", "a", unix_now(), DEFAULT_TTL));
    let (payload_a, _) = for_a.rsplit_once('.').expect("token");
    let (_, mac_b) = for_b.rsplit_once('.').expect("token");
    let (status, body) =
        curl_upload(&serve, Some(&format!("{payload_a}.{mac_b}")), &file, "/v1alpha1/upload");
    assert_eq!((status, body.contains("signature is invalid")), (401, true), "{body}");

    assert!(files(&serve, "a").is_empty(), "{:?}", files(&serve, "a"));
    assert_eq!(phase(&serve, "a"), "UploadReady");

    // The server's own token for a still works after all that.
    let (status, body) = curl_upload(&serve, Some(&for_a), &file, "/v1alpha1/upload");
    assert_eq!(status, 200, "{body}");
    assert_uploaded(&serve, "a");
}

#[test]
fn a_hostile_qcow2_gets_400_leaves_nothing_and_a_good_upload_follows() {
    let (serve, _dir) = start();
    create_dv(&serve, "hostile", json!({"upload": {}}));
    wait_upload_ready(&serve, "hostile");
    let token = token_for(&serve, "hostile");

    let (status, body) = curl_upload(&serve, Some(&token), &image("backed.qcow2"), "/v1beta1/upload");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("backing file"), "{body}");
    assert_failed_upload_recorded(&serve, "hostile", 1, "backing file");
    assert!(!serve.disk("hostile").exists());

    let (status, body) = upload_retrying_at_once(&serve, &token, &image("img.qcow2"));
    assert_eq!(status, 200, "{body}\n{}", serve.log());
    assert_uploaded(&serve, "hostile");
}

#[test]
fn a_concurrent_upload_gets_503_and_a_body_that_stops_half_way_keeps_nothing_then_a_retry_succeeds() {
    let (serve, _dir) = start();
    create_dv(&serve, "cut", json!({"upload": {}}));
    wait_upload_ready(&serve, "cut");
    let token = token_for(&serve, "cut");

    // Half of a 64 MiB raw body: more than socket buffers hold, so once it is written the
    // server is reading it and the upload holds the volume.
    let data = std::fs::read(image("raw.img")).expect("reading the image");
    let mut stream = TcpStream::connect(("127.0.0.1", serve.port)).expect("connect");
    let head = format!(
        "POST /v1beta1/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    stream.write_all(head.as_bytes()).expect("headers");
    stream.write_all(&data[..data.len() / 2]).expect("half the body");
    stream.flush().expect("flush");

    // A second upload to the same DataVolume meanwhile is refused.
    let (status, body) = curl_upload(&serve, Some(&token), &image("img.qcow2"), "/v1beta1/upload");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("already in progress"), "{body}");
    assert_ne!(phase(&serve, "cut"), "Succeeded");

    // Upload progress reaches the DataVolume's status (CDI shows none): bytes received over
    // the announced length, strictly between 0 and 100 while half the body is held back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let progress = loop {
        let shown = dv(&serve, "cut")["status"]["progress"].as_str().unwrap_or_default().to_owned();
        let percent = shown.strip_suffix('%').and_then(|p| p.parse::<f64>().ok());
        if let Some(p) = percent.filter(|p| *p > 0.0) {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "no upload progress in the status: {shown:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(progress < 100.0, "progress {progress} with half the body");
    assert_eq!(phase(&serve, "cut"), "UploadReady");

    stream.shutdown(std::net::Shutdown::Both).expect("closing half way");
    drop(stream);

    assert_failed_upload_recorded(&serve, "cut", 1, "upload failed");
    assert!(!serve.disk("cut").exists());

    let (status, body) = upload_retrying_at_once(&serve, &token, &image("img.qcow2"));
    assert_eq!(status, 200, "{body}\n{}", serve.log());
    assert_uploaded(&serve, "cut");
    assert_eq!(dv(&serve, "cut")["status"]["restartCount"], 1);
}

#[test]
fn a_failed_upload_is_retried_at_once_and_succeeds() {
    let (serve, _dir) = start();
    create_dv(&serve, "again", json!({"upload": {}}));
    wait_upload_ready(&serve, "again");
    let token = token_for(&serve, "again");

    // A body that does not match its end-to-end checksum: refused after the whole body came.
    let auth = format!("Authorization: Bearer {token}");
    let data = format!("@{}", image("img.qcow2").display());
    let wrong = format!("X-Checksum: sha256:{}", "0".repeat(64));
    let url = format!("{}/v1beta1/upload", serve.url());
    let (status, body) = curl(&["-H", &auth, "-H", &wrong, "--data-binary", &data, &url]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("checksum mismatch"), "{body}");

    // The client retries straight away (no waiting for the DataVolume): accepted, not 503
    // for the length of a back-off.
    let (status, body) = upload_retrying_at_once(&serve, &token, &image("img.qcow2"));
    assert_eq!(status, 200, "{body}\n{}", serve.log());
    assert_uploaded(&serve, "again");
    assert_eq!(dv(&serve, "again")["status"]["restartCount"], 1);
}

// ---------------------------------------------------------------------------------------------
// Archive DataVolumes (`contentType: archive`): tars made by GNU tar, extracted into `fs/`.

/// A tree `src/` (files of three modes, a private directory, a relative symlink, 2 MiB of
/// data), `tree.tar.gz` and `tree.tar` of it, `evil.tar` with a `../x` member, and `x` (the
/// file that member names).
fn archives() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::made_once("serve-upload-archives-v1", make_archives))
}

fn make_archives(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("etc/private")).expect("dirs");
    std::fs::write(src.join("etc/hostname"), b"diskplane-archive\n").expect("file");
    std::fs::write(src.join("etc/private/secret"), b"s3cret\n").expect("file");
    std::fs::write(src.join("run.sh"), b"#!/bin/sh\necho hi\n").expect("file");
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(src.join("data.bin"), &data).expect("file");
    std::os::unix::fs::symlink("etc/hostname", src.join("hostname")).expect("symlink");
    for (path, mode) in [("run.sh", 0o755), ("etc/private/secret", 0o600), ("etc/private", 0o750)] {
        std::fs::set_permissions(src.join(path), std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    common::run_ok(Command::new("tar").args(["-czf", "../tree.tar.gz", "."]).current_dir(&src));
    common::run_ok(Command::new("tar").args(["-cf", "../tree.tar", "."]).current_dir(&src));
    std::fs::create_dir(dir.join("inside")).expect("dir");
    std::fs::write(dir.join("inside/ok"), b"fine").expect("file");
    std::fs::write(dir.join("x"), b"escaped").expect("file");
    // -P keeps the member name `../x` as given (GNU tar strips it otherwise).
    common::run_ok(
        Command::new("tar").args(["-cPf", "../evil.tar", "ok", "../x"]).current_dir(dir.join("inside")),
    );
    std::fs::write(dir.join("done"), "").expect("done marker");
}

fn archive(name: &str) -> PathBuf {
    archives().join(name)
}

fn create_archive_dv(serve: &Serve, name: &str, volume_mode: Option<&str>) -> (u16, String) {
    let mut dv = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": name},
        "spec": {
            "source": {"upload": {}},
            "contentType": "archive",
            "storage": {"resources": {"requests": {"storage": VOLUME_SIZE}}},
        },
    });
    if let Some(mode) = volume_mode {
        dv["spec"]["storage"]["volumeMode"] = json!(mode);
    }
    post_json(serve, "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes", &dv)
}

fn ready_archive_dv(serve: &Serve, name: &str) -> String {
    let (status, body) = create_archive_dv(serve, name, None);
    assert_eq!(status, 201, "creating {name}: {body}");
    wait_upload_ready(serve, name);
    token_for(serve, name)
}

/// The DataVolume succeeded and `fs/` holds exactly the tree, with its contents and modes;
/// the volume directory holds `fs/` only (no disk, no staging directory).
fn assert_tree_extracted(serve: &Serve, name: &str) {
    use std::os::unix::fs::PermissionsExt;
    let object = wait_for(serve, name, "Succeeded", |d| d["status"]["phase"] == "Succeeded");
    assert_eq!(condition(&object, "Ready")["status"], "True", "{object}");
    let (fs, src) = (volume_dir(serve, name).join("fs"), archive("src"));
    for file in ["etc/hostname", "etc/private/secret", "run.sh", "data.bin"] {
        let got = std::fs::read(fs.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(got, std::fs::read(src.join(file)).expect(file), "{file} differs");
    }
    let mode =
        |path: &str| std::fs::symlink_metadata(fs.join(path)).expect(path).permissions().mode() & 0o777;
    assert_eq!(mode("run.sh"), 0o755);
    assert_eq!(mode("etc/private/secret"), 0o600);
    assert_eq!(mode("etc/private"), 0o750);
    assert_eq!(std::fs::read_link(fs.join("hostname")).expect("symlink"), Path::new("etc/hostname"));
    assert_eq!(files(serve, name), vec!["fs".to_owned()], "leftover files");
}

#[test]
fn archive_datavolumes_extract_a_tar_gz_from_upload_archive_and_a_tar_from_upload() {
    let (serve, _dir) = start();
    let token_gz = ready_archive_dv(&serve, "tree-gz");
    let token_plain = ready_archive_dv(&serve, "tree-plain");

    let (status, body) =
        curl_upload(&serve, Some(&token_gz), &archive("tree.tar.gz"), "/v1beta1/upload-archive");
    assert_eq!(status, 200, "{body}\n{}", serve.log());
    assert_tree_extracted(&serve, "tree-gz");

    // CDI's upload proxy sends every upload to an archive volume to /upload-archive; clients
    // that post to /upload directly get the same.
    let (status, body) = curl_upload(&serve, Some(&token_plain), &archive("tree.tar"), "/v1beta1/upload");
    assert_eq!(status, 200, "{body}\n{}", serve.log());
    assert_tree_extracted(&serve, "tree-plain");

    let (status, body) =
        curl_upload(&serve, Some(&token_gz), &archive("tree.tar.gz"), "/v1beta1/upload-archive");
    assert_eq!(status, 409, "{body}");
    assert_tree_extracted(&serve, "tree-gz");
}

#[test]
fn a_tar_with_a_parent_dir_member_gets_400_naming_it_writes_nothing_and_a_good_tar_follows() {
    let (serve, _dir) = start();
    let token = ready_archive_dv(&serve, "evil");

    let (status, body) = curl_upload(&serve, Some(&token), &archive("evil.tar"), "/v1beta1/upload-archive");

    assert_eq!(status, 400, "{body}");
    assert!(body.contains("archive entry \"../x\" leaves the target directory"), "{body}");
    assert_failed_upload_recorded(&serve, "evil", 1, "leaves the target directory");
    let outside: Vec<_> = std::fs::read_dir(serve.data_dir.join("volumes/default"))
        .expect("listing the namespace")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(outside, ["evil"], "written beside the volume");

    let (status, body) = upload_retrying_at_once(&serve, &token, &archive("tree.tar.gz"));
    assert_eq!(status, 200, "{body}\n{}", serve.log());
    assert_tree_extracted(&serve, "evil");
    assert_eq!(dv(&serve, "evil")["status"]["restartCount"], 1);
}

#[test]
fn a_qcow2_sent_to_an_archive_datavolume_gets_400_not_a_tar() {
    let (serve, _dir) = start();
    let token = ready_archive_dv(&serve, "tree");

    let (status, body) = curl_upload(&serve, Some(&token), &image("img.qcow2"), "/v1beta1/upload-archive");

    assert_eq!(status, 400, "{body}");
    assert!(body.contains("needs a tar archive, but the source holds qcow2"), "{body}");
    assert_failed_upload_recorded(&serve, "tree", 1, "needs a tar archive");
}

#[test]
fn an_archive_sent_to_a_disk_datavolume_via_upload_archive_gets_400() {
    let (serve, _dir) = start();
    create_dv(&serve, "disk", json!({"upload": {}}));
    wait_upload_ready(&serve, "disk");
    let token = token_for(&serve, "disk");

    let (status, body) =
        curl_upload(&serve, Some(&token), &archive("tree.tar.gz"), "/v1beta1/upload-archive");

    assert_eq!(status, 400, "{body}");
    assert!(body.contains("takes a disk image (contentType: kubevirt), not an archive"), "{body}");
    // Refused from the route alone: no upload was begun, none counted.
    let object = dv(&serve, "disk");
    assert_eq!(object["status"]["phase"], "UploadReady", "{object}");
    assert_eq!(object["status"]["restartCount"].as_u64().unwrap_or(0), 0, "{object}");
    assert!(files(&serve, "disk").is_empty(), "{:?}", files(&serve, "disk"));
}

#[test]
fn an_archive_datavolume_with_block_volume_mode_is_refused_at_creation() {
    let (serve, _dir) = start();

    let (status, body) = create_archive_dv(&serve, "blocky", Some("Block"));

    assert_eq!(status, 422, "{body}");
    assert!(body.contains("DataVolume with ContentType Archive cannot have block volumeMode"), "{body}");
}

#[test]
fn our_cli_uploads_a_tar_into_an_existing_archive_datavolume() {
    let (serve, _dir) = start();
    let (status, body) = create_archive_dv(&serve, "cli-tree", None);
    assert_eq!(status, 201, "{body}");

    let path = archive("tree.tar.gz");
    let out =
        serve.cli(&["upload", "cli-tree", "--no-create", "--image-path", path.to_str().expect("utf-8")]);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "diskplane upload: {stderr}\n{}", serve.log());
    assert!(stderr.contains("DataVolume default/cli-tree Succeeded"), "{stderr}");
    assert_tree_extracted(&serve, "cli-tree");
}

#[test]
fn our_cli_creates_an_archive_datavolume_with_content_type_archive_and_extracts_the_tar() {
    let (serve, _dir) = start();
    let path = archive("tree.tar");

    let out = serve.cli(&[
        "upload",
        "cli-new-tree",
        "--content-type",
        "archive",
        "--size",
        VOLUME_SIZE,
        "--image-path",
        path.to_str().expect("utf-8"),
    ]);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "diskplane upload: {stderr}\n{}", serve.log());
    assert!(stderr.contains("created DataVolume default/cli-new-tree"), "{stderr}");
    assert_eq!(dv(&serve, "cli-new-tree")["spec"]["contentType"], "archive");
    assert_tree_extracted(&serve, "cli-new-tree");
}

#[test]
fn our_cli_refuses_an_unknown_content_type() {
    let (serve, _dir) = start();
    let path = archive("tree.tar");

    let out =
        serve.cli(&["upload", "x", "--content-type", "zip", "--image-path", path.to_str().expect("utf-8")]);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown content type \"zip\""), "{stderr}");
}

#[test]
fn upload_archive_for_a_datavolume_that_does_not_exist_gets_404() {
    let (serve, key, _dir) = start_with_key();
    let token = key.issue(&Claims::upload("default", "nowhere", unix_now(), DEFAULT_TTL));

    for route in ["/v1beta1/upload-archive", "/v1alpha1/upload-archive", "/v1beta1/upload"] {
        let (status, body) = curl_upload(&serve, Some(&token), &archive("tree.tar"), route);
        assert_eq!(status, 404, "{route}: {body}");
        assert!(body.contains("DataVolume default/nowhere not found"), "{route}: {body}");
    }
}
