//! Parses arbitrary bytes as a lone URI and reads every view of it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sipblade_fuzz::uri(data));
