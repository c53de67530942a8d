//! `diskplane convert` and `diskplane info` against qemu-img, over the image matrix that
//! `fixtures/make-images.sh` generates with qemu-img / qemu-io (see that script for how each image
//! is made, and `fixtures/qcow2_patch.py` for every hostile patch).
//!
//! Every row of `expected.tsv` has its own test in [`matrix`], named after the row, so a failure
//! names the image (the row checks live in `peers/fixture_table.rs`, shared with
//! `convert_formats.rs`):
//! - `ok` rows: exit 0, the output's sha256 equals that of `qemu-img convert -O raw` (recorded at
//!   generation time), the output occupies no more disk than qemu-img's did, and nothing but
//!   the output is left in the directory;
//! - `reject` rows: the expected exit code, exactly one non-empty line on stderr containing the
//!   expected words, and no output (nor partial or scratch file) left behind.
//!
//! Then: `info -o json` agrees with `qemu-img info --output=json`; an existing, bigger output is
//! replaced; a rejected image does not clobber an existing output; and, as root with loop
//! devices, conversion onto a block device (skipped, with the reason printed, when `losetup`
//! fails).
//!
//! Fixtures are generated once into `target/fixtures` (or `$DISKPLANE_FIXTURES`) under
//! `flock`, since nextest runs every test in its own process.

#[macro_use]
#[allow(dead_code)]
#[path = "peers/fixture_table.rs"]
mod fixture_table;

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use fixture_table::{
    Expect, FS_METADATA_SLACK, Row, Table, allocated, convert, diskplane, json_of, leftovers, sha256_range,
    stderr,
};
use serde_json::Value;

const MAKE_IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/make-images.sh");
const MIB: u64 = 1 << 20;

// --- the fixture matrix -------------------------------------------------------------------------

/// `fixtures/make-images.sh`'s images in `target/fixtures` (or `$DISKPLANE_FIXTURES`).
fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| Table::generate("DISKPLANE_FIXTURES", "fixtures", MAKE_IMAGES))
}

fn row(name: &str) -> &'static Row {
    table().row(name)
}

fn image(name: &str) -> PathBuf {
    table().image(name)
}

fn scratch_dir(name: &str) -> tempfile::TempDir {
    table().scratch_dir("convert", name)
}

/// The whole check for one row of the matrix (see `fixture_table`).
fn check_fixture(name: &str) {
    table().check(name, "convert", &check_regions);
}

/// For `skip-sha` rows: the output's size, and the sha256 of each region qemu-img's output had.
fn check_regions(name: &str, out: &Path) {
    let path = table().dir().join(format!("{name}.regions"));
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[..] {
            ["size", size] => {
                let size: u64 = size.parse().expect("size");
                assert_eq!(fs::metadata(out).expect("metadata").len(), size, "{name}: output size");
            }
            [offset, len, sha] => {
                let (offset, len) = (offset.parse().expect("offset"), len.parse().expect("len"));
                assert_eq!(
                    sha256_range(out, offset, Some(len)),
                    sha,
                    "{name}: {len} bytes at offset {offset}"
                );
            }
            _ => panic!("{}: bad line {line:?}", path.display()),
        }
    }
}

/// The matrix, in the order of `fixtures/make-images.sh`.
mod matrix {
    fixture_tests! {
        // raw and ISO
        raw_patterned, raw_zero_regions, raw_odd_size, raw_empty, iso,
        // qcow2 versions and cluster sizes
        qcow2_v2, qcow2_v3, qcow2_c512, qcow2_c1k, qcow2_c2k, qcow2_c4k, qcow2_c64k, qcow2_c1m,
        qcow2_c2m,
        // unallocated, allocated zeros, zero clusters, discards
        qcow2_unallocated, qcow2_allocated_zeros, qcow2_empty, qcow2_zero_clusters_v2,
        qcow2_zero_clusters_v3,
        // compressed clusters
        qcow2_zlib, qcow2_v2_zlib, qcow2_zstd, qcow2_zlib_c512, qcow2_zlib_c2m, qcow2_zstd_c4k,
        qcow2_zlib_mixed,
        // extended L2
        qcow2_extl2_c64k, qcow2_extl2_c2m, qcow2_extl2_zlib,
        // snapshots, header options, preallocation, odd sizes, huge and sparse
        qcow2_snapshots, qcow2_zlib_snapshot, qcow2_lazy_refcounts, qcow2_dirty, qcow2_refcount1,
        qcow2_refcount64, qcow2_bitmaps, qcow2_prealloc_metadata, qcow2_prealloc_falloc,
        qcow2_prealloc_full, qcow2_odd_size, qcow2_zlib_odd_size, qcow2_1t_sparse,
        // compression wrappers
        raw_gz, qcow2_gz, raw_gz2, qcow2_gz2, raw_xz, qcow2_xz, raw_xz2, qcow2_xz2, raw_zst,
        qcow2_zst, raw_zst2, qcow2_zst2, qcow2_zlib_zst, raw_empty_gz, raw_zst_skippable,
        // hostile: policy
        backing_relative, backing_absolute, backing_json, external_data, encrypted_luks_qcow2,
        luks,
        // hostile: crafted headers and tables
        encrypted_aes, incompatible_bit20, qcow2_version7, cluster_bits_32, l1_past_eof,
        l2_past_eof, data_past_eof, data_in_header, l2_in_header, l1_overlaps_refcount_table,
        qcow2_corrupt_bit, l2_overlaps_l1, l2_unaligned, truncated_data, truncated_l1,
        compressed_garbage, compressed_overflow, compressed_short, l1_reserved_bits,
        l2_reserved_bits, l1_unaligned, data_overlaps_refcount_table, snapshot_table_past_eof,
        header_extension_overflow, refcount_order_7, header_length_short, compression_type_unknown,
        v2_zero_flag, extl2_alloc_and_zero, extl2_compressed_bitmap, l1_size_huge, l1_too_small,
        virtual_size_2p62, refcount_table_huge,
        // hostile: limits
        qcow2_128t, raw_over_max, raw_gz_over_max, qcow2_over_max,
        // hostile: broken wrappers
        gz_truncated, xz_truncated, zst_truncated, gz_corrupt, gz_trailing_garbage, gz_bad_crc,
        xz_bad_check, zst_bad_checksum,
    }
}

#[test]
fn every_fixture_row_has_a_test_and_every_test_a_row() {
    table().assert_one_test_per_row(matrix::FIXTURE_TESTS);
}

// --- info -----------------------------------------------------------------------------------

fn diskplane_info(img: &Path) -> Value {
    json_of(
        diskplane([OsStr::new("info"), img.as_os_str(), OsStr::new("-o"), OsStr::new("json")]),
        "diskplane info",
    )
}

fn qemu_info(img: &Path) -> Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(img)
        .output()
        .expect("running qemu-img (install qemu-utils)");
    json_of(out, "qemu-img info")
}

/// `diskplane info -o json` of fixture `name` agrees with `qemu-img info` on format, virtual
/// size, cluster size, version, compression type, snapshots and the features qemu reports.
fn assert_info_matches_qemu(name: &str) {
    let img = image(name);
    let ours = diskplane_info(&img);
    let qemu = qemu_info(&img);
    let format = qemu["format"].as_str().expect("qemu format");
    let our_format = ours["format"].as_str().expect("format");
    // qemu-img calls an ISO "raw": it is read as one.
    assert!(our_format == format || (our_format == "iso" && format == "raw"), "{name}: format {ours}");
    assert_eq!(ours["virtual_size"], qemu["virtual-size"], "{name}: virtual size");
    if format != "qcow2" {
        return;
    }
    assert_eq!(ours["cluster_size"], qemu["cluster-size"], "{name}: cluster size");
    let data = &qemu["format-specific"]["data"];
    let version = if data["compat"] == "0.10" { 2 } else { 3 };
    assert_eq!(ours["version"], version, "{name}: version");
    if !data["compression-type"].is_null() {
        assert_eq!(ours["compression_type"], data["compression-type"], "{name}: compression type");
    }
    let snapshots = |v: &Value| -> Vec<(String, String)> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["id"].as_str().unwrap_or("?").to_owned(),
                            s["name"].as_str().unwrap_or("?").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(snapshots(&ours["snapshots"]), snapshots(&qemu["snapshots"]), "{name}: snapshots (id, name)");
    let features: Vec<&str> =
        ours["features"].as_array().expect("features").iter().filter_map(Value::as_str).collect();
    for (qemu_key, ours_name) in [("extended-l2", "extended_l2"), ("lazy-refcounts", "lazy_refcounts")] {
        let on = data[qemu_key].as_bool().unwrap_or(false);
        assert_eq!(features.contains(&ours_name), on, "{name}: feature {ours_name} (features: {features:?})");
    }
}

#[test]
fn info_matches_qemu_img_for_qcow2_v2() {
    assert_info_matches_qemu("qcow2_v2");
}

#[test]
fn info_matches_qemu_img_for_qcow2_v3() {
    assert_info_matches_qemu("qcow2_v3");
}

#[test]
fn info_matches_qemu_img_for_small_and_large_clusters() {
    assert_info_matches_qemu("qcow2_c512");
    assert_info_matches_qemu("qcow2_c2m");
}

#[test]
fn info_matches_qemu_img_for_zstd_compression() {
    assert_info_matches_qemu("qcow2_zstd");
}

#[test]
fn info_matches_qemu_img_for_snapshots() {
    assert_info_matches_qemu("qcow2_snapshots");
}

#[test]
fn info_matches_qemu_img_for_extended_l2_and_lazy_refcounts() {
    assert_info_matches_qemu("qcow2_extl2_c64k");
    assert_info_matches_qemu("qcow2_lazy_refcounts");
}

#[test]
fn info_matches_qemu_img_for_odd_and_huge_sizes() {
    assert_info_matches_qemu("qcow2_odd_size");
    assert_info_matches_qemu("qcow2_1t_sparse");
}

#[test]
fn info_matches_qemu_img_for_raw_and_iso() {
    assert_info_matches_qemu("raw_patterned");
    assert_info_matches_qemu("iso");
}

#[test]
fn info_reports_the_dirty_bit_as_a_feature() {
    let ours = diskplane_info(&image("qcow2_dirty"));
    assert!(ours["features"].as_array().expect("features").contains(&"dirty".into()), "{ours}");
}

#[test]
fn info_of_wrapped_images_names_the_wrapper_and_the_inner_image() {
    let qcow2 = qemu_info(&image("qcow2_v3"));
    for (name, wrapper) in [("qcow2_gz", "gzip"), ("qcow2_xz", "xz"), ("qcow2_zst", "zstd")] {
        let ours = diskplane_info(&image(name));
        assert_eq!(ours["format"], "qcow2", "{name}: {ours}");
        assert_eq!(ours["virtual_size"], qcow2["virtual-size"], "{name}: virtual size");
        assert_eq!(ours["cluster_size"], qcow2["cluster-size"], "{name}: cluster size");
        assert_eq!(ours["compression_wrappers"], serde_json::json!([wrapper]), "{name}: {ours}");
    }
    let raw = diskplane_info(&image("raw_xz2"));
    assert_eq!(raw["format"], "raw", "{raw}");
    assert_eq!(raw["virtual_size"], qemu_info(&image("raw_patterned"))["virtual-size"], "raw_xz2: {raw}");
}

// --- existing outputs -------------------------------------------------------------------------

fn write_pattern(path: &Path, byte: u8, len: u64) {
    let mut file = OpenOptions::new().write(true).create(true).truncate(false).open(path).expect("open");
    let block = vec![byte; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB);
        file.write_all(&block[..n as usize]).expect("write");
        left -= n;
    }
    file.sync_all().expect("sync");
}

/// The sha256 and qemu-img's allocation recorded for `ok` row `name`.
fn ok_expectation(name: &str) -> (&'static str, u64) {
    match &row(name).expect {
        Expect::Ok { sha256: Some(sha), qemu_alloc } => (sha, *qemu_alloc),
        other => panic!("{name}: not an ok row with a sha256: {other:?}"),
    }
}

fn ok_sha(name: &str) -> &'static str {
    ok_expectation(name).0
}

#[test]
fn converting_onto_a_bigger_existing_file_replaces_it() {
    let dir = scratch_dir("existing");
    let out_path = dir.path().join("out.raw");
    write_pattern(&out_path, 0xff, 40 * MIB);

    let out = convert(&image("qcow2_v3"), &out_path, &[]);

    assert!(out.status.success(), "convert failed: {}", stderr(&out));
    assert_eq!(fs::metadata(&out_path).expect("metadata").len(), 16 * MIB, "size of the replaced output");
    assert_eq!(sha256_range(&out_path, 0, None), ok_sha("qcow2_v3"));
    let qemu_alloc = ok_expectation("qcow2_v3").1;
    assert!(allocated(&out_path) <= qemu_alloc + FS_METADATA_SLACK, "the replaced output is not sparse");
}

#[test]
fn a_rejected_image_leaves_an_existing_output_untouched() {
    let dir = scratch_dir("keep");
    let out_path = dir.path().join("out.raw");
    write_pattern(&out_path, 0x5c, 3 * MIB);
    let before = sha256_range(&out_path, 0, None);

    let out = convert(&image("truncated_data"), &out_path, &[]);

    assert!(!out.status.success(), "truncated_data converted");
    assert_eq!(sha256_range(&out_path, 0, None), before, "the existing output was modified");
    assert_eq!(leftovers(dir.path(), &out_path), Vec::<String>::new(), "partial files left behind");
}

// --- block devices ------------------------------------------------------------------------------

/// A loop device over a file, detached on drop.
struct LoopDevice {
    device: PathBuf,
    _backing: tempfile::TempDir,
}

impl LoopDevice {
    /// A loop device of `size` bytes, every byte `fill` (so holes the converter skips show).
    /// `None`, with the reason printed, where loop devices cannot be set up (not root, no
    /// /dev/loop-control in a container, ...).
    fn new(test: &str, size: u64, fill: u8) -> Option<Self> {
        let backing = scratch_dir(&format!("loop-{test}"));
        let file = backing.path().join("disk");
        write_pattern(&file, fill, size);
        let out = match Command::new("losetup").args(["-f", "--show"]).arg(&file).output() {
            Ok(out) => out,
            Err(e) => {
                eprintln!("skipping {test}: cannot run losetup: {e}");
                return None;
            }
        };
        if !out.status.success() {
            eprintln!("skipping {test}: losetup -f failed: {}", stderr(&out).trim());
            return None;
        }
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Some(Self { device, _backing: backing })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

fn device_sha(device: &Path, len: u64) -> String {
    sha256_range(device, 0, Some(len))
}

/// Converts fixture `name` onto a loop device prefilled with 0xa5: the first virtual-size bytes
/// must read exactly as qemu-img's output (holes written as zeros, not skipped).
fn convert_onto_loop_device(test: &str, name: &str, virtual_size: u64) {
    let Some(dev) = LoopDevice::new(test, virtual_size + 4 * MIB, 0xa5) else { return };

    let out = convert(&image(name), &dev.device, &[]);

    assert!(out.status.success(), "{name} onto {}: {}", dev.device.display(), stderr(&out));
    assert_eq!(device_sha(&dev.device, virtual_size), ok_sha(name), "{name}: device contents");
    assert!(dev.device.exists(), "the device node is gone");
}

#[test]
fn qcow2_converts_onto_a_block_device() {
    convert_onto_loop_device("qcow2_onto_loop", "qcow2_v3", 16 * MIB);
}

#[test]
fn compressed_qcow2_with_zero_clusters_converts_onto_a_block_device() {
    convert_onto_loop_device("zero_clusters_onto_loop", "qcow2_zero_clusters_v3", 16 * MIB);
    convert_onto_loop_device("zlib_onto_loop", "qcow2_zlib_mixed", 16 * MIB);
}

#[test]
fn gzip_stream_converts_onto_a_block_device() {
    convert_onto_loop_device("gz_onto_loop", "raw_gz", 8 * MIB);
    convert_onto_loop_device("qcow2_gz_onto_loop", "qcow2_gz", 16 * MIB);
}

fn assert_too_large_for_device(name: &str, out: &Output) {
    let text = stderr(out);
    assert!(!out.status.success(), "{name}: converted onto a device that is too small");
    assert_eq!(out.status.code(), Some(7), "{name}: exit code (7 = too large); stderr: {text}");
    assert_eq!(text.trim_end().lines().count(), 1, "{name}: stderr must be one line: {text:?}");
    let lower = text.to_lowercase();
    assert!(
        ["capacity", "too large", "larger", "exceeds", "do not fit"].iter().any(|w| lower.contains(w)),
        "{name}: error must say the image does not fit: {text:?}"
    );
}

#[test]
fn qcow2_larger_than_the_device_is_refused_before_writing() {
    let Some(dev) = LoopDevice::new("qcow2_too_large_for_loop", 8 * MIB, 0xa5) else { return };
    let before = device_sha(&dev.device, 8 * MIB);

    let out = convert(&image("qcow2_v3"), &dev.device, &[]);

    assert_too_large_for_device("qcow2_v3", &out);
    assert_eq!(device_sha(&dev.device, 8 * MIB), before, "the device was written to before the refusal");
}

/// A compressed stream's size is known only at its end, so part of it may have been written by
/// then: only the refusal is checked.
#[test]
fn raw_stream_larger_than_the_device_is_refused() {
    let Some(dev) = LoopDevice::new("raw_gz_too_large_for_loop", 4 * MIB, 0xa5) else { return };

    let out = convert(&image("raw_gz"), &dev.device, &[]);

    assert_too_large_for_device("raw_gz", &out);
}
