//! VolumeSnapshots in `diskplane serve`, end to end: a real server process
//! (`tests/peers/serve.rs`) and the client verbs (`apply`, `get vs`, `wait vs`, `delete vs`).
//!
//! A blank DataVolume gets data written into its volume (as a VM would), a VolumeSnapshot of it
//! becomes `readyToUse`, later writes to the source leave the snapshot alone (sha256), and
//! DataVolumes restoring it (`source.snapshot`, or `sourceRef` to a DataSource with
//! `source.snapshot`) hold exactly the snapshot's bytes and stay sparse. Block sources (loop
//! devices) and XFS reflinks need root: those tests skip, saying why, without it.

#[allow(dead_code)]
#[path = "peers/common.rs"]
mod common;
#[path = "peers/serve.rs"]
mod serve;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{sha256_file, sha256_prefix};
use serde_json::Value;
use serve::{DetachLoopsOnDrop, Serve};

const MIB: u64 = 1 << 20;
/// Virtual size of the source volumes.
const SIZE: u64 = 24 * MIB;

fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    (dir, data)
}

/// A DataVolume: `source` is the YAML under `spec.source` (indented 4); an empty `size` makes
/// it sizeless (`storage: {}`).
fn dv(name: &str, source: &str, size: &str) -> String {
    let storage = if size.is_empty() {
        "  storage: {}\n".to_owned()
    } else {
        format!("  storage:\n    resources:\n      requests:\n        storage: {size}\n")
    };
    format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: {name}\nspec:\n  source:\n{source}{storage}"
    )
}

fn blank(name: &str, mode: &str) -> String {
    format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: {name}\nspec:\n  source:\n    blank: {{}}\n  storage:\n    volumeMode: {mode}\n    resources:\n      requests:\n        storage: 24Mi\n"
    )
}

fn snapshot_source(name: &str) -> String {
    format!("    snapshot:\n      namespace: default\n      name: {name}\n")
}

fn volume_snapshot(name: &str, pvc: &str) -> String {
    format!(
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata:\n  name: {name}\nspec:\n  volumeSnapshotClassName: csi-hostpath-snapclass\n  source:\n    persistentVolumeClaimName: {pvc}\n"
    )
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `get vs NAME -o json`.
fn vs(server: &Serve, name: &str) -> Value {
    let out = server.cli(&["get", "vs", name, "-o", "json"]);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).expect("get -o json prints JSON")
}

/// The snapshot's copy in the pool.
fn snapshot_disk(data: &Path, name: &str) -> PathBuf {
    data.join("volumes/.snapshots/default").join(name).join("disk.img")
}

/// Bytes of the file actually allocated on disk.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").blocks() * 512
}

/// Deterministic non-zero bytes.
fn pattern(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed as u8) | 1
        })
        .collect()
}

/// Writes `len` pattern bytes at `offset` into a volume (a file or a device), flushed.
fn write_at(path: &Path, offset: u64, len: usize, seed: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).expect("opening the volume");
    file.write_all_at(&pattern(len, seed), offset).expect("writing the volume");
    file.sync_all().expect("flushing the volume");
}

/// Polls until `check` holds for the object `get KIND NAME -o json` prints (a guard against
/// hanging, not a timing assertion).
fn wait_for(server: &Serve, kind: &str, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = server.cli(&["get", kind, name, "-o", "json"]);
        if out.status.success() {
            let object: Value = serde_json::from_slice(&out.stdout).expect("JSON");
            if check(&object) {
                return object;
            }
            assert!(Instant::now() < deadline, "{kind} {name}: never {what}: {object}");
        } else {
            assert!(Instant::now() < deadline, "{kind} {name}: never {what}: {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The first event of a watch of the VolumeSnapshots in `default` (the initial `ADDED` of an
/// existing one).
fn first_watch_event(port: u16) -> Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let path = "/apis/snapshot.storage.k8s.io/v1/namespaces/default/volumesnapshots?watch=true";
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("reading the watch");
        assert!(n > 0, "the watch ended: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if let Some(start) = text.find("{\"")
            && let Some(len) = text[start..].find('\n')
        {
            return serde_json::from_str(&text[start..start + len]).expect("a JSON event");
        }
    }
}

fn ready_condition(object: &Value) -> (String, String) {
    let conditions = object["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let ready = conditions.iter().find(|c| c["type"] == "Ready").cloned().unwrap_or(Value::Null);
    (ready["status"].as_str().unwrap_or("").to_owned(), ready["reason"].as_str().unwrap_or("").to_owned())
}

/// A blank source volume with data at 1 MiB and 13 MiB; returns its sha256.
fn golden(server: &Serve, name: &str) -> String {
    assert_ok(&server.apply(&blank(name, "Filesystem"), &[]));
    assert_ok(&server.wait(name, "120s"));
    let disk = server.disk(name);
    write_at(&disk, MIB, 512 << 10, 1);
    write_at(&disk, 13 * MIB + 4096, 300_000, 2);
    sha256_file(&disk)
}

// ---------------------------------------------------------------------------------------------

#[test]
fn snapshot_is_frozen_restores_sparse_and_outlives_its_source() {
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    let taken = golden(&server, "golden");

    let out = server.apply(&volume_snapshot("snap", "golden"), &[]);
    assert_ok(&out);
    assert!(stdout(&out).contains("volumesnapshot.snapshot.storage.k8s.io/snap created"), "{}", stdout(&out));
    assert_ok(&server.cli(&["wait", "vs", "snap", "--timeout", "120s"]));
    let snap = vs(&server, "snap");
    let status = &snap["status"];
    assert_eq!(status["readyToUse"], true, "{snap}");
    assert_eq!(status["restoreSize"], "24Mi", "{snap}");
    assert!(status["creationTime"].as_str().is_some_and(|t| t.ends_with('Z')), "{snap}");
    assert!(status.get("error").is_none(), "{snap}");
    let copy = snapshot_disk(&data, "snap");
    assert_eq!(sha256_file(&copy), taken);

    // Writes to the source afterwards leave the snapshot alone.
    write_at(&server.disk("golden"), 2 * MIB, 1 << 20, 3);
    assert_ne!(sha256_file(&server.disk("golden")), taken);
    assert_eq!(sha256_file(&copy), taken, "the snapshot changed with its source");

    let event = first_watch_event(server.port);
    assert_eq!(event["type"], "ADDED", "{event}");
    assert_eq!(event["object"]["status"]["readyToUse"], true, "{event}");
    let table = stdout(&server.cli(&["get", "vs"]));
    assert!(table.starts_with("NAME   READYTOUSE   SOURCEPVC   RESTORESIZE   AGE\n"), "{table}");
    assert!(table.contains("snap   true         golden      24Mi"), "{table}");
    // Applying it again changes nothing.
    let again = server.apply(&volume_snapshot("snap", "golden"), &[]);
    assert_ok(&again);
    assert!(
        stdout(&again).contains("volumesnapshot.snapshot.storage.k8s.io/snap unchanged"),
        "{}",
        stdout(&again)
    );

    // Restores: bigger (grows), and sizeless (the restore size).
    let restores = format!(
        "{}---\n{}",
        dv("bigger", &snapshot_source("snap"), "32Mi"),
        dv("same", &snapshot_source("snap"), "")
    );
    assert_ok(&server.apply(&restores, &[]));
    assert_ok(&server.wait("bigger", "120s"));
    assert_ok(&server.wait("same", "120s"));
    let bigger = server.disk("bigger");
    assert_eq!(std::fs::metadata(&bigger).expect("bigger").len(), 32 * MIB);
    assert_eq!(sha256_prefix(&bigger, SIZE), taken);
    assert_eq!(sha256_file(&server.disk("same")), taken, "sizeless restore takes the restore size");
    let written = (512 << 10) + 300_000 + 2 * 4096;
    for disk in [&bigger, &server.disk("same")] {
        let used = allocated(disk);
        eprintln!(
            "restored {}: allocated {used} bytes of {} (data written: {written})",
            disk.display(),
            SIZE
        );
        assert!(used <= written + 2 * MIB, "{}: {used} bytes allocated, not sparse", disk.display());
    }

    // Another namespace may restore it (as with pvc clones, embedded mode allows it).
    assert_ok(&server.apply(&dv("elsewhere", &snapshot_source("snap"), "24Mi"), &["-n", "other"]));
    assert_ok(&server.cli(&["wait", "dv", "elsewhere", "-n", "other", "--timeout", "120s"]));
    assert_eq!(sha256_file(&data.join("volumes/other/elsewhere/disk.img")), taken);

    // Snapshots outlive their source.
    assert_ok(&server.cli(&["delete", "dv", "golden"]));
    assert_eq!(sha256_file(&copy), taken);
    assert_eq!(vs(&server, "snap")["status"]["readyToUse"], true);
    assert_ok(&server.apply(&dv("after", &snapshot_source("snap"), "24Mi"), &[]));
    assert_ok(&server.wait("after", "120s"));
    assert_eq!(sha256_file(&server.disk("after")), taken);

    // Deleting it removes the copy, not the restored volumes.
    let out = server.cli(&["delete", "vs", "snap"]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("volumesnapshot.snapshot.storage.k8s.io \"snap\" deleted"),
        "{}",
        stdout(&out)
    );
    assert!(!copy.parent().expect("dir").exists(), "the snapshot's directory is gone");
    let out = server.cli(&["get", "vs", "snap"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("volumesnapshots.snapshot.storage.k8s.io \"snap\" not found"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sha256_file(&server.disk("after")), taken);
}

#[test]
fn a_restore_smaller_than_the_snapshot_fails_naming_both_sizes() {
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    golden(&server, "golden");
    assert_ok(&server.apply(&volume_snapshot("snap", "golden"), &[]));
    assert_ok(&server.cli(&["wait", "vs", "snap", "--timeout", "120s"]));
    assert_ok(&server.apply(&dv("small", &snapshot_source("snap"), "16Mi"), &[]));
    let out = server.wait("small", "120s");
    assert!(!out.status.success(), "a 16Mi restore of a 24Mi snapshot succeeded");
    let message = stderr(&out);
    assert!(message.contains("DataVolume too small to contain image"), "{message}");
    assert!(
        message.contains(&format!("source {SIZE} bytes"))
            && message.contains(&format!("target {} bytes", 16 * MIB)),
        "{message}"
    );
    assert!(!server.disk("small").exists(), "a failed restore left a disk");
}

#[test]
fn a_snapshot_of_a_missing_pvc_waits_and_so_do_its_restores() {
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    assert_ok(&server.apply(&volume_snapshot("early", "later"), &[]));
    assert_ok(&server.apply(&dv("restore", &snapshot_source("early"), "24Mi"), &[]));
    let snap = wait_for(&server, "vs", "early", "reports the missing PVC", |o| {
        o["status"]["error"]["message"].is_string()
    });
    assert_eq!(snap["status"]["readyToUse"], false, "{snap}");
    let message = snap["status"]["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("PersistentVolumeClaim default/later not found"), "{message}");
    let wide = stdout(&server.cli(&["get", "vs", "-o", "wide"]));
    assert!(wide.contains("early   false") && wide.contains("not found"), "{wide}");

    // The restore waits (never Failed) while the snapshot is not ready to use.
    let restore = wait_for(&server, "dv", "restore", "waits for its snapshot", |o| {
        ready_condition(o).1 == "CloneWithoutSource"
    });
    assert_eq!(restore["status"]["phase"], "Pending", "{restore}");
    assert!(!server.disk("restore").exists());

    // The source appears: the snapshot is taken, the restore runs.
    golden(&server, "later");
    assert_ok(&server.cli(&["wait", "vs", "early", "--timeout", "120s"]));
    assert_ok(&server.wait("restore", "120s"));
    // The snapshot may have been cut before or after `golden` wrote its data: what counts is
    // that the restore holds exactly the snapshot.
    let copy = snapshot_disk(&data, "early");
    assert_eq!(sha256_file(&server.disk("restore")), sha256_file(&copy));
    assert!(vs(&server, "early")["status"].get("error").is_none());
}

#[test]
fn bad_volume_snapshots_are_refused_and_nothing_is_stored() {
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    let pre = "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata:\n  name: pre\nspec:\n  source:\n    volumeSnapshotContentName: content-1\n";
    let out = server.apply(pre, &[]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let message = stderr(&out);
    assert!(
        message.contains(
            "VolumeSnapshot.snapshot.storage.k8s.io \"pre\" is invalid: spec.source.volumeSnapshotContentName"
        ) && message.contains("pre-provisioned"),
        "{message}"
    );
    let none = "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata:\n  name: none\nspec:\n  source: {}\n";
    let out = server.apply(none, &[]);
    assert!(
        stderr(&out).contains("Exactly one of persistentVolumeClaimName and volumeSnapshotContentName"),
        "{}",
        stderr(&out)
    );
    let bad_name = volume_snapshot("Bad_Name", "golden");
    let out = server.apply(&bad_name, &[]);
    assert!(stderr(&out).contains("metadata.name"), "{}", stderr(&out));
    // `.snapshots` holds the pool's snapshots: no namespace can be called that.
    for yaml in [volume_snapshot("s", "golden"), blank("x", "Filesystem")] {
        let out = server.apply(&yaml, &["-n", ".snapshots"]);
        assert!(!out.status.success(), "{}", stdout(&out));
        assert!(stderr(&out).contains("\".snapshots\" is not a valid namespace name"), "{}", stderr(&out));
    }
    let listed = server.cli(&["get", "vs", "-o", "json"]);
    assert_ok(&listed);
    let list: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(list["kind"], "VolumeSnapshotList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");
    assert!(!data.join("volumes/.snapshots/default").exists());
}

#[test]
fn a_data_source_with_a_snapshot_feeds_source_ref_clones() {
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    let ds = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataSource\nmetadata:\n  name: golden-ds\nspec:\n  source:\n    snapshot:\n      namespace: default\n      name: snap\n";
    let from_ref = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: dev-copy\nspec:\n  sourceRef:\n    kind: DataSource\n    name: golden-ds\n  storage:\n    resources:\n      requests:\n        storage: 24Mi\n";
    assert_ok(&server.apply(&format!("{ds}---\n{from_ref}"), &[]));
    let source = wait_for(&server, "das", "golden-ds", "reports the missing snapshot", |o| {
        ready_condition(o) == ("False".into(), "NotFound".into())
    });
    assert!(source["status"].get("source").is_none(), "{source}");
    let waiting = wait_for(&server, "dv", "dev-copy", "waits for its source", |o| {
        ready_condition(o).1 == "CloneWithoutSource"
    });
    assert_eq!(waiting["status"]["phase"], "Pending");

    let taken = golden(&server, "golden");
    assert_ok(&server.apply(&volume_snapshot("snap", "golden"), &[]));
    assert_ok(&server.cli(&["wait", "vs", "snap", "--timeout", "120s"]));
    let ready = wait_for(&server, "das", "golden-ds", "becomes Ready", |o| ready_condition(o).0 == "True");
    assert_eq!(ready["status"]["source"]["snapshot"]["name"], "snap", "{ready}");
    assert_ok(&server.wait("dev-copy", "120s"));
    assert_eq!(sha256_file(&server.disk("dev-copy")), taken);
    // Writes to the clone never change the snapshot.
    write_at(&server.disk("dev-copy"), 0, 4096, 9);
    assert_eq!(sha256_file(&snapshot_disk(&data, "snap")), taken);

    // Deleting the snapshot makes the DataSource not Ready again.
    assert_ok(&server.cli(&["delete", "vs", "snap"]));
    wait_for(&server, "das", "golden-ds", "loses its snapshot", |o| {
        ready_condition(o) == ("False".into(), "NotFound".into())
    });
}

#[test]
fn a_restart_keeps_ready_snapshots_and_drops_interrupted_copies() {
    let (_tmp, data) = data_dir();
    let server = Serve::start(&data, &[]);
    let taken = golden(&server, "golden");
    assert_ok(&server.apply(&volume_snapshot("snap", "golden"), &[]));
    assert_ok(&server.cli(&["wait", "vs", "snap", "--timeout", "120s"]));
    server.kill9();
    // What a copy interrupted by a crash leaves behind.
    let leftover = data.join("volumes/.snapshots/default/snap/.disk.img.0000.partial");
    std::fs::write(&leftover, b"half a copy").expect("leftover");
    let server = Serve::start(&data, &[]);
    assert!(!leftover.exists(), "start-up kept a partial snapshot copy");
    assert_eq!(vs(&server, "snap")["status"]["readyToUse"], true);
    assert_eq!(sha256_file(&snapshot_disk(&data, "snap")), taken);
    assert_ok(&server.apply(&dv("restored", &snapshot_source("snap"), ""), &[]));
    assert_ok(&server.wait("restored", "120s"));
    assert_eq!(sha256_file(&server.disk("restored")), taken);
}

#[test]
fn a_snapshot_of_a_block_volume_copies_the_device() {
    if let Err(why) = Command::new("losetup").arg("-f").output().map_err(|e| e.to_string()).and_then(|o| {
        if o.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&o.stderr).into_owned()) }
    }) {
        eprintln!("SKIPPED a_snapshot_of_a_block_volume_copies_the_device: no loop devices ({why})");
        return;
    }
    let (_tmp, data) = data_dir();
    let _detach = DetachLoopsOnDrop(data.clone());
    let server = Serve::start(&data, &[]);
    assert_ok(&server.apply(&blank("golden", "Block"), &[]));
    assert_ok(&server.wait("golden", "120s"));
    let object = wait_for(&server, "dv", "golden", "has a device", |o| {
        o["metadata"]["annotations"]["diskplane.io/device"].is_string()
    });
    let device =
        PathBuf::from(object["metadata"]["annotations"]["diskplane.io/device"].as_str().unwrap_or(""));
    write_at(&device, 3 * MIB, 1 << 20, 4);
    let taken = sha256_file(&device);

    assert_ok(&server.apply(&volume_snapshot("snap", "golden"), &[]));
    assert_ok(&server.cli(&["wait", "vs", "snap", "--timeout", "120s"]));
    assert_eq!(vs(&server, "snap")["status"]["restoreSize"], "24Mi");
    let copy = snapshot_disk(&data, "snap");
    assert_eq!(sha256_file(&copy), taken);
    assert!(allocated(&copy) <= 3 * MIB, "the copy of the device is not sparse: {}", allocated(&copy));
    write_at(&device, 3 * MIB, 4096, 5);
    assert_eq!(sha256_file(&copy), taken, "the snapshot changed with its device");

    // Restored into a Filesystem volume and into a Block volume.
    let block_restore = dv("block-copy", &snapshot_source("snap"), "24Mi")
        .replace("  storage:\n", "  storage:\n    volumeMode: Block\n");
    assert_ok(
        &server.apply(
            &format!("{}---\n{block_restore}", dv("file-copy", &snapshot_source("snap"), "24Mi")),
            &[],
        ),
    );
    assert_ok(&server.wait("file-copy", "120s"));
    assert_ok(&server.wait("block-copy", "120s"));
    assert_eq!(sha256_file(&server.disk("file-copy")), taken);
    let restored = server.dv("block-copy");
    let restored_device =
        restored["metadata"]["annotations"]["diskplane.io/device"].as_str().unwrap_or("").to_owned();
    assert_eq!(sha256_file(Path::new(&restored_device)), taken);
    assert_ok(&server.cli(&["delete", "dv", "block-copy"]));
    assert_ok(&server.cli(&["delete", "dv", "golden"]));
}

/// An XFS file system with reflinks in a loop-mounted image, unmounted when dropped.
struct Xfs {
    dir: tempfile::TempDir,
}

impl Xfs {
    fn mount() -> Result<Xfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = dir.path().join("xfs.img");
        std::fs::File::create(&image).and_then(|f| f.set_len(1 << 30)).map_err(|e| e.to_string())?;
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
            }
        };
        run(Command::new("mkfs.xfs").args(["-q", "-m", "reflink=1"]).arg(&image))?;
        std::fs::create_dir(dir.path().join("mnt")).map_err(|e| e.to_string())?;
        run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(dir.path().join("mnt")))?;
        Ok(Xfs { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Bytes in use on the file system.
    fn used(&self) -> u64 {
        let out = Command::new("df").args(["-B1", "--output=used"]).arg(self.path()).output().expect("df");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df output")
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
    }
}

#[test]
fn on_xfs_a_snapshot_is_a_reflink_that_shares_the_blocks() {
    let xfs = match Xfs::mount() {
        Ok(xfs) => xfs,
        Err(why) => {
            eprintln!("SKIPPED on_xfs_a_snapshot_is_a_reflink_that_shares_the_blocks: {why}");
            return;
        }
    };
    let data = xfs.path().join("data");
    let server = Serve::start(&data, &[]);
    assert_ok(&server.apply(&blank("golden", "Filesystem"), &[]));
    assert_ok(&server.wait("golden", "120s"));
    write_at(&server.disk("golden"), 0, 16 << 20, 6);
    let taken = sha256_file(&server.disk("golden"));
    let used_before = xfs.used();
    assert_ok(&server.apply(&volume_snapshot("snap", "golden"), &[]));
    assert_ok(&server.cli(&["wait", "vs", "snap", "--timeout", "120s"]));
    let grew = xfs.used().saturating_sub(used_before);
    eprintln!("XFS: a snapshot of 16 MiB of data used {grew} more bytes");
    assert!(grew < 4 * MIB, "the snapshot copied the data ({grew} bytes) instead of sharing it");
    assert!(server.log().contains("(FICLONE"), "{}", server.log());
    let copy = snapshot_disk(&data, "snap");
    assert_eq!(sha256_file(&copy), taken);
    write_at(&server.disk("golden"), 0, 4096, 7);
    assert_eq!(sha256_file(&copy), taken, "a write to the source changed the reflinked snapshot");
    drop(server);
}
