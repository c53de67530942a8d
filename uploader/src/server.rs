//! The upload server: CDI's upload routes over an [`UploadBackend`].
//!
//! | path (also under `/v1alpha1/`) | body | answer |
//! | --- | --- | --- |
//! | `POST`/`PUT /v1beta1/upload` | raw bytes | 200 once the volume is written, flushed and verified |
//! | `POST`/`PUT /v1beta1/upload-async` | raw bytes | 200 once the body arrived (and its checksum matched); processing goes on. `HEAD` → 200 (virtctl's probe) |
//! | `POST`/`PUT /v1beta1/upload-form` | multipart, part `file` | as `/upload` |
//! | `POST`/`PUT /v1beta1/upload-form-async` | multipart, part `file` | as `/upload-async` |
//! | `POST`/`PUT /v1beta1/upload-archive` | tar, optionally gzip/xz/zstd | as `/upload`, for archive volumes ([`Content::Archive`]): extracted into the volume's directory; 400 for a disk volume |
//! | `GET /v1beta1/ca.crt` | – | the PEM CA bundle clients should trust (404 without TLS) |
//! | `GET /healthz` | – | `OK` |
//!
//! An archive volume extracts what any upload route sends (CDI's upload proxy routes every
//! upload to such a volume to `/upload-archive`). Every upload needs
//! `Authorization: Bearer <token>`. Optional end-to-end checksum (our
//! extension): header `X-Checksum: sha256:HEX` or query `?checksum=sha256:HEX` (sha512, sha1
//! and md5 too, as in CDI's `checksum` field) over the body as sent; on mismatch nothing is
//! kept and the answer is 400. Other methods get 404, as in CDI.
//! Errors are plain text on one line, with CDI's status codes (see [`Error::status`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use importer::Checksum;
use tokio::sync::oneshot;

use crate::backend::{Content, UploadBackend};
use crate::error::{Error, ErrorReply};
use crate::job::{self, JobOptions, Lease, Mode};
use crate::pipe;
use crate::token::{TokenKey, bearer, unix_now};

/// A body that sends nothing for this long is treated as dropped (CDI has no such limit; a
/// stalled client would otherwise hold the volume busy for ever).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest pause while reading the body of a refused request.
const DRAIN_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the router needs.
#[derive(Clone)]
pub struct ServerConfig {
    /// Verifies upload tokens.
    pub key: TokenKey,
    /// Where uploads go.
    pub backend: Arc<dyn UploadBackend>,
    /// PEM served at `GET /v1beta1/ca.crt` (the CA clients should trust), if any.
    pub ca_pem: Option<Arc<[u8]>>,
    /// See [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig").field("ca_pem", &self.ca_pem.is_some()).finish_non_exhaustive()
    }
}

/// Which upload route.
#[derive(Debug, Clone, Copy)]
struct RouteKind {
    mode: Mode,
    form: bool,
    /// `/upload-archive`: only for archive volumes.
    archive: bool,
}

/// The upload routes (mount them into a larger router with `Router::merge`).
pub fn router(config: ServerConfig) -> Router {
    let state = Arc::new(config);
    let mut app = Router::new();
    for version in ["v1beta1", "v1alpha1"] {
        let route = |mode, form, archive| RouteKind { mode, form, archive };
        let routes = [
            ("upload", route(Mode::Sync, false, false)),
            ("upload-async", route(Mode::Async, false, false)),
            ("upload-form", route(Mode::Sync, true, false)),
            ("upload-form-async", route(Mode::Async, true, false)),
            ("upload-archive", route(Mode::Sync, false, true)),
        ];
        for (name, kind) in routes {
            app = app.route(
                &format!("/{version}/{name}"),
                any(move |state: State<Arc<ServerConfig>>, request: Request| upload(state, kind, request)),
            );
        }
    }
    app.route("/v1beta1/ca.crt", get(ca_certificate))
        .route("/healthz", get(|| async { "OK" }))
        // Uploads are disk images: no body limit (the volume's size is the limit).
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn ca_certificate(State(state): State<Arc<ServerConfig>>) -> Response {
    match &state.ca_pem {
        Some(pem) => {
            ([(header::CONTENT_TYPE, "application/x-pem-file")], Body::from(pem.to_vec())).into_response()
        }
        None => (StatusCode::NOT_FOUND, "this server has no TLS CA to offer\n").into_response(),
    }
}

async fn upload(State(state): State<Arc<ServerConfig>>, kind: RouteKind, request: Request) -> Response {
    let method = request.method().clone();
    if method == Method::HEAD && kind.mode == Mode::Async && !kind.form {
        return StatusCode::OK.into_response();
    }
    if method != Method::POST && method != Method::PUT {
        return StatusCode::NOT_FOUND.into_response();
    }
    let (lease, opts) = match admit(&state, kind, &request) {
        Ok(admitted) => admitted,
        Err(e) => return refuse(e, request).await,
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    if kind.form {
        let mut form = match Multipart::from_request(request, &()).await {
            Ok(form) => form,
            Err(e) => {
                let e = Error::BadRequest(format!("not a multipart/form-data body: {}", e.body_text()));
                lease.finish(&Err(Error::BadRequest(e.to_string())));
                return e.into_response();
            }
        };
        tokio::spawn(async move {
            // Parts other than `file` are skipped, as in CDI.
            let failure = loop {
                match form.next_field().await {
                    Ok(Some(field)) if field.name() == Some("file") => {
                        let _ = job::run(field, lease, opts, reply_tx).await;
                        return;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break Error::BadRequest("the form has no part named \"file\"".into()),
                    Err(e) => break Error::Truncated { received: 0, reason: e.body_text() },
                }
            };
            let reply = ErrorReply::from(&failure);
            lease.finish(&Err(failure));
            let _ = reply_tx.send(Err(reply));
        });
    } else {
        let body = request.into_body().into_data_stream();
        tokio::spawn(job::run(body, lease, opts, reply_tx));
    }
    match reply_rx.await {
        Ok(Ok(_)) => StatusCode::OK.into_response(),
        Ok(Err(reply)) => reply.into_response(),
        Err(_) => Error::Internal("the upload task ended without an answer".into()).into_response(),
    }
}

/// Token, checksum syntax, and the backend's consent: everything decided from the headers.
fn admit(
    state: &Arc<ServerConfig>,
    kind: RouteKind,
    request: &Request,
) -> Result<(Lease, JobOptions), Error> {
    let auth = request.headers().get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    let claims = state.key.decode(bearer(auth)?, unix_now())?;
    let checksum = checksum_of(request)?;
    let content = state.backend.content(&claims)?;
    if kind.archive && content != Content::Archive {
        return Err(Error::BadRequest(format!(
            "{}/{} takes a disk image (contentType: kubevirt), not an archive: upload it to /v1beta1/upload",
            claims.namespace, claims.name
        )));
    }
    let target = state.backend.begin(&claims)?;
    let lease = Lease::new(Arc::clone(&state.backend), claims);
    let content_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let opts = JobOptions {
        target,
        checksum,
        mode: kind.mode,
        idle_timeout: state.idle_timeout,
        content_length,
        content,
    };
    Ok((lease, opts))
}

/// Answers a refused request. A client that sends its body without waiting for
/// `100 Continue` is already sending: read (a bounded amount of) the body first, so it reads
/// our answer instead of a reset connection.
async fn refuse(e: Error, request: Request) -> Response {
    let waits = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !waits {
        let mut body = request.into_body().into_data_stream();
        pipe::drain(&mut body, pipe::DRAIN_LIMIT_BYTES, DRAIN_IDLE_TIMEOUT).await;
    }
    e.into_response()
}

/// The end-to-end checksum from `X-Checksum` or `?checksum=`.
fn checksum_of(request: &Request) -> Result<Option<Checksum>, Error> {
    if let Some(value) = request.headers().get("x-checksum") {
        let text = value.to_str().map_err(|_| Error::BadRequest("X-Checksum is not ASCII".into()))?;
        return parse_checksum(text.trim()).map(Some);
    }
    let query = request.uri().query().unwrap_or("");
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("checksum=") {
            // `:` may arrive percent-encoded.
            return parse_checksum(&value.replace("%3A", ":").replace("%3a", ":")).map(Some);
        }
    }
    Ok(None)
}

fn parse_checksum(text: &str) -> Result<Checksum, Error> {
    text.parse().map_err(|e: importer::Error| Error::BadRequest(e.to_string()))
}

/// Serves `app` on `addr` (TLS when `tls` is given) until `shutdown` resolves. `on_ready` gets
/// the bound address (useful with port 0) once the listener accepts connections.
///
/// # Errors
/// [`Error::Config`] when the address cannot be bound; I/O errors of the server.
pub async fn serve(
    addr: std::net::SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    on_ready: impl FnOnce(std::net::SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("listening on {addr}: {e}")))?;
    let local = tcp.local_addr().map_err(|e| Error::Config(format!("listening on {addr}: {e}")))?;
    let served = match tls {
        Some(config) => {
            let listener = crate::tls::TlsListener::new(tcp, config)
                .map_err(|e| Error::Config(format!("listening on {addr}: {e}")))?;
            on_ready(local);
            axum::serve(listener, app).with_graceful_shutdown(shutdown).await
        }
        None => {
            on_ready(local);
            axum::serve(tcp, app).with_graceful_shutdown(shutdown).await
        }
    };
    served.map_err(|e| Error::Internal(format!("serving uploads on {local}: {e}")))
}

/// [`serve`] on its own runtime (two worker threads; conversions use blocking threads), for
/// synchronous callers such as the CLI.
///
/// # Errors
/// As [`serve`].
pub fn serve_blocking(
    addr: std::net::SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    config: ServerConfig,
    on_ready: impl FnOnce(std::net::SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("upload-server")
        .enable_all()
        .build()
        .map_err(|e| Error::Config(format!("starting the I/O runtime: {e}")))?;
    runtime.block_on(serve(addr, tls, router(config), on_ready, shutdown))
}
