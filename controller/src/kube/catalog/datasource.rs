//! The DataSource reconciler: the `Ready` condition from what `spec.source` names.
//!
//! - `pvc`: as CDI, the DataVolume of that name decides (ready once `Succeeded`, else its phase
//!   is the reason); without one, the PVC existing makes it ready. This is
//!   [`crate::catalog::data_source_status`], shared with embedded mode.
//! - `snapshot`: ready when the VolumeSnapshot's `status.readyToUse` is true; `NotFound`
//!   ("Snapshot not found") or `SnapshotNotReady` otherwise.
//! - `dataSource`: CDI's chain rules (depth 1, same namespace, not itself), then the referenced
//!   DataSource's own source decides; `status.source` is the resolved PVC or snapshot.

use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Api, Patch, PatchParams};
use ::kube::runtime::controller::Action;
use ::kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use super::{CatalogContext, set_condition};
use crate::api::{
    DataSource, DataSourceSource, DataSourceStatus, DataVolumePhase, NamespacedName, Timestamp,
};
use crate::catalog::{SourceObserved, data_source_status};
use crate::kube::error::{Error, Result};
use crate::kube::names::MANAGER;
use crate::kube::resource::{
    DataSourceObject, VolumeSnapshotObject, convert, data_sources, volume_snapshots,
};

/// How often a DataSource waiting for a VolumeSnapshot looks again (snapshots are not watched).
pub const SNAPSHOT_RECHECK: Duration = Duration::from_secs(30);

/// The reference chain is longer than one DataSource (CDI's reason).
pub const REASON_MAX_DEPTH: &str = "MaxReferenceDepthReached";
/// The DataSource names itself (CDI's reason).
pub const REASON_SELF_REFERENCE: &str = "SelfReference";
/// The DataSource names one in another namespace (CDI's reason).
pub const REASON_CROSS_NAMESPACE: &str = "CrossNamespaceReference";

/// What a DataSource's source turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved {
    /// A PVC source, as [`data_source_status`] takes it.
    Pvc(SourceObserved),
    /// A VolumeSnapshot: `None` when it does not exist, else its `readyToUse`.
    Snapshot(Option<bool>),
    /// A `dataSource` reference that cannot be followed: the reason and message.
    Refused(&'static str, String),
}

/// What [`status`] needs: the resolution and the source to report once ready (the DataSource's
/// own, or for a chain the referenced one's).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceView {
    pub resolved: Resolved,
    pub source: DataSourceSource,
}

/// The status a DataSource should have.
pub fn status(ds: &DataSource, view: &SourceView, now: Timestamp) -> DataSourceStatus {
    let mut status = match &view.resolved {
        Resolved::Pvc(observed) => data_source_status(ds, observed, now),
        Resolved::Snapshot(found) => {
            let mut status = ds.status.clone().unwrap_or_default();
            let (ready, reason, message) = match found {
                None => (false, "NotFound", "Snapshot not found"),
                Some(false) => (false, "SnapshotNotReady", "Snapshot phase is not ready"),
                Some(true) => (true, "Ready", "DataSource is ready to be consumed"),
            };
            set_condition(&mut status.conditions, "Ready", ready, reason, message, now);
            status
        }
        Resolved::Refused(reason, message) => {
            let mut status = ds.status.clone().unwrap_or_default();
            set_condition(&mut status.conditions, "Ready", false, reason, message, now);
            status
        }
    };
    let ready =
        status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == crate::api::ConditionStatus::True);
    status.source = ready.then(|| view.source.clone());
    status
}

/// The DataSource a `dataSource` reference resolves to under CDI's chain rules, or why not.
/// `lookup` finds a DataSource by namespace and name.
pub fn follow_chain(
    ds: &DataSource,
    lookup: impl Fn(&str, &str) -> Option<DataSource>,
) -> Result<DataSource, (&'static str, String)> {
    let Some(reference) = &ds.spec.source.data_source else { return Ok(ds.clone()) };
    let own = ds.metadata.namespace();
    let ns = if reference.namespace.is_empty() { own } else { reference.namespace.as_str() };
    if ns != own {
        return Err((
            REASON_CROSS_NAMESPACE,
            format!(
                "DataSource {ns}/{} is in another namespace: references must stay in {own}",
                reference.name
            ),
        ));
    }
    if reference.name == ds.metadata.name() {
        return Err((REASON_SELF_REFERENCE, format!("DataSource {} references itself", reference.name)));
    }
    let Some(target) = lookup(ns, &reference.name) else {
        return Err(("NotFound", "DataSource not found".to_owned()));
    };
    if target.spec.source.data_source.is_some() {
        return Err((
            REASON_MAX_DEPTH,
            format!(
                "DataSource {} references another DataSource: chains are limited to depth 1",
                reference.name
            ),
        ));
    }
    Ok(target)
}

/// Reconciles one DataSource.
///
/// # Errors
/// [`Error::Api`] when reading a VolumeSnapshot or patching the status fails.
pub async fn reconcile(object: Arc<DataSourceObject>, ctx: Arc<CatalogContext>) -> Result<Action> {
    let ds: DataSource = convert(&*object)?;
    let namespace = ds.metadata.namespace.clone().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = ds.metadata.name.clone().ok_or(Error::MissingField("metadata.name"))?;
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let view = observe(&ds, &ctx).await?;
    let status = status(&ds, &view, (ctx.now)());
    if ds.status.as_ref() != Some(&status) {
        let mut body = serde_json::to_value(&status).map_err(Error::Convert)?;
        if status.source.is_none() {
            body["source"] = serde_json::Value::Null; // a merge patch removes it only when null
        }
        let api: Api<DataSourceObject> =
            Api::namespaced_with(ctx.client.clone(), &namespace, &data_sources());
        api.patch_status(
            &name,
            &PatchParams { field_manager: Some(MANAGER.to_owned()), ..PatchParams::default() },
            &Patch::Merge(&json!({ "status": body })),
        )
        .await
        .map_err(Error::api("patching the status of", format!("DataSource {namespace}/{name}")))?;
    }
    Ok(match view.resolved {
        Resolved::Snapshot(Some(true)) => Action::await_change(),
        Resolved::Snapshot(_) => Action::requeue(SNAPSHOT_RECHECK),
        _ => Action::await_change(),
    })
}

/// What a failed DataSource reconcile does: retry in 30 s.
pub fn error_policy(_object: Arc<DataSourceObject>, error: &Error, _ctx: Arc<CatalogContext>) -> Action {
    eprintln!("diskplane controller: DataSource: {error}");
    Action::requeue(Duration::from_secs(30))
}

fn cached(store: &Store<DataSourceObject>, namespace: &str, name: &str) -> Option<DataSource> {
    let object = store.get(&ObjectRef::new_with(name, data_sources()).within(namespace))?;
    convert(&*object).ok()
}

async fn observe(ds: &DataSource, ctx: &CatalogContext) -> Result<SourceView> {
    let target = match follow_chain(ds, |ns, name| cached(&ctx.data_sources, ns, name)) {
        Ok(target) => target,
        Err((reason, message)) => {
            return Ok(SourceView {
                resolved: Resolved::Refused(reason, message),
                source: ds.spec.source.clone(),
            });
        }
    };
    let ns = target.metadata.namespace().to_owned();
    let source = target.spec.source.clone();
    let in_ns = |n: &NamespacedName| if n.namespace.is_empty() { ns.clone() } else { n.namespace.clone() };
    let resolved = if let Some(pvc) = &source.pvc {
        let pvc_ns = in_ns(pvc);
        let dv = ctx
            .data_volumes
            .get(&ObjectRef::new_with(&pvc.name, crate::kube::resource::data_volumes()).within(&pvc_ns));
        let claim = ctx.pvcs.get(&ObjectRef::new(&pvc.name).within(&pvc_ns));
        Resolved::Pvc(match (dv, claim) {
            (Some(dv), _) => SourceObserved::Found {
                phase: Some(dv.status.as_ref().map(|s| s.phase).unwrap_or(DataVolumePhase::Pending)),
            },
            (None, Some(_)) => SourceObserved::Found { phase: None },
            (None, None) => SourceObserved::NotFound,
        })
    } else if let Some(snapshot) = &source.snapshot {
        let snap_ns = in_ns(snapshot);
        let api: Api<VolumeSnapshotObject> =
            Api::namespaced_with(ctx.client.clone(), &snap_ns, &volume_snapshots());
        let found = api
            .get_opt(&snapshot.name)
            .await
            .map_err(Error::api("reading", format!("VolumeSnapshot {snap_ns}/{}", snapshot.name)))?;
        Resolved::Snapshot(found.map(|s| {
            s.status
                .as_ref()
                .and_then(|st| st.get("readyToUse"))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        }))
    } else {
        Resolved::Pvc(SourceObserved::NoSource)
    };
    Ok(SourceView { resolved, source })
}

/// The DataSources to reconcile when the PVC or DataVolume `namespace/name` changes: those
/// whose `pvc` source names it, and those that reference one of them.
pub fn dependents_of_volume(
    store: &Store<DataSourceObject>,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<DataSourceObject>> {
    let direct: Vec<(String, String)> = store
        .state()
        .iter()
        .filter(|ds| {
            let own = ds.metadata.namespace.as_deref().unwrap_or_default();
            ds.spec.source.pvc.as_ref().is_some_and(|p| {
                p.name == name
                    && (if p.namespace.is_empty() { own } else { p.namespace.as_str() }) == namespace
            })
        })
        .filter_map(|ds| Some((ds.metadata.namespace.clone()?, ds.metadata.name.clone()?)))
        .collect();
    let mut refs: Vec<ObjectRef<DataSourceObject>> = Vec::new();
    for (ns, ds) in &direct {
        refs.push(ObjectRef::new_with(ds, data_sources()).within(ns));
        refs.extend(dependents_of_source(store, ns, ds));
    }
    refs
}

/// The DataSources whose `dataSource` reference names `namespace/name`.
pub fn dependents_of_source(
    store: &Store<DataSourceObject>,
    namespace: &str,
    name: &str,
) -> Vec<ObjectRef<DataSourceObject>> {
    store
        .state()
        .iter()
        .filter(|ds| {
            let own = ds.metadata.namespace.as_deref().unwrap_or_default();
            own == namespace
                && ds
                    .spec
                    .source
                    .data_source
                    .as_ref()
                    .is_some_and(|r| r.name == name && (r.namespace.is_empty() || r.namespace == namespace))
        })
        .filter_map(|ds| {
            Some(ObjectRef::new_with(ds.metadata.name.as_deref()?, data_sources()).within(namespace))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(name: &str, source: serde_json::Value) -> DataSource {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "os"}, "spec": {"source": source}}),
        )
        .unwrap()
    }

    fn ready(status: &DataSourceStatus) -> (String, String, String) {
        let c = &status.conditions[0];
        (
            format!("{:?}", c.status),
            c.reason.clone().unwrap_or_default(),
            c.message.clone().unwrap_or_default(),
        )
    }

    #[test]
    fn snapshot_sources_are_ready_when_ready_to_use() {
        let d = ds("fedora", json!({"snapshot": {"namespace": "os", "name": "snap"}}));
        let view = |found| SourceView { resolved: Resolved::Snapshot(found), source: d.spec.source.clone() };
        let table = [
            (None, ("False", "NotFound", "Snapshot not found")),
            (Some(false), ("False", "SnapshotNotReady", "Snapshot phase is not ready")),
            (Some(true), ("True", "Ready", "DataSource is ready to be consumed")),
        ];
        for (found, (s, reason, message)) in table {
            let status = status(&d, &view(found), Timestamp(0));
            assert_eq!(ready(&status), (s.to_owned(), reason.to_owned(), message.to_owned()));
            assert_eq!(status.source.is_some(), found == Some(true));
        }
    }

    #[test]
    fn chains_follow_cdi_rules() {
        let pvc = ds("base", json!({"pvc": {"namespace": "os", "name": "disk"}}));
        let chained = ds("tip", json!({"dataSource": {"name": "tip2"}}));
        let lookup = |_: &str, name: &str| match name {
            "base" => Some(pvc.clone()),
            "tip2" => Some(chained.clone()),
            _ => None,
        };
        let table = [
            (json!({"dataSource": {"name": "base"}}), Ok("base")),
            (json!({"dataSource": {"name": "a"}}), Err("NotFound")),
            (json!({"dataSource": {"name": "self"}}), Err(REASON_SELF_REFERENCE)),
            (json!({"dataSource": {"namespace": "other", "name": "base"}}), Err(REASON_CROSS_NAMESPACE)),
            (json!({"dataSource": {"name": "tip2"}}), Err(REASON_MAX_DEPTH)),
            (json!({"pvc": {"name": "x"}}), Ok("self")),
        ];
        for (source, expected) in table {
            let got = follow_chain(&ds("self", source.clone()), lookup);
            let got = got.map(|d| d.metadata.name().to_owned()).map_err(|(reason, _)| reason);
            assert_eq!(got.as_ref().map(String::as_str).map_err(|r| *r), expected, "{source}");
        }
    }

    #[test]
    fn volume_and_source_changes_map_to_the_data_sources_that_depend_on_them() {
        let mut writer = ::kube::runtime::reflector::store::Writer::new(data_sources());
        for (name, source) in [
            ("direct", json!({"pvc": {"name": "disk"}})),
            ("qualified", json!({"pvc": {"namespace": "os", "name": "disk"}})),
            ("elsewhere", json!({"pvc": {"namespace": "other", "name": "disk"}})),
            ("tip", json!({"dataSource": {"name": "direct"}})),
            ("unrelated", json!({"pvc": {"name": "other-disk"}})),
        ] {
            let object: DataSourceObject = serde_json::from_value(json!({
                "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource",
                "metadata": {"name": name, "namespace": "os"}, "spec": {"source": source}
            }))
            .unwrap();
            writer.apply_watcher_event(&::kube::runtime::watcher::Event::Apply(object));
        }
        let store = writer.as_reader();
        let names = |refs: Vec<ObjectRef<DataSourceObject>>| {
            let mut names: Vec<String> = refs.into_iter().map(|r| r.name).collect();
            names.sort();
            names
        };
        assert_eq!(names(dependents_of_volume(&store, "os", "disk")), ["direct", "qualified", "tip"]);
        assert_eq!(names(dependents_of_volume(&store, "other", "disk")), ["elsewhere"]);
        assert_eq!(names(dependents_of_source(&store, "os", "direct")), ["tip"]);
        assert!(dependents_of_source(&store, "other", "direct").is_empty());
    }

    #[test]
    fn a_chain_reports_the_resolved_source_once_ready() {
        let d = ds("tip", json!({"dataSource": {"name": "base"}}));
        let resolved: DataSourceSource =
            serde_json::from_value(json!({"pvc": {"namespace": "os", "name": "disk"}})).unwrap();
        let view = SourceView {
            resolved: Resolved::Pvc(SourceObserved::Found { phase: None }),
            source: resolved.clone(),
        };
        let status = status(&d, &view, Timestamp(0));
        assert_eq!(status.source, Some(resolved));
        let refused = SourceView {
            resolved: Resolved::Refused(REASON_MAX_DEPTH, "m".into()),
            source: d.spec.source.clone(),
        };
        let status = super::status(&d, &refused, Timestamp(0));
        assert_eq!(ready(&status).1, REASON_MAX_DEPTH);
        assert_eq!(status.source, None);
    }
}
