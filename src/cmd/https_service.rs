//! What the two cluster HTTPS services (`upload-proxy`, `apiserver`) share: their listener and
//! token-key flags, their runtime, the "listening on" line and the stop signal.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use uploader::token::TokenKey;

#[derive(Debug, clap::Args)]
pub struct HttpsServiceArgs {
    /// Address to listen on (port 0 picks a free port; see the "listening on" line).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain (leaf first) served on --listen, for the service's DNS name.
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// PEM private key of the certificate.
    #[arg(long)]
    pub tls_key: PathBuf,
    /// The global upload token key (its bytes, at least 16; the file `controller
    /// --upload-token-key` reads): per-DataVolume keys are derived from it.
    #[arg(long)]
    pub token_key: PathBuf,
}

impl HttpsServiceArgs {
    pub fn token_key(&self) -> Result<TokenKey> {
        TokenKey::from_file(&self.token_key).map_err(anyhow::Error::msg)
    }
}

/// The service's runtime (two workers: these services only move bytes and check tokens).
pub fn runtime(name: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Prints `listening on https://ADDR` (what scripts and tests wait for).
pub fn print_listening(addr: SocketAddr) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on https://{addr}");
    let _ = out.flush();
}

/// SIGINT or SIGTERM (Kubernetes stops Pods with SIGTERM).
pub async fn shutdown_signal() {
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
