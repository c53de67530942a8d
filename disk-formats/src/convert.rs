//! Conversion (being written).
