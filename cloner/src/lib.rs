//! # cloner
//!
//! Volume to volume. A clone of a source volume (sparse file or block device) onto a target
//! (file or block device), by the cheapest strategy that works here, checked, with a report
//! saying which strategy ran and why the faster ones did not:
//!
//! 1. [`Strategy::Reflink`]: `FICLONE` (XFS, btrfs): O(1), the clone shares the source's
//!    blocks copy-on-write, so writes to it never reach the source. A bigger target is then
//!    extended with `set_len`.
//! 2. [`Strategy::SparseCopy`]: walks the source's data extents (`SEEK_DATA`/`SEEK_HOLE`),
//!    copies each in the kernel (`copy_file_range`), or by read/write where the kernel cannot
//!    (block devices), and leaves holes as holes (zeroed ranges on a block device). With
//!    [`CloneOptions::detect_zeroes`] all-zero blocks inside data extents become holes too.
//! 3. [`Strategy::Stream`]: the host-assisted path: a source side serves the volume as a framed
//!    stream ([`wire`]: header, DATA / HOLE frames of at most 4 MiB, END with the XXH3-128 of
//!    the frames, holes hashed by offset and length, not as zeros) and a target side writes
//!    it, holes staying holes; each side pipelines its disk and transport work on two
//!    threads. Across processes it
//!    runs over TCP with TLS and a shared token ([`net`]); [`clone_volume`] runs both sides in
//!    one process over a socket pair.
//!
//! [`clone_volume`] tries them in that order (or only the one asked for). After a fast path
//! (reflink, sparse copy) the target is compared with the source (first and last MiB of each
//! data extent; the sha256 of the whole with [`CloneOptions::verify`]); a mismatch moves on to
//! the next strategy, as CDI should when a CSI clone silently produces garbage (CDI #4068).
//! The reason lands in [`CloneReport::fallback_reason`].
//!
//! Errors are [`Error`], whose [`kind`](Error::kind) maps onto [`disk_formats::ErrorKind`]: a
//! target smaller than the source is `TooLarge` ("source is larger than the target").
//!
//! ## Caveats
//! - The source must not change during the clone (CDI waits until no pod writes to it); a
//!   source written to meanwhile makes a fast path fail verification or the stream's checksum.
//! - A block-device target bigger than the source has its tail zeroed (write-zeroes, which
//!   unmaps where the device can), so the clone reads as the source followed by zeros.
//! - An existing target file is replaced; write to a temporary name and rename for
//!   all-or-nothing output (the CLI does).

mod error;
mod local;
pub mod net;
mod source;
mod stream;
pub mod wire;

use std::fmt;

pub use error::{Error, Result};
pub use local::clone_volume;

/// How a clone is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Strategy {
    /// `FICLONE`: the target shares the source's blocks.
    Reflink,
    /// Data extents copied (in the kernel where possible), holes skipped.
    SparseCopy,
    /// Framed, checksummed stream of extents (host-assisted).
    Stream,
}

impl Strategy {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Reflink => "reflink",
            Strategy::SparseCopy => "sparse-copy",
            Strategy::Stream => "stream",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How [`clone_volume`] works.
#[derive(Debug, Clone, Default)]
pub struct CloneOptions {
    /// Only this strategy (no fallback); `None` = the fastest that works and verifies.
    pub strategy: Option<Strategy>,
    /// Size of a file target: at least the source's (a bigger target grows the clone);
    /// `None` = the source's size. A block device keeps its own size.
    pub target_size: Option<u64>,
    /// Also turn all-zero blocks inside the source's data extents into holes (sparse copy and
    /// stream; costs a scan of the data).
    pub detect_zeroes: bool,
    /// After a fast path, compare the sha256 of the whole target with the source's, not only
    /// samples.
    pub verify: bool,
}

/// What a clone did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneReport {
    /// The strategy that made the clone.
    pub strategy: Strategy,
    /// How the bytes moved: `FICLONE`, `copy_file_range`, `read/write`, `stream`, `tls-stream`.
    pub method: &'static str,
    /// Why faster strategies were skipped or rejected (`None` when the first one worked).
    pub fallback_reason: Option<String>,
    /// How the result was checked: `sampled`, `sha256`, `stream-xxh3` (the stream's XXH3-128 of its frames).
    pub verification: &'static str,
    /// Data bytes written to the target (0 for a reflink: blocks are shared, not copied).
    pub bytes_copied: u64,
    /// Logical size of the source.
    pub source_size: u64,
    /// Logical size of the target.
    pub target_size: u64,
    /// Bytes the source has allocated (`None` for a block device).
    pub source_allocated: Option<u64>,
    /// Bytes the target has allocated (`None` for a block device, or the sending side).
    pub target_allocated: Option<u64>,
    /// The sha256 of the logical content, when the strategy computed one. None does at
    /// present: the stream checks an XXH3-128 of its frames instead (hashing the zeros of
    /// holes, and sha256 itself, cost more than the transfer); `verify` compares sha256s
    /// without reporting them.
    pub sha256: Option<String>,
}
