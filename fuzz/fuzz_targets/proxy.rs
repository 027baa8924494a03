//! Drives the sans-IO proxy core with a program of hostile SIP steps and
//! virtual time (`fuzz/src/proxy.rs` says how input becomes steps).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sipblade_fuzz::proxy(data));
