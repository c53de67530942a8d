//! The local (embedded) driver: everything `diskplane serve` needs to turn DataVolumes into
//! volumes on one machine, without Kubernetes.
//!
//! ```text
//!  API ──create/delete──► Store (redb: objects as JSON, uid, resourceVersion, watch events)
//!                           │ wake
//!                           ▼
//!  reconcile loop: for each DataVolume: observe (store, pool, workers, clock) ─► plan ─► apply
//!                           │ CreateVolume      │ StartWorker / DeleteWorker   │ UpdateStatus
//!                           ▼                   ▼                              ▼
//!                  Pool (volumes/<ns>/<name>)  Workers (tokio tasks, semaphore)  Store
//! ```
//!
//! ## Main types
//! - [`Driver`]: owns the [`store::Store`], the [`pool::Pool`] and the [`worker::Workers`];
//!   [`Driver::run`] is the reconcile loop, [`Driver::create`] / [`Driver::delete`] are what
//!   the API calls, [`Driver::upload_finished`] is where an upload reports its end.
//! - [`DriverOptions`]: data dir, worker concurrency, plain-HTTP registries.
//!
//! ## Restart safety
//! Worker state is in memory only. After a crash (even `kill -9`), start-up deletes every
//! partial output and scratch file in the pool, and the loop sees DataVolumes whose worker is
//! gone: `plan` starts a fresh one. `disk.img` appears only after a worker flushed and checked
//! everything, so no volume is ever `Succeeded` with wrong content.
//!
//! ## Caveats
//! - The loop is level-triggered over *all* DataVolumes: it runs on every change and at least
//!   once a second. Fine for the hundreds of volumes of one machine, not for a cluster.
//! - `secretRef` / `certConfigMap` name Kubernetes objects that do not exist here: such
//!   DataVolumes fail with a message saying so. `volumeMode: Block` volumes are loop devices over pool files
//!   ([`block`]; needs root), shown as the annotation [`DEVICE_ANNOTATION`]. `contentType: archive`
//!   (http and upload sources) is extracted into the volume's `fs/` directory instead of `disk.img`.
//! - VolumeSnapshots ([`snapshot`]) are copies in the pool, restored by DataVolumes with
//!   `source.snapshot` (or a `sourceRef` DataSource with `source.snapshot`) like pvc clones.

pub mod block;
pub mod catalog;
pub mod error;
pub mod pool;
pub mod snapshot;
pub mod store;
pub mod upload;
pub mod vm;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

pub use error::{Error, Result};
use pool::Pool;
use store::Store;
use worker::{Job, Target, Workers};

use crate::api::datavolume::{CONTENT_TYPE_ARCHIVE, CONTENT_TYPE_KUBEVIRT, SourceKind, reason};
use crate::api::volumesnapshot::VOLUMESNAPSHOTS;
use crate::api::{DataSource, DataVolume, DataVolumePhase, NamespacedName, Timestamp};
use crate::plan::{Observed, PlanConfig, SourceState, Step, WorkerFailure, WorkerKind, WorkerState, plan};

/// Resource name of DataVolumes in paths and store keys.
pub const DATAVOLUMES: &str = "datavolumes";
/// Annotation on a `volumeMode: Block` DataVolume: the loop device of its volume
/// (`/dev/loopN`), kept current by the reconcile loop (a restart may attach another one).
pub const DEVICE_ANNOTATION: &str = "diskplane.io/device";
/// Resource name of DataSources.
pub const DATASOURCES: &str = "datasources";
/// The longest the loop sleeps without a change (progress refresh, retry back-off).
const RESYNC: Duration = Duration::from_secs(1);
/// Passes in a row the loop makes while steps keep changing things, before it sleeps.
const MAX_IMMEDIATE_PASSES: usize = 16;

/// How the embedded driver runs.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// Holds `state.redb` and `volumes/`.
    pub data_dir: PathBuf,
    /// Workers moving bytes at the same time.
    pub concurrency: usize,
    /// Registries (`host:port`) spoken to over plain HTTP, like CDIConfig's
    /// `insecureRegistries`.
    pub insecure_registries: Vec<String>,
    /// Filesystem overhead and default preallocation.
    pub plan: PlanConfig,
    /// How VirtualMachines are launched.
    pub vm: vm::VmOptions,
}

impl DriverOptions {
    /// Defaults for `data_dir`: 2 workers, no insecure registries, CDI's overhead.
    pub fn new(data_dir: PathBuf) -> DriverOptions {
        DriverOptions {
            data_dir,
            concurrency: 2,
            insecure_registries: Vec::new(),
            plan: PlanConfig::default(),
            vm: vm::VmOptions::default(),
        }
    }
}

/// The embedded driver. Share it as `Arc<Driver>`.
#[derive(Debug)]
pub struct Driver {
    store: Store,
    pool: Pool,
    workers: Workers,
    wake: Arc<Notify>,
    /// Held while one DataVolume is reconciled and while one is deleted, so a delete never
    /// races a reconcile that would recreate its volume.
    lock: tokio::sync::Mutex<()>,
    /// Running VirtualMachines.
    vms: vm::Vms,
    /// VolumeSnapshot copies in progress.
    takes: snapshot::Takes,
    opts: DriverOptions,
}

/// Seconds since the epoch, now.
pub fn now() -> Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    Timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
}

impl Driver {
    /// Opens the data dir (creating it), the store and the pool, and deletes partial output
    /// left by a crash. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Store`] when the data dir cannot be used.
    pub fn open(opts: DriverOptions) -> Result<Arc<Driver>> {
        std::fs::create_dir_all(&opts.data_dir).map_err(|e| Error::io("creating", &opts.data_dir, e))?;
        let store = Store::open(&opts.data_dir.join("state.redb"))?;
        let pool = Pool::open(&opts.data_dir.join("volumes"))?;
        pool.clean_partials()?;
        for (volume, e) in pool.recover()? {
            eprintln!("diskplane serve: Block volume {}: {}", volume.display(), worker::one_line(&e));
        }
        let wake = Arc::new(Notify::new());
        let workers = Workers::new(pool.clone(), opts.concurrency, Arc::clone(&wake));
        let vms = vm::Vms::new(opts.vm.clone());
        let takes = snapshot::Takes::new(pool.clone(), opts.concurrency, Arc::clone(&wake));
        let lock = tokio::sync::Mutex::new(());
        Ok(Arc::new(Driver { store, pool, workers, wake, lock, vms, takes, opts }))
    }

    /// The state store (reads and watches; writes go through the driver).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The storage pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The workers (for metrics).
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The running VirtualMachines.
    pub fn vms(&self) -> &vm::Vms {
        &self.vms
    }

    /// Stores a new object (already validated by the caller) and wakes the loop.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`]; [`Error::Store`].
    pub fn create(&self, resource: &str, namespace: &str, object: Value) -> Result<Value> {
        let created = self.store.create(resource, namespace, object, now())?;
        self.wake.notify_one();
        Ok(created)
    }

    /// Deletes an object; a DataVolume's worker is stopped and its volume removed, a
    /// VolumeSnapshot's copy is stopped and removed.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Store`]; [`Error::Io`] when the volume cannot be removed
    /// (the object is gone by then).
    pub async fn delete(&self, resource: &str, namespace: &str, name: &str) -> Result<Value> {
        let _guard = self.lock.lock().await;
        let object = self.store.delete(resource, namespace, name)?;
        if resource == DATAVOLUMES {
            self.workers.remove(namespace, name);
            self.pool.remove(namespace, name)?;
        }
        if resource == VOLUMESNAPSHOTS {
            self.remove_snapshot(namespace, name)?;
        }
        self.wake.notify_one();
        Ok(object)
    }

    /// Where an upload to the DataVolume `namespace/name` writes, and the virtual size it
    /// must not exceed. `None` when the DataVolume is not waiting for an upload (phase
    /// `UploadReady`).
    pub fn upload_target(&self, namespace: &str, name: &str) -> Option<(PathBuf, u64)> {
        let dv: DataVolume =
            serde_json::from_value(self.store.get(DATAVOLUMES, namespace, name).ok()??).ok()?;
        let uid = dv.metadata.uid.as_deref()?;
        if !matches!(self.workers.observe(namespace, name, uid), WorkerState::Running { .. }) {
            return None;
        }
        let meta = self.pool.meta(namespace, name, uid)?;
        Some((self.pool.output(namespace, name).ok()?, meta.virtual_size_bytes))
    }

    /// Puts the bytes an upload wrote to the [`Driver::upload_target`] path in place as the
    /// volume's disk: grown to the virtual size, flushed, renamed and the directory flushed.
    /// Called before the client gets its answer, so that a synchronous upload is answered
    /// only once the volume is durable, and a failure here reaches the client.
    ///
    /// # Errors
    /// The pool's failure as one line, or that the DataVolume no longer waits for an upload.
    pub fn commit_upload(&self, namespace: &str, name: &str) -> Result<(), String> {
        let (_, size) = self
            .upload_target(namespace, name)
            .ok_or_else(|| format!("DataVolume {namespace}/{name} no longer waits for an upload"))?;
        self.pool.commit(namespace, name, size).map_err(|e| worker::one_line(&e))
    }

    /// Reports the end of an upload to `namespace/name`. On `Ok` (the disk was put in place
    /// by [`Driver::commit_upload`], an archive by its extraction) the DataVolume becomes
    /// `Succeeded`; on `Err` the partial output is removed and the failure recorded like any
    /// worker's (`retryable` ones return the DataVolume to `UploadReady`). Returns `false`
    /// when no upload was waiting.
    pub fn upload_finished(&self, namespace: &str, name: &str, result: Result<(), WorkerFailure>) -> bool {
        if result.is_err() {
            self.pool.discard_output(namespace, name);
        }
        self.workers.finish(namespace, name, result)
    }

    /// The reconcile loop; runs until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut immediate = 0;
        loop {
            let worked = match self.reconcile_all().await {
                Ok(worked) => worked,
                Err(e) => {
                    eprintln!("diskplane serve: reconcile: {}", worker::one_line(&e));
                    false
                }
            };
            let worked = match self.reconcile_catalogs().await {
                Ok(w) => worked | w,
                Err(e) => {
                    eprintln!("diskplane serve: reconcile catalogs: {}", worker::one_line(&e));
                    worked
                }
            };
            let worked = match self.reconcile_snapshots().await {
                Ok(w) => worked | w,
                Err(e) => {
                    eprintln!("diskplane serve: reconcile snapshots: {}", worker::one_line(&e));
                    worked
                }
            };
            if let Err(e) = self.reconcile_vms() {
                eprintln!("diskplane serve: reconcile vms: {}", worker::one_line(&e));
            }
            if worked && immediate < MAX_IMMEDIATE_PASSES {
                immediate += 1;
                tokio::task::yield_now().await;
                continue;
            }
            immediate = 0;
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    /// One pass over every DataVolume. Returns whether any step changed something.
    ///
    /// # Errors
    /// [`Error::Store`] when the DataVolumes cannot be listed.
    pub async fn reconcile_all(&self) -> Result<bool> {
        let mut worked = false;
        for object in self.store.list(DATAVOLUMES, None)? {
            let Ok(dv) = serde_json::from_value::<DataVolume>(object) else { continue };
            let key = format!("{}/{}", dv.metadata.namespace(), dv.metadata.name());
            match self.reconcile(dv).await {
                Ok(w) => worked |= w,
                Err(e) => eprintln!("diskplane serve: reconciling {key}: {}", worker::one_line(&e)),
            }
        }
        Ok(worked)
    }

    /// Observes, plans and applies for one DataVolume. Returns whether anything changed.
    async fn reconcile(&self, dv: DataVolume) -> Result<bool> {
        let _guard = self.lock.lock().await;
        let (namespace, name) = (dv.metadata.namespace().to_owned(), dv.metadata.name().to_owned());
        let Some(uid) = dv.metadata.uid.clone() else { return Ok(false) };
        // Re-read under the lock: a delete may have happened since the list.
        let Some(current) = self.store.get(DATAVOLUMES, &namespace, &name)? else { return Ok(false) };
        let dv: DataVolume = serde_json::from_value(current).map_err(Error::json)?;
        if dv.metadata.uid.as_deref() != Some(uid.as_str()) {
            return Ok(false);
        }
        let observed = Observed {
            volume: self.pool.state(&namespace, &name, &uid),
            worker: self.workers.observe(&namespace, &name, &uid),
            source: self.clone_source(&dv).1,
            now: now(),
            config: self.opts.plan,
            dv,
        };
        let steps = plan(&observed);
        let mut worked = false;
        for step in steps {
            worked |= step.is_work();
            match step {
                Step::UpdateStatus(status) => {
                    let old = observed.dv.status.as_ref().map(|s| s.phase).unwrap_or_default();
                    if old != status.phase {
                        eprintln!("diskplane serve: {namespace}/{name}: phase {}", status.phase);
                    }
                    let status = serde_json::to_value(status).map_err(Error::json)?;
                    self.store.update_status(DATAVOLUMES, &namespace, &name, &uid, status)?;
                }
                Step::CreateVolume(request) => self.pool.create(&namespace, &uid, &request)?,
                Step::StartWorker { kind, attempt } => {
                    let meta = self.pool.meta(&namespace, &name, &uid);
                    let (virtual_size, preallocate) =
                        meta.map(|m| (m.virtual_size_bytes, m.preallocate)).unwrap_or_default();
                    let target = Target {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        virtual_size,
                        preallocate,
                    };
                    let job = self.job(&observed.dv, kind);
                    self.workers.start(&uid, attempt, target, job);
                }
                Step::DeleteWorker => self.workers.remove(&namespace, &name),
                _ => {}
            }
        }
        if observed.dv.spec.is_block() {
            worked |= self.sync_device_annotation(&observed.dv, &uid)?;
        }
        Ok(worked)
    }

    /// Sets [`DEVICE_ANNOTATION`] to the volume's loop device (removes it while there is
    /// none). Returns whether it changed.
    fn sync_device_annotation(&self, dv: &DataVolume, uid: &str) -> Result<bool> {
        let (namespace, name) = (dv.metadata.namespace(), dv.metadata.name());
        let device = self.pool.device(namespace, name).map(|d| d.display().to_string());
        let current = dv.metadata.annotations.get(DEVICE_ANNOTATION);
        if current == device.as_ref() {
            return Ok(false);
        }
        self.store.modify(DATAVOLUMES, namespace, name, uid, |object| {
            let annotations = &mut object["metadata"]["annotations"];
            if !annotations.is_object() {
                *annotations = Value::Object(serde_json::Map::new());
            }
            if let Some(map) = annotations.as_object_mut() {
                match &device {
                    Some(d) => map.insert(DEVICE_ANNOTATION.to_owned(), Value::String(d.clone())),
                    None => map.remove(DEVICE_ANNOTATION),
                };
            }
        })?;
        Ok(true)
    }

    /// The worker job for a DataVolume; features this driver lacks become a refusal.
    fn job(&self, dv: &DataVolume, kind: WorkerKind) -> Job {
        let refuse = |message: String| {
            Job::Refuse(WorkerFailure { reason: reason::ERROR.into(), message, retryable: false })
        };
        let spec = &dv.spec;
        let source = spec.source.as_ref();
        if spec.is_block()
            && let Some(why) = block::unavailable()
        {
            return refuse(why);
        }
        let archive = spec.content_type() == CONTENT_TYPE_ARCHIVE;
        if archive && !matches!(source.and_then(|s| s.kind()), Some(SourceKind::Http | SourceKind::Upload)) {
            return refuse("contentType: archive is supported for http and upload sources only".into());
        }
        if !archive && spec.content_type() != CONTENT_TYPE_KUBEVIRT && kind != WorkerKind::Blank {
            return refuse(format!(
                "contentType: {} is not supported by the embedded driver",
                spec.content_type()
            ));
        }
        match kind {
            WorkerKind::Blank => Job::Blank,
            WorkerKind::Upload => Job::Upload,
            WorkerKind::Clone => match self.clone_source(dv).0 {
                Ok(path) => Job::Clone { source: path },
                Err(message) => refuse(message),
            },
            _ => match source.and_then(|s| s.kind()) {
                Some(SourceKind::Http) => {
                    let Some(http) = source.and_then(|s| s.http.as_ref()) else {
                        return refuse("no http source".into());
                    };
                    if let Some(secret) = http.secret_ref.as_deref().filter(|s| !s.is_empty()) {
                        return refuse(format!(
                            "secretRef {secret:?}: Kubernetes Secrets are not available in embedded mode"
                        ));
                    }
                    if let Some(map) = http.cert_config_map.as_deref().filter(|s| !s.is_empty()) {
                        return refuse(format!(
                            "certConfigMap {map:?}: Kubernetes ConfigMaps are not available in embedded mode"
                        ));
                    }
                    let mut headers = Vec::new();
                    for line in &http.extra_headers {
                        match line.split_once(':') {
                            Some((n, v)) if !n.trim().is_empty() => {
                                headers.push((n.trim().to_owned(), v.trim().to_owned()));
                            }
                            _ => return refuse(format!("extraHeaders entry {line:?} is not 'Name: value'")),
                        }
                    }
                    let (url, checksum) = (http.url.clone(), http.checksum.clone());
                    let insecure = http.insecure_skip_verify.unwrap_or(false);
                    if archive {
                        Job::Archive { url, checksum, insecure, headers }
                    } else {
                        Job::Http { url, checksum, insecure, headers }
                    }
                }
                Some(SourceKind::Registry) => {
                    let Some(registry) = source.and_then(|s| s.registry.as_ref()) else {
                        return refuse("no registry source".into());
                    };
                    let Some(url) = registry.url.clone() else {
                        return refuse("registry imageStream sources need OpenShift".into());
                    };
                    if let Some(secret) = registry.secret_ref.as_deref().filter(|s| !s.is_empty()) {
                        return refuse(format!(
                            "secretRef {secret:?}: Kubernetes Secrets are not available in embedded mode"
                        ));
                    }
                    if registry.pull_method.as_deref() == Some("node") {
                        return refuse(
                            "pullMethod: node needs a container runtime; use pod (the default)".into(),
                        );
                    }
                    let host = url.strip_prefix("docker://").unwrap_or(&url).split('/').next().unwrap_or("");
                    let insecure = self.opts.insecure_registries.iter().any(|h| h == host);
                    let architecture = registry.platform.as_ref().and_then(|p| p.architecture.clone());
                    Job::Registry { url, architecture, insecure }
                }
                other => refuse(format!(
                    "source {} is not supported by the embedded driver",
                    other.map_or("(unknown)".to_owned(), |k| k.to_string())
                )),
            },
        }
    }

    /// For a clone: the source's `disk.img` (or why it cannot be used), and its state for
    /// `plan`. A PVC here is a DataVolume's volume; it counts once that DataVolume succeeded.
    /// A VolumeSnapshot counts once it is ready to use ([`Driver::snapshot_clone_source`]).
    /// Sources in other namespaces are allowed (embedded mode has no users to authorize).
    fn clone_source(&self, dv: &DataVolume) -> (std::result::Result<PathBuf, String>, SourceState) {
        let source = dv.spec.source.as_ref();
        let kind = source.and_then(|s| s.kind());
        let in_ns = |mut reference: NamespacedName, ns: &str| {
            if reference.namespace.is_empty() {
                reference.namespace = ns.to_owned();
            }
            reference
        };
        let pvc = match (kind, &dv.spec.source_ref) {
            (Some(SourceKind::Pvc), _) => source.and_then(|s| s.pvc.clone()),
            (None, Some(r)) if r.kind == "DataSource" => {
                let ns = r.namespace.clone().unwrap_or_else(|| dv.metadata.namespace().to_owned());
                let ds = self.store.get(DATASOURCES, &ns, &r.name).ok().flatten();
                let ds: Option<DataSource> = ds.and_then(|v| serde_json::from_value(v).ok());
                let source = ds.map(|d| d.spec.source);
                match source.as_ref().map(|s| (&s.pvc, &s.snapshot)) {
                    Some((Some(pvc), _)) => Some(in_ns(pvc.clone(), &ns)),
                    Some((None, Some(snapshot))) => {
                        let snapshot = in_ns(snapshot.clone(), &ns);
                        return self.snapshot_clone_source(&snapshot.namespace, &snapshot.name);
                    }
                    _ => {
                        return (
                            Err(format!("DataSource {ns}/{} has no PVC or snapshot source", r.name)),
                            SourceState::Missing,
                        );
                    }
                }
            }
            (Some(SourceKind::Snapshot), _) => {
                let Some(snapshot) = source.and_then(|s| s.snapshot.clone()) else {
                    return (Err("no snapshot source".into()), SourceState::Missing);
                };
                let snapshot = in_ns(snapshot, dv.metadata.namespace());
                return self.snapshot_clone_source(&snapshot.namespace, &snapshot.name);
            }
            _ => return (Err("not a clone".into()), SourceState::NotApplicable),
        };
        let Some(mut pvc) = pvc else { return (Err("no PVC source".into()), SourceState::Missing) };
        if pvc.namespace.is_empty() {
            pvc.namespace = dv.metadata.namespace().to_owned();
        }
        let source_dv = self.store.get(DATAVOLUMES, &pvc.namespace, &pvc.name).ok().flatten();
        let succeeded = source_dv
            .and_then(|v| serde_json::from_value::<DataVolume>(v).ok())
            .is_some_and(|d| d.status.is_some_and(|s| s.phase == DataVolumePhase::Succeeded));
        let disk = self.pool.disk(&pvc.namespace, &pvc.name);
        match self.pool.disk_size(&pvc.namespace, &pvc.name) {
            Some(size_bytes) if succeeded => (Ok(disk), SourceState::Present { size_bytes }),
            _ => (Err(format!("PVC {}/{} not found", pvc.namespace, pvc.name)), SourceState::Missing),
        }
    }

    /// Prometheus text exposition of the driver's counters.
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ =
            writeln!(out, "# HELP diskplane_bytes_moved_total Bytes received by import and clone workers.");
        let _ = writeln!(out, "# TYPE diskplane_bytes_moved_total counter");
        let _ = writeln!(out, "diskplane_bytes_moved_total {}", self.workers.bytes_moved());
        let _ = writeln!(out, "# HELP diskplane_datavolume_progress Progress of running transfers, percent.");
        let _ = writeln!(out, "# TYPE diskplane_datavolume_progress gauge");
        for live in self.workers.live() {
            if let Some(p) = live.progress {
                let _ = writeln!(
                    out,
                    "diskplane_datavolume_progress{{namespace=\"{}\",name=\"{}\"}} {p:.2}",
                    escape(&live.namespace),
                    escape(&live.name)
                );
            }
        }
        let mut phases: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        let mut restarts = 0i64;
        for object in self.store.list(DATAVOLUMES, None).unwrap_or_default() {
            let status = &object["status"];
            let phase = status["phase"].as_str().filter(|p| !p.is_empty()).unwrap_or("Unset");
            *phases.entry(phase.to_owned()).or_default() += 1;
            restarts += status["restartCount"].as_i64().unwrap_or(0);
        }
        let _ = writeln!(out, "# HELP diskplane_datavolumes DataVolumes by phase.");
        let _ = writeln!(out, "# TYPE diskplane_datavolumes gauge");
        for (phase, count) in phases {
            let _ = writeln!(out, "diskplane_datavolumes{{phase=\"{}\"}} {count}", escape(&phase));
        }
        let _ =
            writeln!(out, "# HELP diskplane_datavolume_restarts Worker restarts summed over DataVolumes.");
        let _ = writeln!(out, "# TYPE diskplane_datavolume_restarts gauge");
        let _ = writeln!(out, "diskplane_datavolume_restarts {restarts}");
        out
    }
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
