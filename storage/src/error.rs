//! The crate's one error type: what failed, on which path, with the I/O error as `source`.
//! A message never repeats its source: print the chain to see both.

use std::io;
use std::path::PathBuf;

use disk_formats::ErrorKind;

/// Creating, writing or flushing a volume failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call on the volume failed during `op` ("opening for writing", "flushing", ...).
    #[error("{}: {op}", path.display())]
    Io {
        /// The volume.
        path: PathBuf,
        /// What was being done.
        op: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// The target is neither a regular file nor a block device (a directory, a FIFO, ...).
    #[error("{}: not a regular file or a block device", path.display())]
    NotAVolume {
        /// The target.
        path: PathBuf,
    },
    /// The block device is smaller than what has to go on it.
    #[error("{}: image of {needed} bytes is larger than the block device's capacity of {capacity} bytes", path.display())]
    DeviceTooSmall {
        /// The device.
        path: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// The device's size.
        capacity: u64,
    },
    /// A file volume was asked to be larger than the allowed maximum.
    #[error("{}: size {size} bytes exceeds the limit of {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Requested size.
        size: u64,
        /// The limit (`max_size`).
        limit: u64,
    },
}

impl Error {
    /// The stable kind every edge maps (exit code, HTTP status, condition reason).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::NotAVolume { .. } => ErrorKind::Unsupported,
            Error::DeviceTooSmall { .. } | Error::TooLarge { .. } => ErrorKind::TooLarge,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, op: impl Into<String>, source: io::Error) -> Self {
        Error::Io { path: path.into(), op: op.into(), source }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
