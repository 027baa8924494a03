//! Rarer cross-blade and dialog cases (issue 4): a phone registered over
//! TCP whose Contact names no transport, reached over TCP in its calls; a
//! transferee's NOTIFY to a transferor after the call it was REFERred in
//! ended (RFC 3515, RFC 6665 §4.5.2: the refer subscription outlives the
//! INVITE dialog); and BYEs the blade sends itself when one of two peer
//! blades on one IP is lost.
//!
//! Then (issue 4, leftovers): a re-INVITE in flight when one of two peer
//! blades on one IP is lost, and the transferee's NOTIFY after the BYE
//! of a transferor on TCP whose Contact names no transport.
//!
//! Addresses: 127.0.20.x for the first tests, 127.0.23.x for the later
//! ones ([`LATER`]); test `k` of each uses 16k+1 to 16k+15.

mod common;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::calls::{
    CALLEE_TAG, answered_call, callee_request, caller_request, confirm, with_body,
};
use common::cluster::TestCluster;
use common::tcp::TcpUa;
use common::{TestBlade, Ua, WAIT, aor, first_line, response_text, unique};
use sipblade::proxy::route::shard_of;
use sipblade::runtime::Options;
use sipblade::sip::{Message, Method};

/// The subnet of this file's addresses.
const SUBNET: u8 = 20;

/// The subnet of the later tests' addresses.
const LATER: u8 = 23;

/// Long enough to see that a message does not arrive.
const QUIET: Duration = Duration::from_millis(400);

/// Address `n` (0 to 14) of test `k`.
fn at(k: u8, n: u8) -> Ipv4Addr {
    at_in(SUBNET, k, n)
}

/// Address `n` (0 to 14) of test `k` on 127.0.`subnet`.
fn at_in(subnet: u8, k: u8, n: u8) -> Ipv4Addr {
    assert!(n < 15 && k < 15);
    Ipv4Addr::new(127, 0, subnet, 16 * k + 1 + n)
}

// 1. A phone registered over TCP whose Contact names no transport.

/// An agent's phone on a TCP connection of its own, whose Contact names
/// its connection's address with no `transport` parameter (RFC 3263
/// would read that as UDP; the phone listens on its connection only).
struct TcpPhone {
    ext: String,
    /// `None` while it has none ([`TcpPhone::listen`]).
    conn: Option<TcpUa>,
    /// The first connection's socket, to close it.
    socket: Option<std::net::TcpStream>,
    addr: String,
    backlog: VecDeque<Message>,
}

impl TcpPhone {
    /// Registered on the blade at `sip` from `from`.
    fn registered(sip: SocketAddr, ext: &str, from: Ipv4Addr) -> TcpPhone {
        // SO_REUSEADDR, so that it may listen on its address once this
        // connection has closed ([`TcpPhone::listen`]).
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("a socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket
            .bind(&SocketAddr::new(from.into(), 0).into())
            .expect("bind");
        socket.connect(&sip.into()).expect("connect");
        let stream: std::net::TcpStream = socket.into();
        let socket = Some(stream.try_clone().expect("a clone"));
        let conn = TcpUa::on(stream);
        let addr = conn.local();
        let mut phone = TcpPhone {
            ext: ext.to_owned(),
            conn: Some(conn),
            socket,
            addr,
            backlog: VecDeque::new(),
        };
        let text = format!(
            "REGISTER sip:cc.example SIP/2.0\r\n{}Max-Forwards: 70\r\n\
             From: <sip:{ext}@cc.example>;tag=r{n}\r\nTo: <sip:{ext}@cc.example>\r\n\
             Call-ID: reg-{ext}-{n}\r\nCSeq: 1 REGISTER\r\nContact: <{}>;expires=3600\r\n\
             Content-Length: 0\r\n\r\n",
            phone.via(),
            phone.contact(),
            n = unique(),
        );
        phone.send(&text);
        let ok = phone.expect("200 to REGISTER", |m| {
            m.cseq().method == Method::Register && m.status().is_some_and(|s| s >= 200)
        });
        assert_eq!(ok.status(), Some(200), "{ext} registers over TCP");
        phone
    }

    fn via(&self) -> String {
        format!(
            "Via: SIP/2.0/TCP {};branch=z9hG4bK-rc{}\r\n",
            self.addr,
            unique()
        )
    }

    /// No `transport` parameter.
    fn contact(&self) -> String {
        format!("sip:{}@{}", self.ext, self.addr)
    }

    fn send(&mut self, text: &str) {
        self.conn.as_mut().expect("a connection").send(text);
    }

    /// Closes its first connection, once the blade has closed its end
    /// too (it then holds it no more), and listens on its address instead.
    fn listen(&mut self) -> TcpListener {
        use std::io::Read;
        let mut socket = self.socket.take().expect("its first connection");
        socket
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        socket.set_read_timeout(Some(WAIT)).expect("a timeout");
        let mut rest = [0u8; 4096];
        while socket.read(&mut rest).expect("the blade closes its end") > 0 {}
        drop(socket);
        drop(self.conn.take());
        TcpListener::bind(&self.addr).expect("the phone's address")
    }

    /// The next connection the blade opens to `listener` is its own.
    fn accept(&mut self, listener: &TcpListener) {
        self.conn = Some(TcpUa::accept_within(listener, WAIT));
    }

    /// The next message on its connection for which `pred` holds.
    fn expect(&mut self, what: &str, mut pred: impl FnMut(&Message) -> bool) -> Message {
        if let Some(i) = self.backlog.iter().position(&mut pred) {
            return self.backlog.remove(i).expect("in the backlog");
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let conn = self.conn.as_mut().expect("a connection");
            let Some(frame) = conn.recv_frame_within(left) else {
                let got: Vec<String> = self.backlog.iter().map(first_line).collect();
                panic!("{}: no {what} over TCP; got instead {got:?}", self.ext);
            };
            let msg = Message::parse(Bytes::from(frame)).expect("the blade sends SIP");
            if pred(&msg) {
                return msg;
            }
            self.backlog.push_back(msg);
        }
    }

    fn request(&mut self, method: Method, call_id: &str) -> Message {
        self.expect(&format!("{method:?} in {call_id}"), |m| {
            m.method() == Some(method) && m.call_id() == call_id
        })
    }

    fn final_response(&mut self, call_id: &str, method: Method) -> Message {
        self.expect(&format!("a final response to {method:?}"), |m| {
            !m.is_request()
                && m.call_id() == call_id
                && m.cseq().method == method
                && m.status().is_some_and(|s| s >= 200)
        })
    }

    /// Answers `req` 200 as a UAS (Contact: its own).
    fn answer(&mut self, req: &Message, tag: &str) {
        let text = response_text(req, 200, "OK", tag, &self.contact(), "");
        self.send(&text);
    }
}

/// The UDP phone `b` (its agent on the blade at `hops` proxies from `a`'s)
/// sends `method` in the dialog of `invite` (as it got it, answered with
/// [`CALLEE_TAG`]) to the TCP phone `a`, which gets it on its connection
/// at its Contact and answers 200.
fn to_tcp_caller(b: &mut Ua, a: &mut TcpPhone, invite: &Message, method: &str, cseq: u32) {
    b.send(callee_request(b, invite, method, cseq));
    let m = Method::from_bytes(method.as_bytes());
    let got = a.request(m, invite.call_id());
    assert_eq!(got.request_uri().unwrap().as_str(), a.contact());
    assert_eq!(got.top_via().transport(), "TCP", "{}", first_line(&got));
    a.answer(&got, "a");
    let ok = b.response(invite.call_id(), m);
    assert_eq!(ok.status(), Some(200), "{method}: {}", first_line(&ok));
}

/// A call the TCP phone `a` placed and `b` answered ([`tcp_call`]).
struct TcpCall {
    call_id: String,
    /// The INVITE as `b` got it (answered with [`CALLEE_TAG`]).
    invite: Message,
    /// `a`'s route set, as a Route header value.
    routes: String,
    /// The To of the dialog, with `b`'s tag.
    to: String,
    cseq: u32,
}

/// The TCP phone `a` calls the UDP phone `b` (through `blades` proxies),
/// whose Contact names no transport; `b` answers, `a` ACKs.
fn tcp_call(a: &mut TcpPhone, b: &mut Ua, blades: usize) -> TcpCall {
    let call_id = format!("rc-{}", unique());
    let invite = format!(
        "INVITE sip:{to}@cc.example SIP/2.0\r\n{}Max-Forwards: 70\r\n\
         From: <sip:{me}@cc.example>;tag=a\r\nTo: <sip:{to}@cc.example>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\nContact: <{}>\r\nContent-Length: 0\r\n\r\n",
        a.via(),
        a.contact(),
        to = b.ext,
        me = a.ext,
    );
    a.send(&invite);
    let got = b.request(Method::Invite, &call_id);
    assert_eq!(got.record_routes().count(), blades + 1, "one blade bridges");
    b.answer(&got, 200, "OK", CALLEE_TAG);
    let ok = a.final_response(&call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    let mut routes: Vec<String> = ok
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    routes.reverse();
    let call = TcpCall {
        call_id,
        invite: got,
        routes: routes.join(", "),
        to: String::from_utf8_lossy(ok.to().as_bytes()).into_owned(),
        cseq: 1,
    };
    let ack = tcp_in_dialog(a, b, &call, "ACK", 1, "");
    a.send(&ack);
    b.request(Method::Ack, &call.call_id);
    call
}

/// `a`'s in-dialog request `method` with `cseq` and `extra` header lines
/// in `call`, to `b`'s Contact along the route set.
fn tcp_in_dialog(
    a: &TcpPhone,
    b: &Ua,
    call: &TcpCall,
    method: &str,
    cseq: u32,
    extra: &str,
) -> String {
    format!(
        "{method} {} SIP/2.0\r\n{}Route: {}\r\nMax-Forwards: 70\r\n\
         From: <sip:{}@cc.example>;tag=a\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n\
         {extra}Content-Length: 0\r\n\r\n",
        b.contact_uri(),
        a.via(),
        call.routes,
        a.ext,
        call.to,
        call.call_id,
    )
}

/// The TCP phone `a` calls the UDP phone `b` (through `blades` proxies);
/// `b` sends an INFO and then a BYE to `a`'s Contact, which names no
/// transport: each reaches `a` over TCP, on its connection.
fn tcp_caller_gets_callees_requests(a: &mut TcpPhone, b: &mut Ua, blades: usize) {
    let call = tcp_call(a, b, blades);
    to_tcp_caller(b, a, &call.invite, "INFO", 1);
    to_tcp_caller(b, a, &call.invite, "BYE", 2);
}

/// The UDP phone `b` calls the TCP phone `a`: the INVITE reaches `a` on
/// its connection at its Contact; `b` hangs up and the BYE does too.
fn tcp_callee_gets_callers_requests(b: &mut Ua, a: &mut TcpPhone) {
    let mut call = b.call(&a.ext);
    b.invite(&mut call, "");
    let invite = a.request(Method::Invite, &call.call_id);
    assert_eq!(invite.request_uri().unwrap().as_str(), a.contact());
    assert_eq!(invite.top_via().transport(), "TCP");
    a.answer(&invite, CALLEE_TAG);
    let ok = b.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    b.ack_2xx(&call);
    a.request(Method::Ack, &call.call_id);
    b.bye(&mut call);
    let bye = a.request(Method::Bye, &call.call_id);
    assert_eq!(bye.top_via().transport(), "TCP");
    a.answer(&bye, CALLEE_TAG);
    let done = b.response(&call.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));
}

/// A phone registered over TCP with a Contact that has no `;transport`
/// (README: "An agent registered over TCP is reached on the connection
/// it registered on") calls an agent of its blade (of two cores, the
/// session on the callee's core, which does not hold the caller's
/// binding): the callee's INFO and BYE reach it over TCP on its
/// connection, not over UDP at its Contact's port. Then the other agent
/// calls it: the INVITE and the BYE reach it on its connection too.
#[test]
fn a_tcp_phone_whose_contact_names_no_transport_is_reached_over_tcp_on_its_blade() {
    let k = 0;
    let blade = TestBlade::start_at(2, false, Options::default(), "", at(k, 0));
    assert_ne!(shard_of(b"1001", 2), shard_of(b"1002", 2));
    let mut a = TcpPhone::registered(blade.sip, "1001", at(k, 1));
    let mut b = Ua::new_at(blade.sip, "1002", at(k, 2));
    assert_eq!(b.register(3600).status(), Some(200));
    tcp_caller_gets_callees_requests(&mut a, &mut b, 1);
    blade.wait_no_sessions();
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    tcp_callee_gets_callers_requests(&mut b, &mut a);
    blade.wait_no_sessions();
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
}

/// [`a_tcp_phone_whose_contact_names_no_transport_is_reached_over_tcp_on_its_blade`]
/// across two blades of two cores: the TCP phone on S, the other on T.
#[test]
fn a_tcp_phone_whose_contact_names_no_transport_is_reached_over_tcp_across_blades() {
    let k = 1;
    let cluster = TestCluster::start_in(SUBNET, 2, 16 * k + 1, 30, 2, &[]);
    let (s, t) = (0, 1);
    let mut a = TcpPhone::registered(cluster.members[s].sip, "1001", at(k, 2));
    let mut b = cluster.registered_on(t, "1002", at(k, 3));
    cluster.wait_state(s, "1001", "ready");
    tcp_caller_gets_callees_requests(&mut a, &mut b, 2);
    cluster.wait_state(s, "1001", "ready");
    cluster.wait_state(t, "1002", "ready");
    tcp_callee_gets_callers_requests(&mut b, &mut a);
    cluster.wait_state(s, "1001", "ready");
    cluster.wait_state(t, "1002", "ready");
}

// 2. A NOTIFY of a refer subscription after the call ended.

/// The callee `b`'s NOTIFY (CSeq `cseq`) of the refer subscription in
/// the call of `invite`, with `state`.
fn notify_text(b: &Ua, invite: &Message, cseq: u32, state: &str) -> String {
    with_body(
        &callee_request(b, invite, "NOTIFY", cseq),
        &format!("Event: refer\r\nSubscription-State: {state}\r\n"),
        "message/sipfrag;version=2.0",
        "SIP/2.0 200 OK\r\n",
    )
}

/// `b` sends `text` (CSeq `cseq` of `method` in `call_id`); `to` gets it
/// and answers 200, which reaches `b`.
fn passes(b: &mut Ua, to: &mut Ua, text: &str, method: Method, call_id: &str) {
    b.send(text);
    let got = to.request(method, call_id);
    assert_eq!(got.routes().count(), 0, "every blade popped its Route");
    to.answer(&got, 200, "OK", "unused");
    let ok = b.response(call_id, method);
    assert_eq!(ok.status(), Some(200), "{method:?}: {}", first_line(&ok));
}

/// `b` sends `text`; the blade refuses it 403 and `nobody` gets nothing.
fn refused(b: &mut Ua, nobody: &mut Ua, text: &str, method: Method, call_id: &str) {
    b.send(text);
    let no = b.response(call_id, method);
    assert_eq!(no.status(), Some(403), "{}", first_line(&no));
    let got = nobody.collect_where(QUIET, |m| m.call_id() == call_id);
    assert!(got.is_empty(), "{got:?}");
}

/// Blind transfer by the caller A, whose Contact is not its registered
/// terminal (`contact`, at the socket `line`: its user part a line's
/// name, a uri parameter, and another port of the phone's), through
/// `blades` blades: A REFERs B, B accepts and NOTIFYs, A hangs up, and
/// then B's last NOTIFY (`terminated`) still reaches A's Contact. After
/// it, the subscription is over: another NOTIFY, and an INFO, are 403;
/// and a NOTIFY routed to a stranger was 403 all along.
fn notify_after_bye(a: &mut Ua, line: &mut Ua, b: &mut Ua, blades: u8, stranger: &mut Ua) {
    let contact = format!("sip:line7@{};line=7", line.addr);
    let mut call = a.call(&b.ext);
    let invite = a.invite_text(&mut call, "").replace(
        &format!("Contact: <{}>", a.contact_uri()),
        &format!("Contact: <{contact}>"),
    );
    call.invite = invite.clone();
    a.send(&invite);
    let got = b.request(Method::Invite, &call.call_id);
    assert_eq!(got.record_routes().count(), usize::from(blades));
    b.answer(&got, 200, "OK", CALLEE_TAG);
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    call.learn(&ok);
    confirm(a, b, &call);

    let refer = with_body(
        &caller_request(a, &mut call, "REFER"),
        &format!(
            "Refer-To: <{}>\r\nReferred-By: <{}>\r\nContact: <{contact}>\r\n",
            aor("1003"),
            aor(&a.ext)
        ),
        "",
        "",
    );
    a.send(&refer);
    let got_refer = b.request(Method::Refer, &call.call_id);
    b.answer(&got_refer, 202, "Accepted", "unused");
    let accepted = a.response(&call.call_id, Method::Refer);
    assert_eq!(accepted.status(), Some(202), "{}", first_line(&accepted));
    let trying = notify_text(b, &got, 1, "active;expires=60");
    passes(b, line, &trying, Method::Notify, &call.call_id);

    let bye = caller_request(a, &mut call, "BYE");
    passes(a, b, &bye, Method::Bye, &call.call_id);

    // A stranger's address in the Route past the blade: no relay.
    // The stranger's entry goes last: past every blade.
    let to_stranger = notify_text(b, &got, 2, "active;expires=60").replace(
        "\r\nMax-Forwards",
        &format!(", <sip:{};lr>\r\nMax-Forwards", stranger.addr),
    );
    refused(b, stranger, &to_stranger, Method::Notify, &call.call_id);

    let done = notify_text(b, &got, 3, "terminated;reason=noresource");
    passes(b, line, &done, Method::Notify, &call.call_id);

    // The subscription is over with its last NOTIFY.
    let late = notify_text(b, &got, 4, "active;expires=60");
    refused(b, line, &late, Method::Notify, &call.call_id);
    let info = callee_request(b, &got, "INFO", 5);
    refused(b, line, &info, Method::Info, &call.call_id);
}

/// README (Limits: an in-dialog request routed through a blade goes on
/// only to … a hop of a kept dialog): the REFER's subscription is such a
/// dialog until its NOTIFY with `Subscription-State: terminated`. On one
/// blade.
#[test]
fn a_transferees_notify_after_the_transferors_bye_reaches_it_on_one_blade() {
    let k = 2;
    let blade = TestBlade::start_at(1, false, Options::default(), "", at(k, 0));
    let mut a = Ua::new_at(blade.sip, "1001", at(k, 1));
    assert_eq!(a.register(3600).status(), Some(200));
    let mut line = Ua::new_at(blade.sip, "1001", at(k, 1));
    let mut b = Ua::new_at(blade.sip, "1002", at(k, 2));
    assert_eq!(b.register(3600).status(), Some(200));
    let mut stranger = Ua::new_at(blade.sip, "9999", at(k, 3));
    notify_after_bye(&mut a, &mut line, &mut b, 1, &mut stranger);
    blade.wait_no_sessions();
}

/// [`a_transferees_notify_after_the_transferors_bye_reaches_it_on_one_blade`]
/// across two blades of two cores: A on S, B on T.
#[test]
fn a_transferees_notify_after_the_transferors_bye_reaches_it_across_blades() {
    let k = 3;
    let cluster = TestCluster::start_in(SUBNET, 2, 16 * k + 1, 30, 2, &[]);
    let (s, t) = (0, 1);
    let mut a = cluster.registered_on(s, "1001", at(k, 2));
    let mut line = Ua::new_at(cluster.members[s].sip, "1001", at(k, 2));
    let mut b = cluster.registered_on(t, "1002", at(k, 3));
    let mut stranger = Ua::new_at(cluster.members[s].sip, "9999", at(k, 4));
    notify_after_bye(&mut a, &mut line, &mut b, 2, &mut stranger);
    common::calls::wait_ready(&cluster, t, "1002");
}

// 3. Two peer blades on one IP, one of them lost.

/// Three blades of one core with `settings`: S at 127.0.20.(16k+1), and
/// two on 127.0.20.(16k+2), told apart by their ports (5060 and 5062 for
/// SIP, 7060 and 7062 for QUIC). S lists them in that order.
fn blades_sharing_an_ip(k: u8, settings: &str) -> TestCluster {
    blades_sharing_an_ip_in(SUBNET, k, settings)
}

/// [`blades_sharing_an_ip`] on 127.0.`subnet`.
fn blades_sharing_an_ip_in(subnet: u8, k: u8, settings: &str) -> TestCluster {
    let mut cluster = TestCluster::new_in(subnet, 3, 16 * k + 1, 30, 1);
    let shared = std::net::IpAddr::V4(at_in(subnet, k, 1));
    cluster.members[2].sip = SocketAddr::new(shared, 5062);
    cluster.members[2].quic = SocketAddr::new(shared, 7062);
    cluster.blade_settings = settings.to_owned();
    for i in 0..3 {
        cluster.start_blade(i);
    }
    cluster.wait_linked();
    cluster
}

/// A (on S) calls C, on the second of two blades on one IP; that blade
/// is lost: S hangs the call up on A's phone and sends no BYE towards
/// the lost blade (the first blade on that IP is up, which must not make
/// the lost one look up).
#[test]
fn losing_the_second_of_two_blades_on_one_ip_sends_no_bye_past_it() {
    let k = 4;
    let mut cluster = blades_sharing_an_ip(k, "");
    let (s, u) = (0, 2);
    let mut a = cluster.registered_on(s, "1001", at(k, 3));
    let mut c = cluster.registered_on(u, "1003", at(k, 4));
    let (call, _) = answered_call(&mut a, &mut c, 2);
    confirm(&mut a, &mut c, &call);

    cluster.stop_blade(u);
    let bye = a.request(Method::Bye, &call.call_id);
    a.answer(&bye, 200, "OK", "unused");
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.peer_up(s, "blade-2"), "{}", cluster.status(s));
    assert_eq!(
        cluster.metric(s, "sipblade_sessions_bye_sent_total"),
        1.0,
        "a BYE to A's phone only, none to the lost blade"
    );
}

/// A (on S) calls C, on the second of two blades on one IP; the first
/// blade on that IP is lost, then the call outlives `max_call_secs`: S
/// hangs it up on both phones, C's through its blade, which is up.
#[test]
fn losing_the_first_of_two_blades_on_one_ip_still_hangs_up_through_the_second() {
    let k = 5;
    let mut cluster = blades_sharing_an_ip(k, "max_call_secs = 5\n");
    let (s, t, u) = (0, 1, 2);
    let mut a = cluster.registered_on(s, "1001", at(k, 3));
    let mut c = cluster.registered_on(u, "1003", at(k, 4));
    let started = Instant::now();
    let (call, _) = answered_call(&mut a, &mut c, 2);
    confirm(&mut a, &mut c, &call);

    cluster.stop_blade(t);
    cluster.wait_until_peer_down(s, "blade-2");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "blade-2 seen down before the call expires"
    );
    let to_a = a.request(Method::Bye, &call.call_id);
    a.answer(&to_a, 200, "OK", "unused");
    let to_c = c.request(Method::Bye, &call.call_id);
    c.answer(&to_c, 200, "OK", "unused");
    common::calls::wait_ready(&cluster, u, "1003");
    cluster.wait_state(s, "1001", "ready");
    assert_eq!(cluster.metric(s, "sipblade_sessions_bye_sent_total"), 2.0);
}

// 4. A re-INVITE in flight when one of two blades on one IP is lost.

/// The Join header naming the dialog of `call` (as its caller holds it),
/// joining its callee.
fn joining_callee(call: &common::Call) -> String {
    format!(
        "Join: {};from-tag={};to-tag={CALLEE_TAG}\r\n",
        call.call_id, call.from_tag
    )
}

/// A (on S) calls C, on the second of two blades on one IP; D, on the
/// first, joins C: the join leg runs D - first blade - second blade - S -
/// second blade - C (the target's blade hands the join to S, which hosts
/// D). C re-INVITEs D in the leg; D has not answered when its blade is
/// lost. S hangs the leg up, but the re-INVITE it sent on to the live
/// second blade is not its to fail: C gets the BYE, and no 408 from S
/// (S used to match the lost blade by IP, and answered 408 every
/// re-INVITE of the leg on its way to either blade); what C gets is the
/// second blade's answer.
#[test]
fn a_reinvite_to_the_live_one_of_two_blades_on_one_ip_is_not_failed_when_the_other_is_lost() {
    let k = 0;
    let mut cluster = blades_sharing_an_ip_in(LATER, k, "");
    let (s, t, u) = (0, 1, 2);
    let mut a = cluster.registered_on(s, "1001", at_in(LATER, k, 3));
    let mut c = cluster.registered_on(u, "1003", at_in(LATER, k, 4));
    let mut d = cluster.registered_on(t, "1004", at_in(LATER, k, 5));
    let (call, _) = answered_call(&mut a, &mut c, 2);
    confirm(&mut a, &mut c, &call);

    let mut leg = d.call(&c.ext);
    d.invite(&mut leg, &joining_callee(&call));
    let joined = c.request(Method::Invite, &leg.call_id);
    c.answer(&joined, 200, "OK", CALLEE_TAG);
    let ok = d.response(&leg.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    leg.learn(&ok);
    confirm(&mut d, &mut c, &leg);
    cluster.wait_state(t, "1004", "hosted");

    c.send(callee_request(&c, &joined, "INVITE", 1));
    d.request(Method::Invite, &leg.call_id);
    cluster.stop_blade(t);

    let bye = c.request(Method::Bye, &leg.call_id);
    c.answer(&bye, 200, "OK", "unused");
    // The live blade may answer it itself (500: the lost one is
    // unreachable); S does not.
    let answers = c.collect_where(QUIET, |m| {
        !m.is_request()
            && m.call_id() == leg.call_id
            && m.cseq().method == Method::Invite
            && m.status().is_some_and(|st| st >= 200)
    });
    assert!(
        answers.iter().all(|a| !a.contains(" 408 ")),
        "C's re-INVITE to D: {answers:?}"
    );
    assert!(cluster.peer_up(s, "blade-3"), "{}", cluster.status(s));
}

/// A (on S) calls C, on the second of two blades on one IP, and
/// re-INVITEs it; C's blade is lost before C answers: S answers A 408
/// at once and hangs the call up (the first blade on that IP is up).
#[test]
fn a_reinvite_to_the_lost_one_of_two_blades_on_one_ip_is_answered_408() {
    let k = 1;
    let mut cluster = blades_sharing_an_ip_in(LATER, k, "");
    let (s, u) = (0, 2);
    let mut a = cluster.registered_on(s, "1001", at_in(LATER, k, 3));
    let mut c = cluster.registered_on(u, "1003", at_in(LATER, k, 4));
    let (mut call, _) = answered_call(&mut a, &mut c, 2);
    confirm(&mut a, &mut c, &call);

    a.send(caller_request(&a, &mut call, "INVITE"));
    c.request(Method::Invite, &call.call_id);
    cluster.stop_blade(u);
    let failed = a.response(&call.call_id, Method::Invite);
    assert_eq!(failed.status(), Some(408), "{}", first_line(&failed));
    let bye = a.request(Method::Bye, &call.call_id);
    a.answer(&bye, 200, "OK", "unused");
    cluster.wait_state(s, "1001", "ready");
    assert!(cluster.peer_up(s, "blade-2"), "{}", cluster.status(s));
}

// 5. A transferor on TCP whose Contact names no transport.

/// Blind transfer by the TCP phone `a` (its Contact with no transport)
/// of its call to `b` through `blades` blades: `a` REFERs `b`, `b`
/// accepts and NOTIFYs, `a` hangs up, and `b`'s last NOTIFY reaches `a`
/// over TCP on its connection, as the first did in the call; or, with
/// `reconnect`, `a` closes its connection after the BYE and listens at
/// its Contact: on a new TCP connection there.
fn tcp_transferor_gets_notify_after_bye(
    a: &mut TcpPhone,
    b: &mut Ua,
    blades: usize,
    reconnect: bool,
) {
    let mut call = tcp_call(a, b, blades);
    call.cseq += 1;
    let refer = tcp_in_dialog(
        a,
        b,
        &call,
        "REFER",
        call.cseq,
        &format!(
            "Refer-To: <{}>\r\nReferred-By: <{}>\r\nContact: <{}>\r\n",
            aor("1003"),
            aor(&a.ext),
            a.contact()
        ),
    );
    a.send(&refer);
    let got = b.request(Method::Refer, &call.call_id);
    b.answer(&got, 202, "Accepted", "unused");
    let accepted = a.final_response(&call.call_id, Method::Refer);
    assert_eq!(accepted.status(), Some(202), "{}", first_line(&accepted));
    notify_over_tcp(b, a, &call, 1, "active;expires=60");

    call.cseq += 1;
    let bye = tcp_in_dialog(a, b, &call, "BYE", call.cseq, "");
    a.send(&bye);
    let got = b.request(Method::Bye, &call.call_id);
    b.answer(&got, 200, "OK", "unused");
    let done = a.final_response(&call.call_id, Method::Bye);
    assert_eq!(done.status(), Some(200), "{}", first_line(&done));

    if !reconnect {
        return notify_over_tcp(b, a, &call, 2, "terminated;reason=noresource");
    }
    let listener = a.listen();
    b.send(notify_text(
        b,
        &call.invite,
        2,
        "terminated;reason=noresource",
    ));
    a.accept(&listener);
    let got = a.request(Method::Notify, &call.call_id);
    assert_eq!(got.top_via().transport(), "TCP", "{}", first_line(&got));
    a.answer(&got, "a");
    let ok = b.response(&call.call_id, Method::Notify);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
}

/// `b`'s NOTIFY (CSeq `cseq`, `state`) in `call` reaches the TCP phone
/// `a` on its connection; `a` answers 200, which reaches `b`.
fn notify_over_tcp(b: &mut Ua, a: &mut TcpPhone, call: &TcpCall, cseq: u32, state: &str) {
    b.send(notify_text(b, &call.invite, cseq, state));
    let got = a.request(Method::Notify, &call.call_id);
    assert_eq!(got.request_uri().unwrap().as_str(), a.contact());
    assert_eq!(got.top_via().transport(), "TCP", "{}", first_line(&got));
    a.answer(&got, "a");
    let ok = b.response(&call.call_id, Method::Notify);
    assert_eq!(
        ok.status(),
        Some(200),
        "NOTIFY {state}: {}",
        first_line(&ok)
    );
}

/// A transferor registered over TCP with a Contact that has no
/// `;transport`, on a blade of two cores (the session on the transferee's
/// core, which does not hold the transferor's binding): the transferee's
/// last NOTIFY, after the transferor's BYE, reaches it over TCP on its
/// connection (it went over UDP to the Contact's port: no session was
/// left to find the connection by).
#[test]
fn a_transferees_notify_after_the_bye_reaches_a_tcp_transferor_over_tcp_on_its_blade() {
    let k = 2;
    let blade = TestBlade::start_at(2, false, Options::default(), "", at_in(LATER, k, 0));
    assert_ne!(shard_of(b"1001", 2), shard_of(b"1002", 2));
    let mut a = TcpPhone::registered(blade.sip, "1001", at_in(LATER, k, 1));
    let mut b = Ua::new_at(blade.sip, "1002", at_in(LATER, k, 2));
    assert_eq!(b.register(3600).status(), Some(200));
    tcp_transferor_gets_notify_after_bye(&mut a, &mut b, 1, false);
    blade.wait_no_sessions();
}

/// [`a_transferees_notify_after_the_bye_reaches_a_tcp_transferor_over_tcp_on_its_blade`]
/// with the transferor's connection closed after its BYE: the NOTIFY
/// comes on a new TCP connection to its Contact.
#[test]
fn a_transferees_notify_after_the_bye_reaches_a_tcp_transferor_on_a_new_connection() {
    let k = 4;
    let blade = TestBlade::start_at(2, false, Options::default(), "", at_in(LATER, k, 0));
    let mut a = TcpPhone::registered(blade.sip, "1001", at_in(LATER, k, 1));
    let mut b = Ua::new_at(blade.sip, "1002", at_in(LATER, k, 2));
    assert_eq!(b.register(3600).status(), Some(200));
    tcp_transferor_gets_notify_after_bye(&mut a, &mut b, 1, true);
    blade.wait_no_sessions();
}

/// [`a_transferees_notify_after_the_bye_reaches_a_tcp_transferor_over_tcp_on_its_blade`]
/// across two blades of two cores: the transferor on S, the transferee on T.
#[test]
fn a_transferees_notify_after_the_bye_reaches_a_tcp_transferor_over_tcp_across_blades() {
    let k = 3;
    let cluster = TestCluster::start_in(LATER, 2, 16 * k + 1, 30, 2, &[]);
    let (s, t) = (0, 1);
    let mut a = TcpPhone::registered(cluster.members[s].sip, "1001", at_in(LATER, k, 2));
    let mut b = cluster.registered_on(t, "1002", at_in(LATER, k, 3));
    cluster.wait_state(s, "1001", "ready");
    tcp_transferor_gets_notify_after_bye(&mut a, &mut b, 2, false);
    common::calls::wait_ready(&cluster, t, "1002");
}
