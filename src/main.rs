//! The diskplane binary (being written).
fn main() {}
