//! A tiny in-memory qcow2 writer for tests.
//!
//! Layout: cluster 0 = header (+ extensions), cluster 1 = refcount table (left zero: the reader
//! never uses refcounts), clusters 2.. = L1 table, then an append-only area holding L2 tables
//! (allocated on first use), data clusters and compressed bytes in call order, then the
//! snapshot table. Tests patch header fields of the built bytes to make them hostile.

use std::collections::BTreeMap;

/// Header field offsets, for tests that patch them.
pub(super) mod at {
    pub const VERSION: usize = 4;
    pub const BACKING_FILE_OFFSET: usize = 8;
    pub const BACKING_FILE_SIZE: usize = 16;
    pub const CLUSTER_BITS: usize = 20;
    pub const CRYPT_METHOD: usize = 32;
    pub const L1_SIZE: usize = 36;
    pub const L1_TABLE_OFFSET: usize = 40;
    pub const REFCOUNT_TABLE_OFFSET: usize = 48;
    pub const REFCOUNT_TABLE_CLUSTERS: usize = 56;
    pub const NB_SNAPSHOTS: usize = 60;
    pub const SNAPSHOTS_OFFSET: usize = 64;
    pub const REFCOUNT_ORDER: usize = 96;
    pub const HEADER_LENGTH: usize = 100;
    pub const COMPRESSION_TYPE: usize = 104;
}

/// L2 entry flag: copied (refcount 1).
pub(super) const COPIED: u64 = 1 << 63;
/// L2 entry flag: compressed.
pub(super) const COMPRESSED: u64 = 1 << 62;
/// L2 entry flag: reads as zero (v3, standard entries).
pub(super) const ZERO: u64 = 1;
/// Length of the v3 header the builder writes.
const V3_HEADER_LENGTH: u32 = 112;

/// See the module docs.
#[derive(Debug, Clone)]
pub(super) struct Builder {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub extended_l2: bool,
    /// 0 = zlib, 1 = zstd (the incompatible bit follows it).
    pub compression_type: u8,
    pub incompatible: u64,
    pub compatible: u64,
    pub autoclear: u64,
    pub extensions: Vec<(u32, Vec<u8>)>,
    /// (id, name, virtual size in the extra data).
    pub snapshots: Vec<(String, String, Option<u64>)>,
    l1_size: u64,
    l2_tables: BTreeMap<u64, u64>,
    /// Guest cluster index → (first word, bitmap).
    entries: BTreeMap<u64, (u64, u64)>,
    area: Vec<u8>,
}

impl Builder {
    /// A version 3 image with `cluster_bits` and a virtual size of `size` bytes.
    pub(super) fn new(cluster_bits: u32, size: u64) -> Self {
        let mut b = Self {
            version: 3,
            cluster_bits,
            size,
            extended_l2: false,
            compression_type: 0,
            incompatible: 0,
            compatible: 0,
            autoclear: 0,
            extensions: Vec::new(),
            snapshots: Vec::new(),
            l1_size: 0,
            l2_tables: BTreeMap::new(),
            entries: BTreeMap::new(),
            area: Vec::new(),
        };
        b.l1_size = size.div_ceil(1 << b.coverage_bits());
        b
    }

    /// Makes it a version 2 image.
    pub(super) fn v2(mut self) -> Self {
        self.version = 2;
        self
    }

    /// Uses 128-bit L2 entries with subclusters.
    pub(super) fn extended_l2(mut self) -> Self {
        self.extended_l2 = true;
        self.l1_size = self.size.div_ceil(1 << self.coverage_bits());
        self
    }

    /// Uses zstd for compressed clusters.
    pub(super) fn zstd(mut self) -> Self {
        self.compression_type = 1;
        self
    }

    pub(super) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn coverage_bits(&self) -> u32 {
        2 * self.cluster_bits - if self.extended_l2 { 4 } else { 3 }
    }

    pub(super) fn l1_offset(&self) -> u64 {
        2 * self.cluster_size()
    }

    fn area_start(&self) -> u64 {
        let l1_clusters = (self.l1_size * 8).div_ceil(self.cluster_size()).max(1);
        (2 + l1_clusters) * self.cluster_size()
    }

    /// Appends `bytes` to the area, padded to whole clusters; returns the host offset.
    pub(super) fn alloc(&mut self, bytes: &[u8]) -> u64 {
        self.pad_to_cluster();
        let host = self.append(bytes);
        self.pad_to_cluster();
        host
    }

    /// Appends `bytes` without padding (compressed data); returns the host offset.
    pub(super) fn append(&mut self, bytes: &[u8]) -> u64 {
        let host = self.area_start() + self.area.len() as u64;
        self.area.extend_from_slice(bytes);
        host
    }

    fn pad_to_cluster(&mut self) {
        let len = (self.area.len() as u64).div_ceil(self.cluster_size()) * self.cluster_size();
        self.area.resize(len as usize, 0);
    }

    /// Sets the L2 entry of guest cluster `index` (allocating its L2 table on first use).
    pub(super) fn entry(&mut self, index: u64, word: u64, bitmap: u64) -> &mut Self {
        let l1_index = (index << self.cluster_bits) >> self.coverage_bits();
        if !self.l2_tables.contains_key(&l1_index) {
            let table = vec![0u8; self.cluster_size() as usize];
            let host = self.alloc(&table);
            self.l2_tables.insert(l1_index, host);
        }
        self.entries.insert(index, (word, bitmap));
        self
    }

    /// Stores a data cluster filled with `fill` for guest cluster `index`; returns its host offset.
    pub(super) fn data(&mut self, index: u64, fill: u8) -> u64 {
        self.data_bytes(index, &vec![fill; self.cluster_size() as usize])
    }

    /// Stores `bytes` (one cluster) for guest cluster `index`; returns its host offset.
    pub(super) fn data_bytes(&mut self, index: u64, bytes: &[u8]) -> u64 {
        self.entry(index, 0, 0);
        let host = self.alloc(bytes);
        let bitmap = if self.extended_l2 { 0xffff_ffff } else { 0 };
        self.entry(index, COPIED | host, bitmap);
        host
    }

    /// Stores `stream` as the compressed cluster `index`, with the descriptor's sector count
    /// covering it; returns the host offset.
    pub(super) fn compressed(&mut self, index: u64, stream: &[u8]) -> u64 {
        self.entry(index, 0, 0);
        let host = self.append(stream);
        let sectors = (host + stream.len() as u64 - 1) / 512 - host / 512;
        let shift = 62 - (self.cluster_bits - 8);
        self.entry(index, COMPRESSED | sectors << shift | host, 0);
        host
    }

    /// The image bytes.
    pub(super) fn build(&self) -> Vec<u8> {
        let cs = self.cluster_size();
        let mut snapshot_table = Vec::new();
        for (id, name, disk_size) in &self.snapshots {
            let extra: Vec<u8> = match disk_size {
                Some(size) => [0u64.to_be_bytes(), size.to_be_bytes()].concat(),
                None => Vec::new(),
            };
            let start = snapshot_table.len();
            snapshot_table.extend_from_slice(&0u64.to_be_bytes()); //  0: L1 table offset
            snapshot_table.extend_from_slice(&0u32.to_be_bytes()); //  8: L1 entries
            snapshot_table.extend_from_slice(&(id.len() as u16).to_be_bytes()); // 12: id length
            snapshot_table.extend_from_slice(&(name.len() as u16).to_be_bytes()); // 14: name length
            snapshot_table.extend_from_slice(&[0; 16]); // 16: date, VM clock
            snapshot_table.extend_from_slice(&0u32.to_be_bytes()); // 32: VM state size
            snapshot_table.extend_from_slice(&(extra.len() as u32).to_be_bytes()); // 36: extra size
            snapshot_table.extend_from_slice(&extra);
            snapshot_table.extend_from_slice(id.as_bytes());
            snapshot_table.extend_from_slice(name.as_bytes());
            let padded = (snapshot_table.len() - start).div_ceil(8) * 8;
            snapshot_table.resize(start + padded, 0);
        }
        let area_end = self.area_start() + (self.area.len() as u64).div_ceil(cs) * cs;
        let snapshots_offset = if self.snapshots.is_empty() { 0 } else { area_end };

        let v3 = self.version >= 3;
        let incompatible = self.incompatible
            | if self.extended_l2 { 1 << 4 } else { 0 }
            | if self.compression_type != 0 { 1 << 3 } else { 0 };
        let mut h = Vec::new();
        h.extend_from_slice(b"QFI\xfb"); //                               0: magic
        h.extend_from_slice(&self.version.to_be_bytes()); //                4: version
        h.extend_from_slice(&0u64.to_be_bytes()); //                        8: backing file offset
        h.extend_from_slice(&0u32.to_be_bytes()); //                       16: backing file size
        h.extend_from_slice(&self.cluster_bits.to_be_bytes()); //          20: cluster bits
        h.extend_from_slice(&self.size.to_be_bytes()); //                  24: virtual size
        h.extend_from_slice(&0u32.to_be_bytes()); //                       32: crypt method
        h.extend_from_slice(&(self.l1_size as u32).to_be_bytes()); //      36: L1 entries
        h.extend_from_slice(&self.l1_offset().to_be_bytes()); //           40: L1 table offset
        h.extend_from_slice(&cs.to_be_bytes()); //                         48: refcount table offset
        h.extend_from_slice(&1u32.to_be_bytes()); //                       56: refcount table clusters
        h.extend_from_slice(&(self.snapshots.len() as u32).to_be_bytes()); // 60: snapshots
        h.extend_from_slice(&snapshots_offset.to_be_bytes()); //           64: snapshot table offset
        if v3 {
            h.extend_from_slice(&incompatible.to_be_bytes()); //           72: incompatible features
            h.extend_from_slice(&self.compatible.to_be_bytes()); //        80: compatible features
            h.extend_from_slice(&self.autoclear.to_be_bytes()); //         88: autoclear features
            h.extend_from_slice(&4u32.to_be_bytes()); //                   96: refcount order
            h.extend_from_slice(&V3_HEADER_LENGTH.to_be_bytes()); //      100: header length
            h.push(self.compression_type); //                             104: compression type
            h.extend_from_slice(&[0; 7]); //                              105: padding
        }
        for (kind, data) in &self.extensions {
            h.extend_from_slice(&kind.to_be_bytes());
            h.extend_from_slice(&(data.len() as u32).to_be_bytes());
            h.extend_from_slice(data);
            h.resize(h.len().div_ceil(8) * 8, 0);
        }
        h.extend_from_slice(&[0; 8]); // end of extensions

        let mut img = vec![0u8; self.area_start() as usize];
        img[..h.len()].copy_from_slice(&h);
        img.extend_from_slice(&self.area);
        img.resize(area_end as usize, 0);
        img.extend_from_slice(&snapshot_table);
        for (&l1_index, &host) in &self.l2_tables {
            let at = (self.l1_offset() + l1_index * 8) as usize;
            img[at..at + 8].copy_from_slice(&(COPIED | host).to_be_bytes());
        }
        let entry_bytes = if self.extended_l2 { 16 } else { 8 };
        for (&index, &(word, bitmap)) in &self.entries {
            let l1_index = (index << self.cluster_bits) >> self.coverage_bits();
            let in_table = index % (cs / entry_bytes);
            let at = (self.l2_tables[&l1_index] + in_table * entry_bytes) as usize;
            img[at..at + 8].copy_from_slice(&word.to_be_bytes());
            if self.extended_l2 {
                img[at + 8..at + 16].copy_from_slice(&bitmap.to_be_bytes());
            }
        }
        img
    }
}

/// Overwrites the big-endian `u32` at `at`.
pub(super) fn set_u32(img: &mut [u8], at: usize, value: u32) {
    img[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// Overwrites the big-endian `u64` at `at`.
pub(super) fn set_u64(img: &mut [u8], at: usize, value: u64) {
    img[at..at + 8].copy_from_slice(&value.to_be_bytes());
}
