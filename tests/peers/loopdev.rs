//! Loop devices for the tests that need a block device (standing in for a Block PVC or a
//! disk): whether this machine can make them, and a device over a backing file that is
//! detached on drop. Needs root and util-linux's `losetup`; tests skip visibly (a line on the
//! process's stderr naming the test and the reason) where they cannot. Each test file uses
//! its own subset, so it declares the module with `#[allow(dead_code)]`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether loop devices can be attached here; prints `SKIPPED {test}: why` when not (a visible
/// skip, not a silent pass).
pub fn usable(test: &str) -> bool {
    let problem = match std::fs::OpenOptions::new().read(true).write(true).open("/dev/loop-control") {
        Err(e) => Some(format!("/dev/loop-control: {e} (needs root and the loop driver)")),
        Ok(_) if Command::new("losetup").arg("--version").output().is_err() => {
            Some("losetup (util-linux) is not installed".to_owned())
        }
        Ok(_) => None,
    };
    match problem {
        Some(why) => {
            skipped(test, &why);
            false
        }
        None => true,
    }
}

/// Straight to the process's stderr, past libtest's capture, so that a skip shows in the test
/// output (nextest: `--no-capture` or `--success-output immediate`).
pub fn skipped(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

/// A loop device over a backing file, detached when dropped.
pub struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    /// Attaches the first free loop device to `backing`; `None` (with the reason printed for
    /// `test`) when that fails.
    pub fn attach(test: &str, backing: &Path) -> Option<LoopDevice> {
        if !usable(test) {
            return None;
        }
        let out = match Command::new("losetup").args(["--find", "--show"]).arg(backing).output() {
            Ok(out) => out,
            Err(e) => {
                skipped(test, &format!("cannot run losetup ({e})"));
                return None;
            }
        };
        if !out.status.success() {
            skipped(test, &format!("losetup failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
            return None;
        }
        Some(LoopDevice { path: String::from_utf8_lossy(&out.stdout).trim().into() })
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        match Command::new("losetup").arg("--detach").arg(&self.path).status() {
            Ok(status) if status.success() => {}
            other => eprintln!("warning: detaching {} failed: {other:?}", self.path.display()),
        }
    }
}
