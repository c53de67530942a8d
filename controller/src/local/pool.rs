//! The local storage pool: one directory per volume under `DATA_DIR/volumes/<ns>/<name>/`.
//!
//! ```text
//! volume.json        what was asked for: uid of the DataVolume, capacity, virtual size
//! disk.img           the disk, present only once a worker finished and flushed it
//! .disk.img.partial  what a running worker writes; renamed to disk.img after every check
//! (other files)      scratch files of a running import
//! ```
//! So `disk.img` never holds a half-written or unchecked image: a crash leaves at most a
//! partial file and scratch files, which [`Pool::clean_partials`] deletes at start-up.
//!
//! Sizes: the volume "capacity" is what a PVC would request (the virtual size inflated by the
//! filesystem overhead for `storage` DataVolumes); `disk.img` is always exactly the requested
//! virtual size, never rounded down (CDI's rounding can make a 512 MiB disk 506 MiB).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use crate::plan::{VolumeRequest, VolumeState};

/// Name of the finished disk in a volume directory.
pub const DISK: &str = "disk.img";
const PARTIAL: &str = ".disk.img.partial";
const META: &str = "volume.json";
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
        let text = fs::read(self.dir(namespace, name).join(META)).ok()?;
        let meta: VolumeMeta = serde_json::from_slice(&text).ok()?;
        (meta.uid == uid).then_some(meta)
    }

    /// The volume as `plan` sees it.
    pub fn state(&self, namespace: &str, name: &str, uid: &str) -> VolumeState {
        match self.meta(namespace, name, uid) {
            Some(meta) => VolumeState::Present { capacity_bytes: meta.capacity_bytes },
            None => VolumeState::Absent,
        }
    }

    /// Creates the volume directory and its record; a stale volume of an earlier DataVolume
    /// of the same name is emptied first. Idempotent.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn create(&self, namespace: &str, uid: &str, request: &VolumeRequest) -> Result<()> {
        let dir = self.dir(namespace, &request.name);
        if self.meta(namespace, &request.name, uid).is_some() {
            return Ok(());
        }
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| Error::io("removing a stale volume", &dir, e))?;
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io("creating the volume", &dir, e))?;
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
        sync_dir(&dir)
    }

    /// Removes the volume and everything in it. Idempotent.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn remove(&self, namespace: &str, name: &str) -> Result<()> {
        let dir = self.dir(namespace, name);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("removing the volume", &dir, e))
            }
            _ => Ok(()),
        }
    }

    /// Empties every volume directory of everything but `volume.json`, `disk.img` and `fs/`:
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
                    if name == META || name == DISK || name == FILESYSTEM {
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

    /// Puts a worker's finished output in place: grows it to the requested virtual size,
    /// flushes it, renames it to `disk.img` and flushes the directory.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn commit(&self, namespace: &str, name: &str, virtual_size: u64) -> Result<()> {
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

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("flushing", dir, e))
}

#[cfg(test)]
mod tests {
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
