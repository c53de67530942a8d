//! Observation of one DataVolume's world: the informer caches (PVCs, Pods, StorageClasses,
//! StorageProfiles, DataSources, DataVolumes), the clone source and strategy, the worker Pods
//! and their metrics, in `plan`'s terms.

use std::sync::Arc;

use ::kube::api::Api;
use ::kube::runtime::reflector::{ObjectRef, Store};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;

use super::Context;
use crate::api::datavolume::SourceKind;
use crate::api::{DataSource, DataVolume, DataVolumePhase, NamespacedName, StorageProfile};
use crate::kube::build;
use crate::kube::clone::{self, CloneChoice, CloneFacts, CloneStrategy};
use crate::kube::names::*;
use crate::kube::observe;
use crate::kube::resource::{
    DataSourceObject, DataVolumeObject, StorageProfileObject, VolumeSnapshotObject, convert, volume_snapshots,
};
use crate::plan::{SourceState, WorkerKind, WorkerState};

/// Informer caches the reconciler observes through.
#[derive(Clone)]
pub struct Caches {
    pub pvcs: Store<PersistentVolumeClaim>,
    pub pods: Store<Pod>,
    pub classes: Store<StorageClass>,
    pub profiles: Store<StorageProfileObject>,
    pub data_sources: Store<DataSourceObject>,
    pub data_volumes: Store<DataVolumeObject>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches").finish_non_exhaustive()
    }
}

impl Caches {
    pub(super) fn pvc(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.pvcs.get(&ObjectRef::new(name).within(namespace))
    }

    pub(super) fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(namespace))
    }

    /// The named StorageClass, or the default one.
    pub(super) fn class(&self, name: Option<&str>) -> Option<Arc<StorageClass>> {
        match name {
            Some(name) => self.classes.get(&ObjectRef::new(name)),
            None => self.classes.find(|c| {
                c.metadata.annotations.as_ref().and_then(|a| a.get(ANN_DEFAULT_CLASS)).map(String::as_str)
                    == Some("true")
            }),
        }
    }

    fn profile(&self, class: &str) -> Option<StorageProfile> {
        let object = self.profiles.find(|p| p.metadata.name.as_deref() == Some(class))?;
        convert(&*object).ok()
    }

    fn data_source(&self, namespace: &str, name: &str) -> Option<DataSource> {
        let object = self.data_sources.find(|d| {
            d.metadata.name.as_deref() == Some(name) && d.metadata.namespace.as_deref() == Some(namespace)
        })?;
        convert(&*object).ok()
    }

    fn data_volume_phase(&self, namespace: &str, name: &str) -> Option<DataVolumePhase> {
        let object = self.data_volumes.find(|d| {
            d.metadata.name.as_deref() == Some(name) && d.metadata.namespace.as_deref() == Some(namespace)
        })?;
        Some(object.status.as_ref().map(|s| s.phase).unwrap_or_default())
    }
}

/// The clone source a DataVolume names, resolved through a `sourceRef` DataSource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CloneSource {
    Pvc(NamespacedName),
    Snapshot(NamespacedName),
    /// A `sourceRef` whose DataSource is missing or names nothing usable.
    Unresolved(String),
}

pub(super) fn clone_source(dv: &DataVolume, caches: &Caches) -> Option<CloneSource> {
    let namespace = dv.metadata.namespace();
    let with_ns = |mut n: NamespacedName| {
        if n.namespace.is_empty() {
            n.namespace = namespace.to_owned();
        }
        n
    };
    let source = dv.spec.source.as_ref();
    match source.and_then(|s| s.kind()) {
        Some(SourceKind::Pvc) => {
            return source.and_then(|s| s.pvc.clone()).map(|n| CloneSource::Pvc(with_ns(n)));
        }
        Some(SourceKind::Snapshot) => {
            return source.and_then(|s| s.snapshot.clone()).map(|n| CloneSource::Snapshot(with_ns(n)));
        }
        Some(_) => return None,
        None => {}
    }
    let r = dv.spec.source_ref.as_ref()?;
    let ds_ns = r.namespace.clone().unwrap_or_else(|| namespace.to_owned());
    let Some(ds) = caches.data_source(&ds_ns, &r.name) else {
        return Some(CloneSource::Unresolved(format!("DataSource {ds_ns}/{} not found", r.name)));
    };
    let fill = |mut n: NamespacedName| {
        if n.namespace.is_empty() {
            n.namespace = ds_ns.clone();
        }
        n
    };
    match (ds.spec.source.pvc, ds.spec.source.snapshot) {
        (Some(pvc), _) => Some(CloneSource::Pvc(fill(pvc))),
        (None, Some(snapshot)) => Some(CloneSource::Snapshot(fill(snapshot))),
        (None, None) => Some(CloneSource::Unresolved(format!("DataSource {ds_ns}/{} has no source", r.name))),
    }
}

/// Everything observed about one DataVolume.
pub(super) struct Observation {
    /// The DataVolume with `storage` defaults rendered from its StorageProfile.
    pub(super) dv: DataVolume,
    pub(super) pvc: Option<Arc<PersistentVolumeClaim>>,
    pub(super) profile: Option<StorageProfile>,
    pub(super) class_name: Option<String>,
    pub(super) kind: WorkerKind,
    pub(super) source: Option<CloneSource>,
    pub(super) source_pvc: Option<Arc<PersistentVolumeClaim>>,
    pub(super) source_state: SourceState,
    /// The clone strategy: the PVC's `cloneType` once it exists, else the one to use.
    pub(super) strategy: Option<CloneStrategy>,
    pub(super) worker: WorkerState,
    pub(super) waits_for_consumer: bool,
}

pub(super) fn worker_kind(dv: &DataVolume) -> WorkerKind {
    match dv.spec.source.as_ref().and_then(|s| s.kind()) {
        Some(SourceKind::Upload) => WorkerKind::Upload,
        Some(SourceKind::Blank) => WorkerKind::Blank,
        Some(SourceKind::Pvc | SourceKind::Snapshot) | None => WorkerKind::Clone,
        Some(_) => WorkerKind::Import,
    }
}

pub(super) async fn observe_dv(dv: &DataVolume, ctx: &Context) -> Observation {
    let caches = &ctx.caches;
    let namespace = dv.metadata.namespace();
    let name = dv.metadata.name();
    let class_name = dv.spec.claim().and_then(|c| c.storage_class_name.clone());
    let class = caches.class(class_name.as_deref());
    let class_name = class_name.or_else(|| class.as_ref().and_then(|c| c.metadata.name.clone()));
    let profile = class_name.as_deref().and_then(|c| caches.profile(c));
    let resolved = build::resolve_storage(dv, profile.as_ref());
    let pvc = caches.pvc(namespace, name);
    let kind = worker_kind(dv);
    let source = if kind == WorkerKind::Clone { clone_source(dv, caches) } else { None };
    let (source_pvc, source_state) = match &source {
        Some(CloneSource::Pvc(n)) => {
            let pvc = caches.pvc(&n.namespace, &n.name);
            let ready = pvc.as_deref().filter(|p| observe::is_bound(p)).filter(|p| {
                // A DataVolume's PVC counts only once that DataVolume succeeded.
                let owner = p.metadata.owner_references.iter().flatten().find(|o| o.kind == "DataVolume");
                owner.is_none_or(|o| {
                    caches.data_volume_phase(&n.namespace, &o.name) == Some(DataVolumePhase::Succeeded)
                })
            });
            let state = match ready.and_then(observe::claim_bytes) {
                Some(size_bytes) => SourceState::Present { size_bytes },
                None => SourceState::Missing,
            };
            (pvc, state)
        }
        Some(CloneSource::Snapshot(n)) => (None, snapshot_state(ctx, n).await),
        Some(CloneSource::Unresolved(_)) => (None, SourceState::Missing),
        None => (None, SourceState::NotApplicable),
    };
    let strategy = match (&pvc, &source) {
        (Some(pvc), Some(_)) => pvc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANN_CLONE_TYPE))
            .and_then(|t| CloneStrategy::parse(t)),
        (None, Some(CloneSource::Snapshot(_))) => Some(CloneStrategy::Snapshot),
        (None, Some(CloneSource::Pvc(n))) => Some(
            choose_strategy(
                &resolved,
                profile.as_ref(),
                class_name.as_deref(),
                n,
                source_pvc.as_deref(),
                ctx,
            )
            .strategy,
        ),
        _ => None,
    };
    let terminal = dv.status.as_ref().is_some_and(|s| s.phase.is_terminal());
    let restarts = dv.status.as_ref().map_or(0, |s| s.restart_count);
    let pod_state = |pod: Option<Arc<Pod>>| async move {
        let progress = match pod.as_deref() {
            Some(p) if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") => {
                match p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
                    Some(ip) => ctx.progress.read(ip).await,
                    None => None,
                }
            }
            _ => None,
        };
        observe::worker_state(pod.as_deref(), progress)
    };
    let worker = match (kind, strategy) {
        (WorkerKind::Clone, Some(CloneStrategy::CsiClone | CloneStrategy::Snapshot)) => match &pvc {
            // The CSI driver is the worker: done when the PVC is bound.
            Some(_) if terminal => WorkerState::None,
            Some(p) if observe::is_bound(p) => WorkerState::Succeeded { attempt: restarts },
            Some(_) => WorkerState::Pending { attempt: restarts },
            None => WorkerState::None,
        },
        (WorkerKind::Clone, _) => {
            let target = pod_state(caches.pod(namespace, &clone_target_pod(name))).await;
            let source_pod = match &source {
                Some(CloneSource::Pvc(n)) => caches
                    .pod(&n.namespace, &clone_source_pod(dv.metadata.uid.as_deref().unwrap_or_default())),
                _ => None,
            };
            observe::copy_state(target, observe::worker_state(source_pod.as_deref(), None))
        }
        (WorkerKind::Upload, _) => pod_state(caches.pod(namespace, &upload_pod(name))).await,
        _ => pod_state(caches.pod(namespace, &importer_pod(name))).await,
    };
    let waits_for_consumer = observe::waits_for_first_consumer(
        ctx.config.honor_wait_for_first_consumer,
        dv,
        pvc.as_deref(),
        class.as_deref(),
    );
    Observation {
        dv: resolved,
        pvc,
        profile,
        class_name,
        kind,
        source,
        source_pvc,
        source_state,
        strategy,
        worker,
        waits_for_consumer,
    }
}

pub(super) async fn snapshot_state(ctx: &Context, n: &NamespacedName) -> SourceState {
    let api: Api<VolumeSnapshotObject> =
        Api::namespaced_with(ctx.client.clone(), &n.namespace, &volume_snapshots());
    match api.get_opt(&n.name).await {
        Ok(Some(snapshot)) => {
            let status = snapshot.status.unwrap_or_default();
            let ready = status["readyToUse"].as_bool() == Some(true);
            let size = status["restoreSize"].as_str().and_then(|q| crate::parse_quantity(q).ok());
            match (ready, size.and_then(|s| u64::try_from(s).ok())) {
                (true, Some(size_bytes)) => SourceState::Present { size_bytes },
                _ => SourceState::Missing,
            }
        }
        _ => SourceState::Missing,
    }
}

pub(super) fn choose_strategy(
    dv: &DataVolume,
    profile: Option<&StorageProfile>,
    class_name: Option<&str>,
    source: &NamespacedName,
    source_pvc: Option<&PersistentVolumeClaim>,
    ctx: &Context,
) -> CloneChoice {
    let status = profile.and_then(|p| p.status.as_ref());
    let profile_strategy = status
        .and_then(|s| s.clone_strategy.as_deref())
        .or_else(|| profile.and_then(|p| p.spec.clone_strategy.as_deref()));
    let snapshot_class = status
        .and_then(|s| s.snapshot_class.as_deref())
        .or_else(|| profile.and_then(|p| p.spec.snapshot_class.as_deref()));
    let source_spec = source_pvc.and_then(|p| p.spec.as_ref());
    let source_bytes = source_pvc.and_then(observe::claim_bytes).unwrap_or(0);
    let requested = dv.spec.requested_size().and_then(|q| q.bytes().ok()).and_then(|b| u64::try_from(b).ok());
    let target_bytes = requested.unwrap_or(source_bytes);
    let target_bytes = if dv.spec.storage.is_some() && !dv.spec.is_block() {
        ctx.config.plan.filesystem_overhead.required_space(target_bytes).unwrap_or(target_bytes)
    } else {
        target_bytes
    };
    let source_class = source_spec.and_then(|s| s.storage_class_name.as_deref());
    let source_class = source_class
        .map(str::to_owned)
        .or_else(|| ctx.caches.class(None).and_then(|c| c.metadata.name.clone()));
    clone::choose(&CloneFacts {
        profile_strategy,
        snapshot_class,
        source_namespace: &source.namespace,
        target_namespace: dv.metadata.namespace(),
        source_class: source_class.as_deref(),
        target_class: class_name,
        source_block: source_spec.and_then(|s| s.volume_mode.as_deref()) == Some("Block"),
        target_block: dv.spec.is_block(),
        source_bytes,
        target_bytes,
    })
}
