//! A small HTTP/1.1 file server on 127.0.0.1 (std::net only) that misbehaves on schedule:
//! request *i* gets `schedule[i]` (then `default`), so tests can drop connections mid-body,
//! answer 5xx, or close without answering, and see the importer resume with Range requests.
//! It serves one object from memory, honours `Range: bytes=A-` and `bytes=A-B`, sends an
//! ETag, and closes every connection after one response.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// What one request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// The whole (ranged) body.
    Full,
    /// Headers announcing the full length, then only this many body bytes, then close.
    Truncate(u64),
    /// This status with an empty body.
    Status(u16),
    /// Close the connection without answering.
    Close,
    /// The whole (ranged) body, but with another ETag: the object changed on the server.
    NewVersion,
}

/// One request as the server saw it: its Range header and the status it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub range: Option<String>,
    pub behaviour: Behaviour,
}

#[derive(Debug)]
pub struct FlakyServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<thread::JoinHandle<()>>,
}

struct Shared {
    data: Vec<u8>,
    etag: String,
    schedule: Vec<Behaviour>,
    default: Behaviour,
    next: AtomicUsize,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FlakyServer {
    pub fn start(data: Vec<u8>, schedule: Vec<Behaviour>, default: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the flaky server");
        let port = listener.local_addr().expect("local address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            etag: format!(
                "\"{}-{}\"",
                data.len(),
                data.iter().take(4096).map(|&b| u64::from(b)).sum::<u64>()
            ),
            data,
            schedule,
            default,
            next: AtomicUsize::new(0),
            seen: Arc::clone(&seen),
        });
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&shared);
                thread::spawn(move || {
                    let _ = serve(&shared, stream);
                });
            }
        });
        Self { port, stop, seen, thread: Some(thread) }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// The requests served so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for FlakyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(shared: &Shared, mut stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_owned());
        }
    }
    let index = shared.next.fetch_add(1, Ordering::SeqCst);
    let behaviour = shared.schedule.get(index).copied().unwrap_or(shared.default);
    if let Ok(mut seen) = shared.seen.lock() {
        seen.push(Seen { range: range.clone(), behaviour });
    }
    let len = shared.data.len() as u64;
    match behaviour {
        Behaviour::Close => return stream.shutdown(Shutdown::Both),
        Behaviour::Status(code) => {
            write!(stream, "HTTP/1.1 {code} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
            return stream.shutdown(Shutdown::Both);
        }
        Behaviour::Full | Behaviour::Truncate(_) | Behaviour::NewVersion => {}
    }
    let (start, end) = match range.as_deref().and_then(parse_range) {
        Some((start, end)) if start < len => (start, end.unwrap_or(len - 1).min(len - 1)),
        Some(_) => {
            write!(
                stream,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return stream.shutdown(Shutdown::Both);
        }
        None => (0, len - 1),
    };
    let body = &shared.data[start as usize..=end as usize];
    let mut head = if range.is_some() {
        format!("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{end}/{len}\r\n")
    } else {
        "HTTP/1.1 200 OK\r\n".to_owned()
    };
    head.push_str(&format!(
        "Content-Length: {}\r\nAccept-Ranges: bytes\r\nETag: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len(),
        if behaviour == Behaviour::NewVersion { "\"v2\"" } else { &shared.etag }
    ));
    stream.write_all(head.as_bytes())?;
    let send = match behaviour {
        Behaviour::Truncate(n) => body.len().min(n as usize),
        _ => body.len(),
    };
    stream.write_all(&body[..send])?;
    stream.flush()?;
    stream.shutdown(Shutdown::Both)
}

/// `bytes=A-` or `bytes=A-B`.
fn parse_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (start, end) = value.strip_prefix("bytes=")?.split_once('-')?;
    let start = start.parse().ok()?;
    let end = if end.is_empty() { None } else { Some(end.parse().ok()?) };
    Some((start, end))
}
