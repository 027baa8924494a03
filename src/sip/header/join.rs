//! The Join header (RFC 3911): which dialog a new INVITE asks to join, for
//! conferences and supervisor monitoring; and the Replaces header
//! (RFC 3891): which dialog a new INVITE asks to replace, for attended
//! transfer and call pickup.
//!
//! `Join = callid *(SEMI join-param)`, `join-param = to-param / from-param /
//! early-flag / generic-param`; the to-tag and the from-tag are both
//! required (RFC 3911 §6.1). Replaces has the same grammar
//! (`Replaces = callid *(SEMI replaces-param)`, RFC 3891 §6.1), so one
//! parser reads both.

use super::super::chars::WORD;
use super::super::scan::Cursor;
use super::super::span::Span;
use super::{is_param, params};

/// A parsed Join (or Replaces) header value: the dialog it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Join<'a> {
    /// The dialog's Call-ID.
    pub call_id: &'a str,
    /// The dialog's to-tag.
    pub to_tag: &'a str,
    /// The dialog's from-tag.
    pub from_tag: &'a str,
    /// `early-only`: join (replace) only a dialog that is not yet
    /// confirmed.
    pub early_only: bool,
}

/// A parsed Replaces header value (RFC 3891): the same grammar and fields
/// as [`Join`]. Its tags are as the receiving UA sees the dialog: the
/// to-tag is that UA's own.
pub type Replaces<'a> = Join<'a>;

impl<'a> Join<'a> {
    /// Parses a Join or Replaces header value (as [`crate::sip::Message::header_named`]
    /// returns it); `None` when it is malformed or lacks a tag.
    pub fn parse(value: &'a [u8]) -> Option<Join<'a>> {
        let mut c = Cursor::new(value, Span::new(0, value.len()));
        let start = c.pos;
        c.take1(WORD)?;
        if c.eat(b'@') {
            c.take1(WORD)?;
        }
        let call_id = Span::new(start, c.pos);
        let (mut to_tag, mut from_tag, mut early_only) = (None, None, false);
        params(&mut c, |name, v| {
            if is_param(value, name, b"to-tag") {
                to_tag = Some(v?);
            } else if is_param(value, name, b"from-tag") {
                from_tag = Some(v?);
            } else if is_param(value, name, b"early-only") {
                early_only = true;
            }
            Some(())
        })?;
        c.lws();
        if !c.at_end() {
            return None;
        }
        let text = |s: Span| std::str::from_utf8(s.of(value)).ok();
        Some(Join {
            call_id: text(call_id)?,
            to_tag: text(to_tag?)?,
            from_tag: text(from_tag?)?,
            early_only,
        })
    }

    /// Whether this names the dialog `call_id` whose tags are `a` and `b`,
    /// in either order: the Join's from-tag and to-tag are those of the
    /// receiving UA's view of the dialog, which is the reverse of the
    /// other party's.
    pub fn names(&self, call_id: &str, a: &str, b: &str) -> bool {
        self.call_id == call_id
            && ((self.from_tag == a && self.to_tag == b)
                || (self.from_tag == b && self.to_tag == a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_names_its_dialog() {
        let j = Join::parse(b"98732@sip.example.com;from-tag=r33th4x0r;to-tag=ff87ff")
            .expect("RFC 3911's example parses");
        assert_eq!(j.call_id, "98732@sip.example.com");
        assert_eq!((j.from_tag, j.to_tag), ("r33th4x0r", "ff87ff"));
        assert!(!j.early_only);
        assert!(j.names("98732@sip.example.com", "ff87ff", "r33th4x0r"));
        assert!(j.names("98732@sip.example.com", "r33th4x0r", "ff87ff"));
        assert!(!j.names("98732@sip.example.com", "r33th4x0r", "other"));
        assert!(!j.names("other", "r33th4x0r", "ff87ff"));
    }

    #[test]
    fn a_replaces_parses_as_a_join_does() {
        let r: Replaces<'_> =
            Join::parse(b"425928@bobster.example.org;to-tag=7743;from-tag=6472;early-only")
                .expect("RFC 3891's example parses");
        assert_eq!(r.call_id, "425928@bobster.example.org");
        assert_eq!((r.to_tag, r.from_tag), ("7743", "6472"));
        assert!(r.early_only);
    }

    #[test]
    fn parameters_may_come_in_any_order_with_white_space_and_extensions() {
        let j = Join::parse(b"abc ; to-tag = 1 ; early-only ; x=y ;From-Tag=2 ").expect("parses");
        assert_eq!((j.call_id, j.to_tag, j.from_tag), ("abc", "1", "2"));
        assert!(j.early_only);
    }

    #[test]
    fn a_join_without_both_tags_or_with_junk_is_refused() {
        for bad in [
            &b""[..],
            b"abc",
            b"abc;to-tag=1",
            b"abc;from-tag=2",
            b"abc;to-tag;from-tag=2",
            b"abc def;to-tag=1;from-tag=2",
            b"abc;to-tag=1;from-tag=2,other",
            b"@x;to-tag=1;from-tag=2",
        ] {
            assert_eq!(Join::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
