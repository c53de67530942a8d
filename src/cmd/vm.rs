//! `diskplane vm run` and `diskplane vm console`: boot a VirtualMachine manifest in the
//! foreground on local volumes, and read its serial console.
//!
//! ```text
//! diskplane vm run -f VM.yaml --volume root=/var/lib/disk.img [--accel auto] [--state-dir DIR]
//! diskplane vm console --state-dir DIR [--follow]
//! ```
//! `run` streams the guest's serial console to stdout, reports starts, exits and restarts on
//! stderr, restarts qemu per the VM's run strategy, and exits 0 when the guest powered off
//! (qemu exit code 0), non-zero when qemu failed or was killed.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use launcher::argv::KernelFiles;
use launcher::{AccelProbe, AccelRequest, Event, Launch, LaunchOptions, Resolved, SuperviseOptions};

#[derive(Debug, clap::Args)]
pub struct VmArgs {
    #[command(subcommand)]
    command: VmCommand,
}

#[derive(Debug, clap::Subcommand)]
enum VmCommand {
    /// Boot a VirtualMachine manifest in the foreground on local volumes, streaming its serial
    /// console; exits when the guest powers off (restarts per its runStrategy).
    Run(RunArgs),
    /// Print a VM's serial console log (and follow it while the VM runs).
    Console(ConsoleArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The VirtualMachine manifest (kubevirt.io/v1, YAML or JSON).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// A volume's raw file or block device: NAME=PATH, NAME as in spec.template.spec.volumes.
    #[arg(long = "volume", value_name = "NAME=PATH")]
    volumes: Vec<String>,
    /// Kernel for firmware.kernelBoot.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initrd for firmware.kernelBoot.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Accelerator: auto picks KVM only when it really works (not the kvm_pvm software
    /// hypervisor), TCG otherwise.
    #[arg(long, default_value = "auto")]
    accel: AccelRequest,
    /// The VM's state directory: sockets, serial log, seed image (default
    /// $TMPDIR/diskplane-vm-NAMESPACE-NAME).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The qemu binary.
    #[arg(long, env = "DISKPLANE_QEMU", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// Stop restarting after this many restarts (Always / RerunOnFailure).
    #[arg(long)]
    max_restarts: Option<u32>,
    /// Print the qemu command line instead of running it.
    #[arg(long)]
    print_command: bool,
    /// Do not stream the serial console to stdout.
    #[arg(long)]
    no_console: bool,
    /// The KVM device the accelerator probe opens (tests point it elsewhere).
    #[arg(long, env = "DISKPLANE_KVM_DEVICE", default_value = "/dev/kvm", hide = true)]
    kvm_device: PathBuf,
}

#[derive(Debug, clap::Args)]
struct ConsoleArgs {
    /// The VM's state directory (as given to `vm run`).
    #[arg(long)]
    state_dir: PathBuf,
    /// Keep printing while the VM runs.
    #[arg(short = 'f', long)]
    follow: bool,
}

pub fn run(args: &VmArgs) -> Result<()> {
    match &args.command {
        VmCommand::Run(a) => run_vm(a),
        VmCommand::Console(a) => console(a),
    }
}

fn run_vm(args: &RunArgs) -> Result<()> {
    let text =
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let spec = launcher::manifest::parse(&text).with_context(|| args.file.display().to_string())?;
    let mut resolved = Resolved::default();
    for v in &args.volumes {
        let Some((name, path)) = v.split_once('=') else {
            bail!("--volume {v:?}: want NAME=PATH");
        };
        if resolved.volumes.insert(name.to_owned(), PathBuf::from(path)).is_some() {
            bail!("--volume {name}: given twice");
        }
    }
    resolved.kernel = args.kernel.clone().map(|kernel| KernelFiles { kernel, initrd: args.initrd.clone() });
    let state_dir = args.state_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("diskplane-vm-{}-{}", spec.namespace, spec.name))
    });
    let opts = LaunchOptions {
        qemu: args.qemu.clone(),
        accel: args.accel,
        probe: AccelProbe { kvm_device: args.kvm_device.clone(), ..AccelProbe::default() },
        ..LaunchOptions::default()
    };
    let mut launch = Launch::prepare(&spec, &resolved, &state_dir, &opts)?;
    for w in launch.warnings() {
        eprintln!("diskplane: warning: {w}");
    }
    if args.print_command {
        let (program, argv) = launch.command_line();
        let mut line = shell_quote(program.as_os_str());
        for a in &argv {
            line.push(' ');
            line.push_str(&shell_quote(a));
        }
        println!("{line}");
        return Ok(());
    }
    let log = launch.paths().serial_log();
    let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let stop = AtomicBool::new(false);
    let id = format!("{}/{}", spec.namespace, spec.name);
    let accel = format!("{:?}", launch.accel().accel).to_lowercase();
    let policy = spec.run_strategy.restart_policy();
    let sup = SuperviseOptions { max_restarts: args.max_restarts, ..SuperviseOptions::default() };
    let warned = launch.warnings().len();
    let outcome = std::thread::scope(|s| {
        let tail = (!args.no_console)
            .then(|| s.spawn(|| launcher::console::follow(&log, from, &stop, &mut std::io::stdout().lock())));
        let result = launcher::supervise(&mut launch, policy, sup, |event| match event {
            Event::Started { vm, attempt } => {
                eprintln!(
                    "diskplane: vm {id} started (pid {}, accel {accel}, run {})",
                    vm.pid(),
                    attempt + 1
                );
            }
            Event::Exited(o) => {
                let reason = o.shutdown_reason.as_deref().map(|r| format!(", {r}")).unwrap_or_default();
                eprintln!(
                    "diskplane: vm {id} exited ({}{reason}) after {:.1}s",
                    o.status,
                    o.ran_for.as_secs_f64()
                );
            }
            Event::Restarting { delay } => eprintln!("diskplane: vm {id} restarting in {delay:?}"),
            _ => {}
        });
        stop.store(true, Ordering::Release);
        if let Some(Ok(Err(e))) = tail.map(|t| t.join()) {
            eprintln!("diskplane: warning: serial console {}: {e}", log.display());
        }
        result
    });
    for w in &launch.warnings()[warned..] {
        eprintln!("diskplane: warning: {w}");
    }
    let outcome = outcome?;
    let _ = std::io::stdout().flush();
    if !outcome.success {
        bail!("vm {id}: qemu {}{}", outcome.status, if outcome.killed { " (killed)" } else { "" });
    }
    Ok(())
}

fn console(args: &ConsoleArgs) -> Result<()> {
    let paths = launcher::argv::StatePaths::new(&args.state_dir);
    let log = paths.serial_log();
    if !log.exists() {
        bail!("{}: no serial log (is this a VM state directory?)", log.display());
    }
    let stop = AtomicBool::new(!args.follow);
    std::thread::scope(|s| {
        if args.follow {
            let pid_file = paths.pid_file();
            let stop = &stop;
            s.spawn(move || {
                while pid_file.exists() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                stop.store(true, Ordering::Release);
            });
        }
        launcher::console::follow(&log, 0, &stop, &mut std::io::stdout().lock())
            .with_context(|| log.display().to_string())
    })?;
    Ok(())
}

fn shell_quote(s: &std::ffi::OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=,:+@%".contains(&b)) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
