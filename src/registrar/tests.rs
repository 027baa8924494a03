//! Registrar unit tests: REGISTER in, response out, in virtual time.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::digest::{Credentials, NonceManager, Secret, expected_response};
use super::location::AgentState;
use super::{Outcome, Registrar, Settings};
use crate::config::{Agent, AgentKind, Credential};
use crate::sip::{Message, Peer};

const SOURCE: &str = "127.0.0.12:5061";

fn registrar(auth: bool) -> Registrar {
    let agents = ["1001", "1002"].map(|ext| {
        Arc::new(Agent {
            badge: format!("A{ext}"),
            extension: ext.to_owned(),
            kind: AgentKind::Agent,
            credential: Credential::Password(format!("pw{ext}")),
        })
    });
    let settings = Settings {
        domain: "cc.example".into(),
        auth,
        own_ip: Some([192, 0, 2, 1].into()),
        unix_at_epoch: None,
    };
    Registrar::new(settings, agents, NonceManager::from_secret([7; 32]))
}

fn register(ext: &str, cseq: u32, contact: &str, extra: &str) -> String {
    format!(
        "REGISTER sip:cc.example SIP/2.0\r\n\
         Via: SIP/2.0/UDP {SOURCE};branch=z9hG4bK{cseq}\r\n\
         From: <sip:{ext}@cc.example>;tag=f{ext}\r\n\
         To: <sip:{ext}@cc.example>\r\n\
         Call-ID: reg-{ext}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         {contact}{extra}\
         Content-Length: 0\r\n\r\n"
    )
}

fn send(r: &mut Registrar, now: Duration, text: &str) -> (Outcome, Message) {
    let msg = Message::parse(Bytes::from(text.to_owned())).unwrap();
    let mut out = BytesMut::new();
    let source = Peer::udp(SOURCE.parse().unwrap());
    let outcome = r.handle_register(now, &msg, source, &mut out);
    (outcome, Message::parse(out.freeze()).unwrap())
}

/// The Authorization a client with `password` sends for `challenge`.
fn answer(challenge: &Message, ext: &str, password: &str, nc: &str) -> String {
    answer_for(challenge, "REGISTER", "sip:cc.example", ext, password, nc)
}

/// The Authorization for a `method` request to `uri` (the header name
/// for a 407 is the caller's to change).
fn answer_for(
    challenge: &Message,
    method: &str,
    uri: &str,
    ext: &str,
    password: &str,
    nc: &str,
) -> String {
    answer_with(challenge, method, uri, None, ext, password, nc)
}

/// As [`answer_for`], with `algorithm` in place of the topmost
/// challenge's when given (all of a response's challenges share a nonce);
/// `challenge` may be a 401 or a 407.
fn answer_with(
    challenge: &Message,
    method: &str,
    uri: &str,
    algorithm: Option<&str>,
    ext: &str,
    password: &str,
    nc: &str,
) -> String {
    let www = challenge
        .www_authenticate()
        .or_else(|| challenge.proxy_authenticate())
        .unwrap();
    let d = www.digest().unwrap();
    let mut creds = Credentials {
        username: ext,
        realm: d.realm.unwrap(),
        nonce: d.nonce.unwrap(),
        uri,
        response: "",
        algorithm: algorithm.or(d.algorithm),
        cnonce: Some("c0ffee"),
        qop: Some("auth"),
        nc: Some(nc),
        opaque: None,
    };
    let response = expected_response(method, &creds, Secret::Password(password)).unwrap();
    creds.response = &response;
    format!(
        "Authorization: Digest username=\"{ext}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={}, cnonce=\"c0ffee\", qop=auth, nc={nc}\r\n",
        creds.realm,
        creds.nonce,
        creds.algorithm.unwrap_or("MD5"),
    )
}

const CONTACT: &str = "Contact: <sip:1001@127.0.0.12:5061>\r\n";

#[test]
fn challenge_then_login() {
    let mut r = registrar(true);
    let t0 = Duration::from_secs(100);
    let (outcome, challenge) = send(&mut r, t0, &register("1001", 1, CONTACT, ""));
    assert_eq!(outcome, Outcome::Challenged);
    assert_eq!(challenge.status(), Some(401));
    let algorithms: Vec<_> = challenge
        .header_values(crate::sip::HeaderName::WwwAuthenticate)
        .map(|v| String::from_utf8_lossy(v).contains("SHA-256"))
        .collect();
    assert_eq!(algorithms, [false, true], "MD5 offered first, then SHA-256");

    let auth = answer(&challenge, "1001", "pw1001", "00000001");
    let (outcome, ok) = send(&mut r, t0, &register("1001", 2, CONTACT, &auth));
    assert_eq!(outcome, Outcome::LoggedIn("1001".into()));
    assert_eq!(ok.status(), Some(200));
    let listed = ok.contacts().next().unwrap();
    assert_eq!(listed.uri().as_str(), "sip:1001@127.0.0.12:5061");
    assert_eq!(listed.expires(), Some(3600));
    let record = r.location().get("1001").unwrap();
    assert_eq!(record.state, AgentState::Ready);
    assert_eq!(
        record.binding.as_ref().unwrap().peer.addr,
        SOURCE.parse().unwrap()
    );

    // The same credentials again: a replayed nonce count is re-challenged.
    let (outcome, _) = send(&mut r, t0, &register("1001", 3, CONTACT, &auth));
    assert_eq!(outcome, Outcome::Challenged);
    // A higher nonce count on the same nonce is fine.
    let auth = answer(&challenge, "1001", "pw1001", "00000002");
    let (outcome, _) = send(&mut r, t0, &register("1001", 4, CONTACT, &auth));
    assert_eq!(outcome, Outcome::Refreshed("1001".into()));
}

/// Credentials are for the request they name (RFC 7616 §3.4.6): a digest
/// `uri` naming someone else, or another server, is refused before the
/// password is checked. One naming this registrar without a user (the
/// domain with a port, or the blade's IP as sipp writes it) is its own.
#[test]
fn a_digest_uri_naming_another_target_is_refused() {
    let mut r = registrar(true);
    let t0 = Duration::from_secs(100);
    let (_, challenge) = send(&mut r, t0, &register("1001", 1, CONTACT, ""));
    let good = answer(&challenge, "1001", "pw1001", "00000001");
    let with_uri = |uri: &str| good.replace("uri=\"sip:cc.example\"", &format!("uri=\"{uri}\""));
    let mut cseq = 1;
    let mut outcome_for = |r: &mut Registrar, uri: &str| {
        cseq += 1;
        send(r, t0, &register("1001", cseq, CONTACT, &with_uri(uri))).0
    };
    for elsewhere in [
        "sip:evil.example",
        "sip:1002@cc.example",
        "sip:192.0.2.9:5060",
    ] {
        assert_eq!(
            outcome_for(&mut r, elsewhere),
            Outcome::Refused(400),
            "{elsewhere}"
        );
    }
    assert!(!r.location().get("1001").unwrap().is_logged_in());
    // Ours, so the password is checked (and the response, computed for
    // another uri, is wrong): 403, not 400.
    for ours in [
        "sip:CC.example;transport=udp",
        "sip:cc.example:5070",
        "sip:192.0.2.1:5060",
    ] {
        assert_eq!(outcome_for(&mut r, ours), Outcome::Refused(403), "{ours}");
    }
}

#[test]
fn wrong_password_is_forbidden_and_stale_nonce_rechallenged() {
    let mut r = registrar(true);
    let t0 = Duration::from_secs(100);
    let (_, challenge) = send(&mut r, t0, &register("1001", 1, CONTACT, ""));
    let bad = answer(&challenge, "1001", "wrong", "00000001");
    let (outcome, resp) = send(&mut r, t0, &register("1001", 2, CONTACT, &bad));
    assert_eq!((outcome, resp.status()), (Outcome::Refused(403), Some(403)));
    assert!(!r.location().get("1001").unwrap().is_logged_in());

    let late = t0 + Duration::from_secs(3600);
    let good = answer(&challenge, "1001", "pw1001", "00000001");
    let (outcome, resp) = send(&mut r, late, &register("1001", 3, CONTACT, &good));
    assert_eq!(outcome, Outcome::Challenged);
    let www = resp.www_authenticate().unwrap();
    assert_eq!(www.param("stale"), Some("true"));
}

#[test]
fn the_badge_may_stand_for_the_extension_as_the_digest_username() {
    let mut r = registrar(true);
    let t0 = Duration::from_secs(1);
    let (_, challenge) = send(&mut r, t0, &register("1001", 1, CONTACT, ""));
    let auth = answer(&challenge, "A1001", "pw1001", "00000001");
    let (outcome, resp) = send(&mut r, t0, &register("1001", 2, CONTACT, &auth));
    assert_eq!(resp.status(), Some(200));
    assert_eq!(outcome, Outcome::LoggedIn("1001".into()));

    // Another agent's badge is someone else's credentials.
    let (_, challenge) = send(&mut r, t0, &register("1002", 1, CONTACT, ""));
    let auth = answer(&challenge, "A1001", "pw1001", "00000001");
    let (outcome, _) = send(&mut r, t0, &register("1002", 2, CONTACT, &auth));
    assert_eq!(outcome, Outcome::Refused(403));
}

#[test]
fn someone_elses_credentials_are_forbidden() {
    let mut r = registrar(true);
    let t0 = Duration::from_secs(1);
    let (_, challenge) = send(&mut r, t0, &register("1001", 1, CONTACT, ""));
    let auth = answer(&challenge, "1002", "pw1002", "00000001");
    let (outcome, _) = send(&mut r, t0, &register("1001", 2, CONTACT, &auth));
    assert_eq!(outcome, Outcome::Refused(403));
}

#[test]
fn expiry_rules() {
    let mut r = registrar(false);
    let t0 = Duration::from_secs(10);
    let (outcome, resp) = send(&mut r, t0, &register("1001", 1, CONTACT, "Expires: 30\r\n"));
    assert_eq!(outcome, Outcome::Refused(423));
    assert_eq!(resp.min_expires(), Some(60));

    let contact = "Contact: <sip:1001@127.0.0.12:5061>;expires=120\r\n";
    let (outcome, resp) = send(&mut r, t0, &register("1001", 2, contact, "Expires: 30\r\n"));
    assert_eq!(
        outcome,
        Outcome::LoggedIn("1001".into()),
        "the contact param wins"
    );
    assert_eq!(resp.contacts().next().unwrap().expires(), Some(120));

    assert!(r.expire(t0 + Duration::from_secs(119)).is_empty());
    assert_eq!(r.expire(t0 + Duration::from_secs(120)), ["1001"]);
    assert_eq!(
        r.location().get("1001").unwrap().state,
        AgentState::LoggedOut
    );
}

#[test]
fn wildcard_logout_query_and_ordering() {
    let mut r = registrar(false);
    let t0 = Duration::from_secs(10);
    send(&mut r, t0, &register("1001", 5, CONTACT, ""));
    let (outcome, resp) = send(&mut r, t0, &register("1001", 6, "", ""));
    assert_eq!(outcome, Outcome::Queried("1001".into()));
    assert_eq!(resp.contacts().count(), 1);

    let (outcome, _) = send(&mut r, t0, &register("1001", 4, CONTACT, ""));
    assert_eq!(
        outcome,
        Outcome::Refused(500),
        "older CSeq in the same Call-ID"
    );

    let (outcome, _) = send(&mut r, t0, &register("1001", 7, "Contact: *\r\n", ""));
    assert_eq!(
        outcome,
        Outcome::Refused(400),
        "wildcard without Expires: 0"
    );
    let (outcome, resp) = send(
        &mut r,
        t0,
        &register("1001", 8, "Contact: *\r\n", "Expires: 0\r\n"),
    );
    assert_eq!(
        (outcome, resp.status()),
        (Outcome::LoggedOut("1001".into()), Some(200))
    );
    assert!(!r.location().get("1001").unwrap().is_logged_in());
}

#[test]
fn unknown_agent_and_unsupported_extension() {
    let mut r = registrar(false);
    let (outcome, _) = send(&mut r, Duration::ZERO, &register("9999", 1, CONTACT, ""));
    assert_eq!(outcome, Outcome::Refused(404));
    let (outcome, resp) = send(
        &mut r,
        Duration::ZERO,
        &register("1001", 1, CONTACT, "Require: foo\r\n"),
    );
    assert_eq!(outcome, Outcome::Refused(420));
    assert_eq!(resp.header_named("Unsupported"), Some(&b"foo"[..]));
}

/// With authentication on, a REGISTER for an extension nobody has is
/// answered as one with a wrong password: a challenge, then 403. A 404
/// would tell a prober which extensions exist.
#[test]
fn with_auth_an_unknown_extension_is_told_apart_from_no_wrong_password() {
    let mut r = registrar(true);
    let t0 = Duration::from_secs(100);
    for ext in ["9999", "1001"] {
        let (outcome, challenge) = send(&mut r, t0, &register(ext, 1, CONTACT, ""));
        assert_eq!(outcome, Outcome::Challenged, "{ext}");
        let guess = answer(&challenge, ext, "guess", "00000001");
        let (outcome, _) = send(&mut r, t0, &register(ext, 2, CONTACT, &guess));
        assert_eq!(outcome, Outcome::Refused(403), "{ext}");
        let forged = guess.replace("nonce=\"", "nonce=\"x");
        let (outcome, _) = send(&mut r, t0, &register(ext, 3, CONTACT, &forged));
        assert_eq!(outcome, Outcome::Challenged, "{ext}");
    }
}

/// RFC 3261 §10.3 step 7: `expires=0` removes the binding of that contact
/// only. The terminal an agent left (its binding replaced by the REGISTER
/// of another) unregistering later must not log the agent out.
#[test]
fn expires_zero_for_another_contact_keeps_the_binding() {
    let mut r = registrar(false);
    let t0 = Duration::from_secs(10);
    let old_phone = "Contact: <sip:1001@127.0.0.12:5061>\r\n";
    let new_phone = "Contact: <sip:1001@127.0.0.13:5062;transport=udp>\r\n";
    send(&mut r, t0, &register("1001", 1, old_phone, ""));
    let moved = register("1001", 1, new_phone, "").replace("reg-1001", "reg-new");
    assert_eq!(
        send(&mut r, t0, &moved).0,
        Outcome::Refreshed("1001".into())
    );

    let (outcome, resp) = send(
        &mut r,
        t0,
        &register("1001", 2, old_phone, "Expires: 0\r\n"),
    );
    assert_eq!(outcome, Outcome::Queried("1001".into()));
    assert_eq!(resp.status(), Some(200));
    let listed = resp.contacts().next().unwrap();
    assert_eq!(
        listed.uri().as_str(),
        "sip:1001@127.0.0.13:5062;transport=udp"
    );
    assert!(r.location().get("1001").unwrap().is_logged_in());

    // The phone in use unregistering (same URI, defaults spelt out) does.
    let same = "Contact: <sip:1001@127.0.0.13:5062;TRANSPORT=UDP>;expires=0\r\n";
    let bye = register("1001", 2, same, "").replace("reg-1001", "reg-new");
    assert_eq!(send(&mut r, t0, &bye).0, Outcome::LoggedOut("1001".into()));
    assert!(!r.location().get("1001").unwrap().is_logged_in());
}

#[test]
fn a_binding_over_tcp_keeps_its_connection_and_names_the_contact() {
    let mut r = registrar(false);
    let text = register(
        "1001",
        1,
        "Contact: <sip:1001@127.0.0.14:5070;transport=tcp>\r\n",
        "",
    );
    let msg = Message::parse(Bytes::from(text)).unwrap();
    let conn = crate::sip::ConnId { core: 1, id: 9 };
    let source = Peer {
        addr: "127.0.0.14:40123".parse().unwrap(),
        transport: crate::sip::Transport::Tcp,
        conn: Some(conn),
    };
    let mut out = BytesMut::new();
    r.handle_register(Duration::from_secs(1), &msg, source, &mut out);
    let peer = r
        .location()
        .get("1001")
        .unwrap()
        .binding
        .as_ref()
        .unwrap()
        .peer;
    assert_eq!(peer.conn, Some(conn), "requests use the connection first");
    assert_eq!(
        peer.addr,
        "127.0.0.14:5070".parse().unwrap(),
        "and connect to the Contact once it has closed"
    );
    assert_eq!(peer.transport, crate::sip::Transport::Tcp);
}

#[test]
fn a_contact_the_blade_could_never_reach_is_refused() {
    let mut r = registrar(false);
    let t0 = Duration::from_secs(10);
    for (cseq, contact) in [
        "<sip:1001@127.0.0.12:0>",
        "<sip:1001@0.0.0.0:5061>",
        "<sip:1001@255.255.255.255>",
        "<sip:1001@224.0.0.1:5061>",
        "<sip:1001@[::1]:5061>",
        "<sip:1001@127.0.0.12:5061;transport=sctp>",
        "<sip:1001@127.0.0.12:5061;transport=tls>",
        "<sips:1001@127.0.0.12:5061>",
        "<tel:+15551001>",
    ]
    .iter()
    .enumerate()
    {
        let text = register(
            "1001",
            cseq as u32 + 1,
            &format!("Contact: {contact}\r\n"),
            "",
        );
        let (outcome, resp) = send(&mut r, t0, &text);
        assert_eq!(outcome, Outcome::Refused(400), "{contact}");
        let reason = String::from_utf8_lossy(resp.reason().unwrap_or_default()).into_owned();
        assert!(
            reason.starts_with("Unreachable Contact"),
            "{contact}: {reason}"
        );
        assert_eq!(
            r.location().get("1001").unwrap().state,
            AgentState::LoggedOut,
            "{contact}"
        );
    }
    // What the blade can reach: UDP or TCP, an IP of its family, a host
    // name (reached at the REGISTER's source).
    for (cseq, contact) in [
        "<sip:1001@127.0.0.12:5061;transport=TCP>",
        "<sip:1001@phone.example>",
        "<sip:1001@127.0.0.12;transport=udp>",
    ]
    .iter()
    .enumerate()
    {
        let text = register(
            "1001",
            cseq as u32 + 20,
            &format!("Contact: {contact}\r\n"),
            "",
        );
        let (outcome, _) = send(&mut r, t0, &text);
        assert!(
            matches!(outcome, Outcome::LoggedIn(_) | Outcome::Refreshed(_)),
            "{contact}: {outcome:?}"
        );
    }
}

/// RFC 3261 §10.3 step 6: `Contact: *` must stand alone, whichever Contact
/// header carries it; with another Contact it is a 400, and nothing is
/// unbound (SPEC §5).
#[test]
fn a_wildcard_contact_beside_another_contact_is_refused() {
    let mut r = registrar(false);
    let t0 = Duration::from_secs(10);
    send(&mut r, t0, &register("1001", 1, CONTACT, ""));
    for (cseq, contacts) in [
        (2, format!("Contact: *\r\n{CONTACT}")),
        (3, format!("{CONTACT}Contact: *\r\n")),
    ] {
        let (outcome, resp) = send(
            &mut r,
            t0,
            &register("1001", cseq, &contacts, "Expires: 0\r\n"),
        );
        assert_eq!(
            (outcome, resp.status()),
            (Outcome::Refused(400), Some(400)),
            "{contacts}"
        );
        assert!(
            r.location().get("1001").unwrap().is_logged_in(),
            "{contacts}"
        );
    }
}

/// RFC 3261 §22.3: a server uses the credentials of its own realm; another
/// realm's (a carrier's proxy, credentials a phone kept from another
/// server), listed first, must not hide them. For REGISTER
/// (Authorization) and for a challenged request (Proxy-Authorization).
#[test]
fn credentials_of_another_realm_listed_first_are_passed_over() {
    let mut r = registrar(true);
    let t0 = Duration::from_secs(100);
    let (_, challenge) = send(&mut r, t0, &register("1001", 1, CONTACT, ""));
    let ours = answer(&challenge, "1001", "pw1001", "00000001");
    let theirs = "Digest username=\"1001\", realm=\"carrier.example\", nonce=\"abc\", \
                  uri=\"sip:cc.example\", response=\"00000000000000000000000000000000\"";
    let both = format!("Authorization: {theirs}\r\n{ours}");
    let (outcome, _) = send(&mut r, t0, &register("1001", 2, CONTACT, &both));
    assert_eq!(outcome, Outcome::LoggedIn("1001".into()));

    let ours = answer_for(
        &challenge,
        "INVITE",
        "sip:1002@cc.example",
        "1001",
        "pw1001",
        "00000002",
    )
    .replace("Authorization:", "Proxy-Authorization:");
    let invite = register(
        "1001",
        3,
        CONTACT,
        &format!("Proxy-Authorization: {theirs}\r\n{ours}"),
    )
    .replace("REGISTER sip:cc.example", "INVITE sip:1002@cc.example")
    .replace("REGISTER\r\n", "INVITE\r\n");
    let invite = Message::parse(Bytes::from(invite)).unwrap();
    let agent = r.location().get("1001").unwrap().agent.clone();
    let checked = r.check_digest(t0, &invite, &agent, super::Challenger::Proxy);
    assert_eq!(checked.map_err(|e| e.status), Ok(()));
}

/// RFC 2617 §3.2.2: credentials missing a required directive are a 400
/// (not a 403 for a missing username, nor a new challenge for a missing
/// realm: the client's digest code is broken, not its password).
#[test]
fn credentials_missing_a_required_parameter_are_a_bad_request() {
    let mut r = registrar(true);
    let t0 = Duration::from_secs(100);
    let (_, challenge) = send(&mut r, t0, &register("1001", 1, CONTACT, ""));
    let good = answer(&challenge, "1001", "pw1001", "00000001");
    let nonce = challenge
        .www_authenticate()
        .unwrap()
        .param("nonce")
        .unwrap()
        .to_owned();
    let mut cseq = 1;
    for drop in [
        "username=\"1001\", ".to_owned(),
        "realm=\"cc.example\", ".to_owned(),
        format!("nonce=\"{nonce}\", "),
        "uri=\"sip:cc.example\", ".to_owned(),
    ] {
        cseq += 1;
        let (outcome, _) = send(
            &mut r,
            t0,
            &register("1001", cseq, CONTACT, &good.replace(&drop, "")),
        );
        assert_eq!(outcome, Outcome::Refused(400), "without {drop}");
    }
    cseq += 1;
    let empty = good.replace("username=\"1001\"", "username=\"\"");
    let (outcome, _) = send(&mut r, t0, &register("1001", cseq, CONTACT, &empty));
    assert_eq!(outcome, Outcome::Refused(400), "empty username");
    cseq += 1;
    let (outcome, _) = send(&mut r, t0, &register("1001", cseq, CONTACT, &good));
    assert_eq!(
        outcome,
        Outcome::LoggedIn("1001".into()),
        "nothing above used the count"
    );
}

/// An Expires header or expires parameter that is not delta-seconds (RFC
/// 3261 §20.19, §20.10) is a 400: taking it for absent would bind a
/// terminal for an hour, or (a bad parameter falling back to `Expires: 0`)
/// log it out, on a value it never sent. A value past 2³²−1 is a number,
/// only a large one.
#[test]
fn an_expires_that_is_no_number_is_a_bad_request() {
    let mut r = registrar(false);
    let t0 = Duration::from_secs(10);
    send(&mut r, t0, &register("1001", 1, CONTACT, ""));
    let bad_param = "Contact: <sip:1001@127.0.0.12:5061>;expires=soon\r\n";
    for (cseq, contact, extra) in [
        (2, CONTACT, "Expires: 1h\r\n"),
        (3, CONTACT, "Expires: \r\n"),
        (4, bad_param, "Expires: 0\r\n"),
    ] {
        let (outcome, _) = send(&mut r, t0, &register("1001", cseq, contact, extra));
        assert_eq!(outcome, Outcome::Refused(400), "{contact}{extra}");
    }
    let binding = r.location().get("1001").unwrap().binding.clone().unwrap();
    assert_eq!(binding.cseq, 1, "nothing changed");
    let (outcome, _) = send(
        &mut r,
        t0,
        &register("1001", 6, CONTACT, "Expires: 99999999999\r\n"),
    );
    assert_eq!(outcome, Outcome::Refreshed("1001".into()));
}

/// A negative expiry is no delta-seconds either: `Expires: -1` and
/// `;expires=-1` are 400, neither the default hour nor an unregistration,
/// on a first REGISTER as on a refresh.
#[test]
fn a_negative_expires_is_a_bad_request() {
    let mut r = registrar(false);
    let t0 = Duration::from_secs(10);
    let minus_one = "Contact: <sip:1001@127.0.0.12:5061>;expires=-1\r\n";
    for (cseq, contact, extra) in [
        (1, CONTACT, "Expires: -1\r\n"),
        (2, minus_one, ""),
        (3, minus_one, "Expires: 60\r\n"),
    ] {
        let (outcome, resp) = send(&mut r, t0, &register("1001", cseq, contact, extra));
        assert_eq!(outcome, Outcome::Refused(400), "{contact}{extra}");
        assert_eq!(resp.status(), Some(400));
    }
    assert!(r.location().get("1001").is_none_or(|a| a.binding.is_none()));
    send(&mut r, t0, &register("1001", 4, CONTACT, ""));
    let (outcome, _) = send(
        &mut r,
        t0,
        &register("1001", 5, minus_one, "Expires: 0\r\n"),
    );
    assert_eq!(outcome, Outcome::Refused(400), "not taken for Expires: 0");
    assert!(r.location().get("1001").unwrap().binding.is_some());
}

/// Digest values are quoted-strings: the hashes and comparisons take them
/// without quotes and with quoting backslashes removed (RFC 7616 §3.4
/// `unq`, RFC 3261 §25.1 quoted-pair). A client that escapes a character
/// it need not escape still authenticates.
#[test]
fn quoted_pairs_in_digest_values_are_unescaped() {
    let mut r = registrar(true);
    let t0 = Duration::from_secs(100);
    let (_, challenge) = send(&mut r, t0, &register("1001", 1, CONTACT, ""));
    let escaped = answer(&challenge, "1001", "pw1001", "00000001")
        .replace("username=\"1001\"", "username=\"10\\01\"")
        .replace("realm=\"cc.example\"", "realm=\"cc\\.example\"")
        .replace("cnonce=\"c0ffee\"", "cnonce=\"c0\\ffee\"");
    let (outcome, resp) = send(&mut r, t0, &register("1001", 2, CONTACT, &escaped));
    assert_eq!(
        (outcome, resp.status()),
        (Outcome::LoggedIn("1001".into()), Some(200))
    );
}

/// A registration longer than the registrar grants is shortened, and the
/// 200 says by how much (RFC 3261 §10.3 step 7: the registrar may choose
/// a shorter expiry, and the 200's Contact carries the one it chose): a
/// phone that re-registers by the 200 stays logged in.
#[test]
fn a_huge_expires_is_capped_and_the_200_says_so() {
    let mut r = registrar(false);
    let t0 = Duration::from_secs(10);
    let max = u64::from(super::MAX_EXPIRES);
    for (cseq, extra) in [(1, "Expires: 4294967296\r\n"), (2, "Expires: 31536000\r\n")] {
        let (_, resp) = send(&mut r, t0, &register("1001", cseq, CONTACT, extra));
        let listed = resp.contacts().next().unwrap();
        assert_eq!(listed.expires(), Some(super::MAX_EXPIRES), "{extra}");
    }
    assert!(r.expire(t0 + Duration::from_secs(max - 1)).is_empty());
    assert_eq!(r.expire(t0 + Duration::from_secs(max)), ["1001"]);
}

/// A registrar with auth on and the one agent 1001 (badge A1001), whose
/// password is `pw1001`, provisioned with `credential`.
fn registrar_with(credential: Credential) -> Registrar {
    let agent = Arc::new(Agent {
        badge: "A1001".into(),
        extension: "1001".into(),
        kind: AgentKind::Agent,
        credential,
    });
    let settings = Settings {
        domain: "cc.example".into(),
        auth: true,
        own_ip: None,
        unix_at_epoch: None,
    };
    Registrar::new(settings, [agent], NonceManager::from_secret([7; 32]))
}

/// The `algorithm` of each challenge in `values`, in order.
fn algorithms<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .map(|v| {
            let v = String::from_utf8_lossy(v);
            let (_, after) = v.split_once("algorithm=").unwrap();
            after.split(',').next().unwrap().to_owned()
        })
        .collect()
}

/// The algorithms a 401 offers.
fn offered(challenge: &Message) -> Vec<String> {
    algorithms(challenge.header_values(crate::sip::HeaderName::WwwAuthenticate))
}

/// The MD5 and SHA-256 HA1s of 1001's password `pw1001`, as an operator
/// provisions them (uppercase hex is allowed; the file lowercases it).
fn both_ha1s() -> Credential {
    Credential::Ha1 {
        md5: Some(super::digest::md5_ha1("1001", "cc.example", "pw1001")),
        sha256: Some(super::digest::sha256_ha1("1001", "cc.example", "pw1001")),
    }
}

/// An agent provisioned with `ha1` (MD5 of extension:domain:password) is
/// offered MD5 only, since SHA-256 cannot be verified without the
/// password, logs in with it, and authenticates by its extension only
/// (the HA1 hashes the extension, not the badge).
#[test]
fn an_agent_provisioned_with_ha1_is_offered_md5_and_logs_in_by_extension() {
    let mut r = registrar_with(Credential::md5_ha1(super::digest::md5_ha1(
        "1001",
        "cc.example",
        "pw1001",
    )));
    let t0 = Duration::from_secs(100);
    let (_, challenge) = send(&mut r, t0, &register("1001", 1, CONTACT, ""));
    assert_eq!(offered(&challenge), ["MD5"]);

    let by_badge = answer(&challenge, "A1001", "pw1001", "00000001");
    let (outcome, _) = send(&mut r, t0, &register("1001", 2, CONTACT, &by_badge));
    assert_eq!(outcome, Outcome::Refused(403));
    let by_extension = answer(&challenge, "1001", "pw1001", "00000002");
    let (outcome, _) = send(&mut r, t0, &register("1001", 3, CONTACT, &by_extension));
    assert_eq!(outcome, Outcome::LoggedIn("1001".into()));
}

/// An agent provisioned with both `ha1` and `ha1_sha256` is offered what
/// a password agent is (MD5, then SHA-256), so a challenge does not tell
/// how it was provisioned, and logs in with either algorithm and its
/// `-sess` variant; a wrong password is refused with either.
#[test]
fn an_agent_provisioned_with_both_ha1s_is_offered_md5_and_sha256_and_logs_in_with_either() {
    let t0 = Duration::from_secs(100);
    let mut r = registrar_with(both_ha1s());
    let (outcome, challenge) = send(&mut r, t0, &register("1001", 1, CONTACT, ""));
    assert_eq!(outcome, Outcome::Challenged);
    assert_eq!(offered(&challenge), ["MD5", "SHA-256"]);
    let (_, by_password) = send(&mut registrar(true), t0, &register("1001", 1, CONTACT, ""));
    assert_eq!(offered(&challenge), offered(&by_password));

    let with = |alg: &str, password: &str, nc: &str| {
        let uri = "sip:cc.example";
        answer_with(&challenge, "REGISTER", uri, Some(alg), "1001", password, nc)
    };
    for alg in ["MD5", "SHA-256"] {
        let wrong = with(alg, "wrong", "00000001");
        let (outcome, _) = send(&mut r, t0, &register("1001", 2, CONTACT, &wrong));
        assert_eq!(outcome, Outcome::Refused(403), "{alg}");
    }
    assert!(!r.location().get("1001").unwrap().is_logged_in());

    let sha = with("SHA-256", "pw1001", "00000001");
    let (outcome, _) = send(&mut r, t0, &register("1001", 3, CONTACT, &sha));
    assert_eq!(outcome, Outcome::LoggedIn("1001".into()));
    for (cseq, alg, nc) in [
        (4, "MD5", "00000002"),
        (5, "MD5-sess", "00000003"),
        (6, "SHA-256-sess", "00000004"),
    ] {
        let auth = with(alg, "pw1001", nc);
        let (outcome, _) = send(&mut r, t0, &register("1001", cseq, CONTACT, &auth));
        assert_eq!(outcome, Outcome::Refreshed("1001".into()), "{alg}");
    }
}

/// An agent provisioned with `ha1_sha256` alone is offered SHA-256 only:
/// an MD5 answer could not be verified, so offering MD5 would only fail
/// the clients that pick it. An MD5 answer anyway is re-challenged, and
/// the HA1 is bound to the extension.
#[test]
fn an_agent_provisioned_with_ha1_sha256_alone_is_offered_sha256_only() {
    let t0 = Duration::from_secs(100);
    let sha = super::digest::sha256_ha1("1001", "cc.example", "pw1001");
    let mut r = registrar_with(Credential::Ha1 {
        md5: None,
        sha256: Some(sha),
    });
    let (_, challenge) = send(&mut r, t0, &register("1001", 1, CONTACT, ""));
    assert_eq!(offered(&challenge), ["SHA-256"]);

    let md5 = answer_with(
        &challenge,
        "REGISTER",
        "sip:cc.example",
        Some("MD5"),
        "1001",
        "pw1001",
        "00000001",
    );
    let (outcome, again) = send(&mut r, t0, &register("1001", 2, CONTACT, &md5));
    assert_eq!(outcome, Outcome::Challenged);
    assert_eq!(offered(&again), ["SHA-256"]);
    let by_badge = answer(&challenge, "A1001", "pw1001", "00000001");
    let (outcome, _) = send(&mut r, t0, &register("1001", 3, CONTACT, &by_badge));
    assert_eq!(outcome, Outcome::Refused(403));
    let wrong = answer(&challenge, "1001", "wrong", "00000001");
    let (outcome, _) = send(&mut r, t0, &register("1001", 4, CONTACT, &wrong));
    assert_eq!(outcome, Outcome::Refused(403));
    let good = answer(&challenge, "1001", "pw1001", "00000001");
    let (outcome, _) = send(&mut r, t0, &register("1001", 5, CONTACT, &good));
    assert_eq!(outcome, Outcome::LoggedIn("1001".into()));
}

/// The proxy's challenge (407, INVITE and the like) checks the same
/// credential: an agent with both HA1s is offered MD5 and SHA-256 in
/// Proxy-Authenticate, and its SHA-256 Proxy-Authorization passes.
#[test]
fn a_proxy_challenge_offers_and_verifies_both_ha1s() {
    let t0 = Duration::from_secs(100);
    let mut r = registrar_with(both_ha1s());
    let invite = |auth: &str| {
        let text = register("1001", 1, CONTACT, auth)
            .replace("REGISTER sip:cc.example", "INVITE sip:1002@cc.example")
            .replace("REGISTER\r\n", "INVITE\r\n");
        Message::parse(Bytes::from(text)).unwrap()
    };
    let agent = r.location().get("1001").unwrap().agent.clone();
    let bare = invite("");
    let refusal = r
        .check_digest(t0, &bare, &agent, super::Challenger::Proxy)
        .unwrap_err();
    assert_eq!(refusal.status, 407);
    let values: Vec<&[u8]> = refusal
        .headers
        .iter()
        .filter(|(name, _)| *name == "Proxy-Authenticate")
        .map(|(_, v)| v.as_bytes())
        .collect();
    assert_eq!(algorithms(values.into_iter()), ["MD5", "SHA-256"]);

    let mut out = BytesMut::new();
    refusal.respond(&bare, "t1", &mut out);
    let challenge = Message::parse(out.freeze()).unwrap();
    let uri = "sip:1002@cc.example";
    for (alg, password, nc, want) in [
        ("SHA-256", "wrong", "00000001", Err(403)),
        ("SHA-256", "pw1001", "00000001", Ok(())),
        ("MD5", "pw1001", "00000002", Ok(())),
    ] {
        let auth = answer_with(&challenge, "INVITE", uri, Some(alg), "1001", password, nc)
            .replace("Authorization:", "Proxy-Authorization:");
        let checked = r.check_digest(t0, &invite(&auth), &agent, super::Challenger::Proxy);
        assert_eq!(checked.map_err(|e| e.status), want, "{alg} {password}");
    }
}

/// One binding per agent, but a REGISTER may carry several contacts
/// (RFC 3261 §10.2.1): a phone that moves lists its new address beside
/// its old one with expires=0, in one Contact line or in several. That,
/// and the same address listed twice, is one binding; two addresses to
/// keep are still refused.
#[test]
fn several_contacts_are_one_binding_and_removals() {
    let old = "<sip:1001@127.0.0.12:5061>";
    let new = "<sip:1001@127.0.0.13:5062>";
    let bound = |r: &Registrar| {
        r.location()
            .get("1001")
            .and_then(|rec| rec.binding.as_ref())
            .map(|b| b.uri.clone())
    };
    let t0 = Duration::from_secs(10);
    for contacts in [
        format!("Contact: {new}, {old};expires=0\r\n"),
        format!("Contact: {old};expires=0\r\nContact: {new}\r\n"),
    ] {
        let mut r = registrar(false);
        send(
            &mut r,
            t0,
            &register("1001", 1, &format!("Contact: {old}\r\n"), ""),
        );
        let (outcome, resp) = send(&mut r, t0, &register("1001", 2, &contacts, ""));
        assert_eq!(outcome, Outcome::Refreshed("1001".into()), "{contacts}");
        let listed: Vec<_> = resp
            .contacts()
            .map(|c| c.uri().as_str().to_owned())
            .collect();
        assert_eq!(listed, ["sip:1001@127.0.0.13:5062"], "{contacts}");
        assert_eq!(bound(&r).as_deref(), Some("sip:1001@127.0.0.13:5062"));
    }

    let mut r = registrar(false);
    let twice = format!("Contact: {new};expires=600\r\nContact: {new}\r\n");
    let (outcome, resp) = send(&mut r, t0, &register("1001", 1, &twice, ""));
    assert_eq!(outcome, Outcome::LoggedIn("1001".into()));
    assert_eq!(resp.contacts().next().and_then(|c| c.expires()), Some(600));

    let both = format!("Contact: {old}, {new}\r\n");
    let (outcome, _) = send(&mut r, t0, &register("1001", 2, &both, ""));
    assert_eq!(outcome, Outcome::Refused(400), "two addresses to keep");
    let brief = format!("Contact: {new};expires=30, {old};expires=0\r\n");
    let (outcome, resp) = send(&mut r, t0, &register("1001", 3, &brief, ""));
    assert_eq!(outcome, Outcome::Refused(423));
    assert_eq!(resp.min_expires(), Some(super::MIN_EXPIRES));

    // Removals only: the bound address among them logs the agent out.
    let removals = format!("Contact: {old};expires=0, {new};expires=0\r\n");
    let (outcome, resp) = send(&mut r, t0, &register("1001", 4, &removals, ""));
    assert_eq!(outcome, Outcome::LoggedOut("1001".into()));
    assert_eq!(resp.contacts().count(), 0);
    assert_eq!(bound(&r), None);
}

/// RFC 3261 §10.3 step 8: the 200 to a REGISTER carries the registrar's
/// Date (phones without NTP set their clock by it), in GMT.
#[test]
fn the_200_to_a_register_carries_a_date() {
    let settings = Settings {
        domain: "cc.example".into(),
        auth: false,
        own_ip: None,
        // 2010-11-13 23:28:00 GMT at `now` zero.
        unix_at_epoch: Some(Duration::from_secs(1_289_690_880)),
    };
    let agent = Arc::new(Agent {
        badge: "A1001".into(),
        extension: "1001".into(),
        kind: AgentKind::Agent,
        credential: Credential::Password("pw1001".into()),
    });
    let mut r = Registrar::new(settings, [agent], NonceManager::from_secret([7; 32]));
    let (_, resp) = send(
        &mut r,
        Duration::from_secs(60),
        &register("1001", 1, CONTACT, ""),
    );
    assert_eq!(resp.status(), Some(200));
    assert_eq!(
        resp.header_named("Date"),
        Some(&b"Sat, 13 Nov 2010 23:29:00 GMT"[..])
    );
    let (_, query) = send(
        &mut r,
        Duration::from_secs(61),
        &register("1001", 2, "", ""),
    );
    assert_eq!(
        query.header_named("Date"),
        Some(&b"Sat, 13 Nov 2010 23:29:01 GMT"[..])
    );
}

#[test]
fn dates_are_rfc_1123_in_gmt() {
    for (unix, date) in [
        (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
        (951_782_399, "Mon, 28 Feb 2000 23:59:59 GMT"),
        (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
        (1_709_251_199, "Thu, 29 Feb 2024 23:59:59 GMT"),
        (4_102_444_800, "Fri, 01 Jan 2100 00:00:00 GMT"),
    ] {
        assert_eq!(super::http_date(Duration::from_secs(unix)), date);
    }
}

/// A Contact `q` that is no qvalue (RFC 3261 §20.10: 0 to 1, three
/// decimals at most) is a 400, as a malformed `expires` is; a good one is
/// accepted (and, with one binding per agent, not used).
#[test]
fn a_q_that_is_no_qvalue_is_a_bad_request() {
    let mut r = registrar(false);
    let t0 = Duration::from_secs(10);
    let mut cseq = 0;
    for (q, status) in [
        ("0", 200),
        ("0.5", 200),
        ("0.", 200),
        ("0.125", 200),
        ("1", 200),
        ("1.000", 200),
        ("abc", 400),
        ("1.5", 400),
        ("2", 400),
        ("0.1234", 400),
        ("-0.5", 400),
    ] {
        cseq += 1;
        let contact = format!("Contact: <sip:1001@127.0.0.12:5061>;q={q}\r\n");
        let (_, resp) = send(&mut r, t0, &register("1001", cseq, &contact, ""));
        assert_eq!(resp.status(), Some(status), "q={q}");
    }
    let bare = "Contact: <sip:1001@127.0.0.12:5061>;q\r\n";
    let (_, resp) = send(&mut r, t0, &register("1001", 99, bare, ""));
    assert_eq!(resp.status(), Some(400), "q without a value");
}

/// `Contact: *` from an agent that is not logged in here changes nothing:
/// a 200, but no logout (which the blade would announce to its peers,
/// whose directory may place the agent on another blade).
#[test]
fn a_wildcard_from_an_agent_not_logged_in_is_no_logout() {
    let mut r = registrar(false);
    let t0 = Duration::from_secs(10);
    let star = register("1001", 1, "Contact: *\r\n", "Expires: 0\r\n");
    let (outcome, resp) = send(&mut r, t0, &star);
    assert_eq!(
        (outcome, resp.status()),
        (Outcome::Queried("1001".into()), Some(200))
    );
}
