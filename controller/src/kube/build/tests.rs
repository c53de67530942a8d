use serde_json::json;

use super::*;
use crate::api::StorageProfile;
use crate::kube::clone::{CloneChoice, CloneStrategy};
use crate::plan::{Overhead, VolumeRequest};

fn dv(spec: serde_json::Value) -> DataVolume {
    serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": "fedora", "namespace": "vms", "uid": "uid-1"},
        "spec": spec,
    }))
    .unwrap()
}

fn profile(sets: serde_json::Value) -> StorageProfile {
    serde_json::from_value(json!({"metadata": {"name": "rbd"}, "status": {"claimPropertySets": sets}}))
        .unwrap()
}

fn request(capacity: u64, virtual_size: u64, block: bool) -> VolumeRequest {
    VolumeRequest {
        name: "fedora".into(),
        capacity_bytes: capacity,
        virtual_size_bytes: virtual_size,
        block,
        preallocate: false,
        storage_class_name: Some("rbd".into()),
    }
}

#[test]
fn storage_defaults_come_from_the_first_claim_property_set() {
    let dv = dv(json!({"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}}));
    let profile = profile(json!([
        {"accessModes": ["ReadWriteMany"], "volumeMode": "Block"},
        {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}
    ]));
    let resolved = resolve_storage(&dv, Some(&profile));
    let storage = resolved.spec.storage.unwrap();
    assert_eq!(storage.access_modes, ["ReadWriteMany"]);
    assert_eq!(storage.volume_mode.as_deref(), Some("Block"));
}

#[test]
fn an_asked_for_volume_mode_picks_its_property_set_and_no_profile_means_rwo_filesystem() {
    let dv_fs =
        dv(json!({"storage": {"volumeMode": "Filesystem", "resources": {"requests": {"storage": "1Gi"}}}}));
    let profile = profile(json!([
        {"accessModes": ["ReadWriteMany"], "volumeMode": "Block"},
        {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}
    ]));
    let storage = resolve_storage(&dv_fs, Some(&profile)).spec.storage.unwrap();
    assert_eq!(
        (storage.access_modes.as_slice(), storage.volume_mode.as_deref()),
        (&["ReadWriteOnce".to_owned()][..], Some("Filesystem"))
    );
    let bare = dv(json!({"storage": {"resources": {"requests": {"storage": "1Gi"}}}}));
    let storage = resolve_storage(&bare, None).spec.storage.unwrap();
    assert_eq!(
        (storage.access_modes.as_slice(), storage.volume_mode.as_deref()),
        (&["ReadWriteOnce".to_owned()][..], Some("Filesystem"))
    );
}

#[test]
fn pvc_data_volumes_are_taken_as_written() {
    let dv =
        dv(json!({"pvc": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}));
    let profile = profile(json!([{"accessModes": ["ReadWriteMany"], "volumeMode": "Block"}]));
    assert_eq!(resolve_storage(&dv, Some(&profile)), dv);
}

#[test]
fn the_pvc_of_an_http_import_is_named_owned_sized_and_annotated() {
    let dv = dv(json!({
        "source": {"http": {"url": "https://example.org/f.qcow2"}},
        "storage": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem", "storageClassName": "rbd",
                    "resources": {"requests": {"storage": "10Gi"}}}
    }));
    let size = 10 << 30;
    let capacity = Overhead::default().required_space(size).unwrap();
    let pvc = claim(&dv, &request(capacity, size, false), None);
    assert_eq!(
        serde_json::to_value(&pvc).unwrap(),
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": "fedora", "namespace": "vms",
                "labels": {"app": "containerized-data-importer", "app.kubernetes.io/managed-by": "diskplane"},
                "annotations": {
                    "cdi.kubevirt.io/createdForDataVolume": "uid-1",
                    "cdi.kubevirt.io/storage.contentType": "kubevirt",
                    "cdi.kubevirt.io/storage.import.endpoint": "https://example.org/f.qcow2",
                    "cdi.kubevirt.io/storage.import.source": "http",
                    "diskplane.io/virtual-size": "10737418240"
                },
                "ownerReferences": [{"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "name": "fedora",
                                     "uid": "uid-1", "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "11362347344"}},
                "storageClassName": "rbd",
                "volumeMode": "Filesystem"
            }
        })
    );
}

#[test]
fn a_csi_clone_pvc_names_its_source_and_a_copy_records_its_fallback_reason() {
    let dv = dv(json!({"source": {"pvc": {"namespace": "vms", "name": "golden"}},
                       "storage": {"volumeMode": "Block", "accessModes": ["ReadWriteMany"]}}));
    let csi = CloneChoice { strategy: CloneStrategy::CsiClone, fallback_reason: None };
    let pvc = serde_json::to_value(claim(&dv, &request(1 << 30, 1 << 30, true), Some(&csi))).unwrap();
    assert_eq!(pvc["spec"]["dataSource"], json!({"kind": "PersistentVolumeClaim", "name": "golden"}));
    assert_eq!(pvc["spec"]["volumeMode"], "Block");
    assert_eq!(pvc["metadata"]["annotations"]["cdi.kubevirt.io/cloneType"], "csi-clone");
    assert_eq!(pvc["metadata"]["annotations"]["k8s.io/CloneRequest"], "vms/golden");
    let copy = CloneChoice { strategy: CloneStrategy::Copy, fallback_reason: Some("why".into()) };
    let pvc = serde_json::to_value(claim(&dv, &request(1 << 30, 1 << 30, true), Some(&copy))).unwrap();
    assert!(pvc["spec"].get("dataSource").is_none());
    assert_eq!(pvc["metadata"]["annotations"]["cdi.kubevirt.io/cloneFallbackReason"], "why");
    let snap = CloneChoice { strategy: CloneStrategy::Snapshot, fallback_reason: None };
    let pvc = serde_json::to_value(claim(&dv, &request(1 << 30, 1 << 30, true), Some(&snap))).unwrap();
    assert_eq!(
        pvc["spec"]["dataSource"],
        json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "cdi-tmp-uid-1"})
    );
}

fn config() -> ClusterConfig {
    ClusterConfig {
        pull_policy: Some("IfNotPresent".into()),
        ..ClusterConfig::new("quay.io/diskplane/diskplane:v1")
    }
}

#[test]
fn every_worker_pod_meets_the_restricted_pod_security_standard() {
    let dv = dv(json!({"source": {"http": {"url": "http://h/i"}}, "storage": {}}));
    for role in [
        WorkerRole::Import,
        WorkerRole::Upload,
        WorkerRole::CloneTarget {
            source_url: "https://10.0.0.1:8443".into(),
            server_name: "s.golden.pod".into(),
        },
        WorkerRole::CloneSource { namespace: "src".into(), claim: "golden".into(), block: true },
    ] {
        let spec = WorkerSpec {
            dv: &dv,
            role: role.clone(),
            attempt: 0,
            block: false,
            virtual_size: 1,
            preallocate: false,
        };
        let pod = serde_json::to_value(worker_pod(&config(), &spec)).unwrap();
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Never", "{role:?}");
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(
            spec["securityContext"],
            json!({"runAsNonRoot": true, "runAsUser": 107, "runAsGroup": 107, "fsGroup": 107,
                   "seccompProfile": {"type": "RuntimeDefault"}})
        );
        let container = &spec["containers"][0];
        assert_eq!(
            container["securityContext"],
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
                   "readOnlyRootFilesystem": true, "runAsNonRoot": true, "runAsUser": 107, "runAsGroup": 107,
                   "seccompProfile": {"type": "RuntimeDefault"}}),
            "{role:?}"
        );
        assert!(container.get("terminationMessagePath").is_none(), "the default path");
        let mounts = container["volumeMounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["mountPath"] == "/tmp"), "{role:?}");
        for host in ["hostPath", "hostNetwork", "privileged"] {
            assert!(!pod.to_string().contains(host), "{role:?} uses {host}");
        }
    }
}

#[test]
fn block_volumes_are_attached_as_devices_and_filesystem_volumes_mounted_at_data() {
    let dv = dv(json!({"source": {"blank": {}}, "storage": {}}));
    let block = WorkerSpec {
        dv: &dv,
        role: WorkerRole::Import,
        attempt: 2,
        block: true,
        virtual_size: 5,
        preallocate: false,
    };
    let pod = serde_json::to_value(worker_pod(&config(), &block)).unwrap();
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["volumeDevices"],
        json!([{"name": "cdi-data-vol", "devicePath": "/dev/cdi-block-volume"}])
    );
    assert_eq!(container["volumeMounts"], json!([{"name": "tmp", "mountPath": "/tmp"}]));
    assert_eq!(container["args"], json!(["worker", "import", "--volume", "/dev/cdi-block-volume"]));
    assert_eq!(pod["metadata"]["annotations"]["diskplane.io/attempt"], "2");
    let fs = WorkerSpec { block: false, ..block };
    let pod = serde_json::to_value(worker_pod(&config(), &fs)).unwrap();
    let container = &pod["spec"]["containers"][0];
    assert!(container.get("volumeDevices").is_none());
    assert_eq!(container["volumeMounts"][0], json!({"name": "cdi-data-vol", "mountPath": "/data"}));
    assert_eq!(container["args"][3], "/data/disk.img");
}

#[test]
fn import_parameters_secrets_and_certificates_reach_the_importer() {
    let dv = dv(json!({"source": {"http": {
        "url": "https://h/i.qcow2", "secretRef": "creds", "certConfigMap": "ca",
        "checksum": "sha256:ab", "insecureSkipVerify": true, "extraHeaders": ["X-A: 1"]
    }}, "storage": {}}));
    let spec = WorkerSpec {
        dv: &dv,
        role: WorkerRole::Import,
        attempt: 0,
        block: false,
        virtual_size: 7,
        preallocate: true,
    };
    let pod = serde_json::to_value(worker_pod(&config(), &spec)).unwrap();
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["env"],
        json!([
            {"name": "OWNER_UID", "value": "uid-1"},
            {"name": "METRICS_LISTEN", "value": "0.0.0.0:8080"},
            {"name": "IMPORTER_IMAGE_SIZE", "value": "7"},
            {"name": "IMPORTER_CONTENTTYPE", "value": "kubevirt"},
            {"name": "PREALLOCATION", "value": "true"},
            {"name": "IMPORTER_SOURCE", "value": "http"},
            {"name": "IMPORTER_ENDPOINT", "value": "https://h/i.qcow2"},
            {"name": "IMPORTER_CHECKSUM", "value": "sha256:ab"},
            {"name": "INSECURE_TLS", "value": "true"},
            {"name": "IMPORTER_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "accessKeyId", "optional": false}}},
            {"name": "IMPORTER_SECRET_KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "secretKey", "optional": false}}},
            {"name": "IMPORTER_CERT_DIR", "value": "/certs"}
        ])
    );
    assert_eq!(pod["spec"]["volumes"][2], json!({"name": "cdi-cert-vol", "configMap": {"name": "ca"}}));
    assert_eq!(
        container["volumeMounts"][2],
        json!({"name": "cdi-cert-vol", "mountPath": "/certs", "readOnly": true})
    );
    assert_eq!(
        container["args"],
        json!(["worker", "import", "--volume", "/data/disk.img", "--header", "X-A: 1"])
    );
    assert_eq!(container["image"], "quay.io/diskplane/diskplane:v1");
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
}

#[test]
fn the_upload_service_selects_exactly_its_upload_pod() {
    let dv = dv(json!({"source": {"upload": {}}, "storage": {}}));
    let service = serde_json::to_value(upload_service(&dv)).unwrap();
    let spec = WorkerSpec {
        dv: &dv,
        role: WorkerRole::Upload,
        attempt: 0,
        block: false,
        virtual_size: 9,
        preallocate: false,
    };
    let pod = serde_json::to_value(worker_pod(&config(), &spec)).unwrap();
    assert_eq!(service["metadata"]["name"], "cdi-upload-fedora");
    assert_eq!(pod["metadata"]["name"], "cdi-upload-fedora");
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][key], value, "{key}");
    }
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "upload", "port": 443, "targetPort": 8443, "protocol": "TCP"}])
    );
    assert_eq!(service["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    let args: Vec<String> = serde_json::from_value(pod["spec"]["containers"][0]["args"].clone()).unwrap();
    assert_eq!(args[..2], ["worker", "upload-server"]);
    assert!(args.windows(2).any(|w| w == ["--size", "9"]));
    let env = &pod["spec"]["containers"][0]["env"];
    assert!(
        env.as_array().unwrap().contains(&json!({"name": "UPLOAD_CONTENTTYPE", "value": "kubevirt"})),
        "{env}"
    );
}

#[test]
fn the_upload_pod_serves_tls_with_the_files_of_its_secret_mounted_read_only() {
    let dv = dv(json!({"source": {"upload": {}}, "storage": {}}));
    let spec = WorkerSpec {
        dv: &dv,
        role: WorkerRole::Upload,
        attempt: 0,
        block: false,
        virtual_size: 9,
        preallocate: false,
    };

    let pod = serde_json::to_value(worker_pod(&config(), &spec)).unwrap();

    let container = &pod["spec"]["containers"][0];
    let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
    for (flag, file) in [
        ("--token-key", "/etc/diskplane/upload/token-key"),
        ("--tls-cert", "/etc/diskplane/upload/tls.crt"),
        ("--tls-key", "/etc/diskplane/upload/tls.key"),
        ("--tls-ca", "/etc/diskplane/upload/ca.crt"),
    ] {
        assert!(args.windows(2).any(|w| w == [flag, file]), "{flag} {file} in {args:?}");
    }
    assert_eq!(
        pod["spec"]["volumes"][2],
        json!({"name": "upload-token-key", "secret": {
            "secretName": "cdi-upload-fedora", "defaultMode": 0o440,
            "items": [{"key": "token-key", "path": "token-key"}, {"key": "tls.crt", "path": "tls.crt"},
                      {"key": "tls.key", "path": "tls.key"}, {"key": "ca.crt", "path": "ca.crt"}]}})
    );
    assert!(container["volumeMounts"].as_array().unwrap().contains(
        &json!({"name": "upload-token-key", "mountPath": "/etc/diskplane/upload", "readOnly": true})
    ));
}

#[test]
fn no_worker_pod_is_told_to_skip_tls() {
    let upload = dv(json!({"source": {"upload": {}}, "storage": {}}));
    let clone = dv(json!({"source": {"pvc": {"namespace": "golden", "name": "fedora-base"}}, "storage": {}}));
    let roles = [
        (&upload, WorkerRole::Upload),
        (
            &clone,
            WorkerRole::CloneSource { namespace: "golden".into(), claim: "fedora-base".into(), block: false },
        ),
        (
            &clone,
            WorkerRole::CloneTarget {
                source_url: "https://10.0.0.1:8444".into(),
                server_name: "n.pod".into(),
            },
        ),
    ];
    for (dv, role) in roles {
        let spec = WorkerSpec { dv, role, attempt: 0, block: false, virtual_size: 9, preallocate: false };
        let pod = serde_json::to_value(worker_pod(&config(), &spec)).unwrap();
        let text = pod.to_string();
        assert!(!text.contains("--insecure") && !text.contains("INSECURE"), "{text}");
    }
}

#[test]
fn an_archive_upload_pod_is_told_to_extract() {
    let dv = dv(json!({"source": {"upload": {}}, "contentType": "archive", "storage": {}}));
    let spec = WorkerSpec {
        dv: &dv,
        role: WorkerRole::Upload,
        attempt: 0,
        block: false,
        virtual_size: 9,
        preallocate: false,
    };
    let pod = serde_json::to_value(worker_pod(&config(), &spec)).unwrap();
    let env = &pod["spec"]["containers"][0]["env"];
    assert!(
        env.as_array().unwrap().contains(&json!({"name": "UPLOAD_CONTENTTYPE", "value": "archive"})),
        "{env}"
    );
}

#[test]
fn a_clone_source_pod_in_another_namespace_has_no_owner_reference_and_reads_only() {
    let dv = dv(json!({"source": {"pvc": {"namespace": "golden", "name": "fedora-base"}}, "storage": {}}));
    let role =
        WorkerRole::CloneSource { namespace: "golden".into(), claim: "fedora-base".into(), block: false };
    let spec = WorkerSpec { dv: &dv, role, attempt: 0, block: false, virtual_size: 9, preallocate: false };
    let pod = serde_json::to_value(worker_pod(&config(), &spec)).unwrap();
    assert_eq!(pod["metadata"]["namespace"], "golden");
    assert_eq!(pod["metadata"]["name"], "uid-1-source-pod");
    assert!(pod["metadata"].get("ownerReferences").is_none());
    assert_eq!(
        pod["spec"]["volumes"][0]["persistentVolumeClaim"],
        json!({"claimName": "fedora-base", "readOnly": true})
    );
    assert_eq!(pod["spec"]["containers"][0]["volumeMounts"][0]["readOnly"], true);
}

fn clone_pod(role: WorkerRole) -> serde_json::Value {
    let dv = dv(json!({"source": {"pvc": {"namespace": "golden", "name": "fedora-base"}}, "storage": {}}));
    let spec = WorkerSpec { dv: &dv, role, attempt: 0, block: false, virtual_size: 9, preallocate: false };
    serde_json::to_value(worker_pod(&config(), &spec)).unwrap()
}

/// The clone Secret's volume with only `keys`.
fn clone_secret_volume(keys: &[&str]) -> serde_json::Value {
    let items: Vec<_> = keys.iter().map(|k| json!({"key": k, "path": k})).collect();
    json!({"name": "clone-token",
           "secret": {"secretName": "uid-1-clone-token", "defaultMode": 0o400, "items": items}})
}

#[test]
fn clone_pods_mount_their_keys_of_the_clone_secret_read_only_and_speak_tls() {
    let secret_mount = json!({"name": "clone-token", "mountPath": "/etc/diskplane/clone", "readOnly": true});
    let source = clone_pod(WorkerRole::CloneSource {
        namespace: "golden".into(),
        claim: "fedora-base".into(),
        block: false,
    });
    let container = &source["spec"]["containers"][0];
    assert_eq!(
        container["args"],
        json!([
            "worker",
            "clone-source",
            "--volume",
            "/data/disk.img",
            "--listen",
            "0.0.0.0:8444",
            "--tls-cert",
            "/etc/diskplane/clone/tls.crt",
            "--tls-key",
            "/etc/diskplane/clone/tls.key",
            "--token-file",
            "/etc/diskplane/clone/token",
        ])
    );
    assert_eq!(source["spec"]["volumes"][2], clone_secret_volume(&["token", "tls.crt", "tls.key"]));
    assert_eq!(source["spec"]["volumes"].as_array().unwrap().len(), 3);
    assert_eq!(
        container["volumeMounts"],
        json!([{"name": "cdi-data-vol", "mountPath": "/data", "readOnly": true},
               {"name": "tmp", "mountPath": "/tmp"}, secret_mount])
    );
    let target = clone_pod(WorkerRole::CloneTarget {
        source_url: "https://10.0.0.1:8444".into(),
        server_name: "uid-1-source-pod.golden.pod".into(),
    });
    let container = &target["spec"]["containers"][0];
    assert_eq!(
        container["args"],
        json!([
            "worker",
            "clone-target",
            "--volume",
            "/data/disk.img",
            "--size",
            "9",
            "--source-url",
            "https://10.0.0.1:8444",
            "--ca-cert",
            "/etc/diskplane/clone/ca.crt",
            "--tls-server-name",
            "uid-1-source-pod.golden.pod",
            "--token-file",
            "/etc/diskplane/clone/token",
        ])
    );
    // The target never sees the source's key.
    assert_eq!(target["spec"]["volumes"][2], clone_secret_volume(&["token", "ca.crt"]));
    assert_eq!(
        container["volumeMounts"],
        json!([{"name": "cdi-data-vol", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"},
               secret_mount])
    );
    // Metrics on 8080; the clone source serves on its own port.
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "METRICS_LISTEN", "value": "0.0.0.0:8080"}))
    );
    // Imports get no clone Secret.
    let import = clone_pod(WorkerRole::Import);
    assert!(!import.to_string().contains("clone-token"));
}

#[test]
fn a_clone_secret_is_owned_in_the_data_volumes_namespace_and_labelled_elsewhere() {
    let dv = dv(json!({"source": {"pvc": {"namespace": "golden", "name": "fedora-base"}}, "storage": {}}));
    let namespace = dv.metadata.namespace().to_owned();
    let serving = serving();
    let own =
        serde_json::to_value(clone_secret_object(&dv, &namespace, "abc", "CA", Some(&serving))).unwrap();
    assert_eq!(own["type"], "Opaque");
    assert_eq!(
        own["stringData"],
        json!({"token": "abc", "ca.crt": "CA", "tls.crt": "CERT", "tls.key": "KEY"})
    );
    assert_eq!(own["metadata"]["name"], "uid-1-clone-token");
    assert_eq!(own["metadata"]["namespace"], namespace.as_str());
    assert_eq!(own["metadata"]["labels"]["diskplane.io/clone-for"], "uid-1");
    assert_eq!(own["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    let other = serde_json::to_value(clone_secret_object(&dv, "golden", "abc", "CA", None)).unwrap();
    assert_eq!(other["metadata"]["namespace"], "golden");
    assert_eq!(other["metadata"]["labels"]["diskplane.io/clone-for"], "uid-1");
    assert!(other["metadata"].get("ownerReferences").is_none());
    assert_eq!(other["stringData"], json!({"token": "abc", "ca.crt": "CA"}));
}

/// Placeholder PEM: the builders only place what the apply layer issued.
fn serving() -> ServingCert {
    ServingCert { cert_pem: "CERT".into(), key_pem: "KEY".into(), ca_pem: "CA".into() }
}

/// The port a worker container listens on for `flag` (`--listen 0.0.0.0:P`) or env `name`.
fn listen_port(container: &serde_json::Value) -> Vec<String> {
    let mut ports = Vec::new();
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    if let Some(i) = args.iter().position(|a| *a == "--listen") {
        ports.push(args[i + 1].rsplit(':').next().unwrap().to_owned());
    }
    for var in container["env"].as_array().unwrap() {
        if var["name"] == "METRICS_LISTEN" {
            ports.push(var["value"].as_str().unwrap().rsplit(':').next().unwrap().to_owned());
        }
    }
    ports
}

#[test]
fn no_worker_pod_binds_two_listeners_to_one_port() {
    let upload = dv(json!({"source": {"upload": {}}, "storage": {}}));
    let roles = [
        (upload, WorkerRole::Upload),
        (
            dv(json!({"source": {"pvc": {"namespace": "golden", "name": "fedora-base"}}, "storage": {}})),
            WorkerRole::CloneSource { namespace: "golden".into(), claim: "fedora-base".into(), block: false },
        ),
    ];
    for (dv, role) in roles {
        let spec =
            WorkerSpec { dv: &dv, role, attempt: 0, block: false, virtual_size: 9, preallocate: false };
        let pod = serde_json::to_value(worker_pod(&config(), &spec)).unwrap();
        let ports = listen_port(&pod["spec"]["containers"][0]);
        assert_eq!(ports.len(), 2, "{ports:?}");
        assert_ne!(ports[0], ports[1], "{pod}");
    }
}

#[test]
fn the_upload_secret_gets_the_key_derived_from_the_global_key() {
    let upload = dv(json!({"source": {"upload": {}}, "storage": {}}));
    assert_eq!(derived_upload_key(&config(), &upload), None);
    let global = uploader::token::TokenKey::from_bytes(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap();
    let with_key = ClusterConfig { upload_token_key: Some(global.clone()), ..config() };

    let key = derived_upload_key(&with_key, &upload).unwrap();

    let meta = &upload.metadata;
    assert_eq!(key, global.derive_hex(meta.namespace(), meta.name(), meta.uid.as_deref().unwrap()));
    let secret = serde_json::to_value(upload_secret(&upload, &key, &serving())).unwrap();
    assert_eq!(
        secret["stringData"],
        json!({"token-key": key, "tls.crt": "CERT", "tls.key": "KEY", "ca.crt": "CA"})
    );
    assert_eq!(key.len(), 64);
}
