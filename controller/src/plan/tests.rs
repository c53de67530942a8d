//! Table tests for `plan`: one observed state → the expected steps, one transition per test.

use super::*;
use crate::api::datavolume::{
    ClaimSpec, DataVolumeSource, DataVolumeSourceRef, DataVolumeSpec, EmptySource, HttpSource,
};
use crate::api::{NamespacedName, ObjectMeta};
use crate::quantity::Quantity;

const MI: u64 = 1024 * 1024;
const GI: u64 = 1024 * MI;
const T0: Timestamp = Timestamp(1_795_336_088); // 2026-11-22T08:28:08Z

// ---- builders -------------------------------------------------------------------------------

fn storage(size: Option<&str>) -> ClaimSpec {
    let mut claim = ClaimSpec::default();
    if let Some(size) = size {
        claim.resources.requests.insert("storage".into(), Quantity::from(size));
    }
    claim
}

fn dv_with(source: DataVolumeSource, claim: ClaimSpec) -> DataVolume {
    DataVolume {
        api_version: crate::api::API_VERSION.into(),
        kind: "DataVolume".into(),
        metadata: ObjectMeta {
            name: Some("disk".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: DataVolumeSpec { source: Some(source), storage: Some(claim), ..Default::default() },
        status: None,
    }
}

fn import_dv() -> DataVolume {
    let http = HttpSource { url: "https://example.com/disk.qcow2".into(), ..Default::default() };
    dv_with(DataVolumeSource { http: Some(http), ..Default::default() }, storage(Some("1Gi")))
}

fn upload_dv() -> DataVolume {
    dv_with(
        DataVolumeSource { upload: Some(EmptySource::default()), ..Default::default() },
        storage(Some("1Gi")),
    )
}

fn blank_dv() -> DataVolume {
    dv_with(
        DataVolumeSource { blank: Some(EmptySource::default()), ..Default::default() },
        storage(Some("1Gi")),
    )
}

fn clone_dv(size: Option<&str>) -> DataVolume {
    let pvc = NamespacedName { namespace: "golden".into(), name: "fedora".into() };
    dv_with(DataVolumeSource { pvc: Some(pvc), ..Default::default() }, storage(size))
}

fn observed(dv: DataVolume) -> Observed {
    Observed {
        dv,
        volume: VolumeState::Absent,
        worker: WorkerState::None,
        source: SourceState::NotApplicable,
        now: T0,
        config: PlanConfig::default(),
    }
}

/// An observation one step further: the status the previous plan wrote, the volume created.
fn after(mut o: Observed, steps: &[Step]) -> Observed {
    for step in steps {
        match step {
            Step::UpdateStatus(status) => o.dv.status = Some(status.clone()),
            Step::CreateVolume(request) => {
                o.volume = VolumeState::Present { capacity_bytes: request.capacity_bytes }
            }
            Step::DeleteWorker => o.worker = WorkerState::None,
            _ => {}
        }
    }
    o
}

fn with_worker(o: Observed, worker: WorkerState) -> Observed {
    Observed { worker, ..o }
}

/// Walks a fresh DataVolume through create-volume and start-worker, returning the observation
/// right after the worker was started (worker still `None` in the returned observation).
fn observed_ready(dv: DataVolume) -> Observed {
    let o = observed(dv);
    let o = after(o.clone(), &plan(&o));
    after(o.clone(), &plan(&o))
}

fn status_of(steps: &[Step]) -> &DataVolumeStatus {
    steps
        .iter()
        .find_map(|s| match s {
            Step::UpdateStatus(status) => Some(status),
            _ => None,
        })
        .expect("an UpdateStatus step")
}

fn cond<'a>(status: &'a DataVolumeStatus, type_: &str) -> &'a Condition {
    status.condition(type_).unwrap_or_else(|| panic!("condition {type_}"))
}

fn transient(message: &str) -> WorkerFailure {
    WorkerFailure { reason: "Error".into(), message: message.into(), retryable: true }
}

fn terminal(reason: &str, message: &str) -> WorkerFailure {
    WorkerFailure { reason: reason.into(), message: message.into(), retryable: false }
}

fn without_status(steps: &[Step]) -> Vec<Step> {
    steps.iter().filter(|s| !matches!(s, Step::UpdateStatus(_))).cloned().collect()
}

// ---- sizing ---------------------------------------------------------------------------------

#[test]
fn required_space_follows_cdi_formula() {
    let overhead = Overhead::default();
    // ceil(1 GiB / 0.945)
    assert_eq!(overhead.required_space(GI), Some((GI * 1000).div_ceil(945)));
    // sizes are aligned to 1 MiB first
    assert_eq!(overhead.required_space(1), overhead.required_space(MI));
    assert_eq!(Overhead::from_per_mille(0).unwrap().required_space(GI), Some(GI));
    assert_eq!(overhead.required_space(u64::MAX), None);
}

#[test]
fn overhead_parses_cdiconfig_text() {
    assert_eq!(Overhead::parse("0.055"), Overhead::from_per_mille(55));
    assert_eq!(Overhead::parse("0.06"), Overhead::from_per_mille(60));
    assert_eq!(Overhead::parse("0"), Overhead::from_per_mille(0));
    assert_eq!(Overhead::parse("0.1234"), None);
    assert_eq!(Overhead::parse("1"), None);
    assert_eq!(Overhead::parse("abc"), None);
}

#[test]
fn backoff_doubles_from_ten_seconds_and_caps_at_five_minutes() {
    let secs: Vec<u64> = (1..=7).map(|n| backoff(n).as_secs()).collect();
    assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300]);
    assert_eq!(backoff(i32::MAX), BACKOFF_CAP);
}

// ---- Pending: the volume ----------------------------------------------------------------------

#[test]
fn new_import_creates_filesystem_volume_with_overhead_and_is_pending() {
    let steps = plan(&observed(import_dv()));

    let status = status_of(&steps);
    assert_eq!(status.phase, DataVolumePhase::Pending);
    assert_eq!(status.claim_name.as_deref(), Some("disk"));
    assert_eq!(status.progress.as_deref(), Some("N/A"));
    assert_eq!(cond(status, "Bound").reason.as_deref(), Some("Pending"));
    assert_eq!(cond(status, "Ready").status, ConditionStatus::False);
    assert_eq!(
        without_status(&steps),
        [
            Step::CreateVolume(VolumeRequest {
                name: "disk".into(),
                capacity_bytes: (GI * 1000).div_ceil(945),
                virtual_size_bytes: GI,
                block: false,
                preallocate: false,
                storage_class_name: None,
            }),
            Step::AwaitChange,
        ]
    );
}

#[test]
fn block_volume_is_not_inflated() {
    let mut dv = import_dv();
    dv.spec.storage.as_mut().unwrap().volume_mode = Some("Block".into());

    let steps = plan(&observed(dv));

    let Some(Step::CreateVolume(request)) = steps.iter().find(|s| matches!(s, Step::CreateVolume(_))) else {
        panic!("no CreateVolume in {steps:?}")
    };
    assert_eq!((request.capacity_bytes, request.virtual_size_bytes, request.block), (GI, GI, true));
}

#[test]
fn pvc_api_volume_is_created_exactly_as_requested() {
    let mut dv = import_dv();
    let mut pvc = dv.spec.storage.take().unwrap();
    pvc.access_modes = vec!["ReadWriteOnce".into()];
    dv.spec.pvc = Some(pvc);

    let steps = plan(&observed(dv));

    assert!(steps.iter().any(|s| matches!(s, Step::CreateVolume(r) if r.capacity_bytes == GI)), "{steps:?}");
}

#[test]
fn preallocation_comes_from_the_spec_or_else_the_config() {
    let mut o = observed(import_dv());
    o.config.preallocation = true;
    assert!(plan(&o).iter().any(|s| matches!(s, Step::CreateVolume(r) if r.preallocate)));

    o.dv.spec.preallocation = Some(false);
    assert!(plan(&o).iter().any(|s| matches!(s, Step::CreateVolume(r) if !r.preallocate)));
}

// ---- import ------------------------------------------------------------------------------------

#[test]
fn import_with_volume_and_no_worker_starts_worker_and_is_import_scheduled() {
    let o = observed(import_dv());
    let o = after(o.clone(), &plan(&o));

    let steps = plan(&o);

    let status = status_of(&steps);
    assert_eq!(status.phase, DataVolumePhase::ImportScheduled);
    assert_eq!(cond(status, "Bound").status, ConditionStatus::True);
    assert_eq!(cond(status, "Bound").message.as_deref(), Some("PVC disk Bound"));
    assert_eq!(
        without_status(&steps),
        [Step::StartWorker { kind: WorkerKind::Import, attempt: 0 }, Step::AwaitChange]
    );
}

#[test]
fn import_worker_pending_stays_import_scheduled() {
    let o = with_worker(observed_ready(import_dv()), WorkerState::Pending { attempt: 0 });

    let steps = plan(&o);

    assert_eq!(steps, [Step::AwaitChange], "already ImportScheduled: nothing to write");
    assert_eq!(o.dv.status.as_ref().unwrap().phase, DataVolumePhase::ImportScheduled);
}

#[test]
fn import_worker_running_reports_progress_and_is_import_in_progress() {
    let o =
        with_worker(observed_ready(import_dv()), WorkerState::Running { attempt: 0, progress: Some(42.5) });

    let steps = plan(&o);

    let status = status_of(&steps);
    assert_eq!(status.phase, DataVolumePhase::ImportInProgress);
    assert_eq!(status.progress.as_deref(), Some("42.50%"));
    assert_eq!(cond(status, "Running").status, ConditionStatus::True);
    assert_eq!(cond(status, "Ready").reason.as_deref(), Some("TransferRunning"));
    assert_eq!(without_status(&steps), [Step::RequeueAfter(PROGRESS_INTERVAL)]);
}

#[test]
fn import_worker_running_without_known_total_reports_na() {
    let o = with_worker(observed_ready(import_dv()), WorkerState::Running { attempt: 0, progress: None });

    let status = status_of(&plan(&o)).clone();

    assert_eq!(status.progress.as_deref(), Some("N/A"));
}

#[test]
fn import_worker_succeeded_marks_succeeded_and_deletes_worker() {
    let o = with_worker(observed_ready(import_dv()), WorkerState::Succeeded { attempt: 0 });

    let steps = plan(&o);

    let status = status_of(&steps);
    assert_eq!(status.phase, DataVolumePhase::Succeeded);
    assert_eq!(status.progress.as_deref(), Some("100.0%"));
    assert_eq!(cond(status, "Ready").status, ConditionStatus::True);
    assert_eq!(cond(status, "Running").reason.as_deref(), Some("Completed"));
    assert_eq!(without_status(&steps), [Step::DeleteWorker, Step::AwaitChange]);
}

#[test]
fn succeeded_data_volume_yields_no_work() {
    let o = with_worker(observed_ready(import_dv()), WorkerState::Succeeded { attempt: 0 });
    let o = after(o.clone(), &plan(&o));

    let steps = plan(&o);

    assert_eq!(steps, [Step::AwaitChange]);
    assert!(!steps.iter().any(Step::is_work));
}

#[test]
fn succeeded_data_volume_with_leftover_worker_only_deletes_it() {
    let o = with_worker(observed_ready(import_dv()), WorkerState::Succeeded { attempt: 0 });
    let o = with_worker(after(o.clone(), &plan(&o)), WorkerState::Succeeded { attempt: 0 });

    assert_eq!(plan(&o), [Step::DeleteWorker, Step::AwaitChange]);
}

#[test]
fn import_worker_failed_with_retryable_error_restarts_with_backoff() {
    let o = with_worker(
        observed_ready(import_dv()),
        WorkerState::Failed { attempt: 0, failure: transient("connection reset by peer") },
    );

    let steps = plan(&o);

    let status = status_of(&steps);
    assert_eq!(status.phase, DataVolumePhase::ImportInProgress, "transient failures do not fail the DV");
    assert_eq!(status.restart_count, 1);
    let running = cond(status, "Running");
    assert_eq!((running.status, running.reason.as_deref()), (ConditionStatus::False, Some("Error")));
    assert_eq!(running.message.as_deref(), Some("connection reset by peer"));
    assert_eq!(running.last_transition_time.as_deref(), Some("2026-11-22T08:28:08Z"));
    assert_eq!(without_status(&steps), [Step::DeleteWorker, Step::RequeueAfter(backoff(1))]);
}

#[test]
fn retry_waits_out_the_backoff_before_starting_the_next_attempt() {
    let o = with_worker(
        observed_ready(import_dv()),
        WorkerState::Failed { attempt: 0, failure: transient("reset") },
    );
    let o = after(o.clone(), &plan(&o));

    let early = Observed { now: Timestamp(T0.0 + 4), ..o.clone() };
    assert_eq!(plan(&early), [Step::RequeueAfter(Duration::from_secs(6))]);

    let due = Observed { now: Timestamp(T0.0 + 10), ..o };
    let steps = plan(&due);
    assert_eq!(status_of(&steps).phase, DataVolumePhase::ImportScheduled);
    assert_eq!(
        without_status(&steps),
        [Step::StartWorker { kind: WorkerKind::Import, attempt: 1 }, Step::AwaitChange]
    );
}

#[test]
fn failure_already_counted_is_not_counted_twice() {
    // The status update was applied but the worker was not deleted yet (driver crashed).
    let failed = WorkerState::Failed { attempt: 0, failure: transient("reset") };
    let o = with_worker(observed_ready(import_dv()), failed.clone());
    let o = with_worker(after(o.clone(), &plan(&o)), failed);

    let steps = plan(&o);

    assert_eq!(steps, [Step::DeleteWorker, Step::RequeueAfter(backoff(1))]);
}

#[test]
fn second_transient_failure_doubles_the_backoff() {
    let o = with_worker(
        observed_ready(import_dv()),
        WorkerState::Failed { attempt: 0, failure: transient("reset") },
    );
    let o = after(o.clone(), &plan(&o));
    let o = Observed { now: Timestamp(T0.0 + 10), ..o };
    let o = after(o.clone(), &plan(&o)); // attempt 1 started
    let o = with_worker(o, WorkerState::Failed { attempt: 1, failure: transient("reset again") });

    let steps = plan(&o);

    assert_eq!(status_of(&steps).restart_count, 2);
    assert_eq!(without_status(&steps), [Step::DeleteWorker, Step::RequeueAfter(Duration::from_secs(20))]);
}

#[test]
fn worker_failing_while_starting_still_starts_the_backoff_clock() {
    let o = observed_ready(import_dv()); // Running=False (Pending) since T0
    let o = Observed { now: Timestamp(T0.0 + 100), ..o };
    let o = with_worker(o, WorkerState::Failed { attempt: 0, failure: transient("image pull") });

    let o = after(o.clone(), &plan(&o));
    let running = cond(o.dv.status.as_ref().unwrap(), "Running");

    assert_eq!(running.last_transition_time, Some(Timestamp(T0.0 + 100).to_rfc3339()));
    assert_eq!(plan(&o), [Step::RequeueAfter(backoff(1))]);
}

#[test]
fn import_worker_failed_with_checksum_error_fails_the_data_volume() {
    let failure = terminal("ChecksumError", "checksum mismatch: want sha256:ab…, got sha256:cd…");
    let o = with_worker(observed_ready(import_dv()), WorkerState::Failed { attempt: 0, failure });

    let steps = plan(&o);

    let status = status_of(&steps);
    assert_eq!(status.phase, DataVolumePhase::Failed);
    assert_eq!(status.restart_count, 0);
    assert_eq!(cond(status, "Running").reason.as_deref(), Some("ChecksumError"));
    assert_eq!(without_status(&steps), [Step::DeleteWorker, Step::AwaitChange]);
}

#[test]
fn import_worker_failed_with_image_too_large_fails_with_cdi_message() {
    let failure = terminal("Error", "DataVolume too small to contain image");
    let o = with_worker(observed_ready(import_dv()), WorkerState::Failed { attempt: 0, failure });

    let status = status_of(&plan(&o)).clone();

    assert_eq!(status.phase, DataVolumePhase::Failed);
    assert_eq!(cond(&status, "Running").message.as_deref(), Some("DataVolume too small to contain image"));
}

#[test]
fn failed_data_volume_yields_no_work() {
    let failure = terminal("Error", "403 Forbidden");
    let o = with_worker(observed_ready(import_dv()), WorkerState::Failed { attempt: 0, failure });
    let o = after(o.clone(), &plan(&o));

    assert_eq!(plan(&o), [Step::AwaitChange]);
}

// ---- blank, upload, clone --------------------------------------------------------------------------

#[test]
fn blank_runs_a_blank_worker_through_import_phases() {
    let o = observed(blank_dv());
    let o = after(o.clone(), &plan(&o));

    let steps = plan(&o);

    assert_eq!(status_of(&steps).phase, DataVolumePhase::ImportScheduled);
    assert!(steps.contains(&Step::StartWorker { kind: WorkerKind::Blank, attempt: 0 }));
}

#[test]
fn upload_worker_pending_is_upload_scheduled() {
    let o = observed(upload_dv());
    let o = after(o.clone(), &plan(&o));

    let steps = plan(&o);

    assert_eq!(status_of(&steps).phase, DataVolumePhase::UploadScheduled);
    assert!(steps.contains(&Step::StartWorker { kind: WorkerKind::Upload, attempt: 0 }));
}

#[test]
fn upload_worker_running_is_upload_ready() {
    let o = with_worker(observed_ready(upload_dv()), WorkerState::Running { attempt: 0, progress: None });

    let status = status_of(&plan(&o)).clone();

    assert_eq!(status.phase, DataVolumePhase::UploadReady);
    assert_eq!(cond(&status, "Running").status, ConditionStatus::True);
}

#[test]
fn upload_worker_succeeded_marks_succeeded() {
    let o = with_worker(observed_ready(upload_dv()), WorkerState::Succeeded { attempt: 0 });

    assert_eq!(status_of(&plan(&o)).phase, DataVolumePhase::Succeeded);
}

#[test]
fn clone_without_size_takes_the_source_size() {
    let mut o = observed(clone_dv(None));
    o.source = SourceState::Present { size_bytes: 10 * GI };

    let steps = plan(&o);

    let Some(Step::CreateVolume(request)) = steps.iter().find(|s| matches!(s, Step::CreateVolume(_))) else {
        panic!("no CreateVolume in {steps:?}")
    };
    assert_eq!(request.virtual_size_bytes, 10 * GI);
    assert_eq!(request.capacity_bytes, Overhead::default().required_space(10 * GI).unwrap());
}

#[test]
fn clone_without_source_waits_pending_with_clone_without_source() {
    let mut o = observed(clone_dv(Some("5Gi")));
    o.source = SourceState::Missing;

    let steps = plan(&o);

    let status = status_of(&steps);
    assert_eq!(status.phase, DataVolumePhase::Pending);
    let ready = cond(status, "Ready");
    assert_eq!(ready.reason.as_deref(), Some("CloneWithoutSource"));
    assert_eq!(ready.message.as_deref(), Some("Clone source PVC golden/fedora not found"));
    assert_eq!(without_status(&steps), [Step::AwaitChange]);
}

#[test]
fn clone_with_source_goes_clone_scheduled_then_clone_in_progress() {
    let mut o = observed(clone_dv(None));
    o.source = SourceState::Present { size_bytes: GI };
    let o = after(o.clone(), &plan(&o));

    let steps = plan(&o);
    assert_eq!(status_of(&steps).phase, DataVolumePhase::CloneScheduled);
    assert!(steps.contains(&Step::StartWorker { kind: WorkerKind::Clone, attempt: 0 }));

    let o = with_worker(after(o, &steps), WorkerState::Running { attempt: 0, progress: Some(99.999) });
    let status = status_of(&plan(&o)).clone();
    assert_eq!(status.phase, DataVolumePhase::CloneInProgress);
    assert_eq!(status.progress.as_deref(), Some("100.00%"));
}

#[test]
fn source_ref_is_planned_as_a_clone_of_the_resolved_source() {
    let mut dv = clone_dv(Some("5Gi"));
    dv.spec.source = None;
    dv.spec.source_ref =
        Some(DataVolumeSourceRef { kind: "DataSource".into(), namespace: None, name: "fedora".into() });
    let mut o = observed(dv);
    o.source = SourceState::Present { size_bytes: GI };
    let o = after(o.clone(), &plan(&o));

    assert!(plan(&o).contains(&Step::StartWorker { kind: WorkerKind::Clone, attempt: 0 }));
}

// ---- invalid, deleted, idempotence ---------------------------------------------------------------

#[test]
fn invalid_spec_fails_with_claim_not_valid() {
    let mut dv = import_dv();
    dv.spec.content_type = Some("archive".into());
    dv.spec.storage.as_mut().unwrap().volume_mode = Some("Block".into());

    let steps = plan(&observed(dv));

    let status = status_of(&steps);
    assert_eq!(status.phase, DataVolumePhase::Failed);
    let ready = cond(status, "Ready");
    assert_eq!(ready.reason.as_deref(), Some("ErrClaimNotValid"));
    assert!(ready.message.as_deref().unwrap().contains("cannot have block volumeMode"), "{ready:?}");
    assert_eq!(without_status(&steps), [Step::AwaitChange]);
}

#[test]
fn deleted_data_volume_only_deletes_its_worker() {
    let mut o = with_worker(observed_ready(import_dv()), WorkerState::Running { attempt: 0, progress: None });
    o.dv.metadata.deletion_timestamp = Some(T0.to_rfc3339());

    assert_eq!(plan(&o), [Step::DeleteWorker, Step::AwaitChange]);
}

#[test]
fn same_observation_gives_same_steps() {
    let observations = [
        observed(import_dv()),
        observed_ready(import_dv()),
        with_worker(observed_ready(import_dv()), WorkerState::Running { attempt: 0, progress: Some(10.0) }),
        with_worker(observed_ready(import_dv()), WorkerState::Failed { attempt: 0, failure: transient("x") }),
    ];
    for o in observations {
        assert_eq!(plan(&o), plan(&o.clone()));
    }
}

#[test]
fn replanning_after_applying_status_writes_no_status_again() {
    let workers = [
        WorkerState::Pending { attempt: 0 },
        WorkerState::Running { attempt: 0, progress: Some(50.0) },
        WorkerState::Succeeded { attempt: 0 },
        WorkerState::Failed { attempt: 0, failure: transient("x") },
        WorkerState::Failed { attempt: 0, failure: terminal("Error", "x") },
    ];
    for worker in workers {
        let o = with_worker(observed_ready(import_dv()), worker.clone());
        let next =
            Observed { now: Timestamp(T0.0 + 1), ..with_worker(after(o.clone(), &plan(&o)), worker.clone()) };

        let steps = plan(&next);

        assert!(!steps.iter().any(|s| matches!(s, Step::UpdateStatus(_))), "{worker:?}: {steps:?}");
    }
}

#[test]
fn every_plan_ends_with_requeue_or_await() {
    let o = observed_ready(import_dv());
    let cases = [
        observed(import_dv()),
        o.clone(),
        with_worker(o.clone(), WorkerState::Running { attempt: 0, progress: None }),
        with_worker(o.clone(), WorkerState::Succeeded { attempt: 0 }),
        with_worker(o, WorkerState::Failed { attempt: 0, failure: transient("x") }),
    ];
    for case in cases {
        let steps = plan(&case);
        assert!(matches!(steps.last(), Some(Step::RequeueAfter(_) | Step::AwaitChange)), "{steps:?}");
    }
}

// ---- upload retries ---------------------------------------------------------------------------

#[test]
fn retry_backoff_is_zero_for_uploads_only() {
    let table = [
        (WorkerKind::Upload, 1, Duration::ZERO),
        (WorkerKind::Upload, 7, Duration::ZERO),
        (WorkerKind::Import, 1, backoff(1)),
        (WorkerKind::Clone, 2, backoff(2)),
        (WorkerKind::Blank, 3, backoff(3)),
    ];
    for (kind, restarts, want) in table {
        assert_eq!(retry_backoff(kind, restarts), want, "{kind:?} after {restarts} restarts");
    }
}

#[test]
fn failed_upload_is_counted_and_the_next_upload_is_taken_at_once() {
    let o = with_worker(
        observed_ready(upload_dv()),
        WorkerState::Failed { attempt: 0, failure: transient("upload failed: connection reset") },
    );

    let steps = plan(&o);

    let status = status_of(&steps);
    assert_eq!(status.phase, DataVolumePhase::UploadReady);
    assert_eq!(status.restart_count, 1);
    let running = cond(status, "Running");
    assert_eq!(running.message.as_deref(), Some("upload failed: connection reset"));
    assert_eq!(
        without_status(&steps),
        [Step::DeleteWorker, Step::StartWorker { kind: WorkerKind::Upload, attempt: 1 }, Step::AwaitChange]
    );
}

#[test]
fn failed_upload_already_counted_restarts_without_counting_again() {
    // The status was written but the driver stopped before it restarted the worker.
    let failed = WorkerState::Failed { attempt: 0, failure: transient("reset") };
    let o = with_worker(observed_ready(upload_dv()), failed.clone());
    let o = with_worker(after(o.clone(), &plan(&o)), failed);

    let steps = plan(&o);

    assert_eq!(
        steps,
        [Step::DeleteWorker, Step::StartWorker { kind: WorkerKind::Upload, attempt: 1 }, Step::AwaitChange]
    );
}

#[test]
fn upload_without_worker_after_a_failure_starts_one_without_backoff() {
    let o = with_worker(
        observed_ready(upload_dv()),
        WorkerState::Failed { attempt: 0, failure: transient("reset") },
    );
    // The worker was deleted but not restarted (e.g. a driver restart): still no waiting.
    let o = after(o.clone(), &plan(&o));
    assert_eq!(o.worker, WorkerState::None);

    let steps = plan(&o);

    assert_eq!(status_of(&steps).phase, DataVolumePhase::UploadScheduled);
    assert_eq!(
        without_status(&steps),
        [Step::StartWorker { kind: WorkerKind::Upload, attempt: 1 }, Step::AwaitChange]
    );
}

#[test]
fn a_terminal_upload_failure_still_fails_the_data_volume() {
    let failure = terminal("Error", "image is larger than the volume");
    let o = with_worker(observed_ready(upload_dv()), WorkerState::Failed { attempt: 0, failure });

    let steps = plan(&o);

    assert_eq!(status_of(&steps).phase, DataVolumePhase::Failed);
    assert_eq!(without_status(&steps), [Step::DeleteWorker, Step::AwaitChange]);
}
