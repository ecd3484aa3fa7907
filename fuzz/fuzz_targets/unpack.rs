#![no_main]
//! See `drover_store::fuzzing::unpack`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| drover_store::fuzzing::unpack(data));
