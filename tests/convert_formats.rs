//! `diskplane convert` and `diskplane info` on VMDK, VHD (vpc), VHDX and VDI images against
//! qemu-img, over the matrix that `fixtures/make-formats.sh` generates (hostile patches are
//! documented in `fixtures/formats_patch.py`). Same approach as `convert_fixtures.rs`:
//!
//! - `ok` rows: exit 0, the output's sha256 equals that of `qemu-img convert -f FORMAT -O raw`
//!   (recorded at generation time), the output occupies no more disk than qemu-img's did (holes
//!   stay holes), and nothing but the output is left in the directory;
//! - `reject` rows: the expected exit code, exactly one non-empty line on stderr containing the
//!   expected words, and no output (nor partial file) left behind.
//!
//! Then `info -o json` agrees with `qemu-img info -f FORMAT` on format and virtual size.
//!
//! Fixtures are generated once into `target/fixtures-formats` (or `$DISKPLANE_FORMAT_FIXTURES`)
//! under `flock`, since nextest runs every test in its own process.

#[allow(dead_code)]
#[path = "peers/common.rs"]
mod common;
use common::sha256_file;
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

const DISKPLANE: &str = env!("CARGO_BIN_EXE_diskplane");
const MAKE_FORMATS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/make-formats.sh");
/// Allocation is compared with qemu-img's allowing for filesystem metadata (one extent-tree
/// block more or less, as in `convert_fixtures.rs`).
const FS_METADATA_SLACK: u64 = 8 << 10;

#[derive(Debug, Clone)]
enum Expect {
    Ok { sha256: String, qemu_alloc: u64 },
    Reject { words: Vec<String>, exit_codes: Vec<i32> },
}

#[derive(Debug, Clone)]
struct Row {
    name: String,
    expect: Expect,
}

fn fixtures_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = match std::env::var_os("DISKPLANE_FORMAT_FIXTURES") {
            Some(dir) => PathBuf::from(dir),
            None => {
                Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join("fixtures-formats")
            }
        };
        let lock = dir.with_extension("lock");
        let out = Command::new("flock")
            .arg(&lock)
            .arg("bash")
            .arg(MAKE_FORMATS)
            .arg(&dir)
            .output()
            .expect("running flock (util-linux) to generate fixtures");
        assert!(
            out.status.success(),
            "fixtures/make-formats.sh {} failed ({}):\n{}{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn rows() -> &'static [Row] {
    static ROWS: OnceLock<Vec<Row>> = OnceLock::new();
    ROWS.get_or_init(|| {
        let path = fixtures_dir().join("expected.tsv");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(parse_row).collect()
    })
}

fn parse_row(line: &str) -> Row {
    let cols: Vec<&str> = line.split('\t').collect();
    let [name, expect, detail, qemu_alloc, exit, _args] = cols[..] else {
        panic!("expected.tsv: want 6 tab-separated columns: {line:?}");
    };
    let alternatives = |s: &str| s.split('|').map(str::to_owned).collect::<Vec<_>>();
    let expect = match expect {
        "ok" => Expect::Ok {
            sha256: detail.to_owned(),
            qemu_alloc: qemu_alloc.parse().unwrap_or_else(|_| panic!("bad qemu_alloc in {line:?}")),
        },
        "reject" => Expect::Reject {
            words: alternatives(detail),
            exit_codes: alternatives(exit)
                .iter()
                .map(|c| c.parse().unwrap_or_else(|_| panic!("bad exit code in {line:?}")))
                .collect(),
        },
        other => panic!("expected.tsv: unknown expectation {other:?} in {line:?}"),
    };
    Row { name: name.to_owned(), expect }
}

fn row(name: &str) -> &'static Row {
    rows().iter().find(|r| r.name == name).unwrap_or_else(|| {
        panic!("no row {name:?} in expected.tsv: fixtures/make-formats.sh and this test are out of sync")
    })
}

fn image(name: &str) -> PathBuf {
    fixtures_dir().join(format!("{name}.img"))
}

fn scratch_dir(name: &str) -> tempfile::TempDir {
    let parent = fixtures_dir().parent().expect("fixtures dir has a parent");
    tempfile::Builder::new().prefix(&format!("formats-{name}-")).tempdir_in(parent).expect("tempdir")
}

fn diskplane<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(DISKPLANE).args(args).output().expect("running diskplane")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn leftovers(dir: &Path, keep: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p != keep)
        .map(|p| p.display().to_string())
        .collect()
}

/// The whole check for one row of the matrix.
fn check_fixture(name: &str) {
    let row = row(name);
    let dir = scratch_dir(name);
    let out_path = dir.path().join("out.raw");
    let out = diskplane([OsStr::new("convert"), image(name).as_os_str(), out_path.as_os_str()]);
    match &row.expect {
        Expect::Ok { sha256, qemu_alloc } => {
            assert!(out.status.success(), "{name}: convert failed ({}): {}", out.status, stderr(&out));
            assert_eq!(&sha256_file(&out_path), sha256, "{name}: output differs from qemu-img's");
            let ours = fs::metadata(&out_path).expect("metadata").blocks() * 512;
            assert!(
                ours <= qemu_alloc + FS_METADATA_SLACK,
                "{name}: output occupies {ours} bytes on disk, qemu-img's only {qemu_alloc} (holes missed?)"
            );
            let left = leftovers(dir.path(), &out_path);
            assert!(left.is_empty(), "{name}: files left next to the output: {left:?}");
        }
        Expect::Reject { words, exit_codes } => {
            let text = stderr(&out);
            assert!(!out.status.success(), "{name}: converted, but must be refused ({words:?})");
            let code = out.status.code();
            assert!(
                code.is_some_and(|c| exit_codes.contains(&c)),
                "{name}: exit code {code:?}, want one of {exit_codes:?}; stderr: {text}"
            );
            let line = text.strip_suffix('\n').unwrap_or(&text);
            assert!(
                !line.trim().is_empty() && !line.contains('\n'),
                "{name}: stderr must be exactly one non-empty line, got {text:?}"
            );
            let lower = line.to_lowercase();
            assert!(
                words.iter().any(|w| lower.contains(w.as_str())),
                "{name}: error line must mention one of {words:?}: {line:?}"
            );
            assert!(!out_path.exists(), "{name}: rejected, but {} exists", out_path.display());
            let left = leftovers(dir.path(), &out_path);
            assert!(left.is_empty(), "{name}: partial files left behind: {left:?}");
        }
    }
}

macro_rules! fixture_tests {
    ($($name:ident),* $(,)?) => {
        pub(super) const FIXTURE_TESTS: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                super::check_fixture(stringify!($name));
            }
        )*
    };
}

/// The matrix, in the order of `fixtures/make-formats.sh`.
mod matrix {
    fixture_tests! {
        // VMDK
        vmdk_sparse, vmdk_sparse_odd, vmdk_stream, vmdk_stream_odd, vmdk_stream_gd_at_end,
        vmdk_empty, vmdk_stream_empty, vmdk_zeroed_grain,
        vmdk_descriptor_passwd, vmdk_descriptor_bare, vmdk_monolithic_flat, vmdk_two_gb_sparse, vmdk_parent,
        vmdk_gd_entry_past_eof, vmdk_gd_past_eof, vmdk_grain_past_eof, vmdk_stream_gd_past_eof,
        vmdk_capacity_huge, vmdk_stream_bad_footer, vmdk_stream_garbage, vmdk_stream_marker_huge,
        vmdk_cowd,
        // VHD
        vpc_dynamic, vpc_fixed, vpc_dynamic_force, vpc_fixed_force, vpc_empty, vpc_creator_win,
        vpc_creator_vpc, vpc_fixed_creator_win,
        vpc_differencing, vpc_bad_checksum, vpc_bat_past_eof, vpc_block_past_eof, vpc_too_large,
        // VHDX
        vhdx_dynamic, vhdx_fixed, vhdx_fixed_present, vhdx_block1m_odd, vhdx_empty,
        vhdx_parent, vhdx_log_dirty, vhdx_bat_past_eof, vhdx_bad_headers, vhdx_size_huge,
        // VDI
        vdi_dynamic, vdi_static, vdi_odd, vdi_empty, vdi_size_odd,
        vdi_parent, vdi_bmap_past_eof, vdi_block_past_eof, vdi_size_huge,
    }
}

#[test]
fn every_fixture_row_has_a_test_and_every_test_a_row() {
    let in_tsv: BTreeSet<&str> = rows().iter().map(|r| r.name.as_str()).collect();
    let in_tests: BTreeSet<&str> = matrix::FIXTURE_TESTS.iter().copied().collect();
    let untested: Vec<_> = in_tsv.difference(&in_tests).collect();
    let missing: Vec<_> = in_tests.difference(&in_tsv).collect();
    assert!(untested.is_empty(), "rows of expected.tsv without a test in `matrix`: {untested:?}");
    assert!(missing.is_empty(), "tests in `matrix` without a row in expected.tsv: {missing:?}");
    assert_eq!(in_tsv.len(), rows().len(), "duplicate row names in expected.tsv");
}

// --- info -----------------------------------------------------------------------------------

fn json_of(output: Output, what: &str) -> Value {
    assert!(output.status.success(), "{what} failed ({}): {}", output.status, stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e})"))
}

/// `diskplane info -o json` of every `ok` row agrees with `qemu-img info -f FORMAT` (the
/// format is the name's prefix) on format, virtual size and, where qemu reports one, cluster size.
#[test]
fn info_matches_qemu_img_for_every_valid_image() {
    for row in rows().iter().filter(|r| matches!(r.expect, Expect::Ok { .. })) {
        let name = &row.name;
        let format = name.split('_').next().expect("prefix");
        let img = image(name);
        let ours = json_of(
            diskplane([OsStr::new("info"), img.as_os_str(), OsStr::new("-o"), OsStr::new("json")]),
            "diskplane info",
        );
        let qemu = json_of(
            Command::new("qemu-img")
                .args(["info", "-f", format, "--output=json"])
                .arg(&img)
                .output()
                .expect("running qemu-img (install qemu-utils)"),
            "qemu-img info",
        );
        assert_eq!(ours["format"], format, "{name}: {ours}");
        assert_eq!(ours["virtual_size"], qemu["virtual-size"], "{name}: virtual size");
        if !qemu["cluster-size"].is_null() {
            assert_eq!(ours["cluster_size"], qemu["cluster-size"], "{name}: cluster size");
        }
    }
}

#[test]
fn info_names_the_vmdk_subformat_and_the_vhd_size_rule() {
    let info = |name: &str| {
        let img = image(name);
        json_of(diskplane([OsStr::new("info"), img.as_os_str(), OsStr::new("-o"), OsStr::new("json")]), name)
    };
    assert_eq!(info("vmdk_stream")["format_specific"]["create_type"], "streamOptimized");
    assert_eq!(info("vmdk_sparse")["format_specific"]["create_type"], "monolithicSparse");
    assert_eq!(info("vpc_creator_win")["format_specific"]["size_from"], "current_size");
    assert_eq!(info("vpc_creator_vpc")["format_specific"]["size_from"], "geometry");
    assert_eq!(info("vpc_fixed")["format_specific"]["disk_type"], "fixed");
    assert_eq!(info("vdi_static")["format_specific"]["image_type"], "static");
}
