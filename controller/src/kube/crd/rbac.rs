//! What each cluster component may do: the single list `deploy/rbac.yaml` is checked against
//! (a test compares the ClusterRoles rule by rule). When the kube driver starts using another
//! resource or verb, add it here and to `deploy/rbac.yaml`; the test says which one is missing.
//!
//! Least privilege: the controller gets exactly what it reads and writes; the upload proxy and
//! worker pods get no API access at all (their ServiceAccount has no role and
//! no token is mounted); `diskplane apiserver` reads what a token request needs.

/// One `rules[]` entry of a ClusterRole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `""` for the core group.
    pub api_group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

const READ: &[&str] = &["get", "list", "watch"];
const MANAGE: &[&str] = &["get", "list", "watch", "create", "update", "patch", "delete"];

/// The ClusterRole `diskplane-controller`.
pub const CONTROLLER: &[Rule] = &[
    // The four kinds it reconciles (a DataImportCron creates DataVolumes and keeps a DataSource;
    // a StorageProfile is created per StorageClass).
    Rule {
        api_group: "cdi.kubevirt.io",
        resources: &["datavolumes", "datasources", "dataimportcrons", "storageprofiles"],
        verbs: MANAGE,
    },
    Rule {
        api_group: "cdi.kubevirt.io",
        resources: &[
            "datavolumes/status",
            "datasources/status",
            "dataimportcrons/status",
            "storageprofiles/status",
        ],
        verbs: &["get", "update", "patch"],
    },
    // Owner references with blockOwnerDeletion need `update` on the owner's finalizers
    // (OwnerReferencesPermissionEnforcement).
    Rule {
        api_group: "cdi.kubevirt.io",
        resources: &["datavolumes/finalizers", "dataimportcrons/finalizers"],
        verbs: &["update"],
    },
    // The volume (and scratch volume) of each DataVolume.
    Rule { api_group: "", resources: &["persistentvolumeclaims"], verbs: MANAGE },
    // Worker pods and the Service in front of an upload pod; never updated in place.
    Rule {
        api_group: "",
        resources: &["pods", "services"],
        verbs: &["get", "list", "watch", "create", "delete"],
    },
    // The upload Pod's token key and serving certificate, a host-assisted clone's shared
    // token and the source's certificate, one Secret per DataVolume (and per namespace of a
    // clone); the controller's CA Secret in its own namespace; a DataImportCron's `secretRef`
    // (registry credentials for its polls). Read only by name, never listed.
    Rule { api_group: "", resources: &["secrets"], verbs: &["get", "create", "delete"] },
    // A DataImportCron's `certConfigMap` (the CA of a private registry it polls).
    Rule { api_group: "", resources: &["configmaps"], verbs: &["get"] },
    // Events on DataVolumes (kube-rs' recorder writes events.k8s.io/v1).
    Rule { api_group: "events.k8s.io", resources: &["events"], verbs: &["create", "patch"] },
    // Binding mode (WaitForFirstConsumer) and provisioner of a claim's class.
    Rule { api_group: "storage.k8s.io", resources: &["storageclasses"], verbs: READ },
    // `snapshot` clones: a VolumeSnapshot of the source, restored into the target.
    Rule {
        api_group: "snapshot.storage.k8s.io",
        resources: &["volumesnapshots"],
        verbs: &["get", "list", "watch", "create", "delete"],
    },
    Rule { api_group: "snapshot.storage.k8s.io", resources: &["volumesnapshotclasses"], verbs: READ },
    // Cross-namespace clones: may the DataVolume's creator read `datavolumes/source` there?
    Rule { api_group: "authorization.k8s.io", resources: &["subjectaccessreviews"], verbs: &["create"] },
];

/// What the upload proxy may do with the API: nothing. It checks a token with the key it
/// derives for the DataVolume the token names and reads the content type from the signed
/// claims, so it has no ClusterRole and its Pod mounts no service-account token.
pub const UPLOAD_PROXY: &[Rule] = &[];

/// The ClusterRole `diskplane-apiserver` (`kube::apiserver`). Besides it, a RoleBinding in
/// kube-system to the built-in Role `extension-apiserver-authentication-reader` (the front
/// proxy's ConfigMap); no `system:auth-delegator` (no TokenReviews are made).
pub const APISERVER: &[Rule] = &[
    // May the user the front proxy forwards create UploadTokenRequests in the namespace?
    Rule { api_group: "authorization.k8s.io", resources: &["subjectaccessreviews"], verbs: &["create"] },
    // The DataVolume a token is for (its uid and content type), by name only.
    Rule { api_group: "cdi.kubevirt.io", resources: &["datavolumes"], verbs: &["get"] },
    // A PVC of that name without DataVolume: a clear refusal instead of a bare 404.
    Rule { api_group: "", resources: &["persistentvolumeclaims"], verbs: &["get"] },
];

/// One `rules[]` entry of a namespaced Role, optionally limited to named objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespacedRule {
    /// `""` for the core group.
    pub api_group: &'static str,
    pub resources: &'static [&'static str],
    /// Empty: every object of the resources (`create` cannot be limited by name).
    pub resource_names: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// The Role `diskplane-controller` in the controller's own namespace: its CA (see
/// `kube::ca`). Reading and creating the CA Secret come with the ClusterRole's Secret rule;
/// renewing it needs `update`, on that one Secret only. The bundle ConfigMap is created once
/// and then read and updated by name.
pub const CONTROLLER_IN_OWN_NAMESPACE: &[NamespacedRule] = &[
    NamespacedRule {
        api_group: "",
        resources: &["secrets"],
        resource_names: &["diskplane-upload-ca"],
        verbs: &["update"],
    },
    NamespacedRule {
        api_group: "",
        resources: &["configmaps"],
        resource_names: &["diskplane-upload-ca-bundle"],
        verbs: &["get", "update"],
    },
    NamespacedRule { api_group: "", resources: &["configmaps"], resource_names: &[], verbs: &["create"] },
];
