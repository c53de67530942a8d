//! Admission rules: what CDI's validating webhook (and, for a few rules, its DataVolume
//! controller) accepts, with the same messages, plus diskplane's own policy for sources it does
//! not implement.
//!
//! Like CDI, validation stops at the first problem and reports one [`ValidationError`] naming
//! the field (`spec.source.http.url`) and the reason. The order of checks follows CDI's webhook,
//! so the message a user sees for a manifest with several problems is the one CDI would show.
//!
//! Deliberate differences from CDI, each marked where it is checked:
//! - `s3`, `gcs`, `imageio` and `vddk` sources are rejected as [`ErrorKind::Unsupported`]
//!   (CDI accepts them; diskplane has no importer for them).
//! - `contentType: archive` with `volumeMode: Block` is rejected at admission (CDI accepts the
//!   object and then leaves it Pending with event `ErrClaimNotValid`).
//! - a `storage` spec without a size is rejected for non-clone sources (CDI defers this to the
//!   controller, where the DataVolume never progresses).
//! - sizes below 1 MiB are rejected (CDI: "size should be at least 1MiB").
//! - `key:` with no value for `storage`, `pvc` or a source means an empty object, as CDI's own
//!   examples intend (a Kubernetes API server would prune the null instead).

use std::fmt;

use crate::api::datavolume::{
    CONTENT_TYPE_ARCHIVE, CONTENT_TYPE_KUBEVIRT, ClaimSpec, DataVolumeSpec, HttpSource, RegistrySource,
    SourceKind, VOLUME_MODE_BLOCK, VOLUME_MODE_FILESYSTEM,
};
use crate::api::{DataImportCron, DataSource, DataVolume, ObjectMeta, StorageProfile, UploadTokenRequest};
use crate::manifest::{Manifest, VirtualMachine};

/// Smallest volume diskplane (and CDI) will create.
pub const MIN_SIZE_BYTES: i64 = 1024 * 1024;
/// `DNS1123SubdomainMaxLength`: longest object name.
pub const MAX_NAME_LEN: usize = 253;
/// `DNS1035LabelMaxLength`: longest DataSource / DataImportCron name.
pub const MAX_LABEL_LEN: usize = 63;
/// Most claim property sets a StorageProfile may list (CRD limit).
pub const MAX_CLAIM_PROPERTY_SETS: usize = 8;

/// How a rejection should be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The object breaks a rule CDI also enforces.
    Invalid,
    /// Valid for CDI, but a feature diskplane does not implement.
    Unsupported,
    /// An update changes a field that cannot change.
    Immutable,
}

/// One rejection: the field path, what is wrong, and its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub kind: ErrorKind,
    pub field: String,
    pub message: String,
}

impl ValidationError {
    fn invalid(field: impl fmt::Display, message: impl Into<String>) -> Self {
        ValidationError { kind: ErrorKind::Invalid, field: field.to_string(), message: message.into() }
    }
}

type Result<T = ()> = std::result::Result<T, ValidationError>;

/// Validates any object read from a manifest. Kinds that are not diskplane's (ConfigMap,
/// Secret, CDIConfig…) pass: they are not ours to judge.
///
/// # Errors
/// The first rule the object breaks.
pub fn validate_manifest(manifest: &Manifest) -> Result {
    match manifest {
        Manifest::DataVolume(dv) => validate_data_volume(dv),
        Manifest::DataSource(ds) => validate_data_source(ds),
        Manifest::DataImportCron(cron) => validate_data_import_cron(cron),
        Manifest::StorageProfile(profile) => validate_storage_profile(profile),
        Manifest::UploadTokenRequest(request) => validate_upload_token_request(request),
        Manifest::VirtualMachine(vm) => validate_virtual_machine(vm),
        Manifest::Other { .. } => Ok(()),
    }
}

/// Validates a DataVolume being created.
///
/// # Errors
/// The first rule the DataVolume breaks.
pub fn validate_data_volume(dv: &DataVolume) -> Result {
    validate_name(&dv.metadata, "metadata", MAX_NAME_LEN)?;
    validate_data_volume_spec(&dv.spec, "spec")
}

/// Validates an update: the spec is immutable, except `checkpoints` / `finalCheckpoint` of a
/// multi-stage (warm) import. The new object must also be valid.
///
/// # Errors
/// `Cannot update DataVolume Spec` ([`ErrorKind::Immutable`]), or the new object's first problem.
pub fn validate_update(old: &DataVolume, new: &DataVolume) -> Result {
    if old.spec != new.spec {
        let multi_stage = new.spec.source.as_ref().is_some_and(|s| s.vddk.is_some() || s.imageio.is_some())
            && !new.spec.checkpoints.is_empty();
        let without_checkpoints = |spec: &DataVolumeSpec| DataVolumeSpec {
            checkpoints: Vec::new(),
            final_checkpoint: None,
            ..spec.clone()
        };
        if !multi_stage || without_checkpoints(&old.spec) != without_checkpoints(&new.spec) {
            return Err(ValidationError {
                kind: ErrorKind::Immutable,
                field: "spec".into(),
                message: "Cannot update DataVolume Spec".into(),
            });
        }
    }
    validate_data_volume(new)
}

/// Validates a DataVolume spec; `path` prefixes field names (`spec`,
/// `spec.dataVolumeTemplates[0].spec`).
///
/// # Errors
/// The first rule the spec breaks.
pub fn validate_data_volume_spec(spec: &DataVolumeSpec, path: &str) -> Result {
    validate_claim(spec, path)?;

    let source = match (&spec.source, &spec.source_ref) {
        (Some(source), None) => source,
        (None, Some(source_ref)) => {
            let field = format!("{path}.sourceRef");
            if source_ref.kind.is_empty() {
                return Err(ValidationError::invalid(format!("{field}.kind"), "Missing sourceRef kind"));
            }
            if source_ref.kind != "DataSource" {
                return Err(ValidationError::invalid(
                    format!("{field}.kind"),
                    format!(
                        "Unsupported sourceRef kind {}, currently only DataSource is supported",
                        source_ref.kind
                    ),
                ));
            }
            if source_ref.name.is_empty() {
                return Err(ValidationError::invalid(format!("{field}.name"), "Missing sourceRef name"));
            }
            return validate_content_type(spec, path, None);
        }
        _ => {
            return Err(ValidationError::invalid(
                format!("{path}.source"),
                "Data volume should have either Source or SourceRef",
            ));
        }
    };

    let field = format!("{path}.source");
    match source.count() {
        0 => return Err(ValidationError::invalid(&field, "Missing Data volume source")),
        1 => {}
        _ => return Err(ValidationError::invalid(&field, "Multiple Data volume sources")),
    }
    let Some(kind) = source.kind() else {
        let name = source.extra.keys().next().map_or("", String::as_str);
        return Err(unsupported(format!("{field}.{name}"), &format!("source type {name:?}")));
    };

    // diskplane policy: sources without an importer are refused up front, with a clear message.
    match kind {
        SourceKind::S3 => return Err(unsupported(format!("{field}.s3"), "S3 sources")),
        SourceKind::Gcs => return Err(unsupported(format!("{field}.gcs"), "GCS sources")),
        SourceKind::Imageio => return Err(unsupported(format!("{field}.imageio"), "oVirt ImageIO sources")),
        SourceKind::Vddk => return Err(unsupported(format!("{field}.vddk"), "VMware VDDK sources")),
        _ => {}
    }

    // Storage without a size: CDI detects the size of clone sources; everything else needs one.
    if spec.pvc.is_none()
        && let Some(storage) = &spec.storage
        && !kind.is_clone()
        && !storage.resources.requests.contains_key("storage")
    {
        return Err(ValidationError::invalid(
            format!("{path}.storage.resources.requests.storage"),
            "Storage size is missing",
        ));
    }

    if let Some(http) = &source.http {
        validate_http(http, &format!("{field}.http"))?;
    }
    validate_content_type(spec, path, Some(kind))?;
    if let Some(registry) = &source.registry {
        validate_registry(registry, &format!("{field}.registry"))?;
    }
    for (clone, name, what) in [(&source.pvc, "pvc", "PVC"), (&source.snapshot, "snapshot", "snapshot")] {
        if let Some(reference) = clone
            && (reference.namespace.is_empty() || reference.name.is_empty())
        {
            let field = format!("{field}.{name}");
            return Err(ValidationError::invalid(&field, format!("{field} source {what} is not valid")));
        }
    }
    Ok(())
}

fn unsupported(field: String, what: &str) -> ValidationError {
    ValidationError {
        kind: ErrorKind::Unsupported,
        field,
        message: format!(
            "{what} are not supported by diskplane (supported: http, registry, upload, pvc, snapshot, blank)"
        ),
    }
}

/// `pvc` / `storage`: exactly one, with a sane size and access modes.
fn validate_claim(spec: &DataVolumeSpec, path: &str) -> Result {
    let (claim, name, field) = match (&spec.pvc, &spec.storage) {
        (None, None) => {
            return Err(ValidationError::invalid(format!("{path}.pvc"), "Missing Data volume PVC"));
        }
        (Some(_), Some(_)) => {
            return Err(ValidationError::invalid(
                format!("{path}.pvc"),
                "Duplicate storage definition, both target storage and target pvc defined",
            ));
        }
        (Some(pvc), None) => (pvc, "PVC", format!("{path}.pvc")),
        (None, Some(storage)) => (storage, "Storage", format!("{path}.storage")),
    };
    let size_field = format!("{field}.resources.requests.storage");
    match claim.resources.requests.get("storage") {
        None if name == "PVC" => return Err(ValidationError::invalid(&size_field, "PVC size is missing")),
        None => {} // checked once the source is known: clones may omit it
        Some(quantity) => {
            let bytes = quantity.bytes().map_err(|e| ValidationError::invalid(&size_field, e.to_string()))?;
            if bytes <= 0 {
                return Err(ValidationError::invalid(
                    &size_field,
                    format!("{name} size can't be equal or less than zero"),
                ));
            }
            if bytes < MIN_SIZE_BYTES {
                return Err(ValidationError::invalid(
                    &size_field,
                    format!("{name} size should be at least 1MiB"),
                ));
            }
        }
    }
    validate_access_modes(claim, name, &field)?;
    validate_volume_mode(claim, name, &field)
}

const ACCESS_MODES: [&str; 3] = ["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce"];

fn validate_access_modes(claim: &ClaimSpec, name: &str, field: &str) -> Result {
    let field = format!("{field}.accessModes");
    let modes = &claim.access_modes;
    if name == "PVC" {
        // The raw PVC API takes exactly one mode, as CDI's webhook requires.
        if modes.is_empty() {
            return Err(ValidationError::invalid(
                &field,
                "Required value: at least 1 access mode is required",
            ));
        }
        if modes.len() > 1 {
            return Err(ValidationError::invalid(&field, "PVC multiple accessModes"));
        }
    }
    // `storage` may omit them (filled from the StorageProfile) or list several.
    match modes.iter().find(|mode| !ACCESS_MODES.contains(&mode.as_str())) {
        Some(mode) => Err(ValidationError::invalid(
            &field,
            format!(
                "Unsupported value: {mode:?}: supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \"ReadWriteOnce\""
            ),
        )),
        None => Ok(()),
    }
}

fn validate_volume_mode(claim: &ClaimSpec, name: &str, field: &str) -> Result {
    let Some(mode) = claim.volume_mode.as_deref() else { return Ok(()) };
    let allowed: &[&str] = if name == "PVC" {
        &[VOLUME_MODE_BLOCK, VOLUME_MODE_FILESYSTEM]
    } else {
        &[VOLUME_MODE_BLOCK, VOLUME_MODE_FILESYSTEM, "FromStorageProfile"]
    };
    if allowed.contains(&mode) {
        return Ok(());
    }
    let list = allowed.iter().map(|m| format!("{m:?}")).collect::<Vec<_>>().join(", ");
    Err(ValidationError::invalid(
        format!("{field}.volumeMode"),
        format!("Unsupported value: {mode:?}: supported values: {list}"),
    ))
}

/// `contentType`: kubevirt or archive; archive is neither blank, registry, nor Block.
fn validate_content_type(spec: &DataVolumeSpec, path: &str, kind: Option<SourceKind>) -> Result {
    let field = format!("{path}.contentType");
    let content_type = spec.content_type();
    if content_type != CONTENT_TYPE_KUBEVIRT && content_type != CONTENT_TYPE_ARCHIVE {
        return Err(ValidationError::invalid(field, "ContentType not one of: kubevirt, archive"));
    }
    if content_type != CONTENT_TYPE_ARCHIVE {
        return Ok(());
    }
    match kind {
        Some(SourceKind::Blank) => {
            Err(ValidationError::invalid(field, "SourceType cannot be blank and the contentType be archive"))
        }
        Some(SourceKind::Registry) => {
            Err(ValidationError::invalid(field, "ContentType must be kubevirt when Source is Registry"))
        }
        // CDI's DataVolume controller refuses this (event ErrClaimNotValid); we refuse it here.
        _ if spec.is_block() => Err(ValidationError::invalid(
            field,
            "DataVolume with ContentType Archive cannot have block volumeMode",
        )),
        _ => Ok(()),
    }
}

fn validate_http(http: &HttpSource, field: &str) -> Result {
    let url_field = format!("{field}.url");
    if let Some(problem) = source_url_problem(&http.url) {
        return Err(ValidationError::invalid(url_field, problem));
    }
    match http.checksum.as_deref() {
        None | Some("") => Ok(()),
        Some(checksum) => validate_checksum(checksum).map_err(|why| {
            ValidationError::invalid(
                format!("{field}.checksum"),
                format!("Invalid checksum format: {checksum:?}: {why}"),
            )
        }),
    }
}

/// CDI's `validateSourceURL`: parse as a request URI, scheme http or https.
fn source_url_problem(url: &str) -> Option<String> {
    if url.is_empty() {
        return Some("source URL is empty".into());
    }
    if url.chars().any(|c| c.is_control() || c == ' ') {
        return Some(format!("Invalid source URL: {url}"));
    }
    let scheme = match url_scheme(url) {
        Some(scheme) => scheme.to_ascii_lowercase(),
        None if url.starts_with('/') => String::new(), // an absolute path parses, without scheme
        None => return Some(format!("Invalid source URL: {url}")),
    };
    if scheme != "http" && scheme != "https" {
        return Some(format!("Invalid source URL scheme: {url}"));
    }
    None
}

/// The `scheme` of `scheme:rest`, if the text starts with a syntactically valid one.
fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

/// `algo:hex` with a known algorithm and a digest of exactly its length.
fn validate_checksum(checksum: &str) -> std::result::Result<(), String> {
    let (algorithm, hex) = checksum.split_once(':').ok_or("expected <algorithm>:<hex digest>")?;
    let hex_len = match algorithm {
        "md5" => 32,
        "sha1" => 40,
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(format!("unknown algorithm {algorithm:?} (md5, sha1, sha256, sha512)")),
    };
    if hex.len() != hex_len {
        return Err(format!("{algorithm} digest must be {hex_len} hex digits, got {}", hex.len()));
    }
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("digest is not hexadecimal".into());
    }
    Ok(())
}

fn validate_registry(registry: &RegistrySource, field: &str) -> Result {
    let url = registry.url.as_deref().filter(|u| !u.is_empty());
    let image_stream = registry.image_stream.as_deref().filter(|s| !s.is_empty());
    let url = match (url, image_stream) {
        (Some(url), None) => Some(url),
        (None, Some(_)) => None,
        _ => {
            return Err(ValidationError::invalid(
                field,
                "Source registry should have either URL or ImageStream",
            ));
        }
    };
    if let Some(url) = url {
        let url_field = format!("{field}.url");
        let valid = match url_scheme(url) {
            Some("docker") => url.strip_prefix("docker://").is_some_and(|image| !image.is_empty()),
            Some("oci-archive") => url.len() > "oci-archive:".len(),
            _ => false,
        };
        if !valid {
            return Err(ValidationError::invalid(
                url_field,
                format!("Illegal registry source URL scheme {url}"),
            ));
        }
    }
    let pull_method = registry.pull_method.as_deref().unwrap_or("");
    if !matches!(pull_method, "" | "pod" | "node") {
        return Err(ValidationError::invalid(
            format!("{field}.pullMethod"),
            format!("ImportMethod {pull_method} is neither pod, node or \"\""),
        ));
    }
    if image_stream.is_some() && pull_method != "node" {
        return Err(ValidationError::invalid(
            format!("{field}.imageStream"),
            "ImageStream is supported only with node pull import method",
        ));
    }
    Ok(())
}

/// `metadata.name` (or `generateName`): a DNS-1123 subdomain of at most `max_len` characters.
fn validate_name(meta: &ObjectMeta, path: &str, max_len: usize) -> Result {
    let field = format!("{path}.name");
    let name = meta.name();
    if name.is_empty() {
        return match meta.generate_name.as_deref() {
            Some(prefix) if !prefix.is_empty() => Ok(()),
            _ => Err(ValidationError::invalid(field, "Required value: name or generateName is required")),
        };
    }
    if name.len() > max_len {
        return Err(ValidationError::invalid(
            field,
            format!("Name cannot be more than {max_len} characters"),
        ));
    }
    if !is_dns1123_subdomain(name) {
        return Err(ValidationError::invalid(
            field,
            format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case \
                 alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ),
        ));
    }
    Ok(())
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`, at most 253 characters.
pub fn is_dns1123_subdomain(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && name.split('.').all(is_dns1123_label_text)
}

/// `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1035_label(name: &str) -> bool {
    name.len() <= MAX_LABEL_LEN
        && name.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
        && is_dns1123_label_text(name)
}

fn is_dns1123_label_text(label: &str) -> bool {
    let b = label.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// A KubeVirt VirtualMachine: each `dataVolumeTemplates[i]` must be a valid DataVolume.
///
/// # Errors
/// The first template's first problem, with the template's path.
pub fn validate_virtual_machine(vm: &VirtualMachine) -> Result {
    for (i, template) in vm.spec.data_volume_templates.iter().enumerate() {
        let path = format!("spec.dataVolumeTemplates[{i}]");
        validate_name(&template.metadata, &format!("{path}.metadata"), MAX_NAME_LEN)?;
        validate_data_volume_spec(&template.spec, &format!("{path}.spec"))?;
    }
    Ok(())
}

/// A DataSource: a DNS-1035 name and exactly one of `pvc`, `snapshot`, `dataSource`, each with
/// a name. (Depth and self-reference of chains are checked when resolving, not here.)
///
/// # Errors
/// The first rule the DataSource breaks.
pub fn validate_data_source(ds: &DataSource) -> Result {
    validate_label_name(&ds.metadata)?;
    let source = &ds.spec.source;
    let set: Vec<_> =
        [("pvc", &source.pvc), ("snapshot", &source.snapshot), ("dataSource", &source.data_source)]
            .into_iter()
            .filter_map(|(name, reference)| reference.as_ref().map(|r| (name, r)))
            .collect();
    match set.as_slice() {
        [] => Err(ValidationError::invalid("spec.source", "Missing DataSource source")),
        [(name, reference)] if reference.name.is_empty() => Err(ValidationError::invalid(
            format!("spec.source.{name}.name"),
            "Required value: name is required",
        )),
        [_] => Ok(()),
        _ => Err(ValidationError::invalid("spec.source", "Multiple DataSource sources")),
    }
}

fn validate_label_name(meta: &ObjectMeta) -> Result {
    validate_name(meta, "metadata", MAX_LABEL_LEN)?;
    let name = meta.name();
    if !name.is_empty() && !is_dns1035_label(name) {
        return Err(ValidationError::invalid(
            "metadata.name",
            format!(
                "Invalid value: {name:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with a letter and end with an alphanumeric character"
            ),
        ));
    }
    Ok(())
}

/// A DataImportCron: a valid template with a `registry` or `pvc` source and none of
/// `sourceRef`, `contentType`, `checkpoints`, `finalCheckpoint`; a managed DataSource; a 5-field
/// schedule; known garbage-collection and retention policies.
///
/// # Errors
/// The first rule the DataImportCron breaks.
pub fn validate_data_import_cron(cron: &DataImportCron) -> Result {
    validate_label_name(&cron.metadata)?;
    let spec = &cron.spec;
    let template = &spec.template.spec;
    let field = "spec.template.spec";
    let source_kind = template.source.as_ref().and_then(|s| s.kind());
    if template.source_ref.is_some() {
        return Err(ValidationError::invalid(
            format!("{field}.sourceRef"),
            "sourceRef is not allowed in a DataImportCron template",
        ));
    }
    if !matches!(source_kind, Some(SourceKind::Registry | SourceKind::Pvc)) {
        return Err(ValidationError::invalid(
            format!("{field}.source"),
            "DataImportCron source must be registry or pvc",
        ));
    }
    if template.content_type.is_some()
        || !template.checkpoints.is_empty()
        || template.final_checkpoint.is_some()
    {
        return Err(ValidationError::invalid(
            field,
            "contentType, checkpoints and finalCheckpoint are not allowed in a DataImportCron template",
        ));
    }
    validate_data_volume_spec(template, field)?;
    if !spec.schedule.trim().is_empty() {
        crate::cron::Schedule::parse(&spec.schedule)
            .map_err(|e| ValidationError::invalid("spec.schedule", format!("Illegal cron schedule: {e}")))?;
    }
    if let Some(gc) = spec.garbage_collect.as_deref().filter(|gc| !matches!(*gc, "Outdated" | "Never")) {
        return Err(ValidationError::invalid(
            "spec.garbageCollect",
            format!("Unsupported value: {gc:?}: supported values: \"Outdated\", \"Never\""),
        ));
    }
    if spec.imports_to_keep.is_some_and(|n| n < 0) {
        return Err(ValidationError::invalid("spec.importsToKeep", "must be greater than or equal to 0"));
    }
    if spec.managed_data_source.is_empty() {
        return Err(ValidationError::invalid(
            "spec.managedDataSource",
            "Required value: managedDataSource is required",
        ));
    }
    if let Some(policy) = spec.retention_policy.as_deref().filter(|p| !matches!(*p, "All" | "None")) {
        return Err(ValidationError::invalid(
            "spec.retentionPolicy",
            format!("Unsupported value: {policy:?}: supported values: \"All\", \"None\""),
        ));
    }
    Ok(())
}

/// A StorageProfile: a DNS-1123 name (its StorageClass's), known clone strategy and source format, at most 8 claim property sets of
/// at most 4 known access modes and a known volume mode each.
///
/// # Errors
/// The first rule the StorageProfile breaks.
pub fn validate_storage_profile(profile: &StorageProfile) -> Result {
    validate_name(&profile.metadata, "metadata", MAX_NAME_LEN)?;
    let spec = &profile.spec;
    if let Some(strategy) =
        spec.clone_strategy.as_deref().filter(|s| !matches!(*s, "copy" | "snapshot" | "csi-clone"))
    {
        return Err(ValidationError::invalid(
            "spec.cloneStrategy",
            format!(
                "Unsupported value: {strategy:?}: supported values: \"copy\", \"snapshot\", \"csi-clone\""
            ),
        ));
    }
    if let Some(format) =
        spec.data_import_cron_source_format.as_deref().filter(|f| !matches!(*f, "pvc" | "snapshot"))
    {
        return Err(ValidationError::invalid(
            "spec.dataImportCronSourceFormat",
            format!("Unsupported value: {format:?}: supported values: \"pvc\", \"snapshot\""),
        ));
    }
    if spec.claim_property_sets.len() > MAX_CLAIM_PROPERTY_SETS {
        return Err(ValidationError::invalid(
            "spec.claimPropertySets",
            format!(
                "Too many: {}: must have at most {MAX_CLAIM_PROPERTY_SETS} items",
                spec.claim_property_sets.len()
            ),
        ));
    }
    for (i, set) in spec.claim_property_sets.iter().enumerate() {
        let field = format!("spec.claimPropertySets[{i}]");
        if set.access_modes.len() > 4 {
            return Err(ValidationError::invalid(
                format!("{field}.accessModes"),
                "Too many: must have at most 4 items",
            ));
        }
        let known = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"];
        if let Some(mode) = set.access_modes.iter().find(|m| !known.contains(&m.as_str())) {
            return Err(ValidationError::invalid(
                format!("{field}.accessModes"),
                format!("Unsupported value: {mode:?}"),
            ));
        }
        if let Some(mode) =
            set.volume_mode.as_deref().filter(|m| *m != VOLUME_MODE_BLOCK && *m != VOLUME_MODE_FILESYSTEM)
        {
            return Err(ValidationError::invalid(
                format!("{field}.volumeMode"),
                format!("Unsupported value: {mode:?}: supported values: \"Block\", \"Filesystem\""),
            ));
        }
    }
    Ok(())
}

/// An UploadTokenRequest names the volume to upload into.
///
/// # Errors
/// A missing `spec.pvcName` or a bad name.
pub fn validate_upload_token_request(request: &UploadTokenRequest) -> Result {
    validate_name(&request.metadata, "metadata", MAX_NAME_LEN)?;
    if request.spec.pvc_name.is_empty() {
        return Err(ValidationError::invalid("spec.pvcName", "Required value: pvcName is required"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_subdomains() {
        for good in ["a", "my-data-volume", "a.b-c.d", "0abc", &"a".repeat(253)] {
            assert!(is_dns1123_subdomain(good), "{good}");
        }
        for bad in ["", "A", "-a", "a-", "a..b", "a_b", "a.", &"a".repeat(254)] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn dns1035_labels() {
        assert!(is_dns1035_label("fedora-image-import-cron"));
        assert!(!is_dns1035_label("0fedora"));
        assert!(!is_dns1035_label("a.b"));
        assert!(!is_dns1035_label(&"a".repeat(64)));
    }

    #[test]
    fn checksums() {
        assert_eq!(validate_checksum(&format!("md5:{}", "a".repeat(32))), Ok(()));
        assert_eq!(validate_checksum(&format!("sha1:{}", "B".repeat(40))), Ok(()));
        assert_eq!(validate_checksum(&format!("sha512:{}", "0".repeat(128))), Ok(()));
        assert!(validate_checksum("sha256").is_err());
        assert!(validate_checksum(&format!("sha256:{}", "a".repeat(63))).is_err());
        assert!(validate_checksum(&format!("sha256:{}", "g".repeat(64))).is_err());
        assert!(validate_checksum(&format!("crc32:{}", "a".repeat(8))).is_err());
    }

    #[test]
    fn source_urls() {
        assert_eq!(source_url_problem("https://example.com/disk.img"), None);
        assert_eq!(source_url_problem("HTTP://example.com/disk.img"), None);
        assert_eq!(source_url_problem(""), Some("source URL is empty".into()));
        assert_eq!(
            source_url_problem("example.com/disk.img"),
            Some("Invalid source URL: example.com/disk.img".into())
        );
        assert_eq!(
            source_url_problem("ftp://example.com/x"),
            Some("Invalid source URL scheme: ftp://example.com/x".into())
        );
        assert_eq!(source_url_problem("/local/path"), Some("Invalid source URL scheme: /local/path".into()));
        assert_eq!(
            source_url_problem("gs://bucket/x"),
            Some("Invalid source URL scheme: gs://bucket/x".into())
        );
    }
}
