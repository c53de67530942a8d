//! Progress of a worker as Prometheus text on plain-HTTP `GET /metrics`, for the kube driver
//! (which turns it into `status.progress`) and for Prometheus.
//!
//! ```text
//! diskplane_progress_ratio{ownerUID="…"} 0.4213          0..1; 0 while the total is unknown
//! diskplane_bytes_written_total{ownerUID="…"} 22020096   units done (see below)
//! diskplane_bytes_total{ownerUID="…"} 52428800           only when the total is known
//! kubevirt_cdi_import_progress_total{ownerUID="…"} 42.13 CDI's name and scale (percent)
//! ```
//!
//! The unit is the transfer's own: bytes as served while an image streams, guest bytes
//! converted while a qcow2 is read in place, body bytes received by the upload server.
//!
//! ## Caveats
//! A thread per listener serving one short request at a time with std::net: enough for one
//! scraper every few seconds, not a general HTTP server. Requests are read up to 8 KiB with a
//! 2 s timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

/// Reads the current `(done, total)` of the transfer.
pub type Reading = Arc<dyn Fn() -> (u64, Option<u64>) + Send + Sync>;

/// Which CDI progress metric the role also serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `kubevirt_cdi_import_progress_total`.
    Import,
    /// `kubevirt_cdi_clone_progress_total`.
    Clone,
    /// `kubevirt_cdi_upload_progress_total`.
    Upload,
}

impl Role {
    fn cdi_metric(self) -> &'static str {
        match self {
            Role::Import => "kubevirt_cdi_import_progress_total",
            Role::Clone => "kubevirt_cdi_clone_progress_total",
            Role::Upload => "kubevirt_cdi_upload_progress_total",
        }
    }
}

/// Longest request head read.
const MAX_REQUEST: usize = 8 << 10;
/// A scraper that sends nothing for this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds `addr` and serves the metrics on a background thread for the rest of the process.
/// Prints `metrics on http://ADDR/metrics` on stderr (port 0 picks a free port).
///
/// # Errors
/// When the address cannot be bound.
pub fn serve(
    addr: SocketAddr,
    role: Role,
    owner_uid: Option<String>,
    reading: Reading,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).with_context(|| format!("listening for metrics on {addr}"))?;
    let local = listener.local_addr().with_context(|| format!("listening for metrics on {addr}"))?;
    eprintln!("metrics on http://{local}/metrics");
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let (done, total) = reading();
                // A scraper that misbehaves only loses its own answer.
                let _ = answer(stream, &render(role, owner_uid.as_deref(), done, total));
            }
        })
        .context("starting the metrics thread")?;
    Ok(local)
}

fn answer(mut stream: TcpStream, body: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body),
        (_, b"/metrics") => ("405 Method Not Allowed", "text/plain", "use GET\n"),
        _ => ("404 Not Found", "text/plain", "metrics are at /metrics\n"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

/// The Prometheus text exposition of one reading.
pub fn render(role: Role, owner_uid: Option<&str>, done: u64, total: Option<u64>) -> String {
    let labels = owner_uid.map(|uid| format!("{{ownerUID=\"{}\"}}", escape(uid))).unwrap_or_default();
    let ratio = match total {
        Some(t) if t > 0 => (done as f64 / t as f64).clamp(0.0, 1.0),
        _ => 0.0,
    };
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{labels} {value}\n"));
    };
    metric(
        "diskplane_progress_ratio",
        "gauge",
        "Fraction of the transfer done, 0 to 1 (0 while the total is unknown).",
        format!("{ratio:.6}"),
    );
    metric(
        "diskplane_bytes_written_total",
        "counter",
        "Bytes of the transfer done so far.",
        done.to_string(),
    );
    if let Some(total) = total {
        metric("diskplane_bytes_total", "gauge", "Bytes of the whole transfer.", total.to_string());
    }
    metric(
        role.cdi_metric(),
        "counter",
        "Progress in percent (CDI's metric).",
        format!("{:.2}", ratio * 100.0),
    );
    out
}

/// A label value as the exposition format needs it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_total_gives_ratio_bytes_and_cdi_percent() {
        let text = render(Role::Import, Some("uid-1"), 25, Some(100));
        assert!(text.contains("diskplane_progress_ratio{ownerUID=\"uid-1\"} 0.250000\n"), "{text}");
        assert!(text.contains("diskplane_bytes_written_total{ownerUID=\"uid-1\"} 25\n"), "{text}");
        assert!(text.contains("diskplane_bytes_total{ownerUID=\"uid-1\"} 100\n"), "{text}");
        assert!(text.contains("kubevirt_cdi_import_progress_total{ownerUID=\"uid-1\"} 25.00\n"), "{text}");
    }

    #[test]
    fn unknown_total_gives_ratio_zero_and_no_total() {
        let text = render(Role::Clone, None, 7, None);
        assert!(text.contains("diskplane_progress_ratio 0.000000\n"), "{text}");
        assert!(!text.contains("diskplane_bytes_total"), "{text}");
        assert!(text.contains("kubevirt_cdi_clone_progress_total 0.00\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_endpoint_answers_get_metrics_and_404_elsewhere() {
        let reading: Reading = Arc::new(|| (1, Some(2)));
        let addr = serve("127.0.0.1:0".parse().expect("addr"), Role::Upload, None, reading).expect("serving");
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).expect("connecting");
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("sending");
            let mut text = String::new();
            s.read_to_string(&mut text).expect("reading");
            text
        };
        let ok = get("/metrics");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("diskplane_progress_ratio 0.500000"), "{ok}");
        assert!(get("/other").starts_with("HTTP/1.1 404"));
    }
}
