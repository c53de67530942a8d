//! `diskplane upload-proxy`: the cluster's upload endpoint (CDI's `cdi-uploadproxy`, what
//! `virtctl image-upload --uploadproxy-url` talks to). Verifies upload tokens with the
//! DataVolume's key derived from `--token-key` and streams the upload to the DataVolume's upload
//! Pod over TLS (see `uploader::proxy`). Prints `listening on https://ADDR` on stdout once
//! ready; stops on SIGINT / SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use uploader::proxy::{DEFAULT_UPSTREAM, Proxy, ProxyConfig, Upstream};

use super::https_service::{HttpsServiceArgs, print_listening, runtime, shutdown_signal};

#[derive(Debug, clap::Args)]
pub struct UploadProxyArgs {
    /// Listener and the global upload token key (tokens are checked with the key derived from
    /// it for the DataVolume, as the controller derives it for the upload Pods).
    #[command(flatten)]
    service: HttpsServiceArgs,
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
    let key = args.service.token_key()?;
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
    let tls = uploader::tls::server_config(&args.service.tls_cert, &args.service.tls_key)?;
    runtime("upload-proxy")?.block_on(async {
        // The client must be built inside the runtime (its connector spawns tasks).
        let proxy = Arc::new(Proxy::new(config)?);
        if let Some(path) = &args.upstream_ca {
            let interval = Duration::from_secs(args.upstream_ca_reload_secs);
            tokio::spawn(uploader::proxy::reload_upstream_ca(Arc::clone(&proxy), path.clone(), interval));
        }
        let app = uploader::proxy::router(proxy);
        uploader::server::serve(args.service.listen, Some(tls), app, print_listening, shutdown_signal())
            .await
            .context("serving the upload proxy")
    })
}
