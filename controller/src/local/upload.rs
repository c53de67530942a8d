//! Uploads into DataVolumes: the [`UploadBackend`] of `diskplane serve`, over the local
//! [`Driver`].
//!
//! A token names `namespace/name`; [`DriverUploads::begin`](UploadBackend::begin) decides
//! from the store and the worker whether that DataVolume takes an upload now:
//!
//! | DataVolume | answer |
//! | --- | --- |
//! | missing, or no `spec.source.upload` | 404 |
//! | `Succeeded` (or its upload just finished) | 409 |
//! | an upload to it is running | 503 |
//! | not `UploadReady` yet (volume being created; the reconcile pass right after a failed upload) | 503 |
//! | `UploadReady` | the upload writes the pool's partial file, at most the virtual size |
//!
//! A `contentType: archive` DataVolume takes a tar (optionally gzip/xz/zstd) on every upload
//! route (CDI's upload proxy sends them all to `/upload-archive`), extracted into the volume's
//! `fs/` directory ([`Pool::filesystem`](super::pool::Pool::filesystem)) with at most the
//! virtual size of file content; `fs/` appears by one atomic rename once the whole archive
//! was extracted and the body's checks passed, so a failed upload leaves nothing and can be
//! retried. `/upload-archive` to a disk DataVolume is a bad request (400).
//!
//! A disk upload's partial file is committed as `disk.img` ([`Driver::commit_upload`]: grown,
//! flushed, renamed) in [`UploadBackend::commit`], before a synchronous upload is answered (an
//! archive is in place already). The end of an upload then goes to
//! [`Driver::upload_finished`]: success makes the DataVolume `Succeeded`; a
//! failure is a retryable worker
//! failure (phase stays `UploadReady`, `restartCount` grows, the Running condition carries the
//! message until the next upload worker starts) and, unlike other workers, uploads are taken
//! again at once: the next reconcile pass restarts the upload worker without a back-off
//! (`plan::retry_backoff`), as CDI's upload server takes a new upload right away.
//!
//! ## Main types
//! - [`DriverUploads`]: the backend; one per server.
//!
//! ## Caveats
//! - `status.progress` during an upload is body bytes received over the announced
//!   `Content-Length` (`N/A` for a chunked body without one); it reaches the DataVolume at the
//!   next reconcile.
//! - The file volume is written without preallocation (the upload fills what it has).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use storage::CreateOptions;
use uploader::backend::{Content, Refusal, UploadBackend, UploadStats, UploadTarget};
use uploader::token::Claims;

use super::{DATAVOLUMES, Driver};
use crate::api::datavolume::{CONTENT_TYPE_ARCHIVE, SourceKind, reason};
use crate::api::{DataVolume, DataVolumePhase};
use crate::plan::{WorkerFailure, WorkerState};

/// The operation of upload tokens (see `uploader::token`).
const OPERATION_UPLOAD: &str = "Upload";

/// A running upload.
#[derive(Debug, Clone, Copy)]
struct Running {
    /// Body bytes received so far.
    received: u64,
    /// The announced body length.
    expected: Option<u64>,
}

/// The running uploads, by namespace and name.
type InFlight = HashMap<(String, String), Running>;

/// The upload backend of the embedded server.
#[derive(Debug)]
pub struct DriverUploads {
    driver: Arc<Driver>,
    in_flight: Mutex<InFlight>,
}

impl DriverUploads {
    /// A backend writing into `driver`'s DataVolumes.
    pub fn new(driver: Arc<Driver>) -> DriverUploads {
        DriverUploads { driver, in_flight: Mutex::new(HashMap::new()) }
    }

    fn in_flight(&self) -> MutexGuard<'_, InFlight> {
        // The map stays consistent even if a holder panicked.
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Body bytes received by the running upload to `namespace/name`, and the body's
    /// announced length; `None` when no upload to it is running.
    pub fn received(&self, namespace: &str, name: &str) -> Option<(u64, Option<u64>)> {
        let running = self.in_flight().get(&(namespace.to_owned(), name.to_owned())).copied();
        running.map(|r| (r.received, r.expected))
    }
}

/// The upload DataVolume `namespace/name` of `driver`'s store, or why there is none: the check
/// behind an UploadTokenRequest and an upload (a 404 either way).
///
/// # Errors
/// A message saying what is missing.
pub fn upload_datavolume(driver: &Driver, namespace: &str, name: &str) -> Result<DataVolume, String> {
    let object = driver.store().get(DATAVOLUMES, namespace, name).ok().flatten();
    match object.and_then(|o| serde_json::from_value::<DataVolume>(o).ok()) {
        None => Err(format!("DataVolume {namespace}/{name} not found")),
        Some(dv) if dv.spec.source.as_ref().and_then(|s| s.kind()) != Some(SourceKind::Upload) => Err(
            format!("DataVolume {namespace}/{name} is not an upload target (it has no spec.source.upload)"),
        ),
        Some(dv) => Ok(dv),
    }
}

/// Whether the DataVolume holds an archive (`contentType: archive`) rather than a disk.
fn is_archive(dv: &DataVolume) -> bool {
    dv.spec.content_type() == CONTENT_TYPE_ARCHIVE
}

impl UploadBackend for DriverUploads {
    fn content(&self, claims: &Claims) -> Result<Content, Refusal> {
        let dv =
            upload_datavolume(&self.driver, &claims.namespace, &claims.name).map_err(Refusal::NotFound)?;
        Ok(if is_archive(&dv) { Content::Archive } else { Content::Disk })
    }

    fn begin(&self, claims: &Claims) -> Result<UploadTarget, Refusal> {
        let (namespace, name) = (claims.namespace.as_str(), claims.name.as_str());
        if claims.operation != OPERATION_UPLOAD {
            return Err(Refusal::Unauthorized(format!(
                "the token is for the operation {:?}, not for an upload",
                claims.operation
            )));
        }
        let dv = upload_datavolume(&self.driver, namespace, name).map_err(Refusal::NotFound)?;
        let phase = dv.status.as_ref().map(|s| s.phase).unwrap_or_default();
        let uid = dv.metadata.uid.as_deref().unwrap_or_default();
        let worker = self.driver.workers().observe(namespace, name, uid);
        if phase == DataVolumePhase::Succeeded || matches!(worker, WorkerState::Succeeded { .. }) {
            return Err(Refusal::AlreadyDone(format!(
                "DataVolume {namespace}/{name} has already been uploaded"
            )));
        }
        let mut in_flight = self.in_flight();
        let key = (namespace.to_owned(), name.to_owned());
        if in_flight.contains_key(&key) {
            return Err(Refusal::Busy(format!(
                "an upload to DataVolume {namespace}/{name} is already in progress"
            )));
        }
        let Some((path, max_size)) = self.driver.upload_target(namespace, name) else {
            let phase =
                if phase == DataVolumePhase::default() { "Pending".to_owned() } else { phase.to_string() };
            return Err(Refusal::NotReady(format!(
                "DataVolume {namespace}/{name} is not ready for an upload yet (phase {phase}); retry later"
            )));
        };
        let archive = is_archive(&dv);
        // An archive is extracted into `fs/`, which appears by itself once complete.
        let path = if archive { self.driver.pool().filesystem(namespace, name) } else { path };
        in_flight.insert(key, Running { received: 0, expected: None });
        Ok(UploadTarget {
            path,
            max_size,
            scratch_dir: self.driver.pool().dir(namespace, name),
            create: CreateOptions::default(),
        })
    }

    fn progress(&self, claims: &Claims, received: u64, expected: Option<u64>) {
        if let Some(entry) = self.in_flight().get_mut(&(claims.namespace.clone(), claims.name.clone())) {
            entry.received = received;
            entry.expected = expected;
        }
        // Shown as `status.progress` by the next reconcile (CDI never shows upload progress).
        self.driver.workers().report_progress(&claims.namespace, &claims.name, received, expected);
    }

    /// A disk upload's partial file becomes `disk.img` (flushed) before the client's answer;
    /// an archive's `fs/` was renamed into place by its extraction already.
    fn commit(&self, claims: &Claims, stats: &UploadStats) -> Result<(), uploader::Error> {
        if stats.archive.is_some() {
            return Ok(());
        }
        self.driver
            .commit_upload(&claims.namespace, &claims.name)
            .map_err(|e| uploader::Error::Internal(format!("putting the uploaded disk in place: {e}")))
    }

    fn finish(&self, claims: &Claims, result: &Result<UploadStats, uploader::Error>) {
        let (namespace, name) = (claims.namespace.as_str(), claims.name.as_str());
        let outcome = match result {
            Ok(stats) => {
                let what = match &stats.archive {
                    Some(a) => format!("archive: {} files, {} directories extracted", a.files, a.dirs),
                    None => stats.format.to_string(),
                };
                eprintln!(
                    "diskplane serve: {namespace}/{name}: upload of {} bytes ({what}) written",
                    stats.received
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("diskplane serve: {namespace}/{name}: upload failed: {}", e.one_line());
                Err(WorkerFailure {
                    reason: reason::ERROR.into(),
                    message: format!("upload failed: {}", e.one_line()),
                    retryable: true,
                })
            }
        };
        // Report first, then free the volume: a new upload must not start between the two.
        let reported = self.driver.upload_finished(namespace, name, outcome);
        if !reported {
            eprintln!("diskplane serve: {namespace}/{name}: no upload was waiting for the result");
        }
        self.in_flight().remove(&(namespace.to_owned(), name.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::DriverOptions;
    use serde_json::json;
    use uploader::token::DEFAULT_TTL;

    fn dv(name: &str, source: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1",
            "kind": "DataVolume",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"source": source, "storage": {"resources": {"requests": {"storage": "1Mi"}}}},
        })
    }

    fn claims(name: &str) -> Claims {
        Claims::upload("ns", name, 0, DEFAULT_TTL)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn begin_refuses_missing_non_upload_busy_and_failed_datavolumes() {
        let dir = tempfile::tempdir().unwrap();
        let driver = Driver::open(DriverOptions::new(dir.path().to_owned())).unwrap();
        driver.create(DATAVOLUMES, "ns", dv("up", json!({"upload": {}}))).unwrap();
        driver.create(DATAVOLUMES, "ns", dv("blank", json!({"blank": {}}))).unwrap();
        let uploads = DriverUploads::new(Arc::clone(&driver));

        assert!(
            matches!(uploads.begin(&claims("missing")), Err(Refusal::NotFound(m)) if m.contains("not found"))
        );
        assert!(
            matches!(uploads.begin(&claims("blank")), Err(Refusal::NotFound(m)) if m.contains("not an upload target"))
        );
        assert!(
            matches!(uploads.begin(&claims("up")), Err(Refusal::NotReady(m)) if m.contains("phase Pending"))
        );

        for _ in 0..4 {
            driver.reconcile_all().await.unwrap();
        }
        let target = uploads.begin(&claims("up")).unwrap();
        assert_eq!(target.path, driver.pool().partial("ns", "up"));
        assert_eq!(target.max_size, 1 << 20);
        assert!(matches!(uploads.begin(&claims("up")), Err(Refusal::Busy(_))));
        uploads.progress(&claims("up"), 512, Some(1024));
        assert_eq!(uploads.received("ns", "up"), Some((512, Some(1024))));

        // A failed upload frees the volume; the next reconcile counts the failure and takes
        // the next upload at once (no back-off for uploads).
        uploads.finish(&claims("up"), &Err(uploader::Error::Internal("dropped".into())));
        assert_eq!(uploads.received("ns", "up"), None);
        assert!(matches!(uploads.begin(&claims("up")), Err(Refusal::NotReady(_))));
        driver.reconcile_all().await.unwrap();
        let object = driver.store().get(DATAVOLUMES, "ns", "up").unwrap().unwrap();
        assert_eq!(object["status"]["phase"], "UploadReady");
        assert_eq!(object["status"]["restartCount"], 1);
        let running =
            object["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Running");
        assert_eq!(running.unwrap()["message"], "upload failed: dropped");
        assert!(uploads.begin(&claims("up")).is_ok(), "the retry is taken without a back-off");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_archive_datavolume_is_extracted_into_fs_and_succeeds_without_a_disk() {
        let dir = tempfile::tempdir().unwrap();
        let driver = Driver::open(DriverOptions::new(dir.path().to_owned())).unwrap();
        let mut object = dv("tree", json!({"upload": {}}));
        object["spec"]["contentType"] = json!("archive");
        driver.create(DATAVOLUMES, "ns", object).unwrap();
        driver.create(DATAVOLUMES, "ns", dv("disk", json!({"upload": {}}))).unwrap();
        let uploads = DriverUploads::new(Arc::clone(&driver));
        for _ in 0..4 {
            driver.reconcile_all().await.unwrap();
        }
        assert_eq!(uploads.content(&claims("tree")), Ok(Content::Archive));
        assert_eq!(uploads.content(&claims("disk")), Ok(Content::Disk));
        assert!(
            matches!(uploads.content(&claims("missing")), Err(Refusal::NotFound(m)) if m.contains("not found"))
        );

        let target = uploads.begin(&claims("tree")).unwrap();
        assert_eq!(target.path, driver.pool().filesystem("ns", "tree"));
        assert_eq!(target.max_size, 1 << 20);
        // What the extraction leaves on success: `fs/`, no disk.
        std::fs::create_dir(&target.path).unwrap();
        std::fs::write(target.path.join("hostname"), b"tree\n").unwrap();
        let archive = importer::ArchiveStats { files: 1, dirs: 0, symlinks: 0, bytes: 5 };
        let stats = UploadStats {
            format: disk_formats::Format::Raw,
            wrappers: vec![],
            virtual_size: 5,
            data_bytes: 5,
            received: 10240,
            archive: Some(archive),
        };
        uploads.finish(&claims("tree"), &Ok(stats));
        driver.reconcile_all().await.unwrap();

        let object = driver.store().get(DATAVOLUMES, "ns", "tree").unwrap().unwrap();
        assert_eq!(object["status"]["phase"], "Succeeded", "{object}");
        assert!(!driver.pool().disk("ns", "tree").exists());
        assert!(matches!(uploads.begin(&claims("tree")), Err(Refusal::AlreadyDone(_))));
    }
}
