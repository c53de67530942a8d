//! `diskplane info IMAGE [-o json]`.

use std::fs::File;
use std::io::{self, BufReader};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use anyhow::{Context, Result};
use disk_formats::convert::{ScratchOptions, sniff, unpack_to_scratch};
use disk_formats::{ImageInfo, OpenOptions, ReadAt, limits, open_as, probe::probe, read_head};

use crate::{InfoArgs, OutputFormat};

pub fn run(args: &InfoArgs) -> Result<()> {
    let file = File::open(&args.image).with_context(|| format!("opening {}", args.image.display()))?;
    let allocated = file.metadata().map(|m| m.blocks() * 512).unwrap_or(0);
    let open = OpenOptions::default();
    let mut head = vec![0u8; limits::PROBE_BYTES];
    let n = read_head(&file, &mut head)?;
    let format = probe(&head[..n]);
    let file_size = ReadAt::size(&file).context("reading the image size")?;

    let info = if format.is_compression() {
        let mut sniffed = sniff(Box::new(BufReader::with_capacity(1 << 20, file)))?;
        let wrappers: Vec<String> = sniffed.wrappers.iter().map(|w| w.name().to_owned()).collect();
        let mut info = if sniffed.format.is_raw() {
            // The size of a compressed raw disk is only known by decompressing it (streamed).
            let size = io::copy(&mut sniffed.reader, &mut io::sink())
                .map_err(|e| disk_formats::Error::invalid(format!("reading the compressed stream: {e}")))?;
            ImageInfo::plain(sniffed.format.name(), size, file_size)
        } else {
            let scratch = ScratchOptions { dir: &args.scratch_dir };
            let unpacked =
                unpack_to_scratch(sniffed.format, &sniffed.head, &mut sniffed.reader, &scratch, &open)?;
            let mut info = open_as(Arc::new(unpacked), sniffed.format, &open)?.info();
            info.file_size = file_size;
            info
        };
        info.compression_wrappers = wrappers;
        info
    } else {
        open_as(Arc::new(file), format, &open)?.info()
    };

    match args.output {
        OutputFormat::Json => {
            let mut value = serde_json::to_value(&info)?;
            if let Some(map) = value.as_object_mut() {
                map.insert("filename".into(), args.image.display().to_string().into());
                map.insert("allocated_size".into(), allocated.into());
            }
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        OutputFormat::Human => print_human(&args.image.display().to_string(), &info, allocated),
    }
    Ok(())
}

fn print_human(name: &str, info: &ImageInfo, allocated: u64) {
    println!("image: {name}");
    println!("file format: {}", info.format);
    if !info.compression_wrappers.is_empty() {
        println!("compressed with: {}", info.compression_wrappers.join(", "));
    }
    println!("virtual size: {} ({} bytes)", human(info.virtual_size), info.virtual_size);
    println!("disk size: {}", human(allocated));
    if let Some(cluster) = info.cluster_size {
        println!("cluster_size: {cluster}");
    }
    if let Some(version) = info.version {
        println!("version: {version}");
    }
    if let Some(compression) = &info.compression_type {
        println!("compression type: {compression}");
    }
    if !info.features.is_empty() {
        println!("features: {}", info.features.join(", "));
    }
    if !info.format_specific.is_empty() {
        println!("Format specific information:");
        for (key, value) in &info.format_specific {
            println!("    {key}: {value}");
        }
    }
    if !info.snapshots.is_empty() {
        println!("Snapshot list:");
        println!("{:<10} {:<20} {:>16}", "ID", "TAG", "VM SIZE");
        for snap in &info.snapshots {
            println!("{:<10} {:<20} {:>16}", snap.id, snap.name, human(snap.virtual_size));
        }
    }
}

/// `1.5 GiB`-style sizes, as qemu-img prints them.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.3} {}", UNITS[unit]).replace(".000", "") }
}
