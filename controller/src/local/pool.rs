//! The local storage pool: one directory per volume under `DATA_DIR/volumes/<ns>/<name>/`.
//!
//! ```text
//! volume.json        what was asked for: uid of the DataVolume, capacity, virtual size
//! disk.img           the disk, present only once a worker finished and flushed it
//! .disk.img.partial  what a running worker writes; renamed to disk.img after every check
//! block.img          `volumeMode: Block` only: the loop device's backing file (see below)
//! (other files)      scratch files of a running import
//! ```
//! So `disk.img` never holds a half-written or unchecked image: a crash leaves at most a
//! partial file and scratch files, which [`Pool::clean_partials`] deletes at start-up.
//!
//! A `volumeMode: Block` volume is a loop device over `block.img` ([`super::block`]), attached
//! when the volume is created and re-attached at start-up ([`Pool::recover`]). Workers write
//! to the device itself ([`Pool::prepare_output`]); committing flushes it and makes `disk.img`
//! a symbolic link to the device, so `disk.img` still means "finished and checked". A crash
//! leaves an uncommitted device, which start-up zeroes.
//!
//! Sizes: the volume "capacity" is what a PVC would request (the virtual size inflated by the
//! filesystem overhead for `storage` DataVolumes); `disk.img` is always exactly the requested
//! virtual size, never rounded down (CDI's rounding can make a 512 MiB disk 506 MiB).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::block;
use super::error::{Error, Result};
use crate::plan::{VolumeRequest, VolumeState};

/// Name of the finished disk in a volume directory.
pub const DISK: &str = "disk.img";
const PARTIAL: &str = ".disk.img.partial";
const META: &str = "volume.json";
/// The backing file of a `volumeMode: Block` volume's loop device.
pub const BACKING: &str = "block.img";
/// The directory a `contentType: archive` DataVolume is extracted into.
pub const FILESYSTEM: &str = "fs";

/// What `volume.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMeta {
    /// The DataVolume the volume belongs to: a recreated DataVolume of the same name gets a
    /// fresh volume.
    pub uid: String,
    pub capacity_bytes: u64,
    pub virtual_size_bytes: u64,
    pub block: bool,
    pub preallocate: bool,
}

/// The pool rooted at `DATA_DIR/volumes`.
#[derive(Debug, Clone)]
pub struct Pool {
    root: PathBuf,
}

impl Pool {
    /// The pool under `root` (created if missing).
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be created.
    pub fn open(root: &Path) -> Result<Pool> {
        fs::create_dir_all(root).map_err(|e| Error::io("creating the pool", root, e))?;
        Ok(Pool { root: root.to_owned() })
    }

    /// `volumes/<ns>/<name>`.
    pub fn dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join(namespace).join(name)
    }

    /// The finished disk.
    pub fn disk(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir(namespace, name).join(DISK)
    }

    /// The backing file of a Block volume's loop device.
    pub fn backing(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir(namespace, name).join(BACKING)
    }

    /// Whether the volume `namespace/name` (whoever it belongs to) is a Block volume.
    pub fn is_block(&self, namespace: &str, name: &str) -> bool {
        self.read_meta(namespace, name).is_some_and(|m| m.block)
    }

    /// The loop device of a Block volume, when attached.
    pub fn device(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        if !self.is_block(namespace, name) {
            return None;
        }
        block::device(&self.backing(namespace, name))
    }

    /// What consumers of a finished volume open (qemu): the device of a Block volume, else
    /// `disk.img`.
    pub fn volume_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.device(namespace, name).unwrap_or_else(|| self.disk(namespace, name))
    }

    /// Size in bytes of the finished disk: the file's length, or the device size of a Block
    /// volume. `None` when there is no finished disk.
    pub fn disk_size(&self, namespace: &str, name: &str) -> Option<u64> {
        let disk = self.disk(namespace, name);
        if self.is_block(namespace, name) {
            fs::symlink_metadata(&disk).ok()?;
            return fs::metadata(self.backing(namespace, name)).ok().map(|m| m.len());
        }
        fs::metadata(&disk).ok().map(|m| m.len())
    }

    /// Where a worker writes, made ready for it: the partial file is removed (the worker
    /// creates it), a Block volume's device is attached and zeroed.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn prepare_output(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        if self.is_block(namespace, name) {
            let device = block::attach(&self.backing(namespace, name))?;
            block::zero(&device)?;
            return Ok(device);
        }
        let partial = self.partial(namespace, name);
        match fs::remove_file(&partial) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("removing", &partial, e)),
            _ => Ok(partial),
        }
    }

    /// Where an upload writes: the partial file, or a Block volume's device (attached).
    ///
    /// # Errors
    /// [`Error::Io`] when the device cannot be attached.
    pub fn output(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        if self.is_block(namespace, name) {
            return block::attach(&self.backing(namespace, name));
        }
        Ok(self.partial(namespace, name))
    }

    /// Drops the output of a failed worker: removes the partial file, or zeroes a Block
    /// volume's device (releasing its blocks). Best effort: the next attempt prepares again.
    pub fn discard_output(&self, namespace: &str, name: &str) {
        if self.is_block(namespace, name) {
            if let Some(device) = block::device(&self.backing(namespace, name)) {
                let _ = block::zero(&device);
            }
            return;
        }
        let _ = fs::remove_file(self.partial(namespace, name));
    }

    /// The extracted tree of a `contentType: archive` volume (put in place atomically by the
    /// extraction itself).
    pub fn filesystem(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir(namespace, name).join(FILESYSTEM)
    }

    /// Where a worker writes before the disk is committed.
    pub fn partial(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir(namespace, name).join(PARTIAL)
    }

    /// The volume's record, if it exists and belongs to the DataVolume `uid`.
    pub fn meta(&self, namespace: &str, name: &str, uid: &str) -> Option<VolumeMeta> {
        self.read_meta(namespace, name).filter(|meta| meta.uid == uid)
    }

    fn read_meta(&self, namespace: &str, name: &str) -> Option<VolumeMeta> {
        let text = fs::read(self.dir(namespace, name).join(META)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The volume as `plan` sees it.
    pub fn state(&self, namespace: &str, name: &str, uid: &str) -> VolumeState {
        match self.meta(namespace, name, uid) {
            Some(meta) => VolumeState::Present { capacity_bytes: meta.capacity_bytes },
            None => VolumeState::Absent,
        }
    }

    /// Creates the volume directory and its record; a stale volume of an earlier DataVolume
    /// of the same name is emptied first. A Block volume gets its sparse backing file (before
    /// the record, so a record always has one) and a loop device over it. Idempotent.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn create(&self, namespace: &str, uid: &str, request: &VolumeRequest) -> Result<()> {
        let dir = self.dir(namespace, &request.name);
        if self.meta(namespace, &request.name, uid).is_some() {
            return Ok(());
        }
        if dir.exists() {
            self.remove(namespace, &request.name)?;
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io("creating the volume", &dir, e))?;
        let backing = self.backing(namespace, &request.name);
        if request.block {
            block::create_backing(&backing, block::device_size(request.capacity_bytes))?;
        }
        let meta = VolumeMeta {
            uid: uid.to_owned(),
            capacity_bytes: request.capacity_bytes,
            virtual_size_bytes: request.virtual_size_bytes,
            block: request.block,
            preallocate: request.preallocate,
        };
        let text = serde_json::to_vec_pretty(&meta).map_err(Error::json)?;
        let tmp = dir.join(".volume.json.tmp");
        fs::write(&tmp, text).map_err(|e| Error::io("writing", &tmp, e))?;
        let path = dir.join(META);
        fs::rename(&tmp, &path).map_err(|e| Error::io("writing", &path, e))?;
        sync_dir(&dir)?;
        if request.block {
            block::attach(&backing)?;
        }
        Ok(())
    }

    /// Removes the volume and everything in it, detaching a Block volume's loop device
    /// first. Idempotent.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn remove(&self, namespace: &str, name: &str) -> Result<()> {
        let dir = self.dir(namespace, name);
        block::detach(&self.backing(namespace, name))?;
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("removing the volume", &dir, e))
            }
            _ => Ok(()),
        }
    }

    /// Empties every volume directory of everything but `volume.json`, `disk.img`, `fs/` and
    /// `block.img`:
    /// partial output and scratch files of workers that a crash interrupted. Returns how many
    /// files were deleted.
    ///
    /// # Errors
    /// [`Error::Io`] when the pool cannot be read.
    pub fn clean_partials(&self) -> Result<usize> {
        let mut removed = 0;
        for namespace in read_dirs(&self.root)? {
            for volume in read_dirs(&namespace)? {
                let entries = fs::read_dir(&volume).map_err(|e| Error::io("reading", &volume, e))?;
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if name == META || name == DISK || name == FILESYSTEM || name == BACKING {
                        continue;
                    }
                    let path = entry.path();
                    let result =
                        if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                    result.map_err(|e| Error::io("removing leftover", &path, e))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Attaches the loop device of every Block volume that lost it (a reboot), points the
    /// `disk.img` link of committed ones at it, and zeroes uncommitted ones (what a crashed
    /// worker left). Call at start-up, after [`Pool::clean_partials`]. Returns the volumes it
    /// could not attach, with the reason (they fail their workers until fixed).
    ///
    /// # Errors
    /// [`Error::Io`] when the pool cannot be read.
    pub fn recover(&self) -> Result<Vec<(PathBuf, Error)>> {
        let mut failed = Vec::new();
        for namespace in read_dirs(&self.root)? {
            for volume in read_dirs(&namespace)? {
                let (Some(ns), Some(name)) = (file_name(&namespace), file_name(&volume)) else { continue };
                if !self.is_block(ns, name) {
                    continue;
                }
                if let Err(e) = self.recover_block(ns, name) {
                    failed.push((volume.clone(), e));
                }
            }
        }
        Ok(failed)
    }

    fn recover_block(&self, namespace: &str, name: &str) -> Result<()> {
        let device = block::attach(&self.backing(namespace, name))?;
        let disk = self.disk(namespace, name);
        if fs::symlink_metadata(&disk).is_ok() {
            if block::link(&disk, &device)? {
                sync_dir(&self.dir(namespace, name))?;
            }
            Ok(())
        } else {
            block::zero(&device)
        }
    }

    /// Puts a worker's finished output in place: grows it to the requested virtual size,
    /// flushes it, renames it to `disk.img` and flushes the directory. For a Block volume:
    /// flushes the device and links `disk.img` to it.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn commit(&self, namespace: &str, name: &str, virtual_size: u64) -> Result<()> {
        if self.is_block(namespace, name) {
            let device = block::attach(&self.backing(namespace, name))?;
            block::flush(&device)?;
            block::link(&self.disk(namespace, name), &device)?;
            return sync_dir(&self.dir(namespace, name));
        }
        let partial = self.partial(namespace, name);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&partial)
            .map_err(|e| Error::io("opening", &partial, e))?;
        let len = file.metadata().map_err(|e| Error::io("inspecting", &partial, e))?.len();
        if len < virtual_size {
            file.set_len(virtual_size).map_err(|e| Error::io("growing", &partial, e))?;
        }
        file.sync_all().map_err(|e| Error::io("flushing", &partial, e))?;
        drop(file);
        let disk = self.disk(namespace, name);
        fs::rename(&partial, &disk).map_err(|e| Error::io("renaming into place", &disk, e))?;
        sync_dir(&self.dir(namespace, name))
    }
}

fn read_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io("reading", dir, e))?;
    Ok(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
}

fn file_name(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("flushing", dir, e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    fn request(name: &str) -> VolumeRequest {
        VolumeRequest {
            name: name.into(),
            capacity_bytes: 2 << 20,
            virtual_size_bytes: 1 << 20,
            block: false,
            preallocate: false,
            storage_class_name: None,
        }
    }

    #[test]
    fn volume_belongs_to_its_uid() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path()).unwrap();
        pool.create("ns", "uid-1", &request("a")).unwrap();
        assert_eq!(pool.state("ns", "a", "uid-1"), VolumeState::Present { capacity_bytes: 2 << 20 });
        assert_eq!(pool.state("ns", "a", "uid-2"), VolumeState::Absent);
    }

    #[test]
    fn recreating_for_another_uid_drops_the_old_disk() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path()).unwrap();
        pool.create("ns", "uid-1", &request("a")).unwrap();
        fs::write(pool.disk("ns", "a"), b"old").unwrap();
        pool.create("ns", "uid-2", &request("a")).unwrap();
        assert!(!pool.disk("ns", "a").exists());
    }

    #[test]
    fn commit_grows_to_the_virtual_size_and_renames() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path()).unwrap();
        pool.create("ns", "u", &request("a")).unwrap();
        fs::write(pool.partial("ns", "a"), b"data").unwrap();
        pool.commit("ns", "a", 1 << 20).unwrap();
        assert!(!pool.partial("ns", "a").exists());
        assert_eq!(fs::metadata(pool.disk("ns", "a")).unwrap().len(), 1 << 20);
    }

    #[test]
    fn block_volume_lifecycle_on_a_loop_device() {
        if let Some(why) = block::unavailable() {
            eprintln!("SKIPPED block_volume_lifecycle_on_a_loop_device: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path()).unwrap();
        let request = VolumeRequest { block: true, capacity_bytes: (3 << 20) + 1, ..request("b") };
        pool.create("ns", "u", &request).unwrap();
        let backing = pool.backing("ns", "b");
        assert_eq!(fs::metadata(&backing).unwrap().len(), 4 << 20, "rounded up to 1 MiB");
        let device = pool.device("ns", "b").expect("attached at creation");

        let output = pool.prepare_output("ns", "b").unwrap();
        assert_eq!(output, device);
        fs::OpenOptions::new().write(true).open(&output).unwrap().write_all_at(b"blocks", 4096).unwrap();
        assert_eq!(pool.disk_size("ns", "b"), None, "nothing committed yet");
        pool.commit("ns", "b", 1 << 20).unwrap();
        assert_eq!(fs::read_link(pool.disk("ns", "b")).unwrap(), device);
        assert_eq!(pool.disk_size("ns", "b"), Some(4 << 20));
        assert_eq!(pool.volume_path("ns", "b"), device);
        let mut buf = [0u8; 6];
        fs::File::open(&backing).unwrap().read_exact_at(&mut buf, 4096).unwrap();
        assert_eq!(&buf, b"blocks");

        // A reboot: the device is gone; recovery attaches one and keeps the content.
        storage::loop_detach(&device).unwrap();
        assert_eq!(pool.device("ns", "b"), None);
        assert_eq!(pool.clean_partials().unwrap(), 0, "block.img is no leftover");
        assert!(pool.recover().unwrap().is_empty());
        let again = pool.device("ns", "b").expect("re-attached");
        assert_eq!(fs::read_link(pool.disk("ns", "b")).unwrap(), again);
        fs::File::open(&again).unwrap().read_exact_at(&mut buf, 4096).unwrap();
        assert_eq!(&buf, b"blocks");

        // A second name for the backing inode, to look for devices once the volume is gone.
        let witness = dir.path().join("witness");
        fs::hard_link(&backing, &witness).unwrap();
        pool.remove("ns", "b").unwrap();
        assert!(storage::loop_find(&witness).unwrap().is_empty(), "detached");
        assert!(!pool.dir("ns", "b").exists());
    }

    #[test]
    fn clean_partials_keeps_only_disk_and_record() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path()).unwrap();
        pool.create("ns", "u", &request("a")).unwrap();
        fs::write(pool.partial("ns", "a"), b"half").unwrap();
        fs::write(pool.dir("ns", "a").join("scratch-123"), b"x").unwrap();
        fs::write(pool.disk("ns", "a"), b"done").unwrap();
        assert_eq!(pool.clean_partials().unwrap(), 2);
        assert!(pool.disk("ns", "a").exists());
        assert!(pool.meta("ns", "a", "u").is_some());
    }
}
