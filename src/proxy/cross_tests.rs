//! Cross-blade calls in virtual time: two blade cores (S on 127.0.0.1,
//! T on 127.0.0.2) whose SIP and link messages are carried in memory, and
//! terminals that are just addresses whose inboxes the tests read.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::cross::{ClusterSend, ClusterSettings, Dest, PeerBlade};
use super::*;
use crate::cluster::codec::{Class, Message as LinkMessage};
use crate::cluster::hosting::HostSecret;
use crate::cluster::link::ReplyTo;

const S: usize = 0;
const T: usize = 1;
const LEASE: u32 = 30;
/// Shorter than a registration (3600 s), so a test can outlive it.
const MAX_CALL: Duration = Duration::from_secs(600);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Agent extension → its terminal's address.
fn terminal(ext: &str) -> SocketAddr {
    addr(&format!(
        "127.0.0.{}:5{}",
        10 + ext.as_bytes()[3] - b'0',
        &ext[1..]
    ))
}

enum Event {
    Sip {
        node: usize,
        source: Peer,
        data: Bytes,
    },
    Link {
        node: usize,
        from: String,
        msg: LinkMessage,
        reply: Option<ReplyTo>,
    },
}

struct Node {
    id: String,
    sip: SocketAddr,
    proxy: Proxy,
}

struct World {
    now: Duration,
    nodes: Vec<Node>,
    /// Whether link messages get through.
    link_up: bool,
    /// While set, link messages wait here (a slow link) until
    /// [`World::release_link`].
    link_held: Option<Vec<Event>>,
    /// What reached the terminals, per address.
    inbox: HashMap<SocketAddr, VecDeque<Message>>,
    /// Every link message, as `(from, name)`.
    link_log: Vec<(String, &'static str)>,
    /// The status of every SIP response sent from one blade to the other,
    /// as `(from node, status)`.
    blade_responses: Vec<(usize, u16)>,
}

fn node(id: &str, sip: &str, peer: (&str, &str)) -> Node {
    node_with(id, sip, &[peer])
}

/// [`node`] with several peers.
fn node_with(id: &str, sip: &str, peers: &[(&str, &str)]) -> Node {
    let settings = Settings {
        blade_id: id.into(),
        domain: "cc.example".into(),
        local: addr(sip),
        auth: false,
        core: 0,
        cores: 1,
        timers: TimerConfig::default(),
        max_transactions: 1000,
        cluster: Some(ClusterSettings {
            peers: peers
                .iter()
                .map(|&(id, sip)| PeerBlade {
                    id: id.into(),
                    sip: addr(sip),
                })
                .collect(),
            lease_secs: LEASE,
            secret: HostSecret::from_bytes([7; 32]),
            epoch_base: 1,
        }),
        via_port: None,
        core_ports: Vec::new(),
        max_call: MAX_CALL,
    };
    Node {
        id: id.into(),
        sip: addr(sip),
        proxy: super::tests::proxy_with_agents(settings, &["1001", "1002", "1003", "1004"]),
    }
}

impl World {
    fn new() -> World {
        let mut w = World {
            now: Duration::ZERO,
            nodes: vec![
                node("blade-1", "127.0.0.1:5060", ("blade-2", "127.0.0.2:5060")),
                node("blade-2", "127.0.0.2:5060", ("blade-1", "127.0.0.1:5060")),
            ],
            link_up: true,
            link_held: None,
            inbox: HashMap::new(),
            link_log: Vec::new(),
            blade_responses: Vec::new(),
        };
        for (n, peer) in [(S, "blade-2"), (T, "blade-1")] {
            let mut out = Output::default();
            w.nodes[n].proxy.peer_state(w.now, peer, Some(1), &mut out);
            w.run(n, out);
        }
        w
    }

    fn other(node: usize) -> usize {
        1 - node
    }

    /// Delivers a datagram from a terminal to blade `node`.
    fn send_from(&mut self, node: usize, ext: &str, text: &str) {
        let source = Peer::udp(terminal(ext));
        self.process(Event::Sip {
            node,
            source,
            data: Bytes::from(text.to_owned()),
        });
    }

    fn process(&mut self, first: Event) {
        let mut queue = VecDeque::from([first]);
        while let Some(event) = queue.pop_front() {
            let mut out = Output::default();
            let now = self.now;
            let node = match event {
                Event::Sip { node, source, data } => {
                    self.nodes[node]
                        .proxy
                        .handle_datagram(now, source, data, &mut out);
                    node
                }
                Event::Link {
                    node,
                    from,
                    msg,
                    reply,
                } => {
                    self.nodes[node]
                        .proxy
                        .handle_cluster(now, &from, msg, reply, &mut out);
                    node
                }
            };
            queue.extend(self.route(node, out));
        }
    }

    fn run(&mut self, node: usize, out: Output) {
        let events = self.route(node, out);
        for e in events {
            self.process(e);
        }
    }

    /// Carries what `node` sent: to the other blade, or to an inbox.
    fn route(&mut self, node: usize, out: Output) -> Vec<Event> {
        let mut events = Vec::new();
        let me = self.nodes[node].sip;
        let other = World::other(node);
        for t in out.transmits {
            if t.to.addr == self.nodes[other].sip {
                if let Ok(msg) = Message::parse(t.data.clone()) {
                    if let Some(status) = msg.status() {
                        self.blade_responses.push((node, status));
                    }
                }
                events.push(Event::Sip {
                    node: other,
                    source: Peer::udp(me),
                    data: t.data,
                });
            } else {
                let msg = Message::parse(t.data).unwrap();
                self.inbox.entry(t.to.addr).or_default().push_back(msg);
            }
        }
        for ClusterSend { to, msg } in out.cluster {
            if !self.link_up {
                continue;
            }
            self.link_log
                .push((self.nodes[node].id.clone(), msg.name()));
            let reply = (msg.class() == Class::Request).then(|| ReplyTo::for_tests(0));
            let target = match to {
                Dest::Peer(_) | Dest::AllPeers | Dest::Reply { .. } => other,
            };
            let event = Event::Link {
                node: target,
                from: self.nodes[node].id.clone(),
                msg,
                reply,
            };
            match self.link_held.as_mut() {
                Some(held) => held.push(event),
                None => events.push(event),
            }
        }
        events
    }

    /// Delivers the link messages held back, and lets the next ones
    /// through at once.
    fn release_link(&mut self) {
        for event in self.link_held.take().unwrap_or_default() {
            self.process(event);
        }
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            let next = (0..2)
                .filter_map(|n| self.nodes[n].proxy.next_deadline().map(|at| (at, n)))
                .filter(|(at, _)| *at <= end)
                .min();
            let Some((at, n)) = next else { break };
            self.now = self.now.max(at);
            let mut out = Output::default();
            self.nodes[n].proxy.handle_timeout(self.now, &mut out);
            self.run(n, out);
        }
        self.now = end;
    }

    fn register(&mut self, node: usize, ext: &str) {
        let t = terminal(ext);
        let text = format!(
            "REGISTER sip:cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bKr{ext}\r\n\
             From: <sip:{ext}@cc.example>;tag=r\r\nTo: <sip:{ext}@cc.example>\r\nCall-ID: reg{ext}\r\n\
             CSeq: 1 REGISTER\r\nContact: <sip:{ext}@{t}>\r\nContent-Length: 0\r\n\r\n"
        );
        self.send_from(node, ext, &text);
        assert_eq!(self.take(ext).status(), Some(200));
    }

    /// The next message terminal `ext` received.
    fn take(&mut self, ext: &str) -> Message {
        self.inbox
            .get_mut(&terminal(ext))
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| panic!("nothing reached {ext}"))
    }

    /// The next message `ext` received that is not a 100 Trying.
    fn take_final(&mut self, ext: &str) -> Message {
        loop {
            let msg = self.take(ext);
            if msg.status() != Some(100) {
                return msg;
            }
        }
    }

    fn idle(&self, ext: &str) -> bool {
        self.inbox
            .get(&terminal(ext))
            .is_none_or(VecDeque::is_empty)
    }

    fn state(&self, node: usize, ext: &str) -> &'static str {
        let record = self.nodes[node].proxy.registrar().location().get(ext);
        record.unwrap().state.as_str()
    }

    fn snapshot(&self, node: usize) -> Snapshot {
        self.nodes[node].proxy.snapshot()
    }
}

fn invite(from: &str, to: &str, call_id: &str) -> String {
    let t = terminal(from);
    format!(
        "INVITE sip:{to}@cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{from}@cc.example>;tag=f{from}\r\nTo: <sip:{to}@cc.example>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{from}@{t}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
    )
}

/// The callee's answer to a request it received.
fn answer(req: &Message, status: u16) -> String {
    let mut buf = bytes::BytesMut::new();
    let contact = format!("<{}>", req.request_uri().unwrap().as_str());
    let rr: Vec<String> = req
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    let mut extra = vec![("Contact", contact.as_str())];
    extra.extend(rr.iter().map(|r| ("Record-Route", r.as_str())));
    req.response(status, "X", Some("callee"), &extra, &mut buf);
    String::from_utf8(buf.to_vec()).unwrap()
}

/// An in-dialog request from the caller along the 2xx's route set.
fn in_dialog(method: &str, from: &str, ok: &Message, cseq: u32) -> String {
    let t = terminal(from);
    let contact = ok.contacts().next().unwrap().uri().as_str().to_owned();
    let mut routes: Vec<String> = ok
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    routes.reverse();
    let header = |name| String::from_utf8_lossy(ok.header(name).unwrap()).into_owned();
    format!(
        "{method} {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bK{method}{cseq}\r\n\
         Route: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\n\
         CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        routes.join(", "),
        header(crate::sip::HeaderName::From),
        header(crate::sip::HeaderName::To),
        ok.call_id(),
    )
}

/// 1001 on S calls 1002 on T, up to the caller's 200 OK.
fn answered_call(w: &mut World) -> Message {
    answered_call_seen_by_both(w).1
}

/// [`answered_call`], ACKed: the ACK reached the callee.
fn acked_call(w: &mut World) -> Message {
    let ok = answered_call(w);
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    assert_eq!(w.take("1002").method(), Some(Method::Ack));
    ok
}

/// The same: the INVITE as the callee got it, and the 200 as the caller
/// got it.
fn answered_call_seen_by_both(w: &mut World) -> (Message, Message) {
    w.register(S, "1001");
    w.register(T, "1002");
    w.send_from(S, "1001", &invite("1001", "1002", "c1"));
    assert_eq!(w.take("1001").status(), Some(100));
    let inv = w.take("1002");
    assert_eq!(
        inv.request_uri().unwrap().as_str(),
        format!("sip:1002@{}", terminal("1002"))
    );
    assert_eq!(inv.record_routes().count(), 2);
    w.send_from(T, "1002", &answer(&inv, 200));
    let ok = w.take_final("1001");
    assert_eq!(ok.status(), Some(200));
    (inv, ok)
}

/// A callee whose phone registered a Contact naming its badge rather than
/// its extension (as a phone that logs in with its badge may): the
/// caller's ACK and in-dialog requests, whose Request-URI is that
/// Contact, still reach it through T, which finds its terminal by the To
/// (they were dropped and refused 403 as routed outside the cluster).
#[test]
fn in_dialog_requests_reach_a_hosted_callee_whose_contact_names_its_badge() {
    let mut w = World::new();
    w.register(S, "1001");
    let t = terminal("1002");
    let contact = format!("sip:A1002@{t}");
    let register = format!(
        "REGISTER sip:cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bKrb\r\n\
         From: <sip:1002@cc.example>;tag=r\r\nTo: <sip:1002@cc.example>\r\nCall-ID: regb\r\n\
         CSeq: 1 REGISTER\r\nContact: <{contact}>\r\nContent-Length: 0\r\n\r\n"
    );
    w.send_from(T, "1002", &register);
    assert_eq!(w.take("1002").status(), Some(200));
    w.send_from(S, "1001", &invite("1001", "1002", "c1"));
    assert_eq!(w.take("1001").status(), Some(100));
    let inv = w.take("1002");
    assert_eq!(inv.request_uri().unwrap().as_str(), contact);
    w.send_from(T, "1002", &answer(&inv, 200));
    let ok = w.take_final("1001");
    assert_eq!(ok.status(), Some(200));
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    assert_eq!(w.take("1002").method(), Some(Method::Ack));
    for (cseq, method) in [(2, "REFER"), (3, "BYE")] {
        w.send_from(S, "1001", &in_dialog(method, "1001", &ok, cseq));
        let got = w.take("1002");
        assert_eq!(got.method(), Some(Method::from_bytes(method.as_bytes())));
        assert_eq!(got.request_uri().unwrap().as_str(), contact);
    }
    assert!(w.idle("1001"), "no refusal");
}

#[test]
fn the_directory_names_the_target_and_one_round_trip_hosts() {
    let mut w = World::new();
    let ok = answered_call(&mut w);
    let names: Vec<&str> = w.link_log.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        names,
        ["Announce", "Announce", "HostRequest", "HostGranted"],
        "T announced 1002, so S asked T directly"
    );
    assert_eq!(w.state(T, "1002"), "hosted");
    assert_eq!(w.state(S, "1001"), "in_call");
    let snapshot = w.snapshot(S);
    assert_eq!(snapshot.sessions[0].hosted, ["1002"]);
    assert_eq!(
        snapshot.hosted,
        [HostedAgent {
            extension: "1002".into(),
            contact: terminal("1002"),
        }],
        "S shows B in the call, at B's contact"
    );
    let hosted = w.nodes[S].proxy.sessions.get("c1").unwrap().hosted.clone();
    let info = hosted.unwrap().info.unwrap();
    assert_eq!(
        (info.badge.as_str(), info.addr),
        ("A1002", terminal("1002"))
    );

    // ACK and BYE go S → T → B; the BYE ends the hosting once its 200
    // has come back through T.
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    assert_eq!(w.take("1002").method(), Some(Method::Ack));
    w.send_from(S, "1001", &in_dialog("BYE", "1001", &ok, 2));
    let bye = w.take("1002");
    assert_eq!(bye.method(), Some(Method::Bye));
    assert_eq!(w.state(S, "1001"), "ready");
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take("1001").status(), Some(200));
    assert_eq!(w.state(T, "1002"), "ready", "released after the BYE");
    assert!(w.snapshot(S).hosted.is_empty());
    assert_eq!(w.nodes[S].proxy.metrics().cross_blade.answered, 1);
    assert_eq!(w.nodes[S].proxy.metrics().hosting_rtt.count, 1);
}

/// T sheds new requests under load (503), a peer's host request
/// included, but not the INVITE of a grant it gave before: it took that
/// call on when it granted, and a 503 there would fail it after all (S
/// turns it into a 500 for the caller).
#[test]
fn an_overloaded_target_refuses_new_grants_but_takes_the_invite_of_one_it_gave() {
    let mut w = World::new();
    w.register(S, "1001");
    w.register(S, "1004");
    w.register(T, "1002");
    w.register(T, "1003");
    // T grants, then falls behind before S's INVITE comes.
    w.link_held = Some(Vec::new());
    w.send_from(S, "1001", &invite("1001", "1002", "c1"));
    assert_eq!(w.take("1001").status(), Some(100));
    let host_request = w.link_held.replace(Vec::new()).unwrap_or_default();
    for event in host_request {
        w.process(event);
    }
    assert_eq!(w.state(T, "1002"), "hosted", "granted; the answer held");
    w.nodes[T].proxy.set_shedding(true);
    w.release_link();
    let inv = w.take("1002");
    assert_eq!(inv.method(), Some(Method::Invite), "T relayed it");
    w.send_from(T, "1002", &answer(&inv, 200));
    assert_eq!(w.take_final("1001").status(), Some(200));

    // While T sheds, neither a new cross-blade call nor a call at T
    // itself is taken on.
    w.send_from(S, "1004", &invite("1004", "1003", "c2"));
    assert_eq!(w.take("1004").status(), Some(100));
    assert_eq!(w.take_final("1004").status(), Some(503));
    assert_eq!(w.state(T, "1003"), "ready");
    w.send_from(T, "1003", &invite("1003", "1002", "c3"));
    assert_eq!(w.take_final("1003").status(), Some(503));
}

#[test]
fn t_defers_its_100_to_s_and_sends_it_only_for_a_slow_callee() {
    let mut w = World::new();
    w.register(S, "1001");
    w.register(T, "1002");
    w.send_from(S, "1001", &invite("1001", "1002", "c1"));
    assert_eq!(
        w.take("1001").status(),
        Some(100),
        "the caller's 100 is at once"
    );
    let inv = w.take("1002");
    w.advance(Duration::from_millis(100));
    w.send_from(T, "1002", &answer(&inv, 180));
    assert_eq!(w.take("1001").status(), Some(180));
    w.advance(Duration::from_millis(300));
    assert_eq!(
        w.blade_responses,
        [(T, 180)],
        "the callee's 180 spared T's 100"
    );

    w.register(S, "1003");
    w.register(T, "1004");
    w.send_from(S, "1003", &invite("1003", "1004", "c2"));
    assert_eq!(w.take("1003").status(), Some(100));
    let _ = w.take("1004");
    w.advance(Duration::from_millis(300));
    assert_eq!(
        w.blade_responses,
        [(T, 180), (T, 100)],
        "a callee silent for 200 ms: T sends S its 100, before S's first retransmission"
    );
    assert!(w.idle("1003"), "S absorbs T's 100");
}

#[test]
fn a_directory_miss_falls_back_to_asking_the_peers() {
    let mut w = World::new();
    w.register(S, "1001");
    w.link_up = false; // T's announcement is lost.
    w.register(T, "1002");
    w.link_up = true;
    w.send_from(S, "1001", &invite("1001", "1002", "c1"));
    let names: Vec<&str> = w.link_log.iter().map(|(_, n)| *n).collect();
    assert!(
        names.ends_with(&["Locate", "Located", "HostRequest", "HostGranted"]),
        "{names:?}"
    );
    assert_eq!(w.take_final("1002").method(), Some(Method::Invite));
}

#[test]
fn a_forged_token_is_forbidden() {
    let mut w = World::new();
    w.register(T, "1002");
    let text = invite("1001", "1002", "c9").replacen(
        "sip:1002@cc.example SIP",
        "sip:1002@127.0.0.2:5060;sbh=00112233445566778899aabbccddeeff SIP",
        1,
    );
    // Even from S's address, a token T never granted is refused.
    let out = {
        let mut out = Output::default();
        let data = Bytes::from(text);
        w.nodes[T]
            .proxy
            .handle_datagram(w.now, Peer::udp(addr("127.0.0.1:5060")), data, &mut out);
        out
    };
    assert_eq!(out.transmits.len(), 1);
    let refusal = Message::parse(out.transmits[0].data.clone()).unwrap();
    assert_eq!(refusal.status(), Some(403));
    assert!(w.idle("1002"));
    assert_eq!(w.state(T, "1002"), "ready");
}

#[test]
fn t_tells_s_from_another_peer_on_its_ip_by_the_token() {
    // T's first peer on S's IP is another blade (blades on one host, told
    // apart by port): S's INVITE under its grant still reaches the callee,
    // and a forged token from that IP is still refused.
    let mut w = World::new();
    w.nodes[T] = node_with(
        "blade-2",
        "127.0.0.2:5060",
        &[("blade-9", "127.0.0.1:5999"), ("blade-1", "127.0.0.1:5060")],
    );
    let mut out = Output::default();
    w.nodes[T]
        .proxy
        .peer_state(w.now, "blade-1", Some(1), &mut out);
    w.run(T, out);
    acked_call(&mut w);
    assert_eq!(w.state(T, "1002"), "hosted");
    w.register(T, "1003");
    let forged = invite("1001", "1003", "c9").replacen(
        "sip:1003@cc.example SIP",
        "sip:1003@127.0.0.2:5060;sbh=00112233445566778899aabbccddeeff SIP",
        1,
    );
    let mut out = Output::default();
    w.nodes[T].proxy.handle_datagram(
        w.now,
        Peer::udp(addr("127.0.0.1:5060")),
        Bytes::from(forged),
        &mut out,
    );
    let refusal = Message::parse(out.transmits[0].data.clone()).unwrap();
    assert_eq!(refusal.status(), Some(403));
}

#[test]
fn a_new_call_for_a_hosted_agent_at_t_is_decided_by_s() {
    let mut w = World::new();
    answered_call(&mut w);
    w.register(T, "1003");
    w.send_from(T, "1003", &invite("1003", "1002", "c2"));
    let busy = w.take_final("1003");
    assert_eq!(busy.status(), Some(486));
    let names: Vec<&str> = w.link_log.iter().map(|(_, n)| *n).collect();
    assert!(
        names.ends_with(&["Redirect", "RedirectAnswer"]),
        "{names:?}"
    );
    assert!(w.idle("1002"), "B got no second INVITE");
}

/// 1002 hosted by S in an answered call, the link down: 1003 on T calls
/// 1002 (Call-ID `c2`), and T, which would ask S, gets no verdict.
fn call_to_hosted_agent_with_the_link_down(w: &mut World) {
    answered_call(w);
    w.register(T, "1003");
    w.link_up = false;
    w.send_from(T, "1003", &invite("1003", "1002", "c2"));
    assert_eq!(w.take("1003").status(), Some(100));
}

#[test]
fn without_the_hosting_blade_t_answers_486_itself() {
    let mut w = World::new();
    call_to_hosted_agent_with_the_link_down(&mut w);
    w.advance(cross::REDIRECT_WAIT);
    assert_eq!(w.take("1003").status(), Some(486));
}

/// A caller that cancels while T waits for the hosting blade's verdict,
/// which never comes: nothing of the redirect is left behind.
#[test]
fn a_cancelled_redirect_whose_answer_never_comes_leaves_nothing_behind() {
    let mut w = World::new();
    call_to_hosted_agent_with_the_link_down(&mut w);
    assert_eq!(w.nodes[T].proxy.awaiting_redirects(), 1);
    let cancel = invite("1003", "1002", "c2")
        .replace("INVITE sip", "CANCEL sip")
        .replace("1 INVITE", "1 CANCEL");
    w.send_from(T, "1003", &cancel);
    let answers: Vec<u16> = (0..2).map(|_| w.take("1003").status().unwrap()).collect();
    assert!(
        answers.contains(&200) && answers.contains(&487),
        "{answers:?}"
    );
    // Past the redirect's wait, the INVITE's linger, and the lease lapse
    // (with its BYEs) that the link being down brings.
    w.advance(Duration::from_secs(120));
    assert_eq!(w.nodes[T].proxy.awaiting_redirects(), 0);
    assert_eq!(w.nodes[T].proxy.transactions(), 0);
}

/// T dies silently mid-call: S's link has not noticed yet (no PeerDown;
/// the QUIC idle timeout takes seconds). A new call on S for the agent S
/// hosts is busy: S decides on an agent it hosts (SPEC §2 step 6), so it
/// answers 486 at once from its own sessions instead of asking T, which
/// would never answer (503 after the request timeout).
#[test]
fn a_new_call_on_s_for_an_agent_s_hosts_is_486_without_asking_t() {
    let mut w = World::new();
    answered_call(&mut w);
    w.register(S, "1003");
    w.link_up = false; // T is gone; S does not know it yet.
    w.link_log.clear();
    w.send_from(S, "1003", &invite("1003", "1002", "c2"));
    let busy = w.take_final("1003");
    assert_eq!(busy.status(), Some(486), "{busy:?}");
    assert!(w.link_log.is_empty(), "nobody asked: {:?}", w.link_log);
    assert_eq!(w.state(S, "1003"), "ready");
    let sessions = w.snapshot(S).sessions;
    assert_eq!(sessions.len(), 1, "only the call: {sessions:?}");
    let m = w.nodes[S].proxy.metrics();
    assert_eq!(m.cross_blade.busy, 1);
    assert_eq!(m.hosting_refused, [0, 0, 0, 1, 0]);

    // With the link up S still decides alone, and once the call is over
    // the agent is hosted again as usual.
    w.link_up = true;
    w.send_from(S, "1003", &invite("1003", "1002", "c3"));
    assert_eq!(w.take_final("1003").status(), Some(486));
    assert!(w.link_log.is_empty(), "{:?}", w.link_log);
}

#[test]
fn once_the_hosted_call_ends_a_new_call_on_s_hosts_the_agent_again() {
    let mut w = World::new();
    let (bye, _) = caller_hung_up(&mut w);
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take("1001").status(), Some(200));
    assert!(
        !w.nodes[S]
            .proxy
            .cluster
            .as_ref()
            .unwrap()
            .source
            .hosts("1002")
    );
    w.register(S, "1003");
    w.send_from(S, "1003", &invite("1003", "1002", "c2"));
    let inv = w.take_final("1002");
    assert_eq!(inv.call_id(), "c2");
    assert_eq!(w.state(T, "1002"), "hosted");
}

/// 1002, hosted from T by S, logs in on S itself mid-call (its phone
/// moved to the hosting blade): it is in the call there, so a new call to
/// it on S is 486, not rung; when the call ends it is ready on S.
#[test]
fn a_hosted_agent_logging_in_on_s_mid_call_is_in_the_call_there() {
    let mut w = World::new();
    let ok = acked_call(&mut w);
    w.register(S, "1002");
    assert_eq!(w.state(S, "1002"), "in_call");
    w.register(S, "1003");
    w.send_from(S, "1003", &invite("1003", "1002", "c2"));
    assert_eq!(w.take_final("1003").status(), Some(486));
    assert!(w.idle("1002"), "the moved phone is not rung");

    w.send_from(S, "1001", &in_dialog("BYE", "1001", &ok, 2));
    let bye = w.take("1002");
    assert_eq!(bye.method(), Some(Method::Bye));
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take("1001").status(), Some(200));
    assert_eq!(w.state(S, "1002"), "ready");
}

/// 1002 logs in on S once the hosted call has ended there, while its
/// grant still waits for the BYE's 200 through T: the call is over, so it
/// is ready (not put in a call whose end has passed).
#[test]
fn a_login_on_s_after_the_hosted_call_ended_leaves_the_agent_ready() {
    let mut w = World::new();
    let (bye, _) = caller_hung_up(&mut w);
    assert!(s_hosts(&w, "1002"), "the grant waits for the BYE's 200");
    w.register(S, "1002");
    assert_eq!(w.state(S, "1002"), "ready");
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take("1001").status(), Some(200));
    assert_eq!(w.state(S, "1002"), "ready");
}

/// An answered, ACKed cross-blade call whose caller has hung up: the BYE,
/// relayed by S and T, reached 1002's phone. Returns the BYE as the phone
/// got it, and where the link log stood before it.
fn caller_hung_up(w: &mut World) -> (Message, usize) {
    let ok = answered_call(w);
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    assert_eq!(w.take("1002").method(), Some(Method::Ack));
    let since = w.link_log.len();
    w.send_from(S, "1001", &in_dialog("BYE", "1001", &ok, 2));
    let bye = w.take("1002");
    assert_eq!(bye.method(), Some(Method::Bye));
    (bye, since)
}

/// The unhosts that left S since link message `since`.
fn unhosts_since(w: &World, since: usize) -> usize {
    w.link_log[since..]
        .iter()
        .filter(|(from, name)| from == "blade-1" && *name == "Unhost")
        .count()
}

/// Whether S holds a grant for `ext`.
fn s_hosts(w: &World, ext: &str) -> bool {
    let cluster = w.nodes[S].proxy.cluster.as_ref().unwrap();
    cluster.source.hosts(ext)
}

/// 1001's BYE of the cross-blade call, relayed by S to T: the agents on
/// S are free at once, but the unhost waits until the BYE's 200 has come
/// back through T (so T has passed the BYE on to 1002's phone): an unhost
/// sent with the BYE travels the faster QUIC link, and T would free 1002
/// while the BYE is still on its way to its phone. Meanwhile 1002 is busy
/// on both blades alike: a new call to it is 486, decided by S.
#[test]
fn the_unhost_of_a_relayed_bye_waits_for_its_200_through_t() {
    let mut w = World::new();
    w.register(S, "1003");
    w.register(T, "1004");
    let (bye, since) = caller_hung_up(&mut w);
    assert_eq!(unhosts_since(&w, since), 0, "{:?}", &w.link_log[since..]);
    assert_eq!(w.state(S, "1001"), "ready");
    assert!(w.snapshot(S).sessions.is_empty());
    assert_eq!(w.state(T, "1002"), "hosted");
    assert!(s_hosts(&w, "1002"));

    // New calls to 1002 meanwhile, on S and on T: busy, the phone not rung.
    w.send_from(S, "1003", &invite("1003", "1002", "c2"));
    assert_eq!(w.take_final("1003").status(), Some(486));
    w.send_from(T, "1004", &invite("1004", "1002", "c3"));
    assert_eq!(w.take_final("1004").status(), Some(486));
    assert!(w.idle("1002"));
    assert_eq!(unhosts_since(&w, since), 0);

    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take("1001").status(), Some(200));
    assert_eq!(unhosts_since(&w, since), 1);
    assert_eq!(w.state(T, "1002"), "ready");
    assert!(!s_hosts(&w, "1002"));
    w.send_from(S, "1003", &invite("1003", "1002", "c4"));
    assert_eq!(w.take_final("1002").call_id(), "c4");
}

/// The same BYE unanswered (1002's phone gone): the grant is held no
/// longer than the BYE's transaction lasts (64×T1), then released; 1002
/// is ready on T and nothing is left on either blade.
#[test]
fn the_unhost_of_an_unanswered_bye_leaves_at_its_timeout() {
    let mut w = World::new();
    let (_, since) = caller_hung_up(&mut w);
    let timeout = TimerConfig::default().timeout();
    w.advance(timeout - Duration::from_millis(1));
    assert_eq!(unhosts_since(&w, since), 0);
    assert_eq!(w.state(T, "1002"), "hosted", "renewed meanwhile");
    w.advance(Duration::from_millis(1));
    assert_eq!(unhosts_since(&w, since), 1);
    assert_eq!(w.state(T, "1002"), "ready");
    assert!(!s_hosts(&w, "1002"));
    assert!(
        w.idle("1001"),
        "no BYE of S's own: the session ended already"
    );
    w.advance(timeout);
    for n in [S, T] {
        let snap = w.snapshot(n);
        assert!(snap.sessions.is_empty());
        assert_eq!(snap.transactions, 0, "node {n}");
    }
    assert_eq!(w.nodes[S].proxy.own_byes_open(), 0);
}

/// A stopping blade answers what it still relays (503): a BYE whose
/// hosting waited for it releases it then, not at the deadline.
#[test]
fn a_stopping_blade_releases_the_hosting_its_relayed_bye_held() {
    let mut w = World::new();
    let (_, since) = caller_hung_up(&mut w);
    assert_eq!(unhosts_since(&w, since), 0);
    let mut out = Output::default();
    w.nodes[S].proxy.abandon_pending(w.now, &mut out);
    w.run(S, out);
    assert_eq!(w.take("1001").status(), Some(503));
    assert_eq!(unhosts_since(&w, since), 1);
    assert_eq!(w.state(T, "1002"), "ready");
}

#[test]
fn refusals_reach_the_caller() {
    let mut w = World::new();
    w.register(S, "1001");
    // Registered nowhere: every peer says so.
    w.send_from(S, "1001", &invite("1001", "1002", "c1"));
    assert_eq!(w.take_final("1001").status(), Some(480));
    // Busy in a local call on T.
    w.register(T, "1002");
    w.register(T, "1003");
    w.send_from(T, "1003", &invite("1003", "1002", "local"));
    w.take_final("1002");
    w.send_from(S, "1001", &invite("1001", "1002", "c2"));
    assert_eq!(w.take_final("1001").status(), Some(486));
    assert_eq!(w.state(S, "1001"), "ready", "the caller is free again");
    let m = w.nodes[S].proxy.metrics();
    assert_eq!(m.hosting_refused, [0, 1, 1, 0, 0]);
}

#[test]
fn cancel_while_hosting_ends_the_call_and_releases_the_grant() {
    let mut w = World::new();
    w.register(S, "1001");
    w.register(T, "1002");
    // The grant is on its way back when the CANCEL arrives.
    w.link_up = false;
    w.send_from(S, "1001", &invite("1001", "1002", "c1"));
    assert_eq!(w.take("1001").status(), Some(100));
    let cancel = invite("1001", "1002", "c1")
        .replace("INVITE sip", "CANCEL sip")
        .replace("1 INVITE", "1 CANCEL");
    w.send_from(S, "1001", &cancel);
    let answers: Vec<u16> = (0..2).map(|_| w.take("1001").status().unwrap()).collect();
    assert!(
        answers.contains(&200) && answers.contains(&487),
        "{answers:?}"
    );
    assert_eq!(w.state(S, "1001"), "ready");
    assert_eq!(w.nodes[S].proxy.metrics().cross_blade.cancelled, 1);
}

#[test]
fn a_lapsed_lease_returns_the_agent_when_s_vanishes() {
    let mut w = World::new();
    answered_call(&mut w);
    w.link_up = false; // S is gone: no renewals, no unhost.
    let lease = Duration::from_secs(u64::from(LEASE));
    // Only T's timers run from here.
    let end = w.now + lease + Duration::from_secs(1);
    while let Some(at) = w.nodes[T].proxy.next_deadline().filter(|&at| at <= end) {
        w.now = w.now.max(at);
        let mut out = Output::default();
        w.nodes[T].proxy.handle_timeout(w.now, &mut out);
    }
    assert_eq!(w.state(T, "1002"), "ready");
}

/// Runs only `node`'s timers for `by` (the other blade is gone), carrying
/// what it sends.
fn advance_only(w: &mut World, node: usize, by: Duration) {
    let end = w.now + by;
    while let Some(at) = w.nodes[node].proxy.next_deadline().filter(|&at| at <= end) {
        w.now = w.now.max(at);
        let mut out = Output::default();
        w.nodes[node].proxy.handle_timeout(w.now, &mut out);
        w.run(node, out);
    }
    w.now = end;
}

/// S vanishes mid-call (no renewal, no unhost, no BYE): when the lease
/// lapses, T hangs the call up on the hosted agent's phone with a BYE of
/// its own, as the caller would write it, before it frees the agent.
#[test]
fn a_lapsed_lease_hangs_up_the_hosted_agents_phone_from_t() {
    use crate::sip::HeaderName;
    let header = |m: &Message, name| String::from_utf8_lossy(m.header(name).unwrap()).into_owned();
    let mut w = World::new();
    let ok = acked_call(&mut w);
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 1);
    w.link_up = false;
    let lease = Duration::from_secs(u64::from(LEASE));
    advance_only(&mut w, T, lease - Duration::from_secs(1));
    assert!(w.idle("1002"), "nothing before the lease lapses");

    advance_only(&mut w, T, Duration::from_secs(1));
    assert_eq!(w.state(T, "1002"), "ready");
    let bye = w.take("1002");
    assert_eq!(bye.method(), Some(Method::Bye));
    assert_eq!(
        bye.request_uri().unwrap().as_str(),
        format!("sip:1002@{}", terminal("1002")),
        "the callee's Contact"
    );
    assert_eq!(bye.vias().count(), 1, "T's own request");
    let via = bye.top_via();
    assert_eq!(via.host(), "127.0.0.2");
    assert!(via.branch().unwrap().starts_with("z9hG4bKsb0xb"));
    assert_eq!(bye.routes().count(), 0, "straight to the phone");
    assert_eq!(bye.max_forwards(), Some(70));
    assert_eq!(
        header(&bye, HeaderName::From),
        header(&ok, HeaderName::From)
    );
    assert_eq!(header(&bye, HeaderName::To), header(&ok, HeaderName::To));
    assert_eq!(
        (bye.from().tag(), bye.to().tag()),
        (Some("f1001"), Some("callee"))
    );
    assert_eq!(bye.call_id(), "c1");
    assert_eq!(bye.cseq().seq, super::hangup::BYE_CSEQ);
    assert_eq!(bye.cseq().method, Method::Bye);
    assert_eq!(bye.content_length(), Some(0));
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 0);
    assert_eq!(w.nodes[T].proxy.metrics().sessions_bye_sent, 1);

    // Over UDP it is retransmitted until answered.
    advance_only(&mut w, T, Duration::from_millis(600));
    let again = w.take("1002");
    assert_eq!(again.top_via().branch(), bye.top_via().branch());
    w.send_from(T, "1002", &answer(&bye, 200));
    advance_only(&mut w, T, Duration::from_secs(40));
    assert!(w.idle("1002"), "answered: not retransmitted");
    assert_eq!(w.nodes[T].proxy.own_byes_open(), 0);
    assert_eq!(w.nodes[T].proxy.metrics().sessions_bye_sent, 1);
    assert_eq!(w.nodes[T].proxy.metrics().sessions_bye_failed, 0);
}

/// S vanishes while the hosted agent's phone still rings (no answer yet,
/// so no dialog to hang up): when the lease lapses, T cancels the INVITE
/// it forwarded under the grant, so the phone stops ringing for a call
/// nobody can take, instead of ringing on until timer C (and, picked up,
/// putting an agent that is `ready` again into a call with no caller).
#[test]
fn a_lapsed_lease_cancels_the_ringing_hosted_agents_phone() {
    let mut w = World::new();
    let inv = ringing_call(&mut w);
    w.link_up = false; // S is gone: no renewals, no CANCEL, no unhost.
    let lease = Duration::from_secs(u64::from(LEASE));
    advance_only(&mut w, T, lease - Duration::from_secs(1));
    assert!(w.idle("1002"), "nothing before the lease lapses");

    advance_only(&mut w, T, Duration::from_secs(1));
    assert_eq!(w.state(T, "1002"), "ready");
    let cancel = w.take("1002");
    assert_eq!(cancel.method(), Some(Method::Cancel));
    assert_eq!(cancel.call_id(), "c1");
    assert_eq!(cancel.top_via().branch(), inv.top_via().branch());
    w.send_from(T, "1002", &answer(&cancel, 200));
    w.send_from(T, "1002", &answer(&inv, 487));
    let ack = w.take("1002");
    assert_eq!(ack.method(), Some(Method::Ack), "T acknowledges the 487");
    advance_only(&mut w, T, Duration::from_secs(40));
    assert!(w.idle("1002"), "the branch is over");
}

/// The same when S comes back as a new run while the phone rings: its
/// Hello ends the old run's grant at once, and the INVITE is cancelled.
#[test]
fn a_restarted_s_gets_the_ringing_hosted_agents_phone_cancelled_by_t() {
    let mut w = World::new();
    let inv = ringing_call(&mut w);
    w.link_up = false; // The old run of S is gone.
    let mut out = Output::default();
    w.nodes[T]
        .proxy
        .peer_restarted(w.now, "blade-1", 2, &mut out);
    w.run(T, out);
    assert_eq!(w.state(T, "1002"), "ready");
    let cancel = w.take("1002");
    assert_eq!(cancel.method(), Some(Method::Cancel));
    assert_eq!(cancel.top_via().branch(), inv.top_via().branch());
}

/// S is killed and comes back as a new run, long before the lease would
/// lapse: its reconnection alone frees nothing, but its Hello naming a
/// new run makes T end the grant of the run before at once, as a lapse
/// would: the hosted agent's phone gets T's BYE, the agent is ready, and
/// the ending is counted as a restart.
#[test]
fn a_restarted_s_gets_the_hosted_agents_phone_hung_up_by_t_at_once() {
    use crate::cluster::hosting::Ending;
    let mut w = World::new();
    acked_call(&mut w);
    w.link_up = false; // The old run of S is gone.
    let mut out = Output::default();
    w.nodes[T]
        .proxy
        .peer_state(w.now, "blade-1", None, &mut out);
    w.nodes[T]
        .proxy
        .peer_state(w.now, "blade-1", Some(2), &mut out);
    w.run(T, out);
    assert_eq!(w.state(T, "1002"), "hosted", "a reconnection frees nothing");
    assert!(w.idle("1002"));

    let mut out = Output::default();
    w.nodes[T]
        .proxy
        .peer_restarted(w.now, "blade-1", 2, &mut out);
    w.run(T, out);
    assert_eq!(w.state(T, "1002"), "ready");
    let bye = w.take("1002");
    assert_eq!(bye.method(), Some(Method::Bye));
    assert_eq!(bye.call_id(), "c1");
    assert_eq!(
        (bye.from().tag(), bye.to().tag()),
        (Some("f1001"), Some("callee"))
    );
    assert_eq!(bye.cseq().seq, super::hangup::BYE_CSEQ);
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 0);
    let m = w.nodes[T].proxy.metrics();
    assert_eq!(m.sessions_bye_sent, 1);
    assert_eq!(m.hosting_released[Ending::SourceRestarted.index()], 1);
    assert_eq!(m.hosting_released[Ending::Lapsed.index()], 0);
    w.send_from(T, "1002", &answer(&bye, 200));
    advance_only(&mut w, T, Duration::from_secs(u64::from(LEASE) + 1));
    assert!(w.idle("1002"), "answered, and nothing left to lapse");
    assert_eq!(w.nodes[T].proxy.metrics().sessions_bye_sent, 1);
}

/// Tells blade `node` that its link to the other went down (`None`) or
/// came up over connection `link`.
fn link_news(w: &mut World, node: usize, link: Option<u64>) {
    let peer = w.nodes[World::other(node)].id.clone();
    let mut out = Output::default();
    w.nodes[node].proxy.peer_state(w.now, &peer, link, &mut out);
    w.run(node, out);
}

/// How many link messages named `name` blade `from` sent.
fn sent_on_link(w: &World, from: usize, name: &str) -> usize {
    let id = &w.nodes[from].id;
    w.link_log
        .iter()
        .filter(|(f, n)| f == id && *n == name)
        .count()
}

/// The link flaps mid-call and S sees it drop (same run: no restart): S
/// ends the session, hangs up its caller, and its unhost is lost with
/// the link. On the new connection T asks S about the grant, S disowns
/// it, and T frees B at once, far from the lease: B's phone gets T's BYE
/// as on a lapse, B is ready, and a new call to B goes through.
#[test]
fn a_flap_s_saw_frees_the_hosted_agent_on_t_when_the_link_is_back() {
    use crate::cluster::hosting::Ending;
    let mut w = World::new();
    let ok = acked_call(&mut w);

    w.link_up = false;
    link_news(&mut w, S, None);
    link_news(&mut w, T, None);
    assert!(w.snapshot(S).sessions.is_empty());
    let bye = w.take("1001");
    assert_bye_to_caller(&bye, &ok);
    w.send_from(S, "1001", &answer(&bye, 200));
    assert_eq!(w.state(T, "1002"), "hosted", "the unhost was lost");

    w.advance(Duration::from_secs(2));
    w.link_up = true;
    link_news(&mut w, S, Some(2));
    link_news(&mut w, T, Some(2));
    assert_eq!(sent_on_link(&w, T, "Confirm"), 1);
    assert_eq!(sent_on_link(&w, S, "Confirmed"), 1);
    assert_eq!(w.state(T, "1002"), "ready", "at once, not at the lease");
    let bye = w.take("1002");
    assert_eq!(bye.method(), Some(Method::Bye));
    assert_eq!(bye.call_id(), "c1");
    assert_eq!(
        (bye.from().tag(), bye.to().tag()),
        (Some("f1001"), Some("callee"))
    );
    assert_eq!(bye.vias().count(), 1, "T's own request");
    assert_eq!(bye.top_via().host(), "127.0.0.2");
    assert_eq!(bye.cseq().seq, super::hangup::BYE_CSEQ);
    w.send_from(T, "1002", &answer(&bye, 200));
    let m = w.nodes[T].proxy.metrics();
    assert_eq!(m.hosting_released[Ending::SourceDisowned.index()], 1);
    assert_eq!(m.hosting_released[Ending::Lapsed.index()], 0);
    assert_eq!(m.sessions_bye_sent, 1);
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 0);

    // A new call to B is hosted and answered.
    w.send_from(S, "1001", &invite("1001", "1002", "c2"));
    assert_eq!(w.take("1001").status(), Some(100));
    let inv = w.take("1002");
    assert_eq!(inv.method(), Some(Method::Invite));
    w.send_from(T, "1002", &answer(&inv, 200));
    assert_eq!(w.take_final("1001").status(), Some(200));
    assert_eq!(w.state(T, "1002"), "hosted");
    // Nothing more is asked, and nothing lapses later.
    w.advance(Duration::from_secs(u64::from(LEASE) + 1));
    assert_eq!(w.state(T, "1002"), "hosted", "the new call renews");
    assert_eq!(sent_on_link(&w, T, "Confirm"), 1);
    assert!(w.idle("1002"));
}

/// The link flaps but S does not see it drop: only T's connection moved
/// on (S's old one was replaced, which S is not told as a loss). T asks
/// about the grant, S holds it, and the call goes on: B stays hosted, no
/// phone is hung up, the renewals go on over the new connection, and the
/// call ends normally.
#[test]
fn a_flap_s_did_not_see_leaves_the_call_and_its_hosting_alone() {
    use crate::cluster::hosting::Ending;
    let mut w = World::new();
    let ok = acked_call(&mut w);

    link_news(&mut w, T, None);
    link_news(&mut w, T, Some(2));
    assert_eq!(sent_on_link(&w, T, "Confirm"), 1);
    assert_eq!(sent_on_link(&w, S, "Confirmed"), 1);
    assert_eq!(w.state(T, "1002"), "hosted");
    assert_eq!(w.snapshot(S).sessions.len(), 1);
    assert!(w.idle("1001") && w.idle("1002"), "nobody hung up");
    // The same news again asks nothing.
    link_news(&mut w, T, Some(2));
    assert_eq!(sent_on_link(&w, T, "Confirm"), 1);

    w.advance(Duration::from_secs(u64::from(LEASE) * 2));
    assert_eq!(w.state(T, "1002"), "hosted", "renewed all along");
    assert!(w.idle("1001") && w.idle("1002"));
    let released: u64 = w.nodes[T].proxy.metrics().hosting_released.iter().sum();
    assert_eq!(released, 0);

    w.send_from(S, "1001", &in_dialog("BYE", "1001", &ok, 2));
    let bye = w.take("1002");
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take_final("1001").status(), Some(200));
    assert_eq!(w.state(T, "1002"), "ready");
    let m = w.nodes[T].proxy.metrics();
    assert_eq!(m.hosting_released[Ending::Unhosted.index()], 1);
    assert_eq!(m.sessions_bye_sent, 0);
}

/// On a blade of several cores, a confirmation goes to the core that
/// asked for the grant (named by the host request's id in its top bits),
/// not the one the agent's extension hashes to: a join leg's hosting
/// lives on its session's core. Its answer goes back by its own id.
#[test]
fn a_confirmation_goes_to_the_core_that_asked_for_the_grant() {
    let cores = 4;
    let ext = "1002";
    let by_ext = super::route::shard_of(ext.as_bytes(), cores);
    let asker = (by_ext + 1) % cores;
    let confirm = LinkMessage::Confirm {
        request_id: 2 << 48 | 9,
        grant: (asker as u64) << 48 | 1,
        token: crate::cluster::codec::Token([1; 16]),
        extension: ext.into(),
        call_id: "leg".into(),
    };
    assert_eq!(super::cross::request_core(&confirm, cores), Some(asker));
    let answer = LinkMessage::Confirmed {
        request_id: 2 << 48 | 9,
        held: true,
    };
    assert_eq!(super::cross::request_core(&answer, cores), Some(2));
    // An id naming no core of this blade goes to the last one.
    let confirm = LinkMessage::Confirm {
        request_id: 1,
        grant: 9 << 48,
        token: crate::cluster::codec::Token([1; 16]),
        extension: ext.into(),
        call_id: "leg".into(),
    };
    assert_eq!(super::cross::request_core(&confirm, cores), Some(3));
}

/// A hosted call that ends normally leaves T nothing to hang up: its
/// record goes with the unhost, or with the BYE that passes T when the
/// unhost is lost and the lease lapses after all.
#[test]
fn a_hosted_call_ended_normally_gets_no_bye_from_t() {
    let mut w = World::new();
    let ok = acked_call(&mut w);
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 1);
    w.send_from(S, "1001", &in_dialog("BYE", "1001", &ok, 2));
    let bye = w.take("1002");
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take_final("1001").status(), Some(200));
    assert_eq!(w.state(T, "1002"), "ready", "unhosted");
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 0);
    w.advance(Duration::from_secs(u64::from(LEASE) * 2));
    assert!(w.idle("1002"));

    // A second call whose unhost is lost: the BYE that passed T ended it.
    w.send_from(S, "1001", &invite("1001", "1002", "c2"));
    assert_eq!(w.take("1001").status(), Some(100));
    let inv = w.take("1002");
    w.send_from(T, "1002", &answer(&inv, 200));
    let ok = w.take_final("1001");
    assert_eq!(ok.status(), Some(200));
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    assert_eq!(w.take("1002").method(), Some(Method::Ack));
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 1);
    w.link_up = false;
    w.send_from(S, "1001", &in_dialog("BYE", "1001", &ok, 2));
    let bye = w.take("1002");
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 0);
    advance_only(&mut w, T, Duration::from_secs(u64::from(LEASE) + 1));
    assert_eq!(w.state(T, "1002"), "ready", "the lease lapsed");
    assert!(w.idle("1002"), "no BYE for a call already over");
    assert_eq!(w.nodes[T].proxy.metrics().sessions_bye_sent, 0);
}

#[test]
fn renewals_keep_a_long_call_hosted() {
    let mut w = World::new();
    let ok = answered_call(&mut w);
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    w.advance(Duration::from_secs(u64::from(LEASE) * 4));
    assert_eq!(w.state(T, "1002"), "hosted", "renewed all along");
    let renewals = w.link_log.iter().filter(|(_, n)| *n == "RenewAck").count();
    assert!(
        renewals >= 9,
        "a renewal every third of the lease: {renewals}"
    );
}

/// The link to T goes down mid-call: S ends the session and hangs the
/// call up on the caller's phone with a BYE of its own; the callee, whose
/// path runs through the lost blade, gets none from S.
#[test]
fn losing_the_link_to_t_ends_the_session_on_s() {
    let mut w = World::new();
    let ok = acked_call(&mut w);
    let mut out = Output::default();
    w.nodes[S]
        .proxy
        .peer_state(w.now, "blade-2", None, &mut out);
    w.run(S, out);
    assert!(w.snapshot(S).sessions.is_empty());
    assert_eq!(w.state(S, "1001"), "ready");

    let bye = w.take("1001");
    assert_eq!(bye.method(), Some(Method::Bye));
    assert_bye_to_caller(&bye, &ok);
    assert!(w.idle("1002"), "nothing goes through the lost blade");
    w.send_from(S, "1001", &answer(&bye, 200));
    w.advance(Duration::from_secs(1));
    assert!(w.idle("1001"), "answered: not retransmitted");
    assert_eq!(w.nodes[S].proxy.metrics().sessions_bye_sent, 1);
    assert_eq!(w.nodes[S].proxy.metrics().sessions_bye_failed, 0);
}

/// A hosting lost while the link is up (the renewals did not get
/// through, so the lease ran out): T is still reachable, so the callee is
/// hung up on through it too.
#[test]
fn a_hosting_lost_with_the_link_up_hangs_up_both_phones() {
    let mut w = World::new();
    let ok = acked_call(&mut w);
    w.link_up = false; // Link messages are lost; SIP still flows.
    w.advance(Duration::from_secs(u64::from(LEASE)));
    assert!(w.snapshot(S).sessions.is_empty());
    assert_bye_to_caller(&w.take("1001"), &ok);
    assert_bye_to_callee(&w.take("1002"), &ok);
}

/// 1001 on S calls 1002 on T, whose phone rings: the INVITE as the
/// callee got it.
fn ringing_call(w: &mut World) -> Message {
    w.register(S, "1001");
    w.register(T, "1002");
    w.send_from(S, "1001", &invite("1001", "1002", "c1"));
    assert_eq!(w.take("1001").status(), Some(100));
    let inv = w.take("1002");
    w.send_from(T, "1002", &answer(&inv, 180));
    assert_eq!(w.take_final("1001").status(), Some(180));
    inv
}

/// T is lost (killed) while the callee's phone rings: S ends the session
/// and frees the caller, and the caller's INVITE gets its final answer
/// then (503, as when T cannot be reached for the grant), not only at
/// timer C, minutes later, with the caller's agent `ready` meanwhile.
#[test]
fn losing_the_link_to_t_while_it_rings_answers_the_caller() {
    let mut w = World::new();
    ringing_call(&mut w);
    let mut out = Output::default();
    w.nodes[S]
        .proxy
        .peer_state(w.now, "blade-2", None, &mut out);
    w.run(S, out);
    assert!(w.snapshot(S).sessions.is_empty());
    assert_eq!(w.state(S, "1001"), "ready");
    let answer = w.take("1001");
    assert_eq!(answer.status(), Some(503));
    assert_eq!(answer.call_id(), "c1");
    assert_eq!(w.nodes[S].proxy.metrics().cross_blade.failed, 1);
}

/// A caller that cancelled a ringing call whose 487 never comes (T lost
/// before it answered the CANCEL) gets its 487 when the hosting is lost,
/// and the call counts as cancelled.
#[test]
fn losing_the_link_to_t_after_a_cancel_answers_the_caller_487() {
    let mut w = World::new();
    ringing_call(&mut w);
    w.link_up = false;
    // The caller cancels; T is gone and never answers.
    let mut cancel = bytes::BytesMut::new();
    Message::parse(Bytes::from(invite("1001", "1002", "c1")))
        .unwrap()
        .cancel_for(&mut cancel);
    let mut out = Output::default();
    w.nodes[S].proxy.handle_datagram(
        w.now,
        Peer::udp(terminal("1001")),
        cancel.freeze(),
        &mut out,
    );
    // Only S runs: nothing reaches T any more.
    out.transmits.retain(|t| t.to.addr != w.nodes[T].sip);
    w.run(S, out);
    assert_eq!(w.take("1001").status(), Some(200), "the CANCEL's own 200");
    let mut out = Output::default();
    w.nodes[S]
        .proxy
        .peer_state(w.now, "blade-2", None, &mut out);
    out.transmits.retain(|t| t.to.addr != w.nodes[T].sip);
    w.run(S, out);
    assert_eq!(w.take("1001").status(), Some(487));
    let m = w.nodes[S].proxy.metrics();
    assert_eq!((m.cross_blade.cancelled, m.cross_blade.failed), (1, 0));
}

/// The same hosting lost while the link is up (the renewals did not get
/// through): T is still reachable by SIP, so the ringing phone gets S's
/// CANCEL through it, and the caller its 503.
#[test]
fn a_hosting_lost_with_the_link_up_while_it_rings_cancels_the_callee() {
    let mut w = World::new();
    let inv = ringing_call(&mut w);
    w.link_up = false; // Link messages are lost; SIP still flows.
    advance_only(&mut w, S, Duration::from_secs(u64::from(LEASE)));
    assert!(w.snapshot(S).sessions.is_empty());
    assert_eq!(w.take("1001").status(), Some(503));
    let cancel = w.take("1002");
    assert_eq!(cancel.method(), Some(Method::Cancel));
    assert_eq!(cancel.top_via().branch(), inv.top_via().branch());
}

/// Checks a BYE of S's own to the caller of the call answered by `ok`.
fn assert_bye_to_caller(bye: &Message, ok: &Message) {
    use crate::sip::HeaderName;
    let header = |m: &Message, name| String::from_utf8_lossy(m.header(name).unwrap()).into_owned();
    assert_eq!(bye.method(), Some(Method::Bye));
    assert_eq!(
        bye.request_uri().unwrap().as_str(),
        format!("sip:1001@{}", terminal("1001"))
    );
    assert_eq!(bye.vias().count(), 1, "straight from S");
    assert!(bye.top_via().branch().unwrap().starts_with("z9hG4bKsb0xb"));
    assert_eq!(bye.routes().count(), 0);
    assert_eq!(bye.max_forwards(), Some(70));
    assert_eq!(header(bye, HeaderName::From), header(ok, HeaderName::To));
    assert_eq!(header(bye, HeaderName::To), header(ok, HeaderName::From));
    assert_eq!(
        (bye.from().tag(), bye.to().tag()),
        (Some("callee"), Some("f1001"))
    );
    assert_eq!(bye.call_id(), ok.call_id());
    assert_eq!(bye.cseq().seq, super::hangup::BYE_CSEQ);
    assert_eq!(bye.cseq().method, Method::Bye);
}

/// Checks a BYE of S's own to the callee of the call answered by `ok`, as
/// T delivered it.
fn assert_bye_to_callee(bye: &Message, ok: &Message) {
    use crate::sip::HeaderName;
    let header = |m: &Message, name| String::from_utf8_lossy(m.header(name).unwrap()).into_owned();
    assert_eq!(bye.method(), Some(Method::Bye));
    assert_eq!(
        bye.request_uri().unwrap().as_str(),
        format!("sip:1002@{}", terminal("1002")),
        "the callee's Contact"
    );
    let vias: Vec<String> = bye.vias().map(|v| v.host().to_owned()).collect();
    assert_eq!(vias, ["127.0.0.2", "127.0.0.1"], "S then T");
    assert_eq!(bye.routes().count(), 0, "T popped its Route");
    assert_eq!(bye.max_forwards(), Some(69));
    assert_eq!(header(bye, HeaderName::From), header(ok, HeaderName::From));
    assert_eq!(header(bye, HeaderName::To), header(ok, HeaderName::To));
    assert_eq!(
        (bye.from().tag(), bye.to().tag()),
        (Some("f1001"), Some("callee"))
    );
    assert_eq!(bye.call_id(), ok.call_id());
    assert_eq!(bye.cseq().seq, super::hangup::BYE_CSEQ);
}

#[test]
fn a_subscribe_to_an_agent_on_t_is_relayed_without_hosting_and_record_routed() {
    let mut w = World::new();
    w.register(S, "1001");
    w.register(T, "1002");
    let t = terminal("1001");
    let subscribe = format!(
        "SUBSCRIBE sip:1002@cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bKsub1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:1001@cc.example>;tag=s1\r\nTo: <sip:1002@cc.example>\r\n\
         Call-ID: sub1\r\nCSeq: 1 SUBSCRIBE\r\nEvent: dialog\r\nExpires: 600\r\n\
         Contact: <sip:1001@{t}>\r\nContent-Length: 0\r\n\r\n"
    );
    w.send_from(S, "1001", &subscribe);
    let relayed = w.take("1002");
    assert_eq!(relayed.method(), Some(Method::Subscribe));
    assert_eq!(
        relayed.record_routes().count(),
        2,
        "S and T are in the dialog"
    );
    let names: Vec<&str> = w.link_log.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        names,
        ["Announce", "Announce", "RelayRequest", "RelayGranted"]
    );
    assert_eq!(w.state(T, "1002"), "ready", "a subscription hosts nobody");
    assert_eq!(w.state(S, "1001"), "ready");
    w.send_from(T, "1002", &answer(&relayed, 200));
    assert_eq!(w.take_final("1001").status(), Some(200));
    assert!(w.snapshot(S).sessions.is_empty());
}

/// An INVITE from `from` to `to` that joins the dialog `join` (RFC 3911).
fn join_invite(from: &str, to: &str, call_id: &str, join: &str) -> String {
    invite(from, to, call_id).replacen("Contact:", &format!("Join: {join}\r\nContact:"), 1)
}

fn session_of(w: &World, node: usize, call_id: &str) -> SessionStatus {
    w.snapshot(node)
        .sessions
        .into_iter()
        .find(|s| s.call_id == call_id)
        .unwrap_or_else(|| panic!("no session {call_id} on node {node}"))
}

/// 1001 on S calls 1003 on S, answered: a local call.
fn answered_local_call(w: &mut World) -> Message {
    answered_local_call_seen_by_both(w).1
}

/// The same: the INVITE as 1003 got it, and the 200 as 1001 got it.
fn answered_local_call_seen_by_both(w: &mut World) -> (Message, Message) {
    w.register(S, "1001");
    w.register(S, "1003");
    w.send_from(S, "1001", &invite("1001", "1003", "c1"));
    let inv = w.take_final("1003");
    w.send_from(S, "1003", &answer(&inv, 200));
    let ok = w.take_final("1001");
    assert_eq!(ok.status(), Some(200));
    (inv, ok)
}

#[test]
fn a_join_adds_the_joiner_to_a_local_session_until_its_leg_ends() {
    let mut w = World::new();
    let ok = answered_local_call(&mut w);
    w.register(S, "1004");
    // The Join names the dialog from 1003's side: tags in either order.
    // An `early-only` is no Join parameter (RFC 3911 §7; a Replaces flag):
    // a generic one, which changes nothing.
    w.send_from(
        S,
        "1004",
        &join_invite(
            "1004",
            "1003",
            "j1",
            "c1;from-tag=callee;to-tag=f1001;early-only",
        ),
    );
    let join = w.take_final("1003");
    assert_eq!(join.method(), Some(Method::Invite));
    assert!(join.header_named("Join").is_some(), "the Join goes on");
    assert_eq!(join.record_routes().count(), 1);
    assert_eq!(w.state(S, "1004"), "in_call");
    let session = session_of(&w, S, "c1");
    assert_eq!(session.agents, ["1001", "1003", "1004"]);
    assert!(session.hosted.is_empty());
    assert_eq!(w.snapshot(S).sessions.len(), 1, "the leg is not a session");
    assert_eq!(w.nodes[S].proxy.metrics().joins, 0, "counted once answered");
    w.send_from(S, "1003", &answer(&join, 200));
    let join_ok = w.take_final("1004");
    assert_eq!(join_ok.status(), Some(200));
    assert_eq!(w.nodes[S].proxy.metrics().joins, 1);

    // The caller hangs up: 1003 stays, in the join leg.
    w.send_from(S, "1001", &in_dialog("BYE", "1001", &ok, 2));
    let bye = w.take("1003");
    w.send_from(S, "1003", &answer(&bye, 200));
    assert_eq!(w.take("1001").status(), Some(200));
    assert_eq!(w.state(S, "1001"), "ready");
    assert_eq!(w.state(S, "1003"), "in_call");
    assert_eq!(session_of(&w, S, "c1").agents, ["1003", "1004"]);
    // The original dialog is over: it can no longer be joined.
    w.register(S, "1002");
    w.send_from(
        S,
        "1002",
        &join_invite("1002", "1003", "j2", "c1;from-tag=callee;to-tag=f1001"),
    );
    assert_eq!(w.take_final("1002").status(), Some(481));

    // The joiner hangs up: the session is over and everyone is ready.
    // (CSeq 3: the test's branches derive from it, and 2 was the caller's.)
    w.send_from(S, "1004", &in_dialog("BYE", "1004", &join_ok, 3));
    let bye = w.take("1003");
    w.send_from(S, "1003", &answer(&bye, 200));
    assert_eq!(w.take("1004").status(), Some(200));
    for ext in ["1001", "1003", "1004"] {
        assert_eq!(w.state(S, ext), "ready", "{ext}");
    }
    assert!(w.snapshot(S).sessions.is_empty());
}

#[test]
fn a_join_that_names_no_live_dialog_is_481_and_a_malformed_one_400() {
    let mut w = World::new();
    answered_local_call(&mut w);
    w.register(S, "1004");
    for (i, (join, status)) in [
        ("nope;from-tag=callee;to-tag=f1001", 481),
        ("c1;from-tag=callee;to-tag=wrong", 481),
        ("c1;to-tag=f1001", 400),
        // Two Join headers (RFC 3911 allows one).
        (
            "c1;from-tag=callee;to-tag=f1001\r\nJoin: c1;from-tag=callee;to-tag=f1001",
            400,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let call_id = format!("bad{i}");
        w.send_from(S, "1004", &join_invite("1004", "1003", &call_id, join));
        assert_eq!(w.take_final("1004").status(), Some(status), "{join}");
    }
    // A party of another dialog cannot be joined through this one.
    w.register(S, "1002");
    w.send_from(
        S,
        "1004",
        &join_invite("1004", "1002", "bad9", "c1;from-tag=callee;to-tag=f1001"),
    );
    assert_eq!(w.take_final("1004").status(), Some(481));
    assert!(w.idle("1003") && w.idle("1002"));
    assert_eq!(w.state(S, "1004"), "ready");
    assert_eq!(session_of(&w, S, "c1").agents, ["1001", "1003"]);
}

/// The supervisor sits on T with the agent it monitors, whose call S
/// hosts: T hands the Join to S, S hosts the supervisor from T and sends
/// the join leg back through T to the agent.
#[test]
fn a_join_for_a_hosted_agent_goes_to_the_hosting_blade_which_hosts_the_joiner() {
    let mut w = World::new();
    let ok = answered_call(&mut w);
    w.register(T, "1004");
    w.link_log.clear();
    w.send_from(
        T,
        "1004",
        &join_invite("1004", "1002", "j1", "c1;from-tag=callee;to-tag=f1001"),
    );
    let join = w.take_final("1002");
    assert_eq!(join.method(), Some(Method::Invite));
    assert_eq!(join.call_id(), "j1");
    assert_eq!(
        join.request_uri().unwrap().as_str(),
        format!("sip:1002@{}", terminal("1002"))
    );
    let names: Vec<&str> = w.link_log.iter().map(|(_, n)| *n).collect();
    assert_eq!(names, ["HostRequest", "HostGranted"], "S hosted the joiner");
    assert_eq!(w.state(T, "1004"), "hosted");
    assert_eq!(w.state(T, "1002"), "hosted");
    let session = session_of(&w, S, "c1");
    assert_eq!(session.agents, ["1001", "1002", "1004"]);
    assert_eq!(session.hosted, ["1002", "1004"]);

    w.send_from(T, "1002", &answer(&join, 200));
    let join_ok = w.take_final("1004");
    assert_eq!(join_ok.status(), Some(200));
    assert_eq!(
        w.nodes[T].proxy.hosted_dialogs_kept(),
        3,
        "c1 and j1 for 1002, j1 for the hosted joiner"
    );
    // The joiner leaves: back to ready on T; the call goes on.
    w.send_from(T, "1004", &in_dialog("BYE", "1004", &join_ok, 2));
    let bye = w.take("1002");
    assert_eq!(bye.method(), Some(Method::Bye));
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take("1004").status(), Some(200));
    assert_eq!(w.state(T, "1004"), "ready");
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 1, "c1 only");
    assert_eq!(w.state(T, "1002"), "hosted");
    assert_eq!(session_of(&w, S, "c1").hosted, ["1002"]);

    w.send_from(S, "1001", &in_dialog("BYE", "1001", &ok, 2));
    let bye = w.take("1002");
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take("1001").status(), Some(200));
    assert_eq!(w.state(T, "1002"), "ready");
    assert!(w.snapshot(S).sessions.is_empty());
}

/// The joiner's blade relays the Join to the blade of the call (which
/// gives leave as for a MESSAGE); that blade hosts the joiner.
#[test]
fn a_join_from_another_blade_is_relayed_and_the_sessions_blade_hosts_the_joiner() {
    let mut w = World::new();
    w.register(T, "1002");
    w.register(T, "1003");
    w.send_from(T, "1002", &invite("1002", "1003", "c1"));
    let inv = w.take_final("1003");
    w.send_from(T, "1003", &answer(&inv, 200));
    assert_eq!(w.take_final("1002").status(), Some(200));
    w.register(S, "1001");
    w.link_log.clear();

    w.send_from(
        S,
        "1001",
        &join_invite("1001", "1003", "j1", "c1;from-tag=f1002;to-tag=callee"),
    );
    let join = w.take_final("1003");
    assert_eq!(join.call_id(), "j1");
    let names: Vec<&str> = w.link_log.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        names,
        ["RelayRequest", "RelayGranted", "HostRequest", "HostGranted"]
    );
    assert_eq!(w.state(S, "1001"), "hosted");
    let session = session_of(&w, T, "c1");
    assert_eq!(session.agents, ["1002", "1003", "1001"]);
    assert_eq!(session.hosted, ["1001"]);
    assert_eq!(join.record_routes().count(), 2, "both blades record-route");

    // The join fails (the agent's phone declines it): the joiner goes back.
    w.send_from(T, "1003", &answer(&join, 603));
    assert_eq!(w.take_final("1001").status(), Some(603));
    assert_eq!(w.state(S, "1001"), "ready");
    assert_eq!(session_of(&w, T, "c1").agents, ["1002", "1003"]);
}

/// 1002 and 1003 in a call on T; 1001 of S joins it (leg `j1`), hosted
/// on T, and the leg is answered: the world and the 2xx 1001 got.
fn answered_hosted_join() -> (World, Message) {
    let mut w = World::new();
    w.register(T, "1002");
    w.register(T, "1003");
    w.send_from(T, "1002", &invite("1002", "1003", "c1"));
    let inv = w.take_final("1003");
    w.send_from(T, "1003", &answer(&inv, 200));
    assert_eq!(w.take_final("1002").status(), Some(200));
    w.register(S, "1001");
    w.send_from(
        S,
        "1001",
        &join_invite("1001", "1003", "j1", "c1;from-tag=f1002;to-tag=callee"),
    );
    let join = w.take_final("1003");
    w.send_from(T, "1003", &answer(&join, 200));
    let join_ok = w.take_final("1001");
    (w, join_ok)
}

/// The session's blade (T) hosts a joiner of S's; T vanishes mid-leg.
/// When the joiner's grant lapses on S, S hangs the leg up on the
/// joiner's phone, as it does for a hosted callee: from the leg's 2xx S
/// kept the joiner's side of the dialog, though the joiner is its caller.
#[test]
fn a_lapsed_lease_hangs_up_a_hosted_joiners_leg_from_its_blade() {
    let (mut w, join_ok) = answered_hosted_join();
    assert_eq!(join_ok.status(), Some(200));
    assert_eq!(w.state(S, "1001"), "hosted");
    assert_eq!(w.nodes[S].proxy.hosted_dialogs_kept(), 1, "the leg, on S");

    // T is gone: no renewals; S's grant of 1001 lapses.
    w.link_up = false;
    advance_only(&mut w, S, Duration::from_secs(u64::from(LEASE) + 1));
    assert_eq!(w.state(S, "1001"), "ready");
    let bye = w.take("1001");
    assert_eq!((bye.method(), bye.call_id()), (Some(Method::Bye), "j1"));
    assert_eq!(
        bye.request_uri().unwrap().as_str(),
        format!("sip:1001@{}", terminal("1001")),
        "the joiner's Contact"
    );
    assert_eq!(bye.from().tag(), Some("callee"), "as from the joined party");
    assert_eq!(bye.to().tag(), Some("f1001"));
    assert_eq!(bye.routes().count(), 0);
    assert_eq!(bye.vias().count(), 1, "S's own request");
    assert_eq!(bye.cseq().seq, hangup::BYE_CSEQ);
    while !w.idle("1001") {
        let again = w.take("1001");
        assert_eq!((again.call_id(), again.cseq()), (bye.call_id(), bye.cseq()));
    }
    w.send_from(S, "1001", &answer(&bye, 200));
    advance_only(&mut w, S, Duration::from_secs(2));
    assert!(w.idle("1001"), "answered: not retransmitted");
    assert_eq!(w.nodes[S].proxy.metrics().sessions_bye_sent, 1);
    assert_eq!(w.nodes[S].proxy.metrics().sessions_bye_failed, 0);
    assert_eq!(w.nodes[S].proxy.hosted_dialogs_kept(), 0);
}

/// The same leg ended by the joiner's BYE: S's record of it goes with the
/// BYE (and the unhost), and nothing is sent at a later lapse.
#[test]
fn a_hosted_joiners_leg_ended_normally_leaves_no_record_on_its_blade() {
    let (mut w, join_ok) = answered_hosted_join();
    assert_eq!(w.nodes[S].proxy.hosted_dialogs_kept(), 1);
    w.send_from(S, "1001", &in_dialog("BYE", "1001", &join_ok, 2));
    let bye = w.take("1003");
    assert_eq!(bye.call_id(), "j1");
    w.send_from(T, "1003", &answer(&bye, 200));
    assert_eq!(w.take("1001").status(), Some(200));
    assert_eq!(w.state(S, "1001"), "ready");
    assert_eq!(w.nodes[S].proxy.hosted_dialogs_kept(), 0);
    w.advance(Duration::from_secs(u64::from(LEASE) + 1));
    assert!(w.idle("1001"));
    assert_eq!(w.nodes[S].proxy.metrics().sessions_bye_sent, 0);
}

/// A session whose BYE never comes ends after `max_call`: the hosted agent
/// goes back to its blade and both agents are ready again (SPEC §2 steps 7
/// and 8: nobody stays hosted for ever, even while S lives and renews).
/// S's own BYE to the callee goes through T; with the phones gone it gets
/// no answer, and the hosting waits for it no longer than its timeout.
#[test]
fn a_call_that_outlives_max_call_is_ended_and_its_agent_handed_back() {
    let mut w = World::new();
    acked_call(&mut w);
    w.advance(MAX_CALL - Duration::from_secs(60));
    assert_eq!(w.state(T, "1002"), "hosted", "renewed all along");
    w.advance(Duration::from_secs(60));
    assert_eq!(w.state(S, "1001"), "ready");
    assert!(w.snapshot(S).sessions.is_empty());
    assert_eq!(w.nodes[S].proxy.metrics().sessions_expired, 1);
    let timeout = TimerConfig::default().timeout();
    w.advance(timeout - Duration::from_millis(1));
    assert_eq!(w.state(T, "1002"), "hosted", "S's BYE still on its way");
    w.advance(Duration::from_millis(1));
    assert_eq!(w.state(T, "1002"), "ready");
    assert!(!s_hosts(&w, "1002"));
}

/// The phones of a cross-blade call that outlives `max_call` are hung up
/// by S: the caller directly, the callee through T (the route set past S),
/// which delivers it as it would the caller's own BYE.
#[test]
fn a_cross_blade_call_that_outlives_max_call_is_hung_up_on_both_phones() {
    let mut w = World::new();
    let ok = acked_call(&mut w);
    let since = w.link_log.len();
    w.advance(MAX_CALL);
    assert_eq!(w.state(S, "1001"), "ready");
    let to_caller = w.take("1001");
    let to_callee = w.take("1002");
    assert_bye_to_caller(&to_caller, &ok);
    assert_bye_to_callee(&to_callee, &ok);
    assert!(w.idle("1001") && w.idle("1002"));
    // As for a BYE S relays: no unhost overtakes S's own BYE to 1002.
    assert_eq!(w.state(T, "1002"), "hosted");
    assert_eq!(unhosts_since(&w, since), 0);

    // Both answer: nothing is retransmitted, nothing reopens; the callee's
    // answer, back through T, releases the hosting.
    w.send_from(S, "1001", &answer(&to_caller, 200));
    w.send_from(T, "1002", &answer(&to_callee, 200));
    assert_eq!(unhosts_since(&w, since), 1);
    assert_eq!(w.state(T, "1002"), "ready");
    assert!(w.idle("1001") && w.idle("1002"), "the answers end at S");
    w.advance(Duration::from_secs(40));
    assert!(w.idle("1001") && w.idle("1002"));
    let m = w.nodes[S].proxy.metrics();
    assert_eq!((m.sessions_bye_sent, m.sessions_bye_failed), (2, 0));
    assert_eq!(w.nodes[S].proxy.own_byes_open(), 0);
    assert!(w.snapshot(S).sessions.is_empty());
}

#[test]
fn an_expired_session_ends_its_join_legs_too() {
    let mut w = World::new();
    let ok = answered_local_call(&mut w);
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    assert_eq!(w.take("1003").method(), Some(Method::Ack));
    w.register(S, "1004");
    w.send_from(
        S,
        "1004",
        &join_invite("1004", "1003", "j1", "c1;from-tag=callee;to-tag=f1001"),
    );
    let join = w.take_final("1003");
    w.send_from(S, "1003", &answer(&join, 200));
    let join_ok = w.take_final("1004");
    assert_eq!(join_ok.status(), Some(200));
    w.send_from(S, "1004", &in_dialog("ACK", "1004", &join_ok, 1));
    assert_eq!(w.take("1003").method(), Some(Method::Ack));
    w.advance(MAX_CALL);
    for ext in ["1001", "1003", "1004"] {
        assert_eq!(w.state(S, ext), "ready", "{ext}");
    }
    assert!(w.snapshot(S).sessions.is_empty());
    assert!(w.nodes[S].proxy.sessions.is_empty(), "the leg too");

    // Each answered dialog is hung up on both its phones: the leg's
    // (1004, 1003) first, then the call's (1001, 1003).
    let mut byes = |ext: &str| {
        let mut got = Vec::new();
        while !w.idle(ext) {
            let m = w.take(ext);
            assert_eq!(m.method(), Some(Method::Bye), "{ext}");
            got.push((m.call_id().to_owned(), m.to().tag().unwrap().to_owned()));
        }
        got
    };
    assert_eq!(byes("1004"), [("j1".into(), "f1004".into())]);
    assert_eq!(
        byes("1003"),
        [
            ("j1".into(), "callee".into()),
            ("c1".into(), "callee".into())
        ]
    );
    assert_eq!(byes("1001"), [("c1".to_owned(), "f1001".to_owned())]);
    assert_eq!(w.nodes[S].proxy.metrics().sessions_bye_sent, 4);
}

/// An INVITE from `from` to `to` that replaces the dialog `replaces`
/// (RFC 3891): attended transfer, call pickup.
fn replaces_invite(from: &str, to: &str, call_id: &str, replaces: &str) -> String {
    invite(from, to, call_id).replacen("Contact:", &format!("Replaces: {replaces}\r\nContact:"), 1)
}

/// An in-dialog request from the callee of `inv` (as the callee received
/// it, answered with To tag `callee`) to its caller, along the route set
/// the Record-Routes gave it.
fn from_callee(method: &str, callee: &str, inv: &Message, cseq: u32) -> String {
    let t = terminal(callee);
    let target = inv.contacts().next().unwrap().uri().as_str().to_owned();
    let routes: Vec<String> = inv
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    let header = |name| String::from_utf8_lossy(inv.header(name).unwrap()).into_owned();
    format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bKc{method}{cseq}{}\r\n\
         Route: {}\r\nMax-Forwards: 70\r\nFrom: {};tag=callee\r\nTo: {}\r\nCall-ID: {}\r\n\
         CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        inv.call_id(),
        routes.join(", "),
        header(crate::sip::HeaderName::To),
        header(crate::sip::HeaderName::From),
        inv.call_id(),
    )
}

/// Attended transfer on one blade: 1001 talks to 1003; 1002 (the transfer
/// target's side here: the one the call moves to) sends 1003 an INVITE
/// replacing that dialog. 1003's phone takes it and hangs up on 1001: 1001
/// is ready, 1002 and 1003 are in the new call.
#[test]
fn a_replaces_moves_a_local_call_to_the_newcomer() {
    let mut w = World::new();
    let (inv_c1, _) = answered_local_call_seen_by_both(&mut w);
    w.register(S, "1002");
    w.send_from(
        S,
        "1002",
        &replaces_invite("1002", "1003", "r1", "c1;to-tag=callee;from-tag=f1001"),
    );
    let rep = w.take_final("1003");
    assert_eq!(rep.method(), Some(Method::Invite), "no 486: it goes on");
    assert_eq!(rep.call_id(), "r1");
    assert!(
        rep.header_named("Replaces").is_some(),
        "the Replaces goes on"
    );
    assert_eq!(rep.record_routes().count(), 1);
    assert_eq!(w.state(S, "1002"), "in_call");
    w.send_from(S, "1003", &answer(&rep, 200));
    let rep_ok = w.take_final("1002");
    assert_eq!(rep_ok.status(), Some(200));
    assert_eq!(w.nodes[S].proxy.metrics().replaces, 1);
    assert_eq!(w.nodes[S].proxy.metrics().joins, 0);
    let sessions = w.snapshot(S).sessions;
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(session_of(&w, S, "r1").agents, ["1002", "1003"]);

    // 1003's phone ends the replaced dialog.
    w.send_from(S, "1003", &from_callee("BYE", "1003", &inv_c1, 2));
    let bye = w.take("1001");
    assert_eq!(bye.method(), Some(Method::Bye));
    assert_eq!(bye.call_id(), "c1");
    w.send_from(S, "1001", &answer(&bye, 200));
    assert_eq!(w.take("1003").status(), Some(200));
    assert_eq!(w.state(S, "1001"), "ready");
    assert_eq!(w.state(S, "1002"), "in_call");
    assert_eq!(w.state(S, "1003"), "in_call", "in the new call");
    let sessions = w.snapshot(S).sessions;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].call_id, "r1");
    assert_eq!(sessions[0].agents, ["1002", "1003"]);

    // The new call ends: everyone is ready.
    w.send_from(S, "1002", &in_dialog("BYE", "1002", &rep_ok, 2));
    let bye = w.take("1003");
    w.send_from(S, "1003", &answer(&bye, 200));
    assert_eq!(w.take("1002").status(), Some(200));
    for ext in ["1001", "1002", "1003"] {
        assert_eq!(w.state(S, ext), "ready", "{ext}");
    }
    assert!(w.snapshot(S).sessions.is_empty());
    assert!(w.nodes[S].proxy.sessions.is_empty());
}

/// A Replaces the blade cannot match to a dialog of its busy target is
/// 481 (RFC 3891 §3), as the phone would answer; `early-only` on a
/// confirmed dialog is 486. For a target in no call, the blade cannot tell
/// and the phone decides: it is routed as a call.
#[test]
fn a_replaces_naming_no_dialog_of_a_busy_target_is_481() {
    let mut w = World::new();
    answered_local_call(&mut w);
    w.register(S, "1002");
    w.register(S, "1004");
    for (i, (replaces, status)) in [
        ("nope;to-tag=callee;from-tag=f1001", 481),
        ("c1;to-tag=callee;from-tag=wrong", 481),
        ("c1;to-tag=callee;from-tag=f1001;early-only", 486),
    ]
    .into_iter()
    .enumerate()
    {
        let call_id = format!("bad{i}");
        w.send_from(
            S,
            "1002",
            &replaces_invite("1002", "1003", &call_id, replaces),
        );
        assert_eq!(w.take_final("1002").status(), Some(status), "{replaces}");
    }
    // Wrong tags through the dialog's other party too...
    w.send_from(
        S,
        "1002",
        &replaces_invite("1002", "1001", "bad8", "c1;to-tag=f1001;from-tag=other"),
    );
    assert_eq!(w.take_final("1002").status(), Some(481));
    assert!(w.idle("1003") && w.idle("1001"));
    assert_eq!(w.state(S, "1002"), "ready");
    assert_eq!(session_of(&w, S, "c1").agents, ["1001", "1003"]);
    // ...and a Replaces for 1004, who is in no call, is a call its phone
    // decides on.
    w.send_from(
        S,
        "1002",
        &replaces_invite("1002", "1004", "r9", "c1;to-tag=callee;from-tag=f1001"),
    );
    let inv = w.take_final("1004");
    assert_eq!(inv.method(), Some(Method::Invite));
    assert!(inv.header_named("Replaces").is_some());
    w.send_from(S, "1004", &answer(&inv, 481));
    assert_eq!(w.take_final("1002").status(), Some(481));
    assert_eq!(w.state(S, "1004"), "ready");
    assert_eq!(w.state(S, "1002"), "ready");
}

/// A Replaces naming an early (ringing) dialog: only its caller may have it
/// replaced (call pickup of its own ringing call), named by its own From
/// tag as the to-tag. The ringing callee did not place it: 481, its phone
/// is not rung again; the caller with its tag as the from-tag: 481 too.
#[test]
fn a_replaces_naming_an_early_dialog_the_target_did_not_place_is_481() {
    let mut w = World::new();
    w.register(S, "1001");
    w.register(S, "1003");
    w.register(S, "1002");
    w.send_from(S, "1001", &invite("1001", "1003", "c1"));
    let inv = w.take_final("1003");
    w.send_from(S, "1003", &answer(&inv, 180));
    assert_eq!(w.take_final("1001").status(), Some(180));
    for (i, (to, replaces)) in [
        // The ringing callee, by the dialog's tags as it sees them.
        ("1003", "c1;to-tag=callee;from-tag=f1001"),
        ("1003", "c1;to-tag=f1001;from-tag=callee"),
        // The caller, named by the callee's tag as its own.
        ("1001", "c1;to-tag=callee;from-tag=f1001"),
    ]
    .into_iter()
    .enumerate()
    {
        let call_id = format!("early{i}");
        w.send_from(S, "1002", &replaces_invite("1002", to, &call_id, replaces));
        assert_eq!(w.take_final("1002").status(), Some(481), "{to} {replaces}");
    }
    assert!(w.idle("1003") && w.idle("1001"));
    assert_eq!(w.state(S, "1002"), "ready");
    assert_eq!(w.nodes[S].proxy.metrics().replaces, 0);
    // The caller, named rightly, is reached (its phone checks the rest).
    w.send_from(
        S,
        "1002",
        &replaces_invite("1002", "1001", "pick", "c1;to-tag=f1001;from-tag=callee"),
    );
    let rep = w.take_final("1001");
    assert_eq!(rep.method(), Some(Method::Invite));
    assert_eq!(rep.call_id(), "pick");
}

#[test]
fn a_malformed_replaces_is_400() {
    let mut w = World::new();
    answered_local_call(&mut w);
    w.register(S, "1002");
    for (i, replaces) in [
        "c1;to-tag=callee",
        "c1 x;to-tag=callee;from-tag=f1001",
        // Two Replaces headers, or a Replaces and a Join (RFC 3891 §3).
        "c1;to-tag=callee;from-tag=f1001\r\nReplaces: c1;to-tag=callee;from-tag=f1001",
        "c1;to-tag=callee;from-tag=f1001\r\nJoin: c1;to-tag=callee;from-tag=f1001",
    ]
    .into_iter()
    .enumerate()
    {
        let call_id = format!("bad{i}");
        w.send_from(
            S,
            "1002",
            &replaces_invite("1002", "1003", &call_id, replaces),
        );
        let answer = w.take_final("1002");
        assert_eq!(answer.status(), Some(400), "{replaces}");
    }
    assert!(w.idle("1003"));
    assert_eq!(w.state(S, "1002"), "ready");
    assert_eq!(session_of(&w, S, "c1").agents, ["1001", "1003"]);
}

/// The replaced call is cross-blade: 1001 on S talks to 1002 on T, hosted
/// by S. 1003 on S replaces that dialog: S owns it, so S decides, and
/// sends the INVITE through T with the call's hosting token. 1002 stays
/// hosted, under the replaced call's grant, until the new call ends.
#[test]
fn a_replaces_of_a_cross_blade_call_rides_on_its_hosting() {
    let mut w = World::new();
    let (inv_c1, ok) = answered_call_seen_by_both(&mut w);
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    let ack = w.take("1002");
    assert_eq!(ack.method(), Some(Method::Ack));
    w.register(S, "1003");
    w.link_log.clear();
    w.send_from(
        S,
        "1003",
        &replaces_invite("1003", "1002", "r1", "c1;to-tag=callee;from-tag=f1001"),
    );
    let rep = w.take_final("1002");
    assert_eq!(rep.method(), Some(Method::Invite));
    assert_eq!(rep.call_id(), "r1");
    assert_eq!(rep.record_routes().count(), 2, "both blades record-route");
    assert!(w.link_log.is_empty(), "no new hosting: {:?}", w.link_log);
    w.send_from(T, "1002", &answer(&rep, 200));
    let rep_ok = w.take_final("1003");
    assert_eq!(rep_ok.status(), Some(200));
    w.send_from(S, "1003", &in_dialog("ACK", "1003", &rep_ok, 1));
    assert_eq!(w.take("1002").method(), Some(Method::Ack));
    let r1 = session_of(&w, S, "r1");
    assert_eq!(
        (r1.agents, r1.hosted),
        (vec!["1003".into(), "1002".into()], vec!["1002".into()])
    );

    // 1002's phone hangs up the replaced call: 1001 is ready; 1002 stays
    // hosted for the new call.
    w.send_from(T, "1002", &from_callee("BYE", "1002", &inv_c1, 2));
    let bye = w.take("1001");
    assert_eq!(bye.call_id(), "c1");
    w.send_from(S, "1001", &answer(&bye, 200));
    assert_eq!(w.take("1002").status(), Some(200));
    assert_eq!(w.state(S, "1001"), "ready");
    assert_eq!(w.state(S, "1003"), "in_call");
    assert_eq!(w.state(T, "1002"), "hosted");
    let sessions = w.snapshot(S).sessions;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].call_id, "r1");
    assert_eq!(sessions[0].hosted, ["1002"]);
    assert!(w.link_log.iter().all(|(_, n)| *n != "Unhost"));
    // The grant outlives its lease by renewals, as for any call.
    w.advance(Duration::from_secs(u64::from(LEASE) * 2));
    assert_eq!(w.state(T, "1002"), "hosted");

    // The new call ends: 1002 goes back to T, ready.
    w.send_from(S, "1003", &in_dialog("BYE", "1003", &rep_ok, 2));
    let bye = w.take("1002");
    assert_eq!(bye.call_id(), "r1");
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take("1003").status(), Some(200));
    assert_eq!(w.state(T, "1002"), "ready");
    assert_eq!(w.state(S, "1003"), "ready");
    assert!(w.snapshot(S).sessions.is_empty());
    assert!(w.nodes[S].proxy.sessions.is_empty());
}

/// The newcomer is on T with the hosted target: T hands the Replaces to S,
/// the hosting blade, which hosts the newcomer from T for the new call.
#[test]
fn a_replaces_for_a_hosted_agent_goes_to_the_hosting_blade() {
    let mut w = World::new();
    answered_call(&mut w);
    w.register(T, "1004");
    w.link_log.clear();
    w.send_from(
        T,
        "1004",
        &replaces_invite("1004", "1002", "r1", "c1;to-tag=callee;from-tag=f1001"),
    );
    let rep = w.take_final("1002");
    assert_eq!(rep.method(), Some(Method::Invite));
    assert_eq!(rep.call_id(), "r1");
    let names: Vec<&str> = w.link_log.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        names,
        ["HostRequest", "HostGranted"],
        "S hosted the newcomer"
    );
    assert_eq!(w.state(T, "1004"), "hosted");
    let r1 = session_of(&w, S, "r1");
    assert_eq!(r1.agents, ["1004", "1002"]);
    // The phone declines: the newcomer goes back; the call goes on.
    w.send_from(T, "1002", &answer(&rep, 603));
    assert_eq!(w.take_final("1004").status(), Some(603));
    assert_eq!(w.state(T, "1004"), "ready");
    assert_eq!(w.state(T, "1002"), "hosted");
    assert_eq!(session_of(&w, S, "c1").agents, ["1001", "1002"]);
}

/// The race of a Replaces (or a Join) with the end of the hosting it
/// names: 1001 hangs up the cross-blade call c1 and S releases 1002, but
/// the unhost is still on the link when 1004, on T, sends a Replaces of
/// c1 to 1002. T still sees 1002 hosted and hands the INVITE to S with
/// the grant's token; S holds that grant no more. The dialog is gone:
/// 481 (RFC 3891 §3), not 403, and 1002's phone is not rung.
#[test]
fn a_replaces_racing_the_unhost_of_the_call_it_names_is_481() {
    let mut w = World::new();
    let ok = acked_call(&mut w);
    w.register(T, "1004");
    w.link_held = Some(Vec::new());
    w.send_from(S, "1001", &in_dialog("BYE", "1001", &ok, 2));
    let bye = w.take("1002");
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take("1001").status(), Some(200));
    assert!(w.snapshot(S).sessions.is_empty());
    assert_eq!(w.state(T, "1002"), "hosted", "the unhost is on its way");

    for (i, invite) in [
        replaces_invite("1004", "1002", "r1", "c1;to-tag=callee;from-tag=f1001"),
        join_invite("1004", "1002", "j1", "c1;from-tag=callee;to-tag=f1001"),
    ]
    .iter()
    .enumerate()
    {
        w.send_from(T, "1004", invite);
        let gone = w.take_final("1004");
        assert_eq!(gone.status(), Some(481), "{i}: {gone:?}");
    }
    assert_eq!(
        w.blade_responses.iter().filter(|(n, _)| *n == S).count(),
        2,
        "S answered both: {:?}",
        w.blade_responses
    );
    assert!(w.idle("1002"), "the phone was not rung");
    assert_eq!(w.state(T, "1004"), "ready");

    w.release_link();
    assert_eq!(w.state(T, "1002"), "ready");
    assert!(w.snapshot(S).sessions.is_empty() && w.snapshot(T).sessions.is_empty());
}

/// A join leg to the hosted agent rides on the call's grant through T:
/// when the hosting is lost, the leg goes with the call. The joiner's
/// phone gets S's BYE, the joiner is ready, and no session is left
/// listing the lost agent as hosted.
#[test]
fn a_lost_hosting_ends_the_join_legs_to_the_lost_agent() {
    let mut w = World::new();
    let ok = acked_call(&mut w);
    w.register(S, "1003");
    w.send_from(
        S,
        "1003",
        &join_invite("1003", "1002", "j1", "c1;from-tag=callee;to-tag=f1001"),
    );
    let join = w.take_final("1002");
    w.send_from(T, "1002", &answer(&join, 200));
    let join_ok = w.take_final("1003");
    assert_eq!(join_ok.status(), Some(200));
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 2, "c1 and j1");
    let mut out = Output::default();
    w.nodes[S]
        .proxy
        .peer_state(w.now, "blade-2", None, &mut out);
    w.run(S, out);
    assert!(w.snapshot(S).sessions.is_empty());
    assert!(w.nodes[S].proxy.sessions.is_empty(), "the leg too");
    assert_eq!((w.state(S, "1001"), w.state(S, "1003")), ("ready", "ready"));
    let bye = w.take("1003");
    assert_eq!((bye.method(), bye.call_id()), (Some(Method::Bye), "j1"));
    assert_eq!(bye.to().tag(), Some("f1003"));
    assert_bye_to_caller(&w.take("1001"), &ok);
    assert!(w.idle("1001") && w.idle("1003") && w.idle("1002"));
    assert_eq!(w.nodes[S].proxy.metrics().sessions_bye_sent, 2);
}

/// A retransmitted 2xx keeps no second record on either blade, so the
/// expiry sends one BYE per phone; the caller's own BYE, crossing S's, is
/// relayed as any BYE and reopens nothing; at the end no transaction,
/// session, kept dialog or own BYE is left on either blade.
#[test]
fn a_retransmitted_2xx_and_a_crossing_bye_leave_nothing_behind() {
    let mut w = World::new();
    let (inv, ok) = answered_call_seen_by_both(&mut w);
    // The callee's 200 is retransmitted (its ACK is late).
    w.send_from(T, "1002", &answer(&inv, 200));
    let again = w.take_final("1001");
    assert_eq!(again.status(), Some(200));
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 1);
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    assert_eq!(w.take("1002").method(), Some(Method::Ack));
    w.send_from(T, "1002", &answer(&inv, 200));
    assert_eq!(w.take_final("1001").status(), Some(200), "relayed again");
    // The caller ACKs each 2xx (RFC 3261 §13.2.2.4).
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    assert_eq!(w.take("1002").method(), Some(Method::Ack));
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 1);
    assert_eq!(w.nodes[S].proxy.metrics().cross_blade.answered, 1);
    w.advance(MAX_CALL);
    let a = w.take("1001");
    let b = w.take("1002");
    assert_eq!(
        (a.method(), b.method()),
        (Some(Method::Bye), Some(Method::Bye))
    );
    assert!(w.idle("1001") && w.idle("1002"));
    assert_eq!(w.nodes[S].proxy.metrics().sessions_bye_sent, 2);
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 0);
    // The caller's own BYE crosses the blade's: relayed to the callee,
    // which already hung up.
    w.send_from(S, "1001", &in_dialog("BYE", "1001", &ok, 2));
    let crossing = w.take("1002");
    assert_eq!(crossing.cseq().seq, 2);
    w.send_from(T, "1002", &answer(&crossing, 481));
    assert_eq!(w.take("1001").status(), Some(481));
    w.send_from(S, "1001", &answer(&a, 200));
    w.send_from(T, "1002", &answer(&b, 200));
    w.advance(Duration::from_secs(64));
    assert!(w.idle("1001") && w.idle("1002"));
    for n in [S, T] {
        let p = &w.nodes[n].proxy;
        assert_eq!(p.own_byes_open(), 0);
        assert_eq!(p.transactions(), 0, "node {n}");
        assert!(p.sessions.is_empty());
        assert_eq!(p.hosted_dialogs_kept(), 0);
    }
    assert_eq!(w.nodes[S].proxy.metrics().sessions_bye_failed, 0);
    assert_eq!((w.state(S, "1001"), w.state(T, "1002")), ("ready", "ready"));
}

/// A call that replaced a cross-blade call rides on its grant; the
/// replaced call ended with its BYE, then S vanished: at the lease's end T
/// hangs up the replacing call only (the replaced one's record went with
/// its BYE).
#[test]
fn a_lapse_hangs_up_the_call_riding_on_the_grant_and_not_the_replaced_one() {
    let mut w = World::new();
    let (inv_c1, ok) = answered_call_seen_by_both(&mut w);
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    w.take("1002");
    w.register(S, "1003");
    w.send_from(
        S,
        "1003",
        &replaces_invite("1003", "1002", "r1", "c1;to-tag=callee;from-tag=f1001"),
    );
    let rep = w.take_final("1002");
    w.send_from(T, "1002", &answer(&rep, 200));
    let rep_ok = w.take_final("1003");
    assert_eq!(rep_ok.status(), Some(200));
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 2);
    w.send_from(T, "1002", &from_callee("BYE", "1002", &inv_c1, 2));
    let bye = w.take("1001");
    w.send_from(S, "1001", &answer(&bye, 200));
    assert_eq!(w.take("1002").status(), Some(200));
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 1);
    w.link_up = false;
    advance_only(&mut w, T, Duration::from_secs(u64::from(LEASE) + 1));
    let bye = w.take("1002");
    assert_eq!((bye.method(), bye.call_id()), (Some(Method::Bye), "r1"));
    while !w.idle("1002") {
        let again = w.take("1002");
        assert_eq!(again.as_bytes(), bye.as_bytes(), "only retransmissions");
    }
    assert_eq!(w.state(T, "1002"), "ready");
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 0);
    assert_eq!(w.nodes[T].proxy.metrics().sessions_bye_sent, 1);
}

/// 1001 on S calls 1002 on T; then 1002's phone moves to a new socket
/// and re-INVITEs from there with a new Contact (a target refresh), which
/// 1001 accepts. Returns the new socket and the caller's 200 to the call.
fn answered_call_then_callee_moves(w: &mut World) -> (SocketAddr, Message) {
    let (inv, ok) = answered_call_seen_by_both(w);
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    assert_eq!(w.take("1002").method(), Some(Method::Ack));
    let moved = addr("127.0.0.12:6102");
    let reinvite = from_callee("INVITE", "1002", &inv, 2).replacen(
        "Content-Length",
        &format!("Contact: <sip:1002@{moved}>\r\nContent-Length"),
        1,
    );
    w.process(Event::Sip {
        node: T,
        source: Peer::udp(moved),
        data: Bytes::from(reinvite),
    });
    let relayed = w.take("1001");
    assert_eq!(relayed.method(), Some(Method::Invite));
    w.send_from(S, "1001", &answer(&relayed, 200));
    let at_moved = w.inbox.get_mut(&moved).unwrap();
    let statuses: Vec<_> = at_moved.drain(..).filter_map(|m| m.status()).collect();
    assert_eq!(statuses, [100, 200], "at the new socket");
    (moved, ok)
}

/// A hosted callee whose Contact names its badge moves to a new socket
/// with a target refresh: the caller's next request, sent to the new
/// Contact, still reaches it through T, which keeps the dialog under the
/// agent the To names (it was refused 403, the Request-URI's user naming
/// no agent).
#[test]
fn a_request_follows_the_target_refresh_of_a_callee_whose_contact_names_its_badge() {
    let mut w = World::new();
    let (inv, ok) = answered_call_seen_by_both(&mut w);
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    assert_eq!(w.take("1002").method(), Some(Method::Ack));
    let moved = addr("127.0.0.12:6102");
    let contact = format!("sip:A1002@{moved}");
    let reinvite = from_callee("INVITE", "1002", &inv, 2).replacen(
        "Content-Length",
        &format!("Contact: <{contact}>\r\nContent-Length"),
        1,
    );
    w.process(Event::Sip {
        node: T,
        source: Peer::udp(moved),
        data: Bytes::from(reinvite),
    });
    let relayed = w.take("1001");
    w.send_from(S, "1001", &answer(&relayed, 200));
    w.inbox.get_mut(&moved).unwrap().clear();
    let old = ok.contacts().next().unwrap().uri().as_str().to_owned();
    let info = in_dialog("INFO", "1001", &ok, 2).replacen(&old, &contact, 1);
    w.send_from(S, "1001", &info);
    let got = w.inbox.get_mut(&moved).and_then(VecDeque::pop_front);
    let got = got.expect("the INFO reached the new Contact");
    assert_eq!(got.method(), Some(Method::Info));
    assert_eq!(got.request_uri().unwrap().as_str(), contact);
    assert!(w.idle("1001"), "no refusal");
}

/// S's BYE at `max_call` follows the callee's target refresh: through T
/// to the new Contact.
#[test]
fn the_callees_target_refresh_moves_the_bye_of_an_expired_call() {
    let mut w = World::new();
    let (moved, ok) = answered_call_then_callee_moves(&mut w);
    w.advance(MAX_CALL);
    assert_bye_to_caller(&w.take("1001"), &ok);
    assert!(w.idle("1002"), "nothing to the old socket");
    let bye = w
        .inbox
        .get_mut(&moved)
        .and_then(VecDeque::pop_front)
        .unwrap();
    assert_eq!(bye.method(), Some(Method::Bye));
    assert_eq!(
        bye.request_uri().unwrap().as_str(),
        format!("sip:1002@{moved}")
    );
    let vias: Vec<String> = bye.vias().map(|v| v.host().to_owned()).collect();
    assert_eq!(vias, ["127.0.0.2", "127.0.0.1"], "S then T");
    assert_eq!(bye.to().tag(), Some("callee"));
}

/// T's BYE at a lapsed lease follows the hosted agent's target refresh.
#[test]
fn the_hosted_agents_target_refresh_moves_ts_bye_at_a_lapse() {
    let mut w = World::new();
    let (moved, _) = answered_call_then_callee_moves(&mut w);
    w.link_up = false;
    advance_only(&mut w, T, Duration::from_secs(u64::from(LEASE) + 1));
    assert_eq!(w.state(T, "1002"), "ready");
    assert!(w.idle("1002"), "nothing to the old socket");
    let bye = w
        .inbox
        .get_mut(&moved)
        .and_then(VecDeque::pop_front)
        .unwrap();
    assert_eq!(bye.method(), Some(Method::Bye));
    assert_eq!(
        bye.request_uri().unwrap().as_str(),
        format!("sip:1002@{moved}")
    );
    assert_eq!(bye.vias().count(), 1, "T's own");
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 0);
}

/// A Replaces races the replaced call's BYE: the old call is hung up while
/// the replacing INVITE still rings. The grant lasts for the new call;
/// once it ends, nothing is left on either blade.
#[test]
fn a_replaces_ringing_when_the_replaced_call_is_hung_up_leaves_nothing_behind() {
    let mut w = World::new();
    let (inv_c1, ok) = answered_call_seen_by_both(&mut w);
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    assert_eq!(w.take("1002").method(), Some(Method::Ack));
    w.register(S, "1003");
    w.send_from(
        S,
        "1003",
        &replaces_invite("1003", "1002", "r1", "c1;to-tag=callee;from-tag=f1001"),
    );
    let rep = w.take_final("1002");
    // 1002's phone hangs up the old call before it answers the new one.
    w.send_from(T, "1002", &from_callee("BYE", "1002", &inv_c1, 2));
    let bye = w.take("1001");
    w.send_from(S, "1001", &answer(&bye, 200));
    assert_eq!(w.take("1002").status(), Some(200));
    assert_eq!(w.state(S, "1001"), "ready");
    assert_eq!(w.state(T, "1002"), "hosted", "the ringing call rides on it");
    w.send_from(T, "1002", &answer(&rep, 200));
    let rep_ok = w.take_final("1003");
    assert_eq!(rep_ok.status(), Some(200));
    assert_eq!(w.nodes[S].proxy.metrics().replaces, 1);
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), 1, "r1 only");
    w.send_from(S, "1003", &in_dialog("ACK", "1003", &rep_ok, 1));
    assert_eq!(w.take("1002").method(), Some(Method::Ack));
    w.send_from(S, "1003", &in_dialog("BYE", "1003", &rep_ok, 2));
    let bye = w.take("1002");
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take("1003").status(), Some(200));
    w.advance(Duration::from_secs(64));
    assert_eq!(w.state(T, "1002"), "ready");
    assert_eq!(w.state(S, "1003"), "ready");
    for n in [S, T] {
        let p = &w.nodes[n].proxy;
        assert!(p.sessions.is_empty(), "node {n}");
        assert_eq!(p.hosted_dialogs_kept(), 0, "node {n}");
        assert_eq!(p.transactions(), 0, "node {n}");
        assert_eq!(p.own_byes_open(), 0, "node {n}");
    }
    assert!(w.idle("1001") && w.idle("1002") && w.idle("1003"));
}

/// 1001 on S calls `callee` (registered on blade `node`), answered and
/// ACKed under Call-ID `call_id`: the INVITE as the callee got it, and
/// the 200 as the caller got it.
fn acked_call_from_1001(
    w: &mut World,
    node: usize,
    callee: &str,
    call_id: &str,
) -> (Message, Message) {
    w.send_from(S, "1001", &invite("1001", callee, call_id));
    let inv = w.take_final(callee);
    assert_eq!(inv.method(), Some(Method::Invite), "{inv:?}");
    w.send_from(node, callee, &answer(&inv, 200));
    let ok = w.take_final("1001");
    assert_eq!(ok.status(), Some(200));
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    assert_eq!(w.take(callee).method(), Some(Method::Ack));
    (inv, ok)
}

/// Whether no blade keeps anything of a call any more (after the
/// transactions' linger).
fn nothing_left(w: &mut World) {
    w.advance(Duration::from_secs(64));
    for n in [S, T] {
        let p = &w.nodes[n].proxy;
        assert!(
            p.sessions.is_empty(),
            "node {n}: {:?}",
            w.snapshot(n).sessions
        );
        assert_eq!(p.hosted_dialogs_kept(), 0, "node {n}");
        assert_eq!(p.transactions(), 0, "node {n}");
        assert!(
            p.cluster
                .as_ref()
                .is_none_or(|c| c.source.is_empty() && c.target.is_empty()),
            "node {n}: a hosting is left"
        );
    }
}

/// Attended transfer across blades, the everyday shape: 1001 (A) on S
/// talks to 1002 (B) on T, hosted by S (c1); puts it on hold and calls
/// `transfer_to` (C), on blade `c_node` (c2). B's phone, told to by A's
/// REFER, sends C an INVITE replacing c2. B is hosted by S already: its
/// blade hands it over for the new call too, under the same grant, so the
/// call goes through. C's phone hangs up c2, A hangs up c1, and the new
/// call alone is left, until it ends too.
fn attended_transfer_across_blades(c_node: usize, transfer_to: &str) {
    let mut w = World::new();
    w.register(S, "1001");
    w.register(T, "1002");
    w.register(c_node, transfer_to);
    let (_, ok_c1) = acked_call_from_1001(&mut w, T, "1002", "c1");
    let (inv_c2, _) = acked_call_from_1001(&mut w, c_node, transfer_to, "c2");
    assert_eq!(w.state(T, "1002"), "hosted");

    w.send_from(
        T,
        "1002",
        &replaces_invite("1002", transfer_to, "r1", "c2;to-tag=callee;from-tag=f1001"),
    );
    if w.idle(transfer_to) {
        let refused = w.take_final("1002");
        panic!(
            "refused: {:?} {:?}",
            refused.status(),
            refused.reason().map(String::from_utf8_lossy)
        );
    }
    let rep = w.take_final(transfer_to);
    assert_eq!(rep.method(), Some(Method::Invite), "{rep:?}");
    assert_eq!(rep.call_id(), "r1");
    assert!(rep.header_named("Replaces").is_some());
    w.send_from(c_node, transfer_to, &answer(&rep, 200));
    let rep_ok = w.take_final("1002");
    assert_eq!(rep_ok.status(), Some(200));
    w.send_from(T, "1002", &in_dialog("ACK", "1002", &rep_ok, 1));
    assert_eq!(w.take(transfer_to).method(), Some(Method::Ack));
    let r1 = session_of(&w, S, "r1");
    assert_eq!(r1.agents, ["1002", transfer_to]);
    assert!(r1.hosted.contains(&"1002".to_owned()), "{r1:?}");

    // C's phone ends the replaced call (RFC 3891 §3).
    w.send_from(
        c_node,
        transfer_to,
        &from_callee("BYE", transfer_to, &inv_c2, 2),
    );
    let bye = w.take("1001");
    assert_eq!((bye.method(), bye.call_id()), (Some(Method::Bye), "c2"));
    w.send_from(S, "1001", &answer(&bye, 200));
    assert_eq!(w.take(transfer_to).status(), Some(200));
    // A hangs up its held call with B.
    w.send_from(S, "1001", &in_dialog("BYE", "1001", &ok_c1, 2));
    let bye = w.take("1002");
    assert_eq!((bye.method(), bye.call_id()), (Some(Method::Bye), "c1"));
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take("1001").status(), Some(200));
    w.advance(Duration::from_secs(1));
    assert_eq!(w.state(S, "1001"), "ready");
    assert_eq!(w.state(T, "1002"), "hosted", "for the new call");
    let sessions = w.snapshot(S).sessions;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].call_id, "r1");
    assert_eq!(sessions[0].agents, ["1002", transfer_to]);
    let mut hosted = sessions[0].hosted.clone();
    hosted.sort();
    let mut expected = vec!["1002".to_owned()];
    if c_node == T {
        expected.push(transfer_to.to_owned());
        assert_eq!(w.state(T, transfer_to), "hosted");
    } else {
        assert_eq!(w.state(S, transfer_to), "in_call");
    }
    assert_eq!(hosted, expected);
    // T keeps B's side of the new call under the grant it rides on (and
    // C's, when C is T's too), so a lapse would hang up its phone.
    let kept = if c_node == T { 2 } else { 1 };
    assert_eq!(w.nodes[T].proxy.hosted_dialogs_kept(), kept);
    // The grant outlives its lease by renewals, as for any call.
    w.advance(Duration::from_secs(u64::from(LEASE) * 2));
    assert_eq!(w.state(T, "1002"), "hosted");

    // The new call ends: everyone is ready, nothing is hosted.
    w.send_from(T, "1002", &in_dialog("BYE", "1002", &rep_ok, 2));
    let bye = w.take(transfer_to);
    assert_eq!((bye.method(), bye.call_id()), (Some(Method::Bye), "r1"));
    w.send_from(c_node, transfer_to, &answer(&bye, 200));
    assert_eq!(w.take("1002").status(), Some(200));
    nothing_left(&mut w);
    assert_eq!(w.state(S, "1001"), "ready");
    assert_eq!(w.state(T, "1002"), "ready");
    assert_eq!(w.state(c_node, transfer_to), "ready");
    assert!(w.idle("1001") && w.idle("1002") && w.idle(transfer_to));
}

#[test]
fn an_attended_transfer_to_an_agent_on_the_transferees_blade_goes_through() {
    attended_transfer_across_blades(T, "1004");
}

#[test]
fn an_attended_transfer_to_an_agent_on_the_sessions_blade_goes_through() {
    attended_transfer_across_blades(S, "1003");
}

/// Blind transfer across blades: 1002 (B) on T, hosted by S in a call
/// with 1001 (A), is REFERred to `transfer_to` (C, on blade `c_node`) and
/// calls it with a plain INVITE, which its own blade routes (no Replaces:
/// nothing of S's is named). A then hangs up; B is in the new call.
fn blind_transfer_across_blades(c_node: usize, transfer_to: &str) {
    let mut w = World::new();
    w.register(S, "1001");
    w.register(T, "1002");
    w.register(c_node, transfer_to);
    let (_, ok_c1) = acked_call_from_1001(&mut w, T, "1002", "c1");
    w.send_from(T, "1002", &invite("1002", transfer_to, "b1"));
    let inv = w.take_final(transfer_to);
    assert_eq!(inv.method(), Some(Method::Invite), "{inv:?}");
    w.send_from(c_node, transfer_to, &answer(&inv, 200));
    let ok_b1 = w.take_final("1002");
    assert_eq!(ok_b1.status(), Some(200));
    w.send_from(T, "1002", &in_dialog("ACK", "1002", &ok_b1, 1));
    assert_eq!(w.take(transfer_to).method(), Some(Method::Ack));
    w.send_from(S, "1001", &in_dialog("BYE", "1001", &ok_c1, 2));
    let bye = w.take("1002");
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take("1001").status(), Some(200));
    w.advance(Duration::from_secs(1));
    assert_eq!(w.state(S, "1001"), "ready");
    assert_eq!(w.state(T, "1002"), "in_call", "in the new call");
    // A new call to B is busy while it talks to C.
    let other = if transfer_to == "1003" {
        "1004"
    } else {
        "1003"
    };
    w.register(S, other);
    w.send_from(S, other, &invite(other, "1002", "x1"));
    assert_eq!(w.take_final(other).status(), Some(486));
    w.send_from(T, "1002", &in_dialog("BYE", "1002", &ok_b1, 2));
    let bye = w.take(transfer_to);
    w.send_from(c_node, transfer_to, &answer(&bye, 200));
    assert_eq!(w.take("1002").status(), Some(200));
    nothing_left(&mut w);
    assert_eq!(w.state(T, "1002"), "ready");
    assert_eq!(w.state(c_node, transfer_to), "ready");
}

#[test]
fn a_blind_transfer_to_an_agent_on_the_transferees_blade_goes_through() {
    blind_transfer_across_blades(T, "1004");
}

#[test]
fn a_blind_transfer_to_an_agent_on_the_sessions_blade_goes_through() {
    blind_transfer_across_blades(S, "1003");
}

/// `ext` registers on `node` for `secs` seconds (Min-Expires is 60).
fn register_for(w: &mut World, node: usize, ext: &str, secs: u32) {
    let t = terminal(ext);
    let text = format!(
        "REGISTER sip:cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bKr{ext}{secs}\r\n\
         From: <sip:{ext}@cc.example>;tag=r\r\nTo: <sip:{ext}@cc.example>\r\nCall-ID: reg{ext}\r\n\
         CSeq: {} REGISTER\r\nContact: <sip:{ext}@{t}>\r\nExpires: {secs}\r\n\
         Content-Length: 0\r\n\r\n",
        2 + secs
    );
    w.send_from(node, ext, &text);
    assert_eq!(w.take(ext).status(), Some(200));
}

/// The hosted callee's registration lapses mid-call (SPEC §5: its
/// logout). The call goes on, and the hosting with it (S renews the
/// lease): 1002 stays `hosted` on T, never `ready` while logged out, and
/// S's directory drops it. Once the call ends 1002 is `logged_out` on
/// both blades, and a new call to it is 480.
#[test]
fn a_hosted_agents_registration_lapsing_mid_call_keeps_the_call_and_logs_it_out_after() {
    let mut w = World::new();
    w.register(S, "1001");
    register_for(&mut w, T, "1002", 60);
    w.send_from(S, "1001", &invite("1001", "1002", "c1"));
    assert_eq!(w.take("1001").status(), Some(100));
    let inv = w.take("1002");
    w.send_from(T, "1002", &answer(&inv, 200));
    let ok = w.take_final("1001");
    assert_eq!(ok.status(), Some(200));
    w.send_from(S, "1001", &in_dialog("ACK", "1001", &ok, 1));
    assert_eq!(w.take("1002").method(), Some(Method::Ack));

    w.advance(Duration::from_secs(61));
    assert_eq!(w.state(T, "1002"), "hosted");
    assert!(
        w.nodes[T]
            .proxy
            .registrar()
            .location()
            .get("1002")
            .unwrap()
            .binding
            .is_none()
    );
    assert!(s_hosts(&w, "1002"), "S still hosts 1002");
    assert!(w.idle("1001") && w.idle("1002"), "nobody hung up");

    w.send_from(S, "1001", &in_dialog("BYE", "1001", &ok, 2));
    let bye = w.take("1002");
    assert_eq!(bye.method(), Some(Method::Bye));
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take("1001").status(), Some(200));
    assert_eq!(w.state(T, "1002"), "logged_out");
    assert_eq!(w.state(S, "1001"), "ready");
    assert!(!s_hosts(&w, "1002"));
    assert!(w.snapshot(S).sessions.is_empty());

    // S's directory dropped 1002: S asks every peer, and hosts nobody.
    let since = w.link_log.len();
    w.send_from(S, "1001", &invite("1001", "1002", "c2"));
    assert_eq!(w.take_final("1001").status(), Some(480));
    assert_eq!(w.state(T, "1002"), "logged_out");
    let asked: Vec<_> = w.link_log[since..].iter().map(|(_, name)| *name).collect();
    assert_eq!(asked, ["Locate", "Located"]);
}

/// SPEC §2 step 6 holds for a hosted agent that logged out mid-call
/// (README: it stays `hosted` until the call ends): a new call for it
/// that reaches T is handed to S, which answers 486 as it does for a
/// call placed on S. T does not take it for an agent registered nowhere
/// (asking every peer, 480). Once the call ends, it is 480.
#[test]
fn a_call_at_t_for_a_hosted_agent_that_logged_out_is_decided_by_s() {
    let mut w = World::new();
    let ok = acked_call(&mut w);
    w.register(T, "1003");
    register_for(&mut w, T, "1002", 0);
    assert_eq!(w.state(T, "1002"), "hosted");

    let since = w.link_log.len();
    w.send_from(T, "1003", &invite("1003", "1002", "c2"));
    assert_eq!(w.take_final("1003").status(), Some(486));
    let names: Vec<&str> = w.link_log[since..].iter().map(|(_, n)| *n).collect();
    assert_eq!(names, ["Redirect", "RedirectAnswer"]);
    assert!(w.idle("1002"), "B got no second INVITE");

    w.send_from(S, "1001", &in_dialog("BYE", "1001", &ok, 2));
    let bye = w.take("1002");
    w.send_from(T, "1002", &answer(&bye, 200));
    assert_eq!(w.take("1001").status(), Some(200));
    assert_eq!(w.state(T, "1002"), "logged_out");
    w.send_from(T, "1003", &invite("1003", "1002", "c3"));
    assert_eq!(w.take_final("1003").status(), Some(480));
}

/// S vanishes mid-call after the hosted callee logged out: when the lease
/// lapses T still hangs up the phone (the dialog does not depend on the
/// registration) and takes the agent back as `logged_out`, not `ready`.
#[test]
fn a_lapsed_lease_of_an_agent_that_logged_out_hangs_it_up_and_leaves_it_logged_out() {
    let mut w = World::new();
    acked_call(&mut w);
    register_for(&mut w, T, "1002", 0);
    w.link_up = false;
    advance_only(&mut w, T, Duration::from_secs(u64::from(LEASE) + 1));
    let bye = w.take("1002");
    assert_eq!(bye.method(), Some(Method::Bye));
    assert_eq!(bye.call_id(), "c1");
    assert_eq!(w.state(T, "1002"), "logged_out");
    assert!(
        w.nodes[T]
            .proxy
            .registrar()
            .location()
            .get("1002")
            .unwrap()
            .binding
            .is_none()
    );
}

/// The hosted callee logs out while its phone rings, then declines: the
/// caller gets the answer, and the agent is `logged_out` on T, not
/// `ready`; S holds nothing.
#[test]
fn a_callee_that_logs_out_while_ringing_and_declines_ends_up_logged_out() {
    let mut w = World::new();
    w.register(S, "1001");
    w.register(T, "1002");
    w.send_from(S, "1001", &invite("1001", "1002", "c1"));
    assert_eq!(w.take("1001").status(), Some(100));
    let inv = w.take("1002");
    register_for(&mut w, T, "1002", 0);
    assert_eq!(w.state(T, "1002"), "hosted");
    w.send_from(T, "1002", &answer(&inv, 603));
    assert_eq!(w.take_final("1001").status(), Some(603));
    assert_eq!(w.state(T, "1002"), "logged_out");
    assert_eq!(w.state(S, "1001"), "ready");
    assert!(!s_hosts(&w, "1002"));
}
