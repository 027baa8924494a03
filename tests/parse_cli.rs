//! `sipblade parse` as a user runs it: the real binary, checked against
//! SPEC §3 (one JSON object per line, its fields, their order and types;
//! stdin when no file; exit status 0 / 1 / 2) and against the library's own
//! verdicts on the torture corpus.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bytes::Bytes;
use serde_json::{Map, Value};
use sipblade::sip::Message;

const REQUEST: &[u8] = b"INVITE sip:1002@cc.example;transport=udp SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bKaaa, SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKbbb\r\n\
Max-Forwards: 70\r\n\
From: \"A\" <sip:1001@cc.example>;tag=1\r\n\
To: <sip:1002@cc.example>\r\n\
Call-ID: abc@10.0.0.1\r\n\
CSeq: 42 INVITE\r\n\
Content-Length: 4\r\n\
\r\n\
bodyTRAILING";

const RESPONSE: &[u8] = b"SIP/2.0 486 Busy Here\r\n\
v: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bKaaa\r\n\
f: <sip:1001@cc.example>;tag=1\r\n\
t: <sip:1002@cc.example>;tag=2\r\n\
i: xyz\r\n\
CSeq: 4294967295 INVITE\r\n\
\r\n";

/// Refused: CSeq method differs from the request method.
const INVALID: &[u8] = b"OPTIONS sip:1002@cc.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bKaaa\r\n\
From: <sip:1001@cc.example>;tag=1\r\n\
To: <sip:1002@cc.example>\r\n\
Call-ID: abc\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\
\r\n";

const OK_KEYS: [&str; 10] = [
    "file",
    "ok",
    "kind",
    "method",
    "status",
    "request_uri",
    "call_id",
    "cseq",
    "headers",
    "body_len",
];
const ERR_KEYS: [&str; 4] = ["file", "ok", "error", "offset"];

fn sipblade() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sipblade"))
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = sipblade();
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn sipblade");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn parse_args(files: &[&Path]) -> Output {
    let mut args = vec!["parse"];
    args.extend(files.iter().map(|p| p.to_str().unwrap()));
    run(&args, None)
}

/// The stdout lines, each parsed as one JSON object (key order kept).
fn lines(out: &Output) -> Vec<Map<String, Value>> {
    let text = std::str::from_utf8(&out.stdout).expect("stdout is UTF-8");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "last line not ended: {text:?}"
    );
    text.lines()
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => map,
            other => panic!("not a JSON object: {line:?} ({other:?})"),
        })
        .collect()
}

fn keys(map: &Map<String, Value>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn status(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

#[test]
fn request_line_fields_order_and_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "invite.sip", REQUEST);
    let out = parse_args(&[&path]);
    assert_eq!(status(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty());
    let lines = lines(&out);
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(keys(l), OK_KEYS);
    assert_eq!(l["file"], Value::from(path.to_str().unwrap()));
    assert_eq!(l["ok"], Value::Bool(true));
    assert_eq!(l["kind"], "request");
    assert_eq!(l["method"], "INVITE");
    assert_eq!(l["status"], Value::Null);
    assert_eq!(l["request_uri"], "sip:1002@cc.example;transport=udp");
    assert_eq!(l["call_id"], "abc@10.0.0.1");
    assert_eq!(l["cseq"].as_u64(), Some(42));
    // Header fields (lines), not values: the Via line holds two.
    assert_eq!(l["headers"].as_u64(), Some(7));
    // Content-Length octets; what follows them in the file is not body.
    assert_eq!(l["body_len"].as_u64(), Some(4));
}

#[test]
fn response_line_fields_order_and_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "486.sip", RESPONSE);
    let out = parse_args(&[&path]);
    assert_eq!(status(&out), 0);
    let lines = lines(&out);
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(keys(l), OK_KEYS);
    assert_eq!(l["ok"], Value::Bool(true));
    assert_eq!(l["kind"], "response");
    assert_eq!(l["method"], Value::Null);
    assert!(l["status"].is_u64());
    assert_eq!(l["status"].as_u64(), Some(486));
    assert_eq!(l["request_uri"], Value::Null);
    assert_eq!(l["call_id"], "xyz");
    assert_eq!(l["cseq"].as_u64(), Some(u64::from(u32::MAX)));
    assert_eq!(l["headers"].as_u64(), Some(5));
    assert_eq!(l["body_len"].as_u64(), Some(0));
}

#[test]
fn invalid_line_fields_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "bad.sip", INVALID);
    let out = parse_args(&[&path]);
    assert_eq!(status(&out), 1);
    let lines = lines(&out);
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(keys(l), ERR_KEYS);
    assert_eq!(l["file"], Value::from(path.to_str().unwrap()));
    assert_eq!(l["ok"], Value::Bool(false));
    let want = Message::parse(Bytes::from_static(INVALID)).unwrap_err();
    assert_eq!(l["error"], Value::from(want.kind.to_string()));
    assert!(!want.kind.to_string().is_empty());
    assert_eq!(l["offset"].as_u64(), Some(want.offset as u64));
    // The offset points at the CSeq method.
    let at = want.offset;
    assert_eq!(&INVALID[at..at + 6], b"INVITE");
}

#[test]
fn several_files_one_line_each_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.sip", REQUEST);
    let b = write(dir.path(), "b.sip", RESPONSE);
    let c = write(dir.path(), "c.sip", REQUEST);
    let out = parse_args(&[&a, &b, &c]);
    assert_eq!(status(&out), 0, "all valid");
    let lines = lines(&out);
    let files: Vec<_> = lines.iter().map(|l| l["file"].clone()).collect();
    assert_eq!(
        files,
        [&a, &b, &c].map(|p| Value::from(p.to_str().unwrap()))
    );
    let kinds: Vec<_> = lines.iter().map(|l| l["kind"].clone()).collect();
    assert_eq!(kinds, ["request", "response", "request"]);

    // One invalid file among valid ones: every line printed, exit 1.
    let bad = write(dir.path(), "bad.sip", INVALID);
    let out = parse_args(&[&a, &bad, &b]);
    assert_eq!(status(&out), 1);
    let oks: Vec<_> = lines_ok(&out);
    assert_eq!(oks, [true, false, true]);
}

fn lines_ok(out: &Output) -> Vec<bool> {
    lines(out)
        .iter()
        .map(|l| l["ok"].as_bool().unwrap())
        .collect()
}

#[test]
fn file_names_are_printed_as_given() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "rel.sip", REQUEST);
    std::fs::create_dir(dir.path().join("sub dir")).unwrap();
    write(&dir.path().join("sub dir"), "ünï.sip", RESPONSE);
    let out = sipblade()
        .args(["parse", "rel.sip", "./sub dir/ünï.sip"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(status(&out), 0);
    let files: Vec<_> = lines(&out).iter().map(|l| l["file"].clone()).collect();
    assert_eq!(files, ["rel.sip", "./sub dir/ünï.sip"]);
}

#[test]
fn stdin_when_no_file() {
    let out = run(&["parse"], Some(REQUEST));
    assert_eq!(status(&out), 0);
    let lines = lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(keys(&lines[0]), OK_KEYS);
    assert_eq!(lines[0]["file"], "-");
    assert_eq!(lines[0]["call_id"], "abc@10.0.0.1");

    let out = run(&["parse"], Some(INVALID));
    assert_eq!(status(&out), 1);
    let lines = self::lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(keys(&lines[0]), ERR_KEYS);
    assert_eq!(lines[0]["file"], "-");

    // Empty stdin is an empty message: invalid, not an I/O error.
    let out = run(&["parse"], Some(b""));
    assert_eq!(status(&out), 1);
    assert_eq!(self::lines(&out)[0]["offset"].as_u64(), Some(0));
}

#[test]
fn missing_file_exits_2_and_still_reports_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.sip", REQUEST);
    let missing = dir.path().join("no-such-file.sip");
    let b = write(dir.path(), "b.sip", RESPONSE);
    let out = parse_args(&[&a, &missing, &b]);
    assert_eq!(status(&out), 2);
    let files: Vec<_> = lines(&out).iter().map(|l| l["file"].clone()).collect();
    assert_eq!(
        files,
        [&a, &b].map(|p| Value::from(p.to_str().unwrap())),
        "one line per readable file, none for the missing one"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one error line: {stderr:?}");
    assert!(stderr.contains("no-such-file.sip"), "{stderr:?}");

    // An I/O error outranks an invalid message (both are errors; 2 is the
    // one that says "could not even read it"). SPEC §3 does not order them;
    // this is the current choice.
    let bad = write(dir.path(), "bad.sip", INVALID);
    let out = parse_args(&[&bad, &missing]);
    assert_eq!(status(&out), 2);
    assert_eq!(lines_ok(&out), [false]);

    // A directory cannot be read as a message either.
    let out = parse_args(&[dir.path()]);
    assert_eq!(status(&out), 2);
    assert!(lines(&out).is_empty());
}

#[test]
fn a_full_standard_output_is_an_io_error_told_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.sip", REQUEST);
    let certs = dir.path().join("certs");
    for args in [
        vec!["parse", a.to_str().unwrap()],
        vec!["certs", "--dir", certs.to_str().unwrap(), "--blades", "b1"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = sipblade().args(&args).stdout(full).output().unwrap();
        assert_eq!(status(&out), 2, "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(stderr.contains("standard output"), "{args:?}: {stderr:?}");
    }
}

#[test]
fn help_for_every_command_exits_0() {
    for args in [
        &["--help"][..],
        &["help"],
        &["run", "--help"],
        &["demo", "--help"],
        &["parse", "--help"],
        &["certs", "--help"],
        &["help", "parse"],
    ] {
        let out = run(args, None);
        assert_eq!(status(&out), 0, "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage:"), "{args:?}: {text:?}");
    }
    let parse_help = String::from_utf8(run(&["parse", "--help"], None).stdout).unwrap();
    assert!(parse_help.contains("FILE"), "{parse_help}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["no-such-command"],
        &["parse", "--no-such-flag"],
        &["certs"],
    ] {
        let out = run(args, None);
        assert_eq!(status(&out), 2, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

/// Every torture message in one call: one line each, in order, agreeing
/// with `Message::parse` field by field.
#[test]
fn torture_corpus_agrees_with_the_library() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/torture");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sip"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 61);
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = parse_args(&refs);
    assert_eq!(status(&out), 1, "the corpus holds invalid messages");
    let lines = lines(&out);
    assert_eq!(lines.len(), files.len());
    let mut invalid = 0;
    for (path, l) in files.iter().zip(&lines) {
        let name = path.to_str().unwrap();
        assert_eq!(l["file"], name);
        let bytes = std::fs::read(path).unwrap();
        match Message::parse(Bytes::from(bytes)) {
            Ok(m) => {
                assert_eq!(keys(l), OK_KEYS, "{name}");
                assert_eq!(l["ok"], true, "{name}");
                let kind = if m.is_request() {
                    "request"
                } else {
                    "response"
                };
                assert_eq!(l["kind"], kind, "{name}");
                assert_eq!(l["method"], Value::from(m.method_str()), "{name}");
                assert_eq!(l["status"], Value::from(m.status()), "{name}");
                let uri = m.request_uri().map(|u| u.as_str().to_owned());
                assert_eq!(l["request_uri"], Value::from(uri), "{name}");
                assert_eq!(l["call_id"], m.call_id(), "{name}");
                assert_eq!(l["cseq"], m.cseq().seq, "{name}");
                assert_eq!(l["headers"], m.header_count(), "{name}");
                assert_eq!(l["body_len"], m.body().len(), "{name}");
            }
            Err(e) => {
                invalid += 1;
                assert_eq!(keys(l), ERR_KEYS, "{name}");
                assert_eq!(l["ok"], false, "{name}");
                assert_eq!(l["error"], e.kind.to_string(), "{name}");
                assert_eq!(l["offset"], e.offset, "{name}");
            }
        }
    }
    assert!(invalid > 0 && invalid < files.len());
}
