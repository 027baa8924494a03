//! The runtime: the only layer on the SIP path that owns threads, sockets
//! and clocks.
//!
//! One glommio executor per core, pinned, each with its own SO_REUSEPORT
//! UDP socket on the SIP address and its own [`Proxy`](crate::proxy::Proxy). A message is
//! handled on the core that owns it ([`crate::proxy::route::owner_core`]);
//! a core that receives someone else's message hands the parsed
//! [`crate::sip::Message`] over a channel mesh (no copy).
//! The admin port runs on threads of its own (one accepting, one per
//! connection), off the cores.

mod backlog;
mod core;
pub mod limits;
mod link;
mod mesh;
pub mod socket;
mod steer;
mod tcp;
pub mod trace;
mod warnings;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::admin::{Admin, BladeInfo, Peers};
use crate::cluster::hosting::HostSecret;
use crate::cluster::tls::Identity;
use crate::config::Config;
use crate::proxy::cross::{ClusterSettings, PeerBlade};

/// Memory glommio registers for io_uring buffers per executor. Those
/// buffers serve file DMA, which a SIP core never does; 512 KiB keeps
/// several executors under an 8 MiB RLIMIT_MEMLOCK (RUNTIME-NOTES).
const IO_MEMORY: usize = 512 << 10;

/// Depth of each core's inbox (messages from all the other cores): the
/// default of [`Options::mesh_capacity`].
pub const MESH_CAPACITY: usize = 4096;

/// How long `start` waits for every core to be listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What a core tells `start` about its start.
pub(crate) enum Started {
    /// It listens on its sockets.
    Listening,
    /// Its executor runs, but it could not listen.
    Failed(String),
    /// glommio could not create its executor (io_uring set-up, often the
    /// memory-lock limit): the executor's join handle says why.
    NoExecutor,
}

/// Travels into a core's executor closure. glommio drops the closure
/// without running it when it cannot create the executor; this says so,
/// at once, instead of `start` waiting out [`START_TIMEOUT`].
struct StartReport {
    core: usize,
    ready: std::sync::mpsc::Sender<(usize, Started)>,
    ran: bool,
}

impl StartReport {
    /// The executor runs: the core reports for itself from now on.
    fn running(mut self) -> std::sync::mpsc::Sender<(usize, Started)> {
        self.ran = true;
        self.ready.clone()
    }
}

impl Drop for StartReport {
    fn drop(&mut self) {
        if !self.ran {
            let _ = self.ready.send((self.core, Started::NoExecutor));
        }
    }
}

/// Why a core's executor could not be created, from its join handle (its
/// thread has ended, or is ending: the closure was dropped unrun).
fn executor_error(handle: glommio::ExecutorJoinHandle<()>) -> String {
    match handle.join() {
        Err(e) => {
            let text = e.to_string();
            if text.contains("MemLock") {
                format!(
                    "{text}: io_uring needs at least {} KiB of locked memory per core; raise RLIMIT_MEMLOCK (`ulimit -l`, see the README's requirements)",
                    IO_MEMORY >> 10
                )
            } else {
                text
            }
        }
        Ok(()) => "its executor stopped before it ran".into(),
    }
}

/// How long a stopping blade lets running transactions finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a blade could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be bound.
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// An executor could not start (often RLIMIT_MEMLOCK; see README).
    #[error("cannot start executor {core}: {message}")]
    Executor {
        /// The core.
        core: usize,
        /// glommio's error.
        message: String,
    },
    /// The cluster identity (CA, certificate, key) could not be loaded.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The nonce secret could not be drawn.
    #[error("cannot draw a random secret: {0}")]
    Random(String),
}

/// Runtime knobs that are not part of the configuration file: defaults
/// suit production; tests lower them to reach edge cases quickly.
#[derive(Debug, Clone)]
pub struct Options {
    /// Transactions one core holds before it answers 503 (overload).
    pub max_transactions: usize,
    /// RFC 3261 timer values.
    pub timers: crate::transaction::TimerConfig,
    /// Where to report every message the blade sends (`sipblade demo`).
    pub trace: Option<trace::Tracer>,
    /// A write on a TCP connection still blocked after this long means the
    /// peer stopped reading: the connection is closed rather than let what
    /// the blade sends it pile up.
    pub tcp_write_timeout: Duration,
    /// An accepted TCP connection that has not delivered a complete SIP
    /// message this long after it was accepted is closed (CRLF keep-alives
    /// are not messages): it holds one of the core's capped connection
    /// slots while doing nothing useful.
    pub tcp_first_message_timeout: Duration,
    /// A message partly received on a TCP connection (headers without
    /// their blank line, or a body short of its Content-Length) that is
    /// still incomplete this long after its first byte arrived closes the
    /// connection (a stalled or "slowloris" sender). An idle connection
    /// between messages is never closed for this.
    pub tcp_message_timeout: Duration,
    /// Messages each core's inbox holds (from the other cores). A request
    /// handed to a core whose inbox is full gets 503 (overload).
    pub mesh_capacity: usize,
}

/// The default of both [`Options::tcp_first_message_timeout`] and
/// [`Options::tcp_message_timeout`]: 64·T1, the 32 seconds of timers B and
/// F. A request that has not fully arrived by then is of no use (its
/// sender's transaction has timed out), and an agent opens a connection to
/// send a request at once (REGISTER), so no working client comes near it;
/// a shorter bound would only make holding slots a little dearer for an
/// attacker, who can reconnect anyway.
pub const TCP_MESSAGE_TIMEOUT: Duration = Duration::from_secs(32);

impl Default for Options {
    fn default() -> Self {
        Options {
            max_transactions: 100_000,
            timers: crate::transaction::TimerConfig::default(),
            trace: None,
            tcp_write_timeout: Duration::from_secs(10),
            tcp_first_message_timeout: TCP_MESSAGE_TIMEOUT,
            tcp_message_timeout: TCP_MESSAGE_TIMEOUT,
            mesh_capacity: MESH_CAPACITY,
        }
    }
}

/// A running blade.
pub struct Blade {
    sip: SocketAddr,
    admin: Option<Admin>,
    stopping: Arc<AtomicBool>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
}

/// Everything a core needs to build its proxy, shared read-only.
pub(crate) struct Shared {
    pub config: Config,
    pub options: Options,
    pub sip: SocketAddr,
    pub blade_id: Arc<str>,
    pub cores: usize,
    pub agents: Arc<crate::proxy::AgentTable>,
    pub nonce_secret: [u8; 32],
    pub epoch: Instant,
    pub stopping: Arc<AtomicBool>,
    /// How many cores have finished their transactions since the stop:
    /// each keeps serving (and refusing new requests with 503) until all
    /// have, so that no request lands on a socket nobody reads any more.
    pub drained: AtomicUsize,
    pub cluster: Option<ClusterSettings>,
    /// How many accepted TCP connections each core may hold at once.
    pub tcp_per_core: usize,
    /// Which core holds a connection to each remote address.
    pub streams: Arc<tcp::StreamOwners>,
}

impl Blade {
    /// Binds the sockets and starts the cores and the admin port.
    pub fn start(config: Config) -> Result<Blade, StartError> {
        Blade::start_with(config, Options::default())
    }

    /// [`Blade::start`] with runtime options.
    pub fn start_with(config: Config, options: Options) -> Result<Blade, StartError> {
        let cores = match config.blade.cores {
            0 => allowed_cpus().len(),
            n => n,
        };
        let addr = config.blade.sip;
        let (sip, sockets) = socket::ensure_free(addr)
            .and_then(|()| socket::udp_per_core(addr, cores))
            .map_err(|source| StartError::Bind {
                what: "SIP",
                addr,
                source,
            })?;
        let admin_addr = config.blade.admin;
        let admin_listener = TcpListener::bind(admin_addr).map_err(|source| StartError::Bind {
            what: "admin",
            addr: admin_addr,
            source,
        })?;
        let mut nonce_secret = [0u8; 32];
        getrandom::fill(&mut nonce_secret).map_err(|e| StartError::Random(e.to_string()))?;
        let agents = config
            .agents
            .provisioned
            .iter()
            .map(|a| (a.extension.clone(), Arc::new(a.clone())))
            .collect::<crate::proxy::AgentTable>();
        let stopping = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Peers::new(
            config
                .cluster
                .iter()
                .flat_map(|c| c.peers.iter().map(|p| (p.id.clone(), p.quic)))
                .collect(),
        ));
        let mut link = match &config.cluster {
            Some(cluster) => {
                let identity = Identity::load(&cluster.ca, &cluster.cert, &cluster.key)
                    .map_err(|e| StartError::Cluster(e.to_string()))?;
                let socket = socket::ensure_free(cluster.listen)
                    .and_then(|()| socket::udp_reuseport(cluster.listen))
                    .map_err(|source| StartError::Bind {
                        what: "cluster QUIC",
                        addr: cluster.listen,
                        source,
                    })?;
                Some(link::Setup {
                    socket,
                    me: config.blade.id.clone(),
                    identity,
                    peers: peers.clone(),
                    instance: instance_id().map_err(|e| StartError::Random(e.to_string()))?,
                })
            }
            None => None,
        };
        let cluster = match &config.cluster {
            Some(c) => Some(ClusterSettings {
                peers: c
                    .peers
                    .iter()
                    .map(|p| PeerBlade {
                        id: p.id.clone(),
                        sip: p.sip,
                    })
                    .collect(),
                lease_secs: u32::try_from(c.lease_secs).unwrap_or(u32::MAX),
                secret: HostSecret::random().map_err(|e| StartError::Random(e.to_string()))?,
                epoch_base: epoch_base(),
            }),
            None => None,
        };
        let info = BladeInfo {
            id: config.blade.id.clone(),
            peers,
        };
        let room = limits::connection_room(limits::open_files_limit());
        if let (Some(asked), Some(room)) = (config.blade.max_tcp_connections, room)
            && asked > room
        {
            tracing::warn!(
                max_tcp_connections = asked,
                room,
                "max_tcp_connections is more than the open-files limit leaves room for: using {room}"
            );
        }
        let tcp_per_core =
            limits::tcp_connections_per_core(config.blade.max_tcp_connections, room, cores);
        let shared = Arc::new(Shared {
            config,
            options,
            sip,
            blade_id: info.id.as_str().into(),
            cores,
            agents: Arc::new(agents),
            nonce_secret,
            epoch: Instant::now(),
            stopping: stopping.clone(),
            drained: AtomicUsize::new(0),
            cluster,
            tcp_per_core,
            streams: Arc::default(),
        });

        // With one core there is no one to talk to.
        let inboxes = if cores > 1 { cores } else { 0 };
        let (mesh, inboxes) = mesh::Mesh::build(inboxes, shared.options.mesh_capacity.max(1));
        let mut inboxes = inboxes.into_iter();
        let cpus = allowed_cpus();
        let mut executors = Vec::with_capacity(cores);
        let mut status_senders = Vec::with_capacity(cores);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // With several cores, each gets a UDP port of its own, named in the
        // Vias it writes: responses come back to the core that owns their
        // transaction instead of hopping over from whichever core the
        // kernel picked (measured: 15-19% less CPU per call at cores = 2,
        // BENCHMARKS.md). One core needs none.
        let via_sockets = (0..cores)
            .map(|_| {
                (cores > 1)
                    .then(|| socket::udp_reuseport(SocketAddr::new(sip.ip(), 0)))
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| StartError::Bind {
                what: "per-core UDP",
                addr: SocketAddr::new(sip.ip(), 0),
                source,
            })?;
        let core_ports: Vec<u16> = via_sockets
            .iter()
            .flatten()
            .filter_map(|s| s.local_addr().ok()?.as_socket())
            .map(|a| a.port())
            .collect();
        for (i, (socket, via_socket)) in sockets.into_iter().zip(via_sockets).enumerate() {
            let (status_tx, status_rx) = flume::unbounded();
            status_senders.push(status_tx);
            let shared = shared.clone();
            let mesh = inboxes.next().map(|inbox| (mesh.clone(), inbox));
            // The first core also runs the inter-blade link.
            let link = link.take();
            let report = StartReport {
                core: i,
                ready: ready_tx.clone(),
                ran: false,
            };
            let core_ports = core_ports.clone();
            let handle = LocalExecutorBuilder::new(Placement::Fixed(cpus[i % cpus.len()]))
                .name(&format!("sipblade-core-{i}"))
                .io_memory(IO_MEMORY)
                .spawn(move || {
                    let ready = report.running();
                    let sockets = core::Sockets {
                        sip: socket,
                        via: via_socket,
                        core_ports,
                    };
                    core::run(shared, i, sockets, mesh, status_rx, link, ready)
                })
                .map_err(|e| StartError::Executor {
                    core: i,
                    message: e.to_string(),
                })?;
            executors.push(handle);
        }
        drop(ready_tx);
        // Return only once every core listens, so a client that connects
        // right after `start` is not refused.
        let mut listening = vec![false; cores];
        while let Some(waiting) = listening.iter().position(|&l| !l) {
            let (core, message) = match ready_rx.recv_timeout(START_TIMEOUT) {
                Ok((core, Started::Listening)) => {
                    listening[core] = true;
                    continue;
                }
                Ok((core, Started::Failed(message))) => (core, message),
                Ok((core, Started::NoExecutor)) => (core, executor_error(executors.remove(core))),
                Err(_) => (
                    waiting,
                    format!("not listening after {} s", START_TIMEOUT.as_secs()),
                ),
            };
            stopping.store(true, Ordering::SeqCst);
            return Err(StartError::Executor { core, message });
        }
        let admin = Admin::start(admin_listener, info, status_senders).map_err(|source| {
            StartError::Bind {
                what: "admin",
                addr: admin_addr,
                source,
            }
        })?;
        tracing::info!(sip = %sip, admin = %admin.addr(), cores, tcp_per_core, "blade started");
        Ok(Blade {
            sip,
            admin: Some(admin),
            stopping,
            executors,
        })
    }

    /// The SIP address the blade listens on (UDP).
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip
    }

    /// The admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(Admin::addr)
    }

    /// Stops taking new transactions, lets running ones finish (at most
    /// [`DRAIN_TIMEOUT`]), then stops every core and the admin port.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        for handle in self.executors.drain(..) {
            if let Err(e) = handle.join() {
                tracing::warn!("core ended with an error: {e}");
            }
        }
        if let Some(admin) = self.admin.take() {
            admin.stop();
        }
        tracing::info!("blade stopped");
    }
}

/// This run's instance id, which its Hellos name to the peers: random, so
/// a restarted blade (same id, same certificate) is told from the run
/// before it, however soon it comes back.
fn instance_id() -> Result<u64, getrandom::Error> {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw)?;
    Ok(u64::from_be_bytes(raw))
}

/// Where this run's login epochs start: microseconds since the Unix epoch,
/// so a restarted blade's logins are newer than any it announced before.
fn epoch_base() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The CPUs this process may run on (its affinity mask: `taskset`, a
/// container's cpuset), in order; core `i` is pinned to the `i`-th. Every
/// CPU the machine reports when the mask cannot be read.
fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{CpuSet, sched_getaffinity};
    let all = || (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    match sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => {
            let cpus: Vec<usize> = (0..CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .collect();
            if cpus.is_empty() { all() } else { cpus }
        }
        Err(_) => all(),
    }
}
