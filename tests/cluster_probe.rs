//! Black-box probes of the multi-blade features (SPEC §2, §6): the real
//! binary where a blade must die or stop, real QUIC with certificates
//! from a real cluster CA, real UDP phones.
//!
//! Every address is in 127.0.6.1-60: each test's blades on addresses of
//! their own in 127.0.6.1-33 (fixed SIP and QUIC ports), phones in
//! 127.0.6.30-60 (ports the OS picks, so phones may share an address).

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::{Call, Ua, first_line};
use sipblade::sip::{Message, Method};

const CALLEE_TAG: &str = "callee-tag";

/// A phone on 127.0.6.`host`.
fn phone_ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 6, host)
}

/// `n` blades on 127.0.6.`first`, … in this process, linked.
/// Asserts that none of `members` keeps a session in its `/status`.
fn assert_no_sessions(cluster: &TestCluster, members: impl IntoIterator<Item = usize>) {
    for i in members {
        let sessions = cluster.sessions(i);
        assert!(sessions.is_empty(), "{i}: {sessions:?}");
    }
}

fn started(n: usize, first: u8) -> TestCluster {
    started_with(n, first, 1)
}

/// [`started`] with `cores` cores a blade.
fn started_with(n: usize, first: u8, cores: usize) -> TestCluster {
    let mut cluster = TestCluster::new_in(6, n, first, 30, cores);
    for i in 0..n {
        cluster.start_blade(i);
    }
    cluster.wait_linked();
    cluster
}

/// `a` calls `b` through two blades up to the caller's 200 OK, and ACKs.
fn answered(a: &mut Ua, b: &mut Ua) -> (Call, Message) {
    let mut call = a.call(&b.ext);
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.expect_where("200 to the INVITE", |m| {
        m.call_id() == call.call_id && m.status() == Some(200)
    });
    call.learn(&ok);
    a.ack_2xx(&call);
    let _ = b.request(Method::Ack, &call.call_id);
    (call, invite)
}

/// A source blade stopped gracefully (SIGTERM: an operator's restart or
/// maintenance) takes its sessions with it. Its hosted callee must not
/// stay `hosted` (busy to every caller) until the lease runs out: T frees
/// it as soon as S says goodbye, and hangs up its phone, as on a restart.
#[test]
fn a_stopped_source_blade_hands_back_the_hosted_callee_at_once() {
    let mut cluster = TestCluster::new_in(6, 2, 1, 30, 1);
    let (s, t) = (0, 1);
    cluster.spawn_blade(s);
    cluster.start_blade(t);
    cluster.wait_linked();
    let mut a = cluster.registered_on(s, "1001", phone_ip(31));
    let mut b = cluster.registered_on(t, "1002", phone_ip(32));
    let (call, _) = answered(&mut a, &mut b);
    assert_eq!(cluster.agent(t, "1002")["hosted_by"], "blade-1");

    cluster.signal_blade(s, "TERM");
    let stopped = Instant::now();
    let bye = b
        .next_where(Duration::from_secs(3), |m| {
            m.method() == Some(Method::Bye) && m.call_id() == call.call_id
        })
        .unwrap_or_else(|| panic!("no BYE to B; on T: {}", cluster.agent(t, "1002")));
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    cluster.wait_state(t, "1002", "ready");
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "freed by the goodbye, not the lease: {:?}",
        stopped.elapsed()
    );
    assert_eq!(
        cluster.agent(t, "1002")["hosted_by"],
        serde_json::Value::Null
    );
    assert_eq!(
        cluster.metric(t, "sipblade_hosting_released_total{reason=\"lapsed\"}"),
        0.0
    );
    cluster.wait_until_peer_down(t, "blade-1");

    // B is T's again: a local call rings it.
    let mut c = cluster.registered_on(t, "1003", phone_ip(33));
    let mut local = c.call("1002");
    c.invite(&mut local, "");
    let invite = b.request(Method::Invite, &local.call_id);
    b.answer(&invite, 486, "Busy Here", "local");
    let busy = c.response(&local.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    c.ack_failure(&local, &busy);
}

/// Glare: A on S calls B on T while B calls A. Whatever each gets, no
/// one is left hosted or in a call once both calls end.
#[test]
fn glare_between_two_blades_strands_no_one() {
    let cluster = started(2, 3);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", phone_ip(34));
    let mut b = cluster.registered_on(t, "1002", phone_ip(35));
    let mut ab = a.call("1002");
    let mut ba = b.call("1001");
    a.invite(&mut ab, "");
    b.invite(&mut ba, "");
    let mut finals = Vec::new();
    // Each phone answers 486 to the INVITE it gets (it is calling out).
    for _ in 0..2 {
        for (ua, mine, theirs) in [(&mut a, &ab, &ba), (&mut b, &ba, &ab)] {
            if let Some(inv) = ua.next_where(Duration::from_millis(500), |m| {
                m.method() == Some(Method::Invite) && m.call_id() == theirs.call_id
            }) {
                ua.answer(&inv, 486, "Busy Here", "glare");
            }
            if let Some(r) = ua.next_where(Duration::from_millis(200), |m| {
                m.call_id() == mine.call_id && m.status().is_some_and(|s| s >= 300)
            }) {
                finals.push(first_line(&r));
                ua.ack_failure(mine, &r);
            }
        }
    }
    assert_eq!(
        finals.len(),
        2,
        "each caller gets a final answer: {finals:?}"
    );
    cluster.wait_state(s, "1001", "ready");
    cluster.wait_state(t, "1002", "ready");
    assert_no_sessions(&cluster, [s, t]);
}

/// Three blades: B on T is hosted by S; C on a third blade calls B. The
/// call must be busy (486), not ring B, and leave everyone as they were.
#[test]
fn a_third_blade_calling_a_hosted_agent_gets_busy() {
    let cluster = started(3, 5);
    let (s, t, o) = (0, 1, 2);
    let mut a = cluster.registered_on(s, "1001", phone_ip(36));
    let mut b = cluster.registered_on(t, "1002", phone_ip(37));
    let mut c = cluster.registered_on(o, "1003", phone_ip(38));
    let (mut call, _) = answered(&mut a, &mut b);
    let mut third = c.call("1002");
    c.invite(&mut third, "");
    let resp = c.expect_where("a final answer", |m| {
        m.call_id() == third.call_id && m.status().is_some_and(|s| s >= 300)
    });
    assert_eq!(resp.status(), Some(486), "{}", first_line(&resp));
    c.ack_failure(&third, &resp);
    let rang = b.next_where(Duration::from_millis(300), |m| m.call_id() == third.call_id);
    assert!(rang.is_none(), "B rang: {rang:?}");
    cluster.wait_state(o, "1003", "ready");
    assert_eq!(cluster.agent(t, "1002")["state"], "hosted");
    a.bye(&mut call);
    let bye = b.request(Method::Bye, &call.call_id);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    cluster.wait_state(t, "1002", "ready");
    assert_no_sessions(&cluster, [s, t, o]);
}

/// A peer configured but down at start: /status shows it down, a call
/// to an agent nobody has registered gets a prompt 480; once the peer
/// starts, its agents are reachable.
#[test]
fn a_peer_down_at_start_then_up() {
    let mut cluster = TestCluster::new_in(6, 2, 8, 30, 1);
    let (s, t) = (0, 1);
    cluster.start_blade(s);
    let st = cluster.status(s);
    assert_eq!(st["peers"][0]["up"], false);
    let mut a = cluster.registered_on(s, "1001", phone_ip(39));
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let resp = a.expect_where("a final answer", |m| {
        m.call_id() == call.call_id && m.status().is_some_and(|s| s >= 300)
    });
    assert_eq!(resp.status(), Some(480), "{}", first_line(&resp));
    a.ack_failure(&call, &resp);
    cluster.start_blade(t);
    cluster.wait_linked();
    let mut b = cluster.registered_on(t, "1002", phone_ip(45));
    let (mut call, _) = answered(&mut a, &mut b);
    a.bye(&mut call);
    let bye = b.request(Method::Bye, &call.call_id);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    cluster.wait_state(t, "1002", "ready");
    // The other way: T learns of A, who logged in before T was up.
    let (mut back, _) = answered(&mut b, &mut a);
    assert_eq!(cluster.agent(s, "1001")["hosted_by"], "blade-2");
    b.bye(&mut back);
    let bye = a.request(Method::Bye, &back.call_id);
    a.answer(&bye, 200, "OK", CALLEE_TAG);
    cluster.wait_state(s, "1001", "ready");
}

/// An agent that logs out on T (Expires 0): a call from S gets 480 at
/// once, and T's agent is not left hosted.
#[test]
fn a_logged_out_agent_on_another_blade_is_480() {
    let cluster = started(2, 10);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", phone_ip(40));
    let mut b = cluster.registered_on(t, "1002", phone_ip(41));
    assert_eq!(b.register(0).status(), Some(200));
    cluster.wait_state(t, "1002", "logged_out");
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let resp = a.expect_where("a final answer", |m| {
        m.call_id() == call.call_id && m.status().is_some_and(|s| s >= 300)
    });
    assert_eq!(resp.status(), Some(480), "{}", first_line(&resp));
    a.ack_failure(&call, &resp);
    assert_eq!(cluster.agent(t, "1002")["state"], "logged_out");
    assert_eq!(cluster.agent(s, "1001")["state"], "ready");
}

/// The same extension registering on two blades at once, then a call
/// from a third blade: one phone rings, never both, and no one is left
/// hosted.
#[test]
fn the_same_extension_on_two_blades() {
    let cluster = started(3, 12);
    let mut b1 = Ua::new_at(cluster.members[0].sip, "1002", phone_ip(42));
    let mut b2 = Ua::new_at(cluster.members[1].sip, "1002", phone_ip(43));
    assert_eq!(b1.register(3600).status(), Some(200));
    assert_eq!(b2.register(3600).status(), Some(200));
    cluster.wait_state(0, "1002", "logged_out");
    let mut c = cluster.registered_on(2, "1003", phone_ip(44));
    let mut call = c.call("1002");
    c.invite(&mut call, "");
    let r1 = b1.next_where(Duration::from_millis(500), |m| m.call_id() == call.call_id);
    let r2 = b2.next_where(Duration::from_millis(500), |m| m.call_id() == call.call_id);
    assert!(r1.is_none(), "the old phone rang");
    let inv = r2.expect("the new phone rings");
    b2.answer(&inv, 486, "Busy Here", "x");
    let resp = c.expect_where("final", |m| {
        m.call_id() == call.call_id && m.status().is_some_and(|s| s >= 300)
    });
    c.ack_failure(&call, &resp);
    cluster.wait_state(1, "1002", "ready");
    cluster.wait_state(2, "1003", "ready");
}

/// Supervisor monitoring across three blades: the call A (S) → B (T),
/// a supervisor on U joins B's dialog. The original call ends first: B
/// stays in the join leg (hosted), A is ready; the supervisor's BYE ends
/// the session and frees everyone.
#[test]
fn a_join_leg_outlives_the_original_call_across_three_blades() {
    let cluster = started(3, 15);
    let (s, t, u) = (0, 1, 2);
    let mut a = cluster.registered_on(s, "1001", phone_ip(46));
    let mut b = cluster.registered_on(t, "1002", phone_ip(47));
    let mut sup = cluster.registered_on(u, "1004", phone_ip(48));
    let (mut call, _) = answered(&mut a, &mut b);
    let mut monitor = sup.call("1002");
    let join = format!(
        "Join: {};from-tag={};to-tag={CALLEE_TAG}\r\n",
        call.call_id, call.from_tag
    );
    sup.invite(&mut monitor, &join);
    let invite = b.request(Method::Invite, &monitor.call_id);
    b.answer(&invite, 200, "OK", "b-join");
    let ok = sup.expect_where("200 to the Join", |m| {
        m.call_id() == monitor.call_id && m.status() == Some(200)
    });
    monitor.learn(&ok);
    sup.ack_2xx(&monitor);
    let _ = b.request(Method::Ack, &monitor.call_id);

    a.bye(&mut call);
    let bye = b.request(Method::Bye, &call.call_id);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    let done = a.response(&call.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    cluster.wait_state(s, "1001", "ready");
    assert_eq!(cluster.agent(t, "1002")["state"], "hosted");
    assert_eq!(cluster.agent(u, "1004")["state"], "hosted");

    sup.bye(&mut monitor);
    let bye = b.request(Method::Bye, &monitor.call_id);
    b.answer(&bye, 200, "OK", "b-join");
    let done = sup.response(&monitor.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    cluster.wait_state(t, "1002", "ready");
    cluster.wait_state(u, "1004", "ready");
    assert_no_sessions(&cluster, [s, t, u]);
}

/// The hosted callee's blade stopped gracefully mid-call: S hangs up the
/// caller's phone at once and frees it.
#[test]
fn a_stopped_target_blade_ends_the_call_on_the_source() {
    let mut cluster = TestCluster::new_in(6, 2, 18, 30, 1);
    let (s, t) = (0, 1);
    cluster.start_blade(s);
    cluster.spawn_blade(t);
    cluster.wait_linked();
    let mut a = cluster.registered_on(s, "1001", phone_ip(49));
    let mut b = cluster.registered_on(t, "1002", phone_ip(50));
    let (call, _) = answered(&mut a, &mut b);
    cluster.signal_blade(t, "TERM");
    let bye = a.next_where(Duration::from_secs(3), |m| {
        m.method() == Some(Method::Bye) && m.call_id() == call.call_id
    });
    assert!(bye.is_some(), "no BYE to A; {}", cluster.agent(s, "1001"));
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.sessions(s).is_empty());
}

/// An attended transfer with each party on a blade of its own: A (S0)
/// calls B (S1); B consults C (S2); A calls C replacing the B–C dialog
/// (RFC 3891); B's calls end. A and C talk; then hang up: everyone is
/// ready on every blade and no session is left.
#[test]
fn an_attended_transfer_across_three_blades() {
    attended_transfer(&started(3, 20), 51);
}

/// [`an_attended_transfer_across_three_blades`] with two cores a blade.
#[test]
fn an_attended_transfer_across_three_blades_of_two_cores() {
    attended_transfer(&started_with(3, 31, 2), 60);
}

/// The transfer on `cluster`, the phones on 127.0.6.`phones` and down.
fn attended_transfer(cluster: &TestCluster, phones: u8) {
    let mut a = cluster.registered_on(0, "1001", phone_ip(phones));
    let mut b = cluster.registered_on(1, "1002", phone_ip(phones - 1));
    let mut c = cluster.registered_on(2, "1003", phone_ip(phones - 2));
    let (mut ab, _) = answered(&mut a, &mut b);
    let (mut bc, _) = answered(&mut b, &mut c);

    let mut ac = a.call("1003");
    let replaces = format!(
        "Replaces: {};to-tag={CALLEE_TAG};from-tag={}\r\n",
        bc.call_id, bc.from_tag
    );
    a.invite(&mut ac, &replaces);
    let invite = c.request(Method::Invite, &ac.call_id);
    c.answer(&invite, 200, "OK", "c-new");
    let ok = a.expect_where("200 to the Replaces", |m| {
        m.call_id() == ac.call_id && m.status().is_some_and(|s| s >= 200)
    });
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    ac.learn(&ok);
    a.ack_2xx(&ac);
    let _ = c.request(Method::Ack, &ac.call_id);

    // The replaced dialog and the transferor's call end.
    b.bye(&mut bc);
    let bye = c.request(Method::Bye, &bc.call_id);
    c.answer(&bye, 200, "OK", CALLEE_TAG);
    assert_eq!(b.response(&bc.call_id, Method::Bye).status(), Some(200));
    a.bye(&mut ab);
    let bye = b.request(Method::Bye, &ab.call_id);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    assert_eq!(a.response(&ab.call_id, Method::Bye).status(), Some(200));
    cluster.wait_state(1, "1002", "ready");
    // A, the newcomer, is hosted by the blade of the session it joined.
    assert_eq!(cluster.agent(0, "1001")["hosted_by"], "blade-2");
    assert_eq!(cluster.agent(2, "1003")["hosted_by"], "blade-2");

    a.bye(&mut ac);
    let bye = c.request(Method::Bye, &ac.call_id);
    c.answer(&bye, 200, "OK", "c-new");
    assert_eq!(a.response(&ac.call_id, Method::Bye).status(), Some(200));
    for (i, ext) in [(0, "1001"), (1, "1002"), (2, "1003")] {
        cluster.wait_state(i, ext, "ready");
    }
    assert_no_sessions(cluster, 0..3);
}

/// Two callers on two blades call the same agent on a third at once: one
/// hosting wins, the other caller gets 486; when the call ends the agent
/// is ready and no blade keeps a session.
#[test]
fn two_sources_race_to_host_the_same_agent() {
    let cluster = started(3, 23);
    let mut a = cluster.registered_on(0, "1001", phone_ip(54));
    let mut b = cluster.registered_on(1, "1002", phone_ip(55));
    let mut c = cluster.registered_on(2, "1003", phone_ip(56));
    let mut ab = a.call("1002");
    let mut cb = c.call("1002");
    a.invite(&mut ab, "");
    c.invite(&mut cb, "");
    let invite = b.expect_where("an INVITE", |m| m.method() == Some(Method::Invite));
    let (winner, loser, won, lost) = if invite.call_id() == ab.call_id {
        (&mut a, &mut c, &mut ab, &mut cb)
    } else {
        (&mut c, &mut a, &mut cb, &mut ab)
    };
    let busy = loser.expect_where("486", |m| {
        m.call_id() == lost.call_id && m.status().is_some_and(|s| s >= 300)
    });
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    loser.ack_failure(lost, &busy);
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = winner.expect_where("200", |m| {
        m.call_id() == won.call_id && m.status() == Some(200)
    });
    won.learn(&ok);
    winner.ack_2xx(won);
    winner.bye(won);
    let bye = b.request(Method::Bye, &won.call_id);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    cluster.wait_state(1, "1002", "ready");
    cluster.wait_state(0, "1001", "ready");
    cluster.wait_state(2, "1003", "ready");
    assert_no_sessions(&cluster, 0..3);
}

/// A hosted agent logs in on a third blade mid-call: its old blade logs
/// it out (its call goes on); when the call ends it is logged out there,
/// not `hosted` or `ready`, and ready on the new blade, which rings it.
#[test]
fn a_hosted_agent_that_moves_blades_mid_call_ends_up_on_the_new_one() {
    let cluster = started(3, 26);
    let mut a = cluster.registered_on(0, "1001", phone_ip(57));
    let mut b = cluster.registered_on(1, "1002", phone_ip(58));
    let (mut call, _) = answered(&mut a, &mut b);
    let mut moved = cluster.registered_on(2, "1002", phone_ip(59));
    std::thread::sleep(Duration::from_millis(300));
    a.bye(&mut call);
    let bye = b.request(Method::Bye, &call.call_id);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    cluster.wait_state(1, "1002", "logged_out");
    cluster.wait_state(2, "1002", "ready");
    cluster.wait_state(0, "1001", "ready");
    let mut again = a.call("1002");
    a.invite(&mut again, "");
    let invite = moved.request(Method::Invite, &again.call_id);
    moved.answer(&invite, 486, "Busy Here", "m");
    let busy = a.response(&again.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    a.ack_failure(&again, &busy);
    let stray = b.next_where(Duration::from_millis(200), |m| m.call_id() == again.call_id);
    assert!(stray.is_none(), "the phone left behind rang");
}

/// A cross-blade call whose callee's phone answers nothing at all (gone
/// without logging out): the caller gets a timeout answer once timer B
/// runs out (short here: T1 of 20 ms), and both agents are free again,
/// the callee handed back.
#[test]
fn a_cross_blade_call_to_a_silent_phone_times_out_and_hands_back() {
    use sipblade::config::Config;
    use sipblade::runtime::{Blade, Options};
    use sipblade::transaction::TimerConfig;
    let cluster = TestCluster::new_in(6, 2, 34, 30, 1);
    let options = || Options {
        timers: TimerConfig {
            t1: Duration::from_millis(20),
            ..TimerConfig::default()
        },
        ..Options::default()
    };
    let blades: Vec<Blade> = (0..2)
        .map(|i| {
            let config = Config::load(&cluster.write_config(i)).expect("a valid config");
            Blade::start_with(config, options()).expect("the blade starts")
        })
        .collect();
    let admins: Vec<_> = blades
        .iter()
        .map(|b| b.admin_addr().expect("an admin port"))
        .collect();
    for admin in &admins {
        common::wait_until("the link up", || {
            common::status(*admin)["peers"][0]["up"] == true
        });
    }
    let mut a = Ua::new_at(cluster.members[0].sip, "1001", phone_ip(35));
    let mut b = Ua::new_at(cluster.members[1].sip, "1002", phone_ip(36));
    assert_eq!(a.register(3600).status(), Some(200));
    assert_eq!(b.register(3600).status(), Some(200));

    let started = Instant::now();
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let _ = b.request(Method::Invite, &call.call_id);
    let resp = a.expect_where("a final answer", |m| {
        m.call_id() == call.call_id && m.status().is_some_and(|s| s >= 300)
    });
    assert_eq!(resp.status(), Some(408), "{}", first_line(&resp));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    a.ack_failure(&call, &resp);
    common::wait_until("1002 ready on its blade", || {
        common::agent(admins[1], "1002")["state"] == "ready"
    });
    common::wait_until("1001 ready", || {
        common::agent(admins[0], "1001")["state"] == "ready"
    });
    for admin in &admins {
        assert_eq!(common::status(*admin)["sessions"], serde_json::json!([]));
    }
    assert_eq!(
        common::metric(
            admins[0],
            "sipblade_calls_total{outcome=\"failed\",route=\"cross_blade\"}"
        ),
        1.0
    );
    for blade in blades {
        blade.stop();
    }
}
