//! `sipblade parse [FILE...]`: parse each file (stdin when none) as one SIP
//! message and print one JSON object per line (SPEC §3).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{EXIT_INVALID, EXIT_USAGE};
use crate::sip::Message;

/// The name printed for standard input.
const STDIN_NAME: &str = "-";

/// The most of one input read (64 MiB, far above the 64 KiB a blade
/// takes): a larger one, or one without end (`/dev/zero`, a stream), is
/// refused as invalid rather than read into memory without bound.
const MAX_INPUT: u64 = 64 * 1024 * 1024;

/// All of `input`, or [`MAX_INPUT`] + 1 bytes of it if it is longer.
fn read_capped(input: impl Read) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    input.take(MAX_INPUT + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

pub(crate) fn run(files: &[PathBuf]) -> ExitCode {
    let mut invalid = false;
    let mut io_error = false;
    // No file, or a file named "-", reads standard input to its end; a
    // second "-" finds it empty, as `cat - -` does. One input is read at a
    // time, its line printed before the next is read.
    let inputs: Vec<Option<&Path>> = if files.is_empty() {
        vec![None]
    } else {
        files
            .iter()
            .map(|f| (f.to_str() != Some(STDIN_NAME)).then_some(f.as_path()))
            .collect()
    };
    for input in inputs {
        let (name, read) = match input {
            None => (STDIN_NAME.to_string(), read_capped(std::io::stdin().lock())),
            Some(f) => (
                f.display().to_string(),
                std::fs::File::open(f).and_then(read_capped),
            ),
        };
        let line = match read {
            Ok(bytes) => {
                let (line, ok) = report(&name, Bytes::from(bytes));
                invalid |= !ok;
                line
            }
            Err(err) => {
                eprintln!("sipblade: parse: {name}: {err}");
                io_error = true;
                continue;
            }
        };
        if let Err(code) = super::write_stdout("parse", &format!("{line}\n")) {
            return code;
        }
    }
    if io_error {
        ExitCode::from(EXIT_USAGE)
    } else if invalid {
        ExitCode::from(EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
    }
}

/// The JSON report of one message and whether it parsed.
pub(crate) fn report(name: &str, bytes: Bytes) -> (Value, bool) {
    if bytes.len() as u64 > MAX_INPUT {
        let line = json!({
            "file": name,
            "ok": false,
            "error": format!("larger than {} MiB, not read past it", MAX_INPUT >> 20),
            "offset": MAX_INPUT,
        });
        return (line, false);
    }
    match Message::parse(bytes) {
        Ok(msg) => {
            let request = msg.is_request();
            let line = json!({
                "file": name,
                "ok": true,
                "kind": if request { "request" } else { "response" },
                "method": msg.method_str(),
                "status": msg.status(),
                "request_uri": msg.request_uri().map(|u| u.as_str().to_owned()),
                "call_id": msg.call_id(),
                "cseq": msg.cseq().seq,
                "headers": msg.header_count(),
                "body_len": msg.body().len(),
            });
            (line, true)
        }
        Err(err) => {
            let line = json!({
                "file": name,
                "ok": false,
                "error": err.kind.to_string(),
                "offset": err.offset,
            });
            (line, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start line without CRLF is reported where its fault is: at a junk
    /// first byte, or, for a line that is fine, where its CRLF should be.
    #[test]
    fn an_unterminated_start_line_is_reported_where_it_goes_wrong() {
        let (junk, ok) = report("junk", Bytes::from_static(b"\x00\x01garbage"));
        assert!(!ok);
        assert_eq!(junk["error"], "malformed start line");
        assert_eq!(junk["offset"], 0);
        let (line, _) = report(
            "line",
            Bytes::from_static(b"OPTIONS sip:cc.example SIP/2.0"),
        );
        assert_eq!(line["error"], "line not ended by CRLF");
        assert_eq!(line["offset"], 30);
    }
}
