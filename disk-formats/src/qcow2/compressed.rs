//! Decoding of compressed clusters: raw deflate (zlib compression type) or one zstd frame.
//!
//! The stored length of a compressed cluster is rounded up to 512-byte sectors, so the input
//! usually carries a few bytes of whatever follows the stream; both decoders stop at the end of
//! their stream and ignore them. The output must be exactly one cluster: a stream that ends
//! early is an error, and so is one that would inflate past the cluster (qemu silently cuts
//! that off; we refuse it, since the image is then corrupt or hostile).
//!
//! Each thread keeps one zlib and one zstd decoder and resets it per cluster (creating a zstd
//! context per cluster cost more than decoding small clusters). The output goes straight into
//! the caller's buffer; "more than a cluster" is observed by asking for one byte more into a
//! scratch byte, so nothing unbounded is ever produced.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress, Status};
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use super::header::CompressionType;
use crate::limits;
use crate::{Error, Result};

thread_local! {
    static ZLIB: RefCell<Option<Decompress>> = const { RefCell::new(None) };
    static ZSTD: RefCell<Option<Decoder<'static>>> = const { RefCell::new(None) };
}

/// Decodes the compressed bytes `input` of the cluster stored at `host` into exactly
/// `cluster_size` bytes.
///
/// # Errors
/// As [`decode_into`].
#[cfg(test)]
pub(crate) fn decode(kind: CompressionType, input: &[u8], cluster_size: usize, host: u64) -> Result<Vec<u8>> {
    let mut out = vec![0u8; cluster_size];
    decode_into(kind, input, &mut out, host)?;
    Ok(out)
}

/// Decodes the compressed bytes `input` of the cluster stored at `host` into all of `out`
/// (one cluster).
///
/// # Errors
/// [`crate::ErrorKind::InvalidImage`] when the stream is corrupt, ends before a full cluster or
/// would produce more than a cluster.
pub(crate) fn decode_into(kind: CompressionType, input: &[u8], out: &mut [u8], host: u64) -> Result<()> {
    let cluster_size = out.len();
    let produced = match kind {
        CompressionType::Zlib => ZLIB.with(|cell| {
            let mut slot = cell.borrow_mut();
            let z = slot.get_or_insert_with(|| Decompress::new(false));
            z.reset(false);
            inflate(z, input, out, host)
        })?,
        CompressionType::Zstd => ZSTD.with(|cell| {
            let mut slot = cell.borrow_mut();
            let decoder = match slot.as_mut() {
                Some(decoder) => decoder,
                None => slot.insert(new_zstd_decoder(host)?),
            };
            // A new frame, whatever state an earlier (failed) cluster left behind.
            decoder.reinit().map_err(|e| Error::io("resetting the zstd decoder", e))?;
            unzstd(decoder, input, out, host)
        })?,
    };
    if produced > cluster_size {
        return Err(Error::invalid(format!(
            "compressed cluster at host offset {host} inflates past the cluster size of {cluster_size} bytes"
        )));
    }
    if produced < cluster_size {
        return Err(Error::invalid(format!(
            "compressed cluster at host offset {host} decodes to {produced} bytes, expected {cluster_size}"
        )));
    }
    Ok(())
}

fn new_zstd_decoder(host: u64) -> Result<Decoder<'static>> {
    let mut decoder = Decoder::new().map_err(|e| Error::io("creating a zstd decoder", e))?;
    // Bounds the decoder's memory for hostile frame headers (kept across resets).
    decoder.set_parameter(DParameter::WindowLogMax(limits::QCOW2_ZSTD_MAX_WINDOW_LOG)).map_err(|e| {
        Error::invalid(format!("compressed cluster at host offset {host}: zstd decoder setup: {e}"))
    })?;
    Ok(decoder)
}

/// Raw deflate into `out`; returns the bytes produced, `out.len() + 1` when the stream holds
/// more than `out`.
///
/// Like qemu, a stream whose end marker lies beyond the stored bytes is accepted when it has
/// already produced the full cluster.
fn inflate(z: &mut Decompress, input: &[u8], out: &mut [u8], host: u64) -> Result<usize> {
    let mut extra = [0u8; 1];
    loop {
        let (in_pos, out_pos) = (total(z.total_in()), total(z.total_out()));
        let dst: &mut [u8] = if out_pos < out.len() { &mut out[out_pos..] } else { &mut extra };
        let status = z.decompress(&input[in_pos..], dst, FlushDecompress::Finish).map_err(|e| {
            Error::invalid(format!("compressed cluster at host offset {host} is corrupt: {e}"))
        })?;
        let produced = total(z.total_out());
        if status == Status::StreamEnd || produced > out.len() {
            return Ok(produced);
        }
        if total(z.total_in()) == in_pos && produced == out_pos {
            // No progress: the input ran out before the stream ended.
            return Ok(produced);
        }
    }
}

/// One zstd frame into `out`; returns the bytes produced, `out.len() + 1` when the frame holds
/// more than `out`.
fn unzstd(decoder: &mut Decoder<'static>, input: &[u8], out: &mut [u8], host: u64) -> Result<usize> {
    let corrupt = |e: std::io::Error| {
        Error::invalid(format!("compressed cluster at host offset {host} is corrupt: {e}"))
    };
    let truncated = |len: usize| {
        Error::invalid(format!(
            "compressed cluster at host offset {host} is truncated: the zstd frame does not end within its {len} stored bytes"
        ))
    };
    let cluster_size = out.len();
    let mut src = InBuffer::around(input);
    let mut dst = OutBuffer::around(out);
    loop {
        let (in_pos, out_pos) = (src.pos(), dst.pos());
        let remaining = decoder.run(&mut src, &mut dst).map_err(corrupt)?;
        if remaining == 0 {
            // The frame is complete (trailing bytes are left alone).
            return Ok(dst.pos());
        }
        if dst.pos() == dst.capacity() {
            break;
        }
        if src.pos() == in_pos && dst.pos() == out_pos {
            return Err(truncated(input.len()));
        }
    }
    // The cluster is full but the frame goes on: does it hold one byte more?
    let mut extra = [0u8; 1];
    let mut probe = OutBuffer::around(&mut extra[..]);
    loop {
        let in_pos = src.pos();
        let remaining = decoder.run(&mut src, &mut probe).map_err(corrupt)?;
        if probe.pos() > 0 {
            return Ok(cluster_size + 1);
        }
        if remaining == 0 {
            return Ok(cluster_size);
        }
        if src.pos() == in_pos {
            return Err(truncated(input.len()));
        }
    }
}

fn total(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ErrorKind;

    /// Raw deflate, as qemu writes compressed clusters with compression type zlib.
    pub(crate) fn deflate(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::Compress::new(flate2::Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 1024);
        let _ = z.compress_vec(data, &mut out, flate2::FlushCompress::Finish);
        out
    }

    pub(crate) fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(data, 3).unwrap_or_default()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn deflate_stream_followed_by_sector_padding_decodes_to_a_cluster() {
        let mut input = deflate(&pattern(4096));
        input.extend_from_slice(&[0xaa; 300]);
        assert_eq!(decode(CompressionType::Zlib, &input, 4096, 0).ok(), Some(pattern(4096)));
    }

    #[test]
    fn zstd_frame_followed_by_garbage_decodes_to_a_cluster() {
        let mut input = zstd(&pattern(65536));
        input.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]);
        assert_eq!(decode(CompressionType::Zstd, &input, 65536, 0).ok(), Some(pattern(65536)));
    }

    #[test]
    fn compressed_cluster_that_decodes_short_is_rejected() {
        let input = deflate(&pattern(1000));
        let err = decode(CompressionType::Zlib, &input, 4096, 7).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("compressed cluster at host offset 7 decodes to 1000 bytes, expected 4096")
        );
    }

    #[test]
    fn compressed_cluster_that_inflates_past_cluster_size_is_rejected() {
        for kind in [CompressionType::Zlib, CompressionType::Zstd] {
            let data = pattern(8192);
            let input = if kind == CompressionType::Zlib { deflate(&data) } else { zstd(&data) };
            let err = decode(kind, &input, 4096, 0).err().map(|e| e.to_string());
            assert_eq!(
                err.as_deref(),
                Some("compressed cluster at host offset 0 inflates past the cluster size of 4096 bytes")
            );
        }
    }

    #[test]
    fn corrupt_deflate_stream_is_rejected() {
        let err = decode(CompressionType::Zlib, &[0xff; 64], 4096, 0).err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidImage));
    }

    #[test]
    fn corrupt_zstd_frame_is_rejected() {
        let err = decode(CompressionType::Zstd, &[0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff], 4096, 0).err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidImage));
    }

    #[test]
    fn truncated_zstd_frame_is_rejected() {
        let input = zstd(&pattern(65536));
        let err = decode(CompressionType::Zstd, &input[..input.len() / 2], 65536, 0).err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::InvalidImage));
    }

    #[test]
    fn deflate_stream_cut_after_the_full_cluster_is_accepted_like_qemu() {
        // Stored (uncompressed) deflate blocks: the end-of-stream marker is after the data.
        let data = pattern(4096);
        let mut z = flate2::Compress::new(flate2::Compression::none(), false);
        let mut input = Vec::with_capacity(8192);
        let _ = z.compress_vec(&data, &mut input, flate2::FlushCompress::Sync);
        assert_eq!(decode(CompressionType::Zlib, &input, 4096, 0).ok(), Some(data));
    }
}
