//! The inter-blade link: one QUIC connection per peer over quinn-proto,
//! sans-IO. Datagrams and the time go in; datagrams to send, timers and
//! [`LinkEvent`]s come out, so a glommio task can drive it on a core
//! without quinn's `Send + Sync` runtime (RUNTIME-NOTES), and tests can run
//! two blades' links against each other in memory.
//!
//! - One connection per pair of blades: the blade whose id sorts first
//!   connects, the other accepts, so the two never race to build two.
//!   Lost connections are retried with backoff.
//! - Mutual TLS with the cluster CA ([`super::tls`]). A peer is admitted
//!   only if its certificate names a configured peer; anything else is
//!   closed and reported as [`LinkEvent::Refused`].
//! - A request is one bidirectional stream: the request frame, FIN, the
//!   answer frame, FIN. A one-way message is one unidirectional stream.
//!   Frames are opaque bytes here (the codec lives in [`super::codec`]).
//! - Each side opens each connection with its hello frame
//!   ([`Link::with_hello`]: the codec's `Hello`, naming this run of the
//!   blade), one-way, before anything else can be sent on it. QUIC does
//!   not order streams, so a request sent right after it may still be read
//!   first; [`PeerRuns`] numbers the connections so that does not matter.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, EndpointConfig, Event, HashedConnectionIdGenerator,
    ReadError, StreamEvent, StreamId, VarInt,
};

use super::tls::{Identity, peer_blade_id};

mod runs;

pub use runs::PeerRuns;

/// The largest frame accepted on a stream; a peer sending more is reset.
pub const MAX_FRAME: usize = 64 * 1024;

/// First and longest reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long a connection must have been up before its loss restarts the
/// reconnect delay at [`BACKOFF_MIN`]. A peer that accepts the handshake
/// and then closes at once (it does not list us, or takes us for another
/// blade) must not be redialled ten times a second for ever.
const STABLE_AFTER: Duration = BACKOFF_MAX;

/// Application close code: the peer is not a configured cluster member.
const CLOSE_NOT_A_PEER: u32 = 1;

/// Application close code: the blade is stopping, and with it every
/// session it drives. A peer of an earlier build closes with 0 and is
/// taken for merely down.
const CLOSE_STOPPING: u32 = 2;

/// What the link reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The connection to this peer is up and authenticated.
    PeerUp(String),
    /// The connection to this peer is gone.
    PeerDown(String),
    /// The connection to this peer is gone because the peer is stopping
    /// ([`Link::close_all`]): its run is over, not merely cut off.
    PeerStopped(String),
    /// A peer sent a request: answer it with [`Link::respond`].
    Request {
        /// The peer's blade id.
        peer: String,
        /// Where the answer goes.
        reply: ReplyTo,
        /// The request frame.
        frame: Bytes,
    },
    /// The answer to one of our requests.
    Response {
        /// The peer's blade id.
        peer: String,
        /// The id [`Link::request`] returned.
        exchange: u64,
        /// The answer frame.
        frame: Bytes,
    },
    /// One of our requests will get no answer (the peer went away, or
    /// reset the stream).
    Failed {
        /// The peer's blade id.
        peer: String,
        /// The id [`Link::request`] returned.
        exchange: u64,
    },
    /// A one-way message from a peer.
    Message {
        /// The peer's blade id.
        peer: String,
        /// The frame.
        frame: Bytes,
    },
    /// A connection from elsewhere was refused: its certificate names no
    /// configured peer, or its handshake failed (no certificate, or one
    /// from another CA).
    Refused {
        /// Where it came from.
        addr: SocketAddr,
        /// The blade id it claimed, if any.
        claimed: Option<String>,
        /// Why, for the log.
        reason: String,
    },
}

/// Where to send the answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyTo {
    conn: ConnectionHandle,
    stream: StreamId,
}

impl ReplyTo {
    /// A reply address for harnesses that route answers themselves (unit
    /// tests, and the proxy fuzz target, which lives outside the crate).
    #[doc(hidden)]
    pub fn for_tests(n: usize) -> ReplyTo {
        ReplyTo {
            conn: ConnectionHandle(n),
            stream: StreamId::new(quinn_proto::Side::Client, Dir::Bi, n as u64),
        }
    }
}

struct Peer {
    id: String,
    addr: SocketAddr,
    /// Whether we connect (our id sorts first) or wait for it.
    dial: bool,
    conn: Option<ConnectionHandle>,
    up: bool,
    /// When the current connection came up.
    up_since: Option<Instant>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

struct Conn {
    conn: quinn_proto::Connection,
    /// The configured peer this connection belongs to, once known.
    peer: Option<usize>,
    /// Partly received stream data.
    inbound: HashMap<StreamId, BytesMut>,
    /// Our requests awaiting an answer, by stream.
    exchanges: HashMap<StreamId, u64>,
    /// Frames not yet fully accepted by flow control.
    outbound: HashMap<StreamId, Bytes>,
}

/// One blade's end of the cluster link.
pub struct Link {
    me: String,
    identity: Identity,
    endpoint: quinn_proto::Endpoint,
    peers: Vec<Peer>,
    conns: HashMap<ConnectionHandle, Conn>,
    events: VecDeque<LinkEvent>,
    transmits: VecDeque<(SocketAddr, Bytes)>,
    next_exchange: u64,
    buf: Vec<u8>,
    /// Sent first on every connection, if set.
    hello: Option<Bytes>,
}

impl Link {
    /// A link for blade `me` with these peers `(id, QUIC address)`.
    pub fn new(me: &str, identity: Identity, peers: &[(String, SocketAddr)], now: Instant) -> Link {
        // Reset tokens and connection ids keyed by secrets that survive a
        // restart (see ResetKey): a restarted blade resets its peers'
        // connections to its former self, and they redial at once.
        let mut config = EndpointConfig::new(identity.reset_key.clone());
        let cid_key = identity.reset_key.cid_key();
        config.cid_generator(move || Box::new(HashedConnectionIdGenerator::from_key(cid_key)));
        let endpoint =
            quinn_proto::Endpoint::new(Arc::new(config), Some(identity.server.clone()), true, None);
        let peers = peers
            .iter()
            .map(|(id, addr)| Peer {
                id: id.clone(),
                addr: *addr,
                dial: me.to_ascii_lowercase() < id.to_ascii_lowercase(),
                conn: None,
                up: false,
                up_since: None,
                retry_at: Some(now),
                backoff: BACKOFF_MIN,
            })
            .collect();
        Link {
            me: me.to_owned(),
            identity,
            endpoint,
            peers,
            conns: HashMap::new(),
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            next_exchange: 0,
            buf: Vec::with_capacity(1500),
            hello: None,
        }
    }

    /// Sends `frame` as a one-way message first on every connection, as
    /// soon as the peer is authenticated and before [`LinkEvent::PeerUp`]
    /// lets anything else be sent: the peer learns which run of this
    /// blade is on the link before any request of it could be answered.
    pub fn with_hello(mut self, frame: Bytes) -> Link {
        self.hello = Some(frame);
        self
    }

    /// Closes every connection (the blade is stopping): peers see it go at
    /// once rather than after the idle timeout.
    pub fn close_all(&mut self, now: Instant) {
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for ch in handles {
            if let Some(c) = self.conns.get_mut(&ch) {
                c.conn.close(
                    now,
                    VarInt::from_u32(CLOSE_STOPPING),
                    Bytes::from_static(b"blade stopping"),
                );
            }
            self.drive(ch, now);
        }
        for p in &mut self.peers {
            p.up = false;
            p.retry_at = None;
        }
    }

    /// Whether the connection to `peer` is up.
    pub fn is_up(&self, peer: &str) -> bool {
        self.peers.iter().any(|p| p.id == peer && p.up)
    }

    /// Every configured peer and whether it is up, for `/status`.
    pub fn peers(&self) -> impl Iterator<Item = (&str, bool)> {
        self.peers.iter().map(|p| (p.id.as_str(), p.up))
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.transmits.pop_front()
    }

    /// When [`Link::handle_timeout`] is next due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let conns = self
            .conns
            .values_mut()
            .filter_map(|c| c.conn.poll_timeout());
        let retries = self
            .peers
            .iter()
            .filter(|p| p.dial && p.conn.is_none())
            .filter_map(|p| p.retry_at);
        conns.chain(retries).min()
    }

    /// Runs timers and (re)connects peers whose retry is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let handles: Vec<ConnectionHandle> = self.conns.keys().copied().collect();
        for ch in handles {
            if let Some(c) = self.conns.get_mut(&ch) {
                if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                    c.conn.handle_timeout(now);
                }
            }
            self.drive(ch, now);
        }
        for i in 0..self.peers.len() {
            let p = &self.peers[i];
            if p.dial && p.conn.is_none() && p.retry_at.is_some_and(|t| t <= now) {
                self.dial(i, now);
            }
        }
    }

    /// Handles a datagram received on the link's socket.
    pub fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, data: BytesMut) {
        self.buf.clear();
        match self
            .endpoint
            .handle(now, remote, None, None, data, &mut self.buf)
        {
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(c) = self.conns.get_mut(&ch) {
                    c.conn.handle_event(event);
                }
                self.drive(ch, now);
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                let mut buf = Vec::new();
                match self.endpoint.accept(incoming, now, &mut buf, None) {
                    Ok((ch, conn)) => {
                        self.conns.insert(ch, Conn::new(conn, None));
                        self.drive(ch, now);
                    }
                    Err(e) => {
                        if let Some(t) = e.response {
                            self.transmits
                                .push_back((t.destination, Bytes::copy_from_slice(&buf[..t.size])));
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(t)) => {
                self.transmits
                    .push_back((t.destination, Bytes::copy_from_slice(&self.buf[..t.size])));
            }
            None => {}
        }
    }

    /// Sends `frame` to `peer` as a request; its answer comes back as a
    /// [`LinkEvent::Response`] with the returned exchange id. `None` when
    /// the peer is not up.
    pub fn request(&mut self, now: Instant, peer: &str, frame: Bytes) -> Option<u64> {
        let ch = self.up_conn(peer)?;
        let c = self.conns.get_mut(&ch)?;
        let stream = c.conn.streams().open(Dir::Bi)?;
        let exchange = self.next_exchange;
        self.next_exchange += 1;
        c.exchanges.insert(stream, exchange);
        c.write(stream, frame);
        self.drive(ch, now);
        Some(exchange)
    }

    /// Answers a request.
    pub fn respond(&mut self, now: Instant, reply: ReplyTo, frame: Bytes) {
        if let Some(c) = self.conns.get_mut(&reply.conn) {
            c.write(reply.stream, frame);
            self.drive(reply.conn, now);
        }
    }

    /// Sends a one-way `frame` to `peer`; false when the peer is not up.
    pub fn send(&mut self, now: Instant, peer: &str, frame: Bytes) -> bool {
        let Some(ch) = self.up_conn(peer) else {
            return false;
        };
        let Some(c) = self.conns.get_mut(&ch) else {
            return false;
        };
        let Some(stream) = c.conn.streams().open(Dir::Uni) else {
            return false;
        };
        c.write(stream, frame);
        self.drive(ch, now);
        true
    }

    fn up_conn(&self, peer: &str) -> Option<ConnectionHandle> {
        self.peers
            .iter()
            .find(|p| p.id == peer && p.up)
            .and_then(|p| p.conn)
    }

    fn dial(&mut self, i: usize, now: Instant) {
        let (addr, id) = (self.peers[i].addr, self.peers[i].id.clone());
        match self
            .endpoint
            .connect(now, self.identity.client.clone(), addr, &id)
        {
            Ok((ch, conn)) => {
                self.peers[i].conn = Some(ch);
                self.peers[i].retry_at = None;
                self.conns.insert(ch, Conn::new(conn, Some(i)));
                self.drive(ch, now);
            }
            Err(e) => {
                tracing::warn!(peer = %id, "cannot connect: {e}");
                self.schedule_retry(i, now);
            }
        }
    }

    fn schedule_retry(&mut self, i: usize, now: Instant) {
        let p = &mut self.peers[i];
        p.conn = None;
        if p.dial {
            p.retry_at = Some(now + p.backoff);
            p.backoff = (p.backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Pumps one connection: endpoint events, application events and
    /// datagrams to send, until it has nothing more to say.
    fn drive(&mut self, ch: ConnectionHandle, now: Instant) {
        loop {
            let Some(c) = self.conns.get_mut(&ch) else {
                return;
            };
            let mut progressed = false;
            while let Some(event) = c.conn.poll_endpoint_events() {
                progressed = true;
                if let Some(back) = self.endpoint.handle_event(ch, event) {
                    c.conn.handle_event(back);
                }
            }
            loop {
                let Some(event) = self.conns.get_mut(&ch).and_then(|c| c.conn.poll()) else {
                    break;
                };
                progressed = true;
                self.on_event(ch, event, now);
            }
            let Some(c) = self.conns.get_mut(&ch) else {
                return;
            };
            self.buf.clear();
            while let Some(t) = c.conn.poll_transmit(now, 1, &mut self.buf) {
                progressed = true;
                self.transmits
                    .push_back((t.destination, Bytes::copy_from_slice(&self.buf[..t.size])));
                self.buf.clear();
            }
            if !progressed {
                if c.conn.is_drained() {
                    // Its drained event reached the endpoint above.
                    self.conns.remove(&ch);
                }
                return;
            }
        }
    }

    fn on_event(&mut self, ch: ConnectionHandle, event: Event, now: Instant) {
        match event {
            Event::Connected => self.on_connected(ch, now),
            Event::ConnectionLost { reason } => {
                // The connection stays until it has drained: a connection
                // that failed here (a refused handshake) still has its
                // CONNECTION_CLOSE to send, and the endpoint frees its
                // state only on the drained event (`drive` removes it).
                let Some(c) = self.conns.get_mut(&ch) else {
                    return;
                };
                let peer = c.peer.take();
                let exchanges = std::mem::take(&mut c.exchanges);
                c.inbound.clear();
                c.outbound.clear();
                if peer.is_none() && c.conn.side().is_server() {
                    let remote = c.conn.remote_address();
                    self.on_unauthenticated_loss(remote, &reason);
                }
                if let Some(i) = peer {
                    let id = self.peers[i].id.clone();
                    if misconfigured(&reason) {
                        // A CA, a certificate or a peer list to fix: said
                        // at each redial (at most every BACKOFF_MAX).
                        tracing::warn!(peer = %id, "no link: {reason}");
                    } else {
                        tracing::info!(peer = %id, "link down: {reason}");
                    }
                    for exchange in exchanges.into_values() {
                        self.events.push_back(LinkEvent::Failed {
                            peer: id.clone(),
                            exchange,
                        });
                    }
                    if self.peers[i].conn == Some(ch) {
                        if self.peers[i].up {
                            self.events.push_back(if stopped(&reason) {
                                LinkEvent::PeerStopped(id)
                            } else {
                                LinkEvent::PeerDown(id)
                            });
                        }
                        let p = &mut self.peers[i];
                        if p.up_since
                            .is_some_and(|t| now.saturating_duration_since(t) >= STABLE_AFTER)
                        {
                            p.backoff = BACKOFF_MIN;
                        }
                        p.up = false;
                        p.up_since = None;
                        self.schedule_retry(i, now);
                    }
                }
            }
            Event::Stream(StreamEvent::Opened { dir }) => {
                let mut opened = Vec::new();
                if let Some(c) = self.conns.get_mut(&ch) {
                    while let Some(stream) = c.conn.streams().accept(dir) {
                        c.inbound.insert(stream, BytesMut::new());
                        opened.push(stream);
                    }
                }
                for stream in opened {
                    self.read(ch, stream);
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => self.read(ch, id),
            Event::Stream(StreamEvent::Writable { id }) => {
                if let Some(c) = self.conns.get_mut(&ch) {
                    if let Some(rest) = c.outbound.remove(&id) {
                        c.write(id, rest);
                    }
                }
            }
            _ => {}
        }
    }

    /// Reports a connection that dialled us and ended before it showed a
    /// peer's certificate. The dialling side hears why; so should this
    /// side's operator. A dialler that does not trust this cluster's CA
    /// aborts the handshake and says so in its close; one that goes quiet
    /// instead shows here as a handshake that timed out.
    fn on_unauthenticated_loss(
        &mut self,
        remote: SocketAddr,
        reason: &quinn_proto::ConnectionError,
    ) {
        use quinn_proto::ConnectionError;
        let reason = match reason {
            // Our own refusal, already reported.
            ConnectionError::LocallyClosed => return,
            ConnectionError::TimedOut => {
                "its handshake never completed (another cluster's CA?)".to_owned()
            }
            other => format!("its handshake failed: {other}"),
        };
        self.events.push_back(LinkEvent::Refused {
            addr: remote,
            claimed: None,
            reason,
        });
    }

    /// Authenticates a new connection by the blade id in its certificate.
    fn on_connected(&mut self, ch: ConnectionHandle, now: Instant) {
        let Some(c) = self.conns.get_mut(&ch) else {
            return;
        };
        let claimed = peer_blade_id(c.conn.crypto_session().peer_identity());
        let found = claimed.as_deref().and_then(|id| {
            self.peers
                .iter()
                .position(|p| p.id.eq_ignore_ascii_case(id))
        });
        let i = match (c.peer, found) {
            // We dialled: rustls already matched the server name; the
            // certificate must say the same.
            (Some(i), Some(j)) if i == j => i,
            // They dialled: any configured peer that is not us.
            (None, Some(j)) if !self.peers[j].id.eq_ignore_ascii_case(&self.me) => j,
            _ => {
                // Reported as LinkEvent::Refused, for the driver to log.
                let addr = c.conn.remote_address();
                c.conn.close(
                    now,
                    VarInt::from_u32(CLOSE_NOT_A_PEER),
                    Bytes::from_static(b"not a cluster peer"),
                );
                self.events.push_back(LinkEvent::Refused {
                    addr,
                    claimed,
                    reason: "its certificate names no configured peer".into(),
                });
                if let Some(i) = c.peer {
                    c.peer = None;
                    self.schedule_retry(i, now);
                }
                return;
            }
        };
        c.peer = Some(i);
        if let Some(hello) = &self.hello {
            // Stream limits are the peer's; a fresh connection has room
            // for thousands (tls::MAX_STREAMS), so this never waits.
            if let Some(stream) = c.conn.streams().open(Dir::Uni) {
                c.write(stream, hello.clone());
            }
        }
        // A peer that reconnects replaces its old connection.
        if let Some(old) = self.peers[i].conn.filter(|&old| old != ch) {
            if let Some(o) = self.conns.get_mut(&old) {
                o.conn
                    .close(now, VarInt::from_u32(0), Bytes::from_static(b"replaced"));
            }
        }
        let p = &mut self.peers[i];
        p.conn = Some(ch);
        p.up = true;
        // The reconnect delay restarts only once this connection has
        // lasted (see STABLE_AFTER), not merely because it came up.
        p.up_since = Some(now);
        tracing::info!(peer = %p.id, "link up");
        self.events.push_back(LinkEvent::PeerUp(p.id.clone()));
    }

    /// Reads what arrived on a stream; a finished stream becomes an event.
    fn read(&mut self, ch: ConnectionHandle, stream: StreamId) {
        let Some(c) = self.conns.get_mut(&ch) else {
            return;
        };
        let Some(i) = c.peer else { return };
        let peer = self.peers[i].id.clone();
        let mut finished = false;
        let mut oversized = false;
        {
            let mut recv = c.conn.recv_stream(stream);
            let Ok(mut chunks) = recv.read(true) else {
                return;
            };
            let buf = c.inbound.entry(stream).or_default();
            loop {
                match chunks.next(MAX_FRAME) {
                    Ok(Some(chunk)) => {
                        if buf.len() + chunk.bytes.len() > MAX_FRAME {
                            oversized = true;
                            break;
                        }
                        buf.extend_from_slice(&chunk.bytes);
                    }
                    Ok(None) => {
                        finished = true;
                        break;
                    }
                    Err(ReadError::Blocked) => break,
                    Err(ReadError::Reset(_)) => {
                        oversized = true;
                        break;
                    }
                }
            }
            let _ = chunks.finalize();
        }
        if oversized {
            c.inbound.remove(&stream);
            let _ = c.conn.recv_stream(stream).stop(VarInt::from_u32(0));
            if let Some(exchange) = c.exchanges.remove(&stream) {
                self.events.push_back(LinkEvent::Failed { peer, exchange });
            }
            return;
        }
        if !finished {
            return;
        }
        let frame = c.inbound.remove(&stream).unwrap_or_default().freeze();
        if let Some(exchange) = c.exchanges.remove(&stream) {
            self.events.push_back(LinkEvent::Response {
                peer,
                exchange,
                frame,
            });
        } else if stream.dir() == Dir::Bi {
            self.events.push_back(LinkEvent::Request {
                peer,
                reply: ReplyTo { conn: ch, stream },
                frame,
            });
        } else {
            self.events.push_back(LinkEvent::Message { peer, frame });
        }
    }
}

/// Whether a connection ended because a TLS check failed on either side,
/// or because the peer does not take us for one of its peers: no redial
/// can succeed until someone fixes a configuration.
fn misconfigured(reason: &quinn_proto::ConnectionError) -> bool {
    use quinn_proto::{ConnectionError, TransportErrorCode};
    // QUIC carries TLS alerts as the CRYPTO_ERROR range, 0x100-0x1ff.
    let tls = |code: TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match reason {
        ConnectionError::TransportError(e) => tls(e.code),
        ConnectionError::ConnectionClosed(close) => tls(close.error_code),
        ConnectionError::ApplicationClosed(close) => {
            close.error_code == VarInt::from_u32(CLOSE_NOT_A_PEER)
        }
        _ => false,
    }
}

/// Whether the peer closed the connection because it is stopping.
fn stopped(reason: &quinn_proto::ConnectionError) -> bool {
    matches!(
        reason,
        quinn_proto::ConnectionError::ApplicationClosed(close)
            if close.error_code == VarInt::from_u32(CLOSE_STOPPING)
    )
}

impl Conn {
    fn new(conn: quinn_proto::Connection, peer: Option<usize>) -> Self {
        Conn {
            conn,
            peer,
            inbound: HashMap::new(),
            exchanges: HashMap::new(),
            outbound: HashMap::new(),
        }
    }

    /// Writes `frame` and finishes the stream, keeping what flow control
    /// did not take for the next `Writable`.
    fn write(&mut self, stream: StreamId, frame: Bytes) {
        let mut send = self.conn.send_stream(stream);
        match send.write(&frame) {
            Ok(n) if n == frame.len() => {
                let _ = send.finish();
            }
            Ok(n) => {
                self.outbound.insert(stream, frame.slice(n..));
            }
            Err(quinn_proto::WriteError::Blocked) => {
                self.outbound.insert(stream, frame);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
