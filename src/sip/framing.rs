//! Stream framing (RFC 3261 §18.3): cut a TCP byte stream into messages by
//! Content-Length, sans-IO.
//!
//! The caller appends received bytes to a buffer and calls [`frame`] until
//! it answers [`Frame::Partial`]; each `Complete(len)` or `KeepAlive(len)`
//! says how many bytes to take off the front.

use super::error::{ErrorKind, ParseError};
use super::name::HeaderName;
use super::scan::parse_u32;

/// The default largest message accepted on a stream, headers and body.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

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
/// the connection: a missing or malformed Content-Length, or a message over
/// `max` bytes.
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
    let Some(head_end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
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
        assert_eq!(
            frame(&[b'A'; 200], 100).unwrap_err().kind,
            ErrorKind::TooLarge
        );
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
