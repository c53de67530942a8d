//! A raw disk written as a qcow2 stream that holds only its data: how an upload client sends a
//! sparse raw image without sending its holes.
//!
//! The layout is fixed before the first byte, from the raw disk's data extents, so the length
//! of the stream is known up front (a `Content-Length`). The stream is dense (every cluster is
//! in use, each exactly once) and puts all metadata before the data it describes, in the order
//! a streaming reader ([`super::stream::Router`]) routes best:
//!
//! | clusters | what |
//! | --- | --- |
//! | 0 | the header (version 3, 64 KiB clusters, 16-bit refcounts, no extensions) |
//! | 1 .. | the refcount table, then the refcount blocks |
//! | .. | the L1 table |
//! | .. | for each L1 entry with data: its L2 table, then its data clusters in guest order |
//!
//! A cluster counts as data when any of the raw disk's data extents touches it; its bytes are
//! read from the raw disk (holes inside it read as zeros), so a conversion of the stream gives
//! back the raw disk byte for byte. Memory: the extents (merged into runs of clusters) and one
//! cluster of metadata at a time, whatever the disk's size.

use std::io;

use crate::io::ReadAt;
use crate::{Error, Result, limits};

/// 64 KiB clusters, qemu's default.
const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// L2 entries per table (8 bytes each, one cluster per table).
const L2_ENTRIES: u64 = CLUSTER / 8;
/// Guest bytes one L2 table covers.
const L2_COVERAGE: u64 = CLUSTER * L2_ENTRIES;
/// 16-bit refcounts (refcount order 4): entries per refcount block.
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
/// Refcount bit 63 of L1/L2 entries: the cluster is used exactly once ("copied").
const COPIED: u64 = 1 << 63;
/// Length of the version 3 header written (with the compression type byte and its padding).
const HEADER_LENGTH: u32 = 112;
/// Most data bytes read from the raw disk per output chunk: a quarter of the allocator's mmap
/// threshold (`storage::bound_allocator_retention`), so that each chunk's buffer is reused
/// memory, not freshly mapped and faulted in.
const READ_BYTES: u64 = 256 << 10;
/// A qcow2's virtual size is in whole 512-byte sectors.
const SECTOR: u64 = 512;

/// The data clusters under one L2 table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Table {
    /// Its L1 index.
    index: u64,
    /// Host offset of the L2 table (its data clusters follow it).
    host: u64,
    /// Runs of data clusters `(first guest cluster, count)` inside the table's range.
    runs: Vec<(u64, u64)>,
}

/// The planned qcow2 stream of a raw disk; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoder {
    virtual_size: u64,
    refcount_table_clusters: u64,
    refcount_blocks: u64,
    l1_entries: u64,
    l1_clusters: u64,
    tables: Vec<Table>,
    data_clusters: u64,
    total_clusters: u64,
}

impl Encoder {
    /// Plans the stream of a raw disk of `virtual_size` bytes whose data lies in `extents`
    /// (`(offset, len)` byte ranges, in any order; everything else reads as zeros).
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidImage`] when `virtual_size` is not a whole number of 512-byte
    /// sectors (a qcow2 cannot say it); [`crate::ErrorKind::TooLarge`] beyond the L1 limit.
    pub fn new(virtual_size: u64, extents: &[(u64, u64)]) -> Result<Self> {
        if !virtual_size.is_multiple_of(SECTOR) {
            return Err(Error::invalid(format!(
                "a qcow2 holds whole 512-byte sectors; {virtual_size} bytes is not a multiple of 512"
            )));
        }
        let l1_entries = virtual_size.div_ceil(L2_COVERAGE);
        if l1_entries > limits::MAX_L1_ENTRIES {
            return Err(Error::too_large(format!(
                "virtual size {virtual_size} needs {l1_entries} L1 entries, more than the limit of {}",
                limits::MAX_L1_ENTRIES
            )));
        }
        let runs = cluster_runs(virtual_size, extents);
        let mut tables: Vec<Table> = Vec::new();
        for (mut first, mut count) in runs {
            while count > 0 {
                let index = first / L2_ENTRIES;
                let in_table = ((index + 1) * L2_ENTRIES - first).min(count);
                match tables.last_mut() {
                    Some(table) if table.index == index => table.runs.push((first, in_table)),
                    _ => tables.push(Table { index, host: 0, runs: vec![(first, in_table)] }),
                }
                first += in_table;
                count -= in_table;
            }
        }
        let data_clusters: u64 = tables.iter().flat_map(|t| &t.runs).map(|&(_, n)| n).sum();
        let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER).max(1);
        let fixed = 1 + l1_clusters + tables.len() as u64 + data_clusters;
        // The refcount blocks count themselves and the table that lists them: grow both until
        // they cover every cluster.
        let (mut table_clusters, mut blocks) = (1u64, 1u64);
        loop {
            let total = fixed + table_clusters + blocks;
            let need_blocks = total.div_ceil(REFCOUNTS_PER_BLOCK);
            let need_table = (need_blocks * 8).div_ceil(CLUSTER);
            if need_blocks <= blocks && need_table <= table_clusters {
                break;
            }
            blocks = blocks.max(need_blocks);
            table_clusters = table_clusters.max(need_table);
        }
        let mut host = (1 + table_clusters + blocks + l1_clusters) * CLUSTER;
        for table in &mut tables {
            table.host = host;
            host += (1 + table.runs.iter().map(|&(_, n)| n).sum::<u64>()) * CLUSTER;
        }
        Ok(Self {
            virtual_size,
            refcount_table_clusters: table_clusters,
            refcount_blocks: blocks,
            l1_entries,
            l1_clusters,
            tables,
            data_clusters,
            total_clusters: fixed + table_clusters + blocks,
        })
    }

    /// Bytes of the whole stream (its `Content-Length`).
    pub fn stream_len(&self) -> u64 {
        self.total_clusters * CLUSTER
    }

    /// Bytes of the raw disk's data the stream carries (whole clusters).
    pub fn data_bytes(&self) -> u64 {
        self.data_clusters * CLUSTER
    }

    /// Writes the stream to `out` in order, reading the data clusters from `raw` (the raw
    /// disk, at least `virtual_size` bytes or reading as zeros past its end). Every chunk is a
    /// buffer of its own, up to `READ_BYTES` (256 KiB) long, so that a consumer can keep it
    /// (send it on) without copying.
    ///
    /// # Errors
    /// Reading `raw`, or `out`'s errors, as I/O errors.
    pub fn write(&self, raw: &dyn ReadAt, out: &mut dyn FnMut(Vec<u8>) -> io::Result<()>) -> Result<()> {
        let emit = |out: &mut dyn FnMut(Vec<u8>) -> io::Result<()>, bytes: Vec<u8>| {
            out(bytes).map_err(|e| Error::io("sending the qcow2 stream", e))
        };
        emit(out, self.header())?;
        for k in 0..self.refcount_table_clusters {
            emit(out, self.refcount_table(k))?;
        }
        for k in 0..self.refcount_blocks {
            emit(out, self.refcount_block(k))?;
        }
        for k in 0..self.l1_clusters {
            emit(out, self.l1_cluster(k))?;
        }
        for table in &self.tables {
            emit(out, l2_table(table))?;
            for &(first, count) in &table.runs {
                let (mut guest, end) = (first * CLUSTER, (first + count) * CLUSTER);
                while guest < end {
                    let mut buf = vec![0u8; (end - guest).min(READ_BYTES) as usize];
                    self.read_raw(raw, &mut buf, guest)?;
                    guest += buf.len() as u64;
                    emit(out, buf)?;
                }
            }
        }
        Ok(())
    }

    /// Reads guest bytes at `guest` into `buf`; past the virtual size (the end of the last
    /// cluster) and past the raw disk's end they are zeros.
    fn read_raw(&self, raw: &dyn ReadAt, buf: &mut [u8], guest: u64) -> Result<()> {
        let visible =
            usize::try_from(self.virtual_size.saturating_sub(guest)).map_or(buf.len(), |v| v.min(buf.len()));
        let mut done = 0;
        while done < visible {
            match raw.read_at(&mut buf[done..visible], guest + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("reading the raw disk at offset {}", guest + done as u64),
                        e,
                    ));
                }
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    fn l1_offset(&self) -> u64 {
        (1 + self.refcount_table_clusters + self.refcount_blocks) * CLUSTER
    }

    /// Cluster 0: the header.
    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(CLUSTER as usize);
        h.extend_from_slice(b"QFI\xfb"); //                                     0: magic
        h.extend_from_slice(&3u32.to_be_bytes()); //                              4: version
        h.extend_from_slice(&0u64.to_be_bytes()); //                              8: backing file offset
        h.extend_from_slice(&0u32.to_be_bytes()); //                             16: backing file size
        h.extend_from_slice(&CLUSTER_BITS.to_be_bytes()); //                     20: cluster bits
        h.extend_from_slice(&self.virtual_size.to_be_bytes()); //                24: virtual size
        h.extend_from_slice(&0u32.to_be_bytes()); //                             32: crypt method
        h.extend_from_slice(&(self.l1_entries as u32).to_be_bytes()); //         36: L1 entries
        h.extend_from_slice(&self.l1_offset().to_be_bytes()); //                 40: L1 table offset
        h.extend_from_slice(&CLUSTER.to_be_bytes()); //                          48: refcount table offset
        h.extend_from_slice(&(self.refcount_table_clusters as u32).to_be_bytes()); // 56: its clusters
        h.extend_from_slice(&0u32.to_be_bytes()); //                             60: snapshots
        h.extend_from_slice(&0u64.to_be_bytes()); //                             64: snapshot table offset
        h.extend_from_slice(&0u64.to_be_bytes()); //                             72: incompatible features
        h.extend_from_slice(&0u64.to_be_bytes()); //                             80: compatible features
        h.extend_from_slice(&0u64.to_be_bytes()); //                             88: autoclear features
        h.extend_from_slice(&4u32.to_be_bytes()); //                             96: refcount order (16 bits)
        h.extend_from_slice(&HEADER_LENGTH.to_be_bytes()); //                   100: header length
        h.push(0); //                                                           104: compression type zlib
        h.extend_from_slice(&[0; 7]); //                                        105: padding
        // 112: the end of the header extensions (type 0, length 0), and zeros to the end.
        h.resize(CLUSTER as usize, 0);
        h
    }

    /// Refcount table cluster `k`: the host offsets of the refcount blocks.
    fn refcount_table(&self, k: u64) -> Vec<u8> {
        let mut cluster = zero_cluster();
        let first_block = (1 + self.refcount_table_clusters) * CLUSTER;
        for (i, entry) in cluster.chunks_exact_mut(8).enumerate() {
            let block = k * (CLUSTER / 8) + i as u64;
            if block < self.refcount_blocks {
                entry.copy_from_slice(&(first_block + block * CLUSTER).to_be_bytes());
            }
        }
        cluster
    }

    /// Refcount block `k`: 1 for every cluster of the stream it covers.
    fn refcount_block(&self, k: u64) -> Vec<u8> {
        let mut cluster = zero_cluster();
        for (i, entry) in cluster.chunks_exact_mut(2).enumerate() {
            if k * REFCOUNTS_PER_BLOCK + (i as u64) < self.total_clusters {
                entry.copy_from_slice(&1u16.to_be_bytes());
            }
        }
        cluster
    }

    /// L1 cluster `k`: the L2 tables' host offsets.
    fn l1_cluster(&self, k: u64) -> Vec<u8> {
        let mut cluster = zero_cluster();
        let per_cluster = CLUSTER / 8;
        let range = k * per_cluster..(k + 1) * per_cluster;
        for table in self.tables.iter().filter(|t| range.contains(&t.index)) {
            let at = ((table.index - range.start) * 8) as usize;
            cluster[at..at + 8].copy_from_slice(&(COPIED | table.host).to_be_bytes());
        }
        cluster
    }
}

/// The L2 table of `table`: its data clusters follow it in guest order.
fn l2_table(table: &Table) -> Vec<u8> {
    let mut cluster = zero_cluster();
    let mut host = table.host + CLUSTER;
    for &(first, count) in &table.runs {
        for guest_cluster in first..first + count {
            let at = ((guest_cluster - table.index * L2_ENTRIES) * 8) as usize;
            cluster[at..at + 8].copy_from_slice(&(COPIED | host).to_be_bytes());
            host += CLUSTER;
        }
    }
    cluster
}

/// A cluster of zeros, for a metadata cluster to fill in.
fn zero_cluster() -> Vec<u8> {
    vec![0; CLUSTER as usize]
}

/// The clusters `extents` touch inside `virtual_size`, as sorted, merged runs
/// `(first cluster, count)`.
fn cluster_runs(virtual_size: u64, extents: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = extents
        .iter()
        .filter_map(|&(offset, len)| {
            let end = offset.saturating_add(len).min(virtual_size);
            (offset < end).then(|| (offset / CLUSTER, (end - 1) / CLUSTER + 1))
        })
        .collect();
    spans.sort_unstable();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (first, end) in spans {
        match runs.last_mut() {
            Some((start, count)) if first <= *start + *count => *count = (*count).max(end - *start),
            _ => runs.push((first, end - first)),
        }
    }
    runs
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
