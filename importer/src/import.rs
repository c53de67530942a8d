//! The import: pick the path from the first response and the first bytes, then move the bytes.
//!
//! | first bytes | server | checksum | path |
//! | --- | --- | --- | --- |
//! | raw / ISO, or gz/xz/zst of them | any | any | [`Method::Stream`]: decompress and write as the bytes arrive, zero runs become holes |
//! | qcow2 | serves ranges, size known | none | [`Method::RangeRequests`]: read the qcow2 in place through Range requests (block cache + readahead), write only allocated extents |
//! | qcow2 | ignores ranges | any | [`Method::Scratch`]: stream into a bounded scratch file, convert from there |
//! | qcow2 | any | given | [`Method::Scratch`], so every byte is hashed once, in order, with no second pass |
//! | gz/xz/zst of a qcow2 | any | any | [`Method::Scratch`] |
//!
//! The whole image is never held in memory: at most the channel (≈ 4 MiB), the converter's
//! windows and the range cache (48 MiB by default).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use disk_formats::convert::{ConvertOptions, ScratchOptions, convert_image, convert_sniffed, sniff};
use disk_formats::{Format, OpenOptions, ReadAt, limits, open_as, probe::probe};
use reqwest::Url;
use storage::{CreateOptions, Volume};
use tokio::sync::mpsc;

use crate::archive::{ArchiveLimits, ArchiveStats};
use crate::checksum::Checksum;
use crate::error::{Error, Result};
use crate::http::range::HttpReadAt;
use crate::http::stream::{self, Body, ChannelReader, Outcome};
use crate::http::{Http, HttpOptions};
use crate::progress::Progress;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// An `http://` or `https://` URL.
    Http(Url),
}

impl FromStr for Source {
    type Err = Error;

    /// Parses `http://…` / `https://…`. `docker://` is recognised and refused here: registry
    /// sources are imported by [`crate::registry`].
    fn from_str(text: &str) -> Result<Self> {
        let scheme = text.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("http" | "https") => {
                let url =
                    Url::parse(text).map_err(|e| Error::config_with(format!("invalid URL {text:?}"), e))?;
                Ok(Source::Http(url))
            }
            Some("docker" | "oci") => {
                Err(Error::Source(format!("{text} is a registry source: import it with importer::registry")))
            }
            Some(other) => {
                Err(Error::Source(format!("unsupported source scheme {other}:// (use http:// or https://)")))
            }
            None => Err(Error::Source(format!("source {text:?} is not a URL (use http:// or https://)"))),
        }
    }
}

/// How an import runs.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Reaching the server.
    pub http: HttpOptions,
    /// Expected checksum of the object as served.
    pub checksum: Option<Checksum>,
    /// Limits for opening the image (`max_virtual_size`).
    pub open: OpenOptions,
    /// Zero detection and reader threads (`progress` is replaced by the importer's).
    pub convert: ConvertOptions,
    /// How the target volume is created.
    pub create: CreateOptions,
    /// Directory for scratch files (deleted when done).
    pub scratch_dir: PathBuf,
    /// Live counters; share the `Arc` to watch them.
    pub progress: Arc<Progress>,
}

/// The path an import took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Method {
    /// Streamed (and decompressed) straight into the target.
    Stream,
    /// qcow2 read in place through HTTP Range requests.
    RangeRequests,
    /// Unpacked to a scratch file, then converted.
    Scratch,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportStats {
    /// The path taken.
    pub method: Method,
    /// The disk format found.
    pub format: Format,
    /// Compression wrappers removed, outermost first.
    pub wrappers: Vec<Format>,
    /// Guest size written (the raw size of the target).
    pub virtual_size: u64,
    /// Bytes written as data (the rest are holes).
    pub data_bytes: u64,
    /// Bytes received from the network.
    pub downloaded: u64,
    /// Retries made.
    pub retries: u32,
    /// Range requests made for random access.
    pub range_requests: u64,
}

/// Imports `source` into a new volume at `target` (a file, created or replaced, or a block
/// device). Runs its own tokio runtime; call from synchronous code.
///
/// # Errors
/// See [`import`].
pub fn import_blocking(source: &Source, target: &Path, opts: &ImportOptions) -> Result<ImportStats> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("importer-net")
        .enable_all()
        .build()
        .map_err(|e| Error::config_with("starting the I/O runtime", e))?;
    runtime.block_on(import(source, target, opts))
}

/// Imports `source` into a new volume at `target`.
///
/// # Errors
/// Transfer failures after the retry budget ([`Error::RetriesExhausted`]), HTTP statuses
/// ([`Error::Status`]), TLS failures, checksum mismatch ([`Error::Checksum`]), images over the
/// limit ([`Error::TooLarge`]) and hostile or unsupported images ([`Error::Format`]). On error
/// the target holds partial data: the caller deletes it (see the CLI's temporary-name scheme).
pub async fn import(source: &Source, target: &Path, opts: &ImportOptions) -> Result<ImportStats> {
    let Source::Http(url) = source;
    let progress = Arc::clone(&opts.progress);
    let http = Arc::new(Http::new(url.clone(), &opts.http)?);
    let mut body = Body::open(Arc::clone(&http), Arc::clone(&progress)).await?;
    let head_chunks = body.read_head(limits::PROBE_BYTES).await?;
    let head: Vec<u8> =
        head_chunks.iter().flat_map(|c| c.iter().copied()).take(limits::PROBE_BYTES).collect();
    let format = probe(&head);
    let info = body.info().clone();
    check_announced_size(format, &head, info.total, &opts.open)?;

    let random_access = format == Format::Qcow2 && info.ranged && opts.checksum.is_none();
    let mut stats = match (random_access, info.total) {
        (true, Some(size)) => {
            drop(body);
            let reader = HttpReadAt::new(
                http,
                info.final_url.clone(),
                size,
                info.validator.clone(),
                tokio::runtime::Handle::current(),
                Arc::clone(&progress),
            );
            convert_random_access(reader, target, opts).await?
        }
        _ => convert_streamed(body, head_chunks, target, opts).await?,
    };
    let snapshot = progress.snapshot();
    stats.downloaded = snapshot.downloaded;
    stats.retries = snapshot.retries;
    stats.range_requests = snapshot.range_requests;
    Ok(stats)
}

/// [`import_archive`] on its own tokio runtime; call from synchronous code.
///
/// # Errors
/// See [`import_archive`].
pub fn import_archive_blocking(
    source: &Source,
    target: &Path,
    opts: &ImportOptions,
    limits: &ArchiveLimits,
) -> Result<ArchiveStats> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("importer-net")
        .enable_all()
        .build()
        .map_err(|e| Error::config_with("starting the I/O runtime", e))?;
    runtime.block_on(import_archive(source, target, opts, limits))
}

/// Imports `source` as `contentType: archive`: a tar, optionally gzip/xz/zstd-compressed,
/// streamed and extracted into the directory `target` (absent or empty). The checksum, when
/// given, is verified before the target is filled; on any error the target is unchanged.
///
/// # Errors
/// As [`import`], plus the archive's own refusals (see [`crate::archive`]): not a tar,
/// entries leaving the target, device nodes, content beyond `limits`.
pub async fn import_archive(
    source: &Source,
    target: &Path,
    opts: &ImportOptions,
    limits: &ArchiveLimits,
) -> Result<ArchiveStats> {
    let Source::Http(url) = source;
    let http = Arc::new(Http::new(url.clone(), &opts.http)?);
    let mut body = Body::open(http, Arc::clone(&opts.progress)).await?;
    let head = body.read_head(limits::PROBE_BYTES).await?;
    let (tx, rx) = mpsc::channel(stream::CHANNEL_CHUNKS);
    let producer =
        tokio::spawn(stream::produce(body, head, opts.checksum.clone(), tx, Arc::clone(&opts.progress)));
    let target = target.to_path_buf();
    let limits = *limits;
    let extracted = tokio::task::spawn_blocking(move || {
        crate::archive::extract_from_channel(&ChannelReader::new(rx), &target, &limits)
    })
    .await
    .map_err(|e| Error::config_with("the extraction thread failed", e))?;
    let produced = producer.await.map_err(|e| Error::config_with("the download task failed", e))?;
    match (extracted, produced) {
        (_, Err(download)) => Err(download),
        (Err(extract), _) => Err(extract),
        (Ok(stats), Ok(Outcome::Complete)) => Ok(stats),
        (Ok(_), Ok(Outcome::ReceiverGone)) => {
            Err(Error::config("the extraction finished before the download did (internal error)"))
        }
    }
}

/// Fails before downloading when the announced size already exceeds the limit: a raw object's
/// size is its virtual size; a qcow2 header states its virtual size at byte 24.
fn check_announced_size(format: Format, head: &[u8], total: Option<u64>, open: &OpenOptions) -> Result<()> {
    let virtual_size = match format {
        Format::Raw | Format::Iso => total,
        Format::Qcow2 => head.get(24..32).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes),
        _ => None,
    };
    match virtual_size {
        Some(size) if size > open.max_virtual_size => Err(Error::TooLarge(format!(
            "virtual size {size} bytes exceeds the limit of {} bytes",
            open.max_virtual_size
        ))),
        _ => Ok(()),
    }
}

/// qcow2 read in place by Range requests.
async fn convert_random_access(
    reader: HttpReadAt,
    target: &Path,
    opts: &ImportOptions,
) -> Result<ImportStats> {
    let target = target.to_path_buf();
    let open = opts.open.clone();
    let create = opts.create.clone();
    let progress = Arc::clone(&opts.progress);
    let mut convert = opts.convert.clone();
    let source = reader.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<ImportStats> {
        let image = open_as(Arc::new(source) as Arc<dyn ReadAt>, Format::Qcow2, &open)?;
        let virtual_size = image.virtual_size();
        progress.set_total(virtual_size);
        let counter = Arc::clone(&progress);
        convert.progress = Some(Arc::new(move |n| counter.add_done(n)));
        let volume = Volume::create(&target, Some(virtual_size), open.max_virtual_size, &create)?;
        let converted = convert_image(&*image, &volume, &convert)?;
        volume.finish()?;
        Ok(ImportStats {
            method: Method::RangeRequests,
            format: Format::Qcow2,
            wrappers: Vec::new(),
            virtual_size: converted.virtual_size,
            data_bytes: converted.data_bytes,
            downloaded: 0,
            retries: 0,
            range_requests: 0,
        })
    })
    .await
    .map_err(|e| Error::config_with("the conversion thread failed", e))?;
    // A fetch failure surfaces in the converter as an I/O error: report the fetch's own.
    match (result, reader.take_failure()) {
        (Err(_), Some(failure)) => Err(failure),
        (result, _) => result,
    }
}

/// Everything else: the body streams through a bounded channel into the converter.
async fn convert_streamed(
    body: Body,
    head: Vec<bytes::Bytes>,
    target: &Path,
    opts: &ImportOptions,
) -> Result<ImportStats> {
    let (tx, rx) = mpsc::channel(stream::CHANNEL_CHUNKS);
    let producer =
        tokio::spawn(stream::produce(body, head, opts.checksum.clone(), tx, Arc::clone(&opts.progress)));
    let target = target.to_path_buf();
    let open = opts.open.clone();
    let create = opts.create.clone();
    let convert = opts.convert.clone();
    let scratch_dir = opts.scratch_dir.clone();
    let converted = tokio::task::spawn_blocking(move || -> Result<ImportStats> {
        let mut reader = ChannelReader::new(rx);
        let sniffed = sniff(Box::new(reader.clone()))?;
        let (format, wrappers) = (sniffed.format, sniffed.wrappers.clone());
        disk_formats::convert::ensure_convertible(format)?;
        if format == Format::Qcow2 {
            precheck_qcow2_header(&sniffed.head, &open)?;
        }
        let volume = Volume::create(&target, None, open.max_virtual_size, &create)?;
        let stats =
            convert_sniffed(sniffed, &volume, &ScratchOptions { dir: &scratch_dir }, &open, &convert)?;
        // Read what the converter left (trailing bytes after a compressed stream's end) so
        // every byte is hashed and the end marker, sent only after the checksum matched, seen.
        reader.drain().map_err(|e| disk_formats::Error::io("reading the end of the download", e))?;
        if !volume.is_block_device() {
            volume.set_len(stats.virtual_size)?;
        }
        volume.finish()?;
        Ok(ImportStats {
            method: if format.is_raw() { Method::Stream } else { Method::Scratch },
            format,
            wrappers,
            virtual_size: stats.virtual_size,
            data_bytes: stats.data_bytes,
            downloaded: 0,
            retries: 0,
            range_requests: 0,
        })
    })
    .await
    .map_err(|e| Error::config_with("the conversion thread failed", e))?;
    let produced = producer.await.map_err(|e| Error::config_with("the download task failed", e))?;
    match (converted, produced) {
        // The download's own failure (network, checksum) explains the converter's.
        (_, Err(download)) => Err(download),
        (Err(convert), _) => Err(convert),
        (Ok(stats), Ok(Outcome::Complete)) => Ok(stats),
        (Ok(_), Ok(Outcome::ReceiverGone)) => {
            Err(Error::config("the converter finished before the download did (internal error)"))
        }
    }
}

/// Refuses a hostile or unsupported qcow2 from its first bytes, before the whole image is
/// unpacked to scratch: the header (backing file, encryption, size) lies in the head, and
/// opening the head alone reports those refusals reliably. Any other error (typically the
/// tables lying beyond the head) is left to the real open after unpacking.
fn precheck_qcow2_header(head: &[u8], open: &OpenOptions) -> Result<()> {
    use disk_formats::ErrorKind;
    match open_as(Arc::new(head.to_vec()), Format::Qcow2, open) {
        Err(e) if matches!(e.kind(), ErrorKind::Denied | ErrorKind::Unsupported | ErrorKind::TooLarge) => {
            Err(e.into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_import_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let opts = ImportOptions {
            http: HttpOptions::default(),
            checksum: None,
            open: OpenOptions::default(),
            convert: ConvertOptions::default(),
            create: CreateOptions::default(),
            scratch_dir: PathBuf::from("/tmp"),
            progress: Arc::default(),
        };
        let source: Source = "http://127.0.0.1:9/x".parse().expect("url");
        let future = import(&source, Path::new("/nonexistent/out"), &opts);
        assert_send(&future);
    }

    #[test]
    fn registry_sources_are_not_http_sources() {
        let err = "docker://127.0.0.1:9/containerdisks/fedora:40".parse::<Source>().expect_err("refused");
        assert!(err.to_string().contains("is a registry source"), "{err}");
        assert_eq!(err.kind(), disk_formats::ErrorKind::Unsupported);
    }

    #[test]
    fn http_and_https_urls_are_sources() {
        assert!(matches!("https://example.org/disk.img".parse::<Source>(), Ok(Source::Http(_))));
        assert!("ftp://example.org/disk.img".parse::<Source>().is_err());
        assert!("/tmp/disk.img".parse::<Source>().is_err());
    }

    #[test]
    fn announced_sizes_over_the_limit_fail_before_downloading() {
        let open = OpenOptions { max_virtual_size: 1 << 20 };
        assert!(check_announced_size(Format::Raw, &[], Some(2 << 20), &open).is_err());
        assert!(check_announced_size(Format::Raw, &[], Some(1 << 20), &open).is_ok());
        let mut qcow2 = vec![0u8; 32];
        qcow2[24..32].copy_from_slice(&(4u64 << 20).to_be_bytes());
        assert!(check_announced_size(Format::Qcow2, &qcow2, Some(4096), &open).is_err());
        assert!(check_announced_size(Format::Gzip, &qcow2, Some(8 << 20), &open).is_ok());
    }
}
