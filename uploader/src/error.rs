//! The crate's one error type, and its mapping onto HTTP statuses (the server's only edge).

use axum::http::StatusCode;
use disk_formats::ErrorKind;

use crate::token::TokenError;

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong receiving or sending an upload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The token was missing or refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The request itself is wrong (no `file` part, bad checksum syntax, ...).
    #[error("{0}")]
    BadRequest(String),
    /// The backend refused to start the upload.
    #[error(transparent)]
    Refused(#[from] crate::backend::Refusal),
    /// The body ended before its announced end: the client went away or the connection broke.
    #[error("upload body ended early after {received} bytes: {reason}")]
    Truncated {
        /// Bytes received before the end.
        received: u64,
        /// What the HTTP layer said.
        reason: String,
    },
    /// The end-to-end checksum did not match.
    #[error("checksum mismatch: expected {expected}, got {actual}")]
    Checksum {
        /// As sent by the client.
        expected: String,
        /// Computed over the bytes received.
        actual: String,
    },
    /// The image: hostile, unsupported, too large for the volume, or a write failure.
    #[error(transparent)]
    Format(#[from] disk_formats::Error),
    /// The volume could not be created or flushed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// An archive upload could not be extracted: not a tar, an entry leaving the target,
    /// content beyond the volume's size, or a write failure.
    #[error(transparent)]
    Archive(#[from] importer::Error),
    /// The client side: the server answered with an error status.
    #[error("the upload server answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The server's message (its body).
        message: String,
    },
    /// The client side: transport failure (connection refused/reset, TLS).
    #[error("{what}: {source}")]
    Network {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// Local setup: files, TLS configuration, listener.
    #[error("{0}")]
    Config(String),
    /// Anything else that is our fault.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The kind, for exit codes and conditions.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Format(e) => e.kind(),
            Error::Storage(e) => e.kind(),
            Error::Archive(e) => e.kind(),
            Error::Checksum { .. } => ErrorKind::Checksum,
            Error::Token(_) => ErrorKind::Denied,
            Error::Status { status, .. } if *status == 401 => ErrorKind::Denied,
            _ => ErrorKind::Io,
        }
    }

    /// The HTTP status the server answers with (CDI's codes: 400 bad request or image, 401 bad
    /// token, 404 no such volume, 409 already uploaded, 503 busy or not ready, 500 otherwise).
    pub fn status(&self) -> StatusCode {
        use crate::backend::Refusal;
        match self {
            Error::Token(_) => StatusCode::UNAUTHORIZED,
            Error::BadRequest(_) | Error::Truncated { .. } | Error::Checksum { .. } => {
                StatusCode::BAD_REQUEST
            }
            Error::Refused(Refusal::NotFound(_)) => StatusCode::NOT_FOUND,
            Error::Refused(Refusal::AlreadyDone(_)) => StatusCode::CONFLICT,
            Error::Refused(Refusal::Busy(_) | Refusal::NotReady(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Refused(Refusal::Unauthorized(_)) => StatusCode::UNAUTHORIZED,
            Error::Format(e) if e.kind() != ErrorKind::Io => StatusCode::BAD_REQUEST,
            Error::Storage(e) if e.kind() == ErrorKind::TooLarge => StatusCode::BAD_REQUEST,
            Error::Archive(e) if e.kind() != ErrorKind::Io => StatusCode::BAD_REQUEST,
            // No room left on the volume's filesystem: CDI answers 400 too.
            Error::Format(_) | Error::Storage(_) | Error::Archive(_) if out_of_space(self) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether a later attempt of the same upload may succeed (client side).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Status { status, .. } => *status == 503 || *status == 502 || *status == 504,
            Error::Network { source, .. } => {
                !is_tls_error(source) && (source.is_connect() || source.is_request() || source.is_body())
            }
            _ => false,
        }
    }
}

impl Error {
    /// The message and its sources on one line (`message: cause: cause`).
    pub fn one_line(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.ends_with(&text) {
                message = format!("{message}: {text}");
            }
            source = cause.source();
        }
        message
    }
}

/// Whether an ENOSPC or EDQUOT is in the chain.
fn out_of_space(err: &(dyn std::error::Error + 'static)) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT))
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Whether a rustls error (untrusted certificate, wrong name) is in the chain: retrying cannot
/// help. `io::Error` hides what it wraps from `source()`, so look inside each one.
fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<rustls::Error>() {
            return true;
        }
        cause = match e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// A server error reduced to what the client gets: status and one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The message.
    pub message: String,
}

impl From<&Error> for ErrorReply {
    fn from(e: &Error) -> Self {
        Self { status: e.status(), message: e.one_line() }
    }
}

impl axum::response::IntoResponse for ErrorReply {
    fn into_response(self) -> axum::response::Response {
        // CDI answers with a plain-text message; so do we, on one line.
        (self.status, format!("{}\n", self.message)).into_response()
    }
}

impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        ErrorReply::from(&self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Refusal;

    #[test]
    fn statuses_follow_cdi() {
        assert_eq!(Error::Token(TokenError::Missing).status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Error::Refused(Refusal::Busy("x".into())).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(Error::Refused(Refusal::AlreadyDone("x".into())).status(), StatusCode::CONFLICT);
        assert_eq!(Error::Refused(Refusal::NotFound("x".into())).status(), StatusCode::NOT_FOUND);
        assert_eq!(
            Error::Format(disk_formats::Error::denied("backing file")).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(Error::Format(disk_formats::Error::too_large("big")).status(), StatusCode::BAD_REQUEST);
        let io = disk_formats::Error::io("writing", std::io::Error::other("disk on fire"));
        assert_eq!(Error::Format(io).status(), StatusCode::INTERNAL_SERVER_ERROR);
        let full = disk_formats::Error::io("writing", std::io::Error::from_raw_os_error(28));
        assert_eq!(Error::Format(full).status(), StatusCode::BAD_REQUEST);
        let sum = Error::Checksum { expected: "a".into(), actual: "b".into() };
        assert_eq!(sum.status(), StatusCode::BAD_REQUEST);
        let escaping = disk_formats::Error::denied("archive entry \"../x\" leaves the target directory");
        assert_eq!(Error::Archive(importer::Error::Format(escaping)).status(), StatusCode::BAD_REQUEST);
        let io = disk_formats::Error::io("writing", std::io::Error::other("disk on fire"));
        assert_eq!(Error::Archive(importer::Error::Format(io)).status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
