//! The demo's SIP ladder: a pure renderer from trace events to text.
//!
//! One column (a lifeline) per party, one line per message in time order:
//! the offset in milliseconds from the first message, then an arrow from
//! the sender's lifeline to the receiver's. SIP is drawn with `─`, the
//! inter-blade link (QUIC) with `═`. Column gaps follow the labels they
//! carry and shrink to keep the ladder within [`MAX_WIDTH`] cells; a label
//! that still does not fit loses its URI scheme, then its port, then is cut
//! with `…`.

use std::net::SocketAddr;
use std::time::Instant;

use crate::runtime::trace::{Sent, TraceEvent};

/// The widest line the ladder draws, in character cells.
pub(crate) const MAX_WIDTH: usize = 100;

/// The time prefix: `{:>6.1}` milliseconds and a space.
const TIME_WIDTH: usize = 7;

/// The narrowest gap between two lifelines.
const MIN_GAP: usize = 12;

/// Cells an arrow needs beside its label: one fill cell on each side and
/// the head.
const DECOR: usize = 3;

/// One party of the ladder.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    /// The heading (`agent 1001`, `blade-1`).
    pub name: String,
    /// The SIP addresses this party sends from and is reached at.
    pub addrs: Vec<SocketAddr>,
    /// The blade id, for a blade (its cluster-link messages and, when an
    /// address is unknown, its SIP sends).
    pub blade: Option<String>,
}

/// The two kinds of arrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Sip,
    Quic,
}

/// One message placed on the ladder.
struct Arrow {
    at: Instant,
    from: usize,
    to: usize,
    link: Link,
    /// The label, most informative first; the renderer takes the first
    /// that fits.
    labels: Vec<String>,
}

/// Draws the ladder of `events` between `columns`: a heading, one line per
/// message whose sender and receiver both map to a column (others are
/// skipped), and a legend. Events are sorted by time here (stable, so
/// events with the same instant keep their order).
pub(crate) fn render(columns: &[Column], mut events: Vec<TraceEvent>) -> String {
    events.sort_by_key(|e| e.at);
    let arrows: Vec<Arrow> = events.iter().filter_map(|e| place(columns, e)).collect();
    let centers = layout(columns, &arrows);
    let mut out = String::new();

    // Heading: each name centred on its lifeline.
    let width = centers
        .last()
        .map_or(0, |c| c + half_right(columns.last()).max(1));
    let mut line = blank(width);
    put(&mut line, TIME_WIDTH.saturating_sub(3), "ms");
    for (col, &center) in columns.iter().zip(&centers) {
        let start = center.saturating_sub(col.name.chars().count() / 2);
        put(&mut line, start, &col.name);
    }
    push_line(&mut out, &line);
    push_line(&mut out, &lifelines(width, &centers));

    let first = arrows.first().map(|a| a.at);
    for arrow in &arrows {
        let mut line = lifelines(width, &centers);
        let ms = first.map_or(0.0, |f| arrow.at.duration_since(f).as_secs_f64() * 1e3);
        put(&mut line, 0, &format!("{ms:>6.1}"));
        draw(&mut line, &centers, arrow);
        push_line(&mut out, &line);
    }
    push_line(&mut out, &lifelines(width, &centers));
    out.push_str("─► SIP over UDP    ═► inter-blade link (QUIC, mutual TLS)\n");
    out
}

/// Maps an event to its sender's and receiver's columns and its labels;
/// `None` when either end is unknown or both are the same column.
fn place(columns: &[Column], event: &TraceEvent) -> Option<Arrow> {
    let by_blade = |id: &str| columns.iter().position(|c| c.blade.as_deref() == Some(id));
    let (from, to, link, labels) = match &event.sent {
        Sent::Sip {
            from,
            to,
            start_line,
            cseq,
        } => {
            let sender = column_of(columns, *from).or_else(|| by_blade(&event.blade))?;
            let receiver = column_of(columns, *to)?;
            (sender, receiver, Link::Sip, sip_labels(start_line, cseq))
        }
        Sent::Cluster { peer, summary } => {
            let sender = by_blade(&event.blade)?;
            let receiver = by_blade(peer)?;
            (sender, receiver, Link::Quic, link_labels(summary))
        }
    };
    (from != to).then_some(Arrow {
        at: event.at,
        from,
        to,
        link,
        labels,
    })
}

/// The column reached at `addr`: an exact match, else the only column
/// with that IP (a party that sends from another port of its address).
fn column_of(columns: &[Column], addr: SocketAddr) -> Option<usize> {
    if let Some(i) = columns.iter().position(|c| c.addrs.contains(&addr)) {
        return Some(i);
    }
    let mut same_ip = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.addrs.iter().any(|a| a.ip() == addr.ip()));
    match (same_ip.next(), same_ip.next()) {
        (Some((i, _)), None) => Some(i),
        _ => None,
    }
}

/// Labels for a SIP start line, most informative first: a response is
/// `200 OK (INVITE)` then `200 OK`; a request is its method and
/// Request-URI without parameters (and, with a user part, without the
/// scheme), then also without the port.
fn sip_labels(start_line: &str, cseq: &str) -> Vec<String> {
    if let Some(rest) = start_line.strip_prefix("SIP/2.0 ") {
        let method = cseq.split_whitespace().nth(1).unwrap_or("");
        let mut labels = Vec::new();
        if !method.is_empty() {
            labels.push(format!("{rest} ({method})"));
        }
        labels.push(rest.to_owned());
        return labels;
    }
    let mut parts = start_line.split_whitespace();
    let method = parts.next().unwrap_or("?");
    let Some(uri) = parts.next() else {
        return vec![method.to_owned()];
    };
    let bare = uri.split([';', '?']).next().unwrap_or(uri);
    let no_scheme = bare
        .strip_prefix("sip:")
        .or_else(|| bare.strip_prefix("sips:"))
        .unwrap_or(bare);
    // Every URI on a SIP ladder is SIP: the scheme only takes room, but
    // a bare domain (a registrar's URI) reads better with it.
    let shown = if no_scheme.contains('@') {
        no_scheme
    } else {
        bare
    };
    let mut labels = vec![format!("{method} {shown}")];
    if let Some((host, port)) = no_scheme.rsplit_once(':') {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            labels.push(format!("{method} {host}"));
        }
    }
    labels
}

/// Labels for a link message's summary, most informative first: as
/// given, then without an address's port, then only its name and agent
/// (`HostGranted 2001`).
fn link_labels(summary: &str) -> Vec<String> {
    let mut labels = vec![summary.to_owned()];
    let words: Vec<&str> = summary.split(' ').collect();
    let portless: Vec<&str> = words
        .iter()
        .map(|w| match w.rsplit_once(':') {
            Some((host, port))
                if host.parse::<std::net::IpAddr>().is_ok()
                    && !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                host
            }
            _ => w,
        })
        .collect();
    let portless = portless.join(" ");
    if portless != summary {
        labels.push(portless);
    }
    if let [name, agent, _, ..] = words.as_slice() {
        if agent.bytes().all(|b| b.is_ascii_alphanumeric()) {
            labels.push(format!("{name} {agent}"));
        }
    }
    labels
}

/// Half a heading's width, rounded up: the cells it needs right of its
/// lifeline.
fn half_right(col: Option<&Column>) -> usize {
    col.map_or(0, |c| c.name.chars().count().div_ceil(2))
}

/// The lifeline positions: each gap as wide as the longest label drawn
/// between those two neighbours wants, then the widest gaps trimmed one
/// cell at a time until the ladder fits [`MAX_WIDTH`].
fn layout(columns: &[Column], arrows: &[Arrow]) -> Vec<usize> {
    if columns.is_empty() {
        return Vec::new();
    }
    let mut gaps = vec![MIN_GAP; columns.len() - 1];
    for (i, gap) in gaps.iter_mut().enumerate() {
        // Two headings side by side need room too.
        let names = half_right(columns.get(i)) + columns[i + 1].name.chars().count() / 2 + 2;
        *gap = (*gap).max(names);
    }
    for arrow in arrows {
        let (lo, hi) = (arrow.from.min(arrow.to), arrow.from.max(arrow.to));
        if hi == lo + 1 {
            let label = arrow.labels.first().map_or(0, |l| l.chars().count());
            // The interior (gap - 1 cells) holds the label and its decor.
            gaps[lo] = gaps[lo].max(label + DECOR + 1);
        }
    }
    // The first heading starts right after the time prefix.
    let first = TIME_WIDTH + columns[0].name.chars().count() / 2;
    let budget = MAX_WIDTH.saturating_sub(first + half_right(columns.last()));
    while gaps.iter().sum::<usize>() > budget {
        let Some(widest) = (0..gaps.len()).max_by_key(|&i| (gaps[i], usize::MAX - i)) else {
            break;
        };
        if gaps[widest] <= MIN_GAP {
            break;
        }
        gaps[widest] -= 1;
    }
    let mut centers = vec![first];
    for gap in gaps {
        let last = centers.last().copied().unwrap_or(first);
        centers.push(last + gap);
    }
    centers
}

/// A line of spaces `width` cells wide.
fn blank(width: usize) -> Vec<char> {
    vec![' '; width]
}

/// A blank line with a `│` on every lifeline.
fn lifelines(width: usize, centers: &[usize]) -> Vec<char> {
    let mut line = blank(width);
    for &c in centers {
        if let Some(cell) = line.get_mut(c) {
            *cell = '│';
        }
    }
    line
}

/// Writes `text` into `line` from cell `start`, growing it if needed.
fn put(line: &mut Vec<char>, start: usize, text: &str) {
    for (i, ch) in text.chars().enumerate() {
        let at = start + i;
        if at >= line.len() {
            line.resize(at + 1, ' ');
        }
        line[at] = ch;
    }
}

/// Draws `arrow` between its lifelines: fill, the label centred, and the
/// head next to the receiver's lifeline.
fn draw(line: &mut [char], centers: &[usize], arrow: &Arrow) {
    let (Some(&a), Some(&b)) = (centers.get(arrow.from), centers.get(arrow.to)) else {
        return;
    };
    let (lo, hi) = (a.min(b), a.max(b));
    let interior = hi - lo - 1;
    if interior < 2 {
        return;
    }
    let fill = match arrow.link {
        Link::Sip => '─',
        Link::Quic => '═',
    };
    let rightwards = b > a;
    let mut cells = vec![fill; interior];
    if rightwards {
        cells[interior - 1] = '►';
    } else {
        cells[0] = '◄';
    }
    let label = fit(&arrow.labels, interior.saturating_sub(DECOR));
    let len = label.chars().count();
    if len > 0 {
        // Centre in the cells between the head and the far fill cell.
        let (from, room) = if rightwards {
            (1, interior - 2)
        } else {
            (2, interior - 2)
        };
        let start = from + room.saturating_sub(len) / 2;
        for (i, ch) in label.chars().enumerate() {
            if let Some(cell) = cells.get_mut(start + i) {
                *cell = ch;
            }
        }
    }
    for (i, ch) in cells.into_iter().enumerate() {
        if let Some(cell) = line.get_mut(lo + 1 + i) {
            *cell = ch;
        }
    }
}

/// The first label that fits in `room` cells, else the last one cut with
/// `…`.
fn fit(labels: &[String], room: usize) -> String {
    if let Some(label) = labels.iter().find(|l| l.chars().count() <= room) {
        return label.clone();
    }
    let Some(last) = labels.last() else {
        return String::new();
    };
    if room == 0 {
        return String::new();
    }
    let mut cut: String = last.chars().take(room - 1).collect();
    cut.push('…');
    cut
}

/// Appends `line` without trailing spaces.
fn push_line(out: &mut String, line: &[char]) {
    let text: String = line.iter().collect();
    out.push_str(text.trim_end());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn columns() -> Vec<Column> {
        let col = |name: &str, a: &str, blade: Option<&str>| Column {
            name: name.into(),
            addrs: vec![addr(a)],
            blade: blade.map(Into::into),
        };
        vec![
            col("agent 1001", "127.0.0.61:4000", None),
            col("blade-1", "127.0.0.51:5060", Some("blade-1")),
            col("blade-2", "127.0.0.52:5060", Some("blade-2")),
            col("agent 2001", "127.0.0.62:4000", None),
        ]
    }

    fn sip(t0: Instant, ms: u64, who: &str, from: &str, to: &str, line: &str) -> TraceEvent {
        let method = line
            .split_whitespace()
            .next()
            .filter(|m| *m != "SIP/2.0")
            .unwrap_or("INVITE");
        TraceEvent {
            at: t0 + Duration::from_millis(ms),
            blade: Arc::from(who),
            sent: Sent::Sip {
                from: addr(from),
                to: addr(to),
                start_line: line.into(),
                cseq: format!("1 {method}"),
            },
        }
    }

    fn quic(t0: Instant, ms: u64, blade: &str, peer: &str, summary: &str) -> TraceEvent {
        TraceEvent {
            at: t0 + Duration::from_millis(ms),
            blade: Arc::from(blade),
            sent: Sent::Cluster {
                peer: peer.into(),
                summary: summary.into(),
            },
        }
    }

    /// The ladder lines that carry an arrow, without the heading and legend.
    fn rows(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| l.contains('►') || l.contains('◄'))
            .filter(|l| !l.starts_with("─►"))
            .collect()
    }

    /// The cell index of the first occurrence of `pat` in `line`.
    fn cell(line: &str, pat: char) -> usize {
        line.chars().position(|c| c == pat).unwrap()
    }

    #[test]
    fn arrows_point_from_sender_to_receiver_in_time_order() {
        let t0 = Instant::now();
        // Given out of order: the renderer sorts by time.
        let events = vec![
            sip(
                t0,
                5,
                "blade-2",
                "127.0.0.52:5060",
                "127.0.0.51:5060",
                "SIP/2.0 180 Ringing",
            ),
            sip(
                t0,
                0,
                "agent 1001",
                "127.0.0.61:4000",
                "127.0.0.51:5060",
                "INVITE sip:2001@cc.example SIP/2.0",
            ),
            quic(t0, 1, "blade-1", "blade-2", "HostRequest 2001"),
            quic(t0, 2, "blade-2", "blade-1", "HostGranted 2001 lease 30s"),
        ];
        let text = render(&columns(), events);
        let rows = rows(&text);
        assert_eq!(rows.len(), 4, "{text}");
        assert!(rows[0].contains("INVITE 2001@cc.example"), "{text}");
        assert!(rows[0].contains('►') && !rows[0].contains('◄'), "{text}");
        assert!(rows[1].contains("HostRequest 2001") && rows[1].contains('═'));
        assert!(rows[1].contains('►'), "{text}");
        assert!(rows[2].contains("HostGranted 2001 lease 30s") && rows[2].contains('◄'));
        assert!(rows[3].contains("180 Ringing") && rows[3].contains('◄'));
        assert!(rows[3].trim_start().starts_with("5.0"), "{text}");
        assert!(rows[0].trim_start().starts_with("0.0"), "{text}");
        // The INVITE's head sits just left of blade-1's lifeline, the
        // 180's just right of it.
        let heading = text.lines().next().unwrap();
        let blade1 = cell(heading, 'b') + "blade-1".len() / 2;
        assert_eq!(cell(rows[0], '►'), blade1 - 1, "{text}");
        assert_eq!(cell(rows[3], '◄'), blade1 + 1, "{text}");
    }

    #[test]
    fn headings_are_drawn_and_the_width_is_bounded() {
        let t0 = Instant::now();
        let long = format!("INVITE sip:2001@{}.example;x=y SIP/2.0", "a".repeat(200));
        let events = vec![
            sip(
                t0,
                0,
                "agent 1001",
                "127.0.0.61:4000",
                "127.0.0.51:5060",
                &long,
            ),
            sip(
                t0,
                1,
                "blade-1",
                "127.0.0.51:5060",
                "127.0.0.61:4000",
                "SIP/2.0 407 Proxy Authentication Required",
            ),
        ];
        let text = render(&columns(), events);
        for name in ["agent 1001", "blade-1", "blade-2", "agent 2001"] {
            assert!(text.lines().next().unwrap().contains(name), "{text}");
        }
        for line in text.lines() {
            assert!(line.chars().count() <= MAX_WIDTH, "too wide: {line}");
        }
        assert!(text.contains('…'), "a long label is cut: {text}");
    }

    #[test]
    fn unknown_addresses_are_skipped_and_same_ip_is_matched() {
        let t0 = Instant::now();
        let events = vec![
            sip(
                t0,
                0,
                "blade-1",
                "127.0.0.51:5060",
                "10.0.0.1:5060",
                "OPTIONS sip:x SIP/2.0",
            ),
            // Another port of agent 2001's address still maps to it.
            sip(
                t0,
                1,
                "blade-2",
                "127.0.0.52:5060",
                "127.0.0.62:4999",
                "BYE sip:2001@127.0.0.62:4000 SIP/2.0",
            ),
        ];
        let text = render(&columns(), events);
        let rows = rows(&text);
        assert_eq!(rows.len(), 1, "{text}");
        assert!(rows[0].contains("BYE"), "{text}");
        let heading = text.lines().next().unwrap();
        let agent2 = heading.chars().count() - "agent 2001".len() / 2;
        assert_eq!(cell(rows[0], '►'), agent2 - 1, "{text}");
    }

    #[test]
    fn labels_shorten_step_by_step() {
        assert_eq!(
            sip_labels("INVITE sip:2001@127.0.0.62:4000;ob SIP/2.0", "2 INVITE"),
            ["INVITE 2001@127.0.0.62:4000", "INVITE 2001@127.0.0.62"]
        );
        assert_eq!(
            sip_labels("REGISTER sip:cc.example SIP/2.0", "1 REGISTER"),
            ["REGISTER sip:cc.example"]
        );
        assert_eq!(
            sip_labels("SIP/2.0 200 OK", "3 BYE"),
            ["200 OK (BYE)", "200 OK"]
        );
        assert_eq!(
            link_labels("HostGranted 2001 at 127.0.0.62:5062"),
            [
                "HostGranted 2001 at 127.0.0.62:5062",
                "HostGranted 2001 at 127.0.0.62",
                "HostGranted 2001"
            ]
        );
        assert_eq!(
            link_labels("HostRequest 2001 (lease 30 s)"),
            ["HostRequest 2001 (lease 30 s)", "HostRequest 2001"]
        );
        assert_eq!(link_labels("Resync (0 agents)"), ["Resync (0 agents)"]);
        assert_eq!(link_labels("Unhost 2001"), ["Unhost 2001"]);
        assert_eq!(fit(&["abcdef".into()], 4), "abc…");
        assert_eq!(fit(&["abcdef".into(), "ab".into()], 4), "ab");
    }
}
