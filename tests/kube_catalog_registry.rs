//! The kube driver's DataImportCron digest lookup ([`RegistryDigests`], the importer's registry
//! client) against a real docker-registry: the digest of a pushed tag, a new digest after a
//! new push, and clear errors for a missing tag and for TLS spoken to a plain-HTTP registry;
//! a private registry (TLS with its own CA + basic auth) polled with the credentials and CA a
//! cron's `secretRef` / `certConfigMap` give.
//!
//! Needs docker-registry and python3 (see `.ci/packages.txt`).

#[allow(dead_code)]
#[path = "peers/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "peers/registry.rs"]
mod registry;
#[allow(dead_code)]
#[path = "peers/tls.rs"]
mod tls;

use controller::kube::catalog::{DigestSource, RegistryAccess, RegistryDigests};

fn push(registry: &registry::Registry, dir: &std::path::Path, version: u8) -> String {
    let image = dir.join(format!("v{version}.img"));
    std::fs::write(&image, vec![version; 64 << 10]).expect("image");
    let entry = format!("disk/disk.img=@{}", image.display());
    registry.push("golden/fedora:40", "amd64", &[("gzip", vec![entry])]).digest
}

#[tokio::test]
async fn registry_digests_follow_the_tag_of_a_real_registry() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let registry = registry::Registry::start();
    let host = registry.host();
    let url = format!("docker://{host}/golden/fedora:40");
    let digests = RegistryDigests { insecure_registries: vec![host.clone()] };
    let none = RegistryAccess::default();

    let first = push(&registry, tmp.path(), 1);
    assert!(first.starts_with("sha256:"), "{first}");
    assert_eq!(digests.digest(&url, &none).await, Ok(first.clone()));

    let second = push(&registry, tmp.path(), 2);
    assert_ne!(second, first);
    assert_eq!(digests.digest(&url, &none).await, Ok(second));

    let missing = format!("docker://{host}/golden/fedora:missing");
    let err = digests.digest(&missing, &none).await.expect_err("a missing tag");
    assert!(err.starts_with(&format!("polling {missing}: ")), "{err}");

    // Not listed as insecure: TLS to a plain-HTTP registry fails, naming the URL.
    let err = RegistryDigests::default().digest(&url, &none).await.expect_err("TLS to a plain registry");
    assert!(err.starts_with(&format!("polling {url}: ")), "{err}");
}

#[tokio::test]
async fn a_private_registry_answers_with_the_credentials_and_ca_of_the_cron() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut registry = registry::Registry::start();
    let secure = registry.start_secure();
    let pushed = push(&registry, tmp.path(), 1);
    let url = format!("docker://127.0.0.1:{secure}/golden/fedora:40");
    let password = std::fs::read_to_string(registry.password_file()).expect("password").trim().to_owned();
    let ca = std::fs::read_to_string(registry.ca_cert()).expect("CA");
    let access = RegistryAccess {
        username: Some(registry::USER.to_owned()),
        password: Some(password),
        ca_pems: vec![ca.clone()],
    };
    let digests = RegistryDigests::default();
    assert_eq!(digests.digest(&url, &access).await, Ok(pushed));

    let wrong = RegistryAccess { password: Some("wrong".into()), ..access.clone() };
    let err = digests.digest(&url, &wrong).await.expect_err("a wrong password");
    assert!(err.starts_with(&format!("polling {url}: ")), "{err}");
    let anonymous = RegistryAccess { ca_pems: vec![ca], ..RegistryAccess::default() };
    digests.digest(&url, &anonymous).await.expect_err("no credentials");
    let untrusted = RegistryAccess { ca_pems: Vec::new(), ..access };
    let err = digests.digest(&url, &untrusted).await.expect_err("the registry's CA is not trusted");
    assert!(err.starts_with(&format!("polling {url}: ")), "{err}");
}
