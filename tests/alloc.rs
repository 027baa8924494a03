//! Parsing makes no heap allocation: the bench inputs are parsed and their
//! typed views read under a counting global allocator.
//!
//! The counters are process-wide, so this binary holds a single test (the
//! harness runs tests on parallel threads) and nothing in the measured
//! regions prints.

use std::alloc::System;
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use sipblade::sip::{Forward, Message};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The inputs of `benches/parse.rs`.
const INPUTS: [(&str, &[u8]); 3] = [
    ("INVITE", include_bytes!("../benches/data/invite.sip")),
    ("REGISTER", include_bytes!("../benches/data/register.sip")),
    ("200 OK", include_bytes!("../benches/data/ok200.sip")),
];

/// Parses `raw` and reads every typed view a proxy uses; returns a digest
/// of what it read so none of it is optimised away.
fn parse_and_read(raw: &Bytes) -> usize {
    let msg = Message::parse(black_box(raw.clone())).expect("input parses");
    let via = msg.top_via();
    let from = msg.from();
    let to = msg.to();
    let mut n = via.branch().map_or(0, str::len)
        + via.host().len()
        + usize::from(via.port().unwrap_or(0))
        + from.tag().map_or(0, str::len)
        + from.uri().host().len()
        + to.uri().user().map_or(0, <[u8]>::len)
        + to.tag().map_or(0, str::len)
        + msg.call_id().len()
        + msg.cseq().seq as usize
        + usize::from(msg.max_forwards().unwrap_or(0));
    for contact in msg.contacts() {
        n += contact.uri().host().len() + contact.expires().unwrap_or(0) as usize;
    }
    black_box(n)
}

/// Allocations counted while `f` runs `rounds` times: the fewest of three
/// tries. The counters are process-wide, and the harness's main thread
/// may allocate now and then while the test runs (seen once on a loaded
/// machine: 4 in 100 rounds); an `f` that allocated would count at least
/// `rounds` in every try.
fn allocations(rounds: usize, mut f: impl FnMut()) -> usize {
    (0..3)
        .map(|_| {
            let region = Region::new(GLOBAL);
            for _ in 0..rounds {
                f();
            }
            let change = region.change();
            change.allocations + change.reallocations
        })
        .min()
        .unwrap_or(0)
}

#[test]
fn parsing_and_typed_views_do_not_allocate() {
    // The counter is live: a boxed value counts.
    assert!(allocations(1, || drop(black_box(Box::new(7u64)))) >= 1);

    for (name, data) in INPUTS {
        let raw = Bytes::from_static(data);
        assert!(parse_and_read(&raw) > 0, "{name}: views read");
        let n = allocations(100, || {
            parse_and_read(&raw);
        });
        assert_eq!(n, 0, "{name}: parse + typed views allocated {n} times");
    }

    // Emitting into a buffer that already has room allocates nothing either.
    let edit = Forward {
        via: Some("SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKsb7f3a9c21d04e55"),
        record_route: Some("<sip:198.51.100.1;lr>"),
        request_uri: Some("sip:1002@198.51.100.20:5060"),
        pop_routes: 1,
        consume_credentials_of: None,
    };
    let mut out = BytesMut::with_capacity(4096);
    for (name, data) in INPUTS {
        let msg = Message::parse(Bytes::from_static(data)).expect("input parses");
        let n = allocations(100, || {
            out.clear();
            if msg.is_request() {
                msg.forward(&edit, &mut out).expect("forwards");
            } else {
                msg.strip_top_via(&mut out);
            }
            black_box(out.len());
        });
        assert_eq!(n, 0, "{name}: forward edit allocated {n} times");
    }
}
