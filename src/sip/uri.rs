//! URIs (RFC 3261 §19.1, §25): `sip:`, `sips:`, `tel:` and opaque absolute
//! URIs of any other scheme, parsed into spans of the message buffer.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};

use super::chars::{self, HNV, HOST, LABEL, PARAM, PASSWORD, TEL, URIC, USER};
use super::scan::Cursor;
use super::simd;
use super::span::Span;

/// A URI scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `sip:`
    Sip,
    /// `sips:`
    Sips,
    /// `tel:` (RFC 3966)
    Tel,
    /// Any other scheme; the rest of the URI is opaque.
    Other,
}

/// What kind of host a SIP URI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// A domain name.
    Name,
    /// A dotted-quad IPv4 address.
    Ipv4,
    /// An IPv6 reference, brackets included in the span.
    Ipv6,
    /// No host: `tel:` and opaque URIs.
    None,
}

/// The spans of a parsed URI. Use [`Uri`] to read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UriSpans {
    /// The scheme.
    pub scheme: Scheme,
    /// The whole URI.
    pub all: Span,
    /// The user part, escapes kept (sip/sips).
    pub user: Option<Span>,
    /// The password, escapes kept.
    pub password: Option<Span>,
    /// The host (sip/sips), the number (tel), or the opaque part (other).
    pub host: Span,
    /// The kind of host.
    pub host_kind: HostKind,
    /// The port, if given.
    pub port: Option<u16>,
    /// The parameters, from the first `;` on (empty if none).
    pub params: Span,
    /// The headers after `?` (empty if none).
    pub headers: Span,
}

/// A parsed URI: borrowed views into the message buffer.
#[derive(Debug, Clone, Copy)]
pub struct Uri<'a> {
    src: &'a [u8],
    spans: UriSpans,
}

impl<'a> Uri<'a> {
    pub(crate) fn new(src: &'a [u8], spans: UriSpans) -> Self {
        Uri { src, spans }
    }

    /// Parses `text` as a URI on its own (not inside a message).
    pub fn parse(text: &'a [u8]) -> Option<Uri<'a>> {
        let spans = parse(text, Span::new(0, text.len()))?;
        Some(Uri { src: text, spans })
    }

    /// The spans, to store without the borrow.
    pub fn spans(&self) -> UriSpans {
        self.spans
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.spans.scheme
    }

    /// The whole URI as written.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.spans.all.of(self.src)
    }

    /// The whole URI as text (`""` if it holds non-UTF-8 octets).
    pub fn as_str(&self) -> &'a str {
        self.spans.all.str(self.src)
    }

    /// The user part as written (escapes kept).
    pub fn user(&self) -> Option<&'a [u8]> {
        self.spans.user.map(|s| s.of(self.src))
    }

    /// The user part with its escapes undone: `sip:%31002@…` names user
    /// `1002` (RFC 3261 §19.1.4). Borrowed unless the user holds an
    /// escape, which no phone writes.
    pub fn user_unescaped(&self) -> Option<Cow<'a, [u8]>> {
        let user = self.user()?;
        Some(if user.contains(&b'%') {
            Cow::Owned(chars::unescaped(user).collect())
        } else {
            Cow::Borrowed(user)
        })
    }

    /// [`Uri::user_unescaped`] as text (an extension), when it is UTF-8.
    pub fn user_str(&self) -> Option<Cow<'a, str>> {
        match self.user_unescaped()? {
            Cow::Borrowed(user) => std::str::from_utf8(user).ok().map(Cow::Borrowed),
            Cow::Owned(user) => String::from_utf8(user).ok().map(Cow::Owned),
        }
    }

    /// Whether the user part equals `user` after unescaping (§19.1.4).
    pub fn user_is(&self, user: &[u8]) -> bool {
        self.user()
            .is_some_and(|u| chars::eq_unescaped(u, user, false))
    }

    /// The password as written.
    pub fn password(&self) -> Option<&'a [u8]> {
        self.spans.password.map(|s| s.of(self.src))
    }

    /// The host as written (IPv6 with brackets); for `tel:` the number,
    /// for other schemes the opaque part.
    pub fn host(&self) -> &'a str {
        self.spans.host.str(self.src)
    }

    /// The kind of host.
    pub fn host_kind(&self) -> HostKind {
        self.spans.host_kind
    }

    /// The host as an IP address, when it is an IPv4 or IPv6 literal.
    pub fn ip(&self) -> Option<IpAddr> {
        host_ip(self.spans.host.of(self.src), self.host_kind())
    }

    /// The port, if written.
    pub fn port(&self) -> Option<u16> {
        self.spans.port
    }

    /// Whether `other` names the same host: the same IP address however
    /// it is written (`[::1]`, `[0:0:0:0:0:0:0:1]`, `[0::1]`), or the same
    /// name regardless of case (RFC 3261 §19.1.4).
    pub fn same_host(&self, other: &Uri<'_>) -> bool {
        match (self.ip(), other.ip()) {
            (Some(a), Some(b)) => a == b,
            _ => self.host().eq_ignore_ascii_case(other.host()),
        }
    }

    /// The parameters, in order: `(name, value)` as written.
    pub fn params(&self) -> Params<'a> {
        Params {
            rest: self.spans.params.of(self.src),
        }
    }

    /// The value of parameter `name` (compared case-insensitively after
    /// unescaping): `Some(None)` for a parameter without a value.
    pub fn param(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.params()
            .find(|(n, _)| chars::eq_unescaped(n, name.as_bytes(), true))
            .map(|(_, v)| v)
    }

    /// Whether the URI carries the loose-routing `lr` parameter.
    pub fn is_loose_route(&self) -> bool {
        self.param("lr").is_some()
    }

    /// The headers part after `?`, as written.
    pub fn headers(&self) -> &'a [u8] {
        self.spans.headers.of(self.src)
    }
}

/// Iterator over `;name[=value]` URI parameters.
#[derive(Debug, Clone)]
pub struct Params<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Params<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let body = self.rest.strip_prefix(b";")?;
        let end = memchr::memchr(b';', body).unwrap_or(body.len());
        let (param, rest) = body.split_at(end);
        self.rest = rest;
        Some(match memchr::memchr(b'=', param) {
            Some(eq) => (&param[..eq], Some(&param[eq + 1..])),
            None => (param, None),
        })
    }
}

/// Parses the URI that exactly fills `span` of `src`.
pub(crate) fn parse(src: &[u8], span: Span) -> Option<UriSpans> {
    let mut c = Cursor::new(src, span);
    let scheme = if is_sip_colon(c.rest()) {
        c.pos += 4;
        Scheme::Sip
    } else {
        scheme(&mut c)?
    };
    let mut uri = UriSpans {
        scheme,
        all: span,
        user: None,
        password: None,
        host: Span::default(),
        host_kind: HostKind::None,
        port: None,
        params: Span::new(c.end, c.end),
        headers: Span::new(c.end, c.end),
    };
    match scheme {
        Scheme::Sip | Scheme::Sips => sip_uri(&mut c, &mut uri)?,
        Scheme::Tel => {
            uri.host = c.take1(TEL)?;
            if !chars::escapes_valid(uri.host.of(src)) {
                return None;
            }
            uri.params = params(&mut c)?;
        }
        Scheme::Other => {
            // opaque-part / hier-part: uric characters, with escapes valid.
            uri.host = c.take1(URIC)?;
            if !chars::escapes_valid(uri.host.of(src)) {
                return None;
            }
        }
    }
    c.at_end().then_some(uri)
}

/// Whether `s` starts with `sip:` in any case (the scheme of nearly every
/// URI a proxy reads), compared as one word.
#[inline]
fn is_sip_colon(s: &[u8]) -> bool {
    s.get(..4).is_some_and(|p| {
        let w = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        // Fold the three letters only: `:` must match exactly.
        w | 0x0020_2020 == u32::from_le_bytes(*b"sip:")
    })
}

/// `scheme ":"`: `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn scheme(c: &mut Cursor<'_>) -> Option<Scheme> {
    if !c.peek()?.is_ascii_alphabetic() {
        return None;
    }
    let scheme_start = c.pos;
    while c
        .peek()
        .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        c.pos += 1;
    }
    let name = &c.src[scheme_start..c.pos];
    if !c.eat(b':') {
        return None;
    }
    Some(if name.eq_ignore_ascii_case(b"sip") {
        Scheme::Sip
    } else if name.eq_ignore_ascii_case(b"sips") {
        Scheme::Sips
    } else if name.eq_ignore_ascii_case(b"tel") {
        Scheme::Tel
    } else {
        Scheme::Other
    })
}

fn sip_uri(c: &mut Cursor<'_>, uri: &mut UriSpans) -> Option<()> {
    let src = c.src;
    // The first '@' ends the userinfo: user, password, parameters and
    // headers admit '@' only escaped. Host characters are user characters
    // too, so one run finds it: the run stops at the userinfo's '@', or at
    // a ':' (a password, or a port), or anywhere else when there is no
    // userinfo (an '@' further on then fails the host, port, parameter
    // and header grammar below, as it would fail the userinfo here).
    let rest = c.rest();
    let run = chars::run(rest, USER);
    let at = match rest.get(run) {
        Some(b'@') => Some(run),
        Some(b':') => memchr::memchr(b'@', &rest[run..]).map(|i| run + i),
        _ => None,
    };
    if let Some(at) = at {
        let at = c.pos + at;
        let user_end = c.pos + run;
        if user_end == c.pos {
            return None;
        }
        uri.user = Some(Span::new(c.pos, user_end));
        if user_end < at {
            if src[user_end] != b':' {
                return None;
            }
            let pw_end = user_end + 1 + chars::run(&src[user_end + 1..at], PASSWORD);
            if pw_end != at {
                return None;
            }
            uri.password = Some(Span::new(user_end + 1, at));
        }
        if !chars::escapes_valid(&src[c.pos..at]) {
            return None;
        }
        c.pos = at + 1;
    }
    let (host, kind) = host(c)?;
    uri.host = host;
    uri.host_kind = kind;
    if c.eat(b':') {
        uri.port = Some(c.number(65535)? as u16);
    }
    uri.params = match c.peek() {
        Some(b';') => params(c)?,
        _ => Span::new(c.pos, c.pos),
    };
    if c.eat(b'?') {
        let start = c.pos;
        loop {
            c.take1(HNV)?;
            if !c.eat(b'=') {
                return None;
            }
            c.take(HNV);
            if !c.eat(b'&') {
                break;
            }
        }
        uri.headers = Span::new(start, c.pos);
        if !chars::escapes_valid(uri.headers.of(src)) {
            return None;
        }
    }
    Some(())
}

/// `*( ";" pname [ "=" pvalue ] )` with escapes checked.
fn params(c: &mut Cursor<'_>) -> Option<Span> {
    let start = c.pos;
    while c.eat(b';') {
        c.take1(PARAM)?;
        if c.eat(b'=') {
            c.take1(PARAM)?;
        }
    }
    let span = Span::new(start, c.pos);
    chars::escapes_valid(span.of(c.src)).then_some(span)
}

/// `host = hostname / IPv4address / IPv6reference`
#[inline(always)]
pub(crate) fn host(c: &mut Cursor<'_>) -> Option<(Span, HostKind)> {
    let start = c.pos;
    if c.peek()? == b'[' {
        let close = memchr::memchr(b']', c.rest())?;
        c.pos += close + 1;
        let span = Span::new(start, c.pos);
        return ipv6_ok(&span.of(c.src)[1..close]).then_some((span, HostKind::Ipv6));
    }
    // Most hosts a proxy sees are IPv4 literals: one pass reads and checks
    // them. Anything else (a name that starts with a digit included) takes
    // the general path below.
    if let Some(len) = ipv4_prefix(c.rest()) {
        c.pos = start + len;
        return Some((Span::new(start, c.pos), HostKind::Ipv4));
    }
    // Host names up to 15 bytes are checked on 16-byte masks.
    if let Some(len) = short_host_name(c) {
        c.pos = start + len;
        return Some((Span::new(start, c.pos), HostKind::Name));
    }
    host_or_ipv4(c)
}

/// Length of the host name at the cursor when it is valid and shorter
/// than 16 bytes, decided on [`simd::host_masks`] bit masks; `None` for
/// anything else (longer, malformed, IPv4, or too near the buffer's end),
/// which [`host_or_ipv4`] then decides byte by byte.
#[inline]
fn short_host_name(c: &Cursor<'_>) -> Option<usize> {
    let masks = simd::host_masks(c.src, c.pos)?;
    // Only the cursor's range counts: clear what lies beyond its end.
    let in_range = match c.end - c.pos {
        avail @ 0..16 => (1u32 << avail) - 1,
        _ => 0xffff,
    };
    let len = (!(masks.host & in_range)).trailing_zeros();
    if len == 0 || len >= 16 {
        return None;
    }
    let mut dots = masks.dot & ((1 << len) - 1);
    // One trailing dot is allowed; it ends the name without a label.
    let mut labels_len = len;
    if dots >> (len - 1) & 1 == 1 {
        labels_len -= 1;
        dots &= !(1 << labels_len);
    }
    if labels_len == 0 {
        return None;
    }
    let last = 1u32 << (labels_len - 1);
    // Labels are not empty: no dot first, last, or after another dot.
    if dots & (1 | last | dots >> 1) != 0 {
        return None;
    }
    // Nor start or end with '-'.
    let label_starts = 1 | dots << 1;
    let label_ends = last | dots >> 1;
    if masks.dash & (label_starts | label_ends) != 0 {
        return None;
    }
    // The top label starts with a letter; a digit leaves only IPv4.
    let top = if dots == 0 {
        0
    } else {
        32 - dots.leading_zeros()
    };
    c.src
        .get(c.pos + top as usize)
        .is_some_and(u8::is_ascii_alphabetic)
        .then_some(len as usize)
}

/// `hostname / IPv4address` at the cursor, the general way.
fn host_or_ipv4(c: &mut Cursor<'_>) -> Option<(Span, HostKind)> {
    let start = c.pos;
    // Label by label, with `host_kind`'s rules: each label is a run of
    // alphanumerics and hyphens that starts and ends alphanumeric, labels
    // are joined by single dots, and one trailing dot is allowed. A valid
    // IPv4 address passes these checks too, so a top label that starts
    // with a digit leaves only IPv4 to check.
    let rest = c.rest();
    // A malformed host still consumes its whole run, so the error offset
    // stays where it always was.
    let bad = |c: &mut Cursor<'_>| {
        c.pos = start + chars::run(rest, HOST);
        None
    };
    let (mut len, mut top) = (0, 0u8);
    loop {
        let n = chars::run(&rest[len..], LABEL);
        if n == 0 {
            // Only a trailing dot may end without a label.
            if len == 0 || rest.get(len).is_some_and(|&b| chars::is(b, HOST)) {
                return bad(c);
            }
            break;
        }
        let label = &rest[len..len + n];
        if label[0] == b'-' || label[n - 1] == b'-' {
            return bad(c);
        }
        top = label[0];
        len += n;
        if rest.get(len) != Some(&b'.') {
            break;
        }
        len += 1;
    }
    let span = Span::new(start, start + len);
    c.pos = start + len;
    let kind = if top.is_ascii_digit() {
        // Not a host name: an IPv4 address or nothing.
        ipv4_ok(span.of(c.src)).then_some(HostKind::Ipv4)
    } else {
        Some(HostKind::Name)
    };
    Some((span, kind?))
}

/// Classifies a bare host: a valid IPv4 address or a valid host name.
pub(crate) fn host_kind(text: &[u8]) -> Option<HostKind> {
    if text.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
        return ipv4_ok(text).then_some(HostKind::Ipv4);
    }
    // hostname = *( domainlabel "." ) toplabel [ "." ]; labels are
    // alphanumerics and inner hyphens; the top label starts with a letter.
    let trimmed = text.strip_suffix(b".").unwrap_or(text);
    let mut top = None;
    for label in trimmed.split(|&b| b == b'.') {
        let (first, last) = (*label.first()?, *label.last()?);
        if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
            return None;
        }
        top = Some(first);
    }
    top.is_some_and(|b| b.is_ascii_alphabetic())
        .then_some(HostKind::Name)
}

/// Length of the IPv4 address that `s` starts with, when that address is
/// the whole host: the byte after it cannot continue a host name.
#[inline]
fn ipv4_prefix(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    for group in 0..4 {
        if group > 0 {
            if s.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let (mut value, digits_start) = (0u32, i);
        while let Some(d) = s.get(i).map(|b| b.wrapping_sub(b'0')).filter(|d| *d < 10) {
            value = value * 10 + u32::from(d);
            i += 1;
            if i - digits_start > 3 {
                return None;
            }
        }
        if i == digits_start || value > 255 {
            return None;
        }
    }
    match s.get(i) {
        Some(&b) if chars::is(b, HOST) => None,
        _ => Some(i),
    }
}

/// The address of a host the parser classified as `kind`: an IPv4 address,
/// or an IPv6 reference (brackets included). Read from the bytes: the
/// IPv4 case, on every request's path, needs no UTF-8 check and no
/// general address parser.
pub(crate) fn host_ip(text: &[u8], kind: HostKind) -> Option<IpAddr> {
    match kind {
        HostKind::Ipv4 => ipv4_addr(text).map(IpAddr::V4),
        HostKind::Ipv6 => std::str::from_utf8(text.strip_prefix(b"[")?.strip_suffix(b"]")?)
            .ok()?
            .parse()
            .ok(),
        _ => None,
    }
}

/// The address an `IPv4address` stands for ([`ipv4_ok`]'s grammar; leading
/// zeros allowed, as the grammar allows them).
fn ipv4_addr(text: &[u8]) -> Option<Ipv4Addr> {
    // One pass, no splitting: a received parameter is checked with it on
    // every response's path.
    let mut octets = [0u8; 4];
    let (mut group, mut digits, mut value) = (0, 0, 0u32);
    for &b in text {
        if b == b'.' {
            if digits == 0 || group == 3 {
                return None;
            }
            octets[group] = value as u8;
            group += 1;
            (digits, value) = (0, 0);
        } else if b.is_ascii_digit() {
            digits += 1;
            value = value * 10 + u32::from(b - b'0');
            if digits > 3 || value > 255 {
                return None;
            }
        } else {
            return None;
        }
    }
    octets[3] = value as u8;
    (group == 3 && digits > 0).then_some(Ipv4Addr::from(octets))
}

/// `IPv4address = 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT`, each
/// at most 255 (leading zeros allowed).
pub(crate) fn ipv4_ok(text: &[u8]) -> bool {
    ipv4_addr(text).is_some()
}

/// `IPv6reference = "[" IPv6address "]"`, checked by [`ipv6_ok`].
pub(crate) fn ipv6_reference_ok(text: &[u8]) -> bool {
    text.strip_prefix(b"[")
        .and_then(|t| t.strip_suffix(b"]"))
        .is_some_and(ipv6_ok)
}

/// `IPv6address` (RFC 3261 §25.1), the inside of an `IPv6reference`:
///
/// ```text
/// IPv6address = hexpart [ ":" IPv4address ]
/// hexpart     = hexseq / hexseq "::" [ hexseq ] / "::" [ hexseq ]
/// hexseq      = hex4 *( ":" hex4 )
/// hex4        = 1*4HEXDIG
/// ```
///
/// with RFC 4291's counts, which the ABNF leaves out: eight 16-bit groups
/// without `::`, at most seven with it, at most one `::`; an IPv4 tail
/// counts as two groups and is a valid [`ipv4_ok`] address (leading zeros
/// allowed, as `1*3DIGIT` says). The ABNF cannot put `::` directly before
/// the IPv4 tail (`2001:db8::192.0.2.1`) but writes `:::` there instead;
/// RFC 5118 §4.10 calls the first correct and asks parsers to tolerate the
/// second, so both pass. `:::` anywhere else is refused.
pub(crate) fn ipv6_ok(s: &[u8]) -> bool {
    // `groups` written so far; `gap` once "::" is seen; `after_gap` while
    // `i` sits just past it, where the address may end.
    let (mut groups, mut gap, mut after_gap) = (0, false, false);
    let mut i = 0;
    if s.starts_with(b"::") {
        (gap, after_gap, i) = (true, true, 2);
    }
    loop {
        if after_gap {
            match s.get(i) {
                None => break,
                // RFC 5118 §4.10: "::" ":" IPv4address.
                Some(b':') => return groups <= 5 && ipv4_ok(&s[i + 1..]),
                Some(_) => {}
            }
        }
        let start = i;
        while s.get(i).is_some_and(u8::is_ascii_hexdigit) {
            i += 1;
        }
        if s.get(i) == Some(&b'.') {
            // The IPv4 tail: two groups, and the last thing.
            let room = if gap { groups <= 5 } else { groups == 6 };
            return room && ipv4_ok(&s[start..]);
        }
        if !(1..=4).contains(&(i - start)) {
            return false;
        }
        groups += 1;
        match &s[i..] {
            [] => break,
            [b':', b':', ..] if !gap => (gap, after_gap, i) = (true, true, i + 2),
            // A second "::" fails at the next group, which is empty.
            [b':', ..] => (after_gap, i) = (false, i + 1),
            _ => return false,
        }
    }
    if gap { groups <= 7 } else { groups == 8 }
}

#[cfg(test)]
mod tests;
