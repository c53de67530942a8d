//! The kube driver's error type.

use disk_formats::ErrorKind;

/// What can go wrong while reconciling against the API server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An API call failed (network, 5xx, RBAC, conflict other than "already exists").
    #[error("{verb} {what}: {source}")]
    Api {
        verb: &'static str,
        what: String,
        #[source]
        source: ::kube::Error,
    },
    /// An object's JSON did not fit the API type (a CRD of another version?).
    #[error("converting an object: {0}")]
    Convert(#[source] serde_json::Error),
    /// The object lacks what every stored object has (name, namespace, uid).
    #[error("object without {0}")]
    MissingField(&'static str),
    /// No random token (upload token key, clone token) could be made.
    #[error("generating a random token: {0}")]
    TokenKey(#[source] std::io::Error),
    /// No CA or serving certificate could be made.
    #[error("certificates: {0}")]
    Certificate(#[from] super::certs::CertError),
    /// The kube client could not be built from the environment (no kubeconfig, no in-cluster
    /// service account).
    #[error("kube client: {0}")]
    Client(#[source] ::kube::Error),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The stable kind of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            // The API server is the driver's storage: failing to talk to it is an I/O error.
            Error::Api { .. } | Error::Client(_) | Error::TokenKey(_) | Error::Certificate(_) => {
                ErrorKind::Io
            }
            Error::Convert(_) | Error::MissingField(_) => ErrorKind::Unsupported,
        }
    }

    pub(crate) fn api(verb: &'static str, what: impl Into<String>) -> impl FnOnce(::kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Api { verb, what, source }
    }
}
