//! Golden-image catalogs, planned purely: a DataImportCron keeps its DataSource pointing at
//! the newest import of a registry tag, and a DataSource reports whether it can be consumed.
//!
//! The cron cycle (CDI's `dataimportcron-controller`):
//! 1. **Poll** when the schedule is due (or was never polled): the driver resolves the tag's
//!    manifest digest and records it in the annotations [`ANN_DESIRED_DIGEST`] and
//!    [`ANN_LAST_CRON_TIME`]; an empty schedule never polls.
//! 2. A desired digest without its DataVolume → create `<dataSource>-<12 hex of digest>` from
//!    the template, the registry URL pinned to `@digest`, labelled with the cron.
//! 3. That DataVolume Succeeded → the managed DataSource points at it; UpToDate.
//! 4. Garbage collection (`garbageCollect: Outdated`, the default): of the cron's imports,
//!    newest [`ANN_LAST_USE_TIME`] first, keep `importsToKeep` (default 3) and delete the rest,
//!    never the one the DataSource points at; failed imports of outdated digests go too.
//!
//! Conditions and reasons are CDI's: `UpToDate` (`NoDigest`, `Outdated`, `UpToDate`) and
//! `Progressing` (`NoImport`, `ImportScheduled`, `ImportProgressing`, or the DataVolume's
//! phase).
//!
//! Around the cycle, as CDI:
//! - **One cron per DataSource**: a cron whose `managedDataSource` is labelled with another
//!   existing cron that names it too does nothing (no poll, no import, no GC) and says why:
//!   reason [`ERR_DATA_SOURCE_ALREADY_MANAGED`], message "DataSource X is already managed by
//!   DataImportCron Y" (CDI's Warning event; here on the `UpToDate` and `Progressing`
//!   conditions, as the embedded API has no Events).
//! - **Retention** ([`cleanup_due`]): with `retentionPolicy: None` the imports and the managed
//!   DataSource carry [`LABEL_CLEANUP`] and are deleted once their cron is gone; `RetainAll`
//!   (the default) keeps them.
//! - **Last use** ([`ANN_LAST_USE_TIME`]): set when an import is created, refreshed when the
//!   DataSource is pointed at it again ([`CronStep::MarkUsed`]) and when a clone reads it
//!   ([`clone_source`], [`refreshed_last_use`]), so that garbage collection keeps the imports
//!   used most recently.

use std::collections::BTreeMap;

use crate::api::datasource::ImportStatus;
use crate::api::{
    Condition, ConditionStatus, DataImportCron, DataImportCronStatus, DataSource, DataSourceSource,
    DataSourceStatus, DataVolume, DataVolumePhase, NamespacedName, ObjectMeta, Timestamp,
};
use crate::cron::Schedule;

/// The digest the last poll found (on the cron).
pub const ANN_DESIRED_DIGEST: &str = "cdi.kubevirt.io/storage.import.sourceDesiredDigest";
/// When the last poll ran (on the cron, RFC 3339).
pub const ANN_LAST_CRON_TIME: &str = "cdi.kubevirt.io/storage.import.lastCronTime";
/// When the next poll is due (on the cron, RFC 3339).
pub const ANN_NEXT_CRON_TIME: &str = "cdi.kubevirt.io/storage.import.nextCronTime";
/// When an import was last used (on its DataVolume, RFC 3339); orders garbage collection.
pub const ANN_LAST_USE_TIME: &str = "cdi.kubevirt.io/storage.import.lastUseTime";
/// Golden images never wait for a consumer.
pub const ANN_BIND_IMMEDIATE: &str = "cdi.kubevirt.io/storage.bind.immediate.requested";
/// Marks a DataVolume (and DataSource) as created by this cron.
pub const LABEL_CRON: &str = "cdi.kubevirt.io/dataImportCron";
/// With `retentionPolicy: None`: deleted together with the cron.
pub const LABEL_CLEANUP: &str = "cdi.kubevirt.io/dataImportCron.cleanup";
/// CDI's reason when a cron's `managedDataSource` is already another cron's.
pub const ERR_DATA_SOURCE_ALREADY_MANAGED: &str = "ErrDataSourceAlreadyManaged";

/// One DataVolume labelled with the cron, as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportObserved {
    /// Its name.
    pub name: String,
    /// The digest it imports (from its pinned URL).
    pub digest: Option<String>,
    /// Its phase.
    pub phase: DataVolumePhase,
    /// [`ANN_LAST_USE_TIME`], or its creation time.
    pub last_use: Timestamp,
}

/// What a cron's reconcile sees.
#[derive(Debug, Clone, PartialEq)]
pub struct CronObserved {
    /// The cron as stored.
    pub cron: DataImportCron,
    /// The DataVolumes labelled with it.
    pub imports: Vec<ImportObserved>,
    /// The managed DataSource, if it exists.
    pub data_source: Option<DataSource>,
    /// The other DataImportCrons of the namespace whose `managedDataSource` is this one's.
    pub other_crons: Vec<String>,
    /// The clock.
    pub now: Timestamp,
}

/// One thing a driver does for a cron.
#[derive(Debug, Clone, PartialEq)]
pub enum CronStep {
    /// Resolve the template's registry tag to a digest now, then record it in the cron's
    /// annotations ([`ANN_DESIRED_DIGEST`], [`ANN_LAST_CRON_TIME`]) and reconcile again.
    Poll,
    /// Create this DataVolume.
    CreateDataVolume(Box<DataVolume>),
    /// Delete the cron's DataVolume of this name (and its volume).
    DeleteDataVolume(String),
    /// Set [`ANN_LAST_USE_TIME`] of the cron's DataVolume `name` to `at` (it is the source
    /// again).
    MarkUsed {
        /// The DataVolume.
        name: String,
        /// The use.
        at: Timestamp,
    },
    /// Create or replace the managed DataSource's spec and labels.
    ApplyDataSource(Box<DataSource>),
    /// Replace the cron's status (only when it differs).
    UpdateStatus(DataImportCronStatus),
    /// Reconcile again at this time (the next poll).
    RequeueAt(Timestamp),
    /// Nothing scheduled: wait for a change.
    AwaitChange,
}

/// The DataVolume name for `digest`: `<dataSource>-<first 12 hex digits>`.
pub fn import_name(data_source: &str, digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    format!("{data_source}-{}", &hex[..hex.len().min(12)])
}

/// `docker://host/repo:tag` (or `@old`) pinned to `@digest`.
pub fn pin_url(url: &str, digest: &str) -> String {
    let (scheme, rest) = url.split_once("://").map_or(("docker", url), |(s, r)| (s, r));
    let rest = rest.split_once('@').map_or(rest, |(name, _)| name);
    let (path, last) = rest.rsplit_once('/').map_or(("", rest), |(p, l)| (p, l));
    let repo = last.split_once(':').map_or(last, |(name, _)| name);
    let name = if path.is_empty() { repo.to_owned() } else { format!("{path}/{repo}") };
    format!("{scheme}://{name}@{digest}")
}

/// Plans one reconcile of a DataImportCron. Level-triggered: the same observation yields the
/// same steps; status comes first so a crash after it still records what was decided.
pub fn plan_cron(observed: &CronObserved) -> Vec<CronStep> {
    let cron = &observed.cron;
    let now = observed.now;
    let ns = cron.metadata.namespace().to_owned();
    let ds_name = cron.spec.managed_data_source.clone();
    let annotations = &cron.metadata.annotations;
    let current = cron.status.clone().unwrap_or_default();
    let mut status = current.clone();
    let mut steps = Vec::new();

    // 0. Another cron's DataSource: hands off (CDI's shouldReconcileCron).
    if let Some(other) = managing_cron(observed) {
        let message = format!("DataSource {ds_name} is already managed by DataImportCron {other}");
        for type_ in ["UpToDate", "Progressing"] {
            set(&mut status.conditions, type_, false, ERR_DATA_SOURCE_ALREADY_MANAGED, &message, now);
        }
        if status != current {
            steps.push(CronStep::UpdateStatus(status));
        }
        steps.push(CronStep::AwaitChange);
        return steps;
    }

    // 1. Polling.
    let schedule =
        Schedule::parse(&cron.spec.schedule).ok().filter(|_| !cron.spec.schedule.trim().is_empty());
    let last_poll = annotations.get(ANN_LAST_CRON_TIME).and_then(|t| Timestamp::parse_rfc3339(t));
    let next_poll = schedule.as_ref().and_then(|s| match last_poll {
        None => Some(now),
        Some(last) => s.next_after(last.0).map(Timestamp),
    });
    if next_poll.is_some_and(|due| due <= now) {
        steps.push(CronStep::Poll);
        return steps; // everything else waits for the poll's result
    }

    // 2. The desired import.
    let desired = annotations.get(ANN_DESIRED_DIGEST).filter(|d| !d.is_empty()).cloned();
    let points_at = observed
        .data_source
        .as_ref()
        .and_then(|ds| ds.spec.source.pvc.as_ref())
        .filter(|pvc| pvc.namespace == ns || pvc.namespace.is_empty())
        .map(|pvc| pvc.name.clone());
    match &desired {
        None => {
            set(&mut status.conditions, "UpToDate", false, "NoDigest", "No source digest", now);
            set(&mut status.conditions, "Progressing", false, "NoDigest", "No source digest", now);
        }
        Some(digest) => {
            let name = import_name(&ds_name, digest);
            let found = observed.imports.iter().find(|i| i.name == name);
            match found.map(|i| i.phase) {
                None => {
                    if let Some(dv) = new_import(cron, &name, digest, now) {
                        steps.push(CronStep::CreateDataVolume(Box::new(dv)));
                    }
                    status.current_imports =
                        vec![ImportStatus { data_volume_name: name.clone(), digest: digest.clone() }];
                    set(&mut status.conditions, "UpToDate", false, "Outdated", "Import is outdated", now);
                    set(
                        &mut status.conditions,
                        "Progressing",
                        false,
                        "ImportScheduled",
                        "Import is scheduled",
                        now,
                    );
                }
                Some(DataVolumePhase::Succeeded) => {
                    let desired_ds = managed_data_source(cron, observed.data_source.as_ref(), &name);
                    if points_at.as_deref() != Some(name.as_str()) {
                        // The DataSource is (re)pointed at it: a use, as CDI's updateSource.
                        steps.push(CronStep::MarkUsed { name: name.clone(), at: now });
                        steps.push(CronStep::ApplyDataSource(Box::new(desired_ds)));
                        status.last_import_timestamp = Some(now.to_rfc3339());
                    } else if observed.data_source.as_ref().map(|ds| &ds.metadata.labels)
                        != Some(&desired_ds.metadata.labels)
                    {
                        // Labels out of step (retentionPolicy changed): relabel only.
                        steps.push(CronStep::ApplyDataSource(Box::new(desired_ds)));
                    }
                    status.current_imports =
                        vec![ImportStatus { data_volume_name: name.clone(), digest: digest.clone() }];
                    status.last_imported_pvc =
                        Some(NamespacedName { namespace: ns.clone(), name: name.clone() });
                    status.source_format = Some("pvc".into());
                    set(
                        &mut status.conditions,
                        "UpToDate",
                        true,
                        "UpToDate",
                        "Latest import is up to date",
                        now,
                    );
                    set(&mut status.conditions, "Progressing", false, "NoImport", "No current import", now);
                }
                Some(phase) => {
                    status.current_imports =
                        vec![ImportStatus { data_volume_name: name.clone(), digest: digest.clone() }];
                    set(&mut status.conditions, "UpToDate", false, "Outdated", "Import is outdated", now);
                    let (progressing, reason) = match phase {
                        DataVolumePhase::ImportInProgress => (true, "ImportProgressing".to_owned()),
                        DataVolumePhase::ImportScheduled
                        | DataVolumePhase::Pending
                        | DataVolumePhase::Unset => (false, "ImportScheduled".to_owned()),
                        other => (false, phase_name(other)),
                    };
                    set(
                        &mut status.conditions,
                        "Progressing",
                        progressing,
                        &reason,
                        "Import in progress",
                        now,
                    );
                }
            }
        }
    }

    // 3. Garbage collection.
    let desired_name = desired.as_ref().map(|d| import_name(&ds_name, d));
    let protected = |name: &str| Some(name) == desired_name.as_deref() || Some(name) == points_at.as_deref();
    let mut doomed: Vec<String> = observed
        .imports
        .iter()
        .filter(|i| i.phase == DataVolumePhase::Failed && !protected(&i.name))
        .map(|i| i.name.clone())
        .collect();
    let collect = cron.spec.garbage_collect.as_deref().unwrap_or("Outdated") != "Never";
    let up_to_date = desired_name.is_some() && desired_name == points_at;
    if collect && up_to_date {
        let keep = usize::try_from(cron.spec.imports_to_keep.unwrap_or(3)).unwrap_or(0);
        let live = |i: &&ImportObserved| i.phase != DataVolumePhase::Failed;
        // The protected imports count against the budget; the rest are kept newest use first
        // (the name breaks ties so the plan is deterministic).
        let budget =
            keep.saturating_sub(observed.imports.iter().filter(live).filter(|i| protected(&i.name)).count());
        let mut others: Vec<&ImportObserved> =
            observed.imports.iter().filter(live).filter(|i| !protected(&i.name)).collect();
        others.sort_by(|a, b| b.last_use.cmp(&a.last_use).then_with(|| a.name.cmp(&b.name)));
        doomed.extend(others.into_iter().skip(budget).map(|i| i.name.clone()));
    }
    doomed.sort();
    steps.extend(doomed.into_iter().map(CronStep::DeleteDataVolume));

    // 4. When to look again.
    let next = schedule.as_ref().and_then(|s| s.next_after(last_poll.map_or(now.0, |t| t.0)).map(Timestamp));
    if status != current {
        steps.insert(0, CronStep::UpdateStatus(status));
    }
    steps.push(match next {
        Some(at) => CronStep::RequeueAt(at),
        None => CronStep::AwaitChange,
    });
    steps
}

fn phase_name(phase: DataVolumePhase) -> String {
    serde_json::to_value(phase).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Sets condition `type_` (keeping its transition time when the status did not change).
fn set(conditions: &mut Vec<Condition>, type_: &str, on: bool, reason: &str, message: &str, now: Timestamp) {
    let status = if on { ConditionStatus::True } else { ConditionStatus::False };
    let fresh = Condition {
        type_: type_.to_owned(),
        status,
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_transition_time: Some(now.to_rfc3339()),
        last_heartbeat_time: None,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == status => {
            c.reason = fresh.reason;
            c.message = fresh.message;
        }
        Some(c) => *c = fresh,
        None => conditions.push(fresh),
    }
}

/// The DataVolume for a new digest: the template, the registry URL pinned, labelled with the
/// cron. `None` when the template has no registry URL (nothing to pin).
fn new_import(cron: &DataImportCron, name: &str, digest: &str, now: Timestamp) -> Option<DataVolume> {
    let template = &cron.spec.template;
    let mut spec = template.spec.clone();
    let registry = spec.source.as_mut()?.registry.as_mut()?;
    let url = registry.url.as_deref()?;
    registry.url = Some(pin_url(url, digest));
    let mut labels = template.metadata.labels.clone();
    labels.insert(LABEL_CRON.into(), cron.metadata.name().to_owned());
    if cron.spec.retention_policy.as_deref() == Some("None") {
        labels.insert(LABEL_CLEANUP.into(), "true".into());
    }
    let mut annotations = template.metadata.annotations.clone();
    annotations.insert(ANN_BIND_IMMEDIATE.into(), "true".into());
    annotations.insert(ANN_LAST_USE_TIME.into(), now.to_rfc3339());
    Some(DataVolume {
        api_version: crate::api::API_VERSION.into(),
        kind: "DataVolume".into(),
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: cron.metadata.namespace.clone(),
            labels,
            annotations,
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    })
}

/// The managed DataSource pointing at `pvc` in the cron's namespace (keeping what else the
/// existing one holds).
fn managed_data_source(cron: &DataImportCron, existing: Option<&DataSource>, pvc: &str) -> DataSource {
    let mut ds = existing.cloned().unwrap_or_else(|| DataSource {
        api_version: crate::api::API_VERSION.into(),
        kind: "DataSource".into(),
        metadata: ObjectMeta {
            name: Some(cron.spec.managed_data_source.clone()),
            namespace: cron.metadata.namespace.clone(),
            ..ObjectMeta::default()
        },
        ..DataSource::default()
    });
    ds.metadata.labels.insert(LABEL_CRON.into(), cron.metadata.name().to_owned());
    if cron.spec.retention_policy.as_deref() == Some("None") {
        ds.metadata.labels.insert(LABEL_CLEANUP.into(), "true".into());
    } else {
        ds.metadata.labels.remove(LABEL_CLEANUP);
    }
    ds.spec.source = DataSourceSource {
        pvc: Some(NamespacedName { namespace: cron.metadata.namespace().to_owned(), name: pvc.to_owned() }),
        ..DataSourceSource::default()
    };
    ds
}

/// What a DataSource's readiness depends on.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceObserved {
    /// `spec.source` names nothing.
    NoSource,
    /// The PVC (a DataVolume's volume in embedded mode) does not exist.
    NotFound,
    /// It exists; `phase` is its DataVolume's phase when a DataVolume owns it.
    Found {
        /// The owning DataVolume's phase, if any.
        phase: Option<DataVolumePhase>,
    },
}

/// The status a DataSource should have: Ready True/`Ready` when its PVC exists and (if owned
/// by a DataVolume) that Succeeded; otherwise False with CDI's reason.
pub fn data_source_status(ds: &DataSource, observed: &SourceObserved, now: Timestamp) -> DataSourceStatus {
    let mut status = ds.status.clone().unwrap_or_default();
    let (ready, reason, message) = match observed {
        SourceObserved::NoSource => (false, "NoSource".to_owned(), "No source PVC set".to_owned()),
        SourceObserved::NotFound => (false, "NotFound".to_owned(), "PVC not found".to_owned()),
        SourceObserved::Found { phase: None | Some(DataVolumePhase::Succeeded) } => {
            (true, "Ready".to_owned(), "DataSource is ready to be consumed".to_owned())
        }
        SourceObserved::Found { phase: Some(phase) } => {
            let name = phase_name(*phase);
            (false, name.clone(), format!("Import DataVolume phase {name}"))
        }
    };
    set(&mut status.conditions, "Ready", ready, &reason, &message, now);
    status.source = ready.then(|| ds.spec.source.clone());
    status
}

/// The other cron that manages this cron's DataSource, if any: the DataSource is labelled
/// with a cron other than this one, and that cron exists and names the DataSource too.
fn managing_cron(observed: &CronObserved) -> Option<&str> {
    let label = observed.data_source.as_ref()?.metadata.labels.get(LABEL_CRON)?;
    let other = observed.other_crons.iter().find(|c| *c == label)?;
    (other != observed.cron.metadata.name()).then_some(other.as_str())
}

/// Whether an object (a cron's import DataVolume or managed DataSource) with `labels` goes
/// now: it carries [`LABEL_CLEANUP`] `true` (its cron had `retentionPolicy: None`) and the
/// cron named by [`LABEL_CRON`] is not among `crons` (the names of the crons of the object's
/// namespace).
pub fn cleanup_due(labels: &BTreeMap<String, String>, crons: &[&str]) -> bool {
    let cleanup = labels.get(LABEL_CLEANUP).is_some_and(|v| v == "true");
    match labels.get(LABEL_CRON) {
        Some(cron) if cleanup && !cron.is_empty() => !crons.contains(&cron.as_str()),
        _ => false,
    }
}

/// The PVC (in embedded mode: the DataVolume's volume) a clone DataVolume reads:
/// `spec.source.pvc`, or the PVC its `sourceRef` DataSource points at now (`data_source`
/// looks one up by namespace and name). `None` for other DataVolumes.
pub fn clone_source(
    dv: &DataVolume,
    data_source: impl Fn(&str, &str) -> Option<DataSource>,
) -> Option<NamespacedName> {
    let own = dv.metadata.namespace();
    let in_ns = |pvc: NamespacedName, ns: &str| NamespacedName {
        namespace: if pvc.namespace.is_empty() { ns.to_owned() } else { pvc.namespace },
        name: pvc.name,
    };
    if let Some(pvc) = dv.spec.source.as_ref().and_then(|s| s.pvc.clone()) {
        return Some(in_ns(pvc, own));
    }
    let source_ref = dv.spec.source_ref.as_ref().filter(|r| r.kind == "DataSource")?;
    let ns = source_ref.namespace.as_deref().unwrap_or(own);
    let pvc = data_source(ns, &source_ref.name)?.spec.source.pvc?;
    Some(in_ns(pvc, ns))
}

/// The new [`ANN_LAST_USE_TIME`] of an import whose annotation is `current`, after a use at
/// `used`: `Some` when the use is later (an unreadable or missing time counts as never).
pub fn refreshed_last_use(current: Option<&str>, used: Timestamp) -> Option<String> {
    match current.and_then(Timestamp::parse_rfc3339) {
        Some(last) if last >= used => None,
        _ => Some(used.to_rfc3339()),
    }
}

#[cfg(test)]
mod tests;
