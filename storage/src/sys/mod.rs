//! Platform code: every system call the crate makes goes through here.
//!
//! Everything is done through rustix's safe wrappers (`fallocate`, `copy_file_range`, `lseek`
//! with `SEEK_DATA`/`SEEK_HOLE`, the `FICLONE` and `BLKSSZGET` ioctls), so this module needs no
//! `unsafe` either. Should a raw ioctl ever be needed, it goes here, behind
//! `#![allow(unsafe_code)]` and a `// SAFETY:` comment per block.

#[cfg(not(target_os = "linux"))]
compile_error!("storage supports Linux only (fallocate, copy_file_range, FICLONE, block devices)");

mod linux;

pub use linux::*;
