//! `diskplane worker clone-source` / `clone-target`: the host-assisted clone between two Pods,
//! over the cloner's stream protocol (`cloner::net`: TLS authenticates the source, a shared
//! token the target; holes travel as holes, a sha256 over the data is checked at the end).
//!
//! ```text
//! diskplane worker clone-source --volume /data/disk.img --listen 0.0.0.0:8444 \
//!     --tls-cert tls.crt --tls-key tls.key --token-file /token/token       # prints "listening on ADDR"
//! diskplane worker clone-target --volume /data/disk.img --source-url https://SRC:8444 \
//!     --ca-cert ca.crt [--tls-server-name NAME] --token-file /token/token
//! ```
//! In a cluster the controller issues the source's certificate from its CA for a name of the
//! source Pod (the target dials the Pod's IP and checks that name with `--tls-server-name`),
//! and both Pods mount the clone's Secret (token, certificate, CA).
//! The source serves one target and exits. The target writes a file volume under a temporary
//! name and renames it into place only after the clone was flushed and checked.
//!
//! ## Caveats
//! The cloner reports no progress while streaming: the metrics endpoint shows 0 until the end.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cloner::net::{Endpoint, ReceiveOptions, ServeOptions, Token};

use super::ReportArgs;
use super::metrics;
use super::result::Outcome;
use crate::output::Output;

#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// The source volume: a file (e.g. /data/disk.img) or a block device.
    #[arg(long, env = "CLONER_VOLUME")]
    volume: PathBuf,
    /// Address to serve the volume on, once (port 0 picks one: see the "listening on" line).
    #[arg(long, env = "CLONER_LISTEN")]
    listen: String,
    /// PEM certificate chain of the source (leaf first).
    #[arg(long, env = "CLONER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, env = "CLONER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Plain TCP without TLS (both sides must say so).
    #[arg(long, env = "CLONER_INSECURE")]
    insecure: bool,
    /// File holding the token the target must present.
    #[arg(long, env = "CLONER_TOKEN_FILE")]
    token_file: PathBuf,
    /// Also send all-zero 64 KiB blocks inside the source's data as holes.
    #[arg(long, env = "CLONER_DETECT_ZEROES")]
    detect_zeroes: bool,
    /// Give up when the target is silent for this many seconds (also while waiting for it).
    #[arg(long, env = "CLONER_TIMEOUT_SECS", default_value_t = 600)]
    timeout_secs: u64,
    #[command(flatten)]
    report: ReportArgs,
}

#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// The target volume: a file (e.g. /data/disk.img) or a block device.
    #[arg(long, env = "CLONER_VOLUME")]
    volume: PathBuf,
    /// The source: https://HOST:PORT (or tls://HOST:PORT; tcp://HOST:PORT with --insecure).
    #[arg(long, env = "CLONER_SOURCE_URL")]
    source_url: String,
    /// PEM CA the source's certificate must chain to.
    #[arg(long, env = "CLONER_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// The name the source's certificate must carry (default: the host of --source-url). The
    /// kube driver dials the source Pod's IP and checks the name it issued the source.
    #[arg(long, env = "CLONER_TLS_SERVER_NAME", requires = "ca_cert")]
    tls_server_name: Option<String>,
    /// Plain TCP without TLS (both sides must say so).
    #[arg(long, env = "CLONER_INSECURE")]
    insecure: bool,
    /// File holding the token shown to the source.
    #[arg(long, env = "CLONER_TOKEN_FILE")]
    token_file: PathBuf,
    /// Size of a file clone, at least the source's (default: the source's size).
    #[arg(long, env = "CLONER_IMAGE_SIZE", value_parser = crate::size::parse_size)]
    size: Option<u64>,
    /// Give up when the source is silent for this many seconds.
    #[arg(long, env = "CLONER_TIMEOUT_SECS", default_value_t = 600)]
    timeout_secs: u64,
    #[command(flatten)]
    report: ReportArgs,
}

impl SourceArgs {
    pub(super) fn report(&self) -> &ReportArgs {
        &self.report
    }
}

impl TargetArgs {
    pub(super) fn report(&self) -> &ReportArgs {
        &self.report
    }
}

/// No progress from the cloner yet: the endpoint exists (the Pod's probe finds it) and says 0.
fn no_progress() -> metrics::Reading {
    Arc::new(|| (0, None))
}

/// Serves the volume once; the outcome describes the source.
pub fn source(args: &SourceArgs) -> Result<Outcome> {
    args.report.start_metrics(metrics::Role::Clone, no_progress())?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(cloner::net::server_config(cert, key)?),
        _ if args.insecure => None,
        _ => bail!("clone-source needs --tls-cert and --tls-key (or --insecure for plain TCP)"),
    };
    let opts = ServeOptions {
        tls,
        token: Token::from_file(&args.token_file)?,
        detect_zeroes: args.detect_zeroes,
        idle_timeout: Duration::from_secs(args.timeout_secs.max(1)),
    };
    let listener =
        TcpListener::bind(&args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr().with_context(|| format!("listening on {}", args.listen))?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {local}")
            .and_then(|()| stdout.flush())
            .context("writing to stdout")?;
    }
    let report = cloner::net::serve_once(&listener, &args.volume, &opts)
        .with_context(|| format!("serving {} on {local}", args.volume.display()))?;
    Ok(Outcome {
        virtual_size: report.source_size,
        allocated_bytes: report.source_allocated.unwrap_or(report.bytes_copied),
        sha256: report.sha256,
    })
}

/// `https://HOST:PORT` as the cloner's `tls://HOST:PORT`; other forms as they are.
fn endpoint(url: &str) -> Result<Endpoint> {
    let text = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => {
            format!("tls://{}", rest.trim_end_matches('/'))
        }
        _ => url.to_owned(),
    };
    Ok(text.parse()?)
}

/// Receives the volume from the source; the outcome describes the clone.
pub fn target(args: &TargetArgs) -> Result<Outcome> {
    args.report.start_metrics(metrics::Role::Clone, no_progress())?;
    let endpoint = endpoint(&args.source_url)?;
    if !endpoint.tls && !args.insecure {
        bail!("{endpoint}: plain TCP needs --insecure (use https:// with --ca-cert)");
    }
    let opts = ReceiveOptions {
        ca_cert: args.ca_cert.clone(),
        server_name: args.tls_server_name.clone(),
        token: Token::from_file(&args.token_file)?,
        target_size: args.size,
        idle_timeout: Duration::from_secs(args.timeout_secs.max(1)),
    };
    let out = Output::prepare(&args.volume)?;
    let report = cloner::net::receive(&endpoint, &out.write_path, &opts)
        .with_context(|| format!("cloning {endpoint} to {}", args.volume.display()))?;
    out.commit()?;
    Ok(Outcome {
        virtual_size: report.target_size,
        allocated_bytes: report.target_allocated.unwrap_or(report.bytes_copied),
        sha256: report.sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls_become_tls_endpoints() {
        let e = endpoint("https://10.0.0.7:8444/").expect("parses");
        assert_eq!((e.tls, e.host.as_str(), e.port), (true, "10.0.0.7", 8444));
        assert!(!endpoint("tcp://h:1").expect("parses").tls);
        assert!(endpoint("ftp://h:1").is_err());
    }
}
