//! The KubeVirt `kubevirt.io/v1` VirtualMachine manifest, for the parts the launcher uses, and
//! its validation into a [`VmSpec`].
//!
//! Unknown fields are ignored (KubeVirt's API is large); fields we read but cannot honour are
//! rejected with [`Error::Unsupported`] naming the field, so nothing is silently dropped that
//! would change what boots.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::quantity::parse_bytes;
use crate::spec::{CloudInit, Disk, DiskSource, KernelBoot, Network, RunStrategy, VmSpec};

/// Largest manifest accepted: a VirtualMachine is a few KiB; user data is bounded separately.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// The VirtualMachine object as written by users (`kubevirt.io/v1`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachine {
    /// Must be `kubevirt.io/v1` (or `v1alpha3`, its older spelling).
    pub api_version: String,
    /// Must be `VirtualMachine`.
    pub kind: String,
    /// Name and namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec.
    pub spec: VmSpecRaw,
}

/// `metadata`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ObjectMeta {
    /// The VM's name.
    #[serde(default)]
    pub name: String,
    /// Its namespace (default `default`).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `spec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmSpecRaw {
    /// `Always`, `Halted`, `Manual`, `RerunOnFailure` (or `Once`).
    #[serde(default)]
    pub run_strategy: Option<String>,
    /// The older boolean form of the run strategy.
    #[serde(default)]
    pub running: Option<bool>,
    /// DataVolumes created with the VM; kept verbatim for the lifecycle layer.
    #[serde(default)]
    pub data_volume_templates: Vec<DataVolumeTemplate>,
    /// The VirtualMachineInstance template.
    pub template: Template,
}

/// One entry of `dataVolumeTemplates`: a DataVolume without kind/apiVersion.
#[derive(Debug, Clone, Deserialize)]
pub struct DataVolumeTemplate {
    /// Its metadata (the name volumes refer to).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The DataVolume spec, unparsed here (the controller owns its shape).
    #[serde(default)]
    pub spec: serde_json::Value,
}

/// `spec.template`.
#[derive(Debug, Clone, Deserialize)]
pub struct Template {
    /// `spec.template.spec`.
    pub spec: InstanceSpec,
}

/// `spec.template.spec` (a VirtualMachineInstance spec).
#[derive(Debug, Clone, Deserialize)]
pub struct InstanceSpec {
    /// The virtual hardware.
    pub domain: Domain,
    /// Where each disk's bytes come from.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// Networks the interfaces bind to.
    #[serde(default)]
    pub networks: Vec<NetworkRaw>,
}

/// `domain`.
#[derive(Debug, Clone, Deserialize)]
pub struct Domain {
    /// Topology.
    #[serde(default)]
    pub cpu: Option<Cpu>,
    /// Guest memory.
    #[serde(default)]
    pub memory: Option<Memory>,
    /// Requests/limits (memory is read from here when `memory.guest` is absent).
    #[serde(default)]
    pub resources: Option<Resources>,
    /// Kernel boot.
    #[serde(default)]
    pub firmware: Option<Firmware>,
    /// Disks and interfaces.
    #[serde(default)]
    pub devices: Devices,
}

/// `domain.cpu`.
#[derive(Debug, Clone, Deserialize)]
pub struct Cpu {
    /// Cores per socket.
    pub cores: Option<u32>,
    /// Sockets.
    pub sockets: Option<u32>,
    /// Threads per core.
    pub threads: Option<u32>,
}

/// `domain.memory`.
#[derive(Debug, Clone, Deserialize)]
pub struct Memory {
    /// Memory the guest sees (a Kubernetes quantity).
    pub guest: Option<Quantity>,
}

/// `domain.resources`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Resources {
    /// Requests (`memory`, `cpu`).
    #[serde(default)]
    pub requests: BTreeMap<String, Quantity>,
    /// Limits.
    #[serde(default)]
    pub limits: BTreeMap<String, Quantity>,
}

/// A Kubernetes quantity, written as a string (`1Gi`) or a bare number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    /// `"512Mi"`.
    Text(String),
    /// `536870912`.
    Number(u64),
}

/// `domain.firmware`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Firmware {
    /// Direct kernel boot.
    #[serde(default)]
    pub kernel_boot: Option<KernelBootRaw>,
}

/// `firmware.kernelBoot`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelBootRaw {
    /// The kernel command line.
    #[serde(default)]
    pub kernel_args: Option<String>,
    /// Where kernel and initrd come from (a container image in KubeVirt; paths are given to
    /// the launcher by the caller here).
    #[serde(default)]
    pub container: Option<KernelContainer>,
}

/// `kernelBoot.container`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelContainer {
    /// The image holding them.
    #[serde(default)]
    pub image: Option<String>,
    /// The kernel's path inside the image.
    #[serde(default)]
    pub kernel_path: Option<String>,
    /// The initrd's path inside the image.
    #[serde(default)]
    pub initrd_path: Option<String>,
}

/// `domain.devices`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Devices {
    /// Disks, each naming a volume.
    #[serde(default)]
    pub disks: Vec<DiskRaw>,
    /// Network interfaces, each naming a network.
    #[serde(default)]
    pub interfaces: Vec<InterfaceRaw>,
}

/// One disk.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskRaw {
    /// The volume it shows.
    pub name: String,
    /// A disk (the default).
    #[serde(default)]
    pub disk: Option<DiskTarget>,
    /// A CD-ROM.
    #[serde(default)]
    pub cdrom: Option<DiskTarget>,
    /// A SCSI LUN (not supported).
    #[serde(default)]
    pub lun: Option<serde_json::Value>,
    /// Boot order (1 first).
    #[serde(default)]
    pub boot_order: Option<u32>,
    /// Serial number the guest sees.
    #[serde(default)]
    pub serial: Option<String>,
}

/// `disk` / `cdrom`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskTarget {
    /// `virtio` (the only bus supported; also the default).
    #[serde(default)]
    pub bus: Option<String>,
    /// Read-only.
    #[serde(default)]
    pub readonly: Option<bool>,
}

/// One interface.
#[derive(Debug, Clone, Deserialize)]
pub struct InterfaceRaw {
    /// The network it binds to.
    pub name: String,
    /// Masquerade (NAT) binding: user-mode networking here.
    #[serde(default)]
    pub masquerade: Option<serde_json::Value>,
    /// The old user-mode binding.
    #[serde(default)]
    pub slirp: Option<serde_json::Value>,
    /// Bridge binding (not supported).
    #[serde(default)]
    pub bridge: Option<serde_json::Value>,
    /// SR-IOV binding (not supported).
    #[serde(default)]
    pub sriov: Option<serde_json::Value>,
}

/// One network.
#[derive(Debug, Clone, Deserialize)]
pub struct NetworkRaw {
    /// Its name.
    pub name: String,
    /// The pod network (the only one supported).
    #[serde(default)]
    pub pod: Option<serde_json::Value>,
    /// Multus (not supported).
    #[serde(default)]
    pub multus: Option<serde_json::Value>,
}

/// One volume: exactly one of the sources.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// Its name (disks refer to it).
    pub name: String,
    /// A DataVolume of that name.
    #[serde(default)]
    pub data_volume: Option<DataVolumeRef>,
    /// A PVC.
    #[serde(default)]
    pub persistent_volume_claim: Option<PvcRef>,
    /// An ephemeral disk from a container image.
    #[serde(default)]
    pub container_disk: Option<ContainerDiskRef>,
    /// A NoCloud seed built from user data.
    #[serde(default)]
    pub cloud_init_no_cloud: Option<CloudInitNoCloud>,
    /// An empty scratch disk (not supported yet).
    #[serde(default)]
    pub empty_disk: Option<serde_json::Value>,
    /// A host disk (not supported).
    #[serde(default)]
    pub host_disk: Option<serde_json::Value>,
}

/// `volumes[].dataVolume`.
#[derive(Debug, Clone, Deserialize)]
pub struct DataVolumeRef {
    /// The DataVolume's name.
    pub name: String,
}

/// `volumes[].persistentVolumeClaim`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PvcRef {
    /// The claim.
    pub claim_name: String,
    /// Attach read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// `volumes[].containerDisk`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDiskRef {
    /// The image reference.
    pub image: String,
    /// The disk's path inside the image.
    #[serde(default)]
    pub path: Option<String>,
}

/// `volumes[].cloudInitNoCloud`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudInitNoCloud {
    /// `#cloud-config ...`.
    #[serde(default)]
    pub user_data: Option<String>,
    /// The same, base64-encoded.
    #[serde(default)]
    pub user_data_base64: Option<String>,
    /// Network config v1/v2.
    #[serde(default)]
    pub network_data: Option<String>,
    /// The same, base64-encoded.
    #[serde(default)]
    pub network_data_base64: Option<String>,
    /// Secret references (not supported in embedded mode).
    #[serde(default)]
    pub secret_ref: Option<serde_json::Value>,
}

/// Parses a YAML (or JSON) VirtualMachine manifest and validates it.
pub fn parse(text: &str) -> Result<VmSpec> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(Error::Parse(format!(
            "manifest is {} bytes, more than the {MAX_MANIFEST_BYTES}-byte limit",
            text.len()
        )));
    }
    let vm: VirtualMachine = serde_saphyr::from_str(text).map_err(|e| Error::Parse(e.to_string()))?;
    validate(vm)
}

/// Checks a parsed manifest and turns it into the launcher's [`VmSpec`].
pub fn validate(vm: VirtualMachine) -> Result<VmSpec> {
    if !matches!(vm.api_version.as_str(), "kubevirt.io/v1" | "kubevirt.io/v1alpha3") {
        return Err(Error::invalid("apiVersion", format!("want kubevirt.io/v1, got {:?}", vm.api_version)));
    }
    if vm.kind != "VirtualMachine" {
        return Err(Error::invalid("kind", format!("want VirtualMachine, got {:?}", vm.kind)));
    }
    check_name("metadata.name", &vm.metadata.name)?;
    let run_strategy = run_strategy(&vm.spec)?;
    let mut dv_names = Vec::new();
    for (i, t) in vm.spec.data_volume_templates.iter().enumerate() {
        check_name(&format!("spec.dataVolumeTemplates[{i}].metadata.name"), &t.metadata.name)?;
        if dv_names.contains(&t.metadata.name) {
            return Err(Error::invalid(
                format!("spec.dataVolumeTemplates[{i}].metadata.name"),
                format!("duplicate name {:?}", t.metadata.name),
            ));
        }
        dv_names.push(t.metadata.name.clone());
    }
    let inst = &vm.spec.template.spec;
    let domain = &inst.domain;
    let (sockets, cores, threads) = cpu(domain.cpu.as_ref())?;
    let memory_bytes = memory(domain)?;
    let kernel_boot = kernel_boot(domain.firmware.as_ref());
    let disks = disks(inst)?;
    let network = network(inst)?;
    Ok(VmSpec {
        name: vm.metadata.name,
        namespace: vm.metadata.namespace.unwrap_or_else(|| "default".to_owned()),
        run_strategy,
        data_volume_templates: vm.spec.data_volume_templates,
        sockets,
        cores,
        threads,
        memory_bytes,
        kernel_boot,
        disks,
        network,
    })
}

/// A DNS-1123 label: lowercase alphanumerics and `-`, at most 63, starting and ending alphanumeric.
fn check_name(field: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!("{name:?} is not a valid name (lowercase letters, digits and '-', at most 63)"),
        ))
    }
}

fn run_strategy(spec: &VmSpecRaw) -> Result<RunStrategy> {
    match (&spec.run_strategy, spec.running) {
        (Some(_), Some(_)) => Err(Error::invalid(
            "spec.running",
            "running and runStrategy are mutually exclusive; set only runStrategy",
        )),
        (None, None) => Ok(RunStrategy::Halted),
        (None, Some(true)) => Ok(RunStrategy::Always),
        (None, Some(false)) => Ok(RunStrategy::Halted),
        (Some(s), None) => match s.as_str() {
            "Always" => Ok(RunStrategy::Always),
            "Halted" => Ok(RunStrategy::Halted),
            "Manual" => Ok(RunStrategy::Manual),
            "RerunOnFailure" => Ok(RunStrategy::RerunOnFailure),
            "Once" => Ok(RunStrategy::Once),
            other => Err(Error::invalid(
                "spec.runStrategy",
                format!("{other:?} is not one of Always, Halted, Manual, RerunOnFailure, Once"),
            )),
        },
    }
}

/// Named limit: more vCPUs than this is a typo here (TCG or a small host).
const MAX_VCPUS: u32 = 256;

fn cpu(cpu: Option<&Cpu>) -> Result<(u32, u32, u32)> {
    let Some(cpu) = cpu else { return Ok((1, 1, 1)) };
    let get = |v: Option<u32>, name: &str| -> Result<u32> {
        match v {
            None => Ok(1),
            Some(0) => {
                Err(Error::invalid(format!("spec.template.spec.domain.cpu.{name}"), "must be at least 1"))
            }
            Some(n) => Ok(n),
        }
    };
    let (s, c, t) = (get(cpu.sockets, "sockets")?, get(cpu.cores, "cores")?, get(cpu.threads, "threads")?);
    match s.checked_mul(c).and_then(|x| x.checked_mul(t)) {
        Some(n) if n <= MAX_VCPUS => Ok((s, c, t)),
        _ => Err(Error::invalid(
            "spec.template.spec.domain.cpu",
            format!("sockets × cores × threads exceeds {MAX_VCPUS} vCPUs"),
        )),
    }
}

/// Named limits on guest memory: at least 16 MiB (nothing boots below), at most 1 TiB.
const MIN_MEMORY: u64 = 16 << 20;
const MAX_MEMORY: u64 = 1 << 40;

fn memory(domain: &Domain) -> Result<u64> {
    fn from_resources<'a>(
        which: &str,
        map: Option<&'a BTreeMap<String, Quantity>>,
    ) -> Option<(String, &'a Quantity)> {
        map.and_then(|m| m.get("memory"))
            .map(|q| (format!("spec.template.spec.domain.resources.{which}.memory"), q))
    }
    let (field, q) = domain
        .memory
        .as_ref()
        .and_then(|m| m.guest.as_ref())
        .map(|q| ("spec.template.spec.domain.memory.guest".to_owned(), q))
        .or_else(|| from_resources("requests", domain.resources.as_ref().map(|r| &r.requests)))
        .or_else(|| from_resources("limits", domain.resources.as_ref().map(|r| &r.limits)))
        .ok_or_else(|| {
            Error::invalid(
                "spec.template.spec.domain",
                "no memory: set memory.guest or resources.requests.memory",
            )
        })?;
    let bytes = match q {
        Quantity::Number(n) => *n,
        Quantity::Text(s) => parse_bytes(s).map_err(|m| Error::invalid(&field, m))?,
    };
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&bytes) {
        return Err(Error::invalid(field, format!("{bytes} bytes is outside 16Mi..1Ti")));
    }
    Ok(bytes)
}

fn kernel_boot(firmware: Option<&Firmware>) -> Option<KernelBoot> {
    let kb = firmware?.kernel_boot.as_ref()?;
    Some(KernelBoot {
        kernel_args: kb.kernel_args.clone().unwrap_or_default(),
        image: kb.container.as_ref().and_then(|c| c.image.clone()),
    })
}

fn disks(inst: &InstanceSpec) -> Result<Vec<Disk>> {
    let mut volumes: BTreeMap<&str, (usize, &Volume)> = BTreeMap::new();
    for (i, v) in inst.volumes.iter().enumerate() {
        let field = format!("spec.template.spec.volumes[{i}]");
        check_name(&format!("{field}.name"), &v.name)?;
        if volumes.insert(&v.name, (i, v)).is_some() {
            return Err(Error::invalid(format!("{field}.name"), format!("duplicate volume {:?}", v.name)));
        }
    }
    let mut out: Vec<Disk> = Vec::new();
    for (i, d) in inst.domain.devices.disks.iter().enumerate() {
        let field = format!("spec.template.spec.domain.devices.disks[{i}]");
        if out.iter().any(|o| o.name == d.name) {
            return Err(Error::invalid(format!("{field}.name"), format!("duplicate disk {:?}", d.name)));
        }
        let Some(&(vi, volume)) = volumes.get(d.name.as_str()) else {
            return Err(Error::invalid(
                format!("{field}.name"),
                format!("no volume named {:?} in spec.template.spec.volumes", d.name),
            ));
        };
        if d.lun.is_some() {
            return Err(Error::unsupported(format!("{field}.lun"), "a lun disk"));
        }
        let (target, cdrom, sub) = match (&d.disk, &d.cdrom) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(field, "set only one of disk, cdrom"));
            }
            (Some(t), None) => (t.clone(), false, "disk"),
            (None, Some(t)) => (t.clone(), true, "cdrom"),
            (None, None) => (DiskTarget::default(), false, "disk"),
        };
        if let Some(bus) = target.bus.as_deref().filter(|b| *b != "virtio") {
            return Err(Error::unsupported(
                format!("{field}.{sub}.bus"),
                format!("bus {bus:?} (only virtio)"),
            ));
        }
        if d.boot_order == Some(0) {
            return Err(Error::invalid(format!("{field}.bootOrder"), "must be at least 1"));
        }
        let source = source(volume, &format!("spec.template.spec.volumes[{vi}]"))?;
        let read_only = target.readonly.unwrap_or(false)
            || cdrom
            || matches!(source, DiskSource::Pvc { read_only: true, .. });
        out.push(Disk {
            name: d.name.clone(),
            source,
            read_only,
            boot_order: d.boot_order,
            serial: d.serial.clone(),
        });
    }
    // Like KubeVirt's defaulting: a volume without a disk gets a virtio disk.
    for (name, &(vi, volume)) in &volumes {
        if !out.iter().any(|d| d.name == *name) {
            let source = source(volume, &format!("spec.template.spec.volumes[{vi}]"))?;
            let read_only = matches!(source, DiskSource::Pvc { read_only: true, .. });
            out.push(Disk { name: (*name).to_owned(), source, read_only, boot_order: None, serial: None });
        }
    }
    Ok(out)
}

fn source(v: &Volume, field: &str) -> Result<DiskSource> {
    let mut found = Vec::new();
    if let Some(dv) = &v.data_volume {
        check_name(&format!("{field}.dataVolume.name"), &dv.name)?;
        found.push(DiskSource::DataVolume { name: dv.name.clone() });
    }
    if let Some(pvc) = &v.persistent_volume_claim {
        check_name(&format!("{field}.persistentVolumeClaim.claimName"), &pvc.claim_name)?;
        found.push(DiskSource::Pvc { claim_name: pvc.claim_name.clone(), read_only: pvc.read_only });
    }
    if let Some(cd) = &v.container_disk {
        if cd.image.trim().is_empty() {
            return Err(Error::invalid(format!("{field}.containerDisk.image"), "is empty"));
        }
        found.push(DiskSource::ContainerDisk { image: cd.image.clone() });
    }
    if let Some(ci) = &v.cloud_init_no_cloud {
        found.push(DiskSource::CloudInit(cloud_init(ci, &format!("{field}.cloudInitNoCloud"))?));
    }
    if v.empty_disk.is_some() {
        return Err(Error::unsupported(format!("{field}.emptyDisk"), "an emptyDisk volume"));
    }
    if v.host_disk.is_some() {
        return Err(Error::unsupported(format!("{field}.hostDisk"), "a hostDisk volume"));
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::invalid(
            field,
            "no source: set one of dataVolume, persistentVolumeClaim, containerDisk, cloudInitNoCloud",
        )),
        _ => Err(Error::invalid(field, "more than one source; set exactly one")),
    }
}

/// Named limit on each of user-data / network-config after base64 decoding; the seed image is
/// built in memory.
pub const MAX_CLOUD_INIT_BYTES: usize = 1 << 20;

fn cloud_init(ci: &CloudInitNoCloud, field: &str) -> Result<CloudInit> {
    if ci.secret_ref.is_some() {
        return Err(Error::unsupported(format!("{field}.secretRef"), "user data from a Secret"));
    }
    let pick = |plain: &Option<String>, b64: &Option<String>, name: &str| -> Result<Option<Vec<u8>>> {
        let data = match (plain, b64) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    format!("{field}.{name}"),
                    format!("set only one of {name}, {name}Base64"),
                ));
            }
            (Some(p), None) => Some(p.clone().into_bytes()),
            (None, Some(b)) => {
                Some(decode_base64(b).map_err(|m| Error::invalid(format!("{field}.{name}Base64"), m))?)
            }
            (None, None) => None,
        };
        if data.as_ref().is_some_and(|d| d.len() > MAX_CLOUD_INIT_BYTES) {
            return Err(Error::invalid(
                format!("{field}.{name}"),
                format!("more than {MAX_CLOUD_INIT_BYTES} bytes"),
            ));
        }
        Ok(data)
    };
    let user_data = pick(&ci.user_data, &ci.user_data_base64, "userData")?;
    let network_data = pick(&ci.network_data, &ci.network_data_base64, "networkData")?;
    if user_data.is_none() && network_data.is_none() {
        return Err(Error::invalid(
            field,
            "needs userData, userDataBase64, networkData or networkDataBase64",
        ));
    }
    Ok(CloudInit { user_data: user_data.unwrap_or_default(), network_data })
}

/// Standard base64, whitespace (line breaks) ignored.
fn decode_base64(text: &str) -> std::result::Result<Vec<u8>, String> {
    use base64::Engine as _;
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(compact).map_err(|e| format!("not base64: {e}"))
}

fn network(inst: &InstanceSpec) -> Result<Option<Network>> {
    let ifaces = &inst.domain.devices.interfaces;
    match ifaces.len() {
        0 => return Ok(None),
        1 => {}
        _ => {
            return Err(Error::unsupported(
                "spec.template.spec.domain.devices.interfaces",
                "more than one interface",
            ));
        }
    }
    let iface = &ifaces[0];
    let field = "spec.template.spec.domain.devices.interfaces[0]";
    if iface.bridge.is_some() || iface.sriov.is_some() {
        return Err(Error::unsupported(field, "a bridge or sriov binding (use masquerade)"));
    }
    let Some(net) = inst.networks.iter().find(|n| n.name == iface.name) else {
        return Err(Error::invalid(
            format!("{field}.name"),
            format!("no network named {:?} in spec.template.spec.networks", iface.name),
        ));
    };
    if net.multus.is_some() || net.pod.is_none() {
        return Err(Error::unsupported("spec.template.spec.networks", "a network other than pod"));
    }
    Ok(Some(Network::User))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(spec_tail: &str) -> String {
        format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: vm1\nspec:\n{spec_tail}"
        )
    }

    const GOOD: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: fedora
  namespace: dev
spec:
  runStrategy: RerunOnFailure
  dataVolumeTemplates:
    - metadata:
        name: fedora-root
      spec:
        source:
          registry:
            url: docker://quay.io/containerdisks/fedora:40
        storage:
          resources:
            requests:
              storage: 10Gi
  template:
    spec:
      domain:
        cpu:
          cores: 2
        memory:
          guest: 1Gi
        devices:
          disks:
            - name: root
              bootOrder: 1
              disk:
                bus: virtio
            - name: seed
              disk: {}
            - name: data
              serial: DATA1
              disk:
                bus: virtio
                readonly: true
      volumes:
        - name: root
          dataVolume:
            name: fedora-root
        - name: seed
          cloudInitNoCloud:
            userData: |
              #cloud-config
              password: fedora
            networkDataBase64: dmVyc2lvbjogMgo=
        - name: data
          persistentVolumeClaim:
            claimName: data-pvc
        - name: scratch
          containerDisk:
            image: quay.io/containerdisks/busybox:latest
"#;

    #[test]
    fn full_manifest_parses() {
        let spec = parse(GOOD).unwrap();
        assert_eq!(spec.name, "fedora");
        assert_eq!(spec.namespace, "dev");
        assert_eq!(spec.run_strategy, RunStrategy::RerunOnFailure);
        assert_eq!(spec.data_volume_templates.len(), 1);
        assert_eq!(spec.data_volume_templates[0].metadata.name, "fedora-root");
        assert_eq!((spec.sockets, spec.cores, spec.threads), (1, 2, 1));
        assert_eq!(spec.memory_bytes, 1 << 30);
        let names: Vec<&str> = spec.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["root", "seed", "data", "scratch"]);
        assert_eq!(spec.disks[0].source, DiskSource::DataVolume { name: "fedora-root".into() });
        assert_eq!(spec.disks[0].boot_order, Some(1));
        let DiskSource::CloudInit(ci) = &spec.disks[1].source else { panic!("{:?}", spec.disks[1]) };
        assert!(ci.user_data.starts_with(b"#cloud-config\n"));
        assert_eq!(ci.network_data.as_deref(), Some(&b"version: 2\n"[..]));
        assert!(spec.disks[2].read_only);
        assert_eq!(spec.disks[2].serial.as_deref(), Some("DATA1"));
        assert_eq!(
            spec.disks[3].source,
            DiskSource::ContainerDisk { image: "quay.io/containerdisks/busybox:latest".into() }
        );
        assert_eq!(spec.network, None);
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const MINIMAL_TEMPLATE: &str =
        "  template:\n    spec:\n      domain:\n        memory:\n          guest: 64Mi\n";

    #[test]
    fn running_true_means_always_and_absent_means_halted() {
        let spec = parse(&vm(&format!("  running: true\n{MINIMAL_TEMPLATE}"))).unwrap();
        assert_eq!(spec.run_strategy, RunStrategy::Always);
        let spec = parse(&vm(MINIMAL_TEMPLATE)).unwrap();
        assert_eq!(spec.run_strategy, RunStrategy::Halted);
    }

    #[test]
    fn running_and_run_strategy_together_are_rejected() {
        let e = err(&vm(&format!("  running: true\n  runStrategy: Always\n{MINIMAL_TEMPLATE}")));
        assert!(e.contains("spec.running") && e.contains("mutually exclusive"), "{e}");
    }

    #[test]
    fn unknown_run_strategy_is_rejected() {
        let e = err(&vm(&format!("  runStrategy: Sometimes\n{MINIMAL_TEMPLATE}")));
        assert!(e.contains("spec.runStrategy") && e.contains("Sometimes"), "{e}");
    }

    #[test]
    fn wrong_kind_and_api_version_are_rejected() {
        let e = err(&vm(MINIMAL_TEMPLATE).replace("kind: VirtualMachine", "kind: DataVolume"));
        assert!(e.contains("kind") && e.contains("DataVolume"), "{e}");
        let e = err(&vm(MINIMAL_TEMPLATE).replace("kubevirt.io/v1", "cdi.kubevirt.io/v1beta1"));
        assert!(e.contains("apiVersion"), "{e}");
    }

    #[test]
    fn memory_from_requests_and_missing_memory() {
        let t = "  template:\n    spec:\n      domain:\n        resources:\n          requests:\n            memory: 512M\n";
        assert_eq!(parse(&vm(t)).unwrap().memory_bytes, 512_000_000);
        let e = err(&vm("  template:\n    spec:\n      domain: {}\n"));
        assert!(e.contains("no memory"), "{e}");
        let e = err(&vm(&MINIMAL_TEMPLATE.replace("64Mi", "64Qi")));
        assert!(e.contains("memory.guest"), "{e}");
        let e = err(&vm(&MINIMAL_TEMPLATE.replace("64Mi", "1Ki")));
        assert!(e.contains("outside"), "{e}");
    }

    #[test]
    fn zero_cores_are_rejected() {
        let t =
            MINIMAL_TEMPLATE.replace("        memory:", "        cpu:\n          cores: 0\n        memory:");
        let e = err(&vm(&t));
        assert!(e.contains("cpu.cores"), "{e}");
    }

    fn with_disks(disks: &str, volumes: &str) -> String {
        vm(&format!("{MINIMAL_TEMPLATE}        devices:\n          disks:\n{disks}      volumes:\n{volumes}"))
    }

    #[test]
    fn disk_without_volume_is_rejected() {
        let e = err(&with_disks(
            "            - name: root\n",
            "        - name: other\n          dataVolume:\n            name: dv\n",
        ));
        assert!(e.contains("disks[0].name") && e.contains("no volume named \"root\""), "{e}");
    }

    #[test]
    fn sata_bus_is_unsupported() {
        let e = err(&with_disks(
            "            - name: root\n              disk:\n                bus: sata\n",
            "        - name: root\n          dataVolume:\n            name: dv\n",
        ));
        assert!(e.contains("disks[0].disk.bus") && e.contains("not supported"), "{e}");
    }

    #[test]
    fn volume_with_two_sources_or_none_is_rejected() {
        let e = err(&with_disks(
            "",
            "        - name: root\n          dataVolume:\n            name: dv\n          persistentVolumeClaim:\n            claimName: p\n",
        )
        .replace("          disks:\n", "          disks: []\n"));
        assert!(e.contains("volumes[0]") && e.contains("more than one source"), "{e}");
        let e =
            err(&with_disks("", "        - name: root\n")
                .replace("          disks:\n", "          disks: []\n"));
        assert!(e.contains("volumes[0]") && e.contains("no source"), "{e}");
    }

    #[test]
    fn bad_user_data_base64_is_rejected() {
        let e = err(&with_disks(
            "            - name: seed\n",
            "        - name: seed\n          cloudInitNoCloud:\n            userDataBase64: \"!!notbase64\"\n",
        ));
        assert!(e.contains("userDataBase64"), "{e}");
    }

    #[test]
    fn duplicate_volume_names_are_rejected() {
        let e = err(&with_disks(
            "            - name: a\n",
            "        - name: a\n          dataVolume:\n            name: x\n        - name: a\n          dataVolume:\n            name: y\n",
        ));
        assert!(e.contains("duplicate volume"), "{e}");
    }

    #[test]
    fn masquerade_on_pod_network_asks_for_user_networking_and_bridge_is_unsupported() {
        let t = format!(
            "{MINIMAL_TEMPLATE}        devices:\n          interfaces:\n            - name: default\n              masquerade: {{}}\n      networks:\n        - name: default\n          pod: {{}}\n"
        );
        assert_eq!(parse(&vm(&t)).unwrap().network, Some(Network::User));
        let e = err(&vm(&t.replace("masquerade", "bridge")));
        assert!(e.contains("bridge") && e.contains("not supported"), "{e}");
    }

    #[test]
    fn yaml_type_errors_name_the_problem() {
        let e = err(&vm(&MINIMAL_TEMPLATE
            .replace("        memory:", "        cpu:\n          cores: two\n        memory:")));
        assert!(e.starts_with("VirtualMachine manifest:"), "{e}");
    }

    #[test]
    fn bad_names_are_rejected() {
        let e = err(&vm(MINIMAL_TEMPLATE).replace("name: vm1", "name: VM_1"));
        assert!(e.contains("metadata.name"), "{e}");
    }
}
