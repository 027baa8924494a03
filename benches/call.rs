//! The whole in-process work of one call on one core: every message of
//! INVITE → 100/180/200 → ACK → BYE → 200 parsed, matched to its
//! transaction, routed, edited and emitted by the proxy, with timers run as
//! virtual time advances 1 ms per call. No sockets.
//!
//! The simulated endpoints also build and parse their messages inside the
//! loop; `endpoints-only` measures that share alone, so the proxy's cost
//! per call is `proxy+endpoints` minus `endpoints-only` (BENCHMARKS.md).
//!
//! Run with `cargo bench --bench call`.

use std::fmt::Write;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput};
use sipblade::config::{Agent, AgentKind, Credential};
use sipblade::proxy::{AgentTable, Output, Proxy, Settings};
use sipblade::registrar::digest::NonceManager;
use sipblade::registrar::{Registrar, Settings as RegistrarSettings};
use sipblade::sip::{Message, Peer};
use sipblade::transaction::TimerConfig;

const CALLER: &str = "127.0.0.11:5061";
const CALLEE: &str = "127.0.0.12:5062";

fn proxy() -> Proxy {
    let agents: AgentTable = ["1001", "1002"]
        .iter()
        .map(|ext| {
            let agent = Agent {
                badge: format!("A{ext}"),
                extension: ext.to_string(),
                kind: AgentKind::Agent,
                credential: Credential::Password("pw".into()),
            };
            (ext.to_string(), Arc::new(agent))
        })
        .collect();
    let settings = Settings {
        blade_id: "blade-1".into(),
        domain: "cc.example".into(),
        local: "127.0.0.1:5060".parse().unwrap(),
        auth: false,
        core: 0,
        cores: 1,
        timers: TimerConfig::default(),
        max_transactions: 1 << 20,
        cluster: None,
        via_port: None,
        core_ports: Vec::new(),
        max_call: Duration::from_secs(4 * 3600),
    };
    let registrar = Registrar::new(
        RegistrarSettings {
            domain: "cc.example".into(),
            auth: false,
            own_ip: None,
            unix_at_epoch: None,
        },
        agents.values().cloned(),
        NonceManager::from_secret([3; 32]),
    );
    let mut p = Proxy::new(settings, registrar, Arc::new(agents));
    for (ext, at) in [("1001", CALLER), ("1002", CALLEE)] {
        let reg = format!(
            "REGISTER sip:cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {at};branch=z9hG4bKreg{ext}\r\n\
             From: <sip:{ext}@cc.example>;tag=r\r\nTo: <sip:{ext}@cc.example>\r\nCall-ID: reg{ext}\r\n\
             CSeq: 1 REGISTER\r\nContact: <sip:{ext}@{at}>\r\nExpires: 86400\r\nContent-Length: 0\r\n\r\n"
        );
        let mut out = Output::default();
        p.handle_datagram(Duration::ZERO, udp(at), Bytes::from(reg), &mut out);
    }
    p
}

fn udp(s: &str) -> Peer {
    Peer::udp(s.parse::<SocketAddr>().unwrap())
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.11\r\ns=-\r\nc=IN IP4 127.0.0.11\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

/// The caller's INVITE for call `n`.
fn invite(buf: &mut String, n: u64) -> Bytes {
    buf.clear();
    let _ = write!(
        buf,
        "INVITE sip:1002@cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKi{n}\r\n\
         Max-Forwards: 70\r\nFrom: \"Agent 1001\" <sip:1001@cc.example>;tag=a{n}\r\nTo: <sip:1002@cc.example>\r\n\
         Call-ID: call{n}@127.0.0.11\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@{CALLER}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    );
    Bytes::copy_from_slice(buf.as_bytes())
}

/// An in-dialog request from the caller along the route set.
fn in_dialog(buf: &mut String, method: &str, cseq: u32, n: u64) -> Bytes {
    buf.clear();
    let _ = write!(
        buf,
        "{method} sip:1002@{CALLEE} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{method}{n}\r\n\
         Route: <sip:127.0.0.1:5060;lr;sbc=0>\r\nMax-Forwards: 70\r\n\
         From: \"Agent 1001\" <sip:1001@cc.example>;tag=a{n}\r\nTo: <sip:1002@cc.example>;tag=b{n}\r\n\
         Call-ID: call{n}@127.0.0.11\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    );
    Bytes::copy_from_slice(buf.as_bytes())
}

/// The callee's response to a request it received.
fn answer(req: &Message, status: u16, reason: &str, n: u64, out: &mut BytesMut) -> Bytes {
    out.clear();
    let tag = format!("b{n}");
    req.response(
        status,
        reason,
        Some(&tag),
        &[("Contact", "<sip:1002@127.0.0.12:5062>")],
        out,
    );
    out.split().freeze()
}

/// One call through the proxy; returns the messages the proxy emitted.
fn call(p: &mut Proxy, now: Duration, n: u64, text: &mut String, scratch: &mut BytesMut) -> usize {
    let mut out = Output::default();
    let (caller, callee) = (udp(CALLER), udp(CALLEE));
    p.handle_datagram(now, caller, invite(text, n), &mut out);
    let fwd = Message::parse(out.transmits[1].data.clone()).expect("forwarded INVITE");
    p.handle_datagram(
        now,
        callee,
        answer(&fwd, 180, "Ringing", n, scratch),
        &mut out,
    );
    p.handle_datagram(now, callee, answer(&fwd, 200, "OK", n, scratch), &mut out);
    p.handle_datagram(now, caller, in_dialog(text, "ACK", 1, n), &mut out);
    p.handle_datagram(now, caller, in_dialog(text, "BYE", 2, n), &mut out);
    let bye =
        Message::parse(out.transmits.last().expect("BYE").data.clone()).expect("forwarded BYE");
    p.handle_datagram(now, callee, answer(&bye, 200, "OK", n, scratch), &mut out);
    p.handle_timeout(now, &mut out);
    out.transmits.len()
}

/// What the simulated endpoints alone do per call: build their messages
/// and parse the two requests they receive.
fn endpoints(
    fwd_invite: &Bytes,
    fwd_bye: &Bytes,
    n: u64,
    text: &mut String,
    scratch: &mut BytesMut,
) -> usize {
    let mut total = invite(text, n).len();
    let fwd = Message::parse(fwd_invite.clone()).expect("INVITE");
    total += answer(&fwd, 180, "Ringing", n, scratch).len();
    total += answer(&fwd, 200, "OK", n, scratch).len();
    total += in_dialog(text, "ACK", 1, n).len();
    total += in_dialog(text, "BYE", 2, n).len();
    let bye = Message::parse(fwd_bye.clone()).expect("BYE");
    total + answer(&bye, 200, "OK", n, scratch).len()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("call");
    group.throughput(Throughput::Elements(1));
    // Warm up past 32 s of virtual time (32k calls) so the measurement sees
    // the steady state, where lingering transactions are being reaped.
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(4))
        .sample_size(40);

    let mut p = proxy();
    let (mut text, mut scratch) = (String::with_capacity(1024), BytesMut::with_capacity(1024));
    let mut n = 0u64;
    group.bench_function("proxy+endpoints", |b| {
        b.iter(|| {
            n += 1;
            // Virtual time moves 1 ms per call, so transactions expire
            // (timers J, K, L, M) at a steady state of ~32k live calls' worth.
            let now = Duration::from_millis(n);
            black_box(call(&mut p, now, n, &mut text, &mut scratch))
        })
    });

    // Capture one forwarded INVITE and BYE for the endpoints-only loop.
    let mut q = proxy();
    let mut out = Output::default();
    q.handle_datagram(Duration::ZERO, udp(CALLER), invite(&mut text, 0), &mut out);
    let fwd_invite = out.transmits[1].data.clone();
    q.handle_datagram(
        Duration::ZERO,
        udp(CALLER),
        in_dialog(&mut text, "BYE", 2, 0),
        &mut out,
    );
    let fwd_bye = out.transmits.last().expect("BYE").data.clone();
    let mut m = 0u64;
    group.bench_function("endpoints-only", |b| {
        b.iter(|| {
            m += 1;
            black_box(endpoints(&fwd_invite, &fwd_bye, m, &mut text, &mut scratch))
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
