//! Refusals through real sipp (Debian's `sip-tester`):
//! `tests/sipp/refusals.sh` runs this build's `sipblade run --config FILE`
//! as SPEC §4 describes it (configs, `agents.toml` and, across blades,
//! certificates from `sipblade certs`, all written by the script) and
//! drives it with one-call sipp scenarios (`tests/sipp/refusal_*.xml`)
//! whose expected statuses are not optional, so that any other status
//! fails sipp and the script:
//!
//! - one blade: OPTIONS to the blade 200; 404 unknown extension, 480
//!   provisioned but not registered, 403 caller not logged in, 486 callee
//!   in a call (held by a sipp UAS that answers), CANCEL on the 180 (200
//!   to the CANCEL, 487 to the INVITE), the phone's own 603 and 486;
//! - `auth = true`: 407 then a call that connects, 407 then 403 for a
//!   caller not logged in or with a wrong password, 407 then 404, and a
//!   REGISTER with a wrong password 401 then 403 (SPEC §5); a CANCEL
//!   without credentials answered 200, not challenged;
//! - two blades: each refusal cross-blade, back through the caller's
//!   blade S: 404, 480 (never registered, and logged out on T), 486 with
//!   the callee hosted by S (the second call placed on S, or on T which
//!   hands it to S) or in a local call on T, CANCEL on the 180 and on the
//!   100 (racing the hosting), the phone's 603 and 486; after each, T shows
//!   the callee `ready`, not `hosted`;
//! - two blades with `auth = true`: 407 first, then 404, 480, the phone's
//!   603, CANCEL on the 180 (the CANCEL not challenged), and 403 to an
//!   agent that calls through a blade it is not logged in on.
//!
//! Each run ends with /status showing no session, every registered agent
//! ready and, across blades, each peer up. The scripts run one at a time
//! (a lock), as `tests/sipp.rs` does.
//!
//! When `sipp` is not on the PATH: with `CI` set (non-empty) the tests
//! FAIL (CI must run them; `scripts/test` installs sip-tester as root);
//! otherwise they print why they are skipped and pass.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Held while the script runs: the held calls give a second caller a few
/// seconds to be refused, which assumes the scripts do not compete for
/// the machine's cores.
static SIPP: Mutex<()> = Mutex::new(());

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

/// Runs `tests/sipp/refusals.sh` with this build's binary and `env` added
/// to its environment, and asserts that it passed and said so; skipped
/// (or failed in CI) without sipp.
fn run_refusals(env: &[(&str, &str)]) {
    if !sipp_installed() {
        assert!(
            !in_ci(),
            "sipp is not installed, and CI must run the interop test: \
             install sip-tester (scripts/test does it when run as root)"
        );
        eprintln!("skipped: sipp not installed (run scripts/test as root to install sip-tester)");
        return;
    }
    let _serial = SIPP.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp/refusals.sh");
    let output = Command::new("bash")
        .arg(&path)
        .arg(env!("CARGO_BIN_EXE_sipblade"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start bash for tests/sipp/refusals.sh: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Shown with `cargo test -- --nocapture`, and on failure.
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "tests/sipp/refusals.sh failed ({}); its output is above",
        output.status
    );
    assert!(
        stdout.contains("sipp refusals: OK"),
        "tests/sipp/refusals.sh did not report success; its output is above"
    );
}

/// One blade, `auth = false`: OPTIONS 200, 404, 480, 403, 486 while the
/// callee is in a call, CANCEL on the 180, the phone's 603 and 486.
#[test]
fn refusals_on_one_blade_through_sipp() {
    run_refusals(&[("SIPP_REFUSALS", "one")]);
}

/// One blade, `auth = true`: every INVITE challenged 407 first; then a
/// call, or 403 (not logged in, wrong password), or 404; a REGISTER with
/// a wrong password 401 then 403, the agent left logged out.
#[test]
fn refusals_with_digest_authentication_through_sipp() {
    run_refusals(&[("SIPP_REFUSALS", "auth")]);
}

/// Two blades: each refusal cross-blade, CANCEL on the 180 and on the
/// 100, the phone's own refusals; the called agent ends `ready` on its
/// blade, never left `hosted`.
#[test]
fn refusals_across_two_blades_through_sipp() {
    run_refusals(&[("SIPP_REFUSALS", "cross")]);
}

/// Two blades, `auth = true`: the caller's blade challenges first, then
/// the refusals come back as without auth; a CANCEL is not challenged.
#[test]
fn refusals_across_two_blades_with_digest_authentication_through_sipp() {
    run_refusals(&[("SIPP_REFUSALS", "crossauth")]);
}

/// The cross-blade refusals with every sipp on TCP: T reaches the phones
/// by connecting to their Contact, and the refusals come back to the
/// callers over their own connections.
#[test]
fn refusals_across_two_blades_through_sipp_over_tcp() {
    run_refusals(&[("SIPP_REFUSALS", "cross"), ("SIPP_TRANSPORT", "t1")]);
}
