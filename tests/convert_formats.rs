//! `diskplane convert` and `diskplane info` on VMDK, VHD (vpc), VHDX and VDI images against
//! qemu-img, over the matrix that `fixtures/make-formats.sh` generates (hostile patches are
//! documented in `fixtures/formats_patch.py`), with the row checks of `peers/fixture_table.rs`
//! that `convert_fixtures.rs` uses too:
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

#[macro_use]
#[allow(dead_code)]
#[path = "peers/fixture_table.rs"]
mod fixture_table;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use fixture_table::{Expect, Table, diskplane, json_of};

const MAKE_FORMATS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/make-formats.sh");

/// `fixtures/make-formats.sh`'s images in `target/fixtures-formats` (or
/// `$DISKPLANE_FORMAT_FIXTURES`).
fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| Table::generate("DISKPLANE_FORMAT_FIXTURES", "fixtures-formats", MAKE_FORMATS))
}

/// The whole check for one row of the matrix (see `fixture_table`); every `ok` row here has a
/// sha256.
fn check_fixture(name: &str) {
    let no_regions = |name: &str, _: &Path| panic!("{name}: skip-sha rows are not used for these formats");
    table().check(name, "formats", &no_regions);
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
    table().assert_one_test_per_row(matrix::FIXTURE_TESTS);
}

// --- info -----------------------------------------------------------------------------------

/// `diskplane info -o json` of every `ok` row agrees with `qemu-img info -f FORMAT` (the
/// format is the name's prefix) on format, virtual size and, where qemu reports one, cluster size.
#[test]
fn info_matches_qemu_img_for_every_valid_image() {
    for row in table().rows().iter().filter(|r| matches!(r.expect, Expect::Ok { .. })) {
        let name = &row.name;
        let format = name.split('_').next().expect("prefix");
        let img = table().image(name);
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
        let img = table().image(name);
        json_of(diskplane([OsStr::new("info"), img.as_os_str(), OsStr::new("-o"), OsStr::new("json")]), name)
    };
    assert_eq!(info("vmdk_stream")["format_specific"]["create_type"], "streamOptimized");
    assert_eq!(info("vmdk_sparse")["format_specific"]["create_type"], "monolithicSparse");
    assert_eq!(info("vpc_creator_win")["format_specific"]["size_from"], "current_size");
    assert_eq!(info("vpc_creator_vpc")["format_specific"]["size_from"], "geometry");
    assert_eq!(info("vpc_fixed")["format_specific"]["disk_type"], "fixed");
    assert_eq!(info("vdi_static")["format_specific"]["image_type"], "static");
}
