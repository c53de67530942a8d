//! Golden-image catalogs end to end: a real `diskplane serve`, a real docker-registry, three
//! versions of a containerDisk pushed to one tag, a DataImportCron keeping a DataSource on the
//! newest, garbage collection, a clone from the DataSource, and `qemu-img convert -O raw` as
//! the oracle of every volume.
//!
//! Polls are forced with `POST …/dataimportcrons/{name}/poll` (the crons here are scheduled
//! once a year, so only the first poll and the forced ones run): nothing waits on a clock.
//!
//! Needs docker-registry, qemu-img, python3 (see `.ci/packages.txt`).

#[allow(dead_code)]
#[path = "peers/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "peers/registry.rs"]
mod registry;
#[path = "peers/serve.rs"]
mod serve;
#[allow(dead_code)]
#[path = "peers/tls.rs"]
mod tls;

use common::{run_ok, sha256_file};

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use serve::{Serve, http};

/// Virtual size of every version (= the size the DataVolumes ask for).
const DISK_SIZE: u64 = 8 << 20;
const CDI: &str = "/apis/cdi.kubevirt.io/v1beta1/namespaces/default";

/// A qcow2 image of version `v` (different data per version) and its oracle sha256.
fn version(dir: &Path, v: u64) -> (PathBuf, String) {
    let raw = dir.join(format!("v{v}.raw"));
    let file = std::fs::File::create(&raw).expect("raw image");
    file.set_len(DISK_SIZE).expect("sizing");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ v;
    let data: Vec<u8> = (0..(1usize << 20))
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    file.write_all_at(&data, v << 20).expect("writing data");
    file.write_all_at(format!("version {v}").as_bytes(), DISK_SIZE - 512).expect("writing the tag");
    drop(file);
    let qcow2 = dir.join(format!("v{v}.qcow2"));
    run_ok(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&qcow2));
    let oracle = dir.join(format!("v{v}.oracle"));
    run_ok(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&qcow2).arg(&oracle));
    let sha = sha256_file(&oracle);
    std::fs::remove_file(&oracle).expect("removing the oracle");
    std::fs::remove_file(&raw).expect("removing the raw image");
    (qcow2, sha)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "failed: {}{}", String::from_utf8_lossy(&out.stdout), stderr(out));
}

/// GET an object; `None` on 404.
fn object(server: &Serve, resource: &str, name: &str) -> Option<Value> {
    let (status, body) = http(server.port, "GET", &format!("{CDI}/{resource}/{name}"));
    match status {
        404 => None,
        200 => Some(serde_json::from_str(&body).expect("JSON object")),
        other => panic!("GET {resource}/{name}: {other} {body}"),
    }
}

/// Waits (bounded, for hangs only) until `check` holds on the server.
fn wait_until(server: &Serve, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        if Instant::now() > deadline {
            let dump = |r: &str| http(server.port, "GET", &format!("{CDI}/{r}")).1;
            panic!(
                "gave up waiting for {what}; crons: {}\nsources: {}\nserver log:\n{}",
                dump("dataimportcrons"),
                dump("datasources"),
                server.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)
}

fn is_true(object: &Value, type_: &str) -> bool {
    condition(object, type_).is_some_and(|c| c["status"] == "True")
}

/// `fedora-<12 hex of the digest>`, as CDI names imports.
fn import_name(digest: &str) -> String {
    format!("fedora-{}", &digest.trim_start_matches("sha256:")[..12])
}

/// Waits until the cron is UpToDate on `digest` and the DataSource points at its import and
/// is Ready; returns the import's name.
fn wait_up_to_date(server: &Serve, digest: &str) -> String {
    let name = import_name(digest);
    wait_until(server, &format!("the cron to be up to date on {name}"), || {
        let cron = object(server, "dataimportcrons", "fedora-cron").expect("the cron");
        let ds = object(server, "datasources", "fedora");
        is_true(&cron, "UpToDate")
            && cron["status"]["currentImports"][0]["DataVolumeName"] == name.as_str()
            && ds.is_some_and(|ds| {
                ds["spec"]["source"]["pvc"]["name"] == name.as_str() && is_true(&ds, "Ready")
            })
    });
    name
}

fn poll(server: &Serve) -> Value {
    let (status, body) = http(server.port, "POST", &format!("{CDI}/dataimportcrons/fedora-cron/poll"));
    assert_eq!(status, 200, "poll: {body}");
    serde_json::from_str(&body).expect("the cron as JSON")
}

fn cron_yaml(host: &str, schedule: &str) -> String {
    format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataImportCron\nmetadata:\n  name: fedora-cron\nspec:\n  schedule: \"{schedule}\"\n  managedDataSource: fedora\n  importsToKeep: 2\n  template:\n    spec:\n      source:\n        registry:\n          url: docker://{host}/golden/fedora:latest\n      storage:\n        resources:\n          requests:\n            storage: 8Mi\n"
    )
}

fn push(registry: &registry::Registry, image: &Path) -> String {
    let entry = format!("disk/disk.img=@{}", image.display());
    registry.push("golden/fedora:latest", "amd64", &[("gzip", vec![entry])]).digest
}

#[test]
fn cron_follows_the_tag_garbage_collects_and_feeds_clones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let versions: Vec<(PathBuf, String)> = (1..=3).map(|v| version(tmp.path(), v)).collect();
    let registry = registry::Registry::start();
    let host = registry.host();
    let data = tmp.path().join("data");
    let server = Serve::start(&data, &["--insecure-registry", &host]);

    // v1: the first poll runs at once.
    let d1 = push(&registry, &versions[0].0);
    assert_ok(&server.apply(&cron_yaml(&host, "0 0 1 1 *"), &[]));
    let n1 = wait_up_to_date(&server, &d1);
    let dv1 = object(&server, "datavolumes", &n1).expect("the first import");
    assert_eq!(dv1["metadata"]["labels"]["cdi.kubevirt.io/dataImportCron"], "fedora-cron");
    let url = dv1["spec"]["source"]["registry"]["url"].as_str().expect("url");
    assert_eq!(url, format!("docker://{host}/golden/fedora@{d1}"), "pinned to the digest");
    assert_eq!(sha256_file(&server.disk(&n1)), versions[0].1, "v1 import");
    let cron = object(&server, "dataimportcrons", "fedora-cron").expect("cron");
    assert_eq!(
        cron["metadata"]["annotations"]["cdi.kubevirt.io/storage.import.sourceDesiredDigest"],
        d1.as_str()
    );

    // v2 on the same tag: a forced poll finds it.
    let d2 = push(&registry, &versions[1].0);
    assert_ne!(d1, d2);
    let polled = poll(&server);
    assert_eq!(
        polled["metadata"]["annotations"]["cdi.kubevirt.io/storage.import.sourceDesiredDigest"],
        d2.as_str()
    );
    let n2 = wait_up_to_date(&server, &d2);
    assert_eq!(sha256_file(&server.disk(&n2)), versions[1].1, "v2 import");

    // v3: the third import; importsToKeep 2 collects v1 with its volume.
    let d3 = push(&registry, &versions[2].0);
    poll(&server);
    let n3 = wait_up_to_date(&server, &d3);
    assert_eq!(sha256_file(&server.disk(&n3)), versions[2].1, "v3 import");
    wait_until(&server, "v1 to be garbage-collected", || object(&server, "datavolumes", &n1).is_none());
    assert!(!server.disk(&n1).exists(), "v1's volume is gone");
    assert!(!data.join("volumes/default").join(&n1).exists(), "v1's volume dir is gone");
    assert!(object(&server, "datavolumes", &n2).is_some(), "v2 is kept");
    assert_eq!(sha256_file(&server.disk(&n2)), versions[1].1, "v2 untouched");

    // A consumer clones the current golden image through the DataSource.
    let consumer = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: vm-disk\nspec:\n  sourceRef:\n    kind: DataSource\n    name: fedora\n  storage:\n    resources:\n      requests:\n        storage: 8Mi\n";
    assert_ok(&server.apply(consumer, &[]));
    assert_ok(&server.wait("vm-disk", "120s"));
    assert_eq!(sha256_file(&server.disk("vm-disk")), versions[2].1, "clone of v3");

    // The registry goes away: the poll fails visibly, nothing else changes.
    drop(registry);
    let polled = poll(&server);
    let failed = condition(&polled, "Polled").expect("a Polled condition");
    assert_eq!(failed["status"], "False", "{polled}");
    assert_eq!(failed["reason"], "PollFailed");
    let message = failed["message"].as_str().unwrap_or_default();
    assert!(message.contains(&host), "the message names the registry: {message}");
    assert_eq!(
        polled["metadata"]["annotations"]["cdi.kubevirt.io/storage.import.sourceDesiredDigest"],
        d3.as_str(),
        "the last good digest stays"
    );
    let ds = object(&server, "datasources", "fedora").expect("the DataSource");
    assert_eq!(ds["spec"]["source"]["pvc"]["name"], n3.as_str());
    assert!(is_true(&ds, "Ready"), "{ds}");
    for name in [&n2, &n3, &"vm-disk".to_owned()] {
        assert!(object(&server, "datavolumes", name).is_some(), "{name} is kept");
    }
    let out = server.cli(&["get", "dic"]);
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("fedora-cron"));
}

#[test]
fn bad_crons_are_refused_at_apply() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Serve::start(&tmp.path().join("data"), &[]);
    let out = server.apply(&cron_yaml("127.0.0.1:5000", "61 * * * *"), &[]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(text.contains("spec.schedule") && text.contains("minute"), "{text}");

    let out = server.apply(&cron_yaml("127.0.0.1:5000", "every day").replace("every day", "* * *"), &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("spec.schedule"), "{}", stderr(&out));

    let no_ds = cron_yaml("127.0.0.1:5000", "0 3 * * *").replace("  managedDataSource: fedora\n", "");
    let out = server.apply(&no_ds, &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("managedDataSource"), "{}", stderr(&out));

    assert!(object(&server, "dataimportcrons", "fedora-cron").is_none(), "nothing stored");
    assert!(object(&server, "datasources", "fedora").is_none());
}

/// A cron `name` on the test tag with `extra` spec lines (indented two spaces).
fn named_cron_yaml(name: &str, host: &str, extra: &str) -> String {
    cron_yaml(host, "0 0 1 1 *")
        .replace("  name: fedora-cron\n", &format!("  name: {name}\n"))
        .replace("  importsToKeep: 2\n", &format!("  importsToKeep: 2\n{extra}"))
}

fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["labels"][key].as_str()
}

#[test]
fn a_managed_data_source_is_not_shared_clones_mark_use_and_retention_none_cleans_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (image, sha) = version(tmp.path(), 1);
    let registry = registry::Registry::start();
    let host = registry.host();
    let server = Serve::start(&tmp.path().join("data"), &["--insecure-registry", &host]);
    let digest = push(&registry, &image);

    // retentionPolicy None: the import and the DataSource are labelled for cleanup.
    assert_ok(&server.apply(&named_cron_yaml("fedora-cron", &host, "  retentionPolicy: None\n"), &[]));
    let import = wait_up_to_date(&server, &digest);
    let dv = object(&server, "datavolumes", &import).expect("the import");
    let ds = object(&server, "datasources", "fedora").expect("the DataSource");
    for o in [&dv, &ds] {
        assert_eq!(label(o, "cdi.kubevirt.io/dataImportCron.cleanup"), Some("true"), "{o}");
    }
    let first_uid = dv["metadata"]["uid"].clone();

    // A second cron naming the same DataSource is refused, as CDI does.
    assert_ok(&server.apply(&named_cron_yaml("other-cron", &host, ""), &[]));
    wait_until(&server, "other-cron to be flagged", || {
        let cron = object(&server, "dataimportcrons", "other-cron").expect("other-cron");
        condition(&cron, "UpToDate").is_some_and(|c| c["reason"] == "ErrDataSourceAlreadyManaged")
    });
    let other = object(&server, "dataimportcrons", "other-cron").expect("other-cron");
    let flagged = condition(&other, "UpToDate").expect("UpToDate");
    assert_eq!(flagged["status"], "False");
    assert_eq!(flagged["message"], "DataSource fedora is already managed by DataImportCron fedora-cron");
    assert!(
        other["metadata"]["annotations"]["cdi.kubevirt.io/storage.import.lastCronTime"].is_null(),
        "no poll"
    );
    assert_eq!(
        label(&object(&server, "datasources", "fedora").expect("ds"), "cdi.kubevirt.io/dataImportCron"),
        Some("fedora-cron")
    );

    // A clone through the DataSource is a use of the import.
    let consumer = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: vm-disk\nspec:\n  sourceRef:\n    kind: DataSource\n    name: fedora\n  storage:\n    resources:\n      requests:\n        storage: 8Mi\n";
    assert_ok(&server.apply(consumer, &[]));
    assert_ok(&server.wait("vm-disk", "120s"));
    assert_eq!(sha256_file(&server.disk("vm-disk")), sha, "clone of the import");
    let created =
        object(&server, "datavolumes", "vm-disk").expect("vm-disk")["metadata"]["creationTimestamp"].clone();
    let dv = object(&server, "datavolumes", &import).expect("the import");
    assert_eq!(
        dv["metadata"]["annotations"]["cdi.kubevirt.io/storage.import.lastUseTime"], created,
        "the import's last use is the clone"
    );

    // The first cron goes: its import and DataSource go with it; then other-cron takes over.
    let (status, body) = http(server.port, "DELETE", &format!("{CDI}/dataimportcrons/fedora-cron"));
    assert_eq!(status, 200, "delete: {body}");
    wait_until(&server, "other-cron to own the DataSource and a fresh import", || {
        let ds = object(&server, "datasources", "fedora");
        let dv = object(&server, "datavolumes", &import);
        ds.is_some_and(|ds| {
            label(&ds, "cdi.kubevirt.io/dataImportCron") == Some("other-cron") && is_true(&ds, "Ready")
        }) && dv.is_some_and(|dv| {
            label(&dv, "cdi.kubevirt.io/dataImportCron") == Some("other-cron")
                && dv["metadata"]["uid"] != first_uid
        })
    });
    let dv = object(&server, "datavolumes", &import).expect("other-cron's import");
    assert!(label(&dv, "cdi.kubevirt.io/dataImportCron.cleanup").is_none(), "RetainAll: no cleanup label");
    assert_eq!(sha256_file(&server.disk(&import)), sha, "other-cron's import");
    assert_eq!(sha256_file(&server.disk("vm-disk")), sha, "the clone is not the cron's: kept");
}
