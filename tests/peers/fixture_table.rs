//! The fixture-table harness that `convert_fixtures.rs` and `convert_formats.rs` share: a
//! script under `fixtures/` generates images with qemu-img and writes `expected.tsv`, one row an
//! image; each row becomes a test that converts the image with `diskplane convert` and checks
//! the result against the row.
//!
//! - `ok` rows: exit 0, the output's sha256 equals that of `qemu-img convert -O raw` (recorded
//!   at generation time; `skip-sha` rows are checked by the caller, region by region), the
//!   output occupies no more disk than qemu-img's did, and nothing but the output is left in
//!   the directory;
//! - `reject` rows: one of the expected exit codes, exactly one non-empty line on stderr
//!   containing one of the expected words, and no output (nor partial or scratch file) left
//!   behind.
//!
//! Fixtures are generated once into the target dir (or a directory named by an environment
//! variable) under `flock`, since nextest runs every test in its own process; the scripts
//! themselves skip the work when their output is current.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test.
pub const DISKPLANE: &str = env!("CARGO_BIN_EXE_diskplane");
/// Allocation is compared with qemu-img's allowing for filesystem metadata: the same extents can
/// occupy one more 4 KiB block (an ext4 extent-tree block) from one write pattern to another.
pub const FS_METADATA_SLACK: u64 = 8 << 10;

/// One line of `expected.tsv`: `name expect detail qemu_alloc exit args`, tab-separated.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub expect: Expect,
    /// Extra arguments for `diskplane convert` (`-` for none).
    pub args: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum Expect {
    /// Converts to exactly qemu-img's output; `sha256` is `None` for `skip-sha` rows.
    Ok { sha256: Option<String>, qemu_alloc: u64 },
    /// Refused: one of `exit_codes`, an error line containing one of `words`.
    Reject { words: Vec<String>, exit_codes: Vec<i32> },
}

/// A generated fixture directory and its parsed `expected.tsv`.
pub struct Table {
    dir: PathBuf,
    rows: Vec<Row>,
    /// The generating script, named in messages about rows that are missing.
    script: String,
}

impl Table {
    /// Runs `script DIR` under `flock DIR.lock`, where DIR is `$env_var` or `target/default_dir`,
    /// and reads `DIR/expected.tsv`.
    pub fn generate(env_var: &str, default_dir: &str, script: &str) -> Table {
        let dir = match std::env::var_os(env_var) {
            Some(dir) => PathBuf::from(dir),
            None => Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target dir").join(default_dir),
        };
        let lock = dir.with_extension("lock");
        let out = Command::new("flock")
            .arg(&lock)
            .arg("bash")
            .arg(script)
            .arg(&dir)
            .output()
            .expect("running flock (util-linux) to generate fixtures");
        assert!(
            out.status.success(),
            "{script} {} failed ({}):\n{}{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.join("expected.tsv");
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let rows = text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).map(parse_row).collect();
        let script =
            Path::new(script).file_name().map_or(script.into(), |n| n.to_string_lossy().into_owned());
        Table { dir, rows, script }
    }

    /// The directory holding the images.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    pub fn row(&self, name: &str) -> &Row {
        self.rows.iter().find(|r| r.name == name).unwrap_or_else(|| {
            panic!("no row {name:?} in expected.tsv: fixtures/{} and this test are out of sync", self.script)
        })
    }

    /// The image of row `name`.
    pub fn image(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.img"))
    }

    /// A scratch directory on the fixtures' filesystem, so allocation compares with qemu-img's.
    pub fn scratch_dir(&self, prefix: &str, name: &str) -> tempfile::TempDir {
        let parent = self.dir.parent().expect("fixtures dir has a parent");
        tempfile::Builder::new().prefix(&format!("{prefix}-{name}-")).tempdir_in(parent).expect("tempdir")
    }

    /// The whole check for row `name` (see the module docs). `regions` checks the output of a
    /// `skip-sha` row.
    pub fn check(&self, name: &str, prefix: &str, regions: &dyn Fn(&str, &Path)) {
        let row = self.row(name);
        let dir = self.scratch_dir(prefix, name);
        let out_path = dir.path().join("out.raw");
        let out = convert(&self.image(name), &out_path, &row.args);
        match &row.expect {
            Expect::Ok { sha256, qemu_alloc } => {
                assert!(out.status.success(), "{name}: convert failed ({}): {}", out.status, stderr(&out));
                match sha256 {
                    Some(want) => {
                        let len = fs::metadata(&out_path).expect("metadata").len();
                        assert_eq!(
                            &sha256_range(&out_path, 0, None),
                            want,
                            "{name}: output ({len} bytes) differs from qemu-img's"
                        );
                    }
                    None => regions(name, &out_path),
                }
                let ours = allocated(&out_path);
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
                assert!(left.is_empty(), "{name}: partial or scratch files left behind: {left:?}");
            }
        }
    }

    /// Fails unless the rows and the `tests` (one per row, named after it) match one to one.
    pub fn assert_one_test_per_row(&self, tests: &[&str]) {
        let in_tsv: BTreeSet<&str> = self.rows.iter().map(|r| r.name.as_str()).collect();
        let in_tests: BTreeSet<&str> = tests.iter().copied().collect();
        let untested: Vec<_> = in_tsv.difference(&in_tests).collect();
        let missing: Vec<_> = in_tests.difference(&in_tsv).collect();
        assert!(untested.is_empty(), "rows of expected.tsv without a test in `matrix`: {untested:?}");
        assert!(missing.is_empty(), "tests in `matrix` without a row in expected.tsv: {missing:?}");
        assert_eq!(in_tsv.len(), self.rows.len(), "duplicate row names in expected.tsv");
    }
}

/// Parses one line of `expected.tsv`.
pub fn parse_row(line: &str) -> Row {
    let cols: Vec<&str> = line.split('\t').collect();
    let [name, expect, detail, qemu_alloc, exit, args] = cols[..] else {
        panic!("expected.tsv: want 6 tab-separated columns: {line:?}");
    };
    let alternatives = |s: &str| s.split('|').map(str::to_owned).collect::<Vec<_>>();
    let expect = match expect {
        "ok" => Expect::Ok {
            sha256: (detail != "skip-sha").then(|| detail.to_owned()),
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
    let args = if args == "-" { Vec::new() } else { args.split(' ').map(str::to_owned).collect() };
    Row { name: name.to_owned(), expect, args }
}

/// One `#[test]` per fixture row, named after it, plus the list `FIXTURE_TESTS` for
/// [`Table::assert_one_test_per_row`]. Each test calls the including file's `check_fixture`.
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

pub fn diskplane<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(DISKPLANE).args(args).output().expect("running diskplane")
}

/// `diskplane convert IMG OUT EXTRA...`.
pub fn convert(img: &Path, out: &Path, extra: &[String]) -> Output {
    let mut args: Vec<OsString> = vec!["convert".into(), img.into(), out.into()];
    args.extend(extra.iter().map(OsString::from));
    diskplane(args)
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The JSON a successful command printed.
pub fn json_of(output: Output, what: &str) -> serde_json::Value {
    assert!(output.status.success(), "{what} failed ({}): {}", output.status, stderr(&output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{what}: not JSON ({e})"))
}

/// sha256 of `len` bytes of `path` from `offset` (to end of file when `len` is `None`); fails if
/// the file is shorter.
pub fn sha256_range(path: &Path, offset: u64, len: Option<u64>) -> String {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    file.seek(SeekFrom::Start(offset)).expect("seek");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len.unwrap_or(u64::MAX);
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file.read(&mut buf[..want]).expect("read");
        if n == 0 {
            assert!(len.is_none(), "{} ends {left} bytes before offset {offset} + {len:?}", path.display());
            break;
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes the file occupies on disk.
pub fn allocated(path: &Path) -> u64 {
    fs::metadata(path).expect("metadata").blocks() * 512
}

/// Every entry of `dir` but `keep`.
pub fn leftovers(dir: &Path, keep: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p != keep)
        .map(|p| p.display().to_string())
        .collect()
}
