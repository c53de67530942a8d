//! Every CDI example manifest (`shared/cdi-examples/`, copied verbatim from CDI v1.66) is
//! accepted or rejected as CDI would, except where diskplane's policy differs on purpose
//! (unsupported sources), which the table says explicitly.
//!
//! The `shared/` folder is a sibling of the repository root (`/work/shared` beside `/work/main`,
//! and beside the clone in CI).

use std::path::{Path, PathBuf};

use controller::validate::ErrorKind;
use controller::{Manifest, ManifestError, parse_manifests, validate_manifest};

/// What one document of an example file must turn into.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A diskplane kind, valid.
    Accepted(&'static str),
    /// A diskplane kind, rejected as invalid; the message contains this text.
    Rejected(&'static str),
    /// Valid for CDI, refused by diskplane's policy (source it has no importer for).
    Unsupported(&'static str),
    /// Not a diskplane kind (ConfigMap, Secret, CDIConfig…): recognised and skipped.
    NotOurs(&'static str),
    /// A documentation fragment that is YAML but not a valid object of its kind.
    Schema(&'static str),
    /// A documentation fragment that is not YAML at all (listed in the README).
    NotYaml,
}
use Expect::*;

fn examples_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/cdi-examples")).to_path_buf()
}

const MANIFESTS: &[(&str, &[Expect])] = &[
    ("blank-image-datavolume.yaml", &[Accepted("DataVolume")]),
    ("cert-configmap.yaml", &[NotOurs("ConfigMap")]),
    // `storage: {volumeMode: Block}` without a size: clones take the source's size.
    ("clone-block-datavolume.yaml", &[Accepted("DataVolume")]),
    // `storage:` with nothing after it: an empty storage spec, sizeless clone.
    ("clone-datavolume.yaml", &[Accepted("DataVolume")]),
    ("endpoint-secret.yaml", &[NotOurs("Secret")]),
    ("example-cdiconfig.yaml", &[NotOurs("CDIConfig")]),
    // The deliberate negative case: CDI's controller refuses archive on Block (ErrClaimNotValid).
    ("import-archive-block-datavolume.yaml", &[Rejected("ContentType Archive cannot have block volumeMode")]),
    ("import-archive-datavolume.yaml", &[Accepted("DataVolume")]),
    ("import-block-pv.yaml", &[NotOurs("PersistentVolume")]),
    ("import-kubevirt-block-datavolume.yaml", &[Accepted("DataVolume")]),
    ("import-kubevirt-datavolume-gcs-secret.yaml", &[NotOurs("Secret")]),
    // CDI accepts GCS; diskplane has no GCS importer yet and says so.
    ("import-kubevirt-datavolume-gcs.yaml", &[Unsupported("GCS sources are not supported by diskplane")]),
    ("import-kubevirt-datavolume-secret.yaml", &[Accepted("DataVolume")]),
    ("import-kubevirt-datavolume-skip-tls.yaml", &[Accepted("DataVolume")]),
    ("import-kubevirt-datavolume.yaml", &[Accepted("DataVolume")]),
    ("registry-image-block-datavolume.yaml", &[Accepted("DataVolume")]),
    ("registry-image-datavolume.yaml", &[Accepted("DataVolume")]),
    ("upload-block-datavolume-token.yaml", &[Accepted("UploadTokenRequest")]),
    ("upload-block-datavolume.yaml", &[Accepted("DataVolume")]),
    ("upload-datavolume-token.yaml", &[Accepted("UploadTokenRequest")]),
    ("upload-datavolume.yaml", &[Accepted("DataVolume")]),
    // CDI accepts VDDK; it is out of scope for diskplane.
    ("vddk-args-annotation.yaml", &[Unsupported("VMware VDDK sources are not supported")]),
    ("vddk-args-configmap.yaml", &[NotOurs("ConfigMap")]),
    ("vddk-args-field.yaml", &[Unsupported("VMware VDDK sources are not supported")]),
    ("vddk-configmap.yaml", &[NotOurs("ConfigMap")]),
    // A KubeVirt VM: its embedded DataVolume template (pvc API, 100M, http) is valid.
    ("vm-dv.yaml", &[Accepted("VirtualMachine")]),
];

const DOC_SNIPPETS: &[(&str, &[Expect])] = &[
    ("cdi-populators.block1.VolumeImportSource.yaml", &[NotOurs("VolumeImportSource")]),
    (
        "cdi-populators.block3.VolumeUploadSource.yaml",
        &[NotOurs("VolumeUploadSource"), NotOurs("PersistentVolumeClaim")],
    ),
    (
        "cdi-populators.block4.VolumeCloneSource.yaml",
        &[NotOurs("VolumeCloneSource"), NotOurs("PersistentVolumeClaim")],
    ),
    ("clone-from-volumesnapshot-source.block3.DataVolume.yaml", &[Accepted("DataVolume")]),
    ("datavolume-claim-adoption.block2.CDI.yaml", &[NotYaml]),
    // Snapshot clone with `storage:` holding only comments: sizeless clone.
    ("datavolumes.block12.DataVolume.yaml", &[Accepted("DataVolume")]),
    ("datavolumes.block15.DataVolume.yaml", &[Unsupported("oVirt ImageIO sources are not supported")]),
    ("datavolumes.block17.DataVolume.yaml", &[NotYaml]),
    ("datavolumes.block18.DataVolume.yaml", &[Unsupported("VMware VDDK sources are not supported")]),
    ("datavolumes.block22.DataVolume.yaml", &[Accepted("DataVolume")]),
    // `checksum: ""`, `secretRef: ""`: empty optional fields are fine.
    ("datavolumes.block3.DataVolume.yaml", &[Accepted("DataVolume")]),
    ("datavolumes.block5.DataVolume.yaml", &[Accepted("DataVolume")]),
    ("datavolumes.block6.DataVolume.yaml", &[NotYaml]),
    ("datavolumes.block7.DataVolume.yaml", &[Accepted("DataVolume")]),
    ("datavolumes.block8.DataVolume.yaml", &[Accepted("DataVolume")]),
    ("debug.block2.CDI.yaml", &[NotOurs("CDI")]),
    ("image-from-registry.block4.DataVolume.yaml", &[Accepted("DataVolume")]),
    ("image-from-registry.block5.DataVolume.yaml", &[Accepted("DataVolume")]),
    ("namespace-transfer.block1.ObjectTransfer.yaml", &[NotOurs("ObjectTransfer")]),
    ("os-image-poll-and-update.block1.DataImportCron.yaml", &[Accepted("DataImportCron")]),
    ("os-image-poll-and-update.block2.DataVolume.yaml", &[Accepted("DataVolume")]),
    ("os-image-poll-and-update.block3.DataImportCron.yaml", &[Accepted("DataImportCron")]),
    // A fragment: the template ends in `...` before any storage or managedDataSource.
    ("os-image-poll-and-update.block4.DataImportCron.yaml", &[Rejected("Missing Data volume PVC")]),
    // A fragment: `metadata: ...` is a string, not an object.
    ("os-image-poll-and-update.block5.StorageProfile.yaml", &[Schema("StorageProfile")]),
    // A fragment: `source: ...` is a string, not a source.
    ("preallocation.block1.DataVolume.yaml", &[Schema("DataVolume")]),
    ("pvc-mutating-webhook-rendering.block1.CDI.yaml", &[NotYaml]),
    ("storageprofile.block1.StorageProfile.yaml", &[Accepted("StorageProfile")]),
    ("storageprofile.block3.StorageProfile.yaml", &[Accepted("StorageProfile")]),
    // A fragment: `name: x` followed by an indented `...` reads as the name "x ...".
    ("storageprofile.block7.StorageProfile.yaml", &[Rejected("RFC 1123 subdomain")]),
];

fn check_file(path: &Path, expected: &[Expect]) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let manifests = match parse_manifests(&text) {
        Ok(manifests) => manifests,
        Err(ManifestError::Yaml(_)) if matches!(expected, [NotYaml]) => return Ok(()),
        Err(ManifestError::Schema { kind, .. }) if matches!(expected, [Schema(k)] if *k == kind) => {
            return Ok(());
        }
        Err(e) => return Err(format!("expected {expected:?}, got parse error: {e}")),
    };
    if manifests.len() != expected.len() {
        return Err(format!("expected {} documents, got {}: {manifests:?}", expected.len(), manifests.len()));
    }
    for (manifest, expect) in manifests.iter().zip(expected) {
        let outcome = validate_manifest(manifest);
        let ok = match (expect, &outcome) {
            (Accepted(kind), Ok(())) => {
                manifest.kind() == *kind && !matches!(manifest, Manifest::Other { .. })
            }
            (NotOurs(kind), Ok(())) => manifest.kind() == *kind && matches!(manifest, Manifest::Other { .. }),
            (Rejected(text), Err(e)) => e.kind == ErrorKind::Invalid && e.to_string().contains(text),
            (Unsupported(text), Err(e)) => e.kind == ErrorKind::Unsupported && e.to_string().contains(text),
            _ => false,
        };
        if !ok {
            return Err(format!("expected {expect:?}, got {} → {outcome:?}", manifest.kind()));
        }
    }
    Ok(())
}

fn check_folder(folder: &str, table: &[(&str, &[Expect])]) {
    let dir = examples_dir().join(folder);
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (shared/ must sit beside the repository root)", dir.display()))
        .map(|entry| entry.expect("directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut in_table: Vec<String> = table.iter().map(|(name, _)| (*name).to_owned()).collect();
    in_table.sort();
    assert_eq!(on_disk, in_table, "every example file has exactly one row in the table");

    let failures: Vec<String> = table
        .iter()
        .filter_map(|(name, expected)| {
            check_file(&dir.join(name), expected).err().map(|e| format!("{name}: {e}"))
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn cdi_example_manifests_are_accepted_or_rejected_as_cdi_would() {
    check_folder("manifests-example", MANIFESTS);
}

#[test]
fn cdi_doc_snippets_parse_and_validate_as_expected() {
    check_folder("doc-snippets", DOC_SNIPPETS);
}

#[test]
fn example_data_volume_round_trips_with_unknown_fields_kept() {
    let path = examples_dir().join("manifests-example/import-kubevirt-block-datavolume.yaml");
    let mut text = std::fs::read_to_string(path).unwrap();
    text.push_str("  someFutureField:\n    enabled: true\n");
    let manifests = parse_manifests(&text).unwrap();
    let Manifest::DataVolume(dv) = &manifests[0] else { panic!("not a DataVolume") };

    let json = serde_json::to_value(dv).unwrap();

    assert_eq!(json["spec"]["someFutureField"]["enabled"], true);
    assert_eq!(json["spec"]["storage"]["resources"]["requests"]["storage"], "1Gi");
    assert_eq!(json["spec"]["storage"]["storageClassName"], "local");
    let again: controller::api::DataVolume = serde_json::from_value(json).unwrap();
    assert_eq!(&again, dv.as_ref());
}
