//! Cross-blade calls (SPEC §2) between blades on distinct loopback
//! addresses, over real QUIC with real certificates and real SIP sockets:
//! the source blade S hosts the called agent from its target blade T for
//! the length of the session, and hands it back when the session ends.
//!
//! Each test uses its own addresses (127.0.0.x), so they run in parallel:
//! 61-62, 63-64, 65-66, 67-68, 69-70, 71-72, 73-74, 75-76, 77-78, 79-81,
//! 82-83, 84-85, 86-87; the phones of 170-171, 177-178 and 194-195 on
//! 172-173, 179-180 and 196-197. Blades 150-151 (phones 152-154) and
//! 155-157 (phones 158-160). The restart tests use 127.0.2.x: blades
//! 1-2 (phones 3-4) and 11-12 (phones 13-14). The topology tests at the
//! end use 127.0.0.101-139 (their own comments say which).

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::calls::{
    CALLEE_TAG, answered_call, answered_cross_call, assert_hosted, confirm, hang_up, wait_ready,
};
use common::cluster::TestCluster;
use common::{Call, DOMAIN, Ua, WAIT, aor, assert_dialog_bye, branch, first_line, unique};
use sipblade::cluster::certs::generate_cluster;
use sipblade::sip::{Message, Method};

/// Long enough to see that a message does not arrive: every message in
/// these tests crosses loopback in well under a millisecond.
const QUIET: Duration = Duration::from_millis(300);

/// `a` calls `callee` and gets a final failure, which it ACKs; returns the
/// call and the final response.
fn failed_call(a: &mut Ua, callee: &str) -> (Call, Message) {
    let mut call = a.call(callee);
    a.invite(&mut call, "");
    let resp = a.response(&call.call_id, Method::Invite);
    let status = resp.status().unwrap_or(0);
    assert!(status >= 300, "a failure expected: {}", first_line(&resp));
    a.ack_failure(&call, &resp);
    (call, resp)
}

/// INVITEs of `call_id` that reach `ua` within [`QUIET`].
fn invites_of(ua: &mut Ua, call_id: &str) -> Vec<String> {
    ua.collect_where(QUIET, |m| {
        m.method() == Some(Method::Invite) && m.call_id() == call_id
    })
}

/// `sipblade_calls_total{outcome, route}` of member `i`.
fn calls(cluster: &TestCluster, i: usize, outcome: &str, route: &str) -> f64 {
    cluster.metric(
        i,
        &format!("sipblade_calls_total{{outcome=\"{outcome}\",route=\"{route}\"}}"),
    )
}

/// `sipblade_hosting_refused_total{reason}` of member `i`.
fn refused(cluster: &TestCluster, i: usize, reason: &str) -> f64 {
    cluster.metric(
        i,
        &format!("sipblade_hosting_refused_total{{reason=\"{reason}\"}}"),
    )
}

#[test]
fn cross_blade_call_hosts_the_callee_and_hands_it_back() {
    let cluster = TestCluster::start(2, 61);
    let (s, t) = (0, 1);
    let mut a = cluster.registered(s, "1001");
    let mut b = cluster.registered(t, "1002");

    let (mut call, _) = answered_cross_call(&mut a, &mut b);

    // During the call: B hosted on T by S; S owns the session, and holds
    // B's login information: B is in a call there, at its contact.
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_eq!(cluster.agent(s, "1001")["state"], "in_call");
    let b_on_s = cluster.agent(s, "1002");
    assert_eq!(b_on_s["state"], "in_call", "{b_on_s}");
    assert_eq!(b_on_s["contact"], b.addr.to_string(), "{b_on_s}");
    assert_eq!(b_on_s["hosted_by"], serde_json::Value::Null, "{b_on_s}");
    let sessions = cluster.sessions(s);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["call_id"], call.call_id.as_str());
    assert_eq!(sessions[0]["hosted"], serde_json::json!(["1002"]));
    assert!(cluster.sessions(t).is_empty(), "T owns no session");

    // ACK and BYE follow the route set through S and T.
    confirm(&mut a, &mut b, &call);
    hang_up(&mut a, &mut b, &mut call);

    // The session's end hands B back.
    wait_ready(&cluster, t, "1002");
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.sessions(s).is_empty());
    let b_on_s = cluster.agent(s, "1002");
    assert_eq!(b_on_s["state"], "logged_out", "S drops its copy: {b_on_s}");
    assert_eq!(b_on_s["contact"], serde_json::Value::Null, "{b_on_s}");
    assert_eq!(calls(&cluster, s, "answered", "cross_blade"), 1.0);
    assert_eq!(cluster.metric(s, "sipblade_hosting_rtt_seconds_count"), 1.0);
    assert_eq!(cluster.metric(t, "sipblade_hosting_granted_total"), 1.0);
    for blade in [s, t] {
        for direction in ["sent", "received"] {
            let name = format!("sipblade_link_datagrams_total{{direction=\"{direction}\"}}");
            assert!(
                cluster.metric(blade, &name) > 0.0,
                "blade {blade}: {name} counts the QUIC traffic"
            );
        }
    }
}

/// A hosted callee that keeps no route set (its 200 copies no
/// Record-Route; its Contact has no user): the caller's ACK and BYE come
/// to S unrouted, for that Contact. S sends them to B's blade, which takes
/// them to B (SPEC §2 step 5), and the BYE still ends the session and
/// hands B back.
#[test]
fn a_hosted_callee_that_keeps_no_route_set_is_reached_through_its_blade() {
    let cluster = TestCluster::start(2, 55);
    let (s, t) = (0, 1);
    let mut a = cluster.registered(s, "1001");
    let mut b = cluster.registered(t, "1002");

    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer_without_route_set(&invite, CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    assert!(call.routes.is_empty());
    assert_hosted(&cluster, t, "1002", "blade-1");

    a.ack_2xx(&call);
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.vias().count(), 3, "through S and T");
    a.bye(&mut call);
    let bye = b.request(Method::Bye, &call.call_id);
    assert_eq!(bye.vias().count(), 3, "through S and T");
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    let done = a.response(&call.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    wait_ready(&cluster, t, "1002");
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.sessions(s).is_empty());
}

/// SPEC §2 step 6: while B is hosted, a new INVITE for B reaching T (here
/// from an agent registered on T) is not sent to B: T hands it to S, which
/// answers 486, and T relays that, also after B logged out and in again
/// on T. Once the session ends, B takes local calls again.
#[test]
fn a_call_to_a_hosted_agent_arriving_at_its_blade_is_answered_busy_by_the_host() {
    let cluster = TestCluster::start(2, 63);
    let (s, t) = (0, 1);
    let mut a = cluster.registered(s, "1001");
    let mut b = cluster.registered(t, "1002");
    let mut c = cluster.registered(t, "1003");

    let (mut first, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &first);
    assert_hosted(&cluster, t, "1002", "blade-1");

    // 1003, on T itself, calls the hosted 1002.
    busy_via_host(&mut c, &mut b);

    // Nothing changed for the first call, and 1003 is not left in a call.
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_eq!(cluster.agent(t, "1003")["state"], "ready");
    assert!(cluster.sessions(t).is_empty(), "{:?}", cluster.sessions(t));
    assert_eq!(cluster.sessions(s).len(), 1);

    // B logging out and in again on T mid-call changes nothing: it stays
    // hosted, so a new call still goes to S and gets 486.
    assert_eq!(b.register(0).status(), Some(200));
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_eq!(b.register(3600).status(), Some(200));
    assert_hosted(&cluster, t, "1002", "blade-1");
    busy_via_host(&mut c, &mut b);

    hang_up(&mut a, &mut b, &mut first);
    wait_ready(&cluster, t, "1002");

    // B is T's again: 1003's call is an ordinary local call on T.
    let (mut third, _) = answered_call(&mut c, &mut b, 1);
    assert_eq!(cluster.agent(t, "1002")["state"], "in_call");
    confirm(&mut c, &mut b, &third);
    hang_up(&mut c, &mut b, &mut third);
    cluster.wait_state(t, "1002", "ready");
    cluster.wait_state(t, "1003", "ready");
    assert_eq!(calls(&cluster, t, "answered", "local"), 1.0);
    assert_eq!(calls(&cluster, s, "answered", "cross_blade"), 1.0);
    assert_eq!(cluster.metric(t, "sipblade_hosting_granted_total"), 1.0);
}

/// `a` calls `b`, which another blade than `a`'s hosts: `b`'s blade
/// hands the INVITE to the hosting blade, whose 486 `a` gets; `b` sees
/// nothing of it.
fn busy_via_host(a: &mut Ua, b: &mut Ua) {
    let started = Instant::now();
    let (call, busy) = failed_call(a, &b.ext);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    // The agent's blade answers 486 on its own only after REDIRECT_WAIT
    // (1 s) without a verdict from the host; a quicker 486 is the host's.
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the 486 came after {:?}: the agent's blade's timeout, not the host's verdict",
        started.elapsed()
    );
    let stray = invites_of(b, &call.call_id);
    assert!(stray.is_empty(), "{} got a second INVITE: {stray:?}", b.ext);
}

/// SPEC §2 step 3: each reason T cannot hand B over maps to its SIP
/// status on S (404, 480, 486), and B's state on T is as it was.
#[test]
fn every_refusal_maps_to_its_status_and_leaves_the_callee_as_it_was() {
    let cluster = TestCluster::start(2, 65);
    let (s, t) = (0, 1);
    let mut a = cluster.registered(s, "1001");
    let mut d = cluster.registered(s, "1004");

    // An extension nobody has: 404.
    let (_, resp) = failed_call(&mut a, "9999");
    assert_eq!(resp.status(), Some(404), "{}", first_line(&resp));
    assert_eq!(cluster.metric(t, "sipblade_hosting_granted_total"), 0.0);

    // 1002 is provisioned but logged in nowhere: 480.
    let (_, resp) = failed_call(&mut a, "1002");
    assert_eq!(resp.status(), Some(480), "{}", first_line(&resp));
    assert_eq!(refused(&cluster, s, "not_logged_in"), 1.0);
    assert_eq!(cluster.agent(t, "1002")["state"], "logged_out");
    cluster.wait_state(s, "1001", "ready");

    // 1002 is in a local call on T: 486.
    let mut b = cluster.registered(t, "1002");
    let mut c = cluster.registered(t, "1003");
    let (mut local, _) = answered_call(&mut c, &mut b, 1);
    confirm(&mut c, &mut b, &local);
    let (busy_call, resp) = failed_call(&mut a, "1002");
    assert_eq!(resp.status(), Some(486), "{}", first_line(&resp));
    assert_eq!(refused(&cluster, s, "busy"), 1.0);
    assert!(invites_of(&mut b, &busy_call.call_id).is_empty());
    let on_t = cluster.agent(t, "1002");
    assert_eq!(on_t["state"], "in_call", "{on_t}");
    assert_eq!(on_t["hosted_by"], serde_json::Value::Null, "{on_t}");
    cluster.wait_state(s, "1001", "ready");
    hang_up(&mut c, &mut b, &mut local);
    wait_ready(&cluster, t, "1002");

    // 1002 is hosted by S for 1001's call; 1004 (also on S) calls it: 486.
    let (mut hosted, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &hosted);
    let (again, resp) = failed_call(&mut d, "1002");
    assert_eq!(resp.status(), Some(486), "{}", first_line(&resp));
    assert_eq!(refused(&cluster, s, "already_hosted"), 1.0);
    assert!(invites_of(&mut b, &again.call_id).is_empty());
    assert_hosted(&cluster, t, "1002", "blade-1");
    let sessions = cluster.sessions(s);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["call_id"], hosted.call_id.as_str());
    cluster.wait_state(s, "1004", "ready");
    hang_up(&mut a, &mut b, &mut hosted);
    wait_ready(&cluster, t, "1002");

    // 1002 logs out on T: S's directory entry is stale at worst, and the
    // call is 480 again.
    let bye = b.register(0);
    assert_eq!(bye.status(), Some(200), "{}", first_line(&bye));
    cluster.wait_state(t, "1002", "logged_out");
    let (_, resp) = failed_call(&mut a, "1002");
    assert_eq!(resp.status(), Some(480), "{}", first_line(&resp));
    assert_eq!(refused(&cluster, s, "not_logged_in"), 2.0);

    assert_eq!(refused(&cluster, s, "overloaded"), 0.0);
    assert_eq!(calls(&cluster, s, "answered", "cross_blade"), 1.0);
    assert_eq!(cluster.metric(t, "sipblade_hosting_granted_total"), 1.0);
    assert!(cluster.sessions(s).is_empty());
}

/// A CANCEL after the 180 crosses both blades: B's INVITE is cancelled,
/// A gets the 487, and B goes back to ready on T.
#[test]
fn a_cancel_after_ringing_hands_the_callee_back() {
    let cluster = TestCluster::start(2, 67);
    let (s, t) = (0, 1);
    let mut a = cluster.registered(s, "1001");
    let mut b = cluster.registered(t, "1002");

    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180), "{}", first_line(&ringing));
    assert_hosted(&cluster, t, "1002", "blade-1");

    a.cancel(&call);
    let cancelled = a.response(&call.call_id, Method::Cancel);
    assert_eq!(cancelled.status(), Some(200), "{}", first_line(&cancelled));
    let cancel = b.request(Method::Cancel, &call.call_id);
    b.answer(&cancel, 200, "OK", CALLEE_TAG);
    b.answer(&invite, 487, "Request Terminated", CALLEE_TAG);
    b.request(Method::Ack, &call.call_id);
    let terminated = a.response(&call.call_id, Method::Invite);
    assert_eq!(
        terminated.status(),
        Some(487),
        "{}",
        first_line(&terminated)
    );
    a.ack_failure(&call, &terminated);

    wait_ready(&cluster, t, "1002");
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.sessions(s).is_empty());
    assert_eq!(calls(&cluster, s, "cancelled", "cross_blade"), 1.0);
    assert_eq!(calls(&cluster, s, "answered", "cross_blade"), 0.0);
    assert_counts_no_call(&cluster, t);
}

/// Member `i` counted no call of any outcome or route: it only relayed
/// another blade's calls, which that blade counts.
fn assert_counts_no_call(cluster: &TestCluster, i: usize) {
    for outcome in ["answered", "busy", "cancelled", "failed"] {
        for route in ["local", "cross_blade"] {
            assert_eq!(calls(cluster, i, outcome, route), 0.0, "{outcome} {route}");
        }
    }
}

/// B refuses the call itself (603, then 486): A gets B's answer, and B
/// goes back to ready on T each time.
#[test]
fn a_final_failure_from_the_callee_hands_it_back() {
    let cluster = TestCluster::start(2, 69);
    let (s, t) = (0, 1);
    let mut a = cluster.registered(s, "1001");
    let mut b = cluster.registered(t, "1002");

    for (status, reason) in [(603, "Decline"), (486, "Busy Here")] {
        let mut call = a.call("1002");
        a.invite(&mut call, "");
        let invite = b.request(Method::Invite, &call.call_id);
        assert_hosted(&cluster, t, "1002", "blade-1");
        b.answer(&invite, status, reason, CALLEE_TAG);
        b.request(Method::Ack, &call.call_id);
        let resp = a.response(&call.call_id, Method::Invite);
        assert_eq!(resp.status(), Some(status), "{}", first_line(&resp));
        a.ack_failure(&call, &resp);
        wait_ready(&cluster, t, "1002");
        cluster.wait_state(s, "1001", "ready");
        assert!(cluster.sessions(s).is_empty());
    }
    assert_eq!(calls(&cluster, s, "failed", "cross_blade"), 1.0);
    assert_eq!(calls(&cluster, s, "busy", "cross_blade"), 1.0);
    assert_eq!(calls(&cluster, s, "answered", "cross_blade"), 0.0);
    assert_eq!(cluster.metric(t, "sipblade_hosting_granted_total"), 2.0);
    assert_counts_no_call(&cluster, t);
}

/// SPEC §2 step 8: S is killed (SIGKILL: no BYE, no unhost, no goodbye on
/// the link) in the middle of a call; T takes B back when the lease runs
/// out. Renewals kept it hosted past one lease before that.
#[test]
fn a_killed_source_blade_strands_no_one_past_the_lease() {
    const LEASE: u64 = 2;
    let (s, t) = (0, 1);
    let mut cluster = TestCluster::start_in(0, 2, 71, LEASE as u32, 1, &[0]);
    let mut a = cluster.registered(s, "1001");
    let mut b = cluster.registered(t, "1002");

    let (call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_eq!(cluster.sessions(s).len(), 1, "the child process is S");

    // S renews the lease of a live session: still hosted after a lease.
    std::thread::sleep(Duration::from_millis(LEASE * 1000 + 500));
    assert_hosted(&cluster, t, "1002", "blade-1");

    cluster.kill_blade(s);
    let killed = Instant::now();
    let limit = Duration::from_secs(LEASE + 2);
    loop {
        let on_t = cluster.agent(t, "1002");
        if on_t["state"] == "ready" {
            assert_eq!(on_t["hosted_by"], serde_json::Value::Null, "{on_t}");
            break;
        }
        assert_eq!(on_t["state"], "hosted", "{on_t}");
        assert!(
            killed.elapsed() < limit,
            "1002 still hosted {:?} after S was killed: {on_t}",
            killed.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // B is fully T's again: a local call reaches it.
    let mut c = cluster.registered(t, "1003");
    let (mut local, _) = answered_call(&mut c, &mut b, 1);
    confirm(&mut c, &mut b, &local);
    hang_up(&mut c, &mut b, &mut local);
    cluster.wait_state(t, "1002", "ready");
}

/// SPEC §8: a process whose certificate comes from another CA (here one
/// claiming to be blade-1) is no peer: it cannot host T's agents, and an
/// INVITE with a made-up hosting token is refused 403.
#[test]
fn a_blade_from_another_ca_can_neither_host_nor_forge_a_token() {
    let mut cluster = TestCluster::new(2, 73, 30, 1);
    let (rogue, t) = (0, 1);
    let rogue_certs = cluster.dir.path().join("rogue");
    generate_cluster(&rogue_certs, &["blade-1".to_owned()]).expect("rogue certificates");
    cluster.start_blade(t);
    cluster.start_blade_with(rogue, &rogue_certs);
    let mut a = cluster.registered(rogue, "1001");
    let mut b = cluster.registered(t, "1002");

    // The rogue's agent calls T's agent: the rogue has no link to host it.
    let (call, resp) = failed_call(&mut a, "1002");
    let status = resp.status().unwrap_or(0);
    assert!(status == 480 || status == 503, "{}", first_line(&resp));
    assert!(invites_of(&mut b, &call.call_id).is_empty());
    wait_ready(&cluster, t, "1002");

    // An INVITE straight to T from the rogue's address (which T's config
    // names as blade-1's), with tokens T never issued.
    let from_rogue = UdpSocket::bind((cluster.members[rogue].sip.ip(), 0)).expect("bind");
    let t_sip = cluster.members[t].sip;
    for param in [
        "sbh=00112233445566778899aabbccddeeff",
        "sbh=not-a-token",
        "sbh",
    ] {
        let resp = forged_invite(&from_rogue, t_sip, param);
        assert_eq!(resp.status(), Some(403), "{param}: {}", first_line(&resp));
    }
    // The same from an agent's address (not a blade at all).
    let from_agent = UdpSocket::bind("127.0.0.11:0").expect("bind");
    let resp = forged_invite(&from_agent, t_sip, "sbh=00112233445566778899aabbccddeeff");
    assert_eq!(resp.status(), Some(403), "{}", first_line(&resp));
    let stray = b.collect_where(QUIET, |m| m.method() == Some(Method::Invite));
    assert!(stray.is_empty(), "B got INVITEs: {stray:?}");

    wait_ready(&cluster, t, "1002");
    assert_eq!(cluster.metric(t, "sipblade_hosting_granted_total"), 0.0);
    assert!(!cluster.peer_up(t, "blade-1"), "{}", cluster.status(t));
    assert!(
        !cluster.peer_up(rogue, "blade-2"),
        "{}",
        cluster.status(rogue)
    );
    assert!(cluster.sessions(t).is_empty());
}

/// Sends, from `socket`, an INVITE for 1002 to `blade` with the URI
/// parameter `param` (a hosting token) in its Request-URI; returns the
/// final response.
fn forged_invite(socket: &UdpSocket, blade: SocketAddr, param: &str) -> Message {
    let me = socket.local_addr().expect("local address");
    let n = common::unique();
    let call_id = format!("forged-{n}@test");
    let invite = format!(
        "INVITE sip:1002@{blade};{param} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-forged{n}\r\n\
         Max-Forwards: 69\r\nFrom: <sip:1001@{DOMAIN}>;tag=f{n}\r\nTo: <sip:1002@{DOMAIN}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@{me}>\r\nContent-Length: 0\r\n\r\n"
    );
    socket.send_to(invite.as_bytes(), blade).expect("send");
    socket.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut buf = vec![0u8; 65_535];
    loop {
        let (len, from) = socket
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no answer to the forged INVITE ({param}): {e}"));
        assert_eq!(from, blade);
        let resp = Message::parse(Bytes::copy_from_slice(&buf[..len])).expect("a response");
        if resp.call_id() == call_id && resp.status().is_some_and(|s| s >= 200) {
            return resp;
        }
    }
}

/// The directory converges after T restarts: S sees T go and come back,
/// knows nothing of T's agents while T is down (480), and reaches B again
/// once B registers on the new T, even before the link was back up.
#[test]
fn the_directory_converges_after_the_target_restarts() {
    let mut cluster = TestCluster::start(2, 75);
    let (s, t) = (0, 1);
    let mut a = cluster.registered(s, "1001");
    let mut b = cluster.registered(t, "1002");
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);
    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, t, "1002");

    cluster.stop_blade(t);
    cluster.wait_until_peer_down(s, "blade-2");
    let (_, resp) = failed_call(&mut a, "1002");
    assert_eq!(resp.status(), Some(480), "{}", first_line(&resp));
    cluster.wait_state(s, "1001", "ready");

    // T comes back with no registrations; B registers as soon as T
    // listens, likely before the link is up (the resync must carry it).
    cluster.start_blade(t);
    let mut b = cluster.registered(t, "1002");
    cluster.wait_linked();
    assert!(cluster.peer_up(s, "blade-2"), "{}", cluster.status(s));

    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    assert_hosted(&cluster, t, "1002", "blade-1");
    confirm(&mut a, &mut b, &call);
    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, t, "1002");
    assert_eq!(calls(&cluster, s, "answered", "cross_blade"), 2.0);
}

/// A call between two agents of the same blade is local: no hosting.
#[test]
fn a_local_call_takes_no_hosting() {
    let cluster = TestCluster::start(2, 77);
    let (s, t) = (0, 1);
    let mut a = cluster.registered(s, "1001");
    let mut c = cluster.registered(s, "1003");
    // T's agent registered too, so a directory lookup would have a peer.
    let _b = cluster.registered(t, "1002");

    let (mut call, _) = answered_call(&mut a, &mut c, 1);
    let sessions = cluster.sessions(s);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["hosted"], serde_json::json!([]), "{sessions:?}");
    confirm(&mut a, &mut c, &call);
    hang_up(&mut a, &mut c, &mut call);
    cluster.wait_state(s, "1001", "ready");
    cluster.wait_state(s, "1003", "ready");

    assert_eq!(calls(&cluster, s, "answered", "local"), 1.0);
    assert_eq!(calls(&cluster, s, "answered", "cross_blade"), 0.0);
    assert_eq!(cluster.metric(s, "sipblade_hosting_rtt_seconds_count"), 0.0);
    assert_eq!(cluster.metric(t, "sipblade_hosting_granted_total"), 0.0);
    assert!(cluster.sessions(t).is_empty());
    assert_eq!(cluster.agent(t, "1002")["state"], "ready");
}

/// An agent that logs in on another blade has moved: the blade it left
/// logs it out when the new blade announces the login, so a call placed
/// on the old blade reaches the new phone (hosted through the new blade)
/// instead of ringing the phone left behind.
#[test]
fn an_agent_that_logs_in_on_another_blade_is_logged_out_of_the_old_one() {
    let cluster = TestCluster::start(2, 99);
    let (old_blade, new_blade) = (1, 0);
    let mut left_behind = cluster.registered(old_blade, "1002");
    let mut caller = cluster.registered(old_blade, "1003");
    cluster.wait_state(old_blade, "1002", "ready");
    let mut moved = cluster.registered(new_blade, "1002");
    cluster.wait_state(old_blade, "1002", "logged_out");
    assert_eq!(cluster.agent(new_blade, "1002")["state"], "ready");

    let (mut call, _) = answered_cross_call(&mut caller, &mut moved);
    assert_hosted(&cluster, new_blade, "1002", "blade-2");
    confirm(&mut caller, &mut moved, &call);
    hang_up(&mut caller, &mut moved, &mut call);
    let stray = invites_of(&mut left_behind, &call.call_id);
    assert!(stray.is_empty(), "the phone left behind rang: {stray:?}");
    wait_ready(&cluster, new_blade, "1002");
}

/// Three blades: each caller's own blade hosts the callee, one session
/// after the other.
#[test]
fn three_blades_each_source_hosts_in_turn() {
    let cluster = TestCluster::start(3, 79);
    let mut a = cluster.registered(0, "1001");
    let mut b = cluster.registered(1, "1002");
    let mut c = cluster.registered(2, "1003");

    let (mut call, _) = answered_cross_call(&mut a, &mut c);
    assert_hosted(&cluster, 2, "1003", "blade-1");
    assert_eq!(cluster.sessions(0).len(), 1);
    assert!(cluster.sessions(1).is_empty());
    confirm(&mut a, &mut c, &call);
    hang_up(&mut a, &mut c, &mut call);
    wait_ready(&cluster, 2, "1003");

    let (mut call, _) = answered_cross_call(&mut b, &mut c);
    assert_hosted(&cluster, 2, "1003", "blade-2");
    assert_eq!(cluster.sessions(1).len(), 1);
    assert!(cluster.sessions(0).is_empty());
    confirm(&mut b, &mut c, &call);
    hang_up(&mut b, &mut c, &mut call);
    wait_ready(&cluster, 2, "1003");

    assert_eq!(calls(&cluster, 0, "answered", "cross_blade"), 1.0);
    assert_eq!(calls(&cluster, 1, "answered", "cross_blade"), 1.0);
    assert_eq!(cluster.metric(2, "sipblade_hosting_granted_total"), 2.0);
}

/// Two cores per blade: link messages reach the core that owns the agent
/// or the session, and their answers come back (with two cores, 1002 and
/// 1004 hash to core 0, 1001 and 1003 to core 1, and the link runs on
/// core 0). Two calls each way, both up at once.
#[test]
fn cross_blade_calls_work_with_two_cores_per_blade() {
    let cluster = TestCluster::start_with(2, 82, 30, 2);
    let (s, t) = (0, 1);
    let mut u1001 = cluster.registered(s, "1001");
    let mut u1003 = cluster.registered(s, "1003");
    let mut u1002 = cluster.registered(t, "1002");
    let mut u1004 = cluster.registered(t, "1004");

    two_cross_calls_at_once(
        &cluster,
        s,
        t,
        [(&mut u1001, &mut u1002), (&mut u1003, &mut u1004)],
    );
    two_cross_calls_at_once(
        &cluster,
        t,
        s,
        [(&mut u1002, &mut u1001), (&mut u1004, &mut u1003)],
    );

    // T hosts 1003 (core 1 on both blades); 1001, on S, calls it: S's core
    // 1 hands the INVITE to T over the link on core 0, T's core 1 answers
    // for its session, and the 486 finds its way back to S's core 1.
    let (mut call, _) = answered_cross_call(&mut u1002, &mut u1003);
    confirm(&mut u1002, &mut u1003, &call);
    assert_hosted(&cluster, s, "1003", "blade-2");
    busy_via_host(&mut u1001, &mut u1003);
    assert_hosted(&cluster, s, "1003", "blade-2");
    hang_up(&mut u1002, &mut u1003, &mut call);
    wait_ready(&cluster, s, "1003");
    assert_eq!(calls(&cluster, s, "answered", "cross_blade"), 2.0);
    assert_eq!(calls(&cluster, t, "answered", "cross_blade"), 3.0);
    for blade in [s, t] {
        let hosted_by_peer = if blade == s { 3.0 } else { 2.0 };
        assert_eq!(
            cluster.metric(blade, "sipblade_hosting_granted_total"),
            hosted_by_peer
        );
        assert!(cluster.sessions(blade).is_empty());
    }
}

/// Each caller (on `source`) calls its callee (on `target`); both calls
/// are up at once, then both hang up.
fn two_cross_calls_at_once(
    cluster: &TestCluster,
    source: usize,
    target: usize,
    pairs: [(&mut Ua, &mut Ua); 2],
) {
    let host = cluster.members[source].id.clone();
    let mut live = Vec::new();
    for (a, b) in pairs {
        let (call, _) = answered_cross_call(a, b);
        live.push((a, b, call));
    }
    for (_, b, _) in &live {
        assert_hosted(cluster, target, &b.ext, &host);
    }
    assert_eq!(cluster.sessions(source).len(), 2);
    for (a, b, call) in &mut live {
        confirm(a, b, call);
        hang_up(a, b, call);
    }
    for (a, b, _) in &live {
        wait_ready(cluster, target, &b.ext);
        cluster.wait_state(source, &a.ext, "ready");
    }
}

/// T dies silently (SIGKILL; S has not noticed yet): S's host request
/// goes unanswered, and the caller gets 503 with Retry-After once S stops
/// waiting, not a hang; a CANCEL while S waits ends the call at once.
#[test]
fn a_silent_target_is_503_and_a_cancel_while_waiting_is_487() {
    let (s, t) = (0, 1);
    let mut cluster = TestCluster::start_in(0, 2, 86, 30, 1, &[1]);
    let mut a = cluster.registered(s, "1001");
    let _b = cluster.registered(t, "1002");
    cluster.kill_blade(t);

    let started = Instant::now();
    let (_, resp) = failed_call(&mut a, "1002");
    assert_eq!(resp.status(), Some(503), "{}", first_line(&resp));
    let text = String::from_utf8_lossy(resp.as_bytes()).into_owned();
    assert!(text.contains("Retry-After:"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the 503 took {:?}",
        started.elapsed()
    );
    assert_eq!(refused(&cluster, s, "overloaded"), 1.0);
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.sessions(s).is_empty());

    let mut call = a.call("1002");
    a.invite(&mut call, "");
    a.expect_where("100 Trying", |m| {
        m.call_id() == call.call_id && m.status() == Some(100)
    });
    a.cancel(&call);
    let cancelled = a.response(&call.call_id, Method::Cancel);
    assert_eq!(cancelled.status(), Some(200), "{}", first_line(&cancelled));
    let resp = a.response(&call.call_id, Method::Invite);
    assert_eq!(resp.status(), Some(487), "{}", first_line(&resp));
    a.ack_failure(&call, &resp);
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.sessions(s).is_empty());
    assert_eq!(calls(&cluster, s, "cancelled", "cross_blade"), 1.0);
    // The abandoned host request does not answer the caller again.
    let late = a.collect_where(Duration::from_millis(1200), |m| m.call_id() == call.call_id);
    assert!(late.is_empty(), "{late:?}");
}

/// A call T turns away busy because S hosts the callee (SPEC §2 step 6)
/// is a call attempt on T like any other: `/metrics` counts it (local,
/// busy), as T does when it finds no grant to redirect to.
#[test]
fn a_call_turned_away_busy_by_the_host_is_counted_on_the_agents_blade() {
    let cluster = TestCluster::start(2, 84);
    let (s, t) = (0, 1);
    let mut a = cluster.registered(s, "1001");
    let mut b = cluster.registered(t, "1002");
    let mut c = cluster.registered(t, "1003");
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    busy_via_host(&mut c, &mut b);
    let busy_on_t = calls(&cluster, t, "busy", "local") + calls(&cluster, t, "busy", "cross_blade");
    assert_eq!(busy_on_t, 1.0, "the 486 that 1003 got is counted on T");

    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, t, "1002");
}

/// A MESSAGE (not a call) from an agent on S to an agent on T is relayed:
/// T gives S leave for that one request over the link (a token, as for an
/// INVITE, but no hosting: the agent's state does not change), and the
/// answer comes back the same way. To an agent logged in nowhere: 480.
#[test]
fn an_out_of_dialog_message_to_an_agent_on_another_blade_is_relayed() {
    let cluster = TestCluster::start(2, 88);
    let (s, t) = (0, 1);
    let mut a = cluster.registered(s, "1001");
    let mut b = cluster.registered(t, "1002");

    let message = |a: &Ua, to: &str, call_id: &str| {
        format!(
            "MESSAGE {} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <{}>;tag=m1\r\nTo: <{}>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\
             Content-Length: 5\r\n\r\nhello",
            aor(to),
            a.via(&branch()),
            aor("1001"),
            aor(to),
        )
    };
    let call_id = format!("msg-{}@test", unique());
    a.send(message(&a, "1002", &call_id));
    let relayed = b.request(Method::Message, &call_id);
    assert_eq!(relayed.body(), b"hello");
    assert_eq!(
        relayed.request_uri().unwrap().as_str(),
        b.contact_uri(),
        "T sent it to B's registered terminal"
    );
    assert_eq!(relayed.vias().count(), 3, "through S and T: {relayed:?}");
    assert_eq!(cluster.agent(t, "1002")["state"], "ready", "not hosted");
    b.send(b.answer(&relayed, 200, "OK", "b1"));
    let ok = a.response(&call_id, Method::Message);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert!(cluster.sessions(s).is_empty() && cluster.sessions(t).is_empty());

    // A token is no use to anyone but the blade it was given to: the same
    // kind of request straight from a phone to T is refused.
    let forged = format!("msg-{}@test", unique());
    let mut direct = Ua::new(cluster.members[t].sip, "1001");
    let text = message(&direct, "1002", &forged).replacen(
        &aor("1002"),
        &format!(
            "sip:1002@{};sbh=00112233445566778899aabbccddeeff",
            cluster.members[t].sip
        ),
        1,
    );
    direct.send(text);
    let resp = direct.response(&forged, Method::Message);
    assert_eq!(resp.status(), Some(403), "{}", first_line(&resp));

    let nobody = format!("msg-{}@test", unique());
    a.send(message(&a, "1003", &nobody));
    let resp = a.response(&nobody, Method::Message);
    assert_eq!(resp.status(), Some(480), "{}", first_line(&resp));
}

/// SPEC §2 step 9: a supervisor on T monitors an agent of T whose call S
/// hosts, with a Join (RFC 3911). T hands the Join to S, which owns the
/// session: S hosts the supervisor from T by the same steps as a callee,
/// and sends the join leg back through T to the agent's terminal. The
/// supervisor's leaving hands it back; the call goes on.
#[test]
fn a_supervisor_joins_a_cross_blade_call_and_the_sessions_blade_hosts_it() {
    let cluster = TestCluster::start(2, 91);
    let (s, t) = (0, 1);
    let mut a = cluster.registered(s, "1001");
    let mut b = cluster.registered(t, "1002");
    let mut sup = cluster.registered(t, "1004");
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let mut monitor = sup.call("1002");
    let join = format!(
        "Join: {};from-tag={CALLEE_TAG};to-tag={}\r\n",
        call.call_id, call.from_tag
    );
    sup.invite(&mut monitor, &join);
    let invite = b.request(Method::Invite, &monitor.call_id);
    assert!(invite.header_named("Join").is_some(), "{invite:?}");
    assert_eq!(invite.request_uri().unwrap().as_str(), b.contact_uri());
    assert_eq!(invite.record_routes().count(), 3, "T, S, then T again");
    assert_hosted(&cluster, t, "1004", "blade-1");
    assert_hosted(&cluster, t, "1002", "blade-1");
    let sessions = cluster.sessions(s);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(
        sessions[0]["agents"],
        serde_json::json!(["1001", "1002", "1004"])
    );
    assert_eq!(sessions[0]["hosted"], serde_json::json!(["1002", "1004"]));

    b.answer(&invite, 200, "OK", "b-join");
    let ok = sup.response(&monitor.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert_eq!(
        cluster.metric(s, "sipblade_joins_total"),
        1.0,
        "once answered"
    );
    monitor.learn(&ok);
    sup.ack_2xx(&monitor);
    b.request(Method::Ack, &monitor.call_id);
    sup.bye(&mut monitor);
    let bye = b.request(Method::Bye, &monitor.call_id);
    b.answer(&bye, 200, "OK", "b-join");
    let done = sup.response(&monitor.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    wait_ready(&cluster, t, "1004");
    assert_hosted(&cluster, t, "1002", "blade-1");

    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, t, "1002");
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.sessions(s).is_empty());
}

/// The callee's side of the dialog that `invite` (as the callee got it,
/// answered with [`CALLEE_TAG`]) opened: for the callee's own in-dialog
/// requests, along the route set as the Record-Routes give it (RFC 3261
/// §12.1.1).
fn callee_side(invite: &Message) -> Call {
    let caller = invite
        .from()
        .uri()
        .user_str()
        .unwrap_or_default()
        .into_owned();
    Call {
        call_id: invite.call_id().to_owned(),
        from_tag: CALLEE_TAG.to_owned(),
        callee: caller,
        cseq: 1,
        branch: String::new(),
        invite: String::new(),
        to: common::header(invite, sipblade::sip::HeaderName::From),
        target: invite
            .contacts()
            .next()
            .map(|c| c.uri().as_str().to_owned()),
        routes: invite
            .record_routes()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .collect(),
    }
}

/// Attended transfer across blades, the everyday shape: A (1001, on S)
/// talks to B (1002, on T, hosted by S), puts it on hold and calls C
/// (1004, also on T, hosted by S too). A transfers: B's phone sends C an
/// INVITE with Replaces naming the A-C dialog. S owns that session and B
/// is hosted there already, so T hands B over under the same grant, and
/// the call goes through: C's phone takes it, hangs up on A (RFC 3891),
/// A hangs up its held call with B, and the B-C call is all that is left,
/// until it ends and everyone is ready.
#[test]
fn an_attended_transfer_across_blades_replaces_the_call_and_hands_everyone_back() {
    attended_transfer_across_blades(231, 1, "1004");
}

/// The same with two cores per blade, and a C whose extension hashes to
/// the other core than B's: B's two sessions live on different cores of
/// S (each call's on its callee's core), each with its own hosting of B
/// under T's one grant.
#[test]
fn an_attended_transfer_across_blades_of_two_cores_goes_through() {
    attended_transfer_across_blades(236, 2, "1003");
}

/// The attended transfer to `to` on blades at 127.0.0.`first_ip` and the
/// next, phones on the three addresses after them.
fn attended_transfer_across_blades(first_ip: u8, cores: usize, to: &str) {
    let cluster = TestCluster::start_with(2, first_ip, 30, cores);
    let (s, t) = (0, 1);
    let phone = |n: u8| Ipv4Addr::new(127, 0, 0, first_ip + 1 + n);
    let mut a = cluster.registered_on(s, "1001", phone(1));
    let mut b = cluster.registered_on(t, "1002", phone(2));
    let mut c = cluster.registered_on(t, to, phone(3));
    let (mut held, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &held);
    let (consult, consult_invite) = answered_cross_call(&mut a, &mut c);
    confirm(&mut a, &mut c, &consult);
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_hosted(&cluster, t, to, "blade-1");

    let mut moved = b.call(to);
    let replaces = format!(
        "Replaces: {};to-tag={CALLEE_TAG};from-tag={}\r\n",
        consult.call_id, consult.from_tag
    );
    b.invite(&mut moved, &replaces);
    let Some(invite) = c.next_where(WAIT, |m| m.call_id() == moved.call_id) else {
        let refused = b.response(&moved.call_id, Method::Invite);
        panic!("C's phone got no INVITE; B got {}", first_line(&refused));
    };
    assert_eq!(
        invite.method(),
        Some(Method::Invite),
        "{}",
        first_line(&invite)
    );
    assert!(invite.header_named("Replaces").is_some(), "{invite:?}");
    assert_eq!(invite.request_uri().unwrap().as_str(), c.contact_uri());
    c.answer(&invite, 200, "OK", "c-moved");
    let ok = b.response(&moved.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    moved.learn(&ok);
    b.ack_2xx(&moved);
    c.request(Method::Ack, &moved.call_id);
    assert_eq!(cluster.metric(s, "sipblade_replaces_total"), 1.0);
    assert_eq!(refused(&cluster, s, "already_hosted"), 0.0);

    // C's phone ends the replaced dialog; A hangs up the held call.
    let mut from_c = callee_side(&consult_invite);
    c.bye(&mut from_c);
    let bye = a.request(Method::Bye, &consult.call_id);
    a.answer(&bye, 200, "OK", "unused");
    let done = c.response(&consult.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    hang_up(&mut a, &mut b, &mut held);
    cluster.wait_state(s, "1001", "ready");
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_hosted(&cluster, t, to, "blade-1");
    let sessions = cluster.sessions(s);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["call_id"], moved.call_id.as_str());
    assert_eq!(sessions[0]["agents"], serde_json::json!(["1002", to]));
    assert_eq!(sessions[0]["hosted"], serde_json::json!(["1002", to]));
    assert!(cluster.sessions(t).is_empty());

    // The new call ends: nothing stays hosted.
    hang_up(&mut b, &mut c, &mut moved);
    wait_ready(&cluster, t, "1002");
    wait_ready(&cluster, t, to);
    assert_eq!(cluster.agent(s, "1001")["state"], "ready");
    assert!(cluster.sessions(s).is_empty() && cluster.sessions(t).is_empty());
}

/// Three blades: a supervisor on U joins an agent on T whose call S hosts.
/// U relays the Join to T (the agent's blade), T hands it to S (which
/// hosts the agent), and S hosts the supervisor from U before sending the
/// join leg through T to the agent: four Record-Routes, U T S T.
#[test]
fn a_join_crosses_three_blades_to_the_session_and_hosts_the_joiner_there() {
    let cluster = TestCluster::start(3, 94);
    let (s, t, u) = (0, 1, 2);
    let mut a = cluster.registered(s, "1001");
    let mut b = cluster.registered(t, "1002");
    let mut sup = cluster.registered(u, "1004");
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let mut monitor = sup.call("1002");
    let join = format!(
        "Join: {};from-tag={};to-tag={CALLEE_TAG}\r\n",
        call.call_id, call.from_tag
    );
    sup.invite(&mut monitor, &join);
    let invite = b.request(Method::Invite, &monitor.call_id);
    assert_eq!(invite.record_routes().count(), 4, "U, T, S and T again");
    assert_hosted(&cluster, u, "1004", "blade-1");
    let sessions = cluster.sessions(s);
    assert_eq!(
        sessions[0]["agents"],
        serde_json::json!(["1001", "1002", "1004"])
    );
    assert!(cluster.sessions(t).is_empty() && cluster.sessions(u).is_empty());

    // The agent declines: the supervisor is handed back to U at once.
    b.answer(&invite, 603, "Decline", "b-join");
    let declined = sup.response(&monitor.call_id, Method::Invite);
    assert_eq!(declined.status(), Some(603), "{}", first_line(&declined));
    sup.ack_failure(&monitor, &declined);
    wait_ready(&cluster, u, "1004");
    assert_hosted(&cluster, t, "1002", "blade-1");
    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, t, "1002");
}

/// RFC 3261 §18.1.1: an INVITE too large for UDP (over 1300 bytes) goes
/// from S to T over TCP; both blades record-route twice (RFC 5658), one
/// entry per transport, and the dialog's requests follow: ACK and BYE over
/// TCP between the blades, UDP to the phones.
#[test]
fn a_large_invite_crosses_between_blades_over_tcp() {
    let cluster = TestCluster::start(2, 97);
    let (s, t) = (0, 1);
    let mut a = cluster.registered(s, "1001");
    let mut b = cluster.registered(t, "1002");
    let mut call = a.call("1002");
    let pad = format!("X-Pad: {}\r\n", "p".repeat(1400));
    a.invite(&mut call, &pad);
    let invite = b.request(Method::Invite, &call.call_id);
    let vias: Vec<_> = invite.vias().collect();
    assert_eq!(vias.len(), 3, "{invite:?}");
    assert_eq!(vias[0].transport(), "UDP", "T to the phone");
    assert_eq!(vias[1].transport(), "TCP", "S to T");
    assert_eq!(invite.record_routes().count(), 4, "two per blade");
    assert_hosted(&cluster, t, "1002", "blade-1");
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    confirm(&mut a, &mut b, &call);
    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, t, "1002");
}

// The blade hangs up a call it ends itself.

/// T goes away in the middle of a call: S ends the session and sends the
/// caller's phone, on S, a BYE of its own that it can match to its dialog
/// (the callee's phone is beyond the lost blade).
#[test]
fn losing_the_target_mid_call_hangs_up_the_callers_phone() {
    use std::net::Ipv4Addr;
    let mut cluster = TestCluster::start(2, 170);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 172));
    let mut b = cluster.registered_on(t, "1002", Ipv4Addr::new(127, 0, 0, 173));
    let (call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    cluster.stop_blade(t);
    let bye = a.request(Method::Bye, &call.call_id);
    assert_dialog_bye(&a, &bye, &call.call_id, (&call.from_tag, CALLEE_TAG), 0);
    assert_eq!(bye.vias().count(), 1, "S's own request");
    a.answer(&bye, 200, "OK", "unused");
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.sessions(s).is_empty());
    assert_eq!(cluster.metric(s, "sipblade_sessions_bye_sent_total"), 1.0);
    assert_eq!(a.recv_raw(QUIET), None, "answered: not retransmitted");
    assert_eq!(cluster.metric(s, "sipblade_sessions_bye_failed_total"), 0.0);
}

/// A cross-blade call still up after `max_call_secs`: S hangs it up on
/// both phones, the callee's through T (S's route to it), and hands the
/// callee back.
#[test]
fn a_cross_blade_call_that_outlives_max_call_secs_is_hung_up_on_both_phones() {
    use std::net::Ipv4Addr;
    let mut cluster = TestCluster::new(2, 177, 30, 1);
    // Long enough for the call to be answered on a loaded machine.
    cluster.blade_settings = "max_call_secs = 2\n".into();
    let (s, t) = (0, 1);
    cluster.start_blade(s);
    cluster.start_blade(t);
    cluster.wait_linked();
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 179));
    let mut b = cluster.registered_on(t, "1002", Ipv4Addr::new(127, 0, 0, 180));
    let (call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let to_a = a.request(Method::Bye, &call.call_id);
    assert_dialog_bye(&a, &to_a, &call.call_id, (&call.from_tag, CALLEE_TAG), 0);
    let to_b = b.request(Method::Bye, &call.call_id);
    assert_dialog_bye(
        &b,
        &to_b,
        &call.call_id,
        (CALLEE_TAG, &call.from_tag),
        invite.cseq().seq,
    );
    let vias: Vec<String> = to_b.vias().map(|v| v.host().to_owned()).collect();
    assert_eq!(vias, ["127.0.0.178", "127.0.0.177"], "from S through T");
    a.answer(&to_a, 200, "OK", "unused");
    b.answer(&to_b, 200, "OK", "unused");
    wait_ready(&cluster, t, "1002");
    cluster.wait_state(s, "1001", "ready");
    assert_eq!(a.recv_raw(QUIET), None, "answered: not retransmitted");
    assert_eq!(b.recv_raw(QUIET), None, "answered: not retransmitted");
    assert_eq!(cluster.metric(s, "sipblade_sessions_bye_sent_total"), 2.0);
    assert_eq!(cluster.metric(s, "sipblade_sessions_bye_failed_total"), 0.0);
    assert_eq!(cluster.metric(s, "sipblade_sessions_expired_total"), 1.0);
}

/// SPEC §2 step 8 seen from the callee's phone: S is killed (SIGKILL: no
/// BYE, no unhost) mid-call; when the lease lapses T hangs the call up on
/// B's phone with a BYE of its own that B can match to its dialog, and B
/// is ready again.
#[test]
fn a_killed_source_blade_gets_the_hosted_callees_phone_hung_up_by_its_blade() {
    use std::net::Ipv4Addr;
    const LEASE: u64 = 2;
    let (s, t) = (0, 1);
    let mut cluster = TestCluster::start_in(0, 2, 194, LEASE as u32, 1, &[0]);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 196));
    let mut b = cluster.registered_on(t, "1002", Ipv4Addr::new(127, 0, 0, 197));
    let (call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);
    assert_hosted(&cluster, t, "1002", "blade-1");

    cluster.kill_blade(s);
    let killed = Instant::now();
    let bye = b
        .next_where(Duration::from_secs(LEASE + 2), |m| {
            m.method() == Some(Method::Bye) && m.call_id() == call.call_id
        })
        .unwrap_or_else(|| panic!("no BYE {:?} after S was killed", killed.elapsed()));
    assert_dialog_bye(
        &b,
        &bye,
        &call.call_id,
        (CALLEE_TAG, &call.from_tag),
        invite.cseq().seq,
    );
    let vias: Vec<String> = bye.vias().map(|v| v.host().to_owned()).collect();
    assert_eq!(vias, ["127.0.0.195"], "T's own request");
    b.answer(&bye, 200, "OK", "unused");
    wait_ready(&cluster, t, "1002");
    assert_eq!(b.recv_raw(QUIET), None, "answered: not retransmitted");
    assert_eq!(cluster.metric(t, "sipblade_sessions_bye_sent_total"), 1.0);
    assert_eq!(cluster.metric(t, "sipblade_sessions_bye_failed_total"), 0.0);
}

/// The same for a hosted joiner: a supervisor on T joins T's agent, whose
/// call S hosts, so S hosts the supervisor too, and the leg goes T, S, T.
/// S is killed: when the lease lapses, T hangs up the supervisor's phone
/// as well as the agent's, reaching it by T's own Record-Route entry of
/// the supervisor's pass (the last of T's two), not through S. With two
/// cores T relays the leg on the core of the agent it joins, while the
/// supervisor's grant lives on the supervisor's own core: the first hands
/// the leg's record to the second at the 2xx.
#[test]
fn a_killed_source_blade_gets_a_hosted_joiners_phone_hung_up_by_its_blade() {
    hosted_joiner_hung_up(1, 229);
}

/// [`a_killed_source_blade_gets_a_hosted_joiners_phone_hung_up_by_its_blade`]
/// on blades of two cores, with the supervisor and the agent it joins on
/// different cores.
#[test]
fn a_killed_source_blade_gets_a_hosted_joiners_phone_hung_up_on_a_blade_of_two_cores() {
    use sipblade::proxy::route::shard_of;
    assert_ne!(shard_of(b"1002", 2), shard_of(b"1003", 2), "cores apart");
    hosted_joiner_hung_up(2, 224);
}

/// Blades on 127.0.0.`first_ip` and the next address, phones on the
/// three after.
fn hosted_joiner_hung_up(cores: usize, first_ip: u8) {
    use std::net::Ipv4Addr;
    const LEASE: u64 = 2;
    let (s, t) = (0, 1);
    let mut cluster = TestCluster::start_in(0, 2, first_ip, LEASE as u32, cores, &[0]);
    let phone = |n: u8| Ipv4Addr::new(127, 0, 0, first_ip + n);
    let mut a = cluster.registered_on(s, "1001", phone(2));
    let mut b = cluster.registered_on(t, "1002", phone(3));
    let mut sup = cluster.registered_on(t, "1003", phone(4));
    let (call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let mut monitor = sup.call("1002");
    let join = format!(
        "Join: {};from-tag={CALLEE_TAG};to-tag={}\r\n",
        call.call_id, call.from_tag
    );
    sup.invite(&mut monitor, &join);
    let invite = b.request(Method::Invite, &monitor.call_id);
    assert_eq!(invite.record_routes().count(), 3, "T, S, then T again");
    assert_hosted(&cluster, t, "1003", "blade-1");
    b.answer(&invite, 200, "OK", "b-join");
    let ok = sup.response(&monitor.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    monitor.learn(&ok);
    sup.ack_2xx(&monitor);
    b.request(Method::Ack, &monitor.call_id);

    cluster.kill_blade(s);
    let killed = Instant::now();
    let bye = sup
        .next_where(Duration::from_secs(LEASE + 2), |m| {
            m.method() == Some(Method::Bye) && m.call_id() == monitor.call_id
        })
        .unwrap_or_else(|| panic!("no BYE {:?} after S was killed", killed.elapsed()));
    assert_dialog_bye(
        &sup,
        &bye,
        &monitor.call_id,
        (&monitor.from_tag, "b-join"),
        ok.cseq().seq,
    );
    let vias: Vec<String> = bye.vias().map(|v| v.host().to_owned()).collect();
    assert_eq!(vias, [cluster.members[t].sip.ip().to_string()], "T's own");
    sup.answer(&bye, 200, "OK", "unused");
    wait_ready(&cluster, t, "1003");
    wait_ready(&cluster, t, "1002");
    assert_eq!(sup.recv_raw(QUIET), None, "answered: not retransmitted");
}

/// T is killed mid-call (SIGKILL: no goodbye on the link), and a second
/// agent on S calls the agent S hosts before S's link notices (the QUIC
/// idle timeout takes seconds): S hosts that agent in a live session, so
/// it answers 486 itself (SPEC §2 step 6: a hosted agent is the hosting
/// blade's to decide), not 503 after asking a blade that never answers.
#[test]
fn a_call_to_an_agent_s_hosts_is_busy_while_its_dead_blade_goes_unnoticed() {
    use std::net::Ipv4Addr;
    let (s, t) = (0, 1);
    let mut cluster = TestCluster::start_in(0, 2, 150, 30, 1, &[1]);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 152));
    let mut b = cluster.registered_on(t, "1002", Ipv4Addr::new(127, 0, 0, 153));
    let mut d = cluster.registered_on(s, "1004", Ipv4Addr::new(127, 0, 0, 154));
    let (call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    cluster.kill_blade(t);
    // Before the fix: 503, a second after the host request went out.
    let (_, resp) = failed_call(&mut d, "1002");
    assert_eq!(resp.status(), Some(486), "{}", first_line(&resp));
    assert_eq!(refused(&cluster, s, "overloaded"), 0.0);
    cluster.wait_state(s, "1004", "ready");
}

/// Three blades, Replaces (RFC 3891): the newcomer is on U, the target
/// agent on T, and the session the Replaces names is S's (S hosts the
/// agent). U relays the INVITE to T (the agent's blade), T hands it to S
/// (which hosts the agent), and S hosts the newcomer from U for the new
/// call, sent through T to the agent: four Record-Routes, U T S T. The
/// new call rides on the replaced call's grant: the agent stays hosted by
/// S until both calls have ended.
#[test]
fn a_replaces_crosses_three_blades_to_the_session_and_hosts_the_newcomer_there() {
    use std::net::Ipv4Addr;
    let cluster = TestCluster::start(3, 155);
    let (s, t, u) = (0, 1, 2);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 158));
    let mut b = cluster.registered_on(t, "1002", Ipv4Addr::new(127, 0, 0, 159));
    let mut c = cluster.registered_on(u, "1004", Ipv4Addr::new(127, 0, 0, 160));
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let mut transfer = c.call("1002");
    let replaces = format!(
        "Replaces: {};to-tag={CALLEE_TAG};from-tag={}\r\n",
        call.call_id, call.from_tag
    );
    c.invite(&mut transfer, &replaces);
    let invite = b.request(Method::Invite, &transfer.call_id);
    assert!(invite.header_named("Replaces").is_some(), "{invite:?}");
    assert_eq!(invite.request_uri().unwrap().as_str(), b.contact_uri());
    assert_eq!(invite.record_routes().count(), 4, "U, T, S and T again");
    assert_hosted(&cluster, u, "1004", "blade-1");
    assert_hosted(&cluster, t, "1002", "blade-1");
    let sessions = cluster.sessions(s);
    let new = sessions
        .iter()
        .find(|x| x["call_id"] == transfer.call_id.as_str())
        .unwrap_or_else(|| panic!("no replacing session on S: {sessions:?}"));
    assert_eq!(new["agents"], serde_json::json!(["1004", "1002"]));
    assert!(cluster.sessions(t).is_empty() && cluster.sessions(u).is_empty());

    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = c.response(&transfer.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    transfer.learn(&ok);
    confirm(&mut c, &mut b, &transfer);
    assert_eq!(cluster.metric(s, "sipblade_replaces_total"), 1.0);
    assert_eq!(refused(&cluster, s, "already_hosted"), 0.0);

    // The replaced call ends; the agent stays hosted for the new one.
    hang_up(&mut a, &mut b, &mut call);
    cluster.wait_state(s, "1001", "ready");
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_hosted(&cluster, u, "1004", "blade-1");
    // The new call ends: both go back to their blades.
    hang_up(&mut c, &mut b, &mut transfer);
    wait_ready(&cluster, t, "1002");
    wait_ready(&cluster, u, "1004");
    assert!(cluster.sessions(s).is_empty());
}

/// The lease of the restart tests: far longer than they wait, so only
/// the restart can free the agent in time.
const LONG_LEASE: u32 = 60;

/// SPEC §2 step 8, sooner: S is killed mid-call (SIGKILL: no BYE, no
/// unhost) and comes back at once, same config and certificate. Its new
/// run's Hello tells T the grants of the run before are dead: T hangs up
/// B's phone with its own BYE and B is ready again within seconds, not at
/// the end of the 60 s lease. The new run then hosts B again, and keeps
/// it. Two cores: B (1003) is T's core 1, the link is core 0's.
#[test]
fn a_restarted_source_blade_gets_the_hosted_callees_phone_hung_up_at_once() {
    use std::net::Ipv4Addr;
    let (s, t) = (0, 1);
    let mut cluster = TestCluster::start_in(2, 2, 1, LONG_LEASE, 2, &[0]);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 2, 3));
    let mut b = cluster.registered_on(t, "1003", Ipv4Addr::new(127, 0, 2, 4));
    let (call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);
    assert_hosted(&cluster, t, "1003", "blade-1");

    cluster.kill_blade(s);
    let killed = Instant::now();
    cluster.spawn_blade(s);
    let bye = b
        .next_where(Duration::from_secs(5), |m| {
            m.method() == Some(Method::Bye) && m.call_id() == call.call_id
        })
        .unwrap_or_else(|| panic!("no BYE {:?} after S was killed", killed.elapsed()));
    assert_dialog_bye(
        &b,
        &bye,
        &call.call_id,
        (CALLEE_TAG, &call.from_tag),
        invite.cseq().seq,
    );
    let vias: Vec<String> = bye.vias().map(|v| v.host().to_owned()).collect();
    assert_eq!(vias, ["127.0.2.2"], "T's own request");
    b.answer(&bye, 200, "OK", "unused");
    wait_ready(&cluster, t, "1003");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "freed by the restart, not the lease: {:?}",
        killed.elapsed()
    );
    let released = |reason: &str| {
        cluster.metric(
            t,
            &format!("sipblade_hosting_released_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(released("peer_restarted"), 1.0);
    assert_eq!(released("lapsed"), 0.0);
    assert_eq!(cluster.metric(t, "sipblade_sessions_bye_sent_total"), 1.0);

    // The new run of S: A logs in again (S kept nothing) and calls B, who
    // is hosted by it and stays so: the news of its start ends none of
    // its own grants.
    cluster.wait_linked();
    assert_eq!(a.register(3600).status(), Some(200));
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);
    assert_hosted(&cluster, t, "1003", "blade-1");
    assert_eq!(b.recv_raw(QUIET), None, "no BYE for the new run's call");
    assert_hosted(&cluster, t, "1003", "blade-1");
    assert_eq!(released("peer_restarted"), 1.0);
    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, t, "1003");
    assert_eq!(released("unhost"), 1.0);
}

/// A link that drops while S lives is no restart: S is stopped (SIGSTOP)
/// until T's side of the link times out, then resumed; the link comes
/// back with the same run of S. S, whose side timed out too, saw the link
/// drop: it ended the call (its BYE to A) and its unhost was lost. The
/// reconnection itself frees nothing on T, but T asks S about the grant
/// over the new connection, S disowns it, and T frees B at once, long
/// before the 60 s lease: B's phone gets T's BYE, and the release is
/// counted as disowned, not as a restart.
#[test]
fn a_link_flap_that_s_saw_frees_the_agent_once_the_link_is_back() {
    use std::net::Ipv4Addr;
    let (s, t) = (0, 1);
    let cluster = TestCluster::start_in(2, 2, 11, LONG_LEASE, 1, &[0]);
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 2, 13));
    let mut b = cluster.registered_on(t, "1002", Ipv4Addr::new(127, 0, 2, 14));
    let (call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);
    assert_hosted(&cluster, t, "1002", "blade-1");

    cluster.signal_blade(s, "STOP");
    let stopped = Instant::now();
    // The link's idle timeout (10 s) is the only way T can tell.
    while cluster.peer_up(t, "blade-1") {
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "T never saw the link drop"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.signal_blade(s, "CONT");
    cluster.wait_linked();
    let bye_to_a = a.next_where(WAIT, |m| m.method() == Some(Method::Bye));
    assert!(bye_to_a.is_some(), "S saw the link drop and ended the call");
    wait_ready(&cluster, t, "1002");
    assert!(
        stopped.elapsed() < Duration::from_secs(u64::from(LONG_LEASE) / 2),
        "freed long before the lease"
    );
    let released = |reason: &str| {
        cluster.metric(
            t,
            &format!("sipblade_hosting_released_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(released("peer_disowned"), 1.0);
    assert_eq!(released("peer_restarted"), 0.0);
    assert_eq!(released("lapsed"), 0.0);
    assert_eq!(cluster.metric(t, "sipblade_sessions_bye_sent_total"), 1.0);
    let bye_to_b = b.next_where(WAIT, |m| m.method() == Some(Method::Bye));
    assert_eq!(bye_to_b.map(|m| m.call_id().to_owned()), Some(call.call_id));
}

// Topologies in which a leg passes a blade twice, or crosses three
// blades, and a blade is lost mid-call. Blades and phones on
// 127.0.0.101-139.

/// The BYE that `ua` gets in `call_id` within `within` (a lost blade's
/// lease and a margin); panics if none comes.
fn own_bye(ua: &mut Ua, call_id: &str, within: Duration) -> Message {
    let since = Instant::now();
    ua.next_where(within, |m| {
        m.method() == Some(Method::Bye) && m.call_id() == call_id
    })
    .unwrap_or_else(|| {
        panic!(
            "{}: no BYE in {call_id} {:?} after the loss",
            ua.ext,
            since.elapsed()
        )
    })
}

/// The Via hosts of `msg`, top first.
fn via_hosts(msg: &Message) -> Vec<String> {
    msg.vias().map(|v| v.host().to_owned()).collect()
}

/// Attended transfer (Replaces) with the newcomer on the agent's blade:
/// A on S calls B on T (S hosts B); C, also on T, replaces that call
/// (the consultation named in a transferor's REFER), so the new call goes
/// T, S, T: S hosts C, and the new call rides on B's grant. S is killed
/// with both calls up: when the leases lapse, T hangs up B's phone in
/// both calls and C's in the new one, each reached straight from T (not
/// through dead S), each BYE one its phone matches, and both agents are
/// ready again. Before the kill C's phone moves (a re-INVITE with a new
/// Contact, from a new socket): its BYE goes there.
#[test]
fn a_killed_session_blade_gets_a_replaces_newcomer_on_the_agents_blade_hung_up() {
    hosted_newcomer_hung_up(1, 101, false);
}

/// [`a_killed_session_blade_gets_a_replaces_newcomer_on_the_agents_blade_hung_up`]
/// with two cores per blade, the newcomer (1003) and the agent (1002) on
/// different cores.
#[test]
fn a_killed_session_blade_gets_a_replaces_newcomer_hung_up_on_a_blade_of_two_cores() {
    use sipblade::proxy::route::shard_of;
    assert_ne!(shard_of(b"1002", 2), shard_of(b"1003", 2), "cores apart");
    hosted_newcomer_hung_up(2, 106, false);
}

/// The same once the replaced call has been hung up (the transfer done):
/// only the new call is left to hang up, on both phones.
#[test]
fn a_killed_session_blade_gets_a_completed_transfer_hung_up_on_both_phones() {
    hosted_newcomer_hung_up(2, 111, true);
}

/// Blades on 127.0.0.`first_ip` and the next address, phones on the
/// three after.
fn hosted_newcomer_hung_up(cores: usize, first_ip: u8, transferred: bool) {
    use std::net::Ipv4Addr;
    const LEASE: u64 = 2;
    let (s, t) = (0, 1);
    let mut cluster = TestCluster::start_in(0, 2, first_ip, LEASE as u32, cores, &[0]);
    let phone = |n: u8| Ipv4Addr::new(127, 0, 0, first_ip + n);
    let mut a = cluster.registered_on(s, "1001", phone(2));
    let mut b = cluster.registered_on(t, "1002", phone(3));
    let mut c = cluster.registered_on(t, "1003", phone(4));
    let (mut call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let mut transfer = c.call("1002");
    let replaces = format!(
        "Replaces: {};to-tag={CALLEE_TAG};from-tag={}\r\n",
        call.call_id, call.from_tag
    );
    c.invite(&mut transfer, &replaces);
    let new = b.request(Method::Invite, &transfer.call_id);
    assert!(new.header_named("Replaces").is_some(), "{new:?}");
    assert_eq!(new.record_routes().count(), 3, "T, S, then T again");
    assert_hosted(&cluster, t, "1003", "blade-1");
    b.answer(&new, 200, "OK", "b-new");
    let ok = c.response(&transfer.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    transfer.learn(&ok);
    confirm(&mut c, &mut b, &transfer);
    // With one core, C's phone moves first (RFC 3261 §12.2 target
    // refresh: a re-INVITE from a new socket naming it in its Contact).
    // The re-INVITE passes T twice; T's BYE must follow it there.
    let mut moved = (cores == 1).then(|| Ua::new_at(cluster.members[t].sip, "1003", phone(4)));
    if let Some(c2) = moved.as_mut() {
        transfer.cseq += 1;
        let reinvite = c2
            .in_dialog_text(&transfer, "INVITE", transfer.cseq)
            .replace(
                "Content-Length:",
                &format!("Contact: <{}>\r\nContent-Length:", c2.contact_uri()),
            );
        c2.send(reinvite);
        let refresh = b.request(Method::Invite, &transfer.call_id);
        b.answer(&refresh, 200, "OK", "b-new");
        let ok = c2.response(&transfer.call_id, Method::Invite);
        assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
        c2.send(c2.in_dialog_text(&transfer, "ACK", transfer.cseq));
        b.request(Method::Ack, &transfer.call_id);
    }
    if transferred {
        hang_up(&mut a, &mut b, &mut call);
        cluster.wait_state(s, "1001", "ready");
    }
    assert_hosted(&cluster, t, "1002", "blade-1");

    cluster.kill_blade(s);
    let within = Duration::from_secs(LEASE + 2);
    let c_now = moved.as_mut().unwrap_or(&mut c);
    let to_c = own_bye(c_now, &transfer.call_id, within);
    assert_dialog_bye(
        c_now,
        &to_c,
        &transfer.call_id,
        (&transfer.from_tag, "b-new"),
        0,
    );
    let t_ip = cluster.members[t].sip.ip().to_string();
    assert_eq!(via_hosts(&to_c), [t_ip.as_str()], "T's own, straight to C");
    c_now.answer(&to_c, 200, "OK", "unused");
    let to_b = own_bye(&mut b, &transfer.call_id, within);
    assert_dialog_bye(
        &b,
        &to_b,
        &transfer.call_id,
        ("b-new", &transfer.from_tag),
        new.cseq().seq,
    );
    assert_eq!(via_hosts(&to_b), [t_ip.as_str()], "T's own, straight to B");
    b.answer(&to_b, 200, "OK", "unused");
    if transferred {
        let stray = b.collect_where(QUIET, |m| {
            m.method() == Some(Method::Bye) && m.call_id() == call.call_id
        });
        assert!(stray.is_empty(), "the replaced call had ended: {stray:?}");
    } else {
        let old = own_bye(&mut b, &call.call_id, within);
        assert_dialog_bye(
            &b,
            &old,
            &call.call_id,
            (CALLEE_TAG, &call.from_tag),
            invite.cseq().seq,
        );
        assert_eq!(via_hosts(&old), [t_ip.as_str()], "T's own");
        b.answer(&old, 200, "OK", "unused");
    }
    wait_ready(&cluster, t, "1002");
    wait_ready(&cluster, t, "1003");
    assert_eq!(c.recv_raw(QUIET), None, "nothing more (or else) for C");
    if let Some(c2) = moved.as_mut() {
        assert_eq!(c2.recv_raw(QUIET), None, "answered: nothing more for C");
    }
    assert_eq!(b.recv_raw(QUIET), None, "answered: nothing more for B");
    assert_eq!(cluster.metric(t, "sipblade_sessions_bye_failed_total"), 0.0);
}

/// Three blades: a supervisor on U joins B on T, whose call with A S
/// hosts; the leg goes U, T, S, T. S is killed: U hangs up the
/// supervisor's phone (its own BYE, straight from U), T hangs up B's in
/// both the call and the leg, and every agent is ready within the lease.
#[test]
fn a_killed_session_blade_gets_a_three_blade_join_hung_up_on_every_phone() {
    three_blade_join_lost(1, 116, Lost::Session);
}

/// [`a_killed_session_blade_gets_a_three_blade_join_hung_up_on_every_phone`]
/// with two cores per blade: the supervisor (1003) and B (1002) on
/// different cores.
#[test]
fn a_killed_session_blade_gets_a_three_blade_join_hung_up_on_blades_of_two_cores() {
    use sipblade::proxy::route::shard_of;
    assert_ne!(shard_of(b"1002", 2), shard_of(b"1003", 2), "cores apart");
    three_blade_join_lost(2, 122, Lost::Session);
}

/// Three blades as above, but the supervisor's blade U is killed: S
/// loses the joiner's hosting, so it hangs up the join leg on B's phone
/// (through T), and only the leg: the monitored call goes on, B still
/// hosted, until A hangs up.
#[test]
fn a_killed_joiners_blade_ends_only_the_join_leg() {
    three_blade_join_lost(1, 128, Lost::Joiner);
}

/// Three blades as above, but B's blade T is killed: S ends the call and
/// the leg to B. A gets S's BYE; so does the supervisor, whose phone U
/// still reaches although the leg's route towards it passes dead T
/// first (U, T, S, T): S's BYE goes to U, past T. The supervisor is
/// ready again, and none of it waits for a lease. Two cores per blade:
/// the Record-Routes name the cores' own ports, not the SIP port.
#[test]
fn a_killed_agents_blade_gets_the_three_blade_joiner_hung_up_through_its_own_blade() {
    three_blade_join_lost(2, 134, Lost::Agent);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lost {
    /// S, the blade of the session.
    Session,
    /// U, the supervisor's blade.
    Joiner,
    /// T, the blade of the agent joined (and hosted).
    Agent,
}

/// Blades S, T, U on 127.0.0.`first_ip` and the next two addresses,
/// phones on the three after.
fn three_blade_join_lost(cores: usize, first_ip: u8, lost: Lost) {
    use std::net::Ipv4Addr;
    const LEASE: u64 = 2;
    let mut cluster = TestCluster::new(3, first_ip, LEASE as u32, cores);
    let (s, t, u) = (0, 1, 2);
    for i in [s, t, u] {
        cluster.spawn_blade(i);
    }
    cluster.wait_linked();
    let phone = |n: u8| Ipv4Addr::new(127, 0, 0, first_ip + n);
    let mut a = cluster.registered_on(s, "1001", phone(3));
    let mut b = cluster.registered_on(t, "1002", phone(4));
    let mut sup = cluster.registered_on(u, "1003", phone(5));
    let (mut call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let mut monitor = sup.call("1002");
    let join = format!(
        "Join: {};from-tag={};to-tag={CALLEE_TAG}\r\n",
        call.call_id, call.from_tag
    );
    sup.invite(&mut monitor, &join);
    let leg = b.request(Method::Invite, &monitor.call_id);
    assert_eq!(leg.record_routes().count(), 4, "U, T, S and T again");
    assert_hosted(&cluster, u, "1003", "blade-1");
    b.answer(&leg, 200, "OK", "b-join");
    let ok = sup.response(&monitor.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    monitor.learn(&ok);
    sup.ack_2xx(&monitor);
    b.request(Method::Ack, &monitor.call_id);

    let ips: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.sip.ip().to_string())
        .collect();
    let ip = |i: usize| ips[i].clone();
    match lost {
        Lost::Session => {
            cluster.kill_blade(s);
            let within = Duration::from_secs(LEASE + 2);
            let to_sup = own_bye(&mut sup, &monitor.call_id, within);
            assert_dialog_bye(
                &sup,
                &to_sup,
                &monitor.call_id,
                (&monitor.from_tag, "b-join"),
                ok.cseq().seq,
            );
            assert_eq!(via_hosts(&to_sup), [ip(u)], "U's own, straight to it");
            sup.answer(&to_sup, 200, "OK", "unused");
            for (call_id, tags, cseq) in [
                (
                    &monitor.call_id,
                    ("b-join", monitor.from_tag.as_str()),
                    leg.cseq().seq,
                ),
                (
                    &call.call_id,
                    (CALLEE_TAG, call.from_tag.as_str()),
                    invite.cseq().seq,
                ),
            ] {
                let to_b = own_bye(&mut b, call_id, within);
                assert_dialog_bye(&b, &to_b, call_id, tags, cseq);
                assert_eq!(via_hosts(&to_b), [ip(t)], "T's own");
                b.answer(&to_b, 200, "OK", "unused");
            }
            wait_ready(&cluster, u, "1003");
            wait_ready(&cluster, t, "1002");
            assert_eq!(sup.recv_raw(QUIET), None, "nothing more for the supervisor");
            assert_eq!(b.recv_raw(QUIET), None, "nothing more for B");
        }
        Lost::Joiner => {
            cluster.kill_blade(u);
            // S learns of it when the link's idle timeout (10 s) lapses.
            let to_b = b
                .next_where(Duration::from_secs(15), |m| m.method() == Some(Method::Bye))
                .unwrap_or_else(|| panic!("B got no BYE for the leg"));
            assert_eq!(to_b.call_id(), monitor.call_id, "the leg's, not the call's");
            assert_dialog_bye(
                &b,
                &to_b,
                &monitor.call_id,
                ("b-join", &monitor.from_tag),
                leg.cseq().seq,
            );
            assert_eq!(via_hosts(&to_b), [ip(t), ip(s)], "S's own, through T");
            b.answer(&to_b, 200, "OK", "unused");
            let stray = a.collect_where(QUIET, |m| m.method() == Some(Method::Bye));
            assert!(stray.is_empty(), "the call goes on: {stray:?}");
            assert_hosted(&cluster, t, "1002", "blade-1");
            let sessions = cluster.sessions(s);
            assert_eq!(sessions.len(), 1, "{sessions:?}");
            assert_eq!(sessions[0]["agents"], serde_json::json!(["1001", "1002"]));
            hang_up(&mut a, &mut b, &mut call);
            wait_ready(&cluster, t, "1002");
            cluster.wait_state(s, "1001", "ready");
            assert!(cluster.sessions(s).is_empty());
        }
        Lost::Agent => {
            cluster.kill_blade(t);
            // S learns of it when the link's idle timeout (10 s) lapses.
            let within = Duration::from_secs(15);
            let to_a = own_bye(&mut a, &call.call_id, within);
            assert_dialog_bye(&a, &to_a, &call.call_id, (&call.from_tag, CALLEE_TAG), 0);
            assert_eq!(via_hosts(&to_a), [ip(s)], "S's own");
            a.answer(&to_a, 200, "OK", "unused");
            let to_sup = own_bye(&mut sup, &monitor.call_id, WAIT);
            assert_dialog_bye(
                &sup,
                &to_sup,
                &monitor.call_id,
                (&monitor.from_tag, "b-join"),
                ok.cseq().seq,
            );
            assert_eq!(via_hosts(&to_sup), [ip(u), ip(s)], "S's own, through U");
            sup.answer(&to_sup, 200, "OK", "unused");
            cluster.wait_state(s, "1001", "ready");
            wait_ready(&cluster, u, "1003");
            assert!(cluster.sessions(s).is_empty());
            assert_eq!(sup.recv_raw(QUIET), None, "nothing more for the supervisor");
            assert_eq!(cluster.metric(s, "sipblade_sessions_bye_failed_total"), 0.0);
        }
    }
}
