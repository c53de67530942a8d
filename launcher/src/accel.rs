//! Choosing the accelerator: KVM when it really works, TCG otherwise.
//!
//! `/dev/kvm` existing is not enough: on some hosts it is a nested software hypervisor
//! (`kvm_pvm`) under which an unmodified guest hangs or stops with "emulation failure". `auto`
//! therefore refuses KVM when the `kvm_pvm` module is loaded, and when `/dev/kvm` is missing or
//! cannot be opened read-write, and says why in [`AccelChoice::warning`].

use std::fs::OpenOptions;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// What the user asked for (`--accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelRequest {
    /// KVM if usable, else TCG with a warning.
    Auto,
    /// KVM or an error.
    Kvm,
    /// TCG (emulation).
    Tcg,
}

impl std::str::FromStr for AccelRequest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelRequest::Auto),
            "kvm" => Ok(AccelRequest::Kvm),
            "tcg" => Ok(AccelRequest::Tcg),
            _ => Err(format!("{s:?} is not one of auto, kvm, tcg")),
        }
    }
}

/// The accelerator qemu is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (`-accel kvm -cpu host`).
    Kvm,
    /// Emulation (`-accel tcg -cpu max`).
    Tcg,
}

/// The decision and, when it is not what was asked for or is risky, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    /// The accelerator.
    pub accel: Accel,
    /// A warning to show the user (fallback to TCG, or KVM forced on a software hypervisor).
    pub warning: Option<String>,
}

/// Where the probe looks; tests point it elsewhere.
#[derive(Debug, Clone)]
pub struct AccelProbe {
    /// The KVM device (default `/dev/kvm`).
    pub kvm_device: PathBuf,
    /// The loaded-modules directory (default `/sys/module`).
    pub sys_module: PathBuf,
}

impl Default for AccelProbe {
    fn default() -> Self {
        AccelProbe { kvm_device: PathBuf::from("/dev/kvm"), sys_module: PathBuf::from("/sys/module") }
    }
}

/// Why KVM must not be used here, if it must not.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KvmState {
    Usable,
    /// Works, but is a nested software hypervisor that hangs unmodified guests.
    SoftwareHypervisor,
    Unusable(String),
}

impl AccelProbe {
    fn kvm_state(&self) -> KvmState {
        if let Err(e) = OpenOptions::new().read(true).write(true).open(&self.kvm_device) {
            return KvmState::Unusable(format!("{}: {e}", self.kvm_device.display()));
        }
        if self.sys_module.join("kvm_pvm").exists() {
            return KvmState::SoftwareHypervisor;
        }
        KvmState::Usable
    }

    /// Decides the accelerator for `request`.
    ///
    /// # Errors
    /// [`Error::AccelUnavailable`] when `kvm` is asked for and `/dev/kvm` cannot be opened.
    pub fn choose(&self, request: AccelRequest) -> Result<AccelChoice> {
        Ok(match request {
            AccelRequest::Tcg => AccelChoice { accel: Accel::Tcg, warning: None },
            AccelRequest::Kvm => match self.kvm_state() {
                KvmState::Usable => AccelChoice { accel: Accel::Kvm, warning: None },
                KvmState::SoftwareHypervisor => AccelChoice {
                    accel: Accel::Kvm,
                    warning: Some(
                        "kvm here is the nested software hypervisor kvm_pvm: unmodified guests may hang; \
                         use --accel tcg or auto"
                            .to_owned(),
                    ),
                },
                KvmState::Unusable(why) => return Err(Error::AccelUnavailable(why)),
            },
            AccelRequest::Auto => match self.kvm_state() {
                KvmState::Usable => AccelChoice { accel: Accel::Kvm, warning: None },
                KvmState::SoftwareHypervisor => AccelChoice {
                    accel: Accel::Tcg,
                    warning: Some(
                        "/dev/kvm is the nested software hypervisor kvm_pvm (guests hang under it): \
                         using TCG emulation, which is slow"
                            .to_owned(),
                    ),
                },
                KvmState::Unusable(why) => AccelChoice {
                    accel: Accel::Tcg,
                    warning: Some(format!("kvm is not usable ({why}): using TCG emulation, which is slow")),
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(dir: &tempfile::TempDir, kvm: bool, pvm: bool) -> AccelProbe {
        let dev = dir.path().join("kvm");
        if kvm {
            std::fs::write(&dev, b"").unwrap();
        }
        let sys = dir.path().join("module");
        std::fs::create_dir_all(sys.join("kvm")).unwrap();
        if pvm {
            std::fs::create_dir_all(sys.join("kvm_pvm")).unwrap();
        }
        AccelProbe { kvm_device: dev, sys_module: sys }
    }

    #[test]
    fn auto_uses_kvm_when_it_is_real() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            probe(&d, true, false).choose(AccelRequest::Auto).unwrap(),
            AccelChoice { accel: Accel::Kvm, warning: None }
        );
    }

    #[test]
    fn auto_falls_back_to_tcg_with_a_warning_under_kvm_pvm() {
        let d = tempfile::tempdir().unwrap();
        let c = probe(&d, true, true).choose(AccelRequest::Auto).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.warning.unwrap().contains("kvm_pvm"));
    }

    #[test]
    fn auto_falls_back_to_tcg_when_dev_kvm_is_absent() {
        let d = tempfile::tempdir().unwrap();
        let c = probe(&d, false, false).choose(AccelRequest::Auto).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.warning.unwrap().contains("kvm is not usable"));
    }

    #[test]
    fn explicit_kvm_without_dev_kvm_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = probe(&d, false, false).choose(AccelRequest::Kvm).unwrap_err();
        assert!(e.to_string().contains("accelerator kvm is not usable"), "{e}");
    }

    #[test]
    fn explicit_tcg_never_probes() {
        let p = AccelProbe { kvm_device: "/nonexistent".into(), sys_module: "/nonexistent".into() };
        assert_eq!(p.choose(AccelRequest::Tcg).unwrap(), AccelChoice { accel: Accel::Tcg, warning: None });
    }
}
