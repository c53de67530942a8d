//! `contentType: archive`: a tar stream (compression already removed by the caller) extracted
//! into a directory, the way CDI fills a filesystem volume from an archive.
//!
//! Nothing lands outside the target: entries are extracted into a private staging directory
//! next to it and the staging directory is renamed onto the target only when the whole
//! archive was read. Absolute paths, `..`, links that leave the target, links used as a
//! path's parent, and device nodes are refused with a message naming the entry; a failed
//! extraction removes the staging directory and leaves the target as it was. The extracted tree
//! is made durable with one `syncfs` before the rename, not an fsync per file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use disk_formats::Error as FormatError;
use disk_formats::Format;
use disk_formats::convert::sniff;
use tar::EntryType;

use crate::error::{Error, Result};
use crate::pipe::ChannelReader;

/// Limits for an extraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// The most file content bytes the archive may hold (the volume's capacity).
    pub max_bytes: u64,
    /// The most entries the archive may hold.
    pub max_entries: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self { max_bytes: disk_formats::limits::DEFAULT_MAX_VIRTUAL_SIZE, max_entries: 1_000_000 }
    }
}

/// What an extraction wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Regular files (hard links included).
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links (all relative and inside the target).
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Extracts the tar stream `reader` into the directory `target`, which must not exist or be
/// empty. On success `target` holds exactly the archive's entries, flushed to disk.
///
/// # Errors
/// Malformed tar ([`disk_formats::ErrorKind::InvalidImage`]), entries escaping the target or
/// device nodes (`Denied`), content beyond [`ArchiveLimits`] (`TooLarge`), and I/O errors.
/// On error nothing under `target` changed.
pub fn extract_archive(reader: impl Read, target: &Path, limits: &ArchiveLimits) -> Result<ArchiveStats> {
    extract_archive_then(reader, target, limits, || Ok(()))
}

/// [`extract_archive`], with `verify` run after the last entry and before the target is
/// replaced: an import checks the download's checksum there, so a mismatch leaves the target
/// untouched.
///
/// # Errors
/// As [`extract_archive`], and `verify`'s error.
pub fn extract_archive_then(
    reader: impl Read,
    target: &Path,
    limits: &ArchiveLimits,
    verify: impl FnOnce() -> Result<()>,
) -> Result<ArchiveStats> {
    check_target(target)?;
    let staging = staging_dir(target)?;
    let extracted = extract_into(reader, &staging, limits)
        .and_then(|stats| verify().map(|()| stats))
        .and_then(|stats| sync_tree(&staging).map(|()| stats))
        .and_then(|stats| commit(&staging, target).map(|()| stats));
    match extracted {
        Ok(stats) => Ok(stats),
        Err(e) => {
            // Best effort: the staging directory is ours alone and holds only partial output.
            let _ = fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

/// Extracts a tar, possibly wrapped in gzip, xz or zstd, arriving through `reader` (the
/// bounded channel of a download or an upload) into `target`, as [`extract_archive_then`].
/// After the archive's last entry the rest of the stream (tar padding, bytes after a
/// compressed stream) is read up to the producer's end marker before the target is replaced:
/// a stream that failed its checks (checksum, truncation) leaves the target untouched.
///
/// # Errors
/// Not a tar ([`disk_formats::ErrorKind::InvalidImage`]), the stream's failure, and as
/// [`extract_archive`].
pub fn extract_from_channel(
    reader: &ChannelReader,
    target: &Path,
    limits: &ArchiveLimits,
) -> Result<ArchiveStats> {
    let mut tail = reader.clone();
    let sniffed = sniff(Box::new(reader.clone()))?;
    if !is_tar(sniffed.format, &sniffed.head) {
        let holds =
            if sniffed.format.is_raw() { "no tar header".to_owned() } else { sniffed.format.to_string() };
        return Err(invalid(format!(
            "contentType archive needs a tar archive, but the source holds {holds}"
        )));
    }
    extract_archive_then(sniffed.reader, target, limits, || {
        tail.drain().map_err(|e| io_error("reading the end of the stream".into(), e))?;
        Ok(())
    })
}

/// A POSIX (ustar) or GNU tar header: `ustar` at byte 257.
fn is_tar(format: Format, head: &[u8]) -> bool {
    format.is_raw() && head.get(257..262) == Some(b"ustar".as_slice())
}

fn io_error(what: String, e: io::Error) -> Error {
    Error::Format(FormatError::io(what, e))
}

fn denied(message: String) -> Error {
    Error::Format(FormatError::denied(message))
}

fn invalid(message: String) -> Error {
    Error::Format(FormatError::invalid(message))
}

/// The target must be absent or an empty directory (never a file, never a symlink).
fn check_target(target: &Path) -> Result<()> {
    match fs::symlink_metadata(target) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(format!("inspecting {}", target.display()), e)),
        Ok(meta) if meta.is_dir() => {
            let mut entries =
                fs::read_dir(target).map_err(|e| io_error(format!("reading {}", target.display()), e))?;
            if entries.next().is_some() {
                return Err(Error::Format(FormatError::unsupported(format!(
                    "archive target {} is not empty",
                    target.display()
                ))));
            }
            Ok(())
        }
        Ok(_) => Err(Error::Format(FormatError::unsupported(format!(
            "archive target {} exists and is not a directory",
            target.display()
        )))),
    }
}

/// A fresh, private directory next to `target` (same filesystem, so the final rename is
/// atomic).
fn staging_dir(target: &Path) -> Result<PathBuf> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let staging = parent.join(format!(".{name}.partial-{}-{stamp:08x}", std::process::id()));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(|e| io_error(format!("creating {}", staging.display()), e))?;
    Ok(staging)
}

/// Makes everything extracted into `staging` durable with one `syncfs` of its filesystem,
/// before the rename publishes it. One call instead of an fsync per file: an archive of
/// thousands of small files spent most of its time waiting for those (2048 files of 64 KiB:
/// 8.0 s uploaded vs 0.9 s for `tar -x`). It also flushes other dirty data of that filesystem,
/// and since Linux 5.8 reports writeback errors of any file on it.
fn sync_tree(staging: &Path) -> Result<()> {
    File::open(staging)
        .and_then(|dir| rustix::fs::syncfs(&dir).map_err(io::Error::from))
        .map_err(|e| io_error(format!("syncing the file system of {}", staging.display()), e))
}

/// Moves the finished staging directory onto `target` and makes the rename durable.
fn commit(staging: &Path, target: &Path) -> Result<()> {
    fs::set_permissions(staging, fs::Permissions::from_mode(0o755))
        .map_err(|e| io_error(format!("setting permissions of {}", staging.display()), e))?;
    if fs::symlink_metadata(target).is_ok() {
        // Checked empty before extracting; remove_dir refuses a directory that filled since.
        fs::remove_dir(target).map_err(|e| io_error(format!("replacing {}", target.display()), e))?;
    }
    fs::rename(staging, target)
        .map_err(|e| io_error(format!("renaming {} to {}", staging.display(), target.display()), e))?;
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(format!("syncing {}", parent.display()), e))?;
    }
    Ok(())
}

fn extract_into(reader: impl Read, root: &Path, limits: &ArchiveLimits) -> Result<ArchiveStats> {
    let mut archive = tar::Archive::new(reader);
    let mut stats = ArchiveStats::default();
    let mut count = 0u64;
    let entries = archive.entries().map_err(|e| invalid(format!("reading the archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("reading the archive: {e}")))?;
        count += 1;
        if count > limits.max_entries {
            return Err(Error::TooLarge(format!("archive holds more than {} entries", limits.max_entries)));
        }
        let raw_path = entry.path().map_err(|e| invalid(format!("archive entry {count}: bad path: {e}")))?;
        let shown = raw_path.display().to_string();
        let Some(relative) = safe_relative(&raw_path) else {
            return Err(denied(format!("archive entry {shown:?} leaves the target directory")));
        };
        if relative.as_os_str().is_empty() {
            continue; // "./" itself
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let dest = root.join(&relative);
        if !matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            prepare_parents(root, &relative, &shown)?;
        }
        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&dest) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => return Err(denied(format!("archive entry {shown:?} replaces a non-directory"))),
                    Err(_) => {
                        fs::create_dir(&dest).map_err(|e| io_error(format!("creating {shown:?}"), e))?;
                        stats.dirs += 1;
                    }
                }
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(|e| io_error(format!("setting permissions of {shown:?}"), e))?;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                remove_existing(&dest, &shown)?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&dest)
                    .map_err(|e| io_error(format!("creating {shown:?}"), e))?;
                let room = limits.max_bytes.saturating_sub(stats.bytes);
                let expected = entry.size();
                let written = copy_bounded(&mut entry, &mut file, room, &shown)?;
                if kind != EntryType::GNUSparse && written != expected {
                    return Err(invalid(format!(
                        "archive entry {shown:?} is truncated: {written} of {expected} bytes"
                    )));
                }
                stats.bytes += written;
                stats.files += 1;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| invalid(format!("archive entry {shown:?}: bad link: {e}")))?
                    .ok_or_else(|| invalid(format!("archive entry {shown:?}: symlink without a target")))?;
                if !symlink_stays_inside(&relative, &link) {
                    return Err(denied(format!(
                        "archive entry {shown:?} links to {} outside the target directory",
                        link.display()
                    )));
                }
                remove_existing(&dest, &shown)?;
                std::os::unix::fs::symlink(&link, &dest)
                    .map_err(|e| io_error(format!("creating symlink {shown:?}"), e))?;
                stats.symlinks += 1;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| invalid(format!("archive entry {shown:?}: bad link: {e}")))?
                    .ok_or_else(|| invalid(format!("archive entry {shown:?}: hard link without a target")))?;
                let Some(source) = safe_relative(&link).filter(|p| !p.as_os_str().is_empty()) else {
                    return Err(denied(format!(
                        "archive entry {shown:?} hard-links to {} outside the target directory",
                        link.display()
                    )));
                };
                let source = root.join(source);
                // Only to a regular file the archive itself extracted: never through a symlink.
                match fs::symlink_metadata(&source) {
                    Ok(meta) if meta.is_file() => {}
                    _ => {
                        return Err(denied(format!(
                            "archive entry {shown:?} hard-links to {}, which is not a file extracted earlier",
                            link.display()
                        )));
                    }
                }
                remove_existing(&dest, &shown)?;
                fs::hard_link(&source, &dest).map_err(|e| io_error(format!("creating link {shown:?}"), e))?;
                stats.files += 1;
            }
            EntryType::XGlobalHeader | EntryType::XHeader => {}
            other => {
                return Err(denied(format!(
                    "archive entry {shown:?} is a {} (only files, directories and links are extracted)",
                    describe(other)
                )));
            }
        }
    }
    Ok(stats)
}

fn describe(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "FIFO",
        _ => "special entry",
    }
}

/// `path` without `.` components, or `None` when it is absolute or has a `..`.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether a symlink at `entry` (relative to the root) pointing at `link` resolves inside the
/// root, judged lexically: relative targets only, never climbing above the root.
fn symlink_stays_inside(entry: &Path, link: &Path) -> bool {
    if link.is_absolute() || link.as_os_str().is_empty() {
        return false;
    }
    let mut depth = entry.components().count().saturating_sub(1);
    for component in link.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Creates the missing parents of `relative` under `root`, refusing any existing parent that is
/// not a real directory (a symlink planted by an earlier entry would lead outside).
fn prepare_parents(root: &Path, relative: &Path, shown: &str) -> Result<()> {
    let mut dir = root.to_path_buf();
    let Some(parent) = relative.parent() else { return Ok(()) };
    for part in parent.components() {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(denied(format!(
                    "archive entry {shown:?} goes through {}, which is not a directory",
                    dir.strip_prefix(root).unwrap_or(&dir).display()
                )));
            }
            Err(_) => {
                fs::create_dir(&dir).map_err(|e| io_error(format!("creating parent of {shown:?}"), e))?
            }
        }
    }
    Ok(())
}

/// A later entry replaces an earlier one of the same name (tar semantics), never through it.
fn remove_existing(dest: &Path, shown: &str) -> Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => Err(denied(format!("archive entry {shown:?} replaces a directory"))),
        Ok(_) => fs::remove_file(dest).map_err(|e| io_error(format!("replacing {shown:?}"), e)),
        Err(_) => Ok(()),
    }
}

/// Copies at most `room` bytes; more is [`Error::TooLarge`].
fn copy_bounded(reader: &mut impl Read, file: &mut File, room: u64, shown: &str) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(written),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(invalid(format!("reading archive entry {shown:?}: {e}"))),
        };
        written += n as u64;
        if written > room {
            return Err(Error::TooLarge(format!(
                "archive content exceeds the target's capacity at entry {shown:?}"
            )));
        }
        file.write_all(&buf[..n]).map_err(|e| io_error(format!("writing {shown:?}"), e))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            // Write names raw so hostile paths reach the extractor unchanged.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                let field = &mut header.as_old_mut().linkname;
                field[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            builder.append(&header, *data).expect("append");
        }
        builder.into_inner().expect("finish")
    }

    fn extract(tar: &[u8]) -> (tempfile::TempDir, PathBuf, Result<ArchiveStats>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("vol");
        let result = extract_archive(tar, &target, &ArchiveLimits::default());
        (dir, target, result)
    }

    fn only_target_left(dir: &Path) {
        let names: Vec<_> = fs::read_dir(dir).expect("read").map(|e| e.expect("entry").file_name()).collect();
        assert!(names.is_empty(), "left behind: {names:?}");
    }

    #[test]
    fn files_dirs_and_inner_links_are_extracted() {
        let tar = tar_with(&[
            ("./", EntryType::Directory, b"", None),
            ("./etc/", EntryType::Directory, b"", None),
            ("./etc/hosts", EntryType::Regular, b"127.0.0.1 localhost\n", None),
            ("./etc/alias", EntryType::Symlink, b"", Some("hosts")),
            ("./up", EntryType::Symlink, b"", Some("etc/../etc/hosts")),
            ("./hard", EntryType::Link, b"", Some("etc/hosts")),
        ]);
        let (_dir, target, result) = extract(&tar);
        let stats = result.expect("extracted");
        assert_eq!(stats, ArchiveStats { files: 2, dirs: 1, symlinks: 2, bytes: 20 });
        assert_eq!(fs::read(target.join("etc/alias")).expect("read"), b"127.0.0.1 localhost\n");
        assert_eq!(fs::read(target.join("hard")).expect("read"), b"127.0.0.1 localhost\n");
    }

    #[test]
    fn traversal_and_absolute_paths_are_refused() {
        for path in ["../evil", "a/../../evil", "/etc/evil"] {
            let tar = tar_with(&[(path, EntryType::Regular, b"x", None)]);
            let (dir, _target, result) = extract(&tar);
            let err = result.expect_err(path).to_string();
            assert!(err.contains("leaves the target directory"), "{path}: {err}");
            only_target_left(dir.path());
        }
    }

    #[test]
    fn symlinks_leaving_the_target_are_refused() {
        for link in ["/etc/passwd", "../../x", "a/../../.."] {
            let tar = tar_with(&[("l", EntryType::Symlink, b"", Some(link))]);
            let (dir, _target, result) = extract(&tar);
            let err = result.expect_err(link).to_string();
            assert!(err.contains("outside the target directory"), "{link}: {err}");
            only_target_left(dir.path());
        }
    }

    #[test]
    fn writing_through_a_planted_symlink_is_refused() {
        let tar = tar_with(&[
            ("sub/", EntryType::Directory, b"", None),
            ("link", EntryType::Symlink, b"", Some("sub")),
            ("link/file", EntryType::Regular, b"x", None),
        ]);
        let (dir, _target, result) = extract(&tar);
        let err = result.expect_err("refused").to_string();
        assert!(err.contains("goes through link, which is not a directory"), "{err}");
        only_target_left(dir.path());
    }

    #[test]
    fn hard_links_to_outside_files_are_refused() {
        let tar = tar_with(&[("h", EntryType::Link, b"", Some("/etc/passwd"))]);
        let (_dir, _target, result) = extract(&tar);
        assert!(result.expect_err("refused").to_string().contains("outside the target directory"));
    }

    #[test]
    fn device_nodes_are_refused() {
        let tar = tar_with(&[("dev", EntryType::Block, b"", None)]);
        let (_dir, _target, result) = extract(&tar);
        assert!(result.expect_err("refused").to_string().contains("is a block device"));
    }

    #[test]
    fn content_beyond_the_capacity_is_too_large_and_nothing_is_kept() {
        let tar = tar_with(&[("a", EntryType::Regular, &[7u8; 3000], None)]);
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("vol");
        let limits = ArchiveLimits { max_bytes: 2048, max_entries: 10 };
        let err = extract_archive(&tar[..], &target, &limits).expect_err("too large");
        assert_eq!(err.kind(), disk_formats::ErrorKind::TooLarge);
        only_target_left(dir.path());
    }

    #[test]
    fn a_truncated_archive_fails_and_keeps_nothing() {
        let tar = tar_with(&[("a", EntryType::Regular, &[7u8; 5000], None)]);
        let (dir, _target, result) = extract(&tar[..2048]);
        assert_eq!(result.expect_err("truncated").kind(), disk_formats::ErrorKind::InvalidImage);
        only_target_left(dir.path());
    }

    #[test]
    fn a_non_empty_target_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("keep"), b"mine").expect("write");
        let tar = tar_with(&[("a", EntryType::Regular, b"x", None)]);
        let err = extract_archive(&tar[..], dir.path(), &ArchiveLimits::default()).expect_err("refused");
        assert!(err.to_string().contains("is not empty"), "{err}");
        assert_eq!(fs::read(dir.path().join("keep")).expect("kept"), b"mine");
    }
}
