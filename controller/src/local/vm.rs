//! VirtualMachines in embedded mode: each stored `kubevirt.io/v1` VirtualMachine gets a
//! reconciler pass per loop turn, and a supervisor thread (the `launcher` crate) while it runs.
//!
//! ```text
//! reconcile_vms: for each VM: desired (runStrategy, start/stop requests)
//!   ├─ wanted, not running: create dataVolumeTemplates ─► volumes Succeeded? ─► Launch::prepare ─► thread
//!   │                         (Pending: a DataVolume is missing; Provisioning: not Succeeded yet)
//!   ├─ not wanted, running:  ask the thread to stop (QMP system_powerdown, kill after the grace)
//!   └─ status.printableStatus from the thread's state: Starting → Running → Stopping → Stopped / Failed
//! ```
//!
//! ## Main types
//! - [`VmOptions`]: qemu binary, accelerator, kernel for `firmware.kernelBoot`, stop grace.
//! - [`Vms`]: the running VMs of one driver (supervisor threads and their states).
//!
//! ## Run strategies and requests
//! `Always` runs (and restarts after any exit with backoff), `RerunOnFailure` restarts after a
//! failure only, `Halted` never runs, `Manual` runs while the annotation
//! [`RUN_REQUEST`] is `Running`. `start` on a Halted VM sets `runStrategy: Always`, `stop` on an
//! Always / RerunOnFailure VM sets `runStrategy: Halted` (as `virtctl` does); on a Manual VM
//! they set the annotation. Every `start` bumps [`START_GENERATION`], so a VM whose qemu ended
//! is started again.
//!
//! ## Caveats
//! - Volumes resolve to the pool's `disk.img` of the DataVolume of that name (a
//!   `persistentVolumeClaim` is the DataVolume of the claim's name); containerDisk volumes are
//!   refused (import the image with a registry DataVolume instead).
//! - `firmware.kernelBoot` uses the kernel and initrd given to `serve` ([`VmOptions::kernel`]):
//!   kernel container images are not pulled.
//! - On SIGINT / SIGTERM `serve` stops every VM gracefully ([`Vms::stop_all`]) and starts them
//!   again on its next start per their run strategy. After `kill -9` of `serve`, qemu keeps
//!   running as an orphan; the next `serve` kills it (its pid file in the VM's state dir) before
//!   starting the VM again, which the guest sees as a power cut.
//!   After SIGTERM the stored status still reads as it was (`Running`) until the next `serve`
//!   reconciles it.
//! - A DataVolume is refused deletion (409) while a VM's qemu is starting or running on it; the
//!   check is made before the delete, so a VM starting in that same instant can still lose its
//!   volume (qemu keeps its open file; the VM fails on its next start).
//! - Preparing a launch (seed image, O_DIRECT probe, killing an orphan) runs on the reconcile
//!   loop; qemu itself is supervised on one thread per running VM.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use launcher::argv::KernelFiles;
use launcher::{AccelRequest, DiskSource, Launch, LaunchOptions, Resolved, RestartPolicy, RunStrategy};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::worker::one_line;
use super::{DATAVOLUMES, Driver, Error, Result};
use crate::manifest::{Manifest, to_manifest};
use crate::validate::validate_manifest;

/// Resource name of VirtualMachines in paths and store keys.
pub const VIRTUALMACHINES: &str = "virtualmachines";
/// Annotation holding a Manual VM's requested state (`Running` or `Stopped`).
pub const RUN_REQUEST: &str = "vm.diskplane.io/run-request";
/// Annotation counting `start` requests: a change starts a VM whose qemu ended.
pub const START_GENERATION: &str = "vm.diskplane.io/start-generation";
/// The API version of VirtualMachines.
pub const VM_API_VERSION: &str = "kubevirt.io/v1";

/// How VMs are launched.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The qemu binary.
    pub qemu: PathBuf,
    /// The accelerator (`auto`: KVM only when it really works, TCG otherwise).
    pub accel: AccelRequest,
    /// Kernel and initrd for VMs with `firmware.kernelBoot`.
    pub kernel: Option<KernelFiles>,
    /// How long a stopped guest may take to power off before qemu is killed.
    pub grace: Duration,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            qemu: PathBuf::from("qemu-system-x86_64"),
            accel: AccelRequest::Auto,
            kernel: None,
            grace: Duration::from_secs(60),
        }
    }
}

/// What a supervisor thread is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RunState {
    Starting,
    Running {
        pid: u32,
    },
    Stopping,
    Restarting {
        after: String,
    },
    /// qemu ended for good; `requested` when a stop asked for it.
    Exited {
        status: String,
        success: bool,
        requested: bool,
    },
    /// qemu could not be started or supervised.
    Failed(String),
}

impl RunState {
    fn terminal(&self) -> bool {
        matches!(self, RunState::Exited { .. } | RunState::Failed(_))
    }
}

#[derive(Debug)]
struct Ctl {
    state: Mutex<RunState>,
    stop: AtomicBool,
    wake: Arc<Notify>,
}

impl Ctl {
    fn set(&self, state: RunState) {
        if let Ok(mut s) = self.state.lock() {
            *s = state;
        }
        self.wake.notify_one();
    }

    fn get(&self) -> RunState {
        self.state.lock().map(|s| s.clone()).unwrap_or(RunState::Failed("state lock poisoned".into()))
    }
}

/// One VM's supervisor.
#[derive(Debug)]
struct Entry {
    uid: String,
    /// `(metadata.generation, start generation)` this run was started for.
    run_id: (i64, i64),
    /// DataVolumes (same namespace) its disks use.
    data_volumes: Vec<String>,
    ctl: Arc<Ctl>,
    thread: Option<JoinHandle<()>>,
}

/// The VMs of one driver.
#[derive(Debug)]
pub struct Vms {
    entries: Mutex<HashMap<(String, String), Entry>>,
    opts: VmOptions,
}

impl Vms {
    /// No VMs yet.
    pub fn new(opts: VmOptions) -> Vms {
        Vms { entries: Mutex::new(HashMap::new()), opts }
    }

    /// The VM (`namespace/name`) whose qemu is up or starting on the DataVolume
    /// `namespace/data_volume`, if any.
    pub fn user_of(&self, namespace: &str, data_volume: &str) -> Option<String> {
        let entries = self.entries.lock().ok()?;
        entries.iter().find_map(|((ns, name), e)| {
            (ns == namespace && !e.ctl.get().terminal() && e.data_volumes.iter().any(|d| d == data_volume))
                .then(|| format!("{ns}/{name}"))
        })
    }

    /// Stops every VM gracefully (in parallel) and waits for their threads.
    pub fn stop_all(&self) {
        let threads: Vec<_> = match self.entries.lock() {
            Ok(mut entries) => entries
                .values_mut()
                .filter_map(|e| {
                    e.ctl.stop.store(true, Ordering::Release);
                    e.thread.take()
                })
                .collect(),
            Err(_) => return,
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

/// The state directory of a VM: `DATA_DIR/vms/<ns>/<name>`.
pub fn state_dir(data_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    data_dir.join("vms").join(namespace).join(name)
}

/// The run strategy of a stored VM object (`runStrategy`, else `running`, else Halted).
fn strategy(object: &Value) -> std::result::Result<RunStrategy, String> {
    let spec = &object["spec"];
    match (spec["runStrategy"].as_str(), spec["running"].as_bool()) {
        (Some("Always"), _) => Ok(RunStrategy::Always),
        (Some("Halted"), _) => Ok(RunStrategy::Halted),
        (Some("Manual"), _) => Ok(RunStrategy::Manual),
        (Some("RerunOnFailure"), _) => Ok(RunStrategy::RerunOnFailure),
        (Some("Once"), _) => Ok(RunStrategy::Once),
        (Some(other), _) => Err(format!("unknown runStrategy {other:?}")),
        (None, Some(true)) => Ok(RunStrategy::Always),
        (None, _) => Ok(RunStrategy::Halted),
    }
}

fn strategy_name(s: RunStrategy) -> &'static str {
    match s {
        RunStrategy::Always => "Always",
        RunStrategy::Halted => "Halted",
        RunStrategy::Manual => "Manual",
        RunStrategy::RerunOnFailure => "RerunOnFailure",
        RunStrategy::Once => "Once",
        _ => "Unknown",
    }
}

fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["annotations"][key].as_str()
}

fn start_generation(object: &Value) -> i64 {
    annotation(object, START_GENERATION).and_then(|g| g.parse().ok()).unwrap_or(0)
}

/// Whether the VM should be running now.
fn wanted(strategy: RunStrategy, object: &Value) -> bool {
    match strategy {
        RunStrategy::Halted => false,
        RunStrategy::Manual => annotation(object, RUN_REQUEST) == Some("Running"),
        _ => true,
    }
}

/// Checks a VirtualMachine object for the API: `Err((field, message))` when it would not boot.
pub fn validate(object: &Value) -> std::result::Result<(), (String, String)> {
    let text = serde_json::to_string(object).map_err(|e| ("".to_owned(), e.to_string()))?;
    match launcher::manifest::parse(&text) {
        Ok(_) => Ok(()),
        Err(launcher::Error::Invalid { field, message }) => Err((field, message)),
        Err(launcher::Error::Unsupported { field, message }) => {
            Err((field, format!("{message} is not supported")))
        }
        Err(e) => Err(("".to_owned(), e.to_string())),
    }
}

/// What `start` / `stop` change on a VM (the store's `modify` closure), or why they refuse.
///
/// # Errors
/// A message when the request makes no sense for the VM's run strategy.
pub fn request(object: &Value, start: bool) -> std::result::Result<impl FnOnce(&mut Value) + use<>, String> {
    let strategy = strategy(object)?;
    let running = object["status"]["printableStatus"].as_str().unwrap_or("");
    let already_stopped = matches!(running, "Stopped" | "Failed" | "");
    if !start && (strategy == RunStrategy::Halted || (strategy == RunStrategy::Manual && already_stopped)) {
        return Err(format!("VM is not running (runStrategy {})", strategy_name(strategy)));
    }
    if start && strategy == RunStrategy::Always && running == "Running" {
        return Err("VM is already running".into());
    }
    let next_gen = start_generation(object) + 1;
    Ok(move |o: &mut Value| {
        let spec = &mut o["spec"];
        match (strategy, start) {
            (RunStrategy::Halted, true)
            | (RunStrategy::Always | RunStrategy::RerunOnFailure | RunStrategy::Once, false) => {
                spec["runStrategy"] = json!(if start { "Always" } else { "Halted" });
                if let Some(map) = spec.as_object_mut() {
                    map.remove("running");
                }
            }
            _ => {}
        }
        if !o["metadata"]["annotations"].is_object() {
            o["metadata"]["annotations"] = json!({});
        }
        let annotations = &mut o["metadata"]["annotations"];
        if strategy == RunStrategy::Manual {
            annotations[RUN_REQUEST] = json!(if start { "Running" } else { "Stopped" });
        }
        if start {
            annotations[START_GENERATION] = json!(next_gen.to_string());
        }
    })
}

/// The `status` written for a VM.
struct Status {
    printable: &'static str,
    reason: &'static str,
    message: String,
}

impl Status {
    fn new(printable: &'static str, reason: &'static str, message: impl Into<String>) -> Status {
        Status { printable, reason, message: message.into() }
    }

    fn to_value(&self, strategy: Option<RunStrategy>) -> Value {
        let ready = self.printable == "Running";
        let mut v = json!({
            "printableStatus": self.printable,
            "ready": ready,
            "created": matches!(self.printable, "Starting" | "Running" | "Stopping"),
            "conditions": [{
                "type": "Ready",
                "status": if ready { "True" } else { "False" },
                "reason": self.reason,
                "message": self.message,
            }],
        });
        if let Some(s) = strategy {
            v["runStrategy"] = json!(strategy_name(s));
        }
        v
    }
}

fn state_status(state: &RunState) -> Status {
    match state {
        RunState::Starting => Status::new("Starting", "Starting", "qemu is starting"),
        RunState::Running { pid } => Status::new("Running", "Running", format!("qemu pid {pid}")),
        RunState::Stopping => Status::new("Stopping", "Stopping", "the guest is asked to power off"),
        RunState::Restarting { after } => {
            Status::new("Starting", "Restarting", format!("restarting after qemu exited ({after})"))
        }
        RunState::Exited { status, requested: true, .. } => {
            Status::new("Stopped", "Stopped", format!("stopped on request (qemu {status})"))
        }
        RunState::Exited { status, success: true, .. } => {
            Status::new("Stopped", "GuestPoweredOff", format!("the guest powered off (qemu {status})"))
        }
        RunState::Exited { status, .. } => Status::new("Failed", "QemuFailed", format!("qemu {status}")),
        RunState::Failed(message) => Status::new("Failed", "QemuFailed", message.clone()),
    }
}

impl Driver {
    /// Wakes the reconcile loop (after a change it must act on).
    pub fn wake_loop(&self) {
        self.wake.notify_one();
    }

    /// The data dir (`state.redb`, `volumes/`, `vms/`).
    pub fn data_dir(&self) -> &Path {
        &self.opts.data_dir
    }

    /// One pass over every VirtualMachine (and over supervisors whose VM is gone). Never
    /// reports work: supervisor threads wake the loop when their state changes.
    ///
    /// # Errors
    /// [`Error::Store`] when the VMs cannot be listed.
    pub fn reconcile_vms(self: &Arc<Self>) -> Result<bool> {
        let objects = self.store.list(VIRTUALMACHINES, None)?;
        let mut seen = Vec::with_capacity(objects.len());
        for object in objects {
            let ns = object["metadata"]["namespace"].as_str().unwrap_or("default").to_owned();
            let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let uid = object["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
            seen.push((ns.clone(), name.clone(), uid.clone()));
            let status = self.reconcile_vm(&ns, &name, &uid, &object);
            let strategy = strategy(&object).ok();
            let value = status.to_value(strategy);
            if object["status"] != value {
                if object["status"]["printableStatus"] != value["printableStatus"] {
                    eprintln!("diskplane serve: vm {ns}/{name}: {} ({})", status.printable, status.message);
                }
                self.store.update_status(VIRTUALMACHINES, &ns, &name, &uid, value)?;
            }
        }
        // Supervisors of deleted (or recreated) VMs: stop them, forget them once ended.
        if let Ok(mut entries) = self.vms.entries.lock() {
            entries.retain(|(ns, name), e| {
                if seen.iter().any(|(n, m, u)| n == ns && m == name && *u == e.uid) {
                    return true;
                }
                e.ctl.stop.store(true, Ordering::Release);
                !e.ctl.get().terminal()
            });
        }
        Ok(false)
    }

    fn reconcile_vm(self: &Arc<Self>, ns: &str, name: &str, uid: &str, object: &Value) -> Status {
        let strategy = match strategy(object) {
            Ok(s) => s,
            Err(m) => return Status::new("Failed", "InvalidSpec", m),
        };
        let run_id = (object["metadata"]["generation"].as_i64().unwrap_or(1), start_generation(object));
        let key = (ns.to_owned(), name.to_owned());
        let current = self.vms.entries.lock().ok().and_then(|entries| {
            entries.get(&key).filter(|e| e.uid == uid).map(|e| (Arc::clone(&e.ctl), e.run_id))
        });
        if !wanted(strategy, object) {
            return match current {
                Some((ctl, _)) => {
                    ctl.stop.store(true, Ordering::Release);
                    state_status(&ctl.get())
                }
                None => Status::new("Stopped", "Stopped", format!("runStrategy {}", strategy_name(strategy))),
            };
        }
        if let Some((ctl, id)) = &current {
            let state = ctl.get();
            if !state.terminal() || *id == run_id {
                return state_status(&state);
            }
        }
        match self.launch(ns, name, uid, object) {
            Ok((launch, data_volumes)) => {
                let ctl = Arc::new(Ctl {
                    state: Mutex::new(RunState::Starting),
                    stop: AtomicBool::new(false),
                    wake: Arc::clone(&self.wake),
                });
                let policy = strategy.restart_policy();
                let grace = self.vms.opts.grace;
                let thread_ctl = Arc::clone(&ctl);
                let spawned = std::thread::Builder::new()
                    .name(format!("vm-{ns}-{name}"))
                    .spawn(move || supervise(launch, policy, &thread_ctl, grace));
                let thread = match spawned {
                    Ok(t) => t,
                    Err(e) => return Status::new("Failed", "QemuFailed", format!("starting a thread: {e}")),
                };
                eprintln!("diskplane serve: vm {ns}/{name}: starting");
                if let Ok(mut entries) = self.vms.entries.lock() {
                    entries.insert(
                        key,
                        Entry { uid: uid.to_owned(), run_id, data_volumes, ctl, thread: Some(thread) },
                    );
                }
                Status::new("Starting", "Starting", "qemu is starting")
            }
            Err(status) => status,
        }
    }

    /// Creates missing template DataVolumes, checks every volume and prepares qemu. `Err` is
    /// the status to report (Pending, Provisioning or Failed).
    fn launch(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        object: &Value,
    ) -> std::result::Result<(Launch, Vec<String>), Status> {
        let text =
            serde_json::to_string(object).map_err(|e| Status::new("Failed", "InvalidSpec", e.to_string()))?;
        let spec = launcher::manifest::parse(&text)
            .map_err(|e| Status::new("Failed", "InvalidSpec", one_line(&e)))?;
        for template in &spec.data_volume_templates {
            self.create_template(ns, name, uid, template)?;
        }
        let mut resolved = Resolved { kernel: None, ..Resolved::default() };
        let mut data_volumes = Vec::new();
        for disk in &spec.disks {
            let dv_name = match &disk.source {
                DiskSource::DataVolume { name } => name,
                DiskSource::Pvc { claim_name, .. } => claim_name,
                DiskSource::ContainerDisk { image } => {
                    return Err(Status::new(
                        "Failed",
                        "Unsupported",
                        format!(
                            "volume {}: containerDisk {image} is not supported by serve; import it with a DataVolume (registry source) instead",
                            disk.name
                        ),
                    ));
                }
                _ => continue,
            };
            let dv = self.store.get(DATAVOLUMES, ns, dv_name).ok().flatten();
            let Some(dv) = dv else {
                return Err(Status::new(
                    "Pending",
                    "DataVolumeNotFound",
                    format!("volume {}: DataVolume {ns}/{dv_name} not found", disk.name),
                ));
            };
            let phase = dv["status"]["phase"].as_str().unwrap_or("Pending");
            if phase != "Succeeded" {
                let progress =
                    dv["status"]["progress"].as_str().map(|p| format!(" ({p})")).unwrap_or_default();
                return Err(Status::new(
                    "Provisioning",
                    "DataVolumeNotReady",
                    format!("volume {}: DataVolume {ns}/{dv_name} is {phase}{progress}", disk.name),
                ));
            }
            resolved.volumes.insert(disk.name.clone(), self.pool.volume_path(ns, dv_name));
            data_volumes.push(dv_name.clone());
        }
        if spec.kernel_boot.is_some() {
            match &self.vms.opts.kernel {
                Some(k) => resolved.kernel = Some(k.clone()),
                None => {
                    return Err(Status::new(
                        "Failed",
                        "KernelMissing",
                        "firmware.kernelBoot needs the kernel given to serve (--vm-kernel)",
                    ));
                }
            }
        }
        let dir = state_dir(&self.opts.data_dir, ns, name);
        kill_orphan(&dir);
        let opts = LaunchOptions {
            qemu: self.vms.opts.qemu.clone(),
            accel: self.vms.opts.accel,
            ..LaunchOptions::default()
        };
        let launch = Launch::prepare(&spec, &resolved, &dir, &opts)
            .map_err(|e| Status::new("Failed", "QemuFailed", one_line(&e)))?;
        for w in launch.warnings() {
            eprintln!("diskplane serve: vm {ns}/{name}: warning: {w}");
        }
        Ok((launch, data_volumes))
    }

    /// Creates a `dataVolumeTemplates` entry as a DataVolume unless one of that name exists.
    fn create_template(
        &self,
        ns: &str,
        vm: &str,
        vm_uid: &str,
        template: &launcher::manifest::DataVolumeTemplate,
    ) -> std::result::Result<(), Status> {
        let dv_name = &template.metadata.name;
        if self.store.get(DATAVOLUMES, ns, dv_name).ok().flatten().is_some() {
            return Ok(());
        }
        let object = json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1",
            "kind": "DataVolume",
            "metadata": {
                "name": dv_name,
                "namespace": ns,
                "ownerReferences": [{
                    "apiVersion": VM_API_VERSION, "kind": "VirtualMachine", "name": vm, "uid": vm_uid,
                }],
            },
            "spec": template.spec,
        });
        let invalid = |m: String| {
            Status::new("Failed", "InvalidDataVolumeTemplate", format!("dataVolumeTemplate {dv_name}: {m}"))
        };
        let manifest = to_manifest(1, object.clone()).map_err(|e| invalid(e.to_string()))?;
        if !matches!(manifest, Manifest::DataVolume(_)) {
            return Err(invalid("not a DataVolume".into()));
        }
        validate_manifest(&manifest).map_err(|e| invalid(format!("{}: {}", e.field, e.message)))?;
        match self.create(DATAVOLUMES, ns, object) {
            Ok(_) | Err(Error::AlreadyExists { .. }) => {
                eprintln!("diskplane serve: vm {ns}/{vm}: created DataVolume {ns}/{dv_name}");
                Ok(())
            }
            Err(e) => Err(invalid(one_line(&e))),
        }
    }
}

/// Kills a qemu left running by a `serve` that was killed (its pid file in the state dir,
/// checked against `/proc/PID/cmdline` so a reused pid is left alone).
fn kill_orphan(state_dir: &Path) {
    let pid_file = state_dir.join("qemu.pid");
    let Ok(pid) = std::fs::read_to_string(&pid_file) else { return };
    let Ok(pid) = pid.trim().parse::<u32>() else { return };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = state_dir.to_string_lossy();
    if String::from_utf8_lossy(&cmdline).contains(needle.as_ref()) {
        eprintln!("diskplane serve: killing orphaned qemu {pid} of {}", state_dir.display());
        let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// The supervisor thread: starts qemu, restarts it per `policy` with backoff, stops it when
/// asked.
fn supervise(mut launch: Launch, policy: RestartPolicy, ctl: &Ctl, grace: Duration) {
    let mut delay = Duration::from_millis(500);
    loop {
        ctl.set(RunState::Starting);
        let mut vm = match launch.start() {
            Ok(vm) => vm,
            Err(e) => return ctl.set(RunState::Failed(one_line(&e))),
        };
        ctl.set(RunState::Running { pid: vm.pid() });
        let outcome = loop {
            if ctl.stop.load(Ordering::Acquire) {
                ctl.set(RunState::Stopping);
                return match vm.shutdown(grace) {
                    Ok(o) => {
                        ctl.set(RunState::Exited { status: o.status, success: o.success, requested: true })
                    }
                    Err(e) => ctl.set(RunState::Failed(one_line(&e))),
                };
            }
            match vm.poll() {
                Ok(Some(o)) => break o,
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                Err(e) => return ctl.set(RunState::Failed(one_line(&e))),
            }
        };
        let stop = ctl.stop.load(Ordering::Acquire);
        if stop || !launcher::should_restart(policy, &outcome) {
            return ctl.set(RunState::Exited {
                status: outcome.status,
                success: outcome.success,
                requested: stop,
            });
        }
        ctl.set(RunState::Restarting { after: outcome.status });
        let until = std::time::Instant::now() + delay;
        while std::time::Instant::now() < until {
            if ctl.stop.load(Ordering::Acquire) {
                return ctl.set(RunState::Exited {
                    status: "not restarted".into(),
                    success: true,
                    requested: true,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(spec: Value, annotations: Value) -> Value {
        json!({"metadata": {"name": "v", "annotations": annotations}, "spec": spec})
    }

    #[test]
    fn strategies_and_wanted() {
        for (spec, ann, want_strategy, want) in [
            (json!({"runStrategy": "Always"}), json!({}), RunStrategy::Always, true),
            (json!({"runStrategy": "Halted"}), json!({}), RunStrategy::Halted, false),
            (json!({"runStrategy": "Manual"}), json!({}), RunStrategy::Manual, false),
            (json!({"runStrategy": "Manual"}), json!({RUN_REQUEST: "Running"}), RunStrategy::Manual, true),
            (json!({"runStrategy": "RerunOnFailure"}), json!({}), RunStrategy::RerunOnFailure, true),
            (json!({"running": true}), json!({}), RunStrategy::Always, true),
            (json!({"running": false}), json!({}), RunStrategy::Halted, false),
        ] {
            let o = vm(spec, ann);
            let s = strategy(&o).unwrap();
            assert_eq!(s, want_strategy, "{o}");
            assert_eq!(wanted(s, &o), want, "{o}");
        }
        assert!(
            strategy(&vm(json!({"runStrategy": "Sometimes"}), json!({}))).unwrap_err().contains("Sometimes")
        );
    }

    #[test]
    fn start_and_stop_requests() {
        let mut halted = vm(json!({"running": false}), Value::Null);
        assert!(request(&halted, false).err().expect("refused").contains("not running"));
        request(&halted, true).unwrap()(&mut halted);
        assert_eq!(halted["spec"]["runStrategy"], "Always");
        assert!(halted["spec"].get("running").is_none());
        assert_eq!(annotation(&halted, START_GENERATION), Some("1"));
        request(&halted, false).unwrap()(&mut halted);
        assert_eq!(halted["spec"]["runStrategy"], "Halted");

        let mut manual = vm(json!({"runStrategy": "Manual"}), json!({}));
        request(&manual, true).unwrap()(&mut manual);
        assert_eq!(annotation(&manual, RUN_REQUEST), Some("Running"));
        assert!(wanted(RunStrategy::Manual, &manual));
        manual["status"] = json!({"printableStatus": "Running"});
        request(&manual, false).unwrap()(&mut manual);
        assert_eq!(annotation(&manual, RUN_REQUEST), Some("Stopped"));
        assert_eq!(manual["spec"]["runStrategy"], "Manual");

        let running = json!({"metadata": {}, "spec": {"runStrategy": "Always"}, "status": {"printableStatus": "Running"}});
        assert!(request(&running, true).err().expect("refused").contains("already running"));
    }

    #[test]
    fn statuses_name_the_state() {
        let s =
            state_status(&RunState::Exited { status: "exit code 0".into(), success: true, requested: true });
        assert_eq!((s.printable, s.reason), ("Stopped", "Stopped"));
        let s = state_status(&RunState::Exited {
            status: "killed by signal 9".into(),
            success: false,
            requested: false,
        });
        assert_eq!((s.printable, s.message.as_str()), ("Failed", "qemu killed by signal 9"));
        let v = state_status(&RunState::Running { pid: 7 }).to_value(Some(RunStrategy::Always));
        assert_eq!(v["ready"], true);
        assert_eq!(v["conditions"][0]["status"], "True");
        assert_eq!(v["runStrategy"], "Always");
    }
}
