//! Read-only VHDX engine: dynamic and fixed disks, byte-identical to `qemu-img convert -O raw`.
//!
//! ## Design
//! - `header.rs` parses from bytes: the two headers (the valid one with the higher sequence
//!   number is current; CRC-32C checked), the region table (BAT and metadata regions), the
//!   metadata items (block size, virtual disk size, sector sizes) and BAT entries.
//! - [`VhdxImage::open`] loads the BAT entries of the payload blocks covering the disk, skipping
//!   the sector bitmap entry interleaved after every `chunk_ratio` payload entries, and checks
//!   every present block: 1 MiB-aligned, wholly inside the file (as qemu checks), outside the
//!   header section, the BAT, the metadata region and the log.
//! - BAT states map to the extent vocabulary: fully present → data; zero → zero; not present,
//!   undefined, unmapped → unallocated. Blocks are served by [`crate::blockmap`].
//!
//! ## Security
//! A differencing disk (the has-parent flag or a parent locator) is refused like a backing file.
//! A log that still holds entries (the image was not closed cleanly) would have to be replayed
//! before the data can be trusted: we refuse it with a clear error, as qemu does for a read-only
//! open.
//!
//! ## Caveats
//! A log GUID with no entry of that GUID in the log region counts as an empty log. Partially
//! present blocks (differencing disks only) are refused.

mod header;

use std::sync::Arc;

use crate::blockmap::{self, Block, BlockTable, check_in_file, read_bytes};
use crate::image::{Image, ImageInfo, Segment};
use crate::io::ReadAt;
use crate::{Error, OpenOptions, Result};

use header::{BatState, HEADER_SECTION_BYTES, Metadata};

/// Largest BAT we load (64 MiB: 8 Mi entries, 256 TiB of 32 MiB blocks).
const MAX_BAT_BYTES: u64 = 64 << 20;
/// Largest metadata region we read (the spec's table is 64 KiB; qemu writes a 1 MiB region).
const MAX_METADATA_BYTES: u64 = 64 << 20;
/// Largest log we scan for entries (the spec allows any multiple of 1 MiB; Hyper-V writes 1 MiB).
const MAX_LOG_BYTES: u64 = 256 << 20;
/// `chunk_ratio` numerator: sectors covered by one sector bitmap block (2^23).
const SECTORS_PER_BITMAP_BLOCK: u64 = 1 << 23;
/// Log entries are 4 KiB aligned.
const LOG_SECTOR_BYTES: usize = 4096;

/// A VHDX image opened read-only.
pub struct VhdxImage {
    source: Arc<dyn ReadAt>,
    file_size: u64,
    metadata: Metadata,
    virtual_size: u64,
    /// BAT entries of the payload blocks covering the disk (8 bytes each, checked at open).
    blocks: Vec<u64>,
    fixed_like: bool,
}

impl std::fmt::Debug for VhdxImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhdxImage")
            .field("metadata", &self.metadata)
            .field("virtual_size", &self.virtual_size)
            .finish_non_exhaustive()
    }
}

/// A region of the file that data blocks must stay out of.
struct Reserved {
    name: &'static str,
    start: u64,
    end: u64,
}

impl VhdxImage {
    /// Opens and validates a VHDX image.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::Denied`]: a differencing disk (parent).
    /// - [`crate::ErrorKind::Unsupported`]: a log that must be replayed, unknown required
    ///   regions or metadata, other header or log versions.
    /// - [`crate::ErrorKind::TooLarge`]: above `opts.max_virtual_size`, a BAT above
    ///   [`MAX_BAT_BYTES`].
    /// - [`crate::ErrorKind::InvalidImage`]: bad signatures or checksums, regions or blocks
    ///   outside the file or overlapping metadata.
    pub fn open(source: Arc<dyn ReadAt>, opts: &OpenOptions) -> Result<Self> {
        let file_size = source.size().map_err(|e| Error::io("reading the size of the VHDX image", e))?;
        check_in_file("VHDX header section", 0, HEADER_SECTION_BYTES, file_size)?;
        let read = |offset: u64, len: usize, what: &str| read_bytes(&*source, offset, len as u64, what);
        let id = read(0, 8, "reading the VHDX file identifier")?;
        if id != b"vhdxfile" {
            return Err(Error::invalid("VHDX: bad file identifier (want \"vhdxfile\")"));
        }
        let h1 = header::Header::parse(&read(
            header::HEADER1_OFFSET,
            header::HEADER_BYTES,
            "reading VHDX header 1",
        )?);
        let h2 = header::Header::parse(&read(
            header::HEADER2_OFFSET,
            header::HEADER_BYTES,
            "reading VHDX header 2",
        )?);
        let current = header::Header::current(h1, h2)?;
        let regions = header::parse_region_table(&read(
            header::REGION_TABLE_OFFSET,
            header::REGION_TABLE_BYTES,
            "reading the VHDX region table",
        )?)?;
        check_in_file("VHDX metadata region", regions.metadata_offset, regions.metadata_length, file_size)?;
        check_in_file("VHDX BAT region", regions.bat_offset, regions.bat_length, file_size)?;
        let metadata_len = regions.metadata_length.min(MAX_METADATA_BYTES);
        let metadata = header::parse_metadata(&read_bytes(
            &*source,
            regions.metadata_offset,
            metadata_len,
            "reading the VHDX metadata region",
        )?)?;

        let mut reserved = vec![
            Reserved { name: "the header section", start: 0, end: HEADER_SECTION_BYTES },
            Reserved {
                name: "the BAT",
                start: regions.bat_offset,
                end: regions.bat_offset + regions.bat_length,
            },
            Reserved {
                name: "the metadata region",
                start: regions.metadata_offset,
                end: regions.metadata_offset + regions.metadata_length,
            },
        ];
        if current.log_length > 0 {
            let (start, len) = (current.log_offset, u64::from(current.log_length));
            check_in_file("VHDX log", start, len, file_size)?;
            reserved.push(Reserved { name: "the log", start, end: start + len });
            if current.has_log_guid() {
                check_log_empty(&*source, start, len, &current.log_guid)?;
            }
        }

        let virtual_size = metadata.virtual_disk_size / 512 * 512;
        if virtual_size > opts.max_virtual_size {
            return Err(Error::too_large(format!(
                "virtual size {virtual_size} bytes exceeds the limit of {} bytes",
                opts.max_virtual_size
            )));
        }
        let block_size = u64::from(metadata.block_size);
        let chunk_ratio = SECTORS_PER_BITMAP_BLOCK * u64::from(metadata.logical_sector_size) / block_size;
        let data_blocks = metadata.virtual_disk_size.div_ceil(block_size);
        let bat_entries = data_blocks + data_blocks.saturating_sub(1) / chunk_ratio;
        let bat_bytes = bat_entries * 8;
        if bat_bytes > MAX_BAT_BYTES {
            return Err(Error::too_large(format!(
                "VHDX BAT of {bat_entries} entries is larger than the limit of {MAX_BAT_BYTES} bytes"
            )));
        }
        if bat_bytes > regions.bat_length {
            return Err(Error::invalid(format!(
                "VHDX BAT region of {} bytes is too small for the {bat_entries} entries the disk needs",
                regions.bat_length
            )));
        }
        let raw = read_bytes(&*source, regions.bat_offset, bat_bytes, "reading the VHDX BAT")?;
        let used = virtual_size.div_ceil(block_size);
        let mut blocks = Vec::with_capacity(used as usize);
        let mut fixed_like = true;
        for block in 0..used {
            let index = (block + block / chunk_ratio) as usize;
            let entry = blockmap::le64(&raw, index * 8);
            let state = header::decode_bat(entry, block)?;
            if let BatState::FullyPresent { host } = state {
                check_block(host, block, block_size, file_size, &reserved)?;
            } else {
                fixed_like = false;
            }
            blocks.push(entry);
        }
        Ok(VhdxImage { source, file_size, metadata, virtual_size, blocks, fixed_like })
    }
}

/// Checks a present payload block: inside the file (whole, as qemu checks) and out of metadata.
fn check_block(host: u64, block: u64, block_size: u64, file_size: u64, reserved: &[Reserved]) -> Result<()> {
    if host.checked_add(block_size).is_none_or(|end| end > file_size) {
        return Err(Error::invalid(format!(
            "image is truncated: VHDX block {block} at offset {host} ({block_size} bytes) lies past end of file ({file_size} bytes)"
        )));
    }
    if let Some(r) = reserved.iter().find(|r| host < r.end && r.start < host + block_size) {
        return Err(Error::invalid(format!("VHDX block {block} at offset {host} overlaps {}", r.name)));
    }
    Ok(())
}

/// Refuses a log that holds entries of the current log GUID: they must be replayed first.
fn check_log_empty(source: &dyn ReadAt, start: u64, len: u64, guid: &[u8; 16]) -> Result<()> {
    if len > MAX_LOG_BYTES {
        return Err(Error::too_large(format!(
            "VHDX log of {len} bytes is larger than the limit of {MAX_LOG_BYTES} bytes"
        )));
    }
    let chunk = 1u64 << 20;
    let mut at = 0;
    while at < len {
        let n = chunk.min(len - at);
        let bytes = read_bytes(source, start + at, n, "reading the VHDX log")?;
        if let Some(i) = bytes.chunks(LOG_SECTOR_BYTES).position(|s| header::is_log_entry(s, guid)) {
            let offset = start + at + (i * LOG_SECTOR_BYTES) as u64;
            return Err(Error::unsupported(format!(
                "VHDX log is not empty (entry at offset {offset}): the image was not closed cleanly and its log must be replayed first (qemu-img check -r all)"
            )));
        }
        at += n;
    }
    Ok(())
}

impl BlockTable for VhdxImage {
    fn block_size(&self) -> u64 {
        u64::from(self.metadata.block_size)
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
        let Some(&entry) = usize::try_from(index).ok().and_then(|i| self.blocks.get(i)) else {
            return Ok(Block::Unallocated);
        };
        Ok(match header::decode_bat(entry, index)? {
            BatState::FullyPresent { host } => Block::Data { host },
            BatState::Zero => Block::Zero,
            BatState::NotPresent => Block::Unallocated,
        })
    }

    fn name(&self) -> &'static str {
        "VHDX"
    }
}

impl Image for VhdxImage {
    fn info(&self) -> ImageInfo {
        let mut info = ImageInfo::plain("vhdx", self.virtual_size, self.file_size);
        info.cluster_size = Some(u64::from(self.metadata.block_size));
        let specific = &mut info.format_specific;
        specific.insert("logical_sector_size".to_owned(), self.metadata.logical_sector_size.to_string());
        specific.insert("physical_sector_size".to_owned(), self.metadata.physical_sector_size.to_string());
        specific
            .insert("leave_blocks_allocated".to_owned(), self.metadata.leave_blocks_allocated.to_string());
        specific.insert("all_blocks_present".to_owned(), self.fixed_like.to_string());
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
