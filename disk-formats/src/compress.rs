//! Transparent decompression of gzip (multi-member), xz (multi-stream) and zstd (multi-frame)
//! wrappers, recognised by magic bytes. (Being written: see the helper's brief.)
