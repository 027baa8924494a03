//! Real phones as they look on the wire (Linphone, Zoiper, MicroSIP,
//! Yealink, Polycom, Cisco, Grandstream): outbound proxies preloaded on
//! every request, RFC 5626 outbound and its keep-alives, Contacts in every
//! shape phones write, session timers, the headers phones add, their
//! registration habits, `tel:` and `user=phone` targets, early media and
//! an ACK addressed unlike the 2xx's Contact; on one blade and across two,
//! over UDP and TCP.
//!
//! Every blade and user agent lives on 127.0.20.1 to 127.0.20.250.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::calls::{CALLEE_TAG, callee_in_dialog};
use common::cluster::TestCluster;
use common::tcp::TcpUa;
use common::{Call, DOMAIN, TestBlade, Ua, first_line, header};
use sipblade::runtime::Options;
use sipblade::sip::{HeaderName, Message, Method};

/// How long a check that nothing arrives listens.
const SILENCE: Duration = Duration::from_millis(700);

/// 127.0.20.`host`.
fn ip(host: u8) -> Ipv4Addr {
    assert!((1..=250).contains(&host), "127.0.20.{host} is out of range");
    Ipv4Addr::new(127, 0, 20, host)
}

/// A blade on 127.0.20.`host` with two cores, auth off.
fn blade(host: u8) -> TestBlade {
    TestBlade::start_at(2, false, Options::default(), "", ip(host))
}

/// Two linked blades on 127.0.20.`first` and the next address.
fn cluster(first: u8) -> TestCluster {
    TestCluster::start_in(20, 2, first, 30, 1, &[])
}

/// A phone for `ext` on 127.0.20.`host`, talking to `blade`, registered
/// with `extra` header lines before its Contact and Expires.
fn phone(blade: SocketAddr, ext: &str, host: u8, extra: &str) -> Ua {
    let mut ua = Ua::new_at(blade, ext, ip(host));
    let headers = format!("{extra}{}", ua.binding_headers(3600));
    let ok = ua.register_once(&headers);
    assert_eq!(ok.status(), Some(200), "{ext}: {}", first_line(&ok));
    ua
}

/// The Route line an outbound proxy set to the domain preloads.
fn domain_route() -> String {
    format!("Route: <sip:{DOMAIN};lr>\r\n")
}

/// The Route line an outbound proxy set to `blade`'s address preloads.
fn blade_route(blade: SocketAddr) -> String {
    format!("Route: <sip:{blade};lr>\r\n")
}

/// `text` with `line` (a Route line) inserted before its first Route (or
/// its Max-Forwards).
fn with_route_first(text: &str, line: &str) -> String {
    let at = text
        .find("\r\nRoute:")
        .or_else(|| text.find("\r\nMax-Forwards"))
        .expect("a Max-Forwards line")
        + 2;
    format!("{}{line}{}", &text[..at], &text[at..])
}

/// The value of every header `name` of `msg`, joined by ", ".
fn values(msg: &Message, name: &str) -> Vec<String> {
    msg.headers()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
        .collect()
}

/// The callee turns `call` down 486; the caller gets the 486.
fn turned_down(a: &mut Ua, b: &mut Ua, call: &Call, invite: &Message) {
    b.answer(invite, 486, "Busy Here", CALLEE_TAG);
    assert_eq!(
        a.response(&call.call_id, Method::Invite).status(),
        Some(486)
    );
}

// Outbound proxy.

/// A phone with an outbound proxy set preloads a Route on every request,
/// REGISTER included: the domain (`<sip:cc.example;lr>`) on one phone,
/// its blade's address on the other. Across two blades over UDP the
/// REGISTERs are taken, the callee never sees either Route, and the
/// in-dialog requests both ways (outbound Route before the route set)
/// reach the other phone with no Route left.
#[test]
fn an_outbound_proxy_route_on_every_request_across_blades_over_udp() {
    let c = cluster(1);
    let (s, t) = (c.members[0].sip, c.members[1].sip);
    let mut a = phone(s, "1001", 11, &domain_route());
    let mut b = phone(t, "1002", 12, &blade_route(t));
    c.wait_state(1, "1002", "ready");

    let mut call = a.call("1002");
    a.invite(&mut call, &domain_route());
    let invite = b.request(Method::Invite, &call.call_id);
    assert_eq!(invite.routes().count(), 0, "no Route reaches the callee");
    assert_eq!(invite.record_routes().count(), 2);
    assert_eq!(invite.request_uri().unwrap().as_str(), b.contact_uri());
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200));
    call.learn(&ok);
    call.routes.insert(0, format!("<sip:{DOMAIN};lr>"));
    a.ack_2xx(&call);
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.routes().count(), 0, "{}", first_line(&ack));

    // The callee hangs up with its outbound proxy (its blade) first.
    let bye = callee_in_dialog(&b, &invite, "BYE", 1);
    let bye = with_route_first(&bye, &blade_route(t));
    b.send(&bye);
    let got = a.request(Method::Bye, &call.call_id);
    assert_eq!(got.routes().count(), 0, "no Route reaches the caller");
    assert_eq!(got.request_uri().unwrap().as_str(), a.contact_uri());
    a.answer(&got, 200, "OK", &call.from_tag);
    let done = b.response(&call.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200));
    common::calls::wait_ready(&c, 1, "1002");
}

/// The same over TCP: a phone on TCP with the domain as its outbound proxy
/// registers and calls a UDP phone on the other blade; the callee's BYE
/// comes back on the caller's connection with no Route.
#[test]
fn an_outbound_proxy_route_on_every_request_across_blades_over_tcp() {
    let c = cluster(3);
    let (s, t) = (c.members[0].sip, c.members[1].sip);
    let mut a = TcpUa::connect_from(s, ip(31));
    let me = a.local();
    a.send(&format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bKtr1;rport\r\n\
         Route: <sip:{DOMAIN};lr>\r\nMax-Forwards: 70\r\nFrom: <sip:1001@{DOMAIN}>;tag=tr\r\n\
         To: <sip:1001@{DOMAIN}>\r\nCall-ID: reg-tcp-ob\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:1001@{me};transport=tcp>;expires=3600\r\nContent-Length: 0\r\n\r\n"
    ));
    let ok = a.recv();
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    let mut b = phone(t, "1002", 32, &blade_route(t));
    c.wait_state(1, "1002", "ready");

    let body = "v=0\r\no=- 1 1 IN IP4 127.0.20.31\r\ns=-\r\nc=IN IP4 127.0.20.31\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    a.send(&format!(
        "INVITE sip:1002@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bKti1;rport\r\n\
         Route: <sip:{DOMAIN};lr>\r\nMax-Forwards: 70\r\nFrom: <sip:1001@{DOMAIN}>;tag=ti\r\n\
         To: <sip:1002@{DOMAIN}>\r\nCall-ID: tcp-ob-call\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:1001@{me};transport=tcp>\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let invite = b.request(Method::Invite, "tcp-ob-call");
    assert_eq!(invite.routes().count(), 0, "no Route reaches the callee");
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = loop {
        let m = a.recv();
        if m.status().is_some_and(|s| s >= 200) {
            break m;
        }
    };
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    let mut rr: Vec<String> = ok
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    rr.reverse();
    let target = ok.contacts().next().unwrap().uri().as_str().to_owned();
    let to = header(&ok, HeaderName::To).unwrap();
    a.send(&format!(
        "ACK {target} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bKta1;rport\r\n\
         Route: <sip:{DOMAIN};lr>, {}\r\nMax-Forwards: 70\r\nFrom: <sip:1001@{DOMAIN}>;tag=ti\r\n\
         To: {to}\r\nCall-ID: tcp-ob-call\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        rr.join(", ")
    ));
    let ack = b.request(Method::Ack, "tcp-ob-call");
    assert_eq!(ack.routes().count(), 0, "{}", first_line(&ack));

    let bye = with_route_first(&callee_in_dialog(&b, &invite, "BYE", 1), &blade_route(t));
    b.send(&bye);
    let got = loop {
        let m = a.recv();
        if m.method() == Some(Method::Bye) {
            break m;
        }
    };
    assert_eq!(got.routes().count(), 0, "no Route reaches the caller");
    let mut out = bytes::BytesMut::new();
    got.response(200, "OK", None, &[], &mut out);
    a.send(std::str::from_utf8(&out).unwrap());
    assert_eq!(b.response("tcp-ob-call", Method::Bye).status(), Some(200));
    common::calls::wait_ready(&c, 1, "1002");
}

// RFC 5626 outbound.

/// A Linphone-style RFC 5626 registration (`Supported: outbound, path`,
/// `reg-id`, `+sip.instance`, `;ob`) is taken, and a call reaches the
/// phone at its Contact, `;ob` kept.
#[test]
fn an_rfc_5626_registration_is_taken_and_called() {
    let blade = blade(40);
    let mut a = phone(blade.sip, "1001", 41, "");
    let mut b = Ua::new_at(blade.sip, "1002", ip(42));
    let contact = format!(
        "Contact: <sip:1002@{};transport=udp;ob>;reg-id=1;\
         +sip.instance=\"<urn:uuid:00000000-0000-1000-8000-00A0C91E6BF6>\";expires=3600\r\n\
         Supported: outbound, path\r\n",
        b.addr
    );
    let ok = b.register_once(&contact);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    let ruri = invite.request_uri().unwrap().as_str().to_owned();
    assert!(ruri.contains(";ob"), "{ruri}");
    turned_down(&mut a, &mut b, &call, &invite);
}

/// RFC 5626 §4.4.1: a double CRLF ping over TCP gets a single CRLF pong,
/// also after a REGISTER on that connection.
#[test]
fn a_double_crlf_ping_over_tcp_gets_one_crlf() {
    let blade = blade(43);
    let mut a = TcpUa::connect_from(blade.sip, ip(44));
    let me = a.local();
    a.send(&format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bKka1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:1001@{DOMAIN}>;tag=k\r\nTo: <sip:1001@{DOMAIN}>\r\n\
         Call-ID: reg-ka\r\nCSeq: 1 REGISTER\r\nSupported: outbound, path\r\n\
         Contact: <sip:1001@{me};transport=tcp;ob>;reg-id=1;+sip.instance=\"<urn:uuid:1>\"\r\n\
         Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    ));
    assert_eq!(a.recv().status(), Some(200));
    for _ in 0..2 {
        a.stream.write_all(b"\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while got.len() < 2 && std::time::Instant::now() < deadline {
            let mut buf = [0u8; 16];
            if let Ok(n) = std::io::Read::read(&mut a.stream, &mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(got, b"\r\n", "one CRLF pong");
    }
}

/// A STUN binding request (RFC 5389, which RFC 5626 phones send over UDP
/// to keep their NAT binding) is binary: dropped without an answer, and
/// the blade goes on.
#[test]
fn a_stun_keep_alive_over_udp_is_dropped_silently() {
    let blade = blade(45);
    let mut a = phone(blade.sip, "1001", 46, "");
    let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    stun.extend_from_slice(b"abcdefghijkl");
    for _ in 0..3 {
        a.send(&stun);
        a.send(b"\r\n\r\n");
        a.send(b"\r\n");
    }
    assert!(a.recv_raw(SILENCE).is_none(), "a keep-alive was answered");
    assert_eq!(
        blade.metric("sipblade_messages_malformed_total"),
        0.0,
        "a keep-alive is not malformed"
    );
    let ok = a.register(3600);
    assert_eq!(ok.status(), Some(200), "the blade still serves the phone");
}

// Contacts.

/// Contacts as phones write them: a display name, no angle brackets
/// (header parameters then), upper-case `transport=UDP`, `line`,
/// `rinstance`, `q`, `expires`: each registers with the expiry asked for,
/// and a call reaches the phone at that Contact with its URI parameters.
#[test]
fn contacts_in_the_shapes_phones_write() {
    let blade = blade(50);
    let mut a = phone(blade.sip, "1001", 51, "");
    let mut b = Ua::new_at(blade.sip, "1002", ip(52));
    let addr = b.addr;
    let shapes = [
        (
            format!("Contact: \"Agent 1002\" <sip:1002@{addr};line=abc123>;q=0.8;expires=1800\r\n"),
            format!("sip:1002@{addr};line=abc123"),
            1800,
        ),
        (
            format!("Contact: sip:1002@{addr};expires=1200\r\n"),
            format!("sip:1002@{addr}"),
            1200,
        ),
        (
            format!(
                "Contact: <sip:1002@{addr};rinstance=7c2a9f1e;transport=UDP>\r\nExpires: 900\r\n"
            ),
            format!("sip:1002@{addr};rinstance=7c2a9f1e;transport=UDP"),
            900,
        ),
        (
            format!(
                "Contact: Yealink <sip:1002@{addr}>;+sip.instance=\"<urn:uuid:y>\";expires=600\r\n"
            ),
            format!("sip:1002@{addr}"),
            600,
        ),
        (
            format!(
                "Contact: <sip:1002@{addr};transport=udp>;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-00562b0c1a2b>\";\
                 +u.sip!devicename.ccm.cisco.com=\"SEP00562B0C1A2B\";+u.sip!model.ccm.cisco.com=\"36670\"\r\nExpires: 3600\r\n"
            ),
            format!("sip:1002@{addr};transport=udp"),
            3600,
        ),
        (
            format!(
                "Contact: <sip:1002@{addr};transport=udp>;+org.linphone.specs=\"groupchat/1.1,lime\";\
                 +sip.instance=\"<urn:uuid:4b1e3d8a-linphone>\";expires=3600\r\n"
            ),
            format!("sip:1002@{addr};transport=udp"),
            3600,
        ),
        (
            format!(
                "Contact: <sip:1002@{addr}>;methods=\"INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, MESSAGE, SUBSCRIBE, NOTIFY, PRACK, UPDATE, REFER\"\r\nExpires: 3600\r\n"
            ),
            format!("sip:1002@{addr}"),
            3600,
        ),
    ];
    for (line, uri, expires) in shapes {
        let ok = b.register_once(&line);
        assert_eq!(ok.status(), Some(200), "{line}: {}", first_line(&ok));
        let listed = ok.contacts().next().expect("the binding listed");
        assert_eq!(listed.expires(), Some(expires), "{line}");
        let mut call = a.call("1002");
        a.invite(&mut call, "");
        let invite = b.request(Method::Invite, &call.call_id);
        assert_eq!(invite.request_uri().unwrap().as_str(), uri, "{line}");
        turned_down(&mut a, &mut b, &call, &invite);
    }
}

/// A Contact naming a host (a phone that writes its own name, or a mDNS
/// `.local` one): names are not resolved, so a phone on UDP is reached at
/// the address its REGISTER came from.
#[test]
fn a_contact_naming_a_host_is_reached_at_the_source_address() {
    let blade = blade(53);
    let mut a = phone(blade.sip, "1001", 54, "");
    let mut b = Ua::new_at(blade.sip, "1002", ip(55));
    let ok = b.register_once("Contact: <sip:1002@yealink-t46u.local:5060>\r\nExpires: 3600\r\n");
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    turned_down(&mut a, &mut b, &call, &invite);
}

/// Over TCP a Contact naming a host (upper-case `transport=TCP`, `;ob`)
/// is reached on the connection the phone registered on.
#[test]
fn a_contact_naming_a_host_over_tcp_is_reached_on_its_connection() {
    let blade = blade(47);
    let mut a = phone(blade.sip, "1001", 48, "");
    let mut b = TcpUa::connect_from(blade.sip, ip(49));
    let me = b.local();
    b.send(&format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP zoiper.invalid;branch=z9hG4bKhn1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:1002@{DOMAIN}>;tag=hn\r\nTo: <sip:1002@{DOMAIN}>\r\n\
         Call-ID: reg-hn\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:1002@zoiper.invalid;transport=TCP;ob>;expires=3600\r\nContent-Length: 0\r\n\r\n"
    ));
    let ok = b.recv();
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert!(!me.is_empty());
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.recv();
    assert_eq!(invite.method(), Some(Method::Invite));
    let mut out = bytes::BytesMut::new();
    invite.response(486, "Busy Here", Some(CALLEE_TAG), &[], &mut out);
    b.send(std::str::from_utf8(&out).unwrap());
    assert_eq!(
        a.response(&call.call_id, Method::Invite).status(),
        Some(486)
    );
}

/// A Contact with no port means 5060 (RFC 3263): a phone listening on
/// 5060 of its address gets its calls there.
#[test]
fn a_contact_without_a_port_means_5060() {
    let blade = blade(56);
    let a = phone(blade.sip, "1001", 57, "");
    let socket = UdpSocket::bind(SocketAddr::new(ip(58).into(), 5060)).expect("bind :5060");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = Ua::new_at(blade.sip, "1002", ip(59));
    let ok = b.register_once(&format!(
        "Contact: <sip:1002@{}>\r\nExpires: 3600\r\n",
        ip(58)
    ));
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let mut buf = vec![0u8; 65_535];
    let (n, _) = socket.recv_from(&mut buf).expect("the INVITE on port 5060");
    let invite = Message::parse(bytes::Bytes::copy_from_slice(&buf[..n])).unwrap();
    assert_eq!(invite.method(), Some(Method::Invite));
}

// Session timers and headers phones add.

/// RFC 4028 headers pass untouched, and a callee's 422 with its Min-SE
/// reaches the caller; across two blades.
#[test]
fn session_timer_headers_pass_and_a_422_comes_back() {
    let c = cluster(60);
    let (s, t) = (c.members[0].sip, c.members[1].sip);
    let mut a = phone(s, "1001", 61, "");
    let mut b = phone(t, "1002", 62, "");
    let mut call = a.call("1002");
    a.invite(
        &mut call,
        "Supported: replaces, timer, 100rel\r\nSession-Expires: 1800;refresher=uac\r\nMin-SE: 90\r\n",
    );
    let invite = b.request(Method::Invite, &call.call_id);
    assert_eq!(values(&invite, "Session-Expires"), ["1800;refresher=uac"]);
    assert_eq!(values(&invite, "Min-SE"), ["90"]);
    assert_eq!(values(&invite, "Supported"), ["replaces, timer, 100rel"]);
    b.answer_with(
        &invite,
        422,
        "Session Interval Too Small",
        CALLEE_TAG,
        "Min-SE: 1800\r\n",
    );
    let too_small = a.response(&call.call_id, Method::Invite);
    assert_eq!(too_small.status(), Some(422));
    assert_eq!(values(&too_small, "Min-SE"), ["1800"]);
    common::calls::wait_ready(&c, 1, "1002");
}

/// What phones add to an INVITE passes to the callee across two blades:
/// User-Agent, Allow-Events, P-Asserted-Identity, Privacy, a 1.5 KB Allow
/// and Supported; the Vias of a local proxy behind the phone are kept; a
/// missing Max-Forwards leaves with 70 less the hops.
#[test]
fn the_headers_phones_add_pass_across_blades() {
    let c = cluster(63);
    let (s, t) = (c.members[0].sip, c.members[1].sip);
    let mut a = phone(s, "1001", 64, "");
    let mut b = phone(t, "1002", 65, "");
    let long_allow = (0..120)
        .map(|i| format!("X-METHOD-{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let extra = format!(
        "User-Agent: Grandstream GXP2170 1.0.11.23\r\nAllow-Events: talk, hold, conference, refer, check-sync\r\n\
         P-Asserted-Identity: \"Agent 1001\" <sip:1001@{DOMAIN}>\r\nPrivacy: id\r\n\
         Allow: INVITE, ACK, OPTIONS, CANCEL, BYE, SUBSCRIBE, NOTIFY, INFO, REFER, UPDATE, {long_allow}\r\n\
         Supported: replaces, path, timer, eventlist, {long_allow}\r\n"
    );
    let mut call = a.call("1002");
    let text = a.invite_text(&mut call, &extra);
    // A local proxy (an SBC on the phone's LAN) in front: two Vias, and
    // no Max-Forwards.
    let text = text.replace(
        "Max-Forwards: 70\r\n",
        &format!(
            "Via: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bK-phone-{}\r\n",
            call.cseq
        ),
    );
    a.send(&text);
    let invite = b.request(Method::Invite, &call.call_id);
    assert_eq!(
        invite.vias().count(),
        4,
        "two blades' Vias and both of the phone's"
    );
    assert_eq!(invite.max_forwards(), Some(69), "S adds 70, T takes one");
    for name in [
        "User-Agent",
        "Allow-Events",
        "P-Asserted-Identity",
        "Privacy",
    ] {
        assert_eq!(values(&invite, name).len(), 1, "{name}");
    }
    assert!(values(&invite, "Allow")[0].ends_with("X-METHOD-119"));
    b.answer(&invite, 180, "Ringing", CALLEE_TAG);
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180));
    assert_eq!(ringing.vias().count(), 2, "the phone's two Vias come back");
    turned_down(&mut a, &mut b, &call, &invite);
}

// Registration habits.

/// A phone that re-REGISTERs with a new Call-ID each time, one that
/// re-REGISTERs with the same Call-ID and CSeq+1, one that writes display
/// names and `user=phone` in To and From, and one that logs out with
/// `Contact: *` and `Expires: 0`.
#[test]
fn registration_habits_of_phones() {
    let blade = blade(70);
    let mut b = Ua::new_at(blade.sip, "1002", ip(71));
    let addr = b.addr;
    for n in 1..=3 {
        let text = format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\n{}Max-Forwards: 70\r\n\
             From: \"Agent 1002\" <sip:1002@{DOMAIN};user=phone>;tag=rh{n}\r\n\
             To: \"Agent 1002\" <sip:1002@{DOMAIN};user=phone>\r\nCall-ID: habit-{n}\r\n\
             CSeq: 1 REGISTER\r\nContact: <sip:1002@{addr}>\r\nExpires: 60\r\n\
             User-Agent: Cisco-CP8845/12.8.1\r\nContent-Length: 0\r\n\r\n",
            b.via(&common::branch()),
        );
        b.send(&text);
        let ok = b.response(&format!("habit-{n}"), Method::Register);
        assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
        assert_eq!(ok.contacts().count(), 1, "one binding, not one per Call-ID");
    }
    blade.wait_state("1002", "ready");
    for _ in 0..2 {
        let ok = b.register_once(&b.binding_headers(60));
        assert_eq!(ok.status(), Some(200));
        assert_eq!(ok.contacts().count(), 1);
    }
    let bye = b.register_once("Contact: *\r\nExpires: 0\r\n");
    assert_eq!(bye.status(), Some(200), "{}", first_line(&bye));
    blade.wait_state("1002", "logged_out");
}

// Targets.

/// `tel:` and `sip:+EXT@domain;user=phone` Request-URIs, as phones dial
/// from a contact list.
#[test]
fn tel_and_user_phone_targets() {
    let blade = blade(80);
    let mut a = phone(blade.sip, "1001", 81, "");
    let mut b = phone(blade.sip, "1002", 82, "");
    for (ruri, expect) in [
        (format!("sip:1002@{DOMAIN};user=phone"), 0u16),
        ("tel:1002".to_owned(), 416),
        (format!("sip:+1002@{DOMAIN};user=phone"), 404),
    ] {
        let mut call = a.call("1002");
        let text = a.invite_text(&mut call, "");
        let text = text.replacen(
            &format!("INVITE sip:1002@{DOMAIN} "),
            &format!("INVITE {ruri} "),
            1,
        );
        a.send(&text);
        if expect == 0 {
            let invite = b.request(Method::Invite, &call.call_id);
            turned_down(&mut a, &mut b, &call, &invite);
        } else {
            let r = a.response(&call.call_id, Method::Invite);
            assert_eq!(r.status(), Some(expect), "{ruri}: {}", first_line(&r));
            a.ack_failure(&call, &r);
        }
    }
}

// Calls.

/// Early media across two blades: 183 with SDP, then 200; and an ACK
/// whose Request-URI is not the 2xx's Contact (the AoR, as some phones
/// write it) sent along the route set still reaches the callee, and so
/// does the BYE.
#[test]
fn early_media_then_an_ack_addressed_otherwise() {
    let c = cluster(90);
    let (s, t) = (c.members[0].sip, c.members[1].sip);
    let mut a = phone(s, "1001", 91, "");
    let mut b = phone(t, "1002", 92, "");
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    let sdp = "v=0\r\no=- 2 2 IN IP4 127.0.20.92\r\ns=-\r\nc=IN IP4 127.0.20.92\r\nt=0 0\r\nm=audio 4002 RTP/AVP 0\r\n";
    let early = common::response_text(
        &invite,
        183,
        "Session Progress",
        CALLEE_TAG,
        &b.contact_uri(),
        "",
    )
    .replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ),
    );
    b.send(&early);
    let progress = a.response(&call.call_id, Method::Invite);
    assert_eq!(progress.status(), Some(183));
    assert_eq!(progress.body(), sdp.as_bytes());
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200));
    call.learn(&ok);
    let mut odd: Call = call.clone();
    odd.target = Some(format!("sip:1002@{DOMAIN}"));
    a.ack_2xx(&odd);
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.routes().count(), 0);
    assert_eq!(
        ack.request_uri().unwrap().as_str(),
        b.contact_uri(),
        "retargeted to the callee's contact"
    );
    a.bye(&mut odd);
    let bye = b.request(Method::Bye, &call.call_id);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    assert_eq!(a.response(&call.call_id, Method::Bye).status(), Some(200));
    common::calls::wait_ready(&c, 1, "1002");
}

/// The outbound proxy as phones spell it: the domain with a port, in
/// upper case, with `transport`; the blade's address with `transport`.
/// Each is the blade's: a REGISTER and a call with it preloaded work, and
/// the callee sees no Route.
#[test]
fn outbound_proxy_routes_as_phones_spell_them() {
    let blade = blade(100);
    let sip = blade.sip;
    let mut a = Ua::new_at(sip, "1001", ip(101));
    let mut b = phone(sip, "1002", 102, "");
    for route in [
        format!("<sip:{DOMAIN}:5060;lr>"),
        format!("<sip:{};lr>", DOMAIN.to_ascii_uppercase()),
        format!("<sip:{DOMAIN};transport=udp;lr>"),
        format!("<sip:{sip};transport=UDP;lr>"),
        format!("<sip:{sip};lr;transport=udp>"),
    ] {
        let line = format!("Route: {route}\r\n");
        let headers = format!("{line}{}", a.binding_headers(3600));
        let ok = a.register_once(&headers);
        assert_eq!(ok.status(), Some(200), "{route}: {}", first_line(&ok));
        let mut call = a.call("1002");
        a.invite(&mut call, &line);
        let invite = b.request(Method::Invite, &call.call_id);
        assert_eq!(invite.routes().count(), 0, "{route}");
        turned_down(&mut a, &mut b, &call, &invite);
    }
}

/// A phone with an outbound proxy that keeps no route set (it sends its
/// in-dialog requests to the remote target with its outbound Route only,
/// as some older desk phones do) still reaches the callee across blades.
#[test]
fn an_outbound_proxy_without_a_route_set_across_blades() {
    let c = cluster(110);
    let (s, t) = (c.members[0].sip, c.members[1].sip);
    let mut a = phone(s, "1001", 111, &domain_route());
    let mut b = phone(t, "1002", 112, "");
    c.wait_state(1, "1002", "ready");
    let mut call = a.call("1002");
    a.invite(&mut call, &domain_route());
    let invite = b.request(Method::Invite, &call.call_id);
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200));
    call.learn(&ok);
    call.routes = vec![format!("<sip:{DOMAIN};lr>")];
    a.ack_2xx(&call);
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.routes().count(), 0);
    a.bye(&mut call);
    let bye = b.request(Method::Bye, &call.call_id);
    assert_eq!(bye.routes().count(), 0);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    assert_eq!(a.response(&call.call_id, Method::Bye).status(), Some(200));
    common::calls::wait_ready(&c, 1, "1002");
}

/// On one blade with two cores, over TCP: the caller's ACK along the
/// route set but addressed to the callee's address of record reaches the
/// callee on its connection.
#[test]
fn an_ack_to_the_address_of_record_over_tcp() {
    let blade = blade(120);
    let mut a = phone(blade.sip, "1001", 121, "");
    let mut b = TcpUa::connect_from(blade.sip, ip(122));
    let me = b.local();
    b.send(&common::tcp::register_tcp("1002", &me, 3600, 1));
    assert_eq!(b.recv().status(), Some(200));
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.recv();
    assert_eq!(invite.method(), Some(Method::Invite));
    b.send(&common::tcp::answer(&invite, 200, &me));
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200));
    call.learn(&ok);
    call.target = Some(format!("sip:1002@{DOMAIN}"));
    a.ack_2xx(&call);
    let ack = b.recv();
    assert_eq!(ack.method(), Some(Method::Ack), "{}", first_line(&ack));
    a.bye(&mut call);
    let bye = b.recv();
    assert_eq!(bye.method(), Some(Method::Bye), "{}", first_line(&bye));
    let mut out = bytes::BytesMut::new();
    bye.response(200, "OK", None, &[], &mut out);
    b.send(std::str::from_utf8(&out).unwrap());
    assert_eq!(a.response(&call.call_id, Method::Bye).status(), Some(200));
    blade.wait_no_sessions();
}

/// Reads what `ua`'s connection brings within `wait`, raw.
fn read_raw(ua: &mut TcpUa, wait: Duration) -> Vec<u8> {
    let mut got = std::mem::take(&mut ua.buf);
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        let mut buf = [0u8; 4096];
        match std::io::Read::read(&mut ua.stream, &mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    got
}

/// Keep-alives over TCP as phones send them: a double CRLF before any
/// message, one glued to the front of a REGISTER, a single CRLF (no
/// answer), and the connection serves on.
#[test]
fn tcp_keep_alives_in_the_ways_phones_send_them() {
    let blade = blade(130);
    let mut b = TcpUa::connect_from(blade.sip, ip(131));
    let me = b.local();
    b.send("\r\n\r\n");
    assert_eq!(
        read_raw(&mut b, SILENCE),
        b"\r\n",
        "a pong before any message"
    );
    b.send(&format!(
        "\r\n\r\n{}",
        common::tcp::register_tcp("1002", &me, 3600, 1)
    ));
    let got = read_raw(&mut b, SILENCE);
    assert!(
        got.starts_with(b"\r\nSIP/2.0 200 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    b.send("\r\n");
    assert_eq!(
        read_raw(&mut b, SILENCE),
        b"",
        "a single CRLF is not answered"
    );
    b.send(&common::tcp::register_tcp("1002", &me, 3600, 2));
    assert_eq!(b.recv().status(), Some(200), "the connection serves on");
}

/// RFC 3261 §7.5: CRLFs before a start line are ignored, over UDP and
/// TCP (some phones send them).
#[test]
fn crlf_before_the_start_line_is_ignored() {
    let blade = blade(135);
    let mut b = Ua::new_at(blade.sip, "1002", ip(136));
    let text = b.register_text(&b.binding_headers(3600));
    b.send(format!("\r\n{text}"));
    let ok = b.expect_where("the 200", |m| m.status().is_some());
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    let mut t = TcpUa::connect_from(blade.sip, ip(137));
    let me = t.local();
    t.send(&format!(
        "\r\n{}",
        common::tcp::register_tcp("1003", &me, 3600, 1)
    ));
    assert_eq!(t.recv().status(), Some(200));
}

/// `Require: timer` is for the callee, not the proxy (RFC 3261 §8.2.2.3):
/// the INVITE passes.
#[test]
fn require_timer_passes_the_proxy() {
    let blade = blade(140);
    let mut a = phone(blade.sip, "1001", 141, "");
    let mut b = phone(blade.sip, "1002", 142, "");
    let mut call = a.call("1002");
    a.invite(&mut call, "Require: timer\r\nSession-Expires: 90\r\n");
    let invite = b.request(Method::Invite, &call.call_id);
    assert_eq!(values(&invite, "Require"), ["timer"]);
    turned_down(&mut a, &mut b, &call, &invite);
}

/// A registrar that does not support outbound or path (the blade keeps
/// one binding per agent and reaches it itself) answers a REGISTER that
/// requires them 420 naming them in Unsupported (RFC 3261 §8.2.2.3), and
/// a 200 to one that only supports them carries no `Require: outbound`
/// (RFC 5626 §6: the phone then knows it has no outbound registrar).
#[test]
fn a_register_requiring_outbound_or_path() {
    let blade = blade(145);
    let mut b = Ua::new_at(blade.sip, "1002", ip(146));
    for tag in ["outbound", "path"] {
        let headers = format!(
            "Require: {tag}\r\nSupported: outbound, path\r\n{}",
            b.binding_headers(3600)
        );
        let refused = b.register_once(&headers);
        assert_eq!(
            refused.status(),
            Some(420),
            "{tag}: {}",
            first_line(&refused)
        );
        assert_eq!(values(&refused, "Unsupported"), [tag]);
    }
    let headers = format!("Supported: outbound, path\r\n{}", b.binding_headers(3600));
    let ok = b.register_once(&headers);
    assert_eq!(ok.status(), Some(200));
    assert!(values(&ok, "Require").is_empty(), "no Require: outbound");
}

/// Phones that name a host in their Contact both register so and answer
/// (or call) so, the callee in another spelling (case, a parameter
/// more): across two blades, the ACK and the BYE to those Contacts reach
/// each phone at its registered source address.
#[test]
fn a_dialog_with_phones_that_name_hosts_across_blades() {
    let c = cluster(150);
    let (s, t) = (c.members[0].sip, c.members[1].sip);
    let mut a = Ua::new_at(s, "1001", ip(151));
    let a_contact = "sip:1001@microsip-pc.local:5060";
    let ok = a.register_once(&format!("Contact: <{a_contact}>\r\nExpires: 3600\r\n"));
    assert_eq!(ok.status(), Some(200));
    let mut b = Ua::new_at(t, "1002", ip(152));
    let b_contact = "sip:1002@yealink-t46u.local:5060";
    let ok = b.register_once(&format!("Contact: <{b_contact}>\r\nExpires: 3600\r\n"));
    assert_eq!(ok.status(), Some(200));
    c.wait_state(1, "1002", "ready");

    let mut call = a.call("1002");
    let text = a.invite_text(&mut call, "");
    let text = text.replace(
        &format!("Contact: <{}>", a.contact_uri()),
        &format!("Contact: <{a_contact}>"),
    );
    call.invite = text.clone();
    a.send(&text);
    let invite = b.request(Method::Invite, &call.call_id);
    // It answers with its host in another case, and a parameter more.
    let answered_as = "sip:1002@YEALINK-T46U.local:5060;transport=udp";
    b.send(common::response_text(
        &invite,
        200,
        "OK",
        CALLEE_TAG,
        answered_as,
        "",
    ));
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200));
    call.learn(&ok);
    assert_eq!(call.target.as_deref(), Some(answered_as));
    a.ack_2xx(&call);
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.request_uri().unwrap().as_str(), answered_as);
    // The callee hangs up, to the caller's named Contact.
    let bye = callee_in_dialog(&b, &invite, "BYE", 1);
    b.send(&bye);
    let got = a.request(Method::Bye, &call.call_id);
    a.answer(&got, 200, "OK", &call.from_tag);
    assert_eq!(b.response(&call.call_id, Method::Bye).status(), Some(200));
    common::calls::wait_ready(&c, 1, "1002");
}

/// A phone registered with a Contact naming a host that answers with
/// that host in another spelling of the URI (`;transport=udp` added)
/// still gets its dialog's ACK and BYE at its registered address.
#[test]
fn a_callee_naming_its_host_in_another_spelling() {
    let blade = blade(160);
    let mut a = phone(blade.sip, "1001", 161, "");
    let mut b = Ua::new_at(blade.sip, "1002", ip(162));
    let ok = b.register_once("Contact: <sip:1002@GXP2170.lan:5060>\r\nExpires: 3600\r\n");
    assert_eq!(ok.status(), Some(200));
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    let answered_as = "sip:1002@gxp2170.lan:5060;transport=udp";
    b.send(common::response_text(
        &invite,
        200,
        "OK",
        CALLEE_TAG,
        answered_as,
        "",
    ));
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200));
    call.learn(&ok);
    a.ack_2xx(&call);
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.request_uri().unwrap().as_str(), answered_as);
    a.bye(&mut call);
    let bye = b.request(Method::Bye, &call.call_id);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    assert_eq!(a.response(&call.call_id, Method::Bye).status(), Some(200));
    blade.wait_no_sessions();
}

/// An INVITE whose From and To carry display names (a quoted comma) and
/// `user=phone`, as desk phones write them: the caller is recognised and
/// the call goes through.
#[test]
fn display_names_and_user_phone_in_from_and_to() {
    let blade = blade(170);
    let mut a = phone(blade.sip, "1001", 171, "");
    let mut b = phone(blade.sip, "1002", 172, "");
    let mut call = a.call("1002");
    let text = a.invite_text(&mut call, "");
    let text = text
        .replacen(
            &format!("From: <sip:1001@{DOMAIN}>"),
            &format!("From: \"Doe, John (1001)\" <sip:1001@{DOMAIN};user=phone>"),
            1,
        )
        .replacen(
            &format!("To: <sip:1002@{DOMAIN}>"),
            &format!("To: \"1002\" <sip:1002@{DOMAIN};user=phone>"),
            1,
        );
    a.send(&text);
    let invite = b.request(Method::Invite, &call.call_id);
    assert!(
        header(&invite, HeaderName::From)
            .unwrap()
            .starts_with("\"Doe, John (1001)\"")
    );
    turned_down(&mut a, &mut b, &call, &invite);
}

/// With digest authentication on, across two blades: phones with the
/// domain as their outbound proxy register (401, then 200) and call (407,
/// then the call) with the Route on every request, and the callee sees
/// neither the Route nor the caller's credentials.
#[test]
fn an_outbound_proxy_route_with_digest_across_blades() {
    let mut c = TestCluster::new_in(20, 2, 180, 30, 1);
    c.auth = true;
    c.start_blade(0);
    c.start_blade(1);
    c.wait_linked();
    let (s, t) = (c.members[0].sip, c.members[1].sip);
    let route = domain_route();
    let reg = |blade: SocketAddr, ext: &str, host: u8| {
        let mut ua = Ua::new_at(blade, ext, ip(host));
        let headers = format!("{route}{}", ua.binding_headers(3600));
        let (ok, auth) = ua.register_as(&headers, &common::password(ext));
        assert!(auth.is_some(), "{ext} was challenged");
        assert_eq!(ok.status(), Some(200), "{ext}: {}", first_line(&ok));
        ua
    };
    let mut a = reg(s, "1001", 181);
    let mut b = reg(t, "1002", 182);
    c.wait_state(1, "1002", "ready");

    let mut call = a.call("1002");
    a.invite(&mut call, &route);
    let challenge = a.response(&call.call_id, Method::Invite);
    assert_eq!(challenge.status(), Some(407), "{}", first_line(&challenge));
    a.ack_failure(&call, &challenge);
    let auth = a.authorization(
        &challenge,
        true,
        "INVITE",
        &format!("sip:1002@{DOMAIN}"),
        &common::password("1001"),
    );
    a.invite(&mut call, &format!("{route}{auth}"));
    let invite = b.request(Method::Invite, &call.call_id);
    assert_eq!(invite.routes().count(), 0);
    assert!(values(&invite, "Proxy-Authorization").is_empty());
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    call.routes.insert(0, format!("<sip:{DOMAIN};lr>"));
    a.ack_2xx(&call);
    assert_eq!(b.request(Method::Ack, &call.call_id).routes().count(), 0);
    a.bye(&mut call);
    let bye = b.request(Method::Bye, &call.call_id);
    assert_eq!(bye.routes().count(), 0);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    assert_eq!(a.response(&call.call_id, Method::Bye).status(), Some(200));
    common::calls::wait_ready(&c, 1, "1002");
}

/// Phones that keep their registrar alive with OPTIONS (Yealink,
/// Grandstream) send it to the domain or the blade's address, some with
/// their outbound Route: the blade answers 200 itself.
#[test]
fn an_options_keep_alive_to_the_registrar() {
    let blade = blade(190);
    let mut a = phone(blade.sip, "1001", 191, "");
    for (ruri, route) in [
        (format!("sip:{DOMAIN}"), String::new()),
        (format!("sip:{DOMAIN}"), domain_route()),
        (format!("sip:{}", blade.sip), blade_route(blade.sip)),
    ] {
        let call_id = format!("opt-{}", common::unique());
        a.send(format!(
            "OPTIONS {ruri} SIP/2.0\r\n{}{route}Max-Forwards: 70\r\n\
             From: <sip:1001@{DOMAIN}>;tag=o1\r\nTo: <{ruri}>\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 OPTIONS\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n",
            a.via(&common::branch())
        ));
        let ok = a.response(&call_id, Method::Options);
        assert_eq!(
            ok.status(),
            Some(200),
            "{ruri} {route}: {}",
            first_line(&ok)
        );
    }
}

/// A reliable 183 with SDP across blades (RFC 3262): the caller, whose
/// outbound proxy is the domain, PRACKs it along the early dialog's route
/// set with its outbound Route first; the PRACK and its 200 pass, then
/// the call is answered.
#[test]
fn a_reliable_183_prack_with_an_outbound_route_across_blades() {
    let c = cluster(200);
    let (s, t) = (c.members[0].sip, c.members[1].sip);
    let mut a = phone(s, "1001", 201, &domain_route());
    let mut b = phone(t, "1002", 202, "");
    c.wait_state(1, "1002", "ready");
    let mut call = a.call("1002");
    a.invite(
        &mut call,
        &format!("{}Supported: 100rel, timer\r\n", domain_route()),
    );
    let invite = b.request(Method::Invite, &call.call_id);
    let sdp = "v=0\r\no=- 3 3 IN IP4 127.0.20.202\r\ns=-\r\nc=IN IP4 127.0.20.202\r\nt=0 0\r\nm=audio 4004 RTP/AVP 0\r\n";
    let early = common::response_text(
        &invite,
        183,
        "Session Progress",
        CALLEE_TAG,
        &b.contact_uri(),
        "Require: 100rel\r\nRSeq: 1\r\n",
    )
    .replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ),
    );
    b.send(&early);
    let progress = a.response(&call.call_id, Method::Invite);
    assert_eq!(progress.status(), Some(183));
    let mut early_call = call.clone();
    early_call.to = header(&progress, HeaderName::To);
    early_call.target = progress
        .contacts()
        .next()
        .map(|c| c.uri().as_str().to_owned());
    let mut rr: Vec<String> = progress
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    rr.reverse();
    rr.insert(0, format!("<sip:{DOMAIN};lr>"));
    early_call.routes = rr;
    let prack = a
        .in_dialog_text(&early_call, "PRACK", call.cseq + 1)
        .replace(
            "Content-Length: 0\r\n",
            "RAck: 1 1 INVITE\r\nContent-Length: 0\r\n",
        );
    a.send(&prack);
    let got = b.request(Method::Prack, &call.call_id);
    assert_eq!(got.routes().count(), 0);
    b.answer(&got, 200, "OK", CALLEE_TAG);
    assert_eq!(a.response(&call.call_id, Method::Prack).status(), Some(200));
    b.answer(&invite, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200));
    call.learn(&ok);
    call.routes.insert(0, format!("<sip:{DOMAIN};lr>"));
    a.ack_2xx(&call);
    assert_eq!(b.request(Method::Ack, &call.call_id).routes().count(), 0);
    call.cseq += 1; // past the PRACK's
    a.bye(&mut call);
    let bye = b.request(Method::Bye, &call.call_id);
    b.answer(&bye, 200, "OK", CALLEE_TAG);
    assert_eq!(a.response(&call.call_id, Method::Bye).status(), Some(200));
    common::calls::wait_ready(&c, 1, "1002");
}
