//! `diskplane convert IMAGE OUT`: any supported image to raw, sparse.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use disk_formats::convert::{ConvertOptions, ScratchOptions, convert_image, convert_sniffed, sniff};
use disk_formats::{OpenOptions, ReadAt, limits, open_as, probe::probe, read_head};
use storage::{CreateOptions, Preallocation, Volume};

use crate::ConvertArgs;

/// `--preallocation` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PreallocationArg {
    Off,
    Full,
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    let file = File::open(&args.image).with_context(|| format!("opening {}", args.image.display()))?;
    let open = OpenOptions { max_virtual_size: args.max_virtual_size };
    let opts = ConvertOptions {
        sparse_size: usize::try_from(args.sparse_size).context("sparse size")?,
        threads: args.threads.unwrap_or(ConvertOptions::default().threads).max(1),
        progress: None,
    };
    let create = CreateOptions {
        preallocation: match args.preallocation {
            PreallocationArg::Off => Preallocation::Off,
            PreallocationArg::Full => Preallocation::Full,
        },
    };
    let out = Output::prepare(&args.out)?;

    let mut head = vec![0u8; limits::PROBE_BYTES];
    let n = read_head(&file, &mut head)?;
    let format = probe(&head[..n]);
    if format.is_compression() {
        let scratch_dir = match &args.scratch_dir {
            Some(dir) => dir.clone(),
            None => out.dir(),
        };
        let reader = BufReader::with_capacity(1 << 20, file);
        let sniffed = sniff(Box::new(reader))?;
        let volume = Volume::create(&out.write_path, None, args.max_virtual_size, &create)?;
        let stats = convert_sniffed(sniffed, &volume, &ScratchOptions { dir: &scratch_dir }, &open, &opts)?;
        if !volume.is_block_device() {
            volume.set_len(stats.virtual_size)?;
        }
        volume.finish()?;
    } else {
        let source: Arc<dyn ReadAt> = Arc::new(file);
        let image = open_as(source, format, &open)?;
        let volume =
            Volume::create(&out.write_path, Some(image.virtual_size()), args.max_virtual_size, &create)?;
        convert_image(&*image, &volume, &opts)?;
        volume.finish()?;
    }
    out.commit()
}

/// Where the output is written: block devices in place; files under a temporary name in the
/// same directory, renamed over OUT only after success and deleted on failure, so a rejected
/// image never leaves (or clobbers) an output file.
struct Output {
    final_path: PathBuf,
    write_path: PathBuf,
    in_place: bool,
    committed: bool,
}

impl Output {
    fn prepare(out: &Path) -> Result<Self> {
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

    fn dir(&self) -> PathBuf {
        match self.final_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    fn commit(mut self) -> Result<()> {
        if !self.in_place {
            std::fs::rename(&self.write_path, &self.final_path).with_context(|| {
                format!("renaming the output into place at {}", self.final_path.display())
            })?;
            // The new name must survive a crash too.
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
