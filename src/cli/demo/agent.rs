//! The demo's simulated agents: a small SIP user agent on a blocking UDP
//! socket, with its own MD5 digest client, that reports every message it
//! sends to the same tracer as the blades so the ladder shows both sides.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use md5::{Digest, Md5};

use super::DemoError;
use crate::runtime::trace::{Sent, TraceEvent, Tracer};
use crate::sip::{HeaderName, Message, Method};

/// How long an agent waits for a message it expects.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// How often a blocked receive looks at its stop flag.
const POLL: Duration = Duration::from_millis(50);

/// RFC 3261 T1: the first retransmission interval of a 2xx.
const T1: Duration = Duration::from_millis(500);

/// One simulated agent (a softphone) registered on one blade.
pub(crate) struct Agent {
    /// The extension (SIP user part).
    pub ext: String,
    /// Our socket's address: Contact and Via sent-by.
    pub addr: SocketAddr,
    name: Arc<str>,
    password: String,
    domain: String,
    blade: SocketAddr,
    socket: UdpSocket,
    tracer: Tracer,
    seen: HashSet<Bytes>,
    serial: u32,
    reg_cseq: u32,
    reg_call_id: String,
}

/// The caller's side of a dialog.
pub(crate) struct Call {
    callee: String,
    call_id: String,
    from_tag: String,
    cseq: u32,
    branch: String,
    /// The To header of the dialog (with the callee's tag), once known.
    to: Option<String>,
    /// The remote target: the 2xx's Contact.
    target: Option<String>,
    /// The route set: the 2xx's Record-Route, reversed (RFC 3261 §12.1.2).
    routes: Vec<String>,
}

/// What the caller saw of an INVITE transaction.
pub(crate) struct Outcome {
    /// The final response.
    pub last: Message,
    /// Whether a 180 Ringing came first.
    pub ringing: bool,
}

impl Agent {
    /// An agent for `ext` on a fresh UDP socket at `ip`, talking to the
    /// blade at `blade`.
    pub(crate) fn bind(
        ip: std::net::IpAddr,
        ext: &str,
        password: &str,
        domain: &str,
        blade: SocketAddr,
        tracer: Tracer,
    ) -> Result<Agent, DemoError> {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
            .map_err(|e| DemoError::Setup(format!("agent {ext}: cannot bind {ip}: {e}")))?;
        let addr = socket
            .local_addr()
            .map_err(|e| DemoError::Setup(format!("agent {ext}: {e}")))?;
        Ok(Agent {
            ext: ext.to_owned(),
            addr,
            name: Arc::from(format!("agent {ext}")),
            password: password.to_owned(),
            domain: domain.to_owned(),
            blade,
            socket,
            tracer,
            seen: HashSet::new(),
            serial: 0,
            reg_cseq: 0,
            reg_call_id: format!("reg-{ext}-{}@{}", std::process::id(), addr.ip()),
        })
    }

    /// A number unique to this agent: tags, branches, cnonces.
    fn next_serial(&mut self) -> u32 {
        self.serial += 1;
        self.serial
    }

    fn branch(&mut self) -> String {
        let n = self.next_serial();
        format!("z9hG4bK-demo-{}-{n}", self.ext)
    }

    fn aor(&self, ext: &str) -> String {
        format!("sip:{ext}@{}", self.domain)
    }

    fn contact(&self) -> String {
        format!("sip:{}@{}", self.ext, self.addr)
    }

    fn via(&self, branch: &str) -> String {
        format!("Via: SIP/2.0/UDP {};branch={branch};rport\r\n", self.addr)
    }

    /// Sends `text` to `to` and reports it to the tracer.
    fn send_to(&self, text: &str, to: SocketAddr) -> Result<(), DemoError> {
        let line_end = text.find("\r\n").unwrap_or(text.len());
        let cseq = text
            .split("\r\n")
            .find_map(|l| l.strip_prefix("CSeq: "))
            .unwrap_or("")
            .to_owned();
        let _ = self.tracer.send(TraceEvent {
            at: Instant::now(),
            blade: self.name.clone(),
            sent: Sent::Sip {
                from: self.addr,
                to,
                start_line: text[..line_end].to_owned(),
                cseq,
            },
        });
        self.socket
            .send_to(text.as_bytes(), to)
            .map_err(|e| DemoError::Setup(format!("{}: send to {to}: {e}", self.name)))?;
        Ok(())
    }

    /// The next new message, waiting at most `timeout`, or until `stop`
    /// is raised; `None` then. Exact repeats (retransmissions) are
    /// dropped.
    fn recv(
        &mut self,
        timeout: Duration,
        stop: Option<&AtomicBool>,
    ) -> Result<Option<(Message, SocketAddr)>, DemoError> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_535];
        loop {
            if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket
                .set_read_timeout(Some(left.min(POLL)))
                .map_err(|e| DemoError::Setup(format!("{}: {e}", self.name)))?;
            let (n, from) = match self.socket.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(DemoError::Setup(format!("{}: receive: {e}", self.name))),
            };
            let data = Bytes::copy_from_slice(&buf[..n]);
            if !self.seen.insert(data.clone()) {
                continue;
            }
            let msg = Message::parse(data).map_err(|e| {
                DemoError::Failed(format!(
                    "{}: received an unparseable message from {from}: {e}",
                    self.name
                ))
            })?;
            return Ok(Some((msg, from)));
        }
    }

    /// The next message, which must come within [`WAIT`].
    fn expect(
        &mut self,
        what: &str,
        stop: Option<&AtomicBool>,
    ) -> Result<Option<(Message, SocketAddr)>, DemoError> {
        match self.recv(WAIT, stop)? {
            Some(got) => Ok(Some(got)),
            None if stop.is_some_and(|s| s.load(Ordering::Relaxed)) => Ok(None),
            None => Err(DemoError::Failed(format!(
                "{}: no {what} within {} s",
                self.name,
                WAIT.as_secs()
            ))),
        }
    }

    // Registration.

    fn register_text(&mut self, auth: &str) -> String {
        self.reg_cseq += 1;
        let branch = self.branch();
        let aor = self.aor(&self.ext);
        format!(
            "REGISTER sip:{domain} SIP/2.0\r\n{via}Max-Forwards: 70\r\nFrom: <{aor}>;tag=r{ext}\r\n\
             To: <{aor}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <{contact}>\r\n\
             Expires: 300\r\n{auth}Content-Length: 0\r\n\r\n",
            domain = self.domain,
            via = self.via(&branch),
            ext = self.ext,
            call_id = self.reg_call_id,
            cseq = self.reg_cseq,
            contact = self.contact(),
        )
    }

    /// The final response to our last REGISTER.
    fn register_response(&mut self) -> Result<Message, DemoError> {
        loop {
            let Some((msg, _)) = self.expect("response to REGISTER", None)? else {
                continue;
            };
            if msg.call_id() == self.reg_call_id
                && msg.cseq().seq == self.reg_cseq
                && msg.status().is_some_and(|s| s >= 200)
            {
                return Ok(msg);
            }
        }
    }

    /// Registers (logs in), answering the 401 challenge with MD5 digest.
    pub(crate) fn register(&mut self) -> Result<(), DemoError> {
        let text = self.register_text("");
        self.send_to(&text, self.blade)?;
        let mut resp = self.register_response()?;
        if resp.status() == Some(401) {
            let uri = format!("sip:{}", self.domain);
            let auth = self.authorization(&resp, false, "REGISTER", &uri)?;
            let text = self.register_text(&auth);
            self.send_to(&text, self.blade)?;
            resp = self.register_response()?;
        }
        match resp.status() {
            Some(200) => Ok(()),
            _ => Err(DemoError::Failed(format!(
                "{}: REGISTER answered {}",
                self.name,
                status_line(&resp)
            ))),
        }
    }

    /// The `Authorization` (or, with `proxy`, `Proxy-Authorization`) line
    /// answering the challenge in `challenge` with MD5 (the challenges of
    /// one response share a nonce, so MD5 may answer any of them).
    fn authorization(
        &mut self,
        challenge: &Message,
        proxy: bool,
        method: &str,
        uri: &str,
    ) -> Result<String, DemoError> {
        let (value, header) = if proxy {
            (challenge.proxy_authenticate(), "Proxy-Authorization")
        } else {
            (challenge.www_authenticate(), "Authorization")
        };
        let missing = || {
            DemoError::Failed(format!(
                "{}: no usable Digest challenge in {}",
                self.name,
                status_line(challenge)
            ))
        };
        let digest = value.and_then(|v| v.digest()).ok_or_else(missing)?;
        let (realm, nonce) = digest.realm.zip(digest.nonce).ok_or_else(missing)?;
        let qop_auth = digest
            .qop
            .is_some_and(|q| q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")));
        let cnonce = format!("demo{:08x}", self.next_serial());
        let response = digest_md5(
            &self.ext,
            realm,
            &self.password,
            method,
            uri,
            nonce,
            qop_auth.then_some(cnonce.as_str()),
        );
        let mut line = format!(
            "{header}: Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
             response=\"{response}\", algorithm=MD5",
            self.ext
        );
        if qop_auth {
            let _ = write!(line, ", qop=auth, nc=00000001, cnonce=\"{cnonce}\"");
        }
        if let Some(opaque) = digest.opaque {
            let _ = write!(line, ", opaque=\"{opaque}\"");
        }
        line.push_str("\r\n");
        Ok(line)
    }

    // Caller side.

    /// A new call to `callee`; nothing is sent yet.
    pub(crate) fn call(&mut self, callee: &str) -> Call {
        let n = self.next_serial();
        Call {
            callee: callee.to_owned(),
            call_id: format!(
                "demo-{}-{}-{n}@{}",
                self.ext,
                std::process::id(),
                self.addr.ip()
            ),
            from_tag: format!("f{}{n}", self.ext),
            cseq: 0,
            branch: String::new(),
            to: None,
            target: None,
            routes: Vec::new(),
        }
    }

    fn our_from(&self, call: &Call) -> String {
        format!("From: <{}>;tag={}\r\n", self.aor(&self.ext), call.from_tag)
    }

    /// Sends an INVITE for `call` (next CSeq, fresh branch) with an
    /// optional credentials line and a small SDP offer.
    pub(crate) fn invite(&mut self, call: &mut Call, auth: &str) -> Result<(), DemoError> {
        call.cseq += 1;
        call.branch = self.branch();
        let ip = self.addr.ip();
        let body = format!(
            "v=0\r\no={} 1 1 IN IP4 {ip}\r\ns=demo\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
            self.ext
        );
        let text = format!(
            "INVITE {ruri} SIP/2.0\r\n{via}Max-Forwards: 70\r\n{from}To: <{ruri}>\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <{contact}>\r\n{auth}\
             Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{body}",
            ruri = self.aor(&call.callee),
            via = self.via(&call.branch),
            from = self.our_from(call),
            call_id = call.call_id,
            cseq = call.cseq,
            contact = self.contact(),
            len = body.len(),
        );
        self.send_to(&text, self.blade)
    }

    /// The `Proxy-Authorization` line answering a 407 to `call`'s INVITE.
    pub(crate) fn invite_credentials(
        &mut self,
        call: &Call,
        challenge: &Message,
    ) -> Result<String, DemoError> {
        let uri = self.aor(&call.callee);
        self.authorization(challenge, true, "INVITE", &uri)
    }

    /// Waits for the final response to the last INVITE of `call`,
    /// noting a 180 on the way, and learns the dialog from a 2xx.
    pub(crate) fn invite_outcome(&mut self, call: &mut Call) -> Result<Outcome, DemoError> {
        let mut ringing = false;
        loop {
            let Some((msg, _)) = self.expect("final response to INVITE", None)? else {
                continue;
            };
            if msg.call_id() != call.call_id
                || msg.cseq().method != Method::Invite
                || msg.cseq().seq != call.cseq
            {
                continue;
            }
            match msg.status() {
                Some(180) => ringing = true,
                Some(s) if s >= 200 => {
                    if (200..300).contains(&s) {
                        call.to = text(msg.header(HeaderName::To));
                        call.target = msg.contacts().next().map(|c| c.uri().as_str().to_owned());
                        let mut routes: Vec<String> = msg
                            .record_routes()
                            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
                            .collect();
                        routes.reverse();
                        call.routes = routes;
                    }
                    return Ok(Outcome { last: msg, ringing });
                }
                _ => {}
            }
        }
    }

    /// ACKs a non-2xx final response `resp` to the last INVITE: same
    /// branch and Request-URI, To with the response's tag (RFC 3261
    /// §17.1.1.3).
    pub(crate) fn ack_failure(&mut self, call: &Call, resp: &Message) -> Result<(), DemoError> {
        let to = text(resp.header(HeaderName::To)).unwrap_or_default();
        let ruri = self.aor(&call.callee);
        let ack = format!(
            "ACK {ruri} SIP/2.0\r\n{via}Max-Forwards: 70\r\n{from}To: {to}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
            via = self.via(&call.branch),
            from = self.our_from(call),
            call_id = call.call_id,
            cseq = call.cseq,
        );
        self.send_to(&ack, self.blade)
    }

    /// An in-dialog request of `call` (after its 2xx): to the remote
    /// target along the route set, through our blade (the outbound proxy,
    /// which is the first route).
    fn in_dialog(&mut self, call: &Call, method: &str, cseq: u32) -> Result<(), DemoError> {
        let (Some(target), Some(to)) = (call.target.as_deref(), call.to.as_deref()) else {
            return Err(DemoError::Failed(format!(
                "{}: the 200 OK to INVITE lacks a Contact or a To tag",
                self.name
            )));
        };
        let route = if call.routes.is_empty() {
            String::new()
        } else {
            format!("Route: {}\r\n", call.routes.join(", "))
        };
        let branch = self.branch();
        let text = format!(
            "{method} {target} SIP/2.0\r\n{via}{route}Max-Forwards: 70\r\n{from}To: {to}\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            via = self.via(&branch),
            from = self.our_from(call),
            call_id = call.call_id,
        );
        self.send_to(&text, self.blade)
    }

    /// ACKs the 2xx of `call`.
    pub(crate) fn ack_2xx(&mut self, call: &Call) -> Result<(), DemoError> {
        self.in_dialog(call, "ACK", call.cseq)
    }

    /// Hangs up: sends a BYE in `call` and returns its final response.
    pub(crate) fn bye(&mut self, call: &mut Call) -> Result<Message, DemoError> {
        call.cseq += 1;
        self.in_dialog(call, "BYE", call.cseq)?;
        loop {
            let Some((msg, _)) = self.expect("response to BYE", None)? else {
                continue;
            };
            if msg.call_id() == call.call_id
                && msg.cseq().method == Method::Bye
                && msg.status().is_some_and(|s| s >= 200)
            {
                return Ok(msg);
            }
        }
    }

    // Callee side.

    /// Answers one call: waits for an INVITE, rings (180), answers (200,
    /// retransmitted until the ACK), then waits for the BYE and answers it
    /// 200. Returns early, with `Ok`, once `stop` is raised.
    pub(crate) fn answer_one_call(&mut self, stop: &AtomicBool) -> Result<(), DemoError> {
        // The caller's digest round trip and the hosting exchange come
        // first: wait longer than for one message.
        let deadline = Instant::now() + 2 * WAIT;
        let (invite, from) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left, Some(stop))? {
                None if stop.load(Ordering::Relaxed) => return Ok(()),
                None => {
                    return Err(DemoError::Failed(format!(
                        "{}: no INVITE arrived within {} s",
                        self.name,
                        (2 * WAIT).as_secs()
                    )));
                }
                Some((msg, from)) if msg.method() == Some(Method::Invite) => break (msg, from),
                Some(_) => {}
            }
        };
        let n = self.next_serial();
        let tag = format!("t{}{n}", self.ext);
        let ringing = self.response(&invite, 180, "Ringing", &tag);
        self.send_to(&ringing, from)?;
        let ok = self.response(&invite, 200, "OK", &tag);
        self.send_to(&ok, from)?;

        // Retransmit the 2xx until the ACK (RFC 3261 §13.3.1.4).
        let mut interval = T1;
        let give_up = Instant::now() + WAIT;
        loop {
            match self.recv(interval, Some(stop))? {
                Some((msg, _)) if msg.method() == Some(Method::Ack) => break,
                Some(_) => {}
                None if stop.load(Ordering::Relaxed) => return Ok(()),
                None if Instant::now() >= give_up => {
                    return Err(DemoError::Failed(format!(
                        "{}: no ACK for the 200 OK within {} s",
                        self.name,
                        WAIT.as_secs()
                    )));
                }
                None => {
                    self.send_to(&ok, from)?;
                    interval = (interval * 2).min(Duration::from_secs(4));
                }
            }
        }

        let give_up = Instant::now() + 2 * WAIT;
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            match self.recv(left, Some(stop))? {
                Some((msg, from)) if msg.method() == Some(Method::Bye) => {
                    let ok = self.response(&msg, 200, "OK", &tag);
                    return self.send_to(&ok, from);
                }
                Some(_) => {}
                None if stop.load(Ordering::Relaxed) => return Ok(()),
                None => {
                    return Err(DemoError::Failed(format!(
                        "{}: no BYE arrived within {} s",
                        self.name,
                        (2 * WAIT).as_secs()
                    )));
                }
            }
        }
    }

    /// A response to `req` as a UAS: Via, From, To (with `to_tag` when it
    /// has none), Call-ID and CSeq copied; for an INVITE's 101-299 also
    /// the Record-Route and our Contact.
    fn response(&self, req: &Message, status: u16, reason: &str, to_tag: &str) -> String {
        let mut out = format!("SIP/2.0 {status} {reason}\r\n");
        let dialog = req.method() == Some(Method::Invite) && (101..300).contains(&status);
        for h in req.headers() {
            let value = String::from_utf8_lossy(h.value);
            let name = match h.kind {
                HeaderName::Via => "Via",
                HeaderName::From => "From",
                HeaderName::CallId => "Call-ID",
                HeaderName::CSeq => "CSeq",
                HeaderName::RecordRoute if dialog => "Record-Route",
                HeaderName::To => {
                    let tag = if req.to().tag().is_none() {
                        format!(";tag={to_tag}")
                    } else {
                        String::new()
                    };
                    let _ = write!(out, "To: {value}{tag}\r\n");
                    continue;
                }
                _ => continue,
            };
            let _ = write!(out, "{name}: {value}\r\n");
        }
        if dialog {
            let _ = write!(out, "Contact: <{}>\r\n", self.contact());
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        out
    }
}

/// A header value as text.
fn text(value: Option<&[u8]>) -> Option<String> {
    value.map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `status reason` of a response, for error messages.
pub(crate) fn status_line(msg: &Message) -> String {
    let reason = msg
        .reason()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .unwrap_or_default();
    match msg.status() {
        Some(s) => format!("{s} {reason}"),
        None => msg.method_str().unwrap_or("?").to_owned(),
    }
}

/// Lowercase hex MD5 of the parts joined with `:`.
fn md5_hex(parts: &[&str]) -> String {
    let mut h = Md5::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(part.as_bytes());
    }
    h.finalize()
        .iter()
        .fold(String::with_capacity(32), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The RFC 2617 MD5 `response`: with a cnonce, the `qop=auth` form
/// (nc 00000001), else the RFC 2069 form.
fn digest_md5(
    user: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    cnonce: Option<&str>,
) -> String {
    let ha1 = md5_hex(&[user, realm, password]);
    let ha2 = md5_hex(&[method, uri]);
    match cnonce {
        Some(cnonce) => md5_hex(&[&ha1, nonce, "00000001", cnonce, "auth", &ha2]),
        None => md5_hex(&[&ha1, nonce, &ha2]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registrar::digest::{Credentials, Secret, expected_response};

    #[test]
    fn md5_digest_matches_the_registrar() {
        for cnonce in [Some("0a4f113b"), None] {
            let creds = Credentials {
                username: "1001",
                realm: "cc.example",
                nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
                uri: "sip:cc.example",
                response: "",
                algorithm: Some("MD5"),
                cnonce,
                qop: cnonce.map(|_| "auth"),
                nc: cnonce.map(|_| "00000001"),
                opaque: None,
            };
            let want =
                expected_response("REGISTER", &creds, Secret::Password("demo-1001")).unwrap();
            let got = digest_md5(
                "1001",
                "cc.example",
                "demo-1001",
                "REGISTER",
                "sip:cc.example",
                creds.nonce,
                cnonce,
            );
            assert_eq!(got, want);
        }
    }

    #[test]
    fn rfc_2617_example() {
        // RFC 2617 §3.5 (GET with qop=auth, nc 00000001).
        let ha1 = md5_hex(&["Mufasa", "testrealm@host.com", "Circle Of Life"]);
        let ha2 = md5_hex(&["GET", "/dir/index.html"]);
        let resp = md5_hex(&[
            &ha1,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "00000001",
            "0a4f113b",
            "auth",
            &ha2,
        ]);
        assert_eq!(resp, "6629fae49393a05397450978507c4ef1");
    }
}
