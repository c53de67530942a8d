//! One error type for the crate: a stable [`ErrorKind`], a message that names the problem
//! (file offset, field, limit), and the underlying I/O error as `source` when there is one.
//! The message never repeats its source: print the chain (`{:#}` with anyhow) to see both.

use std::fmt;
use std::io;

/// What went wrong, coarse enough for every edge (exit code, HTTP status, condition reason) to
/// map it in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The image is malformed, truncated or hostile.
    InvalidImage,
    /// A valid image uses a feature we do not read (encryption, unknown format, ...).
    Unsupported,
    /// The image asks for something we refuse on principle (backing file, external data file).
    Denied,
    /// A digest or checksum did not match.
    Checksum,
    /// The image exceeds a limit or the target's capacity.
    TooLarge,
    /// Reading or writing failed.
    Io,
}

/// The crate's error: kind + message + optional source.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// The image is malformed; `message` names the field and offset.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidImage, message)
    }

    /// A feature we do not support.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// Something refused by policy (backing files, external data files).
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Denied, message)
    }

    /// A limit or capacity was exceeded.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, message)
    }

    /// A checksum or digest mismatch.
    pub fn checksum(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Checksum, message)
    }

    /// An I/O failure during `what` (e.g. "reading qcow2 L2 table at offset 65536").
    ///
    /// An unexpected end of file while reading the image is reported as an invalid (truncated)
    /// image, not as an I/O error: qemu-img silently reads zeros there, we refuse.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        let what = what.into();
        if source.kind() == io::ErrorKind::UnexpectedEof {
            return Self::invalid(format!("image is truncated: end of file while {what}"));
        }
        Self { kind: ErrorKind::Io, message: what, source: Some(source) }
    }

    /// The stable kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the source.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}
