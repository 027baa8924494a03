//! Interop with real sipp (Debian's `sip-tester`): `tests/sipp/run.sh`
//! drives this build's `sipblade` binary over loopback with the scenarios
//! in `tests/sipp/` (agents register, then 50 calls INVITE / 180 / 200 /
//! ACK / BYE / 200, five at a time) and fails on any failed call; a
//! second run does the same over TCP, a third with digest authentication
//! (sipp answers the blade's 401 and 407 challenges itself).
//! `tests/sipp/cross.sh` does the same across two `sipblade run`
//! processes linked over QUIC: callers registered on blade-1, callees on
//! blade-2, so every call is cross-blade (SPEC §2); it also fails unless
//! blade-1 counted every call as an answered cross-blade call and both
//! blades end with no session and no agent hosted; it runs over TCP too.
//! With `SIPP_FLOW=dialog` each call is a whole dialog instead
//! (`uac_dialog.xml`, `uas_dialog.xml`): a reliable 183 and its PRACK,
//! re-INVITE, INFO, UPDATE, and the callee's BYE, every in-dialog request
//! along the route set the blades recorded. With `SIPP_FLOW=builtin` the
//! callees are sipp's own `uas` scenario (`sipp -sn uas`), which keeps no
//! route set: the caller's ACK and BYE reach the blade unrouted.
//! `tests/sipp/refusals.sh` checks every refusal a caller can get, one
//! call each, with exact statuses (below).
//! The scripts run one after the other (a lock), not in parallel.
//!
//! When `sipp` is not on the PATH:
//! - with the environment variable `CI` set (non-empty), the test FAILS:
//!   CI must run the interop test (`scripts/test` installs sip-tester when
//!   it runs as root);
//! - otherwise it prints why it is skipped and passes, so that a developer
//!   machine without sipp can still run `cargo test`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Held while a sipp script runs, so that the scripts do not compete for
/// the machine's cores (their timeouts and CPU figures assume they don't).
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

/// Runs `tests/sipp/SCRIPT` with this build's binary and `env` added to
/// its environment, and asserts that it passed and printed `OK_LINE`;
/// skipped (or failed in CI) without sipp.
fn run_sipp_script(script: &str, env: &[(&str, &str)], ok_line: &str) {
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
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(script);
    let output = Command::new("bash")
        .arg(&path)
        .arg(env!("CARGO_BIN_EXE_sipblade"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start bash for tests/sipp/{script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Shown with `cargo test -- --nocapture`, and on failure.
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "tests/sipp/{script} failed ({}); its output is above",
        output.status
    );
    assert!(
        stdout.contains(ok_line),
        "tests/sipp/{script} did not report success; its output is above"
    );
}

#[test]
fn calls_through_sipp() {
    run_sipp_script("run.sh", &[], "sipp interop: OK");
}

/// sipp over TCP: every sipp registers over a connection of its own that
/// closes when it exits, so the blade must open new connections to the
/// callees' Contact addresses (RFC 3261 §18.1.1) for the calls.
#[test]
fn calls_through_sipp_over_tcp() {
    run_sipp_script(
        "run.sh",
        &[("SIPP_TRANSPORT", "t1"), ("SIPP_CALLS", "20")],
        "sipp interop: OK",
    );
}

/// sipp callers with a TCP connection per call (`-t tn`), each named as
/// the call's Contact, in whole dialogs that end with the callee's BYE:
/// the core that owns a dialog reaches the caller on the connection
/// whichever core accepted it.
#[test]
fn calls_through_sipp_over_a_tcp_connection_per_call() {
    run_sipp_script(
        "run.sh",
        &[
            ("SIPP_TRANSPORT", "tn"),
            ("SIPP_FLOW", "dialog"),
            ("SIPP_CALLS", "20"),
        ],
        "sipp interop: OK",
    );
}

/// The blade with `auth = true` (SPEC §5): sipp's REGISTERs answer a 401
/// and its INVITEs a 407, with sipp's own MD5 digest.
#[test]
fn calls_through_sipp_with_digest_authentication() {
    run_sipp_script(
        "run.sh",
        &[("SIPP_AUTH", "1"), ("SIPP_CALLS", "20")],
        "sipp interop: OK",
    );
}

/// 50 cross-blade calls, 5 pairs at once (the script's defaults).
#[test]
fn cross_blade_calls_through_sipp() {
    run_sipp_script("cross.sh", &[], "sipp cross-blade: OK");
}

/// The same with the agents on TCP: blade-2 reaches each callee by
/// connecting to its Contact.
#[test]
fn cross_blade_calls_through_sipp_over_tcp() {
    run_sipp_script(
        "cross.sh",
        &[("SIPP_TRANSPORT", "t1"), ("SIPP_CALLS", "20")],
        "sipp cross-blade: OK",
    );
}

/// Both blades with `auth = true`: blade-1 challenges its callers, and
/// blade-2 takes blade-1's INVITEs on their hosting tokens (SPEC §5).
#[test]
fn cross_blade_calls_through_sipp_with_digest_authentication() {
    run_sipp_script(
        "cross.sh",
        &[("SIPP_AUTH", "1"), ("SIPP_CALLS", "20")],
        "sipp cross-blade: OK",
    );
}

/// Whole dialogs through one blade: PRACK (RFC 3262), re-INVITE, INFO,
/// UPDATE (RFC 3311) and a BYE from the callee, each along the route set.
#[test]
fn dialogs_through_sipp() {
    run_sipp_script(
        "run.sh",
        &[("SIPP_FLOW", "dialog"), ("SIPP_CALLS", "20")],
        "sipp interop: OK",
    );
}

/// The same dialogs across two blades: every in-dialog request, the
/// callee's BYE included, crosses both blades' Record-Routes.
#[test]
fn cross_blade_dialogs_through_sipp() {
    run_sipp_script(
        "cross.sh",
        &[("SIPP_FLOW", "dialog"), ("SIPP_CALLS", "20")],
        "sipp cross-blade: OK",
    );
}

/// Cross-blade dialogs with the agents on TCP.
#[test]
fn cross_blade_dialogs_through_sipp_over_tcp() {
    run_sipp_script(
        "cross.sh",
        &[
            ("SIPP_FLOW", "dialog"),
            ("SIPP_TRANSPORT", "t1"),
            ("SIPP_CALLS", "20"),
        ],
        "sipp cross-blade: OK",
    );
}

/// Calls to sipp's built-in UAS (`sipp -sn uas`), which copies no
/// Record-Route and answers with a Contact without a user: the caller's
/// ACK and BYE come unrouted, for that Contact, and reach the callee the
/// To names (SPEC §5).
#[test]
fn calls_to_sipps_builtin_uas() {
    run_sipp_script(
        "run.sh",
        &[("SIPP_FLOW", "builtin"), ("SIPP_CALLS", "20")],
        "sipp interop: OK",
    );
}

/// The same across two blades: the source blade sends the unrouted ACK
/// and BYE for its hosted callee to the callee's blade.
#[test]
fn cross_blade_calls_to_sipps_builtin_uas() {
    run_sipp_script(
        "cross.sh",
        &[("SIPP_FLOW", "builtin"), ("SIPP_CALLS", "20")],
        "sipp cross-blade: OK",
    );
}

// Refusals through real sipp (Debian's `sip-tester`):
// `tests/sipp/refusals.sh` runs this build's `sipblade run --config FILE`
// as SPEC §4 describes it (configs, `agents.toml` and, across blades,
// certificates from `sipblade certs`, all written by the script) and
// drives it with one-call sipp scenarios (`tests/sipp/refusal_*.xml`)
// whose expected statuses are not optional, so that any other status
// fails sipp and the script:
//
// - one blade: OPTIONS to the blade 200; 404 unknown extension, 480
//   provisioned but not registered, 403 caller not logged in, 486 callee
//   in a call (held by a sipp UAS that answers), CANCEL on the 180 (200
//   to the CANCEL, 487 to the INVITE), the phone's own 603 and 486;
// - `auth = true`: 407 then a call that connects, 407 then 403 for a
//   caller not logged in or with a wrong password, 407 then 404, and a
//   REGISTER with a wrong password 401 then 403 (SPEC §5); a CANCEL
//   without credentials answered 200, not challenged;
// - two blades: each refusal cross-blade, back through the caller's
//   blade S: 404, 480 (never registered, and logged out on T), 486 with
//   the callee hosted by S (the second call placed on S, or on T which
//   hands it to S) or in a local call on T, CANCEL on the 180 and on the
//   100 (racing the hosting), the phone's 603 and 486; after each, T shows
//   the callee `ready`, not `hosted`;
// - two blades with `auth = true`: 407 first, then 404, 480, the phone's
//   603, CANCEL on the 180 (the CANCEL not challenged), and 403 to an
//   agent that calls through a blade it is not logged in on.
//
// Each run ends with /status showing no session, every registered agent
// ready and, across blades, each peer up.

/// Runs the `part` of `tests/sipp/refusals.sh` with `env` added.
fn run_refusals(part: &str, env: &[(&str, &str)]) {
    let env: Vec<(&str, &str)> = [("SIPP_REFUSALS", part)]
        .into_iter()
        .chain(env.iter().copied())
        .collect();
    run_sipp_script("refusals.sh", &env, "sipp refusals: OK");
}

/// One blade, `auth = false`: OPTIONS 200, 404, 480, 403, 486 while the
/// callee is in a call, CANCEL on the 180, the phone's 603 and 486.
#[test]
fn refusals_on_one_blade_through_sipp() {
    run_refusals("one", &[]);
}

/// One blade, `auth = true`: every INVITE challenged 407 first; then a
/// call, or 403 (not logged in, wrong password), or 404; a REGISTER with
/// a wrong password 401 then 403, the agent left logged out.
#[test]
fn refusals_with_digest_authentication_through_sipp() {
    run_refusals("auth", &[]);
}

/// Two blades: each refusal cross-blade, CANCEL on the 180 and on the
/// 100, the phone's own refusals; the called agent ends `ready` on its
/// blade, never left `hosted`.
#[test]
fn refusals_across_two_blades_through_sipp() {
    run_refusals("cross", &[]);
}

/// Two blades, `auth = true`: the caller's blade challenges first, then
/// the refusals come back as without auth; a CANCEL is not challenged.
#[test]
fn refusals_across_two_blades_with_digest_authentication_through_sipp() {
    run_refusals("crossauth", &[]);
}

/// The cross-blade refusals with every sipp on TCP: T reaches the phones
/// by connecting to their Contact, and the refusals come back to the
/// callers over their own connections.
#[test]
fn refusals_across_two_blades_through_sipp_over_tcp() {
    run_refusals("cross", &[("SIPP_TRANSPORT", "t1")]);
}
