//! The crate's one error type: a variant per thing that can go wrong, each with its context
//! (path, operation, peer); the I/O error, if any, is the `source`. Messages never repeat it.

use std::io;
use std::path::PathBuf;

use disk_formats::ErrorKind;

/// A clone failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call on the source or target failed.
    #[error("{}: {op}", path.display())]
    Io {
        /// The source or target.
        path: PathBuf,
        /// What was being done ("reading the source", "reflinking", ...).
        op: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// Opening, writing or flushing the target volume failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// The target cannot hold the source.
    #[error("source is larger than the target (source {source_size} bytes, target {target_size} bytes)")]
    TargetTooSmall {
        /// Bytes of the source.
        source_size: u64,
        /// Bytes the target can hold.
        target_size: u64,
    },
    /// The strategy asked for cannot be used here (no reflinks on this file system, ...).
    #[error("the {strategy} strategy cannot be used here: {reason}")]
    StrategyUnavailable {
        /// The strategy.
        strategy: crate::Strategy,
        /// Why.
        reason: String,
    },
    /// The target does not read back what the source holds after a fast path.
    #[error("the {strategy} clone does not match the source: {detail}")]
    VerifyFailed {
        /// The strategy whose result was checked.
        strategy: crate::Strategy,
        /// Where it differs.
        detail: String,
    },
    /// The digest at the end of a stream (XXH3-128 of its frames) does not match the frames
    /// received.
    #[error("stream checksum mismatch: the source sent xxh3:{expected}, the target received xxh3:{actual}")]
    Checksum {
        /// Hex digest the source computed.
        expected: String,
        /// Hex digest of what arrived.
        actual: String,
    },
    /// The peer broke the stream protocol (bad magic, out-of-order frame, oversized frame,
    /// truncated stream).
    #[error("clone stream: {0}")]
    Protocol(String),
    /// The source refused the client's token, or the target refused to go on.
    #[error("{0}")]
    Denied(String),
    /// The target of a stream reported that it could not write or check the clone.
    #[error("the target {peer} failed to write the clone: {message}")]
    TargetFailed {
        /// The target's address.
        peer: String,
        /// Its one-line error.
        message: String,
    },
    /// Connecting, the TLS handshake, or the transfer over the network failed.
    #[error("{op}")]
    Network {
        /// What was being done, with the peer.
        op: String,
        /// The system's or TLS error.
        #[source]
        source: io::Error,
    },
    /// A certificate, key, token or address given to us is unusable.
    #[error("{detail}")]
    Config {
        /// What is wrong, naming the file.
        detail: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    /// The stable kind every edge maps (exit code, HTTP status, condition reason).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Storage(e) => e.kind(),
            Error::TargetTooSmall { .. } => ErrorKind::TooLarge,
            Error::StrategyUnavailable { .. } => ErrorKind::Unsupported,
            Error::VerifyFailed { .. } | Error::Checksum { .. } => ErrorKind::Checksum,
            Error::Protocol(_) => ErrorKind::InvalidImage,
            Error::Denied(_) => ErrorKind::Denied,
            Error::Io { .. } | Error::Network { .. } | Error::TargetFailed { .. } | Error::Config { .. } => {
                ErrorKind::Io
            }
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, op: impl Into<String>, source: io::Error) -> Self {
        Error::Io { path: path.into(), op: op.into(), source }
    }

    pub(crate) fn network(op: impl Into<String>, source: io::Error) -> Self {
        Error::Network { op: op.into(), source }
    }

    pub(crate) fn config(
        detail: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Config { detail: detail.into(), source: Some(source.into()) }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
