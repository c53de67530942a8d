//! # controller
//!
//! diskplane's declarative API: the CDI-compatible object types (`cdi.kubevirt.io/v1beta1`),
//! the admission rules that decide which objects are accepted, and the reconciler's pure
//! planning step. Effects (creating volumes, running workers, writing status) belong to the
//! drivers built on top of this: the embedded `local` driver and, later, the `kube` driver.
//!
//! ```text
//!   manifest text ──parse_manifests──► Manifest ──validate_manifest──► accepted object
//!   observed state (DV, volume, worker, now) ──plan──► [Step] ──apply (driver)──► the world
//! ```
//!
//! ## Main types
//! - [`api`]: [`api::DataVolume`], [`api::DataSource`], [`api::DataImportCron`],
//!   [`api::StorageProfile`], [`api::UploadTokenRequest`]. Plain serde structs, camelCase,
//!   spec and status split the way `kube::CustomResource` expects; unknown fields are kept.
//! - [`quantity`]: Kubernetes quantities (`"10Gi"`, `"1.5Gi"`, `"1e3"`) as exact bytes.
//! - [`manifest`]: multi-document YAML → [`manifest::Manifest`] (DataVolume, …, a KubeVirt
//!   VirtualMachine's DataVolume templates, or "not ours").
//! - [`validate`]: CDI's webhook rules with CDI's messages, each error naming its field
//!   ([`validate::ValidationError`]); `validate_update` keeps the spec immutable.
//! - [`plan`]: `plan(&Observed) -> Vec<Step>` for one DataVolume. Level-triggered and
//!   idempotent: the same observation always yields the same steps, and every plan ends with
//!   `RequeueAfter` or `AwaitChange`.
//!
//! ## Caveats
//! - Validation is local: checks that need the cluster (source PVC exists, content types of
//!   clone source and target match, clone authorization) belong to the driver.
//! - `s3`, `gcs`, `imageio` and `vddk` sources parse but are rejected as unsupported.

pub mod api;
pub mod catalog;
pub mod cron;
pub mod kube;
pub mod local;
pub mod manifest;
pub mod plan;
pub mod quantity;
pub mod server;
pub mod validate;

pub use manifest::{Manifest, ManifestError, parse_manifests};
pub use plan::{Observed, Step, plan};
pub use quantity::{Quantity, QuantityError, parse_quantity};
pub use validate::{ErrorKind, ValidationError, validate_data_volume, validate_manifest, validate_update};
