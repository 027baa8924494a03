//! Interop with real sipp (Debian's `sip-tester`): `tests/sipp/run.sh`
//! drives this build's `sipblade` binary over loopback with the scenarios
//! in `tests/sipp/` (agents register, then 50 calls INVITE / 180 / 200 /
//! ACK / BYE / 200, five at a time) and fails on any failed call.
//!
//! When `sipp` is not on the PATH:
//! - with the environment variable `CI` set (non-empty), the test FAILS:
//!   CI must run the interop test (`scripts/test` installs sip-tester when
//!   it runs as root);
//! - otherwise it prints why it is skipped and passes, so that a developer
//!   machine without sipp can still run `cargo test`.

use std::path::Path;
use std::process::{Command, Stdio};

/// Whether a `sipp` executable can be started.
fn sipp_installed() -> bool {
    Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether this runs in CI (`CI` set and not empty).
fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

#[test]
fn calls_through_sipp() {
    if !sipp_installed() {
        assert!(
            !in_ci(),
            "sipp is not installed, and CI must run the interop test: \
             install sip-tester (scripts/test does it when run as root)"
        );
        eprintln!("skipped: sipp not installed (run scripts/test as root to install sip-tester)");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/run.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_sipblade"))
        .stdin(Stdio::null())
        .output()
        .expect("cannot start bash for tests/sipp/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Shown with `cargo test -- --nocapture`, and on failure.
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "tests/sipp/run.sh failed ({}); its output is above",
        output.status
    );
    assert!(
        stdout.contains("sipp interop: OK"),
        "tests/sipp/run.sh did not report success; its output is above"
    );
}
