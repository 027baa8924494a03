//! Proxy tests in virtual time: a blade core between simulated agents.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::config::{AgentKind, Credential};
use crate::registrar::Settings as RegistrarSettings;
use crate::registrar::digest::NonceManager;

const BLADE: &str = "127.0.0.1:5060";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn udp(s: &str) -> Peer {
    Peer::udp(addr(s))
}

/// Agent extension → its terminal's address.
fn terminal(ext: &str) -> String {
    format!(
        "127.0.0.{}:{}",
        10 + ext.as_bytes()[3] - b'0',
        5000 + ext.parse::<u16>().unwrap() % 1000
    )
}

/// A proxy with these agents provisioned (badge `A<ext>`, password
/// `pw<ext>`), all on its one core.
pub(super) fn proxy_with_agents(settings: Settings, extensions: &[&str]) -> Proxy {
    let agents: AgentTable = extensions
        .iter()
        .map(|ext| {
            let agent = Agent {
                badge: format!("A{ext}"),
                extension: ext.to_string(),
                kind: AgentKind::Agent,
                credential: Credential::Password(format!("pw{ext}")),
            };
            (ext.to_string(), Arc::new(agent))
        })
        .collect();
    let registrar = Registrar::new(
        RegistrarSettings {
            domain: "cc.example".into(),
            auth: false,
            own_ip: None,
            unix_at_epoch: None,
        },
        agents.values().cloned(),
        NonceManager::from_secret([1; 32]),
    );
    Proxy::new(settings, registrar, Arc::new(agents))
}

struct Blade {
    proxy: Proxy,
    now: Duration,
    /// Everything the proxy sent, by destination.
    sent: Vec<Transmit>,
}

impl Blade {
    fn new(auth: bool, max_transactions: usize) -> Blade {
        Blade::with_via_port(auth, max_transactions, None)
    }

    /// A blade core with a UDP port of its own (one of several cores).
    fn with_via_port(auth: bool, max_transactions: usize, via_port: Option<u16>) -> Blade {
        let settings = Settings {
            blade_id: "blade-1".into(),
            domain: "cc.example".into(),
            local: addr(BLADE),
            auth,
            core: 0,
            cores: 1,
            timers: TimerConfig::default(),
            max_transactions,
            cluster: None,
            via_port,
            core_ports: Vec::new(),
            max_call: Duration::from_secs(4 * 3600),
        };
        Blade {
            proxy: proxy_with_agents(settings, &["1001", "1002", "1003"]),
            now: Duration::ZERO,
            sent: Vec::new(),
        }
    }

    /// Delivers `text` from `from`; returns what the proxy sent.
    fn send(&mut self, from: &str, text: &str) -> Vec<Transmit> {
        let mut out = Output::default();
        self.proxy
            .handle_datagram(self.now, udp(from), Bytes::from(text.to_owned()), &mut out);
        self.sent.extend(out.transmits.iter().cloned());
        out.transmits
    }

    /// Delivers `text` from `from` (a stream peer, say).
    fn send_on(&mut self, from: Peer, text: &str) -> Vec<Transmit> {
        let mut out = Output::default();
        self.proxy
            .handle_datagram(self.now, from, Bytes::from(text.to_owned()), &mut out);
        self.sent.extend(out.transmits.iter().cloned());
        out.transmits
    }

    fn advance(&mut self, by: Duration) -> Vec<Transmit> {
        let end = self.now + by;
        let mut all = Vec::new();
        while let Some(at) = self.proxy.next_deadline().filter(|&at| at <= end) {
            self.now = self.now.max(at);
            let mut out = Output::default();
            self.proxy.handle_timeout(self.now, &mut out);
            all.extend(out.transmits);
        }
        self.now = end;
        all
    }

    fn register(&mut self, ext: &str) {
        let t = terminal(ext);
        let text = format!(
            "REGISTER sip:cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bKr{ext}\r\n\
             From: <sip:{ext}@cc.example>;tag=r\r\nTo: <sip:{ext}@cc.example>\r\nCall-ID: reg{ext}\r\n\
             CSeq: 1 REGISTER\r\nContact: <sip:{ext}@{t}>\r\nContent-Length: 0\r\n\r\n"
        );
        let out = self.send(&t, &text);
        assert_eq!(status(&out[0]), 200);
    }

    fn state(&self, ext: &str) -> &'static str {
        self.proxy
            .registrar()
            .location()
            .get(ext)
            .unwrap()
            .state
            .as_str()
    }
}

fn parse(t: &Transmit) -> Message {
    Message::parse(t.data.clone()).unwrap()
}

fn status(t: &Transmit) -> u16 {
    parse(t).status().unwrap()
}

fn invite(from: &str, to: &str, call_id: &str, branch: &str, extra: &str) -> String {
    let t = terminal(from);
    format!(
        "INVITE sip:{to}@cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch={branch}\r\nMax-Forwards: 70\r\n\
         From: <sip:{from}@cc.example>;tag=f{from}\r\nTo: <sip:{to}@cc.example>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:{from}@{t}>\r\n{extra}Content-Type: application/sdp\r\n\
         Content-Length: 4\r\n\r\nv=0\n"
    )
}

/// The callee's answer to a forwarded request.
fn answer(req: &Message, status: u16, to_tag: &str) -> String {
    let mut buf = bytes::BytesMut::new();
    let tag = if status > 100 { Some(to_tag) } else { None };
    let callee = req.request_uri().unwrap().as_str().to_owned();
    let contact = format!("<{callee}>");
    // A UAS copies the Record-Route set into its responses (§12.1.1).
    let rr: Vec<String> = req
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    let mut extra = vec![("Contact", contact.as_str())];
    extra.extend(rr.iter().map(|r| ("Record-Route", r.as_str())));
    req.response(status, "X", tag, &extra, &mut buf);
    String::from_utf8(buf.to_vec()).unwrap()
}

/// An in-dialog request from the caller, along the Record-Route set.
fn in_dialog(method: &str, from: &str, ok: &Message, cseq: u32, branch: &str) -> String {
    let t = terminal(from);
    let contact = ok.contacts().next().unwrap().uri().as_str().to_owned();
    let routes: Vec<String> = ok
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    let to = String::from_utf8_lossy(ok.header(crate::sip::HeaderName::To).unwrap()).into_owned();
    let from_h =
        String::from_utf8_lossy(ok.header(crate::sip::HeaderName::From).unwrap()).into_owned();
    format!(
        "{method} {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch={branch}\r\nRoute: {}\r\nMax-Forwards: 70\r\n\
         From: {from_h}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        routes.join(", "),
        ok.call_id(),
    )
}

#[test]
fn options_to_the_blade_is_answered() {
    let mut b = Blade::new(false, 100);
    let out = b.send(
        "127.0.0.99:5000",
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.99:5000;branch=z9hG4bKo\r\n\
         From: <sip:probe@x>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(out.len(), 1);
    assert_eq!(status(&out[0]), 200);
    assert_eq!(out[0].to, udp("127.0.0.99:5000"));
}

#[test]
fn an_unknown_method_to_the_blade_is_405_with_allow() {
    let mut b = Blade::new(false, 100);
    let out = b.send(
        "127.0.0.99:5000",
        "FROB sip:cc.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.99:5000;branch=z9hG4bKf\r\n\
         From: <sip:probe@x>;tag=1\r\nTo: <sip:cc.example>\r\nCall-ID: f\r\nCSeq: 1 FROB\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(out.len(), 1);
    assert_eq!(status(&out[0]), 405);
    let answer = Message::parse(out[0].data.clone()).unwrap();
    let allow = answer.header(crate::sip::HeaderName::Allow).unwrap();
    assert!(allow.starts_with(b"INVITE, ACK"), "{allow:?}");
}

#[test]
fn call_answered_and_hung_up() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let out = b.send(&a, &invite("1001", "1002", "call1", "z9hG4bKi1", ""));
    assert_eq!(out.len(), 2);
    assert_eq!(status(&out[0]), 100);
    assert_eq!(out[0].to, udp(&a));
    let fwd = parse(&out[1]);
    assert_eq!(out[1].to, udp(&bb));
    assert_eq!(
        fwd.request_uri().unwrap().as_str(),
        format!("sip:1002@{bb}")
    );
    assert_eq!(fwd.vias().count(), 2);
    assert_eq!(fwd.max_forwards(), Some(69));
    assert!(fwd.record_routes().next().unwrap().uri().is_loose_route());
    assert_eq!(fwd.body(), b"v=0\n");
    assert_eq!((b.state("1001"), b.state("1002")), ("in_call", "in_call"));

    let ringing = b.send(&bb, &answer(&fwd, 180, "t2"));
    assert_eq!(ringing.len(), 1);
    assert_eq!(status(&ringing[0]), 180);
    assert_eq!(parse(&ringing[0]).vias().count(), 1, "our Via removed");
    let ok = b.send(&bb, &answer(&fwd, 200, "t2"));
    assert_eq!(status(&ok[0]), 200);
    assert_eq!(ok[0].to, udp(&a));
    let ok = parse(&ok[0]);
    let snapshot = b.proxy.snapshot();
    assert_eq!(snapshot.sessions.len(), 1);
    assert_eq!(snapshot.sessions[0].agents, ["1001", "1002"]);

    // The 2xx ACK and the BYE follow the Record-Route to the callee.
    let ack_text = in_dialog("ACK", "1001", &ok, 1, "z9hG4bKa1");
    let ack = b.send(&a, &ack_text);
    assert_eq!(ack.len(), 1, "{ack_text}");
    assert_eq!(ack[0].to, udp(&bb));
    assert_eq!(parse(&ack[0]).routes().count(), 0, "our Route popped");
    let bye = b.send(&a, &in_dialog("BYE", "1001", &ok, 2, "z9hG4bKb1"));
    assert_eq!(bye[0].to, udp(&bb));
    let done = b.send(&bb, &answer(&parse(&bye[0]), 200, "t2"));
    assert_eq!(status(&done[0]), 200);
    assert_eq!((b.state("1001"), b.state("1002")), ("ready", "ready"));
    assert!(b.proxy.snapshot().sessions.is_empty());
    assert_eq!(b.proxy.metrics().local.answered, 1);

    b.advance(Duration::from_secs(40));
    assert_eq!(b.proxy.transactions(), 0, "every transaction ends");
}

#[test]
fn escaped_user_parts_name_the_same_agents() {
    // RFC 3261 §19.1.4: `%31` and `1` are the same character in a user
    // part, so `sip:%31002@…` is agent 1002.
    let mut b = Blade::new(false, 100);
    b.register("1002");
    let a = terminal("1001");
    let out = b.send(
        &a,
        &format!(
            "REGISTER sip:cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKr1001\r\n\
             From: <sip:%31001@cc.example>;tag=r\r\nTo: <sip:%31001@cc.example>\r\n\
             Call-ID: reg1001\r\nCSeq: 1 REGISTER\r\nContact: <sip:1001@{a}>\r\n\
             Content-Length: 0\r\n\r\n"
        ),
    );
    assert_eq!(status(&out[0]), 200);
    assert_eq!(b.state("1001"), "ready");

    let text = invite("1001", "1002", "esc1", "z9hG4bKe1", "")
        .replacen("INVITE sip:1002@", "INVITE sip:10%302@", 1)
        .replacen("From: <sip:1001@", "From: <sip:100%31@", 1);
    let out = b.send(&a, &text);
    assert_eq!(out.len(), 2, "{text}");
    assert_eq!(status(&out[0]), 100);
    assert_eq!(out[1].to, udp(&terminal("1002")));
    assert_eq!((b.state("1001"), b.state("1002")), ("in_call", "in_call"));
}

#[test]
fn a_register_with_a_to_tag_still_reaches_the_registrar() {
    // Some phones copy the To tag of the last 200 into their refreshes;
    // a REGISTER is no in-dialog request all the same (RFC 3261 §10.2).
    let mut b = Blade::new(false, 100);
    b.register("1001");
    let t = terminal("1001");
    let out = b.send(
        &t,
        &format!(
            "REGISTER sip:cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bKr2\r\n\
             From: <sip:1001@cc.example>;tag=r\r\nTo: <sip:1001@cc.example>;tag=last200\r\n\
             Call-ID: reg1001\r\nCSeq: 2 REGISTER\r\nContact: <sip:1001@{t}>\r\n\
             Expires: 0\r\nContent-Length: 0\r\n\r\n"
        ),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(status(&out[0]), 200);
    assert_eq!(b.state("1001"), "logged_out");
}

#[test]
fn a_2xx_resent_without_an_ack_ends_the_call_and_one_not_resent_does_not() {
    // Not resent: the callee's 200 is relayed once, and no ACK passes
    // (the caller sent it past the blade, or through another core), but
    // the callee had its ACK: the call stays up. Resent, and no ACK ever
    // comes: both phones gave up, and 64×T1 after the first 200 the blade
    // ends the call.
    for resent in [false, true] {
        let mut b = Blade::new(false, 100);
        b.register("1001");
        b.register("1002");
        let (a, bb) = (terminal("1001"), terminal("1002"));
        let out = b.send(&a, &invite("1001", "1002", "c1", "z9hG4bKi1", ""));
        let ok = answer(&parse(&out[1]), 200, "t2");
        assert_eq!(status(&b.send(&bb, &ok)[0]), 200);
        b.advance(Duration::from_secs(2));
        if resent {
            assert_eq!(status(&b.send(&bb, &ok)[0]), 200, "relayed again");
        }
        b.advance(Duration::from_secs(40));
        let (state, sessions) = if resent { ("ready", 0) } else { ("in_call", 1) };
        assert_eq!(
            (b.state("1001"), b.state("1002")),
            (state, state),
            "resent: {resent}"
        );
        assert_eq!(
            b.proxy.snapshot().sessions.len(),
            sessions,
            "resent: {resent}"
        );
        assert_eq!(b.proxy.metrics().sessions_unacked, u64::from(resent));
    }
}

#[test]
fn a_core_with_its_own_port_record_routes_it_and_takes_routes_to_it() {
    let mut b = Blade::with_via_port(false, 100, Some(40_001));
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let out = b.send(&a, &invite("1001", "1002", "own-port", "z9hG4bKi1", ""));
    let fwd = parse(&out[1]);
    assert_eq!(fwd.top_via().port(), Some(40_001));
    let rr = fwd.record_routes().next().unwrap().uri();
    assert_eq!((rr.host(), rr.port()), ("127.0.0.1", Some(40_001)));
    assert!(rr.is_loose_route());

    let ok = b.send(&bb, &answer(&fwd, 200, "t2"));
    let ok = parse(&ok[0]);
    let ack = b.send(&a, &in_dialog("ACK", "1001", &ok, 1, "z9hG4bKa1"));
    assert_eq!(ack[0].to, udp(&bb));
    assert_eq!(
        parse(&ack[0]).routes().count(),
        0,
        "the Route to our port popped"
    );
    let bye = b.send(&a, &in_dialog("BYE", "1001", &ok, 2, "z9hG4bKb1"));
    assert_eq!(bye[0].to, udp(&bb));
    assert_eq!(parse(&bye[0]).routes().count(), 0);
}

#[test]
fn busy_agent_gets_486_and_the_ack_is_absorbed() {
    let mut b = Blade::new(false, 100);
    for ext in ["1001", "1002", "1003"] {
        b.register(ext);
    }
    b.send(
        &terminal("1001"),
        &invite("1001", "1002", "c1", "z9hG4bKi1", ""),
    );
    let c = terminal("1003");
    let out = b.send(&c, &invite("1003", "1002", "c2", "z9hG4bKi2", ""));
    assert_eq!(out.len(), 1);
    let busy = parse(&out[0]);
    assert_eq!(busy.status(), Some(486));
    let ack = format!(
        "ACK sip:1002@cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {c};branch=z9hG4bKi2\r\nMax-Forwards: 70\r\n\
         From: <sip:1003@cc.example>;tag=f1003\r\nTo: <sip:1002@cc.example>;tag={}\r\nCall-ID: c2\r\n\
         CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        busy.to().tag().unwrap()
    );
    assert!(b.send(&c, &ack).is_empty(), "ACK to our 486 stops here");
    assert_eq!(b.state("1003"), "ready");
}

#[test]
fn cancel_after_ringing() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let text = invite("1001", "1002", "c1", "z9hG4bKi1", "");
    let fwd = parse(&b.send(&a, &text)[1]);
    b.send(&bb, &answer(&fwd, 180, "t2"));
    let cancel = text
        .replacen("INVITE sip", "CANCEL sip", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    let out = b.send(&a, &cancel);
    assert_eq!(status(&out[0]), 200, "the CANCEL is answered");
    let downstream = parse(&out[1]);
    assert_eq!(downstream.method(), Some(Method::Cancel));
    assert_eq!(downstream.top_via().branch(), fwd.top_via().branch());
    b.send(&bb, &answer(&downstream, 200, "t2"));
    let out = b.send(&bb, &answer(&fwd, 487, "t2"));
    let ack = parse(&out[0]);
    assert_eq!(
        (ack.method(), out[0].to),
        (Some(Method::Ack), udp(&bb)),
        "the 487 is ACKed hop by hop"
    );
    assert_eq!((status(&out[1]), out[1].to), (487, udp(&a)));
    assert_eq!((b.state("1001"), b.state("1002")), ("ready", "ready"));
}

/// A callee that rings, then ignores the CANCEL: the INVITE is given up
/// 64×T1 after the CANCEL (RFC 3261 §9.1), as cancelled (487), not at
/// timer C (181 s), and later 180s do not push that back.
#[test]
fn a_cancel_the_callee_ignores_ends_the_call_after_64_t1() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let text = invite("1001", "1002", "c-ign", "z9hG4bKign", "");
    let fwd = parse(&b.send(&a, &text)[1]);
    b.send(&bb, &answer(&fwd, 180, "t2"));
    let cancel = text
        .replacen("INVITE sip", "CANCEL sip", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    assert_eq!(status(&b.send(&a, &cancel)[0]), 200);
    b.advance(Duration::from_secs(20));
    b.send(&bb, &answer(&fwd, 180, "t2"));
    let limit = 64 * TimerConfig::default().t1;
    let finals = |out: Vec<Transmit>| -> Vec<u16> {
        out.iter()
            .filter(|t| t.to == udp(&a))
            .filter_map(|t| parse(t).status())
            .filter(|&s| s >= 200)
            .collect()
    };
    let early = finals(b.advance(limit - Duration::from_secs(21)));
    assert!(early.is_empty(), "before 64×T1: {early:?}");
    let given_up = finals(b.advance(Duration::from_secs(2)));
    assert_eq!(given_up.first(), Some(&487), "{given_up:?}");
    assert_eq!((b.state("1001"), b.state("1002")), ("ready", "ready"));
    let local = b.proxy.metrics().local;
    assert_eq!(
        (local.cancelled, local.failed),
        (1, 0),
        "counted once: {local:?}"
    );
}

/// An INVITE whose callee never sends a final response, not even to the
/// proxy's CANCEL, is given up (a final answer upstream) and then
/// forgotten: its transactions do not stay in the table for ever. Both
/// ways a proxy cancels: the caller's CANCEL, and timer C.
#[test]
fn an_invite_the_callee_never_ends_is_forgotten_after_it_is_given_up() {
    for caller_cancels in [true, false] {
        let mut b = Blade::new(false, 100);
        b.register("1001");
        b.register("1002");
        let (a, bb) = (terminal("1001"), terminal("1002"));
        let text = invite("1001", "1002", "c-silent", "z9hG4bKsilent", "");
        let fwd = parse(&b.send(&a, &text)[1]);
        b.send(&bb, &answer(&fwd, 180, "t2"));
        if caller_cancels {
            let cancel = text
                .replacen("INVITE sip", "CANCEL sip", 1)
                .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
            b.send(&a, &cancel);
        }
        let out = b.advance(TIMER_C + Duration::from_secs(1));
        let finals: Vec<u16> = out
            .iter()
            .filter(|t| t.to == udp(&a))
            .filter_map(|t| parse(t).status())
            .collect();
        let expected = if caller_cancels { 487 } else { 408 };
        assert_eq!(finals.first(), Some(&expected), "{finals:?}");
        assert!(
            out.iter()
                .any(|t| t.to == udp(&bb) && parse(t).method() == Some(Method::Cancel)),
            "the callee was sent a CANCEL"
        );
        b.advance(Duration::from_secs(300));
        assert_eq!(
            b.proxy.transactions(),
            0,
            "caller cancels: {caller_cancels}: the given-up INVITE is forgotten"
        );
        assert_eq!((b.state("1001"), b.state("1002")), ("ready", "ready"));
    }
}

/// A 2xx to an INVITE the proxy has already answered with a final
/// failure (a CANCEL the callee ignored, given up after 64×T1) is still
/// forwarded to the caller (RFC 3261 §16.7 step 5: after a final response,
/// any 2xx to an INVITE must be forwarded at once), so that the caller
/// can ACK it and hang up, and the callee stops retransmitting it.
#[test]
fn a_2xx_after_the_proxy_gave_up_the_invite_still_reaches_the_caller() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let text = invite("1001", "1002", "c-late", "z9hG4bKlate", "");
    let fwd = parse(&b.send(&a, &text)[1]);
    b.send(&bb, &answer(&fwd, 180, "t2"));
    let cancel = text
        .replacen("INVITE sip", "CANCEL sip", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    b.send(&a, &cancel);
    let given_up = b.advance(64 * TimerConfig::default().t1 + Duration::from_secs(1));
    assert!(
        given_up
            .iter()
            .any(|t| t.to == udp(&a) && parse(t).status() == Some(487)),
        "the proxy gave up with 487"
    );
    let ok = answer(&fwd, 200, "t2");
    for _ in 0..2 {
        let out = b.send(&bb, &ok);
        let to_caller: Vec<u16> = out
            .iter()
            .filter(|t| t.to == udp(&a))
            .filter_map(|t| parse(t).status())
            .collect();
        assert_eq!(to_caller, [200], "each 2xx is forwarded to the caller");
        assert_eq!(parse(&out[0]).vias().count(), 1, "our Via removed");
    }
}

/// A CANCEL that crosses the callee's 200 does not end the call (RFC 3261
/// §9.1): the caller gets the 200, and the call counts once, as answered,
/// not also as cancelled.
#[test]
fn a_cancel_crossed_by_the_200_counts_the_call_answered_only() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let text = invite("1001", "1002", "c-race", "z9hG4bKrace", "");
    let fwd = parse(&b.send(&a, &text)[1]);
    b.send(&bb, &answer(&fwd, 180, "t2"));
    let cancel = text
        .replacen("INVITE sip", "CANCEL sip", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    let out = b.send(&a, &cancel);
    assert_eq!(status(&out[0]), 200, "the CANCEL is answered");
    assert_eq!(parse(&out[1]).method(), Some(Method::Cancel));
    let out = b.send(&bb, &answer(&fwd, 200, "t2"));
    assert_eq!((status(&out[0]), out[0].to), (200, udp(&a)));
    assert_eq!((b.state("1001"), b.state("1002")), ("in_call", "in_call"));
    let local = b.proxy.metrics().local;
    assert_eq!((local.answered, local.cancelled), (1, 0), "{local:?}");
}

/// A cancelled INVITE that the callee answers 487 counts once, as
/// cancelled.
#[test]
fn a_cancelled_call_counts_once() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let text = invite("1001", "1002", "c-once", "z9hG4bKonce", "");
    let fwd = parse(&b.send(&a, &text)[1]);
    b.send(&bb, &answer(&fwd, 180, "t2"));
    let cancel = text
        .replacen("INVITE sip", "CANCEL sip", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    b.send(&a, &cancel);
    let out = b.send(&bb, &answer(&fwd, 487, "t2"));
    assert!(out.iter().any(|t| t.to == udp(&a) && status(t) == 487));
    let local = b.proxy.metrics().local;
    assert_eq!(local.cancelled, 1, "{local:?}");
    assert_eq!(local.failed + local.answered + local.busy, 0, "{local:?}");
}

/// A non-INVITE request whose callee never answers gets no 408 from the
/// proxy (RFC 4320 §4.2: the caller's own timer F ends it), and its
/// transaction goes away.
#[test]
fn a_silent_callee_of_a_non_invite_gets_no_408_sent_upstream() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let text = format!(
        "MESSAGE sip:1002@cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKmsg\r\nMax-Forwards: 70\r\n\
         From: <sip:1001@cc.example>;tag=m\r\nTo: <sip:1002@cc.example>\r\nCall-ID: m1\r\n\
         CSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    );
    let out = b.send(&a, &text);
    assert!(
        out.iter().any(|t| t.to == udp(&bb)),
        "the MESSAGE is forwarded"
    );
    let later = b.advance(Duration::from_secs(40));
    let upstream: Vec<u16> = later
        .iter()
        .filter(|t| t.to == udp(&a))
        .filter_map(|t| parse(t).status())
        .collect();
    assert!(upstream.is_empty(), "answers sent upstream: {upstream:?}");
    b.advance(Duration::from_secs(10));
    assert_eq!(b.proxy.transactions(), 0, "the transaction is gone");
}

#[test]
fn retransmissions_are_absorbed_and_a_lost_200_is_relayed_again() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let text = invite("1001", "1002", "c1", "z9hG4bKi1", "");
    let fwd = parse(&b.send(&a, &text)[1]);
    let again = b.send(&a, &text);
    assert_eq!(
        again.len(),
        1,
        "a retransmitted INVITE only gets the 100 again"
    );
    assert_eq!(status(&again[0]), 100);
    let retransmits = b.advance(Duration::from_millis(600));
    assert_eq!(
        retransmits.len(),
        1,
        "timer A resends the INVITE to the callee"
    );
    assert_eq!(retransmits[0].to, udp(&bb));
    let ok = answer(&fwd, 200, "t2");
    assert_eq!(b.send(&bb, &ok).len(), 1);
    let relayed = b.send(&bb, &ok);
    assert_eq!(
        relayed.len(),
        1,
        "the callee's 200 retransmission goes upstream too"
    );
    assert_eq!(relayed[0].to, udp(&a));
}

#[test]
fn unanswered_invite_times_out_with_408() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    b.send(
        &terminal("1001"),
        &invite("1001", "1002", "c1", "z9hG4bKi1", ""),
    );
    let out = b.advance(Duration::from_secs(33));
    let first_408 = out
        .iter()
        .position(|t| Message::parse(t.data.clone()).is_ok_and(|m| m.status() == Some(408)));
    assert!(first_408.is_some(), "timer B answers the caller 408");
    assert_eq!((b.state("1001"), b.state("1002")), ("ready", "ready"));
}

#[test]
fn refusals() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    let a = terminal("1001");
    let st = |b: &mut Blade, text: &str| status(&b.send(&a, text)[0]);
    assert_eq!(
        st(&mut b, &invite("1001", "9999", "r1", "z9hG4bK1", "")),
        404
    );
    assert_eq!(
        st(&mut b, &invite("1001", "1002", "r2", "z9hG4bK2", "")),
        480
    );
    assert_eq!(
        st(&mut b, &invite("1003", "1001", "r3", "z9hG4bK3", "")),
        403,
        "caller not logged in"
    );
    let mf0 =
        invite("1001", "1002", "r4", "z9hG4bK4", "").replace("Max-Forwards: 70", "Max-Forwards: 0");
    assert_eq!(st(&mut b, &mf0), 483);
    // A preloaded Route out of the cluster: no open relay.
    let routed = invite(
        "1001",
        "1002",
        "r6",
        "z9hG4bK6",
        "Route: <sip:192.0.2.99:5099;lr>\r\n",
    );
    let out = b.send(&a, &routed);
    assert_eq!(out.len(), 1, "nothing forwarded");
    assert_eq!(status(&out[0]), 403);
    // Nor to another port of the blade's own IP.
    let own_ip = addr(BLADE).ip();
    let routed = invite(
        "1001",
        "1002",
        "r7",
        "z9hG4bK7",
        &format!("Route: <sip:{own_ip}:5099;lr>\r\n"),
    );
    let out = b.send(&a, &routed);
    assert_eq!(out.len(), 1, "nothing forwarded");
    assert_eq!(status(&out[0]), 403);
    let pr = invite("1001", "1002", "r5", "z9hG4bK5", "Proxy-Require: x-foo\r\n");
    let out = b.send(&a, &pr);
    assert_eq!(status(&out[0]), 420);
    assert_eq!(
        parse(&out[0]).header_named("Unsupported"),
        Some(&b"x-foo"[..])
    );
    let out = b.send(&a, "INVITE sip:1002@cc.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.11:5001;branch=z9hG4bKm\r\n\
        From: <sip:1001@cc.example>;tag=1\r\nTo: <sip:1002@cc.example>\r\nCall-ID: m\r\nCSeq: 1 INVITE\r\n\
        Content-Length: 99\r\n\r\n");
    assert_eq!(
        status(&out[0]),
        400,
        "malformed: body shorter than Content-Length"
    );
    assert_eq!(b.proxy.metrics().malformed, 1);
    // A CRLF keep-alive is neither answered nor malformed.
    for keep_alive in ["\r\n\r\n", "\r\n"] {
        assert!(b.send(&a, keep_alive).is_empty());
    }
    assert_eq!(b.proxy.metrics().malformed, 1);
}

#[test]
fn overload_answers_503() {
    let mut b = Blade::new(false, 1);
    for ext in ["1001", "1002", "1003"] {
        b.register(ext);
    }
    // Answered transactions linger without counting against the bound.
    assert!(b.proxy.transactions() >= 3);
    let out = b.send(
        &terminal("1001"),
        &invite("1001", "1002", "c1", "z9hG4bKi1", ""),
    );
    assert_eq!(status(&out[0]), 100, "one pending transaction fits");
    // The INVITE still awaits its answer: the next request is one too many.
    let out = b.send(
        &terminal("1003"),
        &invite("1003", "1002", "c2", "z9hG4bKi2", ""),
    );
    assert_eq!(status(&out[0]), 503);
    assert_eq!(parse(&out[0]).header_named("Retry-After"), Some(&b"1"[..]));
}

#[test]
fn a_bye_passes_the_overload_bound() {
    let mut b = Blade::new(false, 1);
    for ext in ["1001", "1002", "1003"] {
        b.register(ext);
    }
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let out = b.send(&a, &invite("1001", "1002", "c1", "z9hG4bKi1", ""));
    let fwd = parse(&out[1]);
    let ok = parse(&b.send(&bb, &answer(&fwd, 200, "t2"))[0]);
    b.send(&a, &in_dialog("ACK", "1001", &ok, 1, "z9hG4bKa1"));
    // A second call, unanswered, fills the bound of one pending request.
    let out = b.send(&a, &invite("1001", "1003", "c2", "z9hG4bKi2", ""));
    assert_eq!(status(&out[0]), 100);
    let out = b.send(
        &terminal("1003"),
        &invite("1003", "1002", "c3", "z9hG4bKi3", ""),
    );
    assert_eq!(status(&out[0]), 503, "a new call is shed");
    // Hanging up the first call is not: it frees the agents.
    let bye = b.send(&a, &in_dialog("BYE", "1001", &ok, 2, "z9hG4bKb1"));
    assert_eq!(bye[0].to, udp(&bb), "the BYE is forwarded");
    b.send(&bb, &answer(&parse(&bye[0]), 200, "t2"));
    assert_eq!(b.state("1002"), "ready");
}

#[test]
fn invites_are_challenged_when_auth_is_on() {
    let mut b = Blade::new(true, 100);
    b.register("1001");
    b.register("1002");
    let a = terminal("1001");
    let out = b.send(&a, &invite("1001", "1002", "c1", "z9hG4bKi1", ""));
    let challenge = parse(&out[0]);
    assert_eq!(challenge.status(), Some(407));
    assert_eq!(
        b.proxy.metrics().local,
        Default::default(),
        "a challenge is no call outcome"
    );
    let header = proxy_authorization(&challenge, "1001", "sip:1002@cc.example");
    let out = b.send(&a, &invite("1001", "1002", "c1", "z9hG4bKi2", &header));
    assert_eq!(status(&out[0]), 100);
    assert_eq!(out[1].to, udp(&terminal("1002")));
}

/// The Proxy-Authorization line with which `ext` (password `pw<ext>`)
/// answers `challenge` for an INVITE to `uri`.
fn proxy_authorization(challenge: &Message, ext: &str, uri: &str) -> String {
    let d = challenge.proxy_authenticate().unwrap().digest().unwrap();
    let mut creds = crate::registrar::digest::Credentials {
        username: ext,
        realm: d.realm.unwrap(),
        nonce: d.nonce.unwrap(),
        uri,
        response: "",
        algorithm: d.algorithm,
        cnonce: Some("abc"),
        qop: Some("auth"),
        nc: Some("00000001"),
        opaque: None,
    };
    let password = format!("pw{ext}");
    let secret = crate::registrar::digest::Secret::Password(&password);
    let response = crate::registrar::digest::expected_response("INVITE", &creds, secret).unwrap();
    creds.response = &response;
    format!(
        "Proxy-Authorization: Digest username=\"{ext}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={}, cnonce=\"abc\", qop=auth, nc=00000001\r\n",
        creds.realm,
        creds.nonce,
        creds.algorithm.unwrap()
    )
}

/// A nonce's count is kept against replay while the nonce lives; once it
/// expired, an idle core forgets it (at most a minute later) rather than
/// keeping it until the next authenticated request, and then has no timer
/// left at all.
#[test]
fn an_idle_core_forgets_expired_nonce_counts() {
    let mut b = Blade::new(true, 100);
    b.register("1001");
    b.register("1002");
    let a = terminal("1001");
    let out = b.send(&a, &invite("1001", "1002", "c1", "z9hG4bKi1", ""));
    let header = proxy_authorization(&parse(&out[0]), "1001", "sip:1002@cc.example");
    let out = b.send(&a, &invite("1001", "1002", "c1", "z9hG4bKi2", &header));
    assert_eq!(status(&out[0]), 100);
    let busy = answer(&parse(&out[1]), 486, "t1");
    b.send(&terminal("1002"), &busy);
    assert_eq!(b.proxy.registrar().nonces().tracked_nonces(), 1);

    let lifetime = crate::registrar::digest::DEFAULT_NONCE_LIFETIME;
    b.advance(lifetime - Duration::from_secs(1));
    assert_eq!(
        b.proxy.registrar().nonces().tracked_nonces(),
        1,
        "still live"
    );
    b.advance(Duration::from_secs(61));
    assert_eq!(b.proxy.registrar().nonces().tracked_nonces(), 0);
    // Registrations last an hour; past them, nothing is left to wake for.
    b.advance(Duration::from_secs(7200));
    assert_eq!(b.proxy.next_deadline(), None);
}

#[test]
fn a_request_that_comes_back_unchanged_is_a_loop() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let out = b.send(&a, &invite("1001", "1002", "loop1", "z9hG4bKl1", ""));
    let forwarded = String::from_utf8(out[1].data.to_vec()).unwrap();
    // The same request, sent back to us as it was: same Request-URI.
    let first_line_end = forwarded.find("\r\n").unwrap();
    let looped = format!(
        "INVITE sip:1002@cc.example SIP/2.0{}",
        &forwarded[first_line_end..]
    );
    let out = b.send(&bb, &looped);
    assert_eq!(status(&out[0]), 482);
    // Retargeted (a spiral) is not a loop: it is routed on (here, the
    // callee is busy with the first call).
    let spiral = format!(
        "INVITE sip:1002@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.99:5000;branch=z9hG4bKhop{}",
        &forwarded[first_line_end..]
    );
    let out = b.send(&bb, &spiral);
    assert_eq!(status(&out[0]), 486);
}

#[test]
fn timer_c_cancels_a_call_that_rings_too_long() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let fwd = parse(&b.send(&a, &invite("1001", "1002", "c1", "z9hG4bKi1", ""))[1]);
    b.send(&bb, &answer(&fwd, 180, "t2"));
    let out = b.advance(TIMER_C + Duration::from_millis(10));
    let cancel = out
        .iter()
        .map(parse)
        .find(|m| m.method() == Some(Method::Cancel))
        .expect("a CANCEL downstream");
    assert!(
        out.iter().any(|t| t.to == udp(&a) && status(t) == 408),
        "the caller gets 408"
    );
    // The callee's 200 to the CANCEL matches it: no more retransmissions.
    assert!(b.send(&bb, &answer(&cancel, 200, "t2")).is_empty());
    let later = b.advance(Duration::from_secs(2));
    assert!(
        !later
            .iter()
            .any(|t| parse(t).method() == Some(Method::Cancel)),
        "CANCEL not resent after its 200"
    );
    assert_eq!((b.state("1001"), b.state("1002")), ("ready", "ready"));
}

/// A re-INVITE is not a new call: its 2xx is not counted as another
/// answered call, and a refusal of it (491 glare, 488) leaves the call up,
/// so its agents stay `in_call` and a third caller still gets 486. A
/// retransmitted 2xx of the first INVITE is not another call either.
#[test]
fn a_reinvite_and_a_retransmitted_200_are_not_new_calls() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    b.register("1003");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let fwd = parse(&b.send(&a, &invite("1001", "1002", "c1", "z9hG4bKi1", ""))[1]);
    let ok_text = answer(&fwd, 200, "t2");
    let ok = parse(&b.send(&bb, &ok_text)[0]);
    assert_eq!(b.send(&bb, &ok_text).len(), 1, "the 2xx retransmission");
    assert_eq!(b.proxy.metrics().local.answered, 1);
    b.send(&a, &in_dialog("ACK", "1001", &ok, 1, "z9hG4bKa1"));

    // A re-INVITE (hold): answered 200, then another refused with 491.
    let reinvite = b.send(&a, &in_dialog("INVITE", "1001", &ok, 2, "z9hG4bKr2"));
    let fwd = parse(reinvite.last().unwrap());
    b.send(&bb, &answer(&fwd, 200, "t2"));
    b.send(&a, &in_dialog("ACK", "1001", &ok, 2, "z9hG4bKa2"));
    let reinvite = b.send(&a, &in_dialog("INVITE", "1001", &ok, 3, "z9hG4bKr3"));
    let fwd = parse(reinvite.last().unwrap());
    let refused = b.send(&bb, &answer(&fwd, 491, "t2"));
    let upstream: Vec<_> = refused.iter().filter(|t| t.to == udp(&a)).collect();
    assert_eq!(status(upstream[0]), 491, "relayed to the caller");
    b.send(&a, &in_dialog("ACK", "1001", &ok, 3, "z9hG4bKr3"));

    let m = b.proxy.metrics().local;
    assert_eq!((m.answered, m.failed, m.busy), (1, 0, 0), "{m:?}");
    assert_eq!((b.state("1001"), b.state("1002")), ("in_call", "in_call"));
    assert_eq!(b.proxy.snapshot().sessions.len(), 1);
    let third = b.send(
        &terminal("1003"),
        &invite("1003", "1002", "c2", "z9hG4bKi3", ""),
    );
    assert_eq!(status(&third[0]), 486, "1002 is still in the call");

    // The BYE ends it.
    let bye = b.send(&a, &in_dialog("BYE", "1001", &ok, 4, "z9hG4bKb4"));
    b.send(&bb, &answer(&parse(&bye[0]), 200, "t2"));
    assert_eq!((b.state("1001"), b.state("1002")), ("ready", "ready"));
}

/// A call to a number no agent has fails like one to an agent logged out:
/// `sipblade_calls_total{outcome="failed"}` counts the 404 as it does the
/// 480. Other requests to it are no calls.
#[test]
fn a_call_to_an_unknown_extension_counts_as_failed() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    let a = terminal("1001");
    let out = b.send(&a, &invite("1001", "9999", "u1", "z9hG4bKu1", ""));
    assert_eq!(status(&out[0]), 404);
    assert_eq!(b.proxy.metrics().local.failed, 1);
    let elsewhere = invite("1001", "1002", "u2", "z9hG4bKu2", "").replace(
        "INVITE sip:1002@cc.example",
        "INVITE sip:1002@other.example",
    );
    assert_eq!(status(&b.send(&a, &elsewhere)[0]), 404);
    assert_eq!(b.proxy.metrics().local.failed, 2);
    let message = invite("1001", "9999", "u3", "z9hG4bKu3", "").replace("INVITE", "MESSAGE");
    assert_eq!(status(&b.send(&a, &message)[0]), 404);
    assert_eq!(b.proxy.metrics().local.failed, 2, "a MESSAGE is no call");
    let gone = invite("1001", "1002", "u4", "z9hG4bKu4", "");
    assert_eq!(status(&b.send(&a, &gone)[0]), 480, "an agent logged out");
    assert_eq!(b.proxy.metrics().local.failed, 3);
}

/// The 400 to a malformed request names the fault in its reason phrase.
#[test]
fn a_malformed_request_gets_a_400_that_says_why() {
    let mut b = Blade::new(false, 100);
    let out = b.send(
        "127.0.0.11:5001",
        "OPTIONS sip:cc.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.11:5001;branch=z9hG4bKc\r\n\
         From: <sip:1001@cc.example>;tag=1\r\nTo: <sip:cc.example>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\
         Max-Forwards: many\r\nContent-Length: 0\r\n\r\n",
    );
    let resp = parse(&out[0]);
    assert_eq!(resp.status(), Some(400));
    assert_eq!(
        resp.reason(),
        Some(&b"Bad Request (malformed Max-Forwards header)"[..])
    );
}

/// Once a burst's lingering transactions are all gone, the core gives back
/// the room its tables grew to (they would hold its memory at the burst's
/// size for good), and goes on working.
#[test]
fn an_idle_core_gives_back_the_room_a_burst_took() {
    use super::transactions::IDLE_TABLE_CAPACITY;
    let mut b = Blade::new(false, 10_000);
    b.register("1001");
    b.register("1002");
    let (a, callee) = (terminal("1001"), terminal("1002"));
    let options = |i: usize| {
        format!(
            "OPTIONS sip:1002@cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKo{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1001@cc.example>;tag=o{i}\r\nTo: <sip:1002@cc.example>\r\n\
             Call-ID: burst{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let ask = |b: &mut Blade, i: usize| {
        let out = b.send(&a, &options(i));
        let forwarded = out.iter().map(parse).find(|m| m.is_request()).unwrap();
        let out = b.send(&callee, &answer(&forwarded, 200, "t"));
        assert_eq!(status(&out[0]), 200, "answered");
    };
    for i in 0..2 * IDLE_TABLE_CAPACITY {
        ask(&mut b, i);
    }
    assert!(b.proxy.txs.capacity() > IDLE_TABLE_CAPACITY);

    b.advance(Duration::from_secs(40));
    assert!(b.proxy.txs.is_empty(), "every transaction reaped");
    assert!(b.proxy.txs.capacity() <= IDLE_TABLE_CAPACITY);
    assert!(b.proxy.by_server.capacity() <= IDLE_TABLE_CAPACITY);
    assert!(b.proxy.by_client.capacity() <= IDLE_TABLE_CAPACITY);
    ask(&mut b, 1_000_000);
}

/// With `auth` on, a To tag does not carry a stranger's request to an
/// agent's phone past the challenge: an unrouted in-dialog request reaches
/// the phone only within a call the blade holds (a phone that ignored the
/// route set), and anything else gets 403.
#[test]
fn with_auth_an_unrouted_request_reaches_a_phone_only_within_a_call() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    // Agents registered; from here on the blade authenticates (the test
    // harness registers without digest).
    b.proxy.settings.auth = true;
    let callee = terminal("1002");
    let contact = format!("sip:1002@{callee}");
    let stranger = "127.0.0.66:5066";
    let unrouted = |method: &str, from: &str, call_id: &str, branch: &str| {
        format!(
            "{method} {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch={branch}\r\nMax-Forwards: 70\r\n\
             From: <sip:1001@cc.example>;tag=f1001\r\nTo: <sip:1002@cc.example>;tag=t2\r\n\
             Call-ID: {call_id}\r\nCSeq: 2 {method}\r\nEvent: check-sync\r\nContent-Length: 0\r\n\r\n"
        )
    };
    for method in ["NOTIFY", "INVITE", "BYE", "INFO"] {
        let out = b.send(
            stranger,
            &unrouted(method, stranger, "made-up", &format!("z9hG4bKs{method}")),
        );
        assert_eq!(
            out.len(),
            1,
            "{method}: only an answer, nothing to the phone"
        );
        assert_eq!(out[0].to, udp(stranger));
        assert_eq!(status(&out[0]), 403, "{method}");
    }
    let ack = b.send(
        stranger,
        &unrouted("ACK", stranger, "made-up", "z9hG4bKsack"),
    );
    assert!(ack.is_empty(), "a stranger's ACK is dropped");

    // A call the blade holds, placed while the INVITE needed no
    // credentials; the caller's phone keeps no route set.
    b.proxy.settings.auth = false;
    let out = b.send(
        &terminal("1001"),
        &invite("1001", "1002", "held", "z9hG4bKi", ""),
    );
    let forwarded = out.iter().map(parse).find(|m| m.is_request()).unwrap();
    b.send(&callee, &answer(&forwarded, 200, "t2"));
    b.proxy.settings.auth = true;
    let caller = terminal("1001");
    let out = b.send(&caller, &unrouted("INFO", &caller, "held", "z9hG4bKinfo"));
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].to,
        udp(&callee),
        "relayed to the phone within the call"
    );
    assert!(parse(&out[0]).is_request());
    // The same request naming no call the blade holds is refused.
    let out = b.send(&caller, &unrouted("INFO", &caller, "other", "z9hG4bKinfo2"));
    assert_eq!(status(&out[0]), 403);
}

/// A request with a To tag but no Route naming the blade is no dialog the
/// blade set up: it goes nowhere but to an agent's registered contact, so
/// a forged To tag does not make the blade an open relay.
#[test]
fn an_unrouted_in_dialog_request_reaches_only_agents() {
    let mut b = Blade::new(false, 100);
    b.register("1002");
    let stranger = "127.0.0.66:5066";
    let forged = |method: &str, uri: &str, branch: &str| {
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {stranger};branch={branch}\r\nMax-Forwards: 70\r\n\
             From: <sip:9999@cc.example>;tag=x\r\nTo: <sip:1002@cc.example>;tag=forged\r\n\
             Call-ID: relay\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    for method in ["MESSAGE", "INVITE", "BYE"] {
        let out = b.send(
            stranger,
            &forged(
                method,
                "sip:victim@192.0.2.7:5060",
                &format!("z9hG4bK{method}"),
            ),
        );
        assert_eq!(out.len(), 1, "{method}: only an answer, nothing relayed");
        assert_eq!(out[0].to, udp(stranger));
        assert_eq!(status(&out[0]), 403, "{method}");
    }
    let ack = b.send(
        stranger,
        &forged("ACK", "sip:victim@192.0.2.7:5060", "z9hG4bKack"),
    );
    assert!(ack.is_empty(), "an ACK is dropped");

    // An agent's registered contact is still reached (a phone that
    // ignored the route set).
    let contact = format!("sip:1002@{}", terminal("1002"));
    let out = b.send(stranger, &forged("BYE", &contact, "z9hG4bKbye2"));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].to, udp(&terminal("1002")));
    assert!(parse(&out[0]).is_request());

    // So is an agent named by its address of record (a UA that sends
    // in-dialog requests to the AOR rather than the remote target).
    let out = b.send(
        stranger,
        &forged("BYE", "sip:1002@cc.example", "z9hG4bKbye3"),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].to, udp(&terminal("1002")));
    let bye = parse(&out[0]);
    assert_eq!(
        bye.request_uri().unwrap().as_str(),
        contact,
        "retargeted to the contact"
    );
    // But not an ACK to the AOR: that is a non-2xx ACK on a branch of its
    // own (the INVITE's answer was ours to acknowledge), and it ends here.
    let ack = b.send(
        stranger,
        &forged("ACK", "sip:1002@cc.example", "z9hG4bKack3"),
    );
    assert!(ack.is_empty(), "{ack:?}");
}

/// A response matches its client transaction by branch *and* CSeq method
/// (RFC 3261 §17.1.3): a 200 whose CSeq says BYE does not answer the
/// INVITE with the same branch.
#[test]
fn a_response_with_another_cseq_method_does_not_answer_the_invite() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let fwd = parse(&b.send(&a, &invite("1001", "1002", "m1", "z9hG4bKm1", ""))[1]);
    let wrong = answer(&fwd, 200, "t2").replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
    assert!(b.send(&bb, &wrong).is_empty(), "dropped, not relayed");
    assert_eq!(b.proxy.metrics().local.answered, 0);
    let declined = b.send(&bb, &answer(&fwd, 603, "t2"));
    let upstream: Vec<_> = declined.iter().filter(|t| t.to == udp(&a)).collect();
    assert_eq!(status(upstream[0]), 603, "the real answer still goes up");
    assert_eq!((b.state("1001"), b.state("1002")), ("ready", "ready"));
}

/// A response that carries only the blade's own Via has nowhere to go once
/// that Via is removed (RFC 3261 §16.7 step 3): it is dropped and counted
/// as malformed, and the transaction waits for a proper answer.
#[test]
fn a_response_with_only_the_blades_via_is_not_relayed() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let fwd = parse(&b.send(&a, &invite("1001", "1002", "v1", "z9hG4bKv1", ""))[1]);
    let ok = answer(&fwd, 200, "t2");
    let caller_via = ok
        .lines()
        .filter(|l| l.starts_with("Via:"))
        .nth(1)
        .unwrap()
        .to_owned();
    let stripped = ok.replace(&format!("{caller_via}\r\n"), "");
    assert!(b.send(&bb, &stripped).is_empty(), "not relayed");
    assert_eq!(b.proxy.metrics().malformed, 1);
    assert_eq!(b.proxy.metrics().local.answered, 0);
    let relayed = b.send(&bb, &ok);
    let upstream: Vec<_> = relayed.iter().filter(|t| t.to == udp(&a)).collect();
    assert_eq!(status(upstream[0]), 200, "the proper 200 still goes up");
    assert_eq!(parse(upstream[0]).vias().count(), 1);
}

/// The blade answers OPTIONS itself, as a UAS: an extension the request
/// requires is refused (RFC 3261 §8.2.2.3), as for REGISTER.
#[test]
fn options_to_the_blade_requiring_an_extension_is_420() {
    let mut b = Blade::new(false, 100);
    let out = b.send(
        "127.0.0.99:5000",
        "OPTIONS sip:cc.example SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.99:5000;branch=z9hG4bKo\r\n\
         From: <sip:probe@x>;tag=1\r\nTo: <sip:cc.example>\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\n\
         Require: foo, 100rel\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(out.len(), 1);
    let answer = parse(&out[0]);
    assert_eq!(answer.status(), Some(420));
    let unsupported = answer.header(crate::sip::HeaderName::Unsupported).unwrap();
    assert_eq!(unsupported, b"foo, 100rel");
}

/// A REGISTER whose address of record is in another domain names no agent
/// of this cluster (RFC 3261 §10.3 step 5): 404, and no binding.
#[test]
fn a_register_for_another_domain_is_404() {
    let mut b = Blade::new(false, 100);
    let t = terminal("1001");
    let out = b.send(
        &t,
        &format!(
            "REGISTER sip:cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bKfd\r\n\
             From: <sip:1001@other.example>;tag=r\r\nTo: <sip:1001@other.example>\r\n\
             Call-ID: fd\r\nCSeq: 1 REGISTER\r\nContact: <sip:1001@{t}>\r\n\
             Content-Length: 0\r\n\r\n"
        ),
    );
    assert_eq!(status(&out[0]), 404);
    assert_eq!(b.state("1001"), "logged_out");
    b.register("1001");
    assert_eq!(b.state("1001"), "ready");
}

/// A request for an agent on UDP that its forwarding would grow past what
/// a datagram carries is answered 513 at once (it could never be sent),
/// and leaves both agents as they were.
#[test]
fn a_request_too_large_to_forward_over_udp_is_513() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    b.register("1002");
    let a = terminal("1001");
    let body = "a".repeat(crate::proxy::UDP_MAX_PAYLOAD - 400);
    let text = invite("1001", "1002", "big", "z9hG4bKbig", "").replace(
        "Content-Length: 4\r\n\r\nv=0\n",
        &format!("Content-Length: {}\r\n\r\n{body}", body.len()),
    );
    assert!(
        text.len() < crate::proxy::UDP_MAX_PAYLOAD,
        "it arrived in one datagram"
    );
    let out = b.send(&a, &text);
    let statuses: Vec<u16> = out.iter().map(status).collect();
    assert_eq!(statuses.last(), Some(&513), "{statuses:?}");
    assert!(
        out.iter().all(|t| t.to == udp(&a)),
        "nothing went to the callee"
    );
    assert_eq!((b.state("1001"), b.state("1002")), ("ready", "ready"));
}

/// A local call 1001 → 1002 answered with To tag `t2`, on a blade whose
/// sessions last at most `max_call`; `extra` goes into the INVITE. Returns
/// the caller's 200.
fn answered_call_lasting(b: &mut Blade, max_call: Duration, extra: &str) -> Message {
    b.proxy.settings.max_call = max_call;
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let out = b.send(&a, &invite("1001", "1002", "long", "z9hG4bKi1", extra));
    let fwd = parse(&out[1]);
    let ok = b.send(&bb, &answer(&fwd, 200, "t2"));
    let ok = parse(&ok[0]);
    assert_eq!(ok.status(), Some(200));
    let ack = b.send(&a, &in_dialog("ACK", "1001", &ok, 1, "z9hG4bKa1"));
    assert_eq!(ack.len(), 1);
    ok
}

/// The BYEs among `out`, with where they went.
fn byes(out: &[Transmit]) -> Vec<(Peer, Message)> {
    out.iter()
        .map(|t| (t.to, parse(t)))
        .filter(|(_, m)| m.method() == Some(Method::Bye))
        .collect()
}

fn header(msg: &Message, name: crate::sip::HeaderName) -> String {
    String::from_utf8_lossy(msg.header(name).unwrap()).into_owned()
}

#[test]
fn a_call_that_outlives_max_call_is_hung_up_on_both_phones() {
    use crate::sip::HeaderName;
    let mut b = Blade::new(false, 100);
    let ok = answered_call_lasting(&mut b, Duration::from_secs(60), "");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    assert!(byes(&b.advance(Duration::from_secs(59))).is_empty());

    let out = b.advance(Duration::from_secs(1));
    let sent = byes(&out);
    assert_eq!(sent.len(), 2, "one BYE per phone");
    assert_eq!((b.state("1001"), b.state("1002")), ("ready", "ready"));
    let (to_a, to_b) = (&sent[0], &sent[1]);

    // To the caller: the dialog as the callee would write it.
    assert_eq!(to_a.0, udp(&a), "where the INVITE came from");
    let bye = &to_a.1;
    assert_eq!(
        bye.request_uri().unwrap().as_str(),
        format!("sip:1001@{a}"),
        "the caller's Contact"
    );
    assert_eq!(bye.vias().count(), 1);
    let via = bye.top_via();
    assert_eq!((via.host(), via.port()), ("127.0.0.1", Some(5060)));
    assert!(via.branch().unwrap().starts_with("z9hG4bKsb0xb"));
    assert_eq!(bye.max_forwards(), Some(70));
    assert_eq!(bye.routes().count(), 0, "no route past the blade");
    assert_eq!(header(bye, HeaderName::From), header(&ok, HeaderName::To));
    assert_eq!(header(bye, HeaderName::To), header(&ok, HeaderName::From));
    assert_eq!(bye.from().tag(), Some("t2"));
    assert_eq!(bye.to().tag(), Some("f1001"));
    assert_eq!(bye.call_id(), "long");
    assert_eq!(bye.cseq().seq, hangup::BYE_CSEQ);
    assert_eq!(bye.cseq().method, Method::Bye);
    assert_eq!(bye.content_length(), Some(0));

    // To the callee: the mirror, at its Contact.
    assert_eq!(to_b.0, udp(&bb));
    let bye = &to_b.1;
    assert_eq!(
        bye.request_uri().unwrap().as_str(),
        format!("sip:1002@{bb}")
    );
    assert_eq!(header(bye, HeaderName::From), header(&ok, HeaderName::From));
    assert_eq!(header(bye, HeaderName::To), header(&ok, HeaderName::To));
    assert_eq!(bye.routes().count(), 0);
    assert_eq!(bye.cseq().seq, hangup::BYE_CSEQ);
    assert_ne!(
        to_a.1.top_via().branch(),
        bye.top_via().branch(),
        "a transaction each"
    );
    assert_eq!(b.proxy.metrics().sessions_expired, 1);
    assert_eq!(b.proxy.metrics().sessions_bye_sent, 2);

    // The callee answers; the caller does not: its BYE is retransmitted
    // (timer E) until timer F, then counted as failed. Neither reopens
    // anything.
    let answered = b.send(&bb, &answer(&to_b.1, 200, "t2"));
    assert!(answered.is_empty(), "the answer ends at the blade");
    let again = byes(&b.advance(Duration::from_millis(600)));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, udp(&a));
    assert_eq!(again[0].1.as_bytes(), to_a.1.as_bytes(), "the same BYE");
    b.advance(Duration::from_secs(40));
    assert_eq!(b.proxy.own_byes_open(), 0);
    assert_eq!(b.proxy.metrics().sessions_bye_failed, 1);
    assert!(b.proxy.snapshot().sessions.is_empty());
    assert_eq!((b.state("1001"), b.state("1002")), ("ready", "ready"));
    assert_eq!(b.proxy.transactions(), 0);
}

#[test]
fn the_blades_bye_to_a_caller_behind_a_proxy_follows_its_route_set() {
    let mut b = Blade::new(false, 100);
    // A hop before the blade record-routed the INVITE: the caller is
    // reached through it (RFC 3261 §12.1.2), the callee directly.
    let rr = "Record-Route: <sip:127.0.0.99:5070;lr;x=1>\r\n";
    answered_call_lasting(&mut b, Duration::from_secs(10), rr);
    let sent = byes(&b.advance(Duration::from_secs(10)));
    assert_eq!(sent.len(), 2);
    let (to_a, to_b) = (&sent[0], &sent[1]);
    assert_eq!(to_a.0, udp("127.0.0.99:5070"));
    let routes: Vec<String> = to_a.1.routes().map(|r| r.uri().as_str().into()).collect();
    assert_eq!(routes, ["sip:127.0.0.99:5070;lr;x=1"]);
    assert_eq!(
        to_a.1.request_uri().unwrap().as_str(),
        format!("sip:1001@{}", terminal("1001"))
    );
    assert_eq!(to_b.0, udp(&terminal("1002")));
    assert_eq!(to_b.1.routes().count(), 0);
}

#[test]
fn a_session_ended_by_its_own_bye_or_never_answered_gets_no_bye_of_the_blades() {
    let mut b = Blade::new(false, 100);
    let ok = answered_call_lasting(&mut b, Duration::from_secs(10), "");
    let a = terminal("1001");
    let bye = b.send(&a, &in_dialog("BYE", "1001", &ok, 2, "z9hG4bKb1"));
    b.send(&terminal("1002"), &answer(&parse(&bye[0]), 200, "t2"));
    assert!(byes(&b.advance(Duration::from_secs(20))).is_empty());

    // Ringing when its time runs out: a transaction matter, no dialog.
    let out = b.send(&a, &invite("1001", "1002", "ringing", "z9hG4bKi9", ""));
    let fwd = parse(&out[1]);
    b.send(&terminal("1002"), &answer(&fwd, 180, "t9"));
    let out = b.advance(Duration::from_secs(11));
    assert!(byes(&out).is_empty());
    assert_eq!(b.proxy.metrics().sessions_expired, 1);
    assert_eq!(b.proxy.metrics().sessions_bye_sent, 0);
}

/// A request from the callee of the call whose INVITE reached it as `fwd`
/// (answered with To tag `t2`), along its route set, with `contact`.
fn from_callee(method: &str, fwd: &Message, cseq: u32, branch: &str, contact: &str) -> String {
    let from = terminal("1002");
    let target = fwd.contacts().next().unwrap().uri().as_str().to_owned();
    let routes: Vec<String> = fwd
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch={branch}\r\nRoute: {}\r\n\
         Max-Forwards: 70\r\nFrom: {};tag=t2\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n\
         Contact: {contact}\r\nContent-Length: 0\r\n\r\n",
        routes.join(", "),
        header(fwd, crate::sip::HeaderName::To),
        header(fwd, crate::sip::HeaderName::From),
        fwd.call_id(),
    )
}

/// A 200 to `req` with `contact`.
fn ok_with_contact(req: &Message, contact: &str) -> String {
    let mut buf = bytes::BytesMut::new();
    req.response(200, "OK", None, &[("Contact", contact)], &mut buf);
    String::from_utf8(buf.to_vec()).unwrap()
}

/// Target refresh (RFC 3261 §12.2): the callee re-INVITEs from a new
/// socket with a new Contact, the caller answers with a new Contact too,
/// and then each moves again with an UPDATE. The blade's own BYEs, when
/// the call outlives `max_call`, go to each party's latest Contact: the
/// sender of a refresh where it sent it from, the responder at its 2xx's
/// Contact. A refresh that keeps the Contact changes nothing.
#[test]
fn the_blades_bye_follows_target_refreshes_of_either_party() {
    let mut b = Blade::new(false, 100);
    b.proxy.settings.max_call = Duration::from_secs(60);
    b.register("1001");
    b.register("1002");
    let a = terminal("1001");
    let fwd = parse(&b.send(&a, &invite("1001", "1002", "c1", "z9hG4bKi1", ""))[1]);
    let ok = parse(&b.send(&terminal("1002"), &answer(&fwd, 200, "t2"))[0]);
    b.send(&a, &in_dialog("ACK", "1001", &ok, 1, "z9hG4bKa1"));

    // 1002 moves to a new socket: its re-INVITE comes from there.
    let b2 = "127.0.0.12:6102";
    let reinvite = from_callee("INVITE", &fwd, 2, "z9hG4bKm2", &format!("<sip:1002@{b2}>"));
    let out = b.send(b2, &reinvite);
    let (to, relayed) = (out.last().unwrap().to, parse(out.last().unwrap()));
    assert_eq!((to, relayed.method()), (udp(&a), Some(Method::Invite)));
    // 1001 answers with a new Contact (another socket of its own).
    let a2 = "127.0.0.11:6101";
    let out = b.send(&a, &ok_with_contact(&relayed, &format!("<sip:1001@{a2}>")));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].to, udp(b2), "the 200 goes back to the new socket");

    let sent = byes(&b.advance(Duration::from_secs(60)));
    assert_eq!(sent.len(), 2);
    let (to_a, to_b) = (&sent[0], &sent[1]);
    assert_eq!(to_a.0, udp(a2), "the 2xx's Contact");
    assert_eq!(
        to_a.1.request_uri().unwrap().as_str(),
        format!("sip:1001@{a2}")
    );
    assert_eq!(to_b.0, udp(b2), "where the re-INVITE came from");
    assert_eq!(
        to_b.1.request_uri().unwrap().as_str(),
        format!("sip:1002@{b2}")
    );
    assert_eq!(to_a.1.to().tag(), Some("f1001"));
    assert_eq!(to_b.1.to().tag(), Some("t2"));
}

/// An UPDATE refreshes the target as a re-INVITE does; one whose Contact
/// is the one kept, or a request that is no refresh (INFO), changes
/// nothing.
#[test]
fn an_update_refreshes_the_target_and_other_requests_do_not() {
    let mut b = Blade::new(false, 100);
    b.proxy.settings.max_call = Duration::from_secs(60);
    b.register("1001");
    b.register("1002");
    let (a, bb) = (terminal("1001"), terminal("1002"));
    let fwd = parse(&b.send(&a, &invite("1001", "1002", "c1", "z9hG4bKi1", ""))[1]);
    let ok = parse(&b.send(&bb, &answer(&fwd, 200, "t2"))[0]);
    b.send(&a, &in_dialog("ACK", "1001", &ok, 1, "z9hG4bKa1"));

    // INFO with another Contact: not a target refresh.
    let elsewhere = "127.0.0.12:6202";
    let info = from_callee(
        "INFO",
        &fwd,
        2,
        "z9hG4bKn2",
        &format!("<sip:1002@{elsewhere}>"),
    );
    let out = b.send(elsewhere, &info);
    b.send(
        &a,
        &ok_with_contact(&parse(&out[0]), &format!("<sip:1001@{a}>")),
    );
    // An UPDATE from the caller's own socket with its own Contact.
    let update = in_dialog("UPDATE", "1001", &ok, 2, "z9hG4bKu2").replace(
        "Content-Length",
        &format!("Contact: <sip:1001@{a}>\r\nContent-Length"),
    );
    let out = b.send(&a, &update);
    let relayed = parse(&out[0]);
    assert_eq!(relayed.method(), Some(Method::Update));
    // The callee answers from its new socket, with that Contact.
    let b2 = "127.0.0.12:6302";
    b.send(b2, &ok_with_contact(&relayed, &format!("<sip:1002@{b2}>")));

    let sent = byes(&b.advance(Duration::from_secs(60)));
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].0, udp(&a));
    assert_eq!(
        sent[0].1.request_uri().unwrap().as_str(),
        format!("sip:1001@{a}")
    );
    assert_eq!(sent[1].0, udp(b2), "the UPDATE's 2xx moved the callee");
    assert_eq!(
        sent[1].1.request_uri().unwrap().as_str(),
        format!("sip:1002@{b2}")
    );
}

/// Fuzzing (target `proxy`) found: a second INVITE with a live call's
/// Call-ID, to another agent, replaced that call's session, so when both
/// calls ended the first callee stayed in_call for good.
#[test]
fn a_new_call_under_a_live_calls_call_id_is_refused() {
    let mut b = Blade::new(false, 100);
    for ext in ["1001", "1002", "1003"] {
        b.register(ext);
    }
    let a = terminal("1001");
    let out = b.send(&a, &invite("1001", "1002", "c1", "z9hG4bKa", ""));
    assert_eq!(out[1].to, udp(&terminal("1002")));
    let out = b.send(&a, &invite("1001", "1003", "c1", "z9hG4bKb", ""));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(status(&out[0]), 400);
    assert_eq!(b.state("1003"), "ready");
    // The first call is never answered: timer B, then C, end it.
    b.advance(Duration::from_secs(400));
    assert_eq!(b.state("1002"), "ready");
    assert_eq!(b.state("1001"), "ready");
}

/// An agent registered over TCP from behind NAT: its Contact names its
/// private address, its connection comes from the NAT's public one. The
/// INVITE goes out on that connection, filed under the Contact's address;
/// the callee's answers come back on the same connection, from the public
/// address, and are relayed. A response from a third address under the
/// same branch is still dropped.
#[test]
fn a_tcp_agent_behind_nat_is_heard_on_its_connection() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    let conn = Some(crate::sip::ConnId { core: 0, id: 7 });
    let nat = Peer {
        addr: addr("127.0.0.50:40000"),
        transport: crate::sip::Transport::Tcp,
        conn,
    };
    let private = "10.0.0.5:5060";
    let register = format!(
        "REGISTER sip:cc.example SIP/2.0\r\nVia: SIP/2.0/TCP {private};branch=z9hG4bKrn\r\n\
         From: <sip:1002@cc.example>;tag=r\r\nTo: <sip:1002@cc.example>\r\nCall-ID: regnat\r\n\
         CSeq: 1 REGISTER\r\nContact: <sip:1002@{private};transport=tcp>\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(status(&b.send_on(nat, &register)[0]), 200);
    let a = terminal("1001");
    let out = b.send(&a, &invite("1001", "1002", "natcall", "z9hG4bKin", ""));
    let fwd = parse(&out[1]);
    assert_eq!(out[1].to.conn, conn, "on the agent's connection");
    assert_eq!(out[1].to.addr, addr(private));

    let forged = b.send("127.0.0.66:5001", &answer(&fwd, 486, "x"));
    assert!(forged.is_empty(), "a third address is not heard");
    let ringing = b.send_on(nat, &answer(&fwd, 180, "t2"));
    assert_eq!(ringing.len(), 1, "the 180 on the connection is relayed");
    assert_eq!(status(&ringing[0]), 180);
    let ok = b.send_on(nat, &answer(&fwd, 200, "t2"));
    assert_eq!(status(&ok[0]), 200);
    assert_eq!(ok[0].to, udp(&a));
    assert_eq!((b.state("1001"), b.state("1002")), ("in_call", "in_call"));
}

/// A caller behind NAT on TCP whose INVITE's Contact (its private
/// address, on another port than it registered) is no binding: the
/// callee's BYE goes to that Contact on the connection the caller called
/// on, the one way to reach it, and its 200 there counts.
#[test]
fn a_tcp_caller_behind_nat_gets_the_callees_bye_on_its_connection() {
    let mut b = Blade::new(false, 100);
    b.register("1001");
    let conn = Some(crate::sip::ConnId { core: 0, id: 9 });
    let nat = Peer {
        addr: addr("127.0.0.50:40002"),
        transport: crate::sip::Transport::Tcp,
        conn,
    };
    let register = "REGISTER sip:cc.example SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bKrn\r\n\
         From: <sip:1002@cc.example>;tag=r\r\nTo: <sip:1002@cc.example>\r\nCall-ID: regnat\r\n\
         CSeq: 1 REGISTER\r\nContact: <sip:1002@10.0.0.5:5060;transport=tcp>\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(status(&b.send_on(nat, register)[0]), 200);
    let contact = "sip:1002@10.0.0.5:5062;transport=tcp";
    let invite = format!(
        "INVITE sip:1001@cc.example SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.5:5062;branch=z9hG4bKnat\r\n\
         Max-Forwards: 70\r\nFrom: <sip:1002@cc.example>;tag=fnat\r\nTo: <sip:1001@cc.example>\r\n\
         Call-ID: natcaller\r\nCSeq: 1 INVITE\r\nContact: <{contact}>\r\nContent-Length: 0\r\n\r\n"
    );
    let out = b.send_on(nat, &invite);
    let fwd = parse(&out[1]);
    let callee = terminal("1001");
    assert_eq!(status(&b.send(&callee, &answer(&fwd, 200, "t2"))[0]), 200);

    let bye = from_callee("BYE", &fwd, 1, "z9hG4bKbnat", &format!("sip:1001@{callee}"));
    let out = b.send(&callee, &bye);
    assert_eq!(out.len(), 1);
    assert_eq!(parse(&out[0]).request_uri().unwrap().as_str(), contact);
    assert_eq!(out[0].to.addr, addr("10.0.0.5:5062"));
    assert_eq!(out[0].to.conn, conn, "on the caller's connection");
    let done = b.send_on(nat, &answer(&parse(&out[0]), 200, "fnat"));
    assert_eq!(status(&done[0]), 200, "the 200 on the connection counts");
    assert_eq!((b.state("1001"), b.state("1002")), ("ready", "ready"));
}

#[test]
fn a_domain_that_is_an_ip_literal_is_known_in_any_spelling() {
    let settings = Settings {
        blade_id: "blade-1".into(),
        domain: "[2001:db8::10]".into(),
        local: addr(BLADE),
        auth: false,
        core: 0,
        cores: 1,
        timers: TimerConfig::default(),
        max_transactions: 1000,
        cluster: None,
        via_port: None,
        core_ports: Vec::new(),
        max_call: Duration::from_secs(4 * 3600),
    };
    let mut blade = Blade {
        proxy: proxy_with_agents(settings, &["1001"]),
        now: Duration::ZERO,
        sent: Vec::new(),
    };
    let t = terminal("1001");
    let hosts = [
        ("[2001:db8::10]", 200),
        ("[2001:DB8:0:0:0:0:0:10]", 200),
        ("[2001:db8:0::0010]", 200),
        ("[2001:db8::11]", 404),
    ];
    for (cseq, (host, want)) in hosts.into_iter().enumerate() {
        let text = format!(
            "REGISTER sip:{host} SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bKd{cseq}\r\n\
             From: <sip:1001@{host}>;tag=r\r\nTo: <sip:1001@{host}>\r\nCall-ID: regd\r\n\
             CSeq: {} REGISTER\r\nContact: <sip:1001@{t}>\r\nContent-Length: 0\r\n\r\n",
            cseq + 1
        );
        let out = blade.send(&t, &text);
        assert_eq!(status(&out[0]), want, "{host}");
    }
}
