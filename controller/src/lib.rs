//! # controller
//!
//! The declarative API: CDI-compatible types, validation, the reconciler (pure `plan`,
//! effectful `apply`) and its drivers. Not built yet: see the embedded-mode issue.
