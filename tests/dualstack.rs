//! Address handling: IPv6 spellings, address families and names.
//!
//! The blade compares addresses in many places (a response only from the
//! IP its request went to; a routed in-dialog request only to a peer
//! blade, an agent's terminal, the caller's terminal or a kept dialog's
//! hop; "is this us" for Route and Request-URI hosts). These tests write
//! the same IPv6 address in other spellings (`[0:0:0:0:0:0:0:1]`,
//! leading zeros) than the blade does (`[::1]`), mix address families in
//! a config, and write host names where IP literals are expected.
//!
//! IPv6 tests run on `::1` (skipped, saying so, where there is none);
//! IPv4 ones on 127.0.17.x. On `::1` blades and phones share one IP, so
//! the checks that go by IP alone pass whatever the spelling; the ones
//! that compare whole addresses (a Route naming the blade or one of its
//! core ports, a Request-URI at an agent's binding, a REGISTER's
//! Contact) are what the other spellings exercise.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};

use common::calls::{CALLEE_TAG, answered_call, callee_request, caller_request, confirm};
use common::cluster::TestCluster;
use common::{TestBlade, Ua, first_line};
use sipblade::config::Config;
use sipblade::runtime::Options;
use sipblade::sip::{Message, Method};

const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
/// `::1` as the blade never writes it.
const EXPANDED: &str = "[0:0:0:0:0:0:0:1]";
/// `::1` with leading zeros.
const ZEROS: &str = "[0000:0000:0000:0000:0000:0000:0000:0001]";

fn v4(host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 17, host))
}

/// Whether `::1` can be bound here; if not, says why the test is skipped.
fn have_ipv6() -> bool {
    match UdpSocket::bind((V6, 0)) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: no IPv6 loopback here ({e})");
            false
        }
    }
}

/// `text` with every `[::1]` written as `spelling`.
fn respell(text: &str, spelling: &str) -> String {
    text.replace("[::1]", spelling)
}

/// Registers `ua` (auth off) with its Contact written as `contact`.
fn register_contact(ua: &mut Ua, contact: &str) -> Message {
    ua.register_once(&format!("Contact: <{contact}>\r\nExpires: 3600\r\n"))
}

/// The response `status` to `req` as a UAS writes it, with `contact` as
/// its Contact on an INVITE's 101-299.
fn answer_text(req: &Message, status: u16, contact: &str) -> String {
    common::response_text(req, status, "Whatever", CALLEE_TAG, contact, "")
}

/// `ua` sends `req`, `peer` gets it as `method` and answers 200, `ua`
/// gets the 200: both directions of one in-dialog transaction passed the
/// blades' checks.
fn round_trip(ua: &mut Ua, peer: &mut Ua, req: &str, method: Method, call_id: &str) -> Message {
    ua.send(req);
    let got = peer.request(method, call_id);
    peer.send(answer_text(&got, 200, &peer.contact_uri()));
    let ok = ua.response(call_id, method);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    got
}

#[test]
fn a_call_through_an_ipv6_blade_takes_every_spelling_of_its_and_the_phones_addresses() {
    if !have_ipv6() {
        return;
    }
    let blade = TestBlade::start_at(2, false, Options::default(), "", V6);
    let mut a = Ua::new_at(blade.sip, "1001", V6);
    let mut b = Ua::new_at(blade.sip, "1002", V6);
    // The caller registers in a spelling the blade never writes, the
    // callee as the blade does.
    let a_contact = respell(&a.contact_uri(), EXPANDED);
    let ok = register_contact(&mut a, &a_contact);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    let b_own = b.contact_uri();
    let ok = register_contact(&mut b, &b_own);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));

    // The INVITE's Via and Contact in a third spelling.
    let mut call = a.call(&b.ext);
    let invite = respell(&a.invite_text(&mut call, ""), ZEROS);
    a.send(&invite);
    let got = b.request(Method::Invite, &call.call_id);
    assert_eq!(got.request_uri().unwrap().as_str(), b.contact_uri());
    let caller_via = got.vias().last().expect("the caller's Via");
    assert_eq!(
        caller_via.received(),
        None,
        "a sent-by of the source's address, however spelled, needs no received: {:?}",
        caller_via.as_bytes()
    );
    // The callee's answers carry its Contact expanded.
    let b_contact = respell(&b.contact_uri(), EXPANDED);
    b.send(answer_text(&got, 180, &b_contact));
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180), "{}", first_line(&ringing));
    b.send(answer_text(&got, 200, &b_contact));
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    assert_eq!(call.routes.len(), 1, "{:?}", call.routes);
    assert!(call.routes[0].contains("[::1]"), "{:?}", call.routes);
    // The caller writes the blade's Record-Route back expanded.
    call.routes = call.routes.iter().map(|r| respell(r, EXPANDED)).collect();
    a.send(respell(&a.in_dialog_text(&call, "ACK", call.cseq), ZEROS));
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.routes().count(), 0, "the blade popped its Route");

    // Caller to callee: INFO, and a re-INVITE (a target refresh).
    let info = respell(&caller_request(&a, &mut call, "INFO"), ZEROS);
    round_trip(&mut a, &mut b, &info, Method::Info, &call.call_id);
    let reinvite = respell(&caller_request(&a, &mut call, "INVITE"), EXPANDED);
    let got_re = round_trip(&mut a, &mut b, &reinvite, Method::Invite, &call.call_id);
    a.send(respell(&a.in_dialog_text(&call, "ACK", call.cseq), ZEROS));
    b.request(Method::Ack, &call.call_id);
    assert_eq!(got_re.routes().count(), 0);

    // Callee to caller, along the Record-Route it got, spelled otherwise,
    // to the caller's Contact as written (expanded spelling).
    let info = respell(&callee_request(&b, &got, "INFO", 1), ZEROS);
    let got_info = round_trip(&mut b, &mut a, &info, Method::Info, &call.call_id);
    assert_eq!(
        got_info.request_uri().unwrap().as_str(),
        respell(&a.contact_uri(), ZEROS),
        "the Request-URI as the callee wrote it"
    );
    // The callee hangs up.
    let bye = respell(&callee_request(&b, &got, "BYE", 2), EXPANDED);
    round_trip(&mut b, &mut a, &bye, Method::Bye, &call.call_id);
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    blade.wait_no_sessions();
}

#[test]
fn a_cross_blade_call_on_ipv6_passes_every_address_check_both_ways_in_other_spellings() {
    if !have_ipv6() {
        return;
    }
    let mut cluster = TestCluster::new_on_ipv6_loopback(2, 30, 1);
    cluster.start_blade(0);
    cluster.start_blade(1);
    cluster.wait_linked();
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", V6);
    let mut b = cluster.registered_on(t, "1002", V6);
    let (mut call, invite) = answered_call(&mut a, &mut b, 2);
    // The caller writes both blades' Record-Routes back expanded, the
    // callee its copy with leading zeros.
    call.routes = call.routes.iter().map(|r| respell(r, EXPANDED)).collect();
    a.send(respell(&a.in_dialog_text(&call, "ACK", call.cseq), ZEROS));
    let ack = b.request(Method::Ack, &call.call_id);
    assert_eq!(ack.routes().count(), 0, "every blade popped its Route");
    common::calls::assert_hosted(&cluster, t, "1002", "blade-1");

    let info = respell(&caller_request(&a, &mut call, "INFO"), ZEROS);
    round_trip(&mut a, &mut b, &info, Method::Info, &call.call_id);
    // The callee holds the call (a re-INVITE through T, then S), ACKs it.
    let reinvite = respell(&callee_request(&b, &invite, "INVITE", 1), ZEROS);
    round_trip(&mut b, &mut a, &reinvite, Method::Invite, &call.call_id);
    let ack = respell(&callee_request(&b, &invite, "ACK", 1), EXPANDED);
    b.send(ack);
    a.request(Method::Ack, &call.call_id);
    // The callee hangs up: S frees both agents, T gets its agent back.
    let bye = respell(&callee_request(&b, &invite, "BYE", 2), EXPANDED);
    round_trip(&mut b, &mut a, &bye, Method::Bye, &call.call_id);
    common::calls::wait_ready(&cluster, t, "1002");
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.sessions(s).is_empty());
    assert_eq!(
        cluster.metric(
            s,
            "sipblade_calls_total{outcome=\"answered\",route=\"cross_blade\"}"
        ),
        1.0
    );
}

#[test]
fn a_registration_is_the_same_contact_in_any_spelling_of_its_ipv6_address() {
    if !have_ipv6() {
        return;
    }
    let blade = TestBlade::start_at(1, false, Options::default(), "", V6);
    let mut b = Ua::new_at(blade.sip, "1002", V6);
    let contact = b.contact_uri();
    let ok = register_contact(&mut b, &contact);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    // Removing it by another spelling of its address logs the agent out
    // (RFC 3261 §10.3 step 7), rather than leaving it bound.
    let removal = format!("Contact: <{}>;expires=0\r\n", respell(&contact, ZEROS));
    let ok = b.register_once(&removal);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert_eq!(ok.contacts().count(), 0, "no binding left: {ok:?}");
    assert_eq!(blade.agent_state("1002"), "logged_out");
    // The same terminal listed twice, spelled two ways, is one contact
    // (RFC 3261 §10.2.1 lets a REGISTER list several).
    let twice = format!(
        "Contact: <{contact}>, <{}>\r\nExpires: 3600\r\n",
        respell(&contact, EXPANDED)
    );
    let ok = b.register_once(&twice);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert_eq!(ok.contacts().count(), 1, "one binding: {ok:?}");
    assert_eq!(blade.agent_state("1002"), "ready");
}

#[test]
fn responses_reach_an_ipv6_phone_at_its_source_whatever_its_via_says() {
    if !have_ipv6() {
        return;
    }
    let blade = TestBlade::start_at(1, false, Options::default(), "", V6);
    let mut a = Ua::new_at(blade.sip, "1001", V6);
    let mut b = Ua::new_at(blade.sip, "1002", V6);
    for ua in [&mut a, &mut b] {
        let ok = ua.register(3600);
        assert_eq!(ok.status(), Some(200), "{} registers", ua.ext);
    }
    let real = format!("{}", a.addr);
    // RFC 3581: a sent-by with a port nobody listens on, asking for rport.
    let mut call = a.call(&b.ext);
    let invite = a
        .invite_text(&mut call, "")
        .replace(&format!("UDP {real};"), "UDP [::1]:9;rport;");
    a.send(&invite);
    let got = b.request(Method::Invite, &call.call_id);
    let caller_via = got.vias().last().expect("the caller's Via");
    assert_eq!(
        caller_via.rport(),
        Some(Some(a.addr.port())),
        "{caller_via:?}"
    );
    let received: IpAddr = caller_via
        .received()
        .expect("received, as rport asks (RFC 3581 §4)")
        .trim_matches(['[', ']'])
        .parse()
        .expect("an IP address");
    assert_eq!(received, V6);
    b.answer(&got, 180, "Ringing", CALLEE_TAG);
    let ringing = a.response(&call.call_id, Method::Invite);
    assert_eq!(ringing.status(), Some(180), "{}", first_line(&ringing));
    b.answer(&got, 486, "Busy Here", CALLEE_TAG);
    let busy = a.response(&call.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    a.ack_failure(&call, &busy);

    // A sent-by that names a host, without rport: received says where
    // the request came from, and the answer goes there.
    let mut call = a.call(&b.ext);
    let invite = a
        .invite_text(&mut call, "")
        .replace(&format!("UDP {real};"), "UDP localhost:9;");
    a.send(&invite);
    let got = b.request(Method::Invite, &call.call_id);
    let caller_via = got.vias().last().expect("the caller's Via");
    assert_eq!(caller_via.host(), "localhost");
    assert!(caller_via.received().is_some(), "{caller_via:?}");
    b.answer(&got, 486, "Busy Here", CALLEE_TAG);
    let busy = a.response(&call.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    a.ack_failure(&call, &busy);
}

/// A two-blade cluster on 127.0.17.1-2 whose blade-1 config has `edit`
/// applied; returns the load result and the config's lines.
fn load_edited(
    edit: impl Fn(&str) -> String,
) -> (Result<Config, sipblade::config::ConfigError>, String) {
    let cluster = TestCluster::new_in(17, 2, 1, 30, 1);
    let path = cluster.dir.path().join("edited.toml");
    let text = cluster.config_text(0, &cluster.certs_dir());
    assert!(
        Config::from_toml(&text, &path).is_ok(),
        "the unedited config loads"
    );
    let text = edit(&text);
    (Config::from_toml(&text, &path), text)
}

/// The line (1-based) of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("the line")
        + 1
}

#[test]
fn a_peer_of_the_other_address_family_than_the_blade_is_refused_with_its_line() {
    let cluster_peer_sip = "127.0.17.2:";
    // The peer's SIP address IPv6, the blade's SIP sockets IPv4.
    let (loaded, text) =
        load_edited(|t| t.replacen(&format!("sip = \"{cluster_peer_sip}"), "sip = \"[::1]:", 1));
    let err = loaded.expect_err("a peer the blade's SIP sockets cannot reach is refused");
    assert_eq!(err.line(), Some(line_of(&text, "sip = \"[::1]:")), "{err}");
    assert!(err.to_string().contains("IPv6"), "{err}");
    // The peer's QUIC address IPv6, the link's socket IPv4.
    let (loaded, text) = load_edited(|t| t.replacen("quic = \"127.0.17.2:", "quic = \"[::1]:", 1));
    let err = loaded.expect_err("a peer the link's socket cannot reach is refused");
    assert_eq!(err.line(), Some(line_of(&text, "quic = \"[::1]:")), "{err}");
    assert!(err.to_string().contains("IPv6"), "{err}");
    // Nor does the IPv6 wildcard reach IPv4 peers: a link on `[::]:PORT`
    // to a peer on 127.0.17.x never came up when tried (`0.0.0.0:PORT`
    // and the IPv4 address did, within a second).
    let (loaded, text) =
        load_edited(|t| t.replacen("listen = \"127.0.17.1:", "listen = \"[::]:", 1));
    let err = loaded.expect_err("IPv4 peers of a link on [::] are refused");
    assert_eq!(
        err.line(),
        Some(line_of(&text, "quic = \"127.0.17.2:")),
        "{err}"
    );
    assert!(err.to_string().contains("IPv4"), "{err}");
}

#[test]
fn a_phone_that_names_itself_localhost_is_reached_where_it_registered_from() {
    let blade = TestBlade::start_at(1, false, Options::default(), "", v4(1));
    let mut a = Ua::new_at(blade.sip, "1001", v4(11));
    let mut b = Ua::new_at(blade.sip, "1002", v4(12));
    let ok = a.register(3600);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    // The callee's Contact names a host (not resolved on the message
    // path): its binding is where the REGISTER came from.
    let named = format!("sip:1002@localhost:{}", b.addr.port());
    let ok = register_contact(&mut b, &named);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    assert_eq!(blade.agent("1002")["contact"], b.addr.to_string());

    let mut call = a.call(&b.ext);
    a.invite(&mut call, "");
    let got = b.request(Method::Invite, &call.call_id);
    assert_eq!(got.request_uri().unwrap().as_str(), named);
    b.send(answer_text(&got, 200, &named));
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    assert_eq!(call.target.as_deref(), Some(named.as_str()));
    confirm(&mut a, &mut b, &call);
    // In-dialog requests to the named Contact reach the terminal too.
    let info = caller_request(&a, &mut call, "INFO");
    round_trip(&mut a, &mut b, &info, Method::Info, &call.call_id);
    a.bye(&mut call);
    let bye = b.request(Method::Bye, &call.call_id);
    b.send(answer_text(&bye, 200, ""));
    let done = a.response(&call.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
    blade.wait_state("1002", "ready");
    blade.wait_no_sessions();
}

#[test]
fn a_route_past_the_blade_that_names_a_host_is_passed_over_for_the_request_uri() {
    // Names are not resolved on the message path (README, Limits): a hop
    // that record-routed by name is passed over, and the request goes
    // where its Request-URI leads, within the relay checks.
    let blade = TestBlade::start_at(1, false, Options::default(), "", v4(1));
    let mut a = Ua::new_at(blade.sip, "1001", v4(21));
    let mut b = Ua::new_at(blade.sip, "1002", v4(22));
    for ua in [&mut a, &mut b] {
        let ok = ua.register(3600);
        assert_eq!(ok.status(), Some(200), "{} registers", ua.ext);
    }
    let mut call = a.call(&b.ext);
    a.invite(&mut call, "");
    let got = b.request(Method::Invite, &call.call_id);
    // A proxy in front of the callee record-routed by name.
    let with_edge = answer_text(&got, 200, &b.contact_uri()).replacen(
        "Record-Route: ",
        "Record-Route: <sip:edge.invalid;lr>, ",
        1,
    );
    b.send(with_edge);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    assert_eq!(call.routes.len(), 2, "{:?}", call.routes);
    assert_eq!(call.routes[1], "<sip:edge.invalid;lr>");
    a.ack_2xx(&call);
    b.request(Method::Ack, &call.call_id);
    let info = caller_request(&a, &mut call, "INFO");
    let got_info = round_trip(&mut a, &mut b, &info, Method::Info, &call.call_id);
    let routes: Vec<String> = got_info
        .routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    assert_eq!(
        routes,
        ["<sip:edge.invalid;lr>"],
        "only the blade's Route popped"
    );
    // The call ends on the blade as on the phones: nothing is left held.
    call.cseq += 1;
    let bye = a.in_dialog_text(&call, "BYE", call.cseq);
    round_trip(&mut a, &mut b, &bye, Method::Bye, &call.call_id);
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    blade.wait_no_sessions();
}

#[test]
fn a_blade_address_written_as_ipv4_mapped_ipv6_is_refused_with_its_line() {
    // Bound so, a blade's Vias and Record-Routes would say
    // `[::ffff:127.0.17.1]` and every IPv4 phone's REGISTER would get 400
    // (its Contact not of the blade's IP version).
    let (loaded, text) =
        load_edited(|t| t.replacen("sip = \"127.0.17.1:", "sip = \"[::ffff:127.0.17.1]:", 1));
    let err = loaded.expect_err("a v4-mapped SIP address is refused");
    assert_eq!(
        err.line(),
        Some(line_of(&text, "[::ffff:127.0.17.1]")),
        "{err}"
    );
    assert!(
        err.to_string().contains("\"127.0.17.1:"),
        "names the IPv4 spelling: {err}"
    );
    let (loaded, text) =
        load_edited(|t| t.replacen("quic = \"127.0.17.2:", "quic = \"[::ffff:127.0.17.2]:", 1));
    let err = loaded.expect_err("a v4-mapped peer address is refused");
    assert_eq!(
        err.line(),
        Some(line_of(&text, "[::ffff:127.0.17.2]")),
        "{err}"
    );
}

#[test]
fn a_domain_written_as_an_ipv6_address_is_known_in_any_spelling() {
    // A small call centre's domain is often its service address.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("agents.toml"), common::agents_toml()).expect("agents");
    let any_port = std::net::SocketAddr::new(v4(1), 0).to_string();
    let text = common::config_toml(1, false, &any_port, &any_port)
        .replace(common::DOMAIN, "[2001:db8::10]");
    let path = dir.path().join("blade.toml");
    let config = Config::from_toml(&text, &path).expect("valid config");
    let blade = sipblade::runtime::Blade::start_with(config, Options::default()).expect("starts");
    let sip = blade.sip_addr();
    let written = "[2001:DB8:0:0:0:0:0:10]";
    let mut a = Ua::new_at(sip, "1001", v4(31));
    let mut b = Ua::new_at(sip, "1002", v4(32));
    for ua in [&mut a, &mut b] {
        let reg = ua
            .register_text(&ua.binding_headers(3600))
            .replace(common::DOMAIN, written);
        ua.send(reg);
        let ok = ua.expect_where("the REGISTER's answer", |m| !m.is_request());
        assert_eq!(
            ok.status(),
            Some(200),
            "{} registers: {}",
            ua.ext,
            first_line(&ok)
        );
    }
    let mut call = a.call(&b.ext);
    let invite = a
        .invite_text(&mut call, "")
        .replace(common::DOMAIN, "[2001:db8:0::10]");
    a.send(&invite);
    let got = b.request(Method::Invite, &call.call_id);
    assert_eq!(got.request_uri().unwrap().as_str(), b.contact_uri());
    b.send(answer_text(&got, 486, ""));
    let busy = a.response(&call.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    a.ack_failure(&call, &busy);
    blade.stop();
}

#[test]
fn three_blades_on_one_ipv6_address_tell_each_other_apart_by_port() {
    if !have_ipv6() {
        return;
    }
    // Several blades on one host and IP (distinct ports): a peer's
    // requests cannot be told apart by source IP alone. blade-1's first
    // peer on ::1 is blade-2; the call comes from blade-3.
    let mut cluster = TestCluster::new_on_ipv6_loopback(3, 30, 1);
    for i in 0..3 {
        cluster.start_blade(i);
    }
    cluster.wait_linked();
    let (s, t) = (2, 0);
    let mut a = cluster.registered_on(s, "1001", V6);
    let mut b = cluster.registered_on(t, "1002", V6);
    let (mut call, _) = answered_call(&mut a, &mut b, 2);
    common::calls::assert_hosted(&cluster, t, "1002", "blade-3");
    confirm(&mut a, &mut b, &call);
    common::calls::hang_up(&mut a, &mut b, &mut call);
    common::calls::wait_ready(&cluster, t, "1002");
    cluster.wait_state(s, "1001", "ready");
}

/// A callee whose 2xx names a Contact of the other IP version (IPv6 on an
/// IPv4 blade): the caller's BYE to it cannot be sent, and the blade says
/// so at once (RFC 3261 §16.9: a transport error is a failure answer)
/// rather than leaving the caller to its 32 s timer; the call is over on
/// the blade either way.
#[test]
fn a_bye_to_a_contact_the_blade_cannot_send_to_fails_at_once() {
    let blade = TestBlade::start_at(1, false, Options::default(), "", v4(1));
    let mut a = Ua::new_at(blade.sip, "1001", v4(41));
    let mut b = Ua::new_at(blade.sip, "1002", v4(42));
    assert_eq!(a.register(3600).status(), Some(200));
    assert_eq!(b.register(3600).status(), Some(200));
    let unreachable = "sip:1002@[2001:db8::2]:5060";
    let mut call = a.call(&b.ext);
    a.invite(&mut call, "");
    let got = b.request(Method::Invite, &call.call_id);
    b.send(answer_text(&got, 200, unreachable));
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    a.ack_2xx(&call);

    let sent = std::time::Instant::now();
    a.bye(&mut call);
    let failed = a.response(&call.call_id, Method::Bye);
    let status = failed.status().unwrap_or(0);
    assert!(status >= 400, "{}", first_line(&failed));
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(2),
        "answered after {:?}",
        sent.elapsed()
    );
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    blade.wait_no_sessions();
}
