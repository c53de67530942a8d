//! What the end-to-end test files share: sha256 of files, running helper tools, and image
//! directories made once per target dir (and shared by concurrent test processes). Each test
//! file uses its own subset, so it declares the module with `#[allow(dead_code)]`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

/// Hex sha256 of the whole file.
pub fn sha256_file(path: &Path) -> String {
    sha256_prefix(path, u64::MAX)
}

/// Hex sha256 of the first `len` bytes of the file (all of it when shorter).
pub fn sha256_prefix(path: &Path, len: u64) -> String {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut file = file.take(len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a helper tool (qemu-img, tar, ...) and fails the test with its stderr if it fails.
pub fn run_ok(cmd: &mut Command) {
    let out = cmd.stderr(Stdio::piped()).output().expect("running a helper tool");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// `CARGO_TARGET_TMPDIR/name`, filled by `make` the first time (in a temporary directory
/// renamed into place, so concurrent test processes see it complete or not at all). `make`
/// must create a file `done` last.
pub fn made_once(name: &str, make: impl FnOnce(&Path)) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    if !dir.join("done").exists() {
        let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).expect("creating the image dir");
        make(&tmp);
        // Another test process may have won the race: then use its copy.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    assert!(dir.join("done").exists(), "images missing in {}", dir.display());
    dir
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding port 0")
        .local_addr()
        .expect("local addr")
        .port()
}
