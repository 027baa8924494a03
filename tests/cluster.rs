//! Blades on distinct loopback addresses linked by real QUIC with real
//! certificates: peers come up in `/status`, and a process with a
//! certificate from another CA is never admitted.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;

use sipblade::cluster::certs::generate_cluster;
use sipblade::config::Config;
use sipblade::runtime::Blade;

use common::{agents_toml, status, wait_until};

/// A free UDP port on `ip` (bound and released; the blade binds it next).
fn free_port(ip: &str) -> SocketAddr {
    UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap()
}

/// Starts blade `id` on `ip` with QUIC on `quic`, certificates from
/// `certs`, and `peers` as `(id, quic, sip)`.
fn start(
    dir: &Path,
    certs: &Path,
    id: &str,
    ip: &str,
    quic: SocketAddr,
    peers: &[(&str, SocketAddr)],
) -> Blade {
    let mut text = format!(
        "[blade]\nid = \"{id}\"\ndomain = \"cc.example\"\nsip = \"{ip}:0\"\ncores = 1\nadmin = \"{ip}:0\"\n\n\
         [cluster]\nlisten = \"{quic}\"\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nlease_secs = 30\n\n",
        ca = certs.join("ca.pem").display(),
        cert = certs.join(format!("{id}.pem")).display(),
        key = certs.join(format!("{id}.key")).display(),
    );
    for (peer, addr) in peers {
        text += &format!(
            "[[cluster.peer]]\nid = \"{peer}\"\nquic = \"{addr}\"\nsip = \"{}:5060\"\n\n",
            addr.ip()
        );
    }
    text += "[agents]\nfile = \"agents.toml\"\nauth = false\n";
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(dir.join("agents.toml"), agents_toml()).unwrap();
    std::fs::write(&path, text).unwrap();
    Blade::start(Config::load(&path).unwrap()).unwrap()
}

fn peer_up(blade: &Blade, peer: &str) -> bool {
    let doc = status(blade.admin_addr().unwrap());
    doc["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == peer && p["up"] == true)
}

#[test]
fn two_blades_link_up_and_a_restart_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    generate_cluster(dir.path(), &["blade-1".into(), "blade-2".into()]).unwrap();
    let (q1, q2) = (free_port("127.0.0.41"), free_port("127.0.0.42"));
    let b1 = start(
        dir.path(),
        dir.path(),
        "blade-1",
        "127.0.0.41",
        q1,
        &[("blade-2", q2)],
    );
    let b2 = start(
        dir.path(),
        dir.path(),
        "blade-2",
        "127.0.0.42",
        q2,
        &[("blade-1", q1)],
    );
    wait_until("blade-1 sees blade-2 up", || peer_up(&b1, "blade-2"));
    wait_until("blade-2 sees blade-1 up", || peer_up(&b2, "blade-1"));

    b2.stop();
    wait_until("blade-1 sees blade-2 down", || !peer_up(&b1, "blade-2"));
    let b2 = start(
        dir.path(),
        dir.path(),
        "blade-2",
        "127.0.0.42",
        q2,
        &[("blade-1", q1)],
    );
    wait_until("blade-1 reconnects to blade-2", || peer_up(&b1, "blade-2"));
    wait_until("blade-2 sees blade-1 up again", || peer_up(&b2, "blade-1"));
    b1.stop();
    b2.stop();
}

#[test]
fn a_blade_with_a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    let rogue = dir.path().join("rogue");
    generate_cluster(&cluster, &["blade-1".into(), "blade-2".into()]).unwrap();
    // Same ids, another CA: it claims to be blade-1.
    generate_cluster(&rogue, &["blade-1".into()]).unwrap();
    let (q1, q2) = (free_port("127.0.0.43"), free_port("127.0.0.44"));
    let b2 = start(
        dir.path(),
        &cluster,
        "blade-2",
        "127.0.0.44",
        q2,
        &[("blade-1", q1)],
    );
    let impostor = start(
        dir.path(),
        &rogue,
        "blade-1",
        "127.0.0.43",
        q1,
        &[("blade-2", q2)],
    );
    // blade-1 dials (its id sorts first); give it several attempts.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        !peer_up(&b2, "blade-1"),
        "{}",
        status(b2.admin_addr().unwrap())
    );
    assert!(!peer_up(&impostor, "blade-2"));
    impostor.stop();
    b2.stop();
}
