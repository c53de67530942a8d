//! The result contract of the worker roles: one JSON object written on exit to the container's
//! termination message file, which the kube driver reads from the Pod status.
//!
//! ```text
//! {"result":"Succeeded","virtualSize":N,"allocatedBytes":N,"sha256":"…"}        sha256 when known
//! {"result":"Failed","reason":"ChecksumError","message":"…","retryable":false}
//! ```
//!
//! `reason` and `retryable` come from the same classification the embedded driver uses
//! ([`controller::local::worker::classify`]): transient = network, 5xx, local I/O; terminal =
//! checksum, too large, hostile or unsupported image, HTTP 4xx, unusable arguments.
//!
//! ## Caveats
//! Kubernetes keeps at most 4096 bytes of a termination message: the message is cut to
//! [`MAX_MESSAGE_BYTES`] so the whole object always fits.

use std::path::{Path, PathBuf};

use controller::api::datavolume::reason;
use controller::local::worker::classify;
use controller::plan::WorkerFailure;
use disk_formats::ErrorKind;

use crate::exit;

/// Where Kubernetes looks for the termination message by default.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";

/// Longest message kept: the JSON around it and a reason stay well under Kubernetes' 4096.
pub const MAX_MESSAGE_BYTES: usize = 3584;

/// What a successful transfer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The disk's size as a VM sees it (file length or device size); for an archive, the
    /// bytes of file content extracted.
    pub virtual_size: u64,
    /// Bytes allocated on the volume (data written; a file's allocated blocks).
    pub allocated_bytes: u64,
    /// sha256 of the whole disk, when the transfer computed it.
    pub sha256: Option<String>,
}

/// Which default reason a failure without a more specific one gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Registry pulls: CDI's `ImagePullFailed`.
    Registry,
    /// Everything else: `Error`.
    Other,
}

/// Classifies a failed role's error: CDI-like reason, one-line message, whether a retry may help.
pub fn failure(err: &anyhow::Error, origin: Origin) -> WorkerFailure {
    let default_reason = match origin {
        Origin::Registry => reason::IMAGE_PULL_FAILED,
        Origin::Other => reason::ERROR,
    };
    let (kind, retryable) = kind_and_retry(err);
    let mut failure = classify(kind, retryable, default_reason, exit::one_line(err));
    failure.message = truncate(&failure.message, MAX_MESSAGE_BYTES);
    failure
}

/// The error's kind and whether a later attempt may help, from the first library error in the
/// chain. An error of ours alone (bad arguments, unreadable secret) is terminal: a restarted
/// Pod would get the same arguments.
fn kind_and_retry(err: &anyhow::Error) -> (ErrorKind, bool) {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<importer::Error>() {
            return (e.kind(), e.is_retryable());
        }
        if let Some(e) = cause.downcast_ref::<cloner::Error>() {
            let retryable = matches!(
                e,
                cloner::Error::Network { .. } | cloner::Error::Io { .. } | cloner::Error::TargetFailed { .. }
            );
            return (e.kind(), retryable);
        }
    }
    match exit::kind(err) {
        // Local I/O (the volume, scratch space) may well work on the next attempt.
        Some(ErrorKind::Io) => (ErrorKind::Io, true),
        Some(kind) => (kind, false),
        None => (ErrorKind::Io, false),
    }
}

/// The termination message for a result.
pub fn message(result: &Result<Outcome, WorkerFailure>) -> String {
    let value = match result {
        Ok(outcome) => {
            let mut v = serde_json::json!({
                "result": "Succeeded",
                "virtualSize": outcome.virtual_size,
                "allocatedBytes": outcome.allocated_bytes,
            });
            if let Some(sha) = &outcome.sha256 {
                v["sha256"] = serde_json::Value::from(sha.as_str());
            }
            v
        }
        Err(f) => serde_json::json!({
            "result": "Failed",
            "reason": f.reason,
            "message": truncate(&f.message, MAX_MESSAGE_BYTES),
            "retryable": f.retryable,
        }),
    };
    value.to_string()
}

/// Where to write the message: a path given explicitly when its directory exists; the default
/// only when the file exists (Kubernetes creates it in a container; elsewhere we never create
/// files under /dev).
pub fn destination(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(path) => {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            dir.is_dir().then(|| path.to_path_buf())
        }
        None => {
            let path = Path::new(DEFAULT_TERMINATION_LOG);
            path.exists().then(|| path.to_path_buf())
        }
    }
}

/// Writes the message; a failure to write is reported on stderr and otherwise ignored (the
/// exit code still tells success from failure).
pub fn write(explicit: Option<&Path>, result: &Result<Outcome, WorkerFailure>) {
    let Some(path) = destination(explicit) else { return };
    if let Err(e) = std::fs::write(&path, message(result)) {
        eprintln!("diskplane: writing the termination message to {}: {e}", path.display());
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_names_sizes_and_omits_an_unknown_sha256() {
        let ok = Ok(Outcome { virtual_size: 10, allocated_bytes: 4, sha256: None });
        assert_eq!(message(&ok), r#"{"allocatedBytes":4,"result":"Succeeded","virtualSize":10}"#);
    }

    #[test]
    fn an_http_404_is_terminal_and_a_503_is_retryable() {
        let status = |code| {
            anyhow::Error::new(importer::Error::Status {
                url: "http://h/x".into(),
                status: reqwest::StatusCode::from_u16(code).unwrap_or_default(),
            })
            .context("importing")
        };
        let f = failure(&status(404), Origin::Other);
        assert_eq!((f.reason.as_str(), f.retryable), ("Error", false));
        assert_eq!(f.message, "importing: HTTP 404 Not Found for http://h/x");
        assert!(failure(&status(503), Origin::Other).retryable);
    }

    #[test]
    fn too_large_and_checksum_are_terminal_with_cdis_wording() {
        let big = anyhow::Error::new(importer::Error::TooLarge("virtual size 2 exceeds 1".into()));
        let f = failure(&big, Origin::Registry);
        assert!(!f.retryable);
        assert!(f.message.starts_with("DataVolume too small to contain image"), "{}", f.message);
        let sum = anyhow::Error::new(importer::Error::Checksum { expected: "a".into(), actual: "b".into() });
        assert_eq!(failure(&sum, Origin::Other).reason, "ChecksumError");
    }

    #[test]
    fn a_registry_failure_defaults_to_image_pull_failed() {
        let e = anyhow::Error::new(importer::Error::Registry {
            message: "manifest unknown".into(),
            kind: ErrorKind::Io,
            retryable: false,
            source: None,
        });
        assert_eq!(failure(&e, Origin::Registry).reason, "ImagePullFailed");
    }

    #[test]
    fn argument_errors_of_our_own_are_terminal() {
        let f = failure(&anyhow::anyhow!("give --size"), Origin::Other);
        assert!(!f.retryable);
    }

    #[test]
    fn long_messages_are_cut_so_the_object_fits_in_4096_bytes() {
        let long = "é".repeat(5000);
        let f = WorkerFailure { reason: "Error".into(), message: long, retryable: true };
        let text = message(&Err(f));
        assert!(text.len() < 4096, "{}", text.len());
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert!(v["message"].as_str().is_some_and(|m| m.ends_with('…')));
    }

    #[test]
    fn the_default_path_is_written_only_when_it_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let given = dir.path().join("termination-log");
        assert_eq!(destination(Some(&given)), Some(given.clone()));
        assert_eq!(destination(Some(&dir.path().join("missing/termination-log"))), None);
    }
}
