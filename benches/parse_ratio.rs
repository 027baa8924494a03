//! The parse ratios of `benches/parse.rs`, measured so that a noisy,
//! shared machine disturbs them less: the parsers take turns in short
//! batches (a few hundred microseconds each), many rounds, and each one's
//! figure is its fastest batch (the least disturbed) and its median batch.
//! Criterion times each parser in its own few seconds, so a neighbour's
//! burst lands on one parser and not the other; here every burst is
//! shared out.
//!
//! Run with `cargo bench --bench parse_ratio`; BENCHMARKS.md records results.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use sipblade::sip::Message;

const INVITE: &[u8] = include_bytes!("data/invite.sip");
const REGISTER: &[u8] = include_bytes!("data/register.sip");
const OK200: &[u8] = include_bytes!("data/ok200.sip");
const HTTP_REQUEST: &[u8] = include_bytes!("data/http-request.txt");

/// Parses per batch, and batches per parser.
const BATCH: u32 = 200;
const ROUNDS: usize = 2000;

/// One parser on one input, as `benches/parse.rs` runs it.
struct Entry {
    name: &'static str,
    bytes: usize,
    run: Box<dyn FnMut()>,
    batches: Vec<f64>,
}

impl Entry {
    fn new(name: &'static str, bytes: usize, run: impl FnMut() + 'static) -> Entry {
        Entry {
            name,
            bytes,
            run: Box::new(run),
            batches: Vec::with_capacity(ROUNDS),
        }
    }

    /// Nanoseconds per parse: (fastest batch, median batch).
    fn ns(&mut self) -> (f64, f64) {
        self.batches.sort_by(f64::total_cmp);
        (self.batches[0], self.batches[self.batches.len() / 2])
    }
}

fn sipblade(data: &'static [u8]) -> impl FnMut() {
    let raw = Bytes::from_static(data);
    move || {
        let msg = Message::parse(black_box(raw.clone())).expect("parses");
        let branch = msg.top_via().branch().map_or(0, str::len);
        black_box(branch + msg.cseq().seq as usize + msg.header_count());
    }
}

fn rsip(data: &'static [u8]) -> impl FnMut() {
    let raw = Bytes::from_static(data);
    move || {
        black_box(rsip::SipMessage::try_from(black_box(raw.clone())).expect("rsip parses"));
    }
}

fn httparse(data: &'static [u8]) -> impl FnMut() {
    move || {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let status = req.parse(black_box(data)).expect("httparse parses");
        black_box((status.is_complete(), req.headers.len()));
    }
}

fn group(name: &str, mut entries: Vec<Entry>) {
    for _ in 0..ROUNDS {
        for e in &mut entries {
            let start = Instant::now();
            for _ in 0..BATCH {
                (e.run)();
            }
            e.batches
                .push(start.elapsed().as_nanos() as f64 / f64::from(BATCH));
        }
    }
    let figures: Vec<(&str, usize, f64, f64)> = entries
        .iter_mut()
        .map(|e| {
            let (fast, median) = e.ns();
            (e.name, e.bytes, fast, median)
        })
        .collect();
    for (entry, bytes, fast, median) in &figures {
        println!("{name:9} {entry:26} {bytes:4} B  fastest {fast:7.1} ns  median {median:7.1} ns");
    }
    let (_, sb_bytes, sb_fast, sb_median) = figures[0];
    for (entry, bytes, fast, median) in &figures[1..] {
        if entry.starts_with("rsip") {
            println!(
                "{name:9} {:26} fastest {:.2}x  median {:.2}x",
                "rsip time / sipblade time",
                fast / sb_fast,
                median / sb_median
            );
        } else {
            // Per byte: how many times slower than httparse sipblade is.
            let per_byte = |ns: f64, b: usize| ns / b as f64;
            println!(
                "{name:9} {:26} fastest {:.2}x  median {:.2}x",
                "sipblade / httparse per B",
                per_byte(sb_fast, sb_bytes) / per_byte(*fast, *bytes),
                per_byte(sb_median, sb_bytes) / per_byte(*median, *bytes)
            );
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; this runner takes no arguments.
    group(
        "invite",
        vec![
            Entry::new("sipblade/parse", INVITE.len(), sipblade(INVITE)),
            Entry::new("rsip/parse", INVITE.len(), rsip(INVITE)),
            Entry::new(
                "httparse/parse (HTTP)",
                HTTP_REQUEST.len(),
                httparse(HTTP_REQUEST),
            ),
        ],
    );
    group(
        "register",
        vec![
            Entry::new("sipblade/parse", REGISTER.len(), sipblade(REGISTER)),
            Entry::new("rsip/parse", REGISTER.len(), rsip(REGISTER)),
        ],
    );
    group(
        "ok200",
        vec![
            Entry::new("sipblade/parse", OK200.len(), sipblade(OK200)),
            Entry::new("rsip/parse", OK200.len(), rsip(OK200)),
        ],
    );
}
