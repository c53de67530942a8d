//! Read-only qcow2 engine (versions 2 and 3), byte-identical to `qemu-img convert -O raw`.
//!
//! ## Design
//! - `header.rs` parses the header and its extensions from the bytes of cluster 0 and applies
//!   the feature policy; `table.rs` decodes L1/L2 entries (standard and extended, with
//!   subclusters); `compressed.rs` decodes zlib and zstd clusters; `snapshot.rs` lists internal
//!   snapshots; `layout.rs` keeps data out of metadata; `cache.rs` holds L2 tables.
//! - [`Qcow2Image::open`] checks everything cheap up front: header fields, limits, placement of
//!   the L1, refcount and snapshot tables (aligned, inside the file, not overlapping) and every
//!   L1 entry of the active layer. Only the L1 entries that cover the virtual size are loaded
//!   (a 1 TiB image with 64 KiB clusters needs 16 KiB of them).
//! - L2 tables are read on demand into a byte-bounded LRU cache shared by all
//!   threads; each entry is checked when it is mapped (reserved bits, alignment, overlap with
//!   metadata, end of file), so [`Image::map`] and [`Image::read_at`] never read outside the
//!   file and never hand metadata to the guest.
//! - [`Image::map`] coalesces: contiguous host clusters become one `Data` run, runs of zero or
//!   unallocated clusters (a zero L1 entry covers a whole L2 table's range at once) one segment,
//!   and consecutive compressed clusters one `Encoded` segment.
//!
//! ## Security
//! Backing files and external data files are denied (the backing file's name is read only to
//! name it, escaped); encryption and unknown incompatible features are refused. A data cluster
//! whose guest-visible bytes lie past the end of the file is an error ("image is truncated"),
//! where qemu would read zeros; so is a compressed cluster that decodes to anything but exactly
//! one cluster.
//!
//! ## Caveats
//! The active layer is read via the header's L1 table; internal snapshots are listed, never
//! read. Refcounts are not read (they do not matter for reading), so the dirty and corrupt
//! bits are reported as features, not refused. The L1 table may be larger than the virtual
//! size needs (qemu keeps it after a shrink and for VM state); the extra entries are never
//! loaded, only checked to lie inside the file.

mod cache;
mod compressed;
pub mod encode;
mod header;
mod layout;
mod snapshot;
pub mod stream;
mod table;

#[cfg(test)]
mod builder;
#[cfg(test)]
mod qemu_tests;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::sync::Arc;

use crate::convert::direct::{AlignedBuf, DIRECT_ALIGN, DirectSource};
use crate::image::{Image, ImageInfo, Segment, SegmentKind, SnapshotInfo};
use crate::io::ReadAt;
use crate::limits;
use crate::{Error, OpenOptions, Result};

use cache::{L2Cache, L2Table};
use header::Header;
use layout::{Layout, Region};
use table::{Cluster, Geometry, Piece};

/// Bytes of one L1 entry.
const L1_ENTRY_BYTES: u64 = 8;
/// qemu exposes the virtual size in whole 512-byte sectors (it rounds the header's size down).
const SECTOR_BYTES: u64 = 512;
/// Bytes read first to learn the cluster size (the smallest cluster).
const PEEK_BYTES: u64 = 1 << header::MIN_CLUSTER_BITS;
/// Most host bytes of consecutive compressed clusters read with one call.
const COMPRESSED_SPAN_BYTES: u64 = 4 << 20;

thread_local! {
    /// Each reading thread's buffer for the stored bytes of a run of compressed clusters.
    static SPAN: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::new(0));
}

/// A qcow2 image opened read-only.
pub struct Qcow2Image {
    source: Arc<dyn ReadAt>,
    file_size: u64,
    header: Header,
    geo: Geometry,
    virtual_size: u64,
    /// Host offsets of the L2 tables covering the virtual size, 0 = none (checked at open).
    l1: Vec<u64>,
    layout: Layout,
    snapshots: Vec<SnapshotInfo>,
    cache: L2Cache,
    /// The image file opened for direct reads of compressed data, where possible.
    direct: Option<DirectSource>,
}

impl std::fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("version", &self.header.version)
            .field("cluster_size", &self.geo.cluster_size())
            .field("extended_l2", &self.geo.extended)
            .field("virtual_size", &self.virtual_size)
            .field("file_size", &self.file_size)
            .finish_non_exhaustive()
    }
}

/// A run of guest bytes inside one L1 entry's range that reads one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    len: u64,
    piece: Piece,
}

impl Qcow2Image {
    /// Opens and validates a qcow2 image.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::Denied`]: a backing file or an external data file.
    /// - [`crate::ErrorKind::Unsupported`]: encryption, unknown incompatible features, a version
    ///   other than 2 or 3.
    /// - [`crate::ErrorKind::TooLarge`]: virtual size above `opts.max_virtual_size`, L1 table,
    ///   refcount table or snapshot table above their limits in [`limits`].
    /// - [`crate::ErrorKind::InvalidImage`]: anything malformed: header fields, tables not
    ///   aligned, past the end of file or overlapping, bad L1 entries.
    pub fn open(source: Arc<dyn ReadAt>, opts: &OpenOptions) -> Result<Self> {
        let file_size = source.size().map_err(|e| Error::io("reading the size of the qcow2 image", e))?;
        let head = read_bytes(&*source, 0, PEEK_BYTES.min(file_size), "reading the qcow2 header")?;
        let cluster_bits = header::peek_cluster_bits(&head)?;
        let cluster0_len = (1u64 << cluster_bits).min(file_size);
        let cluster0 = if cluster0_len == head.len() as u64 {
            head
        } else {
            read_bytes(&*source, 0, cluster0_len, "reading qcow2 cluster 0")?
        };
        let header = Header::parse(&cluster0)?;
        if header.has_backing_file() {
            return Err(backing_file_denied(&*source, &header, file_size));
        }
        header.check_features()?;
        let geo = Geometry { cluster_bits, extended: header.extended_l2() };

        let virtual_size = header.size / SECTOR_BYTES * SECTOR_BYTES;
        if virtual_size > opts.max_virtual_size {
            return Err(Error::too_large(format!(
                "virtual size {virtual_size} bytes exceeds the limit of {} bytes",
                opts.max_virtual_size
            )));
        }
        let l1_entries = check_l1_size(&header, geo)?;
        let (layout, snapshots) = Self::check_layout(&*source, &header, file_size, virtual_size)?;
        let mut image = Qcow2Image {
            source,
            file_size,
            header,
            geo,
            virtual_size,
            l1: Vec::new(),
            layout,
            snapshots,
            cache: L2Cache::new(limits::L2_CACHE_BYTES),
            direct: None,
        };
        // Only the entries covering the (rounded-down) virtual size are ever used.
        let active = virtual_size.div_ceil(1u64 << geo.l1_coverage_bits()).min(l1_entries);
        image.l1 = image.load_l1(active)?;
        image.direct = image.source.as_file().and_then(DirectSource::open);
        Ok(image)
    }

    /// Checks the alignment, size and placement of the header cluster, refcount table, L1 table
    /// and snapshot table; reads the snapshot list.
    fn check_layout(
        source: &dyn ReadAt,
        header: &Header,
        file_size: u64,
        virtual_size: u64,
    ) -> Result<(Layout, Vec<SnapshotInfo>)> {
        let cluster_size = header.cluster_size();
        let aligned = |name: &str, offset: u64| {
            if offset.is_multiple_of(cluster_size) {
                Ok(())
            } else {
                Err(Error::invalid(format!(
                    "{name} offset {offset} is not aligned to the cluster size {cluster_size}"
                )))
            }
        };
        let mut layout = Layout::default();
        // Cluster 0 is the header's even where the file is shorter.
        layout.add(Region { name: "the image header", start: 0, end: cluster_size })?;

        aligned("refcount table", header.refcount_table_offset)?;
        let refcount_bytes = u64::from(header.refcount_table_clusters) * cluster_size;
        if refcount_bytes > limits::MAX_REFCOUNT_TABLE_BYTES {
            return Err(Error::too_large(format!(
                "refcount table of {refcount_bytes} bytes is larger than the limit of {} bytes",
                limits::MAX_REFCOUNT_TABLE_BYTES
            )));
        }
        layout.add(Region::new(
            "the refcount table",
            header.refcount_table_offset,
            refcount_bytes,
            file_size,
        )?)?;

        aligned("L1 table", header.l1_table_offset)?;
        let l1_bytes = u64::from(header.l1_size) * L1_ENTRY_BYTES;
        layout.add(Region::new("the L1 table", header.l1_table_offset, l1_bytes, file_size)?)?;

        let count = header.nb_snapshots;
        if count > limits::MAX_SNAPSHOTS {
            return Err(Error::too_large(format!(
                "image has {count} snapshots, more than the limit of {}",
                limits::MAX_SNAPSHOTS
            )));
        }
        let mut snapshots = Vec::new();
        if count > 0 {
            aligned("snapshot table", header.snapshots_offset)?;
            let (list, bytes) =
                snapshot::read_table(source, file_size, header.snapshots_offset, count, virtual_size)?;
            layout.add(Region::new("the snapshot table", header.snapshots_offset, bytes, file_size)?)?;
            snapshots = list;
        }
        Ok((layout, snapshots))
    }

    /// Reads the first `count` L1 entries and checks each L2 table's placement.
    fn load_l1(&self, count: u64) -> Result<Vec<u64>> {
        let bytes = read_bytes(
            &*self.source,
            self.header.l1_table_offset,
            count * L1_ENTRY_BYTES,
            "reading the L1 table",
        )?;
        let coverage_bits = self.geo.l1_coverage_bits();
        let mut l1 = Vec::with_capacity(bytes.len() / 8);
        for (index, raw) in table::decode_words(&bytes).into_iter().enumerate() {
            let guest = (index as u64) << coverage_bits;
            let host = table::decode_l1(raw, index as u64, guest)?;
            if let Some(host) = host {
                self.check_l2_placement(host, guest)?;
            }
            l1.push(host.unwrap_or(0));
        }
        Ok(l1)
    }

    fn check_l2_placement(&self, host: u64, guest: u64) -> Result<()> {
        let cluster_size = self.geo.cluster_size();
        let what = format!("L2 table for guest offset {guest} at host offset {host}");
        if !host.is_multiple_of(cluster_size) {
            return Err(Error::invalid(format!("{what} is not cluster-aligned")));
        }
        if host.checked_add(cluster_size).is_none_or(|end| end > self.file_size) {
            return Err(Error::invalid(format!(
                "image is truncated: {what} lies past end of file ({} bytes)",
                self.file_size
            )));
        }
        if let Some(name) = self.layout.overlapping(host, cluster_size) {
            return Err(Error::invalid(format!("{what} overlaps {name}")));
        }
        Ok(())
    }

    /// The L2 table at `host` (placement already checked), from the cache or the file.
    fn l2_table(&self, host: u64) -> Result<L2Table> {
        if let Some(table) = self.cache.get(host) {
            return Ok(table);
        }
        let what = || format!("reading the L2 table at host offset {host}");
        let bytes = read_bytes(&*self.source, host, self.geo.cluster_size(), &what())?;
        let table: L2Table = table::decode_words(&bytes).into();
        self.cache.insert(host, Arc::clone(&table));
        Ok(table)
    }

    /// Checks where a cluster's host offset points: aligned (uncompressed), inside the file
    /// (compressed start) and never into metadata.
    fn check_cluster(&self, cluster: Cluster, guest: u64) -> Result<()> {
        let cluster_size = self.geo.cluster_size();
        if let Cluster::Compressed { host, len } = cluster {
            let what = || format!("compressed cluster for guest offset {guest} at host offset {host}");
            if host >= self.file_size {
                return Err(Error::invalid(format!(
                    "image is truncated: {} lies past end of file ({} bytes)",
                    what(),
                    self.file_size
                )));
            }
            if let Some(name) = self.layout.overlapping(host, len) {
                return Err(Error::invalid(format!("{} overlaps {name}", what())));
            }
            return Ok(());
        }
        let Some(host) = cluster.host_cluster() else { return Ok(()) };
        let what = || format!("data cluster for guest offset {guest} at host offset {host}");
        if host % cluster_size != 0 {
            return Err(Error::invalid(format!("{} is not cluster-aligned", what())));
        }
        if let Some(name) = self.layout.overlapping(host, cluster_size) {
            return Err(Error::invalid(format!("{} overlaps {name}", what())));
        }
        Ok(())
    }

    /// Checks that the guest-visible bytes of a data run lie inside the file: the run starts at
    /// `in_cluster` (host offset `host`) and ends at `run_end` in the cluster at `guest`.
    fn check_data_in_file(&self, host: u64, guest: u64, in_cluster: u64, run_end: u64) -> Result<()> {
        let visible_end = run_end.min(self.virtual_size - guest);
        let host_cluster = host - in_cluster;
        if host_cluster.checked_add(visible_end).is_none_or(|end| end > self.file_size) {
            return Err(Error::invalid(format!(
                "image is truncated: data cluster for guest offset {guest} at host offset {host_cluster} lies past end of file ({} bytes)",
                self.file_size
            )));
        }
        Ok(())
    }

    /// The run of guest bytes from `offset` (`< end <= virtual_size`) that reads one way, within
    /// one L2 table. Compressed clusters come one per extent. Entries after the first are
    /// checked too; a bad one ends the run here and is reported by the next call.
    fn extent_at(&self, offset: u64, end: u64) -> Result<Extent> {
        let coverage_bits = self.geo.l1_coverage_bits();
        let index = offset >> coverage_bits;
        let l1_base = index << coverage_bits;
        let l1_end = end.min(l1_base.saturating_add(1 << coverage_bits));
        let l2_host = usize::try_from(index).ok().and_then(|i| self.l1.get(i)).copied().unwrap_or(0);
        if l2_host == 0 {
            return Ok(Extent { len: l1_end - offset, piece: Piece::Unallocated });
        }
        let table = self.l2_table(l2_host)?;
        let cluster_size = self.geo.cluster_size();
        let mut run: Option<Extent> = None;
        let mut pos = offset;
        while pos < l1_end {
            let guest = pos & !(cluster_size - 1);
            let cluster = match self.cluster_at(&table, l1_base, guest) {
                Ok(cluster) => cluster,
                Err(e) => return run.ok_or(e),
            };
            let mut in_cluster = pos - guest;
            while in_cluster < cluster_size && pos < l1_end {
                let (piece, piece_end) = cluster.piece_at(self.geo, in_cluster);
                let len = (piece_end - in_cluster).min(l1_end - pos);
                if let Some(r) = run
                    && !continues(r, piece)
                {
                    return Ok(r);
                }
                if let Piece::Data { host } = piece
                    && let Err(e) = self.check_data_in_file(host, guest, in_cluster, piece_end)
                {
                    return run.ok_or(e);
                }
                match run.as_mut() {
                    Some(r) => r.len += len,
                    None => run = Some(Extent { len, piece }),
                }
                if matches!(piece, Piece::Compressed { .. }) {
                    return run.ok_or_else(|| Error::invalid("empty qcow2 extent"));
                }
                pos += len;
                in_cluster += len;
            }
        }
        run.ok_or_else(|| Error::invalid(format!("empty qcow2 extent at guest offset {offset}")))
    }

    /// Decodes and checks the L2 entry for the cluster at `guest` in `table` (covering from
    /// `l1_base`).
    fn cluster_at(&self, table: &[u64], l1_base: u64, guest: u64) -> Result<Cluster> {
        let words = self.geo.words_per_entry();
        let index = ((guest - l1_base) >> self.geo.cluster_bits) as usize * words;
        let entry = table.get(index..index + words).ok_or_else(|| {
            Error::invalid(format!("L2 entry for guest offset {guest} lies outside its table"))
        })?;
        let cluster = Cluster::decode(self.geo, self.header.version, entry, guest)?;
        self.check_cluster(cluster, guest)?;
        Ok(cluster)
    }

    /// The compressed clusters from `pos` on (the first is `first`, all before `end`) whose
    /// stored bytes lie close enough together on the host to be read at once: at most
    /// [`COMPRESSED_SPAN_BYTES`] from the first one's start. A bad entry ends the run; the
    /// caller's next step reports it.
    fn compressed_run(&self, pos: u64, first: Extent, end: u64) -> Vec<(u64, Extent)> {
        let mut run = vec![(pos, first)];
        let Piece::Compressed { host: start, .. } = first.piece else { return run };
        let mut next = pos + first.len;
        while next < end {
            let Ok(extent) = self.extent_at(next, end) else { break };
            let Piece::Compressed { host, len } = extent.piece else { break };
            let stored_end = host.saturating_add(len).min(self.file_size);
            if host < start || stored_end - start > COMPRESSED_SPAN_BYTES {
                break;
            }
            run.push((next, extent));
            next += extent.len;
        }
        run
    }

    /// Reads the stored bytes of a run of compressed clusters with one read (directly from the
    /// device where the file allows it) and decodes each into `buf` (guest bytes of the run).
    fn read_compressed(&self, run: &[(u64, Extent)], buf: &mut [u8]) -> Result<()> {
        let stored = |extent: &Extent| match extent.piece {
            Piece::Compressed { host, len } => Some((host, host.saturating_add(len).min(self.file_size))),
            _ => None,
        };
        let (lo, hi) = run
            .iter()
            .filter_map(|(_, e)| stored(e))
            .fold((u64::MAX, 0), |(lo, hi), (s, e)| (lo.min(s), hi.max(e)));
        if lo >= hi {
            return Err(Error::invalid("empty run of compressed clusters"));
        }
        // Whole 4 KiB blocks, so that the aligned middle can be read directly.
        let align = DIRECT_ALIGN as u64;
        let read_start = lo - lo % align;
        let read_len = usize::try_from(hi - read_start).map_err(|_| Error::too_large("compressed span"))?;
        SPAN.with(|cell| {
            let mut span = cell.borrow_mut();
            if span.len() < read_len {
                *span = AlignedBuf::new(read_len.max(COMPRESSED_SPAN_BYTES as usize + DIRECT_ALIGN));
            }
            let bytes = &mut span[..read_len];
            let what =
                || format!("reading {read_len} bytes of compressed clusters at host offset {read_start}");
            match &self.direct {
                Some(direct) => direct.read_exact_at(&*self.source, bytes, read_start),
                None => self.source.read_exact_at(bytes, read_start),
            }
            .map_err(|e| Error::io(what(), e))?;
            let cluster_size = self.geo.cluster_size();
            let kind = self.header.compression_type();
            let mut at = 0usize;
            for (pos, extent) in run {
                let dst = &mut buf[at..at + extent.len as usize];
                at += extent.len as usize;
                let Some((host, stored_end)) = stored(extent) else { continue };
                let input = &bytes[(host - read_start) as usize..(stored_end - read_start) as usize];
                let start = (pos % cluster_size) as usize;
                if start == 0 && dst.len() as u64 == cluster_size {
                    compressed::decode_into(kind, input, dst, host)?;
                } else {
                    let mut cluster = vec![0u8; cluster_size as usize];
                    compressed::decode_into(kind, input, &mut cluster, host)?;
                    dst.copy_from_slice(&cluster[start..start + dst.len()]);
                }
            }
            Ok(())
        })
    }
}

/// Whether `piece` continues the run `run` (same kind, and contiguous on the host for data).
fn continues(run: Extent, piece: Piece) -> bool {
    match (run.piece, piece) {
        (Piece::Unallocated, Piece::Unallocated) | (Piece::Zero, Piece::Zero) => true,
        (Piece::Data { host: a }, Piece::Data { host: b }) => a.checked_add(run.len) == Some(b),
        _ => false,
    }
}

/// Checks the header's L1 size against the virtual size and the limit; returns it.
fn check_l1_size(header: &Header, geo: Geometry) -> Result<u64> {
    let needed = header.size.div_ceil(1u64 << geo.l1_coverage_bits());
    let have = u64::from(header.l1_size);
    if needed > limits::MAX_L1_ENTRIES {
        return Err(Error::too_large(format!(
            "virtual size {} needs {needed} L1 entries with {}-byte clusters, more than the limit of {}",
            header.size,
            geo.cluster_size(),
            limits::MAX_L1_ENTRIES
        )));
    }
    if have > limits::MAX_L1_ENTRIES {
        return Err(Error::too_large(format!(
            "L1 table has {have} entries, more than the limit of {}",
            limits::MAX_L1_ENTRIES
        )));
    }
    if have < needed {
        return Err(Error::invalid(format!(
            "L1 table has {have} entries, but the virtual size {} needs {needed}",
            header.size
        )));
    }
    Ok(have)
}

/// The denial for an image with a backing file, naming the file when its name can be read.
fn backing_file_denied(source: &dyn ReadAt, header: &Header, file_size: u64) -> Error {
    let (offset, len) = (header.backing_file_offset, u64::from(header.backing_file_size));
    let readable = len > 0
        && len <= limits::MAX_BACKING_FILE_NAME_BYTES
        && offset.checked_add(len).is_some_and(|end| end <= file_size);
    let name =
        readable.then(|| read_bytes(source, offset, len, "reading the backing file name").ok()).flatten();
    match name {
        Some(name) => Error::denied(format!(
            "image has a backing file \"{}\"; backing files are not allowed",
            header::escape(&name)
        )),
        None => Error::denied(format!(
            "image has a backing file (name of {len} bytes at offset {offset}); backing files are not allowed"
        )),
    }
}

/// Reads exactly `len` bytes at `offset` (`len` is bounded by the caller).
fn read_bytes(source: &dyn ReadAt, offset: u64, len: u64, what: &str) -> Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| Error::too_large(format!("{what}: {len} bytes")))?;
    let mut buf = vec![0u8; len];
    source.read_exact_at(&mut buf, offset).map_err(|e| Error::io(what, e))?;
    Ok(buf)
}

impl Image for Qcow2Image {
    fn info(&self) -> ImageInfo {
        ImageInfo {
            format: "qcow2".to_owned(),
            virtual_size: self.virtual_size,
            file_size: self.file_size,
            version: Some(self.header.version),
            cluster_size: Some(self.geo.cluster_size()),
            compression_type: Some(self.header.compression_type().name().to_owned()),
            features: self.header.feature_names(),
            snapshots: self.snapshots.clone(),
            compression_wrappers: Vec::new(),
            format_specific: Default::default(),
        }
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Segment> {
        if offset >= self.virtual_size || max_len == 0 {
            return Err(Error::invalid(format!(
                "map of {max_len} bytes at guest offset {offset} is outside the virtual size {}",
                self.virtual_size
            )));
        }
        let end = offset + max_len.min(self.virtual_size - offset);
        let first = self.extent_at(offset, end)?;
        let kind = match first.piece {
            Piece::Unallocated => SegmentKind::Unallocated,
            Piece::Zero => SegmentKind::Zero,
            Piece::Data { host } => SegmentKind::Data { host },
            Piece::Compressed { .. } => SegmentKind::Encoded,
        };
        let mut len = first.len;
        while offset + len < end {
            // A bad entry further on ends the segment; the next call reports it.
            let Ok(next) = self.extent_at(offset + len, end) else { break };
            let merges = match (kind, next.piece) {
                (SegmentKind::Data { host }, Piece::Data { host: next_host }) => {
                    host.checked_add(len) == Some(next_host)
                }
                (SegmentKind::Encoded, Piece::Compressed { .. })
                | (SegmentKind::Zero, Piece::Zero)
                | (SegmentKind::Unallocated, Piece::Unallocated) => true,
                _ => false,
            };
            if !merges {
                break;
            }
            len += next.len;
        }
        Ok(Segment { offset, len, kind })
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&end| end <= self.virtual_size).ok_or_else(
            || {
                Error::invalid(format!(
                    "read of {} bytes at guest offset {offset} is outside the virtual size {}",
                    buf.len(),
                    self.virtual_size
                ))
            },
        )?;
        let mut pos = offset;
        while pos < end {
            let extent = self.extent_at(pos, end)?;
            let from = (pos - offset) as usize;
            if let Piece::Compressed { .. } = extent.piece {
                let run = self.compressed_run(pos, extent, end);
                let run_len: u64 = run.iter().map(|(_, e)| e.len).sum();
                self.read_compressed(&run, &mut buf[from..from + run_len as usize])?;
                pos += run_len;
                continue;
            }
            let dst = &mut buf[from..from + extent.len as usize];
            match extent.piece {
                Piece::Data { host } => self.source.read_exact_at(dst, host).map_err(|e| {
                    Error::io(
                        format!(
                            "reading {} bytes of data for guest offset {pos} at host offset {host}",
                            dst.len()
                        ),
                        e,
                    )
                })?,
                _ => dst.fill(0),
            }
            pos += extent.len;
        }
        Ok(())
    }

    fn data_source(&self) -> &dyn ReadAt {
        &*self.source
    }
}
