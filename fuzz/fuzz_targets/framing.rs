//! Frames arbitrary bytes as a TCP stream and parses each complete frame.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sipblade_fuzz::framing(data));
