//! The local driver's error type. The HTTP API maps it to Kubernetes Status objects in one
//! place (`server::status`).

/// Shorthand for results of the local driver.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the embedded mode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object does not exist (404).
    #[error("{resource}.cdi.kubevirt.io \"{name}\" not found")]
    NotFound { resource: String, name: String },
    /// An object of that name exists (409).
    #[error("{resource}.cdi.kubevirt.io \"{name}\" already exists")]
    AlreadyExists { resource: String, name: String },
    /// The state store failed.
    #[error("state store: {what}")]
    Store {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored object is not valid JSON (or not of its kind).
    #[error("state store holds a malformed object")]
    Json(#[source] serde_json::Error),
    /// A file or directory of the data dir.
    #[error("{what} {path}")]
    Io {
        what: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn store(what: impl Into<String>, source: impl Into<redb::Error>) -> Self {
        Error::Store { what: what.into(), source: Box::new(source.into()) }
    }

    pub(crate) fn json(source: serde_json::Error) -> Self {
        Error::Json(source)
    }

    pub(crate) fn io(what: impl Into<String>, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io { what: what.into(), path: path.to_owned(), source }
    }
}
