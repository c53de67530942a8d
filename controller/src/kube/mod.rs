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
//! - [`certs`]: the controller's CA and the serving certificates it issues (pure, rcgen).
//! - [`ca`]: the CA's Secret and bundle ConfigMap in the controller's namespace
//!   ([`ca::ensure_ca`] at start-up and every 12 h), shared with the reconciler as
//!   [`ca::SharedCa`].
//! - [`clone`]: clone strategy per StorageProfile with the fallback reason.
//! - [`metrics`]: a running worker's progress from its metrics endpoint.
//! - [`observe`]: PVC / Pod / termination message / metrics → `plan`'s observation.
//! - [`reconcile`]: [`reconcile::reconcile`] and [`reconcile::Context`].
//! - [`apiserver`]: `diskplane apiserver`, the aggregated API server of `UploadTokenRequest`.
//! - [`run`]: `diskplane controller` (informers + `runtime::Controller`s).
//! - [`catalog`]: the DataSource and DataImportCron controllers (the pure plans of
//!   [`crate::catalog`], shared with embedded mode).
//! - [`storageprofile`]: one StorageProfile per StorageClass, status from a provisioner table.
//!
//! ## Caveats
//! - The catalog controllers have caveats of their own ([`catalog`], [`storageprofile`]):
//!   registry-only crons without `secretRef`/`certConfigMap`, no `snapshot` source format, a
//!   small provisioner table.
//! - Smart clones (csi-clone, snapshot) work within one namespace; across namespaces they fall
//!   back to host-assisted copy. VolumeSnapshot sources in another namespace are refused.
//! - Phases of smart clones are `CloneScheduled` → `Succeeded`, not CDI's
//!   `CSICloneInProgress`/`SnapshotForSmartCloneInProgress`.
//! - Host-assisted copy Pods share a random token through a per-clone Secret
//!   (`<uid>-clone-token`, keys `token`, `ca.crt`, and in the source namespace the source's
//!   `tls.crt`/`tls.key`) in the source namespace and, across namespaces, in the target's: the
//!   source serves TLS on port 8444 with a certificate from the controller's CA ([`ca`],
//!   [`certs`]) for a name of its Pod, which the target checks while it dials the Pod's IP.
//!   The Secrets live until the DataVolume is deleted.
//! - The upload Pod gets a per-DataVolume token key derived from the global key
//!   (`uploader::token`), which `diskplane upload-proxy` derives too to check tokens before
//!   forwarding, and a serving certificate for its Service, which the proxy verifies against
//!   the CA bundle the controller publishes. `UploadTokenRequest` is served by [`apiserver`]
//!   (`diskplane apiserver`, an aggregated API server), which signs tokens with the same
//!   derived keys.
//! - Serving certificates last 48 hours and are not renewed (an upload Pod waiting longer
//!   fails the proxy's TLS check until it is recreated).
//! - Cross-namespace clones watch all namespaces: with `--namespace` the source PVC of another
//!   namespace is not in the caches and the clone waits for it.
//! - Status is written as a JSON merge patch: a field `plan` drops (rare: only `extra`) would
//!   stay.

pub mod apiserver;
pub mod build;
pub mod ca;
pub mod catalog;
pub mod certs;
pub mod clone;
pub mod crd;
pub mod error;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod reconcile;
pub mod resource;
pub mod run;
pub mod storageprofile;

pub use error::{Error, Result};
