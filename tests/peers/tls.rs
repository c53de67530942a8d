//! A throw-away PKI for TLS peers and servers in the tests, made with the openssl CLI: a CA and a
//! leaf certificate for `127.0.0.1` / `localhost` signed by it (rustls refuses a self-signed
//! certificate used directly as a server's, so there are always two). EC P-256 keys: fast to
//! make. Each test file uses its own subset, so it declares the module with `#[allow(dead_code)]`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where [`make_pki`] put the files.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate (PEM): what clients trust.
    pub ca: PathBuf,
    /// The CA key (PEM), for signing more leaves.
    pub ca_key: PathBuf,
    /// The leaf certificate (PEM) for `IP:127.0.0.1` and `DNS:localhost`, server and client use.
    pub cert: PathBuf,
    /// The leaf's private key (PEM, unencrypted).
    pub key: PathBuf,
}

/// Makes `ca.crt`, `ca.key`, `tls.crt` and `tls.key` in `dir`.
pub fn make_pki(dir: &Path) -> TestPki {
    const EC: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let ca_ext =
        ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"];
    let ca_files = ["-keyout", "ca.key", "-out", "ca.crt"];
    openssl(
        dir,
        &[&["req", "-x509", "-days", "2", "-subj", "/CN=diskplane test CA"][..], &EC, &ca_ext, &ca_files]
            .concat(),
    );
    openssl(
        dir,
        &[&["req", "-subj", "/CN=127.0.0.1", "-keyout", "tls.key", "-out", "tls.csr"][..], &EC].concat(),
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("writing leaf.ext");
    let sign = ["x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"];
    openssl(dir, &[&sign[..], &["-days", "2", "-extfile", "leaf.ext", "-out", "tls.crt"]].concat());
    TestPki {
        ca: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl (is it installed?)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A client certificate (`extendedKeyUsage=clientAuth`) with subject CommonName `cn`, signed by
/// `pki`'s CA: `(certificate, key)` as `<cn>.crt` / `<cn>.key` in `dir` (an API server's front
/// proxy, a clone source). EC P-256 like the rest.
pub fn make_client_cert(pki: &TestPki, dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    let (cert, key, csr, ext) =
        (format!("{cn}.crt"), format!("{cn}.key"), format!("{cn}.csr"), format!("{cn}.ext"));
    openssl(
        dir,
        &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
            .into_iter()
            .chain(["-subj", &format!("/CN={cn}"), "-keyout", &key, "-out", &csr])
            .collect::<Vec<_>>(),
    );
    std::fs::write(
        dir.join(&ext),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .expect("writing the client extensions");
    let (ca, ca_key) = (pki.ca.display().to_string(), pki.ca_key.display().to_string());
    openssl(
        dir,
        &["x509", "-req", "-in", &csr, "-CA", &ca, "-CAkey", &ca_key, "-CAcreateserial"]
            .into_iter()
            .chain(["-days", "2", "-extfile", &ext, "-out", &cert])
            .collect::<Vec<_>>(),
    );
    (dir.join(cert), dir.join(key))
}
