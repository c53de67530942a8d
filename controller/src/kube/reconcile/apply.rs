//! Applying `plan`'s volume and worker steps: PVCs, VolumeSnapshots, worker Pods, upload
//! Services and Secrets, the finalizer for objects in other namespaces.

use ::kube::Resource;
use ::kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use ::kube::runtime::events::EventType;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use serde_json::json;

use super::world::{CloneSource, Observation, choose_strategy, clone_source};
use super::{Apis, Context, publish};
use crate::api::DataVolume;
use crate::kube::build::{self, WorkerRole, WorkerSpec};
use crate::kube::clone::{CloneChoice, CloneStrategy};
use crate::kube::error::{Error, Result};
use crate::kube::names::*;
use crate::kube::observe;
use crate::kube::resource::{DataVolumeObject, VolumeSnapshotObject, volume_snapshots};
use crate::plan::{VolumeRequest, WorkerKind};

pub(super) async fn create<K>(api: &Api<K>, object: &K, what: String) -> Result<()>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api
        .create(&PostParams { field_manager: Some(MANAGER.to_owned()), ..PostParams::default() }, object)
        .await
    {
        Ok(_) => Ok(()),
        Err(::kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(Error::api("creating", what)(e)),
    }
}

pub(super) async fn delete<K>(api: &Api<K>, name: &str, what: String) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        propagation_policy: Some(::kube::api::PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(::kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(Error::api("deleting", what)(e)),
    }
}

pub(super) async fn create_volume(
    seen: &Observation,
    apis: &Apis,
    ctx: &Context,
    object: &DataVolumeObject,
    request: &VolumeRequest,
) -> Result<()> {
    let dv = &seen.dv;
    let mut request = request.clone();
    if request.storage_class_name.is_none() && dv.spec.storage.is_some() {
        // `storage` DataVolumes get the class their profile was resolved for.
        request.storage_class_name = seen.class_name.clone();
    }
    let choice = match &seen.source {
        Some(CloneSource::Pvc(n)) => Some(choose_strategy(
            dv,
            seen.profile.as_ref(),
            seen.class_name.as_deref(),
            n,
            seen.source_pvc.as_deref(),
            ctx,
        )),
        Some(CloneSource::Snapshot(_)) => {
            Some(CloneChoice { strategy: CloneStrategy::Snapshot, fallback_reason: None })
        }
        _ => None,
    };
    if let (Some(choice), Some(CloneSource::Pvc(n))) = (&choice, &seen.source) {
        if choice.strategy == CloneStrategy::Snapshot {
            let class = seen
                .profile
                .as_ref()
                .and_then(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.snapshot_class.clone())
                        .or_else(|| p.spec.snapshot_class.clone())
                })
                .unwrap_or_default();
            let snapshot = build::snapshot(dv, &n.namespace, &n.name, &class);
            let api: Api<VolumeSnapshotObject> =
                Api::namespaced_with(ctx.client.clone(), &n.namespace, &volume_snapshots());
            create(
                &api,
                &snapshot,
                format!(
                    "VolumeSnapshot {}/{}",
                    n.namespace,
                    snapshot.metadata.name.clone().unwrap_or_default()
                ),
            )
            .await?;
        }
        if let Some(reason) = &choice.fallback_reason {
            publish(
                ctx,
                object,
                EventType::Warning,
                "CloneFallback",
                Some(format!("host-assisted copy: {reason}")),
            )
            .await;
        }
    }
    let pvc = build::claim(dv, &request, choice.as_ref());
    create(&apis.pvcs, &pvc, format!("PVC {}/{}", dv.metadata.namespace(), request.name)).await
}

/// Virtual size and preallocation recorded on the PVC at creation.
pub(super) fn pvc_sizes(seen: &Observation) -> (u64, bool, bool) {
    let pvc = seen.pvc.as_deref();
    let annotations = pvc.and_then(|p| p.metadata.annotations.as_ref());
    let virtual_size = annotations
        .and_then(|a| a.get(ANN_VIRTUAL_SIZE))
        .and_then(|v| v.parse().ok())
        .or_else(|| pvc.and_then(observe::claim_bytes))
        .unwrap_or(0);
    let preallocate = annotations.and_then(|a| a.get(ANN_PREALLOCATION)).is_some_and(|v| v == "true");
    let block = pvc.and_then(|p| p.spec.as_ref()).and_then(|s| s.volume_mode.as_deref()) == Some("Block");
    (virtual_size, preallocate, block)
}

pub(super) async fn start_worker(
    seen: &Observation,
    apis: &Apis,
    ctx: &Context,
    kind: WorkerKind,
    attempt: i32,
) -> Result<()> {
    let dv = &seen.dv;
    let namespace = dv.metadata.namespace();
    let (virtual_size, preallocate, block) = pvc_sizes(seen);
    let spec = |role| WorkerSpec { dv, role, attempt, block, virtual_size, preallocate };
    match kind {
        WorkerKind::Clone => {
            let Some(CloneSource::Pvc(n)) = &seen.source else { return Ok(()) };
            if seen.strategy != Some(CloneStrategy::Copy) {
                return Ok(()); // the CSI driver clones
            }
            if n.namespace != namespace {
                add_finalizer(dv, apis).await?;
            }
            let source_block = seen
                .source_pvc
                .as_deref()
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.volume_mode.as_deref())
                == Some("Block");
            clone_secrets(dv, &n.namespace, ctx).await?;
            let pod = build::worker_pod(
                &ctx.config,
                &spec(WorkerRole::CloneSource {
                    namespace: n.namespace.clone(),
                    claim: n.name.clone(),
                    block: source_block,
                }),
            );
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &n.namespace);
            create(
                &api,
                &pod,
                format!("Pod {}/{}", n.namespace, pod.metadata.name.clone().unwrap_or_default()),
            )
            .await
        }
        WorkerKind::Upload => {
            let key = match build::derived_upload_key(&ctx.config, dv) {
                Some(derived) => derived,
                None => (ctx.token_key)().map_err(Error::TokenKey)?,
            };
            let names = upload_service_names(dv.metadata.name(), namespace);
            let serving = ctx.ca.get().issue(&names, (ctx.now)().0)?;
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            let secret = build::upload_secret(dv, &key, &serving);
            create(&secrets, &secret, format!("Secret {namespace}/{}", upload_pod(dv.metadata.name())))
                .await?;
            let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
            let service = build::upload_service(dv);
            create(&services, &service, format!("Service {namespace}/{}", upload_pod(dv.metadata.name())))
                .await?;
            let pod = build::worker_pod(&ctx.config, &spec(WorkerRole::Upload));
            create(&apis.pods, &pod, format!("Pod {namespace}/{}", upload_pod(dv.metadata.name()))).await
        }
        _ => {
            let pod = build::worker_pod(&ctx.config, &spec(WorkerRole::Import));
            create(&apis.pods, &pod, format!("Pod {namespace}/{}", importer_pod(dv.metadata.name()))).await
        }
    }
}

/// The Secrets of a copy clone, before its Pods: the source namespace's first, with the token
/// and the source's serving certificate; then the target namespace's (token and CA only) when
/// it is another. A complete existing source Secret is kept as it is, so a retry after a
/// partial failure never splits the token or pairs a key with another certificate; an
/// incomplete one (made by a diskplane without TLS material) is replaced.
async fn clone_secrets(dv: &DataVolume, source_namespace: &str, ctx: &Context) -> Result<()> {
    let uid = dv.metadata.uid.as_deref().unwrap_or_default();
    let name = clone_secret(uid);
    let what = format!("Secret {source_namespace}/{name}");
    let source: Api<Secret> = Api::namespaced(ctx.client.clone(), source_namespace);
    let existing = source.get_opt(&name).await.map_err(Error::api("reading", what.clone()))?;
    let value = |key: &str| {
        existing
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get(key))
            .and_then(|t| String::from_utf8(t.0.clone()).ok())
            .filter(|t| !t.trim().is_empty())
    };
    let complete = [build::TLS_CERT_KEY, build::TLS_KEY_KEY].iter().all(|k| value(k).is_some());
    let (token, ca_pem) = match (value(build::CLONE_TOKEN_KEY), value(build::CA_CERT_KEY)) {
        (Some(token), Some(ca_pem)) if complete => (token, ca_pem),
        _ => {
            if existing.is_some() {
                delete(&source, &name, what.clone()).await?;
            }
            let token = (ctx.token_key)().map_err(Error::TokenKey)?;
            let names = [clone_source_server_name(uid, source_namespace)];
            let serving = ctx.ca.get().issue(&names, (ctx.now)().0)?;
            let secret =
                build::clone_secret_object(dv, source_namespace, &token, &serving.ca_pem, Some(&serving));
            create(&source, &secret, what).await?;
            (token, serving.ca_pem)
        }
    };
    let namespace = dv.metadata.namespace();
    if namespace != source_namespace {
        let target: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
        let secret = build::clone_secret_object(dv, namespace, &token, &ca_pem, None);
        create(&target, &secret, format!("Secret {namespace}/{name}")).await?;
    }
    Ok(())
}

/// A copy clone's target Pod, once the source Pod of the current attempt runs with an address.
pub(super) async fn start_clone_target(seen: &Observation, apis: &Apis, ctx: &Context) -> Result<()> {
    let dv = &seen.dv;
    let Some(CloneSource::Pvc(n)) = &seen.source else { return Ok(()) };
    let uid = dv.metadata.uid.as_deref().unwrap_or_default();
    let target_name = clone_target_pod(dv.metadata.name());
    if ctx.caches.pod(dv.metadata.namespace(), &target_name).is_some() {
        return Ok(());
    }
    let Some(source) = ctx.caches.pod(&n.namespace, &clone_source_pod(uid)) else { return Ok(()) };
    let status = source.status.as_ref();
    let (Some("Running"), Some(ip)) =
        (status.and_then(|s| s.phase.as_deref()), status.and_then(|s| s.pod_ip.as_deref()))
    else {
        return Ok(());
    };
    let attempt = observe::pod_attempt(&source);
    if attempt != dv.status.as_ref().map_or(0, |s| s.restart_count) {
        return Ok(()); // a source Pod of an older attempt: it is being replaced
    }
    let (virtual_size, preallocate, block) = pvc_sizes(seen);
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip.to_owned() };
    // The source's certificate names it, not its IP (unknown when the certificate was made).
    let role = WorkerRole::CloneTarget {
        source_url: format!("https://{host}:{CLONE_PORT}"),
        server_name: clone_source_server_name(uid, &n.namespace),
    };
    let pod =
        build::worker_pod(&ctx.config, &WorkerSpec { dv, role, attempt, block, virtual_size, preallocate });
    create(&apis.pods, &pod, format!("Pod {}/{target_name}", dv.metadata.namespace())).await
}

pub(super) async fn delete_worker(seen: &Observation, apis: &Apis, ctx: &Context) -> Result<()> {
    let dv = &seen.dv;
    let namespace = dv.metadata.namespace();
    let name = dv.metadata.name();
    let uid = dv.metadata.uid.as_deref().unwrap_or_default();
    match (seen.kind, seen.strategy) {
        (WorkerKind::Clone, Some(CloneStrategy::Snapshot)) => {
            if let Some(CloneSource::Pvc(n)) = &seen.source {
                let api: Api<VolumeSnapshotObject> =
                    Api::namespaced_with(ctx.client.clone(), &n.namespace, &volume_snapshots());
                delete(
                    &api,
                    &clone_snapshot(uid),
                    format!("VolumeSnapshot {}/{}", n.namespace, clone_snapshot(uid)),
                )
                .await?;
            }
        }
        (WorkerKind::Clone, Some(CloneStrategy::CsiClone)) => {}
        (WorkerKind::Clone, _) => {
            delete(
                &apis.pods,
                &clone_target_pod(name),
                format!("Pod {namespace}/{}", clone_target_pod(name)),
            )
            .await?;
            if let Some(CloneSource::Pvc(n)) = &seen.source {
                let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &n.namespace);
                delete(
                    &api,
                    &clone_source_pod(uid),
                    format!("Pod {}/{}", n.namespace, clone_source_pod(uid)),
                )
                .await?;
            }
        }
        (WorkerKind::Upload, _) => {
            let pod = upload_pod(name);
            delete(&apis.pods, &pod, format!("Pod {namespace}/{pod}")).await?;
            let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
            delete(&services, &pod, format!("Service {namespace}/{pod}")).await?;
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            delete(&secrets, &pod, format!("Secret {namespace}/{pod}")).await?;
        }
        _ => {
            let pod = importer_pod(name);
            delete(&apis.pods, &pod, format!("Pod {namespace}/{pod}")).await?;
        }
    }
    Ok(())
}

pub(super) fn finalizers(dv: &DataVolume) -> Vec<String> {
    dv.metadata
        .extra
        .get("finalizers")
        .and_then(|f| serde_json::from_value::<Vec<String>>(f.clone()).ok())
        .unwrap_or_default()
}

pub(super) async fn add_finalizer(dv: &DataVolume, apis: &Apis) -> Result<()> {
    let mut list = finalizers(dv);
    if list.iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    list.push(FINALIZER.to_owned());
    set_finalizers(dv, apis, list).await
}

pub(super) async fn set_finalizers(dv: &DataVolume, apis: &Apis, list: Vec<String>) -> Result<()> {
    // The resourceVersion makes this a compare-and-swap: a concurrent change fails with 409
    // and the reconcile is retried with the fresh object.
    let patch = json!({ "metadata": {
        "finalizers": list,
        "resourceVersion": dv.metadata.resource_version,
    }});
    let name = dv.metadata.name();
    apis.dvs
        .patch(
            name,
            &PatchParams { field_manager: Some(MANAGER.to_owned()), ..PatchParams::default() },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(Error::api(
            "patching the finalizers of",
            format!("DataVolume {}/{name}", dv.metadata.namespace()),
        ))?;
    Ok(())
}

/// A DataVolume being deleted: what it owns in its namespace goes by garbage collection (owner
/// references); a clone source Pod and Secret in another namespace are deleted here, then the
/// finalizer is removed.
pub(super) async fn finalize(dv: &DataVolume, apis: &Apis, ctx: &Context) -> Result<()> {
    let list = finalizers(dv);
    if !list.iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    if let Some(CloneSource::Pvc(n)) = clone_source(dv, &ctx.caches)
        && n.namespace != dv.metadata.namespace()
    {
        let uid = dv.metadata.uid.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &n.namespace);
        delete(&api, &clone_source_pod(uid), format!("Pod {}/{}", n.namespace, clone_source_pod(uid)))
            .await?;
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &n.namespace);
        let secret = clone_secret(uid);
        delete(&secrets, &secret, format!("Secret {}/{secret}", n.namespace)).await?;
    }
    set_finalizers(dv, apis, list.into_iter().filter(|f| f != FINALIZER).collect()).await
}
