//! Mid-dialog transactions and races across blades of two executor cores
//! each (SPEC §2, §5, §8): UPDATE in early and confirmed dialogs, INFO and
//! re-INVITE crossing a BYE, CANCEL crossing the callee's 200, re-INVITE
//! glare, PRACK then CANCEL, the callee hanging up, many calls at once and
//! calls both ways at once.
//!
//! With two cores the session and its hostings live on the callee's core
//! (of S, and of T for the grant), while the kernel places each datagram:
//! INVITE, CANCEL and ACK by the Request-URI user (`steer.rs`), the rest by
//! the 4-tuple hash; whatever lands on the wrong core is handed over by
//! the core named in the Route (our Record-Route's core parameter) or the
//! Via branch. Unless a test says otherwise the caller is 1001 (core 1)
//! and the callee 1002 (core 0): [`CALLER`] and [`CALLEE`] differ in core
//! on each blade, so a caller's in-dialog requests are steered to the
//! caller's core and handed over to the session's.
//!
//! Addresses: 127.0.13.x, eight per test: blades at 8k+1 and 8k+2, phones
//! at 8k+3 to 8k+8, for the k each test names (1 to 30).

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::calls::{
    CALLEE_TAG, ack_of, answered_cross_call, assert_hosted, callee_request, caller_request,
    confirm, hang_up, wait_ready,
};
use common::cluster::TestCluster;
use common::{Call, Ua, first_line, header};
use sipblade::proxy::route::shard_of;
use sipblade::sip::{HeaderName, Message, Method};

/// Cores per blade.
const CORES: usize = 2;

/// The usual caller and callee: on different cores of each blade.
const CALLER: &str = "1001";
const CALLEE: &str = "1002";

/// Long enough to see that a message does not arrive.
const QUIET: Duration = Duration::from_millis(300);

/// The subnet of this file's addresses.
const SUBNET: u8 = 13;

/// 127.0.13.`host`.
fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, SUBNET, host)
}

/// Two blades of two cores (S = 0, T = 1) at 127.0.13.(8k+1) and (8k+2).
fn two_blades(k: u8) -> TestCluster {
    assert_ne!(
        shard_of(CALLER.as_bytes(), CORES),
        shard_of(CALLEE.as_bytes(), CORES),
        "the usual caller and callee live on different cores"
    );
    TestCluster::start_in(SUBNET, 2, 8 * k + 1, 30, CORES, &[])
}

/// Phone `n` (0 to 5) of test `k`.
fn phone(k: u8, n: u8) -> Ipv4Addr {
    assert!(n < 6);
    ip(8 * k + 3 + n)
}

/// Whether `m` is a final response to `method` in `call_id` with CSeq
/// number `seq`.
fn final_to(m: &Message, call_id: &str, method: Method, seq: u32) -> bool {
    !m.is_request()
        && m.call_id() == call_id
        && m.cseq().method == method
        && m.cseq().seq == seq
        && m.status().is_some_and(|s| s >= 200)
}

/// The final response `ua` gets to `method` `seq` of `call_id`.
fn final_response(ua: &mut Ua, call_id: &str, method: Method, seq: u32) -> Message {
    ua.expect_where(&format!("a final response to {method:?} {seq}"), |m| {
        final_to(m, call_id, method, seq)
    })
}

/// The early dialog of `call` as the provisional `early` sets it up (RFC
/// 3261 §12.1.2): the To tag, the remote target, the route set.
fn early_dialog(call: &Call, early: &Message) -> Call {
    let mut dialog = call.clone();
    dialog.to = header(early, HeaderName::To);
    dialog.target = early.contacts().next().map(|c| c.uri().as_str().to_owned());
    let mut routes: Vec<String> = early
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    routes.reverse();
    dialog.routes = routes;
    dialog
}

/// Waits until the caller `ext` on member `i` shows `in_call`: the
/// session's core tells the caller's core in a notice batched up to 50 ms
/// (`core.rs`), so right after the ACK it may still show `ready`.
fn in_call(cluster: &TestCluster, i: usize, ext: &str) {
    cluster.wait_state(i, ext, "in_call");
    assert_eq!(cluster.agent(i, ext)["hosted_by"], serde_json::Value::Null);
}

/// After a call: `exts` (with their home blades) are ready and hosted by
/// nobody there, not known on the other blade, and neither blade holds a
/// session.
fn assert_all_free(cluster: &TestCluster, exts: &[(&str, usize)]) {
    for &(ext, home) in exts {
        wait_ready(cluster, home, ext);
        let away = cluster.agent(1 - home, ext);
        assert_eq!(away["state"], "logged_out", "{ext} away: {away}");
    }
    for i in 0..2 {
        common::wait_until(&format!("no session on blade {i}"), || {
            cluster.sessions(i).is_empty()
        });
    }
}

/// Scenario: UPDATE (RFC 3311) both ways in an early dialog. B answers
/// 183 with a Contact; A's UPDATE follows the early route set (S, T) to B,
/// and B's UPDATE the INVITE's Record-Route back to A; each is answered
/// 200 end to end. Then B answers, the call is confirmed, and hangs up.
#[test]
fn update_both_ways_in_an_early_dialog() {
    let k = 1;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));

    let mut call = a.call(CALLEE);
    a.invite(&mut call, "Supported: timer, update\r\n");
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 183, "Session Progress", CALLEE_TAG);
    let early = a.response(&call.call_id, Method::Invite);
    assert_eq!(early.status(), Some(183), "{}", first_line(&early));
    assert_eq!(early.record_routes().count(), 2);
    let mut dialog = early_dialog(&call, &early);

    // A's UPDATE (CSeq above the INVITE's).
    let update = caller_request(&a, &mut dialog, "UPDATE");
    a.send(&update);
    let got = b.request(Method::Update, &call.call_id);
    assert_eq!(got.request_uri().unwrap().as_str(), b.contact_uri());
    assert_eq!(got.routes().count(), 0, "both blades popped their Route");
    assert_eq!(got.cseq().seq, dialog.cseq);
    b.answer(&got, 200, "OK", CALLEE_TAG);
    let ok = final_response(&mut a, &call.call_id, Method::Update, dialog.cseq);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));

    // B's UPDATE.
    let update = callee_request(&b, &invite, "UPDATE", 1);
    b.send(&update);
    let got = a.request(Method::Update, &call.call_id);
    assert_eq!(got.request_uri().unwrap().as_str(), a.contact_uri());
    assert_eq!(got.routes().count(), 0, "both blades popped their Route");
    assert_eq!(got.to().tag(), Some(call.from_tag.as_str()));
    a.answer(&got, 200, "OK", "unused");
    let ok = final_response(&mut b, &call.call_id, Method::Update, 1);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));

    // Still ringing: the INVITE is answered now.
    assert_hosted(&cluster, t, CALLEE, "blade-1");
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    confirm(&mut a, &mut b, &call);
    in_call(&cluster, s, CALLER);
    assert_hosted(&cluster, t, CALLEE, "blade-1");
    // The BYE's CSeq goes above the UPDATE's.
    call.cseq = dialog.cseq;
    hang_up(&mut a, &mut b, &mut call);
    assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);
}

/// Scenario: UPDATE both ways in a confirmed dialog (a target refresh
/// with SDP, as a session timer or hold sends it); each 200 comes back;
/// the call goes on (a later re-INVITE passes) and ends with both free.
#[test]
fn update_both_ways_in_a_confirmed_dialog() {
    let k = 2;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));
    let (mut call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let update = caller_request(&a, &mut call, "UPDATE");
    a.send(&update);
    let got = b.request(Method::Update, &call.call_id);
    assert_eq!(got.request_uri().unwrap().as_str(), b.contact_uri());
    assert_eq!(got.routes().count(), 0);
    b.answer(&got, 200, "OK", CALLEE_TAG);
    let ok = final_response(&mut a, &call.call_id, Method::Update, call.cseq);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));

    let update = callee_request(&b, &invite, "UPDATE", 1);
    b.send(&update);
    let got = a.request(Method::Update, &call.call_id);
    assert_eq!(got.request_uri().unwrap().as_str(), a.contact_uri());
    assert_eq!(got.routes().count(), 0);
    a.answer(&got, 200, "OK", "unused");
    let ok = final_response(&mut b, &call.call_id, Method::Update, 1);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));

    // Both UPDATEs at once.
    let from_a = caller_request(&a, &mut call, "UPDATE");
    let from_b = callee_request(&b, &invite, "UPDATE", 2);
    a.send(&from_a);
    b.send(&from_b);
    let at_b = b.request(Method::Update, &call.call_id);
    let at_a = a.request(Method::Update, &call.call_id);
    b.answer(&at_b, 200, "OK", CALLEE_TAG);
    a.answer(&at_a, 200, "OK", "unused");
    let ok = final_response(&mut a, &call.call_id, Method::Update, call.cseq);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    let ok = final_response(&mut b, &call.call_id, Method::Update, 2);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));

    in_call(&cluster, s, CALLER);
    assert_eq!(cluster.agent(s, CALLEE)["state"], "in_call");
    assert_hosted(&cluster, t, CALLEE, "blade-1");
    assert_eq!(cluster.sessions(s).len(), 1, "{:?}", cluster.sessions(s));

    let reinvite = caller_request(&a, &mut call, "INVITE");
    a.send(&reinvite);
    let got = b.request(Method::Invite, &call.call_id);
    b.answer(&got, 200, "OK", CALLEE_TAG);
    let ok = final_response(&mut a, &call.call_id, Method::Invite, call.cseq);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    a.ack_2xx(&call);
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.cseq().seq, call.cseq);

    hang_up(&mut a, &mut b, &mut call);
    assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);
}

/// Who sends the request that crosses the other party's BYE.
#[derive(Clone, Copy, Debug)]
enum Sender {
    Caller,
    Callee,
}

/// An INFO or re-INVITE (`method`) from one party crossing the other's
/// BYE: each is sent before the other arrives. The BYE reaches its phone
/// and is answered 200 back to the hanger-up; the request reaches the
/// hanger-up's phone, which has left the dialog and answers 481 (RFC 3261
/// §12.2.2), and the 481 comes back to its sender (a re-INVITE's 481 is
/// ACKed hop by hop, and by the sender). Nothing is retransmitted after,
/// no blade sends a BYE of its own, and both agents end free.
fn request_crossing_a_bye(k: u8, method: &str, sender: Sender) {
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));
    let (mut call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);
    let call_id = call.call_id.clone();
    let m = Method::from_bytes(method.as_bytes());

    // (the request's sender, its text, its CSeq; the hanger-up)
    let (request, seq) = match sender {
        Sender::Caller => {
            let text = caller_request(&a, &mut call, method);
            (text, call.cseq)
        }
        Sender::Callee => (callee_request(&b, &invite, method, 1), 1),
    };
    let bye_seq;
    match sender {
        Sender::Caller => {
            let bye = callee_request(&b, &invite, "BYE", 1);
            bye_seq = 1;
            a.send(&request);
            b.send(&bye);
        }
        Sender::Callee => {
            b.send(&request);
            a.bye(&mut call);
            bye_seq = call.cseq;
        }
    }
    let (requester, hanger) = match sender {
        Sender::Caller => (&mut a, &mut b),
        Sender::Callee => (&mut b, &mut a),
    };
    // The hanger-up gets the request and refuses it; the requester gets
    // the BYE and accepts it.
    let got = hanger.request(m, &call_id);
    assert_eq!(got.cseq().seq, seq, "{}", first_line(&got));
    hanger.answer(&got, 481, "Call/Transaction Does Not Exist", CALLEE_TAG);
    let bye = requester.request(Method::Bye, &call_id);
    assert_eq!(bye.cseq().seq, bye_seq);
    requester.answer(&bye, 200, "OK", CALLEE_TAG);

    let refused = final_response(requester, &call_id, m, seq);
    assert_eq!(refused.status(), Some(481), "{}", first_line(&refused));
    let done = final_response(hanger, &call_id, Method::Bye, bye_seq);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    if m == Method::Invite {
        // The blade next to the hanger-up ACKs its 481.
        let ack = hanger.request(Method::Ack, &call_id);
        assert_eq!(ack.cseq().seq, seq, "{}", first_line(&ack));
        requester.send(ack_of(&request));
    }
    assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);
    let again = requester.collect_where(Duration::from_millis(1200), |m| {
        m.call_id() == call_id && m.status().is_some_and(|s| s >= 200)
    });
    assert!(again.is_empty(), "answered and ACKed: {again:?}");
    let stray = hanger.collect_where(QUIET, |m| m.call_id() == call_id && m.is_request());
    assert!(stray.is_empty(), "{stray:?}");
    let own = |i| cluster.metric(i, "sipblade_sessions_bye_sent_total");
    assert_eq!((own(s), own(t)), (0.0, 0.0), "no blade hung up itself");
}

/// A's INFO crosses B's BYE.
#[test]
fn a_callers_info_crossing_the_callees_bye() {
    request_crossing_a_bye(3, "INFO", Sender::Caller);
}

/// B's INFO crosses A's BYE.
#[test]
fn a_callees_info_crossing_the_callers_bye() {
    request_crossing_a_bye(4, "INFO", Sender::Callee);
}

/// A's re-INVITE crosses B's BYE.
#[test]
fn a_callers_reinvite_crossing_the_callees_bye() {
    request_crossing_a_bye(5, "INVITE", Sender::Caller);
}

/// B's re-INVITE crosses A's BYE.
#[test]
fn a_callees_reinvite_crossing_the_callers_bye() {
    request_crossing_a_bye(6, "INVITE", Sender::Callee);
}

/// Scenario: the caller's CANCEL crosses the callee's 200 on blades of
/// two cores (RFC 3261 §9.2, §16.7 step 5): the CANCEL is answered 200
/// and relayed, the 200 all the same reaches A (no 487), its ACK reaches
/// B, and the call stays up until A hangs up.
#[test]
fn a_cancel_crossing_the_callees_200_leaves_an_established_call() {
    let k = 7;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));

    let mut call = a.call(CALLEE);
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180), "{}", first_line(&ringing));

    a.cancel(&call);
    let cancelled = a.response(&call.call_id, Method::Cancel);
    assert_eq!(cancelled.status(), Some(200), "{}", first_line(&cancelled));
    let cancel = b.request(Method::Cancel, &call.call_id);
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    b.answer(&cancel, 200, "OK", CALLEE_TAG);

    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    assert_eq!(call.routes.len(), 2);
    confirm(&mut a, &mut b, &call);
    let stray = a.collect_where(QUIET, |m| {
        !m.is_request() && m.call_id() == call.call_id && m.status() != Some(200)
    });
    assert!(stray.is_empty(), "{stray:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cluster.agent(s, CALLER)["state"], "in_call");
    assert_eq!(cluster.agent(s, CALLEE)["state"], "in_call");
    assert_hosted(&cluster, t, CALLEE, "blade-1");
    assert_eq!(cluster.sessions(s).len(), 1, "{:?}", cluster.sessions(s));

    hang_up(&mut a, &mut b, &mut call);
    assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);
}

/// Scenario: re-INVITE glare (RFC 3261 §14.1) on blades of two cores:
/// each phone answers the other's re-INVITE 491; each 491 reaches its
/// sender through both blades and is ACKed hop by hop; a later re-INVITE
/// passes and the hang-up frees both.
#[test]
fn reinvite_glare_passes_491_both_ways() {
    let k = 8;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));
    let (mut call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let from_a = caller_request(&a, &mut call, "INVITE");
    let from_b = callee_request(&b, &invite, "INVITE", 1);
    a.send(&from_a);
    b.send(&from_b);
    let at_b = b.request(Method::Invite, &call.call_id);
    let at_a = a.request(Method::Invite, &call.call_id);
    assert_eq!(at_b.cseq().seq, call.cseq);
    assert_eq!(at_a.cseq().seq, 1);
    b.answer(&at_b, 491, "Request Pending", CALLEE_TAG);
    a.answer(&at_a, 491, "Request Pending", "unused");

    let to_a = final_response(&mut a, &call.call_id, Method::Invite, call.cseq);
    assert_eq!(to_a.status(), Some(491), "{}", first_line(&to_a));
    let to_b = final_response(&mut b, &call.call_id, Method::Invite, 1);
    assert_eq!(to_b.status(), Some(491), "{}", first_line(&to_b));
    let ack_at_b = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack_at_b.cseq().seq, call.cseq, "{}", first_line(&ack_at_b));
    let ack_at_a = a.request(Method::Ack, &call.call_id);
    assert_eq!(ack_at_a.cseq().seq, 1, "{}", first_line(&ack_at_a));
    a.send(ack_of(&from_a));
    b.send(ack_of(&from_b));
    let more = a.collect_where(QUIET, |m| m.call_id() == call.call_id);
    assert_eq!(more, ["SIP/2.0 100 Trying"], "S's 100 to A's re-INVITE");
    let more = b.collect_where(QUIET, |m| m.call_id() == call.call_id);
    assert_eq!(more, ["SIP/2.0 100 Trying"], "T's 100 to B's re-INVITE");

    // B tries again after its back-off and gets through.
    let retry = callee_request(&b, &invite, "INVITE", 2);
    b.send(&retry);
    let at_a = a.request(Method::Invite, &call.call_id);
    assert_eq!(at_a.cseq().seq, 2);
    a.answer(&at_a, 200, "OK", "unused");
    let ok = final_response(&mut b, &call.call_id, Method::Invite, 2);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    // B's ACK of its 2xx, along the route set.
    let ack = callee_request(&b, &invite, "ACK", 2);
    b.send(&ack);
    let got = a.request(Method::Ack, &call.call_id);
    assert_eq!(got.cseq().seq, 2);
    assert_hosted(&cluster, t, CALLEE, "blade-1");

    hang_up(&mut a, &mut b, &mut call);
    assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);
}

/// Scenario: reliable provisionals (RFC 3262) on blades of two cores:
/// B's 183 with `Require: 100rel`; A's PRACK follows the early route set
/// to B and B's 200 comes back; then A cancels: the CANCEL is answered
/// 200, B's 487 reaches A and is ACKed by T, and both agents end free.
#[test]
fn a_prack_then_a_cancel() {
    let k = 9;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));

    let mut call = a.call(CALLEE);
    a.invite(&mut call, "Supported: 100rel\r\n");
    let invite = b.request(Method::Invite, &call.call_id);
    assert!(invite.header_named("Supported").is_some(), "passed on");
    b.answer_with(
        &invite,
        183,
        "Session Progress",
        CALLEE_TAG,
        "Require: 100rel\r\nRSeq: 1\r\n",
    );
    let early = a.response(&call.call_id, Method::Invite);
    assert_eq!(early.status(), Some(183), "{}", first_line(&early));
    assert_eq!(early.header_named("RSeq"), Some(&b"1"[..]));
    assert_eq!(early.record_routes().count(), 2);
    let dialog = early_dialog(&call, &early);
    let prack = a.in_dialog_text(&dialog, "PRACK", call.cseq + 1).replace(
        "Content-Length: 0\r\n",
        &format!("RAck: 1 {} INVITE\r\nContent-Length: 0\r\n", call.cseq),
    );
    a.send(&prack);
    let got = b.request(Method::Prack, &call.call_id);
    assert_eq!(got.request_uri().unwrap().as_str(), b.contact_uri());
    assert_eq!(got.routes().count(), 0, "both blades popped their Route");
    assert!(got.header_named("RAck").is_some());
    b.answer(&got, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Prack);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert_hosted(&cluster, t, CALLEE, "blade-1");

    a.cancel(&call);
    let cancelled = a.response(&call.call_id, Method::Cancel);
    assert_eq!(cancelled.status(), Some(200), "{}", first_line(&cancelled));
    let cancel = b.request(Method::Cancel, &call.call_id);
    b.answer(&cancel, 200, "OK", CALLEE_TAG);
    b.answer(&invite, 487, "Request Terminated", CALLEE_TAG);
    let resp = a.response(&call.call_id, Method::Invite);
    assert_eq!(resp.status(), Some(487), "{}", first_line(&resp));
    a.ack_failure(&call, &resp);
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.cseq().seq, call.cseq, "T ACKs B's 487");
    assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);
}

/// Scenario: the callee hangs up. B's BYE follows the INVITE's
/// Record-Route (T, S) to A's Contact; A's 200 comes back to B; both
/// agents end free, no session left, and no blade sent a BYE itself.
#[test]
fn the_callee_hangs_up() {
    let k = 10;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));
    let (call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let bye = callee_request(&b, &invite, "BYE", 1);
    b.send(&bye);
    let got = a.request(Method::Bye, &call.call_id);
    common::assert_dialog_bye(&a, &got, &call.call_id, (&call.from_tag, CALLEE_TAG), 0);
    a.answer(&got, 200, "OK", "unused");
    let done = final_response(&mut b, &call.call_id, Method::Bye, 1);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);
    let own = |i| cluster.metric(i, "sipblade_sessions_bye_sent_total");
    assert_eq!((own(s), own(t)), (0.0, 0.0), "no blade hung up itself");
    let stray = a.collect_where(QUIET, |m| m.call_id() == call.call_id);
    assert!(stray.is_empty(), "{stray:?}");
}

/// Scenario: a whole call (re-INVITE and UPDATE both ways, INFO, BYE
/// from the callee) for each placement of caller and callee on the cores:
/// apart (1001 → 1002, 1002 → 1001) and together (1001 → 1003, both on
/// core 1; 1004 → 1002, both on core 0).
#[test]
fn mid_call_requests_pass_for_every_placement_on_the_cores() {
    let k = 11;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    for (caller, callee, apart) in [
        ("1001", "1002", true),
        ("1002", "1001", true),
        ("1001", "1003", false),
        ("1004", "1002", false),
    ] {
        let placed = shard_of(caller.as_bytes(), CORES) != shard_of(callee.as_bytes(), CORES);
        assert_eq!(placed, apart, "{caller} → {callee}");
        let mut a = cluster.registered_on(s, caller, phone(k, 0));
        let mut b = cluster.registered_on(t, callee, phone(k, 1));
        let (mut call, invite) = answered_cross_call(&mut a, &mut b);
        confirm(&mut a, &mut b, &call);
        assert_hosted(&cluster, t, callee, "blade-1");

        let mut b_cseq = 0;
        for method in ["INVITE", "UPDATE", "INFO"] {
            let m = Method::from_bytes(method.as_bytes());
            let text = caller_request(&a, &mut call, method);
            a.send(&text);
            let got = b.request(m, &call.call_id);
            b.answer(&got, 200, "OK", CALLEE_TAG);
            let ok = final_response(&mut a, &call.call_id, m, call.cseq);
            assert_eq!(
                ok.status(),
                Some(200),
                "{caller} {method}: {}",
                first_line(&ok)
            );
            if m == Method::Invite {
                a.ack_2xx(&call);
                b.request(Method::Ack, &call.call_id);
            }

            b_cseq += 1;
            let text = callee_request(&b, &invite, method, b_cseq);
            b.send(&text);
            let got = a.request(m, &call.call_id);
            a.answer(&got, 200, "OK", "unused");
            let ok = final_response(&mut b, &call.call_id, m, b_cseq);
            assert_eq!(
                ok.status(),
                Some(200),
                "{callee} {method}: {}",
                first_line(&ok)
            );
            if m == Method::Invite {
                b.send(callee_request(&b, &invite, "ACK", b_cseq));
                a.request(Method::Ack, &call.call_id);
            }
        }
        in_call(&cluster, s, caller);
        assert_eq!(cluster.agent(s, callee)["state"], "in_call");
        assert_hosted(&cluster, t, callee, "blade-1");

        b_cseq += 1;
        b.send(callee_request(&b, &invite, "BYE", b_cseq));
        let bye = a.request(Method::Bye, &call.call_id);
        a.answer(&bye, 200, "OK", "unused");
        let done = final_response(&mut b, &call.call_id, Method::Bye, b_cseq);
        assert_eq!(done.status(), Some(200), "{}", first_line(&done));
        assert_all_free(&cluster, &[(caller, s), (callee, t)]);
        // Logged out, so the next pair may use these extensions anywhere.
        assert_eq!(a.register(0).status(), Some(200));
        assert_eq!(b.register(0).status(), Some(200));
        cluster.wait_state(s, caller, "logged_out");
        cluster.wait_state(t, callee, "logged_out");
    }
}

/// Two blades of two cores like [`two_blades`], provisioned with `extra`
/// agents besides the usual four.
fn two_blades_with_agents(k: u8, extra: &[String]) -> TestCluster {
    TestCluster::start_in_with_agents(SUBNET, 2, 8 * k + 1, CORES, extra)
}

/// How many calls [`concurrent_calls_each_reinvite_then_hang_up`] places.
const CALLS: usize = 10;

/// Scenario: ten cross-blade calls at once between distinct pairs
/// (callers 20xx on S, callees 30xx on T, spread over both cores), each in
/// a thread of its own: answered, confirmed; while all ten are up, every
/// caller is in a call on S and every callee hosted by S on T, with ten
/// sessions on S; then each does a re-INVITE (answered 200, ACKed) and
/// hangs up. Afterwards no agent is hosted or in a call on either blade
/// and neither holds a session.
#[test]
fn concurrent_calls_each_reinvite_then_hang_up() {
    let k = 12;
    let callers: Vec<String> = (1..=CALLS).map(|n| format!("{}", 2000 + n)).collect();
    let callees: Vec<String> = (1..=CALLS).map(|n| format!("{}", 3000 + n)).collect();
    let all: Vec<String> = callers.iter().chain(&callees).cloned().collect();
    let cores: std::collections::HashSet<_> =
        all.iter().map(|e| shard_of(e.as_bytes(), CORES)).collect();
    assert_eq!(cores.len(), 2, "agents on both cores");
    let cluster = two_blades_with_agents(k, &all);
    let (s, t) = (0, 1);
    let mut pairs: Vec<(Ua, Ua)> = callers
        .iter()
        .zip(&callees)
        .map(|(a, b)| {
            (
                cluster.registered_on(s, a, phone(k, 0)),
                cluster.registered_on(t, b, phone(k, 1)),
            )
        })
        .collect();

    let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
    let mut go = Vec::new();
    std::thread::scope(|scope| {
        for (a, b) in &mut pairs {
            let up = up_tx.clone();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            go.push(go_tx);
            scope.spawn(move || {
                let (mut call, _) = answered_cross_call(a, b);
                confirm(a, b, &call);
                let _ = up.send(());
                go_rx
                    .recv_timeout(Duration::from_secs(30))
                    .expect("the go-ahead");
                let reinvite = caller_request(a, &mut call, "INVITE");
                a.send(&reinvite);
                let got = b.request(Method::Invite, &call.call_id);
                assert_eq!(got.cseq().seq, call.cseq);
                b.answer(&got, 200, "OK", CALLEE_TAG);
                let ok = final_response(a, &call.call_id, Method::Invite, call.cseq);
                assert_eq!(ok.status(), Some(200), "{}: {}", a.ext, first_line(&ok));
                a.ack_2xx(&call);
                let ack = b.request(Method::Ack, &call.call_id);
                assert_eq!(ack.cseq().seq, call.cseq);
                hang_up(a, b, &mut call);
            });
        }
        drop(up_tx);
        for n in 0..CALLS {
            up_rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("only {n} of {CALLS} calls came up"));
        }
        for (a, b) in callers.iter().zip(&callees) {
            in_call(&cluster, s, a);
            assert_eq!(cluster.agent(s, b)["state"], "in_call", "{b} on S");
            assert_hosted(&cluster, t, b, "blade-1");
        }
        assert_eq!(
            cluster.sessions(s).len(),
            CALLS,
            "{:?}",
            cluster.sessions(s)
        );
        assert!(cluster.sessions(t).is_empty(), "{:?}", cluster.sessions(t));
        for g in &go {
            let _ = g.send(());
        }
    });

    let homes: Vec<(&str, usize)> = callers
        .iter()
        .map(|e| (e.as_str(), s))
        .chain(callees.iter().map(|e| (e.as_str(), t)))
        .collect();
    assert_all_free(&cluster, &homes);
    for i in [s, t] {
        let status = cluster.status(i);
        let busy: Vec<_> = status["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .filter(|a| a["state"] == "in_call" || a["state"] == "hosted")
            .collect();
        assert!(busy.is_empty(), "blade {i}: {busy:?}");
    }
}

/// Scenario: calls both ways at once. A (1001, on S) calls B (1002,
/// on T) while C (1003, on T) calls D (1004, on S): both INVITEs are out
/// before either is answered. Each blade is source of one session and
/// target of the other: S hosts B, T hosts D. Both calls re-INVITE at once
/// from each side, then A and D (the callee of the other call) hang up at
/// once; all four agents end free and no session is left.
#[test]
fn calls_both_ways_at_once() {
    let k = 13;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", phone(k, 0));
    let mut b = cluster.registered_on(t, "1002", phone(k, 1));
    let mut c = cluster.registered_on(t, "1003", phone(k, 2));
    let mut d = cluster.registered_on(s, "1004", phone(k, 3));

    let mut ab = a.call("1002");
    let mut cd = c.call("1004");
    a.invite(&mut ab, "");
    c.invite(&mut cd, "");
    let at_b = b.request(Method::Invite, &ab.call_id);
    let at_d = d.request(Method::Invite, &cd.call_id);
    assert_eq!(at_b.record_routes().count(), 2);
    assert_eq!(at_d.record_routes().count(), 2);
    b.answer(&at_b, 180, "Ringing", CALLEE_TAG);
    d.answer(&at_d, 180, "Ringing", CALLEE_TAG);
    b.answer(&at_b, 200, "OK", CALLEE_TAG);
    d.answer(&at_d, 200, "OK", CALLEE_TAG);
    for (caller, call) in [(&mut a, &mut ab), (&mut c, &mut cd)] {
        let ringing = caller.response(&call.call_id, Method::Invite);
        assert_eq!(ringing.status(), Some(180), "{}", first_line(&ringing));
        let ok = caller.response(&call.call_id, Method::Invite);
        assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
        call.learn(&ok);
        assert_eq!(call.routes.len(), 2);
    }
    confirm(&mut a, &mut b, &ab);
    confirm(&mut c, &mut d, &cd);

    in_call(&cluster, s, "1001");
    assert_hosted(&cluster, s, "1004", "blade-2");
    in_call(&cluster, t, "1003");
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_eq!(cluster.sessions(s).len(), 1, "{:?}", cluster.sessions(s));
    assert_eq!(cluster.sessions(t).len(), 1, "{:?}", cluster.sessions(t));

    // Both callers re-INVITE at once.
    let from_a = caller_request(&a, &mut ab, "INVITE");
    let from_c = caller_request(&c, &mut cd, "INVITE");
    a.send(&from_a);
    c.send(&from_c);
    let got_b = b.request(Method::Invite, &ab.call_id);
    let got_d = d.request(Method::Invite, &cd.call_id);
    b.answer(&got_b, 200, "OK", CALLEE_TAG);
    d.answer(&got_d, 200, "OK", CALLEE_TAG);
    for (caller, callee, call) in [(&mut a, &mut b, &ab), (&mut c, &mut d, &cd)] {
        let ok = final_response(caller, &call.call_id, Method::Invite, call.cseq);
        assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
        caller.ack_2xx(call);
        let ack = callee.request(Method::Ack, &call.call_id);
        assert_eq!(ack.cseq().seq, call.cseq);
    }

    // Both callees re-INVITE at once.
    let from_b = callee_request(&b, &at_b, "INVITE", 1);
    let from_d = callee_request(&d, &at_d, "INVITE", 1);
    b.send(&from_b);
    d.send(&from_d);
    let got_a = a.request(Method::Invite, &ab.call_id);
    let got_c = c.request(Method::Invite, &cd.call_id);
    a.answer(&got_a, 200, "OK", "unused");
    c.answer(&got_c, 200, "OK", "unused");
    for (callee, invite, caller, call_id) in [
        (&mut b, &at_b, &mut a, &ab.call_id),
        (&mut d, &at_d, &mut c, &cd.call_id),
    ] {
        let ok = final_response(callee, call_id, Method::Invite, 1);
        assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
        callee.send(callee_request(callee, invite, "ACK", 1));
        let ack = caller.request(Method::Ack, call_id);
        assert_eq!(ack.cseq().seq, 1);
    }

    // A and D hang up at once.
    a.bye(&mut ab);
    d.send(callee_request(&d, &at_d, "BYE", 2));
    let bye_b = b.request(Method::Bye, &ab.call_id);
    let bye_c = c.request(Method::Bye, &cd.call_id);
    b.answer(&bye_b, 200, "OK", CALLEE_TAG);
    c.answer(&bye_c, 200, "OK", "unused");
    let done = final_response(&mut a, &ab.call_id, Method::Bye, ab.cseq);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    let done = final_response(&mut d, &cd.call_id, Method::Bye, 2);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));

    assert_all_free(
        &cluster,
        &[("1001", s), ("1002", t), ("1003", t), ("1004", s)],
    );
    let own = |i| cluster.metric(i, "sipblade_sessions_bye_sent_total");
    assert_eq!((own(s), own(t)), (0.0, 0.0), "no blade hung up itself");
}

/// Scenario (as in tests/midcall.rs, on blades of two cores): A's
/// re-INVITE has reached B's phone, which answered 100 and thinks it
/// over, when T is SIGKILLed. When the lease runs out S hangs A up with a
/// BYE of its own, and A's re-INVITE gets its final answer then (408),
/// not after timer C; once ACKed it is not retransmitted, and A is free.
#[test]
fn a_reinvite_through_a_killed_target_is_answered_when_the_hosting_is_lost() {
    const LEASE: u64 = 3;
    let k = 14;
    let (s, t) = (0, 1);
    let mut cluster = TestCluster::start_in(SUBNET, 2, 8 * k + 1, LEASE as u32, CORES, &[t]);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let reinvite = caller_request(&a, &mut call, "INVITE");
    a.send(&reinvite);
    let got = b.request(Method::Invite, &call.call_id);
    assert_eq!(got.cseq().seq, call.cseq);
    b.answer(&got, 100, "Trying", CALLEE_TAG);
    // T's own 100 (held back 200 ms towards a peer) reaches S first.
    std::thread::sleep(Duration::from_millis(600));
    cluster.kill_blade(t);

    let bye = a
        .next_where(Duration::from_secs(LEASE + 4), |m| {
            m.method() == Some(Method::Bye) && m.call_id() == call.call_id
        })
        .expect("S's BYE once the hosting is lost");
    a.answer(&bye, 200, "OK", "unused");
    let answer = a
        .next_where(Duration::from_secs(3), |m| {
            final_to(m, &call.call_id, Method::Invite, call.cseq)
        })
        .expect("the re-INVITE's final answer");
    assert_eq!(answer.status(), Some(408), "{}", first_line(&answer));
    a.send(ack_of(&reinvite));
    wait_ready(&cluster, s, CALLER);
    common::wait_until("no session on S", || cluster.sessions(s).is_empty());
    let again = a.collect_where(Duration::from_millis(1200), |m| {
        final_to(m, &call.call_id, Method::Invite, call.cseq)
    });
    assert!(again.is_empty(), "ACKed: not retransmitted: {again:?}");
}

/// The mirror image: B's re-INVITE has reached A's phone when S is
/// SIGKILLed; when the lease lapses T hangs B up with a BYE of its own,
/// and B's re-INVITE gets its final answer then (408); B is free on T.
#[test]
fn a_reinvite_through_a_killed_source_is_answered_when_the_lease_lapses() {
    const LEASE: u64 = 3;
    let k = 15;
    let (s, t) = (0, 1);
    let mut cluster = TestCluster::start_in(SUBNET, 2, 8 * k + 1, LEASE as u32, CORES, &[s]);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));
    let (call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);
    assert_hosted(&cluster, t, CALLEE, "blade-1");

    let reinvite = callee_request(&b, &invite, "INVITE", 1);
    b.send(&reinvite);
    let got = a.request(Method::Invite, &call.call_id);
    assert_eq!(got.cseq().seq, 1);
    a.answer(&got, 100, "Trying", "unused");
    std::thread::sleep(Duration::from_millis(600));
    cluster.kill_blade(s);

    let bye = b
        .next_where(Duration::from_secs(LEASE + 4), |m| {
            m.method() == Some(Method::Bye) && m.call_id() == call.call_id
        })
        .expect("T's BYE once the lease lapses");
    b.answer(&bye, 200, "OK", "unused");
    let answer = b
        .next_where(Duration::from_secs(3), |m| {
            final_to(m, &call.call_id, Method::Invite, 1)
        })
        .expect("the re-INVITE's final answer");
    assert_eq!(answer.status(), Some(408), "{}", first_line(&answer));
    b.send(ack_of(&reinvite));
    wait_ready(&cluster, t, CALLEE);
    let again = b.collect_where(Duration::from_millis(1200), |m| {
        final_to(m, &call.call_id, Method::Invite, 1)
    });
    assert!(again.is_empty(), "ACKed: not retransmitted: {again:?}");
}

/// Scenario: both phones hang up at once (crossing BYEs) on blades of
/// two cores. Each BYE reaches the other phone and is answered 200; both
/// agents end free and no blade sends a BYE of its own. B's BYE sent
/// again after the unhost is answered 200 by T from its transaction
/// (wherever the kernel puts it), not relayed to A again.
#[test]
fn crossing_byes_both_pass_and_free_both_agents() {
    let k = 16;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));
    let (mut call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let from_b = callee_request(&b, &invite, "BYE", 1);
    a.bye(&mut call);
    b.send(&from_b);
    let at_b = b.request(Method::Bye, &call.call_id);
    let at_a = a.request(Method::Bye, &call.call_id);
    assert_eq!(at_b.cseq().seq, call.cseq, "A's BYE");
    assert_eq!(at_a.cseq().seq, 1, "B's BYE");
    b.answer(&at_b, 200, "OK", CALLEE_TAG);
    a.answer(&at_a, 200, "OK", "unused");
    let to_a = final_response(&mut a, &call.call_id, Method::Bye, call.cseq);
    assert_eq!(to_a.status(), Some(200), "{}", first_line(&to_a));
    let to_b = final_response(&mut b, &call.call_id, Method::Bye, 1);
    assert_eq!(to_b.status(), Some(200), "{}", first_line(&to_b));

    assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);
    let own = |i| cluster.metric(i, "sipblade_sessions_bye_sent_total");
    assert_eq!((own(s), own(t)), (0.0, 0.0), "no blade hung up itself");

    b.send(&from_b);
    let again = b.recv_raw(Duration::from_secs(1)).expect("the 200 again");
    let again = Message::parse(again).expect("a response");
    assert_eq!(again.status(), Some(200), "{}", first_line(&again));
    assert_eq!(again.cseq().method, Method::Bye);
    assert_eq!(a.recv_raw(QUIET), None, "not relayed to A again");
    assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);
}

/// Scenario: a call that outlasts its lease several times, with the
/// callee (1003) on core 1 of each blade and the caller (1002) on core 0:
/// the session and the grant live on core 1 while the link is core 0's,
/// so every renewal crosses cores both ways. B stays hosted by S all
/// along, a re-INVITE late in the call passes, and the hang-up frees both.
#[test]
fn renewals_keep_a_callee_hosted_from_a_core_away_from_the_link() {
    const LEASE: u32 = 2;
    let k = 17;
    let (caller, callee) = ("1002", "1003");
    assert_eq!(shard_of(caller.as_bytes(), CORES), 0, "the link's core");
    assert_eq!(shard_of(callee.as_bytes(), CORES), 1);
    let cluster = TestCluster::start_in(SUBNET, 2, 8 * k + 1, LEASE, CORES, &[]);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, caller, phone(k, 0));
    let mut b = cluster.registered_on(t, callee, phone(k, 1));
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let until = std::time::Instant::now() + Duration::from_secs(3 * u64::from(LEASE));
    while std::time::Instant::now() < until {
        assert_hosted(&cluster, t, callee, "blade-1");
        assert_eq!(cluster.sessions(s).len(), 1, "{:?}", cluster.sessions(s));
        std::thread::sleep(Duration::from_millis(250));
    }
    let stray = b.collect_where(QUIET, |m| m.call_id() == call.call_id);
    assert!(stray.is_empty(), "nothing for B meanwhile: {stray:?}");

    let reinvite = caller_request(&a, &mut call, "INVITE");
    a.send(&reinvite);
    let got = b.request(Method::Invite, &call.call_id);
    b.answer(&got, 200, "OK", CALLEE_TAG);
    let ok = final_response(&mut a, &call.call_id, Method::Invite, call.cseq);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    a.ack_2xx(&call);
    b.request(Method::Ack, &call.call_id);

    hang_up(&mut a, &mut b, &mut call);
    assert_all_free(&cluster, &[(caller, s), (callee, t)]);
}

/// The CANCEL of the re-INVITE `reinvite` (its text as sent): same
/// Request-URI, Via, Route, From, To, Call-ID and CSeq number (RFC 3261
/// §9.1).
fn cancel_of(reinvite: &str) -> String {
    ack_of(reinvite)
        .replacen("ACK ", "CANCEL ", 1)
        .replace(" ACK\r\n", " CANCEL\r\n")
}

/// A re-INVITE (from `sender`) that its sender cancels while the other
/// phone thinks it over: the CANCEL is answered 200 and reaches the other
/// phone, which answers it 200 and the re-INVITE 487; the 487 comes back
/// (ACKed hop by hop and by the sender), and the call goes on: a BYE
/// after it passes and frees both agents.
fn cancelled_reinvite(k: u8, sender: Sender) {
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));
    let (mut call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);
    let call_id = call.call_id.clone();

    let (reinvite, seq) = match sender {
        Sender::Caller => (caller_request(&a, &mut call, "INVITE"), call.cseq),
        Sender::Callee => (callee_request(&b, &invite, "INVITE", 1), 1),
    };
    {
        let (from, to) = match sender {
            Sender::Caller => (&mut a, &mut b),
            Sender::Callee => (&mut b, &mut a),
        };
        from.send(&reinvite);
        let got = to.request(Method::Invite, &call_id);
        assert_eq!(got.cseq().seq, seq);
        to.answer(&got, 100, "Trying", CALLEE_TAG);
        from.send(cancel_of(&reinvite));
        let cancelled = final_response(from, &call_id, Method::Cancel, seq);
        assert_eq!(cancelled.status(), Some(200), "{}", first_line(&cancelled));
        let cancel = to.request(Method::Cancel, &call_id);
        assert_eq!(cancel.cseq().seq, seq);
        to.answer(&cancel, 200, "OK", CALLEE_TAG);
        to.answer(&got, 487, "Request Terminated", CALLEE_TAG);
        let ended = final_response(from, &call_id, Method::Invite, seq);
        assert_eq!(ended.status(), Some(487), "{}", first_line(&ended));
        from.send(ack_of(&reinvite));
        let ack = to.request(Method::Ack, &call_id);
        assert_eq!(ack.cseq().seq, seq, "the blade next to it ACKs the 487");
        let again = from.collect_where(Duration::from_millis(1200), |m| {
            final_to(m, &call_id, Method::Invite, seq)
        });
        assert!(again.is_empty(), "ACKed: not retransmitted: {again:?}");
    }
    // The 487 ended the re-INVITE, not the call.
    in_call(&cluster, s, CALLER);
    assert_hosted(&cluster, t, CALLEE, "blade-1");
    assert_eq!(cluster.sessions(s).len(), 1, "{:?}", cluster.sessions(s));
    hang_up(&mut a, &mut b, &mut call);
    assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);
}

/// A cancels its own re-INVITE.
#[test]
fn a_callers_cancelled_reinvite_leaves_the_call_up() {
    cancelled_reinvite(18, Sender::Caller);
}

/// B cancels its own re-INVITE.
#[test]
fn a_callees_cancelled_reinvite_leaves_the_call_up() {
    cancelled_reinvite(19, Sender::Callee);
}

/// Scenario: while B (1002, core 0) is in a call hosted by S, C
/// (1003, core 1 of T) calls B: T holds the INVITE and asks S, which
/// answers busy; C gets 486 (and T ACKs nothing of B's: B never rings).
/// A's call is untouched. Once A hangs up, C's call to B goes through on
/// T alone.
#[test]
fn a_call_to_the_hosted_callee_from_its_own_blade_is_busy_then_goes_through() {
    let k = 20;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));
    let mut c = cluster.registered_on(t, "1003", phone(k, 2));
    assert_ne!(shard_of(b"1003", CORES), shard_of(CALLEE.as_bytes(), CORES));
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let mut busy = c.call(CALLEE);
    c.invite(&mut busy, "");
    let refused = c.response(&busy.call_id, Method::Invite);
    assert_eq!(refused.status(), Some(486), "{}", first_line(&refused));
    c.ack_failure(&busy, &refused);
    let rung = b.collect_where(QUIET, |m| m.call_id() == busy.call_id);
    assert!(rung.is_empty(), "B never rings: {rung:?}");
    assert_hosted(&cluster, t, CALLEE, "blade-1");
    in_call(&cluster, s, CALLER);

    // A's call goes on.
    let reinvite = caller_request(&a, &mut call, "INVITE");
    a.send(&reinvite);
    let got = b.request(Method::Invite, &call.call_id);
    b.answer(&got, 200, "OK", CALLEE_TAG);
    let ok = final_response(&mut a, &call.call_id, Method::Invite, call.cseq);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    a.ack_2xx(&call);
    b.request(Method::Ack, &call.call_id);
    hang_up(&mut a, &mut b, &mut call);
    assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);

    let (mut local, _) = common::calls::answered_call(&mut c, &mut b, 1);
    confirm(&mut c, &mut b, &local);
    in_call(&cluster, t, "1003");
    cluster.wait_state(t, CALLEE, "in_call");
    assert!(cluster.sessions(s).is_empty(), "{:?}", cluster.sessions(s));
    hang_up(&mut c, &mut b, &mut local);
    wait_ready(&cluster, t, "1003");
    wait_ready(&cluster, t, CALLEE);
}

/// Scenario: UPDATE glare (RFC 3311 §5.2): both phones UPDATE at once
/// and each answers the other's 491; each 491 reaches the UPDATE's sender
/// through both blades (no ACK: UPDATE is not an INVITE), and a later
/// UPDATE from each passes. The call ends with both free.
#[test]
fn update_glare_passes_491_both_ways() {
    let k = 21;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));
    let (mut call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let from_a = caller_request(&a, &mut call, "UPDATE");
    let from_b = callee_request(&b, &invite, "UPDATE", 1);
    a.send(&from_a);
    b.send(&from_b);
    let at_b = b.request(Method::Update, &call.call_id);
    let at_a = a.request(Method::Update, &call.call_id);
    b.answer(&at_b, 491, "Request Pending", CALLEE_TAG);
    a.answer(&at_a, 491, "Request Pending", "unused");
    let to_a = final_response(&mut a, &call.call_id, Method::Update, call.cseq);
    assert_eq!(to_a.status(), Some(491), "{}", first_line(&to_a));
    let to_b = final_response(&mut b, &call.call_id, Method::Update, 1);
    assert_eq!(to_b.status(), Some(491), "{}", first_line(&to_b));
    let acks = b.collect_where(QUIET, |m| m.method() == Some(Method::Ack));
    assert!(acks.is_empty(), "no ACK for a non-INVITE: {acks:?}");

    let retry = caller_request(&a, &mut call, "UPDATE");
    a.send(&retry);
    let got = b.request(Method::Update, &call.call_id);
    b.answer(&got, 200, "OK", CALLEE_TAG);
    let ok = final_response(&mut a, &call.call_id, Method::Update, call.cseq);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    let retry = callee_request(&b, &invite, "UPDATE", 2);
    b.send(&retry);
    let got = a.request(Method::Update, &call.call_id);
    a.answer(&got, 200, "OK", "unused");
    let ok = final_response(&mut b, &call.call_id, Method::Update, 2);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));

    hang_up(&mut a, &mut b, &mut call);
    assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);
}

/// Scenario: A's CANCEL goes out right after its INVITE, at delays
/// that put it while S waits for the grant, while the INVITE is on its way
/// to T or B, and after B rang. Whatever B saw, A's CANCEL is answered
/// 200 and its INVITE 487 (after a 180 if B rang first); if the INVITE
/// reached B, so does the CANCEL (B answers 487, which T ACKs). Each time both agents end free and no
/// session is left. (B rings at once: a CANCEL goes downstream only once
/// a provisional came back, RFC 3261 §9.1.)
#[test]
fn a_cancel_at_any_point_of_the_set_up_frees_both() {
    let k = 22;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));
    for delay_ms in [0, 1, 2, 4, 8, 16, 32] {
        let mut call = a.call(CALLEE);
        a.invite(&mut call, "");
        std::thread::sleep(Duration::from_millis(delay_ms));
        a.cancel(&call);
        let cancelled = a.response(&call.call_id, Method::Cancel);
        assert_eq!(
            cancelled.status(),
            Some(200),
            "{delay_ms} ms: {}",
            first_line(&cancelled)
        );
        // B: nothing, or the INVITE and then the CANCEL.
        if let Some(invite) = b.next_where(Duration::from_millis(500), |m| {
            m.method() == Some(Method::Invite) && m.call_id() == call.call_id
        }) {
            // A CANCEL waits for a provisional (RFC 3261 §9.1).
            b.answer(&invite, 180, "Ringing", CALLEE_TAG);
            let cancel = b.request(Method::Cancel, &call.call_id);
            b.answer(&cancel, 200, "OK", CALLEE_TAG);
            b.answer(&invite, 487, "Request Terminated", CALLEE_TAG);
            let ack = b.request(Method::Ack, &call.call_id);
            assert_eq!(ack.cseq().seq, call.cseq, "T ACKs B's 487");
        }
        let ended = final_response(&mut a, &call.call_id, Method::Invite, call.cseq);
        assert_eq!(
            ended.status(),
            Some(487),
            "{delay_ms} ms: {}",
            first_line(&ended)
        );
        a.ack_failure(&call, &ended);
        assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);
        let stray = b.collect_where(QUIET, |m| m.call_id() == call.call_id);
        assert!(stray.is_empty(), "{delay_ms} ms: {stray:?}");
        let again = a.collect_where(Duration::ZERO, |m| {
            m.call_id() == call.call_id && m.status().is_some_and(|s| s >= 200)
        });
        assert!(again.is_empty(), "{delay_ms} ms: {again:?}");
    }
}

/// Scenario: A sends its ACK and then at once a request of the call
/// (a BYE; a re-INVITE and then a BYE), with no pause between: on blades
/// of two cores the ACK is steered to the session's core by its
/// Request-URI user while the other request may land on the other core
/// and be handed over. B gets the ACK and the request; everything is
/// answered, and both agents end free each time.
#[test]
fn requests_right_behind_the_ack() {
    let k = 23;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));
    for round in 0..4 {
        let (mut call, _) = answered_cross_call(&mut a, &mut b);
        if round % 2 == 1 {
            a.ack_2xx(&call);
            let reinvite = caller_request(&a, &mut call, "INVITE");
            a.send(&reinvite);
            b.request(Method::Ack, &call.call_id);
            let got = b.request(Method::Invite, &call.call_id);
            b.answer(&got, 200, "OK", CALLEE_TAG);
            let ok = final_response(&mut a, &call.call_id, Method::Invite, call.cseq);
            assert_eq!(ok.status(), Some(200), "{round}: {}", first_line(&ok));
        }
        a.ack_2xx(&call);
        a.bye(&mut call);
        let ack = b.request(Method::Ack, &call.call_id);
        assert_eq!(ack.cseq().seq, call.cseq - 1, "{round}");
        let bye = b.request(Method::Bye, &call.call_id);
        b.answer(&bye, 200, "OK", CALLEE_TAG);
        let done = final_response(&mut a, &call.call_id, Method::Bye, call.cseq);
        assert_eq!(done.status(), Some(200), "{round}: {}", first_line(&done));
        assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);
    }
}

/// Scenario: B's 200 passes both blades and reaches A before A's
/// CANCEL (sent before A saw the 200) reaches S: the CANCEL finds an
/// answered INVITE and goes no further (B gets no CANCEL); A still gets a
/// final answer to it, the call is established by A's ACK and ends with a
/// BYE, leaving both free.
#[test]
fn a_cancel_behind_the_200_does_not_end_the_call() {
    let k = 24;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));
    let mut call = a.call(CALLEE);
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    a.cancel(&call);
    let answer = final_response(&mut a, &call.call_id, Method::Cancel, call.cseq);
    assert!(
        matches!(answer.status(), Some(200 | 481)),
        "{}",
        first_line(&answer)
    );
    confirm(&mut a, &mut b, &call);
    let stray = b.collect_where(QUIET, |m| m.method() == Some(Method::Cancel));
    assert!(stray.is_empty(), "{stray:?}");
    let stray = a.collect_where(QUIET, |m| m.status() == Some(487));
    assert!(stray.is_empty(), "{stray:?}");
    in_call(&cluster, s, CALLER);
    assert_hosted(&cluster, t, CALLEE, "blade-1");
    hang_up(&mut a, &mut b, &mut call);
    assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t)]);
}

/// Scenario: two calls for B at once, one from A on S (a cross-blade
/// call, hosting B) and one from C on B's own blade T (a local call there):
/// exactly one reaches B's phone, and the other caller gets 486 Busy Here
/// (T refuses to host a busy B, or S, hosting B, answers T's redirect
/// busy). B answers the one it got; that call confirms and hangs up, and
/// all three agents end free, round after round, whichever goes first.
#[test]
fn two_callers_racing_for_one_callee_one_rings_one_is_busy() {
    let k = 25;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, phone(k, 0));
    let mut b = cluster.registered_on(t, CALLEE, phone(k, 1));
    let mut c = cluster.registered_on(t, "1003", phone(k, 2));
    for round in 0..6 {
        let mut from_a = a.call(CALLEE);
        let mut from_c = c.call(CALLEE);
        if round % 2 == 0 {
            a.invite(&mut from_a, "");
            c.invite(&mut from_c, "");
        } else {
            c.invite(&mut from_c, "");
            a.invite(&mut from_a, "");
        }
        let invite = b.expect_where("an INVITE", |m| m.method() == Some(Method::Invite));
        let (winner, loser, mut call, mut lost, blades) = if invite.call_id() == from_a.call_id {
            (&mut a, &mut c, from_a, from_c, 2)
        } else {
            (&mut c, &mut a, from_c, from_a, 1)
        };
        let busy = loser.response(&lost.call_id, Method::Invite);
        assert_eq!(busy.status(), Some(486), "{round}: {}", first_line(&busy));
        loser.ack_failure(&lost, &busy);
        lost.cseq = 0;
        b.answer(&invite, 200, "OK", CALLEE_TAG);
        let ok = winner.response(&call.call_id, Method::Invite);
        assert_eq!(ok.status(), Some(200), "{round}: {}", first_line(&ok));
        call.learn(&ok);
        assert_eq!(call.routes.len(), blades);
        confirm(winner, &mut b, &call);
        let more = b.collect_where(QUIET, |m| m.method() == Some(Method::Invite));
        assert!(more.is_empty(), "{round}: one INVITE only: {more:?}");
        hang_up(winner, &mut b, &mut call);
        assert_all_free(&cluster, &[(CALLER, s), (CALLEE, t), ("1003", t)]);
    }
}

/// Scenario: B hangs up and at once calls A back (an auto-dialler
/// would). A's call ended on S's session core, B's (core 0), the core
/// that runs the link, while A's own record lives on core 1; T's host
/// request for A reaches core 1 through core 0. The notice that A left
/// its call must get there first: the call back rings A (not 486 Busy
/// Here, as it did while the notice waited for the timer grid). Then the
/// call back ends and all are free, round after round.
#[test]
fn the_callee_calls_the_caller_back_at_once_after_hanging_up() {
    call_back_at_once(26, CALLER, CALLEE);
}

/// B (`callee`, on T) hangs up the call from A (`caller`, on S) and at
/// once calls A back: A rings, answers, and the call back ends; three
/// rounds.
fn call_back_at_once(k: u8, caller: &str, callee: &str) {
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, caller, phone(k, 0));
    let mut b = cluster.registered_on(t, callee, phone(k, 1));
    for round in 0..3 {
        let (call, invite) = answered_cross_call(&mut a, &mut b);
        confirm(&mut a, &mut b, &call);
        in_call(&cluster, s, caller);
        b.send(callee_request(&b, &invite, "BYE", 1));
        let bye = a.request(Method::Bye, &call.call_id);
        a.answer(&bye, 200, "OK", "unused");
        let done = final_response(&mut b, &call.call_id, Method::Bye, 1);
        assert_eq!(done.status(), Some(200), "{}", first_line(&done));

        let mut back = b.call(caller);
        b.invite(&mut back, "");
        let Some(got) = a.next_where(common::WAIT, |m| {
            m.method() == Some(Method::Invite) && m.call_id() == back.call_id
        }) else {
            let answer = b.response(&back.call_id, Method::Invite);
            panic!("{round}: A never rang; B got {}", first_line(&answer));
        };
        a.answer(&got, 200, "OK", CALLEE_TAG);
        let ok = b.response(&back.call_id, Method::Invite);
        assert_eq!(ok.status(), Some(200), "{round}: {}", first_line(&ok));
        back.learn(&ok);
        confirm(&mut b, &mut a, &back);
        hang_up(&mut b, &mut a, &mut back);
        assert_all_free(&cluster, &[(caller, s), (callee, t)]);
    }
}

/// The same with the session's core away from the link's: the
/// callee 1003 on core 1, the caller 1002 on core 0, which runs the link
/// and so takes T's host request for the caller itself. The notice that
/// the caller left its call goes to core 0 ahead of the unhost (which the
/// session's core hands core 0 for the link), so the call back rings.
#[test]
fn the_callee_calls_the_caller_back_at_once_from_a_session_core_away_from_the_link() {
    assert_eq!(shard_of(b"1002", CORES), 0, "the link's core");
    assert_eq!(shard_of(b"1003", CORES), 1);
    call_back_at_once(27, "1002", "1003");
}

/// Scenario: A hangs up (or B does) and A at once calls B again: the
/// unhost of the first call and the host request of the second go over
/// the link one right behind the other; the second call must ring B (not
/// 486 for a B still hosted by the first), and end with both free. With
/// B on core 0 and on core 1 of T.
#[test]
fn the_caller_redials_at_once_after_either_party_hangs_up() {
    let k = 28;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    for (caller, callee) in [("1001", "1002"), ("1002", "1003")] {
        let mut a = cluster.registered_on(s, caller, phone(k, 0));
        let mut b = cluster.registered_on(t, callee, phone(k, 1));
        for round in 0..4 {
            let mut call = a.call(callee);
            a.invite(&mut call, "");
            let Some(invite) = b.next_where(common::WAIT, |m| {
                m.method() == Some(Method::Invite) && m.call_id() == call.call_id
            }) else {
                let answer = a.response(&call.call_id, Method::Invite);
                panic!(
                    "{caller} → {callee} {round}: B never rang; A got {}",
                    first_line(&answer)
                );
            };
            b.answer(&invite, 200, "OK", CALLEE_TAG);
            let ok = a.response(&call.call_id, Method::Invite);
            assert_eq!(ok.status(), Some(200), "{round}: {}", first_line(&ok));
            call.learn(&ok);
            confirm(&mut a, &mut b, &call);
            if round % 2 == 0 {
                hang_up(&mut a, &mut b, &mut call);
            } else {
                b.send(callee_request(&b, &invite, "BYE", 1));
                let bye = a.request(Method::Bye, &call.call_id);
                a.answer(&bye, 200, "OK", "unused");
                let done = final_response(&mut b, &call.call_id, Method::Bye, 1);
                assert_eq!(done.status(), Some(200), "{}", first_line(&done));
            }
        }
        assert_all_free(&cluster, &[(caller, s), (callee, t)]);
        assert_eq!(a.register(0).status(), Some(200));
        assert_eq!(b.register(0).status(), Some(200));
        cluster.wait_state(s, caller, "logged_out");
        cluster.wait_state(t, callee, "logged_out");
    }
}

/// A (`caller`, on S) calls B (`callee`, on T); as soon as A has B's 200,
/// C (`other`, on T) calls A: A is in a call on S, so C gets 486 Busy
/// Here and A's phone never rings for it. Then A's call ends and all are
/// free; three rounds.
fn call_to_a_caller_just_answered(k: u8, caller: &str, callee: &str, other: &str) {
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, caller, phone(k, 0));
    let mut b = cluster.registered_on(t, callee, phone(k, 1));
    let mut c = cluster.registered_on(t, other, phone(k, 2));
    for round in 0..3 {
        let (mut call, _) = answered_cross_call(&mut a, &mut b);
        let mut busy = c.call(caller);
        c.invite(&mut busy, "");
        confirm(&mut a, &mut b, &call);
        let Some(refused) = c.next_where(common::WAIT, |m| {
            final_to(m, &busy.call_id, Method::Invite, busy.cseq)
        }) else {
            let rung = a.collect_where(QUIET, |m| m.call_id() == busy.call_id);
            panic!("{round}: no answer to C; A, in a call, got {rung:?}");
        };
        assert_eq!(
            refused.status(),
            Some(486),
            "{round}: {}",
            first_line(&refused)
        );
        c.ack_failure(&busy, &refused);
        let rung = a.collect_where(QUIET, |m| m.call_id() == busy.call_id);
        assert!(rung.is_empty(), "{round}: A never rings for C: {rung:?}");
        hang_up(&mut a, &mut b, &mut call);
        assert_all_free(&cluster, &[(caller, s), (callee, t), (other, t)]);
    }
}

/// A (1001, core 1) in a call whose session is on core 0 of S, the
/// link's: C's call to A, through the link, finds A busy.
#[test]
fn a_call_to_a_caller_just_answered_is_busy() {
    call_to_a_caller_just_answered(29, "1001", "1002", "1003");
}

/// A (1002, core 0, the link's) in a call whose session is on core 1 of
/// S: C's call to A, through the link, finds A busy.
#[test]
fn a_call_to_a_caller_just_answered_is_busy_with_the_session_away_from_the_link() {
    call_to_a_caller_just_answered(30, "1002", "1003", "1001");
}

/// S's unhost of a call its relayed BYE ends waits for that BYE's 200 to
/// come back through T, also on blades of two cores, whose
/// Record-Routes name a core's port rather than the peer's SIP port: B
/// stays `hosted` on T while its phone holds the BYE unanswered (before,
/// S took the core port for no peer blade and unhosted at once, so T
/// freed B, and dropped its record of B's dialog, before the BYE got
/// there). On 127.0.15.x: this file's subnet is full.
#[test]
fn the_unhost_waits_for_the_byes_200_on_blades_of_two_cores() {
    let cluster = TestCluster::start_in(15, 2, 1, 30, CORES, &[]);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, CALLER, Ipv4Addr::new(127, 0, 15, 3));
    let mut b = cluster.registered_on(t, CALLEE, Ipv4Addr::new(127, 0, 15, 4));
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    a.bye(&mut call);
    let bye = b.request(Method::Bye, &call.call_id);
    std::thread::sleep(QUIET);
    assert_hosted(&cluster, t, CALLEE, "blade-1");
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    let done = a.response(&call.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    wait_ready(&cluster, t, CALLEE);
    cluster.wait_state(s, CALLER, "ready");
}
