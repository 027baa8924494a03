//! The command line (SPEC §3) probed as an acceptance tester with only the
//! SPEC would: odd input to `parse` (every line must stay valid JSON),
//! mistyped flags, and `certs` pointed at something that is not a
//! directory. What tests/parse_cli.rs, tests/run_cli.rs and
//! tests/certs.rs already cover is not repeated.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn sipblade(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipblade"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("sipblade runs")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write a test file");
    path
}

/// Each stdout line parsed as a JSON object.
fn json_lines(out: &Output) -> Vec<Value> {
    let text = std::str::from_utf8(&out.stdout).expect("stdout is UTF-8");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

const OPTIONS: &[u8] = b"OPTIONS sip:1002@cc.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5061;branch=z9hG4bKaaa\r\n\
From: <sip:1001@cc.example>;tag=1\r\n\
To: <sip:1002@cc.example>\r\n\
Call-ID: abc\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\
\r\n";

fn with(from: &[u8], to: &[u8]) -> Vec<u8> {
    let text = OPTIONS.to_vec();
    let at = text
        .windows(from.len())
        .position(|w| w == from)
        .expect("the text to replace");
    [&text[..at], to, &text[at + from.len()..]].concat()
}

/// Odd files, one line each in order, each valid JSON; the fields that
/// carry message text are escaped (quotes, backslashes in a Call-ID; a
/// file name with a quote, a tab and a newline), refusals have an offset
/// inside the file, and a long method or a body of megabytes is fine.
#[test]
fn odd_input_gives_one_valid_json_line_per_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let method = "X".repeat(300);
    let long = OPTIONS
        .to_vec()
        .iter()
        .map(|&b| b as char)
        .collect::<String>()
        .replace("OPTIONS", &method);
    let mut huge = with(b"Content-Length: 0", b"Content-Length: 4000000");
    huge.extend(std::iter::repeat_n(b'b', 4_000_000));
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("empty", Vec::new(), None),
        ("crlf-only", b"\r\n".repeat(50), None),
        ("binary", (0..=255u8).cycle().take(5000).collect(), None),
        (
            "nul-in-call-id",
            with(b"Call-ID: abc", b"Call-ID: a\0bc"),
            None,
        ),
        (
            "bare-lf",
            OPTIONS.iter().copied().filter(|&b| b != b'\r').collect(),
            None,
        ),
        (
            "latin1-call-id",
            with(b"Call-ID: abc", b"Call-ID: ab\xe9"),
            None,
        ),
        ("latin1-uri", with(b"sip:1002@", b"sip:10\xe902@"), None),
        (
            "latin1-method",
            with(b"OPTIONS sip", b"OPT\xe9ONS sip"),
            None,
        ),
        (
            "quoted-call-id",
            with(b"Call-ID: abc", b"Call-ID: a\"b\\c"),
            Some("a\"b\\c"),
        ),
        (
            "utf8-display-name",
            with(b"From: <", "From: \"Jürgen ☎\" <".as_bytes()),
            Some("abc"),
        ),
        ("long-method", long.into_bytes(), Some("abc")),
        ("huge-body", huge, Some("abc")),
        ("we\"ird\tname\n", OPTIONS.to_vec(), Some("abc")),
    ];
    let paths: Vec<PathBuf> = cases
        .iter()
        .map(|(name, bytes, _)| write(dir.path(), name, bytes))
        .collect();
    let mut args = vec!["parse"];
    args.extend(paths.iter().map(|p| p.to_str().expect("UTF-8 path")));
    let out = sipblade(&args);
    assert_eq!(out.status.code(), Some(1), "some files are invalid");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), cases.len());
    for ((line, (name, bytes, call_id)), path) in lines.iter().zip(&cases).zip(&paths) {
        assert_eq!(line["file"], path.to_str().expect("UTF-8"), "{name}");
        match call_id {
            Some(call_id) => {
                assert_eq!(line["ok"], true, "{name}: {line}");
                assert_eq!(line["call_id"], *call_id, "{name}");
            }
            None => {
                assert_eq!(line["ok"], false, "{name}: {line}");
                let offset = line["offset"].as_u64().expect("an offset");
                assert!(offset as usize <= bytes.len(), "{name}: {line}");
                assert!(!line["error"].as_str().unwrap_or("").is_empty());
            }
        }
    }
    assert_eq!(lines[10]["method"], method.as_str());
    assert_eq!(lines[11]["body_len"], 4_000_000);
}

/// `--` ends the options: a file whose name starts with `-` is parsed;
/// without `--`, the usage error says how to pass it.
#[test]
fn a_file_named_like_an_option_is_reached_with_double_dash() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "-x.sip", OPTIONS);
    let out = Command::new(env!("CARGO_BIN_EXE_sipblade"))
        .current_dir(dir.path())
        .args(["parse", "--", "-x.sip"])
        .output()
        .expect("sipblade runs");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json_lines(&out)[0]["file"], "-x.sip");
    let out = Command::new(env!("CARGO_BIN_EXE_sipblade"))
        .current_dir(dir.path())
        .args(["parse", "-x.sip"])
        .output()
        .expect("sipblade runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("use '-- -x"), "says how: {stderr}");
}

/// A mistyped flag: the one error line keeps clap's hint of the flag
/// meant, as an operator would want.
#[test]
fn a_mistyped_flag_names_the_flag_meant() {
    for (args, meant) in [
        (&["run", "--conf", "x.toml"][..], "--config"),
        (&["certs", "--dir", "d", "--blade", "a"], "--blades"),
    ] {
        let out = sipblade(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(meant), "{args:?}: {stderr}");
        assert!(stderr.contains("--help"), "{args:?}: {stderr}");
    }
}

/// `certs --dir` naming a file: an I/O error (exit 2) on one line that
/// says it is not a directory (not "File exists"), and nothing written.
#[test]
fn certs_into_a_file_says_it_is_not_a_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write(dir.path(), "plain", b"x");
    let out = sipblade(&[
        "certs",
        "--dir",
        file.to_str().expect("UTF-8"),
        "--blades",
        "b1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("plain"), "{stderr}");
    assert!(stderr.contains("not a directory"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// In a cluster, the QUIC `listen` port must be fixed: the peers are
/// configured with it, so a port of the kernel's choosing (0) could never
/// be reached. Refused with file, line and exit 1, as any bad config
/// (SPEC §4).
#[test]
fn a_cluster_listen_on_port_0_is_refused_at_its_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = "[blade]\nid = \"b1\"\ndomain = \"cc.example\"\nsip = \"127.0.21.1:5060\"\n\
                admin = \"127.0.21.1:0\"\n\n[cluster]\nlisten = \"127.0.21.1:0\"\nca = \"ca.pem\"\n\
                cert = \"b1.pem\"\nkey = \"b1.key\"\n\n[[cluster.peer]]\nid = \"b2\"\n\
                quic = \"127.0.21.2:7060\"\nsip = \"127.0.21.2:5060\"\n\n\
                [agents]\nfile = \"agents.toml\"\n";
    let path = write(dir.path(), "listen0.toml", text.as_bytes());
    let out = sipblade(&["check", "--config", path.to_str().expect("UTF-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("listen0.toml:8:"), "{stderr}");
    assert!(
        stderr.contains("listen") && stderr.contains("port 0"),
        "{stderr}"
    );
}

/// `help` is a command too: `sipblade help --help` is not a usage error.
#[test]
fn help_of_help_exits_0() {
    for args in [
        &["help", "--help"][..],
        &["help", "-h"],
        &["help", "run", "--help"],
    ] {
        let out = sipblade(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
    }
}

/// An input without end (`/dev/zero`, a stream on stdin) is not read
/// without bound: past the documented cap (64 MiB, far above the 64 KiB a
/// blade takes) it is refused as invalid, on its one line, at once.
#[test]
fn an_endless_input_is_refused_not_read_for_ever() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipblade"))
        .args(["parse", "/dev/zero"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sipblade runs");
    let start = std::time::Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`sipblade parse /dev/zero` still reading after 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("its output");
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["ok"], false);
    assert_eq!(lines[0]["offset"], 64 * 1024 * 1024);
    assert!(
        lines[0]["error"].as_str().unwrap_or("").contains("64 MiB"),
        "{}",
        lines[0]
    );
}
