//! # cloner
//!
//! Volume to volume: reflink, sparse copy, host-assisted stream. Not built yet: see the cloner
//! issue.
