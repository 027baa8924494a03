//! Parse errors: what is wrong, where, and what a server answers.

use std::fmt;

/// What is wrong with a message. Each kind maps to the response a server
/// sends for it ([`ErrorKind::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input is empty or holds only line breaks.
    Empty,
    /// The request or status line does not follow the grammar.
    StartLine,
    /// A SIP version other than 2.0 (answered 505).
    Version,
    /// A status code outside 100–699.
    StatusCode,
    /// A Request-URI that is not a valid URI.
    RequestUri,
    /// The header section not ended (no empty line).
    HeaderFraming,
    /// A lone CR or LF where a line must end with CRLF (RFC 3261 §7).
    LineEnding,
    /// A header name that is not a token, or a line without a colon.
    HeaderName,
    /// A malformed value of a header a proxy reads; names the header.
    Header(&'static str),
    /// A mandatory header is missing; names it.
    Missing(&'static str),
    /// A single-value header appears twice; names it.
    Repeated(&'static str),
    /// The CSeq method differs from the request method.
    CSeqMethod,
    /// The body is shorter than Content-Length.
    BodyTooShort,
    /// The message is larger than the framer's limit (answered 513).
    TooLarge,
    /// A stream message without Content-Length.
    MissingContentLength,
}

impl ErrorKind {
    /// The status code a server answers this error with.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Version => 505,
            ErrorKind::TooLarge => 513,
            _ => 400,
        }
    }
}

/// A parse failure: its kind and the byte offset where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    /// What is wrong.
    pub kind: ErrorKind,
    /// Byte offset into the message where the problem was found.
    pub offset: usize,
}

impl ParseError {
    pub(crate) fn new(kind: ErrorKind, offset: usize) -> Self {
        ParseError { kind, offset }
    }

    /// The status code a server answers this error with (400, 505, 513).
    pub fn status(&self) -> u16 {
        self.kind.status()
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Empty => f.write_str("empty message"),
            ErrorKind::StartLine => f.write_str("malformed start line"),
            ErrorKind::Version => f.write_str("unsupported SIP version"),
            ErrorKind::StatusCode => f.write_str("status code out of range"),
            ErrorKind::RequestUri => f.write_str("malformed Request-URI"),
            ErrorKind::HeaderFraming => f.write_str("malformed header framing"),
            ErrorKind::LineEnding => f.write_str("line not ended by CRLF"),
            ErrorKind::HeaderName => f.write_str("malformed header name"),
            ErrorKind::Header(name) => write!(f, "malformed {name} header"),
            ErrorKind::Missing(name) => write!(f, "missing {name} header"),
            ErrorKind::Repeated(name) => write!(f, "repeated {name} header"),
            ErrorKind::CSeqMethod => f.write_str("CSeq method differs from the request method"),
            ErrorKind::BodyTooShort => f.write_str("body shorter than Content-Length"),
            ErrorKind::TooLarge => f.write_str("message too large"),
            ErrorKind::MissingContentLength => f.write_str("missing Content-Length on a stream"),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.kind, self.offset)
    }
}

impl std::error::Error for ParseError {}
