//! `diskplane controller`: the DataVolume, DataSource, DataImportCron and StorageProfile
//! controllers on a cluster (kube-rs runtime), run side by side until SIGTERM / Ctrl-C.
//!
//! One `runtime::Controller` for DataVolumes, triggered by the PVCs and Pods they own, plus
//! informers (reflector caches) for PVCs, Pods, StorageClasses, StorageProfiles, DataSources
//! and DataVolumes that the reconciler observes through. The caches watch their own streams
//! (the controller's owner triggers watch PVCs and Pods too: two watches each, simple and
//! correct; shared streams need kube's unstable runtime features).
//!
//! The catalog controllers ([`super::catalog`]): DataSources, triggered by the PVCs and
//! DataVolumes their `pvc` sources name and by the DataSources they reference; DataImportCrons,
//! triggered by the DataVolumes and DataSources labelled with them. StorageProfiles: one
//! controller on StorageClasses that owns them ([`super::storageprofile`]).
//!
//! Registries a DataImportCron polls over plain HTTP are [`ControllerOptions::insecure_registries`]
//! (`diskplane controller --insecure-registry host:port`, or the environment variable
//! [`INSECURE_REGISTRIES_ENV`], comma-separated).

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
use super::ca::{SharedCa, ensure_ca, keep_renewed};
use super::catalog::datasource::{self, dependents_of_source, dependents_of_volume};
use super::catalog::{CatalogContext, RegistryDigests, cron};
use super::error::{Error, Result};
use super::names::MANAGER;
use super::reconcile::{Caches, Context, HttpMetrics, error_policy, random_token_key, reconcile};
use super::resource::{
    DataImportCronObject, DataSourceObject, DataVolumeObject, StorageProfileObject, data_import_crons,
    data_sources, data_volumes, storage_profiles,
};
use super::storageprofile::{self, ProfileContext};
use crate::catalog::LABEL_CRON;
use crate::local::now;

/// What `diskplane controller` runs with.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Only this namespace (`None`: all namespaces; cluster-scoped objects always).
    pub namespace: Option<String>,
    pub config: ClusterConfig,
    /// Registry hosts (`host:port`) DataImportCrons poll over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// The controller's own namespace: where its CA Secret and the CA bundle ConfigMap live
    /// ([`super::ca`]).
    pub ca_namespace: String,
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

/// Comma-separated registry hosts (`host:port`) DataImportCrons poll over plain HTTP.
pub const INSECURE_REGISTRIES_ENV: &str = "DISKPLANE_INSECURE_REGISTRIES";

/// Prints a failed reconcile (the controller retries it per its error policy).
async fn report<T, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(e) = result {
        eprintln!("diskplane controller: {e}");
    }
}

/// Runs the controllers until the process is told to stop (SIGTERM / Ctrl-C).
///
/// # Errors
/// [`Error::Client`] when no cluster can be reached from the environment, [`Error::Api`] or
/// [`Error::Certificate`] when the CA cannot be loaded or made.
pub async fn run(options: ControllerOptions) -> Result<()> {
    let client = Client::try_default().await.map_err(Error::Client)?;
    let ca = Arc::new(SharedCa::new(ensure_ca(&client, &options.ca_namespace, now()).await?));
    tokio::spawn(keep_renewed(client.clone(), options.ca_namespace.clone(), Arc::clone(&ca), now));
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
        ca,
    });
    let dvs = dynamic_api::<DataVolumeObject>(&client, ns, &data_volumes());
    let data_volume_controller = Controller::new_with(dvs, watcher::Config::default(), data_volumes())
        .owns(api::<PersistentVolumeClaim>(&client, ns), watcher::Config::default())
        .owns(api::<Pod>(&client, ns), watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(report);

    // DataSources: their sources' PVCs and DataVolumes, and the DataSources they reference.
    let config = watcher::Config::default();
    let ds_controller = Controller::new_with(
        dynamic_api::<DataSourceObject>(&client, ns, &data_sources()),
        config.clone(),
        data_sources(),
    );
    let (by_pvc, by_dv, by_ds) = (ds_controller.store(), ds_controller.store(), ds_controller.store());
    let ds_controller = ds_controller
        .watches(api::<PersistentVolumeClaim>(&client, ns), config.clone(), move |pvc| {
            let (ns, name) =
                (pvc.metadata.namespace.unwrap_or_default(), pvc.metadata.name.unwrap_or_default());
            dependents_of_volume(&by_pvc, &ns, &name)
        })
        .watches_with(
            dynamic_api::<DataVolumeObject>(&client, ns, &data_volumes()),
            data_volumes(),
            config.clone(),
            move |dv| {
                let (ns, name) =
                    (dv.metadata.namespace.unwrap_or_default(), dv.metadata.name.unwrap_or_default());
                dependents_of_volume(&by_dv, &ns, &name)
            },
        )
        .watches_with(
            dynamic_api::<DataSourceObject>(&client, ns, &data_sources()),
            data_sources(),
            config.clone(),
            move |ds| {
                let (ns, name) =
                    (ds.metadata.namespace.unwrap_or_default(), ds.metadata.name.unwrap_or_default());
                dependents_of_source(&by_ds, &ns, &name)
            },
        );

    // DataImportCrons: the DataVolumes and DataSources labelled with them.
    let labelled = watcher::Config::default().labels(LABEL_CRON);
    let cron_controller = Controller::new_with(
        dynamic_api::<DataImportCronObject>(&client, ns, &data_import_crons()),
        config.clone(),
        data_import_crons(),
    )
    .watches_with(
        dynamic_api::<DataVolumeObject>(&client, ns, &data_volumes()),
        data_volumes(),
        labelled.clone(),
        |dv| cron::cron_of(dv.metadata.labels.as_ref(), dv.metadata.namespace.as_deref()),
    )
    .watches_with(
        dynamic_api::<DataSourceObject>(&client, ns, &data_sources()),
        data_sources(),
        labelled,
        |ds| cron::cron_of(ds.metadata.labels.as_ref(), ds.metadata.namespace.as_deref()),
    );

    let insecure_registries = options.insecure_registries.clone();
    let catalog = Arc::new(CatalogContext {
        client: client.clone(),
        pvcs: ctx.caches.pvcs.clone(),
        data_volumes: ctx.caches.data_volumes.clone(),
        data_sources: ds_controller.store(),
        crons: cron_controller.store(),
        digests: Arc::new(RegistryDigests { insecure_registries }),
        now,
    });
    let ds_controller = ds_controller
        .shutdown_on_signal()
        .run(datasource::reconcile, datasource::error_policy, catalog.clone())
        .for_each(report);
    let cron_controller = cron_controller
        .shutdown_on_signal()
        .run(cron::reconcile, cron::error_policy, catalog)
        .for_each(report);

    // StorageProfiles: one per StorageClass.
    let profiles = Arc::new(ProfileContext { client: client.clone(), profiles: ctx.caches.profiles.clone() });
    let profile_controller = Controller::new(Api::<StorageClass>::all(client.clone()), config.clone())
        .owns_with(
            Api::<StorageProfileObject>::all_with(client.clone(), &storage_profiles()),
            storage_profiles(),
            config,
        )
        .shutdown_on_signal()
        .run(storageprofile::reconcile, storageprofile::error_policy, profiles)
        .for_each(report);

    tokio::join!(data_volume_controller, ds_controller, cron_controller, profile_controller);
    Ok(())
}
