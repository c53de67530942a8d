//! Named limits, each with the reason it exists. Options can tighten them, never loosen them
//! past what memory and sanity allow.

/// Largest virtual size we accept by default: 64 TiB. qemu's own qcow2 limit is 2^61 bytes, but
/// nothing we import legitimately comes near 64 TiB and a larger number is almost certainly an
/// attack on the L1 table size or on the target.
pub const DEFAULT_MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// Largest L1 table we will load, in entries (32 MiB of memory). qemu caps it at 32 MiB too
/// (`QCOW_MAX_L1_SIZE`).
pub const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;

/// Largest refcount table we accept, in bytes (qemu: `QCOW_MAX_REFTABLE_SIZE`, 8 MiB).
pub const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;

/// Largest number of internal snapshots listed (qemu: `QCOW_MAX_SNAPSHOTS`).
pub const MAX_SNAPSHOTS: u32 = 65536;

/// Largest snapshot table we read, in bytes (qemu caps the table at 64 MiB).
pub const MAX_SNAPSHOT_TABLE_BYTES: u64 = 64 << 20;

/// Largest header length (qcow2 v3 `header_length`, with extensions it must fit in cluster 0).
pub const MAX_HEADER_BYTES: u64 = 2 << 20;

/// Number of bytes read from the start of a source to recognise its format.
pub const PROBE_BYTES: usize = 64 * 1024;

/// Granularity at which runs of zeros in data become holes (qemu-img's default `-S 4k`).
pub const DEFAULT_SPARSE_SIZE: usize = 4096;

/// How much guest data the converter keeps in flight per worker window: enough for large
/// sequential writes, small enough to keep memory bounded (2 windows × this in flight).
pub const CONVERT_WINDOW_BYTES: usize = 8 << 20;

/// Number of L2 tables cached by the qcow2 reader (at most 2 MiB each, so ≤ 32 MiB).
pub const L2_CACHE_ENTRIES: usize = 16;
