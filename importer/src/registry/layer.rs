//! One layer: the async pump from the registry into a bounded channel, and the blocking tar
//! walk that finds the disk under `disk/` and hands it to the converter.
//!
//! The pump ([`pump`]) reads the blob to its very end even when the consumer stopped early
//! (disk found, or the layer was refused): oci-client checks the blob digest only after the last
//! byte, and nothing is accepted before that check passed.

use std::io::{self, Read};
use std::path::{Component, Path};
use std::sync::Arc;

use bytes::BytesMut;
use disk_formats::convert::{ConvertOptions, ConvertStats, ScratchOptions, convert_sniffed, sniff};
use disk_formats::{Format, OpenOptions};
use futures_util::StreamExt;
use oci_client::client::SizedStream;
use storage::{CreateOptions, Volume};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::http::stream::{CHUNK_BYTES, Piece};
use crate::progress::Progress;

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer media type, or `None` for media types that are not tar
    /// layers (a foreign artifact, a non-distributable layer).
    pub(crate) fn of_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => {
                Some(Self::None)
            }
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// Sends the blob's bytes into `tx` in pieces of about [`CHUNK_BYTES`]; once the receiver is
/// gone, goes on reading (and discarding) to the end so the digest is checked. Sends
/// [`Piece::End`] only after the digest matched.
///
/// # Errors
/// The stream's error: a network failure, or the digest mismatch oci-client reports at the end
/// (as an `io::Error` wrapping its `DigestError`; see [`super::blob_error`]).
pub(crate) async fn pump(
    mut blob: SizedStream,
    tx: mpsc::Sender<Piece>,
    progress: Arc<Progress>,
) -> std::result::Result<(), io::Error> {
    let mut batch = BytesMut::new();
    let mut receiver_gone = false;
    while let Some(chunk) = blob.next().await {
        let chunk = chunk?;
        progress.add_downloaded(chunk.len() as u64);
        progress.add_done(chunk.len() as u64);
        if receiver_gone {
            continue;
        }
        batch.extend_from_slice(&chunk);
        if batch.len() >= CHUNK_BYTES && tx.send(Piece::Data(batch.split().freeze())).await.is_err() {
            receiver_gone = true;
        }
    }
    if receiver_gone || (!batch.is_empty() && tx.send(Piece::Data(batch.freeze())).await.is_err()) {
        return Ok(());
    }
    // Reached only when the stream ended without error, i.e. the digest matched.
    let _ = tx.send(Piece::End).await;
    Ok(())
}

/// Where the disk goes once found.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    pub(crate) path: &'a Path,
    pub(crate) scratch_dir: &'a Path,
    pub(crate) open: &'a OpenOptions,
    pub(crate) convert: &'a ConvertOptions,
    pub(crate) create: &'a CreateOptions,
}

/// What a layer held.
#[derive(Debug)]
pub(crate) enum Found {
    /// The disk entry, converted into the target.
    Disk { format: Format, wrappers: Vec<Format>, stats: ConvertStats },
    /// No regular file under `disk/`.
    Nothing,
}

/// Walks the layer's tar stream (decompressing as needed) and converts the first regular file
/// under `disk/` into the target. Stops reading at that entry: the caller's pump drains and
/// verifies the rest of the blob.
///
/// # Errors
/// [`disk_formats::ErrorKind::InvalidImage`] for a corrupt tar or compression stream, path
/// traversal (`..`, absolute names) and links under `disk/`; conversion and storage errors.
pub(crate) fn extract_disk(
    reader: impl Read + Send,
    compression: Compression,
    target: &Target<'_>,
) -> Result<Found> {
    let decoded: Box<dyn Read + Send + '_> = match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(reader)
                .map_err(|e| disk_formats::Error::io("starting the zstd decoder of a layer", e))?,
        ),
    };
    let mut archive = tar::Archive::new(decoded);
    let entries = archive.entries().map_err(|e| layer_read_error("reading the layer's tar stream", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| layer_read_error("reading the layer's tar stream", e))?;
        let raw_path = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_path).into_owned();
        let Some(relative) = disk_entry_name(&name)? else { continue };
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(invalid(format!(
                "layer entry {name} is a {} under disk/: links are refused",
                if kind.is_symlink() { "symbolic link" } else { "hard link" }
            )));
        }
        if !(kind.is_file() || kind.is_gnu_sparse() || kind == tar::EntryType::Continuous) {
            // Directories, whiteouts' parents, devices, fifos: not a disk.
            continue;
        }
        if relative.starts_with(".wh.") {
            continue;
        }
        // A tar entry borrows its (non-`Sync`) archive, so it cannot cross threads: the
        // converter runs beside this thread and receives the entry's bytes through a pipe.
        let (format, wrappers, stats) = convert_entry(entry, target)?;
        return Ok(Found::Disk { format, wrappers, stats });
    }
    Ok(Found::Nothing)
}

/// Pieces of the disk entry in flight to the converter thread (4 × 1 MiB).
const PIPE_PIECES: usize = 4;
const PIPE_PIECE_BYTES: usize = 1 << 20;

/// Streams `entry` into a converter thread that sniffs it and writes the target.
fn convert_entry(mut entry: impl Read, target: &Target<'_>) -> Result<(Format, Vec<Format>, ConvertStats)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(PIPE_PIECES);
    // Read pieces travel back to be filled again: a fixed set of buffers instead of a fresh
    // 1 MiB allocation per piece, which glibc's per-thread arenas would keep around.
    let (give_back, returned) = std::sync::mpsc::sync_channel::<Vec<u8>>(PIPE_PIECES + 2);
    std::thread::scope(|scope| {
        let converter = scope.spawn(move || {
            convert_piped(PipeReader { rx, give_back, piece: Vec::new(), pos: 0, ended: false }, target)
        });
        let mut read_error = None;
        loop {
            let mut piece = returned.try_recv().unwrap_or_default();
            piece.resize(PIPE_PIECE_BYTES, 0);
            match read_full(&mut entry, &mut piece) {
                Ok(n) => {
                    piece.truncate(n);
                    let end = n == 0;
                    // Sending fails only when the converter already stopped: its error says why.
                    if tx.send(Ok(piece)).is_err() || end {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                    read_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let converted = converter.join().map_err(|_| Error::config("the converter thread panicked"))?;
        match (converted, read_error) {
            (_, Some(e)) => Err(layer_read_error("reading the disk entry of the layer", e)),
            (result, None) => result,
        }
    })
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The converter's end of the pipe. An empty piece marks the end; a closed pipe without it is
/// an error, so a failed reader can never look like a complete disk.
struct PipeReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    give_back: std::sync::mpsc::SyncSender<Vec<u8>>,
    piece: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.piece.len() {
                let n = buf.len().min(self.piece.len() - self.pos);
                buf[..n].copy_from_slice(&self.piece[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(piece)) if piece.is_empty() => self.ended = true,
                Ok(Ok(piece)) => {
                    let used = std::mem::replace(&mut self.piece, piece);
                    self.pos = 0;
                    // Best effort: when the reader side is gone or full the buffer is dropped.
                    let _ = self.give_back.try_send(used);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("the layer reader stopped before the disk's end")),
            }
        }
    }
}

/// Sniffs the piped disk and converts it into a new volume.
fn convert_piped(pipe: PipeReader, target: &Target<'_>) -> Result<(Format, Vec<Format>, ConvertStats)> {
    let sniffed = sniff(Box::new(pipe))?;
    let (format, wrappers) = (sniffed.format, sniffed.wrappers.clone());
    disk_formats::convert::ensure_convertible(format)?;
    let volume = Volume::create(target.path, None, target.open.max_virtual_size, target.create)?;
    let stats = convert_sniffed(
        sniffed,
        &volume,
        &ScratchOptions { dir: target.scratch_dir },
        target.open,
        target.convert,
    )?;
    if !volume.is_block_device() {
        volume.set_len(stats.virtual_size)?;
    }
    volume.finish()?;
    Ok((format, wrappers, stats))
}

/// For a tar entry name: `Some(rest)` when it lies under `disk/` (after any leading `./`),
/// `None` when it lies elsewhere.
///
/// # Errors
/// Names with `..` components or absolute names, anywhere in the layer: a layer that tries to
/// escape its root is hostile, whatever it targets.
fn disk_entry_name(name: &str) -> Result<Option<String>> {
    let path = Path::new(name);
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(invalid(format!("layer entry {name:?} escapes the image root with '..'")));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(format!("layer entry {name:?} has an absolute path")));
            }
        }
    }
    match parts.split_first() {
        Some((first, rest)) if first == "disk" && !rest.is_empty() => Ok(Some(rest.join("/"))),
        _ => Ok(None),
    }
}

fn invalid(message: String) -> Error {
    Error::Format(disk_formats::Error::invalid(message))
}

/// A read error inside the layer: the download's own failure when the channel says so (the
/// caller prefers the pump's error anyway), otherwise a corrupt layer.
fn layer_read_error(what: &str, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
            invalid(format!("{what}: {e}"))
        }
        _ => Error::Format(disk_formats::Error::io(what.to_owned(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_under_disk_are_found_with_or_without_dot_slash() {
        assert_eq!(disk_entry_name("disk/disk.img").ok().flatten().as_deref(), Some("disk.img"));
        assert_eq!(disk_entry_name("./disk/x.qcow2").ok().flatten().as_deref(), Some("x.qcow2"));
        assert!(matches!(disk_entry_name("disk/"), Ok(None)));
        assert!(matches!(disk_entry_name("etc/passwd"), Ok(None)));
        assert!(matches!(disk_entry_name("diskette/x"), Ok(None)));
    }

    #[test]
    fn traversal_and_absolute_names_are_refused() {
        for name in ["disk/../../etc/passwd", "../disk/disk.img", "/disk/disk.img", "a/../../b"] {
            let err = disk_entry_name(name).expect_err(name);
            assert_eq!(err.kind(), disk_formats::ErrorKind::InvalidImage, "{name}");
        }
    }

    #[test]
    fn layer_media_types_map_to_their_compression() {
        use Compression::*;
        let of = Compression::of_media_type;
        assert_eq!(of("application/vnd.oci.image.layer.v1.tar+gzip"), Some(Gzip));
        assert_eq!(of("application/vnd.docker.image.rootfs.diff.tar.gzip"), Some(Gzip));
        assert_eq!(of("application/vnd.oci.image.layer.v1.tar+zstd"), Some(Zstd));
        assert_eq!(of("application/vnd.oci.image.layer.v1.tar"), Some(None));
        assert_eq!(of("application/vnd.oci.image.config.v1+json"), Option::None);
    }

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().expect("tar")
    }

    fn target_in(dir: &Path) -> (std::path::PathBuf, OpenOptions, ConvertOptions, CreateOptions) {
        (dir.join("out.img"), OpenOptions::default(), ConvertOptions::default(), CreateOptions::default())
    }

    #[test]
    fn a_symlink_named_like_the_disk_is_refused() {
        let layer = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "disk/disk.img", "/etc/shadow").expect("append");
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, open, convert, create) = target_in(dir.path());
        let target =
            Target { path: &path, scratch_dir: dir.path(), open: &open, convert: &convert, create: &create };
        let err = extract_disk(&layer[..], Compression::None, &target).expect_err("refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn the_first_regular_file_under_disk_is_converted() {
        let disk = vec![7u8; 8192];
        let layer = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_mode(0o644);
            b.append_data(&mut h, "etc/hostname", &b"vm\n"[..]).expect("append");
            let mut h = tar::Header::new_gnu();
            h.set_size(disk.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, "disk/disk.img", &disk[..]).expect("append");
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, open, convert, create) = target_in(dir.path());
        let target =
            Target { path: &path, scratch_dir: dir.path(), open: &open, convert: &convert, create: &create };
        let found = extract_disk(&layer[..], Compression::None, &target).expect("converted");
        assert!(matches!(found, Found::Disk { format: Format::Raw, .. }), "{found:?}");
        assert_eq!(std::fs::read(&path).expect("read"), disk);
    }

    #[test]
    fn a_layer_without_disk_reports_nothing() {
        let layer = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_mode(0o644);
            b.append_data(&mut h, "etc/hostname", &b"vm\n"[..]).expect("append");
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, open, convert, create) = target_in(dir.path());
        let target =
            Target { path: &path, scratch_dir: dir.path(), open: &open, convert: &convert, create: &create };
        assert!(matches!(extract_disk(&layer[..], Compression::None, &target), Ok(Found::Nothing)));
    }
}
