//! Lost datagrams over UDP (RFC 3261 §17): each test loses particular
//! messages on purpose (a phone ignores what it received, or sends again
//! what its timer would) and checks that the blade's transactions
//! recover as the RFC says: the blade retransmits what it forwarded,
//! answers a retransmitted request from its transaction, relays the
//! callee's retransmitted 2xx and every retransmitted ACK of it, and after
//! the call leaves every agent ready, no session and, once the timers
//! ran out, no transaction. Through one blade and across two. And when
//! the phones give up on an answered call whose ACK was lost, without a
//! BYE (as sipp does with `-lost`), the callee's 2xx comes again with no
//! ACK after it, and the blade ends the call 64×T1 after the first 2xx
//! rather than keep its agents in a call for hours.
//!
//! Addresses: 127.0.4.0/24 only (blades on .20-.49, phones on .100-.199),
//! so that these tests can run beside others.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::{Call, TestBlade, Ua, WAIT, first_line};
use sipblade::runtime::Options;
use sipblade::sip::{Message, Method};
use sipblade::transaction::TimerConfig;

/// The To tag of every callee.
const TAG: &str = "lossy-callee";

/// Long enough to see that a message does not arrive: loopback takes
/// well under a millisecond, and the blade's own retransmissions come T1
/// (500 ms) apart.
const QUIET: Duration = Duration::from_millis(300);

/// 127.0.4.`n`.
fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 4, n)
}

/// A one-core blade with auth off on 127.0.4.`n`, with `timers`.
fn blade(n: u8, timers: TimerConfig) -> TestBlade {
    let options = Options {
        timers,
        ..Options::default()
    };
    TestBlade::start_at(1, false, options, "", ip(n))
}

/// The phone of `ext` on 127.0.4.`n`, registered on the blade at `sip`.
fn phone(sip: SocketAddr, ext: &str, n: u8) -> Ua {
    let mut ua = Ua::new_at(sip, ext, ip(n));
    let ok = ua.register(3600);
    assert_eq!(ok.status(), Some(200), "{ext}: {}", first_line(&ok));
    ua
}

/// The next datagram `ua` receives for which `pred` holds, read as it
/// came: unlike the waits of [`Ua`], a copy identical to one received
/// before counts (a retransmission is what these tests look for). Other
/// datagrams are dropped.
fn raw_where(ua: &mut Ua, what: &str, pred: impl Fn(&Message) -> bool) -> Message {
    raw_within(ua, WAIT, pred).unwrap_or_else(|| panic!("{}: no {what} within {WAIT:?}", ua.ext))
}

/// [`raw_where`] within `window`; `None` when nothing matching came.
fn raw_within(ua: &mut Ua, window: Duration, pred: impl Fn(&Message) -> bool) -> Option<Message> {
    let deadline = Instant::now() + window;
    loop {
        let data = ua.recv_raw(deadline.saturating_duration_since(Instant::now()))?;
        if let Ok(msg) = Message::parse(data) {
            if pred(&msg) {
                return Some(msg);
            }
        }
    }
}

/// Whether `m` is a `status` response to `method` in `call_id`.
fn answer(call_id: &str, method: Method, status: u16) -> impl Fn(&Message) -> bool + use<> {
    let call_id = call_id.to_owned();
    move |m| m.call_id() == call_id && m.cseq().method == method && m.status() == Some(status)
}

/// Whether `m` is a `method` request in `call_id`.
fn request(call_id: &str, method: Method) -> impl Fn(&Message) -> bool + use<> {
    let call_id = call_id.to_owned();
    move |m| m.call_id() == call_id && m.method() == Some(method)
}

/// `a` calls `b`; `b` rings and answers 200. The caller loses the 200
/// (it never ACKs that copy): the callee retransmits it, and the blades
/// relay the retransmission alike. The callee then loses the caller's ACK
/// and retransmits its 200 once more: the caller's second ACK reaches it
/// too (a 2xx's ACK is end to end, RFC 3261 §13.2.2.4, §16.7). Returns
/// the answered call and the callee's side of it (the INVITE).
fn lost_200_and_ack(a: &mut Ua, b: &mut Ua) -> (Call, Message) {
    let mut call = a.call(&b.ext);
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 180, "Ringing", TAG);
    let ok = b.answer(&invite, 200, "OK", TAG);
    let is_ok = answer(&call.call_id, Method::Invite, 200);
    let first = raw_where(a, "200", &is_ok);
    b.send(&ok);
    let again = raw_where(a, "retransmitted 200", &is_ok);
    assert_eq!(first.as_bytes(), again.as_bytes(), "relayed alike");
    call.learn(&again);
    let ack = a.in_dialog_text(&call, "ACK", call.cseq);
    a.send(&ack);
    let is_ack = request(&call.call_id, Method::Ack);
    let acked = raw_where(b, "ACK", &is_ack);
    b.send(&ok);
    raw_where(a, "200 retransmitted after the ACK", &is_ok);
    a.send(&ack);
    let acked_again = raw_where(b, "retransmitted ACK", &is_ack);
    assert_eq!(acked.as_bytes(), acked_again.as_bytes(), "relayed alike");
    (call, invite)
}

/// In the answered `call`, the caller's BYE is lost on its way to the
/// callee: the blade retransmits it at T1 while the caller's own
/// retransmission is absorbed. The callee's 200 is lost on its way to the
/// caller: the caller's next retransmission is answered by the blade's
/// transaction, and the callee sees no BYE again.
fn lost_bye_and_its_200(a: &mut Ua, b: &mut Ua, call: &mut Call) {
    call.cseq += 1;
    let bye = a.in_dialog_text(call, "BYE", call.cseq);
    a.send(&bye);
    let is_bye = request(&call.call_id, Method::Bye);
    let first = raw_where(b, "BYE", &is_bye);
    let lost_at = Instant::now();
    a.send(&bye);
    let again = raw_where(b, "BYE retransmitted by the blade", &is_bye);
    let waited = lost_at.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "the caller's retransmission is absorbed, not forwarded (after {waited:?})"
    );
    assert_eq!(first.as_bytes(), again.as_bytes(), "retransmitted alike");
    b.answer(&again, 200, "OK", TAG);
    let is_ok = answer(&call.call_id, Method::Bye, 200);
    let ok = raw_where(a, "200 to the BYE", &is_ok);
    a.send(&bye);
    let resent = raw_where(a, "200 to the retransmitted BYE", &is_ok);
    assert_eq!(ok.as_bytes(), resent.as_bytes(), "the same answer");
    assert!(
        raw_within(b, QUIET, &is_bye).is_none(),
        "a BYE answered already is not forwarded again"
    );
}

/// `a` calls `b`, whose phone loses the first INVITE: the blade next to
/// it retransmits it after T1, byte for byte, and the caller, which had
/// its 100 Trying at once, sends nothing again. Then the call is answered
/// and acknowledged; returns it.
fn lost_invite(a: &mut Ua, b: &mut Ua) -> Call {
    let mut call = a.call(&b.ext);
    a.invite(&mut call, "");
    let is_invite = request(&call.call_id, Method::Invite);
    let first = raw_where(b, "INVITE", &is_invite);
    let lost_at = Instant::now();
    let again = raw_where(b, "INVITE retransmitted by the blade", &is_invite);
    let waited = lost_at.elapsed();
    assert!(
        (Duration::from_millis(350)..Duration::from_millis(1500)).contains(&waited),
        "timer A is T1 (500 ms), on a 50 ms grid: {waited:?}"
    );
    assert_eq!(first.as_bytes(), again.as_bytes(), "retransmitted alike");
    b.answer(&again, 200, "OK", TAG);
    let ok = raw_where(a, "200", answer(&call.call_id, Method::Invite, 200));
    call.learn(&ok);
    a.ack_2xx(&call);
    raw_where(b, "ACK", request(&call.call_id, Method::Ack));
    call
}

/// `a` calls `b`, which refuses 486. The callee loses the blade's ACK and
/// retransmits its 486: the blade ACKs it again and does not relay it a
/// second time. The caller loses the relayed 486: the blade retransmits it
/// (timer G) until the caller's ACK, and then no more.
fn lost_486_and_its_ack(a: &mut Ua, b: &mut Ua) {
    let mut call = a.call(&b.ext);
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    let busy = b.answer(&invite, 486, "Busy Here", TAG);
    let is_ack = request(&call.call_id, Method::Ack);
    let ack = raw_where(b, "the blade's ACK of the 486", &is_ack);
    b.send(&busy);
    let ack_again = raw_where(b, "ACK of the retransmitted 486", &is_ack);
    assert_eq!(ack.as_bytes(), ack_again.as_bytes(), "the same ACK");
    let is_busy = answer(&call.call_id, Method::Invite, 486);
    let first = raw_where(a, "486", &is_busy);
    let lost_at = Instant::now();
    let again = raw_where(a, "486 retransmitted by the blade", &is_busy);
    let waited = lost_at.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "timer G, not the callee's retransmission relayed ({waited:?})"
    );
    assert_eq!(first.as_bytes(), again.as_bytes(), "retransmitted alike");
    a.ack_failure(&call, &again);
    assert!(
        raw_within(a, Duration::from_millis(1200), &is_busy).is_none(),
        "the ACK stops timer G"
    );
    assert!(
        raw_within(b, QUIET, &is_ack).is_none(),
        "the caller's ACK of the blade's own 486 ends at the blade"
    );
}

/// `a` calls `b`, which rings; the caller cancels. The callee loses the
/// CANCEL: the blade retransmits it (timer E). The caller loses the 200
/// to its CANCEL and sends the CANCEL again: the blade answers it again
/// and sends the callee no second CANCEL for it. The callee answers 487
/// and loses the blade's ACK: its retransmitted 487 is ACKed again, and
/// the caller gets the 487 once.
fn lost_cancel_and_its_ack(a: &mut Ua, b: &mut Ua) {
    let mut call = a.call(&b.ext);
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 180, "Ringing", TAG);
    raw_where(a, "180", answer(&call.call_id, Method::Invite, 180));
    a.cancel(&call);
    let is_cancel = request(&call.call_id, Method::Cancel);
    let first = raw_where(b, "CANCEL", &is_cancel);
    let lost_at = Instant::now();
    let is_cancel_ok = answer(&call.call_id, Method::Cancel, 200);
    let ok = raw_where(a, "200 to the CANCEL", &is_cancel_ok);
    a.cancel(&call);
    let ok_again = raw_where(a, "200 to the retransmitted CANCEL", &is_cancel_ok);
    assert_eq!(ok.as_bytes(), ok_again.as_bytes(), "the same answer");
    let again = raw_where(b, "CANCEL retransmitted by the blade", &is_cancel);
    let waited = lost_at.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "timer E, not the caller's CANCEL sent on ({waited:?})"
    );
    assert_eq!(first.as_bytes(), again.as_bytes(), "retransmitted alike");
    b.answer(&again, 200, "OK", TAG);
    let terminated = b.answer(&invite, 487, "Request Terminated", TAG);
    let is_ack = request(&call.call_id, Method::Ack);
    let ack = raw_where(b, "the blade's ACK of the 487", &is_ack);
    b.send(&terminated);
    let ack_again = raw_where(b, "ACK of the retransmitted 487", &is_ack);
    assert_eq!(ack.as_bytes(), ack_again.as_bytes(), "the same ACK");
    let is_487 = answer(&call.call_id, Method::Invite, 487);
    let relayed = raw_where(a, "487", &is_487);
    a.ack_failure(&call, &relayed);
    assert!(raw_within(a, QUIET, &is_487).is_none(), "relayed once");
    assert!(
        raw_within(b, QUIET, &is_cancel).is_none(),
        "no CANCEL after the 200 to it"
    );
}

#[test]
fn a_lost_200_and_a_lost_ack_through_one_blade() {
    let blade = blade(20, TimerConfig::default());
    let (mut a, mut b) = (phone(blade.sip, "1001", 100), phone(blade.sip, "1002", 101));
    let (mut call, _) = lost_200_and_ack(&mut a, &mut b);
    lost_bye_and_its_200(&mut a, &mut b, &mut call);
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    blade.wait_no_sessions();
}

#[test]
fn a_lost_invite_a_lost_486_and_a_lost_cancel_through_one_blade() {
    let blade = blade(21, TimerConfig::default());
    let (mut a, mut b) = (phone(blade.sip, "1001", 102), phone(blade.sip, "1002", 103));
    let mut call = lost_invite(&mut a, &mut b);
    lost_bye_and_its_200(&mut a, &mut b, &mut call);
    lost_486_and_its_ack(&mut a, &mut b);
    lost_cancel_and_its_ack(&mut a, &mut b);
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    blade.wait_no_sessions();
}

#[test]
fn lost_messages_across_two_blades() {
    let mut cluster = TestCluster::new_in(4, 2, 40, 30, 1);
    cluster.start_blade(0);
    cluster.start_blade(1);
    cluster.wait_linked();
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", ip(110));
    let mut b = cluster.registered_on(t, "1002", ip(111));
    let (mut call, _) = lost_200_and_ack(&mut a, &mut b);
    assert_eq!(cluster.agent(t, "1002")["state"], "hosted");
    lost_bye_and_its_200(&mut a, &mut b, &mut call);
    let mut call = lost_invite(&mut a, &mut b);
    lost_bye_and_its_200(&mut a, &mut b, &mut call);
    lost_486_and_its_ack(&mut a, &mut b);
    lost_cancel_and_its_ack(&mut a, &mut b);
    cluster.wait_state(s, "1001", "ready");
    cluster.wait_state(t, "1002", "ready");
    common::wait_until("no session on either blade", || {
        cluster.sessions(s).is_empty() && cluster.sessions(t).is_empty()
    });
}

/// With short timers (T1 = 100 ms, so 64×T1 is 6.4 s), a call whose
/// messages were lost leaves no transaction once its timers ran out.
#[test]
fn transactions_end_after_a_lossy_call() {
    let blade = blade(22, short_timers());
    let (mut a, mut b) = (phone(blade.sip, "1001", 104), phone(blade.sip, "1002", 105));
    let (mut call, _) = lost_200_and_ack(&mut a, &mut b);
    call.cseq += 1;
    let bye = a.in_dialog_text(&call, "BYE", call.cseq);
    a.send(&bye);
    let is_bye = request(&call.call_id, Method::Bye);
    raw_where(&mut b, "BYE", &is_bye);
    let again = raw_where(&mut b, "BYE retransmitted by the blade", &is_bye);
    b.answer(&again, 200, "OK", TAG);
    raw_where(&mut a, "200", answer(&call.call_id, Method::Bye, 200));
    blade.wait_no_sessions();
    assert!(
        blade.metric("sipblade_transactions_active") > 0.0,
        "lingering"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while blade.metric("sipblade_transactions_active") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "transactions left: {}",
            blade.metric("sipblade_transactions_active")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
}

/// T1 = 100 ms: 64×T1 is 6.4 s.
fn short_timers() -> TimerConfig {
    TimerConfig {
        t1: Duration::from_millis(100),
        t2: Duration::from_millis(400),
        t4: Duration::from_millis(500),
    }
}

/// Waits until `callee`, answered with a 2xx no ACK followed, is ready
/// again: not before 64×T1 (6 s with [`short_timers`]) after the answer,
/// and within 12 s.
fn ended_unacked(blade: &TestBlade, callee: &str) {
    let answered = Instant::now();
    let deadline = answered + Duration::from_secs(12);
    while blade.agent_state(callee) != "ready" {
        assert!(
            Instant::now() < deadline,
            "{callee} is still {} 12 s after a 2xx nobody ACKed",
            blade.agent_state(callee)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        answered.elapsed() >= Duration::from_millis(6000),
        "not before 64×T1 ({:?})",
        answered.elapsed()
    );
}

/// The Call-IDs of the sessions `/status` lists.
fn session_ids(blade: &TestBlade) -> Vec<String> {
    let status = blade.status();
    status["sessions"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| s["call_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Both phones give up on an answered call whose ACK was lost, as sipp
/// does when its caller aborts on a 200 it did not expect and its callee
/// stops retransmitting the 200, and neither sends a BYE: 64×T1 after the
/// 2xx the blade ends the call itself (with its own BYEs, as at
/// `max_call_secs`), so that its agents are not left in a call for hours,
/// every later call to them refused 486. A call whose ACK passed stays up.
#[test]
fn an_answered_call_never_acked_ends_after_64_t1() {
    let blade = blade(23, short_timers());
    let (mut a, mut b) = (phone(blade.sip, "1001", 106), phone(blade.sip, "1002", 107));
    let (mut c, mut d) = (phone(blade.sip, "1003", 108), phone(blade.sip, "1004", 109));
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    let ok = b.answer(&invite, 200, "OK", TAG);
    raw_where(&mut a, "200", answer(&call.call_id, Method::Invite, 200));
    // The caller's ACK is lost; the callee retransmits its 200 a while,
    // the caller loses those too, and both give up.
    b.send(&ok);
    let mut acked = c.call("1004");
    c.invite(&mut acked, "");
    let invite = d.request(Method::Invite, &acked.call_id);
    d.answer(&invite, 200, "OK", TAG);
    let ok = raw_where(&mut c, "200", answer(&acked.call_id, Method::Invite, 200));
    acked.learn(&ok);
    c.ack_2xx(&acked);
    raw_where(&mut d, "ACK", request(&acked.call_id, Method::Ack));
    assert_eq!(blade.agent_state("1002"), "in_call");
    ended_unacked(&blade, "1002");
    assert_eq!(blade.agent_state("1001"), "ready");
    let bye = request(&call.call_id, Method::Bye);
    raw_where(&mut a, "the blade's BYE to the caller", &bye);
    raw_where(&mut b, "the blade's BYE to the callee", &bye);
    let left = session_ids(&blade);
    assert_eq!(left, [acked.call_id.as_str()], "the ACKed call stays up");
    assert_eq!(blade.agent_state("1003"), "in_call");
    assert_eq!(blade.agent_state("1004"), "in_call");
}

/// The caller's ACK passes the blade but is lost on its way to the
/// callee, which retransmits its 200; a caller that gave up on the call
/// (as sipp's does, taking that 200 for its BYE's answer, its BYE lost)
/// does not ACK again and sends no BYE: the call ends 64×T1 after the
/// 2xx as if no ACK had come. A live caller ACKs the retransmitted 200,
/// and its call stays up.
#[test]
fn a_2xx_retransmitted_after_its_ack_needs_another_ack() {
    let blade = blade(24, short_timers());
    let (mut a, mut b) = (phone(blade.sip, "1001", 110), phone(blade.sip, "1002", 111));
    let (mut c, mut d) = (phone(blade.sip, "1003", 112), phone(blade.sip, "1004", 113));
    let mut calls = Vec::new();
    for (caller, callee) in [(&mut a, &mut b), (&mut c, &mut d)] {
        let mut call = caller.call(&callee.ext);
        caller.invite(&mut call, "");
        let invite = callee.request(Method::Invite, &call.call_id);
        let ok = callee.answer(&invite, 200, "OK", TAG);
        let is_ok = answer(&call.call_id, Method::Invite, 200);
        call.learn(&raw_where(caller, "200", &is_ok));
        let ack = caller.in_dialog_text(&call, "ACK", call.cseq);
        caller.send(&ack);
        raw_where(callee, "ACK", request(&call.call_id, Method::Ack));
        callee.send(&ok);
        raw_where(caller, "retransmitted 200", &is_ok);
        calls.push((call, ack));
    }
    // Only the live caller ACKs the retransmission.
    let (live, ack) = &calls[1];
    c.send(ack);
    raw_where(&mut d, "ACK again", request(&live.call_id, Method::Ack));
    ended_unacked(&blade, "1002");
    assert_eq!(blade.agent_state("1001"), "ready");
    let left = session_ids(&blade);
    assert_eq!(left, [live.call_id.as_str()], "the re-ACKed call stays up");
}
