//! The admin port (SPEC §6): `GET /status` (JSON) and `GET /metrics`
//! (Prometheus text), served from threads of their own so that reading
//! status never runs on a SIP core (`admin::http`). A request asks each core
//! for a [`Snapshot`] over a channel and waits a bounded time for the
//! answers.

mod http;
pub mod render;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    server: http::Server,
}

impl Admin {
    /// Serves on `listener`, asking the cores through `cores`.
    pub fn start(
        listener: TcpListener,
        info: BladeInfo,
        cores: Vec<flume::Sender<SnapshotRequest>>,
    ) -> std::io::Result<Admin> {
        let server = http::Server::start(listener, move |request| answer(request, &info, &cores))?;
        Ok(Admin { server })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Stops serving.
    pub fn stop(self) {
        self.server.stop();
    }
}

fn answer(
    request: &http::Request,
    info: &BladeInfo,
    cores: &[flume::Sender<SnapshotRequest>],
) -> http::Response {
    // HEAD answers as GET would, without the body (RFC 9110 §9.3.2).
    let readable = matches!(request.method.as_str(), "GET" | "HEAD");
    let resource = match request.path.as_str() {
        "/status" => Resource::Status,
        "/metrics" => Resource::Metrics,
        _ => return http::Response::text(404, "not found: try /status or /metrics\n"),
    };
    if !readable {
        return http::Response::text(405, "method not allowed\n").with("Allow", "GET, HEAD");
    }
    let snapshots = match gather(cores) {
        Ok(snapshots) => snapshots,
        // A partial answer would be wrong, not just late: agents left out
        // of /status, counters going back in /metrics (a reset, to
        // Prometheus).
        Err(missing) => {
            return http::Response::text(
                503,
                format!(
                    "{missing} of {} cores did not answer in time\n",
                    cores.len()
                ),
            )
            .with("Retry-After", "1");
        }
    };
    let (content_type, body) = match resource {
        Resource::Status => ("application/json", render::status_json(info, &snapshots)),
        Resource::Metrics => (
            "text/plain; version=0.0.4",
            render::metrics_text(&snapshots, info.peers.datagrams()),
        ),
    };
    http::Response {
        status: 200,
        content_type,
        body,
        headers: Vec::new(),
    }
}

enum Resource {
    Status,
    Metrics,
}

/// Asks every core for its snapshot; the number of cores that did not
/// answer in time (or have stopped), if any.
fn gather(cores: &[flume::Sender<SnapshotRequest>]) -> Result<Vec<Snapshot>, usize> {
    let (reply, answers) = flume::bounded(cores.len().max(1));
    let asked = cores
        .iter()
        .filter(|core| core.send(reply.clone()).is_ok())
        .count();
    drop(reply);
    let deadline = std::time::Instant::now() + CORE_ANSWER_TIMEOUT;
    let snapshots: Vec<Snapshot> = (0..asked)
        .filter_map(|_| answers.recv_deadline(deadline).ok())
        .collect();
    match cores.len() - snapshots.len() {
        0 => Ok(snapshots),
        missing => Err(missing),
    }
}
