//! Golden-image catalogs: `DataSource` (a named pointer to a volume) and `DataImportCron`
//! (polls a registry and keeps a DataSource pointing at the latest import).

use serde::{Deserialize, Serialize};

use super::datavolume::DataVolumeTemplate;
use super::meta::{Condition, Extra, NamespacedName, ObjectMeta, null_as_default};

/// A DataSource object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSource {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DataSourceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DataSourceStatus>,
}

/// `DataSource.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceSpec {
    #[serde(default)]
    pub source: DataSourceSource,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Exactly one of a PVC, a VolumeSnapshot or another DataSource (chains of depth 1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<NamespacedName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<NamespacedName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<NamespacedName>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `DataSource.status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceStatus {
    /// The resolved PVC or snapshot (for DataSource → DataSource chains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataSourceSource>,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A DataImportCron object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataImportCron {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: DataImportCronSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DataImportCronStatus>,
}

/// `DataImportCron.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataImportCronSpec {
    /// The DataVolume to create per import; source `registry` or `pvc`.
    #[serde(default)]
    pub template: DataVolumeTemplate,
    /// Standard 5-field cron; empty disables polling.
    #[serde(default)]
    pub schedule: String,
    /// `Outdated` (default) or `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub garbage_collect: Option<String>,
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imports_to_keep: Option<i32>,
    /// The DataSource (same namespace) this cron keeps up to date.
    #[serde(default)]
    pub managed_data_source: String,
    /// `All` (default: keep DVs when the cron is deleted) or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `DataImportCron.status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataImportCronStatus {
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub current_imports: Vec<ImportStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// CDI spells it with a capital `PVC`.
    #[serde(rename = "lastImportedPVC")]
    pub last_imported_pvc: Option<NamespacedName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_execution_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_import_timestamp: Option<String>,
    /// `pvc` or `snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_format: Option<String>,
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One import in flight (CDI spells these two fields with capitals).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ImportStatus {
    #[serde(rename = "DataVolumeName", default)]
    pub data_volume_name: String,
    #[serde(rename = "Digest", default)]
    pub digest: String,
}
