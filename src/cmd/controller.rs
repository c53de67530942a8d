//! `diskplane controller`: Kubernetes mode. Watches DataVolumes (all namespaces, or one) and
//! reconciles them with the same `plan` as the embedded mode: PVCs rendered from the
//! StorageProfile, restricted worker Pods (`diskplane worker …`, this same image), upload
//! Services, status and Events (see `controller::kube`). Uses the in-cluster service account, or
//! the kubeconfig outside a cluster. Stops on SIGINT / SIGTERM.

use anyhow::{Context, Result};
use controller::kube::build::ClusterConfig;
use controller::kube::run::{ControllerOptions, run as run_controller};
use controller::plan::Overhead;

#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// Only reconcile DataVolumes of this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// The image of worker Pods: this controller's own image.
    #[arg(long, env = "DISKPLANE_WORKER_IMAGE")]
    worker_image: String,
    /// imagePullPolicy of worker Pods (Always, IfNotPresent, Never; default: the cluster's).
    #[arg(long, env = "DISKPLANE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    pull_policy: Option<String>,
    /// Share of a Filesystem volume its filesystem keeps (CDIConfig's filesystemOverhead).
    #[arg(long, default_value = "0.055", value_parser = parse_overhead)]
    filesystem_overhead: Overhead,
    /// Preallocate disks unless a DataVolume says otherwise (CDIConfig's preallocation).
    #[arg(long)]
    preallocation: bool,
    /// Start workers even on WaitForFirstConsumer storage (turns off CDI's
    /// HonorWaitForFirstConsumer: the worker Pod then decides the volume's node).
    #[arg(long)]
    bind_immediately: bool,
    /// The cluster's global upload token key (the file `diskplane upload-proxy --token-key`
    /// reads): each upload Pod gets the key derived from it for its DataVolume. Without it,
    /// upload Pods get random keys the upload proxy cannot verify.
    #[arg(long, env = "DISKPLANE_UPLOAD_TOKEN_KEY")]
    upload_token_key: Option<std::path::PathBuf>,
    /// A registry (`host:port`) DataImportCrons poll over plain HTTP; repeatable (CDIConfig's
    /// insecureRegistries).
    #[arg(long = "insecure-registry", env = controller::kube::run::INSECURE_REGISTRIES_ENV, value_delimiter = ',')]
    insecure_registries: Vec<String>,
    /// The controller's own namespace, where it keeps its CA (Secret diskplane-upload-ca) and
    /// publishes the CA bundle for the upload proxy (ConfigMap diskplane-upload-ca-bundle).
    #[arg(long, env = "POD_NAMESPACE", default_value = "diskplane")]
    ca_namespace: String,
}

fn parse_overhead(text: &str) -> Result<Overhead, String> {
    Overhead::parse(text).ok_or_else(|| format!("{text:?} is not a fraction below 1 with at most 3 decimals"))
}

pub fn run(args: &ControllerArgs) -> Result<()> {
    // The one rustls crypto provider of the binary (see importer::tls).
    importer::tls::install_crypto_provider();
    let mut config = ClusterConfig::new(args.worker_image.clone());
    config.pull_policy = args.pull_policy.clone();
    config.plan.filesystem_overhead = args.filesystem_overhead;
    config.plan.preallocation = args.preallocation;
    config.honor_wait_for_first_consumer = !args.bind_immediately;
    if let Some(path) = &args.upload_token_key {
        config.upload_token_key =
            Some(uploader::token::TokenKey::from_file(path).map_err(anyhow::Error::msg)?);
    }
    let options = ControllerOptions {
        namespace: args.namespace.clone(),
        config,
        insecure_registries: args
            .insecure_registries
            .iter()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect(),
        ca_namespace: args.ca_namespace.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("diskplane-controller")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run_controller(options)).context("running the controller")?;
    Ok(())
}
