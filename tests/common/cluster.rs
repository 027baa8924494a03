//! Several blades in this process, each on its own loopback address
//! (127.0.0.x), linked by real QUIC with certificates from a real cluster
//! CA: SIP on port 5060 and QUIC on 7060 of each address, admin on a port
//! the OS picks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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

/// A cluster of blades, stopped when dropped.
pub struct TestCluster {
    /// The members, in order.
    pub members: Vec<Member>,
    blades: Vec<Option<Blade>>,
    admins: Vec<SocketAddr>,
    /// Where configs and certificates live.
    pub dir: tempfile::TempDir,
    lease_secs: u32,
    cores: usize,
}

impl TestCluster {
    /// `n` blades on 127.0.0.`first_ip`, `first_ip + 1`, …, one core each,
    /// auth off, 30 s leases; waits until every link is up.
    pub fn start(n: usize, first_ip: u8) -> TestCluster {
        TestCluster::start_with(n, first_ip, 30, 1)
    }

    /// [`TestCluster::start`] with a lease and a core count.
    pub fn start_with(n: usize, first_ip: u8, lease_secs: u32, cores: usize) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let members: Vec<Member> = (0..n)
            .map(|i| {
                let ip = format!("127.0.0.{}", usize::from(first_ip) + i);
                Member {
                    id: format!("blade-{}", i + 1),
                    sip: format!("{ip}:{SIP_PORT}").parse().expect("an address"),
                    quic: format!("{ip}:{QUIC_PORT}").parse().expect("an address"),
                }
            })
            .collect();
        let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
        generate_cluster(&dir.path().join("certs"), &ids).expect("certificates");
        std::fs::write(dir.path().join("agents.toml"), agents_toml()).expect("agents file");
        let mut cluster = TestCluster {
            members,
            blades: (0..n).map(|_| None).collect(),
            admins: vec!["127.0.0.1:0".parse().expect("an address"); n],
            dir,
            lease_secs,
            cores,
        };
        for i in 0..n {
            cluster.start_blade(i);
        }
        cluster.wait_linked();
        cluster
    }

    /// The config file of member `i`, with certificates from `certs`.
    pub fn config_text(&self, i: usize, certs: &Path) -> String {
        let m = &self.members[i];
        let mut text = format!(
            "[blade]\nid = \"{id}\"\ndomain = \"{domain}\"\nsip = \"{sip}\"\ncores = {cores}\n\
             admin = \"{ip}:0\"\n\n[cluster]\nlisten = \"{quic}\"\nca = \"{ca}\"\ncert = \"{cert}\"\n\
             key = \"{key}\"\nlease_secs = {lease}\n\n",
            id = m.id,
            domain = super::DOMAIN,
            sip = m.sip,
            cores = self.cores,
            ip = m.sip.ip(),
            quic = m.quic,
            ca = certs.join("ca.pem").display(),
            cert = certs.join(format!("{}.pem", m.id)).display(),
            key = certs.join(format!("{}.key", m.id)).display(),
            lease = self.lease_secs,
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
            "[agents]\nfile = \"{}\"\nauth = false\n",
            self.dir.path().join("agents.toml").display()
        );
        text
    }

    /// Writes member `i`'s config file and returns its path.
    pub fn write_config(&self, i: usize) -> PathBuf {
        let path = self.dir.path().join(format!("{}.toml", self.members[i].id));
        let text = self.config_text(i, &self.dir.path().join("certs"));
        std::fs::write(&path, text).expect("config file");
        path
    }

    /// Starts (or restarts) member `i` in this process.
    pub fn start_blade(&mut self, i: usize) {
        let path = self.write_config(i);
        let config = Config::load(&path).expect("valid config");
        let blade = Blade::start_with(config, Options::default()).expect("the blade starts");
        self.admins[i] = blade.admin_addr().expect("an admin port");
        self.blades[i] = Some(blade);
    }

    /// Stops member `i` (gracefully).
    pub fn stop_blade(&mut self, i: usize) {
        if let Some(b) = self.blades[i].take() {
            b.stop();
        }
    }

    /// Waits until every running member sees every other running one up.
    pub fn wait_linked(&self) {
        let running: Vec<usize> = (0..self.blades.len())
            .filter(|&i| self.blades[i].is_some())
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
        let mut ua = Ua::new(self.members[i].sip, ext);
        let ok = ua.register(3600);
        assert_eq!(ok.status(), Some(200), "{ext} registers on blade {i}");
        ua
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for b in self.blades.iter_mut().filter_map(Option::take) {
            b.stop();
        }
    }
}
