//! Engine tests on a small dynamic VHD built in memory (footer and header checks are in
//! `footer.rs`; the qemu-img matrix is in `tests/convert_formats.rs`).

use std::sync::Arc;

use super::*;
use crate::SegmentKind;

const BLOCK: usize = 4096;

/// Footer copy (0), dynamic header (512), BAT of 4 entries (1536), block 2 at sector 4 (its
/// 512-byte bitmap, then 0x5a data), footer (end). Creator "qem2": the size is current_size.
fn build(disk_type: u32) -> Vec<u8> {
    let mut footer = vec![0u8; 512];
    footer[..8].copy_from_slice(b"conectix");
    footer[16..24].copy_from_slice(&512u64.to_be_bytes());
    footer[28..32].copy_from_slice(b"qem2");
    footer[48..56].copy_from_slice(&(4 * BLOCK as u64).to_be_bytes());
    footer[56..60].copy_from_slice(&[0, 16, 4, 17]);
    footer[60..64].copy_from_slice(&disk_type.to_be_bytes());
    let sum = footer::checksum(&footer, 64);
    footer[64..68].copy_from_slice(&sum.to_be_bytes());
    let mut f = footer.clone();
    let mut dynamic = vec![0u8; 1024];
    dynamic[..8].copy_from_slice(b"cxsparse");
    dynamic[16..24].copy_from_slice(&1536u64.to_be_bytes());
    dynamic[28..32].copy_from_slice(&4u32.to_be_bytes());
    dynamic[32..36].copy_from_slice(&(BLOCK as u32).to_be_bytes());
    f.extend_from_slice(&dynamic);
    let mut bat = vec![0xffu8; 512];
    bat[8..12].copy_from_slice(&4u32.to_be_bytes());
    f.extend_from_slice(&bat);
    f.extend_from_slice(&[0xff; 512]);
    f.extend_from_slice(&[0x5a; BLOCK]);
    f.extend_from_slice(&footer);
    f
}

fn open(bytes: Vec<u8>) -> Result<VhdImage> {
    VhdImage::open(Arc::new(bytes), &OpenOptions::default())
}

#[test]
fn dynamic_disk_maps_allocated_blocks_past_their_bitmap() {
    let image = open(build(3)).unwrap();

    assert_eq!(Image::virtual_size(&image), 4 * BLOCK as u64);
    assert_eq!(image.map(0, 1 << 20).unwrap().len, 2 * BLOCK as u64);
    assert_eq!(image.map(0, 1 << 20).unwrap().kind, SegmentKind::Unallocated);
    assert_eq!(image.map(2 * BLOCK as u64, 1 << 20).unwrap().kind, SegmentKind::Data { host: 2048 + 512 });
    let mut buf = vec![0u8; 8];
    image.read_at(&mut buf, 2 * BLOCK as u64 - 4).unwrap();
    assert_eq!(buf, [0, 0, 0, 0, 0x5a, 0x5a, 0x5a, 0x5a]);
}

#[test]
fn differencing_disk_is_denied() {
    assert_eq!(open(build(4)).unwrap_err().kind(), crate::ErrorKind::Denied);
}

#[test]
fn a_bat_too_small_for_the_disk_is_rejected() {
    let mut bytes = build(3);
    bytes[512 + 28..512 + 32].copy_from_slice(&3u32.to_be_bytes());
    assert!(open(bytes).unwrap_err().to_string().contains("block allocation table"));
}

#[test]
fn fixed_disk_is_found_by_its_footer_at_the_end() {
    let mut footer = build(3)[..512].to_vec();
    footer[60..64].copy_from_slice(&2u32.to_be_bytes());
    footer[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
    let sum = footer::checksum(&footer, 64);
    footer[64..68].copy_from_slice(&sum.to_be_bytes());
    let mut bytes = vec![7u8; 4 * BLOCK];
    bytes.extend_from_slice(&footer);
    let source: Arc<dyn ReadAt> = Arc::new(bytes);
    assert!(has_footer_at_end(&*source));
    let image = crate::open_image(source, &OpenOptions::default()).unwrap();
    assert_eq!(image.info().format, "vpc");
    assert_eq!(image.map(0, 1 << 20).unwrap().kind, SegmentKind::Data { host: 0 });
}

#[test]
fn mutated_images_never_panic() {
    let base = build(3);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..3000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut bytes = base.clone();
        let at = (state % 2048) as usize;
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
