//! VM spec + resolved volumes → the qemu command line. Pure: everything learned from the host
//! (accelerator, O_DIRECT per disk, io_uring) comes in as data, so the table tests below pin
//! the exact arguments.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::accel::Accel;
use crate::spec::{Network, VmSpec};

/// A disk with its bytes located and the host's abilities for it probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDisk {
    /// The disk's name in the manifest.
    pub name: String,
    /// A raw file or a block device.
    pub path: PathBuf,
    /// `readonly=on`.
    pub read_only: bool,
    /// Writes go to a throw-away overlay (`snapshot=on`): containerDisk semantics.
    pub ephemeral: bool,
    /// O_DIRECT works on `path`: `cache=none`; else `cache=writeback`.
    pub direct_io: bool,
    /// `bootindex`.
    pub boot_index: Option<u32>,
    /// `serial`.
    pub serial: Option<String>,
}

/// The files of one running VM, all in its state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePaths {
    /// The directory.
    pub dir: PathBuf,
}

impl StatePaths {
    /// Paths inside `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StatePaths { dir: dir.into() }
    }
    /// QMP control socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    /// Serial console socket (interactive console; output also goes to [`Self::serial_log`]).
    pub fn serial_socket(&self) -> PathBuf {
        self.dir.join("serial.sock")
    }
    /// Everything the guest wrote to its serial port (appended across restarts).
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    /// The generated cloud-init NoCloud seed image.
    pub fn seed_iso(&self) -> PathBuf {
        self.dir.join("cidata.iso")
    }
    /// qemu's stderr.
    pub fn qemu_stderr(&self) -> PathBuf {
        self.dir.join("qemu.stderr")
    }
    /// The running qemu's process id.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
}

/// Kernel and initrd for direct kernel boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFiles {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initrd, if any.
    pub initrd: Option<PathBuf>,
}

/// What the host supports, probed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCaps {
    /// io_uring is enabled in this kernel (`/proc/sys/kernel/io_uring_disabled` is 0 or absent).
    pub io_uring: bool,
}

/// Everything the argv depends on.
#[derive(Debug, Clone, Copy)]
pub struct QemuConfig<'a> {
    /// The VM.
    pub spec: &'a VmSpec,
    /// Its disks in order.
    pub disks: &'a [ResolvedDisk],
    /// The accelerator chosen.
    pub accel: Accel,
    /// Where sockets and logs go.
    pub paths: &'a StatePaths,
    /// Direct kernel boot files, when the VM boots that way.
    pub kernel: Option<&'a KernelFiles>,
    /// Host abilities.
    pub caps: HostCaps,
}

/// The arguments after the qemu binary.
pub fn qemu_args(cfg: &QemuConfig<'_>) -> Vec<OsString> {
    let mut a = Args::default();
    let spec = cfg.spec;
    // Names are DNS labels (validated): no commas to escape.
    a.push("-name").push(format!("guest={}/{},debug-threads=on", spec.namespace, spec.name));
    a.push("-machine").push("q35");
    match cfg.accel {
        Accel::Kvm => a.push("-accel").push("kvm").push("-cpu").push("host"),
        Accel::Tcg => a.push("-accel").push("tcg").push("-cpu").push("max"),
    };
    a.push("-smp").push(format!(
        "cpus={},sockets={},cores={},threads={}",
        spec.vcpus(),
        spec.sockets,
        spec.cores,
        spec.threads
    ));
    a.push("-m").push(format!("{}M", spec.memory_bytes.div_ceil(1 << 20)));
    a.push("-nodefaults").push("-no-user-config").push("-nographic");
    let mut qmp = OsString::from("socket,id=qmp,path=");
    qmp.push(escape(&cfg.paths.qmp_socket()));
    qmp.push(",server=on,wait=off");
    a.push("-chardev").push(qmp).push("-mon").push("chardev=qmp,mode=control");
    let mut serial = OsString::from("socket,id=serial0,path=");
    serial.push(escape(&cfg.paths.serial_socket()));
    serial.push(",server=on,wait=off,logfile=");
    serial.push(escape(&cfg.paths.serial_log()));
    serial.push(",logappend=on");
    a.push("-chardev").push(serial).push("-serial").push("chardev:serial0");
    for d in cfg.disks {
        a.push("-drive").push(drive(d, cfg.caps));
        let mut dev = format!("virtio-blk-pci,drive=drive-{0},id=disk-{0}", d.name);
        if let Some(i) = d.boot_index {
            dev.push_str(&format!(",bootindex={i}"));
        }
        if let Some(s) = &d.serial {
            dev.push_str(&format!(",serial={}", s.replace(',', ",,")));
        }
        a.push("-device").push(dev);
    }
    if let Some(k) = cfg.kernel {
        a.push("-kernel").push(k.kernel.as_os_str());
        if let Some(i) = &k.initrd {
            a.push("-initrd").push(i.as_os_str());
        }
        if let Some(kb) = spec.kernel_boot.as_ref().filter(|kb| !kb.kernel_args.is_empty()) {
            a.push("-append").push(kb.kernel_args.as_str());
        }
    }
    match spec.network {
        Some(Network::User) => {
            a.push("-netdev").push("user,id=net0").push("-device").push("virtio-net-pci,netdev=net0,id=nic0");
        }
        None => {}
    }
    a.0
}

/// `-drive` value: raw, `cache=none` with O_DIRECT else `writeback`; `aio=io_uring` when the
/// kernel has it, else `native` (needs O_DIRECT) or `threads`.
fn drive(d: &ResolvedDisk, caps: HostCaps) -> OsString {
    let mut v = OsString::from("file=");
    v.push(escape(&d.path));
    v.push(format!(",format=raw,if=none,id=drive-{}", d.name));
    let (cache, aio) = match (d.direct_io, caps.io_uring) {
        (true, true) => ("none", "io_uring"),
        (true, false) => ("none", "native"),
        (false, true) => ("writeback", "io_uring"),
        (false, false) => ("writeback", "threads"),
    };
    v.push(format!(",cache={cache},aio={aio}"));
    if d.read_only {
        v.push(",readonly=on");
    }
    if d.ephemeral {
        v.push(",snapshot=on");
    }
    v
}

/// qemu option values separate keys with `,`: a literal comma is written twice.
fn escape(p: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(p.as_os_str().len());
    for &b in p.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, s: impl Into<OsString>) -> &mut Self {
        self.0.push(s.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{KernelBoot, RunStrategy};

    fn spec() -> VmSpec {
        VmSpec {
            name: "vm1".into(),
            namespace: "default".into(),
            run_strategy: RunStrategy::Manual,
            data_volume_templates: vec![],
            sockets: 1,
            cores: 2,
            threads: 1,
            memory_bytes: (256 << 20) + 1,
            kernel_boot: None,
            disks: vec![],
            network: None,
        }
    }

    fn disk(name: &str, path: &str, direct_io: bool) -> ResolvedDisk {
        ResolvedDisk {
            name: name.into(),
            path: path.into(),
            read_only: false,
            ephemeral: false,
            direct_io,
            boot_index: None,
            serial: None,
        }
    }

    fn args(
        spec: &VmSpec,
        disks: &[ResolvedDisk],
        accel: Accel,
        caps: HostCaps,
        kernel: Option<&KernelFiles>,
    ) -> Vec<String> {
        let paths = StatePaths::new("/run/vm1");
        let cfg = QemuConfig { spec, disks, accel, paths: &paths, kernel, caps };
        qemu_args(&cfg).into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    fn value_after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
    }

    #[test]
    fn base_command_line_is_headless_with_qmp_and_serial() {
        let a = args(&spec(), &[], Accel::Tcg, HostCaps { io_uring: true }, None);
        assert_eq!(
            a.join(" "),
            "-name guest=default/vm1,debug-threads=on -machine q35 -accel tcg -cpu max \
             -smp cpus=2,sockets=1,cores=2,threads=1 -m 257M -nodefaults -no-user-config -nographic \
             -chardev socket,id=qmp,path=/run/vm1/qmp.sock,server=on,wait=off -mon chardev=qmp,mode=control \
             -chardev socket,id=serial0,path=/run/vm1/serial.sock,server=on,wait=off,logfile=/run/vm1/serial.log,logappend=on \
             -serial chardev:serial0"
        );
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let a = args(&spec(), &[], Accel::Kvm, HostCaps { io_uring: true }, None);
        assert_eq!(value_after(&a, "-accel"), ["kvm"]);
        assert_eq!(value_after(&a, "-cpu"), ["host"]);
    }

    #[test]
    fn cache_and_aio_follow_o_direct_and_io_uring() {
        let table = [
            (true, true, "cache=none,aio=io_uring"),
            (true, false, "cache=none,aio=native"),
            (false, true, "cache=writeback,aio=io_uring"),
            (false, false, "cache=writeback,aio=threads"),
        ];
        for (direct, uring, want) in table {
            let a = args(
                &spec(),
                &[disk("root", "/v/disk.img", direct)],
                Accel::Tcg,
                HostCaps { io_uring: uring },
                None,
            );
            assert_eq!(
                value_after(&a, "-drive"),
                [format!("file=/v/disk.img,format=raw,if=none,id=drive-root,{want}")],
                "direct={direct} io_uring={uring}"
            );
        }
    }

    #[test]
    fn disks_become_virtio_blk_devices_in_order_with_options() {
        let mut root = disk("root", "/dev/loop3", true);
        root.boot_index = Some(1);
        root.serial = Some("S,1".into());
        let mut seed = disk("seed", "/run/vm1/cidata.iso", false);
        seed.read_only = true;
        let mut cd = disk("scratch", "/img/with,comma.img", true);
        cd.ephemeral = true;
        let a = args(&spec(), &[root, seed, cd], Accel::Tcg, HostCaps { io_uring: false }, None);
        assert_eq!(
            value_after(&a, "-drive"),
            [
                "file=/dev/loop3,format=raw,if=none,id=drive-root,cache=none,aio=native",
                "file=/run/vm1/cidata.iso,format=raw,if=none,id=drive-seed,cache=writeback,aio=threads,readonly=on",
                "file=/img/with,,comma.img,format=raw,if=none,id=drive-scratch,cache=none,aio=native,snapshot=on",
            ]
        );
        assert_eq!(
            value_after(&a, "-device"),
            [
                "virtio-blk-pci,drive=drive-root,id=disk-root,bootindex=1,serial=S,,1",
                "virtio-blk-pci,drive=drive-seed,id=disk-seed",
                "virtio-blk-pci,drive=drive-scratch,id=disk-scratch",
            ]
        );
    }

    #[test]
    fn kernel_boot_adds_kernel_initrd_and_append() {
        let mut s = spec();
        s.kernel_boot = Some(KernelBoot { kernel_args: "console=ttyS0 quiet".into(), image: None });
        let k = KernelFiles { kernel: "/k/vmlinuz".into(), initrd: Some("/k/initrd.img".into()) };
        let a = args(&s, &[], Accel::Tcg, HostCaps { io_uring: true }, Some(&k));
        assert_eq!(value_after(&a, "-kernel"), ["/k/vmlinuz"]);
        assert_eq!(value_after(&a, "-initrd"), ["/k/initrd.img"]);
        assert_eq!(value_after(&a, "-append"), ["console=ttyS0 quiet"]);
    }

    #[test]
    fn no_network_unless_asked() {
        let a = args(&spec(), &[], Accel::Tcg, HostCaps { io_uring: true }, None);
        assert!(!a.iter().any(|x| x == "-netdev" || x.contains("virtio-net")));
        let mut s = spec();
        s.network = Some(Network::User);
        let a = args(&s, &[], Accel::Tcg, HostCaps { io_uring: true }, None);
        assert_eq!(value_after(&a, "-netdev"), ["user,id=net0"]);
        assert_eq!(value_after(&a, "-device"), ["virtio-net-pci,netdev=net0,id=nic0"]);
    }
}
