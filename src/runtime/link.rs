//! Drives the inter-blade QUIC link ([`crate::cluster::link::Link`]) on one
//! core: its UDP socket, its timers, and the peers' up/down state that
//! `/status` shows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::net::UdpSocket;

use crate::admin::Peers;
use crate::cluster::link::{Link, LinkEvent};
use crate::cluster::tls::Identity;

/// Longest wait for a datagram before timers are looked at again.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// What the core running the link needs.
pub(crate) struct Setup {
    pub socket: socket2::Socket,
    pub me: String,
    pub identity: Identity,
    pub peers: Arc<Peers>,
}

/// How long a stopping blade waits for its goodbyes to go out.
const CLOSE_GRACE: Duration = Duration::from_millis(50);

/// Runs the link until `stopping` is set, then closes every connection.
pub(crate) async fn run(setup: Setup, stopping: Arc<AtomicBool>) {
    let socket = UdpSocket::from(setup.socket);
    let configured: Vec<(String, std::net::SocketAddr)> = setup.peers.configured().to_vec();
    let mut link = Link::new(&setup.me, setup.identity, &configured, Instant::now());
    let mut buf = vec![0u8; 65_535];
    loop {
        let now = Instant::now();
        if stopping.load(Ordering::Relaxed) {
            link.close_all(now);
            flush(&socket, &mut link).await;
            glommio::timer::sleep(CLOSE_GRACE).await;
            flush(&socket, &mut link).await;
            return;
        }
        link.handle_timeout(now);
        flush(&socket, &mut link).await;
        while let Some(event) = link.poll_event() {
            match event {
                LinkEvent::PeerUp(id) => setup.peers.set_up(&id, true),
                LinkEvent::PeerDown(id) => setup.peers.set_up(&id, false),
                LinkEvent::Refused { addr, claimed } => {
                    tracing::warn!(%addr, ?claimed, "refused a process that is not a cluster peer");
                }
                // The hosting protocol is not wired to the proxy yet:
                // requests get no answer and time out at the peer.
                other => tracing::debug!(?other, "link event not handled yet"),
            }
        }
        let wait = link
            .poll_timeout()
            .map_or(MAX_WAIT, |t| t.saturating_duration_since(Instant::now()))
            .clamp(Duration::from_millis(1), MAX_WAIT);
        let _ = socket.set_read_timeout(Some(wait));
        if let Ok((n, from)) = socket.recv_from(&mut buf).await {
            link.handle_datagram(Instant::now(), from, BytesMut::from(&buf[..n]));
        }
    }
}

async fn flush(socket: &UdpSocket, link: &mut Link) {
    while let Some((to, data)) = link.poll_transmit() {
        if let Err(e) = socket.send_to(&data, to).await {
            tracing::debug!(%to, "link send failed: {e}");
        }
    }
}
