//! Conformance against real images made by `qemu-img` / `qemu-io`: every test reads the whole
//! image with [`Image::read_at`] and again through [`Image::map`] (data runs read from the data
//! source, as the converter does) and compares both with `qemu-img convert -O raw`.
//!
//! Each test is skipped, with a message, when qemu-img or qemu-io is not installed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::Qcow2Image;
use crate::image::{Image, SegmentKind};
use crate::{ErrorKind, OpenOptions};

const MIB: u64 = 1 << 20;

/// A temporary directory with qemu tools, or `None` (and a message) when they are absent.
struct Qemu {
    dir: tempfile::TempDir,
}

impl Qemu {
    fn new(test: &str) -> Option<Qemu> {
        let found = ["qemu-img", "qemu-io"]
            .iter()
            .all(|tool| Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()));
        if !found {
            eprintln!("skipping {test}: qemu-img / qemu-io not installed");
            return None;
        }
        Some(Qemu { dir: tempfile::tempdir().expect("tempdir") })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = Command::new(tool).args(args).output().expect("run qemu tool");
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // qemu-io reports failed commands on stdout with exit status 0.
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!stdout.contains("failed"), "{tool} {args:?}: {stdout}");
    }

    /// `qemu-img create -f qcow2 -o OPTIONS name SIZE`.
    fn create(&self, name: &str, options: &str, size: u64) -> PathBuf {
        let path = self.path(name);
        let p = path.to_str().expect("utf-8 path");
        let size = size.to_string();
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if !options.is_empty() {
            args.extend(["-o", options]);
        }
        args.extend([p, &size]);
        self.run("qemu-img", &args);
        path
    }

    /// Runs qemu-io commands (`write -P 0xab 0 64k`, ...) on the image.
    fn io(&self, path: &Path, format: &str, commands: &[&str]) {
        let mut args = vec!["-f", format];
        for c in commands {
            args.extend(["-c", c]);
        }
        args.push(path.to_str().expect("utf-8 path"));
        self.run("qemu-io", &args);
    }

    /// `qemu-img convert -O raw`, read back.
    fn to_raw(&self, path: &Path) -> Vec<u8> {
        let raw = self.path("expected.raw");
        self.run(
            "qemu-img",
            &["convert", "-O", "raw", path.to_str().expect("utf-8"), raw.to_str().expect("utf-8")],
        );
        std::fs::read(raw).expect("read raw")
    }
}

fn open(path: &Path) -> Qcow2Image {
    let file = File::open(path).expect("open image file");
    Qcow2Image::open(Arc::new(file), &OpenOptions::default()).expect("open qcow2")
}

/// Compares `read_at` and the map-driven reconstruction with qemu-img's raw output.
fn assert_matches_qemu(qemu: &Qemu, path: &Path) -> Qcow2Image {
    let expected = qemu.to_raw(path);
    let image = open(path);
    assert_eq!(image.virtual_size(), expected.len() as u64);
    let mut got = vec![0u8; expected.len()];
    image.read_at(&mut got, 0).expect("read_at");
    assert_same(&got, &expected, "read_at");
    for window in [u64::MAX, MIB, 12345] {
        assert_same(&via_map(&image, window), &expected, &format!("map with windows of {window}"));
    }
    image
}

/// Rebuilds the guest bytes as the converter does: data runs straight from the data source,
/// encoded runs through `read_at`, zero and unallocated runs left zero.
fn via_map(image: &Qcow2Image, window: u64) -> Vec<u8> {
    let mut out = vec![0u8; image.virtual_size() as usize];
    let mut offset = 0;
    while offset < image.virtual_size() {
        let seg = image.map(offset, window).expect("map");
        assert!(seg.offset == offset && seg.len > 0 && seg.len <= window, "bad segment {seg:?}");
        let dst = &mut out[offset as usize..(offset + seg.len) as usize];
        match seg.kind {
            SegmentKind::Data { host } => image.data_source().read_exact_at(dst, host).expect("read data"),
            SegmentKind::Encoded => image.read_at(dst, offset).expect("read encoded"),
            SegmentKind::Zero | SegmentKind::Unallocated => {}
        }
        offset += seg.len;
    }
    out
}

fn assert_same(got: &[u8], expected: &[u8], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at guest offset {i}: got {:#04x}, qemu {:#04x}",
            got[i], expected[i]
        );
    }
}

fn kinds(image: &Qcow2Image) -> Vec<SegmentKind> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < image.virtual_size() {
        let seg = image.map(offset, u64::MAX).expect("map");
        out.push(match seg.kind {
            SegmentKind::Data { .. } => SegmentKind::Data { host: 0 },
            other => other,
        });
        offset += seg.len;
    }
    out
}

/// Pattern writes at awkward places: unaligned, across clusters, near the end.
const SCATTERED_WRITES: &[&str] = &[
    "write -P 0xab 0 64k",
    "write -P 0x11 100k 3k",
    "write -P 0x22 1000k 300k",
    "write -P 0x33 3071k 1k",
    "write -P 0x44 2048k 512",
];

#[test]
fn qemu_v2_image_with_64k_clusters_matches_qemu_img() {
    let Some(q) = Qemu::new("qemu_v2_image_with_64k_clusters_matches_qemu_img") else { return };
    let img = q.create("v2.qcow2", "compat=0.10", 3 * MIB);
    q.io(&img, "qcow2", SCATTERED_WRITES);
    let image = assert_matches_qemu(&q, &img);
    assert_eq!(image.info().version, Some(2));
}

#[test]
fn qemu_v3_images_with_every_cluster_size_class_match_qemu_img() {
    let Some(q) = Qemu::new("qemu_v3_images_with_every_cluster_size_class_match_qemu_img") else { return };
    for cluster_size in ["512", "2k", "64k", "2M"] {
        let img =
            q.create(&format!("c{cluster_size}.qcow2"), &format!("cluster_size={cluster_size}"), 3 * MIB);
        q.io(&img, "qcow2", SCATTERED_WRITES);
        let image = assert_matches_qemu(&q, &img);
        assert_eq!(image.info().version, Some(3));
    }
}

#[test]
fn qemu_odd_virtual_size_matches_qemu_img() {
    let Some(q) = Qemu::new("qemu_odd_virtual_size_matches_qemu_img") else { return };
    let img = q.create("odd.qcow2", "cluster_size=64k", 1_000_000);
    q.io(&img, "qcow2", &["write -P 0x5c 983040 16896"]);
    assert_matches_qemu(&q, &img);
}

/// A raw source with compressible, incompressible and zero parts (qemu stores clusters that do
/// not shrink uncompressed, so the result mixes compressed and plain data clusters).
fn mixed_raw(q: &Qemu, size: usize) -> PathBuf {
    let mut data = vec![0u8; size];
    let mut x: u32 = 0x1234_5678;
    for (i, b) in data.iter_mut().enumerate() {
        *b = match (i / 65536) % 4 {
            0 => (i % 7) as u8,
            1 => {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
            2 => 0,
            _ => (i / 512) as u8,
        };
    }
    let path = q.path("source.raw");
    std::fs::write(&path, data).expect("write raw");
    path
}

fn convert_compressed(q: &Qemu, source: &Path, name: &str, options: &str) -> PathBuf {
    let out = q.path(name);
    q.run(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            options,
            source.to_str().expect("utf-8"),
            out.to_str().expect("utf-8"),
        ],
    );
    out
}

#[test]
fn qemu_zlib_compressed_image_matches_qemu_img() {
    let Some(q) = Qemu::new("qemu_zlib_compressed_image_matches_qemu_img") else { return };
    let raw = mixed_raw(&q, 3 * MIB as usize + 4096);
    for cluster_size in ["512", "64k", "2M"] {
        let img = convert_compressed(
            &q,
            &raw,
            &format!("z{cluster_size}.qcow2"),
            &format!("cluster_size={cluster_size}"),
        );
        let image = assert_matches_qemu(&q, &img);
        assert!(kinds(&image).contains(&SegmentKind::Encoded), "{cluster_size}: no compressed clusters");
        assert_eq!(image.info().compression_type.as_deref(), Some("zlib"));
    }
}

#[test]
fn qemu_zstd_compressed_image_matches_qemu_img() {
    let Some(q) = Qemu::new("qemu_zstd_compressed_image_matches_qemu_img") else { return };
    let raw = mixed_raw(&q, 3 * MIB as usize);
    for cluster_size in ["2k", "64k", "2M"] {
        let options = format!("cluster_size={cluster_size},compression_type=zstd");
        let img = convert_compressed(&q, &raw, &format!("zs{cluster_size}.qcow2"), &options);
        let image = assert_matches_qemu(&q, &img);
        assert!(kinds(&image).contains(&SegmentKind::Encoded), "{cluster_size}: no compressed clusters");
        assert_eq!(image.info().compression_type.as_deref(), Some("zstd"));
    }
}

#[test]
fn qemu_extended_l2_subcluster_writes_match_qemu_img() {
    let Some(q) = Qemu::new("qemu_extended_l2_subcluster_writes_match_qemu_img") else { return };
    for cluster_size in ["64k", "2M"] {
        let img = q.create(
            &format!("ext{cluster_size}.qcow2"),
            &format!("cluster_size={cluster_size},extended_l2=on"),
            4 * MIB,
        );
        q.io(
            &img,
            "qcow2",
            &[
                "write -P 0xa1 4k 4k",
                "write -P 0xa2 70k 6k",
                "write -P 0xa3 130k 2k",
                "write -z 140k 8k",
                "write -P 0xa4 1M 1M",
                "write -z 1200k 4k",
                "write -P 0xa5 3M 100k",
            ],
        );
        let image = assert_matches_qemu(&q, &img);
        assert!(image.info().features.contains(&"extended_l2".to_owned()));
    }
}

#[test]
fn qemu_compressed_writes_with_extended_l2_and_zstd_match_qemu_img() {
    let Some(q) = Qemu::new("qemu_compressed_writes_with_extended_l2_and_zstd_match_qemu_img") else {
        return;
    };
    let img = q.create("extc.qcow2", "cluster_size=64k,extended_l2=on,compression_type=zstd", 2 * MIB);
    q.io(&img, "qcow2", &["write -c -P 0x61 0 64k", "write -c -P 0x62 64k 64k", "write -P 0x63 200k 4k"]);
    let image = assert_matches_qemu(&q, &img);
    assert_eq!(image.map(0, u64::MAX).ok().map(|s| (s.len, s.kind)), Some((128 << 10, SegmentKind::Encoded)));
}

#[test]
fn qemu_zero_clusters_match_qemu_img() {
    let Some(q) = Qemu::new("qemu_zero_clusters_match_qemu_img") else { return };
    let img = q.create("zero.qcow2", "", 4 * MIB);
    q.io(&img, "qcow2", &["write -P 0x77 0 2M", "write -z 64k 1M", "write -z 3M 128k"]);
    let image = assert_matches_qemu(&q, &img);
    assert!(kinds(&image).contains(&SegmentKind::Zero));
}

#[test]
fn qemu_snapshots_are_listed_and_the_active_layer_is_read() {
    let Some(q) = Qemu::new("qemu_snapshots_are_listed_and_the_active_layer_is_read") else { return };
    let img = q.create("snap.qcow2", "", 2 * MIB);
    let p = img.to_str().expect("utf-8");
    q.io(&img, "qcow2", &["write -P 0x01 0 1M"]);
    q.run("qemu-img", &["snapshot", "-c", "first", p]);
    q.io(&img, "qcow2", &["write -P 0x02 512k 1M"]);
    q.run("qemu-img", &["snapshot", "-c", "second one", p]);
    q.io(&img, "qcow2", &["write -P 0x03 0 4k"]);
    let image = assert_matches_qemu(&q, &img);
    let snapshots = image.info().snapshots;
    let names: Vec<_> = snapshots.iter().map(|s| (s.id.as_str(), s.name.as_str(), s.virtual_size)).collect();
    assert_eq!(names, vec![("1", "first", 2 * MIB), ("2", "second one", 2 * MIB)]);
    let mut head = [0u8; 8];
    image.read_at(&mut head, 0).expect("read");
    assert_eq!(head, [0x03; 8]);
}

#[test]
fn qemu_preallocated_metadata_image_matches_qemu_img() {
    let Some(q) = Qemu::new("qemu_preallocated_metadata_image_matches_qemu_img") else { return };
    let img = q.create("prealloc.qcow2", "preallocation=metadata", 3 * MIB);
    q.io(&img, "qcow2", &["write -P 0x99 1M 100k"]);
    let image = assert_matches_qemu(&q, &img);
    assert_eq!(kinds(&image), vec![SegmentKind::Data { host: 0 }]);
}

#[test]
fn qemu_lazy_refcounts_image_is_read_and_reported() {
    let Some(q) = Qemu::new("qemu_lazy_refcounts_image_is_read_and_reported") else { return };
    let img = q.create("lazy.qcow2", "lazy_refcounts=on", 2 * MIB);
    q.io(&img, "qcow2", SCATTERED_WRITES.get(..2).unwrap_or_default());
    let image = assert_matches_qemu(&q, &img);
    assert!(image.info().features.contains(&"lazy_refcounts".to_owned()));
}

#[test]
fn qemu_image_with_backing_file_is_denied() {
    let Some(q) = Qemu::new("qemu_image_with_backing_file_is_denied") else { return };
    let base = q.create("base.qcow2", "", MIB);
    let overlay = q.path("overlay.qcow2");
    let (b, o) = (base.to_str().expect("utf-8"), overlay.to_str().expect("utf-8"));
    q.run("qemu-img", &["create", "-q", "-f", "qcow2", "-b", b, "-F", "qcow2", o]);
    let file = File::open(&overlay).expect("open");
    let err = Qcow2Image::open(Arc::new(file), &OpenOptions::default()).expect_err("denied");
    assert_eq!(err.kind(), ErrorKind::Denied);
    assert_eq!(err.to_string(), format!("image has a backing file \"{b}\"; backing files are not allowed"));
}

#[test]
fn qemu_truncated_image_is_rejected_where_qemu_reads_zeros() {
    let Some(q) = Qemu::new("qemu_truncated_image_is_rejected_where_qemu_reads_zeros") else { return };
    let img = q.create("trunc.qcow2", "", 2 * MIB);
    q.io(&img, "qcow2", &["write -P 0x55 0 1M"]);
    let len = std::fs::metadata(&img).expect("stat").len();
    let file = std::fs::OpenOptions::new().write(true).open(&img).expect("open");
    file.set_len(len - 4096).expect("truncate");
    let image = open(&img);
    let mut buf = vec![0u8; MIB as usize];
    let err = image.read_at(&mut buf, 0).err().map(|e| (e.kind(), e.to_string()));
    assert!(
        matches!(&err, Some((ErrorKind::InvalidImage, m)) if m.starts_with("image is truncated")),
        "{err:?}"
    );
}

/// Sets incompatible feature `bits` in the header of the image at `path`.
fn set_incompatible_bits(path: &Path, bits: u64) {
    let mut img = std::fs::read(path).expect("read image");
    let old = u64::from_be_bytes(img[72..80].try_into().expect("8 bytes"));
    img[72..80].copy_from_slice(&(old | bits).to_be_bytes());
    std::fs::write(path, img).expect("write image");
}

#[test]
fn qemu_dirty_and_corrupt_images_are_read_and_reported() {
    let Some(q) = Qemu::new("qemu_dirty_and_corrupt_images_are_read_and_reported") else { return };
    let img = q.create("corrupt.qcow2", "lazy_refcounts=on", 2 * MIB);
    q.io(&img, "qcow2", SCATTERED_WRITES.get(..3).unwrap_or_default());
    set_incompatible_bits(&img, 0b11);
    let image = assert_matches_qemu(&q, &img);
    assert_eq!(image.info().features, vec!["lazy_refcounts", "dirty", "corrupt"]);
}

#[test]
fn qemu_image_with_bitmaps_is_read_and_reported() {
    let Some(q) = Qemu::new("qemu_image_with_bitmaps_is_read_and_reported") else { return };
    let img = q.create("bitmaps.qcow2", "", 2 * MIB);
    q.run("qemu-img", &["bitmap", "--add", img.to_str().expect("utf-8"), "b0"]);
    q.io(&img, "qcow2", SCATTERED_WRITES.get(..2).unwrap_or_default());
    let image = assert_matches_qemu(&q, &img);
    assert!(image.info().features.contains(&"bitmaps".to_owned()), "{:?}", image.info().features);
}

#[test]
fn qemu_sparse_1_tib_image_maps_in_well_under_a_second() {
    let Some(q) = Qemu::new("qemu_sparse_1_tib_image_maps_in_well_under_a_second") else { return };
    let size = 1u64 << 40;
    let img = q.create("huge.qcow2", "", size);
    q.io(&img, "qcow2", &["write -P 0x31 0 64k", "write -P 0x32 512G 1M", "write -P 0x33 1048575M 1M"]);
    let image = open(&img);
    let started = std::time::Instant::now();
    let mut segments = Vec::new();
    let mut offset = 0;
    while offset < size {
        let seg = image.map(offset, u64::MAX).expect("map");
        offset += seg.len;
        segments.push(seg);
    }
    let elapsed = started.elapsed();
    assert!(elapsed < std::time::Duration::from_millis(500), "mapping 1 TiB took {elapsed:?}");
    let data: u64 = segments.iter().filter(|s| s.kind.has_data()).map(|s| s.len).sum();
    assert_eq!(data, (64 << 10) + 2 * MIB);
    let mut tail = vec![0u8; MIB as usize];
    image.read_at(&mut tail, size - MIB).expect("read");
    assert!(tail.iter().all(|&b| b == 0x33));
}
