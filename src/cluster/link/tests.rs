//! Two (or three) blades' links against each other in memory: real QUIC
//! and real TLS from quinn-proto and rustls, with datagrams carried by the
//! test and time that advances only when the test says so.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{Link, LinkEvent};
use crate::cluster::certs::{blade_cert_path, blade_key_path, ca_cert_path, generate_cluster};
use crate::cluster::tls::Identity;

struct Node {
    addr: SocketAddr,
    link: Link,
    events: Vec<LinkEvent>,
    /// Datagrams this node has sent.
    sent: usize,
}

fn identity(dir: &std::path::Path, id: &str) -> Identity {
    Identity::load(
        &ca_cert_path(dir),
        &blade_cert_path(dir, id),
        &blade_key_path(dir, id),
    )
    .unwrap()
}

fn node(dir: &std::path::Path, id: &str, addr: &str, peers: &[(&str, &str)], now: Instant) -> Node {
    let peers: Vec<(String, SocketAddr)> = peers
        .iter()
        .map(|(i, a)| (i.to_string(), a.parse().unwrap()))
        .collect();
    Node {
        addr: addr.parse().unwrap(),
        link: Link::new(id, identity(dir, id), &peers, now),
        events: Vec::new(),
        sent: 0,
    }
}

/// Carries datagrams between the nodes and runs their timers until nothing
/// moves or `limit` of virtual time has passed.
fn run(nodes: &mut [Node], now: &mut Instant, limit: Duration) {
    let end = *now + limit;
    loop {
        let mut moved = false;
        for i in 0..nodes.len() {
            while let Some((to, data)) = nodes[i].link.poll_transmit() {
                moved = true;
                nodes[i].sent += 1;
                let from = nodes[i].addr;
                if let Some(dest) = nodes.iter_mut().find(|n| n.addr == to) {
                    dest.link
                        .handle_datagram(*now, from, BytesMut::from(&data[..]));
                }
            }
            while let Some(e) = nodes[i].link.poll_event() {
                nodes[i].events.push(e);
            }
        }
        if moved {
            continue;
        }
        let next = nodes.iter_mut().filter_map(|n| n.link.poll_timeout()).min();
        match next {
            Some(t) if t <= end => {
                *now = (*now).max(t);
                for n in nodes.iter_mut() {
                    n.link.handle_timeout(*now);
                }
            }
            _ => return,
        }
    }
}

/// blade-1 and blade-2, peers of each other, with certificates from a
/// fresh cluster CA (kept in the returned directory).
fn two_blades(now: Instant) -> (tempfile::TempDir, Vec<Node>) {
    let dir = tempfile::tempdir().unwrap();
    generate_cluster(dir.path(), &["blade-1".into(), "blade-2".into()]).unwrap();
    let nodes = vec![
        node(
            dir.path(),
            "blade-1",
            "127.0.0.1:7061",
            &[("blade-2", "127.0.0.2:7062")],
            now,
        ),
        node(
            dir.path(),
            "blade-2",
            "127.0.0.2:7062",
            &[("blade-1", "127.0.0.1:7061")],
            now,
        ),
    ];
    (dir, nodes)
}

#[test]
fn peers_connect_and_exchange_requests() {
    let mut now = Instant::now();
    let (_dir, mut nodes) = two_blades(now);
    run(&mut nodes, &mut now, Duration::from_millis(500));
    assert!(
        nodes[0]
            .events
            .contains(&LinkEvent::PeerUp("blade-2".into())),
        "{:?}",
        nodes[0].events
    );
    assert!(
        nodes[1]
            .events
            .contains(&LinkEvent::PeerUp("blade-1".into())),
        "{:?}",
        nodes[1].events
    );
    assert!(nodes[0].link.is_up("blade-2") && nodes[1].link.is_up("blade-1"));

    let exchange = nodes[0]
        .link
        .request(now, "blade-2", Bytes::from_static(b"host 2001?"))
        .unwrap();
    run(&mut nodes, &mut now, Duration::from_millis(100));
    let reply = match nodes[1].events.pop() {
        Some(LinkEvent::Request { peer, reply, frame }) => {
            assert_eq!((peer.as_str(), &frame[..]), ("blade-1", &b"host 2001?"[..]));
            reply
        }
        other => panic!("expected a request, got {other:?}"),
    };
    nodes[1]
        .link
        .respond(now, reply, Bytes::from_static(b"granted"));
    assert!(
        nodes[1]
            .link
            .send(now, "blade-1", Bytes::from_static(b"announce"))
    );
    run(&mut nodes, &mut now, Duration::from_millis(100));
    assert!(nodes[0].events.contains(&LinkEvent::Response {
        peer: "blade-2".into(),
        exchange,
        frame: Bytes::from_static(b"granted")
    }));
    assert!(nodes[0].events.contains(&LinkEvent::Message {
        peer: "blade-2".into(),
        frame: Bytes::from_static(b"announce")
    }));
}

/// Back-to-back exchanges, as hosting at 1,000 calls/s makes them: each
/// side acknowledges every tenth ack-eliciting packet it gets (the ACK
/// frequency it asks its peer for), not every second one, so few
/// datagrams carry only an acknowledgement.
#[test]
fn back_to_back_exchanges_draw_few_acknowledgements() {
    let mut now = Instant::now();
    let (_dir, mut nodes) = two_blades(now);
    run(&mut nodes, &mut now, Duration::from_millis(500));
    assert!(nodes[0].link.is_up("blade-2"));
    let before = nodes[0].sent + nodes[1].sent;
    const EXCHANGES: usize = 40;
    for _ in 0..EXCHANGES {
        nodes[0]
            .link
            .request(now, "blade-2", Bytes::from_static(b"host"))
            .unwrap();
        run(&mut nodes, &mut now, Duration::ZERO);
        let reply = nodes[1]
            .events
            .drain(..)
            .find_map(|e| match e {
                LinkEvent::Request { reply, .. } => Some(reply),
                _ => None,
            })
            .expect("the request arrived");
        nodes[1]
            .link
            .respond(now, reply, Bytes::from_static(b"granted"));
        run(&mut nodes, &mut now, Duration::ZERO);
        now += Duration::from_millis(1);
        // The end of an earlier call: a one-way unhost.
        assert!(
            nodes[0]
                .link
                .send(now, "blade-2", Bytes::from_static(b"unhost"))
        );
        run(&mut nodes, &mut now, Duration::ZERO);
        now += Duration::from_millis(1);
    }
    run(&mut nodes, &mut now, Duration::from_millis(100));
    let datagrams = nodes[0].sent + nodes[1].sent - before;
    // A request, a response and an unhost each, and an acknowledgement
    // now and then (every second packet would be about EXCHANGES more).
    assert!(
        datagrams <= 3 * EXCHANGES + EXCHANGES / 4,
        "{datagrams} datagrams for {EXCHANGES} exchanges"
    );
}

#[test]
fn a_lost_peer_goes_down_fails_its_exchanges_and_is_redialled() {
    let mut now = Instant::now();
    let (dir, mut nodes) = two_blades(now);
    run(&mut nodes, &mut now, Duration::from_millis(500));
    let exchange = nodes[0]
        .link
        .request(now, "blade-2", Bytes::from_static(b"ping"))
        .unwrap();
    // blade-2 vanishes (SIGKILL): nothing it would send arrives any more.
    let gone = nodes.pop().unwrap();
    run(&mut nodes, &mut now, Duration::from_secs(15));
    let events = &nodes[0].events;
    assert!(
        events.contains(&LinkEvent::PeerDown("blade-2".into())),
        "{events:?}"
    );
    assert!(events.contains(&LinkEvent::Failed {
        peer: "blade-2".into(),
        exchange
    }));
    assert!(!nodes[0].link.is_up("blade-2"));
    // It comes back (a restart: a fresh link); blade-1 redials it.
    drop(gone);
    nodes.push(node(
        dir.path(),
        "blade-2",
        "127.0.0.2:7062",
        &[("blade-1", "127.0.0.1:7061")],
        now,
    ));
    run(&mut nodes, &mut now, Duration::from_secs(6));
    assert!(nodes[0].link.is_up("blade-2"), "{:?}", nodes[0].events);
}

#[test]
fn strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    generate_cluster(
        dir.path(),
        &["blade-1".into(), "blade-2".into(), "blade-1b".into()],
    )
    .unwrap();
    let other = tempfile::tempdir().unwrap();
    generate_cluster(other.path(), &["blade-0".into()]).unwrap();
    let mut now = Instant::now();
    // blade-1b has a cluster certificate but blade-2 does not list it; its
    // id sorts first, so it is the one that dials.
    let mut nodes = vec![
        node(
            dir.path(),
            "blade-2",
            "127.0.0.2:7062",
            &[("blade-1", "127.0.0.1:7061")],
            now,
        ),
        node(
            dir.path(),
            "blade-1b",
            "127.0.0.3:7063",
            &[("blade-2", "127.0.0.2:7062")],
            now,
        ),
    ];
    // blade-0 claims to be a peer of blade-2 but its certificate is from
    // another CA.
    let rogue_peers = vec![("blade-2".to_string(), "127.0.0.2:7062".parse().unwrap())];
    nodes.push(Node {
        addr: "127.0.0.9:7069".parse().unwrap(),
        link: Link::new(
            "blade-0",
            identity(other.path(), "blade-0"),
            &rogue_peers,
            now,
        ),
        events: Vec::new(),
        sent: 0,
    });
    // Long enough for blade-0's abandoned handshakes to time out at blade-2.
    run(&mut nodes, &mut now, Duration::from_secs(15));
    assert!(
        !nodes[0]
            .events
            .iter()
            .any(|e| matches!(e, LinkEvent::PeerUp(_))),
        "{:?}",
        nodes[0].events
    );
    assert!(
        nodes[0]
            .events
            .iter()
            .any(|e| matches!(e, LinkEvent::Refused { claimed: Some(c), .. } if c == "blade-1b")),
        "{:?}",
        nodes[0].events
    );
    // blade-0 gave up on blade-2's certificate, and told blade-2 why: its
    // close is sent, not dropped with the failed connection.
    let rogue = nodes[2].addr;
    assert!(
        nodes[0].events.iter().any(|e| matches!(
            e,
            LinkEvent::Refused { addr, claimed: None, reason }
                if *addr == rogue && reason.contains("invalid peer certificate")
        )),
        "{:?}",
        nodes[0].events
    );
    // Every refused connection drained and was freed, on both sides of
    // it: at most the one each stranger has in flight is left (before,
    // the endpoints kept every refused connection's state for ever).
    let refused = nodes[0]
        .events
        .iter()
        .filter(|e| matches!(e, LinkEvent::Refused { .. }))
        .count();
    assert!(refused > 4, "{refused}");
    for node in &nodes {
        assert!(
            node.link.endpoint.open_connections() <= 2,
            "{}: {} connections open",
            node.addr,
            node.link.endpoint.open_connections()
        );
        assert!(node.link.conns.len() <= 2, "{}", node.addr);
    }
    assert!(!nodes[1].link.is_up("blade-2") && !nodes[2].link.is_up("blade-2"));
    assert!(
        nodes[1]
            .link
            .request(now, "blade-2", Bytes::from_static(b"x"))
            .is_none()
    );
}

#[test]
fn a_peer_that_refuses_us_after_the_handshake_is_redialled_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    generate_cluster(dir.path(), &["blade-1".into(), "blade-2".into()]).unwrap();
    let mut now = Instant::now();
    // blade-1 lists blade-2 and dials it (its id sorts first); blade-2
    // does not list blade-1, so it closes each connection once the
    // handshake has shown who called. Each one is briefly up at blade-1.
    let mut nodes = vec![
        node(
            dir.path(),
            "blade-1",
            "127.0.0.1:7061",
            &[("blade-2", "127.0.0.2:7062")],
            now,
        ),
        node(dir.path(), "blade-2", "127.0.0.2:7062", &[], now),
    ];
    run(&mut nodes, &mut now, Duration::from_secs(30));
    let refusals = nodes[1]
        .events
        .iter()
        .filter(|e| matches!(e, LinkEvent::Refused { .. }))
        .count();
    // Backing off 0.1 s, 0.2 s, ... up to 5 s: about 11 dials in 30 s,
    // not one every 100 ms.
    assert!(
        (2..=15).contains(&refusals),
        "{refusals} refused connections in 30 s"
    );
    assert!(!nodes[0].link.is_up("blade-2"));
}

#[test]
fn a_link_that_lasted_is_redialled_at_once_when_lost() {
    let mut now = Instant::now();
    let (dir, mut nodes) = two_blades(now);
    // blade-2 starts late: blade-1's redial delay grows to its longest.
    let late = nodes.pop().unwrap();
    run(&mut nodes, &mut now, Duration::from_secs(12));
    drop(late);
    let restart = |now: Instant| {
        node(
            dir.path(),
            "blade-2",
            "127.0.0.2:7062",
            &[("blade-1", "127.0.0.1:7061")],
            now,
        )
    };
    nodes.push(restart(now));
    run(&mut nodes, &mut now, Duration::from_secs(20));
    assert!(nodes[0].link.is_up("blade-2"));
    // blade-2 vanishes: once blade-1 notices, it redials from the
    // shortest delay, as the link had lasted.
    nodes.pop();
    run(&mut nodes, &mut now, Duration::from_secs(15));
    assert!(!nodes[0].link.is_up("blade-2"));
    let backoff = nodes[0].link.peers[0].backoff;
    assert!(backoff <= 4 * super::BACKOFF_MIN, "{backoff:?}");
    nodes.push(restart(now));
    run(&mut nodes, &mut now, Duration::from_secs(6));
    assert!(nodes[0].link.is_up("blade-2"), "{:?}", nodes[0].events);
}

#[test]
fn a_tls_failure_or_a_refusal_reads_as_misconfigured_and_a_timeout_does_not() {
    use quinn_proto::{ApplicationClose, ConnectionClose};
    use quinn_proto::{ConnectionError, TransportError, TransportErrorCode, VarInt};
    let bad_certificate = TransportErrorCode::crypto(42);
    assert!(super::misconfigured(&ConnectionError::TransportError(
        TransportError {
            code: bad_certificate,
            frame: None,
            reason: "invalid peer certificate".into(),
        }
    )));
    assert!(super::misconfigured(&ConnectionError::ConnectionClosed(
        ConnectionClose {
            error_code: bad_certificate,
            frame_type: None,
            reason: Bytes::new(),
        }
    )));
    assert!(super::misconfigured(&ConnectionError::ApplicationClosed(
        ApplicationClose {
            error_code: VarInt::from_u32(super::CLOSE_NOT_A_PEER),
            reason: Bytes::from_static(b"not a cluster peer"),
        }
    )));
    // A peer that went away or stopped: the link comes back by itself.
    assert!(!super::misconfigured(&ConnectionError::TimedOut));
    assert!(!super::misconfigured(&ConnectionError::Reset));
    assert!(!super::misconfigured(&ConnectionError::ApplicationClosed(
        ApplicationClose {
            error_code: VarInt::from_u32(0),
            reason: Bytes::from_static(b"blade stopping"),
        }
    )));
}

#[test]
fn a_restarted_peer_resets_the_old_connection_and_is_redialled_at_once() {
    let mut now = Instant::now();
    let (dir, mut nodes) = two_blades(now);
    run(&mut nodes, &mut now, Duration::from_secs(1));
    assert!(nodes[0].link.is_up("blade-2"));
    // blade-2 restarts at once (SIGKILL, then a fresh process): its new
    // endpoint answers blade-1's next keep-alive on the old connection
    // with a stateless reset that blade-1 trusts, well before the idle
    // timeout would have told it.
    nodes.pop();
    nodes.push(node(
        dir.path(),
        "blade-2",
        "127.0.0.2:7062",
        &[("blade-1", "127.0.0.1:7061")],
        now,
    ));
    let restarted = now;
    run(&mut nodes, &mut now, Duration::from_secs(4));
    assert!(
        nodes[0]
            .events
            .contains(&LinkEvent::PeerDown("blade-2".into())),
        "{:?}",
        nodes[0].events
    );
    assert!(nodes[0].link.is_up("blade-2") && nodes[1].link.is_up("blade-1"));
    assert!(now - restarted < crate::cluster::tls::IDLE_TIMEOUT);
}

/// Each side opens each connection with its hello frame, one-way, and
/// nothing comes before it: the first event after `PeerUp` is that
/// message. A restarted peer's new run sends its own on the new
/// connection; the side that stayed sends the same frame again. A peer
/// without one (an older build) still links.
#[test]
fn each_connection_opens_with_the_hello_frame() {
    let mut now = Instant::now();
    let (dir, nodes) = two_blades(now);
    let hello = |n: &str| Bytes::from(format!("hello from {n}"));
    let mut nodes: Vec<Node> = nodes
        .into_iter()
        .zip(["blade-1 run 1", "blade-2 run 1"])
        .map(|(mut node, run)| {
            node.link = node.link.with_hello(hello(run));
            node
        })
        .collect();
    run(&mut nodes, &mut now, Duration::from_millis(500));
    // What each side heard from `peer` after its latest PeerUp.
    let after_up = |events: &[LinkEvent], peer: &str| -> Vec<LinkEvent> {
        let up = events
            .iter()
            .rposition(|e| *e == LinkEvent::PeerUp(peer.into()))
            .expect("the peer came up");
        events[up + 1..].to_vec()
    };
    let message = |peer: &str, run: &str| LinkEvent::Message {
        peer: peer.into(),
        frame: hello(run),
    };
    assert_eq!(
        after_up(&nodes[0].events, "blade-2"),
        [message("blade-2", "blade-2 run 1")]
    );
    assert_eq!(
        after_up(&nodes[1].events, "blade-1"),
        [message("blade-1", "blade-1 run 1")]
    );

    // blade-2 restarts as a new run, which has a hello of its own.
    nodes.pop();
    let mut fresh = node(
        dir.path(),
        "blade-2",
        "127.0.0.2:7062",
        &[("blade-1", "127.0.0.1:7061")],
        now,
    );
    fresh.link = fresh.link.with_hello(hello("blade-2 run 2"));
    nodes.push(fresh);
    run(&mut nodes, &mut now, Duration::from_secs(4));
    assert!(nodes[0].link.is_up("blade-2"), "{:?}", nodes[0].events);
    assert_eq!(
        after_up(&nodes[0].events, "blade-2"),
        [message("blade-2", "blade-2 run 2")]
    );
    assert_eq!(
        after_up(&nodes[1].events, "blade-1"),
        [message("blade-1", "blade-1 run 1")]
    );

    // A third blade-2 that sends none (an older build) still links, and
    // is still sent blade-1's.
    nodes.pop();
    nodes.push(node(
        dir.path(),
        "blade-2",
        "127.0.0.2:7062",
        &[("blade-1", "127.0.0.1:7061")],
        now,
    ));
    run(&mut nodes, &mut now, Duration::from_secs(4));
    assert!(nodes[0].link.is_up("blade-2") && nodes[1].link.is_up("blade-1"));
    assert_eq!(after_up(&nodes[0].events, "blade-2"), []);
    assert_eq!(
        after_up(&nodes[1].events, "blade-1"),
        [message("blade-1", "blade-1 run 1")]
    );
}

/// A peer that stops (SIGTERM: `close_all`) says so as it closes: the
/// other side reports it stopped, not merely down, so that the grants
/// its run held can end at once (its sessions are gone with it), where a
/// link that only dropped must end nothing.
#[test]
fn a_stopping_peer_is_told_from_a_lost_one() {
    let mut now = Instant::now();
    let (_dir, mut nodes) = two_blades(now);
    run(&mut nodes, &mut now, Duration::from_millis(500));
    assert!(nodes[0].link.is_up("blade-2"));
    nodes[1].link.close_all(now);
    run(&mut nodes, &mut now, Duration::from_millis(100));
    let events = &nodes[0].events;
    assert!(
        events.contains(&LinkEvent::PeerStopped("blade-2".into())),
        "{events:?}"
    );
    assert!(
        !events.contains(&LinkEvent::PeerDown("blade-2".into())),
        "{events:?}"
    );
}
