//! The qcow2 header and its extensions, parsed from the bytes of cluster 0.
//!
//! Layout (all numbers big-endian):
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0      | 4    | magic `QFI\xfb` |
//! | 4      | 4    | version (2 or 3) |
//! | 8      | 8    | backing file name offset |
//! | 16     | 4    | backing file name size |
//! | 20     | 4    | cluster bits |
//! | 24     | 8    | virtual size |
//! | 32     | 4    | encryption method |
//! | 36     | 4    | L1 table entries |
//! | 40     | 8    | L1 table offset |
//! | 48     | 8    | refcount table offset |
//! | 56     | 4    | refcount table clusters |
//! | 60     | 4    | number of snapshots |
//! | 64     | 8    | snapshot table offset |
//! | 72     | 8    | incompatible features (v3) |
//! | 80     | 8    | compatible features (v3) |
//! | 88     | 8    | autoclear features (v3) |
//! | 96     | 4    | refcount order (v3) |
//! | 100    | 4    | header length (v3) |
//! | 104    | 1    | compression type (v3, when the header length covers it) |
//!
//! Header extensions follow the header (at `header_length`, 72 for v2) up to the end of cluster
//! 0: `u32 type`, `u32 length`, data padded to 8 bytes, ended by type 0.
//!
//! [`Header::parse`] only decodes and checks structure; [`Header::check_features`] applies the
//! policy (deny external data files, refuse encryption and unknown incompatible features).
//! Backing files are refused by the engine, which reads their name for the message.

use std::fmt::Write as _;

use crate::{Error, Result};

/// The four magic bytes at offset 0.
pub(crate) const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Smallest cluster size qcow2 allows: 512 bytes.
pub(crate) const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster size qcow2 allows: 2 MiB.
pub(crate) const MAX_CLUSTER_BITS: u32 = 21;
/// Extended L2 entries split a cluster into 32 subclusters of at least 512 bytes.
pub(crate) const MIN_EXTENDED_L2_CLUSTER_BITS: u32 = 14;
/// Refcounts are at most 64 bits wide.
const MAX_REFCOUNT_ORDER: u32 = 6;
/// A version 2 header is always 72 bytes long.
const V2_HEADER_BYTES: u32 = 72;
/// A version 3 header is at least 104 bytes long.
const V3_MIN_HEADER_BYTES: u32 = 104;
/// Offset of the compression type byte (present when the header length exceeds it).
const COMPRESSION_TYPE_OFFSET: usize = 104;
/// Bytes of one header extension's type + length.
const EXTENSION_HEADER_BYTES: usize = 8;
/// Bytes of one entry in the feature name table extension.
const FEATURE_NAME_ENTRY_BYTES: usize = 48;

/// Incompatible feature bits (an image using an unknown one must not be opened).
pub(crate) mod incompatible {
    /// Refcounts may be stale (lazy refcounts, not closed cleanly). Irrelevant for reading.
    pub const DIRTY: u64 = 1 << 0;
    /// qemu found corruption; it still reads such images read-only, and so do we.
    pub const CORRUPT: u64 = 1 << 1;
    /// Guest data lives in an external data file: denied.
    pub const EXTERNAL_DATA_FILE: u64 = 1 << 2;
    /// The compression type byte is not zlib.
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    /// L2 entries are 128 bits with a subcluster bitmap.
    pub const EXTENDED_L2: u64 = 1 << 4;
    /// Every bit we understand.
    pub const KNOWN: u64 = DIRTY | CORRUPT | EXTERNAL_DATA_FILE | COMPRESSION_TYPE | EXTENDED_L2;
}

/// Compatible feature bits.
pub(crate) mod compatible {
    /// Refcount updates may be delayed (needs repair after a crash, not for reading).
    pub const LAZY_REFCOUNTS: u64 = 1 << 0;
}

/// Autoclear feature bits.
pub(crate) mod autoclear {
    /// The bitmaps extension is consistent.
    pub const BITMAPS: u64 = 1 << 0;
    /// The external data file is a valid raw image (meaningless without one).
    pub const DATA_FILE_RAW: u64 = 1 << 1;
}

/// Header extension types.
mod extension {
    pub const END: u32 = 0;
    pub const BACKING_FORMAT: u32 = 0xe279_2aca;
    pub const FEATURE_NAMES: u32 = 0x6803_f857;
    pub const BITMAPS: u32 = 0x2385_2875;
    pub const FULL_DISK_ENCRYPTION: u32 = 0x0537_be77;
    pub const EXTERNAL_DATA_FILE: u32 = 0x4441_5441;
}

/// How compressed clusters are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompressionType {
    /// Raw deflate (no zlib header), 4 KiB window.
    Zlib,
    /// One zstd frame per cluster.
    Zstd,
}

impl CompressionType {
    /// The name qemu-img prints.
    pub(crate) fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// One entry of the feature name table extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FeatureName {
    /// 0 = incompatible, 1 = compatible, 2 = autoclear.
    pub kind: u8,
    /// Bit number within that feature field.
    pub bit: u8,
    /// The name, up to the first NUL.
    pub name: String,
}

/// What the header extensions told us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extensions {
    /// Names of feature bits, for messages about unknown ones.
    pub feature_names: Vec<FeatureName>,
    /// The bitmaps extension is present.
    pub bitmaps: bool,
    /// The name in the external data file extension, when present.
    pub external_data_file: Option<Vec<u8>>,
}

/// A decoded qcow2 header (v2 images get the v3 defaults for the v3 fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    /// The virtual size as stored (qemu rounds it down to 512 bytes).
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    /// The raw compression type byte (0 = zlib, 1 = zstd).
    pub compression_type_byte: u8,
    pub extensions: Extensions,
}

/// Checks the magic, version and cluster bits in the first bytes of the file, so that the
/// caller knows how much of cluster 0 to read.
pub(crate) fn peek_cluster_bits(head: &[u8]) -> Result<u32> {
    if head.len() < MAGIC.len() || head[..MAGIC.len()] != MAGIC {
        return Err(Error::invalid("not a qcow2 image: bad magic"));
    }
    let version = be32(head, 4).ok_or_else(|| truncated_header(V2_HEADER_BYTES, head.len()))?;
    check_version(version)?;
    let cluster_bits = be32(head, 20).ok_or_else(|| truncated_header(V2_HEADER_BYTES, head.len()))?;
    check_cluster_bits(cluster_bits)?;
    Ok(cluster_bits)
}

impl Header {
    /// Decodes the header and its extensions from `cluster0`, the first cluster of the file (or
    /// all of the file when it is shorter than a cluster).
    ///
    /// # Errors
    /// Bad magic, a version other than 2 or 3, cluster bits outside 9..=21, a header length out
    /// of range, a refcount order above 6, an unknown compression type, and header extensions
    /// that leave cluster 0 or the file.
    pub(crate) fn parse(cluster0: &[u8]) -> Result<Header> {
        let cluster_bits = peek_cluster_bits(cluster0)?;
        let b = cluster0;
        let need = |n: u32| {
            if b.len() < n as usize { Err(truncated_header(n, b.len())) } else { Ok(()) }
        };
        need(V2_HEADER_BYTES)?;
        let field32 = |off: usize| be32(b, off).unwrap_or(0);
        let field64 = |off: usize| be64(b, off).unwrap_or(0);
        let version = field32(4);
        let mut header = Header {
            version,
            backing_file_offset: field64(8),
            backing_file_size: field32(16),
            cluster_bits,
            size: field64(24),
            crypt_method: field32(32),
            l1_size: field32(36),
            l1_table_offset: field64(40),
            refcount_table_offset: field64(48),
            refcount_table_clusters: field32(56),
            nb_snapshots: field32(60),
            snapshots_offset: field64(64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_BYTES,
            compression_type_byte: 0,
            extensions: Extensions::default(),
        };
        let cluster_size = 1u64 << cluster_bits;
        if version >= 3 {
            need(V3_MIN_HEADER_BYTES)?;
            header.incompatible_features = field64(72);
            header.compatible_features = field64(80);
            header.autoclear_features = field64(88);
            header.refcount_order = field32(96);
            header.header_length = field32(100);
            let len = header.header_length;
            if len < V3_MIN_HEADER_BYTES {
                return Err(Error::invalid(format!(
                    "qcow2 header length {len} is shorter than the {V3_MIN_HEADER_BYTES} bytes version 3 requires"
                )));
            }
            if u64::from(len) > cluster_size || u64::from(len) > crate::limits::MAX_HEADER_BYTES {
                return Err(Error::invalid(format!(
                    "qcow2 header length {len} exceeds the cluster size of {cluster_size} bytes"
                )));
            }
            need(len)?;
            if len as usize > COMPRESSION_TYPE_OFFSET {
                header.compression_type_byte = b[COMPRESSION_TYPE_OFFSET];
            }
        }
        if header.refcount_order > MAX_REFCOUNT_ORDER {
            return Err(Error::invalid(format!(
                "qcow2 refcount order {} is above the maximum of {MAX_REFCOUNT_ORDER} (64-bit refcounts)",
                header.refcount_order
            )));
        }
        // The extension area runs to the end of cluster 0 (or of the file, when shorter).
        let area_end = usize::try_from(cluster_size).unwrap_or(usize::MAX);
        header.extensions = parse_extensions(b, header.header_length as usize, area_end)?;
        Ok(header)
    }

    /// The cluster size in bytes.
    pub(crate) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether the header names a backing file.
    pub(crate) fn has_backing_file(&self) -> bool {
        self.backing_file_offset != 0 || self.backing_file_size != 0
    }

    /// Whether L2 entries are 128 bits with subcluster bitmaps.
    pub(crate) fn extended_l2(&self) -> bool {
        self.incompatible_features & incompatible::EXTENDED_L2 != 0
    }

    /// The compression type, validated by [`Header::check_features`].
    pub(crate) fn compression_type(&self) -> CompressionType {
        if self.compression_type_byte == 1 { CompressionType::Zstd } else { CompressionType::Zlib }
    }

    /// Applies the feature policy: deny external data files, refuse encryption and unknown
    /// incompatible features, check the compression type and the extended L2 geometry.
    pub(crate) fn check_features(&self) -> Result<()> {
        let incompat = self.incompatible_features;
        if incompat & incompatible::EXTERNAL_DATA_FILE != 0 || self.extensions.external_data_file.is_some() {
            let name = match &self.extensions.external_data_file {
                Some(name) => format!(" \"{}\"", escape(name)),
                None => String::new(),
            };
            return Err(Error::denied(format!(
                "image has an external data file{name}; external data files are not allowed"
            )));
        }
        match self.crypt_method {
            0 => {}
            1 => {
                return Err(Error::unsupported(
                    "image is encrypted (AES); encrypted qcow2 images are not supported",
                ));
            }
            2 => {
                return Err(Error::unsupported(
                    "image is encrypted (LUKS); encrypted qcow2 images are not supported",
                ));
            }
            n => return Err(Error::unsupported(format!("image is encrypted with unknown method {n}"))),
        }
        let unknown = incompat & !incompatible::KNOWN;
        if unknown != 0 {
            return Err(Error::unsupported(format!(
                "image uses unknown incompatible features: {}",
                self.describe_bits(0, unknown)
            )));
        }
        if self.autoclear_features & autoclear::DATA_FILE_RAW != 0 {
            return Err(Error::invalid(
                "autoclear feature data-file-raw is set but the image has no data file",
            ));
        }
        match (self.compression_type_byte, incompat & incompatible::COMPRESSION_TYPE != 0) {
            (0, false) | (1, true) => {}
            (0, true) => {
                return Err(Error::invalid(
                    "compression type incompatible feature bit is set but the compression type is zlib",
                ));
            }
            (1, false) => {
                return Err(Error::invalid(
                    "compression type is zstd but the compression type incompatible feature bit is not set",
                ));
            }
            (n, _) => return Err(Error::unsupported(format!("unknown qcow2 compression type {n}"))),
        }
        if self.extended_l2() && self.cluster_bits < MIN_EXTENDED_L2_CLUSTER_BITS {
            return Err(Error::invalid(format!(
                "extended L2 entries need clusters of at least {} bytes, cluster size is {}",
                1u64 << MIN_EXTENDED_L2_CLUSTER_BITS,
                self.cluster_size()
            )));
        }
        Ok(())
    }

    /// Names of the features in use, as `info` prints them.
    pub(crate) fn feature_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.compatible_features & compatible::LAZY_REFCOUNTS != 0 {
            names.push("lazy_refcounts");
        }
        if self.extended_l2() {
            names.push("extended_l2");
        }
        if self.incompatible_features & incompatible::DIRTY != 0 {
            names.push("dirty");
        }
        if self.incompatible_features & incompatible::CORRUPT != 0 {
            names.push("corrupt");
        }
        if self.autoclear_features & autoclear::BITMAPS != 0 && self.extensions.bitmaps {
            names.push("bitmaps");
        }
        names.into_iter().map(str::to_owned).collect()
    }

    /// "bit 5 (\"name\"), bit 9" for the set bits of a feature field of `kind`.
    fn describe_bits(&self, kind: u8, bits: u64) -> String {
        let mut out = String::new();
        for bit in (0..64u8).filter(|b| bits & (1u64 << b) != 0) {
            if !out.is_empty() {
                out.push_str(", ");
            }
            let _ = write!(out, "bit {bit}");
            let named = self.extensions.feature_names.iter().find(|f| f.kind == kind && f.bit == bit);
            if let Some(f) = named {
                let _ = write!(out, " (\"{}\")", f.name.escape_debug());
            }
        }
        out
    }
}

/// Walks the header extensions in `b[start..end]`.
fn parse_extensions(b: &[u8], start: usize, end: usize) -> Result<Extensions> {
    let mut ext = Extensions::default();
    let mut off = start;
    while off < end {
        if off >= b.len() {
            // The file ends inside cluster 0, exactly at an extension boundary: qemu reads the
            // missing bytes as zeros, which is the end marker.
            break;
        }
        let Some(hdr_end) = off.checked_add(EXTENSION_HEADER_BYTES).filter(|&e| e <= end) else {
            return Err(Error::invalid(format!(
                "qcow2 header extension at offset {off} crosses the end of cluster 0"
            )));
        };
        if hdr_end > b.len() {
            return Err(Error::invalid(format!(
                "image is truncated: qcow2 header extension at offset {off} lies past end of file"
            )));
        }
        let kind = be32(b, off).unwrap_or(0);
        let len = be32(b, off + 4).unwrap_or(0) as usize;
        if kind == extension::END {
            break;
        }
        let data_end = hdr_end.checked_add(len).filter(|&e| e <= end).ok_or_else(|| {
            Error::invalid(format!(
                "qcow2 header extension {kind:#010x} at offset {off} ({len} bytes) extends past the end of cluster 0"
            ))
        })?;
        let data = b.get(hdr_end..data_end).ok_or_else(|| {
            Error::invalid(format!(
                "image is truncated: qcow2 header extension {kind:#010x} at offset {off} ({len} bytes) lies past end of file"
            ))
        })?;
        match kind {
            extension::FEATURE_NAMES => ext.feature_names.extend(parse_feature_names(data)),
            extension::BITMAPS => ext.bitmaps = true,
            extension::EXTERNAL_DATA_FILE => ext.external_data_file = Some(data.to_vec()),
            // Only meaningful with a backing file or encryption, both refused elsewhere;
            // unknown extensions are skipped, as qemu does.
            extension::BACKING_FORMAT | extension::FULL_DISK_ENCRYPTION => {}
            _ => {}
        }
        let padded = len.div_ceil(8).saturating_mul(8);
        off = hdr_end.saturating_add(padded);
    }
    Ok(ext)
}

fn parse_feature_names(data: &[u8]) -> impl Iterator<Item = FeatureName> + '_ {
    data.chunks_exact(FEATURE_NAME_ENTRY_BYTES).map(|e| {
        let raw = &e[2..];
        let name = &raw[..raw.iter().position(|&c| c == 0).unwrap_or(raw.len())];
        FeatureName { kind: e[0], bit: e[1], name: String::from_utf8_lossy(name).into_owned() }
    })
}

fn check_version(version: u32) -> Result<()> {
    match version {
        2 | 3 => Ok(()),
        v => Err(Error::unsupported(format!("qcow2 version {v} is not supported (only versions 2 and 3)"))),
    }
}

fn check_cluster_bits(bits: u32) -> Result<()> {
    if (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "qcow2 cluster bits {bits} outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS} (cluster sizes 512 B to 2 MiB)"
        )))
    }
}

fn truncated_header(need: u32, have: usize) -> Error {
    Error::invalid(format!("image is truncated: qcow2 header needs {need} bytes, file has {have}"))
}

/// Escapes bytes read from an image for a one-line message.
pub(crate) fn escape(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).escape_debug().to_string()
}

/// The big-endian `u16` at `off`, if `b` holds it.
pub(crate) fn be16(b: &[u8], off: usize) -> Option<u16> {
    let bytes = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_be_bytes(bytes.try_into().ok()?))
}

/// The big-endian `u32` at `off`, if `b` holds it.
pub(crate) fn be32(b: &[u8], off: usize) -> Option<u32> {
    let bytes = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// The big-endian `u64` at `off`, if `b` holds it.
pub(crate) fn be64(b: &[u8], off: usize) -> Option<u64> {
    let bytes = b.get(off..off.checked_add(8)?)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    /// A version 2 header: 64 KiB clusters, 1 GiB, L1 table at 0x30000, refcount table at
    /// 0x10000, no snapshots, no backing file.
    const V2_HEADER: [u8; 72] = [
        b'Q', b'F', b'I', 0xfb, //                      0: magic
        0, 0, 0, 2, //                                  4: version 2
        0, 0, 0, 0, 0, 0, 0, 0, //                      8: backing file offset
        0, 0, 0, 0, //                                 16: backing file size
        0, 0, 0, 16, //                                20: cluster bits (64 KiB)
        0, 0, 0, 0, 0x40, 0, 0, 0, //                  24: virtual size (1 GiB)
        0, 0, 0, 0, //                                 32: crypt method (none)
        0, 0, 0, 2, //                                 36: L1 entries
        0, 0, 0, 0, 0, 0x03, 0, 0, //                  40: L1 table offset
        0, 0, 0, 0, 0, 0x01, 0, 0, //                  48: refcount table offset
        0, 0, 0, 1, //                                 56: refcount table clusters
        0, 0, 0, 0, //                                 60: snapshots
        0, 0, 0, 0, 0, 0, 0, 0, //                     64: snapshot table offset
    ];

    #[test]
    fn v2_header_parses_with_v3_defaults() {
        let header = Header::parse(&V2_HEADER).expect("parse");
        assert_eq!((header.version, header.cluster_bits, header.size), (2, 16, 1 << 30));
        assert_eq!(
            (header.l1_size, header.l1_table_offset, header.refcount_table_offset),
            (2, 0x30000, 0x10000)
        );
        assert_eq!(
            (header.refcount_order, header.header_length, header.compression_type()),
            (4, 72, CompressionType::Zlib)
        );
        assert_eq!(header.check_features().ok(), Some(()));
        assert!(!header.has_backing_file());
    }

    #[test]
    fn v3_header_shorter_than_104_bytes_is_truncated() {
        let mut bytes = V2_HEADER.to_vec();
        bytes[7] = 3;
        bytes.extend_from_slice(&[0; 16]);
        let err = Header::parse(&bytes).err().map(|e| (e.kind(), e.to_string()));
        assert_eq!(
            err,
            Some((
                ErrorKind::InvalidImage,
                "image is truncated: qcow2 header needs 104 bytes, file has 88".into()
            ))
        );
    }

    #[test]
    fn extensions_end_at_end_of_file_inside_cluster_0() {
        // The file stops right after the header: qemu reads the rest of cluster 0 as zeros.
        assert_eq!(parse_extensions(&V2_HEADER, 72, 65536).ok(), Some(Extensions::default()));
    }

    #[test]
    fn extension_data_past_end_of_file_is_truncated() {
        let mut bytes = V2_HEADER.to_vec();
        bytes.extend_from_slice(&[0x68, 0x03, 0xf8, 0x57, 0, 0, 0, 48]); // feature names, 48 bytes
        bytes.extend_from_slice(&[0; 10]);
        let err = parse_extensions(&bytes, 72, 65536).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|m| m.starts_with("image is truncated")), "{err:?}");
    }

    #[test]
    fn feature_name_table_entries_are_decoded_up_to_the_nul() {
        let mut entry = vec![0u8; 48];
        entry[0] = 1; // compatible
        entry[1] = 0; // bit 0
        entry[2..16].copy_from_slice(b"lazy refcounts");
        let names: Vec<_> = parse_feature_names(&entry).collect();
        assert_eq!(names, vec![FeatureName { kind: 1, bit: 0, name: "lazy refcounts".into() }]);
    }
}
