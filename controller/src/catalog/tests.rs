use super::*;
use crate::api::{
    DataVolumeSource, DataVolumeSourceRef, DataVolumeSpec, DataVolumeTemplate, HttpSource, RegistrySource,
};

const NOW: Timestamp = Timestamp(1_795_814_400); // 2026-11-27T21:20:00Z
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn cron(schedule: &str, annotations: &[(&str, &str)]) -> DataImportCron {
    let mut c = DataImportCron::default();
    c.metadata.name = Some("fedora-cron".into());
    c.metadata.namespace = Some("golden".into());
    c.metadata.annotations = annotations.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    c.spec.schedule = schedule.into();
    c.spec.managed_data_source = "fedora".into();
    c.spec.template = DataVolumeTemplate {
        metadata: ObjectMeta::default(),
        spec: DataVolumeSpec {
            source: Some(DataVolumeSource {
                registry: Some(RegistrySource {
                    url: Some("docker://127.0.0.1:5000/containerdisks/fedora:latest".into()),
                    ..RegistrySource::default()
                }),
                ..DataVolumeSource::default()
            }),
            ..DataVolumeSpec::default()
        },
    };
    c
}

fn polled(digest: Option<&str>) -> DataImportCron {
    let last = Timestamp(NOW.0 - 60).to_rfc3339();
    let mut anns = vec![(ANN_LAST_CRON_TIME, last.as_str())];
    if let Some(d) = digest {
        anns.push((ANN_DESIRED_DIGEST, d));
    }
    cron("0 */12 * * *", &anns)
}

fn import(name: &str, phase: DataVolumePhase, age_minutes: i64) -> ImportObserved {
    ImportObserved { name: name.into(), digest: None, phase, last_use: Timestamp(NOW.0 - age_minutes * 60) }
}

fn observe(cron: DataImportCron, imports: Vec<ImportObserved>, points_at: Option<&str>) -> CronObserved {
    let data_source = points_at.map(|name| {
        let mut ds = DataSource::default();
        ds.metadata.name = Some("fedora".into());
        ds.metadata.namespace = Some("golden".into());
        ds.spec.source.pvc = Some(NamespacedName { namespace: "golden".into(), name: name.into() });
        ds.metadata.labels.insert(LABEL_CRON.into(), "fedora-cron".into());
        ds
    });
    CronObserved { cron, imports, data_source, other_crons: Vec::new(), now: NOW }
}

fn condition<'a>(status: &'a DataImportCronStatus, type_: &str) -> (&'a ConditionStatus, &'a str) {
    let c = status.conditions.iter().find(|c| c.type_ == type_).expect("condition");
    (&c.status, c.reason.as_deref().unwrap_or(""))
}

fn status_of(steps: &[CronStep]) -> &DataImportCronStatus {
    match steps.first() {
        Some(CronStep::UpdateStatus(s)) => s,
        other => panic!("no status update first: {other:?}"),
    }
}

fn deleted(steps: &[CronStep]) -> Vec<&str> {
    steps
        .iter()
        .filter_map(|s| match s {
            CronStep::DeleteDataVolume(name) => Some(name.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn names_and_urls_follow_cdi() {
    assert_eq!(import_name("fedora", DIGEST), "fedora-0123456789ab");
    let table = [
        (
            "docker://127.0.0.1:5000/containerdisks/fedora:latest",
            "docker://127.0.0.1:5000/containerdisks/fedora@sha256:1",
        ),
        ("docker://127.0.0.1:5000/fedora", "docker://127.0.0.1:5000/fedora@sha256:1"),
        ("docker://quay.io/fedora@sha256:0", "docker://quay.io/fedora@sha256:1"),
        ("docker://fedora:40", "docker://fedora@sha256:1"),
    ];
    for (url, pinned) in table {
        assert_eq!(pin_url(url, "sha256:1"), pinned, "{url}");
    }
}

#[test]
fn a_cron_never_polled_polls_first() {
    assert_eq!(plan_cron(&observe(cron("0 */12 * * *", &[]), vec![], None)), vec![CronStep::Poll]);
}

#[test]
fn a_due_schedule_polls_again() {
    let last = Timestamp(NOW.0 - 13 * 3600).to_rfc3339();
    let c = cron("0 */12 * * *", &[(ANN_LAST_CRON_TIME, &last), (ANN_DESIRED_DIGEST, DIGEST)]);
    assert_eq!(plan_cron(&observe(c, vec![], None)), vec![CronStep::Poll]);
}

#[test]
fn an_empty_schedule_never_polls_and_waits_for_a_digest() {
    let steps = plan_cron(&observe(cron("", &[]), vec![], None));
    let status = status_of(&steps);
    assert_eq!(condition(status, "UpToDate"), (&ConditionStatus::False, "NoDigest"));
    assert_eq!(steps.last(), Some(&CronStep::AwaitChange));
}

#[test]
fn a_new_digest_creates_a_pinned_labelled_data_volume() {
    let steps = plan_cron(&observe(polled(Some(DIGEST)), vec![], None));
    let status = status_of(&steps);
    assert_eq!(condition(status, "UpToDate"), (&ConditionStatus::False, "Outdated"));
    assert_eq!(condition(status, "Progressing"), (&ConditionStatus::False, "ImportScheduled"));
    assert_eq!(status.current_imports[0].data_volume_name, "fedora-0123456789ab");
    let CronStep::CreateDataVolume(dv) = &steps[1] else { panic!("no create: {steps:?}") };
    assert_eq!(dv.metadata.name(), "fedora-0123456789ab");
    assert_eq!(dv.metadata.namespace(), "golden");
    assert_eq!(dv.metadata.labels.get(LABEL_CRON).map(String::as_str), Some("fedora-cron"));
    assert_eq!(dv.metadata.annotations.get(ANN_BIND_IMMEDIATE).map(String::as_str), Some("true"));
    let url = dv.spec.source.as_ref().and_then(|s| s.registry.as_ref()).and_then(|r| r.url.as_deref());
    assert_eq!(url, Some(format!("docker://127.0.0.1:5000/containerdisks/fedora@{DIGEST}").as_str()));
    // Next poll at the next 12-hour mark.
    assert_eq!(
        steps.last(),
        Some(&CronStep::RequeueAt(Timestamp::parse_rfc3339("2026-11-28T00:00:00Z").expect("t")))
    );
}

#[test]
fn retention_policy_none_labels_imports_for_cleanup() {
    let mut c = polled(Some(DIGEST));
    c.spec.retention_policy = Some("None".into());
    let steps = plan_cron(&observe(c, vec![], None));
    let CronStep::CreateDataVolume(dv) = &steps[1] else { panic!("no create") };
    assert_eq!(dv.metadata.labels.get(LABEL_CLEANUP).map(String::as_str), Some("true"));
}

#[test]
fn an_import_in_progress_is_progressing() {
    let steps = plan_cron(&observe(
        polled(Some(DIGEST)),
        vec![import("fedora-0123456789ab", DataVolumePhase::ImportInProgress, 1)],
        None,
    ));
    let status = status_of(&steps);
    assert_eq!(condition(status, "Progressing"), (&ConditionStatus::True, "ImportProgressing"));
    assert!(!steps.iter().any(|s| matches!(s, CronStep::CreateDataVolume(_) | CronStep::ApplyDataSource(_))));
}

#[test]
fn a_succeeded_import_repoints_the_data_source() {
    let imports = vec![
        import("fedora-0123456789ab", DataVolumePhase::Succeeded, 1),
        import("fedora-aaaaaaaaaaaa", DataVolumePhase::Succeeded, 600),
    ];
    let steps = plan_cron(&observe(polled(Some(DIGEST)), imports, Some("fedora-aaaaaaaaaaaa")));
    let status = status_of(&steps);
    assert_eq!(condition(status, "UpToDate"), (&ConditionStatus::True, "UpToDate"));
    assert_eq!(condition(status, "Progressing"), (&ConditionStatus::False, "NoImport"));
    assert_eq!(status.last_imported_pvc.as_ref().map(|p| p.name.as_str()), Some("fedora-0123456789ab"));
    let ds = steps
        .iter()
        .find_map(|s| match s {
            CronStep::ApplyDataSource(ds) => Some(ds),
            _ => None,
        })
        .expect("the DataSource is repointed");
    assert_eq!(ds.spec.source.pvc.as_ref().map(|p| p.name.as_str()), Some("fedora-0123456789ab"));
    // Pointing the DataSource at it is a use of it.
    assert!(steps.contains(&CronStep::MarkUsed { name: "fedora-0123456789ab".into(), at: NOW }), "{steps:?}");
    // Not up to date yet in this observation (the DataSource still points at the old one): no GC.
    assert!(deleted(&steps).is_empty());
}

#[test]
fn once_up_to_date_old_imports_beyond_imports_to_keep_are_collected_oldest_first() {
    let imports = vec![
        import("fedora-0123456789ab", DataVolumePhase::Succeeded, 1),
        import("fedora-111111111111", DataVolumePhase::Succeeded, 100),
        import("fedora-222222222222", DataVolumePhase::Succeeded, 200),
        import("fedora-333333333333", DataVolumePhase::Succeeded, 300),
        import("fedora-444444444444", DataVolumePhase::Succeeded, 400),
    ];
    let observed = observe(polled(Some(DIGEST)), imports.clone(), Some("fedora-0123456789ab"));
    assert_eq!(deleted(&plan_cron(&observed)), ["fedora-333333333333", "fedora-444444444444"]);

    let mut keep_one = polled(Some(DIGEST));
    keep_one.spec.imports_to_keep = Some(1);
    let observed = observe(keep_one, imports.clone(), Some("fedora-0123456789ab"));
    assert_eq!(deleted(&plan_cron(&observed)).len(), 4);

    let mut never = polled(Some(DIGEST));
    never.spec.garbage_collect = Some("Never".into());
    assert!(deleted(&plan_cron(&observe(never, imports, Some("fedora-0123456789ab")))).is_empty());
}

#[test]
fn failed_imports_of_outdated_digests_are_deleted_but_not_the_current_one() {
    let imports = vec![
        import("fedora-0123456789ab", DataVolumePhase::Failed, 1),
        import("fedora-999999999999", DataVolumePhase::Failed, 50),
    ];
    let steps = plan_cron(&observe(polled(Some(DIGEST)), imports, None));
    assert_eq!(deleted(&steps), ["fedora-999999999999"]);
    assert_eq!(condition(status_of(&steps), "Progressing"), (&ConditionStatus::False, "Failed"));
}

#[test]
fn planning_again_after_the_status_was_written_changes_nothing() {
    let imports = vec![import("fedora-0123456789ab", DataVolumePhase::Succeeded, 1)];
    let mut observed = observe(polled(Some(DIGEST)), imports, Some("fedora-0123456789ab"));
    let steps = plan_cron(&observed);
    observed.cron.status = Some(status_of(&steps).clone());
    let again = plan_cron(&observed);
    assert!(again.iter().all(|s| matches!(s, CronStep::RequeueAt(_))), "{again:?}");
}

#[test]
fn data_source_readiness_follows_its_pvc() {
    let mut ds = DataSource::default();
    ds.spec.source.pvc =
        Some(NamespacedName { namespace: "golden".into(), name: "fedora-0123456789ab".into() });
    let table = [
        (SourceObserved::NoSource, false, "NoSource"),
        (SourceObserved::NotFound, false, "NotFound"),
        (SourceObserved::Found { phase: None }, true, "Ready"),
        (SourceObserved::Found { phase: Some(DataVolumePhase::Succeeded) }, true, "Ready"),
        (SourceObserved::Found { phase: Some(DataVolumePhase::ImportInProgress) }, false, "ImportInProgress"),
    ];
    for (observed, ready, reason) in table {
        let status = data_source_status(&ds, &observed, NOW);
        let c = &status.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status == ConditionStatus::True, c.reason.as_deref()),
            ("Ready", ready, Some(reason))
        );
        assert_eq!(status.source.is_some(), ready);
    }
}

fn labelled(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn a_data_source_managed_by_another_cron_is_left_alone_and_flagged() {
    // Never polled, nothing imported: without the other cron this would poll.
    let mut observed = observe(cron("0 */12 * * *", &[]), vec![], Some("fedora-aaaaaaaaaaaa"));
    if let Some(ds) = observed.data_source.as_mut() {
        ds.metadata.labels.insert(LABEL_CRON.into(), "centos-cron".into());
    }
    observed.other_crons = vec!["centos-cron".into()];

    let steps = plan_cron(&observed);

    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(steps[1], CronStep::AwaitChange);
    let status = status_of(&steps);
    for type_ in ["UpToDate", "Progressing"] {
        assert_eq!(condition(status, type_), (&ConditionStatus::False, ERR_DATA_SOURCE_ALREADY_MANAGED));
        let c = status.conditions.iter().find(|c| c.type_ == type_).expect("condition");
        assert_eq!(
            c.message.as_deref(),
            Some("DataSource fedora is already managed by DataImportCron centos-cron")
        );
    }
    // Once flagged, planning again changes nothing.
    observed.cron.status = Some(status.clone());
    assert_eq!(plan_cron(&observed), vec![CronStep::AwaitChange]);
}

#[test]
fn a_data_source_label_naming_a_cron_that_is_gone_or_elsewhere_does_not_block() {
    let table: [(&str, Vec<String>); 3] = [
        ("centos-cron", vec![]),                     // the labelled cron is gone
        ("centos-cron", vec!["rhel-cron".into()]),   // another cron names it, not the labelled one
        ("fedora-cron", vec!["centos-cron".into()]), // our own label
    ];
    for (label, others) in table {
        let mut observed = observe(cron("0 */12 * * *", &[]), vec![], Some("fedora-aaaaaaaaaaaa"));
        if let Some(ds) = observed.data_source.as_mut() {
            ds.metadata.labels.insert(LABEL_CRON.into(), label.into());
        }
        observed.other_crons = others.clone();

        assert_eq!(plan_cron(&observed), vec![CronStep::Poll], "label {label}, others {others:?}");
    }
}

#[test]
fn the_managed_data_source_is_labelled_for_cleanup_as_the_retention_policy_says() {
    let imports = vec![import("fedora-0123456789ab", DataVolumePhase::Succeeded, 1)];
    let table = [(Some("None"), Some("true")), (Some("RetainAll"), None), (None, None)];
    for (policy, cleanup) in table {
        let mut c = polled(Some(DIGEST));
        c.spec.retention_policy = policy.map(str::to_owned);
        // The DataSource exists, labelled for the opposite policy: it is relabelled.
        let mut observed = observe(c.clone(), imports.clone(), Some("fedora-0123456789ab"));
        if let Some(ds) = observed.data_source.as_mut()
            && cleanup.is_none()
        {
            ds.metadata.labels.insert(LABEL_CLEANUP.into(), "true".into());
        }
        let steps = plan_cron(&observed);
        let ds = steps
            .iter()
            .find_map(|s| match s {
                CronStep::ApplyDataSource(ds) => Some(ds),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{policy:?}: no relabel in {steps:?}"));
        assert_eq!(ds.metadata.labels.get(LABEL_CLEANUP).map(String::as_str), cleanup, "{policy:?}");
        assert_eq!(ds.metadata.labels.get(LABEL_CRON).map(String::as_str), Some("fedora-cron"));
        assert!(!steps.iter().any(|s| matches!(s, CronStep::MarkUsed { .. })), "a relabel is not a use");
    }
}

#[test]
fn cleanup_is_due_only_for_cleanup_labelled_objects_of_crons_that_are_gone() {
    let crons = ["fedora-cron", "centos-cron"];
    let table = [
        (labelled(&[(LABEL_CRON, "old-cron"), (LABEL_CLEANUP, "true")]), true),
        (labelled(&[(LABEL_CRON, "fedora-cron"), (LABEL_CLEANUP, "true")]), false),
        (labelled(&[(LABEL_CRON, "old-cron")]), false), // RetainAll
        (labelled(&[(LABEL_CRON, "old-cron"), (LABEL_CLEANUP, "false")]), false),
        (labelled(&[(LABEL_CLEANUP, "true")]), false), // no cron named
        (labelled(&[(LABEL_CRON, ""), (LABEL_CLEANUP, "true")]), false),
        (labelled(&[]), false),
    ];
    for (labels, due) in table {
        assert_eq!(cleanup_due(&labels, &crons), due, "{labels:?}");
    }
}

fn clone_dv(source: Option<DataVolumeSource>, source_ref: Option<DataVolumeSourceRef>) -> DataVolume {
    let mut dv = DataVolume::default();
    dv.metadata.name = Some("vm-disk".into());
    dv.metadata.namespace = Some("dev".into());
    dv.spec.source = source;
    dv.spec.source_ref = source_ref;
    dv
}

#[test]
fn a_clone_reads_its_pvc_or_what_its_data_source_points_at() {
    let pvc = |ns: &str, name: &str| NamespacedName { namespace: ns.into(), name: name.into() };
    let from_pvc =
        |ns: &str| DataVolumeSource { pvc: Some(pvc(ns, "fedora-1")), ..DataVolumeSource::default() };
    let source_ref = |kind: &str, ns: Option<&str>| DataVolumeSourceRef {
        kind: kind.into(),
        namespace: ns.map(str::to_owned),
        name: "fedora".into(),
    };
    let http = DataVolumeSource { http: Some(HttpSource::default()), ..DataVolumeSource::default() };
    // The DataSource golden/fedora points at fedora-2 (namespace left empty: its own).
    let lookup = |ns: &str, name: &str| {
        (ns == "golden" && name == "fedora").then(|| {
            let mut ds = DataSource::default();
            ds.spec.source.pvc = Some(pvc("", "fedora-2"));
            ds
        })
    };
    let table = [
        (clone_dv(Some(from_pvc("golden")), None), Some(pvc("golden", "fedora-1"))),
        (clone_dv(Some(from_pvc("")), None), Some(pvc("dev", "fedora-1"))),
        (clone_dv(None, Some(source_ref("DataSource", Some("golden")))), Some(pvc("golden", "fedora-2"))),
        (clone_dv(None, Some(source_ref("DataSource", None))), None), // dev/fedora does not exist
        (clone_dv(None, Some(source_ref("Other", Some("golden")))), None),
        (clone_dv(Some(http), None), None),
        (clone_dv(None, None), None),
    ];
    for (dv, expected) in table {
        assert_eq!(clone_source(&dv, lookup), expected, "{:?} {:?}", dv.spec.source, dv.spec.source_ref);
    }
}

#[test]
fn last_use_only_moves_forward() {
    let earlier = Timestamp(NOW.0 - 60).to_rfc3339();
    let later = Timestamp(NOW.0 + 60).to_rfc3339();
    let now = NOW.to_rfc3339();
    let table = [
        (None, Some(now.clone())),
        (Some("yesterday-ish"), Some(now.clone())),
        (Some(earlier.as_str()), Some(now.clone())),
        (Some(now.as_str()), None),
        (Some(later.as_str()), None),
    ];
    for (current, expected) in table {
        assert_eq!(refreshed_last_use(current, NOW), expected, "{current:?}");
    }
}

#[test]
fn garbage_collection_keeps_the_most_recently_used_not_the_newest() {
    // fedora-111… was imported first but a clone used it a minute ago.
    let imports = vec![
        import("fedora-0123456789ab", DataVolumePhase::Succeeded, 10),
        import("fedora-111111111111", DataVolumePhase::Succeeded, 1),
        import("fedora-222222222222", DataVolumePhase::Succeeded, 200),
        import("fedora-333333333333", DataVolumePhase::Succeeded, 300),
    ];
    let mut c = polled(Some(DIGEST));
    c.spec.imports_to_keep = Some(2);

    let steps = plan_cron(&observe(c, imports, Some("fedora-0123456789ab")));

    assert_eq!(deleted(&steps), ["fedora-222222222222", "fedora-333333333333"]);
}
