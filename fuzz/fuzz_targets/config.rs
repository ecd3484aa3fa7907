#![no_main]
//! See `drover_config::fuzzing::config`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| drover_config::fuzzing::config(data));
