//! TCP phones on blades of two cores, locally and across two blades
//! (README "How a blade works", Limits: a response only from where its
//! request went; an in-dialog request routed through a blade goes on
//! only to a peer blade, an agent's registered terminal on any core, the
//! caller's terminal or a hop of a kept dialog; Record-Routes naming the
//! port of a core). Every phone speaks over a real TCP connection of its
//! own (or UDP where the test mixes transports), and follows its route
//! set as a UA does: the first Route of each request it sends names the
//! blade's SIP address, where it holds its connection.
//!
//! Addresses: 127.0.16.x only; test `k` has blades at 16k+1 and 16k+2
//! and phones from 16k+3 to 16k+15.

mod common;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::TestCluster;
use common::tcp::{TcpUa, register_tcp, registered_on_core_of};
use common::{TestBlade, Ua, WAIT, first_line, unique, wait_until};
use sipblade::proxy::route::shard_of;
use sipblade::runtime::Options;
use sipblade::sip::{Message, Method};

/// Cores per blade.
const CORES: usize = 2;

/// The subnet of this file's addresses.
const SUBNET: u8 = 16;

/// 127.0.16.`host`.
fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, SUBNET, host)
}

/// Phone `n` (0 to 12) of test `k`.
fn phone_ip(k: u8, n: u8) -> Ipv4Addr {
    assert!(n < 13);
    ip(16 * k + 3 + n)
}

/// Two blades of two cores (S = 0, T = 1) at 127.0.16.(16k+1), (16k+2).
fn two_blades(k: u8) -> TestCluster {
    TestCluster::start_in(SUBNET, 2, 16 * k + 1, 30, CORES, &[])
}

/// One blade of two cores at 127.0.16.(16k+1), auth off.
fn one_blade(k: u8) -> TestBlade {
    TestBlade::start_at(CORES, false, Options::default(), "", ip(16 * k + 1))
}

// Phones.

/// What the call flows need of a phone, on UDP ([`Ua`]) or TCP
/// ([`TcpPhone`]).
trait Phone {
    fn ext(&self) -> &str;
    /// A Via line (with CRLF) of a request sent with `branch`.
    fn via(&self, branch: &str) -> String;
    /// The Contact URI.
    fn contact(&self) -> String;
    fn send_text(&mut self, text: &str);
    /// The next message for which `pred` holds, within [`WAIT`]; others
    /// are kept for later.
    fn expect(&mut self, what: &str, pred: &mut dyn FnMut(&Message) -> bool) -> Message;
    /// Everything for which `pred` holds that arrives within `window`.
    fn collect(&mut self, window: Duration, pred: &mut dyn FnMut(&Message) -> bool) -> Vec<String>;
}

impl Phone for Ua {
    fn ext(&self) -> &str {
        &self.ext
    }
    fn via(&self, branch: &str) -> String {
        Ua::via(self, branch)
    }
    fn contact(&self) -> String {
        self.contact_uri()
    }
    fn send_text(&mut self, text: &str) {
        self.send(text);
    }
    fn expect(&mut self, what: &str, pred: &mut dyn FnMut(&Message) -> bool) -> Message {
        self.expect_where(what, pred)
    }
    fn collect(&mut self, window: Duration, pred: &mut dyn FnMut(&Message) -> bool) -> Vec<String> {
        self.collect_where(window, pred)
    }
}

/// An agent's phone on a TCP connection of its own, whose Contact is the
/// connection's address (a phone behind NAT, sipp `-t tn`).
struct TcpPhone {
    ext: String,
    conn: TcpUa,
    addr: String,
    backlog: VecDeque<Message>,
    /// The address its Contact names, when not its connection's (a phone
    /// behind NAT names its private address).
    contact_at: Option<String>,
    /// The CSeq of the last REGISTER (in the Call-ID `register_tcp`
    /// uses), above any `registered_on_core_of` sends.
    reg_cseq: u32,
}

impl TcpPhone {
    fn on(ext: &str, conn: TcpUa) -> TcpPhone {
        let addr = conn.local();
        TcpPhone {
            ext: ext.to_owned(),
            conn,
            addr,
            backlog: VecDeque::new(),
            reg_cseq: 1000,
            contact_at: None,
        }
    }

    /// Registered on the blade at `sip` (admin `admin`) from `ip`, over
    /// a connection accepted by `ext`'s own core (`same`) or the other.
    fn on_core(sip: SocketAddr, admin: SocketAddr, ext: &str, ip: Ipv4Addr, same: bool) -> Self {
        TcpPhone::on(ext, registered_on_core_of(sip, admin, ext, ip, same))
    }

    /// Registered on the blade at `sip` from `ip`, on whichever core.
    fn registered(sip: SocketAddr, ext: &str, ip: Ipv4Addr) -> TcpPhone {
        let mut phone = TcpPhone::on(ext, TcpUa::connect_from(sip, ip));
        phone.register();
        phone
    }

    /// Registers its connection's address, on its connection.
    fn register(&mut self) {
        self.reg_cseq += 1;
        let at = self.contact_at.as_deref().unwrap_or(&self.addr);
        let text = register_tcp(&self.ext, at, 3600, self.reg_cseq);
        self.conn.send(&text);
        let call_id = format!("reg-{}-own-bye", self.ext);
        let seq = self.reg_cseq;
        let ok = final_response(self, &call_id, Method::Register, seq);
        assert_eq!(ok.status(), Some(200), "{} registers over TCP", self.ext);
    }

    /// The connection closes; a new one from the same IP (another port)
    /// takes its place, with no REGISTER.
    fn reconnect(&mut self, sip: SocketAddr) {
        let ip = match self.conn.stream.local_addr().unwrap().ip() {
            std::net::IpAddr::V4(ip) => ip,
            other => panic!("not IPv4: {other}"),
        };
        let _ = self.conn.stream.shutdown(std::net::Shutdown::Both);
        self.conn = TcpUa::connect_from(sip, ip);
        let old = std::mem::replace(&mut self.addr, self.conn.local());
        assert_ne!(old, self.addr, "a new source port");
    }
}

impl Phone for TcpPhone {
    fn ext(&self) -> &str {
        &self.ext
    }
    fn via(&self, branch: &str) -> String {
        format!("Via: SIP/2.0/TCP {};branch={branch}\r\n", self.addr)
    }
    fn contact(&self) -> String {
        let at = self.contact_at.as_deref().unwrap_or(&self.addr);
        format!("sip:{}@{at};transport=tcp", self.ext)
    }
    fn send_text(&mut self, text: &str) {
        self.conn.send(text);
    }
    fn expect(&mut self, what: &str, pred: &mut dyn FnMut(&Message) -> bool) -> Message {
        self.next_where(WAIT, pred).unwrap_or_else(|| {
            let got: Vec<String> = self.backlog.iter().map(first_line).collect();
            panic!("{}: no {what} over TCP; got instead {got:?}", self.ext)
        })
    }
    fn collect(&mut self, window: Duration, pred: &mut dyn FnMut(&Message) -> bool) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut found = Vec::new();
        while let Some(m) =
            self.next_where(deadline.saturating_duration_since(Instant::now()), pred)
        {
            found.push(first_line(&m));
        }
        found
    }
}

impl TcpPhone {
    fn next_where(
        &mut self,
        wait: Duration,
        pred: &mut dyn FnMut(&Message) -> bool,
    ) -> Option<Message> {
        if let Some(i) = self.backlog.iter().position(&mut *pred) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self.conn.recv_frame_within(left)?;
            let msg = Message::parse(Bytes::from(frame)).expect("the blade sends SIP");
            if pred(&msg) {
                return Some(msg);
            }
            self.backlog.push_back(msg);
        }
    }
}

// Dialogs.

/// One party's side of a dialog.
#[derive(Clone, Debug)]
struct Side {
    call_id: String,
    me: String,
    my_tag: String,
    peer: String,
    peer_tag: String,
    /// The remote target.
    target: String,
    /// The route set, in the order the Route header lists it.
    routes: Vec<String>,
    /// The last CSeq this side sent.
    cseq: u32,
}

fn method_of(name: &str) -> Method {
    Method::from_bytes(name.as_bytes())
}

fn record_routes(msg: &Message) -> Vec<String> {
    msg.record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect()
}

/// The out-of-dialog INVITE of `from` to `to` (no body).
fn invite_text(from: &dyn Phone, to: &str, call_id: &str, tag: &str, branch: &str) -> String {
    format!(
        "INVITE sip:{to}@cc.example SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <sip:{me}@cc.example>;tag={tag}\r\n\
         To: <sip:{to}@cc.example>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <{}>\r\n\
         Content-Length: 0\r\n\r\n",
        from.via(branch),
        from.contact(),
        me = from.ext(),
    )
}

/// An in-dialog request of `side` from `phone`, with a Contact when it
/// refreshes the target.
fn in_dialog(phone: &dyn Phone, side: &Side, method: &str, cseq: u32) -> String {
    in_dialog_on(
        phone,
        side,
        method,
        cseq,
        &format!("z9hG4bK-tc{}", unique()),
    )
}

/// [`in_dialog`] with `branch`.
fn in_dialog_on(phone: &dyn Phone, side: &Side, method: &str, cseq: u32, branch: &str) -> String {
    let route = if side.routes.is_empty() {
        String::new()
    } else {
        format!("Route: {}\r\n", side.routes.join(", "))
    };
    let contact = if matches!(method, "INVITE" | "UPDATE") {
        format!("Contact: <{}>\r\n", phone.contact())
    } else {
        String::new()
    };
    format!(
        "{method} {} SIP/2.0\r\n{}{route}Max-Forwards: 70\r\nFrom: <sip:{}@cc.example>;tag={}\r\n\
         To: <sip:{}@cc.example>;tag={}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n{contact}\
         Content-Length: 0\r\n\r\n",
        side.target,
        phone.via(branch),
        side.me,
        side.my_tag,
        side.peer,
        side.peer_tag,
        side.call_id,
    )
}

/// A UAS's response to `req` ([`common::response_text`]), with a Contact
/// on a 2xx to UPDATE too.
fn response_text(req: &Message, status: u16, tag: &str, contact: &str) -> String {
    let reason = match status {
        180 => "Ringing",
        200 => "OK",
        487 => "Request Terminated",
        _ => "Whatever",
    };
    let update_ok = req.method() == Some(Method::Update) && (200..300).contains(&status);
    let extra = if update_ok {
        format!("Contact: <{contact}>\r\n")
    } else {
        String::new()
    };
    common::response_text(req, status, reason, tag, contact, &extra)
}

/// The next request `method` with `cseq` in `call_id` at `phone`.
fn request(phone: &mut dyn Phone, method: Method, call_id: &str, cseq: u32) -> Message {
    phone.expect(&format!("{method:?} {cseq} in {call_id}"), &mut |m| {
        m.method() == Some(method) && m.call_id() == call_id && m.cseq().seq == cseq
    })
}

/// The final response to `method` `cseq` of `call_id` at `phone`.
fn final_response(phone: &mut dyn Phone, call_id: &str, method: Method, cseq: u32) -> Message {
    phone.expect(
        &format!("a final response to {method:?} {cseq} in {call_id}"),
        &mut |m| {
            !m.is_request()
                && m.call_id() == call_id
                && m.cseq().method == method
                && m.cseq().seq == cseq
                && m.status().is_some_and(|s| s >= 200)
        },
    )
}

/// The host and port of a route entry (`<sip:HOST:PORT;…>`).
fn route_addr(entry: &str) -> String {
    let inner = entry.trim_start_matches('<');
    let inner = inner.strip_prefix("sip:").unwrap_or(inner);
    let end = inner.find([';', '>']).unwrap_or(inner.len());
    inner[..end].to_owned()
}

/// Checks that a TCP phone reaches the first hop of `routes` on the
/// connection it holds to the blade at `blade`: the entry names the
/// blade's SIP address (where the blade accepts TCP; a core's own port
/// takes UDP only) with `transport=tcp`.
fn assert_tcp_first_hop(routes: &[String], blade: SocketAddr, who: &str) {
    let first = routes.first().unwrap_or_else(|| panic!("{who}: no route"));
    assert_eq!(route_addr(first), blade.to_string(), "{who}: {first}");
    assert!(
        first.to_ascii_lowercase().contains("transport=tcp"),
        "{who}: {first}"
    );
}

/// `a` calls `b` up to the callee's ACK: 180, then 200. Returns each
/// side of the dialog and the Record-Route the callee saw.
fn establish(a: &mut dyn Phone, b: &mut dyn Phone) -> (Side, Side) {
    let call_id = format!("tc-{}-{}-{}", a.ext(), b.ext(), unique());
    let a_tag = format!("a{}", unique());
    let b_tag = format!("b{}", unique());
    let invite = invite_text(
        a,
        b.ext(),
        &call_id,
        &a_tag,
        &format!("z9hG4bK-tci{}", unique()),
    );
    a.send_text(&invite);
    let got = request(b, Method::Invite, &call_id, 1);
    assert_eq!(
        got.request_uri().unwrap().as_str(),
        b.contact(),
        "retargeted to the callee's contact"
    );
    b.send_text(&response_text(&got, 180, &b_tag, &b.contact()));
    b.send_text(&response_text(&got, 200, &b_tag, &b.contact()));
    let ok = final_response(a, &call_id, Method::Invite, 1);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    let mut a_routes = record_routes(&ok);
    a_routes.reverse();
    let a_side = Side {
        call_id: call_id.clone(),
        me: a.ext().to_owned(),
        my_tag: a_tag.clone(),
        peer: b.ext().to_owned(),
        peer_tag: b_tag.clone(),
        target: ok.contacts().next().unwrap().uri().as_str().to_owned(),
        routes: a_routes,
        cseq: 1,
    };
    let b_side = Side {
        call_id: call_id.clone(),
        me: b.ext().to_owned(),
        my_tag: b_tag,
        peer: a.ext().to_owned(),
        peer_tag: a_tag,
        target: got.contacts().next().unwrap().uri().as_str().to_owned(),
        routes: record_routes(&got),
        cseq: 0,
    };
    assert_eq!(a_side.target, b.contact());
    assert_eq!(b_side.target, a.contact());
    a.send_text(&in_dialog(a, &a_side, "ACK", 1));
    let ack = request(b, Method::Ack, &call_id, 1);
    assert_eq!(ack.routes().count(), 0, "every blade popped its Route");
    (a_side, b_side)
}

/// `from` sends `method` in its side `fs` of a dialog; `to` (side `ts`)
/// gets it at its Contact and answers `status`; the answer comes back to
/// `from` (a re-INVITE's 2xx is ACKed end to end). A 2xx to a target
/// refresh moves each side's remote target.
fn transact(
    (from, fs): (&mut dyn Phone, &mut Side),
    (to, ts): (&mut dyn Phone, &mut Side),
    method: &str,
) {
    fs.cseq += 1;
    let seq = fs.cseq;
    let m = method_of(method);
    from.send_text(&in_dialog(from, fs, method, seq));
    let got = request(to, m, &fs.call_id, seq);
    assert_eq!(
        got.request_uri().unwrap().as_str(),
        to.contact(),
        "{} at {}'s contact",
        first_line(&got),
        to.ext()
    );
    assert_eq!(got.routes().count(), 0, "every blade popped its Route");
    to.send_text(&response_text(&got, 200, &ts.my_tag, &to.contact()));
    let ok = final_response(from, &fs.call_id, m, seq);
    assert_eq!(
        ok.status(),
        Some(200),
        "{method} from {}: {}",
        from.ext(),
        first_line(&ok)
    );
    if matches!(method, "INVITE" | "UPDATE") {
        ts.target = from.contact();
        fs.target = ok.contacts().next().unwrap().uri().as_str().to_owned();
    }
    if m == Method::Invite {
        from.send_text(&in_dialog(from, fs, "ACK", seq));
        request(to, Method::Ack, &fs.call_id, seq);
    }
}

// States.

/// Waits until `ext` is `state` on member `i`, hosted by `by` (or nobody).
fn wait_agent(cluster: &TestCluster, i: usize, ext: &str, state: &str, by: Option<&str>) {
    cluster.wait_state(i, ext, state);
    let agent = cluster.agent(i, ext);
    match by {
        Some(by) => assert_eq!(agent["hosted_by"], by, "{agent}"),
        None => assert_eq!(agent["hosted_by"], serde_json::Value::Null, "{agent}"),
    }
}

/// While `caller` on member `src` is in a call with `callee` on member
/// `dst`: the caller in the call on its blade, the callee in it on the
/// source blade and hosted by it on its own; one session, on the source
/// blade, hosting the callee.
fn assert_hosting(
    cluster: &TestCluster,
    (src, caller): (usize, &str),
    (dst, callee): (usize, &str),
) {
    let src_id = cluster.members[src].id.clone();
    wait_agent(cluster, src, caller, "in_call", None);
    wait_agent(cluster, src, callee, "in_call", None);
    wait_agent(cluster, dst, callee, "hosted", Some(&src_id));
    let sessions = cluster.sessions(src);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let mut agents: Vec<String> = sessions[0]["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| a.as_str().unwrap_or_default().to_owned())
        .collect();
    agents.sort();
    let mut want = vec![caller.to_owned(), callee.to_owned()];
    want.sort();
    assert_eq!(agents, want, "{sessions:?}");
    assert_eq!(sessions[0]["hosted"], serde_json::json!([callee]));
    assert!(
        cluster.sessions(dst).is_empty(),
        "{:?}",
        cluster.sessions(dst)
    );
}

/// After the calls: `exts` (with their home blades) are ready there and
/// hosted by nobody, logged out on the other, and neither blade holds a
/// session.
fn assert_all_free(cluster: &TestCluster, exts: &[(&str, usize)]) {
    for &(ext, home) in exts {
        wait_agent(cluster, home, ext, "ready", None);
        let away = cluster.agent(1 - home, ext);
        assert_eq!(away["state"], "logged_out", "{ext} away: {away}");
    }
    for i in 0..2 {
        wait_until(&format!("no session on blade {i}"), || {
            cluster.sessions(i).is_empty()
        });
    }
}

// Scenario 1: TCP to TCP across two blades, every mid-call request.

/// A (1001, TCP on S) calls B (1002, TCP on T), both on connections
/// accepted by the core that is (`same`) or is not their own: hosting
/// shown on both blades; re-INVITE, UPDATE and INFO each way; A hangs
/// up. Then B calls A (T hosts A), the same requests, and the callee A
/// hangs up. Both end free with no session left.
fn tcp_to_tcp_across_blades(k: u8, same: bool) {
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let (s_sip, t_sip) = (cluster.members[s].sip, cluster.members[t].sip);
    let mut a = TcpPhone::on_core(s_sip, cluster.admin(s), "1001", phone_ip(k, 0), same);
    let mut b = TcpPhone::on_core(t_sip, cluster.admin(t), "1002", phone_ip(k, 1), same);
    cluster.wait_state(s, "1001", "ready");
    cluster.wait_state(t, "1002", "ready");

    let (mut sa, mut sb) = establish(&mut a, &mut b);
    assert_tcp_first_hop(&sa.routes, s_sip, "A's route set");
    assert_tcp_first_hop(&sb.routes, t_sip, "B's route set");
    assert_hosting(&cluster, (s, "1001"), (t, "1002"));
    for (method, a_sends) in [
        ("INVITE", true),
        ("UPDATE", false),
        ("INFO", true),
        ("INFO", false),
        ("INVITE", false),
        ("UPDATE", true),
    ] {
        if a_sends {
            transact((&mut a, &mut sa), (&mut b, &mut sb), method);
        } else {
            transact((&mut b, &mut sb), (&mut a, &mut sa), method);
        }
    }
    assert_hosting(&cluster, (s, "1001"), (t, "1002"));
    transact((&mut a, &mut sa), (&mut b, &mut sb), "BYE");
    assert_all_free(&cluster, &[("1001", s), ("1002", t)]);

    let (mut sb, mut sa) = establish(&mut b, &mut a);
    assert_tcp_first_hop(&sb.routes, t_sip, "B's route set");
    assert_tcp_first_hop(&sa.routes, s_sip, "A's route set");
    assert_hosting(&cluster, (t, "1002"), (s, "1001"));
    transact((&mut a, &mut sa), (&mut b, &mut sb), "INVITE");
    transact((&mut b, &mut sb), (&mut a, &mut sa), "UPDATE");
    transact((&mut a, &mut sa), (&mut b, &mut sb), "INFO");
    transact((&mut b, &mut sb), (&mut a, &mut sa), "INFO");
    transact((&mut a, &mut sa), (&mut b, &mut sb), "BYE");
    assert_all_free(&cluster, &[("1001", s), ("1002", t)]);
    let stray = a.collect(Duration::from_millis(200), &mut |m| m.is_request());
    assert!(stray.is_empty(), "no blade's own request to A: {stray:?}");
}

#[test]
fn tcp_phones_on_connections_of_other_cores_call_across_blades_both_ways() {
    tcp_to_tcp_across_blades(0, false);
}

#[test]
fn tcp_phones_on_connections_of_their_own_cores_call_across_blades_both_ways() {
    tcp_to_tcp_across_blades(1, true);
}

// Scenario 2: UDP and TCP mixed on one blade of two cores.

/// On one blade of two cores: a UDP phone calls a TCP phone and the TCP
/// phone calls the UDP phone, for each placement of the TCP connection
/// (on its agent's core, the other), and each dialog carries re-INVITE,
/// UPDATE, INFO each way; each side hangs up once.
#[test]
fn udp_and_tcp_phones_call_each_other_on_a_blade_of_two_cores() {
    let k = 2;
    let blade = one_blade(k);
    let mut udp = Ua::new_at(blade.sip, "1001", phone_ip(k, 0));
    assert_eq!(udp.register(3600).status(), Some(200));
    let core = |ext: &str| shard_of(ext.as_bytes(), CORES);
    assert_ne!(core("1001"), core("1002"));
    assert_eq!(core("1001"), core("1003"));
    for (n, ext, same) in [(1, "1002", false), (2, "1003", true)] {
        let mut tcp = TcpPhone::on_core(blade.sip, blade.admin, ext, phone_ip(k, n), same);
        blade.wait_state("1001", "ready");
        blade.wait_state(ext, "ready");
        for udp_calls in [true, false] {
            let (mut su, mut st) = if udp_calls {
                establish(&mut udp, &mut tcp)
            } else {
                let (st, su) = establish(&mut tcp, &mut udp);
                (su, st)
            };
            assert_tcp_first_hop(&st.routes, blade.sip, "the TCP phone's route set");
            blade.wait_state("1001", "in_call");
            blade.wait_state(ext, "in_call");
            for method in ["INVITE", "UPDATE", "INFO"] {
                transact((&mut tcp, &mut st), (&mut udp, &mut su), method);
                transact((&mut udp, &mut su), (&mut tcp, &mut st), method);
            }
            if udp_calls == same {
                transact((&mut tcp, &mut st), (&mut udp, &mut su), "BYE");
            } else {
                transact((&mut udp, &mut su), (&mut tcp, &mut st), "BYE");
            }
            blade.wait_state("1001", "ready");
            blade.wait_state(ext, "ready");
            blade.wait_no_sessions();
        }
    }
}

// Scenario 3: a TCP phone whose connection closes mid-call.

/// A (TCP on S) and B (TCP on T), each on a connection of the other core
/// than its agent's; both ready.
fn tcp_pair(cluster: &TestCluster, k: u8) -> (TcpPhone, TcpPhone) {
    let (s, t) = (0, 1);
    let a = TcpPhone::on_core(
        cluster.members[s].sip,
        cluster.admin(s),
        "1001",
        phone_ip(k, 0),
        false,
    );
    let b = TcpPhone::on_core(
        cluster.members[t].sip,
        cluster.admin(t),
        "1002",
        phone_ip(k, 1),
        false,
    );
    cluster.wait_state(s, "1001", "ready");
    cluster.wait_state(t, "1002", "ready");
    (a, b)
}

/// A phone whose connection closed mid-call connects again (from the
/// same IP, another port; no REGISTER) and hangs up on the new
/// connection: the BYE is relayed to the other phone (its target is
/// that phone's registered terminal), the 200 comes back on the new
/// connection, and both agents are free. First the caller (A on S), then
/// the callee (B on T) of a cross-blade call.
#[test]
fn a_tcp_phone_that_reconnects_mid_call_hangs_up_on_its_new_connection() {
    let k = 3;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let (mut a, mut b) = tcp_pair(&cluster, k);

    let (mut sa, mut sb) = establish(&mut a, &mut b);
    assert_hosting(&cluster, (s, "1001"), (t, "1002"));
    a.reconnect(cluster.members[s].sip);
    transact((&mut a, &mut sa), (&mut b, &mut sb), "BYE");
    assert_all_free(&cluster, &[("1001", s), ("1002", t)]);

    let (mut sa, mut sb) = establish(&mut a, &mut b);
    assert_hosting(&cluster, (s, "1001"), (t, "1002"));
    b.reconnect(cluster.members[t].sip);
    transact((&mut b, &mut sb), (&mut a, &mut sa), "BYE");
    assert_all_free(&cluster, &[("1001", s), ("1002", t)]);
}

/// A phone whose connection closed mid-call connects again and moves its
/// Contact there with a re-INVITE (a target refresh, RFC 3261 §12.2),
/// having registered the new connection first or not: the other phone's
/// INFO and BYE then reach it on its new connection, through both blades
/// of two cores, whichever core took the new connection. First the
/// caller, then the callee. (Its next call needs the new registration:
/// the old Contact is gone.)
#[test]
fn a_tcp_phone_that_reconnects_and_refreshes_is_reached_on_its_new_connection() {
    let k = 4;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let (mut a, mut b) = tcp_pair(&cluster, k);
    for registers_first in [false, true] {
        let (mut sa, mut sb) = establish(&mut a, &mut b);
        a.reconnect(cluster.members[s].sip);
        if registers_first {
            a.register();
        }
        transact((&mut a, &mut sa), (&mut b, &mut sb), "INVITE");
        transact((&mut b, &mut sb), (&mut a, &mut sa), "INFO");
        transact((&mut b, &mut sb), (&mut a, &mut sa), "BYE");
        assert_all_free(&cluster, &[("1001", s), ("1002", t)]);
        if !registers_first {
            a.register();
        }

        let (mut sa, mut sb) = establish(&mut a, &mut b);
        b.reconnect(cluster.members[t].sip);
        if registers_first {
            b.register();
        }
        transact((&mut b, &mut sb), (&mut a, &mut sa), "INVITE");
        transact((&mut a, &mut sa), (&mut b, &mut sb), "INFO");
        transact((&mut a, &mut sa), (&mut b, &mut sb), "BYE");
        assert_all_free(&cluster, &[("1001", s), ("1002", t)]);
        if !registers_first {
            b.register();
        }
    }
}

/// `from` sends `method` in its side `fs`, towards a phone that is gone;
/// returns the final status it gets.
fn towards_gone(from: &mut dyn Phone, fs: &mut Side, method: &str) -> u16 {
    fs.cseq += 1;
    let seq = fs.cseq;
    let branch = format!("z9hG4bK-tcg{}", unique());
    from.send_text(&in_dialog_on(from, fs, method, seq, &branch));
    let done = final_response(from, &fs.call_id, method_of(method), seq);
    if method == "INVITE" {
        // The ACK of a non-2xx answer: the same branch (RFC 3261
        // §17.1.1.3); it ends at the first blade.
        from.send_text(&in_dialog_on(from, fs, "ACK", seq, &branch));
    }
    done.status().unwrap_or_default()
}

/// The blade cannot reach a TCP phone whose connection closed and whose
/// Contact was that connection (nothing listens there): the other
/// phone's INFO and BYE towards it fail at once (RFC 3261 §16.9, a
/// transport error) rather than at timer F, and the BYE still ends the
/// call: no agent stays in a call or hosted. First the caller's phone is
/// gone (the callee sends), then the callee's (the caller sends).
#[test]
fn requests_to_a_tcp_phone_whose_connection_closed_fail_and_free_the_agents() {
    let k = 5;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let (s_sip, t_sip) = (cluster.members[s].sip, cluster.members[t].sip);
    let (mut a, mut b) = tcp_pair(&cluster, k);

    let (_, mut sb) = establish(&mut a, &mut b);
    assert_hosting(&cluster, (s, "1001"), (t, "1002"));
    drop(a);
    let started = Instant::now();
    let info = towards_gone(&mut b, &mut sb, "INFO");
    assert!(info >= 400, "INFO to a gone phone: {info}");
    let bye = towards_gone(&mut b, &mut sb, "BYE");
    assert!(bye >= 400, "BYE to a gone phone: {bye}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_all_free(&cluster, &[("1001", s), ("1002", t)]);

    let mut a = TcpPhone::registered(s_sip, "1001", phone_ip(k, 2));
    cluster.wait_state(s, "1001", "ready");
    let (mut sa, _) = establish(&mut a, &mut b);
    assert_hosting(&cluster, (s, "1001"), (t, "1002"));
    drop(b);
    let reinvite = towards_gone(&mut a, &mut sa, "INVITE");
    assert!(reinvite >= 400, "re-INVITE to a gone phone: {reinvite}");
    let bye = towards_gone(&mut a, &mut sa, "BYE");
    assert!(bye >= 400, "BYE to a gone phone: {bye}");
    assert_all_free(&cluster, &[("1001", s), ("1002", t)]);
    // B can be called again once it is back.
    let mut b = TcpPhone::registered(t_sip, "1002", phone_ip(k, 3));
    cluster.wait_state(t, "1002", "ready");
    let (mut sa, mut sb) = establish(&mut a, &mut b);
    transact((&mut b, &mut sb), (&mut a, &mut sa), "BYE");
    assert_all_free(&cluster, &[("1001", s), ("1002", t)]);
}

// Scenario 4: CANCEL over TCP while ringing.

/// `a` calls `b`, which rings; `a` cancels over its connection: the
/// CANCEL is answered 200, reaches `b`, whose 487 reaches `a`, and `a`'s
/// ACK ends at its blade while `b` gets the ACK of the blade next to it.
fn cancelled(a: &mut TcpPhone, b: &mut TcpPhone) {
    let call_id = format!("tcc-{}", unique());
    let branch = format!("z9hG4bK-tcc{}", unique());
    let invite = invite_text(a, b.ext(), &call_id, "cancelling", &branch);
    a.send_text(&invite);
    let got = request(b, Method::Invite, &call_id, 1);
    b.send_text(&response_text(&got, 180, "ringing", &b.contact()));
    let ringing = a.expect("180", &mut |m| {
        m.call_id() == call_id && m.status() == Some(180)
    });
    assert_eq!(ringing.to().tag(), Some("ringing"));
    let cancel = format!(
        "CANCEL sip:{to}@cc.example SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <sip:{me}@cc.example>;tag=cancelling\r\n\
         To: <sip:{to}@cc.example>\r\nCall-ID: {call_id}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
        a.via(&branch),
        to = b.ext(),
        me = a.ext(),
    );
    a.send_text(&cancel);
    let ok = final_response(a, &call_id, Method::Cancel, 1);
    assert_eq!(ok.status(), Some(200), "{}", first_line(&ok));
    let at_b = request(b, Method::Cancel, &call_id, 1);
    b.send_text(&response_text(&at_b, 200, "ringing", &b.contact()));
    b.send_text(&response_text(&got, 487, "ringing", &b.contact()));
    let terminated = final_response(a, &call_id, Method::Invite, 1);
    assert_eq!(
        terminated.status(),
        Some(487),
        "{}",
        first_line(&terminated)
    );
    let ack = format!(
        "ACK sip:{to}@cc.example SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <sip:{me}@cc.example>;tag=cancelling\r\n\
         To: <sip:{to}@cc.example>;tag=ringing\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        a.via(&branch),
        to = b.ext(),
        me = a.ext(),
    );
    a.send_text(&ack);
    let hop_ack = request(b, Method::Ack, &call_id, 1);
    assert_eq!(hop_ack.to().tag(), Some("ringing"));
    let stray = b.collect(Duration::from_millis(200), &mut |m| m.call_id() == call_id);
    assert!(stray.is_empty(), "nothing more for B: {stray:?}");
}

/// CANCEL over TCP across two blades of two cores, each way: A (on S)
/// cancels its call to B (on T), then B cancels its call to A. Nobody
/// is left ringing, hosted or in a call.
#[test]
fn a_tcp_callers_cancel_reaches_a_ringing_tcp_callee_across_blades() {
    let k = 6;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let (mut a, mut b) = tcp_pair(&cluster, k);
    cancelled(&mut a, &mut b);
    assert_all_free(&cluster, &[("1001", s), ("1002", t)]);
    cancelled(&mut b, &mut a);
    assert_all_free(&cluster, &[("1001", s), ("1002", t)]);
    // Both can still call.
    let (mut sa, mut sb) = establish(&mut a, &mut b);
    transact((&mut a, &mut sa), (&mut b, &mut sb), "BYE");
    assert_all_free(&cluster, &[("1001", s), ("1002", t)]);
}

// Scenario 5: many TCP calls at once.

/// How many calls [`many_tcp_calls_at_once_across_two_blades_of_two_cores`] places.
const CALLS: usize = 20;

/// Two blades of two cores like [`two_blades`], provisioned with `extra`
/// agents besides the usual four.
fn two_blades_with_agents(k: u8, extra: &[String]) -> TestCluster {
    TestCluster::start_in_with_agents(SUBNET, 2, 16 * k + 1, CORES, extra)
}

/// Twenty cross-blade calls at once between TCP phones (callers 20xx on
/// S, callees 30xx on T), each in a thread: answered; while all are up,
/// every caller is in a call on S and every callee hosted by S; then each
/// call carries a re-INVITE and an INFO, and half are hung up by the
/// caller, half by the callee. No agent is left hosted or in a call.
#[test]
fn many_tcp_calls_at_once_across_two_blades_of_two_cores() {
    let k = 7;
    let callers: Vec<String> = (1..=CALLS).map(|n| format!("{}", 2000 + n)).collect();
    let callees: Vec<String> = (1..=CALLS).map(|n| format!("{}", 3000 + n)).collect();
    let all: Vec<String> = callers.iter().chain(&callees).cloned().collect();
    let cluster = two_blades_with_agents(k, &all);
    let (s, t) = (0, 1);
    let (s_sip, t_sip) = (cluster.members[s].sip, cluster.members[t].sip);
    let mut pairs: Vec<(TcpPhone, TcpPhone)> = callers
        .iter()
        .zip(&callees)
        .map(|(a, b)| {
            (
                TcpPhone::registered(s_sip, a, phone_ip(k, 0)),
                TcpPhone::registered(t_sip, b, phone_ip(k, 1)),
            )
        })
        .collect();
    for (a, b) in callers.iter().zip(&callees) {
        cluster.wait_state(s, a, "ready");
        cluster.wait_state(t, b, "ready");
    }

    let (up_tx, up_rx) = std::sync::mpsc::channel::<()>();
    let mut go = Vec::new();
    std::thread::scope(|scope| {
        for (n, (a, b)) in pairs.iter_mut().enumerate() {
            let up = up_tx.clone();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            go.push(go_tx);
            scope.spawn(move || {
                let (mut sa, mut sb) = establish(a, b);
                let _ = up.send(());
                go_rx
                    .recv_timeout(Duration::from_secs(30))
                    .expect("the go-ahead");
                transact((a, &mut sa), (b, &mut sb), "INVITE");
                transact((b, &mut sb), (a, &mut sa), "INFO");
                if n % 2 == 0 {
                    transact((a, &mut sa), (b, &mut sb), "BYE");
                } else {
                    transact((b, &mut sb), (a, &mut sa), "BYE");
                }
            });
        }
        drop(up_tx);
        for n in 0..CALLS {
            up_rx
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("only {n} of {CALLS} calls came up"));
        }
        for (a, b) in callers.iter().zip(&callees) {
            cluster.wait_state(s, a, "in_call");
            wait_agent(&cluster, t, b, "hosted", Some("blade-1"));
        }
        assert_eq!(cluster.sessions(s).len(), CALLS);
        assert!(cluster.sessions(t).is_empty());
        for g in &go {
            let _ = g.send(());
        }
    });

    let homes: Vec<(&str, usize)> = callers
        .iter()
        .map(|e| (e.as_str(), s))
        .chain(callees.iter().map(|e| (e.as_str(), t)))
        .collect();
    assert_all_free(&cluster, &homes);
}

// A TCP phone behind NAT.

/// A phone registered over TCP whose Contact names another IP than its
/// connection's (a phone behind NAT names its private address, where
/// nothing can reach it) is reached on its connection (README: "An agent
/// registered over TCP is reached on the connection it registered on"),
/// and its answers come back on that connection: from the address the
/// blade sent the request to, so they count. Called from a UDP phone on
/// one blade of two cores, and across two blades from a TCP phone; each
/// call carries a re-INVITE, an INFO each way, and a BYE. It calls too:
/// the other phone's requests reach it on its connection, from the core
/// of the session (the callee's), which does not hold its binding.
#[test]
fn a_tcp_phone_whose_contact_names_a_private_address_is_answered_on_its_connection() {
    let k = 8;
    let blade = one_blade(k);
    let mut a = Ua::new_at(blade.sip, "1001", phone_ip(k, 0));
    assert_eq!(a.register(3600).status(), Some(200));
    let mut b = TcpPhone::on("1002", TcpUa::connect_from(blade.sip, phone_ip(k, 1)));
    b.contact_at = Some(format!("{}:5060", phone_ip(k, 2)));
    b.register();
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    let (mut sa, mut sb) = establish(&mut a, &mut b);
    transact((&mut a, &mut sa), (&mut b, &mut sb), "INVITE");
    transact((&mut b, &mut sb), (&mut a, &mut sa), "INFO");
    transact((&mut a, &mut sa), (&mut b, &mut sb), "INFO");
    transact((&mut a, &mut sa), (&mut b, &mut sb), "BYE");
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    blade.wait_no_sessions();
    // The NATed phone calls: the session lives on the callee's core, not
    // on the core that holds the caller's binding.
    assert_ne!(shard_of(b"1001", CORES), shard_of(b"1002", CORES));
    let (mut sb, mut sa) = establish(&mut b, &mut a);
    transact((&mut a, &mut sa), (&mut b, &mut sb), "INFO");
    transact((&mut a, &mut sa), (&mut b, &mut sb), "INVITE");
    transact((&mut b, &mut sb), (&mut a, &mut sa), "INFO");
    transact((&mut a, &mut sa), (&mut b, &mut sb), "BYE");
    blade.wait_state("1001", "ready");
    blade.wait_state("1002", "ready");
    blade.wait_no_sessions();
    drop(blade);

    let cluster = two_blades(k + 1);
    let (s, t) = (0, 1);
    let k = k + 1;
    let mut a = TcpPhone::registered(cluster.members[s].sip, "1001", phone_ip(k, 0));
    let mut b = TcpPhone::on(
        "1002",
        TcpUa::connect_from(cluster.members[t].sip, phone_ip(k, 1)),
    );
    b.contact_at = Some(format!("{}:5060", phone_ip(k, 2)));
    b.register();
    cluster.wait_state(s, "1001", "ready");
    cluster.wait_state(t, "1002", "ready");
    let (mut sa, mut sb) = establish(&mut a, &mut b);
    assert_hosting(&cluster, (s, "1001"), (t, "1002"));
    transact((&mut a, &mut sa), (&mut b, &mut sb), "INVITE");
    transact((&mut b, &mut sb), (&mut a, &mut sa), "INFO");
    transact((&mut a, &mut sa), (&mut b, &mut sb), "BYE");
    assert_all_free(&cluster, &[("1001", s), ("1002", t)]);
    // And the other way: T hosts A for B's call.
    let (mut sb, mut sa) = establish(&mut b, &mut a);
    assert_hosting(&cluster, (t, "1002"), (s, "1001"));
    transact((&mut a, &mut sa), (&mut b, &mut sb), "INFO");
    transact((&mut a, &mut sa), (&mut b, &mut sb), "BYE");
    assert_all_free(&cluster, &[("1001", s), ("1002", t)]);
}

// A call too large for UDP between the blades.

/// A (TCP on S) calls B (TCP on T) with an INVITE of over 1300 bytes, so
/// S sends it to T over TCP too (RFC 3261 §18.1.1): every hop is a
/// stream, each blade record-routes once, on its SIP address with
/// `transport=tcp`; a re-INVITE and an INFO pass each way and B hangs up.
#[test]
fn a_call_too_large_for_udp_between_blades_stays_on_tcp() {
    let k = 10;
    let cluster = two_blades(k);
    let (s, t) = (0, 1);
    let (s_sip, t_sip) = (cluster.members[s].sip, cluster.members[t].sip);
    let (mut a, mut b) = tcp_pair(&cluster, k);
    let call_id = format!("tcbig-{}", unique());
    let body = format!("v=0\r\n{}", "a=x-padding:0123456789abcdef\r\n".repeat(60));
    let invite = invite_text(&a, "1002", &call_id, "big", "z9hG4bK-tcbig").replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(invite.len() > 1300);
    a.send_text(&invite);
    let got = request(&mut b, Method::Invite, &call_id, 1);
    assert_eq!(got.body(), body.as_bytes());
    let rr = record_routes(&got);
    assert_eq!(rr.len(), 2, "one entry per blade: {rr:?}");
    assert_eq!(route_addr(&rr[0]), t_sip.to_string());
    assert_eq!(route_addr(&rr[1]), s_sip.to_string());
    assert!(
        rr.iter()
            .all(|r| r.to_ascii_lowercase().contains("transport=tcp")),
        "{rr:?}"
    );
    b.send_text(&response_text(&got, 200, "bigcallee", &b.contact()));
    let ok = final_response(&mut a, &call_id, Method::Invite, 1);
    assert_eq!(ok.status(), Some(200));
    let mut routes = record_routes(&ok);
    routes.reverse();
    let mut sa = Side {
        call_id: call_id.clone(),
        me: "1001".into(),
        my_tag: "big".into(),
        peer: "1002".into(),
        peer_tag: "bigcallee".into(),
        target: b.contact(),
        routes,
        cseq: 1,
    };
    let mut sb = Side {
        call_id: call_id.clone(),
        me: "1002".into(),
        my_tag: "bigcallee".into(),
        peer: "1001".into(),
        peer_tag: "big".into(),
        target: a.contact(),
        routes: rr,
        cseq: 0,
    };
    a.send_text(&in_dialog(&a, &sa, "ACK", 1));
    request(&mut b, Method::Ack, &call_id, 1);
    assert_hosting(&cluster, (s, "1001"), (t, "1002"));
    transact((&mut a, &mut sa), (&mut b, &mut sb), "INVITE");
    transact((&mut b, &mut sb), (&mut a, &mut sa), "INVITE");
    transact((&mut a, &mut sa), (&mut b, &mut sb), "INFO");
    transact((&mut b, &mut sb), (&mut a, &mut sa), "INFO");
    transact((&mut b, &mut sb), (&mut a, &mut sa), "BYE");
    assert_all_free(&cluster, &[("1001", s), ("1002", t)]);
}
