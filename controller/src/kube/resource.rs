//! Our API types as kube-rs resources.
//!
//! The API types carry diskplane's own `api::ObjectMeta` (plain serde, unknown fields kept), so
//! they cannot implement `kube::Resource`. The driver talks to the cluster with
//! `kube::core::Object<Spec, Status>` (k8s-openapi metadata + our spec and status) and converts
//! to the API types through `serde_json` when it hands an object to `plan`: both sides are the
//! same JSON, so nothing is lost in either direction.

use ::kube::core::{ApiResource, GroupVersionKind, Object};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{Error, Result};
use crate::api::{
    DataImportCronSpec, DataImportCronStatus, DataSourceSpec, DataSourceStatus, DataVolumeSpec,
    DataVolumeStatus, StorageProfileSpec, StorageProfileStatus,
};

/// `cdi.kubevirt.io`.
pub const CDI_GROUP: &str = "cdi.kubevirt.io";
/// `v1beta1`.
pub const CDI_VERSION: &str = "v1beta1";

/// A DataVolume as kube-rs reads and writes it.
pub type DataVolumeObject = Object<DataVolumeSpec, DataVolumeStatus>;
/// A StorageProfile (cluster-scoped) as kube-rs reads it.
pub type StorageProfileObject = Object<StorageProfileSpec, StorageProfileStatus>;
/// A DataSource as kube-rs reads it.
pub type DataSourceObject = Object<DataSourceSpec, DataSourceStatus>;
/// A DataImportCron as kube-rs reads it.
pub type DataImportCronObject = Object<DataImportCronSpec, DataImportCronStatus>;
/// A VolumeSnapshot (`snapshot.storage.k8s.io/v1`, not in k8s-openapi): spec and status kept
/// as JSON.
pub type VolumeSnapshotObject = Object<serde_json::Value, serde_json::Value>;

fn cdi(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(CDI_GROUP, CDI_VERSION, kind), plural)
}

/// `datavolumes.cdi.kubevirt.io/v1beta1`.
pub fn data_volumes() -> ApiResource {
    cdi("DataVolume", "datavolumes")
}

/// `storageprofiles.cdi.kubevirt.io/v1beta1`.
pub fn storage_profiles() -> ApiResource {
    cdi("StorageProfile", "storageprofiles")
}

/// `datasources.cdi.kubevirt.io/v1beta1`.
pub fn data_sources() -> ApiResource {
    cdi("DataSource", "datasources")
}

/// `dataimportcrons.cdi.kubevirt.io/v1beta1`.
pub fn data_import_crons() -> ApiResource {
    cdi("DataImportCron", "dataimportcrons")
}

/// `volumesnapshots.snapshot.storage.k8s.io/v1`.
pub fn volume_snapshots() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot"),
        "volumesnapshots",
    )
}

/// Converts between the kube-rs and the API representation of the same object (both are the
/// same JSON).
///
/// # Errors
/// [`Error::Convert`] when the JSON of one does not fit the other.
pub fn convert<A: Serialize, B: DeserializeOwned>(from: &A) -> Result<B> {
    let value = serde_json::to_value(from).map_err(Error::Convert)?;
    serde_json::from_value(value).map_err(Error::Convert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DataVolume;

    #[test]
    fn a_data_volume_converts_both_ways_without_loss() {
        let json = serde_json::json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": {"name": "d", "namespace": "ns", "uid": "u1",
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "ux"}]},
            "spec": {"source": {"http": {"url": "http://h/i.qcow2"}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}, "future": 1},
            "status": {"phase": "ImportInProgress", "progress": "10.00%", "restartCount": 1}
        });
        let object: DataVolumeObject = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(object.metadata.uid.as_deref(), Some("u1"));
        let dv: DataVolume = convert(&object).unwrap();
        assert_eq!(dv.metadata.name(), "d");
        assert_eq!(dv.spec.extra["future"], 1);
        let back: DataVolumeObject = convert(&dv).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
    }

    #[test]
    fn resources_name_the_cdi_group_and_plurals() {
        let ar = data_volumes();
        assert_eq!((ar.api_version.as_str(), ar.plural.as_str()), ("cdi.kubevirt.io/v1beta1", "datavolumes"));
        assert_eq!(volume_snapshots().api_version, "snapshot.storage.k8s.io/v1");
    }
}
