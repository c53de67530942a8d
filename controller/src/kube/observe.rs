//! Observation: what the cluster objects say, in `plan`'s terms. Pure functions of the objects.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;

use super::names::{ANN_ATTEMPT, ANN_BIND_IMMEDIATE, ANN_SELECTED_NODE};
use crate::api::datavolume::{DataVolumeStatus, reason};
use crate::api::{DataVolume, DataVolumePhase};
use crate::plan::{Step, VolumeState, WorkerFailure, WorkerState};
use crate::quantity::parse_quantity;

/// Longest termination message text kept in a condition (Kubernetes keeps 4096 bytes).
pub const MAX_MESSAGE: usize = 1024;

/// Bytes of a quantity string, `None` when unparsable or negative.
fn bytes(quantity: &str) -> Option<u64> {
    parse_quantity(quantity).ok().and_then(|b| u64::try_from(b).ok())
}

/// The capacity of a PVC: `status.capacity.storage` once bound, else the request.
pub fn claim_bytes(pvc: &PersistentVolumeClaim) -> Option<u64> {
    let capacity = pvc.status.as_ref().and_then(|s| s.capacity.as_ref()).and_then(|c| c.get("storage"));
    let request = pvc
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    capacity.or(request).and_then(|q| bytes(&q.0))
}

/// Whether a PVC is `Bound`.
pub fn is_bound(pvc: &PersistentVolumeClaim) -> bool {
    pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

/// The target volume as `plan` sees it.
pub fn volume_state(pvc: Option<&PersistentVolumeClaim>) -> VolumeState {
    match pvc {
        None => VolumeState::Absent,
        Some(pvc) => VolumeState::Present { capacity_bytes: claim_bytes(pvc).unwrap_or(0) },
    }
}

/// Whether the DataVolume must wait for its consumer: the gate is on, the PVC is Pending on a
/// WaitForFirstConsumer class, no node was selected for it yet, and the DataVolume did not ask
/// to bind at once (`cdi.kubevirt.io/storage.bind.immediate.requested`). Starting the worker
/// then would bind the volume to whatever node the worker lands on.
pub fn waits_for_first_consumer(
    honor: bool,
    dv: &DataVolume,
    pvc: Option<&PersistentVolumeClaim>,
    class: Option<&StorageClass>,
) -> bool {
    let Some(pvc) = pvc else { return false };
    let pending = pvc.status.as_ref().and_then(|s| s.phase.as_deref()).is_none_or(|p| p == "Pending");
    let wffc = class.and_then(|c| c.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer");
    let selected = pvc.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(ANN_SELECTED_NODE));
    let immediate = dv.metadata.annotations.get(ANN_BIND_IMMEDIATE).is_some_and(|v| v != "false");
    honor && pending && wffc && !selected && !immediate
}

/// Rewrites a plan for a DataVolume waiting for its first consumer: no worker is started and
/// the phase is `WaitForFirstConsumer` (CDI's legacy flow with `HonorWaitForFirstConsumer`).
/// A status update is kept only when the result differs from `current`.
pub fn hold_for_first_consumer(current: Option<&DataVolumeStatus>, steps: Vec<Step>) -> Vec<Step> {
    let mut status = None;
    let mut rest = Vec::new();
    for step in steps {
        match step {
            Step::UpdateStatus(s) => status = Some(s),
            Step::StartWorker { .. } => {}
            other => rest.push(other),
        }
    }
    let Some(mut status) = status.or_else(|| current.cloned()) else { return rest };
    if !status.phase.is_terminal() {
        status.phase = DataVolumePhase::WaitForFirstConsumer;
    }
    if Some(&status) != current {
        rest.insert(0, Step::UpdateStatus(status));
    }
    rest
}

/// The attempt a worker Pod was started with (its [`ANN_ATTEMPT`] annotation; 0 if absent).
pub fn pod_attempt(pod: &Pod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANN_ATTEMPT))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A worker Pod as `plan` sees it; `progress` (percent) is what its metrics said while running.
pub fn worker_state(pod: Option<&Pod>, progress: Option<f64>) -> WorkerState {
    let Some(pod) = pod else { return WorkerState::None };
    let attempt = pod_attempt(pod);
    if pod.metadata.deletion_timestamp.is_some() {
        // Being deleted (a retry cleaning up): not a worker any more, but not gone either.
        return WorkerState::Pending { attempt };
    }
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => WorkerState::Running { attempt, progress },
        Some("Succeeded") => WorkerState::Succeeded { attempt },
        Some("Failed") => WorkerState::Failed { attempt, failure: pod_failure(pod) },
        _ => WorkerState::Pending { attempt },
    }
}

/// Why a `Failed` worker Pod failed: its termination message, else what the kubelet said.
pub fn pod_failure(pod: &Pod) -> WorkerFailure {
    let status = pod.status.as_ref();
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    match terminated {
        Some(t) => parse_termination(t.message.as_deref().unwrap_or(""), t.exit_code, t.reason.as_deref()),
        None => WorkerFailure {
            reason: reason::ERROR.to_owned(),
            message: match status.and_then(|s| s.reason.as_deref()) {
                // Evicted, node lost, …: the worker never got to say anything.
                Some(why) => format!(
                    "worker Pod failed: {why}: {}",
                    status.and_then(|s| s.message.as_deref()).unwrap_or("")
                )
                .trim_end_matches([':', ' '])
                .to_owned(),
                None => "worker Pod failed without a termination message".to_owned(),
            },
            retryable: true,
        },
    }
}

/// Parses a worker's termination message: `{"result":"Failed","reason":…,"message":…,
/// "retryable":bool}`. Anything else (a crash, the log tail kept by `FallbackToLogsOnError`, an
/// OOM kill) counts as a transient `Error` naming the exit code.
pub fn parse_termination(message: &str, exit_code: i32, kubelet_reason: Option<&str>) -> WorkerFailure {
    #[derive(serde::Deserialize)]
    struct Reported {
        reason: Option<String>,
        message: Option<String>,
        retryable: Option<bool>,
    }
    if let Ok(reported) = serde_json::from_str::<Reported>(message.trim())
        && let Some(text) = reported.message
    {
        return WorkerFailure {
            reason: reported.reason.filter(|r| !r.is_empty()).unwrap_or_else(|| reason::ERROR.to_owned()),
            message: cut(&text),
            retryable: reported.retryable.unwrap_or(true),
        };
    }
    let last_line = message.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let mut text = format!("worker exited with code {exit_code}");
    if let Some(why) = kubelet_reason.filter(|r| *r != "Error") {
        text.push_str(&format!(" ({why})"));
    }
    if !last_line.is_empty() {
        text.push_str(": ");
        text.push_str(last_line);
    }
    WorkerFailure { reason: reason::ERROR.to_owned(), message: cut(&text), retryable: true }
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_MESSAGE {
        return text.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A host-assisted clone's worker from its two Pods: failed if either failed (the target's
/// failure first: it names what went wrong with the volume), succeeded when the target did,
/// running while the target runs (progress is the target's), pending otherwise.
pub fn copy_state(target: WorkerState, source: WorkerState) -> WorkerState {
    match (target, source) {
        (failed @ WorkerState::Failed { .. }, _) => failed,
        (_, WorkerState::Failed { attempt, failure }) => WorkerState::Failed {
            attempt,
            failure: WorkerFailure { message: format!("clone source: {}", failure.message), ..failure },
        },
        (done @ WorkerState::Succeeded { .. }, _) => done,
        (WorkerState::None, WorkerState::None) => WorkerState::None,
        (WorkerState::None, WorkerState::Pending { attempt } | WorkerState::Running { attempt, .. }) => {
            WorkerState::Pending { attempt }
        }
        (WorkerState::None, WorkerState::Succeeded { attempt }) => WorkerState::Pending { attempt },
        (target, _) => target,
    }
}

/// `diskplane_progress_ratio` (0..1) of a worker's Prometheus text, as percent.
pub fn parse_progress(metrics: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix("diskplane_progress_ratio")?;
        let value = match rest.strip_prefix('{') {
            Some(labelled) => labelled.split_once('}')?.1,
            None => rest,
        };
        let ratio: f64 = value.split_whitespace().next()?.parse().ok()?;
        ratio.is_finite().then(|| (ratio * 100.0).clamp(0.0, 100.0))
    })
}

/// How long to wait for a worker's metrics before reporting the progress as unknown.
pub const METRICS_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests;
