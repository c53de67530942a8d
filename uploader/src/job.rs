//! One upload: body → channel → sniff → convert into the volume → flush → rename into place
//! (or, for an archive volume: body → channel → unwrap → extract into the directory).
//!
//! The network half ([`crate::pipe::produce`]) runs on the async runtime; the converter runs on
//! a blocking thread and uses the shared data path of `disk-formats`: compression wrappers are
//! removed as a stream, raw content streams straight into the volume (zero runs become holes),
//! a qcow2 is unpacked into a bounded scratch file (its header is checked first, so a hostile
//! image is refused before it is stored) and converted from there; an uncompressed qcow2 body
//! goes to the scratch file piece by piece ([`crate::scratch`]) and, when the body's length was
//! announced, is converted while it is still arriving ([`crate::growing`]).
//!
//! The job runs in its own task: a client that goes away cannot cancel it half way, and the
//! backend always hears how it ended. On any failure the partial output is deleted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use disk_formats::convert::{ConvertOptions, ScratchOptions, convert_image, convert_sniffed, sniff};
use disk_formats::{ErrorKind, Format, OpenOptions, open_as};
use storage::{CreateOptions, Volume, WriteCache};
use tokio::sync::{mpsc, oneshot};

use importer::ArchiveLimits;

use crate::backend::{Content, UploadBackend, UploadStats, UploadTarget};
use crate::error::{Error, ErrorReply, Result};
use crate::pipe::{self, CHANNEL_PIECES, ChannelReader, Chunks, Outcome, Produce};
use crate::token::Claims;
use crate::{growing, scratch};

/// When the client gets its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// After the volume is written, flushed and verified (`/upload`, `/upload-form`).
    Sync,
    /// Once the body was received (and the checksum matched); processing continues
    /// (`/upload-async`, `/upload-form-async`).
    Async,
}

/// One begun upload: reports its end to the backend exactly once, also when dropped.
pub(crate) struct Lease {
    backend: Arc<dyn UploadBackend>,
    claims: Claims,
    finished: bool,
}

impl Lease {
    pub(crate) fn new(backend: Arc<dyn UploadBackend>, claims: Claims) -> Self {
        Self { backend, claims, finished: false }
    }

    pub(crate) fn finish(mut self, result: &Result<UploadStats>) {
        self.finished = true;
        self.backend.finish(&self.claims, result);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.finished {
            self.backend.finish(&self.claims, &Err(Error::Internal("the upload was abandoned".into())));
        }
    }
}

/// Settings of the job.
pub(crate) struct JobOptions {
    pub(crate) target: UploadTarget,
    pub(crate) checksum: Option<importer::Checksum>,
    pub(crate) mode: Mode,
    pub(crate) idle_timeout: Duration,
    /// The request's `Content-Length`, for progress.
    pub(crate) content_length: Option<u64>,
    /// A disk image or an archive.
    pub(crate) content: Content,
}

/// Runs the upload of `body`; `reply` gets the answer for the client (when depends on the
/// mode). Returns the final outcome, already reported to the backend.
pub(crate) async fn run<C: Chunks>(
    mut body: C,
    lease: Lease,
    opts: JobOptions,
    reply: oneshot::Sender<Result<(), ErrorReply>>,
) -> Result<UploadStats, ()> {
    let (tx, rx) = mpsc::channel(CHANNEL_PIECES);
    let reader = ChannelReader::new(rx);
    let target = opts.target.clone();
    let content = opts.content;
    // Only a raw body's `Content-Length` is the length of what the converter reads.
    let body_length = if C::WHOLE_BODY { opts.content_length } else { None };
    let converter = tokio::task::spawn_blocking(move || write_target(reader, &target, content, body_length));

    let backend = Arc::clone(&lease.backend);
    let claims = lease.claims.clone();
    let expected = opts.content_length;
    let progress = move |n| backend.progress(&claims, n, expected);
    let produce_opts =
        Produce { checksum: opts.checksum, idle_timeout: opts.idle_timeout, progress: &progress };
    let produced = pipe::produce(&mut body, &tx, &produce_opts).await;
    drop(tx);
    if matches!(produced, Ok((Outcome::ReceiverGone, _))) {
        // The converter refused the image: read (a bounded amount of) the rest so the client
        // is still listening when the answer comes.
        pipe::drain(&mut body, pipe::DRAIN_LIMIT_BYTES, opts.idle_timeout).await;
    }
    let mut reply = Some(reply);
    if opts.mode == Mode::Async
        && let Ok((Outcome::Complete, _)) = &produced
        && let Some(reply) = reply.take()
    {
        let _ = reply.send(Ok(()));
    }
    let converted = match converter.await {
        Ok(result) => result,
        Err(e) => Err(Error::Internal(format!("the conversion thread failed: {e}"))),
    };
    let result = match (produced, converted) {
        // The body's own failure (dropped connection, checksum) explains the converter's.
        (Err(body), _) => Err(body),
        (Ok(_), Err(convert)) => Err(convert),
        (Ok((Outcome::Complete, received)), Ok(stats)) => {
            let stats = UploadStats { received, ..stats };
            lease.backend.commit(&lease.claims, &stats).map(|()| stats)
        }
        (Ok((Outcome::ReceiverGone, _)), Ok(_)) => {
            Err(Error::Internal("the converter finished before the body did".into()))
        }
    };
    lease.finish(&result);
    if let Some(reply) = reply.take() {
        let _ = reply.send(result.as_ref().map(drop).map_err(ErrorReply::from));
    }
    result.map_err(drop)
}

/// The blocking half: writes the stream into the volume (or extracts it into the directory)
/// and puts it in place. `body_length` is the stream's announced length, if known.
fn write_target(
    mut reader: ChannelReader,
    target: &UploadTarget,
    content: Content,
    body_length: Option<u64>,
) -> Result<UploadStats> {
    let result = match content {
        Content::Disk => write_volume(&mut reader, target, body_length),
        Content::Archive => write_archive(&reader, target),
    };
    if result.is_err() {
        // Let the producer see that nobody reads any more (it then drains and answers).
        reader.close();
    }
    result
}

/// Extracts the archive into the target directory, at most the volume's size of content.
fn write_archive(reader: &ChannelReader, target: &UploadTarget) -> Result<UploadStats> {
    let limits = ArchiveLimits { max_bytes: target.max_size, ..ArchiveLimits::default() };
    let stats = importer::archive::extract_from_channel(reader, &target.path, &limits)?;
    Ok(UploadStats {
        format: Format::Raw,
        wrappers: Vec::new(),
        virtual_size: stats.bytes,
        data_bytes: stats.bytes,
        received: 0,
        archive: Some(stats),
    })
}

fn write_volume(
    reader: &mut ChannelReader,
    target: &UploadTarget,
    body_length: Option<u64>,
) -> Result<UploadStats> {
    let out = Output::prepare(&target.path)?;
    let sniffed = sniff(Box::new(reader.clone()))?;
    let (format, wrappers) = (sniffed.format, sniffed.wrappers.clone());
    let open = OpenOptions { max_virtual_size: target.max_size };
    if sniffed.head.is_empty() {
        return Err(disk_formats::Error::invalid("the upload is empty").into());
    }
    disk_formats::convert::ensure_convertible(format)?;
    if format == Format::Qcow2 {
        precheck_qcow2_header(&sniffed.head, &open)?;
    }
    // A plain qcow2 body: its data clusters are written from the receive buffers as they
    // arrive, and buffered writes with early, bounded writeback keep the device's queue full
    // meanwhile (1 GiB of data: 0.55-0.57 s against 0.69-0.75 s with `O_DIRECT` writes, each of
    // which waits for the device). A raw or compressed stream keeps `O_DIRECT`: there the
    // copy into the page cache takes CPU from receiving (or decompressing), and a 2 GiB raw body
    // was no faster buffered (1.01 s against 0.96 s).
    let plain_qcow2 = format == Format::Qcow2 && wrappers.is_empty();
    let write_cache = if plain_qcow2 { WriteCache::Bounded } else { WriteCache::Direct };
    let create = CreateOptions { write_cache, ..target.create.clone() };
    let volume = Volume::create(&out.write_path, None, target.max_size, &create)?;
    let stats = if plain_qcow2 {
        // The sniffer read exactly the head from `reader` (no wrapper buffers anything): the
        // pieces that follow go straight to the scratch file.
        let head = sniffed.head;
        let bound = scratch::bound(&head, &open);
        if let Some(size) = body_length {
            // Converted while it arrives: done shortly after the last byte.
            growing::convert_while_receiving(&head, reader, &target.scratch_dir, size, bound, &open, &volume)?
        } else {
            let file = scratch::write(&head, reader, &target.scratch_dir, bound)?;
            let image = open_as(Arc::new(file), Format::Qcow2, &open)?;
            convert_image(&*image, &volume, &ConvertOptions::default())?
        }
    } else {
        let scratch = ScratchOptions { dir: &target.scratch_dir };
        convert_sniffed(sniffed, &volume, &scratch, &open, &ConvertOptions::default())?
    };
    // What the converter left (bytes after a compressed stream's end) and the end marker,
    // which the producer sends only after the whole body arrived and the checksum matched.
    reader.drain().map_err(|e| disk_formats::Error::io("reading the end of the upload", e))?;
    if !volume.is_block_device() {
        volume.set_len(stats.virtual_size)?;
    }
    volume.finish()?;
    out.commit()?;
    Ok(UploadStats {
        format,
        wrappers,
        virtual_size: stats.virtual_size,
        data_bytes: stats.data_bytes,
        received: 0,
        archive: None,
    })
}

/// Refuses a hostile or unsupported qcow2 from its first bytes, before it is unpacked to
/// scratch: backing files, external data files, encryption and the virtual size are in the
/// header. Other open errors (tables beyond the head) wait for the real open after unpacking.
fn precheck_qcow2_header(head: &[u8], open: &OpenOptions) -> Result<()> {
    match open_as(Arc::new(head.to_vec()), Format::Qcow2, open) {
        Err(e) if matches!(e.kind(), ErrorKind::Denied | ErrorKind::Unsupported | ErrorKind::TooLarge) => {
            Err(e.into())
        }
        _ => Ok(()),
    }
}

/// The volume being written: block devices in place; files under a temporary name in the same
/// directory, renamed over the target (and the directory flushed) only when complete, deleted
/// otherwise. (The same scheme as the CLI's `Output`.)
struct Output {
    final_path: PathBuf,
    write_path: PathBuf,
    in_place: bool,
    committed: bool,
}

impl Output {
    fn prepare(path: &Path) -> Result<Self> {
        if storage::is_block_device(path) {
            return Ok(Self {
                final_path: path.into(),
                write_path: path.into(),
                in_place: true,
                committed: false,
            });
        }
        let name = path
            .file_name()
            .ok_or_else(|| Error::Config(format!("upload target {} has no file name", path.display())))?;
        let mut partial = std::ffi::OsString::from(".");
        partial.push(name);
        partial.push(format!(".diskplane-upload-{}", std::process::id()));
        Ok(Self {
            final_path: path.into(),
            write_path: path.with_file_name(partial),
            in_place: false,
            committed: false,
        })
    }

    fn commit(mut self) -> Result<()> {
        if !self.in_place {
            let io = |what: &str, e| Error::Storage(storage_io(&self.final_path, what, e));
            std::fs::rename(&self.write_path, &self.final_path).map_err(|e| io("renaming into place", e))?;
            let dir = match self.final_path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            std::fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("flushing its directory", e))?;
        }
        self.committed = true;
        Ok(())
    }
}

fn storage_io(path: &Path, what: &str, e: std::io::Error) -> storage::Error {
    storage::Error::Io { path: path.into(), op: what.into(), source: e }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.committed && !self.in_place {
            let _ = std::fs::remove_file(&self.write_path);
        }
    }
}
