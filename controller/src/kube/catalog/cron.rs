//! The DataImportCron reconciler: observe (caches) → [`plan_cron`] → apply as kube objects.
//!
//! Steps, in the plan's order:
//! - `Poll` → the template's `secretRef` Secret and `certConfigMap` ConfigMap (read now, in
//!   the cron's namespace) → [`DigestSource::digest`] of its registry URL; a merge patch of the
//!   cron's annotations (`lastCronTime`, `nextCronTime`, and on success `sourceDesiredDigest`)
//!   and of its status (`lastExecutionTimestamp`, the `Polled` condition embedded mode also
//!   keeps); then the plan is made again with the new annotations.
//! - `CreateDataVolume` → POST the pinned DataVolume ("already exists" is success).
//! - `DeleteDataVolume` → DELETE it (its PVC goes by owner reference).
//! - `MarkUsed` → a merge patch of the DataVolume's `lastUseTime` annotation.
//! - `ApplyDataSource` → POST the managed DataSource, or merge-patch its labels and source.
//! - `UpdateStatus` → a merge patch of the cron's status subresource.
//! - `RequeueAt` → requeue at that time (at least a second from now).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::kube::Client;
use ::kube::api::{Api, Patch, PatchParams};
use ::kube::runtime::controller::Action;
use ::kube::runtime::reflector::ObjectRef;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde_json::{Value, json};

use super::{CatalogContext, RegistryAccess, create_object, delete_object};
use crate::api::{DataImportCron, DataImportCronStatus, DataSource, DataVolume, Timestamp};
use crate::catalog::{
    ANN_DESIRED_DIGEST, ANN_LAST_CRON_TIME, ANN_LAST_USE_TIME, ANN_NEXT_CRON_TIME, CronObserved, CronStep,
    ImportObserved, LABEL_CLEANUP, LABEL_CRON, cleanup_due, plan_cron,
};
use crate::cron::Schedule;
use crate::kube::error::{Error, Result};
use crate::kube::names::MANAGER;
use crate::kube::resource::{
    DataImportCronObject, DataSourceObject, DataVolumeObject, convert, data_import_crons, data_sources,
    data_volumes,
};
use crate::local::catalog::POLLED;

/// CDI's finalizer on DataImportCrons; here only on `retentionPolicy: None` crons, whose
/// imports and DataSource go with them.
pub const FINALIZER: &str = "cdi.kubevirt.io/dataImportCronFinalizer";

/// Plans made in one reconcile (a poll, then the plan that uses its digest).
const MAX_PLANS: usize = 2;

struct Apis {
    crons: Api<DataImportCronObject>,
    dvs: Api<DataVolumeObject>,
    sources: Api<DataSourceObject>,
}

fn params() -> PatchParams {
    PatchParams { field_manager: Some(MANAGER.to_owned()), ..PatchParams::default() }
}

/// Reconciles one DataImportCron.
///
/// # Errors
/// [`Error::Api`] when an API call fails (a failed poll is not an error: it is recorded in
/// the cron's `Polled` condition).
pub async fn reconcile(object: Arc<DataImportCronObject>, ctx: Arc<CatalogContext>) -> Result<Action> {
    let mut cron: DataImportCron = convert(&*object)?;
    let namespace = cron.metadata.namespace.clone().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = cron.metadata.name.clone().ok_or(Error::MissingField("metadata.name"))?;
    let client = ctx.client.clone();
    let apis = Apis {
        crons: Api::namespaced_with(client.clone(), &namespace, &data_import_crons()),
        dvs: Api::namespaced_with(client.clone(), &namespace, &data_volumes()),
        sources: Api::namespaced_with(client, &namespace, &data_sources()),
    };
    let finalizers = object.metadata.finalizers.clone().unwrap_or_default();
    let has_finalizer = finalizers.iter().any(|f| f == FINALIZER);
    if cron.metadata.deletion_timestamp.is_some() {
        if has_finalizer {
            clean_up(&cron, &apis, &ctx).await?;
            set_finalizers(&apis, &name, finalizers.iter().filter(|f| *f != FINALIZER).cloned().collect())
                .await?;
        }
        return Ok(Action::await_change());
    }
    if cron.spec.retention_policy.as_deref() == Some("None") && !has_finalizer {
        let mut finalizers = finalizers;
        finalizers.push(FINALIZER.to_owned());
        set_finalizers(&apis, &name, finalizers).await?;
    }

    let mut polled_status: Option<DataImportCronStatus> = None;
    for _ in 0..MAX_PLANS {
        let observed = observe(cron.clone(), &ctx);
        let now = observed.now;
        let steps = plan_cron(&observed);
        if steps.first() == Some(&CronStep::Poll) && polled_status.is_none() {
            poll(&mut cron, &apis, &ctx, now).await?;
            polled_status = cron.status.clone();
            continue;
        }
        let mut action = Action::await_change();
        let mut status_written = false;
        for step in steps {
            match step {
                CronStep::UpdateStatus(status) => {
                    patch_status(&apis, &name, &status).await?;
                    status_written = true;
                }
                CronStep::CreateDataVolume(dv) => {
                    let object: DataVolumeObject = convert(&*dv)?;
                    create_object(
                        &apis.dvs,
                        &object,
                        format!("DataVolume {namespace}/{}", dv.metadata.name()),
                    )
                    .await?;
                }
                CronStep::DeleteDataVolume(dv) => {
                    delete_object(&apis.dvs, &dv, format!("DataVolume {namespace}/{dv}")).await?;
                }
                CronStep::MarkUsed { name: dv, at } => {
                    let patch = json!({"metadata": {"annotations": {ANN_LAST_USE_TIME: at.to_rfc3339()}}});
                    apis.dvs
                        .patch(&dv, &params(), &Patch::Merge(&patch))
                        .await
                        .map_err(Error::api("patching", format!("DataVolume {namespace}/{dv}")))?;
                }
                CronStep::ApplyDataSource(ds) => apply_data_source(&apis, &namespace, *ds).await?,
                CronStep::RequeueAt(at) => {
                    let after = u64::try_from(at.0.saturating_sub(now.0)).unwrap_or(0).max(1);
                    action = Action::requeue(Duration::from_secs(after));
                }
                CronStep::Poll | CronStep::AwaitChange => {}
            }
        }
        if !status_written && let Some(status) = &polled_status {
            patch_status(&apis, &name, status).await?;
        }
        return Ok(action);
    }
    // Two polls in one reconcile: the schedule is due again already; look again in a minute.
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// What a failed cron reconcile does: retry in 30 s.
pub fn error_policy(_object: Arc<DataImportCronObject>, error: &Error, _ctx: Arc<CatalogContext>) -> Action {
    eprintln!("diskplane controller: DataImportCron: {error}");
    Action::requeue(Duration::from_secs(30))
}

/// What [`plan_cron`] needs, from the caches.
fn observe(cron: DataImportCron, ctx: &CatalogContext) -> CronObserved {
    let namespace = cron.metadata.namespace().to_owned();
    let name = cron.metadata.name().to_owned();
    let imports = ctx
        .data_volumes
        .state()
        .iter()
        .filter(|dv| {
            dv.metadata.namespace.as_deref() == Some(namespace.as_str())
                && dv.metadata.labels.as_ref().and_then(|l| l.get(LABEL_CRON)) == Some(&name)
        })
        .filter_map(|object| convert::<_, DataVolume>(&**object).ok())
        .map(|dv| import_observed(&dv))
        .collect();
    let data_source = ctx
        .data_sources
        .get(&ObjectRef::new_with(&cron.spec.managed_data_source, data_sources()).within(&namespace))
        .and_then(|object| convert::<_, DataSource>(&*object).ok());
    let other_crons = ctx
        .crons
        .state()
        .iter()
        .filter(|c| {
            c.metadata.namespace.as_deref() == Some(namespace.as_str())
                && c.metadata.name.as_deref() != Some(name.as_str())
                && c.spec.managed_data_source == cron.spec.managed_data_source
        })
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    CronObserved { cron, imports, data_source, other_crons, now: (ctx.now)() }
}

/// One import as the plan sees it (digest from the pinned URL, last use or creation time).
pub fn import_observed(dv: &DataVolume) -> ImportObserved {
    let url = dv.spec.source.as_ref().and_then(|s| s.registry.as_ref()).and_then(|r| r.url.as_deref());
    ImportObserved {
        name: dv.metadata.name().to_owned(),
        digest: url.and_then(|u| u.rsplit_once('@')).map(|(_, d)| d.to_owned()),
        phase: dv.status.as_ref().map(|s| s.phase).unwrap_or_default(),
        last_use: dv
            .metadata
            .annotations
            .get(ANN_LAST_USE_TIME)
            .or(dv.metadata.creation_timestamp.as_ref())
            .and_then(|t| Timestamp::parse_rfc3339(t))
            .unwrap_or(Timestamp(0)),
    }
}

/// Polls the cron's registry tag now; records the outcome on the API object and in `cron`.
async fn poll(cron: &mut DataImportCron, apis: &Apis, ctx: &CatalogContext, at: Timestamp) -> Result<()> {
    let name = cron.metadata.name().to_owned();
    let outcome = match (poll_source(cron), registry_access(cron, &ctx.client).await) {
        (Ok(url), Ok(access)) => ctx.digests.digest(&url, &access).await,
        (Err(message), _) | (_, Err(message)) => Err(message),
    };
    let mut annotations = BTreeMap::new();
    annotations.insert(ANN_LAST_CRON_TIME.to_owned(), at.to_rfc3339());
    if let Some(next) = Schedule::parse(&cron.spec.schedule).ok().and_then(|s| s.next_after(at.0)) {
        annotations.insert(ANN_NEXT_CRON_TIME.to_owned(), Timestamp(next).to_rfc3339());
    }
    let mut status = cron.status.clone().unwrap_or_default();
    match &outcome {
        Ok(digest) => {
            annotations.insert(ANN_DESIRED_DIGEST.to_owned(), digest.clone());
            super::set_condition(
                &mut status.conditions,
                POLLED,
                true,
                "Polled",
                &format!("Source digest {digest}"),
                at,
            );
        }
        Err(message) => {
            eprintln!("diskplane controller: DataImportCron {}/{name}: {message}", cron.metadata.namespace());
            super::set_condition(&mut status.conditions, POLLED, false, "PollFailed", message, at);
        }
    }
    status.last_execution_timestamp = Some(at.to_rfc3339());
    apis.crons
        .patch(&name, &params(), &Patch::Merge(&json!({"metadata": {"annotations": annotations}})))
        .await
        .map_err(Error::api("patching", format!("DataImportCron {}/{name}", cron.metadata.namespace())))?;
    cron.metadata.annotations.extend(annotations);
    cron.status = Some(status);
    Ok(())
}

/// The registry URL a cron polls, or why it cannot be polled.
fn poll_source(cron: &DataImportCron) -> std::result::Result<String, String> {
    let source = cron.spec.template.spec.source.as_ref();
    let Some(registry) = source.and_then(|s| s.registry.as_ref()) else {
        return Err("only registry sources can be polled by diskplane".into());
    };
    registry.url.clone().ok_or_else(|| "registry imageStream sources need OpenShift".into())
}

/// The registry credentials (`secretRef`: keys `accessKeyId` and `secretKey`, as CDI's
/// importer reads them) and extra CA certificates (`certConfigMap`: every key) the cron's
/// template names, or why they cannot be read (one line, for the `Polled` condition).
async fn registry_access(
    cron: &DataImportCron,
    client: &Client,
) -> std::result::Result<RegistryAccess, String> {
    let namespace = cron.metadata.namespace();
    let registry = cron.spec.template.spec.source.as_ref().and_then(|s| s.registry.as_ref());
    let mut access = RegistryAccess::default();
    let named = |name: Option<&String>| name.filter(|n| !n.is_empty()).cloned();
    if let Some(name) = named(registry.and_then(|r| r.secret_ref.as_ref())) {
        let secret = Api::<Secret>::namespaced(client.clone(), namespace)
            .get_opt(&name)
            .await
            .map_err(|e| format!("secretRef {name:?}: reading Secret {namespace}/{name}: {e}"))?
            .ok_or_else(|| format!("secretRef {name:?}: Secret {namespace}/{name} not found"))?;
        let key = |key: &str| {
            let value =
                secret.data.as_ref().and_then(|d| d.get(key)).ok_or_else(|| {
                    format!("secretRef {name:?}: Secret {namespace}/{name} has no key {key:?}")
                })?;
            String::from_utf8(value.0.clone()).map_err(|_| {
                format!("secretRef {name:?}: key {key:?} of Secret {namespace}/{name} is not UTF-8")
            })
        };
        access.username = Some(key("accessKeyId")?);
        access.password = Some(key("secretKey")?);
    }
    if let Some(name) = named(registry.and_then(|r| r.cert_config_map.as_ref())) {
        let map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_opt(&name)
            .await
            .map_err(|e| format!("certConfigMap {name:?}: reading ConfigMap {namespace}/{name}: {e}"))?
            .ok_or_else(|| format!("certConfigMap {name:?}: ConfigMap {namespace}/{name} not found"))?;
        access.ca_pems = map.data.unwrap_or_default().into_values().collect();
        if access.ca_pems.is_empty() {
            return Err(format!(
                "certConfigMap {name:?}: ConfigMap {namespace}/{name} holds no certificates"
            ));
        }
    }
    Ok(access)
}

async fn patch_status(apis: &Apis, name: &str, status: &DataImportCronStatus) -> Result<()> {
    apis.crons
        .patch_status(name, &params(), &Patch::Merge(&json!({ "status": status })))
        .await
        .map_err(Error::api("patching the status of", format!("DataImportCron {name}")))?;
    Ok(())
}

async fn set_finalizers(apis: &Apis, name: &str, finalizers: Vec<String>) -> Result<()> {
    apis.crons
        .patch(name, &params(), &Patch::Merge(&json!({"metadata": {"finalizers": finalizers}})))
        .await
        .map_err(Error::api("patching the finalizers of", format!("DataImportCron {name}")))?;
    Ok(())
}

/// Creates the managed DataSource, or merge-patches its labels and source (clearing the
/// source kinds it no longer has, and the cleanup label when the retention policy dropped it).
async fn apply_data_source(apis: &Apis, namespace: &str, ds: DataSource) -> Result<()> {
    let name = ds.metadata.name().to_owned();
    let what = format!("DataSource {namespace}/{name}");
    if ds.metadata.uid.is_none() {
        let object: DataSourceObject = convert(&ds)?;
        return create_object(&apis.sources, &object, what).await;
    }
    let mut labels: serde_json::Map<String, Value> =
        ds.metadata.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    labels.entry(LABEL_CLEANUP.to_owned()).or_insert(Value::Null);
    let mut source = serde_json::to_value(&ds.spec.source).map_err(Error::Convert)?;
    for kind in ["pvc", "snapshot", "dataSource"] {
        if source.get(kind).is_none() {
            source[kind] = Value::Null;
        }
    }
    let patch = json!({"metadata": {"labels": labels}, "spec": {"source": source}});
    apis.sources
        .patch(&name, &params(), &Patch::Merge(&patch))
        .await
        .map_err(Error::api("patching", what))?;
    Ok(())
}

/// `retentionPolicy: None`: deletes the cron's imports and DataSource labelled for cleanup.
async fn clean_up(cron: &DataImportCron, apis: &Apis, ctx: &CatalogContext) -> Result<()> {
    let namespace = cron.metadata.namespace();
    let others: Vec<String> = ctx
        .crons
        .state()
        .iter()
        .filter(|c| {
            c.metadata.namespace.as_deref() == Some(namespace)
                && c.metadata.name.as_deref() != Some(cron.metadata.name())
        })
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    let due = |labels: Option<&BTreeMap<String, String>>| {
        labels.is_some_and(|l| {
            l.get(LABEL_CRON).map(String::as_str) == Some(cron.metadata.name()) && cleanup_due(l, &others)
        })
    };
    let mut dvs: Vec<String> = ctx
        .data_volumes
        .state()
        .iter()
        .filter(|dv| dv.metadata.namespace.as_deref() == Some(namespace) && due(dv.metadata.labels.as_ref()))
        .filter_map(|dv| dv.metadata.name.clone())
        .collect();
    dvs.sort();
    for dv in dvs {
        delete_object(&apis.dvs, &dv, format!("DataVolume {namespace}/{dv}")).await?;
    }
    let mut sources: Vec<String> = ctx
        .data_sources
        .state()
        .iter()
        .filter(|ds| ds.metadata.namespace.as_deref() == Some(namespace) && due(ds.metadata.labels.as_ref()))
        .filter_map(|ds| ds.metadata.name.clone())
        .collect();
    sources.sort();
    for ds in sources {
        delete_object(&apis.sources, &ds, format!("DataSource {namespace}/{ds}")).await?;
    }
    Ok(())
}

/// The cron to reconcile when one of its DataVolumes or its DataSource changes (label).
pub fn cron_of(
    labels: Option<&BTreeMap<String, String>>,
    namespace: Option<&str>,
) -> Option<ObjectRef<DataImportCronObject>> {
    let cron = labels?.get(LABEL_CRON)?;
    Some(ObjectRef::new_with(cron, data_import_crons()).within(namespace?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_take_their_digest_from_the_pinned_url_and_their_last_use_from_the_annotation() {
        let dv: DataVolume = serde_json::from_value(json!({
            "metadata": {"name": "fedora-0123456789ab", "namespace": "os",
                "creationTimestamp": "2026-11-01T00:00:00Z",
                "annotations": {ANN_LAST_USE_TIME: "2026-11-02T00:00:00Z"}},
            "spec": {"source": {"registry": {"url": "docker://r/fedora@sha256:0123456789abcdef"}}},
            "status": {"phase": "Succeeded"}
        }))
        .unwrap();
        let seen = import_observed(&dv);
        assert_eq!(seen.digest.as_deref(), Some("sha256:0123456789abcdef"));
        assert_eq!(seen.last_use, Timestamp::parse_rfc3339("2026-11-02T00:00:00Z").unwrap());
        let mut bare = dv.clone();
        bare.metadata.annotations.clear();
        assert_eq!(
            import_observed(&bare).last_use,
            Timestamp::parse_rfc3339("2026-11-01T00:00:00Z").unwrap()
        );
    }

    #[test]
    fn only_labelled_objects_map_to_their_cron() {
        let labels: BTreeMap<String, String> = [(LABEL_CRON.to_owned(), "fedora-cron".to_owned())].into();
        let cron = cron_of(Some(&labels), Some("os")).unwrap();
        assert_eq!((cron.name.as_str(), cron.namespace.as_deref()), ("fedora-cron", Some("os")));
        assert!(cron_of(Some(&BTreeMap::new()), Some("os")).is_none());
        assert!(cron_of(None, Some("os")).is_none());
    }

    #[test]
    fn crons_without_a_registry_url_say_why_they_cannot_be_polled() {
        let cron: DataImportCron = serde_json::from_value(json!({
            "spec": {"template": {"spec": {"source": {"pvc": {"namespace": "a", "name": "b"}}}}, "managedDataSource": "d"}
        }))
        .unwrap();
        assert_eq!(poll_source(&cron), Err("only registry sources can be polled by diskplane".to_owned()));
    }
}
