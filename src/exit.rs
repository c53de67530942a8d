//! The one place where errors become exit codes and a one-line message.
//!
//! | code | meaning |
//! | --- | --- |
//! | 1 | I/O or other failure |
//! | 2 | usage error (clap) |
//! | 3 | invalid, truncated or hostile image |
//! | 4 | unsupported format or feature |
//! | 5 | denied by policy (backing file, external data file) |
//! | 6 | checksum or digest mismatch |
//! | 7 | too large (limit or target capacity) |

use std::process::ExitCode;

use disk_formats::ErrorKind;

/// The kind of the first library error in the chain, if any.
pub fn kind(err: &anyhow::Error) -> Option<ErrorKind> {
    err.chain().find_map(|e| {
        if let Some(e) = e.downcast_ref::<disk_formats::Error>() {
            return Some(e.kind());
        }
        if let Some(e) = e.downcast_ref::<cloner::Error>() {
            return Some(e.kind());
        }
        if let Some(e) = e.downcast_ref::<uploader::Error>() {
            return Some(e.kind());
        }
        if let Some(e) = e.downcast_ref::<importer::Error>() {
            return Some(e.kind());
        }
        if let Some(e) = e.downcast_ref::<launcher::Error>() {
            return Some(e.kind());
        }
        e.downcast_ref::<storage::Error>().map(storage::Error::kind)
    })
}

/// The exit code for `err`.
pub fn code(err: &anyhow::Error) -> ExitCode {
    let code = match kind(err) {
        Some(ErrorKind::InvalidImage) => 3,
        Some(ErrorKind::Unsupported) => 4,
        Some(ErrorKind::Denied) => 5,
        Some(ErrorKind::Checksum) => 6,
        Some(ErrorKind::TooLarge) => 7,
        _ => 1,
    };
    ExitCode::from(code)
}

/// The whole error chain on one line: `context: cause: cause`.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string().replace('\n', " ");
        if !parts.last().is_some_and(|last| last.ends_with(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}
