//! CustomResourceDefinitions generated from the API types (`diskplane crds`).
//!
//! The four kinds diskplane reconciles in a cluster, in group `cdi.kubevirt.io`, version
//! `v1beta1` (served and stored), with CDI's names, short names, categories and printer
//! columns, so `kubectl get dv` looks as it does with CDI. The `openAPIV3Schema` of each is
//! generated from the Rust type with schemars and rewritten into a *structural* schema
//! ([`schema`]); `deploy/crds/` holds the output and CI fails when it is stale.
//!
//! ## Main types
//! - [`crds`] → `Vec<CustomResourceDefinition>` (k8s-openapi types), [`crd_yaml`] /
//!   [`all_yaml`] / [`file_name`] for `diskplane crds [--out-dir]`.
//! - [`schema::schema_value`], [`schema::structural_problems`]: generation and the structural
//!   rules; [`validate::validate`]: an object against a schema, as the API server checks it.
//! - [`rbac`]: the verbs and resources each component may use (`deploy/rbac.yaml`);
//!   [`pss::restricted_problems`]: the restricted Pod Security Standard as a check on a pod spec.
//!
//! ## Caveats
//! - CDI serves DataSource and DataImportCron without a status subresource; diskplane serves
//!   `/status` for all four kinds (its controller writes status only through it).
//! - `status.phase` of a DataVolume is a plain string (as in CDI's CRD), not an enum, so a phase
//!   written by a newer controller is still accepted.
//! - CDI's CEL rules and `maxItems` limits are not reproduced; diskplane's own validation
//!   ([`crate::validate`]) runs in the controller.

pub mod pss;
pub mod rbac;
pub mod schema;
pub mod validate;

use std::borrow::Cow;
use std::collections::BTreeMap;

use disk_formats::ErrorKind;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresourceStatus,
    CustomResourceSubresources, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::api::{DataImportCron, DataSource, DataVolume, StorageProfile};
use crate::quantity::Quantity;

/// `cdi.kubevirt.io`.
pub const GROUP: &str = "cdi.kubevirt.io";
/// `v1beta1`, the one served and stored version.
pub const VERSION: &str = "v1beta1";
/// Label on every object diskplane installs (`kubectl get crd -l app.kubernetes.io/part-of=diskplane`).
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "diskplane");

/// Why CRDs could not be produced. Both are programming errors (a type whose schema does not
/// fit `JSONSchemaProps`, a value YAML cannot hold); tests catch them before a release.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrdError {
    /// The generated schema of a kind is not a valid `JSONSchemaProps`.
    #[error("schema of {kind}: {source}")]
    Schema {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The schema of a kind breaks the structural-schema rules.
    #[error("schema of {kind} is not structural: {problems}")]
    NotStructural { kind: &'static str, problems: String },
    /// Writing YAML failed.
    #[error("writing {name} as YAML: {source}")]
    Yaml {
        name: String,
        #[source]
        source: serde_saphyr::SerializeError,
    },
}

impl CrdError {
    /// The stable kind of the error.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Unsupported
    }
}

/// One printer column (`kubectl get` output).
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    /// OpenAPI type: `string`, `integer`, `date`.
    pub type_: &'static str,
    pub json_path: &'static str,
    pub description: Option<&'static str>,
}

/// Everything about one kind except its schema.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// `Namespaced` or `Cluster`.
    pub scope: &'static str,
    pub columns: &'static [Column],
    /// The structural schema of the kind (see [`schema::schema_value`]).
    pub schema: fn() -> Value,
}

const AGE: Column =
    Column { name: "Age", type_: "date", json_path: ".metadata.creationTimestamp", description: None };

/// The kinds, in the order `diskplane crds` prints them.
pub const KINDS: &[Kind] = &[
    Kind {
        kind: "DataVolume",
        plural: "datavolumes",
        singular: "datavolume",
        short_names: &["dv", "dvs"],
        categories: &["all"],
        scope: "Namespaced",
        columns: &[
            Column {
                name: "Phase",
                type_: "string",
                json_path: ".status.phase",
                description: Some("The phase the data volume is in"),
            },
            Column {
                name: "Progress",
                type_: "string",
                json_path: ".status.progress",
                description: Some("Transfer progress in percentage if known, N/A otherwise"),
            },
            Column {
                name: "Restarts",
                type_: "integer",
                json_path: ".status.restartCount",
                description: Some("The number of times the transfer has been restarted."),
            },
            AGE,
        ],
        schema: schema::schema_value::<DataVolume>,
    },
    Kind {
        kind: "DataSource",
        plural: "datasources",
        singular: "datasource",
        short_names: &["das"],
        categories: &["all"],
        scope: "Namespaced",
        columns: &[],
        schema: schema::schema_value::<DataSource>,
    },
    Kind {
        kind: "DataImportCron",
        plural: "dataimportcrons",
        singular: "dataimportcron",
        short_names: &["dic", "dics"],
        categories: &["all"],
        scope: "Namespaced",
        columns: &[Column {
            name: "Format",
            type_: "string",
            json_path: ".status.sourceFormat",
            description: Some("The format in which created sources are saved"),
        }],
        schema: schema::schema_value::<DataImportCron>,
    },
    Kind {
        kind: "StorageProfile",
        plural: "storageprofiles",
        singular: "storageprofile",
        short_names: &[],
        categories: &[],
        scope: "Cluster",
        columns: &[],
        schema: schema::schema_value::<StorageProfile>,
    },
];

impl Kind {
    /// `<plural>.<group>`, the CRD's name.
    pub fn crd_name(&self) -> String {
        format!("{}.{GROUP}", self.plural)
    }

    /// The structural schema with `metadata` reduced to `type: object`, as Kubernetes requires
    /// for the root of a CRD (the API server validates metadata itself).
    pub fn root_schema(&self) -> Value {
        let mut schema = (self.schema)();
        if let Some(metadata) = schema.pointer_mut("/properties/metadata") {
            *metadata = serde_json::json!({"type": "object"});
        }
        schema
    }

    /// The CustomResourceDefinition of this kind.
    ///
    /// # Errors
    /// [`CrdError`] if the schema is not structural or does not fit `JSONSchemaProps`.
    pub fn crd(&self) -> Result<CustomResourceDefinition, CrdError> {
        let schema = self.root_schema();
        let problems = schema::structural_problems(&schema);
        if !problems.is_empty() {
            return Err(CrdError::NotStructural { kind: self.kind, problems: problems.join("; ") });
        }
        let schema: JSONSchemaProps =
            serde_json::from_value(schema).map_err(|source| CrdError::Schema { kind: self.kind, source })?;
        let names =
            |list: &[&str]| (!list.is_empty()).then(|| list.iter().map(|s| (*s).to_owned()).collect());
        let columns: Vec<CustomResourceColumnDefinition> = self
            .columns
            .iter()
            .map(|c| CustomResourceColumnDefinition {
                name: c.name.to_owned(),
                type_: c.type_.to_owned(),
                json_path: c.json_path.to_owned(),
                description: c.description.map(str::to_owned),
                ..Default::default()
            })
            .collect();
        Ok(CustomResourceDefinition {
            metadata: ObjectMeta {
                name: Some(self.crd_name()),
                labels: Some(BTreeMap::from([(PART_OF.0.to_owned(), PART_OF.1.to_owned())])),
                ..Default::default()
            },
            spec: CustomResourceDefinitionSpec {
                group: GROUP.to_owned(),
                names: CustomResourceDefinitionNames {
                    kind: self.kind.to_owned(),
                    list_kind: Some(format!("{}List", self.kind)),
                    plural: self.plural.to_owned(),
                    singular: Some(self.singular.to_owned()),
                    short_names: names(self.short_names),
                    categories: names(self.categories),
                },
                scope: self.scope.to_owned(),
                versions: vec![CustomResourceDefinitionVersion {
                    name: VERSION.to_owned(),
                    served: true,
                    storage: true,
                    additional_printer_columns: (!columns.is_empty()).then_some(columns),
                    schema: Some(CustomResourceValidation { open_api_v3_schema: Some(schema) }),
                    subresources: Some(CustomResourceSubresources {
                        status: Some(CustomResourceSubresourceStatus(serde_json::json!({}))),
                        scale: None,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
            status: None,
        })
    }
}

/// The CRDs of every kind in [`KINDS`], in that order.
///
/// # Errors
/// [`CrdError`] when a kind's schema cannot be turned into a CRD.
pub fn crds() -> Result<Vec<CustomResourceDefinition>, CrdError> {
    KINDS.iter().map(Kind::crd).collect()
}

/// One CRD as a YAML document (no leading `---`).
///
/// # Errors
/// [`CrdError::Yaml`] when serialization fails.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    serde_saphyr::to_string(crd).map_err(|source| CrdError::Yaml { name, source })
}

/// Every CRD as one multi-document YAML stream (`---` before each document).
///
/// # Errors
/// [`CrdError`] as [`crds`] and [`crd_yaml`].
pub fn all_yaml() -> Result<String, CrdError> {
    let mut out = String::new();
    for crd in crds()? {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

/// The file a CRD is written to by `diskplane crds --out-dir`: `<group>_<plural>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// A quantity is an int-or-string in Kubernetes (`10Gi` or `1024`), as in the core API.
impl schemars::JsonSchema for Quantity {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_yields_a_structural_crd() {
        for kind in KINDS {
            let crd = kind.crd().unwrap_or_else(|e| panic!("{}: {e}", kind.kind));
            assert_eq!(crd.metadata.name.as_deref(), Some(kind.crd_name().as_str()));
        }
    }

    #[test]
    fn quantity_schema_is_int_or_string() {
        let schema = schema::schema_value::<crate::api::datavolume::ResourceRequirements>();
        assert_eq!(
            schema.pointer("/properties/requests/additionalProperties"),
            Some(
                &serde_json::json!({"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": true})
            )
        );
    }
}
