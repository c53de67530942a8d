//! The `kube` driver: the same reconciler as the embedded mode, applied to a Kubernetes cluster
//! through kube-rs (PVCs, worker Pods, Services). It never touches disk bytes.
//!
//! Inside this module tree write `::kube::…` for the kube-rs crate, so it is never confused with
//! this module.
//!
//! ```text
//!  watch DataVolumes, owned PVCs/Pods ─► reconcile(dv) ─► observe (caches, metrics)
//!                                                      ─► plan (shared with embedded mode)
//!                                                      ─► apply: PVC, worker Pod, Service,
//!                                                         status patch, Events
//! ```
//!
//! ## Main types
//! - [`resource`]: our API types as kube-rs `Object<Spec, Status>` + `ApiResource`s.
//! - [`build`]: pure builders of the PVC, the restricted worker Pods, the upload Service and
//!   Secret, the VolumeSnapshot of a smart clone ([`build::ClusterConfig`] holds the image,
//!   pull policy, overhead, WaitForFirstConsumer gate).
//! - [`clone`]: clone strategy per StorageProfile with the fallback reason.
//! - [`metrics`]: a running worker's progress from its metrics endpoint.
//! - [`observe`]: PVC / Pod / termination message / metrics → `plan`'s observation.
//! - [`reconcile`]: [`reconcile::reconcile`] and [`reconcile::Context`].
//! - [`run`]: `diskplane controller` (informers + `runtime::Controller`).
//!
//! ## Caveats
//! - Only DataVolumes are reconciled; DataSource, DataImportCron and StorageProfile controllers
//!   are not written yet (the catalog plans exist in [`crate::catalog`]).
//! - Smart clones (csi-clone, snapshot) work within one namespace; across namespaces they fall
//!   back to host-assisted copy. VolumeSnapshot sources in another namespace are refused.
//! - Phases of smart clones are `CloneScheduled` → `Succeeded`, not CDI's
//!   `CSICloneInProgress`/`SnapshotForSmartCloneInProgress`.
//! - Host-assisted copy Pods share a random token through a per-clone Secret
//!   (`<uid>-clone-token`, key `token`) in the source namespace and, across namespaces, in the
//!   target's, but no TLS material yet (no certificate generator in the dependency tree): the
//!   source serves plain TCP on port 8444 (`--insecure`), so the token and the disk bytes
//!   cross the Pod network unencrypted. The Secrets live until the DataVolume is deleted.
//! - The upload Pod gets a per-DataVolume token key Secret, but the upload proxy and
//!   `UploadTokenRequest` serving are not built.
//! - Cross-namespace clones watch all namespaces: with `--namespace` the source PVC of another
//!   namespace is not in the caches and the clone waits for it.
//! - Status is written as a JSON merge patch: a field `plan` drops (rare: only `extra`) would
//!   stay.

pub mod build;
pub mod clone;
pub mod crd;
pub mod error;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod reconcile;
pub mod resource;
pub mod run;

pub use error::{Error, Result};
