//! Engine tests on a small VDI built in memory (header checks are in `header.rs`; the qemu-img
//! matrix is in `tests/convert_formats.rs`).

use std::sync::Arc;

use super::*;
use crate::SegmentKind;

const MIB: usize = 1 << 20;

/// 3 blocks (3 MiB): block map at 512 = [1, unallocated, 0, discarded], data at 1024: block 0 of
/// the data area holds 0x22 (guest block 2), block 1 holds 0x11 (guest block 0).
fn build() -> Vec<u8> {
    let mut f = vec![0u8; 1024];
    f[0x40..0x44].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
    f[0x44..0x48].copy_from_slice(&0x0001_0001u32.to_le_bytes());
    f[0x48..0x4c].copy_from_slice(&0x190u32.to_le_bytes());
    f[0x4c..0x50].copy_from_slice(&1u32.to_le_bytes());
    f[0x154..0x158].copy_from_slice(&512u32.to_le_bytes());
    f[0x158..0x15c].copy_from_slice(&1024u32.to_le_bytes());
    f[0x168..0x16c].copy_from_slice(&512u32.to_le_bytes());
    f[0x170..0x178].copy_from_slice(&(3 * MIB as u64).to_le_bytes());
    f[0x178..0x17c].copy_from_slice(&(MIB as u32).to_le_bytes());
    f[0x180..0x184].copy_from_slice(&4u32.to_le_bytes());
    for (i, entry) in [1u32, 0xffff_ffff, 0, 0xffff_fffe].into_iter().enumerate() {
        f[512 + 4 * i..516 + 4 * i].copy_from_slice(&entry.to_le_bytes());
    }
    f.extend_from_slice(&vec![0x22; MIB]);
    f.extend_from_slice(&vec![0x11; MIB]);
    f
}

fn open(bytes: Vec<u8>) -> Result<VdiImage> {
    VdiImage::open(Arc::new(bytes), &OpenOptions::default())
}

#[test]
fn block_map_entries_place_blocks_anywhere_in_the_data_area() {
    let image = open(build()).unwrap();
    let mib = MIB as u64;

    assert_eq!(Image::virtual_size(&image), 3 * mib);
    assert_eq!(
        image.map(0, 4 * mib).unwrap(),
        Segment { offset: 0, len: mib, kind: SegmentKind::Data { host: 1024 + mib } }
    );
    assert_eq!(image.map(mib, 4 * mib).unwrap().kind, SegmentKind::Unallocated);
    assert_eq!(image.map(2 * mib, mib).unwrap().kind, SegmentKind::Data { host: 1024 });
    let mut buf = vec![0u8; 2];
    image.read_at(&mut buf, 2 * mib - 1).unwrap();
    assert_eq!(buf, [0, 0x22]);
}

#[test]
fn a_block_past_end_of_file_is_an_error() {
    let mut bytes = build();
    bytes[520..524].copy_from_slice(&9u32.to_le_bytes());
    let image = open(bytes).unwrap();
    assert!(image.map(2 * MIB as u64, 1).unwrap_err().to_string().contains("past end of file"));
}

#[test]
fn mutated_headers_never_panic() {
    let base = build();
    let mut state = 0xd1b5_4a32_d192_ed03u64;
    for _ in 0..500 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut bytes = base.clone();
        let at = (state % 1024) as usize;
        bytes[at] = (state >> 32) as u8;
        let Ok(image) = open(bytes) else { continue };
        let mut offset = 0;
        while offset < Image::virtual_size(&image) {
            let Ok(seg) = image.map(offset, 1 << 30) else { break };
            let mut buf = vec![0u8; seg.len.min(4096) as usize];
            let _ = image.read_at(&mut buf, offset);
            offset += seg.len;
        }
    }
}
