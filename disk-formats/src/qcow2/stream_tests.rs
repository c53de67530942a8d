//! The router and the residual image against the random-access engine: every image below is
//! streamed in several piece sizes, and what routing plus the residual conversion leave in
//! the target must equal `convert_image` of the whole file.

use std::sync::{Arc, Mutex};

use super::*;
use crate::convert::tests::MemTarget;
use crate::convert::{ConvertOptions, convert_image};
use crate::qcow2::Qcow2Image;
use crate::qcow2::builder::{self, Builder, COPIED, ZERO};
use crate::{ErrorKind, OpenOptions};

const MIB: u64 = 1 << 20;

fn open(bytes: Vec<u8>) -> Result<Box<dyn Image>> {
    let opts = OpenOptions { max_virtual_size: 1 << 40 };
    Ok(Box::new(Qcow2Image::open(Arc::new(bytes), &opts)?))
}

/// `convert_image` of the whole file: the expected target.
fn reference(image: &[u8], capacity: u64) -> Result<Vec<u8>> {
    let target = MemTarget::new(capacity as usize, true);
    convert_image(&*open(image.to_vec())?, &target, &ConvertOptions::default())?;
    Ok(target.bytes())
}

/// What streaming `image` in pieces of `piece` bytes does: the target's bytes, the bytes
/// routed, or the conversion's error.
fn streamed(image: &[u8], piece: usize, capacity: u64) -> (Result<Vec<u8>>, u64) {
    let target = MemTarget::new(capacity as usize, true);
    let routed = Routed::new();
    let spill = Mutex::new(vec![0u8; image.len()]);
    let received = route(&target, &routed, image.len() as u64, |router| {
        for chunk in image.chunks(piece) {
            router.route(chunk, &mut |at, part| {
                spill.lock().unwrap()[at as usize..at as usize + part.len()].copy_from_slice(part);
                Ok(())
            })?;
        }
        Ok::<_, Error>(())
    });
    if let Err(e) = received {
        return (Err(e), routed.bytes());
    }
    let spilled = spill.into_inner().unwrap();
    let arrived = |_: u64| Ok(());
    let converted = open(spilled).and_then(|inner| {
        let residual = Residual::new(inner, &routed, &arrived);
        convert_image(&residual, &target, &ConvertOptions::default())
    });
    (converted.map(|_| target.bytes()), routed.bytes())
}

/// Piece sizes that cut clusters and tables everywhere: tiny, odd, a page, a cluster and a
/// half, and the whole image at once.
const PIECES: [usize; 6] = [1000, 4093, 4096, 65_536 + 32_768, 1 << 20, usize::MAX];

fn assert_streams_like_the_engine(image: &[u8], capacity: u64) -> Vec<u64> {
    let expected = reference(image, capacity).expect("the engine converts the image");
    PIECES
        .iter()
        .map(|&piece| {
            let (got, routed) = streamed(image, piece.min(image.len()), capacity);
            let got = got.unwrap_or_else(|e| panic!("pieces of {piece}: {e}"));
            assert!(got == expected, "pieces of {piece}: the output differs from the engine's");
            routed
        })
        .collect()
}

fn fill_pattern(seed: u8, len: u64) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

#[test]
fn data_after_its_table_is_routed_whole_and_the_output_equals_the_engine_s() {
    let mut b = Builder::new(16, 8 * MIB);
    for index in [0u64, 1, 2, 5, 6, 40, 127] {
        b.data_bytes(index, &fill_pattern(index as u8, b.cluster_size()));
    }
    let image = b.build();

    let routed = assert_streams_like_the_engine(&image, 8 * MIB);

    assert!(routed.iter().all(|&r| r == 7 * 65_536), "every data cluster routed: {routed:?}");
}

#[test]
fn data_that_arrives_before_its_table_is_converted_from_the_scratch_file() {
    let mut b = Builder::new(16, 4 * MIB);
    let early = b.alloc(&fill_pattern(9, 65_536));
    b.entry(3, COPIED | early, 0); // the L2 table is allocated after the data
    b.data(4, 0x44); // the same table, data after it
    let image = b.build();

    let routed = assert_streams_like_the_engine(&image, 4 * MIB);

    assert!(routed.iter().all(|&r| r == 65_536), "only the later cluster routed: {routed:?}");
}

#[test]
fn compressed_clusters_are_left_to_the_residual_conversion() {
    let mut b = Builder::new(16, 4 * MIB);
    let plain = fill_pattern(3, 65_536);
    b.compressed(0, &super::super::compressed::tests::deflate(&plain));
    b.data(1, 0x11);
    b.compressed(2, &super::super::compressed::tests::deflate(&fill_pattern(5, 65_536)));
    let image = b.build();

    let routed = assert_streams_like_the_engine(&image, 4 * MIB);

    assert!(routed.iter().all(|&r| r == 65_536), "{routed:?}");
}

#[test]
fn extended_l2_subclusters_route_their_data_and_keep_zero_and_unallocated_ones() {
    let mut b = Builder::new(16, 4 * MIB).extended_l2();
    let host = b.alloc(&fill_pattern(7, 65_536));
    // Subclusters of 2 KiB: 0..8 allocated, 8..12 zero, the rest unallocated.
    b.entry(1, COPIED | host, 0x0000_0f00_0000_00ff);
    b.data(2, 0x22);
    let image = b.build();

    let routed = assert_streams_like_the_engine(&image, 4 * MIB);

    // Cluster 1's table comes after its data (alloc, then entry); cluster 2's data is routed.
    assert!(routed.iter().all(|&r| r == 65_536), "{routed:?}");
}

#[test]
fn zero_clusters_with_a_host_offset_are_not_read() {
    let mut b = Builder::new(16, 4 * MIB);
    b.data(0, 0x10);
    let preallocated = b.alloc(&fill_pattern(1, 65_536));
    b.entry(1, COPIED | preallocated | ZERO, 0);
    let image = b.build();

    let routed = assert_streams_like_the_engine(&image, 4 * MIB);

    assert!(routed.iter().all(|&r| r == 65_536), "{routed:?}");
}

#[test]
fn small_clusters_and_a_virtual_size_inside_a_cluster() {
    let mut b = Builder::new(9, 3 * MIB + 1536);
    for index in [0u64, 1, 2, 100, 6146] {
        b.data_bytes(index, &fill_pattern(index as u8, 512));
    }
    let image = b.build();

    let routed = assert_streams_like_the_engine(&image, 3 * MIB + 1536);

    assert!(routed.iter().all(|&r| r == 5 * 512), "{routed:?}");
}

#[test]
fn an_image_with_internal_snapshots_is_not_routed_and_still_converts() {
    let mut b = Builder::new(16, 2 * MIB);
    b.data(0, 0x5a);
    b.snapshots.push(("1".into(), "base".into(), None));
    let image = b.build();

    let routed = assert_streams_like_the_engine(&image, 2 * MIB);

    assert!(routed.iter().all(|&r| r == 0), "{routed:?}");
}

#[test]
fn a_host_cluster_claimed_twice_before_it_arrives_stops_the_router_and_converts_from_scratch() {
    let mut b = Builder::new(16, 2 * MIB);
    let host = b.data(0, 0x77);
    b.entry(1, COPIED | host, 0); // the same table: both claims come before the data
    let image = b.build();

    let routed = assert_streams_like_the_engine(&image, 2 * MIB);

    assert!(routed.iter().all(|&r| r == 0), "{routed:?}");
}

#[test]
fn a_host_cluster_claimed_again_after_it_was_routed_is_refused_as_corrupt() {
    // 512-byte clusters: an L2 table covers 32 KiB, so guest cluster 100 has a table of its
    // own, allocated after cluster 0's data.
    let mut b = Builder::new(9, MIB);
    let host = b.data(0, 0x77);
    b.entry(100, COPIED | host, 0);
    let image = b.build();
    assert!(reference(&image, MIB).is_ok(), "the engine reads a shared cluster twice");

    let (got, routed) = streamed(&image, 4096, MIB);

    assert_eq!(routed, 512);
    let err = got.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidImage);
    assert!(err.to_string().contains("is used by guest offsets 0 and 51200"), "{err}");
}

#[test]
fn a_data_cluster_that_is_also_an_l2_table_stops_the_router_so_the_table_reaches_the_engine() {
    // 512-byte clusters: guest cluster 100 has an L2 table of its own. Guest cluster 1 claims
    // that table's host cluster as its data (a hostile overlap the engine does not refuse):
    // routing it would keep the table's bytes out of the scratch file, and the engine would
    // read the table as zeros.
    let mut b = Builder::new(9, MIB);
    b.data(0, 0x11);
    let later = b.data(100, 0x22);
    let table = later - b.cluster_size(); // allocated just before its first data cluster
    // An entry of that table the router leaves to the engine: it needs the table's bytes.
    b.compressed(101, &super::super::compressed::tests::deflate(&fill_pattern(4, 512)));
    b.entry(1, COPIED | table, 0);
    let image = b.build();

    let routed = assert_streams_like_the_engine(&image, MIB);

    assert!(routed.iter().all(|&r| r == 0), "routed despite the overlap: {routed:?}");
}

#[test]
fn a_data_cluster_inside_the_refcount_table_is_refused_as_the_engine_refuses_it() {
    let mut b = Builder::new(16, 2 * MIB);
    b.data(0, 0x01);
    let refcount_table = b.cluster_size(); // cluster 1
    b.entry(1, COPIED | refcount_table, 0);
    let image = b.build();
    let Err(engine) = reference(&image, 2 * MIB) else { panic!("the engine must refuse it") };

    for piece in PIECES {
        let (got, _) = streamed(&image, piece.min(image.len()), 2 * MIB);
        let err = got.expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidImage);
        assert_eq!(err.to_string(), engine.to_string());
    }
}

#[test]
fn a_backing_file_stops_the_router_and_is_left_to_the_engine() {
    let mut b = Builder::new(16, 2 * MIB);
    b.data(0, 0x01);
    let mut image = b.build();
    builder::set_u64(&mut image, builder::at::BACKING_FILE_OFFSET, 1024);
    builder::set_u32(&mut image, builder::at::BACKING_FILE_SIZE, 4);
    image[1024..1028].copy_from_slice(b"base");

    let (got, routed) = streamed(&image, 4096, 2 * MIB);

    assert_eq!(routed, 0);
    assert_eq!(got.expect_err("denied").kind(), ErrorKind::Denied);
}

#[test]
fn routing_never_writes_past_the_virtual_size() {
    // The last cluster is only partly inside the virtual size: the rest of it is not written.
    let mut b = Builder::new(16, MIB + 4096);
    b.data(16, 0xee);
    let image = b.build();

    let (got, routed) = streamed(&image, 65_536, MIB + 4096);

    assert_eq!(routed, 4096);
    let got = got.expect("converted");
    assert!(got[MIB as usize..].iter().all(|&x| x == 0xee));
}

#[test]
fn a_stream_that_breaks_off_reports_the_receiver_s_error() {
    let mut b = Builder::new(16, 2 * MIB);
    b.data(0, 0x01);
    let image = b.build();
    let target = MemTarget::new(2 * MIB as usize, true);
    let routed = Routed::new();

    let result: std::result::Result<(), Error> = route(&target, &routed, image.len() as u64, |router| {
        router.route(&image[..image.len() / 2], &mut |_, _| Ok(()))?;
        Err(Error::invalid("the upload stopped after half of it"))
    });

    assert_eq!(result.expect_err("failed").to_string(), "the upload stopped after half of it");
}

#[test]
fn residual_maps_routed_runs_as_unallocated_and_splits_at_their_edges() {
    let routed = Routed::new();
    routed.insert(1 << 20, 0, 65_536);
    routed.insert((1 << 20) + 65_536, 65_536, 65_536); // continues: one run

    assert_eq!(
        routed.lookup((1 << 20) + 70_000),
        Lookup::Inside { start: 1 << 20, run: Run { guest: 0, len: 131_072 } }
    );
    assert_eq!(routed.lookup(4096), Lookup::Outside { next: Some(1 << 20) });
    assert_eq!(routed.lookup(2 << 20), Lookup::Outside { next: None });
}
