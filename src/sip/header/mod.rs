//! Typed header values, parsed into spans of the message buffer.
//!
//! Every parser here takes a cursor over one header value and returns
//! `None` on malformed input, leaving the cursor where parsing stopped so
//! the caller can report that offset.

pub mod auth;
pub mod join;
pub mod name_addr;
pub mod simple;
pub mod via;

use super::chars::{GENVAL, TOKEN};
use super::scan::Cursor;
use super::span::Span;

/// `*( SEMI generic-param )` where `generic-param = token [ EQUAL gen-value ]`
/// and `gen-value = token / host / quoted-string`. Calls `each(name, value)`
/// per parameter (a quoted value is given without its quotes) and returns
/// the span of the whole parameter list.
#[inline]
pub(crate) fn params(
    c: &mut Cursor<'_>,
    mut each: impl FnMut(Span, Option<Span>) -> Option<()>,
) -> Option<Span> {
    let start = c.pos;
    while c.sep(b';') {
        let name = c.take1(TOKEN)?;
        let value = if c.sep(b'=') {
            Some(gen_value(c)?)
        } else {
            None
        };
        each(name, value)?;
    }
    Some(Span::new(start, c.pos))
}

/// `gen-value`; a quoted string's span excludes the quotes.
#[inline]
pub(crate) fn gen_value(c: &mut Cursor<'_>) -> Option<Span> {
    if c.peek() == Some(b'"') {
        c.quoted()
    } else {
        c.take1(GENVAL)
    }
}

/// Iterator over the `;name[=value]` parameters of a header value, as
/// written (quoted values without their quotes, escapes kept).
#[derive(Clone)]
pub struct HeaderParams<'a> {
    cursor: Cursor<'a>,
}

impl<'a> HeaderParams<'a> {
    pub(crate) fn new(src: &'a [u8], span: Span) -> Self {
        HeaderParams {
            cursor: Cursor::new(src, span),
        }
    }

    /// The value of parameter `name` (case-insensitive): `Some(None)` for a
    /// parameter without a value.
    pub fn get(mut self, name: &str) -> Option<Option<&'a [u8]>> {
        self.find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

impl<'a> Iterator for HeaderParams<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let c = &mut self.cursor;
        if !c.sep(b';') {
            return None;
        }
        let name = c.take1(TOKEN)?;
        let value = if c.sep(b'=') {
            Some(gen_value(c)?)
        } else {
            None
        };
        Some((name.of(c.src), value.map(|v| v.of(c.src))))
    }
}

/// Whether parameter `name` is `want` (case-insensitive); `want` is
/// lowercase letters, as every parameter name asked for is.
#[inline]
pub(crate) fn is_param(src: &[u8], name: Span, want: &[u8]) -> bool {
    super::name::eq_lower(name.of(src), want)
}
