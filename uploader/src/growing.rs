//! Converting a qcow2 while its body is still arriving.
//!
//! A qcow2 needs random access, so what its body holds besides plain data goes to a scratch
//! file. When the body's length is announced (`Content-Length` of a raw body), the converter
//! does not wait for the last byte: it opens the scratch file through a [`Growing`] reader
//! whose reads block until the receiver has written past their end (a watermark and a
//! condition variable). qemu-img writes a qcow2 with its metadata and data in about guest
//! order, so the converter trails the receiver and finishes shortly after the last byte instead
//! of starting there. An image laid out in any other order converts just as correctly; its
//! reads only wait longer.
//!
//! Into a target that reads zeros where nothing was written (a new file volume), the receiver
//! also routes the body through `disk_formats::qcow2::stream`: plain data clusters whose L2
//! entry arrived before them go straight to their guest offset in the volume and never touch
//! the scratch file (for a qemu-img image that is all of its data: a 1 GiB upload writes 1 GiB
//! instead of 2 through the page cache). The converter then converts the image *minus* what
//! was routed (`Residual`), still with every check of the qcow2 engine.
//!
//! ## Main types
//! - [`Growing`]: the gated [`ReadAt`] over the scratch file, fed by the receiver.
//! - [`convert_while_receiving`]: receiver thread + converter, joined into one result.
//!
//! ## Caveats
//! - The receiver never waits for the converter; the converter's reader threads wait for the
//!   receiver. When the body ends early (or its checksum does not match, so its end marker never
//!   comes), every waiting and later read fails with an error naming the bytes received; when
//!   the converter fails, the receiver stops at its next piece.
//! - [`Growing::as_file`] is `None`: no in-kernel copy and no `O_DIRECT` read may touch bytes
//!   that were not written yet, so data is read through the page cache (where it just landed).
//! - A body without an announced length (chunked, or a multipart field) keeps the old order:
//!   receive everything, then convert. A block device is not routed into (the residual
//!   conversion would have to zero around the routed data).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use disk_formats::convert::{ConvertOptions, ConvertStats, convert_image};
use disk_formats::io::{ReadAt, WriteAt};
use disk_formats::qcow2::stream::{self, Residual, Routed, Router};
use disk_formats::{Format, OpenOptions, open_as};
use importer::pipe::ChannelReader;

use crate::error::{Error, Result};
use crate::scratch;

/// A file of announced `size` that is being written from its start: reads wait until the
/// bytes they ask for were written (or fail once the writing failed).
#[derive(Debug)]
pub(crate) struct Growing {
    file: File,
    size: u64,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Every byte below is written (or a hole that reads as zeros).
    written: u64,
    /// Why no more bytes will come; waiting and later reads fail with it.
    failure: Option<String>,
    /// The reading side gave up: the writer should stop.
    stopped: bool,
}

impl Growing {
    /// Gates reads of `file`, which will hold `size` bytes once written.
    pub(crate) fn new(file: File, size: u64) -> Self {
        Self { file, size, state: Mutex::new(State::default()), changed: Condvar::new() }
    }

    /// The file, for the writer.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The writer has written every byte below `written`: wakes the reads it satisfies.
    pub(crate) fn advance(&self, written: u64) {
        let mut state = self.lock();
        state.written = state.written.max(written);
        drop(state);
        self.changed.notify_all();
    }

    /// No more bytes will come: waiting and later reads past the watermark fail with an error
    /// naming the bytes written, the announced size and `reason`.
    pub(crate) fn fail(&self, reason: &str) {
        let mut state = self.lock();
        if state.failure.is_none() {
            let message =
                format!("the upload stopped after {} of {} bytes: {reason}", state.written, self.size);
            state.failure = Some(message);
        }
        drop(state);
        self.changed.notify_all();
    }

    /// The reading side gave up (the conversion failed): the writer stops at its next piece.
    pub(crate) fn stop(&self) {
        self.lock().stopped = true;
        self.fail("the conversion stopped");
    }

    /// Whether [`stop`](Self::stop) was called.
    pub(crate) fn is_stopped(&self) -> bool {
        self.lock().stopped
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain values, meaningful even if a holder panicked.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until `end` is written; the failure otherwise.
    fn wait_for(&self, end: u64) -> io::Result<()> {
        let mut state = self.lock();
        loop {
            if state.written >= end {
                return Ok(());
            }
            if let Some(failure) = &state.failure {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{failure} (needed bytes up to {end})"),
                ));
            }
            state = self.changed.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl ReadAt for Growing {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let want = usize::try_from(self.size - offset).map_or(buf.len(), |left| left.min(buf.len()));
        let end = offset + want as u64;
        self.wait_for(end)?;
        let buf = &mut buf[..want];
        let mut done = 0;
        while done < want {
            match FileExt::read_at(&self.file, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Below the watermark, bytes past the file's current end are zero blocks that were
        // skipped (the file is sized only at the end).
        buf[done..].fill(0);
        Ok(want)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.size)
    }
}

/// Receives the rest of an uncompressed qcow2 body (`head` already read from `reader`, `size`
/// bytes announced) into a scratch file in `dir` and converts it into `target` at the same
/// time. Returns when both are done: the conversion succeeded and the body arrived whole, with
/// its end marker (so its checksum matched).
///
/// # Errors
/// The receiver's error first (the body ended early, a scratch write failed: the converter's
/// failure then only follows from it), else the converter's; `TooLarge` before anything is
/// stored when `size` is beyond `bound` (what the header allows).
pub(crate) fn convert_while_receiving(
    head: &[u8],
    reader: &mut ChannelReader,
    dir: &Path,
    size: u64,
    bound: u64,
    open: &OpenOptions,
    target: &dyn WriteAt,
) -> Result<ConvertStats> {
    if size > bound {
        return Err(disk_formats::Error::too_large(format!(
            "the uploaded qcow2 of {size} bytes is larger than its header allows ({bound} bytes)"
        ))
        .into());
    }
    let growing = Arc::new(Growing::new(scratch::create(dir)?, size));
    // Plain data is routed straight to the target where the residual conversion may leave
    // the routed ranges alone: a target that reads zeros where nothing was written.
    let routing = target.unwritten_reads_zero();
    let routed = Routed::new();
    let arrived = |end: u64| growing.wait_for(end);
    std::thread::scope(|scope| {
        let receiver = scope.spawn(|| {
            if routing {
                stream::route(target, &routed, size, |router| {
                    receive(&growing, head, reader, bound, Some(router))
                })
            } else {
                receive(&growing, head, reader, bound, None)
            }
        });
        let source: Arc<dyn ReadAt> = Arc::clone(&growing) as Arc<dyn ReadAt>;
        let converted = open_as(source, Format::Qcow2, open).and_then(|image| {
            if routing {
                let residual = Residual::new(image, &routed, &arrived);
                convert_image(&residual, target, &ConvertOptions::default())
            } else {
                convert_image(&*image, target, &ConvertOptions::default())
            }
        });
        if converted.is_err() {
            growing.stop();
        }
        let received = receiver
            .join()
            .unwrap_or_else(|_| Err(Error::Internal("the scratch writer thread panicked".into())));
        match (received, converted) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e.into()),
            (Ok(true), Ok(stats)) => {
                Ok(ConvertStats { data_bytes: stats.data_bytes + routed.data_bytes(), ..stats })
            }
            (Ok(false), Ok(_)) => Err(Error::Internal("the scratch writer stopped before the end".into())),
        }
    })
}

/// The receiver: writes the body into the growing file and moves its watermark. Returns
/// whether the whole announced body arrived (false: the converter stopped it).
fn receive(
    growing: &Growing,
    head: &[u8],
    reader: &mut ChannelReader,
    bound: u64,
    router: Option<&mut Router<'_>>,
) -> Result<bool> {
    let size = growing.size;
    let filled = scratch::fill(growing.file(), head, reader, bound, router, &mut |written| {
        growing.advance(written);
        written <= size && !growing.is_stopped()
    });
    match filled {
        Ok(Some(len)) if len == size => Ok(true),
        Ok(Some(len)) => {
            let reason = format!("{len} bytes arrived, {size} were announced");
            growing.fail(&reason);
            Err(Error::Truncated { received: len, reason })
        }
        Ok(None) if growing.is_stopped() => Ok(false),
        Ok(None) => {
            let reason = format!("more than the {size} bytes announced arrived");
            growing.fail(&reason);
            Err(Error::BadRequest(reason))
        }
        Err(e) => {
            growing.fail(&e.one_line());
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use importer::pipe::{CHANNEL_PIECES, Piece};
    use std::sync::mpsc;
    use std::time::Duration;
    use tokio::sync::mpsc as tokio_mpsc;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 + 1).collect()
    }

    fn growing(size: u64) -> Arc<Growing> {
        Arc::new(Growing::new(tempfile::tempfile().unwrap(), size))
    }

    /// Starts a thread reading `len` bytes at `offset`; its result arrives on the receiver.
    fn read_in_thread(g: &Arc<Growing>, offset: u64, len: usize) -> mpsc::Receiver<io::Result<Vec<u8>>> {
        let (tx, rx) = mpsc::channel();
        let g = Arc::clone(g);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; len];
            let result = g.read_exact_at(&mut buf, offset).map(|()| buf);
            let _ = tx.send(result);
        });
        rx
    }

    /// Asserts that the read has not returned yet (it must still be waiting).
    fn assert_waiting(rx: &mpsc::Receiver<io::Result<Vec<u8>>>) {
        std::thread::sleep(Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "the read returned before its bytes were written");
    }

    #[test]
    fn reads_wait_for_their_bytes_and_then_succeed() {
        let data = pattern(12288);
        let g = growing(data.len() as u64);
        let rx = read_in_thread(&g, 4000, 5000);
        g.file().write_all_at(&data[..4096], 0).unwrap();
        g.advance(4096);
        assert_waiting(&rx);
        g.file().write_all_at(&data[4096..], 4096).unwrap();
        g.advance(data.len() as u64);

        assert_eq!(rx.recv().unwrap().unwrap(), &data[4000..9000]);
        assert_eq!(g.size().unwrap(), 12288);
        assert!(g.as_file().is_none(), "no in-kernel or direct reads of a growing file");
    }

    #[test]
    fn skipped_zero_blocks_below_the_watermark_read_as_zeros_and_reads_stop_at_the_size() {
        let g = growing(10_000);
        g.file().write_all_at(b"abc", 0).unwrap();
        g.advance(8192); // 4096..8192 was a zero block: never written, the file is 3 bytes long
        let mut buf = vec![7u8; 8192];
        g.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..3], b"abc");
        assert!(buf[3..].iter().all(|&b| b == 0));

        g.advance(10_000);
        let mut tail = vec![7u8; 4096];
        assert_eq!(g.read_at(&mut tail, 8000).unwrap(), 2000);
        assert_eq!(g.read_at(&mut tail, 10_000).unwrap(), 0);
    }

    #[test]
    fn a_body_that_ends_early_fails_every_waiting_read_with_the_byte_counts() {
        let g = growing(1 << 20);
        g.file().write_all_at(&pattern(4096), 0).unwrap();
        g.advance(4096);
        let waiting: Vec<_> = (1..4).map(|i| read_in_thread(&g, i * 65536, 4096)).collect();
        assert_waiting(&waiting[0]);

        g.fail("connection reset");

        for rx in waiting {
            let err = rx.recv().unwrap().unwrap_err();
            let text = err.to_string();
            assert!(text.contains("after 4096 of 1048576 bytes"), "{text}");
            assert!(text.contains("connection reset"), "{text}");
        }
        // Bytes already written still read; later reads past them fail at once.
        let mut head = vec![0u8; 4096];
        g.read_exact_at(&mut head, 0).unwrap();
        assert!(g.read_exact_at(&mut head, 8192).is_err());
    }

    #[test]
    fn concurrent_readers_all_get_their_bytes() {
        let data = pattern(64 * 4096);
        let g = growing(data.len() as u64);
        // Readers in reverse order of the writes, overlapping each other.
        let readers: Vec<_> =
            (0..16u64).rev().map(|i| (i, read_in_thread(&g, i * 16384 + 100, 20000))).collect();
        for (i, chunk) in data.chunks(8192).enumerate() {
            let at = (i * 8192) as u64;
            g.file().write_all_at(chunk, at).unwrap();
            g.advance(at + chunk.len() as u64);
        }
        for (i, rx) in readers {
            let start = (i * 16384 + 100) as usize;
            let end = (start + 20000).min(data.len());
            let got = rx.recv().unwrap();
            if end - start < 20000 {
                assert!(got.is_err(), "a read past the size cannot be filled");
            } else {
                assert_eq!(got.unwrap(), &data[start..end], "reader {i}");
            }
        }
    }

    fn channel(pieces: Vec<Vec<u8>>, end: bool) -> ChannelReader {
        let (tx, rx) = tokio_mpsc::channel(CHANNEL_PIECES + 1);
        for piece in pieces {
            tx.try_send(Piece::Data(Bytes::from(piece))).unwrap();
        }
        if end {
            tx.try_send(Piece::End).unwrap();
        }
        ChannelReader::new(rx)
    }

    #[test]
    fn the_receiver_fills_the_file_and_fails_reads_when_the_stream_breaks() {
        let body = pattern(300_000);
        let g = growing(body.len() as u64);
        let mut whole = channel(vec![body[1000..].to_vec()], true);
        assert!(receive(&g, &body[..1000], &mut whole, 1 << 20, None).unwrap());
        let mut got = vec![0u8; body.len()];
        g.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, body);

        let g = growing(body.len() as u64);
        let waiting = read_in_thread(&g, 200_000, 1000);
        let mut broken = channel(vec![body[1000..100_000].to_vec()], false);
        let err = receive(&g, &body[..1000], &mut broken, 1 << 20, None).unwrap_err();
        assert!(err.one_line().contains("stopped before its end"), "{err}");
        let read = waiting.recv().unwrap().unwrap_err().to_string();
        assert!(read.contains("after 100000 of 300000 bytes"), "{read}");
    }

    #[test]
    fn a_short_or_long_body_is_not_taken_for_the_announced_one() {
        let g = growing(5000);
        let err = receive(&g, b"head", &mut channel(vec![vec![1; 100]], true), 1 << 20, None).unwrap_err();
        assert!(matches!(err, Error::Truncated { received: 104, .. }), "{err}");

        let g = growing(50);
        let err = receive(&g, b"head", &mut channel(vec![vec![1; 100]], true), 1 << 20, None).unwrap_err();
        assert!(err.to_string().contains("more than the 50 bytes announced"), "{err}");
    }

    #[test]
    fn a_stopped_conversion_stops_the_receiver() {
        let g = growing(1 << 20);
        g.stop();
        let mut body = channel(vec![vec![1; 1000]], false);
        assert!(!receive(&g, b"head", &mut body, 1 << 20, None).unwrap());
    }

    #[test]
    fn a_body_beyond_what_the_header_allows_is_refused_before_anything_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let target = tempfile::tempfile().unwrap();
        let volume = FileTarget(target);
        let open = OpenOptions { max_virtual_size: 1 << 30 };
        let mut body = channel(vec![], false);
        let err = convert_while_receiving(b"QFI\xfb", &mut body, dir.path(), 1 << 20, 4096, &open, &volume)
            .unwrap_err();
        assert_eq!(err.kind(), disk_formats::ErrorKind::TooLarge);
        assert!(err.to_string().contains("1048576 bytes is larger than its header allows (4096"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    struct FileTarget(File);

    impl WriteAt for FileTarget {
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.0.write_all_at(buf, offset)
        }
        fn write_zeroes(&self, _offset: u64, _len: u64) -> io::Result<()> {
            Ok(())
        }
        fn unwritten_reads_zero(&self) -> bool {
            true
        }
        fn capacity(&self) -> u64 {
            1 << 30
        }
    }
}
