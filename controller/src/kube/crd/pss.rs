//! The *restricted* Pod Security Standard as a check on a pod spec (JSON), so the manifests in
//! `deploy/` and the worker Pods the kube driver builds can be tested against the rule the
//! namespace enforces (`pod-security.kubernetes.io/enforce: restricted`), without a cluster.
//!
//! Checked (Kubernetes 1.33, restricted ⊇ baseline): no host namespaces, ports or `hostPath`
//! volumes; volume types limited to the restricted list; no privileged containers; no added
//! capabilities but `NET_BIND_SERVICE` and `drop: [ALL]`; `allowPrivilegeEscalation: false`;
//! `runAsNonRoot: true` and no `runAsUser: 0`; seccomp `RuntimeDefault` or `Localhost`; no
//! `procMount` other than `Default`; no unsafe sysctls; no custom SELinux type. diskplane adds
//! `readOnlyRootFilesystem: true` for every container.

use serde_json::Value;

/// Volume types the restricted profile allows.
const ALLOWED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Sysctls the baseline profile allows.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Every way a pod spec (`Pod.spec` or a template's `spec`) breaks the restricted profile, as
/// readable lines naming the container or field; empty when it complies.
pub fn restricted_problems(spec: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec.get(field) == Some(&Value::Bool(true)) {
            problems.push(format!("spec.{field} must not be true"));
        }
    }
    for volume in spec.get("volumes").and_then(Value::as_array).into_iter().flatten() {
        let name = volume.get("name").and_then(Value::as_str).unwrap_or("?");
        let kinds: Vec<&String> =
            volume.as_object().into_iter().flat_map(|m| m.keys()).filter(|k| *k != "name").collect();
        for kind in kinds {
            if !ALLOWED_VOLUMES.contains(&kind.as_str()) {
                problems.push(format!("volume {name}: type {kind} is not allowed"));
            }
        }
    }
    let pod_ctx = spec.get("securityContext").cloned().unwrap_or(Value::Null);
    for sysctl in pod_ctx.get("sysctls").and_then(Value::as_array).into_iter().flatten() {
        let name = sysctl.get("name").and_then(Value::as_str).unwrap_or("?");
        if !SAFE_SYSCTLS.contains(&name) {
            problems.push(format!("sysctl {name} is not allowed"));
        }
    }
    if pod_ctx.pointer("/runAsUser").and_then(Value::as_i64) == Some(0) {
        problems.push("spec.securityContext.runAsUser must not be 0".into());
    }
    check_selinux(&pod_ctx, "spec.securityContext", &mut problems);
    let pod_non_root = pod_ctx.get("runAsNonRoot") == Some(&Value::Bool(true));
    let pod_seccomp = seccomp_ok(&pod_ctx);
    if pod_ctx.pointer("/seccompProfile/type").is_some() && !pod_seccomp {
        problems.push("spec.securityContext.seccompProfile.type must be RuntimeDefault or Localhost".into());
    }

    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(|list| spec.get(list).and_then(Value::as_array).into_iter().flatten());
    let mut any = false;
    for container in containers {
        any = true;
        let name = container.get("name").and_then(Value::as_str).unwrap_or("?");
        let ctx = container.get("securityContext").cloned().unwrap_or(Value::Null);
        let at = format!("container {name}");
        if ctx.get("privileged") == Some(&Value::Bool(true)) {
            problems.push(format!("{at}: privileged"));
        }
        if ctx.get("allowPrivilegeEscalation") != Some(&Value::Bool(false)) {
            problems.push(format!("{at}: allowPrivilegeEscalation must be false"));
        }
        if ctx.get("readOnlyRootFilesystem") != Some(&Value::Bool(true)) {
            problems.push(format!("{at}: readOnlyRootFilesystem must be true"));
        }
        let dropped = ctx.pointer("/capabilities/drop").and_then(Value::as_array);
        if !dropped.is_some_and(|d| d.iter().any(|c| c == "ALL")) {
            problems.push(format!("{at}: capabilities.drop must contain ALL"));
        }
        for added in ctx.pointer("/capabilities/add").and_then(Value::as_array).into_iter().flatten() {
            if added != "NET_BIND_SERVICE" {
                problems.push(format!("{at}: capability {added} must not be added"));
            }
        }
        let non_root = match ctx.get("runAsNonRoot") {
            Some(Value::Bool(v)) => *v,
            _ => pod_non_root,
        };
        if !non_root {
            problems.push(format!("{at}: runAsNonRoot must be true (pod or container)"));
        }
        if ctx.get("runAsUser").and_then(Value::as_i64) == Some(0) {
            problems.push(format!("{at}: runAsUser must not be 0"));
        }
        let seccomp =
            if ctx.pointer("/seccompProfile/type").is_some() { seccomp_ok(&ctx) } else { pod_seccomp };
        if !seccomp {
            problems.push(format!(
                "{at}: seccompProfile.type must be RuntimeDefault or Localhost (pod or container)"
            ));
        }
        if let Some(mount) = ctx.get("procMount").and_then(Value::as_str)
            && mount != "Default"
        {
            problems.push(format!("{at}: procMount {mount} is not allowed"));
        }
        check_selinux(&ctx, &at, &mut problems);
        for port in container.get("ports").and_then(Value::as_array).into_iter().flatten() {
            if port.get("hostPort").and_then(Value::as_i64).is_some_and(|p| p != 0) {
                problems.push(format!("{at}: hostPort is not allowed"));
            }
        }
    }
    if !any {
        problems.push("the pod has no containers".into());
    }
    problems
}

fn seccomp_ok(ctx: &Value) -> bool {
    matches!(
        ctx.pointer("/seccompProfile/type").and_then(Value::as_str),
        Some("RuntimeDefault" | "Localhost")
    )
}

fn check_selinux(ctx: &Value, at: &str, problems: &mut Vec<String>) {
    if let Some(kind) = ctx.pointer("/seLinuxOptions/type").and_then(Value::as_str)
        && !["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"].contains(&kind)
    {
        problems.push(format!("{at}: SELinux type {kind} is not allowed"));
    }
    for field in ["user", "role"] {
        if ctx
            .pointer(&format!("/seLinuxOptions/{field}"))
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
        {
            problems.push(format!("{at}: seLinuxOptions.{field} must not be set"));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn restricted_pod() -> Value {
        json!({
            "securityContext": {"runAsNonRoot": true, "runAsUser": 107, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "c", "image": "i",
                "securityContext": {
                    "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        })
    }

    #[test]
    fn a_restricted_pod_passes() {
        assert_eq!(restricted_problems(&restricted_pod()), Vec::<String>::new());
    }

    #[test]
    fn each_baseline_and_restricted_violation_is_named() {
        let mut pod = restricted_pod();
        pod["hostNetwork"] = json!(true);
        pod["volumes"] = json!([{"name": "root", "hostPath": {"path": "/"}}]);
        pod["securityContext"] = json!({"runAsUser": 0});
        pod["containers"][0]["securityContext"] =
            json!({"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}});
        pod["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 80}]);
        let problems = restricted_problems(&pod).join("\n");
        for expected in [
            "spec.hostNetwork must not be true",
            "volume root: type hostPath is not allowed",
            "spec.securityContext.runAsUser must not be 0",
            "container c: privileged",
            "container c: allowPrivilegeEscalation must be false",
            "container c: readOnlyRootFilesystem must be true",
            "container c: capabilities.drop must contain ALL",
            "container c: capability \"SYS_ADMIN\" must not be added",
            "container c: runAsNonRoot must be true",
            "container c: seccompProfile.type must be RuntimeDefault",
            "container c: hostPort is not allowed",
        ] {
            assert!(problems.contains(expected), "{expected} missing from:\n{problems}");
        }
    }
}
