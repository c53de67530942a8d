//! `diskplane worker upload-server` (CDI's upload server for one volume, file or block device:
//! the `cdi-upload-<pvc>` Pod's job; prints `listening on http(s)://ADDR` on stdout once ready)
//! and `upload-token` (prints an upload token signed with the same key, for scripts and tests;
//! the embedded server issues tokens through `UploadTokenRequest`).
//!
//! With `--content-type archive` (`UPLOAD_CONTENTTYPE`, the DataVolume's `contentType`) every
//! upload route takes a tar, optionally gzip/xz/zstd, extracted into the volume's directory:
//! `--volume` itself when it is a directory, else its parent (`/data` for the kube driver's
//! `/data/disk.img`), as `worker import` does. The archive is extracted into a staging
//! directory there and its entries are moved in once it is complete and checked (see
//! `uploader::backend::SingleVolumeBackend`); the termination message then counts the bytes of
//! file content as `virtualSize` and `allocatedBytes`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use storage::CreateOptions;
use uploader::backend::{Content, SingleVolumeBackend, UploadTarget, VolumeState};
use uploader::server::{DEFAULT_IDLE_TIMEOUT, ServerConfig};
use uploader::token::{Claims, TokenKey, unix_now};

use super::result::Outcome;
use super::{ReportArgs, metrics, volume_sizes};
use crate::size;

#[derive(Debug, clap::Args)]
pub struct UploadServerArgs {
    /// The volume: a block device (written in place) or a file (written under a temporary
    /// name and renamed into place once complete).
    #[arg(long)]
    volume: PathBuf,
    /// The volume's size: larger images are refused with 400 (default: a block device's size,
    /// or an existing file's length). For an archive: the most bytes of file content (required).
    #[arg(long, value_parser = size::parse_size)]
    size: Option<u64>,
    /// What the volume takes: a disk image, or a tar archive extracted into the volume's
    /// directory (`--volume` if it is a directory, else its parent).
    #[arg(long, env = "UPLOAD_CONTENTTYPE", value_enum, default_value = "kubevirt")]
    content_type: ContentType,
    /// Address to listen on (port 0 picks a free port; see the "listening on" line).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// The key upload tokens are signed with (its bytes, at least 16).
    #[arg(long)]
    token_key: PathBuf,
    /// Namespace tokens must name.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Volume name tokens must name (default: the volume's file name without extension).
    #[arg(long)]
    name: Option<String>,
    /// PEM certificate chain (leaf first) for TLS on the listener.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle served to clients at GET /v1beta1/ca.crt (default: the --tls-cert chain).
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Directory for the scratch file a qcow2 is unpacked to (default: next to the volume).
    #[arg(long)]
    scratch_dir: Option<PathBuf>,
    /// A body that sends nothing for this many seconds counts as dropped.
    #[arg(long, default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs())]
    idle_timeout_secs: u64,
    /// Exit 0 once an upload succeeded (like CDI's upload Pod).
    #[arg(long)]
    exit_on_success: bool,
    #[command(flatten)]
    report: ReportArgs,
}

/// CDI's `contentType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ContentType {
    Kubevirt,
    Archive,
}

impl UploadServerArgs {
    pub(super) fn report(&self) -> &ReportArgs {
        &self.report
    }
}

#[derive(Debug, clap::Args)]
pub struct UploadTokenArgs {
    /// The key file the server uses.
    #[arg(long)]
    token_key: PathBuf,
    /// The volume's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The volume's name.
    #[arg(long)]
    name: String,
    /// Lifetime: seconds, or with an s/m/h suffix.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    ttl: Duration,
}

/// Serves until an upload succeeded (with --exit-on-success) or forever; the outcome describes
/// the uploaded volume.
pub fn upload_server(args: &UploadServerArgs) -> Result<Outcome> {
    let key = TokenKey::from_file(&args.token_key).map_err(anyhow::Error::msg)?;
    let archive = args.content_type == ContentType::Archive;
    let max_size = match args.size {
        Some(size) => size,
        None if archive => bail!("an archive volume needs --size: the most bytes of file content it takes"),
        None => existing_size(&args.volume)?,
    };
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .volume
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .context("the volume path has no file name: give --name")?,
    };
    let scratch_dir = match &args.scratch_dir {
        Some(dir) => dir.clone(),
        None if storage::is_block_device(&args.volume) => std::env::temp_dir(),
        None => match args.volume.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    let (path, content) = match args.content_type {
        ContentType::Kubevirt => (args.volume.clone(), Content::Disk),
        ContentType::Archive => (archive_dir(&args.volume), Content::Archive),
    };
    let target = UploadTarget { path, max_size, scratch_dir, create: CreateOptions::default() };
    let backend = Arc::new(SingleVolumeBackend::new(&args.namespace, &name, target).with_content(content));
    let watched = Arc::clone(&backend);
    args.report.start_metrics(metrics::Role::Upload, Arc::new(move || (watched.received(), None)))?;
    let (tls, ca_pem) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let config = uploader::tls::server_config(cert, key)?;
            let ca_file = args.tls_ca.as_deref().unwrap_or(cert);
            let pem = std::fs::read(ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
            (Some(config), Some(Arc::from(pem)))
        }
        _ => (None, None),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let config = ServerConfig {
        key,
        backend: Arc::clone(&backend) as Arc<dyn uploader::backend::UploadBackend>,
        ca_pem,
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
    };
    let mut changes = backend.subscribe();
    let exit_on_success = args.exit_on_success;
    let shutdown = async move {
        if !exit_on_success {
            return std::future::pending().await;
        }
        let _ = changes.wait_for(|state| *state == VolumeState::Done).await;
    };
    uploader::server::serve_blocking(
        args.listen,
        tls,
        config,
        |addr| {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "listening on {scheme}://{addr}");
            let _ = out.flush();
        },
        shutdown,
    )?;
    if archive {
        let bytes = backend.stats().and_then(|s| s.archive).map(|a| a.bytes);
        let bytes = bytes.context("the server stopped before an archive was uploaded")?;
        return Ok(Outcome { virtual_size: bytes, allocated_bytes: bytes, sha256: None });
    }
    let (virtual_size, allocated_bytes) = volume_sizes(&args.volume)?;
    Ok(Outcome { virtual_size, allocated_bytes, sha256: None })
}

/// The directory an archive is extracted into: `volume` when it is a directory, else its
/// parent (the kube driver passes `/data/disk.img`; the archive fills `/data`).
fn archive_dir(volume: &Path) -> PathBuf {
    if volume.is_dir() {
        return volume.to_owned();
    }
    match volume.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The size of an existing volume: a block device's size or a file's length.
pub(super) fn existing_size(volume: &Path) -> Result<u64> {
    if storage::is_block_device(volume) {
        let file = std::fs::File::open(volume).with_context(|| format!("opening {}", volume.display()))?;
        use std::io::Seek;
        let mut file = file;
        return file
            .seek(std::io::SeekFrom::End(0))
            .with_context(|| format!("reading the size of {}", volume.display()));
    }
    match std::fs::metadata(volume) {
        Ok(meta) if meta.len() > 0 => Ok(meta.len()),
        _ => anyhow::bail!(
            "give --size: {} is not an existing block device or non-empty file",
            volume.display()
        ),
    }
}

pub fn upload_token(args: &UploadTokenArgs) -> Result<()> {
    let key = TokenKey::from_file(&args.token_key).map_err(anyhow::Error::msg)?;
    let token = key.issue(&Claims::upload(&args.namespace, &args.name, unix_now(), args.ttl));
    println!("{token}");
    Ok(())
}

/// `300`, `300s`, `5m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("invalid duration {text:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("invalid duration unit in {text:?} (use s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("42"), Ok(Duration::from_secs(42)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn an_archive_fills_the_volume_directory_or_the_parent_of_the_disk_path() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(archive_dir(dir.path()), dir.path());
        assert_eq!(archive_dir(&dir.path().join("disk.img")), dir.path());
        assert_eq!(archive_dir(Path::new("disk.img")), Path::new("."));
    }
}
