//! # importer
//!
//! Bytes from the world onto volumes: HTTP(S) (streaming, Range-based random access, resume) and
//! OCI registry containerDisks (`docker://`). Not built yet: see the importer issue.
