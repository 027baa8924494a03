//! A blade lost (SIGKILL) while a phone of a cross-blade call is on TCP
//! (SPEC §2 step 8, §5; README "How a blade works" step 5, Limits "BYEs
//! of the blade's own" → "TCP"): the surviving blade's BYE, CANCEL, 503
//! or 408 reaches the phone on its connection, or on a new connection to
//! its Contact once that closed.
//!
//! Addresses (127.0.0.x), one range per test: blades 101-102 (phones
//! 103-104), 105-106 (107-108), 109-110 (111-112), 113-114 (115-116),
//! 117-118 (119-120), 121-122 (123-124).

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

use common::calls::wait_ready;
use common::cluster::TestCluster;
use common::tcp::{
    TcpUa, ack_along_route, answer, final_response, from_tcp_callee, register_tcp,
    registered_on_core_of,
};
use common::{Ua, first_line};
use sipblade::sip::{HeaderName, Message, Method};

/// The lease of every cluster here, in seconds.
const LEASE: u32 = 2;

/// Long enough to see that a message does not arrive.
const QUIET: Duration = Duration::from_millis(500);

/// Long enough for a lease to lapse, or a link to a killed peer to time
/// out, and the survivor to act on it.
const LOSS: Duration = Duration::from_secs(LEASE as u64 + 5);

/// An INVITE from `caller` (over TCP from `addr`) to 1002.
fn tcp_invite(addr: &str, call_id: &str) -> String {
    format!(
        "INVITE sip:1002@cc.example SIP/2.0\r\nVia: SIP/2.0/TCP {addr};branch=z9hG4bKtf{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:1001@cc.example>;tag=a\r\nTo: <sip:1002@cc.example>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@{addr};transport=tcp>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The TCP caller's ACK for a non-2xx final answer `resp` to
/// [`tcp_invite`] (same branch, RFC 3261 §17.1.1.3).
fn ack_non_2xx(addr: &str, call_id: &str, resp: &Message) -> String {
    let to = String::from_utf8_lossy(resp.to().as_bytes()).into_owned();
    format!(
        "ACK sip:1002@cc.example SIP/2.0\r\nVia: SIP/2.0/TCP {addr};branch=z9hG4bKtf{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:1001@cc.example>;tag=a\r\nTo: {to}\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A cluster of S (0) and T (1), two cores each, the member `child` a
/// child process; blades from `first`.
fn cluster(first: u8, child: usize) -> TestCluster {
    TestCluster::start_in(0, 2, first, LEASE, 2, &[child])
}

/// 1001 on S over TCP from `ip` (its connection on a core other than
/// 1001's), and 1002 on T over UDP from `ip + 1`.
fn tcp_caller_udp_callee(cluster: &TestCluster, ip: u8) -> (TcpUa, Ua) {
    let a = registered_on_core_of(
        cluster.members[0].sip,
        cluster.admin(0),
        "1001",
        Ipv4Addr::new(127, 0, 0, ip),
        false,
    );
    let b = cluster.registered_on(1, "1002", Ipv4Addr::new(127, 0, 0, ip + 1));
    cluster.wait_state(0, "1001", "ready");
    cluster.wait_state(1, "1002", "ready");
    (a, b)
}

/// The TCP caller `a` calls `b` (UDP, on T) up to the ACK; the 2xx.
fn answered_from_tcp(a: &mut TcpUa, b: &mut Ua, call_id: &str) -> Message {
    let addr = a.local();
    a.send(&tcp_invite(&addr, call_id));
    let invite = b.request(Method::Invite, call_id);
    b.answer(&invite, 200, "OK", "callee");
    let ok = final_response(a);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    a.send(&ack_along_route(
        &ok,
        &b.contact_uri(),
        &addr,
        "z9hG4bKtfack",
        ("1001", "1002"),
        call_id,
    ));
    b.request(Method::Ack, call_id);
    ok
}

/// Checks that `bye`, on the TCP caller's connection at `addr`, is S's
/// own BYE of `call_id` towards the caller.
fn assert_tcp_caller_bye(bye: &Message, call_id: &str, addr: &str) {
    assert_eq!(bye.method(), Some(Method::Bye), "{}", first_line(bye));
    assert_eq!(bye.call_id(), call_id);
    assert_eq!(
        bye.request_uri().unwrap().as_str(),
        format!("sip:1001@{addr};transport=tcp")
    );
    assert_eq!(bye.to().tag(), Some("a"));
    assert_eq!(bye.from().tag(), Some("callee"));
    assert_eq!(bye.routes().count(), 0);
    assert_eq!(bye.vias().count(), 1, "S's own request");
    assert_eq!(bye.top_via().transport(), "TCP");
}

/// S is killed while the hosted callee's phone, on TCP at T, rings: when
/// the lease lapses T cancels the INVITE it relayed, on the phone's
/// connection, and takes the agent back.
#[test]
fn a_ringing_tcp_callee_whose_source_blade_is_killed_gets_the_cancel_on_its_connection() {
    let mut cluster = cluster(101, 0);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 103));
    let mut b = registered_on_core_of(
        cluster.members[t].sip,
        cluster.admin(t),
        "1002",
        Ipv4Addr::new(127, 0, 0, 104),
        false,
    );
    let b_addr = b.local();
    cluster.wait_state(t, "1002", "ready");
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.recv();
    assert_eq!(invite.method(), Some(Method::Invite));
    b.send(&answer(&invite, 180, &b_addr));
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180));
    cluster.wait_state(t, "1002", "hosted");

    cluster.kill_blade(s);
    let cancel = b.recv_within(LOSS);
    assert_eq!(
        cancel.method(),
        Some(Method::Cancel),
        "{}",
        first_line(&cancel)
    );
    assert_eq!(cancel.call_id(), call.call_id);
    assert_eq!(
        cancel.request_uri().unwrap().as_str(),
        invite.request_uri().unwrap().as_str()
    );
    assert_eq!(
        cancel.top_via().branch(),
        invite.top_via().branch(),
        "the CANCEL matches the INVITE T relayed"
    );
    assert_eq!(cancel.top_via().transport(), "TCP");
    assert_eq!(cancel.vias().count(), 1, "T's own request");
    b.send(&answer(&cancel, 200, &b_addr));
    b.send(&answer(&invite, 487, &b_addr));
    let ack = b.recv();
    assert_eq!(ack.method(), Some(Method::Ack), "T ACKs the 487");
    wait_ready(&cluster, t, "1002");
}

/// T is killed mid-call: S hangs up the caller, on TCP at S, with a BYE
/// of its own on the caller's connection (held by a core other than the
/// session's).
#[test]
fn a_tcp_caller_whose_callees_blade_is_killed_gets_the_bye_on_its_connection() {
    let mut cluster = cluster(105, 1);
    let (s, t) = (0, 1);
    let (mut a, mut b) = tcp_caller_udp_callee(&cluster, 107);
    let a_addr = a.local();
    let call_id = "tf-caller-bye";
    answered_from_tcp(&mut a, &mut b, call_id);

    cluster.kill_blade(t);
    let bye = a.recv_within(LOSS);
    assert_tcp_caller_bye(&bye, call_id, &a_addr);
    a.send(&answer(&bye, 200, &a_addr));
    wait_ready(&cluster, s, "1001");
    // S may also have sent B's BYE towards T, if its lease on B ran out
    // before the link timed out (T still deemed reachable): not counted.
    assert!(cluster.sessions(s).is_empty(), "{:?}", cluster.sessions(s));
    assert_eq!(a.recv_frame_within(QUIET), None, "answered: one BYE");
}

/// T is killed while the call rings: the TCP caller's INVITE is answered
/// 503 with Retry-After on its connection.
#[test]
fn a_ringing_call_from_tcp_whose_callees_blade_is_killed_is_answered_503() {
    let mut cluster = cluster(109, 1);
    let (s, t) = (0, 1);
    let (mut a, mut b) = tcp_caller_udp_callee(&cluster, 111);
    let a_addr = a.local();
    let call_id = "tf-caller-503";
    a.send(&tcp_invite(&a_addr, call_id));
    let invite = b.request(Method::Invite, call_id);
    b.answer(&invite, 180, "Ringing", "callee");
    let ringing = final_or_provisional(&mut a);
    assert_eq!(ringing.status(), Some(180));

    cluster.kill_blade(t);
    let fin = loop {
        let m = a.recv_within(LOSS);
        if m.status().is_some_and(|s| s >= 200) {
            break m;
        }
    };
    assert_eq!(fin.status(), Some(503), "{}", first_line(&fin));
    assert_eq!(fin.call_id(), call_id);
    assert!(
        fin.header(HeaderName::RetryAfter).is_some(),
        "{}",
        String::from_utf8_lossy(fin.as_bytes())
    );
    a.send(&ack_non_2xx(&a_addr, call_id, &fin));
    wait_ready(&cluster, s, "1001");
}

/// The next message on `ua`'s connection that is a response.
fn final_or_provisional(ua: &mut TcpUa) -> Message {
    loop {
        let m = ua.recv();
        if m.status().is_some_and(|s| s > 100) {
            return m;
        }
    }
}

/// S is killed mid-call after the hosted callee (on TCP at T, Contact a
/// port it listens on) closed its registration connection: when the
/// lease lapses, T's BYE goes to that Contact on a new connection.
#[test]
fn a_tcp_callee_whose_connection_closed_gets_the_lapse_bye_at_its_contact() {
    let mut cluster = cluster(113, 0);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 115));
    let ip = Ipv4Addr::new(127, 0, 0, 116);
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let contact = listener.local_addr().unwrap().to_string();
    let mut b = TcpUa::connect_from(cluster.members[t].sip, ip);
    b.send(&register_tcp("1002", &contact, 3600, 1));
    assert_eq!(b.recv().status(), Some(200));
    cluster.wait_state(t, "1002", "ready");

    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.recv();
    assert_eq!(invite.method(), Some(Method::Invite));
    b.send(&answer(&invite, 200, &contact));
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200));
    call.learn(&ok);
    a.ack_2xx(&call);
    assert_eq!(b.recv().method(), Some(Method::Ack));
    drop(b);
    cluster.wait_state(t, "1002", "hosted");

    cluster.kill_blade(s);
    let mut at_contact = TcpUa::accept_within(&listener, LOSS);
    let bye = at_contact.recv();
    assert_eq!(bye.method(), Some(Method::Bye), "{}", first_line(&bye));
    assert_eq!(bye.call_id(), call.call_id);
    assert_eq!(
        bye.request_uri().unwrap().as_str(),
        format!("sip:1002@{contact};transport=tcp")
    );
    assert_eq!(bye.to().tag(), Some("callee"));
    assert_eq!(bye.from().tag(), Some(call.from_tag.as_str()));
    assert_eq!(bye.top_via().transport(), "TCP");
    at_contact.send(&answer(&bye, 200, &contact));
    wait_ready(&cluster, t, "1002");
    assert_eq!(cluster.metric(t, "sipblade_sessions_bye_sent_total"), 1.0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cluster.metric(t, "sipblade_sessions_bye_failed_total"), 0.0);
}

/// T is killed while the TCP caller's re-INVITE (hold) waits at the
/// callee: S answers it 408 on the caller's connection, and hangs up with
/// its own BYE there.
#[test]
fn a_tcp_callers_reinvite_through_a_killed_blade_is_answered_408() {
    let mut cluster = cluster(117, 1);
    let (s, t) = (0, 1);
    let (mut a, mut b) = tcp_caller_udp_callee(&cluster, 119);
    let a_addr = a.local();
    let call_id = "tf-reinvite";
    let ok = answered_from_tcp(&mut a, &mut b, call_id);
    let ack = ack_along_route(
        &ok,
        &b.contact_uri(),
        &a_addr,
        "z9hG4bKtfreinv",
        ("1001", "1002"),
        call_id,
    );
    let reinvite = ack
        .replacen("ACK ", "INVITE ", 1)
        .replace("CSeq: 1 ACK", "CSeq: 2 INVITE")
        .replace(
            "Content-Length: 0",
            &format!("Contact: <sip:1001@{a_addr};transport=tcp>\r\nContent-Length: 0"),
        );
    a.send(&reinvite);
    b.request(Method::Invite, call_id);

    cluster.kill_blade(t);
    let mut got_408 = false;
    let mut got_bye = false;
    while !(got_408 && got_bye) {
        let m = a.recv_within(LOSS);
        if m.method() == Some(Method::Bye) {
            assert_tcp_caller_bye(&m, call_id, &a_addr);
            a.send(&answer(&m, 200, &a_addr));
            got_bye = true;
        } else if m.status().is_some_and(|s| s >= 200) {
            assert_eq!(m.status(), Some(408), "{}", first_line(&m));
            assert_eq!(m.cseq().seq, 2);
            got_408 = true;
        }
    }
    wait_ready(&cluster, s, "1001");
}

/// S is killed while the hosted callee's re-INVITE (on TCP at T, relayed
/// to S) waits for its answer: when the lease lapses, T answers it 408 on
/// the callee's connection and hangs up with its own BYE there.
#[test]
fn a_tcp_callees_reinvite_to_a_killed_source_blade_is_answered_408() {
    let mut cluster = cluster(121, 0);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 123));
    let mut b = registered_on_core_of(
        cluster.members[t].sip,
        cluster.admin(t),
        "1002",
        Ipv4Addr::new(127, 0, 0, 124),
        false,
    );
    let b_addr = b.local();
    cluster.wait_state(t, "1002", "ready");
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.recv();
    assert_eq!(invite.method(), Some(Method::Invite));
    b.send(&answer(&invite, 200, &b_addr));
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200));
    call.learn(&ok);
    a.ack_2xx(&call);
    assert_eq!(b.recv().method(), Some(Method::Ack));
    b.send(&from_tcp_callee(&invite, &b_addr, "INVITE", &b_addr));
    a.request(Method::Invite, &call.call_id);

    cluster.kill_blade(s);
    let mut got_408 = false;
    let mut got_bye = false;
    while !(got_408 && got_bye) {
        let m = b.recv_within(LOSS);
        if m.method() == Some(Method::Bye) {
            assert_eq!(m.call_id(), call.call_id);
            assert_eq!(m.to().tag(), Some("callee"));
            assert_eq!(m.vias().count(), 1, "T's own request");
            assert_eq!(m.top_via().transport(), "TCP");
            b.send(&answer(&m, 200, &b_addr));
            got_bye = true;
        } else if m.status().is_some_and(|s| s >= 200) {
            assert_eq!(m.status(), Some(408), "{}", first_line(&m));
            assert_eq!(m.cseq().method, Method::Invite);
            got_408 = true;
        }
    }
    wait_ready(&cluster, t, "1002");
}
