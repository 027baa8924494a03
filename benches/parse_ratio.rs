//! The parse ratios of `benches/parse.rs`, measured so that a noisy,
//! shared machine disturbs them less: the parsers take turns in short
//! batches (a few hundred microseconds each), many rounds, and each one's
//! figure is its fastest batch (the least disturbed) and its median batch.
//! Criterion times each parser in its own few seconds, so a neighbour's
//! burst lands on one parser and not the other; here every burst is
//! shared out.
//!
//! A last group prices one header line of each kind the parser reads: the
//! 200 OK with five more lines of that kind, less the 200 OK, over five
//! (and the same for httparse with five more HTTP header lines).
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

/// Runs the entries in turn, batch by batch, for [`ROUNDS`] rounds.
fn run_batches(entries: &mut [Entry]) {
    for _ in 0..ROUNDS {
        for e in entries.iter_mut() {
            let start = Instant::now();
            for _ in 0..BATCH {
                (e.run)();
            }
            e.batches
                .push(start.elapsed().as_nanos() as f64 / f64::from(BATCH));
        }
    }
}

fn group(name: &str, mut entries: Vec<Entry>) {
    run_batches(&mut entries);
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

/// `message` with `count` copies of `line` inserted after its first two
/// lines (the start line and, in these inputs, a Via).
fn with_lines(message: &[u8], line: &str, count: usize) -> &'static [u8] {
    let split = message
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w == b"\r\n")
        .nth(1)
        .map(|(i, _)| i + 2)
        .expect("two lines");
    let mut out = message[..split].to_vec();
    for _ in 0..count {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&message[split..]);
    out.leak()
}

/// What one more header line of each kind costs, in alternating batches.
fn per_line() {
    const EXTRA: usize = 5;
    let kinds = [
        (
            "unparsed (Subject)",
            "Subject: \"Alice\" <sip:1001@cc.example.com>;tag=19283",
        ),
        (
            "Via, branch",
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds",
        ),
        (
            "Via, branch+rport+received",
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport=5060;received=192.0.2.10",
        ),
        ("Contact", "Contact: <sip:1002@198.51.100.20:5060>"),
        ("Record-Route", "Record-Route: <sip:198.51.100.20:5060;lr>"),
    ];
    let mut entries = vec![Entry::new("sipblade: 200 OK", OK200.len(), sipblade(OK200))];
    for (name, line) in kinds {
        let data = with_lines(OK200, line, EXTRA);
        entries.push(Entry::new(name, data.len(), sipblade(data)));
    }
    let http = with_lines(
        HTTP_REQUEST,
        "Accept-Language: en-GB,en;q=0.9,fr;q=0.8",
        EXTRA,
    );
    entries.push(Entry::new(
        "httparse: HTTP request",
        HTTP_REQUEST.len(),
        httparse(HTTP_REQUEST),
    ));
    entries.push(Entry::new(
        "httparse: + Accept-Language",
        http.len(),
        httparse(http),
    ));
    run_batches(&mut entries);
    let fastest: Vec<f64> = entries.iter_mut().map(|e| e.ns().0).collect();
    for (i, e) in entries.iter().enumerate() {
        let base = match i {
            0 => continue,
            n if n + 1 == entries.len() => fastest[n - 1],
            n if n + 2 == entries.len() => continue,
            _ => fastest[0],
        };
        let per = (fastest[i] - base) / EXTRA as f64;
        println!(
            "per line  {:26} fastest batches: {per:5.1} ns per line",
            e.name
        );
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
    per_line();
}
