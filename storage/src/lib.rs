//! # storage
//!
//! Where bytes land. A [`Volume`] is the target of an import, upload, clone or conversion: a
//! sparse regular file or a block device, opened for writing. It implements
//! [`disk_formats::WriteAt`], so the converter writes into it without knowing which it is.
//!
//! Main types and functions:
//! - [`Volume::create`] opens a block device in place, or creates/truncates a sparse file of
//!   the image's size (or of unknown size, for streams), and [`Volume::finish`] preallocates
//!   if asked and flushes: a volume is complete only once `finish` returned `Ok`.
//! - Zero runs ([`WriteAt::write_zeroes`](disk_formats::WriteAt::write_zeroes)) become holes in
//!   files and write-zeroes on devices (unmapping where the device can), so volumes stay thin
//!   and still read back zeros.
//! - Large writes whose buffer and offset are 4 KiB-aligned alike go through a second
//!   `O_DIRECT` descriptor (from the caller's buffer to the device, no page-cache copy); the
//!   unaligned edges, small writes, and file systems without direct I/O use the page cache.
//! - [`WriteAt::copy_from_file`](disk_formats::WriteAt::copy_from_file) copies in the kernel
//!   (`copy_file_range`), and tells the caller to copy by hand where it cannot.
//! - For the cloner: [`reflink`] (`FICLONE`), [`next_data`] (`SEEK_DATA`/`SEEK_HOLE`),
//!   [`is_block_device`], and [`is_unsupported`] to tell "cannot here, fall back" errors apart.
//! - Loop devices (block devices over files, for `volumeMode: Block` in embedded mode):
//!   [`loop_attach`], [`loop_find`] (by backing file), [`loop_detach`], [`loop_available`].
//! - [`Error`], with a [`kind`](Error::kind) that maps onto [`disk_formats::ErrorKind`].
//!
//! Every system call goes through `sys/` (Linux only). It uses rustix's safe wrappers; the few
//! calls rustix lacks (`sync_file_range`, `mallopt`, the loop-device ioctls) are the crate's
//! only `unsafe` code, in `sys/`, each with a `// SAFETY:` comment.
//!
//! ## Caveats
//! - Writes past [`WriteAt::capacity`](disk_formats::WriteAt::capacity) fail ("write past the
//!   end of the volume") instead of growing a file or wrapping on a device.
//! - A block device keeps its old contents wherever the image neither writes nor zeroes:
//!   writers must zero every range they skip (the converter does, since
//!   `unwritten_reads_zero()` is `false` there).

mod error;
mod sys;
mod volume;

pub use error::{Error, Result};
pub use sys::{bound_allocator_retention, is_block_device, is_unsupported, next_data, reflink};
pub use sys::{loop_attach, loop_available, loop_detach, loop_find};
pub use volume::{CreateOptions, Preallocation, Volume, WRITEBACK_IN_FLIGHT_BYTES, WriteCache};
