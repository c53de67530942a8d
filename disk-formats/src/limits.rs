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

/// Bytes of decoded L2 tables the qcow2 reader caches (a 64 KiB-cluster table maps 512 MiB, so
/// 8 MiB of tables cover 64 GiB of guest data; a 2 MiB-cluster image still keeps 4 tables).
pub const L2_CACHE_BYTES: usize = 8 << 20;

/// Largest extra data of one qcow2 snapshot table entry (qemu: `QCOW_MAX_SNAPSHOT_EXTRA_DATA`).
pub const MAX_SNAPSHOT_EXTRA_DATA_BYTES: u64 = 1024;

/// Longest backing file name we read to name it in the denial (qemu refuses longer names too).
pub const MAX_BACKING_FILE_NAME_BYTES: u64 = 1023;

/// Largest zstd window (log2) accepted in a compressed qcow2 cluster: a cluster is at most
/// 2 MiB, so a frame never needs more than 4 MiB of window; this bounds the decoder's memory
/// against hostile frame headers.
pub const QCOW2_ZSTD_MAX_WINDOW_LOG: u32 = 22;

/// Largest zstd window accepted, as a power of two: 128 MiB, zstd's own default limit. Frames made
/// with `zstd --long=28` or more need more memory and are refused (as `zstd -d` does without
/// `--memory`), so a hostile frame cannot make us allocate gigabytes.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;
