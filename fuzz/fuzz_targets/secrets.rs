#![no_main]
//! See `drover_config::fuzzing::secrets`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| drover_config::fuzzing::secrets(data));
