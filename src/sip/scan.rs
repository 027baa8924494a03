//! A cursor over a message buffer with the RFC 3261 separators
//! (`LWS`, `SEMI`, `EQUAL`, `COMMA`, `SLASH`, `HCOLON`).
//!
//! Positions are absolute offsets into the whole message, so every span the
//! typed parsers produce points straight into the original buffer.

use super::chars;
use super::span::Span;

/// A cursor over `src[pos..end]`.
#[derive(Clone, Copy)]
pub(crate) struct Cursor<'a> {
    pub src: &'a [u8],
    pub pos: usize,
    pub end: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor over `span` of `src`.
    #[inline]
    pub fn new(src: &'a [u8], span: Span) -> Self {
        Cursor {
            src,
            pos: span.start as usize,
            end: (span.end as usize).min(src.len()),
        }
    }

    #[inline]
    pub fn peek(&self) -> Option<u8> {
        if self.pos < self.end {
            Some(self.src[self.pos])
        } else {
            None
        }
    }

    #[inline]
    pub fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    #[inline]
    pub fn rest(&self) -> &'a [u8] {
        &self.src[self.pos.min(self.end)..self.end]
    }

    /// Consumes `b` if it is next.
    #[inline]
    pub fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Skips linear white space: SP, HTAB and folded line breaks
    /// (CRLF followed by SP or HTAB). Returns whether anything was skipped.
    #[inline]
    pub fn lws(&mut self) -> bool {
        let start = self.pos;
        while self.pos < self.end {
            match self.src[self.pos] {
                b' ' | b'\t' => self.pos += 1,
                b'\r'
                    if self.pos + 2 < self.end
                        && self.src[self.pos + 1] == b'\n'
                        && matches!(self.src[self.pos + 2], b' ' | b'\t') =>
                {
                    self.pos += 3
                }
                _ => break,
            }
        }
        self.pos > start
    }

    /// `SWS sep SWS`: consumes the separator with optional white space around
    /// it; on a miss the cursor does not move.
    #[inline(always)]
    pub fn sep(&mut self, sep: u8) -> bool {
        // Fast paths: the separator itself, or no white space before a miss.
        match self.peek() {
            Some(b) if b == sep => {
                self.pos += 1;
                self.lws();
                true
            }
            Some(b' ' | b'\t' | b'\r') => self.sep_after_space(sep),
            _ => false,
        }
    }

    /// [`Cursor::sep`] when white space may come first.
    #[inline(never)]
    fn sep_after_space(&mut self, sep: u8) -> bool {
        let save = self.pos;
        self.lws();
        if self.eat(sep) {
            self.lws();
            true
        } else {
            self.pos = save;
            false
        }
    }

    /// Consumes the longest run of bytes in class `mask`.
    #[inline]
    pub fn take(&mut self, mask: u16) -> Span {
        let start = self.pos;
        self.pos += chars::run(self.rest(), mask);
        Span::new(start, self.pos)
    }

    /// Consumes a non-empty run of bytes in class `mask`.
    #[inline]
    pub fn take1(&mut self, mask: u16) -> Option<Span> {
        let s = self.take(mask);
        if s.is_empty() { None } else { Some(s) }
    }

    /// Consumes a run of ASCII digits; its value when the run is not empty
    /// and the value at most `max` (leading zeros allowed). One pass, for
    /// the ports, lengths and counts a message carries.
    #[inline]
    pub fn number(&mut self, max: u32) -> Option<u32> {
        // Past u32::MAX the value only has to stay out of range.
        const OUT_OF_RANGE: u64 = u32::MAX as u64 + 1;
        let (mut value, mut len) = (0u64, 0);
        for &b in self.rest() {
            let digit = b.wrapping_sub(b'0');
            if digit >= 10 {
                break;
            }
            value = (value * 10 + u64::from(digit)).min(OUT_OF_RANGE);
            len += 1;
        }
        self.pos += len;
        (len > 0 && value <= u64::from(max)).then_some(value as u32)
    }

    /// Consumes a quoted-string and returns the span between the quotes.
    /// `qdtext` is LWS or any byte but `"`, `\`, CR, LF and other controls;
    /// a `quoted-pair` is `\` and any byte but CR and LF.
    pub fn quoted(&mut self) -> Option<Span> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.pos;
        // Most quoted strings (display names) are plain text up to the
        // closing quote: no quoted-pair, no line break, no control.
        if let Some(len) = super::simd::find_byte(self.rest(), b'"') {
            let inner = &self.src[start..start + len];
            if inner
                .iter()
                .all(|&b| (b >= 0x20 && b != 0x7f && b != b'\\') || b == b'\t')
            {
                self.pos = start + len + 1;
                return Some(Span::new(start, start + len));
            }
        }
        loop {
            let b = self.peek()?;
            match b {
                b'"' => {
                    let inner = Span::new(start, self.pos);
                    self.pos += 1;
                    return Some(inner);
                }
                b'\\' => {
                    let next = *self
                        .src
                        .get(self.pos + 1)
                        .filter(|_| self.pos + 1 < self.end)?;
                    if next == b'\r' || next == b'\n' {
                        return None;
                    }
                    self.pos += 2;
                }
                b'\r' => {
                    if !self.lws() {
                        return None;
                    }
                }
                b'\t' => self.pos += 1,
                0..=0x1f | 0x7f => return None,
                _ => self.pos += 1,
            }
        }
    }

    /// Span from `start` to the end of the cursor's range, trailing white
    /// space removed, trailing folds included (a fold is one SP, RFC 3261
    /// §7.3.1; inside a header line every CR and LF belongs to a fold).
    pub fn trimmed_to_end(&self, start: usize) -> Span {
        let mut end = self.end;
        while end > start && matches!(self.src[end - 1], b' ' | b'\t' | b'\r' | b'\n') {
            end -= 1;
        }
        Span::new(start, end)
    }

    /// Span from `start` to the cursor with trailing white space removed.
    pub fn span_from(&self, start: usize) -> Span {
        let mut end = self.pos;
        while end > start && matches!(self.src[end - 1], b' ' | b'\t' | b'\r' | b'\n') {
            end -= 1;
        }
        Span::new(start, end)
    }
}

/// Parses a decimal integer of at most `max`, allowing leading zeros.
/// `None` when empty, not all digits, or out of range (never overflows).
pub(crate) fn parse_u32(s: &[u8], max: u32) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(b - b'0');
        if v > u64::from(max) {
            return None;
        }
    }
    Some(v as u32)
}

/// Like [`parse_u32`] but saturating at `u32::MAX` for long digit runs
/// (Expires values: an absurd expiry means "as long as allowed").
pub(crate) fn parse_u32_saturating(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(parse_u32(s, u32::MAX).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(s: &[u8]) -> Cursor<'_> {
        Cursor::new(s, Span::new(0, s.len()))
    }

    #[test]
    fn lws_and_folds() {
        let s = b" \t\r\n  x";
        let mut c = cur(s);
        assert!(c.lws());
        assert_eq!(c.peek(), Some(b'x'));
        let mut c = cur(b"\r\nx");
        assert!(!c.lws());
    }

    #[test]
    fn separators() {
        let mut c = cur(b"  ;\r\n tag");
        assert!(c.sep(b';'));
        assert_eq!(c.rest(), b"tag");
        let mut c = cur(b"  x");
        assert!(!c.sep(b';'));
        assert_eq!(c.pos, 0);
    }

    #[test]
    fn quoted_strings() {
        let s = br#""a \"b\" \\" rest"#;
        let mut c = cur(s);
        let q = c.quoted().unwrap();
        assert_eq!(q.of(s), br#"a \"b\" \\"#);
        assert!(cur(b"\"open").quoted().is_none());
        assert!(cur(b"\"a\nb\"").quoted().is_none());
        assert!(cur(b"\"\\\x00\"").quoted().is_some());
    }

    #[test]
    fn numbers_at_the_cursor() {
        for (s, max, want, end) in [
            ("5060;lr", 65535, Some(5060), 4),
            ("0068 x", 255, Some(68), 4),
            ("256", 255, None, 3),
            ("", 10, None, 0),
            ("x1", 10, None, 0),
            ("4294967295", u32::MAX, Some(u32::MAX), 10),
            ("4294967296", u32::MAX, None, 10),
            ("36893488147419103232", u32::MAX, None, 20),
        ] {
            let mut c = cur(s.as_bytes());
            assert_eq!(c.number(max), want, "{s}");
            assert_eq!(c.pos, end, "{s}");
            assert_eq!(want, parse_u32(&s.as_bytes()[..end], max), "{s}");
        }
    }

    #[test]
    fn integers() {
        assert_eq!(parse_u32(b"0068", 255), Some(68));
        assert_eq!(parse_u32(b"300", 255), None);
        assert_eq!(parse_u32(b"36893488147419103232", u32::MAX), None);
        assert_eq!(parse_u32(b"-1", u32::MAX), None);
        assert_eq!(
            parse_u32_saturating(b"1000000000000000000000"),
            Some(u32::MAX)
        );
    }
}
