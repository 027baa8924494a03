//! Sessions with several join legs at once (SPEC §2 step 9, README
//! "Many-party sessions"): a cross-blade call A (on S) - B (on T) that
//! two more agents join, from the blades of the call's parties or a third
//! one, leaving in every order; joins racing; a join of a join leg.
//!
//! Blades S, T, U on 127.0.0.x, one range per test: 231-233, 234-236,
//! 237-239, 240-242, 243-245; on two-core blades, 127.0.19.10-16.

mod common;

use common::calls::{CALLEE_TAG, answered_cross_call, assert_hosted, confirm, hang_up, wait_ready};
use common::cluster::TestCluster;
use common::{Call, Ua, first_line};
use sipblade::sip::{Message, Method};

const S: usize = 0;
const T: usize = 1;
const U: usize = 2;

/// The Join header naming `call` (as its caller holds it), tags in the
/// given order.
fn join_header(call_id: &str, from_tag: &str, to_tag: &str) -> String {
    format!("Join: {call_id};from-tag={from_tag};to-tag={to_tag}\r\n")
}

/// `joiner` sends a Join INVITE to `target` with `join`; `target` gets it
/// and answers 200 with To tag `tag`; the joiner ACKs. Returns the leg.
fn join_answered(joiner: &mut Ua, target: &mut Ua, join: &str, tag: &str) -> Call {
    let (mut leg, invite) = join_ringing(joiner, target, join);
    target.answer(&invite, 200, "OK", tag);
    let ok = joiner.response(&leg.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    leg.learn(&ok);
    joiner.ack_2xx(&leg);
    target.request(Method::Ack, &leg.call_id);
    leg
}

/// `joiner` sends a Join INVITE to `target`, which gets it (not answered).
fn join_ringing(joiner: &mut Ua, target: &mut Ua, join: &str) -> (Call, Message) {
    let mut leg = joiner.call(&target.ext);
    joiner.invite(&mut leg, join);
    let Some(invite) = target.next_where(common::WAIT, |m| m.call_id() == leg.call_id) else {
        let refused = joiner.response(&leg.call_id, Method::Invite);
        panic!(
            "{} got no INVITE; joiner got {}",
            target.ext,
            first_line(&refused)
        );
    };
    assert_eq!(
        invite.method(),
        Some(Method::Invite),
        "{}",
        first_line(&invite)
    );
    assert!(invite.header_named("Join").is_some(), "{invite:?}");
    assert_eq!(invite.request_uri().unwrap().as_str(), target.contact_uri());
    (leg, invite)
}

/// The joiner hangs its leg up; the target answers the BYE.
fn leave(joiner: &mut Ua, target: &mut Ua, leg: &mut Call, tag: &str) {
    joiner.bye(leg);
    let bye = target.request(Method::Bye, &leg.call_id);
    target.answer(&bye, 200, "OK", tag);
    let done = joiner.response(&leg.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
}

/// `sipblade_calls_total{outcome, route="cross_blade"}` of member `i`.
fn cross_calls(cluster: &TestCluster, i: usize, outcome: &str) -> f64 {
    cluster.metric(
        i,
        &format!("sipblade_calls_total{{outcome=\"{outcome}\",route=\"cross_blade\"}}"),
    )
}

/// The one session of member `i`: its agents and hosted agents, sorted.
fn session_of(cluster: &TestCluster, i: usize) -> (Vec<String>, Vec<String>) {
    let sessions = cluster.sessions(i);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let list = |k: &str| {
        let mut v: Vec<String> = sessions[0][k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    (list("agents"), list("hosted"))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Every agent ready everywhere, no session anywhere.
fn all_done(cluster: &TestCluster, blades: &[usize], agents: &[(usize, &str)]) {
    for &(i, ext) in agents {
        wait_ready(cluster, i, ext);
    }
    for &i in blades {
        assert!(cluster.sessions(i).is_empty(), "{:?}", cluster.sessions(i));
        let granted = cluster.metric(i, "sipblade_hosting_granted_total");
        let released = cluster.metric(i, "sipblade_hosting_released_total{reason=\"unhost\"}");
        assert_eq!(granted, released, "every grant of blade {i} unhosted");
    }
}

/// A (S) - B (T), answered; C (T) joins B, D (U) joins A, both answered.
struct Conference {
    cluster: TestCluster,
    a: Ua,
    b: Ua,
    c: Ua,
    d: Ua,
    call: Call,
    leg_c: Call,
    leg_d: Call,
}

/// Three blades on 127.0.0.`first_ip`…: A (S) and B (T) in an answered
/// call; C (T) and D (U) registered.
fn four_parties(first_ip: u8) -> (TestCluster, [Ua; 4], Call) {
    let cluster = TestCluster::start(3, first_ip);
    let mut a = cluster.registered(S, "1001");
    let mut b = cluster.registered(T, "1002");
    let c = cluster.registered(T, "1003");
    let d = cluster.registered(U, "1004");
    let (call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);
    (cluster, [a, b, c, d], call)
}

fn conference(first_ip: u8) -> Conference {
    let (cluster, [mut a, mut b, mut c, mut d], call) = four_parties(first_ip);
    let leg_c = join_answered(
        &mut c,
        &mut b,
        &join_header(&call.call_id, &call.from_tag, CALLEE_TAG),
        "b-join",
    );
    let leg_d = join_answered(
        &mut d,
        &mut a,
        &join_header(&call.call_id, CALLEE_TAG, &call.from_tag),
        "a-join",
    );
    Conference {
        cluster,
        a,
        b,
        c,
        d,
        call,
        leg_c,
        leg_d,
    }
}

/// Scenario 1: `/status` of every blade with two join legs up.
fn assert_four_party_status(cluster: &TestCluster) {
    let (agents, hosted) = session_of(cluster, S);
    assert_eq!(agents, strings(&["1001", "1002", "1003", "1004"]));
    assert_eq!(hosted, strings(&["1002", "1003", "1004"]));
    assert!(cluster.sessions(T).is_empty(), "{:?}", cluster.sessions(T));
    assert!(cluster.sessions(U).is_empty(), "{:?}", cluster.sessions(U));
    assert_eq!(cluster.agent(S, "1001")["state"], "in_call");
    assert_hosted(cluster, T, "1002", "blade-1");
    assert_hosted(cluster, T, "1003", "blade-1");
    assert_hosted(cluster, U, "1004", "blade-1");
    assert_eq!(cluster.metric(S, "sipblade_joins_total"), 2.0);
}

/// A joiner leaves first, then the original caller, then the last
/// joiner: each party is ready as soon as no dialog connects it.
#[test]
fn two_joiners_a_joiner_leaves_first_then_the_call_then_the_other() {
    let Conference {
        cluster,
        mut a,
        mut b,
        mut c,
        mut d,
        mut call,
        mut leg_c,
        mut leg_d,
    } = conference(231);
    assert_four_party_status(&cluster);

    leave(&mut c, &mut b, &mut leg_c, "b-join");
    wait_ready(&cluster, T, "1003");
    assert_hosted(&cluster, T, "1002", "blade-1");
    let (agents, hosted) = session_of(&cluster, S);
    assert_eq!(agents, strings(&["1001", "1002", "1004"]));
    assert_eq!(hosted, strings(&["1002", "1004"]));

    // The original call ends: B is in no dialog any more; A still talks
    // to D.
    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, T, "1002");
    assert_eq!(cluster.agent(S, "1001")["state"], "in_call");
    assert_hosted(&cluster, U, "1004", "blade-1");
    let (agents, hosted) = session_of(&cluster, S);
    assert_eq!(agents, strings(&["1001", "1004"]));
    assert_eq!(hosted, strings(&["1004"]));

    leave(&mut d, &mut a, &mut leg_d, "a-join");
    all_done(
        &cluster,
        &[S, T, U],
        &[(S, "1001"), (T, "1002"), (T, "1003"), (U, "1004")],
    );
    assert_eq!(
        cross_calls(&cluster, S, "answered"),
        3.0,
        "the call and two legs"
    );
    assert_eq!(cluster.metric(S, "sipblade_joins_total"), 2.0);
}

/// The original call ends first while both legs are up: A and B stay (a
/// leg still connects each). Then C leaves: B is in no dialog any more and
/// goes back at once, although D's leg to A goes on.
#[test]
fn two_joiners_the_call_ends_first_and_each_party_goes_with_its_last_leg() {
    let Conference {
        cluster,
        mut a,
        mut b,
        mut c,
        mut d,
        mut call,
        mut leg_c,
        mut leg_d,
    } = conference(234);
    hang_up(&mut a, &mut b, &mut call);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(cluster.agent(S, "1001")["state"], "in_call");
    assert_hosted(&cluster, T, "1002", "blade-1");
    let (agents, hosted) = session_of(&cluster, S);
    assert_eq!(agents, strings(&["1001", "1002", "1003", "1004"]));
    assert_eq!(hosted, strings(&["1002", "1003", "1004"]));

    leave(&mut c, &mut b, &mut leg_c, "b-join");
    wait_ready(&cluster, T, "1003");
    wait_ready(&cluster, T, "1002");
    assert_eq!(cluster.agent(S, "1001")["state"], "in_call");
    let (agents, hosted) = session_of(&cluster, S);
    assert_eq!(agents, strings(&["1001", "1004"]));
    assert_eq!(hosted, strings(&["1004"]));

    leave(&mut d, &mut a, &mut leg_d, "a-join");
    all_done(
        &cluster,
        &[S, T, U],
        &[(S, "1001"), (T, "1002"), (T, "1003"), (U, "1004")],
    );
    assert_eq!(cross_calls(&cluster, S, "answered"), 3.0);
}

/// A join leg refused (486) while another is up: the refused joiner goes
/// back at once, the rest of the session is untouched, and the leg counts
/// as a busy call, not a join.
#[test]
fn a_join_refused_while_another_leg_is_up_hands_only_its_joiner_back() {
    let (cluster, [mut a, mut b, mut c, mut d], mut call) = four_parties(237);
    let mut leg_c = join_answered(
        &mut c,
        &mut b,
        &join_header(&call.call_id, &call.from_tag, CALLEE_TAG),
        "b-join",
    );
    let (leg_d, invite) = join_ringing(
        &mut d,
        &mut a,
        &join_header(&call.call_id, CALLEE_TAG, &call.from_tag),
    );
    assert_hosted(&cluster, U, "1004", "blade-1");
    a.answer(&invite, 486, "Busy Here", "a-join");
    let busy = d.response(&leg_d.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    d.ack_failure(&leg_d, &busy);
    wait_ready(&cluster, U, "1004");
    let (agents, hosted) = session_of(&cluster, S);
    assert_eq!(agents, strings(&["1001", "1002", "1003"]));
    assert_eq!(hosted, strings(&["1002", "1003"]));
    assert_hosted(&cluster, T, "1003", "blade-1");
    assert_eq!(cluster.metric(S, "sipblade_joins_total"), 1.0);
    assert_eq!(cross_calls(&cluster, S, "busy"), 1.0);

    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, S, "1001");
    assert_hosted(&cluster, T, "1002", "blade-1");
    leave(&mut c, &mut b, &mut leg_c, "b-join");
    all_done(
        &cluster,
        &[S, T, U],
        &[(S, "1001"), (T, "1002"), (T, "1003"), (U, "1004")],
    );
    assert_eq!(cross_calls(&cluster, S, "answered"), 2.0);
}

/// Two joins of the same call sent at once from two blades (T and U),
/// both for B: S hosts both joiners, both legs reach B's phone.
#[test]
fn two_joins_racing_from_two_blades_are_both_hosted() {
    let (cluster, [mut a, mut b, mut c, mut d], mut call) = four_parties(240);
    let join = join_header(&call.call_id, &call.from_tag, CALLEE_TAG);
    let mut leg_c = c.call("1002");
    let mut leg_d = d.call("1002");
    c.invite(&mut leg_c, &join);
    d.invite(&mut leg_d, &join);
    let mut legs = Vec::new();
    for (joiner, leg, tag) in [(&mut c, &mut leg_c, "b-c"), (&mut d, &mut leg_d, "b-d")] {
        let Some(invite) = b.next_where(common::WAIT, |m| m.call_id() == leg.call_id) else {
            let refused = joiner.response(&leg.call_id, Method::Invite);
            panic!(
                "B got no INVITE from {}; it got {}",
                joiner.ext,
                first_line(&refused)
            );
        };
        b.answer(&invite, 200, "OK", tag);
        let ok = joiner.response(&leg.call_id, Method::Invite);
        assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
        leg.learn(&ok);
        joiner.ack_2xx(leg);
        b.request(Method::Ack, &leg.call_id);
        legs.push(tag);
    }
    let (agents, hosted) = session_of(&cluster, S);
    assert_eq!(agents, strings(&["1001", "1002", "1003", "1004"]));
    assert_eq!(hosted, strings(&["1002", "1003", "1004"]));
    assert_hosted(&cluster, T, "1003", "blade-1");
    assert_hosted(&cluster, U, "1004", "blade-1");
    assert_eq!(cluster.metric(S, "sipblade_joins_total"), 2.0);

    leave(&mut d, &mut b, &mut leg_d, "b-d");
    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, S, "1001");
    assert_hosted(&cluster, T, "1002", "blade-1");
    leave(&mut c, &mut b, &mut leg_c, "b-c");
    all_done(
        &cluster,
        &[S, T, U],
        &[(S, "1001"), (T, "1002"), (T, "1003"), (U, "1004")],
    );
}

/// A join of a join leg: C (T) joins B's call; D (U) joins C, naming C's
/// leg. The leg is a confirmed dialog of C's, so the Join goes through
/// (hosted C's blade hands it to S, which hosts D). C leaving its own leg
/// while D's leg to it is up leaves C hosted (it is still in a call);
/// D's leaving then frees everyone.
#[test]
fn a_join_of_a_join_leg_keeps_its_target_hosted_until_its_last_leg_ends() {
    let (cluster, [mut a, mut b, mut c, mut d], mut call) = four_parties(243);
    let mut leg_c = join_answered(
        &mut c,
        &mut b,
        &join_header(&call.call_id, &call.from_tag, CALLEE_TAG),
        "b-join",
    );
    let mut leg_d = join_answered(
        &mut d,
        &mut c,
        &join_header(&leg_c.call_id, &leg_c.from_tag, "b-join"),
        "c-join",
    );
    let (agents, hosted) = session_of(&cluster, S);
    assert_eq!(agents, strings(&["1001", "1002", "1003", "1004"]));
    assert_eq!(hosted, strings(&["1002", "1003", "1004"]));
    assert_hosted(&cluster, U, "1004", "blade-1");

    leave(&mut c, &mut b, &mut leg_c, "b-join");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_hosted(&cluster, T, "1003", "blade-1");
    let (agents, _) = session_of(&cluster, S);
    assert!(agents.contains(&"1003".to_owned()), "{agents:?}");

    leave(&mut d, &mut c, &mut leg_d, "c-join");
    wait_ready(&cluster, T, "1003");
    wait_ready(&cluster, U, "1004");
    hang_up(&mut a, &mut b, &mut call);
    all_done(
        &cluster,
        &[S, T, U],
        &[(S, "1001"), (T, "1002"), (T, "1003"), (U, "1004")],
    );
}

/// A joiner that logs in on the blade hosting its leg, on another core
/// than the leg's session (blades of two cores, 127.0.19.10-11, phones
/// .12-.15): S hosts J (1003, on T) in its join leg to A's call, whose
/// session is on S's core of B (1002); J's record on S is on the other
/// core. J's phone moves to S mid-leg: J is `in_call` there (a call to J
/// on S is 486, its new phone not rung), and `ready` once the leg ends.
#[test]
fn a_joiner_logging_in_on_the_hosting_blade_is_in_its_leg_there_on_any_core() {
    use sipblade::proxy::route::shard_of;
    use std::net::Ipv4Addr;
    let ip = |last: u8| Ipv4Addr::new(127, 0, 19, last);
    assert_ne!(shard_of(b"1002", 2), shard_of(b"1003", 2), "cores apart");
    let cluster = TestCluster::start_in(19, 2, 10, 30, 2, &[]);
    let mut a = cluster.registered_on(S, "1001", ip(12));
    let mut b = cluster.registered_on(T, "1002", ip(13));
    let mut j = cluster.registered_on(T, "1003", ip(14));
    let mut c = cluster.registered_on(S, "1004", ip(15));
    let (mut call, _) = answered_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);
    let join = join_header(&call.call_id, CALLEE_TAG, &call.from_tag);
    let mut leg = join_answered(&mut j, &mut a, &join, "a-join");
    assert_hosted(&cluster, T, "1003", "blade-1");

    // J's phone moves to S (T keeps its old binding until the leg ends),
    // once S's cores have exchanged the leg's notices (batched for up to
    // 50 ms): J's record on S was logged out then.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let moved = cluster.registered_on(S, "1003", ip(16));
    cluster.wait_state(S, "1003", "in_call");
    let mut ring = c.call("1003");
    c.invite(&mut ring, "");
    let busy = c.response(&ring.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    c.ack_failure(&ring, &busy);
    let mut moved = moved;
    assert!(
        moved
            .next_where(std::time::Duration::from_millis(300), |_| true)
            .is_none(),
        "the moved phone is not rung"
    );

    leave(&mut j, &mut a, &mut leg, "a-join");
    cluster.wait_state(S, "1003", "ready");
    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, T, "1002");
    for i in [S, T] {
        common::wait_until("no session", || cluster.sessions(i).is_empty());
    }
}
