//! The generated CRDs against the world: every CDI example manifest of our kinds validates
//! against them, wrong types are refused, the schemas are structural, `deploy/crds/` is what
//! the generator prints, and `deploy/` passes an offline check (kinds, references, RBAC equal to
//! `kube::crd::rbac`, pods meeting the restricted Pod Security Standard, every document surviving
//! a round trip through its k8s-openapi type: the offline stand-in for `kubectl apply
//! --dry-run=client`, which needs an API server).
//!
//! `shared/` is a sibling of the repository root (`/work/shared` beside `/work/main`, and
//! beside the clone in CI), as for `cdi_examples.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use controller::kube::crd::{self, KINDS, pss, rbac, schema, validate};
use serde_json::{Value, json};

fn examples_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/cdi-examples")).to_path_buf()
}

fn deploy_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")).to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_documents(text: &str) -> Result<Vec<Value>, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The root schema of a kind, as JSON.
fn schema_of(kind: &str) -> Value {
    KINDS.iter().find(|k| k.kind == kind).unwrap_or_else(|| panic!("no CRD for {kind}")).root_schema()
}

fn sorted_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    files.sort();
    files
}

// ---- the schemas themselves -------------------------------------------------------------

#[test]
fn generated_schemas_are_structural_and_survive_the_k8s_openapi_types() {
    let crds = crd::crds().expect("CRDs");
    assert_eq!(crds.len(), 4);
    for (kind, definition) in KINDS.iter().zip(&crds) {
        let ours = kind.root_schema();
        assert_eq!(schema::structural_problems(&ours), Vec::<String>::new(), "{}", kind.kind);
        assert!(!ours.to_string().contains("$ref"), "{}: $ref left", kind.kind);
        // Nothing was dropped on the way through JSONSchemaProps (an unknown key would be).
        let typed = definition.spec.versions[0].schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref());
        assert_eq!(serde_json::to_value(typed).expect("JSON"), ours, "{}", kind.kind);
        assert_eq!(ours.pointer("/properties/metadata"), Some(&json!({"type": "object"})));
    }
}

#[test]
fn names_columns_and_scopes_are_cdis() {
    let crds = crd::crds().expect("CRDs");
    let by_kind: BTreeMap<&str, &_> = crds.iter().map(|c| (c.spec.names.kind.as_str(), c)).collect();
    let dv = by_kind["DataVolume"];
    assert_eq!(dv.metadata.name.as_deref(), Some("datavolumes.cdi.kubevirt.io"));
    assert_eq!(dv.spec.names.short_names, Some(vec!["dv".to_owned(), "dvs".to_owned()]));
    assert_eq!(dv.spec.names.categories, Some(vec!["all".to_owned()]));
    let version = &dv.spec.versions[0];
    assert_eq!((version.name.as_str(), version.served, version.storage), ("v1beta1", true, true));
    assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
    let columns: Vec<(&str, &str, &str)> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.type_.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Phase", "string", ".status.phase"),
            ("Progress", "string", ".status.progress"),
            ("Restarts", "integer", ".status.restartCount"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ]
    );
    assert_eq!(by_kind["DataSource"].spec.names.short_names, Some(vec!["das".to_owned()]));
    assert_eq!(
        by_kind["DataImportCron"].spec.names.short_names,
        Some(vec!["dic".to_owned(), "dics".to_owned()])
    );
    let format =
        &by_kind["DataImportCron"].spec.versions[0].additional_printer_columns.as_ref().expect("columns")[0];
    assert_eq!((format.name.as_str(), format.json_path.as_str()), ("Format", ".status.sourceFormat"));
    assert_eq!(by_kind["StorageProfile"].spec.scope, "Cluster");
    for kind in ["DataVolume", "DataSource", "DataImportCron"] {
        assert_eq!(by_kind[kind].spec.scope, "Namespaced");
    }
}

#[test]
fn extra_maps_keep_unknown_fields_and_typed_structs_do_not() {
    let dv = schema_of("DataVolume");
    let preserve = |pointer: &str| dv.pointer(pointer).and_then(|s| s.get(schema::PRESERVE_UNKNOWN)).cloned();
    // `#[serde(flatten)] extra`: kept.
    assert_eq!(preserve("/properties/spec"), Some(json!(true)));
    assert_eq!(preserve("/properties/spec/properties/source"), Some(json!(true)));
    assert_eq!(preserve("/properties/spec/properties/source/properties/http"), Some(json!(true)));
    // No `extra`: CDI's strict shape.
    assert_eq!(preserve("/properties/spec/properties/sourceRef"), None);
    assert_eq!(preserve("/properties/status/properties/conditions/items"), None);
}

// ---- CDI's examples ---------------------------------------------------------------------

/// Documentation fragments whose text is not a valid object (`...` placeholders): the schema
/// must refuse them, with this problem.
const FRAGMENTS: &[(&str, &str)] = &[
    ("os-image-poll-and-update.block5.StorageProfile.yaml", ".metadata: expected object"),
    ("preallocation.block1.DataVolume.yaml", ".spec.source: expected object"),
];

/// Files that are not YAML at all (listed in shared/cdi-examples/README.md).
const NOT_YAML: &[&str] = &[
    "datavolume-claim-adoption.block2.CDI.yaml",
    "datavolumes.block17.DataVolume.yaml",
    "datavolumes.block6.DataVolume.yaml",
    "pvc-mutating-webhook-rendering.block1.CDI.yaml",
];

/// Validates every document of our kinds (and a VirtualMachine's DataVolume templates) in one
/// examples folder; returns how many documents were checked per kind.
fn validate_folder(folder: &str) -> BTreeMap<String, usize> {
    let mut checked = BTreeMap::new();
    let mut failures = Vec::new();
    for path in sorted_files(&examples_dir().join(folder)) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let docs = match yaml_documents(&read(&path)) {
            Ok(docs) => docs,
            Err(_) if NOT_YAML.contains(&name.as_str()) => continue,
            Err(e) => {
                failures.push(format!("{name}: not YAML: {e}"));
                continue;
            }
        };
        for doc in docs {
            let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
            let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
            let mut targets: Vec<(String, Value)> = Vec::new();
            if KINDS.iter().any(|k| k.kind == kind) && api_version == "cdi.kubevirt.io/v1beta1" {
                targets.push((kind.clone(), doc.clone()));
            }
            if kind == "VirtualMachine" {
                for template in
                    doc.pointer("/spec/dataVolumeTemplates").and_then(Value::as_array).into_iter().flatten()
                {
                    targets.push(("DataVolume".into(), template.clone()));
                }
            }
            for (kind, object) in targets {
                let outcome = validate::validate(&schema_of(&kind), &object);
                *checked.entry(kind.clone()).or_insert(0) += 1;
                let expected_problem = FRAGMENTS.iter().find(|(file, _)| *file == name).map(|(_, p)| *p);
                match (outcome, expected_problem) {
                    (Ok(()), None) => {}
                    (Err(problems), Some(expected)) if problems.iter().any(|p| p.contains(expected)) => {}
                    (outcome, expected) => {
                        failures.push(format!("{name} ({kind}): expected {expected:?}, got {outcome:?}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    checked
}

#[test]
fn every_cdi_example_manifest_validates_against_the_generated_crds() {
    let checked = validate_folder("manifests-example");
    // 16 DataVolume files + the VirtualMachine's template; no other kinds among the examples.
    assert_eq!(checked, BTreeMap::from([("DataVolume".to_owned(), 17)]));
}

#[test]
fn cdi_doc_snippets_validate_except_the_fragments() {
    let checked = validate_folder("doc-snippets");
    assert_eq!(
        checked,
        BTreeMap::from([
            ("DataImportCron".to_owned(), 3),
            // 15 DataVolume snippets, 2 of them not YAML.
            ("DataVolume".to_owned(), 13),
            ("StorageProfile".to_owned(), 4),
        ])
    );
}

fn example_data_volume() -> Value {
    let path = examples_dir().join("manifests-example/import-kubevirt-datavolume.yaml");
    yaml_documents(&read(&path)).expect("YAML").remove(0)
}

#[test]
fn a_wrong_type_is_refused_with_its_path() {
    let schema = schema_of("DataVolume");
    assert_eq!(validate::validate(&schema, &example_data_volume()), Ok(()));

    let mut dv = example_data_volume();
    dv["spec"]["source"]["http"]["url"] = json!(5);
    let problems = validate::validate(&schema, &dv).expect_err("url: 5 must be refused");
    assert_eq!(problems, vec![".spec.source.http.url: expected string, got 5".to_owned()]);
}

#[test]
fn quantities_enums_required_fields_and_strict_structs_are_enforced() {
    let schema = schema_of("DataVolume");
    let cases: &[(&str, Value, &str)] = &[
        ("/spec/storage/resources/requests/storage", json!(true), "expected an integer or a string"),
        ("/spec/storage/accessModes", json!("ReadWriteOnce"), "expected array"),
        ("/status/restartCount", json!("2"), ".status.restartCount: expected integer"),
        ("/status/restartCount", json!(4_294_967_296_i64), "does not fit int32"),
        ("/status/conditions", json!([{"type": "Ready", "status": "Maybe"}]), "is not one of"),
        ("/status/conditions", json!([{"status": "True"}]), "missing required field type"),
        (
            "/spec/sourceRef",
            json!({"kind": "DataSource", "name": "x", "bogus": 1}),
            ".spec.sourceRef.bogus: unknown field",
        ),
    ];
    for (pointer, value, expected) in cases {
        let mut dv = example_data_volume();
        set(&mut dv, pointer, value.clone());
        let problems = validate::validate(&schema, &dv).expect_err(pointer).join("\n");
        assert!(problems.contains(expected), "{pointer} = {value}: {expected:?} not in {problems}");
    }
    // Quantities are int-or-string; unknown fields under `extra` maps are kept.
    let mut dv = example_data_volume();
    set(&mut dv, "/spec/storage/resources/requests/storage", json!(1_073_741_824));
    set(&mut dv, "/spec/someFutureField", json!({"enabled": true}));
    assert_eq!(validate::validate(&schema, &dv), Ok(()));
}

/// Sets `pointer` in `value`, creating objects on the way.
fn set(value: &mut Value, pointer: &str, new: Value) {
    let mut at = value;
    for part in pointer.trim_start_matches('/').split('/') {
        if !at.is_object() {
            *at = json!({});
        }
        at = at.as_object_mut().expect("object").entry(part).or_insert(Value::Null);
    }
    *at = new;
}

// ---- deploy/ ----------------------------------------------------------------------------

#[test]
fn deploy_crds_are_what_the_generator_prints() {
    let dir = deploy_dir().join("crds");
    let crds = crd::crds().expect("CRDs");
    let expected: Vec<String> = crds.iter().map(crd::file_name).collect();
    let mut on_disk: Vec<String> = sorted_files(&dir)
        .iter()
        .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
        .collect();
    on_disk.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    assert_eq!(on_disk, sorted_expected, "deploy/crds/ holds exactly one file per CRD");
    for (definition, file) in crds.iter().zip(&expected) {
        let want = crd::crd_yaml(definition).expect("YAML");
        assert!(
            read(&dir.join(file)) == want,
            "deploy/crds/{file} is stale: regenerate with `diskplane crds --out-dir deploy/crds`"
        );
    }
    // And the stream `diskplane crds` prints is those files, in order.
    let stream: String = expected.iter().map(|f| format!("---\n{}", read(&dir.join(f)))).collect();
    assert_eq!(crd::all_yaml().expect("YAML"), stream);
}

/// Every document of `deploy/` (manifests and CRDs), with the file it came from.
fn deploy_documents() -> Vec<(String, Value)> {
    let root = deploy_dir();
    let mut docs = Vec::new();
    for dir in [root.clone(), root.join("crds")] {
        for path in sorted_files(&dir) {
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let shown = path.strip_prefix(&root).unwrap_or(&path).display().to_string();
            let parsed = yaml_documents(&read(&path)).unwrap_or_else(|e| panic!("{shown}: {e}"));
            docs.extend(parsed.into_iter().map(|d| (shown.clone(), d)));
        }
    }
    docs
}

/// (apiVersion, kind) → namespaced? for every kind `deploy/` may hold.
const DEPLOY_KINDS: &[(&str, &str, bool)] = &[
    ("v1", "Namespace", false),
    ("v1", "ServiceAccount", true),
    ("v1", "Service", true),
    ("apps/v1", "Deployment", true),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", false),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", false),
    ("rbac.authorization.k8s.io/v1", "Role", true),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", true),
    ("apiregistration.k8s.io/v1", "APIService", false),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition", false),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization", false),
];

const NAMESPACE: &str = "diskplane";

/// The one object outside namespace `diskplane`: the apiserver's binding to the built-in Role
/// that reads the front proxy's ConfigMap, which lives in kube-system.
const KUBE_SYSTEM_BINDING: (&str, &str) = ("RoleBinding", "diskplane-apiserver-authentication-reader");

fn str_at<'a>(doc: &'a Value, pointer: &str) -> &'a str {
    doc.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[test]
fn deploy_manifests_have_known_kinds_names_and_namespaces() {
    let docs = deploy_documents();
    let mut problems = Vec::new();
    let mut kinds = BTreeSet::new();
    for (file, doc) in &docs {
        let (api_version, kind) = (str_at(doc, "/apiVersion"), str_at(doc, "/kind"));
        kinds.insert(kind.to_owned());
        let Some((_, _, namespaced)) = DEPLOY_KINDS.iter().find(|(a, k, _)| *a == api_version && *k == kind)
        else {
            problems.push(format!("{file}: unknown {api_version} {kind}"));
            continue;
        };
        if kind == "Kustomization" {
            continue;
        }
        let name = str_at(doc, "/metadata/name");
        if !is_dns_subdomain(name) {
            problems.push(format!("{file}: {kind} name {name:?} is not a DNS subdomain"));
        }
        let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str);
        match (namespaced, namespace) {
            (true, Some(NAMESPACE)) | (false, None) => {}
            (true, Some("kube-system")) if (kind, name) == KUBE_SYSTEM_BINDING => {}
            _ => problems.push(format!("{file}: {kind} {name} has namespace {namespace:?}")),
        }
        if str_at(doc, "/metadata/labels/app.kubernetes.io~1part-of") != "diskplane" {
            problems.push(format!("{file}: {kind} {name} lacks app.kubernetes.io/part-of: diskplane"));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    let expected_kinds = [
        "Namespace",
        "ServiceAccount",
        "Deployment",
        "Service",
        "ClusterRole",
        "ClusterRoleBinding",
        "RoleBinding",
        "APIService",
    ];
    for kind in expected_kinds {
        assert!(kinds.contains(kind), "deploy/ has no {kind}");
    }
    let crds = docs.iter().filter(|(_, d)| d["kind"] == "CustomResourceDefinition").count();
    assert_eq!(crds, KINDS.len());
}

#[test]
fn deploy_namespace_enforces_the_restricted_pod_security_standard() {
    let docs = deploy_documents();
    let namespace = docs.iter().find(|(_, d)| d["kind"] == "Namespace").map(|(_, d)| d).expect("a Namespace");
    assert_eq!(str_at(namespace, "/metadata/name"), NAMESPACE);
    assert_eq!(str_at(namespace, "/metadata/labels/pod-security.kubernetes.io~1enforce"), "restricted");
}

#[test]
fn deploy_pods_meet_the_restricted_pod_security_standard() {
    let docs = deploy_documents();
    let deployments: Vec<&Value> =
        docs.iter().filter(|(_, d)| d["kind"] == "Deployment").map(|(_, d)| d).collect();
    assert_eq!(deployments.len(), 3, "controller, upload proxy, apiserver");
    for deployment in deployments {
        let name = str_at(deployment, "/metadata/name");
        let spec = deployment.pointer("/spec/template/spec").expect("pod template");
        assert_eq!(pss::restricted_problems(spec), Vec::<String>::new(), "{name}");
        assert_eq!(spec.pointer("/securityContext/runAsUser"), Some(&json!(107)), "{name}: uid 107 as CDI");
        for container in spec["containers"].as_array().expect("containers") {
            assert!(!str_at(container, "/image").is_empty(), "{name}: container without image");
            assert!(!str_at(container, "/name").is_empty(), "{name}: container without name");
        }
    }
    // The check itself refuses a pod that is not restricted.
    let mut bad = docs.iter().find(|(_, d)| d["kind"] == "Deployment").expect("a Deployment").1.clone();
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] =
        json!(true);
    assert!(!pss::restricted_problems(&bad["spec"]["template"]["spec"]).is_empty());
}

#[test]
fn deploy_references_resolve() {
    let docs = deploy_documents();
    let named = |kind: &str| -> BTreeSet<String> {
        docs.iter()
            .filter(|(_, d)| d["kind"] == kind)
            .map(|(_, d)| str_at(d, "/metadata/name").to_owned())
            .collect()
    };
    let (accounts, roles, namespaced_roles) = (named("ServiceAccount"), named("ClusterRole"), named("Role"));
    let mut problems = Vec::new();
    for (file, doc) in &docs {
        let name = str_at(doc, "/metadata/name");
        match doc["kind"].as_str().unwrap_or_default() {
            "Deployment" => {
                let selector = doc.pointer("/spec/selector/matchLabels").and_then(Value::as_object);
                let labels = doc.pointer("/spec/template/metadata/labels").and_then(Value::as_object);
                match (selector, labels) {
                    (Some(s), Some(l)) if !s.is_empty() && s.iter().all(|(k, v)| l.get(k) == Some(v)) => {}
                    _ => {
                        problems.push(format!("{file}: {name}: selector does not match the template labels"))
                    }
                }
                let account = str_at(doc, "/spec/template/spec/serviceAccountName");
                if !accounts.contains(account) {
                    problems.push(format!("{file}: {name}: ServiceAccount {account:?} is not in deploy/"));
                }
            }
            "Service" => {
                let selector =
                    doc.pointer("/spec/selector").and_then(Value::as_object).cloned().unwrap_or_default();
                let pods: Vec<&Value> = docs
                    .iter()
                    .filter(|(_, d)| d["kind"] == "Deployment")
                    .map(|(_, d)| &d["spec"]["template"])
                    .filter(|t| {
                        !selector.is_empty()
                            && selector.iter().all(|(k, v)| t["metadata"]["labels"].get(k) == Some(v))
                    })
                    .collect();
                if pods.len() != 1 {
                    problems.push(format!("{file}: Service {name} selects {} Deployments", pods.len()));
                    continue;
                }
                let ports: Vec<&Value> = pods[0]["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                    .collect();
                for port in doc["spec"]["ports"].as_array().into_iter().flatten() {
                    let target = &port["targetPort"];
                    if !ports.iter().any(|p| &p["name"] == target || &p["containerPort"] == target) {
                        problems.push(format!(
                            "{file}: Service {name}: targetPort {target} is no container port"
                        ));
                    }
                }
            }
            "APIService" => {
                let expected_name =
                    format!("{}.{}", str_at(doc, "/spec/version"), str_at(doc, "/spec/group"));
                if name != expected_name {
                    problems.push(format!("{file}: APIService {name} should be named {expected_name}"));
                }
                let (service, namespace) =
                    (str_at(doc, "/spec/service/name"), str_at(doc, "/spec/service/namespace"));
                let port = &doc["spec"]["service"]["port"];
                let target = docs.iter().find(|(_, d)| {
                    d["kind"] == "Service"
                        && d["metadata"]["name"] == service
                        && d["metadata"]["namespace"] == namespace
                });
                let serves = target.is_some_and(|(_, d)| {
                    d["spec"]["ports"].as_array().into_iter().flatten().any(|p| &p["port"] == port)
                });
                if !serves {
                    problems.push(format!(
                        "{file}: APIService {name}: no Service {namespace}/{service} with port {port} in deploy/"
                    ));
                }
            }
            "ClusterRoleBinding" | "RoleBinding" => {
                let (role_kind, known) = match doc["kind"].as_str() {
                    Some("RoleBinding") => ("Role", &namespaced_roles),
                    _ => ("ClusterRole", &roles),
                };
                // The one built-in Role bound: the front proxy's ConfigMap reader (apiserver).
                let role = str_at(doc, "/roleRef/name");
                let built_in = role_kind == "Role" && role == "extension-apiserver-authentication-reader";
                if doc["roleRef"]["kind"] != role_kind || !(known.contains(role) || built_in) {
                    problems.push(format!("{file}: {name}: roleRef is not a {role_kind} in deploy/"));
                }
                for subject in doc["subjects"].as_array().into_iter().flatten() {
                    let ok = subject["kind"] == "ServiceAccount"
                        && subject["namespace"] == NAMESPACE
                        && accounts.contains(str_at(subject, "/name"));
                    if !ok {
                        problems.push(format!(
                            "{file}: {name}: subject {subject} is not a ServiceAccount in deploy/"
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

type Triples = BTreeSet<(String, String, String)>;

/// `(apiGroup, resource, verb)` triples of one rule.
fn add_triples(out: &mut Triples, groups: &[&str], resources: &[&str], verbs: &[&str]) {
    for group in groups {
        for resource in resources {
            for verb in verbs {
                out.insert(((*group).to_owned(), (*resource).to_owned(), (*verb).to_owned()));
            }
        }
    }
}

fn cluster_role_triples(docs: &[(String, Value)], name: &str) -> Triples {
    let role = docs
        .iter()
        .find(|(_, d)| d["kind"] == "ClusterRole" && d["metadata"]["name"] == name)
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("no ClusterRole {name} in deploy/"));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
    };
    let mut out = Triples::new();
    for rule in role["rules"].as_array().expect("rules") {
        let (groups, resources, verbs) =
            (strings(&rule["apiGroups"]), strings(&rule["resources"]), strings(&rule["verbs"]));
        fn refs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        add_triples(&mut out, &refs(&groups), &refs(&resources), &refs(&verbs));
    }
    out
}

fn rbac_triples(rules: &[rbac::Rule]) -> Triples {
    let mut out = Triples::new();
    for rule in rules {
        add_triples(&mut out, &[rule.api_group], rule.resources, rule.verbs);
    }
    out
}

#[test]
fn deploy_cluster_roles_grant_exactly_what_the_rbac_list_says() {
    let docs = deploy_documents();
    let controller = cluster_role_triples(&docs, "diskplane-controller");
    let expected = rbac_triples(rbac::CONTROLLER);
    let missing: Vec<_> = expected.difference(&controller).collect();
    let extra: Vec<_> = controller.difference(&expected).collect();
    assert!(missing.is_empty() && extra.is_empty(), "controller: missing {missing:?}, extra {extra:?}");
    let apiserver = cluster_role_triples(&docs, "diskplane-apiserver");
    let expected = rbac_triples(rbac::APISERVER);
    let missing: Vec<_> = expected.difference(&apiserver).collect();
    let extra: Vec<_> = apiserver.difference(&expected).collect();
    assert!(missing.is_empty() && extra.is_empty(), "apiserver: missing {missing:?}, extra {extra:?}");
    // Aggregated API servers read the front proxy's ConfigMap through the built-in Role; the
    // controller's own Role (its CA) is bound in its namespace. Nothing else is bound.
    let mut bindings: Vec<(&str, &str)> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "RoleBinding")
        .map(|(_, d)| (str_at(d, "/metadata/namespace"), str_at(d, "/roleRef/name")))
        .collect();
    bindings.sort_unstable();
    assert_eq!(
        bindings,
        [("diskplane", "diskplane-controller"), ("kube-system", "extension-apiserver-authentication-reader")]
    );
    // The upload proxy needs no API access: no role, no binding, no token mounted.
    assert!(rbac::UPLOAD_PROXY.is_empty());
    let proxy_rbac: Vec<&str> = docs
        .iter()
        .filter(|(_, d)| d["metadata"]["name"] == "diskplane-upload-proxy")
        .filter_map(|(_, d)| d["kind"].as_str())
        .filter(|kind| kind.contains("Role"))
        .collect();
    assert_eq!(proxy_rbac, Vec::<&str>::new(), "the upload proxy gets no role");
    let proxy = docs
        .iter()
        .find(|(_, d)| d["kind"] == "Deployment" && d["metadata"]["name"] == "diskplane-upload-proxy")
        .expect("the upload-proxy Deployment");
    assert_eq!(proxy.1.pointer("/spec/template/spec/automountServiceAccountToken"), Some(&json!(false)));
    // Least privilege: no wildcards anywhere; the controller's own Secrets (upload token key,
    // clone token) by name only: never list/watch/update, which would expose every Secret.
    for (_, doc) in docs.iter().filter(|(_, d)| d["kind"] == "ClusterRole") {
        assert!(!doc["rules"].to_string().contains("\"*\""), "wildcard in {}", doc["metadata"]["name"]);
    }
    let secret_verbs: BTreeSet<&str> =
        controller.iter().filter(|(_, r, _)| r == "secrets").map(|(_, _, v)| v.as_str()).collect();
    assert_eq!(secret_verbs, BTreeSet::from(["create", "delete", "get"]));
}

/// `(apiGroup, resource, resourceName or "", verb)` of every rule of the Role `name`.
fn role_quads(docs: &[(String, Value)], name: &str) -> BTreeSet<[String; 4]> {
    let role = docs
        .iter()
        .find(|(_, d)| d["kind"] == "Role" && d["metadata"]["name"] == name)
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("no Role {name} in deploy/"));
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let mut names = strings(&rule["resourceNames"]);
        if names.is_empty() {
            names.push(String::new());
        }
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for object in &names {
                    for verb in strings(&rule["verbs"]) {
                        out.insert([group.clone(), resource.clone(), object.clone(), verb]);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn deploy_controller_role_in_its_namespace_grants_exactly_its_ca_objects() {
    let docs = deploy_documents();
    let deployed = role_quads(&docs, "diskplane-controller");
    let mut expected = BTreeSet::new();
    for rule in rbac::CONTROLLER_IN_OWN_NAMESPACE {
        let names: Vec<&str> =
            if rule.resource_names.is_empty() { vec![""] } else { rule.resource_names.to_vec() };
        for resource in rule.resources {
            for object in &names {
                for verb in rule.verbs {
                    expected.insert([rule.api_group, resource, object, verb].map(str::to_owned));
                }
            }
        }
    }
    assert_eq!(deployed, expected);
    // Only `create` is unnamed (it cannot be limited by name); nothing is listed or watched.
    for [_, resource, object, verb] in &deployed {
        assert!(!object.is_empty() || verb == "create", "{resource} {verb} on every object");
        assert!(!["list", "watch", "*"].contains(&verb.as_str()), "{resource} {verb}");
    }
    let binding = docs
        .iter()
        .find(|(_, d)| d["kind"] == "RoleBinding" && d["metadata"]["name"] == "diskplane-controller")
        .expect("the controller's RoleBinding");
    assert_eq!(
        binding.1["subjects"],
        json!([{"kind": "ServiceAccount", "name": "diskplane-controller", "namespace": "diskplane"}])
    );
}

#[test]
fn kustomization_lists_every_manifest_and_the_dockerfile_builds_the_single_image() {
    let root = deploy_dir();
    let kustomization = yaml_documents(&read(&root.join("kustomization.yaml"))).expect("YAML").remove(0);
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let mut on_disk = BTreeSet::new();
    for (dir, prefix) in [(root.clone(), ""), (root.join("crds"), "crds/")] {
        for path in sorted_files(&dir) {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                on_disk.insert(format!("{prefix}{name}"));
            }
        }
    }
    assert_eq!(listed, on_disk);

    let dockerfile = read(&root.join("Dockerfile"));
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
    assert!(lines.iter().any(|l| l.starts_with("FROM rust:bookworm AS build")), "build stage");
    assert!(lines.contains(&"FROM debian:bookworm-slim"), "runtime stage");
    assert!(lines.iter().any(|l| l.starts_with("USER 107")), "uid 107");
    assert!(lines.iter().any(|l| l.contains("--bin diskplane")), "builds the one binary");
}

/// `doc` read as the Kubernetes type `T` and written back: what `kubectl apply --dry-run=client`
/// checks offline. A misspelled or misplaced field is dropped by the typed struct and shows up
/// as a difference; a wrong type fails to parse.
fn typed_round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    doc: &Value,
) -> Result<Vec<String>, String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut lost = Vec::new();
    lost_fields(doc, &back, String::new(), &mut lost);
    Ok(lost)
}

/// JSON pointers of the values of `original` that `back` lost or changed.
fn lost_fields(original: &Value, back: &Value, at: String, lost: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let path = format!("{at}/{key}");
                match b.get(key) {
                    Some(other) => lost_fields(value, other, path, lost),
                    None => lost.push(path),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                lost_fields(x, y, format!("{at}/{i}"), lost);
            }
        }
        (a, b) if a == b => {}
        // Integers written as floats or the other way round are the same value to the server.
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        _ => lost.push(at),
    }
}

/// The typed round trip of one `deploy/` document, by kind.
fn deploy_round_trip(doc: &Value) -> Result<Vec<String>, String> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
    match doc["kind"].as_str().unwrap_or_default() {
        "Namespace" => typed_round_trip::<Namespace>(doc),
        "ServiceAccount" => typed_round_trip::<ServiceAccount>(doc),
        "Service" => typed_round_trip::<Service>(doc),
        "Deployment" => typed_round_trip::<Deployment>(doc),
        "ClusterRole" => typed_round_trip::<ClusterRole>(doc),
        "ClusterRoleBinding" => typed_round_trip::<ClusterRoleBinding>(doc),
        "Role" => typed_round_trip::<Role>(doc),
        "RoleBinding" => typed_round_trip::<RoleBinding>(doc),
        "APIService" => typed_round_trip::<APIService>(doc),
        "CustomResourceDefinition" => typed_round_trip::<CustomResourceDefinition>(doc),
        other => Err(format!("no typed check for kind {other:?}")),
    }
}

#[test]
fn deploy_documents_survive_the_kubernetes_types() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for (file, doc) in deploy_documents() {
        // kustomize's own file is read by kubectl, never sent to a server.
        if doc["kind"] == "Kustomization" {
            continue;
        }
        let name = str_at(&doc, "/metadata/name").to_owned();
        match deploy_round_trip(&doc) {
            Ok(lost) if lost.is_empty() => checked += 1,
            Ok(lost) => problems.push(format!("{file}: {name}: fields the type does not know: {lost:?}")),
            Err(e) => problems.push(format!("{file}: {name}: {e}")),
        }
    }
    assert_eq!(problems, Vec::<String>::new());
    assert!(checked >= 10, "only {checked} documents checked");
    // The check catches a misspelled field and a wrong type.
    let docs = deploy_documents();
    let mut bad = docs.iter().find(|(_, d)| d["kind"] == "Deployment").expect("a Deployment").1.clone();
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = json!("Always");
    assert_eq!(
        deploy_round_trip(&bad).expect("parses"),
        vec!["/spec/template/spec/containers/0/imagePullPolcy".to_owned()]
    );
    bad["spec"]["replicas"] = json!("one");
    assert!(deploy_round_trip(&bad).is_err());
}
