//! The two sides of the clone stream over any byte transport (socket pair, TCP, TLS): the
//! source sends its extents as frames ([`crate::wire`]), the target writes them into a
//! [`Volume`]. Both feed every frame to a [`StreamDigest`] as it passes (frame header, and the
//! content of DATA frames), so the END frame's digest checks the whole transfer, holes
//! included, without hashing gigabytes of hole zeros.
//!
//! Each side is a two-stage pipeline over a bounded channel, so that the disk side and the
//! transport side (encryption, decryption, socket copies) run on two cores at once:
//! - source: a reader thread reads [`PIECE`]s of the volume and hashes them → the calling
//!   thread writes frame headers and pieces to the transport;
//! - target: the calling thread reads and checks frame headers and pieces from the transport →
//!   a writer thread hashes them, writes them into the volume and starts their writeback every
//!   [`WRITEBACK_BYTES`], so that the final flush does not write the whole clone at once.
//!
//! Memory: at most [`DEPTH`] + 2 pieces per side (source: 4 MiB chunks with zero detection;
//! target: [`TARGET_PIECE`]s).

use std::io::{self, Read, Write};
use std::ops::Range;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use disk_formats::WriteAt;
use disk_formats::convert::direct::AlignedBuf;
use storage::Volume;

use crate::error::{Error, Result};
use crate::local::zero_runs;
use crate::source::SourceVolume;
use crate::wire::{self, FrameHeader, FrameKind, Header, StreamDigest};

/// Bytes of DATA written between two calls to start their writeback on the target.
pub(crate) const WRITEBACK_BYTES: u64 = 64 << 20;

/// Bytes of a DATA frame read, hashed and written at a time: small enough to stay in the
/// CPU caches between the passes over them.
const PIECE: usize = 256 << 10;

/// Bytes of a DATA frame the target reads, hashes and writes at a time, in a
/// [`DIRECT_ALIGN`](disk_formats::convert::direct::DIRECT_ALIGN)-aligned buffer: the volume writes the aligned middle of a piece with
/// `O_DIRECT` ([`Volume`]'s direct path), which spares a copy into the page cache and its
/// writeback on the target's CPU. As large as a DATA frame (larger than [`PIECE`]) since each
/// direct write waits for the device.
const TARGET_PIECE: usize = wire::MAX_DATA_FRAME as usize;

/// Pieces in flight between the two stages of a side.
const DEPTH: usize = 8;

/// What the source sent.
#[derive(Debug)]
pub(crate) struct Sent {
    /// Bytes in DATA frames.
    pub(crate) data_bytes: u64,
}

/// What the target received and wrote.
#[derive(Debug)]
pub(crate) struct Received {
    /// Bytes of DATA frames written.
    pub(crate) data_bytes: u64,
}

fn send_err(e: io::Error) -> Error {
    Error::network("sending the clone stream to the target", e)
}

fn recv_err(e: io::Error, position: u64) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::network(
            format!("the source closed the connection at offset {position}, before the end of the stream"),
            e,
        )
    } else {
        Error::network(format!("receiving the clone stream at offset {position}"), e)
    }
}

pub(crate) fn write_header(out: &mut impl Write, header: &Header) -> Result<()> {
    out.write_all(&header.encode()).map_err(send_err)
}

pub(crate) fn flush(out: &mut impl Write) -> Result<()> {
    out.flush().map_err(send_err)
}

/// One thing the source's writer puts on the transport.
enum Item {
    /// A frame header (DATA, HOLE or END).
    Frame(FrameHeader),
    /// Bytes of the batch's buffer (content of the current DATA frame).
    Bytes(Range<usize>),
    /// The END frame's digest.
    Digest([u8; wire::DIGEST_LEN]),
}

/// A buffer read from the source and what to send of it, in order.
struct Batch {
    buf: Vec<u8>,
    items: Vec<Item>,
}

/// The source's reader stage: walks the extents, reads and hashes, hands batches on.
struct Producer<'a> {
    source: &'a SourceVolume,
    detect_zeroes: bool,
    tx: SyncSender<Batch>,
    free: Receiver<Vec<u8>>,
    digest: StreamDigest,
    /// What the next batch sends before (or besides) its buffer's bytes.
    items: Vec<Item>,
    /// A hole not sent yet (merged with the next one when they touch).
    hole: Option<(u64, u64)>,
    data_bytes: u64,
}

/// The writer stage went away (it failed; its error is the one reported).
struct Stopped;

type Sending = std::result::Result<(), Stopped>;

impl Producer<'_> {
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = self.free.try_recv().unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    /// Notes `len` bytes of hole at `offset`, merged with a pending hole they touch.
    fn hole(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        match self.hole {
            Some((start, n)) if start + n == offset => self.hole = Some((start, n + len)),
            _ => {
                self.flush_hole();
                self.hole = Some((offset, len));
            }
        }
    }

    /// The pending hole, hashed and queued.
    fn flush_hole(&mut self) {
        if let Some((offset, len)) = self.hole.take() {
            self.frame(FrameHeader { kind: FrameKind::Hole, offset, len });
        }
    }

    /// A frame header, hashed and queued.
    fn frame(&mut self, frame: FrameHeader) {
        self.digest.frame(&frame);
        self.items.push(Item::Frame(frame));
    }

    fn send(&mut self, buf: Vec<u8>) -> Sending {
        let items = std::mem::take(&mut self.items);
        self.tx.send(Batch { buf, items }).map_err(|_| Stopped)
    }

    fn run(&mut self) -> Result<Sending> {
        let mut pos = 0;
        for extent in self.source.extents() {
            let (start, len) = extent?;
            self.hole(pos, start - pos);
            let end = start + len;
            let mut at = start;
            while at < end {
                let frame_len = (end - at).min(wire::MAX_DATA_FRAME);
                let sent = if self.detect_zeroes {
                    self.chunk_without_zeroes(at, frame_len as usize)?
                } else {
                    self.data_frame(at, frame_len)?
                };
                if sent.is_err() {
                    return Ok(sent);
                }
                at += frame_len;
            }
            pos = end;
        }
        self.hole(pos, self.source.size - pos);
        self.flush_hole();
        self.items.push(Item::Frame(FrameHeader {
            kind: FrameKind::End,
            offset: self.source.size,
            len: wire::DIGEST_LEN as u64,
        }));
        self.items.push(Item::Digest(self.digest.finish()));
        Ok(self.send(Vec::new()))
    }

    /// One DATA frame of `len` bytes at `at`, read and hashed a piece at a time.
    fn data_frame(&mut self, at: u64, len: u64) -> Result<Sending> {
        self.flush_hole();
        self.frame(FrameHeader { kind: FrameKind::Data, offset: at, len });
        let end = at + len;
        let mut piece_at = at;
        while piece_at < end {
            let n = (end - piece_at).min(PIECE as u64) as usize;
            let mut buf = self.buffer(n);
            self.source.read_exact_at(&mut buf, piece_at)?;
            self.digest.data(&buf);
            self.items.push(Item::Bytes(0..n));
            if self.send(buf).is_err() {
                return Ok(Err(Stopped));
            }
            self.data_bytes += n as u64;
            piece_at += n as u64;
        }
        Ok(Ok(()))
    }

    /// `len` bytes at `at` read as one chunk; all-zero blocks become holes, the rest DATA.
    fn chunk_without_zeroes(&mut self, at: u64, len: usize) -> Result<Sending> {
        let mut buf = self.buffer(len);
        self.source.read_exact_at(&mut buf, at)?;
        for (run_start, run_len, zero) in zero_runs(&buf) {
            let offset = at + run_start as u64;
            if zero {
                self.hole(offset, run_len as u64);
                continue;
            }
            self.flush_hole();
            self.frame(FrameHeader { kind: FrameKind::Data, offset, len: run_len as u64 });
            let range = run_start..run_start + run_len;
            self.digest.data(&buf[range.clone()]);
            self.items.push(Item::Bytes(range));
            self.data_bytes += run_len as u64;
        }
        Ok(self.send(buf))
    }
}

/// Sends every extent of `source` as DATA / HOLE frames, then END. With `detect_zeroes`,
/// all-zero blocks inside data extents are sent as holes.
pub(crate) fn send_frames(source: &SourceVolume, out: &mut impl Write, detect_zeroes: bool) -> Result<Sent> {
    let (tx, rx) = sync_channel::<Batch>(DEPTH);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(DEPTH + 2);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut producer = Producer {
                source,
                detect_zeroes,
                tx,
                free: free_rx,
                digest: StreamDigest::new(),
                items: Vec::new(),
                hole: None,
                data_bytes: 0,
            };
            producer.run().map(|sent| sent.map(|()| producer.data_bytes))
        });
        let written = write_batches(out, &rx, &free_tx);
        // A failed writer must not leave the reader blocked on a full channel.
        drop(rx);
        let produced = reader
            .join()
            .unwrap_or_else(|_| Err(Error::Protocol("the stream's source reader panicked".into())));
        match (produced, written) {
            // The reader failed (reading the source): its error, whatever the writer saw.
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
            (Ok(Err(Stopped)), Ok(_)) => Err(Error::Protocol("the stream's writer stopped early".into())),
            (Ok(Ok(data_bytes)), Ok(true)) => Ok(Sent { data_bytes }),
            (Ok(Ok(_)), Ok(false)) => Err(Error::Protocol("the stream ended without its END frame".into())),
        }
    })
}

/// The source's writer stage: puts batches on the transport until END. `Ok(true)` once END
/// was written, `Ok(false)` when the reader stopped before it.
fn write_batches(out: &mut impl Write, rx: &Receiver<Batch>, free: &SyncSender<Vec<u8>>) -> Result<bool> {
    while let Ok(batch) = rx.recv() {
        let mut ended = false;
        for item in &batch.items {
            match item {
                Item::Frame(frame) => out.write_all(&frame.encode()).map_err(send_err)?,
                Item::Bytes(range) => out.write_all(&batch.buf[range.clone()]).map_err(send_err)?,
                Item::Digest(digest) => {
                    out.write_all(digest).map_err(send_err)?;
                    ended = true;
                }
            }
        }
        // Recycled when the reader has room for it; dropped otherwise.
        let _ = free.try_send(batch.buf);
        if ended {
            return Ok(true);
        }
    }
    Ok(false)
}

pub(crate) fn read_header(input: &mut impl Read) -> Result<Header> {
    let mut bytes = [0u8; wire::HEADER_LEN];
    input.read_exact(&mut bytes).map_err(|e| recv_err(e, 0))?;
    Header::decode(&bytes)
}

/// One thing the target's writer stage does, in stream order.
enum ToDisk {
    /// The first `len` bytes of `buf`, of a DATA frame at `at` (`frame`: its header, with the
    /// frame's first piece).
    Data { frame: Option<FrameHeader>, at: u64, buf: AlignedBuf, len: usize },
    /// A HOLE frame.
    Hole(FrameHeader),
    /// The END frame's digest, as the source computed it.
    End([u8; wire::DIGEST_LEN]),
}

/// Receives frames up to END into `volume` (created with at least `header.size` bytes) and
/// checks the digest.
///
/// # Errors
/// [`Error::Protocol`] for a malformed or out-of-order frame, [`Error::Checksum`] when the
/// digest differs, [`Error::Network`] when the stream stops early.
pub(crate) fn receive_frames(input: &mut impl Read, header: &Header, volume: &Volume) -> Result<Received> {
    let (tx, rx) = sync_channel::<ToDisk>(DEPTH);
    let (free_tx, free_rx) = sync_channel::<AlignedBuf>(DEPTH + 2);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || write_frames(volume, &rx, &free_tx));
        let read = read_frames(input, header, &tx, &free_rx);
        // A failed reader must not leave the writer waiting for more.
        drop(tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(Error::Protocol("the stream's target writer panicked".into())));
        match (read, written) {
            // The writer failed (writing, or the digest): its error, whatever the reader saw.
            (_, Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(e),
            (Ok(()), Ok(Some(received))) => Ok(received),
            (Ok(()), Ok(None)) => Err(Error::Protocol("the stream's writer stopped early".into())),
        }
    })
}

/// The target's reader stage: reads and checks frames, hands them on. Returns early (`Ok`)
/// when the writer stage went away (its error is the one reported).
fn read_frames(
    input: &mut impl Read,
    header: &Header,
    tx: &SyncSender<ToDisk>,
    free: &Receiver<AlignedBuf>,
) -> Result<()> {
    let mut position = 0;
    loop {
        let mut bytes = [0u8; wire::FRAME_HEADER_LEN];
        input.read_exact(&mut bytes).map_err(|e| recv_err(e, position))?;
        let frame = FrameHeader::decode(&bytes, position, header.size)?;
        match frame.kind {
            FrameKind::Data => {
                let end = frame.offset + frame.len;
                let mut first = Some(frame);
                let mut at = frame.offset;
                while at < end {
                    let len = target_piece_len(at, end);
                    let mut buf = free.try_recv().unwrap_or_else(|_| AlignedBuf::new(TARGET_PIECE));
                    input.read_exact(&mut buf[..len]).map_err(|e| recv_err(e, at))?;
                    if tx.send(ToDisk::Data { frame: first.take(), at, buf, len }).is_err() {
                        return Ok(());
                    }
                    at += len as u64;
                }
            }
            FrameKind::Hole => {
                if tx.send(ToDisk::Hole(frame)).is_err() {
                    return Ok(());
                }
            }
            FrameKind::End => {
                let mut expected = [0u8; wire::DIGEST_LEN];
                input.read_exact(&mut expected).map_err(|e| recv_err(e, position))?;
                let _ = tx.send(ToDisk::End(expected));
                return Ok(());
            }
        }
        position += frame.len;
    }
}

/// Bytes of the piece at `at` of a DATA frame ending at `end`: up to the next multiple of
/// [`TARGET_PIECE`], so that the pieces of a frame at an unaligned offset are aligned from the
/// second one on (and each piece's aligned middle can be written directly).
fn target_piece_len(at: u64, end: u64) -> usize {
    let boundary = (at / TARGET_PIECE as u64 + 1) * TARGET_PIECE as u64;
    (boundary.min(end) - at) as usize
}

/// The target's writer stage: hashes and writes what the reader hands on. `Ok(None)` when
/// the reader stopped before END.
fn write_frames(
    volume: &Volume,
    rx: &Receiver<ToDisk>,
    free: &SyncSender<AlignedBuf>,
) -> Result<Option<Received>> {
    let dst = volume.path();
    let mut digest = StreamDigest::new();
    let mut data_bytes = 0;
    // Start of the written range whose writeback has not been started yet.
    let mut unflushed = 0;
    while let Ok(item) = rx.recv() {
        match item {
            ToDisk::Data { frame, at, buf, len } => {
                if let Some(frame) = &frame {
                    digest.frame(frame);
                }
                let bytes = &buf[..len];
                digest.data(bytes);
                volume
                    .write_all_at(bytes, at)
                    .map_err(|e| Error::io(dst, format!("writing {len} bytes at offset {at}"), e))?;
                let end = at + len as u64;
                data_bytes += len as u64;
                if end - unflushed >= WRITEBACK_BYTES {
                    volume.start_writeback(unflushed, end - unflushed);
                    unflushed = end;
                }
                let _ = free.try_send(buf);
            }
            ToDisk::Hole(frame) => {
                digest.frame(&frame);
                volume.write_zeroes(frame.offset, frame.len).map_err(|e| {
                    Error::io(dst, format!("zeroing {} bytes at offset {}", frame.len, frame.offset), e)
                })?;
            }
            ToDisk::End(expected) => {
                let actual = digest.finish();
                if actual != expected {
                    return Err(Error::Checksum {
                        expected: wire::hex(&expected),
                        actual: wire::hex(&actual),
                    });
                }
                return Ok(Some(Received { data_bytes }));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    use storage::CreateOptions;

    use super::*;

    const MIB: u64 = 1 << 20;

    /// A 16 MiB source with data at 1 MiB (1 MiB) and 9 MiB (5 MiB): two DATA frames, the
    /// second one longer than the 4 MiB limit so split in two.
    fn source(dir: &std::path::Path) -> SourceVolume {
        let path = dir.join("src");
        let file = File::create(&path).expect("create");
        file.set_len(16 * MIB).expect("set_len");
        for (offset, len) in [(MIB, MIB), (9 * MIB, 5 * MIB)] {
            let data: Vec<u8> = (0..len).map(|i| ((offset + i) % 251) as u8 | 1).collect();
            file.write_all_at(&data, offset).expect("write");
        }
        SourceVolume::open(&path).expect("open")
    }

    /// The encoded stream of [`source`].
    fn encoded(dir: &std::path::Path, detect_zeroes: bool) -> (Header, Vec<u8>) {
        let source = source(dir);
        let header = Header { size: source.size, allocated: 0 };
        let mut bytes = Vec::new();
        send_frames(&source, &mut bytes, detect_zeroes).expect("send");
        (header, bytes)
    }

    fn receive(dir: &std::path::Path, header: &Header, bytes: &[u8]) -> Result<Received> {
        let path = dir.join("dst");
        let volume = Volume::create(&path, Some(header.size), header.size, &CreateOptions::default())
            .expect("create target");
        receive_frames(&mut &bytes[..], header, &volume)
    }

    /// The frame headers of an encoded stream, in order.
    fn frames(bytes: &[u8], size: u64) -> Vec<FrameHeader> {
        let mut out = Vec::new();
        let (mut at, mut position) = (0, 0);
        loop {
            let header: &[u8; wire::FRAME_HEADER_LEN] =
                bytes[at..at + wire::FRAME_HEADER_LEN].try_into().expect("header bytes");
            let frame = FrameHeader::decode(header, position, size).expect("frame");
            out.push(frame);
            at += wire::FRAME_HEADER_LEN;
            match frame.kind {
                FrameKind::Data => at += frame.len as usize,
                FrameKind::Hole => {}
                FrameKind::End => return out,
            }
            position += frame.len;
        }
    }

    #[test]
    fn an_intact_stream_is_received_and_matches_the_source() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (header, bytes) = encoded(dir.path(), false);

        let received = receive(dir.path(), &header, &bytes).expect("receive");

        assert_eq!(received.data_bytes, 6 * MIB);
        assert_eq!(
            std::fs::read(dir.path().join("dst")).expect("dst"),
            std::fs::read(dir.path().join("src")).expect("src")
        );
    }

    #[test]
    fn frames_cover_the_volume_holes_and_data_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (header, bytes) = encoded(dir.path(), false);

        let kinds: Vec<(FrameKind, u64, u64)> =
            frames(&bytes, header.size).iter().map(|f| (f.kind, f.offset / MIB, f.len)).collect();

        assert_eq!(
            kinds,
            vec![
                (FrameKind::Hole, 0, MIB),
                (FrameKind::Data, 1, MIB),
                (FrameKind::Hole, 2, 7 * MIB),
                (FrameKind::Data, 9, 4 * MIB),
                (FrameKind::Data, 13, MIB),
                (FrameKind::Hole, 14, 2 * MIB),
                (FrameKind::End, 16, wire::DIGEST_LEN as u64),
            ]
        );
    }

    #[test]
    fn with_zero_detection_neighbouring_holes_are_one_frame() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = source(dir.path());
        // Zero the first data extent's content (still allocated data to SEEK_DATA).
        source_file_zero(dir.path(), MIB, MIB);
        let mut bytes = Vec::new();

        send_frames(&source, &mut bytes, true).expect("send");

        let frames = frames(&bytes, source.size);
        assert_eq!(frames[0], FrameHeader { kind: FrameKind::Hole, offset: 0, len: 9 * MIB });
        let received =
            receive(dir.path(), &Header { size: source.size, allocated: 0 }, &bytes).expect("recv");
        assert_eq!(received.data_bytes, 5 * MIB);
        assert_eq!(
            std::fs::read(dir.path().join("dst")).expect("dst"),
            std::fs::read(dir.path().join("src")).expect("src")
        );
    }

    fn source_file_zero(dir: &std::path::Path, offset: u64, len: u64) {
        let file = File::options().write(true).open(dir.join("src")).expect("open");
        file.write_all_at(&vec![0; len as usize], offset).expect("zero");
    }

    #[test]
    fn target_pieces_end_at_multiples_of_the_piece_size() {
        let piece = TARGET_PIECE as u64;

        assert_eq!(target_piece_len(0, 4 * MIB), TARGET_PIECE);
        assert_eq!(target_piece_len(4096, 4 * MIB), TARGET_PIECE - 4096);
        assert_eq!(target_piece_len(piece, piece + 10), 10);
        assert_eq!(target_piece_len(piece - 1, 3 * piece), 1);
    }

    #[test]
    fn a_data_frame_at_an_unaligned_offset_is_received_intact() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("src");
        let file = File::create(&path).expect("create");
        file.set_len(8 * MIB).expect("set_len");
        let data: Vec<u8> = (0..3 * MIB + 5).map(|i| (i % 241) as u8 | 1).collect();
        file.write_all_at(&data, MIB + 12_345).expect("write");
        let source = SourceVolume::open(&path).expect("open");
        let header = Header { size: source.size, allocated: 0 };
        let mut bytes = Vec::new();
        send_frames(&source, &mut bytes, true).expect("send");

        receive(dir.path(), &header, &bytes).expect("receive");

        assert_eq!(std::fs::read(dir.path().join("dst")).expect("dst"), std::fs::read(&path).expect("src"));
    }

    #[test]
    fn a_garbled_data_byte_fails_the_stream_digest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (header, mut bytes) = encoded(dir.path(), false);
        // Past the first HOLE and DATA headers, inside the first DATA frame's content.
        bytes[2 * wire::FRAME_HEADER_LEN + 1000] ^= 0x40;

        let err = receive(dir.path(), &header, &bytes).expect_err("garbled");

        assert!(matches!(err, Error::Checksum { .. }), "{err}");
        assert_eq!(err.kind(), disk_formats::ErrorKind::Checksum);
    }

    #[test]
    fn a_garbled_digest_fails_the_stream() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (header, mut bytes) = encoded(dir.path(), false);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;

        let err = receive(dir.path(), &header, &bytes).expect_err("garbled digest");

        assert!(err.to_string().starts_with("stream checksum mismatch"), "{err}");
    }

    #[test]
    fn a_truncated_stream_names_the_offset_where_it_stopped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (header, bytes) = encoded(dir.path(), false);
        // Inside the second DATA frame (9 MiB + 4 MiB), after its first MiB.
        let cut = 3 * wire::FRAME_HEADER_LEN + MIB as usize + wire::FRAME_HEADER_LEN + MIB as usize;

        let err = receive(dir.path(), &header, &bytes[..cut]).expect_err("truncated");

        assert!(matches!(err, Error::Network { .. }), "{err}");
        assert!(err.to_string().contains("before the end of the stream"), "{err}");
    }

    #[test]
    fn a_source_read_error_stops_the_sender_with_that_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let opened = source(dir.path());
        // The same file through a write-only descriptor: extents are found, reads fail (EBADF).
        let write_only = File::options().write(true).open(&opened.path).expect("open write-only");
        let source = SourceVolume { file: write_only, ..opened };
        let mut bytes = Vec::new();

        let err = send_frames(&source, &mut bytes, false).expect_err("unreadable");

        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("reading 262144 bytes at offset 1048576"), "{err}");
    }

    #[test]
    fn a_failing_transport_stops_the_sender_with_the_transport_error() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "peer went away"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let source = source(dir.path());

        let err = send_frames(&source, &mut Broken, false).expect_err("broken");

        assert!(matches!(err, Error::Network { .. }), "{err}");
    }
}
