//! Parses arbitrary bytes as one SIP message and reads every typed view.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sipblade_fuzz::parse_message(data));
