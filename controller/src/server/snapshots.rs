//! The `snapshot.storage.k8s.io/v1` VolumeSnapshot routes: create / list / watch / get /
//! delete, as for DataVolumes (see [`crate::local::snapshot`] for what the driver does).
//!
//! ```text
//! GET    /apis/snapshot.storage.k8s.io/v1/volumesnapshots                          all namespaces
//! GET    /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots          (?watch=true)
//! POST   /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots          create (201, 409, 422)
//! GET    /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots/{name}   get (404)
//! DELETE /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots/{name}   delete (+ the copy)
//! ```

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use super::{ApiError, is_watch, json_response, object_for_create, random_suffix, watch_stream};
use crate::api::volumesnapshot::{
    KIND, SNAPSHOT_API_VERSION, SNAPSHOT_GROUP, VOLUMESNAPSHOTS, VolumeSnapshot, validate,
};
use crate::local::{Driver, Error};

/// The VolumeSnapshot routes (state: the driver).
pub(super) fn routes() -> Router<Arc<Driver>> {
    Router::new()
        .route("/apis/snapshot.storage.k8s.io/v1/volumesnapshots", get(list_all))
        .route("/apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots", get(list).post(create))
        .route(
            "/apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots/{name}",
            get(read).delete(delete),
        )
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{VOLUMESNAPSHOTS}.{SNAPSHOT_GROUP} \"{name}\" not found"),
    )
}

fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn invalid(name: &str, field: &str, message: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!("{KIND}.{SNAPSHOT_GROUP} \"{name}\" is invalid: {field}: {message}"),
    )
}

fn list_object(items: Vec<Value>) -> Value {
    json!({"apiVersion": SNAPSHOT_API_VERSION, "kind": "VolumeSnapshotList", "metadata": {}, "items": items})
}

async fn list_all(State(driver): State<Arc<Driver>>) -> Result<Response, ApiError> {
    let items = driver.store().list(VOLUMESNAPSHOTS, None)?;
    Ok(json_response(StatusCode::OK, &list_object(items)))
}

async fn list(
    State(driver): State<Arc<Driver>>,
    Path(ns): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    if is_watch(query.as_deref()) {
        return watch_stream(&driver, VOLUMESNAPSHOTS.to_owned(), ns);
    }
    let items = driver.store().list(VOLUMESNAPSHOTS, Some(&ns))?;
    Ok(json_response(StatusCode::OK, &list_object(items)))
}

async fn read(
    State(driver): State<Arc<Driver>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    match driver.store().get(VOLUMESNAPSHOTS, &ns, &name)? {
        Some(object) => Ok(json_response(StatusCode::OK, &object)),
        None => Err(not_found(&name)),
    }
}

async fn delete(
    State(driver): State<Arc<Driver>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    match driver.delete(VOLUMESNAPSHOTS, &ns, &name).await {
        Ok(object) => Ok(json_response(StatusCode::OK, &object)),
        Err(Error::NotFound { .. }) => Err(not_found(&name)),
        Err(e) => Err(e.into()),
    }
}

async fn create(
    State(driver): State<Arc<Driver>>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut object = object_for_create(&body, &ns, KIND, VOLUMESNAPSHOTS)?;
    let vs: VolumeSnapshot = serde_json::from_value(object.clone())
        .map_err(|e| bad(format!("the object is not a VolumeSnapshot: {e}")))?;
    let name = vs.metadata.name().to_owned();
    if let Err(e) = validate(&vs) {
        return Err(invalid(&name, e.field, &e.message));
    }
    if name.is_empty() {
        let prefix = vs.metadata.generate_name.as_deref().unwrap_or_default();
        object["metadata"]["name"] = json!(format!("{prefix}{}", random_suffix()));
    }
    match driver.create(VOLUMESNAPSHOTS, &ns, object) {
        Ok(created) => Ok(json_response(StatusCode::CREATED, &created)),
        Err(Error::AlreadyExists { name, .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{VOLUMESNAPSHOTS}.{SNAPSHOT_GROUP} \"{name}\" already exists"),
        )),
        Err(e) => Err(e.into()),
    }
}
