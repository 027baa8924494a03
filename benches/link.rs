//! The inter-blade link in memory: CPU of one request/answer exchange over
//! an established QUIC connection (both blades' work: streams, TLS record
//! protection, acks), datagrams carried by the bench, no sockets.
//!
//! Run with `cargo bench --bench link`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput};
use sipblade::cluster::certs::{blade_cert_path, blade_key_path, ca_cert_path, generate_cluster};
use sipblade::cluster::link::{Link, LinkEvent};
use sipblade::cluster::tls::Identity;

struct Pair {
    a: (SocketAddr, Link),
    b: (SocketAddr, Link),
    now: Instant,
}

impl Pair {
    /// Moves datagrams both ways until both links are quiet; returns the
    /// events seen.
    fn pump(&mut self) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        loop {
            let mut moved = false;
            while let Some((_, d)) = self.a.1.poll_transmit() {
                moved = true;
                self.b
                    .1
                    .handle_datagram(self.now, self.a.0, BytesMut::from(&d[..]));
            }
            while let Some((_, d)) = self.b.1.poll_transmit() {
                moved = true;
                self.a
                    .1
                    .handle_datagram(self.now, self.b.0, BytesMut::from(&d[..]));
            }
            events.extend(std::iter::from_fn(|| self.a.1.poll_event()));
            events.extend(std::iter::from_fn(|| self.b.1.poll_event()));
            if !moved {
                return events;
            }
        }
    }
}

fn pair() -> Pair {
    let dir = tempfile::tempdir().expect("temp dir");
    generate_cluster(dir.path(), &["blade-1".into(), "blade-2".into()]).expect("certs");
    let id = |name: &str| {
        Identity::load(
            &ca_cert_path(dir.path()),
            &blade_cert_path(dir.path(), name),
            &blade_key_path(dir.path(), name),
        )
        .expect("identity")
    };
    let (a, b): (SocketAddr, SocketAddr) = (
        "127.0.0.1:7061".parse().unwrap(),
        "127.0.0.2:7062".parse().unwrap(),
    );
    let now = Instant::now();
    let mut p = Pair {
        a: (
            a,
            Link::new("blade-1", id("blade-1"), &[("blade-2".into(), b)], now),
        ),
        b: (
            b,
            Link::new("blade-2", id("blade-2"), &[("blade-1".into(), a)], now),
        ),
        now,
    };
    p.a.1.handle_timeout(now);
    p.pump();
    assert!(p.a.1.is_up("blade-2"), "link up");
    p
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("link");
    group.throughput(Throughput::Elements(1));
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(40);
    let mut p = pair();
    let request = Bytes::from(vec![7u8; 200]);
    let answer = Bytes::from(vec![9u8; 300]);
    group.bench_function("request+answer (both sides)", |bench| {
        bench.iter(|| {
            // Time must move for acks and pacing; 50 µs per exchange.
            p.now += Duration::from_micros(50);
            let now = p.now;
            p.a.1.handle_timeout(now);
            p.b.1.handle_timeout(now);
            p.a.1.request(now, "blade-2", request.clone()).expect("up");
            let events = p.pump();
            let reply = events.iter().find_map(|e| match e {
                LinkEvent::Request { reply, .. } => Some(*reply),
                _ => None,
            });
            p.b.1
                .respond(now, reply.expect("request arrived"), answer.clone());
            black_box(p.pump().len())
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
