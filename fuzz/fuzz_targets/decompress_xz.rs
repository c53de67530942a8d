//! The xz decoder over any bytes: an error or up to the output cap, never a panic, a hang or
//! an allocation that grows with what the stream claims.
#![no_main]

use disk_formats::Format;
use diskplane_fuzz::decompress_capped;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decompress_capped(Format::Xz, data);
});
