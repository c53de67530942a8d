//! `DataVolume` (`cdi.kubevirt.io/v1beta1`): a volume and where its bytes come from.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::meta::{
    Condition, Extra, NamespacedName, ObjectMeta, TypedLocalObjectReference, null_as_default,
    null_as_some_default,
};
use crate::quantity::Quantity;

/// `cdi.kubevirt.io/v1beta1`.
pub const API_VERSION: &str = "cdi.kubevirt.io/v1beta1";

/// A DataVolume object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolume {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DataVolumeSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DataVolumeStatus>,
}

/// `metadata` + `spec` of a DataVolume embedded in another object (a VirtualMachine's
/// `dataVolumeTemplates[]`, a DataImportCron's `template`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeTemplate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DataVolumeSpec,
}

/// `DataVolume.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSpec {
    #[serde(default, deserialize_with = "null_as_some_default", skip_serializing_if = "Option::is_none")]
    pub source: Option<DataVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ref: Option<DataVolumeSourceRef>,
    /// Raw PVC spec: Kubernetes semantics, size and access mode mandatory.
    #[serde(default, deserialize_with = "null_as_some_default", skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PersistentVolumeClaimSpec>,
    /// "Smart" PVC spec: defaults from the StorageProfile, size optional for clones.
    #[serde(default, deserialize_with = "null_as_some_default", skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// `kubevirt` (default) or `archive`; kept as text so validation can name a bad value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<DataVolumeCheckpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_checkpoint: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preallocation: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `contentType: kubevirt` — a disk image, converted to raw.
pub const CONTENT_TYPE_KUBEVIRT: &str = "kubevirt";
/// `contentType: archive` — a tar extracted into a filesystem volume.
pub const CONTENT_TYPE_ARCHIVE: &str = "archive";
/// `volumeMode: Block`.
pub const VOLUME_MODE_BLOCK: &str = "Block";
/// `volumeMode: Filesystem`.
pub const VOLUME_MODE_FILESYSTEM: &str = "Filesystem";

impl DataVolumeSpec {
    /// The content type, `kubevirt` when unset or empty.
    pub fn content_type(&self) -> &str {
        match self.content_type.as_deref() {
            None | Some("") => CONTENT_TYPE_KUBEVIRT,
            Some(other) => other,
        }
    }

    /// The claim spec, whichever of `pvc` / `storage` is set (`pvc` first).
    pub fn claim(&self) -> Option<&ClaimSpec> {
        self.pvc.as_ref().or(self.storage.as_ref())
    }

    /// `resources.requests.storage` of the claim, if any.
    pub fn requested_size(&self) -> Option<&Quantity> {
        self.claim()?.resources.requests.get("storage")
    }

    /// `volumeMode` of the claim, if set.
    pub fn volume_mode(&self) -> Option<&str> {
        self.claim()?.volume_mode.as_deref()
    }

    /// Whether the target is a block device (`volumeMode: Block`).
    pub fn is_block(&self) -> bool {
        self.volume_mode() == Some(VOLUME_MODE_BLOCK)
    }
}

/// `spec.source`: exactly one field is set on a valid DataVolume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSource {
    #[serde(default, deserialize_with = "null_as_some_default", skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    #[serde(default, deserialize_with = "null_as_some_default", skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Source>,
    #[serde(default, deserialize_with = "null_as_some_default", skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsSource>,
    #[serde(default, deserialize_with = "null_as_some_default", skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySource>,
    #[serde(default, deserialize_with = "null_as_some_default", skip_serializing_if = "Option::is_none")]
    pub pvc: Option<NamespacedName>,
    #[serde(default, deserialize_with = "null_as_some_default", skip_serializing_if = "Option::is_none")]
    pub upload: Option<EmptySource>,
    #[serde(default, deserialize_with = "null_as_some_default", skip_serializing_if = "Option::is_none")]
    pub blank: Option<EmptySource>,
    #[serde(default, deserialize_with = "null_as_some_default", skip_serializing_if = "Option::is_none")]
    pub imageio: Option<ImageioSource>,
    #[serde(default, deserialize_with = "null_as_some_default", skip_serializing_if = "Option::is_none")]
    pub vddk: Option<VddkSource>,
    #[serde(default, deserialize_with = "null_as_some_default", skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<NamespacedName>,
    /// Source kinds this crate does not know (newer CDI); they count as sources.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Which kind of source a DataVolume names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SourceKind {
    Http,
    S3,
    Gcs,
    Registry,
    Pvc,
    Upload,
    Blank,
    Imageio,
    Vddk,
    Snapshot,
}

impl SourceKind {
    /// The field name under `spec.source`.
    pub fn field(self) -> &'static str {
        match self {
            SourceKind::Http => "http",
            SourceKind::S3 => "s3",
            SourceKind::Gcs => "gcs",
            SourceKind::Registry => "registry",
            SourceKind::Pvc => "pvc",
            SourceKind::Upload => "upload",
            SourceKind::Blank => "blank",
            SourceKind::Imageio => "imageio",
            SourceKind::Vddk => "vddk",
            SourceKind::Snapshot => "snapshot",
        }
    }

    /// Whether the source is another volume (PVC or snapshot clone).
    pub fn is_clone(self) -> bool {
        matches!(self, SourceKind::Pvc | SourceKind::Snapshot)
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

impl DataVolumeSource {
    /// The source kinds that are set, in field order.
    pub fn kinds(&self) -> Vec<SourceKind> {
        let set = [
            (self.http.is_some(), SourceKind::Http),
            (self.s3.is_some(), SourceKind::S3),
            (self.gcs.is_some(), SourceKind::Gcs),
            (self.registry.is_some(), SourceKind::Registry),
            (self.pvc.is_some(), SourceKind::Pvc),
            (self.upload.is_some(), SourceKind::Upload),
            (self.blank.is_some(), SourceKind::Blank),
            (self.imageio.is_some(), SourceKind::Imageio),
            (self.vddk.is_some(), SourceKind::Vddk),
            (self.snapshot.is_some(), SourceKind::Snapshot),
        ];
        set.into_iter().filter(|(on, _)| *on).map(|(_, kind)| kind).collect()
    }

    /// Number of sources set, counting unknown (newer) source fields.
    pub fn count(&self) -> usize {
        self.kinds().len() + self.extra.values().filter(|v| !v.is_null()).count()
    }

    /// The one source kind, if exactly one known source is set.
    pub fn kind(&self) -> Option<SourceKind> {
        let unknown = self.extra.values().any(|v| !v.is_null());
        match (self.kinds().as_slice(), unknown) {
            ([one], false) => Some(*one),
            _ => None,
        }
    }
}

/// `spec.source.http`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    #[serde(default)]
    pub url: String,
    /// Secret with `accessKeyId` / `secretKey` (HTTP basic auth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// ConfigMap with PEM CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// `"Name: value"` header lines.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub extra_headers: Vec<String>,
    /// Secrets whose every value is one header line.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub secret_extra_headers: Vec<String>,
    /// `algo:hex` with algo md5, sha1, sha256 or sha512; empty means none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.source.s3` (parsed; diskplane does not import from S3 yet).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    #[serde(default)]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.source.gcs` (parsed; diskplane does not import from GCS yet).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcsSource {
    #[serde(default)]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.source.registry`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySource {
    /// `docker://[host/]repo[:tag|@digest]` or `oci-archive:/path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// OpenShift ImageStream name; only with `pullMethod: node`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_stream: Option<String>,
    /// `pod` (default) or `node`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformOptions>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.source.registry.platform`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `upload: {}` and `blank: {}`: no fields of their own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EmptySource {
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.source.imageio` (oVirt/RHV; parsed, out of scope for diskplane).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageioSource {
    #[serde(default)]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    #[serde(default, rename = "diskId", skip_serializing_if = "Option::is_none")]
    pub disk_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.source.vddk` (VMware; parsed, out of scope for diskplane).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VddkSource {
    #[serde(default)]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    #[serde(default, rename = "initImageURL", skip_serializing_if = "Option::is_none")]
    pub init_image_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_args: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.sourceRef`: an indirect source (only `kind: DataSource`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourceRef {
    #[serde(default)]
    pub kind: String,
    /// Defaults to the DataVolume's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: String,
}

/// One stage of a multi-stage (warm) import.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeCheckpoint {
    #[serde(default)]
    pub previous: String,
    #[serde(default)]
    pub current: String,
}

/// The claim part of a DataVolume: `spec.pvc` (core `PersistentVolumeClaimSpec` subset) and
/// `spec.storage` (CDI's `StorageSpec`) share these fields; unknown ones are kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSpec {
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub resources: ResourceRequirements,
    /// `Filesystem`, `Block`, or (storage only) `FromStorageProfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// A label selector, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<TypedLocalObjectReference>,
    /// `TypedObjectReference` (external populators), kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source_ref: Option<serde_json::Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.pvc`.
pub type PersistentVolumeClaimSpec = ClaimSpec;
/// `spec.storage`.
pub type StorageSpec = ClaimSpec;

/// `resources` of a claim: only `requests.storage` matters to diskplane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequirements {
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `DataVolume.status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeStatus {
    /// Name of the volume (PVC) holding the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// The phase, as CDI spells it (a plain string in the CRD, so newer phases still validate).
    #[serde(default, skip_serializing_if = "DataVolumePhase::is_unset")]
    #[schemars(with = "String")]
    pub phase: DataVolumePhase,
    /// `"NN.NN%"` or `"N/A"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Worker restarts (transient failures retried).
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl DataVolumeStatus {
    /// The condition of this type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// Every phase CDI's `DataVolumePhase` knows. Unknown strings read as [`DataVolumePhase::Unknown`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[non_exhaustive]
pub enum DataVolumePhase {
    /// `""`: not reconciled yet.
    #[default]
    #[serde(rename = "")]
    Unset,
    Pending,
    #[serde(rename = "PVCBound")]
    PvcBound,
    ImportScheduled,
    ImportInProgress,
    CloneScheduled,
    CloneInProgress,
    SnapshotForSmartCloneInProgress,
    CloneFromSnapshotSourceInProgress,
    SmartClonePVCInProgress,
    #[serde(rename = "CSICloneInProgress")]
    CsiCloneInProgress,
    ExpansionInProgress,
    NamespaceTransferInProgress,
    PrepClaimInProgress,
    RebindInProgress,
    UploadScheduled,
    UploadReady,
    WaitForFirstConsumer,
    PendingPopulation,
    Paused,
    Succeeded,
    Failed,
    #[serde(other)]
    Unknown,
}

impl DataVolumePhase {
    /// Whether the phase is `""`.
    pub fn is_unset(&self) -> bool {
        *self == DataVolumePhase::Unset
    }

    /// Whether the phase is final: `Succeeded` or `Failed`.
    pub fn is_terminal(self) -> bool {
        matches!(self, DataVolumePhase::Succeeded | DataVolumePhase::Failed)
    }

    /// The phase as CDI spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            DataVolumePhase::Unset => "",
            DataVolumePhase::Pending => "Pending",
            DataVolumePhase::PvcBound => "PVCBound",
            DataVolumePhase::ImportScheduled => "ImportScheduled",
            DataVolumePhase::ImportInProgress => "ImportInProgress",
            DataVolumePhase::CloneScheduled => "CloneScheduled",
            DataVolumePhase::CloneInProgress => "CloneInProgress",
            DataVolumePhase::SnapshotForSmartCloneInProgress => "SnapshotForSmartCloneInProgress",
            DataVolumePhase::CloneFromSnapshotSourceInProgress => "CloneFromSnapshotSourceInProgress",
            DataVolumePhase::SmartClonePVCInProgress => "SmartClonePVCInProgress",
            DataVolumePhase::CsiCloneInProgress => "CSICloneInProgress",
            DataVolumePhase::ExpansionInProgress => "ExpansionInProgress",
            DataVolumePhase::NamespaceTransferInProgress => "NamespaceTransferInProgress",
            DataVolumePhase::PrepClaimInProgress => "PrepClaimInProgress",
            DataVolumePhase::RebindInProgress => "RebindInProgress",
            DataVolumePhase::UploadScheduled => "UploadScheduled",
            DataVolumePhase::UploadReady => "UploadReady",
            DataVolumePhase::WaitForFirstConsumer => "WaitForFirstConsumer",
            DataVolumePhase::PendingPopulation => "PendingPopulation",
            DataVolumePhase::Paused => "Paused",
            DataVolumePhase::Succeeded => "Succeeded",
            DataVolumePhase::Failed => "Failed",
            DataVolumePhase::Unknown => "Unknown",
        }
    }
}

impl fmt::Display for DataVolumePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Condition types of a DataVolume.
pub mod condition {
    /// The volume exists and is bound.
    pub const BOUND: &str = "Bound";
    /// A worker is running.
    pub const RUNNING: &str = "Running";
    /// The data is in place (`Succeeded`).
    pub const READY: &str = "Ready";
}

/// CDI's condition reason strings.
pub mod reason {
    pub const BOUND: &str = "Bound";
    pub const PENDING: &str = "Pending";
    pub const NOT_FOUND: &str = "NotFound";
    pub const CLAIM_LOST: &str = "ClaimLost";
    pub const POD_RUNNING: &str = "Pod is running";
    pub const COMPLETED: &str = "Completed";
    pub const ERROR: &str = "Error";
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    pub const IMAGE_PULL_FAILED: &str = "ImagePullFailed";
    pub const SCRATCH_SPACE_REQUIRED: &str = "Scratch space required";
    pub const CHECKSUM_ERROR: &str = "ChecksumError";
    pub const TRANSFER_RUNNING: &str = "TransferRunning";
    /// Event reason CDI uses when a claim spec cannot be satisfied (archive + Block, …).
    pub const CLAIM_NOT_VALID: &str = "ErrClaimNotValid";
    /// Event reason for a clone whose source does not exist (yet).
    pub const CLONE_WITHOUT_SOURCE: &str = "CloneWithoutSource";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_use_cdi_spelling_and_unknown_strings_read_as_unknown() {
        let status: DataVolumeStatus = serde_json::from_value(serde_json::json!({
            "phase": "PVCBound", "progress": "N/A", "restartCount": 2
        }))
        .unwrap();
        assert_eq!(status.phase, DataVolumePhase::PvcBound);
        assert_eq!(status.restart_count, 2);
        let json = serde_json::to_value(DataVolumeStatus {
            phase: DataVolumePhase::CsiCloneInProgress,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(json["phase"], "CSICloneInProgress");
        let status: DataVolumeStatus =
            serde_json::from_value(serde_json::json!({"phase": "Teleporting"})).unwrap();
        assert_eq!(status.phase, DataVolumePhase::Unknown);
        let status: DataVolumeStatus = serde_json::from_value(serde_json::json!({"phase": ""})).unwrap();
        assert!(status.phase.is_unset());
    }

    #[test]
    fn every_phase_serializes_as_its_as_str() {
        use DataVolumePhase::*;
        for phase in [
            Unset,
            Pending,
            PvcBound,
            ImportScheduled,
            ImportInProgress,
            CloneScheduled,
            CloneInProgress,
            SnapshotForSmartCloneInProgress,
            CloneFromSnapshotSourceInProgress,
            SmartClonePVCInProgress,
            CsiCloneInProgress,
            ExpansionInProgress,
            NamespaceTransferInProgress,
            PrepClaimInProgress,
            RebindInProgress,
            UploadScheduled,
            UploadReady,
            WaitForFirstConsumer,
            PendingPopulation,
            Paused,
            Succeeded,
            Failed,
            Unknown,
        ] {
            assert_eq!(serde_json::to_value(phase).unwrap(), phase.as_str(), "{phase:?}");
        }
    }

    #[test]
    fn null_source_fields_mean_empty_objects_and_unknown_sources_count() {
        let source: DataVolumeSource =
            serde_json::from_value(serde_json::json!({"upload": null, "future": null})).unwrap();
        assert_eq!(source.kind(), Some(SourceKind::Upload));
        let source: DataVolumeSource = serde_json::from_value(serde_json::json!({"future": {}})).unwrap();
        assert_eq!((source.count(), source.kind()), (1, None));
    }
}
