//! The upload client: sends an image file to an upload server, and drives the embedded API's
//! DataVolume / UploadTokenRequest flow around it (what `virtctl image-upload` does).
//!
//! The file is streamed (never read whole) with an explicit `Content-Length`, like virtctl.
//! A raw image with holes is sent as a qcow2 holding only its data
//! (`disk_formats::qcow2::encode`; the upload API takes qcow2, and the volume receives the same
//! bytes), unless [`ClientOptions::sparse`] is off or a checksum of the file is sent.
//! A dropped connection, a reset or a 503 (busy / not ready) is retried from the start with a
//! capped exponential back-off, up to [`ClientOptions::retries`] times; the server deletes
//! partial output itself, so a retry starts clean. Other statuses fail at once with the
//! server's message.
//!
//! ## Embedded flow
//! 1. `GET {server}/apis/cdi.kubevirt.io/v1beta1/namespaces/{ns}/datavolumes/{name}`; when
//!    missing, `POST` a DataVolume with `source.upload: {}` ([`UploadClient::ensure_datavolume`]).
//! 2. `POST {server}/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests`
//!    with `spec.pvcName` → `status.token` ([`UploadClient::request_token`]).
//! 3. `POST {server}/v1beta1/upload` with the token ([`UploadClient::upload_file`]).
//! 4. Poll the DataVolume until `status.phase` is `Succeeded` or `Failed`
//!    ([`UploadClient::wait_datavolume`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
pub use reqwest::Url;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use importer::Checksum;

/// Bytes read from the file per body chunk.
const READ_CHUNK_BYTES: usize = 256 << 10;

/// What a DataVolume holds (`spec.contentType`), which decides the upload route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContentType {
    /// A disk image (`kubevirt`, the default): `/v1beta1/upload`.
    #[default]
    Kubevirt,
    /// A tar extracted into a filesystem volume (`archive`): `/v1beta1/upload-archive`.
    Archive,
}

impl ContentType {
    /// The `spec.contentType` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Kubevirt => "kubevirt",
            ContentType::Archive => "archive",
        }
    }

    /// The upload route taking this content.
    pub fn upload_path(self) -> &'static str {
        match self {
            ContentType::Kubevirt => "/v1beta1/upload",
            ContentType::Archive => "/v1beta1/upload-archive",
        }
    }
}

impl std::str::FromStr for ContentType {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "kubevirt" => Ok(ContentType::Kubevirt),
            "archive" => Ok(ContentType::Archive),
            other => Err(format!("unknown content type {other:?}: expected kubevirt or archive")),
        }
    }
}

/// Longest back-off between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How the client connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// PEM CA bundle trusted in addition to the system roots (e.g. the server's
    /// `/v1beta1/ca.crt`).
    pub ca_cert: Option<PathBuf>,
    /// Do not verify the server's certificate.
    pub insecure: bool,
    /// Attempts after the first when the connection drops or the server answers 503.
    pub retries: u32,
    /// First back-off (doubled per attempt, capped at 10 s).
    pub backoff: Duration,
    /// Send a raw image with holes as a qcow2 of its data (see [`UploadClient::upload_file`]).
    /// Only for disk volumes: an archive volume needs its tar as it is.
    pub sparse: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { ca_cert: None, insecure: false, retries: 5, backoff: Duration::from_secs(1), sparse: true }
    }
}

/// What [`UploadClient::upload_file`] sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Body bytes of the successful attempt.
    pub bytes: u64,
    /// The file's size.
    pub file_size: u64,
    /// Whether the body was the file's data as a qcow2 (a raw image with holes).
    pub as_qcow2: bool,
}

/// Most data extents of a raw file sent as a qcow2 (each costs 16 bytes while planning); a
/// file more fragmented than that is sent as it is.
const MAX_SPARSE_EXTENTS: usize = 1 << 20;

/// A raw file is sent as a qcow2 of its data only when that saves at least this share of it
/// (1/16): the holes must outweigh the metadata and the clusters that data only partly fills.
const SPARSE_MIN_SAVING_DIVISOR: u64 = 16;

/// Progress of one upload: `(bytes sent in this attempt, file size)`; an attempt that starts
/// over reports from 0 again.
pub type ProgressFn = dyn Fn(u64, u64) + Send + Sync;

/// Told before each retry: `(attempt number, the failure, back-off before the attempt)`.
pub type RetryFn = dyn Fn(u32, &Error, Duration) + Send + Sync;

/// An upload client.
#[derive(Debug, Clone)]
pub struct UploadClient {
    http: reqwest::Client,
    opts: ClientOptions,
}

impl UploadClient {
    /// Builds the HTTP client (TLS trust per `opts`).
    ///
    /// # Errors
    /// [`Error::Config`] for an unreadable CA file or a TLS setup failure.
    pub fn new(opts: ClientOptions) -> Result<Self> {
        // The binary's one rustls provider (see importer::tls); idempotent.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("diskplane-upload/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .tls_version_min(reqwest::tls::Version::TLS_1_2);
        if let Some(path) = &opts.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| Error::Config(format!("reading the CA certificate {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::Config(format!("parsing the CA certificate {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(Error::Config(format!("no PEM certificate in {}", path.display())));
            }
            builder = builder.tls_certs_merge(certs);
        }
        if opts.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| Error::Config(format!("building the HTTP client: {e}")))?;
        Ok(Self { http, opts })
    }

    /// Uploads the file at `path` to `url` (an upload route, see [`upload_url`]) with `token`,
    /// retrying dropped connections and 503 answers. A raw file whose holes make up at least
    /// 1/16 of it is sent as a qcow2 holding its data only (with [`ClientOptions::sparse`] and
    /// no `checksum`, which is over the file as it is).
    ///
    /// # Errors
    /// [`Error::Status`] with the server's message, [`Error::Network`] once retries are spent,
    /// [`Error::Config`] when the file cannot be read.
    pub async fn upload_file(
        &self,
        url: &Url,
        token: &str,
        path: &Path,
        checksum: Option<&Checksum>,
        progress: Arc<ProgressFn>,
        on_retry: &RetryFn,
    ) -> Result<Sent> {
        let mut attempt = 0u32;
        loop {
            let result = self.upload_once(url, token, path, checksum, Arc::clone(&progress)).await;
            match result {
                Err(e) if e.is_retryable() && attempt < self.opts.retries => {
                    attempt += 1;
                    let backoff =
                        (self.opts.backoff.saturating_mul(1 << attempt.min(8)) / 2).min(MAX_BACKOFF);
                    on_retry(attempt, &e, backoff);
                    tokio::time::sleep(backoff).await;
                }
                other => return other,
            }
        }
    }

    async fn upload_once(
        &self,
        url: &Url,
        token: &str,
        path: &Path,
        checksum: Option<&Checksum>,
        progress: Arc<ProgressFn>,
    ) -> Result<Sent> {
        let sparse = self.opts.sparse && checksum.is_none();
        let owned_path = path.to_owned();
        let (file, file_size, plan) = tokio::task::spawn_blocking(move || open_image(&owned_path, sparse))
            .await
            .map_err(|e| Error::Internal(format!("planning the upload: {e}")))??;
        let (body, length, as_qcow2) = match plan {
            Some(encoder) => {
                let length = encoder.stream_len();
                progress(0, length);
                (reqwest::Body::wrap_stream(encoded_stream(encoder, file, progress)), length, true)
            }
            None => {
                progress(0, file_size);
                (reqwest::Body::wrap_stream(file_stream(file, file_size, progress)), file_size, false)
            }
        };
        let mut request = self
            .http
            .post(url.clone())
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(body);
        if let Some(sum) = checksum {
            request = request.header("X-Checksum", sum.to_string());
        }
        let response = request.send().await.map_err(|e| network("sending the image", e))?;
        check(response).await?;
        Ok(Sent { bytes: length, file_size, as_qcow2 })
    }

    /// Creates the DataVolume `ns/name` with an upload source unless it exists. Returns
    /// whether it was created.
    ///
    /// # Errors
    /// [`Error::Status`] / [`Error::Network`] from the API server.
    pub async fn ensure_datavolume(
        &self,
        server: &Url,
        namespace: &str,
        name: &str,
        size: Option<&str>,
        storage_class: Option<&str>,
        content: ContentType,
    ) -> Result<bool> {
        let collection =
            api_url(server, &format!("apis/cdi.kubevirt.io/v1beta1/namespaces/{namespace}/datavolumes"))?;
        let item = api_url(
            server,
            &format!("apis/cdi.kubevirt.io/v1beta1/namespaces/{namespace}/datavolumes/{name}"),
        )?;
        let existing =
            self.http.get(item).send().await.map_err(|e| network("looking up the DataVolume", e))?;
        if existing.status() != StatusCode::NOT_FOUND {
            check(existing).await?;
            return Ok(false);
        }
        let size = size.ok_or_else(|| {
            Error::Config(format!("DataVolume {namespace}/{name} does not exist: give --size to create it"))
        })?;
        let dv = datavolume_manifest(namespace, name, size, storage_class, content);
        let response = self
            .http
            .post(collection)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(dv.to_string())
            .send()
            .await
            .map_err(|e| network("creating the DataVolume", e))?;
        check(response).await?;
        Ok(true)
    }

    /// Asks the API server for an upload token for `ns/name`.
    ///
    /// # Errors
    /// [`Error::Status`] / [`Error::Network`]; [`Error::Internal`] when the answer has no token.
    pub async fn request_token(&self, server: &Url, namespace: &str, name: &str) -> Result<String> {
        let url = api_url(
            server,
            &format!("apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{namespace}/uploadtokenrequests"),
        )?;
        let request = json!({
            "apiVersion": "upload.cdi.kubevirt.io/v1beta1",
            "kind": "UploadTokenRequest",
            "metadata": { "name": "token-for-diskplane", "namespace": namespace },
            "spec": { "pvcName": name },
        });
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(request.to_string())
            .send()
            .await
            .map_err(|e| network("requesting an upload token", e))?;
        let text = check(response).await?;
        let object: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Internal(format!("the UploadTokenRequest answer is not JSON: {e}")))?;
        object["status"]["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Internal("the UploadTokenRequest answer has no status.token".into()))
    }

    /// Polls the DataVolume until its phase is `Succeeded` (Ok) or `Failed` (Err with its
    /// Ready condition's message), at most `timeout`.
    ///
    /// # Errors
    /// [`Error::Internal`] on `Failed` or timeout; [`Error::Status`] / [`Error::Network`].
    pub async fn wait_datavolume(
        &self,
        server: &Url,
        namespace: &str,
        name: &str,
        interval: Duration,
        timeout: Duration,
    ) -> Result<()> {
        let url = api_url(
            server,
            &format!("apis/cdi.kubevirt.io/v1beta1/namespaces/{namespace}/datavolumes/{name}"),
        )?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let response =
                self.http.get(url.clone()).send().await.map_err(|e| network("reading the DataVolume", e))?;
            let object: Value = serde_json::from_str(&check(response).await?)
                .map_err(|e| Error::Internal(format!("the DataVolume is not JSON: {e}")))?;
            match object["status"]["phase"].as_str() {
                Some("Succeeded") => return Ok(()),
                Some("Failed") => {
                    let message = object["status"]["conditions"]
                        .as_array()
                        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                        .and_then(|c| c["message"].as_str())
                        .unwrap_or("no message");
                    return Err(Error::Internal(format!("DataVolume {namespace}/{name} failed: {message}")));
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Internal(format!(
                    "DataVolume {namespace}/{name} did not succeed within {} s",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(interval).await;
        }
    }
}

/// A runtime for synchronous callers (the CLI): two worker threads, I/O and timers on.
///
/// # Errors
/// [`Error::Config`] when the runtime cannot start.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("upload-client")
        .enable_all()
        .build()
        .map_err(|e| Error::Config(format!("starting the I/O runtime: {e}")))
}

/// The upload route for a user-given URL: a bare server URL (no path) gets the route of
/// `content` (`/v1beta1/upload` or `/v1beta1/upload-archive`); a URL with a path is used as it is.
///
/// # Errors
/// [`Error::Config`] when `text` is not an http(s) URL.
pub fn upload_url(text: &str, content: ContentType) -> Result<Url> {
    let mut url = Url::parse(text).map_err(|e| Error::Config(format!("invalid upload URL {text:?}: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(Error::Config(format!("upload URL {text:?} is not http:// or https://")));
    }
    if url.path().is_empty() || url.path() == "/" {
        url.set_path(content.upload_path());
    }
    Ok(url)
}

/// A DataVolume with an upload source, as `virtctl image-upload` creates it (`spec.contentType`
/// only for an archive: `kubevirt` is the default).
pub fn datavolume_manifest(
    namespace: &str,
    name: &str,
    size: &str,
    storage_class: Option<&str>,
    content: ContentType,
) -> Value {
    let mut storage = json!({ "resources": { "requests": { "storage": size } } });
    if let Some(class) = storage_class {
        storage["storageClassName"] = json!(class);
    }
    let mut dv = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "source": { "upload": {} }, "storage": storage },
    });
    if content != ContentType::Kubevirt {
        dv["spec"]["contentType"] = json!(content.as_str());
    }
    dv
}

fn api_url(server: &Url, path: &str) -> Result<Url> {
    server.join(path).map_err(|e| Error::Config(format!("building an API URL from {server}: {e}")))
}

fn network(what: &str, e: reqwest::Error) -> Error {
    Error::Network { what: what.to_owned(), source: e.without_url() }
}

/// Ok with the body for 2xx; [`Error::Status`] with the server's message otherwise.
async fn check(response: reqwest::Response) -> Result<String> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok(text);
    }
    let message = text.trim();
    let message =
        if message.is_empty() { status.canonical_reason().unwrap_or("no message") } else { message };
    Err(Error::Status { status: status.as_u16(), message: message.to_owned() })
}

/// Opens the image to send: the file, its size, and with `sparse` the qcow2 encoder when it
/// goes as a qcow2 of its data ([`sparse_plan`]).
fn open_image(
    path: &Path,
    sparse: bool,
) -> Result<(std::fs::File, u64, Option<disk_formats::qcow2::encode::Encoder>)> {
    let file = std::fs::File::open(path).map_err(|e| file_error("opening", path, e))?;
    let size = file.metadata().map_err(|e| file_error("reading the size of", path, e))?.len();
    let plan = if sparse { sparse_plan(&file, size, path)? } else { None };
    Ok((file, size, plan))
}

fn file_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Config(format!("{what} {}: {e}", path.display()))
}

/// The qcow2 encoder for `file` (of `size` bytes) when sending its data only pays: a raw image
/// (by its first bytes: not a compressed stream, not another format) of whole 512-byte sectors
/// whose holes (as the file system reports them) make up at least 1/16 of it. `None` otherwise.
fn sparse_plan(
    file: &std::fs::File,
    size: u64,
    path: &Path,
) -> Result<Option<disk_formats::qcow2::encode::Encoder>> {
    use std::os::unix::fs::FileExt;
    if size == 0 || !size.is_multiple_of(512) {
        return Ok(None);
    }
    let io = |what: &str, e: std::io::Error| file_error(what, path, e);
    let mut head = vec![0u8; disk_formats::limits::PROBE_BYTES.min(size as usize)];
    file.read_exact_at(&mut head, 0).map_err(|e| io("reading", e))?;
    if !disk_formats::probe::probe(&head).is_raw() {
        return Ok(None);
    }
    let mut extents = Vec::new();
    let (mut at, mut data) = (0u64, 0u64);
    while let Some((start, len)) = storage::next_data(file, at).map_err(|e| io("mapping the data of", e))? {
        if extents.len() == MAX_SPARSE_EXTENTS {
            return Ok(None);
        }
        extents.push((start, len));
        data += len;
        at = start + len;
    }
    if size - data.min(size) < size / SPARSE_MIN_SAVING_DIVISOR {
        return Ok(None);
    }
    let encoder = disk_formats::qcow2::encode::Encoder::new(size, &extents)
        .map_err(|e| Error::Internal(format!("planning the qcow2 stream of {}: {e}", path.display())))?;
    Ok((encoder.stream_len() < size).then_some(encoder))
}

/// A request body produced by `produce` on a thread of its own, through a small channel
/// (8 chunks in flight). `produce` gets the sender: a failed send means the request is gone.
fn thread_body(
    produce: impl FnOnce(&BodySender) + Send + 'static,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    std::thread::spawn(move || produce(&tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

type BodySender = tokio::sync::mpsc::Sender<std::io::Result<Bytes>>;

/// The qcow2 stream of `encoder` over the raw `file` ([`thread_body`]); a read error ends the
/// body with it.
fn encoded_stream(
    encoder: disk_formats::qcow2::encode::Encoder,
    file: std::fs::File,
    progress: Arc<ProgressFn>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    thread_body(move |tx| {
        let total = encoder.stream_len();
        let mut sent = 0u64;
        let written = encoder.write(&file, &mut |chunk| {
            sent += chunk.len() as u64;
            progress(sent, total);
            tx.blocking_send(Ok(Bytes::from(chunk))).map_err(|_| std::io::Error::other("the upload stopped"))
        });
        if let Err(e) = written {
            // Nobody listens any more when the request itself failed: nothing to report then.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    })
}

/// The file's bytes ([`thread_body`]), read with positional reads into buffers of
/// [`READ_CHUNK_BYTES`] (below the allocator's mmap threshold, so they are reused); a read
/// error, or a file shorter than announced, ends the body with an error.
fn file_stream(
    file: std::fs::File,
    size: u64,
    progress: Arc<ProgressFn>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    use std::os::unix::fs::FileExt;
    thread_body(move |tx| {
        let mut sent = 0u64;
        while sent < size {
            let mut buf = vec![0u8; READ_CHUNK_BYTES.min(usize::try_from(size - sent).unwrap_or(usize::MAX))];
            let item = match file.read_at(&mut buf, sent) {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the file ended after {sent} of {size} bytes"),
                )),
                Ok(n) => {
                    buf.truncate(n);
                    sent += n as u64;
                    progress(sent, size);
                    Ok(Bytes::from(buf))
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_server_url_gets_the_upload_path() {
        let disk = ContentType::Kubevirt;
        assert_eq!(upload_url("https://h:8443", disk).unwrap().as_str(), "https://h:8443/v1beta1/upload");
        assert_eq!(
            upload_url("http://h/v1beta1/upload-async", disk).unwrap().path(),
            "/v1beta1/upload-async"
        );
        assert!(upload_url("ftp://h", disk).is_err());
        assert!(upload_url("not a url", disk).is_err());
        let archive = ContentType::Archive;
        assert_eq!(upload_url("http://h:1", archive).unwrap().path(), "/v1beta1/upload-archive");
        assert_eq!(
            upload_url("http://h/v1alpha1/upload-archive", archive).unwrap().path(),
            "/v1alpha1/upload-archive"
        );
    }

    #[test]
    fn the_datavolume_has_an_upload_source_and_the_size() {
        let dv = datavolume_manifest("ns", "disk", "10Gi", Some("fast"), ContentType::Kubevirt);
        assert_eq!(dv["spec"]["source"]["upload"], json!({}));
        assert!(dv["spec"].get("contentType").is_none());
        assert_eq!(dv["spec"]["storage"]["resources"]["requests"]["storage"], "10Gi");
        assert_eq!(dv["spec"]["storage"]["storageClassName"], "fast");
    }

    #[test]
    fn an_archive_datavolume_says_so_and_unknown_content_types_are_refused() {
        let dv = datavolume_manifest("ns", "tree", "1Gi", None, "archive".parse().unwrap());
        assert_eq!(dv["spec"]["contentType"], "archive");
        let err = "tarball".parse::<ContentType>().unwrap_err();
        assert!(err.contains("unknown content type \"tarball\""), "{err}");
    }
}
