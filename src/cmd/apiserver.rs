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

use anyhow::{Context, Result};
use controller::kube::apiserver::{ApiServerOptions, run as run_apiserver};

use super::https_service::{HttpsServiceArgs, print_listening, runtime, shutdown_signal};

#[derive(Debug, clap::Args)]
pub struct ApiserverArgs {
    /// Listener (certificate for diskplane-apiserver.diskplane.svc, the Service the APIService
    /// points at) and the global upload token key: tokens are signed with the key derived from
    /// it for the DataVolume.
    #[command(flatten)]
    service: HttpsServiceArgs,
}

pub fn run(args: &ApiserverArgs) -> Result<()> {
    // The one rustls crypto provider of the binary (see importer::tls).
    importer::tls::install_crypto_provider();
    let service = &args.service;
    let options = ApiServerOptions {
        listen: service.listen,
        tls_cert: service.tls_cert.clone(),
        tls_key: service.tls_key.clone(),
        key: service.token_key()?,
    };
    runtime("apiserver")?
        .block_on(run_apiserver(options, print_listening, shutdown_signal()))
        .context("serving UploadTokenRequests")
}
