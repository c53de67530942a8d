//! `diskplane import SOURCE OUT`: an HTTP(S) image onto a file or block device.
//!
//! The output is written like `convert` writes it: block devices in place; files under a
//! temporary name next to OUT, renamed over OUT only after every check passed (checksum
//! included) and deleted otherwise, so a failed import never leaves or clobbers OUT.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use disk_formats::OpenOptions;
use disk_formats::convert::ConvertOptions;
use importer::{Checksum, HttpOptions, ImportOptions, Progress, RetryPolicy, Source};
use storage::CreateOptions;

use crate::output::Output;
use crate::size;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The source: http:// or https:// URL, or docker://HOST[:PORT]/REPO[:TAG|@DIGEST] (a
    /// containerDisk: the first file under /disk/).
    source: String,
    /// The output: a file (created or replaced) or a block device.
    out: PathBuf,
    /// Expected checksum of the object as served, ALGORITHM:HEX (sha256, sha512, sha1, md5).
    #[arg(long, value_parser = parse_checksum)]
    checksum: Option<Checksum>,
    /// PEM CA bundle, or a directory of PEM files, trusted in addition to the system roots.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Do not verify the server's TLS certificate (docker://: the registry speaks plain HTTP).
    #[arg(long)]
    insecure: bool,
    /// docker:// only: the platform to pick from a multi-arch image, OS/ARCH[/VARIANT]
    /// (default: this host's, e.g. linux/amd64).
    #[arg(long)]
    platform: Option<String>,
    /// Basic-auth user name.
    #[arg(long, requires = "password_file")]
    username: Option<String>,
    /// File holding the basic-auth password (a trailing newline is ignored).
    #[arg(long, requires = "username")]
    password_file: Option<PathBuf>,
    /// Extra request header, 'Name: value' (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Refuse images whose virtual size exceeds this (bytes, or with a K/M/G/T suffix).
    #[arg(long, value_parser = size::parse_size, default_value = "64T")]
    max_virtual_size: u64,
    /// Directory for the scratch file a qcow2 is unpacked to when the server refuses Range
    /// requests, the qcow2 is compressed, or a checksum is given (default: next to OUT).
    #[arg(long)]
    scratch_dir: Option<PathBuf>,
    /// Retries in a row without progress after a dropped connection or 5xx answer.
    #[arg(long, default_value_t = RetryPolicy::default().max_retries)]
    retries: u32,
    /// What the source holds, as CDI's `contentType`: `kubevirt` (a disk image) or `archive`
    /// (a tar, optionally compressed, extracted into the directory OUT; http(s) only).
    #[arg(long, value_enum, default_value = "kubevirt")]
    content_type: ContentType,
}

/// CDI's `contentType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ContentType {
    /// A disk image, converted to raw.
    Kubevirt,
    /// A tar archive extracted into a directory.
    Archive,
}

fn parse_checksum(text: &str) -> Result<Checksum, String> {
    text.parse().map_err(|e: importer::Error| e.to_string())
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) =
        text.split_once(':').ok_or_else(|| format!("header {text:?} is not 'Name: value'"))?;
    if name.trim().is_empty() {
        return Err(format!("header {text:?} has no name"));
    }
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

pub fn run(args: &ImportArgs) -> Result<()> {
    // The one rustls crypto provider of the binary (aws-lc-rs, see importer::tls); move this
    // to main() once another TLS user (kube, oci-client) joins.
    importer::tls::install_crypto_provider();
    // docker:// sources go to importer::registry; `None` here means that.
    let source: Option<Source> =
        if importer::registry::is_registry_source(&args.source) { None } else { Some(args.source.parse()?) };
    let platform = match &args.platform {
        Some(text) => text.parse()?,
        None => importer::registry::Platform::host(),
    };
    let password = match &args.password_file {
        Some(path) => Some(read_password(path)?),
        None => None,
    };
    if args.content_type == ContentType::Archive && source.is_none() {
        anyhow::bail!(importer::Error::Source("contentType archive is for http(s) sources only".into()));
    }
    let out = Output::prepare(&args.out)?;
    let progress = Arc::new(Progress::new());
    let opts = ImportOptions {
        http: HttpOptions {
            ca_certs: args.ca_cert.clone(),
            insecure: args.insecure,
            username: args.username.clone(),
            password,
            headers: args.headers.clone(),
            retry: RetryPolicy { max_retries: args.retries, ..RetryPolicy::default() },
            ..HttpOptions::default()
        },
        checksum: args.checksum.clone(),
        open: OpenOptions { max_virtual_size: args.max_virtual_size },
        convert: ConvertOptions::default(),
        create: CreateOptions::default(),
        scratch_dir: args.scratch_dir.clone().unwrap_or_else(|| out.scratch_dir()),
        progress: Arc::clone(&progress),
    };
    let line = ProgressLine::start(progress);
    if let (ContentType::Archive, Some(source)) = (args.content_type, &source) {
        let limits = importer::ArchiveLimits {
            max_bytes: args.max_virtual_size,
            ..importer::ArchiveLimits::default()
        };
        let result = importer::import_archive_blocking(source, &args.out, &opts, &limits);
        line.stop();
        let stats = result?;
        eprintln!(
            "extracted {} files, {} directories, {} symlinks ({} bytes) into {}",
            stats.files,
            stats.dirs,
            stats.symlinks,
            stats.bytes,
            args.out.display()
        );
        return Ok(());
    }
    let result = match &source {
        Some(source) => importer::import_blocking(source, &out.write_path, &opts),
        None => importer::registry::import_registry_blocking(&args.source, &out.write_path, &platform, &opts),
    };
    line.stop();
    result?;
    out.commit()
}

fn read_password(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the password file {}", path.display()))?;
    Ok(text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text).to_owned())
}

/// A one-line progress display on stderr, only when stderr is a terminal.
struct ProgressLine {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ProgressLine {
    fn start(progress: Arc<Progress>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Self { stop, thread: None };
        }
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut stderr = std::io::stderr();
            while !flag.load(Ordering::Relaxed) {
                let _ = write!(stderr, "\r{}\x1b[K", render(&progress.snapshot()));
                thread::sleep(Duration::from_millis(250));
            }
            let _ = writeln!(stderr, "\r{}\x1b[K", render(&progress.snapshot()));
        });
        Self { stop, thread: Some(thread) }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread {
            let _ = thread.join();
        }
    }
}

fn render(s: &importer::Snapshot) -> String {
    let mib = |b: f64| b / f64::from(1u32 << 20);
    let done = mib(s.done as f64);
    match (s.total, s.percent) {
        (Some(total), Some(pct)) => {
            format!("{done:.1} / {:.1} MiB  {pct:5.1}%  {:.1} MiB/s", mib(total as f64), mib(s.rate))
        }
        _ => format!("{done:.1} MiB  {:.1} MiB/s", mib(s.rate)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_split_at_the_first_colon() {
        assert_eq!(parse_header("X-Auth: a:b"), Ok(("X-Auth".into(), "a:b".into())));
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": value").is_err());
    }
}
