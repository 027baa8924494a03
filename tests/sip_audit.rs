//! An acceptance tester's audit of one blade's SIP behaviour (SPEC §5,
//! RFC 3261 §10.3 and §16-17) in the corners the other suites touch least:
//! the registrar's wildcard, ordering and expiry rules, digest edge cases,
//! and the proxy's hop-by-hop ACK, response retransmission, strict routing,
//! 100rel, redirects and status classes a UA may answer with.
//!
//! Every blade and user agent lives on 127.0.22.1 to 127.0.22.250, with
//! ports chosen by the OS.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{Call, DOMAIN, TestBlade, Ua, aor, first_line, header, password};
use sipblade::runtime::Options;
use sipblade::sip::{HeaderName, Message, Method};

/// How long a check that nothing arrives listens: longer than T1, so a
/// retransmission by timer A, E or G would show.
const SILENCE: Duration = Duration::from_millis(700);

/// The To tag of every simulated callee.
const CALLEE_TAG: &str = "audit-callee";

/// 127.0.22.`host`.
fn ip(host: u8) -> Ipv4Addr {
    assert!((1..=250).contains(&host), "127.0.22.{host} is out of range");
    Ipv4Addr::new(127, 0, 22, host)
}

/// A blade on 127.0.22.`host` with two cores.
fn blade(auth: bool, host: u8) -> TestBlade {
    TestBlade::start_at(2, auth, Options::default(), "", ip(host))
}

/// A user agent for `ext` on 127.0.22.`host`, registered.
fn registered(blade: &TestBlade, ext: &str, host: u8) -> Ua {
    let mut ua = Ua::new_at(blade.sip, ext, ip(host));
    let ok = ua.register(3600);
    assert_eq!(ok.status(), Some(200), "{ext}: {}", first_line(&ok));
    ua
}

/// The `expires` of the one Contact a REGISTER's 200 lists.
fn listed_expiry(ok: &Message) -> Option<u32> {
    ok.contacts().next().and_then(|c| c.expires())
}

// Registrar.

/// RFC 3261 §10.3 step 6: `Contact: *` must stand alone and come with
/// `Expires: 0`; anything else is 400 and leaves the binding as it was.
#[test]
fn a_wildcard_contact_needs_expires_zero_and_to_stand_alone() {
    let blade = blade(false, 1);
    let mut phone = registered(&blade, "1001", 2);
    let other = format!("<sip:1001@{}:5999>", ip(2));
    for headers in [
        "Contact: *\r\nExpires: 3600\r\n".to_owned(),
        "Contact: *\r\n".to_owned(),
        format!("Contact: *\r\nContact: {other}\r\nExpires: 0\r\n"),
        format!("Contact: *, {other}\r\nExpires: 0\r\n"),
        format!("Contact: {other}, *\r\nExpires: 0\r\n"),
    ] {
        let answer = phone.register_once(&headers);
        assert_eq!(
            answer.status(),
            Some(400),
            "{headers}: {}",
            first_line(&answer)
        );
        assert_eq!(blade.agent_state("1001"), "ready", "{headers}");
    }
    let ok = phone.register_once("Contact: *\r\nExpires: 0\r\n");
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.contacts().count(), 0, "no binding is left");
    assert_eq!(blade.agent_state("1001"), "logged_out");
}

/// An Expires above the registrar's maximum is shortened, and the 200 says
/// by how much (the binding's `expires`), as RFC 3261 §10.3 step 7 lets a
/// registrar do; the q of a Contact is accepted when it is a qvalue.
#[test]
fn a_long_expiry_is_capped_and_the_200_says_so() {
    let blade = blade(false, 10);
    let mut phone = Ua::new_at(blade.sip, "1001", ip(11));
    let contact = phone.contact_uri();
    let ok = phone.register_once(&format!(
        "Contact: <{contact}>;q=0.7\r\nExpires: 999999\r\n"
    ));
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert_eq!(listed_expiry(&ok), Some(86_400));
    // The parameter wins over the header (RFC 3261 §10.2.1.1).
    let ok = phone.register_once(&format!(
        "Contact: <{contact}>;expires=120\r\nExpires: 3600\r\n"
    ));
    assert_eq!(listed_expiry(&ok), Some(120));
    for huge in ["4294967295", "4294967296", "99999999999999999999"] {
        let ok = phone.register_once(&format!("Contact: <{contact}>\r\nExpires: {huge}\r\n"));
        assert_eq!(
            ok.status(),
            Some(200),
            "Expires {huge}: {}",
            first_line(&ok)
        );
        assert_eq!(listed_expiry(&ok), Some(86_400), "Expires {huge}");
        let ok = phone.register_once(&format!("Contact: <{contact}>;expires={huge}\r\n"));
        assert_eq!(
            ok.status(),
            Some(200),
            "expires={huge}: {}",
            first_line(&ok)
        );
        assert_eq!(listed_expiry(&ok), Some(86_400), "expires={huge}");
    }
    let bad = phone.register_once(&format!("Contact: <{contact}>;q=1.5\r\n"));
    assert_eq!(bad.status(), Some(400));
}

/// A REGISTER retransmitted after its 200 (the 200 was lost) gets the same
/// 200 from the server transaction (RFC 3261 §17.2.2), not a 500 for a
/// CSeq no higher than the binding's.
#[test]
fn a_register_retransmitted_after_its_200_gets_the_200_again() {
    let blade = blade(false, 20);
    let mut phone = Ua::new_at(blade.sip, "1002", ip(21));
    let text = phone.register_text(&phone.binding_headers(3600));
    phone.send(&text);
    let first = phone.recv_raw(common::WAIT).expect("the 200");
    assert!(first.starts_with(b"SIP/2.0 200 "), "{first:?}");
    phone.send(&text);
    let again = phone.recv_raw(common::WAIT).expect("the 200 again");
    assert_eq!(
        String::from_utf8_lossy(&again).lines().next(),
        Some("SIP/2.0 200 OK")
    );
}

/// RFC 3261 §10.3 step 7: within one Call-ID, a REGISTER whose CSeq is not
/// above the binding's is out of order (500); the binding stays. A refresh
/// with a higher CSeq from a new address moves the agent there.
#[test]
fn register_ordering_and_a_refresh_from_a_new_address() {
    let blade = blade(false, 30);
    let mut phone = Ua::new_at(blade.sip, "1003", ip(31));
    let first = phone.register_text(&phone.binding_headers(3600));
    let second = phone.register_text(&phone.binding_headers(3600));
    phone.send(&second);
    let ok = phone.response(&call_id_of(&second), Method::Register);
    assert_eq!(ok.status(), Some(200));
    // The older one (CSeq 1), arriving late with its own branch.
    phone.send(&first);
    let late = phone.response(&call_id_of(&first), Method::Register);
    assert_eq!(late.status(), Some(500), "{}", first_line(&late));

    // The same Call-ID and a higher CSeq from another socket: a phone that
    // changed address refreshing its registration.
    let mut moved = Ua::new_at(blade.sip, "1003", ip(32));
    let third = phone.register_text(&moved.binding_headers(3600)).replacen(
        &phone.addr.to_string(),
        &moved.addr.to_string(),
        1,
    );
    moved.send(&third);
    let ok = moved.response(&call_id_of(&third), Method::Register);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert_eq!(blade.agent("1003")["contact"], moved.addr.to_string());
}

/// The Call-ID of a request written as text.
fn call_id_of(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .expect("a Call-ID")
        .to_owned()
}

/// Third-party registration (RFC 3261 §10.2: From names who registers, To
/// whose binding): with auth the credentials must be the To agent's, so
/// another agent's password gets 403, the right one 200.
#[test]
fn a_third_party_register_needs_the_registered_agents_credentials() {
    let blade = blade(true, 40);
    let mut phone = Ua::new_at(blade.sip, "1004", ip(41));
    let headers = phone.binding_headers(3600);
    let third_party = |text: String| text.replacen("From: <sip:1004@", "From: <sip:1001@", 1);
    let text = third_party(phone.register_text(&headers));
    phone.send(&text);
    let challenge = phone.response(&call_id_of(&text), Method::Register);
    assert_eq!(challenge.status(), Some(401));
    // 1001's own credentials for 1004's binding.
    let as_1001 = Ua::new_at(blade.sip, "1001", ip(42));
    let wrong = as_1001.authorization(
        &challenge,
        false,
        "REGISTER",
        &format!("sip:{DOMAIN}"),
        &password("1001"),
    );
    let text = third_party(phone.register_text(&format!("{headers}{wrong}")));
    phone.send(&text);
    let refused = phone.response(&call_id_of(&text), Method::Register);
    assert_eq!(refused.status(), Some(403), "{}", first_line(&refused));
    let right = phone.authorization(
        &challenge,
        false,
        "REGISTER",
        &format!("sip:{DOMAIN}"),
        &password("1004"),
    );
    let text = third_party(phone.register_text(&format!("{headers}{right}")));
    phone.send(&text);
    let ok = phone.response(&call_id_of(&text), Method::Register);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert_eq!(blade.agent_state("1004"), "ready");
}

/// Digest corner cases on REGISTER: credentials of another realm only get
/// a fresh challenge; an unknown username 403; qop=auth-int, which the
/// blade does not offer, is refused; SHA-256 is taken; a nonce count used
/// twice is no second login.
#[test]
fn digest_corner_cases() {
    let blade = blade(true, 50);
    let mut phone = Ua::new_at(blade.sip, "1002", ip(51));
    let headers = phone.binding_headers(3600);
    let challenge = phone.register_once(&headers);
    assert_eq!(challenge.status(), Some(401));
    let offered: Vec<String> = challenge
        .header_values(HeaderName::WwwAuthenticate)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(offered.len(), 2, "{offered:?}");
    assert!(offered[0].contains("algorithm=MD5"), "{offered:?}");
    assert!(offered[1].contains("algorithm=SHA-256"), "{offered:?}");
    let uri = format!("sip:{DOMAIN}");
    let good = phone.authorization(&challenge, false, "REGISTER", &uri, &password("1002"));

    let other_realm = good.replace(&format!("realm=\"{DOMAIN}\""), "realm=\"elsewhere\"");
    let answer = phone.register_once(&format!("{headers}{other_realm}"));
    assert_eq!(answer.status(), Some(401), "{}", first_line(&answer));

    let stranger = good.replace("username=\"1002\"", "username=\"nobody\"");
    let answer = phone.register_once(&format!("{headers}{stranger}"));
    assert_eq!(answer.status(), Some(403), "{}", first_line(&answer));

    let int = good.replace("qop=auth,", "qop=auth-int,");
    let answer = phone.register_once(&format!("{headers}{int}"));
    assert_eq!(answer.status(), Some(400), "{}", first_line(&answer));

    let ok = phone.register_once(&format!("{headers}{good}"));
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    // The same credentials again (nc 00000001 twice): a replay.
    let replay = phone.register_once(&format!("{headers}{good}"));
    assert_eq!(replay.status(), Some(401), "{}", first_line(&replay));

    let sha = phone.authorization_with(
        &replay,
        false,
        "REGISTER",
        &uri,
        &password("1002"),
        Some("SHA-256"),
    );
    let ok = phone.register_once(&format!("{headers}{sha}"));
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));

    let huge = format!("{headers}X-Padding: {}\r\n", "a".repeat(20_000));
    let answer = phone.register_once(&huge);
    assert_eq!(answer.status(), Some(401), "{}", first_line(&answer));
}

// Proxy.

/// Places a call from `a` to `b` and returns it with the INVITE `b` got.
fn ringing(a: &mut Ua, b: &mut Ua, extra: &str) -> (Call, Message) {
    let mut call = a.call(&b.ext);
    a.invite(&mut call, extra);
    let invite = b.request(Method::Invite, &call.call_id);
    (call, invite)
}

/// The callee answers `invite` 200; the caller ACKs it and hangs up.
fn answer_and_hang_up(a: &mut Ua, b: &mut Ua, call: &mut Call, invite: &Message) {
    b.answer(invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    a.ack_2xx(call);
    b.request(Method::Ack, &call.call_id);
    a.bye(call);
    let bye = b.request(Method::Bye, &call.call_id);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    assert_eq!(a.response(&call.call_id, Method::Bye).status(), Some(200));
}

/// A final non-2xx answer is ACKed by the blade hop by hop (RFC 3261
/// §17.1.1.3, §16.7 step 7): the callee gets the blade's ACK, never the
/// caller's; and a caller INVITE retransmitted after the answer gets the
/// answer again, with no second INVITE to the callee.
#[test]
fn the_ack_of_a_failure_is_hop_by_hop_and_a_late_retransmission_gets_the_answer() {
    let blade = blade(false, 60);
    let mut a = registered(&blade, "1001", 61);
    let mut b = registered(&blade, "1002", 62);
    let (call, invite) = ringing(&mut a, &mut b, "");
    b.answer(&invite, 486, "Busy Here", CALLEE_TAG);
    let busy = a.response(&call.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486));
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.top_via().branch(), invite.top_via().branch());
    assert_eq!(ack.vias().count(), 1, "the blade's own ACK");

    // The 486 "lost": the caller retransmits its INVITE.
    a.retransmit_invite(&call);
    // (The Ua's waits drop a datagram seen before: read it raw.)
    let again = a.recv_raw(common::WAIT).expect("the 486 again");
    assert!(again.starts_with(b"SIP/2.0 486 "), "{again:?}");
    let more = b.collect_where(SILENCE, |m| m.method() == Some(Method::Invite));
    assert!(
        more.is_empty(),
        "a second INVITE reached the callee: {more:?}"
    );

    a.ack_failure(&call, &busy);
    let acks = b.collect_where(SILENCE, |m| m.method() == Some(Method::Ack));
    assert!(acks.is_empty(), "the caller's ACK went on: {acks:?}");
    blade.wait_no_sessions();
}

/// RFC 3261 §16.3 step 3 and §11: Max-Forwards 0 on an INVITE is 483; on
/// an OPTIONS to the blade itself the blade answers as the final
/// recipient. A request without Max-Forwards is forwarded with 70
/// (§16.6 step 3).
#[test]
fn max_forwards_zero_and_missing() {
    let blade = blade(false, 70);
    let mut a = registered(&blade, "1001", 71);
    let mut b = registered(&blade, "1002", 72);

    let mut call = a.call("1002");
    let text = a
        .invite_text(&mut call, "")
        .replace("Max-Forwards: 70\r\n", "Max-Forwards: 0\r\n");
    a.send(&text);
    let refused = a.response(&call.call_id, Method::Invite);
    assert_eq!(refused.status(), Some(483));
    a.ack_failure(&call, &refused);

    let options = format!(
        "OPTIONS sip:{} SIP/2.0\r\n{}Max-Forwards: 0\r\nFrom: <sip:probe@{DOMAIN}>;tag=p1\r\n\
         To: <sip:{}>\r\nCall-ID: mf0@audit\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        blade.sip,
        a.via(&common::branch()),
        blade.sip
    );
    a.send(options);
    let ok = a.response("mf0@audit", Method::Options);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert!(header(&ok, HeaderName::Allow).is_some(), "an Allow");

    let mut call = a.call("1002");
    let text = a
        .invite_text(&mut call, "")
        .replace("Max-Forwards: 70\r\n", "");
    a.send(&text);
    let invite = b.request(Method::Invite, &call.call_id);
    assert_eq!(invite.max_forwards(), Some(70));
    b.answer(&invite, 603, "Decline", CALLEE_TAG);
    let declined = a.response(&call.call_id, Method::Invite);
    assert_eq!(declined.status(), Some(603));
    a.ack_failure(&call, &declined);
}

/// A request the blade forwarded, sent back to it unchanged (a loop through
/// a misconfigured phone forwarding to its proxy), is 482 (RFC 3261 §16.3
/// step 4), not forwarded again.
#[test]
fn a_forwarded_request_that_comes_back_is_a_loop() {
    let blade = blade(false, 80);
    let a = registered(&blade, "1001", 81);
    let mut b = registered(&blade, "1002", 82);
    let mut call = a.call("1002");
    a.send(
        a.invite_text(&mut call, "")
            .replacen("INVITE", "MESSAGE", 1)
            .replace(" INVITE\r\n", " MESSAGE\r\n"),
    );
    let message = b.request(Method::Message, &call.call_id);
    // b sends the very request back to the blade, with its own Via on top,
    // and the Request-URI back to the AoR (a forwarding rule).
    let raw = String::from_utf8_lossy(message.as_bytes()).into_owned();
    let back = raw
        .replacen(
            &format!("MESSAGE {}", b.contact_uri()),
            &format!("MESSAGE {}", aor("1002")),
            1,
        )
        .replacen("Via: ", &format!("{}Via: ", b.via("z9hG4bK-bounce")), 1);
    b.send(back);
    let looped = b.response(&call.call_id, Method::Message);
    assert_eq!(looped.status(), Some(482), "{}", first_line(&looped));
}

/// Proxy-Require naming an unknown option is 420 with Unsupported; a
/// Require on a request to an agent is the agent's business (RFC 3261
/// §16.3: a proxy does not look at Require) and is proxied; a Require on
/// an OPTIONS to the blade itself is 420 (§8.2.2.3).
#[test]
fn require_and_proxy_require() {
    let blade = blade(false, 90);
    let mut a = registered(&blade, "1001", 91);
    let mut b = registered(&blade, "1002", 92);

    let (call, invite) = ringing(&mut a, &mut b, "Require: foo\r\n");
    assert_eq!(header(&invite, HeaderName::Require).as_deref(), Some("foo"));
    b.answer_with(
        &invite,
        420,
        "Bad Extension",
        CALLEE_TAG,
        "Unsupported: foo\r\n",
    );
    let bad = a.response(&call.call_id, Method::Invite);
    assert_eq!(bad.status(), Some(420));
    assert_eq!(
        header(&bad, HeaderName::Unsupported).as_deref(),
        Some("foo")
    );
    a.ack_failure(&call, &bad);

    let options = format!(
        "OPTIONS sip:{DOMAIN} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <sip:probe@{DOMAIN}>;tag=p2\r\n\
         To: <sip:{DOMAIN}>\r\nCall-ID: req@audit\r\nCSeq: 1 OPTIONS\r\nRequire: bar\r\n\
         Content-Length: 0\r\n\r\n",
        a.via(&common::branch()),
    );
    a.send(options);
    let answer = a.response("req@audit", Method::Options);
    assert_eq!(answer.status(), Some(420), "{}", first_line(&answer));
    assert_eq!(
        header(&answer, HeaderName::Unsupported).as_deref(),
        Some("bar")
    );
    blade.wait_no_sessions();
}

/// Reliable provisional responses (RFC 3262) pass end to end: the 180 with
/// Require: 100rel and RSeq reaches the caller with the blade's
/// Record-Route, the caller's PRACK follows that route to the callee, and
/// its 200 comes back.
#[test]
fn a_reliable_provisional_and_its_prack_pass_end_to_end() {
    let blade = blade(false, 100);
    let mut a = registered(&blade, "1001", 101);
    let mut b = registered(&blade, "1002", 102);
    let (mut call, invite) = ringing(&mut a, &mut b, "Supported: 100rel\r\n");
    b.answer_with(
        &invite,
        180,
        "Ringing",
        CALLEE_TAG,
        "Require: 100rel\r\nRSeq: 1\r\n",
    );
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180));
    assert_eq!(
        header(&ringing, HeaderName::Require).as_deref(),
        Some("100rel")
    );
    // Until its PRACK, the callee sends its reliable 180 again (RFC 3262
    // §3): each one reaches the caller, whose PRACK may have been lost.
    b.answer_with(
        &invite,
        180,
        "Ringing",
        CALLEE_TAG,
        "Require: 100rel\r\nRSeq: 1\r\n",
    );
    let again = a.recv_raw(common::WAIT).expect("the reliable 180 again");
    assert!(again.starts_with(b"SIP/2.0 180 "), "{again:?}");
    // The early dialog: its route set and remote target, as for a 2xx.
    let rr: Vec<String> = ringing
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    assert_eq!(rr.len(), 1, "the blade's Record-Route in the 180");
    call.to = header(&ringing, HeaderName::To);
    call.target = ringing
        .contacts()
        .next()
        .map(|c| c.uri().as_str().to_owned());
    call.routes = rr;
    let prack = a.in_dialog_text(&call, "PRACK", call.cseq + 1).replace(
        "Content-Length: 0",
        &format!("RAck: 1 {} INVITE\r\nContent-Length: 0", call.cseq),
    );
    a.send(prack);
    let got = b.request(Method::Prack, &call.call_id);
    b.answer(&got, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Prack);
    assert_eq!(ok.status(), Some(200));

    answer_and_hang_up(&mut a, &mut b, &mut call, &invite);
    blade.wait_no_sessions();
}

/// A non-INVITE request gets no 100 Trying from the blade (RFC 4320 §4.1:
/// not before timer E reaches T2), only the callee's final answer.
#[test]
fn a_message_between_agents_gets_no_100() {
    let blade = blade(false, 110);
    let mut a = registered(&blade, "1001", 111);
    let mut b = registered(&blade, "1002", 112);
    let call_id = "msg@audit";
    let body = "hello";
    a.send(format!(
        "MESSAGE {} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <{}>;tag=m1\r\nTo: <{}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        aor("1002"),
        a.via(&common::branch()),
        aor("1001"),
        aor("1002"),
        body.len()
    ));
    let got = b.request(Method::Message, call_id);
    assert_eq!(got.body(), body.as_bytes());
    std::thread::sleep(Duration::from_millis(100));
    b.answer(&got, 200, "OK", CALLEE_TAG);
    let first = a.expect_where("an answer to the MESSAGE", |m| m.call_id() == call_id);
    assert_eq!(first.status(), Some(200), "{}", first_line(&first));
}

/// A strict router upstream (RFC 3261 §16.4): the Request-URI is the
/// blade's own Record-Route URI and the real target is the last Route. The
/// blade puts that Route back into the Request-URI.
#[test]
fn a_request_from_a_strict_router_is_fixed_up() {
    let blade = blade(false, 120);
    let mut a = registered(&blade, "1001", 121);
    let mut b = registered(&blade, "1002", 122);
    let (mut call, invite) = ringing(&mut a, &mut b, "");
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    call.learn(&ok);
    a.ack_2xx(&call);
    b.request(Method::Ack, &call.call_id);

    let rr = call.routes[0]
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned();
    let target = call.target.clone().expect("a target");
    call.cseq += 1;
    let strict = a
        .in_dialog_text(&call, "BYE", call.cseq)
        .replacen(&format!("BYE {target} "), &format!("BYE {rr} "), 1)
        .replacen(
            &format!("Route: {}", call.routes[0]),
            &format!("Route: <{target}>"),
            1,
        );
    a.send(strict);
    let bye = b.request(Method::Bye, &call.call_id);
    assert_eq!(bye.request_uri().unwrap().as_str(), target);
    assert_eq!(
        bye.routes().count(),
        0,
        "the last Route became the Request-URI"
    );
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    assert_eq!(a.response(&call.call_id, Method::Bye).status(), Some(200));
    blade.wait_no_sessions();
}

/// A 3xx from the callee goes to the caller with its Contact (the blade
/// does not recurse on it, RFC 3261 §16.5 leaves that to the proxy, and a
/// call centre's agent has no business redirecting through it); a 6xx too.
#[test]
fn redirects_and_global_failures_reach_the_caller() {
    let blade = blade(false, 130);
    let mut a = registered(&blade, "1001", 131);
    let mut b = registered(&blade, "1002", 132);
    for (status, reason) in [(302, "Moved Temporarily"), (600, "Busy Everywhere")] {
        let (call, invite) = ringing(&mut a, &mut b, "");
        b.answer_with(
            &invite,
            status,
            reason,
            CALLEE_TAG,
            "Contact: <sip:1003@cc.example>\r\n",
        );
        let answer = a.response(&call.call_id, Method::Invite);
        assert_eq!(answer.status(), Some(status), "{}", first_line(&answer));
        if status == 302 {
            assert_eq!(answer.contacts().count(), 1, "the 3xx keeps its Contact");
        }
        b.request(Method::Ack, &call.call_id);
        a.ack_failure(&call, &answer);
        blade.wait_state("1002", "ready");
    }
}

/// A response that matches no transaction of the blade is dropped: nothing
/// reaches the UA named in a second Via.
#[test]
fn a_stray_response_is_dropped() {
    let blade = blade(false, 140);
    let mut a = registered(&blade, "1001", 141);
    let b = registered(&blade, "1002", 142);
    let stray = format!(
        "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-sbnotours\r\n{}\
         From: <{}>;tag=x\r\nTo: <{}>;tag=y\r\nCall-ID: stray@audit\r\nCSeq: 1 INVITE\r\n\
         Content-Length: 0\r\n\r\n",
        blade.sip,
        a.via("z9hG4bK-victim"),
        aor("1001"),
        aor("1002"),
    );
    b.send(stray);
    let got = a.collect_where(SILENCE, |m| m.call_id() == "stray@audit");
    assert!(got.is_empty(), "a stray response was relayed: {got:?}");
}

/// A CANCEL retransmitted gets its 200 again, and the callee one CANCEL; a
/// CANCEL of an INVITE already answered (486) gets 200 and changes nothing
/// (RFC 3261 §9.2, §16.10). Max-Forwards 1 is forwarded as 0.
#[test]
fn cancel_retransmitted_and_cancel_of_an_answered_invite() {
    let blade = blade(false, 150);
    let mut a = registered(&blade, "1001", 151);
    let mut b = registered(&blade, "1002", 152);
    let mut call = a.call("1002");
    let text = a
        .invite_text(&mut call, "")
        .replace("Max-Forwards: 70\r\n", "Max-Forwards: 1\r\n");
    a.send(&text);
    let invite = b.request(Method::Invite, &call.call_id);
    assert_eq!(invite.max_forwards(), Some(0));
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    assert_eq!(
        a.response(&call.call_id, Method::Invite).status(),
        Some(180)
    );
    a.cancel(&call);
    let first = a.response(&call.call_id, Method::Cancel);
    assert_eq!(first.status(), Some(200));
    a.cancel(&call);
    let again = a.recv_raw(common::WAIT).expect("the CANCEL's 200 again");
    assert!(again.starts_with(b"SIP/2.0 200 "), "{again:?}");
    let cancel = b.request(Method::Cancel, &call.call_id);
    b.answer(&cancel, 200, "OK", CALLEE_TAG);
    let more = b.collect_where(SILENCE, |m| m.method() == Some(Method::Cancel));
    assert!(
        more.is_empty(),
        "a second CANCEL reached the callee: {more:?}"
    );
    b.answer(&invite, 487, "Request Terminated", CALLEE_TAG);
    let terminated = a.response(&call.call_id, Method::Invite);
    assert_eq!(terminated.status(), Some(487));
    a.ack_failure(&call, &terminated);
    // Now answered: a late CANCEL is 200 (the transaction exists) and
    // nothing goes to the callee.
    a.cancel(&call);
    let late = a
        .recv_raw(common::WAIT)
        .expect("an answer to the late CANCEL");
    assert!(
        late.starts_with(b"SIP/2.0 200 "),
        "{:?}",
        String::from_utf8_lossy(&late)
    );
    let more = b.collect_where(SILENCE, |m| m.method() == Some(Method::Cancel));
    assert!(
        more.is_empty(),
        "a late CANCEL reached the callee: {more:?}"
    );
    blade.wait_no_sessions();
}

/// An OPTIONS to an agent is proxied to its phone and the phone's answer
/// (with its Allow) comes back.
#[test]
fn options_to_an_agent_is_proxied() {
    let blade = blade(false, 160);
    let mut a = registered(&blade, "1001", 161);
    let mut b = registered(&blade, "1002", 162);
    a.send(format!(
        "OPTIONS {} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <{}>;tag=o1\r\nTo: <{}>\r\n\
         Call-ID: opt@audit\r\nCSeq: 1 OPTIONS\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n",
        aor("1002"),
        a.via(&common::branch()),
        aor("1001"),
        aor("1002"),
    ));
    let got = b.request(Method::Options, "opt@audit");
    b.answer_with(&got, 200, "OK", CALLEE_TAG, "Allow: INVITE, ACK, BYE\r\n");
    let ok = a.response("opt@audit", Method::Options);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        header(&ok, HeaderName::Allow).as_deref(),
        Some("INVITE, ACK, BYE")
    );
}

/// The callee's own 100 Trying is not passed upstream (RFC 3261 §16.7
/// step 5): the caller has the blade's.
#[test]
fn the_callees_100_is_not_forwarded() {
    let blade = blade(false, 170);
    let mut a = registered(&blade, "1001", 171);
    let mut b = registered(&blade, "1002", 172);
    let (call, invite) = ringing(&mut a, &mut b, "");
    let ours = a.recv_raw(common::WAIT).expect("the blade's 100");
    assert!(ours.starts_with(b"SIP/2.0 100 "), "{ours:?}");
    b.send(
        common::response_text(&invite, 100, "Trying", CALLEE_TAG, &b.contact_uri(), "")
            .replace("Content-Length: 0", "X-From-Callee: 1\r\nContent-Length: 0"),
    );
    let relayed = a.collect_where(SILENCE, |m| m.status() == Some(100));
    assert!(
        relayed.is_empty(),
        "the callee's 100 was relayed: {relayed:?}"
    );
    b.answer(&invite, 486, "Busy Here", CALLEE_TAG);
    let busy = a.response(&call.call_id, Method::Invite);
    a.ack_failure(&call, &busy);
    blade.wait_no_sessions();
}

/// A non-INVITE request retransmitted after its final answer gets that
/// answer again from the blade's completed transaction (RFC 3261
/// §17.2.2), and the callee does not get it twice.
#[test]
fn a_message_retransmitted_after_its_answer_gets_the_answer_again() {
    let blade = blade(false, 180);
    let mut a = registered(&blade, "1001", 181);
    let mut b = registered(&blade, "1002", 182);
    let call_id = "msg-again@audit";
    let text = format!(
        "MESSAGE {} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <{}>;tag=m2\r\nTo: <{}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\
         Content-Length: 2\r\n\r\nhi",
        aor("1002"),
        a.via(&common::branch()),
        aor("1001"),
        aor("1002"),
    );
    a.send(&text);
    let got = b.request(Method::Message, call_id);
    b.answer(&got, 202, "Accepted", CALLEE_TAG);
    let first = a.recv_raw(common::WAIT).expect("the 202");
    assert!(first.starts_with(b"SIP/2.0 202 "), "{first:?}");
    a.send(&text);
    let again = a.recv_raw(common::WAIT).expect("the 202 again");
    assert_eq!(again, first);
    let more = b.collect_where(SILENCE, |m| m.method() == Some(Method::Message));
    assert!(
        more.is_empty(),
        "the callee got the MESSAGE twice: {more:?}"
    );
}

/// An INVITE retransmitted while it rings gets the latest provisional
/// answer again, the callee's 180 rather than the blade's 100 (RFC 3261
/// §17.2.1), and is not forwarded a second time.
#[test]
fn an_invite_retransmitted_while_ringing_gets_the_180_again() {
    let blade = blade(false, 190);
    let mut a = registered(&blade, "1001", 191);
    let mut b = registered(&blade, "1002", 192);
    let (call, invite) = ringing(&mut a, &mut b, "");
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180));
    a.retransmit_invite(&call);
    let again = a
        .recv_raw(common::WAIT)
        .expect("an answer to the retransmission");
    assert!(
        again.starts_with(b"SIP/2.0 180 "),
        "{:?}",
        String::from_utf8_lossy(&again)
    );
    let more = b.collect_where(SILENCE, |m| m.method() == Some(Method::Invite));
    assert!(
        more.is_empty(),
        "a second INVITE reached the callee: {more:?}"
    );
    a.cancel(&call);
    let cancel = b.request(Method::Cancel, &call.call_id);
    b.answer(&cancel, 200, "OK", CALLEE_TAG);
    b.answer(&invite, 487, "Request Terminated", CALLEE_TAG);
    let done = a.response(&call.call_id, Method::Invite);
    a.ack_failure(&call, &done);
    blade.wait_no_sessions();
}

/// A REGISTER for an extension nobody has: 404 without auth; with auth a
/// challenge, then 403 whatever the credentials (the registrar does not
/// tell which extensions exist).
#[test]
fn a_register_for_an_unknown_extension() {
    for (auth, host) in [(false, 200u8), (true, 203)] {
        let blade = blade(auth, host);
        let mut phone = Ua::new_at(blade.sip, "7777", ip(host + 1));
        let (answer, sent) = phone.register_as(&phone.binding_headers(3600), "guess");
        let want = if auth { 403 } else { 404 };
        assert_eq!(
            answer.status(),
            Some(want),
            "auth {auth}: {}",
            first_line(&answer)
        );
        assert_eq!(sent.is_some(), auth, "challenged only with auth");
    }
}

/// A phone set up with the domain as its outbound proxy preloads
/// `Route: <sip:DOMAIN;lr>`: that Route names the blade (the domain's
/// proxy) and is removed (RFC 3261 §16.4), not passed on to the callee.
#[test]
fn a_preloaded_route_naming_the_domain_is_removed() {
    let blade = blade(false, 210);
    let mut a = registered(&blade, "1001", 211);
    let mut b = registered(&blade, "1002", 212);
    let outbound = format!("<sip:{DOMAIN};lr>");
    let (mut call, invite) = ringing(&mut a, &mut b, &format!("Route: {outbound}\r\n"));
    assert_eq!(
        invite.routes().count(),
        0,
        "the Route naming the domain is gone"
    );
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    call.learn(&ok);
    // Some phones put their outbound proxy before the dialog's route set
    // on in-dialog requests too: both Routes are the blade's.
    call.routes.insert(0, outbound);
    a.ack_2xx(&call);
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.routes().count(), 0, "both Routes popped from the ACK");
    a.bye(&mut call);
    let bye = b.request(Method::Bye, &call.call_id);
    assert_eq!(bye.routes().count(), 0, "both Routes popped from the BYE");
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    assert_eq!(a.response(&call.call_id, Method::Bye).status(), Some(200));
    blade.wait_no_sessions();
}

/// A phone refreshing its registration reuses the nonce with the next
/// nonce count (RFC 7616 §3.4): taken without a new challenge; the same
/// count again is a replay, and a lower one too.
#[test]
fn a_nonce_reused_with_the_next_count_is_taken() {
    use sipblade::registrar::digest::{Credentials, Secret, expected_response};
    let blade = blade(true, 220);
    let mut phone = Ua::new_at(blade.sip, "1003", ip(221));
    let headers = phone.binding_headers(3600);
    let challenge = phone.register_once(&headers);
    let d = challenge
        .www_authenticate()
        .and_then(|v| v.digest())
        .expect("a challenge");
    let nonce = d.nonce.expect("a nonce").trim_matches('"').to_owned();
    let uri = format!("sip:{DOMAIN}");
    let line = |nc: &str| {
        let creds = Credentials {
            username: "1003",
            realm: DOMAIN,
            nonce: &nonce,
            uri: &uri,
            response: "",
            algorithm: Some("MD5"),
            cnonce: Some("cn"),
            qop: Some("auth"),
            nc: Some(nc),
            opaque: None,
        };
        let response = expected_response("REGISTER", &creds, Secret::Password(&password("1003")))
            .expect("a response");
        format!(
            "Authorization: Digest username=\"1003\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", \
             uri=\"{uri}\", response=\"{response}\", algorithm=MD5, cnonce=\"cn\", qop=auth, nc={nc}\r\n"
        )
    };
    for (nc, want) in [
        ("00000001", 200),
        ("00000002", 200),
        ("00000002", 401),
        ("00000001", 401),
        ("00000003", 200),
    ] {
        let answer = phone.register_once(&format!("{headers}{}", line(nc)));
        assert_eq!(
            answer.status(),
            Some(want),
            "nc {nc}: {}",
            first_line(&answer)
        );
    }
}

/// An RFC 2543 caller (a Via without a `z9hG4bK` branch): its
/// retransmission, CANCEL and ACK still match its INVITE's transaction
/// (RFC 3261 §17.2.3's fallback).
#[test]
fn an_rfc_2543_caller_without_branches() {
    let blade = blade(false, 230);
    let mut a = registered(&blade, "1001", 231);
    let mut b = registered(&blade, "1002", 232);
    let mut call = a.call("1002");
    let old_via = format!("Via: SIP/2.0/UDP {}\r\n", a.addr);
    let text = a.invite_text(&mut call, "");
    let text = text.replacen(&a.via(&call.branch), &old_via, 1);
    call.invite = text.clone();
    a.send(&text);
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    assert_eq!(
        a.response(&call.call_id, Method::Invite).status(),
        Some(180)
    );
    a.send(&text);
    let more = b.collect_where(SILENCE, |m| m.method() == Some(Method::Invite));
    assert!(
        more.is_empty(),
        "the retransmission was forwarded: {more:?}"
    );
    let cancel = format!(
        "CANCEL {} SIP/2.0\r\n{old_via}Max-Forwards: 70\r\nFrom: <{}>;tag={}\r\nTo: <{}>\r\n\
         Call-ID: {}\r\nCSeq: {} CANCEL\r\nContent-Length: 0\r\n\r\n",
        aor("1002"),
        aor("1001"),
        call.from_tag,
        aor("1002"),
        call.call_id,
        call.cseq
    );
    a.send(cancel);
    assert_eq!(
        a.response(&call.call_id, Method::Cancel).status(),
        Some(200)
    );
    let cancel = b.request(Method::Cancel, &call.call_id);
    b.answer(&cancel, 200, "OK", CALLEE_TAG);
    b.answer(&invite, 487, "Request Terminated", CALLEE_TAG);
    let done = a.response(&call.call_id, Method::Invite);
    assert_eq!(done.status(), Some(487));
    let to = header(&done, HeaderName::To).expect("a To");
    a.send(format!(
        "ACK {} SIP/2.0\r\n{old_via}Max-Forwards: 70\r\nFrom: <{}>;tag={}\r\nTo: {to}\r\n\
         Call-ID: {}\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
        aor("1002"),
        aor("1001"),
        call.from_tag,
        call.call_id,
        call.cseq
    ));
    // The 487 is not sent again once ACKed (timer G stops).
    let again = a.recv_raw(Duration::from_millis(1200));
    assert!(again.is_none(), "the 487 came again: {again:?}");
    blade.wait_no_sessions();
}

/// A Contact as phones write it with RFC 5626 / RFC 3840 parameters: a
/// quoted display name with a comma, `+sip.instance` quoting angle
/// brackets, a `methods` list quoting commas. One contact, bound as such;
/// the agent is then reached at it.
#[test]
fn a_contact_with_quoted_commas_and_brackets_is_one_contact() {
    let blade = blade(false, 240);
    let mut a = registered(&blade, "1001", 241);
    let mut b = Ua::new_at(blade.sip, "1002", ip(242));
    let contact = format!(
        "Contact: \"Desk, 2nd floor\" <{}>;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\";\
         reg-id=1;methods=\"INVITE,ACK,BYE,CANCEL,MESSAGE\";expires=600\r\nSupported: outbound, path\r\n",
        b.contact_uri()
    );
    let ok = b.register_once(&contact);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert_eq!(ok.contacts().count(), 1);
    assert_eq!(listed_expiry(&ok), Some(600));
    assert_eq!(blade.agent("1002")["contact"], b.addr.to_string());
    let (call, invite) = ringing(&mut a, &mut b, "");
    assert_eq!(invite.request_uri().unwrap().as_str(), b.contact_uri());
    b.answer(&invite, 486, "Busy Here", CALLEE_TAG);
    let busy = a.response(&call.call_id, Method::Invite);
    a.ack_failure(&call, &busy);
    blade.wait_no_sessions();
}

/// Compact header names (RFC 3261 §7.3.3), as some phones send them:
/// `v`, `f`, `t`, `i`, `m`, `c`, `l`. The call goes through, the body
/// intact, and the answers come back.
#[test]
fn a_call_in_compact_headers() {
    let blade = blade(false, 245);
    let mut a = registered(&blade, "1001", 246);
    let mut b = registered(&blade, "1002", 247);
    let mut call = a.call("1002");
    let text = a
        .invite_text(&mut call, "")
        .replace("Via: ", "v: ")
        .replace("From: ", "f: ")
        .replace("To: ", "t: ")
        .replace("Call-ID: ", "i: ")
        .replace("Contact: ", "m: ")
        .replace("Content-Type: ", "c: ")
        .replace("Content-Length: ", "l: ");
    call.invite = text.clone();
    a.send(&text);
    let invite = b.request(Method::Invite, &call.call_id);
    assert_eq!(
        invite.body(),
        text.split_once("\r\n\r\n").unwrap().1.as_bytes()
    );
    assert_eq!(invite.vias().count(), 2);
    answer_and_hang_up(&mut a, &mut b, &mut call, &invite);
    blade.wait_no_sessions();
}

/// Credentials folded over several lines (RFC 3261 §7.3.1 line folding,
/// which older phones use for their long Authorization) are read as one.
#[test]
fn folded_credentials_are_taken() {
    let blade = blade(true, 248);
    let mut phone = Ua::new_at(blade.sip, "1004", ip(249));
    let headers = phone.binding_headers(3600);
    let challenge = phone.register_once(&headers);
    assert_eq!(challenge.status(), Some(401));
    let line = phone.authorization(
        &challenge,
        false,
        "REGISTER",
        &format!("sip:{DOMAIN}"),
        &password("1004"),
    );
    let folded = line.replace(", ", ",\r\n   ");
    assert!(folded.matches("\r\n").count() > 3, "{folded}");
    let ok = phone.register_once(&format!("{headers}{folded}"));
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
}
