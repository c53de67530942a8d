//! # uploader
//!
//! Bytes pushed to us: the CDI-compatible upload server and the upload client used by the CLI.
//! Not built yet: see the uploader issue.
