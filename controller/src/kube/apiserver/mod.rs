//! `diskplane apiserver`: serves `UploadTokenRequest` (`upload.cdi.kubevirt.io/v1beta1`) in a
//! cluster as an aggregated API server, as CDI's cdi-apiserver does, so `virtctl image-upload`
//! and `kubectl create -f token-request.yaml` get upload tokens through the Kubernetes API.
//!
//! ```text
//!  virtctl ─► kube-apiserver ──(APIService v1beta1.upload.cdi.kubevirt.io; client cert of the
//!             authn, audit      front proxy; X-Remote-User/Group/Extra-*)──► diskplane apiserver
//!                                                                            │ SubjectAccessReview
//!                                                                            │ GET DataVolume (uid)
//!  virtctl ◄── UploadTokenRequest{status.token} ◄────────────────────────────┘
//!  virtctl ─► diskplane upload-proxy (Bearer token) ─► upload Pod
//! ```
//!
//! The token is the cluster token of `uploader::token`: claims naming the DataVolume's
//! namespace, name, uid and content type, signed with the key derived for it from the global
//! key (`--token-key`, the Secret the controller and the upload proxy mount), valid 5 minutes.
//! The upload proxy derives the same key to verify it; no second token scheme exists.
//!
//! ## Main types
//! - [`frontproxy`]: the ConfigMap `kube-system/extension-apiserver-authentication`
//!   ([`frontproxy::RequestHeaderConfig`]) and the user of a request
//!   ([`frontproxy::authenticate`]).
//! - [`tls`]: the serving configuration with optional client certificates verified against the
//!   requestheader CA, and [`tls::ConnectionPeer`], what each connection presented.
//! - [`routes`]: discovery, `/healthz`, the create endpoint ([`routes::access_review`] is the
//!   SubjectAccessReview it sends).
//! - [`ApiServer`] (client, key, front-proxy settings, clock) and [`serve`].
//!
//! ## Caveats
//! - The requestheader CA and the serving certificate are read once at start: restart the
//!   Deployment after rotating either (kubeadm's front-proxy CA lives ten years).
//! - No OpenAPI document (404, which the aggregator skips): `kubectl explain` knows nothing of
//!   the kind, and kubectl's client-side validation of `create -f` is lenient for it.
//! - Only the front proxy is accepted: no bearer tokens of users (TokenReview), so
//!   `system:auth-delegator` is not needed.
//! - Denials are 403 with a Kubernetes `Status` (cdi-apiserver answers 401 with a plain reason;
//!   both are errors to virtctl and kubectl).

pub mod frontproxy;
pub mod routes;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ::kube::Client;
use ::kube::api::Api;
use k8s_openapi::api::core::v1::ConfigMap;
use uploader::tls::TlsListener;
use uploader::token::TokenKey;

use frontproxy::{AUTH_CONFIG_MAP, ConfigError, RequestHeaderConfig};

/// What goes wrong starting or running the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiServerError {
    /// The ConfigMap with the front proxy's settings could not be read.
    #[error("reading ConfigMap kube-system/extension-apiserver-authentication: {0}")]
    AuthConfigMap(#[source] ::kube::Error),
    /// It was read, but cannot be used.
    #[error(transparent)]
    FrontProxy(#[from] ConfigError),
    /// Certificates, keys, the client CA.
    #[error("TLS: {0}")]
    Tls(String),
    /// Binding or serving the listener.
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The kube client could not be built from the environment.
    #[error("kube client: {0}")]
    Client(#[source] ::kube::Error),
}

/// What the request handlers share.
#[derive(Clone)]
pub struct ApiServer {
    /// The server's own identity towards the API (SubjectAccessReviews, DataVolume reads).
    pub client: Client,
    /// The global upload token key (per-DataVolume keys are derived from it).
    pub key: TokenKey,
    /// Who the front proxy is and how it names users.
    pub front_proxy: RequestHeaderConfig,
    /// Seconds since the Unix epoch (tests fix it).
    pub now: fn() -> u64,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer").field("front_proxy", &self.front_proxy).finish_non_exhaustive()
    }
}

/// Reads the front proxy's settings from `kube-system/extension-apiserver-authentication`.
///
/// # Errors
/// [`ApiServerError::AuthConfigMap`] when it cannot be read (RBAC: the RoleBinding to
/// `extension-apiserver-authentication-reader`), [`ApiServerError::FrontProxy`] when it lacks
/// the front proxy.
pub async fn load_front_proxy(client: &Client) -> Result<RequestHeaderConfig, ApiServerError> {
    let (namespace, name) = AUTH_CONFIG_MAP;
    let map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(ApiServerError::AuthConfigMap)?;
    Ok(RequestHeaderConfig::from_config_map(&map.data.unwrap_or_default())?)
}

/// Serves `server`'s routes on `tcp` over TLS with `tls` (from [`tls::server_config`]) until
/// `shutdown` completes.
///
/// # Errors
/// [`ApiServerError::Listen`] when the listener fails.
pub async fn serve(
    tcp: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    server: ApiServer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiServerError> {
    let addr = tcp.local_addr().map_err(|source| ApiServerError::Listen { addr: unspecified(), source })?;
    let listener = TlsListener::new(tcp, tls).map_err(|source| ApiServerError::Listen { addr, source })?;
    let app = routes::router(Arc::new(server)).into_make_service_with_connect_info::<tls::ConnectionPeer>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ApiServerError::Listen { addr, source })
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// What `diskplane apiserver` runs with.
#[derive(Debug, Clone)]
pub struct ApiServerOptions {
    pub listen: SocketAddr,
    /// PEM certificate chain (leaf first) for the Service name the APIService points at.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The global upload token key.
    pub key: TokenKey,
}

/// `diskplane apiserver`: reads the front proxy's settings with the in-cluster identity,
/// listens, calls `on_ready` with the bound address, serves until `shutdown`.
///
/// # Errors
/// Any [`ApiServerError`].
pub async fn run(
    options: ApiServerOptions,
    on_ready: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ApiServerError> {
    let client = Client::try_default().await.map_err(ApiServerError::Client)?;
    let front_proxy = load_front_proxy(&client).await?;
    let tls = tls::server_config(&options.tls_cert, &options.tls_key, &front_proxy.client_ca_pem)?;
    let tcp = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ApiServerError::Listen { addr: options.listen, source })?;
    let addr = tcp.local_addr().map_err(|source| ApiServerError::Listen { addr: options.listen, source })?;
    on_ready(addr);
    let server = ApiServer { client, key: options.key, front_proxy, now: uploader::token::unix_now };
    serve(tcp, tls, server, shutdown).await
}
