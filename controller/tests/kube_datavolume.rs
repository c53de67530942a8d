//! The kube driver's DataVolume reconcile against a mock API server (`tower-test`), scenario by
//! scenario: the informer caches hold the observed world, the mock asserts every request the
//! reconcile makes (method, path, body) in order and answers it. Events (best effort,
//! `events.k8s.io`) are answered and recorded wherever they come (`common`: the mock).

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::{BodyCheck, Expect, Seen, expect, fill, keys_at, serve};
use controller::api::Timestamp;
use controller::kube::build::ClusterConfig;
use controller::kube::ca::SharedCa;
use controller::kube::certs::CertificateAuthority;
use controller::kube::reconcile::{Caches, Context, ProgressReader, reconcile};
use controller::kube::resource::{
    DataSourceObject, DataVolumeObject, StorageProfileObject, data_sources, data_volumes, storage_profiles,
};
use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use serde_json::{Value, json};

const NOW: i64 = 1_795_336_088;
const NOW_TEXT: &str = "2026-11-22T08:28:08Z";

/// Progress the "metrics endpoint" of every running worker reports.
struct FixedProgress(Option<f64>);

impl ProgressReader for FixedProgress {
    fn read<'a>(&'a self, _pod_ip: &'a str) -> Pin<Box<dyn Future<Output = Option<f64>> + Send + 'a>> {
        let value = self.0;
        Box::pin(async move { value })
    }
}

/// The observed world.
#[derive(Default)]
struct World {
    pvcs: Vec<Value>,
    pods: Vec<Value>,
    classes: Vec<Value>,
    profiles: Vec<Value>,
    data_sources: Vec<Value>,
    data_volumes: Vec<Value>,
    progress: Option<f64>,
}

fn default_world() -> World {
    World {
        classes: vec![json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "rbd", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "rbd.csi.ceph.com", "volumeBindingMode": "Immediate"
        })],
        profiles: vec![json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "StorageProfile",
            "metadata": {"name": "rbd"}, "spec": {},
            "status": {"storageClass": "rbd", "cloneStrategy": "csi-clone",
                       "claimPropertySets": [{"accessModes": ["ReadWriteMany"], "volumeMode": "Block"}]}
        })],
        ..World::default()
    }
}

/// Runs one reconcile of `dv` in `world` against the expectations.
async fn run(world: World, dv: Value, expected: Vec<Expect>) -> (Action, Seen) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, expected));
    let client = Client::new(service, "default");
    let caches = Caches {
        pvcs: fill::<PersistentVolumeClaim>(Writer::new(()), &world.pvcs),
        pods: fill::<Pod>(Writer::new(()), &world.pods),
        classes: fill::<StorageClass>(Writer::new(()), &world.classes),
        profiles: fill::<StorageProfileObject>(Writer::new(storage_profiles()), &world.profiles),
        data_sources: fill::<DataSourceObject>(Writer::new(data_sources()), &world.data_sources),
        data_volumes: fill::<DataVolumeObject>(Writer::new(data_volumes()), &world.data_volumes),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), Reporter { controller: "diskplane".into(), instance: None }),
        client,
        config: ClusterConfig::new("quay.io/diskplane/diskplane:v1"),
        caches,
        progress: Arc::new(FixedProgress(world.progress)),
        now: || Timestamp(NOW),
        token_key: || Ok("00112233445566778899aabbccddeeff".to_owned()),
        ca: Arc::new(SharedCa::new(CertificateAuthority::generate(NOW, None).expect("a CA"))),
    });
    let object: DataVolumeObject = serde_json::from_value(dv).expect("fixture DataVolume");
    let action = reconcile(Arc::new(object), ctx).await.expect("reconcile");
    // Dropping the context drops the last client: the mock's request stream ends.
    let seen = server.await.expect("mock API server");
    assert!(seen.unexpected.is_empty(), "unexpected requests: {:#?}", seen.unexpected);
    assert!(seen.missing.is_empty(), "requests not made: {:#?}", seen.missing);
    (action, seen)
}

fn data_volume(spec: Value, status: Option<Value>) -> Value {
    let mut dv = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": "fedora", "namespace": "vms", "uid": "uid-1", "resourceVersion": "7"},
        "spec": spec,
    });
    if let Some(status) = status {
        dv["status"] = status;
    }
    dv
}

fn http_spec() -> Value {
    json!({
        "source": {"http": {"url": "https://images.example.org/fedora.qcow2"}},
        "storage": {"resources": {"requests": {"storage": "10Gi"}}}
    })
}

const DV_STATUS: &str = "/apis/cdi.kubevirt.io/v1beta1/namespaces/vms/datavolumes/fedora/status";
const PVCS: &str = "/api/v1/namespaces/vms/persistentvolumeclaims";
const PODS: &str = "/api/v1/namespaces/vms/pods";

/// What the API server answers to a status patch: the DataVolume.
fn patched(spec: Value) -> Value {
    data_volume(spec, None)
}

fn bound_pvc(name: &str, namespace: &str, extra: Value) -> Value {
    let mut pvc = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace,
                     "annotations": {"diskplane.io/virtual-size": "10737418240"}},
        "spec": {"accessModes": ["ReadWriteMany"], "volumeMode": "Block", "storageClassName": "rbd",
                 "resources": {"requests": {"storage": "10Gi"}}},
        "status": {"phase": "Bound", "capacity": {"storage": "10Gi"}}
    });
    merge(&mut pvc, extra);
    pvc
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

fn condition(type_: &str, status: &str, reason: Option<&str>, message: Option<&str>) -> Value {
    let mut c = json!({"type": type_, "status": status, "lastTransitionTime": NOW_TEXT, "lastHeartbeatTime": NOW_TEXT});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    c
}

fn worker_pod(name: &str, namespace: &str, attempt: i32, status: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": {"diskplane.io/attempt": attempt.to_string()}},
        "spec": {"containers": [{"name": "importer"}]},
        "status": status
    })
}

fn running_status(restarts: i32) -> Value {
    json!({
        "phase": "ImportScheduled", "claimName": "fedora", "progress": "N/A", "restartCount": restarts,
        "conditions": [
            condition("Bound", "True", Some("Bound"), Some("PVC fedora Bound")),
            condition("Running", "False", Some("Pending"), Some("Worker is starting")),
            condition("Ready", "False", None, None),
        ]
    })
}

#[tokio::test]
async fn http_import_creates_the_pvc_rendered_from_the_storage_profile() {
    let status = json!({"status": {
        "claimName": "fedora", "phase": "Pending", "progress": "N/A", "restartCount": 0,
        "conditions": [
            condition("Bound", "False", Some("Pending"), Some("PVC fedora Pending")),
            condition("Running", "False", None, None),
            condition("Ready", "False", None, None),
        ]
    }});
    let pvc = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "fedora", "namespace": "vms",
            "labels": {"app": "containerized-data-importer", "app.kubernetes.io/managed-by": "diskplane"},
            "annotations": {
                "cdi.kubevirt.io/createdForDataVolume": "uid-1",
                "cdi.kubevirt.io/storage.contentType": "kubevirt",
                "cdi.kubevirt.io/storage.import.endpoint": "https://images.example.org/fedora.qcow2",
                "cdi.kubevirt.io/storage.import.source": "http",
                "diskplane.io/virtual-size": "10737418240"
            },
            "ownerReferences": [{"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "name": "fedora",
                                 "uid": "uid-1", "controller": true, "blockOwnerDeletion": true}]
        },
        // Block from the profile: no filesystem overhead.
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10737418240"}},
                 "storageClassName": "rbd", "volumeMode": "Block"}
    });
    let (action, seen) = run(
        default_world(),
        data_volume(http_spec(), None),
        vec![
            expect(Method::PATCH, DV_STATUS, BodyCheck::Exact(status)).reply(200, patched(http_spec())),
            expect(Method::POST, PVCS, BodyCheck::Exact(pvc)).created(),
        ],
    )
    .await;
    assert_eq!(action, Action::await_change());
    assert_eq!(seen.events, [("Normal".into(), "Pending".into(), None)]);
}

#[tokio::test]
async fn filesystem_profiles_add_the_filesystem_overhead_to_the_request() {
    let mut world = default_world();
    world.profiles[0]["status"]["claimPropertySets"] =
        json!([{"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}]);
    run(
        world,
        data_volume(http_spec(), None),
        vec![
            expect(Method::PATCH, DV_STATUS, BodyCheck::Fields(vec![])).reply(200, patched(http_spec())),
            expect(
                Method::POST,
                PVCS,
                BodyCheck::Fields(vec![
                    ("/spec/accessModes", json!(["ReadWriteOnce"])),
                    ("/spec/volumeMode", json!("Filesystem")),
                    // ceil(10 GiB / (1 - 0.055))
                    ("/spec/resources/requests/storage", json!("11362347344")),
                ]),
            )
            .created(),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_bound_pvc_gets_the_importer_pod_with_the_restricted_security_context() {
    let mut world = default_world();
    world.pvcs.push(bound_pvc("fedora", "vms", json!({})));
    let pending = json!({"phase": "Pending", "claimName": "fedora", "progress": "N/A", "restartCount": 0, "conditions": [
        condition("Bound", "False", Some("Pending"), Some("PVC fedora Pending")),
        condition("Running", "False", None, None),
        condition("Ready", "False", None, None),
    ]});
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "importer-fedora", "namespace": "vms",
            "labels": {"app": "containerized-data-importer", "app.kubernetes.io/managed-by": "diskplane",
                       "cdi.kubevirt.io": "importer", "prometheus.cdi.kubevirt.io": "true"},
            "annotations": {"cdi.kubevirt.io/createdForDataVolume": "uid-1", "diskplane.io/attempt": "0",
                            "sidecar.istio.io/inject": "false"},
            "ownerReferences": [{"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "name": "fedora",
                                 "uid": "uid-1", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "restartPolicy": "Never",
            "securityContext": {"fsGroup": 107, "runAsGroup": 107, "runAsNonRoot": true, "runAsUser": 107,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "importer",
                "image": "quay.io/diskplane/diskplane:v1",
                "args": ["worker", "import", "--volume", "/dev/cdi-block-volume"],
                "env": [
                    {"name": "OWNER_UID", "value": "uid-1"},
                    {"name": "METRICS_LISTEN", "value": "0.0.0.0:8080"},
                    {"name": "IMPORTER_IMAGE_SIZE", "value": "10737418240"},
                    {"name": "IMPORTER_CONTENTTYPE", "value": "kubevirt"},
                    {"name": "IMPORTER_SOURCE", "value": "http"},
                    {"name": "IMPORTER_ENDPOINT", "value": "https://images.example.org/fedora.qcow2"}
                ],
                "ports": [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": true, "runAsGroup": 107, "runAsNonRoot": true,
                                    "runAsUser": 107, "seccompProfile": {"type": "RuntimeDefault"}},
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeDevices": [{"name": "cdi-data-vol", "devicePath": "/dev/cdi-block-volume"}],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]
            }],
            "volumes": [
                {"name": "cdi-data-vol", "persistentVolumeClaim": {"claimName": "fedora"}},
                {"name": "tmp", "emptyDir": {}}
            ]
        }
    });
    let (action, seen) =
        run(
            world,
            data_volume(http_spec(), Some(pending)),
            vec![
            expect(Method::PATCH, DV_STATUS, BodyCheck::Exact(json!({"status": {
                "phase": "ImportScheduled", "claimName": "fedora", "progress": "N/A", "restartCount": 0,
                "conditions": [
                    condition("Bound", "True", Some("Bound"), Some("PVC fedora Bound")),
                    condition("Running", "False", Some("Pending"), Some("Worker is starting")),
                    condition("Ready", "False", None, None),
                ]
            }})))
            .reply(200, patched(http_spec())),
            expect(Method::POST, PODS, BodyCheck::Exact(pod)).created(),
        ],
        )
        .await;
    assert_eq!(action, Action::await_change());
    assert_eq!(seen.events, [("Normal".into(), "ImportScheduled".into(), None)]);
}

#[tokio::test]
async fn a_running_importer_reports_its_metrics_progress_and_is_polled_again() {
    let mut world = default_world();
    world.pvcs.push(bound_pvc("fedora", "vms", json!({})));
    world.pods.push(worker_pod(
        "importer-fedora",
        "vms",
        0,
        json!({"phase": "Running", "podIP": "10.1.2.3"}),
    ));
    world.progress = Some(42.5);
    let (action, seen) = run(
        world,
        data_volume(http_spec(), Some(running_status(0))),
        vec![
            expect(
                Method::PATCH,
                DV_STATUS,
                BodyCheck::Fields(vec![
                    ("/status/phase", json!("ImportInProgress")),
                    ("/status/progress", json!("42.50%")),
                    ("/status/conditions/1", condition("Running", "True", Some("Pod is running"), None)),
                ]),
            )
            .reply(200, patched(http_spec())),
        ],
    )
    .await;
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    assert_eq!(seen.events, [("Normal".into(), "ImportInProgress".into(), None)]);
}

#[tokio::test]
async fn a_succeeded_importer_makes_the_data_volume_succeed_and_is_deleted() {
    let mut world = default_world();
    world.pvcs.push(bound_pvc("fedora", "vms", json!({})));
    world.pods.push(worker_pod("importer-fedora", "vms", 0, json!({"phase": "Succeeded"})));
    let (action, seen) = run(
        world,
        data_volume(http_spec(), Some(running_status(0))),
        vec![
            expect(
                Method::PATCH,
                DV_STATUS,
                BodyCheck::Fields(vec![
                    ("/status/phase", json!("Succeeded")),
                    ("/status/progress", json!("100.0%")),
                    ("/status/conditions/2", condition("Ready", "True", None, None)),
                ]),
            )
            .reply(200, patched(http_spec())),
            expect(
                Method::DELETE,
                "/api/v1/namespaces/vms/pods/importer-fedora",
                BodyCheck::Fields(vec![("/propagationPolicy", json!("Background"))]),
            )
            .reply(200, worker_pod("importer-fedora", "vms", 0, json!({"phase": "Succeeded"}))),
        ],
    )
    .await;
    assert_eq!(action, Action::await_change());
    assert_eq!(seen.events, [("Normal".into(), "ImportSucceeded".into(), Some("Import successful".into()))]);
}

fn failed_importer(message: &str) -> Value {
    worker_pod(
        "importer-fedora",
        "vms",
        0,
        json!({"phase": "Failed", "containerStatuses": [{
            "name": "importer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "message": message}}
        }]}),
    )
}

#[tokio::test]
async fn a_terminal_worker_failure_fails_the_data_volume_with_its_reason() {
    let mut world = default_world();
    world.pvcs.push(bound_pvc("fedora", "vms", json!({})));
    world.pods.push(failed_importer(
        r#"{"result":"Failed","reason":"ChecksumError","message":"sha256 does not match","retryable":false}"#,
    ));
    let (action, seen) = run(
        world,
        data_volume(http_spec(), Some(running_status(0))),
        vec![
            expect(
                Method::PATCH,
                DV_STATUS,
                BodyCheck::Fields(vec![
                    ("/status/phase", json!("Failed")),
                    ("/status/restartCount", json!(0)),
                    ("/status/conditions/1/reason", json!("ChecksumError")),
                    ("/status/conditions/1/message", json!("sha256 does not match")),
                ]),
            )
            .reply(200, patched(http_spec())),
            expect(Method::DELETE, "/api/v1/namespaces/vms/pods/importer-fedora", BodyCheck::Fields(vec![]))
                .reply(200, failed_importer("")),
        ],
    )
    .await;
    assert_eq!(action, Action::await_change());
    assert_eq!(
        seen.events,
        [("Warning".into(), "ChecksumError".into(), Some("sha256 does not match".into()))]
    );
}

#[tokio::test]
async fn a_retryable_worker_failure_counts_a_restart_and_retries_after_the_back_off() {
    let mut world = default_world();
    world.pvcs.push(bound_pvc("fedora", "vms", json!({})));
    world.pods.push(failed_importer(
        r#"{"result":"Failed","reason":"Error","message":"HTTP 503 from images.example.org","retryable":true}"#,
    ));
    let (action, _) = run(
        world,
        data_volume(http_spec(), Some(running_status(0))),
        vec![
            expect(
                Method::PATCH,
                DV_STATUS,
                BodyCheck::Fields(vec![
                    ("/status/phase", json!("ImportInProgress")),
                    ("/status/restartCount", json!(1)),
                    ("/status/conditions/1/message", json!("HTTP 503 from images.example.org")),
                ]),
            )
            .reply(200, patched(http_spec())),
            expect(Method::DELETE, "/api/v1/namespaces/vms/pods/importer-fedora", BodyCheck::Fields(vec![]))
                .reply(
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
                                   "reason": "NotFound", "message": "gone"}),
                ),
        ],
    )
    .await;
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
}

#[tokio::test]
async fn an_upload_data_volume_gets_its_secret_service_and_upload_pod() {
    let spec = json!({"source": {"upload": {}}, "storage": {"resources": {"requests": {"storage": "10Gi"}}}});
    let mut world = default_world();
    world.pvcs.push(bound_pvc("fedora", "vms", json!({})));
    let pending = json!({"phase": "Pending", "claimName": "fedora", "progress": "N/A", "restartCount": 0});
    let (_, seen) = run(
        world,
        data_volume(spec.clone(), Some(pending)),
        vec![
            expect(
                Method::PATCH,
                DV_STATUS,
                BodyCheck::Fields(vec![("/status/phase", json!("UploadScheduled"))]),
            )
            .reply(200, patched(spec)),
            expect(
                Method::POST,
                "/api/v1/namespaces/vms/secrets",
                BodyCheck::FieldsAndCheck(
                    vec![
                        ("/metadata/name", json!("cdi-upload-fedora")),
                        ("/stringData/token-key", json!("00112233445566778899aabbccddeeff")),
                        ("/metadata/ownerReferences/0/uid", json!("uid-1")),
                    ],
                    |secret| {
                        assert_eq!(
                            keys_at(secret, "/stringData"),
                            ["ca.crt", "tls.crt", "tls.key", "token-key"]
                        );
                        for name in ["cdi-upload-fedora.vms.svc", "cdi-upload-fedora.vms.svc.cluster.local"] {
                            assert_serves(secret, name);
                        }
                    },
                ),
            )
            .created(),
            expect(
                Method::POST,
                "/api/v1/namespaces/vms/services",
                BodyCheck::Fields(vec![
                    ("/metadata/name", json!("cdi-upload-fedora")),
                    ("/spec/ports/0/targetPort", json!(8443)),
                    ("/spec/selector/cdi.kubevirt.io~1uploadTarget", json!("cdi-upload-fedora")),
                ]),
            )
            .created(),
            expect(
                Method::POST,
                PODS,
                BodyCheck::Fields(vec![
                    ("/metadata/name", json!("cdi-upload-fedora")),
                    ("/metadata/labels/cdi.kubevirt.io~1uploadTarget", json!("cdi-upload-fedora")),
                    ("/spec/containers/0/args/1", json!("upload-server")),
                    ("/spec/containers/0/securityContext/runAsUser", json!(107)),
                    ("/spec/volumes/2/secret/secretName", json!("cdi-upload-fedora")),
                    ("/spec/containers/0/args/17", json!("--tls-cert")),
                    ("/spec/containers/0/args/18", json!("/etc/diskplane/upload/tls.crt")),
                ]),
            )
            .created(),
        ],
    )
    .await;
    assert_eq!(seen.events, [("Normal".into(), "UploadScheduled".into(), None)]);
}

/// The certificate `stringData/tls.crt` of a Secret body verifies for `name` at `NOW` against
/// the CA bundle beside it (`ca.crt`), as the proxy or the clone target checks it.
fn assert_serves(secret: &Value, name: &str) {
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let pem = |key: &str| secret["stringData"][key].as_str().unwrap_or_else(|| panic!("no {key}")).as_bytes();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem("ca.crt")) {
        roots.add(cert.expect("CA PEM")).expect("a root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().expect("verifier");
    let leaf = CertificateDer::from_pem_slice(pem("tls.crt")).expect("leaf PEM");
    let at = UnixTime::since_unix_epoch(Duration::from_secs(NOW as u64));
    let server = ServerName::try_from(name.to_owned()).expect("name");
    verifier.verify_server_cert(&leaf, &[], &server, &[], at).unwrap_or_else(|e| panic!("{name}: {e}"));
}

const TOKEN: &str = "00112233445566778899aabbccddeeff";

fn not_found(what: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
           "message": format!("{what} not found"), "reason": "NotFound"})
}

/// The Secret of a copy clone in `namespace`; `owned` when it is the DataVolume's. Its
/// `stringData` holds the token only: the TLS material is random (see [`source_secret`]).
fn clone_secret(namespace: &str, owned: bool) -> Value {
    let mut secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": "uid-1-clone-token", "namespace": namespace,
            "labels": {"app": "containerized-data-importer", "app.kubernetes.io/managed-by": "diskplane",
                       "cdi.kubevirt.io": "cdi-clone", "diskplane.io/clone-for": "uid-1"},
        },
        "stringData": {"token": TOKEN},
        "type": "Opaque",
    });
    if owned {
        secret["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "name": "fedora", "uid": "uid-1",
            "controller": true, "blockOwnerDeletion": true,
        }]);
    }
    secret
}

const CLONE_SECRET_VOLUME: &str = "/spec/volumes/2";

/// The clone Secret's volume of a source Pod (token and its certificate) or a target Pod (token
/// and the CA): each sees only its keys.
fn clone_secret_volume(source: bool) -> Value {
    let keys: &[&str] = if source { &["token", "tls.crt", "tls.key"] } else { &["token", "ca.crt"] };
    let items: Vec<Value> = keys.iter().map(|k| json!({"key": k, "path": k})).collect();
    json!({"name": "clone-token",
           "secret": {"secretName": "uid-1-clone-token", "defaultMode": 0o400, "items": items}})
}

/// The source namespace's clone Secret: metadata as [`clone_secret`], the token, and a serving
/// certificate for the source Pod's name from the CA it carries.
fn source_secret(namespace: &'static str, owned: bool, check: fn(&Value)) -> BodyCheck {
    let expected = clone_secret(namespace, owned);
    BodyCheck::FieldsAndCheck(
        vec![
            ("/metadata", expected["metadata"].clone()),
            ("/type", json!("Opaque")),
            ("/stringData/token", json!(TOKEN)),
        ],
        check,
    )
}

fn source_material(secret: &Value, name: &str) {
    assert_eq!(keys_at(secret, "/stringData"), ["ca.crt", "tls.crt", "tls.key", "token"]);
    assert_serves(secret, name);
}

fn clone_spec(source_namespace: &str) -> Value {
    json!({"source": {"pvc": {"namespace": source_namespace, "name": "golden"}}, "storage": {}})
}

#[tokio::test]
async fn a_csi_clone_pvc_names_its_source_and_needs_no_worker_pod() {
    let mut world = default_world();
    world.pvcs.push(bound_pvc("golden", "vms", json!({})));
    let (_, seen) = run(
        world,
        data_volume(clone_spec("vms"), None),
        vec![
            expect(Method::PATCH, DV_STATUS, BodyCheck::Fields(vec![("/status/phase", json!("Pending"))]))
                .reply(200, patched(clone_spec("vms"))),
            expect(
                Method::POST,
                PVCS,
                BodyCheck::FieldsAndAbsent(
                    vec![
                        ("/spec/dataSource", json!({"kind": "PersistentVolumeClaim", "name": "golden"})),
                        ("/spec/resources/requests/storage", json!("10737418240")),
                        ("/spec/volumeMode", json!("Block")),
                        ("/metadata/annotations/cdi.kubevirt.io~1cloneType", json!("csi-clone")),
                        ("/metadata/annotations/k8s.io~1CloneRequest", json!("vms/golden")),
                    ],
                    vec!["/metadata/annotations/cdi.kubevirt.io~1cloneFallbackReason"],
                ),
            )
            .created(),
        ],
    )
    .await;
    assert!(seen.events.iter().all(|e| e.1 != "CloneFallback"));
}

#[tokio::test]
async fn a_csi_clone_succeeds_when_its_pvc_binds_without_any_pod() {
    let mut world = default_world();
    world.pvcs.push(bound_pvc("golden", "vms", json!({})));
    world.pvcs.push(bound_pvc(
        "fedora",
        "vms",
        json!({"metadata": {"annotations": {"cdi.kubevirt.io/cloneType": "csi-clone"}}}),
    ));
    let scheduled =
        json!({"phase": "CloneScheduled", "claimName": "fedora", "progress": "N/A", "restartCount": 0});
    let (action, seen) = run(
        world,
        data_volume(clone_spec("vms"), Some(scheduled)),
        vec![
            expect(Method::PATCH, DV_STATUS, BodyCheck::Fields(vec![("/status/phase", json!("Succeeded"))]))
                .reply(200, patched(clone_spec("vms"))),
        ],
    )
    .await;
    assert_eq!(action, Action::await_change());
    assert_eq!(seen.events[0].1, "CloneSucceeded");
}

#[tokio::test]
async fn a_clone_between_storage_classes_falls_back_to_copy_with_the_reason() {
    let mut world = default_world();
    world.pvcs.push(bound_pvc(
        "golden",
        "vms",
        json!({"spec": {"storageClassName": "nfs", "volumeMode": "Filesystem"}}),
    ));
    let (_, seen) = run(
        world,
        data_volume(clone_spec("vms"), None),
        vec![
            expect(Method::PATCH, DV_STATUS, BodyCheck::Fields(vec![("/status/phase", json!("Pending"))]))
                .reply(200, patched(clone_spec("vms"))),
            expect(
                Method::POST,
                PVCS,
                BodyCheck::FieldsAndAbsent(
                    vec![
                        ("/metadata/annotations/cdi.kubevirt.io~1cloneType", json!("copy")),
                        (
                            "/metadata/annotations/cdi.kubevirt.io~1cloneFallbackReason",
                            json!("csi-clone needs the same StorageClass: source nfs, target rbd"),
                        ),
                    ],
                    vec!["/spec/dataSource"],
                ),
            )
            .created(),
        ],
    )
    .await;
    assert!(seen.events.contains(&(
        "Warning".into(),
        "CloneFallback".into(),
        Some("host-assisted copy: csi-clone needs the same StorageClass: source nfs, target rbd".into())
    )));
}

#[tokio::test]
async fn a_copy_clone_starts_the_source_pod_then_the_target_pod_at_the_source_address_over_tls() {
    let copy_pvc = json!({"metadata": {"annotations": {"cdi.kubevirt.io/cloneType": "copy"}}});
    let scheduled = json!({"phase": "Pending", "claimName": "fedora", "progress": "N/A", "restartCount": 0});
    // First pass: the source Pod.
    let mut world = default_world();
    world.pvcs.push(bound_pvc("golden", "vms", json!({"spec": {"storageClassName": "nfs"}})));
    world.pvcs.push(bound_pvc("fedora", "vms", copy_pvc.clone()));
    run(
        world,
        data_volume(clone_spec("vms"), Some(scheduled)),
        vec![
            expect(
                Method::PATCH,
                DV_STATUS,
                BodyCheck::Fields(vec![("/status/phase", json!("CloneScheduled"))]),
            )
            .reply(200, patched(clone_spec("vms"))),
            // The Secret before the Pods; one serves both in one namespace.
            expect(
                Method::GET,
                "/api/v1/namespaces/vms/secrets/uid-1-clone-token",
                BodyCheck::Fields(vec![]),
            )
            .reply(404, not_found("secrets \"uid-1-clone-token\"")),
            expect(
                Method::POST,
                "/api/v1/namespaces/vms/secrets",
                source_secret("vms", true, |s| source_material(s, "uid-1-source-pod.vms.pod")),
            )
            .created(),
            expect(
                Method::POST,
                PODS,
                BodyCheck::Fields(vec![
                    ("/metadata/name", json!("uid-1-source-pod")),
                    (
                        "/spec/containers/0/args",
                        json!([
                            "worker",
                            "clone-source",
                            "--volume",
                            "/dev/cdi-block-volume",
                            "--listen",
                            "0.0.0.0:8444",
                            "--tls-cert",
                            "/etc/diskplane/clone/tls.crt",
                            "--tls-key",
                            "/etc/diskplane/clone/tls.key",
                            "--token-file",
                            "/etc/diskplane/clone/token",
                        ]),
                    ),
                    (CLONE_SECRET_VOLUME, clone_secret_volume(true)),
                    (
                        "/spec/volumes/0/persistentVolumeClaim",
                        json!({"claimName": "golden", "readOnly": true}),
                    ),
                ]),
            )
            .created(),
        ],
    )
    .await;
    // Second pass: the source runs; the target connects to it.
    let mut world = default_world();
    world.pvcs.push(bound_pvc("golden", "vms", json!({"spec": {"storageClassName": "nfs"}})));
    world.pvcs.push(bound_pvc("fedora", "vms", copy_pvc));
    world.pods.push(worker_pod(
        "uid-1-source-pod",
        "vms",
        0,
        json!({"phase": "Running", "podIP": "10.9.8.7"}),
    ));
    let scheduled = json!({"phase": "CloneScheduled", "claimName": "fedora", "progress": "N/A", "restartCount": 0,
    "conditions": [
        condition("Bound", "True", Some("Bound"), Some("PVC fedora Bound")),
        condition("Running", "False", Some("Pending"), Some("Worker is starting")),
        condition("Ready", "False", None, None),
    ]});
    run(
        world,
        data_volume(clone_spec("vms"), Some(scheduled)),
        vec![
            expect(
                Method::POST,
                PODS,
                BodyCheck::Fields(vec![
                    ("/metadata/name", json!("cdi-clone-target-fedora")),
                    (
                        "/spec/containers/0/args",
                        json!([
                            "worker",
                            "clone-target",
                            "--volume",
                            "/dev/cdi-block-volume",
                            "--size",
                            "10737418240",
                            "--source-url",
                            "https://10.9.8.7:8444",
                            "--ca-cert",
                            "/etc/diskplane/clone/ca.crt",
                            "--tls-server-name",
                            "uid-1-source-pod.vms.pod",
                            "--token-file",
                            "/etc/diskplane/clone/token",
                        ]),
                    ),
                    (CLONE_SECRET_VOLUME, clone_secret_volume(false)),
                    ("/metadata/ownerReferences/0/uid", json!("uid-1")),
                ]),
            )
            .created(),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_cross_namespace_clone_denied_by_subject_access_review_gets_no_pvc() {
    let mut world = default_world();
    world.pvcs.push(bound_pvc("golden", "golden-images", json!({})));
    let message = "system:serviceaccount:vms:default may not create datavolumes/source in namespace golden-images \
                   (clone of golden-images/golden): no RBAC policy matched";
    let (action, seen) = run(
        world,
        data_volume(clone_spec("golden-images"), None),
        vec![
            expect(
                Method::POST,
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                BodyCheck::Exact(json!({
                    "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {},
                    "spec": {
                        "user": "system:serviceaccount:vms:default",
                        "groups": ["system:serviceaccounts", "system:serviceaccounts:vms"],
                        "resourceAttributes": {"namespace": "golden-images", "verb": "create", "group": "cdi.kubevirt.io",
                                               "resource": "datavolumes", "subresource": "source", "name": "golden"}
                    }
                })),
            )
            .reply(201, json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "metadata": {},
                               "spec": {}, "status": {"allowed": false, "reason": "no RBAC policy matched"}})),
            expect(
                Method::PATCH,
                DV_STATUS,
                BodyCheck::Exact(json!({"status": {
                    "claimName": "fedora", "phase": "Pending", "progress": "N/A", "restartCount": 0,
                    "conditions": [
                        condition("Bound", "False", Some("NotFound"), Some("No PVC found")),
                        condition("Running", "False", None, None),
                        condition("Ready", "False", Some("CloneUnauthorized"), Some(message)),
                    ]
                }})),
            )
            .reply(200, patched(clone_spec("golden-images"))),
        ],
    )
    .await;
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    assert_eq!(seen.events, [("Warning".into(), "CloneUnauthorized".into(), Some(message.into()))]);
}

#[tokio::test]
async fn an_allowed_cross_namespace_clone_falls_back_to_copy_and_adds_the_finalizer_for_its_source_pod() {
    let mut world = default_world();
    world.pvcs.push(bound_pvc("golden", "golden-images", json!({})));
    world.pvcs.push(bound_pvc(
        "fedora",
        "vms",
        json!({"metadata": {"annotations": {"cdi.kubevirt.io/cloneType": "copy"}}}),
    ));
    let pending = json!({"phase": "Pending", "claimName": "fedora", "progress": "N/A", "restartCount": 0});
    run(
        world,
        data_volume(clone_spec("golden-images"), Some(pending)),
        vec![
            expect(Method::PATCH, DV_STATUS, BodyCheck::Fields(vec![("/status/phase", json!("CloneScheduled"))]))
                .reply(200, patched(clone_spec("golden-images"))),
            expect(
                Method::PATCH,
                "/apis/cdi.kubevirt.io/v1beta1/namespaces/vms/datavolumes/fedora",
                BodyCheck::Exact(json!({"metadata": {"finalizers": ["cdi.kubevirt.io/dataVolumeFinalizer"], "resourceVersion": "7"}})),
            )
            .reply(200, patched(clone_spec("golden-images"))),
            // Both Secrets before the Pod: the source namespace's first (not owned: owner
            // references cannot cross namespaces), then the DataVolume's own.
            expect(
                Method::GET,
                "/api/v1/namespaces/golden-images/secrets/uid-1-clone-token",
                BodyCheck::Fields(vec![]),
            )
            .reply(404, not_found("secrets \"uid-1-clone-token\"")),
            expect(
                Method::POST,
                "/api/v1/namespaces/golden-images/secrets",
                source_secret("golden-images", false, |s| {
                    source_material(s, "uid-1-source-pod.golden-images.pod")
                }),
            )
            .created(),
            // The target's twin: the token and the CA, never the source's key.
            expect(
                Method::POST,
                "/api/v1/namespaces/vms/secrets",
                BodyCheck::FieldsAndCheck(
                    vec![("/metadata", clone_secret("vms", true)["metadata"].clone()), ("/stringData/token", json!(TOKEN))],
                    |s| assert_eq!(keys_at(s, "/stringData"), ["ca.crt", "token"]),
                ),
            )
            .created(),
            expect(
                Method::POST,
                "/api/v1/namespaces/golden-images/pods",
                BodyCheck::FieldsAndAbsent(
                    vec![("/metadata/name", json!("uid-1-source-pod")), ("/metadata/namespace", json!("golden-images"))],
                    vec!["/metadata/ownerReferences"],
                ),
            )
            .created(),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_retried_cross_namespace_clone_keeps_the_token_of_the_existing_source_secret() {
    // An earlier pass created the source namespace's Secret but not the target's: the target's
    // gets the same token, never a fresh one the source Pod would refuse.
    let mut world = default_world();
    world.pvcs.push(bound_pvc("golden", "golden-images", json!({})));
    world.pvcs.push(bound_pvc(
        "fedora",
        "vms",
        json!({"metadata": {"annotations": {"cdi.kubevirt.io/cloneType": "copy"}}}),
    ));
    let pending = json!({"phase": "Pending", "claimName": "fedora", "progress": "N/A", "restartCount": 0});
    let mut dv = data_volume(clone_spec("golden-images"), Some(pending));
    dv["metadata"]["finalizers"] = json!(["cdi.kubevirt.io/dataVolumeFinalizer"]);
    let mut existing = clone_secret("golden-images", false);
    existing.as_object_mut().unwrap().remove("stringData");
    // "earlier-token", "earlier CA", "earlier cert", "earlier key"
    existing["data"] = json!({"token": "ZWFybGllci10b2tlbg==", "ca.crt": "ZWFybGllciBDQQ==",
                              "tls.crt": "ZWFybGllciBjZXJ0", "tls.key": "ZWFybGllciBrZXk="});
    let mut target = clone_secret("vms", true);
    target["stringData"] = json!({"token": "earlier-token", "ca.crt": "earlier CA"});
    run(
        world,
        dv,
        vec![
            expect(
                Method::PATCH,
                DV_STATUS,
                BodyCheck::Fields(vec![("/status/phase", json!("CloneScheduled"))]),
            )
            .reply(200, patched(clone_spec("golden-images"))),
            expect(
                Method::GET,
                "/api/v1/namespaces/golden-images/secrets/uid-1-clone-token",
                BodyCheck::Fields(vec![]),
            )
            .reply(200, existing),
            expect(Method::POST, "/api/v1/namespaces/vms/secrets", BodyCheck::Exact(target)).reply(
                409,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409,
                                   "message": "already exists", "reason": "AlreadyExists"}),
            ),
            expect(
                Method::POST,
                "/api/v1/namespaces/golden-images/pods",
                BodyCheck::Fields(vec![
                    ("/metadata/name", json!("uid-1-source-pod")),
                    (CLONE_SECRET_VOLUME, clone_secret_volume(true)),
                ]),
            )
            .created(),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_source_secret_without_tls_material_is_replaced_before_the_source_pod_starts() {
    // Made by a diskplane that cloned over plain TCP: a token only.
    let mut world = default_world();
    world.pvcs.push(bound_pvc("golden", "vms", json!({"spec": {"storageClassName": "nfs"}})));
    world.pvcs.push(bound_pvc(
        "fedora",
        "vms",
        json!({"metadata": {"annotations": {"cdi.kubevirt.io/cloneType": "copy"}}}),
    ));
    let scheduled = json!({"phase": "Pending", "claimName": "fedora", "progress": "N/A", "restartCount": 0});
    let mut old = clone_secret("vms", true);
    old.as_object_mut().unwrap().remove("stringData");
    old["data"] = json!({"token": "ZWFybGllci10b2tlbg=="});
    run(
        world,
        data_volume(clone_spec("vms"), Some(scheduled)),
        vec![
            expect(
                Method::PATCH,
                DV_STATUS,
                BodyCheck::Fields(vec![("/status/phase", json!("CloneScheduled"))]),
            )
            .reply(200, patched(clone_spec("vms"))),
            expect(
                Method::GET,
                "/api/v1/namespaces/vms/secrets/uid-1-clone-token",
                BodyCheck::Fields(vec![]),
            )
            .reply(200, old.clone()),
            expect(
                Method::DELETE,
                "/api/v1/namespaces/vms/secrets/uid-1-clone-token",
                BodyCheck::Fields(vec![]),
            )
            .reply(200, old),
            expect(
                Method::POST,
                "/api/v1/namespaces/vms/secrets",
                source_secret("vms", true, |s| source_material(s, "uid-1-source-pod.vms.pod")),
            )
            .created(),
            expect(
                Method::POST,
                PODS,
                BodyCheck::Fields(vec![("/metadata/name", json!("uid-1-source-pod"))]),
            )
            .created(),
        ],
    )
    .await;
}

#[tokio::test]
async fn deleting_a_cross_namespace_clone_removes_its_source_pod_then_the_finalizer() {
    let mut dv = data_volume(clone_spec("golden-images"), Some(json!({"phase": "CloneInProgress"})));
    dv["metadata"]["deletionTimestamp"] = json!(NOW_TEXT);
    dv["metadata"]["finalizers"] = json!(["cdi.kubevirt.io/dataVolumeFinalizer", "other"]);
    let (action, _) = run(
        default_world(),
        dv,
        vec![
            expect(
                Method::DELETE,
                "/api/v1/namespaces/golden-images/pods/uid-1-source-pod",
                BodyCheck::Fields(vec![]),
            )
            .reply(200, worker_pod("uid-1-source-pod", "golden-images", 0, json!({}))),
            expect(
                Method::DELETE,
                "/api/v1/namespaces/golden-images/secrets/uid-1-clone-token",
                BodyCheck::Fields(vec![]),
            )
            .reply(200, clone_secret("golden-images", false)),
            expect(
                Method::PATCH,
                "/apis/cdi.kubevirt.io/v1beta1/namespaces/vms/datavolumes/fedora",
                BodyCheck::Exact(json!({"metadata": {"finalizers": ["other"], "resourceVersion": "7"}})),
            )
            .reply(200, patched(clone_spec("golden-images"))),
        ],
    )
    .await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn deleting_a_data_volume_leaves_its_objects_to_owner_references() {
    // Everything in the DataVolume's namespace is owned by it (see the exact PVC and Pod
    // bodies above): garbage collection deletes them; the reconcile makes no request.
    let mut world = default_world();
    world.pvcs.push(bound_pvc("fedora", "vms", json!({})));
    world.pods.push(worker_pod("importer-fedora", "vms", 0, json!({"phase": "Running"})));
    let mut dv = data_volume(http_spec(), Some(running_status(0)));
    dv["metadata"]["deletionTimestamp"] = json!(NOW_TEXT);
    let (action, seen) = run(world, dv, vec![]).await;
    assert_eq!(action, Action::await_change());
    assert!(seen.events.is_empty());
}

#[tokio::test]
async fn a_pvc_waiting_for_its_first_consumer_gets_no_worker() {
    let mut world = default_world();
    world.classes[0]["volumeBindingMode"] = json!("WaitForFirstConsumer");
    world.pvcs.push(bound_pvc("fedora", "vms", json!({"status": {"phase": "Pending"}})));
    let pending = json!({"phase": "Pending", "claimName": "fedora", "progress": "N/A", "restartCount": 0});
    let (action, seen) = run(
        world,
        data_volume(http_spec(), Some(pending)),
        vec![
            expect(
                Method::PATCH,
                DV_STATUS,
                BodyCheck::Fields(vec![("/status/phase", json!("WaitForFirstConsumer"))]),
            )
            .reply(200, patched(http_spec())),
        ],
    )
    .await;
    assert_eq!(action, Action::await_change());
    assert_eq!(seen.events, [("Normal".into(), "WaitForFirstConsumer".into(), None)]);
}

// ---------------------------------------------------------------------------------------------
// The controller's CA (start-up and renewal, `kube::ca::ensure_ca`).

const CA_NS: &str = "diskplane";
const CA_SECRET: &str = "/api/v1/namespaces/diskplane/secrets/diskplane-upload-ca";
const CA_BUNDLE: &str = "/api/v1/namespaces/diskplane/configmaps/diskplane-upload-ca-bundle";
const DAY: i64 = 86_400;

async fn ensure(expected: Vec<Expect>) -> Result<CertificateAuthority, controller::kube::Error> {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, expected));
    let client = Client::new(service, "default");
    let result = controller::kube::ca::ensure_ca(&client, CA_NS, Timestamp(NOW)).await;
    drop(client);
    let seen = server.await.expect("mock API server");
    assert!(seen.unexpected.is_empty(), "unexpected requests: {:#?}", seen.unexpected);
    assert!(seen.missing.is_empty(), "requests not made: {:#?}", seen.missing);
    result
}

/// `ca`'s Secret as the API server returns it (`data`, base64), at resourceVersion 3.
fn stored_ca_secret(ca: &CertificateAuthority) -> Value {
    let mut secret = controller::kube::ca::ca_secret(CA_NS, ca);
    let text = secret.string_data.take().expect("stringData");
    secret.data = Some(text.into_iter().map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes()))).collect());
    secret.metadata.resource_version = Some("3".into());
    serde_json::to_value(secret).expect("JSON")
}

fn certificates_in(pem: &Value) -> usize {
    pem.as_str().expect("PEM text").matches("-----BEGIN CERTIFICATE-----").count()
}

fn ca_annotations(not_before: i64) -> Value {
    json!({"diskplane.io/certificate-not-before": Timestamp(not_before).to_rfc3339(),
           "diskplane.io/certificate-not-after": Timestamp(not_before + 365 * DAY).to_rfc3339()})
}

#[tokio::test]
async fn a_missing_ca_is_created_and_its_bundle_published() {
    let ca = ensure(vec![
        expect(Method::GET, CA_SECRET, BodyCheck::Fields(vec![]))
            .reply(404, not_found("secrets \"diskplane-upload-ca\"")),
        expect(
            Method::POST,
            "/api/v1/namespaces/diskplane/secrets",
            BodyCheck::FieldsAndCheck(
                vec![
                    ("/metadata/name", json!("diskplane-upload-ca")),
                    ("/metadata/namespace", json!("diskplane")),
                    ("/metadata/annotations", ca_annotations(NOW)),
                    ("/type", json!("kubernetes.io/tls")),
                ],
                |secret| {
                    assert_eq!(keys_at(secret, "/stringData"), ["ca-bundle.crt", "tls.crt", "tls.key"]);
                    assert_eq!(certificates_in(&secret["stringData"]["ca-bundle.crt"]), 1);
                },
            ),
        )
        .created(),
        expect(Method::GET, CA_BUNDLE, BodyCheck::Fields(vec![]))
            .reply(404, not_found("configmaps \"diskplane-upload-ca-bundle\"")),
        expect(
            Method::POST,
            "/api/v1/namespaces/diskplane/configmaps",
            BodyCheck::FieldsAndCheck(vec![("/metadata/name", json!("diskplane-upload-ca-bundle"))], |map| {
                assert_eq!(keys_at(map, "/data"), ["ca-bundle.crt"]);
                assert_eq!(certificates_in(&map["data"]["ca-bundle.crt"]), 1);
            }),
        )
        .created(),
    ])
    .await
    .expect("a new CA");

    assert_eq!((ca.not_before(), ca.not_after()), (NOW, NOW + 365 * DAY));
}

#[tokio::test]
async fn a_valid_stored_ca_is_loaded_and_its_published_bundle_left_alone() {
    let stored = CertificateAuthority::generate(NOW - 10 * DAY, None).unwrap();
    let bundle = serde_json::to_value(controller::kube::ca::ca_bundle(CA_NS, &stored)).unwrap();

    let ca = ensure(vec![
        expect(Method::GET, CA_SECRET, BodyCheck::Fields(vec![])).reply(200, stored_ca_secret(&stored)),
        expect(Method::GET, CA_BUNDLE, BodyCheck::Fields(vec![])).reply(200, bundle),
    ])
    .await
    .expect("the stored CA");

    assert_eq!(ca.cert_pem(), stored.cert_pem());
    assert_eq!(ca.key_pem(), stored.key_pem());
}

#[tokio::test]
async fn a_ca_due_for_renewal_is_replaced_with_both_cas_in_the_bundle() {
    // 30 days left: inside the 60-day renewal window.
    let old = CertificateAuthority::generate(NOW - 335 * DAY, None).unwrap();
    let old_bundle = serde_json::to_value(controller::kube::ca::ca_bundle(CA_NS, &old)).unwrap();

    let ca = ensure(vec![
        expect(Method::GET, CA_SECRET, BodyCheck::Fields(vec![])).reply(200, stored_ca_secret(&old)),
        // A compare-and-swap replacement: the resourceVersion read.
        expect(
            Method::PUT,
            CA_SECRET,
            BodyCheck::FieldsAndCheck(
                vec![
                    ("/metadata/resourceVersion", json!("3")),
                    ("/metadata/annotations", ca_annotations(NOW)),
                ],
                |secret| assert_eq!(certificates_in(&secret["stringData"]["ca-bundle.crt"]), 2),
            ),
        ),
        expect(Method::GET, CA_BUNDLE, BodyCheck::Fields(vec![])).reply(200, old_bundle),
        expect(
            Method::PUT,
            CA_BUNDLE,
            BodyCheck::FieldsAndCheck(vec![], |map| {
                assert_eq!(certificates_in(&map["data"]["ca-bundle.crt"]), 2)
            }),
        ),
    ])
    .await
    .expect("a renewed CA");

    assert_eq!(ca.not_before(), NOW);
    assert!(ca.bundle_pem().starts_with(ca.cert_pem()) && ca.bundle_pem().ends_with(old.cert_pem()));
}

#[tokio::test]
async fn a_stored_ca_without_its_validity_annotations_is_replaced() {
    let broken = CertificateAuthority::generate(NOW, None).unwrap();
    let mut secret = stored_ca_secret(&broken);
    secret["metadata"].as_object_mut().unwrap().remove("annotations");

    let ca = ensure(vec![
        expect(Method::GET, CA_SECRET, BodyCheck::Fields(vec![])).reply(200, secret),
        expect(
            Method::PUT,
            CA_SECRET,
            BodyCheck::FieldsAndCheck(vec![("/metadata/annotations", ca_annotations(NOW))], |secret| {
                // Nothing usable to carry over.
                assert_eq!(certificates_in(&secret["stringData"]["ca-bundle.crt"]), 1);
            }),
        ),
        expect(Method::GET, CA_BUNDLE, BodyCheck::Fields(vec![]))
            .reply(404, not_found("configmaps \"diskplane-upload-ca-bundle\"")),
        expect(Method::POST, "/api/v1/namespaces/diskplane/configmaps", BodyCheck::Fields(vec![])).created(),
    ])
    .await
    .expect("a new CA");

    assert_ne!(ca.cert_pem(), broken.cert_pem());
}

#[tokio::test]
async fn a_lost_renewal_race_fails_naming_the_secret() {
    let old = CertificateAuthority::generate(NOW - 335 * DAY, None).unwrap();

    let err = ensure(vec![
        expect(Method::GET, CA_SECRET, BodyCheck::Fields(vec![])).reply(200, stored_ca_secret(&old)),
        expect(Method::PUT, CA_SECRET, BodyCheck::Fields(vec![])).reply(
            409,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 409,
                   "message": "the object has been modified", "reason": "Conflict"}),
        ),
    ])
    .await
    .unwrap_err();

    let text = err.to_string();
    assert!(text.contains("renewing the CA in Secret diskplane/diskplane-upload-ca"), "{text}");
}
