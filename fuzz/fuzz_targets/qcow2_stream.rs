//! Differential: any bytes streamed as a qcow2 upload (router + residual conversion) against
//! the qcow2 engine converting the whole file. See `diskplane_fuzz::stream_like_the_engine`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    diskplane_fuzz::stream_like_the_engine(data);
});
