//! A running worker's progress, from its Prometheus endpoint (`GET /metrics` on the Pod's
//! port 8080 (`names::METRICS_PORT`), plain HTTP; `diskplane_progress_ratio` 0..1).

use std::future::Future;
use std::pin::Pin;

use super::observe;

/// Reads a running worker's progress (percent) from its metrics endpoint.
pub trait ProgressReader: Send + Sync {
    /// Progress of the worker Pod at `pod_ip`, `None` when unknown or unreachable.
    fn read<'a>(&'a self, pod_ip: &'a str) -> Pin<Box<dyn Future<Output = Option<f64>> + Send + 'a>>;
}

/// Plain-HTTP `GET /metrics` on the worker's port, `diskplane_progress_ratio` as percent.
#[derive(Debug, Clone, Copy)]
pub struct HttpMetrics {
    pub port: u16,
}

impl ProgressReader for HttpMetrics {
    fn read<'a>(&'a self, pod_ip: &'a str) -> Pin<Box<dyn Future<Output = Option<f64>> + Send + 'a>> {
        Box::pin(async move {
            let text = tokio::time::timeout(observe::METRICS_TIMEOUT, fetch_metrics(pod_ip, self.port))
                .await
                .ok()?
                .ok()?;
            observe::parse_progress(&text)
        })
    }
}

/// Longest metrics answer read.
const MAX_METRICS_BYTES: u64 = 64 * 1024;

async fn fetch_metrics(host: &str, port: u16) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let mut stream = tokio::net::TcpStream::connect(&authority).await?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    stream.take(MAX_METRICS_BYTES).read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        return Err(std::io::Error::other(format!("metrics answered {:?}", head.lines().next())));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server on 127.0.0.1 answering `answer`; returns its port.
    async fn serve_once(answer: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).await.unwrap();
            assert!(request[..n].starts_with(b"GET /metrics HTTP/1.0\r\n"));
            stream.write_all(answer.as_bytes()).await.unwrap();
        });
        port
    }

    #[tokio::test]
    async fn the_ratio_is_read_from_a_real_metrics_endpoint() {
        let port = serve_once(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n# TYPE diskplane_progress_ratio gauge\n\
             diskplane_progress_ratio{ownerUID=\"u\"} 0.250000\n",
        )
        .await;
        assert_eq!(HttpMetrics { port }.read("127.0.0.1").await, Some(25.0));
    }

    #[tokio::test]
    async fn an_error_status_or_a_closed_port_means_unknown_progress() {
        let port = serve_once("HTTP/1.0 404 Not Found\r\n\r\ndiskplane_progress_ratio 0.5\n").await;
        assert_eq!(HttpMetrics { port }.read("127.0.0.1").await, None);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert_eq!(HttpMetrics { port: closed }.read("127.0.0.1").await, None);
    }
}
