//! Transfers on blades of two executor cores each (SPEC §2, §5, §8; RFC
//! 3515 REFER, RFC 3891 Replaces, RFC 5589 call transfer): the transferor's
//! REFER and the transferee's NOTIFYs in a cross-blade dialog, the INVITE
//! with Replaces that completes an attended transfer, the new call of a
//! blind one, and Replaces that name no dialog; with the consultation's
//! party on the transferor's blade, on the transferee's, or on a third.
//!
//! With two cores a session lives on its callee's core, so the placement
//! of the three parties' extensions decides which cores hold the two
//! sessions of a transfer and the replacing one (which lives with the
//! session it replaces): 1001 and 1003 hash to core 1, 1002 and 1004 to
//! core 0. Each scenario runs with the sessions on one core and on both.
//!
//! Addresses: 127.0.18.x, eight per test: blades at 8k+1 to 8k+3, phones at
//! 8k+4 to 8k+8, for the k each test names (1 to 30).

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::calls::{
    CALLEE_TAG, answered_call, callee_request, caller_request, confirm, with_body,
};
use common::cluster::TestCluster;
use common::{Call, Ua, aor, first_line};
use serde_json::Value;
use sipblade::proxy::route::shard_of;
use sipblade::sip::{Message, Method};

/// Cores per blade.
const CORES: usize = 2;

/// The subnet of this file's addresses.
const SUBNET: u8 = 18;

/// Long enough to see that a message does not arrive.
const QUIET: Duration = Duration::from_millis(300);

/// The blades (S = 0, T = 1, U = 2).
const S: usize = 0;
const T: usize = 1;
const U: usize = 2;

/// `n` blades of two cores at 127.0.18.(8k+1), … with 30 s leases.
fn blades(k: u8, n: usize) -> TestCluster {
    assert!(n <= 3 && k <= 30);
    TestCluster::start_in(SUBNET, n, 8 * k + 1, 30, CORES, &[])
}

/// Phone `n` (0 to 4) of test `k`.
fn phone(k: u8, n: u8) -> Ipv4Addr {
    assert!(n < 5);
    Ipv4Addr::new(127, 0, SUBNET, 8 * k + 4 + n)
}

/// The final response `ua` gets to `method` with CSeq `seq` in `call_id`.
fn final_response(ua: &mut Ua, call_id: &str, method: Method, seq: u32) -> Message {
    ua.expect_where(&format!("a final response to {method:?} {seq}"), |m| {
        !m.is_request()
            && m.call_id() == call_id
            && m.cseq().method == method
            && m.cseq().seq == seq
            && m.status().is_some_and(|s| s >= 200)
    })
}

/// `from` sends `text` (a request with CSeq `seq` in `call_id`); `to`
/// gets it and answers `status`; `from` gets that answer.
fn exchange(from: &mut Ua, to: &mut Ua, text: &str, method: Method, seq: u32, status: u16) {
    let call_id = Message::parse(bytes::Bytes::from(text.to_owned()))
        .expect("a request of ours parses")
        .call_id()
        .to_owned();
    from.send(text);
    let got = to.request(method, &call_id);
    assert_eq!(got.cseq().seq, seq);
    assert_eq!(got.routes().count(), 0, "every blade popped its Route");
    let reason = if status == 202 { "Accepted" } else { "OK" };
    to.answer(&got, status, reason, "unused");
    let answer = final_response(from, &call_id, method, seq);
    assert_eq!(
        answer.status(),
        Some(status),
        "{} {method:?}: {}",
        from.ext,
        first_line(&answer)
    );
}

/// The transferor `a` sends the transferee `b` a REFER in their call `ab`
/// (whose INVITE `b` got as `ab_invite`), to `refer_to`; `b` accepts it
/// (202) and says so in a NOTIFY (sipfrag `100 Trying`), back through the
/// blades in the same dialog.
fn refer(a: &mut Ua, b: &mut Ua, ab: &mut Call, ab_invite: &Message, refer_to: &str) -> u32 {
    let text = caller_request(a, ab, "REFER");
    let text = with_body(
        &text,
        &format!(
            "Refer-To: <{refer_to}>\r\nReferred-By: <{}>\r\nContact: <{}>\r\n",
            aor(&a.ext),
            a.contact_uri()
        ),
        "",
        "",
    );
    exchange(a, b, &text, Method::Refer, ab.cseq, 202);
    let b_cseq = 1;
    notify(
        b,
        a,
        ab_invite,
        b_cseq,
        "active;expires=60",
        "SIP/2.0 100 Trying\r\n",
    );
    b_cseq
}

/// `b` sends `a` a NOTIFY of the refer subscription with `state` and a
/// sipfrag `body`, in the call whose INVITE `b` got as `invite`.
fn notify(b: &mut Ua, a: &mut Ua, invite: &Message, cseq: u32, state: &str, body: &str) {
    let text = with_body(
        &callee_request(b, invite, "NOTIFY", cseq),
        &format!(
            "Event: refer\r\nSubscription-State: {state}\r\nContact: <{}>\r\n",
            b.contact_uri()
        ),
        "message/sipfrag;version=2.0",
        body,
    );
    exchange(b, a, &text, Method::Notify, cseq, 200);
}

/// A phone for `ext` on `ip`, registered on member `i`, whose datagrams
/// to the blade's SIP port the kernel puts on the socket of `ext`'s own
/// core (`own`) or of the other core: its out-of-dialog requests but an
/// INVITE, and all its in-dialog ones but ACK and an INVITE, are placed
/// by the 4-tuple hash, fixed for one source port. A REGISTER shows
/// which: it reaches the agent's core directly or by a hand-over.
fn placed(cluster: &TestCluster, i: usize, ext: &str, ip: Ipv4Addr, own: bool) -> Ua {
    let handoffs = || cluster.metric(i, "sipblade_core_handoffs_total");
    for _ in 0..32 {
        let mut ua = Ua::new_at(cluster.members[i].sip, ext, ip);
        let before = handoffs();
        let ok = ua.register(3600);
        assert_eq!(ok.status(), Some(200), "{ext} registers on blade {i}");
        if (handoffs() == before) == own {
            return ua;
        }
    }
    panic!("no source port of {ip} lands on the wanted core of blade {i}");
}

/// The session of member `i` with `call_id`, if any.
fn session(cluster: &TestCluster, i: usize, call_id: &str) -> Option<Value> {
    cluster
        .sessions(i)
        .into_iter()
        .find(|s| s["call_id"] == call_id)
}

/// Asserts `ext` on member `i` is in `state` and hosted by `by` (or by
/// nobody).
fn assert_agent(cluster: &TestCluster, i: usize, ext: &str, state: &str, by: Option<&str>) {
    let agent = cluster.agent(i, ext);
    assert_eq!(agent["state"], state, "{ext} on {i}: {agent}");
    let by = by.map_or(Value::Null, |b| Value::String(b.to_owned()));
    assert_eq!(agent["hosted_by"], by, "{ext} on {i}: {agent}");
}

/// After the last call: every agent of `homes` is ready and hosted by
/// nobody on its home blade and logged out on every other, and no blade
/// holds a session.
fn assert_all_free(cluster: &TestCluster, n: usize, homes: &[(&str, usize)]) {
    for &(ext, home) in homes {
        cluster.wait_state(home, ext, "ready");
        for i in 0..n {
            if i == home {
                assert_agent(cluster, i, ext, "ready", None);
            } else {
                cluster.wait_state(i, ext, "logged_out");
                assert_agent(cluster, i, ext, "logged_out", None);
            }
        }
    }
    for i in 0..n {
        common::wait_until(&format!("no session on blade {i}"), || {
            cluster.sessions(i).is_empty()
        });
    }
}

/// Asserts that `ext`, home on `home`, is in a call that blade `by`
/// holds: `in_call` on `by`, and, when `by` is not its home, `hosted` by
/// `by` there.
fn assert_held_by(cluster: &TestCluster, ext: &str, home: usize, by: usize) {
    cluster.wait_state(by, ext, "in_call");
    assert_agent(cluster, by, ext, "in_call", None);
    if home != by {
        let id = cluster.members[by].id.clone();
        assert_agent(cluster, home, ext, "hosted", Some(&id));
    }
}

/// [`assert_held_by`] S.
fn assert_in_transfer(cluster: &TestCluster, ext: &str, home: usize) {
    assert_held_by(cluster, ext, home, S);
}

/// The parties of an attended transfer and where they live.
struct Transfer {
    k: u8,
    /// Blades in the cluster: 2, or 3 with `c_home` U.
    blades: usize,
    a: &'static str,
    b: &'static str,
    c: &'static str,
    /// C's blade (A's is S, B's T).
    c_home: usize,
    /// Whether A's, B's and C's phones send to their agents' own cores
    /// ([`placed`]).
    own: [bool; 3],
}

impl Transfer {
    /// Whether the consultation's session (and so the replacing one)
    /// lives on another core of S than the transferred call's.
    fn apart(&self) -> bool {
        shard_of(self.b.as_bytes(), CORES) != shard_of(self.c.as_bytes(), CORES)
    }
}

/// Attended transfer (RFC 5589 §7.2) with the transferor on S: A (on S)
/// calls B (on T), puts it on hold, and calls C (on `c_home`) to consult.
/// A sends B a REFER whose Refer-To carries a Replaces naming the A–C
/// dialog; B accepts it (202) and NOTIFYs `100 Trying`; B's phone sends C
/// an INVITE with that Replaces, which reaches S (the session's blade),
/// rides on the grants S already holds, and goes to C's phone; C takes it
/// and hangs up on A (RFC 3891 §3), B NOTIFYs `200 OK` and A hangs up on
/// B. Then only the B–C call is left, on S, with B (and C, when remote)
/// still hosted by S; when it ends every agent is ready on its own blade,
/// hosted by nobody, and no blade holds a session.
fn attended_transfer(t: &Transfer) {
    let cluster = blades(t.k, t.blades);
    let mut a = placed(&cluster, S, t.a, phone(t.k, 0), t.own[0]);
    let mut b = placed(&cluster, T, t.b, phone(t.k, 1), t.own[1]);
    let mut c = placed(&cluster, t.c_home, t.c, phone(t.k, 2), t.own[2]);
    let hops_ac = if t.c_home == S { 1 } else { 2 };

    let (mut ab, ab_invite) = answered_call(&mut a, &mut b, 2);
    confirm(&mut a, &mut b, &ab);
    let hold = caller_request(&a, &mut ab, "INVITE");
    exchange(&mut a, &mut b, &hold, Method::Invite, ab.cseq, 200);
    a.ack_2xx(&ab);
    b.request(Method::Ack, &ab.call_id);
    let (ac, ac_invite) = answered_call(&mut a, &mut c, hops_ac);
    confirm(&mut a, &mut c, &ac);
    cluster.wait_state(S, t.a, "in_call");
    assert_in_transfer(&cluster, t.b, T);
    assert_in_transfer(&cluster, t.c, t.c_home);

    // The REFER and its first NOTIFY, through S and T.
    let replaces = format!(
        "{}%3Bto-tag%3D{CALLEE_TAG}%3Bfrom-tag%3D{}",
        ac.call_id.replace('@', "%40"),
        ac.from_tag
    );
    let refer_to = format!("{}?Replaces={replaces}", aor(t.c));
    let mut b_cseq = refer(&mut a, &mut b, &mut ab, &ab_invite, &refer_to);

    // B's phone calls C, replacing the A–C dialog.
    let mut bc = b.call(t.c);
    let header = format!(
        "Replaces: {};to-tag={CALLEE_TAG};from-tag={}\r\nReferred-By: <{}>\r\n",
        ac.call_id,
        ac.from_tag,
        aor(t.a)
    );
    b.invite(&mut bc, &header);
    let Some(bc_invite) = c.next_where(common::WAIT, |m| m.call_id() == bc.call_id) else {
        let refused = b.response(&bc.call_id, Method::Invite);
        panic!("C's phone got no INVITE; B got {}", first_line(&refused));
    };
    assert_eq!(bc_invite.method(), Some(Method::Invite));
    assert!(
        bc_invite.header_named("Replaces").is_some(),
        "{bc_invite:?}"
    );
    assert_eq!(bc_invite.request_uri().unwrap().as_str(), c.contact_uri());
    c.answer(&bc_invite, 200, "OK", CALLEE_TAG);
    let ok = b.response(&bc.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    bc.learn(&ok);
    confirm(&mut b, &mut c, &bc);
    assert_eq!(cluster.metric(S, "sipblade_replaces_total"), 1.0);
    assert!(session(&cluster, S, &bc.call_id).is_some());

    // C's phone ends the replaced dialog; the transfer is reported; A
    // hangs up the held call.
    let bye = callee_request(&c, &ac_invite, "BYE", 1);
    exchange(&mut c, &mut a, &bye, Method::Bye, 1, 200);
    b_cseq += 1;
    notify(
        &mut b,
        &mut a,
        &ab_invite,
        b_cseq,
        "terminated;reason=noresource",
        "SIP/2.0 200 OK\r\n",
    );
    let bye = caller_request(&a, &mut ab, "BYE");
    exchange(&mut a, &mut b, &bye, Method::Bye, ab.cseq, 200);

    cluster.wait_state(S, t.a, "ready");
    assert_agent(&cluster, S, t.a, "ready", None);
    common::wait_until("only the B–C session on S", || {
        let sessions = cluster.sessions(S);
        sessions.len() == 1 && sessions[0]["call_id"] == bc.call_id.as_str()
    });
    let new = session(&cluster, S, &bc.call_id).expect("the B–C session");
    assert_eq!(new["agents"], serde_json::json!([t.b, t.c]), "{new}");
    for i in 1..t.blades {
        assert!(
            cluster.sessions(i).is_empty(),
            "blade {i}: {:?}",
            cluster.sessions(i)
        );
    }
    assert_in_transfer(&cluster, t.b, T);
    assert_in_transfer(&cluster, t.c, t.c_home);

    // A re-INVITE each way in the new call, then C hangs up.
    let reinvite = caller_request(&b, &mut bc, "INVITE");
    exchange(&mut b, &mut c, &reinvite, Method::Invite, bc.cseq, 200);
    b.ack_2xx(&bc);
    c.request(Method::Ack, &bc.call_id);
    let reinvite = callee_request(&c, &bc_invite, "INVITE", 1);
    exchange(&mut c, &mut b, &reinvite, Method::Invite, 1, 200);
    c.send(callee_request(&c, &bc_invite, "ACK", 1));
    b.request(Method::Ack, &bc.call_id);
    let bye = callee_request(&c, &bc_invite, "BYE", 2);
    exchange(&mut c, &mut b, &bye, Method::Bye, 2, 200);

    assert_all_free(&cluster, t.blades, &[(t.a, S), (t.b, T), (t.c, t.c_home)]);
    // Nothing stray reached a phone: no BYE of the blades' own, no
    // retransmitted request left unanswered.
    for ua in [&mut a, &mut b, &mut c] {
        let stray = ua.collect_where(QUIET, Message::is_request);
        assert!(stray.is_empty(), "{}: {stray:?}", ua.ext);
    }
}

/// C on S with A: the consultation is local, the transferred call and
/// the replacing one cross-blade. The sessions on different cores of S.
#[test]
fn attended_transfer_to_a_party_on_the_transferors_blade_sessions_apart() {
    let t = Transfer {
        k: 1,
        blades: 2,
        a: "1001",
        b: "1002",
        c: "1003",
        c_home: S,
        own: [true, true, true],
    };
    assert!(t.apart());
    attended_transfer(&t);
}

/// As above, with both sessions on core 0 of S.
#[test]
fn attended_transfer_to_a_party_on_the_transferors_blade_sessions_together() {
    let t = Transfer {
        k: 2,
        blades: 2,
        a: "1001",
        b: "1002",
        c: "1004",
        c_home: S,
        own: [false, false, false],
    };
    assert!(!t.apart());
    attended_transfer(&t);
}

/// C on T with B: S hosts both; the sessions on different cores of S
/// and B's and C's grants on different cores of T.
#[test]
fn attended_transfer_to_a_party_on_the_transferees_blade_sessions_apart() {
    let t = Transfer {
        k: 3,
        blades: 2,
        a: "1004",
        b: "1002",
        c: "1003",
        c_home: T,
        own: [true, false, true],
    };
    assert!(t.apart());
    attended_transfer(&t);
}

/// As above, with both sessions (and grants) on core 1.
#[test]
fn attended_transfer_to_a_party_on_the_transferees_blade_sessions_together() {
    let t = Transfer {
        k: 4,
        blades: 2,
        a: "1002",
        b: "1001",
        c: "1003",
        c_home: T,
        own: [false, true, false],
    };
    assert!(!t.apart());
    attended_transfer(&t);
}

/// C on a third blade U: B's Replaces goes T → U (C's blade) → S (which
/// hosts C) → U → C. The sessions on different cores of S.
#[test]
fn attended_transfer_to_a_party_on_a_third_blade_sessions_apart() {
    let t = Transfer {
        k: 5,
        blades: 3,
        a: "1001",
        b: "1002",
        c: "1003",
        c_home: U,
        own: [false, true, true],
    };
    assert!(t.apart());
    attended_transfer(&t);
}

/// As above, with both sessions on core 0 of S.
#[test]
fn attended_transfer_to_a_party_on_a_third_blade_sessions_together() {
    let t = Transfer {
        k: 6,
        blades: 3,
        a: "1003",
        b: "1002",
        c: "1004",
        c_home: U,
        own: [true, false, false],
    };
    assert!(!t.apart());
    attended_transfer(&t);
}

/// Blind transfer (RFC 5589 §6) with the transferor on S: A (on S) calls
/// B (on T); A sends B a REFER to C (on `c_home`, no Replaces); B accepts
/// it (202), NOTIFYs `100 Trying` back through T and S, and calls C: a new
/// call B's blade T places (and hosts C for, when C is elsewhere) though
/// S still hosts B for the first call. C answers, B NOTIFYs `200 OK`, A
/// hangs up on B. Then B is in its call with C, on T; when it ends every
/// agent is ready on its own blade and no blade holds a session.
/// `own`: whether A's, B's and C's phones send to their agents' own
/// cores ([`placed`]). `hang_up_first`: A hangs up as soon as B has
/// accepted the REFER, before B calls C, and B's last NOTIFY comes after.
fn blind_transfer(
    k: u8,
    blades_n: usize,
    exts: [&str; 3],
    c_home: usize,
    own: [bool; 3],
    hang_up_first: bool,
) {
    let [a_ext, b_ext, c_ext] = exts;
    let cluster = blades(k, blades_n);
    let mut a = placed(&cluster, S, a_ext, phone(k, 0), own[0]);
    let mut b = placed(&cluster, T, b_ext, phone(k, 1), own[1]);
    let mut c = placed(&cluster, c_home, c_ext, phone(k, 2), own[2]);
    let (mut ab, ab_invite) = answered_call(&mut a, &mut b, 2);
    confirm(&mut a, &mut b, &ab);
    cluster.wait_state(S, a_ext, "in_call");
    assert_in_transfer(&cluster, b_ext, T);

    let mut b_cseq = refer(&mut a, &mut b, &mut ab, &ab_invite, &aor(c_ext));
    if hang_up_first {
        let bye = caller_request(&a, &mut ab, "BYE");
        exchange(&mut a, &mut b, &bye, Method::Bye, ab.cseq, 200);
    }
    let hops_bc = if c_home == T { 1 } else { 2 };
    let (mut bc, bc_invite) = answered_call(&mut b, &mut c, hops_bc);
    confirm(&mut b, &mut c, &bc);
    // The refer subscription outlives the call it was sent in (RFC 6665
    // §4.5.2): its last NOTIFY still follows the route set.
    b_cseq += 1;
    notify(
        &mut b,
        &mut a,
        &ab_invite,
        b_cseq,
        "terminated;reason=noresource",
        "SIP/2.0 200 OK\r\n",
    );
    if !hang_up_first {
        let bye = caller_request(&a, &mut ab, "BYE");
        exchange(&mut a, &mut b, &bye, Method::Bye, ab.cseq, 200);
    }

    // B is in its own call on T now, not hosted; C too (hosted by T when
    // it is elsewhere).
    cluster.wait_state(S, a_ext, "ready");
    cluster.wait_state(T, b_ext, "in_call");
    common::wait_until("S lets B go", || {
        cluster.agent(S, b_ext)["state"] == "logged_out"
    });
    assert_agent(&cluster, T, b_ext, "in_call", None);
    if c_home == T {
        cluster.wait_state(T, c_ext, "in_call");
    } else {
        assert_agent(&cluster, c_home, c_ext, "hosted", Some("blade-2"));
        assert_agent(&cluster, T, c_ext, "in_call", None);
    }
    common::wait_until("S holds no session", || cluster.sessions(S).is_empty());
    let sessions = cluster.sessions(T);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["call_id"], bc.call_id.as_str());
    // A call to B meanwhile is busy.
    let mut late = a.call(b_ext);
    a.invite(&mut late, "");
    let busy = a.response(&late.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    a.ack_failure(&late, &busy);

    // C hangs up.
    let bye = callee_request(&c, &bc_invite, "BYE", 1);
    exchange(&mut c, &mut b, &bye, Method::Bye, 1, 200);
    let _ = &mut bc;
    assert_all_free(
        &cluster,
        blades_n,
        &[(a_ext, S), (b_ext, T), (c_ext, c_home)],
    );
}

/// C on S: T hosts C from the blade that hosts B.
#[test]
fn blind_transfer_to_a_party_on_the_transferors_blade() {
    blind_transfer(
        7,
        2,
        ["1001", "1002", "1003"],
        S,
        [true, false, false],
        false,
    );
}

/// C on T with B: a local call on T; A hangs up before it.
#[test]
fn blind_transfer_to_a_party_on_the_transferees_blade() {
    blind_transfer(8, 2, ["1001", "1002", "1004"], T, [false, true, true], true);
}

/// C on a third blade U, hosted by T; A hangs up before B calls C.
#[test]
fn blind_transfer_to_a_party_on_a_third_blade() {
    blind_transfer(9, 3, ["1004", "1001", "1002"], U, [true, true, false], true);
}

/// `b` sends an INVITE to `to` with `replaces` (a Replaces header value);
/// it is answered 481 (by `answering`'s phone when given, else by a
/// blade) and `b` ACKs it.
fn replaces_refused(b: &mut Ua, to: &str, replaces: &str, answering: Option<&mut Ua>) {
    let mut call = b.call(to);
    b.invite(&mut call, &format!("Replaces: {replaces}\r\n"));
    if let Some(phone) = answering {
        let invite = phone.request(Method::Invite, &call.call_id);
        assert!(invite.header_named("Replaces").is_some());
        phone.answer(&invite, 481, "Call/Transaction Does Not Exist", "nope");
        phone.request(Method::Ack, &call.call_id);
    }
    let refused = b.response(&call.call_id, Method::Invite);
    assert_eq!(refused.status(), Some(481), "{}", first_line(&refused));
    b.ack_failure(&call, &refused);
}

/// RFC 3891 §3 on blades of two cores: A (1001, on S) is in calls with C
/// (1003, on T: the session on S's core 1) and D (1004, on T: core 0).
/// B (1002, on T) sends INVITEs with Replaces that name no dialog of
/// their targets': wrong tags, an unknown Call-ID, the other call, a call
/// already hung up. Each is answered 481 by the blades (its target is in a
/// call), no phone rings, and nothing changes: A, C and D stay in their
/// calls (C and D hosted by S), B ready, the same two sessions on S. Once
/// D's call has ended, a Replaces to D (ready) goes to its phone, which
/// answers 481. When the calls end everyone is ready and no session is
/// left, and no Replaces was counted.
#[test]
fn replaces_naming_no_dialog_is_481_and_changes_nothing() {
    let k = 10;
    let cluster = blades(k, 2);
    let mut a = cluster.registered_on(S, "1001", phone(k, 0));
    let mut b = cluster.registered_on(T, "1002", phone(k, 1));
    let mut c = cluster.registered_on(T, "1003", phone(k, 2));
    let mut d = cluster.registered_on(T, "1004", phone(k, 3));
    let (mut ac, _) = answered_call(&mut a, &mut c, 2);
    confirm(&mut a, &mut c, &ac);
    let (mut ad, _) = answered_call(&mut a, &mut d, 2);
    confirm(&mut a, &mut d, &ad);
    let sessions_before = cluster.sessions(S).len();
    assert_eq!(sessions_before, 2);

    let steady = |cluster: &TestCluster| {
        cluster.wait_state(S, "1001", "in_call");
        assert_in_transfer(cluster, "1003", T);
        assert_in_transfer(cluster, "1004", T);
        assert_agent(cluster, T, "1002", "ready", None);
        assert_eq!(cluster.sessions(S).len(), 2, "{:?}", cluster.sessions(S));
        assert!(cluster.sessions(T).is_empty(), "{:?}", cluster.sessions(T));
    };
    for (to, call) in [("1003", &ac), ("1004", &ad)] {
        let other = if to == "1003" { &ad } else { &ac };
        for replaces in [
            format!("{};to-tag=wrong;from-tag={}", call.call_id, call.from_tag),
            format!("{};to-tag={CALLEE_TAG};from-tag=wrong", call.call_id),
            format!(
                "no-such-call@test;to-tag={CALLEE_TAG};from-tag={}",
                call.from_tag
            ),
            format!(
                "{};to-tag={CALLEE_TAG};from-tag={}",
                other.call_id, other.from_tag
            ),
        ] {
            replaces_refused(&mut b, to, &replaces, None);
            steady(&cluster);
        }
    }
    for ua in [&mut c, &mut d] {
        let rung = ua.collect_where(QUIET, Message::is_request);
        assert!(rung.is_empty(), "{}: {rung:?}", ua.ext);
    }

    // D's call ends: a Replaces naming it, to C (in a call), is 481 from
    // the blades; to D (ready), from D's phone.
    common::calls::hang_up(&mut a, &mut d, &mut ad);
    cluster.wait_state(T, "1004", "ready");
    let dead = format!(
        "{};to-tag={CALLEE_TAG};from-tag={}",
        ad.call_id, ad.from_tag
    );
    replaces_refused(&mut b, "1003", &dead, None);
    replaces_refused(&mut b, "1004", &dead, Some(&mut d));
    assert_agent(&cluster, T, "1004", "ready", None);
    assert_agent(&cluster, T, "1002", "ready", None);
    assert_in_transfer(&cluster, "1003", T);
    common::wait_until("one session on S", || cluster.sessions(S).len() == 1);

    common::calls::hang_up(&mut a, &mut c, &mut ac);
    assert_all_free(
        &cluster,
        2,
        &[("1001", S), ("1002", T), ("1003", T), ("1004", T)],
    );
    assert_eq!(cluster.metric(S, "sipblade_replaces_total"), 0.0);
    assert_eq!(cluster.metric(T, "sipblade_replaces_total"), 0.0);
}

/// Attended transfer by the callee (RFC 5589 §7.2, as `tests/dialog.rs`
/// runs it on one blade): A (on S) calls B (on T); B puts A on hold and
/// calls C (on `c_home`) from T, which holds that session (hosting C
/// when it is elsewhere) while S hosts B. B sends A a REFER whose
/// Refer-To carries a Replaces naming the B–C dialog; A accepts it and
/// NOTIFYs `100 Trying`; A's phone sends C the INVITE with Replaces, which
/// reaches T (the session's blade), where A is hosted though it is still
/// in its call with B on S. C takes it and hangs up on B, A NOTIFYs `200
/// OK`, B hangs up on A. Then only the A–C call is left, on T, with A
/// (and C, when remote) hosted by T; when it ends every agent is ready on
/// its own blade, hosted by nobody, and no blade holds a session.
fn attended_transfer_by_the_callee(t: &Transfer) {
    let cluster = blades(t.k, t.blades);
    let mut a = placed(&cluster, S, t.a, phone(t.k, 0), t.own[0]);
    let mut b = placed(&cluster, T, t.b, phone(t.k, 1), t.own[1]);
    let mut c = placed(&cluster, t.c_home, t.c, phone(t.k, 2), t.own[2]);
    let hops_bc = if t.c_home == T { 1 } else { 2 };

    let (mut ab, ab_invite) = answered_call(&mut a, &mut b, 2);
    confirm(&mut a, &mut b, &ab);
    let mut b_cseq = 1;
    let hold = callee_request(&b, &ab_invite, "INVITE", b_cseq);
    exchange(&mut b, &mut a, &hold, Method::Invite, b_cseq, 200);
    b.send(callee_request(&b, &ab_invite, "ACK", b_cseq));
    a.request(Method::Ack, &ab.call_id);
    let (bc, bc_invite) = answered_call(&mut b, &mut c, hops_bc);
    confirm(&mut b, &mut c, &bc);
    assert_in_transfer(&cluster, t.a, S);
    assert_in_transfer(&cluster, t.b, T);
    assert_held_by(&cluster, t.c, t.c_home, T);

    // B's REFER, and A's first NOTIFY, through T and S.
    let replaces = format!(
        "{}%3Bto-tag%3D{CALLEE_TAG}%3Bfrom-tag%3D{}",
        bc.call_id.replace('@', "%40"),
        bc.from_tag
    );
    b_cseq += 1;
    let refer = with_body(
        &callee_request(&b, &ab_invite, "REFER", b_cseq),
        &format!(
            "Refer-To: <{}?Replaces={replaces}>\r\nReferred-By: <{}>\r\nContact: <{}>\r\n",
            aor(t.c),
            aor(t.b),
            b.contact_uri()
        ),
        "",
        "",
    );
    exchange(&mut b, &mut a, &refer, Method::Refer, b_cseq, 202);
    let a_notify = |a: &Ua, ab: &mut Call, state: &str, frag: &str| {
        with_body(
            &caller_request(a, ab, "NOTIFY"),
            &format!(
                "Event: refer\r\nSubscription-State: {state}\r\nContact: <{}>\r\n",
                a.contact_uri()
            ),
            "message/sipfrag;version=2.0",
            frag,
        )
    };
    let notify = a_notify(&a, &mut ab, "active;expires=60", "SIP/2.0 100 Trying\r\n");
    exchange(&mut a, &mut b, &notify, Method::Notify, ab.cseq, 200);

    // A's phone calls C, replacing the B–C dialog.
    let mut ac = a.call(t.c);
    let header = format!(
        "Replaces: {};to-tag={CALLEE_TAG};from-tag={}\r\nReferred-By: <{}>\r\n",
        bc.call_id,
        bc.from_tag,
        aor(t.b)
    );
    a.invite(&mut ac, &header);
    let Some(ac_invite) = c.next_where(common::WAIT, |m| m.call_id() == ac.call_id) else {
        let refused = a.response(&ac.call_id, Method::Invite);
        panic!("C's phone got no INVITE; A got {}", first_line(&refused));
    };
    assert_eq!(ac_invite.method(), Some(Method::Invite));
    assert!(
        ac_invite.header_named("Replaces").is_some(),
        "{ac_invite:?}"
    );
    c.answer(&ac_invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&ac.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    ac.learn(&ok);
    confirm(&mut a, &mut c, &ac);
    assert_eq!(cluster.metric(T, "sipblade_replaces_total"), 1.0);

    // C's phone ends the replaced dialog; A reports; B hangs up on A.
    let bye = callee_request(&c, &bc_invite, "BYE", 1);
    exchange(&mut c, &mut b, &bye, Method::Bye, 1, 200);
    let notify = a_notify(
        &a,
        &mut ab,
        "terminated;reason=noresource",
        "SIP/2.0 200 OK\r\n",
    );
    exchange(&mut a, &mut b, &notify, Method::Notify, ab.cseq, 200);
    b_cseq += 1;
    let bye = callee_request(&b, &ab_invite, "BYE", b_cseq);
    exchange(&mut b, &mut a, &bye, Method::Bye, b_cseq, 200);

    cluster.wait_state(T, t.b, "ready");
    assert_agent(&cluster, T, t.b, "ready", None);
    common::wait_until("only the A–C session on T", || {
        let sessions = cluster.sessions(T);
        sessions.len() == 1 && sessions[0]["call_id"] == ac.call_id.as_str()
    });
    for i in (0..t.blades).filter(|&i| i != T) {
        common::wait_until(&format!("no session on blade {i}"), || {
            cluster.sessions(i).is_empty()
        });
    }
    assert_held_by(&cluster, t.a, S, T);
    assert_held_by(&cluster, t.c, t.c_home, T);

    // A hangs up.
    let bye = caller_request(&a, &mut ac, "BYE");
    exchange(&mut a, &mut c, &bye, Method::Bye, ac.cseq, 200);
    assert_all_free(&cluster, t.blades, &[(t.a, S), (t.b, T), (t.c, t.c_home)]);
    for ua in [&mut a, &mut b, &mut c] {
        let stray = ua.collect_where(QUIET, Message::is_request);
        assert!(stray.is_empty(), "{}: {stray:?}", ua.ext);
    }
}

/// C on S with A: T hosts C for B's consultation, and A for the new call.
#[test]
fn attended_transfer_by_the_callee_to_a_party_on_the_transferees_blade() {
    attended_transfer_by_the_callee(&Transfer {
        k: 11,
        blades: 2,
        a: "1001",
        b: "1002",
        c: "1003",
        c_home: S,
        own: [true, false, false],
    });
}

/// C on T with B: a local consultation on T.
#[test]
fn attended_transfer_by_the_callee_to_a_party_on_its_own_blade() {
    attended_transfer_by_the_callee(&Transfer {
        k: 12,
        blades: 2,
        a: "1004",
        b: "1001",
        c: "1002",
        c_home: T,
        own: [false, true, false],
    });
}

/// C on a third blade U, hosted by T.
#[test]
fn attended_transfer_by_the_callee_to_a_party_on_a_third_blade() {
    attended_transfer_by_the_callee(&Transfer {
        k: 13,
        blades: 3,
        a: "1002",
        b: "1003",
        c: "1004",
        c_home: U,
        own: [true, true, true],
    });
}

/// The response `status` to the dialog-forming `req` as a UAS with
/// `contact` sends it: Via, From, To (with `tag` added), Call-ID, CSeq and
/// Record-Route copied (RFC 3261 §12.1.1).
fn answer_as(ua: &Ua, req: &Message, status: u16, reason: &str, tag: &str, contact: &str) {
    let mut text = format!("SIP/2.0 {status} {reason}\r\n");
    for h in req.headers() {
        let value = String::from_utf8_lossy(h.value);
        match h.kind {
            sipblade::sip::HeaderName::Via => text += &format!("Via: {value}\r\n"),
            sipblade::sip::HeaderName::From => text += &format!("From: {value}\r\n"),
            sipblade::sip::HeaderName::CallId => text += &format!("Call-ID: {value}\r\n"),
            sipblade::sip::HeaderName::CSeq => text += &format!("CSeq: {value}\r\n"),
            sipblade::sip::HeaderName::RecordRoute => {
                text += &format!("Record-Route: {value}\r\n");
            }
            sipblade::sip::HeaderName::To => text += &format!("To: {value};tag={tag}\r\n"),
            _ => {}
        }
    }
    text += &format!("Contact: <{contact}>\r\nContent-Length: 0\r\n\r\n");
    ua.send(text);
}

/// A phone for `ext` on member `i` at `ip` whose registered Contact names
/// the agent's badge (`sip:A<ext>@…`), as a phone that logs in with its
/// badge (the digest username may be) writes it; returns it and that
/// Contact.
fn badge_phone(cluster: &TestCluster, i: usize, ext: &str, ip: Ipv4Addr) -> (Ua, String) {
    let mut ua = Ua::new_at(cluster.members[i].sip, ext, ip);
    let contact = format!("sip:A{ext}@{}", ua.addr);
    let (ok, _) = ua.register_as(
        &format!("Contact: <{contact}>\r\nExpires: 3600\r\n"),
        &common::password(ext),
    );
    assert_eq!(ok.status(), Some(200), "{ext} registers");
    (ua, contact)
}

/// `callee` takes the call `caller` places with `call` (through `hops`
/// blades), answering from `contact`; the call is confirmed, its ACK
/// reaching the callee. Returns the INVITE as the callee got it.
fn answered_at(caller: &mut Ua, callee: &mut Ua, contact: &str, call: &mut Call) -> Message {
    caller.invite(call, "");
    let invite = callee.request(Method::Invite, &call.call_id);
    assert_eq!(invite.request_uri().unwrap().as_str(), contact);
    answer_as(callee, &invite, 200, "OK", CALLEE_TAG, contact);
    let ok = caller.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    confirm(caller, callee, call);
    invite
}

/// Blind transfer across blades of two cores whose transferee's and
/// target's phones registered Contacts that name their badges, not their
/// extensions: A (1001, on S) calls B (1002, on T), REFERs it to C (1003,
/// on S), B calls C. Every in-dialog request (ACK, REFER, NOTIFY, BYE) is
/// sent to such a Contact by a blade that finds it no agent's by its
/// user part: T for B's, S for C's. Each reaches the phone, as the route
/// checks let a request go to an agent's registered terminal (the ACK
/// was dropped, the rest refused 403 as routed outside the cluster).
#[test]
fn a_transfer_reaches_phones_whose_contacts_name_their_badges() {
    let k = 14;
    let cluster = blades(k, 2);
    let mut a = placed(&cluster, S, "1001", phone(k, 0), false);
    let (mut b, b_contact) = badge_phone(&cluster, T, "1002", phone(k, 1));
    let (mut c, c_contact) = badge_phone(&cluster, S, "1003", phone(k, 2));
    let mut ab = a.call("1002");
    let ab_invite = answered_at(&mut a, &mut b, &b_contact, &mut ab);
    assert_in_transfer(&cluster, "1002", T);

    let mut b_cseq = refer(&mut a, &mut b, &mut ab, &ab_invite, &aor("1003"));
    let mut bc = b.call("1003");
    let bc_invite = answered_at(&mut b, &mut c, &c_contact, &mut bc);
    b_cseq += 1;
    notify(
        &mut b,
        &mut a,
        &ab_invite,
        b_cseq,
        "terminated;reason=noresource",
        "SIP/2.0 200 OK\r\n",
    );
    let bye = caller_request(&a, &mut ab, "BYE");
    exchange(&mut a, &mut b, &bye, Method::Bye, ab.cseq, 200);
    assert_held_by(&cluster, "1003", S, T);

    let info = caller_request(&b, &mut bc, "INFO");
    exchange(&mut b, &mut c, &info, Method::Info, bc.cseq, 200);
    let bye = callee_request(&c, &bc_invite, "BYE", 1);
    exchange(&mut c, &mut b, &bye, Method::Bye, 1, 200);
    assert_all_free(&cluster, 2, &[("1001", S), ("1002", T), ("1003", S)]);
}

/// A conference made by REFER (RFC 5589 style, with a Join, RFC 3911):
/// A (on S) talks to B (on T, hosted by S) and calls C (on `c_home`);
/// A sends C a REFER whose Refer-To names the A–B call's party (B, or A
/// itself with `at_caller`) with a Join of that call; C accepts it and
/// NOTIFYs `100 Trying`; C's phone sends the Join INVITE, which reaches
/// the session's core of S (from the target's core, when the target is
/// A), and the target's phone takes it. C NOTIFYs `200 OK` and A hangs
/// up their consultation. S's session lists all three; the party the join
/// leg does not connect hangs up the call, and leaves; C hangs up the
/// leg: every agent is ready on its own blade, and no session is left.
fn conference_by_refer(t: &Transfer, at_caller: bool) {
    let cluster = blades(t.k, t.blades);
    let mut a = placed(&cluster, S, t.a, phone(t.k, 0), t.own[0]);
    let mut b = placed(&cluster, T, t.b, phone(t.k, 1), t.own[1]);
    let mut c = placed(&cluster, t.c_home, t.c, phone(t.k, 2), t.own[2]);
    let hops_ac = if t.c_home == S { 1 } else { 2 };
    let (mut ab, ab_invite) = answered_call(&mut a, &mut b, 2);
    confirm(&mut a, &mut b, &ab);
    let (mut ac, ac_invite) = answered_call(&mut a, &mut c, hops_ac);
    confirm(&mut a, &mut c, &ac);

    // The join names the A–B dialog as its target sees it: the local tag
    // as the to-tag (either order is taken).
    let (target, to_tag, from_tag) = if at_caller {
        (t.a, ab.from_tag.as_str(), CALLEE_TAG)
    } else {
        (t.b, CALLEE_TAG, ab.from_tag.as_str())
    };
    let refer_to = format!(
        "{}?Join={}%3Bto-tag%3D{to_tag}%3Bfrom-tag%3D{from_tag}",
        aor(target),
        ab.call_id.replace('@', "%40"),
    );
    let mut c_cseq = refer(&mut a, &mut c, &mut ac, &ac_invite, &refer_to);

    let mut leg = c.call(target);
    c.invite(
        &mut leg,
        &format!(
            "Join: {};to-tag={to_tag};from-tag={from_tag}\r\n",
            ab.call_id
        ),
    );
    let (joined, leg_tag) = if at_caller {
        (&mut a, "a-join")
    } else {
        (&mut b, "b-join")
    };
    let Some(join) = joined.next_where(common::WAIT, |m| m.call_id() == leg.call_id) else {
        let refused = c.response(&leg.call_id, Method::Invite);
        panic!("the target got no Join; C got {}", first_line(&refused));
    };
    assert_eq!(join.method(), Some(Method::Invite));
    assert!(join.header_named("Join").is_some(), "{join:?}");
    joined.answer(&join, 200, "OK", leg_tag);
    let ok = c.response(&leg.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    leg.learn(&ok);
    c.ack_2xx(&leg);
    joined.request(Method::Ack, &leg.call_id);
    assert_eq!(cluster.metric(S, "sipblade_joins_total"), 1.0);

    c_cseq += 1;
    notify(
        &mut c,
        &mut a,
        &ac_invite,
        c_cseq,
        "terminated;reason=noresource",
        "SIP/2.0 200 OK\r\n",
    );
    let bye = caller_request(&a, &mut ac, "BYE");
    exchange(&mut a, &mut c, &bye, Method::Bye, ac.cseq, 200);
    common::wait_until("one session on S, of all three", || {
        let sessions = cluster.sessions(S);
        sessions.len() == 1
            && sessions[0]["agents"]
                .as_array()
                .is_some_and(|a| a.len() == 3)
    });
    for i in 1..t.blades {
        assert!(cluster.sessions(i).is_empty(), "blade {i}");
    }
    assert_in_transfer(&cluster, t.a, S);
    assert_in_transfer(&cluster, t.b, T);
    assert_in_transfer(&cluster, t.c, t.c_home);

    // The party the leg does not connect hangs up the call and leaves.
    let (left, left_home) = if at_caller {
        let bye = callee_request(&b, &ab_invite, "BYE", 1);
        exchange(&mut b, &mut a, &bye, Method::Bye, 1, 200);
        (t.b, T)
    } else {
        let bye = caller_request(&a, &mut ab, "BYE");
        exchange(&mut a, &mut b, &bye, Method::Bye, ab.cseq, 200);
        (t.a, S)
    };
    cluster.wait_state(left_home, left, "ready");
    assert_agent(&cluster, left_home, left, "ready", None);
    let (stays, stays_home) = if at_caller { (t.a, S) } else { (t.b, T) };
    assert_in_transfer(&cluster, stays, stays_home);
    assert_in_transfer(&cluster, t.c, t.c_home);

    // C hangs up the leg.
    let bye = caller_request(&c, &mut leg, "BYE");
    let joined = if at_caller { &mut a } else { &mut b };
    exchange(&mut c, joined, &bye, Method::Bye, leg.cseq, 200);
    assert_all_free(&cluster, t.blades, &[(t.a, S), (t.b, T), (t.c, t.c_home)]);
}

/// C on a third blade joins B: S hosts C, already hosted for the
/// consultation, for the leg too.
#[test]
fn conference_by_refer_joining_the_callee_from_a_third_blade() {
    conference_by_refer(
        &Transfer {
            k: 15,
            blades: 3,
            a: "1001",
            b: "1002",
            c: "1003",
            c_home: U,
            own: [false, true, false],
        },
        false,
    );
}

/// C on T joins A, the caller, whose core on S is not the session's: the
/// Join reaches A's core and is handed to B's.
#[test]
fn conference_by_refer_joining_the_caller_on_another_core() {
    let t = Transfer {
        k: 16,
        blades: 2,
        a: "1001",
        b: "1002",
        c: "1004",
        c_home: T,
        own: [true, false, true],
    };
    assert_ne!(
        shard_of(t.a.as_bytes(), CORES),
        shard_of(t.b.as_bytes(), CORES)
    );
    conference_by_refer(&t, true);
}

/// C on S joins A: a local joiner; A's core is the session's (0).
#[test]
fn conference_by_refer_joining_the_caller_from_its_own_blade() {
    let t = Transfer {
        k: 17,
        blades: 2,
        a: "1002",
        b: "1004",
        c: "1001",
        c_home: S,
        own: [false, false, true],
    };
    assert_eq!(
        shard_of(t.a.as_bytes(), CORES),
        shard_of(t.b.as_bytes(), CORES)
    );
    conference_by_refer(&t, true);
}

/// Out-of-dialog REFER (RFC 3515 §2.4.7 allows one outside the call it
/// concerns; a transferor may send it with Target-Dialog, RFC 4538): A
/// (1001, on S) talks to B (1002, on T, hosted by S) and sends B a REFER
/// of its own, which S relays to T with T's leave and record-routes, as
/// does T; B accepts it (202) from a Contact of its own and NOTIFYs `100
/// Trying` and `200 OK` back along that route set to A's phone. Then A
/// REFERs D (1004, on a third blade U, in no call) the same way. Nothing
/// changes: B stays hosted in the one session, and when A hangs up
/// everyone is ready.
#[test]
fn an_out_of_dialog_refer_and_its_notifies_pass_between_blades_of_two_cores() {
    let k = 18;
    let cluster = blades(k, 3);
    let mut a = placed(&cluster, S, "1001", phone(k, 0), true);
    let mut b = placed(&cluster, T, "1002", phone(k, 1), false);
    let mut d = placed(&cluster, U, "1004", phone(k, 2), false);
    let (mut ab, _) = answered_call(&mut a, &mut b, 2);
    confirm(&mut a, &mut b, &ab);

    for to in [&mut b, &mut d] {
        let call_id = format!("refer-{}@test", common::unique());
        let text = format!(
            "REFER {uri} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: <{from}>;tag=r{n}\r\n\
             To: <{uri}>\r\nCall-ID: {call_id}\r\nCSeq: 1 REFER\r\nContact: <{contact}>\r\n\
             Refer-To: <{target}>\r\nTarget-Dialog: {dialog};local-tag={local};remote-tag={CALLEE_TAG}\r\n\
             Content-Length: 0\r\n\r\n",
            uri = aor(&to.ext),
            via = a.via(&common::branch()),
            from = aor("1001"),
            n = common::unique(),
            contact = a.contact_uri(),
            target = aor("1003"),
            dialog = ab.call_id,
            local = ab.from_tag,
        );
        a.send(&text);
        let refer = to.request(Method::Refer, &call_id);
        assert_eq!(refer.record_routes().count(), 2, "{refer:?}");
        answer_as(to, &refer, 202, "Accepted", CALLEE_TAG, &to.contact_uri());
        let accepted = final_response(&mut a, &call_id, Method::Refer, 1);
        assert_eq!(accepted.status(), Some(202), "{}", first_line(&accepted));
        assert_eq!(accepted.record_routes().count(), 2);
        for (cseq, state, frag) in [
            (1, "active;expires=60", "SIP/2.0 100 Trying\r\n"),
            (2, "terminated;reason=noresource", "SIP/2.0 200 OK\r\n"),
        ] {
            notify(to, &mut a, &refer, cseq, state, frag);
        }
    }
    assert_eq!(cluster.sessions(S).len(), 1);
    assert_in_transfer(&cluster, "1002", T);
    assert_agent(&cluster, U, "1004", "ready", None);
    let bye = caller_request(&a, &mut ab, "BYE");
    exchange(&mut a, &mut b, &bye, Method::Bye, ab.cseq, 200);
    assert_all_free(&cluster, 3, &[("1001", S), ("1002", T), ("1004", U)]);
}

/// Call pickup across blades of two cores (RFC 3891 with an early
/// dialog): A (1001, on S, core 1) calls B (1002, on T), which rings; C
/// (on `c_home`) sends A an INVITE replacing that ringing call, named as A
/// sees it. It reaches A's core of S, which hands it to the session's
/// (B's, core 0), and S hosts C for the new call. A takes it and cancels
/// its INVITE to B: B is ready again on T, A and C talk (C hosted by S);
/// when C hangs up everyone is ready and no session is left.
fn pickup_across_blades(k: u8, blades_n: usize, c_ext: &str, c_home: usize) {
    let cluster = blades(k, blades_n);
    let mut a = placed(&cluster, S, "1001", phone(k, 0), false);
    let mut b = placed(&cluster, T, "1002", phone(k, 1), true);
    let mut c = placed(&cluster, c_home, c_ext, phone(k, 2), false);
    let mut ab = a.call("1002");
    a.invite(&mut ab, "");
    let b_invite = b.request(Method::Invite, &ab.call_id);
    b.answer(&b_invite, 180, "Ringing", CALLEE_TAG);
    let ringing = a.response(&ab.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180), "{}", first_line(&ringing));
    assert_in_transfer(&cluster, "1001", S);

    let mut ca = c.call("1001");
    let replaces = format!(
        "Replaces: {};to-tag={};from-tag={CALLEE_TAG}\r\n",
        ab.call_id, ab.from_tag
    );
    c.invite(&mut ca, &replaces);
    let Some(a_invite) = a.next_where(common::WAIT, |m| m.call_id() == ca.call_id) else {
        let refused = c.response(&ca.call_id, Method::Invite);
        panic!("A's phone got no INVITE; C got {}", first_line(&refused));
    };
    assert!(a_invite.header_named("Replaces").is_some(), "{a_invite:?}");
    a.answer(&a_invite, 200, "OK", "a-picked");
    let ok = c.response(&ca.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    ca.learn(&ok);
    confirm(&mut c, &mut a, &ca);

    // A's phone cancels its INVITE to B, as the Replaces asks.
    a.cancel(&ab);
    let cancelled = final_response(&mut a, &ab.call_id, Method::Cancel, ab.cseq);
    assert_eq!(cancelled.status(), Some(200));
    let cancel = b.request(Method::Cancel, &ab.call_id);
    b.answer(&cancel, 200, "OK", CALLEE_TAG);
    b.answer(&b_invite, 487, "Request Terminated", CALLEE_TAG);
    b.request(Method::Ack, &ab.call_id);
    let gone = final_response(&mut a, &ab.call_id, Method::Invite, ab.cseq);
    assert_eq!(gone.status(), Some(487), "{}", first_line(&gone));
    a.ack_failure(&ab, &gone);

    cluster.wait_state(T, "1002", "ready");
    assert_agent(&cluster, T, "1002", "ready", None);
    common::wait_until("only the C–A session on S", || {
        let sessions = cluster.sessions(S);
        sessions.len() == 1 && sessions[0]["call_id"] == ca.call_id.as_str()
    });
    assert_in_transfer(&cluster, "1001", S);
    assert_in_transfer(&cluster, c_ext, c_home);
    assert_eq!(cluster.metric(S, "sipblade_replaces_total"), 1.0);

    let bye = caller_request(&c, &mut ca, "BYE");
    exchange(&mut c, &mut a, &bye, Method::Bye, ca.cseq, 200);
    assert_all_free(
        &cluster,
        blades_n,
        &[("1001", S), ("1002", T), (c_ext, c_home)],
    );
}

/// C on T, beside B.
#[test]
fn a_pickup_from_the_ringing_agents_blade() {
    pickup_across_blades(19, 2, "1003", T);
}

/// C on a third blade U.
#[test]
fn a_pickup_from_a_third_blade() {
    pickup_across_blades(20, 3, "1004", U);
}

/// The replacing call of an attended transfer fails, then one ends before
/// the calls it replaced: A (1001, on S) talks to B (1002, on T) and
/// consults C (on `c_home`). B's first INVITE with Replaces is cancelled
/// while C's phone rings, its second declined by C's phone (603): each
/// time S drops the new session and B's and C's riders on their grants,
/// and nothing else changes. B's second is taken, and B
/// hangs the new call up at once: B and C are still in their calls with
/// A (hosted when remote). Then C hangs up on A and A on B: every agent
/// is ready on its own blade and no session is left (a rider left behind
/// would keep B or C hosted).
fn replacing_calls_that_fail_or_end_first(k: u8, blades_n: usize, c_ext: &str, c_home: usize) {
    let cluster = blades(k, blades_n);
    let mut a = placed(&cluster, S, "1001", phone(k, 0), true);
    let mut b = placed(&cluster, T, "1002", phone(k, 1), true);
    let mut c = placed(&cluster, c_home, c_ext, phone(k, 2), false);
    let hops_ac = if c_home == S { 1 } else { 2 };
    let (mut ab, _) = answered_call(&mut a, &mut b, 2);
    confirm(&mut a, &mut b, &ab);
    let (ac, ac_invite) = answered_call(&mut a, &mut c, hops_ac);
    confirm(&mut a, &mut c, &ac);
    let header = format!(
        "Replaces: {};to-tag={CALLEE_TAG};from-tag={}\r\n",
        ac.call_id, ac.from_tag
    );
    let steady = |cluster: &TestCluster| {
        cluster.wait_state(S, "1001", "in_call");
        assert_in_transfer(cluster, "1002", T);
        assert_in_transfer(cluster, c_ext, c_home);
    };

    // B's phone gives up while C's rings: the CANCEL follows the INVITE's
    // way (through U and S when C is on U), and C's phone answers 487.
    let mut cancelled = b.call(c_ext);
    b.invite(&mut cancelled, &header);
    let invite = c.request(Method::Invite, &cancelled.call_id);
    c.answer(&invite, 180, "Ringing", "c-ring");
    let ringing = b.response(&cancelled.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180), "{}", first_line(&ringing));
    b.cancel(&cancelled);
    let cancel = c.request(Method::Cancel, &cancelled.call_id);
    c.answer(&cancel, 200, "OK", "c-ring");
    c.answer(&invite, 487, "Request Terminated", "c-ring");
    c.request(Method::Ack, &cancelled.call_id);
    let gone = final_response(&mut b, &cancelled.call_id, Method::Invite, cancelled.cseq);
    assert_eq!(gone.status(), Some(487), "{}", first_line(&gone));
    b.ack_failure(&cancelled, &gone);
    common::wait_until("S drops the cancelled session", || {
        session(&cluster, S, &cancelled.call_id).is_none()
    });
    steady(&cluster);
    assert_eq!(cluster.sessions(S).len(), 2);

    let mut declined = b.call(c_ext);
    b.invite(&mut declined, &header);
    let invite = c.request(Method::Invite, &declined.call_id);
    c.answer(&invite, 603, "Decline", "c-no");
    let no = b.response(&declined.call_id, Method::Invite);
    assert_eq!(no.status(), Some(603), "{}", first_line(&no));
    b.ack_failure(&declined, &no);
    c.request(Method::Ack, &declined.call_id);
    common::wait_until("S drops the declined session", || {
        session(&cluster, S, &declined.call_id).is_none()
    });
    steady(&cluster);
    assert_eq!(cluster.sessions(S).len(), 2);

    let mut bc = b.call(c_ext);
    b.invite(&mut bc, &header);
    let invite = c.request(Method::Invite, &bc.call_id);
    c.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = b.response(&bc.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    bc.learn(&ok);
    confirm(&mut b, &mut c, &bc);
    let bye = caller_request(&b, &mut bc, "BYE");
    exchange(&mut b, &mut c, &bye, Method::Bye, bc.cseq, 200);
    common::wait_until("S drops the ended session", || {
        session(&cluster, S, &bc.call_id).is_none()
    });
    steady(&cluster);

    let bye = callee_request(&c, &ac_invite, "BYE", 1);
    exchange(&mut c, &mut a, &bye, Method::Bye, 1, 200);
    let bye = caller_request(&a, &mut ab, "BYE");
    exchange(&mut a, &mut b, &bye, Method::Bye, ab.cseq, 200);
    assert_all_free(
        &cluster,
        blades_n,
        &[("1001", S), ("1002", T), (c_ext, c_home)],
    );
}

/// C on a third blade U.
#[test]
fn cancelled_declined_and_early_ended_replacing_calls_leave_no_rider_on_a_third_blade() {
    replacing_calls_that_fail_or_end_first(21, 3, "1003", U);
}

/// C on T with B.
#[test]
fn cancelled_declined_and_early_ended_replacing_calls_leave_no_rider_on_the_transferees_blade() {
    replacing_calls_that_fail_or_end_first(22, 2, "1004", T);
}
