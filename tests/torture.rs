//! RFC 4475 / RFC 5118 torture messages against `Message::parse`.
//!
//! `MANIFEST.tsv` gives each message's expected verdict. Every `accept`
//! message must parse; every `reject` message marked `[strict]` or
//! `[parse-ok]` must be refused. For `[lenient-ok]` messages sipblade's
//! choice is recorded in `LENIENT` below, with the reason.

use std::path::Path;

use bytes::Bytes;
use sipblade::sip::{ErrorKind, Message};

/// sipblade's verdict on each `[lenient-ok]` message: `true` = accepted.
const LENIENT: &[(&str, bool, &str)] = &[
    (
        "quotbal",
        false,
        "To is read by the proxy; an unclosed quote is not guessed at",
    ),
    (
        "ltgtruri",
        false,
        "'<' is not a URI character; never forward the brackets",
    ),
    ("lwsruri", false, "a Request-URI has no white space"),
    (
        "lwsstart",
        false,
        "the Request-Line has exactly one SP between elements",
    ),
    ("trws", false, "the SIP-Version ends the Request-Line"),
    (
        "escruri",
        false,
        "a Request-URI may not carry headers (RFC 3261 19.1.1)",
    ),
    (
        "baddate",
        true,
        "Date is not a header the proxy reads (SPEC 3); it is passed on untouched",
    ),
    (
        "regbadct",
        false,
        "a Contact URI with '?' must be in angle brackets",
    ),
    (
        "badaspec",
        false,
        "no white space inside '<' '>' around a URI a proxy reads",
    ),
    (
        "baddn",
        false,
        "unquoted display name with ','; also no empty line ends the headers",
    ),
];

struct Case {
    name: String,
    expected: String,
    note: String,
}

fn manifest() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/torture");
    let text = std::fs::read_to_string(dir.join("MANIFEST.tsv")).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            Case {
                name: cols[0].into(),
                expected: cols[3].into(),
                note: cols[4].into(),
            }
        })
        .collect()
}

fn parse(name: &str) -> Result<Message, sipblade::sip::ParseError> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/torture")
        .join(format!("{name}.sip"));
    Message::parse(Bytes::from(std::fs::read(path).unwrap()))
}

#[test]
fn corpus_verdicts() {
    let cases = manifest();
    assert_eq!(cases.len(), 61, "RFC 4475 has 49 messages, RFC 5118 has 12");
    let mut failures = Vec::new();
    for case in &cases {
        let result = parse(&case.name);
        let want_ok = if case.note.contains("[lenient-ok]") {
            LENIENT
                .iter()
                .find(|(n, ..)| *n == case.name)
                .unwrap_or_else(|| {
                    panic!(
                        "{}: lenient-ok message without a recorded choice",
                        case.name
                    )
                })
                .1
        } else {
            case.expected == "accept"
        };
        if result.is_ok() != want_ok {
            failures.push(format!(
                "{}: expected {}, got {:?}",
                case.name,
                if want_ok { "ok" } else { "error" },
                result.err()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_lenient_choice_names_a_lenient_message() {
    let cases = manifest();
    for (name, ..) in LENIENT {
        let case = cases.iter().find(|c| c.name == *name).unwrap();
        assert!(case.note.contains("[lenient-ok]"), "{name}");
    }
}

#[test]
fn errors_map_to_the_right_status() {
    assert_eq!(parse("badvers").unwrap_err().kind, ErrorKind::Version);
    assert_eq!(parse("badvers").unwrap_err().status(), 505);
    assert_eq!(parse("mismatch01").unwrap_err().kind, ErrorKind::CSeqMethod);
    assert_eq!(
        parse("mcl01").unwrap_err().kind,
        ErrorKind::Repeated("Content-Length")
    );
    assert_eq!(parse("clerr").unwrap_err().kind, ErrorKind::BodyTooShort);
    assert_eq!(
        parse("ncl").unwrap_err().kind,
        ErrorKind::Header("Content-Length")
    );
    assert_eq!(parse("bigcode").unwrap_err().kind, ErrorKind::StatusCode);
    assert_eq!(parse("insuf").unwrap_err().kind, ErrorKind::Missing("From"));
    assert!(matches!(
        parse("multi01").unwrap_err().kind,
        ErrorKind::Repeated(_)
    ));
    assert_eq!(
        parse("scalar02").unwrap_err().kind,
        ErrorKind::Header("CSeq")
    );
    assert_eq!(parse("ipv6-bad").unwrap_err().kind, ErrorKind::RequestUri);
}
