//! The [`Image`] trait every format reader implements, and the extent vocabulary the converter
//! uses to read and write only data.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::Result;
use crate::io::ReadAt;

/// How a guest byte range is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    /// Stored verbatim and contiguously at `host` in the image's [`Image::data_source`]; the
    /// converter may copy it without interpretation (in-kernel where possible).
    Data { host: u64 },
    /// Data that has to be produced by [`Image::read_at`] (compressed clusters, ...).
    Encoded,
    /// Explicitly zero in the image (qcow2 zero clusters, all-zero subclusters).
    Zero,
    /// Never written; reads as zeros (we never follow backing files).
    Unallocated,
}

impl SegmentKind {
    /// Whether the segment carries bytes that must be read.
    pub fn has_data(self) -> bool {
        matches!(self, SegmentKind::Data { .. } | SegmentKind::Encoded)
    }
}

/// A run of guest bytes stored one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest offset of the first byte.
    pub offset: u64,
    /// Length in bytes, at least 1.
    pub len: u64,
    /// How it is stored.
    pub kind: SegmentKind,
}

/// What `diskplane info` prints about an image.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ImageInfo {
    /// The format name, as qemu-img spells it (`raw`, `qcow2`, ...).
    pub format: String,
    /// The guest-visible size in bytes.
    pub virtual_size: u64,
    /// Size of the image file in bytes.
    pub file_size: u64,
    /// Format version, when the format has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Cluster size for clustered formats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// Compression type used for compressed clusters (`zlib`, `zstd`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_type: Option<String>,
    /// Features in use (`extended_l2`, `lazy_refcounts`, `dirty`, `corrupt`, ...).
    pub features: Vec<String>,
    /// Internal snapshots (listed, never converted: we convert the active layer).
    pub snapshots: Vec<SnapshotInfo>,
    /// Wrappers removed before the format was seen (`gzip`, `xz`, `zstd`), outermost first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compression_wrappers: Vec<String>,
    /// Facts only one format has (VMDK `create_type`, VHD `disk_type` and `creator_app`, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub format_specific: BTreeMap<String, String>,
}

impl ImageInfo {
    /// Facts about an image with no version, clusters, features or snapshots (raw-like).
    pub fn plain(format: impl Into<String>, virtual_size: u64, file_size: u64) -> Self {
        Self {
            format: format.into(),
            virtual_size,
            file_size,
            version: None,
            cluster_size: None,
            compression_type: None,
            features: Vec::new(),
            snapshots: Vec::new(),
            compression_wrappers: Vec::new(),
            format_specific: BTreeMap::new(),
        }
    }
}

/// One internal snapshot.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot's id string.
    pub id: String,
    /// The snapshot's name.
    pub name: String,
    /// The guest size when the snapshot was taken.
    pub virtual_size: u64,
}

/// A disk image opened for reading.
///
/// Implementations check every on-disk number when they open and again when they map, so a
/// hostile image yields an [`Error`](crate::Error), never a panic or a read outside the file.
pub trait Image: Send + Sync {
    /// Facts about the image.
    fn info(&self) -> ImageInfo;

    /// The guest-visible size in bytes.
    fn virtual_size(&self) -> u64;

    /// Describes the guest bytes starting at `offset` (`< virtual_size`): one segment of one
    /// kind, at most `max_len` bytes long and never past the virtual size.
    fn map(&self, offset: u64, max_len: u64) -> Result<Segment>;

    /// Reads guest bytes `[offset, offset + buf.len())`, which lie within the virtual size.
    /// Unallocated and zero ranges read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// The source that [`SegmentKind::Data`] host offsets refer to.
    fn data_source(&self) -> &dyn ReadAt;
}
