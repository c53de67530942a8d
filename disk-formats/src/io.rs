//! Positional I/O traits. Every format reader is generic over [`ReadAt`], so tests and fuzzers
//! run on byte slices and the importer can plug in an HTTP Range reader.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Random-access reads from an image source (a file, a byte slice, an HTTP object, ...).
pub trait ReadAt: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns fewer only at end of source.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// The size of the source in bytes.
    fn size(&self) -> io::Result<u64>;

    /// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The underlying file, when there is one, so that data can be copied in-kernel.
    fn as_file(&self) -> Option<&File> {
        None
    }
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        // Block devices report 0 in metadata; seeking to the end works for both.
        let meta = self.metadata()?;
        if meta.is_file() {
            return Ok(meta.len());
        }
        let mut f: &File = self;
        io::Seek::seek(&mut f, io::SeekFrom::End(0))
    }

    fn as_file(&self) -> Option<&File> {
        Some(self)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else { return Ok(0) };
        if start >= self.len() {
            return Ok(0);
        }
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }

    fn as_file(&self) -> Option<&File> {
        (**self).as_file()
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }

    fn as_file(&self) -> Option<&File> {
        (**self).as_file()
    }
}

/// Positional writes to a target volume. Implemented by `storage::Volume`.
pub trait WriteAt: Send + Sync {
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Makes `[offset, offset + len)` read as zeros, as cheaply as the target allows (a hole in
    /// a file, write-zeroes/discard on a block device).
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Whether bytes never written already read as zeros (a freshly created sparse file), so
    /// zero runs can simply be skipped.
    fn unwritten_reads_zero(&self) -> bool;

    /// The capacity of the target in bytes.
    fn capacity(&self) -> u64;

    /// Hints that `[offset, offset + len)` is complete: the target may start writing it back
    /// to stable storage now, overlapping the device's work with the rest of the transfer
    /// instead of leaving it all to the final flush.
    fn start_writeback(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }

    /// Copies `len` bytes from `src` at `src_offset` to `offset` inside the kernel when both
    /// sides allow it. Returns `Ok(false)` when it cannot (the caller then copies by hand).
    fn copy_from_file(&self, src: &File, src_offset: u64, offset: u64, len: u64) -> io::Result<bool> {
        let _ = (src, src_offset, offset, len);
        Ok(false)
    }
}
