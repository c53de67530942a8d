//! # storage (being written)
