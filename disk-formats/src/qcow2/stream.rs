//! Converting a qcow2 while it streams in, without a scratch copy of its plain data.
//!
//! A qcow2 arriving over the network (an upload) comes in file order. qemu-img writes an image
//! with its L1 table near the start and each L2 table before the data clusters it maps, so by
//! the time a data cluster arrives, the L2 entry saying where it belongs in the guest has
//! usually arrived already. The [`Router`] watches the bytes go by: it decodes the header, the
//! active L1 entries and the L2 tables they name, and sends every run of plain data whose place
//! is known straight to its guest offset in the target (through the converter's aligned
//! windows and writer thread: zero blocks stay holes, data is written however the target
//! writes, directly or through its bounded cache). Every other byte (metadata, compressed
//! clusters, data that came before its table) is handed back to the caller for the scratch
//! file, at its file offset.
//!
//! The router is an optimisation, never a judge: it never refuses anything. Whatever it does
//! not understand (internal snapshots, a backing file, an entry it cannot decode, two tables
//! claiming the same cluster) makes it stop routing, and the scratch file then receives
//! everything. The verdict stays with the engine: [`Residual`] wraps the ordinary
//! [`super::Qcow2Image`] opened over the scratch file (with every check it makes) and maps the
//! image *minus what was routed*: a data run the router already wrote to exactly that guest
//! offset maps as unallocated, so converting the residual image writes everything else (and
//! re-checks every table). A run the router wrote to a different guest offset than the engine
//! maps it to (a host cluster used twice: only internal snapshots share clusters, and an image
//! with snapshots is never routed) is refused as a corrupt image.
//!
//! ## Main types
//! - [`route`]: runs a [`Router`] and its writer thread around the caller's receive loop.
//! - [`Router::route`]: takes the next bytes of the stream.
//! - [`Routed`]: the record of what was routed (host run → guest run), shared with
//!   [`Residual`].
//! - [`Residual`]: the image minus the routed data, for `convert_image`.
//!
//! ## Caveats
//! - The target must read zeros where nothing was written (a new file): the residual
//!   conversion leaves routed ranges alone, and a block device would need them zeroed.
//! - [`Residual::map`] waits (through the caller's `arrived`) until the data it maps has
//!   passed the router, so that the record of routed runs is final for it.
//! - Past `MAX_PENDING_RUNS` (65 536) data runs waiting for their bytes, further runs are not
//!   remembered (they go to the scratch file), and a host cluster claimed twice is then no
//!   longer seen as such: if the later claim is routed, the image is refused as corrupt where
//!   the engine alone would read the cluster twice. Only a hostile layout gets there; nothing
//!   wrong is written.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{PoisonError, RwLock};

use crate::convert::{self, Batch, Buffers, ConvertOptions};
use crate::image::{Image, ImageInfo, Segment, SegmentKind};
use crate::io::{ReadAt, WriteAt};
use crate::{Error, Result};

use super::header::{self, Header};
use super::table::{self, Cluster, Geometry, Piece};
use super::{L1_ENTRY_BYTES, SECTOR_BYTES};

/// Most runs of data whose L2 entry arrived but whose bytes have not: each costs a map entry.
/// An image laid out by qemu-img has a few at a time; beyond this, further runs are left to
/// the scratch file (and converted from there), so memory stays bounded for any layout.
const MAX_PENDING_RUNS: usize = 1 << 16;

/// Bytes of cluster 0 that name its size (magic, version, cluster bits).
const PEEK_BYTES: usize = 24;

/// Window buffers are placed at multiples of this in guest space (with the buffer's own
/// alignment, the target can write their middle directly).
const WINDOW_ALIGN: u64 = 4096;

/// A run of guest bytes stored contiguously on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    guest: u64,
    len: u64,
}

/// What the router wrote to the target: host runs and the guest offsets they went to.
#[derive(Debug, Default)]
pub struct Routed {
    /// Host offset → run, non-overlapping, coalesced where host and guest both continue.
    runs: RwLock<BTreeMap<u64, Run>>,
    bytes: AtomicU64,
    /// Of those, bytes written as data (the rest were zero blocks, left as holes).
    data_bytes: AtomicU64,
}

/// Where a host offset stands in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Inside the run starting at host `start`.
    Inside { start: u64, run: Run },
    /// Not routed; the next routed run starts at this host offset, if any.
    Outside { next: Option<u64> },
}

impl Routed {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes routed to the target (zero blocks included).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Bytes of those written as data (zero blocks stay holes), once [`route`] returned.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes.load(Ordering::Relaxed)
    }

    fn insert(&self, host: u64, guest: u64, len: u64) {
        self.bytes.fetch_add(len, Ordering::Relaxed);
        let mut runs = self.runs.write().unwrap_or_else(PoisonError::into_inner);
        if let Some((&start, run)) = runs.range_mut(..host).next_back()
            && start + run.len == host
            && run.guest + run.len == guest
        {
            run.len += len;
            return;
        }
        runs.insert(host, Run { guest, len });
    }

    fn lookup(&self, host: u64) -> Lookup {
        let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((&start, &run)) = runs.range(..=host).next_back()
            && host < start + run.len
        {
            return Lookup::Inside { start, run };
        }
        let next = runs.range(host..).next().map(|(&start, _)| start);
        Lookup::Outside { next }
    }
}

/// Runs a [`Router`] for a stream of `file_size` bytes into `target` (which must read zeros
/// where nothing was written) around `receive`, which feeds it every byte of the stream in
/// order. Returns `receive`'s result once every routed byte is written.
///
/// # Errors
/// `receive`'s error first (the stream's own failure explains any other), else the writer's
/// (a write to the target failed).
pub fn route<T, E>(
    target: &dyn WriteAt,
    routed: &Routed,
    file_size: u64,
    receive: impl FnOnce(&mut Router<'_>) -> std::result::Result<T, E>,
) -> std::result::Result<T, E>
where
    E: From<Error>,
{
    let data_bytes = AtomicU64::new(0);
    let mut outcome = None;
    let written = convert::pipeline(target, &ConvertOptions::default(), None, &data_bytes, |tx, buffers| {
        let mut router = Router::new(tx, buffers, routed, file_size);
        let received = receive(&mut router);
        let shipped = if received.is_ok() { router.finish() } else { Ok(()) };
        outcome = Some(received);
        shipped
    });
    routed.data_bytes.fetch_add(data_bytes.into_inner(), Ordering::Relaxed);
    match outcome {
        Some(Err(e)) => Err(e),
        Some(Ok(value)) => written.map(|()| value).map_err(E::from),
        None => Err(E::from(written.err().unwrap_or_else(|| Error::invalid("the qcow2 router did not run")))),
    }
}

/// Sends the plain data of a qcow2 stream to its guest offsets as it arrives; see the module
/// documentation.
pub struct Router<'a> {
    tx: &'a SyncSender<Batch>,
    buffers: &'a Buffers,
    routed: &'a Routed,
    file_size: u64,
    /// File offset of the next byte.
    pos: u64,
    state: State,
    window: Option<Batch>,
}

impl std::fmt::Debug for Router<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("pos", &self.pos).field("routed", &self.routed.bytes()).finish()
    }
}

enum State {
    /// Gathering cluster 0.
    Header(Vec<u8>),
    /// Following the tables.
    Tables(Box<Tables>),
    /// Routing nothing more: every further byte goes to the scratch file.
    Passive,
}

/// What the router knows of the image once its header arrived.
struct Tables {
    geo: Geometry,
    version: u32,
    virtual_size: u64,
    file_size: u64,
    /// File range of the active L1 entries, and their bytes gathered so far.
    l1_start: u64,
    l1_end: u64,
    l1: Vec<u8>,
    /// Metadata the data must not overlap (header cluster, refcount table, whole L1 table).
    metadata: Vec<(u64, u64)>,
    /// L2 tables named by the L1 that have not arrived yet: host offset → guest base.
    expected: BTreeMap<u64, u64>,
    /// The L2 table arriving now: host offset, guest base, bytes so far.
    current: Option<(u64, u64, Vec<u8>)>,
    /// Data runs whose L2 entry arrived and whose bytes have not: host offset → run.
    pending: BTreeMap<u64, Run>,
}

impl<'a> Router<'a> {
    fn new(tx: &'a SyncSender<Batch>, buffers: &'a Buffers, routed: &'a Routed, file_size: u64) -> Self {
        Self { tx, buffers, routed, file_size, pos: 0, state: State::Header(Vec::new()), window: None }
    }

    /// Takes the next `data` of the stream: routes what it can and passes every other byte to
    /// `spill` with its file offset (in order, possibly in several parts).
    ///
    /// # Errors
    /// `spill`'s errors (as I/O errors), and a failed writer thread.
    pub fn route(&mut self, data: &[u8], spill: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>) -> Result<()> {
        let start = self.pos;
        let end = start + data.len() as u64;
        self.observe(start, data);
        let mut at = start;
        while at < end {
            let Some((host, run)) = self.next_pending(at, end) else { break };
            if host > at {
                spill_part(spill, start, data, at, host)?;
            }
            let part_end = (host + run.len).min(end);
            let bytes = &data[(host - start) as usize..(part_end - start) as usize];
            self.place(run.guest, bytes)?;
            self.routed.insert(host, run.guest, part_end - host);
            if let State::Tables(tables) = &mut self.state {
                tables.pending.remove(&host);
                if part_end < host + run.len {
                    let rest = Run { guest: run.guest + (part_end - host), len: host + run.len - part_end };
                    tables.pending.insert(part_end, rest);
                }
            }
            at = part_end;
        }
        if at < end {
            spill_part(spill, start, data, at, end)?;
        }
        self.pos = end;
        Ok(())
    }

    /// The first pending data run starting in `[at, end)`. Runs are recorded only for data
    /// not yet arrived and never overlap, and each is consumed (or cut to its unarrived rest)
    /// as its bytes pass: none starts before `at`.
    fn next_pending(&self, at: u64, end: u64) -> Option<(u64, Run)> {
        let State::Tables(tables) = &self.state else { return None };
        tables.pending.range(at..end).next().map(|(&host, &run)| (host, run))
    }

    /// Copies `bytes` (guest offset `guest`) into the current window, shipping full windows.
    fn place(&mut self, mut guest: u64, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            // A window fills upwards: data for a lower guest offset starts a new one.
            let fits = self
                .window
                .as_ref()
                .is_some_and(|w| guest >= w.offset + w.len as u64 && guest < w.offset + w.buf.len() as u64);
            if !fits {
                self.ship()?;
                let buf = self.buffers.take();
                self.window =
                    Some(Batch { offset: guest - guest % WINDOW_ALIGN, len: 0, buf, segments: Vec::new() });
            }
            let Some(window) = self.window.as_mut() else { return Ok(()) };
            let at = (guest - window.offset) as usize;
            let n = bytes.len().min(window.buf.len() - at);
            window.buf[at..at + n].copy_from_slice(&bytes[..n]);
            match window.segments.last_mut() {
                Some(last) if last.offset + last.len == guest => last.len += n as u64,
                _ => {
                    window.segments.push(Segment { offset: guest, len: n as u64, kind: SegmentKind::Encoded })
                }
            }
            window.len = at + n;
            guest += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Sends the current window to the writer.
    fn ship(&mut self) -> Result<()> {
        let Some(window) = self.window.take() else { return Ok(()) };
        if window.segments.is_empty() {
            return Ok(());
        }
        self.tx
            .send(window)
            .map_err(|_| Error::io("routing qcow2 data", io::Error::other("the writer stopped")))
    }

    /// Ships the last window.
    fn finish(mut self) -> Result<()> {
        self.ship()
    }

    /// Feeds the header, L1 and L2 bytes inside `data` (at file offset `start`) to their
    /// decoders, in file order.
    fn observe(&mut self, start: u64, data: &[u8]) {
        let end = start + data.len() as u64;
        let mut at = start;
        while at < end {
            let slice = |from: u64, to: u64| &data[(from - start) as usize..(to - start) as usize];
            let next = match &mut self.state {
                State::Passive => return,
                State::Header(head) => {
                    // Cluster 0 is gathered whole (its size is in its first 24 bytes).
                    let (want, sized) = match header::peek_cluster_bits(head) {
                        Ok(bits) => ((1u64 << bits).min(self.file_size), true),
                        Err(_) if head.len() < PEEK_BYTES => (PEEK_BYTES as u64, false),
                        Err(_) => {
                            self.state = State::Passive;
                            return;
                        }
                    };
                    let to = want.min(end);
                    if to < at || (to == at && head.len() as u64 != want) {
                        self.state = State::Passive;
                        return;
                    }
                    head.extend_from_slice(slice(at, to));
                    if sized && head.len() as u64 >= want {
                        self.state = start_tables(head, self.file_size);
                    }
                    to
                }
                State::Tables(tables) => match tables.next_region(at, end) {
                    None => return,
                    Some((from, to)) => {
                        let bytes = slice(from, to);
                        if !tables.take(from, bytes, to) {
                            self.state = State::Passive;
                            return;
                        }
                        to
                    }
                },
            };
            at = next;
        }
    }
}

fn spill_part(
    spill: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
    start: u64,
    data: &[u8],
    from: u64,
    to: u64,
) -> Result<()> {
    spill(from, &data[(from - start) as usize..(to - start) as usize])
        .map_err(|e| Error::io("writing the qcow2 scratch file", e))
}

/// Decodes cluster 0 and sets up the table following; `Passive` for anything not routed.
fn start_tables(cluster0: &[u8], file_size: u64) -> State {
    let Ok(header) = Header::parse(cluster0) else { return State::Passive };
    if header.has_backing_file() || header.check_features().is_err() || header.nb_snapshots > 0 {
        return State::Passive;
    }
    let geo = Geometry { cluster_bits: header.cluster_bits, extended: header.extended_l2() };
    let Ok(l1_entries) = super::check_l1_size(&header, geo) else { return State::Passive };
    let cluster_size = geo.cluster_size();
    let virtual_size = header.size / SECTOR_BYTES * SECTOR_BYTES;
    let active = virtual_size.div_ceil(1u64 << geo.l1_coverage_bits()).min(l1_entries);
    let l1_start = header.l1_table_offset;
    let refcount_end =
        header.refcount_table_offset.checked_add(u64::from(header.refcount_table_clusters) * cluster_size);
    let l1_full_end = l1_start.checked_add(l1_entries * L1_ENTRY_BYTES);
    let (Some(refcount_end), Some(l1_full_end)) = (refcount_end, l1_full_end) else { return State::Passive };
    if l1_start < cluster_size || l1_full_end > file_size {
        return State::Passive;
    }
    State::Tables(Box::new(Tables {
        geo,
        version: header.version,
        virtual_size,
        file_size,
        l1_start,
        l1_end: l1_start + active * L1_ENTRY_BYTES,
        l1: Vec::new(),
        metadata: vec![
            (0, cluster_size),
            (header.refcount_table_offset, refcount_end),
            (l1_start, l1_full_end),
        ],
        expected: BTreeMap::new(),
        current: None,
        pending: BTreeMap::new(),
    }))
}

impl Tables {
    /// The next range of `[at, end)` holding table bytes: the L1 entries or an L2 table.
    fn next_region(&self, at: u64, end: u64) -> Option<(u64, u64)> {
        let cluster_size = self.geo.cluster_size();
        let mut best: Option<(u64, u64)> = None;
        let mut consider = |from: u64, to: u64| {
            let (from, to) = (from.max(at), to.min(end));
            if from < to && best.is_none_or(|(b, _)| from < b) {
                best = Some((from, to));
            }
        };
        if (self.l1.len() as u64) < self.l1_end - self.l1_start {
            consider(self.l1_start, self.l1_end);
        }
        if let Some((host, _, _)) = &self.current {
            consider(*host, host + cluster_size);
        }
        if let Some((&host, _)) = self.expected.range(at..end).next() {
            consider(host, host + cluster_size);
        }
        best
    }

    /// Takes table `bytes` at file offset `from` (ending at `to`); false when the router
    /// should stop routing.
    fn take(&mut self, from: u64, bytes: &[u8], to: u64) -> bool {
        let cluster_size = self.geo.cluster_size();
        if from >= self.l1_start && to <= self.l1_end && (self.l1.len() as u64) < self.l1_end - self.l1_start
        {
            if from != self.l1_start + self.l1.len() as u64 {
                return false;
            }
            self.l1.extend_from_slice(bytes);
            if to == self.l1_end {
                return self.expect_l2_tables(to);
            }
            return true;
        }
        if self.current.is_none() {
            let Some(guest_base) = self.expected.remove(&from) else { return false };
            self.current = Some((from, guest_base, Vec::with_capacity(cluster_size as usize)));
        }
        let Some((host, guest_base, table)) = &mut self.current else { return false };
        if from != *host + table.len() as u64 {
            return false;
        }
        table.extend_from_slice(bytes);
        if (table.len() as u64) < cluster_size {
            return true;
        }
        let (guest_base, words) = (*guest_base, table::decode_words(table));
        self.current = None;
        self.expect_data(&words, guest_base, to)
    }

    /// Decodes the gathered L1 entries; L2 tables still to come are expected.
    fn expect_l2_tables(&mut self, pos: u64) -> bool {
        let cluster_size = self.geo.cluster_size();
        let coverage_bits = self.geo.l1_coverage_bits();
        for (index, raw) in table::decode_words(&self.l1).into_iter().enumerate() {
            let guest = (index as u64) << coverage_bits;
            let Ok(host) = table::decode_l1(raw, index as u64, guest) else { return false };
            let Some(host) = host else { continue };
            let placed = host.is_multiple_of(cluster_size)
                && host >= pos
                && host.checked_add(cluster_size).is_some_and(|end| end <= self.file_size)
                && !self.overlaps_metadata(host, cluster_size)
                && !self.overlaps_pending(host, cluster_size);
            if !placed || self.expected.insert(host, guest).is_some() {
                // Left to the engine: it checks the placement itself, and a table named twice
                // is read from the scratch file.
                return false;
            }
        }
        true
    }

    /// Decodes an L2 table (guest base `guest_base`) that ended at file offset `pos`: its data
    /// runs still to come become pending.
    fn expect_data(&mut self, words: &[u64], guest_base: u64, pos: u64) -> bool {
        let cluster_size = self.geo.cluster_size();
        let per_entry = self.geo.words_per_entry();
        for (index, entry) in words.chunks_exact(per_entry).enumerate() {
            let guest = guest_base + ((index as u64) << self.geo.cluster_bits);
            if guest >= self.virtual_size {
                break;
            }
            let Ok(cluster) = Cluster::decode(self.geo, self.version, entry, guest) else { return false };
            if let Some(host) = cluster.host_cluster()
                && (!host.is_multiple_of(cluster_size) || self.overlaps_metadata(host, cluster_size))
            {
                return false;
            }
            let visible = cluster_size.min(self.virtual_size - guest);
            let mut in_cluster = 0;
            while in_cluster < visible {
                let (piece, piece_end) = cluster.piece_at(self.geo, in_cluster);
                let len = piece_end.min(visible) - in_cluster;
                if let Piece::Data { host } = piece
                    && host >= pos
                    && !self.add_pending(host, guest + in_cluster, len)
                {
                    return false;
                }
                in_cluster += len;
            }
        }
        true
    }

    /// Records a pending data run; false when it overlaps one already pending (a host cluster
    /// used twice) or an L2 table still to come (routing it would keep the table's bytes from
    /// the engine). Beyond [`MAX_PENDING_RUNS`] the run is left to the scratch file.
    fn add_pending(&mut self, host: u64, guest: u64, len: u64) -> bool {
        if self.overlaps_table(host, len) {
            return false;
        }
        if let Some((&start, run)) = self.pending.range_mut(..=host).next_back() {
            if start + run.len > host {
                return false;
            }
            if start + run.len == host && run.guest + run.len == guest {
                run.len += len;
                return self.pending.range(host + 1..host + len).next().is_none();
            }
        }
        if self.pending.range(host..host + len).next().is_some() {
            return false;
        }
        if self.pending.len() < MAX_PENDING_RUNS {
            self.pending.insert(host, Run { guest, len });
        }
        true
    }

    /// Whether `[host, host + len)` overlaps an L2 table that is expected or arriving.
    fn overlaps_table(&self, host: u64, len: u64) -> bool {
        let cluster_size = self.geo.cluster_size();
        let end = host.saturating_add(len);
        let overlaps = |table: u64| table < end && host < table + cluster_size;
        self.current.as_ref().is_some_and(|(table, _, _)| overlaps(*table))
            || self.expected.range(..end).next_back().is_some_and(|(&table, _)| overlaps(table))
    }

    /// Whether `[host, host + len)` overlaps a pending data run.
    fn overlaps_pending(&self, host: u64, len: u64) -> bool {
        let end = host.saturating_add(len);
        self.pending.range(..end).next_back().is_some_and(|(&start, run)| start + run.len > host)
    }

    fn overlaps_metadata(&self, host: u64, len: u64) -> bool {
        let end = host.saturating_add(len);
        self.metadata.iter().any(|&(start, stop)| host < stop && start < end)
    }
}

/// The image minus what a [`Router`] wrote: data runs routed to exactly the guest offset the
/// engine maps them to read as unallocated (they are in the target already); everything else
/// is the inner image's. Convert it into the router's target to complete the conversion.
pub struct Residual<'a> {
    inner: Box<dyn Image>,
    routed: &'a Routed,
    arrived: &'a (dyn Fn(u64) -> io::Result<()> + Send + Sync),
}

impl std::fmt::Debug for Residual<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Residual").field("routed", &self.routed.bytes()).finish_non_exhaustive()
    }
}

impl<'a> Residual<'a> {
    /// `inner`: the qcow2 opened over the scratch file the router spilled into; `arrived(end)`
    /// blocks until every byte of the stream below `end` has passed the router (or fails when
    /// the stream broke off).
    pub fn new(
        inner: Box<dyn Image>,
        routed: &'a Routed,
        arrived: &'a (dyn Fn(u64) -> io::Result<()> + Send + Sync),
    ) -> Self {
        Self { inner, routed, arrived }
    }
}

impl Image for Residual<'_> {
    fn info(&self) -> ImageInfo {
        self.inner.info()
    }

    fn virtual_size(&self) -> u64 {
        self.inner.virtual_size()
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Segment> {
        let seg = self.inner.map(offset, max_len)?;
        let SegmentKind::Data { host } = seg.kind else { return Ok(seg) };
        let end = host.saturating_add(seg.len);
        (self.arrived)(end).map_err(|e| {
            Error::io(format!("waiting for the data of guest offset {offset} at host offset {host}"), e)
        })?;
        match self.routed.lookup(host) {
            Lookup::Inside { start, run } => {
                let len = (start + run.len - host).min(seg.len);
                let routed_to = run.guest + (host - start);
                if routed_to != offset {
                    return Err(Error::invalid(format!(
                        "data cluster at host offset {host} is used by guest offsets {routed_to} and {offset}: the image is corrupt (only internal snapshots share clusters)"
                    )));
                }
                Ok(Segment { offset, len, kind: SegmentKind::Unallocated })
            }
            Lookup::Outside { next } => {
                let len = next.map_or(seg.len, |next| (next - host).min(seg.len));
                Ok(Segment { offset, len, kind: seg.kind })
            }
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        // Routed data is absent from the scratch file (a hole), so it reads as zeros, as `map`
        // says; everything else reads as in the image.
        self.inner.read_at(buf, offset)
    }

    fn data_source(&self) -> &dyn ReadAt {
        self.inner.data_source()
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
