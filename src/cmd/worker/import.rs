//! `diskplane worker import`: CDI's importer Pod. One source onto one volume:
//!
//! - `--source http`: an http(s) image (any supported format, compressed or not), converted to
//!   raw; with `--content-type archive` a tar extracted into the volume's directory.
//! - `--source registry`: a containerDisk (`docker://host/repo:tag`), the first file under
//!   `/disk/` of the newest layer holding one.
//! - `--source blank` (CDI's `none`): an empty disk of `--size`.
//!
//! The volume is a file (a Filesystem PVC's `/data/disk.img`: written under a temporary name
//! next to it and renamed into place only after every check passed, then grown to `--size` as
//! CDI resizes) or a block device (`/dev/cdi-block-volume`: written in place, zero runs as
//! write-zeroes/discard).
//!
//! ## Caveats
//! - `--size` is taken as the disk size the PVC can hold (the kube driver subtracts the
//!   filesystem overhead); there is no statfs check of the mount.
//! - With `--preallocation`, space a file gains when grown to `--size` after the import stays
//!   sparse (as in the embedded driver).
//! - An archive lands beside existing entries of the directory (a mount's `lost+found`);
//!   entries are moved in one by one, so a crash mid-way can leave some of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::ArgAction;
use clap::builder::BoolishValueParser;
use disk_formats::convert::ConvertOptions;
use disk_formats::{OpenOptions, WriteAt};
use importer::{Checksum, HttpOptions, ImportOptions, Progress, RetryPolicy, Source};
use storage::{CreateOptions, Preallocation};

use super::metrics;
use super::result::{Origin, Outcome};
use super::{ReportArgs, volume_sizes};
use crate::output::Output;

/// Largest disk accepted when no `--size` bounds it (a file volume).
const DEFAULT_MAX_SIZE: u64 = 64 << 40;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The volume: a file (e.g. /data/disk.img) or a block device (e.g. /dev/cdi-block-volume).
    #[arg(long, env = "IMPORTER_VOLUME", default_value = "/data/disk.img")]
    volume: PathBuf,
    /// The disk size the volume holds (bytes, a K/M/G/T suffix, or a quantity such as 10Gi):
    /// larger images are refused; a file is grown to it. Default: a block device's size.
    #[arg(long, env = "IMPORTER_IMAGE_SIZE", value_parser = parse_size)]
    size: Option<u64>,
    /// Where the bytes come from (`none` = blank, as CDI says).
    #[arg(long, env = "IMPORTER_SOURCE", value_enum)]
    source: SourceKind,
    /// The URL: http(s)://… for http, docker://HOST/REPO[:TAG|@DIGEST] for registry.
    #[arg(long, env = "IMPORTER_ENDPOINT", required_if_eq_any = [("source", "http"), ("source", "registry")])]
    endpoint: Option<String>,
    /// What the source holds: a disk image, or a tar archive extracted into the volume's
    /// directory (http only).
    #[arg(long, env = "IMPORTER_CONTENTTYPE", value_enum, default_value = "kubevirt")]
    content_type: ContentType,
    /// Expected checksum of the object as served, ALGORITHM:HEX (sha256, sha512, sha1, md5).
    #[arg(long, env = "IMPORTER_CHECKSUM", value_parser = parse_checksum)]
    checksum: Option<Checksum>,
    /// Directory of PEM CA certificates trusted for the endpoint (CDI's certConfigMap).
    #[arg(long, env = "IMPORTER_CERT_DIR")]
    cert_dir: Option<PathBuf>,
    /// Directory with files `accessKeyId` and `secretKey`: basic-auth credentials for the
    /// endpoint (CDI's secretRef).
    #[arg(long, env = "IMPORTER_SECRET_DIR")]
    secret_dir: Option<PathBuf>,
    /// Basic-auth user (prefer --secret-dir; CDI passes it this way from the Secret).
    #[arg(long, env = "IMPORTER_ACCESS_KEY_ID", hide_env_values = true, requires = "secret_key")]
    access_key_id: Option<String>,
    /// Basic-auth password (prefer --secret-dir).
    #[arg(long, env = "IMPORTER_SECRET_KEY", hide_env_values = true, requires = "access_key_id")]
    secret_key: Option<String>,
    /// Do not verify the endpoint's certificate; for registry: plain HTTP. The variable takes
    /// true/false, yes/no, on/off, 1/0.
    #[arg(long, env = "INSECURE_TLS", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    insecure_tls: bool,
    /// Allocate the whole disk file (no holes).
    #[arg(long, env = "PREALLOCATION", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    preallocation: bool,
    /// registry only: the architecture to pick from a multi-arch image (default: this host's).
    #[arg(long, env = "IMPORTER_REGISTRY_IMAGE_ARCHITECTURE")]
    architecture: Option<String>,
    /// Extra request header 'Name: value' (repeatable; also every IMPORTER_EXTRA_HEADER_<n>).
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Retries in a row without progress after a dropped connection or 5xx answer (the Pod's
    /// restarts are the outer retry loop).
    #[arg(long, env = "IMPORTER_RETRIES", default_value_t = RetryPolicy::default().max_retries)]
    retries: u32,
    /// Directory for scratch files (default: next to a file volume; the temp dir for a device).
    #[arg(long, env = "IMPORTER_SCRATCH_DIR")]
    scratch_dir: Option<PathBuf>,
    #[command(flatten)]
    report: ReportArgs,
}

/// CDI's `IMPORTER_SOURCE` values we serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SourceKind {
    Http,
    Registry,
    #[value(alias = "none")]
    Blank,
}

/// CDI's `contentType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ContentType {
    Kubevirt,
    Archive,
}

impl ImportArgs {
    pub(super) fn report(&self) -> &ReportArgs {
        &self.report
    }

    pub(super) fn origin(&self) -> Origin {
        if self.source == SourceKind::Registry { Origin::Registry } else { Origin::Other }
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    crate::size::parse_size(text).or_else(|_| {
        controller::parse_quantity(text)
            .map_err(|e| format!("invalid size {text:?}: {e}"))
            .and_then(|n| u64::try_from(n).map_err(|_| format!("invalid size {text:?}: negative")))
    })
}

fn parse_checksum(text: &str) -> Result<Checksum, String> {
    text.parse().map_err(|e: importer::Error| e.to_string())
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("header {text:?} is not 'Name: value'")),
    }
}

/// Runs the import and describes the finished volume.
pub fn run(args: &ImportArgs) -> Result<Outcome> {
    importer::tls::install_crypto_provider();
    let progress = Arc::new(Progress::new());
    let reading = Arc::clone(&progress);
    args.report.start_metrics(
        metrics::Role::Import,
        Arc::new(move || {
            let s = reading.snapshot();
            (s.done, s.total)
        }),
    )?;
    match (args.source, args.content_type) {
        (SourceKind::Blank, _) => blank(args),
        (SourceKind::Http, ContentType::Archive) => archive(args, progress),
        (SourceKind::Registry, ContentType::Archive) => {
            bail!(importer::Error::Source("contentType archive is for http sources only".into()))
        }
        (SourceKind::Http | SourceKind::Registry, ContentType::Kubevirt) => image(args, progress),
    }
}

fn endpoint(args: &ImportArgs) -> Result<&str> {
    args.endpoint.as_deref().filter(|e| !e.is_empty()).context("--endpoint (IMPORTER_ENDPOINT) is required")
}

/// The largest disk the volume takes, and the size a file volume is grown to.
fn limits(args: &ImportArgs) -> Result<(u64, Option<u64>)> {
    if storage::is_block_device(&args.volume) {
        let device = super::upload::existing_size(&args.volume)?;
        return Ok((args.size.map_or(device, |s| s.min(device)), None));
    }
    Ok((args.size.unwrap_or(DEFAULT_MAX_SIZE), args.size))
}

fn options(
    args: &ImportArgs,
    scratch_dir: PathBuf,
    max_size: u64,
    progress: Arc<Progress>,
) -> Result<ImportOptions> {
    let (username, password) = credentials(args)?;
    let mut headers = args.headers.clone();
    headers.extend(env_headers()?);
    Ok(ImportOptions {
        http: HttpOptions {
            ca_certs: args.cert_dir.clone(),
            insecure: args.insecure_tls,
            username,
            password,
            headers,
            retry: RetryPolicy { max_retries: args.retries, ..RetryPolicy::default() },
            ..HttpOptions::default()
        },
        checksum: args.checksum.clone(),
        open: OpenOptions { max_virtual_size: max_size },
        convert: ConvertOptions::default(),
        create: CreateOptions { preallocation: preallocation(args), ..CreateOptions::default() },
        scratch_dir: args.scratch_dir.clone().unwrap_or(scratch_dir),
        progress,
    })
}

fn preallocation(args: &ImportArgs) -> Preallocation {
    if args.preallocation { Preallocation::Full } else { Preallocation::Off }
}

/// Basic-auth credentials from --secret-dir, or from the two variables.
fn credentials(args: &ImportArgs) -> Result<(Option<String>, Option<String>)> {
    if let Some(dir) = &args.secret_dir {
        let read = |name: &str| -> Result<String> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading the credential {}", path.display()))?;
            Ok(text.trim_end_matches(['\n', '\r']).to_owned())
        };
        return Ok((Some(read("accessKeyId")?), Some(read("secretKey")?)));
    }
    Ok((args.access_key_id.clone(), args.secret_key.clone()))
}

/// `IMPORTER_EXTRA_HEADER_<n>` variables ('Name: value'), in the order of `<n>`.
fn env_headers() -> Result<Vec<(String, String)>> {
    let mut found: Vec<(String, String)> =
        std::env::vars().filter(|(k, _)| k.starts_with("IMPORTER_EXTRA_HEADER_")).collect();
    found.sort_by_key(|(name, _)| natural_key(name));
    found.into_iter().map(|(k, v)| parse_header(&v).map_err(|e| anyhow::anyhow!("{k}: {e}"))).collect()
}

fn natural_key(name: &str) -> (u64, String) {
    let suffix = name.trim_start_matches("IMPORTER_EXTRA_HEADER_");
    (suffix.parse().unwrap_or(u64::MAX), suffix.to_owned())
}

/// An image (http or registry) converted to raw onto the volume.
fn image(args: &ImportArgs, progress: Arc<Progress>) -> Result<Outcome> {
    let url = endpoint(args)?;
    let (max_size, grow_to) = limits(args)?;
    let out = Output::prepare(&args.volume)?;
    let opts = options(args, out.scratch_dir(), max_size, progress)?;
    let stats = match args.source {
        SourceKind::Registry => {
            let platform = match args.architecture.as_deref().filter(|a| !a.is_empty()) {
                Some(arch) => format!("linux/{arch}").parse()?,
                None => importer::registry::Platform::host(),
            };
            importer::registry::import_registry_blocking(url, &out.write_path, &platform, &opts)?
        }
        _ => {
            let source: Source = url.parse()?;
            importer::import_blocking(&source, &out.write_path, &opts)?
        }
    };
    if let Some(size) = grow_to {
        grow(&out.write_path, size)?;
    }
    let block = storage::is_block_device(&out.write_path);
    let (virtual_size, allocated) = volume_sizes(&out.write_path)?;
    out.commit()?;
    Ok(Outcome {
        virtual_size,
        allocated_bytes: if block { stats.data_bytes } else { allocated },
        sha256: None,
    })
}

/// Grows a finished file to `size` (CDI's resize to the volume's size); never shrinks it.
fn grow(path: &Path, size: u64) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} to resize it", path.display()))?;
    let len = file.metadata().with_context(|| format!("inspecting {}", path.display()))?.len();
    if len < size {
        file.set_len(size).with_context(|| format!("growing {} to {size} bytes", path.display()))?;
        file.sync_all().with_context(|| format!("flushing {}", path.display()))?;
    }
    Ok(())
}

/// An empty disk: a sparse (or preallocated) file of `--size`, or a block device zeroed in
/// full (write-zeroes/discard, so old contents never show through).
fn blank(args: &ImportArgs) -> Result<Outcome> {
    let out = Output::prepare(&args.volume)?;
    let create = CreateOptions { preallocation: preallocation(args), ..CreateOptions::default() };
    if storage::is_block_device(&args.volume) {
        let volume = storage::Volume::create(&args.volume, args.size, 0, &create)?;
        let capacity = volume.capacity();
        volume.write_zeroes(0, capacity).with_context(|| format!("zeroing {}", args.volume.display()))?;
        volume.finish()?;
    } else {
        let size = args.size.context("a blank file volume needs --size (IMPORTER_IMAGE_SIZE)")?;
        storage::Volume::create(&out.write_path, Some(size), size, &create)?.finish()?;
    }
    let (virtual_size, allocated) = volume_sizes(&out.write_path)?;
    out.commit()?;
    Ok(Outcome {
        virtual_size,
        allocated_bytes: if storage::is_block_device(&args.volume) { 0 } else { allocated },
        sha256: None,
    })
}

/// A tar extracted next to the volume path (into its directory, e.g. `/data`).
fn archive(args: &ImportArgs, progress: Arc<Progress>) -> Result<Outcome> {
    let source: Source = endpoint(args)?.parse()?;
    let dir = if args.volume.is_dir() {
        args.volume.clone()
    } else {
        match args.volume.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    };
    let max_bytes = args.size.unwrap_or(DEFAULT_MAX_SIZE);
    let staging = dir.join(format!(".diskplane-archive-{}", std::process::id()));
    let opts = options(args, dir.clone(), max_bytes, progress)?;
    let limits = importer::ArchiveLimits { max_bytes, ..importer::ArchiveLimits::default() };
    let stats = importer::import_archive_blocking(&source, &staging, &opts, &limits);
    let moved =
        stats.map_err(anyhow::Error::from).and_then(|stats| move_entries(&staging, &dir).map(|()| stats));
    let _ = std::fs::remove_dir_all(&staging);
    let stats = moved?;
    Ok(Outcome { virtual_size: stats.bytes, allocated_bytes: stats.bytes, sha256: None })
}

/// Moves every entry of `from` into `to`; refuses before moving anything when a name exists.
fn move_entries(from: &Path, to: &Path) -> Result<()> {
    let entries: Vec<_> = std::fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", from.display()))?;
    for entry in &entries {
        let dest = to.join(entry.file_name());
        if dest.symlink_metadata().is_ok() {
            bail!(
                "the archive entry {} already exists in {}",
                entry.file_name().to_string_lossy(),
                to.display()
            );
        }
    }
    for entry in &entries {
        let dest = to.join(entry.file_name());
        std::fs::rename(entry.path(), &dest)
            .with_context(|| format!("moving the archive into {}", dest.display()))?;
    }
    std::fs::File::open(to).and_then(|d| d.sync_all()).with_context(|| format!("flushing {}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_suffixes_and_kubernetes_quantities() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("10Gi"), Ok(10 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("-1Gi").is_err());
        assert!(parse_size("ten").is_err());
    }

    #[test]
    fn headers_need_a_name() {
        assert_eq!(parse_header("X-A: b c"), Ok(("X-A".into(), "b c".into())));
        assert!(parse_header(": v").is_err());
        assert!(parse_header("novalue").is_err());
    }

    #[test]
    fn extra_header_variables_sort_by_number() {
        let mut names = ["IMPORTER_EXTRA_HEADER_10", "IMPORTER_EXTRA_HEADER_2", "IMPORTER_EXTRA_HEADER_0"];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(names, ["IMPORTER_EXTRA_HEADER_0", "IMPORTER_EXTRA_HEADER_2", "IMPORTER_EXTRA_HEADER_10"]);
    }
}
