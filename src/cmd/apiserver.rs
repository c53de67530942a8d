//! `diskplane apiserver`: the aggregated API server of `UploadTokenRequest`
//! (`upload.cdi.kubevirt.io/v1beta1`, CDI's cdi-apiserver), what `virtctl image-upload` asks
//! for an upload token through the Kubernetes API (see `controller::kube::apiserver`).
//!
//! Its own command and Deployment rather than a role of `diskplane controller`: it needs a
//! different identity (read the front proxy's ConfigMap in kube-system, create
//! SubjectAccessReviews, read DataVolumes — nothing the controller's role should carry, and
//! nothing the controller needs from it), and an APIService that is unavailable breaks
//! discovery for every client, so it may run replicated while the controller runs one replica.
//!
//! Prints `listening on https://ADDR` on stdout once ready; stops on SIGINT / SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use controller::kube::apiserver::{ApiServerOptions, run as run_apiserver};
use uploader::token::TokenKey;

#[derive(Debug, clap::Args)]
pub struct ApiserverArgs {
    /// Address to listen on (port 0 picks a free port; see the "listening on" line).
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain (leaf first) for the Service the APIService points at
    /// (DNS name diskplane-apiserver.diskplane.svc).
    #[arg(long)]
    tls_cert: PathBuf,
    /// PEM private key of the certificate.
    #[arg(long)]
    tls_key: PathBuf,
    /// The global upload token key (the file `upload-proxy --token-key` and `controller
    /// --upload-token-key` read): tokens are signed with the key derived from it for the
    /// DataVolume.
    #[arg(long)]
    token_key: PathBuf,
}

pub fn run(args: &ApiserverArgs) -> Result<()> {
    // The one rustls crypto provider of the binary (see importer::tls).
    importer::tls::install_crypto_provider();
    let options = ApiServerOptions {
        listen: args.listen,
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        key: TokenKey::from_file(&args.token_key).map_err(anyhow::Error::msg)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("apiserver")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let on_ready = |addr: SocketAddr| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "listening on https://{addr}");
        let _ = out.flush();
    };
    runtime
        .block_on(run_apiserver(options, on_ready, super::upload_proxy::shutdown_signal()))
        .context("serving UploadTokenRequests")
}
