//! Uploads on the API listener: `UploadTokenRequest` and CDI's upload routes.
//!
//! ```text
//! POST /apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests   spec.pvcName → status.token (201)
//! POST|PUT /v1beta1/upload, /upload-async, /upload-form, /upload-form-async (+ /v1alpha1/) see uploader::server
//! ```
//! A token is issued only for an existing DataVolume with an upload source (404 otherwise),
//! for exactly that namespace and name, valid [`DEFAULT_TTL`] (5 minutes).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use serde_json::json;
use uploader::server::{DEFAULT_IDLE_TIMEOUT, ServerConfig};
use uploader::token::{Claims, DEFAULT_TTL, TokenKey, unix_now};

use super::{ApiError, json_response};
use crate::api::{UPLOAD_API_VERSION, UploadTokenRequest, UploadTokenRequestStatus};
use crate::local::Driver;
use crate::local::upload::{DriverUploads, upload_datavolume};

/// The kind served at `uploadtokenrequests`.
const KIND: &str = "UploadTokenRequest";

struct TokenIssuer {
    driver: Arc<Driver>,
    key: TokenKey,
}

/// The token route and the upload routes over `driver`; tokens signed with `key`.
pub fn routes(driver: Arc<Driver>, key: TokenKey) -> Router {
    let uploads = uploader::server::router(ServerConfig {
        key: key.clone(),
        backend: Arc::new(DriverUploads::new(Arc::clone(&driver))),
        ca_pem: None,
        idle_timeout: DEFAULT_IDLE_TIMEOUT,
    });
    Router::new()
        .route(
            "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests",
            post(request_token),
        )
        .with_state(Arc::new(TokenIssuer { driver, key }))
        .merge(uploads)
}

async fn request_token(
    State(issuer): State<Arc<TokenIssuer>>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request = parse_token_request(&ns, &body)?;
    let pvc = request.spec.pvc_name.clone();
    upload_datavolume(&issuer.driver, &ns, &pvc)
        .map_err(|message| ApiError::new(StatusCode::NOT_FOUND, "NotFound", message))?;
    let token = issuer.key.issue(&Claims::upload(&ns, &pvc, unix_now(), DEFAULT_TTL));
    Ok(token_response(request, token, StatusCode::CREATED))
}

/// The `UploadTokenRequest` in `body`, posted to namespace `ns`: kind and apiVersion (when
/// given) must be ours, `metadata.namespace` (when given) must be `ns` (it is set to `ns`),
/// `spec.pvcName` must be set. Shared with the cluster's token endpoint
/// (`kube::apiserver`).
///
/// # Errors
/// 400 for a body that is not an UploadTokenRequest, 422 without `spec.pvcName`.
pub(crate) fn parse_token_request(ns: &str, body: &[u8]) -> Result<UploadTokenRequest, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message);
    let mut request: UploadTokenRequest = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the body is not an UploadTokenRequest: {e}")))?;
    let wrong = |given: &str, want: &str| !given.is_empty() && given != want;
    if wrong(&request.kind, KIND) || wrong(&request.api_version, UPLOAD_API_VERSION) {
        return Err(bad(format!(
            "expected kind {KIND} of {UPLOAD_API_VERSION}, got kind {:?} of {:?}",
            request.kind, request.api_version
        )));
    }
    match request.metadata.namespace.as_deref() {
        Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
            return Err(bad(format!(
                "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
            )));
        }
        _ => request.metadata.namespace = Some(ns.to_owned()),
    }
    if request.spec.pvc_name.is_empty() {
        let name = request.metadata.name.clone().unwrap_or_default();
        return Err(ApiError::invalid(KIND, &name, "spec.pvcName", "Required value"));
    }
    Ok(request)
}

/// `request` with `status.token` set, as the answer with `code`.
pub(crate) fn token_response(mut request: UploadTokenRequest, token: String, code: StatusCode) -> Response {
    request.kind = KIND.into();
    request.api_version = UPLOAD_API_VERSION.into();
    request.status = Some(UploadTokenRequestStatus { token, ..Default::default() });
    let object = serde_json::to_value(&request).unwrap_or_else(|_| json!({}));
    json_response(code, &object)
}
