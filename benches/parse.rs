//! Parser benchmarks: sipblade against rsip (and httparse as the floor) on
//! realistic messages. Inputs live in `benches/data/` and are shared with
//! `tests/alloc.rs`.
//!
//! Run with `cargo bench --bench parse`; BENCHMARKS.md records results.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput};
use sipblade::sip::{Forward, Message};

/// A 636-byte INVITE with an SDP offer.
const INVITE: &[u8] = include_bytes!("data/invite.sip");
/// A 470-byte REGISTER with a Digest Authorization.
const REGISTER: &[u8] = include_bytes!("data/register.sip");
/// A 563-byte 200 OK to the INVITE with an SDP answer.
const OK200: &[u8] = include_bytes!("data/ok200.sip");
/// A 628-byte HTTP/1.1 request with as many header lines as the INVITE.
const HTTP_REQUEST: &[u8] = include_bytes!("data/http-request.txt");

/// The edits an edge proxy makes to a request it relays.
const FORWARD: Forward<'static> = Forward {
    via: Some("SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bKsb7f3a9c21d04e55"),
    record_route: Some("<sip:198.51.100.1;lr>"),
    request_uri: Some("sip:1002@198.51.100.20:5060"),
    pop_routes: 1,
    consume_credentials_of: None,
};

/// Parses and touches typed fields so the work cannot be optimised away.
#[inline(always)]
fn sipblade_parse(raw: &Bytes) -> usize {
    let msg = Message::parse(black_box(raw.clone())).expect("parses");
    let branch = msg.top_via().branch().map_or(0, str::len);
    black_box(branch + msg.cseq().seq as usize + msg.header_count())
}

/// Parses, then emits the relayed message into a reused buffer: the
/// forward edit for requests, the top-Via strip for responses.
#[inline(always)]
fn sipblade_parse_forward(raw: &Bytes, out: &mut BytesMut) -> usize {
    let msg = Message::parse(black_box(raw.clone())).expect("parses");
    out.clear();
    if msg.is_request() {
        msg.forward(black_box(&FORWARD), out).expect("forwards");
    } else {
        msg.strip_top_via(out);
    }
    black_box(msg.top_via().branch().map_or(0, str::len) + out.len())
}

/// rsip's untyped parse (headers kept as strings), dropped in the loop
/// like sipblade's message.
fn rsip_parse(raw: &Bytes) -> rsip::SipMessage {
    black_box(rsip::SipMessage::try_from(black_box(raw.clone())).expect("rsip parses"))
}

fn group(c: &mut Criterion, name: &str, data: &'static [u8], http: Option<&'static [u8]>) {
    let raw = Bytes::from_static(data);
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("sipblade/parse", |b| b.iter(|| sipblade_parse(&raw)));
    let mut out = BytesMut::with_capacity(2048);
    g.bench_function("sipblade/parse+forward", |b| {
        b.iter(|| sipblade_parse_forward(&raw, &mut out))
    });
    g.bench_function("rsip/parse", |b| b.iter(|| rsip_parse(&raw)));
    if let Some(http) = http {
        // Same group, so throughput must be the HTTP request's own size.
        g.throughput(Throughput::Bytes(http.len() as u64));
        g.bench_function("httparse/parse", |b| {
            b.iter(|| {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut req = httparse::Request::new(&mut headers);
                let status = req.parse(black_box(http)).expect("httparse parses");
                black_box((status.unwrap(), req.headers.len()))
            })
        });
    }
    g.finish();
}

fn sanity() {
    // Fail fast if an input stops parsing, before timing anything.
    for data in [INVITE, REGISTER, OK200] {
        Message::parse(Bytes::from_static(data)).expect("sipblade parses input");
        rsip::SipMessage::try_from(data).expect("rsip parses input");
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let status = httparse::Request::new(&mut headers)
        .parse(HTTP_REQUEST)
        .expect("httparse parses input");
    assert!(status.is_complete());
}

fn benches(c: &mut Criterion) {
    sanity();
    group(c, "invite", INVITE, Some(HTTP_REQUEST));
    group(c, "register", REGISTER, None);
    group(c, "ok200", OK200, None);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

// What `criterion_group!`/`criterion_main!` expand to, without the
// undocumented `pub fn` the group macro would add.
fn main() {
    let mut c = config().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
