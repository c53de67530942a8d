//! A real `diskplane serve` process for end-to-end tests: a free 127.0.0.1 port, a data dir
//! that outlives the process (so a test can kill -9 it and start another on the same dir),
//! and helpers to run the client verbs against it. Killed on drop.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

pub fn diskplane() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diskplane"))
}

/// A running server.
pub struct Serve {
    child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
}

impl Serve {
    /// Starts `diskplane serve` on `data_dir` with `extra` arguments and waits for /healthz.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Serve {
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .expect("server log");
        let mut child = diskplane()
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting diskplane serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("diskplane serve exited with {status}: {}", read_log(data_dir));
            }
            if http(port, "GET", "/healthz").0 == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "diskplane serve did not answer /healthz");
            std::thread::sleep(Duration::from_millis(50));
        }
        Serve { child, port, data_dir: data_dir.to_owned() }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `diskplane ARGS` against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        diskplane().args(args).env("DISKPLANE_SERVER", self.url()).output().expect("running diskplane")
    }

    /// `diskplane apply -f -` with `yaml` on stdin (and extra arguments).
    pub fn apply(&self, yaml: &str, extra: &[&str]) -> Output {
        let mut child = diskplane()
            .args(["apply", "-f", "-"])
            .args(extra)
            .env("DISKPLANE_SERVER", self.url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running diskplane apply");
        child.stdin.take().expect("stdin").write_all(yaml.as_bytes()).expect("writing the manifest");
        child.wait_with_output().expect("diskplane apply")
    }

    /// `diskplane get dv NAME -o json`.
    pub fn dv(&self, name: &str) -> serde_json::Value {
        let out = self.cli(&["get", "dv", name, "-o", "json"]);
        assert!(out.status.success(), "get dv {name}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("get -o json prints JSON")
    }

    /// `diskplane wait dv NAME --timeout T`.
    pub fn wait(&self, name: &str, timeout: &str) -> Output {
        self.cli(&["wait", "dv", name, "--timeout", timeout])
    }

    /// The volume's disk in the pool.
    pub fn disk(&self, name: &str) -> PathBuf {
        self.data_dir.join("volumes/default").join(name).join("disk.img")
    }

    /// Peak resident memory of the server process so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM line");
        let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM value");
        kib * 1024
    }

    /// SIGKILL, like a crash.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        read_log(&self.data_dir)
    }
}

fn read_log(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default()
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Detaches, on drop, every loop device over a Block volume's backing file
/// (`volumes/<ns>/<name>/block.img`) under a data dir, so tests that create Block DataVolumes
/// leave no device attached, even when they fail. Declare it before the [`Serve`] it guards, so
/// the server is gone first.
pub struct DetachLoopsOnDrop(pub PathBuf);

impl Drop for DetachLoopsOnDrop {
    fn drop(&mut self) {
        let Ok(namespaces) = std::fs::read_dir(self.0.join("volumes")) else { return };
        for volume in
            namespaces.flatten().filter_map(|ns| std::fs::read_dir(ns.path()).ok()).flatten().flatten()
        {
            let backing = volume.path().join("block.img");
            if !backing.exists() {
                continue;
            }
            let Ok(out) = Command::new("losetup").arg("-j").arg(&backing).output() else { continue };
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((device, _)) = line.split_once(':') {
                    let _ = Command::new("losetup").arg("-d").arg(device).status();
                }
            }
        }
    }
}

/// One plain HTTP/1.1 request; returns status and body (status 0 when nothing answers).
pub fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}
