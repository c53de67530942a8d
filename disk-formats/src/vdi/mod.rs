//! Read-only VDI engine (VirtualBox): dynamic and static images, byte-identical to
//! `qemu-img convert -O raw`.
//!
//! ## Design
//! `header.rs` parses the header with qemu's checks (version 1.1, 512-byte sectors, 1 MiB
//! blocks, aligned offsets, disk size within the blocks). [`VdiImage::open`] loads the block
//! map entries covering the disk; blocks are served by [`crate::blockmap`]: an entry of
//! `0xffffffff` (never written) or `0xfffffffe` (discarded) reads as zeros, any other entry `n` is
//! the block at `offset_data + n × 1 MiB`.
//!
//! ## Security
//! Differencing images (parent or link UUID, type 4) are refused like backing files.
//!
//! ## Caveats
//! The block map must lie inside the file, and so must every allocated block's visible bytes;
//! qemu would read zeros there.

mod header;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::blockmap::{self, Block, BlockTable, check_in_file, read_bytes};
use crate::image::{Image, ImageInfo, Segment};
use crate::io::ReadAt;
use crate::{Error, OpenOptions, Result};

use header::{BLOCK_BYTES, HEADER_BYTES, Header, ImageType};

/// Largest block map we load (64 MiB of entries: 16 TiB of 1 MiB blocks).
const MAX_BLOCK_MAP_BYTES: u64 = 64 << 20;
/// Entries at or above this are not allocated (`VDI_DISCARDED`, `VDI_UNALLOCATED`).
const FIRST_UNALLOCATED: u32 = 0xffff_fffe;

/// A VDI image opened read-only.
pub struct VdiImage {
    source: Arc<dyn ReadAt>,
    file_size: u64,
    header: Header,
    /// Block map entries covering the disk (4 bytes each, as on disk, to keep memory small).
    map: Vec<u32>,
}

impl std::fmt::Debug for VdiImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VdiImage").field("header", &self.header).finish_non_exhaustive()
    }
}

impl VdiImage {
    /// Opens and validates a VDI image.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::Denied`]: a differencing image.
    /// - [`crate::ErrorKind::Unsupported`]: versions other than 1.1, other sector or block sizes.
    /// - [`crate::ErrorKind::TooLarge`]: above `opts.max_virtual_size` or a block map above
    ///   [`MAX_BLOCK_MAP_BYTES`].
    /// - [`crate::ErrorKind::InvalidImage`]: a bad header, a block map outside the file.
    pub fn open(source: Arc<dyn ReadAt>, opts: &OpenOptions) -> Result<Self> {
        let file_size = source.size().map_err(|e| Error::io("reading the size of the VDI image", e))?;
        let head = read_bytes(&*source, 0, (HEADER_BYTES as u64).min(file_size), "reading the VDI header")?;
        let header = Header::parse(&head)?;
        if header.disk_size > opts.max_virtual_size {
            return Err(Error::too_large(format!(
                "virtual size {} bytes exceeds the limit of {} bytes",
                header.disk_size, opts.max_virtual_size
            )));
        }
        let map_bytes = u64::from(header.blocks_in_image) * 4;
        if map_bytes > MAX_BLOCK_MAP_BYTES {
            return Err(Error::too_large(format!(
                "VDI block map of {map_bytes} bytes is larger than the limit of {MAX_BLOCK_MAP_BYTES} bytes"
            )));
        }
        check_in_file("VDI block map", header.offset_bmap, map_bytes, file_size)?;
        let needed = header.disk_size.div_ceil(u64::from(BLOCK_BYTES));
        let raw = read_bytes(&*source, header.offset_bmap, needed * 4, "reading the VDI block map")?;
        let map = raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Ok(VdiImage { source, file_size, header, map })
    }
}

impl BlockTable for VdiImage {
    fn block_size(&self) -> u64 {
        u64::from(BLOCK_BYTES)
    }

    fn virtual_size(&self) -> u64 {
        self.header.disk_size
    }

    fn file_size(&self) -> u64 {
        self.file_size
    }

    fn source(&self) -> &dyn ReadAt {
        &*self.source
    }

    fn block(&self, index: u64) -> Result<Block> {
        let entry = usize::try_from(index).ok().and_then(|i| self.map.get(i)).copied();
        Ok(match entry {
            Some(n) if n < FIRST_UNALLOCATED => {
                Block::Data { host: self.header.offset_data + u64::from(n) * u64::from(BLOCK_BYTES) }
            }
            _ => Block::Unallocated,
        })
    }

    fn name(&self) -> &'static str {
        "VDI"
    }
}

impl Image for VdiImage {
    fn info(&self) -> ImageInfo {
        let mut info = ImageInfo::plain("vdi", self.header.disk_size, self.file_size);
        info.cluster_size = Some(u64::from(BLOCK_BYTES));
        let kind = match self.header.image_type {
            ImageType::Dynamic => "dynamic",
            ImageType::Static => "static",
        };
        info.format_specific.insert("image_type".to_owned(), kind.to_owned());
        info
    }

    fn virtual_size(&self) -> u64 {
        self.header.disk_size
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Segment> {
        blockmap::map(self, offset, max_len)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        blockmap::read_at(self, buf, offset)
    }

    fn data_source(&self) -> &dyn ReadAt {
        &*self.source
    }
}
