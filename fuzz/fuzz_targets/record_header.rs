//! libFuzzer target `record_header` (see `rekord_fuzz` and `fuzz/run.sh`).
#![no_main]

libfuzzer_sys::fuzz_target!(init: (), |data: &[u8]| rekord_fuzz::record_header(data));
