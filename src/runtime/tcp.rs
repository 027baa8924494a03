//! SIP over TCP on a core: accepted and outbound connections, each with a
//! reader task (framing by Content-Length) and a writer task fed by a local
//! queue. A connection lives on the core that accepted or opened it; other
//! cores reach it by handing the bytes over the mesh, and find it by its
//! remote address in [`StreamOwners`]. An accepted
//! connection that delivers no message in time, or any connection that
//! stalls in the middle of one, is closed (see [`Deadlines`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

use super::core::Core;
use super::warnings::Warnings;
use crate::sip::framing::{DEFAULT_MAX_MESSAGE, Frame, frame};
use crate::sip::{ConnId, Peer, Transport};

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// How long a connection the blade opens may take to be made (its first
/// write waits for it). Two seconds allow one lost SYN (retried after 1 s);
/// past that, an agent's Contact that answers nothing (an address gone
/// behind NAT) fails its request as unsent, with 480 at once, instead of
/// letting the call ring until timer B.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Messages queued on one connection at most. Past that the peer has not
/// read for a while (the socket's buffers are full too): more are dropped
/// until the write timeout closes the connection.
const SEND_QUEUE: usize = 1024;

/// How long the accept loop pauses after a failed accept: the usual
/// cause, no descriptor left (EMFILE), persists, and retrying at once
/// would spin the core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Which core holds a connection to each remote address, shared by all
/// the cores. A UA that opens a connection per call and names it as its
/// Contact (sipp `-t tn`, phones behind NAT) can only be reached on that
/// connection, whichever core accepted it; the core that owns the dialog
/// looks it up here when it holds no connection of its own to the address.
/// The one lock near the message path (SPEC §8 wants none), taken only when
/// a connection opens or closes and on such a miss, whose alternative is
/// opening a connection; telling every core of every connection over the
/// mesh instead would wake each idle core twice per connection.
#[derive(Default)]
pub(crate) struct StreamOwners(Mutex<HashMap<SocketAddr, u16>>);

impl StreamOwners {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, u16>> {
        // The table stays consistent whatever a panicking holder did: each
        // change is one insert or remove.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `core` now holds a connection to `addr` (the latest one wins, as in
    /// a core's own table).
    fn claim(&self, addr: SocketAddr, core: u16) {
        self.table().insert(addr, core);
    }

    /// `core`'s connection to `addr` closed.
    fn release(&self, addr: SocketAddr, core: u16) {
        let mut table = self.table();
        if table.get(&addr) == Some(&core) {
            table.remove(&addr);
        }
    }

    /// The core holding a connection to `addr`, if any.
    fn owner(&self, addr: SocketAddr) -> Option<u16> {
        self.table().get(&addr).copied()
    }
}

/// This core's connections.
pub(crate) struct Connections {
    core: u16,
    owners: Arc<StreamOwners>,
    next: Cell<u32>,
    /// Accepted connections open now; outbound ones are not counted (the
    /// blade opens those only towards agents it has bindings for).
    accepted: Cell<usize>,
    by_id: RefCell<HashMap<u32, (SocketAddr, LocalSender<Bytes>)>>,
    by_addr: RefCell<HashMap<SocketAddr, u32>>,
    /// Connections closed for stalling, for a throttled warning.
    stalls: RefCell<Warnings>,
}

impl Connections {
    pub fn new(core: usize, owners: Arc<StreamOwners>) -> Self {
        Connections {
            core: core as u16,
            owners,
            next: Cell::new(0),
            accepted: Cell::new(0),
            by_id: RefCell::new(HashMap::new()),
            by_addr: RefCell::new(HashMap::new()),
            stalls: RefCell::new(Warnings::default()),
        }
    }

    /// Registers a connection to `addr`; returns its id and its send queue.
    fn register(&self, addr: SocketAddr) -> (ConnId, LocalReceiver<Bytes>) {
        let id = self.next.get();
        self.next.set(id.wrapping_add(1));
        let (tx, rx) = local_channel::new_bounded(SEND_QUEUE);
        self.by_id.borrow_mut().insert(id, (addr, tx));
        self.by_addr.borrow_mut().insert(addr, id);
        self.owners.claim(addr, self.core);
        (
            ConnId {
                core: self.core,
                id,
            },
            rx,
        )
    }

    fn remove(&self, id: u32) {
        if let Some((addr, _)) = self.by_id.borrow_mut().remove(&id) {
            let mut by_addr = self.by_addr.borrow_mut();
            if by_addr.get(&addr) == Some(&id) {
                by_addr.remove(&addr);
                self.owners.release(addr, self.core);
            }
        }
    }

    /// Another core that holds a connection to `addr` (asked when this one
    /// could not send there).
    pub fn owner_elsewhere(&self, addr: SocketAddr) -> Option<usize> {
        self.owners
            .owner(addr)
            .filter(|&core| core != self.core)
            .map(usize::from)
    }

    /// Queues `data` on the connection `peer` names, or on any connection
    /// of this core to its address (also when the one it names has
    /// closed: an agent whose own connection closed is reached on the one
    /// the blade opened to its Contact, not on a new one per request).
    /// Returns false when there is none.
    pub fn send(&self, peer: Peer, data: Bytes) -> bool {
        let by_id = self.by_id.borrow();
        let named = peer
            .conn
            .filter(|c| c.core == self.core)
            .and_then(|c| by_id.get(&c.id));
        let Some((addr, queue)) = named.or_else(|| {
            let id = self.by_addr.borrow().get(&peer.addr).copied()?;
            by_id.get(&id)
        }) else {
            return false;
        };
        match queue.try_send(data) {
            Ok(()) => true,
            Err(glommio::GlommioError::WouldBlock(_)) => {
                // The connection exists but its peer is not reading: the
                // message is lost, as a datagram would be, and the write
                // timeout will close the connection.
                tracing::debug!(%addr, "stream send queue full: message dropped");
                true
            }
            Err(_) => false,
        }
    }
}

/// A read or write half of a shared stream. The executor is
/// single-threaded and each poll borrows the stream only for its duration,
/// so the reader and writer tasks never hold it at the same time.
struct Half(Rc<RefCell<TcpStream>>);

impl AsyncRead for Half {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Half {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// Accepts connections on this core's listener for as long as the core
/// runs, up to `limit` open at once: past it a new connection is closed
/// at once, so that it cannot take the descriptors the blade needs.
pub(crate) async fn accept_loop(core: Rc<Core>, listener: TcpListener, limit: usize) {
    let (mut refusals, mut failures) = (Warnings::default(), Warnings::default());
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if core.conns.accepted.get() >= limit {
                    core.proxy_mut().note_tcp_refused();
                    refusals.warn(|n| {
                        tracing::warn!(
                            limit,
                            refused = n,
                            "TCP connections refused: at max_tcp_connections"
                        );
                    });
                    drop(stream);
                    continue;
                }
                let Ok(addr) = stream.peer_addr() else {
                    continue;
                };
                let (conn, queue) = core.conns.register(addr);
                core.conns.accepted.set(core.conns.accepted.get() + 1);
                let served = core.clone();
                glommio::spawn_local(async move {
                    serve(served.clone(), stream, addr, conn, queue, None).await;
                    served.conns.accepted.set(served.conns.accepted.get() - 1);
                })
                .detach();
            }
            Err(e) => {
                failures.warn(|n| tracing::warn!(failed = n, "cannot accept TCP connections: {e}"));
                glommio::timer::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Opens a connection to `addr` and sends `first` on it. When the
/// connection cannot be made, the core that sent `first` hears that it
/// went unsent (a request's transaction then fails at once).
pub(crate) fn connect(core: &Rc<Core>, addr: SocketAddr, first: Bytes) {
    let (conn, queue) = core.conns.register(addr);
    core.conns.send(
        Peer {
            addr,
            transport: Transport::Tcp,
            conn: Some(conn),
        },
        first.clone(),
    );
    let core = core.clone();
    glommio::spawn_local(async move {
        match open_from(core.sip_ip(), addr) {
            Ok(stream) => serve(core, stream, addr, conn, queue, Some(first)).await,
            Err(e) => {
                tracing::debug!(%addr, "connect: {e}");
                core.conns.remove(conn.id);
                core.unsent(first);
            }
        }
    })
    .detach();
}

/// Starts a connection to `addr` from `local`, the blade's SIP IP, so the
/// other end sees the address it knows this blade by (a peer blade checks
/// it; glommio's own connect would take the route's source address). The
/// connection completes in the background: the first send and receive
/// wait for it, and fail if it does.
fn open_from(local: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if !local.is_unspecified() && local.is_ipv4() == addr.is_ipv4() {
        socket.bind(&SocketAddr::new(local, 0).into())?;
    }
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from(socket))
}

/// Linux's "operation now in progress", what a non-blocking connect says.
const EINPROGRESS: i32 = 115;

/// Serves a connection: a writer task drains its queue while this one
/// reads. `opening` is the message an outbound connection was opened
/// for: its write is where a refused connection shows, and then it is
/// reported unsent.
async fn serve(
    core: Rc<Core>,
    stream: TcpStream,
    addr: SocketAddr,
    conn: ConnId,
    queue: LocalReceiver<Bytes>,
    mut opening: Option<Bytes>,
) {
    // A connection the blade opened was opened to send, not to receive:
    // only those it accepted must deliver a first message.
    let (first_timeout, message_timeout) = core.tcp_message_timeouts();
    let mut deadlines = match opening {
        None => Deadlines::accepted(Instant::now(), first_timeout, message_timeout),
        Some(_) => Deadlines::opened(message_timeout),
    };
    let _ = stream.set_nodelay(true);
    let stream = Rc::new(RefCell::new(stream));
    let mut writer = Half(stream.clone());
    let writer_core = core.clone();
    let write_timeout = core.tcp_write_timeout();
    glommio::spawn_local(async move {
        while let Some(data) = queue.recv().await {
            // The first write of a connection we open waits for the
            // connect; any other waits only for the peer to read.
            let limit = match opening {
                Some(_) => CONNECT_TIMEOUT,
                None => write_timeout,
            };
            let written =
                futures_lite::future::or(async { Some(writer.write_all(&data).await) }, async {
                    glommio::timer::sleep(limit).await;
                    None
                })
                .await;
            let failure = match written {
                Some(Ok(())) => {
                    opening = None;
                    continue;
                }
                Some(Err(e)) => e.to_string(),
                None if opening.is_some() => format!("not connected within {limit:?}"),
                None => format!("the peer has read nothing for {limit:?}: closing"),
            };
            tracing::debug!(%addr, "stream write: {failure}");
            if let Some(first) = opening.take() {
                writer_core.unsent(first);
            }
            break;
        }
        // Whatever ended the writing ends the connection: the reader's
        // pending read returns, and the connection is forgotten.
        let _ = socket2::SockRef::from(&*writer.0.borrow()).shutdown(std::net::Shutdown::Both);
    })
    .detach();

    let mut reader = Half(stream);
    let peer = Peer {
        addr,
        transport: Transport::Tcp,
        conn: Some(conn),
    };
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    'read: loop {
        // A read races a timer only while a deadline is due (before the
        // first message, or with a message partly received): a connection
        // that delivers whole messages reads without one. The deadline
        // stays put during the read, so the timer firing means it passed.
        let read = match deadlines.due() {
            None => Some(reader.read(&mut chunk).await),
            Some(due) => {
                let wait = due.saturating_duration_since(Instant::now());
                futures_lite::future::or(async { Some(reader.read(&mut chunk).await) }, async {
                    glommio::timer::sleep(wait).await;
                    None
                })
                .await
            }
        };
        let n = match read {
            Some(Ok(0) | Err(_)) => break,
            Some(Ok(n)) => n,
            None => {
                stalled(&core, addr, &deadlines);
                break;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match frame(&buf, DEFAULT_MAX_MESSAGE) {
                Ok(Frame::Complete(len)) => {
                    // A message that frames counts whether or not it then
                    // parses: sending one that does not is no cheaper for
                    // an attacker than sending a valid OPTIONS.
                    deadlines.delivered();
                    let message = buf.split_to(len).freeze();
                    core.on_datagram(peer, message).await;
                }
                Ok(Frame::KeepAlive { len, ping }) => {
                    let _ = buf.split_to(len);
                    if ping {
                        // RFC 5626 §3.5.1: a double-CRLF ping gets a CRLF pong.
                        core.conns.send(peer, Bytes::from_static(b"\r\n"));
                    }
                }
                Ok(Frame::Partial) => break,
                Err(e) => {
                    // RFC 3261 §18.3: a framing error on a stream cannot be
                    // recovered from; close the connection, at once for
                    // bytes that can never be SIP (junk, LF-only lines)
                    // rather than at the stall timeout. The sender still
                    // learns why (400, 513) where it gave a Via: the
                    // writer sends queued data before the connection
                    // closes.
                    tracing::debug!(%addr, "stream framing error: {e}");
                    core.proxy_mut().note_malformed();
                    if let Some(answer) = crate::proxy::malformed_response(&buf, &e, addr) {
                        core.conns.send(peer, answer);
                    }
                    break 'read;
                }
            }
        }
        if holds_message_part(&buf) {
            deadlines.partial(Instant::now());
        } else {
            deadlines.idle();
        }
    }
    core.conns.remove(conn.id);
}

/// Counts and logs a connection closed for stalling (its reader then ends,
/// which closes it).
fn stalled(core: &Core, addr: SocketAddr, deadlines: &Deadlines) {
    let waiting = deadlines.waiting_for();
    tracing::debug!(%addr, "closing a TCP connection: {waiting}");
    core.proxy_mut().note_tcp_timed_out();
    core.conns.stalls.borrow_mut().warn(|n| {
        tracing::warn!(
            closed = n,
            %addr,
            "TCP connections closed: {waiting}"
        );
    });
}

/// Whether `buf`, what is left after framing, holds part of a message:
/// anything but the start of a CRLF keep-alive (a lone CRLF pong waits
/// there for what follows, and must not count).
fn holds_message_part(buf: &[u8]) -> bool {
    !buf.is_empty() && !b"\r\n\r\n".starts_with(buf)
}

/// When a connection's reader gives up waiting: sans-IO, the reader
/// passes the time in.
///
/// An accepted connection must deliver its first message by a deadline
/// (keep-alives do not count: a connection that sends only those is
/// holding a slot). After that, it may stay idle between messages for as
/// long as it likes (a registered agent's connection is how the blade
/// reaches it), but a message once begun must complete within the message
/// timeout of its first byte.
#[derive(Debug, Clone, PartialEq)]
struct Deadlines {
    /// When the first message is due; `None` once one was delivered, or
    /// for a connection the blade opened.
    first: Option<Instant>,
    /// When the message partly received was begun, if one is.
    begun: Option<Instant>,
    message_timeout: Duration,
}

impl Deadlines {
    /// A connection accepted at `now`.
    fn accepted(now: Instant, first_timeout: Duration, message_timeout: Duration) -> Self {
        Deadlines {
            first: Some(now + first_timeout),
            begun: None,
            message_timeout,
        }
    }

    /// A connection the blade opened.
    fn opened(message_timeout: Duration) -> Self {
        Deadlines {
            first: None,
            begun: None,
            message_timeout,
        }
    }

    /// A complete message was framed.
    fn delivered(&mut self) {
        self.first = None;
        self.begun = None;
    }

    /// After framing, part of a message is left, as of `now` (the time the
    /// first of its bytes arrived, unless it was already waiting).
    fn partial(&mut self, now: Instant) {
        self.begun.get_or_insert(now);
    }

    /// After framing, nothing but keep-alive bytes is left.
    fn idle(&mut self) {
        self.begun = None;
    }

    /// The earliest deadline, if any: past it the connection is closed.
    fn due(&self) -> Option<Instant> {
        let message = self.begun.map(|at| at + self.message_timeout);
        match (self.first, message) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What the connection failed to do, for the log.
    fn waiting_for(&self) -> &'static str {
        if self.first.is_some() {
            "no complete message since accepted"
        } else {
            "a message stalled half received"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn an_accepted_connection_owes_a_first_message_then_may_idle() {
        let t0 = Instant::now();
        let mut d = Deadlines::accepted(t0, 10 * SEC, 4 * SEC);
        assert_eq!(d.due(), Some(t0 + 10 * SEC));
        // Keep-alives alone leave it owing.
        d.idle();
        assert_eq!(d.due(), Some(t0 + 10 * SEC));
        // A message begun late must still arrive by the first deadline;
        // one begun early, within the message timeout.
        d.partial(t0 + 8 * SEC);
        assert_eq!(d.due(), Some(t0 + 10 * SEC));
        let mut early = Deadlines::accepted(t0, 10 * SEC, 4 * SEC);
        early.partial(t0 + SEC);
        assert_eq!(early.due(), Some(t0 + 5 * SEC));
        d.delivered();
        d.idle();
        assert_eq!(d.due(), None, "idle between messages: no deadline");
    }

    #[test]
    fn a_message_must_complete_within_the_timeout_of_its_first_byte() {
        let t0 = Instant::now();
        let mut d = Deadlines::opened(4 * SEC);
        assert_eq!(d.due(), None, "an opened connection owes nothing");
        d.partial(t0);
        // More bytes of the same message do not push the deadline back.
        d.partial(t0 + 3 * SEC);
        assert_eq!(d.due(), Some(t0 + 4 * SEC));
        // The next message, begun as the last one completed, gets its own.
        d.delivered();
        d.partial(t0 + 3 * SEC);
        assert_eq!(d.due(), Some(t0 + 7 * SEC));
    }

    #[test]
    fn only_message_bytes_are_a_message_part() {
        for idle in [&b""[..], b"\r", b"\r\n", b"\r\n\r"] {
            assert!(!holds_message_part(idle), "{idle:?}");
        }
        for part in [&b"O"[..], b"\r\nO", b"OPTIONS sip:x SIP/2.0\r\n"] {
            assert!(holds_message_part(part), "{part:?}");
        }
    }
}
