//! One core: its UDP socket, its proxy, its share of the channel mesh.
//!
//! Tasks on the core share the proxy through a `RefCell`: the executor is
//! single-threaded, and no borrow is held across an `.await`.

use std::cell::{OnceCell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::net::{TcpListener, UdpSocket};

use super::backlog::{Backlog, WATCH_EVERY};
use super::link::LinkDriver;
use super::mesh::Mesh;
use super::tcp::{self, Connections};
use super::warnings::Warnings;
use super::{DRAIN_TIMEOUT, Shared};
use crate::admin::SnapshotRequest;
use crate::cluster::codec::{DirectoryEntry, Message as LinkMessage};
use crate::cluster::link::ReplyTo;
use crate::proxy::cross::{ClusterSend, Dest, request_core, split_notice};
use crate::proxy::route::{owner_core, shard_of};
use crate::proxy::{AgentEvent, Output, Proxy, Settings};
use crate::registrar::digest::NonceManager;
use crate::registrar::{Registrar, Settings as RegistrarSettings};
use crate::sip::{Message, Peer, Transport};
use crate::transaction::Transmit;

/// Largest datagram read (the UDP maximum).
const DATAGRAM_MAX: usize = 65_535;

/// The timer task sleeps until the proxy's next deadline, but at most half
/// of T1 and at most this long. A deadline added meanwhile is never sooner
/// than T1/2 from its creation (T1 for SIP timers, a third of a lease of at
/// least a second for hosting renewals), so none is missed; and an idle
/// core wakes only 4 times a second (each wake-up costs io_uring and
/// membarrier work, RUNTIME-NOTES).
const MAX_SLEEP: Duration = Duration::from_millis(250);

/// The shortest sleep, so a burst of due timers is handled in batches.
const TICK: Duration = Duration::from_millis(1);

/// Timers run on a grid of this step: a deadline is served at the next
/// grid point, so the many deadlines a busy core holds (each call leaves
/// several, 5 to 32 s out) share wake-ups instead of waking the core for
/// each. Waking an idle core costs tens of microseconds on a VM (a
/// `membarrier` and several `io_uring_enter`, RUNTIME-NOTES). 50 ms late is
/// a tenth of the shortest SIP timer (T1, 500 ms), and about Kamailio's
/// timer tick (1/16 s); against a 10 ms grid it cut the CPU per call at
/// cores = 2 and 300 calls/s by 17-35% (BENCHMARKS.md), where each core
/// used to wake at nearly every grid point. Call-state notices between
/// cores ride the same grid.
const TIMER_GRAIN: Duration = Duration::from_millis(50);

/// When to wake for a deadline at `at`: the next grid point.
fn wake_time(at: Duration) -> Duration {
    let grain = TIMER_GRAIN.as_nanos();
    let rounded = at.as_nanos().div_ceil(grain) * grain;
    Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

/// How long a step's datagrams wait for the other cores to apply its
/// notices: they normally do within a millisecond; the bound only matters
/// when a core is stopping or stalled.
const NOTICE_WAIT: Duration = Duration::from_millis(50);

/// How long a stopped core waits for its short-lived tasks to end (they
/// hold the core, and so its sockets, open).
const TASKS_WAIT: Duration = Duration::from_secs(1);

/// What cores send each other.
pub(crate) enum CoreMsg {
    /// A message this core received that the other owns (boxed: a parsed
    /// message is about 1 KiB of spans, the box keeps channel slots small).
    Sip { source: Peer, msg: Box<Message> },
    /// An agent event, and where to say it has been applied.
    Notice(AgentEvent, flume::Sender<()>),
    /// Call-state events, in the order they happened (see
    /// `Core::queue_notices`).
    Notices(Vec<AgentEvent>),
    /// Bytes for a stream connection this core owns.
    StreamSend { peer: Peer, data: Bytes },
    /// A hosting message from peer blade `from` for this core's agents or
    /// sessions; `reply` is where a request's answer goes.
    Cluster {
        from: String,
        msg: LinkMessage,
        reply: Option<ReplyTo>,
    },
    /// The link to a peer blade came up over its connection number
    /// `link` (`Some`), or went down (`None`).
    PeerState { peer: String, link: Option<u64> },
    /// A peer blade restarted: its Hello on connection `link` named a new
    /// run.
    PeerRestarted { peer: String, link: u64 },
    /// Asks for this core's logged-in agents (a directory resync).
    Entries(flume::Sender<Vec<DirectoryEntry>>),
    /// Hosting messages for the link, which core 0 runs.
    ToLink(Vec<ClusterSend>),
    /// A Join (or Replaces) INVITE for a session this core owns, checked
    /// by the core that received it.
    Join { source: Peer, msg: Box<Message> },
    /// A request of this core's transactions that could not be sent: the
    /// stream connection it was for is gone.
    Unsent(Bytes),
}

/// How long a resync waits for each core's agents.
const ENTRIES_WAIT: Duration = Duration::from_secs(1);

pub(crate) struct Core {
    proxy: RefCell<Proxy>,
    socket: UdpSocket,
    /// This core's own port, named in its Vias: responses to the requests
    /// it forwards arrive here.
    via_socket: Option<UdpSocket>,
    pub(crate) conns: Connections,
    mesh: Option<Mesh>,
    shared: Arc<Shared>,
    index: usize,
    /// The inter-blade link, on core 0 of a clustered blade.
    link: OnceCell<Rc<LinkDriver>>,
    /// Call-state notices not yet sent, by core.
    outbox: RefCell<Vec<Vec<AgentEvent>>>,
    /// Whether a task will send the outbox.
    outbox_flush_due: std::cell::Cell<bool>,
    /// Shedding starts and stops, logged at most every ten seconds each: a
    /// sustained flood turns shedding on and off many times a second.
    shedding_news: RefCell<(Warnings, Warnings)>,
}

impl Core {
    /// The blade's SIP IP (what outbound connections are opened from).
    pub(crate) fn sip_ip(&self) -> std::net::IpAddr {
        self.shared.sip.ip()
    }

    /// How long a TCP write may wait for its peer to read.
    pub(crate) fn tcp_write_timeout(&self) -> Duration {
        self.shared.options.tcp_write_timeout
    }

    /// How long an accepted TCP connection may take to deliver its first
    /// message, and a partly received message to complete.
    pub(crate) fn tcp_message_timeouts(&self) -> (Duration, Duration) {
        let options = &self.shared.options;
        (
            options.tcp_first_message_timeout,
            options.tcp_message_timeout,
        )
    }

    /// This core's proxy, to update.
    pub(crate) fn proxy_mut(&self) -> std::cell::RefMut<'_, Proxy> {
        self.proxy.borrow_mut()
    }

    fn now(&self) -> Duration {
        self.shared.epoch.elapsed()
    }

    /// Whether the blade is stopping.
    pub(crate) fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Relaxed)
    }

    /// Sends what a proxy step produced. A step that tells other cores
    /// something (an agent logged in, joined or left a call) sends its
    /// messages only once they have applied it, so that a client reacting
    /// to them (a call placed right after its REGISTER's 200) finds every
    /// core up to date. That wait runs in a task of its own: it must not
    /// stall this core, nor a full peer queue.
    async fn flush(self: &Rc<Self>, mut out: Output) {
        // Only logins and logouts gate the reply: another core must know a
        // caller is logged in before the caller can act on its 200. Call
        // state changes of the caller need no such ordering.
        let gating = out.notices.iter().any(|n| {
            matches!(
                n.event,
                AgentEvent::LoggedIn { .. } | AgentEvent::LoggedOut(_)
            )
        });
        if !gating {
            // Queued before the messages below go: one for another core
            // takes that core's notices along, ahead of it.
            self.queue_notices(std::mem::take(&mut out.notices));
        }
        for handoff in std::mem::take(&mut out.handoffs) {
            if let Some(mesh) = &self.mesh {
                let (source, msg) = (handoff.source, Box::new(handoff.msg));
                let msg = if handoff.join {
                    CoreMsg::Join { source, msg }
                } else {
                    CoreMsg::Sip { source, msg }
                };
                self.send_outbox(handoff.core);
                // Rare and retransmitted by the phone if lost: never wait.
                let _ = mesh.try_send_to(handoff.core, msg);
            }
        }
        let cluster = std::mem::take(&mut out.cluster);
        if !cluster.is_empty() {
            self.to_link(cluster).await;
        }
        if !gating {
            return self.transmit(out.transmits).await;
        }
        let core = self.clone();
        glommio::spawn_local(async move {
            let mut applied = Vec::new();
            for notice in out.notices {
                for target in core.targets(notice.to) {
                    let Some(mesh) = &core.mesh else { continue };
                    let (ack, done) = flume::bounded(1);
                    let msg = CoreMsg::Notice(notice.event.clone(), ack);
                    if mesh.send_to(target, msg).await.is_ok() {
                        applied.push(done);
                    }
                }
            }
            let _ = glommio::timer::timeout(NOTICE_WAIT, async {
                for done in applied {
                    let _ = done.recv_async().await;
                }
                Ok(())
            })
            .await;
            core.transmit(out.transmits).await;
        })
        .detach();
    }

    /// Puts hosting messages on the link: here on core 0, else through
    /// core 0's queue.
    async fn to_link(self: &Rc<Self>, sends: Vec<ClusterSend>) {
        if let Some(driver) = self.link.get() {
            return driver.send(sends).await;
        }
        let Some(mesh) = &self.mesh else { return };
        // What core 0 sends a peer may lead to a request back to core 0 (a
        // call for an agent whose call just ended here): the notices it
        // needs go first.
        self.send_outbox(0);
        if let Err(flume::TrySendError::Full(msg)) = mesh.try_send_to(0, CoreMsg::ToLink(sends)) {
            // Core 0 is busy: wait for room in a task of our own.
            let core = self.clone();
            glommio::spawn_local(async move {
                if let Some(mesh) = &core.mesh {
                    let _ = mesh.send_to(0, msg).await;
                }
            })
            .detach();
        }
    }

    /// Hands a message from the link to the core that owns it (SPEC §8:
    /// hosting state lives with the agent's or the session's core).
    pub(crate) async fn from_link(
        self: &Rc<Self>,
        from: String,
        msg: LinkMessage,
        reply: Option<ReplyTo>,
    ) {
        let cores = self.shared.cores;
        match request_core(&msg, cores) {
            Some(core) => {
                self.deliver(core, CoreMsg::Cluster { from, msg, reply })
                    .await
            }
            None => {
                for (core, part) in split_notice(&msg, cores) {
                    let from = from.clone();
                    let msg = CoreMsg::Cluster {
                        from,
                        msg: part,
                        reply: None,
                    };
                    self.deliver(core, msg).await;
                }
            }
        }
    }

    /// Tells every core that the link to `peer` came up over connection
    /// `link` or went down (`None`).
    pub(crate) async fn peer_state(self: &Rc<Self>, peer: String, link: Option<u64>) {
        self.broadcast(|| CoreMsg::PeerState {
            peer: peer.clone(),
            link,
        })
        .await;
    }

    /// Tells every core that `peer` restarted, as its Hello on connection
    /// `link` showed: the grants its previous run held end.
    pub(crate) async fn peer_restarted(self: &Rc<Self>, peer: String, link: u64) {
        self.broadcast(|| CoreMsg::PeerRestarted {
            peer: peer.clone(),
            link,
        })
        .await;
    }

    /// Delivers a message made by `msg` to every core: the others' queues
    /// first (that never waits), then this core, whose handling may wait
    /// to send; so each core gets link news in the order the link gave
    /// them.
    async fn broadcast(self: &Rc<Self>, msg: impl Fn() -> CoreMsg) {
        for core in (0..self.shared.cores).filter(|&c| c != self.index) {
            self.deliver(core, msg()).await;
        }
        self.deliver(self.index, msg()).await;
    }

    /// Sends `peer` every logged-in agent of this blade, gathered from all
    /// cores into one resync (the peer replaces what it knew of us).
    pub(crate) fn resync(self: &Rc<Self>, driver: Rc<LinkDriver>, peer: String) {
        let core = self.clone();
        glommio::spawn_local(async move {
            let mut entries = core.proxy.borrow_mut().directory_entries();
            let mut parts = Vec::new();
            if let Some(mesh) = &core.mesh {
                for target in core.targets(None) {
                    let (tx, rx) = flume::bounded(1);
                    if mesh.send_to(target, CoreMsg::Entries(tx)).await.is_ok() {
                        parts.push(rx);
                    }
                }
            }
            for rx in parts {
                let part = glommio::timer::timeout(ENTRIES_WAIT, async {
                    Ok(rx.recv_async().await.unwrap_or_default())
                })
                .await;
                entries.extend(part.unwrap_or_default());
            }
            entries.sort_by(|a, b| a.extension.cmp(&b.extension));
            let msg = LinkMessage::Resync { entries };
            driver
                .send(vec![ClusterSend {
                    to: Dest::Peer(peer),
                    msg,
                }])
                .await;
        })
        .detach();
    }

    /// Handles `msg` here if it is this core's, else queues it for its
    /// core. A full queue drops it: the hosting layer's timeouts answer.
    ///
    /// Call-state notices queued for that core go first, as with a SIP
    /// handoff: a host request for an agent whose call just ended on this
    /// core must find the agent free there, not busy until the next
    /// timer grid point.
    async fn deliver(self: &Rc<Self>, core: usize, msg: CoreMsg) {
        if core == self.index {
            return self.on_core_msg(msg).await;
        }
        self.send_outbox(core);
        if let Some(mesh) = &self.mesh {
            if mesh.try_send_to(core, msg).is_err() {
                tracing::warn!(core, "core queue full: link message dropped");
            }
        }
    }

    /// The cores a notice goes to: the one named, or every other core.
    fn targets(&self, to: Option<usize>) -> Vec<usize> {
        match to {
            Some(target) => vec![target],
            None => (0..self.shared.cores)
                .filter(|&c| c != self.index)
                .collect(),
        }
    }

    /// Queues call-state notices (an agent joined or left a call) for the
    /// cores that own the agents. Nothing waits on them, so they are not
    /// sent at once: they ride along with the next message to that core, or
    /// go at the next timer grid point, when a busy core is awake for its
    /// own timers anyway. Sending each alone woke an idle core per notice
    /// (an eventfd write, then a wake-up and a park there).
    fn queue_notices(self: &Rc<Self>, notices: Vec<crate::proxy::Notice>) {
        if notices.is_empty() {
            return;
        }
        {
            let mut outbox = self.outbox.borrow_mut();
            for notice in notices {
                for target in self.targets(notice.to) {
                    if let Some(queue) = outbox.get_mut(target) {
                        queue.push(notice.event.clone());
                    }
                }
            }
        }
        if self.outbox_flush_due.replace(true) {
            return;
        }
        let core = self.clone();
        glommio::spawn_local(async move {
            let now = core.now();
            glommio::timer::sleep(wake_time(now + TICK).saturating_sub(now)).await;
            core.outbox_flush_due.set(false);
            for target in 0..core.shared.cores {
                core.send_outbox(target);
            }
        })
        .detach();
    }

    /// Sends the notices queued for `target`, in one message.
    fn send_outbox(self: &Rc<Self>, target: usize) {
        let events = match self.outbox.borrow_mut().get_mut(target) {
            Some(queue) if !queue.is_empty() => std::mem::take(queue),
            _ => return,
        };
        let Some(mesh) = &self.mesh else { return };
        if let Err(flume::TrySendError::Full(msg)) =
            mesh.try_send_to(target, CoreMsg::Notices(events))
        {
            // A full peer queue must not stall this core: wait in a task.
            let core = self.clone();
            glommio::spawn_local(async move {
                if let Some(mesh) = &core.mesh {
                    let _ = mesh.send_to(target, msg).await;
                }
            })
            .detach();
        }
    }

    /// Starts or stops shedding new requests (see [`Backlog`]).
    fn set_shedding(&self, shedding: bool) {
        let core = self.index;
        let mut news = self.shedding_news.borrow_mut();
        if shedding {
            news.0.warn(|times| {
                tracing::warn!(
                    core,
                    times,
                    "behind the SIP receive queue: new requests get 503 until it drains"
                );
            });
        } else {
            news.1.warn(|times| {
                tracing::info!(core, times, "caught up with the SIP receive queue");
            });
        }
        self.proxy.borrow_mut().set_shedding(shedding);
    }

    async fn transmit(self: &Rc<Self>, transmits: Vec<Transmit>) {
        for t in transmits {
            if let Some(tracer) = &self.shared.options.trace {
                self.trace_sip(tracer, &t);
            }
            match t.to.transport {
                Transport::Udp => {
                    // Everything leaves from the SIP address: phones that
                    // accept requests only from their registrar's address
                    // keep working. Responses still reach this core's own
                    // port, which our Vias name.
                    if let Err(e) = self.socket.send_to(&t.data, t.to.addr).await {
                        tracing::debug!(to = %t.to.addr, "send failed: {e}");
                        if is_unreachable(&e) {
                            self.unsent(t.data);
                        }
                    }
                }
                Transport::Tcp => self.send_stream(t.to, t.data),
            }
        }
    }

    fn trace_sip(&self, tracer: &super::trace::Tracer, t: &Transmit) {
        let Ok(msg) = Message::parse(t.data.clone()) else {
            return;
        };
        let line_end = memchr::memchr(b'\r', t.data.as_ref()).unwrap_or(t.data.len());
        let start_line = String::from_utf8_lossy(&t.data[..line_end]).into_owned();
        let cseq = format!("{} {}", msg.cseq().seq, msg.cseq_method_str());
        let _ = tracer.send(super::trace::TraceEvent {
            at: std::time::Instant::now(),
            blade: self.shared.blade_id.clone(),
            sent: super::trace::Sent::Sip {
                from: self.shared.sip,
                to: t.to.addr,
                start_line,
                cseq,
            },
        });
    }

    /// Sends on a stream: on the connection named (handing the bytes to the
    /// core that owns it), else on a connection to the address, this
    /// core's or another's (RFC 3261 §18.1.1: an open connection to the
    /// destination is used), else on a new connection.
    fn send_stream(self: &Rc<Self>, peer: Peer, data: Bytes) {
        let owner = match peer.conn {
            Some(conn) if usize::from(conn.core) != self.index => Some(usize::from(conn.core)),
            _ if self.conns.send(peer, data.clone()) => return,
            _ => self.conns.owner_elsewhere(peer.addr),
        };
        match owner {
            Some(owner) => self.hand_stream_send(owner, peer, data),
            // No connection anywhere: a new one, as in send_stream_here.
            None => tcp::connect(self, peer.addr, data),
        }
    }

    fn hand_stream_send(&self, owner: usize, peer: Peer, data: Bytes) {
        if let Some(mesh) = &self.mesh {
            let msg = CoreMsg::StreamSend { peer, data };
            if mesh.try_send_to(owner, msg).is_err() {
                tracing::warn!(core = owner, "core queue full, stream message dropped");
            }
        }
    }

    /// Sends on this core's connection, or on a new one. A message handed
    /// over by another core ends here too: if the connection it was meant
    /// for has just closed, handing it on again could go round in circles.
    fn send_stream_here(self: &Rc<Self>, peer: Peer, data: Bytes) {
        if !self.conns.send(peer, data.clone()) {
            // No connection (an agent's own has closed): open one to its
            // address. If that fails, the transaction fails at once (RFC
            // 3261 §16.9) rather than let the call ring for timer B.
            tcp::connect(self, peer.addr, data);
        }
    }

    /// Handles one received message (a datagram or a stream frame): here,
    /// or on the core that owns it.
    pub(crate) async fn on_datagram(self: &Rc<Self>, source: Peer, data: Bytes) {
        let now = self.now();
        let mut out = Output::default();
        match Message::parse(data.clone()) {
            Ok(msg) => match owner_core(&msg, self.shared.cores) {
                Some(owner) if owner != self.index => {
                    self.proxy.borrow_mut().note_handoff();
                    // The owner is woken for this message anyway: queued
                    // notices for it go first, in the same wake-up.
                    self.send_outbox(owner);
                    if let Some(mesh) = &self.mesh {
                        let handoff = CoreMsg::Sip {
                            source,
                            msg: Box::new(msg),
                        };
                        if let Err(flume::TrySendError::Full(CoreMsg::Sip { source, msg })) =
                            mesh.try_send_to(owner, handoff)
                        {
                            // The owner's queue is at its bound.
                            let sheddable = self.proxy.borrow().sheddable(source, &msg);
                            match Backpressure::of(sheddable, source) {
                                // Shed a new request here rather than queue
                                // without limit (SPEC §5: 503), counted as
                                // the owner's own 503s are.
                                Backpressure::Refuse => {
                                    tracing::debug!(owner, "core queue full: 503");
                                    if let Some(data) = crate::proxy::overload_response(&msg) {
                                        self.proxy.borrow_mut().note_overload();
                                        out.transmits.push(crate::transaction::Transmit {
                                            to: source,
                                            data,
                                        });
                                    }
                                }
                                Backpressure::Wait => {
                                    let handoff = CoreMsg::Sip { source, msg };
                                    let _ = mesh.send_to(owner, handoff).await;
                                }
                                Backpressure::Drop => {
                                    tracing::debug!(
                                        owner,
                                        "core queue full: dropped, to be retransmitted"
                                    );
                                }
                            }
                        }
                    }
                }
                _ => self
                    .proxy
                    .borrow_mut()
                    .handle_message(now, source, msg, &mut out),
            },
            Err(_) => self
                .proxy
                .borrow_mut()
                .handle_datagram(now, source, data, &mut out),
        }
        self.flush(out).await;
    }

    async fn on_core_msg(self: &Rc<Self>, msg: CoreMsg) {
        let mut out = Output::default();
        match msg {
            CoreMsg::Sip { source, msg } => {
                let now = self.now();
                self.proxy
                    .borrow_mut()
                    .handle_message(now, source, *msg, &mut out);
            }
            CoreMsg::Notice(event, applied) => {
                self.proxy.borrow_mut().handle_notice(event, &mut out);
                let _ = applied.send(());
            }
            CoreMsg::Notices(events) => {
                let mut proxy = self.proxy.borrow_mut();
                for event in events {
                    proxy.handle_notice(event, &mut out);
                }
            }
            CoreMsg::StreamSend { peer, data } => self.send_stream_here(peer, data),
            CoreMsg::Cluster { from, msg, reply } => {
                let now = self.now();
                self.proxy
                    .borrow_mut()
                    .handle_cluster(now, &from, msg, reply, &mut out);
            }
            CoreMsg::PeerState { peer, link } => {
                let now = self.now();
                self.proxy
                    .borrow_mut()
                    .peer_state(now, &peer, link, &mut out);
            }
            CoreMsg::PeerRestarted { peer, link } => {
                let now = self.now();
                self.proxy
                    .borrow_mut()
                    .peer_restarted(now, &peer, link, &mut out);
            }
            CoreMsg::Entries(reply) => {
                let _ = reply.send(self.proxy.borrow_mut().directory_entries());
            }
            CoreMsg::ToLink(sends) => out.cluster = sends,
            CoreMsg::Join { source, msg } => {
                let now = self.now();
                self.proxy
                    .borrow_mut()
                    .handle_join_handoff(now, source, *msg, &mut out);
            }
            CoreMsg::Unsent(data) => {
                if let Ok(msg) = Message::parse(data) {
                    self.unsent_here(&msg, &mut out);
                }
            }
        }
        self.flush(out).await;
    }

    /// A request that could not be sent: its transaction fails now.
    fn unsent_here(&self, msg: &Message, out: &mut Output) {
        let now = self.now();
        self.proxy.borrow_mut().handle_unsent(now, msg, out);
    }

    /// Tells the core whose transaction sent `data` (its branch names it)
    /// that it could not be sent.
    pub(super) fn unsent(self: &Rc<Self>, data: Bytes) {
        // What a core sent parses; anything else has no transaction to fail.
        let Ok(msg) = Message::parse(data) else {
            return;
        };
        let owner = msg
            .top_via()
            .branch()
            .and_then(crate::proxy::route::core_of_branch)
            .filter(|&c| c < self.shared.cores)
            .unwrap_or(self.index);
        match &self.mesh {
            Some(mesh) if owner != self.index => {
                let unsent = CoreMsg::Unsent(msg.buffer().clone());
                if mesh.try_send_to(owner, unsent).is_err() {
                    tracing::debug!(
                        owner,
                        "core queue full: an unsent request times out instead"
                    );
                }
            }
            _ => {
                let core = self.clone();
                glommio::spawn_local(async move {
                    let mut out = Output::default();
                    core.unsent_here(&msg, &mut out);
                    core.flush(out).await;
                })
                .detach();
            }
        }
    }
}

/// Whether a failed datagram send says the destination cannot be reached
/// from this socket at all (an address of the other IP version, no
/// route), so that the request's transaction fails now (RFC 3261 §16.9)
/// rather than at its timeout. A passing shortage (a full buffer) is not:
/// the retransmission timer gets past it.
fn is_unreachable(e: &glommio::GlommioError<()>) -> bool {
    let glommio::GlommioError::IoError(e) = e else {
        return false;
    };
    let transient = [libc::EAGAIN, libc::EINTR, libc::ENOBUFS, libc::ENOMEM];
    e.raw_os_error()
        .is_some_and(|code| !transient.contains(&code))
}

/// What a core does with a message for another core whose inbox is full.
/// A new request is refused (503), as the owner would under load. An
/// in-dialog request, a peer blade's request under a grant this blade
/// gave, or a response must not be (not `sheddable`, as
/// [`Proxy::sheddable`] reads it): a BYE answered 503 ends
/// the call at the phone while the blade keeps it, and both agents
/// `in_call`. Over UDP its sender retransmits it (a response comes again
/// with its request's retransmission, or is itself retransmitted), so it
/// is dropped; a stream has no retransmission, so its reading waits for
/// room (the connection's own backpressure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backpressure {
    Refuse,
    Wait,
    Drop,
}

impl Backpressure {
    fn of(sheddable: bool, source: Peer) -> Backpressure {
        if sheddable {
            Backpressure::Refuse
        } else if source.transport.is_reliable() {
            Backpressure::Wait
        } else {
            Backpressure::Drop
        }
    }
}

/// Reads datagrams from the shared SIP socket, or from this core's own
/// (`own`), until the blade stops.
async fn receive_loop(core: Rc<Core>, own: bool) {
    let socket = match (own, &core.via_socket) {
        (false, _) => &core.socket,
        (true, Some(via)) => via,
        (true, None) => return,
    };
    // New calls arrive on the shared socket: that is where falling behind
    // is shed (this core's own port takes answers and in-dialog requests).
    let backlog = (!own).then(|| Rc::new(RefCell::new(Backlog::new(socket.as_raw_fd()))));
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                if let Some(backlog) = &backlog {
                    let look = backlog.borrow_mut().received(Instant::now);
                    if let Some(shedding) = look {
                        core.set_shedding(shedding);
                        if shedding {
                            watch_backlog(&core, backlog);
                        }
                    }
                }
                let data = Bytes::copy_from_slice(&buf[..n]);
                core.on_datagram(Peer::udp(from), data).await;
            }
            Err(e) => {
                if core.stopping() {
                    break;
                }
                tracing::trace!("recv: {e}");
            }
        }
    }
}

/// While `core` sheds, looks at its queue every [`WATCH_EVERY`], datagrams
/// or not, and stops shedding once it has drained: requests that reach
/// the core by other ways than its socket (handed over by another core,
/// or on TCP) are not refused 503 after a burst until its socket happens
/// to receive another datagram.
fn watch_backlog(core: &Rc<Core>, backlog: &Rc<RefCell<Backlog>>) {
    if !backlog.borrow_mut().watch() {
        return;
    }
    let (core, backlog) = (core.clone(), backlog.clone());
    glommio::spawn_local(async move {
        while backlog.borrow().shedding() && !core.stopping() {
            glommio::timer::sleep(WATCH_EVERY).await;
            if backlog.borrow_mut().look(Instant::now()) == Some(false) {
                core.set_shedding(false);
            }
        }
        backlog.borrow_mut().unwatched();
    })
    .detach();
}

/// A core's UDP sockets.
pub(crate) struct Sockets {
    /// On the SIP address, shared with the other cores (SO_REUSEPORT).
    pub sip: socket2::Socket,
    /// On a port of this core's own (several cores only).
    pub via: Option<socket2::Socket>,
    /// The own ports of all the cores (several cores only).
    pub core_ports: Vec<u16>,
}

/// The body of one core's executor: core `index`, with its share of the
/// mesh (its handle and its inbox) when the blade has several cores.
pub(crate) async fn run(
    shared: Arc<Shared>,
    index: usize,
    sockets: Sockets,
    mesh: Option<(Mesh, flume::Receiver<CoreMsg>)>,
    status: flume::Receiver<SnapshotRequest>,
    link: Option<super::link::Setup>,
    ready: std::sync::mpsc::Sender<(usize, super::Started)>,
) {
    let (mesh, inbox) = mesh.unzip();
    let span = tracing::info_span!("core", index);
    let _entered = span.enter();

    let config = &shared.config;
    let own_agents = shared
        .agents
        .values()
        .filter(|a| shard_of(a.extension.as_bytes(), shared.cores) == index)
        .cloned();
    let registrar = Registrar::new(
        RegistrarSettings {
            domain: config.blade.domain.clone(),
            auth: config.agents.auth,
            own_ip: Some(shared.sip.ip()),
            // The registrar's `now` counts from `shared.epoch`.
            unix_at_epoch: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|unix| unix.checked_sub(shared.epoch.elapsed())),
        },
        own_agents,
        NonceManager::from_secret(shared.nonce_secret).with_issuer(index as u16),
    );
    let socket = UdpSocket::from(sockets.sip);
    let via_socket = sockets.via.map(UdpSocket::from);
    let via_port = via_socket
        .as_ref()
        .and_then(|s| s.local_addr().ok())
        .map(|a| a.port());
    // No read timeout: the receive loops end when the core cancels them
    // at stop, and a timeout would cost every receive that waits a linked
    // timer in io_uring, and an idle core a wake-up per socket 5 times a
    // second.
    let settings = Settings {
        blade_id: config.blade.id.clone(),
        domain: config.blade.domain.clone(),
        local: shared.sip,
        auth: config.agents.auth,
        core: index,
        cores: shared.cores,
        timers: shared.options.timers,
        max_transactions: shared.options.max_transactions,
        cluster: shared.cluster.clone(),
        via_port,
        core_ports: sockets.core_ports,
        max_call: Duration::from_secs(config.blade.max_call_secs),
    };
    let core = Rc::new(Core {
        proxy: RefCell::new(Proxy::new(settings, registrar, shared.agents.clone())),
        socket,
        via_socket,
        mesh,
        shared: shared.clone(),
        index,
        conns: Connections::new(index, shared.streams.clone()),
        link: OnceCell::new(),
        outbox: RefCell::new(vec![Vec::new(); shared.cores]),
        outbox_flush_due: std::cell::Cell::new(false),
        shedding_news: RefCell::default(),
    });

    // The long-lived tasks, cancelled when the core stops: each holds the
    // core, so a leftover one would keep its sockets bound after `stop`.
    let mut tasks = Vec::new();
    // The link task says goodbye to its peers when the blade stops (so
    // they see it go at once, not after the idle timeout) and then ends;
    // the core waits for that before it stops.
    let link_running = Rc::new(std::cell::Cell::new(false));
    if let Some(setup) = link {
        let tracer = shared
            .options
            .trace
            .clone()
            .map(|t| (t, shared.blade_id.clone()));
        let driver = Rc::new(LinkDriver::new(setup, tracer));
        let _ = core.link.set(driver.clone());
        link_running.set(true);
        let running = link_running.clone();
        let linked = core.clone();
        glommio::spawn_local(async move {
            super::link::run(linked, driver).await;
            running.set(false);
        })
        .detach();
    }

    // Each core listens on the SIP address for TCP too (glommio sets
    // SO_REUSEPORT); a connection stays on the core that accepted it.
    match TcpListener::bind(shared.sip) {
        Ok(listener) => {
            tasks.push(glommio::spawn_local(tcp::accept_loop(
                core.clone(),
                listener,
                shared.tcp_per_core,
            )));
            // The blade counts as started once every core listens.
            let _ = ready.send((index, super::Started::Listening));
        }
        Err(e) => {
            let message = format!("cannot listen on TCP {}: {e}", shared.sip);
            let _ = ready.send((index, super::Started::Failed(message)));
            return;
        }
    }

    tasks.push(glommio::spawn_local(receive_loop(core.clone(), false)));
    if core.via_socket.is_some() {
        tasks.push(glommio::spawn_local(receive_loop(core.clone(), true)));
    }

    if let Some(inbox) = inbox {
        let core = core.clone();
        tasks.push(glommio::spawn_local(async move {
            while let Ok(msg) = inbox.recv_async().await {
                core.on_core_msg(msg).await;
            }
        }));
    }

    let answering = core.clone();
    tasks.push(glommio::spawn_local(async move {
        while let Ok(reply) = status.recv_async().await {
            let snapshot = answering.proxy.borrow().snapshot();
            let _ = reply.send(snapshot);
        }
    }));

    // The timer loop is the executor's main task: when it returns, the core
    // stops.
    let mut drain_until = None;
    let mut counted_drained = false;
    let max_sleep = (shared.options.timers.t1 / 2).clamp(TICK, MAX_SLEEP);
    loop {
        let now = core.now();
        let next = core.proxy.borrow().next_deadline();
        let nap = next
            .map_or(max_sleep, |at| wake_time(at).saturating_sub(now))
            .clamp(TICK, max_sleep);
        glommio::timer::sleep(nap).await;
        let now = core.now();
        let mut out = Output::default();
        core.proxy.borrow_mut().handle_timeout(now, &mut out);
        core.flush(out).await;
        if shared.stopping.load(Ordering::Relaxed) {
            let until = *drain_until.get_or_insert(now + DRAIN_TIMEOUT);
            core.proxy.borrow_mut().set_draining(true);
            let drained = core.proxy.borrow().pending_transactions() == 0 && !link_running.get();
            if drained && !counted_drained {
                counted_drained = true;
                shared.drained.fetch_add(1, Ordering::SeqCst);
            }
            if now >= until {
                // Whatever is still open gets an answer now rather than
                // never: the caller a 503, a ringing callee a CANCEL.
                let mut out = Output::default();
                core.proxy.borrow_mut().abandon_pending(now, &mut out);
                core.flush(out).await;
                break;
            }
            if shared.drained.load(Ordering::SeqCst) >= shared.cores {
                break;
            }
        }
    }
    for task in tasks {
        task.cancel().await;
    }
    // Tasks still running (a flush waiting on a stopped peer, a stream
    // connection) hold the core; give them a moment, so that the sockets
    // close with the core when this returns.
    let until = core.now() + TASKS_WAIT;
    while Rc::strong_count(&core) > 1 && core.now() < until {
        glommio::timer::sleep(TICK).await;
    }
}
