//! Cross-blade calls (SPEC §2) between blades on distinct loopback
//! addresses, over real QUIC with real certificates and real SIP sockets:
//! the source blade S hosts the called agent from its target blade T for
//! the length of the session, and hands it back when the session ends.
//!
//! Each test uses its own addresses (127.0.0.x), so they run in parallel.

mod common;

use common::cluster::TestCluster;
use common::{Call, Ua, first_line};
use sipblade::sip::{Message, Method};

const CALLEE_TAG: &str = "callee-tag";

/// `a` (on S) calls `b` (on T) up to the caller's 200 OK; returns the
/// dialog and the INVITE as `b` got it.
fn answered_cross_call(a: &mut Ua, b: &mut Ua) -> (Call, Message) {
    let mut call = a.call(&b.ext);
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    assert_eq!(
        invite.request_uri().unwrap().as_str(),
        b.contact_uri(),
        "T retargets to the registered contact"
    );
    assert_eq!(invite.vias().count(), 3, "caller, S and T Vias");
    assert_eq!(invite.record_routes().count(), 2, "S and T Record-Route");
    assert_eq!(invite.max_forwards(), Some(68));
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180), "{}", first_line(&ringing));
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    assert_eq!(call.routes.len(), 2, "the route set is S then T");
    (call, invite)
}

#[test]
fn cross_blade_call_hosts_the_callee_and_hands_it_back() {
    let cluster = TestCluster::start(2, 61);
    let (s, t) = (0, 1);
    let mut a = cluster.registered(s, "1001");
    let mut b = cluster.registered(t, "1002");

    let (mut call, _) = answered_cross_call(&mut a, &mut b);

    // During the call: B hosted on T by S; S owns the session.
    let on_t = cluster.agent(t, "1002");
    assert_eq!(on_t["state"], "hosted", "{on_t}");
    assert_eq!(on_t["hosted_by"], "blade-1", "{on_t}");
    assert_eq!(cluster.agent(s, "1001")["state"], "in_call");
    let sessions = cluster.sessions(s);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["call_id"], call.call_id.as_str());
    assert_eq!(sessions[0]["hosted"], serde_json::json!(["1002"]));
    assert!(cluster.sessions(t).is_empty(), "T owns no session");

    // ACK and BYE follow the route set through S and T.
    a.ack_2xx(&call);
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.routes().count(), 0, "both blades popped their Route");
    a.bye(&mut call);
    let bye = b.request(Method::Bye, &call.call_id);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    let done = a.response(&call.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200));

    // The session's end hands B back.
    cluster.wait_state(t, "1002", "ready");
    assert_eq!(
        cluster.agent(t, "1002")["hosted_by"],
        serde_json::Value::Null
    );
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.sessions(s).is_empty());
    assert_eq!(
        cluster.metric(
            s,
            "sipblade_calls_total{outcome=\"answered\",route=\"cross_blade\"}"
        ),
        1.0
    );
    assert_eq!(cluster.metric(s, "sipblade_hosting_rtt_seconds_count"), 1.0);
    assert_eq!(cluster.metric(t, "sipblade_hosting_granted_total"), 1.0);
}
