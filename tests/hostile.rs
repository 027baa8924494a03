//! Black-box acceptance findings: behaviours a hostile or merely unusual
//! peer exposed over real sockets, each kept as a regression test.
//!
//! Every blade and user agent here lives on 127.0.1.x (the range this file
//! keeps to, apart from other test files' 127.0.0.x), with ports chosen by
//! the OS.

mod common;

use std::net::Ipv4Addr;

use common::{TestBlade, Ua, first_line, header};
use sipblade::runtime::Options;
use sipblade::sip::{HeaderName, Method};

/// The address of this file's blades.
const BLADE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);

/// A blade on [`BLADE_IP`] with `cores` executors, auth off.
fn blade(cores: usize) -> TestBlade {
    TestBlade::start_at(cores, false, Options::default(), "", BLADE_IP)
}

/// A registered user agent for `ext` on 127.0.1.`host`.
fn registered(blade: &TestBlade, ext: &str, host: u8) -> Ua {
    let mut ua = Ua::new_at(blade.sip, ext, Ipv4Addr::new(127, 0, 1, host));
    let ok = ua.register(3600);
    assert_eq!(
        ok.status(),
        Some(200),
        "{ext} registers: {}",
        first_line(&ok)
    );
    ua
}

/// RFC 3261 §16.7 step 6: a proxy does not pass a 503 upstream (the caller
/// would take the blade itself for unavailable and back off from it); when the 503 is the only answer, it sends 500. The
/// callee's phone answering 503 (overloaded, DND) is a failed call like any
/// other, and the caller can still call again at once.
#[test]
fn a_callees_503_reaches_the_caller_as_500() {
    let blade = blade(1);
    let mut a = registered(&blade, "1001", 11);
    let mut b = registered(&blade, "1002", 12);
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 503, "Service Unavailable", "callee-tag");
    let failed = a.response(&call.call_id, Method::Invite);
    assert_eq!(failed.status(), Some(500), "{}", first_line(&failed));
    assert_eq!(failed.to().tag(), Some("callee-tag"), "the callee's To tag");
    assert_eq!(failed.vias().count(), 1, "the blade removed its Via");
    a.ack_failure(&call, &failed);
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    blade.wait_no_sessions();
    // Other failures pass unchanged.
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 486, "Busy Here", "callee-tag");
    let busy = a.response(&call.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    assert_eq!(header(&busy, HeaderName::CSeq).as_deref(), Some("1 INVITE"));
    a.ack_failure(&call, &busy);
}

/// RFC 3261 §8.2.6.1 (which §16.2 applies to a proxy's 100): the 100 Trying
/// to a request with a Timestamp carries that Timestamp, so the caller can
/// measure the round trip.
#[test]
fn the_100_trying_copies_the_timestamp() {
    let blade = blade(1);
    let mut a = registered(&blade, "1001", 13);
    let mut b = registered(&blade, "1002", 14);
    let mut call = a.call("1002");
    a.invite(&mut call, "Timestamp: 54.0 1.5\r\n");
    let trying = a.expect_where("the 100 Trying", |m| {
        m.status() == Some(100) && m.call_id() == call.call_id
    });
    assert_eq!(
        trying.header_named("Timestamp"),
        Some(&b"54.0 1.5"[..]),
        "{}",
        first_line(&trying)
    );
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 486, "Busy Here", "callee-tag");
    let busy = a.response(&call.call_id, Method::Invite);
    a.ack_failure(&call, &busy);
}

/// RFC 3261 §16.4: a Route naming the proxy is the proxy's to remove. A
/// phone with the blade as its outbound proxy preloads `Route: <blade;lr>`
/// on its out-of-dialog requests (§8.1.2); the callee's phone must not get
/// that Route (it is no route set of its dialog).
#[test]
fn a_preloaded_route_naming_the_blade_is_removed() {
    let blade = blade(1);
    let mut a = registered(&blade, "1001", 15);
    let mut b = registered(&blade, "1002", 16);
    let route = format!("Route: <sip:{};lr>\r\n", blade.sip);
    let mut call = a.call("1002");
    a.invite(&mut call, &route);
    let invite = b.request(Method::Invite, &call.call_id);
    assert_eq!(invite.routes().count(), 0, "the INVITE's Route was popped");
    b.answer(&invite, 486, "Busy Here", "callee-tag");
    let busy = a.response(&call.call_id, Method::Invite);
    a.ack_failure(&call, &busy);

    let call_id = format!("msg-{}@test", common::unique());
    a.send(format!(
        "MESSAGE {} SIP/2.0\r\n{}{route}Max-Forwards: 70\r\nFrom: <{}>;tag=m1\r\n\
         To: <{}>\r\nCall-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n",
        common::aor("1002"),
        a.via(&common::branch()),
        common::aor("1001"),
        common::aor("1002"),
    ));
    let message = b.request(Method::Message, &call_id);
    assert_eq!(
        message.routes().count(),
        0,
        "the MESSAGE's Route was popped"
    );
    b.answer(&message, 200, "OK", "callee-tag");
    assert_eq!(a.response(&call_id, Method::Message).status(), Some(200));
}

/// RFC 3261 §17.2.3: a request matches a server transaction by its branch
/// *and* the sent-by of its top Via. Phones that derive branches from a
/// counter, or scripts that send RFC 3261's example branch, reuse branches
/// across terminals: a second terminal's request is not a retransmission of
/// the first's (which would swallow it and answer the first terminal again),
/// nor may it CANCEL the first's call.
#[test]
fn one_branch_from_two_terminals_is_two_transactions() {
    let blade = blade(1);
    let ip = Ipv4Addr::new(127, 0, 1, 17);
    let mut one = Ua::new_at(blade.sip, "1001", ip);
    let mut two = Ua::new_at(blade.sip, "1003", ip);
    let branch = "z9hG4bK776asdhds";
    let options = |ua: &Ua, call_id: &str| {
        format!(
            "OPTIONS sip:{} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <{}>;tag=o1\r\n\
             To: <sip:{}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            blade.sip,
            ua.via(branch),
            common::aor(&ua.ext),
            blade.sip,
        )
    };
    one.send(options(&one, "opt-one@test"));
    let first = one.response("opt-one@test", Method::Options);
    assert_eq!(first.status(), Some(200), "{}", first_line(&first));
    two.send(options(&two, "opt-two@test"));
    let second = two.response("opt-two@test", Method::Options);
    assert_eq!(second.status(), Some(200), "{}", first_line(&second));

    // The same for a call: another terminal's CANCEL with the caller's
    // branch is no CANCEL of the caller's INVITE.
    let mut a = registered(&blade, "1001", 18);
    let mut b = registered(&blade, "1002", 19);
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 180, "Ringing", "callee-tag");
    assert_eq!(
        a.response(&call.call_id, Method::Invite).status(),
        Some(180)
    );
    let cancel = format!(
        "CANCEL {} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <{}>;tag={}\r\nTo: <{}>\r\n\
         Call-ID: {}\r\nCSeq: {} CANCEL\r\nContent-Length: 0\r\n\r\n",
        common::aor("1002"),
        two.via(&call.branch),
        common::aor("1001"),
        call.from_tag,
        common::aor("1002"),
        call.call_id,
        call.cseq,
    );
    two.send(cancel);
    let refused = two.response(&call.call_id, Method::Cancel);
    assert_eq!(refused.status(), Some(481), "{}", first_line(&refused));
    let stray = b.collect_where(std::time::Duration::from_millis(300), |m| {
        m.method() == Some(Method::Cancel)
    });
    assert!(stray.is_empty(), "the callee got no CANCEL");
    b.answer(&invite, 486, "Busy Here", "callee-tag");
    let busy = a.response(&call.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    a.ack_failure(&call, &busy);
}
