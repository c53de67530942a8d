//! VolumeSnapshots in the embedded driver: taking them (a copy of a DataVolume's volume into
//! the pool), restoring from them (DataVolume and DataSource `source.snapshot`), deleting them.
//!
//! ```text
//!  VolumeSnapshot (store) ──reconcile──► source DataVolume Succeeded? ──no──► readyToUse false,
//!        ▲                                   │ yes                            status.error, retried
//!        │ readyToUse true, restoreSize      ▼
//!        └──────────────── Take (tokio task): cloner::clone_volume(volume → .partial)
//!                          (reflink where the filesystem can, else sparse copy), flush,
//!                          Pool::commit_snapshot (snapshot.json, rename to disk.img)
//! ```
//! A snapshot is taken once, by the reconcile loop ([`Driver::reconcile_snapshots`]); once
//! `disk.img` is committed it never changes: writes to the source afterwards, and deleting the
//! source DataVolume, leave it alone (snapshots outlive their source, as in Kubernetes).
//!
//! ## Main types
//! - [`Takes`]: the running (and recently failed) snapshot copies, in memory, at most
//!   `concurrency` at a time.
//! - [`Driver::reconcile_snapshots`]: one pass over every VolumeSnapshot.
//! - [`Driver::snapshot_clone_source`]: what a DataVolume restoring a snapshot copies from.
//!
//! ## Restart safety
//! `readyToUse` is set only from the pool's record ([`Pool::snapshot_meta`]: the record of this
//! VolumeSnapshot's uid and a `disk.img` of the recorded length), which is written only after
//! the copy was flushed. A crash mid-copy leaves a partial file that start-up deletes; the next
//! pass takes the snapshot again from the source. A snapshot that was ready and whose content
//! is gone is reported (readyToUse false, `status.error`), never taken again: the source may
//! have changed since.
//!
//! ## Caveats
//! - The copy of a volume a running VM writes to is crash-consistent only with a reflink (one
//!   atomic clone); a sparse copy of a disk in use may mix old and new blocks.
//! - Block source volumes: the loop device is flushed, then its backing file is copied (so a
//!   reflink works for Block volumes too).
//! - Cross-namespace restores are allowed, as pvc clones are: embedded mode has no users to
//!   authorize.
//! - `volumeSnapshotClassName` is ignored; a failed copy is retried every [`RETRY`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use tokio::task::AbortHandle;

use super::pool::{Pool, SnapshotMeta};
use super::{DATAVOLUMES, Driver, Error, Result, block, now, worker};
use crate::api::volumesnapshot::{
    VOLUMESNAPSHOTS, VolumeSnapshot, VolumeSnapshotError, VolumeSnapshotStatus, quantity_of, validate,
};
use crate::api::{
    Condition, ConditionStatus, DataSource, DataSourceStatus, DataVolume, DataVolumePhase, Timestamp,
};
use crate::plan::SourceState;

/// How long a failed copy waits before the next attempt.
pub const RETRY: Duration = Duration::from_secs(10);

/// A volume to take a snapshot of.
#[derive(Debug, Clone)]
struct SourceVolume {
    /// `namespace/name` of the DataVolume.
    id: String,
    /// The file to copy: `disk.img`, or a Block volume's backing file.
    path: PathBuf,
    /// A Block volume's loop device, flushed before the copy.
    device: Option<PathBuf>,
}

#[derive(Debug, Clone)]
enum TakeState {
    Pending,
    Running,
    Done(std::result::Result<(), String>, Instant),
}

#[derive(Debug)]
struct Take {
    uid: String,
    state: Arc<Mutex<TakeState>>,
    cancelled: Arc<AtomicBool>,
    task: AbortHandle,
}

/// What the loop sees of a take.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Observed {
    None,
    Busy,
    Finished,
    Failed { message: String, retry_due: bool },
}

/// The snapshot copies of one driver.
#[derive(Debug)]
pub struct Takes {
    takes: Mutex<HashMap<(String, String), Take>>,
    permits: Arc<Semaphore>,
    wake: Arc<Notify>,
    pool: Pool,
    /// Held while a copy is committed and while a snapshot is deleted, so a delete never
    /// races a commit that would bring the snapshot back.
    commit: Arc<Mutex<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Takes {
    /// Copies into `pool`, at most `concurrency` at a time; `wake` is notified when one ends.
    pub fn new(pool: Pool, concurrency: usize, wake: Arc<Notify>) -> Takes {
        Takes {
            takes: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            wake,
            pool,
            commit: Arc::new(Mutex::new(())),
        }
    }

    fn observe(&self, namespace: &str, name: &str, uid: &str) -> Observed {
        let takes = lock(&self.takes);
        let Some(take) = takes.get(&(namespace.to_owned(), name.to_owned())) else { return Observed::None };
        if take.uid != uid {
            return Observed::None;
        }
        let state = lock(&take.state).clone();
        match state {
            TakeState::Pending | TakeState::Running => Observed::Busy,
            TakeState::Done(Ok(()), _) => Observed::Finished,
            TakeState::Done(Err(message), at) => {
                Observed::Failed { message, retry_due: at.elapsed() >= RETRY }
            }
        }
    }

    /// Starts copying `source` for the VolumeSnapshot `uid` (replacing an older take).
    fn start(&self, namespace: &str, name: &str, uid: &str, source: SourceVolume) {
        let state = Arc::new(Mutex::new(TakeState::Pending));
        let cancelled = Arc::new(AtomicBool::new(false));
        let job = Job {
            pool: self.pool.clone(),
            commit: Arc::clone(&self.commit),
            cancelled: Arc::clone(&cancelled),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
            source,
        };
        let (permits, wake, task_state) =
            (Arc::clone(&self.permits), Arc::clone(&self.wake), Arc::clone(&state));
        let task = tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else { return };
            *lock(&task_state) = TakeState::Running;
            let result = match tokio::task::spawn_blocking(move || job.run()).await {
                Ok(result) => result,
                Err(e) => Err(e.to_string()),
            };
            *lock(&task_state) = TakeState::Done(result, Instant::now());
            wake.notify_one();
        })
        .abort_handle();
        let take = Take { uid: uid.to_owned(), state, cancelled, task };
        if let Some(old) = lock(&self.takes).insert((namespace.to_owned(), name.to_owned()), take) {
            old.cancel();
        }
    }

    /// Forgets the take of `namespace/name` (finished, or to be retried).
    fn forget(&self, namespace: &str, name: &str) {
        lock(&self.takes).remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Stops the take of `namespace/name`, if any, and removes the snapshot from the pool.
    ///
    /// # Errors
    /// [`Error::Io`] when the snapshot cannot be removed.
    pub fn remove(&self, namespace: &str, name: &str) -> Result<()> {
        let _commit = lock(&self.commit);
        if let Some(old) = lock(&self.takes).remove(&(namespace.to_owned(), name.to_owned())) {
            old.cancel();
        }
        self.pool.remove_snapshot(namespace, name)
    }
}

impl Take {
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.task.abort();
    }
}

/// One copy, run on a blocking thread.
struct Job {
    pool: Pool,
    commit: Arc<Mutex<()>>,
    cancelled: Arc<AtomicBool>,
    namespace: String,
    name: String,
    uid: String,
    source: SourceVolume,
}

impl Job {
    fn run(self) -> std::result::Result<(), String> {
        let (ns, name, uid) = (&self.namespace, &self.name, &self.uid);
        let partial = {
            let _commit = lock(&self.commit);
            if self.cancelled.load(Ordering::SeqCst) {
                return Err("the VolumeSnapshot was deleted".into());
            }
            self.pool.prepare_snapshot(ns, name, uid).map_err(|e| worker::one_line(&e))?
        };
        let cut = now();
        let started = Instant::now();
        if let Some(device) = &self.source.device {
            block::flush(device).map_err(|e| worker::one_line(&e))?;
        }
        let report = cloner::clone_volume(&self.source.path, &partial, &cloner::CloneOptions::default())
            .map_err(|e| format!("copying {}: {}", self.source.id, worker::one_line(&e)));
        let report = match report {
            Ok(report) => report,
            Err(message) => {
                let _ = std::fs::remove_file(&partial);
                return Err(message);
            }
        };
        let meta = SnapshotMeta {
            uid: uid.clone(),
            restore_size_bytes: report.source_size,
            creation_time: cut.to_rfc3339(),
            source: self.source.id.clone(),
            method: report.method.to_owned(),
        };
        let _commit = lock(&self.commit);
        if self.cancelled.load(Ordering::SeqCst) {
            let _ = std::fs::remove_file(&partial);
            return Err("the VolumeSnapshot was deleted".into());
        }
        self.pool.commit_snapshot(ns, name, &meta).map_err(|e| worker::one_line(&e))?;
        eprintln!(
            "diskplane serve: VolumeSnapshot {ns}/{name}: {} bytes of {} ({}, {} bytes copied) in {:.3} s",
            meta.restore_size_bytes,
            meta.source,
            meta.method,
            report.bytes_copied,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

impl Driver {
    /// One pass over every VolumeSnapshot: takes those whose source is ready, records
    /// readiness. Returns whether anything changed.
    ///
    /// # Errors
    /// [`Error::Store`] when the VolumeSnapshots cannot be listed.
    pub async fn reconcile_snapshots(&self) -> Result<bool> {
        let mut worked = false;
        for object in self.store.list(VOLUMESNAPSHOTS, None)? {
            let Ok(vs) = serde_json::from_value::<VolumeSnapshot>(object) else { continue };
            match self.reconcile_snapshot(&vs) {
                Ok(w) => worked |= w,
                Err(e) => eprintln!(
                    "diskplane serve: reconciling VolumeSnapshot {}/{}: {}",
                    vs.metadata.namespace(),
                    vs.metadata.name(),
                    worker::one_line(&e)
                ),
            }
        }
        Ok(worked)
    }

    fn reconcile_snapshot(&self, vs: &VolumeSnapshot) -> Result<bool> {
        let (namespace, name) = (vs.metadata.namespace(), vs.metadata.name());
        let Some(uid) = vs.metadata.uid.as_deref() else { return Ok(false) };
        let current = vs.status.clone().unwrap_or_default();
        let mut status = current.clone();
        let mut worked = false;
        if let Some(meta) = self.pool.snapshot_meta(namespace, name, uid) {
            self.takes.forget(namespace, name);
            status.ready_to_use = Some(true);
            status.restore_size = Some(quantity_of(meta.restore_size_bytes));
            status.creation_time = Some(meta.creation_time);
            status.bound_volume_snapshot_content_name = Some(format!("snapcontent-{uid}"));
            status.error = None;
        } else if vs.ready() {
            status.ready_to_use = Some(false);
            set_error(
                &mut status,
                format!(
                    "the snapshot's content is missing from the pool ({})",
                    self.pool.snapshot_disk(namespace, name).display()
                ),
            );
        } else {
            status.ready_to_use = Some(false);
            let error = match validate(vs) {
                Err(invalid) => Some(invalid.message),
                Ok(()) => match self.takes.observe(namespace, name, uid) {
                    Observed::Busy => None,
                    // Committed, yet no record: removed behind our back. Take it again.
                    Observed::Finished => {
                        self.takes.forget(namespace, name);
                        worked = true;
                        None
                    }
                    Observed::Failed { message, retry_due } => {
                        if retry_due {
                            self.takes.forget(namespace, name);
                            worked = true;
                        }
                        Some(format!("Failed to create snapshot: {message}"))
                    }
                    Observed::None => {
                        let pvc = vs.spec.source.persistent_volume_claim_name.as_deref().unwrap_or("");
                        match self.snapshot_source(namespace, pvc) {
                            Ok(source) => {
                                self.takes.start(namespace, name, uid, source);
                                worked = true;
                                None
                            }
                            Err(message) => Some(message),
                        }
                    }
                },
            };
            match error {
                Some(message) => set_error(&mut status, message),
                None => status.error = None,
            }
        }
        if status != current {
            let value = serde_json::to_value(&status).map_err(Error::json)?;
            self.store.update_status(VOLUMESNAPSHOTS, namespace, name, uid, value)?;
            worked = true;
        }
        Ok(worked)
    }

    /// The volume of the PVC `namespace/pvc` (a DataVolume's volume), once its DataVolume
    /// Succeeded; otherwise why a snapshot cannot be taken yet.
    fn snapshot_source(&self, namespace: &str, pvc: &str) -> std::result::Result<SourceVolume, String> {
        let dv = self.store.get(DATAVOLUMES, namespace, pvc).ok().flatten();
        let Some(dv) = dv.and_then(|v| serde_json::from_value::<DataVolume>(v).ok()) else {
            return Err(format!("PersistentVolumeClaim {namespace}/{pvc} not found"));
        };
        let phase = dv.status.map(|s| s.phase).unwrap_or_default();
        if phase != DataVolumePhase::Succeeded {
            return Err(format!(
                "PersistentVolumeClaim {namespace}/{pvc} is not ready: its DataVolume is {phase}"
            ));
        }
        if self.pool.disk_size(namespace, pvc).is_none() {
            return Err(format!("PersistentVolumeClaim {namespace}/{pvc} has no disk to snapshot"));
        }
        let id = format!("{namespace}/{pvc}");
        if self.pool.is_block(namespace, pvc) {
            let Some(device) = self.pool.device(namespace, pvc) else {
                return Err(format!("PersistentVolumeClaim {id}: its loop device is not attached"));
            };
            return Ok(SourceVolume { id, path: self.pool.backing(namespace, pvc), device: Some(device) });
        }
        Ok(SourceVolume { id, path: self.pool.disk(namespace, pvc), device: None })
    }

    /// What a DataVolume restoring the VolumeSnapshot `namespace/name` copies from (the
    /// snapshot's `disk.img`) and its size for `plan`; `Missing` (the DataVolume waits) while
    /// the snapshot does not exist or is not ready to use.
    pub fn snapshot_clone_source(
        &self,
        namespace: &str,
        name: &str,
    ) -> (std::result::Result<PathBuf, String>, SourceState) {
        let vs = self.store.get(VOLUMESNAPSHOTS, namespace, name).ok().flatten();
        let missing = |why: String| (Err(why), SourceState::Missing);
        let Some(vs) = vs.and_then(|v| serde_json::from_value::<VolumeSnapshot>(v).ok()) else {
            return missing(format!("VolumeSnapshot {namespace}/{name} not found"));
        };
        let uid = vs.metadata.uid.as_deref().unwrap_or_default();
        match self.pool.snapshot_meta(namespace, name, uid) {
            Some(meta) if vs.ready() => (
                Ok(self.pool.snapshot_disk(namespace, name)),
                SourceState::Present { size_bytes: meta.restore_size_bytes },
            ),
            _ => missing(format!("VolumeSnapshot {namespace}/{name} is not ready to use")),
        }
    }

    /// Deletes a VolumeSnapshot: stops its copy and removes it from the pool. The source
    /// volume is not touched.
    pub(super) fn remove_snapshot(&self, namespace: &str, name: &str) -> Result<()> {
        self.takes.remove(namespace, name)
    }

    /// Keeps the Ready condition of a DataSource whose source is a VolumeSnapshot in step with
    /// the snapshot's `readyToUse`. Returns whether it changed.
    pub(super) fn reconcile_snapshot_data_source(&self, ds: &DataSource) -> Result<bool> {
        let (Some(uid), Some(snapshot)) = (ds.metadata.uid.as_deref(), ds.spec.source.snapshot.as_ref())
        else {
            return Ok(false);
        };
        let own = ds.metadata.namespace();
        let ns = if snapshot.namespace.is_empty() { own } else { snapshot.namespace.as_str() };
        let vs = self.store.get(VOLUMESNAPSHOTS, ns, &snapshot.name)?;
        let ready = vs.as_ref().map(|v| v["status"]["readyToUse"].as_bool() == Some(true));
        let status = snapshot_data_source_status(ds, ready, now());
        if ds.status.as_ref() == Some(&status) {
            return Ok(false);
        }
        let status = serde_json::to_value(status).map_err(Error::json)?;
        self.store.update_status(super::DATASOURCES, own, ds.metadata.name(), uid, status)?;
        Ok(true)
    }
}

/// Records `message` as the snapshot's error; its time changes only with the message.
fn set_error(status: &mut VolumeSnapshotStatus, message: String) {
    if status.error.as_ref().and_then(|e| e.message.as_ref()) == Some(&message) {
        return;
    }
    status.error = Some(VolumeSnapshotError { time: Some(now().to_rfc3339()), message: Some(message) });
}

/// The status of a DataSource whose source is a VolumeSnapshot: `ready` is `None` when the
/// snapshot does not exist, else its `readyToUse`. Ready True/`Ready` as for PVCs; False with
/// `NotFound` or `SnapshotNotReady` (CDI's reasons) otherwise.
pub fn snapshot_data_source_status(ds: &DataSource, ready: Option<bool>, now: Timestamp) -> DataSourceStatus {
    let mut status: DataSourceStatus = ds.status.clone().unwrap_or_default();
    let (on, reason, message) = match ready {
        None => (false, "NotFound", "Snapshot not found"),
        Some(false) => (false, "SnapshotNotReady", "Snapshot phase is not ready"),
        Some(true) => (true, "Ready", "DataSource is ready to be consumed"),
    };
    let condition_status = if on { ConditionStatus::True } else { ConditionStatus::False };
    match status.conditions.iter_mut().find(|c| c.type_ == "Ready") {
        Some(c) if c.status == condition_status => {
            c.reason = Some(reason.into());
            c.message = Some(message.into());
        }
        found => {
            let fresh = Condition {
                type_: "Ready".into(),
                status: condition_status,
                reason: Some(reason.into()),
                message: Some(message.into()),
                last_transition_time: Some(now.to_rfc3339()),
                last_heartbeat_time: None,
            };
            match found {
                Some(c) => *c = fresh,
                None => status.conditions.push(fresh),
            }
        }
    }
    status.source = on.then(|| ds.spec.source.clone());
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NamespacedName;

    fn data_source() -> DataSource {
        let mut ds = DataSource::default();
        ds.metadata.name = Some("golden".into());
        ds.spec.source.snapshot = Some(NamespacedName { namespace: "ns".into(), name: "snap".into() });
        ds
    }

    #[test]
    fn data_source_ready_follows_ready_to_use() {
        let mut ds = data_source();
        let missing = snapshot_data_source_status(&ds, None, Timestamp(10));
        let ready = |s: &DataSourceStatus| s.conditions.iter().find(|c| c.type_ == "Ready").cloned().unwrap();
        assert_eq!(ready(&missing).status, ConditionStatus::False);
        assert_eq!(ready(&missing).reason.as_deref(), Some("NotFound"));
        assert_eq!(missing.source, None);

        ds.status = Some(missing.clone());
        let not_ready = snapshot_data_source_status(&ds, Some(false), Timestamp(20));
        assert_eq!(ready(&not_ready).reason.as_deref(), Some("SnapshotNotReady"));
        assert_eq!(
            ready(&not_ready).last_transition_time,
            ready(&missing).last_transition_time,
            "still False"
        );

        ds.status = Some(not_ready);
        let on = snapshot_data_source_status(&ds, Some(true), Timestamp(30));
        assert_eq!(ready(&on).status, ConditionStatus::True);
        assert_eq!(ready(&on).last_transition_time.as_deref(), Some("1970-01-01T00:00:30Z"));
        assert_eq!(
            on.source.as_ref().and_then(|s| s.snapshot.as_ref()).map(|s| s.name.as_str()),
            Some("snap")
        );

        ds.status = Some(on.clone());
        assert_eq!(
            snapshot_data_source_status(&ds, Some(true), Timestamp(40)),
            on,
            "stable: nothing to write"
        );
    }

    #[test]
    fn errors_keep_their_time_until_the_message_changes() {
        let mut status = VolumeSnapshotStatus::default();
        set_error(&mut status, "PersistentVolumeClaim ns/a not found".into());
        let first = status.error.clone();
        set_error(&mut status, "PersistentVolumeClaim ns/a not found".into());
        assert_eq!(status.error, first);
        set_error(&mut status, "other".into());
        assert_eq!(status.error.and_then(|e| e.message).as_deref(), Some("other"));
    }
}
