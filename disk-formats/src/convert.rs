//! Conversion to raw: an [`Image`] (random access) or a raw byte stream into a [`WriteAt`]
//! target, writing only data and leaving zero runs as holes.
//!
//! ## Design
//! The guest address space is walked in windows of [`CONVERT_WINDOW_BYTES`]. For each window the
//! producer asks the image for its segments, reads the data segments into a buffer (splitting
//! the work across `threads` workers so compressed clusters inflate in parallel), and hands the
//! buffer to a writer thread. The writer cuts every data segment into `sparse_size` blocks,
//! writes the non-zero runs with large positional writes and turns zero runs into holes (or
//! write-zeroes on targets that do not read back zeros). Reading window *n + 1* overlaps
//! writing window *n*; at most three buffers exist, so memory is bounded whatever the image
//! size.
//!
//! With `sparse_size == 0` (no zero detection, like `qemu-img convert -S 0`), runs of plain data
//! clusters are copied inside the kernel (`copy_file_range`) when source and target allow it.
//!
//! With zero detection, plain data clusters are read into the window through the page cache
//! (the image file is opened with `POSIX_FADV_SEQUENTIAL`, so read-ahead keeps the device busy
//! while a window is scanned), and the writer copies the non-zero runs of every long segment of
//! plain clusters with `copy_file_range` from the image file, whose pages that read has just
//! cached, instead of writing them from the window. The window is used to find the zero blocks
//! only; the data reaches the target's page cache with one in-kernel copy and is written back
//! in the background (`start_writeback` per window). Measured on the 3 GiB OS image (2.3 GiB of
//! plain data, cold cache, durable), this beats both earlier designs: `O_DIRECT` reads into
//! the window plus `O_DIRECT` writes (a direct read has no read-ahead, so the device idled
//! between requests), and writing the window through the page cache (three times the system
//! time of `copy_file_range` on that machine). Where the target cannot copy from the file (a
//! block device, another file system on an old kernel) the runs are written from the window.
//!
//! Window buffers are 4 KiB-aligned ([`direct`]), so a target such as `storage::Volume` can
//! write them with `O_DIRECT` (compressed clusters, and plain data where no in-kernel copy is
//! possible), without a copy through the page cache.
//!
//! ## Caveats
//! Plain data is read through the page cache, so converting a large image fills the cache with
//! it (as `qemu-img convert` does); the kernel reclaims those clean pages first.

pub mod direct;

use std::io::{self, Cursor, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::image::{Image, Segment, SegmentKind};
use crate::io::WriteAt;
use crate::limits::{CONVERT_WINDOW_BYTES, DEFAULT_SPARSE_SIZE, PROBE_BYTES};
use crate::probe::{Format, probe};
use crate::{Error, OpenOptions, Result, compress};
use direct::AlignedBuf;

/// Largest piece of a window one worker reads at a time (pieces are aligned to it): small enough that two workers share
/// a window of compressed clusters evenly, large enough for efficient reads.
const READ_PIECE_BYTES: u64 = 1 << 20;

/// Largest piece of plain data one worker reads at a time: plain data costs no CPU to split
/// evenly, and read-ahead works on large sequential reads.
const DATA_PIECE_BYTES: u64 = 4 << 20;

/// Shortest segment of plain clusters whose non-zero runs are copied in-kernel rather than
/// written from the window: one system call per run pays off only for long runs (images of
/// small clusters scattered in the file are written from the window in coalesced writes).
const COPY_MIN_BYTES: u64 = 64 << 10;

/// Most compression wrappers nested inside each other that we unwrap (`.xz` of a `.gz` ...).
const MAX_WRAPPER_DEPTH: usize = 3;

/// Progress callback: called with the number of guest bytes just completed.
pub type ProgressFn = dyn Fn(u64) + Send + Sync;

/// How to convert.
#[derive(Clone)]
pub struct ConvertOptions {
    /// Runs of zeros of at least this many bytes (aligned to it in guest space) become holes;
    /// 0 disables zero detection and lets plain data be copied in-kernel.
    pub sparse_size: usize,
    /// Worker threads reading and decompressing (at least 1).
    pub threads: usize,
    /// Called as guest bytes complete.
    pub progress: Option<Arc<ProgressFn>>,
}

impl std::fmt::Debug for ConvertOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvertOptions")
            .field("sparse_size", &self.sparse_size)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl Default for ConvertOptions {
    fn default() -> Self {
        let threads = thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
        Self { sparse_size: DEFAULT_SPARSE_SIZE, threads, progress: None }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Guest bytes covered (the raw size of the output).
    pub virtual_size: u64,
    /// Bytes written as data (including in-kernel copies).
    pub data_bytes: u64,
}

/// Converts `image` to raw in `target`.
///
/// # Errors
/// [`crate::ErrorKind::TooLarge`] before anything is written when the virtual size exceeds the
/// target's capacity; any reader error (hostile or truncated image) or write error otherwise.
/// On error the target holds partial data and must not be marked ready.
pub fn convert_image(image: &dyn Image, target: &dyn WriteAt, opts: &ConvertOptions) -> Result<ConvertStats> {
    let size = image.virtual_size();
    let capacity = target.capacity();
    if size > capacity {
        return Err(Error::too_large(format!(
            "image virtual size {size} bytes is larger than the target's capacity of {capacity} bytes"
        )));
    }
    let source_file = image.data_source().as_file();
    if let Some(file) = source_file {
        // Plain data is read through the page cache (see the module docs): a larger
        // read-ahead window keeps the device busy while a window is scanned and written.
        let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Sequential);
    }
    // Without zero detection plain data is copied in-kernel by the producer; with it, the
    // writer copies the non-zero runs in-kernel after scanning them.
    let (in_kernel, copy_src) = if opts.sparse_size == 0 { (source_file, None) } else { (None, source_file) };
    let window = CONVERT_WINDOW_BYTES as u64;
    // Pieces are aligned to whole clusters so that no compressed cluster is inflated twice.
    let piece = READ_PIECE_BYTES.max(image.info().cluster_size.unwrap_or(0));
    let data_bytes = AtomicU64::new(0);

    pipeline(target, opts, copy_src, &data_bytes, |tx, buffers| {
        let mut offset = 0;
        while offset < size {
            let end = offset.saturating_add(window).min(size);
            let mut segments = map_window(image, offset, end)?;
            if let Some(src) = in_kernel {
                copy_in_kernel(src, target, &mut segments, &data_bytes)?;
            }
            let mut buf = buffers.take();
            let len = usize::try_from(end - offset).map_err(|_| Error::too_large("window too large"))?;
            fill_window(image, &segments, &mut buf[..len], offset, piece, opts.threads)?;
            if tx.send(Batch { offset, len, buf, segments }).is_err() {
                break; // the writer failed; its error is returned by `pipeline`
            }
            offset = end;
        }
        Ok(())
    })?;
    Ok(ConvertStats { virtual_size: size, data_bytes: data_bytes.into_inner() })
}

/// Streams raw bytes from `reader` into `target` from offset 0, turning zero runs into holes.
/// Returns the raw disk's size: the bytes the stream held, rounded up to a whole 512-byte sector
/// as qemu-img does (the target must be sized to it; the padding reads as zeros).
///
/// # Errors
/// [`crate::ErrorKind::TooLarge`] as soon as the stream passes the target's capacity;
/// [`crate::ErrorKind::InvalidImage`] for corrupt or truncated compressed input.
pub fn convert_stream(
    reader: &mut dyn Read,
    target: &dyn WriteAt,
    opts: &ConvertOptions,
) -> Result<ConvertStats> {
    let capacity = target.capacity();
    let data_bytes = AtomicU64::new(0);
    let mut total = 0u64;
    pipeline(target, opts, None, &data_bytes, |tx, buffers| {
        loop {
            let mut buf = buffers.take();
            let len = read_full(reader, &mut buf).map_err(stream_error)?;
            if len == 0 {
                return Ok(());
            }
            let end = total + len as u64;
            if end > capacity {
                return Err(Error::too_large(format!(
                    "image is larger than the target's capacity of {capacity} bytes"
                )));
            }
            let segments = vec![Segment { offset: total, len: len as u64, kind: SegmentKind::Encoded }];
            if tx.send(Batch { offset: total, len, buf, segments }).is_err() {
                return Ok(());
            }
            total = end;
        }
    })?;
    // Like a raw file, a raw stream is a whole number of 512-byte sectors (zero padded).
    let virtual_size = crate::raw::round_up_to_sector(total);
    if virtual_size > capacity {
        return Err(Error::too_large(format!(
            "image is larger than the target's capacity of {capacity} bytes"
        )));
    }
    if virtual_size > total && !target.unwritten_reads_zero() {
        let pad = vec![0u8; (virtual_size - total) as usize];
        target.write_all_at(&pad, total).map_err(|e| Error::io("writing the last sector's padding", e))?;
    }
    Ok(ConvertStats { virtual_size, data_bytes: data_bytes.into_inner() })
}

/// Refuses, before anything is downloaded or unpacked, content that no reader here converts
/// (LUKS, QED, qcow v1, ...), naming the format.
///
/// # Errors
/// [`crate::ErrorKind::Unsupported`] for such formats.
pub fn ensure_convertible(format: Format) -> Result<()> {
    if format.is_readable() {
        return Ok(());
    }
    Err(Error::unsupported(format!("image format {format} is not supported")))
}

/// A byte stream with its compression wrappers removed and its format recognised.
pub struct Sniffed<'a> {
    /// Wrappers removed, outermost first.
    pub wrappers: Vec<Format>,
    /// The format of the unwrapped content.
    pub format: Format,
    /// The first bytes of the unwrapped content (up to [`PROBE_BYTES`]).
    pub head: Vec<u8>,
    /// The whole unwrapped content, starting at byte 0 (the head is replayed).
    pub reader: Box<dyn Read + Send + 'a>,
}

impl std::fmt::Debug for Sniffed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sniffed").field("wrappers", &self.wrappers).field("format", &self.format).finish()
    }
}

/// Recognises what `reader` holds, removing compression wrappers by magic.
pub fn sniff<'a>(reader: Box<dyn Read + Send + 'a>) -> Result<Sniffed<'a>> {
    let mut reader = reader;
    let mut wrappers = Vec::new();
    loop {
        let mut head = vec![0u8; PROBE_BYTES];
        let n = read_full(&mut reader, &mut head).map_err(stream_error)?;
        head.truncate(n);
        let format = probe(&head);
        let replay: Box<dyn Read + Send + 'a> = Box::new(Cursor::new(head.clone()).chain(reader));
        if !format.is_compression() {
            return Ok(Sniffed { wrappers, format, head, reader: replay });
        }
        if wrappers.len() == MAX_WRAPPER_DEPTH {
            return Err(Error::unsupported(format!(
                "more than {MAX_WRAPPER_DEPTH} nested compression wrappers"
            )));
        }
        wrappers.push(format);
        reader = compress::decoder(format, replay)?;
    }
}

/// Where a non-raw stream is unpacked before random-access conversion.
#[derive(Debug, Clone)]
pub struct ScratchOptions<'p> {
    /// Directory for the scratch file (deleted when done).
    pub dir: &'p Path,
}

/// Converts a sniffed stream into `target`: raw content streams straight in; other formats are
/// unpacked to a scratch file (bounded by the image's own header) and converted from there.
/// The returned [`ConvertStats::virtual_size`] is the raw size, for sizing a file target.
pub fn convert_sniffed(
    sniffed: Sniffed<'_>,
    target: &dyn WriteAt,
    scratch: &ScratchOptions<'_>,
    open: &OpenOptions,
    opts: &ConvertOptions,
) -> Result<ConvertStats> {
    let Sniffed { format, head, mut reader, .. } = sniffed;
    if format.is_raw() {
        return convert_stream(&mut reader, target, opts);
    }
    let file = unpack_to_scratch(format, &head, &mut reader, scratch, open)?;
    let image = crate::open_as(Arc::new(file), format, open)?;
    convert_image(&*image, target, opts)
}

/// Writes the unwrapped content of a non-raw stream (`format`, first bytes `head`) to an
/// anonymous sparse scratch file in `scratch.dir`, bounded by what the image's header allows,
/// and returns the file (deleted when dropped).
pub fn unpack_to_scratch(
    format: Format,
    head: &[u8],
    reader: &mut dyn Read,
    scratch: &ScratchOptions<'_>,
    open: &OpenOptions,
) -> Result<std::fs::File> {
    let bound = scratch_bound(format, head, open)?;
    let file = tempfile::tempfile_in(scratch.dir)
        .map_err(|e| Error::io(format!("creating a scratch file in {}", scratch.dir.display()), e))?;
    copy_bounded(reader, &file, bound)?;
    Ok(file)
}

/// Largest scratch file a non-raw image may need, from its header: the virtual size twice over
/// (room for metadata and internal snapshots) plus 64 MiB, never above twice the size limit.
fn scratch_bound(format: Format, head: &[u8], open: &OpenOptions) -> Result<u64> {
    let cap = open.max_virtual_size.saturating_mul(2);
    let virtual_size = match format {
        Format::Qcow2 => head.get(24..32).map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default())),
        _ => None,
    };
    let Some(size) = virtual_size else { return Ok(cap) };
    if size > open.max_virtual_size {
        return Err(Error::too_large(format!(
            "virtual size {size} bytes exceeds the limit of {} bytes",
            open.max_virtual_size
        )));
    }
    Ok(size.saturating_mul(2).saturating_add(64 << 20).min(cap))
}

fn copy_bounded(reader: &mut dyn Read, file: &std::fs::File, bound: u64) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; CONVERT_WINDOW_BYTES];
    let mut offset = 0u64;
    loop {
        let n = read_full(reader, &mut buf).map_err(stream_error)?;
        if n == 0 {
            return Ok(offset);
        }
        if offset + n as u64 > bound {
            return Err(Error::too_large(format!(
                "unpacked image is larger than its header allows ({bound} bytes)"
            )));
        }
        // Scratch stays sparse too: skip all-zero blocks.
        for (i, block) in buf[..n].chunks(DEFAULT_SPARSE_SIZE).enumerate() {
            if !is_zero(block) {
                let at = offset + (i * DEFAULT_SPARSE_SIZE) as u64;
                file.write_all_at(block, at).map_err(|e| Error::io("writing the scratch file", e))?;
            }
        }
        offset += n as u64;
        file.set_len(offset).map_err(|e| Error::io("extending the scratch file", e))?;
    }
}

/// One window on its way to the writer: `buf[0]` is guest `offset`; only `segments` are
/// written (data with zero detection, other kinds as holes or write-zeroes).
pub(crate) struct Batch {
    pub(crate) offset: u64,
    pub(crate) len: usize,
    pub(crate) buf: AlignedBuf,
    pub(crate) segments: Vec<Segment>,
}

/// A segment that was already copied in-kernel: the writer skips it.
const COPIED: SegmentKind = SegmentKind::Data { host: u64::MAX };

/// Recycles window buffers between producer and writer (at most three are ever allocated).
/// Buffers are aligned for direct I/O, so a target may write them without a page-cache copy.
pub(crate) struct Buffers {
    returned: Receiver<AlignedBuf>,
}

impl Buffers {
    /// A window buffer of [`CONVERT_WINDOW_BYTES`]: one the writer is done with, else a new one.
    pub(crate) fn take(&self) -> AlignedBuf {
        self.returned.try_recv().unwrap_or_else(|_| AlignedBuf::new(CONVERT_WINDOW_BYTES))
    }
}

/// Runs `produce` on this thread and the writer on another; returns the first error.
pub(crate) fn pipeline<F>(
    target: &dyn WriteAt,
    opts: &ConvertOptions,
    copy_src: Option<&std::fs::File>,
    data_bytes: &AtomicU64,
    produce: F,
) -> Result<()>
where
    F: FnOnce(&SyncSender<Batch>, &Buffers) -> Result<()>,
{
    let sparse_size = opts.sparse_size;
    thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Batch>(1);
        let (back_tx, back_rx) = channel::<AlignedBuf>();
        let writer = scope
            .spawn(move || write_batches(&rx, &back_tx, target, sparse_size, copy_src, opts, data_bytes));
        let produced = produce(&tx, &Buffers { returned: back_rx });
        drop(tx);
        let written =
            writer.join().unwrap_or_else(|_| Err(Error::io("writer thread", io::Error::other("panicked"))));
        produced.and(written)
    })
}

fn map_window(image: &dyn Image, start: u64, end: u64) -> Result<Vec<Segment>> {
    let mut segments = Vec::new();
    let mut offset = start;
    while offset < end {
        let seg = image.map(offset, end - offset)?;
        if seg.offset != offset || seg.len == 0 || seg.len > end - offset {
            return Err(Error::invalid(format!(
                "image map returned an invalid segment {seg:?} for guest offset {offset}"
            )));
        }
        offset += seg.len;
        // Merge with the previous segment when it continues it (keeps writes large).
        if let Some(last) = segments.last_mut()
            && let Some(merged) = merge(*last, seg)
        {
            *last = merged;
            continue;
        }
        segments.push(seg);
    }
    Ok(segments)
}

fn merge(a: Segment, b: Segment) -> Option<Segment> {
    let kind = match (a.kind, b.kind) {
        (SegmentKind::Data { host: ha }, SegmentKind::Data { host: hb })
            if ha.checked_add(a.len) == Some(hb) =>
        {
            a.kind
        }
        (SegmentKind::Encoded, SegmentKind::Encoded) => a.kind,
        (SegmentKind::Zero | SegmentKind::Unallocated, SegmentKind::Zero | SegmentKind::Unallocated) => {
            SegmentKind::Unallocated
        }
        _ => return None,
    };
    Some(Segment { offset: a.offset, len: a.len + b.len, kind })
}

fn copy_in_kernel(
    src: &std::fs::File,
    target: &dyn WriteAt,
    segments: &mut [Segment],
    data_bytes: &AtomicU64,
) -> Result<()> {
    for seg in segments.iter_mut() {
        if let SegmentKind::Data { host } = seg.kind {
            let copied = target.copy_from_file(src, host, seg.offset, seg.len).map_err(|e| {
                Error::io(format!("copying {} bytes at guest offset {}", seg.len, seg.offset), e)
            })?;
            if copied {
                data_bytes.fetch_add(seg.len, Ordering::Relaxed);
                seg.kind = COPIED;
            }
        }
    }
    Ok(())
}

/// Reads every data segment of the window into `buf` (`buf[0]` = guest `window_start`).
fn fill_window(
    image: &dyn Image,
    segments: &[Segment],
    buf: &mut [u8],
    window_start: u64,
    piece_size: u64,
    threads: usize,
) -> Result<()> {
    let mut jobs: Vec<(Segment, &mut [u8])> = Vec::new();
    let mut rest = buf;
    let mut at = window_start;
    for seg in segments {
        let (mut this, tail) = std::mem::take(&mut rest).split_at_mut(seg.len as usize);
        rest = tail;
        at += seg.len;
        if !seg.kind.has_data() || seg.kind == COPIED {
            continue;
        }
        let step = if matches!(seg.kind, SegmentKind::Data { .. }) { DATA_PIECE_BYTES } else { piece_size };
        let mut piece_start = seg.offset;
        while !this.is_empty() {
            let to_boundary = step - piece_start % step;
            let n = (this.len() as u64).min(to_boundary) as usize;
            let (piece, tail) = std::mem::take(&mut this).split_at_mut(n);
            this = tail;
            let kind = match seg.kind {
                SegmentKind::Data { host } => SegmentKind::Data { host: host + (piece_start - seg.offset) },
                other => other,
            };
            jobs.push((Segment { offset: piece_start, len: n as u64, kind }, piece));
            piece_start += n as u64;
        }
    }
    debug_assert_eq!(at, window_start + segments.iter().map(|s| s.len).sum::<u64>());
    let workers = threads.clamp(1, jobs.len().max(1));
    if workers == 1 {
        return jobs.into_iter().try_for_each(|(seg, piece)| read_piece(image, seg, piece));
    }
    let queue = Mutex::new(jobs.into_iter());
    thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        let job = queue
                            .lock()
                            .map_err(|_| Error::io("read queue", io::Error::other("poisoned")))?
                            .next();
                        let Some((seg, piece)) = job else { return Ok(()) };
                        read_piece(image, seg, piece)?;
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Err(Error::io("reader thread", io::Error::other("panicked"))))
            })
            .collect::<Result<Vec<()>>>()
            .map(drop)
    })
}

/// Reads one piece of a window: plain data straight from the image file (through the page
/// cache, where read-ahead has usually brought it already), anything else through the image.
fn read_piece(image: &dyn Image, seg: Segment, piece: &mut [u8]) -> Result<()> {
    match seg.kind {
        SegmentKind::Data { host } => image.data_source().read_exact_at(piece, host).map_err(|e| {
            Error::io(
                format!(
                    "reading {} bytes of data for guest offset {} at host offset {host}",
                    piece.len(),
                    seg.offset
                ),
                e,
            )
        }),
        _ => image.read_at(piece, seg.offset),
    }
}

fn write_batches(
    rx: &Receiver<Batch>,
    back: &Sender<AlignedBuf>,
    target: &dyn WriteAt,
    sparse_size: usize,
    copy_src: Option<&std::fs::File>,
    opts: &ConvertOptions,
    data_bytes: &AtomicU64,
) -> Result<()> {
    let zeroed = target.unwritten_reads_zero();
    let mut copy_src = copy_src;
    for batch in rx {
        let mut runs =
            Runs { target, buf: &batch.buf, base: batch.offset, zeroed, current: None, copy: None, copy_src };
        for seg in &batch.segments {
            if seg.kind == COPIED {
                runs.flush()?;
                continue;
            }
            if !seg.kind.has_data() {
                runs.push(false, seg.offset, seg.len)?;
                continue;
            }
            if sparse_size == 0 {
                data_bytes.fetch_add(seg.len, Ordering::Relaxed);
                runs.push(true, seg.offset, seg.len)?;
                continue;
            }
            // A long run of plain clusters: its non-zero runs are copied in-kernel from the
            // image file (whose pages the window read has just cached) instead of written
            // from the window.
            if let (Some(src), SegmentKind::Data { host }) = (runs.copy_src, seg.kind)
                && seg.len >= COPY_MIN_BYTES
            {
                runs.flush()?;
                runs.copy = Some(InKernel { src, host, guest: seg.offset });
            }
            // Blocks aligned to `sparse_size` in guest space; the first and last may be partial.
            let block = sparse_size as u64;
            let end = seg.offset + seg.len;
            let mut guest = seg.offset;
            while guest < end {
                let block_end = ((guest / block + 1) * block).min(end);
                let data = !is_zero(runs.slice(guest, block_end - guest));
                if data {
                    data_bytes.fetch_add(block_end - guest, Ordering::Relaxed);
                }
                runs.push(data, guest, block_end - guest)?;
                guest = block_end;
            }
            if runs.copy.is_some() {
                runs.flush()?;
                runs.copy = None;
            }
        }
        runs.flush()?;
        copy_src = runs.copy_src;
        target.start_writeback(batch.offset, batch.len as u64);
        if let Some(progress) = &opts.progress {
            progress(batch.len as u64);
        }
        let _ = back.send(batch.buf);
    }
    Ok(())
}

/// Coalesces consecutive data blocks into one write and zero blocks into one hole.
struct Runs<'a, 'f> {
    target: &'a dyn WriteAt,
    buf: &'a [u8],
    /// Guest offset of `buf[0]`.
    base: u64,
    /// The target already reads zeros where nothing was written.
    zeroed: bool,
    /// The run being built: (is data, guest offset, length).
    current: Option<(bool, u64, u64)>,
    /// Set while the runs of one plain segment are built: data runs are copied from there.
    copy: Option<InKernel<'f>>,
    /// The image file to copy plain data from; cleared once the target refuses an in-kernel
    /// copy (then every run is written from the buffer).
    copy_src: Option<&'f std::fs::File>,
}

/// Where the data runs of a segment of plain clusters are in the image file.
#[derive(Clone, Copy)]
struct InKernel<'a> {
    src: &'a std::fs::File,
    /// Host offset of guest offset `guest`.
    host: u64,
    guest: u64,
}

impl Runs<'_, '_> {
    fn slice(&self, guest: u64, len: u64) -> &[u8] {
        let start = (guest - self.base) as usize;
        &self.buf[start..start + len as usize]
    }

    fn push(&mut self, data: bool, guest: u64, len: u64) -> Result<()> {
        match &mut self.current {
            Some((d, g, l)) if *d == data && *g + *l == guest => {
                *l += len;
                Ok(())
            }
            _ => {
                self.flush()?;
                self.current = Some((data, guest, len));
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        match self.current.take() {
            Some((true, guest, len)) => match self.copy {
                Some(copy) if self.copy_src.is_some() => self.copy_or_write(copy, guest, len),
                _ => self.write(guest, len),
            },
            Some((false, guest, len)) if !self.zeroed => self
                .target
                .write_zeroes(guest, len)
                .map_err(|e| Error::io(format!("zeroing {len} bytes at offset {guest} of the target"), e)),
            _ => Ok(()),
        }
    }

    /// Copies a data run in-kernel; writes it from the window (and stops trying to copy) when
    /// the target cannot copy from the image file.
    fn copy_or_write(&mut self, copy: InKernel<'_>, guest: u64, len: u64) -> Result<()> {
        let host = copy.host + (guest - copy.guest);
        let copied = self.target.copy_from_file(copy.src, host, guest, len).map_err(|e| {
            Error::io(
                format!("copying {len} bytes from host offset {host} to offset {guest} of the target"),
                e,
            )
        })?;
        if !copied {
            self.copy_src = None;
            self.write(guest, len)?;
        }
        Ok(())
    }

    fn write(&self, guest: u64, len: u64) -> Result<()> {
        self.target
            .write_all_at(self.slice(guest, len), guest)
            .map_err(|e| Error::io(format!("writing {len} bytes at offset {guest} of the target"), e))
    }
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Maps an error from a (decompressing) stream: corrupt data is an invalid image.
fn stream_error(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::InvalidData => Error::invalid(e.to_string()),
        io::ErrorKind::UnexpectedEof if e.to_string().contains("truncated") => Error::invalid(e.to_string()),
        io::ErrorKind::UnexpectedEof => Error::invalid(format!("image is truncated: {e}")),
        _ => Error::io("reading the image stream", e),
    }
}

/// Whether every byte of `buf` is zero (vectorisable: no early exit inside a 256-byte block).
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(256);
    for chunk in &mut chunks {
        if chunk.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::ErrorKind;
    use crate::image::ImageInfo;
    use crate::io::ReadAt;

    /// An in-memory target that records what was written and zeroed (also used by the qcow2
    /// stream and encoder tests).
    pub(crate) struct MemTarget {
        data: Mutex<Vec<u8>>,
        zeroed: bool,
        writes: Mutex<Vec<(u64, u64)>>,
        zeroes: Mutex<Vec<(u64, u64)>>,
    }

    impl MemTarget {
        pub(crate) fn new(capacity: usize, zeroed: bool) -> Self {
            // A target that does not read back zeros starts out full of garbage.
            let fill = if zeroed { 0 } else { 0xee };
            Self {
                data: Mutex::new(vec![fill; capacity]),
                zeroed,
                writes: Mutex::default(),
                zeroes: Mutex::default(),
            }
        }

        pub(crate) fn bytes(&self) -> Vec<u8> {
            self.data.lock().unwrap().clone()
        }
    }

    impl WriteAt for MemTarget {
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            let start = offset as usize;
            self.data.lock().unwrap()[start..start + buf.len()].copy_from_slice(buf);
            self.writes.lock().unwrap().push((offset, buf.len() as u64));
            Ok(())
        }

        fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
            let start = offset as usize;
            self.data.lock().unwrap()[start..start + len as usize].fill(0);
            self.zeroes.lock().unwrap().push((offset, len));
            Ok(())
        }

        fn unwritten_reads_zero(&self) -> bool {
            self.zeroed
        }

        fn capacity(&self) -> u64 {
            self.data.lock().unwrap().len() as u64
        }
    }

    /// The piece of `segments` (sorted, covering the image) at `offset`, as `Image::map` answers.
    fn map_segments(segments: &[Segment], offset: u64, max_len: u64) -> Segment {
        let seg = segments.iter().find(|s| s.offset <= offset && offset < s.offset + s.len).unwrap();
        let skip = offset - seg.offset;
        let kind = match seg.kind {
            SegmentKind::Data { host } => SegmentKind::Data { host: host + skip },
            other => other,
        };
        Segment { offset, len: (seg.len - skip).min(max_len), kind }
    }

    /// An image described by a list of segments over an in-memory guest content.
    struct FakeImage {
        content: Vec<u8>,
        segments: Vec<Segment>,
    }

    impl Image for FakeImage {
        fn info(&self) -> ImageInfo {
            ImageInfo::plain("fake", self.content.len() as u64, 0)
        }

        fn virtual_size(&self) -> u64 {
            self.content.len() as u64
        }

        fn map(&self, offset: u64, max_len: u64) -> Result<Segment> {
            Ok(map_segments(&self.segments, offset, max_len))
        }

        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            let start = offset as usize;
            buf.copy_from_slice(&self.content[start..start + buf.len()]);
            Ok(())
        }

        fn data_source(&self) -> &dyn ReadAt {
            &self.content
        }
    }

    fn patterned(len: usize, data_ranges: &[(usize, usize)]) -> Vec<u8> {
        let mut v = vec![0u8; len];
        for &(start, end) in data_ranges {
            for (i, b) in v[start..end].iter_mut().enumerate() {
                *b = (i % 251) as u8 + 1;
            }
        }
        v
    }

    fn opts(threads: usize) -> ConvertOptions {
        ConvertOptions { sparse_size: 4096, threads, progress: None }
    }

    #[test]
    fn stream_writes_only_non_zero_blocks_to_a_sparse_target() {
        let content = patterned(64 * 4096, &[(4096, 8192), (40960, 40961)]);
        let target = MemTarget::new(content.len(), true);

        let stats = convert_stream(&mut content.as_slice(), &target, &opts(2)).unwrap();

        assert_eq!(stats.virtual_size, content.len() as u64);
        assert_eq!(target.bytes(), content);
        assert_eq!(*target.writes.lock().unwrap(), vec![(4096, 4096), (40960, 4096)]);
        assert!(target.zeroes.lock().unwrap().is_empty());
    }

    #[test]
    fn stream_larger_than_the_target_is_rejected() {
        let content = patterned(3 * 4096, &[(0, 3 * 4096)]);
        let target = MemTarget::new(2 * 4096, true);

        let err = convert_stream(&mut content.as_slice(), &target, &opts(1)).unwrap_err();

        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert!(err.to_string().contains("capacity"), "{err}");
    }

    #[test]
    fn image_segments_of_every_kind_convert_to_the_guest_content() {
        let len = 3 * CONVERT_WINDOW_BYTES + 12345;
        let content = patterned(len, &[(0, 100_000), (5_000_000, 9_000_000), (len - 5000, len)]);
        let segments = vec![
            Segment { offset: 0, len: 100_000, kind: SegmentKind::Data { host: 0 } },
            Segment { offset: 100_000, len: 4_900_000, kind: SegmentKind::Unallocated },
            Segment { offset: 5_000_000, len: 4_000_000, kind: SegmentKind::Encoded },
            Segment { offset: 9_000_000, len: (len - 9_005_000) as u64, kind: SegmentKind::Zero },
            Segment {
                offset: (len - 5000) as u64,
                len: 5000,
                kind: SegmentKind::Data { host: (len - 5000) as u64 },
            },
        ];
        let image = FakeImage { content: content.clone(), segments };

        for threads in [1, 2, 4] {
            let target = MemTarget::new(len, true);
            let stats = convert_image(&image, &target, &opts(threads)).unwrap();
            assert_eq!(stats.virtual_size, len as u64);
            assert!(target.bytes() == content, "content differs with {threads} threads");
        }
    }

    #[test]
    fn zero_runs_are_explicitly_zeroed_on_targets_that_do_not_read_back_zeros() {
        let len = 16 * 4096;
        let content = patterned(len, &[(0, 4096)]);
        let segments = vec![
            Segment { offset: 0, len: 8192, kind: SegmentKind::Data { host: 0 } },
            Segment { offset: 8192, len: (len - 8192) as u64, kind: SegmentKind::Unallocated },
        ];
        let image = FakeImage { content: content.clone(), segments };
        let target = MemTarget::new(len + 4096, false);

        convert_image(&image, &target, &opts(2)).unwrap();

        assert_eq!(&target.bytes()[..len], &content[..]);
        assert_eq!(*target.zeroes.lock().unwrap(), vec![(4096, (len - 4096) as u64)]);
        // Bytes past the virtual size are not the converter's business.
        assert_eq!(target.bytes()[len], 0xee);
    }

    #[test]
    fn image_larger_than_the_target_is_rejected_before_any_write() {
        let content = patterned(8192, &[(0, 8192)]);
        let segments = vec![Segment { offset: 0, len: 8192, kind: SegmentKind::Data { host: 0 } }];
        let image = FakeImage { content, segments };
        let target = MemTarget::new(4096, true);

        let err = convert_image(&image, &target, &opts(1)).unwrap_err();

        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert!(target.writes.lock().unwrap().is_empty());
    }

    /// A target that copies from files by reading them (as the kernel would), recording each
    /// copy, or refuses every copy like a block device.
    struct CopyTarget {
        mem: MemTarget,
        refuse: bool,
        copies: Mutex<Vec<(u64, u64, u64)>>,
    }

    impl WriteAt for CopyTarget {
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.mem.write_all_at(buf, offset)
        }

        fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
            self.mem.write_zeroes(offset, len)
        }

        fn unwritten_reads_zero(&self) -> bool {
            true
        }

        fn capacity(&self) -> u64 {
            self.mem.capacity()
        }

        fn copy_from_file(
            &self,
            src: &std::fs::File,
            src_offset: u64,
            offset: u64,
            len: u64,
        ) -> io::Result<bool> {
            self.copies.lock().unwrap().push((src_offset, offset, len));
            if self.refuse {
                return Ok(false);
            }
            let mut buf = vec![0u8; len as usize];
            std::os::unix::fs::FileExt::read_exact_at(src, &mut buf, src_offset)?;
            let start = offset as usize;
            self.mem.data.lock().unwrap()[start..start + buf.len()].copy_from_slice(&buf);
            Ok(true)
        }
    }

    /// An image whose plain data sits in a real file, `HOST_SHIFT` bytes after its guest offset.
    struct FileImage {
        file: std::fs::File,
        content: Vec<u8>,
        segments: Vec<Segment>,
    }

    const HOST_SHIFT: u64 = 3 * 4096;

    impl FileImage {
        fn new(content: Vec<u8>, segments: Vec<Segment>) -> Self {
            let file = tempfile::tempfile().unwrap();
            std::os::unix::fs::FileExt::write_all_at(&file, &content, HOST_SHIFT).unwrap();
            Self { file, content, segments }
        }
    }

    impl Image for FileImage {
        fn info(&self) -> ImageInfo {
            ImageInfo::plain("fake", self.content.len() as u64, 0)
        }

        fn virtual_size(&self) -> u64 {
            self.content.len() as u64
        }

        fn map(&self, offset: u64, max_len: u64) -> Result<Segment> {
            Ok(map_segments(&self.segments, offset, max_len))
        }

        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            let start = offset as usize;
            buf.copy_from_slice(&self.content[start..start + buf.len()]);
            Ok(())
        }

        fn data_source(&self) -> &dyn ReadAt {
            &self.file
        }
    }

    /// Guest layout: 512 KiB of plain data with a zero block at 64 KiB, 16 KiB of plain data
    /// (too short to copy), a hole, and plain data crossing into the next window.
    fn plain_image() -> (FileImage, Vec<u8>) {
        let len = CONVERT_WINDOW_BYTES + (1 << 20);
        let mut content = patterned(len, &[(0, 512 << 10), (600 << 10, 616 << 10), (len - (2 << 20), len)]);
        content[64 << 10..68 << 10].fill(0);
        let data = |offset: usize, end: usize| Segment {
            offset: offset as u64,
            len: (end - offset) as u64,
            kind: SegmentKind::Data { host: offset as u64 + HOST_SHIFT },
        };
        let segments = vec![
            data(0, 512 << 10),
            Segment { offset: 512 << 10, len: 88 << 10, kind: SegmentKind::Unallocated },
            data(600 << 10, 616 << 10),
            Segment {
                offset: 616 << 10,
                len: (len - (2 << 20) - (616 << 10)) as u64,
                kind: SegmentKind::Unallocated,
            },
            data(len - (2 << 20), len),
        ];
        (FileImage::new(content.clone(), segments), content)
    }

    #[test]
    fn non_zero_runs_of_long_plain_segments_are_copied_from_the_image_file() {
        let (image, content) = plain_image();
        let len = content.len() as u64;
        let window = CONVERT_WINDOW_BYTES as u64;
        let target =
            CopyTarget { mem: MemTarget::new(content.len(), true), refuse: false, copies: Mutex::default() };

        let stats = convert_image(&image, &target, &opts(2)).unwrap();

        assert!(target.mem.bytes() == content, "output differs from the guest content");
        let (k64, k68, k512) = (64 << 10, 68 << 10, 512 << 10);
        let tail = len - (2 << 20);
        assert_eq!(
            *target.copies.lock().unwrap(),
            vec![
                (HOST_SHIFT, 0, k64),
                (HOST_SHIFT + k68, k68, k512 - k68),
                (HOST_SHIFT + tail, tail, window - tail),
                (HOST_SHIFT + window, window, len - window),
            ]
        );
        // Only the short segment went through the window.
        assert_eq!(*target.mem.writes.lock().unwrap(), vec![(600 << 10, 16 << 10)]);
        assert_eq!(stats.data_bytes, k512 - 4096 + (16 << 10) + (2 << 20));
    }

    #[test]
    fn a_target_that_cannot_copy_gets_every_run_written_after_one_attempt() {
        let (image, content) = plain_image();
        let target =
            CopyTarget { mem: MemTarget::new(content.len(), true), refuse: true, copies: Mutex::default() };

        convert_image(&image, &target, &opts(1)).unwrap();

        assert!(target.mem.bytes() == content, "output differs from the guest content");
        assert_eq!(target.copies.lock().unwrap().len(), 1);
        let writes = target.mem.writes.lock().unwrap();
        assert_eq!(writes.iter().map(|w| w.1).sum::<u64>(), (512 << 10) - 4096 + (16 << 10) + (2 << 20));
    }

    #[test]
    fn without_zero_detection_every_data_byte_is_written() {
        let content = vec![0u8; 3 * 4096];
        let target = MemTarget::new(content.len(), true);
        let no_detect = ConvertOptions { sparse_size: 0, ..opts(1) };

        let stats = convert_stream(&mut content.as_slice(), &target, &no_detect).unwrap();

        assert_eq!(stats.data_bytes, 3 * 4096);
        assert_eq!(*target.writes.lock().unwrap(), vec![(0, 3 * 4096)]);
    }

    #[test]
    fn is_zero_finds_a_single_set_byte_anywhere() {
        let mut buf = vec![0u8; 4096 + 17];
        assert!(is_zero(&buf));
        for i in [0, 255, 256, 4095, 4096 + 16] {
            buf[i] = 1;
            assert!(!is_zero(&buf), "byte {i}");
            buf[i] = 0;
        }
    }
}
