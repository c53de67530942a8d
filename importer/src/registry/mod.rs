//! Registry sources: a containerDisk (`docker://host[:port]/repo[:tag|@digest]`) onto a volume.
//!
//! A containerDisk is an OCI/Docker image whose layers hold the VM disk as the first regular
//! file under `disk/` (KubeVirt convention; CDI's registry importer reads the same).
//!
//! ## How bytes flow
//! 1. The manifest is fetched with oci-client (anonymous, basic, or a bearer token obtained
//!    through the registry's `WWW-Authenticate` challenge); a manifest list / OCI index is
//!    resolved for the asked [`Platform`] by our own resolver (oci-client's ignores `variant`).
//!    A `@sha256:` reference is checked against the manifest's digest by oci-client.
//! 2. Layers are read newest first, as CDI does. Each blob streams from
//!    `Client::pull_blob_stream` (never `pull()`, which buffers whole layers) through a bounded
//!    channel (≈ 4 MiB) into a blocking thread that decompresses (gzip / zstd / none, from the
//!    media type), walks the tar entries and hands the first regular (or GNU sparse) file under
//!    `disk/` to `disk_formats::convert::sniff` + `convert_sniffed`: a raw disk streams straight
//!    into the target, a qcow2 goes through a scratch file of its own size.
//! 3. oci-client verifies a blob's digest only after its last byte, so the pump reads every
//!    blob to its end even after the disk was found, and the import succeeds only when that
//!    check passed. A mismatch fails the import with [`ErrorKind::Checksum`]; the target then
//!    holds partial data and the caller deletes it (the CLI writes under a temporary name).
//!
//! ## Security
//! Entries with `..` components or absolute names fail the layer; a link (symbolic or hard)
//! under `disk/` is refused rather than followed. Nothing is extracted to the filesystem but
//! the disk's bytes. Credentials travel only to the registry (and its token realm) and are not
//! logged (`HttpOptions`' `Debug` redacts them).
//!
//! ## Caveats
//! `--insecure` means a plain-HTTP registry (CDI's `insecureRegistries`), not "HTTPS without
//! verification". Whiteouts are ignored (like CDI): a `disk/` file deleted by a newer layer is
//! not resurrected because the newest layer with a disk wins. A broken connection fails the
//! import (no resume inside a blob yet).

mod layer;
mod platform;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use disk_formats::ErrorKind;
use disk_formats::convert::ConvertOptions;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::sync::mpsc;

pub use platform::Platform;

use crate::error::{BoxError, Error, Result};
use crate::http::HttpOptions;
use crate::http::stream::{CHANNEL_CHUNKS, ChannelReader};
use crate::import::{ImportOptions, ImportStats, Method};
use layer::{Compression, Found, Target};

/// Whether `source` names a registry image (`docker://…`).
pub fn is_registry_source(source: &str) -> bool {
    source.get(..9).is_some_and(|s| s.eq_ignore_ascii_case("docker://"))
}

/// Parses `docker://host[:port]/repo[:tag|@digest]` (a missing tag means `latest`; a missing
/// host means Docker Hub, as with `docker pull`).
///
/// # Errors
/// [`Error::Source`] for another scheme, [`Error::Config`] for a malformed reference.
pub fn parse_reference(source: &str) -> Result<Reference> {
    if !is_registry_source(source) {
        return Err(Error::Source(format!("{source:?} is not a docker:// registry source")));
    }
    let name = &source[9..];
    name.parse::<Reference>().map_err(|e| Error::config_with(format!("invalid image reference {name:?}"), e))
}

/// [`import_registry`] on its own tokio runtime; call from synchronous code.
///
/// # Errors
/// See [`import_registry`].
pub fn import_registry_blocking(
    source: &str,
    target: &Path,
    platform: &Platform,
    opts: &ImportOptions,
) -> Result<ImportStats> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("importer-registry")
        .enable_all()
        .build()
        .map_err(|e| Error::config_with("starting the I/O runtime", e))?;
    runtime.block_on(import_registry(source, target, platform, opts))
}

/// Imports the containerDisk `source` (`docker://…`) built for `platform` into a new volume at
/// `target`. Uses `opts.http` for the CA bundle (`ca_certs`), plain HTTP (`insecure`) and
/// credentials (`username` / `password`); `opts.checksum` must be `None` (blob digests are
/// always verified; pin an image with `@sha256:…`).
///
/// # Errors
/// [`Error::Registry`] for registry-side failures (image not found, authentication, TLS trust,
/// a blob digest mismatch with [`ErrorKind::Checksum`], no disk under `disk/`, no manifest for
/// the platform); [`Error::Format`] for hostile layers (traversal, links) and images;
/// [`Error::Storage`] for the target. On error the target may hold partial data: the caller
/// deletes it.
pub async fn import_registry(
    source: &str,
    target: &Path,
    platform: &Platform,
    opts: &ImportOptions,
) -> Result<ImportStats> {
    let reference = parse_reference(source)?;
    if opts.checksum.is_some() {
        return Err(Error::config(
            "--checksum does not apply to docker:// sources: every blob is verified against its \
             digest (pin the image with @sha256:… instead)",
        ));
    }
    let ctx = Context {
        image: reference.whole(),
        registry: reference.resolve_registry().to_owned(),
        username: opts.http.username.clone(),
    };
    let client = Client::new(client_config(&ctx.registry, &opts.http)?);
    let auth = match (&opts.http.username, &opts.http.password) {
        (Some(user), Some(password)) => RegistryAuth::Basic(user.clone(), password.clone()),
        _ => RegistryAuth::Anonymous,
    };
    let manifest = image_manifest(&client, &reference, &auth, platform, &ctx).await?;
    let total: u64 = manifest.layers.iter().map(|l| u64::try_from(l.size).unwrap_or(0)).sum();
    opts.progress.set_total(total);

    for descriptor in manifest.layers.iter().rev() {
        let compression = Compression::of_media_type(&descriptor.media_type).ok_or_else(|| {
            ctx.error(
                format!(
                    "layer {} of {} has media type {}, which is not a tar layer",
                    descriptor.digest, ctx.image, descriptor.media_type
                ),
                ErrorKind::Unsupported,
            )
        })?;
        let blob = client.pull_blob_stream(&reference, descriptor).await.map_err(|e| ctx.map(e))?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let pump = tokio::spawn(layer::pump(blob, tx, Arc::clone(&opts.progress)));
        let job = LayerJob::new(target, opts);
        let found = tokio::task::spawn_blocking(move || job.run(ChannelReader::new(rx), compression))
            .await
            .map_err(|e| Error::config_with("the layer thread failed", e))?;
        let pumped = pump.await.map_err(|e| Error::config_with("the download task failed", e))?;
        match (found, pumped) {
            // The blob's own failure (digest, network) explains anything the tar walk saw.
            (_, Err(e)) => return Err(ctx.blob_error(&descriptor.digest, e)),
            (Err(e), Ok(())) => return Err(e),
            (Ok(Found::Nothing), Ok(())) => continue,
            (Ok(Found::Disk { format, wrappers, stats, .. }), Ok(())) => {
                let downloaded = opts.progress.downloaded();
                return Ok(ImportStats {
                    method: if format.is_raw() { Method::Stream } else { Method::Scratch },
                    format,
                    wrappers,
                    virtual_size: stats.virtual_size,
                    data_bytes: stats.data_bytes,
                    downloaded,
                    retries: 0,
                    range_requests: 0,
                });
            }
        }
    }
    Err(ctx.error(
        format!("no disk image found under /disk/ in any layer of {}", ctx.image),
        ErrorKind::InvalidImage,
    ))
}

/// The manifest digest (`sha256:…`) the tag of `source` (`docker://…`) points at now, as a
/// registry `HEAD` (or `GET`) of the manifest reports it: what a DataImportCron polls. Uses
/// `http`'s CA bundle, plain-HTTP (`insecure`) and credentials like [`import_registry`].
///
/// # Errors
/// [`Error::Source`] / [`Error::Config`] for a bad reference; [`Error::Registry`] when the
/// registry cannot be reached or does not know the image.
pub async fn resolve_digest(source: &str, http: &HttpOptions) -> Result<String> {
    let reference = parse_reference(source)?;
    let ctx = Context {
        image: reference.whole(),
        registry: reference.resolve_registry().to_owned(),
        username: http.username.clone(),
    };
    let client = Client::new(client_config(&ctx.registry, http)?);
    let auth = match (&http.username, &http.password) {
        (Some(user), Some(password)) => RegistryAuth::Basic(user.clone(), password.clone()),
        _ => RegistryAuth::Anonymous,
    };
    client.fetch_manifest_digest(&reference, &auth).await.map_err(|e| ctx.map(e))
}

/// The image manifest for `platform`: the reference's own, or the one its index lists.
async fn image_manifest(
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
    platform: &Platform,
    ctx: &Context,
) -> Result<OciImageManifest> {
    let (manifest, _digest) = client.pull_manifest(reference, auth).await.map_err(|e| ctx.map(e))?;
    let index = match manifest {
        OciManifest::Image(image) => return Ok(image),
        OciManifest::ImageIndex(index) => index,
    };
    let Some(digest) = platform.resolve(&index.manifests) else {
        let available: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|m| m.platform.as_ref())
            .map(|p| match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            })
            .collect();
        return Err(ctx.error(
            format!(
                "image {} has no manifest for platform {platform} (it has: {})",
                ctx.image,
                available.join(", ")
            ),
            ErrorKind::Unsupported,
        ));
    };
    let child = reference.clone_with_digest(digest.clone());
    match client.pull_manifest(&child, auth).await.map_err(|e| ctx.map(e))? {
        (OciManifest::Image(image), _) => Ok(image),
        (OciManifest::ImageIndex(_), _) => Err(ctx.error(
            format!("the {platform} entry {digest} of {} is another index", ctx.image),
            ErrorKind::InvalidImage,
        )),
    }
}

/// oci-client's configuration: protocol, trust, no platform resolver (we resolve ourselves).
fn client_config(registry: &str, http: &HttpOptions) -> Result<ClientConfig> {
    let extra_root_certificates = match &http.ca_certs {
        Some(path) => read_pem_certificates(path)?,
        None => Vec::new(),
    };
    Ok(ClientConfig {
        protocol: if http.insecure {
            ClientProtocol::HttpsExcept(vec![registry.to_owned()])
        } else {
            ClientProtocol::Https
        },
        extra_root_certificates,
        platform_resolver: None,
        connect_timeout: Some(http.connect_timeout),
        read_timeout: Some(http.idle_timeout),
        ..ClientConfig::default()
    })
}

/// PEM certificates from a bundle file or every regular, non-hidden file of a directory (a
/// mounted ConfigMap), one [`Certificate`] per `BEGIN CERTIFICATE` block.
fn read_pem_certificates(path: &Path) -> Result<Vec<Certificate>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| Error::config_with(format!("listing {}", path.display()), e))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut certs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::config_with(format!("reading CA certificates from {}", file.display()), e))?;
        certs.extend(
            split_pem(&text)
                .into_iter()
                .map(|pem| Certificate { encoding: CertificateEncoding::Pem, data: pem.into_bytes() }),
        );
    }
    if certs.is_empty() {
        return Err(Error::config(format!("no PEM certificate found in {}", path.display())));
    }
    Ok(certs)
}

/// The `BEGIN CERTIFICATE` … `END CERTIFICATE` blocks of a PEM text.
fn split_pem(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else { break };
        let stop = start + len + END.len();
        out.push(format!("{}\n", &rest[start..stop]));
        rest = &rest[stop..];
    }
    out
}

/// What a blocking layer job needs (owned, to cross into `spawn_blocking`).
#[derive(Debug)]
struct LayerJob {
    target: PathBuf,
    scratch_dir: PathBuf,
    open: disk_formats::OpenOptions,
    convert: ConvertOptions,
    create: storage::CreateOptions,
}

impl LayerJob {
    fn new(target: &Path, opts: &ImportOptions) -> Self {
        Self {
            target: target.to_path_buf(),
            scratch_dir: opts.scratch_dir.clone(),
            open: opts.open.clone(),
            convert: opts.convert.clone(),
            create: opts.create.clone(),
        }
    }

    fn run(self, reader: ChannelReader, compression: Compression) -> Result<Found> {
        layer::extract_disk(
            reader,
            compression,
            &Target {
                path: &self.target,
                scratch_dir: &self.scratch_dir,
                open: &self.open,
                convert: &self.convert,
                create: &self.create,
            },
        )
    }
}

/// Names for error messages.
#[derive(Debug)]
struct Context {
    image: String,
    registry: String,
    username: Option<String>,
}

impl Context {
    fn error(&self, message: String, kind: ErrorKind) -> Error {
        Error::Registry { message, kind, retryable: false, source: None }
    }

    fn auth_error(&self) -> Error {
        let message = match &self.username {
            Some(user) => format!(
                "registry {} refused the credentials of user {user} for {}",
                self.registry, self.image
            ),
            None => format!(
                "registry {} requires authentication for {} (give --username and --password-file)",
                self.registry, self.image
            ),
        };
        self.error(message, ErrorKind::Io)
    }

    fn not_found(&self) -> Error {
        self.error(format!("image {} not found in registry {}", self.image, self.registry), ErrorKind::Io)
    }

    /// One oci-client failure as our error, with a message naming the image and registry.
    fn map(&self, e: OciDistributionError) -> Error {
        match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => self.auth_error(),
            OciDistributionError::RegistryError { ref envelope, .. } => {
                let has =
                    |codes: &[OciErrorCode]| envelope.errors.iter().any(|err| codes.contains(&err.code));
                if has(&[OciErrorCode::ManifestUnknown, OciErrorCode::NameUnknown, OciErrorCode::NotFound]) {
                    self.not_found()
                } else if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                    self.auth_error()
                } else {
                    let message = format!("registry {} refused a request for {}", self.registry, self.image);
                    Error::Registry { message, kind: ErrorKind::Io, retryable: false, source: Some(e.into()) }
                }
            }
            OciDistributionError::ServerError { code, .. } => match code {
                404 => self.not_found(),
                401 | 403 => self.auth_error(),
                _ => Error::Registry {
                    message: format!("registry {} failed a request for {}", self.registry, self.image),
                    kind: ErrorKind::Io,
                    retryable: code >= 500 || code == 408 || code == 429,
                    source: Some(e.into()),
                },
            },
            OciDistributionError::RequestError(ref inner) => {
                let plain = chain_mentions(inner, &["InvalidContentType", "corrupt message"]);
                let tls = plain || chain_mentions(inner, &["certificate", "UnknownIssuer", "tls", "TLS"]);
                let message = if plain {
                    format!(
                        "TLS handshake with registry {} failed: it does not speak TLS (a plain-HTTP \
                         registry needs --insecure)",
                        self.registry
                    )
                } else if tls {
                    format!(
                        "TLS: the certificate of registry {} is not trusted (pass its CA with --ca-cert; \
                         --insecure means plain HTTP)",
                        self.registry
                    )
                } else {
                    format!("cannot reach registry {} for {}", self.registry, self.image)
                };
                Error::Registry { message, kind: ErrorKind::Io, retryable: !tls, source: Some(e.into()) }
            }
            OciDistributionError::UnsupportedMediaTypeError(_)
            | OciDistributionError::UnsupportedSchemaVersionError(_) => Error::Registry {
                message: format!("the manifest of {} is not supported", self.image),
                kind: ErrorKind::Unsupported,
                retryable: false,
                source: Some(e.into()),
            },
            OciDistributionError::DigestError(_) => Error::Registry {
                message: format!("the manifest of {} does not match its digest", self.image),
                kind: ErrorKind::Checksum,
                retryable: false,
                source: Some(e.into()),
            },
            other => Error::Registry {
                message: format!("pulling {} from registry {}", self.image, self.registry),
                kind: ErrorKind::Io,
                retryable: false,
                source: Some(other.into()),
            },
        }
    }

    /// A blob stream's failure: a digest mismatch (checked by oci-client at the end of the
    /// stream) or the connection.
    fn blob_error(&self, digest: &str, e: std::io::Error) -> Error {
        let mismatch =
            e.get_ref().and_then(|inner| match inner.downcast_ref::<oci_client::errors::DigestError>() {
                Some(oci_client::errors::DigestError::VerificationError { actual, .. }) => {
                    Some(actual.clone())
                }
                _ => None,
            });
        match mismatch {
            Some(actual) => Error::Registry {
                message: format!(
                    "blob {digest} digest mismatch: the registry served content hashing to {actual}"
                ),
                kind: ErrorKind::Checksum,
                retryable: false,
                source: None,
            },
            None => Error::Registry {
                message: format!("reading blob {digest} of {} from registry {}", self.image, self.registry),
                kind: ErrorKind::Io,
                retryable: true,
                source: Some(Box::new(e) as BoxError),
            },
        }
    }
}

/// Whether any error in `e`'s source chain mentions one of `needles`.
fn chain_mentions(e: &(dyn std::error::Error + 'static), needles: &[&str]) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        let text = format!("{err} {err:?}");
        if needles.iter().any(|n| text.contains(n)) {
            return true;
        }
        current = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_references_parse_with_tag_digest_and_port() {
        let r = parse_reference("docker://127.0.0.1:5000/disks/fedora:40").expect("parses");
        assert_eq!((r.registry(), r.repository(), r.tag()), ("127.0.0.1:5000", "disks/fedora", Some("40")));
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("docker://127.0.0.1:5000/disks/fedora@{digest}")).expect("parses");
        assert_eq!(r.digest(), Some(digest.as_str()));
        assert!(is_registry_source("DOCKER://quay.io/x"));
        assert!(!is_registry_source("https://quay.io/x"));
        assert!(parse_reference("docker://UPPER/Case:tag").is_err());
    }

    #[test]
    fn pem_bundles_split_into_certificates() {
        let pem = "junk\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\
                   -----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        let certs = split_pem(pem);
        assert_eq!(certs.len(), 2);
        assert!(certs[1].contains("BBB") && certs[1].starts_with("-----BEGIN"));
    }
}
