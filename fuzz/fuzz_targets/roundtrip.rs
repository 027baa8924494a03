//! Forwards, answers and Via-strips parsed messages: the output must parse
//! again with exactly the promised edits.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sipblade_fuzz::roundtrip(data));
