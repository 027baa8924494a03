//! Several blades in this process, each on its own loopback address
//! (127.0.0.x), linked by real QUIC with certificates from a real cluster
//! CA: SIP on port 5060 and QUIC on 7060 of each address, admin on a port
//! the OS picks.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sipblade::cluster::certs::generate_cluster;
use sipblade::config::Config;
use sipblade::runtime::{Blade, Options};

use super::{Ua, agents_toml, status, wait_until};

/// The SIP port of every cluster test blade.
pub const SIP_PORT: u16 = 5060;
/// The QUIC port of every cluster test blade.
pub const QUIC_PORT: u16 = 7060;

/// One blade's addresses.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its id: `blade-1`, `blade-2`, …
    pub id: String,
    /// Its SIP address.
    pub sip: SocketAddr,
    /// Its QUIC address.
    pub quic: SocketAddr,
}

/// How a member runs, if it does.
enum Running {
    /// Not started, or stopped.
    No,
    /// In this process.
    Here(Blade),
    /// As a child process of the real binary (`sipblade run`).
    Child(Child),
}

impl Running {
    fn is_running(&self) -> bool {
        !matches!(self, Running::No)
    }

    /// Stops it: gracefully in this process, with SIGKILL as a child.
    fn stop(&mut self) {
        match std::mem::replace(self, Running::No) {
            Running::No => {}
            Running::Here(blade) => blade.stop(),
            Running::Child(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A cluster of blades, stopped when dropped.
pub struct TestCluster {
    /// The members, in order.
    pub members: Vec<Member>,
    blades: Vec<Running>,
    admins: Vec<SocketAddr>,
    /// The admin port written in each member's config (0: the OS picks;
    /// a child process needs a known one).
    admin_ports: Vec<u16>,
    /// Where configs and certificates live.
    pub dir: tempfile::TempDir,
    lease_secs: u32,
    cores: usize,
    /// More `[blade]` settings (TOML lines) for every member.
    pub blade_settings: String,
    /// `[agents] auth` of every member (false unless a test sets it
    /// before starting the members).
    pub auth: bool,
}

impl TestCluster {
    /// `n` blades on 127.0.0.`first_ip`, `first_ip + 1`, …, one core each,
    /// auth off, 30 s leases; waits until every link is up.
    pub fn start(n: usize, first_ip: u8) -> TestCluster {
        TestCluster::start_with(n, first_ip, 30, 1)
    }

    /// [`TestCluster::start`] with a lease and a core count.
    pub fn start_with(n: usize, first_ip: u8, lease_secs: u32, cores: usize) -> TestCluster {
        let mut cluster = TestCluster::new(n, first_ip, lease_secs, cores);
        for i in 0..n {
            cluster.start_blade(i);
        }
        cluster.wait_linked();
        cluster
    }

    /// `n` members like [`TestCluster::start_with`], with their
    /// certificates and agents file, none started: the test starts each
    /// in this process ([`TestCluster::start_blade`]) or as a child
    /// process ([`TestCluster::spawn_blade`]), then calls
    /// [`TestCluster::wait_linked`].
    pub fn new(n: usize, first_ip: u8, lease_secs: u32, cores: usize) -> TestCluster {
        TestCluster::new_in(0, n, first_ip, lease_secs, cores)
    }

    /// [`TestCluster::new_in`], started: the members in `children` as
    /// child processes (a test may SIGKILL them,
    /// [`TestCluster::kill_blade`]), the others in this process; waits
    /// until every link is up.
    pub fn start_in(
        subnet: u8,
        n: usize,
        first_ip: u8,
        lease_secs: u32,
        cores: usize,
        children: &[usize],
    ) -> TestCluster {
        let mut cluster = TestCluster::new_in(subnet, n, first_ip, lease_secs, cores);
        cluster.start_all(children);
        cluster
    }

    /// [`TestCluster::start_in`] with no child processes, provisioned with
    /// `extra` agents besides the usual ones.
    pub fn start_in_with_agents(
        subnet: u8,
        n: usize,
        first_ip: u8,
        cores: usize,
        extra: &[String],
    ) -> TestCluster {
        let mut cluster = TestCluster::new_in(subnet, n, first_ip, 30, cores);
        let agents = super::agents_toml_with(extra);
        std::fs::write(cluster.dir.path().join("agents.toml"), agents).expect("agents file");
        cluster.start_all(&[]);
        cluster
    }

    /// Starts every member (those in `children` as child processes) and
    /// waits until every link is up.
    fn start_all(&mut self, children: &[usize]) {
        for i in 0..self.members.len() {
            if children.contains(&i) {
                self.spawn_blade(i);
            } else {
                self.start_blade(i);
            }
        }
        self.wait_linked();
    }

    /// [`TestCluster::new`] on 127.0.`subnet`.`first_ip`, … instead of
    /// 127.0.0.…
    pub fn new_in(
        subnet: u8,
        n: usize,
        first_ip: u8,
        lease_secs: u32,
        cores: usize,
    ) -> TestCluster {
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let ip = format!("127.0.{subnet}.{}", usize::from(first_ip) + i);
                Member {
                    id: format!("blade-{}", i + 1),
                    sip: format!("{ip}:{SIP_PORT}").parse().expect("an address"),
                    quic: format!("{ip}:{QUIC_PORT}").parse().expect("an address"),
                }
            })
            .collect();
        TestCluster::of(members, lease_secs, cores)
    }

    /// `n` members like [`TestCluster::new`], all on the IPv6 loopback
    /// `::1`, told apart by ports the OS found free.
    pub fn new_on_ipv6_loopback(n: usize, lease_secs: u32, cores: usize) -> TestCluster {
        let ip = std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        // Held until all are drawn, so no two members get the same port.
        let mut held = Vec::new();
        let mut free_port = |tcp_too: bool| loop {
            let udp = UdpSocket::bind((ip, 0)).expect("bind a UDP socket on ::1");
            let addr = udp.local_addr().expect("an address");
            let tcp = if tcp_too {
                match TcpListener::bind(addr) {
                    Ok(l) => Some(l),
                    Err(_) => continue,
                }
            } else {
                None
            };
            held.push((udp, tcp));
            return addr;
        };
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                id: format!("blade-{}", i + 1),
                sip: free_port(true),
                quic: free_port(false),
            })
            .collect();
        drop(held);
        TestCluster::of(members, lease_secs, cores)
    }

    /// A cluster of `members`, with certificates and the agents file.
    fn of(members: Vec<Member>, lease_secs: u32, cores: usize) -> TestCluster {
        let n = members.len();
        let dir = tempfile::tempdir().expect("temp dir");
        let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
        generate_cluster(&dir.path().join("certs"), &ids).expect("certificates");
        std::fs::write(dir.path().join("agents.toml"), agents_toml()).expect("agents file");
        TestCluster {
            members,
            blades: (0..n).map(|_| Running::No).collect(),
            admins: vec!["127.0.0.1:0".parse().expect("an address"); n],
            admin_ports: vec![0; n],
            dir,
            lease_secs,
            cores,
            blade_settings: String::new(),
            auth: false,
        }
    }

    /// The config file of member `i`, with certificates from `certs`.
    pub fn config_text(&self, i: usize, certs: &Path) -> String {
        let m = &self.members[i];
        let mut text = format!(
            "[blade]\nid = \"{id}\"\ndomain = \"{domain}\"\nsip = \"{sip}\"\ncores = {cores}\n\
             admin = \"{admin}\"\n{extra}\n[cluster]\nlisten = \"{quic}\"\nca = \"{ca}\"\ncert = \"{cert}\"\n\
             key = \"{key}\"\nlease_secs = {lease}\n\n",
            id = m.id,
            domain = super::DOMAIN,
            sip = m.sip,
            cores = self.cores,
            admin = SocketAddr::new(m.sip.ip(), self.admin_ports[i]),
            quic = m.quic,
            ca = certs.join("ca.pem").display(),
            cert = certs.join(format!("{}.pem", m.id)).display(),
            key = certs.join(format!("{}.key", m.id)).display(),
            lease = self.lease_secs,
            extra = self.blade_settings,
        );
        for (j, p) in self.members.iter().enumerate() {
            if j != i {
                text += &format!(
                    "[[cluster.peer]]\nid = \"{}\"\nquic = \"{}\"\nsip = \"{}\"\n\n",
                    p.id, p.quic, p.sip
                );
            }
        }
        text += &format!(
            "[agents]\nfile = \"{}\"\nauth = {}\n",
            self.dir.path().join("agents.toml").display(),
            self.auth
        );
        text
    }

    /// The cluster's certificates directory (CA, and each member's
    /// certificate and key).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Writes member `i`'s config file and returns its path.
    pub fn write_config(&self, i: usize) -> PathBuf {
        self.write_config_with(i, &self.certs_dir())
    }

    /// Writes member `i`'s config file, with certificates from `certs`,
    /// and returns its path.
    pub fn write_config_with(&self, i: usize, certs: &Path) -> PathBuf {
        let path = self.dir.path().join(format!("{}.toml", self.members[i].id));
        let text = self.config_text(i, certs);
        std::fs::write(&path, text).expect("config file");
        path
    }

    /// Starts (or restarts) member `i` in this process.
    pub fn start_blade(&mut self, i: usize) {
        let certs = self.certs_dir();
        self.start_blade_with(i, &certs);
    }

    /// Starts member `i` in this process with runtime `options` (a low
    /// `max_transactions`, say).
    pub fn start_blade_with_options(&mut self, i: usize, options: Options) {
        assert!(!self.blades[i].is_running(), "member {i} already runs");
        let path = self.write_config(i);
        let config = Config::load(&path).expect("valid config");
        let blade = Blade::start_with(config, options).expect("the blade starts");
        self.admins[i] = blade.admin_addr().expect("an admin port");
        self.blades[i] = Running::Here(blade);
    }

    /// Starts member `i` in this process with certificates from `certs`
    /// (another CA's: an impostor claiming the member's id).
    pub fn start_blade_with(&mut self, i: usize, certs: &Path) {
        assert!(!self.blades[i].is_running(), "member {i} already runs");
        let path = self.write_config_with(i, certs);
        let config = Config::load(&path).expect("valid config");
        let blade = Blade::start_with(config, Options::default()).expect("the blade starts");
        self.admins[i] = blade.admin_addr().expect("an admin port");
        self.blades[i] = Running::Here(blade);
    }

    /// Starts member `i` as a child process of the real binary
    /// (`sipblade run --config FILE`, stderr in `DIR/ID.stderr`), on an
    /// admin port chosen here; waits until its admin port answers.
    pub fn spawn_blade(&mut self, i: usize) {
        assert!(!self.blades[i].is_running(), "member {i} already runs");
        let ip = self.members[i].sip.ip();
        let port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("a free admin port")
            .port();
        self.admin_ports[i] = port;
        let path = self.write_config(i);
        let stderr = self.stderr_path(i);
        let child = Command::new(env!("CARGO_BIN_EXE_sipblade"))
            .args(["run", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("sipblade starts");
        self.admins[i] = SocketAddr::new(ip, port);
        self.blades[i] = Running::Child(child);
        let admin = self.admins[i];
        wait_until(
            &format!("{}'s admin port {admin}", self.members[i].id),
            || {
                if let Running::Child(child) = &mut self.blades[i] {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!(
                            "the child blade exited ({status}): {}",
                            std::fs::read_to_string(&stderr).unwrap_or_default()
                        );
                    }
                }
                TcpStream::connect_timeout(&admin, Duration::from_millis(100)).is_ok()
            },
        );
    }

    /// Where a child process member writes its stderr.
    pub fn stderr_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.stderr", self.members[i].id))
    }

    /// Kills the child process of member `i` with SIGKILL (no goodbye to
    /// its peers, no unhost) and reaps it.
    pub fn kill_blade(&mut self, i: usize) {
        assert!(
            matches!(self.blades[i], Running::Child(_)),
            "member {i} is not a child process"
        );
        self.blades[i].stop();
    }

    /// Sends the child process of member `i` `signal` (`STOP`, `CONT`):
    /// a stopped blade keeps its sockets but answers nothing, so its
    /// peers' links time out while it still holds its sessions.
    pub fn signal_blade(&self, i: usize, signal: &str) {
        let Running::Child(child) = &self.blades[i] else {
            panic!("member {i} is not a child process");
        };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} member {i}");
    }

    /// Stops member `i`: gracefully in this process, a child with SIGKILL.
    pub fn stop_blade(&mut self, i: usize) {
        self.blades[i].stop();
    }

    /// Whether member `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.blades[i].is_running()
    }

    /// Waits until every running member sees every other running one up.
    pub fn wait_linked(&self) {
        let running: Vec<usize> = (0..self.blades.len())
            .filter(|&i| self.blades[i].is_running())
            .collect();
        for &i in &running {
            for &j in &running {
                if i != j {
                    let peer = self.members[j].id.clone();
                    wait_until(&format!("{} to see {peer} up", self.members[i].id), || {
                        self.peer_up(i, &peer)
                    });
                }
            }
        }
    }

    /// Waits until member `i` reports `peer` down.
    pub fn wait_until_peer_down(&self, i: usize, peer: &str) {
        wait_until(
            &format!("{} to see {peer} down", self.members[i].id),
            || !self.peer_up(i, peer),
        );
    }

    /// Whether member `i` reports `peer` up.
    pub fn peer_up(&self, i: usize, peer: &str) -> bool {
        self.status(i)["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["id"] == peer && p["up"] == true))
    }

    /// Member `i`'s admin address.
    pub fn admin(&self, i: usize) -> SocketAddr {
        self.admins[i]
    }

    /// Member `i`'s `/status`.
    pub fn status(&self, i: usize) -> Value {
        status(self.admins[i])
    }

    /// Agent `ext` as member `i`'s `/status` shows it.
    pub fn agent(&self, i: usize, ext: &str) -> Value {
        super::agent(self.admins[i], ext)
    }

    /// Waits until agent `ext` on member `i` is in `state`.
    pub fn wait_state(&self, i: usize, ext: &str, state: &str) {
        wait_until(
            &format!("{ext} to be {state} on {}", self.members[i].id),
            || self.agent(i, ext)["state"] == state,
        );
    }

    /// Member `i`'s metric `name` (with labels, as written).
    pub fn metric(&self, i: usize, name: &str) -> f64 {
        super::metric(self.admins[i], name)
    }

    /// Member `i`'s sessions.
    pub fn sessions(&self, i: usize) -> Vec<Value> {
        self.status(i)["sessions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A registered user agent for `ext` on member `i`; waits until every
    /// other running member's directory could know it (the announcement
    /// is asynchronous; calls work without it, through a Locate).
    pub fn registered(&self, i: usize, ext: &str) -> Ua {
        self.register_ua(i, Ua::new(self.members[i].sip, ext))
    }

    /// [`TestCluster::registered`] with the agent's phone on `ip`.
    pub fn registered_on(&self, i: usize, ext: &str, ip: impl Into<std::net::IpAddr>) -> Ua {
        self.register_ua(i, Ua::new_at(self.members[i].sip, ext, ip))
    }

    fn register_ua(&self, i: usize, mut ua: Ua) -> Ua {
        let ext = ua.ext.clone();
        let ok = ua.register(3600);
        assert_eq!(ok.status(), Some(200), "{ext} registers on blade {i}");
        ua
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for b in &mut self.blades {
            b.stop();
        }
    }
}
