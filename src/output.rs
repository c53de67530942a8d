//! Where a command's output volume is written, shared by `convert`, `import` and `clone`.
//!
//! Block devices are written in place. Files are written under a temporary name in the same
//! directory and renamed over OUT only after everything was written and flushed (then the
//! directory is flushed too, so the name survives a crash); on failure the temporary file is
//! deleted. So a rejected image never leaves an OUT behind and never clobbers an existing one.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// An output being written.
#[derive(Debug)]
pub struct Output {
    final_path: PathBuf,
    /// The path to write to (OUT itself for block devices).
    pub write_path: PathBuf,
    in_place: bool,
    committed: bool,
}

impl Output {
    /// Prepares writing to `out`.
    pub fn prepare(out: &Path) -> Result<Self> {
        if out.is_dir() {
            anyhow::bail!("output {} is a directory", out.display());
        }
        if storage::is_block_device(out) {
            return Ok(Self {
                final_path: out.into(),
                write_path: out.into(),
                in_place: true,
                committed: false,
            });
        }
        let name = out.file_name().with_context(|| format!("output {} has no file name", out.display()))?;
        let mut partial = std::ffi::OsString::from(".");
        partial.push(name);
        partial.push(format!(".diskplane-partial-{}", std::process::id()));
        Ok(Self {
            final_path: out.into(),
            write_path: out.with_file_name(partial),
            in_place: false,
            committed: false,
        })
    }

    /// The directory OUT lives in (`.` for a bare file name).
    fn dir(&self) -> PathBuf {
        match self.final_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Where scratch files go by default: next to OUT for files; the system temporary
    /// directory for block devices (their directory is /dev).
    pub fn scratch_dir(&self) -> PathBuf {
        if self.in_place { std::env::temp_dir() } else { self.dir() }
    }

    /// Puts the finished output in place.
    pub fn commit(mut self) -> Result<()> {
        if !self.in_place {
            std::fs::rename(&self.write_path, &self.final_path).with_context(|| {
                format!("renaming the output into place at {}", self.final_path.display())
            })?;
            File::open(self.dir())
                .and_then(|dir| dir.sync_all())
                .with_context(|| format!("flushing the directory of {}", self.final_path.display()))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.committed && !self.in_place {
            let _ = std::fs::remove_file(&self.write_path);
        }
    }
}
