//! `diskplane apiserver` for real over TLS on 127.0.0.1: a test PKI plays kube-apiserver's
//! front proxy (its requestheader CA and a `front-proxy-client` certificate), the Kubernetes API
//! behind it (the front proxy's ConfigMap, SubjectAccessReviews, DataVolumes, PVCs) is the
//! tower-test mock of `common`, which asserts every request the server makes, in order.

mod common;
#[allow(dead_code)]
#[path = "../../tests/peers/tls.rs"]
mod tls;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{BodyCheck, Expect, Seen, expect, serve};
use controller::kube::apiserver::{ApiServer, load_front_proxy, serve as serve_apiserver, tls as server_tls};
use http::Method;
use kube::Client;
use serde_json::{Value, json};
use uploader::proxy::{DEFAULT_UPSTREAM_WAIT, Proxy, ProxyConfig, Upstream};
use uploader::token::{TokenKey, UploadContent, peek, unix_now};

const NOW: u64 = 1_800_000_000;
const CONFIG_MAP: &str = "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication";
const REVIEWS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
const DISK: &str = "/apis/cdi.kubevirt.io/v1beta1/namespaces/ns/datavolumes/disk";
const DISK_PVC: &str = "/api/v1/namespaces/ns/persistentvolumeclaims/disk";
const CREATE: &str = "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/ns/uploadtokenrequests";

/// Certificates made once for all tests.
struct Pki {
    /// The serving CA (what the APIService's caBundle holds) and the server's leaf.
    server: tls::TestPki,
    /// The requestheader CA (kube-apiserver's front-proxy CA).
    front_proxy_ca: PathBuf,
    /// `CN=front-proxy-client` of the requestheader CA.
    front_proxy: (PathBuf, PathBuf),
    /// `CN=intruder` of the requestheader CA: right CA, name not allowed.
    intruder: (PathBuf, PathBuf),
    /// `CN=front-proxy-client` of another CA.
    impostor: (PathBuf, PathBuf),
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let root =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kube_apiserver-{}", std::process::id()));
        let dir = |name: &str| {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).expect("PKI directory");
            dir
        };
        let (server_dir, proxy_dir, other_dir) = (dir("server"), dir("front-proxy"), dir("other"));
        let server = tls::make_pki(&server_dir);
        let proxy = tls::make_pki(&proxy_dir);
        let other = tls::make_pki(&other_dir);
        Pki {
            front_proxy: tls::make_client_cert(&proxy, &proxy_dir, "front-proxy-client"),
            intruder: tls::make_client_cert(&proxy, &proxy_dir, "intruder"),
            impostor: tls::make_client_cert(&other, &other_dir, "front-proxy-client"),
            front_proxy_ca: proxy.ca,
            server,
        }
    })
}

fn global_key() -> TokenKey {
    TokenKey::from_bytes(b"0123456789abcdef0123456789abcdef".to_vec()).expect("key")
}

/// The ConfigMap kubeadm's kube-apiserver publishes.
fn auth_config_map() -> Value {
    let ca = std::fs::read_to_string(&pki().front_proxy_ca).expect("front-proxy CA");
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
        "data": {
            "requestheader-client-ca-file": ca,
            "requestheader-allowed-names": "[\"front-proxy-client\"]",
            "requestheader-username-headers": "[\"X-Remote-User\"]",
            "requestheader-group-headers": "[\"X-Remote-Group\"]",
            "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
        },
    })
}

/// A running server and its mock API.
struct Harness {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    mock: tokio::task::JoinHandle<Seen>,
}

impl Harness {
    /// Starts the server; the mock first answers the ConfigMap read, then `expected`.
    async fn start(expected: Vec<Expect>) -> Harness {
        Self::start_with_clock(expected, || NOW).await
    }

    /// [`Harness::start`] with the server's clock `now`.
    async fn start_with_clock(expected: Vec<Expect>, now: fn() -> u64) -> Harness {
        importer::tls::install_crypto_provider();
        let pki = pki();
        let (service, handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let mut all =
            vec![expect(Method::GET, CONFIG_MAP, BodyCheck::Fields(vec![])).reply(200, auth_config_map())];
        all.extend(expected);
        let mock = tokio::spawn(serve(handle, all));
        let client = Client::new(service, "default");
        let front_proxy = load_front_proxy(&client).await.expect("front-proxy settings");
        let config = server_tls::server_config(&pki.server.cert, &pki.server.key, &front_proxy.client_ca_pem)
            .expect("TLS config");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://{}", tcp.local_addr().expect("address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = ApiServer { client, key: global_key(), front_proxy, now };
        let server = tokio::spawn(async move {
            serve_apiserver(tcp, config, state, async {
                let _ = stopped.await;
            })
            .await
            .expect("serving");
        });
        Harness { url, stop, server, mock }
    }

    /// Stops the server; what the mock API saw (it asserted the expected requests in order).
    async fn finish(self) -> Seen {
        let _ = self.stop.send(());
        self.server.await.expect("server task");
        let seen = self.mock.await.expect("mock API (a request did not match)");
        assert_eq!(seen.unexpected, Vec::<String>::new(), "requests nobody expected");
        assert_eq!(seen.missing, Vec::<String>::new(), "expected requests that never came");
        seen
    }
}

/// An HTTPS client trusting the serving CA, with `identity` (certificate, key) if given.
fn client(identity: Option<&(PathBuf, PathBuf)>) -> reqwest::Client {
    let ca = std::fs::read(&pki().server.ca).expect("server CA");
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("CA"));
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).expect("client certificate");
        pem.extend(std::fs::read(key).expect("client key"));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    builder.build().expect("client")
}

fn token_request(pvc: &str) -> Value {
    json!({
        "apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
        "metadata": {"name": "token-for-virtctl", "namespace": "ns"},
        "spec": {"pvcName": pvc},
    })
}

/// POSTs `body` to the create endpoint as the front proxy forwarding user alice.
async fn create_as_alice(url: &str, identity: Option<&(PathBuf, PathBuf)>, body: &[u8]) -> (u16, Value) {
    let response = client(identity)
        .post(format!("{url}{CREATE}"))
        .header("Content-Type", "application/json")
        .header("X-Remote-User", "alice")
        .header("X-Remote-Group", "devs")
        .header("X-Remote-Group", "system:authenticated")
        .header("X-Remote-Extra-Scopes", "upload")
        .body(body.to_vec())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    if status == 200 {
        // As cdi-apiserver: the token must not be sniffed into something a browser runs.
        assert_eq!(
            response.headers().get("x-content-type-options").map(|v| v.as_bytes()),
            Some(&b"nosniff"[..])
        );
    }
    (status, response.json().await.expect("JSON answer"))
}

/// Starts a server whose mock API answers `expected`, asks it for a token for DataVolume
/// ns/disk as the front proxy forwarding alice, stops it.
async fn ask_for_disk(expected: Vec<Expect>) -> (u16, Value) {
    let harness = Harness::start(expected).await;
    let body = token_request("disk").to_string();
    let answer = create_as_alice(&harness.url, Some(&pki().front_proxy), body.as_bytes()).await;
    harness.finish().await;
    answer
}

/// The SubjectAccessReview alice's request must cause, answered with `allowed`.
fn review(allowed: bool) -> Expect {
    let spec = json!({
        "user": "alice", "groups": ["devs", "system:authenticated"], "extra": {"scopes": ["upload"]},
        "resourceAttributes": {
            "namespace": "ns", "verb": "create", "group": "upload.cdi.kubevirt.io",
            "version": "v1beta1", "resource": "uploadtokenrequests",
        },
    });
    let sent = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {}, "spec": spec});
    let mut status = json!({"allowed": allowed});
    if !allowed {
        status["reason"] = json!("no RBAC policy matched");
    }
    let answer = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec, "status": status});
    expect(Method::POST, REVIEWS, BodyCheck::Exact(sent)).reply(201, answer)
}

fn data_volume(source: Value, content_type: Option<&str>) -> Value {
    let mut spec = json!({"source": source, "storage": {"resources": {"requests": {"storage": "1Gi"}}}});
    if let Some(content) = content_type {
        spec["contentType"] = json!(content);
    }
    json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": "disk", "namespace": "ns", "uid": "uid-1"},
        "spec": spec,
    })
}

fn get(path: &'static str) -> Expect {
    expect(Method::GET, path, BodyCheck::Fields(vec![]))
}

fn not_found(kind: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": format!("{kind} \"disk\" not found")})
}

// ---- the token --------------------------------------------------------------------------

#[tokio::test]
async fn an_allowed_user_gets_a_token_for_exactly_that_data_volume() {
    let (status, object) =
        ask_for_disk(vec![review(true), get(DISK).reply(200, data_volume(json!({"upload": {}}), None))])
            .await;

    assert_eq!(status, 200, "{object}");
    assert_eq!(object["kind"], "UploadTokenRequest");
    assert_eq!(object["apiVersion"], "upload.cdi.kubevirt.io/v1beta1");
    assert_eq!(object["metadata"]["name"], "token-for-virtctl");
    assert_eq!(object["spec"]["pvcName"], "disk");
    let token = object["status"]["token"].as_str().expect("status.token");
    let global = global_key();
    let claims = global.derive("ns", "disk", "uid-1").verify(token, "ns", "disk", NOW).expect("verifies");
    assert_eq!((claims.uid.as_str(), claims.content), ("uid-1", UploadContent::Kubevirt));
    assert_eq!(claims.exp, NOW + 300, "5 minutes, as the embedded mode and CDI");
    // Exactly that volume: another uid (a re-created DataVolume), another name, the global key.
    assert!(global.derive("ns", "disk", "uid-2").decode(token, NOW).is_err());
    assert!(global.derive("ns", "other", "uid-1").decode(token, NOW).is_err());
    assert!(global.decode(token, NOW).is_err());
}

#[tokio::test]
async fn an_archive_data_volume_gets_an_archive_token() {
    let (status, object) = ask_for_disk(vec![
        review(true),
        get(DISK).reply(200, data_volume(json!({"upload": {}}), Some("archive"))),
    ])
    .await;

    assert_eq!(status, 200, "{object}");
    let claims = peek(object["status"]["token"].as_str().expect("token")).expect("claims");
    assert_eq!(claims.content, UploadContent::Archive);
}

/// Serves `app` over plain HTTP on 127.0.0.1; its base URL.
async fn serve_plain(app: axum::Router) -> String {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", tcp.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(tcp, app).await.expect("serving") });
    url
}

#[tokio::test]
async fn the_upload_proxy_accepts_the_token_and_forwards_the_upload() {
    let harness = Harness::start_with_clock(
        vec![review(true), get(DISK).reply(200, data_volume(json!({"upload": {}}), None))],
        unix_now,
    )
    .await;
    let body = token_request("disk").to_string();
    let (status, object) = create_as_alice(&harness.url, Some(&pki().front_proxy), body.as_bytes()).await;
    harness.finish().await;
    assert_eq!(status, 200, "{object}");
    let token = object["status"]["token"].as_str().expect("token").to_owned();
    // The DataVolume's upload server, reduced to what the proxy needs: /healthz and the route.
    let upload_server = axum::Router::new().route("/healthz", axum::routing::get(|| async { "OK" })).route(
        "/v1beta1/upload-async",
        axum::routing::post(|body: axum::body::Bytes| async move { format!("{} bytes", body.len()) }),
    );
    let upstream = Upstream::parse(&serve_plain(upload_server).await).expect("upstream");
    let config =
        ProxyConfig { key: global_key(), upstream, upstream_ca: None, upstream_wait: DEFAULT_UPSTREAM_WAIT };
    let proxy =
        serve_plain(uploader::proxy::router(std::sync::Arc::new(Proxy::new(config).expect("proxy")))).await;

    let response = reqwest::Client::new()
        .post(format!("{proxy}/v1beta1/upload-async"))
        .bearer_auth(&token)
        .body(vec![0u8; 4096])
        .send()
        .await
        .expect("upload through the proxy");

    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.expect("body"), "4096 bytes");
}

// ---- authentication: only the front proxy -----------------------------------------------

#[tokio::test]
async fn without_a_client_certificate_the_user_headers_are_not_believed() {
    let harness = Harness::start(vec![]).await;

    let (status, object) =
        create_as_alice(&harness.url, None, token_request("disk").to_string().as_bytes()).await;
    harness.finish().await;

    assert_eq!((status, object["reason"].as_str()), (401, Some("Unauthorized")), "{object}");
    assert_eq!(object["kind"], "Status");
    assert!(object["message"].as_str().unwrap_or_default().contains("no client certificate"), "{object}");
}

#[tokio::test]
async fn a_certificate_of_the_front_proxy_ca_with_another_name_is_refused() {
    let harness = Harness::start(vec![]).await;

    let (status, object) =
        create_as_alice(&harness.url, Some(&pki().intruder), token_request("disk").to_string().as_bytes())
            .await;
    harness.finish().await;

    assert_eq!(status, 401, "{object}");
    assert!(object["message"].as_str().unwrap_or_default().contains("\"intruder\""), "{object}");
}

#[tokio::test]
async fn a_certificate_of_another_ca_fails_the_handshake() {
    let harness = Harness::start(vec![]).await;

    let sent = client(Some(&pki().impostor))
        .post(format!("{}{CREATE}", harness.url))
        .header("X-Remote-User", "alice")
        .body(token_request("disk").to_string())
        .send()
        .await;
    harness.finish().await;

    let error = sent.expect_err("the handshake must fail");
    assert!(error.is_connect() || error.is_request(), "{error:?}");
}

// ---- authorization and the volume ------------------------------------------------------------

#[tokio::test]
async fn a_denied_review_is_403_with_the_reason() {
    let (status, object) = ask_for_disk(vec![review(false)]).await;

    assert_eq!((status, object["reason"].as_str()), (403, Some("Forbidden")), "{object}");
    assert_eq!(
        object["message"],
        "uploadtokenrequests.upload.cdi.kubevirt.io is forbidden: User \"alice\" cannot create resource \
         \"uploadtokenrequests\" in API group \"upload.cdi.kubevirt.io\" in the namespace \"ns\": no RBAC policy matched"
    );
}

#[tokio::test]
async fn a_missing_volume_is_404() {
    let (status, object) = ask_for_disk(vec![
        review(true),
        get(DISK).reply(404, not_found("datavolumes.cdi.kubevirt.io")),
        get(DISK_PVC).reply(404, not_found("persistentvolumeclaims")),
    ])
    .await;

    assert_eq!((status, object["reason"].as_str()), (404, Some("NotFound")), "{object}");
}

#[tokio::test]
async fn a_data_volume_that_is_not_an_upload_volume_is_400() {
    let (status, object) = ask_for_disk(vec![
        review(true),
        get(DISK).reply(200, data_volume(json!({"http": {"url": "http://example.com/disk.img"}}), None)),
    ])
    .await;

    assert_eq!(status, 400, "{object}");
    assert!(object["message"].as_str().unwrap_or_default().contains("not an upload target"), "{object}");
}

#[tokio::test]
async fn an_annotated_pvc_without_a_data_volume_is_400() {
    let pvc = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "disk", "namespace": "ns", "annotations": {"cdi.kubevirt.io/storage.upload.target": ""}},
        "spec": {},
    });
    let (status, object) = ask_for_disk(vec![
        review(true),
        get(DISK).reply(404, not_found("datavolumes.cdi.kubevirt.io")),
        get(DISK_PVC).reply(200, pvc),
    ])
    .await;

    assert_eq!(status, 400, "{object}");
    let message = object["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("storage.upload.target") && message.contains("only into DataVolumes"),
        "{message}"
    );
}

#[tokio::test]
async fn bodies_that_are_no_token_request_are_refused_after_authorization() {
    let cases: &[(&[u8], u16)] = &[
        (b"not json", 400),
        (br#"{"kind": "Pod", "apiVersion": "v1", "spec": {"pvcName": "disk"}}"#, 400),
        (br#"{"metadata": {"namespace": "other"}, "spec": {"pvcName": "disk"}}"#, 400),
        (br#"{"metadata": {"name": "t"}, "spec": {}}"#, 422),
        (br#"{"metadata": {"name": "t"}, "spec": {"pvcName": "../disk"}}"#, 422),
    ];
    for (body, expected) in cases {
        let harness = Harness::start(vec![review(true)]).await;

        let (status, object) = create_as_alice(&harness.url, Some(&pki().front_proxy), body).await;
        harness.finish().await;

        assert_eq!(status, *expected, "{}: {object}", String::from_utf8_lossy(body));
        assert_eq!(object["kind"], "Status");
    }
}

// ---- discovery -----------------------------------------------------------------------------

#[tokio::test]
async fn discovery_and_health_need_no_certificate_and_openapi_is_absent() {
    let harness = Harness::start(vec![]).await;
    let anonymous = client(None);
    let fetch = |path: &str| {
        let request = anonymous.get(format!("{}{path}", harness.url));
        async move {
            let response = request.send().await.expect("request");
            (response.status().as_u16(), response.text().await.expect("body"))
        }
    };

    let (apis, group, version) = (
        fetch("/apis").await,
        fetch("/apis/upload.cdi.kubevirt.io").await,
        fetch("/apis/upload.cdi.kubevirt.io/v1beta1").await,
    );
    let (health, openapi_v2, openapi_v3, listing) = (
        fetch("/healthz").await,
        fetch("/openapi/v2").await,
        fetch("/openapi/v3").await,
        anonymous.get(format!("{}{CREATE}", harness.url)).send().await.expect("GET").status().as_u16(),
    );
    drop(anonymous);
    harness.finish().await;

    let json = |(status, body): &(u16, String)| -> Value {
        assert_eq!(*status, 200, "{body}");
        serde_json::from_str(body).expect("JSON")
    };
    assert_eq!(json(&apis)["groups"][0]["name"], "upload.cdi.kubevirt.io");
    assert_eq!(json(&group)["preferredVersion"]["version"], "v1beta1");
    let resources = json(&version);
    assert_eq!(resources["kind"], "APIResourceList");
    assert_eq!(resources["resources"][0]["name"], "uploadtokenrequests");
    assert_eq!(resources["resources"][0]["verbs"], json!(["create"]));
    assert_eq!(health, (200, "ok".to_owned()));
    assert_eq!((openapi_v2.0, openapi_v3.0), (404, 404), "the aggregator skips a 404");
    assert_eq!(listing, 405, "create is the only verb");
}
