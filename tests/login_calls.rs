//! Login state changes (SPEC §5: a REGISTER is the agent's login, its
//! expiry or `Expires: 0` its logout) of agents in cross-blade calls:
//! the call goes on, `/status` stays consistent on both blades, and once
//! the call ends the agent is where its registration says (README "SIP
//! details": an agent that logs out during a call stays `in_call` or
//! `hosted` until the call ends, then `logged_out`).
//!
//! Addresses (127.0.0.x), one range per test: blades 101-102 (phones
//! 103-105), 106-107 (108-109), 110-112 (113-115), 116-117 (118-120),
//! 121-122 (123-125), 126-127 (128-130), 132-134 (135-138).

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::calls::{
    CALLEE_TAG, answered_cross_call, assert_hosted, callee_in_dialog, confirm, hang_up, wait_ready,
};
use common::cluster::TestCluster;
use common::{Ua, first_line};
use sipblade::sip::Method;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// `a` calls `callee` and gets a final answer (after any 100); ACKs a
/// failure and returns its status.
fn call_status(a: &mut Ua, callee: &str) -> u16 {
    let mut call = a.call(callee);
    a.invite(&mut call, "");
    let resp = a.response(&call.call_id, Method::Invite);
    let status = resp.status().unwrap_or(0);
    if status >= 300 {
        a.ack_failure(&call, &resp);
    }
    status
}

/// No session on any member, nobody `hosted` anywhere.
fn assert_nobody_hosted(cluster: &TestCluster, members: usize) {
    for i in 0..members {
        common::wait_until("no sessions", || cluster.sessions(i).is_empty());
        let status = cluster.status(i);
        for agent in status["agents"].as_array().expect("agents") {
            assert_ne!(agent["state"], "hosted", "member {i}: {agent}");
            assert_eq!(
                agent["hosted_by"],
                serde_json::Value::Null,
                "member {i}: {agent}"
            );
        }
    }
}

/// Scenario 1: B (on T, hosted by S) logs out (`Expires: 0`) mid-call.
/// The call goes on; B stays `hosted` on T (never `ready` while logged
/// out), S's directory drops B (a call placed on S after the call gets
/// 480, not a hosting), and after the BYE B is `logged_out` on both.
#[test]
fn a_hosted_agent_that_logs_out_mid_call_stays_hosted_until_the_call_ends() {
    let cluster = TestCluster::start(2, 101);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", ip(103));
    let mut b = cluster.registered_on(t, "1002", ip(104));
    let mut c = cluster.registered_on(s, "1003", ip(105));
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let bye_bye = b.register(0);
    assert_eq!(bye_bye.status(), Some(200), "{}", first_line(&bye_bye));
    // Give T's withdrawal time to reach S.
    std::thread::sleep(Duration::from_millis(300));
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_eq!(cluster.agent(t, "1002")["contact"], serde_json::Value::Null);
    assert_eq!(cluster.agent(s, "1002")["state"], "in_call");
    assert_eq!(cluster.sessions(s).len(), 1);
    // B is still in the call: busy, decided by S.
    assert_eq!(call_status(&mut c, "1002"), 486);

    // The call goes on: the BYE still reaches B's phone through T.
    hang_up(&mut a, &mut b, &mut call);
    cluster.wait_state(t, "1002", "logged_out");
    cluster.wait_state(s, "1001", "ready");
    assert_nobody_hosted(&cluster, 2);
    assert_eq!(cluster.agent(s, "1002")["state"], "logged_out");
    // Not registered anywhere: 480, on either blade.
    assert_eq!(call_status(&mut a, "1002"), 480);
    assert_eq!(call_status(&mut c, "1002"), 480);
    assert_eq!(cluster.agent(t, "1002")["state"], "logged_out");
    assert_nobody_hosted(&cluster, 2);
}

/// Scenario 2: the caller A (on S) logs out mid-call; B hangs up. A stays
/// `in_call` until then, is `logged_out` after (not `ready`), B is back to
/// `ready` on T, and A can no longer place a call (403: not logged in).
#[test]
fn a_caller_that_logs_out_mid_call_is_logged_out_once_it_ends() {
    let cluster = TestCluster::start(2, 106);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", ip(108));
    let mut b = cluster.registered_on(t, "1002", ip(109));
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    assert_eq!(a.register(0).status(), Some(200));
    assert_eq!(cluster.agent(s, "1001")["state"], "in_call");
    assert_hosted(&cluster, t, "1002", "blade-1");

    // The dialog does not depend on the registration: a re-INVITE (hold)
    // from the logged-out phone reaches B.
    call.cseq += 1;
    let hold = a.in_dialog_text(&call, "INVITE", call.cseq);
    a.send(hold);
    let reinvite = b.request(Method::Invite, &call.call_id);
    b.answer(&reinvite, 200, "OK", CALLEE_TAG);
    let held = a.response(&call.call_id, Method::Invite);
    assert_eq!(held.status(), Some(200), "{}", first_line(&held));
    a.send(a.in_dialog_text(&call, "ACK", call.cseq));
    assert_eq!(
        b.request(Method::Ack, &call.call_id).method(),
        Some(Method::Ack)
    );
    assert_eq!(cluster.agent(s, "1001")["state"], "in_call");

    // The caller hangs up from its logged-out phone.
    hang_up(&mut a, &mut b, &mut call);
    cluster.wait_state(s, "1001", "logged_out");
    wait_ready(&cluster, t, "1002");
    assert_nobody_hosted(&cluster, 2);
    assert_eq!(call_status(&mut a, "1002"), 403);
    // And B reaches nobody at A: 480.
    assert_eq!(call_status(&mut b, "1001"), 480);
}

/// Scenario 3 (same blade) and 4: B refreshes its registration mid-call
/// (same Contact: nothing changes), then registers from another phone on
/// T. The call goes on to the old phone, B stays `hosted`; after the call
/// B is `ready` at the new phone, and a new call rings it.
#[test]
fn a_hosted_agent_refreshing_or_moving_its_phone_on_its_blade_keeps_the_call() {
    let cluster = TestCluster::start(2, 121);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", ip(123));
    let mut b = cluster.registered_on(t, "1002", ip(124));
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    // Scenario 4: a refresh.
    assert_eq!(b.register(3600).status(), Some(200));
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_eq!(cluster.agent(t, "1002")["contact"], b.addr.to_string());
    assert_eq!(cluster.sessions(s).len(), 1);

    // Scenario 3: another phone of B's on T.
    let mut b2 = Ua::new_at(cluster.members[t].sip, "1002", ip(125));
    assert_eq!(b2.register(3600).status(), Some(200));
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_eq!(cluster.agent(t, "1002")["contact"], b2.addr.to_string());

    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, t, "1002");
    assert_eq!(cluster.agent(t, "1002")["contact"], b2.addr.to_string());
    assert_nobody_hosted(&cluster, 2);

    // A new call rings the new phone only.
    let (mut call2, _) = answered_cross_call(&mut a, &mut b2);
    confirm(&mut a, &mut b2, &call2);
    assert!(
        b.next_where(Duration::from_millis(300), |m| m.method()
            == Some(Method::Invite))
            .is_none(),
        "the old phone rang"
    );
    hang_up(&mut a, &mut b2, &mut call2);
    wait_ready(&cluster, t, "1002");
}

/// Scenario 3 (another blade): B, hosted from T by S, logs in on U
/// mid-call. T logs it out (B stays `hosted` there until the call ends),
/// U has it `ready`; the old call's BYE still reaches the old phone;
/// after the call T has B `logged_out`, nobody is `hosted`, and a call
/// from S reaches B's new phone on U.
#[test]
fn a_hosted_agent_moving_blades_mid_call_ends_up_on_the_new_blade() {
    moving_blades_mid_call(TestCluster::start(3, 110), [113, 114, 115, 131]);
}

/// The same on two cores per blade (the directory and the hosting live on
/// the agent's core).
#[test]
fn a_hosted_agent_moving_blades_mid_call_on_two_cores() {
    moving_blades_mid_call(TestCluster::start_with(3, 132, 30, 2), [135, 136, 137, 138]);
}

fn moving_blades_mid_call(cluster: TestCluster, phones: [u8; 4]) {
    let (s, t, u) = (0, 1, 2);
    let mut a = cluster.registered_on(s, "1001", ip(phones[0]));
    let mut b = cluster.registered_on(t, "1002", ip(phones[1]));
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let mut moved = cluster.registered_on(u, "1002", ip(phones[2]));
    cluster.wait_state(u, "1002", "ready");
    common::wait_until("T logs B out", || {
        cluster.agent(t, "1002")["contact"] == serde_json::Value::Null
    });
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_eq!(cluster.sessions(s).len(), 1);
    // README "SIP details": U does not learn of the call, so the new
    // phone can be called meanwhile, also through T (not handed to S).
    let mut c = cluster.registered_on(t, "1003", ip(phones[3]));
    let mut probe = c.call("1002");
    c.invite(&mut probe, "");
    let rings = moved.request(Method::Invite, &probe.call_id);
    moved.answer(&rings, 486, "Busy Here", CALLEE_TAG);
    let busy = c.response(&probe.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    c.ack_failure(&probe, &busy);
    wait_ready(&cluster, u, "1002");

    hang_up(&mut a, &mut b, &mut call);
    cluster.wait_state(t, "1002", "logged_out");
    cluster.wait_state(s, "1001", "ready");
    assert_nobody_hosted(&cluster, 3);
    assert_eq!(cluster.agent(u, "1002")["state"], "ready");

    let (mut call2, _) = answered_cross_call(&mut a, &mut moved);
    assert_hosted(&cluster, u, "1002", "blade-1");
    assert_eq!(cluster.agent(t, "1002")["state"], "logged_out");
    confirm(&mut a, &mut moved, &call2);
    hang_up(&mut a, &mut moved, &mut call2);
    wait_ready(&cluster, u, "1002");
    assert_nobody_hosted(&cluster, 3);
}

/// Scenario 1 on two cores per blade, the callee hanging up: B logs out
/// mid-call, then hangs up itself from its logged-out phone. The BYE
/// reaches A through T and S, the session ends, and B is `logged_out`
/// (not `ready`, not `hosted`) on T.
#[test]
fn a_logged_out_hosted_callee_hangs_up_itself_on_two_cores() {
    let cluster = TestCluster::start_with(2, 116, 30, 2);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", ip(118));
    let mut b = cluster.registered_on(t, "1002", ip(119));
    let mut c = cluster.registered_on(t, "1003", ip(120));
    let (call, invite) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    assert_eq!(b.register(0).status(), Some(200));
    assert_hosted(&cluster, t, "1002", "blade-1");
    // A call to B reaching T is still decided by S: busy.
    assert_eq!(call_status(&mut c, "1002"), 486);

    b.send(callee_in_dialog(&b, &invite, "BYE", 9));
    let bye = a.request(Method::Bye, &call.call_id);
    a.answer(&bye, 200, "OK", "");
    let done = b.response(&call.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    cluster.wait_state(t, "1002", "logged_out");
    cluster.wait_state(s, "1001", "ready");
    assert_nobody_hosted(&cluster, 2);
    assert_eq!(call_status(&mut c, "1002"), 480);
    assert_eq!(call_status(&mut a, "1002"), 480);
}

/// Scenario 3 with the source as the new blade: B, hosted from T by S,
/// logs in on S itself mid-call. T logs it out (still `hosted` until the
/// call ends); after the call B is `ready` on S at its new phone,
/// `logged_out` on T, and a call from A is a local call to the new phone.
#[test]
fn a_hosted_agent_moving_to_its_hosting_blade_mid_call_ends_up_there() {
    let cluster = TestCluster::start(2, 126);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", ip(128));
    let mut b = cluster.registered_on(t, "1002", ip(129));
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let mut moved = cluster.registered_on(s, "1002", ip(130));
    common::wait_until("T logs B out", || {
        cluster.agent(t, "1002")["contact"] == serde_json::Value::Null
    });
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_eq!(cluster.sessions(s).len(), 1);

    hang_up(&mut a, &mut b, &mut call);
    cluster.wait_state(t, "1002", "logged_out");
    cluster.wait_state(s, "1001", "ready");
    assert_nobody_hosted(&cluster, 2);
    let b_on_s = cluster.agent(s, "1002");
    assert_eq!(b_on_s["state"], "ready", "{b_on_s}");
    assert_eq!(b_on_s["contact"], moved.addr.to_string(), "{b_on_s}");

    let (mut call2, _) = common::calls::answered_call(&mut a, &mut moved, 1);
    assert_eq!(cluster.agent(s, "1002")["state"], "in_call");
    assert_eq!(cluster.agent(t, "1002")["state"], "logged_out");
    a.ack_2xx(&call2);
    assert_eq!(
        moved.request(Method::Ack, &call2.call_id).method(),
        Some(Method::Ack)
    );
    hang_up(&mut a, &mut moved, &mut call2);
    cluster.wait_state(s, "1002", "ready");
    assert_nobody_hosted(&cluster, 2);
}

/// Two phones of one agent log in on two blades at the same moment
/// (127.0.19.20-21, phones .24-.30): each blade hears of the other's login
/// after making its own. The later login (by the blades' clocks, which
/// the announcements carry) stays and the other blade logs its phone
/// out, as for a move. Before, each took the other's announcement for a
/// move and the agent ended logged out on both, its phones told 200 OK,
/// and calls to it got 480.
#[test]
fn agents_logging_in_on_two_blades_at_once_stay_logged_in_on_the_later() {
    let ip = |last: u8| Ipv4Addr::new(127, 0, 19, last);
    let cluster = TestCluster::start_in(19, 2, 20, 30, 1, &[]);
    let (s, t) = (0, 1);
    // Three agents, as the race goes either way: one of them crossing
    // on the link is enough to lose it without the login times.
    let mut phones = Vec::new();
    for (n, ext) in (0u8..).zip(["1002", "1003", "1004"]) {
        let mut p = Ua::new_at(cluster.members[s].sip, ext, ip(25 + 2 * n));
        let mut q = Ua::new_at(cluster.members[t].sip, ext, ip(26 + 2 * n));
        let (on_s, on_t) = (
            p.register_text(&p.binding_headers(3600)),
            q.register_text(&q.binding_headers(3600)),
        );
        p.send(on_s);
        q.send(on_t);
        for ua in [&mut p, &mut q] {
            let ok = ua.expect_where("the REGISTER's answer", |m| {
                m.cseq().method == Method::Register && m.status().is_some()
            });
            assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
        }
        phones.push((p, q));
    }
    // The announcements have crossed.
    std::thread::sleep(Duration::from_millis(300));
    for ext in ["1002", "1003", "1004"] {
        let states = [s, t].map(|i| cluster.agent(i, ext)["state"].clone());
        let ready = states.iter().filter(|st| **st == "ready").count();
        let out = states.iter().filter(|st| **st == "logged_out").count();
        assert_eq!((ready, out), (1, 1), "{ext}: {states:?}");
    }
    // A call reaches a phone of the agent.
    let mut a = cluster.registered_on(s, "1001", ip(24));
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let (p, q) = &mut phones[0];
    let rung = [p, q].into_iter().find_map(|ua| {
        let invite = ua.next_where(Duration::from_secs(1), |m| {
            m.method() == Some(Method::Invite)
        })?;
        ua.answer(&invite, 486, "Busy Here", "busy");
        Some(())
    });
    assert!(rung.is_some(), "no phone of 1002 rang");
    let busy = a.response(&call.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    a.ack_failure(&call, &busy);
}
