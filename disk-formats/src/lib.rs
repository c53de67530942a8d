//! # disk-formats
//!
//! What a disk image is: probe by magic bytes, parse formats (raw, ISO, qcow2, VMDK, VHD, VHDX,
//! VDI), strip compression wrappers (gzip, xz, zstd), map extents (data / zero / unallocated) and
//! convert to raw, byte-identical to `qemu-img convert -O raw` and sparse.
//!
//! The crate is synchronous and pure over the [`ReadAt`] / [`WriteAt`] traits: no tokio, no
//! network. The importer supplies HTTP-backed readers, `storage` supplies volumes.
//!
//! Main types:
//! - [`probe::probe`] → [`Format`] from the first bytes.
//! - [`open_image`] → a boxed [`Image`] (raw, qcow2, VMDK, VHD, VHDX, VDI) that can
//!   [`Image::map`] and [`Image::read_at`]. The block-table formats share one engine
//!   (`blockmap`): a format says how each block is stored, the engine coalesces and reads.
//! - [`convert`] → writes an [`Image`] or a raw byte stream to a [`WriteAt`] target.
//!
//! ## Security
//! Images are hostile until proven otherwise. Readers never follow backing files or external
//! data files, check every number read from disk with checked arithmetic and against the named
//! limits in [`limits`], and refuse truncated images instead of reading zeros.

mod blockmap;
pub mod compress;
pub mod convert;
mod error;
pub mod image;
pub mod io;
pub mod limits;
pub mod probe;
pub mod qcow2;
pub mod raw;
pub mod vdi;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

use std::sync::Arc;

pub use error::{Error, ErrorKind, Result};
pub use image::{Image, ImageInfo, Segment, SegmentKind};
pub use io::{ReadAt, WriteAt};
pub use probe::Format;

/// Options for opening an image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Refuse images whose virtual size is larger than this.
    pub max_virtual_size: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self { max_virtual_size: limits::DEFAULT_MAX_VIRTUAL_SIZE }
    }
}

/// Probes `source` and opens it as the disk format it holds.
///
/// # Errors
/// Compression wrappers are not random-access: they are refused here with
/// [`ErrorKind::Unsupported`] and must be streamed (see [`convert`]). Formats we recognise but do
/// not read yet, encrypted volumes and legacy formats are refused with a message naming them.
pub fn open_image(source: Arc<dyn ReadAt>, opts: &OpenOptions) -> Result<Box<dyn Image>> {
    let mut head = vec![0u8; limits::PROBE_BYTES];
    let n = read_head(&*source, &mut head)?;
    let format = probe::probe(&head[..n]);
    open_as(source, format, opts)
}

/// Opens `source` as `format` (already probed).
pub fn open_as(source: Arc<dyn ReadAt>, format: Format, opts: &OpenOptions) -> Result<Box<dyn Image>> {
    let image: Box<dyn Image> = match format {
        // A fixed VHD has its only footer in the last sector: no magic at the start.
        Format::Raw if vhd::has_footer_at_end(&*source) => Box::new(vhd::VhdImage::open(source, opts)?),
        Format::Raw | Format::Iso => Box::new(raw::RawImage::open(source, format)?),
        Format::Qcow2 => Box::new(qcow2::Qcow2Image::open(source, opts)?),
        Format::Vmdk => Box::new(vmdk::VmdkImage::open(source, opts)?),
        Format::Vpc => Box::new(vhd::VhdImage::open(source, opts)?),
        Format::Vhdx => Box::new(vhdx::VhdxImage::open(source, opts)?),
        Format::Vdi => Box::new(vdi::VdiImage::open(source, opts)?),
        Format::Luks => {
            return Err(Error::unsupported("image is LUKS-encrypted; encrypted images are not supported"));
        }
        Format::Gzip | Format::Xz | Format::Zstd => {
            return Err(Error::unsupported(format!(
                "image is {format}-compressed and must be streamed, not opened for random access"
            )));
        }
        other => return Err(Error::unsupported(format!("image format {other} is not supported yet"))),
    };
    let size = image.virtual_size();
    if size > opts.max_virtual_size {
        return Err(Error::too_large(format!(
            "virtual size {size} bytes exceeds the limit of {} bytes",
            opts.max_virtual_size
        )));
    }
    Ok(image)
}

/// Reads up to `buf.len()` bytes from the start of `source`; returns how many were read.
pub fn read_head(source: &dyn ReadAt, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match source.read_at(&mut buf[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading the image header", e)),
        }
    }
    Ok(n)
}
