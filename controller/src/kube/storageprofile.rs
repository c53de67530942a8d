//! The StorageProfile controller: one StorageProfile per StorageClass (same name, owned by the
//! class), its status computed from the profile's spec overrides, the class, and a small table
//! of known provisioners (CDI's `storagecapabilities`).
//!
//! ```text
//!  StorageClass ─► reconcile ─► create StorageProfile <class> (ownerRef → class) if missing
//!  StorageProfile (owned) ─┘   └► merge-patch its status when it differs
//! ```
//!
//! ## Main types
//! - [`profile_status`]: the pure status computation (table-tested).
//! - [`capabilities`]: the known provisioners.
//! - [`reconcile`] / [`ProfileContext`]: the controller's reconcile.
//!
//! ## Caveats
//! - The table is a small subset of CDI's (~170 entries): Ceph RBD/CephFS, hostpath and
//!   local-path style provisioners, LVM, the big cloud block CSI drivers, NFS. An unknown
//!   provisioner gets an empty `claimPropertySets` (as CDI), so `storage` DataVolumes on it must
//!   name their access mode or have the profile's spec fill it in.
//! - CDI's `Recognized` condition and the snapshot-class lookup (VolumeSnapshotClasses of the
//!   same driver) are not computed; `snapshotClass` comes only from the spec.

use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Api, Patch, PatchParams, PostParams};
use ::kube::runtime::controller::Action;
use ::kube::{Client, Resource};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;

use super::error::{Error, Result};
use super::names::MANAGER;
use super::resource::{StorageProfileObject, convert, storage_profiles};
use crate::api::{ClaimPropertySet, StorageProfile, StorageProfileSpec, StorageProfileStatus};

/// StorageClass annotation naming the clone strategy of its volumes (CDI's).
pub const ANN_CLONE_STRATEGY: &str = "cdi.kubevirt.io/clone-strategy";

/// What a provisioner is known to support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `(accessMode, volumeMode)` pairs, preferred first.
    pub claim_property_sets: &'static [(&'static str, &'static str)],
    /// `csi-clone`, `snapshot` or `copy`, when the provisioner has a preferred one.
    pub clone_strategy: Option<&'static str>,
    /// `snapshot` when golden images are best kept as VolumeSnapshots.
    pub data_import_cron_source_format: Option<&'static str>,
}

const RWX_BLOCK: (&str, &str) = ("ReadWriteMany", "Block");
const RWO_BLOCK: (&str, &str) = ("ReadWriteOnce", "Block");
const RWO_FS: (&str, &str) = ("ReadWriteOnce", "Filesystem");
const RWX_FS: (&str, &str) = ("ReadWriteMany", "Filesystem");

const CEPH_RBD: Capabilities = Capabilities {
    claim_property_sets: &[RWX_BLOCK, RWO_BLOCK, RWO_FS],
    clone_strategy: Some("csi-clone"),
    data_import_cron_source_format: Some("snapshot"),
};
const CEPH_FS: Capabilities = Capabilities {
    claim_property_sets: &[RWX_FS],
    clone_strategy: Some("csi-clone"),
    data_import_cron_source_format: None,
};
const LOCAL_FS: Capabilities = Capabilities {
    claim_property_sets: &[RWO_FS],
    clone_strategy: None,
    data_import_cron_source_format: None,
};
const BLOCK_AND_FS: Capabilities = Capabilities {
    claim_property_sets: &[RWO_BLOCK, RWO_FS],
    clone_strategy: None,
    data_import_cron_source_format: None,
};
const CLOUD_SNAPSHOT: Capabilities = Capabilities {
    claim_property_sets: &[RWO_BLOCK, RWO_FS],
    clone_strategy: Some("snapshot"),
    data_import_cron_source_format: Some("snapshot"),
};
const SHARED_FS: Capabilities = Capabilities {
    claim_property_sets: &[RWX_FS],
    clone_strategy: None,
    data_import_cron_source_format: None,
};

/// The built-in knowledge about `provisioner`, `None` when it is not known.
pub fn capabilities(provisioner: &str) -> Option<Capabilities> {
    Some(match provisioner {
        "rbd.csi.ceph.com" | "openshift-storage.rbd.csi.ceph.com" => CEPH_RBD,
        "cephfs.csi.ceph.com" | "openshift-storage.cephfs.csi.ceph.com" => CEPH_FS,
        "kubevirt.io.hostpath-provisioner"
        | "kubevirt.io/hostpath-provisioner"
        | "rancher.io/local-path"
        | "kubernetes.io/no-provisioner"
        | "k8s.io/minikube-hostpath" => LOCAL_FS,
        "topolvm.io" | "lvm.topolvm.io" | "ebs.csi.aws.com" | "disk.csi.azure.com" => BLOCK_AND_FS,
        "pd.csi.storage.gke.io" => CLOUD_SNAPSHOT,
        "nfs.csi.k8s.io" | "k8s-sigs.io/nfs-subdir-external-provisioner" => SHARED_FS,
        _ => return None,
    })
}

/// The status of the StorageProfile of `class`: the profile's spec where set, else the class's
/// clone-strategy annotation (clone strategy only), else the provisioner's [`capabilities`].
/// Conditions and unknown fields of `current` are kept.
pub fn profile_status(
    class: &StorageClass,
    spec: &StorageProfileSpec,
    current: Option<&StorageProfileStatus>,
) -> StorageProfileStatus {
    let known = capabilities(&class.provisioner);
    let mut status = current.cloned().unwrap_or_default();
    status.storage_class = class.metadata.name.clone();
    status.provisioner = Some(class.provisioner.clone());
    status.claim_property_sets = if spec.claim_property_sets.is_empty() {
        known
            .map(|k| {
                k.claim_property_sets
                    .iter()
                    .map(|(mode, volume)| ClaimPropertySet {
                        access_modes: vec![(*mode).to_owned()],
                        volume_mode: Some((*volume).to_owned()),
                        ..ClaimPropertySet::default()
                    })
                    .collect()
            })
            .unwrap_or_default()
    } else {
        spec.claim_property_sets.clone()
    };
    let annotated = class.metadata.annotations.as_ref().and_then(|a| a.get(ANN_CLONE_STRATEGY)).cloned();
    status.clone_strategy = spec
        .clone_strategy
        .clone()
        .or(annotated)
        .or_else(|| known.and_then(|k| k.clone_strategy).map(str::to_owned));
    status.data_import_cron_source_format = spec
        .data_import_cron_source_format
        .clone()
        .or_else(|| known.and_then(|k| k.data_import_cron_source_format).map(str::to_owned));
    status.snapshot_class = spec.snapshot_class.clone();
    status
}

/// What the StorageProfile reconciler works with.
pub struct ProfileContext {
    pub client: Client,
    /// The StorageProfiles as the cluster has them (an informer cache).
    pub profiles: ::kube::runtime::reflector::Store<StorageProfileObject>,
}

impl std::fmt::Debug for ProfileContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileContext").finish_non_exhaustive()
    }
}

/// Reconciles the StorageProfile of one StorageClass.
///
/// # Errors
/// [`Error::Api`] when creating the profile or patching its status fails.
pub async fn reconcile(class: Arc<StorageClass>, ctx: Arc<ProfileContext>) -> Result<Action> {
    let name = class.metadata.name.clone().ok_or(Error::MissingField("metadata.name"))?;
    if class.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change()); // the profile goes with it (owner reference)
    }
    let api: Api<StorageProfileObject> = Api::all_with(ctx.client.clone(), &storage_profiles());
    let cached = ctx.profiles.find(|p| p.metadata.name.as_deref() == Some(name.as_str()));
    let profile: StorageProfile = match cached {
        Some(object) => convert(&*object)?,
        None => {
            let object = new_profile(&class, &name)?;
            let params = PostParams { field_manager: Some(MANAGER.to_owned()), ..PostParams::default() };
            match api.create(&params, &object).await {
                Ok(created) => convert(&created)?,
                // A stale cache: the next event brings the profile.
                Err(::kube::Error::Api(status)) if status.code == 409 => return Ok(Action::await_change()),
                Err(e) => return Err(Error::api("creating", format!("StorageProfile {name}"))(e)),
            }
        }
    };
    let status = profile_status(&class, &profile.spec, profile.status.as_ref());
    if profile.status.as_ref() != Some(&status) {
        let patch = json!({ "status": status });
        api.patch_status(
            &name,
            &PatchParams { field_manager: Some(MANAGER.to_owned()), ..PatchParams::default() },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(Error::api("patching the status of", format!("StorageProfile {name}")))?;
    }
    Ok(Action::await_change())
}

/// What the controller does after a failed reconcile: retry in 30 s.
pub fn error_policy(_class: Arc<StorageClass>, error: &Error, _ctx: Arc<ProfileContext>) -> Action {
    eprintln!("diskplane controller: StorageProfile: {error}");
    Action::requeue(Duration::from_secs(30))
}

/// A new, empty StorageProfile named after and owned by `class`.
fn new_profile(class: &StorageClass, name: &str) -> Result<StorageProfileObject> {
    let owner = OwnerReference {
        api_version: StorageClass::api_version(&()).into_owned(),
        kind: StorageClass::kind(&()).into_owned(),
        name: name.to_owned(),
        uid: class.metadata.uid.clone().ok_or(Error::MissingField("metadata.uid"))?,
        controller: Some(true),
        block_owner_deletion: None,
    };
    let mut object = StorageProfileObject::new(name, &storage_profiles(), StorageProfileSpec::default());
    object.metadata = ObjectMeta {
        name: Some(name.to_owned()),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    };
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(provisioner: &str, annotations: &[(&str, &str)]) -> StorageClass {
        serde_json::from_value(json!({
            "metadata": {"name": "sc", "annotations": annotations.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>()},
            "provisioner": provisioner,
        }))
        .unwrap()
    }

    fn sets(status: &StorageProfileStatus) -> Vec<(String, String)> {
        status
            .claim_property_sets
            .iter()
            .map(|s| (s.access_modes.join(","), s.volume_mode.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn known_provisioners_fill_the_status_from_the_table() {
        // provisioner, claim property sets, clone strategy, cron source format
        type Row = (
            &'static str,
            &'static [(&'static str, &'static str)],
            Option<&'static str>,
            Option<&'static str>,
        );
        let table: [Row; 6] = [
            (
                "rbd.csi.ceph.com",
                &[("ReadWriteMany", "Block"), ("ReadWriteOnce", "Block"), ("ReadWriteOnce", "Filesystem")],
                Some("csi-clone"),
                Some("snapshot"),
            ),
            ("cephfs.csi.ceph.com", &[("ReadWriteMany", "Filesystem")], Some("csi-clone"), None),
            ("rancher.io/local-path", &[("ReadWriteOnce", "Filesystem")], None, None),
            ("kubevirt.io.hostpath-provisioner", &[("ReadWriteOnce", "Filesystem")], None, None),
            (
                "pd.csi.storage.gke.io",
                &[("ReadWriteOnce", "Block"), ("ReadWriteOnce", "Filesystem")],
                Some("snapshot"),
                Some("snapshot"),
            ),
            ("example.com/unknown", &[], None, None),
        ];
        for (provisioner, expected, clone, format) in table {
            let status = profile_status(&class(provisioner, &[]), &StorageProfileSpec::default(), None);
            let expected: Vec<(String, String)> =
                expected.iter().map(|(a, v)| ((*a).to_owned(), (*v).to_owned())).collect();
            assert_eq!(sets(&status), expected, "{provisioner}");
            assert_eq!(status.clone_strategy.as_deref(), clone, "{provisioner}");
            assert_eq!(status.data_import_cron_source_format.as_deref(), format, "{provisioner}");
            assert_eq!(status.provisioner.as_deref(), Some(provisioner));
            assert_eq!(status.storage_class.as_deref(), Some("sc"));
        }
    }

    #[test]
    fn spec_overrides_win_over_the_annotation_and_the_table() {
        let spec: StorageProfileSpec = serde_json::from_value(json!({
            "claimPropertySets": [{"accessModes": ["ReadWriteMany"], "volumeMode": "Filesystem"}],
            "cloneStrategy": "copy", "dataImportCronSourceFormat": "pvc", "snapshotClass": "snap"
        }))
        .unwrap();
        let sc = class("rbd.csi.ceph.com", &[(ANN_CLONE_STRATEGY, "snapshot")]);
        let status = profile_status(&sc, &spec, None);
        assert_eq!(sets(&status), vec![("ReadWriteMany".to_owned(), "Filesystem".to_owned())]);
        assert_eq!(status.clone_strategy.as_deref(), Some("copy"));
        assert_eq!(status.data_import_cron_source_format.as_deref(), Some("pvc"));
        assert_eq!(status.snapshot_class.as_deref(), Some("snap"));
        // Without a spec strategy the class annotation beats the table.
        let status = profile_status(&sc, &StorageProfileSpec::default(), None);
        assert_eq!(status.clone_strategy.as_deref(), Some("snapshot"));
    }

    #[test]
    fn an_unchanged_class_gives_the_same_status() {
        let sc = class("rancher.io/local-path", &[]);
        let first = profile_status(&sc, &StorageProfileSpec::default(), None);
        assert_eq!(profile_status(&sc, &StorageProfileSpec::default(), Some(&first)), first);
    }
}
