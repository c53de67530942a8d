//! `diskplane controller`: the DataVolume controller on a cluster (kube-rs runtime).
//!
//! One `runtime::Controller` for DataVolumes, triggered by the PVCs and Pods they own, plus
//! informers (reflector caches) for PVCs, Pods, StorageClasses, StorageProfiles, DataSources
//! and DataVolumes that the reconciler observes through. The caches watch their own streams
//! (the controller's owner triggers watch PVCs and Pods too: two watches each, simple and
//! correct; shared streams need kube's unstable runtime features).

use std::sync::Arc;

use ::kube::api::Api;
use ::kube::runtime::events::{Recorder, Reporter};
use ::kube::runtime::reflector::{self, Store};
use ::kube::runtime::{Controller, WatchStreamExt, watcher};
use ::kube::{Client, Resource};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use serde::de::DeserializeOwned;

use super::build::ClusterConfig;
use super::error::{Error, Result};
use super::names::MANAGER;
use super::reconcile::{Caches, Context, HttpMetrics, error_policy, random_token_key, reconcile};
use super::resource::{
    DataSourceObject, DataVolumeObject, StorageProfileObject, data_sources, data_volumes, storage_profiles,
};
use crate::local::now;

/// What `diskplane controller` runs with.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Only this namespace (`None`: all namespaces; cluster-scoped objects always).
    pub namespace: Option<String>,
    pub config: ClusterConfig,
}

/// A built-in namespaced resource in one namespace or all.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One of our namespaced resources in one namespace or all.
fn dynamic_api<K>(client: &Client, namespace: Option<&str>, dyntype: &K::DynamicType) -> Api<K>
where
    K: Resource<Scope = ::kube::core::DynamicResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, dyntype),
        None => Api::all_with(client.clone(), dyntype),
    }
}

/// Starts an informer for `api` and returns its cache.
fn informer<K>(api: Api<K>, dyntype: K::DynamicType) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let reader = writer.as_reader();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    tokio::spawn(stream.for_each(|_| std::future::ready(())));
    reader
}

/// Runs the DataVolume controller until the process is told to stop (SIGTERM / Ctrl-C).
///
/// # Errors
/// [`Error::Client`] when no cluster can be reached from the environment.
pub async fn run(options: ControllerOptions) -> Result<()> {
    let client = Client::try_default().await.map_err(Error::Client)?;
    let ns = options.namespace.as_deref();
    let caches = Caches {
        pvcs: informer(api::<PersistentVolumeClaim>(&client, ns), ()),
        pods: informer(api::<Pod>(&client, ns), ()),
        classes: informer(Api::<StorageClass>::all(client.clone()), ()),
        profiles: informer(
            Api::<StorageProfileObject>::all_with(client.clone(), &storage_profiles()),
            storage_profiles(),
        ),
        data_sources: informer(dynamic_api::<DataSourceObject>(&client, ns, &data_sources()), data_sources()),
        data_volumes: informer(dynamic_api::<DataVolumeObject>(&client, ns, &data_volumes()), data_volumes()),
    };
    let reporter = Reporter { controller: MANAGER.to_owned(), instance: std::env::var("POD_NAME").ok() };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        config: options.config,
        caches,
        progress: Arc::new(HttpMetrics { port: super::names::METRICS_PORT as u16 }),
        now,
        token_key: random_token_key,
    });
    let dvs = dynamic_api::<DataVolumeObject>(&client, ns, &data_volumes());
    Controller::new_with(dvs, watcher::Config::default(), data_volumes())
        .owns(api::<PersistentVolumeClaim>(&client, ns), watcher::Config::default())
        .owns(api::<Pod>(&client, ns), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                eprintln!("diskplane controller: {e}");
            }
        })
        .await;
    Ok(())
}
