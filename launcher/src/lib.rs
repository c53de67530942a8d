//! # launcher
//!
//! The consumer of volumes: a KubeVirt `kubevirt.io/v1` VirtualMachine manifest becomes a qemu
//! command line; qemu is started, supervised over QMP, stopped gracefully, and restarted per the
//! VM's run strategy. The serial console goes to a log file and a unix socket in the VM's state
//! directory; a cloud-init NoCloud seed (ISO9660, label `cidata`) is generated from user data.
//!
//! ```text
//! manifest::parse(yaml) ─► VmSpec ─┐
//! Resolved { volume → path } ──────┼─► Launch::prepare ─► Launch::start ─► RunningVm
//! LaunchOptions { qemu, accel } ───┘     (disks, seed,       (qemu + QMP)    status / shutdown
//!                                         accel, argv)                        / kill / wait
//! supervise(launch, run strategy) — restarts with backoff
//! ```
//!
//! ## Main types
//! - [`manifest::parse`] → [`VmSpec`]: validated VM (errors name the manifest field).
//! - [`argv::qemu_args`]: the pure argv builder (table-tested).
//! - [`AccelProbe::choose`]: KVM when it really works, TCG otherwise.
//! - [`Launch`] / [`RunningVm`]: one VM's qemu; [`supervise`]: run strategies.
//! - [`seed`] + [`iso9660`]: the NoCloud seed image.
//! - [`console::follow`]: tail the serial log.
//!
//! ## Caveats
//! - `auto` refuses `/dev/kvm` when the `kvm_pvm` module is loaded: it is a nested software
//!   hypervisor under which unmodified guests hang.
//! - Volumes are raw files or block devices given by the caller; the launcher neither imports
//!   nor clones. containerDisk volumes are attached with `snapshot=on` (writes are discarded).
//! - A dropped [`RunningVm`] kills its qemu; detaching a VM from its launcher is not supported.

mod accel;
pub mod argv;
pub mod console;
mod error;
pub mod iso9660;
pub mod manifest;
pub mod qmp;
mod quantity;
pub mod seed;
mod spec;
mod supervise;
mod vm;

pub use accel::{Accel, AccelChoice, AccelProbe, AccelRequest};
pub use error::{Error, Result};
pub use quantity::parse_bytes;
pub use spec::{CloudInit, Disk, DiskSource, KernelBoot, Network, RestartPolicy, RunStrategy, VmSpec};
pub use supervise::{Event, SuperviseOptions, should_restart, supervise};
pub use vm::{ExitOutcome, Launch, LaunchOptions, Resolved, RunningVm};
