//! Random access to an HTTP object through Range requests: a [`ReadAt`] for the qcow2 reader.
//!
//! ## Design
//! The object is cut into blocks of [`RangeOptions::block_size`]. A read copies from cached
//! blocks; a miss fetches the whole block with one `Range: bytes=A-B` request on the tokio
//! runtime while the reading thread waits on a condition variable (the converter's reader
//! threads are plain threads, never runtime workers). When the block before the one asked
//! for is cached, reads look sequential and the next [`RangeOptions::readahead_blocks`] blocks
//! are fetched in parallel in the background, so `convert_image`, which reads a qcow2 in
//! guest order (≈ host order for images written by qemu-img), finds its data already there.
//! At most [`RangeOptions::cache_blocks`] blocks are kept; the least recently used goes first.
//!
//! Every response must be 206 for exactly the bytes asked, with the ETag / Last-Modified / size
//! seen by the first request; dropped connections and 5xx are retried with back-off, resuming
//! inside the block. The first permanent failure is kept (see [`HttpReadAt::take_failure`]) and
//! fails every later read, so the importer reports it rather than the reader's I/O error.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use disk_formats::ReadAt;
use reqwest::{StatusCode, Url};
use tokio::runtime::Handle;

use super::{ContentRange, Http, RangeOptions, Validator, network_error};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// An HTTP object read by Range requests, with a bounded block cache and readahead.
#[derive(Debug, Clone)]
pub(crate) struct HttpReadAt {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    http: Arc<Http>,
    url: Url,
    size: u64,
    validator: Validator,
    opts: RangeOptions,
    runtime: Handle,
    progress: Arc<Progress>,
    state: Mutex<CacheState>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct CacheState {
    blocks: HashMap<u64, Slot>,
    tick: u64,
    /// The first permanent failure, until the importer takes it.
    failure: Option<Error>,
    /// Its one-line text, kept for every later read.
    failed: Option<String>,
    /// Buffers of evicted blocks, reused for the next fetches: a steady set of block-sized
    /// buffers instead of a stream of 4 MiB allocations (which glibc's malloc tends to keep
    /// around in per-thread arenas).
    free: Vec<BytesMut>,
}

#[derive(Debug)]
enum Slot {
    Loading,
    Ready { data: Bytes, used: u64 },
}

impl HttpReadAt {
    /// A reader for `url` (already resolved through redirects) of `size` bytes, whose first
    /// response showed `validator`. Fetches run on `runtime`.
    pub(crate) fn new(
        http: Arc<Http>,
        url: Url,
        size: u64,
        validator: Validator,
        runtime: Handle,
        progress: Arc<Progress>,
    ) -> Self {
        let opts = http.range_options();
        let state = Mutex::new(CacheState::default());
        Self {
            shared: Arc::new(Shared {
                http,
                url,
                size,
                validator,
                opts,
                runtime,
                progress,
                state,
                ready: Condvar::new(),
            }),
        }
    }

    /// The first permanent failure of a fetch, if any (taken once).
    pub(crate) fn take_failure(&self) -> Option<Error> {
        lock(&self.shared.state).failure.take()
    }

    /// The cached bytes of block `index`, fetching it (and what follows, when reads are
    /// sequential) if needed.
    fn block(&self, index: u64) -> io::Result<Bytes> {
        let shared = &self.shared;
        let mut state = lock(&shared.state);
        loop {
            if let Some(message) = &state.failed {
                return Err(io::Error::other(message.clone()));
            }
            state.tick += 1;
            let tick = state.tick;
            match state.blocks.get_mut(&index) {
                Some(Slot::Ready { data, used }) => {
                    *used = tick;
                    let data = data.clone();
                    self.read_ahead(&mut state, index);
                    return Ok(data);
                }
                Some(Slot::Loading) => {}
                None => {
                    self.schedule(&mut state, index, true);
                    self.read_ahead(&mut state, index);
                }
            }
            state = shared.ready.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn blocks(&self) -> u64 {
        self.shared.size.div_ceil(self.shared.opts.block_size)
    }

    /// Fetches the blocks after `index` when the one before it is cached (a sequential reader).
    fn read_ahead(&self, state: &mut CacheState, index: u64) {
        let sequential = index == 0 || state.blocks.contains_key(&(index - 1));
        if !sequential {
            return;
        }
        let last = index
            .saturating_add(self.shared.opts.readahead_blocks as u64)
            .min(self.blocks().saturating_sub(1));
        for next in index + 1..=last {
            if !state.blocks.contains_key(&next) && !self.schedule(state, next, false) {
                break;
            }
        }
    }

    /// Marks `index` as loading and starts its fetch, evicting the least recently used ready
    /// block if the cache is full. A readahead (`demand == false`) is skipped when nothing can
    /// be evicted; a demand fetch goes ahead regardless (the cache overshoots by one block).
    fn schedule(&self, state: &mut CacheState, index: u64, demand: bool) -> bool {
        if state.blocks.len() >= self.shared.opts.cache_blocks {
            let victim = state
                .blocks
                .iter()
                .filter_map(|(i, slot)| match slot {
                    Slot::Ready { used, .. } => Some((*used, *i)),
                    Slot::Loading => None,
                })
                .min();
            match victim {
                Some((_, i)) => {
                    if let Some(Slot::Ready { data, .. }) = state.blocks.remove(&i)
                        && let Ok(mut buf) = data.try_into_mut()
                        && state.free.len() <= self.shared.opts.readahead_blocks
                    {
                        buf.clear();
                        state.free.push(buf);
                    }
                }
                None if !demand => return false,
                None => {}
            }
        }
        state.blocks.insert(index, Slot::Loading);
        let buf = state.free.pop().unwrap_or_default();
        let guard = Landing { shared: Arc::clone(&self.shared), index, landed: false };
        self.shared.runtime.spawn(async move {
            let result = guard.shared.fetch(index, buf).await;
            guard.land(result);
        });
        true
    }
}

/// Puts a fetched block (or the failure) into the cache and wakes the readers. Dropped
/// without landing (the runtime shut down under the fetch), it records a failure instead, so
/// no reader waits forever for a block that will never come.
struct Landing {
    shared: Arc<Shared>,
    index: u64,
    landed: bool,
}

impl Landing {
    fn land(mut self, result: Result<Bytes>) {
        self.landed = true;
        let mut state = lock(&self.shared.state);
        match result {
            Ok(data) => {
                state.tick += 1;
                let used = state.tick;
                state.blocks.insert(self.index, Slot::Ready { data, used });
            }
            Err(err) => {
                state.blocks.remove(&self.index);
                if state.failed.is_none() {
                    state.failed = Some(one_line(&err));
                    state.failure = Some(err);
                }
            }
        }
        drop(state);
        self.shared.ready.notify_all();
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        if self.landed {
            return;
        }
        let mut state = lock(&self.shared.state);
        state.blocks.remove(&self.index);
        if state.failed.is_none() {
            state.failed = Some(format!("reading a range of {} was cancelled", self.shared.url));
        }
        drop(state);
        self.shared.ready.notify_all();
    }
}

impl Shared {
    /// Fetches block `index` whole into `buf` (empty, possibly recycled), resuming inside the
    /// block after transient failures.
    async fn fetch(&self, index: u64, mut buf: BytesMut) -> Result<Bytes> {
        let start = index * self.opts.block_size;
        let end = start.saturating_add(self.opts.block_size).min(self.size);
        let len = usize::try_from(end - start).map_err(|_| Error::config("range block size too large"))?;
        buf.reserve(len);
        let mut failures = 0u32;
        loop {
            let before = buf.len();
            let last = match self.fetch_into(&mut buf, start, end - 1).await {
                Ok(()) => return Ok(buf.freeze()),
                Err(e) if e.is_retryable() => e,
                Err(e) => return Err(e),
            };
            failures = if buf.len() > before { 1 } else { failures + 1 };
            let policy = self.http.retry();
            if failures > policy.max_retries {
                if policy.max_retries == 0 {
                    return Err(last);
                }
                return Err(Error::RetriesExhausted {
                    retries: policy.max_retries,
                    offset: start + buf.len() as u64,
                    source: Box::new(last),
                });
            }
            self.progress.add_retry();
            tokio::time::sleep(policy.backoff(failures)).await;
        }
    }

    /// Appends bytes `[start + buf.len(), end]` (inclusive) to `buf` with one request.
    async fn fetch_into(&self, buf: &mut BytesMut, start: u64, end: u64) -> Result<()> {
        let from = start + buf.len() as u64;
        self.progress.add_range_request();
        let mut response = self.http.get(&self.url, from, Some(end)).await?;
        if response.status() != StatusCode::PARTIAL_CONTENT {
            return Err(Error::Protocol {
                url: self.url.to_string(),
                message: format!(
                    "answered {} to a Range request after serving ranges before",
                    response.status()
                ),
            });
        }
        let range = ContentRange::of(&self.url, &response)?;
        self.validator.check(&self.url, &response, range.total)?;
        if range.start != from || range.end != end {
            return Err(Error::Protocol {
                url: self.url.to_string(),
                message: format!("asked for bytes {from}-{end}, got {}-{}", range.start, range.end),
            });
        }
        let want = (end - start + 1) as usize;
        loop {
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    self.progress.add_downloaded(bytes.len() as u64);
                    if buf.len() + bytes.len() > want {
                        return Err(Error::Protocol {
                            url: self.url.to_string(),
                            message: format!(
                                "sent more than the {} bytes of range {from}-{end}",
                                end - from + 1
                            ),
                        });
                    }
                    buf.extend_from_slice(&bytes);
                }
                Ok(None) if buf.len() == want => return Ok(()),
                Ok(None) => {
                    return Err(Error::Network {
                        what: format!(
                            "connection closed at byte {} of range {from}-{end} of",
                            start + buf.len() as u64
                        ),
                        url: self.url.to_string(),
                        retryable: true,
                        source: None,
                    });
                }
                Err(e) => return Err(network_error("reading a range of", &self.url, e)),
            }
        }
    }
}

impl ReadAt for HttpReadAt {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let size = self.shared.size;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let len = usize::try_from(size - offset).map_or(buf.len(), |left| left.min(buf.len()));
        let block_size = self.shared.opts.block_size;
        let mut done = 0;
        while done < len {
            let pos = offset + done as u64;
            let index = pos / block_size;
            let data = self.block(index)?;
            let within = (pos - index * block_size) as usize;
            let n = (len - done).min(data.len().saturating_sub(within));
            if n == 0 {
                return Err(io::Error::other(format!("block {index} of {} is short", self.shared.url)));
            }
            buf[done..done + n].copy_from_slice(&data[within..within + n]);
            done += n;
        }
        Ok(len)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.shared.size)
    }
}

fn lock(state: &Mutex<CacheState>) -> MutexGuard<'_, CacheState> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The error and its causes on one line.
fn one_line(err: &Error) -> String {
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}
