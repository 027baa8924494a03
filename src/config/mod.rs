//! Blade configuration and agent provisioning (SPEC §4).
//!
//! [`Config::load`] reads the TOML configuration *and* the agents file it
//! names, and checks both, so that a bad file of either kind is refused at
//! start with its name, line and fault ([`ConfigError`]). Unknown keys are
//! refused everywhere.
//!
//! Defaults, where a key may be omitted:
//!
//! | key | default |
//! | --- | --- |
//! | `blade.cores` | `0`: one executor per available core |
//! | `blade.admin` | `127.0.0.1:8060` |
//! | `blade.max_call_secs` | `14400` (4 hours; 1 to 604800 allowed) |
//! | `blade.max_tcp_connections` | what the open-files limit leaves (1 to 1000000 allowed) |
//! | `cluster` | absent: a single blade |
//! | `cluster.lease_secs` | `30` (1 to 3600 allowed) |
//! | `cluster.peer` | none |
//! | `agents.auth` | `true` |
//! | `agent.kind` | `"agent"` |
//!
//! Relative paths (`cluster.ca`, `cluster.cert`, `cluster.key`,
//! `agents.file`) are resolved against the directory of the config file, so
//! a config works from any working directory. The certificate files are not
//! read here: the cluster link reads them when it starts.
//!
//! Own listen addresses may use port 0 (any free port, for tests); peer
//! addresses must be reachable: a concrete IP and a non-zero port. So
//! must `blade.sip`'s IP: it goes into the blade's Vias and Record-Routes.
//! No two peers share an address.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::cluster::validate_blade_id;

mod agents;
mod error;

pub use agents::{Agent, AgentKind, Agents, Credential};
pub use error::ConfigError;
use error::{Source, read};

/// The admin address when `blade.admin` is omitted.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8060));
/// The hosting lease when `cluster.lease_secs` is omitted.
pub const DEFAULT_LEASE_SECS: u64 = 30;
/// The longest hosting lease: bounds how long a dead source can strand an agent.
pub const MAX_LEASE_SECS: u64 = 3600;
/// The most executor threads `blade.cores` may ask for (catches typos).
pub const MAX_CORES: usize = 1024;
/// How long a call may last when `blade.max_call_secs` is omitted.
pub const DEFAULT_MAX_CALL_SECS: u64 = 4 * 3600;
/// The largest `blade.max_call_secs`: a week.
pub const MAX_MAX_CALL_SECS: u64 = 7 * 24 * 3600;

/// The most `blade.max_tcp_connections` may ask for (catches typos).
pub const MAX_TCP_CONNECTIONS: usize = 1_000_000;

/// Where the embedded default pretends to live, for paths and messages.
const EMBEDDED_DIR: &str = "(embedded)";
const DEFAULT_TOML: &str = include_str!("default.toml");
const DEFAULT_AGENTS_TOML: &str = include_str!("default_agents.toml");

/// A blade's whole configuration, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This blade.
    pub blade: BladeConfig,
    /// The cluster link; `None` for a single blade.
    pub cluster: Option<ClusterConfig>,
    /// Agent provisioning and authentication.
    pub agents: AgentsConfig,
}

/// `[blade]`: this blade's identity and listen addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BladeConfig {
    /// Unique id in the cluster (see [`validate_blade_id`]).
    pub id: String,
    /// The SIP domain agents register under.
    pub domain: String,
    /// SIP listen address, UDP and TCP.
    pub sip: SocketAddr,
    /// Executor threads; 0 = one per available core.
    pub cores: usize,
    /// HTTP admin address (`/status`, `/metrics`).
    pub admin: SocketAddr,
    /// A session still up after this many seconds is ended as if hung up:
    /// a lost BYE must not leave its agents in a call (or hosted) for ever.
    pub max_call_secs: u64,
    /// The most SIP connections the blade accepts at once (over all its
    /// cores); `None`: what the open-files limit leaves room for.
    pub max_tcp_connections: Option<usize>,
}

/// `[cluster]`: the QUIC link to the other blades.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// QUIC listen address (UDP).
    pub listen: SocketAddr,
    /// Cluster CA certificate (PEM), resolved.
    pub ca: PathBuf,
    /// This blade's certificate (PEM), resolved.
    pub cert: PathBuf,
    /// This blade's private key (PEM), resolved.
    pub key: PathBuf,
    /// A hosting grant lapses after this many seconds unless renewed.
    pub lease_secs: u64,
    /// The other blades (`[[cluster.peer]]`).
    pub peers: Vec<PeerConfig>,
}

/// `[[cluster.peer]]`: another blade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's blade id: the DNS name in its certificate.
    pub id: String,
    /// The peer's QUIC address.
    pub quic: SocketAddr,
    /// The peer's SIP address.
    pub sip: SocketAddr,
}

/// `[agents]`: provisioning and authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentsConfig {
    /// The provisioning file, resolved. For [`Config::embedded_default`] a
    /// name under `(embedded)/` that is not on disk.
    pub file: PathBuf,
    /// Digest authentication of REGISTER (and of out-of-dialog requests).
    pub auth: bool,
    /// The agents read from `file` at load time.
    pub provisioned: Agents,
}

impl Config {
    /// Reads and checks the config file at `path` and the agents file it names.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read(path)?;
        Config::from_toml(&text, path)
    }

    /// Parses and checks config text as if read from `path` (which names it
    /// in errors and anchors relative paths), then loads the agents file.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let base = path.parent().unwrap_or(Path::new(""));
        let src = Source { path, text };
        let (mut config, lines) = parse(&src, base)?;
        if let (Some(cluster), Some(identity_lines)) = (&config.cluster, lines.identity) {
            check_identity(path, &config.blade.id, cluster, identity_lines)?;
        }
        config.agents.provisioned =
            Agents::load(&config.agents.file).map_err(|e| e.named_by(path, lines.agents))?;
        Ok(config)
    }

    /// The configuration of `sipblade run` without `--config`: one blade,
    /// `blade-1`, on loopback (SIP 127.0.0.1:5060, admin 127.0.0.1:8060), no
    /// cluster, and four demo agents 1001 to 1004 (1004 a supervisor) with
    /// passwords `demo-EXT`. The text is in `src/config/default*.toml`.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        let base = Path::new(EMBEDDED_DIR);
        let path = base.join("default.toml");
        let (mut config, _) = parse(
            &Source {
                path: &path,
                text: DEFAULT_TOML,
            },
            base,
        )?;
        config.agents.provisioned = Agents::from_toml(DEFAULT_AGENTS_TOML, &config.agents.file)?;
        Ok(config)
    }
}

// The file as written: spans kept where a later check may need a line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    blade: RawBlade,
    cluster: Option<RawCluster>,
    agents: RawAgents,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlade {
    id: Spanned<String>,
    domain: Spanned<String>,
    sip: Spanned<String>,
    cores: Option<Spanned<usize>>,
    admin: Option<Spanned<String>>,
    max_call_secs: Option<Spanned<u64>>,
    max_tcp_connections: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    listen: Spanned<String>,
    ca: Spanned<String>,
    cert: Spanned<String>,
    key: Spanned<String>,
    lease_secs: Option<Spanned<u64>>,
    #[serde(default, rename = "peer")]
    peers: Vec<RawPeer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    id: Spanned<String>,
    quic: Spanned<String>,
    sip: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgents {
    file: Spanned<String>,
    auth: Option<bool>,
}

/// The lines that name the files a config points to, for their errors.
struct FileLines {
    agents: usize,
    /// `ca`, `cert` and `key` of `[cluster]`.
    identity: Option<[usize; 3]>,
}

/// Deserialises and checks everything but the files the config names;
/// returns the config and the lines that name them.
fn parse(src: &Source<'_>, base: &Path) -> Result<(Config, FileLines), ConfigError> {
    let raw: RawConfig = src.parse()?;
    let blade = check_blade(src, &raw.blade)?;
    let cluster = match &raw.cluster {
        Some(cluster) => Some(check_cluster(src, cluster, &blade, base)?),
        None => None,
    };
    let agents = AgentsConfig {
        file: path(src, "file", &raw.agents.file, base)?,
        auth: raw.agents.auth.unwrap_or(true),
        provisioned: Agents::default(),
    };
    let lines = FileLines {
        agents: src.line_of(raw.agents.file.span().start),
        identity: raw
            .cluster
            .as_ref()
            .map(|c| [&c.ca, &c.cert, &c.key].map(|key| src.line_of(key.span().start))),
    };
    let config = Config {
        blade,
        cluster,
        agents,
    };
    Ok((config, lines))
}

/// SPEC §4: the cluster CA, this blade's certificate and its key are part
/// of the config, so their faults are refused at start with the config
/// line that names the file: unreadable (an I/O error, as for the agents
/// file), not PEM, refused by TLS (a key that is not the certificate's),
/// or a certificate issued to another blade.
fn check_identity(
    config: &Path,
    blade_id: &str,
    cluster: &ClusterConfig,
    lines: [usize; 3],
) -> Result<(), ConfigError> {
    use crate::cluster::tls::{self, Identity, PemFile, TlsError};
    let files = [&cluster.ca, &cluster.cert, &cluster.key];
    let mut pems: [Vec<u8>; 3] = Default::default();
    for ((pem, file), line) in pems.iter_mut().zip(files).zip(lines) {
        *pem = std::fs::read(file).map_err(|source| ConfigError::Io {
            path: file.clone(),
            source,
            named_by: Some((config.to_owned(), line)),
        })?;
    }
    let invalid = |at: usize, message: String| ConfigError::Invalid {
        path: config.to_owned(),
        line: Some(lines[at]),
        message,
    };
    Identity::from_pem(&pems[0], &pems[1], &pems[2]).map_err(|e| match e {
        TlsError::Pem { file, message, .. } => {
            let at = match file {
                PemFile::Ca => 0,
                PemFile::Cert => 1,
                PemFile::Key => 2,
            };
            let shown = files[at].display();
            invalid(
                at,
                format!("{shown}: not a usable {}: {message}", file.role()),
            )
        }
        TlsError::Config(message) => invalid(
            2,
            format!(
                "{} and {} refused by TLS (is the key the certificate's?): {message}",
                files[1].display(),
                files[2].display()
            ),
        ),
    })?;
    match tls::blade_id_of_pem(&pems[1]) {
        Some(id) if id.eq_ignore_ascii_case(blade_id) => Ok(()),
        Some(id) => Err(invalid(
            1,
            format!(
                "{} is blade `{id}`'s certificate, not this blade's (`{blade_id}`)",
                files[1].display()
            ),
        )),
        None => Err(invalid(
            1,
            format!("{} names no blade id", files[1].display()),
        )),
    }
}

fn check_blade(src: &Source<'_>, raw: &RawBlade) -> Result<BladeConfig, ConfigError> {
    let id = raw.id.get_ref();
    validate_blade_id(id)
        .map_err(|reason| src.at(raw.id.span(), format!("blade id `{id}` {reason}")))?;
    let domain = raw.domain.get_ref();
    if !is_host(domain) {
        return Err(src.at(
            raw.domain.span(),
            format!("domain `{domain}` must be a host name or IP address"),
        ));
    }
    let sip = address(src, "sip", &raw.sip)?;
    // The blade writes this address into its Vias and Record-Routes and
    // knows requests for itself by it: a wildcard there sends responses
    // and in-dialog requests to 0.0.0.0, the sender itself.
    if sip.ip().is_unspecified() {
        return Err(src.at(
            raw.sip.span(),
            format!(
                "sip = \"{sip}\" must name this blade's own IP address (it goes into Via and Record-Route), not a wildcard"
            ),
        ));
    }
    let cores = match &raw.cores {
        Some(cores) if *cores.get_ref() > MAX_CORES => {
            return Err(src.at(
                cores.span(),
                format!("cores must be at most {MAX_CORES} (0 = one per core)"),
            ));
        }
        Some(cores) => *cores.get_ref(),
        None => 0,
    };
    let admin = match &raw.admin {
        Some(admin) => {
            let addr = address(src, "admin", admin)?;
            if addr == sip && addr.port() != 0 {
                return Err(src.at(admin.span(), "admin must not be the sip address"));
            }
            addr
        }
        None => DEFAULT_ADMIN,
    };
    let max_call_secs = seconds(
        src,
        "max_call_secs",
        &raw.max_call_secs,
        MAX_MAX_CALL_SECS,
        DEFAULT_MAX_CALL_SECS,
    )?;
    let max_tcp_connections = match &raw.max_tcp_connections {
        Some(n) if !(1..=MAX_TCP_CONNECTIONS).contains(n.get_ref()) => {
            return Err(src.at(
                n.span(),
                format!("max_tcp_connections must be between 1 and {MAX_TCP_CONNECTIONS}"),
            ));
        }
        Some(n) => Some(*n.get_ref()),
        None => None,
    };
    Ok(BladeConfig {
        id: id.clone(),
        domain: domain.clone(),
        sip,
        cores,
        admin,
        max_call_secs,
        max_tcp_connections,
    })
}

/// An optional duration setting `key`: 1 to `max` seconds, `default`
/// when left out.
fn seconds(
    src: &Source<'_>,
    key: &str,
    raw: &Option<Spanned<u64>>,
    max: u64,
    default: u64,
) -> Result<u64, ConfigError> {
    match raw {
        Some(secs) if !(1..=max).contains(secs.get_ref()) => {
            Err(src.at(secs.span(), format!("{key} must be between 1 and {max}")))
        }
        Some(secs) => Ok(*secs.get_ref()),
        None => Ok(default),
    }
}

fn check_cluster(
    src: &Source<'_>,
    raw: &RawCluster,
    blade: &BladeConfig,
    base: &Path,
) -> Result<ClusterConfig, ConfigError> {
    let listen = address(src, "listen", &raw.listen)?;
    if listen.port() == 0 {
        return Err(src.at(
            raw.listen.span(),
            "listen needs a fixed port (the peers are configured with it), not port 0",
        ));
    }
    // QUIC and SIP both use UDP: one socket address cannot serve both.
    if listen == blade.sip {
        return Err(src.at(raw.listen.span(), "listen must not be the sip address"));
    }
    let lease_secs = seconds(
        src,
        "lease_secs",
        &raw.lease_secs,
        MAX_LEASE_SECS,
        DEFAULT_LEASE_SECS,
    )?;
    let mut peers: Vec<PeerConfig> = Vec::with_capacity(raw.peers.len());
    for (i, peer) in raw.peers.iter().enumerate() {
        let id = peer.id.get_ref();
        validate_blade_id(id)
            .map_err(|reason| src.at(peer.id.span(), format!("peer id `{id}` {reason}")))?;
        if id.eq_ignore_ascii_case(&blade.id) {
            return Err(src.at(
                peer.id.span(),
                format!("peer id `{id}` is this blade's own id"),
            ));
        }
        // Ids are DNS names in the certificates: compare them without case.
        let earlier = &raw.peers[..i];
        if let Some(first) = earlier
            .iter()
            .find(|p| p.id.get_ref().eq_ignore_ascii_case(id))
        {
            let line = src.line_of(first.id.span().start);
            return Err(src.at(
                peer.id.span(),
                format!("duplicate peer id `{id}` (first on line {line})"),
            ));
        }
        let quic = peer_address(src, "quic", &peer.quic)?;
        let sip = peer_address(src, "sip", &peer.sip)?;
        // A peer at one of this blade's own addresses would be this blade
        // talking to itself (its requests "from a peer" looping back).
        if sip == blade.sip || sip == listen {
            return Err(src.at(
                peer.sip.span(),
                format!("peer sip = \"{sip}\" is this blade's own address"),
            ));
        }
        // The blade's SIP sockets are bound to its SIP address, and the
        // link's socket to `listen`: each reaches one IP version. Not even
        // `[::]` reaches IPv4 peers: such a link never came up on Linux
        // (the peers' answers arrive from IPv4-mapped addresses, not the
        // ones dialled).
        if sip.is_ipv4() != blade.sip.is_ipv4() {
            return Err(src.at(
                peer.sip.span(),
                format!(
                    "peer sip = \"{sip}\" is {}, but this blade's sip = \"{}\" is {}: its SIP sockets reach one IP version",
                    family(sip),
                    blade.sip,
                    family(blade.sip)
                ),
            ));
        }
        if quic.is_ipv4() != listen.is_ipv4() {
            return Err(src.at(
                peer.quic.span(),
                format!(
                    "peer quic = \"{quic}\" is {}, but this blade's listen = \"{listen}\" is {}: the link's socket reaches one IP version",
                    family(quic),
                    family(listen)
                ),
            ));
        }
        if quic == listen || quic == blade.sip {
            return Err(src.at(
                peer.quic.span(),
                format!("peer quic = \"{quic}\" is this blade's own address"),
            ));
        }
        // One address is one blade: a second peer there (most likely a
        // copied entry left unedited) would have its link or its calls
        // reach the other blade.
        for (key, addr, raw) in [("sip", sip, &peer.sip), ("quic", quic, &peer.quic)] {
            let clash = peers
                .iter()
                .zip(earlier)
                .find(|(p, _)| [p.sip, p.quic].contains(&addr));
            if let Some((first, first_raw)) = clash {
                let line = src.line_of(first_raw.id.span().start);
                return Err(src.at(
                    raw.span(),
                    format!(
                        "peer {key} = \"{addr}\" is also peer `{}`'s address (line {line})",
                        first.id
                    ),
                ));
            }
        }
        peers.push(PeerConfig {
            id: id.clone(),
            quic,
            sip,
        });
    }
    Ok(ClusterConfig {
        listen,
        ca: path(src, "ca", &raw.ca, base)?,
        cert: path(src, "cert", &raw.cert, base)?,
        key: path(src, "key", &raw.key, base)?,
        lease_secs,
        peers,
    })
}

/// An address's family, as an error message names it.
fn family(addr: SocketAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn address(src: &Source<'_>, key: &str, raw: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
    let addr: SocketAddr = raw.get_ref().parse().map_err(|_| {
        src.at(
            raw.span(),
            format!(
                "{key} = \"{}\" is not an IP address and port (e.g. \"127.0.0.1:5060\", \"[::1]:5060\")",
                raw.get_ref()
            ),
        )
    })?;
    // An IPv4 address written as IPv6 (`[::ffff:a.b.c.d]`) would bind an
    // IPv6 socket that serves IPv4 under another name: Vias and
    // Record-Routes would carry the IPv6 form, and IPv4 phones' Contacts
    // would be of the wrong IP version.
    if let IpAddr::V6(v6) = addr.ip() {
        if let Some(v4) = v6.to_ipv4_mapped() {
            return Err(src.at(
                raw.span(),
                format!(
                    "{key} = \"{addr}\" is an IPv4-mapped IPv6 address: write the IPv4 address, \"{}\"",
                    SocketAddr::new(IpAddr::V4(v4), addr.port())
                ),
            ));
        }
    }
    Ok(addr)
}

/// A peer's address: one this blade can send to.
fn peer_address(
    src: &Source<'_>,
    key: &str,
    raw: &Spanned<String>,
) -> Result<SocketAddr, ConfigError> {
    let addr = address(src, key, raw)?;
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(src.at(
            raw.span(),
            format!("peer {key} = \"{addr}\" must name a reachable IP address and port"),
        ));
    }
    Ok(addr)
}

/// A non-empty path, resolved against the config file's directory.
fn path(
    src: &Source<'_>,
    key: &str,
    raw: &Spanned<String>,
    base: &Path,
) -> Result<PathBuf, ConfigError> {
    if raw.get_ref().is_empty() {
        return Err(src.at(raw.span(), format!("{key} must not be empty")));
    }
    // `join` keeps an absolute path as it is.
    Ok(base.join(raw.get_ref()))
}

/// A host name (letters, digits, `-`, `.`) or an IP address, IPv6 in brackets.
fn is_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[blade]\nid = \"b1\"\ndomain = \"cc.example\"\nsip = \"127.0.0.1:5060\"\n\
                           [agents]\nfile = \"agents.toml\"\n";

    fn parse_str(text: &str) -> Result<Config, ConfigError> {
        parse(
            &Source {
                path: Path::new("/etc/sipblade/config.toml"),
                text,
            },
            Path::new("/etc/sipblade"),
        )
        .map(|(config, _)| config)
    }

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::embedded_default().unwrap();
        assert_eq!(config.blade.id, "blade-1");
        assert_eq!(config.blade.domain, "cc.example");
        assert_eq!(config.blade.sip, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(config.blade.admin, DEFAULT_ADMIN);
        assert_eq!(config.blade.cores, 0);
        assert!(config.cluster.is_none());
        assert!(config.agents.auth);
        let agents = &config.agents.provisioned;
        assert_eq!(agents.len(), 4);
        assert_eq!(
            agents.by_extension("1004").unwrap().kind,
            AgentKind::Supervisor
        );
        assert_eq!(
            agents.by_extension("1001").unwrap().credential,
            Credential::Password("demo-1001".into())
        );
    }

    #[test]
    fn defaults_and_resolution() {
        let config = parse_str(MINIMAL).unwrap();
        assert_eq!(config.blade.cores, 0);
        assert_eq!(config.blade.admin, DEFAULT_ADMIN);
        assert_eq!(config.blade.max_call_secs, DEFAULT_MAX_CALL_SECS);
        let short = MINIMAL.replace("[agents]", "max_call_secs = 90\n[agents]");
        assert_eq!(parse_str(&short).unwrap().blade.max_call_secs, 90);
        assert_eq!(config.blade.max_tcp_connections, None);
        let capped = MINIMAL.replace("[agents]", "max_tcp_connections = 500\n[agents]");
        assert_eq!(
            parse_str(&capped).unwrap().blade.max_tcp_connections,
            Some(500)
        );
        assert!(config.agents.auth);
        assert_eq!(config.agents.file, Path::new("/etc/sipblade/agents.toml"));
        let abs = MINIMAL.replace("\"agents.toml\"", "\"/srv/agents.toml\"");
        assert_eq!(
            parse_str(&abs).unwrap().agents.file,
            Path::new("/srv/agents.toml")
        );
    }

    #[test]
    fn hosts() {
        for good in ["cc.example", "localhost", "10.0.0.1", "[::1]", "a-b.c"] {
            assert!(is_host(good), "{good}");
        }
        for bad in ["", ".a", "a.", "-a", "a b", "a@b", "[zz]", "::1"] {
            assert!(!is_host(bad), "{bad}");
        }
    }

    #[test]
    fn semantic_errors_name_the_line() {
        let cases = [
            (
                "id = \"b1\"",
                "id = \"\"",
                2,
                "blade id `` must not be empty",
            ),
            ("cc.example", "cc example", 3, "domain `cc example` must be"),
            (
                "sip = \"127.0.0.1:5060\"",
                "sip = \"localhost:5060\"",
                4,
                "sip = \"localhost:5060\" is not",
            ),
            (
                "file = \"agents.toml\"",
                "file = \"\"",
                6,
                "file must not be empty",
            ),
            (
                "file = \"agents.toml\"",
                "file = \"a\"\nauth = \"yes\"",
                7,
                "invalid type: string",
            ),
            (
                "[agents]",
                "max_call_secs = 0\n[agents]",
                5,
                "max_call_secs must be between 1 and 604800",
            ),
            (
                "[agents]",
                "max_tcp_connections = 0\n[agents]",
                5,
                "max_tcp_connections must be between 1 and 1000000",
            ),
            (
                "sip = \"127.0.0.1:5060\"",
                "sip = \"0.0.0.0:5060\"",
                4,
                "sip = \"0.0.0.0:5060\" must name this blade's own IP address",
            ),
            (
                "sip = \"127.0.0.1:5060\"",
                "sip = \"[::]:5060\"",
                4,
                "sip = \"[::]:5060\" must name this blade's own IP address",
            ),
            (
                "[agents]",
                "cores = 5000\n[agents]",
                5,
                "cores must be at most 1024",
            ),
            (
                "[agents]",
                "admin = \"127.0.0.1:5060\"\n[agents]",
                5,
                "admin must not be the sip address",
            ),
        ];
        for (from, to, line, message) in cases {
            let err = parse_str(&MINIMAL.replace(from, to)).unwrap_err();
            assert_eq!(err.line(), Some(line), "{err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("/etc/sipblade/config.toml:{line}: {message}")),
                "{err}"
            );
        }
    }
}
