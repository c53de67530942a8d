//! Golden-image catalogs on a cluster: the DataSource and DataImportCron controllers. They
//! apply [`crate::catalog`]'s pure plans (the same ones embedded mode applies) as kube objects.
//!
//! ```text
//!  DataSource ◄─ PVCs, DataVolumes, DataSources (chains) ─► datasource::reconcile
//!      └─► Ready condition (catalog::data_source_status) ─► status merge patch
//!  DataImportCron ◄─ its DataVolumes / DataSource (label cdi.kubevirt.io/dataImportCron)
//!      └─► cron::reconcile: plan_cron ─► Poll (DigestSource) ─► annotations
//!                                    ─► DataVolume create/delete, lastUseTime, DataSource,
//!                                       status merge patch, requeue at the next poll
//! ```
//!
//! ## Main types
//! - [`CatalogContext`]: client, informer caches, clock, [`DigestSource`].
//! - [`DigestSource`] / [`RegistryDigests`]: a registry tag's manifest digest (the importer's
//!   registry client, plain HTTP for the `insecure` hosts).
//! - [`datasource`]: the DataSource reconciler and its pure status ([`datasource::status`]).
//! - [`cron`]: the DataImportCron reconciler.
//!
//! ## Caveats
//! - Import DataVolumes and the managed DataSource carry CDI's labels but no owner reference
//!   (as CDI: `retentionPolicy: RetainAll` keeps them after the cron is deleted). With
//!   `retentionPolicy: None` the cron gets the finalizer [`cron::FINALIZER`]; deleting the cron
//!   deletes the objects labelled for cleanup ([`crate::catalog::cleanup_due`]), then drops it.
//! - Only `registry` sources with a `url` are polled. The template's `secretRef` (keys
//!   `accessKeyId` / `secretKey`, as CDI) and `certConfigMap` (every key a PEM bundle) are read
//!   at each poll from the cron's namespace ([`RegistryAccess`]); a missing Secret, key or
//!   ConfigMap fails the poll, recorded in the `Polled` condition. The `pvc` source kind (digest `uid:<PVC UID>`) and the `snapshot` source
//!   format are not implemented: imports are always DataVolumes/PVCs.
//! - No Events are emitted for crons and DataSources (CDI emits a few).
//! - VolumeSnapshot sources of DataSources are read with a GET per reconcile (no informer: the
//!   snapshot CRDs may be missing from a cluster) and rechecked every 30 s until ready.

pub mod cron;
pub mod datasource;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ::kube::Client;
use ::kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use ::kube::runtime::reflector::Store;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;

use super::error::{Error, Result};
use super::names::MANAGER;
use super::resource::{DataImportCronObject, DataSourceObject, DataVolumeObject};
use crate::api::{Condition, ConditionStatus, Timestamp};

/// What a poll needs beyond the URL: the registry credentials of the template's `secretRef`
/// and the extra CA certificates of its `certConfigMap`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAccess {
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM bundles, one per ConfigMap key, in key order.
    pub ca_pems: Vec<String>,
}

impl std::fmt::Debug for RegistryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAccess")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_pems", &self.ca_pems.len())
            .finish()
    }
}

/// Resolves a registry image reference (`docker://host/repo:tag`) to its manifest digest.
pub trait DigestSource: Send + Sync {
    /// The digest (`sha256:…`), or why it could not be found (one line).
    fn digest<'a>(
        &'a self,
        url: &'a str,
        access: &'a RegistryAccess,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;
}

/// [`DigestSource`] through the importer's registry client.
#[derive(Debug, Clone, Default)]
pub struct RegistryDigests {
    /// Registry hosts (`host:port`) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
}

impl RegistryDigests {
    fn options(&self, url: &str, access: &RegistryAccess) -> importer::HttpOptions {
        let host = url.strip_prefix("docker://").unwrap_or(url).split('/').next().unwrap_or("");
        importer::HttpOptions {
            insecure: self.insecure_registries.iter().any(|h| h == host),
            username: access.username.clone(),
            password: access.password.clone(),
            ..importer::HttpOptions::default()
        }
    }
}

/// The ConfigMap's certificates as one private temporary PEM file (the registry client reads
/// its extra roots from a path); removed when dropped.
fn ca_bundle_file(pems: &[String]) -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write as _;
    let mut file = tempfile::Builder::new().prefix("diskplane-registry-ca-").suffix(".pem").tempfile()?;
    for pem in pems {
        file.write_all(pem.as_bytes())?;
        file.write_all(b"\n")?;
    }
    file.flush()?;
    Ok(file)
}

impl DigestSource for RegistryDigests {
    fn digest<'a>(
        &'a self,
        url: &'a str,
        access: &'a RegistryAccess,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>> {
        Box::pin(async move {
            let mut options = self.options(url, access);
            let bundle = if access.ca_pems.is_empty() {
                None
            } else {
                let file = ca_bundle_file(&access.ca_pems)
                    .map_err(|e| format!("polling {url}: writing the certConfigMap's CA bundle: {e}"))?;
                options.ca_certs = Some(file.path().to_owned());
                Some(file)
            };
            let digest = importer::registry::resolve_digest(url, &options)
                .await
                .map_err(|e| format!("polling {url}: {}", e.to_string().replace('\n', " ")));
            drop(bundle);
            digest
        })
    }
}

/// What the catalog reconcilers work with.
pub struct CatalogContext {
    pub client: Client,
    pub pvcs: Store<PersistentVolumeClaim>,
    pub data_volumes: Store<DataVolumeObject>,
    pub data_sources: Store<DataSourceObject>,
    pub crons: Store<DataImportCronObject>,
    pub digests: Arc<dyn DigestSource>,
    /// The clock (tests pin it).
    pub now: fn() -> Timestamp,
}

impl std::fmt::Debug for CatalogContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogContext").finish_non_exhaustive()
    }
}

/// Creates `object`; "already exists" is success (a stale cache).
pub(crate) async fn create_object<K>(api: &Api<K>, object: &K, what: String) -> Result<()>
where
    K: ::kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = PostParams { field_manager: Some(MANAGER.to_owned()), ..PostParams::default() };
    match api.create(&params, object).await {
        Ok(_) => Ok(()),
        Err(::kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(Error::api("creating", what)(e)),
    }
}

/// Deletes `name` (dependents in the background); "not found" is success.
pub(crate) async fn delete_object<K>(api: &Api<K>, name: &str, what: String) -> Result<()>
where
    K: ::kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params =
        DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(::kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(Error::api("deleting", what)(e)),
    }
}

/// Sets condition `type_`, keeping its transition time when its status did not change (the
/// rule [`crate::catalog`] follows).
pub(crate) fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    on: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let status = if on { ConditionStatus::True } else { ConditionStatus::False };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == status => {
            c.reason = Some(reason.to_owned());
            c.message = Some(message.to_owned());
        }
        Some(c) => {
            c.status = status;
            c.reason = Some(reason.to_owned());
            c.message = Some(message.to_owned());
            c.last_transition_time = Some(now.to_rfc3339());
        }
        None => conditions.push(Condition {
            type_: type_.to_owned(),
            status,
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            last_transition_time: Some(now.to_rfc3339()),
            last_heartbeat_time: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_registries_are_plain_http() {
        let digests = RegistryDigests { insecure_registries: vec!["127.0.0.1:5000".into()] };
        let none = RegistryAccess::default();
        assert!(digests.options("docker://127.0.0.1:5000/fedora:40", &none).insecure);
        assert!(!digests.options("docker://quay.io/fedora:40", &none).insecure);
    }

    #[test]
    fn credentials_reach_the_registry_client_and_never_debug_output() {
        let access = RegistryAccess {
            username: Some("robot".into()),
            password: Some("s3cret".into()),
            ca_pems: vec!["pem".into()],
        };
        let options = RegistryDigests::default().options("docker://quay.io/fedora:40", &access);
        assert_eq!(
            (options.username.as_deref(), options.password.as_deref()),
            (Some("robot"), Some("s3cret"))
        );
        let shown = format!("{access:?}");
        assert!(!shown.contains("s3cret") && shown.contains("robot"), "{shown}");
    }

    #[test]
    fn conditions_keep_their_transition_time_while_their_status_holds() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, "Ready", false, "NotFound", "PVC not found", Timestamp(0));
        set_condition(&mut conditions, "Ready", false, "ImportInProgress", "m", Timestamp(60));
        assert_eq!(conditions[0].last_transition_time.as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(conditions[0].reason.as_deref(), Some("ImportInProgress"));
        set_condition(&mut conditions, "Ready", true, "Ready", "m", Timestamp(120));
        assert_eq!(conditions[0].last_transition_time.as_deref(), Some("1970-01-01T00:02:00Z"));
        assert_eq!(conditions.len(), 1);
    }
}
