//! Sequential download with transparent resume, and the bridge from the async body to the
//! blocking converter.
//!
//! [`Body`] yields the object's bytes in order. When the connection drops, a read times out or
//! the server answers 5xx, it asks again for `Range: bytes=N-` where N is the first byte not yet
//! handed on, after a capped exponential back-off, and checks that ETag, Last-Modified and size
//! did not change. A server that ignores the Range (200 instead of 206) is skipped forward to N.
//!
//! [`produce`] pumps the body into a bounded channel, hashing every byte in order (the
//! checksum is checked *before* the end-of-stream marker is sent, so a mismatch can never look
//! like a complete stream); the blocking `Read` end the converter consumes is
//! [`crate::pipe::ChannelReader`] (shared with the uploader). At most [`CHANNEL_CHUNKS`] ×
//! [`CHUNK_BYTES`] bytes wait in between.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use reqwest::{Response, StatusCode, Url};
use tokio::sync::mpsc;

use super::{ContentRange, Http, Validator, network_error};
use crate::checksum::Checksum;
use crate::error::{Error, Result};
use crate::pipe::Batcher;
use crate::progress::Progress;

pub(crate) use crate::pipe::{
    CHANNEL_PIECES as CHANNEL_CHUNKS, ChannelReader, PIECE_BYTES as CHUNK_BYTES, Piece,
};

/// What the first response told us about the object.
#[derive(Debug, Clone)]
pub(crate) struct BodyInfo {
    /// Size of the whole object, when announced.
    pub(crate) total: Option<u64>,
    /// The server answered our `Range: bytes=0-` with 206: it serves ranges.
    pub(crate) ranged: bool,
    /// The URL after redirects.
    pub(crate) final_url: Url,
    /// The version seen first.
    pub(crate) validator: Validator,
}

/// The object's bytes in order, resuming across failures.
#[derive(Debug)]
pub(crate) struct Body {
    http: Arc<Http>,
    progress: Arc<Progress>,
    response: Option<Response>,
    info: BodyInfo,
    /// Bytes handed out by [`Body::next`] so far.
    offset: u64,
    /// Bytes of the current response to discard (its server ignored our Range).
    skip: u64,
    /// The first request succeeded: later ones resume.
    started: bool,
    /// Consecutive failures without a byte received.
    failures: u32,
    last_error: Option<Error>,
}

impl Body {
    /// Sends the first request (`Range: bytes=0-`, which both starts the download and tells
    /// whether the server serves ranges), retrying transient failures.
    pub(crate) async fn open(http: Arc<Http>, progress: Arc<Progress>) -> Result<Self> {
        let info = BodyInfo {
            total: None,
            ranged: false,
            final_url: http.url().clone(),
            validator: Validator::default(),
        };
        let mut body = Self {
            http,
            progress,
            response: None,
            info,
            offset: 0,
            skip: 0,
            started: false,
            failures: 0,
            last_error: None,
        };
        body.connect().await?;
        Ok(body)
    }

    pub(crate) fn info(&self) -> &BodyInfo {
        &self.info
    }

    /// The next bytes of the object, or `None` at its end.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.info.total.is_some_and(|t| self.offset >= t) {
                self.response = None;
                return Ok(None);
            }
            let Some(response) = self.response.as_mut() else {
                self.connect().await?;
                continue;
            };
            match response.chunk().await {
                Ok(Some(mut bytes)) => {
                    self.progress.add_downloaded(bytes.len() as u64);
                    if self.skip > 0 {
                        let k = usize::try_from(self.skip).unwrap_or(usize::MAX).min(bytes.len());
                        bytes.advance(k);
                        self.skip -= k as u64;
                    }
                    if bytes.is_empty() {
                        continue;
                    }
                    let end = self.offset + bytes.len() as u64;
                    if let Some(total) = self.info.total
                        && end > total
                    {
                        return Err(Error::Protocol {
                            url: self.http.url().to_string(),
                            message: format!("the server sent more than the announced {total} bytes"),
                        });
                    }
                    self.offset = end;
                    self.failures = 0;
                    return Ok(Some(bytes));
                }
                Ok(None) => {
                    self.response = None;
                    match self.info.total {
                        Some(total) if self.offset < total => self.fail(Error::Network {
                            what: format!("connection closed at byte {} of {total} by", self.offset),
                            url: self.http.url().to_string(),
                            retryable: true,
                            source: None,
                        })?,
                        _ => return Ok(None),
                    }
                }
                Err(e) => {
                    self.response = None;
                    let what = format!("reading byte {} of", self.offset);
                    self.fail(network_error(&what, self.http.url(), e))?;
                }
            }
        }
    }

    /// Records a failure: permanent ones are returned, transient ones counted for the next
    /// [`Body::connect`].
    fn fail(&mut self, err: Error) -> Result<()> {
        if !err.is_retryable() {
            return Err(err);
        }
        self.failures += 1;
        self.last_error = Some(err);
        Ok(())
    }

    /// (Re)connects from `self.offset`, backing off between attempts.
    async fn connect(&mut self) -> Result<()> {
        loop {
            if self.failures > 0 {
                let policy = self.http.retry();
                if self.failures > policy.max_retries {
                    let last = self.last_error.take().unwrap_or_else(|| Error::Network {
                        what: "transferring".into(),
                        url: self.http.url().to_string(),
                        retryable: true,
                        source: None,
                    });
                    if policy.max_retries == 0 {
                        return Err(last);
                    }
                    return Err(Error::RetriesExhausted {
                        retries: policy.max_retries,
                        offset: self.offset,
                        source: Box::new(last),
                    });
                }
                self.progress.add_retry();
                tokio::time::sleep(policy.backoff(self.failures)).await;
            }
            let attempt = if self.started { self.resume().await } else { self.start().await };
            match attempt {
                Ok(()) => return Ok(()),
                Err(e) => self.fail(e)?,
            }
        }
    }

    /// The first request: learn the size, whether ranges work, and the version.
    async fn start(&mut self) -> Result<()> {
        let url = self.http.url().clone();
        let response = self.http.get(&url, 0, None).await?;
        let (total, ranged) = if response.status() == StatusCode::PARTIAL_CONTENT {
            let range = ContentRange::of(&url, &response)?;
            if range.start != 0 {
                return Err(Error::Protocol {
                    url: url.to_string(),
                    message: format!("asked for bytes 0-, got {}-{}", range.start, range.end),
                });
            }
            (range.total, true)
        } else {
            (response.content_length(), false)
        };
        self.info = BodyInfo {
            total,
            ranged,
            final_url: response.url().clone(),
            validator: Validator::of(&response, total),
        };
        self.progress.set_total(total.unwrap_or(0));
        self.response = Some(response);
        self.started = true;
        Ok(())
    }

    /// A later request: continue at `self.offset` with the same version of the object.
    async fn resume(&mut self) -> Result<()> {
        let url = self.http.url().clone();
        let response = self.http.get(&url, self.offset, None).await?;
        if response.status() == StatusCode::PARTIAL_CONTENT {
            let range = ContentRange::of(&url, &response)?;
            self.info.validator.check(&url, &response, range.total)?;
            if range.start != self.offset {
                return Err(Error::Protocol {
                    url: url.to_string(),
                    message: format!("asked for bytes {}-, got {}-{}", self.offset, range.start, range.end),
                });
            }
            self.skip = 0;
        } else {
            // The server ignores ranges: read from the start again and drop what we have.
            self.info.validator.check(&url, &response, response.content_length())?;
            self.skip = self.offset;
        }
        self.response = Some(response);
        Ok(())
    }

    /// Reads at least `want` bytes (fewer only at the end of the object), returning them as
    /// the chunks received, to be replayed later.
    pub(crate) async fn read_head(&mut self, want: usize) -> Result<Vec<Bytes>> {
        let mut chunks = Vec::new();
        let mut have = 0;
        while have < want {
            let Some(bytes) = self.next().await? else { break };
            have += bytes.len();
            chunks.push(bytes);
        }
        Ok(chunks)
    }
}

/// How the producer stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// All bytes sent, checksum verified, end marker sent.
    Complete,
    /// The consumer went away first (it failed, or stopped reading).
    ReceiverGone,
}

/// Sends `replay` and then the rest of `body` into `tx`, hashing every byte in order.
pub(crate) async fn produce(
    mut body: Body,
    replay: Vec<Bytes>,
    checksum: Option<Checksum>,
    tx: mpsc::Sender<Piece>,
    progress: Arc<Progress>,
) -> Result<Outcome> {
    let mut hasher = checksum.as_ref().map(Checksum::hasher);
    let mut replay = replay.into_iter();
    let mut batch = Batcher::new();
    loop {
        let next = match replay.next() {
            Some(bytes) => Some(bytes),
            None => body.next().await?,
        };
        let Some(bytes) = next else { break };
        if let Some(h) = &mut hasher {
            h.update(&bytes);
        }
        progress.add_done(bytes.len() as u64);
        if let Some(piece) = batch.push(bytes)
            && tx.send(Piece::Data(piece)).await.is_err()
        {
            return Ok(Outcome::ReceiverGone);
        }
    }
    if let Some(piece) = batch.finish()
        && tx.send(Piece::Data(piece)).await.is_err()
    {
        return Ok(Outcome::ReceiverGone);
    }
    if let (Some(sum), Some(h)) = (&checksum, hasher) {
        sum.verify(h)?;
    }
    if tx.send(Piece::End).await.is_err() {
        return Ok(Outcome::ReceiverGone);
    }
    Ok(Outcome::Complete)
}
