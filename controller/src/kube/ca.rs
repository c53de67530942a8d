//! The controller's CA in the cluster: loaded from (or created in) the Secret
//! [`CA_SECRET`] of the controller's own namespace at start-up and renewed before it expires
//! ([`ensure_ca`], again every [`RECHECK`] while running), its bundle published in the
//! ConfigMap [`CA_BUNDLE_CONFIG_MAP`] that the upload proxy mounts (the proxy has no API
//! access). The reconciler issues serving certificates from the [`SharedCa`].
//!
//! Objects (pure builders here, the API calls in [`ensure_ca`]):
//! - Secret `diskplane-upload-ca` (`kubernetes.io/tls`): `tls.crt`, `tls.key`,
//!   `ca-bundle.crt`, annotations [`ANN_NOT_BEFORE`] / [`ANN_NOT_AFTER`].
//! - ConfigMap `diskplane-upload-ca-bundle`: `ca-bundle.crt` (this CA and the one it replaced).
//!
//! A renewal replaces the Secret with a compare-and-swap `update` (its `resourceVersion`), so
//! two controllers starting at once never leave two CAs: the loser's update fails with 409 and
//! its next check loads the winner's.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ::kube::Client;
use ::kube::api::{Api, PostParams};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::certs::{ANN_NOT_AFTER, ANN_NOT_BEFORE, CertificateAuthority};
use super::error::{Error, Result};
use super::names::{LABEL_MANAGED_BY, MANAGER};
use crate::api::Timestamp;

/// The CA Secret in the controller's namespace.
pub const CA_SECRET: &str = "diskplane-upload-ca";
/// The ConfigMap with the CA bundle, in the controller's namespace (the upload proxy mounts it).
pub const CA_BUNDLE_CONFIG_MAP: &str = "diskplane-upload-ca-bundle";
/// Key of the bundle in the ConfigMap and the Secret.
pub const CA_BUNDLE_KEY: &str = "ca-bundle.crt";
/// How often a running controller checks whether its CA is due for renewal.
pub const RECHECK: Duration = Duration::from_secs(12 * 3600);

/// The CA the reconciler issues from; replaced in place when renewed.
#[derive(Debug)]
pub struct SharedCa(RwLock<Arc<CertificateAuthority>>);

impl SharedCa {
    pub fn new(ca: CertificateAuthority) -> Self {
        Self(RwLock::new(Arc::new(ca)))
    }

    /// The current CA.
    pub fn get(&self) -> Arc<CertificateAuthority> {
        match self.0.read() {
            Ok(ca) => Arc::clone(&ca),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts a renewed CA in place.
    pub fn set(&self, ca: CertificateAuthority) {
        match self.0.write() {
            Ok(mut slot) => *slot = Arc::new(ca),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(ca),
        }
    }
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned())])
}

/// The CA Secret holding `ca` (pure).
pub fn ca_secret(namespace: &str, ca: &CertificateAuthority) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels()),
            annotations: Some(BTreeMap::from([
                (ANN_NOT_BEFORE.to_owned(), Timestamp(ca.not_before()).to_rfc3339()),
                (ANN_NOT_AFTER.to_owned(), Timestamp(ca.not_after()).to_rfc3339()),
            ])),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([
            ("tls.crt".to_owned(), ca.cert_pem().to_owned()),
            ("tls.key".to_owned(), ca.key_pem().to_owned()),
            (CA_BUNDLE_KEY.to_owned(), ca.bundle_pem().to_owned()),
        ])),
        type_: Some("kubernetes.io/tls".to_owned()),
        ..Secret::default()
    }
}

/// The ConfigMap publishing `ca`'s bundle (pure).
pub fn ca_bundle(namespace: &str, ca: &CertificateAuthority) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CA_BUNDLE_CONFIG_MAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(CA_BUNDLE_KEY.to_owned(), ca.bundle_pem().to_owned())])),
        ..ConfigMap::default()
    }
}

/// The CA a stored Secret holds, or why it cannot be used.
pub fn stored_ca(secret: &Secret) -> std::result::Result<CertificateAuthority, String> {
    let text = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .ok_or_else(|| format!("no {key}"))
    };
    let time = |key: &str| {
        secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .and_then(|v| Timestamp::parse_rfc3339(v))
            .map(|t| t.0)
            .ok_or_else(|| format!("no valid annotation {key}"))
    };
    CertificateAuthority::from_stored(
        text("tls.crt")?,
        text("tls.key")?,
        text(CA_BUNDLE_KEY)?,
        time(ANN_NOT_BEFORE)?,
        time(ANN_NOT_AFTER)?,
    )
    .map_err(|e| e.to_string())
}

/// Loads the CA from its Secret in `namespace`, creating or renewing it when missing,
/// unusable or due ([`CertificateAuthority::needs_renewal`]), and makes the bundle ConfigMap
/// match it.
///
/// # Errors
/// [`Error::Api`] when the Secret or ConfigMap cannot be read or written (a lost renewal
/// race is one: 409), [`Error::Certificate`] when no CA can be generated.
pub async fn ensure_ca(client: &Client, namespace: &str, now: Timestamp) -> Result<CertificateAuthority> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = format!("Secret {namespace}/{CA_SECRET}");
    let existing = secrets.get_opt(CA_SECRET).await.map_err(Error::api("reading", what.clone()))?;
    let stored = existing.as_ref().map(stored_ca);
    let ca = match (&existing, stored) {
        (Some(_), Some(Ok(ca))) if !ca.needs_renewal(now.0) => ca,
        (None, _) => {
            let ca = CertificateAuthority::generate(now.0, None)?;
            let params = PostParams { field_manager: Some(MANAGER.to_owned()), ..PostParams::default() };
            secrets
                .create(&params, &ca_secret(namespace, &ca))
                .await
                .map_err(Error::api("creating", what))?;
            ca
        }
        (Some(old), stored) => {
            if let Some(Err(why)) = &stored {
                eprintln!("diskplane controller: replacing the CA in {what}: {why}");
            }
            let previous = stored.and_then(std::result::Result::ok);
            let ca = CertificateAuthority::generate(now.0, previous.as_ref())?;
            let mut secret = ca_secret(namespace, &ca);
            secret.metadata.resource_version = old.metadata.resource_version.clone();
            let params = PostParams { field_manager: Some(MANAGER.to_owned()), ..PostParams::default() };
            secrets
                .replace(CA_SECRET, &params, &secret)
                .await
                .map_err(Error::api("renewing the CA in", what))?;
            ca
        }
    };
    publish_bundle(client, namespace, &ca).await?;
    Ok(ca)
}

/// Creates the bundle ConfigMap, or updates it when it differs from `ca`'s bundle.
async fn publish_bundle(client: &Client, namespace: &str, ca: &CertificateAuthority) -> Result<()> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let what = format!("ConfigMap {namespace}/{CA_BUNDLE_CONFIG_MAP}");
    let params = PostParams { field_manager: Some(MANAGER.to_owned()), ..PostParams::default() };
    let mut wanted = ca_bundle(namespace, ca);
    match maps.get_opt(CA_BUNDLE_CONFIG_MAP).await.map_err(Error::api("reading", what.clone()))? {
        None => {
            maps.create(&params, &wanted).await.map_err(Error::api("creating", what))?;
        }
        Some(map) if map.data == wanted.data => {}
        Some(map) => {
            wanted.metadata.resource_version = map.metadata.resource_version;
            maps.replace(CA_BUNDLE_CONFIG_MAP, &params, &wanted)
                .await
                .map_err(Error::api("updating", what))?;
        }
    }
    Ok(())
}

/// Checks the CA every [`RECHECK`] and puts a renewed one in place (run as a task beside the
/// controllers; a failed check is reported and tried again at the next one).
pub async fn keep_renewed(client: Client, namespace: String, shared: Arc<SharedCa>, now: fn() -> Timestamp) {
    loop {
        tokio::time::sleep(RECHECK).await;
        match ensure_ca(&client, &namespace, now()).await {
            Ok(ca) => shared.set(ca),
            Err(e) => eprintln!("diskplane controller: checking the CA: {e}"),
        }
    }
}
