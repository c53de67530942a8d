//! The crate's one error type. Every variant names the URL or the option it is about; each edge
//! (exit code, HTTP status, DataVolume condition) maps it through [`Error::kind`] and
//! [`Error::is_retryable`].

use disk_formats::ErrorKind;

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong while importing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The source is not something we import from (scheme, registry sources not built yet).
    #[error("{0}")]
    Source(String),
    /// An option is unusable: a malformed checksum or header, an unreadable CA bundle or
    /// password file.
    #[error("{message}")]
    Config {
        /// What is wrong, naming the option or file.
        message: String,
        /// The underlying failure, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The server answered with a status we cannot use (`HTTP 404 Not Found for URL`).
    #[error("HTTP {status} for {url}")]
    Status {
        /// The URL asked for (credentials never appear in it: they travel in headers).
        url: String,
        /// The status the server answered with.
        status: reqwest::StatusCode,
    },
    /// Connecting, TLS, or reading the body failed.
    #[error("{what} {url}")]
    Network {
        /// What we were doing ("connecting to", "reading the body of", ...).
        what: String,
        /// The URL.
        url: String,
        /// Whether trying again may help (a dropped connection: yes; a TLS certificate the
        /// CA bundle does not vouch for: no).
        retryable: bool,
        /// The client error.
        #[source]
        source: Option<BoxError>,
    },
    /// Retryable failures went on past the retry budget; `source` is the last one.
    #[error("giving up after {retries} retries at byte {offset}")]
    RetriesExhausted {
        /// How many retries were made.
        retries: u32,
        /// The byte offset of the stream where the transfer stalled.
        offset: u64,
        /// The last failure.
        #[source]
        source: Box<Error>,
    },
    /// The object changed between two requests (ETag / Last-Modified / size differ), so a
    /// resumed or ranged read would mix two versions.
    #[error("{url} changed during the import: {what}")]
    Changed {
        /// The URL.
        url: String,
        /// What differs.
        what: String,
    },
    /// The server broke the HTTP contract (wrong `Content-Range`, more bytes than announced).
    #[error("{url}: {message}")]
    Protocol {
        /// The URL.
        url: String,
        /// What the server did.
        message: String,
    },
    /// The bytes as served do not hash to the expected checksum.
    #[error("checksum mismatch: expected {expected}, got {actual}")]
    Checksum {
        /// `algo:hex` as given.
        expected: String,
        /// `algo:hex` as computed.
        actual: String,
    },
    /// The object is larger than a limit allows (checked before downloading when the size is
    /// announced).
    #[error("{0}")]
    TooLarge(String),
    /// A `docker://` source failed: image not found, authentication, TLS trust, a blob digest
    /// mismatch ([`ErrorKind::Checksum`]), no disk under `disk/` (see `registry`).
    #[error("{message}")]
    Registry {
        /// What went wrong, naming the image, blob or registry.
        message: String,
        /// The kind the edges map.
        kind: ErrorKind,
        /// Whether a later attempt may help.
        retryable: bool,
        /// The client error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// Reading or converting the image failed (its message names offset and field).
    #[error(transparent)]
    Format(#[from] disk_formats::Error),
    /// Creating or writing the target volume failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
}

impl Error {
    /// The stable kind every edge maps. Network failures of any sort are [`ErrorKind::Io`];
    /// use [`Error::is_retryable`] to tell transient ones apart.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Source(_) => ErrorKind::Unsupported,
            Error::Checksum { .. } => ErrorKind::Checksum,
            Error::TooLarge(_) => ErrorKind::TooLarge,
            Error::Format(e) => e.kind(),
            Error::Storage(e) => e.kind(),
            Error::Registry { kind, .. } => *kind,
            Error::Config { .. }
            | Error::Status { .. }
            | Error::Network { .. }
            | Error::RetriesExhausted { .. }
            | Error::Changed { .. }
            | Error::Protocol { .. } => ErrorKind::Io,
        }
    }

    /// Whether the failure is transient, so that a later attempt (a restarted worker) may
    /// succeed: dropped connections, timeouts, 5xx, 408 and 429, and a retry budget used up on
    /// those. Permanent: 4xx, TLS trust failures, checksum, size and format errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Network { retryable, .. } => *retryable,
            Error::Status { status, .. } => status_is_retryable(*status),
            Error::RetriesExhausted { .. } => true,
            Error::Registry { retryable, .. } => *retryable,
            _ => false,
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config { message: message.into(), source: None }
    }

    pub(crate) fn config_with(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Config { message: message.into(), source: Some(source.into()) }
    }
}

/// Statuses worth retrying: the server is overloaded, restarting or timed out.
pub(crate) fn status_is_retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_message_names_code_reason_and_url() {
        let err = Error::Status { url: "http://h/x.img".into(), status: reqwest::StatusCode::NOT_FOUND };
        assert_eq!(err.to_string(), "HTTP 404 Not Found for http://h/x.img");
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(!err.is_retryable());
    }

    #[test]
    fn server_errors_are_retryable_and_client_errors_are_not() {
        let status = |code| Error::Status {
            url: String::new(),
            status: reqwest::StatusCode::from_u16(code).unwrap_or_default(),
        };
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(!status(403).is_retryable());
    }

    #[test]
    fn checksum_mismatch_has_the_checksum_kind() {
        let err = Error::Checksum { expected: "sha256:00".into(), actual: "sha256:11".into() };
        assert_eq!(err.kind(), ErrorKind::Checksum);
        assert_eq!(err.to_string(), "checksum mismatch: expected sha256:00, got sha256:11");
    }
}
