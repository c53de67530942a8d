//! # uploader
//!
//! Bytes pushed to us: the CDI-compatible upload server (axum), its signed upload tokens, and
//! the upload client used by `diskplane upload`.
//!
//! ## Main types
//! - [`token::TokenKey`] issues and verifies [`token::Claims`] (namespace, volume, expiry):
//!   HMAC-SHA256, constant-time verification, 5-minute default lifetime.
//! - [`server::router`] builds the axum `Router` with CDI's routes (`/v1beta1/upload`,
//!   `-async`, `-form`, `-form-async`, `-archive`, the `/v1alpha1/` twins, `/healthz`, and
//!   `/v1beta1/ca.crt`) over a [`backend::UploadBackend`]; [`server::serve`] runs it, over TLS
//!   with [`tls::server_config`].
//! - [`backend::UploadBackend`] is what the embedded server implements over its state store;
//!   [`backend::SingleVolumeBackend`] is one volume, one upload (the worker role).
//! - [`proxy::router`]: the cluster's upload proxy (`diskplane upload-proxy`): verifies a
//!   token with the DataVolume's derived key ([`token::TokenKey::derive`]) and streams the
//!   upload to the DataVolume's upload Pod.
//! - [`client`] sends an image (streaming, with progress and retries; a raw image with holes
//!   as a qcow2 of its data, `disk_formats::qcow2::encode`) and drives the embedded
//!   API's DataVolume / UploadTokenRequest flow.
//! - [`Error`]: one enum; [`Error::kind`] maps to `disk_formats::ErrorKind`, [`Error::status`]
//!   to CDI's HTTP statuses.
//!
//! ## How bytes flow
//! The request body streams through a bounded channel (≈ 4 MiB) into the shared converter of
//! `disk-formats`: gzip/xz/zstd are removed as a stream, raw content is written straight into
//! the volume with zero runs left as holes, a qcow2 is unpacked to a scratch file bounded by
//! its header (after its header was checked, so backing files are refused before anything is
//! stored; an uncompressed one is written there piece by piece as it arrives, one write per
//! run of non-zero blocks) and converted from there: while it is still arriving when the raw
//! body's `Content-Length` announced its size (reads of bytes not yet written wait), after the
//! last byte otherwise. Into a file volume, the plain data clusters of such a qcow2 whose
//! tables came first (qemu-img's layout) skip the scratch file and go straight to the volume
//! (`disk_formats::qcow2::stream`); only the rest is converted from scratch. An archive
//! volume's body is unwrapped and extracted by `importer::archive` into a staging directory,
//! renamed into place at the end.
//! A file volume is written under a temporary name and renamed into place only after it was
//! flushed and every check passed (checksum included).
//!
//! ## Caveats
//! - Archive volumes ([`backend::Content::Archive`]) are extracted with `importer::archive`
//!   (this crate depends on `importer` for it and for the shared channel reader
//!   `importer::pipe`); an archive is refused as a whole (400, nothing kept) at its first bad
//!   entry.
//! - The volume holds the image's virtual size; it is not grown to the volume size as CDI does.
//! - Without TLS the listener speaks plain HTTP; tokens then travel in clear text.
//! - No client certificates: CDI's per-PVC upload server only accepts its upload proxy (mTLS);
//!   ours is reached directly and relies on the token alone.
//! - Tokens are HMAC-signed with a key shared by issuer and server, not CDI's RSA-signed JWTs:
//!   tokens are opaque to clients, so clients do not notice.

pub mod backend;
pub mod client;
mod error;
mod growing;
mod job;
mod pipe;
pub mod proxy;
mod scratch;
pub mod server;
pub mod tls;
pub mod token;

pub use error::{Error, ErrorReply, Result};
pub use importer::Checksum;
pub use job::Mode;
