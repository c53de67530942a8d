//! Reading manifests: multi-document YAML (or JSON) → typed objects, dispatched on
//! `apiVersion` + `kind`.
//!
//! Each document is first read as a generic value (so a document of a kind diskplane does not
//! serve, like a ConfigMap, is recognised and skipped rather than failing), then converted into
//! its typed struct. Errors name the document (1-based) and, for typed errors, the kind.

use serde::{Deserialize, Serialize};

use crate::api::datavolume::DataVolumeTemplate;
use crate::api::meta::{Extra, ObjectMeta, null_as_default};
use crate::api::{DataImportCron, DataSource, DataVolume, StorageProfile, UploadTokenRequest};

/// The API group of DataVolume, DataSource, DataImportCron and StorageProfile.
pub const CDI_GROUP: &str = "cdi.kubevirt.io";
/// The API group of UploadTokenRequest.
pub const UPLOAD_GROUP: &str = "upload.cdi.kubevirt.io";
/// The API group of KubeVirt's VirtualMachine.
pub const KUBEVIRT_GROUP: &str = "kubevirt.io";

/// One object read from a manifest.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Manifest {
    DataVolume(Box<DataVolume>),
    DataSource(Box<DataSource>),
    DataImportCron(Box<DataImportCron>),
    StorageProfile(Box<StorageProfile>),
    UploadTokenRequest(Box<UploadTokenRequest>),
    /// A KubeVirt VirtualMachine: only its `dataVolumeTemplates` concern this crate.
    VirtualMachine(Box<VirtualMachine>),
    /// Any other kind (ConfigMap, Secret, CDIConfig, PersistentVolume…): not ours.
    Other {
        api_version: String,
        kind: String,
    },
}

impl Manifest {
    /// The object's `kind`.
    pub fn kind(&self) -> &str {
        match self {
            Manifest::DataVolume(_) => "DataVolume",
            Manifest::DataSource(_) => "DataSource",
            Manifest::DataImportCron(_) => "DataImportCron",
            Manifest::StorageProfile(_) => "StorageProfile",
            Manifest::UploadTokenRequest(_) => "UploadTokenRequest",
            Manifest::VirtualMachine(_) => "VirtualMachine",
            Manifest::Other { kind, .. } => kind,
        }
    }
}

/// The part of a KubeVirt `VirtualMachine` this crate reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachine {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualMachineSpec,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `VirtualMachine.spec`: the DataVolume templates; the rest is kept as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub data_volume_templates: Vec<DataVolumeTemplate>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Why a manifest could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The text is not YAML.
    #[error("not valid YAML: {0}")]
    Yaml(String),
    /// A document is not a mapping with `apiVersion` and `kind`.
    #[error("document {document}: {message}")]
    NotAnObject { document: usize, message: String },
    /// A document of a known kind does not match its schema.
    #[error("document {document} ({kind}): {message}")]
    Schema { document: usize, kind: String, message: String },
}

/// Reads every document of a YAML (or JSON) text; empty documents are skipped.
///
/// # Errors
/// [`ManifestError`] for text that is not YAML, documents that are not objects, and objects of
/// a known kind whose fields have the wrong shape.
pub fn parse_manifests(text: &str) -> Result<Vec<Manifest>, ManifestError> {
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    documents
        .into_iter()
        .enumerate()
        .filter(|(_, doc)| !doc.is_null())
        .map(|(index, doc)| to_manifest(index + 1, doc))
        .collect()
}

/// Converts one generic document into its typed object.
///
/// # Errors
/// As [`parse_manifests`].
pub fn to_manifest(document: usize, doc: serde_json::Value) -> Result<Manifest, ManifestError> {
    let not_object = |message: &str| ManifestError::NotAnObject { document, message: message.to_owned() };
    let object = doc.as_object().ok_or_else(|| not_object("not a mapping"))?;
    let text = |key: &str| object.get(key).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let (api_version, kind) = (text("apiVersion"), text("kind"));
    if kind.is_empty() {
        return Err(not_object("missing kind"));
    }
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    fn typed<T: for<'de> Deserialize<'de>>(
        document: usize,
        kind: &str,
        doc: serde_json::Value,
    ) -> Result<Box<T>, ManifestError> {
        serde_json::from_value(doc).map(Box::new).map_err(|e| ManifestError::Schema {
            document,
            kind: kind.to_owned(),
            message: e.to_string(),
        })
    }
    Ok(match (group, kind.as_str()) {
        (CDI_GROUP, "DataVolume") => Manifest::DataVolume(typed(document, &kind, doc)?),
        (CDI_GROUP, "DataSource") => Manifest::DataSource(typed(document, &kind, doc)?),
        (CDI_GROUP, "DataImportCron") => Manifest::DataImportCron(typed(document, &kind, doc)?),
        (CDI_GROUP, "StorageProfile") => Manifest::StorageProfile(typed(document, &kind, doc)?),
        (UPLOAD_GROUP, "UploadTokenRequest") => Manifest::UploadTokenRequest(typed(document, &kind, doc)?),
        (KUBEVIRT_GROUP, "VirtualMachine") => Manifest::VirtualMachine(typed(document, &kind, doc)?),
        _ => Manifest::Other { api_version, kind },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_yields_one_manifest_per_document() {
        let text = "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: cdi.kubevirt.io/v1beta1\n\
                    kind: DataVolume\nmetadata:\n  name: a\nspec:\n  source:\n    blank: {}\n---\n";
        let manifests = parse_manifests(text).unwrap();
        assert_eq!(manifests.len(), 2);
        assert_eq!(manifests[0].kind(), "ConfigMap");
        let Manifest::DataVolume(dv) = &manifests[1] else { panic!("not a DataVolume") };
        assert_eq!(dv.metadata.name(), "a");
    }

    #[test]
    fn wrong_field_shape_names_document_and_kind() {
        let text = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nspec:\n  source: nope\n";
        let err = parse_manifests(text).unwrap_err();
        assert!(matches!(err, ManifestError::Schema { document: 1, ref kind, .. } if kind == "DataVolume"));
    }

    #[test]
    fn document_without_kind_is_rejected() {
        let err = parse_manifests("apiVersion: v1\nmetadata: {}\n").unwrap_err();
        assert!(matches!(err, ManifestError::NotAnObject { document: 1, .. }));
    }
}
