//! `sipblade demo` end to end: the built binary places the cross-blade
//! call, prints the ladder and the summary, exits 0 in time, and leaves
//! neither a blade nor its temporary directory behind.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the demo may take, start to exit.
const LIMIT: Duration = Duration::from_secs(20);

/// Reads a child's pipe to the end on a thread of its own, so a full
/// pipe never stalls the child.
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// The addresses printed after `label ` in the demo's heading lines
/// (`blade-1     sip 127.0.0.51:5060  quic 127.0.0.51:7060 ...`).
fn addrs_after(stdout: &str, label: &str) -> Vec<SocketAddr> {
    stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("blade-"))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == label)?;
            words.next()?.parse().ok()
        })
        .collect()
}

/// How long an exited process's sockets may stay bound (see below).
const RELEASE: Duration = Duration::from_secs(3);

/// Binds with `bind` until it succeeds, failing the test after `RELEASE`.
fn bind_soon(what: &str, bind: impl Fn() -> std::io::Result<()>) {
    let deadline = Instant::now() + RELEASE;
    loop {
        match bind() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("{what} still held after {RELEASE:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn demo_places_a_cross_blade_call_and_exits_cleanly() {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipblade"))
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let pid = child.id();
    let stdout = drain(child.stdout.take().expect("stdout piped"));
    let stderr = drain(child.stderr.take().expect("stderr piped"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("demo still running after {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    assert!(
        status.success(),
        "demo exited {status}\nstderr:\n{stderr}\nstdout:\n{stdout}"
    );

    let heading = stdout
        .lines()
        .find(|l| l.contains("agent 1001") && l.contains("agent 2001"))
        .unwrap_or_else(|| panic!("no ladder heading:\n{stdout}"));
    for column in ["agent 1001", "blade-1", "blade-2", "agent 2001"] {
        assert!(heading.contains(column), "{column} missing: {heading}");
    }
    let arrow = |what: &str| {
        stdout
            .lines()
            .any(|l| l.contains(what) && (l.contains('►') || l.contains('◄')))
    };
    assert!(arrow("INVITE"), "no INVITE arrow:\n{stdout}");
    assert!(arrow("HostRequest"), "no HostRequest arrow:\n{stdout}");
    assert!(arrow("BYE"), "no BYE arrow:\n{stdout}");
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("cross-blade call 1001 → 2001: "))
        .unwrap_or_else(|| panic!("no summary line:\n{stdout}"));
    assert!(summary.contains("answered"), "{summary}");
    assert!(
        summary.contains("hosted by blade-1 during the call and ready again after"),
        "{summary}"
    );

    // Both blades are gone: their SIP (UDP and TCP) and QUIC ports bind
    // again. The kernel tears an exited process's io_uring down in a
    // worker of its own, so a socket an in-flight receive still held may
    // stay bound for a moment after the exit: allow that moment.
    let sip = addrs_after(&stdout, "sip");
    let quic = addrs_after(&stdout, "quic");
    assert_eq!(
        (sip.len(), quic.len()),
        (2, 2),
        "blade addresses:\n{stdout}"
    );
    for addr in sip {
        bind_soon(&format!("SIP UDP {addr}"), || {
            UdpSocket::bind(addr).map(drop)
        });
        bind_soon(&format!("SIP TCP {addr}"), || {
            TcpListener::bind(addr).map(drop)
        });
    }
    for addr in quic {
        bind_soon(&format!("QUIC {addr}"), || UdpSocket::bind(addr).map(drop));
    }
    // And its temporary directory is removed.
    let prefix = format!("sipblade-demo-{pid}-");
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir listing")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "temporary directory left: {left:?}");
}
