//! `VolumeSnapshot` (`snapshot.storage.k8s.io/v1`), the Kubernetes CSI snapshot kind, as the
//! embedded driver serves it: a point-in-time copy of a DataVolume's volume that DataVolumes
//! (`spec.source.snapshot`) and DataSources (`spec.source.snapshot`) restore from.
//!
//! ## Main types
//! - [`VolumeSnapshot`], [`VolumeSnapshotSpec`], [`VolumeSnapshotSource`],
//!   [`VolumeSnapshotStatus`]: the object, field for field as the external-snapshotter's v1 API
//!   (camelCase on the wire, unknown fields kept in `extra`).
//! - [`validate`]: what the embedded driver admits (a DNS-1123 name, exactly one source, a
//!   dynamic snapshot of a PVC).
//! - [`is_alias`], [`path`]: the CLI's view (`vs`, `volumesnapshot`, …; the API path).
//! - [`quantity_of`]: a byte count as a Kubernetes quantity (`64Mi`), for `restoreSize`.
//!
//! ## Caveats
//! - `spec.volumeSnapshotClassName` is accepted and ignored: there is one pool and one way to
//!   snapshot (reflink where the filesystem can, otherwise a sparse copy).
//! - Pre-provisioned snapshots (`spec.source.volumeSnapshotContentName`) are refused: there are
//!   no VolumeSnapshotContent objects in embedded mode.

use serde::{Deserialize, Serialize};

use super::meta::{Extra, ObjectMeta};
use crate::quantity::Quantity;
use crate::validate::is_dns1123_subdomain;

/// `apiVersion` of VolumeSnapshots.
pub const SNAPSHOT_API_VERSION: &str = "snapshot.storage.k8s.io/v1";
/// The API group of VolumeSnapshots.
pub const SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";
/// `kind`.
pub const KIND: &str = "VolumeSnapshot";
/// Resource name in paths and store keys.
pub const VOLUMESNAPSHOTS: &str = "volumesnapshots";
/// The API path prefix (`/apis/snapshot.storage.k8s.io/v1`).
pub const API_PATH: &str = "/apis/snapshot.storage.k8s.io/v1";

/// A VolumeSnapshot object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshot {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VolumeSnapshotSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VolumeSnapshotStatus>,
}

/// `VolumeSnapshot.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    #[serde(default)]
    pub source: VolumeSnapshotSource,
    /// Accepted and ignored (see the module's Caveats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Exactly one of: the PVC (here: a DataVolume's volume, same namespace) to snapshot, or a
/// pre-provisioned VolumeSnapshotContent (refused here).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_content_name: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `VolumeSnapshot.status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_volume_snapshot_content_name: Option<String>,
    /// When the snapshot was cut (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<String>,
    /// `true` once the snapshot's content is complete and flushed: restores may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The smallest volume a restore needs: the source's size when it was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<Quantity>,
    /// The last error taking the snapshot (cleared once it is ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `status.error`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl VolumeSnapshot {
    /// Whether `status.readyToUse` is `true`.
    pub fn ready(&self) -> bool {
        self.status.as_ref().and_then(|s| s.ready_to_use).unwrap_or(false)
    }
}

/// Why a VolumeSnapshot is not admitted: the field and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

/// What the embedded driver admits: `apiVersion`/`kind` of a v1 VolumeSnapshot, a DNS-1123
/// subdomain name (or a `generateName`), exactly one source, and that source a PVC.
///
/// # Errors
/// The first rule broken, as [`Invalid`].
pub fn validate(vs: &VolumeSnapshot) -> Result<(), Invalid> {
    let invalid = |field, message: &str| Err(Invalid { field, message: message.to_owned() });
    if vs.api_version != SNAPSHOT_API_VERSION || vs.kind != KIND {
        return Err(Invalid {
            field: "apiVersion",
            message: format!(
                "expected {SNAPSHOT_API_VERSION} {KIND}, got {:?} {:?}",
                vs.api_version, vs.kind
            ),
        });
    }
    let name = vs.metadata.name();
    if name.is_empty() {
        if vs.metadata.generate_name.as_deref().is_none_or(str::is_empty) {
            return invalid("metadata.name", "Required value: name or generateName is required");
        }
    } else if !is_dns1123_subdomain(name) {
        return Err(Invalid {
            field: "metadata.name",
            message: format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        });
    }
    let source = &vs.spec.source;
    let pvc = source.persistent_volume_claim_name.as_deref().filter(|n| !n.is_empty());
    let content = source.volume_snapshot_content_name.as_deref().filter(|n| !n.is_empty());
    match (pvc, content) {
        (Some(_), Some(_)) => invalid(
            "spec.source",
            "Exactly one of persistentVolumeClaimName and volumeSnapshotContentName should be specified",
        ),
        (None, None) => invalid(
            "spec.source",
            "Exactly one of persistentVolumeClaimName and volumeSnapshotContentName should be specified",
        ),
        (None, Some(content)) => Err(Invalid {
            field: "spec.source.volumeSnapshotContentName",
            message: format!(
                "pre-provisioned snapshots (volumeSnapshotContentName {content:?}) are not supported by diskplane: there are no VolumeSnapshotContents in embedded mode; use persistentVolumeClaimName"
            ),
        }),
        (Some(pvc), None) if !is_dns1123_subdomain(pvc) => Err(Invalid {
            field: "spec.source.persistentVolumeClaimName",
            message: format!("Invalid value: {pvc:?}: not a valid PVC name"),
        }),
        (Some(_), None) => Ok(()),
    }
}

/// Whether a CLI KIND argument names VolumeSnapshots (as kubectl resolves it).
pub fn is_alias(kind: &str) -> bool {
    matches!(
        kind.to_ascii_lowercase().as_str(),
        "vs" | "volumesnapshot" | "volumesnapshots" | "volumesnapshots.snapshot.storage.k8s.io"
    )
}

/// `/apis/snapshot.storage.k8s.io/v1/namespaces/NS/volumesnapshots[/NAME]`.
pub fn path(namespace: &str, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{API_PATH}/namespaces/{namespace}/{VOLUMESNAPSHOTS}/{name}"),
        None => format!("{API_PATH}/namespaces/{namespace}/{VOLUMESNAPSHOTS}"),
    }
}

/// A byte count as a Kubernetes quantity: the largest binary suffix that divides it exactly
/// (`64Mi`, `1Gi`), plain bytes otherwise. Parses back to the same count.
pub fn quantity_of(bytes: u64) -> Quantity {
    const SUFFIXES: [(&str, u32); 6] =
        [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
    if bytes > 0 {
        for (suffix, shift) in SUFFIXES {
            if bytes.trailing_zeros() >= shift {
                return Quantity(format!("{}{suffix}", bytes >> shift));
            }
        }
    }
    Quantity(bytes.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> VolumeSnapshot {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const GOOD: &str = "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata:\n  name: golden-snap\nspec:\n  volumeSnapshotClassName: csi-hostpath-snapclass\n  source:\n    persistentVolumeClaimName: golden\n";

    #[test]
    fn a_pvc_snapshot_parses_and_is_admitted() {
        let vs = parse(GOOD);
        assert_eq!(vs.spec.source.persistent_volume_claim_name.as_deref(), Some("golden"));
        assert_eq!(vs.spec.volume_snapshot_class_name.as_deref(), Some("csi-hostpath-snapclass"));
        assert_eq!(validate(&vs), Ok(()));
        assert!(!vs.ready());
    }

    #[test]
    fn status_round_trips_with_unknown_fields() {
        let json = serde_json::json!({
            "apiVersion": SNAPSHOT_API_VERSION, "kind": KIND, "metadata": {"name": "s"},
            "spec": {"source": {"persistentVolumeClaimName": "p"}},
            "status": {"readyToUse": true, "restoreSize": "64Mi", "creationTime": "2026-11-28T04:00:00Z",
                       "boundVolumeSnapshotContentName": "snapcontent-1", "volumeGroupSnapshotName": "g"}
        });
        let vs: VolumeSnapshot = serde_json::from_value(json.clone()).unwrap();
        assert!(vs.ready());
        assert_eq!(vs.status.as_ref().unwrap().restore_size, Some(Quantity("64Mi".into())));
        assert_eq!(serde_json::to_value(&vs).unwrap(), json);
    }

    #[test]
    fn pre_provisioned_snapshots_are_refused_with_a_clear_message() {
        let vs = parse(&GOOD.replace("persistentVolumeClaimName: golden", "volumeSnapshotContentName: c1"));
        let err = validate(&vs).unwrap_err();
        assert_eq!(err.field, "spec.source.volumeSnapshotContentName");
        assert!(err.message.contains("pre-provisioned") && err.message.contains("\"c1\""), "{}", err.message);
    }

    #[test]
    fn sources_must_be_exactly_one() {
        let none = parse(&GOOD.replace("    persistentVolumeClaimName: golden\n", "    {}\n"));
        assert_eq!(validate(&none).unwrap_err().field, "spec.source");
        let both = parse(&GOOD.replace(
            "persistentVolumeClaimName: golden",
            "persistentVolumeClaimName: golden\n    volumeSnapshotContentName: c1",
        ));
        assert!(validate(&both).unwrap_err().message.contains("Exactly one"));
    }

    #[test]
    fn names_and_kinds_are_checked() {
        let bad = parse(&GOOD.replace("name: golden-snap", "name: Golden_Snap"));
        assert_eq!(validate(&bad).unwrap_err().field, "metadata.name");
        let pvc =
            parse(&GOOD.replace("persistentVolumeClaimName: golden", "persistentVolumeClaimName: ../x"));
        assert_eq!(validate(&pvc).unwrap_err().field, "spec.source.persistentVolumeClaimName");
        let beta = parse(&GOOD.replace("snapshot.storage.k8s.io/v1", "snapshot.storage.k8s.io/v1beta1"));
        assert_eq!(validate(&beta).unwrap_err().field, "apiVersion");
        let generated = parse(&GOOD.replace("name: golden-snap", "generateName: snap-"));
        assert_eq!(validate(&generated), Ok(()));
    }

    #[test]
    fn quantities_use_the_largest_exact_binary_suffix() {
        assert_eq!(quantity_of(64 << 20).0, "64Mi");
        assert_eq!(quantity_of(1 << 30).0, "1Gi");
        assert_eq!(quantity_of(1536 << 20).0, "1536Mi");
        assert_eq!(quantity_of(1000).0, "1000");
        assert_eq!(quantity_of(0).0, "0");
        for bytes in [1u64, 4096, 24 << 20, (3 << 30) + 512] {
            assert_eq!(quantity_of(bytes).bytes().unwrap(), i64::try_from(bytes).unwrap());
        }
    }

    #[test]
    fn cli_aliases_and_paths() {
        for alias in ["vs", "VolumeSnapshot", "volumesnapshots", "volumesnapshots.snapshot.storage.k8s.io"] {
            assert!(is_alias(alias), "{alias}");
        }
        assert!(!is_alias("dv"));
        assert_eq!(path("ns", Some("s")), "/apis/snapshot.storage.k8s.io/v1/namespaces/ns/volumesnapshots/s");
    }
}
