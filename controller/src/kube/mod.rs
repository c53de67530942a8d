//! The `kube` driver: the same reconciler as the embedded mode, applied to a Kubernetes cluster
//! through kube-rs (PVCs, worker Pods, Services). It never touches disk bytes.
//!
//! Inside this module tree write `::kube::…` for the kube-rs crate, so it is never confused with
//! this module.

pub mod crd;
