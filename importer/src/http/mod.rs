//! HTTP(S) sources: the client and its options ([`HttpOptions`]), the resumable sequential
//! body ([`stream`]), and random access through Range requests ([`range`]).
//!
//! Every request carries the user's extra headers and basic-auth credentials; redirects are
//! followed (at most [`MAX_REDIRECTS`]); proxies come from the environment (`http_proxy`,
//! `https_proxy`, `no_proxy`), as reqwest does by default. Bodies are asked for with
//! `Accept-Encoding: identity` implicitly (no decompression feature is built into the client),
//! so checksums see the bytes as stored.

pub(crate) mod range;
pub(crate) mod stream;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Response, StatusCode, Url};

use crate::error::{Error, Result, status_is_retryable};
use crate::retry::RetryPolicy;

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 10;

/// The `User-Agent` we send.
const USER_AGENT: &str = concat!("diskplane-importer/", env!("CARGO_PKG_VERSION"));

/// How to reach an HTTP(S) source.
#[derive(Clone)]
pub struct HttpOptions {
    /// PEM CA bundle, or a directory of PEM files, trusted in addition to the system roots.
    pub ca_certs: Option<PathBuf>,
    /// Skip TLS certificate verification entirely.
    pub insecure: bool,
    /// Basic-auth user name.
    pub username: Option<String>,
    /// Basic-auth password.
    pub password: Option<String>,
    /// Extra request headers, sent on every request (values are redacted in `Debug`).
    pub headers: Vec<(String, String)>,
    /// Retrying dropped connections and 5xx answers.
    pub retry: RetryPolicy,
    /// Limit for establishing a connection (TCP + TLS).
    pub connect_timeout: Duration,
    /// A read that yields no byte for this long fails (and is retried like a dropped
    /// connection). CDI waits 10 minutes; we resume instead of waiting that long.
    pub idle_timeout: Duration,
    /// Random-access tuning for qcow2 sources read by Range requests.
    pub range: RangeOptions,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            ca_certs: None,
            insecure: false,
            username: None,
            password: None,
            headers: Vec::new(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            range: RangeOptions::default(),
        }
    }
}

impl fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<String> =
            self.headers.iter().map(|(name, _)| format!("{name}: <redacted>")).collect();
        f.debug_struct("HttpOptions")
            .field("ca_certs", &self.ca_certs)
            .field("insecure", &self.insecure)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("headers", &headers)
            .field("retry", &self.retry)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("range", &self.range)
            .finish()
    }
}

/// Block cache and readahead for random access over HTTP.
///
/// Memory used is at most `block_size × cache_blocks`; `readahead_blocks` range requests run
/// in parallel ahead of a sequential reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeOptions {
    /// Bytes fetched per Range request and cached per block.
    pub block_size: u64,
    /// Blocks kept (least recently used are dropped first).
    pub cache_blocks: usize,
    /// Blocks fetched ahead once reads look sequential.
    pub readahead_blocks: usize,
}

impl Default for RangeOptions {
    /// 4 MiB × 8 blocks (32 MiB at most), 3 blocks ahead: with the converter's 24 MiB of
    /// window buffers this keeps a Range import under 64 MiB of resident memory.
    fn default() -> Self {
        Self { block_size: 4 << 20, cache_blocks: 5, readahead_blocks: 3 }
    }
}

/// A configured client for one source URL.
#[derive(Debug)]
pub(crate) struct Http {
    client: reqwest::Client,
    url: Url,
    auth: Option<(String, String)>,
    retry: RetryPolicy,
    range: RangeOptions,
}

impl Http {
    /// Builds the client: TLS trust, redirects, timeouts, default headers.
    pub(crate) fn new(url: Url, opts: &HttpOptions) -> Result<Self> {
        crate::tls::install_crypto_provider();
        let mut headers = HeaderMap::new();
        for (name, value) in &opts.headers {
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| Error::config_with(format!("invalid header name {name:?}"), e))?;
            let mut value = HeaderValue::from_str(value.trim())
                .map_err(|e| Error::config_with(format!("invalid value for header {name}"), e))?;
            value.set_sensitive(true);
            headers.append(name, value);
        }
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.idle_timeout)
            .tls_version_min(reqwest::tls::Version::TLS_1_2);
        if let Some(path) = &opts.ca_certs {
            builder = builder.tls_certs_merge(crate::tls::load_certificates(path)?);
        }
        if opts.insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let client = builder.build().map_err(|e| Error::config_with("building the HTTP client", e))?;
        let auth = match (&opts.username, &opts.password) {
            (Some(user), password) => Some((user.clone(), password.clone().unwrap_or_default())),
            (None, Some(_)) => return Err(Error::config("a password was given without a user name")),
            (None, None) => None,
        };
        if opts.range.block_size == 0 || opts.range.cache_blocks < 2 {
            return Err(Error::config(
                "range block size must be positive and the cache hold at least 2 blocks",
            ));
        }
        Ok(Self { client, url, auth, retry: opts.retry.clone(), range: opts.range })
    }

    pub(crate) fn url(&self) -> &Url {
        &self.url
    }

    pub(crate) fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    pub(crate) fn range_options(&self) -> RangeOptions {
        self.range
    }

    /// Sends `GET url` for bytes `[start, end]` (`end` inclusive, `None` = to the end).
    /// Returns the response when its status is 200 or 206; maps everything else to [`Error`].
    pub(crate) async fn get(&self, url: &Url, start: u64, end: Option<u64>) -> Result<Response> {
        let range = match end {
            Some(end) => format!("bytes={start}-{end}"),
            None => format!("bytes={start}-"),
        };
        let mut request = self.client.get(url.clone()).header(header::RANGE, range);
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| network_error("requesting", url, e))?;
        match response.status() {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => Ok(response),
            status => Err(Error::Status { url: url.to_string(), status }),
        }
    }
}

/// Classifies a client error: TLS trust failures, redirect loops and bad requests are
/// permanent; connection and body failures and timeouts are retried.
pub(crate) fn network_error(what: &str, url: &Url, err: reqwest::Error) -> Error {
    let retryable = !(err.is_builder() || err.is_redirect() || is_tls_error(&err))
        && err.status().is_none_or(status_is_retryable);
    let what =
        if is_tls_error(&err) { format!("TLS handshake failed while {what}") } else { what.to_owned() };
    Error::Network { what, url: url.to_string(), retryable, source: Some(Box::new(err.without_url())) }
}

/// Whether a rustls error (untrusted certificate, bad name, protocol) is in the chain.
/// `io::Error` hides the error it wraps from `source()` (and the TLS stack nests one
/// `io::Error` in another), so look inside each one explicitly.
fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if e.is::<rustls::Error>() {
            return true;
        }
        cause = match e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// What identifies one version of the object: a resumed or ranged read must see the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Validator {
    etag: Option<HeaderValue>,
    last_modified: Option<HeaderValue>,
    total: Option<u64>,
}

impl Validator {
    pub(crate) fn of(response: &Response, total: Option<u64>) -> Self {
        let headers = response.headers();
        Self {
            etag: headers.get(header::ETAG).cloned(),
            last_modified: headers.get(header::LAST_MODIFIED).cloned(),
            total,
        }
    }

    /// Checks that `response` (whose object size is `total`) shows the same version.
    pub(crate) fn check(&self, url: &Url, response: &Response, total: Option<u64>) -> Result<()> {
        let headers = response.headers();
        let changed = |what: String| Err(Error::Changed { url: url.to_string(), what });
        if let (Some(old), Some(new)) = (&self.etag, headers.get(header::ETAG))
            && old != new
        {
            return changed(format!("ETag was {old:?}, now {new:?}"));
        }
        if let (Some(old), Some(new)) = (&self.last_modified, headers.get(header::LAST_MODIFIED))
            && old != new
        {
            return changed(format!("Last-Modified was {old:?}, now {new:?}"));
        }
        if let (Some(old), Some(new)) = (self.total, total)
            && old != new
        {
            return changed(format!("size was {old} bytes, now {new}"));
        }
        Ok(())
    }
}

/// A parsed `Content-Range: bytes START-END/TOTAL` (`TOTAL` may be `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ContentRange {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) total: Option<u64>,
}

impl ContentRange {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let rest = text.trim().strip_prefix("bytes")?.trim_start();
        let (span, total) = rest.split_once('/')?;
        let (start, end) = span.trim().split_once('-')?;
        let start: u64 = start.trim().parse().ok()?;
        let end: u64 = end.trim().parse().ok()?;
        let total = match total.trim() {
            "*" => None,
            t => Some(t.parse().ok()?),
        };
        if end < start || total.is_some_and(|t| end >= t) {
            return None;
        }
        Some(Self { start, end, total })
    }

    pub(crate) fn of(url: &Url, response: &Response) -> Result<Self> {
        let value = response.headers().get(header::CONTENT_RANGE).ok_or_else(|| Error::Protocol {
            url: url.to_string(),
            message: "206 Partial Content without a Content-Range header".into(),
        })?;
        value.to_str().ok().and_then(Self::parse).ok_or_else(|| Error::Protocol {
            url: url.to_string(),
            message: format!("malformed Content-Range {value:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_forms() {
        assert_eq!(
            ContentRange::parse("bytes 0-99/1000"),
            Some(ContentRange { start: 0, end: 99, total: Some(1000) })
        );
        assert_eq!(ContentRange::parse("bytes 5-9/*"), Some(ContentRange { start: 5, end: 9, total: None }));
        assert_eq!(ContentRange::parse("bytes 9-5/100"), None);
        assert_eq!(ContentRange::parse("bytes 0-100/100"), None);
        assert_eq!(ContentRange::parse("bytes */100"), None);
        assert_eq!(ContentRange::parse("items 0-1/2"), None);
    }

    #[test]
    fn debug_redacts_password_and_header_values() {
        let opts = HttpOptions {
            password: Some("hunter2".into()),
            headers: vec![("X-Token".into(), "s3cret".into())],
            ..HttpOptions::default()
        };
        let text = format!("{opts:?}");
        assert!(!text.contains("hunter2") && !text.contains("s3cret"), "{text}");
        assert!(text.contains("X-Token"), "{text}");
    }
}
