use serde_json::json;

use super::*;
use crate::api::DataVolume;

fn pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

fn failed_pod(message: &str, exit_code: i32) -> Pod {
    pod(json!({
        "metadata": {"name": "importer-d", "annotations": {"diskplane.io/attempt": "1"}},
        "status": {"phase": "Failed", "containerStatuses": [{
            "name": "importer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": exit_code, "message": message}}
        }]}
    }))
}

#[test]
fn a_reported_failure_keeps_its_reason_message_and_retryability() {
    let message =
        r#"{"result":"Failed","reason":"ChecksumError","message":"sha256 mismatch","retryable":false}"#;
    assert_eq!(
        worker_state(Some(&failed_pod(message, 1)), None),
        WorkerState::Failed {
            attempt: 1,
            failure: WorkerFailure {
                reason: "ChecksumError".into(),
                message: "sha256 mismatch".into(),
                retryable: false
            }
        }
    );
}

#[test]
fn an_unparsable_termination_is_a_transient_error_naming_the_exit_code_and_last_log_line() {
    let failure = parse_termination("starting\npanicked at foo\n", 101, Some("Error"));
    assert_eq!(
        failure,
        WorkerFailure {
            reason: "Error".into(),
            message: "worker exited with code 101: panicked at foo".into(),
            retryable: true
        }
    );
    let oom = parse_termination("", 137, Some("OOMKilled"));
    assert_eq!(oom.message, "worker exited with code 137 (OOMKilled)");
    let long = parse_termination(&"x".repeat(5000), 1, None);
    assert!(long.message.len() < MAX_MESSAGE + 64);
}

#[test]
fn an_evicted_pod_without_container_state_is_retried() {
    let evicted = pod(
        json!({"metadata": {"name": "p"}, "status": {"phase": "Failed", "reason": "Evicted", "message": "low on disk"}}),
    );
    let WorkerState::Failed { failure, .. } = worker_state(Some(&evicted), None) else { panic!() };
    assert_eq!(
        (failure.message.as_str(), failure.retryable),
        ("worker Pod failed: Evicted: low on disk", true)
    );
}

#[test]
fn pod_phases_map_to_worker_states_with_their_attempt() {
    let with_phase = |phase: &str| {
        pod(
            json!({"metadata": {"name": "p", "annotations": {"diskplane.io/attempt": "3"}}, "status": {"phase": phase}}),
        )
    };
    assert_eq!(worker_state(None, None), WorkerState::None);
    assert_eq!(worker_state(Some(&with_phase("Pending")), None), WorkerState::Pending { attempt: 3 });
    assert_eq!(
        worker_state(Some(&with_phase("Running")), Some(42.0)),
        WorkerState::Running { attempt: 3, progress: Some(42.0) }
    );
    assert_eq!(worker_state(Some(&with_phase("Succeeded")), None), WorkerState::Succeeded { attempt: 3 });
    assert_eq!(worker_state(Some(&with_phase("Unknown")), None), WorkerState::Pending { attempt: 3 });
}

#[test]
fn progress_is_read_from_the_ratio_with_or_without_labels() {
    let text = "# TYPE x gauge\nkubevirt_cdi_import_progress_total{ownerUID=\"u\"} 42.5\ndiskplane_progress_ratio{ownerUID=\"u\"} 0.425000\n";
    assert_eq!(parse_progress(text), Some(42.5));
    assert_eq!(parse_progress("diskplane_progress_ratio 1\n"), Some(100.0));
    assert_eq!(parse_progress("diskplane_progress_ratio NaN\n"), None);
    assert_eq!(parse_progress("other 1\n"), None);
}

fn pvc(value: serde_json::Value) -> PersistentVolumeClaim {
    serde_json::from_value(value).unwrap()
}

fn class(mode: &str) -> StorageClass {
    serde_json::from_value(
        json!({"metadata": {"name": "local"}, "provisioner": "p", "volumeBindingMode": mode}),
    )
    .unwrap()
}

#[test]
fn a_pending_pvc_on_wffc_storage_waits_until_a_node_is_selected_or_binding_is_forced() {
    let dv = DataVolume::default();
    let pending = pvc(json!({"metadata": {"name": "d"}, "status": {"phase": "Pending"}}));
    let wffc = class("WaitForFirstConsumer");
    assert!(waits_for_first_consumer(true, &dv, Some(&pending), Some(&wffc)));
    assert!(!waits_for_first_consumer(false, &dv, Some(&pending), Some(&wffc)), "gate off");
    assert!(!waits_for_first_consumer(true, &dv, Some(&pending), Some(&class("Immediate"))));
    let selected = pvc(
        json!({"metadata": {"name": "d", "annotations": {"volume.kubernetes.io/selected-node": "n1"}}, "status": {"phase": "Pending"}}),
    );
    assert!(!waits_for_first_consumer(true, &dv, Some(&selected), Some(&wffc)));
    let bound = pvc(json!({"metadata": {"name": "d"}, "status": {"phase": "Bound"}}));
    assert!(!waits_for_first_consumer(true, &dv, Some(&bound), Some(&wffc)));
    let mut immediate = DataVolume::default();
    immediate.metadata.annotations.insert(ANN_BIND_IMMEDIATE.into(), "true".into());
    assert!(!waits_for_first_consumer(true, &immediate, Some(&pending), Some(&wffc)));
}

#[test]
fn holding_for_the_first_consumer_drops_the_worker_and_sets_the_phase_once() {
    let scheduled =
        DataVolumeStatus { phase: DataVolumePhase::ImportScheduled, ..DataVolumeStatus::default() };
    let steps = vec![
        Step::UpdateStatus(scheduled),
        Step::StartWorker { kind: crate::plan::WorkerKind::Import, attempt: 0 },
        Step::AwaitChange,
    ];
    let held = hold_for_first_consumer(None, steps.clone());
    let waiting =
        DataVolumeStatus { phase: DataVolumePhase::WaitForFirstConsumer, ..DataVolumeStatus::default() };
    assert_eq!(held, vec![Step::UpdateStatus(waiting.clone()), Step::AwaitChange]);
    // Already waiting: plan wants ImportScheduled again, the hold writes nothing.
    assert_eq!(hold_for_first_consumer(Some(&waiting), steps), vec![Step::AwaitChange]);
}

#[test]
fn a_copy_clone_is_as_far_as_its_slower_pod_and_failed_if_either_failed() {
    let failure = WorkerFailure { reason: "Error".into(), message: "boom".into(), retryable: true };
    let running = WorkerState::Running { attempt: 0, progress: Some(5.0) };
    assert_eq!(copy_state(WorkerState::None, WorkerState::None), WorkerState::None);
    assert_eq!(copy_state(WorkerState::None, running.clone()), WorkerState::Pending { attempt: 0 });
    assert_eq!(copy_state(running.clone(), running.clone()), running);
    let WorkerState::Failed { failure: f, .. } =
        copy_state(running.clone(), WorkerState::Failed { attempt: 0, failure: failure.clone() })
    else {
        panic!()
    };
    assert_eq!(f.message, "clone source: boom");
    assert_eq!(
        copy_state(WorkerState::Succeeded { attempt: 0 }, running),
        WorkerState::Succeeded { attempt: 0 }
    );
}

#[test]
fn claim_bytes_prefer_the_bound_capacity() {
    let p = pvc(json!({"metadata": {"name": "d"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}},
                       "status": {"phase": "Bound", "capacity": {"storage": "2Gi"}}}));
    assert_eq!(claim_bytes(&p), Some(2 << 30));
    assert_eq!(volume_state(Some(&p)), VolumeState::Present { capacity_bytes: 2 << 30 });
    assert_eq!(volume_state(None), VolumeState::Absent);
}
