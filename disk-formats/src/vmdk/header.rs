//! The VMDK sparse extent header (`KDMV`, 512 bytes, little endian), its stream-optimized footer,
//! and the descriptor text, all parsed from bytes.

use crate::blockmap::{le16, le32, le64};
use crate::{Error, Result};

/// Bytes of the sparse extent header (one sector).
pub(crate) const HEADER_BYTES: usize = 512;
/// `gdOffset` of a stream-optimized extent whose grain directory is found via the footer.
pub(crate) const GD_AT_END: u64 = u64::MAX;
/// Flag: grain table entry 1 means "zero grain".
const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Flag: grains are compressed.
const FLAG_COMPRESSED: u32 = 1 << 16;
/// Flag: metadata and grains are preceded by markers (stream-optimized).
const FLAG_MARKERS: u32 = 1 << 17;
/// `compressAlgorithm` values.
const COMPRESSION_NONE: u16 = 0;
const COMPRESSION_DEFLATE: u16 = 1;
/// Most grain table entries per table (qemu: "L2 table size too big" above it).
const MAX_GTES_PER_GT: u32 = 512;
/// Largest grain we read, in sectors (16 MiB). qemu accepts up to 1 GiB, but every tool writes
/// 64 KiB grains, and a compressed grain is inflated into a buffer of this size.
pub(crate) const MAX_GRAIN_SECTORS: u64 = 32768;
/// Marker type of the footer and of the end-of-stream marker.
const MARKER_FOOTER: u32 = 3;
const MARKER_END_OF_STREAM: u32 = 0;

/// The fields of a sparse extent header that matter for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u32,
    pub flags: u32,
    /// Guest size in sectors.
    pub capacity: u64,
    /// Sectors per grain.
    pub grain_sectors: u64,
    pub descriptor_offset: u64,
    pub descriptor_size: u64,
    pub gtes_per_gt: u32,
    /// Grain directory offset in sectors, or [`GD_AT_END`].
    pub gd_offset: u64,
    pub compress_algorithm: u16,
}

impl Header {
    /// Parses and checks the 512-byte header at the start of a sparse extent.
    pub(crate) fn parse(b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_BYTES || &b[..4] != b"KDMV" {
            return Err(Error::invalid("VMDK sparse extent header: bad magic (want KDMV)"));
        }
        let h = Header {
            version: le32(b, 4),
            flags: le32(b, 8),
            capacity: le64(b, 12),
            grain_sectors: le64(b, 20),
            descriptor_offset: le64(b, 28),
            descriptor_size: le64(b, 36),
            gtes_per_gt: le32(b, 44),
            gd_offset: le64(b, 56),
            compress_algorithm: le16(b, 77),
        };
        if !(1..=3).contains(&h.version) {
            return Err(Error::unsupported(format!(
                "VMDK sparse extent version {} is not supported",
                h.version
            )));
        }
        if h.gtes_per_gt == 0 || h.gtes_per_gt > MAX_GTES_PER_GT {
            return Err(Error::invalid(format!(
                "VMDK header: {} entries per grain table (want 1..={MAX_GTES_PER_GT})",
                h.gtes_per_gt
            )));
        }
        if h.grain_sectors == 0 {
            return Err(Error::invalid("VMDK header: grain size is 0"));
        }
        if h.grain_sectors > MAX_GRAIN_SECTORS {
            return Err(Error::unsupported(format!(
                "VMDK header: grain of {} sectors is larger than the limit of {MAX_GRAIN_SECTORS}",
                h.grain_sectors
            )));
        }
        if h.capacity.checked_mul(512).is_none() {
            return Err(Error::too_large(format!("VMDK capacity of {} sectors overflows", h.capacity)));
        }
        match h.compress_algorithm {
            COMPRESSION_NONE | COMPRESSION_DEFLATE => {}
            other => {
                return Err(Error::unsupported(format!(
                    "VMDK compression algorithm {other} is not supported"
                )));
            }
        }
        Ok(h)
    }

    /// Whether grains are deflate-compressed (stream-optimized).
    pub(crate) fn compressed(&self) -> bool {
        self.compress_algorithm == COMPRESSION_DEFLATE
    }

    /// Whether grains are preceded by a marker (`lba`, `size`).
    pub(crate) fn has_markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }

    /// Whether grain table entry 1 means a zero grain.
    pub(crate) fn has_zero_grain(&self) -> bool {
        self.flags & FLAG_ZERO_GRAIN != 0
    }

    /// Whether the compressed flag is set (informational: qemu goes by the algorithm).
    pub(crate) fn compressed_flag(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }
}

/// Parses the 1536-byte tail of a stream-optimized extent: footer marker, footer header,
/// end-of-stream marker. Returns the footer's header, whose grain directory offset is real.
pub(crate) fn parse_footer(b: &[u8]) -> Result<Header> {
    if b.len() < 3 * HEADER_BYTES {
        return Err(Error::invalid("VMDK stream-optimized footer: file too short for a footer"));
    }
    let (marker, rest) = b.split_at(HEADER_BYTES);
    let (footer, eos) = rest.split_at(HEADER_BYTES);
    let marker_ok = le32(marker, 8) == 0 && le32(marker, 12) == MARKER_FOOTER;
    let eos_ok = le64(eos, 0) == 0 && le32(eos, 8) == 0 && le32(eos, 12) == MARKER_END_OF_STREAM;
    if !marker_ok || !eos_ok || &footer[..4] != b"KDMV" {
        return Err(Error::invalid(
            "VMDK stream-optimized footer is invalid: want a footer marker, a KDMV header and an end-of-stream marker in the last 1536 bytes",
        ));
    }
    let h = Header::parse(footer)?;
    if h.gd_offset == GD_AT_END {
        return Err(Error::invalid("VMDK footer: grain directory offset is still \"at end\""));
    }
    Ok(h)
}

/// What a descriptor says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Descriptor {
    /// `createType`, when present.
    pub create_type: Option<String>,
    /// `parentFileNameHint`, when present (a backing file).
    pub parent: Option<String>,
    /// Extent lines: (access, type, file name).
    pub extents: Vec<(String, String, String)>,
}

/// Parses descriptor text (up to its first NUL byte). Unknown lines are ignored.
pub(crate) fn parse_descriptor(bytes: &[u8]) -> Descriptor {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = String::from_utf8_lossy(&bytes[..end]);
    let mut d = Descriptor::default();
    // qemu finds the parent anywhere in the text (strstr), not only at the start of a line.
    if let Some(at) = text.find("parentFileNameHint") {
        let rest = &text[at + "parentFileNameHint".len()..];
        let name = rest.trim_start_matches(['=', ' ']).trim_start_matches('"');
        let name = name.split('"').next().unwrap_or("");
        d.parent = Some(name.to_owned());
    }
    for line in text.lines() {
        let line = line.trim();
        if let Some(value) = line.strip_prefix("createType") {
            let value = value.trim_start().trim_start_matches('=').trim().trim_matches('"');
            d.create_type = Some(value.to_owned());
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(access) = words.next() else { continue };
        if !matches!(access, "RW" | "RDONLY" | "NOACCESS") {
            continue;
        }
        let _sectors = words.next();
        let kind = words.next().unwrap_or("").to_owned();
        let name = line.split('"').nth(1).unwrap_or("").to_owned();
        d.extents.push((access.to_owned(), kind, name));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A monolithicSparse header: version 1, flags 3 (newline test, redundant GT), 16 MiB
    /// capacity, 128-sector grains, descriptor at sector 1 (20 sectors), 512 GTEs per GT, GD at
    /// sector 21, no compression.
    fn header() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..4].copy_from_slice(b"KDMV");
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..12].copy_from_slice(&3u32.to_le_bytes());
        b[12..20].copy_from_slice(&32768u64.to_le_bytes());
        b[20..28].copy_from_slice(&128u64.to_le_bytes());
        b[28..36].copy_from_slice(&1u64.to_le_bytes());
        b[36..44].copy_from_slice(&20u64.to_le_bytes());
        b[44..48].copy_from_slice(&512u32.to_le_bytes());
        b[56..64].copy_from_slice(&21u64.to_le_bytes());
        b
    }

    #[test]
    fn a_valid_header_parses() {
        let h = Header::parse(&header()).unwrap();
        assert_eq!((h.capacity, h.grain_sectors, h.gtes_per_gt, h.gd_offset), (32768, 128, 512, 21));
        assert!(!h.compressed());
    }

    #[test]
    fn version_4_is_unsupported() {
        let mut b = header();
        b[4..8].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(Header::parse(&b).unwrap_err().kind(), crate::ErrorKind::Unsupported);
    }

    #[test]
    fn grain_tables_larger_than_512_entries_are_rejected() {
        let mut b = header();
        b[44..48].copy_from_slice(&513u32.to_le_bytes());
        assert!(Header::parse(&b).unwrap_err().to_string().contains("grain table"));
    }

    #[test]
    fn zero_and_huge_grains_are_rejected() {
        let mut b = header();
        b[20..28].copy_from_slice(&0u64.to_le_bytes());
        assert!(Header::parse(&b).is_err());
        b[20..28].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(Header::parse(&b).is_err());
    }

    #[test]
    fn capacity_that_overflows_bytes_is_too_large() {
        let mut b = header();
        b[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(Header::parse(&b).unwrap_err().kind(), crate::ErrorKind::TooLarge);
    }

    #[test]
    fn unknown_compression_is_unsupported() {
        let mut b = header();
        b[77..79].copy_from_slice(&7u16.to_le_bytes());
        assert_eq!(Header::parse(&b).unwrap_err().kind(), crate::ErrorKind::Unsupported);
    }

    #[test]
    fn footer_without_end_of_stream_marker_is_rejected() {
        let mut tail = vec![0u8; 1536];
        tail[12..16].copy_from_slice(&MARKER_FOOTER.to_le_bytes());
        tail[512..1024].copy_from_slice(&header());
        tail[1024 + 12..1024 + 16].copy_from_slice(&5u32.to_le_bytes());
        assert!(parse_footer(&tail).unwrap_err().to_string().contains("footer"));
        tail[1024 + 12..1024 + 16].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(parse_footer(&tail).unwrap().gd_offset, 21);
    }

    #[test]
    fn descriptor_extents_parent_and_create_type_are_found() {
        let text = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
            createType=\"monolithicFlat\"\n\n# Extent description\nRW 32768 FLAT \"/etc/passwd\" 0\n\
            parentFileNameHint=\"base.vmdk\"\n\0garbage";
        let d = parse_descriptor(text);
        assert_eq!(d.create_type.as_deref(), Some("monolithicFlat"));
        assert_eq!(d.extents, vec![("RW".into(), "FLAT".into(), "/etc/passwd".into())]);
        assert_eq!(d.parent.as_deref(), Some("base.vmdk"));
    }
}
