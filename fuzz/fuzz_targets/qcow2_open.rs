//! `open_image` on any bytes (seeded with tiny qcow2 images) and, when it opens, a bounded walk
//! of the extent map with small reads: errors are fine, panics, contract breaks and unbounded
//! allocation are not. See `diskplane_fuzz::open_and_walk`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    diskplane_fuzz::open_and_walk(data);
});
