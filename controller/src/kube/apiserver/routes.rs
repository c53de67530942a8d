//! The routes: discovery, health, and the one create endpoint.
//!
//! ```text
//! GET  /apis                                       APIGroupList (upload.cdi.kubevirt.io)
//! GET  /apis/upload.cdi.kubevirt.io                APIGroup
//! GET  /apis/upload.cdi.kubevirt.io/v1beta1        APIResourceList: uploadtokenrequests [create]
//! POST /apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests
//! GET  /healthz                                    ok
//! anything else                                    404 Status (/openapi/v2 and /openapi/v3 too)
//! ```
//! Discovery needs no client certificate (as cdi-apiserver: the aggregator's availability
//! check reads `/apis/<group>/<version>`, and the answers are public). The create endpoint
//! runs, in order: front-proxy authentication (401), SubjectAccessReview (403), the body
//! (400 / 422), the DataVolume (404, or 400 when it is no upload volume), then answers 200
//! with the object and `status.token`, as cdi-apiserver does.
//!
//! The aggregator skips a 404 on `/openapi/v2` and `/openapi/v3` (no schema is published for
//! the group; `kubectl explain uploadtokenrequest` then has nothing to say), and it falls back
//! from aggregated discovery to `/apis/<group>/<version>` when `/apis` answers a plain
//! `APIGroupList`.

use std::sync::Arc;

use ::kube::api::{Api, PostParams};
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use serde_json::{Value, json};
use uploader::token::UploadContent;

use super::ApiServer;
use super::frontproxy::{Peer, UserInfo, authenticate};
use super::tls::ConnectionPeer;
use crate::api::datavolume::{CONTENT_TYPE_ARCHIVE, SourceKind};
use crate::api::{DataVolumeSpec, UploadTokenRequest};
use crate::kube::names::ANN_UPLOAD_TARGET;
use crate::kube::resource::{DataVolumeObject, data_volumes};
use crate::server::{ApiError, json_response, parse_token_request, token_response};
use crate::validate::is_dns1123_subdomain;

/// `upload.cdi.kubevirt.io`.
pub const GROUP: &str = "upload.cdi.kubevirt.io";
/// `v1beta1`, the one version served.
pub const VERSION: &str = "v1beta1";
/// The one resource.
pub const RESOURCE: &str = "uploadtokenrequests";

/// The routes over `server`.
pub fn router(server: Arc<ApiServer>) -> Router {
    let create_path = format!("/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{RESOURCE}");
    Router::new()
        .route("/apis", get(|| async { json_response(StatusCode::OK, &group_list()) }))
        .route(&format!("/apis/{GROUP}"), get(|| async { json_response(StatusCode::OK, &api_group()) }))
        .route(
            &format!("/apis/{GROUP}/{VERSION}"),
            get(|| async { json_response(StatusCode::OK, &resource_list()) }),
        )
        .route(&create_path, post(create).fallback(method_not_allowed))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found)
        .with_state(server)
}

fn api_group() -> Value {
    let version = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": GROUP,
        "versions": [version], "preferredVersion": version,
    })
}

fn group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group()]})
}

fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [{
            "name": RESOURCE, "singularName": "uploadtokenrequest", "namespaced": true,
            "group": GROUP, "version": VERSION, "kind": "UploadTokenRequest",
            "verbs": ["create"], "shortNames": ["utr", "utrs"],
        }],
    })
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        "the server could not find the requested resource".into(),
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{RESOURCE}.{GROUP} supports only create (POST)"),
    )
}

/// The SubjectAccessReview asking whether `user` may create UploadTokenRequests in `namespace`.
pub fn access_review(user: &UserInfo, namespace: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            uid: user.uid.clone(),
            groups: (!user.groups.is_empty()).then(|| user.groups.clone()),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_owned()),
                verb: Some("create".into()),
                group: Some(GROUP.into()),
                version: Some(VERSION.into()),
                resource: Some(RESOURCE.into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    eprintln!("diskplane apiserver: {what}: {e}");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("{what}: {e}"))
}

/// Kubernetes' wording of a denied request.
fn forbidden(user: &str, namespace: &str, reason: Option<String>) -> ApiError {
    let why = reason.filter(|r| !r.is_empty()).map(|r| format!(": {r}")).unwrap_or_default();
    ApiError::new(
        StatusCode::FORBIDDEN,
        "Forbidden",
        format!(
            "{RESOURCE}.{GROUP} is forbidden: User \"{user}\" cannot create resource \"{RESOURCE}\" \
             in API group \"{GROUP}\" in the namespace \"{namespace}\"{why}"
        ),
    )
}

/// Whether `name` is a DNS-1123 label (what a namespace name is).
fn is_namespace_name(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && is_dns1123_subdomain(name)
}

async fn create(
    State(server): State<Arc<ApiServer>>,
    connection: Option<Extension<ConnectInfo<ConnectionPeer>>>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !is_namespace_name(&ns) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("namespace {ns:?} is not a valid namespace name"),
        ));
    }
    let peer = connection.map(|Extension(ConnectInfo(c))| c.peer).unwrap_or(Peer::Anonymous);
    let user = authenticate(&server.front_proxy, &peer, &headers)
        .map_err(|why| ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", why))?;
    let review = Api::<SubjectAccessReview>::all(server.client.clone())
        .create(&PostParams::default(), &access_review(&user, &ns))
        .await
        .map_err(|e| internal("creating a SubjectAccessReview", e))?;
    let status = review.status.unwrap_or_default();
    if !status.allowed || status.denied == Some(true) {
        return Err(forbidden(&user.name, &ns, status.reason));
    }
    let request = parse_token_request(&ns, &body)?;
    let token = issue(&server, &ns, &request).await?;
    let mut response = token_response(request, token, StatusCode::OK);
    response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Ok(response)
}

/// The token for the DataVolume `request` names in `ns`.
async fn issue(server: &ApiServer, ns: &str, request: &UploadTokenRequest) -> Result<String, ApiError> {
    let name = request.spec.pvc_name.as_str();
    if !is_dns1123_subdomain(name) {
        let object = request.metadata.name.clone().unwrap_or_default();
        return Err(ApiError::invalid(
            "UploadTokenRequest",
            &object,
            "spec.pvcName",
            &format!("{name:?} is not a valid volume name"),
        ));
    }
    let dvs: Api<DataVolumeObject> = Api::namespaced_with(server.client.clone(), ns, &data_volumes());
    let Some(dv) = dvs.get_opt(name).await.map_err(|e| internal("reading the DataVolume", e))? else {
        return Err(no_data_volume(server, ns, name).await);
    };
    let content = upload_content(&dv.spec).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("DataVolume {ns}/{name} is not an upload target (it has no spec.source.upload)"),
        )
    })?;
    let uid = dv.metadata.uid.as_deref().filter(|u| !u.is_empty() && !u.contains('/'));
    let uid = uid.ok_or_else(|| internal("reading the DataVolume", format!("{ns}/{name} has no uid")))?;
    Ok(server.key.issue_for_data_volume(ns, name, uid, content, (server.now)()))
}

/// The content type uploads into a DataVolume with `spec` carry, or `None` when it is not an
/// upload volume.
pub fn upload_content(spec: &DataVolumeSpec) -> Option<UploadContent> {
    if spec.source.as_ref().and_then(|s| s.kind()) != Some(SourceKind::Upload) {
        return None;
    }
    Some(if spec.content_type() == CONTENT_TYPE_ARCHIVE {
        UploadContent::Archive
    } else {
        UploadContent::Kubevirt
    })
}

/// No DataVolume `ns/name`: 404, or 400 when a bare PVC of that name exists (CDI's legacy
/// "annotated PVC" uploads, which diskplane does not serve: its controller starts upload
/// Pods for DataVolumes only).
async fn no_data_volume(server: &ApiServer, ns: &str, name: &str) -> ApiError {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(server.client.clone(), ns);
    match pvcs.get_opt(name).await {
        Ok(None) => ApiError::not_found("datavolumes", name),
        Ok(Some(pvc)) => {
            let annotated =
                pvc.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(ANN_UPLOAD_TARGET));
            let what = if annotated {
                format!("has the annotation {ANN_UPLOAD_TARGET} but no DataVolume")
            } else {
                "has no DataVolume".to_owned()
            };
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "PersistentVolumeClaim {ns}/{name} {what}: diskplane uploads only into DataVolumes \
                     with spec.source.upload (virtctl image-upload dv {name} ...)"
                ),
            )
        }
        Err(e) => internal("reading the PersistentVolumeClaim", e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_review_asks_for_create_uploadtokenrequests_in_the_namespace_as_the_user() {
        let user = UserInfo {
            name: "alice".into(),
            uid: Some("u-1".into()),
            groups: vec!["devs".into()],
            extra: BTreeMap::from([("scopes".to_owned(), vec!["a".to_owned()])]),
        };

        let review = serde_json::to_value(access_review(&user, "ns")).unwrap();

        assert_eq!(
            review,
            json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {},
                "spec": {
                    "user": "alice", "uid": "u-1", "groups": ["devs"], "extra": {"scopes": ["a"]},
                    "resourceAttributes": {
                        "namespace": "ns", "verb": "create", "group": "upload.cdi.kubevirt.io",
                        "version": "v1beta1", "resource": "uploadtokenrequests",
                    },
                },
            })
        );
        let bare =
            serde_json::to_value(access_review(&UserInfo { name: "bob".into(), ..UserInfo::default() }, "x"))
                .unwrap();
        assert_eq!(bare.pointer("/spec/groups"), None);
        assert_eq!(bare.pointer("/spec/extra"), None);
    }

    #[test]
    fn only_upload_data_volumes_get_tokens_with_their_content_type() {
        let spec = |source: Value, content: Option<&str>| -> DataVolumeSpec {
            let mut spec = json!({"source": source, "storage": {}});
            if let Some(content) = content {
                spec["contentType"] = json!(content);
            }
            serde_json::from_value(spec).unwrap()
        };
        let cases = [
            (json!({"upload": {}}), None, Some(UploadContent::Kubevirt)),
            (json!({"upload": {}}), Some("kubevirt"), Some(UploadContent::Kubevirt)),
            (json!({"upload": {}}), Some("archive"), Some(UploadContent::Archive)),
            (json!({"http": {"url": "http://x/disk.img"}}), None, None),
            (json!({"blank": {}}), None, None),
            (json!({"upload": {}, "blank": {}}), None, None),
        ];
        for (source, content, expected) in cases {
            assert_eq!(upload_content(&spec(source.clone(), content)), expected, "{source} {content:?}");
        }
    }

    #[test]
    fn namespace_names_are_dns_labels() {
        for good in ["default", "a", "ns-1", &"a".repeat(63)] {
            assert!(is_namespace_name(good), "{good}");
        }
        for bad in ["", "a.b", "A", "-a", "a/b", "..", &"a".repeat(64)] {
            assert!(!is_namespace_name(bad), "{bad}");
        }
    }

    #[test]
    fn discovery_lists_the_one_resource_with_create_only() {
        assert_eq!(
            group_list()["groups"][0]["preferredVersion"]["groupVersion"],
            "upload.cdi.kubevirt.io/v1beta1"
        );
        let resources = resource_list();
        assert_eq!(resources["groupVersion"], "upload.cdi.kubevirt.io/v1beta1");
        assert_eq!(resources["resources"][0]["verbs"], json!(["create"]));
        assert_eq!(resources["resources"][0]["kind"], "UploadTokenRequest");
        assert_eq!(resources["resources"][0]["namespaced"], true);
    }
}
