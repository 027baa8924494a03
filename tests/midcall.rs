//! Mid-dialog transactions and races across blades (SPEC §2, §5): a
//! re-INVITE in progress when a blade dies, CANCEL crossing the callee's
//! 200, re-INVITE glare.
//!
//! Addresses (127.0.0.x), one range per test: blades 101-102 (phones
//! 103-104), 105-106 (107-108), 109-110 (111-112), 113-114 (115-116),
//! 117-118 (119-120), 121-122 (123-124), 125-126 (127-128).

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::calls::{
    CALLEE_TAG, ack_of, answered_cross_call, assert_hosted, callee_request, caller_request,
    confirm, hang_up, wait_ready,
};
use common::cluster::TestCluster;
use common::tcp::{TcpUa, answer, register_tcp};
use common::{Ua, first_line, header};
use sipblade::sip::{HeaderName, Message, Method};

/// Long enough to see that a message does not arrive.
const QUIET: Duration = Duration::from_millis(300);

/// Whether `m` is a final response to an INVITE of `call_id` with CSeq
/// number `seq`.
fn final_to_invite(m: &Message, call_id: &str, seq: u32) -> bool {
    !m.is_request()
        && m.call_id() == call_id
        && m.cseq().method == Method::Invite
        && m.cseq().seq == seq
        && m.status().is_some_and(|s| s >= 200)
}

/// Scenario: A (on S) puts the call on hold: its re-INVITE has passed S
/// and T and reached B's phone, which answered 100 Trying and thinks it
/// over; T, having sent S its own 100, is SIGKILLed. S loses the hosting
/// when the lease runs out and hangs the call up on A with a BYE of its
/// own; A's re-INVITE must get its final answer then (408: the dialog is
/// gone, RFC 3261 §12.2.1.2), not be left to timer C (3 minutes, then 32
/// s more for the CANCEL) as it was.
#[test]
fn a_reinvite_through_a_killed_target_is_answered_when_the_hosting_is_lost() {
    const LEASE: u64 = 3;
    let (s, t) = (0, 1);
    let mut cluster = TestCluster::start_in(0, 2, 101, LEASE as u32, 1, &[1]);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 103));
    let mut b = cluster.registered_on(t, "1002", Ipv4Addr::new(127, 0, 0, 104));
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let reinvite = caller_request(&a, &mut call, "INVITE");
    a.send(&reinvite);
    let got = b.request(Method::Invite, &call.call_id);
    assert_eq!(got.cseq().seq, call.cseq);
    b.answer(&got, 100, "Trying", CALLEE_TAG);
    // T's own 100 (held back 200 ms towards a peer) reaches S: S's branch
    // to T is past timer B's reach now.
    std::thread::sleep(Duration::from_millis(600));
    cluster.kill_blade(t);
    let killed = Instant::now();

    let bye = a
        .next_where(Duration::from_secs(LEASE + 4), |m| {
            m.method() == Some(Method::Bye) && m.call_id() == call.call_id
        })
        .unwrap_or_else(|| panic!("no BYE {:?} after T was killed", killed.elapsed()));
    a.answer(&bye, 200, "OK", "unused");
    let answer = a
        .next_where(Duration::from_secs(3), |m| {
            final_to_invite(m, &call.call_id, call.cseq)
        })
        .unwrap_or_else(|| {
            panic!(
                "the re-INVITE has no final answer {:?} after T was killed",
                killed.elapsed()
            )
        });
    assert_eq!(answer.status(), Some(408), "{}", first_line(&answer));
    a.send(ack_of(&reinvite));
    wait_ready(&cluster, s, "1001");
    assert!(cluster.sessions(s).is_empty(), "{:?}", cluster.sessions(s));
    let again = a.collect_where(Duration::from_millis(1200), |m| {
        final_to_invite(m, &call.call_id, call.cseq)
    });
    assert!(again.is_empty(), "ACKed: not retransmitted: {again:?}");
}

/// The mirror image: B (on T) sends a re-INVITE, which T relays to S and S
/// to A's phone; A thinks it over, and S, having sent T its own 100, is
/// SIGKILLed. When the lease lapses T hangs up B's phone with a BYE of
/// its own; B's re-INVITE must get its final answer then (408), not wait
/// for timer C.
#[test]
fn a_reinvite_through_a_killed_source_is_answered_when_the_lease_lapses() {
    const LEASE: u64 = 3;
    let (s, t) = (0, 1);
    let mut cluster = TestCluster::start_in(0, 2, 105, LEASE as u32, 1, &[0]);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 107));
    let mut b = cluster.registered_on(t, "1002", Ipv4Addr::new(127, 0, 0, 108));
    let (call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);
    assert_hosted(&cluster, t, "1002", "blade-1");

    let reinvite = callee_request(&b, &invite, "INVITE", 1);
    b.send(&reinvite);
    let got = a.request(Method::Invite, &call.call_id);
    assert_eq!(got.cseq().seq, 1);
    assert_eq!(
        got.to().tag(),
        Some(call.from_tag.as_str()),
        "in A's dialog"
    );
    a.answer(&got, 100, "Trying", "unused");
    std::thread::sleep(Duration::from_millis(600));
    cluster.kill_blade(s);
    let killed = Instant::now();

    let bye = b
        .next_where(Duration::from_secs(LEASE + 4), |m| {
            m.method() == Some(Method::Bye) && m.call_id() == call.call_id
        })
        .unwrap_or_else(|| panic!("no BYE {:?} after S was killed", killed.elapsed()));
    b.answer(&bye, 200, "OK", "unused");
    let answer = b
        .next_where(Duration::from_secs(3), |m| {
            final_to_invite(m, &call.call_id, 1)
        })
        .unwrap_or_else(|| {
            panic!(
                "the re-INVITE has no final answer {:?} after S was killed",
                killed.elapsed()
            )
        });
    assert_eq!(answer.status(), Some(408), "{}", first_line(&answer));
    b.send(ack_of(&reinvite));
    wait_ready(&cluster, t, "1002");
    let again = b.collect_where(Duration::from_millis(1200), |m| {
        final_to_invite(m, &call.call_id, 1)
    });
    assert!(again.is_empty(), "ACKed: not retransmitted: {again:?}");
}

/// Scenario: the caller's CANCEL crosses the callee's 200 (RFC 3261 §9.2:
/// a UAS that has answered already ignores the CANCEL, and answers it
/// 200). S and T have both relayed the CANCEL when the 200 comes: each
/// must relay the 200 all the same (§16.7 step 5), and the call is
/// established, not half-open: A gets the 200 (no 487), its ACK reaches B,
/// the agents are in the call on both blades until A hangs up, then ready.
#[test]
fn a_cancel_crossing_the_callees_200_leaves_an_established_call() {
    let cluster = TestCluster::start_with(2, 109, 30, 1);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 111));
    let mut b = cluster.registered_on(t, "1002", Ipv4Addr::new(127, 0, 0, 112));

    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180), "{}", first_line(&ringing));

    a.cancel(&call);
    let cancelled = a.response(&call.call_id, Method::Cancel);
    assert_eq!(cancelled.status(), Some(200), "{}", first_line(&cancelled));
    let cancel = b.request(Method::Cancel, &call.call_id);
    // B had answered before the CANCEL came.
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
    // B stops retransmitting its 200 once it has the ACK; the call stays.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cluster.agent(s, "1001")["state"], "in_call");
    assert_eq!(cluster.agent(s, "1002")["state"], "in_call");
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_eq!(cluster.sessions(s).len(), 1, "{:?}", cluster.sessions(s));

    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, s, "1001");
    wait_ready(&cluster, t, "1002");
    assert!(cluster.sessions(s).is_empty(), "{:?}", cluster.sessions(s));
}

/// Scenario: re-INVITE glare (RFC 3261 §14.1). Both phones re-INVITE at
/// once; each answers the other's 491 Request Pending. Each 491 reaches
/// the re-INVITE's sender through both blades, the hop that got it ACKs
/// it (a non-2xx is ACKed hop by hop), and the call goes on: a later
/// re-INVITE passes and is answered 200, and the hang-up frees both.
#[test]
fn reinvite_glare_passes_491_both_ways() {
    let cluster = TestCluster::start_with(2, 113, 30, 1);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 115));
    let mut b = cluster.registered_on(t, "1002", Ipv4Addr::new(127, 0, 0, 116));
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

    let to_a = a
        .next_where(Duration::from_secs(5), |m| {
            final_to_invite(m, &call.call_id, call.cseq)
        })
        .expect("A's re-INVITE answered");
    assert_eq!(to_a.status(), Some(491), "{}", first_line(&to_a));
    let to_b = b
        .next_where(Duration::from_secs(5), |m| {
            final_to_invite(m, &call.call_id, 1)
        })
        .expect("B's re-INVITE answered");
    assert_eq!(to_b.status(), Some(491), "{}", first_line(&to_b));
    // Each phone's 491 is ACKed by the blade it went to.
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

    // A tries again after its back-off and gets through.
    let retry = caller_request(&a, &mut call, "INVITE");
    a.send(&retry);
    let at_b = b.request(Method::Invite, &call.call_id);
    b.answer(&at_b, 200, "OK", CALLEE_TAG);
    let ok = a
        .next_where(Duration::from_secs(5), |m| {
            final_to_invite(m, &call.call_id, call.cseq)
        })
        .expect("the retry answered");
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    a.ack_2xx(&call);
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.cseq().seq, call.cseq);
    assert_hosted(&cluster, t, "1002", "blade-1");

    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, s, "1001");
    wait_ready(&cluster, t, "1002");
}

/// `invite` answered 183 reliably by `ua` (RFC 3262: `Require: 100rel`,
/// `RSeq`), as [`Ua::answer`] answers a provisional: Vias, From, To with
/// [`CALLEE_TAG`], Call-ID, CSeq, Record-Route, Contact.
fn reliable_183(ua: &Ua, invite: &Message, rseq: u32) {
    let extra = format!("Require: 100rel\r\nRSeq: {rseq}\r\n");
    ua.answer_with(invite, 183, "Session Progress", CALLEE_TAG, &extra);
}

/// Scenario: reliable provisionals (RFC 3262) across blades. B answers
/// 183 with `Require: 100rel`; A's PRACK follows the early dialog's route
/// set (S, T) to B's Contact and B's 200 comes back; then A cancels and
/// the call ends 487, with both agents ready and nothing left hosted.
#[test]
fn a_prack_follows_the_early_route_set_and_a_cancel_ends_the_call() {
    let cluster = TestCluster::start_with(2, 117, 30, 1);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 119));
    let mut b = cluster.registered_on(t, "1002", Ipv4Addr::new(127, 0, 0, 120));

    let mut call = a.call("1002");
    a.invite(&mut call, "Supported: 100rel\r\n");
    let invite = b.request(Method::Invite, &call.call_id);
    assert!(invite.header_named("Supported").is_some(), "passed on");
    reliable_183(&b, &invite, 1);
    let early = a.response(&call.call_id, Method::Invite);
    assert_eq!(early.status(), Some(183), "{}", first_line(&early));
    assert_eq!(
        early.header_named("RSeq").map(|v| v.to_vec()),
        Some(b"1".to_vec())
    );
    assert_eq!(early.record_routes().count(), 2);
    // The early dialog (RFC 3261 §12.1.2), as a 2xx would set it up.
    let mut early_dialog = call.clone();
    early_dialog.to = header(&early, HeaderName::To);
    early_dialog.target = early.contacts().next().map(|c| c.uri().as_str().to_owned());
    let mut routes: Vec<String> = early
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    routes.reverse();
    early_dialog.routes = routes;
    let prack = a
        .in_dialog_text(&early_dialog, "PRACK", call.cseq + 1)
        .replace(
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
    wait_ready(&cluster, s, "1001");
    wait_ready(&cluster, t, "1002");
    assert!(cluster.sessions(s).is_empty(), "{:?}", cluster.sessions(s));
}

/// Scenario: both phones hang up at once (crossing BYEs). Each BYE
/// reaches the other phone through both blades and is answered; both
/// agents end `ready` on their own blades, B no longer hosted, and no
/// blade sends a BYE of its own. A BYE retransmitted after the unhost is
/// absorbed by the blade that relayed it (its 200 again), not sent on.
#[test]
fn crossing_byes_both_pass_and_free_both_agents() {
    let cluster = TestCluster::start_with(2, 121, 30, 1);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 123));
    let mut b = cluster.registered_on(t, "1002", Ipv4Addr::new(127, 0, 0, 124));
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
    let to_a = a.response(&call.call_id, Method::Bye);
    assert_eq!(to_a.status(), Some(200), "{}", first_line(&to_a));
    assert_eq!(to_a.cseq().seq, call.cseq);
    let to_b = b.response(&call.call_id, Method::Bye);
    assert_eq!(to_b.status(), Some(200), "{}", first_line(&to_b));
    assert_eq!(to_b.cseq().seq, 1);

    wait_ready(&cluster, s, "1001");
    wait_ready(&cluster, t, "1002");
    assert!(cluster.sessions(s).is_empty(), "{:?}", cluster.sessions(s));
    let own = |cluster: &TestCluster, i| cluster.metric(i, "sipblade_sessions_bye_sent_total");
    assert_eq!((own(&cluster, s), own(&cluster, t)), (0.0, 0.0));

    // B's BYE again, after the unhost: T answers it from its transaction.
    b.send(&from_b);
    let again = b.recv_raw(Duration::from_secs(1)).expect("the 200 again");
    let again = Message::parse(again).expect("a response");
    assert_eq!(again.status(), Some(200), "{}", first_line(&again));
    assert_eq!(again.cseq().method, Method::Bye);
    assert_eq!(a.recv_raw(QUIET), None, "not relayed to A again");
    wait_ready(&cluster, t, "1002");
    wait_ready(&cluster, s, "1001");
}

/// Scenario: B (on T) is registered over TCP, with a Contact it listens
/// on. Mid-call its connection drops; then A hangs up. The BYE, relayed
/// by S and T, reaches B on a new connection T opens to B's Contact
/// (README: an agent whose connection closed is reached at its Contact);
/// B's 200 goes back on it; both agents end ready, B no longer hosted.
#[test]
fn a_bye_reaches_a_tcp_callee_whose_connection_dropped_at_its_contact() {
    let cluster = TestCluster::start_with(2, 125, 30, 1);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 127));
    let phone_ip = Ipv4Addr::new(127, 0, 0, 128);
    let listener = std::net::TcpListener::bind((phone_ip, 0)).expect("a listener");
    let contact = listener.local_addr().expect("an address").to_string();
    let mut b = TcpUa::connect_from(cluster.members[t].sip, phone_ip);
    b.send(&register_tcp("1002", &contact, 3600, 1));
    assert_eq!(b.recv().status(), Some(200), "1002 registers over TCP");
    cluster.wait_state(t, "1002", "ready");

    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.recv();
    assert_eq!(invite.method(), Some(Method::Invite), "on its connection");
    b.send(&answer(&invite, 200, &contact));
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    a.ack_2xx(&call);
    assert_eq!(b.recv().method(), Some(Method::Ack));
    assert_hosted(&cluster, t, "1002", "blade-1");

    drop(b);
    std::thread::sleep(Duration::from_millis(200));
    a.bye(&mut call);
    let mut at_contact = TcpUa::accept(&listener);
    let bye = at_contact.recv();
    assert_eq!(bye.method(), Some(Method::Bye), "at B's Contact");
    assert_eq!(bye.call_id(), call.call_id);
    assert_eq!(bye.cseq().seq, call.cseq, "A's BYE, relayed");
    at_contact.send(&answer(&bye, 200, &contact));
    let done = a.response(&call.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    wait_ready(&cluster, s, "1001");
    wait_ready(&cluster, t, "1002");
    assert!(cluster.sessions(s).is_empty(), "{:?}", cluster.sessions(s));
}
