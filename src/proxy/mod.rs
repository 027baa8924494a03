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
//!
//! The request path above is in this file; the rest by job: `addressing`
//! (who a request is for), `forward`, `transactions` (the table, timers,
//! CANCEL), `responses`, `calls` and [`session`] (the agents' call states),
//! `hangup` (the BYEs the blade sends when it ends a call itself),
//! [`cross`] and `join` (hosting, many-party sessions), [`route`] (cores
//! and branches), `status` and [`metrics`].

mod addressing;
mod calls;
pub mod cross;
mod cross_source;
mod cross_target;
mod dialog;
mod forward;
mod hangup;
mod join;
pub mod metrics;
mod responses;
pub mod route;
pub mod session;
mod status;
mod transactions;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use slab::Slab;

use crate::config::Agent;
use crate::registrar::location::AgentState;
use crate::registrar::{Challenger, Outcome, Refusal, Registrar};
use crate::sip::{Message, Method, Scheme};
use crate::transaction::client::ClientTx;
use crate::transaction::server::ServerTx;
use crate::transaction::timers::TimerQueue;
use crate::transaction::{Peer, TimerConfig, Transmit};
use cross::{Cluster, ClusterSend, ClusterSettings, Waiting};
pub use metrics::Metrics;
pub use responses::{malformed_response, overload_response};
use route::{BRANCH_PREFIX, CORE_PARAM};
use session::Sessions;
pub use status::{AgentStatus, HostedAgent, SessionStatus, Snapshot};

/// How long an INVITE may ring before the proxy gives up (timer C,
/// RFC 3261 §16.6 step 11: more than 3 minutes).
pub const TIMER_C: Duration = Duration::from_secs(181);

/// The largest request sent to a peer blade over UDP: a larger one goes
/// over TCP (RFC 3261 §18.1.1: within 200 bytes of a 1500-byte path MTU,
/// or over 1300 bytes when the MTU is unknown). Agents' terminals keep
/// UDP, since not every phone listens on TCP.
pub const UDP_MAX_TO_BLADES: usize = 1300;

/// Whether the request `msg` belongs to a dialog: it has a To tag, and is
/// no REGISTER, which is never in a dialog (RFC 3261 §10.2) whatever its To
/// says (some phones copy the To tag of the last 200 into their refreshes).
fn in_dialog(msg: &Message) -> bool {
    msg.to().tag().is_some() && msg.method() != Some(Method::Register)
}

/// How often a core forgets what expired in the tables pruned otherwise
/// only when an entry is added (INVITE hand-offs, leaves to relay, nonce
/// counts), so that an idle core does not keep them: while any is held.
const TIDY_EVERY: Duration = Duration::from_secs(60);

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
    /// Every core's own UDP port (several cores only): a Contact naming
    /// any of them names this blade as surely as the SIP port does.
    pub core_ports: Vec<u16>,
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
    /// Join (or Replaces) INVITEs for sessions another core owns
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
    /// A Join (or Replaces) INVITE, checked here
    /// ([`Proxy::handle_join_handoff`]); else a request of a transaction
    /// handed over before (its retransmission, ACK or CANCEL), for
    /// [`Proxy::handle_message`].
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
    /// The agent registered, or its terminal moved (every core learns it
    /// may place calls, and where its terminal is: a routed in-dialog
    /// request may go there from any core).
    LoggedIn {
        /// The agent.
        extension: String,
        /// Where requests for it go (its binding's address).
        terminal: SocketAddr,
    },
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
    /// The agent (owned by the receiving core), hosted by another blade
    /// as a joiner, is in this answered leg, which another core relayed:
    /// the record that hangs the leg up should its grant lapse.
    HostedLeg(Box<cross::HostedLeg>),
}

/// Server transaction key (RFC 3261 §17.2.3): the branch, the sent-by of
/// the top Via and the method, ACK matching its INVITE. The sent-by keeps
/// apart terminals that happen to use the same branch (a counter, a
/// textbook example): one's request is no retransmission of the other's,
/// nor can its CANCEL end the other's call.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ServerKey {
    branch: Bytes,
    sent_by: (Bytes, Option<u16>),
    method: Method,
}

impl ServerKey {
    fn of(msg: &Message) -> ServerKey {
        let method = match msg.method() {
            Some(Method::Ack) | None => Method::Invite,
            Some(m) => m,
        };
        let via = msg.top_via();
        let branch = match via.branch_bytes() {
            Some(b) if via.is_rfc3261_branch() => msg.buffer().slice_ref(b),
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
        let host = msg.buffer().slice(via.spans().host.range());
        ServerKey {
            branch,
            sent_by: (host, via.port()),
            method,
        }
    }

    /// The key with owned copies of its slices: a slice would keep the
    /// whole request buffer alive while the transaction lingers.
    fn owned(mut self) -> ServerKey {
        self.branch = Bytes::copy_from_slice(&self.branch);
        self.sent_by.0 = Bytes::copy_from_slice(&self.sent_by.0);
        self
    }
}

/// A server transaction and the client transaction it forwarded to.
struct TxPair {
    generation: u32,
    key: ServerKey,
    /// The request as received, kept until the server transaction sends a
    /// final response (a 408 or a CANCEL may still need it), then dropped.
    /// Boxed, like the client transactions' requests: a `Message` is about
    /// 1 KB, and a pair that lingers to absorb retransmissions (32 s for
    /// an INVITE) would otherwise hold that room for nothing.
    request: Option<Box<Message>>,
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
    /// INVITE: the caller sent a CANCEL before the final response. How
    /// the call ends decides its outcome: a 2xx that crossed the CANCEL
    /// still answers it (RFC 3261 §9.1), so the CANCEL alone counts
    /// nothing.
    cancelled: bool,
    /// INVITE: timer C.
    ringing_until: Option<Duration>,
    /// Held for the cluster: a host grant, or a hosting blade's verdict.
    waiting: Option<Waiting>,
    /// S: a BYE relayed to a peer blade: the sessions whose hostings wait
    /// for it to pass there, released when its final response comes back
    /// or its transaction ends otherwise ([`Proxy::end_session_by_bye`]).
    held_hostings: Option<Box<[String]>>,
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

/// The provisioned agents by extension, shared by every core. Keyed by
/// what calls name, so hashed with ahash (as the other maps on the call
/// path): a few times cheaper than std's SipHash on short keys, and as
/// keyed per process, so chosen keys cannot flood a bucket.
pub type AgentTable = HashMap<String, Arc<Agent>, ahash::RandomState>;

/// One core's proxy.
pub struct Proxy {
    settings: Settings,
    registrar: Registrar,
    agents: Arc<AgentTable>,
    /// Agents owned by other cores that are logged in, and their
    /// terminals (from notices).
    logged_in_elsewhere: HashMap<String, SocketAddr, ahash::RandomState>,
    /// Calls of this core's agents whose sessions other cores own, by
    /// Call-ID: where a Join for them goes.
    remote_sessions: HashMap<String, usize, ahash::RandomState>,
    /// INVITE transactions handed to another core (a Join for a session it
    /// owns), and until when: their later requests go there too.
    handed_off: HashMap<ServerKey, (usize, Duration), ahash::RandomState>,
    /// Refer subscriptions (RFC 3515), by Call-ID: where the NOTIFYs of
    /// a REFER this core passed in a dialog may go after that dialog's
    /// session ended ([`Proxy::note_refer`]).
    refer_subscriptions: HashMap<Box<str>, forward::ReferSubscription, ahash::RandomState>,
    /// When [`Proxy::tidy`] last ran.
    tidied_at: Duration,
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
    /// BYEs the blade sent itself (a call ended here without one), by
    /// their branch number, while their transactions last.
    own_byes: HashMap<u64, hangup::OwnBye>,
    metrics: Metrics,
    sent_by: String,
    /// The domain's address, when the domain is an IP literal: a host
    /// that names it in another spelling is the domain too.
    domain_ip: Option<std::net::IpAddr>,
    /// The sent-by of UDP Vias: this core's own port.
    udp_sent_by: String,
    /// Our Record-Route for requests that stay on TCP: it says so, or a
    /// UA would send the dialog's later requests over UDP (RFC 3263 §4.1
    /// defaults a `sip:` URI without `transport` to UDP).
    tcp_record_route: String,
    /// Our Record-Route for requests that stay on UDP: it names this
    /// core's own port, so the dialog's later requests (ACK, BYE, re-INVITE)
    /// arrive on the core that owns the dialog instead of being handed
    /// over from whichever core the kernel picked.
    udp_record_route: String,
    /// Stopping: new out-of-dialog requests are refused with 503.
    draining: bool,
    /// Behind the receive queue: new out-of-dialog requests are refused
    /// with 503, so the work already taken on gets done.
    shedding: bool,
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
    pub fn new(settings: Settings, registrar: Registrar, agents: Arc<AgentTable>) -> Self {
        let sent_by = settings.local.to_string();
        let udp_sent_by = match settings.via_port {
            Some(port) => SocketAddr::new(settings.local.ip(), port).to_string(),
            None => sent_by.clone(),
        };
        let tcp_record_route = format!(
            "<sip:{sent_by};lr;{CORE_PARAM}={};transport=tcp>",
            settings.core
        );
        let udp_record_route = format!("<sip:{udp_sent_by};lr;{CORE_PARAM}={}>", settings.core);
        let cluster = settings
            .cluster
            .as_ref()
            .map(|c| Cluster::new(c, settings.core));
        let domain_uri = format!("sip:{}", settings.domain);
        let domain_ip = crate::sip::Uri::parse(domain_uri.as_bytes()).and_then(|u| u.ip());
        Proxy {
            settings,
            registrar,
            agents,
            logged_in_elsewhere: HashMap::default(),
            remote_sessions: HashMap::default(),
            handed_off: HashMap::default(),
            refer_subscriptions: HashMap::default(),
            tidied_at: Duration::ZERO,
            txs: Slab::new(),
            by_server: HashMap::default(),
            by_client: HashMap::default(),
            timers: TimerQueue::new(),
            next_branch: 0,
            next_generation: 0,
            sessions: Sessions::default(),
            own_byes: HashMap::new(),
            metrics: Metrics::default(),
            sent_by,
            domain_ip,
            udp_sent_by,
            tcp_record_route,
            udp_record_route,
            draining: false,
            shedding: false,
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

    /// Whether this core refuses new work: its transactions waiting for an
    /// answer at their bound, or its receive queue filling up
    /// ([`Proxy::set_shedding`]).
    pub(crate) fn loaded(&self) -> bool {
        self.pending >= self.settings.max_transactions || self.shedding
    }

    /// Whether overload may refuse `msg` (503): a new request, not one in
    /// a dialog, nor a peer blade's under a grant this blade gave.
    pub(crate) fn sheddable(&self, source: Peer, msg: &Message) -> bool {
        msg.is_request() && !in_dialog(msg) && !self.granted_by_peer(source, msg)
    }

    /// Counts a request the runtime answered 503 itself (its core's queue
    /// full), as [`Proxy::handle_message`] counts its own.
    pub fn note_overload(&mut self) {
        self.metrics.overloaded += 1;
    }

    /// Starts or stops refusing new out-of-dialog requests (503), for a
    /// graceful stop.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Starts or stops refusing new out-of-dialog requests (503 with
    /// Retry-After) while the core is behind its receive queue.
    pub fn set_shedding(&mut self, shedding: bool) {
        self.shedding = shedding;
    }

    /// The next time [`Proxy::handle_timeout`] has work.
    pub fn next_deadline(&self) -> Option<Duration> {
        let expiry = self.registrar.location().next_expiry();
        let cluster = self.cluster.as_ref().and_then(Cluster::next_deadline);
        let sessions = self.sessions.next_expiry();
        let tidy = self.holds_expiring().then_some(self.tidied_at + TIDY_EVERY);
        [self.timers.next_deadline(), expiry, cluster, sessions, tidy]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether a table that expires its entries only when others are
    /// added holds any ([`TIDY_EVERY`]).
    fn holds_expiring(&self) -> bool {
        !self.handed_off.is_empty()
            || !self.refer_subscriptions.is_empty()
            || self.registrar.nonces().tracked_nonces() > 0
            || self
                .cluster
                .as_ref()
                .is_some_and(|c| c.target.relays_held() > 0)
    }

    /// Forgets what expired in those tables, if [`TIDY_EVERY`] has passed.
    fn tidy(&mut self, now: Duration) {
        if now < self.tidied_at + TIDY_EVERY || !self.holds_expiring() {
            return;
        }
        self.tidied_at = now;
        self.handed_off.retain(|_, (_, until)| *until > now);
        self.refer_subscriptions.retain(|_, s| s.until > now);
        self.registrar.nonces_mut().forget_expired(now);
        if let Some(c) = self.cluster.as_mut() {
            c.target.forget_expired_relays(now);
        }
    }

    /// Handles a datagram (or stream frame) from `source`.
    pub fn handle_datagram(&mut self, now: Duration, source: Peer, data: Bytes, out: &mut Output) {
        match Message::parse(data.clone()) {
            Ok(msg) => self.handle_message(now, source, msg, out),
            // A keep-alive (RFC 5626 §4.4.1 sends CRLFs; phones do so over
            // UDP too): nothing to answer, nothing wrong.
            Err(_) if data.iter().all(|&b| b == b'\r' || b == b'\n') => {}
            // So is a STUN binding request (RFC 5626 §4.4.2), binary: no
            // answer (a 400 would be read as a broken STUN server), and
            // not counted as malformed SIP.
            Err(_) if crate::sip::framing::is_stun(&data) => {}
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
            self.handle_response(now, source, msg, out);
        }
    }

    fn handle_request(&mut self, now: Duration, source: Peer, mut msg: Message, out: &mut Output) {
        if let Some(loose) = self.strict_route_fixup(&msg) {
            msg = loose;
        }
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
            Method::Ack => return self.forward_ack(source, &msg, out),
            Method::Cancel => return self.handle_cancel(now, source, &msg, out),
            _ => {}
        }
        if let Some(refusal) = Refusal::unsupported(msg.proxy_require()) {
            return self.refuse(now, source, msg, &refusal, out);
        }
        if msg
            .request_uri()
            .is_some_and(|u| u.scheme() == Scheme::Sips)
        {
            // A SIPS request must travel over TLS on every hop (RFC 3261
            // §26.2.2), which sipblade does not offer: relaying it over
            // UDP or TCP would quietly drop the security it asks for.
            let no_tls = Refusal::new(416, "Unsupported URI Scheme (SIPS needs TLS)");
            return self.refuse(now, source, msg, &no_tls, out);
        }
        let in_dialog = in_dialog(&msg);
        let max = self.settings.max_transactions;
        // In-dialog requests pass the pending bound: a BYE refused under
        // load would leave its call, and both agents, up. Only the memory
        // bound refuses them. So do the requests of a grant this blade gave.
        let busy = (!in_dialog && self.draining) || (self.loaded() && self.sheddable(source, &msg));
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
        let (ours, next_route) = self.route_split(&msg);
        if msg.max_forwards() == Some(0) && !(method == Method::Options && self.is_to_blade(&msg)) {
            return self.refuse(now, source, msg, &Refusal::new(483, "Too Many Hops"), out);
        }
        if self.is_loop(&msg) {
            return self.refuse(now, source, msg, &Refusal::new(482, "Loop Detected"), out);
        }
        if let Some(peer) = next_route.filter(|_| !in_dialog) {
            // A route set preloaded by the sender (RFC 3261 §8.1.2) may
            // lead to the other blades only: a front end is no open relay,
            // and an out-of-dialog request routed past the agents' checks
            // must not leave the cluster.
            if !self.is_peer_blade_sip(peer.addr) {
                let outside = Refusal::new(403, "Forbidden (Route outside the cluster)");
                return self.refuse(now, source, msg, &outside, out);
            }
        }
        if in_dialog || next_route.is_some() {
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
        // A binding to a blade's own SIP address would send the agent's
        // calls round in a loop (the blade retargets to it again and
        // again).
        let to_a_blade = msg.contacts().any(|c| {
            let uri = c.uri();
            self.is_us(&uri)
                || self.is_core_port(&uri)
                || route::uri_peer(&uri).is_some_and(|p| self.is_peer_blade_sip(p.addr))
        });
        if to_a_blade {
            let looping = Refusal::new(403, "Forbidden (Contact is a blade's address)");
            return self.refuse(now, source, msg, &looping, out);
        }
        let mut buf = BytesMut::new();
        let terminal_before = to.user_str().and_then(|ext| self.terminal_of(&ext));
        let outcome = self.registrar.handle_register(now, &msg, source, &mut buf);
        match &outcome {
            Outcome::LoggedIn(ext) => {
                self.metrics.registrations += 1;
                self.announce_login(now, ext, out);
                self.enter_hosted_calls(ext, out);
            }
            Outcome::Refreshed(ext) => {
                self.metrics.registrations += 1;
                if self.terminal_of(ext) != terminal_before {
                    self.announce_terminal(ext, out);
                }
            }
            Outcome::LoggedOut(ext) => {
                self.announce_logout(ext, out);
            }
            _ => {}
        }
        self.respond_new(now, source, msg, outcome.status(), buf.freeze(), out);
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
        let callee = uri.user_str().unwrap_or_default().into_owned();
        if let Some(token) = cross::hosting_token(&uri) {
            // A peer blade bringing the INVITE of a session it hosts B for
            // (SPEC §2 step 5): the token, not the caller, is checked.
            let token = token.to_vec();
            return self.accept_hosted(now, source, msg, &callee, &token, out);
        }
        // Every out-of-dialog request to an agent comes from a logged-in
        // agent, authenticated when `auth` is on: not only calls (SPEC §5)
        // but a NOTIFY, INFO or OPTIONS too, or anyone could reach the
        // agents' phones (an unsolicited `check-sync` NOTIFY reboots many).
        let caller = msg.from().uri().user_str().unwrap_or_default().into_owned();
        if let Err(refusal) = self.check_caller(now, &msg, &caller) {
            // A challenge is not an outcome: the call goes on with the
            // credentials.
            if method == Method::Invite && refusal.status != 407 {
                self.metrics.local.failed += 1;
            }
            return self.refuse(now, source, msg, &refusal, out);
        }
        let Some(record) = self.registrar.location().get(&callee) else {
            return self.refuse_unknown(now, source, msg, method, out);
        };
        if method == Method::Invite {
            match join::Named::of(&msg) {
                // A Replaces for an agent that is ready, in no call this
                // blade knows of, names no dialog the blade can tell: an
                // ordinary call, which the phone answers (RFC 3891 §3: 481
                // when it has no such dialog). Refusing it here would
                // refuse what a call without the header would get.
                Some(Some(named))
                    if named.replaces
                        && record.state == AgentState::Ready
                        && record.binding.is_some() => {}
                Some(Some(named)) => {
                    return self.route_join(now, source, msg, &caller, &callee, &named, false, out);
                }
                Some(None) => {
                    let bad = if msg.header_named("Replaces").is_some() {
                        "Bad Request (malformed Replaces)"
                    } else {
                        "Bad Request (malformed Join)"
                    };
                    return self.refuse(now, source, msg, &Refusal::new(400, bad), out);
                }
                None => {}
            }
        }
        let hosted = matches!(record.state, AgentState::Hosted { .. });
        let Some(binding) = record.binding.clone() else {
            if self.cluster.is_some() {
                // Not registered here: perhaps on another blade. A call
                // hosts the agent; anything else is only relayed.
                if method == Method::Invite {
                    if hosted && self.hosted_without_login(&callee) {
                        // Logged out mid-call, still in the hosted call.
                        return self.redirect_to_host(now, source, msg, &callee, &caller, out);
                    }
                    if self
                        .cluster
                        .as_ref()
                        .is_some_and(|c| c.source.hosts(&callee))
                    {
                        return self.busy_hosted_here(now, source, msg, out);
                    }
                    if self.sessions.get(msg.call_id()).is_some() {
                        return self.refuse_call_id_in_use(now, source, msg, out);
                    }
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
        if method == Method::Invite && caller == callee {
            // An agent calling its own extension: its phone is the
            // caller, so the callee is busy (and a session of one agent
            // would hold it in_call until the phone gave up).
            self.metrics.local.busy += 1;
            return self.refuse(now, source, msg, &Refusal::new(486, "Busy Here"), out);
        }
        if method == Method::Invite {
            if matches!(record.state, AgentState::Hosted { .. }) {
                return self.redirect_to_host(now, source, msg, &callee, &caller, out);
            }
            if record.state != AgentState::Ready {
                self.metrics.local.busy += 1;
                return self.refuse(now, source, msg, &Refusal::new(486, "Busy Here"), out);
            }
            if self.sessions.get(msg.call_id()).is_some() {
                return self.refuse_call_id_in_use(now, source, msg, out);
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

    /// 400 to a new call under the Call-ID of a live session (a merged
    /// request, RFC 3261 §8.2.2.2, a spiral to another agent, or a phone
    /// reusing Call-IDs). Sessions are kept by Call-ID: opening it would
    /// replace the live one, whose callee would then stay in_call for
    /// good. A Join leg's Call-ID in use is refused the same way (`join`).
    fn refuse_call_id_in_use(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        out: &mut Output,
    ) {
        let in_use = Refusal::new(400, "Bad Request (Call-ID in use)");
        self.refuse(now, source, msg, &in_use, out);
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
        let agent = self.agents.get(caller).cloned();
        let known = agent.is_some();
        if self.settings.auth {
            // A stranger is challenged as an agent is (and as a REGISTER
            // is answered), then refused: the answer does not tell which
            // extensions exist.
            let agent = agent.unwrap_or_else(|| Agent::nobody(caller).into());
            self.registrar
                .check_digest(now, msg, &agent, Challenger::Proxy)?;
        }
        if known && self.logged_in_on_blade(caller) {
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
        let key = ServerKey::of(msg).owned();
        let until = now + TIMER_C + self.settings.timers.t1 * 64;
        self.handed_off.insert(key, (core, until));
    }
}

#[cfg(test)]
mod cores_tests;
#[cfg(test)]
mod cross_tests;
#[cfg(test)]
mod tests;
