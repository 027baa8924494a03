//! Black-box acceptance findings: behaviours a hostile or merely unusual
//! peer exposed over real sockets, each kept as a regression test.
//!
//! Every blade and user agent here lives on 127.0.1.x, or 127.0.5.1 to
//! 127.0.5.40 for the findings of the stream and admin audit (the ranges
//! this file keeps to, apart from other test files' 127.0.0.x), with ports
//! chosen by the OS.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{TestBlade, Ua, first_line, header};
use sipblade::runtime::Options;
use sipblade::sip::{HeaderName, Method};

/// The address of this file's blades.
const BLADE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);

/// The address of the audit findings' blades; their user agents are on
/// 127.0.5.2 to 127.0.5.40.
const AUDIT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 5, 1);

/// 127.0.5.`host`, an audit test's user agent.
fn audit_ua_ip(host: u8) -> Ipv4Addr {
    assert!(
        (2..=40).contains(&host),
        "127.0.5.{host} is outside the range"
    );
    Ipv4Addr::new(127, 0, 5, host)
}

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

/// A TCP connection to `blade` from 127.0.5.`host`.
fn tcp_from(blade: SocketAddr, host: u8) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .unwrap();
    socket
        .bind(&SocketAddr::new(audit_ua_ip(host).into(), 0).into())
        .unwrap();
    socket.connect(&blade.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    stream
}

/// What `stream` receives until `done` holds of it, the blade closes it,
/// or 3 s pass (far less than the 32 s a stalled connection is given);
/// and whether it was closed.
fn receive(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> (String, bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        if done(&got) {
            break false;
        }
        match stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) if Instant::now() < deadline => {}
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// An OPTIONS to `blade` itself from `local` over TCP, with `eol` ending
/// each header line (the start line ends with CRLF).
fn options_over_tcp(blade: SocketAddr, local: SocketAddr, eol: &str) -> String {
    format!(
        "OPTIONS sip:{blade} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKaudit{n}{eol}\
         Max-Forwards: 70{eol}From: <sip:1001@cc.example>;tag=a{eol}To: <sip:{blade}>{eol}\
         Call-ID: audit-{n}@test{eol}CSeq: 1 OPTIONS{eol}Content-Length: 0{eol}{eol}",
        n = common::unique()
    )
}

/// Over TCP, bytes that can never be SIP (a run of NULs, another
/// protocol's binary, LF-only line endings) close the connection at once,
/// not at the 32 s stall timeout, counted as malformed; a sender that gave
/// a usable Via first gets a 400 saying why, an LF-only request included.
/// A CRLF ping still gets its pong, and a request trickled a byte at a
/// time its answer. Over UDP an LF-only request is counted and answered
/// 400 too (SPEC §5: a malformed request gets a 400, not silence).
#[test]
fn a_tcp_stream_that_cannot_be_sip_is_closed_at_once() {
    let blade = TestBlade::start_at(1, false, Options::default(), "", AUDIT_IP);
    let malformed = "sipblade_messages_malformed_total";

    let mut fine = tcp_from(blade.sip, 2);
    let local = fine.local_addr().unwrap();
    fine.write_all(b"\r\n\r\n").unwrap();
    for byte in options_over_tcp(blade.sip, local, "\r\n").bytes() {
        fine.write_all(&[byte]).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let (got, closed) = receive(&mut fine, |b| b.ends_with(b"\r\n\r\n") && b.len() > 4);
    assert!(!closed, "the trickled request's connection stays open");
    assert!(
        got.starts_with("\r\nSIP/2.0 200 "),
        "a pong, then a 200: {got:?}"
    );

    let tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".repeat(8);
    let lf_only =
        options_over_tcp(blade.sip, "127.0.5.5:5060".parse().unwrap(), "\n").replace("\r\n", "\n");
    for (host, bytes) in [(3, vec![0; 4096]), (4, tls_hello)] {
        let mut stream = tcp_from(blade.sip, host);
        stream.write_all(&bytes).unwrap();
        let (got, closed) = receive(&mut stream, |_| false);
        assert!(closed, "127.0.5.{host}: the connection is closed at once");
        assert_eq!(got, "", "127.0.5.{host}: nothing to answer");
    }
    let mut stream = tcp_from(blade.sip, 5);
    stream.write_all(lf_only.as_bytes()).unwrap();
    let (got, closed) = receive(&mut stream, |_| false);
    assert!(closed, "an LF-only request's connection is closed at once");
    assert!(
        got.starts_with("SIP/2.0 400 Bad Request (line not ended by CRLF)\r\n"),
        "an LF-only request is told why: {got:?}"
    );
    // A start line the blade can answer, then a header ended by a bare LF.
    let mut mixed = tcp_from(blade.sip, 6);
    let text = options_over_tcp(blade.sip, mixed.local_addr().unwrap(), "\r\n").replacen(
        "\r\nFrom:",
        "\nFrom:",
        1,
    );
    mixed.write_all(text.as_bytes()).unwrap();
    let (got, closed) = receive(&mut mixed, |_| false);
    assert!(closed, "a bare LF closes the connection");
    assert!(
        got.starts_with("SIP/2.0 400 Bad Request (line not ended by CRLF)\r\n"),
        "{got:?}"
    );
    common::wait_until("four malformed streams counted", || {
        blade.metric(malformed) == 4.0
    });

    let udp = UdpSocket::bind(SocketAddr::new(audit_ua_ip(7).into(), 0)).unwrap();
    let lf = options_over_tcp(blade.sip, udp.local_addr().unwrap(), "\n")
        .replace("\r\n", "\n")
        .replace("/TCP", "/UDP");
    udp.send_to(lf.as_bytes(), blade.sip).unwrap();
    common::wait_until("the LF-only datagram counted", || {
        blade.metric(malformed) == 5.0
    });
    udp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = udp
        .recv_from(&mut buf)
        .expect("a 400 to the LF-only datagram");
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(
        got.starts_with("SIP/2.0 400 Bad Request (line not ended by CRLF)\r\n"),
        "{got:?}"
    );
    drop(fine);
}

/// A request with no Via has nothing to route its answer by, yet its
/// sender is told why it hears nothing more: a 400 without a Via, back to
/// the datagram's source or down the same TCP connection (SPEC §5: a
/// malformed request gets a 400, not silence). Junk stays unanswered.
#[test]
fn a_request_without_via_gets_its_400_from_its_source() {
    let blade = TestBlade::start_at(1, false, Options::default(), "", AUDIT_IP);
    let request = "OPTIONS sip:cc.example SIP/2.0\r\nFrom: <sip:a@cc.example>;tag=nv1\r\n\
To: <sip:cc.example>\r\nCall-ID: no-via\r\nCSeq: 3 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let expected = "SIP/2.0 400 Bad Request (missing Via header)\r\n";

    let udp = UdpSocket::bind(SocketAddr::new(audit_ua_ip(9).into(), 0)).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    udp.send_to(b"hello there\r\n\r\n", blade.sip).unwrap();
    udp.send_to(request.as_bytes(), blade.sip).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = udp
        .recv_from(&mut buf)
        .expect("a 400 to the Via-less request");
    let got = String::from_utf8_lossy(&buf[..n]);
    assert!(
        got.starts_with(expected),
        "the first answer is the request's: {got:?}"
    );
    assert!(got.contains("Call-ID: no-via\r\n"), "{got:?}");
    assert!(!got.contains("Via:"), "{got:?}");

    let mut stream = tcp_from(blade.sip, 10);
    stream.write_all(request.as_bytes()).unwrap();
    let (got, _) = receive(&mut stream, |got| got.ends_with(b"\r\n\r\n"));
    assert!(got.starts_with(expected), "over TCP: {got:?}");
    common::wait_until("three malformed messages counted", || {
        blade.metric("sipblade_messages_malformed_total") == 3.0
    });
}

/// RFC 9112 §3.2.2: the admin port takes an absolute-form request target
/// (`GET http://host:port/status`, as a client set to use a proxy sends
/// it) as well as the origin form.
#[test]
fn the_admin_port_takes_an_absolute_form_target() {
    let blade = TestBlade::start_at(1, false, Options::default(), "", AUDIT_IP);
    let (code, _, body) = common::http(
        blade.admin,
        "GET",
        &format!("http://{}/status", blade.admin),
    );
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(status["agents"].is_array(), "{body}");
    let (code, _, body) = common::http(
        blade.admin,
        "GET",
        &format!("http://{}/metrics", blade.admin),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("sipblade_messages_malformed_total"), "{body}");
}

/// OPTIONS to the blade itself (no user part) is answered 200 at its SIP
/// address, with or without the port, but a Request-URI with the blade's
/// IP and another port names another endpoint on its host: the blade does
/// not answer for it (here a stranger's request, 403 as for any agent).
#[test]
fn options_to_another_port_on_the_blades_ip_is_not_for_the_blade() {
    let blade = TestBlade::start_at(1, false, Options::default(), "", AUDIT_IP);
    let mut ua = Ua::new_at(blade.sip, "1001", audit_ua_ip(8));
    let other = if blade.sip.port() == 9999 { 9998 } else { 9999 };
    let ip = blade.sip.ip();
    for (target, want) in [
        (blade.sip.to_string(), 200),
        (ip.to_string(), 200),
        (format!("{ip}:{other}"), 403),
    ] {
        let call_id = format!("opt-{}@test", common::unique());
        ua.send(format!(
            "OPTIONS sip:{target} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <{}>;tag=o\r\n\
             To: <sip:{target}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            ua.via(&common::branch()),
            common::aor("1001"),
        ));
        let answer = ua.response(&call_id, Method::Options);
        assert_eq!(
            answer.status(),
            Some(want),
            "sip:{target}: {}",
            first_line(&answer)
        );
    }
}
