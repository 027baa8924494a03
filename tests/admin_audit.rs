//! The admin port (SPEC §6) probed as an acceptance tester would: request
//! forms an HTTP client or a hostile one may send, clients that hold
//! connections, and the documents themselves (`/status` valid JSON with
//! the SPEC fields, `/metrics` valid Prometheus text with the SPEC's
//! metrics). The blade must go on serving SIP and `/status` afterwards.
//!
//! Addresses: 127.0.21.1–127.0.21.20.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::TestBlade;
use serde_json::Value;
use sipblade::runtime::Options;

const BLADE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 21, 1);

/// The admin port's documented cap on connections at once (README).
const MAX_CONNECTIONS: usize = 32;

/// Sends `request` on a fresh connection and reads until the server
/// closes (or `limit` passes): everything it answered.
fn exchange(admin: SocketAddr, request: &[u8], limit: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect_timeout(&admin, limit).expect("admin port connects");
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    stream
        .set_write_timeout(Some(limit))
        .expect("write timeout");
    // The server may answer and close before a long request is all sent.
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    raw
}

/// The status code of each `HTTP/1.x NNN` status line in `raw`.
fn statuses(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// A UDP OPTIONS to the blade itself is answered 200 (SPEC §5).
fn sip_answers(blade: &TestBlade, from: Ipv4Addr) -> bool {
    let socket = UdpSocket::bind((from, 0)).expect("a UDP socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("read timeout");
    let local = socket.local_addr().expect("its address");
    let options = format!(
        "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-audit{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=p{n}\r\nTo: <sip:{sip}>\r\n\
         Call-ID: admin-audit-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        sip = blade.sip,
        n = common::unique()
    );
    socket.send_to(options.as_bytes(), blade.sip).expect("sent");
    let mut buf = [0u8; 4096];
    matches!(socket.recv(&mut buf), Ok(n) if buf[..n].starts_with(b"SIP/2.0 200 "))
}

/// Request forms: each gets exactly one answer with the status a client
/// expects, and the connection closes.
#[test]
fn every_request_form_gets_one_answer() {
    let blade = TestBlade::start_at(1, false, Options::default(), "", BLADE_IP);
    let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100 * 1024));
    let cases: [(&str, &[u8], u16); 12] = [
        ("HEAD", b"HEAD /status HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (
            "POST",
            b"POST /status HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            405,
        ),
        ("unknown path", b"GET /nope HTTP/1.1\r\n\r\n", 404),
        ("query string", b"GET /status?x=1 HTTP/1.1\r\n\r\n", 200),
        ("HTTP/1.0", b"GET /metrics HTTP/1.0\r\n\r\n", 200),
        (
            "absolute form",
            b"GET http://admin.example/metrics?a HTTP/1.1\r\n\r\n",
            200,
        ),
        // Pipelined: the first is answered, then the connection closes
        // (every answer says `Connection: close`).
        (
            "pipelined",
            b"GET /status HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n",
            200,
        ),
        ("100 KB request line", long_line.as_bytes(), 431),
        ("non-UTF-8 target", b"GET /st\xff\xfe HTTP/1.1\r\n\r\n", 400),
        (
            "non-UTF-8 header value",
            b"GET /status HTTP/1.1\r\nX-A: \xff\xfe\r\n\r\n",
            200,
        ),
        ("garbage", b"\x00\x01\x02\r\n\r\n", 400),
        ("no HTTP version", b"GET /status\r\n\r\n", 400),
    ];
    for (name, request, status) in cases {
        let raw = exchange(blade.admin, request, Duration::from_secs(5));
        assert_eq!(
            statuses(&raw),
            [status],
            "{name}: {:?}",
            String::from_utf8_lossy(&raw)
        );
    }
    assert!(sip_answers(&blade, Ipv4Addr::new(127, 0, 21, 2)));
}

/// `/status` is JSON with the SPEC §6 fields; `/metrics` is Prometheus
/// text exposition: every sample belongs to a family announced by
/// `# TYPE` before it, histograms have their `+Inf` bucket, `_sum` and
/// `_count`, and the SPEC's metrics are all there.
#[test]
fn status_is_spec_json_and_metrics_are_prometheus_text() {
    let blade = TestBlade::start_at(1, false, Options::default(), "", BLADE_IP);
    let _ua = blade.registered("1001");
    let (code, head, body) = common::http(blade.admin, "GET", "/status");
    assert_eq!(code, 200);
    assert!(head.contains("Content-Type: application/json"), "{head}");
    let doc: Value = serde_json::from_str(&body).expect("JSON");
    assert!(doc["blade"].is_string(), "{doc}");
    assert!(
        doc["sessions"].is_array() && doc["peers"].is_array(),
        "{doc}"
    );
    let agents = doc["agents"].as_array().expect("agents");
    for agent in agents {
        for key in [
            "badge",
            "extension",
            "kind",
            "state",
            "hosted_by",
            "contact",
        ] {
            assert!(agent.get(key).is_some(), "{key} in {agent}");
        }
        let state = agent["state"].as_str().expect("a state");
        assert!(
            ["logged_out", "ready", "in_call", "hosted"].contains(&state),
            "{agent}"
        );
    }

    let (code, head, text) = common::http(blade.admin, "GET", "/metrics");
    assert_eq!(code, 200);
    assert!(head.contains("Content-Type: text/plain"), "{head}");
    assert!(text.ends_with('\n'), "the last line is ended");
    let mut types: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(!types.iter().any(|(n, _)| n == name), "{name} typed twice");
            types.push((name.to_owned(), kind.to_owned()));
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (series, value) = line.rsplit_once(' ').expect("name value");
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "{line}"
        );
        let name = series.split('{').next().unwrap_or_default();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
        let (family, kind) = types.last().expect("a # TYPE before the first sample");
        let suffix = name.strip_prefix(family.as_str()).unwrap_or("?");
        let allowed: &[&str] = match kind.as_str() {
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        assert!(allowed.contains(&suffix), "{line} under # TYPE {family}");
    }
    for (family, kind) in &types {
        if kind == "histogram" {
            for part in [
                format!("{family}_bucket{{le=\"+Inf\"}} "),
                format!("{family}_sum "),
                format!("{family}_count "),
            ] {
                assert!(text.contains(&part), "{family}: {part}");
            }
        }
    }
    let kind_of = |name: &str| {
        types
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.as_str())
    };
    for (name, kind) in [
        ("sipblade_calls_total", "counter"),
        ("sipblade_hosting_rtt_seconds", "histogram"),
        ("sipblade_registrations_total", "counter"),
        ("sipblade_transactions_active", "gauge"),
        ("sipblade_sessions_active", "gauge"),
        ("sipblade_messages_malformed_total", "counter"),
    ] {
        assert_eq!(kind_of(name), Some(kind), "{name}");
    }
    for label in [
        "outcome=\"answered\",route=\"local\"",
        "outcome=\"failed\",route=\"cross_blade\"",
    ] {
        assert!(text.contains(label), "{label}");
    }
    assert_eq!(blade.metric("sipblade_registrations_total"), 1.0);
}

/// Clients that take their answer and then keep sending a byte now and
/// then (a body that never ends, a slow trickle) are cut off soon after
/// the answer: more of them than the port serves at once leave it free
/// for everyone else within a second or two, not hours.
#[test]
fn clients_that_keep_sending_after_their_answer_are_cut_off() {
    let blade = TestBlade::start_at(1, false, Options::default(), "", BLADE_IP);
    let mut trickling: Vec<TcpStream> = (0..MAX_CONNECTIONS + 8)
        .map(|_| {
            let mut s = TcpStream::connect(blade.admin).expect("connects");
            s.write_all(b"POST /status HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")
                .expect("request sent");
            s
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    // One byte per connection every 100 ms, for at most 10 s.
    let trickle = std::thread::spawn(move || {
        let start = Instant::now();
        while !stopping.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
            for s in &mut trickling {
                let _ = s.write(b"x");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // Let the answers go out and the trickle start.
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let mut served = None;
    while start.elapsed() < Duration::from_secs(4) {
        let raw = exchange(
            blade.admin,
            b"GET /status HTTP/1.1\r\n\r\n",
            Duration::from_secs(1),
        );
        if statuses(&raw) == [200] {
            served = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    let _ = trickle.join();
    assert!(
        served.is_some(),
        "/status was not served within 4 s while {} clients trickled after their answers",
        MAX_CONNECTIONS + 8
    );
}

/// Many connections at once (200 that send nothing, then 200 requests):
/// the port holds at most its cap, the silent ones get 408 or are closed
/// within the read deadline, and afterwards the blade serves `/status`
/// and SIP as before.
#[test]
fn a_crowd_of_connections_leaves_the_blade_serving() {
    let blade = TestBlade::start_at(2, false, Options::default(), "", BLADE_IP);
    let silent: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect_timeout(&blade.admin, Duration::from_secs(2)).ok())
        .collect();
    // Past the read deadline (5 s) every silent one has been closed.
    std::thread::sleep(Duration::from_millis(5500));
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("read timeout");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let got = statuses(&raw);
        assert!(got.is_empty() || got == [408], "{got:?}");
    }
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let admin = blade.admin;
            std::thread::spawn(move || {
                statuses(&exchange(
                    admin,
                    b"GET /metrics HTTP/1.1\r\n\r\n",
                    Duration::from_secs(5),
                ))
            })
        })
        .collect();
    for request in requests {
        let got = request.join().expect("the client thread");
        assert!(got.is_empty() || got == [200], "{got:?}");
    }
    assert_eq!(common::http_get(blade.admin, "/status").0, 200);
    assert!(sip_answers(&blade, Ipv4Addr::new(127, 0, 21, 3)));
}
