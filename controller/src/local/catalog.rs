//! Golden-image catalogs in the embedded driver: the DataImportCron and DataSource reconcilers
//! that apply [`crate::catalog`]'s plans to the store, the pool and the registry.
//!
//! Each pass of the reconcile loop ([`Driver::reconcile_catalogs`]):
//! 1. for every DataImportCron: observe (the cron, the DataVolumes labelled with it, its
//!    managed DataSource, the clock) → [`plan_cron`] → apply. `Poll` resolves the template's
//!    registry tag to a manifest digest ([`importer::registry::resolve_digest`], plain HTTP for
//!    `--insecure-registry` hosts) and records it in the cron's annotations; the plan is then
//!    made again. `CreateDataVolume` goes through [`Driver::create`] like an applied
//!    DataVolume, so the DataVolume loop imports it; `DeleteDataVolume` goes through
//!    [`Driver::delete`] (the volume goes with it).
//! 2. for every DataSource: [`data_source_status`] from its PVC (a DataVolume's volume here),
//!    or from its VolumeSnapshot's `readyToUse` ([`super::snapshot`]).
//! 3. retention: every DataVolume and DataSource for which [`cleanup_due`] holds (labelled
//!    for cleanup by a `retentionPolicy: None` cron that is gone) is deleted.
//! 4. last use: every clone DataVolume that reads an import ([`clone_source`]) refreshes the
//!    import's `lastUseTime` to the clone's creation time ([`refreshed_last_use`]).
//!
//! ## Main types
//! - [`POLLED`]: the condition this driver adds to a cron: `True`/`Polled` after a poll that
//!   found a digest, `False`/`PollFailed` with the registry's error otherwise (nothing else
//!   changes then: the DataSource keeps its last good import, and the next scheduled poll tries
//!   again).
//! - [`Driver::poll_cron`]: polls one cron now, whatever its schedule (the API's
//!   `POST …/dataimportcrons/{name}/poll`): how tests and operators force an update.
//!
//! ## Caveats
//! - The loop wakes at least once a second, so `RequeueAt` needs no timer of its own: the plan
//!   asks for `Poll` once the schedule is due.
//! - A poll runs inside the loop: an unresponsive registry delays the pass by up to the
//!   connect timeout.
//! - Only `registry` sources with a `url` are served (PVC-source crons are refused at create);
//!   `secretRef` / `certConfigMap` are refused like on DataVolumes.
//! - A clone counts as a use while it is pending or running, and afterwards only when it names
//!   its source PVC itself: a finished `sourceRef` clone cannot tell which import the
//!   DataSource pointed at when it ran. The loop sees every clone before it finishes (the
//!   catalog pass follows the DataVolume pass that starts it), so this only matters for
//!   clones made while the server was down.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{DATASOURCES, DATAVOLUMES, Driver, Error, Result, now};
use crate::api::{
    Condition, ConditionStatus, DataImportCron, DataSource, DataVolume, DataVolumePhase, Timestamp,
};
use crate::catalog::{
    ANN_DESIRED_DIGEST, ANN_LAST_CRON_TIME, ANN_LAST_USE_TIME, ANN_NEXT_CRON_TIME, CronObserved, CronStep,
    ImportObserved, LABEL_CRON, SourceObserved, cleanup_due, clone_source, data_source_status, plan_cron,
    refreshed_last_use,
};
use crate::cron::Schedule;

/// Resource name of DataImportCrons in paths and store keys.
pub const DATAIMPORTCRONS: &str = "dataimportcrons";
/// The condition type recording the last poll's outcome on a cron.
pub const POLLED: &str = "Polled";
/// Plans made for one cron in one pass (a poll, then the plan that uses its digest).
const MAX_PLANS: usize = 3;

impl Driver {
    /// One pass over every DataImportCron, then every DataSource. Returns whether anything
    /// changed.
    ///
    /// # Errors
    /// [`Error::Store`] when the objects cannot be listed.
    pub async fn reconcile_catalogs(&self) -> Result<bool> {
        let mut worked = false;
        let crons: Vec<DataImportCron> = self
            .store
            .list(DATAIMPORTCRONS, None)?
            .into_iter()
            .filter_map(|object| serde_json::from_value(object).ok())
            .collect();
        for cron in &crons {
            let key = format!("{}/{}", cron.metadata.namespace(), cron.metadata.name());
            match self.reconcile_cron(cron.clone()).await {
                Ok(w) => worked |= w,
                Err(e) => {
                    eprintln!("diskplane serve: reconciling cron {key}: {}", super::worker::one_line(&e))
                }
            }
        }
        for object in self.store.list(DATASOURCES, None)? {
            let Ok(ds) = serde_json::from_value::<DataSource>(object) else { continue };
            worked |= self.reconcile_data_source(&ds)?;
        }
        worked |= self.clean_up_after_crons(&crons).await?;
        worked |= self.refresh_last_uses()?;
        Ok(worked)
    }

    /// Deletes the DataVolumes and DataSources left labelled for cleanup by crons that are
    /// gone (`retentionPolicy: None`). Returns whether anything was deleted.
    async fn clean_up_after_crons(&self, crons: &[DataImportCron]) -> Result<bool> {
        let mut worked = false;
        for resource in [DATAVOLUMES, DATASOURCES] {
            for object in self.store.list(resource, None)? {
                let Ok(meta) = serde_json::from_value::<crate::api::ObjectMeta>(object["metadata"].clone())
                else {
                    continue;
                };
                let namespace = meta.namespace();
                let names: Vec<&str> = crons
                    .iter()
                    .filter(|c| c.metadata.namespace() == namespace)
                    .map(|c| c.metadata.name())
                    .collect();
                if !cleanup_due(&meta.labels, &names) {
                    continue;
                }
                let cron = meta.labels.get(LABEL_CRON).map_or("", String::as_str);
                eprintln!(
                    "diskplane serve: {resource} {namespace}/{}: its cron {cron} is gone (retentionPolicy None)",
                    meta.name()
                );
                match self.delete(resource, namespace, meta.name()).await {
                    Ok(_) | Err(Error::NotFound { .. }) => worked = true,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(worked)
    }

    /// Moves the `lastUseTime` of every cron import that a clone reads up to that clone's
    /// creation time. Returns whether any changed.
    fn refresh_last_uses(&self) -> Result<bool> {
        let mut uses: BTreeMap<(String, String), Timestamp> = BTreeMap::new();
        for object in self.store.list(DATAVOLUMES, None)? {
            let Ok(dv) = serde_json::from_value::<DataVolume>(object) else { continue };
            let phase = dv.status.as_ref().map(|s| s.phase).unwrap_or_default();
            let finished = matches!(phase, DataVolumePhase::Succeeded | DataVolumePhase::Failed);
            let names_its_pvc = dv.spec.source.as_ref().is_some_and(|s| s.pvc.is_some());
            if finished && !names_its_pvc {
                continue;
            }
            let Some(created) = dv.metadata.creation_timestamp.as_deref().and_then(Timestamp::parse_rfc3339)
            else {
                continue;
            };
            let lookup = |ns: &str, name: &str| {
                self.store
                    .get(DATASOURCES, ns, name)
                    .ok()
                    .flatten()
                    .and_then(|v| serde_json::from_value(v).ok())
            };
            let Some(pvc) = clone_source(&dv, lookup) else { continue };
            let used = uses.entry((pvc.namespace, pvc.name)).or_insert(created);
            *used = (*used).max(created);
        }
        let mut worked = false;
        for ((namespace, name), used) in uses {
            let Some(object) = self.store.get(DATAVOLUMES, &namespace, &name)? else { continue };
            let Ok(source) = serde_json::from_value::<DataVolume>(object) else { continue };
            if !source.metadata.labels.contains_key(LABEL_CRON) {
                continue;
            }
            let current = source.metadata.annotations.get(ANN_LAST_USE_TIME).map(String::as_str);
            if refreshed_last_use(current, used).is_some() {
                worked |= self.mark_used(&namespace, &name, used)?;
            }
        }
        Ok(worked)
    }

    /// Sets the DataVolume's `lastUseTime` to `at` (never moving it back). Returns whether it
    /// changed.
    fn mark_used(&self, namespace: &str, name: &str, at: Timestamp) -> Result<bool> {
        let Some(object) = self.store.get(DATAVOLUMES, namespace, name)? else { return Ok(false) };
        let Some(uid) = object["metadata"]["uid"].as_str() else { return Ok(false) };
        let current = object["metadata"]["annotations"][ANN_LAST_USE_TIME].as_str();
        let Some(value) = refreshed_last_use(current, at) else { return Ok(false) };
        let changed = self.store.modify(DATAVOLUMES, namespace, name, uid, |object| {
            if !object["metadata"]["annotations"].is_object() {
                object["metadata"]["annotations"] = json!({});
            }
            object["metadata"]["annotations"][ANN_LAST_USE_TIME] = json!(value);
        })?;
        Ok(changed.is_some())
    }

    /// Polls the cron `namespace/name` now and records the digest (or the failure); the loop
    /// then imports a new digest. Returns the cron as stored afterwards.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Store`]. A failed poll is not an error here: it is in the
    /// cron's [`POLLED`] condition.
    pub async fn poll_cron(&self, namespace: &str, name: &str) -> Result<Value> {
        let cron = self
            .read_cron(namespace, name)?
            .ok_or_else(|| Error::NotFound { resource: DATAIMPORTCRONS.into(), name: name.to_owned() })?;
        self.poll(&cron).await?;
        self.wake.notify_one();
        self.store
            .get(DATAIMPORTCRONS, namespace, name)?
            .ok_or_else(|| Error::NotFound { resource: DATAIMPORTCRONS.into(), name: name.to_owned() })
    }

    fn read_cron(&self, namespace: &str, name: &str) -> Result<Option<DataImportCron>> {
        self.store
            .get(DATAIMPORTCRONS, namespace, name)?
            .map(|v| serde_json::from_value(v).map_err(Error::json))
            .transpose()
    }

    /// Observes, plans and applies for one cron. Returns whether anything changed.
    async fn reconcile_cron(&self, mut cron: DataImportCron) -> Result<bool> {
        let (namespace, name) = (cron.metadata.namespace().to_owned(), cron.metadata.name().to_owned());
        let mut worked = false;
        for _ in 0..MAX_PLANS {
            let observed = self.observe_cron(cron.clone())?;
            let steps = plan_cron(&observed);
            if steps.first() == Some(&CronStep::Poll) {
                self.poll(&cron).await?;
                worked = true;
                match self.read_cron(&namespace, &name)? {
                    Some(fresh) => cron = fresh,
                    None => return Ok(worked),
                }
                continue;
            }
            let uid = cron.metadata.uid.clone().unwrap_or_default();
            for step in steps {
                match step {
                    CronStep::UpdateStatus(status) => {
                        let status = serde_json::to_value(status).map_err(Error::json)?;
                        self.store.update_status(DATAIMPORTCRONS, &namespace, &name, &uid, status)?;
                        worked = true;
                    }
                    CronStep::CreateDataVolume(dv) => {
                        eprintln!(
                            "diskplane serve: cron {namespace}/{name}: importing {}",
                            dv.metadata.name()
                        );
                        let object = serde_json::to_value(*dv).map_err(Error::json)?;
                        match self.create(DATAVOLUMES, &namespace, object) {
                            Ok(_) | Err(Error::AlreadyExists { .. }) => worked = true,
                            Err(e) => return Err(e),
                        }
                    }
                    CronStep::DeleteDataVolume(dv) => {
                        eprintln!("diskplane serve: cron {namespace}/{name}: garbage-collecting {dv}");
                        match self.delete(DATAVOLUMES, &namespace, &dv).await {
                            Ok(_) | Err(Error::NotFound { .. }) => worked = true,
                            Err(e) => return Err(e),
                        }
                    }
                    CronStep::ApplyDataSource(ds) => {
                        self.apply_data_source(*ds)?;
                        worked = true;
                    }
                    CronStep::MarkUsed { name: dv, at } => worked |= self.mark_used(&namespace, &dv, at)?,
                    CronStep::Poll | CronStep::RequeueAt(_) | CronStep::AwaitChange => {}
                }
            }
            return Ok(worked);
        }
        Ok(worked)
    }

    /// What [`plan_cron`] needs: the DataVolumes labelled with the cron, its DataSource.
    fn observe_cron(&self, cron: DataImportCron) -> Result<CronObserved> {
        let namespace = cron.metadata.namespace().to_owned();
        let mut imports = Vec::new();
        for object in self.store.list(DATAVOLUMES, Some(&namespace))? {
            let Ok(dv) = serde_json::from_value::<DataVolume>(object) else { continue };
            if dv.metadata.labels.get(LABEL_CRON).map(String::as_str) != Some(cron.metadata.name()) {
                continue;
            }
            let url =
                dv.spec.source.as_ref().and_then(|s| s.registry.as_ref()).and_then(|r| r.url.as_deref());
            let digest = url.and_then(|u| u.rsplit_once('@')).map(|(_, d)| d.to_owned());
            let last_use = dv
                .metadata
                .annotations
                .get(ANN_LAST_USE_TIME)
                .or(dv.metadata.creation_timestamp.as_ref())
                .and_then(|t| Timestamp::parse_rfc3339(t))
                .unwrap_or(Timestamp(0));
            imports.push(ImportObserved {
                name: dv.metadata.name().to_owned(),
                digest,
                phase: dv.status.as_ref().map(|s| s.phase).unwrap_or_default(),
                last_use,
            });
        }
        let data_source = self
            .store
            .get(DATASOURCES, &namespace, &cron.spec.managed_data_source)?
            .and_then(|v| serde_json::from_value(v).ok());
        let other_crons = self
            .store
            .list(DATAIMPORTCRONS, Some(&namespace))?
            .into_iter()
            .filter_map(|v| serde_json::from_value::<DataImportCron>(v).ok())
            .filter(|c| {
                c.metadata.name() != cron.metadata.name()
                    && c.spec.managed_data_source == cron.spec.managed_data_source
            })
            .map(|c| c.metadata.name().to_owned())
            .collect();
        Ok(CronObserved { cron, imports, data_source, other_crons, now: now() })
    }

    /// Resolves the cron's registry tag and records the digest (or the failure) on it.
    async fn poll(&self, cron: &DataImportCron) -> Result<()> {
        let (namespace, name) = (cron.metadata.namespace(), cron.metadata.name());
        let uid = cron.metadata.uid.clone().unwrap_or_default();
        let at = now();
        let outcome = match self.poll_source(cron) {
            Ok(url) => importer::registry::resolve_digest(&url, &self.registry_http(&url))
                .await
                .map_err(|e| format!("polling {url}: {}", super::worker::one_line(&e))),
            Err(message) => Err(message),
        };
        let next = Schedule::parse(&cron.spec.schedule).ok().and_then(|s| s.next_after(at.0)).map(Timestamp);
        let mut annotations = BTreeMap::new();
        annotations.insert(ANN_LAST_CRON_TIME.to_owned(), at.to_rfc3339());
        if let Some(next) = next {
            annotations.insert(ANN_NEXT_CRON_TIME.to_owned(), next.to_rfc3339());
        }
        let condition = match &outcome {
            Ok(digest) => {
                annotations.insert(ANN_DESIRED_DIGEST.to_owned(), digest.clone());
                polled(true, "Polled", format!("Source digest {digest}"), at)
            }
            Err(message) => {
                eprintln!("diskplane serve: cron {namespace}/{name}: {message}");
                polled(false, "PollFailed", message.clone(), at)
            }
        };
        self.store.modify(DATAIMPORTCRONS, namespace, name, &uid, |object| {
            for (k, v) in annotations {
                object["metadata"]["annotations"][k] = json!(v);
            }
            if !object["status"].is_object() {
                object["status"] = json!({});
            }
            let mut conditions: Vec<Condition> =
                serde_json::from_value(object["status"]["conditions"].clone()).unwrap_or_default();
            match conditions.iter_mut().find(|c| c.type_ == POLLED) {
                Some(c) if c.status == condition.status => {
                    c.reason = condition.reason.clone();
                    c.message = condition.message.clone();
                }
                Some(c) => *c = condition.clone(),
                None => conditions.push(condition.clone()),
            }
            object["status"]["conditions"] = serde_json::to_value(conditions).unwrap_or_default();
            object["status"]["lastExecutionTimestamp"] = json!(at.to_rfc3339());
        })?;
        Ok(())
    }

    /// The registry URL a cron polls, or why it cannot be polled here.
    fn poll_source(&self, cron: &DataImportCron) -> std::result::Result<String, String> {
        let source = cron.spec.template.spec.source.as_ref();
        let Some(registry) = source.and_then(|s| s.registry.as_ref()) else {
            return Err("only registry sources can be polled by the embedded driver".into());
        };
        if let Some(secret) = registry.secret_ref.as_deref().filter(|s| !s.is_empty()) {
            return Err(format!(
                "secretRef {secret:?}: Kubernetes Secrets are not available in embedded mode"
            ));
        }
        if let Some(map) = registry.cert_config_map.as_deref().filter(|s| !s.is_empty()) {
            return Err(format!(
                "certConfigMap {map:?}: Kubernetes ConfigMaps are not available in embedded mode"
            ));
        }
        registry.url.clone().ok_or_else(|| "registry imageStream sources need OpenShift".into())
    }

    /// HTTP options for a registry URL: plain HTTP for `--insecure-registry` hosts.
    fn registry_http(&self, url: &str) -> importer::HttpOptions {
        let host = url.strip_prefix("docker://").unwrap_or(url).split('/').next().unwrap_or("");
        importer::HttpOptions {
            insecure: self.opts.insecure_registries.iter().any(|h| h == host),
            ..importer::HttpOptions::default()
        }
    }

    /// Creates the managed DataSource, or replaces the spec and labels of the existing one.
    fn apply_data_source(&self, ds: DataSource) -> Result<()> {
        let (namespace, name) = (ds.metadata.namespace().to_owned(), ds.metadata.name().to_owned());
        eprintln!(
            "diskplane serve: DataSource {namespace}/{name} -> {}",
            ds.spec.source.pvc.as_ref().map_or("", |p| p.name.as_str())
        );
        match ds.metadata.uid.clone() {
            None => {
                let object = serde_json::to_value(ds).map_err(Error::json)?;
                self.create(DATASOURCES, &namespace, object)?;
            }
            Some(uid) => {
                let spec = serde_json::to_value(&ds.spec).map_err(Error::json)?;
                let labels = serde_json::to_value(&ds.metadata.labels).map_err(Error::json)?;
                self.store.modify(DATASOURCES, &namespace, &name, &uid, |object| {
                    object["spec"] = spec;
                    object["metadata"]["labels"] = labels;
                })?;
                self.wake.notify_one();
            }
        }
        Ok(())
    }

    /// Keeps a DataSource's Ready condition in step with its PVC. Returns whether it changed.
    fn reconcile_data_source(&self, ds: &DataSource) -> Result<bool> {
        if ds.spec.source.pvc.is_none() && ds.spec.source.snapshot.is_some() {
            return self.reconcile_snapshot_data_source(ds);
        }
        let Some(uid) = ds.metadata.uid.as_deref() else { return Ok(false) };
        let namespace = ds.metadata.namespace();
        let observed = match &ds.spec.source.pvc {
            None => SourceObserved::NoSource,
            Some(pvc) => {
                let ns = if pvc.namespace.is_empty() { namespace } else { pvc.namespace.as_str() };
                let dv = self.store.get(DATAVOLUMES, ns, &pvc.name)?;
                let dv: Option<DataVolume> = dv.and_then(|v| serde_json::from_value(v).ok());
                match dv {
                    Some(dv) => SourceObserved::Found {
                        phase: Some(dv.status.map(|s| s.phase).unwrap_or(DataVolumePhase::Pending)),
                    },
                    None if self.pool.disk(ns, &pvc.name).exists() => SourceObserved::Found { phase: None },
                    None => SourceObserved::NotFound,
                }
            }
        };
        let status = data_source_status(ds, &observed, now());
        if ds.status.as_ref() == Some(&status) {
            return Ok(false);
        }
        let status = serde_json::to_value(status).map_err(Error::json)?;
        self.store.update_status(DATASOURCES, namespace, ds.metadata.name(), uid, status)?;
        Ok(true)
    }
}

/// The [`POLLED`] condition.
fn polled(ok: bool, reason: &str, message: String, at: Timestamp) -> Condition {
    Condition {
        type_: POLLED.into(),
        status: if ok { ConditionStatus::True } else { ConditionStatus::False },
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(at.to_rfc3339()),
        last_heartbeat_time: None,
    }
}
