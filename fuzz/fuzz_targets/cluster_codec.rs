//! Decodes arbitrary bytes as one inter-blade frame
//! (`sipblade::cluster::codec`). Decoding must never panic; whatever
//! decodes must re-encode to the very same bytes (one encoding per
//! message) and decode again to an equal message. The stream splitter
//! must not panic either.
#![no_main]

use bytes::BytesMut;
use sipblade::cluster::codec::{Message, split_frame};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = split_frame(data);
    if let Ok(msg) = Message::decode(data) {
        let mut out = BytesMut::new();
        msg.encode(&mut out);
        assert_eq!(&out[..], data, "re-encoding differs from the input");
        assert_eq!(Message::decode(&out), Ok(msg), "re-decoding differs");
    }
});
