//! Single-token headers: CSeq, Call-ID, the numeric headers and option-tag
//! lists (Require, Proxy-Require, Supported, Unsupported).

use super::super::chars::{TOKEN, WORD};
use super::super::method::Method;
use super::super::scan::Cursor;
use super::super::span::Span;

/// A parsed CSeq: `1*DIGIT LWS Method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq {
    /// The sequence number.
    pub seq: u32,
    /// The method.
    pub method: Method,
    /// The method as written (for extension methods).
    pub method_span: Span,
}

/// Parses a CSeq value filling the cursor.
#[inline]
pub(crate) fn cseq(c: &mut Cursor<'_>) -> Option<CSeq> {
    let seq = c.number(u32::MAX)?;
    if !c.lws() {
        return None;
    }
    let method_span = c.take1(TOKEN)?;
    c.lws();
    c.at_end().then_some(CSeq {
        seq,
        method: Method::from_bytes(method_span.of(c.src)),
        method_span,
    })
}

/// Checks a Call-ID, `word [ "@" word ]`, filling the cursor.
#[inline]
pub(crate) fn call_id(c: &mut Cursor<'_>) -> Option<Span> {
    let start = c.pos;
    c.take1(WORD)?;
    if c.eat(b'@') {
        c.take1(WORD)?;
    }
    let span = Span::new(start, c.pos);
    c.lws();
    c.at_end().then_some(span)
}

/// Parses `1*DIGIT` at most `max`, filling the cursor.
pub(crate) fn number(c: &mut Cursor<'_>, max: u32) -> Option<u32> {
    let v = c.number(max)?;
    c.lws();
    c.at_end().then_some(v)
}

/// Iterator over a comma-separated list of tokens (option tags, methods).
/// Stops at the first malformed element.
#[derive(Clone)]
pub struct Tokens<'a> {
    cursor: Cursor<'a>,
    first: bool,
}

impl<'a> Tokens<'a> {
    pub(crate) fn new(src: &'a [u8], span: Span) -> Self {
        Tokens {
            cursor: Cursor::new(src, span),
            first: true,
        }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let c = &mut self.cursor;
        if self.first {
            self.first = false;
            c.lws();
        } else if !c.sep(b',') {
            return None;
        }
        c.take1(TOKEN).map(|s| s.str(c.src))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(s: &str) -> Cursor<'_> {
        Cursor::new(s.as_bytes(), Span::new(0, s.len()))
    }

    #[test]
    fn cseq_forms() {
        let c = cseq(&mut cur("0009\r\n  INVITE")).unwrap();
        assert_eq!((c.seq, c.method), (9, Method::Invite));
        assert!(cseq(&mut cur("36893488147419103232 INVITE")).is_none());
        assert!(cseq(&mut cur("1INVITE")).is_none());
        assert!(cseq(&mut cur("1 INVITE x")).is_none());
        assert!(cseq(&mut cur("INVITE")).is_none());
        assert_eq!(
            cseq(&mut cur("4294967295 FOO")).unwrap().method,
            Method::Other
        );
    }

    #[test]
    fn call_ids() {
        assert!(call_id(&mut cur("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")).is_some());
        assert!(call_id(&mut cur("a@b@c")).is_none());
        assert!(call_id(&mut cur("a b")).is_none());
        assert!(call_id(&mut cur("")).is_none());
    }

    #[test]
    fn token_lists() {
        let s = "foo, bar ,\r\n baz";
        let t: Vec<_> = Tokens::new(s.as_bytes(), Span::new(0, s.len())).collect();
        assert_eq!(t, ["foo", "bar", "baz"]);
    }
}
