//! Transparent decompression of the gzip, xz and zstd wrappers that disk images are shipped in,
//! recognised by magic bytes (see [`probe`](crate::probe)).
//!
//! [`decoder`] wraps a compressed byte stream and yields the decompressed bytes of *every*
//! gzip member, xz stream or zstd frame in it, as `gzip -d`, `xz -d` and `zstd -d` do.
//!
//! ## Design
//! - `Input` buffers the compressed bytes, counts them (for messages), lets the codecs peek at
//!   the bytes after a member, and marks errors of the underlying reader so that they pass
//!   through untouched instead of being reported as corrupt data.
//! - One codec per wrapper, each of which returns end of stream **only** after the last
//!   member/stream/frame was complete and verified and the input is exhausted:
//!   - gzip: one [`flate2::bufread::GzDecoder`] member after another (the decoder is reset, not
//!     rebuilt, for the next member). Driving the members ourselves instead of using
//!     `MultiGzDecoder` lets us tell data after the last member apart from a broken member.
//!   - xz: liblzma's stream decoder with `LZMA_CONCATENATED`, which decodes every stream and
//!     validates the stream padding between them.
//!   - zstd: zstd's raw streaming decoder, driven frame by frame so that skippable frames are
//!     skipped and anything after the last frame that does not start a frame is an error.
//! - `Checked` turns every failure into one `io::Error` naming the wrapper, and latches it: a
//!   decoder is never asked to go on after it failed.
//!
//! ## Errors
//! Errors the returned reader yields about the compressed data have kind
//! [`io::ErrorKind::UnexpectedEof`] ("truncated gzip stream: ...", the input ended inside a
//! member, stream or frame, including an empty input) or [`io::ErrorKind::InvalidData`]
//! ("corrupt xz stream: ...", including data after the last member). Errors of the wrapped
//! reader itself (a network failure, say) are passed through unchanged, with their own kind.
//!
//! ## Security
//! There is no output limit here: a small input can expand enormously, so callers bound what they
//! accept (volume capacity, scratch bound). Memory is bounded: xz and gzip decoders use fixed
//! state, and a zstd frame may not ask for a window larger than [`ZSTD_WINDOW_LOG_MAX`].

use std::fmt;
use std::io::{self, BufRead, Read};

use flate2::bufread::GzDecoder;
use liblzma::bufread::XzDecoder;
use zstd::stream::raw::{DParameter, InBuffer, Operation, OutBuffer};

use crate::{Error, Format, Result};

/// Size of the compressed-input buffer: zstd's recommended input size is one block (128 KiB),
/// and it is large enough for inflate and liblzma to run long stretches per call.
const INPUT_BUFFER_BYTES: usize = 128 * 1024;

pub use crate::limits::ZSTD_WINDOW_LOG_MAX;

/// The first two bytes of every gzip member.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// The first four bytes of a zstd frame (0xFD2FB528 little-endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Skippable zstd frames start with 0x184D2A50..=0x184D2A5F little-endian: these bits ...
const ZSTD_SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
/// ... under this mask (the low four bits are free).
const ZSTD_SKIPPABLE_MASK: [u8; 4] = [0xf0, 0xff, 0xff, 0xff];

/// Wraps `inner` in a streaming decoder for `format` (Gzip, Xz or Zstd).
///
/// gzip: all members; xz: all concatenated streams, including stream padding; zstd: all frames,
/// skippable frames too. The returned reader ends only after the last member was complete and
/// verified (CRC, sizes, checksums) and `inner` reached its end.
///
/// # Errors
/// Building the decoder fails with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) when
/// `format` is not a compression wrapper, or [`ErrorKind::Io`](crate::ErrorKind::Io) when the
/// decompressor cannot be set up (out of memory). See the [module docs](self) for what the reader
/// yields.
pub fn decoder<'a>(format: Format, inner: Box<dyn Read + Send + 'a>) -> Result<Box<dyn Read + Send + 'a>> {
    let input = Input::new(inner);
    let reader: Box<dyn Read + Send + 'a> = match format {
        Format::Gzip => Box::new(Checked::new(format, GzipMembers::new(input))),
        Format::Xz => Box::new(Checked::new(format, XzStreams::new(input)?)),
        Format::Zstd => Box::new(Checked::new(format, ZstdFrames::new(input)?)),
        other => return Err(Error::unsupported(format!("{other} is not a compression wrapper"))),
    };
    Ok(reader)
}

/// Why a codec stopped.
#[derive(Debug)]
enum Failure {
    /// The wrapped reader failed; the error is passed through as it is.
    Source(io::Error),
    /// The input ended inside a member, stream or frame.
    Truncated,
    /// The decoder rejected the data; the library's description.
    Corrupt(String),
    /// Bytes that do not start a new member follow a complete one, at this compressed offset.
    Trailing { offset: u64 },
}

impl Failure {
    /// Classifies an error coming out of a decompression library.
    fn from_decoder(e: io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<SourceError>()) {
            return match e.into_inner().map(|inner| inner.downcast::<SourceError>()) {
                Some(Ok(source)) => Failure::Source(source.0),
                _ => Failure::Corrupt("lost the error of the underlying reader".into()),
            };
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof => Failure::Truncated,
            _ => Failure::Corrupt(e.to_string()),
        }
    }
}

/// An error of the reader underneath the decoder, marked so that it is not mistaken for an error
/// of the decoder (the libraries pass reader errors through unchanged).
#[derive(Debug)]
struct SourceError(io::Error);

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {}

/// The compressed input: a buffer over the wrapped reader that can peek across refills.
struct Input<'a> {
    source: Box<dyn Read + Send + 'a>,
    buf: Box<[u8]>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The source returned end of file.
    eof: bool,
    /// Bytes read from the source so far.
    received: u64,
    /// Bytes handed to (consumed by) the decoders so far.
    consumed: u64,
}

impl<'a> Input<'a> {
    fn new(source: Box<dyn Read + Send + 'a>) -> Self {
        Self {
            source,
            buf: vec![0; INPUT_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            received: 0,
            consumed: 0,
        }
    }

    /// Moves this input out, leaving an empty one in its place (no allocation).
    fn take(&mut self) -> Self {
        let empty = Input {
            source: Box::new(io::empty()),
            buf: Box::default(),
            start: 0,
            end: 0,
            eof: true,
            received: self.received,
            consumed: self.consumed,
        };
        std::mem::replace(self, empty)
    }

    /// One read from the source into `buf[end..]`, which must not be empty.
    fn fill_more(&mut self) -> io::Result<()> {
        loop {
            match self.source.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    self.received += n as u64;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io::Error::new(e.kind(), SourceError(e))),
            }
        }
    }

    /// The next `n` unconsumed bytes without consuming them; fewer only at end of input.
    fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        debug_assert!(n <= self.buf.len());
        while self.end - self.start < n && !self.eof {
            if self.buf.len() - self.start < n {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            self.fill_more()?;
        }
        let end = self.end.min(self.start + n);
        Ok(&self.buf[self.start..end])
    }
}

impl BufRead for Input<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end && !self.eof {
            self.start = 0;
            self.end = 0;
            self.fill_more()?;
        }
        Ok(&self.buf[self.start..self.end])
    }

    fn consume(&mut self, amt: usize) {
        let amt = amt.min(self.end - self.start);
        self.start += amt;
        self.consumed += amt as u64;
    }
}

impl Read for Input<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// A decoder for all the members of one wrapper.
trait Codec: Send {
    /// Decodes into `buf` (not empty). `Ok(0)` only when the last member was complete and the
    /// input is exhausted.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Failure>;

    /// Where decoding is, for messages: "member 2", "frame 3"; `None` when the library keeps
    /// track of it (xz).
    fn location(&self) -> Option<String>;

    /// The compressed input.
    fn input(&self) -> &Input<'_>;
}

/// The reader handed out: turns a codec's failures into `io::Error`s that name the wrapper.
struct Checked<C> {
    codec: C,
    wrapper: Format,
    state: State,
}

enum State {
    Running,
    Done,
    /// Every later read repeats the error: decoders are not resumed after a failure.
    Failed {
        kind: io::ErrorKind,
        message: String,
    },
}

impl<C: Codec> Checked<C> {
    fn new(wrapper: Format, codec: C) -> Self {
        Self { codec, wrapper, state: State::Running }
    }

    fn error(&self, failure: Failure) -> io::Error {
        let wrapper = self.wrapper;
        let location = self.codec.location();
        match failure {
            Failure::Source(e) => e,
            Failure::Truncated => {
                let received = self.codec.input().received;
                let inside = location.map(|l| format!(", inside {l}")).unwrap_or_default();
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "truncated {wrapper} stream: the input ends after {received} compressed bytes{inside}"
                    ),
                )
            }
            Failure::Corrupt(detail) => {
                let within = location.map(|l| format!(" (in {l})")).unwrap_or_default();
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("corrupt {wrapper} stream: {detail}{within}"),
                )
            }
            Failure::Trailing { offset } => {
                let after = location.unwrap_or_else(|| "the last stream".into());
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "corrupt {wrapper} stream: unexpected data at compressed byte {offset}, after the end of {after}"
                    ),
                )
            }
        }
    }
}

impl<C: Codec> Read for Checked<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.state {
            State::Running => {}
            State::Done => return Ok(0),
            State::Failed { kind, message } => return Err(io::Error::new(*kind, message.clone())),
        }
        if buf.is_empty() {
            return Ok(0);
        }
        match self.codec.read(buf) {
            Ok(0) => {
                self.state = State::Done;
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(failure) => {
                let e = self.error(failure);
                self.state = State::Failed { kind: e.kind(), message: e.to_string() };
                Err(e)
            }
        }
    }
}

/// gzip: members one after another until the input ends.
struct GzipMembers<'a> {
    decoder: GzDecoder<Input<'a>>,
    /// 1-based index of the member being decoded.
    member: u64,
}

impl<'a> GzipMembers<'a> {
    fn new(input: Input<'a>) -> Self {
        // Parses the first member's header now; a failure is reported by the first read.
        Self { decoder: GzDecoder::new(input), member: 1 }
    }

    fn failure(e: io::Error) -> Failure {
        match Failure::from_decoder(e) {
            // flate2's wording for a trailer mismatch repeats "corrupt gzip stream".
            Failure::Corrupt(detail) if detail.contains("matching checksum") => {
                Failure::Corrupt("the CRC-32 or size in the member trailer does not match the data".into())
            }
            other => other,
        }
    }
}

impl Codec for GzipMembers<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Failure> {
        loop {
            let n = self.decoder.read(buf).map_err(Self::failure)?;
            if n > 0 {
                return Ok(n);
            }
            // The member ended and its trailer (CRC-32, size) matched. Another member, or the end?
            let input = self.decoder.get_mut();
            let offset = input.consumed;
            let next = input.peek(GZIP_MAGIC.len()).map_err(Self::failure)?;
            if next.is_empty() {
                return Ok(0);
            }
            // A lone 0x1f at the very end starts a member that is then reported as truncated.
            if !GZIP_MAGIC.starts_with(next) {
                return Err(Failure::Trailing { offset });
            }
            let input = input.take();
            drop(self.decoder.reset(input));
            self.member += 1;
        }
    }

    fn location(&self) -> Option<String> {
        Some(format!("member {}", self.member))
    }

    fn input(&self) -> &Input<'_> {
        self.decoder.get_ref()
    }
}

/// xz: liblzma decodes the concatenated streams and the padding between them.
struct XzStreams<'a> {
    decoder: XzDecoder<Input<'a>>,
}

impl<'a> XzStreams<'a> {
    fn new(input: Input<'a>) -> Result<Self> {
        // No memory limit: the single-threaded decoder's memory is bounded by the dictionary
        // size, at most 1.5 GiB by the format and 64 MiB for `xz -9`.
        let stream = liblzma::stream::Stream::new_stream_decoder(u64::MAX, liblzma::stream::CONCATENATED)
            .map_err(|e| Error::io("setting up the xz decoder", e.into()))?;
        Ok(Self { decoder: XzDecoder::new_stream(input, stream) })
    }
}

impl Codec for XzStreams<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Failure> {
        let n = self.decoder.read(buf).map_err(Failure::from_decoder)?;
        if n == 0 {
            // liblzma reports the end only when told that the input is finished, so this holds;
            // checked anyway because trailing data must never be dropped silently.
            let input = self.decoder.get_mut();
            let offset = input.consumed;
            if !input.fill_buf().map_err(Failure::from_decoder)?.is_empty() {
                return Err(Failure::Trailing { offset });
            }
        }
        Ok(n)
    }

    fn location(&self) -> Option<String> {
        None
    }

    fn input(&self) -> &Input<'_> {
        self.decoder.get_ref()
    }
}

/// zstd: frames one after another, skippable frames included, until the input ends.
struct ZstdFrames<'a> {
    input: Input<'a>,
    decoder: zstd::stream::raw::Decoder<'static>,
    /// Number of frames started; the current one when `in_frame`.
    frame: u64,
    in_frame: bool,
}

impl<'a> ZstdFrames<'a> {
    fn new(input: Input<'a>) -> Result<Self> {
        let mut decoder =
            zstd::stream::raw::Decoder::new().map_err(|e| Error::io("setting up the zstd decoder", e))?;
        decoder
            .set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
            .map_err(|e| Error::io("setting up the zstd decoder", e))?;
        Ok(Self { input, decoder, frame: 0, in_frame: false })
    }

    /// Whether `head` (up to four bytes, fewer only at the end of input) starts a zstd frame or
    /// a skippable frame, or is a cut-off start of one.
    fn starts_frame(head: &[u8]) -> bool {
        let skippable = head
            .iter()
            .zip(ZSTD_SKIPPABLE_MAGIC.iter().zip(ZSTD_SKIPPABLE_MASK))
            .all(|(b, (m, k))| b & k == *m);
        ZSTD_MAGIC.starts_with(head) || skippable
    }

    /// Between frames: starts the next one, or reports the end of the input.
    fn next_frame(&mut self) -> Result<bool, Failure> {
        let offset = self.input.consumed;
        let head = self.input.peek(ZSTD_MAGIC.len()).map_err(Failure::from_decoder)?;
        if head.is_empty() {
            return if self.frame == 0 { Err(Failure::Truncated) } else { Ok(false) };
        }
        if !Self::starts_frame(head) {
            return Err(if self.frame == 0 {
                Failure::Corrupt("the input does not start with a zstd frame".into())
            } else {
                Failure::Trailing { offset }
            });
        }
        if self.frame > 0 {
            self.decoder.reinit().map_err(|e| Failure::Corrupt(e.to_string()))?;
        }
        self.frame += 1;
        self.in_frame = true;
        Ok(true)
    }
}

impl Codec for ZstdFrames<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Failure> {
        loop {
            if !self.in_frame && !self.next_frame()? {
                return Ok(0);
            }
            let data = self.input.fill_buf().map_err(Failure::from_decoder)?;
            let eof = data.is_empty();
            let mut src = InBuffer::around(data);
            let mut dst = OutBuffer::around(&mut *buf);
            // 0 when the frame is complete (checksum verified if it has one) and fully flushed;
            // zstd stops reading at the end of a frame.
            let hint = self.decoder.run(&mut src, &mut dst).map_err(|e| Failure::Corrupt(e.to_string()))?;
            let (read, written) = (src.pos(), dst.pos());
            self.input.consume(read);
            if hint == 0 {
                self.in_frame = false;
            }
            if written > 0 {
                return Ok(written);
            }
            // Nothing more came out although the output has room: zstd needs input that is gone.
            if eof && hint != 0 {
                return Err(Failure::Truncated);
            }
        }
    }

    fn location(&self) -> Option<String> {
        Some(format!("frame {}", self.frame.max(1)))
    }

    fn input(&self) -> &Input<'_> {
        &self.input
    }
}

#[cfg(test)]
mod tests;
