//! Editing and emitting: forward a request, build a response, strip a Via.
//!
//! Edits splice the original buffer: untouched bytes (the body, unknown
//! headers, compact names, folds) are copied as they are, never re-encoded.

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};

use super::header::auth::AuthValue;
use super::header::{name_addr, via};
use super::message::{Message, StartLine};
use super::name::HeaderName;
use super::scan::Cursor;
use super::span::Span;
use super::stamp::ViaStamp;

/// Max-Forwards a proxy adds when a request has none (RFC 3261 §16.6).
pub const DEFAULT_MAX_FORWARDS: u8 = 70;

/// The edits a proxy makes when it forwards a request (RFC 3261 §16.6).
#[derive(Debug, Clone, Copy, Default)]
pub struct Forward<'a> {
    /// Value of the Via to push on top, e.g.
    /// `SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK…`.
    pub via: Option<&'a str>,
    /// Value of the Record-Route to push on top, e.g. `<sip:192.0.2.1;lr>`.
    pub record_route: Option<&'a str>,
    /// A new Request-URI.
    pub request_uri: Option<&'a str>,
    /// How many Route values to remove from the top (those naming this
    /// proxy: one, or two where it record-routed twice to change
    /// transport, RFC 5658).
    pub pop_routes: usize,
    /// Drop the Proxy-Authorization lines whose realm is this one: the
    /// credentials this proxy checked are for it alone (RFC 3261 §22.3),
    /// and the next hop (often the callee) must not be able to reuse them.
    pub consume_credentials_of: Option<&'a str>,
}

/// Why a request cannot be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// Max-Forwards is 0: answer 483 Too Many Hops.
    #[error("Max-Forwards exhausted")]
    TooManyHops,
    /// The message is a response; only requests are forwarded this way.
    #[error("not a request")]
    NotARequest,
}

/// Copies ranges of the source and writes new bytes between them, in order.
struct Splicer<'a> {
    src: &'a [u8],
    out: &'a mut BytesMut,
    at: usize,
}

impl Splicer<'_> {
    /// Copies the source up to `pos`.
    fn copy_to(&mut self, pos: usize) {
        if pos > self.at {
            self.out.extend_from_slice(&self.src[self.at..pos]);
            self.at = pos;
        }
    }

    /// Copies up to `from`, then skips the source up to `to`.
    fn cut(&mut self, from: usize, to: usize) {
        self.copy_to(from);
        self.at = self.at.max(to);
    }

    fn put(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn put_header(&mut self, name: &str, value: &[u8]) {
        self.put(name.as_bytes());
        self.put(b": ");
        self.put(value);
        self.put(b"\r\n");
    }
}

/// A tag (RFC 3261 §19.3) derived from `parts`: the same request always
/// gets the same tag, so retransmissions are answered alike without state.
pub fn derived_tag(parts: &[&[u8]]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    format!("sb{:016x}", h.finish())
}

/// Whether a header line holds a fold (a CRLF before its last).
fn is_folded(src: &[u8], h: &super::message::Header) -> bool {
    let line = h.line().of(src);
    line.len() >= 2 && memchr::memchr(b'\r', &line[..line.len() - 2]).is_some()
}

impl Message {
    /// Rewrites a folded Content-Length as one plain line: the parser
    /// accepts folds anywhere, but stream framers (ours included) read
    /// Content-Length from a single line, so a forwarded message must carry
    /// it that way.
    fn unfold_content_length(&self, s: &mut Splicer<'_>, h: &super::message::Header) {
        s.cut(h.line().start as usize, h.end as usize);
        s.put(b"Content-Length: ");
        put_u32(s.out, self.body().len() as u32);
        s.put(b"\r\n");
    }
}

/// Writes `n` in decimal.
fn put_u32(out: &mut BytesMut, n: u32) {
    out.put_slice(Decimal::new(n.into()).as_bytes());
}

/// A number's decimal digits, written without `fmt` (whose machinery
/// costs several hundred instructions a number on the message path).
pub(crate) struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    pub(crate) fn new(mut n: u64) -> Decimal {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

/// Skips up to `n` name-addr values of a list header: how many it
/// skipped, and `Some(offset of the next value)` or `None` when the header
/// has no more (the whole line goes).
fn skip_values(msg: &Message, value: super::span::Span, n: usize) -> (usize, Option<usize>) {
    let mut c = Cursor::new(msg.as_bytes(), value);
    let mut skipped = 0;
    while skipped < n {
        if name_addr::parse(&mut c, true).is_none() {
            // Unparsable (never after validation): drop the whole line.
            return (skipped + 1, None);
        }
        skipped += 1;
        if !c.sep(b',') {
            return (skipped, None);
        }
    }
    (skipped, Some(c.pos))
}

/// Where the first value of a list header ends and the rest begins:
/// `Some(offset of the next value)` or `None` if it is the only value.
fn rest_after_first(
    msg: &Message,
    value: super::span::Span,
    parse_one: fn(&mut Cursor<'_>) -> bool,
) -> Option<usize> {
    let mut c = Cursor::new(msg.as_bytes(), value);
    if !parse_one(&mut c) || !c.sep(b',') {
        return None;
    }
    Some(c.pos)
}

impl Message {
    /// Emits this request with the proxy edits of `edit` into `out`:
    /// a new top Via and Record-Route, Max-Forwards decremented (or added
    /// at 70), the Request-URI replaced, the top Route popped, and
    /// Content-Length added if the request had none. Octets after the body
    /// are dropped.
    pub fn forward(&self, edit: &Forward<'_>, out: &mut BytesMut) -> Result<(), EditError> {
        let StartLine::Request {
            uri, method_span, ..
        } = *self.start_line()
        else {
            return Err(EditError::NotARequest);
        };
        if self.max_forwards() == Some(0) {
            return Err(EditError::TooManyHops);
        }
        let src = self.as_bytes();
        out.reserve(src.len() + 160);
        let mut s = Splicer { src, out, at: 0 };
        s.cut(0, method_span.start as usize);
        if let Some(new_uri) = edit.request_uri {
            s.cut(uri.all.start as usize, uri.all.end as usize);
            s.put(new_uri.as_bytes());
        }
        let first_header = self
            .header_fields()
            .first()
            .map_or(self.headers_end() - 2, |h| h.line().start as usize);
        s.copy_to(first_header);
        if let Some(via) = edit.via {
            s.put_header("Via", via.as_bytes());
        }
        if let Some(rr) = edit.record_route {
            s.put_header("Record-Route", rr.as_bytes());
        }
        let mut to_pop = edit.pop_routes;
        let mut stamp = self.via_stamp();
        for h in self.header_fields() {
            match h.name {
                HeaderName::Via if stamp.is_some() => {
                    if let Some(stamp) = stamp.take() {
                        s.copy_to(h.value.start as usize);
                        stamp.emit(src, h.value.start as usize, stamp.via_end(), s.out);
                        s.at = stamp.via_end();
                    }
                }
                HeaderName::MaxForwards => {
                    s.cut(h.value.start as usize, h.value.end as usize);
                    put_u32(s.out, u32::from(self.max_forwards().unwrap_or(1)) - 1);
                }
                HeaderName::Route if to_pop > 0 => {
                    let (popped, rest) = skip_values(self, h.value, to_pop);
                    to_pop -= popped;
                    match rest {
                        Some(next) => s.cut(h.value.start as usize, next),
                        None => s.cut(h.line().start as usize, h.end as usize),
                    }
                }
                HeaderName::ProxyAuthorization
                    if edit.consume_credentials_of.is_some_and(|realm| {
                        AuthValue::parse(src, h.value).and_then(|v| v.param("realm")) == Some(realm)
                    }) =>
                {
                    s.cut(h.line().start as usize, h.end as usize)
                }
                HeaderName::ContentLength if is_folded(src, h) => {
                    self.unfold_content_length(&mut s, h)
                }
                _ => {}
            }
        }
        let blank_line = self.headers_end() - 2;
        s.copy_to(blank_line);
        if self.max_forwards().is_none() {
            s.put(b"Max-Forwards: ");
            put_u32(s.out, u32::from(DEFAULT_MAX_FORWARDS));
            s.put(b"\r\n");
        }
        if self.content_length().is_none() {
            s.put(b"Content-Length: ");
            put_u32(s.out, self.body().len() as u32);
            s.put(b"\r\n");
        }
        s.copy_to(self.body_span().end as usize);
        Ok(())
    }

    /// Emits this response without its top Via (a proxy forwarding a
    /// response upstream, RFC 3261 §16.7 step 3). Octets after the body are
    /// dropped; Content-Length is added if missing.
    pub fn strip_top_via(&self, out: &mut BytesMut) {
        let src = self.as_bytes();
        out.reserve(src.len());
        let mut s = Splicer { src, out, at: 0 };
        let start = match self.start_line() {
            StartLine::Request { method_span, .. } => method_span.start as usize,
            StartLine::Response { .. } => src.len() - src.trim_ascii_start().len(),
        };
        s.cut(0, start);
        let mut via_stripped = false;
        for h in self.header_fields() {
            match h.name {
                HeaderName::Via if !via_stripped => {
                    via_stripped = true;
                    let one = |c: &mut Cursor<'_>| via::parse(c).is_some();
                    match rest_after_first(self, h.value, one) {
                        Some(next) => s.cut(h.value.start as usize, next),
                        None => s.cut(h.line().start as usize, h.end as usize),
                    }
                }
                HeaderName::ContentLength if is_folded(src, h) => {
                    self.unfold_content_length(&mut s, h)
                }
                _ => {}
            }
        }
        s.copy_to(self.headers_end() - 2);
        if self.content_length().is_none() {
            s.put(b"Content-Length: ");
            put_u32(s.out, self.body().len() as u32);
            s.put(b"\r\n");
        }
        s.copy_to(self.body_span().end as usize);
    }

    /// Emits a response to this request (RFC 3261 §8.2.6): the status line,
    /// the request's Via, From, To (with `to_tag` added if To has none),
    /// Call-ID and CSeq lines copied, then `extra` headers and an empty
    /// body.
    pub fn response(
        &self,
        status: u16,
        reason: &str,
        to_tag: Option<&str>,
        extra: &[(&str, &str)],
        out: &mut BytesMut,
    ) {
        let src = self.as_bytes();
        out.reserve(256 + src.len() / 2);
        out.put_slice(b"SIP/2.0 ");
        put_u32(out, u32::from(status));
        out.put_u8(b' ');
        out.put_slice(reason.as_bytes());
        out.put_slice(b"\r\n");
        let mut stamp = self.via_stamp();
        for h in self.header_fields() {
            match h.name {
                HeaderName::Via if stamp.is_some() => {
                    if let Some(stamp) = stamp.take() {
                        let line = h.line();
                        out.put_slice(&src[line.start as usize..h.value.start as usize]);
                        stamp.emit(src, h.value.start as usize, line.end as usize, out);
                    }
                }
                HeaderName::To if self.to().tag().is_none() && to_tag.is_some() => {
                    out.put_slice(&src[h.line().start as usize..h.value.end as usize]);
                    out.put_slice(b";tag=");
                    out.put_slice(to_tag.unwrap_or_default().as_bytes());
                    out.put_slice(b"\r\n");
                }
                HeaderName::Via
                | HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq => {
                    out.put_slice(h.line().of(src));
                }
                _ => {}
            }
        }
        for (name, value) in extra {
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"Content-Length: 0\r\n\r\n");
    }
}

impl Message {
    /// Emits the ACK for a non-2xx final `response` to this INVITE
    /// (RFC 3261 §17.1.1.3): same Request-URI, top Via, Route, From,
    /// Call-ID and CSeq number as the INVITE; To from the response.
    pub fn ack_for(&self, response: &Message, out: &mut BytesMut) {
        self.hop_request("ACK", response, out);
    }

    /// Emits the CANCEL of this INVITE (RFC 3261 §9.1): same Request-URI,
    /// top Via (so the same branch), Route, From, To, Call-ID and CSeq
    /// number.
    pub fn cancel_for(&self, out: &mut BytesMut) {
        self.hop_request("CANCEL", self, out);
    }

    /// A request of `method` for this request's hop, with To from `to_of`.
    fn hop_request(&self, method: &str, to_of: &Message, out: &mut BytesMut) {
        let src = self.as_bytes();
        let uri = self.request_uri().map(|u| u.as_bytes()).unwrap_or_default();
        out.reserve(256 + uri.len());
        out.put_slice(method.as_bytes());
        out.put_u8(b' ');
        out.put_slice(uri);
        out.put_slice(b" SIP/2.0\r\nVia: ");
        out.put_slice(self.top_via().as_bytes());
        out.put_slice(b"\r\n");
        for h in self.header_fields() {
            if matches!(
                h.name,
                HeaderName::Route | HeaderName::From | HeaderName::CallId
            ) {
                out.put_slice(h.line().of(src));
            }
        }
        if let Some(to) = to_of
            .header_fields()
            .iter()
            .find(|h| h.name == HeaderName::To)
        {
            out.put_slice(to.line().of(to_of.as_bytes()));
        }
        out.put_slice(b"CSeq: ");
        put_u32(out, self.cseq().seq);
        out.put_u8(b' ');
        out.put_slice(method.as_bytes());
        out.put_slice(b"\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    }
}

/// Builds an error response (e.g. 400) to a request that failed to parse,
/// from whatever Via, From, To, Call-ID and CSeq lines it has
/// (RFC 3261 §16.3 step 1: answer a malformed request if at all possible).
/// The top Via gets `received` and the `rport` value as for any request
/// from `source` (RFC 3581 §4), when it parses; a request with no Via at
/// all is answered without one. `false` when the input is not a request
/// (a response, an ACK, a first line not shaped as a request line).
pub fn best_effort_response(
    raw: &[u8],
    status: u16,
    reason: &str,
    source: SocketAddr,
    out: &mut BytesMut,
) -> bool {
    let request_line = raw.split(|&b| b == b'\n').next().unwrap_or_default();
    let request_line = request_line.strip_suffix(b"\r").unwrap_or(request_line);
    // Never answer a response, and never answer an ACK (§17.2.1). A first
    // line with a control byte in it (binary junk, a lone CR for a line
    // end) is no request; one ended by a bare LF is a malformed one, whose
    // Via is as usable as any (SPEC §5: a malformed request gets its 400).
    if raw.len() < 4
        || raw[..4].eq_ignore_ascii_case(b"SIP/")
        || raw.starts_with(b"ACK ")
        || request_line.iter().any(|&b| b < 0x20 && b != b'\t')
    {
        return false;
    }
    // The header section ends at the first empty line, CRLF or bare LF.
    let head_end = [
        memchr::memmem::find(raw, b"\r\n\r\n").map(|i| i + 2),
        memchr::memmem::find(raw, b"\n\n").map(|i| i + 1),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(raw.len());
    // The kept lines, each with its offset in `raw`, and which is the top
    // Via.
    let mut lines: Vec<(usize, &[u8])> = Vec::new();
    let mut top_via = None;
    let mut at = 0;
    for line in raw[..head_end].split(|&b| b == b'\n') {
        let start = at;
        at += line.len() + 1;
        if start == 0 {
            continue; // the request line
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = HeaderName::from_bytes(line[..colon].trim_ascii());
        // Keep only lines that are plain text: a control byte would let the
        // malformed input inject into our response.
        if line.iter().any(|&b| b < 0x20 && b != b'\t') {
            continue;
        }
        match name {
            HeaderName::Via => {
                top_via.get_or_insert(lines.len());
                lines.push((start, line));
            }
            HeaderName::From | HeaderName::To | HeaderName::CallId | HeaderName::CSeq => {
                lines.push((start, line))
            }
            _ => {}
        }
    }
    // Without a Via there is nothing to route the answer by, but it goes
    // back to the request's transport source all the same: a sender that
    // forgot the Via learns why it hears nothing more. Only for what is
    // shaped as a request line, so junk stays unanswered.
    if top_via.is_none() && !is_request_line(request_line) {
        return false;
    }
    out.put_slice(b"SIP/2.0 ");
    put_u32(out, u32::from(status));
    out.put_u8(b' ');
    out.put_slice(reason.as_bytes());
    out.put_slice(b"\r\n");
    for (i, &(start, line)) in lines.iter().enumerate() {
        let name_end = memchr::memchr(b':', line).unwrap_or(0);
        let stamp = (Some(i) == top_via)
            .then(|| {
                let value = Span::new(start + name_end + 1, start + line.len());
                let spans = via::parse(&mut Cursor::new(raw, value))?;
                ViaStamp::of_via(via::Via::new(raw, spans), source)
            })
            .flatten();
        match stamp {
            Some(stamp) => stamp.emit(raw, start, start + line.len(), out),
            None => out.put_slice(line),
        }
        let is_to = HeaderName::from_bytes(line[..name_end].trim_ascii()) == HeaderName::To;
        if is_to && !has_tag(line) {
            // RFC 3261 §8.2.6.2: a final response's To carries our tag. The
            // same for every retransmission of the request: derived from it.
            let mut h: u32 = 0x811c_9dc5;
            for &b in &raw[..head_end] {
                h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
            }
            out.put_slice(b";tag=sb");
            put_hex32(out, h);
        }
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Content-Length: 0\r\n\r\n");
    true
}

/// Whether `line` has the shape of a Request-Line: `Method SP
/// Request-URI SP SIP/…`, the method a token of letters.
fn is_request_line(line: &[u8]) -> bool {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method.iter().all(u8::is_ascii_alphabetic)
        && !uri.is_empty()
        && version.len() > 4
        && version[..4].eq_ignore_ascii_case(b"SIP/")
}

/// Whether a raw To line has a `tag` parameter (outside a quoted display
/// name and the `<>` of its URI).
fn has_tag(line: &[u8]) -> bool {
    let (mut quoted, mut angle) = (false, false);
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b';' if !quoted && !angle => {
                let rest = line[i + 1..].trim_ascii_start();
                if rest.len() >= 4 && rest[..3].eq_ignore_ascii_case(b"tag") {
                    let after = rest[3..].trim_ascii_start();
                    if after.first() == Some(&b'=') {
                        return true;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// Eight lowercase hex digits.
fn put_hex32(out: &mut BytesMut, v: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..8).rev() {
        out.put_u8(HEX[(v >> (shift * 4)) as usize & 0xf]);
    }
}

#[cfg(test)]
mod tests;
