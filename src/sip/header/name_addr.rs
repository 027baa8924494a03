//! `name-addr / addr-spec` with header parameters: From, To, Contact, Route,
//! Record-Route (RFC 3261 §20, §25).

use super::super::chars::TOKEN;
use super::super::scan::Cursor;
use super::super::span::Span;
use super::super::uri::{self, Scheme, Uri, UriSpans};
use super::{HeaderParams, is_param, params};

/// The spans of one `name-addr` or `addr-spec` and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddrSpans {
    /// The whole value, parameters included.
    pub all: Span,
    /// The display name: inside the quotes, or the run of tokens.
    pub display: Option<Span>,
    /// Whether the URI was written in `<…>`.
    pub angle: bool,
    /// The URI.
    pub uri: UriSpans,
    /// The header parameters, from the first `;` (empty if none).
    pub params: Span,
    /// The `tag` parameter's value.
    pub tag: Option<Span>,
    /// The `expires` parameter's value (Contact).
    pub expires: Option<Span>,
}

/// A parsed From, To, Contact, Route or Record-Route value.
#[derive(Debug, Clone, Copy)]
pub struct NameAddr<'a> {
    src: &'a [u8],
    spans: NameAddrSpans,
}

impl<'a> NameAddr<'a> {
    pub(crate) fn new(src: &'a [u8], spans: NameAddrSpans) -> Self {
        NameAddr { src, spans }
    }

    /// The spans, to store without the borrow.
    pub fn spans(&self) -> NameAddrSpans {
        self.spans
    }

    /// The whole value as written.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.spans.all.of(self.src)
    }

    /// The display name as written (without quotes; quoted-pairs kept).
    pub fn display_name(&self) -> Option<&'a [u8]> {
        self.spans.display.map(|s| s.of(self.src))
    }

    /// The URI.
    pub fn uri(&self) -> Uri<'a> {
        Uri::new(self.src, self.spans.uri)
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&'a str> {
        self.spans.tag.map(|s| s.str(self.src))
    }

    /// One value on its own, such as a From or To kept as text; `None`
    /// when it does not parse.
    pub fn parse_value(src: &'a [u8]) -> Option<NameAddr<'a>> {
        let mut c = Cursor::new(src, Span::new(0, src.len()));
        let spans = parse(&mut c, false)?;
        Some(NameAddr::new(src, spans))
    }

    /// The `expires` parameter, saturating at `u32::MAX`; `None` if absent
    /// or not a number.
    pub fn expires(&self) -> Option<u32> {
        self.spans
            .expires
            .and_then(|s| super::super::scan::parse_u32_saturating(s.of(self.src)))
    }

    /// The header parameters.
    pub fn params(&self) -> HeaderParams<'a> {
        HeaderParams::new(self.src, self.spans.params)
    }
}

/// Parses one `( name-addr / addr-spec ) *( SEMI generic-param )` at the
/// cursor. With `angle_only`, the URI must be in `<…>` (Route,
/// Record-Route). Stops before a `,` or at the end of the value.
pub(crate) fn parse(c: &mut Cursor<'_>, angle_only: bool) -> Option<NameAddrSpans> {
    let src = c.src;
    c.lws();
    let start = c.pos;
    let mut display = None;
    let angle;
    match c.peek()? {
        b'"' => {
            display = Some(c.quoted()?);
            c.lws();
            angle = true;
        }
        b'<' => angle = true,
        _ => {
            // `*(token LWS) "<"` is a display name; anything else is an
            // addr-spec. RFC 4475 §3.1.1.6: tolerate no LWS before '<'.
            let mut probe = *c;
            let mut found = false;
            while probe.take1(TOKEN).is_some() {
                let end = probe.pos;
                probe.lws();
                if probe.peek() == Some(b'<') {
                    display = Some(Span::new(start, end));
                    *c = probe;
                    found = true;
                    break;
                }
            }
            angle = found;
        }
    }
    if angle_only && !angle {
        return None;
    }
    let uri = if angle {
        if !c.eat(b'<') {
            return None;
        }
        let close = c.pos + super::super::simd::find_byte(c.rest(), b'>')?;
        let uri = uri::parse(src, Span::new(c.pos, close))?;
        c.pos = close + 1;
        uri
    } else {
        // In an addr-spec, ';' starts header parameters and ',' the next
        // value; a URI holding either, or '?', must be in angle brackets.
        let uri_start = c.pos;
        while c
            .peek()
            .is_some_and(|b| !matches!(b, b';' | b',' | b' ' | b'\t' | b'\r' | b'\n'))
        {
            c.pos += 1;
        }
        let uri = uri::parse(src, Span::new(uri_start, c.pos))?;
        if matches!(uri.scheme, Scheme::Sip | Scheme::Sips) && !uri.headers.is_empty() {
            return None;
        }
        uri
    };
    let mut tag = None;
    let mut expires = None;
    let params = params(c, |name, value| {
        if is_param(src, name, b"tag") {
            tag = Some(value?);
        } else if is_param(src, name, b"expires") {
            expires = Some(value?);
        }
        Some(())
    })?;
    let all = c.span_from(start);
    Some(NameAddrSpans {
        all,
        display,
        angle,
        uri,
        params,
        tag,
        expires,
    })
}

/// Parses a comma-separated list of name-addr values filling `span`,
/// calling `each` per value. `None` (cursor at the fault) if malformed.
pub(crate) fn parse_list(
    c: &mut Cursor<'_>,
    angle_only: bool,
    mut each: impl FnMut(NameAddrSpans),
) -> Option<()> {
    loop {
        let value = parse(c, angle_only)?;
        each(value);
        c.lws();
        if c.at_end() {
            return Some(());
        }
        if !c.sep(b',') {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Option<(NameAddrSpans, usize)> {
        let mut c = Cursor::new(s.as_bytes(), Span::new(0, s.len()));
        let v = parse(&mut c, false)?;
        c.lws();
        Some((v, c.pos))
    }

    #[test]
    fn forms() {
        let s = r#""Alice \"A\"" <sip:alice@example.com;transport=tcp> ;tag = 77;x"#;
        let (v, end) = one(s).unwrap();
        assert_eq!(end, s.len());
        let na = NameAddr::new(s.as_bytes(), v);
        assert_eq!(na.display_name(), Some(&br#"Alice \"A\""#[..]));
        assert_eq!(na.uri().host(), "example.com");
        assert_eq!(na.tag(), Some("77"));
        assert_eq!(na.params().get("x"), Some(None));

        let s = "sip:+1972@gw1.example.net;unknownparam";
        let na = NameAddr::new(s.as_bytes(), one(s).unwrap().0);
        assert_eq!(
            na.uri().params().count(),
            0,
            "addr-spec params are header params"
        );
        assert_eq!(na.params().get("unknownparam"), Some(None));

        let s = "caller<sip:caller@example.com>;tag=323";
        let na = NameAddr::new(s.as_bytes(), one(s).unwrap().0);
        assert_eq!(na.display_name(), Some(&b"caller"[..]));

        let s = "token1~` token2'+_ <sip:x@example.com>";
        assert!(one(s).is_some());
    }

    #[test]
    fn malformed() {
        assert!(one(r#""Mr. J. User <sip:j.user@example.com>"#).is_none());
        assert!(one(r#""Watson" < sip:t.watson@example.org >"#).is_none());
        assert!(one("sip:user@example.com?Route=%3Csip:x%3E").is_none());
        assert!(one(r#""Joe" <sip:joe@example.org>;;;;"#).is_none());
        assert!(one("<sip:joe@example.org").is_none());
        assert!(one("").is_none());
    }
}
