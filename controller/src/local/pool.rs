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
//! VolumeSnapshots live in the pool too, so they share the volumes' filesystem (reflinks):
//!
//! ```text
//! .snapshots/<ns>/<name>/snapshot.json        uid of the VolumeSnapshot, restore size, when cut
//! .snapshots/<ns>/<name>/disk.img             the snapshot, present only once copied and flushed
//! .snapshots/<ns>/<name>/.disk.img.<uid>.partial   what a running snapshot copy writes
//! ```
//! `.snapshots` cannot be a namespace (namespaces are DNS labels). [`Pool::clean_partials`]
//! deletes partial snapshot copies too.
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
/// The directory of VolumeSnapshots inside the pool.
pub const SNAPSHOTS: &str = ".snapshots";
const SNAPSHOT_META: &str = "snapshot.json";

/// What `snapshot.json` records about a finished snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotMeta {
    /// The VolumeSnapshot the copy belongs to: a recreated one of the same name takes a new
    /// copy.
    pub uid: String,
    /// Length of `disk.img`: the source volume's size when the snapshot was cut.
    pub restore_size_bytes: u64,
    /// When the snapshot was cut (RFC 3339).
    pub creation_time: String,
    /// The volume it was taken from (`namespace/name`).
    pub source: String,
    /// How it was copied (the cloner's method: `FICLONE`, `copy_file_range`, …).
    pub method: String,
}

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
        let mut removed = self.clean_snapshot_partials()?;
        for namespace in self.namespaces()? {
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
        for namespace in self.namespaces()? {
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

impl Pool {
    /// The namespace directories of volumes (not [`SNAPSHOTS`]).
    fn namespaces(&self) -> Result<Vec<PathBuf>> {
        let mut dirs = read_dirs(&self.root)?;
        dirs.retain(|d| d.file_name().is_none_or(|n| n != SNAPSHOTS));
        Ok(dirs)
    }

    /// `.snapshots/<ns>/<name>`.
    pub fn snapshot_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join(SNAPSHOTS).join(namespace).join(name)
    }

    /// The finished snapshot's disk.
    pub fn snapshot_disk(&self, namespace: &str, name: &str) -> PathBuf {
        self.snapshot_dir(namespace, name).join(DISK)
    }

    /// Where the copy for the VolumeSnapshot `uid` is written before it is committed.
    pub fn snapshot_partial(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.snapshot_dir(namespace, name).join(format!(".disk.img.{uid}.partial"))
    }

    /// The record of the finished snapshot of the VolumeSnapshot `uid`: `None` unless
    /// `snapshot.json` belongs to `uid` and `disk.img` is there with the recorded length.
    pub fn snapshot_meta(&self, namespace: &str, name: &str, uid: &str) -> Option<SnapshotMeta> {
        let dir = self.snapshot_dir(namespace, name);
        let meta: SnapshotMeta = serde_json::from_slice(&fs::read(dir.join(SNAPSHOT_META)).ok()?).ok()?;
        let len = fs::metadata(dir.join(DISK)).ok()?.len();
        (meta.uid == uid && len == meta.restore_size_bytes).then_some(meta)
    }

    /// Starts a snapshot copy from scratch: removes whatever the directory holds (an older
    /// snapshot of the same name, an interrupted copy), creates it, and returns the partial
    /// path the copy writes.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn prepare_snapshot(&self, namespace: &str, name: &str, uid: &str) -> Result<PathBuf> {
        self.remove_snapshot(namespace, name)?;
        let dir = self.snapshot_dir(namespace, name);
        fs::create_dir_all(&dir).map_err(|e| Error::io("creating the snapshot", &dir, e))?;
        Ok(self.snapshot_partial(namespace, name, uid))
    }

    /// Puts a finished copy in place: flushes the partial file, records `meta` (the length
    /// of the copy must be `meta.restore_size_bytes`), renames the copy to `disk.img` and
    /// flushes the directory.
    ///
    /// # Errors
    /// [`Error::Io`], also when the copy's length is not the recorded restore size.
    pub fn commit_snapshot(&self, namespace: &str, name: &str, meta: &SnapshotMeta) -> Result<()> {
        let dir = self.snapshot_dir(namespace, name);
        let partial = self.snapshot_partial(namespace, name, &meta.uid);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&partial)
            .map_err(|e| Error::io("opening", &partial, e))?;
        let len = file.metadata().map_err(|e| Error::io("inspecting", &partial, e))?.len();
        if len != meta.restore_size_bytes {
            let e = std::io::Error::other(format!(
                "the copy holds {len} bytes, the source {} bytes",
                meta.restore_size_bytes
            ));
            return Err(Error::io("checking", &partial, e));
        }
        file.sync_all().map_err(|e| Error::io("flushing", &partial, e))?;
        drop(file);
        let text = serde_json::to_vec_pretty(meta).map_err(Error::json)?;
        let tmp = dir.join(".snapshot.json.tmp");
        fs::write(&tmp, text).map_err(|e| Error::io("writing", &tmp, e))?;
        let path = dir.join(SNAPSHOT_META);
        fs::rename(&tmp, &path).map_err(|e| Error::io("writing", &path, e))?;
        let disk = dir.join(DISK);
        fs::rename(&partial, &disk).map_err(|e| Error::io("renaming into place", &disk, e))?;
        sync_dir(&dir)
    }

    /// Removes a snapshot and everything in it. Idempotent.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn remove_snapshot(&self, namespace: &str, name: &str) -> Result<()> {
        let dir = self.snapshot_dir(namespace, name);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("removing the snapshot", &dir, e))
            }
            _ => Ok(()),
        }
    }

    /// Deletes everything but `snapshot.json` and `disk.img` in every snapshot directory:
    /// copies a crash interrupted. Returns how many files were deleted.
    fn clean_snapshot_partials(&self) -> Result<usize> {
        let root = self.root.join(SNAPSHOTS);
        if !root.exists() {
            return Ok(0);
        }
        let mut removed = 0;
        for namespace in read_dirs(&root)? {
            for snapshot in read_dirs(&namespace)? {
                let entries = fs::read_dir(&snapshot).map_err(|e| Error::io("reading", &snapshot, e))?;
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if name == SNAPSHOT_META || name == DISK {
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

    fn snapshot_meta(uid: &str, len: u64) -> SnapshotMeta {
        SnapshotMeta {
            uid: uid.into(),
            restore_size_bytes: len,
            creation_time: "2026-11-28T04:00:00Z".into(),
            source: "ns/a".into(),
            method: "copy_file_range".into(),
        }
    }

    #[test]
    fn snapshots_live_under_the_pool_and_belong_to_their_uid() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path()).unwrap();
        assert_eq!(pool.snapshot_disk("ns", "s"), dir.path().join(".snapshots/ns/s/disk.img"));
        let partial = pool.prepare_snapshot("ns", "s", "u1").unwrap();
        assert_eq!(partial, dir.path().join(".snapshots/ns/s/.disk.img.u1.partial"));
        fs::write(&partial, b"snap").unwrap();
        assert_eq!(pool.snapshot_meta("ns", "s", "u1"), None, "not committed yet");
        pool.commit_snapshot("ns", "s", &snapshot_meta("u1", 4)).unwrap();
        assert_eq!(pool.snapshot_meta("ns", "s", "u1"), Some(snapshot_meta("u1", 4)));
        assert_eq!(pool.snapshot_meta("ns", "s", "u2"), None, "another VolumeSnapshot's copy");
        assert!(!partial.exists());
        // A new take starts from an empty directory.
        pool.prepare_snapshot("ns", "s", "u2").unwrap();
        assert!(!pool.snapshot_disk("ns", "s").exists());
        pool.remove_snapshot("ns", "s").unwrap();
        pool.remove_snapshot("ns", "s").unwrap();
        assert!(!pool.snapshot_dir("ns", "s").exists());
    }

    #[test]
    fn a_copy_of_the_wrong_length_is_never_committed() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path()).unwrap();
        let partial = pool.prepare_snapshot("ns", "s", "u").unwrap();
        fs::write(&partial, b"short").unwrap();
        let err = pool.commit_snapshot("ns", "s", &snapshot_meta("u", 6)).unwrap_err();
        assert!(err.to_string().contains("checking"), "{err}");
        assert_eq!(pool.snapshot_meta("ns", "s", "u"), None);
        assert!(!pool.snapshot_disk("ns", "s").exists());
    }

    #[test]
    fn clean_partials_removes_interrupted_snapshot_copies_and_keeps_finished_ones() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path()).unwrap();
        pool.create("ns", "u", &request("a")).unwrap();
        let done = pool.prepare_snapshot("ns", "done", "u1").unwrap();
        fs::write(&done, b"data").unwrap();
        pool.commit_snapshot("ns", "done", &snapshot_meta("u1", 4)).unwrap();
        let half = pool.prepare_snapshot("ns", "half", "u2").unwrap();
        fs::write(&half, b"da").unwrap();
        assert_eq!(pool.clean_partials().unwrap(), 1);
        assert!(!half.exists());
        assert!(pool.snapshot_meta("ns", "done", "u1").is_some());
        assert!(pool.meta("ns", "a", "u").is_some(), "volumes untouched");
        assert!(pool.recover().unwrap().is_empty(), ".snapshots is not a namespace of volumes");
    }
}
