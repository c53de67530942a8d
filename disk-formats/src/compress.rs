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

/// Largest zstd window accepted, as a power of two: 128 MiB, zstd's own default limit. Frames made
/// with `zstd --long=28` or more need more memory and are refused (as `zstd -d` does without
/// `--memory`), so a hostile frame cannot make us allocate gigabytes.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

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
mod tests {
    use std::io::{Cursor, Write};
    use std::process::Command;

    use super::*;

    // ---- builders ----

    /// Deterministic test data mixing random bytes, zero runs and text.
    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len + 512);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 4 {
                0 => out.extend_from_slice(&x.to_le_bytes()),
                1 => out.extend(std::iter::repeat_n(0u8, (x >> 8) as usize % 512)),
                _ => out.extend_from_slice(b"diskplane compress test line\n"),
            }
        }
        out.truncate(len);
        out
    }

    fn gzip(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in parts {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(part).expect("gzip encode");
            out.extend(enc.finish().expect("gzip finish"));
        }
        out
    }

    fn xz_stream(part: &[u8]) -> Vec<u8> {
        let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
        enc.write_all(part).expect("xz encode");
        enc.finish().expect("xz finish")
    }

    fn xz(parts: &[&[u8]]) -> Vec<u8> {
        parts.iter().flat_map(|part| xz_stream(part)).collect()
    }

    fn zstd_frame(part: &[u8]) -> Vec<u8> {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd encoder");
        enc.include_checksum(true).expect("zstd checksum flag");
        enc.write_all(part).expect("zstd encode");
        enc.finish().expect("zstd finish")
    }

    fn zstd(parts: &[&[u8]]) -> Vec<u8> {
        parts.iter().flat_map(|part| zstd_frame(part)).collect()
    }

    fn skippable_frame(magic_low_bits: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x50 | magic_low_bits, 0x2a, 0x4d, 0x18];
        out.extend((payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Compresses `parts` as separate members/streams/frames of `format`.
    fn compress(format: Format, parts: &[&[u8]]) -> Vec<u8> {
        match format {
            Format::Gzip => gzip(parts),
            Format::Xz => xz(parts),
            Format::Zstd => zstd(parts),
            other => panic!("{other} is not a wrapper"),
        }
    }

    const WRAPPERS: [Format; 3] = [Format::Gzip, Format::Xz, Format::Zstd];

    fn decode(format: Format, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut reader = decoder(format, Box::new(Cursor::new(data.to_vec()))).expect("decoder");
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        Ok(out)
    }

    /// A source that hands out a few bytes per read (1 to 13), to cross every buffer edge.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let step = self.pos % 13 + 1;
            let n = step.min(buf.len()).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    /// A source that fails with `ConnectionReset` after `good` bytes.
    struct Failing {
        data: Vec<u8>,
        pos: usize,
        good: usize,
    }

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos >= self.good {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer went away"));
            }
            let n = buf.len().min(self.good - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn expect_error(format: Format, result: io::Result<Vec<u8>>, what: &str) -> io::Error {
        match result {
            Ok(out) => panic!("{format}: {what} decoded to {} bytes instead of failing", out.len()),
            Err(e) => e,
        }
    }

    fn assert_truncated(format: Format, result: io::Result<Vec<u8>>, what: &str) {
        let err = expect_error(format, result, what);
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{format}: {what}: {err}");
        let prefix = format!("truncated {format} stream");
        assert!(err.to_string().starts_with(&prefix), "{format}: {what}: {err}");
    }

    fn assert_corrupt(format: Format, result: io::Result<Vec<u8>>, what: &str) {
        let err = expect_error(format, result, what);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{format}: {what}: {err}");
        let prefix = format!("corrupt {format} stream: ");
        assert!(err.to_string().starts_with(&prefix), "{format}: {what}: {err}");
    }

    // ---- round trips ----

    #[test]
    fn gzip_with_several_members_decodes_every_member() {
        let (a, b, c) = (sample(70_000, 1), sample(5, 2), sample(200_000, 3));
        let data = gzip(&[&a, &b, &[], &c]);

        let out = decode(Format::Gzip, &data).expect("decode");

        assert_eq!(out, [a, b, c].concat());
    }

    #[test]
    fn xz_with_several_streams_and_stream_padding_decodes_every_stream() {
        let (a, b, c) = (sample(70_000, 4), sample(5, 5), sample(200_000, 6));
        let data =
            [xz_stream(&a), vec![0; 4], xz_stream(&b), xz_stream(&[]), vec![0; 8], xz_stream(&c)].concat();

        let out = decode(Format::Xz, &data).expect("decode");

        assert_eq!(out, [a, b, c].concat());
    }

    #[test]
    fn zstd_with_several_frames_and_skippable_frames_decodes_every_frame() {
        let (a, b, c) = (sample(70_000, 7), sample(5, 8), sample(200_000, 9));
        let data = [
            zstd_frame(&a),
            skippable_frame(0, b"metadata"),
            zstd_frame(&b),
            skippable_frame(0xf, &[]),
            zstd_frame(&[]),
            zstd_frame(&c),
            skippable_frame(3, &[0xaa; 100]),
        ]
        .concat();

        let out = decode(Format::Zstd, &data).expect("decode");

        assert_eq!(out, [a, b, c].concat());
    }

    #[test]
    fn zstd_may_start_with_a_skippable_frame() {
        let a = sample(1000, 10);
        let data = [skippable_frame(0, b"x"), zstd_frame(&a)].concat();

        assert_eq!(decode(Format::Zstd, &data).expect("decode"), a);
    }

    #[test]
    fn trickling_input_and_tiny_reads_decode_the_same_bytes() {
        let (a, b) = (sample(20_000, 11), sample(3000, 12));
        for format in WRAPPERS {
            let data = compress(format, &[&a, &b]);
            let mut reader = decoder(format, Box::new(Trickle { data, pos: 0 })).expect("decoder");

            let mut out = Vec::new();
            let mut buf = [0u8; 3];
            loop {
                let n = reader.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }

            assert_eq!(out, [&a[..], &b[..]].concat(), "{format}");
            assert_eq!(reader.read(&mut buf).expect("read after end"), 0, "{format}");
        }
    }

    #[test]
    fn many_small_members_are_all_decoded() {
        let parts: Vec<Vec<u8>> = (0..300).map(|i| sample(i * 7, i as u64)).collect();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        for format in WRAPPERS {
            let data = compress(format, &refs);

            assert_eq!(decode(format, &data).expect("decode"), parts.concat(), "{format}");
        }
    }

    // ---- truncation ----

    #[test]
    fn empty_input_is_truncated() {
        for format in WRAPPERS {
            assert_truncated(format, decode(format, &[]), "empty input");
        }
    }

    #[test]
    fn input_holding_only_the_magic_is_truncated() {
        assert_truncated(Format::Gzip, decode(Format::Gzip, &GZIP_MAGIC), "magic only");
        assert_truncated(Format::Xz, decode(Format::Xz, &[0xfd, b'7', b'z', b'X', b'Z', 0]), "magic only");
        assert_truncated(Format::Zstd, decode(Format::Zstd, &ZSTD_MAGIC), "magic only");
    }

    #[test]
    fn every_cut_inside_a_member_is_reported_as_truncated() {
        let (a, b) = (sample(3000, 13), sample(2000, 14));
        for format in WRAPPERS {
            let first = compress(format, &[&a]);
            let data = compress(format, &[&a, &b]);
            for cut in (0..data.len()).filter(|&cut| cut != first.len()) {
                assert_truncated(format, decode(format, &data[..cut]), &format!("cut at {cut}"));
            }
        }
    }

    #[test]
    fn cuts_of_a_large_stream_are_reported_as_truncated() {
        let a = sample(1_000_000, 15);
        for format in WRAPPERS {
            let data = compress(format, &[&a]);
            for cut in [1, data.len() / 3, data.len() / 2, data.len() - 100, data.len() - 1] {
                assert_truncated(format, decode(format, &data[..cut]), &format!("cut at {cut}"));
            }
        }
    }

    #[test]
    fn truncation_message_names_the_member_and_the_length() {
        let data = gzip(&[b"one", b"two"]);
        let cut = data.len() - 3;

        let err = decode(Format::Gzip, &data[..cut]).expect_err("truncated");

        assert_eq!(
            err.to_string(),
            format!("truncated gzip stream: the input ends after {cut} compressed bytes, inside member 2")
        );
    }

    // ---- corruption ----

    #[test]
    fn gzip_member_with_a_wrong_crc_is_corrupt() {
        let mut data = gzip(&[&sample(5000, 16)]);
        let crc_at = data.len() - 8;
        data[crc_at] ^= 0x01;

        let result = decode(Format::Gzip, &data);

        assert_corrupt(Format::Gzip, result, "bad CRC");
    }

    #[test]
    fn xz_block_with_a_wrong_check_is_corrupt() {
        let mut data = xz(&[&sample(5000, 17)]);
        // The stream ends with: block check (CRC64, 8 bytes), index, footer (12 bytes). Find the
        // check as the 8 bytes before the index, which starts with a 0x00 indicator byte; simpler:
        // corrupt a byte in the middle of the compressed block.
        let middle = data.len() / 2;
        data[middle] ^= 0x40;

        let result = decode(Format::Xz, &data);

        assert_corrupt(Format::Xz, result, "flipped byte");
    }

    #[test]
    fn zstd_frame_with_a_wrong_checksum_is_corrupt() {
        let mut data = zstd(&[&sample(5000, 18)]);
        let checksum_at = data.len() - 4;
        data[checksum_at] ^= 0x01;

        let result = decode(Format::Zstd, &data);

        assert_corrupt(Format::Zstd, result, "bad checksum");
    }

    #[test]
    fn a_flipped_byte_never_yields_wrong_data() {
        let (a, b) = (sample(1500, 19), sample(700, 20));
        let expected = [&a[..], &b[..]].concat();
        for format in WRAPPERS {
            let data = compress(format, &[&a, &b]);
            let mut detected = 0;
            for at in 0..data.len() {
                let mut bad = data.clone();
                bad[at] ^= 0x10;
                match decode(format, &bad) {
                    // Fields no check covers (gzip mtime, OS, ...): same output.
                    Ok(out) => assert!(out == expected, "{format}: flip at {at} changed the output silently"),
                    Err(e) => {
                        detected += 1;
                        let kinds = [io::ErrorKind::InvalidData, io::ErrorKind::UnexpectedEof];
                        assert!(kinds.contains(&e.kind()), "{format}: flip at {at}: {e:?}");
                        assert!(
                            e.to_string().contains(&format!("{format} stream")),
                            "{format}: flip at {at}: {e}"
                        );
                    }
                }
            }
            assert!(detected > data.len() / 2, "{format}: only {detected} of {} flips detected", data.len());
        }
    }

    #[test]
    fn zstd_frame_needing_a_window_over_the_limit_is_refused() {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
        enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(ZSTD_WINDOW_LOG_MAX + 1))
            .expect("window log");
        enc.write_all(&sample(10_000, 21)).expect("encode");
        let data = enc.finish().expect("finish");

        let result = decode(Format::Zstd, &data);

        assert_corrupt(Format::Zstd, result, "window over the limit");
    }

    // ---- trailing data ----

    #[test]
    fn data_after_the_last_member_is_corrupt() {
        let a = sample(3000, 22);
        // Zeros in a multiple of four would be valid xz stream padding; five are not.
        let garbage: [&[u8]; 4] = [b"garbage after the end", &[0; 5], &[0], b"ABCDEFGHIJKLMNOP"];
        for format in WRAPPERS {
            let data = compress(format, &[&a, &a]);
            for tail in garbage {
                let result = decode(format, &[&data[..], tail].concat());
                assert_corrupt(format, result, &format!("trailing {tail:?}"));
            }
        }
    }

    #[test]
    fn short_data_after_the_last_member_is_an_error() {
        // liblzma (like `xz -d`) reads fewer than 12 bytes after a stream as a cut-off stream
        // header: still an error, of the truncated kind.
        let kinds = [io::ErrorKind::InvalidData, io::ErrorKind::UnexpectedEof];
        for format in WRAPPERS {
            let data = compress(format, &[b"one"]);
            for tail in [&b"AB"[..], b"ABC", b"\x01"] {
                let err = expect_error(format, decode(format, &[&data[..], tail].concat()), "short tail");
                assert!(kinds.contains(&err.kind()), "{format}: {tail:?}: {err:?}");
                assert!(err.to_string().contains(&format!("{format} stream")), "{format}: {err}");
            }
        }
    }

    #[test]
    fn trailing_data_message_names_its_offset() {
        let data = gzip(&[b"one"]);

        let err = decode(Format::Gzip, &[&data[..], b"junk"].concat()).expect_err("trailing data");

        assert_eq!(
            err.to_string(),
            format!(
                "corrupt gzip stream: unexpected data at compressed byte {}, after the end of member 1",
                data.len()
            )
        );
    }

    #[test]
    fn xz_stream_padding_at_the_end_is_accepted() {
        let data = [xz_stream(b"one"), vec![0; 512]].concat();

        assert_eq!(decode(Format::Xz, &data).expect("decode"), b"one");
    }

    #[test]
    fn gzip_zero_padding_after_the_last_member_is_corrupt() {
        let data = [gzip(&[b"one"]), vec![0; 512]].concat();

        assert_corrupt(Format::Gzip, decode(Format::Gzip, &data), "zero padding");
    }

    #[test]
    fn xz_padding_that_is_not_a_multiple_of_four_is_corrupt() {
        let data = [xz_stream(b"one"), vec![0; 3]].concat();

        assert_corrupt(Format::Xz, decode(Format::Xz, &data), "3 bytes of padding");
    }

    #[test]
    fn a_partial_magic_after_the_last_member_is_truncated() {
        let gz = [gzip(&[b"one"]), vec![0x1f]].concat();
        let zst = [zstd(&[b"one"]), vec![0x28, 0xb5]].concat();

        assert_truncated(Format::Gzip, decode(Format::Gzip, &gz), "lone 0x1f");
        assert_truncated(Format::Zstd, decode(Format::Zstd, &zst), "half a magic");
    }

    #[test]
    fn zstd_input_that_does_not_start_with_a_frame_is_corrupt() {
        assert_corrupt(Format::Zstd, decode(Format::Zstd, b"not zstd at all"), "no frame");
    }

    // ---- errors of the source and of the API ----

    #[test]
    fn errors_of_the_source_pass_through_and_repeat() {
        let a = sample(400_000, 23);
        for format in WRAPPERS {
            let data = compress(format, &[&a]);
            let good = data.len() / 2;
            let mut reader = decoder(format, Box::new(Failing { data, pos: 0, good })).expect("decoder");

            let mut out = Vec::new();
            let err = reader.read_to_end(&mut out).expect_err("source fails");
            let again = reader.read(&mut [0; 16]).expect_err("still failed");

            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{format}: {err}");
            assert_eq!(err.to_string(), "peer went away", "{format}");
            assert_eq!(again.kind(), io::ErrorKind::ConnectionReset, "{format}");
        }
    }

    #[test]
    fn decoder_errors_repeat_on_later_reads() {
        let data = gzip(&[b"one"]);
        let mut reader = decoder(Format::Gzip, Box::new(Cursor::new(data[..5].to_vec()))).expect("decoder");

        let first = reader.read(&mut [0; 16]).expect_err("truncated");
        let second = reader.read(&mut [0; 16]).expect_err("still truncated");

        assert_eq!(second.kind(), first.kind());
        assert_eq!(second.to_string(), first.to_string());
    }

    #[test]
    fn formats_that_are_not_wrappers_are_refused() {
        let err = decoder(Format::Qcow2, Box::new(io::empty())).err().expect("refused");

        assert_eq!(err.kind(), crate::ErrorKind::Unsupported);
    }

    // ---- files made by the real tools ----

    /// Runs `tool args... FILE` where FILE holds `input`, returning stdout; `None` when the tool
    /// is not installed.
    fn run_tool(tool: &str, args: &[&str], input: &[u8]) -> Option<Vec<u8>> {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(input).expect("write temp file");
        let output = match Command::new(tool).args(args).arg(file.path()).output() {
            Ok(output) => output,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                eprintln!("skipping: `{tool}` is not installed");
                return None;
            }
            Err(e) => panic!("running {tool}: {e}"),
        };
        assert!(output.status.success(), "{tool} failed: {}", String::from_utf8_lossy(&output.stderr));
        Some(output.stdout)
    }

    /// Checks files made by `tool` with two argument sets, concatenated, and cut in half.
    fn check_tool(format: Format, tool: &str, first_args: &[&str], second_args: &[&str]) {
        let (a, b) = (sample(300_000, 24), sample(50_000, 25));
        let Some(first) = run_tool(tool, first_args, &a) else { return };
        let Some(second) = run_tool(tool, second_args, &b) else { return };
        let data = [first, second].concat();

        assert_eq!(decode(format, &data).expect("decode"), [a, b].concat(), "{tool}");
        assert_truncated(format, decode(format, &data[..data.len() / 2]), "cut in half");
        assert_truncated(format, decode(format, &data[..data.len() - 1]), "last byte cut");
    }

    #[test]
    fn files_made_by_gzip_decode() {
        check_tool(Format::Gzip, "gzip", &["-c", "-n"], &["-c", "-9"]);
    }

    #[test]
    fn files_made_by_xz_decode() {
        check_tool(Format::Xz, "xz", &["-c", "-T2", "--block-size=65536"], &["-c", "-0", "--check=sha256"]);
    }

    #[test]
    fn files_made_by_zstd_decode() {
        check_tool(Format::Zstd, "zstd", &["-q", "-c"], &["-q", "-c", "-19", "--no-check"]);
    }
}
