//! From the async request body to the blocking converter, with bounded memory.
//!
//! [`produce`] reads body chunks (raw body or the `file` part of a multipart form), hashes
//! them when an end-to-end checksum was sent, gathers them into pieces of [`PIECE_BYTES`] and
//! sends them into a channel of [`CHANNEL_PIECES`] (≈ 4 MiB in flight). The end marker is sent
//! only after the whole body arrived and the checksum matched, so the converter can never take
//! a truncated or corrupted body for a complete one: [`ChannelReader`] reports an error
//! instead of end-of-file when the producer stops without the marker.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Small body chunks are gathered into pieces of this size before crossing the channel.
pub(crate) const PIECE_BYTES: usize = 256 << 10;

/// Pieces in flight between the network task and the converter (≈ 4 MiB).
pub(crate) const CHANNEL_PIECES: usize = 16;

/// Most bytes read and thrown away after the converter refused the image, so that the client
/// (which is still sending) reads our answer instead of a reset connection.
pub(crate) const DRAIN_LIMIT_BYTES: u64 = 64 << 20;

/// One piece crossing the channel.
#[derive(Debug)]
pub(crate) enum Piece {
    Data(Bytes),
    /// The whole body arrived and the checksum (if any) matched.
    End,
}

/// A source of body chunks: the raw body or one multipart field.
pub(crate) trait Chunks: Send {
    /// The next chunk, `None` at the end, or the HTTP layer's error text.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, String>> + Send;
}

impl Chunks for axum::body::BodyDataStream {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
        use futures_util::StreamExt;
        match self.next().await {
            None => Ok(None),
            Some(Ok(bytes)) => Ok(Some(bytes)),
            Some(Err(e)) => Err(error_chain(&e)),
        }
    }
}

impl Chunks for axum::extract::multipart::Field<'_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
        self.chunk().await.map_err(|e| e.body_text())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// An expected SHA-256 of the body as sent (`sha256:HEX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum([u8; 32]);

impl std::str::FromStr for Checksum {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = || Error::BadRequest(format!("checksum {text:?} is not sha256:<64 hex digits>"));
        let (algo, hex) = text.trim().split_once(':').ok_or_else(bad)?;
        if !algo.eq_ignore_ascii_case("sha256") || hex.len() != 64 {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| bad())?;
            digest[i] = u8::from_str_radix(text, 16).map_err(|_| bad())?;
        }
        Ok(Self(digest))
    }
}

impl Checksum {
    /// The SHA-256 of the file at `path` (read once, in 1 MiB pieces).
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be read.
    pub fn of_file(path: &std::path::Path) -> Result<Self> {
        let io = |e: io::Error| Error::Config(format!("reading {} for its checksum: {e}", path.display()));
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                return Ok(Self(hasher.finalize().into()));
            }
            hasher.update(&buf[..n]);
        }
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// How the producer stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// All bytes sent, checksum verified, end marker sent.
    Complete,
    /// The converter stopped reading first (it refused the image or failed).
    ReceiverGone,
}

/// Options of one producer run.
pub(crate) struct Produce<'a> {
    pub(crate) checksum: Option<Checksum>,
    /// A body that sends nothing for this long is treated as dropped.
    pub(crate) idle_timeout: Duration,
    /// Called with the total bytes received after each piece.
    pub(crate) progress: &'a (dyn Fn(u64) + Send + Sync),
}

/// Sends `body` into `tx`; returns the outcome and the bytes received.
///
/// # Errors
/// [`Error::Truncated`] when the body breaks off or stalls, [`Error::Checksum`] on mismatch.
pub(crate) async fn produce<C: Chunks>(
    body: &mut C,
    tx: &mpsc::Sender<Piece>,
    opts: &Produce<'_>,
) -> Result<(Outcome, u64)> {
    let mut hasher = opts.checksum.as_ref().map(|_| Sha256::new());
    let mut batch = BytesMut::new();
    let mut received = 0u64;
    loop {
        let next = tokio::time::timeout(opts.idle_timeout, body.next_chunk()).await;
        let bytes = match next {
            Err(_) => {
                let reason = format!("no data for {} s", opts.idle_timeout.as_secs());
                return Err(Error::Truncated { received, reason });
            }
            Ok(Err(reason)) => return Err(Error::Truncated { received, reason }),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(bytes))) => bytes,
        };
        received += bytes.len() as u64;
        if let Some(h) = &mut hasher {
            h.update(&bytes);
        }
        let piece = if batch.is_empty() && bytes.len() >= PIECE_BYTES {
            bytes
        } else {
            batch.extend_from_slice(&bytes);
            if batch.len() < PIECE_BYTES {
                continue;
            }
            batch.split().freeze()
        };
        (opts.progress)(received);
        if tx.send(Piece::Data(piece)).await.is_err() {
            return Ok((Outcome::ReceiverGone, received));
        }
    }
    (opts.progress)(received);
    if !batch.is_empty() && tx.send(Piece::Data(batch.freeze())).await.is_err() {
        return Ok((Outcome::ReceiverGone, received));
    }
    if let (Some(expected), Some(h)) = (&opts.checksum, hasher) {
        let actual = Checksum(h.finalize().into());
        if &actual != expected {
            return Err(Error::Checksum { expected: expected.to_string(), actual: actual.to_string() });
        }
    }
    if tx.send(Piece::End).await.is_err() {
        return Ok((Outcome::ReceiverGone, received));
    }
    Ok((Outcome::Complete, received))
}

/// Reads and discards up to `limit` more body bytes (errors end it quietly).
pub(crate) async fn drain<C: Chunks>(body: &mut C, limit: u64, idle: Duration) {
    let mut seen = 0u64;
    while seen < limit {
        match tokio::time::timeout(idle, body.next_chunk()).await {
            Ok(Ok(Some(bytes))) => seen += bytes.len() as u64,
            _ => return,
        }
    }
}

/// The blocking end of the channel: a `Read` for the converter. Clones share the position, so
/// the job can drain what the converter left unread (and see the end marker).
#[derive(Debug, Clone)]
pub(crate) struct ChannelReader(Arc<Mutex<ReaderState>>);

#[derive(Debug)]
struct ReaderState {
    rx: mpsc::Receiver<Piece>,
    current: Bytes,
    ended: bool,
}

impl ChannelReader {
    pub(crate) fn new(rx: mpsc::Receiver<Piece>) -> Self {
        Self(Arc::new(Mutex::new(ReaderState { rx, current: Bytes::new(), ended: false })))
    }

    /// Reads and discards the rest of the stream up to the end marker; returns the bytes left.
    pub(crate) fn drain(&mut self) -> io::Result<u64> {
        io::copy(self, &mut io::sink())
    }

    /// Stops receiving: the producer's next send fails (it then drains the body).
    pub(crate) fn close(&self) {
        if let Ok(mut state) = self.0.lock() {
            state.rx.close();
        }
    }
}

impl Read for ChannelReader {
    /// Must run outside the async runtime (it blocks on the channel).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self.0.lock().map_err(|_| io::Error::other("upload reader lock poisoned"))?;
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
                // Not `UnexpectedEof`: that would be reported as a truncated image. The job
                // reports the body's own error instead of this one.
                None => return Err(io::Error::other("the upload body stopped before its end")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_parse_and_print() {
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let sum: Checksum = format!("SHA256:{}", hex.to_uppercase()).parse().unwrap();
        assert_eq!(sum.to_string(), format!("sha256:{hex}"));
        assert!("md5:900150983cd24fb0d6963f7d28e17f72".parse::<Checksum>().is_err());
        assert!("sha256:abc".parse::<Checksum>().is_err());
        assert!(format!("sha256:{}", "g".repeat(64)).parse::<Checksum>().is_err());
    }

    struct Pieces(Vec<Result<Bytes, String>>);

    impl Chunks for Pieces {
        async fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
            if self.0.is_empty() { Ok(None) } else { self.0.remove(0).map(Some) }
        }
    }

    fn run(
        body: Vec<Result<Bytes, String>>,
        checksum: Option<Checksum>,
    ) -> (Result<(Outcome, u64)>, Vec<u8>, bool) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let (tx, rx) = mpsc::channel(CHANNEL_PIECES);
        let reader = std::thread::spawn(move || {
            let mut r = ChannelReader::new(rx);
            let mut out = Vec::new();
            let ok = r.read_to_end(&mut out).is_ok();
            (out, ok)
        });
        let opts = Produce { checksum, idle_timeout: Duration::from_secs(60), progress: &|_| {} };
        let result = rt.block_on(async {
            let r = produce(&mut Pieces(body), &tx, &opts).await;
            drop(tx);
            r
        });
        let (out, ok) = reader.join().unwrap();
        (result, out, ok)
    }

    #[test]
    fn a_complete_body_reaches_the_reader_with_its_end() {
        let (result, out, ended) =
            run(vec![Ok(Bytes::from_static(b"abc")), Ok(Bytes::from_static(b"def"))], None);

        assert_eq!(result.unwrap(), (Outcome::Complete, 6));
        assert_eq!(out, b"abcdef");
        assert!(ended);
    }

    #[test]
    fn a_broken_body_is_an_error_for_the_reader_too() {
        let (result, _, ended) =
            run(vec![Ok(Bytes::from_static(b"abc")), Err("connection reset".into())], None);

        assert!(matches!(result, Err(Error::Truncated { received: 3, .. })));
        assert!(!ended, "the reader must not see a clean end");
    }

    #[test]
    fn a_checksum_mismatch_withholds_the_end() {
        let wrong: Checksum = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        let (result, _, ended) = run(vec![Ok(Bytes::from_static(b"abc"))], Some(wrong));
        assert!(matches!(result, Err(Error::Checksum { .. })));
        assert!(!ended);

        let right: Checksum =
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".parse().unwrap();
        let (result, _, ended) = run(vec![Ok(Bytes::from_static(b"abc"))], Some(right));
        assert!(result.is_ok() && ended);
    }
}
