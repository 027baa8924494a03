//! The real binary (SPEC §3): `sipblade run --config FILE` answers SIP and
//! serves `/status`, exits 0 on SIGTERM, and refuses a bad config with
//! exit status 1 and one stderr line naming `file:line`.

mod common;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Ua, WAIT, agents_toml, config_toml};
use sipblade::sip::{Message, Method};

/// The loopback address these tests use (the in-process blade tests use
/// 127.0.0.1, the simulated phones 127.0.0.1x).
const HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 61);

/// A port free on `HOST` for UDP and TCP alike (the SIP address is both).
fn free_sip_port() -> SocketAddr {
    for _ in 0..100 {
        let udp = UdpSocket::bind((HOST, 0)).expect("bind UDP");
        let addr = udp.local_addr().expect("address");
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no port free for both UDP and TCP on {HOST}");
}

/// A port free on `HOST` for TCP.
fn free_tcp_port() -> SocketAddr {
    let listener = TcpListener::bind((HOST, 0)).expect("bind TCP");
    listener.local_addr().expect("address")
}

/// A `sipblade` process, killed if the test ends before it exits.
struct Process {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Process {
    fn start(config: &Path, stderr: &Path) -> Process {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sipblade"));
        command.args(["run", "--config"]).arg(config);
        Process::spawn(command, stderr)
    }

    /// [`Process::start`] under an open-files limit of `limit` (soft and
    /// hard), set by the shell that then becomes sipblade.
    fn start_with_open_files(config: &Path, stderr: &Path, limit: u32) -> Process {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "ulimit -n {limit} && exec \"$0\" run --config \"$1\""
            ))
            .arg(env!("CARGO_BIN_EXE_sipblade"))
            .arg(config);
        Process::spawn(command, stderr)
    }

    fn spawn(mut command: Command, stderr: &Path) -> Process {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(stderr).expect("stderr file"))
            .spawn()
            .expect("sipblade starts");
        Process {
            child,
            stderr: stderr.to_owned(),
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits at most `limit` for the process to exit.
    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sipblade did not exit within {limit:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A config for a blade on free ports of `HOST` and its agents file, in a
/// new temporary directory: the directory, the config's path, and the SIP
/// and admin addresses.
fn blade_files(cores: usize, auth: bool) -> (tempfile::TempDir, PathBuf, SocketAddr, SocketAddr) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (sip, admin) = (free_sip_port(), free_tcp_port());
    std::fs::write(dir.path().join("agents.toml"), agents_toml()).expect("agents file");
    let config = dir.path().join("blade.toml");
    let text = config_toml(cores, auth, &sip.to_string(), &admin.to_string());
    std::fs::write(&config, text).expect("config file");
    (dir, config, sip, admin)
}

/// OPTIONS to the blade itself from `ua`; the answer's status, if any
/// comes within `timeout`.
fn ping(ua: &mut Ua, timeout: Duration) -> Option<u16> {
    let branch = common::branch();
    ua.send(format!(
        "OPTIONS sip:{} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <sip:probe@{}>;tag=p\r\n\
         To: <sip:{}>\r\nCall-ID: {branch}@probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        ua.blade.ip(),
        ua.via(&branch),
        ua.addr,
        ua.blade.ip(),
    ));
    let answer = ua.recv_raw(timeout)?;
    let answer = Message::parse(answer).expect("a valid answer");
    assert_eq!(answer.cseq().method, Method::Options);
    assert_eq!(answer.call_id(), format!("{branch}@probe"));
    answer.status()
}

#[test]
fn run_serves_sip_and_status_and_stops_on_sigterm() {
    let (dir, config, sip, admin) = blade_files(2, true);
    let mut blade = Process::start(&config, &dir.path().join("stderr"));

    let mut probe = Ua::new(sip, "probe");
    assert_eq!(
        ready(&mut blade, &mut probe),
        200,
        "OPTIONS to the blade is answered 200"
    );

    let status = common::status(admin);
    assert_eq!(status["blade"], "blade-test", "{status}");
    let agents = status["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 4, "{status}");
    assert!(
        agents.iter().all(|a| a["state"] == "logged_out"),
        "{status}"
    );

    stop(&mut blade);
    assert_eq!(
        ping(&mut probe, Duration::from_millis(300)),
        None,
        "nothing answers after the exit"
    );
}

/// A call left ringing holds the stop for the drain (up to 5 s); a second
/// SIGTERM ends the process at once.
#[test]
fn a_second_sigterm_cuts_the_drain_short() {
    let (dir, config, sip, _admin) = blade_files(1, false);
    let mut blade = Process::start(&config, &dir.path().join("stderr"));
    let mut probe = Ua::new(sip, "probe");
    assert_eq!(ready(&mut blade, &mut probe), 200);
    let mut caller = Ua::new(sip, "1001");
    let mut callee = Ua::new(sip, "1002");
    for ua in [&mut caller, &mut callee] {
        assert_eq!(ua.register(3600).status(), Some(200));
    }
    let mut call = caller.call("1002");
    caller.invite(&mut call, "");
    callee.request(Method::Invite, &call.call_id);

    let pid = blade.child.id().to_string();
    let term = || {
        let signalled = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(signalled.success());
    };
    term();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        blade.child.try_wait().expect("try_wait").is_none(),
        "the ringing call holds the first stop"
    );
    term();
    let exit = blade.wait_exit(Duration::from_secs(2));
    assert_eq!(exit.code(), Some(0), "stderr:\n{}", blade.stderr());
    assert!(
        blade.stderr().contains("stopping at once"),
        "{}",
        blade.stderr()
    );
}

/// More cores than CPUs work, but the start says so: executors share CPUs
/// and each costs memory, which is seldom what was meant.
#[test]
fn run_warns_of_more_cores_than_cpus() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (dir, config, sip, _) = blade_files(cpus + 1, false);
    let mut blade = Process::start(&config, &dir.path().join("stderr"));
    let mut probe = Ua::new(sip, "probe");
    assert_eq!(ready(&mut blade, &mut probe), 200);
    stop(&mut blade);
    let stderr = blade.stderr();
    assert!(stderr.contains("more cores than CPUs"), "{stderr}");
}

/// Waits for the blade to answer OPTIONS (polling); the status it answered.
fn ready(blade: &mut Process, probe: &mut Ua) -> u16 {
    let deadline = Instant::now() + 2 * WAIT;
    loop {
        if let Some(status) = ping(probe, Duration::from_millis(200)) {
            return status;
        }
        if let Some(status) = blade.child.try_wait().expect("try_wait") {
            panic!("sipblade exited early ({status}):\n{}", blade.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "sipblade never answered OPTIONS; stderr:\n{}",
            blade.stderr()
        );
    }
}

/// SIGTERM; the blade must exit 0 within [`WAIT`].
fn stop(blade: &mut Process) {
    let signalled = Command::new("kill")
        .args(["-TERM", &blade.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
    let exit = blade.wait_exit(WAIT);
    assert_eq!(exit.code(), Some(0), "stderr:\n{}", blade.stderr());
}

/// More TCP connections than the blade has file descriptors: it refuses
/// the surplus at once (`max_tcp_connections` defaults to what the
/// open-files limit leaves room for), and keeps answering SIP and its
/// admin port, and stops on SIGTERM. Before, accepts failed with EMFILE in
/// a loop that held the core for good, and the admin port's thread
/// panicked on the same error.
#[test]
fn a_flood_of_tcp_connections_leaves_the_blade_serving_and_stoppable() {
    let (dir, config, sip, admin) = blade_files(1, false);
    let mut blade = Process::start_with_open_files(&config, &dir.path().join("stderr"), 64);
    let mut probe = Ua::new(sip, "probe");
    assert_eq!(ready(&mut blade, &mut probe), 200);

    let flood: Vec<TcpStream> = (0..150)
        .filter_map(|_| TcpStream::connect(sip).ok())
        .collect();
    assert_eq!(flood.len(), 150, "the kernel queues every connection");
    common::wait_until("connections refused", || {
        common::metric(admin, "sipblade_tcp_connections_refused_total") > 0.0
    });
    assert_eq!(ping(&mut probe, WAIT), Some(200), "SIP goes on");
    assert_eq!(
        common::status(admin)["blade"],
        "blade-test",
        "so does /status"
    );
    stop(&mut blade);
    assert!(!blade.stderr().contains("panicked"), "{}", blade.stderr());
    drop(flood);
}

/// A memory-lock limit too low for io_uring stops `run` at once, exit
/// status 2, with one line that names the core, glommio's reason and the
/// limit to raise (not, after a wait, "a core did not start in time").
/// Root's CAP_IPC_LOCK lifts the limit, so as root the test drops that
/// capability (setpriv) for the blade.
#[test]
fn a_memory_lock_limit_too_low_is_named_at_start() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
    if root && Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: running as root without setpriv to drop CAP_IPC_LOCK");
        return;
    }
    let mut command = if root {
        let mut setpriv = Command::new("setpriv");
        setpriv.args(["--bounding-set", "-ipc_lock", "sh"]);
        setpriv
    } else {
        Command::new("sh")
    };
    let (dir, config, _, _) = blade_files(2, false);
    command
        .arg("-c")
        .arg("ulimit -l 64 && exec \"$0\" run --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_sipblade"))
        .arg(&config);
    let mut blade = Process::spawn(command, &dir.path().join("stderr"));
    let exit = blade.wait_exit(WAIT);
    let stderr = blade.stderr();
    assert_eq!(exit.code(), Some(2), "stderr:\n{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("sipblade: run: cannot start executor ")
            && last.contains("MemLockLimit")
            && last.contains("raise RLIMIT_MEMLOCK"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_a_bad_config_with_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("agents.toml"), agents_toml()).expect("agents file");
    let config = dir.path().join("blade.toml");
    let sip = SocketAddr::new(IpAddr::V4(HOST), 0);
    let text = config_toml(1, true, &sip.to_string(), &sip.to_string())
        .replace("[blade]\n", "[blade]\ncolour = \"red\"\n");
    assert_eq!(text.lines().nth(1), Some("colour = \"red\""), "{text}");
    std::fs::write(&config, &text).expect("config file");

    let stderr_path = dir.path().join("stderr");
    let mut blade = Process::start(&config, &stderr_path);
    let exit = blade.wait_exit(WAIT);
    let stderr = blade.stderr();
    assert_eq!(exit.code(), Some(1), "stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    let at = format!("{}:2", config.display());
    assert!(lines[0].contains(&at), "names {at}: {stderr}");
    assert!(lines[0].contains("colour"), "names the key: {stderr}");
}

/// SPEC §3: a config file that cannot be read is an I/O error: exit 2,
/// one line naming it.
#[test]
fn run_with_a_missing_config_file_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("no_such_blade.toml");
    let stderr_path = dir.path().join("stderr");
    let mut blade = Process::start(&config, &stderr_path);
    let exit = blade.wait_exit(WAIT);
    let stderr = blade.stderr();
    assert_eq!(exit.code(), Some(2), "stderr:\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("no_such_blade.toml"), "{stderr}");
}

/// A second blade on a SIP address another process holds is refused (exit
/// 2, one line), though the blade's own cores share that address with
/// SO_REUSEPORT: it would otherwise take part of the first one's traffic.
#[test]
fn run_refuses_a_sip_address_another_process_holds() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("agents.toml"), agents_toml()).expect("agents file");
    // The holder uses SO_REUSEPORT, as a running blade does. It takes a
    // port of the kernel's choosing: a port found free and then bound
    // could be taken in between by a parallel test's socket.
    let holder = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .expect("a UDP socket");
    holder.set_reuse_port(true).expect("SO_REUSEPORT");
    let any_port: SocketAddr = (HOST, 0).into();
    holder.bind(&any_port.into()).expect("bind the holder");
    let sip = holder
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("the holder's address");
    let config = dir.path().join("blade.toml");
    let text = config_toml(1, true, &sip.to_string(), &free_tcp_port().to_string());
    std::fs::write(&config, text).expect("config file");
    let mut blade = Process::start(&config, &dir.path().join("stderr"));
    let exit = blade.wait_exit(WAIT);
    let stderr = blade.stderr();
    assert_eq!(exit.code(), Some(2), "stderr:\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&sip.to_string()), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
}

/// SPEC §3: a usage error is one clear stderr line and exit status 2;
/// `--help` is not an error.
#[test]
fn usage_errors_are_one_line_and_exit_2() {
    for args in [
        &[][..],
        &["run", "--bogus"],
        &["bogus"],
        &["certs"],
        &["load"],
        &["run", "--config"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sipblade"))
            .args(args)
            .output()
            .expect("sipblade runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("sipblade: "), "{args:?}: {stderr}");
        assert!(stderr.contains("--help"), "{args:?}: {stderr}");
    }
    // A missing option value points at that subcommand's help, though
    // clap renders no usage line for it.
    for (args, help) in [
        (&["run", "--config"][..], "see `sipblade run --help`"),
        (
            &["load", "run", "--blade"],
            "see `sipblade load run --help`",
        ),
        (
            &["certs", "--dir", "x", "--blades"],
            "see `sipblade certs --help`",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sipblade"))
            .args(args)
            .output()
            .expect("sipblade runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(help), "{args:?}: {stderr}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_sipblade"))
        .args(["run", "--help"])
        .output()
        .expect("sipblade runs");
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--config"));
}
