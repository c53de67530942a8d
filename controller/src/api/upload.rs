//! `UploadTokenRequest` (`upload.cdi.kubevirt.io/v1beta1`): create-only, returns a token that
//! authorizes one upload into the named volume.

use serde::{Deserialize, Serialize};

use super::meta::{Extra, ObjectMeta};

/// `upload.cdi.kubevirt.io/v1beta1`.
pub const UPLOAD_API_VERSION: &str = "upload.cdi.kubevirt.io/v1beta1";

/// An UploadTokenRequest object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadTokenRequest {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: UploadTokenRequestSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<UploadTokenRequestStatus>,
}

/// `UploadTokenRequest.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadTokenRequestSpec {
    /// The upload target (the DataVolume's claim name).
    #[serde(default)]
    pub pvc_name: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `UploadTokenRequest.status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadTokenRequestStatus {
    /// The bearer token; never logged.
    #[serde(default)]
    pub token: String,
    #[serde(flatten)]
    pub extra: Extra,
}
