//! Engine tests on small VMDK images built in memory (header checks are in `header.rs`; the
//! qemu-img matrix is in `tests/convert_formats.rs`).

use std::sync::Arc;

use super::*;
use crate::SegmentKind;

const GRAIN_SECTORS: u64 = 8;
const GRAIN: usize = 4096;
const GTES: u32 = 16;
/// 40 grains: three grain tables, the last one absent.
const CAPACITY_GRAINS: u64 = 40;

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A sparse extent: header (sector 0), descriptor (sector 1), GD (sector 2), GT 0 (sector 3),
/// GT 1 (sector 4), grains from sector 8. Grains 0 and 1 hold 0x11 and 0x22 (contiguous),
/// grain 5 is a zero grain, grain 20 holds 0x33. With `compressed`, every grain is a marker and
/// a zlib stream (stream-optimized).
fn build(compressed: bool) -> Vec<u8> {
    let mut f = vec![0u8; 8 * 512];
    f[..4].copy_from_slice(b"KDMV");
    put32(&mut f, 4, if compressed { 3 } else { 1 });
    let flags = 1 | (1 << 2) | if compressed { (1 << 16) | (1 << 17) } else { 0 };
    put32(&mut f, 8, flags);
    put64(&mut f, 12, CAPACITY_GRAINS * GRAIN_SECTORS);
    put64(&mut f, 20, GRAIN_SECTORS);
    put64(&mut f, 28, 1);
    put64(&mut f, 36, 1);
    put32(&mut f, 44, GTES);
    put64(&mut f, 56, 2);
    if compressed {
        f[77] = 1;
    }
    let desc =
        if compressed { "createType=\"streamOptimized\"\n" } else { "createType=\"monolithicSparse\"\n" };
    f[512..512 + desc.len()].copy_from_slice(desc.as_bytes());
    put32(&mut f, 2 * 512, 3);
    put32(&mut f, 2 * 512 + 4, 4);
    let place = |f: &mut Vec<u8>, grain: u64, byte: u8| {
        let sector = (f.len() / 512) as u32;
        if compressed {
            let mut z = flate2::Compress::new(flate2::Compression::default(), true);
            let mut out = Vec::with_capacity(2 * GRAIN);
            let _ = z.compress_vec(&[byte; GRAIN], &mut out, flate2::FlushCompress::Finish);
            let mut marker = vec![0u8; 12];
            put64(&mut marker, 0, grain * GRAIN_SECTORS);
            put32(&mut marker, 8, out.len() as u32);
            f.extend_from_slice(&marker);
            f.extend_from_slice(&out);
            f.resize(f.len().next_multiple_of(512), 0);
        } else {
            f.extend_from_slice(&[byte; GRAIN]);
        }
        let gt = if grain < u64::from(GTES) { 3 * 512 } else { 4 * 512 };
        put32(f, gt + (grain % u64::from(GTES)) as usize * 4, sector);
    };
    place(&mut f, 0, 0x11);
    place(&mut f, 1, 0x22);
    place(&mut f, 20, 0x33);
    put32(&mut f, 3 * 512 + 5 * 4, 1);
    f
}

fn open(bytes: Vec<u8>) -> Result<VmdkImage> {
    VmdkImage::open(Arc::new(bytes), &OpenOptions::default())
}

fn read(image: &VmdkImage, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xa5u8; len];
    image.read_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn sparse_extent_maps_data_zero_and_unallocated_grains() {
    let image = open(build(false)).unwrap();
    let grain = GRAIN as u64;

    assert_eq!(Image::virtual_size(&image), CAPACITY_GRAINS * grain);
    let first = image.map(0, 1 << 20).unwrap();
    assert_eq!((first.len, first.kind), (2 * grain, SegmentKind::Data { host: 8 * 512 }));
    assert_eq!(image.map(2 * grain, 1 << 20).unwrap().kind, SegmentKind::Unallocated);
    assert_eq!(
        image.map(5 * grain, 1 << 20).unwrap(),
        Segment { offset: 5 * grain, len: grain, kind: SegmentKind::Zero }
    );
    assert_eq!(image.map(32 * grain, 1 << 20).unwrap().len, 8 * grain, "absent grain table: all unallocated");
    assert_eq!(read(&image, grain - 2, 4), vec![0x11, 0x11, 0x22, 0x22]);
    assert_eq!(read(&image, 20 * grain, GRAIN), vec![0x33; GRAIN]);
    assert_eq!(read(&image, 5 * grain, 8), vec![0; 8]);
    assert_eq!(image.info().format_specific["create_type"], "monolithicSparse");
}

#[test]
fn stream_optimized_grains_are_inflated() {
    let image = open(build(true)).unwrap();
    let grain = GRAIN as u64;

    let first = image.map(0, 1 << 20).unwrap();
    assert_eq!((first.len, first.kind), (2 * grain, SegmentKind::Encoded));
    assert_eq!(read(&image, grain - 2, 4), vec![0x11, 0x11, 0x22, 0x22]);
    assert_eq!(read(&image, 20 * grain + 100, 10), vec![0x33; 10]);
    assert_eq!(image.info().compression_type.as_deref(), Some("deflate"));
}

#[test]
fn grain_table_past_end_of_file_is_rejected_at_open() {
    let mut bytes = build(false);
    put32(&mut bytes, 2 * 512 + 4, 1 << 20);
    let err = open(bytes).unwrap_err();
    assert!(err.to_string().contains("grain table"), "{err}");
    assert!(err.to_string().contains("past end of file"), "{err}");
}

#[test]
fn corrupt_compressed_grain_is_an_error_naming_it() {
    let mut bytes = build(true);
    let at = 8 * 512 + 12;
    bytes[at..at + 8].fill(0xff);
    let image = open(bytes).unwrap();
    let mut buf = vec![0u8; 16];
    let err = image.read_at(&mut buf, 0).unwrap_err();
    assert!(err.to_string().contains("compressed grain 0"), "{err}");
}

#[test]
fn descriptor_file_is_denied_naming_its_extent() {
    let text = b"# Disk DescriptorFile\nversion=1\nRW 8 FLAT \"/etc/passwd\" 0\n".to_vec();
    let err = open(text).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::Denied);
    assert!(err.to_string().contains("/etc/passwd"), "{err}");
}

#[test]
fn parent_hint_in_the_embedded_descriptor_is_denied() {
    let mut bytes = build(false);
    let hint = b"parentFileNameHint=\"base.vmdk\"\n";
    // Right after the createType line: qemu reads the descriptor up to its first NUL byte.
    let end = 512 + bytes[512..].iter().position(|&b| b == 0).unwrap();
    bytes[end..end + hint.len()].copy_from_slice(hint);
    assert_eq!(open(bytes).unwrap_err().kind(), crate::ErrorKind::Denied);
}

/// Every image from single-byte corruptions of the metadata opens or fails cleanly, and every
/// map / read of an opened one stays within the contract (no panic, no read outside the file).
#[test]
fn mutated_images_never_panic() {
    for compressed in [false, true] {
        let base = build(compressed);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = base.clone();
            let at = (state % (8 * 512 + 64) as u64) as usize % bytes.len();
            bytes[at] = (state >> 32) as u8;
            let Ok(image) = open(bytes) else { continue };
            let mut offset = 0;
            while offset < Image::virtual_size(&image) {
                let Ok(seg) = image.map(offset, 1 << 20) else { break };
                let mut buf = vec![0u8; seg.len.min(8192) as usize];
                let _ = image.read_at(&mut buf, offset);
                offset += seg.len;
            }
        }
    }
}
