//! Shared by the integration tests that drive a real blade: a harness that
//! starts one in-process on loopback ([`TestBlade`]), a small SIP user
//! agent over a real UDP socket ([`Ua`]), and the admin port read over
//! plain HTTP/1.0 ([`status`], [`metric`]).
//!
//! Every wait has a deadline, so a missing message fails the test instead
//! of hanging it.

// Each test binary uses part of this module.
#![allow(dead_code)]

pub mod calls;
pub mod cluster;
pub mod tcp;

use std::collections::{HashSet, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use sipblade::config::Config;
use sipblade::registrar::digest::{Credentials, Secret, expected_response};
use sipblade::runtime::{Blade, Options};
use sipblade::sip::{HeaderName, Message, Method};

/// The SIP domain of every test blade.
pub const DOMAIN: &str = "cc.example";

/// How long a test waits for a message it expects, or for `/status` to
/// show a state: generous for a loaded 2-core machine, and only spent when
/// something is wrong.
pub const WAIT: Duration = Duration::from_secs(5);

/// The provisioned agents of every test blade.
pub const AGENTS: [&str; 4] = ["1001", "1002", "1003", "1004"];

/// The password provisioned for `ext`.
pub fn password(ext: &str) -> String {
    format!("pw-{ext}")
}

/// A number unique in this process: branches, tags, Call-IDs.
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A fresh RFC 3261 branch.
pub fn branch() -> String {
    format!("z9hG4bK-t{}", unique())
}

/// The address-of-record of `ext`.
pub fn aor(ext: &str) -> String {
    format!("sip:{ext}@{DOMAIN}")
}

/// The `agents.toml` every test blade is provisioned with.
pub fn agents_toml() -> String {
    agents_toml_with(&[])
}

/// [`agents_toml`] with `extra` extensions besides [`AGENTS`].
pub fn agents_toml_with(extra: &[String]) -> String {
    AGENTS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .map(|ext| {
            format!(
                "[[agent]]\nbadge = \"A{ext}\"\nextension = \"{ext}\"\nkind = \"agent\"\npassword = \"{}\"\n\n",
                password(ext)
            )
        })
        .collect()
}

/// A blade config with agents file `agents.toml` next to it.
pub fn config_toml(cores: usize, auth: bool, sip: &str, admin: &str) -> String {
    format!(
        "[blade]\nid = \"blade-test\"\ndomain = \"{DOMAIN}\"\nsip = \"{sip}\"\ncores = {cores}\n\
         admin = \"{admin}\"\n\n[agents]\nfile = \"agents.toml\"\nauth = {auth}\n"
    )
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after
/// `WAIT`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A real blade running in this process on 127.0.0.1 with ports chosen by
/// the OS; stopped when dropped.
pub struct TestBlade {
    blade: Option<Blade>,
    /// The SIP address (UDP).
    pub sip: SocketAddr,
    /// The admin address (HTTP).
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TestBlade {
    /// A blade with `cores` executors and digest authentication on or off.
    pub fn start(cores: usize, auth: bool) -> TestBlade {
        TestBlade::start_with(cores, auth, Options::default())
    }

    /// [`TestBlade::start`] with runtime options.
    pub fn start_with(cores: usize, auth: bool, options: Options) -> TestBlade {
        TestBlade::start_configured(cores, auth, options, "")
    }

    /// [`TestBlade::start_with`] with more `[blade]` settings (TOML lines).
    pub fn start_configured(cores: usize, auth: bool, options: Options, blade: &str) -> TestBlade {
        TestBlade::start_at(cores, auth, options, blade, Ipv4Addr::LOCALHOST)
    }

    /// [`TestBlade::start_configured`] with the SIP and admin ports on
    /// `ip` (for tests that keep to an address range of their own).
    pub fn start_at(
        cores: usize,
        auth: bool,
        options: Options,
        blade: &str,
        ip: impl Into<IpAddr>,
    ) -> TestBlade {
        let any_port = SocketAddr::new(ip.into(), 0).to_string();
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("agents.toml"), agents_toml()).expect("agents file");
        let path = dir.path().join("blade.toml");
        let text = config_toml(cores, auth, &any_port, &any_port)
            .replace("\n[agents]", &format!("{blade}\n[agents]"));
        std::fs::write(&path, &text).expect("config file");
        let config = Config::from_toml(&text, &path).expect("valid config");
        let blade = Blade::start_with(config, options).expect("the blade starts");
        let sip = blade.sip_addr();
        let admin = blade.admin_addr().expect("an admin port");
        assert_ne!(sip.port(), 0, "the real SIP port is reported");
        TestBlade {
            blade: Some(blade),
            sip,
            admin,
            _dir: dir,
        }
    }

    /// A user agent for `ext`, on its own loopback address.
    pub fn ua(&self, ext: &str) -> Ua {
        Ua::new(self.sip, ext)
    }

    /// A user agent for `ext`, registered (with digest when challenged).
    pub fn registered(&self, ext: &str) -> Ua {
        let mut ua = self.ua(ext);
        let ok = ua.register(3600);
        assert_eq!(ok.status(), Some(200), "{ext} registers");
        ua
    }

    /// `GET /status`.
    pub fn status(&self) -> Value {
        status(self.admin)
    }

    /// The `/status` entry of `ext`.
    pub fn agent(&self, ext: &str) -> Value {
        agent(self.admin, ext)
    }

    /// The `/status` state of `ext`.
    pub fn agent_state(&self, ext: &str) -> String {
        agent_state(self.admin, ext)
    }

    /// Waits until `/status` shows `ext` in `state`.
    pub fn wait_state(&self, ext: &str, state: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let last = self.agent_state(ext);
            if last == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{ext} should become {state}, is {last}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `/status` lists no session.
    pub fn wait_no_sessions(&self) {
        wait_until("no sessions in /status", || {
            self.status()["sessions"]
                .as_array()
                .is_some_and(|s| s.is_empty())
        });
    }

    /// The value of an unlabelled metric in `/metrics`.
    pub fn metric(&self, name: &str) -> f64 {
        metric(self.admin, name)
    }

    /// Stops the blade; returns how long `stop` took.
    pub fn stop(mut self) -> Duration {
        let started = Instant::now();
        if let Some(blade) = self.blade.take() {
            blade.stop();
        }
        started.elapsed()
    }
}

impl Drop for TestBlade {
    fn drop(&mut self) {
        if let Some(blade) = self.blade.take() {
            blade.stop();
        }
    }
}

/// `GET path` over HTTP/1.0; the status code and the body.
pub fn http_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let (code, _, body) = http(admin, "GET", path);
    (code, body)
}

/// `method path` on the admin port: the status code, the head and the body.
pub fn http(admin: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&admin, WAIT).expect("admin port connects");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream.set_write_timeout(Some(WAIT)).expect("write timeout");
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: {admin}\r\n\r\n").expect("request sent");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("response read");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head and body");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    (code, head.to_owned(), body.to_owned())
}

/// `GET /status` as JSON.
pub fn status(admin: SocketAddr) -> Value {
    let (code, body) = http_get(admin, "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// The `/status` entry of agent `ext`.
pub fn agent(admin: SocketAddr, ext: &str) -> Value {
    let doc = status(admin);
    doc["agents"]
        .as_array()
        .expect("an agents array")
        .iter()
        .find(|a| a["extension"] == ext)
        .cloned()
        .unwrap_or_else(|| panic!("{ext} missing from /status: {doc}"))
}

/// The `/status` state of agent `ext`.
pub fn agent_state(admin: SocketAddr, ext: &str) -> String {
    let a = agent(admin, ext);
    a["state"]
        .as_str()
        .unwrap_or_else(|| panic!("no state: {a}"))
        .to_owned()
}

/// The value of the unlabelled metric `name` in `GET /metrics`.
pub fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (code, body) = http_get(admin, "/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"))
}

/// The start line of a message, for assertion messages.
pub fn first_line(msg: &Message) -> String {
    let raw = msg.as_bytes();
    let end = raw.iter().position(|&b| b == b'\r').unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// A header's value as text.
pub fn header(msg: &Message, name: HeaderName) -> Option<String> {
    msg.header(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Checks that `bye`, received by `ua`, is an in-dialog BYE of the dialog
/// whose local tag (`ua`'s) is `local_tag` and remote tag `remote_tag`,
/// whose CSeq is above `last_cseq` (the last `ua` got from the other side),
/// and addressed to `ua`'s Contact: a BYE the phone would take for its
/// dialog's (RFC 3261 §12.2.2).
pub fn assert_dialog_bye(
    ua: &Ua,
    bye: &Message,
    call_id: &str,
    tags: (&str, &str),
    last_cseq: u32,
) {
    let (local_tag, remote_tag) = tags;
    assert_eq!(bye.method(), Some(Method::Bye));
    assert_eq!(bye.call_id(), call_id);
    assert_eq!(bye.request_uri().unwrap().as_str(), ua.contact_uri());
    assert_eq!(bye.to().tag(), Some(local_tag), "To carries our tag");
    assert_eq!(bye.from().tag(), Some(remote_tag), "From the other party's");
    assert_eq!(bye.cseq().method, Method::Bye);
    assert!(bye.cseq().seq > last_cseq, "CSeq {}", bye.cseq().seq);
    assert!(bye.cseq().seq < 1 << 31);
    assert_eq!(bye.routes().count(), 0, "every blade popped its Route");
    assert!(
        bye.vias()
            .all(|v| v.branch().is_some_and(|b| b.starts_with("z9hG4bK")))
    );
}

/// A call placed by a [`Ua`]: the caller's side of the dialog.
#[derive(Debug, Clone)]
pub struct Call {
    /// The Call-ID.
    pub call_id: String,
    /// Our From tag.
    pub from_tag: String,
    /// The called extension.
    pub callee: String,
    /// The CSeq of the last INVITE.
    pub cseq: u32,
    /// The branch of the last INVITE.
    pub branch: String,
    /// The last INVITE as sent (for retransmissions and CANCEL).
    pub invite: String,
    /// The To header of the dialog (with the callee's tag), once known.
    pub to: Option<String>,
    /// The remote target: the Contact of the 2xx.
    pub target: Option<String>,
    /// The route set: the 2xx's Record-Route, reversed (RFC 3261 §12.1.2).
    pub routes: Vec<String>,
}

impl Call {
    /// Learns the dialog from a response to the INVITE.
    pub fn learn(&mut self, resp: &Message) {
        if resp.to().tag().is_some() {
            self.to = header(resp, HeaderName::To);
        }
        if resp.status().is_some_and(|s| (200..300).contains(&s)) {
            self.target = resp.contacts().next().map(|c| c.uri().as_str().to_owned());
            let mut routes: Vec<String> = resp
                .record_routes()
                .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
                .collect();
            routes.reverse();
            self.routes = routes;
        }
    }
}

/// A SIP user agent for one agent extension, on a UDP socket of its own
/// (127.0.0.1x:port, so every simulated phone has a distinct address).
///
/// Received messages that a wait did not ask for are kept in a backlog for
/// a later wait; a datagram identical to one already received (a
/// retransmission) is dropped by the waits, but not by [`Ua::recv_raw`].
pub struct Ua {
    /// The extension.
    pub ext: String,
    /// The socket's address: the Contact and Via sent-by.
    pub addr: SocketAddr,
    /// The blade's SIP address.
    pub blade: SocketAddr,
    socket: UdpSocket,
    backlog: VecDeque<Message>,
    seen: HashSet<Bytes>,
    reg_call_id: String,
    reg_tag: String,
    reg_cseq: u32,
}

impl Ua {
    /// A user agent for `ext` talking to `blade`. A numeric extension
    /// picks the host 127.0.0.(10 + ext % 100), anything else 127.0.0.99.
    pub fn new(blade: SocketAddr, ext: &str) -> Ua {
        let host = ext.parse::<u32>().map_or(99, |n| 10 + (n % 100) as u8);
        Ua::new_at(blade, ext, Ipv4Addr::new(127, 0, 0, host))
    }

    /// A user agent for `ext` talking to `blade`, on a socket of its own
    /// on `ip` (for tests that keep to an address range of their own).
    pub fn new_at(blade: SocketAddr, ext: &str, ip: impl Into<IpAddr>) -> Ua {
        let ip = ip.into();
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind a loopback UDP socket");
        let addr = socket.local_addr().expect("local address");
        let n = unique();
        Ua {
            ext: ext.to_owned(),
            addr,
            blade,
            socket,
            backlog: VecDeque::new(),
            seen: HashSet::new(),
            reg_call_id: format!("reg-{ext}-{n}@test"),
            reg_tag: format!("r{n}"),
            reg_cseq: 0,
        }
    }

    /// The Contact URI: `sip:EXT@IP:PORT`.
    pub fn contact_uri(&self) -> String {
        format!("sip:{}@{}", self.ext, self.addr)
    }

    /// A Via header line with `branch`.
    pub fn via(&self, branch: &str) -> String {
        format!("Via: SIP/2.0/UDP {};branch={branch}\r\n", self.addr)
    }

    /// Sends `data` to the blade.
    pub fn send(&self, data: impl AsRef<[u8]>) {
        let data = data.as_ref();
        let sent = self.socket.send_to(data, self.blade).expect("send");
        assert_eq!(sent, data.len());
    }

    /// The next datagram, as received (no backlog, no deduplication).
    pub fn recv_raw(&mut self, timeout: Duration) -> Option<Bytes> {
        if timeout.is_zero() {
            return None;
        }
        self.socket
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
        let mut buf = vec![0u8; 65_535];
        match self.socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert_eq!(from, self.blade, "only the blade sends to an agent");
                Some(Bytes::copy_from_slice(&buf[..n]))
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("recv: {e}"),
        }
    }

    /// The next new message (from the backlog first) for which `pred`
    /// holds, waiting at most `timeout`; others go to the backlog.
    pub fn next_where(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Message) -> bool,
    ) -> Option<Message> {
        if let Some(i) = self.backlog.iter().position(&mut pred) {
            return self.backlog.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let data = self.recv_raw(left)?;
            if !self.seen.insert(data.clone()) {
                continue;
            }
            let msg = Message::parse(data.clone()).unwrap_or_else(|e| {
                panic!(
                    "{}: the blade sent an unparseable message ({e:?}):\n{}",
                    self.ext,
                    String::from_utf8_lossy(&data)
                )
            });
            if pred(&msg) {
                return Some(msg);
            }
            self.backlog.push_back(msg);
        }
    }

    /// Like [`Ua::next_where`], but panics naming `what` on timeout.
    pub fn expect_where(&mut self, what: &str, pred: impl FnMut(&Message) -> bool) -> Message {
        match self.next_where(WAIT, pred) {
            Some(msg) => msg,
            None => {
                let backlog: Vec<String> = self.backlog.iter().map(first_line).collect();
                panic!(
                    "{}: no {what} within {WAIT:?}; received instead: {backlog:?}",
                    self.ext
                )
            }
        }
    }

    /// The next response to `method` in `call_id` other than 100 Trying
    /// (which is consumed).
    pub fn response(&mut self, call_id: &str, method: Method) -> Message {
        loop {
            let msg = self.expect_where(&format!("response to {method:?} in {call_id}"), |m| {
                !m.is_request() && m.call_id() == call_id && m.cseq().method == method
            });
            if msg.status() != Some(100) {
                return msg;
            }
        }
    }

    /// The next request `method` in `call_id`.
    pub fn request(&mut self, method: Method, call_id: &str) -> Message {
        self.expect_where(&format!("{method:?} in {call_id}"), |m| {
            m.method() == Some(method) && m.call_id() == call_id
        })
    }

    /// Every new message for which `pred` holds that is in the backlog or
    /// arrives within `window`: for checks that nothing arrives.
    pub fn collect_where(
        &mut self,
        window: Duration,
        mut pred: impl FnMut(&Message) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut found = Vec::new();
        while let Some(msg) = self.next_where(
            deadline.saturating_duration_since(Instant::now()),
            &mut pred,
        ) {
            found.push(first_line(&msg));
        }
        found
    }

    // REGISTER.

    /// A REGISTER in this agent's registration Call-ID (next CSeq, fresh
    /// branch) carrying `headers` (each line ending in CRLF).
    pub fn register_text(&mut self, headers: &str) -> String {
        self.reg_cseq += 1;
        format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: <{}>;tag={}\r\nTo: <{}>\r\n\
             Call-ID: {}\r\nCSeq: {} REGISTER\r\n{headers}Content-Length: 0\r\n\r\n",
            self.via(&branch()),
            aor(&self.ext),
            self.reg_tag,
            aor(&self.ext),
            self.reg_call_id,
            self.reg_cseq,
        )
    }

    /// `Contact` (our address) and `Expires` header lines.
    pub fn binding_headers(&self, expires: u32) -> String {
        format!(
            "Contact: <{}>\r\nExpires: {expires}\r\n",
            self.contact_uri()
        )
    }

    /// Sends a REGISTER with `headers`; returns the final response.
    pub fn register_once(&mut self, headers: &str) -> Message {
        let text = self.register_text(headers);
        self.send(text);
        let call_id = self.reg_call_id.clone();
        self.response(&call_id, Method::Register)
    }

    /// Sends a REGISTER with `headers`, answers a 401 once with
    /// `password`; returns the final response and the Authorization line
    /// sent, if any.
    pub fn register_as(&mut self, headers: &str, password: &str) -> (Message, Option<String>) {
        let first = self.register_once(headers);
        if first.status() != Some(401) {
            return (first, None);
        }
        let auth = self.authorization(
            &first,
            false,
            "REGISTER",
            &format!("sip:{DOMAIN}"),
            password,
        );
        let resp = self.register_once(&format!("{headers}{auth}"));
        (resp, Some(auth))
    }

    /// Registers our address for `expires` seconds with our own password;
    /// returns the final response.
    pub fn register(&mut self, expires: u32) -> Message {
        let headers = self.binding_headers(expires);
        self.register_as(&headers, &password(&self.ext)).0
    }

    /// The `Authorization` (or, with `proxy`, `Proxy-Authorization`) line
    /// answering the first challenge of `challenge` for `method` and `uri`.
    pub fn authorization(
        &self,
        challenge: &Message,
        proxy: bool,
        method: &str,
        uri: &str,
        password: &str,
    ) -> String {
        self.authorization_with(challenge, proxy, method, uri, password, None)
    }

    /// [`Ua::authorization`] with the algorithm forced (the challenges
    /// share one nonce, so any offered algorithm can answer it).
    pub fn authorization_with(
        &self,
        challenge: &Message,
        proxy: bool,
        method: &str,
        uri: &str,
        password: &str,
        algorithm: Option<&str>,
    ) -> String {
        let (value, name) = if proxy {
            (challenge.proxy_authenticate(), "Proxy-Authorization")
        } else {
            (challenge.www_authenticate(), "Authorization")
        };
        let d = value
            .and_then(|v| v.digest())
            .unwrap_or_else(|| panic!("no Digest challenge in {}", first_line(challenge)));
        let realm = d.realm.expect("a realm");
        let nonce = d.nonce.expect("a nonce");
        let algorithm = algorithm.or(d.algorithm).unwrap_or("MD5");
        let cnonce = format!("c{}", unique());
        let creds = Credentials {
            username: &self.ext,
            realm,
            nonce,
            uri,
            response: "",
            algorithm: Some(algorithm),
            cnonce: Some(&cnonce),
            qop: Some("auth"),
            nc: Some("00000001"),
            opaque: None,
        };
        let response = expected_response(method, &creds, Secret::Password(password))
            .expect("a digest response");
        format!(
            "{name}: Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm={algorithm}, cnonce=\"{cnonce}\", qop=auth, nc=00000001\r\n",
            self.ext
        )
    }

    // Calls, caller side.

    /// A new call to `callee`; nothing is sent yet.
    pub fn call(&self, callee: &str) -> Call {
        let n = unique();
        Call {
            call_id: format!("call-{}-{n}@test", self.ext),
            from_tag: format!("f{n}"),
            callee: callee.to_owned(),
            cseq: 0,
            branch: String::new(),
            invite: String::new(),
            to: None,
            target: None,
            routes: Vec::new(),
        }
    }

    /// Our From header value in `call`: the AoR and our tag.
    fn our_from(&self, call: &Call) -> String {
        format!("<{}>;tag={}", aor(&self.ext), call.from_tag)
    }

    /// Sends an INVITE for `call` (next CSeq, fresh branch) with `extra`
    /// header lines and a small SDP body.
    pub fn invite(&self, call: &mut Call, extra: &str) {
        self.invite_text(call, extra);
        self.send(&call.invite);
    }

    /// The INVITE [`Ua::invite`] would send, kept in `call.invite` but not
    /// sent (for tests that edit it first).
    pub fn invite_text(&self, call: &mut Call, extra: &str) -> String {
        call.cseq += 1;
        call.branch = branch();
        let body = format!(
            "v=0\r\no={} 1 1 IN {kind} {ip}\r\ns=-\r\nc=IN {kind} {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
            self.ext,
            kind = if self.addr.is_ipv6() { "IP6" } else { "IP4" },
            ip = self.addr.ip(),
        );
        call.invite = format!(
            "INVITE {} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: {}\r\nTo: <{}>\r\nCall-ID: {}\r\n\
             CSeq: {} INVITE\r\nContact: <{}>\r\n{extra}Content-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{body}",
            aor(&call.callee),
            self.via(&call.branch),
            self.our_from(call),
            aor(&call.callee),
            call.call_id,
            call.cseq,
            self.contact_uri(),
            body.len(),
        );
        call.invite.clone()
    }

    /// Sends the INVITE of `call` again, byte for byte.
    pub fn retransmit_invite(&self, call: &Call) {
        self.send(&call.invite);
    }

    /// Sends the ACK of a non-2xx final response `resp` to the last
    /// INVITE: same branch, same Request-URI, To with the response's tag
    /// (RFC 3261 §17.1.1.3).
    pub fn ack_failure(&self, call: &Call, resp: &Message) {
        let to = header(resp, HeaderName::To).expect("a To header");
        let ack = format!(
            "ACK {} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\n\
             CSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
            aor(&call.callee),
            self.via(&call.branch),
            self.our_from(call),
            call.call_id,
            call.cseq,
        );
        self.send(ack);
    }

    /// Sends a CANCEL of the last INVITE of `call` (RFC 3261 §9.1).
    pub fn cancel(&self, call: &Call) {
        let cancel = format!(
            "CANCEL {} SIP/2.0\r\n{}Max-Forwards: 70\r\nFrom: {}\r\nTo: <{}>\r\nCall-ID: {}\r\n\
             CSeq: {} CANCEL\r\nContent-Length: 0\r\n\r\n",
            aor(&call.callee),
            self.via(&call.branch),
            self.our_from(call),
            aor(&call.callee),
            call.call_id,
            call.cseq,
        );
        self.send(cancel);
    }

    /// An in-dialog request of `call` (after a 2xx): to the remote target,
    /// along the route set, with `cseq` and a fresh branch.
    pub fn in_dialog_text(&self, call: &Call, method: &str, cseq: u32) -> String {
        let target = call.target.as_deref().expect("a remote target (2xx seen)");
        let to = call.to.as_deref().expect("a To tag (2xx seen)");
        let route = if call.routes.is_empty() {
            String::new()
        } else {
            format!("Route: {}\r\n", call.routes.join(", "))
        };
        format!(
            "{method} {target} SIP/2.0\r\n{}{route}Max-Forwards: 70\r\nFrom: {}\r\nTo: {to}\r\n\
             Call-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            self.via(&branch()),
            self.our_from(call),
            call.call_id,
        )
    }

    /// Sends the ACK of the 2xx of `call`.
    pub fn ack_2xx(&self, call: &Call) {
        self.send(self.in_dialog_text(call, "ACK", call.cseq));
    }

    /// Sends a BYE in `call`.
    pub fn bye(&self, call: &mut Call) {
        call.cseq += 1;
        self.send(self.in_dialog_text(call, "BYE", call.cseq));
    }

    // Callee side.

    /// Answers `req` with `status`, as a UAS: the Via lines, From, To (with
    /// `to_tag` added when it has none), Call-ID and CSeq copied; for an
    /// INVITE's 101-299 also the Record-Route lines and our Contact.
    /// Returns the response as sent, for retransmissions.
    /// Answers the INVITE `invite` 200 as some UAs do (sipp's built-in
    /// `uas`, for one): no Record-Route copied, and a Contact without a
    /// user part (`sip:IP:PORT`), so the caller keeps no route set.
    pub fn answer_without_route_set(&self, invite: &Message, to_tag: &str) {
        let mut text = String::from("SIP/2.0 200 OK\r\n");
        for h in invite.headers() {
            if matches!(
                h.kind,
                HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq
            ) {
                text.push_str(&format!(
                    "{}: {}\r\n",
                    h.name,
                    String::from_utf8_lossy(h.value)
                ));
            }
        }
        let to = header(invite, HeaderName::To).expect("the INVITE has a To");
        text.push_str(&format!("To: {to};tag={to_tag}\r\n"));
        text.push_str(&format!(
            "Contact: <sip:{}>\r\nContent-Length: 0\r\n\r\n",
            self.addr
        ));
        self.send(text);
    }

    pub fn answer(&self, req: &Message, status: u16, reason: &str, to_tag: &str) -> String {
        self.answer_with(req, status, reason, to_tag, "")
    }

    /// [`Ua::answer`] with `extra` header lines (each ending in CRLF)
    /// before the Content-Length.
    pub fn answer_with(
        &self,
        req: &Message,
        status: u16,
        reason: &str,
        to_tag: &str,
        extra: &str,
    ) -> String {
        let text = response_text(req, status, reason, to_tag, &self.contact_uri(), extra);
        self.send(&text);
        text
    }
}

/// The response a UAS writes to `req` ([`Message::response`]: its Vias,
/// From, To, Call-ID and CSeq, `to_tag` added to a To without one, not on
/// a 100); on an INVITE's 101-299 its Record-Route and `contact` as the
/// Contact; then `extra` header lines (each ending in CRLF).
pub fn response_text(
    req: &Message,
    status: u16,
    reason: &str,
    to_tag: &str,
    contact: &str,
    extra: &str,
) -> String {
    let dialog = req.method() == Some(Method::Invite) && (101..300).contains(&status);
    let routes: Vec<String> = req
        .record_routes()
        .filter(|_| dialog)
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .collect();
    let contact = format!("<{contact}>");
    let mut headers: Vec<(&str, &str)> = routes
        .iter()
        .map(|r| ("Record-Route", r.as_str()))
        .collect();
    if dialog {
        headers.push(("Contact", &contact));
    }
    let mut out = bytes::BytesMut::new();
    req.response(
        status,
        reason,
        (status > 100).then_some(to_tag),
        &headers,
        &mut out,
    );
    let text = String::from_utf8_lossy(&out).into_owned();
    match text.strip_suffix("Content-Length: 0\r\n\r\n") {
        Some(head) => format!("{head}{extra}Content-Length: 0\r\n\r\n"),
        None => text,
    }
}
