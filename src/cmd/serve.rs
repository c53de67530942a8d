//! `diskplane serve`: the embedded mode. One process holding the state store and the storage
//! pool under `--data-dir`, the reconcile loop with its in-process workers, and the HTTP API
//! (see `controller::server`) on `--listen`, with CDI's upload routes and UploadTokenRequest on
//! the same listener (tokens signed with `--upload-token-key`). Prints
//! `listening on http://ADDR` once it accepts connections; stops on SIGINT / SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use controller::local::DriverOptions;
use uploader::token::TokenKey;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Directory for the state store (state.redb) and the volumes (volumes/NS/NAME/disk.img).
    #[arg(long, env = "DISKPLANE_DATA_DIR", default_value = "/var/lib/diskplane")]
    data_dir: PathBuf,
    /// Address of the HTTP API (no authentication: keep it on 127.0.0.1).
    #[arg(long, default_value = "127.0.0.1:8417")]
    listen: SocketAddr,
    /// Transfers (imports, clones) running at the same time; the others wait in ImportScheduled.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// A registry (HOST:PORT) spoken to over plain HTTP, like CDIConfig's insecureRegistries
    /// (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// File whose bytes (at least 16) sign upload tokens, so tokens survive a restart
    /// (e.g. `head -c 32 /dev/urandom > key`). Default: a random key per start.
    #[arg(long, value_name = "FILE")]
    upload_token_key: Option<PathBuf>,
    /// Accelerator of VirtualMachines: auto picks KVM only when it really works (not the
    /// kvm_pvm software hypervisor), TCG otherwise.
    #[arg(long, default_value = "auto")]
    accel: launcher::AccelRequest,
    /// The qemu binary VirtualMachines run with.
    #[arg(long, env = "DISKPLANE_QEMU", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Kernel for VirtualMachines with firmware.kernelBoot (kernel container images are not
    /// pulled).
    #[arg(long, value_name = "FILE")]
    vm_kernel: Option<PathBuf>,
    /// Initrd for VirtualMachines with firmware.kernelBoot.
    #[arg(long, value_name = "FILE", requires = "vm_kernel")]
    vm_initrd: Option<PathBuf>,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    // The one rustls crypto provider of the binary (see importer::tls).
    importer::tls::install_crypto_provider();
    let mut opts = DriverOptions::new(args.data_dir.clone());
    opts.concurrency = usize::from(args.workers);
    opts.insecure_registries = args.insecure_registries.clone();
    opts.vm.accel = args.accel;
    opts.vm.qemu = args.qemu.clone();
    opts.vm.kernel = args
        .vm_kernel
        .clone()
        .map(|kernel| launcher::argv::KernelFiles { kernel, initrd: args.vm_initrd.clone() });
    let upload_key = match &args.upload_token_key {
        Some(path) => TokenKey::from_file(path).map_err(anyhow::Error::msg)?,
        None => TokenKey::random().context("making a random upload token key")?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("diskplane-serve")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime
        .block_on(controller::server::serve(opts, args.listen, upload_key, |addr| {
            let mut stdout = std::io::stdout();
            let _ = writeln!(stdout, "listening on http://{addr}");
            let _ = stdout.flush();
        }))
        .map_err(|e| anyhow::anyhow!(e))
        .with_context(|| format!("serving from {}", args.data_dir.display()))?;
    // Workers may be inside blocking conversions: do not wait for them.
    runtime.shutdown_background();
    Ok(())
}
