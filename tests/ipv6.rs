//! Blades and phones on the IPv6 loopback `::1` (SPEC §4 takes any socket
//! address): a call through one blade of two cores with digest
//! authentication, and a cross-blade call whose hosting exchange runs
//! over QUIC on `::1`. Vias, Record-Routes and Contacts carry IPv6
//! references (`[::1]:port`).
//!
//! A machine without `::1` (IPv6 disabled) skips these tests, saying so.

mod common;

use std::net::{IpAddr, Ipv6Addr, UdpSocket};

use common::cluster::TestCluster;
use common::{Call, TestBlade, Ua, aor, password};
use sipblade::runtime::Options;
use sipblade::sip::{Message, Method};

const LOOPBACK: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
const CALLEE_TAG: &str = "callee-tag";

/// Whether `::1` can be bound here; if not, says why the test is skipped.
fn have_ipv6() -> bool {
    match UdpSocket::bind((LOOPBACK, 0)) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: no IPv6 loopback here ({e})");
            false
        }
    }
}

fn first_line(msg: &Message) -> String {
    let bytes = msg.as_bytes();
    let end = bytes
        .iter()
        .position(|&b| b == b'\r')
        .unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `a` calls `b` through `blades` proxies (answering a 407 with
/// credentials when `auth`), `b` answers, `a` ACKs, then hangs up; checks
/// each message on the way. Returns the INVITE as `b` got it. `during`
/// runs while the call is up.
fn call_and_hang_up(
    a: &mut Ua,
    b: &mut Ua,
    blades: usize,
    auth: bool,
    during: impl FnOnce(&Call),
) -> Message {
    let mut call = a.call(&b.ext);
    a.invite(&mut call, "");
    if auth {
        let challenge = a.response(&call.call_id, Method::Invite);
        assert_eq!(challenge.status(), Some(407), "{}", first_line(&challenge));
        a.ack_failure(&call, &challenge);
        let credentials =
            a.authorization(&challenge, true, "INVITE", &aor(&b.ext), &password(&a.ext));
        a.invite(&mut call, &credentials);
    }
    let invite = b.request(Method::Invite, &call.call_id);
    assert_eq!(invite.request_uri().unwrap().as_str(), b.contact_uri());
    assert_eq!(invite.vias().count(), blades + 1, "{invite:?}");
    assert_eq!(invite.record_routes().count(), blades, "{invite:?}");
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180), "{}", first_line(&ringing));
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    assert_eq!(call.routes.len(), blades, "every blade in the route set");
    for route in &call.routes {
        assert!(route.contains("[::1]"), "an IPv6 reference: {route}");
    }

    a.ack_2xx(&call);
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.routes().count(), 0, "every blade popped its Route");
    during(&call);
    a.bye(&mut call);
    let bye = b.request(Method::Bye, &call.call_id);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    let done = a.response(&call.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    invite
}

#[test]
fn a_call_through_one_blade_of_two_cores_over_ipv6_with_digest() {
    if !have_ipv6() {
        return;
    }
    let blade = TestBlade::start_at(2, true, Options::default(), "", LOOPBACK);
    assert_eq!(blade.sip.ip(), LOOPBACK);
    let mut a = Ua::new_at(blade.sip, "1001", LOOPBACK);
    let mut b = Ua::new_at(blade.sip, "1002", LOOPBACK);
    for ua in [&mut a, &mut b] {
        let ok = ua.register(3600);
        assert_eq!(ok.status(), Some(200), "{} registers", ua.ext);
    }
    let contact = blade.agent("1002")["contact"].clone();
    assert_eq!(contact, b.addr.to_string(), "the binding as [::1]:port");

    let invite = call_and_hang_up(&mut a, &mut b, 1, true, |_| {
        // Each agent's state lives on the core that owns its extension.
        blade.wait_state("1001", "in_call");
        blade.wait_state("1002", "in_call");
    });
    // The caller's sent-by, `[::1]:port`, is where the INVITE came from:
    // compared as an address (not as text against `::1`), it needs no
    // `received` (RFC 3261 §18.2.1).
    let caller_via = invite.vias().last().expect("the caller's Via");
    assert_eq!(caller_via.host(), "[::1]");
    assert_eq!(caller_via.received(), None, "{:?}", caller_via.as_bytes());

    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    blade.wait_no_sessions();
}

#[test]
fn a_cross_blade_call_over_ipv6_hosts_the_callee_over_quic_on_the_ipv6_loopback() {
    if !have_ipv6() {
        return;
    }
    let mut cluster = TestCluster::new_on_ipv6_loopback(2, 30, 1);
    cluster.start_blade(0);
    cluster.start_blade(1);
    cluster.wait_linked();
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", LOOPBACK);
    let mut b = cluster.registered_on(t, "1002", LOOPBACK);

    call_and_hang_up(&mut a, &mut b, 2, false, |call| {
        let agent = cluster.agent(t, "1002");
        assert_eq!(agent["state"], "hosted", "{agent}");
        assert_eq!(agent["hosted_by"], "blade-1", "{agent}");
        let sessions = cluster.sessions(s);
        assert_eq!(sessions.len(), 1, "{sessions:?}");
        assert_eq!(sessions[0]["call_id"], call.call_id.as_str());
        assert_eq!(sessions[0]["hosted"], serde_json::json!(["1002"]));
    });

    cluster.wait_state(t, "1002", "ready");
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.sessions(s).is_empty());
    assert_eq!(
        cluster.metric(
            s,
            "sipblade_calls_total{outcome=\"answered\",route=\"cross_blade\"}"
        ),
        1.0
    );
    assert_eq!(cluster.metric(t, "sipblade_hosting_granted_total"), 1.0);
}
