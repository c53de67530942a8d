//! `diskplane worker ROLE`: the processes the Kubernetes controller runs in worker Pods (CDI's
//! importer, upload server, clone source and clone target), usable by hand too.
//!
//! - `import`: an http(s) image, a registry containerDisk, an archive or a blank disk onto one
//!   volume (`/data/disk.img` or `/dev/cdi-block-volume`); see [`import`].
//! - `upload-server`: CDI's upload server for one volume, the `cdi-upload-<pvc>` Pod's job.
//!   Prints `listening on http(s)://ADDR` on stdout once ready.
//! - `clone-source` / `clone-target`: the host-assisted clone stream between two Pods over TLS.
//! - `upload-token`: prints an upload token signed with the upload server's key (scripts, tests).
//!
//! Every flag can also come from the environment (CDI-like names: `IMPORTER_ENDPOINT`, …).
//!
//! ## The contract with the kube driver
//! - Exit code 0 on success, non-zero on failure (the codes of `src/exit.rs`).
//! - On exit a JSON termination message (see [`result`]) goes to `--termination-log`
//!   (`TERMINATION_LOG`, default `/dev/termination-log`).
//! - With `--metrics-listen ADDR` (`METRICS_LISTEN`), progress is served as Prometheus text on
//!   plain-HTTP `GET /metrics` (see [`metrics`]).

mod clone;
mod import;
mod metrics;
mod result;
mod upload;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use result::{Origin, Outcome};

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Import an image (http, registry, archive) or create a blank disk on one volume (CDI's
    /// importer Pod).
    Import(import::ImportArgs),
    /// Receive one upload into a volume (CDI's upload server; 409 once uploaded).
    UploadServer(upload::UploadServerArgs),
    /// Print an upload token for NAMESPACE/NAME signed with the key file.
    UploadToken(upload::UploadTokenArgs),
    /// Serve a volume once to a clone-target over TLS (host-assisted clone, source Pod).
    CloneSource(clone::SourceArgs),
    /// Receive a volume from a clone-source over TLS (host-assisted clone, target Pod).
    CloneTarget(clone::TargetArgs),
}

/// Where a transfer role reports its result and progress.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// File the JSON result is written to on exit (the container's termination message). The
    /// default is written only when it exists; a given path only when its directory exists.
    #[arg(long, env = "TERMINATION_LOG", value_name = "FILE")]
    termination_log: Option<PathBuf>,
    /// Serve progress as Prometheus text on plain-HTTP GET /metrics at this address (worker
    /// Pods use 0.0.0.0:8443). Default: no metrics.
    #[arg(long, env = "METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// The `ownerUID` label of the metrics (the DataVolume's UID, as CDI's importer).
    #[arg(long, env = "OWNER_UID")]
    owner_uid: Option<String>,
}

impl ReportArgs {
    /// Starts the metrics endpoint when asked for.
    fn start_metrics(&self, role: metrics::Role, reading: metrics::Reading) -> Result<()> {
        if let Some(addr) = self.metrics_listen {
            metrics::serve(addr, role, self.owner_uid.clone(), reading)?;
        }
        Ok(())
    }

    /// Writes the termination message for `result` and hands the error on.
    fn finish(&self, result: Result<Outcome>, origin: Origin) -> Result<()> {
        match result {
            Ok(outcome) => {
                result::write(self.termination_log.as_deref(), &Ok(outcome));
                Ok(())
            }
            Err(err) => {
                result::write(self.termination_log.as_deref(), &Err(result::failure(&err, origin)));
                Err(err)
            }
        }
    }
}

pub fn run(args: &WorkerArgs) -> Result<()> {
    match &args.role {
        Role::Import(args) => args.report().finish(import::run(args), args.origin()),
        Role::UploadServer(args) => args.report().finish(upload::upload_server(args), Origin::Other),
        Role::UploadToken(args) => upload::upload_token(args),
        Role::CloneSource(args) => args.report().finish(clone::source(args), Origin::Other),
        Role::CloneTarget(args) => args.report().finish(clone::target(args), Origin::Other),
    }
}

/// Size and allocation of a finished volume: a file's length and allocated blocks, or a block
/// device's size (counted as allocated in full: a device does not say what is mapped).
fn volume_sizes(path: &std::path::Path) -> Result<(u64, u64)> {
    use anyhow::Context;
    use std::os::unix::fs::MetadataExt;
    if storage::is_block_device(path) {
        let size = upload::existing_size(path)?;
        return Ok((size, size));
    }
    let meta = std::fs::metadata(path).with_context(|| format!("inspecting {}", path.display()))?;
    Ok((meta.len(), meta.blocks().saturating_mul(512)))
}
