//! The transaction-stateful proxy of one core (RFC 3261 §16), sans-IO.
//!
//! A message and the time go in ([`Proxy::handle_datagram`],
//! [`Proxy::handle_message`], [`Proxy::handle_timeout`]); datagrams to send
//! and notices for other cores come out in an [`Output`]. The phases of a
//! request:
//!
//! ```text
//! request ──► matches a server transaction? ── yes ─► retransmission / ACK / CANCEL
//!                │ no
//!                ▼
//!          checks: Proxy-Require (420), Max-Forwards (483), overload (503)
//!                ▼
//!          Route names us? pop it ── in dialog ─► forward along Route / R-URI
//!                ▼ out of dialog
//!          REGISTER ─► registrar        OPTIONS to the blade ─► 200
//!                ▼
//!          caller allowed? (407 / 403)  callee: 404 / 480 / 486
//!                ▼
//!          forward to the callee's binding: new Via, Record-Route, 100 Trying
//! ```
//!
//! Each core owns the agents whose extension hashes to it
//! ([`route::owner_core`]), the calls to them, and their transactions.

mod calls;
pub mod cross;
mod join;
pub mod metrics;
pub mod route;
pub mod session;

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use slab::Slab;

use crate::config::Agent;
use crate::registrar::location::{AgentState, Binding};
use crate::registrar::{self, Challenger, Outcome, Refusal, Registrar};
use crate::sip::edit::{Forward, best_effort_response};
use crate::sip::{Message, Method, Scheme};
use crate::transaction::client::{ClientEvent, ClientState, ClientTx};
use crate::transaction::server::ServerTx;
use crate::transaction::timers::TimerQueue;
use crate::transaction::{Peer, TimerConfig, Transmit};
use cross::{Cluster, ClusterSend, ClusterSettings, Waiting};
pub use metrics::Metrics;
use route::{BRANCH_PREFIX, CORE_PARAM};
use session::Sessions;

/// How long an INVITE may ring before the proxy gives up (timer C,
/// RFC 3261 §16.6 step 11: more than 3 minutes).
pub const TIMER_C: Duration = Duration::from_secs(181);

/// The largest request sent to a peer blade over UDP: a larger one goes
/// over TCP (RFC 3261 §18.1.1: within 200 bytes of a 1500-byte path MTU,
/// or over 1300 bytes when the MTU is unknown). Agents' terminals keep
/// UDP, since not every phone listens on TCP.
pub const UDP_MAX_TO_BLADES: usize = 1300;

/// The largest UDP payload over IPv4 (65,535 less the IP and UDP headers).
/// A request for an agent on UDP that grows past it when forwarded cannot
/// be sent: the caller gets 513 at once rather than 408 after timer B.
pub const UDP_MAX_PAYLOAD: usize = 65_507;

/// How many times `max_transactions` the table may hold in all, answered
/// ones included, before new requests are refused (a memory bound).
pub const LINGER_FACTOR: usize = 8;

/// A proxy core's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The blade's id.
    pub blade_id: String,
    /// The SIP domain.
    pub domain: String,
    /// The blade's SIP address (Via sent-by and Record-Route).
    pub local: SocketAddr,
    /// Whether out-of-dialog requests from agents are challenged.
    pub auth: bool,
    /// This core's index.
    pub core: usize,
    /// How many cores share the work.
    pub cores: usize,
    /// RFC 3261 timers.
    pub timers: TimerConfig,
    /// Transactions awaiting their final response that this core holds
    /// before it answers 503. Answered transactions linger (up to 64×T1
    /// to absorb retransmissions) without counting; all of them together
    /// are bounded by [`LINGER_FACTOR`] times this.
    pub max_transactions: usize,
    /// The other blades, when this blade is part of a cluster.
    pub cluster: Option<ClusterSettings>,
    /// How long a session may last without a BYE (`blade.max_call_secs`):
    /// then it ends here as if hung up, so a lost BYE strands no agent.
    pub max_call: Duration,
    /// The UDP port this core's Vias and UDP Record-Routes name, so that
    /// responses to the requests it forwards, and the later requests of
    /// the dialogs it owns, come straight back to it rather than to
    /// whichever core the kernel picks; `None` for the SIP port.
    pub via_port: Option<u16>,
}

/// What one step of the proxy produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Datagrams and stream messages to send.
    pub transmits: Vec<Transmit>,
    /// Agent events for other cores.
    pub notices: Vec<Notice>,
    /// Messages for the inter-blade link.
    pub cluster: Vec<ClusterSend>,
    /// Join INVITEs for sessions another core owns
    /// ([`Proxy::handle_join_handoff`] there).
    pub handoffs: Vec<Handoff>,
}

/// A request handed to the core that owns the session it names, or the
/// transaction it belongs to.
#[derive(Debug)]
pub struct Handoff {
    /// That core.
    pub core: usize,
    /// Where the request came from.
    pub source: Peer,
    /// The request.
    pub msg: Message,
    /// A Join INVITE, checked here ([`Proxy::handle_join_handoff`]); else
    /// a request of a transaction handed over before (its retransmission,
    /// ACK or CANCEL), for [`Proxy::handle_message`].
    pub join: bool,
}

/// An agent event addressed to one or all other cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The core to tell; `None` for every other core.
    pub to: Option<usize>,
    /// What happened.
    pub event: AgentEvent,
}

/// Agent events that cross cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// The agent registered (every core learns it may place calls).
    LoggedIn(String),
    /// The agent's registration ended.
    LoggedOut(String),
    /// The agent (owned by the receiving core) joined a call.
    InCall {
        /// The agent.
        extension: String,
        /// The call.
        call_id: String,
        /// The core that owns the call's session (where a Join for it goes).
        session_core: usize,
    },
    /// The agent (owned by the receiving core) left a call.
    Free {
        /// The agent.
        extension: String,
        /// The call.
        call_id: String,
    },
}

/// An agent's state as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    /// Badge number.
    pub badge: String,
    /// Extension.
    pub extension: String,
    /// `agent` or `supervisor`.
    pub kind: &'static str,
    /// `logged_out`, `ready`, `in_call` or `hosted`.
    pub state: &'static str,
    /// The hosting blade while hosted.
    pub hosted_by: Option<String>,
    /// The registered contact address.
    pub contact: Option<SocketAddr>,
}

/// A session as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    /// The Call-ID.
    pub call_id: String,
    /// Extensions of the agents in it.
    pub agents: Vec<String>,
    /// Extensions of hosted agents.
    pub hosted: Vec<String>,
}

/// A core's share of `/status` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The agents this core owns.
    pub agents: Vec<AgentStatus>,
    /// The sessions this core owns.
    pub sessions: Vec<SessionStatus>,
    /// Counters.
    pub metrics: Metrics,
    /// Live transactions.
    pub transactions: usize,
}

/// Server transaction key (RFC 3261 §17.2.3): the branch and the method,
/// ACK matching its INVITE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ServerKey {
    branch: Bytes,
    method: Method,
}

impl ServerKey {
    fn of(msg: &Message) -> ServerKey {
        let method = match msg.method() {
            Some(Method::Ack) | None => Method::Invite,
            Some(m) => m,
        };
        let via = msg.top_via();
        let branch = match via.branch() {
            Some(b) if via.is_rfc3261_branch() => msg.buffer().slice_ref(b.as_bytes()),
            // RFC 2543 peers: identify the transaction by what they keep
            // constant instead (§17.2.3 fallback, simplified).
            _ => Bytes::from(format!(
                "2543|{}|{}|{}|{}",
                msg.call_id(),
                msg.cseq().seq,
                msg.from().tag().unwrap_or_default(),
                String::from_utf8_lossy(via.as_bytes())
            )),
        };
        ServerKey { branch, method }
    }
}

/// A server transaction and the client transaction it forwarded to.
struct TxPair {
    generation: u32,
    key: ServerKey,
    /// The request as received, kept until the server transaction sends a
    /// final response (a 408 or a CANCEL may still need it), then dropped.
    request: Option<Message>,
    invite: bool,
    /// An INVITE that opens a dialog (no To tag): how it ends is the
    /// call's outcome. A re-INVITE's is not: a 491 or 488 to it, or its
    /// timeout, leaves the call up until its BYE.
    call: bool,
    call_id: Box<str>,
    server: ServerTx,
    client: Option<Client>,
    /// INVITE: the CANCEL we sent downstream, or that one is due once a
    /// provisional arrives (§9.1).
    cancel: Option<ClientTx>,
    cancel_pending: bool,
    /// INVITE: timer C.
    ringing_until: Option<Duration>,
    /// Held for the cluster: a host grant, or a hosting blade's verdict.
    waiting: Option<Waiting>,
}

struct Client {
    tx: ClientTx,
    branch: Bytes,
    /// The method sent: a response matches only with it in its CSeq
    /// (RFC 3261 §17.1.3), not by branch alone.
    method: Method,
}

impl TxPair {
    fn deadline(&self) -> Option<Duration> {
        [
            self.server.deadline(),
            self.client.as_ref().and_then(|c| c.tx.deadline()),
            self.cancel.as_ref().and_then(|c| c.deadline()),
            self.ringing_until,
            self.waiting.as_ref().and_then(Waiting::deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn is_done(&self) -> bool {
        self.server.is_terminated()
            && self.client.as_ref().is_none_or(|c| c.tx.is_terminated())
            && self.cancel.as_ref().is_none_or(|c| c.is_terminated())
    }
}

/// The methods sipblade handles, for Allow in answers to the blade itself.
const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO, UPDATE, PRACK, MESSAGE, REFER, NOTIFY, SUBSCRIBE";

/// One core's proxy.
pub struct Proxy {
    settings: Settings,
    registrar: Registrar,
    agents: Arc<HashMap<String, Arc<Agent>>>,
    /// Agents owned by other cores that are logged in (from notices).
    logged_in_elsewhere: HashSet<String>,
    /// Calls of this core's agents whose sessions other cores own, by
    /// Call-ID: where a Join for them goes.
    remote_sessions: HashMap<String, usize>,
    /// INVITE transactions handed to another core (a Join for a session it
    /// owns), and until when: their later requests go there too.
    handed_off: HashMap<ServerKey, (usize, Duration)>,
    /// Transaction pairs; their slab keys index the maps below and the
    /// timer queue.
    txs: Slab<TxPair>,
    /// Server transactions by key. ahash: fast, and keyed randomly per
    /// process, so peers cannot flood a bucket with chosen branches.
    by_server: HashMap<ServerKey, usize, ahash::RandomState>,
    by_client: HashMap<(Bytes, bool), usize, ahash::RandomState>,
    timers: TimerQueue,
    /// Numbers the branches this core generates; never reused, unlike slab
    /// keys, so a late response cannot match a newer transaction.
    next_branch: u64,
    /// Stamps each timer arming; a queue entry whose stamp is not the
    /// pair's current one is stale.
    next_generation: u32,
    sessions: Sessions,
    metrics: Metrics,
    sent_by: String,
    /// The sent-by of UDP Vias: this core's own port.
    udp_sent_by: String,
    /// Our Record-Route for requests that stay on a stream transport.
    record_route: String,
    /// Our Record-Route for requests that stay on UDP: it names this
    /// core's own port, so the dialog's later requests (ACK, BYE, re-INVITE)
    /// arrive on the core that owns the dialog instead of being handed
    /// over from whichever core the kernel picked.
    udp_record_route: String,
    /// Stopping: new out-of-dialog requests are refused with 503.
    draining: bool,
    /// Reused to format the Via of each forwarded request.
    via_scratch: String,
    /// Hosting state, when this blade has peers.
    cluster: Option<Cluster>,
    /// Transactions whose request still awaits a final response.
    pending: usize,
    /// Searches Via lines for a sipblade branch (built once: a searcher's
    /// setup is not free, and every request runs loop detection).
    branch_finder: memchr::memmem::Finder<'static>,
}

impl Proxy {
    /// A proxy core. `registrar` owns this core's agents; `agents` is every
    /// provisioned agent (read-only, shared by all cores).
    pub fn new(
        settings: Settings,
        registrar: Registrar,
        agents: Arc<HashMap<String, Arc<Agent>>>,
    ) -> Self {
        let sent_by = settings.local.to_string();
        let udp_sent_by = match settings.via_port {
            Some(port) => SocketAddr::new(settings.local.ip(), port).to_string(),
            None => sent_by.clone(),
        };
        let record_route = format!("<sip:{sent_by};lr;{CORE_PARAM}={}>", settings.core);
        let udp_record_route = format!("<sip:{udp_sent_by};lr;{CORE_PARAM}={}>", settings.core);
        let cluster = settings
            .cluster
            .as_ref()
            .map(|c| Cluster::new(c, settings.core));
        Proxy {
            settings,
            registrar,
            agents,
            logged_in_elsewhere: HashSet::new(),
            remote_sessions: HashMap::new(),
            handed_off: HashMap::new(),
            txs: Slab::new(),
            by_server: HashMap::default(),
            by_client: HashMap::default(),
            timers: TimerQueue::new(),
            next_branch: 0,
            next_generation: 0,
            sessions: Sessions::default(),
            metrics: Metrics::default(),
            sent_by,
            udp_sent_by,
            record_route,
            udp_record_route,
            draining: false,
            via_scratch: String::with_capacity(128),
            cluster,
            pending: 0,
            branch_finder: memchr::memmem::Finder::new(BRANCH_PREFIX.as_bytes()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The registrar of this core's agents.
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The number of live transactions.
    pub fn transactions(&self) -> usize {
        self.txs.len()
    }

    /// Transactions still waiting for a final response: the work a
    /// stopping blade lets finish.
    pub fn pending_transactions(&self) -> usize {
        self.pending
    }

    /// Counts a message dropped as malformed before it reached the proxy (a
    /// stream whose framing broke: the connection is closed).
    pub fn note_malformed(&mut self) {
        self.metrics.malformed += 1;
    }

    /// Counts a TCP connection closed as soon as it was accepted: the
    /// core already held as many as it may.
    pub fn note_tcp_refused(&mut self) {
        self.metrics.tcp_refused += 1;
    }

    /// Counts a TCP connection closed because it delivered no message in
    /// time, or stalled in the middle of one.
    pub fn note_tcp_timed_out(&mut self) {
        self.metrics.tcp_timed_out += 1;
    }

    /// Counts a message received here for another core and handed over.
    pub fn note_handoff(&mut self) {
        self.metrics.handoffs += 1;
    }

    /// Starts or stops refusing new out-of-dialog requests (503), for a
    /// graceful stop.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// This core's agents and sessions, for `/status`.
    pub fn snapshot(&self) -> Snapshot {
        let agents = self
            .registrar
            .location()
            .iter()
            .map(|r| AgentStatus {
                badge: r.badge().to_owned(),
                extension: r.extension().to_owned(),
                kind: r.kind().as_str(),
                state: r.state.as_str(),
                hosted_by: match &r.state {
                    AgentState::Hosted { by } => Some(by.clone()),
                    _ => None,
                },
                contact: r.binding.as_ref().map(|b| b.peer.addr),
            })
            .collect();
        // Join legs show as part of the session they joined.
        let sessions = self
            .sessions
            .iter()
            .filter(|(_, s)| s.joins.is_none())
            .map(|(call_id, s)| {
                let mut status = SessionStatus {
                    call_id: call_id.to_owned(),
                    agents: Vec::new(),
                    hosted: Vec::new(),
                };
                let legs =
                    std::iter::once(s).chain(s.joined.iter().filter_map(|j| self.sessions.get(j)));
                for leg in legs {
                    for party in [&leg.caller, &leg.callee] {
                        if leg.has_party(party) && !status.agents.contains(party) {
                            status.agents.push(party.clone());
                        }
                    }
                    if let Some(h) = leg.hosted.as_ref().filter(|h| leg.has_party(&h.extension)) {
                        status.hosted.push(h.extension.clone());
                    }
                }
                status
            })
            .collect();
        Snapshot {
            agents,
            sessions,
            metrics: self.metrics.clone(),
            transactions: self.txs.len(),
        }
    }

    /// The next time [`Proxy::handle_timeout`] has work.
    pub fn next_deadline(&self) -> Option<Duration> {
        let expiry = self.registrar.location().next_expiry();
        let cluster = self.cluster.as_ref().and_then(Cluster::next_deadline);
        let sessions = self.sessions.next_expiry();
        [self.timers.next_deadline(), expiry, cluster, sessions]
            .into_iter()
            .flatten()
            .min()
    }

    /// Handles a datagram (or stream frame) from `source`.
    pub fn handle_datagram(&mut self, now: Duration, source: Peer, data: Bytes, out: &mut Output) {
        match Message::parse(data.clone()) {
            Ok(msg) => self.handle_message(now, source, msg, out),
            // A keep-alive (RFC 5626 §4.4.1 sends CRLFs; phones do so over
            // UDP too): nothing to answer, nothing wrong.
            Err(_) if data.iter().all(|&b| b == b'\r' || b == b'\n') => {}
            Err(err) => {
                self.metrics.malformed += 1;
                if let Some(data) = malformed_response(&data, &err, source.addr) {
                    out.transmits.push(Transmit { to: source, data });
                }
            }
        }
    }

    /// Handles a parsed message from `source`.
    pub fn handle_message(&mut self, now: Duration, source: Peer, msg: Message, out: &mut Output) {
        if msg.is_request() {
            self.handle_request(now, source, msg, out);
        } else {
            self.handle_response(now, msg, out);
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Duration, out: &mut Output) {
        for ext in self.registrar.expire(now) {
            self.announce_logout(&ext, out);
            out.notices.push(Notice {
                to: None,
                event: AgentEvent::LoggedOut(ext),
            });
        }
        self.cluster_timeout(now, out);
        while let Some(call_id) = self.sessions.pop_expired(now) {
            tracing::warn!(%call_id, "session outlived max_call_secs without a BYE: ended");
            self.metrics.sessions_expired += 1;
            self.expire_session(now, &call_id, out);
        }
        while let Some((id, generation)) = self.timers.pop_due(now) {
            let id = id as usize;
            let Some(pair) = self.txs.get_mut(id) else {
                continue;
            };
            if pair.generation != generation {
                continue;
            }
            pair.server.on_timeout(now, &mut out.transmits);
            let mut timed_out = false;
            if let Some(client) = pair.client.as_mut() {
                timed_out =
                    client.tx.on_timeout(now, &mut out.transmits) == Some(ClientEvent::Timeout);
            }
            if let Some(cancel) = pair.cancel.as_mut() {
                cancel.on_timeout(now, &mut out.transmits);
            }
            if pair.ringing_until.is_some_and(|at| at <= now) {
                pair.ringing_until = None;
                timed_out = true;
                send_cancel(now, self.settings.timers, pair, &mut out.transmits);
            }
            if let Some(Waiting::Redirect { request_id, until }) = pair.waiting {
                if until <= now {
                    // The hosting blade never answered: the agent is hosted,
                    // so it is busy (SPEC §2 step 6).
                    pair.waiting = None;
                    if let Some(c) = self.cluster.as_mut() {
                        c.awaiting_redirect.remove(&request_id);
                    }
                    self.metrics.local.busy += 1;
                    self.answer_pending(now, id, 486, out);
                }
            }
            let Some(pair) = self.txs.get(id) else {
                continue;
            };
            if timed_out && !pair.server.is_final() {
                self.fail_pending(now, id, 408, out);
            }
            self.reschedule(id);
        }
    }

    fn handle_request(&mut self, now: Duration, source: Peer, mut msg: Message, out: &mut Output) {
        // What we forward or answer tells the sender where we saw it.
        msg.stamp_top_via(source.addr);
        let method = msg.method().unwrap_or(Method::Other);
        let key = ServerKey::of(&msg);
        if let Some(&id) = self.by_server.get(&key) {
            if let Some(pair) = self.txs.get_mut(id) {
                if method == Method::Ack {
                    pair.server.on_ack(now);
                } else {
                    pair.server.on_retransmission(&mut out.transmits);
                }
            }
            self.reschedule(id);
            return;
        }
        if !self.handed_off.is_empty() {
            let invite_key = ServerKey {
                method: Method::Invite,
                ..key.clone()
            };
            if let Some(&(core, until)) = self.handed_off.get(&invite_key) {
                if until > now {
                    out.handoffs.push(Handoff {
                        core,
                        source,
                        msg,
                        join: false,
                    });
                    return;
                }
            }
        }
        match method {
            Method::Ack => return self.forward_ack(&msg, out),
            Method::Cancel => return self.handle_cancel(now, source, &msg, out),
            _ => {}
        }
        if let Some(refusal) = Refusal::unsupported(msg.proxy_require()) {
            return self.refuse(now, source, msg, &refusal, out);
        }
        let new_call = msg.to().tag().is_none();
        let max = self.settings.max_transactions;
        // In-dialog requests pass the pending bound: a BYE refused under
        // load would leave its call, and both agents, up. Only the memory
        // bound refuses them.
        let busy = new_call && (self.pending >= max || self.draining);
        if busy || self.txs.len() >= max.saturating_mul(LINGER_FACTOR) {
            self.metrics.overloaded += 1;
            if let Some(data) = overload_response(&msg) {
                out.transmits.push(Transmit {
                    to: route::response_peer(source),
                    data,
                });
            }
            return;
        }

        // Loose routing (§16.4): top Routes naming us are ours to remove.
        let ours = self.our_routes(&msg);
        let next_route = msg
            .routes()
            .nth(ours)
            .and_then(|r| route::uri_peer(&r.uri()));
        if msg.max_forwards() == Some(0) && !(method == Method::Options && self.is_to_blade(&msg)) {
            return self.refuse(now, source, msg, &Refusal::new(483, "Too Many Hops"), out);
        }
        if self.is_loop(&msg) {
            return self.refuse(now, source, msg, &Refusal::new(482, "Loop Detected"), out);
        }
        if let Some(peer) = next_route.filter(|_| msg.to().tag().is_none()) {
            // A route set preloaded by the sender (RFC 3261 §8.1.2) may
            // lead to the other blades only: a front end is no open relay,
            // and an out-of-dialog request routed past the agents' checks
            // must not leave the cluster.
            if !self.is_peer_blade_sip(peer.addr) {
                let outside = Refusal::new(403, "Forbidden (Route outside the cluster)");
                return self.refuse(now, source, msg, &outside, out);
            }
        }
        if msg.to().tag().is_some() || next_route.is_some() {
            return self.forward_in_dialog(now, source, msg, ours, next_route, out);
        }
        if method == Method::Register {
            return self.handle_register(now, source, msg, out);
        }
        if method == Method::Options && self.is_to_blade(&msg) {
            // The blade is the UAS here, and supports no extension a
            // request may require (RFC 3261 §8.2.2.3).
            let answer = Refusal::unsupported(msg.require())
                .unwrap_or_else(|| Refusal::new(200, "OK").with("Allow", ALLOW.to_owned()));
            return self.refuse(now, source, msg, &answer, out);
        }
        if method == Method::Other && self.is_to_blade(&msg) {
            // A method the blade does not know, addressed to the blade
            // itself (RFC 3261 §8.2.1). To an agent it is proxied.
            let not_allowed =
                Refusal::new(405, "Method Not Allowed").with("Allow", ALLOW.to_owned());
            return self.refuse(now, source, msg, &not_allowed, out);
        }
        self.route_to_agent(now, source, msg, out);
    }

    /// Loop detection (RFC 3261 §16.3 step 4): a Via of ours whose branch
    /// carries the loop hash this very request would get means the request
    /// came back unchanged: a loop. A different hash is a spiral (the
    /// request was retargeted), which is fine.
    ///
    /// Any core's Via counts (each names its own port), so a Via of ours
    /// is one with our IP and a sipblade branch; the loop hash in the
    /// branch makes a match specific to this request.
    fn is_loop(&self, msg: &Message) -> bool {
        // Most requests carry no Via of a sipblade: a substring search of
        // the Via lines rules that out before anything is parsed.
        if !msg
            .header_values(crate::sip::HeaderName::Via)
            .any(|v| self.branch_finder.find(v).is_some())
        {
            return false;
        }
        let hash = route::loop_hash(msg);
        msg.vias().any(|v| {
            route::host_ip(v.host(), v.host_kind()) == Some(self.settings.local.ip())
                && v.branch().and_then(route::loop_hash_of_branch) == Some(hash)
        })
    }

    /// The sent-by of a Via for a request that goes over `transport`.
    fn sent_by(&self, transport: crate::sip::Transport) -> &str {
        match transport {
            crate::sip::Transport::Udp => &self.udp_sent_by,
            _ => &self.sent_by,
        }
    }

    /// How many of the top Routes name this blade: one, or two where it
    /// record-routed twice to change transport (RFC 5658).
    fn our_routes(&self, msg: &Message) -> usize {
        msg.routes().take_while(|r| self.is_us(&r.uri())).count()
    }

    /// Whether `uri` names this blade: its address (a default port is
    /// 5060), or this core's own port, which our UDP Record-Routes name.
    fn is_us(&self, uri: &crate::sip::Uri<'_>) -> bool {
        let local = self.settings.local;
        route::uri_peer(uri).is_some_and(|p| {
            p.addr == local
                || (p.addr.ip() == local.ip() && Some(p.addr.port()) == self.settings.via_port)
        })
    }

    /// Whether a Request-URI host names the cluster's agents (SPEC §5):
    /// the domain, our address, or a peer blade's address.
    fn is_our_host(&self, uri: &crate::sip::Uri<'_>) -> bool {
        if uri.host().eq_ignore_ascii_case(&self.settings.domain) {
            return true;
        }
        let Some(ip) = route::host_ip(uri.host(), uri.host_kind()) else {
            return false;
        };
        ip == self.settings.local.ip() || self.is_peer_blade_ip(ip)
    }

    /// Whether `ip` is a peer blade's (on any port: each of its cores
    /// sends from a Via port of its own).
    fn is_peer_blade_ip(&self, ip: IpAddr) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.peer_by_ip(ip).is_some())
    }

    /// A request to the blade itself: no user part, our host.
    fn is_to_blade(&self, msg: &Message) -> bool {
        msg.request_uri()
            .is_some_and(|u| u.user().is_none() && self.is_our_host(&u))
    }

    fn handle_register(&mut self, now: Duration, source: Peer, msg: Message, out: &mut Output) {
        let Some(uri) = msg.request_uri() else { return };
        // RFC 3261 §10.3 steps 1 and 5: the registrar's domain, and an
        // address of record in it (SPEC §5: the To names the agent only on
        // our host; a To that is no SIP URI is the registrar's 400).
        let to = msg.to().uri();
        let foreign_aor = matches!(
            to.scheme(),
            crate::sip::Scheme::Sip | crate::sip::Scheme::Sips
        ) && !self.is_our_host(&to);
        if !self.is_our_host(&uri) || foreign_aor {
            return self.refuse(now, source, msg, &Refusal::new(404, "Not Found"), out);
        }
        let mut buf = BytesMut::new();
        let outcome = self.registrar.handle_register(now, &msg, source, &mut buf);
        match &outcome {
            Outcome::LoggedIn(ext) => {
                self.metrics.registrations += 1;
                self.announce_login(ext, out);
                out.notices.push(Notice {
                    to: None,
                    event: AgentEvent::LoggedIn(ext.clone()),
                });
            }
            Outcome::Refreshed(_) => self.metrics.registrations += 1,
            Outcome::LoggedOut(ext) => {
                self.announce_logout(ext, out);
                out.notices.push(Notice {
                    to: None,
                    event: AgentEvent::LoggedOut(ext.clone()),
                });
            }
            _ => {}
        }
        self.respond_new(now, source, msg, outcome.status(), buf.freeze(), out);
    }

    /// Answers `msg` locally through a new server transaction, so that
    /// retransmissions get the same answer and an ACK is absorbed.
    fn refuse(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        refusal: &Refusal,
        out: &mut Output,
    ) {
        let mut buf = BytesMut::new();
        refusal.respond(&msg, &registrar::tag(&msg), &mut buf);
        self.respond_new(now, source, msg, refusal.status, buf.freeze(), out);
    }

    fn respond_new(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        status: u16,
        data: Bytes,
        out: &mut Output,
    ) {
        let invite = msg.method() == Some(Method::Invite);
        let mut server = ServerTx::new(invite, route::response_peer(source), self.settings.timers);
        server.respond(now, status, data, &mut out.transmits);
        let id = self.insert(msg, server);
        self.reschedule(id);
    }

    /// Answers transaction `id`'s caller `status` for a failure on our
    /// side (no answer, no way to send); a call then ends as failed.
    fn fail_pending(&mut self, now: Duration, id: usize, status: u16, out: &mut Output) {
        let Some(pair) = self.txs.get(id) else {
            return;
        };
        let (call, call_id) = (pair.call, pair.call_id.clone());
        self.answer_pending(now, id, status, out);
        if call {
            self.outcomes(&call_id).failed += 1;
            self.end_session(now, &call_id, out);
        }
    }

    /// Answers the request of transaction `id` with `status`, unless it
    /// already has a final answer.
    fn answer_pending(&mut self, now: Duration, id: usize, status: u16, out: &mut Output) {
        let Some(pair) = self.txs.get_mut(id) else {
            return;
        };
        if pair.server.is_final() {
            return;
        }
        let Some(request) = &pair.request else {
            return;
        };
        let mut buf = BytesMut::new();
        let retry: &[(&str, &str)] = if status == 503 {
            &[("Retry-After", "1")]
        } else {
            &[]
        };
        request.response(
            status,
            reason_phrase(status),
            Some(&registrar::tag(request)),
            retry,
            &mut buf,
        );
        pair.server
            .respond(now, status, buf.freeze(), &mut out.transmits);
        self.reschedule(id);
    }

    /// A new server transaction for `request`, without a client yet.
    fn insert(&mut self, request: Message, server: ServerTx) -> usize {
        let mut key = ServerKey::of(&request);
        // An owned copy: a slice would keep the whole request buffer alive
        // while the transaction lingers.
        key.branch = Bytes::copy_from_slice(&key.branch);
        self.pending += 1;
        let pair = TxPair {
            generation: 0,
            key: key.clone(),
            invite: request.method() == Some(Method::Invite),
            call: request.method() == Some(Method::Invite) && request.to().tag().is_none(),
            call_id: request.call_id().into(),
            request: Some(request),
            server,
            client: None,
            cancel: None,
            cancel_pending: false,
            ringing_until: None,
            waiting: None,
        };
        let id = self.txs.insert(pair);
        self.by_server.insert(key, id);
        id
    }

    /// Re-arms the timer of transaction `id`, or drops it when done.
    fn reschedule(&mut self, id: usize) {
        let Some(pair) = self.txs.get_mut(id) else {
            return;
        };
        if pair.is_done() {
            let pair = self.txs.remove(id);
            if pair.request.is_some() {
                self.pending -= 1;
            }
            self.by_server.remove(&pair.key);
            if let Some(c) = pair.client {
                self.by_client.remove(&(c.branch.clone(), false));
                self.by_client.remove(&(c.branch, true));
            }
            return;
        }
        if pair.server.is_final() && pair.request.take().is_some() {
            self.pending -= 1;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        pair.generation = self.next_generation;
        if let Some(at) = pair.deadline() {
            self.timers.schedule(at, id as u64, pair.generation);
        }
    }

    fn route_to_agent(&mut self, now: Duration, source: Peer, msg: Message, out: &mut Output) {
        let Some(uri) = msg.request_uri() else { return };
        if !matches!(uri.scheme(), Scheme::Sip | Scheme::Sips) {
            return self.refuse(
                now,
                source,
                msg,
                &Refusal::new(416, "Unsupported URI Scheme"),
                out,
            );
        }
        let method = msg.method().unwrap_or(Method::Other);
        if !self.is_our_host(&uri) {
            return self.refuse_unknown(now, source, msg, method, out);
        }
        let callee = uri.user_str().unwrap_or_default().to_owned();
        if let Some(token) = cross::hosting_token(&uri) {
            // A peer blade bringing the INVITE of a session it hosts B for
            // (SPEC §2 step 5): the token, not the caller, is checked.
            let token = token.to_vec();
            return self.accept_hosted(now, source, msg, &callee, &token, out);
        }
        let needs_caller = matches!(
            method,
            Method::Invite | Method::Message | Method::Subscribe | Method::Refer
        );
        let caller = msg.from().uri().user_str().unwrap_or_default().to_owned();
        if needs_caller {
            if let Err(refusal) = self.check_caller(now, &msg, &caller) {
                // A challenge is not an outcome: the call goes on with the
                // credentials.
                if method == Method::Invite && refusal.status != 407 {
                    self.metrics.local.failed += 1;
                }
                return self.refuse(now, source, msg, &refusal, out);
            }
        }
        let Some(record) = self.registrar.location().get(&callee) else {
            return self.refuse_unknown(now, source, msg, method, out);
        };
        if method == Method::Invite {
            match join::Named::of(&msg) {
                Some(Some(named)) => {
                    return self.route_join(now, source, msg, &caller, &callee, &named, false, out);
                }
                Some(None) => {
                    let bad = Refusal::new(400, "Bad Request (malformed Join)");
                    return self.refuse(now, source, msg, &bad, out);
                }
                None => {}
            }
        }
        let Some(binding) = record.binding.clone() else {
            if self.cluster.is_some() {
                // Not registered here: perhaps on another blade. A call
                // hosts the agent; anything else is only relayed.
                if method == Method::Invite {
                    return self.host_remote(now, source, msg, &caller, &callee, out);
                }
                return self.relay_remote(now, source, msg, &callee, out);
            }
            if method == Method::Invite {
                self.metrics.local.failed += 1;
            }
            return self.refuse(
                now,
                source,
                msg,
                &Refusal::new(480, "Temporarily Unavailable"),
                out,
            );
        };
        if method == Method::Invite {
            if matches!(record.state, AgentState::Hosted { .. }) {
                return self.redirect_to_host(now, source, msg, &callee, &caller, out);
            }
            if record.state != AgentState::Ready {
                self.metrics.local.busy += 1;
                return self.refuse(now, source, msg, &Refusal::new(486, "Busy Here"), out);
            }
            self.open_session(now, source, &msg, &caller, &callee, out);
            self.set_in_call(&callee, msg.call_id());
        }
        let target = binding.peer;
        let record_route = matches!(method, Method::Invite | Method::Subscribe | Method::Refer);
        self.forward(
            now,
            source,
            msg,
            target,
            Some(&binding.uri),
            0,
            record_route,
            out,
        );
    }

    /// 404 to a request for no provisioned agent. A call to a number that
    /// does not exist is a failed call, as one to an agent logged out
    /// (480) is.
    fn refuse_unknown(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        method: Method,
        out: &mut Output,
    ) {
        if method == Method::Invite {
            self.metrics.local.failed += 1;
        }
        self.refuse(now, source, msg, &Refusal::new(404, "Not Found"), out);
    }

    /// SPEC §5: the caller must be a provisioned agent, logged in, and with
    /// `auth` on, prove it with Proxy-Authorization.
    fn check_caller(&mut self, now: Duration, msg: &Message, caller: &str) -> Result<(), Refusal> {
        let agent = self
            .agents
            .get(caller)
            .cloned()
            .ok_or(Refusal::new(403, "Forbidden"))?;
        if self.settings.auth {
            let digest = msg.proxy_authorization().and_then(|a| a.digest());
            self.registrar
                .check_digest(now, msg, digest, &agent, Challenger::Proxy)?;
        }
        if self.logged_in_on_blade(caller) {
            Ok(())
        } else {
            Err(Refusal::new(403, "Forbidden"))
        }
    }

    /// Notes that the INVITE `msg` went to `core`, for as long as its
    /// transaction can last there (64×T1 after its final answer, and timer
    /// C before it); forgets hand-offs past that.
    fn remember_handoff(&mut self, now: Duration, msg: &Message, core: usize) {
        self.handed_off.retain(|_, (_, until)| *until > now);
        let mut key = ServerKey::of(msg);
        key.branch = Bytes::copy_from_slice(&key.branch);
        let until = now + TIMER_C + self.settings.timers.t1 * 64;
        self.handed_off.insert(key, (core, until));
    }

    /// Whether `extension` is logged in on this blade (on any core).
    fn logged_in_on_blade(&self, extension: &str) -> bool {
        let local = self
            .registrar
            .location()
            .get(extension)
            .map(|r| r.is_logged_in());
        local.unwrap_or_else(|| self.logged_in_elsewhere.contains(extension))
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        target: Peer,
        request_uri: Option<&str>,
        pop_routes: usize,
        record_route: bool,
        out: &mut Output,
    ) {
        let record_route = record_route.then_some(source.transport);
        let forwarded = self.build_forward(&msg, target, request_uri, pop_routes, record_route);
        let (forwarded, data, target) = match forwarded {
            Ok(f) => f,
            Err(refusal) => {
                // A new call refused here (too many hops, too large) ends
                // the session just opened for it, or its agents would
                // stay in_call.
                let call_id = msg.call_id().to_owned();
                let new_call = msg.method() == Some(Method::Invite) && msg.to().tag().is_none();
                if new_call && self.sessions.get(&call_id).is_some() {
                    self.outcomes(&call_id).failed += 1;
                    self.end_session(now, &call_id, out);
                }
                return self.refuse(now, source, msg, &refusal, out);
            }
        };
        let server = self.server_tx(now, source, &msg, out);
        let id = self.insert(msg, server);
        self.start_client(now, id, forwarded, data, target, out);
    }

    /// Our Record-Route entry for the side reached over `transport`.
    fn record_route_over(&self, transport: crate::sip::Transport) -> String {
        let name = transport.to_string().to_ascii_lowercase();
        format!(
            "<sip:{};lr;{CORE_PARAM}={};transport={name}>",
            self.sent_by(transport),
            self.settings.core
        )
    }

    /// The server transaction for request `msg`: an INVITE's has answered
    /// 100 Trying (§16.2: at once, so the caller stops retransmitting). A
    /// peer blade's INVITE has its 100 deferred instead: the callee's 180
    /// nearly always comes first and makes it needless, which spares both
    /// blades a datagram per cross-blade call; a slow callee still gets the
    /// peer its 100 well before its first retransmission.
    fn server_tx(&self, now: Duration, source: Peer, msg: &Message, out: &mut Output) -> ServerTx {
        let invite = msg.method() == Some(Method::Invite);
        let mut server = ServerTx::new(invite, route::response_peer(source), self.settings.timers);
        if invite {
            let mut trying = BytesMut::new();
            msg.response(100, "Trying", None, &[], &mut trying);
            if self.is_peer_blade_ip(source.addr.ip()) {
                server.defer_trying(now, trying.freeze());
            } else {
                server.respond(now, 100, trying.freeze(), &mut out.transmits);
            }
        }
        server
    }

    /// The request to send downstream, and where: a new Via, and the
    /// Record-Route, Request-URI and Route edits asked for. `record_route`
    /// names the transport the request came in on: when it differs from
    /// the target's, we record-route twice, one entry per side (RFC 5658),
    /// so each side's in-dialog requests use its own transport. A request
    /// too large for UDP to a peer blade goes over TCP instead
    /// ([`UDP_MAX_TO_BLADES`]).
    fn build_forward(
        &mut self,
        msg: &Message,
        target: Peer,
        request_uri: Option<&str>,
        pop_routes: usize,
        record_route: Option<crate::sip::Transport>,
    ) -> Result<(Message, Bytes, Peer), Refusal> {
        self.next_branch += 1;
        let mut via = std::mem::take(&mut self.via_scratch);
        via.clear();
        let _ = write!(
            via,
            "SIP/2.0/{} {};branch={BRANCH_PREFIX}{}x{}.{:016x}",
            target.transport,
            self.sent_by(target.transport),
            self.settings.core,
            self.next_branch,
            route::loop_hash(msg)
        );
        let bridged;
        let record_route_value = match record_route {
            Some(upstream) if upstream != target.transport => {
                bridged = format!(
                    "{}, {}",
                    self.record_route_over(target.transport),
                    self.record_route_over(upstream)
                );
                Some(bridged.as_str())
            }
            Some(crate::sip::Transport::Udp) => Some(self.udp_record_route.as_str()),
            Some(_) => Some(self.record_route.as_str()),
            None => None,
        };
        let edit = Forward {
            via: Some(&via),
            record_route: record_route_value,
            request_uri,
            pop_routes,
        };
        let mut buf = BytesMut::new();
        let edited = msg.forward(&edit, &mut buf);
        self.via_scratch = via;
        if edited.is_err() {
            return Err(Refusal::new(483, "Too Many Hops"));
        }
        if target.transport == crate::sip::Transport::Udp
            && buf.len() > UDP_MAX_TO_BLADES
            && self.is_peer_blade_sip(target.addr)
        {
            let tcp = Peer::new(target.addr, crate::sip::Transport::Tcp);
            return self.build_forward(msg, tcp, request_uri, pop_routes, record_route);
        }
        if target.transport == crate::sip::Transport::Udp && buf.len() > UDP_MAX_PAYLOAD {
            return Err(Refusal::new(513, "Message Too Large"));
        }
        let data = buf.freeze();
        match Message::parse(data.clone()) {
            Ok(forwarded) => Ok((forwarded, data, target)),
            Err(_) => Err(Refusal::new(500, "Server Internal Error")),
        }
    }

    /// Whether `addr` is a peer blade's SIP address.
    fn is_peer_blade_sip(&self, addr: SocketAddr) -> bool {
        self.cluster
            .as_ref()
            .and_then(|c| c.peer_by_ip(addr.ip()))
            .is_some_and(|p| p.sip == addr)
    }

    /// Sends `forwarded` to `target` through a new client transaction of
    /// pair `id`.
    fn start_client(
        &mut self,
        now: Duration,
        id: usize,
        forwarded: Message,
        data: Bytes,
        target: Peer,
        out: &mut Output,
    ) {
        // Owned, so a lingering transaction does not pin the request buffer.
        let branch = forwarded
            .top_via()
            .branch()
            .map(|b| Bytes::copy_from_slice(b.as_bytes()))
            .unwrap_or_default();
        let method = forwarded.method().unwrap_or(Method::Other);
        let (client, first) = ClientTx::start(now, forwarded, data, target, self.settings.timers);
        out.transmits.push(first);
        let Some(pair) = self.txs.get_mut(id) else {
            return;
        };
        if pair.invite {
            // A CANCEL we send downstream (the caller's, or timer C's)
            // shares the INVITE's branch; its responses find the pair so.
            self.by_client.insert((branch.clone(), true), id);
            pair.ringing_until = Some(now + TIMER_C);
        }
        self.by_client.insert((branch.clone(), false), id);
        pair.client = Some(Client {
            tx: client,
            branch,
            method,
        });
        self.reschedule(id);
    }

    fn forward_in_dialog(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        pop_routes: usize,
        next_route: Option<Peer>,
        out: &mut Output,
    ) {
        if pop_routes == 0 && next_route.is_none() {
            if let Some(core) = self.session_core_elsewhere(&msg) {
                // Its session (whose end a BYE must see) lives there.
                out.handoffs.push(Handoff {
                    core,
                    source,
                    msg,
                    join: false,
                });
                return;
            }
        }
        // A UA may send its in-dialog requests to the agent's address of
        // record rather than the remote target: they reach the agent's
        // contact, retargeted like any request for the agent (RFC 3261
        // §16.5). Not an ACK (`forward_ack`): one to an AOR is a non-2xx
        // ACK on a branch of its own, which ends here.
        let contact = next_route
            .is_none()
            .then(|| self.aor_binding(&msg))
            .flatten()
            .map(|b| (b.peer, b.uri.clone()));
        let target = next_route
            .or(contact.as_ref().map(|(peer, _)| *peer))
            .or_else(|| self.hosted_agent_blade(&msg))
            .or_else(|| self.request_uri_peer(&msg));
        let Some(target) = target else {
            return self.refuse(now, source, msg, &Refusal::new(404, "Not Found"), out);
        };
        if pop_routes == 0 && !self.may_relay_unrouted(&msg, target) {
            let outside = Refusal::new(403, "Forbidden (not routed through this blade)");
            return self.refuse(now, source, msg, &outside, out);
        }
        if msg.method() == Some(Method::Bye) {
            let call_id = msg.call_id().to_owned();
            self.end_session(now, &call_id, out);
        }
        let request_uri = contact.as_ref().map(|(_, uri)| uri.as_str());
        self.forward(
            now,
            source,
            msg,
            target,
            request_uri,
            pop_routes,
            false,
            out,
        );
    }

    /// Whether a request with a To tag but no Route naming this blade may
    /// go to `target`. Every dialog sipblade sets up is record-routed, so
    /// its requests name the blade in their Route; one that does not is
    /// no dialog of ours, and may reach only an agent's registered contact
    /// (a phone that ignored the route set) or a peer blade. Anything else
    /// would make the blade an open relay for whoever writes a To tag.
    fn may_relay_unrouted(&self, msg: &Message, target: Peer) -> bool {
        if self.is_peer_blade_sip(target.addr) {
            return true;
        }
        self.addressed_binding(msg)
            .is_some_and(|b| b.peer.addr == target.addr)
            || self.is_callers_terminal(msg, target)
    }

    /// Whether `target` is the terminal the caller of `msg`'s session on
    /// this core called from (where its INVITE came from, or its Contact):
    /// the callee's requests go back there, routed or not.
    fn is_callers_terminal(&self, msg: &Message, target: Peer) -> bool {
        let Some((from, contact)) = self
            .sessions
            .get(msg.call_id())
            .and_then(|s| s.caller_contact.as_ref())
        else {
            return false;
        };
        from.addr == target.addr
            || crate::sip::Uri::parse(contact.as_bytes())
                .and_then(|uri| route::uri_peer(&uri))
                .is_some_and(|p| p.addr == target.addr)
    }

    /// The binding of the agent a request is addressed to, when this core
    /// owns that agent and it is registered: the agent its Request-URI
    /// names by user or, for a Request-URI without one (a terminal's own
    /// Contact, which many UAs write as `sip:IP:PORT`), the agent its To
    /// names on our host (SPEC §5).
    fn addressed_binding(&self, msg: &Message) -> Option<&Binding> {
        let agent = self.addressed_agent(msg)?;
        self.registrar.location().get(agent)?.binding.as_ref()
    }

    /// The extension a request is addressed to: its Request-URI's user or,
    /// without one, its To's user on our host (SPEC §5).
    fn addressed_agent<'m>(&self, msg: &'m Message) -> Option<&'m str> {
        let uri = msg.request_uri()?;
        if uri.user().is_some() {
            return uri.user_str();
        }
        let to = msg.to().uri();
        if !self.is_our_host(&to) {
            return None;
        }
        to.user_str()
    }

    /// For an unrouted in-dialog request (its sender kept no route set:
    /// a terminal that did not copy the Record-Route), the core its session
    /// lives on when that is another: this core owns the agent the request
    /// goes to, and that agent is in the call there.
    fn session_core_elsewhere(&self, msg: &Message) -> Option<usize> {
        let call_id = msg.call_id();
        if self.sessions.get(call_id).is_some() {
            return None;
        }
        let core = *self.remote_sessions.get(call_id)?;
        let agent = self.addressed_agent(msg)?;
        let in_this_call = matches!(
            &self.registrar.location().get(agent)?.state,
            AgentState::InCall { call_id: c } if c == call_id
        );
        in_this_call.then_some(core)
    }

    /// Where an unrouted in-dialog request of a session on this core goes
    /// when it is addressed to the session's hosted agent at its terminal:
    /// to the agent's blade, which takes it on to the terminal (SPEC §2
    /// step 5), as a routed one would go.
    fn hosted_agent_blade(&self, msg: &Message) -> Option<Peer> {
        let hosted = self.sessions.get(msg.call_id())?.hosted.as_ref()?;
        let to = msg.to().uri();
        if to.user_str()? != hosted.extension || !self.is_our_host(&to) {
            return None;
        }
        let uri = msg.request_uri()?;
        let info = hosted.info.as_ref()?;
        let at_terminal = info.contact == uri.as_str()
            || route::uri_peer(&uri).is_some_and(|p| p.addr == info.addr);
        if !at_terminal {
            return None;
        }
        let blade = self.cluster.as_ref()?.peer(hosted.blade.as_deref()?)?;
        Some(Peer::new(blade.sip, crate::sip::Transport::Udp))
    }

    /// The binding of the agent the Request-URI names, when this core owns
    /// that agent and it is registered.
    fn request_uri_binding(&self, msg: &Message) -> Option<&Binding> {
        let agent = msg.request_uri()?.user_str()?;
        self.registrar.location().get(agent)?.binding.as_ref()
    }

    /// Where the Request-URI points. When it is the registered contact of
    /// an agent this core owns, the binding's peer: over TCP that is the
    /// agent's own connection, which its ephemeral port alone would not
    /// reach.
    fn request_uri_peer(&self, msg: &Message) -> Option<Peer> {
        let uri = msg.request_uri()?;
        let named = route::uri_peer(&uri);
        match self.addressed_binding(msg) {
            Some(b) if b.uri == uri.as_str() || named.is_some_and(|p| p.addr == b.peer.addr) => {
                Some(b.peer)
            }
            _ => named,
        }
    }

    /// The binding of the agent this core owns that the Request-URI names
    /// by its address of record (our domain or address, SPEC §5) rather
    /// than by its contact.
    fn aor_binding(&self, msg: &Message) -> Option<&Binding> {
        let uri = msg.request_uri()?;
        self.request_uri_binding(msg)
            .filter(|b| b.uri != uri.as_str() && self.is_our_host(&uri))
    }

    /// ACK for a 2xx travels end to end (§16.7 does not apply; the ACK has
    /// its own branch): forward it statelessly along Route / R-URI.
    fn forward_ack(&mut self, msg: &Message, out: &mut Output) {
        let pop_routes = self.our_routes(msg);
        let next = msg
            .routes()
            .nth(pop_routes)
            .and_then(|r| route::uri_peer(&r.uri()));
        let target = next
            .or_else(|| self.hosted_agent_blade(msg))
            .or_else(|| self.request_uri_peer(msg));
        let Some(target) = target else {
            return;
        };
        if pop_routes == 0 && !self.may_relay_unrouted(msg, target) {
            return;
        }
        // A stateless branch: derived from the incoming one, so every
        // retransmission of the ACK is forwarded alike (§16.11).
        let branch = format!(
            "{BRANCH_PREFIX}{}xa{}",
            self.settings.core,
            msg.top_via().branch().unwrap_or("0")
        );
        let via = format!(
            "SIP/2.0/{} {};branch={branch}",
            target.transport,
            self.sent_by(target.transport)
        );
        let edit = Forward {
            via: Some(&via),
            pop_routes,
            ..Forward::default()
        };
        let mut buf = BytesMut::new();
        if msg.forward(&edit, &mut buf).is_ok() {
            out.transmits.push(Transmit {
                to: target,
                data: buf.freeze(),
            });
        }
    }

    fn handle_cancel(&mut self, now: Duration, source: Peer, msg: &Message, out: &mut Output) {
        let invite_key = ServerKey {
            method: Method::Invite,
            ..ServerKey::of(msg)
        };
        let tag = registrar::tag(msg);
        let mut buf = BytesMut::new();
        let Some(&id) = self.by_server.get(&invite_key) else {
            msg.response(
                481,
                "Call/Transaction Does Not Exist",
                Some(&tag),
                &[],
                &mut buf,
            );
            out.transmits.push(Transmit {
                to: route::response_peer(source),
                data: buf.freeze(),
            });
            return;
        };
        // §16.10: answer the CANCEL, then cancel the branch downstream.
        msg.response(200, "OK", Some(&tag), &[], &mut buf);
        out.transmits.push(Transmit {
            to: route::response_peer(source),
            data: buf.freeze(),
        });
        let Some(pair) = self.txs.get_mut(id) else {
            return;
        };
        if pair.client.is_none() && pair.waiting.is_some() && !pair.server.is_final() {
            // Nothing went downstream yet (the INVITE waits on the cluster):
            // end it here.
            let call_id = pair.call_id.clone();
            pair.waiting = None;
            self.answer_pending(now, id, 487, out);
            self.outcomes(&call_id).cancelled += 1;
            self.end_session(now, &call_id, out);
            return;
        }
        // A retransmitted CANCEL finds the CANCEL already sent or due.
        let first = pair.cancel.is_none() && !pair.cancel_pending;
        if !pair.server.is_final() && first {
            send_cancel(now, self.settings.timers, pair, &mut out.transmits);
            if pair.call {
                let call_id = pair.call_id.clone();
                self.outcomes(&call_id).cancelled += 1;
            }
        }
        self.reschedule(id);
    }

    fn handle_response(&mut self, now: Duration, msg: Message, out: &mut Output) {
        let Some(branch) = msg.top_via().branch() else {
            return;
        };
        if !branch.starts_with(BRANCH_PREFIX) {
            return;
        }
        let cancel = msg.cseq().method == Method::Cancel;
        let key = (msg.buffer().slice_ref(branch.as_bytes()), cancel);
        let Some(&id) = self.by_client.get(&key) else {
            return self.forward_stray_2xx(&msg, out);
        };
        let Some(pair) = self.txs.get_mut(id) else {
            return;
        };
        if cancel {
            if let Some(c) = pair.cancel.as_mut() {
                c.on_response(now, &msg, &mut out.transmits);
            }
            return self.reschedule(id);
        }
        let Some(client) = pair.client.as_mut() else {
            return;
        };
        if msg.cseq().method != client.method {
            // Same branch, another method: not this transaction's response
            // (a 200 for BYE must not answer an INVITE).
            return;
        }
        let status = msg.status().unwrap_or(0);
        if status > 100 && !msg.has_more_vias() {
            // Only our Via: nowhere to relay it (§16.7 step 3), and not an
            // answer the transaction may take, or the caller would wait
            // for a response that never comes.
            self.metrics.malformed += 1;
            return;
        }
        if client.tx.on_response(now, &msg, &mut out.transmits) != ClientEvent::Pass {
            return self.reschedule(id);
        }
        let (invite, call) = (pair.invite, pair.call);
        if status > 100 {
            // §16.7 step 3: remove our Via and pass the response upstream.
            let mut buf = BytesMut::new();
            msg.strip_top_via(&mut buf);
            pair.server
                .respond(now, status, buf.freeze(), &mut out.transmits);
        }
        if invite && status < 200 {
            if pair.cancel_pending && client.tx.state() == ClientState::Proceeding {
                send_cancel(now, self.settings.timers, pair, &mut out.transmits);
            } else if pair.ringing_until.is_some() {
                pair.ringing_until = Some(now + TIMER_C);
            }
        }
        if invite && status >= 200 {
            pair.ringing_until = None;
        }
        if call && status >= 200 {
            let call_id = pair.call_id.clone();
            if status < 300 {
                if self.sessions.confirm(&call_id, msg.to().tag()) {
                    self.outcomes(&call_id).answered += 1;
                    if self
                        .sessions
                        .get(&call_id)
                        .is_some_and(|s| s.joins.is_some())
                    {
                        self.metrics.joins += 1;
                    }
                }
            } else {
                self.outcomes(&call_id).ended_with(status);
                self.end_session(now, &call_id, out);
            }
        }
        self.reschedule(id);
    }

    /// A request this core forwarded could not be sent (no connection to
    /// the agent could be made over TCP). RFC 3261 §16.9: as if the hop
    /// answered 503; the caller gets 480 (the agent cannot be reached) at
    /// once instead of a 408 after timer B, and a call ends as failed.
    pub fn handle_unsent(&mut self, now: Duration, msg: &Message, out: &mut Output) {
        if !msg.is_request() || matches!(msg.method(), Some(Method::Ack | Method::Cancel)) {
            return;
        }
        let Some(branch) = msg.top_via().branch() else {
            return;
        };
        let key = (msg.buffer().slice_ref(branch.as_bytes()), false);
        let Some(&id) = self.by_client.get(&key) else {
            return;
        };
        let Some(pair) = self.txs.get_mut(id) else {
            return;
        };
        if pair.server.is_final() {
            return;
        }
        pair.ringing_until = None;
        self.fail_pending(now, id, 480, out);
        self.reschedule(id);
    }

    /// A 2xx to an INVITE whose client transaction is gone (a late
    /// retransmission): forward it upstream statelessly (§16.7 step 10
    /// with RFC 6026).
    fn forward_stray_2xx(&mut self, msg: &Message, out: &mut Output) {
        let is_2xx = msg.status().is_some_and(|s| (200..300).contains(&s));
        if !is_2xx || msg.cseq().method != Method::Invite {
            return;
        }
        if let Some(to) = route::via_peer(msg) {
            let mut buf = BytesMut::new();
            msg.strip_top_via(&mut buf);
            out.transmits.push(Transmit {
                to,
                data: buf.freeze(),
            });
        }
    }
}

/// The reason phrase sipblade sends with `status`.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        486 => "Busy Here",
        487 => "Request Terminated",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        600 => "Busy Everywhere",
        _ => "Request Failed",
    }
}

/// The best-effort answer to a request that failed to parse, or to frame
/// on a stream: 400 whose reason phrase says what is wrong (the sender's
/// operator has nothing else to go by), 505 for another SIP version, 513
/// for a message over the size limit. `None` when there is nothing to
/// answer (a response, an ACK, no Via).
pub fn malformed_response(
    data: &[u8],
    err: &crate::sip::ParseError,
    source: SocketAddr,
) -> Option<Bytes> {
    let reason = match err.status() {
        505 => "Version Not Supported".to_owned(),
        513 => "Message Too Large".to_owned(),
        _ => format!("Bad Request ({})", err.kind),
    };
    let mut buf = BytesMut::new();
    best_effort_response(data, err.status(), &reason, source, &mut buf).then(|| buf.freeze())
}

/// The stateless 503 a blade answers a request with when it cannot take
/// it on (a core's queue at its bound); `None` for responses and ACKs,
/// which are never answered.
pub fn overload_response(msg: &Message) -> Option<Bytes> {
    if !msg.is_request() || msg.method() == Some(Method::Ack) {
        return None;
    }
    let mut buf = BytesMut::new();
    msg.response(
        503,
        "Service Unavailable",
        Some(&registrar::tag(msg)),
        &[("Retry-After", "1")],
        &mut buf,
    );
    Some(buf.freeze())
}

/// Sends the CANCEL of a forwarded INVITE, or marks it due once a
/// provisional arrives (a CANCEL may not overtake the first response, §9.1).
fn send_cancel(now: Duration, timers: TimerConfig, pair: &mut TxPair, out: &mut Vec<Transmit>) {
    let Some(client) = pair.client.as_ref() else {
        return;
    };
    if pair.cancel.is_some() {
        return;
    }
    match client.tx.state() {
        ClientState::Proceeding => {
            let mut buf = BytesMut::new();
            let Some(request) = client.tx.request() else {
                return;
            };
            request.cancel_for(&mut buf);
            let data = buf.freeze();
            if let Ok(cancel) = Message::parse(data.clone()) {
                let (tx, first) = ClientTx::start(now, cancel, data, client.tx.peer(), timers);
                out.push(first);
                pair.cancel = Some(tx);
                pair.cancel_pending = false;
            }
        }
        ClientState::Calling => pair.cancel_pending = true,
        _ => {}
    }
}

#[cfg(test)]
mod cross_tests;
#[cfg(test)]
mod tests;
