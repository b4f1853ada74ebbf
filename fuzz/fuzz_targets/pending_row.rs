//! libFuzzer target `pending_row` (see `rekord_fuzz` and `fuzz/run.sh`).
#![no_main]

libfuzzer_sys::fuzz_target!(init: (), |data: &[u8]| rekord::fuzz::pending_row(data));
