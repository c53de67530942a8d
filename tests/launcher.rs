//! `diskplane vm run` and the launcher crate against real qemu-system-x86_64, always on TCG
//! (`/dev/kvm` on these machines is the kvm_pvm software hypervisor that hangs guests).
//!
//! The guest is built by `fixtures/make-guest.sh` (Debian kernel + busybox initramfs): it prints
//! `diskplane-guest: marker=<first line of /dev/vda>` on its serial console, writes
//! `dp.write=TEXT` to sector 1 of its disk, reads a NoCloud seed on /dev/vdb, and powers off
//! (with `dp.wait`: when the ACPI power button is pressed). Built once into
//! `target/guest` (or `$DISKPLANE_GUEST`) under `flock`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use launcher::argv::KernelFiles;
use launcher::{AccelRequest, Launch, LaunchOptions, Resolved};
use sha2::{Digest, Sha256};

const DISKPLANE: &str = env!("CARGO_BIN_EXE_diskplane");
const MAKE_GUEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/make-guest.sh");
/// A TCG boot takes ~5 s of guest time here; generous for a loaded 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

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

/// A manifest booting the test guest with `args` on its kernel command line, volume `root` a
/// dataVolume, plus a NoCloud seed.
fn manifest(name: &str, run_strategy: &str, args: &str) -> String {
    format!(
        r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: {run_strategy}
  template:
    spec:
      domain:
        cpu:
          cores: 1
        memory:
          guest: 256Mi
        firmware:
          kernelBoot:
            kernelArgs: "console=ttyS0 quiet panic=-1 {args}"
        devices:
          disks:
            - name: root
              bootOrder: 1
              disk:
                bus: virtio
            - name: seed
              disk:
                bus: virtio
      volumes:
        - name: root
          dataVolume:
            name: {name}-root
        - name: seed
          cloudInitNoCloud:
            userData: |
              #cloud-config
              hostname: {name}
"#
    )
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let f = Fixture { dir: tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir") };
        std::fs::copy(guest_dir().join("disk.img"), f.path("golden.img")).expect("copy golden disk");
        f
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn write_manifest(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(&format!("{name}.yaml"));
        std::fs::write(&p, text).expect("write manifest");
        p
    }
}

fn vm_run(manifest: &Path, disk: &Path, state: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let g = guest_dir();
    let mut cmd = Command::new(DISKPLANE);
    cmd.args(["vm", "run", "-f"]).arg(manifest);
    cmd.arg("--volume").arg(format!("root={}", disk.display()));
    cmd.arg("--kernel").arg(g.join("vmlinuz")).arg("--initrd").arg(g.join("initrd.img"));
    cmd.arg("--state-dir").arg(state);
    cmd.args(extra);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run diskplane")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read disk");
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn sector1(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read disk");
    text(&bytes[512..1024]).trim_end_matches('\0').trim_end().to_owned()
}

fn wait_for_serial(log: &Path, needle: &str) {
    let start = Instant::now();
    loop {
        let t = std::fs::read(log).map(|b| text(&b)).unwrap_or_default();
        if t.contains(needle) {
            return;
        }
        assert!(
            start.elapsed() < BOOT_TIMEOUT,
            "no {needle:?} in {} after {BOOT_TIMEOUT:?}:\n{t}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// --- boots -----------------------------------------------------------------------------------

#[test]
fn vm_run_boots_the_guest_prints_its_marker_and_reads_the_seed() {
    let f = Fixture::new();
    let m = f.write_manifest("g1", &manifest("g1", "Manual", ""));
    let out = vm_run(&m, &f.path("golden.img"), &f.path("state"), &["--accel", "tcg"], &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "exit {}:\n{stderr}\n{stdout}", out.status);
    assert!(stdout.contains("diskplane-guest: marker=MARKER-GOLDEN"), "{stdout}");
    assert!(stdout.contains("diskplane-guest: seed-meta-data=instance-id: g1.default"), "{stdout}");
    assert!(stdout.contains("diskplane-guest: seed-user-data=#cloud-config"), "{stdout}");
    assert!(stdout.contains("diskplane-guest: seed-label=cidata"), "{stdout}");
    assert!(stderr.contains("exited (exit code 0, guest-shutdown)"), "{stderr}");
    // The serial log holds the same console output.
    let log = text(&std::fs::read(f.path("state/serial.log")).expect("serial log"));
    assert!(log.contains("diskplane-guest: marker=MARKER-GOLDEN"), "{log}");
    // `vm console` prints it too.
    let out =
        Command::new(DISKPLANE).args(["vm", "console", "--state-dir"]).arg(f.path("state")).output().unwrap();
    assert!(
        out.status.success() && text(&out.stdout).contains("diskplane-guest: done"),
        "{}",
        text(&out.stderr)
    );
}

/// One VM runs on the golden disk (waiting for the power button) while a second boots on a
/// clone of it and writes to its disk: the clone gets the write, the golden disk's bytes do not
/// change, a third VM on the golden disk (still in use) cannot start, and the first VM stops
/// gracefully over QMP.
#[test]
fn a_vm_on_a_clone_boots_independently_and_its_writes_stay_on_the_clone() {
    let f = Fixture::new();
    let golden = f.path("golden.img");
    let clone = f.path("clone.img");
    let out = Command::new(DISKPLANE).arg("clone").arg(&golden).arg(&clone).output().unwrap();
    assert!(out.status.success(), "clone: {}", text(&out.stderr));
    let golden_before = sha256(&golden);

    // VM 1 on the golden disk, through the library.
    let spec = launcher::manifest::parse(&manifest("golden-vm", "Manual", "dp.wait")).expect("manifest");
    let g = guest_dir();
    let resolved = Resolved {
        volumes: [("root".to_owned(), golden.clone())].into(),
        kernel: Some(KernelFiles { kernel: g.join("vmlinuz"), initrd: Some(g.join("initrd.img")) }),
    };
    let opts = LaunchOptions { accel: AccelRequest::Tcg, ..LaunchOptions::default() };
    let mut launch = Launch::prepare(&spec, &resolved, &f.path("state1"), &opts).expect("prepare");
    let mut vm1 = launch.start().expect("start vm1");
    assert_eq!(vm1.status().expect("query-status"), "running");

    // VM 2 on the clone, through the CLI, writing to its disk.
    let m2 = f.write_manifest("clone-vm", &manifest("clone-vm", "Manual", "dp.write=CLONE-WRITE"));
    let out = vm_run(&m2, &clone, &f.path("state2"), &["--accel", "tcg"], &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "vm2: {}\n{stdout}", text(&out.stderr));
    assert!(stdout.contains("diskplane-guest: marker=MARKER-GOLDEN"), "{stdout}");
    assert!(stdout.contains("diskplane-guest: wrote=CLONE-WRITE"), "{stdout}");
    assert_eq!(sector1(&clone), "CLONE-WRITE");

    // VM 3 on the golden disk while VM 1 uses it: qemu's image lock refuses, and we say so.
    let m3 = f.write_manifest("third", &manifest("third", "Manual", ""));
    let out = vm_run(&m3, &golden, &f.path("state3"), &["--accel", "tcg"], &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "a second writer on the golden disk started");
    assert!(stderr.contains("qemu failed to start") && stderr.contains("lock"), "{stderr}");

    // VM 1 booted, found the golden marker, and stops gracefully.
    let log1 = f.path("state1/serial.log");
    wait_for_serial(&log1, "diskplane-guest: waiting for the power button on");
    let outcome = vm1.shutdown(Duration::from_secs(120)).expect("shutdown");
    assert!(!outcome.killed && outcome.success, "{outcome:?}");
    assert_eq!(outcome.shutdown_reason.as_deref(), Some("guest-shutdown"), "{outcome:?}");
    let log = text(&std::fs::read(&log1).unwrap());
    assert!(
        log.contains("diskplane-guest: marker=MARKER-GOLDEN") && log.contains("power button pressed"),
        "{log}"
    );
    assert!(!f.path("state1/qemu.pid").exists(), "pid file left behind");

    assert_eq!(sha256(&golden), golden_before, "the golden disk changed");
    assert_eq!(sector1(&golden), "");
}

/// RerunOnFailure: qemu killed under the VM is started again (with backoff); after
/// `--max-restarts 1` the second failure ends the run with a non-zero exit naming the signal.
#[test]
fn rerun_on_failure_restarts_a_killed_vm() {
    let f = Fixture::new();
    let m = f.write_manifest("rr", &manifest("rr", "RerunOnFailure", "dp.wait"));
    let g = guest_dir();
    let state = f.path("state");
    let child = Command::new(DISKPLANE)
        .args(["vm", "run", "--accel", "tcg", "--max-restarts", "1", "--no-console", "-f"])
        .arg(&m)
        .arg("--volume")
        .arg(format!("root={}", f.path("golden.img").display()))
        .arg("--kernel")
        .arg(g.join("vmlinuz"))
        .arg("--initrd")
        .arg(g.join("initrd.img"))
        .arg("--state-dir")
        .arg(&state)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn diskplane");
    let log = state.join("serial.log");
    let kill_qemu = || {
        let pid = std::fs::read_to_string(state.join("qemu.pid")).expect("pid file");
        let st = Command::new("kill").args(["-9", pid.trim()]).status().unwrap();
        assert!(st.success());
    };
    wait_for_serial(&log, "diskplane-guest: waiting for the power button");
    kill_qemu();
    // The second boot appends to the same serial log.
    let start = Instant::now();
    loop {
        let t = text(&std::fs::read(&log).unwrap());
        if t.matches("diskplane-guest: waiting for the power button").count() >= 2 {
            break;
        }
        assert!(start.elapsed() < BOOT_TIMEOUT, "no second boot:\n{t}");
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_qemu();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("exited (killed by signal 9)") && stderr.contains("restarting in"), "{stderr}");
    assert!(stderr.contains("run 2)"), "{stderr}");
    assert!(stderr.contains("vm default/rr: qemu killed by signal 9"), "{stderr}");
    assert_eq!(stderr.matches("started (pid").count(), 2, "{stderr}");
}

// --- bad input (no boot) ---------------------------------------------------------------------

#[test]
fn a_missing_volume_file_is_named() {
    let f = Fixture::new();
    let m = f.write_manifest("g", &manifest("g", "Manual", ""));
    let out = vm_run(&m, &f.path("nope.img"), &f.path("state"), &["--accel", "tcg"], &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("volume root") && stderr.contains("nope.img"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_volume_without_a_path_is_named() {
    let f = Fixture::new();
    let m = f.write_manifest("g", &manifest("g", "Manual", ""));
    let out = Command::new(DISKPLANE)
        .args(["vm", "run", "--accel", "tcg", "-f"])
        .arg(&m)
        .arg("--state-dir")
        .arg(f.path("state"))
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("volume root: no path given") && stderr.contains("--volume root=PATH"),
        "{stderr}"
    );
}

#[test]
fn a_missing_qemu_binary_is_named() {
    let f = Fixture::new();
    let m = f.write_manifest("g", &manifest("g", "Manual", ""));
    let out = vm_run(
        &m,
        &f.path("golden.img"),
        &f.path("state"),
        &["--accel", "tcg"],
        &[("DISKPLANE_QEMU", "/nonexistent/qemu")],
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot run qemu /nonexistent/qemu") && stderr.contains("No such file"),
        "{stderr}"
    );
}

#[test]
fn qemu_failing_to_start_reports_its_stderr() {
    let f = Fixture::new();
    // Guest memory qemu cannot provide on this machine: it exits at once with its own message.
    let m = f.write_manifest("g", &manifest("g", "Manual", "").replace("guest: 256Mi", "guest: 1Ti"));
    let out = vm_run(&m, &f.path("golden.img"), &f.path("state"), &["--accel", "tcg"], &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("qemu failed to start (exit code 1): qemu-system-x86_64:"), "{stderr}");
    assert!(!f.path("state/qemu.pid").exists());
}

#[test]
fn auto_accel_falls_back_to_tcg_with_a_warning_when_kvm_is_unusable() {
    let f = Fixture::new();
    let m = f.write_manifest("g", &manifest("g", "Manual", ""));
    let env = [("DISKPLANE_KVM_DEVICE", "/nonexistent/kvm")];
    let out =
        vm_run(&m, &f.path("golden.img"), &f.path("state"), &["--accel", "auto", "--print-command"], &env);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(" -accel tcg -cpu max "), "{stdout}");
    assert!(
        stderr.contains("warning: kvm is not usable (/nonexistent/kvm") && stderr.contains("TCG"),
        "{stderr}"
    );
    // Asked for explicitly, unusable KVM is an error, not a silent fallback.
    let out =
        vm_run(&m, &f.path("golden.img"), &f.path("state"), &["--accel", "kvm", "--print-command"], &env);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("accelerator kvm is not usable"), "{}", text(&out.stderr));
}

#[test]
fn auto_accel_refuses_the_kvm_pvm_software_hypervisor() {
    if !Path::new("/sys/module/kvm_pvm").exists() || !Path::new("/dev/kvm").exists() {
        eprintln!("skipped: this host has no kvm_pvm module");
        return;
    }
    let f = Fixture::new();
    let m = f.write_manifest("g", &manifest("g", "Manual", ""));
    let out =
        vm_run(&m, &f.path("golden.img"), &f.path("state"), &["--accel", "auto", "--print-command"], &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains(" -accel tcg "), "{stdout}");
    assert!(stderr.contains("kvm_pvm"), "{stderr}");
}

#[test]
fn the_seed_image_is_iso9660_labelled_cidata_for_isoinfo() {
    let f = Fixture::new();
    let ci = launcher::CloudInit {
        user_data: b"#cloud-config\nhostname: x\n".to_vec(),
        network_data: Some(b"version: 2\n".to_vec()),
    };
    let iso = f.path("seed.iso");
    launcher::seed::write(&iso, &ci, "vm1", "ns1").expect("seed");
    let out = Command::new("isoinfo").arg("-d").arg("-i").arg(&iso).output().expect("isoinfo (genisoimage)");
    let info = text(&out.stdout);
    assert!(info.contains("Volume id: cidata"), "{info}");
    assert!(info.contains("Joliet"), "{info}");
    for (name, want) in [
        ("/user-data", "#cloud-config\nhostname: x\n"),
        ("/meta-data", "instance-id: vm1.ns1\nlocal-hostname: vm1\n"),
        ("/network-config", "version: 2\n"),
    ] {
        let out = Command::new("isoinfo").args(["-J", "-i"]).arg(&iso).args(["-x", name]).output().unwrap();
        assert_eq!(text(&out.stdout), want, "{name}");
    }
    let out = Command::new("isoinfo").args(["-J", "-l", "-i"]).arg(&iso).output().unwrap();
    let listing = text(&out.stdout);
    for name in ["meta-data", "network-config", "user-data"] {
        assert!(listing.contains(name), "{listing}");
    }
}
