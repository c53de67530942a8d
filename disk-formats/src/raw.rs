//! Raw images (and ISO images, which are raw): guest offset = file offset.
//!
//! Like qemu-img, the virtual size is the file size rounded up to a whole 512-byte sector; the
//! bytes of that last partial sector past the end of the file read as zeros.

use std::sync::Arc;

use crate::image::{Image, ImageInfo, Segment, SegmentKind};
use crate::io::ReadAt;
use crate::probe::Format;
use crate::{Error, Result};

/// A raw disk read through [`ReadAt`].
pub struct RawImage {
    source: Arc<dyn ReadAt>,
    size: u64,
    file_size: u64,
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
        let file_size = source.size().map_err(|e| Error::io("reading the size of the raw image", e))?;
        let size = round_up_to_sector(file_size);
        Ok(Self { source, size, file_size, format })
    }
}

impl Image for RawImage {
    fn info(&self) -> ImageInfo {
        ImageInfo::plain(self.format.name(), self.size, self.file_size)
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<Segment> {
        if offset >= self.file_size {
            let len = max_len.min(self.size.saturating_sub(offset));
            return Ok(Segment { offset, len, kind: SegmentKind::Zero });
        }
        let len = max_len.min(self.file_size - offset);
        Ok(Segment { offset, len, kind: SegmentKind::Data { host: offset } })
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let in_file =
            usize::try_from(self.file_size.saturating_sub(offset)).unwrap_or(usize::MAX).min(buf.len());
        let (data, tail) = buf.split_at_mut(in_file);
        tail.fill(0);
        self.source
            .read_exact_at(data, offset)
            .map_err(|e| Error::io(format!("reading {} bytes of raw data at offset {offset}", buf.len()), e))
    }

    fn data_source(&self) -> &dyn ReadAt {
        &*self.source
    }
}

/// Rounds a byte count up to a whole 512-byte sector (saturating).
pub fn round_up_to_sector(bytes: u64) -> u64 {
    bytes.checked_next_multiple_of(512).unwrap_or(!511)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_sized_raw_image_is_padded_to_a_whole_sector_of_zeros() {
        let bytes: Vec<u8> = vec![7u8; 1000];
        let image = RawImage::open(Arc::new(bytes), Format::Raw).unwrap();

        assert_eq!(image.virtual_size(), 1024);
        assert_eq!(image.map(0, 4096).unwrap().kind, SegmentKind::Data { host: 0 });
        assert_eq!(image.map(0, 4096).unwrap().len, 1000);
        assert_eq!(
            image.map(1000, 4096).unwrap(),
            Segment { offset: 1000, len: 24, kind: SegmentKind::Zero }
        );
        let mut buf = vec![0xffu8; 48];
        image.read_at(&mut buf, 976).unwrap();
        assert_eq!(&buf[..24], &[7u8; 24]);
        assert_eq!(&buf[24..], &[0u8; 24]);
    }
}
