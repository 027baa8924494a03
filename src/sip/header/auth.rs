//! Authorization, Proxy-Authorization, WWW-Authenticate and
//! Proxy-Authenticate (RFC 3261 §25, RFC 8760): a scheme followed by
//! comma-separated `name=value` parameters.

use super::super::chars::TOKEN;
use super::super::scan::Cursor;
use super::super::span::Span;
use super::gen_value;

/// A credentials or challenge value: the scheme and its parameters.
#[derive(Debug, Clone, Copy)]
pub struct AuthValue<'a> {
    src: &'a [u8],
    scheme: Span,
    params: Span,
}

impl<'a> AuthValue<'a> {
    /// Parses a header value; `None` if it has no scheme token.
    pub(crate) fn parse(src: &'a [u8], value: Span) -> Option<Self> {
        let mut c = Cursor::new(src, value);
        c.lws();
        let scheme = c.take1(TOKEN)?;
        if !c.at_end() && !c.lws() {
            return None;
        }
        Some(AuthValue {
            src,
            scheme,
            params: Span::new(c.pos, value.end as usize),
        })
    }

    /// The scheme, e.g. `Digest`.
    pub fn scheme(&self) -> &'a str {
        self.scheme.str(self.src)
    }

    /// Whether the scheme is Digest (case-insensitive).
    pub fn is_digest(&self) -> bool {
        self.scheme().eq_ignore_ascii_case("digest")
    }

    /// The parameters in order, quoted values without their quotes. Stops
    /// at the first malformed parameter.
    pub fn params(&self) -> AuthParams<'a> {
        AuthParams {
            cursor: Cursor::new(self.src, self.params),
            first: true,
        }
    }

    /// The value of parameter `name` (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The Digest parameters (RFC 2617 / RFC 8760), when the scheme is
    /// Digest and every parameter is well formed.
    pub fn digest(&self) -> Option<DigestParams<'a>> {
        if !self.is_digest() {
            return None;
        }
        let mut d = DigestParams::default();
        let mut params = self.params();
        for (name, value) in params.by_ref() {
            let slot = match name.to_ascii_lowercase().as_str() {
                "username" => &mut d.username,
                "realm" => &mut d.realm,
                "nonce" => &mut d.nonce,
                "uri" => &mut d.uri,
                "response" => &mut d.response,
                "algorithm" => &mut d.algorithm,
                "cnonce" => &mut d.cnonce,
                "opaque" => &mut d.opaque,
                "qop" => &mut d.qop,
                "nc" => &mut d.nc,
                "stale" => &mut d.stale,
                "domain" => &mut d.domain,
                _ => continue,
            };
            *slot = Some(value);
        }
        params.finished_cleanly().then_some(d)
    }
}

/// The Digest parameters sipblade reads; all optional at this layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct DigestParams<'a> {
    pub username: Option<&'a str>,
    pub realm: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub uri: Option<&'a str>,
    pub response: Option<&'a str>,
    pub algorithm: Option<&'a str>,
    pub cnonce: Option<&'a str>,
    pub opaque: Option<&'a str>,
    pub qop: Option<&'a str>,
    pub nc: Option<&'a str>,
    pub stale: Option<&'a str>,
    pub domain: Option<&'a str>,
}

/// Iterator over `name = (token / quoted-string)` auth parameters.
#[derive(Clone)]
pub struct AuthParams<'a> {
    cursor: Cursor<'a>,
    first: bool,
}

impl AuthParams<'_> {
    fn finished_cleanly(&self) -> bool {
        let mut c = self.cursor;
        c.lws();
        c.at_end()
    }
}

impl<'a> Iterator for AuthParams<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let c = &mut self.cursor;
        let save = c.pos;
        if self.first {
            self.first = false;
            c.lws();
            if c.at_end() {
                return None;
            }
        } else if !c.sep(b',') {
            return None;
        }
        let item = (|| {
            let name = c.take1(TOKEN)?;
            if !c.sep(b'=') {
                return None;
            }
            let value = gen_value(c)?;
            Some((name.str(c.src), value.str(c.src)))
        })();
        if item.is_none() {
            c.pos = save;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_credentials() {
        let s = "Digest username=\"1001\", realm=\"cc.example\",\r\n nonce=\"abc\", \
                 uri=\"sip:cc.example\", response=\"0123\", algorithm=SHA-256, qop=auth, \
                 nc=00000001, cnonce=\"xyz\"";
        let v = AuthValue::parse(s.as_bytes(), Span::new(0, s.len())).unwrap();
        let d = v.digest().unwrap();
        assert_eq!(d.username, Some("1001"));
        assert_eq!(d.algorithm, Some("SHA-256"));
        assert_eq!(d.nc, Some("00000001"));
        assert_eq!(d.cnonce, Some("xyz"));
    }

    #[test]
    fn other_schemes_and_junk() {
        let s = "NoOneKnowsThisScheme opaque-data=here";
        let v = AuthValue::parse(s.as_bytes(), Span::new(0, s.len())).unwrap();
        assert_eq!(v.scheme(), "NoOneKnowsThisScheme");
        assert!(v.digest().is_none());
        let s = "Digest username=\"x\", ,";
        let v = AuthValue::parse(s.as_bytes(), Span::new(0, s.len())).unwrap();
        assert!(v.digest().is_none());
    }
}
