//! The validated VM the launcher boots: what [`crate::manifest::parse`] returns.

use crate::manifest::DataVolumeTemplate;

/// A validated VirtualMachine.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// When the VM should run and be restarted.
    pub run_strategy: RunStrategy,
    /// `spec.dataVolumeTemplates`, kept for the lifecycle layer (which creates them).
    pub data_volume_templates: Vec<DataVolumeTemplate>,
    /// CPU sockets.
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
    /// Guest memory in bytes.
    pub memory_bytes: u64,
    /// Direct kernel boot (kernel and initrd paths are resolved by the caller).
    pub kernel_boot: Option<KernelBoot>,
    /// Disks in device order (disks listed in `devices.disks` first, then volumes without one).
    pub disks: Vec<Disk>,
    /// A network interface, when asked for.
    pub network: Option<Network>,
}

impl VmSpec {
    /// Total vCPUs.
    pub fn vcpus(&self) -> u32 {
        self.sockets * self.cores * self.threads
    }
}

/// `spec.runStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunStrategy {
    /// Keep it running: restart after any stop not asked for.
    Always,
    /// Not running until started; never restarted.
    Halted,
    /// Started and stopped by hand only; never restarted.
    Manual,
    /// Restart only after a failure (not after the guest powers off).
    RerunOnFailure,
    /// Run once to completion.
    Once,
}

impl RunStrategy {
    /// What the supervisor does when qemu exits by itself.
    pub fn restart_policy(self) -> RestartPolicy {
        match self {
            RunStrategy::Always => RestartPolicy::Always,
            RunStrategy::RerunOnFailure => RestartPolicy::OnFailure,
            RunStrategy::Halted | RunStrategy::Manual | RunStrategy::Once => RestartPolicy::Never,
        }
    }
}

/// Restart behaviour derived from a [`RunStrategy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart after every exit that was not a requested stop.
    Always,
    /// Restart after a failure only.
    OnFailure,
    /// Never restart.
    Never,
}

/// `firmware.kernelBoot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    /// The kernel command line.
    pub kernel_args: String,
    /// The container image named by the manifest (informational: paths come from the caller).
    pub image: Option<String>,
}

/// One disk of the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Disk and volume name.
    pub name: String,
    /// Where its bytes come from.
    pub source: DiskSource,
    /// Attached read-only.
    pub read_only: bool,
    /// `bootOrder`.
    pub boot_order: Option<u32>,
    /// Serial number shown to the guest.
    pub serial: Option<String>,
}

/// A volume's source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A DataVolume (path resolved by the caller).
    DataVolume {
        /// Its name.
        name: String,
    },
    /// A PVC (path resolved by the caller).
    Pvc {
        /// Claim name.
        claim_name: String,
        /// `readOnly`.
        read_only: bool,
    },
    /// An ephemeral disk: guest writes go to a throw-away overlay, never to the image.
    ContainerDisk {
        /// The image reference (path resolved by the caller).
        image: String,
    },
    /// A NoCloud seed the launcher builds itself.
    CloudInit(CloudInit),
}

/// NoCloud user and network data (decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudInit {
    /// `user-data` (may be empty).
    pub user_data: Vec<u8>,
    /// `network-config`, when given.
    pub network_data: Option<Vec<u8>>,
}

/// The network the VM gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// qemu user-mode networking behind a virtio-net device (KubeVirt's masquerade on the pod
    /// network).
    User,
}
