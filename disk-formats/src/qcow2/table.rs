//! L1 and L2 entry decoding (standard 64-bit and extended 128-bit L2 entries).
//!
//! L1 entry: bits 9..=55 hold the L2 table's host offset, bit 63 is "copied" (ignored), every
//! other bit is reserved.
//!
//! Standard L2 entry (a cluster descriptor plus two flags):
//! - bit 62 set: compressed. Bits `0..x` are the host byte offset and bits `x..=61` the number of
//!   additional 512-byte sectors, with `x = 62 - (cluster_bits - 8)`.
//! - otherwise bit 0 = reads as zero (v3 only), bits 9..=55 = host cluster offset (0 =
//!   unallocated), bits 1..=8 and 56..=61 reserved.
//!
//! Extended L2 entries add a second word: bits 0..32 mark subclusters allocated, bits 32..64
//! mark them as reading zero (32 subclusters per cluster). Bit 0 of the first word is then
//! reserved, and compressed clusters have no subclusters (the bitmap must be 0).
//!
//! Decoding is pure: a [`Geometry`] and the raw words in, a [`Cluster`] or a named error out.
//! The engine checks where host offsets point (alignment, overlap, end of file).

use crate::{Error, Result};

/// Bit 63: the refcount is exactly one ("copied"); irrelevant for reading.
const COPIED: u64 = 1 << 63;
/// Bit 62: the cluster is compressed.
const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard cluster descriptor: the cluster reads as zeros.
const ZERO: u64 = 1;
/// Host offset bits of L1 entries and uncompressed L2 entries (9..=55).
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Reserved L1 entry bits: 0..=8 and 56..=62.
const L1_RESERVED: u64 = !(OFFSET_MASK | COPIED);
/// Reserved bits of a standard uncompressed L2 entry: 1..=8 and 56..=61.
const L2_RESERVED: u64 = !(OFFSET_MASK | COPIED | COMPRESSED | ZERO);
/// Reserved bits of an extended uncompressed L2 entry: as standard, plus the zero bit.
const L2_EXTENDED_RESERVED: u64 = L2_RESERVED | ZERO;
/// Compressed data is counted in 512-byte sectors.
const COMPRESSED_SECTOR_BYTES: u64 = 512;
/// Subclusters per cluster with extended L2 entries.
pub(crate) const SUBCLUSTERS: u32 = 32;

/// Sizes derived from the cluster bits and the L2 entry width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub cluster_bits: u32,
    /// Whether L2 entries are 128 bits wide (with subclusters).
    pub extended: bool,
}

impl Geometry {
    /// Bytes per cluster.
    pub(crate) fn cluster_size(self) -> u64 {
        1 << self.cluster_bits
    }

    /// log2 of the L2 entries per table (a table fills one cluster).
    pub(crate) fn l2_bits(self) -> u32 {
        self.cluster_bits - if self.extended { 4 } else { 3 }
    }

    /// 64-bit words per L2 entry.
    pub(crate) fn words_per_entry(self) -> usize {
        if self.extended { 2 } else { 1 }
    }

    /// log2 of the guest bytes one L1 entry covers.
    pub(crate) fn l1_coverage_bits(self) -> u32 {
        self.cluster_bits + self.l2_bits()
    }

    /// Bytes per subcluster (the cluster size without extended L2 entries).
    pub(crate) fn subcluster_size(self) -> u64 {
        if self.extended { self.cluster_size() / u64::from(SUBCLUSTERS) } else { self.cluster_size() }
    }
}

/// Decodes an L1 entry; `Ok(None)` means no L2 table (the whole range is unallocated).
pub(crate) fn decode_l1(raw: u64, index: u64, guest: u64) -> Result<Option<u64>> {
    if raw & L1_RESERVED != 0 {
        return Err(Error::invalid(format!(
            "L1 entry {index} for guest offset {guest} has reserved bits set ({:#x})",
            raw & L1_RESERVED
        )));
    }
    let host = raw & OFFSET_MASK;
    Ok((host != 0).then_some(host))
}

/// What one L2 entry says about its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cluster {
    /// Never written: reads as zeros (we never follow backing files).
    Unallocated,
    /// Reads as zeros (v3 zero flag; a preallocated host offset, if any, is not read).
    Zero { host: Option<u64> },
    /// Stored verbatim at `host` (cluster-aligned per the spec; the engine checks).
    Normal { host: u64 },
    /// Compressed bytes at `host..host + len` (any byte offset).
    Compressed { host: u64, len: u64 },
    /// Extended L2: per-subcluster `alloc` / `zero` bits; `host` is `None` when the cluster has
    /// no host cluster (then no subcluster may be allocated).
    Subclusters { host: Option<u64>, alloc: u32, zero: u32 },
}

/// How a run of guest bytes inside one cluster reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece {
    Unallocated,
    Zero,
    /// Verbatim at this host offset.
    Data {
        host: u64,
    },
    /// The whole cluster is compressed at `host..host + len`.
    Compressed {
        host: u64,
        len: u64,
    },
}

impl Cluster {
    /// Decodes the L2 entry `words` (1 or 2 words per [`Geometry`]) for the cluster at guest
    /// offset `guest` in an image of `version`.
    pub(crate) fn decode(geo: Geometry, version: u32, words: &[u64], guest: u64) -> Result<Cluster> {
        let entry = words.first().copied().unwrap_or(0);
        let bitmap = if geo.extended { words.get(1).copied().unwrap_or(0) } else { 0 };
        if entry & COMPRESSED != 0 {
            if bitmap != 0 {
                return Err(Error::invalid(format!(
                    "L2 entry for compressed cluster at guest offset {guest} has a non-zero subcluster bitmap ({bitmap:#x})"
                )));
            }
            return Ok(decode_compressed(geo, entry));
        }
        let reserved = entry & if geo.extended { L2_EXTENDED_RESERVED } else { L2_RESERVED };
        if reserved != 0 {
            return Err(Error::invalid(format!(
                "L2 entry for guest offset {guest} has reserved bits set ({reserved:#x})"
            )));
        }
        let host = entry & OFFSET_MASK;
        let host = (host != 0).then_some(host);
        if geo.extended {
            let alloc = bitmap as u32;
            let zero = (bitmap >> 32) as u32;
            if alloc & zero != 0 {
                return Err(Error::invalid(format!(
                    "L2 entry for guest offset {guest} marks subclusters both allocated and zero (bitmap {bitmap:#x})"
                )));
            }
            if host.is_none() && alloc != 0 {
                return Err(Error::invalid(format!(
                    "L2 entry for guest offset {guest} has allocated subclusters but no host cluster (bitmap {bitmap:#x})"
                )));
            }
            return Ok(Cluster::Subclusters { host, alloc, zero });
        }
        if entry & ZERO != 0 {
            if version < 3 {
                return Err(Error::invalid(format!(
                    "L2 entry for guest offset {guest} is a zero cluster, which version 2 images cannot have"
                )));
            }
            return Ok(Cluster::Zero { host });
        }
        Ok(match host {
            None => Cluster::Unallocated,
            Some(host) => Cluster::Normal { host },
        })
    }

    /// The host cluster offset the engine must check for alignment and overlap, if any.
    pub(crate) fn host_cluster(self) -> Option<u64> {
        match self {
            Cluster::Zero { host } | Cluster::Subclusters { host, .. } => host,
            Cluster::Normal { host } => Some(host),
            Cluster::Unallocated | Cluster::Compressed { .. } => None,
        }
    }

    /// How the bytes from `in_cluster` on read, and where (offset in the cluster) that uniform
    /// run ends.
    pub(crate) fn piece_at(self, geo: Geometry, in_cluster: u64) -> (Piece, u64) {
        let cluster_size = geo.cluster_size();
        match self {
            Cluster::Unallocated => (Piece::Unallocated, cluster_size),
            Cluster::Zero { .. } => (Piece::Zero, cluster_size),
            Cluster::Normal { host } => (Piece::Data { host: host + in_cluster }, cluster_size),
            Cluster::Compressed { host, len } => (Piece::Compressed { host, len }, cluster_size),
            Cluster::Subclusters { host, alloc, zero } => {
                let sub_size = geo.subcluster_size();
                let status = |i: u64| (alloc >> i & 1, zero >> i & 1);
                let first = in_cluster / sub_size;
                let mut last = first;
                while last + 1 < u64::from(SUBCLUSTERS) && status(last + 1) == status(first) {
                    last += 1;
                }
                let end = (last + 1) * sub_size;
                let piece = match (status(first), host) {
                    ((_, 1), _) => Piece::Zero,
                    ((1, _), Some(host)) => Piece::Data { host: host + in_cluster },
                    _ => Piece::Unallocated,
                };
                (piece, end)
            }
        }
    }
}

fn decode_compressed(geo: Geometry, entry: u64) -> Cluster {
    // cluster_bits - 8 bits of sector count sit just below bit 62, the offset below them.
    let count_bits = geo.cluster_bits - 8;
    let count_shift = 62 - count_bits;
    let host = entry & ((1u64 << count_shift) - 1);
    let extra_sectors = (entry >> count_shift) & ((1u64 << count_bits) - 1);
    // At most 2^13 sectors and an offset below 2^61: no overflow.
    let len = (extra_sectors + 1) * COMPRESSED_SECTOR_BYTES - (host % COMPRESSED_SECTOR_BYTES);
    Cluster::Compressed { host, len }
}

/// Decodes an L2 table read from disk into 64-bit words.
pub(crate) fn decode_words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    const STD_64K: Geometry = Geometry { cluster_bits: 16, extended: false };
    const EXT_64K: Geometry = Geometry { cluster_bits: 16, extended: true };

    #[test]
    fn l1_entry_with_copied_flag_decodes_to_its_l2_offset() {
        assert_eq!(decode_l1(COPIED | 0x3_0000, 0, 0).ok(), Some(Some(0x3_0000)));
    }

    #[test]
    fn l1_entry_of_zero_has_no_l2_table() {
        assert_eq!(decode_l1(0, 0, 0).ok(), Some(None));
    }

    #[test]
    fn l1_entry_with_reserved_bits_is_rejected() {
        let err = decode_l1(0x3_0000 | 1 << 60, 2, 1 << 30).err().map(|e| (e.kind(), e.to_string()));
        assert_eq!(
            err,
            Some((
                ErrorKind::InvalidImage,
                "L1 entry 2 for guest offset 1073741824 has reserved bits set (0x1000000000000000)".into()
            ))
        );
    }

    #[test]
    fn l2_entry_with_reserved_bits_is_rejected() {
        let err = Cluster::decode(STD_64K, 3, &[COPIED | 0x5_0000 | 0x100], 0).err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidImage));
    }

    #[test]
    fn l2_entry_with_offset_decodes_to_normal_cluster() {
        let c = Cluster::decode(STD_64K, 3, &[COPIED | 0x5_0000], 0).ok();
        assert_eq!(c, Some(Cluster::Normal { host: 0x5_0000 }));
    }

    #[test]
    fn zero_flag_in_v3_is_a_zero_cluster_keeping_the_preallocated_offset() {
        let c = Cluster::decode(STD_64K, 3, &[0x5_0000 | ZERO], 0).ok();
        assert_eq!(c, Some(Cluster::Zero { host: Some(0x5_0000) }));
    }

    #[test]
    fn zero_flag_in_v2_is_rejected() {
        let err = Cluster::decode(STD_64K, 2, &[ZERO], 0).err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidImage));
    }

    #[test]
    fn compressed_descriptor_splits_offset_and_sector_count_by_cluster_bits() {
        // 64 KiB clusters: offset in bits 0..54, additional sectors in bits 54..62.
        let entry = COMPRESSED | (3u64 << 54) | 0x1_0123;
        let c = Cluster::decode(STD_64K, 3, &[entry], 0).ok();
        assert_eq!(c, Some(Cluster::Compressed { host: 0x1_0123, len: 4 * 512 - 0x123 }));
    }

    #[test]
    fn compressed_descriptor_with_512_byte_clusters_uses_bit_61_for_the_sector_count() {
        let geo = Geometry { cluster_bits: 9, extended: false };
        let entry = COMPRESSED | (1u64 << 61) | 0x600;
        assert_eq!(
            Cluster::decode(geo, 3, &[entry], 0).ok(),
            Some(Cluster::Compressed { host: 0x600, len: 1024 })
        );
    }

    #[test]
    fn compressed_cluster_with_subcluster_bitmap_is_rejected() {
        let err = Cluster::decode(EXT_64K, 3, &[COMPRESSED | 0x1_0000, 1], 0).err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidImage));
    }

    #[test]
    fn extended_entry_with_zero_bit_in_first_word_is_rejected() {
        let err = Cluster::decode(EXT_64K, 3, &[0x5_0000 | ZERO, 1], 0).err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidImage));
    }

    #[test]
    fn subcluster_both_allocated_and_zero_is_rejected() {
        let err = Cluster::decode(EXT_64K, 3, &[0x5_0000, 1 << 32 | 1], 0).err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidImage));
    }

    #[test]
    fn allocated_subcluster_without_host_cluster_is_rejected() {
        let err = Cluster::decode(EXT_64K, 3, &[0, 1], 0).err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidImage));
    }

    #[test]
    fn subcluster_runs_split_at_status_changes() {
        // Subclusters 0-1 allocated, 2 zero, 3..32 unallocated (2 KiB subclusters).
        let c = Cluster::Subclusters { host: Some(0x5_0000), alloc: 0b011, zero: 0b100 };
        assert_eq!(c.piece_at(EXT_64K, 0), (Piece::Data { host: 0x5_0000 }, 4096));
        assert_eq!(c.piece_at(EXT_64K, 3000), (Piece::Data { host: 0x5_0000 + 3000 }, 4096));
        assert_eq!(c.piece_at(EXT_64K, 4096), (Piece::Zero, 6144));
        assert_eq!(c.piece_at(EXT_64K, 6144), (Piece::Unallocated, 65536));
    }

    #[test]
    fn geometry_of_extended_l2_halves_the_entries_per_table() {
        assert_eq!(STD_64K.l1_coverage_bits(), 16 + 13);
        assert_eq!(EXT_64K.l1_coverage_bits(), 16 + 12);
        assert_eq!(EXT_64K.subcluster_size(), 2048);
    }
}
