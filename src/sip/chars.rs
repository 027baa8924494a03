//! Byte classes of the RFC 3261 §25 grammar, as lookup tables.
//!
//! One table of bit flags answers "is this byte in class X" with a load and
//! a mask, which keeps the hot scanning loops branch-light.

/// `token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")`
pub const TOKEN: u16 = 1 << 0;
/// `word`: token plus `( ) < > : \ DQUOTE / [ ] ? { }` (Call-ID).
pub const WORD: u16 = 1 << 1;
/// `user = 1*( unreserved / escaped / user-unreserved )`, with `%` admitted
/// here and escapes checked separately.
pub const USER: u16 = 1 << 2;
/// `password = *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )`
pub const PASSWORD: u16 = 1 << 3;
/// `paramchar = param-unreserved / unreserved / escaped`
pub const PARAM: u16 = 1 << 4;
/// `hname` / `hvalue` characters: `hnv-unreserved / unreserved / escaped`
pub const HNV: u16 = 1 << 5;
/// Host name characters: `alphanum / "-" / "."`.
pub const HOST: u16 = 1 << 6;
/// `uric` of an opaque absoluteURI, less `%` escapes checked separately.
pub const URIC: u16 = 1 << 7;
/// `gen-value` without quotes: token or host (IPv4, name, or IPv6 with or
/// without brackets, as RFC 5118 §4.5 asks parsers to tolerate).
pub const GENVAL: u16 = 1 << 8;
/// Digits of a telephone-subscriber and visual separators (RFC 3966).
pub const TEL: u16 = 1 << 9;
/// Domain label characters: `alphanum / "-"`.
pub const LABEL: u16 = 1 << 10;

const fn build() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut c = 0usize;
    while c < 256 {
        let b = c as u8;
        let alnum = b.is_ascii_alphanumeric();
        // mark = "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
        let mark = matches!(
            b,
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
        );
        let unreserved = alnum || mark;
        let mut f = 0u16;
        if alnum
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            )
        {
            f |= TOKEN | WORD;
        }
        if matches!(
            b,
            b'(' | b')'
                | b'<'
                | b'>'
                | b':'
                | b'\\'
                | b'"'
                | b'/'
                | b'['
                | b']'
                | b'?'
                | b'{'
                | b'}'
        ) {
            f |= WORD;
        }
        if unreserved
            || b == b'%'
            || matches!(b, b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/')
        {
            f |= USER;
        }
        if unreserved || b == b'%' || matches!(b, b'&' | b'=' | b'+' | b'$' | b',') {
            f |= PASSWORD;
        }
        if unreserved || b == b'%' || matches!(b, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$') {
            f |= PARAM;
        }
        if unreserved || b == b'%' || matches!(b, b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$') {
            f |= HNV;
        }
        if alnum || b == b'-' || b == b'.' {
            f |= HOST;
        }
        if alnum || b == b'-' {
            f |= LABEL;
        }
        // uric = reserved / unreserved / escaped; reserved = ; / ? : @ & = + $ ,
        if unreserved
            || b == b'%'
            || matches!(
                b,
                b';' | b'/' | b'?' | b':' | b'@' | b'&' | b'=' | b'+' | b'$' | b','
            )
        {
            f |= URIC;
        }
        if f & TOKEN != 0 || matches!(b, b':' | b'[' | b']') {
            f |= GENVAL;
        }
        if b.is_ascii_hexdigit()
            || matches!(
                b,
                b'*' | b'#' | b'+' | b'-' | b'.' | b'(' | b')' | b'p' | b'w' | b'P' | b'W' | b'%'
            )
        {
            f |= TEL;
        }
        t[c] = f;
        c += 1;
    }
    t
}

static CLASSES: [u16; 256] = build();

/// Whether `b` is in every class of `mask`.
#[inline(always)]
pub fn is(b: u8, mask: u16) -> bool {
    CLASSES[b as usize] & mask != 0
}

/// Length of the run of bytes in class `mask` at the start of `s`.
#[inline]
pub fn run(s: &[u8], mask: u16) -> usize {
    s.iter().position(|&b| !is(b, mask)).unwrap_or(s.len())
}

/// Whether every `%` in `s` starts a valid `% HEXDIG HEXDIG` escape.
/// The parts checked are a few bytes long, too short to repay `memchr`.
#[inline]
pub fn escapes_valid(s: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = s[i..].iter().position(|&b| b == b'%') {
        let at = i + p;
        match s.get(at + 1..at + 3) {
            Some([a, b]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => i = at + 3,
            _ => return false,
        }
    }
    true
}

/// Decodes one hex digit.
#[inline]
fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

/// Iterates the octets `s` stands for, decoding `%XX` escapes once.
pub fn unescaped(s: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *s.get(i)?;
        if b == b'%' {
            if let Some([h, l]) = s.get(i + 1..i + 3) {
                if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() {
                    i += 3;
                    return Some(hex(*h) << 4 | hex(*l));
                }
            }
        }
        i += 1;
        Some(b)
    })
}

/// Compares two URI components after unescaping (RFC 3261 §19.1.4), with
/// ASCII case folded when `fold_case` (hosts, parameter names).
pub fn eq_unescaped(a: &[u8], b: &[u8], fold_case: bool) -> bool {
    if !a.contains(&b'%') && !b.contains(&b'%') {
        return if fold_case {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        };
    }
    let mut x = unescaped(a);
    let mut y = unescaped(b);
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(p), Some(q)) if p == q || (fold_case && p.eq_ignore_ascii_case(&q)) => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert!(is(b'~', TOKEN) && is(b'`', TOKEN) && !is(b'<', TOKEN));
        assert!(is(b'<', WORD) && is(b'"', WORD) && !is(b' ', WORD));
        assert!(is(b';', USER) && !is(b'@', USER) && !is(b':', USER));
        assert!(is(b':', PARAM) && !is(b';', PARAM) && !is(b'=', PARAM));
        assert_eq!(run(b"abc def", TOKEN), 3);
    }

    #[test]
    fn escapes() {
        assert!(escapes_valid(b"a%20b%7e"));
        assert!(!escapes_valid(b"a%2"));
        assert!(!escapes_valid(b"%ZZ"));
        assert!(eq_unescaped(b"%75se%72", b"user", false));
        assert!(!eq_unescaped(b"value%25%34%31", b"valueA", false));
        assert!(eq_unescaped(b"value%25%34%31", b"value%2541", false));
        assert!(eq_unescaped(b"EXAMPLE.com", b"example.COM", true));
        assert!(!eq_unescaped(b"%00", b"%00%00", false));
    }
}
