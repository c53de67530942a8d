//! The VHD footer (512 bytes, big endian) and dynamic disk header (1024 bytes), parsed from bytes,
//! and the rule that decides the virtual size.

use crate::blockmap::{be16, be32, be64};
use crate::{Error, Result};

/// Bytes of the footer.
pub(crate) const FOOTER_BYTES: usize = 512;
/// Bytes of the dynamic disk header.
pub(crate) const DYNAMIC_HEADER_BYTES: usize = 1024;
/// qemu's largest VHD: 2040 GiB in sectors (`VHD_MAX_SECTORS`).
pub(crate) const MAX_SECTORS: u64 = 0xff00_0000;
/// The largest CHS geometry (`VHD_MAX_GEOMETRY`, 65535 × 16 × 255): images this big carry their
/// real size in `current_size` whatever their creator.
const MAX_GEOMETRY: u64 = 65535 * 16 * 255;

/// `disk_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiskType {
    Fixed,
    Dynamic,
    Differencing,
}

impl DiskType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            DiskType::Fixed => "fixed",
            DiskType::Dynamic => "dynamic",
            DiskType::Differencing => "differencing",
        }
    }
}

/// The fields of a footer that matter for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Footer {
    pub data_offset: u64,
    pub creator_app: [u8; 4],
    pub current_size: u64,
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
    pub disk_type: DiskType,
}

/// The VHD checksum: one's complement of the byte sum, with the checksum field counted as zero.
pub(crate) fn checksum(bytes: &[u8], field: usize) -> u32 {
    let sum = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !(field..field + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

impl Footer {
    /// Parses and checks a footer (cookie, checksum, disk type).
    pub(crate) fn parse(b: &[u8]) -> Result<Footer> {
        if b.len() < FOOTER_BYTES || &b[..8] != b"conectix" {
            return Err(Error::invalid("VHD footer: bad cookie (want \"conectix\")"));
        }
        let b = &b[..FOOTER_BYTES];
        let stored = be32(b, 64);
        let computed = checksum(b, 64);
        if stored != computed {
            return Err(Error::invalid(format!(
                "VHD footer checksum is incorrect (stored {stored:#010x}, computed {computed:#010x})"
            )));
        }
        let disk_type = match be32(b, 60) {
            2 => DiskType::Fixed,
            3 => DiskType::Dynamic,
            4 => DiskType::Differencing,
            other => return Err(Error::unsupported(format!("VHD disk type {other} is not supported"))),
        };
        Ok(Footer {
            data_offset: be64(b, 16),
            creator_app: [b[28], b[29], b[30], b[31]],
            current_size: be64(b, 48),
            cylinders: be16(b, 56),
            heads: b[58],
            sectors_per_track: b[59],
            disk_type,
        })
    }

    /// Sectors the CHS geometry describes.
    pub(crate) fn chs_sectors(&self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }

    /// Whether the creator writes a reliable `current_size` (Hyper-V, disk2vhd, XenServer,
    /// XenConverter, Azure, qemu with `force_size`). Virtual PC and older qemu go by geometry.
    pub(crate) fn creator_uses_current_size(&self) -> bool {
        matches!(&self.creator_app, b"win " | b"qem2" | b"d2v " | b"CTXS" | b"tap\0" | b"wa\0\0")
    }

    /// The guest size in sectors, as qemu resolves it: from `current_size` when the creator
    /// writes a reliable one or the geometry is the maximum, from the CHS geometry otherwise.
    pub(crate) fn total_sectors(&self) -> u64 {
        let chs = self.chs_sectors();
        if self.creator_uses_current_size() || chs == MAX_GEOMETRY { self.current_size / 512 } else { chs }
    }

    /// The creator application, printable.
    pub(crate) fn creator(&self) -> String {
        crate::blockmap::escape(&self.creator_app).replace("\\x00", "")
    }
}

/// The fields of a dynamic disk header that matter for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DynamicHeader {
    pub table_offset: u64,
    pub max_table_entries: u32,
    pub block_size: u32,
}

impl DynamicHeader {
    /// Parses and checks a dynamic disk header.
    pub(crate) fn parse(b: &[u8]) -> Result<DynamicHeader> {
        if b.len() < DYNAMIC_HEADER_BYTES || &b[..8] != b"cxsparse" {
            return Err(Error::invalid("VHD dynamic disk header: bad cookie (want \"cxsparse\")"));
        }
        let h = DynamicHeader {
            table_offset: be64(b, 16),
            max_table_entries: be32(b, 28),
            block_size: be32(b, 32),
        };
        if !h.block_size.is_power_of_two() || h.block_size < 512 {
            return Err(Error::invalid(format!(
                "VHD dynamic disk header: invalid block size {}",
                h.block_size
            )));
        }
        Ok(h)
    }

    /// Bytes of the sector bitmap before each block's data (a whole number of sectors).
    pub(crate) fn bitmap_bytes(&self) -> u64 {
        (u64::from(self.block_size) / (8 * 512)).next_multiple_of(512)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dynamic footer by qemu: creator "qemu", 16 MiB, CHS 520/4/17 (16 MiB rounded up).
    fn footer() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..8].copy_from_slice(b"conectix");
        b[8..12].copy_from_slice(&2u32.to_be_bytes());
        b[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
        b[16..24].copy_from_slice(&512u64.to_be_bytes());
        b[28..32].copy_from_slice(b"qemu");
        b[40..48].copy_from_slice(&(16u64 << 20).to_be_bytes());
        b[48..56].copy_from_slice(&(16u64 << 20).to_be_bytes());
        b[56..58].copy_from_slice(&482u16.to_be_bytes());
        b[58] = 4;
        b[59] = 17;
        b[60..64].copy_from_slice(&3u32.to_be_bytes());
        seal(&mut b);
        b
    }

    fn seal(b: &mut [u8]) {
        let sum = checksum(b, 64);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn qemu_creator_goes_by_geometry() {
        let f = Footer::parse(&footer()).unwrap();
        assert_eq!(f.disk_type, DiskType::Dynamic);
        assert_eq!(f.total_sectors(), 482 * 4 * 17);
    }

    #[test]
    fn hyper_v_creator_goes_by_current_size() {
        let mut b = footer();
        b[28..32].copy_from_slice(b"win ");
        seal(&mut b);
        assert_eq!(Footer::parse(&b).unwrap().total_sectors(), 32768);
    }

    #[test]
    fn maximum_geometry_goes_by_current_size_whatever_the_creator() {
        let mut b = footer();
        b[28..32].copy_from_slice(b"vpc ");
        b[56..58].copy_from_slice(&65535u16.to_be_bytes());
        b[58] = 16;
        b[59] = 255;
        seal(&mut b);
        assert_eq!(Footer::parse(&b).unwrap().total_sectors(), 32768);
    }

    #[test]
    fn a_bad_checksum_is_rejected() {
        let mut b = footer();
        b[48] ^= 1;
        assert!(Footer::parse(&b).unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn unknown_disk_type_is_unsupported() {
        let mut b = footer();
        b[60..64].copy_from_slice(&5u32.to_be_bytes());
        seal(&mut b);
        assert_eq!(Footer::parse(&b).unwrap_err().kind(), crate::ErrorKind::Unsupported);
    }

    #[test]
    fn dynamic_header_block_size_must_be_a_power_of_two() {
        let mut b = vec![0u8; 1024];
        b[..8].copy_from_slice(b"cxsparse");
        b[32..36].copy_from_slice(&(3u32 << 20).to_be_bytes());
        assert!(DynamicHeader::parse(&b).is_err());
        b[32..36].copy_from_slice(&(2u32 << 20).to_be_bytes());
        let h = DynamicHeader::parse(&b).unwrap();
        assert_eq!(h.bitmap_bytes(), 512);
    }
}
