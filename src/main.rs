//! The `diskplane` binary: clap subcommands wired to the library crates. Errors leave as one
//! line on stderr and an exit code chosen from the error's kind (see [`exit`]).

mod cmd;
mod exit;
mod output;
mod size;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// diskplane: a data plane for virtual-machine disks.
#[derive(Debug, Parser)]
#[command(name = "diskplane", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show an image's format, virtual size, allocation, features and snapshots.
    Info(InfoArgs),
    /// Convert any supported image to a raw, sparse file or block device
    /// (like `qemu-img convert -O raw`).
    Convert(ConvertArgs),
    /// Import an HTTP(S) image onto a file or block device: raw and gz/xz/zst-compressed
    /// images stream straight in, qcow2 is read in place by Range requests.
    Import(cmd::import::ImportArgs),
    /// Clone a volume (file or block device): reflink, sparse copy or stream, chosen
    /// automatically and reported; or host-assisted between two processes over TLS.
    Clone(cmd::clone::CloneArgs),
    /// Run the embedded mode: state store, storage pool, workers and the HTTP API
    /// (DataVolumes on one machine, no Kubernetes).
    Serve(cmd::serve::ServeArgs),
    /// Create the DataVolumes and DataSources of a (multi-document) YAML manifest.
    Apply(cmd::apply::ApplyArgs),
    /// List or show objects (dv, das) as a table, JSON or YAML.
    Get(cmd::get::GetArgs),
    /// Delete an object; a DataVolume's volume goes with it.
    Delete(cmd::delete::DeleteArgs),
    /// Wait until a DataVolume is Succeeded (non-zero exit when it Failed).
    Wait(cmd::wait::WaitArgs),
    /// Upload an image into a DataVolume (like virtctl image-upload), with a progress bar.
    Upload(cmd::upload::UploadArgs),
    /// Run a worker role (the processes of the Kubernetes worker Pods): import, upload-server,
    /// clone-source, clone-target; upload-token.
    Worker(cmd::worker::WorkerArgs),
    /// Boot a VirtualMachine (kubevirt.io/v1) on local volumes with qemu; read its console.
    Vm(cmd::vm::VmArgs),
    /// Print the CustomResourceDefinitions of Kubernetes mode (generated from the API types),
    /// or write one file per CRD with --out-dir (what deploy/crds/ holds).
    Crds(cmd::crds::CrdsArgs),
    /// Kubernetes mode: reconcile DataVolumes on a cluster (PVCs, restricted worker Pods,
    /// upload Services, status and Events), with the same planner as `serve`.
    Controller(cmd::controller::ControllerArgs),
    /// Kubernetes mode: the cluster's upload endpoint; verifies upload tokens and streams
    /// uploads to the DataVolumes' upload Pods over TLS.
    UploadProxy(cmd::upload_proxy::UploadProxyArgs),
    /// Kubernetes mode: the aggregated API server of UploadTokenRequest
    /// (upload.cdi.kubevirt.io/v1beta1), behind the APIService; issues upload tokens after a
    /// SubjectAccessReview.
    Apiserver(cmd::apiserver::ApiserverArgs),
}

/// How `info` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Human,
    Json,
}

#[derive(Debug, clap::Args)]
struct InfoArgs {
    /// The image (format detected from its bytes, never from its name).
    image: PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "human")]
    output: OutputFormat,
    /// Directory for the scratch file needed to inspect a compressed qcow2.
    #[arg(long, env = "TMPDIR", default_value = "/tmp")]
    scratch_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ConvertArgs {
    /// The input image: raw, ISO or qcow2, optionally gzip/xz/zstd-compressed.
    image: PathBuf,
    /// The output: a file (created or replaced) or a block device.
    out: PathBuf,
    /// Refuse images whose virtual size exceeds this (bytes, or with a K/M/G/T suffix).
    #[arg(long, value_parser = size::parse_size, default_value = "64T")]
    max_virtual_size: u64,
    /// Zero runs of at least this size become holes; 0 disables zero detection (then plain
    /// data is copied in-kernel where possible), like `qemu-img convert -S`.
    #[arg(short = 'S', long = "sparse-size", value_parser = size::parse_size, default_value = "4k")]
    sparse_size: u64,
    /// Preallocate the whole output file after writing.
    #[arg(long, value_enum, default_value = "off")]
    preallocation: cmd::convert::PreallocationArg,
    /// Directory for the scratch file a compressed qcow2 is unpacked to (default: next to OUT).
    #[arg(long)]
    scratch_dir: Option<PathBuf>,
    /// Worker threads for reading and decompressing (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    // Before any thread starts: large buffers go back to the kernel when freed (see storage).
    storage::bound_allocator_retention();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => cmd::info::run(&args),
        Command::Convert(args) => cmd::convert::run(&args),
        Command::Import(args) => cmd::import::run(&args),
        Command::Clone(args) => cmd::clone::run(&args),
        Command::Serve(args) => cmd::serve::run(&args),
        Command::Apply(args) => cmd::apply::run(&args),
        Command::Get(args) => cmd::get::run(&args),
        Command::Delete(args) => cmd::delete::run(&args),
        Command::Wait(args) => cmd::wait::run(&args),
        Command::Upload(args) => cmd::upload::run(&args),
        Command::Worker(args) => cmd::worker::run(&args),
        Command::Vm(args) => cmd::vm::run(&args),
        Command::Crds(args) => cmd::crds::run(&args),
        Command::Controller(args) => cmd::controller::run(&args),
        Command::UploadProxy(args) => cmd::upload_proxy::run(&args),
        Command::Apiserver(args) => cmd::apiserver::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("diskplane: {}", exit::one_line(&err));
            exit::code(&err)
        }
    }
}
