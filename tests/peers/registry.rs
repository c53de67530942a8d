//! A throw-away CNCF distribution registry (Debian's `docker-registry`) for the registry tests:
//! one plain-HTTP instance, and on demand a second one with TLS (test CA + leaf for 127.0.0.1)
//! and htpasswd (bcrypt, from `htpasswd -B`) serving the same storage. Both are killed on drop.
//! Images are pushed with `fixtures/make-containerdisk.py` over the registry's HTTP API.
//!
//! Needs docker-registry, apache2-utils (htpasswd), openssl, python3, and the including test file
//! must declare `tests/peers/tls.rs` as its module `tls` (the test PKI).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// User name accepted by the TLS instance (the password is in [`Registry::password_file`]).
pub const USER: &str = "diskplane";

/// A running registry (plain HTTP) with its storage in a temporary directory.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
    tls: Option<Secure>,
}

/// The TLS + htpasswd instance.
struct Secure {
    child: Child,
}

/// What a push printed.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub digest: String,
    pub size: u64,
    pub layers: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn wait_for(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "docker-registry exited with {status}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("docker-registry did not listen on port {port}");
}

fn start(dir: &Path, name: &str, port: u16, extra: &str) -> Child {
    let config = dir.join(format!("{name}.yml"));
    let yaml = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: diskplane-test\n{extra}",
        dir.join("storage").display()
    );
    std::fs::write(&config, yaml).expect("writing the registry config");
    let log = dir.join(format!("{name}.log"));
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).expect("log"))
        .spawn()
        .expect("starting docker-registry (apt-get install docker-registry)");
    wait_for(port, &mut child, &dir.join(format!("{name}.err")));
    child
}

fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

impl Registry {
    /// A plain-HTTP registry on a free port.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = start(dir.path(), "plain", port, "");
        Self { dir, port, child, tls: None }
    }

    /// Adds the TLS + basic-auth instance over the same storage; returns its port.
    pub fn start_secure(&mut self) -> u16 {
        let dir = self.dir.path();
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).expect("tls dir");
        let pki = crate::tls::make_pki(&tls);
        let password = "pw-".to_owned() + &self.port.to_string() + "-secret";
        std::fs::write(dir.join("password"), format!("{password}\n")).expect("password");
        let line = run_ok(Command::new("htpasswd").args(["-nbB", USER, &password]));
        std::fs::write(dir.join("htpasswd"), line).expect("htpasswd");
        let port = free_port();
        let extra = format!(
            "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: diskplane-test\n    path: {}\n",
            pki.cert.display(),
            pki.key.display(),
            dir.join("htpasswd").display()
        );
        let child = start(dir, "secure", port, &extra);
        self.tls = Some(Secure { child });
        port
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("tls/ca.crt")
    }

    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    /// `127.0.0.1:PORT` of the plain instance.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Builds and pushes an image: `layers` oldest first, each `(compression, entries)` in the
    /// syntax of `fixtures/make-containerdisk.py`.
    pub fn push(&self, reference: &str, arch: &str, layers: &[(&str, Vec<String>)]) -> Pushed {
        let mut cmd = Command::new("python3");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/make-containerdisk.py")).args([
            "image",
            &format!("http://{}", self.host()),
            reference,
            "--arch",
            arch,
        ]);
        for (compression, entries) in layers {
            cmd.arg("--layer").arg(compression).args(entries);
        }
        parse_pushed(&run_ok(&mut cmd))
    }

    /// Pushes an OCI index over already pushed manifests (`platform`, manifest).
    pub fn push_index(&self, reference: &str, entries: &[(&str, &Pushed)]) -> Pushed {
        let mut cmd = Command::new("python3");
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/make-containerdisk.py")).args([
            "index",
            &format!("http://{}", self.host()),
            reference,
        ]);
        for (platform, pushed) in entries {
            cmd.arg(format!("{platform}={}:{}", pushed.digest, pushed.size));
        }
        parse_pushed(&run_ok(&mut cmd))
    }

    /// The stored file of a blob (to tamper with).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.dir.path().join(format!("storage/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

fn parse_pushed(stdout: &[u8]) -> Pushed {
    let v: serde_json::Value = serde_json::from_slice(stdout).expect("push output is JSON");
    Pushed {
        digest: v["digest"].as_str().expect("digest").to_owned(),
        size: v["size"].as_u64().expect("size"),
        layers: v["layers"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(secure) = &mut self.tls {
            let _ = secure.child.kill();
            let _ = secure.child.wait();
        }
    }
}
