//! The HTTP API of `diskplane serve`: Kubernetes-style paths for DataVolumes and DataSources,
//! health and readiness probes, and Prometheus metrics.
//!
//! ```text
//! GET    /apis/cdi.kubevirt.io/v1beta1/{resource}                          list, all namespaces
//! GET    /apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/{resource}          list (?watch=true: stream)
//! POST   /apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/{resource}          create (201, 409, 422)
//! GET    /apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/{resource}/{name}   get (404)
//! DELETE /apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/{resource}/{name}   delete (+ the volume)
//! POST   /apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/dataimportcrons/{name}/poll   poll now
//! GET    /healthz  /readyz  /metrics
//! GET    /apis/kubevirt.io/v1/virtualmachines                              list, all namespaces
//! GET    /apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines[/{name}]     list, get
//! POST   /apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines              create (see [`vms`])
//! DELETE /apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}       delete (stops it)
//! POST   /apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}/start|stop
//! GET    /apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}/console   serial log (text)
//! POST   /apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests
//! POST   /v1beta1/upload (-async, -form, -form-async; /v1alpha1/ twins)   see [`upload`]
//! GET    /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots[/{name}]   see [`snapshots`]
//! ```
//! `{resource}` is `datavolumes`, `datasources` or `dataimportcrons`. Bodies are JSON. Errors are Kubernetes
//! `Status` objects (`status::Failure`, `reason`, `code`, `details.causes[]`), mapped in one
//! place ([`status`]). A watch streams one JSON event per line, `{"type", "object"}`: first
//! `ADDED` for every existing object, then changes as they are committed.
//!
//! ## Caveats
//! - No authentication: listen on 127.0.0.1 (the default) or behind something that checks.
//! - Objects are immutable once created (CDI's spec is immutable); there is no PUT/PATCH.

mod snapshots;
mod status;
mod upload;
mod vms;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::api::datavolume::API_VERSION;
use crate::local::catalog::DATAIMPORTCRONS;
use crate::local::store::Event;
use crate::local::{DATASOURCES, DATAVOLUMES, Driver, DriverOptions};
use crate::manifest::{Manifest, to_manifest};
use crate::validate::validate_manifest;
pub use status::ApiError;
pub(crate) use upload::{parse_token_request, token_response};

/// Builds the router over a driver.
pub fn app(driver: Arc<Driver>) -> Router {
    api(driver).route("/healthz", get(|| async { "ok" }))
}

/// [`app`] plus `UploadTokenRequest` and the upload routes (see [`upload`]), tokens signed
/// with `upload_key`. `/healthz` is the upload router's.
pub fn app_with_uploads(driver: Arc<Driver>, upload_key: uploader::token::TokenKey) -> Router {
    api(Arc::clone(&driver)).merge(upload::routes(driver, upload_key))
}

/// The API routes without `/healthz`.
fn api(driver: Arc<Driver>) -> Router {
    Router::new()
        .route("/readyz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/apis/cdi.kubevirt.io/v1beta1/{resource}", get(list_all))
        .route("/apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/{resource}", get(list).post(create))
        .route("/apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/{resource}/{name}", get(read).delete(delete))
        .route("/apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/dataimportcrons/{name}/poll", post(poll))
        .merge(vms::routes())
        .merge(snapshots::routes())
        .with_state(driver)
}

/// Opens the data dir, binds `listen`, runs the reconcile loop and serves the API and the
/// upload routes (tokens signed with `upload_key`) until SIGINT or SIGTERM. `on_listening` is
/// called with the bound address (port 0 picks one).
///
/// # Errors
/// The data dir cannot be used, or `listen` cannot be bound.
pub async fn serve(
    opts: DriverOptions,
    listen: SocketAddr,
    upload_key: uploader::token::TokenKey,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let driver = Driver::open(opts)?;
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("binding {listen}: {e}"))?;
    on_listening(listener.local_addr()?);
    let reconciler = tokio::spawn(Arc::clone(&driver).run());
    let driver_for_vms = Arc::clone(&driver);
    let server = axum::serve(listener, app_with_uploads(driver, upload_key));
    let result = tokio::select! {
        r = server => r.map_err(Into::into),
        () = shutdown_signal() => Ok(()),
    };
    reconciler.abort();
    // Stop the VMs gracefully (they start again with the next serve, per their run strategy).
    let _ = tokio::task::spawn_blocking(move || driver_for_vms.vms().stop_all()).await;
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `DataVolume` for `datavolumes`, … ; `None` for paths we do not serve.
fn kind_of(resource: &str) -> Option<&'static str> {
    match resource {
        DATAVOLUMES => Some("DataVolume"),
        DATASOURCES => Some("DataSource"),
        DATAIMPORTCRONS => Some("DataImportCron"),
        _ => None,
    }
}

fn served(resource: &str) -> Result<&'static str, ApiError> {
    kind_of(resource).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource {resource}"),
        )
    })
}

pub(crate) fn json_response(code: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn list_object(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": API_VERSION, "kind": format!("{kind}List"), "metadata": {}, "items": items})
}

async fn metrics(State(driver): State<Arc<Driver>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], driver.metrics()).into_response()
}

async fn list_all(
    State(driver): State<Arc<Driver>>,
    Path(resource): Path<String>,
) -> Result<Response, ApiError> {
    let kind = served(&resource)?;
    let items = driver.store().list(&resource, None)?;
    Ok(json_response(StatusCode::OK, &list_object(kind, items)))
}

async fn list(
    State(driver): State<Arc<Driver>>,
    Path((ns, resource)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let kind = served(&resource)?;
    if is_watch(query.as_deref()) {
        return watch_stream(&driver, resource, ns);
    }
    let items = driver.store().list(&resource, Some(&ns))?;
    Ok(json_response(StatusCode::OK, &list_object(kind, items)))
}

/// One line per event: the current objects as `ADDED`, then changes. A watcher too slow to
/// keep up with [`crate::local::store`]'s buffer is disconnected (it re-lists, as with an
/// expired Kubernetes watch).
fn watch_stream(driver: &Driver, resource: String, ns: String) -> Result<Response, ApiError> {
    let events = driver.store().subscribe();
    let initial: Vec<Value> = driver.store().list(&resource, Some(&ns))?;
    let line = |type_: &str, object: &Value| -> Result<Bytes, std::io::Error> {
        let mut text =
            serde_json::to_vec(&json!({"type": type_, "object": object})).map_err(std::io::Error::other)?;
        text.push(b'\n');
        Ok(Bytes::from(text))
    };
    let first: Vec<Result<Bytes, std::io::Error>> = initial.iter().map(|o| line("ADDED", o)).collect();
    let changes = futures_util::stream::unfold(events, move |mut events| {
        let (resource, ns) = (resource.clone(), ns.clone());
        async move {
            loop {
                match events.recv().await {
                    Ok(Event { type_, resource: r, namespace, object })
                        if r == resource && namespace == ns =>
                    {
                        let mut text = serde_json::to_vec(&json!({"type": type_, "object": object})).ok()?;
                        text.push(b'\n');
                        return Some((Ok::<Bytes, std::io::Error>(Bytes::from(text)), events));
                    }
                    Ok(_) => {}
                    Err(_) => return None, // lagged or closed: end the watch
                }
            }
        }
    });
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter(first), changes);
    Ok(([(header::CONTENT_TYPE, "application/json")], Body::from_stream(stream)).into_response())
}

async fn read(
    State(driver): State<Arc<Driver>>,
    Path((ns, resource, name)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    served(&resource)?;
    match driver.store().get(&resource, &ns, &name)? {
        Some(object) => Ok(json_response(StatusCode::OK, &object)),
        None => Err(ApiError::not_found(&resource, &name)),
    }
}

async fn delete(
    State(driver): State<Arc<Driver>>,
    Path((ns, resource, name)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    served(&resource)?;
    if resource == DATAVOLUMES
        && let Some(vm) = driver.vms().user_of(&ns, &name)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("datavolume {ns}/{name} is in use by VirtualMachine {vm}: stop the VM first"),
        ));
    }
    let object = driver.delete(&resource, &ns, &name).await?;
    Ok(json_response(StatusCode::OK, &object))
}

async fn create(
    State(driver): State<Arc<Driver>>,
    Path((ns, resource)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = served(&resource)?;
    let mut object = object_for_create(&body, &ns, kind, &resource)?;
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    if name.is_empty() {
        match object["metadata"]["generateName"].as_str().filter(|g| !g.is_empty()) {
            Some(prefix) => object["metadata"]["name"] = json!(format!("{prefix}{}", random_suffix())),
            None => {
                return Err(ApiError::invalid(
                    kind,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
        }
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let manifest = to_manifest(1, object.clone())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()))?;
    if !matches!(
        (&manifest, kind),
        (Manifest::DataVolume(_), "DataVolume")
            | (Manifest::DataSource(_), "DataSource")
            | (Manifest::DataImportCron(_), "DataImportCron")
    ) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("apiVersion {} is not served here (use {API_VERSION})", object["apiVersion"]),
        ));
    }
    if let Err(e) = validate_manifest(&manifest) {
        return Err(ApiError::invalid(kind, &name, &e.field, &e.message));
    }
    if let Manifest::DataImportCron(cron) = &manifest
        && let Err((field, message)) = served_cron(cron)
    {
        return Err(ApiError::invalid(kind, &name, field, &message));
    }
    let created = driver.create(&resource, &ns, object)?;
    Ok(json_response(StatusCode::CREATED, &created))
}

/// The body of a create, checked as every kind's create checks it: a JSON object of `kind`
/// (the path's), in a valid namespace that the body either omits (it is filled in) or repeats.
fn object_for_create(body: &[u8], ns: &str, kind: &str, resource: &str) -> Result<Value, ApiError> {
    valid_namespace(ns)?;
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message);
    let mut object: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not a JSON object: {e}")))?;
    if !object.is_object() {
        return Err(bad("the body is not a JSON object".into()));
    }
    let body_kind = object["kind"].as_str().unwrap_or_default();
    if body_kind != kind {
        return Err(bad(format!(
            "the kind of the object ({body_kind}) does not match the path ({resource})"
        )));
    }
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    match object["metadata"]["namespace"].as_str() {
        Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
            return Err(bad(format!(
                "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
            )));
        }
        _ => object["metadata"]["namespace"] = json!(ns),
    }
    Ok(object)
}

/// Whether a list request asks for a watch (`?watch=true` or `?watch=1`).
fn is_watch(query: Option<&str>) -> bool {
    query.unwrap_or("").split('&').any(|kv| kv == "watch=true" || kv == "watch=1")
}

/// A namespace must be a DNS-1123 label (as in Kubernetes): it names a pool directory, and
/// the pool's own directories (`.snapshots`) can never be one.
fn valid_namespace(ns: &str) -> Result<(), ApiError> {
    if ns.len() <= 63 && !ns.contains('.') && crate::validate::is_dns1123_subdomain(ns) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        format!("namespace {ns:?} is not a valid namespace name (a DNS-1123 label)"),
    ))
}

/// What the embedded driver needs of a DataImportCron beyond CDI's validation: a schedule
/// that parses, a registry source with a URL. `(field, message)` otherwise.
fn served_cron(cron: &crate::api::DataImportCron) -> Result<(), (&'static str, String)> {
    if !cron.spec.schedule.trim().is_empty()
        && let Err(e) = crate::cron::Schedule::parse(&cron.spec.schedule)
    {
        return Err(("spec.schedule", e.to_string()));
    }
    let source = cron.spec.template.spec.source.as_ref();
    if source.and_then(|s| s.registry.as_ref()).and_then(|r| r.url.as_ref()).is_none() {
        return Err((
            "spec.template.spec.source",
            "the embedded driver polls only registry sources with a url".into(),
        ));
    }
    Ok(())
}

/// Polls a DataImportCron now (whatever its schedule) and answers with the cron as stored
/// afterwards: the new digest in its annotations, or a `Polled=False` condition.
async fn poll(
    State(driver): State<Arc<Driver>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let cron = driver.poll_cron(&ns, &name).await?;
    Ok(json_response(StatusCode::OK, &cron))
}

/// Five lowercase alphanumerics, like Kubernetes' generateName suffix (from the kernel's
/// random source; the clock when that is unavailable).
fn random_suffix() -> String {
    use std::io::Read;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = [0u8; 5];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (nanos >> (i * 8)) as u8;
        }
    }
    bytes.iter().map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])).collect()
}
