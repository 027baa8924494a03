//! A SIP endpoint on a TCP connection ([`TcpUa`]), and the calls to a
//! callee on TCP that the TCP tests place: shared by `tcp.rs` and
//! `tcp_failures.rs`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sipblade::sip::framing::{DEFAULT_MAX_MESSAGE, Frame, frame};
use sipblade::sip::{Message, Method};

use super::{Call, TestBlade, Ua};

/// A SIP endpoint on a TCP connection: reads whole frames.
pub struct TcpUa {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl TcpUa {
    pub fn connect(blade: &TestBlade) -> TcpUa {
        TcpUa::on(TcpStream::connect(blade.sip).unwrap())
    }

    /// The next connection the blade opens to `listener`, within 5 s.
    pub fn accept(listener: &TcpListener) -> TcpUa {
        TcpUa::accept_within(listener, Duration::from_secs(5))
    }

    pub fn on(stream: TcpStream) -> TcpUa {
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        TcpUa {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn local(&self) -> String {
        self.stream.local_addr().unwrap().to_string()
    }

    pub fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
    }

    /// The next message, within a few seconds (keep-alives skipped).
    pub fn recv_frame(&mut self) -> Vec<u8> {
        self.recv_frame_within(Duration::from_secs(5))
            .expect("a message over TCP within 5 s")
    }

    pub fn recv(&mut self) -> Message {
        self.recv_within(Duration::from_secs(5))
    }

    /// A connection to `blade` from `ip` (tests that keep to an address
    /// range of their own).
    pub fn connect_from(blade: SocketAddr, ip: Ipv4Addr) -> TcpUa {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .unwrap();
        socket.bind(&SocketAddr::new(ip.into(), 0).into()).unwrap();
        socket.connect(&blade.into()).unwrap();
        TcpUa::on(socket.into())
    }

    /// The next message within `wait` (keep-alives skipped).
    pub fn recv_within(&mut self, wait: Duration) -> Message {
        let bytes = self
            .recv_frame_within(wait)
            .expect("a message over TCP in time");
        Message::parse(Bytes::from(bytes)).unwrap()
    }

    /// The next connection the blade opens to `listener`, within `wait`.
    pub fn accept_within(listener: &TcpListener, wait: Duration) -> TcpUa {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + wait;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    return TcpUa::on(stream);
                }
                Err(_) => {
                    assert!(Instant::now() < deadline, "the blade did not connect");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// The next message's bytes within `wait`, or `None` (keep-alives
    /// skipped).
    pub fn recv_frame_within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        loop {
            match frame(&self.buf, DEFAULT_MAX_MESSAGE).unwrap() {
                Frame::Complete(n) => return Some(self.buf.drain(..n).collect()),
                Frame::KeepAlive { len, .. } => {
                    self.buf.drain(..len);
                    continue;
                }
                Frame::Partial => {}
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
    }
}

/// The callee's answer to `req`, copying what a UAS copies.
pub fn answer(req: &Message, status: u16, contact: &str) -> String {
    let mut out = bytes::BytesMut::new();
    let rr: Vec<String> = req
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    let contact = format!("<sip:1002@{contact};transport=tcp>");
    let mut extra = vec![("Contact", contact.as_str())];
    extra.extend(rr.iter().map(|r| ("Record-Route", r.as_str())));
    req.response(status, "OK", Some("callee"), &extra, &mut out);
    String::from_utf8(out.to_vec()).unwrap()
}

/// A REGISTER of `ext` at `contact` (a TCP address) over TCP, `expires`
/// seconds, with CSeq `cseq` of Call-ID `reg-EXT-own-bye`.
pub fn register_tcp(ext: &str, contact: &str, expires: u32, cseq: u32) -> String {
    format!(
        "REGISTER sip:cc.example SIP/2.0\r\nVia: SIP/2.0/TCP {contact};branch=z9hG4bKob{ext}x{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{ext}@cc.example>;tag=r{ext}\r\nTo: <sip:{ext}@cc.example>\r\n\
         Call-ID: reg-{ext}-own-bye\r\nCSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{ext}@{contact};transport=tcp>;expires={expires}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// An agent registered over TCP (see `registered_on_core` in tcp.rs) on the blade at `sip` whose admin port is
/// `admin`.
pub fn registered_on_core_of(
    sip: SocketAddr,
    admin: SocketAddr,
    ext: &str,
    ip: Ipv4Addr,
    same: bool,
) -> TcpUa {
    let handoffs = || super::metric(admin, "sipblade_core_handoffs_total");
    for cseq in 1..40 {
        let mut ua = TcpUa::connect_from(sip, ip);
        let contact = ua.local();
        let before = handoffs();
        ua.send(&register_tcp(ext, &contact, 3600, cseq * 2));
        assert_eq!(ua.recv().status(), Some(200), "{ext} registers over TCP");
        let handed = handoffs() > before;
        if handed != same {
            return ua;
        }
        // Not the core wanted: this binding goes, and the connection.
        ua.send(&register_tcp(ext, &contact, 0, cseq * 2 + 1));
        assert_eq!(ua.recv().status(), Some(200), "{ext} unregisters");
    }
    panic!("no connection landed on the core wanted");
}

/// The first final response on `ua`'s connection.
pub fn final_response(ua: &mut TcpUa) -> Message {
    loop {
        let m = ua.recv();
        if m.status().is_some_and(|s| s >= 200) {
            return m;
        }
    }
}

/// `a` (UDP, on S) calls agent 1002, registered over a TCP connection of
/// its own at T (accepted by a core other than 1002's), up to the ACK;
/// returns the dialog and the callee's connection address.
pub fn answered_cross_call_to_tcp(a: &mut Ua, b: &mut TcpUa) -> (Call, String) {
    let b_addr = b.local();
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.recv();
    assert_eq!(invite.method(), Some(Method::Invite));
    assert_eq!(
        invite.record_routes().count(),
        3,
        "S, and T twice: it changes transport (RFC 5658)"
    );
    b.send(&answer(&invite, 200, &b_addr));
    let ok = a.response(&call.call_id, Method::Invite);
    assert_eq!(ok.status(), Some(200));
    call.learn(&ok);
    a.ack_2xx(&call);
    assert_eq!(b.recv().method(), Some(Method::Ack));
    (call, b_addr)
}

/// Checks that `bye`, received by agent 1002 on its connection at
/// `b_addr`, is a BYE of `call` as from the caller, carried on TCP.
pub fn assert_tcp_callee_bye(bye: &Message, call: &Call, b_addr: &str) {
    assert_eq!(
        bye.method(),
        Some(Method::Bye),
        "on the callee's connection"
    );
    assert_eq!(bye.call_id(), call.call_id);
    assert_eq!(
        bye.request_uri().unwrap().as_str(),
        format!("sip:1002@{b_addr};transport=tcp")
    );
    assert_eq!(bye.to().tag(), Some("callee"));
    assert_eq!(bye.from().tag(), Some(call.from_tag.as_str()));
    assert_eq!(bye.routes().count(), 0, "every blade popped its Route");
    assert_eq!(bye.top_via().transport(), "TCP");
}

/// The caller's ACK (over TCP from `caller_addr`) for the 2xx `ok`, sent
/// along the route set it records to the callee at `target`.
pub fn ack_along_route(
    ok: &Message,
    target: &str,
    caller_addr: &str,
    branch: &str,
    (caller_ext, callee_ext): (&str, &str),
    call_id: &str,
) -> String {
    let mut rr: Vec<String> = ok
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    rr.reverse();
    format!(
        "ACK {target} SIP/2.0\r\nVia: SIP/2.0/TCP {caller_addr};branch={branch}\r\nRoute: {}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{caller_ext}@cc.example>;tag=a\r\n\
         To: <sip:{callee_ext}@cc.example>;tag=callee\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n",
        rr.join(", ")
    )
}

/// A request `method` (CSeq 1, in the callee's own numbering) from the
/// callee of `invite` (over TCP from `from`) to the caller, along the
/// route set its Record-Routes give, with Contact `contact`.
pub fn from_tcp_callee(invite: &Message, from: &str, method: &str, contact: &str) -> String {
    let target = invite.contacts().next().unwrap().uri().as_str().to_owned();
    let routes: Vec<String> = invite
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    let to = String::from_utf8_lossy(invite.to().as_bytes()).into_owned();
    let from_value = String::from_utf8_lossy(invite.from().as_bytes()).into_owned();
    let branch = format!("z9hG4bKtcpcallee{method}");
    format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/TCP {from};branch={branch}\r\n\
         Route: {}\r\nMax-Forwards: 70\r\nFrom: {to};tag=callee\r\nTo: {from_value}\r\n\
         Call-ID: {}\r\nCSeq: 1 {method}\r\nContact: <sip:1002@{contact};transport=tcp>\r\n\
         Content-Length: 0\r\n\r\n",
        routes.join(", "),
        invite.call_id(),
    )
}
