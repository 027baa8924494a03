//! Edge cases of `Message::parse` beyond the RFC 4475 / RFC 5118 corpus,
//! each with its exact verdict (SPEC §3: what a proxy must refuse), and a
//! no-panic sweep over truncated and mutated torture messages.

use std::ops::Range;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use sipblade::sip::{ErrorKind, Forward, HeaderName, Message, Method, ParseError, Scheme};

/// A request that parses; the cases below change one thing in it.
struct Msg {
    start: String,
    headers: Vec<String>,
    body: Vec<u8>,
}

fn base() -> Msg {
    Msg {
        start: "INVITE sip:1002@cc.example SIP/2.0".into(),
        headers: [
            "Via: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bKaaa",
            "Max-Forwards: 70",
            "From: \"A\" <sip:1001@cc.example>;tag=1",
            "To: <sip:1002@cc.example>",
            "Call-ID: abc@10.0.0.1",
            "CSeq: 1 INVITE",
            "Content-Length: 4",
        ]
        .map(String::from)
        .to_vec(),
        body: b"body".to_vec(),
    }
}

/// Number of header lines in [`base`].
const BASE_HEADERS: usize = 7;

fn name_of(line: &str) -> &str {
    line.split(':').next().unwrap().trim_end()
}

impl Msg {
    fn start(mut self, line: &str) -> Self {
        self.start = line.into();
        self
    }

    /// Replaces the header line named `name` (as written in [`base`]).
    fn set(mut self, name: &str, line: &str) -> Self {
        let i = self
            .headers
            .iter()
            .position(|h| name_of(h) == name)
            .unwrap_or_else(|| panic!("no {name} in base"));
        self.headers[i] = line.into();
        self
    }

    fn without(mut self, name: &str) -> Self {
        let before = self.headers.len();
        self.headers.retain(|h| name_of(h) != name);
        assert_eq!(self.headers.len(), before - 1, "no {name} in base");
        self
    }

    /// Adds a header line just before Content-Length.
    fn add(mut self, line: &str) -> Self {
        let at = self.headers.len() - 1;
        self.headers.insert(at, line.into());
        self
    }

    fn body(mut self, body: &[u8]) -> Self {
        let cl = format!("Content-Length: {}", body.len());
        self.body = body.to_vec();
        self.set("Content-Length", &cl)
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.start.as_bytes());
        out.extend_from_slice(b"\r\n");
        for h in &self.headers {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

fn parse(b: &[u8]) -> Result<Message, ParseError> {
    Message::parse(Bytes::copy_from_slice(b))
}

#[track_caller]
fn accepted(b: &[u8]) -> Message {
    match parse(b) {
        Ok(m) => m,
        Err(e) => panic!("refused ({e}): {:?}", String::from_utf8_lossy(b)),
    }
}

/// Asserts `b` is refused with `kind` at an offset inside `at`.
#[track_caller]
fn refused(b: &[u8], kind: ErrorKind, at: Range<usize>) -> ParseError {
    match parse(b) {
        Ok(m) => panic!(
            "accepted ({m:?}), wanted {kind}: {:?}",
            String::from_utf8_lossy(b)
        ),
        Err(e) => {
            assert_eq!(e.kind, kind, "{:?}", String::from_utf8_lossy(b));
            assert!(
                at.contains(&e.offset),
                "{kind} at {}, wanted in {at:?}: {:?}",
                e.offset,
                String::from_utf8_lossy(b)
            );
            e
        }
    }
}

/// Asserts `b` is refused with `kind` at exactly `at`.
#[track_caller]
fn refused_at(b: &[u8], kind: ErrorKind, at: usize) -> ParseError {
    refused(b, kind, at..at + 1)
}

/// Offset of the first occurrence of `needle`.
#[track_caller]
fn find(b: &[u8], needle: &str) -> usize {
    b.windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("{needle:?} not in message"))
}

/// Offset of the last occurrence of `needle`.
#[track_caller]
fn rfind(b: &[u8], needle: &str) -> usize {
    b.windows(needle.len())
        .rposition(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("{needle:?} not in message"))
}

/// The range of the value of the header line that starts with `line_start`
/// (from just past its colon to the end of the line).
#[track_caller]
fn value_of(b: &[u8], line_start: &str) -> Range<usize> {
    let at = find(b, line_start);
    let colon = at + b[at..].iter().position(|&c| c == b':').unwrap();
    let end = at + find(&b[at..], "\r\n");
    colon + 1..end + 1
}

/// Offset of the first body octet.
fn body_start(b: &[u8]) -> usize {
    find(b, "\r\n\r\n") + 4
}

#[test]
fn base_message_parses() {
    let m = accepted(&base().bytes());
    assert_eq!(m.header_count(), BASE_HEADERS);
    assert_eq!(m.body(), b"body");
}

// ---- framing -------------------------------------------------------------

#[test]
fn empty_input() {
    refused_at(b"", ErrorKind::Empty, 0);
}

#[test]
fn only_line_breaks() {
    refused_at(b"\r\n", ErrorKind::Empty, 2);
    refused_at(b"\r\n\r\n\r\n", ErrorKind::Empty, 6);
}

#[test]
fn leading_line_breaks_are_skipped() {
    let mut b = b"\r\n\r\n".to_vec();
    b.extend_from_slice(&base().bytes());
    assert_eq!(accepted(&b).method(), Some(Method::Invite));
}

#[test]
fn binary_junk() {
    // No line break at all: the start line never ends, but its fault is
    // its first byte, not the end of the input.
    let junk: Vec<u8> = (0..=255u8).filter(|&c| c != b'\r' && c != b'\n').collect();
    refused_at(&junk, ErrorKind::StartLine, 0);
    // A "line" of non-token octets: no method.
    refused_at(b"\xff\xfe\x00\x80\r\n\r\n", ErrorKind::StartLine, 0);
    // Junk after a plausible start.
    refused(
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",
        ErrorKind::StartLine,
        0..1,
    );
}

/// A start line with no line ending: a fault in it is reported where it
/// is; a line that is fine lacks only its CRLF, at the end of the input.
#[test]
fn a_start_line_without_crlf() {
    let fine = b"OPTIONS sip:cc.example SIP/2.0";
    let e = refused_at(fine, ErrorKind::LineEnding, fine.len());
    assert_eq!(e.to_string(), "line not ended by CRLF at byte 30");
    refused_at(b"SIP/2.0 200 OK", ErrorKind::LineEnding, 14);
    refused_at(b"hello world", ErrorKind::StartLine, 11);
    refused_at(b"OPTIONS sip:cc.example SIP/3.0", ErrorKind::Version, 23);
    refused_at(b"OPTIONS <cc.example> SIP/2.0", ErrorKind::RequestUri, 8);
    refused_at(b"\r\n\r\nhello\0world", ErrorKind::StartLine, 9);
}

#[test]
fn lf_only_line_endings_are_refused() {
    let crlf = base().bytes();
    let lf: Vec<u8> = String::from_utf8(crlf)
        .unwrap()
        .replace("\r\n", "\n")
        .into_bytes();
    // The start line is not ended by CRLF.
    let e = refused_at(&lf, ErrorKind::LineEnding, find(&lf, "\n"));
    assert_eq!(
        e.to_string(),
        format!("line not ended by CRLF at byte {}", e.offset)
    );

    // CRLF after the start line, LF after a header.
    let mut m = base();
    let second = m.headers.remove(1);
    m.headers[0] = format!("{}\n{second}", m.headers[0]);
    let b = m.bytes();
    refused_at(&b, ErrorKind::LineEnding, find(&b, "\nMax-Forwards"));
}

#[test]
fn lone_cr_in_header_value() {
    let b = base().add("Subject: half\rline").bytes();
    refused_at(&b, ErrorKind::LineEnding, find(&b, "\rline"));
    let b = base()
        .set("To", "To: <sip:1002@cc.example>\r;tag=x")
        .bytes();
    refused_at(&b, ErrorKind::LineEnding, find(&b, "\r;tag"));
}

#[test]
fn lone_lf_in_header_value() {
    let b = base().add("Subject: half\nline").bytes();
    refused_at(&b, ErrorKind::LineEnding, find(&b, "\nline"));
}

#[test]
fn nul_in_start_line() {
    let b = base().start("INV\0ITE sip:1002@cc.example SIP/2.0").bytes();
    refused_at(&b, ErrorKind::StartLine, 3);
    let b = base()
        .start("INVITE sip:10\x0002@cc.example SIP/2.0")
        .bytes();
    refused_at(&b, ErrorKind::RequestUri, find(&b, "sip:10"));
    let b = base().start("INVITE sip:1002@cc.example SIP/2.0\0").bytes();
    refused_at(&b, ErrorKind::StartLine, find(&b, "SIP/2.0"));
    let b = base().start("SIP/2.0 200 O\0K").bytes();
    refused_at(&b, ErrorKind::StartLine, find(&b, "O\0K"));
}

#[test]
fn header_line_without_colon() {
    let b = base().add("Subject hello").bytes();
    refused_at(&b, ErrorKind::HeaderName, find(&b, "hello"));
    let b = base().add("JustAName").bytes();
    refused_at(&b, ErrorKind::HeaderName, find(&b, "JustAName\r\n") + 9);
}

#[test]
fn header_line_without_name() {
    let b = base().add(": no name").bytes();
    refused_at(&b, ErrorKind::HeaderName, find(&b, ": no name"));
    let b = base().add("Sub ject: x").bytes();
    refused_at(&b, ErrorKind::HeaderName, find(&b, "ject"));
}

#[test]
fn known_names_in_any_case_and_compact_form_reach_their_typed_parsers() {
    let b = base()
        .set("Via", "VIA: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bKccc")
        .set("CSeq", "cseq: 7 INVITE")
        .set("Call-ID", "i: compact-call-id")
        .bytes();
    let m = accepted(&b);
    assert_eq!(m.top_via().branch(), Some("z9hG4bKccc"));
    assert_eq!(m.cseq().seq, 7);
    assert_eq!(m.call_id(), "compact-call-id");
    // A known name with more before the colon is not that header.
    let b = base().add("Via x: SIP/2.0/UDP h").bytes();
    refused_at(&b, ErrorKind::HeaderName, find(&b, "x: SIP"));
    let b = base().add("Vias: anything").bytes();
    assert_eq!(accepted(&b).header_named("Vias"), Some(&b"anything"[..]));
}

#[test]
fn non_token_header_name() {
    let b = base().add("Vïa: SIP/2.0/UDP h").bytes();
    refused_at(&b, ErrorKind::HeaderName, find(&b, "Vïa") + 1);
    let b = base().add("X-A(b): c").bytes();
    refused_at(&b, ErrorKind::HeaderName, find(&b, "(b)"));
}

/// Judgment call (SPEC §3 leaves it open): RFC 3261's TEXT-UTF8 excludes
/// control octets, but an unknown header is not invalid and a proxy passes
/// it on untouched, so control octets in its value (NUL included) are
/// accepted as they are.
#[test]
fn control_octets_in_an_unknown_header_value_are_passed_on() {
    let m = accepted(&base().add("X-Bin: a\0b\x07c\x7f").bytes());
    assert_eq!(m.header_named("X-Bin"), Some(&b"a\0b\x07c\x7f"[..]));
}

#[test]
fn white_space_before_colon_is_allowed() {
    let b = base()
        .add("Subject : spaced")
        .add("X-Tab\t:\ttabbed")
        .set("Via", "Via  : SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bKaaa")
        .set("CSeq", "CSeq\t: 1 INVITE")
        .bytes();
    let m = accepted(&b);
    assert_eq!(m.header_named("Subject"), Some(&b"spaced"[..]));
    assert_eq!(m.header_named("x-tab"), Some(&b"tabbed"[..]));
    assert_eq!(m.top_via().branch(), Some("z9hG4bKaaa"));
    assert_eq!(m.cseq().seq, 1);
}

#[test]
fn continuation_line_right_after_start_line() {
    let mut b = base().bytes();
    let at = find(&b, "\r\n") + 2;
    b.splice(at..at, *b" folded: nothing to fold into\r\n");
    refused_at(&b, ErrorKind::HeaderName, at);
}

#[test]
fn folded_values_are_accepted() {
    let b = base()
        .set("CSeq", "CSeq: 1\r\n INVITE")
        .add("Subject: one\r\n\ttwo\r\n  three")
        .bytes();
    let m = accepted(&b);
    assert_eq!(m.cseq().method, Method::Invite);
    assert_eq!(
        m.header(HeaderName::Subject),
        Some(&b"one\r\n\ttwo\r\n  three"[..])
    );
}

#[test]
fn trailing_white_space_in_a_value_is_not_part_of_it() {
    let m = accepted(&base().set("CSeq", "CSeq: 1 INVITE \t").bytes());
    assert_eq!(m.cseq_method_str(), "INVITE");
    // A fold holding only white space is the same thing (RFC 3261 §7.3.1:
    // a line break and the white space after it are one SP).
    let m = accepted(&base().set("CSeq", "CSeq: 1 INVITE\r\n \t").bytes());
    assert_eq!(m.cseq_method_str(), "INVITE");
    let m = accepted(&base().add("Subject: text\r\n ").bytes());
    assert_eq!(m.header(HeaderName::Subject), Some(&b"text"[..]));
}

#[test]
fn header_section_not_ended() {
    let mut b = base().bytes();
    b.truncate(body_start(&b) - 2);
    refused_at(&b, ErrorKind::HeaderFraming, b.len());
    let b = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1";
    refused_at(b, ErrorKind::HeaderFraming, b.len());
}

// ---- scalars -------------------------------------------------------------

#[test]
fn content_length_bounds() {
    let b = base()
        .set("Content-Length", "Content-Length: 4294967295")
        .bytes();
    refused_at(&b, ErrorKind::BodyTooShort, b.len());
    let b = base()
        .set("Content-Length", "Content-Length: 4294967296")
        .bytes();
    refused(
        &b,
        ErrorKind::Header("Content-Length"),
        value_of(&b, "Content-Length"),
    );
    let b = base()
        .set("Content-Length", "Content-Length: 99999999999999999999999")
        .bytes();
    refused(
        &b,
        ErrorKind::Header("Content-Length"),
        value_of(&b, "Content-Length"),
    );
    for bad in ["-4", "four", "", "4 4", "0x4", "+4"] {
        let b = base()
            .set("Content-Length", &format!("Content-Length: {bad}"))
            .bytes();
        refused(
            &b,
            ErrorKind::Header("Content-Length"),
            value_of(&b, "Content-Length"),
        );
    }
    let m = accepted(&base().set("Content-Length", "l:   0004  ").bytes());
    assert_eq!(m.content_length(), Some(4));
}

#[test]
fn cseq_bounds() {
    let m = accepted(&base().set("CSeq", "CSeq: 4294967295 INVITE").bytes());
    assert_eq!(m.cseq().seq, u32::MAX);
    let m = accepted(&base().set("CSeq", "CSeq: 0 INVITE").bytes());
    assert_eq!(m.cseq().seq, 0);
    let b = base().set("CSeq", "CSeq: 4294967296 INVITE").bytes();
    refused(&b, ErrorKind::Header("CSeq"), value_of(&b, "CSeq"));
    for bad in [
        "INVITE",
        "1",
        "1INVITE",
        "-1 INVITE",
        "1 INVITE extra",
        "1 IN<VITE",
    ] {
        let b = base().set("CSeq", &format!("CSeq: {bad}")).bytes();
        refused(&b, ErrorKind::Header("CSeq"), value_of(&b, "CSeq"));
    }
}

#[test]
fn max_forwards_bounds() {
    let m = accepted(&base().set("Max-Forwards", "Max-Forwards: 255").bytes());
    assert_eq!(m.max_forwards(), Some(255));
    let m = accepted(&base().set("Max-Forwards", "Max-Forwards: 0").bytes());
    assert_eq!(m.max_forwards(), Some(0));
    let m = accepted(&base().without("Max-Forwards").bytes());
    assert_eq!(m.max_forwards(), None);
    for bad in ["256", "4294967296", "-1", "seventy", ""] {
        let b = base()
            .set("Max-Forwards", &format!("Max-Forwards: {bad}"))
            .bytes();
        refused(
            &b,
            ErrorKind::Header("Max-Forwards"),
            value_of(&b, "Max-Forwards"),
        );
    }
}

#[test]
fn status_code_range() {
    let resp = |status: &str| base().start(&format!("SIP/2.0 {status}")).bytes();
    for good in ["100 Trying", "699 Odd", "200 OK", "183 "] {
        accepted(&resp(good));
    }
    // No reason phrase and no SP: accepted liberally (see start_line).
    assert_eq!(accepted(&resp("200")).status(), Some(200));
    for bad in [
        "099 Low",
        "700 High",
        "1000 Long",
        "20x OK",
        "2000",
        "OK",
        " 200 OK",
    ] {
        refused(&resp(bad), ErrorKind::StatusCode, 8..9);
    }
    // A status of 2^32 + 200 must not wrap to 200.
    refused(&resp("4294967496 OK"), ErrorKind::StatusCode, 8..9);
    refused(&resp("200OK"), ErrorKind::StatusCode, 11..12);
}

#[test]
fn sip_versions() {
    let b = base().start("INVITE sip:1002@cc.example SIP/2.1").bytes();
    let e = refused_at(&b, ErrorKind::Version, find(&b, "SIP/2.1"));
    assert_eq!(e.status(), 505);
    let b = base().start("SIP/3.0 200 OK").bytes();
    refused_at(&b, ErrorKind::Version, 0);
    for bad in [
        "SIP/2", "SIP/2.", "SIP/.0", "SIP/2.0a", "SIP/2 .0", "HTTP/1.1", "SIP",
    ] {
        let b = base()
            .start(&format!("INVITE sip:1002@cc.example {bad}"))
            .bytes();
        let e = refused(&b, ErrorKind::StartLine, 27..b.len());
        assert_eq!(e.status(), 400, "{bad}");
    }
    let b = base().start("SIP/2 200 OK").bytes();
    refused_at(&b, ErrorKind::StartLine, 0);
}

#[test]
fn sip_version_is_case_insensitive() {
    let m = accepted(&base().start("INVITE sip:1002@cc.example sip/2.0").bytes());
    assert_eq!(m.method(), Some(Method::Invite));
    let m = accepted(&base().start("sip/2.0 180 Ringing").bytes());
    assert_eq!(m.status(), Some(180));
    assert_eq!(m.reason(), Some(&b"Ringing"[..]));
}

// ---- Via -----------------------------------------------------------------

#[test]
fn via_without_branch_is_accepted() {
    let m = accepted(&base().set("Via", "Via: SIP/2.0/UDP 10.0.0.1:5061").bytes());
    assert_eq!(m.top_via().branch(), None);
    assert_eq!(m.top_via().port(), Some(5061));
}

#[test]
fn via_with_bad_port() {
    for bad in ["99999", "65536", "", "abc", "-1", "50 60"] {
        let b = base()
            .set(
                "Via",
                &format!("Via: SIP/2.0/UDP 10.0.0.1:{bad};branch=z9hG4bKaaa"),
            )
            .bytes();
        refused(&b, ErrorKind::Header("Via"), value_of(&b, "Via"));
    }
    let m = accepted(&base().set("Via", "Via: SIP/2.0/UDP h:65535").bytes());
    assert_eq!(m.top_via().port(), Some(65535));
}

#[test]
fn malformed_via_values() {
    for bad in [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 10.0.0.1",
        "SIP/2.0/UDP 10.0.0.1;branch",
        "SIP/2.0/UDP 10.0.0.1,",
        "SIP/2.0/UDP [2001:db8::1",
        "SIP/2.0/UDP 10.0.0.1;received=not-an-ip",
    ] {
        let b = base().set("Via", &format!("Via: {bad}")).bytes();
        refused(&b, ErrorKind::Header("Via"), value_of(&b, "Via"));
    }
    // A second, malformed Via line is refused too.
    let b = base().add("v: SIP/2.0/UDP").bytes();
    refused(&b, ErrorKind::Header("Via"), value_of(&b, "v:"));
}

// ---- mandatory and single-value headers ----------------------------------

#[test]
fn missing_mandatory_headers() {
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        let b = base().without(name).bytes();
        refused_at(&b, ErrorKind::Missing(name), body_start(&b));
    }
    // Max-Forwards and Content-Length are not mandatory.
    accepted(&base().without("Max-Forwards").bytes());
    let m = accepted(&base().without("Content-Length").bytes());
    assert_eq!(m.body(), b"body");
}

#[test]
fn repeated_single_value_headers() {
    let cases = [
        ("From", "From: <sip:x@cc.example>;tag=2"),
        ("From", "f: <sip:x@cc.example>;tag=2"),
        ("To", "To: <sip:y@cc.example>"),
        ("To", "t: <sip:1002@cc.example>"),
        ("Call-ID", "Call-ID: other@10.0.0.1"),
        ("Call-ID", "i: abc@10.0.0.1"),
        ("CSeq", "CSeq: 1 INVITE"),
        ("Max-Forwards", "Max-Forwards: 70"),
        ("Content-Length", "Content-Length: 4"),
        ("Content-Length", "l: 4"),
    ];
    for (name, line) in cases {
        let m = base().add(line);
        let b = m.bytes();
        // The second occurrence is the one named: `line` is added after the
        // original (or, for Content-Length, just before it).
        let second = if name == "Content-Length" {
            rfind(&b, "Content-Length: 4")
        } else {
            rfind(&b, line)
        };
        refused_at(&b, ErrorKind::Repeated(name), second);
    }
    // Repeated list headers are fine.
    let m = accepted(
        &base()
            .add("Via: SIP/2.0/TCP 10.0.0.9;branch=z9hG4bKbbb")
            .add("Route: <sip:p1;lr>")
            .add("Route: <sip:p2;lr>")
            .bytes(),
    );
    assert_eq!(m.vias().count(), 2);
    assert_eq!(m.routes().count(), 2);
}

#[test]
fn malformed_single_value_headers() {
    for (name, bad) in [
        ("Call-ID", "a b"),
        ("Call-ID", ""),
        ("Call-ID", "a@b@c"),
        ("Call-ID", "a,b"),
        ("To", "<sip:1002@cc.example> <sip:other@cc.example>"),
        ("To", "<sip:1002@cc.example>;tag"),
        ("To", "\"unclosed <sip:1002@cc.example>"),
        ("From", "sip:1001@cc.example;tag=1;;"),
        ("From", "<sip:1001@cc.example"),
    ] {
        let b = base().set(name, &format!("{name}: {bad}")).bytes();
        refused(
            &b,
            ErrorKind::Header(name),
            value_of(&b, &format!("{name}:")),
        );
    }
}

#[test]
fn cseq_method_must_match() {
    let b = base().set("CSeq", "CSeq: 1 BYE").bytes();
    refused_at(&b, ErrorKind::CSeqMethod, find(&b, "BYE"));
    // Methods are case-sensitive.
    let b = base().set("CSeq", "CSeq: 1 invite").bytes();
    refused_at(&b, ErrorKind::CSeqMethod, find(&b, "invite"));
    // Responses carry the method of the request they answer.
    let m = accepted(
        &base()
            .start("SIP/2.0 200 OK")
            .set("CSeq", "CSeq: 7 BYE")
            .bytes(),
    );
    assert_eq!(m.cseq().method, Method::Bye);
}

#[test]
fn unknown_method_with_matching_cseq() {
    let m = accepted(
        &base()
            .start("FOO.bar~1 sip:1002@cc.example SIP/2.0")
            .set("CSeq", "CSeq: 1 FOO.bar~1")
            .bytes(),
    );
    assert_eq!(m.method(), Some(Method::Other));
    assert_eq!(m.method_str(), Some("FOO.bar~1"));
    assert_eq!(m.cseq().method, Method::Other);
}

// ---- URIs ----------------------------------------------------------------

#[test]
fn unknown_scheme_request_uri() {
    let m = accepted(&base().start("INVITE urn:service:sos SIP/2.0").bytes());
    let uri = m.request_uri().unwrap();
    assert_eq!(uri.scheme(), Scheme::Other);
    assert_eq!(uri.as_str(), "urn:service:sos");
}

#[test]
fn tel_request_uri() {
    let m = accepted(
        &base()
            .start("INVITE tel:+1-201-555-0123;phone-context=cc.example SIP/2.0")
            .bytes(),
    );
    let uri = m.request_uri().unwrap();
    assert_eq!(uri.scheme(), Scheme::Tel);
    assert_eq!(uri.host(), "+1-201-555-0123");
    assert_eq!(uri.param("phone-context"), Some(Some(&b"cc.example"[..])));
    let b = base().start("INVITE tel: SIP/2.0").bytes();
    refused_at(&b, ErrorKind::RequestUri, find(&b, "tel:"));
}

#[test]
fn request_uri_with_headers_is_refused() {
    let b = base()
        .start("INVITE sip:1002@cc.example?Subject=hi SIP/2.0")
        .bytes();
    refused_at(&b, ErrorKind::RequestUri, find(&b, "sip:"));
    // In a Contact the same URI is fine inside angle brackets.
    let m = accepted(
        &base()
            .add("Contact: <sip:1001@10.0.0.1?Subject=hi>")
            .bytes(),
    );
    assert_eq!(m.contacts().next().unwrap().uri().headers(), b"Subject=hi");
}

#[test]
fn malformed_request_uris() {
    for bad in [
        "sip:",
        "sip:user@",
        "sip:2001:db8::1",
        "sip:[2001:db8::1",
        "sip:h:99999",
        "sip:h;;lr",
        "sip:us%zzer@h",
        "<sip:1002@cc.example>",
        "1002@cc.example",
    ] {
        let b = base().start(&format!("INVITE {bad} SIP/2.0")).bytes();
        refused_at(&b, ErrorKind::RequestUri, 7);
    }
    let m = accepted(
        &base()
            .start("INVITE sip:[2001:db8::1]:5070;lr SIP/2.0")
            .bytes(),
    );
    assert_eq!(m.request_uri().unwrap().port(), Some(5070));
}

/// IPv6 references that RFC 3261's grammar, read with RFC 4291's counts,
/// refuses: the same check in a Request-URI, a To URI, a Via sent-by and
/// the Via's received and maddr.
const BAD_IPV6: [&str; 7] = [
    "[1::2::3]",
    "[1:2:3:4:5:6:7:8:9]",
    "[:::]",
    "[12345::1]",
    "[2001:::1]",
    "[::1.2.3.999]",
    "[::1.2.3]",
];

const GOOD_IPV6: [&str; 12] = [
    "[::1]",
    "[::]",
    "[2001:db8::9]",
    "[2001:db8:0:0:0:0:0:1]",
    "[::ffff:192.0.2.1]",
    "[1:2:3:4:5:6:7::]",
    "[::2:3:4:5:6:7:8]",
    "[1:2:3:4:5:6:1.2.3.4]",
    "[fe80::1]",
    "[2001:DB8::A:bC]",
    "[2001:db8::192.0.2.1]",
    // RFC 5118 §4.10: tolerated.
    "[2001:db8:::192.0.2.1]",
];

#[test]
fn malformed_ipv6_references_are_refused() {
    for bad in BAD_IPV6 {
        let b = base()
            .start(&format!("INVITE sip:1002@{bad}:5060 SIP/2.0"))
            .bytes();
        refused_at(&b, ErrorKind::RequestUri, 7);

        let b = base().set("To", &format!("To: <sip:1002@{bad}>")).bytes();
        refused(&b, ErrorKind::Header("To"), value_of(&b, "To:"));

        for via in [
            format!("Via: SIP/2.0/UDP {bad}:5061;branch=z9hG4bKaaa"),
            format!("Via: SIP/2.0/UDP 10.0.0.1;received={bad};branch=z9hG4bKaaa"),
            format!("Via: SIP/2.0/UDP 10.0.0.1;maddr={bad};branch=z9hG4bKaaa"),
        ] {
            let b = base().set("Via", &via).bytes();
            refused(&b, ErrorKind::Header("Via"), value_of(&b, "Via"));
        }
    }
    // received may be bare IPv6 (RFC 3261) or bracketed (RFC 5118 §4.5),
    // but a bare malformed one or a bracketed IPv4 one is still wrong.
    for received in ["1::2::3", "2001:::1", "[192.0.2.1]"] {
        let via = format!("Via: SIP/2.0/UDP 10.0.0.1;received={received};branch=z9hG4bKaaa");
        let b = base().set("Via", &via).bytes();
        refused(&b, ErrorKind::Header("Via"), value_of(&b, "Via"));
    }
}

#[test]
fn well_formed_ipv6_references_are_accepted() {
    for good in GOOD_IPV6 {
        let m = accepted(
            &base()
                .start(&format!("INVITE sip:1002@{good}:5060 SIP/2.0"))
                .set("To", &format!("To: <sip:1002@{good}>"))
                .set(
                    "Via",
                    &format!(
                        "Via: SIP/2.0/UDP {good}:5061;received={good};maddr={good};branch=z9hG4bKaaa"
                    ),
                )
                .bytes(),
        );
        let uri = m.request_uri().unwrap();
        assert_eq!((uri.host(), uri.port()), (good, Some(5060)));
        assert_eq!(m.to().uri().host(), good);
        let via = m.top_via();
        assert_eq!((via.host(), via.port()), (good, Some(5061)));
        assert_eq!(via.received(), Some(good));
        assert_eq!(via.maddr(), Some(good));
        let bare = &good[1..good.len() - 1];
        let b = base()
            .set(
                "Via",
                &format!("Via: SIP/2.0/UDP 10.0.0.1;received={bare};branch=z9hG4bKaaa"),
            )
            .bytes();
        assert_eq!(accepted(&b).top_via().received(), Some(bare));
    }
}

// ---- Contact, Route ------------------------------------------------------

#[test]
fn contact_star() {
    let m = accepted(
        &base()
            .start("REGISTER sip:cc.example SIP/2.0")
            .set("CSeq", "CSeq: 2 REGISTER")
            .add("Contact: *")
            .add("Expires: 0")
            .bytes(),
    );
    assert!(m.is_contact_star());
    assert_eq!(m.contacts().count(), 0);
    assert_eq!(m.expires(), Some(0));
    for bad in ["*, <sip:a@b>", "**", "*;expires=0"] {
        let b = base().add(&format!("Contact: {bad}")).bytes();
        refused(&b, ErrorKind::Header("Contact"), value_of(&b, "Contact"));
    }
}

#[test]
fn contact_expires_huge_saturates() {
    let m = accepted(
        &base()
            .add("Contact: <sip:1001@10.0.0.1>;expires=280297596632815, <sip:1001@10.0.0.2>;expires=4294967296")
            .add("Expires: 10000000000000000000000000000000000000000000000")
            .bytes(),
    );
    let expiries: Vec<_> = m.contacts().map(|c| c.expires()).collect();
    assert_eq!(expiries, [Some(u32::MAX), Some(u32::MAX)]);
    assert_eq!(m.expires(), Some(u32::MAX));
}

#[test]
fn route_needs_angle_brackets() {
    for name in ["Route", "Record-Route"] {
        for bad in ["sip:p1.cc.example;lr", "<sip:p1;lr>, sip:p2;lr"] {
            let b = base().add(&format!("{name}: {bad}")).bytes();
            refused(
                &b,
                ErrorKind::Header(name),
                value_of(&b, &format!("{name}:")),
            );
        }
    }
    let m = accepted(
        &base()
            .add("Route: \"p, one\" <sip:p1;lr>;x=1 ,\r\n <sip:p2;lr>")
            .bytes(),
    );
    let hosts: Vec<_> = m.routes().map(|r| r.uri().host().to_owned()).collect();
    assert_eq!(hosts, ["p1", "p2"]);
}

// ---- body ----------------------------------------------------------------

#[test]
fn body_shorter_than_content_length() {
    let b = base().set("Content-Length", "Content-Length: 5").bytes();
    refused_at(&b, ErrorKind::BodyTooShort, b.len());
}

#[test]
fn body_longer_than_content_length() {
    let b = base().set("Content-Length", "Content-Length: 2").bytes();
    let m = accepted(&b);
    assert_eq!(m.body(), b"bo");
    assert_eq!(m.body_span().end as usize, b.len() - 2);
    let m = accepted(&base().set("Content-Length", "Content-Length: 0").bytes());
    assert_eq!(m.body(), b"");
}

#[test]
fn binary_body() {
    let body: Vec<u8> = (0..=255u8).rev().collect();
    let m = accepted(&base().body(&body).bytes());
    assert_eq!(m.body(), &body[..]);
}

// ---- size ----------------------------------------------------------------

#[test]
fn very_long_header_values() {
    let long = "a".repeat(10 * 1024);
    let call_id = format!("{long}@{long}");
    let display = format!("\"{}\"", "x ".repeat(5 * 1024));
    let b = base()
        .add(&format!("X-Long: {long}"))
        .add(&format!("Subject: {}", "word ".repeat(2048)))
        .set("Call-ID", &format!("Call-ID: {call_id}"))
        .set(
            "From",
            &format!("From: {display} <sip:1001@cc.example>;tag=1"),
        )
        .set(
            "Via",
            &format!("Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{long}"),
        )
        .bytes();
    assert!(b.len() > 50 * 1024);
    let m = accepted(&b);
    assert_eq!(m.header_named("X-Long"), Some(long.as_bytes()));
    assert_eq!(m.call_id(), call_id);
    assert_eq!(m.from().display_name().unwrap().len(), 10 * 1024);
    assert_eq!(m.top_via().branch().unwrap().len(), 7 + long.len());
}

#[test]
fn a_thousand_headers() {
    let mut m = base();
    for i in 0..1000 {
        m = m.add(&format!("X-H{i}: value {i}"));
    }
    let msg = accepted(&m.bytes());
    assert_eq!(msg.header_count(), BASE_HEADERS + 1000);
    assert_eq!(msg.header_named("X-H999"), Some(&b"value 999"[..]));
    assert_eq!(msg.cseq().seq, 1);
    assert_eq!(msg.body(), b"body");
}

#[test]
fn a_thousand_vias_and_routes() {
    let vias: Vec<String> = (0..1000)
        .map(|i| format!("SIP/2.0/UDP 10.0.{}.{};branch=z9hG4bK{i}", i / 256, i % 256))
        .collect();
    let routes: Vec<String> = (0..1000).map(|i| format!("<sip:p{i};lr>")).collect();
    let b = base()
        .set("Via", &format!("Via: {}", vias.join(",")))
        .add(&format!("Route: {}", routes.join(" , ")))
        .bytes();
    let m = accepted(&b);
    assert_eq!(m.vias().count(), 1000);
    assert_eq!(m.routes().count(), 1000);
    assert_eq!(m.vias().last().unwrap().branch(), Some("z9hG4bK999"));
}

/// What a proxy checks before relaying a response: a Via below the top
/// one, in the same line or another (RFC 3261 §16.7 step 3).
#[test]
fn more_vias_than_the_top_one_are_seen_in_the_line_or_below() {
    let top = "Via: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bKaaa";
    let second = "SIP/2.0/TCP [2001:db8::9];branch=z9hG4bKbbb";
    let only_top = accepted(&base().bytes());
    assert!(!only_top.has_more_vias());
    let spaced = accepted(&base().set("Via", &format!("{top} \t ")).bytes());
    assert!(!spaced.has_more_vias(), "trailing white space is no Via");
    for m in [
        base().set("Via", &format!("{top}, {second}")),
        base().set("Via", &format!("{top} ,\r\n {second}")),
        base().add(&format!("Via: {second}")),
        base().add(&format!("v: {second}")),
    ] {
        let b = m.bytes();
        let msg = accepted(&b);
        assert!(msg.has_more_vias(), "{:?}", String::from_utf8_lossy(&b));
        assert_eq!(msg.vias().count(), 2);
    }
}

#[test]
fn deeply_nested_quoted_pairs() {
    let pairs = "\\\\\\\"".repeat(10_000); // \\ and \" alternating
    let b = base()
        .set(
            "From",
            &format!("From: \"{pairs}\" <sip:1001@cc.example>;tag=1"),
        )
        .set("To", &format!("To: \"{pairs}\" <sip:1002@cc.example>"))
        .bytes();
    let m = accepted(&b);
    assert_eq!(m.from().display_name(), Some(pairs.as_bytes()));
    assert_eq!(m.to().uri().user(), Some(&b"1002"[..]));

    // Nested-looking brackets and quotes inside a quoted string are text.
    let nested = format!("{}{}", "<\\\"(".repeat(2000), ")\\\">".repeat(2000));
    let m = accepted(
        &base()
            .set("To", &format!("To: \"{nested}\" <sip:1002@cc.example>"))
            .bytes(),
    );
    assert_eq!(m.to().display_name(), Some(nested.as_bytes()));

    // An odd number of backslashes escapes the closing quote: unterminated.
    let b = base()
        .set(
            "From",
            &format!(
                "From: \"{}\\\" <sip:1001@cc.example>;tag=1",
                "\\\\".repeat(5000)
            ),
        )
        .bytes();
    refused(&b, ErrorKind::Header("From"), value_of(&b, "From"));
}

// ---- no panic ------------------------------------------------------------

fn torture_files() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/torture");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sip"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Parses `b` and, when it parses, runs every accessor and edit over it;
/// returns whether it parsed. A panic anywhere fails the test.
fn exercise(b: &[u8]) -> bool {
    let Ok(m) = parse(b) else {
        return false;
    };
    let _ = (m.method_str(), m.request_uri(), m.status(), m.reason());
    let _ = (m.call_id(), m.cseq(), m.max_forwards(), m.content_length());
    for v in m.vias() {
        let _ = (v.host(), v.port(), v.branch(), v.received(), v.rport());
        let _ = v.params().count();
    }
    for na in m.contacts().chain(m.routes()).chain(m.record_routes()) {
        let _ = (
            na.display_name(),
            na.tag(),
            na.expires(),
            na.params().count(),
        );
        let u = na.uri();
        let _ = (
            u.user(),
            u.host(),
            u.port(),
            u.params().count(),
            u.headers(),
        );
    }
    let _ = (m.from().tag(), m.to().tag(), m.from().uri().user_is(b"x"));
    let _ = (m.expires(), m.min_expires(), m.is_contact_star());
    let _ = m
        .require()
        .chain(m.proxy_require())
        .chain(m.supported())
        .count();
    for auth in [
        m.authorization(),
        m.proxy_authorization(),
        m.www_authenticate(),
    ]
    .into_iter()
    .flatten()
    {
        let _ = (auth.scheme(), auth.params().count(), auth.digest());
    }
    let mut out = BytesMut::new();
    m.strip_top_via(&mut out);
    let _ = parse(&out);
    if m.is_request() {
        out.clear();
        let edit = Forward {
            via: Some("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx"),
            record_route: Some("<sip:192.0.2.1;lr>"),
            request_uri: Some("sip:x@192.0.2.2"),
            pop_routes: 1,
            consume_credentials_of: None,
        };
        if m.forward(&edit, &mut out).is_ok() {
            // A forwarded valid request is a valid request.
            if let Err(e) = parse(&out) {
                panic!(
                    "forwarded request does not parse ({e}): {:?}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
        out.clear();
        m.response(400, "Bad Request", Some("t"), &[("X", "y")], &mut out);
        if let Err(e) = parse(&out) {
            panic!(
                "response does not parse ({e}): {:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }
    true
}

#[test]
fn no_panic_on_truncation() {
    let mut parsed_prefixes = 0;
    for (name, file) in torture_files() {
        for cut in 0..=file.len() {
            let ok = std::panic::catch_unwind(|| exercise(&file[..cut]))
                .unwrap_or_else(|_| panic!("{name}: panic on the first {cut} bytes"));
            parsed_prefixes += usize::from(ok);
        }
    }
    // Prefixes that cut only body octets of a message without
    // Content-Length still parse: the sweep reaches the edit code.
    assert!(parsed_prefixes > 100, "{parsed_prefixes}");
}

/// Octets that change a message's structure when they replace another.
const MUTATIONS: &[u8] = b"\0\r\n \t:;,\"<>\\@[]%=/?*9\x7f\xff";

/// Mutations tried per position; consecutive positions take the next
/// octets of [`MUTATIONS`] in turn, so every octet lands everywhere in a
/// file within a few positions (and the sweep stays within seconds).
const PER_BYTE: usize = 2;

#[test]
fn no_panic_on_single_byte_mutation() {
    let mut parsed = 0;
    let mut total = 0;
    for (name, file) in torture_files() {
        let mut buf = file.clone();
        for at in 0..file.len() {
            for k in 0..PER_BYTE {
                let m = MUTATIONS[(at * PER_BYTE + k) % MUTATIONS.len()];
                if file[at] == m {
                    continue;
                }
                buf[at] = m;
                let ok = std::panic::catch_unwind(|| exercise(&buf))
                    .unwrap_or_else(|_| panic!("{name}: panic with byte {at} set to {m:#04x}"));
                parsed += usize::from(ok);
                total += 1;
            }
            buf[at] = file[at];
        }
        // Deleting a byte shifts everything after it.
        for at in 0..file.len() {
            let mut cut = file.clone();
            cut.remove(at);
            std::panic::catch_unwind(|| exercise(&cut))
                .unwrap_or_else(|_| panic!("{name}: panic with byte {at} deleted"));
        }
    }
    // Many mutations land in values the parser accepts as they are, so the
    // sweep reaches the accessors and the edits too.
    assert!(parsed > total / 8, "{parsed} of {total}");
}
