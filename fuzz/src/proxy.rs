//! Target `proxy`: the sans-IO proxy core (`sipblade::proxy::Proxy`) driven
//! by hostile SIP after parsing: transactions, dialogs and sessions,
//! CANCEL/ACK matching, Replaces/Join, REGISTER with digest, timers.
//!
//! The first byte picks the world: auth on or off (bit 0), one core per
//! blade or two (bit 2), and one blade, two blades (bit 1) or, where the top
//! three bits are `100` (0x80-0x9f), three blades, each a peer of the other
//! two. The blades' SIP and link messages are carried in memory (a
//! cross-blade call hosts its callee). Bits 3-7 meant nothing before there
//! were three-blade worlds; the committed inputs that started 0x80-0x9f had
//! bit 7 cleared, so every committed input keeps its meaning, and a
//! three-blade world alone reads the few bytes that only it needs (which
//! pair of blades a link step takes, whether an address names blade-3). A
//! blade of two cores runs one proxy per core as `src/runtime/core.rs` does:
//! a datagram arrives on the core the input picks (SO_REUSEPORT spreads
//! them), goes to the core that owns it (`route::owner_core`); hand-offs,
//! and the notices that tell the other core of logins and calls, are carried
//! between cores, call notices either at once or, as the input picks, at the
//! next step (the runtime batches them); link messages go to their core as
//! `Core::from_link` sends them. Each step of such a world starts with two
//! bytes for those choices, so the inputs of 1-core worlds keep their
//! meaning. Agents 1001-1003 are registered, 1004 is not: 1001 and 1002 on
//! the first blade and 1003 on the last, or, with three blades, 100d on
//! blade-d, so that calls, Joins and Replaces go between every pair of
//! blades (a Join from blade-3 for a call of blade-1's caller to blade-2's
//! agent involves all three). The rest of the input is a program of steps: a
//! request built from a template (INVITE, REGISTER, OPTIONS, MESSAGE, INVITE
//! with Replaces or Join naming a dialog the proxy emitted), a response or
//! in-dialog request built from what the proxy actually sent to a terminal
//! (its Call-IDs, branches, tags, Contacts and Record-Routes), a CANCEL, ACK
//! or repeat of what was sent before, raw bytes, each with a few mutations
//! (a header dropped, duplicated, swapped or given a hostile value; the
//! method, status, CSeq, branch, tag, Call-ID, Max-Forwards, Content-Length,
//! Route or Request-URI changed); virtual time advancing so that
//! retransmission, transaction, timer C, session and registration timers
//! fire; the link between two blades going down and up (with three blades,
//! the input picks the pair; every pair has its own link).
//!
//! Invariants: nothing panics (overflow checks are on); the proxy emits
//! only messages that parse; a step ends (no message storm between the
//! blades, no timer that fires without moving on); and once time has run
//! past every timer, no transaction, session or busy agent is left on any
//! core of any blade.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sipblade::cluster::codec::{Class, Message as LinkMessage};
use sipblade::cluster::hosting::HostSecret;
use sipblade::cluster::link::ReplyTo;
use sipblade::config::{Agent, AgentKind, Credential};
use sipblade::proxy::cross::{self, ClusterSend, ClusterSettings, Dest, PeerBlade};
use sipblade::proxy::{AgentEvent, AgentTable, Output, Proxy, Settings, route};
use sipblade::registrar::digest::{self, Credentials, NonceManager, Secret};
use sipblade::registrar::{Registrar, Settings as RegistrarSettings};
use sipblade::sip::{HeaderName, Message, Peer, Transport};
use sipblade::transaction::TimerConfig;

const DOMAIN: &str = "cc.example";
const EXTS: [&str; 4] = ["1001", "1002", "1003", "1004"];
const BLADES: [(&str, &str); 3] = [
    ("blade-1", "127.0.0.1:5060"),
    ("blade-2", "127.0.0.2:5060"),
    ("blade-3", "127.0.0.3:5060"),
];
const STRANGER: &str = "198.51.100.7:5060";
/// At most this many steps per input, so one input stays fast.
const MAX_STEPS: usize = 256;
/// Messages one step may cause between the blades: a loop between them is
/// bounded by Max-Forwards (70) long before this.
const MAX_EVENTS: usize = 20_000;
/// Timer firings one advance may take: far above what a few calls arm, so
/// reaching it means a timer that fires without moving on.
const MAX_FIRINGS: usize = 100_000;
/// How many received messages the terminals remember to answer.
const SEEN: usize = 48;
/// Shorter than a registration, so the final drain sees sessions end by
/// themselves before their agents log out.
const MAX_CALL: Duration = Duration::from_secs(600);

/// The input, read a byte at a time; zeros past its end.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        self.byte() as usize % n
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a fixed address")
}

/// Agent extension `100d` → its phone's address.
fn terminal(i: usize) -> SocketAddr {
    SocketAddr::new([127, 0, 0, 11 + i as u8].into(), 5001 + i as u16)
}

/// A message the proxy sent to a terminal (or stranger).
struct Seen {
    node: usize,
    to: SocketAddr,
    msg: Message,
}

/// A request the harness sent, for CANCEL, ACK and repeats.
struct Sent {
    node: usize,
    source: Peer,
    data: Bytes,
}

/// A challenge a terminal got: realm, nonce, algorithm.
type Challenge = (String, String, Option<String>);

struct World {
    now: Duration,
    auth: bool,
    /// Each blade's cores: one proxy per core.
    nodes: Vec<Vec<Proxy>>,
    /// Cores per blade.
    cores: usize,
    /// This step's choice of receiving cores (bit by bit, like
    /// SO_REUSEPORT spreading datagrams), and of which core sheds.
    rx: u8,
    /// How many receiving cores this step has chosen.
    rx_n: u32,
    /// Whether this step's call-state notices wait for the next step (the
    /// runtime batches them for up to 50 ms).
    hold: bool,
    /// Notices held back: blade, from core, to core, event.
    held: Vec<(usize, usize, usize, AgentEvent)>,
    /// Whether the link between blades `a` and `b` is up, `a < b`:
    /// `links[pair(a, b)]`.
    link_up: Vec<bool>,
    /// The epoch each pair's link is in.
    link_epoch: Vec<u64>,
    seen: Vec<Seen>,
    sent: Vec<Sent>,
    challenges: HashMap<SocketAddr, Challenge>,
    nc: u32,
    branch: u32,
    /// `SIPBLADE_FUZZ_TRACE` set: print every message, to read a crash.
    trace: bool,
}

/// What a core is given, as `src/runtime/core.rs` gives it.
enum Event {
    /// A datagram received on this core's socket.
    Datagram { source: Peer, data: Bytes },
    /// A message another core received and this one owns.
    Sip { source: Peer, msg: Message },
    /// A Join (or Replaces) for a session this core owns.
    Join { source: Peer, msg: Message },
    /// An agent event from another core.
    Notice(AgentEvent),
    /// A hosting message from peer blade `from`.
    Cluster {
        from: usize,
        msg: LinkMessage,
        reply: Option<ReplyTo>,
    },
    /// What the core produced already (a timer, link news).
    Output(Output),
}

/// The proxy of core `core` (of `cores`) on blade `index`: its registrar
/// holds the agents that shard to it, as the runtime's do.
fn node(index: usize, core: usize, cores: usize, auth: bool, blades: usize) -> Proxy {
    let agents: AgentTable = EXTS
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
    let (id, sip) = BLADES[index];
    let cluster = (blades > 1).then(|| {
        let peers = (0..blades)
            .filter(|&b| b != index)
            .map(|b| PeerBlade {
                id: BLADES[b].0.into(),
                sip: addr(BLADES[b].1),
            })
            .collect();
        ClusterSettings {
            peers,
            lease_secs: 30,
            secret: HostSecret::from_bytes([7; 32]),
            epoch_base: 1,
        }
    });
    let settings = Settings {
        blade_id: id.into(),
        domain: DOMAIN.into(),
        local: addr(sip),
        auth,
        core,
        cores,
        timers: TimerConfig::default(),
        // Small, so the overload paths are reachable.
        max_transactions: 24,
        cluster,
        via_port: None,
        core_ports: Vec::new(),
        max_call: MAX_CALL,
    };
    let mut nonces = NonceManager::from_secret([index as u8 + 1; 32]);
    if cores > 1 {
        nonces = nonces.with_issuer(core as u16);
    }
    let registrar = Registrar::new(
        RegistrarSettings {
            domain: DOMAIN.into(),
            auth,
            own_ip: None,
            // A fixed wall clock: the same input, the same Date.
            unix_at_epoch: Some(Duration::from_secs(1_700_000_000)),
        },
        agents
            .values()
            .filter(|a| route::shard_of(a.extension.as_bytes(), cores) == core)
            .cloned(),
        nonces,
    );
    Proxy::new(settings, registrar, Arc::new(agents))
}

/// Runs `data` as a program against a fresh world.
pub fn proxy(data: &[u8]) {
    let mut input = Input(data);
    let config = input.byte();
    let auth = config & 1 != 0;
    let blades = if config & 0xe0 == 0x80 {
        3
    } else if config & 2 != 0 {
        2
    } else {
        1
    };
    let cores = if config & 4 != 0 { 2 } else { 1 };
    let nodes = (0..blades)
        .map(|b| {
            (0..cores)
                .map(|c| node(b, c, cores, auth, blades))
                .collect()
        })
        .collect();
    let mut w = World {
        now: Duration::ZERO,
        auth,
        nodes,
        cores,
        rx: 0,
        rx_n: 0,
        hold: false,
        held: Vec::new(),
        link_up: vec![true; pairs(blades)],
        link_epoch: vec![1; pairs(blades)],
        seen: Vec::new(),
        sent: Vec::new(),
        challenges: HashMap::new(),
        nc: 0,
        branch: 0,
        trace: std::env::var_os("SIPBLADE_FUZZ_TRACE").is_some(),
    };
    for n in 0..blades {
        for c in 0..cores {
            for peer in (0..blades).filter(|&b| b != n) {
                let mut out = Output::default();
                w.nodes[n][c].peer_state(w.now, BLADES[peer].0, Some(1), &mut out);
                w.run(n, c, Event::Output(out));
            }
        }
    }
    // 1001 and 1002 on the first blade, 1003 on the last, or one per blade
    // of three; 1004 never.
    for i in 0..3 {
        let home = w.home_of(Some(i));
        w.register(i, home);
    }
    let mut steps = 0;
    while !input.0.is_empty() && steps < MAX_STEPS {
        steps += 1;
        w.step(&mut input);
    }
    w.finish();
}

impl World {
    fn step(&mut self, input: &mut Input) {
        self.release_held();
        if self.cores > 1 {
            // Only multi-core worlds read these: 1-core inputs keep their
            // meaning.
            self.rx = input.byte();
            self.rx_n = 0;
            self.hold = input.byte() & 1 != 0;
        }
        match input.below(12) {
            0..=2 => self.new_request(input),
            3..=4 => self.respond(input),
            5..=6 => self.in_dialog(input),
            7 => self.resend(input),
            8 => self.raw(input),
            9 => {
                let by = match input.below(4) {
                    0 => Duration::from_millis(input.byte() as u64 * 10),
                    1 => Duration::from_millis(500) * (input.byte() as u32 % 65),
                    2 => Duration::from_secs(input.byte() as u64 * 4),
                    _ => Duration::from_secs(input.byte() as u64 * 60),
                };
                self.advance(by);
            }
            10 => self.link(input),
            _ => {
                // Draining starts or stops (a blade being stopped), on
                // every core; a core falls behind its queue or catches up.
                let n = input.below(self.nodes.len());
                let on = input.byte() & 1 != 0;
                for p in &mut self.nodes[n] {
                    p.set_draining(on);
                }
                let shed = input.byte() & 1 != 0;
                let c = self.rx_core();
                self.nodes[n][c].set_shedding(shed);
            }
        }
    }

    // ---- delivery ----

    /// The core a datagram arrives on: the input's choice.
    fn rx_core(&mut self) -> usize {
        if self.cores == 1 {
            return 0;
        }
        let bit = self.rx_n % 8;
        self.rx_n += 1;
        (self.rx >> bit) as usize % self.cores
    }

    /// Applies the notices held back, as the runtime's batch would.
    fn release_held(&mut self) {
        for (b, _, to, event) in std::mem::take(&mut self.held) {
            self.run(b, to, Event::Notice(event));
        }
    }

    fn deliver(&mut self, node: usize, source: Peer, data: Bytes) {
        let core = self.rx_core();
        if self.trace {
            let text = String::from_utf8_lossy(&data);
            eprintln!(
                "[{:?}] {} -> blade {node} core {core}:\n{text}",
                self.now, source.addr
            );
        }
        self.run(node, core, Event::Datagram { source, data });
    }

    /// Gives `event` to core `core` of blade `node`, and carries what that
    /// emits, and what that causes, to the end: hand-offs and notices
    /// between cores, messages between the blades.
    fn run(&mut self, node: usize, core: usize, event: Event) {
        let mut queue = VecDeque::new();
        queue.push_back((node, core, event));
        let mut events = 0;
        while let Some((node, core, event)) = queue.pop_front() {
            events += 1;
            assert!(events < MAX_EVENTS, "a message storm between the blades");
            let out = self.handle(node, core, event, &mut queue);
            self.dispatch(node, core, out, &mut queue);
        }
    }

    /// What core `core` of blade `node` does with `event`.
    fn handle(
        &mut self,
        node: usize,
        core: usize,
        event: Event,
        queue: &mut VecDeque<(usize, usize, Event)>,
    ) -> Output {
        let now = self.now;
        let cores = self.cores;
        let mut out = Output::default();
        let p = &mut self.nodes[node][core];
        match event {
            Event::Datagram { source, data } if cores == 1 => {
                p.handle_datagram(now, source, data, &mut out)
            }
            Event::Datagram { source, data } => match Message::parse(data.clone()) {
                Ok(msg) => match route::owner_core(&msg, cores) {
                    Some(owner) if owner != core => {
                        p.note_handoff();
                        // Notices queued for the owner go first.
                        let mut rest = Vec::new();
                        for (b, from, to, e) in std::mem::take(&mut self.held) {
                            if (b, from, to) == (node, core, owner) {
                                queue.push_back((b, to, Event::Notice(e)));
                            } else {
                                rest.push((b, from, to, e));
                            }
                        }
                        self.held = rest;
                        queue.push_back((node, owner, Event::Sip { source, msg }));
                    }
                    _ => p.handle_message(now, source, msg, &mut out),
                },
                Err(_) => p.handle_datagram(now, source, data, &mut out),
            },
            Event::Sip { source, msg } => p.handle_message(now, source, msg, &mut out),
            Event::Join { source, msg } => p.handle_join_handoff(now, source, msg, &mut out),
            Event::Notice(e) => p.handle_notice(e, &mut out),
            Event::Cluster { from, msg, reply } => {
                p.handle_cluster(now, BLADES[from].0, msg, reply, &mut out)
            }
            Event::Output(o) => out = o,
        }
        out
    }

    /// Carries what core `core` of blade `node` emitted.
    fn dispatch(
        &mut self,
        node: usize,
        core: usize,
        out: Output,
        queue: &mut VecDeque<(usize, usize, Event)>,
    ) {
        for h in out.handoffs {
            let (source, msg) = (h.source, h.msg);
            let event = if h.join {
                Event::Join { source, msg }
            } else {
                Event::Sip { source, msg }
            };
            queue.push_back((node, h.core, event));
        }
        // A login or logout reaches the other cores before the replies
        // go; call-state notices may wait for the next step.
        let gating = out.notices.iter().any(|n| {
            matches!(
                n.event,
                AgentEvent::LoggedIn { .. } | AgentEvent::LoggedOut(_)
            )
        });
        for n in out.notices {
            let targets: Vec<usize> = match n.to {
                Some(c) => vec![c],
                None => (0..self.cores).filter(|&c| c != core).collect(),
            };
            for to in targets.into_iter().filter(|&c| c < self.cores) {
                if self.hold && !gating {
                    self.held.push((node, core, to, n.event.clone()));
                } else {
                    queue.push_back((node, to, Event::Notice(n.event.clone())));
                }
            }
        }
        let me = addr(BLADES[node].1);
        for t in out.transmits {
            let msg = match Message::parse(t.data.clone()) {
                Ok(msg) => msg,
                // The answer to a request that did not parse echoes
                // what it could of it (`malformed_response`): best
                // effort, so it need not parse itself.
                Err(_) if best_effort(&t.data) => continue,
                Err(e) => panic!("the proxy emitted an unparsable message: {e}"),
            };
            let other =
                (0..self.nodes.len()).find(|&o| o != node && t.to.addr == addr(BLADES[o].1));
            if let Some(other) = other {
                if self.trace {
                    let text = String::from_utf8_lossy(&t.data);
                    eprintln!(
                        "[{:?}] blade {node} core {core} -> blade {other}:\n{text}",
                        self.now
                    );
                }
                let source = Peer::new(me, t.to.transport);
                let c = self.rx_core();
                let data = t.data;
                self.at_once(other, c, Event::Datagram { source, data }, queue);
            } else {
                if self.trace {
                    let text = String::from_utf8_lossy(&t.data);
                    eprintln!(
                        "[{:?}] blade {node} core {core} -> {}:\n{text}",
                        self.now, t.to.addr
                    );
                }
                self.note(node, t.to.addr, msg);
            }
        }
        for ClusterSend { to, msg } in out.cluster {
            // As the link driver sends them: to one peer, or to all; a
            // peer whose link is down gets nothing.
            let peers: Vec<usize> = match &to {
                Dest::Peer(peer) | Dest::Reply { peer, .. } => blade_of(peer).into_iter().collect(),
                Dest::AllPeers => (0..self.nodes.len()).collect(),
            };
            let peers = peers
                .into_iter()
                .filter(|&o| o != node && o < self.nodes.len() && self.link_up[pair(node, o)]);
            for other in peers.collect::<Vec<_>>() {
                self.carry(node, other, msg.clone(), queue);
            }
        }
    }

    /// Gives a link message from blade `from` to blade `other`.
    fn carry(
        &mut self,
        from: usize,
        other: usize,
        msg: LinkMessage,
        queue: &mut VecDeque<(usize, usize, Event)>,
    ) {
        if self.trace {
            eprintln!("[{:?}] blade {from} => blade {other}: {msg:?}", self.now);
        }
        let reply = (msg.class() == Class::Request).then(|| ReplyTo::for_tests(0));
        if self.cores == 1 {
            self.at_once(other, 0, Event::Cluster { from, msg, reply }, queue);
            return;
        }
        // As `Core::from_link` hands them out.
        match cross::request_core(&msg, self.cores) {
            Some(c) => self.at_once(other, c, Event::Cluster { from, msg, reply }, queue),
            None => {
                for (c, msg) in cross::split_notice(&msg, self.cores) {
                    let event = Event::Cluster {
                        from,
                        msg,
                        reply: None,
                    };
                    self.at_once(other, c, event, queue);
                }
            }
        }
    }

    /// Gives `event` to a core of another blade now (a message on the
    /// wire is handled as it arrives), queueing what that emits.
    fn at_once(
        &mut self,
        node: usize,
        core: usize,
        event: Event,
        queue: &mut VecDeque<(usize, usize, Event)>,
    ) {
        let out = self.handle(node, core, event, queue);
        queue.push_back((node, core, Event::Output(out)));
    }

    /// Remembers a message for a terminal: its challenge, and the message
    /// itself to answer later.
    fn note(&mut self, node: usize, to: SocketAddr, msg: Message) {
        let challenge = msg.www_authenticate().or(msg.proxy_authenticate());
        if let Some(d) = challenge.as_ref().and_then(|a| a.digest()) {
            if let (Some(realm), Some(nonce)) = (d.realm, d.nonce) {
                let c = (realm.into(), nonce.into(), d.algorithm.map(str::to_owned));
                self.challenges.insert(to, c);
            }
        }
        if self.seen.len() >= SEEN {
            self.seen.remove(0);
        }
        self.seen.push(Seen { node, to, msg });
    }

    /// The earliest deadline of any core, with its blade and core.
    fn next_deadline(&self) -> Option<(Duration, usize, usize)> {
        self.nodes
            .iter()
            .enumerate()
            .flat_map(|(b, cores)| {
                cores
                    .iter()
                    .enumerate()
                    .filter_map(move |(c, p)| p.next_deadline().map(|at| (at, b, c)))
            })
            .min()
    }

    /// Fires the timers of core `c` of blade `n` at `at`.
    fn fire(&mut self, at: Duration, n: usize, c: usize) {
        self.release_held();
        self.now = self.now.max(at);
        let mut out = Output::default();
        self.nodes[n][c].handle_timeout(self.now, &mut out);
        self.run(n, c, Event::Output(out));
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        let mut firings = 0;
        while let Some((at, n, c)) = self.next_deadline().filter(|(at, ..)| *at <= end) {
            firings += 1;
            assert!(firings < MAX_FIRINGS, "a timer fires without moving on");
            self.fire(at, n, c);
        }
        self.release_held();
        self.now = end;
    }

    /// News of the link between blades `a` and `b` (`a < b`) reach every
    /// core of both.
    fn peer_news(&mut self, a: usize, b: usize, restart: bool) {
        let k = pair(a, b);
        let (up, epoch) = (self.link_up[k], self.link_epoch[k]);
        for (n, other) in [(a, b), (b, a)] {
            let peer = BLADES[other].0;
            for c in 0..self.cores {
                let mut out = Output::default();
                if up && restart {
                    // The peer came back as a new process.
                    self.nodes[n][c].peer_restarted(self.now, peer, epoch, &mut out);
                } else {
                    self.nodes[n][c].peer_state(self.now, peer, up.then_some(epoch), &mut out);
                }
                self.run(n, c, Event::Output(out));
            }
        }
    }

    fn link(&mut self, input: &mut Input) {
        let (a, b) = match self.nodes.len() {
            0 | 1 => return,
            2 => (0, 1),
            // Only three-blade worlds read which pair.
            _ => [(0, 1), (0, 2), (1, 2)][input.below(3)],
        };
        let restart = input.byte() & 1 != 0;
        let k = pair(a, b);
        self.link_up[k] = !self.link_up[k];
        if self.link_up[k] {
            self.link_epoch[k] += 1;
        }
        self.peer_news(a, b, restart);
    }

    /// Everything ends: the link goes down, time runs past every timer,
    /// and nothing may be left.
    fn finish(&mut self) {
        self.release_held();
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                if self.link_up[pair(a, b)] {
                    self.link_up[pair(a, b)] = false;
                    self.peer_news(a, b, false);
                }
            }
        }
        let mut firings = 0;
        while let Some((at, n, c)) = self.next_deadline() {
            firings += 1;
            assert!(firings < MAX_FIRINGS, "timers never run out");
            self.fire(at, n, c);
        }
        self.release_held();
        for (n, blade) in self.nodes.iter().enumerate() {
            for (c, p) in blade.iter().enumerate() {
                let snap = p.snapshot();
                assert_eq!(
                    p.pending_transactions(),
                    0,
                    "blade {n} core {c}: pending left"
                );
                assert_eq!(
                    snap.transactions, 0,
                    "blade {n} core {c}: transactions left"
                );
                assert!(
                    snap.sessions.is_empty(),
                    "blade {n} core {c}: {:?}",
                    snap.sessions
                );
                for a in &snap.agents {
                    assert!(
                        matches!(a.state, "ready" | "logged_out"),
                        "blade {n} core {c}: {} left {}",
                        a.extension,
                        a.state
                    );
                }
            }
        }
    }

    // ---- building messages ----

    fn next_branch(&mut self) -> String {
        self.branch += 1;
        format!("z9hG4bKh{}", self.branch)
    }

    fn register(&mut self, i: usize, node: usize) {
        let text = self.register_text(i, 3600, 1);
        let source = Peer::udp(terminal(i));
        self.send(node, source, text.render());
        if self.auth {
            // The first was challenged; answer it.
            let text = self.register_text(i, 3600, 2);
            self.send(node, source, text.render());
        }
    }

    fn register_text(&mut self, i: usize, expires: u32, cseq: u32) -> Text {
        let t = terminal(i);
        let ext = EXTS[i];
        let branch = self.next_branch();
        let mut m = Text::request("REGISTER", &format!("sip:{DOMAIN}"));
        m.push("Via", format!("SIP/2.0/UDP {t};branch={branch}"));
        m.push("Max-Forwards", "70".into());
        m.push("From", format!("<sip:{ext}@{DOMAIN}>;tag=r{ext}"));
        m.push("To", format!("<sip:{ext}@{DOMAIN}>"));
        m.push("Call-ID", format!("reg{ext}"));
        m.push("CSeq", format!("{cseq} REGISTER"));
        m.push("Contact", format!("<sip:{ext}@{t}>"));
        m.push("Expires", expires.to_string());
        self.authorize(&mut m, i, t);
        m
    }

    /// Adds the credentials for the last challenge terminal `i` got.
    fn authorize(&mut self, m: &mut Text, i: usize, t: SocketAddr) {
        if !self.auth {
            return;
        }
        let Some((realm, nonce, algorithm)) = self.challenges.get(&t).cloned() else {
            return;
        };
        let method = m.method().to_owned();
        let uri = m.uri().to_owned();
        self.nc += 1;
        let nc = format!("{:08x}", self.nc);
        let creds = Credentials {
            username: EXTS[i],
            realm: &realm,
            nonce: &nonce,
            uri: &uri,
            response: "",
            algorithm: algorithm.as_deref(),
            cnonce: Some("cn"),
            qop: Some("auth"),
            nc: Some(&nc),
            opaque: None,
        };
        let password = format!("pw{}", EXTS[i]);
        let Ok(response) = digest::expected_response(&method, &creds, Secret::Password(&password))
        else {
            return;
        };
        let mut value = format!(
            "Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", cnonce=\"cn\", qop=auth, nc={nc}",
            EXTS[i]
        );
        if let Some(a) = &algorithm {
            let _ = write!(value, ", algorithm={a}");
        }
        let name = if method == "REGISTER" {
            "Authorization"
        } else {
            "Proxy-Authorization"
        };
        m.push(name, value);
    }

    /// Sends `data` and remembers it.
    fn send(&mut self, node: usize, source: Peer, data: Bytes) {
        if self.sent.len() >= SEEN {
            self.sent.remove(0);
        }
        self.sent.push(Sent {
            node,
            source,
            data: data.clone(),
        });
        self.deliver(node, source, data);
    }

    /// Who sends: an agent's phone, a stranger, or a peer blade's address
    /// (blade-2's, or with three blades, blade-2's or blade-3's).
    fn source(&self, input: &mut Input) -> (Option<usize>, Peer) {
        let who = input.below(6);
        let b = input.byte();
        let transport = if b & 0x80 != 0 {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        match who {
            0..=3 => (Some(who), Peer::new(terminal(who), transport)),
            4 => (None, Peer::new(addr(STRANGER), transport)),
            _ => {
                let blade = if self.nodes.len() == 3 && b & 1 != 0 {
                    2
                } else {
                    1
                };
                (None, Peer::new(addr(BLADES[blade].1), transport))
            }
        }
    }

    /// The blade an agent registered with: 1001 and 1002 on the first,
    /// 1003 on the last; with three blades, 100d on blade d; anyone else
    /// on the first.
    fn home_of(&self, who: Option<usize>) -> usize {
        let n = self.nodes.len();
        match who {
            Some(i) if n == 3 && i < 3 => i,
            Some(2) => n - 1,
            _ => 0,
        }
    }

    /// The blade an agent's phone sends to: the one it registered with,
    /// unless the input says otherwise.
    fn home(&self, who: Option<usize>, input: &mut Input) -> usize {
        let home = self.home_of(who);
        let b = input.byte();
        if b & 0x40 != 0 {
            self.another(home, b >> 7)
        } else {
            home
        }
    }

    /// A blade other than `node` (if there is one), the choice `bit`'s
    /// where there are two.
    fn another(&self, node: usize, bit: u8) -> usize {
        match self.nodes.len() {
            3 => (node + 1 + (bit & 1) as usize) % 3,
            n => n - 1 - node,
        }
    }

    fn new_request(&mut self, input: &mut Input) {
        let (who, source) = self.source(input);
        let node = self.home(who, input);
        let from = who.map_or("9999", |i| EXTS[i]);
        let to = EXTS[input.below(EXTS.len())];
        let call = input.below(6);
        let branch = self.next_branch();
        let t = source.addr;
        let kind = input.below(8);
        let mut m = match kind {
            0 => {
                let Some(i) = who else { return };
                let expires = input.pick(&[0, 60, 3600, 1_000_000]);
                let cseq = 3 + input.byte() as u32;
                self.register_text(i, expires, cseq)
            }
            1 => {
                let ruri = input.pick(&[
                    "sip:127.0.0.1:5060",
                    "sip:cc.example",
                    "sip:1002@cc.example",
                ]);
                let mut m = Text::request("OPTIONS", ruri);
                m.dialog(t, &branch, from, "sip:x@cc.example", call, 1, "OPTIONS");
                m
            }
            2 => {
                let mut m = Text::request("MESSAGE", &format!("sip:{to}@{DOMAIN}"));
                m.dialog(
                    t,
                    &branch,
                    from,
                    &format!("sip:{to}@{DOMAIN}"),
                    call,
                    1,
                    "MESSAGE",
                );
                m.body = "hello".into();
                m
            }
            3 | 4 => {
                // Replaces or Join naming a dialog a terminal saw.
                let Some(named) = self.dialog_of(input) else {
                    return;
                };
                let header = if kind == 3 { "Replaces" } else { "Join" };
                let mut m = self.invite(t, &branch, from, to, call);
                let (id, ft, tt) = named;
                let value = match input.below(3) {
                    0 => format!("{id};from-tag={ft};to-tag={tt}"),
                    1 => format!("{id};to-tag={ft};from-tag={tt}"),
                    _ => format!("{id};to-tag={tt};from-tag={ft};early-only"),
                };
                m.push(header, value);
                m
            }
            _ => self.invite(t, &branch, from, to, call),
        };
        if let Some(i) = who {
            if kind != 0 {
                self.authorize(&mut m, i, t);
            }
        }
        mutate(&mut m, input, self);
        self.send(node, source, m.render());
    }

    fn invite(&self, t: SocketAddr, branch: &str, from: &str, to: &str, call: usize) -> Text {
        let mut m = Text::request("INVITE", &format!("sip:{to}@{DOMAIN}"));
        m.dialog(
            t,
            branch,
            from,
            &format!("sip:{to}@{DOMAIN}"),
            call,
            1,
            "INVITE",
        );
        m.push("Contact", format!("<sip:{from}@{t}>"));
        m.push("Content-Type", "application/sdp".into());
        m.body = "v=0\r\n".into();
        m
    }

    /// A dialog (Call-ID, from-tag, to-tag) of a response a terminal saw.
    fn dialog_of(&self, input: &mut Input) -> Option<(String, String, String)> {
        let dialogs: Vec<_> = self
            .seen
            .iter()
            .filter_map(|s| {
                let (ft, tt) = (s.msg.from().tag()?, s.msg.to().tag()?);
                Some((s.msg.call_id().to_owned(), ft.to_owned(), tt.to_owned()))
            })
            .collect();
        if dialogs.is_empty() {
            return None;
        }
        Some(dialogs[input.below(dialogs.len())].clone())
    }

    /// A terminal answers a request the proxy sent it.
    fn respond(&mut self, input: &mut Input) {
        let requests: Vec<usize> = (0..self.seen.len())
            .filter(|&i| self.seen[i].msg.is_request())
            .collect();
        if requests.is_empty() {
            return;
        }
        let s = &self.seen[requests[input.below(requests.len())]];
        let status = input.pick(&[
            100, 180, 183, 200, 200, 200, 202, 302, 404, 407, 486, 487, 491, 500, 503, 603,
        ]);
        let tag = format!("t{}", input.below(3));
        let req = &s.msg;
        let contact = match req.request_uri() {
            Some(u) => format!("<{}>", u.as_str()),
            None => format!("<sip:{}>", s.to),
        };
        let rr: Vec<String> = req
            .record_routes()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .collect();
        let mut extra = vec![("Contact", contact.as_str())];
        extra.extend(rr.iter().map(|r| ("Record-Route", r.as_str())));
        let mut buf = BytesMut::new();
        let to_tag = (status > 100).then_some(tag.as_str());
        req.response(status, "X", to_tag, &extra, &mut buf);
        let (node, to) = (s.node, s.to);
        let Some(mut m) = Text::parse(&buf) else {
            return;
        };
        mutate(&mut m, input, self);
        self.deliver(node, Peer::udp(to), m.render());
    }

    /// A party of a call sends a request within it: the caller after a
    /// response it got, or the callee after the request it got.
    fn in_dialog(&mut self, input: &mut Input) {
        if self.seen.is_empty() {
            return;
        }
        let s = &self.seen[input.below(self.seen.len())];
        let method = input.pick(&[
            "ACK", "BYE", "BYE", "INVITE", "INFO", "UPDATE", "PRACK", "REFER", "NOTIFY",
        ]);
        let msg = &s.msg;
        let Some(contact) = msg.contacts().next().map(|c| c.uri().as_str().to_owned()) else {
            return;
        };
        let mut routes: Vec<String> = msg
            .record_routes()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .collect();
        let header =
            |name| String::from_utf8_lossy(msg.header(name).unwrap_or_default()).into_owned();
        let (from, to, cseq) = if msg.is_request() {
            // The callee, towards the caller: its tag on the To it got.
            let tag = format!("t{}", input.below(3));
            let mut from = header(HeaderName::To);
            if msg.to().tag().is_none() {
                let _ = write!(from, ";tag={tag}");
            }
            (from, header(HeaderName::From), 1 + input.below(4) as u32)
        } else {
            routes.reverse();
            let seq = msg.cseq().seq;
            let seq = if method == "ACK" {
                seq
            } else {
                seq.wrapping_add(1 + input.below(3) as u32)
            };
            (header(HeaderName::From), header(HeaderName::To), seq)
        };
        let call_id = msg.call_id().to_owned();
        let (node, t) = (s.node, s.to);
        let branch = self.next_branch();
        let mut m = Text::request(method, &contact);
        m.push("Via", format!("SIP/2.0/UDP {t};branch={branch}"));
        if !routes.is_empty() {
            m.push("Route", routes.join(", "));
        }
        m.push("Max-Forwards", "70".into());
        m.push("From", from);
        m.push("To", to);
        m.push("Call-ID", call_id);
        m.push("CSeq", format!("{cseq} {method}"));
        m.push("Contact", format!("<sip:{t}>"));
        if method == "REFER" {
            m.push(
                "Refer-To",
                format!("<sip:1004@{DOMAIN}?Replaces=x%3Bto-tag%3Da%3Bfrom-tag%3Db>"),
            );
        }
        mutate(&mut m, input, self);
        self.deliver(node, Peer::udp(t), m.render());
    }

    /// A request sent before, again: as it was, or as its CANCEL or
    /// hop-by-hop ACK (To tag from a response the sender got).
    fn resend(&mut self, input: &mut Input) {
        if self.sent.is_empty() {
            return;
        }
        let s = &self.sent[input.below(self.sent.len())];
        let (node, source, data) = (s.node, s.source, s.data.clone());
        let b = input.byte();
        let node = if b & 1 != 0 {
            self.another(node, b >> 1)
        } else {
            node
        };
        let Some(mut m) = Text::parse(&data) else {
            return self.deliver(node, source, data);
        };
        match input.below(3) {
            0 => {}
            op => {
                let method = if op == 1 { "CANCEL" } else { "ACK" };
                let seq = m
                    .get("CSeq")
                    .and_then(|c| c.split(' ').next())
                    .unwrap_or("1")
                    .to_owned();
                m.set_method(method);
                m.set("CSeq", format!("{seq} {method}"));
                m.body.clear();
                m.remove("Content-Type");
                if method == "ACK" {
                    let call_id = m.get("Call-ID").unwrap_or_default().to_owned();
                    let to = self
                        .seen
                        .iter()
                        .rev()
                        .find(|x| {
                            x.to == source.addr
                                && x.msg.call_id() == call_id
                                && x.msg.to().tag().is_some()
                        })
                        .map(|x| {
                            String::from_utf8_lossy(
                                x.msg.header(HeaderName::To).unwrap_or_default(),
                            )
                            .into_owned()
                        });
                    if let Some(to) = to {
                        m.set("To", to);
                    }
                }
            }
        }
        mutate(&mut m, input, self);
        self.deliver(node, source, m.render());
    }

    /// Raw bytes from the input, from anyone.
    fn raw(&mut self, input: &mut Input) {
        let (_, source) = self.source(input);
        let node = input.below(self.nodes.len());
        let len = input.byte() as usize * 4;
        let data = Bytes::copy_from_slice(input.take(len));
        self.deliver(node, source, data);
    }

    /// A value the proxy emitted, of one of these kinds, for a mutation.
    fn seen_value(&self, input: &mut Input, what: u8) -> Option<String> {
        if self.seen.is_empty() {
            return None;
        }
        let msg = &self.seen[input.below(self.seen.len())].msg;
        Some(match what {
            0 => msg.top_via().branch()?.to_owned(),
            1 => msg.to().tag().or(msg.from().tag())?.to_owned(),
            _ => msg.call_id().to_owned(),
        })
    }
}

/// How many pairs of blades `blades` make, so how many links.
fn pairs(blades: usize) -> usize {
    blades * blades.saturating_sub(1) / 2
}

/// The index of the link between blades `a` and `b` (in either order).
fn pair(a: usize, b: usize) -> usize {
    let (a, b) = (a.min(b), a.max(b));
    // (0, 1) → 0, (0, 2) → 1, (1, 2) → 2.
    a + b - 1
}

/// The index of the blade named `id`.
fn blade_of(id: &str) -> Option<usize> {
    BLADES.iter().position(|(b, _)| *b == id)
}

/// Whether `data` is the answer to a request that failed to parse.
fn best_effort(data: &[u8]) -> bool {
    [
        &b"SIP/2.0 400 Bad Request ("[..],
        b"SIP/2.0 505 ",
        b"SIP/2.0 513 ",
    ]
    .iter()
    .any(|start| data.starts_with(start))
}

/// Hostile header values.
const VALUES: &[&str] = &[
    "",
    "0",
    "-1",
    "4294967295",
    "4294967296",
    "18446744073709551616",
    "*",
    "<sip:1001@cc.example>",
    "<sip:127.0.0.1:5060;lr;sbc=0>",
    "<sip:127.0.0.2:5060;lr>",
    "<sip:127.0.0.1:5060;lr;sbc=99999999999999999999>",
    "sip:x@[::1]:0",
    "<tel:+15551234>",
    "c0;from-tag=f;to-tag=t",
    "c0;from-tag=;to-tag=",
    "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsb-0-0",
    "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKsb0x0",
    "SIP/2.0/TCP 127.0.0.2:5060;branch=z9hG4bKsb1x1",
    "Digest username=\"1001\", realm=\"cc.example\", nonce=\"x\", uri=\"sip:cc.example\", response=\"0\"",
    "1 INVITE",
    "2 BYE",
    "0 ACK",
    "100rel, timer, replaces, join",
    "application/sdp",
];

/// `value`, or with three blades, as the input picks, naming blade-3
/// where it names blade-2 (only three-blade worlds read the choice).
fn third(w: &World, input: &mut Input, value: &str) -> String {
    const TWO: &str = "127.0.0.2:5060";
    if w.nodes.len() == 3 && value.contains(TWO) && input.byte() & 1 != 0 {
        value.replace(TWO, "127.0.0.3:5060")
    } else {
        value.to_owned()
    }
}

/// A few mutations chosen by the input.
fn mutate(m: &mut Text, input: &mut Input, w: &World) {
    let count = input.byte();
    // Most messages go out as built: a valid call is the productive case.
    let count = match count {
        0..=127 => 0,
        128..=223 => 1,
        _ => 1 + (count as usize % 4),
    };
    for _ in 0..count {
        let n = m.headers.len().max(1);
        match input.below(16) {
            0 => {
                let i = input.below(n);
                if i < m.headers.len() {
                    m.headers.remove(i);
                }
            }
            1 => {
                let i = input.below(n);
                if let Some(h) = m.headers.get(i).cloned() {
                    m.headers.insert(i, h);
                }
            }
            2 => {
                let i = input.below(n);
                let v = input.pick(VALUES);
                let v = third(w, input, v);
                if let Some(h) = m.headers.get_mut(i) {
                    h.1 = v;
                }
            }
            3 => {
                let (i, j) = (input.below(n), input.below(n));
                if i < m.headers.len() && j < m.headers.len() {
                    m.headers.swap(i, j);
                }
            }
            4 => {
                if m.start.starts_with("SIP/2.0") {
                    let status: u16 =
                        input.pick(&[100, 101, 180, 199, 200, 299, 300, 401, 407, 481, 487, 699]);
                    m.start = format!("SIP/2.0 {status} X");
                } else {
                    let method = input.pick(&[
                        "INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "PRACK", "UPDATE",
                        "FOO",
                    ]);
                    m.set_method(method);
                    if input.byte() & 1 != 0 {
                        let seq = m
                            .get("CSeq")
                            .and_then(|c| c.split(' ').next())
                            .unwrap_or("1")
                            .to_owned();
                        m.set("CSeq", format!("{seq} {method}"));
                    }
                }
            }
            5 => {
                let seq =
                    input.pick(&["0", "1", "2", "7", "4294967295", "4294967296", "2147483648"]);
                let method = m
                    .get("CSeq")
                    .and_then(|c| c.split(' ').nth(1))
                    .unwrap_or("INVITE")
                    .to_owned();
                m.set("CSeq", format!("{seq} {method}"));
            }
            6 => {
                let method = input.pick(&["INVITE", "ACK", "BYE", "CANCEL", "REGISTER"]);
                let seq = m
                    .get("CSeq")
                    .and_then(|c| c.split(' ').next())
                    .unwrap_or("1")
                    .to_owned();
                m.set("CSeq", format!("{seq} {method}"));
            }
            7 => m.set(
                "Max-Forwards",
                input.pick(&["0", "1", "2", "255", "256"]).into(),
            ),
            8 => {
                let len = m.body.len();
                let v = match input.below(4) {
                    0 => len.saturating_sub(1).to_string(),
                    1 => (len + 1).to_string(),
                    2 => "0".into(),
                    _ => "99999".into(),
                };
                m.set("Content-Length", v);
            }
            9 => {
                let route = input.pick(&[
                    "<sip:127.0.0.1:5060;lr>",
                    "<sip:127.0.0.1:5060;lr;sbc=0>",
                    "<sip:127.0.0.1:5060;lr;sbc=5>",
                    "<sip:127.0.0.1:5060;lr;transport=tcp>",
                    "<sip:127.0.0.2:5060;lr>",
                    "<sip:198.51.100.7:5060;lr>",
                    "<sip:127.0.0.11:5001;lr>",
                    "<sip:127.0.0.1:5060>",
                ]);
                let route = third(w, input, route);
                let i = input.below(n + 1).min(m.headers.len());
                m.headers.insert(i, ("Route".into(), route));
            }
            10 => {
                let branch = w.seen_value(input, 0).unwrap_or_else(|| "z9hG4bK".into());
                if let Some(via) = m.get("Via").map(str::to_owned) {
                    let keep = via.split(";branch=").next().unwrap_or_default().to_owned();
                    let v = match input.below(3) {
                        0 => format!("{keep};branch={branch}"),
                        1 => keep,
                        _ => format!("{keep};branch=z9hG4bKh{}", input.below(8)),
                    };
                    m.set("Via", v);
                }
            }
            11 => {
                let tag = w.seen_value(input, 1).unwrap_or_else(|| "t0".into());
                let name = if input.byte() & 1 != 0 { "To" } else { "From" };
                if let Some(v) = m.get(name).map(str::to_owned) {
                    let keep = v.split(";tag=").next().unwrap_or_default().to_owned();
                    let v = if input.byte() & 1 != 0 {
                        keep
                    } else {
                        format!("{keep};tag={tag}")
                    };
                    m.set(name, v);
                }
            }
            12 => {
                let id = match w.seen_value(input, 2) {
                    Some(id) if input.byte() & 1 != 0 => id,
                    _ => format!("c{}", input.below(6)),
                };
                m.set("Call-ID", id);
            }
            13 => {
                if !m.start.starts_with("SIP/2.0") {
                    let uri = input.pick(&[
                        "sip:1001@cc.example",
                        "sip:1002@cc.example",
                        "sip:1003@cc.example",
                        "sip:1004@cc.example",
                        "sip:1002@127.0.0.1:5060",
                        "sip:1003@127.0.0.2:5060;sbh=AAAA",
                        "sip:1002@cc.example;sbh=",
                        "sip:1002@127.0.0.12:5002",
                        "sip:127.0.0.1:5060",
                        "sip:nobody@elsewhere.example",
                        "sips:1002@cc.example",
                        "tel:1002",
                    ]);
                    let uri = third(w, input, uri);
                    let method = m.method().to_owned();
                    m.start = format!("{method} {uri} SIP/2.0");
                }
            }
            14 => {
                m.flip = Some((
                    input.byte() as usize * 7 + input.byte() as usize,
                    input.byte(),
                ))
            }
            _ => {
                let (name, value) = input.pick(&[
                    ("Require", "100rel"),
                    ("Proxy-Require", "foo"),
                    ("Supported", "replaces"),
                    ("Replaces", "c0;to-tag=t0;from-tag=f1001"),
                    ("Join", "c0;to-tag=t0;from-tag=f1001"),
                    ("Join", "garbage"),
                    ("Expires", "0"),
                    ("Contact", "*"),
                    ("Contact", "<sip:1001@127.0.0.1:5060>"),
                    ("Record-Route", "<sip:127.0.0.2:5060;lr>"),
                    ("Via", "SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bKsb1x2"),
                    ("Route", "<sip:127.0.0.1:5060;lr>, <sip:127.0.0.2:5060;lr>"),
                    ("Content-Length", "5"),
                    ("Max-Forwards", "70"),
                ]);
                let value = third(w, input, value);
                let i = input.below(n + 1).min(m.headers.len());
                m.headers.insert(i, (name.into(), value));
            }
        }
    }
}

/// A SIP message as editable text: start line, headers, body.
struct Text {
    start: String,
    headers: Vec<(String, String)>,
    body: String,
    /// One byte of the rendered message XORed: (offset, mask).
    flip: Option<(usize, u8)>,
}

impl Text {
    fn request(method: &str, uri: &str) -> Text {
        Text {
            start: format!("{method} {uri} SIP/2.0"),
            headers: Vec::new(),
            body: String::new(),
            flip: None,
        }
    }

    /// Splits a message the proxy emitted (or the harness built).
    fn parse(data: &[u8]) -> Option<Text> {
        let text = std::str::from_utf8(data).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let mut lines = head.split("\r\n");
        let start = lines.next()?.to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .filter(|(name, _)| !name.trim().eq_ignore_ascii_case("Content-Length"))
            .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
            .collect();
        Some(Text {
            start,
            headers,
            body: body.to_owned(),
            flip: None,
        })
    }

    /// From, To, Call-ID, CSeq, Via and Max-Forwards of a new request.
    #[allow(clippy::too_many_arguments)]
    fn dialog(
        &mut self,
        t: SocketAddr,
        branch: &str,
        from: &str,
        to: &str,
        call: usize,
        cseq: u32,
        method: &str,
    ) {
        self.push("Via", format!("SIP/2.0/UDP {t};branch={branch}"));
        self.push("Max-Forwards", "70".into());
        self.push("From", format!("<sip:{from}@{DOMAIN}>;tag=f{from}"));
        self.push("To", format!("<{to}>"));
        self.push("Call-ID", format!("c{call}"));
        self.push("CSeq", format!("{cseq} {method}"));
    }

    fn method(&self) -> &str {
        self.start.split(' ').next().unwrap_or_default()
    }

    fn uri(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or_default()
    }

    fn set_method(&mut self, method: &str) {
        let rest = self.start.split_once(' ').map_or("", |(_, r)| r).to_owned();
        self.start = format!("{method} {rest}");
    }

    fn push(&mut self, name: &str, value: String) {
        self.headers.push((name.into(), value));
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets the first header `name`, or adds one.
    fn set(&mut self, name: &str, value: String) {
        match self
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(h) => h.1 = value,
            None => self.push(name, value),
        }
    }

    fn remove(&mut self, name: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    fn render(&self) -> Bytes {
        let mut s = String::with_capacity(512);
        s.push_str(&self.start);
        s.push_str("\r\n");
        for (name, value) in &self.headers {
            let _ = write!(s, "{name}: {value}\r\n");
        }
        if self.get("Content-Length").is_none() {
            let _ = write!(s, "Content-Length: {}\r\n", self.body.len());
        }
        s.push_str("\r\n");
        s.push_str(&self.body);
        let mut data = s.into_bytes();
        if let Some((at, mask)) = self.flip {
            if !data.is_empty() {
                let at = at % data.len();
                data[at] ^= mask;
            }
        }
        Bytes::from(data)
    }
}
