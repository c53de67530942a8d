//! The kube driver's catalog controllers (DataSource, DataImportCron, StorageProfile) against
//! the mock API server (`common`), scenario by scenario: the informer caches hold the observed
//! world, the mock asserts every request a reconcile makes, in order, with its body.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BodyCheck, Expect, expect, fill, serve};
use controller::api::Timestamp;
use controller::kube::catalog::{CatalogContext, DigestSource, RegistryAccess, cron, datasource};
use controller::kube::resource::{
    DataImportCronObject, DataSourceObject, DataVolumeObject, StorageProfileObject, data_import_crons,
    data_sources, data_volumes, storage_profiles,
};
use controller::kube::storageprofile::{self, ProfileContext};
use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector::store::Writer;
use serde_json::{Value, json};

const NOW: i64 = 1_795_336_088;
const NOW_TEXT: &str = "2026-11-22T08:28:08Z";
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const IMPORT: &str = "fedora-0123456789ab";
const CRON: &str = "/apis/cdi.kubevirt.io/v1beta1/namespaces/os/dataimportcrons/fedora-cron";
const CRON_STATUS: &str = "/apis/cdi.kubevirt.io/v1beta1/namespaces/os/dataimportcrons/fedora-cron/status";
const DVS: &str = "/apis/cdi.kubevirt.io/v1beta1/namespaces/os/datavolumes";
const DS: &str = "/apis/cdi.kubevirt.io/v1beta1/namespaces/os/datasources/fedora";
const DS_STATUS: &str = "/apis/cdi.kubevirt.io/v1beta1/namespaces/os/datasources/fedora/status";

/// A registry that answers every tag with one digest (or one error), recording the URLs and
/// the access each poll was given.
struct FixedDigest {
    answer: Result<String, String>,
    asked: Mutex<Vec<String>>,
    access: Mutex<Vec<RegistryAccess>>,
}

impl DigestSource for FixedDigest {
    fn digest<'a>(
        &'a self,
        url: &'a str,
        access: &'a RegistryAccess,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>> {
        self.asked.lock().expect("lock").push(url.to_owned());
        self.access.lock().expect("lock").push(access.clone());
        let answer = self.answer.clone();
        Box::pin(async move { answer })
    }
}

/// The observed world.
#[derive(Default)]
struct World {
    pvcs: Vec<Value>,
    data_volumes: Vec<Value>,
    data_sources: Vec<Value>,
    crons: Vec<Value>,
}

/// Builds the catalog context over `world`, the mock serving `expected`.
fn context(
    world: &World,
    digest: Result<String, String>,
    expected: Vec<Expect>,
) -> (Arc<CatalogContext>, Arc<FixedDigest>, tokio::task::JoinHandle<common::Seen>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, expected));
    let digests = Arc::new(FixedDigest {
        answer: digest,
        asked: Mutex::new(Vec::new()),
        access: Mutex::new(Vec::new()),
    });
    let ctx = Arc::new(CatalogContext {
        client: Client::new(service, "default"),
        pvcs: fill::<PersistentVolumeClaim>(Writer::new(()), &world.pvcs),
        data_volumes: fill::<DataVolumeObject>(Writer::new(data_volumes()), &world.data_volumes),
        data_sources: fill::<DataSourceObject>(Writer::new(data_sources()), &world.data_sources),
        crons: fill::<DataImportCronObject>(Writer::new(data_import_crons()), &world.crons),
        digests: digests.clone(),
        now: || Timestamp(NOW),
    });
    (ctx, digests, server)
}

async fn finish(server: tokio::task::JoinHandle<common::Seen>) {
    // The context (the last client) is dropped by now: the mock's request stream ends.
    let seen = server.await.expect("mock API server");
    assert!(seen.unexpected.is_empty(), "unexpected requests: {:#?}", seen.unexpected);
    assert!(seen.missing.is_empty(), "requests not made: {:#?}", seen.missing);
}

/// One DataImportCron reconcile; returns its action and the URLs polled.
async fn run_cron(
    world: World,
    digest: Result<String, String>,
    expected: Vec<Expect>,
) -> (Action, Vec<String>) {
    let (action, asked, _) = run_cron_with_access(world, digest, expected).await;
    (action, asked)
}

/// [`run_cron`], also returning the [`RegistryAccess`] of each poll.
async fn run_cron_with_access(
    world: World,
    digest: Result<String, String>,
    expected: Vec<Expect>,
) -> (Action, Vec<String>, Vec<RegistryAccess>) {
    let (ctx, digests, server) = context(&world, digest, expected);
    let object: DataImportCronObject = serde_json::from_value(world.crons[0].clone()).expect("fixture cron");
    let action = cron::reconcile(Arc::new(object), ctx).await.expect("reconcile");
    finish(server).await;
    let asked = digests.asked.lock().expect("lock").clone();
    let access = digests.access.lock().expect("lock").clone();
    (action, asked, access)
}

/// One DataSource reconcile of the first DataSource of `world`.
async fn run_data_source(world: World, expected: Vec<Expect>) -> Action {
    let (ctx, _, server) = context(&world, Err("no registry".into()), expected);
    let object: DataSourceObject = serde_json::from_value(world.data_sources[0].clone()).expect("fixture");
    let action = datasource::reconcile(Arc::new(object), ctx).await.expect("reconcile");
    finish(server).await;
    action
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": NOW_TEXT})
}

fn cron_object(annotations: Value, extra_spec: Value) -> Value {
    let mut cron = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataImportCron",
        "metadata": {"name": "fedora-cron", "namespace": "os", "uid": "cron-uid", "annotations": annotations},
        "spec": {
            "schedule": "0 */12 * * *",
            "managedDataSource": "fedora",
            "template": {"spec": {
                "source": {"registry": {"url": "docker://registry.example:5000/fedora:40"}},
                "storage": {"resources": {"requests": {"storage": "10Gi"}}}
            }}
        }
    });
    if let (Some(spec), Some(extra)) = (cron["spec"].as_object_mut(), extra_spec.as_object()) {
        spec.extend(extra.clone());
    }
    cron
}

fn import(name: &str, digest: &str, phase: &str, last_use: &str) -> Value {
    json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": name, "namespace": "os", "uid": format!("uid-{name}"),
            "labels": {"cdi.kubevirt.io/dataImportCron": "fedora-cron"},
            "annotations": {"cdi.kubevirt.io/storage.import.lastUseTime": last_use}},
        "spec": {"source": {"registry": {"url": format!("docker://registry.example:5000/fedora@{digest}")}}},
        "status": {"phase": phase}
    })
}

fn data_source(source: Value, labels: Value) -> Value {
    json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource",
        "metadata": {"name": "fedora", "namespace": "os", "uid": "ds-uid", "labels": labels},
        "spec": {"source": source}
    })
}

/// The annotations of a cron polled a minute ago that found `DIGEST`.
fn polled_annotations() -> Value {
    json!({
        "cdi.kubevirt.io/storage.import.lastCronTime": "2026-11-22T08:27:00Z",
        "cdi.kubevirt.io/storage.import.sourceDesiredDigest": DIGEST,
    })
}

/// 2026-11-22T12:00:00Z, the next `0 */12 * * *`, from [`NOW`].
const UNTIL_NEXT_POLL: Duration = Duration::from_secs(12_712);

#[tokio::test]
async fn a_cron_with_a_new_digest_creates_the_data_volume_pinned_to_it() {
    let world = World { crons: vec![cron_object(json!({}), json!({}))], ..World::default() };
    let (action, asked) = run_cron(
        world,
        Ok(DIGEST.to_owned()),
        vec![
            patch(CRON,
                BodyCheck::Exact(json!({"metadata": {"annotations": {
                    "cdi.kubevirt.io/storage.import.lastCronTime": NOW_TEXT,
                    "cdi.kubevirt.io/storage.import.nextCronTime": "2026-11-22T12:00:00Z",
                    "cdi.kubevirt.io/storage.import.sourceDesiredDigest": DIGEST,
                }}})),
            ),
            patch(CRON_STATUS,
                BodyCheck::Exact(json!({"status": {
                    "currentImports": [{"DataVolumeName": IMPORT, "Digest": DIGEST}],
                    "lastExecutionTimestamp": NOW_TEXT,
                    "conditions": [
                        condition("Polled", "True", "Polled", &format!("Source digest {DIGEST}")),
                        condition("UpToDate", "False", "Outdated", "Import is outdated"),
                        condition("Progressing", "False", "ImportScheduled", "Import is scheduled"),
                    ],
                }})),
            ),
            expect(
                Method::POST,
                DVS,
                BodyCheck::Exact(json!({
                    "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                    "metadata": {"name": IMPORT, "namespace": "os",
                        "labels": {"cdi.kubevirt.io/dataImportCron": "fedora-cron"},
                        "annotations": {
                            "cdi.kubevirt.io/storage.bind.immediate.requested": "true",
                            "cdi.kubevirt.io/storage.import.lastUseTime": NOW_TEXT,
                        }},
                    "spec": {
                        "source": {"registry": {"url": format!("docker://registry.example:5000/fedora@{DIGEST}")}},
                        "storage": {"resources": {"requests": {"storage": "10Gi"}}}
                    }
                })),
            )
            .created(),
        ],
    )
    .await;
    assert_eq!(asked, vec!["docker://registry.example:5000/fedora:40".to_owned()]);
    assert_eq!(action, Action::requeue(UNTIL_NEXT_POLL));
}

#[tokio::test]
async fn a_failed_poll_is_recorded_and_nothing_is_imported() {
    let world = World { crons: vec![cron_object(json!({}), json!({}))], ..World::default() };
    let failure = "polling docker://registry.example:5000/fedora:40: connection refused";
    let (action, _) = run_cron(
        world,
        Err(failure.to_owned()),
        vec![
            patch(
                CRON,
                BodyCheck::FieldsAndAbsent(
                    vec![(
                        "/metadata/annotations/cdi.kubevirt.io~1storage.import.lastCronTime",
                        json!(NOW_TEXT),
                    )],
                    vec!["/metadata/annotations/cdi.kubevirt.io~1storage.import.sourceDesiredDigest"],
                ),
            ),
            patch(
                CRON_STATUS,
                BodyCheck::Exact(json!({"status": {
                    "lastExecutionTimestamp": NOW_TEXT,
                    "conditions": [
                        condition("Polled", "False", "PollFailed", failure),
                        condition("UpToDate", "False", "NoDigest", "No source digest"),
                        condition("Progressing", "False", "NoDigest", "No source digest"),
                    ],
                }})),
            ),
        ],
    )
    .await;
    assert_eq!(action, Action::requeue(UNTIL_NEXT_POLL));
}

/// A cron whose registry source names a Secret and a ConfigMap.
fn private_registry_cron() -> Value {
    let mut cron = cron_object(json!({}), json!({}));
    cron["spec"]["template"]["spec"]["source"]["registry"]["secretRef"] = json!("reg-creds");
    cron["spec"]["template"]["spec"]["source"]["registry"]["certConfigMap"] = json!("reg-ca");
    cron
}

const SECRET: &str = "/api/v1/namespaces/os/secrets/reg-creds";
const CONFIG_MAP: &str = "/api/v1/namespaces/os/configmaps/reg-ca";

fn not_found(kind: &str, name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound",
        "message": format!("{kind} \"{name}\" not found")})
}

#[tokio::test]
async fn a_private_registry_is_polled_with_the_secret_and_config_map_of_the_template() {
    let world = World { crons: vec![private_registry_cron()], ..World::default() };
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "reg-creds", "namespace": "os"},
        // base64 of "robot" and "s3cret"
        "data": {"accessKeyId": "cm9ib3Q=", "secretKey": "czNjcmV0"}});
    let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "reg-ca", "namespace": "os"},
        "data": {"b.crt": "PEM B", "a.crt": "PEM A"}});
    let (_, asked, access) = run_cron_with_access(
        world,
        Ok(DIGEST.to_owned()),
        vec![
            expect(Method::GET, SECRET, BodyCheck::Exact(Value::Null)).reply(200, secret),
            expect(Method::GET, CONFIG_MAP, BodyCheck::Exact(Value::Null)).reply(200, config_map),
            patch(
                CRON,
                BodyCheck::Fields(vec![(
                    "/metadata/annotations/cdi.kubevirt.io~1storage.import.sourceDesiredDigest",
                    json!(DIGEST),
                )]),
            ),
            patch(CRON_STATUS, BodyCheck::Fields(vec![])),
            expect(Method::POST, DVS, BodyCheck::Fields(vec![("/metadata/name", json!(IMPORT))])).created(),
        ],
    )
    .await;
    assert_eq!(asked, vec!["docker://registry.example:5000/fedora:40".to_owned()]);
    assert_eq!(
        access,
        vec![RegistryAccess {
            username: Some("robot".into()),
            password: Some("s3cret".into()),
            ca_pems: vec!["PEM A".into(), "PEM B".into()],
        }]
    );
}

#[tokio::test]
async fn a_missing_registry_secret_fails_the_poll_naming_it_and_the_registry_is_not_asked() {
    let world = World { crons: vec![private_registry_cron()], ..World::default() };
    let message = "secretRef \"reg-creds\": Secret os/reg-creds not found";
    let (_, asked) = run_cron(
        world,
        Ok(DIGEST.to_owned()),
        vec![
            expect(Method::GET, SECRET, BodyCheck::Exact(Value::Null))
                .reply(404, not_found("secrets", "reg-creds")),
            patch(
                CRON,
                BodyCheck::FieldsAndAbsent(
                    vec![],
                    vec!["/metadata/annotations/cdi.kubevirt.io~1storage.import.sourceDesiredDigest"],
                ),
            ),
            patch(
                CRON_STATUS,
                BodyCheck::Fields(vec![(
                    "/status/conditions/0",
                    condition("Polled", "False", "PollFailed", message),
                )]),
            ),
        ],
    )
    .await;
    assert!(asked.is_empty(), "the registry was polled without its credentials: {asked:?}");
}

#[tokio::test]
async fn a_secret_without_the_access_key_and_an_empty_config_map_fail_the_poll_naming_the_key() {
    for (secret_data, config_map_data, message) in [
        (
            json!({"secretKey": "czNjcmV0"}),
            None,
            "secretRef \"reg-creds\": Secret os/reg-creds has no key \"accessKeyId\"",
        ),
        (
            json!({"accessKeyId": "cm9ib3Q=", "secretKey": "czNjcmV0"}),
            Some(json!({})),
            "certConfigMap \"reg-ca\": ConfigMap os/reg-ca holds no certificates",
        ),
    ] {
        let world = World { crons: vec![private_registry_cron()], ..World::default() };
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "reg-creds", "namespace": "os"}, "data": secret_data});
        let mut expected =
            vec![expect(Method::GET, SECRET, BodyCheck::Exact(Value::Null)).reply(200, secret)];
        if let Some(data) = config_map_data {
            let map = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "reg-ca", "namespace": "os"}, "data": data});
            expected.push(expect(Method::GET, CONFIG_MAP, BodyCheck::Exact(Value::Null)).reply(200, map));
        }
        expected.push(patch(CRON, BodyCheck::Fields(vec![])));
        expected.push(patch(
            CRON_STATUS,
            BodyCheck::Fields(vec![(
                "/status/conditions/0",
                condition("Polled", "False", "PollFailed", message),
            )]),
        ));
        let (_, asked) = run_cron(world, Ok(DIGEST.to_owned()), expected).await;
        assert!(asked.is_empty(), "{message}: the registry was polled: {asked:?}");
    }
}

#[tokio::test]
async fn a_succeeded_import_repoints_the_data_source_and_marks_its_use() {
    let world = World {
        crons: vec![cron_object(polled_annotations(), json!({"importsToKeep": 1}))],
        data_volumes: vec![
            import(IMPORT, DIGEST, "Succeeded", "2026-11-22T08:00:00Z"),
            import("fedora-aaaaaaaaaaaa", "sha256:aaaaaaaaaaaa", "Succeeded", "2026-11-01T00:00:00Z"),
        ],
        data_sources: vec![data_source(
            json!({"pvc": {"namespace": "os", "name": "fedora-aaaaaaaaaaaa"}}),
            json!({"cdi.kubevirt.io/dataImportCron": "fedora-cron"}),
        )],
        ..World::default()
    };
    let (action, asked) = run_cron(
        world,
        Err("not polled".into()),
        vec![
            patch(CRON_STATUS,
                BodyCheck::Exact(json!({"status": {
                    "currentImports": [{"DataVolumeName": IMPORT, "Digest": DIGEST}],
                    "lastImportedPVC": {"namespace": "os", "name": IMPORT},
                    "lastImportTimestamp": NOW_TEXT,
                    "sourceFormat": "pvc",
                    "conditions": [
                        condition("UpToDate", "True", "UpToDate", "Latest import is up to date"),
                        condition("Progressing", "False", "NoImport", "No current import"),
                    ],
                }})),
            ),
            patch(const_format(DVS, IMPORT),
                BodyCheck::Exact(json!({"metadata": {"annotations": {
                    "cdi.kubevirt.io/storage.import.lastUseTime": NOW_TEXT
                }}})),
            ),
            patch(DS,
                BodyCheck::Exact(json!({
                    "metadata": {"labels": {
                        "cdi.kubevirt.io/dataImportCron": "fedora-cron",
                        "cdi.kubevirt.io/dataImportCron.cleanup": null
                    }},
                    "spec": {"source": {"pvc": {"namespace": "os", "name": IMPORT}, "snapshot": null, "dataSource": null}}
                })),
            ),
        ],
    )
    .await;
    // Polled a minute ago: the next poll is the schedule's, and no registry is asked.
    assert!(asked.is_empty());
    assert_eq!(action, Action::requeue(UNTIL_NEXT_POLL));
}

#[tokio::test]
async fn a_missing_managed_data_source_is_created_pointing_at_the_import() {
    let world = World {
        crons: vec![cron_object(polled_annotations(), json!({}))],
        data_volumes: vec![import(IMPORT, DIGEST, "Succeeded", "2026-11-22T08:00:00Z")],
        ..World::default()
    };
    run_cron(
        world,
        Err("not polled".into()),
        vec![
            patch(CRON_STATUS, BodyCheck::Fields(vec![("/status/lastImportTimestamp", json!(NOW_TEXT))])),
            patch(
                const_format(DVS, IMPORT),
                BodyCheck::Exact(json!({"metadata": {"annotations": {
                    "cdi.kubevirt.io/storage.import.lastUseTime": NOW_TEXT
                }}})),
            ),
            expect(
                Method::POST,
                "/apis/cdi.kubevirt.io/v1beta1/namespaces/os/datasources",
                BodyCheck::Exact(json!({
                    "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource",
                    "metadata": {"name": "fedora", "namespace": "os",
                        "labels": {"cdi.kubevirt.io/dataImportCron": "fedora-cron"}},
                    "spec": {"source": {"pvc": {"namespace": "os", "name": IMPORT}}}
                })),
            )
            .created(),
        ],
    )
    .await;
}

#[tokio::test]
async fn with_imports_to_keep_one_the_older_import_is_deleted() {
    let up_to_date = json!({
        "currentImports": [{"DataVolumeName": IMPORT, "Digest": DIGEST}],
        "lastImportedPVC": {"namespace": "os", "name": IMPORT},
        "lastImportTimestamp": NOW_TEXT,
        "sourceFormat": "pvc",
        "conditions": [
            condition("UpToDate", "True", "UpToDate", "Latest import is up to date"),
            condition("Progressing", "False", "NoImport", "No current import"),
        ],
    });
    let mut cron = cron_object(polled_annotations(), json!({"importsToKeep": 1}));
    cron["status"] = up_to_date;
    let world = World {
        crons: vec![cron],
        data_volumes: vec![
            import(IMPORT, DIGEST, "Succeeded", NOW_TEXT),
            import("fedora-aaaaaaaaaaaa", "sha256:aaaaaaaaaaaa", "Succeeded", "2026-11-01T00:00:00Z"),
        ],
        data_sources: vec![data_source(
            json!({"pvc": {"namespace": "os", "name": IMPORT}}),
            json!({"cdi.kubevirt.io/dataImportCron": "fedora-cron"}),
        )],
        ..World::default()
    };
    let (action, _) = run_cron(
        world,
        Err("not polled".into()),
        vec![
            expect(
                Method::DELETE,
                const_format(DVS, "fedora-aaaaaaaaaaaa"),
                BodyCheck::Fields(vec![("/propagationPolicy", json!("Background"))]),
            )
            .reply(200, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
        ],
    )
    .await;
    assert_eq!(action, Action::requeue(UNTIL_NEXT_POLL));
}

#[tokio::test]
async fn a_retention_policy_none_cron_gets_the_finalizer_and_cleans_up_when_deleted() {
    // Created: the finalizer first (nothing polled in this reconcile: the registry fails).
    let cron = cron_object(polled_annotations(), json!({"retentionPolicy": "None"}));
    let world = World { crons: vec![cron.clone()], ..World::default() };
    let (ctx, _, server) = context(
        &world,
        Err("unused".into()),
        vec![
            patch(
                CRON,
                BodyCheck::Exact(
                    json!({"metadata": {"finalizers": ["cdi.kubevirt.io/dataImportCronFinalizer"]}}),
                ),
            ),
            patch(CRON_STATUS, BodyCheck::Fields(vec![])),
            expect(
                Method::POST,
                DVS,
                BodyCheck::Fields(vec![(
                    "/metadata/labels/cdi.kubevirt.io~1dataImportCron.cleanup",
                    json!("true"),
                )]),
            )
            .created(),
        ],
    );
    let object: DataImportCronObject = serde_json::from_value(cron.clone()).expect("fixture");
    cron::reconcile(Arc::new(object), ctx).await.expect("reconcile");
    finish(server).await;

    // Deleted: its labelled import and DataSource go, then the finalizer.
    let mut deleted = cron;
    deleted["metadata"]["finalizers"] = json!(["cdi.kubevirt.io/dataImportCronFinalizer"]);
    deleted["metadata"]["deletionTimestamp"] = json!(NOW_TEXT);
    let cleanup = json!({"cdi.kubevirt.io/dataImportCron": "fedora-cron", "cdi.kubevirt.io/dataImportCron.cleanup": "true"});
    let mut labelled = import(IMPORT, DIGEST, "Succeeded", NOW_TEXT);
    labelled["metadata"]["labels"] = cleanup.clone();
    let kept = import("fedora-aaaaaaaaaaaa", "sha256:aaaaaaaaaaaa", "Succeeded", NOW_TEXT);
    let world = World {
        crons: vec![deleted.clone()],
        data_volumes: vec![labelled, kept],
        data_sources: vec![data_source(json!({"pvc": {"namespace": "os", "name": IMPORT}}), cleanup)],
        ..World::default()
    };
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Success"});
    let (ctx, _, server) = context(
        &world,
        Err("unused".into()),
        vec![
            expect(Method::DELETE, const_format(DVS, IMPORT), BodyCheck::Fields(vec![]))
                .reply(200, status.clone()),
            expect(Method::DELETE, DS, BodyCheck::Fields(vec![])).reply(200, status),
            patch(CRON, BodyCheck::Exact(json!({"metadata": {"finalizers": []}}))),
        ],
    );
    let object: DataImportCronObject = serde_json::from_value(deleted).expect("fixture");
    let action = cron::reconcile(Arc::new(object), ctx).await.expect("reconcile");
    finish(server).await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_data_source_whose_import_succeeded_is_ready() {
    let world = World {
        data_sources: vec![data_source(json!({"pvc": {"namespace": "os", "name": IMPORT}}), json!({}))],
        data_volumes: vec![import(IMPORT, DIGEST, "Succeeded", NOW_TEXT)],
        ..World::default()
    };
    let action = run_data_source(
        world,
        vec![patch(
            DS_STATUS,
            BodyCheck::Exact(json!({"status": {
                "source": {"pvc": {"namespace": "os", "name": IMPORT}},
                "conditions": [condition("Ready", "True", "Ready", "DataSource is ready to be consumed")],
            }})),
        )],
    )
    .await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_data_source_whose_import_runs_is_not_ready_with_the_phase_as_reason() {
    let world = World {
        data_sources: vec![data_source(json!({"pvc": {"name": IMPORT}}), json!({}))],
        data_volumes: vec![import(IMPORT, DIGEST, "ImportInProgress", NOW_TEXT)],
        ..World::default()
    };
    run_data_source(
        world,
        vec![patch(DS_STATUS,
            BodyCheck::Exact(json!({"status": {
                "source": null,
                "conditions": [condition("Ready", "False", "ImportInProgress", "Import DataVolume phase ImportInProgress")],
            }})),
        )],
    )
    .await;
}

#[tokio::test]
async fn a_data_source_chained_to_a_ready_one_reports_the_resolved_pvc() {
    let mut tip = data_source(json!({"dataSource": {"name": "base"}}), json!({}));
    tip["metadata"]["name"] = json!("fedora");
    let mut base = data_source(json!({"pvc": {"name": "golden"}}), json!({}));
    base["metadata"]["name"] = json!("base");
    let world = World {
        data_sources: vec![tip, base],
        pvcs: vec![json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "golden", "namespace": "os"}, "status": {"phase": "Bound"}})],
        ..World::default()
    };
    run_data_source(
        world,
        vec![patch(
            DS_STATUS,
            BodyCheck::Exact(json!({"status": {
                "source": {"pvc": {"namespace": "", "name": "golden"}},
                "conditions": [condition("Ready", "True", "Ready", "DataSource is ready to be consumed")],
            }})),
        )],
    )
    .await;
}

#[tokio::test]
async fn a_data_source_with_a_missing_pvc_is_not_found_and_a_ready_one_is_left_alone() {
    let world = World {
        data_sources: vec![data_source(json!({"pvc": {"name": "gone"}}), json!({}))],
        ..World::default()
    };
    run_data_source(
        world,
        vec![patch(
            DS_STATUS,
            BodyCheck::Exact(json!({"status": {
                "source": null,
                "conditions": [condition("Ready", "False", "NotFound", "PVC not found")],
            }})),
        )],
    )
    .await;
    // Already in step: no request at all.
    let mut ds = data_source(json!({"pvc": {"namespace": "os", "name": IMPORT}}), json!({}));
    ds["status"] = json!({"source": {"pvc": {"namespace": "os", "name": IMPORT}},
        "conditions": [condition("Ready", "True", "Ready", "DataSource is ready to be consumed")]});
    let world = World {
        data_sources: vec![ds],
        data_volumes: vec![import(IMPORT, DIGEST, "Succeeded", NOW_TEXT)],
        ..World::default()
    };
    run_data_source(world, vec![]).await;
}

#[tokio::test]
async fn a_data_source_with_a_snapshot_source_waits_until_it_is_ready_to_use() {
    let world = World {
        data_sources: vec![data_source(json!({"snapshot": {"namespace": "os", "name": "snap"}}), json!({}))],
        ..World::default()
    };
    let snapshot = json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": "snap", "namespace": "os"}, "spec": {}, "status": {"readyToUse": false}});
    let action = run_data_source(
        world,
        vec![
            expect(
                Method::GET,
                "/apis/snapshot.storage.k8s.io/v1/namespaces/os/volumesnapshots/snap",
                BodyCheck::Exact(Value::Null),
            )
            .reply(200, snapshot),
            patch(DS_STATUS,
                BodyCheck::Exact(json!({"status": {
                    "source": null,
                    "conditions": [condition("Ready", "False", "SnapshotNotReady", "Snapshot phase is not ready")],
                }})),
            ),
        ],
    )
    .await;
    assert_eq!(action, Action::requeue(datasource::SNAPSHOT_RECHECK));
}

/// One StorageProfile reconcile of `class` with `profiles` cached.
async fn run_profile(class: Value, profiles: Vec<Value>, expected: Vec<Expect>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, expected));
    let ctx = Arc::new(ProfileContext {
        client: Client::new(service, "default"),
        profiles: fill::<StorageProfileObject>(Writer::new(storage_profiles()), &profiles),
    });
    let class: StorageClass = serde_json::from_value(class).expect("fixture class");
    let action = storageprofile::reconcile(Arc::new(class), ctx).await.expect("reconcile");
    finish(server).await;
    assert_eq!(action, Action::await_change());
}

fn storage_class(name: &str, provisioner: &str) -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name, "uid": format!("uid-{name}")}, "provisioner": provisioner})
}

#[tokio::test]
async fn a_storage_class_with_a_known_provisioner_gets_its_storage_profile() {
    run_profile(
        storage_class("ceph-rbd", "rbd.csi.ceph.com"),
        vec![],
        vec![
            expect(
                Method::POST,
                "/apis/cdi.kubevirt.io/v1beta1/storageprofiles",
                BodyCheck::Exact(json!({
                    "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "StorageProfile",
                    "metadata": {"name": "ceph-rbd", "ownerReferences": [{
                        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                        "name": "ceph-rbd", "uid": "uid-ceph-rbd", "controller": true
                    }]},
                    "spec": {}
                })),
            )
            .created(),
            patch(
                "/apis/cdi.kubevirt.io/v1beta1/storageprofiles/ceph-rbd/status",
                BodyCheck::Exact(json!({"status": {
                    "storageClass": "ceph-rbd",
                    "provisioner": "rbd.csi.ceph.com",
                    "cloneStrategy": "csi-clone",
                    "dataImportCronSourceFormat": "snapshot",
                    "claimPropertySets": [
                        {"accessModes": ["ReadWriteMany"], "volumeMode": "Block"},
                        {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block"},
                        {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"},
                    ],
                }})),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn an_unknown_provisioner_gets_an_empty_status_and_spec_overrides_are_honoured() {
    let profile = |spec: Value, status: Option<Value>| {
        let mut p = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "StorageProfile",
            "metadata": {"name": "odd"}, "spec": spec});
        if let Some(status) = status {
            p["status"] = status;
        }
        p
    };
    run_profile(
        storage_class("odd", "example.com/odd"),
        vec![profile(json!({}), None)],
        vec![patch(
            "/apis/cdi.kubevirt.io/v1beta1/storageprofiles/odd/status",
            BodyCheck::Exact(json!({"status": {"storageClass": "odd", "provisioner": "example.com/odd"}})),
        )],
    )
    .await;
    let spec = json!({"claimPropertySets": [{"accessModes": ["ReadWriteMany"], "volumeMode": "Filesystem"}],
        "cloneStrategy": "copy"});
    run_profile(
        storage_class("odd", "example.com/odd"),
        vec![profile(spec, Some(json!({"storageClass": "odd", "provisioner": "example.com/odd"})))],
        vec![patch(
            "/apis/cdi.kubevirt.io/v1beta1/storageprofiles/odd/status",
            BodyCheck::Exact(json!({"status": {
                "storageClass": "odd", "provisioner": "example.com/odd", "cloneStrategy": "copy",
                "claimPropertySets": [{"accessModes": ["ReadWriteMany"], "volumeMode": "Filesystem"}],
            }})),
        )],
    )
    .await;
    // In step: nothing to do.
    run_profile(
        storage_class("odd", "example.com/odd"),
        vec![profile(json!({}), Some(json!({"storageClass": "odd", "provisioner": "example.com/odd"})))],
        vec![],
    )
    .await;
}

/// An expected merge patch; the mock answers with a minimal object of the patched kind (what
/// kube-rs deserializes the answer into).
fn patch(path: &'static str, body: BodyCheck) -> Expect {
    let reply = if path.contains("/dataimportcrons/") {
        cron_object(json!({}), json!({}))
    } else if path.contains("/datasources/") {
        data_source(json!({}), json!({}))
    } else if path.contains("/datavolumes/") {
        import(IMPORT, DIGEST, "Succeeded", NOW_TEXT)
    } else {
        json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "StorageProfile", "metadata": {"name": "p"}, "spec": {}})
    };
    expect(Method::PATCH, path, body).reply(200, reply)
}

/// `collection/name` as a `'static` path for [`expect`].
fn const_format(collection: &str, name: &str) -> &'static str {
    Box::leak(format!("{collection}/{name}").into_boxed_str())
}
