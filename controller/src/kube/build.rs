//! Pure builders: the exact Kubernetes objects a DataVolume needs (PVC, worker Pods, upload
//! Service, VolumeSnapshot). No client here; everything is a function of its inputs, tested
//! field by field.
//!
//! ## Worker Pods
//! One Pod per attempt, `restartPolicy: Never`: a failed attempt must end as a `Failed` Pod with
//! its termination message, so `plan` decides between retry (with back-off and
//! `restartCount + 1`) and a terminal failure. With `OnFailure` the kubelet would restart even
//! terminal failures (a checksum mismatch) forever, and the DataVolume would never fail.
//!
//! Every worker meets the restricted Pod Security Standard: `runAsNonRoot`, uid/gid 107,
//! `fsGroup` 107, seccomp `RuntimeDefault`, no privilege escalation, all capabilities dropped,
//! read-only root filesystem with an `emptyDir` at `/tmp`, no service-account token. The volume
//! is mounted at `/data` (`disk.img`) or, for Block volumes, attached at
//! `/dev/cdi-block-volume` through `volumeDevices`.
//!
//! ## The worker contract (`diskplane worker ROLE`)
//! Parameters go in CDI's environment names (the worker reads every flag from the environment
//! too): `IMPORTER_SOURCE` (`http`, `registry`, `none`), `IMPORTER_ENDPOINT`,
//! `IMPORTER_CONTENTTYPE`, `IMPORTER_IMAGE_SIZE` (the virtual size in bytes), `OWNER_UID`,
//! `INSECURE_TLS`, `IMPORTER_CHECKSUM`, `IMPORTER_CERT_DIR` (`/certs`, the `certConfigMap`),
//! `IMPORTER_ACCESS_KEY_ID` / `IMPORTER_SECRET_KEY` (from the `secretRef` Secret),
//! `PREALLOCATION`, `IMPORTER_REGISTRY_IMAGE_ARCHITECTURE`,
//! `METRICS_LISTEN` (`0.0.0.0:8080`); the volume as `--volume PATH`, `extraHeaders` as
//! `--header 'Name: value'`; clone roles `--source-url`, `--listen` (port 8444),
//! `--token-file` from the clone's Secret. The result is the JSON termination message (see
//! [`super::observe::parse_termination`]), progress `diskplane_progress_ratio` on
//! `GET /metrics`.
//!
//! ## TLS material
//! Serving certificates come from the controller's CA ([`super::certs`]), issued by the apply
//! layer and passed in as [`ServingCert`]s; the builders only place them. Each Pod mounts
//! just the keys it needs from its Secret (`items`), read-only:
//! - upload Pod, Secret `cdi-upload-<dv>` at `/etc/diskplane/upload`: `token-key`, `tls.crt`,
//!   `tls.key`, `ca.crt` → `--tls-cert`, `--tls-key`, `--tls-ca` (served at
//!   `/v1beta1/ca.crt`); the certificate names the upload Service.
//! - clone source, Secret `<uid>-clone-token` at `/etc/diskplane/clone`: `token`, `tls.crt`,
//!   `tls.key` → `--tls-cert`, `--tls-key`.
//! - clone target, the same Secret (or its twin in the target namespace, which holds only
//!   `token` and `ca.crt`): `token`, `ca.crt` → `--ca-cert`, and `--tls-server-name` with the
//!   name the source's certificate carries ([`clone_source_server_name`]): the target dials the
//!   source Pod's IP, which is unknown when the certificate is issued.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, TypedLocalObjectReference,
    Volume, VolumeDevice, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::certs::ServingCert;
use super::clone::{CloneChoice, CloneStrategy};
use super::names::*;
use super::resource::VolumeSnapshotObject;
use crate::api::datavolume::{SourceKind, VOLUME_MODE_BLOCK, VOLUME_MODE_FILESYSTEM};
use crate::api::{DataVolume, StorageProfile};
use crate::plan::{PlanConfig, VolumeRequest};

/// Cluster-wide settings (CDIConfig and the controller's flags).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// The image of worker Pods (the controller's own image).
    pub worker_image: String,
    /// `imagePullPolicy` of worker Pods (`None`: the cluster default).
    pub pull_policy: Option<String>,
    /// Filesystem overhead, default preallocation.
    pub plan: PlanConfig,
    /// CDI's `HonorWaitForFirstConsumer` feature gate: on WaitForFirstConsumer storage, wait for
    /// the DataVolume's consumer instead of binding the PVC with the worker Pod.
    pub honor_wait_for_first_consumer: bool,
    /// The cluster's global upload token key (`--upload-token-key`): each upload Pod's Secret
    /// gets the key derived from it for its DataVolume (`uploader::token` module docs), which
    /// the upload proxy derives too. `None`: a random key per DataVolume (the proxy then cannot
    /// verify tokens for it).
    pub upload_token_key: Option<uploader::token::TokenKey>,
}

impl ClusterConfig {
    /// Defaults for `worker_image`: cluster pull policy, CDI's overhead, the gate on.
    pub fn new(worker_image: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            worker_image: worker_image.into(),
            pull_policy: None,
            plan: PlanConfig::default(),
            honor_wait_for_first_consumer: true,
            upload_token_key: None,
        }
    }
}

/// Fills a `storage` DataVolume's unset access modes and volume mode from the StorageProfile
/// (its status, which CDI computes, else its spec), the way CDI renders `spec.storage`. `pvc`
/// DataVolumes are taken as written (Kubernetes semantics). Without any access mode the claim
/// asks for `ReadWriteOnce`; without a volume mode, `Filesystem`.
pub fn resolve_storage(dv: &DataVolume, profile: Option<&StorageProfile>) -> DataVolume {
    let mut dv = dv.clone();
    let Some(storage) = dv.spec.storage.as_mut().filter(|_| dv.spec.pvc.is_none()) else { return dv };
    let sets = profile.map(|p| match p.status.as_ref().filter(|s| !s.claim_property_sets.is_empty()) {
        Some(status) => status.claim_property_sets.as_slice(),
        None => p.spec.claim_property_sets.as_slice(),
    });
    let wanted_mode = storage.volume_mode.clone().filter(|m| m != "FromStorageProfile");
    // The first property set with the asked-for volume mode, else the first one.
    let set = sets.and_then(|sets| {
        sets.iter().find(|s| wanted_mode.is_some() && s.volume_mode == wanted_mode).or_else(|| sets.first())
    });
    if storage.access_modes.is_empty() {
        storage.access_modes = match set.filter(|s| !s.access_modes.is_empty()) {
            Some(set) => set.access_modes.clone(),
            None => vec!["ReadWriteOnce".to_owned()],
        };
    }
    storage.volume_mode = Some(
        wanted_mode
            .or_else(|| set.and_then(|s| s.volume_mode.clone()))
            .unwrap_or_else(|| VOLUME_MODE_FILESYSTEM.to_owned()),
    );
    dv
}

/// The controller owner reference to the DataVolume (garbage collection deletes what it owns).
pub fn owner_reference(dv: &DataVolume) -> OwnerReference {
    OwnerReference {
        api_version: crate::api::API_VERSION.to_owned(),
        kind: "DataVolume".to_owned(),
        name: dv.metadata.name().to_owned(),
        uid: dv.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn labels(role: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_APP.to_owned(), APP.to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGER.to_owned()),
    ]);
    if let Some(role) = role {
        labels.insert(LABEL_CDI_ROLE.to_owned(), role.to_owned());
    }
    labels
}

/// The target PVC of a (resolved, see [`resolve_storage`]) DataVolume: named like it, in its
/// namespace, owned by it, sized as `plan` asked. `clone` is the chosen strategy for clones;
/// a smart clone's PVC gets the `dataSource` the CSI driver fills it from.
pub fn claim(dv: &DataVolume, request: &VolumeRequest, clone: Option<&CloneChoice>) -> PersistentVolumeClaim {
    let spec = dv.spec.claim().cloned().unwrap_or_default();
    let source = dv.spec.source.as_ref();
    let mut annotations = BTreeMap::from([
        (ANN_CREATED_FOR.to_owned(), dv.metadata.uid.clone().unwrap_or_default()),
        (ANN_CONTENT_TYPE.to_owned(), dv.spec.content_type().to_owned()),
        (ANN_VIRTUAL_SIZE.to_owned(), request.virtual_size_bytes.to_string()),
    ]);
    if request.preallocate {
        annotations.insert(ANN_PREALLOCATION.to_owned(), "true".to_owned());
    }
    let kind = source.and_then(|s| s.kind());
    match kind {
        Some(SourceKind::Http) => {
            annotations.insert(ANN_IMPORT_SOURCE.to_owned(), "http".to_owned());
            if let Some(http) = source.and_then(|s| s.http.as_ref()) {
                annotations.insert(ANN_IMPORT_ENDPOINT.to_owned(), http.url.clone());
            }
        }
        Some(SourceKind::Registry) => {
            annotations.insert(ANN_IMPORT_SOURCE.to_owned(), "registry".to_owned());
            if let Some(url) = source.and_then(|s| s.registry.as_ref()).and_then(|r| r.url.clone()) {
                annotations.insert(ANN_IMPORT_ENDPOINT.to_owned(), url);
            }
        }
        Some(SourceKind::Blank) => {
            annotations.insert(ANN_IMPORT_SOURCE.to_owned(), "none".to_owned());
        }
        Some(SourceKind::Upload) => {
            annotations.insert(ANN_UPLOAD_TARGET.to_owned(), String::new());
        }
        _ => {}
    }
    let mut data_source = None;
    if let Some(pvc) = source.and_then(|s| s.pvc.as_ref()) {
        annotations.insert(ANN_CLONE_REQUEST.to_owned(), format!("{}/{}", pvc.namespace, pvc.name));
    }
    if let Some(choice) = clone {
        annotations.insert(ANN_CLONE_TYPE.to_owned(), choice.strategy.as_str().to_owned());
        if let Some(reason) = &choice.fallback_reason {
            annotations.insert(ANN_CLONE_FALLBACK_REASON.to_owned(), reason.clone());
        }
        data_source = match choice.strategy {
            CloneStrategy::CsiClone => {
                source.and_then(|s| s.pvc.as_ref()).map(|pvc| TypedLocalObjectReference {
                    api_group: None,
                    kind: "PersistentVolumeClaim".to_owned(),
                    name: pvc.name.clone(),
                })
            }
            CloneStrategy::Snapshot => Some(TypedLocalObjectReference {
                api_group: Some("snapshot.storage.k8s.io".to_owned()),
                kind: "VolumeSnapshot".to_owned(),
                name: match source.and_then(|s| s.snapshot.as_ref()) {
                    Some(snapshot) => snapshot.name.clone(),
                    None => clone_snapshot(dv.metadata.uid.as_deref().unwrap_or_default()),
                },
            }),
            CloneStrategy::Copy => None,
        };
    }
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(request.name.clone()),
            namespace: dv.metadata.namespace.clone(),
            labels: Some(labels(None)),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_reference(dv)]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(spec.access_modes.clone()).filter(|m| !m.is_empty()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(request.capacity_bytes.to_string()),
                )])),
                limits: None,
            }),
            storage_class_name: request.storage_class_name.clone(),
            volume_mode: Some(
                if request.block { VOLUME_MODE_BLOCK } else { VOLUME_MODE_FILESYSTEM }.to_owned(),
            ),
            selector: spec.selector.as_ref().and_then(|s| serde_json::from_value(s.clone()).ok()),
            volume_name: spec.volume_name.clone(),
            data_source,
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// The VolumeSnapshot a `snapshot` clone restores from, next to the source PVC.
pub fn snapshot(
    dv: &DataVolume,
    source_namespace: &str,
    source_pvc: &str,
    class: &str,
) -> VolumeSnapshotObject {
    let mut object = VolumeSnapshotObject::new(
        &clone_snapshot(dv.metadata.uid.as_deref().unwrap_or_default()),
        &super::resource::volume_snapshots(),
        serde_json::json!({
            "volumeSnapshotClassName": class,
            "source": {"persistentVolumeClaimName": source_pvc},
        }),
    );
    object.metadata.namespace = Some(source_namespace.to_owned());
    object.metadata.labels = Some(labels(Some("cdi-smart-clone")));
    if source_namespace == dv.metadata.namespace() {
        object.metadata.owner_references = Some(vec![owner_reference(dv)]);
    }
    object
}

/// What a worker Pod does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerRole {
    /// http / registry / blank → the volume.
    Import,
    /// The upload server for the volume (with its Service).
    Upload,
    /// Host-assisted clone, target side: receives into the volume from the source Pod at
    /// `source_url` (`https://IP:PORT`), whose certificate names `server_name`.
    CloneTarget { source_url: String, server_name: String },
    /// Host-assisted clone, source side: serves the source PVC `claim` (in `namespace`).
    CloneSource { namespace: String, claim: String, block: bool },
}

/// Everything a worker Pod is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec<'a> {
    pub dv: &'a DataVolume,
    pub role: WorkerRole,
    pub attempt: i32,
    /// The target PVC: Block or Filesystem, and the disk size to make.
    pub block: bool,
    pub virtual_size: u64,
    pub preallocate: bool,
}

const DATA_VOLUME: &str = "cdi-data-vol";
const TMP_VOLUME: &str = "tmp";
const CERT_VOLUME: &str = "cdi-cert-vol";
const CERT_DIR: &str = "/certs";
const CLONE_TOKEN_VOLUME: &str = "clone-token";
/// Where a clone Pod finds its Secret.
pub const CLONE_TOKEN_DIR: &str = "/etc/diskplane/clone";
/// The key of the shared token in a clone's Secret.
pub const CLONE_TOKEN_KEY: &str = "token";
/// Where the upload Pod finds its Secret.
pub const UPLOAD_SECRET_DIR: &str = "/etc/diskplane/upload";
/// Key of the upload Secret holding the DataVolume's token key.
pub const UPLOAD_TOKEN_KEY: &str = "token-key";
/// Keys of a worker's serving certificate, its private key and the CA bundle in its Secret
/// (the `kubernetes.io/tls` names).
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const CA_CERT_KEY: &str = "ca.crt";

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value.into()), value_from: None }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// The restricted container security context.
pub fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { add: None, drop: Some(vec!["ALL".to_owned()]) }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(WORKER_UID),
        run_as_group: Some(WORKER_UID),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None }),
        ..SecurityContext::default()
    }
}

/// The Pod name of a worker role.
pub fn worker_pod_name(dv: &DataVolume, role: &WorkerRole) -> String {
    let name = dv.metadata.name();
    match role {
        WorkerRole::Import => importer_pod(name),
        WorkerRole::Upload => upload_pod(name),
        WorkerRole::CloneTarget { .. } => clone_target_pod(name),
        WorkerRole::CloneSource { .. } => clone_source_pod(dv.metadata.uid.as_deref().unwrap_or_default()),
    }
}

/// A worker Pod.
pub fn worker_pod(config: &ClusterConfig, spec: &WorkerSpec<'_>) -> Pod {
    let dv = spec.dv;
    let uid = dv.metadata.uid.clone().unwrap_or_default();
    let name = worker_pod_name(dv, &spec.role);
    let (role_label, role_arg, namespace, claim, block, read_only) = match &spec.role {
        WorkerRole::Import => {
            ("importer", "import", dv.metadata.namespace(), dv.metadata.name(), spec.block, false)
        }
        WorkerRole::Upload => (
            "cdi-upload-server",
            "upload-server",
            dv.metadata.namespace(),
            dv.metadata.name(),
            spec.block,
            false,
        ),
        WorkerRole::CloneTarget { .. } => (
            "cdi-clone-target",
            "clone-target",
            dv.metadata.namespace(),
            dv.metadata.name(),
            spec.block,
            false,
        ),
        WorkerRole::CloneSource { namespace, claim, block } => {
            ("cdi-clone-source", "clone-source", namespace.as_str(), claim.as_str(), *block, true)
        }
    };
    let volume_path = if block { BLOCK_DEVICE } else { DISK_FILE };
    let mut args =
        vec!["worker".to_owned(), role_arg.to_owned(), "--volume".to_owned(), volume_path.to_owned()];
    let mut env_vars =
        vec![env("OWNER_UID", uid.clone()), env("METRICS_LISTEN", format!("0.0.0.0:{METRICS_PORT}"))];
    let mut volumes = vec![
        Volume {
            name: DATA_VOLUME.to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.to_owned(),
                read_only: Some(read_only).filter(|r| *r),
            }),
            ..Volume::default()
        },
        Volume {
            name: TMP_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    let mut mounts = vec![VolumeMount {
        name: TMP_VOLUME.to_owned(),
        mount_path: "/tmp".to_owned(),
        ..VolumeMount::default()
    }];
    let mut devices = Vec::new();
    if block {
        devices.push(VolumeDevice { name: DATA_VOLUME.to_owned(), device_path: BLOCK_DEVICE.to_owned() });
    } else {
        mounts.insert(
            0,
            VolumeMount {
                name: DATA_VOLUME.to_owned(),
                mount_path: DATA_DIR.to_owned(),
                read_only: Some(read_only).filter(|r| *r),
                ..VolumeMount::default()
            },
        );
    }
    let size = spec.virtual_size.to_string();
    match &spec.role {
        WorkerRole::Import => {
            env_vars.push(env("IMPORTER_IMAGE_SIZE", size));
            env_vars.push(env("IMPORTER_CONTENTTYPE", dv.spec.content_type()));
            if spec.preallocate {
                env_vars.push(env("PREALLOCATION", "true"));
            }
            import_env(dv, &mut args, &mut env_vars, &mut volumes, &mut mounts);
        }
        WorkerRole::Upload => {
            env_vars.push(env("UPLOAD_CONTENTTYPE", dv.spec.content_type()));
            args.extend(
                [
                    "--size",
                    &size,
                    "--listen",
                    &format!("0.0.0.0:{WORKER_PORT}"),
                    "--namespace",
                    dv.metadata.namespace(),
                    "--name",
                    dv.metadata.name(),
                    "--scratch-dir",
                    "/tmp",
                    "--exit-on-success",
                ]
                .map(str::to_owned),
            );
            let files = [UPLOAD_TOKEN_KEY, TLS_CERT_KEY, TLS_KEY_KEY, CA_CERT_KEY];
            for (flag, key) in ["--token-key", "--tls-cert", "--tls-key", "--tls-ca"].into_iter().zip(files) {
                args.extend([flag.to_owned(), format!("{UPLOAD_SECRET_DIR}/{key}")]);
            }
            let secret = upload_pod(dv.metadata.name());
            secret_mount(
                "upload-token-key",
                &secret,
                UPLOAD_SECRET_DIR,
                0o440,
                &files,
                &mut volumes,
                &mut mounts,
            );
        }
        WorkerRole::CloneTarget { source_url, server_name } => {
            args.extend(["--size".to_owned(), size, "--source-url".to_owned(), source_url.clone()]);
            if spec.preallocate {
                env_vars.push(env("PREALLOCATION", "true"));
            }
            args.extend([
                "--ca-cert".to_owned(),
                format!("{CLONE_TOKEN_DIR}/{CA_CERT_KEY}"),
                "--tls-server-name".to_owned(),
                server_name.clone(),
            ]);
            clone_token(&uid, &[CLONE_TOKEN_KEY, CA_CERT_KEY], &mut args, &mut volumes, &mut mounts);
        }
        WorkerRole::CloneSource { .. } => {
            args.extend([
                "--listen".to_owned(),
                format!("0.0.0.0:{CLONE_PORT}"),
                "--tls-cert".to_owned(),
                format!("{CLONE_TOKEN_DIR}/{TLS_CERT_KEY}"),
                "--tls-key".to_owned(),
                format!("{CLONE_TOKEN_DIR}/{TLS_KEY_KEY}"),
            ]);
            let keys = [CLONE_TOKEN_KEY, TLS_CERT_KEY, TLS_KEY_KEY];
            clone_token(&uid, &keys, &mut args, &mut volumes, &mut mounts);
        }
    }
    let same_namespace = namespace == dv.metadata.namespace();
    let mut annotations = BTreeMap::from([
        (ANN_ATTEMPT.to_owned(), spec.attempt.to_string()),
        ("sidecar.istio.io/inject".to_owned(), "false".to_owned()),
    ]);
    annotations.insert(ANN_CREATED_FOR.to_owned(), uid);
    let mut pod_labels = labels(Some(role_label));
    pod_labels.insert(LABEL_PROMETHEUS.to_owned(), "true".to_owned());
    if spec.role == WorkerRole::Upload {
        pod_labels.insert(ANN_UPLOAD_SERVICE_SELECTOR.to_owned(), name.clone());
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.to_owned()),
            labels: Some(pod_labels),
            annotations: Some(annotations),
            // Owner references cannot cross namespaces: a source Pod elsewhere is cleaned up by
            // the DataVolume's finalizer instead.
            owner_references: same_namespace.then(|| vec![owner_reference(dv)]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_owned()),
            enable_service_links: Some(false),
            automount_service_account_token: Some(false),
            service_account_name: dv.spec.service_account_name.clone().filter(|_| same_namespace),
            priority_class_name: dv.spec.priority_class_name.clone(),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(WORKER_UID),
                run_as_group: Some(WORKER_UID),
                fs_group: Some(WORKER_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: role_label.to_owned(),
                image: Some(config.worker_image.clone()),
                image_pull_policy: config.pull_policy.clone(),
                args: Some(args),
                env: Some(env_vars),
                ports: Some(vec![ContainerPort {
                    name: Some("metrics".to_owned()),
                    container_port: METRICS_PORT,
                    protocol: Some("TCP".to_owned()),
                    ..ContainerPort::default()
                }]),
                security_context: Some(restricted_container()),
                termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
                volume_mounts: Some(mounts),
                volume_devices: Some(devices).filter(|d| !d.is_empty()),
                ..Container::default()
            }],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The clone's Secret mounted read-only with only `keys` (owner-readable files, group 107
/// through `fsGroup`), its token passed as `--token-file`.
fn clone_token(
    uid: &str,
    keys: &[&str],
    args: &mut Vec<String>,
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
) {
    args.extend(["--token-file".to_owned(), format!("{CLONE_TOKEN_DIR}/{CLONE_TOKEN_KEY}")]);
    secret_mount(CLONE_TOKEN_VOLUME, &clone_secret(uid), CLONE_TOKEN_DIR, 0o400, keys, volumes, mounts);
}

/// Secret `secret` as volume `volume` at `dir`, read-only, with only `keys` (each as a file of
/// its name): a Pod never sees the keys meant for another.
fn secret_mount(
    volume: &str,
    secret: &str,
    dir: &str,
    mode: i32,
    keys: &[&str],
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
) {
    let items =
        keys.iter().map(|k| KeyToPath { key: (*k).to_owned(), path: (*k).to_owned(), mode: None }).collect();
    volumes.push(Volume {
        name: volume.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            default_mode: Some(mode),
            items: Some(items),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    mounts.push(VolumeMount {
        name: volume.to_owned(),
        mount_path: dir.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
}

/// The Secret of a host-assisted clone in `namespace` (the source's or the target's): the
/// shared `token` both Pods read, the CA bundle `ca.crt` the target verifies the source with,
/// and, where the source runs (`serving`), the source's certificate and key. Owned by the
/// DataVolume in its own namespace; elsewhere only labelled with its UID and deleted by the
/// finalizer.
pub fn clone_secret_object(
    dv: &DataVolume,
    namespace: &str,
    token: &str,
    ca_pem: &str,
    serving: Option<&ServingCert>,
) -> k8s_openapi::api::core::v1::Secret {
    let uid = dv.metadata.uid.clone().unwrap_or_default();
    let mut secret_labels = labels(Some("cdi-clone"));
    secret_labels.insert(LABEL_CLONE_FOR.to_owned(), uid.clone());
    k8s_openapi::api::core::v1::Secret {
        metadata: ObjectMeta {
            name: Some(clone_secret(&uid)),
            namespace: Some(namespace.to_owned()),
            labels: Some(secret_labels),
            owner_references: (namespace == dv.metadata.namespace()).then(|| vec![owner_reference(dv)]),
            ..ObjectMeta::default()
        },
        string_data: Some(clone_secret_data(token, ca_pem, serving)),
        type_: Some("Opaque".to_owned()),
        ..Default::default()
    }
}

fn clone_secret_data(token: &str, ca_pem: &str, serving: Option<&ServingCert>) -> BTreeMap<String, String> {
    let mut data = BTreeMap::from([
        (CLONE_TOKEN_KEY.to_owned(), token.to_owned()),
        (CA_CERT_KEY.to_owned(), ca_pem.to_owned()),
    ]);
    if let Some(serving) = serving {
        data.insert(TLS_CERT_KEY.to_owned(), serving.cert_pem.clone());
        data.insert(TLS_KEY_KEY.to_owned(), serving.key_pem.clone());
    }
    data
}

/// Source parameters of an import (http / registry / blank) in CDI's environment names.
fn import_env(
    dv: &DataVolume,
    args: &mut Vec<String>,
    env_vars: &mut Vec<EnvVar>,
    volumes: &mut Vec<Volume>,
    mounts: &mut Vec<VolumeMount>,
) {
    let source = dv.spec.source.as_ref();
    let mut cert_config_map = None;
    let mut secret = None;
    if let Some(http) = source.and_then(|s| s.http.as_ref()) {
        env_vars.push(env("IMPORTER_SOURCE", "http"));
        env_vars.push(env("IMPORTER_ENDPOINT", http.url.clone()));
        if let Some(checksum) = http.checksum.as_ref().filter(|c| !c.is_empty()) {
            env_vars.push(env("IMPORTER_CHECKSUM", checksum.clone()));
        }
        if http.insecure_skip_verify == Some(true) {
            env_vars.push(env("INSECURE_TLS", "true"));
        }
        for header in &http.extra_headers {
            args.extend(["--header".to_owned(), header.clone()]);
        }
        cert_config_map = http.cert_config_map.clone();
        secret = http.secret_ref.clone();
    } else if let Some(registry) = source.and_then(|s| s.registry.as_ref()) {
        env_vars.push(env("IMPORTER_SOURCE", "registry"));
        env_vars.push(env("IMPORTER_ENDPOINT", registry.url.clone().unwrap_or_default()));
        if let Some(arch) = registry.platform.as_ref().and_then(|p| p.architecture.clone()) {
            env_vars.push(env("IMPORTER_REGISTRY_IMAGE_ARCHITECTURE", arch));
        }
        cert_config_map = registry.cert_config_map.clone();
        secret = registry.secret_ref.clone();
    } else {
        env_vars.push(env("IMPORTER_SOURCE", "none"));
    }
    if let Some(secret) = secret.filter(|s| !s.is_empty()) {
        env_vars.push(secret_env("IMPORTER_ACCESS_KEY_ID", &secret, "accessKeyId"));
        env_vars.push(secret_env("IMPORTER_SECRET_KEY", &secret, "secretKey"));
    }
    if let Some(map) = cert_config_map.filter(|m| !m.is_empty()) {
        env_vars.push(env("IMPORTER_CERT_DIR", CERT_DIR));
        volumes.push(Volume {
            name: CERT_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource { name: map, ..ConfigMapVolumeSource::default() }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: CERT_VOLUME.to_owned(),
            mount_path: CERT_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
}

/// The Service in front of an upload Pod (`cdi-upload-<pvc>`, port 443 → 8443), which the
/// upload proxy forwards to.
pub fn upload_service(dv: &DataVolume) -> Service {
    let name = upload_pod(dv.metadata.name());
    Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: dv.metadata.namespace.clone(),
            labels: Some(labels(Some("cdi-upload-server"))),
            owner_references: Some(vec![owner_reference(dv)]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([
                (LABEL_CDI_ROLE.to_owned(), "cdi-upload-server".to_owned()),
                (ANN_UPLOAD_SERVICE_SELECTOR.to_owned(), name),
            ])),
            ports: Some(vec![ServicePort {
                name: Some("upload".to_owned()),
                port: 443,
                target_port: Some(IntOrString::Int(WORKER_PORT)),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Label on upload Pods naming their Service, so each Service selects exactly its Pod.
pub const ANN_UPLOAD_SERVICE_SELECTOR: &str = "cdi.kubevirt.io/uploadTarget";

/// The Secret of the upload Pod: the key the upload server checks tokens with, one key per
/// DataVolume (`token_key`, hex; derived from the global key, see
/// [`ClusterConfig::upload_token_key`]), so a token for one volume never opens another; and its
/// serving certificate for the upload Service's names ([`upload_service_names`]) with the CA.
pub fn upload_secret(
    dv: &DataVolume,
    token_key: &str,
    serving: &ServingCert,
) -> k8s_openapi::api::core::v1::Secret {
    k8s_openapi::api::core::v1::Secret {
        metadata: ObjectMeta {
            name: Some(upload_pod(dv.metadata.name())),
            namespace: dv.metadata.namespace.clone(),
            labels: Some(labels(Some("cdi-upload-server"))),
            owner_references: Some(vec![owner_reference(dv)]),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([
            (UPLOAD_TOKEN_KEY.to_owned(), token_key.to_owned()),
            (TLS_CERT_KEY.to_owned(), serving.cert_pem.clone()),
            (TLS_KEY_KEY.to_owned(), serving.key_pem.clone()),
            (CA_CERT_KEY.to_owned(), serving.ca_pem.clone()),
        ])),
        type_: Some("Opaque".to_owned()),
        ..Default::default()
    }
}

/// The key of `dv`'s upload Secret when the cluster has a global upload key: the key derived
/// for the DataVolume's namespace, name and uid (`uploader::token::TokenKey::derive_hex`, what
/// the upload proxy derives to verify its tokens). `None`: no global key, use a random one.
pub fn derived_upload_key(config: &ClusterConfig, dv: &DataVolume) -> Option<String> {
    let global = config.upload_token_key.as_ref()?;
    Some(global.derive_hex(
        dv.metadata.namespace(),
        dv.metadata.name(),
        dv.metadata.uid.as_deref().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests;
