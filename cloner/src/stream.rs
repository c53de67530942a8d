//! The two sides of the clone stream over any byte transport (socket pair, TCP, TLS): the
//! source sends its extents as frames ([`crate::wire`]), the target writes them into a
//! [`Volume`]. Both hash the logical content as it passes, so the END frame's sha256 checks
//! the whole transfer, holes included. Memory: one buffer of at most 4 MiB per side.

use std::io::{self, Read, Write};

use disk_formats::WriteAt;
use sha2::{Digest, Sha256};
use storage::Volume;

use crate::error::{Error, Result};
use crate::local::zero_runs;
use crate::source::{SourceVolume, hash_zeros};
use crate::wire::{self, FrameHeader, FrameKind, Header};

/// What the source sent.
#[derive(Debug)]
pub(crate) struct Sent {
    /// Bytes in DATA frames.
    pub(crate) data_bytes: u64,
    /// The sha256 sent in the END frame.
    pub(crate) digest: [u8; 32],
}

/// What the target received and wrote.
#[derive(Debug)]
pub(crate) struct Received {
    /// Bytes of DATA frames written.
    pub(crate) data_bytes: u64,
    /// The sha256 of what arrived (equal to the source's, or the transfer failed).
    pub(crate) digest: [u8; 32],
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
    let mut buf = vec![0u8; wire::MAX_DATA_FRAME as usize];
    let mut data_bytes = 0;
    let mut pos = 0;
    let send_hole = |hasher: &mut Sha256, out: &mut dyn Write, offset: u64, len: u64| -> Result<()> {
        if len > 0 {
            hash_zeros(hasher, len);
            out.write_all(&FrameHeader { kind: FrameKind::Hole, offset, len }.encode()).map_err(send_err)?;
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
            let chunk = &mut buf[..n];
            source.read_exact_at(chunk, at)?;
            let runs = if detect_zeroes { zero_runs(chunk) } else { vec![(0, n, false)] };
            for (run_start, run_len, zero) in runs {
                let offset = at + run_start as u64;
                if zero {
                    send_hole(&mut hasher, out, offset, run_len as u64)?;
                    continue;
                }
                let data = &chunk[run_start..run_start + run_len];
                hasher.update(data);
                let frame = FrameHeader { kind: FrameKind::Data, offset, len: run_len as u64 };
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
    Ok(Sent { data_bytes, digest })
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
    loop {
        let mut bytes = [0u8; wire::FRAME_HEADER_LEN];
        input.read_exact(&mut bytes).map_err(|e| recv_err(e, position))?;
        let frame = FrameHeader::decode(&bytes, position, header.size)?;
        match frame.kind {
            FrameKind::Data => {
                // At most MAX_DATA_FRAME (checked by decode).
                let n = frame.len as usize;
                if buf.len() < n {
                    buf.resize(n, 0);
                }
                let data = &mut buf[..n];
                input.read_exact(data).map_err(|e| recv_err(e, position))?;
                hasher.update(&*data);
                volume.write_all_at(data, frame.offset).map_err(|e| {
                    Error::io(dst, format!("writing {n} bytes at offset {}", frame.offset), e)
                })?;
                data_bytes += frame.len;
            }
            FrameKind::Hole => {
                hash_zeros(&mut hasher, frame.len);
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
                return Ok(Received { data_bytes, digest: actual });
            }
        }
        position += frame.len;
    }
}
