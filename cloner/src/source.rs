//! The source volume, opened read-only: its size, allocation and data extents.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Buffer for reading and hashing: large enough for throughput, small enough for memory.
pub(crate) const IO_CHUNK: usize = 4 << 20;

/// A source volume (regular file or block device), open for reading.
#[derive(Debug)]
pub(crate) struct SourceVolume {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    pub(crate) is_block_device: bool,
}

impl SourceVolume {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, "opening the source", e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, "inspecting the source", e))?;
        let is_block_device = meta.file_type().is_block_device();
        let size = if is_block_device {
            // A device's metadata says 0 bytes; its end says its size. (Moves the file offset,
            // which nothing uses: all reads are positional.)
            (&file).seek(SeekFrom::End(0)).map_err(|e| Error::io(path, "reading the block device size", e))?
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(Error::Storage(storage::Error::NotAVolume { path: path.into() }));
        };
        Ok(Self { file, path: path.into(), size, is_block_device })
    }

    /// Bytes allocated on disk; `None` for a block device (it does not say).
    pub(crate) fn allocated(&self) -> Option<u64> {
        allocated_bytes(&self.file)
    }

    /// The data extents, in order: `(start, len)`, clipped to the size.
    pub(crate) fn extents(&self) -> Extents<'_> {
        Extents { file: &self.file, path: &self.path, pos: 0, size: self.size }
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io(&self.path, format!("reading {} bytes at offset {offset}", buf.len()), e))
    }
}

/// Bytes a file has allocated; `None` for a block device.
pub(crate) fn allocated_bytes(file: &File) -> Option<u64> {
    let meta = file.metadata().ok()?;
    if meta.file_type().is_block_device() { None } else { Some(meta.blocks() * 512) }
}

/// Iterator over the data extents of a source (SEEK_DATA / SEEK_HOLE). Where the file or
/// device cannot tell holes apart, the rest is one data extent.
#[derive(Debug)]
pub(crate) struct Extents<'a> {
    file: &'a File,
    path: &'a Path,
    pos: u64,
    size: u64,
}

impl Iterator for Extents<'_> {
    type Item = Result<(u64, u64)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.size {
            return None;
        }
        let found = match storage::next_data(self.file, self.pos) {
            Ok(found) => found,
            Err(e) if storage::is_unsupported(&e) => Some((self.pos, self.size - self.pos)),
            Err(e) => {
                self.pos = self.size;
                return Some(Err(Error::io(self.path, "looking for data extents", e)));
            }
        };
        let (start, len) = found?;
        if start >= self.size {
            self.pos = self.size;
            return None;
        }
        let end = start.saturating_add(len).min(self.size);
        self.pos = end;
        Some(Ok((start, end - start)))
    }
}

/// Feeds `len` zero bytes to `hasher`.
pub(crate) fn hash_zeros(hasher: &mut Sha256, mut len: u64) {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while len > 0 {
        let n = len.min(ZEROS.len() as u64) as usize;
        hasher.update(&ZEROS[..n]);
        len -= n as u64;
    }
}

/// The sha256 of the first `len` logical bytes of `file`, reading only its data extents
/// (holes are hashed as zeros without reading them).
pub(crate) fn sha256_of(file: &File, path: &Path, len: u64) -> Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; IO_CHUNK];
    let mut pos = 0;
    let extents = Extents { file, path, pos: 0, size: len };
    for extent in extents {
        let (start, extent_len) = extent?;
        hash_zeros(&mut hasher, start - pos);
        let end = start + extent_len;
        let mut at = start;
        while at < end {
            let n = (end - at).min(IO_CHUNK as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)
                .map_err(|e| Error::io(path, format!("reading {n} bytes at offset {at} to hash them"), e))?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        pos = end;
    }
    hash_zeros(&mut hasher, len - pos);
    Ok(hasher.finalize().into())
}
