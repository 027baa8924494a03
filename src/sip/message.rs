//! [`Message`]: one SIP message, parsed and validated in one pass over the
//! original buffer. Header values are spans of that buffer; the headers a
//! proxy reads are parsed once, during validation, and kept as spans.

use bytes::Bytes;
use smallvec::SmallVec;

use super::chars::TOKEN;
use super::error::{ErrorKind, ParseError};
use super::header::auth::AuthValue;
use super::header::name_addr::{self, NameAddr, NameAddrSpans};
use super::header::simple::{self, CSeq, Tokens};
use super::header::via::{self, Via, ViaSpans};
use super::method::Method;
use super::name::HeaderName;
use super::scan::{Cursor, parse_u32, parse_u32_saturating};
use super::span::Span;
use super::stamp::ViaStamp;
use super::uri::{self, Uri, UriSpans};

/// Headers kept inline before the list spills to the heap; typical
/// requests through a proxy carry 10–16.
const INLINE_HEADERS: usize = 20;

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine {
    /// `Method SP Request-URI SP SIP-Version`
    Request {
        /// The method.
        method: Method,
        /// The method as written.
        method_span: Span,
        /// The Request-URI.
        uri: UriSpans,
    },
    /// `SIP-Version SP Status-Code SP Reason-Phrase`
    Response {
        /// The status code, 100–699.
        status: u16,
        /// The reason phrase (may be empty).
        reason: Span,
    },
}

/// One header field (one line, folds included) of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The header, classified.
    pub name: HeaderName,
    /// The name as written.
    pub name_span: Span,
    /// The value, without surrounding white space; folds kept.
    pub value: Span,
    /// Offset just past the line's CRLF.
    pub end: u32,
}

impl Header {
    /// The whole line, from the name to past its CRLF.
    pub fn line(&self) -> Span {
        Span {
            start: self.name_span.start,
            end: self.end,
        }
    }
}

/// A parsed SIP message. Holds the original bytes; every accessor returns a
/// view into them.
#[derive(Clone)]
pub struct Message {
    buf: Bytes,
    start: StartLine,
    headers: SmallVec<[Header; INLINE_HEADERS]>,
    body: Span,
    headers_end: u32,
    top_via: ViaSpans,
    from: NameAddrSpans,
    to: NameAddrSpans,
    call_id: Span,
    cseq: CSeq,
    max_forwards: Option<u8>,
    content_length: Option<u32>,
    /// What the top Via gets when emitted again ([`Message::stamp_top_via`]).
    via_stamp: Option<ViaStamp>,
}

/// What the header pass found before the mandatory checks.
#[derive(Default)]
struct Found {
    top_via: Option<ViaSpans>,
    from: Option<NameAddrSpans>,
    to: Option<NameAddrSpans>,
    call_id: Option<Span>,
    cseq: Option<CSeq>,
    max_forwards: Option<u8>,
    content_length: Option<u32>,
    content_type: bool,
    expires: bool,
}

fn err(kind: ErrorKind, offset: usize) -> ParseError {
    ParseError::new(kind, offset)
}

/// Finds the CRLF ending the line that starts at `from`; returns the offset
/// of its CR. A lone CR or LF is a framing error.
#[inline]
fn line_end(b: &[u8], from: usize) -> Result<usize, ParseError> {
    match super::simd::find_cr_or_lf(&b[from..]) {
        Some(i) if b[from + i] == b'\r' && b.get(from + i + 1) == Some(&b'\n') => Ok(from + i),
        Some(i) => Err(err(ErrorKind::LineEnding, from + i)),
        None => Err(err(ErrorKind::HeaderFraming, b.len())),
    }
}

/// Parses `SIP-Version`; `Ok(())` only for `SIP/2.0`.
fn version(b: &[u8], span: Span) -> Result<(), ParseError> {
    let v = span.of(b);
    // Nearly every message says `SIP/2.0`: one word compare ("SIP" in any
    // case), then three bytes.
    if let Some(&[s, i, p, slash, b'2', b'.', b'0']) = v.get(..7) {
        if v.len() == 7
            && u32::from_le_bytes([s, i, p, slash]) | 0x0020_2020 == u32::from_le_bytes(*b"sip/")
        {
            return Ok(());
        }
    }
    let at = span.start as usize;
    // SIP-Version = "SIP" "/" 1*DIGIT "." 1*DIGIT ("SIP" case-insensitive)
    let grammatical = v.len() > 4
        && v[..4].eq_ignore_ascii_case(b"SIP/")
        && match v[4..].iter().position(|&c| c == b'.') {
            Some(dot) => {
                let (major, minor) = (&v[4..4 + dot], &v[5 + dot..]);
                !major.is_empty()
                    && !minor.is_empty()
                    && major.iter().all(u8::is_ascii_digit)
                    && minor.iter().all(u8::is_ascii_digit)
            }
            None => false,
        };
    if !grammatical {
        return Err(err(ErrorKind::StartLine, at));
    }
    if &v[4..] != b"2.0" {
        return Err(err(ErrorKind::Version, at));
    }
    Ok(())
}

fn start_line(b: &[u8], start: usize, end: usize) -> Result<StartLine, ParseError> {
    let line = &b[start..end];
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        let sp = super::simd::find_byte(line, b' ').ok_or(err(ErrorKind::StartLine, end))?;
        version(b, Span::new(start, start + sp))?;
        let code_start = start + sp + 1;
        let code_end = code_start
            + b[code_start..end]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
        let status = parse_u32(&b[code_start..code_end], 699)
            .filter(|s| (100..=699).contains(s) && code_end - code_start == 3)
            .ok_or(err(ErrorKind::StatusCode, code_start))?;
        // RFC 4475 §3.1.1.13: an empty reason phrase is fine; so, liberally,
        // is a missing SP before it.
        let reason = match b.get(code_end) {
            _ if code_end == end => Span::new(end, end),
            Some(b' ') => Span::new(code_end + 1, end),
            _ => return Err(err(ErrorKind::StatusCode, code_end)),
        };
        if b[reason.range()]
            .iter()
            .any(|&c| c < 0x20 && c != b'\t' || c == 0x7f)
        {
            return Err(err(ErrorKind::StartLine, reason.start as usize));
        }
        return Ok(StartLine::Response {
            status: status as u16,
            reason,
        });
    }
    let method_len = super::chars::run(line, TOKEN);
    if method_len == 0 || line.get(method_len) != Some(&b' ') {
        return Err(err(ErrorKind::StartLine, start + method_len));
    }
    let method_span = Span::new(start, start + method_len);
    let uri_start = start + method_len + 1;
    let uri_len =
        super::simd::find_byte(&b[uri_start..end], b' ').ok_or(err(ErrorKind::StartLine, end))?;
    let uri_span = Span::new(uri_start, uri_start + uri_len);
    version(b, Span::new(uri_start + uri_len + 1, end))?;
    let uri = uri::parse(b, uri_span)
        // A Request-URI may not carry headers (RFC 3261 §19.1.1, table 1).
        .filter(|u| u.headers.is_empty())
        .ok_or(err(ErrorKind::RequestUri, uri_start))?;
    Ok(StartLine::Request {
        method: Method::from_bytes(method_span.of(b)),
        method_span,
        uri,
    })
}

impl Message {
    /// Parses and validates one complete message (a datagram, or a frame the
    /// stream framer cut). Octets beyond Content-Length are ignored
    /// (RFC 3261 §18.3); without Content-Length the body is the rest.
    pub fn parse(buf: Bytes) -> Result<Message, ParseError> {
        let b: &[u8] = &buf;
        let mut pos = 0;
        while b[pos..].starts_with(b"\r\n") {
            pos += 2;
        }
        if pos == b.len() {
            return Err(err(ErrorKind::Empty, pos));
        }
        let end = match line_end(b, pos) {
            Ok(end) => end,
            Err(e) if e.kind == ErrorKind::LineEnding => return Err(e),
            // No line ending at all: a fault in the line itself is where it
            // is (junk fails at its first byte, not at the end of the
            // input); a line that is fine lacks only its CRLF, there.
            Err(_) => {
                start_line(b, pos, b.len())?;
                return Err(err(ErrorKind::LineEnding, b.len()));
            }
        };
        let start = start_line(b, pos, end)?;
        pos = end + 2;

        let mut headers: SmallVec<[Header; INLINE_HEADERS]> = SmallVec::new();
        let mut found = Found::default();
        let body_start = loop {
            if b[pos..].starts_with(b"\r\n") {
                break pos + 2;
            }
            if pos >= b.len() {
                return Err(err(ErrorKind::HeaderFraming, pos));
            }
            // The line runs to a CRLF not followed by SP/HTAB (a fold).
            let mut cr = line_end(b, pos)?;
            while matches!(b.get(cr + 2), Some(b' ' | b'\t')) {
                cr = line_end(b, cr + 2)?;
            }
            let header = header_line(b, pos, cr)?;
            check_header(b, &header, &mut found)?;
            headers.push(header);
            pos = cr + 2;
        };

        let missing = |name| err(ErrorKind::Missing(name), body_start);
        let top_via = found.top_via.ok_or_else(|| missing("Via"))?;
        let from = found.from.ok_or_else(|| missing("From"))?;
        let to = found.to.ok_or_else(|| missing("To"))?;
        let call_id = found.call_id.ok_or_else(|| missing("Call-ID"))?;
        let cseq = found.cseq.ok_or_else(|| missing("CSeq"))?;
        if let StartLine::Request { method_span, .. } = start {
            if method_span.of(b) != cseq.method_span.of(b) {
                return Err(err(ErrorKind::CSeqMethod, cseq.method_span.start as usize));
            }
        }
        let body_end = match found.content_length {
            Some(len) => {
                let end = body_start + len as usize;
                if end > b.len() {
                    return Err(err(ErrorKind::BodyTooShort, b.len()));
                }
                end
            }
            None => b.len(),
        };
        Ok(Message {
            start,
            headers,
            body: Span::new(body_start, body_end),
            headers_end: body_start as u32,
            top_via,
            from,
            to,
            call_id,
            cseq,
            max_forwards: found.max_forwards,
            content_length: found.content_length,
            via_stamp: None,
            buf,
        })
    }
}

/// Splits one header line `[start, cr)` into name and value.
#[inline]
fn header_line(b: &[u8], start: usize, cr: usize) -> Result<Header, ParseError> {
    // Nearly every line is a known name right before its colon. Matching a
    // known name proves it a token (letters and '-'), so the token scan is
    // only for the others.
    let colon = super::simd::find_byte(&b[start..cr], b':');
    let known = colon
        .map(|at| HeaderName::from_bytes(&b[start..start + at]))
        .filter(|&name| name != HeaderName::Other);
    let (name, name_len) = match (known, colon) {
        (Some(name), Some(at)) => (name, at),
        _ => {
            let len = super::chars::run(&b[start..cr], TOKEN);
            if len == 0 {
                return Err(err(ErrorKind::HeaderName, start));
            }
            let name = if colon == Some(len) {
                HeaderName::Other
            } else {
                HeaderName::from_bytes(&b[start..start + len])
            };
            (name, len)
        }
    };
    let name_span = Span::new(start, start + name_len);
    let mut c = Cursor {
        src: b,
        pos: start + name_len,
        end: cr,
    };
    // Fast path for `Name: value`, the form nearly every sender writes (the
    // line's CR cannot be among these three bytes, so they are in range).
    let plain = matches!(
        b.get(c.pos..c.pos + 3),
        Some(&[b':', b' ', next]) if !matches!(next, b' ' | b'\t' | b'\r')
    );
    if plain {
        c.pos += 2;
    } else {
        c.lws();
        if !c.eat(b':') {
            return Err(err(ErrorKind::HeaderName, c.pos));
        }
        c.lws();
    }
    let value = c.trimmed_to_end(c.pos);
    Ok(Header {
        name,
        name_span,
        value,
        end: (cr + 2) as u32,
    })
}

/// Validates the headers a proxy reads and records their typed views.
#[inline]
fn check_header(b: &[u8], h: &Header, found: &mut Found) -> Result<(), ParseError> {
    let mut c = Cursor::new(b, h.value);
    let name = h.name;
    let bad = |c: &Cursor<'_>| err(ErrorKind::Header(name.as_str()), c.pos);
    let repeated = || {
        err(
            ErrorKind::Repeated(name.as_str()),
            h.name_span.start as usize,
        )
    };
    match name {
        HeaderName::Via => {
            let mut first = found.top_via.is_none();
            via::parse_list(&mut c, |v| {
                if first {
                    found.top_via = Some(v);
                    first = false;
                }
            })
            .ok_or_else(|| bad(&c))?;
        }
        HeaderName::From | HeaderName::To => {
            let slot = if name == HeaderName::From {
                &mut found.from
            } else {
                &mut found.to
            };
            if slot.is_some() {
                return Err(repeated());
            }
            let v = name_addr::parse(&mut c, false).ok_or_else(|| bad(&c))?;
            c.lws();
            if !c.at_end() {
                return Err(bad(&c));
            }
            *slot = Some(v);
        }
        HeaderName::CallId => {
            if found.call_id.is_some() {
                return Err(repeated());
            }
            found.call_id = Some(simple::call_id(&mut c).ok_or_else(|| bad(&c))?);
        }
        HeaderName::CSeq => {
            if found.cseq.is_some() {
                return Err(repeated());
            }
            found.cseq = Some(simple::cseq(&mut c).ok_or_else(|| bad(&c))?);
        }
        HeaderName::MaxForwards => {
            if found.max_forwards.is_some() {
                return Err(repeated());
            }
            found.max_forwards = Some(simple::number(&mut c, 255).ok_or_else(|| bad(&c))? as u8);
        }
        HeaderName::ContentLength => {
            if found.content_length.is_some() {
                return Err(repeated());
            }
            found.content_length = Some(simple::number(&mut c, u32::MAX).ok_or_else(|| bad(&c))?);
        }
        HeaderName::Contact if !is_star(&c) => {
            name_addr::parse_list(&mut c, false, |_| {}).ok_or_else(|| bad(&c))?;
        }
        HeaderName::Route | HeaderName::RecordRoute => {
            name_addr::parse_list(&mut c, true, |_| {}).ok_or_else(|| bad(&c))?;
        }
        HeaderName::ContentType | HeaderName::Expires => {
            let seen = if name == HeaderName::Expires {
                &mut found.expires
            } else {
                &mut found.content_type
            };
            if std::mem::replace(seen, true) {
                return Err(repeated());
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether a Contact value is the wildcard `*`.
fn is_star(c: &Cursor<'_>) -> bool {
    c.rest() == b"*"
}

/// A header as a view: its name as written and its value.
#[derive(Debug, Clone, Copy)]
pub struct HeaderRef<'a> {
    /// The header, classified.
    pub kind: HeaderName,
    /// The name as written.
    pub name: &'a str,
    /// The value as written (folds kept).
    pub value: &'a [u8],
}

impl Message {
    /// The whole buffer the message was parsed from.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The buffer, shared (no copy).
    pub fn buffer(&self) -> &Bytes {
        &self.buf
    }

    /// The start line.
    pub fn start_line(&self) -> &StartLine {
        &self.start
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method (`None` for responses).
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The request method as written (`None` for responses).
    pub fn method_str(&self) -> Option<&str> {
        match self.start {
            StartLine::Request { method_span, .. } => Some(method_span.str(&self.buf)),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI (`None` for responses).
    pub fn request_uri(&self) -> Option<Uri<'_>> {
        match self.start {
            StartLine::Request { uri, .. } => Some(Uri::new(&self.buf, uri)),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code (`None` for requests).
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { status, .. } => Some(status),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase (`None` for requests).
    pub fn reason(&self) -> Option<&[u8]> {
        match self.start {
            StartLine::Response { reason, .. } => Some(reason.of(&self.buf)),
            StartLine::Request { .. } => None,
        }
    }

    /// Every header field in order.
    pub fn headers(&self) -> impl Iterator<Item = HeaderRef<'_>> + '_ {
        self.headers.iter().map(|h| HeaderRef {
            kind: h.name,
            name: h.name_span.str(&self.buf),
            value: h.value.of(&self.buf),
        })
    }

    /// The header fields as spans, for editing.
    pub fn header_fields(&self) -> &[Header] {
        &self.headers
    }

    /// The number of header fields (lines).
    pub fn header_count(&self) -> usize {
        self.headers.len()
    }

    /// The value of the first header `name`.
    pub fn header(&self, name: HeaderName) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.of(&self.buf))
    }

    /// The values of every header `name`, in order.
    pub fn header_values(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .map(|h| h.value.of(&self.buf))
    }

    /// The value of the first header whose name is `name` (any case; long
    /// form or, for known headers, compact form).
    pub fn header_named(&self, name: &str) -> Option<&[u8]> {
        let kind = HeaderName::from_bytes(name.as_bytes());
        self.headers
            .iter()
            .find(|h| {
                if kind == HeaderName::Other {
                    h.name == HeaderName::Other
                        && h.name_span
                            .of(&self.buf)
                            .eq_ignore_ascii_case(name.as_bytes())
                } else {
                    h.name == kind
                }
            })
            .map(|h| h.value.of(&self.buf))
    }

    /// Notes that this request came from `source`: wherever it is emitted
    /// again (forwarded, or answered), its top Via carries `received` and
    /// the `rport` value (RFC 3261 §18.2.1, RFC 3581 §4). Returns whether
    /// the Via gains anything; a response is left as it is.
    pub fn stamp_top_via(&mut self, source: std::net::SocketAddr) -> bool {
        if self.is_request() {
            self.via_stamp = ViaStamp::of(self, source);
        }
        self.via_stamp.is_some()
    }

    pub(crate) fn via_stamp(&self) -> Option<&ViaStamp> {
        self.via_stamp.as_ref()
    }

    /// The top Via.
    pub fn top_via(&self) -> Via<'_> {
        Via::new(&self.buf, self.top_via)
    }

    /// Whether a Via value follows the top one (in the same header line
    /// or another). A response to a request a proxy forwarded must carry
    /// one: with the proxy's own Via gone, none would be left to route it
    /// by (RFC 3261 §16.7 step 3). Reads no Via but the top one.
    pub fn has_more_vias(&self) -> bool {
        // The top Via is the first Via line's first value, so any Via line
        // whose value runs past it holds another.
        let top_end = self.top_via.all.end;
        self.headers
            .iter()
            .any(|h| h.name == HeaderName::Via && h.value.end > top_end)
    }

    /// Every Via value, top first.
    pub fn vias(&self) -> impl Iterator<Item = Via<'_>> + '_ {
        self.list(HeaderName::Via, via::parse)
            .map(|s| Via::new(&self.buf, s))
    }

    /// From.
    pub fn from(&self) -> NameAddr<'_> {
        NameAddr::new(&self.buf, self.from)
    }

    /// To.
    pub fn to(&self) -> NameAddr<'_> {
        NameAddr::new(&self.buf, self.to)
    }

    /// Call-ID.
    pub fn call_id(&self) -> &str {
        self.call_id.str(&self.buf)
    }

    /// Call-ID as bytes.
    pub fn call_id_bytes(&self) -> &[u8] {
        self.call_id.of(&self.buf)
    }

    /// CSeq.
    pub fn cseq(&self) -> CSeq {
        self.cseq
    }

    /// The CSeq method as written.
    pub fn cseq_method_str(&self) -> &str {
        self.cseq.method_span.str(&self.buf)
    }

    /// Max-Forwards, if present.
    pub fn max_forwards(&self) -> Option<u8> {
        self.max_forwards
    }

    /// Content-Length, if present.
    pub fn content_length(&self) -> Option<u32> {
        self.content_length
    }

    /// Content-Type, as written.
    pub fn content_type(&self) -> Option<&[u8]> {
        self.header(HeaderName::ContentType)
    }

    /// Whether the message carries `Contact: *`.
    pub fn is_contact_star(&self) -> bool {
        self.header(HeaderName::Contact) == Some(b"*")
    }

    /// Every Contact value in order (none for `Contact: *`).
    pub fn contacts(&self) -> impl Iterator<Item = NameAddr<'_>> + '_ {
        self.list(HeaderName::Contact, |c| name_addr::parse(c, false))
            .map(|s| NameAddr::new(&self.buf, s))
    }

    /// Every Route value, top first.
    pub fn routes(&self) -> impl Iterator<Item = NameAddr<'_>> + '_ {
        self.list(HeaderName::Route, |c| name_addr::parse(c, true))
            .map(|s| NameAddr::new(&self.buf, s))
    }

    /// Every Record-Route value, top first.
    pub fn record_routes(&self) -> impl Iterator<Item = NameAddr<'_>> + '_ {
        self.list(HeaderName::RecordRoute, |c| name_addr::parse(c, true))
            .map(|s| NameAddr::new(&self.buf, s))
    }

    /// Expires (delta-seconds), saturating at `u32::MAX`; `None` if absent
    /// or not a number.
    pub fn expires(&self) -> Option<u32> {
        self.scalar(HeaderName::Expires)
    }

    /// Min-Expires, saturating; `None` if absent or not a number.
    pub fn min_expires(&self) -> Option<u32> {
        self.scalar(HeaderName::MinExpires)
    }

    fn scalar(&self, name: HeaderName) -> Option<u32> {
        let v = self.header(name)?;
        parse_u32_saturating(v.trim_ascii())
    }

    /// Option tags of every Require header.
    pub fn require(&self) -> impl Iterator<Item = &str> + '_ {
        self.tokens(HeaderName::Require)
    }

    /// Option tags of every Proxy-Require header.
    pub fn proxy_require(&self) -> impl Iterator<Item = &str> + '_ {
        self.tokens(HeaderName::ProxyRequire)
    }

    /// Option tags of every Supported header.
    pub fn supported(&self) -> impl Iterator<Item = &str> + '_ {
        self.tokens(HeaderName::Supported)
    }

    fn tokens(&self, name: HeaderName) -> impl Iterator<Item = &str> + '_ {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .flat_map(|h| Tokens::new(&self.buf, h.value))
    }

    /// The first Authorization value.
    pub fn authorization(&self) -> Option<AuthValue<'_>> {
        self.auth(HeaderName::Authorization)
    }

    /// The first Proxy-Authorization value.
    pub fn proxy_authorization(&self) -> Option<AuthValue<'_>> {
        self.auth(HeaderName::ProxyAuthorization)
    }

    /// The first WWW-Authenticate value.
    pub fn www_authenticate(&self) -> Option<AuthValue<'_>> {
        self.auth(HeaderName::WwwAuthenticate)
    }

    /// The first Proxy-Authenticate value.
    pub fn proxy_authenticate(&self) -> Option<AuthValue<'_>> {
        self.auth(HeaderName::ProxyAuthenticate)
    }

    fn auth(&self, name: HeaderName) -> Option<AuthValue<'_>> {
        let h = self.headers.iter().find(|h| h.name == name)?;
        AuthValue::parse(&self.buf, h.value)
    }

    /// The body (exactly Content-Length octets when given).
    pub fn body(&self) -> &[u8] {
        self.body.of(&self.buf)
    }

    /// The body as a shared slice of the buffer (no copy).
    pub fn body_bytes(&self) -> Bytes {
        self.buf.slice(self.body.range())
    }

    /// The body's span.
    pub fn body_span(&self) -> Span {
        self.body
    }

    /// Offset of the first body octet (just past the empty line).
    pub fn headers_end(&self) -> usize {
        self.headers_end as usize
    }

    fn list<'s, T: 's>(
        &'s self,
        name: HeaderName,
        parse: fn(&mut Cursor<'_>) -> Option<T>,
    ) -> impl Iterator<Item = T> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .flat_map(move |h| ListValues {
                cursor: Cursor::new(&self.buf, h.value),
                first: true,
                parse,
            })
    }
}

/// The comma-separated values of one header field.
struct ListValues<'a, T> {
    cursor: Cursor<'a>,
    first: bool,
    parse: fn(&mut Cursor<'_>) -> Option<T>,
}

impl<T> Iterator for ListValues<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let c = &mut self.cursor;
        if !self.first && !c.sep(b',') {
            return None;
        }
        self.first = false;
        if c.rest() == b"*" {
            return None;
        }
        (self.parse)(c)
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("start", &self.start)
            .field("call_id", &self.call_id())
            .field("cseq", &self.cseq)
            .field("headers", &self.headers.len())
            .field("body_len", &self.body.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Message::parse` returns the message by value, so every parse
    /// copies it at least once (and its headers once more, into it): a
    /// bigger one costs every parse a longer copy. Session 20 measured
    /// these sizes and found no smaller layout that paid for itself
    /// (BENCHMARKS.md, Parsing); keep them from growing unnoticed.
    #[test]
    fn message_does_not_grow() {
        let (message, header) = (size_of::<Message>(), size_of::<Header>());
        assert!(header <= 24, "Header grew to {header} bytes");
        assert!(message <= 1024, "Message grew to {message} bytes");
        assert_eq!(size_of::<Result<Message, ParseError>>(), message);
    }
}
