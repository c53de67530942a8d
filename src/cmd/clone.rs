//! `diskplane clone SRC DST`: volume to volume, by the fastest strategy that works here
//! (reflink, sparse copy, stream), or host-assisted between two processes:
//!
//! ```text
//! diskplane clone --listen 127.0.0.1:PORT SRC --tls-cert C --tls-key K --token-file T   # source side
//! diskplane clone tls://127.0.0.1:PORT DST --ca-cert CA --token-file T                  # target side
//! ```
//! (`tcp://` and no certificates when both sides say `--insecure`). The source side prints
//! `listening on ADDR` on stdout once it accepts connections, serves one target and exits.
//!
//! DST is written through [`Output`] like `convert` writes: block devices in place; files under
//! a temporary name next to DST, renamed over it only after the clone was flushed and checked,
//! and deleted otherwise, so a failed clone never leaves (or clobbers) DST.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cloner::net::{Endpoint, ReceiveOptions, ServeOptions, Token};
use cloner::{CloneOptions, CloneReport, Strategy};

use crate::output::Output;
use crate::{OutputFormat, size};

#[derive(Debug, clap::Args)]
pub struct CloneArgs {
    /// The source: a file or block device, or tls://HOST:PORT (tcp://HOST:PORT with
    /// --insecure) of a source served by `diskplane clone --listen`.
    src: String,
    /// The clone: a file (created or replaced) or a block device. Not with --listen.
    #[arg(required_unless_present = "listen")]
    dst: Option<PathBuf>,
    /// How to clone; `auto` tries reflink, then sparse copy, then stream, and reports why.
    #[arg(long, value_enum, default_value = "auto")]
    strategy: StrategyArg,
    /// Size of a file clone, at least the source's (bytes, or with a K/M/G/T suffix): a
    /// bigger clone grows. Default: the source's size. A block device keeps its size.
    #[arg(long, value_parser = size::parse_size)]
    size: Option<u64>,
    /// Also turn all-zero 64 KiB blocks inside the source's data into holes.
    #[arg(long)]
    detect_zeroes: bool,
    /// After reflink or sparse copy, compare the sha256 of the whole clone with the source's
    /// (default: the first and last MiB of each data extent).
    #[arg(long)]
    verify: bool,
    /// Serve SRC once to a target at this address (host-assisted clone, source side).
    #[arg(long, value_name = "ADDR", conflicts_with = "dst")]
    listen: Option<String>,
    /// PEM certificate chain of the source side (with --listen).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the source side (with --listen).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA the source's certificate must chain to (target side of tls://).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Allow plain TCP (both sides must say so).
    #[arg(long)]
    insecure: bool,
    /// File holding the shared token that authenticates the target to the source.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Give up when the peer is silent for this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Output format of the report.
    #[arg(short = 'o', long = "output", value_enum, default_value = "human")]
    output: OutputFormat,
}

/// `--strategy` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StrategyArg {
    Auto,
    Reflink,
    SparseCopy,
    Stream,
}

impl StrategyArg {
    fn strategy(self) -> Option<Strategy> {
        match self {
            StrategyArg::Auto => None,
            StrategyArg::Reflink => Some(Strategy::Reflink),
            StrategyArg::SparseCopy => Some(Strategy::SparseCopy),
            StrategyArg::Stream => Some(Strategy::Stream),
        }
    }
}

pub fn run(args: &CloneArgs) -> Result<()> {
    if let Some(addr) = &args.listen {
        return serve(args, addr);
    }
    let Some(dst) = &args.dst else { bail!("DST is required (unless --listen)") };
    if args.src.contains("://") {
        return receive(args, dst);
    }
    let src = Path::new(&args.src);
    let out = Output::prepare(dst)?;
    let opts = CloneOptions {
        strategy: args.strategy.strategy(),
        target_size: args.size,
        detect_zeroes: args.detect_zeroes,
        verify: args.verify,
    };
    let report = cloner::clone_volume(src, &out.write_path, &opts)
        .with_context(|| format!("cloning {} to {}", src.display(), dst.display()))?;
    out.commit()?;
    print_report(args, &args.src, &dst.display().to_string(), &report)
}

fn token(args: &CloneArgs) -> Result<Token> {
    let path = args.token_file.as_deref().context("--token-file is required for a host-assisted clone")?;
    Ok(Token::from_file(path)?)
}

/// The source side: serve SRC once.
fn serve(args: &CloneArgs, addr: &str) -> Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(cloner::net::server_config(cert, key)?),
        _ if args.insecure => None,
        _ => bail!("--listen needs --tls-cert and --tls-key (or --insecure for plain TCP)"),
    };
    let opts = ServeOptions {
        tls,
        token: token(args)?,
        detect_zeroes: args.detect_zeroes,
        idle_timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr().with_context(|| format!("listening on {addr}"))?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {local}")
            .and_then(|()| stdout.flush())
            .context("writing to stdout")?;
    }
    let report = cloner::net::serve_once(&listener, Path::new(&args.src), &opts)
        .with_context(|| format!("serving {} on {local}", args.src))?;
    print_report(args, &args.src, "(remote target)", &report)
}

/// The target side: receive from a serving source into DST.
fn receive(args: &CloneArgs, dst: &Path) -> Result<()> {
    let endpoint: Endpoint = args.src.parse()?;
    if !endpoint.tls && !args.insecure {
        bail!("{endpoint}: plain TCP needs --insecure (use tls:// with --ca-cert)");
    }
    if !matches!(args.strategy, StrategyArg::Auto | StrategyArg::Stream) {
        bail!("a remote source can only be cloned by the stream strategy");
    }
    let opts = ReceiveOptions {
        ca_cert: args.ca_cert.clone(),
        server_name: None,
        token: token(args)?,
        target_size: args.size,
        idle_timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let out = Output::prepare(dst)?;
    let report = cloner::net::receive(&endpoint, &out.write_path, &opts)
        .with_context(|| format!("cloning {endpoint} to {}", dst.display()))?;
    out.commit()?;
    print_report(args, &args.src, &dst.display().to_string(), &report)
}

fn print_report(args: &CloneArgs, src: &str, dst: &str, report: &CloneReport) -> Result<()> {
    let text = match args.output {
        OutputFormat::Json => {
            let json = serde_json::json!({
                "source": src,
                "target": dst,
                "strategy": report.strategy.as_str(),
                "method": report.method,
                "fallbackReason": report.fallback_reason,
                "verification": report.verification,
                "bytesCopied": report.bytes_copied,
                "sourceSize": report.source_size,
                "targetSize": report.target_size,
                "sourceAllocated": report.source_allocated,
                "targetAllocated": report.target_allocated,
                "sha256": report.sha256,
            });
            format!("{json:#}\n")
        }
        OutputFormat::Human => {
            let allocated = |a: Option<u64>| a.map_or_else(|| "n/a".to_owned(), |a| a.to_string());
            let mut text = format!(
                "cloned {src} to {dst}: strategy {} ({}), checked: {}\n",
                report.strategy, report.method, report.verification
            );
            if let Some(reason) = &report.fallback_reason {
                text.push_str(&format!("fallback reason: {reason}\n"));
            }
            text.push_str(&format!(
                "bytes copied: {}\nsource: {} bytes, {} allocated\nclone:  {} bytes, {} allocated\n",
                report.bytes_copied,
                report.source_size,
                allocated(report.source_allocated),
                report.target_size,
                allocated(report.target_allocated),
            ));
            if let Some(sha) = &report.sha256 {
                text.push_str(&format!("sha256: {sha}\n"));
            }
            text
        }
    };
    std::io::stdout().lock().write_all(text.as_bytes()).context("writing to stdout")
}
