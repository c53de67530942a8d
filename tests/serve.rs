//! `diskplane serve` end to end: a real server process (`tests/peers/serve.rs`), the client
//! verbs (`apply`, `get`, `wait`, `delete`), real peers (nginx from `tests/peers/nginx.sh`,
//! docker-registry from `tests/peers/registry.rs`), and `qemu-img convert -O raw` as the oracle
//! of every imported disk.
//!
//! Needs nginx, openssl, qemu-img, xz, docker-registry, apache2-utils, python3
//! (see `.ci/packages.txt`).

#[allow(dead_code)]
#[path = "peers/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "peers/nginx.rs"]
mod nginx;
#[allow(dead_code)]
#[path = "peers/registry.rs"]
mod registry;
#[path = "peers/serve.rs"]
mod serve;
#[allow(dead_code)]
#[path = "peers/tls.rs"]
mod tls;

use common::{run_ok, sha256_file, sha256_prefix};
use nginx::Nginx;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serve::{DetachLoopsOnDrop, Serve, http};

// ---------------------------------------------------------------------------------------------
// Images, made once per target dir.

/// Virtual size of the test disk (= the size the DataVolumes ask for).
const DISK_SIZE: u64 = 24 << 20;

fn images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::made_once("serve-images-v2", make_images))
}

fn make_images(dir: &Path) {
    let raw = dir.join("raw.img");
    let file = std::fs::File::create(&raw).expect("raw.img");
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
    for (offset, len) in [(0u64, 2usize << 20), (5 << 20, 3 << 20), (DISK_SIZE - (1 << 20), 1 << 20)] {
        file.write_all_at(&random(len), offset).expect("writing data");
    }
    drop(file);
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(dir.join("img.qcow2")),
    );
    let xz = std::fs::File::create(dir.join("raw.img.xz")).expect("raw.img.xz");
    run_ok(Command::new("xz").args(["-c", "-0", "-T1"]).arg(&raw).stdout(xz));
    // contentType: archive: a small tree (a file, a subdirectory, a relative symlink) as tar.gz.
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).expect("tree/");
    std::fs::write(tree.join("etc/motd"), "golden image for everyone\n").expect("tree/etc/motd");
    std::fs::write(tree.join("data.bin"), random(300_000)).expect("tree/data.bin");
    std::os::unix::fs::symlink("etc/motd", tree.join("motd")).expect("tree/motd");
    run_ok(Command::new("tar").arg("-C").arg(&tree).arg("-czf").arg(dir.join("tree.tar.gz")).arg("."));
    let oracle = dir.join("oracle.raw");
    run_ok(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(dir.join("img.qcow2")).arg(&oracle));
    std::fs::write(dir.join("sha256"), sha256_file(&oracle)).expect("oracle");
    std::fs::remove_file(&oracle).expect("removing the oracle image");
    std::fs::write(dir.join("done"), "").expect("done");
}

/// sha256 of `qemu-img convert -O raw` of the test disk.
fn oracle() -> String {
    std::fs::read_to_string(images().join("sha256")).expect("oracle")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(out.status.success(), "exit {:?}: {}{}", out.status, stdout(out), stderr(out));
}

// ---------------------------------------------------------------------------------------------
// Peers

/// A data dir that outlives server processes.
fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    (dir, data)
}

fn http_dv(name: &str, url: &str, size: &str, extra: &str) -> String {
    format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: {name}\nspec:\n  source:\n    http:\n      url: {url}\n{extra}  storage:\n    resources:\n      requests:\n        storage: {size}\n"
    )
}

fn phase(dv: &serde_json::Value) -> &str {
    dv["status"]["phase"].as_str().unwrap_or("")
}

fn condition<'a>(dv: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    dv["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or(&serde_json::Value::Null)
}

// ---------------------------------------------------------------------------------------------
// Imports

#[test]
fn http_qcow2_and_raw_xz_datavolumes_succeed_with_the_oracles_sha256() {
    let nginx = Nginx::start(images());
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    let manifest = format!(
        "{}---\n{}",
        http_dv("from-qcow2", &nginx.file_url("img.qcow2"), "24Mi", ""),
        http_dv("from-xz", &nginx.file_url("raw.img.xz"), "24Mi", "")
    );
    let out = server.apply(&manifest, &[]);
    assert_ok(&out);
    assert_eq!(
        stdout(&out),
        "datavolume.cdi.kubevirt.io/from-qcow2 created\ndatavolume.cdi.kubevirt.io/from-xz created\n"
    );
    for name in ["from-qcow2", "from-xz"] {
        assert_ok(&server.wait(name, "120s"));
        let dv = server.dv(name);
        assert_eq!(phase(&dv), "Succeeded");
        assert_eq!(dv["status"]["progress"], "100.0%");
        assert_eq!(condition(&dv, "Ready")["status"], "True");
        assert_eq!(condition(&dv, "Bound")["reason"], "Bound");
        assert_eq!(sha256_file(&server.disk(name)), oracle(), "{name}");
    }
    let table = stdout(&server.cli(&["get", "dv"]));
    let mut lines = table.lines();
    assert!(
        lines.next().unwrap_or("").starts_with("NAME         PHASE       PROGRESS   RESTARTS   AGE"),
        "{table}"
    );
    assert!(
        lines.next().unwrap_or("").starts_with("from-qcow2   Succeeded   100.0%     0          "),
        "{table}"
    );
    let (code, metrics) = http(server.port, "GET", "/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("diskplane_datavolumes{phase=\"Succeeded\"} 2"), "{metrics}");
    let moved: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("diskplane_bytes_moved_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("bytes moved metric");
    assert!(moved > 0, "{metrics}");
}

#[test]
fn registry_datavolume_succeeds_with_the_oracles_sha256() {
    let registry = registry::Registry::start();
    let disk = images().join("img.qcow2");
    registry.push("disks/test:v1", "amd64", &[("gzip", vec![format!("disk/disk.img=@{}", disk.display())])]);
    let (_tmp, data) = data_dir();
    let host = registry.host();
    let server = Serve::start(&data, &["--insecure-registry", &host]);
    let manifest = format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: reg\nspec:\n  source:\n    registry:\n      url: docker://{host}/disks/test:v1\n  storage:\n    resources:\n      requests:\n        storage: 24Mi\n"
    );
    assert_ok(&server.apply(&manifest, &[]));
    assert_ok(&server.wait("reg", "120s"));
    assert_eq!(sha256_file(&server.disk("reg")), oracle());
}

#[test]
fn blank_datavolume_is_a_sparse_zero_disk_of_the_requested_size() {
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    let manifest = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: empty\nspec:\n  source:\n    blank: {}\n  storage:\n    resources:\n      requests:\n        storage: 100Mi\n";
    assert_ok(&server.apply(manifest, &[]));
    assert_ok(&server.wait("empty", "60s"));
    let meta = std::fs::metadata(server.disk("empty")).expect("disk.img");
    // Exactly the requested size (CDI's usable-space rounding would give less).
    assert_eq!(meta.len(), 100 << 20);
    assert_eq!(meta.blocks(), 0, "a blank disk allocates nothing");
}

#[test]
fn archive_datavolume_is_extracted_into_the_volume_filesystem() {
    let nginx = Nginx::start(images());
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    let manifest = http_dv("files", &nginx.file_url("tree.tar.gz"), "16Mi", "  contentType: archive\n");
    assert_ok(&server.apply(&manifest, &[]));
    assert_ok(&server.wait("files", "60s"));
    let fs = server.disk("files").with_file_name("fs");
    let tree = images().join("tree");
    assert_eq!(
        std::fs::read(fs.join("etc/motd")).expect("etc/motd"),
        std::fs::read(tree.join("etc/motd")).expect("motd")
    );
    assert_eq!(sha256_file(&fs.join("data.bin")), sha256_file(&tree.join("data.bin")));
    assert_eq!(std::fs::read_link(fs.join("motd")).expect("symlink"), Path::new("etc/motd"));
    assert!(!server.disk("files").exists(), "an archive volume has no disk.img");
}

#[test]
fn a_disk_smaller_than_the_image_fails_without_a_volume() {
    let nginx = Nginx::start(images());
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    assert_ok(&server.apply(&http_dv("small", &nginx.file_url("img.qcow2"), "16Mi", ""), &[]));
    let out = server.wait("small", "120s");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("DataVolume too small to contain image"), "{}", stderr(&out));
    assert_eq!(phase(&server.dv("small")), "Failed");
    assert!(!server.disk("small").exists());
}

#[test]
fn missing_source_fails_with_the_http_status_and_no_volume() {
    let nginx = Nginx::start(images());
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    assert_ok(&server.apply(&http_dv("gone", &nginx.file_url("nothing-here.img"), "24Mi", ""), &[]));
    let out = server.wait("gone", "120s");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("datavolume gone failed: Error: HTTP 404 Not Found"), "{err}");
    let dv = server.dv("gone");
    assert_eq!(phase(&dv), "Failed");
    assert_eq!(condition(&dv, "Ready")["status"], "False");
    assert_eq!(dv["status"]["restartCount"], 0, "a 404 is terminal, not retried");
    assert!(!server.disk("gone").exists());
}

#[test]
fn checksum_mismatch_fails_with_checksum_error() {
    let nginx = Nginx::start(images());
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    let wrong = format!("      checksum: sha256:{}\n", "0".repeat(64));
    let manifest = http_dv("tampered", &nginx.file_url("raw.img.xz"), "24Mi", "")
        .replace("\n  storage:", &format!("\n{wrong}  storage:"));
    assert_ok(&server.apply(&manifest, &[]));
    let out = server.wait("tampered", "120s");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("ChecksumError: checksum mismatch"), "{}", stderr(&out));
    assert!(!server.disk("tampered").exists());
}

// ---------------------------------------------------------------------------------------------
// Admission through the server

/// `(file, Some(expected stderr text) if refused)` for every CDI example holding a DataVolume;
/// as `controller/tests/cdi_examples.rs` expects.
const DATAVOLUME_EXAMPLES: &[(&str, Option<&str>)] = &[
    ("blank-image-datavolume.yaml", None),
    ("clone-block-datavolume.yaml", None),
    ("clone-datavolume.yaml", None),
    ("import-archive-block-datavolume.yaml", Some("ContentType Archive cannot have block volumeMode")),
    ("import-archive-datavolume.yaml", None),
    ("import-kubevirt-block-datavolume.yaml", None),
    ("import-kubevirt-datavolume-gcs.yaml", Some("GCS sources are not supported by diskplane")),
    ("import-kubevirt-datavolume-secret.yaml", None),
    ("import-kubevirt-datavolume-skip-tls.yaml", None),
    ("import-kubevirt-datavolume.yaml", None),
    ("registry-image-block-datavolume.yaml", None),
    ("registry-image-datavolume.yaml", None),
    ("upload-block-datavolume.yaml", None),
    ("upload-datavolume.yaml", None),
    ("vddk-args-annotation.yaml", Some("VMware VDDK sources are not supported")),
    ("vddk-args-field.yaml", Some("VMware VDDK sources are not supported")),
];

#[test]
fn every_cdi_example_is_accepted_or_rejected_through_the_server() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/cdi-examples/manifests-example");
    let (_tmp, data) = data_dir();
    // Some examples are Block DataVolumes: each gets a loop device.
    let _detach = DetachLoopsOnDrop(data.clone());
    let server = Serve::start(&data, &[]);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&examples).expect("cdi examples").flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(files.len() >= 20, "examples missing in {}", examples.display());
    for (index, file) in files.iter().enumerate() {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        // One namespace per file: several examples share a name.
        let ns = format!("example-{index}");
        let out = server.cli(&["apply", "-f", file.to_str().unwrap_or_default(), "-n", &ns]);
        match DATAVOLUME_EXAMPLES.iter().find(|(f, _)| *f == name) {
            Some((_, None)) => {
                assert_ok(&out);
                assert!(stdout(&out).contains(" created"), "{name}: {}", stdout(&out));
            }
            Some((_, Some(message))) => {
                assert!(!out.status.success(), "{name} was accepted");
                let err = stderr(&out);
                assert!(err.contains(message) && err.contains("is invalid"), "{name}: {err}");
                assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
            }
            // ConfigMaps, Secrets, CDIConfig, PVs, UploadTokenRequests, VMs: not served here.
            None => {
                assert_ok(&out);
                assert!(stderr(&out).contains("not served by diskplane serve"), "{name}: {}", stderr(&out));
            }
        }
    }
    // The upload DataVolume waits for its upload: UploadReady, bound.
    let ns = files.iter().position(|f| f.ends_with("upload-datavolume.yaml")).expect("upload example");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out =
            server.cli(&["get", "dv", "upload-datavolume", "-n", &format!("example-{ns}"), "-o", "json"]);
        let dv: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if phase(&dv) == "UploadReady" {
            assert_eq!(condition(&dv, "Bound")["status"], "True");
            break;
        }
        assert!(Instant::now() < deadline, "upload DataVolume never became UploadReady: {dv}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn invalid_manifests_are_rejected_with_cdi_messages_and_nothing_is_stored() {
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    let dv = |name: &str, spec: &str| {
        format!(
            "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: {name}\nspec:\n{spec}"
        )
    };
    let storage = "  storage:\n    resources:\n      requests:\n        storage: 1Gi\n";
    let cases = [
        (dv("no-source", &format!("  source: {{}}\n{storage}")), "spec.source: Missing Data volume source"),
        (
            dv("two-sources", &format!("  source:\n    blank: {{}}\n    upload: {{}}\n{storage}")),
            "spec.source: Multiple Data volume sources",
        ),
        (dv("Bad_Name", &format!("  source:\n    blank: {{}}\n{storage}")), "metadata.name"),
        (dv("no-url", &format!("  source:\n    http:\n      url: \"\"\n{storage}")), "spec.source.http.url"),
    ];
    for (manifest, message) in cases {
        let out = server.apply(&manifest, &[]);
        assert!(!out.status.success(), "accepted: {manifest}");
        let err = stderr(&out);
        assert!(err.starts_with("diskplane: -: document 1: DataVolume.cdi.kubevirt.io"), "{err}");
        assert!(err.contains(message), "{message} not in {err}");
    }
    let out = server.cli(&["get", "dv"]);
    assert_ok(&out);
    assert!(stderr(&out).contains("No resources found"), "{}", stderr(&out));
    // Not YAML at all: refused by the client, naming the problem.
    let out = server.apply("kind: [unclosed\n", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not valid YAML"), "{}", stderr(&out));
}

#[test]
fn apply_is_idempotent_delete_removes_the_volume_and_missing_objects_are_404() {
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    let manifest = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: scratch\nspec:\n  source:\n    blank: {}\n  storage:\n    resources:\n      requests:\n        storage: 8Mi\n";
    assert_ok(&server.apply(manifest, &[]));
    let again = server.apply(manifest, &[]);
    assert_ok(&again);
    assert_eq!(stdout(&again), "datavolume.cdi.kubevirt.io/scratch unchanged\n");
    let changed = server.apply(&manifest.replace("8Mi", "16Mi"), &[]);
    assert!(!changed.status.success());
    assert!(stderr(&changed).contains("already exists"), "{}", stderr(&changed));
    assert_ok(&server.wait("scratch", "60s"));
    assert!(server.disk("scratch").exists());

    let out = server.cli(&["delete", "dv", "scratch"]);
    assert_ok(&out);
    assert_eq!(stdout(&out), "datavolume.cdi.kubevirt.io \"scratch\" deleted\n");
    assert!(!server.disk("scratch").parent().expect("volume dir").exists());
    let out = server.cli(&["get", "dv", "scratch"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("datavolumes.cdi.kubevirt.io \"scratch\" not found"), "{}", stderr(&out));
    let (code, body) =
        http(server.port, "GET", "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/scratch");
    assert_eq!(code, 404);
    assert!(body.contains("\"reason\":\"NotFound\""), "{body}");
    let out = server.cli(&["delete", "dv", "scratch"]);
    assert!(!out.status.success());
}

// ---------------------------------------------------------------------------------------------
// Crash safety and load

/// Serves `data` over HTTP/1.1 (200, no ranges). While `hold` is set, a response stops after
/// half the body and the connection is left hanging: an import caught in the middle.
fn gated_server(data: Arc<Vec<u8>>, hold: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (data, hold) = (Arc::clone(&data), Arc::clone(&hold));
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    request.push(byte[0]);
                }
                let head =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", data.len());
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                if hold.load(Ordering::SeqCst) {
                    let _ = stream.write_all(&data[..data.len() / 2]);
                    while hold.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    return; // the client is gone by now
                }
                let _ = stream.write_all(&data);
            });
        }
    });
    port
}

#[test]
fn kill_9_in_the_middle_of_an_import_restarts_it_from_clean_state() {
    let data = Arc::new(std::fs::read(images().join("raw.img")).expect("raw.img"));
    let hold = Arc::new(AtomicBool::new(true));
    let port = gated_server(Arc::clone(&data), Arc::clone(&hold));
    let (_tmp, dir) = data_dir();
    let server = Serve::start(&dir, &[]);
    let url = format!("http://127.0.0.1:{port}/raw.img");
    assert_ok(&server.apply(&http_dv("crash", &url, "24Mi", ""), &[]));
    // Wait until half the image is in the partial file.
    let partial = dir.join("volumes/default/crash/.disk.img.partial");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&partial).map_or(0, |m| m.blocks() * 512) < (2 << 20) {
        assert!(Instant::now() < deadline, "the import never started: {}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(phase(&server.dv("crash")), "ImportInProgress");
    server.kill9();
    assert!(!dir.join("volumes/default/crash/disk.img").exists(), "no disk before the import finished");

    hold.store(false, Ordering::SeqCst);
    let server = Serve::start(&dir, &[]);
    assert_ok(&server.wait("crash", "120s"));
    assert_eq!(sha256_file(&server.disk("crash")), oracle());
    assert!(!partial.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("volumes/default/crash"))
        .expect("volume dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers.len(), 2, "only disk.img and volume.json remain: {leftovers:?}");
}

#[test]
fn eight_concurrent_datavolumes_succeed_with_bounded_server_memory() {
    let nginx = Nginx::start(images());
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &["--workers", "3"]);
    let names: Vec<String> = (0..8).map(|i| format!("many-{i}")).collect();
    let manifest: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let image = if i % 2 == 0 { "img.qcow2" } else { "raw.img.xz" };
            http_dv(name, &nginx.file_url(image), "24Mi", "")
        })
        .collect();
    assert_ok(&server.apply(&manifest.join("---\n"), &[]));
    for name in &names {
        assert_ok(&server.wait(name, "300s"));
        assert_eq!(sha256_file(&server.disk(name)), oracle(), "{name}");
    }
    let peak = server.peak_rss();
    eprintln!("peak RSS of diskplane serve with 8 DataVolumes (3 workers): {} MiB", peak >> 20);
    assert!(peak < 256 << 20, "peak RSS {} MiB", peak >> 20);
}

// ---------------------------------------------------------------------------------------------
// Clones and watches

#[test]
fn pvc_clones_and_datasource_refs_copy_a_finished_volume() {
    let nginx = Nginx::start(images());
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    assert_ok(&server.apply(&http_dv("golden", &nginx.file_url("img.qcow2"), "24Mi", ""), &[]));
    let clones = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataSource\nmetadata:\n  name: golden-ds\nspec:\n  source:\n    pvc:\n      namespace: default\n      name: golden\n---\n\
apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: bigger-copy\nspec:\n  source:\n    pvc:\n      namespace: default\n      name: golden\n  storage:\n    resources:\n      requests:\n        storage: 32Mi\n---\n\
apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: from-ref\nspec:\n  sourceRef:\n    kind: DataSource\n    name: golden-ds\n  storage: {}\n";
    // Applied before the source finished: the clones wait for it (CloneWithoutSource).
    let out = server.apply(clones, &[]);
    assert_ok(&out);
    assert!(stdout(&out).contains("datasource.cdi.kubevirt.io/golden-ds created"), "{}", stdout(&out));
    assert_ok(&server.wait("golden", "120s"));
    assert_ok(&server.wait("bigger-copy", "120s"));
    assert_ok(&server.wait("from-ref", "120s"));
    let copy = server.disk("bigger-copy");
    assert_eq!(std::fs::metadata(&copy).expect("copy").len(), 32 << 20);
    assert_eq!(sha256_prefix(&copy, DISK_SIZE), oracle());
    assert_eq!(sha256_file(&server.disk("from-ref")), oracle(), "sizeless clone takes the source's size");
    let out = server.cli(&["get", "das"]);
    assert_ok(&out);
    assert!(stdout(&out).starts_with("NAME        AGE\ngolden-ds   "), "{}", stdout(&out));
}

#[test]
fn watch_streams_the_phases_of_a_datavolume() {
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connecting");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    stream
        .write_all(
            b"GET /apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes?watch=true HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .expect("watch request");
    let manifest = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: watched\nspec:\n  source:\n    blank: {}\n  storage:\n    resources:\n      requests:\n        storage: 4Mi\n";
    assert_ok(&server.apply(manifest, &[]));
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("\"phase\":\"Succeeded\"") {
        let n = stream.read(&mut buf).expect("reading the watch");
        assert!(n > 0, "watch ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let added = seen.find("{\"object\":").map(|i| &seen[i..]).unwrap_or("");
    assert!(seen.contains("\"type\":\"ADDED\""), "{seen}");
    assert!(seen.contains("\"type\":\"MODIFIED\""), "{seen}");
    assert!(
        seen.contains("\"phase\":\"ImportScheduled\"") || seen.contains("\"phase\":\"Pending\""),
        "{added}"
    );
}
