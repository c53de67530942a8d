//! Invalid DataVolumes are rejected with CDI's messages, naming the field.

use controller::api::DataVolume;
use controller::validate::ErrorKind;
use controller::{
    Manifest, ValidationError, parse_manifests, validate_data_volume, validate_manifest, validate_update,
};

/// A DataVolume manifest: `spec` is the indented body under `spec:`.
fn dv(spec: &str) -> DataVolume {
    dv_named("disk", spec)
}

fn dv_named(name: &str, spec: &str) -> DataVolume {
    let text = format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: {name}\nspec:\n{spec}"
    );
    match parse_manifests(&text).expect("test manifest parses").remove(0) {
        Manifest::DataVolume(dv) => *dv,
        other => panic!("not a DataVolume: {other:?}"),
    }
}

const HTTP: &str = "  source:\n    http:\n      url: https://example.com/disk.img\n";
const STORAGE_1G: &str = "  storage:\n    resources:\n      requests:\n        storage: 1Gi\n";

fn rejected(dv: &DataVolume) -> ValidationError {
    validate_data_volume(dv).expect_err("should be rejected")
}

fn assert_rejected(spec: &str, field: &str, message: &str) {
    let err = rejected(&dv(spec));
    assert_eq!((err.field.as_str(), err.message.as_str()), (field, message), "{spec}");
    assert_eq!(err.kind, ErrorKind::Invalid);
}

#[test]
fn valid_http_import_is_accepted() {
    assert_eq!(validate_data_volume(&dv(&format!("{HTTP}{STORAGE_1G}"))), Ok(()));
}

#[test]
fn missing_source_is_rejected() {
    assert_rejected(&format!("  source: {{}}\n{STORAGE_1G}"), "spec.source", "Missing Data volume source");
}

#[test]
fn multiple_sources_are_rejected() {
    let spec = format!("  source:\n    blank: {{}}\n    upload: {{}}\n{STORAGE_1G}");
    assert_rejected(&spec, "spec.source", "Multiple Data volume sources");
}

#[test]
fn neither_source_nor_source_ref_is_rejected() {
    assert_rejected(STORAGE_1G, "spec.source", "Data volume should have either Source or SourceRef");
}

#[test]
fn source_and_source_ref_together_are_rejected() {
    let spec = format!("{HTTP}  sourceRef:\n    kind: DataSource\n    name: fedora\n{STORAGE_1G}");
    assert_rejected(&spec, "spec.source", "Data volume should have either Source or SourceRef");
}

#[test]
fn source_ref_of_another_kind_is_rejected() {
    let spec = format!("  sourceRef:\n    kind: PersistentVolumeClaim\n    name: fedora\n{STORAGE_1G}");
    assert_rejected(
        &spec,
        "spec.sourceRef.kind",
        "Unsupported sourceRef kind PersistentVolumeClaim, currently only DataSource is supported",
    );
}

#[test]
fn missing_pvc_and_storage_is_rejected() {
    assert_rejected(HTTP, "spec.pvc", "Missing Data volume PVC");
}

#[test]
fn both_pvc_and_storage_are_rejected() {
    let pvc =
        "  pvc:\n    accessModes: [ReadWriteOnce]\n    resources:\n      requests:\n        storage: 1Gi\n";
    assert_rejected(
        &format!("{HTTP}{STORAGE_1G}{pvc}"),
        "spec.pvc",
        "Duplicate storage definition, both target storage and target pvc defined",
    );
}

#[test]
fn pvc_without_size_is_rejected() {
    let spec = format!("{HTTP}  pvc:\n    accessModes: [ReadWriteOnce]\n");
    assert_rejected(&spec, "spec.pvc.resources.requests.storage", "PVC size is missing");
}

#[test]
fn pvc_without_access_mode_is_rejected() {
    let spec = format!("{HTTP}  pvc:\n    resources:\n      requests:\n        storage: 1Gi\n");
    assert_rejected(&spec, "spec.pvc.accessModes", "Required value: at least 1 access mode is required");
}

#[test]
fn pvc_with_two_access_modes_is_rejected() {
    let spec = format!(
        "{HTTP}  pvc:\n    accessModes: [ReadWriteOnce, ReadOnlyMany]\n    resources:\n      requests:\n        storage: 1Gi\n"
    );
    assert_rejected(&spec, "spec.pvc.accessModes", "PVC multiple accessModes");
}

#[test]
fn unknown_access_mode_is_rejected() {
    let spec = format!(
        "{HTTP}  storage:\n    accessModes: [ReadWriteSometimes]\n    resources:\n      requests:\n        storage: 1Gi\n"
    );
    assert_rejected(
        &spec,
        "spec.storage.accessModes",
        "Unsupported value: \"ReadWriteSometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\"",
    );
}

#[test]
fn zero_and_negative_sizes_are_rejected() {
    for size in ["0", "0Gi", "-1Gi"] {
        let spec =
            format!("{HTTP}  storage:\n    resources:\n      requests:\n        storage: \"{size}\"\n");
        assert_rejected(
            &spec,
            "spec.storage.resources.requests.storage",
            "Storage size can't be equal or less than zero",
        );
    }
}

#[test]
fn size_below_one_mebibyte_is_rejected() {
    let spec = format!("{HTTP}  storage:\n    resources:\n      requests:\n        storage: 1000Ki\n");
    assert_rejected(&spec, "spec.storage.resources.requests.storage", "Storage size should be at least 1MiB");
}

#[test]
fn malformed_size_is_rejected() {
    let spec = format!("{HTTP}  storage:\n    resources:\n      requests:\n        storage: 10GB\n");
    let err = rejected(&dv(&spec));
    assert_eq!(err.field, "spec.storage.resources.requests.storage");
    assert!(err.message.contains("unknown suffix"), "{err}");
}

#[test]
fn import_without_size_is_rejected_but_clone_without_size_is_accepted() {
    assert_rejected(
        &format!("{HTTP}  storage: {{}}\n"),
        "spec.storage.resources.requests.storage",
        "Storage size is missing",
    );
    let clone = "  source:\n    pvc:\n      namespace: golden\n      name: fedora\n  storage: {}\n";
    assert_eq!(validate_data_volume(&dv(clone)), Ok(()));
}

#[test]
fn http_url_must_be_http_or_https() {
    let spec = format!("  source:\n    http:\n      url: ftp://example.com/disk.img\n{STORAGE_1G}");
    assert_rejected(&spec, "spec.source.http.url", "Invalid source URL scheme: ftp://example.com/disk.img");
    let spec = format!("  source:\n    http:\n      url: \"\"\n{STORAGE_1G}");
    assert_rejected(&spec, "spec.source.http.url", "source URL is empty");
}

#[test]
fn checksum_must_be_known_algorithm_with_right_length() {
    let spec = format!(
        "  source:\n    http:\n      url: https://example.com/disk.img\n      checksum: sha256:abcd\n{STORAGE_1G}"
    );
    let err = rejected(&dv(&spec));
    assert_eq!(err.field, "spec.source.http.checksum");
    assert!(err.message.starts_with("Invalid checksum format: \"sha256:abcd\""), "{err}");
    let spec = format!(
        "  source:\n    http:\n      url: https://example.com/disk.img\n      checksum: crc32:abcd1234\n{STORAGE_1G}"
    );
    assert!(rejected(&dv(&spec)).message.contains("unknown algorithm"));
}

#[test]
fn registry_needs_exactly_one_of_url_and_image_stream() {
    let both = format!(
        "  source:\n    registry:\n      url: docker://quay.io/a/b\n      imageStream: is\n      pullMethod: node\n{STORAGE_1G}"
    );
    assert_rejected(&both, "spec.source.registry", "Source registry should have either URL or ImageStream");
    let neither = format!("  source:\n    registry: {{}}\n{STORAGE_1G}");
    assert_rejected(
        &neither,
        "spec.source.registry",
        "Source registry should have either URL or ImageStream",
    );
}

#[test]
fn registry_url_must_be_docker_or_oci_archive() {
    let spec = format!("  source:\n    registry:\n      url: https://quay.io/a/b\n{STORAGE_1G}");
    assert_rejected(
        &spec,
        "spec.source.registry.url",
        "Illegal registry source URL scheme https://quay.io/a/b",
    );
    let oci = format!("  source:\n    registry:\n      url: oci-archive:/images/disk.tar\n{STORAGE_1G}");
    assert_eq!(validate_data_volume(&dv(&oci)), Ok(()));
}

#[test]
fn image_stream_needs_node_pull_method() {
    let spec = format!("  source:\n    registry:\n      imageStream: rhel8\n{STORAGE_1G}");
    assert_rejected(
        &spec,
        "spec.source.registry.imageStream",
        "ImageStream is supported only with node pull import method",
    );
}

#[test]
fn unknown_pull_method_is_rejected() {
    let spec =
        format!("  source:\n    registry:\n      url: docker://a/b\n      pullMethod: kubelet\n{STORAGE_1G}");
    assert_rejected(
        &spec,
        "spec.source.registry.pullMethod",
        "ImportMethod kubelet is neither pod, node or \"\"",
    );
}

#[test]
fn content_type_rules() {
    assert_rejected(
        &format!("{HTTP}  contentType: iso\n{STORAGE_1G}"),
        "spec.contentType",
        "ContentType not one of: kubevirt, archive",
    );
    assert_rejected(
        &format!("  source:\n    blank: {{}}\n  contentType: archive\n{STORAGE_1G}"),
        "spec.contentType",
        "SourceType cannot be blank and the contentType be archive",
    );
    assert_rejected(
        &format!("  source:\n    registry:\n      url: docker://a/b\n  contentType: archive\n{STORAGE_1G}"),
        "spec.contentType",
        "ContentType must be kubevirt when Source is Registry",
    );
}

#[test]
fn clone_source_needs_namespace_and_name() {
    let spec = format!("  source:\n    pvc:\n      name: fedora\n{STORAGE_1G}");
    assert_rejected(&spec, "spec.source.pvc", "spec.source.pvc source PVC is not valid");
}

#[test]
fn unsupported_sources_say_so() {
    for (source, what) in [
        ("s3:\n      url: https://s3.example.com/b/k", "S3 sources"),
        ("gcs:\n      url: gs://bucket/file.img", "GCS sources"),
        (
            "imageio:\n      url: https://engine/ovirt-engine/api\n      diskId: \"1\"",
            "oVirt ImageIO sources",
        ),
        ("vddk:\n      url: https://vcenter", "VMware VDDK sources"),
    ] {
        let err = rejected(&dv(&format!("  source:\n    {source}\n{STORAGE_1G}")));
        assert_eq!(err.kind, ErrorKind::Unsupported, "{err}");
        assert!(err.message.starts_with(&format!("{what} are not supported by diskplane")), "{err}");
    }
}

#[test]
fn names_must_be_dns1123_subdomains_of_at_most_253_characters() {
    let spec = format!("{HTTP}{STORAGE_1G}");
    let err = rejected(&dv_named(&"a".repeat(254), &spec));
    assert_eq!(
        (err.field.as_str(), err.message.as_str()),
        ("metadata.name", "Name cannot be more than 253 characters")
    );
    assert!(rejected(&dv_named("My_Disk", &spec)).message.contains("RFC 1123 subdomain"));
    assert_eq!(validate_data_volume(&dv_named(&"a".repeat(253), &spec)), Ok(()));
}

#[test]
fn vm_template_errors_name_the_template() {
    let text = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: vm\nspec:\n  dataVolumeTemplates:\n  - metadata:\n      name: d\n    spec:\n      source:\n        http:\n          url: https://x/y\n";
    let manifests = parse_manifests(text).unwrap();
    let err = validate_manifest(&manifests[0]).unwrap_err();
    assert_eq!(err.to_string(), "spec.dataVolumeTemplates[0].spec.pvc: Missing Data volume PVC");
}

#[test]
fn spec_is_immutable_on_update() {
    let old = dv(&format!("{HTTP}{STORAGE_1G}"));
    let mut new = old.clone();
    new.spec.preallocation = Some(true);

    let err = validate_update(&old, &new).unwrap_err();

    assert_eq!(err.kind, ErrorKind::Immutable);
    assert_eq!(err.to_string(), "spec: Cannot update DataVolume Spec");
}

#[test]
fn metadata_and_status_may_change_on_update() {
    let old = dv(&format!("{HTTP}{STORAGE_1G}"));
    let mut new = old.clone();
    new.metadata.labels.insert("team".into(), "storage".into());
    new.status = Some(Default::default());

    assert_eq!(validate_update(&old, &new), Ok(()));
}

#[test]
fn checkpoints_may_change_only_on_multi_stage_imports() {
    let http = dv(&format!("{HTTP}{STORAGE_1G}"));
    let mut http_new = http.clone();
    http_new.spec.final_checkpoint = Some(true);
    assert_eq!(validate_update(&http, &http_new).unwrap_err().kind, ErrorKind::Immutable);

    // VDDK itself is unsupported, so the new object is then rejected for that, not for the update.
    let vddk = dv(&format!(
        "  source:\n    vddk:\n      url: https://vcenter\n  checkpoints:\n  - previous: \"\"\n    current: s1\n{STORAGE_1G}"
    ));
    let mut vddk_new = vddk.clone();
    vddk_new.spec.final_checkpoint = Some(true);
    assert_eq!(validate_update(&vddk, &vddk_new).unwrap_err().kind, ErrorKind::Unsupported);
}
