//! In-process workers: one tokio task per transfer, at most `concurrency` moving bytes at a
//! time (a semaphore; the others wait as `Pending`, i.e. `ImportScheduled`).
//!
//! A worker writes `.disk.img.partial` in the volume directory and, only after the transfer
//! and every check succeeded, grows it to the requested virtual size, flushes it and renames
//! it to `disk.img` ([`Pool::commit`]); then it reports `Succeeded`. Failures are classified
//! once, here ([`failure_of_import`]): terminal (checksum, too large, hostile or unsupported
//! image, HTTP 4xx) or transient (network, 5xx), which `plan` turns into `Failed` or a retry.
//!
//! Worker state lives in memory only: after a restart every worker is gone, `plan` sees
//! `WorkerState::None` and starts a fresh one (the partial output was deleted at start-up).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use disk_formats::convert::ConvertOptions;
use disk_formats::{ErrorKind, OpenOptions};
use importer::{Checksum, HttpOptions, ImportOptions, Progress, Source};
use storage::{CreateOptions, Preallocation};
use tokio::sync::{Notify, Semaphore};
use tokio::task::AbortHandle;

use super::pool::Pool;
use crate::api::datavolume::reason;
use crate::plan::{WorkerFailure, WorkerState};

/// What a worker does, resolved by the driver from the DataVolume.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Job {
    /// `spec.source.http`.
    Http { url: String, checksum: Option<String>, insecure: bool, headers: Vec<(String, String)> },
    /// `spec.source.registry` (`docker://`); `insecure` = plain HTTP registry.
    Registry { url: String, architecture: Option<String>, insecure: bool },
    /// `contentType: archive` from `spec.source.http`: a tar extracted into the volume's `fs/`.
    Archive { url: String, checksum: Option<String>, insecure: bool, headers: Vec<(String, String)> },
    /// An empty disk.
    Blank,
    /// A copy of another volume's `disk.img`.
    Clone { source: PathBuf },
    /// Waits for an upload; finished through [`Workers::finish`].
    Upload,
    /// Cannot run here: fails at once with this (terminal) failure.
    Refuse(WorkerFailure),
}

/// Where a worker writes and what it must produce.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub virtual_size: u64,
    pub preallocate: bool,
}

#[derive(Debug, Clone)]
enum Run {
    Pending,
    Running,
    Done(Result<(), WorkerFailure>),
}

#[derive(Debug)]
struct Shared {
    run: Mutex<Run>,
    progress: Arc<Progress>,
}

#[derive(Debug)]
struct Entry {
    uid: String,
    attempt: i32,
    shared: Arc<Shared>,
    task: Option<AbortHandle>,
}

/// A live worker as the metrics see it.
#[derive(Debug, Clone)]
pub struct LiveWorker {
    pub namespace: String,
    pub name: String,
    /// Percent, when the total is known.
    pub progress: Option<f64>,
    /// Bytes received so far.
    pub bytes: u64,
}

/// The workers of one driver.
#[derive(Debug)]
pub struct Workers {
    entries: Mutex<HashMap<(String, String), Entry>>,
    permits: Arc<Semaphore>,
    wake: Arc<Notify>,
    pool: Pool,
    /// Bytes moved by finished workers.
    bytes_done: Arc<AtomicU64>,
}

impl Workers {
    /// Workers writing into `pool`, at most `concurrency` at a time; `wake` is notified
    /// whenever a worker changes state.
    pub fn new(pool: Pool, concurrency: usize, wake: Arc<Notify>) -> Workers {
        Workers {
            entries: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            wake,
            pool,
            bytes_done: Arc::new(AtomicU64::new(0)),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Entry>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The worker of the DataVolume `uid`, as `plan` sees it.
    pub fn observe(&self, namespace: &str, name: &str, uid: &str) -> WorkerState {
        let entries = self.entries();
        let Some(entry) = entries.get(&(namespace.to_owned(), name.to_owned())) else {
            return WorkerState::None;
        };
        if entry.uid != uid {
            return WorkerState::None;
        }
        let attempt = entry.attempt;
        let run = lock(&entry.shared.run).clone();
        match run {
            Run::Pending => WorkerState::Pending { attempt },
            Run::Running => {
                WorkerState::Running { attempt, progress: entry.shared.progress.snapshot().percent }
            }
            Run::Done(Ok(())) => WorkerState::Succeeded { attempt },
            Run::Done(Err(failure)) => WorkerState::Failed { attempt, failure },
        }
    }

    /// Starts a worker (replacing a leftover one of an older DataVolume of the same name).
    pub fn start(&self, uid: &str, attempt: i32, target: Target, job: Job) {
        let key = (target.namespace.clone(), target.name.clone());
        let shared = Arc::new(Shared { run: Mutex::new(Run::Pending), progress: Arc::new(Progress::new()) });
        let task = match job {
            Job::Upload => {
                *lock(&shared.run) = Run::Running;
                None
            }
            Job::Refuse(failure) => {
                *lock(&shared.run) = Run::Done(Err(failure));
                None
            }
            job => {
                let ctx = TaskContext {
                    shared: Arc::clone(&shared),
                    permits: Arc::clone(&self.permits),
                    wake: Arc::clone(&self.wake),
                    pool: self.pool.clone(),
                    bytes_done: Arc::clone(&self.bytes_done),
                };
                Some(tokio::spawn(ctx.run(target, job)).abort_handle())
            }
        };
        let entry = Entry { uid: uid.to_owned(), attempt, shared, task };
        if let Some(old) = self.entries().insert(key, entry) {
            abort(&old);
        }
        self.wake.notify_one();
    }

    /// Stops and forgets the worker of `namespace/name`, if any.
    pub fn remove(&self, namespace: &str, name: &str) {
        if let Some(old) = self.entries().remove(&(namespace.to_owned(), name.to_owned())) {
            abort(&old);
        }
    }

    /// Reports the end of a worker that runs outside this module (an upload).
    /// Returns `false` when no such worker is waiting.
    pub fn finish(&self, namespace: &str, name: &str, result: Result<(), WorkerFailure>) -> bool {
        let entries = self.entries();
        let Some(entry) = entries.get(&(namespace.to_owned(), name.to_owned())) else {
            return false;
        };
        let mut run = lock(&entry.shared.run);
        if !matches!(*run, Run::Running) {
            return false;
        }
        *run = Run::Done(result);
        drop(run);
        drop(entries);
        self.wake.notify_one();
        true
    }

    /// Reports the progress of a worker that runs outside this module (an upload): `done` of
    /// `total` bytes. Ignored when no such worker is running.
    pub fn report_progress(&self, namespace: &str, name: &str, done: u64, total: Option<u64>) {
        let entries = self.entries();
        if let Some(entry) = entries.get(&(namespace.to_owned(), name.to_owned()))
            && matches!(*lock(&entry.shared.run), Run::Running)
        {
            entry.shared.progress.report(done, total);
        }
    }

    /// Running workers and their progress.
    pub fn live(&self) -> Vec<LiveWorker> {
        let entries = self.entries();
        let mut live: Vec<LiveWorker> = entries
            .iter()
            .filter(|(_, e)| matches!(*lock(&e.shared.run), Run::Running))
            .map(|((namespace, name), e)| {
                let snapshot = e.shared.progress.snapshot();
                LiveWorker {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    progress: snapshot.percent,
                    bytes: snapshot.downloaded,
                }
            })
            .collect();
        live.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        live
    }

    /// Bytes moved so far: finished workers plus the running ones.
    pub fn bytes_moved(&self) -> u64 {
        let live: u64 = self.live().iter().map(|w| w.bytes).sum();
        self.bytes_done.load(Ordering::Relaxed).saturating_add(live)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn abort(entry: &Entry) {
    if let Some(task) = &entry.task {
        task.abort();
    }
}

struct TaskContext {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    wake: Arc<Notify>,
    pool: Pool,
    bytes_done: Arc<AtomicU64>,
}

impl TaskContext {
    async fn run(self, target: Target, job: Job) {
        let Ok(_permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return; // the semaphore is never closed
        };
        *lock(&self.shared.run) = Run::Running;
        self.wake.notify_one();
        // An archive lands in `fs/` by its own atomic rename: there is no disk to commit.
        let archive = matches!(job, Job::Archive { .. });
        let result = self.transfer(&target, job).await;
        let result = match result {
            Ok(()) if archive => Ok(()),
            Ok(()) => {
                let pool = self.pool.clone();
                let t = target.clone();
                let committed =
                    tokio::task::spawn_blocking(move || pool.commit(&t.namespace, &t.name, t.virtual_size))
                        .await;
                match committed {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(local_failure(&e)),
                    Err(e) => Err(local_failure(&e)),
                }
            }
            Err(failure) => {
                self.pool.discard_output(&target.namespace, &target.name);
                Err(failure)
            }
        };
        self.bytes_done.fetch_add(self.shared.progress.snapshot().downloaded, Ordering::Relaxed);
        *lock(&self.shared.run) = Run::Done(result);
        self.wake.notify_one();
    }

    async fn transfer(&self, target: &Target, job: Job) -> Result<(), WorkerFailure> {
        // The partial file, or a Block volume's device (zeroed).
        let pool = self.pool.clone();
        let (namespace, name) = (target.namespace.clone(), target.name.clone());
        let partial = match tokio::task::spawn_blocking(move || pool.prepare_output(&namespace, &name)).await
        {
            Ok(Ok(path)) => path,
            Ok(Err(e)) => return Err(local_failure(&e)),
            Err(e) => return Err(local_failure(&e)),
        };
        let opts = ImportOptions {
            http: HttpOptions::default(),
            checksum: None,
            open: OpenOptions { max_virtual_size: target.virtual_size },
            convert: ConvertOptions::default(),
            create: CreateOptions {
                preallocation: if target.preallocate { Preallocation::Full } else { Preallocation::Off },
                ..CreateOptions::default()
            },
            scratch_dir: self.pool.dir(&target.namespace, &target.name),
            progress: Arc::clone(&self.shared.progress),
        };
        match job {
            Job::Http { url, checksum, insecure, headers } => {
                let source: Source = url.parse().map_err(|e| failure_of_import(&e, false))?;
                let checksum = match checksum.as_deref().filter(|c| !c.is_empty()) {
                    Some(text) => Some(text.parse::<Checksum>().map_err(|e| failure_of_import(&e, false))?),
                    None => None,
                };
                let opts = ImportOptions {
                    http: HttpOptions { insecure, headers, ..HttpOptions::default() },
                    checksum,
                    ..opts
                };
                importer::import(&source, &partial, &opts).await.map_err(|e| failure_of_import(&e, false))?;
                Ok(())
            }
            Job::Archive { url, checksum, insecure, headers } => {
                let source: Source = url.parse().map_err(|e| failure_of_import(&e, false))?;
                let checksum = match checksum.as_deref().filter(|c| !c.is_empty()) {
                    Some(text) => Some(text.parse::<Checksum>().map_err(|e| failure_of_import(&e, false))?),
                    None => None,
                };
                let opts = ImportOptions {
                    http: HttpOptions { insecure, headers, ..HttpOptions::default() },
                    checksum,
                    ..opts
                };
                let fs = self.pool.filesystem(&target.namespace, &target.name);
                let limits = importer::ArchiveLimits {
                    max_bytes: target.virtual_size,
                    ..importer::ArchiveLimits::default()
                };
                importer::import_archive(&source, &fs, &opts, &limits)
                    .await
                    .map_err(|e| failure_of_import(&e, false))?;
                Ok(())
            }
            Job::Registry { url, architecture, insecure } => {
                let mut platform = importer::registry::Platform::host();
                if let Some(arch) = architecture.filter(|a| !a.is_empty()) {
                    platform = format!("linux/{arch}").parse().map_err(|e| failure_of_import(&e, true))?;
                }
                let opts = ImportOptions { http: HttpOptions { insecure, ..HttpOptions::default() }, ..opts };
                importer::registry::import_registry(&url, &partial, &platform, &opts)
                    .await
                    .map_err(|e| failure_of_import(&e, true))?;
                Ok(())
            }
            Job::Blank => {
                let preallocate = target.preallocate;
                let size = target.virtual_size;
                blocking(move || {
                    if storage::is_block_device(&partial) {
                        return Ok(()); // a Block volume's device, zeroed by `prepare_output`
                    }
                    let file = std::fs::File::create(&partial)?;
                    file.set_len(size)?;
                    if preallocate {
                        // Allocates every block; a file system that cannot keeps it sparse.
                        let volume = storage::Volume::create(
                            &partial,
                            Some(size),
                            size,
                            &CreateOptions { preallocation: Preallocation::Full, ..CreateOptions::default() },
                        )
                        .map_err(std::io::Error::other)?;
                        volume.finish().map_err(std::io::Error::other)?;
                    }
                    Ok(())
                })
                .await
            }
            Job::Clone { source } => {
                let size = target.virtual_size;
                let outcome = tokio::task::spawn_blocking(move || {
                    // A device has no holes to find: scan for zero blocks to keep the copy thin.
                    let detect_zeroes =
                        storage::is_block_device(&source) || storage::is_block_device(&partial);
                    let opts = cloner::CloneOptions {
                        target_size: Some(size),
                        detect_zeroes,
                        ..cloner::CloneOptions::default()
                    };
                    cloner::clone_volume(&source, &partial, &opts)
                })
                .await;
                match outcome {
                    Ok(Ok(report)) => {
                        self.bytes_done.fetch_add(report.bytes_copied, Ordering::Relaxed);
                        Ok(())
                    }
                    Ok(Err(e)) => Err(classify(e.kind(), false, reason::ERROR, one_line(&e))),
                    Err(e) => Err(local_failure(&e)),
                }
            }
            Job::Upload | Job::Refuse(_) => Ok(()), // handled in `start`
        }
    }
}

async fn blocking(f: impl FnOnce() -> std::io::Result<()> + Send + 'static) -> Result<(), WorkerFailure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(local_failure(&e)),
        Err(e) => Err(local_failure(&e)),
    }
}

/// A failure of the local machine (I/O of the pool): transient, worth a retry.
fn local_failure(e: &dyn std::error::Error) -> WorkerFailure {
    WorkerFailure { reason: reason::ERROR.into(), message: one_line(e), retryable: true }
}

/// The one mapping from an importer error to a worker failure: reason, message, and whether
/// a retry may help (see the module docs).
pub fn failure_of_import(e: &importer::Error, registry: bool) -> WorkerFailure {
    let default_reason = if registry { reason::IMAGE_PULL_FAILED } else { reason::ERROR };
    let mut failure = classify(e.kind(), e.is_retryable(), default_reason, one_line(e));
    if e.kind() == ErrorKind::Io && !e.is_retryable() {
        failure.retryable = false;
    }
    failure
}

/// The one mapping from an error kind to a worker failure (also used by the Kubernetes worker
/// processes, `diskplane worker`): checksum and too-large failures are terminal with CDI's
/// reason and message; any other kind keeps `default_reason` and `retryable`.
pub fn classify(kind: ErrorKind, retryable: bool, default_reason: &str, message: String) -> WorkerFailure {
    match kind {
        ErrorKind::Checksum => {
            WorkerFailure { reason: reason::CHECKSUM_ERROR.into(), message, retryable: false }
        }
        // CDI normalizes every "larger than available" message to this one.
        ErrorKind::TooLarge => WorkerFailure {
            reason: reason::ERROR.into(),
            message: format!("DataVolume too small to contain image: {message}"),
            retryable: false,
        },
        _ => WorkerFailure { reason: default_reason.into(), message, retryable },
    }
}

/// The error and its causes on one line, without repeating a cause its parent already quotes.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_mismatch_is_terminal_with_cdi_reason() {
        let e = importer::Error::Checksum { expected: "sha256:00".into(), actual: "sha256:11".into() };
        let failure = failure_of_import(&e, false);
        assert_eq!(failure.reason, "ChecksumError");
        assert!(!failure.retryable);
    }

    #[test]
    fn too_large_images_get_cdis_normalized_message() {
        let e = importer::Error::TooLarge("virtual size 2 bytes exceeds the limit of 1 bytes".into());
        let failure = failure_of_import(&e, false);
        assert!(failure.message.starts_with("DataVolume too small to contain image"), "{}", failure.message);
        assert!(!failure.retryable);
    }
}
