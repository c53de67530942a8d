//! VirtualMachines of `diskplane serve` end to end: a real server (`tests/peers/serve.rs`), a
//! DataVolume importing the test guest's disk from nginx (`tests/peers/nginx.sh`), and real
//! qemu-system-x86_64 on TCG booting the guest of `fixtures/make-guest.sh` (see
//! tests/launcher.rs), which prints `diskplane-guest: marker=MARKER-GOLDEN` from its disk.
//!
//! The golden-image flow goes through the registry: the guest disk pushed to the local
//! docker-registry as a containerDisk, imported, cloned, and both booted.
//!
//! Needs docker-registry, nginx, openssl, qemu-system-x86_64, busybox-static, cpio (see `.ci/packages.txt` and
//! `fixtures/packages.txt`).

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

use nginx::Nginx;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use serve::{Serve, http};

const MAKE_GUEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/make-guest.sh");
/// Generous for TCG boots and imports on a loaded 2-core machine (not a timing assertion).
const DEADLINE: Duration = Duration::from_secs(300);

/// The guest (kernel, initrd, 4 MiB disk), built once per target dir under `flock`.
fn guest_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = match std::env::var_os("DISKPLANE_GUEST") {
            Some(dir) => PathBuf::from(dir),
            None => Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("guest"),
        };
        let out = Command::new("flock")
            .arg(dir.with_extension("lock"))
            .arg("bash")
            .arg(MAKE_GUEST)
            .arg(&dir)
            .output()
            .expect("running flock (util-linux)");
        assert!(out.status.success(), "make-guest.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

/// `serve` with VMs on TCG booting the guest's kernel.
fn start_serve(data: &Path) -> Serve {
    let g = guest_dir();
    let (kernel, initrd) = (g.join("vmlinuz"), g.join("initrd.img"));
    let (kernel, initrd) = (kernel.to_str().expect("utf-8 path"), initrd.to_str().expect("utf-8 path"));
    Serve::start(data, &["--accel", "tcg", "--vm-kernel", kernel, "--vm-initrd", initrd])
}

/// SIGTERM to `serve` (so it stops its VMs, never leaving qemu behind) and waits for it to
/// exit; runs on drop, also when an assertion failed.
struct Graceful<'a>(&'a Serve);

impl Drop for Graceful<'_> {
    fn drop(&mut self) {
        terminate(self.0);
    }
}

fn terminate(server: &Serve) {
    let pid = server.pid();
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for Serve's drop to reap it.
        if stat.is_empty() || stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z')) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dv(name: &str, url: &str) -> String {
    format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: {name}\nspec:\n  source:\n    http:\n      url: {url}\n  storage:\n    resources:\n      requests:\n        storage: 16Mi\n"
    )
}

/// A VM booting the test guest (waiting for the power button) on `volume`.
fn vm(name: &str, run_strategy: &str, volume: &str, templates: &str) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: {run_strategy}
{templates}  template:
    spec:
      domain:
        cpu:
          cores: 1
        memory:
          guest: 256Mi
        firmware:
          kernelBoot:
            kernelArgs: "console=ttyS0 quiet panic=-1 dp.wait"
        devices:
          disks:
            - name: root
              disk:
                bus: virtio
      volumes:
        - name: root
{volume}
"#
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(out.status.success(), "exit {:?}: {}{}", out.status, text(&out.stdout), text(&out.stderr));
}

fn vm_apply(server: &Serve, yaml: &str) -> Output {
    let mut child = serve::diskplane()
        .args(["vm", "apply", "-f", "-"])
        .env("DISKPLANE_SERVER", server.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running diskplane vm apply");
    child.stdin.take().expect("stdin").write_all(yaml.as_bytes()).expect("writing the manifest");
    child.wait_with_output().expect("diskplane vm apply")
}

fn vm_json(server: &Serve, name: &str) -> Value {
    let out = server.cli(&["vm", "get", name, "-o", "json"]);
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).expect("vm get -o json prints JSON")
}

fn printable(vm: &Value) -> &str {
    vm["status"]["printableStatus"].as_str().unwrap_or("")
}

fn message(vm: &Value) -> &str {
    vm["status"]["conditions"][0]["message"].as_str().unwrap_or("")
}

/// Waits until the VM's printableStatus is `want`; returns the VM.
#[track_caller]
fn wait_status(server: &Serve, name: &str, want: &str) -> Value {
    wait_vm(server, name, want, |v| printable(v) == want)
}

/// Waits until the VM satisfies `done` (described by `what`); returns the VM.
#[track_caller]
fn wait_vm(server: &Serve, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = vm_json(server, name);
        if done(&v) {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "vm {name} not {what}: {v}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `vm console NAME` prints `needle` (`count` times); returns the console text.
#[track_caller]
fn wait_console(server: &Serve, name: &str, needle: &str, count: usize) -> String {
    let start = Instant::now();
    loop {
        let out = server.cli(&["vm", "console", name]);
        assert_ok(&out);
        let t = text(&out.stdout);
        if t.matches(needle).count() >= count {
            return t;
        }
        assert!(start.elapsed() < DEADLINE, "no {needle:?} on {name}'s console:\n{t}\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn qemu_pid(server: &Serve, name: &str) -> Option<u32> {
    let p = server.data_dir.join("vms/default").join(name).join("qemu.pid");
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.rsplit(')').next().is_some_and(|s| s.trim_start().starts_with('Z'))
}

/// The main flow: a VM on a missing DataVolume waits (Pending, saying which); once the
/// DataVolume is applied and imported it boots (Running, marker on the console); its volume
/// cannot be deleted while it runs (409 naming the VM); `vm stop` powers it off gracefully
/// over QMP (Stopped, runStrategy Halted); then the volume can be deleted.
#[test]
fn a_vm_waits_for_its_datavolume_boots_on_it_and_stops_gracefully() {
    let nginx = Nginx::start(guest_dir());
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = start_serve(&tmp.path().join("data"));
    let _graceful = Graceful(&server);

    assert_ok(&vm_apply(
        &server,
        &vm("vm1", "Always", "          dataVolume:\n            name: golden", ""),
    ));
    let v = wait_status(&server, "vm1", "Pending");
    assert!(message(&v).contains("volume root: DataVolume default/golden not found"), "{v}");
    assert_eq!(v["status"]["conditions"][0]["reason"], "DataVolumeNotFound", "{v}");
    assert_eq!(v["status"]["ready"], false, "{v}");
    let out = server.cli(&["vm", "get"]);
    assert_ok(&out);
    assert!(
        text(&out.stdout).contains("vm1") && text(&out.stdout).contains("Pending"),
        "{}",
        text(&out.stdout)
    );

    assert_ok(&server.apply(&dv("golden", &nginx.file_url("disk.img")), &[]));
    let v = wait_status(&server, "vm1", "Running");
    assert_eq!(v["status"]["ready"], true, "{v}");
    let console = wait_console(&server, "vm1", "diskplane-guest: waiting for the power button", 1);
    assert!(console.contains("diskplane-guest: marker=MARKER-GOLDEN"), "{console}");
    assert_eq!(server.dv("golden")["status"]["phase"], "Succeeded");
    let pid = qemu_pid(&server, "vm1").expect("qemu pid file while running");
    assert!(alive(pid));

    // The volume is in use.
    let (code, body) =
        http(server.port, "DELETE", "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/golden");
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("in use by VirtualMachine default/vm1"), "{body}");
    let out = server.cli(&["delete", "dv", "golden"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("in use by VirtualMachine default/vm1"), "{}", text(&out.stderr));
    assert!(server.disk("golden").exists());
    // Starting a running Always VM is refused.
    let out = server.cli(&["vm", "start", "vm1"]);
    assert!(!out.status.success() && text(&out.stderr).contains("already running"), "{}", text(&out.stderr));

    // Graceful stop: the guest sees the ACPI power button and powers off (exit code 0).
    assert_ok(&server.cli(&["vm", "stop", "vm1"]));
    let v = wait_status(&server, "vm1", "Stopped");
    assert_eq!(v["spec"]["runStrategy"], "Halted", "{v}");
    assert_eq!(message(&v), "stopped on request (qemu exit code 0)", "{v}");
    let console = server.cli(&["vm", "console", "vm1"]);
    assert!(text(&console.stdout).contains("power button pressed"), "{}", text(&console.stdout));
    assert!(!alive(pid), "qemu {pid} still running");
    assert!(qemu_pid(&server, "vm1").is_none(), "pid file left behind");

    // Stopped: the volume can go.
    assert_ok(&server.cli(&["delete", "dv", "golden"]));
    assert!(!server.disk("golden").exists());
    // Stopping a Halted VM is refused.
    let out = server.cli(&["vm", "stop", "vm1"]);
    assert!(!out.status.success() && text(&out.stderr).contains("not running"), "{}", text(&out.stderr));
}

/// A Manual VM with a dataVolumeTemplate: not started until asked; `vm start` creates nothing
/// twice and boots it; `serve` stopping (SIGTERM) stops qemu, and the next `serve` starts it
/// again (it was asked to run); killing qemu under it (Manual: no restart) leaves it Failed.
#[test]
fn a_manual_vm_with_a_template_starts_on_request_and_survives_a_serve_restart() {
    let nginx = Nginx::start(guest_dir());
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let templates = format!(
        "  dataVolumeTemplates:\n    - metadata:\n        name: root-dv\n      spec:\n        source:\n          http:\n            url: {}\n        storage:\n          resources:\n            requests:\n              storage: 16Mi\n",
        nginx.file_url("disk.img")
    );
    let manifest = vm("man", "Manual", "          dataVolume:\n            name: root-dv", &templates);
    let pid = {
        let server = start_serve(&data);
        let _graceful = Graceful(&server);
        assert_ok(&vm_apply(&server, &manifest));
        let v = wait_status(&server, "man", "Stopped");
        assert_eq!(v["status"]["runStrategy"], "Manual", "{v}");
        // Nothing is created before the VM is asked to run.
        assert!(!server.cli(&["get", "dv", "root-dv"]).status.success());
        // Applying the same VM again is refused (objects are immutable).
        let out = vm_apply(&server, &manifest);
        assert!(
            !out.status.success() && text(&out.stderr).contains("already exists"),
            "{}",
            text(&out.stderr)
        );

        assert_ok(&server.cli(&["vm", "start", "man"]));
        wait_status(&server, "man", "Running");
        assert_eq!(server.dv("root-dv")["metadata"]["ownerReferences"][0]["name"], "man");
        wait_console(&server, "man", "diskplane-guest: waiting for the power button", 1);
        let pid = qemu_pid(&server, "man").expect("qemu pid");
        terminate(&server);
        assert!(!alive(pid), "serve left qemu {pid} running");
        pid
    };

    let server = start_serve(&data);
    let _graceful = Graceful(&server);
    wait_status(&server, "man", "Running");
    let console = wait_console(&server, "man", "diskplane-guest: waiting for the power button", 2);
    assert!(console.contains("power button pressed"), "the first run did not power off:\n{console}");
    let new_pid = qemu_pid(&server, "man").expect("qemu pid");
    assert_ne!(new_pid, pid);

    // qemu dies under a Manual VM: not restarted, Failed with the signal.
    assert!(Command::new("kill").args(["-KILL", &new_pid.to_string()]).status().expect("kill").success());
    let v = wait_status(&server, "man", "Failed");
    assert!(message(&v).contains("killed by signal 9"), "{v}");
    // Started again on request.
    assert_ok(&server.cli(&["vm", "start", "man"]));
    wait_status(&server, "man", "Running");
    // (A guest still booting misses the ACPI power button: qemu is then killed after the grace.)
    wait_console(&server, "man", "diskplane-guest: waiting for the power button", 3);
    assert_ok(&server.cli(&["vm", "stop", "man"]));
    let v = wait_status(&server, "man", "Stopped");
    assert_eq!(message(&v), "stopped on request (qemu exit code 0)", "{v}");
    assert_eq!(v["metadata"]["annotations"]["vm.diskplane.io/run-request"], "Stopped", "{v}");
}

#[test]
fn invalid_unready_and_unsupported_vms_say_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = start_serve(&tmp.path().join("data"));
    let _graceful = Graceful(&server);
    let bad = vm("bad", "Sometimes", "          dataVolume:\n            name: x", "");
    // The CLI checks with the launcher's rules before sending (the server applies the same).
    let out = vm_apply(&server, &bad);
    assert!(!out.status.success() && text(&out.stderr).contains("runStrategy"), "{}", text(&out.stderr));
    let out = server.cli(&["vm", "get", "bad"]);
    assert!(!out.status.success() && text(&out.stderr).contains("not found"), "{}", text(&out.stderr));
    // A DataVolume that is not Succeeded (waiting for an upload): Provisioning, saying so.
    let upload_dv = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: up\nspec:\n  source:\n    upload: {}\n  storage:\n    resources:\n      requests:\n        storage: 16Mi\n";
    assert_ok(&server.apply(upload_dv, &[]));
    assert_ok(&vm_apply(&server, &vm("waits", "Always", "          dataVolume:\n            name: up", "")));
    // The DataVolume passes UploadScheduled on its way to UploadReady; the VM follows each phase.
    let v = wait_vm(&server, "waits", "Provisioning on an UploadReady volume", |v| {
        printable(v) == "Provisioning" && message(v).contains("UploadReady")
    });
    assert!(message(&v).contains("volume root: DataVolume default/up is UploadReady"), "{v}");
    assert_eq!(v["status"]["conditions"][0]["reason"], "DataVolumeNotReady", "{v}");
    // containerDisk volumes are refused with what to do instead.
    assert_ok(&vm_apply(
        &server,
        &vm("cd", "Always", "          containerDisk:\n            image: quay.io/x/y:1", ""),
    ));
    let v = wait_status(&server, "cd", "Failed");
    assert!(message(&v).contains("containerDisk quay.io/x/y:1 is not supported by serve"), "{v}");
    let out = server.cli(&["vm", "console", "nope"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("\"nope\" not found"),
        "{}",
        text(&out.stderr)
    );
}

/// `kill -9` of `serve` leaves qemu running (an orphan holding the disk's lock); the next
/// `serve` kills it and starts the Always VM again.
#[test]
fn after_kill_9_of_serve_the_next_serve_replaces_the_orphaned_qemu() {
    let nginx = Nginx::start(guest_dir());
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let server = start_serve(&data);
    assert_ok(&server.apply(&dv("golden", &nginx.file_url("disk.img")), &[]));
    assert_ok(&vm_apply(&server, &vm("k9", "Always", "          dataVolume:\n            name: golden", "")));
    wait_status(&server, "k9", "Running");
    wait_console(&server, "k9", "diskplane-guest: waiting for the power button", 1);
    let orphan = qemu_pid(&server, "k9").expect("qemu pid");
    server.kill9();
    assert!(alive(orphan), "qemu {orphan} died with serve (the caveat no longer holds: update the docs)");

    let server = start_serve(&data);
    let _graceful = Graceful(&server);
    wait_status(&server, "k9", "Running");
    assert!(!alive(orphan), "the orphaned qemu {orphan} still runs");
    assert!(server.log().contains(&format!("killing orphaned qemu {orphan}")), "{}", server.log());
    wait_console(&server, "k9", "diskplane-guest: waiting for the power button", 2);
    assert_ne!(qemu_pid(&server, "k9"), Some(orphan));
    assert_ok(&server.cli(&["vm", "stop", "k9"]));
    let v = wait_status(&server, "k9", "Stopped");
    assert_eq!(message(&v), "stopped on request (qemu exit code 0)", "{v}");
}

/// The text the guest wrote to sector 1 of a disk (`dp.write=TEXT`).
fn sector1(path: &Path) -> String {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 512];
    std::fs::File::open(path).expect("opening the disk").read_exact_at(&mut buf, 512).expect("sector 1");
    text(&buf).trim_end_matches('\0').trim_end().to_owned()
}

/// The dev-environment flow: the guest disk as a containerDisk in the local registry →
/// a golden DataVolume → a per-developer clone; a VM on each boots, and what the clone's guest
/// writes stays on the clone (the golden volume's sha256 does not change).
#[test]
fn a_containerdisk_golden_image_and_a_clone_of_it_boot_independently() {
    let registry = registry::Registry::start();
    let host = registry.host();
    let guest_disk = guest_dir().join("disk.img");
    registry.push(
        "guests/marker:latest",
        "amd64",
        &[("gzip", vec![format!("disk/disk.img=@{}", guest_disk.display())])],
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let g = guest_dir();
    let (kernel, initrd) = (g.join("vmlinuz"), g.join("initrd.img"));
    let server = Serve::start(
        &tmp.path().join("data"),
        &[
            "--accel",
            "tcg",
            "--vm-kernel",
            kernel.to_str().expect("utf-8 path"),
            "--vm-initrd",
            initrd.to_str().expect("utf-8 path"),
            "--insecure-registry",
            &host,
        ],
    );
    let _graceful = Graceful(&server);

    let golden = format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: golden\nspec:\n  source:\n    registry:\n      url: docker://{host}/guests/marker:latest\n  storage:\n    resources:\n      requests:\n        storage: 16Mi\n"
    );
    assert_ok(&server.apply(&golden, &[]));
    assert_ok(&server.wait("golden", "300s"));
    let guest_len = std::fs::metadata(&guest_disk).expect("guest disk").len();
    assert_eq!(
        common::sha256_prefix(&server.disk("golden"), guest_len),
        common::sha256_file(&guest_disk),
        "the imported containerDisk"
    );
    let clone = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: dev\nspec:\n  source:\n    pvc:\n      namespace: default\n      name: golden\n  storage:\n    resources:\n      requests:\n        storage: 16Mi\n";
    assert_ok(&server.apply(clone, &[]));
    assert_ok(&server.wait("dev", "300s"));
    let golden_sha = common::sha256_file(&server.disk("golden"));
    assert_eq!(common::sha256_file(&server.disk("dev")), golden_sha, "the clone starts identical");

    assert_ok(&vm_apply(
        &server,
        &vm("golden-vm", "Always", "          dataVolume:\n            name: golden", ""),
    ));
    let dev_vm = vm("dev-vm", "Always", "          dataVolume:\n            name: dev", "")
        .replace("panic=-1 dp.wait", "panic=-1 dp.write=DEV-WRITE dp.wait");
    assert_ok(&vm_apply(&server, &dev_vm));
    wait_status(&server, "golden-vm", "Running");
    wait_status(&server, "dev-vm", "Running");
    let waiting = "diskplane-guest: waiting for the power button";
    let console = wait_console(&server, "golden-vm", waiting, 1);
    assert!(console.contains("marker=MARKER-GOLDEN"), "{console}");
    let console = wait_console(&server, "dev-vm", waiting, 1);
    assert!(console.contains("marker=MARKER-GOLDEN"), "{console}");
    assert!(console.contains("wrote=DEV-WRITE"), "{console}");

    // `vm restart`: a graceful stop, then a second boot (the marker twice on the console).
    assert_ok(&server.cli(&["vm", "restart", "golden-vm"]));
    wait_status(&server, "golden-vm", "Running");
    wait_console(&server, "golden-vm", waiting, 2);

    for name in ["golden-vm", "dev-vm"] {
        assert_ok(&server.cli(&["vm", "stop", name]));
    }
    wait_status(&server, "golden-vm", "Stopped");
    wait_status(&server, "dev-vm", "Stopped");
    assert_eq!(sector1(&server.disk("dev")), "DEV-WRITE", "the clone holds its guest's write");
    assert_eq!(common::sha256_file(&server.disk("golden")), golden_sha, "the golden volume is unchanged");
}
