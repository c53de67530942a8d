//! Probing any bytes returns a format and never panics; the format's name is never empty.
#![no_main]

use disk_formats::probe::probe;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let format = probe(data);
    assert!(!format.name().is_empty());
    // Only compression wrappers are compression; nothing is both raw and compressed.
    assert!(!(format.is_compression() && format.is_raw()));
});
