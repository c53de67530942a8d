//! # importer
//!
//! Bytes from the world onto volumes: HTTP(S) sources, streamed with resume or read in place
//! through Range requests, and OCI registry containerDisks (`docker://`, in [`registry`]).
//!
//! ## Main types
//! - [`Source`]: an HTTP(S) source; `docker://` sources go to [`registry::import_registry`].
//! - [`ImportOptions`]: TLS, credentials, headers, retries ([`HttpOptions`], [`RetryPolicy`]),
//!   [`Checksum`], limits, target creation, scratch directory, and the shared [`Progress`].
//! - [`import`] / [`import_blocking`]: one entry point; returns [`ImportStats`] saying which
//!   [`Method`] was used.
//! - [`pipe::ChannelReader`]: the blocking end of the bounded channel between a network task
//!   and the converter (also used by the `uploader` crate).
//! - [`Error`]: one enum; [`Error::kind`] maps it to `disk_formats::ErrorKind` for exit codes
//!   and conditions, [`Error::is_retryable`] says whether a later attempt may help.
//!
//! ## How bytes flow
//! The first request asks for `Range: bytes=0-`: a 206 proves the server serves ranges, a 200
//! means it does not, and either way the download has started. The first 64 KiB decide the
//! path (the table is in the `import` module): raw and compressed-raw payloads stream
//! through a bounded channel into the converter, uncompressed qcow2 is read in place by Range
//! requests (bounded block cache, parallel readahead), anything else goes through a bounded
//! scratch file. The checksum is computed over the bytes as served, inline; with a checksum
//! a qcow2 takes the sequential (scratch) path so every byte is hashed exactly once, in order.
//!
//! ## Security
//! Credentials are sent as basic auth on every request to the source host and never logged
//! (`Debug` redacts them and header values); reqwest drops them on redirects to another host.
//! `insecure` disables certificate verification entirely. Images are opened by
//! `disk-formats`, which refuses backing files and external data files.
//!
//! ## Caveats
//! Random access assumes the object does not change while it is read: every range response is
//! checked against the first response's ETag, Last-Modified and size.

pub mod archive;
mod checksum;
mod error;
mod http;
mod import;
pub mod pipe;
mod progress;
pub mod registry;
mod retry;
pub mod tls;

pub use archive::{ArchiveLimits, ArchiveStats};
pub use checksum::{Algorithm, Checksum, Hasher};
pub use error::{BoxError, Error, Result};
pub use http::{HttpOptions, MAX_REDIRECTS, RangeOptions};
pub use import::{
    ImportOptions, ImportStats, Method, Source, import, import_archive, import_archive_blocking,
    import_blocking,
};
pub use progress::{Progress, Snapshot};
pub use retry::RetryPolicy;
