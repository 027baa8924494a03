//! `sipblade demo`: two blades on loopback, a cross-blade call between two
//! simulated agents, and the SIP ladder of what happened.
//!
//! blade-1 listens on 127.0.0.51 and blade-2 on 127.0.0.52 (SIP 5060 and
//! QUIC 7060 when free, other free ports otherwise), with certificates and
//! agents generated in a temporary directory. Agent 1001 (127.0.0.61)
//! registers on blade-1 and agent 2001 (127.0.0.62) on blade-2, both with
//! MD5 digest; 1001 calls 2001, which rings and answers; 1001 hangs up
//! after about 200 ms. Every message the blades and the agents send goes
//! to one tracer; the ladder is drawn from it once both blades have
//! stopped. Blade-2's `/status` must show 2001 hosted by blade-1 during
//! the call and ready after it, or the demo fails: it reports only what it
//! checked.

mod agent;
mod ladder;

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use self::agent::{Agent, status_line};
use self::ladder::Column;
use super::{EXIT_INVALID, EXIT_USAGE};
use crate::cluster::certs::generate_cluster;
use crate::config::Config;
use crate::runtime::trace::{Sent, TraceEvent, Tracer};
use crate::runtime::{Blade, Options};

/// The SIP domain of the demo cluster.
const DOMAIN: &str = "cc.example";

/// The blades: id, loopback address.
const BLADES: [(&str, Ipv4Addr); 2] = [
    ("blade-1", Ipv4Addr::new(127, 0, 0, 51)),
    ("blade-2", Ipv4Addr::new(127, 0, 0, 52)),
];

/// The agents: extension, loopback address, index of the blade it
/// registers on.
const AGENTS: [(&str, Ipv4Addr, usize); 2] = [
    ("1001", Ipv4Addr::new(127, 0, 0, 61), 0),
    ("2001", Ipv4Addr::new(127, 0, 0, 62), 1),
];

/// The SIP and QUIC ports used when free.
const SIP_PORT: u16 = 5060;
const QUIC_PORT: u16 = 7060;

/// How long the blades get to bring their QUIC link up.
const LINK_WAIT: Duration = Duration::from_secs(5);

/// How long the answered call lasts before the caller hangs up.
const HOLD: Duration = Duration::from_millis(200);

/// How long `/status` gets to show a hosting change.
const STATE_WAIT: Duration = Duration::from_secs(1);

/// Why the demo failed. The kind picks the exit status (SPEC §3).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    /// Could not set up: a socket, a file, a blade start (exit 2).
    #[error("{0}")]
    Setup(String),
    /// The call or a check did not go as it should (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl DemoError {
    fn exit_code(&self) -> ExitCode {
        match self {
            DemoError::Setup(_) => ExitCode::from(EXIT_USAGE),
            DemoError::Failed(_) => ExitCode::from(EXIT_INVALID),
        }
    }
}

/// What the demo learned, for the report.
#[derive(Default)]
struct Run {
    /// The parties, in ladder order, once known.
    columns: Vec<Column>,
    /// One line per party: its addresses.
    parties: Vec<String>,
    /// The running blades (stopped by [`stop_all`]).
    blades: Vec<Blade>,
    /// Authenticated INVITE sent → 200 OK received.
    setup: Option<Duration>,
    /// Whether the callee rang before answering.
    ringing: bool,
}

/// Runs the demo; prints the ladder and a summary, or one error line.
pub(crate) fn run() -> ExitCode {
    init_logging();
    let dir = match TempDir::create() {
        Ok(dir) => dir,
        Err(err) => {
            eprintln!("sipblade: demo: {err}");
            return err.exit_code();
        }
    };
    let (tracer, trace) = flume::unbounded();
    let mut run = Run::default();
    let result = demo(&dir.path, &tracer, &mut run);
    stop_all(std::mem::take(&mut run.blades));
    drop(tracer);
    let events: Vec<TraceEvent> = trace.try_iter().collect();
    let cleanup = dir.remove();

    let mut out = String::new();
    if !run.parties.is_empty() {
        out.push_str("sipblade demo: two blades on loopback, a cross-blade call 1001 → 2001\n");
        for party in &run.parties {
            let _ = writeln!(out, "  {party}");
        }
        out.push('\n');
    }
    if !run.columns.is_empty() && !events.is_empty() {
        out.push_str(&ladder::render(&run.columns, events.clone()));
        out.push('\n');
    }
    let result = result.and_then(|()| summary(&run, &events));
    match result {
        Ok(line) => {
            out.push_str(&line);
            out.push('\n');
            if let Err(code) = super::write_stdout("demo", &out) {
                return code;
            }
            if let Err(err) = cleanup {
                eprintln!("sipblade: demo: {err}");
                return err.exit_code();
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            // The ladder so far shows where the call stopped.
            let _ = super::write_stdout("demo", &out);
            eprintln!("sipblade: demo: {err}");
            err.exit_code()
        }
    }
}

/// Everything up to the end of the call; the blades it started are left
/// in `run` for the caller to stop, whatever the outcome.
fn demo(dir: &Path, tracer: &Tracer, run: &mut Run) -> Result<(), DemoError> {
    let ids: Vec<String> = BLADES.iter().map(|(id, _)| (*id).to_owned()).collect();
    generate_cluster(dir, &ids)
        .map_err(|e| DemoError::Setup(format!("cannot generate certificates: {e}")))?;
    write_file(&dir.join("agents.toml"), &agents_toml())?;

    // Peers need each other's addresses up front: pick every port first.
    let mut addrs = Vec::new();
    for (_, ip) in BLADES {
        let ip = IpAddr::V4(ip);
        let sip = SocketAddr::new(ip, pick_port(ip, SIP_PORT, true)?);
        let quic = SocketAddr::new(ip, pick_port(ip, QUIC_PORT, false)?);
        addrs.push((sip, quic));
    }
    for (i, (id, _)) in BLADES.iter().enumerate() {
        let text = blade_toml(dir, i, &addrs);
        let path = dir.join(format!("{id}.toml"));
        let config = Config::from_toml(&text, &path)
            .map_err(|e| DemoError::Setup(format!("{id}: bad generated config: {e}")))?;
        let options = Options {
            trace: Some(tracer.clone()),
            ..Options::default()
        };
        let blade = Blade::start_with(config, options)
            .map_err(|e| DemoError::Setup(format!("{id} does not start: {e}")))?;
        let admin = blade
            .admin_addr()
            .map_or_else(|| "none".to_owned(), |a| a.to_string());
        run.parties.push(format!(
            "{id:<10}  sip {}  quic {}  admin {admin}",
            blade.sip_addr(),
            addrs[i].1
        ));
        run.columns.push(Column {
            name: (*id).to_owned(),
            addrs: vec![blade.sip_addr()],
            blade: Some((*id).to_owned()),
        });
        run.blades.push(blade);
    }
    let admins = run
        .blades
        .iter()
        .map(|b| {
            b.admin_addr()
                .ok_or_else(|| DemoError::Setup("a blade has no admin port".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (i, admin) in admins.iter().enumerate() {
        wait_link_up(*admin, BLADES[i].0, BLADES[1 - i].0)?;
    }

    let mut agents = Vec::new();
    for (ext, ip, blade) in AGENTS {
        let agent = Agent::bind(
            IpAddr::V4(ip),
            ext,
            &password(ext),
            DOMAIN,
            run.blades[blade].sip_addr(),
            tracer.clone(),
        )?;
        run.parties.push(format!(
            "agent {ext:<4}  {}  registers on {}",
            agent.addr, BLADES[blade].0
        ));
        agents.push(agent);
    }
    // Ladder order: caller, its blade, the callee's blade, callee.
    let agent_column = |a: &Agent| Column {
        name: format!("agent {}", a.ext),
        addrs: vec![a.addr],
        blade: None,
    };
    run.columns.insert(0, agent_column(&agents[0]));
    run.columns.push(agent_column(&agents[1]));

    for agent in &mut agents {
        agent.register()?;
    }
    let mut agents = agents.into_iter();
    let (Some(caller), Some(callee)) = (agents.next(), agents.next()) else {
        return Err(DemoError::Setup("the agents are missing".into()));
    };
    let stop = Arc::new(AtomicBool::new(false));
    let answering = {
        let stop = stop.clone();
        let mut callee = callee;
        std::thread::spawn(move || callee.answer_one_call(&stop))
    };
    let placed = place_call(caller, admins[1], run);
    // A failed call must not leave the callee waiting out its timeouts.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = answering
        .join()
        .unwrap_or_else(|_| Err(DemoError::Failed("agent 2001 crashed".into())));
    placed?;
    answered
}

/// The caller's side: INVITE, the 407 round, ringing, answer, ACK, the
/// hosting check, BYE, and the check that the callee is back.
fn place_call(mut caller: Agent, target_admin: SocketAddr, run: &mut Run) -> Result<(), DemoError> {
    let callee = AGENTS[1].0;
    let host = BLADES[0].0;
    let target = BLADES[1].0;
    let mut call = caller.call(callee);
    let mut sent = Instant::now();
    caller.invite(&mut call, "")?;
    let mut outcome = caller.invite_outcome(&mut call)?;
    if outcome.last.status() == Some(407) {
        caller.ack_failure(&call, &outcome.last)?;
        let auth = caller.invite_credentials(&call, &outcome.last)?;
        sent = Instant::now();
        caller.invite(&mut call, &auth)?;
        outcome = caller.invite_outcome(&mut call)?;
    }
    let status = outcome.last.status().unwrap_or(0);
    if !(200..300).contains(&status) {
        caller.ack_failure(&call, &outcome.last)?;
        return Err(DemoError::Failed(format!(
            "the call 1001 → {callee} was answered {} instead of 200 OK",
            status_line(&outcome.last)
        )));
    }
    run.setup = Some(sent.elapsed());
    run.ringing = outcome.ringing;
    caller.ack_2xx(&call)?;
    let answered = Instant::now();

    wait_agent(
        target_admin,
        target,
        callee,
        "during the call",
        |state, by| state == "hosted" && by == Some(host),
    )?;
    std::thread::sleep(HOLD.saturating_sub(answered.elapsed()));

    let bye = caller.bye(&mut call)?;
    if bye.status() != Some(200) {
        return Err(DemoError::Failed(format!(
            "BYE was answered {} instead of 200 OK",
            status_line(&bye)
        )));
    }
    wait_agent(
        target_admin,
        target,
        callee,
        "after the call",
        |state, by| state == "ready" && by.is_none(),
    )
}

/// The summary line, from the run and the trace.
fn summary(run: &Run, events: &[TraceEvent]) -> Result<String, DemoError> {
    let mut sip = 0;
    let mut hosting = 0;
    let mut directory = 0;
    let mut other_link = 0;
    for event in events {
        match &event.sent {
            Sent::Sip { cseq, .. } if !cseq.ends_with("REGISTER") => sip += 1,
            Sent::Sip { .. } => {}
            Sent::Cluster { summary, .. } if summary.to_ascii_lowercase().contains("host") => {
                hosting += 1;
            }
            Sent::Cluster { summary, .. }
                if ["Announce", "Withdraw", "Resync"]
                    .iter()
                    .any(|name| summary.starts_with(name)) =>
            {
                directory += 1;
            }
            Sent::Cluster { .. } => other_link += 1,
        }
    }
    let setup = run
        .setup
        .ok_or_else(|| DemoError::Failed("the call was not answered".into()))?;
    let mut line = format!(
        "cross-blade call {} → {}: {}answered, {sip} SIP messages in the call, \
         {hosting} hosting messages",
        AGENTS[0].0,
        AGENTS[1].0,
        if run.ringing { "rang, " } else { "" },
    );
    if directory > 0 {
        let _ = write!(line, " (and {directory} directory messages)");
    }
    if other_link > 0 {
        let _ = write!(line, " (and {other_link} other link messages)");
    }
    let _ = write!(
        line,
        ", setup {:.1} ms, {} hosted by {} during the call and ready again after",
        setup.as_secs_f64() * 1e3,
        AGENTS[1].0,
        BLADES[0].0,
    );
    Ok(line)
}

/// Polls blade `blade`'s `/status` until agent `ext` satisfies `want`
/// (its state and `hosted_by`), for at most [`STATE_WAIT`].
fn wait_agent(
    admin: SocketAddr,
    blade: &str,
    ext: &str,
    when: &str,
    want: impl Fn(&str, Option<&str>) -> bool,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + STATE_WAIT;
    loop {
        let doc = status(admin)?;
        let agent = doc["agents"]
            .as_array()
            .and_then(|agents| agents.iter().find(|a| a["extension"] == ext));
        let state = agent.and_then(|a| a["state"].as_str()).unwrap_or("missing");
        let by = agent.and_then(|a| a["hosted_by"].as_str());
        if want(state, by) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DemoError::Failed(format!(
                "{blade}'s /status shows {ext} as `{state}` (hosted_by {}) {when}",
                by.unwrap_or("null")
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until blade `me`'s `/status` shows its link to `peer` up.
fn wait_link_up(admin: SocketAddr, me: &str, peer: &str) -> Result<(), DemoError> {
    let deadline = Instant::now() + LINK_WAIT;
    loop {
        let doc = status(admin)?;
        let up = doc["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["id"] == peer && p["up"] == true));
        if up {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DemoError::Failed(format!(
                "the QUIC link {me} → {peer} did not come up within {} s",
                LINK_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /status` on `admin`, as JSON.
fn status(admin: SocketAddr) -> Result<Value, DemoError> {
    let io = |e: std::io::Error| DemoError::Setup(format!("GET http://{admin}/status: {e}"));
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(io)?;
    write!(stream, "GET /status HTTP/1.0\r\nHost: {admin}\r\n\r\n").map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = |what: &str| DemoError::Failed(format!("GET http://{admin}/status: {what}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no HTTP head"))?;
    if head.split(' ').nth(1) != Some("200") {
        return Err(bad(head.lines().next().unwrap_or("no status line")));
    }
    serde_json::from_str(body).map_err(|e| bad(&format!("not JSON: {e}")))
}

/// `preferred` on `ip` when both UDP (and, with `tcp`, TCP) can bind it,
/// else a port the OS picks that both can.
fn pick_port(ip: IpAddr, preferred: u16, tcp: bool) -> Result<u16, DemoError> {
    let free = |port: u16| -> std::io::Result<u16> {
        let udp = UdpSocket::bind((ip, port))?;
        let port = udp.local_addr()?.port();
        if tcp {
            TcpListener::bind((ip, port))?;
        }
        Ok(port)
    };
    if let Ok(port) = free(preferred) {
        return Ok(port);
    }
    let mut last = None;
    for _ in 0..16 {
        match free(0) {
            Ok(port) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(DemoError::Setup(format!(
        "cannot bind a port on {ip}{} (the demo runs on 127.0.0.51, 127.0.0.52, \
         127.0.0.61 and 127.0.0.62)",
        last.map(|e| format!(": {e}")).unwrap_or_default()
    )))
}

/// The password of a demo agent (the cluster lives for one run).
fn password(ext: &str) -> String {
    format!("demo-{ext}")
}

/// The provisioning file shared by both blades.
fn agents_toml() -> String {
    AGENTS
        .iter()
        .map(|(ext, _, _)| {
            format!(
                "[[agent]]\nbadge = \"A{ext}\"\nextension = \"{ext}\"\nkind = \"agent\"\n\
                 password = \"{}\"\n\n",
                password(ext)
            )
        })
        .collect()
}

/// The config of blade `i` (SPEC §4), given every blade's SIP and QUIC
/// address.
fn blade_toml(dir: &Path, i: usize, addrs: &[(SocketAddr, SocketAddr)]) -> String {
    let (id, ip) = BLADES[i];
    let (sip, quic) = addrs[i];
    let file = |name: String| toml_string(&dir.join(name));
    let mut text = format!(
        "[blade]\nid = \"{id}\"\ndomain = \"{DOMAIN}\"\nsip = \"{sip}\"\ncores = 1\n\
         admin = \"{ip}:0\"\n\n[cluster]\nlisten = \"{quic}\"\nca = {}\ncert = {}\nkey = {}\n\
         lease_secs = 30\n\n",
        file("ca.pem".into()),
        file(format!("{id}.pem")),
        file(format!("{id}.key")),
    );
    for (j, (peer, _)) in BLADES.iter().enumerate() {
        if j != i {
            let (peer_sip, peer_quic) = addrs[j];
            let _ = write!(
                text,
                "[[cluster.peer]]\nid = \"{peer}\"\nquic = \"{peer_quic}\"\nsip = \"{peer_sip}\"\n\n"
            );
        }
    }
    let _ = write!(
        text,
        "[agents]\nfile = {}\nauth = true\n",
        file("agents.toml".into())
    );
    text
}

/// A path as a TOML basic string.
fn toml_string(path: &Path) -> String {
    let raw = path.to_string_lossy();
    format!("\"{}\"", raw.replace('\\', "\\\\").replace('"', "\\\""))
}

fn write_file(path: &Path, text: &str) -> Result<(), DemoError> {
    std::fs::write(path, text)
        .map_err(|e| DemoError::Setup(format!("cannot write {}: {e}", path.display())))
}

/// Stops the blades together: each may wait for its own transactions.
fn stop_all(blades: Vec<Blade>) {
    std::thread::scope(|s| {
        for blade in blades {
            s.spawn(move || blade.stop());
        }
    });
}

/// Logs to stderr only when `RUST_LOG` asks: the ladder is the output.
fn init_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
    }
}

/// A directory of this run's certificates and agents, removed at the end.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn create() -> Result<TempDir, DemoError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("sipblade-demo-{}-{nanos:08x}", std::process::id()));
        std::fs::create_dir(&path)
            .map_err(|e| DemoError::Setup(format!("cannot create {}: {e}", path.display())))?;
        Ok(TempDir { path })
    }

    fn remove(mut self) -> Result<(), DemoError> {
        // Disarm the drop: this is the removal that reports errors.
        let path = std::mem::take(&mut self.path);
        std::fs::remove_dir_all(&path)
            .map_err(|e| DemoError::Setup(format!("cannot remove {}: {e}", path.display())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
