//! The invariants the fuzz targets check, in one place: the cargo-fuzz
//! targets call them through this crate's library, and the main crate's
//! `tests/fuzz_corpus.rs` includes this file by path to replay the committed
//! corpora on stable. It may depend only on `sipblade` and `bytes`, which
//! both crates have.
//!
//! Each entry point takes arbitrary bytes and panics on a broken invariant.

use std::hint::black_box;

// Beside this file: found the same way from the fuzz crate and from
// tests/fuzz_corpus.rs, which includes this file by path.
#[path = "proxy.rs"]
mod proxy_target;
pub use proxy_target::proxy;

use bytes::{Bytes, BytesMut};
use sipblade::sip::framing::{self, DEFAULT_MAX_MESSAGE, Frame};
use sipblade::sip::header::HeaderParams;
use sipblade::sip::{
    AuthValue, EditError, Forward, HeaderName, HostKind, Join, Message, Method, NameAddr,
    ParseError, Scheme, Span, StartLine, Uri, Via,
};

/// The branch of the Via the roundtrip target's proxy pushes.
const BRANCH: &str = "z9hG4bKfuzz";
/// The Via the roundtrip target's proxy pushes.
const VIA: &str = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKfuzz";
/// The Record-Route the roundtrip target's proxy pushes.
const RECORD_ROUTE: &str = "<sip:192.0.2.1;lr>";
/// The Request-URI the roundtrip target's proxy writes.
const REQUEST_URI: &str = "sip:fuzz@192.0.2.2:5062";
/// The fixed proxy edit of the roundtrip target.
const FORWARD: Forward<'static> = Forward {
    via: Some(VIA),
    record_route: Some(RECORD_ROUTE),
    request_uri: Some(REQUEST_URI),
    pop_routes: 1,
    consume_credentials_of: None,
};
/// A stream limit small enough for fuzz inputs to reach the too-large paths.
const SMALL_MAX: usize = 512;

/// Target `parse_message`: parse, then read every view of the result.
pub fn parse_message(data: &[u8]) {
    parse(data);
}

/// Target `uri`: parse a lone URI, then read every view of it.
pub fn uri(data: &[u8]) {
    if let Some(u) = Uri::parse(data) {
        assert_eq!(u.as_bytes(), data, "a URI spans its whole input");
        walk_uri(&u, data.len());
    }
}

/// Target `framing`: cut `data` as a TCP stream, the way a connection
/// does, and parse each complete frame.
pub fn framing(data: &[u8]) {
    let mut rest = data;
    loop {
        let got = framing::frame(rest, DEFAULT_MAX_MESSAGE);
        // A smaller limit may refuse more, but never cut differently.
        match framing::frame(rest, SMALL_MAX) {
            Ok(Frame::Partial) => assert!(rest.len() <= SMALL_MAX, "Partial past the limit"),
            Ok(cut) => assert_eq!(got, Ok(cut), "the limit changed a cut"),
            Err(e) => check_error(&e, rest.len(), &[400, 513]),
        }
        match got {
            Ok(Frame::Complete(n)) => {
                assert!(n > 0 && n <= rest.len() && n <= DEFAULT_MAX_MESSAGE);
                let (one, tail) = rest.split_at(n);
                if let Some(msg) = parse(one) {
                    // Framer and parser must agree on where a message ends,
                    // or bytes of one request are smuggled into the next.
                    assert_eq!(msg.body_span().end as usize, n, "frame/parse disagree");
                    let cl = msg.content_length().map(|l| l as usize);
                    assert_eq!(cl, Some(n - msg.headers_end()));
                }
                rest = tail;
            }
            Ok(Frame::KeepAlive { len, ping }) => {
                assert!(matches!((len, ping), (4, true) | (2, false)));
                assert!(rest.len() >= len && rest[..len] == b"\r\n\r\n"[..len]);
                rest = &rest[len..];
            }
            Ok(Frame::Partial) => {
                assert!(rest.len() <= DEFAULT_MAX_MESSAGE, "Partial past the limit");
                return;
            }
            Err(e) => return check_error(&e, rest.len(), &[400, 513]),
        }
    }
}

/// Target `roundtrip`: what a proxy emits from a parsed message parses
/// again, with exactly the promised edits.
pub fn roundtrip(data: &[u8]) {
    let Some(msg) = parse(data) else { return };
    if msg.is_request() {
        forward(&msg);
        respond(&msg);
    } else {
        let mut out = BytesMut::new();
        assert_eq!(msg.forward(&FORWARD, &mut out), Err(EditError::NotARequest));
        strip(&msg);
    }
}

/// Parses `data` and checks the error, or walks every accessor.
fn parse(data: &[u8]) -> Option<Message> {
    match Message::parse(Bytes::copy_from_slice(data)) {
        Ok(msg) => {
            walk_message(&msg);
            Some(msg)
        }
        Err(e) => {
            check_error(&e, data.len(), &[400, 505]);
            None
        }
    }
}

/// An error points into its input and maps to a status a server can send.
fn check_error(e: &ParseError, len: usize, statuses: &[u16]) {
    assert!(e.offset <= len, "{e} past the input ({len} bytes)");
    assert!(statuses.contains(&e.status()), "{e} answers {}", e.status());
    assert_eq!(e.status(), e.kind.status());
    black_box(e.to_string());
}

/// A span the parser hands out lies inside the buffer (`Span::of` would
/// silently read an out-of-range span as empty).
fn check_span(s: Span, len: usize) {
    assert!(s.start <= s.end && s.end as usize <= len, "{s:?} of {len}");
}

fn forward(msg: &Message) {
    let mut out = BytesMut::new();
    let result = msg.forward(&FORWARD, &mut out);
    if msg.max_forwards() == Some(0) {
        assert_eq!(result, Err(EditError::TooManyHops));
        return;
    }
    result.expect("a request with hops left forwards");
    let fwd = Message::parse(out.freeze())
        .unwrap_or_else(|e| panic!("forwarded request does not parse: {e}"));
    walk_message(&fwd);
    assert_eq!(fwd.top_via().branch(), Some(BRANCH));
    assert_eq!(fwd.vias().count(), msg.vias().count() + 1);
    let hops = msg.max_forwards().map_or(70, |n| n - 1);
    assert_eq!(fwd.max_forwards(), Some(hops));
    assert_eq!(fwd.body(), msg.body());
    assert_eq!(fwd.request_uri().map(|u| u.as_str()), Some(REQUEST_URI));
    assert_eq!(fwd.method_str(), msg.method_str());
    same_dialog(msg, &fwd);
    assert_eq!(fwd.to().as_bytes(), msg.to().as_bytes());
    assert_eq!(fwd.routes().count(), msg.routes().count().saturating_sub(1));
    assert_eq!(fwd.record_routes().count(), msg.record_routes().count() + 1);
    let rr = fwd.record_routes().next().map(|r| r.as_bytes());
    assert_eq!(rr, Some(RECORD_ROUTE.as_bytes()));
}

fn respond(msg: &Message) {
    let mut out = BytesMut::new();
    msg.response(
        486,
        "Busy Here",
        Some("fuzz"),
        &[("Retry-After", "5")],
        &mut out,
    );
    let resp =
        Message::parse(out.freeze()).unwrap_or_else(|e| panic!("response does not parse: {e}"));
    walk_message(&resp);
    assert_eq!(resp.status(), Some(486));
    assert!(resp.body().is_empty());
    same_dialog(msg, &resp);
    let tag = msg.to().tag().unwrap_or("fuzz");
    assert_eq!(resp.to().tag(), Some(tag));
    let vias = |m: &Message| m.vias().map(|v| v.as_bytes().to_vec()).collect::<Vec<_>>();
    assert_eq!(vias(&resp), vias(msg));
}

fn strip(msg: &Message) {
    let mut out = BytesMut::new();
    msg.strip_top_via(&mut out);
    // With one Via the output lacks a mandatory header: nothing to check.
    if msg.vias().count() < 2 {
        return;
    }
    let up = Message::parse(out.freeze())
        .unwrap_or_else(|e| panic!("response without its top Via does not parse: {e}"));
    walk_message(&up);
    let vias = |m: &Message, skip| {
        m.vias()
            .skip(skip)
            .map(|v| v.as_bytes().to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(vias(&up, 0), vias(msg, 1));
    assert_eq!(up.status(), msg.status());
    assert_eq!(up.body(), msg.body());
    same_dialog(msg, &up);
    assert_eq!(up.to().as_bytes(), msg.to().as_bytes());
}

/// Call-ID, CSeq and From carried over unchanged.
fn same_dialog(a: &Message, b: &Message) {
    assert_eq!(b.call_id_bytes(), a.call_id_bytes());
    assert_eq!(
        (b.cseq().seq, b.cseq().method),
        (a.cseq().seq, a.cseq().method)
    );
    assert_eq!(b.cseq_method_str(), a.cseq_method_str());
    assert_eq!(b.from().as_bytes(), a.from().as_bytes());
}

/// Reads every view of a parsed message and checks what its docs promise.
fn walk_message(msg: &Message) {
    let buf = msg.as_bytes();
    let len = buf.len();
    assert_eq!(msg.buffer().len(), len);
    black_box(format!("{msg:?}"));
    match *msg.start_line() {
        StartLine::Request {
            method,
            method_span,
            uri,
        } => {
            check_span(method_span, len);
            assert!(msg.is_request() && msg.status().is_none() && msg.reason().is_none());
            assert_eq!(msg.method(), Some(method));
            let name = msg.method_str().unwrap_or_default();
            assert!(!name.is_empty(), "a method is a token");
            assert_eq!(Method::from_bytes(name.as_bytes()), method);
            black_box(method.to_string());
            // The parser refuses a CSeq method other than the request's.
            assert_eq!(msg.cseq_method_str(), name);
            assert_eq!(msg.cseq().method, method);
            let ruri = msg.request_uri().expect("a request has a Request-URI");
            assert_eq!(ruri.spans(), uri);
            assert!(ruri.headers().is_empty(), "a Request-URI has no headers");
            walk_uri(&ruri, len);
        }
        StartLine::Response { status, reason } => {
            check_span(reason, len);
            assert!(!msg.is_request() && msg.method().is_none() && msg.method_str().is_none());
            assert!(msg.request_uri().is_none());
            assert!((100..=699).contains(&status));
            assert_eq!(msg.status(), Some(status));
            assert_eq!(msg.reason(), Some(reason.of(buf)));
        }
    }

    assert_eq!(msg.header_count(), msg.header_fields().len());
    assert_eq!(msg.headers().count(), msg.header_count());
    let mut prev_end = 0;
    for (h, r) in msg.header_fields().iter().zip(msg.headers()) {
        for s in [h.name_span, h.value, h.line()] {
            check_span(s, len);
        }
        assert!(h.name_span.start >= prev_end && h.end as usize <= msg.headers_end());
        prev_end = h.end;
        assert_eq!((r.kind, r.value), (h.name, h.value.of(buf)));
        assert_eq!(r.name.as_bytes(), h.name_span.of(buf), "a name is a token");
        assert_eq!(HeaderName::from_bytes(r.name.as_bytes()), r.kind);
        black_box(r.kind.as_str());
        assert!(msg.header(h.name).is_some());
        assert!(msg.header_values(h.name).count() >= 1);
        assert!(msg.header_named(r.name).is_some(), "{} not found", r.name);
    }

    let top = msg.top_via();
    walk_via(&top, len);
    let first = msg.vias().next().expect("a message has a Via");
    assert_eq!(first.spans(), top.spans(), "top_via is the first of vias");
    msg.vias().for_each(|v| walk_via(&v, len));

    walk_name_addr(&msg.from(), len);
    walk_name_addr(&msg.to(), len);
    black_box(msg.is_contact_star());
    msg.contacts().for_each(|c| walk_name_addr(&c, len));
    msg.routes().for_each(|r| walk_name_addr(&r, len));
    msg.record_routes().for_each(|r| walk_name_addr(&r, len));

    assert!(!msg.call_id().is_empty(), "a Call-ID is ASCII words");
    assert_eq!(msg.call_id().as_bytes(), msg.call_id_bytes());
    let cseq = msg.cseq();
    check_span(cseq.method_span, len);
    assert!(
        !msg.cseq_method_str().is_empty(),
        "a CSeq method is a token"
    );
    black_box(cseq.seq);
    if msg.max_forwards().is_some() {
        assert!(msg.header(HeaderName::MaxForwards).is_some());
    }
    black_box((msg.expires(), msg.min_expires(), msg.content_type()));
    for tags in [
        msg.require().collect::<Vec<_>>(),
        msg.proxy_require().collect(),
        msg.supported().collect(),
    ] {
        assert!(tags.iter().all(|t| !t.is_empty()), "option tags are tokens");
    }
    if let Some(join) = msg.header_named("Join").and_then(Join::parse) {
        // Its parts are non-empty pieces of the header value.
        for part in [join.call_id, join.to_tag, join.from_tag] {
            assert!(!part.is_empty(), "a Join part is empty");
        }
        assert!(join.names(join.call_id, join.from_tag, join.to_tag));
        assert!(join.names(join.call_id, join.to_tag, join.from_tag));
    }
    for auth in [
        msg.authorization(),
        msg.proxy_authorization(),
        msg.www_authenticate(),
        msg.proxy_authenticate(),
    ]
    .into_iter()
    .flatten()
    {
        walk_auth(&auth);
    }

    let body = msg.body_span();
    check_span(body, len);
    assert_eq!(body.start as usize, msg.headers_end());
    assert_eq!(msg.body(), &buf[body.range()]);
    assert_eq!(msg.body_bytes(), msg.body());
    match msg.content_length() {
        Some(n) => assert_eq!(
            msg.body().len(),
            n as usize,
            "body is Content-Length octets"
        ),
        None => assert_eq!(
            body.end as usize, len,
            "without Content-Length the body is the rest"
        ),
    }
}

fn walk_via(v: &Via<'_>, len: usize) {
    let s = v.spans();
    for span in [s.all, s.protocol, s.version, s.transport, s.host, s.params] {
        check_span(span, len);
    }
    for span in [s.branch, s.received, s.maddr].into_iter().flatten() {
        check_span(span, len);
    }
    assert!(!v.as_bytes().is_empty());
    let (protocol, version) = v.protocol();
    assert!(!protocol.is_empty() && !version.is_empty() && !v.transport().is_empty());
    assert!(!v.host().is_empty(), "a sent-by host is ASCII");
    assert_ne!(v.host_kind(), HostKind::None);
    assert_eq!(
        v.is_rfc3261_branch(),
        v.branch().is_some_and(|b| b.starts_with("z9hG4bK"))
    );
    black_box((v.port(), v.received(), v.rport(), v.maddr(), v.ttl()));
    walk_header_params(v.params());
}

fn walk_name_addr(na: &NameAddr<'_>, len: usize) {
    let s = na.spans();
    for span in [Some(s.all), Some(s.params), s.display, s.tag, s.expires]
        .into_iter()
        .flatten()
    {
        check_span(span, len);
    }
    assert!(!na.as_bytes().is_empty());
    black_box((na.display_name(), na.expires()));
    // Every tag and expires parameter must have a value, so the typed
    // views and the generic parameter list agree on presence.
    assert_eq!(na.tag().is_some(), na.params().get("tag").is_some());
    assert_eq!(s.expires.is_some(), na.params().get("expires").is_some());
    walk_uri(&na.uri(), len);
    walk_header_params(na.params());
}

fn walk_header_params(params: HeaderParams<'_>) {
    for (name, value) in params.clone() {
        let name = std::str::from_utf8(name).expect("a parameter name is a token");
        assert!(!name.is_empty());
        assert!(params.clone().get(name).is_some(), "{name} not found");
        black_box(value);
    }
}

fn walk_auth(auth: &AuthValue<'_>) {
    let scheme = auth.scheme();
    assert!(!scheme.is_empty(), "an auth scheme is a token");
    assert_eq!(auth.is_digest(), scheme.eq_ignore_ascii_case("digest"));
    for (name, value) in auth.params() {
        assert!(auth.param(name).is_some(), "{name} not found");
        black_box(value);
    }
    if let Some(d) = auth.digest() {
        assert!(auth.is_digest());
        black_box((d.username, d.realm, d.nonce, d.uri, d.response, d.algorithm));
        black_box((d.cnonce, d.opaque, d.qop, d.nc, d.stale, d.domain));
    }
}

/// Reads every view of a URI; `user_is` is checked against the user part
/// as written, fully re-escaped, and with one octet more.
fn walk_uri(u: &Uri<'_>, len: usize) {
    let s = u.spans();
    for span in [Some(s.all), Some(s.host), Some(s.params), Some(s.headers)]
        .into_iter()
        .chain([s.user, s.password])
        .flatten()
    {
        check_span(span, len);
    }
    assert_eq!(s.scheme, u.scheme());
    assert!(!u.as_bytes().is_empty());
    if let Ok(text) = std::str::from_utf8(u.as_bytes()) {
        assert_eq!(u.as_str(), text);
    }
    assert!(
        !u.host().is_empty(),
        "a host, number or opaque part is ASCII"
    );
    match u.scheme() {
        Scheme::Sip | Scheme::Sips => assert_ne!(u.host_kind(), HostKind::None),
        Scheme::Tel | Scheme::Other => {
            assert_eq!(u.host_kind(), HostKind::None);
            assert!(u.user().is_none() && u.password().is_none() && u.port().is_none());
        }
    }
    black_box((u.password(), u.headers()));
    match u.user() {
        Some(user) => {
            assert!(u.user_is(user));
            assert!(
                u.user_is(&escape_all(&unescape(user))),
                "escapes compare equal"
            );
            assert!(!u.user_is(&[user, b"x"].concat()));
        }
        None => assert!(!u.user_is(b"") && !u.user_is(b"user")),
    }
    for (name, value) in u.params() {
        let name = std::str::from_utf8(name).expect("a parameter name is ASCII");
        assert!(u.param(name).is_some(), "{name} not found");
        black_box(value);
    }
    assert_eq!(u.is_loose_route(), u.param("lr").is_some());
}

/// Decodes `%XX` escapes (the URI parser has checked they are well formed).
fn unescape(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match (
            s[i],
            s.get(i + 1).and_then(|&b| hex(b)),
            s.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Escapes every octet as `%XX`.
fn escape_all(s: &[u8]) -> Vec<u8> {
    s.iter()
        .flat_map(|b| format!("%{b:02X}").into_bytes())
        .collect()
}
