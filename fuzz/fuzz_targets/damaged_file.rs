//! libFuzzer target `damaged_file` (see `rekord_fuzz` and `fuzz/run.sh`).
#![no_main]

libfuzzer_sys::fuzz_target!(init: rekord_fuzz::watch_panics(), |data: &[u8]| rekord_fuzz::damaged_file(data));
