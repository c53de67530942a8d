//! CDI-compatible API types (`cdi.kubevirt.io/v1beta1`, `upload.cdi.kubevirt.io/v1beta1`).
//!
//! Plain serde structs, camelCase on the wire. Each object is `{apiVersion, kind, metadata,
//! spec, status}` with separate spec and status structs, the shape `kube::CustomResource` derives
//! from, so kube can be added later without reshaping. Fields this crate does not model are kept
//! in `extra` maps, so a manifest written by a newer CDI client survives a read → write round
//! trip instead of being rejected or silently truncated.

pub mod datasource;
pub mod datavolume;
pub mod meta;
pub mod storageprofile;
pub mod upload;
pub mod volumesnapshot;

pub use datasource::{
    DataImportCron, DataImportCronSpec, DataImportCronStatus, DataSource, DataSourceSource, DataSourceSpec,
    DataSourceStatus,
};
pub use datavolume::{
    API_VERSION, ClaimSpec, DataVolume, DataVolumePhase, DataVolumeSource, DataVolumeSourceRef,
    DataVolumeSpec, DataVolumeStatus, DataVolumeTemplate, HttpSource, PersistentVolumeClaimSpec,
    RegistrySource, SourceKind, StorageSpec,
};
pub use meta::{Condition, ConditionStatus, NamespacedName, ObjectMeta, Timestamp};
pub use storageprofile::{ClaimPropertySet, StorageProfile, StorageProfileSpec, StorageProfileStatus};
pub use upload::{UPLOAD_API_VERSION, UploadTokenRequest, UploadTokenRequestSpec, UploadTokenRequestStatus};
pub use volumesnapshot::{VolumeSnapshot, VolumeSnapshotSpec, VolumeSnapshotStatus};
