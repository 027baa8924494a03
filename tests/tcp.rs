//! SIP over TCP, and bridging TCP and UDP: an agent registered over TCP is
//! reached on its own connection, framed by Content-Length; a caller on
//! UDP calls it; once that connection has closed, the blade connects to
//! the agent's Contact; CRLF keep-alives are answered; connections past
//! `max_tcp_connections` are refused; connections that deliver no message,
//! or stall in the middle of one, are closed.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sipblade::sip::Message;

use common::cluster::TestCluster;
use common::tcp::{
    TcpUa, ack_along_route, answer, answered_cross_call_to_tcp, assert_tcp_callee_bye,
    final_response, from_tcp_callee, register_tcp, registered_on_core_of,
};
use common::{TestBlade, agent, wait_until};
use sipblade::runtime::Options;

fn register(ext: &str, contact: &str, transport: &str) -> String {
    format!(
        "REGISTER sip:cc.example SIP/2.0\r\nVia: SIP/2.0/{transport} {contact};branch=z9hG4bKreg{ext}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{ext}@cc.example>;tag=r{ext}\r\nTo: <sip:{ext}@cc.example>\r\n\
         Call-ID: reg-{ext}-tcp\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:{ext}@{contact};transport={}>\r\nContent-Length: 0\r\n\r\n",
        transport.to_lowercase()
    )
}

/// Agent 1002 registered over a TCP connection of its own; and the
/// connection's local address.
fn tcp_callee(blade: &TestBlade) -> (TcpUa, String) {
    let mut callee = TcpUa::connect(blade);
    let callee_addr = callee.local();
    callee.send(&register("1002", &callee_addr, "TCP"));
    assert_eq!(
        callee.recv().status(),
        Some(200),
        "REGISTER over TCP answered on the connection"
    );
    (callee, callee_addr)
}

/// Agent 1001 as a UDP phone on 127.0.0.21, registered and ready; and
/// its address.
fn udp_caller(blade: &TestBlade) -> (UdpSocket, String) {
    udp_caller_on(blade, Ipv4Addr::new(127, 0, 0, 21).into())
}

/// [`udp_caller`] on `ip`.
fn udp_caller_on(blade: &TestBlade, ip: IpAddr) -> (UdpSocket, String) {
    let caller = UdpSocket::bind((ip, 0)).unwrap();
    caller
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let caller_addr = caller.local_addr().unwrap().to_string();
    caller
        .send_to(register("1001", &caller_addr, "UDP").as_bytes(), blade.sip)
        .unwrap();
    assert_eq!(recv_udp(&caller).status(), Some(200));
    wait_until("1001 ready", || {
        agent(blade.admin, "1001")["state"] == "ready"
    });
    (caller, caller_addr)
}

/// The next datagram on `sock`, parsed.
fn recv_udp(sock: &UdpSocket) -> Message {
    let mut buf = [0u8; 65_535];
    let (n, _) = sock.recv_from(&mut buf).expect("an answer within 5 s");
    Message::parse(Bytes::copy_from_slice(&buf[..n])).unwrap()
}

/// An INVITE from 1001 at `caller_addr` (UDP) to 1002.
fn invite_to_1002(caller_addr: &str, branch: &str, call_id: &str) -> String {
    format!(
        "INVITE sip:1002@cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {caller_addr};branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:1001@cc.example>;tag=a\r\nTo: <sip:1002@cc.example>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:1001@{caller_addr}>\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn a_udp_caller_reaches_a_tcp_callee_and_back() {
    udp_caller_reaches_tcp_callee_and_back(
        Ipv4Addr::LOCALHOST.into(),
        Ipv4Addr::new(127, 0, 0, 21).into(),
    );
}

/// The same with the blade and both phones on the IPv6 loopback: a TCP
/// connection and a record-route bridging UDP and TCP, on `[::1]`.
#[test]
fn a_udp_caller_reaches_a_tcp_callee_and_back_over_ipv6() {
    let v6 = IpAddr::from(Ipv6Addr::LOCALHOST);
    if let Err(e) = UdpSocket::bind((v6, 0)) {
        eprintln!("skipped: no IPv6 loopback here ({e})");
        return;
    }
    udp_caller_reaches_tcp_callee_and_back(v6, v6);
}

/// A call from a UDP phone on `caller_ip` to a TCP phone, through a blade
/// of two cores on `blade_ip`, answered, with an INFO each way and a BYE.
fn udp_caller_reaches_tcp_callee_and_back(blade_ip: IpAddr, caller_ip: IpAddr) {
    let blade = TestBlade::start_at(2, false, Options::default(), "", blade_ip);
    let (mut callee, callee_addr) = tcp_callee(&blade);
    wait_until("1002 ready", || {
        agent(blade.admin, "1002")["state"] == "ready"
    });

    let (caller, caller_addr) = udp_caller_on(&blade, caller_ip);
    let invite = invite_to_1002(&caller_addr, "z9hG4bKtcp1", "tcp-bridge-1");
    caller.send_to(invite.as_bytes(), blade.sip).unwrap();
    assert_eq!(recv_udp(&caller).status(), Some(100));
    let forwarded = callee.recv();
    assert_eq!(forwarded.method_str(), Some("INVITE"));
    assert_eq!(
        forwarded.top_via().transport(),
        "TCP",
        "our Via names the transport we used"
    );
    assert_eq!(forwarded.vias().nth(1).unwrap().transport(), "UDP");
    // Bridging transports, the blade record-routes twice (RFC 5658): the
    // callee's side (TCP) on top, the caller's (UDP) below.
    let rrs: Vec<String> = forwarded
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    assert_eq!(rrs.len(), 2, "{rrs:?}");
    assert!(rrs[0].contains("transport=tcp"), "{rrs:?}");
    assert!(rrs[1].contains("transport=udp"), "{rrs:?}");

    callee.send(&answer(&forwarded, 200, &callee_addr));
    let ok = recv_udp(&caller);
    assert_eq!((ok.status(), ok.vias().count()), (Some(200), 1));
    wait_until("both in call", || {
        agent(blade.admin, "1002")["state"] == "in_call"
    });

    // The callee's in-dialog request goes out on its connection along the
    // route set as recorded, and reaches the caller over UDP.
    let info = format!(
        "INFO sip:1001@{caller_addr} SIP/2.0\r\nVia: SIP/2.0/TCP {callee_addr};branch=z9hG4bKtcp3\r\n\
         Route: {}\r\nMax-Forwards: 70\r\nFrom: <sip:1002@cc.example>;tag=callee\r\n\
         To: <sip:1001@cc.example>;tag=a\r\nCall-ID: tcp-bridge-1\r\nCSeq: 1 INFO\r\nContent-Length: 0\r\n\r\n",
        rrs.join(", ")
    );
    callee.send(&info);
    let info = recv_udp(&caller);
    assert_eq!(info.method_str(), Some("INFO"));
    assert_eq!(info.routes().count(), 0, "both of our Routes popped");
    assert_eq!(info.top_via().transport(), "UDP");
    caller
        .send_to(answer(&info, 200, &caller_addr).as_bytes(), blade.sip)
        .unwrap();
    assert_eq!(callee.recv().status(), Some(200), "the INFO's answer");

    // The BYE follows the route set (the Record-Route reversed) and
    // reaches the callee on its connection (its Contact's port is
    // ephemeral: not listening).
    let route = format!("{}, {}", rrs[1], rrs[0]);
    let bye = format!(
        "BYE sip:1002@{callee_addr};transport=tcp SIP/2.0\r\nVia: SIP/2.0/UDP {caller_addr};branch=z9hG4bKtcp2\r\n\
         Route: {route}\r\nMax-Forwards: 70\r\nFrom: <sip:1001@cc.example>;tag=a\r\n\
         To: <sip:1002@cc.example>;tag=callee\r\nCall-ID: tcp-bridge-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    caller.send_to(bye.as_bytes(), blade.sip).unwrap();
    let bye = callee.recv();
    assert_eq!(bye.method_str(), Some("BYE"));
    assert_eq!(bye.routes().count(), 0, "both of our Routes popped");
    callee.send(&answer(&bye, 200, &callee_addr));
    assert_eq!(recv_udp(&caller).status(), Some(200));
    wait_until("both ready", || {
        agent(blade.admin, "1001")["state"] == "ready"
            && agent(blade.admin, "1002")["state"] == "ready"
    });
}

/// A call that stays on TCP from caller to callee is record-routed with
/// `transport=tcp`: without it a UA would send the dialog's later requests
/// over UDP (RFC 3263 §4.1).
#[test]
fn a_call_that_stays_on_tcp_is_record_routed_over_tcp() {
    let blade = TestBlade::start(2, false);
    let (mut callee, callee_addr) = tcp_callee(&blade);
    let mut caller = TcpUa::connect(&blade);
    let caller_addr = caller.local();
    caller.send(&register("1001", &caller_addr, "TCP"));
    assert_eq!(caller.recv().status(), Some(200));
    wait_until("1001 ready", || {
        agent(blade.admin, "1001")["state"] == "ready"
    });
    let invite = invite_to_1002(&caller_addr, "z9hG4bKtcptcp", "tcp-tcp@test")
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP")
        .replace(
            &format!("<sip:1001@{caller_addr}>"),
            &format!("<sip:1001@{caller_addr};transport=tcp>"),
        );
    caller.send(&invite);
    let got = callee.recv();
    assert_eq!(got.method(), Some(sipblade::sip::Method::Invite));
    let routes: Vec<String> = got
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(routes[0].contains(";transport=tcp"), "{routes:?}");
    callee.send(&answer(&got, 486, &callee_addr));
    let busy = loop {
        let m = caller.recv();
        if m.status().is_some_and(|s| s >= 200) {
            break m;
        }
    };
    assert_eq!(busy.status(), Some(486));
    let to = busy.to();
    let ack = format!(
        "ACK sip:1002@cc.example SIP/2.0\r\nVia: SIP/2.0/TCP {caller_addr};branch=z9hG4bKtcptcp\r\n\
         Max-Forwards: 70\r\nFrom: <sip:1001@cc.example>;tag=a\r\nTo: <sip:1002@cc.example>;tag={}\r\n\
         Call-ID: tcp-tcp@test\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        to.tag().unwrap_or_default()
    );
    caller.send(&ack);
}

/// A caller that opens a connection per call and names it as its Contact
/// (sipp `-t tn`, a phone behind NAT) is reached on that connection for
/// the callee's BYE, whichever core accepted it and whichever owns the
/// dialog: its Contact's port is not listening, so no other way works.
#[test]
fn a_caller_with_a_connection_per_call_gets_the_callees_bye_on_it() {
    let blade = TestBlade::start(2, false);
    let (mut callee, callee_addr) = tcp_callee(&blade);
    let mut registered = TcpUa::connect(&blade);
    let registered_addr = registered.local();
    registered.send(&register("1001", &registered_addr, "TCP"));
    assert_eq!(registered.recv().status(), Some(200));
    // Eight calls: with two cores, the dialog's core and the connection's
    // core differ for some of them (the Call-ID picks one, the kernel the
    // other).
    for call in 0..8 {
        wait_until("both ready", || {
            agent(blade.admin, "1001")["state"] == "ready"
                && agent(blade.admin, "1002")["state"] == "ready"
        });
        let mut caller = TcpUa::connect(&blade);
        let caller_addr = caller.local();
        let call_id = format!("per-call-{call}@test");
        let invite = invite_to_1002(&caller_addr, &format!("z9hG4bKpc{call}"), &call_id)
            .replace("SIP/2.0/UDP", "SIP/2.0/TCP")
            .replace(
                &format!("<sip:1001@{caller_addr}>"),
                &format!("<sip:1001@{caller_addr};transport=tcp>"),
            );
        caller.send(&invite);
        let forwarded = callee.recv();
        assert_eq!(forwarded.method_str(), Some("INVITE"), "call {call}");
        let rr: Vec<String> = forwarded
            .record_routes()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .collect();
        callee.send(&answer(&forwarded, 200, &callee_addr));
        let ok = loop {
            let m = caller.recv();
            if m.status().is_some_and(|s| s >= 200) {
                break m;
            }
        };
        assert_eq!(ok.status(), Some(200), "call {call}");
        let ack = format!(
            "ACK sip:1002@{callee_addr};transport=tcp SIP/2.0\r\n\
             Via: SIP/2.0/TCP {caller_addr};branch=z9hG4bKpcack{call}\r\nRoute: {}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1001@cc.example>;tag=a\r\n\
             To: <sip:1002@cc.example>;tag=callee\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\n\
             Content-Length: 0\r\n\r\n",
            rr.join(", ")
        );
        caller.send(&ack);
        assert_eq!(callee.recv().method_str(), Some("ACK"), "call {call}");

        let bye = format!(
            "BYE sip:1001@{caller_addr};transport=tcp SIP/2.0\r\n\
             Via: SIP/2.0/TCP {callee_addr};branch=z9hG4bKpcbye{call}\r\nRoute: {}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1002@cc.example>;tag=callee\r\n\
             To: <sip:1001@cc.example>;tag=a\r\nCall-ID: {call_id}\r\nCSeq: 1 BYE\r\n\
             Content-Length: 0\r\n\r\n",
            rr.join(", ")
        );
        callee.send(&bye);
        let got = caller.recv();
        assert_eq!(
            got.method_str(),
            Some("BYE"),
            "call {call}: the BYE reaches the caller on its call's connection"
        );
        caller.send(&answer(&got, 200, &caller_addr));
        let done = callee.recv();
        assert_eq!(done.status(), Some(200), "call {call}: the BYE's answer");
    }
}

#[test]
fn keep_alive_pings_get_pongs_and_bad_framing_closes_the_connection() {
    let blade = TestBlade::start(1, false);
    let mut ua = TcpUa::connect(&blade);
    ua.send("\r\n\r\n");
    // A lone CRLF could be the start of a ping to a framer: read it raw.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pong = Vec::new();
    while pong.len() < 2 {
        assert!(Instant::now() < deadline, "no pong");
        let mut chunk = [0u8; 16];
        if let Ok(n) = ua.stream.read(&mut chunk) {
            pong.extend_from_slice(&chunk[..n]);
        }
    }
    assert_eq!(pong, b"\r\n", "a CRLF pong");
    ua.send("OPTIONS sip:127.0.0.1 SIP/2.0\r\nContent-Length: -5\r\n\r\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut chunk = [0u8; 64];
    loop {
        match ua.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => assert!(
                Instant::now() < deadline,
                "the connection stays open after a framing error"
            ),
        }
    }
    assert_eq!(
        blade.metric("sipblade_messages_malformed_total"),
        1.0,
        "counted as malformed; the ping was not"
    );
}

/// A request that cannot be framed on a stream (no Content-Length, RFC
/// 3261 §20.14) closes the connection, but the sender first gets a 400
/// that says why, as a malformed datagram does.
#[test]
fn a_request_without_content_length_gets_400_before_the_close() {
    let blade = TestBlade::start(1, false);
    let mut ua = TcpUa::connect(&blade);
    let local = ua.local();
    ua.send(&format!(
        "OPTIONS sip:cc.example SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKnocl\r\n\
         Max-Forwards: 70\r\nFrom: <sip:1001@cc.example>;tag=n\r\nTo: <sip:cc.example>\r\n\
         Call-ID: nocl\r\nCSeq: 1 OPTIONS\r\n\r\n"
    ));
    let resp = ua.recv();
    assert_eq!(resp.status(), Some(400));
    assert_eq!(
        resp.reason(),
        Some(&b"Bad Request (missing Content-Length on a stream)"[..])
    );
    assert_eq!(resp.call_id(), "nocl");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut chunk = [0u8; 64];
    loop {
        match ua.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => panic!("more after the 400: {:?}", &chunk[..n]),
            Err(_) => assert!(Instant::now() < deadline, "the connection stays open"),
        }
    }
    assert_eq!(blade.metric("sipblade_messages_malformed_total"), 1.0);
}

/// Agent 1002 registered over a TCP connection of its own with `contact`
/// as its Contact, and that connection closed again.
fn registered_then_disconnected(blade: &TestBlade, contact: &str) {
    let mut registration = TcpUa::connect(blade);
    registration.send(&register("1002", contact, "TCP"));
    assert_eq!(registration.recv().status(), Some(200));
    drop(registration);
    // Time for the blade to see the close (its reader gets end of file).
    std::thread::sleep(Duration::from_millis(100));
}

/// An agent registered over TCP whose Contact names where it accepts
/// connections (a UA like sipp over TCP) is still reached once the
/// connection it registered on has closed: the blade connects to the
/// Contact (RFC 3261 §18.1.1), and the call goes through.
#[test]
fn a_tcp_agent_is_reached_at_its_contact_once_its_connection_closed() {
    let blade = TestBlade::start(2, false);
    let listener = TcpListener::bind("127.0.0.22:0").unwrap();
    let contact = listener.local_addr().unwrap().to_string();
    registered_then_disconnected(&blade, &contact);
    let (caller, caller_addr) = udp_caller(&blade);
    let invite = invite_to_1002(&caller_addr, "z9hG4bKreach", "tcp-reach-1");
    caller.send_to(invite.as_bytes(), blade.sip).unwrap();
    assert_eq!(recv_udp(&caller).status(), Some(100));
    let mut callee = TcpUa::accept(&listener);
    let forwarded = callee.recv();
    assert_eq!(forwarded.method_str(), Some("INVITE"));
    assert_eq!(forwarded.call_id(), "tcp-reach-1");
    callee.send(&answer(&forwarded, 200, &contact));
    assert_eq!(recv_udp(&caller).status(), Some(200));
    wait_until("1002 in call", || {
        agent(blade.admin, "1002")["state"] == "in_call"
    });
}

/// Once an agent's own TCP connection has closed, the connection the blade
/// opens to its Contact carries everything after: the call's ACK and BYE,
/// and the next call. Each request used to open a connection of its own
/// (three a call), which the blade never closed: a descriptor leaked per
/// request to an agent such as sipp over TCP.
#[test]
fn requests_to_an_agent_whose_connection_closed_share_one_connection() {
    let blade = TestBlade::start_at(
        2,
        false,
        Options::default(),
        "",
        Ipv4Addr::new(127, 0, 9, 40),
    );
    let listener = TcpListener::bind("127.0.9.41:0").unwrap();
    let contact = listener.local_addr().unwrap().to_string();
    let mut registration = TcpUa::connect_from(blade.sip, Ipv4Addr::new(127, 0, 9, 41));
    registration.send(&register("1002", &contact, "TCP"));
    assert_eq!(registration.recv().status(), Some(200));
    drop(registration);
    std::thread::sleep(Duration::from_millis(100));
    let mut caller = Ua::new_at(blade.sip, "1001", Ipv4Addr::new(127, 0, 9, 42));
    assert_eq!(caller.register(3600).status(), Some(200));

    let mut callee: Option<TcpUa> = None;
    for _ in 0..2 {
        let mut call = caller.call("1002");
        caller.invite(&mut call, "");
        let callee = callee.get_or_insert_with(|| TcpUa::accept(&listener));
        let invite = callee.recv();
        assert_eq!(invite.method(), Some(Method::Invite));
        callee.send(&answer(&invite, 200, &contact));
        let ok = caller.response(&call.call_id, Method::Invite);
        assert_eq!(ok.status(), Some(200));
        call.learn(&ok);
        caller.ack_2xx(&call);
        assert_eq!(
            callee.recv().method(),
            Some(Method::Ack),
            "on the same connection"
        );
        caller.bye(&mut call);
        let bye = callee.recv();
        assert_eq!(bye.method(), Some(Method::Bye), "on the same connection");
        let mut out = bytes::BytesMut::new();
        bye.response(200, "OK", None, &[], &mut out);
        callee.send(std::str::from_utf8(&out).unwrap());
        assert_eq!(
            caller.response(&call.call_id, Method::Bye).status(),
            Some(200)
        );
        blade.wait_state("1002", "ready");
    }
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "the blade opened another connection to the agent"
    );
}

/// An agent registered over TCP whose connection has closed, and whose
/// Contact takes no connection (a listener with a full accept queue drops
/// the blade's SYNs, as an address gone behind NAT would): the blade gives
/// up on the connection after two seconds and the call fails with 480,
/// not after timer B's 32 seconds.
#[test]
fn a_call_to_a_tcp_contact_that_never_answers_fails_within_seconds() {
    let blade = TestBlade::start(1, false);
    let silent = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let addr: std::net::SocketAddr = "127.0.0.23:0".parse().unwrap();
    silent.bind(&addr.into()).unwrap();
    silent.listen(0).unwrap();
    let contact = silent.local_addr().unwrap().as_socket().unwrap();
    // The one connection a backlog of 0 queues; later SYNs are dropped.
    let _queued = TcpStream::connect(contact).unwrap();
    registered_then_disconnected(&blade, &contact.to_string());
    let (caller, caller_addr) = udp_caller(&blade);
    let invite = invite_to_1002(&caller_addr, "z9hG4bKsilent", "tcp-silent-1");
    let sent = Instant::now();
    caller.send_to(invite.as_bytes(), blade.sip).unwrap();
    assert_eq!(recv_udp(&caller).status(), Some(100));
    assert_eq!(recv_udp(&caller).status(), Some(480));
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

/// An agent registered over TCP whose connection has closed, with the
/// connection's own port as its Contact, cannot be reached (the blade's
/// connection to the Contact is refused: nothing listens there): a call
/// to it fails at once with 480 (RFC 3261 §16.9, a transport error is a
/// 503 from that hop), not with a 408 after timer B's 32 seconds, and both
/// agents are ready again. On two cores, so the connection and the call may live on
/// different ones.
#[test]
fn a_call_to_an_agent_whose_tcp_connection_closed_fails_at_once() {
    let blade = TestBlade::start(2, false);
    let (callee, _) = tcp_callee(&blade);
    drop(callee);
    // Time for the blade to see the close (its reader gets end of file).
    std::thread::sleep(Duration::from_millis(100));
    let (caller, caller_addr) = udp_caller(&blade);
    let invite = invite_to_1002(&caller_addr, "z9hG4bKgone", "tcp-gone-1");
    caller.send_to(invite.as_bytes(), blade.sip).unwrap();
    assert_eq!(recv_udp(&caller).status(), Some(100));
    assert_eq!(recv_udp(&caller).status(), Some(480));
    wait_until("both ready", || {
        agent(blade.admin, "1001")["state"] == "ready"
            && agent(blade.admin, "1002")["state"] == "ready"
    });
    assert_eq!(
        blade.metric("sipblade_calls_total{outcome=\"failed\",route=\"local\"}"),
        1.0
    );
}

/// An OPTIONS to the blade from `local` over TCP.
fn options_request(local: &str, call_id: &str) -> String {
    format!(
        "OPTIONS sip:cc.example SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:1001@cc.example>;tag=o\r\nTo: <sip:cc.example>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// OPTIONS to the blade over `ua`'s connection; the answer's status.
fn options(ua: &mut TcpUa, call_id: &str) -> Option<u16> {
    let local = ua.local();
    ua.send(&options_request(&local, call_id));
    ua.recv().status()
}

/// Past `max_tcp_connections` a connection is closed as soon as the blade
/// accepts it (each holds a file descriptor the blade may need), counted,
/// and the connections already open go on; once one closes, a new one is
/// taken again.
#[test]
fn connections_past_the_limit_are_closed_at_once_and_counted() {
    let blade =
        TestBlade::start_configured(1, false, Options::default(), "max_tcp_connections = 3");
    let mut held: Vec<TcpUa> = (0..3).map(|_| TcpUa::connect(&blade)).collect();
    for (i, ua) in held.iter_mut().enumerate() {
        assert_eq!(options(ua, &format!("held{i}")), Some(200));
    }
    let mut extra = TcpStream::connect(blade.sip).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = extra.write_all(b"\r\n\r\n");
    let mut chunk = [0u8; 16];
    match extra.read(&mut chunk) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the fourth connection was served: {other:?}"),
    }
    assert_eq!(blade.metric("sipblade_tcp_connections_refused_total"), 1.0);
    assert_eq!(
        options(&mut held[0], "still"),
        Some(200),
        "the others go on"
    );

    drop(held.pop());
    let mut n = 0;
    wait_until("a connection is taken again", || {
        n += 1;
        let Ok(stream) = TcpStream::connect(blade.sip) else {
            return false;
        };
        // Not `options`: until the blade has seen the close, this one may
        // be refused, and `TcpUa::recv` treats a close as a failure.
        let mut ua = TcpUa::on(stream);
        let local = ua.local();
        ua.send(&options_request(&local, &format!("again{n}")));
        let mut chunk = [0u8; 512];
        ua.stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        matches!(ua.stream.read(&mut chunk), Ok(n) if n > 0 && chunk.starts_with(b"SIP/2.0 200"))
    });
}

/// A TCP agent that stops reading is cut off once a write has waited the
/// write timeout, instead of the blade queueing what it sends it without
/// end: here 1001 sends MESSAGEs of 60 KB to 1002 over UDP, far more than
/// the sockets' buffers hold, while 1002's TCP connection reads nothing.
#[test]
fn a_tcp_agent_that_stops_reading_is_disconnected() {
    let options = Options {
        tcp_write_timeout: Duration::from_millis(500),
        ..Options::default()
    };
    let blade = TestBlade::start_configured(1, false, options, "");
    let (mut callee, _) = tcp_callee(&blade);
    let (caller, caller_addr) = udp_caller(&blade);
    let body = "x".repeat(60_000);
    for i in 0..200 {
        let message = format!(
            "MESSAGE sip:1002@cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {caller_addr};branch=z9hG4bKm{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:1001@cc.example>;tag=m\r\nTo: <sip:1002@cc.example>\r\n\
             Call-ID: flood-{i}\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        caller.send_to(message.as_bytes(), blade.sip).unwrap();
        // The blade's UDP receive buffer holds a few of these at a time.
        std::thread::sleep(Duration::from_millis(2));
    }
    // Long enough for a blocked write to time out; then drain what reached
    // the socket: the close comes after it.
    std::thread::sleep(Duration::from_secs(2));
    callee
        .stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut chunk = vec![0u8; 1 << 16];
    let mut read = 0usize;
    loop {
        match callee.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "the connection stayed open ({read} bytes read)"
        );
    }
    assert!(
        read < 200 * body.len(),
        "not everything was queued and delivered: {read} bytes"
    );
}

/// The counter of connections closed for stalling.
const TIMED_OUT: &str = "sipblade_tcp_connections_timed_out_total";

/// Timeouts short enough for a test: a connection owes its first message
/// within `first`, and a begun message must complete within `message`.
fn stall_options(first: Duration, message: Duration) -> Options {
    Options {
        tcp_first_message_timeout: first,
        tcp_message_timeout: message,
        ..Options::default()
    }
}

/// What a close may come early by, measured from the client's side.
const SLACK: Duration = Duration::from_millis(50);

/// How long after `since` the blade closed `stream`, sending `dribble`
/// one byte per 100 ms meanwhile; panics if it stays open 5 s. Only
/// CRLF pongs may arrive before the close.
fn closed_after(stream: &mut TcpStream, since: Instant, dribble: &[u8]) -> Duration {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut dribble = dribble.iter();
    let mut chunk = [0u8; 512];
    loop {
        if let Some(&byte) = dribble.next() {
            // Once the blade has closed, a write may fail: the read says so.
            let _ = stream.write_all(&[byte]);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return since.elapsed(),
            Ok(n) => assert!(
                chunk[..n].iter().all(|&b| b == b'\r' || b == b'\n'),
                "the blade sent {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return since.elapsed(),
            Err(_) => {}
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "the connection stayed open"
        );
    }
}

/// A connection that never sends anything is closed once the first-message
/// timeout has passed (it holds one of the capped slots), and counted.
#[test]
fn a_connection_that_sends_nothing_is_closed() {
    let timeout = Duration::from_millis(400);
    let blade = TestBlade::start_with(1, false, stall_options(timeout, timeout));
    let since = Instant::now();
    let mut silent = TcpStream::connect(blade.sip).unwrap();
    let waited = closed_after(&mut silent, since, b"");
    assert!(waited >= timeout - SLACK, "{waited:?}");
    assert_eq!(blade.metric(TIMED_OUT), 1.0);
}

/// Keep-alives are not messages: a connection that only pings (and gets
/// its pongs) but never sends a request is closed like a silent one.
#[test]
fn a_connection_that_only_sends_keep_alives_is_closed() {
    let timeout = Duration::from_millis(400);
    let blade = TestBlade::start_with(1, false, stall_options(timeout, timeout));
    let since = Instant::now();
    let mut pinger = TcpStream::connect(blade.sip).unwrap();
    let pings = b"\r\n\r\n".repeat(20);
    let waited = closed_after(&mut pinger, since, &pings);
    assert!(waited >= timeout - SLACK, "{waited:?}");
    assert_eq!(blade.metric(TIMED_OUT), 1.0);
}

/// A message begun and not completed within the message timeout closes
/// the connection, whether it stalls in its headers before any message
/// (the first-message timeout is long here, so it is not what closes it),
/// in its body after a message, or trickles in a byte at a time
/// ("slowloris": the timeout runs from the message's first byte).
#[test]
fn a_connection_stalled_in_a_message_is_closed() {
    let message_timeout = Duration::from_millis(400);
    let blade = TestBlade::start_with(
        1,
        false,
        stall_options(Duration::from_secs(30), message_timeout),
    );

    let mut headers = TcpUa::connect(&blade);
    let local = headers.local();
    let invite = format!(
        "INVITE sip:1002@cc.example SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKhalf\r\n\
         Max-Forwards: 70\r\nFrom: <sip:1001@cc.example>;tag=h\r\n"
    );
    headers.send(&invite);
    let since = Instant::now();
    let waited = closed_after(&mut headers.stream, since, b"");
    assert!(waited >= message_timeout - SLACK, "{waited:?}");

    let mut body = TcpUa::connect(&blade);
    assert_eq!(options(&mut body, "before-body"), Some(200));
    let local = body.local();
    let short = options_request(&local, "short-body")
        .replace("Content-Length: 0", "Content-Length: 50")
        + "only ten b";
    body.send(&short);
    let since = Instant::now();
    let waited = closed_after(&mut body.stream, since, b"");
    assert!(waited >= message_timeout - SLACK, "{waited:?}");

    // 50 bytes at 100 ms each would take 5 s: it is cut off long before.
    let mut trickle = TcpUa::connect(&blade);
    assert_eq!(options(&mut trickle, "before-trickle"), Some(200));
    let local = trickle.local();
    let slow = options_request(&local, "trickle");
    let since = Instant::now();
    let waited = closed_after(&mut trickle.stream, since, &slow.as_bytes()[..50]);
    assert!(
        waited < Duration::from_secs(2),
        "each byte must not restart the timeout: {waited:?}"
    );

    assert_eq!(blade.metric(TIMED_OUT), 3.0);
}

/// A connection that has delivered a message may then stay idle for as
/// long as it likes (a registered agent's connection is how the blade
/// reaches it), even with the start of a keep-alive (a lone CRLF)
/// waiting: well past the timeouts it still works. A silent connection
/// beside it, over the same time, is closed, so the timeouts were live.
#[test]
fn an_idle_connection_after_a_message_stays_open() {
    let timeout = Duration::from_millis(500);
    let blade = TestBlade::start_with(1, false, stall_options(timeout, timeout));
    let mut agent = TcpUa::connect(&blade);
    let since = Instant::now();
    let mut silent = TcpStream::connect(blade.sip).unwrap();
    assert_eq!(options(&mut agent, "before-idle"), Some(200));
    agent.send("\r\n");
    closed_after(&mut silent, since, b"");
    std::thread::sleep(3 * timeout);
    agent.send("\r\n");
    assert_eq!(
        options(&mut agent, "after-idle"),
        Some(200),
        "the idle connection still works"
    );
    assert_eq!(
        blade.metric(TIMED_OUT),
        1.0,
        "only the silent connection was closed"
    );
}

// The blade's own BYEs over TCP, with two cores.

use common::{Ua, assert_dialog_bye};
use sipblade::proxy::route::shard_of;
use sipblade::sip::Method;

/// The core an extension's calls live on, with two cores.
fn core_of(ext: &str) -> usize {
    shard_of(ext.as_bytes(), 2)
}

/// An agent of the test blades whose core differs from `ext`'s.
fn other_core_agent(ext: &str) -> &'static str {
    common::AGENTS
        .into_iter()
        .find(|a| core_of(a) != core_of(ext))
        .unwrap()
}

/// Agent `ext` registered over a connection from `ip` whose Contact is the
/// connection's own address, accepted by a core that is (`same`) or is
/// not `ext`'s: the blade hands the REGISTER over to `ext`'s core exactly
/// when they differ, which `sipblade_core_handoffs_total` shows. A new
/// connection is tried (the kernel picks its core) until one fits.
fn registered_on_core(blade: &TestBlade, ext: &str, ip: Ipv4Addr, same: bool) -> TcpUa {
    registered_on_core_of(blade.sip, blade.admin, ext, ip, same)
}

/// A blade at `ip` with two cores whose calls last two seconds at most.
fn short_call_blade(ip: Ipv4Addr) -> TestBlade {
    TestBlade::start_at(2, false, Options::default(), "max_call_secs = 2\n", ip)
}

/// After both BYEs were answered: the agents are ready, no session is
/// left, and both BYEs are counted as sent, none as failed.
fn assert_hung_up(blade: &TestBlade, a: &str, b: &str) {
    blade.wait_state(a, "ready");
    blade.wait_state(b, "ready");
    blade.wait_no_sessions();
    assert_eq!(blade.metric("sipblade_sessions_expired_total"), 1.0);
    assert_eq!(blade.metric("sipblade_sessions_bye_sent_total"), 2.0);
    // The answers reach the BYEs' core a moment later, if at all.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(blade.metric("sipblade_sessions_bye_failed_total"), 0.0);
}

/// A caller on TCP (its Contact is its connection's address, as sipp's
/// `-t tn` has it) calls a UDP phone; the call outlives `max_call_secs`.
/// The connection's core is not the session's (the callee's), so the
/// blade's BYE to the caller is handed to the core holding its connection.
/// Each phone gets a BYE of its dialog on its own transport.
#[test]
fn a_tcp_caller_on_another_core_gets_the_blades_bye_on_its_connection() {
    let blade = short_call_blade(Ipv4Addr::new(127, 0, 0, 200));
    let caller_ext = "1001";
    let callee_ext = other_core_agent(caller_ext);
    let mut callee = Ua::new_at(blade.sip, callee_ext, Ipv4Addr::new(127, 0, 0, 201));
    assert_eq!(callee.register(3600).status(), Some(200));
    // Accepted by the caller's core, so not the callee's.
    let mut caller = registered_on_core(&blade, caller_ext, Ipv4Addr::new(127, 0, 0, 202), true);
    let caller_addr = caller.local();
    blade.wait_state(caller_ext, "ready");
    blade.wait_state(callee_ext, "ready");

    let call_id = "own-bye-tcp-caller@test";
    let invite = format!(
        "INVITE sip:{callee_ext}@cc.example SIP/2.0\r\nVia: SIP/2.0/TCP {caller_addr};branch=z9hG4bKobinv\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{caller_ext}@cc.example>;tag=a\r\nTo: <sip:{callee_ext}@cc.example>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{caller_ext}@{caller_addr};transport=tcp>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let before = blade.metric("sipblade_core_handoffs_total");
    caller.send(&invite);
    let forwarded = callee.request(Method::Invite, call_id);
    assert!(
        blade.metric("sipblade_core_handoffs_total") > before,
        "the INVITE went to the callee's core, away from the connection's"
    );
    callee.answer(&forwarded, 200, "OK", "callee");
    let ok = final_response(&mut caller);
    assert_eq!(ok.status(), Some(200));
    caller.send(&ack_along_route(
        &ok,
        &callee.contact_uri(),
        &caller_addr,
        "z9hG4bKoback",
        (caller_ext, callee_ext),
        call_id,
    ));
    callee.request(Method::Ack, call_id);

    // max_call_secs: a BYE to each phone, on its own transport.
    let to_callee = callee.request(Method::Bye, call_id);
    assert_dialog_bye(&callee, &to_callee, call_id, ("callee", "a"), 1);
    let to_caller = caller.recv();
    assert_eq!(
        to_caller.method(),
        Some(Method::Bye),
        "on the caller's connection"
    );
    assert_eq!(to_caller.call_id(), call_id);
    assert_eq!(
        to_caller.request_uri().unwrap().as_str(),
        format!("sip:{caller_ext}@{caller_addr};transport=tcp")
    );
    assert_eq!(to_caller.to().tag(), Some("a"));
    assert_eq!(to_caller.from().tag(), Some("callee"));
    assert_eq!(to_caller.routes().count(), 0);
    assert_eq!(to_caller.vias().count(), 1);
    assert_eq!(to_caller.top_via().transport(), "TCP");
    caller.send(&answer(&to_caller, 200, &caller_addr));
    callee.answer(&to_callee, 200, "OK", "unused");
    assert_hung_up(&blade, caller_ext, callee_ext);
}

/// A caller on TCP whose Contact is a port it listens on, and which
/// closes its connection once the call is up: the blade's BYE goes to
/// that Contact on a new connection (RFC 3261 §12.2.1.1, §18.1.1), not to
/// the closed connection's port, where nobody listens.
#[test]
fn a_tcp_caller_whose_connection_closed_gets_the_blades_bye_at_its_contact() {
    let blade = short_call_blade(Ipv4Addr::new(127, 0, 0, 218));
    let caller_ext = "1001";
    let callee_ext = other_core_agent(caller_ext);
    let mut callee = Ua::new_at(blade.sip, callee_ext, Ipv4Addr::new(127, 0, 0, 219));
    assert_eq!(callee.register(3600).status(), Some(200));
    let listener = TcpListener::bind("127.0.0.220:0").unwrap();
    let contact = listener.local_addr().unwrap();
    let mut caller = registered_on_core(&blade, caller_ext, Ipv4Addr::new(127, 0, 0, 220), true);
    let caller_addr = caller.local();
    blade.wait_state(caller_ext, "ready");
    blade.wait_state(callee_ext, "ready");

    let call_id = "own-bye-tcp-listening-caller@test";
    let invite = format!(
        "INVITE sip:{callee_ext}@cc.example SIP/2.0\r\nVia: SIP/2.0/TCP {caller_addr};branch=z9hG4bKoblinv\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{caller_ext}@cc.example>;tag=a\r\nTo: <sip:{callee_ext}@cc.example>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{caller_ext}@{contact};transport=tcp>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    caller.send(&invite);
    let forwarded = callee.request(Method::Invite, call_id);
    callee.answer(&forwarded, 200, "OK", "callee");
    let ok = final_response(&mut caller);
    assert_eq!(ok.status(), Some(200));
    caller.send(&ack_along_route(
        &ok,
        &callee.contact_uri(),
        &caller_addr,
        "z9hG4bKoblack",
        (caller_ext, callee_ext),
        call_id,
    ));
    callee.request(Method::Ack, call_id);
    drop(caller);

    let to_callee = callee.request(Method::Bye, call_id);
    assert_dialog_bye(&callee, &to_callee, call_id, ("callee", "a"), 1);
    let mut at_contact = TcpUa::accept(&listener);
    let to_caller = at_contact.recv();
    assert_eq!(
        to_caller.method(),
        Some(Method::Bye),
        "at the caller's Contact"
    );
    assert_eq!(to_caller.call_id(), call_id);
    assert_eq!(
        to_caller.request_uri().unwrap().as_str(),
        format!("sip:{caller_ext}@{contact};transport=tcp")
    );
    assert_eq!(to_caller.to().tag(), Some("a"));
    assert_eq!(to_caller.from().tag(), Some("callee"));
    assert_eq!(to_caller.top_via().transport(), "TCP");
    at_contact.send(&answer(&to_caller, 200, &contact.to_string()));
    callee.answer(&to_callee, 200, "OK", "unused");
    assert_hung_up(&blade, caller_ext, callee_ext);
}

/// The reverse: a UDP phone calls an agent registered over a TCP
/// connection of its own (accepted by a core other than the agent's,
/// where the session lives); the blade's BYE reaches it on that
/// connection.
#[test]
fn a_tcp_callee_on_another_core_gets_the_blades_bye_on_its_connection() {
    let blade = short_call_blade(Ipv4Addr::new(127, 0, 0, 203));
    let callee_ext = "1002";
    let caller_ext = "1001";
    let mut callee = registered_on_core(&blade, callee_ext, Ipv4Addr::new(127, 0, 0, 204), false);
    let callee_addr = callee.local();
    let mut caller = Ua::new_at(blade.sip, caller_ext, Ipv4Addr::new(127, 0, 0, 205));
    assert_eq!(caller.register(3600).status(), Some(200));
    blade.wait_state(caller_ext, "ready");
    blade.wait_state(callee_ext, "ready");

    let mut call = caller.call(callee_ext);
    caller.invite(&mut call, "");
    let forwarded = callee.recv();
    assert_eq!(forwarded.method(), Some(Method::Invite));
    callee.send(&answer(&forwarded, 200, &callee_addr));
    let ok = caller.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200));
    call.learn(&ok);
    caller.ack_2xx(&call);
    assert_eq!(callee.recv().method(), Some(Method::Ack));

    let to_callee = callee.recv();
    assert_eq!(
        to_callee.method(),
        Some(Method::Bye),
        "on the callee's connection"
    );
    assert_eq!(to_callee.call_id(), call.call_id);
    assert_eq!(
        to_callee.request_uri().unwrap().as_str(),
        format!("sip:{callee_ext}@{callee_addr};transport=tcp")
    );
    assert_eq!(to_callee.to().tag(), Some("callee"));
    assert_eq!(to_callee.from().tag(), Some(call.from_tag.as_str()));
    assert_eq!(to_callee.routes().count(), 0);
    assert_eq!(to_callee.vias().count(), 1);
    assert_eq!(to_callee.top_via().transport(), "TCP");
    let to_caller = caller.request(Method::Bye, &call.call_id);
    assert_dialog_bye(
        &caller,
        &to_caller,
        &call.call_id,
        (&call.from_tag, "callee"),
        0,
    );
    callee.send(&answer(&to_callee, 200, &callee_addr));
    caller.answer(&to_caller, 200, "OK", "unused");
    assert_hung_up(&blade, caller_ext, callee_ext);
}

// Cross-blade calls whose hosted callee is on TCP at its blade.

/// A cross-blade call whose callee is on TCP at T outlives
/// `max_call_secs` on S: S's BYE to the callee goes through T, which
/// takes it to the callee's connection (held by a core other than the
/// agent's); the caller gets its own over UDP.
#[test]
fn a_cross_blade_call_to_a_tcp_callee_that_outlives_max_call_secs_is_hung_up() {
    let mut cluster = TestCluster::new(2, 210, 30, 2);
    cluster.blade_settings = "max_call_secs = 2\n".into();
    let (s, t) = (0, 1);
    cluster.start_blade(s);
    cluster.start_blade(t);
    cluster.wait_linked();
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 212));
    let mut b = registered_on_core_of(
        cluster.members[t].sip,
        cluster.admin(t),
        "1002",
        Ipv4Addr::new(127, 0, 0, 213),
        false,
    );
    cluster.wait_state(t, "1002", "ready");
    let (call, b_addr) = answered_cross_call_to_tcp(&mut a, &mut b);

    let to_b = b.recv();
    assert_tcp_callee_bye(&to_b, &call, &b_addr);
    let vias: Vec<String> = to_b.vias().map(|v| v.host().to_owned()).collect();
    assert_eq!(vias, ["127.0.0.211", "127.0.0.210"], "from S through T");
    let to_a = a.request(Method::Bye, &call.call_id);
    assert_dialog_bye(&a, &to_a, &call.call_id, (&call.from_tag, "callee"), 0);
    b.send(&answer(&to_b, 200, &b_addr));
    a.answer(&to_a, 200, "OK", "unused");
    cluster.wait_state(s, "1001", "ready");
    cluster.wait_state(t, "1002", "ready");
    assert_eq!(cluster.metric(s, "sipblade_sessions_expired_total"), 1.0);
    assert_eq!(cluster.metric(s, "sipblade_sessions_bye_sent_total"), 2.0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cluster.metric(s, "sipblade_sessions_bye_failed_total"), 0.0);
    assert!(cluster.sessions(s).is_empty(), "{:?}", cluster.sessions(s));
}

/// S is killed mid-call (SIGKILL: no BYE, no unhost); when the lease
/// lapses T hangs up the hosted callee, on TCP, with a BYE of its own on
/// the callee's connection (held by a core other than the agent's).
#[test]
fn a_lapsed_lease_hangs_up_a_tcp_callee_on_its_connection() {
    const LEASE: u32 = 2;
    let mut cluster = TestCluster::new(2, 214, LEASE, 2);
    let (s, t) = (0, 1);
    cluster.spawn_blade(s);
    cluster.start_blade(t);
    cluster.wait_linked();
    let mut a = cluster.registered_on(s, "1001", Ipv4Addr::new(127, 0, 0, 216));
    let mut b = registered_on_core_of(
        cluster.members[t].sip,
        cluster.admin(t),
        "1002",
        Ipv4Addr::new(127, 0, 0, 217),
        false,
    );
    cluster.wait_state(t, "1002", "ready");
    let (call, b_addr) = answered_cross_call_to_tcp(&mut a, &mut b);
    cluster.wait_state(t, "1002", "hosted");

    cluster.kill_blade(s);
    // Within the lease and a little: `recv` waits 5 s.
    let bye = b.recv();
    assert_tcp_callee_bye(&bye, &call, &b_addr);
    let vias: Vec<String> = bye.vias().map(|v| v.host().to_owned()).collect();
    assert_eq!(vias, ["127.0.0.215"], "T's own request");
    b.send(&answer(&bye, 200, &b_addr));
    cluster.wait_state(t, "1002", "ready");
    assert_eq!(cluster.metric(t, "sipblade_sessions_bye_sent_total"), 1.0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cluster.metric(t, "sipblade_sessions_bye_failed_total"), 0.0);
}

/// The callee-side twin of
/// [`a_tcp_caller_whose_connection_closed_gets_the_blades_bye_at_its_contact`]:
/// a callee registered over TCP (on a core other than its own) whose
/// Contact is a port it listens on answers a UDP phone's call, then
/// closes its registration connection once the call is up. The blade's
/// BYE goes to that Contact on a new connection (RFC 3261 §12.2.1.1,
/// §18.1.1), and is counted sent, not failed.
#[test]
fn a_tcp_callee_whose_connection_closed_gets_the_blades_bye_at_its_contact() {
    tcp_callee_gone(Ipv4Addr::new(127, 0, 0, 148), false);
}

/// The same, after the callee moved its Contact to another port it listens
/// on with a re-INVITE on its connection (a target refresh): the BYE goes
/// to the new Contact.
#[test]
fn a_tcp_callee_that_moved_its_contact_gets_the_blades_bye_there() {
    tcp_callee_gone(Ipv4Addr::new(127, 0, 0, 150), true);
}

/// The callee-side test body on a blade at `ip` (the phones at the next
/// two addresses); `refresh`: the callee moves its Contact first.
fn tcp_callee_gone(ip: Ipv4Addr, refresh: bool) {
    let blade = short_call_blade(ip);
    let [_, _, _, n] = ip.octets();
    let callee_ip = Ipv4Addr::new(127, 0, 0, n + 1);
    let callee_ext = "1002";
    let caller_ext = other_core_agent(callee_ext);
    let listener = TcpListener::bind((callee_ip, 0)).unwrap();
    let contact = listener.local_addr().unwrap().to_string();
    let mut callee = registered_on_core_at(&blade, callee_ext, callee_ip, false, &contact);
    let callee_addr = callee.local();
    let mut caller = Ua::new_at(blade.sip, caller_ext, Ipv4Addr::new(127, 0, 0, n + 2));
    assert_eq!(caller.register(3600).status(), Some(200));
    blade.wait_state(caller_ext, "ready");
    blade.wait_state(callee_ext, "ready");

    let mut call = caller.call(callee_ext);
    caller.invite(&mut call, "");
    let forwarded = callee.recv();
    assert_eq!(
        forwarded.method(),
        Some(Method::Invite),
        "on its connection"
    );
    assert_eq!(
        forwarded.request_uri().unwrap().as_str(),
        format!("sip:{callee_ext}@{contact};transport=tcp")
    );
    callee.send(&answer(&forwarded, 200, &contact));
    let ok = caller.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200));
    call.learn(&ok);
    caller.ack_2xx(&call);
    assert_eq!(callee.recv().method(), Some(Method::Ack));

    let (listener, contact) = if refresh {
        let moved = TcpListener::bind((callee_ip, 0)).unwrap();
        let new_contact = moved.local_addr().unwrap().to_string();
        let reinvite = from_tcp_callee(&forwarded, &callee_addr, "INVITE", &new_contact);
        callee.send(&reinvite);
        let got = caller.request(Method::Invite, &call.call_id);
        caller.answer(&got, 200, "OK", "unused");
        let ok = final_response(&mut callee);
        assert_eq!(ok.status(), Some(200));
        callee.send(&from_tcp_callee(
            &forwarded,
            &callee_addr,
            "ACK",
            &new_contact,
        ));
        caller.request(Method::Ack, &call.call_id);
        (moved, new_contact)
    } else {
        (listener, contact)
    };
    drop(callee);

    let mut at_contact = TcpUa::accept(&listener);
    let to_callee = at_contact.recv();
    assert_eq!(
        to_callee.method(),
        Some(Method::Bye),
        "at the callee's Contact"
    );
    assert_eq!(to_callee.call_id(), call.call_id);
    assert_eq!(
        to_callee.request_uri().unwrap().as_str(),
        format!("sip:{callee_ext}@{contact};transport=tcp")
    );
    assert_eq!(to_callee.to().tag(), Some("callee"));
    assert_eq!(to_callee.from().tag(), Some(call.from_tag.as_str()));
    assert_eq!(to_callee.top_via().transport(), "TCP");
    let to_caller = caller.request(Method::Bye, &call.call_id);
    assert_dialog_bye(
        &caller,
        &to_caller,
        &call.call_id,
        (&call.from_tag, "callee"),
        0,
    );
    at_contact.send(&answer(&to_callee, 200, &contact));
    caller.answer(&to_caller, 200, "OK", "unused");
    assert_hung_up(&blade, caller_ext, callee_ext);
}

/// [`registered_on_core`] with `contact` (a TCP address the agent listens
/// on) as its Contact rather than the connection's own address.
fn registered_on_core_at(
    blade: &TestBlade,
    ext: &str,
    ip: Ipv4Addr,
    same: bool,
    contact: &str,
) -> TcpUa {
    let handoffs = || blade.metric("sipblade_core_handoffs_total");
    for cseq in 1..40 {
        let mut ua = TcpUa::connect_from(blade.sip, ip);
        let before = handoffs();
        ua.send(&register_tcp(ext, contact, 3600, cseq * 2));
        assert_eq!(ua.recv().status(), Some(200), "{ext} registers over TCP");
        if (handoffs() > before) != same {
            return ua;
        }
        ua.send(&register_tcp(ext, contact, 0, cseq * 2 + 1));
        assert_eq!(ua.recv().status(), Some(200), "{ext} unregisters");
    }
    panic!("no connection landed on the core wanted");
}
