//! The admin port's HTTP/1.1 server: one request per connection, each
//! connection on a thread of its own with deadlines for reading the
//! request and writing the answer, and a cap on connections at once. A
//! client that stalls, or never reads what it asked for, holds only its
//! own connection, and only for [`IO_TIMEOUT`]; everyone else is served.
//!
//! Two read-only resources do not need keep-alive, chunking or bodies:
//! every answer has a Content-Length and closes the connection.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a client may take to send its request, and to take its answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; past that a new one is closed unanswered.
pub const MAX_CONNECTIONS: usize = 32;

/// How long, after the answer, what a client still sends is read and
/// dropped before the connection closes (see [`linger`]).
const LINGER: Duration = Duration::from_millis(500);

/// The largest request head read: a request line and a few headers.
const MAX_HEAD: usize = 8 * 1024;

/// Header lines parsed at most.
const MAX_HEADERS: usize = 32;

/// A request, as much of it as the admin port reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The Content-Type.
    pub content_type: &'static str,
    /// The body (left out for HEAD; its length is sent either way).
    pub body: String,
    /// Extra header lines, `("Allow", "GET, HEAD")`.
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Response {
    /// A `text/plain` answer.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// The answer with header `name: value` added.
    pub fn with(mut self, name: &'static str, value: &'static str) -> Response {
        self.headers.push((name, value));
        self
    }

    /// The head and, unless `head_only`, the body, as sent.
    fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The running server.
pub struct Server {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

impl Server {
    /// Serves `listener` with `handler`, from a thread that accepts and
    /// a thread per connection.
    pub fn start(
        listener: TcpListener,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let accepting = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("sipblade-admin".into())
            .spawn(move || accept_loop(&listener, &handler, &accepting))?;
        Ok(Server {
            addr,
            stopping,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and joins the accepting thread; connections being
    /// served finish within their deadlines.
    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocked accept with a connection of our own.
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let woken =
            TcpStream::connect_timeout(&SocketAddr::new(ip, self.addr.port()), IO_TIMEOUT).is_ok();
        if let Some(thread) = self.thread.take() {
            if woken {
                let _ = thread.join();
            }
            // Otherwise the thread is left blocked in accept, to end with
            // the process, rather than hang the stop.
        }
    }
}

fn accept_loop(listener: &TcpListener, handler: &Arc<Handler>, stopping: &AtomicBool) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else {
            // Out of descriptors, most likely: let some go before retrying.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (handler, served) = (handler.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("sipblade-admin-conn".into())
            .spawn(move || {
                serve_connection(stream, &*handler);
                served.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Reads one request head within [`IO_TIMEOUT`] of the connection, answers
/// it, and closes.
fn serve_connection(mut stream: TcpStream, handler: &Handler) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut head = vec![0u8; MAX_HEAD];
    let mut len = 0;
    let (response, head_only) = loop {
        // The deadline covers the whole head: a client dribbling a byte
        // at a time gets no more time than one that sends nothing.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break (Response::text(408, "request not received in time\n"), false);
        }
        let n = match stream.read(&mut head[len..]) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break (Response::text(408, "request not received in time\n"), false);
            }
            Err(_) => return,
        };
        len += n;
        match parse_head(&head[..len]) {
            Ok(Some(request)) => {
                let head_only = request.method == "HEAD";
                break (handler(&request), head_only);
            }
            Ok(None) if len == head.len() => {
                break (Response::text(431, "request head too large\n"), false);
            }
            Ok(None) => {}
            Err(response) => break (response, false),
        }
    };
    if stream.write_all(&response.encode(head_only)).is_err() {
        return;
    }
    let _ = stream.flush();
    linger(stream);
}

/// Closes after the answer without losing it: closing a socket with
/// unread bytes (a body, more pipelined requests) sends a reset that can
/// overtake the answer, so what the client still sends is read and
/// dropped, until it closes its side, for [`LINGER`] at most all told: a
/// client that keeps trickling bytes is cut off then, not when it stops.
fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() || stream.set_read_timeout(Some(wait)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The request in `head`, `None` while incomplete, or the answer to a
/// malformed one.
fn parse_head(head: &[u8]) -> Result<Option<Request>, Response> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            let (Some(method), Some(target)) = (request.method, request.path) else {
                return Err(Response::text(400, "malformed request\n"));
            };
            let path = origin_path(target).split('?').next().unwrap_or_default();
            Ok(Some(Request {
                method: method.to_owned(),
                path: path.to_owned(),
            }))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Response::text(431, "too many header lines\n")),
        Err(_) => Err(Response::text(400, "malformed request\n")),
    }
}

/// The path of a request target. A server must accept the absolute form
/// (RFC 9112 §3.2.2: `http://host:port/status`, as a client configured
/// with a proxy sends it) as well as the origin form (`/status`); the
/// authority is not checked, as the admin port serves one site whatever
/// name it is reached by. An absolute form without a path is `/`.
fn origin_path(target: &str) -> &str {
    let Some(colon) = target.find("://") else {
        return target;
    };
    let scheme = &target[..colon];
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return target;
    }
    let rest = &target[colon + 3..];
    match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => &rest[i..],
        _ => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_is_read_when_complete() {
        assert_eq!(parse_head(b"GET /status HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Some(Request {
                method: "GET".into(),
                path: "/metrics".into()
            }))
        );
        // The absolute form (RFC 9112 §3.2.2), in any scheme case.
        for target in [
            "http://127.0.0.1:8060/status",
            "HTTP://admin.example/status?pretty",
        ] {
            let head = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(
                parse_head(head.as_bytes()).map(|r| r.map(|r| r.path)),
                Ok(Some("/status".into())),
                "{target}"
            );
        }
        for (target, path) in [
            ("http://h:1", "/"),
            ("http://h?x", "/"),
            ("/a://b", "/a://b"),
        ] {
            assert_eq!(origin_path(target), path, "{target}");
        }
        assert_eq!(
            parse_head(b"GET\x01 / HTTP/1.1\r\n\r\n").map_err(|r| r.status),
            Err(400)
        );
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(parse_head(many.as_bytes()).map_err(|r| r.status), Err(431));
    }

    #[test]
    fn an_answer_has_its_length_and_closes_and_head_leaves_the_body_out() {
        let response = Response::text(405, "no\n").with("Allow", "GET, HEAD");
        let full = String::from_utf8(response.encode(false)).unwrap_or_default();
        assert_eq!(
            full,
            "HTTP/1.1 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 3\r\nConnection: close\r\nAllow: GET, HEAD\r\n\r\nno\n"
        );
        let head = String::from_utf8(response.encode(true)).unwrap_or_default();
        assert!(head.ends_with("Allow: GET, HEAD\r\n\r\n"), "{head}");
    }
}
