//! `diskplane upload-proxy`: the cluster's upload endpoint (CDI's `cdi-uploadproxy`, what
//! `virtctl image-upload --uploadproxy-url` talks to). Verifies upload tokens with the
//! DataVolume's key derived from `--token-key` and streams the upload to the DataVolume's upload
//! Pod over TLS (see `uploader::proxy`). Prints `listening on https://ADDR` on stdout once
//! ready; stops on SIGINT / SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use uploader::proxy::{DEFAULT_UPSTREAM, Proxy, ProxyConfig, Upstream};
use uploader::token::TokenKey;

#[derive(Debug, clap::Args)]
pub struct UploadProxyArgs {
    /// Address to listen on (port 0 picks a free port; see the "listening on" line).
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain (leaf first) the proxy serves.
    #[arg(long)]
    tls_cert: PathBuf,
    /// PEM private key of the certificate.
    #[arg(long)]
    tls_key: PathBuf,
    /// The global upload token key (its bytes, at least 16): per-DataVolume keys are derived
    /// from it, as the controller does for the upload Pods.
    #[arg(long)]
    token_key: PathBuf,
    /// The upload server of a DataVolume: scheme and host[:port], with {name} and {namespace}.
    /// A plain http:// template sends tokens and bytes in clear text (tests only).
    #[arg(long, default_value = DEFAULT_UPSTREAM)]
    upstream: String,
    /// PEM CA bundle the upload servers' certificates are verified against (required for an
    /// https:// upstream): in a cluster `ca-bundle.crt` of the ConfigMap
    /// diskplane-upload-ca-bundle, which the controller publishes.
    #[arg(long)]
    upstream_ca: Option<PathBuf>,
    /// Seconds between checks whether the --upstream-ca file changed (the controller renewed
    /// its CA); a changed bundle is used for new connections.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    upstream_ca_reload_secs: u64,
    /// Seconds the upload server may take to answer /healthz before the proxy answers 503.
    #[arg(long, default_value_t = uploader::proxy::DEFAULT_UPSTREAM_WAIT.as_secs())]
    upstream_wait_secs: u64,
}

pub fn run(args: &UploadProxyArgs) -> Result<()> {
    // The one rustls crypto provider of the binary (see importer::tls).
    importer::tls::install_crypto_provider();
    let key = TokenKey::from_file(&args.token_key).map_err(anyhow::Error::msg)?;
    let upstream_ca = match &args.upstream_ca {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let config = ProxyConfig {
        key,
        upstream: Upstream::parse(&args.upstream)?,
        upstream_ca,
        upstream_wait: Duration::from_secs(args.upstream_wait_secs),
    };
    let tls = uploader::tls::server_config(&args.tls_cert, &args.tls_key)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("upload-proxy")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        // The client must be built inside the runtime (its connector spawns tasks).
        let proxy = Arc::new(Proxy::new(config)?);
        if let Some(path) = &args.upstream_ca {
            let interval = Duration::from_secs(args.upstream_ca_reload_secs);
            tokio::spawn(uploader::proxy::reload_upstream_ca(Arc::clone(&proxy), path.clone(), interval));
        }
        let app = uploader::proxy::router(proxy);
        uploader::server::serve(
            args.listen,
            Some(tls),
            app,
            |addr| {
                let mut out = std::io::stdout();
                let _ = writeln!(out, "listening on https://{addr}");
                let _ = out.flush();
            },
            shutdown_signal(),
        )
        .await
        .context("serving the upload proxy")
    })
}

/// SIGINT or SIGTERM (Kubernetes stops Pods with SIGTERM).
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers, run until killed.
        _ => std::future::pending().await,
    }
}
