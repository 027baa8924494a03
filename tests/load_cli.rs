//! `sipblade load`: the agents file it prints is valid provisioning, and a
//! run against a real in-process blade completes every call.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use sipblade::config::{Agents, Config};
use sipblade::runtime::Blade;

fn sipblade(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipblade"))
        .args(args)
        .output()
        .expect("sipblade runs")
}

fn agents_text(pairs: usize) -> String {
    let out = sipblade(&["load", "agents", "--pairs", &pairs.to_string()]);
    assert!(out.status.success(), "load agents: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn load_agents_prints_two_agents_per_pair() {
    let text = agents_text(5);
    let value: toml::Value = toml::from_str(&text).expect("TOML");
    let list = value
        .get("agent")
        .and_then(|a| a.as_array())
        .expect("[[agent]] tables");
    assert_eq!(list.len(), 10);
    assert_eq!(list[0]["extension"].as_str(), Some("100000"));
    assert_eq!(list[1]["extension"].as_str(), Some("100001"));
    assert_eq!(list[9]["extension"].as_str(), Some("100009"));
    assert_eq!(list[3]["password"].as_str(), Some("load-100003"));
    assert!(list.iter().all(|a| a["kind"].as_str() == Some("agent")));
    // And the blade accepts it as its provisioning file.
    let agents = Agents::from_toml(&text, Path::new("agents.toml")).expect("valid agents");
    assert_eq!(agents.len(), 10);

    let first = sipblade(&["load", "agents", "--pairs", "2", "--first", "7000"]);
    let text = String::from_utf8(first.stdout).expect("UTF-8");
    let agents = Agents::from_toml(&text, Path::new("agents.toml")).expect("valid agents");
    assert!(agents.by_extension("7000").is_some() && agents.by_extension("7003").is_some());
}

#[test]
fn load_run_completes_every_call_through_a_blade() {
    let pairs = 20;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("agents.toml"), agents_text(pairs)).expect("agents file");
    let path = dir.path().join("blade.toml");
    let text = "[blade]\nid = \"blade-load\"\ndomain = \"cc.example\"\nsip = \"127.0.0.1:0\"\n\
                cores = 1\nadmin = \"127.0.0.1:0\"\n\n[agents]\nfile = \"agents.toml\"\nauth = false\n";
    std::fs::write(&path, text).expect("config file");
    let config = Config::from_toml(text, &path).expect("valid config");
    let blade = Blade::start(config).expect("the blade starts");
    let addr = blade.sip_addr().to_string();

    let started = Instant::now();
    let out = sipblade(&[
        "load", "run", "--blade", &addr, "--pairs", "20", "--rate", "200", "--calls", "400",
        "--json",
    ]);
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "load run exits 0: {out:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["ok"], 400, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["calls"], 400);
    assert_eq!(report["offered_cps"], 200.0);
    assert!(
        report["achieved_cps"].as_f64().unwrap_or(0.0) > 0.0,
        "{report}"
    );
    let p99 = report["setup_ms"]["p99"]
        .as_f64()
        .expect("p99 setup latency");
    assert!(p99 > 0.0, "{report}");
    assert!(report["setup_ms"]["max"].as_f64().unwrap_or(0.0) >= p99);
    assert!(report["cpu"]["total_s"].is_number(), "{report}");
    assert!(report["wall_s"].as_f64().unwrap_or(0.0) > 0.0);
    // 400 calls at 200/s take 2 s; registration and start-up add little.
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // More pairs than provisioned: the blade refuses a REGISTER, and the
    // run stops there with one clear line and exit 1.
    let out = sipblade(&[
        "load",
        "run",
        "--blade",
        &addr,
        "--pairs",
        "25",
        "--rate",
        "100",
        "--calls",
        "10",
        "--timeout-s",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("REGISTER of 1000"), "{stderr}");
    blade.stop();
}

#[test]
fn load_run_without_a_blade_fails_registration() {
    // Nothing answers on this port (bound, never read).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let out = sipblade(&[
        "load",
        "run",
        "--blade",
        &addr,
        "--pairs",
        "2",
        "--rate",
        "10",
        "--calls",
        "2",
        "--timeout-s",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no answer"), "{stderr}");
}

#[test]
fn load_run_refuses_bad_options() {
    let out = sipblade(&[
        "load",
        "run",
        "--blade",
        "127.0.0.1:9",
        "--pairs",
        "0",
        "--rate",
        "1",
        "--calls",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = sipblade(&["load", "run", "--pairs", "1"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing --blade is a usage error"
    );
}

/// Options whose schedule or deadlines would overflow the clock, or whose
/// extensions would wrap past the largest number, are usage errors (exit
/// 2, one line) before anything is sent. Before, `--rate 1e-300` and
/// `--hold-ms` near 2⁶⁴ panicked a worker once the agents had registered,
/// and `--first` near 2⁶⁴ wrapped to extensions 0, 1, ...
#[test]
fn load_refuses_options_past_its_clock_and_extensions() {
    let max = u64::MAX.to_string();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "load",
            "run",
            "--blade",
            "127.0.0.1:9",
            "--pairs",
            "1",
            "--calls",
            "1",
        ];
        args.extend_from_slice(extra);
        if !extra.contains(&"--rate") {
            args.extend_from_slice(&["--rate", "1"]);
        }
        sipblade(&args)
    };
    for (extra, says) in [
        (&["--rate", "1e-300"][..], "--calls / --rate"),
        (&["--hold-ms", &max][..], "--hold-ms"),
        (&["--timeout-s", &max][..], "--timeout-s"),
        (&["--first", &max][..], "--first"),
    ] {
        let out = run(extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }
    let out = sipblade(&["load", "agents", "--pairs", "2", "--first", &max]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let last = (u64::MAX - 1).to_string();
    let out = sipblade(&["load", "agents", "--pairs", "1", "--first", &last]);
    assert!(out.status.success(), "{out:?}");
}
