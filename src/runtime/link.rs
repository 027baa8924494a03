//! Drives the inter-blade QUIC link ([`crate::cluster::link::Link`]) on
//! core 0: its UDP socket, its timers, the peers' up/down state that
//! `/status` shows, and the hand-off of hosting messages between the link
//! and the cores that own them.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::UdpSocket;

use super::core::Core;
use super::trace::{Sent, TraceEvent, Tracer};
use super::warnings::Warnings;
use crate::admin::Peers;
use crate::cluster::codec::{Class, Message};
use crate::cluster::link::{Link, LinkEvent, PeerRuns};
use crate::cluster::tls::Identity;
use crate::proxy::cross::{ClusterSend, Dest};

/// Longest wait of the timer task for the link's next timeout, so that
/// it notices a stop.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// How long a stopping blade waits for its goodbyes to go out.
const CLOSE_GRACE: Duration = Duration::from_millis(50);

/// What the core running the link needs.
pub(crate) struct Setup {
    pub socket: socket2::Socket,
    pub me: String,
    pub identity: Identity,
    pub peers: Arc<Peers>,
    /// This run of the blade, drawn at random at start: the Hello that
    /// opens each connection names it.
    pub instance: u64,
}

/// The link and its socket, shared by core 0's tasks: the receive loop
/// and any task that has hosting messages to send. No borrow of the link
/// is held across an `.await`.
pub(crate) struct LinkDriver {
    link: RefCell<Link>,
    socket: UdpSocket,
    pub(crate) peers: Arc<Peers>,
    tracer: Option<(Tracer, Arc<str>)>,
    /// When the timer task wakes next.
    timer_at: Cell<Instant>,
    /// Wakes the timer task early: whatever sends on the link can move its
    /// next timeout earlier (a retransmission timer, pacing), and the task
    /// may be asleep until a later one.
    rearm: (LocalSender<()>, LocalReceiver<()>),
    /// Refused connections, warned about at most every 10 s: anything can
    /// knock on the QUIC port.
    refusals: RefCell<Warnings>,
    /// The peers' connections and runs: tells a restarted peer from a
    /// link that dropped.
    runs: RefCell<PeerRuns>,
}

impl LinkDriver {
    pub(crate) fn new(setup: Setup, tracer: Option<(Tracer, Arc<str>)>) -> LinkDriver {
        let configured: Vec<(String, std::net::SocketAddr)> = setup.peers.configured().to_vec();
        let mut hello = BytesMut::new();
        Message::Hello {
            instance: setup.instance,
        }
        .encode(&mut hello);
        LinkDriver {
            link: RefCell::new(
                Link::new(&setup.me, setup.identity, &configured, Instant::now())
                    .with_hello(hello.freeze()),
            ),
            socket: UdpSocket::from(setup.socket),
            peers: setup.peers,
            tracer,
            timer_at: Cell::new(Instant::now()),
            rearm: local_channel::new_bounded(1),
            refusals: RefCell::new(Warnings::default()),
            runs: RefCell::new(PeerRuns::new()),
        }
    }

    /// Puts hosting messages on the link, then sends what it produced.
    /// Requests open an exchange (their answer comes back on it); notices
    /// and redirects are one-way. A peer that is down gets nothing: the
    /// resync on reconnection covers notices, the hosting timeouts the rest.
    pub(crate) async fn send(&self, sends: Vec<ClusterSend>) {
        let now = Instant::now();
        {
            let mut link = self.link.borrow_mut();
            for ClusterSend { to, msg } in sends {
                let mut buf = BytesMut::new();
                msg.encode(&mut buf);
                let frame = buf.freeze();
                match to {
                    Dest::Reply { peer, reply } => {
                        self.trace(&peer, &msg);
                        link.respond(now, reply, frame);
                    }
                    Dest::Peer(peer) => {
                        self.trace(&peer, &msg);
                        // An unhost needs no answer (the lease covers a
                        // lost one): one-way, it saves the peer a reply and
                        // this core a wake-up per call.
                        let exchange =
                            msg.class() == Class::Request && !matches!(msg, Message::Unhost { .. });
                        let sent = if exchange {
                            link.request(now, &peer, frame).is_some()
                        } else {
                            link.send(now, &peer, frame)
                        };
                        if !sent {
                            tracing::debug!(%peer, msg = msg.name(), "peer down: not sent");
                        }
                    }
                    Dest::AllPeers => {
                        for (peer, _) in self.peers.configured() {
                            if link.send(now, peer, frame.clone()) {
                                self.trace(peer, &msg);
                            }
                        }
                    }
                }
            }
        }
        self.flush().await;
    }

    async fn flush(&self) {
        loop {
            let next = self.link.borrow_mut().poll_transmit();
            let Some((to, data)) = next else { break };
            match self.socket.send_to(&data, to).await {
                Ok(_) => self.peers.count_datagram(true),
                Err(e) => tracing::debug!(%to, "link send failed: {e}"),
            }
        }
        let next = self.link.borrow_mut().poll_timeout();
        if next.is_some_and(|at| at < self.timer_at.get()) {
            // Full means the task is already due to look again.
            let _ = self.rearm.0.try_send(());
        }
    }

    fn trace(&self, peer: &str, msg: &Message) {
        if let Some((tracer, blade)) = &self.tracer {
            let _ = tracer.send(TraceEvent {
                at: Instant::now(),
                blade: blade.clone(),
                sent: Sent::Cluster {
                    peer: peer.to_owned(),
                    summary: summary(msg),
                },
            });
        }
    }
}

/// A message's name and the fields a reader of a ladder wants.
pub(crate) fn summary(msg: &Message) -> String {
    match msg {
        Message::Announce { entries } | Message::Withdraw { entries } => {
            let agents: Vec<&str> = entries.iter().map(|e| e.extension.as_str()).collect();
            format!("{} {}", msg.name(), agents.join(","))
        }
        Message::Resync { entries } => format!("Resync ({} agents)", entries.len()),
        Message::HostRequest {
            extension,
            lease_secs,
            ..
        } => format!("HostRequest {extension} (lease {lease_secs} s)"),
        Message::HostGranted { info, .. } => {
            format!("HostGranted {} at {}", info.extension, info.addr)
        }
        Message::HostRefused { reason, .. } => format!("HostRefused ({reason})"),
        Message::RedirectAnswer { status, .. } => format!("RedirectAnswer {status}"),
        Message::Confirmed { held, .. } => {
            format!("Confirmed ({})", if *held { "held" } else { "not held" })
        }
        other => match other.extension() {
            Some(ext) => format!("{} {ext}", other.name()),
            None => other.name().to_owned(),
        },
    }
}

/// Runs the link until the blade stops, then closes every connection. A
/// task of its own receives; this one serves the link's timers and
/// notices the stop (the receive waits without a timeout: a linked timer
/// in io_uring on every receive would cost each datagram, as on the SIP
/// sockets).
pub(crate) async fn run(core: Rc<Core>, driver: Rc<LinkDriver>) {
    let receiving = glommio::spawn_local(receive(core.clone(), driver.clone()));
    run_timers(&core, &driver).await;
    receiving.cancel().await;
    driver.link.borrow_mut().close_all(Instant::now());
    driver.flush().await;
    glommio::timer::sleep(CLOSE_GRACE).await;
    driver.flush().await;
}

/// Feeds the link the datagrams its socket receives, for good (the task is
/// cancelled at stop).
async fn receive(core: Rc<Core>, driver: Rc<LinkDriver>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        if let Ok((n, from)) = driver.socket.recv_from(&mut buf).await {
            driver.peers.count_datagram(false);
            let data = BytesMut::from(&buf[..n]);
            driver
                .link
                .borrow_mut()
                .handle_datagram(Instant::now(), from, data);
            driver.flush().await;
            handle_events(&core, &driver).await;
        }
    }
}

/// Serves the link's timers (retransmission, acknowledgement delay, keep
/// alive, idle, reconnection) until the blade stops.
async fn run_timers(core: &Rc<Core>, driver: &Rc<LinkDriver>) {
    while !core.stopping() {
        let now = Instant::now();
        let wait = driver
            .link
            .borrow_mut()
            .poll_timeout()
            .map_or(MAX_WAIT, |t| t.saturating_duration_since(now))
            .min(MAX_WAIT);
        driver.timer_at.set(now + wait);
        futures_lite::future::or(glommio::timer::sleep(wait), async {
            let _ = driver.rearm.1.recv().await;
        })
        .await;
        driver.link.borrow_mut().handle_timeout(Instant::now());
        driver.flush().await;
        handle_events(core, driver).await;
    }
}

async fn handle_events(core: &Rc<Core>, driver: &Rc<LinkDriver>) {
    loop {
        let event = driver.link.borrow_mut().poll_event();
        let Some(event) = event else { break };
        on_event(core, driver, event).await;
    }
}

async fn on_event(core: &Rc<Core>, driver: &Rc<LinkDriver>, event: LinkEvent) {
    match event {
        LinkEvent::PeerUp(peer) => {
            driver.peers.set_up(&peer, true);
            let link = driver.runs.borrow_mut().connected(&peer);
            core.peer_state(peer.clone(), Some(link)).await;
            core.resync(driver.clone(), peer);
        }
        LinkEvent::PeerDown(peer) => {
            driver.peers.set_up(&peer, false);
            core.peer_state(peer, None).await;
        }
        LinkEvent::PeerStopped(peer) => {
            // A stopping peer takes its sessions with it: the grants it
            // held end now, as on a restart, rather than when their
            // leases run out (its hosted agents would be busy till then).
            driver.peers.set_up(&peer, false);
            core.peer_state(peer.clone(), None).await;
            let link = driver.runs.borrow().stopped(&peer);
            tracing::info!(%peer, "peer stopping: the grants of its run end");
            core.peer_restarted(peer, link).await;
        }
        LinkEvent::Request { peer, reply, frame } => match Message::decode(&frame) {
            Ok(msg) => core.from_link(peer, msg, Some(reply)).await,
            Err(e) => tracing::warn!(%peer, "undecodable request from peer: {e}"),
        },
        LinkEvent::Response { peer, frame, .. } | LinkEvent::Message { peer, frame } => {
            match Message::decode(&frame) {
                Ok(Message::Hello { instance }) => {
                    let restarted = driver.runs.borrow_mut().hello(&peer, instance);
                    if let Some(link) = restarted {
                        tracing::info!(%peer, "peer restarted: the grants of its previous run end");
                        core.peer_restarted(peer, link).await;
                    }
                }
                Ok(msg) => core.from_link(peer, msg, None).await,
                Err(e) => tracing::warn!(%peer, "undecodable frame from peer: {e}"),
            }
        }
        LinkEvent::Failed { peer, exchange } => {
            // The hosting layer's own timeouts answer for the lost request.
            tracing::debug!(%peer, exchange, "link request failed");
        }
        LinkEvent::Refused {
            addr,
            claimed,
            reason,
        } => driver.refusals.borrow_mut().warn(|refused| {
            tracing::warn!(%addr, ?claimed, refused, "refused a process that is not a cluster peer: {reason}");
        }),
    }
}
