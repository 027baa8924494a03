//! `sipblade load`: a SIP load generator that plays both the calling agents
//! (UAC) and the called agents (UAS) over real UDP sockets, to find a
//! blade's maximum call rate (CAPS) and how it scales with cores.
//!
//! `load agents` prints the provisioning file the blade under test must
//! run with (`auth = false`); `load run` registers the agents, places calls
//! at a fixed offered rate and prints a report.
//!
//! Layout: [`worker`] is one thread's engine (its socket, its share of the
//! pairs, the UAC and UAS state machines, the pacing); [`report`] merges
//! the workers' results and prints them.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use super::{EXIT_INVALID, EXIT_USAGE};

mod report;
mod worker;

/// The first extension when `--first` is not given.
const DEFAULT_FIRST: u64 = 100_000;

/// `sipblade load …`.
#[derive(Subcommand)]
pub(crate) enum LoadCommand {
    /// Print an agents.toml (SPEC §4) with 2N agents for `load run`:
    /// callers FIRST+2i and callees FIRST+2i+1, passwords "load-EXT".
    Agents {
        /// Number of caller/callee pairs.
        #[arg(long)]
        pairs: usize,
        /// The first extension.
        #[arg(long, default_value_t = DEFAULT_FIRST)]
        first: u64,
    },
    /// Register the agents and place calls at a fixed rate; print a report.
    /// The blade must run with `auth = false` and the `load agents` file.
    Run(RunArgs),
}

/// `sipblade load run` options.
#[derive(Args, Debug, Clone)]
pub(crate) struct RunArgs {
    /// SIP address (UDP) of the blade the callers register at and call through.
    #[arg(long)]
    blade: SocketAddr,
    /// SIP address of the blade the callees register at (default: --blade;
    /// another blade makes every call cross-blade).
    #[arg(long)]
    callee_blade: Option<SocketAddr>,
    /// SIP domain of the agents' URIs (default: the blade's address).
    #[arg(long)]
    domain: Option<String>,
    /// Caller/callee pairs; a pair has at most one call at a time.
    #[arg(long)]
    pairs: usize,
    /// The first extension (as given to `load agents`).
    #[arg(long, default_value_t = DEFAULT_FIRST)]
    first: u64,
    /// Offered rate, calls per second.
    #[arg(long)]
    rate: f64,
    /// Total calls to place.
    #[arg(long)]
    calls: u64,
    /// Worker threads, each with its own UDP socket.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Local IP to bind the workers' sockets to.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    ip: IpAddr,
    /// How long a call stays up between the ACK and the BYE, milliseconds.
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    /// A call that has not ended this many seconds after its INVITE failed.
    #[arg(long, default_value_t = 8)]
    timeout_s: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs `sipblade load …`.
pub(crate) fn run(command: LoadCommand) -> ExitCode {
    match command {
        LoadCommand::Agents { pairs, first } => agents(pairs, first),
        LoadCommand::Run(args) => run_load(&args),
    }
}

/// The extension of pair `i`'s caller (`callee` false) or callee.
pub(crate) fn extension(first: u64, i: usize, callee: bool) -> u64 {
    first + 2 * i as u64 + u64::from(callee)
}

/// Whether `pairs` pairs from `first` have extensions that fit in a
/// `u64` (past it, [`extension`] would wrap to 0, 1, ...).
fn extensions_fit(first: u64, pairs: usize) -> bool {
    u64::try_from(pairs)
        .ok()
        .and_then(|p| p.checked_mul(2))
        .and_then(|n| first.checked_add(n - 1))
        .is_some()
}

/// The longest `--timeout-s` and `--hold-ms` (an hour), and the longest
/// schedule `--calls / --rate` (a year) that `load run` takes: past them
/// its deadlines would overflow a clock reading.
const MAX_CALL_WAIT: Duration = Duration::from_secs(3600);
const MAX_SCHEDULE_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// The `agents.toml` text for `pairs` pairs from `first`.
fn agents_toml(pairs: usize, first: u64) -> String {
    use std::fmt::Write as _;
    let mut text = format!(
        "# sipblade load agents --pairs {pairs} --first {first}\n\
         # callers are {first}+2i, callees {first}+2i+1; run the blade with auth = false.\n\n"
    );
    for i in 0..pairs {
        for callee in [false, true] {
            let ext = extension(first, i, callee);
            let _ = write!(
                text,
                "[[agent]]\nbadge = \"L{ext}\"\nextension = \"{ext}\"\nkind = \"agent\"\n\
                 password = \"load-{ext}\"\n\n"
            );
        }
    }
    text
}

fn agents(pairs: usize, first: u64) -> ExitCode {
    if pairs == 0 {
        eprintln!("sipblade load agents: --pairs must be at least 1");
        return ExitCode::from(EXIT_USAGE);
    }
    if !extensions_fit(first, pairs) {
        eprintln!("sipblade load agents: --first + 2 × --pairs is past the largest extension");
        return ExitCode::from(EXIT_USAGE);
    }
    let text = agents_toml(pairs, first);
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sipblade load agents: cannot write: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// What every worker needs to know about the run.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Where the callers register and send their requests.
    pub blade: SocketAddr,
    /// Where the callees register.
    pub callee_blade: SocketAddr,
    /// Host part of the callers' URIs (and of the Request-URI of INVITEs).
    pub domain: String,
    /// Host part of the callees' URIs at registration.
    pub callee_domain: String,
    /// The first extension.
    pub first: u64,
    /// Total pairs.
    pub pairs: usize,
    /// Worker threads.
    pub threads: usize,
    /// Offered calls per second.
    pub rate: f64,
    /// Total calls.
    pub calls: u64,
    /// Time between ACK and BYE.
    pub hold: Duration,
    /// A call not ended this long (plus `hold`) after its INVITE failed.
    pub timeout: Duration,
    /// A per-run number in every Call-ID, so stray messages of an earlier
    /// run are not taken for this one's.
    pub nonce: u32,
}

/// What the workers share: the start line and the common clock.
pub(crate) struct Shared {
    /// All workers registered (or failed to).
    pub registered: Barrier,
    /// A worker failed to register its agents: nobody places calls.
    pub abort: AtomicBool,
    /// When the first call is due: set by the first worker past the barrier.
    pub t0: OnceLock<Instant>,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("sipblade load run: {msg}");
    ExitCode::from(EXIT_USAGE)
}

fn run_load(args: &RunArgs) -> ExitCode {
    if args.pairs == 0 {
        return usage("--pairs must be at least 1");
    }
    if args.calls == 0 {
        return usage("--calls must be at least 1");
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return usage("--rate must be a positive number");
    }
    if args.threads == 0 {
        return usage("--threads must be at least 1");
    }
    if args.timeout_s == 0 {
        return usage("--timeout-s must be at least 1");
    }
    if args.timeout_s > MAX_CALL_WAIT.as_secs() {
        return usage(&format!(
            "--timeout-s must be at most {}",
            MAX_CALL_WAIT.as_secs()
        ));
    }
    if u128::from(args.hold_ms) > MAX_CALL_WAIT.as_millis() {
        return usage(&format!(
            "--hold-ms must be at most {}",
            MAX_CALL_WAIT.as_millis()
        ));
    }
    if args.calls as f64 / args.rate > MAX_SCHEDULE_SECS {
        return usage("--calls / --rate must be at most a year");
    }
    if !extensions_fit(args.first, args.pairs) {
        return usage("--first + 2 × --pairs is past the largest extension");
    }
    // A worker without a pair would have nothing to do.
    let threads = args.threads.min(args.pairs);
    let callee_blade = args.callee_blade.unwrap_or(args.blade);
    let plan = Arc::new(Plan {
        blade: args.blade,
        callee_blade,
        domain: args
            .domain
            .clone()
            .unwrap_or_else(|| args.blade.to_string()),
        callee_domain: args
            .domain
            .clone()
            .unwrap_or_else(|| callee_blade.to_string()),
        first: args.first,
        pairs: args.pairs,
        threads,
        rate: args.rate,
        calls: args.calls,
        hold: Duration::from_millis(args.hold_ms),
        timeout: Duration::from_secs(args.timeout_s),
        nonce: nonce(),
    });
    let mut sockets = Vec::with_capacity(threads);
    for _ in 0..threads {
        match bind(args.ip) {
            Ok(s) => sockets.push(s),
            Err(e) => return usage(&format!("cannot bind a UDP socket on {}: {e}", args.ip)),
        }
    }
    let shared = Arc::new(Shared {
        registered: Barrier::new(threads),
        abort: AtomicBool::new(false),
        t0: OnceLock::new(),
    });
    let cpu_before = report::cpu_time();
    let started = Instant::now();
    let mut handles = Vec::with_capacity(threads);
    for (w, socket) in sockets.into_iter().enumerate() {
        let plan = plan.clone();
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("load-{w}"))
            .spawn(move || worker::Worker::new(w, socket, plan, shared).run());
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // The barrier would wait forever for this worker.
                eprintln!("sipblade load run: cannot start a worker thread: {e}");
                std::process::exit(i32::from(EXIT_USAGE));
            }
        }
    }
    let mut results = Vec::with_capacity(threads);
    for h in handles {
        match h.join() {
            Ok(r) => results.push(r),
            Err(_) => {
                eprintln!("sipblade load run: a worker thread panicked");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let wall = started.elapsed();
    let cpu = report::cpu_time().zip(cpu_before).map(|(a, b)| a - b);
    if let Some(err) = results.iter().find_map(|r| r.register_error.clone()) {
        eprintln!("sipblade load run: {err}");
        return ExitCode::from(EXIT_INVALID);
    }
    let summary = report::Summary::merge(&plan, results, wall, cpu);
    let text = if args.json {
        summary.json()
    } else {
        summary.text()
    };
    if let Err(code) = super::write_stdout("load run", &format!("{text}\n")) {
        return code;
    }
    if summary.failed == 0 && summary.ok == plan.calls {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    }
}

/// A UDP socket on `ip`, port chosen by the OS, with a receive buffer big
/// enough that bursts of responses are not dropped.
fn bind(ip: IpAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(ip, 0);
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps it at net.core.rmem_max unless privileged.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    let socket: UdpSocket = socket.into();
    // SO_RCVTIMEO: the kernel rounds it up to one scheduler tick.
    socket.set_read_timeout(Some(Duration::from_millis(1)))?;
    Ok(socket)
}

/// A number for this run's Call-IDs.
fn nonce() -> u32 {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_ok() {
        u32::from_le_bytes(b)
    } else {
        std::process::id() ^ (Instant::now().elapsed().subsec_nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_file_is_valid_provisioning() {
        let text = agents_toml(3, 500);
        let agents = crate::config::Agents::from_toml(&text, std::path::Path::new("a"))
            .expect("valid agents file");
        assert_eq!(agents.len(), 6);
        assert!(agents.by_extension("500").is_some());
        assert!(agents.by_extension("505").is_some());
        assert_eq!(extension(500, 2, true), 505);
    }
}
