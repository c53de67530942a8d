//! From the async request body to the blocking converter, with bounded memory.
//!
//! [`produce`] reads body chunks (raw body or the `file` part of a multipart form), hashes
//! them when an end-to-end checksum was sent, gathers them into pieces of
//! [`importer::pipe::PIECE_BYTES`] and sends them into a channel of
//! [`importer::pipe::CHANNEL_PIECES`] (≈ 4 MiB in flight). The end marker is sent only after
//! the whole body arrived and the checksum matched, so the converter can never take a
//! truncated or corrupted body for a complete one: [`ChannelReader`] (shared with the
//! importer) reports an error instead of end-of-file when the producer stops without it.

use std::time::Duration;

use bytes::Bytes;
use importer::pipe::Batcher;
pub(crate) use importer::pipe::{CHANNEL_PIECES, ChannelReader, Piece};
use importer::{Checksum, Hasher};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Most bytes read and thrown away after the converter refused the image, so that the client
/// (which is still sending) reads our answer instead of a reset connection.
pub(crate) const DRAIN_LIMIT_BYTES: u64 = 64 << 20;

/// A source of body chunks: the raw body or one multipart field.
pub(crate) trait Chunks: Send {
    /// Whether the chunks are the whole request body, so that its `Content-Length` is their
    /// length (a multipart field is only part of it).
    const WHOLE_BODY: bool = false;

    /// The next chunk, `None` at the end, or the HTTP layer's error text.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, String>> + Send;
}

impl Chunks for axum::body::BodyDataStream {
    const WHOLE_BODY: bool = true;

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
    let mut hasher: Option<Hasher> = opts.checksum.as_ref().map(Checksum::hasher);
    let mut batch = Batcher::new();
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
        let Some(piece) = batch.push(bytes) else { continue };
        (opts.progress)(received);
        if tx.send(Piece::Data(piece)).await.is_err() {
            return Ok((Outcome::ReceiverGone, received));
        }
    }
    (opts.progress)(received);
    if let Some(piece) = batch.finish()
        && tx.send(Piece::Data(piece)).await.is_err()
    {
        return Ok((Outcome::ReceiverGone, received));
    }
    if let (Some(expected), Some(h)) = (&opts.checksum, hasher) {
        expected.verify(h).map_err(|e| match e {
            importer::Error::Checksum { expected, actual } => Error::Checksum { expected, actual },
            other => Error::Internal(other.to_string()),
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

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
