//! nginx as the HTTP(S) peer of the end-to-end tests: `tests/peers/nginx.sh` configures it in a
//! private directory (plain HTTP, TLS with a test CA, basic auth, Range, the fault paths it
//! serves) and this module starts it on two free loopback ports, waits until both accept, and
//! stops it on drop. Each test file uses its own subset, so it declares the module with
//! `#[allow(dead_code)]`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::free_port;

/// A running nginx serving one directory.
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    http: u16,
    https: u16,
}

impl Nginx {
    /// nginx serving `www` (under `/files/`, `/noranges/`, `/auth/`, see nginx.sh). Retries with fresh
    /// ports when another process took one between choosing and binding it.
    pub fn start(www: &Path) -> Nginx {
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("nginx dir");
            let (http, https) = (free_port(), free_port());
            let mut child = Command::new("bash")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/nginx.sh"))
                .arg(dir.path())
                .arg(www)
                .arg(http.to_string())
                .arg(https.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting tests/peers/nginx.sh (is nginx installed?)");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("nginx exited with {status}: {}", read(&dir.path().join("error.log")));
                    break;
                }
                if accepts(http) && accepts(https) {
                    return Nginx { child, dir, http, https };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if last.is_empty() {
                last = format!("nginx did not listen on {http} and {https} within 30 s");
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nginx did not start: {last}");
    }

    /// `http://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.http)
    }

    /// `http://127.0.0.1:PORT/files/NAME`: a file of the served directory.
    pub fn file_url(&self, name: &str) -> String {
        self.url(&format!("files/{name}"))
    }

    /// `https://127.0.0.1:PORT/PATH` (certificate signed by [`Nginx::ca`]).
    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{path}", self.https)
    }

    /// The test CA that signed the TLS certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("tls/ca.crt")
    }

    /// The basic-auth password of the protected paths.
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    /// Access log lines: `STATUS METHOD URI range=RANGE`.
    pub fn access_log(&self) -> Vec<String> {
        read(&self.dir.path().join("access.log")).lines().map(str::to_owned).collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn accepts(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
