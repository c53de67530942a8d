//! The `kubevirt.io/v1` VirtualMachine routes: create / list / get / delete, `start` and
//! `stop` (as `virtctl` does them, see [`crate::local::vm`]) and the serial console log.
//!
//! A created VM is validated by the launcher's manifest rules (422 naming the field). Objects
//! are immutable apart from what `start` / `stop` change.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{ApiError, json_response};
use crate::local::Driver;
use crate::local::vm::{VIRTUALMACHINES, VM_API_VERSION, request, state_dir, validate};

/// The largest tail of the serial log the console route returns.
const MAX_CONSOLE_BYTES: u64 = 4 << 20;

/// The VirtualMachine routes (state: the driver).
pub(super) fn routes() -> Router<Arc<Driver>> {
    Router::new()
        .route("/apis/kubevirt.io/v1/virtualmachines", get(list_all))
        .route("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines", get(list).post(create))
        .route("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}", get(read).delete(delete))
        .route("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}/start", post(start))
        .route("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}/stop", post(stop))
        .route("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}/console", get(console))
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("virtualmachines.kubevirt.io \"{name}\" not found"),
    )
}

fn list_object(items: Vec<Value>) -> Value {
    json!({"apiVersion": VM_API_VERSION, "kind": "VirtualMachineList", "metadata": {}, "items": items})
}

async fn list_all(State(driver): State<Arc<Driver>>) -> Result<Response, ApiError> {
    let items = driver.store().list(VIRTUALMACHINES, None)?;
    Ok(json_response(StatusCode::OK, &list_object(items)))
}

async fn list(State(driver): State<Arc<Driver>>, Path(ns): Path<String>) -> Result<Response, ApiError> {
    let items = driver.store().list(VIRTUALMACHINES, Some(&ns))?;
    Ok(json_response(StatusCode::OK, &list_object(items)))
}

async fn read(
    State(driver): State<Arc<Driver>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    match driver.store().get(VIRTUALMACHINES, &ns, &name)? {
        Some(object) => Ok(json_response(StatusCode::OK, &object)),
        None => Err(not_found(&name)),
    }
}

async fn delete(
    State(driver): State<Arc<Driver>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if driver.store().get(VIRTUALMACHINES, &ns, &name)?.is_none() {
        return Err(not_found(&name));
    }
    let object = driver.delete(VIRTUALMACHINES, &ns, &name).await?;
    Ok(json_response(StatusCode::OK, &object))
}

async fn create(
    State(driver): State<Arc<Driver>>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", m);
    let mut object: Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not a JSON object: {e}")))?;
    if !object.is_object() {
        return Err(bad("the body is not a JSON object".into()));
    }
    if object["kind"] != "VirtualMachine" {
        return Err(bad(format!(
            "the kind of the object ({}) does not match the path (virtualmachines)",
            object["kind"].as_str().unwrap_or_default()
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
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    if let Err((field, message)) = validate(&object) {
        let field = if field.is_empty() { "spec" } else { field.as_str() };
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("VirtualMachine.kubevirt.io \"{name}\" is invalid: {field}: {message}"),
        ));
    }
    let created = driver.create(VIRTUALMACHINES, &ns, object)?;
    Ok(json_response(StatusCode::CREATED, &created))
}

async fn start(state: State<Arc<Driver>>, path: Path<(String, String)>) -> Result<Response, ApiError> {
    start_stop(state, path, true)
}

async fn stop(state: State<Arc<Driver>>, path: Path<(String, String)>) -> Result<Response, ApiError> {
    start_stop(state, path, false)
}

/// Records a start or stop request on the VM (the reconciler acts on it) and answers with the
/// VM as stored afterwards; 409 when it makes no sense for the VM's state.
fn start_stop(
    State(driver): State<Arc<Driver>>,
    Path((ns, name)): Path<(String, String)>,
    start: bool,
) -> Result<Response, ApiError> {
    let Some(object) = driver.store().get(VIRTUALMACHINES, &ns, &name)? else {
        return Err(not_found(&name));
    };
    let uid = object["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let change = request(&object, start).map_err(|m| {
        ApiError::new(StatusCode::CONFLICT, "Conflict", format!("virtualmachine {ns}/{name}: {m}"))
    })?;
    let updated =
        driver.store().modify(VIRTUALMACHINES, &ns, &name, &uid, change)?.ok_or_else(|| not_found(&name))?;
    driver.wake_loop();
    Ok(json_response(StatusCode::ACCEPTED, &updated))
}

/// The VM's serial console log (its last [`MAX_CONSOLE_BYTES`]) as text.
async fn console(
    State(driver): State<Arc<Driver>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if driver.store().get(VIRTUALMACHINES, &ns, &name)?.is_none() {
        return Err(not_found(&name));
    }
    let log = state_dir(driver.data_dir(), &ns, &name).join("serial.log");
    let read = move || -> std::io::Result<Vec<u8>> {
        let mut file = match std::fs::File::open(&log) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX_CONSOLE_BYTES)))?;
        let mut bytes = Vec::new();
        file.take(MAX_CONSOLE_BYTES).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let bytes = tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))?
        .map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("serial log: {e}"))
        })?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}
