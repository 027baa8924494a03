//! The configuration files of SPEC §4: the example parses, defaults apply,
//! relative paths follow the config file, and every fault names file and line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use sipblade::config::{AgentKind, Agents, Config, ConfigError, Credential, DEFAULT_ADMIN};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/config")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn load_err(name: &str) -> ConfigError {
    Config::load(&data().join(name)).unwrap_err()
}

/// Checks the file, the line and the start of the message.
fn assert_error(err: &ConfigError, file: &str, line: usize, message: &str) {
    assert_eq!(err.path(), data().join(file), "{err}");
    assert_eq!(err.line(), Some(line), "{err}");
    let expected = format!("{}:{line}: {message}", data().join(file).display());
    assert!(
        err.to_string().starts_with(&expected),
        "{err}\nwanted: {expected}"
    );
    assert!(!err.to_string().contains('\n'), "{err}");
}

#[test]
fn spec_example_parses() {
    let config = Config::load(&data().join("spec.toml")).unwrap();
    assert_eq!(config.blade.id, "blade-1");
    assert_eq!(config.blade.domain, "cc.example");
    assert_eq!(config.blade.sip, addr("127.0.0.1:5060"));
    assert_eq!(config.blade.cores, 0);
    assert_eq!(config.blade.admin, addr("127.0.0.1:8060"));

    let cluster = config.cluster.unwrap();
    assert_eq!(cluster.listen, addr("127.0.0.1:7060"));
    assert_eq!(cluster.ca, data().join("certs/ca.pem"));
    assert_eq!(cluster.cert, data().join("certs/blade-1.pem"));
    assert_eq!(cluster.key, data().join("certs/blade-1.key"));
    assert_eq!(cluster.lease_secs, 30);
    assert_eq!(cluster.peers.len(), 1);
    assert_eq!(cluster.peers[0].id, "blade-2");
    assert_eq!(cluster.peers[0].quic, addr("127.0.0.2:7060"));
    assert_eq!(cluster.peers[0].sip, addr("127.0.0.2:5060"));

    assert_eq!(config.agents.file, data().join("agents.toml"));
    assert!(config.agents.auth);
    let agents = config.agents.provisioned.as_slice();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].badge, "A1001");
    assert_eq!(agents[0].extension, "1001");
    assert_eq!(agents[0].kind, AgentKind::Agent);
    assert_eq!(agents[0].credential, Credential::Password("s3cret".into()));
}

#[test]
fn defaults_apply() {
    let config = Config::load(&data().join("minimal.toml")).unwrap();
    assert_eq!(config.blade.cores, 0);
    assert_eq!(config.blade.admin, DEFAULT_ADMIN);
    assert!(config.cluster.is_none());
    assert!(config.agents.auth);
    let agents = &config.agents.provisioned;
    assert_eq!(agents.by_extension("2001").unwrap().kind, AgentKind::Agent);
    let supervisor = agents.by_badge("S2002").unwrap();
    assert_eq!(supervisor.kind, AgentKind::Supervisor);
    assert_eq!(
        supervisor.credential,
        Credential::md5_ha1("5d41402abc4b2a76b9719d911017c592")
    );
}

#[test]
fn relative_paths_follow_the_config_file() {
    // Cargo runs tests in the package root: this path is relative to it.
    let config = Config::load(Path::new("tests/data/config/spec.toml")).unwrap();
    let dir = Path::new("tests/data/config");
    assert_eq!(config.agents.file, dir.join("agents.toml"));
    assert_eq!(config.cluster.unwrap().ca, dir.join("certs/ca.pem"));
    assert_eq!(config.agents.provisioned.len(), 1);
}

#[test]
fn embedded_default() {
    let config = Config::embedded_default().unwrap();
    assert_eq!(config.blade.id, "blade-1");
    assert_eq!(config.blade.sip, addr("127.0.0.1:5060"));
    assert_eq!(config.blade.admin, addr("127.0.0.1:8060"));
    assert!(config.cluster.is_none());
    assert!(config.agents.auth);
    let extensions: Vec<&str> = config
        .agents
        .provisioned
        .iter()
        .map(|a| a.extension.as_str())
        .collect();
    assert_eq!(extensions, ["1001", "1002", "1003", "1004"]);
}

#[test]
fn unknown_keys_are_refused() {
    let err = load_err("bad_unknown_key.toml");
    assert_error(
        &err,
        "bad_unknown_key.toml",
        4,
        "unknown field `sipp`, expected one of",
    );
    let err = Agents::from_toml(
        "[[agent]]\nbadge = \"A\"\nextension = \"1\"\npassword = \"p\"\nmood = \"ok\"\n",
        Path::new("a.toml"),
    )
    .unwrap_err();
    assert_eq!(err.line(), Some(5), "{err}");
    assert!(err.to_string().contains("unknown field `mood`"), "{err}");
}

/// A cluster config in `dir` naming `ca`, `cert` and `key` (lines 9, 10,
/// 11) for blade `blade-1`, with certificates for blade-1 and blade-2 made
/// there; returns the config's path.
fn identity_config(dir: &Path, ca: &str, cert: &str, key: &str) -> PathBuf {
    let certs = Command::new(env!("CARGO_BIN_EXE_sipblade"))
        .args(["certs", "--dir"])
        .arg(dir)
        .args(["--blades", "blade-1,blade-2"])
        .output()
        .unwrap();
    assert!(certs.status.success() || dir.join("ca.pem").exists());
    // blade-1 again, from a CA of its own.
    let other = dir.join("other");
    if !other.exists() {
        let made = Command::new(env!("CARGO_BIN_EXE_sipblade"))
            .args(["certs", "--dir"])
            .arg(&other)
            .args(["--blades", "blade-1"])
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
    }
    std::fs::write(dir.join("agents.toml"), "").unwrap();
    std::fs::write(dir.join("garbage.pem"), "not PEM at all\n").unwrap();
    let text = format!(
        "[blade]\nid = \"blade-1\"\ndomain = \"cc.example\"\nsip = \"127.0.0.1:5060\"\n\
         [agents]\nfile = \"agents.toml\"\n\
         [cluster]\nlisten = \"127.0.0.1:7060\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n"
    );
    let path = dir.join("blade.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn cluster_identity_faults_name_the_config_line() {
    let dir = tempfile::tempdir().unwrap();
    let load = |ca: &str, cert: &str, key: &str| {
        let path = identity_config(dir.path(), ca, cert, key);
        (Config::load(&path), path)
    };
    let (ok, _) = load("ca.pem", "blade-1.pem", "blade-1.key");
    assert!(ok.is_ok(), "{:?}", ok.err());

    // A file that cannot be read: an I/O error naming the config line.
    let (err, path) = load("no-such-ca.pem", "blade-1.pem", "blade-1.key");
    let err = err.unwrap_err();
    assert!(err.is_io(), "{err}");
    let named_at = format!("(named at {}:9)", path.display());
    assert!(err.to_string().contains(&named_at), "{err}");

    // Faults in what the files hold: invalid input at the naming line.
    for (ca, cert, key, line, says) in [
        (
            "garbage.pem",
            "blade-1.pem",
            "blade-1.key",
            9,
            "not a usable CA certificate",
        ),
        (
            "ca.pem",
            "garbage.pem",
            "blade-1.key",
            10,
            "not a usable blade certificate",
        ),
        (
            "ca.pem",
            "blade-1.pem",
            "garbage.pem",
            11,
            "not a usable blade key",
        ),
        ("ca.pem", "blade-1.pem", "blade-2.key", 11, "refused by TLS"),
        (
            "ca.pem",
            "blade-2.pem",
            "blade-2.key",
            10,
            "is blade `blade-2`'s certificate",
        ),
        (
            "ca.pem",
            "other/blade-1.pem",
            "other/blade-1.key",
            10,
            "not accepted by the cluster CA",
        ),
        (
            "blade-2.pem",
            "blade-1.pem",
            "blade-1.key",
            10,
            "not accepted by the cluster CA",
        ),
    ] {
        let (err, path) = load(ca, cert, key);
        let err = err.unwrap_err();
        assert!(!err.is_io(), "{err}");
        assert_eq!(
            (err.path(), err.line()),
            (path.as_path(), Some(line)),
            "{err}"
        );
        assert!(err.to_string().contains(says), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
}

#[test]
fn cluster_errors_name_the_line() {
    assert_error(
        &load_err("bad_peer_self.toml"),
        "bad_peer_self.toml",
        13,
        "peer id `Blade-1` is this blade's own id",
    );
    assert_error(
        &load_err("bad_peer_dup.toml"),
        "bad_peer_dup.toml",
        18,
        "duplicate peer id `blade-2` (first on line 13)",
    );
    assert_error(
        &load_err("bad_peer_own_sip.toml"),
        "bad_peer_own_sip.toml",
        15,
        "peer sip = \"127.0.0.1:5060\" is this blade's own address",
    );
    assert_error(
        &load_err("bad_lease.toml"),
        "bad_lease.toml",
        11,
        "lease_secs must be between 1 and 3600",
    );
    assert_error(
        &load_err("bad_peer_addr.toml"),
        "bad_peer_addr.toml",
        14,
        "peer quic = \"0.0.0.0:7060\" must name a reachable",
    );
    assert_error(
        &load_err("bad_peer_same_addr.toml"),
        "bad_peer_same_addr.toml",
        20,
        "peer sip = \"127.0.0.2:5060\" is also peer `blade-2`'s address (line 13)",
    );
}

#[test]
fn agent_errors_name_the_agents_file() {
    assert_error(
        &load_err("bad_agents_ref.toml"),
        "bad_agents_both.toml",
        10,
        "agent `A1002`: give `password` or `ha1`, not both",
    );
    let err = Agents::load(&data().join("bad_agents_dup.toml")).unwrap_err();
    assert_error(
        &err,
        "bad_agents_dup.toml",
        8,
        "duplicate extension `1001` (first on line 2)",
    );
}

/// A config or agents file that was read but is not UTF-8 is a bad file
/// (exit 1, its line), not an I/O error: it was read.
#[test]
fn non_utf8_files_are_invalid_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("blade.toml");
    let agents = dir.path().join("agents.toml");
    std::fs::write(
        &config,
        b"[blade]\nid = \"blade-1\"\ndomain = \"cc.\xe9xample\"\nsip = \"127.0.0.1:5060\"\n\
          [agents]\nfile = \"agents.toml\"\n",
    )
    .unwrap();
    let err = Config::load(&config).unwrap_err();
    assert!(!err.is_io(), "{err}");
    assert_eq!(err.line(), Some(3), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}:3: not UTF-8", config.display())),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_sipblade"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    std::fs::write(
        &agents,
        b"[[agent]]\nbadge = \"A1\"\nextension = \"1001\"\npassword = \"p\xffss\"\n",
    )
    .unwrap();
    let err = Agents::load(&agents).unwrap_err();
    assert!(!err.is_io(), "{err}");
    assert_eq!(err.path(), agents);
    assert_eq!(err.line(), Some(4), "{err}");
}

#[test]
fn io_errors_name_the_file() {
    let err = load_err("missing_agents.toml");
    assert!(matches!(err, ConfigError::Io { .. }), "{err}");
    assert_eq!(err.path(), data().join("no_such_agents.toml"));
    assert!(err.to_string().starts_with(&format!(
        "{}: ",
        data().join("no_such_agents.toml").display()
    )));
    assert!(err.is_io());
    let named_at = format!(
        "(named at {}:7)",
        data().join("missing_agents.toml").display()
    );
    assert!(err.to_string().ends_with(&named_at), "{err}");

    let err = load_err("no_such_config.toml");
    assert_eq!(err.path(), data().join("no_such_config.toml"));
    assert_eq!(err.line(), None);
    assert!(err.is_io());
}

#[test]
fn cli_refuses_a_bad_config_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_sipblade"))
        .args(["run", "--config"])
        .arg(data().join("bad_unknown_key.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "sipblade: {}:4: unknown field `sipp`",
            data().join("bad_unknown_key.toml").display()
        )),
        "{stderr}"
    );
}

/// `sipblade check`: the same reading as `run` (so the same verdicts and
/// exit statuses), a one-line summary on success, and no blade started.
fn check(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sipblade"))
        .arg("check")
        .args(args)
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code(), text(out.stdout), text(out.stderr))
}

#[test]
fn check_summarises_a_good_config_in_one_line() {
    let config = data().join("spec.toml");
    let (code, stdout, stderr) = check(&["--config".as_ref(), config.as_os_str()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    for part in [
        "config OK: blade `blade-1`",
        "SIP 127.0.0.1:5060",
        "admin 127.0.0.1:8060",
        "1 peer(s) [blade-2]",
        "lease 30 s",
        "1 agent(s)",
        "authentication on",
    ] {
        assert!(stdout.contains(part), "{part}: {stdout}");
    }
    // Only warnings may go to stderr (the test key's mode is the checkout's).
    assert!(
        stderr
            .lines()
            .all(|l| l.starts_with("sipblade: check: warning: ")),
        "{stderr}"
    );

    let (code, stdout, _) = check(&[]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("single blade"), "{stdout}");
}

#[test]
fn check_refuses_what_run_refuses_with_file_line_and_exit_status() {
    let bad = data().join("bad_lease.toml");
    let (code, stdout, stderr) = check(&["--config".as_ref(), bad.as_os_str()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(
        stderr,
        format!(
            "sipblade: {}:11: lease_secs must be between 1 and 3600\n",
            bad.display()
        )
    );

    // An agents file the config names but that is not there: I/O, exit 2.
    let missing = data().join("missing_agents.toml");
    let (code, _, stderr) = check(&["--config".as_ref(), missing.as_os_str()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no_such_agents.toml"), "{stderr}");
}
