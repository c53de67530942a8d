//! The cluster's upload endpoint (`diskplane upload-proxy`, CDI's `cdi-uploadproxy`): checks
//! an upload token, then streams the request to the DataVolume's upload Pod and its answer back.
//!
//! ## Request handling (CDI's order and statuses)
//! 1. `Authorization` missing, or not `Bearer <token>` with token characters
//!    `[A-Za-z0-9-._~+/]` → **400**.
//! 2. The token's claims name the DataVolume (namespace, name, uid); the per-volume key is
//!    derived from the global key for exactly those ([`crate::token`] module docs) and the
//!    token verified with it: bad signature, expired, not yet valid, unparsable, or claims that
//!    name no DataVolume → **401**. A token signed with one volume's key but naming another
//!    therefore fails here.
//! 3. Verified, but not for the `Upload` operation → **400**.
//! 4. The upload server (`--upstream` template, default
//!    `https://cdi-upload-{name}.{namespace}.svc`, the Service the controller creates, port 443 →
//!    the Pod's 8443) must answer `GET /healthz` within [`DEFAULT_UPSTREAM_WAIT`] (polled every
//!    second, like CDI polls the PVC's readiness), else **503** "error in upload-proxy: … upload
//!    server of DataVolume ns/name … is not reachable …".
//! 5. Path: a `kubevirt` volume keeps the request path; an `archive` volume goes to
//!    `/v1beta1/upload-archive` (`/v1alpha1/…` for the alpha routes), as CDI rewrites it.
//! 6. The request (method, headers but hop-by-hop ones, query, body) is streamed to the
//!    upstream; its status, headers and body are streamed back. When forwarding fails the
//!    answer is **502** "error in upload-proxy: …".
//!
//! The content type rides in the signed claims ([`Claims::content`]), so the proxy needs no
//! Kubernetes API access: whoever issues the token (the `UploadTokenRequest` endpoint) reads the
//! DataVolume once.
//!
//! ## Main types
//! - [`ProxyConfig`] (global key, [`Upstream`] template, upstream CA, wait) → [`Proxy`].
//! - [`router`]: CDI's routes (`/v1beta1|v1alpha1` × `upload`, `upload-async`, `upload-form`,
//!   `upload-form-async`, every method) and `GET /healthz`; serve it with
//!   [`crate::server::serve`] over TLS.
//!
//! ## Caveats
//! - Bodies are streamed both ways with HTTP back-pressure: memory stays bounded by hyper's
//!   buffers whatever the upload's size.
//! - TLS to the upload server is verified against `--upstream-ca` only (no system roots): in
//!   a cluster the bundle of the controller's CA, which issues each upload Pod a certificate
//!   for its Service. A plain `http://` template is accepted only when written explicitly
//!   (tests) and then tokens and bytes cross the network in clear text.
//! - The CA bundle is read again every minute ([`reload_upstream_ca`]): after a renewal the
//!   ConfigMap volume changes within the kubelet's sync period, then the proxy trusts the new
//!   bundle.
//! - No client certificate is presented to the upload server (CDI uses mTLS): the upload Pod
//!   verifies the forwarded token with its own per-volume key instead.
//! - CORS: every origin is allowed (as CDI), preflights are answered here.
//! - The readiness check is the upload server's `/healthz`, not the PVC's annotations: an upload
//!   to a finished volume is refused by the upload server itself (its 409 passes through).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use crate::error::Error;
use crate::token::{Claims, TokenKey, UploadContent, peek, unix_now};

/// How long the upload server may take to answer `/healthz` before the proxy answers 503
/// (CDI polls the PVC's readiness for up to 10 s).
pub const DEFAULT_UPSTREAM_WAIT: Duration = Duration::from_secs(10);

/// Interval of the readiness polls.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The longest a forwarded upload may take (CDI: 24 h, #1139).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Longest TCP + TLS connect to the upload server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The default upstream: the upload Service the controller creates (port 443 → 8443).
pub const DEFAULT_UPSTREAM: &str = "https://cdi-upload-{name}.{namespace}.svc";

/// Prefix of every error the proxy itself adds to a response (CDI's wording).
pub const ERROR_PREFIX: &str = "error in upload-proxy: ";

/// The upload server's base URL for a DataVolume: a template with `{name}` and `{namespace}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    template: String,
}

impl Upstream {
    /// Checks the template: `http://` or `https://`, no path, query or fragment.
    ///
    /// # Errors
    /// [`Error::Config`] naming the problem.
    pub fn parse(template: &str) -> Result<Self, Error> {
        let rest =
            template.strip_prefix("https://").or_else(|| template.strip_prefix("http://")).ok_or_else(
                || Error::Config(format!("upstream {template:?} must start with https:// or http://")),
            )?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#']) {
            return Err(Error::Config(format!(
                "upstream {template:?} must be a scheme and host[:port] only (the request path is appended)"
            )));
        }
        let template = template.strip_suffix('/').unwrap_or(template).to_owned();
        Ok(Self { template })
    }

    /// Whether the upstream speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.template.starts_with("https://")
    }

    /// The base URL for `namespace/name` (no trailing slash).
    pub fn base(&self, namespace: &str, name: &str) -> String {
        self.template.replace("{namespace}", namespace).replace("{name}", name)
    }
}

/// What a [`Proxy`] is built from.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The global key (per-volume keys are derived from it).
    pub key: TokenKey,
    /// Where each DataVolume's upload server is.
    pub upstream: Upstream,
    /// PEM CA bundle the upload servers' certificates are verified against (required for an
    /// `https://` upstream, refused for `http://`).
    pub upstream_ca: Option<Vec<u8>>,
    /// How long the upload server may take to become reachable.
    pub upstream_wait: Duration,
}

/// The proxy's state: key, upstream, HTTP client (replaced when the upstream CA changes).
#[derive(Debug)]
pub struct Proxy {
    key: TokenKey,
    upstream: Upstream,
    client: RwLock<reqwest::Client>,
    wait: Duration,
}

impl Proxy {
    /// Builds the HTTP client for the upstream.
    ///
    /// # Errors
    /// [`Error::Config`] when the CA is missing, unusable, or given for a plain upstream.
    pub fn new(config: ProxyConfig) -> Result<Self, Error> {
        let client = upstream_client(&config.upstream, config.upstream_ca.as_deref())?;
        Ok(Self {
            key: config.key,
            upstream: config.upstream,
            client: RwLock::new(client),
            wait: config.upstream_wait,
        })
    }

    /// Verifies upload servers against `pem` from now on (a renewed CA's bundle); requests
    /// under way keep their connections.
    ///
    /// # Errors
    /// [`Error::Config`] when the bundle is unusable or the upstream is plain `http://`; the
    /// CA in use is kept.
    pub fn set_upstream_ca(&self, pem: &[u8]) -> Result<(), Error> {
        let client = upstream_client(&self.upstream, Some(pem))?;
        match self.client.write() {
            Ok(mut slot) => *slot = client,
            Err(poisoned) => *poisoned.into_inner() = client,
        }
        Ok(())
    }

    fn client(&self) -> reqwest::Client {
        match self.client.read() {
            Ok(client) => client.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Re-reads the upstream CA bundle at `path` every `interval` and hands a changed one to
/// `proxy` (a ConfigMap volume changes when the controller renews its CA). A bundle that
/// cannot be read or used is reported on stderr and the one in use kept.
pub async fn reload_upstream_ca(proxy: Arc<Proxy>, path: std::path::PathBuf, interval: Duration) {
    // The bundle last looked at (each change is reported once).
    let mut seen = std::fs::read(&path).ok();
    loop {
        tokio::time::sleep(interval).await;
        // A small file: read in place.
        let pem = match std::fs::read(&path) {
            Ok(pem) if seen.as_ref() == Some(&pem) => continue,
            Ok(pem) => pem,
            Err(e) => {
                eprintln!("upload-proxy: keeping the CA bundle in use: reading {}: {e}", path.display());
                continue;
            }
        };
        match proxy.set_upstream_ca(&pem) {
            Ok(()) => {
                eprintln!("upload-proxy: verifying upload servers against the changed {}", path.display())
            }
            Err(e) => eprintln!("upload-proxy: keeping the CA bundle in use: {}: {e}", path.display()),
        }
        seen = Some(pem);
    }
}

/// The HTTP client for `upstream`, verifying TLS upstreams against `ca` only.
fn upstream_client(upstream: &Upstream, ca: Option<&[u8]>) -> Result<reqwest::Client, Error> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(UPSTREAM_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    match (upstream.is_tls(), ca) {
        (true, Some(pem)) => {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Config(format!("parsing the upstream CA bundle: {e}")))?;
            if certs.is_empty() {
                return Err(Error::Config("the upstream CA bundle holds no PEM certificate".to_owned()));
            }
            builder = builder.tls_certs_only(certs);
        }
        (true, None) => {
            return Err(Error::Config(
                "an https:// upstream needs its CA (--upstream-ca): upload servers are verified against it"
                    .to_owned(),
            ));
        }
        (false, Some(_)) => {
            return Err(Error::Config(
                "an upstream CA was given but the upstream template is plain http://".to_owned(),
            ));
        }
        (false, None) => {}
    }
    builder.build().map_err(|e| Error::Config(format!("building the upstream client: {e}")))
}

/// CDI's proxy routes over `proxy` (every method reaches the handler) and `GET /healthz`.
pub fn router(proxy: Arc<Proxy>) -> Router {
    let state = proxy;
    let mut app = Router::new();
    for version in ["v1beta1", "v1alpha1"] {
        for route in ["upload", "upload-async", "upload-form", "upload-form-async"] {
            let alpha = version == "v1alpha1";
            app = app.route(
                &format!("/{version}/{route}"),
                any(move |state: State<Arc<Proxy>>, request: Request| forward(state, alpha, request)),
            );
        }
    }
    app.route("/healthz", get(|| async { "OK" }))
        .layer(axum::middleware::map_response(allow_any_origin))
        .with_state(state)
}

async fn allow_any_origin(mut response: Response) -> Response {
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// A refusal: status and message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = format!("{}\n", self.message);
        (self.status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
    }
}

/// Steps 1–3 of the module docs: the verified claims, or the refusal.
fn authorize(key: &TokenKey, headers: &HeaderMap, now: u64) -> Result<Claims, Refusal> {
    let bad_request = |m: &str| Refusal::new(StatusCode::BAD_REQUEST, m);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| bad_request("no Authorization header: send `Authorization: Bearer <upload token>`"))?;
    let token = value.to_str().ok().and_then(bearer_token).ok_or_else(|| {
        bad_request("malformed Authorization header: expected `Bearer <upload token>` (token characters A-Z a-z 0-9 - . _ ~ + /)")
    })?;
    let unauthorized = |m: String| Refusal::new(StatusCode::UNAUTHORIZED, m);
    let claims = peek(token).map_err(|e| unauthorized(e.to_string()))?;
    let names_volume = [&claims.namespace, &claims.name, &claims.uid]
        .iter()
        .all(|part| !part.is_empty() && !part.contains('/'));
    if !names_volume {
        return Err(unauthorized(
            "upload token names no DataVolume (namespace, name and uid): it was not issued for this cluster"
                .to_owned(),
        ));
    }
    let volume_key = key.derive(&claims.namespace, &claims.name, &claims.uid);
    let claims = volume_key.decode(token, now).map_err(|e| {
        unauthorized(format!("{e} (token for DataVolume {}/{})", claims.namespace, claims.name))
    })?;
    if !claims.is_upload() {
        return Err(bad_request(&format!(
            "upload token is for operation {:?}, not Upload",
            claims.operation
        )));
    }
    Ok(claims)
}

/// The token of `Bearer <token>` (CDI's `^Bearer\s+([A-Za-z0-9\-._~+/]+)$`, case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let scheme = value.get(..6)?;
    let rest = value.get(6..)?;
    if !scheme.eq_ignore_ascii_case("bearer") || !rest.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let token = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let valid = |c: char| c.is_ascii_alphanumeric() || "-._~+/".contains(c);
    (!token.is_empty() && token.chars().all(valid)).then_some(token)
}

/// CORS preflight (CDI allows every origin, method and header).
fn preflight(headers: &HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let out = response.headers_mut();
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, HEAD"),
    );
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    response
}

async fn forward(State(proxy): State<Arc<Proxy>>, alpha: bool, request: Request) -> Response {
    let headers = request.headers();
    if request.method() == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return preflight(headers);
    }
    let claims = match authorize(&proxy.key, headers, unix_now()) {
        Ok(claims) => claims,
        Err(refusal) => return refusal.into_response(),
    };
    let volume = format!("{}/{}", claims.namespace, claims.name);
    let base = proxy.upstream.base(&claims.namespace, &claims.name);
    if let Err(why) = wait_ready(&proxy, &base).await {
        let message = format!(
            "{ERROR_PREFIX}rejecting the upload to DataVolume {volume}: its upload server {base} is not reachable \
             after {} s: {why}",
            proxy.wait.as_secs()
        );
        return Refusal::new(StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    }
    let path = match claims.content {
        UploadContent::Kubevirt => request.uri().path().to_owned(),
        UploadContent::Archive if alpha => "/v1alpha1/upload-archive".to_owned(),
        UploadContent::Archive => "/v1beta1/upload-archive".to_owned(),
    };
    let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let url = format!("{base}{path}{query}");
    match send(&proxy.client(), &url, request).await {
        Ok(response) => response,
        Err(e) => Refusal::new(
            StatusCode::BAD_GATEWAY,
            format!("{ERROR_PREFIX}forwarding the upload to DataVolume {volume} ({url}): {}", chain(&e)),
        )
        .into_response(),
    }
}

/// Polls `base/healthz` until it answers 2xx, for up to the proxy's wait.
async fn wait_ready(proxy: &Proxy, base: &str) -> Result<(), String> {
    let deadline = Instant::now() + proxy.wait;
    let url = format!("{base}/healthz");
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        let last = match tokio::time::timeout(remaining, proxy.client().get(&url).send()).await {
            Ok(Ok(response)) if response.status().is_success() => return Ok(()),
            Ok(Ok(response)) => format!("GET /healthz answered {}", response.status()),
            Ok(Err(e)) => chain(&e),
            Err(_) => "no answer to GET /healthz".to_owned(),
        };
        if Instant::now() + POLL_INTERVAL >= deadline {
            return Err(last);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), and `Host`.
fn hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::HOST,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

/// Streams `request` to `url` and the answer back.
async fn send(client: &reqwest::Client, url: &str, request: Request) -> Result<Response, reqwest::Error> {
    let (parts, body) = request.into_parts();
    let has_body = parts.headers.contains_key(header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let mut upstream = client.request(parts.method, url).headers(headers);
    if has_body {
        upstream = upstream.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let answer = upstream.send().await?;
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            response = response.header(name, value);
        }
    }
    Ok(response
        .body(Body::from_stream(answer.bytes_stream()))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// An error and its sources, `: `-separated (reqwest's own message alone says little).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::DEFAULT_TTL;

    const NOW: u64 = 1_800_000_000;

    fn global() -> TokenKey {
        TokenKey::from_bytes(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap()
    }

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn cluster_token(key: &TokenKey, ns: &str, name: &str, uid: &str) -> String {
        let claims = Claims::upload(ns, name, NOW, DEFAULT_TTL).for_data_volume(uid, UploadContent::Kubevirt);
        key.derive(ns, name, uid).issue(&claims)
    }

    #[test]
    fn a_token_signed_with_the_volumes_derived_key_is_accepted() {
        let token = cluster_token(&global(), "ns", "disk", "uid-1");

        let claims = authorize(&global(), &headers(Some(&format!("Bearer {token}"))), NOW).unwrap();

        assert_eq!((claims.namespace.as_str(), claims.name.as_str()), ("ns", "disk"));
    }

    #[test]
    fn missing_or_malformed_headers_are_400() {
        let token = cluster_token(&global(), "ns", "disk", "uid-1");
        for value in [
            None,
            Some("Basic abc"),
            Some("Bearer"),
            Some("Bearer a b"),
            Some("Bearerabc"),
            Some("Bearer a=b"),
        ] {
            let refusal = authorize(&global(), &headers(value), NOW).unwrap_err();
            assert_eq!(refusal.status, StatusCode::BAD_REQUEST, "{value:?}: {}", refusal.message);
        }
        assert!(authorize(&global(), &headers(Some(&format!("bEaReR \t{token}"))), NOW).is_ok());
        let missing = authorize(&global(), &headers(None), NOW).unwrap_err();
        assert!(missing.message.contains("no Authorization header"), "{}", missing.message);
    }

    #[test]
    fn bad_signatures_other_volumes_and_expiry_are_401() {
        let key = global();
        let other_global = TokenKey::from_bytes(vec![9u8; 32]).unwrap();
        // Signed with disk's key but naming another volume (what a leaked Secret allows).
        let claims =
            Claims::upload("ns", "other", NOW, DEFAULT_TTL).for_data_volume("uid-1", UploadContent::Kubevirt);
        let foreign = key.derive("ns", "disk", "uid-1").issue(&claims);
        // A token of the embedded server / worker (no uid), and one signed with the global key.
        let plain = key.issue(&Claims::upload("ns", "disk", NOW, DEFAULT_TTL));
        let with_global = key.issue(
            &Claims::upload("ns", "disk", NOW, DEFAULT_TTL).for_data_volume("uid-1", UploadContent::Kubevirt),
        );
        for token in [
            foreign,
            plain,
            with_global,
            cluster_token(&other_global, "ns", "disk", "uid-1"),
            "v1.garbage.sig".to_owned(),
        ] {
            let refusal = authorize(&key, &headers(Some(&format!("Bearer {token}"))), NOW).unwrap_err();
            assert_eq!(refusal.status, StatusCode::UNAUTHORIZED, "{token}: {}", refusal.message);
        }
        let token = cluster_token(&key, "ns", "disk", "uid-1");
        let expired = authorize(&key, &headers(Some(&format!("Bearer {token}"))), NOW + 301).unwrap_err();
        assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
        assert!(expired.message.contains("expired"), "{}", expired.message);
    }

    #[test]
    fn a_verified_token_for_another_operation_is_400() {
        let mut claims =
            Claims::upload("ns", "disk", NOW, DEFAULT_TTL).for_data_volume("u", UploadContent::Kubevirt);
        claims.operation = "Clone".to_owned();
        let token = global().derive("ns", "disk", "u").issue(&claims);

        let refusal = authorize(&global(), &headers(Some(&format!("Bearer {token}"))), NOW).unwrap_err();

        assert_eq!(refusal.status, StatusCode::BAD_REQUEST);
        assert!(refusal.message.contains("Clone"), "{}", refusal.message);
    }

    #[test]
    fn upstream_templates() {
        let default = Upstream::parse(DEFAULT_UPSTREAM).unwrap();
        assert!(default.is_tls());
        assert_eq!(default.base("ns", "disk"), "https://cdi-upload-disk.ns.svc");
        assert_eq!(Upstream::parse("http://127.0.0.1:9/").unwrap().base("a", "b"), "http://127.0.0.1:9");
        for bad in ["ftp://x", "127.0.0.1:80", "http://", "https://host/path", "https://h?q"] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_upstream_ca_must_match_the_scheme() {
        let config = |upstream: &str, ca: Option<Vec<u8>>| ProxyConfig {
            key: global(),
            upstream: Upstream::parse(upstream).unwrap(),
            upstream_ca: ca,
            upstream_wait: DEFAULT_UPSTREAM_WAIT,
        };
        let err = Proxy::new(config(DEFAULT_UPSTREAM, None)).unwrap_err();
        assert!(err.to_string().contains("--upstream-ca"), "{err}");
        assert!(Proxy::new(config("http://127.0.0.1:1", Some(b"x".to_vec()))).is_err());
        assert!(Proxy::new(config(DEFAULT_UPSTREAM, Some(b"no pem here".to_vec()))).is_err());
        assert!(Proxy::new(config("http://127.0.0.1:1", None)).is_ok());
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        assert!(hop_by_hop(&header::TRANSFER_ENCODING));
        assert!(hop_by_hop(&HeaderName::from_static("keep-alive")));
        assert!(!hop_by_hop(&header::AUTHORIZATION));
        assert!(!hop_by_hop(&header::CONTENT_LENGTH));
    }
}
