//! `diskplane convert IMAGE OUT`: any supported image to raw, sparse.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use anyhow::{Context, Result};
use disk_formats::convert::{ConvertOptions, ScratchOptions, convert_image, convert_sniffed, sniff};
use disk_formats::{OpenOptions, ReadAt, limits, open_as, probe::probe, read_head};
use storage::{CreateOptions, Preallocation, Volume};

use crate::ConvertArgs;
use crate::output::Output;

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
        ..CreateOptions::default()
    };
    let out = Output::prepare(&args.out)?;

    let mut head = vec![0u8; limits::PROBE_BYTES];
    let n = read_head(&file, &mut head)?;
    let format = probe(&head[..n]);
    if format.is_compression() {
        let scratch_dir = match &args.scratch_dir {
            Some(dir) => dir.clone(),
            None => out.scratch_dir(),
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
