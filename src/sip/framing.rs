//! Stream framing (RFC 3261 §18.3): cut a TCP byte stream into messages by
//! Content-Length, sans-IO.
//!
//! The caller appends received bytes to a buffer and calls [`frame`] until
//! it answers [`Frame::Partial`]; each `Complete(len)` or `KeepAlive(len)`
//! says how many bytes to take off the front.
//!
//! Bytes that can never begin a SIP message are an error as soon as they
//! show, not a `Partial` held until the connection times out: a first line
//! that is no request or status line (binary junk, a run of NULs, another
//! protocol), a method name past [`MAX_METHOD`], or a header section whose
//! lines end in a bare LF or CR (such a sender never sends the CRLF CRLF
//! that ends it).

use super::chars::{self, TOKEN};
use super::error::{ErrorKind, ParseError};
use super::name::HeaderName;
use super::scan::parse_u32;

/// The default largest message accepted on a stream, headers and body.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

/// The longest method name waited on: a stream that opens with a longer run
/// of token characters and no SP is taken for no SIP. The budget of non-SIP
/// bytes a connection gets before the framer can tell; methods in use are
/// under ten characters (`SUBSCRIBE`).
pub const MAX_METHOD: usize = 32;

/// What the front of a stream buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A whole message of this many bytes.
    Complete(usize),
    /// CRLF keep-alive bytes (RFC 5626 §3.5.1) to consume: a `ping` is a
    /// double CRLF (answer with a single CRLF), a lone CRLF is a `pong`.
    KeepAlive {
        /// Bytes to consume.
        len: usize,
        /// Whether this was a ping that wants a pong.
        ping: bool,
    },
    /// Not enough bytes yet.
    Partial,
}

/// Frames the message at the front of `buf`. Errors are unrecoverable for
/// the connection: bytes that cannot begin a SIP message, a line not ended
/// by CRLF in the header section, a missing or malformed Content-Length, or
/// a message over `max` bytes.
pub fn frame(buf: &[u8], max: usize) -> Result<Frame, ParseError> {
    if buf.starts_with(b"\r\n") {
        return Ok(if buf.starts_with(b"\r\n\r\n") {
            Frame::KeepAlive { len: 4, ping: true }
        } else if buf.len() < 4 && b"\r\n\r\n".starts_with(buf) {
            Frame::Partial
        } else {
            Frame::KeepAlive {
                len: 2,
                ping: false,
            }
        });
    }
    check_start_line(buf)?;
    let head_end = memchr::memmem::find(buf, b"\r\n\r\n");
    // The header section, or all there is of it so far: the same check
    // whether it arrived at once or a byte at a time.
    check_line_endings(head_end.map_or(buf, |i| &buf[..i + 2]))?;
    let Some(head_end) = head_end else {
        return if buf.len() > max {
            Err(ParseError::new(ErrorKind::TooLarge, max))
        } else {
            Ok(Frame::Partial)
        };
    };
    let body_start = head_end + 4;
    let length = content_length(&buf[..head_end + 2])?;
    let total = body_start + length as usize;
    if total > max {
        return Err(ParseError::new(ErrorKind::TooLarge, max.min(buf.len())));
    }
    Ok(if buf.len() >= total {
        Frame::Complete(total)
    } else {
        Frame::Partial
    })
}

/// Whether the front of `buf`, as much of its first line as has arrived,
/// can be a request or status line (RFC 3261 §7.1, §7.2): `Method SP
/// Request-URI SP SIP/…`, or `SIP/…`. Loose on purpose, as the parser
/// judges the line: this refuses only what it could never accept, and what
/// a method past [`MAX_METHOD`] would make it wait on.
fn check_start_line(buf: &[u8]) -> Result<(), ParseError> {
    let not_sip = |at| Err(ParseError::new(ErrorKind::StartLine, at));
    // The line runs to its first control byte, which must be its CRLF.
    let end = buf
        .iter()
        .position(|&c| c < 0x20 && c != b'\t' || c == 0x7f)
        .unwrap_or(buf.len());
    let complete = match buf.get(end..) {
        None | Some([] | [b'\r']) => false,
        Some([b'\r', b'\n', ..]) => true,
        Some([b'\r' | b'\n', ..]) => return Err(ParseError::new(ErrorKind::LineEnding, end)),
        Some(_) => return not_sip(end),
    };
    let line = &buf[..end];
    let prefix_of = |s: &[u8], whole: &[u8]| {
        let n = s.len().min(whole.len());
        s[..n].eq_ignore_ascii_case(&whole[..n]) && (n == whole.len() || !complete)
    };
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        return Ok(());
    }
    let method = chars::run(line, TOKEN);
    if method > MAX_METHOD {
        return not_sip(MAX_METHOD);
    }
    match line.get(method) {
        Some(b' ') if method > 0 => {}
        // Nothing yet, or a method still arriving.
        None if !complete => return Ok(()),
        _ => return not_sip(method),
    }
    // The Request-URI runs to the next SP; the version after it is SIP's.
    let uri_start = method + 1;
    match memchr::memchr(b' ', &line[uri_start..]) {
        Some(sp) if prefix_of(&line[uri_start + sp + 1..], b"SIP/") => Ok(()),
        Some(sp) => not_sip(uri_start + sp + 1),
        None if complete => not_sip(end),
        None => Ok(()),
    }
}

/// A bare LF, or a CR not followed by LF, in `head` (a header section or
/// its start): RFC 3261 §7 lines end with CRLF, and a sender that ends them
/// otherwise never sends the empty line that ends the section.
fn check_line_endings(head: &[u8]) -> Result<(), ParseError> {
    for at in memchr::memchr2_iter(b'\r', b'\n', head) {
        let crlf = match head[at] {
            b'\n' => at > 0 && head[at - 1] == b'\r',
            _ => head.get(at + 1).is_none_or(|&c| c == b'\n'),
        };
        if !crlf {
            return Err(ParseError::new(ErrorKind::LineEnding, at));
        }
    }
    Ok(())
}

/// Finds the single Content-Length of a header section (which ends with the
/// CRLF of its last line). Folded values are not expected for this header;
/// a folded Content-Length is refused as malformed.
fn content_length(head: &[u8]) -> Result<u32, ParseError> {
    let mut found: Option<u32> = None;
    let mut pos = match memchr::memmem::find(head, b"\r\n") {
        Some(i) => i + 2,
        None => return Err(ParseError::new(ErrorKind::MissingContentLength, 0)),
    };
    while pos < head.len() {
        let end = memchr::memmem::find(&head[pos..], b"\r\n").map_or(head.len(), |i| pos + i);
        let line = &head[pos..end];
        if let Some(colon) = memchr::memchr(b':', line) {
            if HeaderName::from_bytes(line[..colon].trim_ascii_end()) == HeaderName::ContentLength {
                let value = parse_u32(line[colon + 1..].trim_ascii(), u32::MAX).ok_or(
                    ParseError::new(ErrorKind::Header("Content-Length"), pos + colon + 1),
                )?;
                if found.replace(value).is_some() {
                    return Err(ParseError::new(ErrorKind::Repeated("Content-Length"), pos));
                }
            }
        }
        pos = end + 2;
    }
    found.ok_or(ParseError::new(ErrorKind::MissingContentLength, head.len()))
}

/// Whether a datagram is a STUN message (RFC 5389 §6): the two top bits
/// zero, the magic cookie `0x2112A442` at octet 4, and a length that
/// counts the rest of the datagram in whole 32-bit words. RFC 5626 §4.4.2
/// phones (Linphone, Bria) keep their NAT binding open with STUN binding
/// requests to the SIP port over UDP: a keep-alive, not malformed SIP. No
/// SIP message can look like this (its first octet is a letter).
pub fn is_stun(data: &[u8]) -> bool {
    const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
    let Some(header) = data.get(..20) else {
        return false;
    };
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    header[0] & 0xC0 == 0
        && header[4..8] == MAGIC_COOKIE
        && length % 4 == 0
        && length == data.len() - 20
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"BYE sip:a@b SIP/2.0\r\nl: 5\r\nVia: x\r\n\r\nhello";

    #[test]
    fn complete_and_partial() {
        assert_eq!(
            frame(MSG, DEFAULT_MAX_MESSAGE),
            Ok(Frame::Complete(MSG.len()))
        );
        for cut in 1..MSG.len() {
            assert_eq!(
                frame(&MSG[..cut], DEFAULT_MAX_MESSAGE),
                Ok(Frame::Partial),
                "cut at {cut}"
            );
        }
        let mut two = MSG.to_vec();
        two.extend_from_slice(MSG);
        assert_eq!(
            frame(&two, DEFAULT_MAX_MESSAGE),
            Ok(Frame::Complete(MSG.len()))
        );
    }

    #[test]
    fn stun() {
        let mut binding = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        binding.extend_from_slice(b"transaction!");
        assert!(is_stun(&binding));
        let mut with_attr = binding.clone();
        with_attr[3] = 8;
        with_attr.extend_from_slice(&[0x80, 0x22, 0x00, 0x04, b'p', b'h', b'o', b'n']);
        assert!(is_stun(&with_attr));
        assert!(!is_stun(&binding[..19]), "short");
        assert!(!is_stun(&with_attr[..27]), "length not the rest");
        let mut wrong_cookie = binding.clone();
        wrong_cookie[4] = 0x22;
        assert!(!is_stun(&wrong_cookie));
        assert!(!is_stun(b"OPTIONS sip:cc.example SIP/2.0\r\n\r\n"));
    }

    #[test]
    fn keep_alives() {
        assert_eq!(
            frame(b"\r\n\r\nBYE", 100),
            Ok(Frame::KeepAlive { len: 4, ping: true })
        );
        assert_eq!(
            frame(b"\r\nBYE", 100),
            Ok(Frame::KeepAlive {
                len: 2,
                ping: false
            })
        );
        assert_eq!(frame(b"\r\n", 100), Ok(Frame::Partial));
        assert_eq!(frame(b"\r\n\r", 100), Ok(Frame::Partial));
    }

    #[test]
    fn errors() {
        let no_cl = b"BYE sip:a@b SIP/2.0\r\nVia: x\r\n\r\n";
        assert_eq!(
            frame(no_cl, 100).unwrap_err().kind,
            ErrorKind::MissingContentLength
        );
        let bad = b"BYE sip:a@b SIP/2.0\r\nContent-Length: -999\r\n\r\n";
        assert_eq!(
            frame(bad, 100).unwrap_err().kind,
            ErrorKind::Header("Content-Length")
        );
        let two = b"BYE sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nab";
        assert_eq!(
            frame(two, 100).unwrap_err().kind,
            ErrorKind::Repeated("Content-Length")
        );
        let huge = b"BYE sip:a@b SIP/2.0\r\nContent-Length: 4294967295\r\n\r\n";
        assert_eq!(frame(huge, 1000).unwrap_err().kind, ErrorKind::TooLarge);
        let endless = [&b"BYE sip:"[..], &[b'a'; 200]].concat();
        assert_eq!(frame(&endless, 100).unwrap_err().kind, ErrorKind::TooLarge);
    }

    /// The error `bad` gets, checking that each of its prefixes gets either
    /// `Partial` or the same error: a refusal does not hang on how the
    /// bytes were cut into reads.
    #[track_caller]
    fn refused(bad: &[u8]) -> ParseError {
        let err = frame(bad, DEFAULT_MAX_MESSAGE).unwrap_err();
        for cut in 1..bad.len() {
            match frame(&bad[..cut], DEFAULT_MAX_MESSAGE) {
                Ok(Frame::Partial) => {}
                got => assert_eq!(got, Err(err), "cut at {cut}"),
            }
        }
        err
    }

    /// What can never begin a SIP message is refused as soon as it shows,
    /// not held as `Partial` until the connection times out.
    #[test]
    fn bytes_that_cannot_be_sip_are_refused_at_once() {
        let start_line = |at| ParseError::new(ErrorKind::StartLine, at);
        let line_ending = |at| ParseError::new(ErrorKind::LineEnding, at);
        // A run of NULs, and a TLS ClientHello: no method.
        assert_eq!(frame(&[0; 4096], 100), Err(start_line(0)));
        assert_eq!(frame(&[0], 100), Err(start_line(0)));
        assert_eq!(refused(b"\x16\x03\x01\x02\x00\x01"), start_line(0));
        // Another protocol's request line: refused at its version, before
        // the line has even ended.
        assert_eq!(refused(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), start_line(6));
        assert_eq!(frame(b"GET / H", 100), Err(start_line(6)));
        // No SP after the method, a control byte, no version.
        assert_eq!(refused(b"BYE\r\nl: 0\r\n\r\n"), start_line(3));
        assert_eq!(refused(b"BYE sip:a@b\x00"), start_line(11));
        assert_eq!(refused(b"BYE sip:a@b\r\nl: 0\r\n\r\n"), start_line(11));
        // A method name past the budget.
        let long = [b'A'; MAX_METHOD + 1];
        assert_eq!(refused(&long), start_line(MAX_METHOD));
        let mut at_budget = [b'A'; MAX_METHOD].to_vec();
        at_budget.extend_from_slice(b" sip:a@b SIP/2.0\r\nl: 0\r\n\r\n");
        assert_eq!(frame(&at_budget, 100), Ok(Frame::Complete(at_budget.len())));
        // LF-only line endings, in the start line or after a header; a CR
        // without its LF.
        let lf = MSG
            .iter()
            .filter(|&&c| c != b'\r')
            .copied()
            .collect::<Vec<_>>();
        assert_eq!(refused(&lf), line_ending(19));
        let bare = b"BYE sip:a@b SIP/2.0\r\nVia: x\nl: 0\r\n\r\n";
        assert_eq!(refused(bare), line_ending(27));
        assert_eq!(refused(b"BYE sip:a@b SIP/2.0\rVia: x"), line_ending(19));
        assert_eq!(frame(b"\n\n", 100), Err(line_ending(0)));
        // A body is not a header section: its line endings are its own.
        let body = b"BYE sip:a@b SIP/2.0\r\nl: 4\r\n\r\na\nb\r";
        assert_eq!(frame(body, 100), Ok(Frame::Complete(body.len())));
    }

    /// Every start of a request or response that can still become one
    /// waits, whatever the case of `SIP/`.
    #[test]
    fn a_trickled_message_waits_for_the_rest() {
        assert_eq!(frame(b"", 100), Ok(Frame::Partial), "an empty buffer");
        let response = b"sip/2.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        let request = b"SUBSCRIBE sip:a@b;x=y sIp/2.0\r\nl: 0\r\n\r\n";
        for msg in [&response[..], request] {
            for cut in 1..msg.len() {
                assert_eq!(frame(&msg[..cut], 100), Ok(Frame::Partial), "cut at {cut}");
            }
            assert_eq!(frame(msg, 100), Ok(Frame::Complete(msg.len())));
        }
    }

    /// Found by the framing fuzz target: a line that starts with a colon (a
    /// folded `Content-Length` name) gave the name classifier an empty slice.
    #[test]
    fn line_with_empty_name() {
        let folded = b"BYE sip:a@b SIP/2.0\r\nContent-Length\r\n : 5\r\n\r\nhello";
        assert_eq!(
            frame(folded, 100).unwrap_err().kind,
            ErrorKind::MissingContentLength
        );
        let bare = b"BYE sip:a@b SIP/2.0\r\n: x\r\nl: 0\r\n\r\n";
        assert_eq!(frame(bare, 100), Ok(Frame::Complete(bare.len())));
    }
}
