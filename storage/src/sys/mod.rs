//! Platform code: every system call the crate makes goes through here.
//!
//! Almost everything is done through rustix's safe wrappers (`fallocate`, `copy_file_range`,
//! `lseek` with `SEEK_DATA`/`SEEK_HOLE`, the `FICLONE` and `BLKSSZGET` ioctls). The one call
//! rustix lacks, `sync_file_range` (and the allocator tuning `mallopt`), goes through libc
//! behind `#[allow(unsafe_code)]` with a `// SAFETY:` comment; so do the loop-device ioctls
//! (`loopdev`); any future raw call belongs here too.

#[cfg(not(target_os = "linux"))]
compile_error!("storage supports Linux only (fallocate, copy_file_range, FICLONE, block devices)");

mod linux;
mod loopdev;

pub use linux::*;
pub use loopdev::{loop_attach, loop_available, loop_detach, loop_find};
