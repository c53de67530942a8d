//! Preparing a VM (resolving its disks, building the seed, choosing the accelerator) and
//! running qemu: [`Launch::prepare`] → [`Launch::start`] → [`RunningVm`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::accel::{AccelChoice, AccelProbe, AccelRequest};
use crate::argv::{HostCaps, KernelFiles, QemuConfig, ResolvedDisk, StatePaths, qemu_args};
use crate::error::{Error, Result};
use crate::qmp::Qmp;
use crate::seed;
use crate::spec::{DiskSource, VmSpec};

/// Where the caller found each volume's bytes.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// Volume name → raw file or block device (every volume but cloudInitNoCloud needs one).
    pub volumes: BTreeMap<String, PathBuf>,
    /// Kernel and initrd for `firmware.kernelBoot`.
    pub kernel: Option<KernelFiles>,
}

/// How to launch.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The qemu binary (default `qemu-system-x86_64`, looked up in `PATH`).
    pub qemu: PathBuf,
    /// `--accel`.
    pub accel: AccelRequest,
    /// Where the accelerator probe looks.
    pub probe: AccelProbe,
    /// How long qemu may take to answer on QMP after it starts.
    pub start_timeout: Duration,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            qemu: PathBuf::from("qemu-system-x86_64"),
            accel: AccelRequest::Auto,
            probe: AccelProbe::default(),
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// A VM ready to start (and restart): the resolved disks and the qemu command line.
#[derive(Debug, Clone)]
pub struct Launch {
    spec: VmSpec,
    disks: Vec<ResolvedDisk>,
    kernel: Option<KernelFiles>,
    accel: AccelChoice,
    caps: HostCaps,
    paths: StatePaths,
    qemu: PathBuf,
    start_timeout: Duration,
    warnings: Vec<String>,
}

/// Unix socket paths are limited to 108 bytes including the NUL.
const MAX_SOCKET_PATH: usize = 107;

impl Launch {
    /// Resolves every disk (checking that its file or device exists), writes the cloud-init seed
    /// into `state_dir` (created if needed), probes O_DIRECT per disk and chooses the accelerator.
    pub fn prepare(
        spec: &VmSpec,
        resolved: &Resolved,
        state_dir: &Path,
        opts: &LaunchOptions,
    ) -> Result<Launch> {
        let paths = StatePaths::new(state_dir);
        for name in resolved.volumes.keys() {
            if !spec.disks.iter().any(|d| &d.name == name) {
                return Err(Error::Volume {
                    name: name.clone(),
                    message: "the VM has no volume of that name".into(),
                });
            }
        }
        std::fs::create_dir_all(state_dir)
            .map_err(|e| Error::io(state_dir, "creating the state directory", e))?;
        if paths.serial_socket().as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::io(
                state_dir,
                "state directory",
                std::io::Error::other(format!(
                    "path too long for unix sockets (max {MAX_SOCKET_PATH} bytes)"
                )),
            ));
        }
        let mut disks = Vec::with_capacity(spec.disks.len());
        for d in &spec.disks {
            let (path, ephemeral) = match &d.source {
                DiskSource::CloudInit(ci) => {
                    let path = state_dir.join(format!("cidata-{}.iso", d.name));
                    seed::write(&path, ci, &spec.name, &spec.namespace)?;
                    (path, false)
                }
                other => {
                    let path = resolved.volumes.get(&d.name).ok_or_else(|| Error::Volume {
                        name: d.name.clone(),
                        message: format!("no path given for this {} (--volume {}=PATH)", kind(other), d.name),
                    })?;
                    check_volume(&d.name, path)?;
                    let path = std::fs::canonicalize(path).map_err(|e| Error::Volume {
                        name: d.name.clone(),
                        message: format!("{}: {e}", path.display()),
                    })?;
                    (path, matches!(other, DiskSource::ContainerDisk { .. }))
                }
            };
            let read_only = d.read_only || matches!(d.source, DiskSource::CloudInit(_));
            disks.push(ResolvedDisk {
                name: d.name.clone(),
                direct_io: direct_io_works(&path),
                path,
                read_only,
                ephemeral,
                boot_index: d.boot_order,
                serial: d.serial.clone(),
            });
        }
        let kernel = match (&spec.kernel_boot, &resolved.kernel) {
            (Some(_), None) => {
                return Err(Error::invalid(
                    "spec.template.spec.domain.firmware.kernelBoot",
                    "kernel boot needs a kernel file from the caller (--kernel PATH)",
                ));
            }
            (_, Some(k)) => {
                for p in std::iter::once(&k.kernel).chain(k.initrd.as_ref()) {
                    if !p.is_file() {
                        return Err(Error::io(
                            p,
                            "kernel boot",
                            std::io::Error::from(std::io::ErrorKind::NotFound),
                        ));
                    }
                }
                Some(k.clone())
            }
            (None, None) => None,
        };
        let accel = opts.probe.choose(opts.accel)?;
        let warnings = accel.warning.iter().cloned().collect();
        Ok(Launch {
            spec: spec.clone(),
            disks,
            kernel,
            accel,
            caps: HostCaps { io_uring: io_uring_enabled() },
            paths,
            qemu: opts.qemu.clone(),
            start_timeout: opts.start_timeout,
            warnings,
        })
    }

    /// Warnings for the user (accelerator fallback, io_uring fallback).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The accelerator chosen.
    pub fn accel(&self) -> &AccelChoice {
        &self.accel
    }

    /// The VM's files.
    pub fn paths(&self) -> &StatePaths {
        &self.paths
    }

    /// The VM spec.
    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// The qemu binary and its arguments.
    pub fn command_line(&self) -> (PathBuf, Vec<OsString>) {
        let cfg = QemuConfig {
            spec: &self.spec,
            disks: &self.disks,
            accel: self.accel.accel,
            paths: &self.paths,
            kernel: self.kernel.as_ref(),
            caps: self.caps,
        };
        (self.qemu.clone(), qemu_args(&cfg))
    }

    /// Starts qemu and waits until it answers on QMP. When qemu refuses io_uring (a seccomp
    /// profile can forbid it) the disks fall back to native/threads AIO once, with a warning.
    pub fn start(&mut self) -> Result<RunningVm> {
        match self.start_once() {
            Err(Error::QemuFailed { stderr, .. }) if self.caps.io_uring && stderr.contains("io_uring") => {
                self.caps.io_uring = false;
                self.warnings.push(format!("qemu cannot use io_uring ({stderr}): using native/threads AIO"));
                self.start_once()
            }
            other => other,
        }
    }

    fn start_once(&self) -> Result<RunningVm> {
        for sock in [self.paths.qmp_socket(), self.paths.serial_socket()] {
            match std::fs::remove_file(&sock) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&sock, "removing a stale socket", e)),
            }
        }
        let stderr_path = self.paths.qemu_stderr();
        let stderr = File::create(&stderr_path)
            .map_err(|e| Error::io(&stderr_path, "creating qemu's stderr log", e))?;
        let (program, args) = self.command_line();
        let started = Instant::now();
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|source| Error::QemuMissing { path: program.clone(), source })?;
        let pid_file = self.paths.pid_file();
        if let Err(e) = std::fs::write(&pid_file, format!("{}\n", child.id())) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::io(&pid_file, "writing the pid file", e));
        }
        let qmp = match self.wait_for_qmp(&mut child) {
            Ok(q) => q,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&pid_file);
                return Err(e);
            }
        };
        Ok(RunningVm { child, qmp: Some(qmp), paths: self.paths.clone(), started, outcome: None })
    }

    fn wait_for_qmp(&self, child: &mut Child) -> Result<Qmp> {
        let deadline = Instant::now() + self.start_timeout;
        let sock = self.paths.qmp_socket();
        loop {
            if let Some(status) =
                child.try_wait().map_err(|e| Error::io(&self.qemu, "waiting for qemu", e))?
            {
                return Err(Error::QemuFailed {
                    status: describe(status),
                    stderr: stderr_tail(&self.paths.qemu_stderr()),
                });
            }
            if sock.exists() {
                match Qmp::connect(&sock, Duration::from_secs(10)) {
                    Ok(q) => return Ok(q),
                    Err(Error::Io { source, .. })
                        if matches!(
                            source.kind(),
                            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                        ) => {}
                    Err(e) => {
                        // qemu listens on QMP before it opens the disks: a failure there closes
                        // the socket. Report qemu's own error when it exited.
                        return Err(match exited_within(child, Duration::from_secs(2)) {
                            Some(status) => Error::QemuFailed {
                                status: describe(status),
                                stderr: stderr_tail(&self.paths.qemu_stderr()),
                            },
                            None => e,
                        });
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "after {:?} waiting for qemu's QMP socket {}",
                    self.start_timeout,
                    sock.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// qemu's exit status if it exits within `limit`.
fn exited_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

fn kind(s: &DiskSource) -> &'static str {
    match s {
        DiskSource::DataVolume { .. } => "dataVolume",
        DiskSource::Pvc { .. } => "persistentVolumeClaim",
        DiskSource::ContainerDisk { .. } => "containerDisk",
        DiskSource::CloudInit(_) => "cloudInitNoCloud",
    }
}

fn check_volume(name: &str, path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::Volume { name: name.to_owned(), message: format!("{}: {e}", path.display()) })?;
    let ft = meta.file_type();
    if !(ft.is_file() || ft.is_block_device()) {
        return Err(Error::Volume {
            name: name.to_owned(),
            message: format!("{} is neither a regular file nor a block device", path.display()),
        });
    }
    Ok(())
}

/// Whether `path` can be opened with O_DIRECT (not on tmpfs, for example).
fn direct_io_works(path: &Path) -> bool {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECT | OFlags::CLOEXEC, Mode::empty()).is_ok()
}

/// io_uring is on unless `/proc/sys/kernel/io_uring_disabled` says otherwise.
fn io_uring_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map(|s| s.trim() == "0").unwrap_or(true)
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// The last few lines of qemu's stderr, on one line.
fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() { "(no output on stderr)".to_owned() } else { tail }
}

/// How a qemu run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitOutcome {
    /// qemu's exit status, described (`exit code 0`, `killed by signal 9`).
    pub status: String,
    /// qemu exited with code 0 (the guest powered off, or a requested stop succeeded).
    pub success: bool,
    /// The `reason` of qemu's SHUTDOWN event when seen (`guest-shutdown`, `host-qmp-quit`...).
    pub shutdown_reason: Option<String>,
    /// We had to kill qemu (graceful stop timed out, or [`RunningVm::kill`]).
    pub killed: bool,
    /// How long it ran.
    pub ran_for: Duration,
}

impl ExitOutcome {
    /// Whether the run counts as a failure for `RerunOnFailure`.
    pub fn is_failure(&self) -> bool {
        !self.success
    }
}

/// A running qemu, supervised over QMP.
#[derive(Debug)]
pub struct RunningVm {
    child: Child,
    qmp: Option<Qmp>,
    paths: StatePaths,
    started: Instant,
    outcome: Option<ExitOutcome>,
}

impl RunningVm {
    /// qemu's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The VM's files.
    pub fn paths(&self) -> &StatePaths {
        &self.paths
    }

    /// qemu's run state from `query-status` (`running`, `paused`, `shutdown`, ...).
    pub fn status(&mut self) -> Result<String> {
        match self.qmp.as_mut() {
            Some(q) => q.status(),
            None => Err(Error::Qmp("the QMP connection is closed".into())),
        }
    }

    /// Asks the guest to power off (ACPI `system_powerdown`), waits up to `grace`, then kills
    /// qemu.
    pub fn shutdown(&mut self, grace: Duration) -> Result<ExitOutcome> {
        if let Some(o) = self.poll()? {
            return Ok(o);
        }
        if let Some(q) = self.qmp.as_mut() {
            // qemu may exit between the poll and the command: that is a stop too.
            let _ = q.execute("system_powerdown", None);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(o) = self.poll()? {
                return Ok(o);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill()
    }

    /// Kills qemu (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> Result<ExitOutcome> {
        if let Some(o) = self.poll()? {
            return Ok(o);
        }
        let _ = self.child.kill();
        let status =
            self.child.wait().map_err(|e| Error::io(self.paths.pid_file(), "waiting for qemu", e))?;
        Ok(self.finish(status, true))
    }

    /// Waits for qemu to exit by itself.
    pub fn wait(&mut self) -> Result<ExitOutcome> {
        if let Some(o) = &self.outcome {
            return Ok(o.clone());
        }
        let status =
            self.child.wait().map_err(|e| Error::io(self.paths.pid_file(), "waiting for qemu", e))?;
        Ok(self.finish(status, false))
    }

    /// The outcome if qemu has exited, without blocking.
    pub fn poll(&mut self) -> Result<Option<ExitOutcome>> {
        if let Some(o) = &self.outcome {
            return Ok(Some(o.clone()));
        }
        match self.child.try_wait().map_err(|e| Error::io(self.paths.pid_file(), "waiting for qemu", e))? {
            Some(status) => Ok(Some(self.finish(status, false))),
            None => Ok(None),
        }
    }

    fn finish(&mut self, status: ExitStatus, killed: bool) -> ExitOutcome {
        let shutdown_reason = self.qmp.take().and_then(|mut q| {
            // The SHUTDOWN event precedes qemu's exit: read what is left on the socket.
            q.drain();
            q.events()
                .iter()
                .rev()
                .find(|e| e.get("event").and_then(|v| v.as_str()) == Some("SHUTDOWN"))
                .and_then(|e| e.pointer("/data/reason")?.as_str().map(str::to_owned))
        });
        let _ = std::fs::remove_file(self.paths.pid_file());
        let outcome = ExitOutcome {
            status: describe(status),
            success: status.success(),
            shutdown_reason,
            killed,
            ran_for: self.started.elapsed(),
        };
        self.outcome = Some(outcome.clone());
        outcome
    }
}

impl Drop for RunningVm {
    /// A VM is never left running by accident: dropping a running one kills qemu.
    fn drop(&mut self) {
        if self.outcome.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: t\nspec:\n  template:\n    spec:\n      domain:\n        memory:\n          guest: 64Mi\n      volumes:\n        - name: root\n          persistentVolumeClaim:\n            claimName: root-pvc\n        - name: seed\n          cloudInitNoCloud:\n            userData: \"#cloud-config\\n\"\n";

    fn prepare(volumes: &[(&str, PathBuf)], state: &Path) -> Result<Launch> {
        let spec = crate::manifest::parse(VM).unwrap();
        let resolved = Resolved {
            volumes: volumes.iter().map(|(n, p)| ((*n).to_owned(), p.clone())).collect(),
            kernel: None,
        };
        let opts = LaunchOptions { accel: AccelRequest::Tcg, ..LaunchOptions::default() };
        Launch::prepare(&spec, &resolved, state, &opts)
    }

    #[test]
    fn prepare_resolves_disks_and_writes_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("root.img");
        std::fs::write(&disk, vec![0u8; 4096]).unwrap();
        let launch = prepare(&[("root", disk.clone())], &dir.path().join("state")).unwrap();
        let seed = dir.path().join("state/cidata-seed.iso");
        assert!(std::fs::read(&seed).unwrap().len() > 25 * 2048);
        let (_, args) = launch.command_line();
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        let drives: Vec<&String> = args.windows(2).filter(|w| w[0] == "-drive").map(|w| &w[1]).collect();
        assert_eq!(drives.len(), 2);
        assert!(drives[0].starts_with(&format!("file={},", disk.display())), "{drives:?}");
        assert!(drives[1].contains("cidata-seed.iso") && drives[1].contains("readonly=on"), "{drives:?}");
    }

    #[test]
    fn a_volume_without_a_path_a_missing_file_and_an_unknown_name_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let e = prepare(&[], &state).unwrap_err().to_string();
        assert!(e.contains("volume root: no path given for this persistentVolumeClaim"), "{e}");
        let e = prepare(&[("root", dir.path().join("missing.img"))], &state).unwrap_err().to_string();
        assert!(e.contains("volume root") && e.contains("missing.img"), "{e}");
        let e = prepare(&[("rot", dir.path().join("x"))], &state).unwrap_err().to_string();
        assert!(e.contains("volume rot: the VM has no volume of that name"), "{e}");
        let e = prepare(&[("root", dir.path().to_path_buf())], &state).unwrap_err().to_string();
        assert!(e.contains("neither a regular file nor a block device"), "{e}");
    }

    #[test]
    fn kernel_boot_without_a_kernel_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let text = VM.replace(
            "          guest: 64Mi\n",
            "          guest: 64Mi\n        firmware:\n          kernelBoot:\n            kernelArgs: quiet\n",
        );
        let spec = crate::manifest::parse(&text).unwrap();
        let disk = dir.path().join("root.img");
        std::fs::write(&disk, b"").unwrap();
        let resolved = Resolved { volumes: [("root".to_owned(), disk)].into(), kernel: None };
        let e =
            Launch::prepare(&spec, &resolved, dir.path(), &LaunchOptions::default()).unwrap_err().to_string();
        assert!(e.contains("firmware.kernelBoot") && e.contains("--kernel"), "{e}");
    }
}
