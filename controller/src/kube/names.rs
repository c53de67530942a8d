//! Names, labels and annotations the kube driver writes (CDI's where CDI has one).

/// `app: containerized-data-importer` on every object CDI creates; kept so CDI's tooling and
/// dashboards find ours.
pub const LABEL_APP: &str = "app";
/// Value of [`LABEL_APP`].
pub const APP: &str = "containerized-data-importer";
/// `app.kubernetes.io/managed-by: diskplane`.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`], also the field manager and the event reporter.
pub const MANAGER: &str = "diskplane";
/// CDI's worker role label (`importer`, `cdi-upload-server`, `cdi-clone-source`, …).
pub const LABEL_CDI_ROLE: &str = "cdi.kubevirt.io";
/// Pods whose metrics Prometheus scrapes.
pub const LABEL_PROMETHEUS: &str = "prometheus.cdi.kubevirt.io";
/// On the PVC: the UID of the DataVolume it was created for.
pub const ANN_CREATED_FOR: &str = "cdi.kubevirt.io/createdForDataVolume";
/// On the PVC: `kubevirt` or `archive`.
pub const ANN_CONTENT_TYPE: &str = "cdi.kubevirt.io/storage.contentType";
/// On the PVC: `http`, `registry`, `none` (blank).
pub const ANN_IMPORT_SOURCE: &str = "cdi.kubevirt.io/storage.import.source";
/// On the PVC: the import URL.
pub const ANN_IMPORT_ENDPOINT: &str = "cdi.kubevirt.io/storage.import.endpoint";
/// On the PVC: it is an upload target.
pub const ANN_UPLOAD_TARGET: &str = "cdi.kubevirt.io/storage.upload.target";
/// On the PVC: `namespace/name` of the clone source.
pub const ANN_CLONE_REQUEST: &str = "k8s.io/CloneRequest";
/// On the PVC: `copy`, `snapshot` or `csi-clone`.
pub const ANN_CLONE_TYPE: &str = "cdi.kubevirt.io/cloneType";
/// On the PVC: why a clone fell back to `copy`.
pub const ANN_CLONE_FALLBACK_REASON: &str = "cdi.kubevirt.io/cloneFallbackReason";
/// On the PVC: the disk size workers make (the request before filesystem overhead).
pub const ANN_VIRTUAL_SIZE: &str = "diskplane.io/virtual-size";
/// On the PVC: `"true"` when the disk is preallocated.
pub const ANN_PREALLOCATION: &str = "cdi.kubevirt.io/storage.preallocation.requested";
/// On worker Pods: the `restartCount` the worker was started with.
pub const ANN_ATTEMPT: &str = "diskplane.io/attempt";
/// On a PVC: the node the scheduler picked (WaitForFirstConsumer binding has started).
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// On a DataVolume: start the worker even on WaitForFirstConsumer storage.
pub const ANN_BIND_IMMEDIATE: &str = "cdi.kubevirt.io/storage.bind.immediate.requested";
/// Finalizer on DataVolumes that own objects in another namespace (host-assisted clone source
/// Pods), which owner references cannot garbage-collect.
pub const FINALIZER: &str = "cdi.kubevirt.io/dataVolumeFinalizer";
/// Default StorageClass annotation.
pub const ANN_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// Port of the upload server in an upload Pod (the `cdi-upload-<pvc>` Service's target).
pub const WORKER_PORT: i32 = 8443;
/// Port of every worker's plain-HTTP metrics endpoint (`GET /metrics`), apart from the
/// upload server's and the clone source's listeners so none of them collide.
pub const METRICS_PORT: i32 = 8080;
/// uid/gid of worker processes (CDI's `qemu` user).
pub const WORKER_UID: i64 = 107;
/// Where a Filesystem volume is mounted in a worker.
pub const DATA_DIR: &str = "/data";
/// The disk file on a Filesystem volume.
pub const DISK_FILE: &str = "/data/disk.img";
/// Where a Block volume appears in a worker.
pub const BLOCK_DEVICE: &str = "/dev/cdi-block-volume";

/// Longest name of objects that must be DNS-1035 labels (Services; Pod names used as host
/// names).
pub const MAX_NAME: usize = 63;

/// `prefix` + `name`, cut to [`MAX_NAME`] characters with a hash of the full name appended when
/// too long, so two long names never map to the same object.
pub fn object_name(prefix: &str, name: &str) -> String {
    let full = format!("{prefix}{name}");
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = fnv1a(full.as_bytes());
    let keep = MAX_NAME - 9;
    let mut cut = full.get(..keep).unwrap_or(&full).trim_end_matches(['-', '.']).to_owned();
    cut.push_str(&format!("-{:08x}", hash as u32));
    cut
}

/// Importer Pod of a DataVolume (CDI: `importer-<pvc>`).
pub fn importer_pod(dv: &str) -> String {
    object_name("importer-", dv)
}

/// Upload server Pod and its Service (CDI: `cdi-upload-<pvc>`).
pub fn upload_pod(dv: &str) -> String {
    object_name("cdi-upload-", dv)
}

/// Host-assisted clone: the target Pod, next to the target PVC.
pub fn clone_target_pod(dv: &str) -> String {
    object_name("cdi-clone-target-", dv)
}

/// Host-assisted clone: the source Pod, in the source namespace (CDI:
/// `<target-uid>-source-pod`).
pub fn clone_source_pod(dv_uid: &str) -> String {
    object_name("", &format!("{dv_uid}-source-pod"))
}

/// Host-assisted clone: the Secret with the shared token, named alike in the source and the
/// target namespace.
pub fn clone_secret(dv_uid: &str) -> String {
    object_name("", &format!("{dv_uid}-clone-token"))
}

/// The names the upload proxy may dial an upload Pod's Service by, which its serving
/// certificate carries: `cdi-upload-<dv>.<namespace>.svc` (the proxy's default upstream) and
/// the same under `cluster.local`.
pub fn upload_service_names(dv: &str, namespace: &str) -> Vec<String> {
    let service = upload_pod(dv);
    vec![format!("{service}.{namespace}.svc"), format!("{service}.{namespace}.svc.cluster.local")]
}

/// The name in a clone source's serving certificate, which the clone target checks
/// (`--tls-server-name`) while it dials the source Pod's IP: `<source pod>.<namespace>.pod`.
/// It is not resolved; it only ties the certificate to this clone's source Pod.
pub fn clone_source_server_name(dv_uid: &str, source_namespace: &str) -> String {
    format!("{}.{source_namespace}.pod", clone_source_pod(dv_uid))
}

/// Port the clone source serves the volume on (the metrics endpoint has [`METRICS_PORT`]).
pub const CLONE_PORT: i32 = 8444;

/// Label on a clone's Secrets naming the target DataVolume's UID (owner references cannot
/// cross namespaces).
pub const LABEL_CLONE_FOR: &str = "diskplane.io/clone-for";

/// Snapshot clone: the VolumeSnapshot of the source, in the source namespace.
pub fn clone_snapshot(dv_uid: &str) -> String {
    object_name("cdi-tmp-", dv_uid)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_kept_and_long_ones_cut_with_a_hash() {
        assert_eq!(upload_pod("disk"), "cdi-upload-disk");
        let long_a = format!("{}a", "x".repeat(70));
        let long_b = format!("{}b", "x".repeat(70));
        let (a, b) = (upload_pod(&long_a), upload_pod(&long_b));
        assert!(a.len() <= MAX_NAME && b.len() <= MAX_NAME, "{a} {b}");
        assert_ne!(a, b);
        assert!(a.starts_with("cdi-upload-xxx"));
    }

    #[test]
    fn certificate_names_of_upload_services_and_clone_sources() {
        assert_eq!(
            upload_service_names("disk", "vms"),
            ["cdi-upload-disk.vms.svc", "cdi-upload-disk.vms.svc.cluster.local"]
        );
        assert_eq!(clone_source_server_name("uid-1", "golden"), "uid-1-source-pod.golden.pod");
    }
}
