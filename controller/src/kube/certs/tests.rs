//! Issued certificates checked the way the proxy and the clone target check them: rustls'
//! WebPKI verifier with the CA bundle as the only roots, at chosen times.

use std::sync::Arc;
use std::time::Duration;

use rustls::CertificateError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::*;

const NOW: i64 = 1_800_000_000;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| (*n).to_owned()).collect()
}

/// Verifies `cert_pem` for `name` at `at` against the roots of `bundle_pem`.
fn verify(bundle_pem: &str, cert_pem: &str, name: &str, at: i64) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(cert.expect("bundle PEM")).expect("a root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().expect("verifier");
    let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("leaf PEM");
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    let at = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(at).expect("time")));
    verifier.verify_server_cert(&leaf, &[], &name, &[], at).map(|_| ())
}

fn certificate_error(result: Result<(), rustls::Error>) -> CertificateError {
    match result {
        Err(rustls::Error::InvalidCertificate(e)) => e,
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[test]
fn an_issued_certificate_verifies_for_each_of_its_names_for_48_hours() {
    let ca = CertificateAuthority::generate(NOW, None).unwrap();
    let sans = names(&["cdi-upload-disk.vms.svc", "cdi-upload-disk.vms.svc.cluster.local"]);

    let leaf = ca.issue(&sans, NOW).unwrap();

    assert_eq!(leaf.ca_pem, ca.bundle_pem());
    for name in &sans {
        verify(&leaf.ca_pem, &leaf.cert_pem, name, NOW).unwrap();
        verify(&leaf.ca_pem, &leaf.cert_pem, name, NOW + SERVING_VALIDITY_SECS - 1).unwrap();
    }
    let expired = verify(&leaf.ca_pem, &leaf.cert_pem, &sans[0], NOW + SERVING_VALIDITY_SECS + 1);
    assert!(matches!(certificate_error(expired), CertificateError::ExpiredContext { .. }));
    let early = verify(&leaf.ca_pem, &leaf.cert_pem, &sans[0], NOW - CLOCK_SKEW_SECS - 1);
    assert!(matches!(certificate_error(early), CertificateError::NotValidYetContext { .. }));
}

#[test]
fn an_issued_certificate_is_refused_for_other_names() {
    let ca = CertificateAuthority::generate(NOW, None).unwrap();
    let leaf = ca.issue(&names(&["cdi-upload-disk.vms.svc"]), NOW).unwrap();

    let other = verify(&leaf.ca_pem, &leaf.cert_pem, "cdi-upload-other.vms.svc", NOW);

    assert!(matches!(certificate_error(other), CertificateError::NotValidForNameContext { .. }));
}

#[test]
fn an_ip_address_name_becomes_an_ip_san() {
    let ca = CertificateAuthority::generate(NOW, None).unwrap();
    let leaf = ca.issue(&names(&["127.0.0.1"]), NOW).unwrap();

    verify(&leaf.ca_pem, &leaf.cert_pem, "127.0.0.1", NOW).unwrap();
    assert!(verify(&leaf.ca_pem, &leaf.cert_pem, "127.0.0.2", NOW).is_err());
}

#[test]
fn a_certificate_of_another_ca_is_an_unknown_issuer() {
    let ours = CertificateAuthority::generate(NOW, None).unwrap();
    let theirs = CertificateAuthority::generate(NOW, None).unwrap();
    let leaf = theirs.issue(&names(&["cdi-upload-disk.vms.svc"]), NOW).unwrap();

    let refused = verify(ours.bundle_pem(), &leaf.cert_pem, "cdi-upload-disk.vms.svc", NOW);

    assert_eq!(certificate_error(refused), CertificateError::UnknownIssuer);
}

#[test]
fn a_leaf_never_outlives_its_ca() {
    let ca = CertificateAuthority::generate(NOW, None).unwrap();
    let late = ca.not_after() - 3600;

    let leaf = ca.issue(&names(&["a.b.svc"]), late).unwrap();

    verify(&leaf.ca_pem, &leaf.cert_pem, "a.b.svc", ca.not_after() - 1).unwrap();
    assert!(verify(&leaf.ca_pem, &leaf.cert_pem, "a.b.svc", ca.not_after() + 1).is_err());
}

#[test]
fn a_stored_ca_signs_leaves_that_verify_against_the_original_bundle() {
    let ca = CertificateAuthority::generate(NOW, None).unwrap();
    let stored = CertificateAuthority::from_stored(
        ca.cert_pem().to_owned(),
        ca.key_pem().to_owned(),
        ca.bundle_pem().to_owned(),
        ca.not_before(),
        ca.not_after(),
    )
    .unwrap();

    let leaf = stored.issue(&names(&["x.y.svc"]), NOW + 86_400).unwrap();

    verify(ca.bundle_pem(), &leaf.cert_pem, "x.y.svc", NOW + 86_400).unwrap();
}

#[test]
fn stored_cas_with_a_bad_key_or_certificate_are_refused() {
    let ca = CertificateAuthority::generate(NOW, None).unwrap();
    let (cert, key, bundle) = (ca.cert_pem().to_owned(), ca.key_pem().to_owned(), ca.bundle_pem().to_owned());

    assert!(
        CertificateAuthority::from_stored(cert.clone(), "not a key".into(), bundle.clone(), NOW, NOW + 1)
            .is_err()
    );
    assert!(CertificateAuthority::from_stored("not PEM".into(), key.clone(), bundle, NOW, NOW + 1).is_err());
    assert!(CertificateAuthority::from_stored(cert, key, "another bundle".into(), NOW, NOW + 1).is_err());
}

#[test]
fn a_renewed_ca_keeps_the_old_one_in_its_bundle_so_old_leaves_still_verify() {
    let old = CertificateAuthority::generate(NOW, None).unwrap();
    let old_leaf = old.issue(&names(&["a.b.svc"]), NOW).unwrap();
    let later = old.not_after() - CA_RENEW_BEFORE_SECS;

    let new = CertificateAuthority::generate(later, Some(&old)).unwrap();
    let new_leaf = new.issue(&names(&["a.b.svc"]), later).unwrap();

    assert!(old.needs_renewal(later) && !new.needs_renewal(later));
    assert!(new.bundle_pem().starts_with(new.cert_pem()) && new.bundle_pem().ends_with(old.cert_pem()));
    verify(new.bundle_pem(), &new_leaf.cert_pem, "a.b.svc", later).unwrap();
    verify(new.bundle_pem(), &old_leaf.cert_pem, "a.b.svc", NOW + 3600).unwrap();
    // An expired CA is not carried over.
    let much_later = CertificateAuthority::generate(old.not_after() + 1, Some(&old)).unwrap();
    assert_eq!(much_later.bundle_pem(), much_later.cert_pem());
}

#[test]
fn renewal_is_due_in_the_last_60_days_and_before_the_start() {
    let ca = CertificateAuthority::generate(NOW, None).unwrap();

    assert!(!ca.needs_renewal(NOW));
    assert!(!ca.needs_renewal(ca.not_after() - CA_RENEW_BEFORE_SECS - 1));
    assert!(ca.needs_renewal(ca.not_after() - CA_RENEW_BEFORE_SECS));
    assert!(ca.needs_renewal(NOW - 1));
}

#[test]
fn names_that_are_neither_dns_names_nor_addresses_are_refused() {
    let ca = CertificateAuthority::generate(NOW, None).unwrap();

    let err = ca.issue(&names(&["bad name é"]), NOW).unwrap_err();

    assert!(err.to_string().contains("bad name"), "{err}");
}

#[test]
fn debug_output_hides_the_keys() {
    let ca = CertificateAuthority::generate(NOW, None).unwrap();
    let leaf = ca.issue(&names(&["a.b.svc"]), NOW).unwrap();

    assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    assert!(!format!("{leaf:?}").contains("PRIVATE KEY"));
}
