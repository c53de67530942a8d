//! `diskplane vm`: boot a VirtualMachine manifest in the foreground on local volumes (`run`),
//! or manage VirtualMachines of `diskplane serve` (`apply`, `start`, `stop`, `get`), and read
//! a serial console (of a state dir, or of a served VM by name).
//!
//! ```text
//! diskplane vm run -f VM.yaml --volume root=/var/lib/disk.img [--accel auto] [--state-dir DIR]
//! diskplane vm console --state-dir DIR [--follow]
//! diskplane vm apply -f VM.yaml | start NAME | stop NAME | get [NAME] [-o json] | console NAME
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
use serde_json::Value;

use super::client::{Client, ServerArgs};

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
    /// Print a VM's serial console log: of a served VM by NAME, or of a state dir (and follow
    /// it while the VM runs).
    Console(ConsoleArgs),
    /// Create a VirtualMachine on the server from a manifest (kubevirt.io/v1, YAML or JSON).
    Apply(ApplyArgs),
    /// Start a served VM (Halted: becomes Always; Manual: asked to run).
    Start(NameArgs),
    /// Stop a served VM gracefully (Always / RerunOnFailure: becomes Halted; Manual: asked to
    /// stop).
    Stop(NameArgs),
    /// Stop a served VM gracefully, wait until it is Stopped, then start it again.
    Restart(NameArgs),
    /// Print served VMs: NAME AGE STATUS READY, or -o json.
    Get(GetArgs),
}

#[derive(Debug, clap::Args)]
struct ApplyArgs {
    /// The manifest (`-` for standard input).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, clap::Args)]
struct NameArgs {
    /// The VM.
    name: String,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, clap::Args)]
struct GetArgs {
    /// One VM; all in the namespace when omitted.
    name: Option<String>,
    /// Output: json (the objects as the server holds them).
    #[arg(short = 'o', long = "output", value_parser = ["json"])]
    output: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
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
    /// A VM of the server (prints its serial log so far).
    #[arg(required_unless_present = "state_dir", conflicts_with = "state_dir")]
    name: Option<String>,
    /// The VM's state directory (as given to `vm run`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
    /// Keep printing while the VM runs.
    #[arg(short = 'f', long)]
    follow: bool,
}

pub fn run(args: &VmArgs) -> Result<()> {
    match &args.command {
        VmCommand::Run(a) => run_vm(a),
        VmCommand::Console(a) => match (&a.name, &a.state_dir) {
            (Some(name), _) => served_console(name, &a.server),
            (None, Some(dir)) => console(dir, a.follow),
            (None, None) => bail!("give a VM NAME or --state-dir"),
        },
        VmCommand::Apply(a) => apply(a),
        VmCommand::Start(a) => start_stop(a, "start"),
        VmCommand::Stop(a) => start_stop(a, "stop"),
        VmCommand::Restart(a) => restart(a),
        VmCommand::Get(a) => get(a),
    }
}

/// The API path of VMs in `namespace` (and of one).
fn vm_path(namespace: &str, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{VM_PATH}/namespaces/{namespace}/virtualmachines/{name}"),
        None => format!("{VM_PATH}/namespaces/{namespace}/virtualmachines"),
    }
}

const VM_PATH: &str = "/apis/kubevirt.io/v1";

fn apply(args: &ApplyArgs) -> Result<()> {
    let shown = args.file.display().to_string();
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).context("reading standard input")?;
        text
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {shown}"))?
    };
    // The launcher's rules first: errors name the manifest field before anything is sent.
    let spec = launcher::manifest::parse(&text).with_context(|| shown.clone())?;
    let mut object: Value = serde_saphyr::from_str(&text).with_context(|| shown.clone())?;
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .filter(|n| !n.is_empty())
        .unwrap_or(&args.server.namespace)
        .to_owned();
    object["metadata"]["namespace"] = Value::from(namespace.clone());
    let client = Client::new(&args.server.server)?;
    let answer = client.post(&vm_path(&namespace, None), &object)?;
    if !answer.ok() {
        bail!("{}", answer.message());
    }
    println!("virtualmachine.kubevirt.io/{} created", spec.name);
    Ok(())
}

fn start_stop(args: &NameArgs, verb: &str) -> Result<()> {
    let client = Client::new(&args.server.server)?;
    let path = format!("{}/{verb}", vm_path(&args.server.namespace, Some(&args.name)));
    let answer = client.post(&path, &Value::Null)?;
    if !answer.ok() {
        bail!("{}", answer.message());
    }
    println!("VM {} was scheduled to {verb}", args.name);
    Ok(())
}

/// How long `vm restart` waits for the guest to power off (the server kills it after its own
/// grace period, so this is only a bound for a server that stopped answering).
const RESTART_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

fn restart(args: &NameArgs) -> Result<()> {
    start_stop(args, "stop")?;
    let client = Client::new(&args.server.server)?;
    let path = vm_path(&args.server.namespace, Some(&args.name));
    let deadline = std::time::Instant::now() + RESTART_STOP_TIMEOUT;
    loop {
        let answer = client.get(&path)?;
        if !answer.ok() {
            bail!("{}", answer.message());
        }
        match answer.body["status"]["printableStatus"].as_str() {
            Some("Stopped" | "Failed") => break,
            status if std::time::Instant::now() >= deadline => {
                bail!("VM {} did not stop within {:?} (status {status:?})", args.name, RESTART_STOP_TIMEOUT)
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
    start_stop(args, "start")
}

fn get(args: &GetArgs) -> Result<()> {
    let client = Client::new(&args.server.server)?;
    let answer = client.get(&vm_path(&args.server.namespace, args.name.as_deref()))?;
    if !answer.ok() {
        bail!("{}", answer.message());
    }
    if args.output.is_some() {
        println!("{}", serde_json::to_string_pretty(&answer.body)?);
        return Ok(());
    }
    let items = match &args.name {
        Some(_) => vec![answer.body.clone()],
        None => answer.body["items"].as_array().cloned().unwrap_or_default(),
    };
    if items.is_empty() {
        eprintln!("No resources found in {} namespace.", args.server.namespace);
        return Ok(());
    }
    let rows: Vec<[String; 4]> = items
        .iter()
        .map(|vm| {
            let status = &vm["status"];
            [
                vm["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                status["printableStatus"].as_str().unwrap_or("").to_owned(),
                if status["ready"].as_bool() == Some(true) { "True" } else { "False" }.to_owned(),
                status["conditions"][0]["message"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    let width = |i: usize| rows.iter().map(|r| r[i].len()).max().unwrap_or(0).max(6);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    println!("{:w0$}   {:w1$}   {:w2$}   MESSAGE", "NAME", "STATUS", "READY");
    for r in &rows {
        println!("{:w0$}   {:w1$}   {:w2$}   {}", r[0], r[1], r[2], r[3]);
    }
    Ok(())
}

/// Prints a served VM's serial log (the server's `.../console` route answers with text).
fn served_console(name: &str, server: &ServerArgs) -> Result<()> {
    importer::tls::install_crypto_provider();
    let url =
        format!("{}{}/console", server.server.trim_end_matches('/'), vm_path(&server.namespace, Some(name)));
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let (status, bytes) = runtime.block_on(async {
        let response = reqwest::get(&url).await.with_context(|| {
            format!("cannot reach the diskplane server at {} (is `diskplane serve` running?)", server.server)
        })?;
        let status = response.status();
        let bytes = response.bytes().await.context("reading the console log")?;
        anyhow::Ok((status, bytes))
    })?;
    if !status.is_success() {
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        bail!("{}", body["message"].as_str().map_or_else(|| format!("HTTP {status}"), str::to_owned));
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&bytes)?;
    out.flush()?;
    Ok(())
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

fn console(state_dir: &std::path::Path, follow: bool) -> Result<()> {
    let paths = launcher::argv::StatePaths::new(state_dir);
    let log = paths.serial_log();
    if !log.exists() {
        bail!("{}: no serial log (is this a VM state directory?)", log.display());
    }
    let stop = AtomicBool::new(!follow);
    std::thread::scope(|s| {
        if follow {
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
