//! The VDI header (VirtualBox, version 1.1, little endian), parsed from its first 512 bytes.

use crate::blockmap::{le32, le64};
use crate::{Error, Result};

/// Bytes of the pre-header and header that qemu reads.
pub(crate) const HEADER_BYTES: usize = 512;
const SIGNATURE: u32 = 0xbeda_107f;
const VERSION_1_1: u32 = 0x0001_0001;
const SECTOR: u32 = 512;
/// The only block size qemu reads (and VirtualBox writes).
pub(crate) const BLOCK_BYTES: u32 = 1 << 20;

/// `image_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImageType {
    Dynamic,
    Static,
}

/// The fields of a VDI header that matter for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub image_type: ImageType,
    pub offset_bmap: u64,
    pub offset_data: u64,
    /// Guest size in bytes, rounded up to a whole sector as qemu does.
    pub disk_size: u64,
    pub blocks_in_image: u32,
}

impl Header {
    /// Parses and checks the header, with qemu's checks (and messages).
    pub(crate) fn parse(b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_BYTES {
            return Err(Error::invalid("VDI: file too small for a header"));
        }
        let signature = le32(b, 0x40);
        if signature != SIGNATURE {
            return Err(Error::invalid(format!("VDI: bad signature {signature:#010x}")));
        }
        let version = le32(b, 0x44);
        if version != VERSION_1_1 {
            return Err(Error::unsupported(format!(
                "VDI version {}.{} is not supported (want 1.1)",
                version >> 16,
                version & 0xffff
            )));
        }
        let image_type = match le32(b, 0x4c) {
            1 => ImageType::Dynamic,
            2 => ImageType::Static,
            4 => {
                return Err(Error::denied(
                    "VDI is a differencing image (it has a parent); backing files are not allowed",
                ));
            }
            other => return Err(Error::unsupported(format!("VDI image type {other} is not supported"))),
        };
        let (offset_bmap, offset_data) = (le32(b, 0x154), le32(b, 0x158));
        if offset_bmap % SECTOR != 0 {
            return Err(Error::invalid(format!(
                "VDI: block map offset {offset_bmap:#x} is not sector-aligned"
            )));
        }
        if offset_data % SECTOR != 0 {
            return Err(Error::invalid(format!("VDI: data offset {offset_data:#x} is not sector-aligned")));
        }
        let sector_size = le32(b, 0x168);
        if sector_size != SECTOR {
            return Err(Error::unsupported(format!(
                "VDI sector size {sector_size} is not supported (want 512)"
            )));
        }
        let block_size = le32(b, 0x178);
        if block_size != BLOCK_BYTES {
            return Err(Error::unsupported(format!(
                "VDI block size {block_size} is not supported (want 1 MiB)"
            )));
        }
        // VBoxManage convertfromraw writes odd sizes; qemu rounds them up to a whole sector.
        let disk_size = le64(b, 0x170)
            .checked_next_multiple_of(512)
            .ok_or_else(|| Error::too_large("VDI disk size overflows"))?;
        let blocks_in_image = le32(b, 0x180);
        let room = u64::from(blocks_in_image) * u64::from(BLOCK_BYTES);
        if disk_size > room {
            return Err(Error::invalid(format!(
                "VDI disk size {disk_size} is larger than its {blocks_in_image} blocks ({room} bytes)"
            )));
        }
        if b[0x1a8..0x1b8].iter().any(|&x| x != 0) {
            return Err(Error::denied(
                "VDI image has a link UUID (it is part of a chain); backing files are not allowed",
            ));
        }
        if b[0x1b8..0x1c8].iter().any(|&x| x != 0) {
            return Err(Error::denied(
                "VDI image has a parent UUID (differencing image); backing files are not allowed",
            ));
        }
        Ok(Header {
            image_type,
            offset_bmap: u64::from(offset_bmap),
            offset_data: u64::from(offset_data),
            disk_size,
            blocks_in_image,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dynamic 16 MiB VDI as qemu-img writes it: block map at 0x200, data at 0x400.
    fn header() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..11].copy_from_slice(b"<<< QEMU VM");
        b[0x40..0x44].copy_from_slice(&SIGNATURE.to_le_bytes());
        b[0x44..0x48].copy_from_slice(&VERSION_1_1.to_le_bytes());
        b[0x48..0x4c].copy_from_slice(&0x180u32.to_le_bytes());
        b[0x4c..0x50].copy_from_slice(&1u32.to_le_bytes());
        b[0x154..0x158].copy_from_slice(&0x200u32.to_le_bytes());
        b[0x158..0x15c].copy_from_slice(&0x400u32.to_le_bytes());
        b[0x168..0x16c].copy_from_slice(&512u32.to_le_bytes());
        b[0x170..0x178].copy_from_slice(&(16u64 << 20).to_le_bytes());
        b[0x178..0x17c].copy_from_slice(&BLOCK_BYTES.to_le_bytes());
        b[0x180..0x184].copy_from_slice(&16u32.to_le_bytes());
        b
    }

    #[test]
    fn a_valid_header_parses() {
        let h = Header::parse(&header()).unwrap();
        assert_eq!(
            (h.image_type, h.offset_bmap, h.offset_data, h.disk_size),
            (ImageType::Dynamic, 512, 1024, 16 << 20)
        );
    }

    #[test]
    fn odd_disk_size_is_rounded_up_to_a_sector() {
        let mut b = header();
        b[0x170..0x178].copy_from_slice(&1000u64.to_le_bytes());
        assert_eq!(Header::parse(&b).unwrap().disk_size, 1024);
    }

    #[test]
    fn disk_larger_than_its_blocks_is_rejected() {
        let mut b = header();
        b[0x180..0x184].copy_from_slice(&15u32.to_le_bytes());
        assert!(Header::parse(&b).unwrap_err().to_string().contains("blocks"));
    }

    #[test]
    fn parent_uuid_is_denied() {
        let mut b = header();
        b[0x1b8] = 1;
        assert_eq!(Header::parse(&b).unwrap_err().kind(), crate::ErrorKind::Denied);
    }

    #[test]
    fn other_block_sizes_and_versions_are_unsupported() {
        let mut b = header();
        b[0x178..0x17c].copy_from_slice(&(2u32 << 20).to_le_bytes());
        assert_eq!(Header::parse(&b).unwrap_err().kind(), crate::ErrorKind::Unsupported);
        let mut b = header();
        b[0x44..0x48].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        assert_eq!(Header::parse(&b).unwrap_err().kind(), crate::ErrorKind::Unsupported);
    }

    #[test]
    fn unaligned_block_map_is_rejected() {
        let mut b = header();
        b[0x154..0x158].copy_from_slice(&0x201u32.to_le_bytes());
        assert!(Header::parse(&b).unwrap_err().to_string().contains("aligned"));
    }
}
