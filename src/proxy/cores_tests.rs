//! A blade of two cores in virtual time: each core's proxy gets the
//! messages the runtime would give it (by [`route::owner_core`]), and the
//! notices and hand-offs between cores are carried at once.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::config::{AgentKind, Credential};
use crate::registrar::Settings as RegistrarSettings;
use crate::registrar::digest::NonceManager;

const CORES: usize = 2;
const EXTENSIONS: [&str; 6] = ["1001", "1002", "1003", "1004", "1005", "1006"];

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

fn core_of(ext: &str) -> usize {
    route::shard_of(ext.as_bytes(), CORES)
}

enum Event {
    Message {
        core: usize,
        source: Peer,
        msg: Message,
    },
    Join {
        core: usize,
        source: Peer,
        msg: Message,
    },
    Notice {
        core: usize,
        event: AgentEvent,
    },
}

struct Blade {
    now: Duration,
    cores: Vec<Proxy>,
    inbox: HashMap<SocketAddr, VecDeque<Message>>,
}

impl Blade {
    fn new() -> Blade {
        let agents: AgentTable = EXTENSIONS
            .iter()
            .map(|ext| {
                let agent = Agent {
                    badge: format!("A{ext}"),
                    extension: ext.to_string(),
                    kind: AgentKind::Agent,
                    credential: Credential::Password(format!("pw{ext}")),
                };
                (ext.to_string(), Arc::new(agent))
            })
            .collect();
        let agents = Arc::new(agents);
        let cores = (0..CORES)
            .map(|core| {
                let settings = Settings {
                    blade_id: "blade-1".into(),
                    domain: "cc.example".into(),
                    local: addr("127.0.0.1:5060"),
                    auth: false,
                    core,
                    cores: CORES,
                    timers: TimerConfig::default(),
                    max_transactions: 1000,
                    cluster: None,
                    via_port: None,
                    core_ports: Vec::new(),
                    max_call: Duration::from_secs(3600),
                };
                let registrar = Registrar::new(
                    RegistrarSettings {
                        domain: "cc.example".into(),
                        auth: false,
                        own_ip: None,
                        unix_at_epoch: None,
                    },
                    agents
                        .values()
                        .filter(|a| core_of(&a.extension) == core)
                        .cloned(),
                    NonceManager::from_secret([1; 32]),
                );
                Proxy::new(settings, registrar, agents.clone())
            })
            .collect();
        Blade {
            now: Duration::ZERO,
            cores,
            inbox: HashMap::new(),
        }
    }

    /// Delivers a datagram from terminal `ext` to the core the runtime
    /// would give it.
    fn send_from(&mut self, ext: &str, text: &str) {
        let msg = Message::parse(Bytes::from(text.to_owned())).unwrap();
        let core = route::owner_core(&msg, CORES).unwrap_or(0);
        self.deliver(core, ext, msg);
    }

    /// Delivers a datagram from terminal `ext` to `core` (as a core's own
    /// port would: the one a Record-Route of that core names).
    fn deliver(&mut self, core: usize, ext: &str, msg: Message) {
        let source = Peer::udp(terminal(ext));
        let mut queue = VecDeque::from([Event::Message { core, source, msg }]);
        while let Some(event) = queue.pop_front() {
            let mut out = Output::default();
            let now = self.now;
            let core = match event {
                Event::Message { core, source, msg } => {
                    self.cores[core].handle_message(now, source, msg, &mut out);
                    core
                }
                Event::Join { core, source, msg } => {
                    self.cores[core].handle_join_handoff(now, source, msg, &mut out);
                    core
                }
                Event::Notice { core, event } => {
                    self.cores[core].handle_notice(event, &mut out);
                    core
                }
            };
            for t in out.transmits {
                let msg = Message::parse(t.data).unwrap();
                self.inbox.entry(t.to.addr).or_default().push_back(msg);
            }
            for n in out.notices {
                let to: Vec<usize> = match n.to {
                    Some(c) => vec![c],
                    None => (0..CORES).filter(|&c| c != core).collect(),
                };
                for c in to {
                    queue.push_back(Event::Notice {
                        core: c,
                        event: n.event.clone(),
                    });
                }
            }
            for h in out.handoffs {
                let (core, source, msg) = (h.core, h.source, h.msg);
                queue.push_back(if h.join {
                    Event::Join { core, source, msg }
                } else {
                    Event::Message { core, source, msg }
                });
            }
        }
    }

    fn register(&mut self, ext: &str) {
        let t = terminal(ext);
        let text = format!(
            "REGISTER sip:cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bKr{ext}\r\n\
             From: <sip:{ext}@cc.example>;tag=r\r\nTo: <sip:{ext}@cc.example>\r\nCall-ID: reg{ext}\r\n\
             CSeq: 1 REGISTER\r\nContact: <sip:{ext}@{t}>\r\nContent-Length: 0\r\n\r\n"
        );
        self.send_from(ext, &text);
        assert_eq!(self.take(ext).status(), Some(200));
    }

    fn take(&mut self, ext: &str) -> Message {
        self.inbox
            .get_mut(&terminal(ext))
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| panic!("nothing reached {ext}"))
    }

    fn take_final(&mut self, ext: &str) -> Message {
        loop {
            let msg = self.take(ext);
            if msg.status() != Some(100) {
                return msg;
            }
        }
    }

    fn state(&self, ext: &str) -> &'static str {
        let record = self.cores[core_of(ext)].registrar().location().get(ext);
        record.unwrap().state.as_str()
    }

    fn sessions(&self) -> Vec<SessionStatus> {
        self.cores
            .iter()
            .flat_map(|p| p.snapshot().sessions)
            .collect()
    }
}

fn invite(from: &str, to: &str, call_id: &str, extra: &str) -> String {
    let t = terminal(from);
    format!(
        "INVITE sip:{to}@cc.example SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{from}@cc.example>;tag=f{from}\r\nTo: <sip:{to}@cc.example>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n{extra}Contact: <sip:{from}@{t}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The callee's answer (To tag `t<callee>`) to a request it received.
fn answer(req: &Message, status: u16, callee: &str) -> String {
    let mut buf = bytes::BytesMut::new();
    let contact = format!("<sip:{callee}@{}>", terminal(callee));
    let rr: Vec<String> = req
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    let mut extra = vec![("Contact", contact.as_str())];
    extra.extend(rr.iter().map(|r| ("Record-Route", r.as_str())));
    let tag = format!("t{callee}");
    req.response(status, "X", Some(&tag), &extra, &mut buf);
    String::from_utf8(buf.to_vec()).unwrap()
}

/// An in-dialog request from the caller of the dialog `ok` answered.
fn from_caller(method: &str, caller: &str, ok: &Message, cseq: u32) -> String {
    let t = terminal(caller);
    let target = ok.contacts().next().unwrap().uri().as_str().to_owned();
    let mut routes: Vec<String> = ok
        .record_routes()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    routes.reverse();
    let header = |name| String::from_utf8_lossy(ok.header(name).unwrap()).into_owned();
    format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bK{method}{cseq}{}\r\n\
         Route: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\n\
         CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        ok.call_id(),
        routes.join(", "),
        header(crate::sip::HeaderName::From),
        header(crate::sip::HeaderName::To),
        ok.call_id(),
    )
}

/// Two agents whose records live on different cores, and a third.
fn parties() -> (&'static str, &'static str, &'static str) {
    let caller = EXTENSIONS[0];
    let callee = EXTENSIONS
        .into_iter()
        .find(|e| core_of(e) != core_of(caller))
        .expect("agents on both cores");
    let newcomer = EXTENSIONS
        .into_iter()
        .find(|e| *e != caller && *e != callee)
        .unwrap();
    (caller, callee, newcomer)
}

/// The replaced dialog's session lives on the core of its callee; the
/// Replaces targets its caller, whose core hands it over to the session's
/// core (as for a Join), which opens the new call there.
#[test]
fn a_replaces_through_the_party_of_another_core_is_handed_to_the_sessions_core() {
    let (x, y, z) = parties();
    let mut b = Blade::new();
    for ext in [x, y, z] {
        b.register(ext);
    }
    b.send_from(x, &invite(x, y, "c1", ""));
    let inv = b.take_final(y);
    b.send_from(y, &answer(&inv, 200, y));
    let ok = b.take_final(x);
    assert_eq!(ok.status(), Some(200));
    assert_eq!((b.state(x), b.state(y)), ("in_call", "in_call"));

    // z replaces c1 at x, its caller (the tags as x sees the dialog).
    let replaces = format!("Replaces: c1;to-tag=f{x};from-tag=t{y}\r\n");
    b.send_from(z, &invite(z, x, "r1", &replaces));
    let rep = b.take_final(x);
    assert_eq!(rep.method(), Some(Method::Invite), "no 486: it goes on");
    assert_eq!(rep.call_id(), "r1");
    let sbc = format!("{CORE_PARAM}={}", core_of(y));
    let rr = String::from_utf8_lossy(rep.record_routes().next().unwrap().as_bytes()).into_owned();
    assert!(rr.contains(&sbc), "routed by the session's core: {rr}");
    b.send_from(x, &answer(&rep, 200, x));
    let rep_ok = b.take_final(z);
    assert_eq!(rep_ok.status(), Some(200));
    assert_eq!(b.cores[core_of(y)].metrics().replaces, 1);

    // x's phone hangs the replaced call up.
    b.send_from(x, &from_caller("BYE", x, &ok, 2));
    let bye = b.take(y);
    assert_eq!(bye.call_id(), "c1");
    b.send_from(y, &answer(&bye, 200, y));
    assert_eq!(b.take(x).status(), Some(200));
    assert_eq!(b.state(y), "ready");
    assert_eq!(b.state(x), "in_call", "in the new call");
    assert_eq!(b.state(z), "in_call");
    let sessions = b.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0].call_id, "r1");
    assert_eq!(sessions[0].agents, [z, x]);

    // The new call ends: everyone is ready, no session is left.
    b.send_from(z, &from_caller("BYE", z, &rep_ok, 2));
    let bye = b.take(x);
    assert_eq!(bye.call_id(), "r1");
    b.send_from(x, &answer(&bye, 200, x));
    assert_eq!(b.take(z).status(), Some(200));
    for ext in [x, y, z] {
        assert_eq!(b.state(ext), "ready", "{ext}");
    }
    assert!(b.sessions().is_empty());
}

/// A routed in-dialog request reaching a core that does not own the agent
/// it is addressed to (the core whose Record-Route the dialog has: a
/// supervisor's join leg relayed by the joined agent's core) goes on to
/// that agent's terminal, which the owner's login notice told every core;
/// the same request aimed at another address is refused, as no open relay.
#[test]
fn a_routed_request_goes_to_a_terminal_another_core_registered_and_nowhere_else() {
    let (caller, callee, _) = parties();
    let mut blade = Blade::new();
    blade.register(caller);
    blade.register(callee);
    let bye = |host: SocketAddr| {
        let t = terminal(caller);
        Message::parse(Bytes::from(format!(
            "BYE sip:{callee}@{host} SIP/2.0\r\nVia: SIP/2.0/UDP {t};branch=z9hG4bKrouted{}\r\n\
             Route: <sip:127.0.0.1:5060;lr>\r\nMax-Forwards: 70\r\n\
             From: <sip:{caller}@cc.example>;tag=a\r\nTo: <sip:{callee}@cc.example>;tag=b\r\n\
             Call-ID: leg@test\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            host.port()
        )))
        .unwrap()
    };
    let other_core = core_of(caller);
    assert_ne!(other_core, core_of(callee));

    blade.deliver(other_core, caller, bye(terminal(callee)));
    let relayed = blade.take(callee);
    assert_eq!(relayed.method(), Some(Method::Bye));
    assert_eq!(relayed.call_id(), "leg@test");

    let outside: SocketAddr = addr("198.51.100.7:5060");
    blade.deliver(other_core, caller, bye(outside));
    assert_eq!(blade.take_final(caller).status(), Some(403));
    assert!(
        !blade.inbox.contains_key(&outside),
        "nothing left the cluster"
    );
}
