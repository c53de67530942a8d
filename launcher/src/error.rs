//! The crate's one error type: a variant per thing that can go wrong, each with its context (the
//! manifest field, the volume, the qemu binary); the I/O error, if any, is the `source`.

use std::io;
use std::path::PathBuf;

use disk_formats::ErrorKind;

/// Launching or supervising a VM failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The manifest is not YAML/JSON of the expected shape.
    #[error("VirtualMachine manifest: {0}")]
    Parse(String),
    /// The manifest parsed but breaks a rule; `field` is the path of the offending field.
    #[error("VirtualMachine manifest: {field}: {message}")]
    Invalid {
        /// The field, e.g. `spec.template.spec.volumes[1].dataVolume.name`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The manifest asks for something the launcher does not do (a SATA bus, a bridge network).
    #[error("VirtualMachine manifest: {field}: {message} is not supported")]
    Unsupported {
        /// The field.
        field: String,
        /// What is not supported.
        message: String,
    },
    /// A volume of the VM has no path, or its path does not exist or is not a file or device.
    #[error("volume {name}: {message}")]
    Volume {
        /// The volume's name in the manifest.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// `--accel kvm` was asked for but KVM cannot be used here.
    #[error("accelerator kvm is not usable: {0}")]
    AccelUnavailable(String),
    /// The qemu binary could not be run at all.
    #[error("cannot run qemu {}", path.display())]
    QemuMissing {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// qemu started but exited before its QMP socket answered (its stderr is in `stderr`).
    #[error("qemu failed to start ({status}): {stderr}")]
    QemuFailed {
        /// How it exited.
        status: String,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// The QMP conversation failed or qemu answered a command with an error.
    #[error("QMP: {0}")]
    Qmp(String),
    /// A timeout passed (waiting for QMP, for shutdown).
    #[error("timed out {0}")]
    Timeout(String),
    /// A file or socket operation failed.
    #[error("{}: {op}", path.display())]
    Io {
        /// The file or socket.
        path: PathBuf,
        /// What was being done.
        op: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The coarse kind each edge (exit code, condition reason) maps.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Parse(_) | Error::Invalid { .. } => ErrorKind::InvalidImage,
            Error::Unsupported { .. } | Error::AccelUnavailable(_) => ErrorKind::Unsupported,
            Error::Volume { .. }
            | Error::QemuMissing { .. }
            | Error::QemuFailed { .. }
            | Error::Qmp(_)
            | Error::Timeout(_)
            | Error::Io { .. } => ErrorKind::Io,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, op: impl Into<String>, source: io::Error) -> Self {
        Error::Io { path: path.into(), op: op.into(), source }
    }

    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid { field: field.into(), message: message.into() }
    }

    pub(crate) fn unsupported(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Unsupported { field: field.into(), message: message.into() }
    }
}
