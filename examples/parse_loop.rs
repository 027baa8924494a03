//! Parses one message file many times: a steady workload for profilers
//! (`valgrind --tool=callgrind`, `perf record`).
//!
//! ```sh
//! cargo build --release --example parse_loop
//! valgrind --tool=callgrind target/release/examples/parse_loop benches/data/invite.sip 10000
//! ```

use std::hint::black_box;

use bytes::Bytes;
use sipblade::sip::Message;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), count) = (args.next(), args.next()) else {
        eprintln!("usage: parse_loop FILE [COUNT]");
        std::process::exit(2);
    };
    let count: usize = count.and_then(|c| c.parse().ok()).unwrap_or(100_000);
    let data = match std::fs::read(&path) {
        Ok(d) => Bytes::from(d),
        Err(e) => {
            eprintln!("parse_loop: {path}: {e}");
            std::process::exit(2);
        }
    };
    let mut ok = 0usize;
    for _ in 0..count {
        if let Ok(msg) = Message::parse(black_box(data.clone())) {
            ok += black_box(msg.header_count());
        }
    }
    println!("{ok}");
}
