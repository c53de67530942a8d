//! The pure half of the DataVolume reconciler: `plan(&Observed) -> Vec<Step>`.
//!
//! The driver observes the world (the DataVolume, its volume, its worker, the clone source,
//! the clock), calls [`plan`], and applies the steps in order. `plan` is level-triggered: it
//! looks only at the observation, never at what happened before, so the same observation always
//! yields the same steps, a step applied twice does no harm, and a crashed driver resumes by
//! observing again. Every plan ends with [`Step::RequeueAfter`] or [`Step::AwaitChange`].
//!
//! ## Phases
//! ```text
//! ""/Pending ──volume created──► ImportScheduled ─► ImportInProgress ─► Succeeded
//!                                UploadScheduled ─► UploadReady      ─► Succeeded
//!                                CloneScheduled  ─► CloneInProgress  ─► Succeeded
//!   worker failed, retryable:  stay *InProgress, restartCount+1, retry after back-off
//!                              (uploads: stay UploadReady, restartCount+1, new worker at once)
//!   worker failed, terminal:   Failed (checksum, image too large, hostile image, HTTP 4xx…)
//! ```
//! Blank volumes run an import worker with no source (CDI does the same), so they go through
//! the Import phases.
//!
//! ## Idempotence of retries
//! Workers carry the `attempt` they were started with (= `status.restartCount` at the time).
//! A failed worker is counted once: only when its attempt equals the current restart count. The
//! back-off is measured from the Running condition's `lastTransitionTime`, which the failure
//! sets, so a requeue that comes early simply requeues again for the remaining time.

use std::time::Duration;

use crate::api::datavolume::{DataVolumeStatus, SourceKind, condition, reason};
use crate::api::{Condition, ConditionStatus, DataVolume, DataVolumePhase, Timestamp};
use crate::validate::validate_data_volume;

/// CDI's default filesystem overhead (`DefaultGlobalOverhead = "0.055"`), in thousandths.
pub const DEFAULT_FILESYSTEM_OVERHEAD: Overhead = Overhead { per_mille: 55 };
/// Volumes are sized in whole MiB before the overhead is added (`util.DefaultAlignBlockSize`).
pub const SIZE_ALIGNMENT: u64 = 1024 * 1024;
/// First retry delay after a transient worker failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Longest retry delay (kubelet's restart back-off caps at 5 minutes too).
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// How often to refresh `status.progress` while a worker runs.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// Filesystem overhead: the share of a Filesystem volume its filesystem keeps for itself, in
/// thousandths (CDIConfig allows at most three decimals: `0.055` = 55).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overhead {
    per_mille: u16,
}

impl Overhead {
    /// An overhead of `per_mille` thousandths, `None` above 999 (a filesystem that keeps
    /// everything leaves no room for data).
    pub fn from_per_mille(per_mille: u16) -> Option<Overhead> {
        (per_mille < 1000).then_some(Overhead { per_mille })
    }

    /// Parses CDIConfig's text form: `0`, `0.055`, at most three decimals, below 1.
    pub fn parse(text: &str) -> Option<Overhead> {
        let fraction = text.strip_prefix("0.").or_else(|| (text == "0").then_some(""))?;
        if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let padded = format!("{fraction:0<3}");
        Overhead::from_per_mille(padded.parse().ok()?)
    }

    /// The capacity a Filesystem volume needs to hold `size` bytes of data, as CDI's
    /// `GetRequiredSpace` computes it: `ceil(roundUp(size, 1 MiB) / (1 - overhead))`, here in
    /// exact integer arithmetic. `None` on overflow.
    pub fn required_space(self, size: u64) -> Option<u64> {
        let aligned = u128::from(size.checked_next_multiple_of(SIZE_ALIGNMENT)?);
        let free_per_mille = u128::from(1000 - self.per_mille);
        u64::try_from((aligned * 1000).div_ceil(free_per_mille)).ok()
    }
}

impl Default for Overhead {
    fn default() -> Self {
        DEFAULT_FILESYSTEM_OVERHEAD
    }
}

/// Settings that come from configuration (CDIConfig in a cluster), not from the DataVolume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanConfig {
    /// Overhead for Filesystem volumes of `storage` DataVolumes.
    pub filesystem_overhead: Overhead,
    /// Preallocate when the DataVolume does not say (`CDIConfig.spec.preallocation`).
    pub preallocation: bool,
}

/// The DataVolume's target volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeState {
    Absent,
    Present { capacity_bytes: u64 },
}

/// The clone source (PVC, VolumeSnapshot, or what a `sourceRef` DataSource points at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// Not a clone, or not looked up.
    NotApplicable,
    /// The source does not exist (yet).
    Missing,
    /// The source exists and holds this many bytes.
    Present { size_bytes: u64 },
}

/// Why a worker failed, as it reported (exit code / termination message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerFailure {
    /// Condition reason: `ChecksumError`, `Error`, `ImagePullFailed`…
    pub reason: String,
    /// Human-readable message ("DataVolume too small to contain image").
    pub message: String,
    /// Transient (network, 5xx, I/O): retry with back-off. Terminal (checksum mismatch, image
    /// larger than the volume, hostile or unsupported image, 4xx): fail the DataVolume.
    pub retryable: bool,
}

/// The worker that moves the bytes. `attempt` is the `restartCount` it was started with.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerState {
    None,
    Pending {
        attempt: i32,
    },
    /// `progress` in percent (0–100), `None` when the total is unknown.
    Running {
        attempt: i32,
        progress: Option<f64>,
    },
    Succeeded {
        attempt: i32,
    },
    Failed {
        attempt: i32,
        failure: WorkerFailure,
    },
}

/// Everything `plan` may look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub dv: DataVolume,
    pub volume: VolumeState,
    pub worker: WorkerState,
    pub source: SourceState,
    pub now: Timestamp,
    pub config: PlanConfig,
}

/// What a worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WorkerKind {
    /// http or registry → volume.
    Import,
    /// Serve CDI's upload endpoints and write what arrives.
    Upload,
    /// PVC or snapshot → volume.
    Clone,
    /// An empty disk of the requested size.
    Blank,
}

/// The volume to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRequest {
    /// Volume (claim) name: the DataVolume's name.
    pub name: String,
    /// Capacity to request: the virtual size, inflated for filesystem overhead on Filesystem
    /// volumes of `storage` DataVolumes.
    pub capacity_bytes: u64,
    /// The disk size the user asked for. Workers make the disk exactly this large, even where
    /// CDI's usable-space rounding would make it smaller.
    pub virtual_size_bytes: u64,
    pub block: bool,
    pub preallocate: bool,
    pub storage_class_name: Option<String>,
}

/// One effect for the driver to apply, in order. Drivers apply each one idempotently (create
/// if absent, delete if present), so replaying a plan after a crash is harmless.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Step {
    CreateVolume(VolumeRequest),
    StartWorker {
        kind: WorkerKind,
        attempt: i32,
    },
    DeleteWorker,
    /// Replace `status` with this (only emitted when it differs from the observed status).
    UpdateStatus(DataVolumeStatus),
    /// Observe again after this long, even if nothing changes.
    RequeueAfter(Duration),
    /// Nothing to do until something changes.
    AwaitChange,
}

impl Step {
    /// Whether the step changes anything (everything but requeue / await).
    pub fn is_work(&self) -> bool {
        !matches!(self, Step::RequeueAfter(_) | Step::AwaitChange)
    }
}

/// Retry delay after the `restarts`-th transient failure: 10 s, 20 s, 40 s, … capped at 5 min.
pub fn backoff(restarts: i32) -> Duration {
    let doublings = u32::try_from(restarts.saturating_sub(1)).unwrap_or(0).min(16);
    BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_CAP)
}

/// Retry delay of a `kind` worker after its `restarts`-th transient failure: [`backoff`],
/// except for uploads, which take the client's next attempt at once (the failure was the
/// client's transfer; CDI's upload server accepts a new upload right away too).
pub fn retry_backoff(kind: WorkerKind, restarts: i32) -> Duration {
    match kind {
        WorkerKind::Upload => Duration::ZERO,
        _ => backoff(restarts),
    }
}

/// Plans the next steps for one DataVolume. See the module docs for the state machine.
pub fn plan(observed: &Observed) -> Vec<Step> {
    let dv = &observed.dv;
    let current = dv.status.clone().unwrap_or_default();
    let mut next = Planner { observed, status: current.clone(), steps: Vec::new() };
    next.decide();
    let Planner { status, mut steps, .. } = next;
    if status != current {
        // Status first: a driver that crashes after it has still recorded what it decided.
        steps.insert(0, Step::UpdateStatus(status));
    }
    steps
}

struct Planner<'a> {
    observed: &'a Observed,
    status: DataVolumeStatus,
    steps: Vec<Step>,
}

impl Planner<'_> {
    fn decide(&mut self) {
        let observed = self.observed;
        let dv = &observed.dv;
        let worker_exists = observed.worker != WorkerState::None;
        if dv.metadata.deletion_timestamp.is_some() || self.status.phase.is_terminal() {
            // Deleting, or done: clean up a leftover worker, then nothing more to do.
            if worker_exists {
                self.steps.push(Step::DeleteWorker);
            }
            self.steps.push(Step::AwaitChange);
            return;
        }
        if let Err(error) = validate_data_volume(dv) {
            // Admission normally stops these; objects from an older store or a bypassed webhook
            // end here. The spec is immutable, so this is final.
            self.status.phase = DataVolumePhase::Failed;
            self.condition(
                condition::READY,
                ConditionStatus::False,
                Some(reason::CLAIM_NOT_VALID),
                Some(error.to_string()),
            );
            if worker_exists {
                self.steps.push(Step::DeleteWorker);
            }
            self.steps.push(Step::AwaitChange);
            return;
        }
        let kind = worker_kind(dv);
        let claim = dv.metadata.name().to_owned();
        self.status.claim_name = Some(claim.clone());
        if self.status.progress.is_none() {
            self.status.progress = Some("N/A".into());
        }

        let Some(request) = self.volume_request(kind) else {
            // A clone whose source does not exist: wait for it (CDI: event CloneWithoutSource).
            self.status.phase = DataVolumePhase::Pending;
            self.condition(
                condition::BOUND,
                ConditionStatus::False,
                Some(reason::NOT_FOUND),
                Some("No PVC found".into()),
            );
            self.condition(condition::RUNNING, ConditionStatus::False, None, None);
            self.condition(
                condition::READY,
                ConditionStatus::False,
                Some(reason::CLONE_WITHOUT_SOURCE),
                Some(format!("Clone source {} not found", clone_source_name(dv))),
            );
            self.steps.push(Step::AwaitChange);
            return;
        };

        if observed.volume == VolumeState::Absent {
            self.status.phase = DataVolumePhase::Pending;
            self.condition(
                condition::BOUND,
                ConditionStatus::False,
                Some(reason::PENDING),
                Some(format!("PVC {claim} Pending")),
            );
            self.condition(condition::RUNNING, ConditionStatus::False, None, None);
            self.condition(condition::READY, ConditionStatus::False, None, None);
            self.steps.push(Step::CreateVolume(request));
            self.steps.push(Step::AwaitChange);
            return;
        }
        self.condition(
            condition::BOUND,
            ConditionStatus::True,
            Some(reason::BOUND),
            Some(format!("PVC {claim} Bound")),
        );

        let restarts = self.status.restart_count;
        match &observed.worker {
            WorkerState::None => self.start_or_wait(kind),
            WorkerState::Pending { .. } => {
                self.status.phase = scheduled_phase(kind);
                self.condition(
                    condition::RUNNING,
                    ConditionStatus::False,
                    Some(reason::PENDING),
                    Some("Worker is starting".into()),
                );
                self.condition(condition::READY, ConditionStatus::False, None, None);
                self.steps.push(Step::AwaitChange);
            }
            WorkerState::Running { progress, .. } => {
                self.status.phase = in_progress_phase(kind);
                self.status.progress = Some(match progress {
                    Some(p) => format!("{:.2}%", p.clamp(0.0, 100.0)),
                    None => "N/A".into(),
                });
                self.condition(condition::RUNNING, ConditionStatus::True, Some(reason::POD_RUNNING), None);
                self.condition(
                    condition::READY,
                    ConditionStatus::False,
                    Some(reason::TRANSFER_RUNNING),
                    None,
                );
                self.steps.push(Step::RequeueAfter(PROGRESS_INTERVAL));
            }
            WorkerState::Succeeded { .. } => {
                self.status.phase = DataVolumePhase::Succeeded;
                self.status.progress = Some("100.0%".into());
                self.condition(condition::RUNNING, ConditionStatus::False, Some(reason::COMPLETED), None);
                self.condition(condition::READY, ConditionStatus::True, None, None);
                self.steps.push(Step::DeleteWorker);
                self.steps.push(Step::AwaitChange);
            }
            WorkerState::Failed { failure, .. } if !failure.retryable => {
                self.status.phase = DataVolumePhase::Failed;
                self.condition(
                    condition::RUNNING,
                    ConditionStatus::False,
                    Some(&failure.reason),
                    Some(failure.message.clone()),
                );
                self.condition(condition::READY, ConditionStatus::False, None, None);
                self.steps.push(Step::DeleteWorker);
                self.steps.push(Step::AwaitChange);
            }
            WorkerState::Failed { attempt, failure } if kind == WorkerKind::Upload => {
                // The upload's client broke off (or sent a bad image): count and record it, and
                // take the next upload at once, as CDI's upload server does. Waiting out a
                // back-off would only answer the client's retry with 503.
                if *attempt >= restarts {
                    self.record_transient_failure(kind, failure);
                }
                self.status.phase = in_progress_phase(kind);
                self.steps.push(Step::DeleteWorker);
                self.steps.push(Step::StartWorker { kind, attempt: self.status.restart_count });
                self.steps.push(Step::AwaitChange);
            }
            WorkerState::Failed { attempt, failure } => {
                if *attempt >= restarts {
                    self.record_transient_failure(kind, failure);
                }
                self.steps.push(Step::DeleteWorker);
                self.steps.push(Step::RequeueAfter(self.retry_delay().unwrap_or(Duration::ZERO)));
            }
        }
    }

    /// Counts a transient failure not counted yet and records when it failed (the back-off
    /// clock) and why.
    fn record_transient_failure(&mut self, kind: WorkerKind, failure: &WorkerFailure) {
        self.status.restart_count = self.status.restart_count.saturating_add(1);
        self.status.phase = in_progress_phase(kind);
        self.condition(
            condition::RUNNING,
            ConditionStatus::False,
            Some(&failure.reason),
            Some(failure.message.clone()),
        );
        self.restart_backoff_clock();
        self.condition(condition::READY, ConditionStatus::False, None, None);
    }

    /// No worker: start one, unless a transient failure's back-off is still running (uploads
    /// have none: see [`retry_backoff`]).
    fn start_or_wait(&mut self, kind: WorkerKind) {
        if let Some(wait) = self.retry_delay().filter(|wait| !wait.is_zero()) {
            self.steps.push(Step::RequeueAfter(wait));
            return;
        }
        self.status.phase = scheduled_phase(kind);
        self.condition(
            condition::RUNNING,
            ConditionStatus::False,
            Some(reason::PENDING),
            Some("Worker is starting".into()),
        );
        self.condition(condition::READY, ConditionStatus::False, None, None);
        self.steps.push(Step::StartWorker { kind, attempt: self.status.restart_count });
        self.steps.push(Step::AwaitChange);
    }

    /// Time left before the next retry, `None` when no failure is waiting for one. Measured
    /// from the Running condition's transition, which the failure set.
    fn retry_delay(&self) -> Option<Duration> {
        let restarts = self.status.restart_count;
        let running = self.status.condition(condition::RUNNING)?;
        let waiting_for_retry = restarts > 0
            && running.status == ConditionStatus::False
            && !matches!(running.reason.as_deref(), None | Some(reason::PENDING) | Some(reason::COMPLETED));
        if !waiting_for_retry {
            return None;
        }
        let Some(failed_at) = running.last_transition_time.as_deref().and_then(Timestamp::parse_rfc3339)
        else {
            return Some(Duration::ZERO); // unreadable time: retry now rather than never
        };
        let wait = retry_backoff(worker_kind(&self.observed.dv), restarts);
        let retry_at = failed_at.0.saturating_add(i64::try_from(wait.as_secs()).unwrap_or(i64::MAX));
        let left = retry_at.saturating_sub(self.observed.now.0);
        Some(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
    }

    /// The volume to create, `None` for a clone without a source.
    fn volume_request(&self, kind: WorkerKind) -> Option<VolumeRequest> {
        let observed = self.observed;
        let spec = &observed.dv.spec;
        let source_size = match observed.source {
            SourceState::Present { size_bytes } => Some(size_bytes),
            SourceState::Missing | SourceState::NotApplicable => None,
        };
        if kind == WorkerKind::Clone && source_size.is_none() {
            return None;
        }
        // Validation guarantees a positive size except for sizeless clones.
        let requested =
            spec.requested_size().and_then(|q| q.bytes().ok()).and_then(|b| u64::try_from(b).ok());
        let virtual_size = requested.or(source_size)?;
        let block = spec.is_block();
        let capacity = if spec.storage.is_some() && !block {
            observed.config.filesystem_overhead.required_space(virtual_size).unwrap_or(virtual_size)
        } else {
            virtual_size
        };
        Some(VolumeRequest {
            name: observed.dv.metadata.name().to_owned(),
            capacity_bytes: capacity,
            virtual_size_bytes: virtual_size,
            block,
            preallocate: spec.preallocation.unwrap_or(observed.config.preallocation),
            storage_class_name: spec.claim().and_then(|c| c.storage_class_name.clone()),
        })
    }

    /// Marks the Running condition as changed now, even if its status did not flip (a worker
    /// that fails while still starting): the retry back-off counts from here.
    fn restart_backoff_clock(&mut self) {
        let now = self.observed.now.to_rfc3339();
        if let Some(c) = self.status.conditions.iter_mut().find(|c| c.type_ == condition::RUNNING) {
            c.last_transition_time = Some(now);
        }
    }

    /// Sets a condition; times change only when something about it changes (the transition
    /// time only when its status flips), so an unchanged observation writes nothing.
    fn condition(
        &mut self,
        type_: &str,
        status: ConditionStatus,
        reason: Option<&str>,
        message: Option<String>,
    ) {
        let now = self.observed.now.to_rfc3339();
        let reason = reason.map(str::to_owned);
        let conditions = &mut self.status.conditions;
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) if c.status == status && c.reason == reason && c.message == message => {}
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = Some(now.clone());
                }
                c.status = status;
                c.reason = reason;
                c.message = message;
                c.last_heartbeat_time = Some(now);
            }
            None => conditions.push(Condition {
                type_: type_.to_owned(),
                status,
                reason,
                message,
                last_transition_time: Some(now.clone()),
                last_heartbeat_time: Some(now),
            }),
        }
    }
}

/// Which worker a (valid) DataVolume needs; `sourceRef` resolves to a clone.
fn worker_kind(dv: &DataVolume) -> WorkerKind {
    match dv.spec.source.as_ref().and_then(|s| s.kind()) {
        Some(SourceKind::Upload) => WorkerKind::Upload,
        Some(SourceKind::Blank) => WorkerKind::Blank,
        Some(SourceKind::Pvc | SourceKind::Snapshot) | None => WorkerKind::Clone,
        Some(_) => WorkerKind::Import,
    }
}

fn clone_source_name(dv: &DataVolume) -> String {
    let source = dv.spec.source.as_ref();
    if let Some(r) = source.and_then(|s| s.pvc.as_ref()) {
        return format!("PVC {}/{}", r.namespace, r.name);
    }
    if let Some(r) = source.and_then(|s| s.snapshot.as_ref()) {
        return format!("VolumeSnapshot {}/{}", r.namespace, r.name);
    }
    match &dv.spec.source_ref {
        Some(r) => {
            format!("{} {}/{}", r.kind, r.namespace.as_deref().unwrap_or(dv.metadata.namespace()), r.name)
        }
        None => "(none)".into(),
    }
}

fn scheduled_phase(kind: WorkerKind) -> DataVolumePhase {
    match kind {
        WorkerKind::Import | WorkerKind::Blank => DataVolumePhase::ImportScheduled,
        WorkerKind::Upload => DataVolumePhase::UploadScheduled,
        WorkerKind::Clone => DataVolumePhase::CloneScheduled,
    }
}

fn in_progress_phase(kind: WorkerKind) -> DataVolumePhase {
    match kind {
        WorkerKind::Import | WorkerKind::Blank => DataVolumePhase::ImportInProgress,
        WorkerKind::Upload => DataVolumePhase::UploadReady,
        WorkerKind::Clone => DataVolumePhase::CloneInProgress,
    }
}

#[cfg(test)]
mod tests;
