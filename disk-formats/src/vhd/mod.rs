//! Read-only VHD engine (qemu's `vpc`): fixed and dynamic disks, byte-identical to
//! `qemu-img convert -f vpc -O raw`.
//!
//! ## Design
//! - `footer.rs` parses the footer and the dynamic disk header from bytes and decides the virtual
//!   size the way qemu does: the CHS geometry for Virtual PC (`vpc `), old qemu (`qemu`) and
//!   unknown creators; `current_size` for Hyper-V (`win `), qemu with `force_size` (`qem2`),
//!   disk2vhd (`d2v `), XenServer (`tap\0`), XenConverter (`CTXS`) and Azure (`wa\0\0`), and for
//!   any image whose geometry is the maximum (65535/16/255).
//! - A dynamic disk keeps a copy of the footer at offset 0; a fixed disk has it only in its last
//!   512 bytes, so it has no magic at the start: [`crate::open_as`] looks at the last sector of
//!   anything that probes as raw and opens it here when it is a VHD footer.
//! - Dynamic disks: the block allocation table (BAT) entries covering the virtual size are
//!   loaded and checked at open (each block, sector bitmap included, inside the file, as qemu
//!   checks); blocks are served by [`crate::blockmap`]. As in qemu, the per-block sector bitmap
//!   is not consulted for reading: an allocated block is read whole.
//!
//! ## Security
//! Differencing disks (a parent VHD) are refused like backing files; the footer checksum must
//! match (qemu refuses a bad one too).
//!
//! ## Caveats
//! qemu's own probe calls a fixed VHD "raw" (and `qemu-img convert` without `-f vpc` keeps the
//! footer as the last sector of the disk); we recognise its footer. A fixed VHD inside a
//! gzip/xz/zstd wrapper is streamed as raw, footer included, as qemu-img would.

mod footer;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::blockmap::{self, Block, BlockTable, check_in_file, read_bytes};
use crate::image::{Image, ImageInfo, Segment};
use crate::io::ReadAt;
use crate::{Error, OpenOptions, Result};

use footer::{DYNAMIC_HEADER_BYTES, DiskType, DynamicHeader, FOOTER_BYTES, Footer, MAX_SECTORS};

/// Largest BAT we accept (64 MiB: 16 Mi blocks); qemu's own bound is larger but a real VHD of at
/// most 2040 GiB with the default 2 MiB blocks needs 4 MiB.
const MAX_BAT_BYTES: u64 = 64 << 20;
/// BAT entry of a block that is not allocated.
const BAT_UNALLOCATED: u32 = 0xffff_ffff;
/// Block size used to present a fixed disk to the block engine (segments coalesce anyway).
const FIXED_BLOCK_BYTES: u64 = 2 << 20;

/// A VHD opened read-only.
pub struct VhdImage {
    source: Arc<dyn ReadAt>,
    file_size: u64,
    footer: Footer,
    virtual_size: u64,
    /// Dynamic disks: block size, sector bitmap size and the BAT entries covering the disk (as on
    /// disk, 4 bytes each; checked at open).
    block_size: u64,
    bitmap_bytes: u64,
    bat: Vec<u32>,
}

impl std::fmt::Debug for VhdImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdImage")
            .field("disk_type", &self.footer.disk_type)
            .field("virtual_size", &self.virtual_size)
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

/// Whether the last sector of `source` is a VHD footer (a fixed VHD, which has no magic at its
/// start).
pub fn has_footer_at_end(source: &dyn ReadAt) -> bool {
    let Ok(size) = source.size() else { return false };
    let Some(at) = size.checked_sub(FOOTER_BYTES as u64) else { return false };
    let mut cookie = [0u8; 8];
    source.read_exact_at(&mut cookie, at).is_ok() && &cookie == b"conectix"
}

impl VhdImage {
    /// Opens and validates a fixed or dynamic VHD.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::Denied`]: a differencing disk (it has a parent).
    /// - [`crate::ErrorKind::TooLarge`]: above 2040 GiB (qemu's maximum), above
    ///   `opts.max_virtual_size`, or a BAT above [`MAX_BAT_BYTES`].
    /// - [`crate::ErrorKind::InvalidImage`]: bad cookies or checksum, a BAT too small for the
    ///   disk, tables or blocks past the end of the file.
    pub fn open(source: Arc<dyn ReadAt>, opts: &OpenOptions) -> Result<Self> {
        let file_size = source.size().map_err(|e| Error::io("reading the size of the VHD image", e))?;
        if file_size < FOOTER_BYTES as u64 {
            return Err(Error::invalid("VHD: file too small for a footer"));
        }
        let head = read_bytes(&*source, 0, FOOTER_BYTES as u64, "reading the VHD footer copy")?;
        let at_start = head.starts_with(b"conectix");
        let footer = if at_start {
            Footer::parse(&head)?
        } else {
            let tail = read_bytes(
                &*source,
                file_size - FOOTER_BYTES as u64,
                FOOTER_BYTES as u64,
                "reading the VHD footer",
            )?;
            Footer::parse(&tail)?
        };
        if footer.disk_type == DiskType::Differencing {
            return Err(Error::denied(
                "VHD is a differencing disk (it has a parent disk); backing files are not allowed",
            ));
        }
        match (at_start, footer.disk_type) {
            (true, DiskType::Fixed) => {
                return Err(Error::invalid(
                    "VHD footer copy at the start of the file says the disk is fixed",
                ));
            }
            (false, DiskType::Dynamic) => {
                return Err(Error::invalid(
                    "VHD: dynamic disk without a footer copy at the start of the file",
                ));
            }
            _ => {}
        }
        let sectors = footer.total_sectors();
        if sectors > MAX_SECTORS {
            return Err(Error::too_large(format!(
                "VHD virtual size of {sectors} sectors is larger than the VHD maximum of {MAX_SECTORS} sectors (2040 GiB)"
            )));
        }
        let virtual_size = sectors * 512;
        if virtual_size > opts.max_virtual_size {
            return Err(Error::too_large(format!(
                "virtual size {virtual_size} bytes exceeds the limit of {} bytes",
                opts.max_virtual_size
            )));
        }
        let mut image = VhdImage {
            source,
            file_size,
            footer,
            virtual_size,
            block_size: FIXED_BLOCK_BYTES,
            bitmap_bytes: 0,
            bat: Vec::new(),
        };
        match footer.disk_type {
            DiskType::Fixed => {
                let data = file_size - FOOTER_BYTES as u64;
                if virtual_size > data {
                    return Err(Error::invalid(format!(
                        "image is truncated: fixed VHD of {virtual_size} bytes holds only {data} bytes of data"
                    )));
                }
            }
            _ => image.load_bat()?,
        }
        Ok(image)
    }

    fn load_bat(&mut self) -> Result<()> {
        let at = self.footer.data_offset;
        check_in_file("VHD dynamic disk header", at, DYNAMIC_HEADER_BYTES as u64, self.file_size)?;
        let raw = read_bytes(
            &*self.source,
            at,
            DYNAMIC_HEADER_BYTES as u64,
            "reading the VHD dynamic disk header",
        )?;
        let h = DynamicHeader::parse(&raw)?;
        let block_size = u64::from(h.block_size);
        let needed = self.virtual_size.div_ceil(block_size);
        if needed > u64::from(u32::MAX) {
            return Err(Error::invalid(format!("VHD needs {needed} blocks of {block_size} bytes, too many")));
        }
        if u64::from(h.max_table_entries) < needed {
            return Err(Error::invalid(format!(
                "VHD block allocation table has {} entries, but the virtual size {} needs {needed}",
                h.max_table_entries, self.virtual_size
            )));
        }
        let bat_bytes = u64::from(h.max_table_entries) * 4;
        if bat_bytes > MAX_BAT_BYTES {
            return Err(Error::too_large(format!(
                "VHD block allocation table of {bat_bytes} bytes is larger than the limit of {MAX_BAT_BYTES} bytes"
            )));
        }
        check_in_file("VHD block allocation table", h.table_offset, bat_bytes, self.file_size)?;
        let raw =
            read_bytes(&*self.source, h.table_offset, needed * 4, "reading the VHD block allocation table")?;
        let bitmap = h.bitmap_bytes();
        let mut bat = Vec::with_capacity(needed as usize);
        for (i, c) in raw.chunks_exact(4).enumerate() {
            let entry = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            bat.push(entry);
            if entry == BAT_UNALLOCATED {
                continue;
            }
            let start = u64::from(entry) * 512;
            if start.checked_add(bitmap + block_size).is_none_or(|end| end > self.file_size) {
                return Err(Error::invalid(format!(
                    "image is truncated: VHD block {i} at offset {start} ({} bytes with its bitmap) lies past end of file ({} bytes)",
                    bitmap + block_size,
                    self.file_size
                )));
            }
            if start < FOOTER_BYTES as u64 {
                return Err(Error::invalid(format!(
                    "VHD block {i} at offset {start} overlaps the footer copy"
                )));
            }
        }
        self.block_size = block_size;
        self.bitmap_bytes = bitmap;
        self.bat = bat;
        Ok(())
    }
}

impl BlockTable for VhdImage {
    fn block_size(&self) -> u64 {
        self.block_size
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    fn file_size(&self) -> u64 {
        self.file_size
    }

    fn source(&self) -> &dyn ReadAt {
        &*self.source
    }

    fn block(&self, index: u64) -> Result<Block> {
        if self.footer.disk_type == DiskType::Fixed {
            return Ok(Block::Data { host: index * self.block_size });
        }
        let entry = usize::try_from(index).ok().and_then(|i| self.bat.get(i)).copied();
        Ok(match entry {
            Some(n) if n != BAT_UNALLOCATED => Block::Data { host: u64::from(n) * 512 + self.bitmap_bytes },
            _ => Block::Unallocated,
        })
    }

    fn name(&self) -> &'static str {
        "VHD"
    }
}

impl Image for VhdImage {
    fn info(&self) -> ImageInfo {
        let mut info = ImageInfo::plain("vpc", self.virtual_size, self.file_size);
        if self.footer.disk_type != DiskType::Fixed {
            info.cluster_size = Some(self.block_size);
        }
        let specific = &mut info.format_specific;
        specific.insert("disk_type".to_owned(), self.footer.disk_type.name().to_owned());
        specific.insert("creator_app".to_owned(), self.footer.creator());
        specific.insert("current_size".to_owned(), self.footer.current_size.to_string());
        specific.insert(
            "geometry".to_owned(),
            format!("{}/{}/{}", self.footer.cylinders, self.footer.heads, self.footer.sectors_per_track),
        );
        let by = if self.footer.total_sectors() == self.footer.chs_sectors()
            && !self.footer.creator_uses_current_size()
        {
            "geometry"
        } else {
            "current_size"
        };
        specific.insert("size_from".to_owned(), by.to_owned());
        info
    }

    fn virtual_size(&self) -> u64 {
        self.virtual_size
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
