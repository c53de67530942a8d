//! TLS setup: the process-wide rustls crypto provider and extra trust anchors.
//!
//! ## One crypto provider for the whole binary
//! reqwest 0.13's `rustls` feature builds rustls with **aws-lc-rs**; oci-client does the same,
//! and kube can be built with `aws-lc-rs` too. When two providers are compiled in (kube's
//! default `ring` next to aws-lc-rs) rustls cannot pick one and panics on the first TLS
//! handshake, so the binary installs aws-lc-rs once, before any client is built
//! ([`install_crypto_provider`]). Every TLS user in the binary must build with aws-lc-rs.

use std::path::Path;

use crate::error::{Error, Result};

/// Installs aws-lc-rs as the process-wide rustls provider. Idempotent; a provider installed
/// earlier by someone else is kept.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only means a provider is already installed: fine.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// Reads PEM certificates from `path`: one bundle file, or every regular file of a directory
/// (a mounted ConfigMap or Secret; hidden entries such as `..data` are skipped).
///
/// # Errors
/// [`Error::Config`] when the path cannot be read or holds no certificate at all.
pub(crate) fn load_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let read = |file: &Path| {
        std::fs::read(file)
            .map_err(|e| Error::config_with(format!("reading CA certificates from {}", file.display()), e))
    };
    let parse = |file: &Path, pem: &[u8]| {
        reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| Error::config_with(format!("parsing PEM certificates in {}", file.display()), e))
    };
    let mut certs = Vec::new();
    if path.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| Error::config_with(format!("listing {}", path.display()), e))?;
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        files.sort();
        for file in files {
            certs.extend(parse(&file, &read(&file)?)?);
        }
    } else {
        certs = parse(path, &read(path)?)?;
    }
    if certs.is_empty() {
        return Err(Error::config(format!("no PEM certificate found in {}", path.display())));
    }
    Ok(certs)
}
