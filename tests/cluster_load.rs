//! Many cross-blade calls at once when something gives (SPEC §2 steps 3
//! and 8, §5): the source blade killed or restarted under load, and a
//! target blade at its transaction limit refusing host requests.
//!
//! Addresses (127.0.0.x), one range per test: blades 231-232 (load
//! generator 233), 234-235 (236), 237-238 (phones 239-240).

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::{first_line, header, wait_until};
use sipblade::runtime::Options;
use sipblade::sip::{HeaderName, Method};

/// Caller/callee pairs of the load tests: callers on S, callees on T.
const PAIRS: usize = 40;
/// The first extension of the load agents.
const FIRST: u32 = 100_000;

/// A two-blade cluster on 127.0.0.`first_ip`…, provisioned with the load
/// generator's agents, S (member 0) a child process, T in this process.
fn load_cluster(first_ip: u8, lease_secs: u32) -> TestCluster {
    let mut cluster = TestCluster::new_in(0, 2, first_ip, lease_secs, 1);
    let out = Command::new(env!("CARGO_BIN_EXE_sipblade"))
        .args(["load", "agents", "--pairs", &PAIRS.to_string()])
        .args(["--first", &FIRST.to_string()])
        .output()
        .expect("sipblade load agents");
    assert!(out.status.success(), "{out:?}");
    std::fs::write(cluster.dir.path().join("agents.toml"), &out.stdout).expect("agents file");
    cluster.spawn_blade(0);
    cluster.start_blade(1);
    cluster.wait_linked();
    cluster
}

/// `sipblade load run`: every pair places one cross-blade call at `rate`
/// calls/s, held long enough that all are up when the test strikes; it
/// gives up by itself after a few seconds.
fn load(cluster: &TestCluster, ip: &str, rate: u32) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sipblade"))
        .args([
            "load",
            "run",
            "--blade",
            &cluster.members[0].sip.to_string(),
        ])
        .args(["--callee-blade", &cluster.members[1].sip.to_string()])
        .args(["--first", &FIRST.to_string(), "--pairs", &PAIRS.to_string()])
        .args(["--rate", &rate.to_string(), "--calls", &PAIRS.to_string()])
        .args([
            "--hold-ms",
            "20000",
            "--timeout-s",
            "3",
            "--ip",
            ip,
            "--json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipblade load run")
}

/// Member `i`'s callees by state.
fn callee_states(cluster: &TestCluster, i: usize) -> BTreeMap<String, usize> {
    let status = cluster.status(i);
    let mut states = BTreeMap::new();
    for a in status["agents"].as_array().expect("agents") {
        let ext: u32 = a["extension"].as_str().expect("ext").parse().expect("ext");
        if (ext - FIRST) % 2 == 1 {
            *states
                .entry(a["state"].as_str().expect("state").to_owned())
                .or_default() += 1;
        }
    }
    states
}

fn released(cluster: &TestCluster, i: usize, reason: &str) -> f64 {
    cluster.metric(
        i,
        &format!("sipblade_hosting_released_total{{reason=\"{reason}\"}}"),
    )
}

/// Waits (up to `within`) until T (member 1) hosts nobody, then checks
/// that every callee is `ready`, that T holds no session, and that every
/// grant ended for `reason`.
fn assert_all_taken_back(cluster: &TestCluster, within: Duration, reason: &str) {
    let deadline = Instant::now() + within;
    loop {
        let states = callee_states(cluster, 1);
        if states.get("ready") == Some(&PAIRS) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "callees on T not all ready: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cluster.sessions(1).is_empty(), "{:?}", cluster.sessions(1));
    assert_eq!(cluster.metric(1, "sipblade_sessions_active"), 0.0);
    let granted = cluster.metric(1, "sipblade_hosting_granted_total");
    assert!(granted >= 10.0, "the load hosted callees: {granted}");
    assert_eq!(released(cluster, 1, reason), granted, "every grant ended");
    for other in ["unhost", "lapsed", "peer_restarted", "peer_disowned"] {
        if other != reason {
            assert_eq!(released(cluster, 1, other), 0.0, "{other}");
        }
    }
}

/// S killed in the middle of a burst of cross-blade calls (some answered,
/// some with their host request or INVITE in flight): when the lease
/// runs out, T has taken every callee back, and hung up each answered
/// one (SPEC §2 step 8).
#[test]
fn source_killed_under_load_strands_no_callee() {
    let mut cluster = load_cluster(231, 2);
    let mut loadgen = load(&cluster, "127.0.0.233", 400);
    wait_until("T granting under load", || {
        cluster.metric(1, "sipblade_hosting_granted_total") >= 10.0
    });
    cluster.kill_blade(0);
    assert!(callee_states(&cluster, 1).contains_key("hosted"));
    // Nothing but the lease gives them back: 2 s, renewals every 2/3 s.
    assert_all_taken_back(&cluster, Duration::from_secs(6), "lapsed");
    // Each answered callee is hung up (the generator answers at once); a
    // grant whose INVITE had not reached T when S died has nobody to hang
    // up.
    let granted = cluster.metric(1, "sipblade_hosting_granted_total");
    let byes = cluster.metric(1, "sipblade_sessions_bye_sent_total");
    assert!(
        byes >= 1.0 && byes <= granted,
        "{byes} BYEs, {granted} grants"
    );
    let _ = loadgen.kill();
    let _ = loadgen.wait();
}

/// S killed and started again under load: its new run's Hello makes T end
/// every grant of the old run at once, long before the 30 s lease.
#[test]
fn source_restarted_under_load_strands_no_callee() {
    let mut cluster = load_cluster(234, 30);
    let mut loadgen = load(&cluster, "127.0.0.236", 400);
    wait_until("T granting under load", || {
        cluster.metric(1, "sipblade_hosting_granted_total") >= 10.0
    });
    cluster.kill_blade(0);
    cluster.spawn_blade(0);
    assert_all_taken_back(&cluster, Duration::from_secs(8), "peer_restarted");
    assert!(cluster.sessions(0).is_empty(), "{:?}", cluster.sessions(0));
    let _ = loadgen.kill();
    let _ = loadgen.wait();
}

/// T at its transaction limit refuses host requests (Overloaded): each
/// caller gets 503 with Retry-After, S keeps no session, nothing stays
/// hosted on T; once T's load is gone the same call goes through.
#[test]
fn an_overloaded_target_refuses_every_host_request_with_503() {
    let mut cluster = TestCluster::new_in(0, 2, 237, 30, 1);
    cluster.start_blade(0);
    cluster.start_blade_with_options(
        1,
        Options {
            max_transactions: 1,
            ..Options::default()
        },
    );
    cluster.wait_linked();
    let s_ip = [127, 0, 0, 239];
    let t_ip = [127, 0, 0, 240];
    let mut a = cluster.registered_on(0, "1001", s_ip);
    let mut b = cluster.registered_on(1, "1002", t_ip);
    let mut c = cluster.registered_on(1, "1003", t_ip);
    let mut d = cluster.registered_on(1, "1004", t_ip);
    // A local call on T that rings: one transaction waits for an answer.
    let mut ringing = c.call("1004");
    c.invite(&mut ringing, "");
    let held = d.request(Method::Invite, &ringing.call_id);
    let refused_before = cluster.metric(0, "sipblade_hosting_refused_total{reason=\"overloaded\"}");
    const CALLS: usize = 20;
    for _ in 0..CALLS {
        let mut call = a.call("1002");
        a.invite(&mut call, "");
        let resp = a.expect_where("the final answer", |m| {
            m.status().is_some_and(|s| s >= 200) && m.call_id() == call.call_id
        });
        assert_eq!(resp.status(), Some(503), "{}", first_line(&resp));
        assert!(
            header(&resp, HeaderName::RetryAfter).is_some(),
            "503 with Retry-After: {resp:?}"
        );
        a.ack_failure(&call, &resp);
    }
    assert_eq!(
        cluster.metric(0, "sipblade_hosting_refused_total{reason=\"overloaded\"}") - refused_before,
        CALLS as f64
    );
    assert!(cluster.sessions(0).is_empty(), "{:?}", cluster.sessions(0));
    assert_eq!(cluster.metric(0, "sipblade_sessions_active"), 0.0);
    assert_eq!(cluster.agent(0, "1001")["state"], "ready");
    assert_eq!(cluster.agent(1, "1002")["state"], "ready");
    assert_eq!(cluster.metric(1, "sipblade_hosting_granted_total"), 0.0);
    assert!(
        b.recv_raw(Duration::from_millis(200)).is_none(),
        "no INVITE reached B"
    );
    // T's ringing call ends: T is no longer loaded, and a call hosts B.
    d.answer(&held, 486, "Busy Here", "d-tag");
    let busy = c.response(&ringing.call_id, Method::Invite);
    assert_eq!(busy.status(), Some(486), "{}", first_line(&busy));
    c.ack_failure(&ringing, &busy);
    let mut call = a.call("1002");
    a.invite(&mut call, "");
    let invite = b.request(Method::Invite, &call.call_id);
    assert_eq!(cluster.agent(1, "1002")["state"], "hosted");
    b.answer(&invite, 486, "Busy Here", "b-tag");
    let resp = a.response(&call.call_id, Method::Invite);
    assert_eq!(resp.status(), Some(486), "{}", first_line(&resp));
    a.ack_failure(&call, &resp);
    wait_until("B back to ready", || {
        cluster.agent(1, "1002")["state"] == "ready"
    });
    wait_until("S's session gone", || cluster.sessions(0).is_empty());
}
