//! VHDX metadata parsed from bytes: the two headers, the region table, the metadata table and its
//! items, BAT entries and log entry headers; CRC-32C.

use crate::blockmap::{le16, le32, le64};
use crate::{Error, Result};

/// Offsets of the fixed structures in the first MiB.
pub(crate) const HEADER1_OFFSET: u64 = 64 << 10;
pub(crate) const HEADER2_OFFSET: u64 = 128 << 10;
pub(crate) const REGION_TABLE_OFFSET: u64 = 192 << 10;
/// Bytes of one header and of the region table.
pub(crate) const HEADER_BYTES: usize = 4 << 10;
pub(crate) const REGION_TABLE_BYTES: usize = 64 << 10;
/// Bytes of the metadata table at the start of the metadata region.
pub(crate) const METADATA_TABLE_BYTES: usize = 64 << 10;
/// Most entries in the region and metadata tables (the spec's limit).
const MAX_TABLE_ENTRIES: usize = 2047;
/// The header section: nothing else may live in the first MiB.
pub(crate) const HEADER_SECTION_BYTES: u64 = 1 << 20;

/// A GUID as stored on disk (first three fields little endian).
const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6], d4[7]]
}

pub(crate) const BAT_REGION: [u8; 16] =
    guid(0x2dc2_7766, 0xf623, 0x4200, [0x9d, 0x64, 0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08]);
pub(crate) const METADATA_REGION: [u8; 16] =
    guid(0x8b7c_a206, 0x4790, 0x4b9a, [0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e]);
const FILE_PARAMETERS: [u8; 16] =
    guid(0xcaa1_6737, 0xfa36, 0x4d43, [0xb3, 0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b]);
const VIRTUAL_DISK_SIZE: [u8; 16] =
    guid(0x2fa5_4224, 0xcd1b, 0x4876, [0xb2, 0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8]);
const PAGE83_DATA: [u8; 16] =
    guid(0xbeca_12ab, 0xb2e6, 0x4523, [0x93, 0xef, 0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46]);
const LOGICAL_SECTOR_SIZE: [u8; 16] =
    guid(0x8141_bf1d, 0xa96f, 0x4709, [0xba, 0x47, 0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f]);
const PHYSICAL_SECTOR_SIZE: [u8; 16] =
    guid(0xcda3_48c7, 0x445d, 0x4471, [0x9c, 0xc9, 0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56]);
const PARENT_LOCATOR: [u8; 16] =
    guid(0xa8d3_5f2d, 0xb30b, 0x454d, [0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c]);

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0x82f6_3b78 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C (Castagnoli) of `bytes`, with the four bytes at `field` counted as zero.
pub(crate) fn crc32c(bytes: &[u8], field: usize) -> u32 {
    let mut crc = !0u32;
    for (i, &b) in bytes.iter().enumerate() {
        let b = if (field..field + 4).contains(&i) { 0 } else { b };
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn checksum_ok(bytes: &[u8]) -> bool {
    le32(bytes, 4) == crc32c(bytes, 4)
}

/// One of the two headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub sequence: u64,
    pub log_guid: [u8; 16],
    pub log_version: u16,
    pub version: u16,
    pub log_length: u32,
    pub log_offset: u64,
}

impl Header {
    /// A header, when its signature and checksum are valid (an invalid one is simply not used).
    pub(crate) fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_BYTES || &b[..4] != b"head" || !checksum_ok(&b[..HEADER_BYTES]) {
            return None;
        }
        let mut log_guid = [0u8; 16];
        log_guid.copy_from_slice(&b[48..64]);
        Some(Header {
            sequence: le64(b, 8),
            log_guid,
            log_version: le16(b, 64),
            version: le16(b, 66),
            log_length: le32(b, 68),
            log_offset: le64(b, 72),
        })
    }

    /// The current header of the two: the valid one with the higher sequence number.
    pub(crate) fn current(h1: Option<Header>, h2: Option<Header>) -> Result<Header> {
        let h = match (h1, h2) {
            (Some(a), Some(b)) => {
                if b.sequence > a.sequence {
                    b
                } else {
                    a
                }
            }
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => {
                return Err(Error::invalid("VHDX: neither header has a valid signature and checksum"));
            }
        };
        if h.version != 1 {
            return Err(Error::unsupported(format!("VHDX header version {} is not supported", h.version)));
        }
        if h.log_version != 0 {
            return Err(Error::unsupported(format!("VHDX log version {} is not supported", h.log_version)));
        }
        Ok(h)
    }

    /// Whether the header names a log (a log GUID other than zero).
    pub(crate) fn has_log_guid(&self) -> bool {
        self.log_guid != [0u8; 16]
    }
}

/// The BAT and metadata regions from the region table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Regions {
    pub bat_offset: u64,
    pub bat_length: u64,
    pub metadata_offset: u64,
    pub metadata_length: u64,
}

/// Parses and checks the region table.
pub(crate) fn parse_region_table(b: &[u8]) -> Result<Regions> {
    if b.len() < REGION_TABLE_BYTES || &b[..4] != b"regi" {
        return Err(Error::invalid("VHDX region table: bad signature (want \"regi\")"));
    }
    let b = &b[..REGION_TABLE_BYTES];
    if !checksum_ok(b) {
        return Err(Error::invalid("VHDX region table checksum is incorrect"));
    }
    let count = le32(b, 8) as usize;
    if count > MAX_TABLE_ENTRIES {
        return Err(Error::invalid(format!(
            "VHDX region table has {count} entries (at most {MAX_TABLE_ENTRIES})"
        )));
    }
    let (mut bat, mut metadata) = (None, None);
    for i in 0..count {
        let e = &b[16 + i * 32..16 + (i + 1) * 32];
        let (offset, length, required) = (le64(e, 16), u64::from(le32(e, 24)), le32(e, 28) & 1 != 0);
        if offset % HEADER_SECTION_BYTES != 0
            || length % HEADER_SECTION_BYTES != 0
            || offset < HEADER_SECTION_BYTES
        {
            return Err(Error::invalid(format!(
                "VHDX region {i} at offset {offset} ({length} bytes) is not aligned to 1 MiB or lies in the header section"
            )));
        }
        let slot = match &e[..16] {
            g if g == BAT_REGION => &mut bat,
            g if g == METADATA_REGION => &mut metadata,
            _ if required => {
                return Err(Error::unsupported(format!("VHDX region {i} is of an unknown required kind")));
            }
            _ => continue,
        };
        if slot.replace((offset, length)).is_some() {
            return Err(Error::invalid("VHDX region table lists the same region twice"));
        }
    }
    let (Some((bat_offset, bat_length)), Some((metadata_offset, metadata_length))) = (bat, metadata) else {
        return Err(Error::invalid("VHDX region table lacks the BAT or the metadata region"));
    };
    Ok(Regions { bat_offset, bat_length, metadata_offset, metadata_length })
}

/// The metadata items that matter for reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Metadata {
    pub block_size: u32,
    pub leave_blocks_allocated: bool,
    pub virtual_disk_size: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
}

/// Where one metadata item lives inside the metadata region: (offset, length).
type Item = (usize, usize);

/// Parses the metadata table (`region` = the whole metadata region) and its items.
pub(crate) fn parse_metadata(region: &[u8]) -> Result<Metadata> {
    if region.len() < METADATA_TABLE_BYTES || &region[..8] != b"metadata" {
        return Err(Error::invalid("VHDX metadata table: bad signature (want \"metadata\")"));
    }
    let count = usize::from(le16(region, 10));
    if count > MAX_TABLE_ENTRIES {
        return Err(Error::invalid(format!(
            "VHDX metadata table has {count} entries (at most {MAX_TABLE_ENTRIES})"
        )));
    }
    let (mut params, mut size, mut page83, mut logical, mut physical) =
        (None::<Item>, None::<Item>, None::<Item>, None::<Item>, None::<Item>);
    let mut parent_locator = false;
    for i in 0..count {
        let e = &region[32 + i * 32..32 + (i + 1) * 32];
        let (offset, length, required) = (le32(e, 16) as usize, le32(e, 20) as usize, le32(e, 24) & 4 != 0);
        if length > 0
            && (offset < METADATA_TABLE_BYTES
                || offset.checked_add(length).is_none_or(|end| end > region.len()))
        {
            return Err(Error::invalid(format!(
                "VHDX metadata item {i} at offset {offset} ({length} bytes) lies outside the metadata region"
            )));
        }
        let slot = match &e[..16] {
            g if g == FILE_PARAMETERS => &mut params,
            g if g == VIRTUAL_DISK_SIZE => &mut size,
            g if g == PAGE83_DATA => &mut page83,
            g if g == LOGICAL_SECTOR_SIZE => &mut logical,
            g if g == PHYSICAL_SECTOR_SIZE => &mut physical,
            g if g == PARENT_LOCATOR => {
                parent_locator = true;
                continue;
            }
            _ if required => {
                return Err(Error::unsupported(format!(
                    "VHDX metadata item {i} is of an unknown required kind"
                )));
            }
            _ => continue,
        };
        if slot.replace((offset, length)).is_some() {
            return Err(Error::invalid("VHDX metadata table lists the same item twice"));
        }
    }
    let item = |slot: Option<Item>, name: &str, want: usize| -> Result<&[u8]> {
        match slot {
            Some((offset, length)) if length >= want => Ok(&region[offset..offset + want]),
            Some(_) => Err(Error::invalid(format!("VHDX metadata item {name} is too short"))),
            None => Err(Error::invalid(format!("VHDX metadata lacks the {name} item"))),
        }
    };
    let p = item(params, "file parameters", 8)?;
    let flags = le32(p, 4);
    let has_parent = flags & 2 != 0 || parent_locator;
    if has_parent {
        return Err(Error::denied(
            "VHDX is a differencing disk (it has a parent); backing files are not allowed",
        ));
    }
    item(page83, "page 83 data", 16)?;
    let m = Metadata {
        block_size: le32(p, 0),
        leave_blocks_allocated: flags & 1 != 0,
        virtual_disk_size: le64(item(size, "virtual disk size", 8)?, 0),
        logical_sector_size: le32(item(logical, "logical sector size", 4)?, 0),
        physical_sector_size: le32(item(physical, "physical sector size", 4)?, 0),
    };
    if !m.block_size.is_power_of_two() || !((1 << 20)..=(256 << 20)).contains(&m.block_size) {
        return Err(Error::invalid(format!(
            "VHDX block size {} is not a power of two in 1..=256 MiB",
            m.block_size
        )));
    }
    for (name, v) in [("logical", m.logical_sector_size), ("physical", m.physical_sector_size)] {
        if v != 512 && v != 4096 {
            return Err(Error::invalid(format!("VHDX {name} sector size {v} is not 512 or 4096")));
        }
    }
    Ok(m)
}

/// Payload block states of a BAT entry (bits 0..3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatState {
    NotPresent,
    Zero,
    FullyPresent { host: u64 },
}

/// Decodes the BAT entry of payload block `block`.
pub(crate) fn decode_bat(entry: u64, block: u64) -> Result<BatState> {
    let host = (entry >> 20) << 20;
    match entry & 7 {
        0 | 1 | 3 => Ok(BatState::NotPresent),
        2 => Ok(BatState::Zero),
        6 => Ok(BatState::FullyPresent { host }),
        7 => Err(Error::invalid(format!(
            "VHDX BAT entry of block {block} is partially present, which only a differencing disk may use"
        ))),
        state => Err(Error::invalid(format!("VHDX BAT entry of block {block} has reserved state {state}"))),
    }
}

/// Whether a 4 KiB log sector starts a log entry of the log `guid` (signature "loge").
pub(crate) fn is_log_entry(sector: &[u8], guid: &[u8; 16]) -> bool {
    sector.len() >= 64 && &sector[..4] == b"loge" && &sector[32..48] == guid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(mut b: Vec<u8>) -> Vec<u8> {
        let sum = crc32c(&b, 4);
        b[4..8].copy_from_slice(&sum.to_le_bytes());
        b
    }

    fn header(sequence: u64) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_BYTES];
        b[..4].copy_from_slice(b"head");
        b[8..16].copy_from_slice(&sequence.to_le_bytes());
        b[66..68].copy_from_slice(&1u16.to_le_bytes());
        b[68..72].copy_from_slice(&(1u32 << 20).to_le_bytes());
        b[72..80].copy_from_slice(&(1u64 << 20).to_le_bytes());
        sealed(b)
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789", usize::MAX - 4), 0xe306_9283);
    }

    #[test]
    fn the_valid_header_with_the_higher_sequence_is_current() {
        let (a, b) = (Header::parse(&header(5)), Header::parse(&header(9)));
        assert_eq!(Header::current(a, b).unwrap().sequence, 9);
        let mut broken = header(12);
        broken[100] = 1;
        assert_eq!(Header::parse(&broken), None);
        assert_eq!(Header::current(a, Header::parse(&broken)).unwrap().sequence, 5);
        assert!(Header::current(None, None).is_err());
    }

    #[test]
    fn region_table_needs_bat_and_metadata() {
        let mut b = vec![0u8; REGION_TABLE_BYTES];
        b[..4].copy_from_slice(b"regi");
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[16..32].copy_from_slice(&BAT_REGION);
        b[32..40].copy_from_slice(&(2u64 << 20).to_le_bytes());
        b[40..44].copy_from_slice(&(1u32 << 20).to_le_bytes());
        let err = parse_region_table(&sealed(b.clone())).unwrap_err();
        assert!(err.to_string().contains("metadata"), "{err}");
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        b[48..64].copy_from_slice(&METADATA_REGION);
        b[64..72].copy_from_slice(&(1u64 << 20).to_le_bytes());
        b[72..76].copy_from_slice(&(1u32 << 20).to_le_bytes());
        let r = parse_region_table(&sealed(b.clone())).unwrap();
        assert_eq!((r.bat_offset, r.metadata_offset), (2 << 20, 1 << 20));
        b[100] ^= 1;
        assert!(parse_region_table(&b).unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn bat_states_map_to_data_zero_and_unallocated() {
        assert_eq!(decode_bat(0, 0).unwrap(), BatState::NotPresent);
        assert_eq!(decode_bat(3, 0).unwrap(), BatState::NotPresent);
        assert_eq!(decode_bat(2, 0).unwrap(), BatState::Zero);
        assert_eq!(decode_bat((5 << 20) | 6, 0).unwrap(), BatState::FullyPresent { host: 5 << 20 });
        assert!(decode_bat(7, 0).is_err());
        assert!(decode_bat(4, 0).is_err());
    }
}
