//! Choosing how to clone a volume, per the target's StorageProfile (CDI's
//! `computeStrategyForSourcePVC`, simplified).
//!
//! - `csi-clone`: the target PVC names the source PVC in `dataSource`; the CSI driver copies.
//! - `snapshot`: a VolumeSnapshot of the source, then the target PVC restored from it.
//! - `copy` (host-assisted): a source Pod streams the disk to a target Pod.
//!
//! The StorageProfile's `cloneStrategy` is a wish: a smart clone needs the source in the same
//! namespace (cross-namespace smart clones need PV rebinding, not done), the same StorageClass
//! (CDI compares provisioners; the class name is the stricter check that needs no StorageClass
//! lookup of the source), the same volume mode, a target at least as large as the source, and
//! for `snapshot` a VolumeSnapshotClass named in the profile. Otherwise the clone falls back to
//! `copy` and the reason is recorded (PVC annotation `cdi.kubevirt.io/cloneFallbackReason`,
//! Warning event `CloneFallback`).

use std::fmt;

/// How a clone moves its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloneStrategy {
    /// PVC `dataSource: PersistentVolumeClaim`.
    CsiClone,
    /// VolumeSnapshot of the source, PVC `dataSource: VolumeSnapshot`.
    Snapshot,
    /// Source and target worker Pods.
    Copy,
}

impl CloneStrategy {
    /// CDI's spelling (`cdi.kubevirt.io/cloneType`).
    pub fn as_str(self) -> &'static str {
        match self {
            CloneStrategy::CsiClone => "csi-clone",
            CloneStrategy::Snapshot => "snapshot",
            CloneStrategy::Copy => "copy",
        }
    }

    /// Parses CDI's spelling.
    pub fn parse(text: &str) -> Option<CloneStrategy> {
        match text {
            "csi-clone" => Some(CloneStrategy::CsiClone),
            "snapshot" => Some(CloneStrategy::Snapshot),
            "copy" => Some(CloneStrategy::Copy),
            _ => None,
        }
    }

    /// Whether a worker Pod moves the bytes (only `copy`).
    pub fn needs_workers(self) -> bool {
        self == CloneStrategy::Copy
    }
}

impl fmt::Display for CloneStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the choice looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneFacts<'a> {
    /// `cloneStrategy` of the target's StorageProfile (status first, then spec).
    pub profile_strategy: Option<&'a str>,
    /// `snapshotClass` of the target's StorageProfile.
    pub snapshot_class: Option<&'a str>,
    pub source_namespace: &'a str,
    pub target_namespace: &'a str,
    pub source_class: Option<&'a str>,
    pub target_class: Option<&'a str>,
    pub source_block: bool,
    pub target_block: bool,
    pub source_bytes: u64,
    pub target_bytes: u64,
}

/// The strategy and, when it is not the profile's, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneChoice {
    pub strategy: CloneStrategy,
    pub fallback_reason: Option<String>,
}

/// Picks the clone strategy for a PVC source. CDI's default without a profile strategy is
/// `snapshot`.
pub fn choose(facts: &CloneFacts<'_>) -> CloneChoice {
    let wanted = match facts.profile_strategy.filter(|s| !s.is_empty()) {
        None => CloneStrategy::Snapshot,
        Some(text) => match CloneStrategy::parse(text) {
            Some(strategy) => strategy,
            None => return copy(format!("unknown cloneStrategy {text:?} in the StorageProfile")),
        },
    };
    if wanted == CloneStrategy::Copy {
        return CloneChoice { strategy: wanted, fallback_reason: None };
    }
    if facts.source_namespace != facts.target_namespace {
        return copy(format!(
            "{wanted} across namespaces ({} → {}) needs PV rebinding, which diskplane does not do",
            facts.source_namespace, facts.target_namespace
        ));
    }
    if facts.source_class != facts.target_class {
        return copy(format!(
            "{wanted} needs the same StorageClass: source {}, target {}",
            facts.source_class.unwrap_or("(default)"),
            facts.target_class.unwrap_or("(default)")
        ));
    }
    if facts.source_block != facts.target_block {
        return copy(format!("{wanted} needs the same volume mode on source and target"));
    }
    if facts.target_bytes < facts.source_bytes {
        return copy(format!(
            "{wanted} needs a target at least as large as the source ({} < {} bytes)",
            facts.target_bytes, facts.source_bytes
        ));
    }
    if wanted == CloneStrategy::Snapshot && facts.snapshot_class.is_none_or(str::is_empty) {
        return copy("no VolumeSnapshotClass in the StorageProfile (snapshotClass)".into());
    }
    CloneChoice { strategy: wanted, fallback_reason: None }
}

fn copy(reason: String) -> CloneChoice {
    CloneChoice { strategy: CloneStrategy::Copy, fallback_reason: Some(reason) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> CloneFacts<'static> {
        CloneFacts {
            profile_strategy: Some("csi-clone"),
            snapshot_class: None,
            source_namespace: "ns",
            target_namespace: "ns",
            source_class: Some("rbd"),
            target_class: Some("rbd"),
            source_block: true,
            target_block: true,
            source_bytes: 10,
            target_bytes: 10,
        }
    }

    #[test]
    fn csi_clone_is_used_when_everything_matches() {
        assert_eq!(
            choose(&facts()),
            CloneChoice { strategy: CloneStrategy::CsiClone, fallback_reason: None }
        );
    }

    #[test]
    fn each_mismatch_falls_back_to_copy_with_its_reason() {
        let cases: [(CloneFacts<'static>, &str); 6] = [
            (CloneFacts { target_namespace: "other", ..facts() }, "across namespaces (ns → other)"),
            (
                CloneFacts { target_class: Some("nfs"), ..facts() },
                "same StorageClass: source rbd, target nfs",
            ),
            (CloneFacts { target_block: false, ..facts() }, "same volume mode"),
            (CloneFacts { target_bytes: 9, ..facts() }, "(9 < 10 bytes)"),
            (CloneFacts { profile_strategy: Some("snapshot"), ..facts() }, "no VolumeSnapshotClass"),
            (
                CloneFacts { profile_strategy: Some("teleport"), ..facts() },
                "unknown cloneStrategy \"teleport\"",
            ),
        ];
        for (facts, expected) in cases {
            let choice = choose(&facts);
            assert_eq!(choice.strategy, CloneStrategy::Copy, "{facts:?}");
            let reason = choice.fallback_reason.unwrap_or_default();
            assert!(reason.contains(expected), "{reason:?} lacks {expected:?}");
        }
    }

    #[test]
    fn snapshot_with_a_class_and_explicit_copy_need_no_fallback() {
        let snap =
            CloneFacts { profile_strategy: Some("snapshot"), snapshot_class: Some("csi-snap"), ..facts() };
        assert_eq!(choose(&snap).strategy, CloneStrategy::Snapshot);
        let copy = CloneFacts { profile_strategy: Some("copy"), ..facts() };
        assert_eq!(choose(&copy), CloneChoice { strategy: CloneStrategy::Copy, fallback_reason: None });
        let default = CloneFacts { profile_strategy: None, snapshot_class: Some("csi-snap"), ..facts() };
        assert_eq!(choose(&default).strategy, CloneStrategy::Snapshot);
    }
}
