//! Read-only VMDK engine: hosted sparse extents (`monolithicSparse`) and stream-optimized
//! extents (`streamOptimized`, the disk inside an OVA), byte-identical to `qemu-img convert -O raw`.
//!
//! ## Design
//! - `header.rs` parses the `KDMV` header, the stream-optimized footer and descriptor text from
//!   bytes. A stream-optimized extent's header says "grain directory at end": the footer in the
//!   last 1536 bytes holds the real one, as qemu reads it.
//! - [`VmdkImage::open`] checks the header, loads the grain directory (GD) and checks that every
//!   grain table (GT) lies inside the file and outside the header; GTs are read on demand into a
//!   small cache. Grains are then served by the shared block engine ([`crate::blockmap`]):
//!   entry 0 = unallocated, entry 1 with the zero-grain flag = zero, otherwise the grain's
//!   sector. Compressed grains (with or without a marker) are inflated with zlib.
//!
//! ## Security
//! A descriptor file (text) always names extents in other files (`monolithicFlat`,
//! `twoGbMaxExtent*`, multi-extent VMDKs, or any path such as `/etc/passwd`): it is refused
//! before anything is opened, like a backing file. So is a sparse extent whose embedded
//! descriptor names a parent (`parentFileNameHint`). VMDK3 (`COWD`) extents are unsupported.
//!
//! ## Caveats
//! The redundant grain directory is not read (qemu does not read it either). A data grain whose
//! visible bytes lie past the end of the file, or a grain table past the end of the file, is an
//! error where qemu would read zeros.

mod header;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flate2::{Decompress, FlushDecompress, Status};

use crate::blockmap::{self, Block, BlockTable, check_in_file, escape, read_bytes};
use crate::image::{Image, ImageInfo, Segment};
use crate::io::ReadAt;
use crate::{Error, OpenOptions, Result};

use header::{GD_AT_END, HEADER_BYTES, Header};

/// Largest grain directory we load (32 MiB of entries); qemu caps it at 32 Mi entries.
const MAX_GD_BYTES: u64 = 32 << 20;
/// Grain tables kept in memory (a 512-entry table is 2 KiB: 8 MiB in all).
const GT_CACHE_TABLES: usize = 4096;
/// How much of the embedded descriptor qemu reads (`DESC_SIZE`, 20 sectors), from offset 512.
const QEMU_DESCRIPTOR_BYTES: u64 = 20 * 512;
/// Largest descriptor file we read to name its extents.
const MAX_DESCRIPTOR_FILE_BYTES: u64 = 64 << 10;
/// Bytes of a grain marker before the compressed data: `lba` (u64) and `size` (u32).
const GRAIN_MARKER_BYTES: u64 = 12;

/// A VMDK sparse extent opened read-only.
pub struct VmdkImage {
    source: Arc<dyn ReadAt>,
    file_size: u64,
    header: Header,
    virtual_size: u64,
    grain_bytes: u64,
    /// Host byte offsets of the grain tables (0 = none), checked at open.
    gd: Vec<u64>,
    create_type: String,
    cache: Mutex<HashMap<u64, Arc<[u32]>>>,
}

impl std::fmt::Debug for VmdkImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmdkImage")
            .field("create_type", &self.create_type)
            .field("virtual_size", &self.virtual_size)
            .field("grain_bytes", &self.grain_bytes)
            .finish_non_exhaustive()
    }
}

impl VmdkImage {
    /// Opens and validates a VMDK sparse extent.
    ///
    /// # Errors
    /// - [`crate::ErrorKind::Denied`]: a descriptor file (its extents live in other files), or a
    ///   parent (`parentFileNameHint`).
    /// - [`crate::ErrorKind::Unsupported`]: VMDK3 (`COWD`), versions above 3, unknown compression.
    /// - [`crate::ErrorKind::TooLarge`]: virtual size or grain directory above the limits.
    /// - [`crate::ErrorKind::InvalidImage`]: a bad header or footer, a grain directory or grain
    ///   table outside the file.
    pub fn open(source: Arc<dyn ReadAt>, opts: &OpenOptions) -> Result<Self> {
        let file_size = source.size().map_err(|e| Error::io("reading the size of the VMDK image", e))?;
        let head = read_bytes(&*source, 0, (HEADER_BYTES as u64).min(file_size), "reading the VMDK header")?;
        if head.starts_with(b"COWD") {
            return Err(Error::unsupported("VMDK3 (COWD) sparse extents are not supported"));
        }
        if !head.starts_with(b"KDMV") {
            return Err(descriptor_file_denied(&*source, file_size));
        }
        let mut header = Header::parse(&head)?;
        if header.gd_offset == GD_AT_END {
            // qemu reads the footer at the last whole sector boundary.
            let end = file_size / 512 * 512;
            let start = end
                .checked_sub(3 * HEADER_BYTES as u64)
                .ok_or_else(|| Error::invalid("VMDK stream-optimized footer: file too short for a footer"))?;
            let tail = read_bytes(&*source, start, 3 * HEADER_BYTES as u64, "reading the VMDK footer")?;
            header = header::parse_footer(&tail)?;
        }
        let descriptor = read_descriptor(&*source, file_size, &header)?;
        if let Some(parent) = &descriptor.parent {
            return Err(Error::denied(format!(
                "VMDK image has a parent (backing file \"{}\"); backing files are not allowed",
                escape(parent.as_bytes())
            )));
        }
        let virtual_size = header.capacity * 512;
        if virtual_size > opts.max_virtual_size {
            return Err(Error::too_large(format!(
                "virtual size {virtual_size} bytes exceeds the limit of {} bytes",
                opts.max_virtual_size
            )));
        }
        let grain_bytes = header.grain_sectors * 512;
        let gd = load_gd(&*source, file_size, &header)?;
        let create_type = descriptor.create_type.unwrap_or_else(|| {
            if header.compressed() { "streamOptimized" } else { "monolithicSparse" }.to_owned()
        });
        Ok(VmdkImage {
            source,
            file_size,
            header,
            virtual_size,
            grain_bytes,
            gd,
            create_type,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The grain table at GD index `gd_index` (host offset `host`), from the cache or the file.
    fn grain_table(&self, gd_index: u64, host: u64) -> Result<Arc<[u32]>> {
        if let Ok(cache) = self.cache.lock()
            && let Some(t) = cache.get(&gd_index)
        {
            return Ok(Arc::clone(t));
        }
        let len = u64::from(self.header.gtes_per_gt) * 4;
        let bytes =
            read_bytes(&*self.source, host, len, &format!("reading the VMDK grain table at offset {host}"))?;
        let table: Arc<[u32]> =
            bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= GT_CACHE_TABLES {
                cache.clear();
            }
            cache.insert(gd_index, Arc::clone(&table));
        }
        Ok(table)
    }

    /// Inflates the compressed grain at `host` into at most one grain of bytes.
    fn inflate(&self, index: u64, host: u64) -> Result<Vec<u8>> {
        let limit = 2 * self.grain_bytes;
        let (data_at, data_len) = if self.header.has_markers() {
            check_in_file(
                &format!("VMDK grain marker of grain {index}"),
                host,
                GRAIN_MARKER_BYTES,
                self.file_size,
            )?;
            let marker = read_bytes(&*self.source, host, GRAIN_MARKER_BYTES, "reading a VMDK grain marker")?;
            let size = u64::from(blockmap::le32(&marker, 8));
            if size == 0 || size > limit {
                return Err(Error::invalid(format!(
                    "VMDK compressed grain {index} at offset {host}: marker size {size} is not in 1..={limit}"
                )));
            }
            check_in_file(
                &format!("VMDK compressed grain {index}"),
                host + GRAIN_MARKER_BYTES,
                size,
                self.file_size,
            )?;
            (host + GRAIN_MARKER_BYTES, size)
        } else {
            (host, limit.min(self.file_size - host))
        };
        let input = read_bytes(&*self.source, data_at, data_len, "reading a VMDK compressed grain")?;
        let mut out = vec![0u8; self.grain_bytes as usize];
        let mut z = Decompress::new(true);
        let bad = |why: String| {
            Error::invalid(format!("VMDK compressed grain {index} at offset {host} is corrupt: {why}"))
        };
        match z.decompress(&input, &mut out, FlushDecompress::Finish) {
            Ok(Status::StreamEnd) => {}
            Ok(_) => return Err(bad("the deflate stream does not end within one grain".into())),
            Err(e) => return Err(bad(e.to_string())),
        }
        out.truncate(z.total_out() as usize);
        Ok(out)
    }
}

/// Reads the embedded descriptor (the declared region, and qemu's 10 KiB window at offset 512
/// where it looks for a parent).
fn read_descriptor(source: &dyn ReadAt, file_size: u64, header: &Header) -> Result<header::Descriptor> {
    let mut d = header::Descriptor::default();
    let window = QEMU_DESCRIPTOR_BYTES.min(file_size.saturating_sub(512));
    if window > 0 {
        let bytes = read_bytes(source, 512, window, "reading the VMDK descriptor")?;
        d.parent = header::parse_descriptor(&bytes).parent;
    }
    if header.descriptor_offset > 0 && header.descriptor_size > 0 {
        let offset = header.descriptor_offset.checked_mul(512);
        let len = header.descriptor_size.checked_mul(512).map(|l| l.min(MAX_DESCRIPTOR_FILE_BYTES));
        let (Some(offset), Some(len)) = (offset, len) else {
            return Err(Error::invalid("VMDK header: descriptor offset or size overflows"));
        };
        check_in_file("VMDK embedded descriptor", offset, len, file_size)?;
        let declared =
            header::parse_descriptor(&read_bytes(source, offset, len, "reading the VMDK descriptor")?);
        d.create_type = declared.create_type;
        d.parent = d.parent.or(declared.parent);
    }
    Ok(d)
}

/// The denial for a descriptor file, naming its first extent file.
fn descriptor_file_denied(source: &dyn ReadAt, file_size: u64) -> Error {
    let len = file_size.min(MAX_DESCRIPTOR_FILE_BYTES);
    let text = match read_bytes(source, 0, len, "reading the VMDK descriptor file") {
        Ok(text) => text,
        Err(e) => return e,
    };
    let d = header::parse_descriptor(&text);
    let kind = d.create_type.as_deref().map(|t| format!(" ({t})")).unwrap_or_default();
    match d.extents.first() {
        Some((_, ty, name)) => Error::denied(format!(
            "VMDK descriptor file{kind} refers to {ty} extent file \"{}\"; extents in other files are not allowed (like backing files)",
            escape(name.as_bytes())
        )),
        None => Error::denied(format!(
            "VMDK descriptor file{kind} without a sparse extent header; extents in other files are not allowed (like backing files)"
        )),
    }
}

/// Loads the grain directory and checks where each grain table lies.
fn load_gd(source: &dyn ReadAt, file_size: u64, h: &Header) -> Result<Vec<u64>> {
    let sectors_per_gt = u64::from(h.gtes_per_gt) * h.grain_sectors;
    let entries = h.capacity.div_ceil(sectors_per_gt);
    let bytes = entries * 4;
    if bytes > MAX_GD_BYTES {
        return Err(Error::too_large(format!(
            "VMDK grain directory of {entries} entries is larger than the limit of {} bytes",
            MAX_GD_BYTES
        )));
    }
    let gd_at = h
        .gd_offset
        .checked_mul(512)
        .ok_or_else(|| Error::invalid(format!("VMDK grain directory offset {} overflows", h.gd_offset)))?;
    check_in_file("VMDK grain directory", gd_at, bytes, file_size)?;
    let raw = read_bytes(source, gd_at, bytes, "reading the VMDK grain directory")?;
    let gt_bytes = u64::from(h.gtes_per_gt) * 4;
    let mut gd = Vec::with_capacity(entries as usize);
    for (i, c) in raw.chunks_exact(4).enumerate() {
        let sector = u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        if sector == 0 {
            gd.push(0);
            continue;
        }
        let host = sector * 512;
        if host < HEADER_BYTES as u64 {
            return Err(Error::invalid(format!(
                "VMDK grain directory entry {i}: grain table at offset {host} lies in the header"
            )));
        }
        if host.checked_add(gt_bytes).is_none_or(|end| end > file_size) {
            return Err(Error::invalid(format!(
                "image is truncated: VMDK grain directory entry {i}: grain table at offset {host} ({gt_bytes} bytes) lies past end of file ({file_size} bytes)"
            )));
        }
        gd.push(host);
    }
    Ok(gd)
}

impl BlockTable for VmdkImage {
    fn block_size(&self) -> u64 {
        self.grain_bytes
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
        let per_gt = u64::from(self.header.gtes_per_gt);
        let gd_index = index / per_gt;
        let gt_host = usize::try_from(gd_index).ok().and_then(|i| self.gd.get(i)).copied().unwrap_or(0);
        if gt_host == 0 {
            return Ok(Block::Unallocated);
        }
        let table = self.grain_table(gd_index, gt_host)?;
        let entry = table.get((index % per_gt) as usize).copied().unwrap_or(0);
        match entry {
            0 => Ok(Block::Unallocated),
            1 if self.header.has_zero_grain() => Ok(Block::Zero),
            sector => {
                let host = u64::from(sector) * 512;
                if self.header.compressed() {
                    Ok(Block::Compressed { host })
                } else {
                    Ok(Block::Data { host })
                }
            }
        }
    }

    fn decode(&self, index: u64, host: u64) -> Result<Vec<u8>> {
        self.inflate(index, host)
    }

    fn name(&self) -> &'static str {
        "VMDK"
    }
}

impl Image for VmdkImage {
    fn info(&self) -> ImageInfo {
        let mut info = ImageInfo::plain("vmdk", self.virtual_size, self.file_size);
        info.version = Some(self.header.version);
        info.cluster_size = Some(self.grain_bytes);
        if self.header.compressed() {
            info.compression_type = Some("deflate".to_owned());
        }
        if self.header.has_markers() {
            info.features.push("markers".to_owned());
        }
        if self.header.has_zero_grain() {
            info.features.push("zeroed_grain".to_owned());
        }
        if self.header.compressed_flag() {
            info.features.push("compressed".to_owned());
        }
        info.format_specific.insert("create_type".to_owned(), self.create_type.clone());
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
