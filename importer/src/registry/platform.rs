//! Platform selection in a manifest list / OCI image index.
//!
//! oci-client's own resolvers ignore `variant` (so `linux/arm/v6` and `linux/arm/v7` look alike);
//! this one matches `os`, `architecture` and, when asked for, `variant`. Missing variants follow
//! the OCI defaults: `arm64` means `v8`.

use std::fmt;
use std::str::FromStr;

use oci_client::manifest::ImageIndexEntry;

use crate::error::{Error, Result};

/// `os/architecture[/variant]`, as in `--platform linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, `windows`, ...
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, `arm`, `s390x`, `ppc64le`, `riscv64`, `386`.
    pub architecture: String,
    /// `v7`, `v8`, ...; `None` accepts any variant.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on (`linux/amd64` on x86-64 Linux).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "x86" => "386",
            "aarch64" => "arm64",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "loongarch64" => "loong64",
            other => other,
        };
        Self { os: std::env::consts::OS.to_owned(), architecture: architecture.to_owned(), variant: None }
    }

    /// Whether an index entry's platform is this one.
    fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        if os != self.os || architecture != self.architecture {
            return false;
        }
        let Some(wanted) = &self.variant else { return true };
        let variant = variant.or(match architecture {
            "arm64" => Some("v8"),
            _ => None,
        });
        variant == Some(wanted.as_str())
    }

    /// The digest of the first entry of `manifests` built for this platform.
    pub(crate) fn resolve(&self, manifests: &[ImageIndexEntry]) -> Option<String> {
        manifests
            .iter()
            .find(|entry| {
                entry.platform.as_ref().is_some_and(|p| {
                    self.matches(&p.os.to_string(), &p.architecture.to_string(), p.variant.as_deref())
                })
            })
            .map(|entry| entry.digest.clone())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let parts: Vec<&str> = text.split('/').collect();
        let bad = || Error::config(format!("platform {text:?} is not OS/ARCH[/VARIANT] (e.g. linux/amd64)"));
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        match parts.as_slice() {
            [os, arch] => Ok(Self { os: (*os).into(), architecture: (*arch).into(), variant: None }),
            [os, arch, variant] => {
                Ok(Self { os: (*os).into(), architecture: (*arch).into(), variant: Some((*variant).into()) })
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(digest: &str, platform: &str) -> ImageIndexEntry {
        let p: Platform = platform.parse().expect("platform");
        let mut json = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": 1,
            "platform": { "os": p.os, "architecture": p.architecture },
        });
        if let Some(v) = p.variant {
            json["platform"]["variant"] = v.into();
        }
        serde_json::from_value(json).expect("entry")
    }

    #[test]
    fn platforms_parse_with_and_without_variant() {
        let p: Platform = "linux/arm/v7".parse().expect("parses");
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()),
            ("linux", "arm", Some("v7"))
        );
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v7".parse::<Platform>().is_err());
        assert!("a/b/c/d".parse::<Platform>().is_err());
    }

    #[test]
    fn the_entry_for_the_asked_architecture_is_chosen() {
        let index = [entry("sha256:a", "linux/amd64"), entry("sha256:b", "linux/arm64")];
        let arm: Platform = "linux/arm64".parse().expect("platform");
        assert_eq!(arm.resolve(&index).as_deref(), Some("sha256:b"));
        let s390: Platform = "linux/s390x".parse().expect("platform");
        assert_eq!(s390.resolve(&index), None);
    }

    #[test]
    fn variants_are_honoured_and_arm64_defaults_to_v8() {
        let index = [
            entry("sha256:v6", "linux/arm/v6"),
            entry("sha256:v7", "linux/arm/v7"),
            entry("sha256:a64", "linux/arm64"),
        ];
        let v7: Platform = "linux/arm/v7".parse().expect("platform");
        assert_eq!(v7.resolve(&index).as_deref(), Some("sha256:v7"));
        let v8: Platform = "linux/arm64/v8".parse().expect("platform");
        assert_eq!(v8.resolve(&index).as_deref(), Some("sha256:a64"));
    }

    #[test]
    fn the_host_platform_uses_go_spellings() {
        let host = Platform::host();
        assert_eq!(host.os, std::env::consts::OS);
        assert_ne!(host.architecture, "x86_64");
        assert_ne!(host.architecture, "aarch64");
    }
}
