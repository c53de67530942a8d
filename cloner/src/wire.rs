//! The clone stream's bytes: header and frame headers, encoded and decoded from byte slices
//! (no I/O here, so tests and fuzzers need no sockets).
//!
//! ```text
//! header (28 bytes):  magic "DPCLONE\0" | version u16 | reserved u16 (0) | size u64 | allocated u64
//! frame header (17):  kind u8 | offset u64 | len u64          (all integers big-endian)
//!   DATA (1): `len` (1..=MAX_DATA_FRAME) bytes of content follow
//!   HOLE (2): `len` bytes of zeros, nothing follows
//!   END  (3): offset = size, len = 16, the stream digest follows
//! ```
//! Frames cover the volume in order, each starting where the previous one ended; END comes
//! exactly at `size`. The stream digest ([`StreamDigest`]) is the XXH3-128 of every DATA and
//! HOLE frame in order (its 17 header bytes, then a DATA frame's content), as 16 big-endian
//! bytes: it covers every logical byte (a hole by its offset and length, not by hashing its
//! zeros), so a target that drops, misplaces or garbles a frame, or reads back what a disk or
//! memory garbled, fails even when the transport did not notice.
//!
//! ## Why not a cryptographic hash
//! The digest guards against accidents (a read or write error, a bug), not an attacker: over
//! the network TLS (AES-GCM) already authenticates every record, and the source is trusted by
//! the target's CA. XXH3-128 hashes at ~8 GB/s on one core of the bench machine where sha256
//! managed ~0.2–1.8 GB/s, and sha256 on both sides was the largest share of the stream's CPU
//! time. A 128-bit non-cryptographic hash misses a random corruption with probability 2^-128.
//!
//! ## Versions
//! 1 hashed the logical content with sha256, zeros of holes included; 2 hashed the frames
//! with sha256 (32-byte END); 3 (this one) hashes the frames with XXH3-128 (16-byte END).

use crate::error::{Error, Result};

/// First bytes of a clone stream.
pub const MAGIC: [u8; 8] = *b"DPCLONE\0";
/// The one version spoken.
pub const VERSION: u16 = 3;
/// Bytes of the header.
pub const HEADER_LEN: usize = 28;
/// Bytes of a frame header.
pub const FRAME_HEADER_LEN: usize = 17;
/// Largest DATA payload: bounds the memory of both sides (one buffer each).
pub const MAX_DATA_FRAME: u64 = 4 << 20;
/// Bytes of the END frame's payload (an XXH3-128).
pub const DIGEST_LEN: usize = 16;

/// What the stream is about: the source volume's size and allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Logical size of the source in bytes.
    pub size: u64,
    /// Bytes the source has allocated (its size for a block device).
    pub allocated: u64,
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&VERSION.to_be_bytes());
        out[12..20].copy_from_slice(&self.size.to_be_bytes());
        out[20..28].copy_from_slice(&self.allocated.to_be_bytes());
        out
    }

    /// Parses a header.
    ///
    /// # Errors
    /// [`Error::Protocol`] for a wrong magic, another version or non-zero reserved bits.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self> {
        if bytes[..8] != MAGIC {
            return Err(Error::Protocol("not a diskplane clone stream (bad magic)".into()));
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != VERSION {
            return Err(Error::Protocol(format!("stream version {version}, this side speaks {VERSION}")));
        }
        if bytes[10..12] != [0, 0] {
            return Err(Error::Protocol("reserved header bits are set".into()));
        }
        Ok(Self { size: be64(&bytes[12..20]), allocated: be64(&bytes[20..28]) })
    }
}

/// A frame's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Content bytes follow.
    Data,
    /// A run of zeros; nothing follows.
    Hole,
    /// The end: the stream digest ([`StreamDigest`] of the frames) follows.
    End,
}

/// A frame header: what the next `len` logical bytes at `offset` are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The kind.
    pub kind: FrameKind,
    /// Where in the volume (END: the volume's size).
    pub offset: u64,
    /// How many bytes (END: the digest's length).
    pub len: u64,
}

impl FrameHeader {
    /// The frame header's bytes.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[0] = match self.kind {
            FrameKind::Data => 1,
            FrameKind::Hole => 2,
            FrameKind::End => 3,
        };
        out[1..9].copy_from_slice(&self.offset.to_be_bytes());
        out[9..17].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Parses a frame header and checks it against the stream so far: it must start at
    /// `position` and stay inside a volume of `size` bytes.
    ///
    /// # Errors
    /// [`Error::Protocol`] naming the broken rule.
    pub fn decode(bytes: &[u8; FRAME_HEADER_LEN], position: u64, size: u64) -> Result<Self> {
        let kind = match bytes[0] {
            1 => FrameKind::Data,
            2 => FrameKind::Hole,
            3 => FrameKind::End,
            other => return Err(Error::Protocol(format!("unknown frame kind {other} at offset {position}"))),
        };
        let offset = be64(&bytes[1..9]);
        let len = be64(&bytes[9..17]);
        if offset != position {
            return Err(Error::Protocol(format!(
                "frame at offset {offset} where offset {position} was expected (frames must be in order)"
            )));
        }
        match kind {
            FrameKind::End if offset != size => {
                return Err(Error::Protocol(format!(
                    "stream ends at offset {offset}, the volume has {size} bytes"
                )));
            }
            FrameKind::End if len != DIGEST_LEN as u64 => {
                return Err(Error::Protocol(format!(
                    "END frame carries {len} bytes instead of a {DIGEST_LEN}-byte digest"
                )));
            }
            FrameKind::End => {}
            FrameKind::Data | FrameKind::Hole => {
                if len == 0 {
                    return Err(Error::Protocol(format!("empty frame at offset {offset}")));
                }
                if kind == FrameKind::Data && len > MAX_DATA_FRAME {
                    return Err(Error::Protocol(format!(
                        "DATA frame of {len} bytes at offset {offset} exceeds the limit of {MAX_DATA_FRAME}"
                    )));
                }
                match offset.checked_add(len) {
                    Some(end) if end <= size => {}
                    _ => {
                        return Err(Error::Protocol(format!(
                            "frame of {len} bytes at offset {offset} runs past the volume's {size} bytes"
                        )));
                    }
                }
            }
        }
        Ok(Self { kind, offset, len })
    }
}

/// The running digest of a stream's frames (XXH3-128), fed in stream order by both sides.
pub struct StreamDigest(xxhash_rust::xxh3::Xxh3);

impl StreamDigest {
    /// An empty digest.
    pub fn new() -> Self {
        Self(xxhash_rust::xxh3::Xxh3::new())
    }

    /// Adds a DATA or HOLE frame's header.
    pub fn frame(&mut self, frame: &FrameHeader) {
        self.0.update(&frame.encode());
    }

    /// Adds content bytes of the current DATA frame (in any number of pieces).
    pub fn data(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The END frame's payload.
    pub fn finish(&self) -> [u8; DIGEST_LEN] {
        self.0.digest128().to_be_bytes()
    }
}

impl Default for StreamDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for StreamDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamDigest")
    }
}

fn be64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(bytes);
    u64::from_be_bytes(array)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn header_round_trips() {
        let header = Header { size: 10 << 30, allocated: 4 << 30 };

        assert_eq!(Header::decode(&header.encode()).expect("decode"), header);
    }

    #[test]
    fn header_bytes_are_as_documented() {
        let bytes = Header { size: 0x0102, allocated: 0x03 }.encode();

        #[rustfmt::skip]
        let expected: [u8; HEADER_LEN] = [
            b'D', b'P', b'C', b'L', b'O', b'N', b'E', 0, // magic
            0, 3,                                        // version
            0, 0,                                        // reserved
            0, 0, 0, 0, 0, 0, 1, 2,                      // size
            0, 0, 0, 0, 0, 0, 0, 3,                      // allocated
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn header_with_bad_magic_or_version_is_rejected() {
        let mut bad_magic = Header { size: 1, allocated: 0 }.encode();
        bad_magic[0] = b'X';
        let mut bad_version = Header { size: 1, allocated: 0 }.encode();
        bad_version[9] = 2;

        assert!(Header::decode(&bad_magic).expect_err("magic").to_string().contains("bad magic"));
        assert!(Header::decode(&bad_version).expect_err("version").to_string().contains("version 2"));
    }

    #[test]
    fn frame_header_round_trips() {
        let frame = FrameHeader { kind: FrameKind::Data, offset: MIB, len: 4096 };

        assert_eq!(FrameHeader::decode(&frame.encode(), MIB, 2 * MIB).expect("decode"), frame);
    }

    #[test]
    fn out_of_order_frame_is_rejected() {
        let frame = FrameHeader { kind: FrameKind::Hole, offset: 0, len: 4096 }.encode();

        let err = FrameHeader::decode(&frame, 4096, MIB).expect_err("out of order");

        assert!(err.to_string().contains("must be in order"), "{err}");
        assert_eq!(err.kind(), disk_formats::ErrorKind::InvalidImage);
    }

    #[test]
    fn oversized_data_frame_is_rejected() {
        let frame = FrameHeader { kind: FrameKind::Data, offset: 0, len: MAX_DATA_FRAME + 1 }.encode();

        let err = FrameHeader::decode(&frame, 0, 1 << 30).expect_err("too big");

        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn frame_past_the_end_or_overflowing_is_rejected() {
        let past = FrameHeader { kind: FrameKind::Hole, offset: 0, len: MIB + 1 }.encode();
        let overflow = FrameHeader { kind: FrameKind::Hole, offset: 4096, len: u64::MAX }.encode();

        assert!(FrameHeader::decode(&past, 0, MIB).is_err());
        assert!(FrameHeader::decode(&overflow, 4096, MIB).is_err());
    }

    #[test]
    fn end_frame_must_come_at_the_end() {
        let early = FrameHeader { kind: FrameKind::End, offset: 0, len: 16 }.encode();
        let at_end = FrameHeader { kind: FrameKind::End, offset: MIB, len: 16 }.encode();
        let sha256_sized = FrameHeader { kind: FrameKind::End, offset: MIB, len: 32 }.encode();

        assert!(FrameHeader::decode(&early, 0, MIB).is_err());
        assert_eq!(FrameHeader::decode(&at_end, MIB, MIB).expect("end").kind, FrameKind::End);
        let err = FrameHeader::decode(&sha256_sized, MIB, MIB).expect_err("v2 END");
        assert!(err.to_string().contains("instead of a 16-byte digest"), "{err}");
    }

    #[test]
    fn digest_depends_on_order_placement_and_content() {
        let data = FrameHeader { kind: FrameKind::Data, offset: 0, len: 3 };
        let hole = FrameHeader { kind: FrameKind::Hole, offset: 3, len: 5 };
        let moved_hole = FrameHeader { kind: FrameKind::Hole, offset: 3, len: 6 };
        let digest = |frames: &[(&FrameHeader, &[u8])]| {
            let mut d = StreamDigest::new();
            for (frame, bytes) in frames {
                d.frame(frame);
                d.data(bytes);
            }
            d.finish()
        };

        let reference = digest(&[(&data, b"abc"), (&hole, b"")]);
        let split = {
            let mut d = StreamDigest::new();
            d.frame(&data);
            d.data(b"a");
            d.data(b"bc");
            d.frame(&hole);
            d.finish()
        };

        assert_eq!(split, reference, "pieces hash like the whole");
        assert_ne!(digest(&[(&data, b"abd"), (&hole, b"")]), reference);
        assert_ne!(digest(&[(&data, b"abc"), (&moved_hole, b"")]), reference);
        assert_ne!(digest(&[(&hole, b""), (&data, b"abc")]), reference);
        assert_ne!(StreamDigest::new().finish(), reference);
    }

    #[test]
    fn unknown_frame_kind_is_rejected() {
        let mut frame = FrameHeader { kind: FrameKind::Data, offset: 0, len: 1 }.encode();
        frame[0] = 9;

        assert!(FrameHeader::decode(&frame, 0, MIB).expect_err("kind").to_string().contains("kind 9"));
    }
}
