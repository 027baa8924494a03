//! Cross-blade calls with digest authentication on (`[agents] auth =
//! true`, SPEC §4 and §5): agents register with a 401 challenge first, and
//! their out-of-dialog requests are challenged by their own blade (407,
//! Proxy-Authorization) before any hosting is asked for (SPEC §2). The
//! target blade trusts the source blade's hosting token, not the caller's
//! credentials, and in-dialog requests (ACK, BYE, re-INVITE) follow their
//! route set unchallenged, as out-of-dialog requests only are challenged.
//!
//! Addresses: 127.0.12.x only, one range per test (blades, then phones):
//! 1-2 (3-4), 11-12 (13-14), 21-22 (23-24), 31-32 (33-36), 41-42
//! (43-44), 51-52 (53-55), 61-62 (63-65), 71-72 (73-75), 81-82 (83-85),
//! 91-92 (93-96), 101-102 (103-105).

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::calls::{CALLEE_TAG, assert_hosted, callee_in_dialog, confirm, hang_up, wait_ready};
use common::cluster::TestCluster;
use common::{Call, DOMAIN, Ua, aor, branch, first_line, password, unique};
use sipblade::registrar::digest::{Credentials, Secret, expected_response};
use sipblade::sip::{Message, Method};

/// Long enough to see that a message does not arrive: every message in
/// these tests crosses loopback in well under a millisecond.
const QUIET: Duration = Duration::from_millis(300);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 12, last)
}

/// `n` blades with `cores` cores each on 127.0.12.`first`, …, with digest
/// authentication on; waits until every link is up.
fn auth_cluster(n: usize, first: u8, cores: usize) -> TestCluster {
    let mut cluster = TestCluster::new_in(12, n, first, 30, cores);
    cluster.auth = true;
    for i in 0..n {
        cluster.start_blade(i);
    }
    cluster.wait_linked();
    cluster
}

/// Registers `ext` on member `i` from a phone on `host`, checking the
/// digest exchange: a 401 with a Digest challenge, then 200.
fn register_with_digest(cluster: &TestCluster, i: usize, ext: &str, host: u8) -> Ua {
    let mut ua = Ua::new_at(cluster.members[i].sip, ext, ip(host));
    let binding = ua.binding_headers(3600);
    let challenge = ua.register_once(&binding);
    assert_eq!(
        challenge.status(),
        Some(401),
        "{ext} is challenged first: {}",
        first_line(&challenge)
    );
    let digest = challenge.www_authenticate().and_then(|v| v.digest());
    assert!(
        digest.is_some_and(|d| d.realm == Some(DOMAIN)),
        "a Digest challenge in the domain's realm"
    );
    let auth = ua.authorization(
        &challenge,
        false,
        "REGISTER",
        &format!("sip:{DOMAIN}"),
        &password(ext),
    );
    let ok = ua.register_once(&format!("{binding}{auth}"));
    assert_eq!(ok.status(), Some(200), "{ext}: {}", first_line(&ok));
    ua
}

/// `a` sends the INVITE of `call` with `extra` header lines and gets a
/// final answer (after any 100), which it ACKs when it is a failure.
fn invite_final(a: &mut Ua, call: &mut Call, extra: &str) -> Message {
    a.invite(call, extra);
    let resp = a.response(&call.call_id, Method::Invite);
    if resp.status().is_some_and(|s| s >= 300) {
        a.ack_failure(call, &resp);
    }
    resp
}

/// `a` sends the INVITE of `call` without credentials: it is challenged
/// (407 with a Digest Proxy-Authenticate), which it ACKs; returns the 407.
fn challenged(a: &mut Ua, call: &mut Call) -> Message {
    let challenge = invite_final(a, call, "");
    assert_eq!(
        challenge.status(),
        Some(407),
        "an INVITE without credentials: {}",
        first_line(&challenge)
    );
    assert!(
        challenge
            .proxy_authenticate()
            .and_then(|v| v.digest())
            .is_some_and(|d| d.realm == Some(DOMAIN) && d.nonce.is_some()),
        "a Digest Proxy-Authenticate"
    );
    challenge
}

/// The Proxy-Authorization line with which `username` answers `nonce`
/// for `method` to `uri` with `password`, counting `nc`.
fn proxy_authorization(
    username: &str,
    nonce: &str,
    method: &str,
    uri: &str,
    password: &str,
    nc: u32,
) -> String {
    let cnonce = format!("c{}", unique());
    let nc = format!("{nc:08x}");
    let creds = Credentials {
        username,
        realm: DOMAIN,
        nonce,
        uri,
        response: "",
        algorithm: Some("MD5"),
        cnonce: Some(&cnonce),
        qop: Some("auth"),
        nc: Some(&nc),
        opaque: None,
    };
    let response =
        expected_response(method, &creds, Secret::Password(password)).expect("a digest response");
    format!(
        "Proxy-Authorization: Digest username=\"{username}\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", \
         uri=\"{uri}\", response=\"{response}\", algorithm=MD5, cnonce=\"{cnonce}\", qop=auth, \
         nc={nc}\r\n"
    )
}

/// The nonce of the Digest challenge in the 407 `challenge`.
fn nonce_of(challenge: &Message) -> String {
    challenge
        .proxy_authenticate()
        .and_then(|v| v.digest())
        .and_then(|d| d.nonce)
        .expect("a nonce")
        .to_owned()
}

/// Whether the Digest challenge in the 407 `challenge` says `stale=true`.
fn is_stale(challenge: &Message) -> bool {
    challenge
        .proxy_authenticate()
        .and_then(|v| v.digest())
        .and_then(|d| d.stale)
        .is_some_and(|s| s.eq_ignore_ascii_case("true"))
}

/// `a` calls `b` (on another blade) with digest authentication: a 407,
/// then the INVITE again with Proxy-Authorization, which reaches `b`
/// through both blades without the caller's credentials; `b` rings.
/// Returns the call (after the 180) and the INVITE as `b` got it.
fn authenticated_ringing_call(a: &mut Ua, b: &mut Ua) -> (Call, Message) {
    let mut call = a.call(&b.ext);
    let challenge = challenged(a, &mut call);
    let creds = a.authorization(&challenge, true, "INVITE", &aor(&b.ext), &password(&a.ext));
    a.invite(&mut call, &creds);
    let invite = b.request(Method::Invite, &call.call_id);
    assert_eq!(invite.request_uri().unwrap().as_str(), b.contact_uri());
    assert_eq!(invite.vias().count(), 3, "caller's, S's and T's Vias");
    assert_eq!(invite.record_routes().count(), 2, "S and T Record-Route");
    assert!(
        invite.proxy_authorization().is_none(),
        "the caller's credentials do not reach the callee"
    );
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180), "{}", first_line(&ringing));
    (call, invite)
}

/// [`authenticated_ringing_call`], answered: returns the call after the
/// caller's 200 OK, and the INVITE as `b` got it.
fn authenticated_cross_call(a: &mut Ua, b: &mut Ua) -> (Call, Message) {
    let (mut call, invite) = authenticated_ringing_call(a, b);
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    assert_eq!(call.routes.len(), 2, "the route set has both blades");
    (call, invite)
}

/// `sipblade_calls_total{outcome, route}` of member `i`.
fn calls(cluster: &TestCluster, i: usize, outcome: &str, route: &str) -> f64 {
    cluster.metric(
        i,
        &format!("sipblade_calls_total{{outcome=\"{outcome}\",route=\"{route}\"}}"),
    )
}

/// No hosting was asked for or granted: S measured no host round trip, T
/// granted nothing, `ext` is ready on T, and neither blade has a session.
fn assert_no_hosting(cluster: &TestCluster, s: usize, t: usize, ext: &str) {
    assert_eq!(
        cluster.metric(s, "sipblade_hosting_rtt_seconds_count"),
        0.0,
        "S asked T for no hosting"
    );
    assert_eq!(cluster.metric(t, "sipblade_hosting_granted_total"), 0.0);
    let agent = cluster.agent(t, ext);
    assert_eq!(agent["state"], "ready", "{agent}");
    assert!(cluster.sessions(s).is_empty(), "{:?}", cluster.sessions(s));
    assert!(cluster.sessions(t).is_empty(), "{:?}", cluster.sessions(t));
}

/// A target refresh of `text` (an in-dialog INVITE without a body): a
/// Contact of `ua`'s added.
fn with_contact(text: &str, ua: &Ua) -> String {
    text.replacen(
        "Content-Length: 0\r\n",
        &format!("Contact: <{}>\r\nContent-Length: 0\r\n", ua.contact_uri()),
        1,
    )
}

/// Agents on two blades register with digest (401, then 200). A's
/// cross-blade INVITE is challenged by S (407) before S asks T for
/// anything; the authenticated retry hosts B on T for the call (T trusts
/// S's token and does not challenge again), the ACK and BYE cross both
/// blades unchallenged, and B is ready on T after.
#[test]
fn an_authenticated_cross_blade_call_is_challenged_once_then_hosts_the_callee() {
    let cluster = auth_cluster(2, 1, 1);
    let (s, t) = (0, 1);
    let mut a = register_with_digest(&cluster, s, "1001", 3);
    let mut b = register_with_digest(&cluster, t, "1002", 4);
    for (i, ext) in [(s, "1001"), (t, "1002")] {
        cluster.wait_state(i, ext, "ready");
        assert_eq!(cluster.metric(i, "sipblade_registrations_total"), 1.0);
    }

    // The challenge comes from S, before any hosting.
    let mut call = a.call("1002");
    let challenge = challenged(&mut a, &mut call);
    assert!(
        b.collect_where(QUIET, |m| m.is_request()).is_empty(),
        "B's phone is not rung by an unauthenticated INVITE"
    );
    assert_no_hosting(&cluster, s, t, "1002");
    assert_eq!(calls(&cluster, s, "failed", "cross_blade"), 0.0);
    assert_eq!(
        calls(&cluster, s, "failed", "local"),
        0.0,
        "a 407 is no outcome"
    );

    // The retry, in the same call.
    let creds = a.authorization(&challenge, true, "INVITE", &aor("1002"), &password("1001"));
    a.invite(&mut call, &creds);
    let invite = b.request(Method::Invite, &call.call_id);
    assert!(invite.proxy_authorization().is_none());
    assert_eq!(invite.record_routes().count(), 2);
    assert_hosted(&cluster, t, "1002", "blade-1");
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180), "{}", first_line(&ringing));
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);

    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_eq!(cluster.agent(s, "1001")["state"], "in_call");
    assert_eq!(cluster.agent(s, "1002")["state"], "in_call");
    let sessions = cluster.sessions(s);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["hosted"], serde_json::json!(["1002"]));

    confirm(&mut a, &mut b, &call);
    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, t, "1002");
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.sessions(s).is_empty());
    assert_eq!(calls(&cluster, s, "answered", "cross_blade"), 1.0);
    assert_eq!(cluster.metric(s, "sipblade_hosting_rtt_seconds_count"), 1.0);
    assert_eq!(cluster.metric(t, "sipblade_hosting_granted_total"), 1.0);
}

/// A MESSAGE to an agent on another blade is challenged like a call (SPEC
/// §5 names MESSAGE); once authenticated it is relayed through T, without
/// the credentials, and hosts nobody.
#[test]
fn an_authenticated_message_to_another_blade_is_relayed_without_credentials() {
    let cluster = auth_cluster(2, 41, 1);
    let (s, t) = (0, 1);
    let mut a = register_with_digest(&cluster, s, "1001", 43);
    let mut b = register_with_digest(&cluster, t, "1002", 44);

    let call_id = format!("msg-{}@test", unique());
    let message = |a: &Ua, cseq: u32, extra: &str| {
        format!(
            "MESSAGE {} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <{}>;tag=m1\r\nTo: <{}>\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} MESSAGE\r\n{extra}Content-Type: text/plain\r\n\
             Content-Length: 5\r\n\r\nhello",
            aor("1002"),
            a.via(&branch()),
            aor("1001"),
            aor("1002"),
        )
    };
    a.send(message(&a, 1, ""));
    let challenge = a.response(&call_id, Method::Message);
    assert_eq!(challenge.status(), Some(407), "{}", first_line(&challenge));
    let creds = a.authorization(&challenge, true, "MESSAGE", &aor("1002"), &password("1001"));
    a.send(message(&a, 2, &creds));
    let relayed = b.request(Method::Message, &call_id);
    assert_eq!(relayed.vias().count(), 3, "through S and T");
    assert!(relayed.proxy_authorization().is_none());
    b.answer(&relayed, 200, "OK", "b1");
    let ok = a.response(&call_id, Method::Message);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert_no_hosting(&cluster, s, t, "1002");
}

/// A CANCEL of an INVITE that was challenged and sent again with SHA-256
/// credentials (its CANCEL names the retry's branch; a CANCEL is never
/// challenged, RFC 3261 §22.1) crosses both blades: B's INVITE is
/// cancelled, A gets 487, and B is handed back. A CANCEL of the challenged
/// INVITE itself cancels nothing.
#[test]
fn a_cancel_of_a_challenged_then_retried_invite_hands_the_callee_back() {
    let cluster = auth_cluster(2, 11, 1);
    let (s, t) = (0, 1);
    let mut a = register_with_digest(&cluster, s, "1001", 13);
    let mut b = register_with_digest(&cluster, t, "1002", 14);

    let mut call = a.call("1002");
    let challenge = challenged(&mut a, &mut call);
    let first = call.clone();
    // SHA-256 this time (RFC 8760; the challenge offers MD5 and SHA-256).
    let creds = a.authorization_with(
        &challenge,
        true,
        "INVITE",
        &aor("1002"),
        &password("1001"),
        Some("SHA-256"),
    );
    a.invite(&mut call, &creds);
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180), "{}", first_line(&ringing));
    assert_hosted(&cluster, t, "1002", "blade-1");

    // A CANCEL of the challenged INVITE (its branch and CSeq) has nothing
    // left to cancel: the retry rings on.
    a.cancel(&first);
    let late = a.response(&call.call_id, Method::Cancel);
    assert!(
        matches!(late.status(), Some(200 | 481)),
        "{}",
        first_line(&late)
    );
    assert!(
        b.collect_where(QUIET, |m| m.method() == Some(Method::Cancel))
            .is_empty(),
        "the retry is not cancelled"
    );
    assert_hosted(&cluster, t, "1002", "blade-1");

    a.cancel(&call);
    let cancelled = a.response(&call.call_id, Method::Cancel);
    assert_eq!(cancelled.status(), Some(200), "{}", first_line(&cancelled));
    let cancel = b.request(Method::Cancel, &call.call_id);
    assert_eq!(cancel.cseq().seq, invite.cseq().seq, "the retry's CSeq");
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
}

/// In-dialog requests are not challenged (SPEC §5 challenges out-of-dialog
/// requests; an operator does not want a hold to cost a round trip, nor a
/// hang-up to fail on a stale nonce): A's re-INVITE (hold) and B's
/// re-INVITE (unhold) cross both blades and are answered by the other
/// phone, B's BYE ends the call, and B is handed back.
#[test]
fn in_dialog_requests_of_an_authenticated_call_cross_both_blades_unchallenged() {
    let cluster = auth_cluster(2, 21, 1);
    let (s, t) = (0, 1);
    let mut a = register_with_digest(&cluster, s, "1001", 23);
    let mut b = register_with_digest(&cluster, t, "1002", 24);
    let (mut call, invite) = authenticated_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    // A's re-INVITE, S → T → B.
    call.cseq += 1;
    let reinvite = with_contact(&a.in_dialog_text(&call, "INVITE", call.cseq), &a);
    a.send(&reinvite);
    let got = b.request(Method::Invite, &call.call_id);
    assert_eq!(got.cseq().seq, call.cseq, "the re-INVITE, not a challenge");
    b.answer(&got, 200, "OK", CALLEE_TAG);
    let ok = a.expect_where("200 to the re-INVITE", |m| {
        !m.is_request()
            && m.call_id() == call.call_id
            && m.cseq().seq == call.cseq
            && m.status() != Some(100)
    });
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    a.ack_2xx(&call);
    b.request(Method::Ack, &call.call_id);
    assert_hosted(&cluster, t, "1002", "blade-1");

    // B's re-INVITE, T → S → A.
    let breinvite = with_contact(&callee_in_dialog(&b, &invite, "INVITE", 1), &b);
    b.send(&breinvite);
    let got = a.request(Method::Invite, &call.call_id);
    assert_eq!(got.cseq().seq, 1, "B's re-INVITE, not a challenge");
    assert_eq!(got.vias().count(), 3, "through T and S");
    a.answer(&got, 200, "OK", "unused");
    let ok = b.expect_where("200 to B's re-INVITE", |m| {
        !m.is_request()
            && m.call_id() == call.call_id
            && m.cseq().method == Method::Invite
            && m.status() != Some(100)
    });
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    let ack = callee_in_dialog(&b, &invite, "ACK", 1);
    b.send(ack);
    a.request(Method::Ack, &call.call_id);

    // B hangs up, T → S → A.
    b.send(callee_in_dialog(&b, &invite, "BYE", 2));
    let bye = a.request(Method::Bye, &call.call_id);
    a.answer(&bye, 200, "OK", "unused");
    let done = b.expect_where("200 to B's BYE", |m| {
        !m.is_request()
            && m.call_id() == call.call_id
            && m.cseq().method == Method::Bye
            && m.status() != Some(100)
    });
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    assert!(
        a.collect_where(QUIET, |m| !m.is_request() && m.status() == Some(407))
            .is_empty()
            && b.collect_where(QUIET, |m| !m.is_request() && m.status() == Some(407))
                .is_empty(),
        "nothing in the dialog was challenged"
    );
    wait_ready(&cluster, t, "1002");
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.sessions(s).is_empty());
}

/// A wrong password is refused 403 (SPEC §5), and so is an unknown caller
/// or a provisioned agent that is not logged in, after the same 407 (the
/// answer does not tell which extensions exist). None of them makes S ask
/// T for a hosting or rings B.
#[test]
fn wrong_credentials_or_callers_are_refused_without_a_hosting_request() {
    let cluster = auth_cluster(2, 31, 1);
    let (s, t) = (0, 1);
    let mut a = register_with_digest(&cluster, s, "1001", 33);
    let mut b = register_with_digest(&cluster, t, "1002", 34);

    // A, with a wrong password.
    let mut call = a.call("1002");
    let challenge = challenged(&mut a, &mut call);
    let wrong = a.authorization(&challenge, true, "INVITE", &aor("1002"), "not-it");
    let refused = invite_final(&mut a, &mut call, &wrong);
    assert_eq!(refused.status(), Some(403), "{}", first_line(&refused));

    // A, with 1003's own username and password: not A's credentials.
    let mut call = a.call("1002");
    let challenge = challenged(&mut a, &mut call);
    let borrowed = proxy_authorization(
        "1003",
        &nonce_of(&challenge),
        "INVITE",
        &aor("1002"),
        &password("1003"),
        1,
    );
    let refused = invite_final(&mut a, &mut call, &borrowed);
    assert_eq!(refused.status(), Some(403), "{}", first_line(&refused));

    // A stranger (no such extension), and 1003 (provisioned, logged in
    // nowhere) with its right password: 407, then 403.
    for (ext, host) in [("9999", 35), ("1003", 36)] {
        let mut ua = Ua::new_at(cluster.members[s].sip, ext, ip(host));
        let mut call = ua.call("1002");
        let challenge = challenged(&mut ua, &mut call);
        let creds = ua.authorization(&challenge, true, "INVITE", &aor("1002"), &password(ext));
        let refused = invite_final(&mut ua, &mut call, &creds);
        assert_eq!(
            refused.status(),
            Some(403),
            "{ext}: {}",
            first_line(&refused)
        );
    }

    assert!(
        b.collect_where(QUIET, |m| m.is_request()).is_empty(),
        "B's phone is never rung"
    );
    assert_no_hosting(&cluster, s, t, "1002");
    assert_eq!(cluster.agent(s, "1001")["state"], "ready");
}

/// Credentials are good for one request: the same Proxy-Authorization
/// sent again (a replay, in a new call) is challenged again, and a nonce
/// of another blade (T's, shown to S) is too; neither hosts B. A nonce
/// reused with a higher count (a phone that caches it, RFC 7616 §3.4) is
/// taken. Where it is stale, the challenge says so.
#[test]
fn replayed_or_foreign_nonces_are_challenged_again_and_host_nobody() {
    let cluster = auth_cluster(2, 51, 1);
    let (s, t) = (0, 1);
    let mut a = register_with_digest(&cluster, s, "1001", 53);
    let mut b = register_with_digest(&cluster, t, "1002", 54);

    let mut call = a.call("1002");
    let challenge = challenged(&mut a, &mut call);
    let nonce = nonce_of(&challenge);
    let creds = proxy_authorization("1001", &nonce, "INVITE", &aor("1002"), &password("1001"), 1);
    a.invite(&mut call, &creds);
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 486, "Busy Here", CALLEE_TAG);
    b.request(Method::Ack, &call.call_id);
    let busy = a.response(&call.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    a.ack_failure(&call, &busy);
    wait_ready(&cluster, t, "1002");
    assert_eq!(cluster.metric(t, "sipblade_hosting_granted_total"), 1.0);

    // The same credentials, replayed in a new call: a challenge again.
    let mut replay = a.call("1002");
    let again = invite_final(&mut a, &mut replay, &creds);
    assert_eq!(
        again.status(),
        Some(407),
        "a replay: {}",
        first_line(&again)
    );
    assert_ne!(nonce_of(&again), nonce, "a fresh nonce");

    // A nonce T issued (to a phone of A's on T), shown to S: S cannot
    // open it, so it challenges, not refuses.
    let mut on_t = Ua::new_at(cluster.members[t].sip, "1001", ip(55));
    let mut probe = on_t.call("1002");
    let t_challenge = challenged(&mut on_t, &mut probe);
    let foreign = proxy_authorization(
        "1001",
        &nonce_of(&t_challenge),
        "INVITE",
        &aor("1002"),
        &password("1001"),
        1,
    );
    let mut call3 = a.call("1002");
    let again = invite_final(&mut a, &mut call3, &foreign);
    assert_eq!(
        again.status(),
        Some(407),
        "T's nonce: {}",
        first_line(&again)
    );

    assert!(
        b.collect_where(QUIET, |m| m.is_request()).is_empty(),
        "neither rang B"
    );
    assert_eq!(
        cluster.metric(t, "sipblade_hosting_granted_total"),
        1.0,
        "no hosting past the first call"
    );
    assert!(cluster.sessions(s).is_empty());

    // The first nonce, counted on (nc 2): accepted without a challenge.
    let mut call4 = a.call("1002");
    let cached = proxy_authorization("1001", &nonce, "INVITE", &aor("1002"), &password("1001"), 2);
    a.invite(&mut call4, &cached);
    let invite = b.request(Method::Invite, &call4.call_id);
    b.answer(&invite, 486, "Busy Here", CALLEE_TAG);
    let busy = a.response(&call4.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    a.ack_failure(&call4, &busy);
    wait_ready(&cluster, t, "1002");
    assert!(!is_stale(&again));
}

/// B, hosted by S during an authenticated call, refreshes its
/// registration on T with digest (401, then 200): it stays hosted and in
/// the call; a call to B from C on T meanwhile is challenged by T, then
/// decided by S (486); after the call B is ready on T at its contact.
#[test]
fn a_hosted_agent_refreshes_its_registration_with_digest_during_the_call() {
    let cluster = auth_cluster(2, 61, 1);
    let (s, t) = (0, 1);
    let mut a = register_with_digest(&cluster, s, "1001", 63);
    let mut b = register_with_digest(&cluster, t, "1002", 64);
    let mut c = register_with_digest(&cluster, t, "1003", 65);
    let (mut call, _) = authenticated_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);
    assert_hosted(&cluster, t, "1002", "blade-1");

    let refreshed = b.register(3600);
    assert_eq!(refreshed.status(), Some(200), "{}", first_line(&refreshed));
    assert_eq!(cluster.metric(t, "sipblade_registrations_total"), 3.0);
    assert_hosted(&cluster, t, "1002", "blade-1");
    assert_eq!(cluster.agent(t, "1002")["contact"], b.addr.to_string());
    assert_eq!(cluster.agent(s, "1002")["state"], "in_call");
    assert_eq!(cluster.sessions(s).len(), 1);

    // C (on T) calls the hosted B: T challenges C, then S decides.
    let mut busy_call = c.call("1002");
    let challenge = challenged(&mut c, &mut busy_call);
    let creds = c.authorization(&challenge, true, "INVITE", &aor("1002"), &password("1003"));
    let busy = invite_final(&mut c, &mut busy_call, &creds);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    assert!(
        b.collect_where(QUIET, |m| m.call_id() == busy_call.call_id)
            .is_empty(),
        "B's phone is not rung by C"
    );

    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, t, "1002");
    assert_eq!(cluster.agent(t, "1002")["contact"], b.addr.to_string());
    cluster.wait_state(t, "1003", "ready");
}

/// Two cores per blade with auth on: a caller and callees whose
/// extensions live on different cores. Each INVITE's challenge and its
/// retry meet on the callee's core (its nonce is that core's), the call
/// hosts the callee, and it is handed back. A nonce from one core shown to
/// another is challenged again with `stale=true`, so the phone retries
/// with the new nonce and no password prompt. The callee's BYE crosses
/// both blades' cores unchallenged.
#[test]
fn authenticated_cross_blade_calls_work_with_two_cores_per_blade() {
    let cluster = auth_cluster(2, 71, 2);
    let (s, t) = (0, 1);
    let core = |ext: &str| sipblade::proxy::route::shard_of(ext.as_bytes(), 2);
    // Two callees on T on different cores.
    assert_ne!(
        core("1002"),
        core("1003"),
        "the test needs two cores' agents"
    );
    let mut a = register_with_digest(&cluster, s, "1001", 73);
    let mut b = register_with_digest(&cluster, t, "1002", 74);
    let mut c = register_with_digest(&cluster, t, "1003", 75);

    for callee in [&mut b, &mut c] {
        let (mut call, _) = authenticated_cross_call(&mut a, callee);
        assert_hosted(&cluster, t, &callee.ext, "blade-1");
        confirm(&mut a, callee, &call);
        hang_up(&mut a, callee, &mut call);
        wait_ready(&cluster, t, &callee.ext);
        cluster.wait_state(s, "1001", "ready");
    }

    // 1002's core's nonce, shown for a call to 1003 (another core).
    let mut call = a.call("1002");
    let challenge = challenged(&mut a, &mut call);
    let other_core = proxy_authorization(
        "1001",
        &nonce_of(&challenge),
        "INVITE",
        &aor("1003"),
        &password("1001"),
        1,
    );
    let mut call = a.call("1003");
    let stale = invite_final(&mut a, &mut call, &other_core);
    assert_eq!(stale.status(), Some(407), "{}", first_line(&stale));
    assert!(is_stale(&stale), "stale=true: the password was right");
    let creds = a.authorization(&stale, true, "INVITE", &aor("1003"), &password("1001"));
    a.invite(&mut call, &creds);
    let invite = c.request(Method::Invite, &call.call_id);
    c.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    assert_hosted(&cluster, t, "1003", "blade-1");
    confirm(&mut a, &mut c, &call);
    // The callee hangs up: its BYE crosses T and S unchallenged.
    c.send(callee_in_dialog(&c, &invite, "BYE", 1));
    let bye = a.request(Method::Bye, &call.call_id);
    a.answer(&bye, 200, "OK", "unused");
    let done = c.expect_where("200 to C's BYE", |m| {
        !m.is_request() && m.call_id() == call.call_id && m.cseq().method == Method::Bye
    });
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    wait_ready(&cluster, t, "1003");
    cluster.wait_state(s, "1001", "ready");
    assert_eq!(calls(&cluster, s, "answered", "cross_blade"), 3.0);
}

/// A supervisor (C, on T) joins an authenticated cross-blade call at its
/// hosted party B (RFC 3911 Join): T challenges C like any call, then,
/// as B is hosted, hands the Join over to S, which hosts C from T for the
/// leg without challenging again. When C leaves it is ready on T again;
/// B goes back with the call.
#[test]
fn a_supervisor_join_is_challenged_by_its_blade_then_hosted_by_the_calls() {
    let cluster = auth_cluster(2, 81, 1);
    let (s, t) = (0, 1);
    let mut a = register_with_digest(&cluster, s, "1001", 83);
    let mut b = register_with_digest(&cluster, t, "1002", 84);
    let mut c = register_with_digest(&cluster, t, "1003", 85);
    let (mut call, _) = authenticated_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let join = format!(
        "Join: {};from-tag={};to-tag={CALLEE_TAG}\r\n",
        call.call_id, call.from_tag
    );
    let mut leg = c.call("1002");
    c.invite(&mut leg, &join);
    let challenge = c.response(&leg.call_id, Method::Invite);
    assert_eq!(challenge.status(), Some(407), "{}", first_line(&challenge));
    c.ack_failure(&leg, &challenge);
    assert!(
        b.collect_where(QUIET, |m| m.call_id() == leg.call_id)
            .is_empty(),
        "an unauthenticated Join does not reach B"
    );
    let creds = c.authorization(&challenge, true, "INVITE", &aor("1002"), &password("1003"));
    c.invite(&mut leg, &format!("{join}{creds}"));
    let invite = b.request(Method::Invite, &leg.call_id);
    assert!(invite.header_named("Join").is_some());
    assert!(invite.proxy_authorization().is_none());
    b.answer(&invite, 200, "OK", "b-join");
    let ok = c.response(&leg.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    leg.learn(&ok);
    c.ack_2xx(&leg);
    b.request(Method::Ack, &leg.call_id);
    assert_hosted(&cluster, t, "1003", "blade-1");
    assert_eq!(cluster.metric(s, "sipblade_joins_total"), 1.0);

    c.bye(&mut leg);
    let bye = b.request(Method::Bye, &leg.call_id);
    b.answer(&bye, 200, "OK", "b-join");
    let done = c.response(&leg.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    wait_ready(&cluster, t, "1003");
    assert_hosted(&cluster, t, "1002", "blade-1");

    hang_up(&mut a, &mut b, &mut call);
    wait_ready(&cluster, t, "1002");
    cluster.wait_state(s, "1001", "ready");
}

/// B, hosted from T by S, logs in with digest on S itself mid-call (its
/// phone moved to its hosting blade). The call goes on, and B is in it on
/// S: `in_call`, and a new call to B placed on S is busy (486, SPEC §2
/// step 6), not rung on B's new phone. After the call B is ready on S at
/// its new phone and logged out on T.
#[test]
fn a_hosted_agent_logging_in_on_its_hosting_blade_mid_call_is_busy_there() {
    let cluster = auth_cluster(2, 91, 1);
    let (s, t) = (0, 1);
    let mut a = register_with_digest(&cluster, s, "1001", 93);
    let mut b = register_with_digest(&cluster, t, "1002", 94);
    let mut c = register_with_digest(&cluster, s, "1003", 96);
    let (mut call, _) = authenticated_cross_call(&mut a, &mut b);
    confirm(&mut a, &mut b, &call);

    let mut moved = register_with_digest(&cluster, s, "1002", 95);
    common::wait_until("T logs B out", || {
        cluster.agent(t, "1002")["contact"] == serde_json::Value::Null
    });
    assert_hosted(&cluster, t, "1002", "blade-1");
    let b_on_s = cluster.agent(s, "1002");
    assert_eq!(
        b_on_s["state"], "in_call",
        "B is in the call on S: {b_on_s}"
    );

    let mut second = c.call("1002");
    let challenge = challenged(&mut c, &mut second);
    let creds = c.authorization(&challenge, true, "INVITE", &aor("1002"), &password("1003"));
    let busy = invite_final(&mut c, &mut second, &creds);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    assert!(
        moved
            .collect_where(QUIET, |m| m.call_id() == second.call_id)
            .is_empty(),
        "B's new phone is not rung while B is in the call"
    );

    hang_up(&mut a, &mut b, &mut call);
    cluster.wait_state(s, "1002", "ready");
    assert_eq!(cluster.agent(s, "1002")["contact"], moved.addr.to_string());
    cluster.wait_state(t, "1002", "logged_out");
    cluster.wait_state(s, "1001", "ready");
}

/// A request over TCP from `ext` at `contact` (its connection's address):
/// `method` to `uri` with CSeq `cseq`, `branch`, `to` (with a tag in a
/// dialog), `extra` header lines (CRLF-ended).
#[allow(clippy::too_many_arguments)]
fn tcp_request(
    ext: &str,
    contact: &str,
    method: &str,
    uri: &str,
    call_id: &str,
    cseq: u32,
    branch: &str,
    to: &str,
    extra: &str,
) -> String {
    format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TCP {contact};branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <{}>;tag=ft{ext}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\nContact: <sip:{ext}@{contact};transport=tcp>\r\n{extra}\
         Content-Length: 0\r\n\r\n",
        aor(ext),
    )
}

/// The next final response on `ua`'s connection to `method` in `call_id`.
fn tcp_final(ua: &mut common::tcp::TcpUa, call_id: &str, method: Method) -> Message {
    loop {
        let m = ua.recv();
        if !m.is_request()
            && m.call_id() == call_id
            && m.cseq().method == method
            && m.status().is_some_and(|s| s >= 200)
        {
            return m;
        }
    }
}

/// A caller on TCP, two cores per blade, auth on: its REGISTER and its
/// INVITEs are challenged and answered on its connection whichever core
/// holds it, also when the callee's core (where the INVITE's challenge is
/// issued and checked) is another one (1002 and 1003 are on different
/// cores, so one of the two calls is handed between cores); each call
/// hosts its callee on T and hands it back.
#[test]
fn a_tcp_caller_is_challenged_and_authenticated_across_cores() {
    let cluster = auth_cluster(2, 101, 2);
    let (s, t) = (0, 1);
    let mut b = register_with_digest(&cluster, t, "1002", 104);
    let mut c = register_with_digest(&cluster, t, "1003", 105);

    let mut a = common::tcp::TcpUa::connect_from(cluster.members[s].sip, ip(103));
    let contact = a.local();
    let binding = format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP {contact};branch={{b}}\r\n\
         Max-Forwards: 70\r\nFrom: <{aor}>;tag=r1\r\nTo: <{aor}>\r\nCall-ID: reg-tcp@test\r\n\
         CSeq: {{n}} REGISTER\r\nContact: <sip:1001@{contact};transport=tcp>\r\nExpires: 3600\r\n\
         {{auth}}Content-Length: 0\r\n\r\n",
        aor = aor("1001"),
    );
    let register = |n: u32, auth: &str| {
        binding
            .replace("{b}", &branch())
            .replace("{n}", &n.to_string())
            .replace("{auth}", auth)
    };
    a.send(&register(1, ""));
    let challenge = tcp_final(&mut a, "reg-tcp@test", Method::Register);
    assert_eq!(challenge.status(), Some(401), "{}", first_line(&challenge));
    // Any UA can compute the answer; the helper needs one for its extension.
    let helper = Ua::new_at(cluster.members[s].sip, "1001", ip(103));
    let auth = helper.authorization(
        &challenge,
        false,
        "REGISTER",
        &format!("sip:{DOMAIN}"),
        &password("1001"),
    );
    a.send(&register(2, &auth));
    let ok = tcp_final(&mut a, "reg-tcp@test", Method::Register);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));

    for callee in [&mut b, &mut c] {
        let ext = callee.ext.clone();
        let call_id = format!("tcp-{}@test", unique());
        let first = branch();
        a.send(&tcp_request(
            "1001",
            &contact,
            "INVITE",
            &aor(&ext),
            &call_id,
            1,
            &first,
            &format!("<{}>", aor(&ext)),
            "",
        ));
        let challenge = tcp_final(&mut a, &call_id, Method::Invite);
        assert_eq!(challenge.status(), Some(407), "{}", first_line(&challenge));
        let to = common::header(&challenge, sipblade::sip::HeaderName::To).expect("a To");
        a.send(&tcp_request(
            "1001",
            &contact,
            "ACK",
            &aor(&ext),
            &call_id,
            1,
            &first,
            &to,
            "",
        ));
        let creds = helper.authorization(&challenge, true, "INVITE", &aor(&ext), &password("1001"));
        a.send(&tcp_request(
            "1001",
            &contact,
            "INVITE",
            &aor(&ext),
            &call_id,
            2,
            &branch(),
            &format!("<{}>", aor(&ext)),
            &creds,
        ));
        let invite = callee.request(Method::Invite, &call_id);
        assert!(invite.proxy_authorization().is_none());
        assert_hosted(&cluster, t, &ext, "blade-1");
        callee.answer(&invite, 200, "OK", CALLEE_TAG);
        let ok = tcp_final(&mut a, &call_id, Method::Invite);
        assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
        let mut routes: Vec<String> = ok
            .record_routes()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .collect();
        routes.reverse();
        let route = format!("Route: {}\r\n", routes.join(", "));
        let to = common::header(&ok, sipblade::sip::HeaderName::To).expect("a To");
        let target = callee.contact_uri();
        a.send(&tcp_request(
            "1001",
            &contact,
            "ACK",
            &target,
            &call_id,
            2,
            &branch(),
            &to,
            &route,
        ));
        callee.request(Method::Ack, &call_id);
        a.send(&tcp_request(
            "1001",
            &contact,
            "BYE",
            &target,
            &call_id,
            3,
            &branch(),
            &to,
            &route,
        ));
        let bye = callee.request(Method::Bye, &call_id);
        callee.answer(&bye, 200, "OK", CALLEE_TAG);
        let done = tcp_final(&mut a, &call_id, Method::Bye);
        assert_eq!(done.status(), Some(200), "{}", first_line(&done));
        wait_ready(&cluster, t, &ext);
    }
    assert_eq!(calls(&cluster, s, "answered", "cross_blade"), 2.0);
    assert!(cluster.metric(s, "sipblade_core_handoffs_total") > 0.0);
}
