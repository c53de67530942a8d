//! The two sides of the clone stream over any byte transport (socket pair, TCP, TLS): the
//! source sends its extents as frames ([`crate::wire`]), the target writes them into a
//! [`Volume`]. Both hash every frame as it passes (frame header, and the content of DATA
//! frames), so the END frame's sha256 checks the whole transfer, holes included (a HOLE frame's
//! offset and length are hashed), without hashing gigabytes of hole zeros. Memory: one buffer
//! of at most 4 MiB per side (256 KiB without zero detection); the target starts writeback every [`WRITEBACK_BYTES`] so that the
//! final flush does not write the whole clone at once.

use std::io::{self, Read, Write};

use disk_formats::WriteAt;
use sha2::{Digest, Sha256};
use storage::Volume;

use crate::error::{Error, Result};
use crate::local::zero_runs;
use crate::source::SourceVolume;
use crate::wire::{self, FrameHeader, FrameKind, Header};

/// Bytes of DATA written between two calls to start their writeback on the target.
pub(crate) const WRITEBACK_BYTES: u64 = 64 << 20;

/// Bytes of a DATA frame read, hashed and written at a time: small enough to stay in the CPU
/// cache between the three passes over them.
const PIECE: usize = 256 << 10;

/// Hashes a frame header into the stream digest.
fn hash_frame(hasher: &mut Sha256, frame: &FrameHeader) {
    hasher.update(frame.encode());
}

/// What the source sent.
#[derive(Debug)]
pub(crate) struct Sent {
    /// Bytes in DATA frames.
    pub(crate) data_bytes: u64,
}

/// What the target received and wrote.
#[derive(Debug)]
pub(crate) struct Received {
    /// Bytes of DATA frames written.
    pub(crate) data_bytes: u64,
}

fn send_err(e: io::Error) -> Error {
    Error::network("sending the clone stream to the target", e)
}

fn recv_err(e: io::Error, position: u64) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Error::network(
            format!("the source closed the connection at offset {position}, before the end of the stream"),
            e,
        )
    } else {
        Error::network(format!("receiving the clone stream at offset {position}"), e)
    }
}

pub(crate) fn write_header(out: &mut impl Write, header: &Header) -> Result<()> {
    out.write_all(&header.encode()).map_err(send_err)
}

pub(crate) fn flush(out: &mut impl Write) -> Result<()> {
    out.flush().map_err(send_err)
}

/// Sends every extent of `source` as DATA / HOLE frames, then END. With `detect_zeroes`,
/// all-zero blocks inside data extents are sent as holes.
pub(crate) fn send_frames(source: &SourceVolume, out: &mut impl Write, detect_zeroes: bool) -> Result<Sent> {
    let mut hasher = Sha256::new();
    // Zero detection looks at whole frames; without it a piece is enough.
    let mut buf = vec![0u8; if detect_zeroes { wire::MAX_DATA_FRAME as usize } else { PIECE }];
    let mut data_bytes = 0;
    let mut pos = 0;
    let send_hole = |hasher: &mut Sha256, out: &mut dyn Write, offset: u64, len: u64| -> Result<()> {
        if len > 0 {
            let frame = FrameHeader { kind: FrameKind::Hole, offset, len };
            hash_frame(hasher, &frame);
            out.write_all(&frame.encode()).map_err(send_err)?;
        }
        Ok(())
    };
    for extent in source.extents() {
        let (start, len) = extent?;
        send_hole(&mut hasher, out, pos, start - pos)?;
        let end = start + len;
        let mut at = start;
        while at < end {
            let n = (end - at).min(wire::MAX_DATA_FRAME) as usize;
            if !detect_zeroes {
                // One DATA frame, read, hashed and sent a piece at a time (cache-sized).
                let frame = FrameHeader { kind: FrameKind::Data, offset: at, len: n as u64 };
                hash_frame(&mut hasher, &frame);
                out.write_all(&frame.encode()).map_err(send_err)?;
                for piece_at in (at..at + n as u64).step_by(PIECE) {
                    let piece = &mut buf[..(at + n as u64 - piece_at).min(PIECE as u64) as usize];
                    source.read_exact_at(piece, piece_at)?;
                    hasher.update(&*piece);
                    out.write_all(piece).map_err(send_err)?;
                }
                data_bytes += n as u64;
                at += n as u64;
                continue;
            }
            let chunk = &mut buf[..n];
            source.read_exact_at(chunk, at)?;
            for (run_start, run_len, zero) in zero_runs(chunk) {
                let offset = at + run_start as u64;
                if zero {
                    send_hole(&mut hasher, out, offset, run_len as u64)?;
                    continue;
                }
                let data = &chunk[run_start..run_start + run_len];
                let frame = FrameHeader { kind: FrameKind::Data, offset, len: run_len as u64 };
                hash_frame(&mut hasher, &frame);
                hasher.update(data);
                out.write_all(&frame.encode()).map_err(send_err)?;
                out.write_all(data).map_err(send_err)?;
                data_bytes += run_len as u64;
            }
            at += n as u64;
        }
        pos = end;
    }
    send_hole(&mut hasher, out, pos, source.size - pos)?;
    let digest: [u8; 32] = hasher.finalize().into();
    let end = FrameHeader { kind: FrameKind::End, offset: source.size, len: wire::DIGEST_LEN as u64 };
    out.write_all(&end.encode()).map_err(send_err)?;
    out.write_all(&digest).map_err(send_err)?;
    Ok(Sent { data_bytes })
}

pub(crate) fn read_header(input: &mut impl Read) -> Result<Header> {
    let mut bytes = [0u8; wire::HEADER_LEN];
    input.read_exact(&mut bytes).map_err(|e| recv_err(e, 0))?;
    Header::decode(&bytes)
}

/// Receives frames up to END into `volume` (created with at least `header.size` bytes) and
/// checks the sha256.
///
/// # Errors
/// [`Error::Protocol`] for a malformed or out-of-order frame, [`Error::Checksum`] when the
/// digest differs, [`Error::Network`] when the stream stops early.
pub(crate) fn receive_frames(input: &mut impl Read, header: &Header, volume: &Volume) -> Result<Received> {
    let dst = volume.path();
    let mut hasher = Sha256::new();
    let mut buf = Vec::new();
    let mut data_bytes = 0;
    let mut position = 0;
    // Start of the written range whose writeback has not been started yet.
    let mut unflushed = 0;
    loop {
        let mut bytes = [0u8; wire::FRAME_HEADER_LEN];
        input.read_exact(&mut bytes).map_err(|e| recv_err(e, position))?;
        let frame = FrameHeader::decode(&bytes, position, header.size)?;
        match frame.kind {
            FrameKind::Data => {
                // Read, hashed and written a piece at a time (cache-sized).
                if buf.is_empty() {
                    buf = vec![0u8; PIECE];
                }
                hash_frame(&mut hasher, &frame);
                let end = frame.offset + frame.len;
                for at in (frame.offset..end).step_by(PIECE) {
                    let piece = &mut buf[..(end - at).min(PIECE as u64) as usize];
                    input.read_exact(piece).map_err(|e| recv_err(e, position))?;
                    hasher.update(&*piece);
                    volume.write_all_at(piece, at).map_err(|e| {
                        Error::io(dst, format!("writing {} bytes at offset {at}", piece.len()), e)
                    })?;
                }
                data_bytes += frame.len;
                if end - unflushed >= WRITEBACK_BYTES {
                    volume.start_writeback(unflushed, end - unflushed);
                    unflushed = end;
                }
            }
            FrameKind::Hole => {
                hash_frame(&mut hasher, &frame);
                volume.write_zeroes(frame.offset, frame.len).map_err(|e| {
                    Error::io(dst, format!("zeroing {} bytes at offset {}", frame.len, frame.offset), e)
                })?;
            }
            FrameKind::End => {
                let mut expected = [0u8; wire::DIGEST_LEN];
                input.read_exact(&mut expected).map_err(|e| recv_err(e, position))?;
                let actual: [u8; 32] = hasher.finalize().into();
                if actual != expected {
                    return Err(Error::Checksum {
                        expected: wire::hex(&expected),
                        actual: wire::hex(&actual),
                    });
                }
                return Ok(Received { data_bytes });
            }
        }
        position += frame.len;
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    use storage::CreateOptions;

    use super::*;

    const MIB: u64 = 1 << 20;

    /// The encoded stream of a 16 MiB source with data at 1 MiB (1 MiB) and 9 MiB (5 MiB).
    fn encoded(dir: &std::path::Path) -> (Header, Vec<u8>) {
        let path = dir.join("src");
        let file = File::create(&path).expect("create");
        file.set_len(16 * MIB).expect("set_len");
        for (offset, len) in [(MIB, MIB), (9 * MIB, 5 * MIB)] {
            let data: Vec<u8> = (0..len).map(|i| ((offset + i) % 251) as u8 | 1).collect();
            file.write_all_at(&data, offset).expect("write");
        }
        let source = SourceVolume::open(&path).expect("open");
        let header = Header { size: source.size, allocated: 0 };
        let mut bytes = Vec::new();
        send_frames(&source, &mut bytes, false).expect("send");
        (header, bytes)
    }

    fn receive(dir: &std::path::Path, header: &Header, bytes: &[u8]) -> Result<Received> {
        let path = dir.join("dst");
        let volume = Volume::create(&path, Some(header.size), header.size, &CreateOptions::default())
            .expect("create target");
        receive_frames(&mut &bytes[..], header, &volume)
    }

    #[test]
    fn an_intact_stream_is_received_and_matches_the_source() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (header, bytes) = encoded(dir.path());

        let received = receive(dir.path(), &header, &bytes).expect("receive");

        assert_eq!(received.data_bytes, 6 * MIB);
        assert_eq!(
            std::fs::read(dir.path().join("dst")).expect("dst"),
            std::fs::read(dir.path().join("src")).expect("src")
        );
    }

    #[test]
    fn a_garbled_data_byte_fails_the_stream_digest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (header, mut bytes) = encoded(dir.path());
        // Past the first HOLE and DATA headers, inside the first DATA frame's content.
        bytes[2 * wire::FRAME_HEADER_LEN + 1000] ^= 0x40;

        let err = receive(dir.path(), &header, &bytes).expect_err("garbled");

        assert!(matches!(err, Error::Checksum { .. }), "{err}");
    }
}
