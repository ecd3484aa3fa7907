#![no_main]
//! See `drover_wire::fuzzing::lines`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| drover_wire::fuzzing::lines(data));
