//! The controller's certificate authority and the short-lived serving certificates it issues
//! to worker Pods (upload servers, clone sources), the way CDI keeps its own signers: the CA
//! lives in a Secret of the controller's namespace, its certificate is published as a bundle
//! the upload proxy mounts, and each worker gets a leaf for the names its clients dial.
//!
//! Everything here is a function of its inputs plus fresh keys (rcgen over aws-lc-rs, the
//! binary's one crypto provider); reading and writing the Secret is [`super::ca`]'s job.
//!
//! ```text
//!  CertificateAuthority::generate(now, previous) ── CA: ECDSA P-256, CA_VALIDITY, CN diskplane-upload-ca@<now>-<key id>
//!        │ bundle = this CA + the one it replaced (leaves of the old CA stay valid until they expire)
//!        └─ issue(names, now) ── ServingCert: leaf for `names` (DNS or IP), SERVING_VALIDITY
//!                                 (never past the CA), serverAuth only, with the CA beside it
//! ```
//!
//! ## Stored form
//! The CA's validity is kept beside it in the Secret's annotations ([`ANN_NOT_BEFORE`],
//! [`ANN_NOT_AFTER`], RFC 3339), as Kubernetes' own certificate rotation does, so loading it
//! needs no X.509 parser: the issuer's name is rebuilt from `not_before` and the key. A stored CA whose
//! annotations, key or certificate do not fit is replaced.
//!
//! ## Caveats
//! - A serving certificate is issued when its Pod's Secret is made and not renewed: an upload
//!   Pod still waiting for its upload after [`SERVING_VALIDITY`] fails the proxy's TLS check
//!   (delete the Pod; the next one gets a fresh certificate).

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// How long a CA certificate is valid.
pub const CA_VALIDITY_SECS: i64 = 365 * 86_400;
/// A CA is replaced when it has less than this left: far more than [`SERVING_VALIDITY_SECS`],
/// so every leaf of the old CA expires while the old CA is still in the bundle and valid.
pub const CA_RENEW_BEFORE_SECS: i64 = 60 * 86_400;
/// How long a worker's serving certificate is valid (CDI's upload server certificates: 48 h).
pub const SERVING_VALIDITY_SECS: i64 = 48 * 3600;
/// Leaves start this much before "now", for nodes whose clocks run a little behind.
pub const CLOCK_SKEW_SECS: i64 = 5 * 60;

/// Annotation of the CA Secret: when the CA starts being valid (RFC 3339).
pub const ANN_NOT_BEFORE: &str = "diskplane.io/certificate-not-before";
/// Annotation of the CA Secret: when the CA expires (RFC 3339).
pub const ANN_NOT_AFTER: &str = "diskplane.io/certificate-not-after";

/// Common name prefix of the CA; `@<unix time>` follows (CDI's signers are named alike).
const CA_NAME: &str = "diskplane-upload-ca";

/// Why a certificate could not be made or a stored CA not used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// rcgen refused (a name that is not a valid DNS name or IP address, a key it cannot use).
    #[error("{what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// A time outside what X.509 can say.
    #[error("{0}")]
    Time(String),
    /// A stored CA that cannot be used as it is.
    #[error("{0}")]
    Stored(String),
}

fn generate(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Generate { what, source }
}

fn time(unix: i64) -> Result<OffsetDateTime, CertError> {
    OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|e| CertError::Time(format!("certificate time {unix} out of range: {e}")))
}

/// A serving certificate for one worker, in PEM, with the CA bundle its clients verify it
/// against. What the pure builders place in Secrets; `Debug` does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ServingCert {
    /// The leaf certificate.
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8).
    pub key_pem: String,
    /// The CA bundle (what clients trust).
    pub ca_pem: String,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCert").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// The controller's signer: CA certificate and key, validity, and the bundle clients trust.
/// `Debug` does not show the key.
#[derive(Clone)]
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    bundle_pem: String,
    not_before: i64,
    not_after: i64,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The CA's parameters, rebuilt the same from its validity and key (so a stored CA can sign
/// without parsing its certificate: the issuer name of every leaf is this subject). The name
/// carries the start time and the key's identifier, so two CAs made in the same second (two
/// clusters) still have different names and a leaf of one is an unknown issuer to the other.
fn ca_params(not_before: i64, not_after: i64, key: &KeyPair) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    let id: String = params.key_identifier(key).iter().take(4).map(|b| format!("{b:02x}")).collect();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, format!("{CA_NAME}@{not_before}-{id}"));
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = time(not_before)?;
    params.not_after = time(not_after)?;
    Ok(params)
}

impl CertificateAuthority {
    /// A new CA valid from `now` for [`CA_VALIDITY_SECS`]; its bundle also holds `previous`'s
    /// certificate (the CA it replaces), so leaves the old one issued keep verifying.
    ///
    /// # Errors
    /// [`CertError`] when no key or certificate can be made.
    pub fn generate(now: i64, previous: Option<&CertificateAuthority>) -> Result<Self, CertError> {
        let not_after = now.saturating_add(CA_VALIDITY_SECS);
        let key = KeyPair::generate().map_err(generate("generating the CA key"))?;
        let cert = ca_params(now, not_after, &key)?.self_signed(&key).map_err(generate("signing the CA"))?;
        let cert_pem = cert.pem();
        let mut bundle_pem = cert_pem.clone();
        if let Some(old) = previous.filter(|old| old.not_after > now) {
            bundle_pem.push_str(&old.cert_pem);
        }
        Ok(Self { cert_pem, key_pem: key.serialize_pem(), bundle_pem, not_before: now, not_after })
    }

    /// A CA as stored: its PEM certificate and key, the bundle, and its validity (unix
    /// seconds). The key is checked here; a certificate that does not belong to it shows when
    /// clients verify leaves, so the store keeps the three together.
    ///
    /// # Errors
    /// [`CertError`] when the key cannot be read or the times are out of range.
    pub fn from_stored(
        cert_pem: String,
        key_pem: String,
        bundle_pem: String,
        not_before: i64,
        not_after: i64,
    ) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(&key_pem).map_err(generate("reading the stored CA key"))?;
        ca_params(not_before, not_after, &key)?;
        if !cert_pem.contains("-----BEGIN CERTIFICATE-----") || !bundle_pem.contains(cert_pem.trim()) {
            return Err(CertError::Stored(
                "the stored CA certificate is not PEM or not in its bundle".to_owned(),
            ));
        }
        Ok(Self { cert_pem, key_pem, bundle_pem, not_before, not_after })
    }

    /// Whether the CA should be replaced at `now`: less than [`CA_RENEW_BEFORE_SECS`] left,
    /// or not valid yet (a clock that jumped back).
    pub fn needs_renewal(&self, now: i64) -> bool {
        now < self.not_before || now.saturating_add(CA_RENEW_BEFORE_SECS) >= self.not_after
    }

    /// A serving certificate for `names` (DNS names or IP addresses; the first is also the
    /// common name), valid from a little before `now` for [`SERVING_VALIDITY_SECS`] but never
    /// past the CA.
    ///
    /// # Errors
    /// [`CertError`] for a name that is neither a DNS name nor an IP address, or when no key or
    /// certificate can be made.
    pub fn issue(&self, names: &[String], now: i64) -> Result<ServingCert, CertError> {
        let what = names.join(", ");
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(generate(format!("the names {what}")))?;
        let mut subject = DistinguishedName::new();
        if let Some(first) = names.first() {
            subject.push(DnType::CommonName, first.clone());
        }
        params.distinguished_name = subject;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = time(now.saturating_sub(CLOCK_SKEW_SECS).max(self.not_before))?;
        params.not_after = time(now.saturating_add(SERVING_VALIDITY_SECS).min(self.not_after))?;
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(generate("reading the CA key"))?;
        let issuer = Issuer::new(ca_params(self.not_before, self.not_after, &ca_key)?, ca_key);
        let key = KeyPair::generate().map_err(generate(format!("generating a key for {what}")))?;
        let cert =
            params.signed_by(&key, &issuer).map_err(generate(format!("signing a certificate for {what}")))?;
        Ok(ServingCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.bundle_pem.clone(),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key (PEM, PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// What clients trust: this CA, then the one it replaced while that is still valid.
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// Start of validity (unix seconds).
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// End of validity (unix seconds).
    pub fn not_after(&self) -> i64 {
        self.not_after
    }
}

#[cfg(test)]
mod tests;
