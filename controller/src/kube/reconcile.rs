//! The DataVolume reconciler: observe (informer caches + worker metrics) → [`plan`] → apply
//! (API calls). The cluster twin of `local::Driver::reconcile`.
//!
//! ```text
//!  DataVolume ─┬─ resolve_storage (StorageProfile) ─┐
//!  caches: PVC, Pods, StorageClass, source PVC ─────┼─► Observed ─► plan ─► [Step] ─► apply
//!  worker metrics (GET podIP:8080/metrics) ─────────┘        WFFC hold ┘
//! ```
//!
//! ## Applying steps
//! - `CreateVolume` → the PVC (create; "already exists" is success: a stale cache). For a
//!   `snapshot` clone the VolumeSnapshot first.
//! - `StartWorker` → the worker Pod (import / upload with its Secret and Service). A `copy`
//!   clone starts its source Pod first and its target Pod once the source Pod runs and has an
//!   address (the target connects to it). Upload and clone-source Pods get a serving
//!   certificate from [`Context::ca`] in their Secret.
//! - `DeleteWorker` → delete the worker's Pods (and the upload Service and Secret, the
//!   temporary VolumeSnapshot); "not found" is success.
//! - `UpdateStatus` → a merge patch of the `status` subresource, and an Event on phase changes.
//! - `RequeueAfter` / `AwaitChange` → the returned [`Action`].
//!
//! ## Cross-namespace clones
//! Without an admission webhook the controller cannot know which user created a DataVolume, so
//! the requester is the DataVolume's ServiceAccount: `spec.serviceAccountName`, default
//! `default`, in the DataVolume's namespace (CDI does the same for DataImportCrons). Before the
//! PVC exists, a SubjectAccessReview asks whether that ServiceAccount may `create`
//! `datavolumes/source` (group `cdi.kubevirt.io`) in the source namespace; if not, no PVC is made
//! and the Ready condition says why (`CloneUnauthorized`); it is checked again every minute.

mod apply;
mod world;

use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Api, Patch, PatchParams, PostParams};
use ::kube::runtime::controller::Action;
use ::kube::runtime::events::{Event, EventType, Recorder};
use ::kube::{Client, Resource};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use serde_json::json;

use super::build::ClusterConfig;
use super::ca::SharedCa;
use super::clone::CloneStrategy;
use super::error::{Error, Result};
pub use super::metrics::{HttpMetrics, ProgressReader};
use super::names::*;
use super::observe;
use super::resource::{DataVolumeObject, convert, data_volumes};
use crate::api::datavolume::{DataVolumeStatus, condition};
use crate::api::{Condition, ConditionStatus, DataVolume, DataVolumePhase, Timestamp};
use crate::plan::{Observed, Step, WorkerKind, plan};
use apply::{create_volume, delete_worker, finalize, start_clone_target, start_worker};
pub use world::Caches;
use world::{CloneSource, Observation, observe_dv};

/// Condition reason when a cross-namespace clone is not authorized.
pub const REASON_CLONE_UNAUTHORIZED: &str = "CloneUnauthorized";
/// Condition reason when a clone source cannot be used by this driver.
pub const REASON_CLONE_UNSUPPORTED: &str = "CloneSourceUnsupported";
/// How often a refused clone is authorized again.
pub const UNAUTHORIZED_RECHECK: Duration = Duration::from_secs(60);

/// What the reconciler works with.
pub struct Context {
    pub client: Client,
    pub config: ClusterConfig,
    pub caches: Caches,
    pub recorder: Recorder,
    pub progress: Arc<dyn ProgressReader>,
    /// The clock (tests pin it).
    pub now: fn() -> Timestamp,
    /// A fresh upload token key (hex); tests pin it.
    pub token_key: fn() -> std::io::Result<String>,
    /// The CA that signs upload and clone-source Pods' serving certificates (see
    /// [`super::ca`]).
    pub ca: Arc<SharedCa>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("config", &self.config).finish_non_exhaustive()
    }
}

/// 32 random bytes from the kernel, hex.
pub fn random_token_key() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The reconciler's API handles.
pub(super) struct Apis {
    pub(super) dvs: Api<DataVolumeObject>,
    pub(super) pvcs: Api<PersistentVolumeClaim>,
    pub(super) pods: Api<Pod>,
}

/// Reconciles one DataVolume. Returns when to look again.
///
/// # Errors
/// [`Error::Api`] when an API call fails (retried by the controller with back-off).
pub async fn reconcile(object: Arc<DataVolumeObject>, ctx: Arc<Context>) -> Result<Action> {
    let dv: DataVolume = convert(&*object)?;
    let namespace = dv.metadata.namespace.clone().ok_or(Error::MissingField("metadata.namespace"))?;
    dv.metadata.name.as_ref().ok_or(Error::MissingField("metadata.name"))?;
    dv.metadata.uid.as_ref().ok_or(Error::MissingField("metadata.uid"))?;
    let client = ctx.client.clone();
    let apis = Apis {
        dvs: Api::namespaced_with(client.clone(), &namespace, &data_volumes()),
        pvcs: Api::namespaced(client.clone(), &namespace),
        pods: Api::namespaced(client.clone(), &namespace),
    };
    if dv.metadata.deletion_timestamp.is_some() {
        finalize(&dv, &apis, &ctx).await?;
        return Ok(Action::await_change());
    }
    let seen = observe_dv(&dv, &ctx).await;

    // Refusals before any PVC exists: an unauthorized cross-namespace clone, a source this
    // driver cannot clone from.
    if seen.pvc.is_none()
        && let Some(refusal) = refusal(&seen, &ctx).await?
    {
        return refuse(&object, &dv, &apis, &ctx, refusal).await;
    }

    let observed = Observed {
        dv: seen.dv.clone(),
        volume: observe::volume_state(seen.pvc.as_deref()),
        worker: seen.worker.clone(),
        source: seen.source_state,
        now: (ctx.now)(),
        config: ctx.config.plan,
    };
    let mut steps = plan(&observed);
    if seen.waits_for_consumer {
        steps = observe::hold_for_first_consumer(dv.status.as_ref(), steps);
    }
    let mut action = Action::await_change();
    for step in steps {
        match step {
            Step::UpdateStatus(status) => update_status(&object, &dv, &apis, &ctx, status, seen.kind).await?,
            Step::CreateVolume(request) => create_volume(&seen, &apis, &ctx, &object, &request).await?,
            Step::StartWorker { kind, attempt } => start_worker(&seen, &apis, &ctx, kind, attempt).await?,
            Step::DeleteWorker => delete_worker(&seen, &apis, &ctx).await?,
            Step::RequeueAfter(after) => action = Action::requeue(after),
            _ => {}
        }
    }
    // A copy clone's target starts once its source Pod runs (it connects to the source).
    if seen.strategy == Some(CloneStrategy::Copy)
        && !observed.dv.status.as_ref().is_some_and(|s| s.phase.is_terminal())
    {
        start_clone_target(&seen, &apis, &ctx).await?;
    }
    Ok(action)
}

/// What the controller does after a failed reconcile: retry in 30 s.
pub fn error_policy(_object: Arc<DataVolumeObject>, error: &Error, _ctx: Arc<Context>) -> Action {
    eprintln!("diskplane controller: reconcile failed: {error}");
    Action::requeue(Duration::from_secs(30))
}

/// Why a DataVolume may not get its PVC (yet).
struct Refusal {
    reason: &'static str,
    message: String,
}

async fn refusal(seen: &Observation, ctx: &Context) -> Result<Option<Refusal>> {
    let dv = &seen.dv;
    let namespace = dv.metadata.namespace();
    let source = match &seen.source {
        Some(CloneSource::Pvc(n) | CloneSource::Snapshot(n)) => n,
        _ => return Ok(None),
    };
    if let Some(CloneSource::Snapshot(n)) = &seen.source
        && n.namespace != namespace
    {
        return Ok(Some(Refusal {
            reason: REASON_CLONE_UNSUPPORTED,
            message: format!(
                "VolumeSnapshot {}/{} is in another namespace: restoring across namespaces is not supported yet",
                n.namespace, n.name
            ),
        }));
    }
    if source.namespace == namespace {
        return Ok(None);
    }
    let account =
        dv.spec.service_account_name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into());
    let user = format!("system:serviceaccount:{namespace}:{account}");
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.clone()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(source.namespace.clone()),
                verb: Some("create".into()),
                group: Some(crate::kube::resource::CDI_GROUP.into()),
                resource: Some("datavolumes".into()),
                subresource: Some("source".into()),
                name: Some(source.name.clone()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(ctx.client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(Error::api("creating", "SubjectAccessReview"))?;
    let status = answer.status.unwrap_or_default();
    if status.allowed {
        return Ok(None);
    }
    let why = status.reason.filter(|r| !r.is_empty()).map(|r| format!(": {r}")).unwrap_or_default();
    Ok(Some(Refusal {
        reason: REASON_CLONE_UNAUTHORIZED,
        message: format!(
            "{user} may not create datavolumes/source in namespace {} (clone of {}/{}){why}",
            source.namespace, source.namespace, source.name
        ),
    }))
}

async fn refuse(
    object: &DataVolumeObject,
    dv: &DataVolume,
    apis: &Apis,
    ctx: &Context,
    refusal: Refusal,
) -> Result<Action> {
    let now = (ctx.now)();
    let current = dv.status.clone().unwrap_or_default();
    let mut status = current.clone();
    status.phase = DataVolumePhase::Pending;
    status.claim_name = Some(dv.metadata.name().to_owned());
    if status.progress.is_none() {
        status.progress = Some("N/A".into());
    }
    set_condition(
        &mut status,
        condition::BOUND,
        ConditionStatus::False,
        Some("NotFound"),
        Some("No PVC found".into()),
        now,
    );
    set_condition(&mut status, condition::RUNNING, ConditionStatus::False, None, None, now);
    set_condition(
        &mut status,
        condition::READY,
        ConditionStatus::False,
        Some(refusal.reason),
        Some(refusal.message.clone()),
        now,
    );
    if status != current {
        patch_status(apis, dv, &status).await?;
        publish(ctx, object, EventType::Warning, refusal.reason, Some(refusal.message)).await;
    }
    Ok(Action::requeue(UNAUTHORIZED_RECHECK))
}

/// Sets a condition with `plan`'s rules: times change only when something about it changes.
fn set_condition(
    status: &mut DataVolumeStatus,
    type_: &str,
    value: ConditionStatus,
    reason: Option<&str>,
    message: Option<String>,
    now: Timestamp,
) {
    let now = now.to_rfc3339();
    let reason = reason.map(str::to_owned);
    match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == value && c.reason == reason && c.message == message => {}
        Some(c) => {
            if c.status != value {
                c.last_transition_time = Some(now.clone());
            }
            c.status = value;
            c.reason = reason;
            c.message = message;
            c.last_heartbeat_time = Some(now);
        }
        None => status.conditions.push(Condition {
            type_: type_.to_owned(),
            status: value,
            reason,
            message,
            last_transition_time: Some(now.clone()),
            last_heartbeat_time: Some(now),
        }),
    }
}

async fn patch_status(apis: &Apis, dv: &DataVolume, status: &DataVolumeStatus) -> Result<()> {
    let name = dv.metadata.name();
    let patch = json!({ "status": status });
    apis.dvs
        .patch_status(
            name,
            &PatchParams { field_manager: Some(MANAGER.to_owned()), ..PatchParams::default() },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(Error::api(
            "patching the status of",
            format!("DataVolume {}/{name}", dv.metadata.namespace()),
        ))?;
    Ok(())
}

/// Events are best effort: a failed event never fails the reconcile.
pub(super) async fn publish(
    ctx: &Context,
    object: &DataVolumeObject,
    type_: EventType,
    reason: &str,
    note: Option<String>,
) {
    let reference = object.object_ref(&data_volumes());
    let event =
        Event { type_, reason: reason.to_owned(), note, action: "Reconcile".to_owned(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        eprintln!("diskplane controller: event {reason}: {e}");
    }
}

async fn update_status(
    object: &DataVolumeObject,
    dv: &DataVolume,
    apis: &Apis,
    ctx: &Context,
    status: DataVolumeStatus,
    kind: WorkerKind,
) -> Result<()> {
    patch_status(apis, dv, &status).await?;
    let old = dv.status.as_ref().map(|s| s.phase).unwrap_or_default();
    if old == status.phase {
        return Ok(());
    }
    let verb = match kind {
        WorkerKind::Upload => "Upload",
        WorkerKind::Clone => "Clone",
        _ => "Import",
    };
    let running = status.condition(condition::RUNNING);
    match status.phase {
        DataVolumePhase::Succeeded => {
            publish(
                ctx,
                object,
                EventType::Normal,
                &format!("{verb}Succeeded"),
                Some(format!("{verb} successful")),
            )
            .await;
        }
        DataVolumePhase::Failed => {
            let ready = status.condition(condition::READY);
            let (reason, message) = match (running, ready) {
                (Some(c), _) if c.reason.is_some() && c.message.is_some() => {
                    (c.reason.clone(), c.message.clone())
                }
                (_, Some(c)) => (c.reason.clone(), c.message.clone()),
                _ => (None, None),
            };
            publish(ctx, object, EventType::Warning, reason.as_deref().unwrap_or("Error"), message).await;
        }
        phase => publish(ctx, object, EventType::Normal, phase.as_str(), None).await,
    }
    Ok(())
}
