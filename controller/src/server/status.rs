//! The one place where failures become HTTP answers: Kubernetes `Status` objects.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::local::Error;

/// An API failure, answered as a `Status` object.
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    /// A failure with this HTTP code, Kubernetes reason and message.
    pub fn new(code: StatusCode, reason: &'static str, message: String) -> Self {
        ApiError { code, reason, message, details: None }
    }

    /// 404 for `resource/name`.
    pub fn not_found(resource: &str, name: &str) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{resource}.cdi.kubevirt.io \"{name}\" not found"),
        );
        e.details = Some(json!({"name": name, "group": "cdi.kubevirt.io", "kind": resource}));
        e
    }

    /// 422: the object breaks a validation rule (`field: message`, as CDI words it).
    pub fn invalid(kind: &str, name: &str, field: &str, message: &str) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{kind}.cdi.kubevirt.io \"{name}\" is invalid: {field}: {message}"),
        );
        e.details = Some(json!({
            "name": name, "group": "cdi.kubevirt.io", "kind": kind,
            "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field}],
        }));
        e
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match &e {
            Error::NotFound { resource, name } => ApiError::not_found(resource, name),
            Error::AlreadyExists { resource, name } => {
                let mut api = ApiError::new(StatusCode::CONFLICT, "AlreadyExists", e.to_string());
                api.details = Some(json!({"name": name, "group": "cdi.kubevirt.io", "kind": resource}));
                api
            }
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                crate::local::worker::one_line(&e),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code.as_u16(),
        });
        if let Some(details) = self.details {
            status["details"] = details;
        }
        let body = serde_json::to_vec(&status).unwrap_or_default();
        (self.code, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}
