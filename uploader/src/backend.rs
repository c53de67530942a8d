//! Where uploads go: the [`UploadBackend`] trait the server asks, and [`SingleVolumeBackend`],
//! the one-volume backend of the `diskplane worker upload-server` role.
//!
//! The server verifies the token's signature and expiry, then asks the backend to
//! [`begin`](UploadBackend::begin) an upload for the token's claims. The backend decides
//! whether the volume exists, is an upload target, is free and not yet uploaded, and answers
//! with an [`UploadTarget`] or a [`Refusal`]. Every successful `begin` is matched by exactly
//! one [`finish`](UploadBackend::finish) with the outcome, also when the client goes away or
//! the server task dies, so a backend can keep "busy" and "done" state by itself. Between the
//! two, once everything was written and checked, [`commit`](UploadBackend::commit) may put the
//! result in place: its failure is the upload's failure, and the client hears of it. The
//! embedded server implements the trait over its state store (phases, `status.progress`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use disk_formats::Format;
use storage::CreateOptions;
use tokio::sync::watch;

use crate::error::Error;
use crate::token::{Claims, TokenError};

/// What a volume takes (CDI's `contentType`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Content {
    /// A disk image (raw, qcow2, …, optionally compressed), converted to raw into the volume
    /// (`contentType: kubevirt`).
    #[default]
    Disk,
    /// A tar archive (optionally gzip/xz/zstd), extracted into the volume's directory
    /// (`contentType: archive`): entries leaving it, device nodes and content beyond the
    /// volume's size are refused, and the directory appears only once the whole archive was
    /// extracted (see `importer::archive`).
    Archive,
}

/// Where one upload is written.
#[derive(Debug, Clone)]
pub struct UploadTarget {
    /// The volume: a block device (written in place) or a file, written under a temporary
    /// name beside it and renamed over it once complete, flushed and verified. For
    /// [`Content::Archive`], the directory the archive is extracted into: absent or empty
    /// (it is created, under a temporary name first, and put in place once complete; see
    /// [`SingleVolumeBackend`] for a directory that already holds entries).
    pub path: PathBuf,
    /// The volume's size: images whose virtual size (or raw stream) exceeds it are refused
    /// with 400. For a block device its own size also applies.
    pub max_size: u64,
    /// Directory for the scratch file a qcow2 is unpacked to (at most about the image's size).
    pub scratch_dir: PathBuf,
    /// Preallocation of a file volume. The write cache is the uploader's choice, by what the
    /// body holds ([`storage::WriteCache::Bounded`] for a plain qcow2, `Direct` otherwise).
    pub create: CreateOptions,
}

/// What an upload wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStats {
    /// The disk format found.
    pub format: Format,
    /// Compression wrappers removed, outermost first.
    pub wrappers: Vec<Format>,
    /// Guest size written (the raw size of the volume's content).
    pub virtual_size: u64,
    /// Bytes written as data (the rest are holes).
    pub data_bytes: u64,
    /// Body bytes received.
    pub received: u64,
    /// For [`Content::Archive`]: what was extracted (`virtual_size` and `data_bytes` are then
    /// the bytes of file content, `format` is `Raw` and `wrappers` is empty).
    pub archive: Option<importer::ArchiveStats>,
}

/// Why a backend does not start an upload, with the message the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No such volume, or not an upload target: 404.
    #[error("{0}")]
    NotFound(String),
    /// Already uploaded: 409.
    #[error("{0}")]
    AlreadyDone(String),
    /// Another upload to the same volume is running (or still processing): 503.
    #[error("{0}")]
    Busy(String),
    /// The volume is not ready for an upload yet: 503.
    #[error("{0}")]
    NotReady(String),
    /// The token is valid but does not cover this volume: 401.
    #[error("{0}")]
    Unauthorized(String),
}

/// The volume side of the upload server.
pub trait UploadBackend: Send + Sync + 'static {
    /// Claims the volume named by `claims` for one upload.
    ///
    /// # Errors
    /// A [`Refusal`], mapped to CDI's status codes.
    fn begin(&self, claims: &Claims) -> Result<UploadTarget, Refusal>;

    /// What the volume named by `claims` takes: a disk image (the default) or an archive.
    /// Asked before [`begin`](UploadBackend::begin): `/upload-archive` to a disk volume is a
    /// bad request, and every upload route of an archive volume extracts an archive (CDI's
    /// upload proxy sends them all to the archive route).
    ///
    /// # Errors
    /// A [`Refusal`] (e.g. [`Refusal::NotFound`] for a volume that does not exist), so that
    /// `/upload-archive` to a missing volume is a 404 as every other route, not a 400.
    fn content(&self, claims: &Claims) -> Result<Content, Refusal> {
        let _ = claims;
        Ok(Content::Disk)
    }

    /// Body bytes received so far for the running upload (called as pieces arrive), and the
    /// body's announced length (`Content-Length`; for a form it includes the envelope).
    fn progress(&self, claims: &Claims, received: u64, expected: Option<u64>) {
        let _ = (claims, received, expected);
    }

    /// The upload that `begin` started was written, flushed and verified: put it in place.
    /// Called once per successful upload, before [`finish`](UploadBackend::finish) and before
    /// the client's answer (of a synchronous route), on the async runtime: keep it short
    /// (renames, a directory flush). The default does nothing.
    ///
    /// # Errors
    /// Any [`Error`]: the upload then fails with it (`finish` gets it, the client its status).
    fn commit(&self, claims: &Claims, stats: &UploadStats) -> Result<(), Error> {
        let _ = (claims, stats);
        Ok(())
    }

    /// The upload that `begin` started has ended: `Ok` when the volume is written, flushed and
    /// verified; `Err` when nothing was kept (the upload may be retried).
    fn finish(&self, claims: &Claims, result: &Result<UploadStats, Error>);
}

/// The state of the one volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeState {
    /// Waiting for an upload.
    Ready,
    /// An upload is running or processing.
    Busy,
    /// Uploaded: later uploads get 409.
    Done,
}

/// One volume, one upload: the Kubernetes worker role (one upload-server Pod per PVC) and the
/// standalone `diskplane worker upload-server`.
///
/// Accepts tokens for exactly `namespace/name` (others get 401), one upload at a time (503),
/// and after a success refuses further uploads (409). A failed upload returns to `Ready`.
///
/// With [`Content::Archive`], `target.path` is a directory. When it does not exist yet, the
/// archive is extracted into it as one atomic rename. When it exists (a mounted volume, maybe
/// holding `lost+found`), the archive is extracted into a staging directory inside it
/// (`.diskplane-upload-<pid>`, same filesystem) and, once complete, its entries are moved in
/// one by one ([`UploadBackend::commit`]); an entry whose name already exists there fails the
/// upload (400) before anything is moved.
///
/// ## Caveats
/// A crash while the entries of an archive are moved into an existing directory can leave some
/// of them moved (the same as `diskplane worker import` of an archive).
#[derive(Debug)]
pub struct SingleVolumeBackend {
    namespace: String,
    name: String,
    target: UploadTarget,
    content: Content,
    state: Mutex<VolumeState>,
    received: AtomicU64,
    changes: watch::Sender<VolumeState>,
    /// The staging directory of the running archive upload into an existing directory.
    staging: Mutex<Option<PathBuf>>,
    /// What the successful upload wrote.
    stats: Mutex<Option<UploadStats>>,
}

impl SingleVolumeBackend {
    /// A backend for `namespace/name`, written to `target`.
    pub fn new(namespace: &str, name: &str, target: UploadTarget) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            target,
            content: Content::Disk,
            state: Mutex::new(VolumeState::Ready),
            received: AtomicU64::new(0),
            changes: watch::Sender::new(VolumeState::Ready),
            staging: Mutex::new(None),
            stats: Mutex::new(None),
        }
    }

    /// The same backend taking `content` (an archive extracted into the directory
    /// `target.path`, for `contentType: archive`).
    #[must_use]
    pub fn with_content(mut self, content: Content) -> Self {
        self.content = content;
        self
    }

    /// The current state.
    pub fn state(&self) -> VolumeState {
        *self.changes.borrow()
    }

    /// Body bytes received by the running (or last) upload.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Watches state changes (e.g. to exit once `Done`).
    pub fn subscribe(&self) -> watch::Receiver<VolumeState> {
        self.changes.subscribe()
    }

    /// What the successful upload wrote (`None` before one succeeded).
    pub fn stats(&self) -> Option<UploadStats> {
        lock(&self.stats).clone()
    }

    /// Where this upload writes: the target, or for an archive into an existing directory a
    /// fresh staging directory inside it (see the type's docs).
    fn upload_target(&self) -> Result<UploadTarget, Refusal> {
        let mut target = self.target.clone();
        let existing_dir = fs::symlink_metadata(&target.path).is_ok_and(|m| m.is_dir());
        if self.content != Content::Archive || !existing_dir {
            return Ok(target);
        }
        let staging = target.path.join(format!(".diskplane-upload-{}", std::process::id()));
        // What an earlier attempt left when moving its entries in failed.
        match fs::remove_dir_all(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Refusal::NotReady(format!(
                    "removing the leftover staging directory {}: {e}",
                    staging.display()
                )));
            }
            _ => {}
        }
        *lock(&self.staging) = Some(staging.clone());
        target.path = staging;
        Ok(target)
    }

    fn set(&self, state: &mut VolumeState, new: VolumeState) {
        *state = new;
        self.changes.send_replace(new);
    }
}

impl UploadBackend for SingleVolumeBackend {
    fn begin(&self, claims: &Claims) -> Result<UploadTarget, Refusal> {
        if claims.namespace != self.namespace || claims.name != self.name {
            return Err(Refusal::Unauthorized(
                TokenError::OtherVolume {
                    token_for: format!("{}/{}", claims.namespace, claims.name),
                    requested: format!("{}/{}", self.namespace, self.name),
                }
                .to_string(),
            ));
        }
        let mut state =
            self.state.lock().map_err(|_| Refusal::NotReady("upload state lock poisoned".into()))?;
        match *state {
            VolumeState::Busy => Err(Refusal::Busy(format!(
                "an upload to {}/{} is already in progress",
                self.namespace, self.name
            ))),
            VolumeState::Done => Err(Refusal::AlreadyDone(format!(
                "{}/{} has already been uploaded",
                self.namespace, self.name
            ))),
            VolumeState::Ready => {
                let target = self.upload_target()?;
                self.set(&mut state, VolumeState::Busy);
                self.received.store(0, Ordering::Relaxed);
                Ok(target)
            }
        }
    }

    fn content(&self, _claims: &Claims) -> Result<Content, Refusal> {
        Ok(self.content)
    }

    fn progress(&self, _claims: &Claims, received: u64, _expected: Option<u64>) {
        self.received.store(received, Ordering::Relaxed);
    }

    fn commit(&self, _claims: &Claims, _stats: &UploadStats) -> Result<(), Error> {
        match lock(&self.staging).as_deref() {
            Some(staging) => move_entries(staging, &self.target.path),
            None => Ok(()),
        }
    }

    fn finish(&self, _claims: &Claims, result: &Result<UploadStats, Error>) {
        if let Some(staging) = lock(&self.staging).take() {
            // Best effort: after a success it is gone already; after a failure it holds at
            // most what the extraction left, which the next attempt removes too.
            let _ = fs::remove_dir_all(staging);
        }
        if let Ok(stats) = result {
            *lock(&self.stats) = Some(stats.clone());
        }
        let next = if result.is_ok() { VolumeState::Done } else { VolumeState::Ready };
        let mut state = lock(&self.state);
        self.set(&mut state, next);
    }
}

/// A poisoned lock only means another thread panicked while holding it: the values behind
/// these locks are plain, still meaningful.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Moves every entry of `from` into `to`, then removes `from` and flushes `to`. Refuses
/// before moving anything when a name already exists in `to`.
fn move_entries(from: &Path, to: &Path) -> Result<(), Error> {
    let io = |path: &Path, op: &str, e| {
        Error::Storage(storage::Error::Io { path: path.into(), op: op.into(), source: e })
    };
    let names: Vec<_> = fs::read_dir(from)
        .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<_>>())
        .map_err(|e| io(from, "reading the extracted archive", e))?;
    if let Some(name) = names.iter().find(|name| fs::symlink_metadata(to.join(name)).is_ok()) {
        return Err(Error::Format(disk_formats::Error::denied(format!(
            "the archive entry {:?} already exists in {}",
            name.to_string_lossy(),
            to.display()
        ))));
    }
    for name in &names {
        let dest = to.join(name);
        fs::rename(from.join(name), &dest)
            .map_err(|e| io(&dest, "moving the archive entry into place", e))?;
    }
    fs::remove_dir(from).map_err(|e| io(from, "removing the staging directory", e))?;
    fs::File::open(to).and_then(|d| d.sync_all()).map_err(|e| io(to, "flushing the directory", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::DEFAULT_TTL;

    fn backend() -> SingleVolumeBackend {
        let target = UploadTarget {
            path: "/nonexistent/disk.img".into(),
            max_size: 1 << 20,
            scratch_dir: "/tmp".into(),
            create: CreateOptions::default(),
        };
        SingleVolumeBackend::new("ns", "disk", target)
    }

    fn claims(name: &str) -> Claims {
        Claims::upload("ns", name, 0, DEFAULT_TTL)
    }

    #[test]
    fn one_upload_at_a_time_and_none_after_success() {
        let b = backend();
        assert!(b.begin(&claims("disk")).is_ok());
        assert!(matches!(b.begin(&claims("disk")), Err(Refusal::Busy(_))));

        b.finish(&claims("disk"), &Err(Error::Internal("dropped".into())));
        assert_eq!(b.state(), VolumeState::Ready);
        assert!(b.begin(&claims("disk")).is_ok());

        let stats = UploadStats {
            format: Format::Raw,
            wrappers: vec![],
            virtual_size: 512,
            data_bytes: 512,
            received: 512,
            archive: None,
        };
        b.finish(&claims("disk"), &Ok(stats));
        assert!(matches!(b.begin(&claims("disk")), Err(Refusal::AlreadyDone(_))));
    }

    fn archive_backend(dir: &Path) -> SingleVolumeBackend {
        let target = UploadTarget {
            path: dir.to_owned(),
            max_size: 1 << 20,
            scratch_dir: dir.to_owned(),
            create: CreateOptions::default(),
        };
        SingleVolumeBackend::new("ns", "disk", target).with_content(Content::Archive)
    }

    fn archive_stats() -> UploadStats {
        let archive = importer::ArchiveStats { files: 1, dirs: 1, symlinks: 0, bytes: 4 };
        UploadStats {
            format: Format::Raw,
            wrappers: vec![],
            virtual_size: 4,
            data_bytes: 4,
            received: 10240,
            archive: Some(archive),
        }
    }

    /// Runs `begin`, fills the target as an extraction would, then `commit` and `finish`.
    fn upload_into(b: &SingleVolumeBackend, entries: &[&str]) -> Result<UploadStats, Error> {
        let target = b.begin(&claims("disk")).unwrap();
        fs::create_dir(&target.path).unwrap();
        for entry in entries {
            let path = target.path.join(entry);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, b"data").unwrap();
        }
        let result = b.commit(&claims("disk"), &archive_stats()).map(|()| archive_stats());
        b.finish(&claims("disk"), &result);
        result
    }

    #[test]
    fn an_archive_into_an_existing_directory_is_staged_inside_and_moved_in() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("lost+found")).unwrap();
        let b = archive_backend(dir.path());

        let target = b.begin(&claims("disk")).unwrap();
        assert_eq!(target.path.parent(), Some(dir.path()), "staged on the volume's filesystem");
        b.finish(&claims("disk"), &Err(Error::Internal("dropped".into())));

        upload_into(&b, &["etc/hostname", "data.bin"]).unwrap();
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["data.bin", "etc", "lost+found"], "no staging directory left");
        assert_eq!(fs::read(dir.path().join("etc/hostname")).unwrap(), b"data");
        assert_eq!(b.state(), VolumeState::Done);
        assert_eq!(b.stats(), Some(archive_stats()));
    }

    #[test]
    fn an_archive_entry_that_exists_in_the_directory_fails_the_upload_before_anything_moves() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("lost+found")).unwrap();
        let b = archive_backend(dir.path());

        let err = upload_into(&b, &["a-file", "lost+found/x"]).unwrap_err();

        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(err.to_string().contains("archive entry \"lost+found\" already exists in"), "{err}");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["lost+found"], "nothing moved, staging removed");
        assert_eq!(b.state(), VolumeState::Ready, "the upload may be retried");
        assert_eq!(b.stats(), None);
        upload_into(&b, &["a-file"]).unwrap();
        assert!(dir.path().join("a-file").exists());
    }

    #[test]
    fn a_token_for_another_volume_is_unauthorized() {
        let err = backend().begin(&claims("other")).unwrap_err();
        assert_eq!(err, Refusal::Unauthorized("upload token is for ns/other, not for ns/disk".into()));
    }
}
