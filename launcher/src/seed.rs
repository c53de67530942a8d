//! The cloud-init NoCloud seed: `meta-data`, `user-data` and (when given) `network-config` on
//! an ISO9660 image labelled `cidata`, written into the VM's state directory.

use std::path::Path;

use crate::error::{Error, Result};
use crate::iso9660::{self, Timestamp};
use crate::spec::CloudInit;

/// The volume label cloud-init's NoCloud datasource looks for.
pub const LABEL: &str = "cidata";

/// `meta-data` as KubeVirt writes it: instance id `<name>.<namespace>`, hostname `<name>`.
pub fn meta_data(name: &str, namespace: &str) -> String {
    format!("instance-id: {name}.{namespace}\nlocal-hostname: {name}\n")
}

/// The seed image's bytes.
pub fn image(ci: &CloudInit, name: &str, namespace: &str, time: Timestamp) -> Result<Vec<u8>> {
    let meta = meta_data(name, namespace);
    let mut files: Vec<(&str, &[u8])> = vec![("meta-data", meta.as_bytes()), ("user-data", &ci.user_data)];
    if let Some(n) = &ci.network_data {
        files.push(("network-config", n));
    }
    iso9660::build(LABEL, &files, time).map_err(|e| Error::invalid("cloudInitNoCloud", e.to_string()))
}

/// Writes the seed image to `path` (replaced atomically).
pub fn write(path: &Path, ci: &CloudInit, name: &str, namespace: &str) -> Result<()> {
    let bytes = image(ci, name, namespace, Timestamp::now())?;
    let tmp = path.with_extension("iso.tmp");
    std::fs::write(&tmp, &bytes).map_err(|e| Error::io(&tmp, "writing the cloud-init seed", e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, "writing the cloud-init seed", e))
}
