//! `open_as(Format::Vhdx)` on any bytes (the magic need not match: the parser itself is fuzzed)
//! and, when it opens, a bounded walk of the extent map with small reads: errors are fine,
//! panics, contract breaks and unbounded allocation are not. See `diskplane_fuzz::walk`.
#![no_main]

use std::sync::Arc;

use disk_formats::{Format, OpenOptions, ReadAt, open_as};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source: Arc<dyn ReadAt> = Arc::new(data.to_vec());
    if let Ok(image) = open_as(source, Format::Vhdx, &OpenOptions::default()) {
        let _ = image.info();
        diskplane_fuzz::walk(&*image);
    }
});
