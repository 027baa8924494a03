//! Whole SIP dialogs through one blade and across two (RFC 3261 §12-17):
//! reliable provisionals and PRACK, early UPDATE, re-INVITE from either
//! side and glare, INFO and OPTIONS in a dialog, the callee's BYE and its
//! retransmission, CANCEL racing the answer, SUBSCRIBE / NOTIFY, REFER and
//! MESSAGE; an attended transfer (REFER, then an INVITE with Replaces);
//! and after each flow, every agent ready and no session left.
//!
//! Addresses: blades on 127.0.0.140-149 (a cluster on a pair of its own;
//! the transfer's cluster on 127.0.0.164-165), phones on 127.0.0.150-169.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::{Call, TestBlade, Ua, aor, branch, first_line, header};
use sipblade::runtime::Options;
use sipblade::sip::{HeaderName, Message, Method};

/// The To tag of every callee.
const CALLEE_TAG: &str = "callee-tag";

/// Long enough to see that a message does not arrive: every message
/// crosses loopback in well under a millisecond, and a proxy's own
/// retransmission (T1, 500 ms) would not be mistaken for a relayed one.
const QUIET: Duration = Duration::from_millis(300);

/// The single blades' address (each on a port of its own).
const BLADE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 144);

/// The phone of `ext` on 127.0.0.(150 + n).
fn phone(blade: SocketAddr, ext: &str, n: u8) -> Ua {
    Ua::new_at(blade, ext, Ipv4Addr::new(127, 0, 0, 150 + n))
}

/// The phone of `ext` on 127.0.0.(150 + n), registered.
fn registered(blade: SocketAddr, ext: &str, n: u8) -> Ua {
    let mut ua = phone(blade, ext, n);
    let ok = ua.register(3600);
    assert_eq!(
        ok.status(),
        Some(200),
        "{ext} registers: {}",
        first_line(&ok)
    );
    ua
}

/// A blade with `cores` cores and auth off, on [`BLADE_IP`].
fn blade(cores: usize) -> TestBlade {
    TestBlade::start_at(cores, false, Options::default(), "", BLADE_IP)
}

/// A small SDP offer or answer from `ua`, version `v`.
fn sdp(ua: &Ua, v: u32) -> String {
    format!(
        "v=0\r\no={} 1 {v} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
        ua.ext,
        ip = ua.addr.ip()
    )
}

/// One side of a dialog as a UA keeps it (RFC 3261 §12.1): its From and
/// To header values, the remote target, the route set and its CSeq.
#[derive(Debug, Clone)]
struct Side {
    call_id: String,
    local: String,
    remote: String,
    target: String,
    routes: Vec<String>,
    cseq: u32,
}

impl Side {
    /// The caller's side, from its [`Call`] once the dialog is known (a
    /// 101-299 response learnt).
    fn caller(ua: &Ua, call: &Call) -> Side {
        Side {
            call_id: call.call_id.clone(),
            local: format!("<{}>;tag={}", aor(&ua.ext), call.from_tag),
            remote: call.to.clone().expect("a To tag"),
            target: call.target.clone().expect("a remote target"),
            routes: call.routes.clone(),
            cseq: call.cseq,
        }
    }

    /// The caller's side learnt from a reliable provisional (the early
    /// dialog: its Contact and Record-Route make the target and routes).
    fn caller_early(ua: &Ua, call: &Call, resp: &Message) -> Side {
        let mut routes: Vec<String> = resp
            .record_routes()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .collect();
        routes.reverse();
        Side {
            call_id: call.call_id.clone(),
            local: format!("<{}>;tag={}", aor(&ua.ext), call.from_tag),
            remote: header(resp, HeaderName::To).expect("a To"),
            target: resp
                .contacts()
                .next()
                .map(|c| c.uri().as_str().to_owned())
                .expect("a Contact"),
            routes,
            cseq: call.cseq,
        }
    }

    /// The callee's side of the dialog `request` (INVITE, SUBSCRIBE or
    /// REFER) opens, answered with [`CALLEE_TAG`].
    fn callee(request: &Message) -> Side {
        Side {
            call_id: request.call_id().to_owned(),
            local: format!(
                "{};tag={CALLEE_TAG}",
                header(request, HeaderName::To).expect("a To")
            ),
            remote: header(request, HeaderName::From).expect("a From"),
            target: request
                .contacts()
                .next()
                .map(|c| c.uri().as_str().to_owned())
                .expect("a Contact"),
            routes: request
                .record_routes()
                .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
                .collect(),
            cseq: 0,
        }
    }

    /// A request in this dialog from `ua` with the next CSeq (an ACK
    /// keeps the last), a fresh branch, `extra` header lines and `body`.
    fn request(&mut self, ua: &Ua, method: &str, extra: &str, body: &str) -> String {
        if method != "ACK" {
            self.cseq += 1;
        }
        self.request_with_cseq(ua, method, self.cseq, &branch(), extra, body)
    }

    fn request_with_cseq(
        &self,
        ua: &Ua,
        method: &str,
        cseq: u32,
        branch: &str,
        extra: &str,
        body: &str,
    ) -> String {
        let route = if self.routes.is_empty() {
            String::new()
        } else {
            format!("Route: {}\r\n", self.routes.join(", "))
        };
        let content_type = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{method} {} SIP/2.0\r\n{}{route}Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <{}>\r\n{extra}{content_type}\
             Content-Length: {}\r\n\r\n{body}",
            self.target,
            ua.via(branch),
            self.local,
            self.remote,
            self.call_id,
            ua.contact_uri(),
            body.len(),
        )
    }
}

/// The response `status` to `req` as a UAS sends it: Via, From, Call-ID
/// and CSeq copied, To with [`CALLEE_TAG`] when it has none; for a
/// dialog-creating request (INVITE 101-299, SUBSCRIBE, REFER 2xx) the
/// Record-Route and our Contact; `extra` lines and `body`.
fn respond(ua: &Ua, req: &Message, status: u16, reason: &str, extra: &str, body: &str) -> String {
    let text = response_text(ua, req, status, reason, extra, body);
    ua.send(&text);
    text
}

/// The response [`respond`] sends.
fn response_text(
    ua: &Ua,
    req: &Message,
    status: u16,
    reason: &str,
    extra: &str,
    body: &str,
) -> String {
    let creates = match req.method() {
        Some(Method::Invite) => (101..300).contains(&status),
        Some(Method::Subscribe | Method::Refer) => (200..300).contains(&status),
        _ => false,
    };
    let mut text = format!("SIP/2.0 {status} {reason}\r\n");
    for h in req.headers() {
        let value = String::from_utf8_lossy(h.value);
        match h.kind {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                text.push_str(&format!("{}: {value}\r\n", h.name));
            }
            HeaderName::RecordRoute if creates => {
                text.push_str(&format!("Record-Route: {value}\r\n"));
            }
            HeaderName::To => {
                let tag = if req.to().tag().is_none() {
                    format!(";tag={CALLEE_TAG}")
                } else {
                    String::new()
                };
                text.push_str(&format!("To: {value}{tag}\r\n"));
            }
            _ => {}
        }
    }
    if creates || req.method() == Some(Method::Invite) && status < 300 {
        text.push_str(&format!("Contact: <{}>\r\n", ua.contact_uri()));
    }
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    text.push_str(&format!(
        "{extra}{content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    text
}

/// Every datagram that reaches `ua` within `window` and starts with
/// `prefix`, retransmissions included (no deduplication).
fn raw_count(ua: &mut Ua, window: Duration, prefix: &str) -> usize {
    let deadline = Instant::now() + window;
    let mut n = 0;
    while let Some(data) = ua.recv_raw(deadline.saturating_duration_since(Instant::now())) {
        if data.starts_with(prefix.as_bytes()) {
            n += 1;
        }
    }
    n
}

/// The next request `method` of `call_id` at `ua`, checked to have come
/// through every proxy with its Route popped.
fn routed(ua: &mut Ua, method: Method, call_id: &str, hops: usize) -> Message {
    let req = ua.request(method, call_id);
    assert_eq!(
        req.routes().count(),
        0,
        "every blade popped its Route: {req:?}"
    );
    assert_eq!(req.vias().count(), hops + 1, "one Via per hop: {req:?}");
    assert_eq!(req.max_forwards(), Some(70 - hops as u8), "{req:?}");
    req
}

/// The final response to `method` of `call_id` at `ua`.
fn answer_of(ua: &mut Ua, call_id: &str, method: Method) -> u16 {
    let resp = ua.response(call_id, method);
    assert_eq!(resp.vias().count(), 1, "the blades removed their Vias");
    resp.status().unwrap_or(0)
}

/// A dialog from 1001 (`a`) to 1002 (`b`) through `hops` blades, with
/// the INVITE retransmitted (absorbed by the first blade), a reliable 183 (retransmitted by the callee: every copy reaches the
/// caller), PRACK, an UPDATE in the early dialog, the 200 (retransmitted
/// until the ACK: every copy reaches the caller), INFO, an OPTIONS from
/// the callee, a re-INVITE from each side, a glare of two re-INVITEs
/// (491 each way, each 491's ACK absorbed hop by hop), and the callee's
/// BYE, retransmitted.
fn full_dialog(a: &mut Ua, b: &mut Ua, hops: usize) -> String {
    let mut call = a.call("1002");
    a.invite(&mut call, "Supported: 100rel\r\n");
    let invite = routed(b, Method::Invite, &call.call_id, hops);
    assert_eq!(invite.record_routes().count(), hops, "each blade RRs");
    // A retransmission of the INVITE is absorbed by the first blade, which
    // answers it with its 100 Trying again (RFC 3261 §17.2.1). Waiting for
    // that second 100 keeps the retransmission from reaching the blade
    // after the 183 below, which it would then send again (a loaded
    // machine made that race).
    a.retransmit_invite(&call);
    // The two copies are byte for byte the same, so they are read raw.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut trying = 0;
    while trying < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let data = a
            .recv_raw(left)
            .expect("the 100 Trying, then again for the retransmission");
        if data.starts_with(b"SIP/2.0 100 ") {
            trying += 1;
        }
    }
    let mut bs = Side::callee(&invite);

    // A reliable 183 (RFC 3262), retransmitted twice by the UAS over UDP.
    let early = respond(
        b,
        &invite,
        183,
        "Session Progress",
        "Require: 100rel\r\nRSeq: 1\r\n",
        &sdp(b, 1),
    );
    b.send(&early);
    b.send(&early);
    let progress = a.response(&call.call_id, Method::Invite);
    assert_eq!(progress.status(), Some(183), "{}", first_line(&progress));
    // Two more copies: the proxies pass each provisional (§16.7 step 5).
    assert_eq!(
        raw_count(a, QUIET, "SIP/2.0 183"),
        2,
        "each retransmitted reliable 183 reaches the caller"
    );
    let again = b.collect_where(QUIET, |m| m.method() == Some(Method::Invite));
    assert!(again.is_empty(), "the INVITE went on twice: {again:?}");
    let mut aside = Side::caller_early(a, &call, &progress);
    assert_eq!(aside.routes.len(), hops);

    let prack = aside.request(a, "PRACK", "RAck: 1 1 INVITE\r\n", "");
    a.send(&prack);
    let got = routed(b, Method::Prack, &call.call_id, hops);
    respond(b, &got, 200, "OK", "", "");
    assert_eq!(answer_of(a, &call.call_id, Method::Prack), 200);

    let update = aside.request(a, "UPDATE", "", &sdp(a, 2));
    a.send(&update);
    let got = routed(b, Method::Update, &call.call_id, hops);
    assert_eq!(got.body(), sdp(a, 2).as_bytes(), "the offer intact");
    respond(b, &got, 200, "OK", "", &sdp(b, 2));
    assert_eq!(answer_of(a, &call.call_id, Method::Update), 200);

    // The 200, retransmitted until the ACK (§13.3.1.4): every copy must
    // reach the caller, whose ACK alone stops them.
    let ok = respond(b, &invite, 200, "OK", "", &sdp(b, 3));
    let first = a.response(&call.call_id, Method::Invite);
    assert_eq!(first.status(), Some(200), "{}", first_line(&first));
    call.learn(&first);
    b.send(&ok);
    b.send(&ok);
    assert_eq!(
        raw_count(a, QUIET, "SIP/2.0 200"),
        2,
        "each 200 retransmission reaches the caller"
    );
    a.ack_2xx(&call);
    let ack = routed(b, Method::Ack, &call.call_id, hops);
    assert_eq!(ack.cseq().seq, 1);
    let mut aside = Side {
        cseq: aside.cseq,
        ..Side::caller(a, &call)
    };

    let info = aside.request(a, "INFO", "Content-Type: application/dtmf-relay\r\n", "");
    a.send(&info);
    let got = routed(b, Method::Info, &call.call_id, hops);
    respond(b, &got, 200, "OK", "", "");
    assert_eq!(answer_of(a, &call.call_id, Method::Info), 200);

    let options = bs.request(b, "OPTIONS", "", "");
    b.send(&options);
    let got = routed(a, Method::Options, &call.call_id, hops);
    assert_eq!(got.request_uri().unwrap().as_str(), a.contact_uri());
    respond(a, &got, 200, "OK", "", "");
    assert_eq!(answer_of(b, &call.call_id, Method::Options), 200);

    // A re-INVITE from the callee (hold), and one from the caller.
    let reinvite = bs.request(b, "INVITE", "", &sdp(b, 4));
    b.send(&reinvite);
    let got = routed(a, Method::Invite, &call.call_id, hops);
    assert_eq!(got.body(), sdp(b, 4).as_bytes());
    respond(a, &got, 200, "OK", "", &sdp(a, 4));
    assert_eq!(answer_of(b, &call.call_id, Method::Invite), 200);
    b.send(bs.request(b, "ACK", "", ""));
    routed(a, Method::Ack, &call.call_id, hops);

    let reinvite = aside.request(a, "INVITE", "", &sdp(a, 5));
    a.send(&reinvite);
    let got = routed(b, Method::Invite, &call.call_id, hops);
    respond(b, &got, 200, "OK", "", &sdp(b, 5));
    assert_eq!(answer_of(a, &call.call_id, Method::Invite), 200);
    a.send(aside.request(a, "ACK", "", ""));
    routed(b, Method::Ack, &call.call_id, hops);

    // Glare: both re-INVITE at once, both answer 491 (RFC 3261 §14.1).
    let from_a = aside.request(a, "INVITE", "", &sdp(a, 6));
    let from_b = bs.request(b, "INVITE", "", &sdp(b, 6));
    a.send(&from_a);
    b.send(&from_b);
    let at_b = routed(b, Method::Invite, &call.call_id, hops);
    let at_a = routed(a, Method::Invite, &call.call_id, hops);
    respond(b, &at_b, 491, "Request Pending", "", "");
    respond(a, &at_a, 491, "Request Pending", "", "");
    let to_a = a.response(&call.call_id, Method::Invite);
    let to_b = b.response(&call.call_id, Method::Invite);
    assert_eq!((to_a.status(), to_b.status()), (Some(491), Some(491)));
    // The ACK of a 491 is hop by hop: each phone gets the nearest blade's
    // ACK (its one Via), and its own ACK goes no further than the blade.
    for (ua, sent, side) in [(&mut *a, &from_a, &aside), (&mut *b, &from_b, &bs)] {
        let ack = ua.request(Method::Ack, &call.call_id);
        assert_eq!(ack.vias().count(), 1, "the blade's own ACK: {ack:?}");
        let sent = Message::parse(bytes::Bytes::from(sent.clone())).expect("our re-INVITE");
        let ack = side.request_with_cseq(
            ua,
            "ACK",
            side.cseq,
            sent.top_via().branch().unwrap_or_default(),
            "",
            "",
        );
        ua.send(ack);
    }
    for ua in [&mut *a, &mut *b] {
        let stray = ua.collect_where(QUIET, |m| m.method() == Some(Method::Ack));
        assert!(stray.is_empty(), "a 491's ACK went end to end: {stray:?}");
    }

    // The callee hangs up, and retransmits its BYE (the 200 was "lost").
    let bye = bs.request(b, "BYE", "", "");
    b.send(&bye);
    let got = routed(a, Method::Bye, &call.call_id, hops);
    respond(a, &got, 200, "OK", "", "");
    assert_eq!(answer_of(b, &call.call_id, Method::Bye), 200);
    b.send(&bye);
    let again = raw_count(b, QUIET, "SIP/2.0 200");
    assert_eq!(again, 1, "the retransmitted BYE is answered again");
    call.call_id
}

#[test]
fn a_whole_dialog_through_one_blade() {
    let blade = blade(2);
    let mut a = registered(blade.sip, "1001", 0);
    let mut b = registered(blade.sip, "1002", 1);
    full_dialog(&mut a, &mut b, 1);
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    blade.wait_no_sessions();
}

#[test]
fn a_whole_dialog_across_two_blades() {
    let cluster = TestCluster::start(2, 140);
    let (s, t) = (0, 1);
    let mut a = registered(cluster.members[s].sip, "1001", 2);
    let mut b = registered(cluster.members[t].sip, "1002", 3);
    full_dialog(&mut a, &mut b, 2);
    cluster.wait_state(s, "1001", "ready");
    cluster.wait_state(t, "1002", "ready");
    assert!(cluster.sessions(s).is_empty() && cluster.sessions(t).is_empty());
}

/// `sipblade_calls_total{outcome, route}` at `admin`.
fn calls(admin: SocketAddr, outcome: &str, route: &str) -> f64 {
    common::metric(
        admin,
        &format!("sipblade_calls_total{{outcome=\"{outcome}\",route=\"{route}\"}}"),
    )
}

/// The caller's CANCEL crosses the callee's 200 (RFC 3261 §9.1): the
/// callee answers the INVITE 200 before it sees the CANCEL, which it then
/// answers 200 without effect. The call goes on: the caller gets the 200
/// and ACKs it, both agents are in the call, and it counts as answered,
/// not cancelled.
fn cancel_crossing_the_200(a: &mut Ua, b: &mut Ua, hops: usize) -> Call {
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = routed(b, Method::Invite, &call.call_id, hops);
    respond(b, &invite, 180, "Ringing", "", "");
    assert_eq!(answer_of(a, &call.call_id, Method::Invite), 180);
    a.cancel(&call);
    assert_eq!(answer_of(a, &call.call_id, Method::Cancel), 200);
    let cancel = b.request(Method::Cancel, &call.call_id);
    // The callee had answered already; the CANCEL changes nothing.
    respond(b, &invite, 200, "OK", "", &sdp(b, 1));
    respond(b, &cancel, 200, "OK", "", "");
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    a.ack_2xx(&call);
    routed(b, Method::Ack, &call.call_id, hops);
    call
}

/// The caller's CANCEL reaches the blade after the callee's 200 went
/// through it: the blade answers the CANCEL 200 (§16.10: the transaction
/// exists) and sends nothing downstream; the call goes on.
fn cancel_after_the_200(a: &mut Ua, b: &mut Ua, hops: usize) -> Call {
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = routed(b, Method::Invite, &call.call_id, hops);
    respond(b, &invite, 200, "OK", "", &sdp(b, 1));
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200));
    call.learn(&ok);
    a.cancel(&call);
    assert_eq!(answer_of(a, &call.call_id, Method::Cancel), 200);
    let cancels = b.collect_where(QUIET, |m| m.method() == Some(Method::Cancel));
    assert!(cancels.is_empty(), "a CANCEL after the 200: {cancels:?}");
    a.ack_2xx(&call);
    routed(b, Method::Ack, &call.call_id, hops);
    call
}

/// A CANCEL before any provisional waits for one (§9.1), then the callee
/// answers 487, which the blades ACK hop by hop and the caller gets.
fn cancel_before_any_provisional(a: &mut Ua, b: &mut Ua, hops: usize) {
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = routed(b, Method::Invite, &call.call_id, hops);
    a.cancel(&call);
    assert_eq!(answer_of(a, &call.call_id, Method::Cancel), 200);
    respond(b, &invite, 180, "Ringing", "", "");
    let cancel = b.request(Method::Cancel, &call.call_id);
    respond(b, &cancel, 200, "OK", "", "");
    respond(b, &invite, 487, "Request Terminated", "", "");
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.vias().count(), 1, "the last blade's own ACK");
    let resp = loop {
        let resp = a.response(&call.call_id, Method::Invite);
        if resp.status() != Some(180) {
            break resp;
        }
    };
    assert_eq!(resp.status(), Some(487), "{}", first_line(&resp));
    a.ack_failure(&call, &resp);
    let acks = b.collect_where(QUIET, |m| m.method() == Some(Method::Ack));
    assert!(
        acks.is_empty(),
        "the caller's ACK of a 487 went on: {acks:?}"
    );
}

/// A CANCEL that matches no INVITE is answered 481.
fn cancel_of_nothing(a: &mut Ua) {
    let mut call = a.call("1002");
    a.invite_text(&mut call, "");
    a.cancel(&call);
    assert_eq!(answer_of(a, &call.call_id, Method::Cancel), 481);
}

#[test]
fn cancel_races_through_one_blade() {
    let blade = blade(2);
    let mut a = registered(blade.sip, "1001", 4);
    let mut b = registered(blade.sip, "1002", 5);

    let mut call = cancel_crossing_the_200(&mut a, &mut b, 1);
    blade.wait_state("1001", "in_call");
    blade.wait_state("1002", "in_call");
    a.bye(&mut call);
    let bye = routed(&mut b, Method::Bye, &call.call_id, 1);
    respond(&b, &bye, 200, "OK", "", "");
    assert_eq!(answer_of(&mut a, &call.call_id, Method::Bye), 200);
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    assert_eq!(calls(blade.admin, "answered", "local"), 1.0);
    assert_eq!(calls(blade.admin, "cancelled", "local"), 0.0);

    let mut call = cancel_after_the_200(&mut a, &mut b, 1);
    blade.wait_state("1002", "in_call");
    a.bye(&mut call);
    let bye = routed(&mut b, Method::Bye, &call.call_id, 1);
    respond(&b, &bye, 200, "OK", "", "");
    assert_eq!(answer_of(&mut a, &call.call_id, Method::Bye), 200);
    blade.wait_state("1002", "ready");

    cancel_before_any_provisional(&mut a, &mut b, 1);
    cancel_of_nothing(&mut a);
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    blade.wait_no_sessions();
    assert_eq!(calls(blade.admin, "answered", "local"), 2.0);
    assert_eq!(calls(blade.admin, "cancelled", "local"), 1.0);
}

#[test]
fn cancel_races_across_two_blades() {
    let cluster = TestCluster::start(2, 142);
    let (s, t) = (0, 1);
    let mut a = registered(cluster.members[s].sip, "1001", 6);
    let mut b = registered(cluster.members[t].sip, "1002", 7);

    let mut call = cancel_crossing_the_200(&mut a, &mut b, 2);
    cluster.wait_state(t, "1002", "hosted");
    cluster.wait_state(s, "1001", "in_call");
    a.bye(&mut call);
    let bye = routed(&mut b, Method::Bye, &call.call_id, 2);
    respond(&b, &bye, 200, "OK", "", "");
    assert_eq!(answer_of(&mut a, &call.call_id, Method::Bye), 200);
    cluster.wait_state(t, "1002", "ready");
    cluster.wait_state(s, "1001", "ready");
    assert_eq!(calls(cluster.admin(s), "answered", "cross_blade"), 1.0);
    assert_eq!(calls(cluster.admin(s), "cancelled", "cross_blade"), 0.0);

    let mut call = cancel_after_the_200(&mut a, &mut b, 2);
    a.bye(&mut call);
    let bye = routed(&mut b, Method::Bye, &call.call_id, 2);
    respond(&b, &bye, 200, "OK", "", "");
    assert_eq!(answer_of(&mut a, &call.call_id, Method::Bye), 200);
    cluster.wait_state(t, "1002", "ready");

    cancel_before_any_provisional(&mut a, &mut b, 2);
    cluster.wait_state(t, "1002", "ready");
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.sessions(s).is_empty() && cluster.sessions(t).is_empty());
    assert_eq!(calls(cluster.admin(s), "cancelled", "cross_blade"), 1.0);
}

/// An out-of-dialog request `method` from `a` to 1002 with `extra` lines.
fn out_of_dialog(a: &Ua, method: &str, call_id: &str, extra: &str, body: &str) -> String {
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: text/plain\r\n"
    };
    format!(
        "{method} {} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <{}>;tag={}\r\nTo: <{}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nContact: <{}>\r\n{extra}{content_type}\
         Content-Length: {}\r\n\r\n{body}",
        aor("1002"),
        a.via(&branch()),
        aor(&a.ext),
        tag_of(call_id),
        aor("1002"),
        a.contact_uri(),
        body.len(),
    )
}

/// The From tag of the out-of-dialog request with `call_id`.
fn tag_of(call_id: &str) -> String {
    call_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

/// The caller's side of the dialog a SUBSCRIBE or REFER made, from its
/// 2xx.
fn subscriber_side(a: &Ua, call_id: &str, ok: &Message) -> Side {
    let mut routes: Vec<String> = ok
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    routes.reverse();
    Side {
        call_id: call_id.to_owned(),
        local: format!("<{}>;tag={}", aor(&a.ext), tag_of(call_id)),
        remote: header(ok, HeaderName::To).expect("a To"),
        target: ok
            .contacts()
            .next()
            .map(|c| c.uri().as_str().to_owned())
            .expect("a Contact"),
        routes,
        cseq: 1,
    }
}

/// A NOTIFY with `headers` from the notifier `b` in its dialog, relayed
/// to `a` along the route set through `hops` blades, and its 200 back.
fn notify(bs: &mut Side, b: &mut Ua, a: &mut Ua, call_id: &str, hops: usize, headers: &str) {
    let request = bs.request(b, "NOTIFY", headers, "");
    b.send(&request);
    let got = routed(a, Method::Notify, call_id, hops);
    respond(a, &got, 200, "OK", "", "");
    assert_eq!(answer_of(b, call_id, Method::Notify), 200);
}

/// SUBSCRIBE / NOTIFY (RFC 6665; the first NOTIFY before the 200, as
/// notifiers may send it), a refresh that ends the subscription, REFER
/// with its NOTIFY (RFC 3515), and MESSAGE, from `a` to 1002 (`b`)
/// through `hops` blades. Each dialog-forming request is record-routed
/// by every blade; each NOTIFY follows the route set back.
fn subscriptions(a: &mut Ua, b: &mut Ua, hops: usize) {
    let call_id = format!("sub-{}@test", common::unique());
    a.send(out_of_dialog(
        a,
        "SUBSCRIBE",
        &call_id,
        "Event: dialog\r\nAccept: application/dialog-info+xml\r\nExpires: 600\r\n",
        "",
    ));
    let subscribe = routed(b, Method::Subscribe, &call_id, hops);
    assert_eq!(subscribe.record_routes().count(), hops, "each blade RRs");
    let mut bs = Side::callee(&subscribe);
    notify(
        &mut bs,
        b,
        a,
        &call_id,
        hops,
        "Event: dialog\r\nSubscription-State: active;expires=600\r\n",
    );
    respond(b, &subscribe, 200, "OK", "Expires: 600\r\n", "");
    let ok = a.response(&call_id, Method::Subscribe);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    let mut aside = subscriber_side(a, &call_id, &ok);
    assert_eq!(aside.routes.len(), hops, "{ok:?}");
    let unsubscribe = aside.request(a, "SUBSCRIBE", "Event: dialog\r\nExpires: 0\r\n", "");
    a.send(&unsubscribe);
    let got = routed(b, Method::Subscribe, &call_id, hops);
    respond(b, &got, 200, "OK", "Expires: 0\r\n", "");
    assert_eq!(answer_of(a, &call_id, Method::Subscribe), 200);
    notify(
        &mut bs,
        b,
        a,
        &call_id,
        hops,
        "Event: dialog\r\nSubscription-State: terminated;reason=timeout\r\n",
    );

    let call_id = format!("refer-{}@test", common::unique());
    a.send(out_of_dialog(
        a,
        "REFER",
        &call_id,
        &format!("Refer-To: <{}>\r\n", aor("1003")),
        "",
    ));
    let refer = routed(b, Method::Refer, &call_id, hops);
    assert_eq!(refer.record_routes().count(), hops, "each blade RRs");
    let mut bs = Side::callee(&refer);
    respond(b, &refer, 202, "Accepted", "", "");
    let accepted = a.response(&call_id, Method::Refer);
    assert_eq!(accepted.status(), Some(202), "{}", first_line(&accepted));
    notify(
        &mut bs,
        b,
        a,
        &call_id,
        hops,
        "Event: refer\r\nSubscription-State: terminated;reason=noresource\r\n",
    );

    let call_id = format!("msg-{}@test", common::unique());
    a.send(out_of_dialog(a, "MESSAGE", &call_id, "", "hello"));
    let message = routed(b, Method::Message, &call_id, hops);
    assert_eq!(message.body(), b"hello");
    assert_eq!(message.record_routes().count(), 0, "no dialog, no RR");
    respond(b, &message, 200, "OK", "", "");
    assert_eq!(answer_of(a, &call_id, Method::Message), 200);
}

#[test]
fn subscriptions_refers_and_messages_through_one_blade() {
    let blade = blade(2);
    let mut a = registered(blade.sip, "1001", 8);
    let mut b = registered(blade.sip, "1002", 9);
    subscriptions(&mut a, &mut b, 1);
    assert_eq!(blade.agent_state("1001"), "ready");
    assert_eq!(blade.agent_state("1002"), "ready");
    blade.wait_no_sessions();
}

#[test]
fn subscriptions_refers_and_messages_across_two_blades() {
    let cluster = TestCluster::start(2, 146);
    let (s, t) = (0, 1);
    let mut a = registered(cluster.members[s].sip, "1001", 10);
    let mut b = registered(cluster.members[t].sip, "1002", 11);
    subscriptions(&mut a, &mut b, 2);
    assert_eq!(cluster.agent(s, "1001")["state"], "ready");
    assert_eq!(cluster.agent(t, "1002")["state"], "ready");
    assert!(cluster.sessions(s).is_empty() && cluster.sessions(t).is_empty());
}

/// A callee that ignores the CANCEL (it answers the CANCEL but not the
/// INVITE) and answers 200 after the blade gave the INVITE up with 487
/// (64×T1 after the CANCEL; T1 is 20 ms here): the 200 still reaches the
/// caller (RFC 3261 §16.7 step 5), whose ACK and BYE reach the callee, and
/// no agent stays busy.
#[test]
fn a_200_after_the_blade_gave_up_the_cancelled_invite_reaches_the_caller() {
    let timers = sipblade::transaction::TimerConfig {
        t1: Duration::from_millis(20),
        t2: Duration::from_millis(160),
        t4: Duration::from_millis(100),
    };
    let options = Options {
        timers,
        ..Options::default()
    };
    let blade = TestBlade::start_at(1, false, options, "", BLADE_IP);
    let mut a = registered(blade.sip, "1001", 12);
    let mut b = registered(blade.sip, "1002", 13);
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = routed(&mut b, Method::Invite, &call.call_id, 1);
    respond(&b, &invite, 180, "Ringing", "", "");
    assert_eq!(answer_of(&mut a, &call.call_id, Method::Invite), 180);
    a.cancel(&call);
    assert_eq!(answer_of(&mut a, &call.call_id, Method::Cancel), 200);
    let cancel = b.request(Method::Cancel, &call.call_id);
    respond(&b, &cancel, 200, "OK", "", "");
    let given_up = a.response(&call.call_id, Method::Invite);
    assert_eq!(given_up.status(), Some(487), "{}", first_line(&given_up));
    a.ack_failure(&call, &given_up);
    blade.wait_state("1002", "ready");

    let ok = respond(&b, &invite, 200, "OK", "", &sdp(&b, 1));
    let late = a.response(&call.call_id, Method::Invite);
    assert_eq!(late.status(), Some(200), "{}", first_line(&late));
    assert_eq!(late.vias().count(), 1, "the blade removed its Via");
    b.send(&ok);
    assert_eq!(raw_count(&mut a, QUIET, "SIP/2.0 200"), 1, "and again");
    call.learn(&late);
    a.ack_2xx(&call);
    routed(&mut b, Method::Ack, &call.call_id, 1);
    a.bye(&mut call);
    let bye = routed(&mut b, Method::Bye, &call.call_id, 1);
    respond(&b, &bye, 200, "OK", "", "");
    assert_eq!(answer_of(&mut a, &call.call_id, Method::Bye), 200);
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    blade.wait_no_sessions();
}

/// The whole dialog across two blades of two cores each: the dialog's
/// requests reach the core that owns it on each blade, from either side.
#[test]
fn a_whole_dialog_across_two_blades_of_two_cores() {
    let cluster = TestCluster::start_with(2, 148, 30, 2);
    let (s, t) = (0, 1);
    let mut a = registered(cluster.members[s].sip, "1001", 14);
    let mut b = registered(cluster.members[t].sip, "1002", 15);
    full_dialog(&mut a, &mut b, 2);
    cluster.wait_state(s, "1001", "ready");
    cluster.wait_state(t, "1002", "ready");
    assert!(cluster.sessions(s).is_empty() && cluster.sessions(t).is_empty());
}

/// In-dialog requests follow the caller's whole route set (loose routing,
/// RFC 3261 §16.4, §16.6): past the blade, a proxy the callee's side
/// record-routed (in the 200 the blade relayed, so the blade knows it as
/// the dialog's next hop) gets the request with its Route kept and the
/// Request-URI untouched. Max-Forwards 0 in a dialog is 483 at the blade, 1 passes
/// as 0. The ACK of a 2xx is forwarded statelessly, each retransmission
/// too.
#[test]
fn in_dialog_requests_follow_the_route_set_and_max_forwards() {
    let blade = blade(1);
    let mut a = registered(blade.sip, "1001", 16);
    let mut b = registered(blade.sip, "1002", 17);
    // The callee's outbound proxy, as far as the route set goes.
    let mut proxy = phone(blade.sip, "proxy", 18);
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = routed(&mut b, Method::Invite, &call.call_id, 1);
    // The callee's outbound proxy record-routed too, nearer the callee:
    // the caller's route set is the blade, then that proxy.
    let ok = response_text(&b, &invite, 200, "OK", "", "").replacen(
        "Record-Route: ",
        &format!("Record-Route: <sip:{};lr>, ", proxy.addr),
        1,
    );
    b.send(&ok);
    let resp = a.response(&call.call_id, Method::Invite);
    assert_eq!(resp.status(), Some(200));
    call.learn(&resp);
    assert_eq!(call.routes.len(), 2, "{:?}", call.routes);
    assert_eq!(call.routes[1], format!("<sip:{};lr>", proxy.addr));

    a.ack_2xx(&call);
    let ack = proxy.request(Method::Ack, &call.call_id);
    assert_eq!(ack.request_uri().unwrap().as_str(), b.contact_uri());
    let routes: Vec<String> = ack
        .routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    assert_eq!(routes, [format!("<sip:{};lr>", proxy.addr)], "Route kept");
    a.ack_2xx(&call);
    assert_eq!(
        raw_count(&mut proxy, QUIET, "ACK "),
        1,
        "an ACK retransmission is forwarded too"
    );

    let mut aside = Side::caller(&a, &call);
    let info = aside.request(&a, "INFO", "", "");
    a.send(info.replace("Max-Forwards: 70", "Max-Forwards: 1"));
    let got = proxy.request(Method::Info, &call.call_id);
    assert_eq!(got.max_forwards(), Some(0));
    respond(&proxy, &got, 200, "OK", "", "");
    assert_eq!(answer_of(&mut a, &call.call_id, Method::Info), 200);
    let info = aside.request(&a, "INFO", "", "");
    a.send(info.replace("Max-Forwards: 70", "Max-Forwards: 0"));
    assert_eq!(answer_of(&mut a, &call.call_id, Method::Info), 483);
    let more = proxy.collect_where(QUIET, |m| m.method() == Some(Method::Info));
    assert!(more.is_empty(), "{more:?}");

    a.bye(&mut call);
    let bye = proxy.request(Method::Bye, &call.call_id);
    respond(&proxy, &bye, 200, "OK", "", "");
    assert_eq!(answer_of(&mut a, &call.call_id, Method::Bye), 200);
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    blade.wait_no_sessions();
}

/// The phones of the attended-transfer tests share one address (each on
/// a port of its own): 127.0.0.169.
const TRANSFER_PHONES: u8 = 19;

/// Where the agents of an attended transfer stand: each one's state, and
/// the sessions' agents, as `/status` shows them.
trait Watch {
    fn state(&self, ext: &str) -> String;
    fn sessions(&self) -> Vec<Vec<String>>;
}

impl Watch for TestBlade {
    fn state(&self, ext: &str) -> String {
        self.agent_state(ext)
    }
    fn sessions(&self) -> Vec<Vec<String>> {
        sessions_of(&self.status()["sessions"])
    }
}

/// A cluster of two blades, seen as one: an agent's state is its own
/// blade's view (`hosted` while another blade hosts it, which shows it
/// `in_call` there).
struct Both<'a>(&'a TestCluster);

impl Watch for Both<'_> {
    fn state(&self, ext: &str) -> String {
        let states: Vec<String> = (0..2)
            .map(|i| {
                self.0.agent(i, ext)["state"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        let seen = |state: &str| states.iter().any(|s| s == state);
        let own = states.iter().find(|s| *s != "logged_out");
        match own {
            _ if seen("hosted") => "hosted".into(),
            Some(state) => state.clone(),
            None => "logged_out".into(),
        }
    }
    fn sessions(&self) -> Vec<Vec<String>> {
        (0..2)
            .flat_map(|i| sessions_of(&self.0.status(i)["sessions"]))
            .collect()
    }
}

fn sessions_of(v: &serde_json::Value) -> Vec<Vec<String>> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let mut agents: Vec<String> = s["agents"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    agents.sort();
                    agents
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wait_for<W: Watch + ?Sized>(w: &W, ext: &str, states: &[&str]) {
    common::wait_until(&format!("{ext} {states:?}"), || {
        states.contains(&w.state(ext).as_str())
    });
}

/// Undoes the escaping of a header in a URI (RFC 3261 §19.1.1): enough for
/// the `%3B` and `%3D` of a Replaces in a Refer-To.
fn unescape(s: &str) -> String {
    s.replace("%3B", ";")
        .replace("%3b", ";")
        .replace("%3D", "=")
        .replace("%3d", "=")
        .replace("%40", "@")
}

/// Attended transfer (RFC 5589 §7): 1001 (`a`) calls 1002 (`b`); `b` puts
/// `a` on hold and calls 1003 (`c`) to consult; `b` sends `a` a REFER
/// whose Refer-To carries a Replaces naming the b–c dialog; `a` calls `c`
/// with that Replaces; `c` takes it and hangs up on `b`; `b` hangs up on
/// `a`. Then `a` and `c` talk, `b` is ready; when they hang up, everyone
/// is ready and no session is left. `hops_ab` and `hops_c`: the blades
/// between `a` and `b`, and between either and `c`. `c_in_call`: `c`'s
/// state during its calls (`hosted` on its own blade when another hosts it).
fn attended_transfer<W: Watch + ?Sized>(
    w: &W,
    a: &mut Ua,
    b: &mut Ua,
    c: &mut Ua,
    hops_ab: usize,
    hops_c: usize,
    c_in_call: &str,
) {
    // a calls b.
    let mut ab = a.call("1002");
    a.invite(&mut ab, "");
    let inv = routed(b, Method::Invite, &ab.call_id, hops_ab);
    let mut b_ab = Side::callee(&inv);
    respond(b, &inv, 200, "OK", "", &sdp(b, 1));
    let ok = a.response(&ab.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    ab.learn(&ok);
    a.ack_2xx(&ab);
    routed(b, Method::Ack, &ab.call_id, hops_ab);
    let mut a_ab = Side::caller(a, &ab);

    // b puts a on hold (a re-INVITE, sendonly).
    let hold = sdp(b, 2).replace("RTP/AVP 0\r\n", "RTP/AVP 0\r\na=sendonly\r\n");
    b.send(b_ab.request(b, "INVITE", "", &hold));
    let got = routed(a, Method::Invite, &ab.call_id, hops_ab);
    respond(a, &got, 200, "OK", "", &sdp(a, 2));
    assert_eq!(answer_of(b, &ab.call_id, Method::Invite), 200);
    b.send(b_ab.request(b, "ACK", "", ""));
    routed(a, Method::Ack, &ab.call_id, hops_ab);

    // b consults c.
    let mut bc = b.call("1003");
    b.invite(&mut bc, "");
    let inv = routed(c, Method::Invite, &bc.call_id, hops_c);
    let mut c_bc = Side::callee(&inv);
    respond(c, &inv, 200, "OK", "", &sdp(c, 1));
    let ok = b.response(&bc.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    bc.learn(&ok);
    b.ack_2xx(&bc);
    routed(c, Method::Ack, &bc.call_id, hops_c);
    wait_for(w, "1001", &["in_call"]);
    wait_for(w, "1002", &["in_call"]);
    wait_for(w, "1003", &[c_in_call]);

    // b refers a to c, replacing the b–c dialog (its tags as c sees it).
    let refer_to = format!(
        "Refer-To: <{}?Replaces={}%3Bto-tag%3D{CALLEE_TAG}%3Bfrom-tag%3D{}>\r\n\
         Referred-By: <{}>\r\n",
        aor("1003"),
        bc.call_id.replace('@', "%40"),
        bc.from_tag,
        aor("1002"),
    );
    b.send(b_ab.request(b, "REFER", &refer_to, ""));
    let refer = routed(a, Method::Refer, &ab.call_id, hops_ab);
    respond(a, &refer, 202, "Accepted", "", "");
    assert_eq!(answer_of(b, &ab.call_id, Method::Refer), 202);
    let notify = "Event: refer\r\nSubscription-State: active;expires=60\r\n";
    a.send(a_ab.request(a, "NOTIFY", notify, ""));
    let got = routed(b, Method::Notify, &ab.call_id, hops_ab);
    respond(b, &got, 200, "OK", "", "");
    assert_eq!(answer_of(a, &ab.call_id, Method::Notify), 200);

    // a calls c with the Replaces the Refer-To carried.
    let refer_to =
        String::from_utf8_lossy(refer.header_named("Refer-To").expect("a Refer-To")).into_owned();
    let replaces = refer_to
        .split_once("?Replaces=")
        .and_then(|(_, r)| r.split_once('>'))
        .map(|(r, _)| unescape(r))
        .expect("a Replaces in the Refer-To");
    let mut ac = a.call("1003");
    a.invite(&mut ac, &format!("Replaces: {replaces}\r\n"));
    let inv = routed(c, Method::Invite, &ac.call_id, hops_c);
    let got =
        String::from_utf8_lossy(inv.header_named("Replaces").expect("the Replaces")).into_owned();
    // c's phone matches it with its dialog with b (RFC 3891 §3).
    assert!(got.starts_with(&bc.call_id), "{got}");
    assert!(got.contains(&format!("to-tag={CALLEE_TAG}")), "{got}");
    assert!(got.contains(&format!("from-tag={}", bc.from_tag)), "{got}");
    respond(c, &inv, 200, "OK", "", &sdp(c, 2));
    let ok = a.response(&ac.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    ac.learn(&ok);
    a.ack_2xx(&ac);
    routed(c, Method::Ack, &ac.call_id, hops_c);

    // c hangs up on b, as the Replaces asks.
    c.send(c_bc.request(c, "BYE", "", ""));
    let got = routed(b, Method::Bye, &bc.call_id, hops_c);
    respond(b, &got, 200, "OK", "", "");
    assert_eq!(answer_of(c, &bc.call_id, Method::Bye), 200);
    // a tells b the transfer worked; b hangs up on a.
    let notify = "Event: refer\r\nSubscription-State: terminated;reason=noresource\r\n";
    a.send(a_ab.request(a, "NOTIFY", notify, ""));
    let got = routed(b, Method::Notify, &ab.call_id, hops_ab);
    respond(b, &got, 200, "OK", "", "");
    assert_eq!(answer_of(a, &ab.call_id, Method::Notify), 200);
    b.send(b_ab.request(b, "BYE", "", ""));
    let got = routed(a, Method::Bye, &ab.call_id, hops_ab);
    respond(a, &got, 200, "OK", "", "");
    assert_eq!(answer_of(b, &ab.call_id, Method::Bye), 200);

    wait_for(w, "1002", &["ready"]);
    wait_for(w, "1001", &["in_call"]);
    wait_for(w, "1003", &[c_in_call]);
    common::wait_until("one session, a and c", || {
        w.sessions() == [vec!["1001".to_owned(), "1003".to_owned()]]
    });

    // a and c hang up.
    let mut a_ac = Side::caller(a, &ac);
    a.send(a_ac.request(a, "BYE", "", ""));
    let got = routed(c, Method::Bye, &ac.call_id, hops_c);
    respond(c, &got, 200, "OK", "", "");
    assert_eq!(answer_of(a, &ac.call_id, Method::Bye), 200);
    for ext in ["1001", "1002", "1003"] {
        wait_for(w, ext, &["ready"]);
    }
    common::wait_until("no session", || w.sessions().is_empty());
}

#[test]
fn an_attended_transfer_through_one_blade() {
    let blade = blade(2);
    let mut a = registered(blade.sip, "1001", TRANSFER_PHONES);
    let mut b = registered(blade.sip, "1002", TRANSFER_PHONES);
    let mut c = registered(blade.sip, "1003", TRANSFER_PHONES);
    attended_transfer(&blade, &mut a, &mut b, &mut c, 1, 1, "in_call");
    assert_eq!(blade.metric("sipblade_replaces_total"), 1.0);
}

/// The consultation is cross-blade: a and b on S, c on T (hosted by S for
/// it). a's Replaces reaches S, which owns the b–c session: the new call
/// rides on its grant, so c stays hosted until a and c hang up.
#[test]
fn an_attended_transfer_to_an_agent_on_another_blade() {
    let cluster = TestCluster::start(2, 164);
    let (s, t) = (0, 1);
    let ip = Ipv4Addr::new(127, 0, 0, 150 + TRANSFER_PHONES);
    let mut a = cluster.registered_on(s, "1001", ip);
    let mut b = cluster.registered_on(s, "1002", ip);
    let mut c = cluster.registered_on(t, "1003", ip);
    attended_transfer(&Both(&cluster), &mut a, &mut b, &mut c, 1, 2, "hosted");
    assert_eq!(cluster.metric(s, "sipblade_replaces_total"), 1.0);
}

/// Call pickup of an early dialog (RFC 3891 with an early dialog): 1001
/// (`a`) calls 1002 (`b`), which rings and does not answer; 1003 (`c`)
/// sends 1001 an INVITE replacing that ringing dialog, named as 1001 sees
/// it (its own From tag as the to-tag, `b`'s To tag as the from-tag). The
/// blade lets it through to 1001 though 1001 is in a call; 1001 answers
/// it and cancels its INVITE to 1002, which gets the CANCEL and answers
/// 487. Then `a` and `c` talk and `b` is ready; when they hang up, every
/// agent is ready and no session is left.
#[test]
fn a_pickup_replacing_a_ringing_call_through_one_blade() {
    let blade = blade(2);
    let mut a = registered(blade.sip, "1001", TRANSFER_PHONES);
    let mut b = registered(blade.sip, "1002", TRANSFER_PHONES);
    let mut c = registered(blade.sip, "1003", TRANSFER_PHONES);

    // a calls b, which rings.
    let mut ab = a.call("1002");
    a.invite(&mut ab, "");
    let inv_b = routed(&mut b, Method::Invite, &ab.call_id, 1);
    respond(&b, &inv_b, 180, "Ringing", "", "");
    assert_eq!(answer_of(&mut a, &ab.call_id, Method::Invite), 180);
    wait_for(&blade, "1001", &["in_call"]);
    wait_for(&blade, "1002", &["in_call"]);

    // c picks up: a's early dialog with b, as a sees it.
    let replaces = format!(
        "Replaces: {};to-tag={};from-tag={CALLEE_TAG}\r\n",
        ab.call_id, ab.from_tag
    );
    let mut ca = c.call("1001");
    c.invite(&mut ca, &replaces);
    let inv_a = routed(&mut a, Method::Invite, &ca.call_id, 1);
    let got =
        String::from_utf8_lossy(inv_a.header_named("Replaces").expect("the Replaces")).into_owned();
    assert_eq!(format!("Replaces: {got}\r\n"), replaces);
    respond(&a, &inv_a, 200, "OK", "", &sdp(&a, 1));
    let ok = c.response(&ca.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    ca.learn(&ok);
    c.ack_2xx(&ca);
    routed(&mut a, Method::Ack, &ca.call_id, 1);

    // a's phone cancels its INVITE to b, as the Replaces asks.
    a.cancel(&ab);
    assert_eq!(answer_of(&mut a, &ab.call_id, Method::Cancel), 200);
    let cancel = b.request(Method::Cancel, &ab.call_id);
    respond(&b, &cancel, 200, "OK", "", "");
    respond(&b, &inv_b, 487, "Request Terminated", "", "");
    b.request(Method::Ack, &ab.call_id);
    let resp = loop {
        let resp = a.response(&ab.call_id, Method::Invite);
        if resp.status() != Some(180) {
            break resp;
        }
    };
    assert_eq!(resp.status(), Some(487), "{}", first_line(&resp));
    a.ack_failure(&ab, &resp);

    wait_for(&blade, "1002", &["ready"]);
    wait_for(&blade, "1001", &["in_call"]);
    wait_for(&blade, "1003", &["in_call"]);
    common::wait_until("one session, a and c", || {
        Watch::sessions(&blade) == [vec!["1001".to_owned(), "1003".to_owned()]]
    });
    assert_eq!(blade.metric("sipblade_replaces_total"), 1.0);

    // c hangs up.
    let mut c_ca = Side::caller(&c, &ca);
    c.send(c_ca.request(&c, "BYE", "", ""));
    let got = routed(&mut a, Method::Bye, &ca.call_id, 1);
    respond(&a, &got, 200, "OK", "", "");
    assert_eq!(answer_of(&mut c, &ca.call_id, Method::Bye), 200);
    for ext in ["1001", "1002", "1003"] {
        wait_for(&blade, ext, &["ready"]);
    }
    blade.wait_no_sessions();
}
