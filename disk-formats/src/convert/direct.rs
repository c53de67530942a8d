//! Buffers and reads for direct I/O: window buffers aligned so that a target can write them
//! with `O_DIRECT` ([`aligned_middle`] is also how `storage` splits its direct writes), and a
//! second, `O_DIRECT` descriptor on the image file that the qcow2 reader uses for runs of
//! compressed clusters (plain data clusters are read through the page cache and copied
//! in-kernel, see [`crate::convert`]). Both are optimisations only: anything unaligned, and any
//! file system that refuses direct I/O, goes the buffered way with the same result.

use std::fs::File;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::io::ReadAt;

/// Alignment of memory, file offset and length for direct I/O: a multiple of the logical
/// block size of every common device and of every common file system's direct-I/O alignment.
pub const DIRECT_ALIGN: usize = 4096;

/// Smallest aligned part of a read that goes through the direct descriptor (a direct read has
/// no read-ahead, so small ones are left to the page cache).
const DIRECT_MIN_BYTES: usize = 64 * 1024;

/// A zero-initialised buffer of `len` bytes whose first byte is [`DIRECT_ALIGN`]-aligned.
pub struct AlignedBuf {
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes, [`DIRECT_ALIGN`]-aligned (merely unaligned if that fails).
    pub fn new(len: usize) -> Self {
        let vec = vec![0u8; len + DIRECT_ALIGN];
        // `align_offset` may in theory give up (usize::MAX): then the buffer is merely unaligned.
        let start = vec.as_ptr().align_offset(DIRECT_ALIGN);
        let start = if start < DIRECT_ALIGN { start } else { 0 };
        Self { vec, start, len }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.vec[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.vec[self.start..self.start + self.len]
    }
}

/// The image file opened a second time with `O_DIRECT`, for reading compressed clusters.
pub(crate) struct DirectSource {
    file: File,
    /// Cleared when a direct read is refused (alignment stricter than assumed).
    ok: AtomicBool,
}

impl DirectSource {
    /// Opens the file behind `file` again (through `/proc/self/fd`, so the same inode) with
    /// `O_DIRECT`; `None` where that is not possible (tmpfs, no `/proc`).
    pub(crate) fn open(file: &File) -> Option<Self> {
        use rustix::fs::{Mode, OFlags};
        use std::os::fd::AsRawFd;
        let path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let flags = OFlags::RDONLY | OFlags::DIRECT | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path.as_str(), flags, Mode::empty()).ok()?;
        Some(Self { file: File::from(fd), ok: AtomicBool::new(true) })
    }

    /// Reads exactly `buf.len()` bytes at `offset`: the aligned middle directly, the unaligned
    /// edges (and everything, once direct reads were refused) from `buffered`.
    pub(crate) fn read_exact_at(&self, buffered: &dyn ReadAt, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let Some((head, middle)) = self.direct_part(buf, offset) else {
            return buffered.read_exact_at(buf, offset);
        };
        buffered.read_exact_at(&mut buf[..head], offset)?;
        let at = offset + head as u64;
        let (mid, tail) = buf[head..].split_at_mut(middle);
        match self.read_direct(mid, at) {
            // The rest (after a short read at the end of file) from the page cache, which
            // reports a file that is too short in its own words.
            Ok(n) => buffered.read_exact_at(&mut mid[n..], at + n as u64)?,
            // EINVAL: the file system wants stricter alignment than assumed.
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                self.ok.store(false, Ordering::Relaxed);
                buffered.read_exact_at(mid, at)?;
            }
            Err(e) => return Err(e),
        }
        buffered.read_exact_at(tail, at + middle as u64)
    }

    /// Reads into `buf` (aligned) until it is full or a read comes back short (the end of the
    /// file); returns the bytes read.
    fn read_direct(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match FileExt::read_at(&self.file, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    if !n.is_multiple_of(DIRECT_ALIGN) {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn direct_part(&self, buf: &[u8], offset: u64) -> Option<(usize, usize)> {
        if !self.ok.load(Ordering::Relaxed) {
            return None;
        }
        aligned_middle(buf, offset, DIRECT_MIN_BYTES)
    }
}

/// The part of `buf`, to be transferred at file `offset`, that direct I/O can move: `(head,
/// middle)`, the middle being `buf[head..head + middle]`, [`DIRECT_ALIGN`]-aligned in memory,
/// in the file and in length. `None` when buffer and offset are not aligned alike, or the
/// middle is shorter than `min_bytes`; the edges go through the page cache.
pub fn aligned_middle(buf: &[u8], offset: u64, min_bytes: usize) -> Option<(usize, usize)> {
    let align = DIRECT_ALIGN as u64;
    let head = ((align - offset % align) % align) as usize;
    if head > buf.len() || !(buf.as_ptr() as usize + head).is_multiple_of(DIRECT_ALIGN) {
        return None;
    }
    let middle = (buf.len() - head) / DIRECT_ALIGN * DIRECT_ALIGN;
    (middle >= min_bytes.max(1)).then_some((head, middle))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 253) as u8).collect()
    }

    #[test]
    fn aligned_buffer_starts_aligned_and_has_its_length() {
        for len in [0, 1, 4096, 1 << 20] {
            let buf = AlignedBuf::new(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % DIRECT_ALIGN, 0);
            assert!(buf.iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn aligned_middle_needs_buffer_and_offset_aligned_alike() {
        let buf = AlignedBuf::new(64 << 10);
        assert_eq!(aligned_middle(&buf, 0, 4096), Some((0, 64 << 10)));
        // Offset 100 into the file, 100 into the buffer: aligned alike from byte 3996 on.
        assert_eq!(aligned_middle(&buf[100..], 100, 4096), Some((3996, 60 << 10)));
        assert_eq!(aligned_middle(&buf[100..], 0, 4096), None);
        assert_eq!(aligned_middle(&buf[..8191], 0, 8192), None);
        assert_eq!(aligned_middle(&buf[..100], 0, 1), None);
    }

    #[test]
    fn direct_reads_return_the_bytes_of_aligned_and_unaligned_ranges() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = pattern(1 << 20);
        let path = dir.path().join("source");
        File::create(&path).and_then(|mut f| f.write_all(&data)).expect("writing the source");
        let file = File::open(&path).expect("open");
        let Some(direct) = DirectSource::open(&file) else {
            eprintln!("note: no O_DIRECT in the temp dir (tmpfs?); nothing to test here");
            return;
        };
        let mut buf = AlignedBuf::new(1 << 20);
        for (offset, len) in [(0usize, 1usize << 20), (4096, 512 << 10), (100, 300 << 10), (8191, 5)] {
            // The buffer at the same alignment as the offset, as the converter lays it out.
            let start = offset % DIRECT_ALIGN;
            let dst = &mut buf[start..start + len];
            direct.read_exact_at(&file, dst, offset as u64).expect("read");
            assert!(dst == &data[offset..offset + len], "bytes differ at {offset}+{len}");
        }
        assert!(direct.ok.load(Ordering::Relaxed), "a direct read was refused");
    }

    #[test]
    fn direct_read_past_the_end_fails_as_unexpected_eof() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("short");
        File::create(&path).and_then(|mut f| f.write_all(&pattern(100_000))).expect("writing");
        let file = File::open(&path).expect("open");
        let Some(direct) = DirectSource::open(&file) else {
            eprintln!("note: no O_DIRECT in the temp dir (tmpfs?); nothing to test here");
            return;
        };
        let mut buf = AlignedBuf::new(256 << 10);

        let err = direct.read_exact_at(&file, &mut buf, 0).expect_err("past the end");

        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(direct.ok.load(Ordering::Relaxed), "a short read must not turn direct reads off");
    }
}
