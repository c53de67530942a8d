//! Engine tests on images built in memory: one behaviour per test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Qcow2Image;
use super::builder::{Builder, COMPRESSED, COPIED, ZERO, at, set_u32, set_u64};
use super::compressed::tests::{deflate, zstd};
use crate::image::{Image, Segment, SegmentKind, SnapshotInfo};
use crate::{ErrorKind, OpenOptions, Result};

const K64: u32 = 16;
const CS: u64 = 1 << K64;

fn open(img: Vec<u8>) -> Result<Qcow2Image> {
    Qcow2Image::open(Arc::new(img), &OpenOptions::default())
}

fn open_err(img: Vec<u8>) -> (ErrorKind, String) {
    match open(img) {
        Ok(_) => panic!("image opened but should have been refused"),
        Err(e) => (e.kind(), e.to_string()),
    }
}

fn read_all(image: &Qcow2Image) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; image.virtual_size() as usize];
    image.read_at(&mut buf, 0)?;
    Ok(buf)
}

fn read_err(image: &Qcow2Image) -> (ErrorKind, String) {
    match read_all(image) {
        Ok(_) => panic!("image read but should have been refused"),
        Err(e) => (e.kind(), e.to_string()),
    }
}

fn segments(image: &Qcow2Image, max_len: u64) -> Result<Vec<Segment>> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < image.virtual_size() {
        let seg = image.map(offset, max_len)?;
        assert_eq!(seg.offset, offset);
        assert!(seg.len > 0 && seg.len <= max_len && offset + seg.len <= image.virtual_size());
        offset += seg.len;
        out.push(seg);
    }
    Ok(out)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

// ---- reading ----

#[test]
fn empty_image_reads_as_zeros_and_maps_as_one_unallocated_segment() {
    let image = open(Builder::new(K64, 10 << 20).build()).expect("open");
    assert_eq!(read_all(&image).ok(), Some(vec![0; 10 << 20]));
    let segs = segments(&image, u64::MAX).expect("map");
    assert_eq!(segs, vec![Segment { offset: 0, len: 10 << 20, kind: SegmentKind::Unallocated }]);
}

#[test]
fn data_clusters_read_back_across_cluster_boundaries() {
    let mut b = Builder::new(K64, 4 * CS);
    b.data(1, 0x11);
    b.data(2, 0x22);
    let image = open(b.build()).expect("open");
    let mut buf = vec![0u8; 100];
    image.read_at(&mut buf, 2 * CS - 50).expect("read");
    assert_eq!(&buf[..50], &[0x11; 50][..]);
    assert_eq!(&buf[50..], &[0x22; 50][..]);
}

#[test]
fn version_2_image_reads_data() {
    let mut b = Builder::new(K64, 2 * CS).v2();
    b.data(0, 0x5a);
    let image = open(b.build()).expect("open");
    assert_eq!(image.info().version, Some(2));
    assert_eq!(&read_all(&image).expect("read")[..CS as usize], &vec![0x5a; CS as usize][..]);
}

#[test]
fn map_coalesces_clusters_contiguous_on_the_host_into_one_data_segment() {
    let mut b = Builder::new(K64, 4 * CS);
    b.entry(0, 0, 0);
    let host = b.data(0, 1);
    b.data(1, 2);
    b.data(2, 3);
    let image = open(b.build()).expect("open");
    let segs = segments(&image, u64::MAX).expect("map");
    assert_eq!(segs[0], Segment { offset: 0, len: 3 * CS, kind: SegmentKind::Data { host } });
    assert_eq!(segs[1].kind, SegmentKind::Unallocated);
}

#[test]
fn map_splits_data_that_is_not_contiguous_on_the_host() {
    let mut b = Builder::new(K64, 2 * CS);
    let first = b.data(1, 1);
    let second = b.data(0, 2);
    let image = open(b.build()).expect("open");
    let segs = segments(&image, u64::MAX).expect("map");
    assert_eq!(
        segs,
        vec![
            Segment { offset: 0, len: CS, kind: SegmentKind::Data { host: second } },
            Segment { offset: CS, len: CS, kind: SegmentKind::Data { host: first } },
        ]
    );
}

#[test]
fn map_respects_max_len_and_offsets_inside_a_cluster() {
    let mut b = Builder::new(K64, 2 * CS);
    let host = b.data(0, 1);
    let image = open(b.build()).expect("open");
    let seg = image.map(100, 1000).expect("map");
    assert_eq!(seg, Segment { offset: 100, len: 1000, kind: SegmentKind::Data { host: host + 100 } });
}

#[test]
fn map_past_the_virtual_size_is_an_error() {
    let image = open(Builder::new(K64, CS).build()).expect("open");
    assert!(image.map(CS, 1).is_err());
    let mut buf = [0u8; 2];
    assert!(image.read_at(&mut buf, CS - 1).is_err());
}

#[test]
fn zero_clusters_read_as_zeros_and_map_as_zero() {
    let mut b = Builder::new(K64, 3 * CS);
    b.entry(0, ZERO, 0);
    let prealloc = b.alloc(&vec![0xee; CS as usize]);
    b.entry(1, COPIED | prealloc | ZERO, 0);
    let image = open(b.build()).expect("open");
    assert_eq!(read_all(&image).ok(), Some(vec![0; 3 * CS as usize]));
    assert_eq!(
        image.map(0, u64::MAX).ok(),
        Some(Segment { offset: 0, len: 2 * CS, kind: SegmentKind::Zero })
    );
}

#[test]
fn last_cluster_past_the_virtual_size_is_read_only_up_to_it() {
    let mut b = Builder::new(K64, CS + 4096);
    b.data(1, 0x77);
    let mut img = b.build();
    // The file ends right after the guest-visible part of the last cluster.
    img.truncate(img.len() - (CS as usize - 4096));
    let image = open(img).expect("open");
    let data = read_all(&image).expect("read");
    assert_eq!(data.len() as u64, CS + 4096);
    assert_eq!(&data[CS as usize..], &[0x77; 4096][..]);
}

#[test]
fn virtual_size_is_rounded_down_to_whole_sectors_like_qemu() {
    let image = open(Builder::new(K64, 1000).build()).expect("open");
    assert_eq!(image.virtual_size(), 512);
}

#[test]
fn zlib_compressed_clusters_decode_and_map_as_one_encoded_segment() {
    let mut b = Builder::new(12, 3 * 4096);
    b.entry(0, 0, 0);
    b.compressed(0, &deflate(&pattern(4096, 1)));
    b.compressed(1, &deflate(&pattern(4096, 2)));
    let image = open(b.build()).expect("open");
    let data = read_all(&image).expect("read");
    assert_eq!(&data[..4096], &pattern(4096, 1)[..]);
    assert_eq!(&data[4096..8192], &pattern(4096, 2)[..]);
    assert_eq!(
        image.map(0, u64::MAX).ok(),
        Some(Segment { offset: 0, len: 8192, kind: SegmentKind::Encoded })
    );
}

#[test]
fn zstd_compressed_cluster_decodes() {
    let mut b = Builder::new(K64, CS).zstd();
    b.compressed(0, &zstd(&pattern(CS as usize, 9)));
    let image = open(b.build()).expect("open");
    assert_eq!(image.info().compression_type.as_deref(), Some("zstd"));
    assert_eq!(read_all(&image).ok(), Some(pattern(CS as usize, 9)));
}

#[test]
fn compressed_cluster_whose_sectors_run_past_end_of_file_is_read_from_what_is_there() {
    let mut b = Builder::new(K64, CS);
    b.compressed(0, &deflate(&pattern(CS as usize, 3)));
    let mut img = b.build();
    let l2 = (b.l1_offset() + CS) as usize; // the first L2 table, right after the L1 table
    let word = u64::from_be_bytes(img[l2..l2 + 8].try_into().expect("8 bytes"));
    set_u64(&mut img, l2, word + (4u64 << 54)); // four more sectors than stored
    let image = open(img).expect("open");
    assert_eq!(read_all(&image).ok(), Some(pattern(CS as usize, 3)));
}

#[test]
fn compressed_cluster_that_inflates_past_cluster_size_is_rejected() {
    let mut b = Builder::new(12, 4096);
    let host = b.compressed(0, &deflate(&pattern(8192, 1)));
    let image = open(b.build()).expect("open");
    let (kind, msg) = read_err(&image);
    assert_eq!(kind, ErrorKind::InvalidImage);
    assert_eq!(
        msg,
        format!("compressed cluster at host offset {host} inflates past the cluster size of 4096 bytes")
    );
}

#[test]
fn compressed_cluster_starting_past_end_of_file_is_rejected() {
    let mut b = Builder::new(K64, CS);
    b.entry(0, COMPRESSED | 1 << 40, 0);
    let image = open(b.build()).expect("open");
    let (kind, msg) = read_err(&image);
    assert_eq!(kind, ErrorKind::InvalidImage);
    assert!(msg.starts_with("image is truncated: compressed cluster for guest offset 0"), "{msg}");
}

#[test]
fn extended_l2_subclusters_read_and_map_per_subcluster() {
    // 64 KiB clusters, 2 KiB subclusters: 0-1 allocated, 2 zero, rest unallocated.
    let mut b = Builder::new(K64, CS).extended_l2();
    b.entry(0, 0, 0);
    let host = b.alloc(&vec![0xcd; CS as usize]);
    b.entry(0, COPIED | host, 0b100 << 32 | 0b011);
    let image = open(b.build()).expect("open");
    let data = read_all(&image).expect("read");
    assert_eq!(&data[..4096], &[0xcd; 4096][..]);
    assert!(data[4096..].iter().all(|&x| x == 0));
    assert_eq!(
        segments(&image, u64::MAX).expect("map"),
        vec![
            Segment { offset: 0, len: 4096, kind: SegmentKind::Data { host } },
            Segment { offset: 4096, len: 2048, kind: SegmentKind::Zero },
            Segment { offset: 6144, len: CS - 6144, kind: SegmentKind::Unallocated },
        ]
    );
}

#[test]
fn extended_l2_needs_16_kib_clusters() {
    let (kind, _) = open_err(Builder::new(12, 4096).extended_l2().build());
    assert_eq!(kind, ErrorKind::InvalidImage);
}

#[test]
fn huge_sparse_image_maps_quickly_with_few_l2_reads() {
    let size = 1u64 << 40;
    let mut b = Builder::new(K64, size);
    let host = b.data(size / CS - 1, 0x42);
    let image = open(b.build()).expect("open");
    let started = Instant::now();
    let segs = segments(&image, u64::MAX).expect("map");
    assert!(started.elapsed() < Duration::from_secs(1), "mapping took {:?}", started.elapsed());
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[0], Segment { offset: 0, len: size - CS, kind: SegmentKind::Unallocated });
    assert_eq!(segs[1], Segment { offset: size - CS, len: CS, kind: SegmentKind::Data { host } });
}

#[test]
fn concurrent_reads_from_several_threads_agree() {
    let mut b = Builder::new(12, 64 * 4096);
    for i in 0..64 {
        if i % 2 == 0 {
            b.compressed(i, &deflate(&pattern(4096, i as u8)));
        } else {
            b.data(i, i as u8);
        }
    }
    let image = open(b.build()).expect("open");
    let expected = read_all(&image).expect("read");
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (image, expected) = (&image, &expected);
            s.spawn(move || {
                for i in (t..64).step_by(4) {
                    let mut buf = vec![0u8; 4096];
                    image.read_at(&mut buf, i * 4096).expect("read");
                    assert_eq!(&buf[..], &expected[(i * 4096) as usize..((i + 1) * 4096) as usize]);
                }
            });
        }
    });
}

// ---- info ----

#[test]
fn info_reports_features_and_snapshots() {
    let mut b = Builder::new(K64, 2 * CS);
    b.compatible = 1; // lazy refcounts
    b.incompatible = 0b11; // dirty, corrupt
    b.autoclear = 1; // bitmaps
    b.extensions.push((0x2385_2875, vec![0; 24]));
    b.snapshots.push(("1".into(), "before upgrade".into(), Some(CS)));
    b.snapshots.push(("2".into(), "v2-style".into(), None));
    let image = open(b.build()).expect("open");
    let info = image.info();
    assert_eq!(info.format, "qcow2");
    assert_eq!(info.cluster_size, Some(CS));
    assert_eq!(info.compression_type.as_deref(), Some("zlib"));
    assert_eq!(info.features, vec!["lazy_refcounts", "dirty", "corrupt", "bitmaps"]);
    assert_eq!(
        info.snapshots,
        vec![
            SnapshotInfo { id: "1".into(), name: "before upgrade".into(), virtual_size: CS },
            SnapshotInfo { id: "2".into(), name: "v2-style".into(), virtual_size: 2 * CS },
        ]
    );
}

// ---- header refusals ----

#[test]
fn bad_magic_is_rejected() {
    let mut img = Builder::new(K64, CS).build();
    img[0] = b'X';
    assert_eq!(open_err(img), (ErrorKind::InvalidImage, "not a qcow2 image: bad magic".into()));
}

#[test]
fn version_4_is_unsupported() {
    let mut img = Builder::new(K64, CS).build();
    set_u32(&mut img, at::VERSION, 4);
    assert_eq!(open_err(img).0, ErrorKind::Unsupported);
}

#[test]
fn header_length_below_104_is_rejected() {
    let mut img = Builder::new(K64, CS).build();
    set_u32(&mut img, at::HEADER_LENGTH, 100);
    assert_eq!(open_err(img).0, ErrorKind::InvalidImage);
}

#[test]
fn header_length_beyond_the_cluster_is_rejected() {
    let mut img = Builder::new(9, 4096).build();
    set_u32(&mut img, at::HEADER_LENGTH, 1024);
    assert_eq!(open_err(img).0, ErrorKind::InvalidImage);
}

#[test]
fn cluster_bits_outside_9_to_21_are_rejected() {
    for bits in [8, 22, 64] {
        let mut img = Builder::new(K64, CS).build();
        set_u32(&mut img, at::CLUSTER_BITS, bits);
        assert_eq!(open_err(img).0, ErrorKind::InvalidImage, "cluster bits {bits}");
    }
}

#[test]
fn backing_file_is_denied_naming_it_escaped() {
    let mut img = Builder::new(K64, CS).build();
    let name = b"/etc/\"shadow\"\n";
    img[512..512 + name.len()].copy_from_slice(name);
    set_u64(&mut img, at::BACKING_FILE_OFFSET, 512);
    set_u32(&mut img, at::BACKING_FILE_SIZE, name.len() as u32);
    assert_eq!(
        open_err(img),
        (
            ErrorKind::Denied,
            "image has a backing file \"/etc/\\\"shadow\\\"\\n\"; backing files are not allowed".into()
        )
    );
}

#[test]
fn backing_file_name_outside_the_file_is_denied_without_reading_it() {
    let mut img = Builder::new(K64, CS).build();
    set_u64(&mut img, at::BACKING_FILE_OFFSET, 1 << 50);
    set_u32(&mut img, at::BACKING_FILE_SIZE, 10);
    let (kind, msg) = open_err(img);
    assert_eq!(kind, ErrorKind::Denied);
    assert!(msg.contains("backing file"), "{msg}");
}

#[test]
fn external_data_file_bit_is_denied() {
    let mut b = Builder::new(K64, CS);
    b.incompatible = 1 << 2;
    assert_eq!(open_err(b.build()).0, ErrorKind::Denied);
}

#[test]
fn external_data_file_extension_is_denied_naming_it() {
    let mut b = Builder::new(K64, CS);
    b.extensions.push((0x4441_5441, b"data.raw".to_vec()));
    assert_eq!(
        open_err(b.build()),
        (
            ErrorKind::Denied,
            "image has an external data file \"data.raw\"; external data files are not allowed".into()
        )
    );
}

#[test]
fn encrypted_images_are_unsupported() {
    for (method, name) in [(1, "AES"), (2, "LUKS")] {
        let mut img = Builder::new(K64, CS).build();
        set_u32(&mut img, at::CRYPT_METHOD, method);
        let (kind, msg) = open_err(img);
        assert_eq!(kind, ErrorKind::Unsupported);
        assert!(msg.contains(&format!("encrypted ({name})")), "{msg}");
    }
}

#[test]
fn unknown_incompatible_features_are_unsupported_naming_the_bits() {
    let mut b = Builder::new(K64, CS);
    b.incompatible = 1 << 5 | 1 << 40;
    let mut names = vec![0u8; 48];
    names[1] = 5;
    names[2..9].copy_from_slice(b"shiny-x");
    b.extensions.push((0x6803_f857, names));
    assert_eq!(
        open_err(b.build()),
        (
            ErrorKind::Unsupported,
            "image uses unknown incompatible features: bit 5 (\"shiny-x\"), bit 40".into()
        )
    );
}

#[test]
fn refcount_order_above_6_is_rejected() {
    let mut img = Builder::new(K64, CS).build();
    set_u32(&mut img, at::REFCOUNT_ORDER, 7);
    assert_eq!(open_err(img).0, ErrorKind::InvalidImage);
}

#[test]
fn compression_type_byte_without_its_feature_bit_is_rejected() {
    let mut img = Builder::new(K64, CS).build();
    img[at::COMPRESSION_TYPE] = 1;
    assert_eq!(open_err(img).0, ErrorKind::InvalidImage);
}

#[test]
fn unknown_compression_type_is_unsupported() {
    let mut img = Builder::new(K64, CS).zstd().build();
    img[at::COMPRESSION_TYPE] = 2;
    assert_eq!(open_err(img).0, ErrorKind::Unsupported);
}

#[test]
fn header_extension_crossing_the_end_of_cluster_0_is_rejected() {
    let mut b = Builder::new(9, 4096);
    b.extensions.push((0x1234_5678, vec![0; 16]));
    let mut img = b.build();
    set_u32(&mut img, 112 + 4, 4096); // the extension's length
    assert_eq!(open_err(img).0, ErrorKind::InvalidImage);
}

#[test]
fn truncated_header_is_rejected() {
    let mut img = Builder::new(K64, CS).build();
    img.truncate(90);
    let (kind, msg) = open_err(img);
    assert_eq!(kind, ErrorKind::InvalidImage);
    assert!(msg.starts_with("image is truncated"), "{msg}");
}

// ---- limits ----

#[test]
fn virtual_size_above_the_limit_is_too_large() {
    let img = Builder::new(K64, 1 << 30).build();
    let opts = OpenOptions { max_virtual_size: 1 << 29 };
    let err = Qcow2Image::open(Arc::new(img), &opts).err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::TooLarge));
}

#[test]
fn l1_table_smaller_than_the_virtual_size_needs_is_rejected() {
    let mut img = Builder::new(K64, 4 << 30).build();
    set_u32(&mut img, at::L1_SIZE, 7);
    let (kind, msg) = open_err(img);
    assert_eq!(kind, ErrorKind::InvalidImage);
    assert_eq!(msg, "L1 table has 7 entries, but the virtual size 4294967296 needs 8");
}

#[test]
fn l1_table_above_the_entry_limit_is_too_large() {
    let mut img = Builder::new(K64, CS).build();
    set_u32(&mut img, at::L1_SIZE, u32::MAX);
    assert_eq!(open_err(img).0, ErrorKind::TooLarge);
}

#[test]
fn l1_table_larger_than_needed_is_accepted_when_it_lies_in_the_file() {
    // qemu keeps the L1 table's size when an image is shrunk.
    let mut img = Builder::new(K64, CS).build();
    set_u32(&mut img, at::L1_SIZE, 8);
    assert!(open(img).is_ok());
}

#[test]
fn refcount_table_above_the_limit_is_too_large() {
    let mut img = Builder::new(K64, CS).build();
    set_u32(&mut img, at::REFCOUNT_TABLE_CLUSTERS, 1 << 16);
    assert_eq!(open_err(img).0, ErrorKind::TooLarge);
}

#[test]
fn too_many_snapshots_are_too_large() {
    let mut img = Builder::new(K64, CS).build();
    set_u32(&mut img, at::NB_SNAPSHOTS, 70_000);
    set_u64(&mut img, at::SNAPSHOTS_OFFSET, 3 * CS);
    assert_eq!(open_err(img).0, ErrorKind::TooLarge);
}

// ---- table placement ----

#[test]
fn l1_table_not_cluster_aligned_is_rejected() {
    let mut img = Builder::new(K64, CS).build();
    set_u64(&mut img, at::L1_TABLE_OFFSET, 2 * CS + 8);
    assert_eq!(open_err(img).0, ErrorKind::InvalidImage);
}

#[test]
fn l1_table_past_end_of_file_is_rejected() {
    let mut img = Builder::new(K64, CS).build();
    set_u64(&mut img, at::L1_TABLE_OFFSET, 1 << 40);
    let (kind, msg) = open_err(img);
    assert_eq!(kind, ErrorKind::InvalidImage);
    assert!(msg.contains("lies past end of file"), "{msg}");
}

#[test]
fn l1_table_overlapping_the_refcount_table_is_rejected() {
    let mut img = Builder::new(K64, CS).build();
    set_u64(&mut img, at::L1_TABLE_OFFSET, CS);
    assert_eq!(
        open_err(img),
        (
            ErrorKind::InvalidImage,
            "the L1 table at offset 65536 (8 bytes) overlaps the refcount table at offset 65536 (65536 bytes)".into()
        )
    );
}

#[test]
fn refcount_table_in_the_header_cluster_is_rejected() {
    let mut img = Builder::new(K64, CS).build();
    set_u64(&mut img, at::REFCOUNT_TABLE_OFFSET, 0);
    assert_eq!(open_err(img).0, ErrorKind::InvalidImage);
}

#[test]
fn snapshot_table_overlapping_the_l1_table_is_rejected() {
    let mut b = Builder::new(K64, CS);
    b.snapshots.push(("1".into(), "s".into(), None));
    let mut img = b.build();
    set_u64(&mut img, at::SNAPSHOTS_OFFSET, 2 * CS);
    assert_eq!(open_err(img).0, ErrorKind::InvalidImage);
}

#[test]
fn snapshot_table_past_end_of_file_is_rejected() {
    let mut b = Builder::new(K64, CS);
    b.snapshots.push(("1".into(), "s".into(), None));
    let mut img = b.build();
    img.truncate(img.len() - 4);
    let (kind, msg) = open_err(img);
    assert_eq!(kind, ErrorKind::InvalidImage);
    assert!(msg.starts_with("image is truncated"), "{msg}");
}

// ---- L1 / L2 entries ----

#[test]
fn l1_entry_with_reserved_bits_is_rejected() {
    let mut b = Builder::new(K64, CS);
    b.data(0, 1);
    let mut img = b.build();
    let l1 = b.l1_offset() as usize;
    img[l1 + 7] |= 1; // bit 0 is reserved
    assert_eq!(open_err(img).0, ErrorKind::InvalidImage);
}

#[test]
fn l2_table_not_cluster_aligned_is_rejected() {
    let mut b = Builder::new(K64, CS);
    b.data(0, 1);
    let mut img = b.build();
    let l1 = b.l1_offset() as usize;
    set_u64(&mut img, l1, COPIED | (3 * CS + 512));
    let (kind, msg) = open_err(img);
    assert_eq!(kind, ErrorKind::InvalidImage);
    assert_eq!(msg, "L2 table for guest offset 0 at host offset 197120 is not cluster-aligned");
}

#[test]
fn l2_table_past_end_of_file_is_rejected() {
    let mut b = Builder::new(K64, CS);
    b.data(0, 1);
    let mut img = b.build();
    let l1 = b.l1_offset() as usize;
    set_u64(&mut img, l1, COPIED | 1 << 40);
    assert_eq!(open_err(img).0, ErrorKind::InvalidImage);
}

#[test]
fn l2_table_overlapping_the_l1_table_is_rejected() {
    let mut b = Builder::new(K64, CS);
    b.data(0, 1);
    let mut img = b.build();
    let l1 = b.l1_offset();
    set_u64(&mut img, l1 as usize, COPIED | l1);
    assert_eq!(
        open_err(img),
        (
            ErrorKind::InvalidImage,
            format!("L2 table for guest offset 0 at host offset {l1} overlaps the L1 table")
        )
    );
}

#[test]
fn l2_entry_with_reserved_bits_is_rejected() {
    let mut b = Builder::new(K64, CS);
    b.entry(0, 0, 0);
    let host = b.alloc(&vec![1; CS as usize]);
    b.entry(0, COPIED | host | 1 << 57, 0);
    let image = open(b.build()).expect("open");
    let (kind, msg) = read_err(&image);
    assert_eq!(kind, ErrorKind::InvalidImage);
    assert!(msg.contains("reserved bits"), "{msg}");
    assert!(image.map(0, CS).is_err());
}

#[test]
fn data_cluster_not_cluster_aligned_is_rejected() {
    let mut b = Builder::new(K64, CS);
    b.entry(0, 0, 0);
    let host = b.alloc(&vec![1; 2 * CS as usize]);
    b.entry(0, COPIED | (host + 512), 0);
    let image = open(b.build()).expect("open");
    assert_eq!(
        read_err(&image),
        (
            ErrorKind::InvalidImage,
            format!("data cluster for guest offset 0 at host offset {} is not cluster-aligned", host + 512)
        )
    );
}

#[test]
fn data_cluster_pointing_into_the_refcount_table_is_rejected() {
    let mut b = Builder::new(K64, CS);
    b.entry(0, COPIED | CS, 0);
    let image = open(b.build()).expect("open");
    assert_eq!(
        read_err(&image),
        (
            ErrorKind::InvalidImage,
            format!("data cluster for guest offset 0 at host offset {CS} overlaps the refcount table")
        )
    );
}

#[test]
fn data_cluster_pointing_into_the_l1_table_is_rejected() {
    let mut b = Builder::new(K64, CS);
    let l1 = b.l1_offset();
    b.entry(0, COPIED | l1, 0);
    let image = open(b.build()).expect("open");
    let (kind, msg) = read_err(&image);
    assert_eq!(kind, ErrorKind::InvalidImage);
    assert!(msg.ends_with("overlaps the L1 table"), "{msg}");
}

#[test]
fn compressed_cluster_pointing_into_the_header_is_rejected() {
    let mut b = Builder::new(K64, CS);
    b.entry(0, COMPRESSED | 100, 0);
    let image = open(b.build()).expect("open");
    let (kind, msg) = read_err(&image);
    assert_eq!(kind, ErrorKind::InvalidImage);
    assert_eq!(msg, "compressed cluster for guest offset 0 at host offset 100 overlaps the image header");
}

#[test]
fn truncated_data_cluster_is_rejected() {
    let mut b = Builder::new(K64, 2 * CS);
    b.data(0, 1);
    let host = b.data(1, 2);
    let mut img = b.build();
    img.truncate(img.len() - 1);
    let len = img.len();
    let image = open(img).expect("open");
    let expected = format!(
        "image is truncated: data cluster for guest offset {CS} at host offset {host} lies past end of file ({len} bytes)"
    );
    assert_eq!(read_err(&image), (ErrorKind::InvalidImage, expected.clone()));
    // map reports the data before the bad cluster, then the error.
    assert_eq!(image.map(0, u64::MAX).ok().map(|s| s.len), Some(CS));
    assert_eq!(image.map(CS, u64::MAX).err().map(|e| e.to_string()), Some(expected));
}

#[test]
fn zero_cluster_in_a_version_2_image_is_rejected() {
    let mut b = Builder::new(K64, CS).v2();
    b.entry(0, ZERO, 0);
    let image = open(b.build()).expect("open");
    assert_eq!(read_err(&image).0, ErrorKind::InvalidImage);
}

// ---- hostile bytes ----

/// Opens `img` and, if it opens, maps and reads all of it (bounded): errors are fine, panics
/// are not.
fn open_and_walk(img: Vec<u8>) {
    let Ok(image) = open(img) else { return };
    let _ = image.info();
    let size = image.virtual_size();
    let mut offset = 0;
    for _ in 0..1000 {
        if offset >= size {
            break;
        }
        let Ok(seg) = image.map(offset, (size - offset).min(1 << 30)) else { break };
        assert!(seg.offset == offset && seg.len >= 1 && offset + seg.len <= size, "{seg:?}");
        let mut buf = vec![0u8; seg.len.min(8192) as usize];
        if image.read_at(&mut buf, offset).is_ok() && !seg.kind.has_data() {
            assert!(buf.iter().all(|&b| b == 0), "{seg:?} read non-zero bytes");
        }
        offset += seg.len;
    }
}

#[test]
fn randomly_mutated_images_never_panic() {
    let mut plain = Builder::new(9, 64 << 10);
    plain.data(3, 7);
    plain.compressed(5, &deflate(&pattern(512, 1)));
    plain.entry(9, ZERO, 0);
    plain.snapshots.push(("1".into(), "snap".into(), Some(4096)));
    let mut extended = Builder::new(14, 1 << 20).extended_l2().zstd();
    extended.data(1, 9);
    extended.compressed(2, &zstd(&pattern(1 << 14, 2)));
    extended.entry(3, 0, 0xffff_0000_0000_0000);
    let seeds = [plain.build(), extended.build()];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for seed in &seeds {
        for _ in 0..1500 {
            let mut img = seed.clone();
            for _ in 0..1 + next() % 4 {
                // Mostly the metadata at the front, sometimes anywhere.
                let span = if next() % 4 == 0 { img.len() } else { img.len().min(4096) };
                let at = (next() % span as u64) as usize;
                img[at] = next() as u8;
            }
            open_and_walk(img);
        }
    }
}
