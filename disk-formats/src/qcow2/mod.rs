//! Read-only qcow2 engine. (Being written.)

use std::sync::Arc;

use crate::image::{Image, ImageInfo, Segment};
use crate::io::ReadAt;
use crate::{Error, OpenOptions, Result};

/// A qcow2 image opened read-only.
#[derive(Debug)]
pub struct Qcow2Image {}

impl Qcow2Image {
    /// Opens and validates a qcow2 image.
    pub fn open(_source: Arc<dyn ReadAt>, _opts: &OpenOptions) -> Result<Self> {
        Err(Error::unsupported("qcow2 reader not built yet"))
    }
}

impl Image for Qcow2Image {
    fn info(&self) -> ImageInfo {
        unreachable!()
    }
    fn virtual_size(&self) -> u64 {
        unreachable!()
    }
    fn map(&self, _offset: u64, _max_len: u64) -> Result<Segment> {
        unreachable!()
    }
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> Result<()> {
        unreachable!()
    }
    fn data_source(&self) -> &dyn ReadAt {
        unreachable!()
    }
}
