//! The admin port (SPEC §6): `GET /status` (JSON) and `GET /metrics`
//! (Prometheus text), served from a thread of its own so that reading
//! status never runs on a SIP core. The thread asks each core for a
//! [`Snapshot`] over a channel and waits a bounded time for the answers.

pub mod render;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::proxy::Snapshot;

/// How long a status request waits for the cores.
const CORE_ANSWER_TIMEOUT: Duration = Duration::from_millis(500);

/// A request a core answers with its snapshot.
pub type SnapshotRequest = flume::Sender<Snapshot>;

/// What the admin port shows besides the cores' snapshots.
#[derive(Debug, Clone)]
pub struct BladeInfo {
    /// The blade id.
    pub id: String,
    /// The configured peers and whether their link is up.
    pub peers: Arc<Peers>,
}

/// The configured peers and their link state: written by the core that
/// runs the link, read by the admin thread. Plain atomics, no lock.
#[derive(Debug, Default)]
pub struct Peers {
    configured: Vec<(String, SocketAddr)>,
    up: Vec<AtomicBool>,
    /// QUIC datagrams the link sent and received, all peers together.
    datagrams_sent: AtomicU64,
    datagrams_received: AtomicU64,
}

impl Peers {
    /// The peers `(id, QUIC address)`, all down.
    pub fn new(configured: Vec<(String, SocketAddr)>) -> Self {
        let up = configured.iter().map(|_| AtomicBool::new(false)).collect();
        Peers {
            configured,
            up,
            ..Peers::default()
        }
    }

    /// Counts a datagram the link sent (`true`) or received.
    pub fn count_datagram(&self, sent: bool) {
        let counter = if sent {
            &self.datagrams_sent
        } else {
            &self.datagrams_received
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Datagrams the link sent and received.
    pub fn datagrams(&self) -> (u64, u64) {
        (
            self.datagrams_sent.load(Ordering::Relaxed),
            self.datagrams_received.load(Ordering::Relaxed),
        )
    }

    /// The configured peers.
    pub fn configured(&self) -> &[(String, SocketAddr)] {
        &self.configured
    }

    /// Records whether the link to `id` is up.
    pub fn set_up(&self, id: &str, up: bool) {
        if let Some(i) = self
            .configured
            .iter()
            .position(|(p, _)| p.eq_ignore_ascii_case(id))
        {
            self.up[i].store(up, Ordering::Relaxed);
        }
    }

    /// Every peer's id and whether it is up.
    pub fn states(&self) -> Vec<(String, bool)> {
        self.configured
            .iter()
            .zip(&self.up)
            .map(|((id, _), up)| (id.clone(), up.load(Ordering::Relaxed)))
            .collect()
    }
}

/// The running admin server.
pub struct Admin {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl Admin {
    /// Serves on `listener`, asking the cores through `cores`.
    pub fn start(
        listener: TcpListener,
        info: BladeInfo,
        cores: Vec<flume::Sender<SnapshotRequest>>,
    ) -> std::io::Result<Admin> {
        let addr = listener.local_addr()?;
        let server =
            tiny_http::Server::from_listener(listener, None).map_err(std::io::Error::other)?;
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("sipblade-admin".into())
            .spawn(move || serve(&serving, &info, &cores))?;
        Ok(Admin {
            server,
            thread: Some(thread),
            addr,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and joins the thread.
    pub fn stop(mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, info: &BladeInfo, cores: &[flume::Sender<SnapshotRequest>]) {
    for request in server.incoming_requests() {
        let path = request
            .url()
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        // HEAD answers as GET would, without the body (tiny_http leaves it
        // out; RFC 9110 §9.3.2).
        let readable = matches!(
            request.method(),
            tiny_http::Method::Get | tiny_http::Method::Head
        );
        let (status, content_type, body) = match (readable, path.as_str()) {
            (true, "/status") => (
                200,
                "application/json",
                render::status_json(info, &gather(cores)),
            ),
            (true, "/metrics") => (
                200,
                "text/plain; version=0.0.4",
                render::metrics_text(&gather(cores), info.peers.datagrams()),
            ),
            (false, "/status" | "/metrics") => {
                (405, "text/plain", "method not allowed\n".to_owned())
            }
            _ => (
                404,
                "text/plain",
                "not found: try /status or /metrics\n".to_owned(),
            ),
        };
        let mut response = tiny_http::Response::from_string(body).with_status_code(status);
        let allow = (status == 405).then_some("GET, HEAD");
        let headers = [("Content-Type", Some(content_type)), ("Allow", allow)];
        for (name, value) in headers {
            let header = value.and_then(|v| tiny_http::Header::from_bytes(name, v).ok());
            if let Some(header) = header {
                response = response.with_header(header);
            }
        }
        let _ = request.respond(response);
    }
}

/// Asks every core for its snapshot; a core that does not answer in time
/// is left out rather than stalling the admin port.
fn gather(cores: &[flume::Sender<SnapshotRequest>]) -> Vec<Snapshot> {
    let (reply, answers) = flume::bounded(cores.len().max(1));
    let asked = cores
        .iter()
        .filter(|core| core.send(reply.clone()).is_ok())
        .count();
    drop(reply);
    let deadline = std::time::Instant::now() + CORE_ANSWER_TIMEOUT;
    (0..asked)
        .filter_map(|_| answers.recv_deadline(deadline).ok())
        .collect()
}
