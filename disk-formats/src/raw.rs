//! Raw images (and ISO images, which are raw): guest offset = file offset.

use std::sync::Arc;

use crate::image::{Image, ImageInfo, Segment, SegmentKind};
use crate::io::ReadAt;
use crate::probe::Format;
use crate::{Error, Result};

/// A raw disk read through [`ReadAt`].
pub struct RawImage {
    source: Arc<dyn ReadAt>,
    size: u64,
    format: Format,
}

impl std::fmt::Debug for RawImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawImage").field("size", &self.size).field("format", &self.format).finish()
    }
}

impl RawImage {
    /// Opens `source` as a raw disk; `format` is [`Format::Raw`] or [`Format::Iso`].
    pub fn open(source: Arc<dyn ReadAt>, format: Format) -> Result<Self> {
        let size = source.size().map_err(|e| Error::io("reading the size of the raw image", e))?;
        Ok(Self { source, size, format })
    }
}

impl Image for RawImage {
    fn info(&self) -> ImageInfo {
        ImageInfo {
            format: self.format.name().to_owned(),
            virtual_size: self.size,
            file_size: self.size,
            version: None,
            cluster_size: None,
            compression_type: None,
            features: Vec::new(),
            snapshots: Vec::new(),
            compression_wrappers: Vec::new(),
        }
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Segment> {
        let len = max_len.min(self.size.saturating_sub(offset));
        Ok(Segment { offset, len, kind: SegmentKind::Data { host: offset } })
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.source
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(format!("reading {} bytes of raw data at offset {offset}", buf.len()), e))
    }

    fn data_source(&self) -> &dyn ReadAt {
        &*self.source
    }
}
