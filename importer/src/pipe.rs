//! The bridge from an async byte stream to the blocking converter, shared by downloads (this
//! crate) and uploads (the `uploader` crate).
//!
//! The network task gathers what it receives into pieces of about [`PIECE_BYTES`] with a
//! [`Batcher`] and sends them as [`Piece::Data`] into a tokio channel of [`CHANNEL_PIECES`];
//! [`ChannelReader`] is the blocking [`Read`] end the converter consumes. At most
//! [`CHANNEL_PIECES`] × [`PIECE_BYTES`] bytes (≈ 4 MiB) wait in between.
//!
//! ## Main types
//! - [`Piece`]: data, or the end marker.
//! - [`Batcher`]: small network chunks → channel-sized pieces (large chunks pass uncopied).
//! - [`ChannelReader`]: the blocking reader; clones share the position.
//!
//! ## Caveats
//! - The producer must send [`Piece::End`] only after every check on the stream passed (a
//!   checksum, the announced length): a reader whose channel closes without the marker fails
//!   instead of reporting end-of-file, so a truncated or corrupted stream is never taken for a
//!   complete one.
//! - [`ChannelReader::read`] blocks on the channel: call it outside the async runtime
//!   (`spawn_blocking` or a thread of its own).

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::mpsc;

/// Small network chunks are gathered into pieces of this size before crossing the channel:
/// large enough that the per-piece cost (a channel hand-off, a lock) does not matter.
pub const PIECE_BYTES: usize = 256 << 10;

/// Pieces in flight between the network task and the converter (≈ 4 MiB): enough to keep both
/// sides busy, small enough to keep memory bounded per transfer.
pub const CHANNEL_PIECES: usize = 16;

/// One piece crossing the channel.
#[derive(Debug)]
pub enum Piece {
    /// The next bytes of the stream.
    Data(Bytes),
    /// Every byte was sent and every check on the stream passed.
    End,
}

/// Gathers chunks into pieces of at least [`PIECE_BYTES`]; a chunk that is that large by
/// itself (and nothing is pending) passes through without a copy.
#[derive(Debug, Default)]
pub struct Batcher {
    pending: BytesMut,
}

impl Batcher {
    /// A batcher with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `chunk`; returns a piece to send once enough has gathered.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.pending.is_empty() && chunk.len() >= PIECE_BYTES {
            return Some(chunk);
        }
        self.pending.extend_from_slice(&chunk);
        (self.pending.len() >= PIECE_BYTES).then(|| self.pending.split().freeze())
    }

    /// What is left at the end of the stream, if anything.
    pub fn finish(self) -> Option<Bytes> {
        (!self.pending.is_empty()).then(|| self.pending.freeze())
    }
}

/// The blocking end of the channel: a [`Read`] for the converter. Clones share the position,
/// so the caller can drain what the converter left unread (and see the end marker).
#[derive(Debug, Clone)]
pub struct ChannelReader(Arc<Mutex<ReaderState>>);

#[derive(Debug)]
struct ReaderState {
    rx: mpsc::Receiver<Piece>,
    current: Bytes,
    ended: bool,
}

impl ChannelReader {
    /// The reader of `rx`.
    pub fn new(rx: mpsc::Receiver<Piece>) -> Self {
        Self(Arc::new(Mutex::new(ReaderState { rx, current: Bytes::new(), ended: false })))
    }

    /// The next bytes of the stream as they crossed the channel (no copy): what is left of the
    /// current piece, else the next piece; `None` at the end marker. For a consumer that writes
    /// pieces straight out instead of reading into a buffer of its own.
    ///
    /// # Errors
    /// As [`ChannelReader::read`]: the producer stopped without the end marker.
    pub fn next_bytes(&mut self) -> io::Result<Option<Bytes>> {
        let mut state = self.0.lock().map_err(|_| io::Error::other("stream reader lock poisoned"))?;
        loop {
            if !state.current.is_empty() {
                return Ok(Some(std::mem::take(&mut state.current)));
            }
            if state.ended {
                return Ok(None);
            }
            match state.rx.blocking_recv() {
                Some(Piece::Data(bytes)) => state.current = bytes,
                Some(Piece::End) => state.ended = true,
                None => return Err(io::Error::other("the stream stopped before its end")),
            }
        }
    }

    /// Reads and discards the rest of the stream up to the end marker (so every byte passed
    /// the producer's checks). Returns how many bytes were left.
    ///
    /// # Errors
    /// As [`ChannelReader::read`]: the producer stopped without the end marker.
    pub fn drain(&mut self) -> io::Result<u64> {
        io::copy(self, &mut io::sink())
    }

    /// Stops receiving: the producer's next send fails, telling it nobody reads any more.
    pub fn close(&self) {
        if let Ok(mut state) = self.0.lock() {
            state.rx.close();
        }
    }
}

impl Read for ChannelReader {
    /// Must run outside the async runtime (it blocks on the channel).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self.0.lock().map_err(|_| io::Error::other("stream reader lock poisoned"))?;
        loop {
            if !state.current.is_empty() {
                let n = buf.len().min(state.current.len());
                buf[..n].copy_from_slice(&state.current[..n]);
                state.current.advance(n);
                return Ok(n);
            }
            if state.ended || buf.is_empty() {
                return Ok(0);
            }
            match state.rx.blocking_recv() {
                Some(Piece::Data(bytes)) => state.current = bytes,
                Some(Piece::End) => state.ended = true,
                // Not `UnexpectedEof`: that would be reported as a truncated image. The caller
                // reports the stream's own error (dropped connection, checksum) instead.
                None => return Err(io::Error::other("the stream stopped before its end")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(pieces: Vec<Piece>) -> (Vec<u8>, io::Result<usize>) {
        let (tx, rx) = mpsc::channel(CHANNEL_PIECES);
        for piece in pieces {
            tx.try_send(piece).expect("room in the channel");
        }
        drop(tx);
        let mut out = Vec::new();
        let result = ChannelReader::new(rx).read_to_end(&mut out);
        (out, result)
    }

    #[test]
    fn data_then_end_reads_to_a_clean_end() {
        let (out, result) = read_all(vec![
            Piece::Data(Bytes::from_static(b"abc")),
            Piece::Data(Bytes::from_static(b"def")),
            Piece::End,
        ]);
        assert_eq!(result.expect("clean end"), 6);
        assert_eq!(out, b"abcdef");
    }

    #[test]
    fn a_channel_closed_without_the_end_marker_is_an_error_not_an_end() {
        let (out, result) = read_all(vec![Piece::Data(Bytes::from_static(b"abc"))]);
        assert_eq!(out, b"abc");
        let err = result.expect_err("no end marker");
        assert_ne!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(err.to_string(), "the stream stopped before its end");
    }

    #[test]
    fn clones_share_the_position_and_drain_counts_what_is_left() {
        let (tx, rx) = mpsc::channel(CHANNEL_PIECES);
        tx.try_send(Piece::Data(Bytes::from_static(b"0123456789"))).expect("send");
        tx.try_send(Piece::End).expect("send");
        let mut reader = ChannelReader::new(rx);
        let mut first = [0u8; 4];
        reader.clone().read_exact(&mut first).expect("read");
        assert_eq!(&first, b"0123");
        assert_eq!(reader.drain().expect("drain"), 6);
    }

    #[test]
    fn next_bytes_hands_out_the_rest_of_a_piece_then_whole_pieces_then_the_end() {
        let (tx, rx) = mpsc::channel(CHANNEL_PIECES);
        tx.try_send(Piece::Data(Bytes::from_static(b"0123456789"))).expect("send");
        tx.try_send(Piece::Data(Bytes::from_static(b"abc"))).expect("send");
        tx.try_send(Piece::End).expect("send");
        drop(tx);
        let mut reader = ChannelReader::new(rx);
        let mut first = [0u8; 4];
        reader.read_exact(&mut first).expect("read");

        assert_eq!(reader.next_bytes().expect("rest"), Some(Bytes::from_static(b"456789")));
        assert_eq!(reader.next_bytes().expect("piece"), Some(Bytes::from_static(b"abc")));
        assert_eq!(reader.next_bytes().expect("end"), None);
        assert_eq!(reader.next_bytes().expect("still the end"), None);
    }

    #[test]
    fn next_bytes_without_the_end_marker_is_an_error() {
        let (tx, rx) = mpsc::channel(CHANNEL_PIECES);
        tx.try_send(Piece::Data(Bytes::from_static(b"abc"))).expect("send");
        drop(tx);
        let mut reader = ChannelReader::new(rx);
        assert!(reader.next_bytes().expect("data").is_some());
        assert!(reader.next_bytes().is_err());
    }

    #[test]
    fn batcher_gathers_small_chunks_and_passes_large_ones_through() {
        let mut batcher = Batcher::new();
        let small = Bytes::from(vec![1u8; PIECE_BYTES / 2]);
        assert!(batcher.push(small.clone()).is_none());
        let piece = batcher.push(small).expect("a full piece");
        assert_eq!(piece.len(), PIECE_BYTES);

        let large = Bytes::from(vec![2u8; PIECE_BYTES + 1]);
        let passed = batcher.push(large.clone()).expect("passed through");
        assert_eq!(passed.as_ptr(), large.as_ptr(), "no copy");

        assert!(batcher.push(Bytes::from_static(b"tail")).is_none());
        assert_eq!(batcher.finish().expect("the rest"), Bytes::from_static(b"tail"));
        assert!(Batcher::new().finish().is_none());
    }
}
