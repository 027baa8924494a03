//! Routing decisions that need no state: which core owns a message, where
//! a URI points, whether a URI names this blade.

use std::net::SocketAddr;

use crate::sip::{Message, Method, Scheme, Transport, Uri};
use crate::transaction::Peer;

/// The URI parameter sipblade puts in its Record-Route to name the core
/// that owns the dialog, so in-dialog requests reach it in one hop.
pub const CORE_PARAM: &str = "sbc";

/// The prefix of the branches sipblade generates: the magic cookie, then
/// `sb`, the owning core, and `x`.
pub const BRANCH_PREFIX: &str = "z9hG4bKsb";

/// Appends the start of a Via of ours, up to the part of its branch that
/// tells one request from another: `SIP/2.0/<transport> <sent-by>;branch=`
/// then [`BRANCH_PREFIX`], the core and `x`. Returns where the branch
/// starts. Written piece by piece: `write!` cost about a thousand
/// instructions per Via, on every request forwarded.
pub(super) fn push_via_head(
    out: &mut String,
    transport: crate::sip::Transport,
    sent_by: &str,
    core: usize,
) -> usize {
    out.push_str("SIP/2.0/");
    out.push_str(transport.as_str());
    out.push(' ');
    out.push_str(sent_by);
    out.push_str(";branch=");
    let branch_at = out.len();
    out.push_str(BRANCH_PREFIX);
    push_decimal(out, core as u64);
    out.push('x');
    branch_at
}

/// Appends `n` in decimal.
pub(super) fn push_decimal(out: &mut String, n: u64) {
    let digits = crate::sip::edit::Decimal::new(n);
    out.extend(digits.as_bytes().iter().map(|&d| char::from(d)));
}

/// Appends `n` as 16 lowercase hex digits.
pub(super) fn push_hex16(out: &mut String, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend(
        (0..16)
            .rev()
            .map(|i| char::from(HEX[(n >> (i * 4)) as usize & 0xf])),
    );
}

/// FNV-1a's 32-bit offset basis and prime, shared with the kernel-side
/// copy of [`shard_of`] (`runtime::steer`).
pub const SHARD_HASH_BASIS: u32 = 0x811c_9dc5;
/// See [`SHARD_HASH_BASIS`].
pub const SHARD_HASH_PRIME: u32 = 0x0100_0193;

/// A stable hash of an extension, for placing agents on cores. FNV-1a:
/// tiny, the same on every core and every blade, and 32-bit so that a
/// classic BPF program (32-bit registers) can compute it in the kernel.
pub fn shard_of(extension: &[u8], cores: usize) -> usize {
    let mut h = SHARD_HASH_BASIS;
    for &b in extension {
        h ^= u32::from(b);
        h = h.wrapping_mul(SHARD_HASH_PRIME);
    }
    let cores = u32::try_from(cores.max(1)).unwrap_or(u32::MAX);
    (h % cores) as usize
}

/// The loop-detection hash of a request (RFC 3261 §16.6 step 8): what a
/// looping request keeps and a spiralling one changes — Request-URI,
/// Call-ID, From tag, To tag, CSeq number, and the Route set, which is
/// what changes when an in-dialog request passes a blade twice (a join
/// leg to a hosted agent: T, S, T). FNV-1a, stable across cores.
pub fn loop_hash(msg: &Message) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes.iter().chain(b"\0") {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(msg.request_uri().map(|u| u.as_bytes()).unwrap_or_default());
    feed(msg.call_id_bytes());
    feed(msg.from().tag().unwrap_or_default().as_bytes());
    feed(msg.to().tag().unwrap_or_default().as_bytes());
    feed(&msg.cseq().seq.to_be_bytes());
    for route in msg.header_values(crate::sip::HeaderName::Route) {
        feed(route);
    }
    h
}

/// The loop hash a branch sipblade generated carries after its `.`.
pub fn loop_hash_of_branch(branch: &str) -> Option<u64> {
    let rest = branch.strip_prefix(BRANCH_PREFIX)?;
    let (_, hash) = rest.rsplit_once('.')?;
    u64::from_str_radix(hash, 16).ok()
}

/// The core a branch sipblade generated names.
pub fn core_of_branch(branch: &str) -> Option<usize> {
    let rest = branch.strip_prefix(BRANCH_PREFIX)?;
    let end = rest.find('x')?;
    rest[..end].parse().ok()
}

/// Which core should handle `msg` (SPEC §8: an agent's record and the calls
/// to it live on the core its extension hashes to):
/// - a response: the core named in its top Via branch;
/// - a request with a Route naming a core (our Record-Route): that core;
/// - REGISTER: the core of the To user;
/// - an in-dialog request whose Request-URI has no user (a terminal's own
///   Contact, `sip:IP:PORT`): the core of the To user, the agent it goes
///   to;
/// - any other request: the core of the Request-URI user.
///
/// `None` means any core may handle it (e.g. OPTIONS to the blade).
pub fn owner_core(msg: &Message, cores: usize) -> Option<usize> {
    if cores <= 1 {
        return Some(0);
    }
    if !msg.is_request() {
        return msg
            .top_via()
            .branch()
            .and_then(core_of_branch)
            .filter(|&c| c < cores);
    }
    if let Some(route) = msg.routes().next() {
        if let Some(Some(core)) = route.uri().param(CORE_PARAM) {
            return std::str::from_utf8(core)
                .ok()
                .and_then(|c| c.parse().ok())
                .filter(|&c| c < cores);
        }
    }
    let user = if msg.method() == Some(Method::Register) {
        msg.to().uri().user_unescaped()
    } else {
        // Only in a dialog (a To tag) does a user-less Request-URI lead to
        // the To's agent; out of one it is the blade itself.
        match msg.request_uri() {
            Some(uri) if uri.user().is_some() => uri.user_unescaped(),
            _ => msg.to().tag().and(msg.to().uri().user_unescaped()),
        }
    };
    user.map(|u| shard_of(&u, cores))
}

/// The address and transport a SIP URI points to, when its host is an IP
/// literal (sipblade does not resolve names on the message path).
pub fn uri_peer(uri: &Uri<'_>) -> Option<Peer> {
    if !matches!(uri.scheme(), Scheme::Sip | Scheme::Sips) {
        return None;
    }
    let ip = uri.ip()?;
    let transport = uri
        .param("transport")
        .flatten()
        .and_then(Transport::parse)
        .unwrap_or(Transport::Udp);
    Some(Peer::new(
        SocketAddr::new(ip, uri.port().unwrap_or(5060)),
        transport,
    ))
}

/// Where the response to a request goes (RFC 3261 §18.2.2 with RFC 3581):
/// the address the request came from, for UDP and TCP alike, which is what
/// `received` and `rport` would say.
pub fn response_peer(source: Peer) -> Peer {
    source
}

/// The address a response travels back to after the top Via is removed:
/// the next Via's `received`/`rport` if present, else its sent-by.
pub fn via_peer(msg: &Message) -> Option<Peer> {
    let via = msg.vias().nth(1)?;
    let transport = Transport::parse(via.transport().as_bytes()).unwrap_or(Transport::Udp);
    let ip = match via.received() {
        Some(r) => r
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?,
        None => via.ip()?,
    };
    let port = match via.rport() {
        Some(Some(p)) => p,
        _ => via.port().unwrap_or(5060),
    };
    Some(Peer::new(SocketAddr::new(ip, port), transport))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of(b"1001", 1), 0);
        let counts = (1000..1100).fold([0usize; 4], |mut acc, n| {
            acc[shard_of(n.to_string().as_bytes(), 4)] += 1;
            acc
        });
        assert!(counts.iter().all(|&c| c > 10), "{counts:?}");
        assert_eq!(shard_of(b"2001", 8), shard_of(b"2001", 8));
    }

    #[test]
    fn the_loop_hash_tells_a_spiral_through_a_route_set_from_a_loop() {
        let bye = |routes: &str| {
            let raw = format!(
                "BYE sip:1002@10.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n{routes}\
                 From: <sip:1004@d>;tag=1\r\nTo: <sip:1002@d>;tag=2\r\nCall-ID: c\r\n\
                 CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
            );
            loop_hash(&Message::parse(Bytes::from(raw)).unwrap())
        };
        let first_pass = bye("Route: <sip:t;lr>, <sip:s;lr>, <sip:t;lr;x>\r\n");
        assert_eq!(
            first_pass,
            bye("Route: <sip:t;lr>, <sip:s;lr>, <sip:t;lr;x>\r\n")
        );
        assert_ne!(first_pass, bye("Route: <sip:t;lr;x>\r\n"));
        assert_ne!(bye(""), bye("Route: <sip:t;lr;x>\r\n"));
    }

    #[test]
    fn branch_core() {
        assert_eq!(core_of_branch("z9hG4bKsb3x17"), Some(3));
        assert_eq!(core_of_branch("z9hG4bKother"), None);
    }

    #[test]
    fn owners() {
        let req = |extra: &str, uri: &str, method: &str| {
            let raw = format!(
                "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n{extra}From: <sip:1001@d>;tag=1\r\n\
                 To: <sip:1002@d>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
            );
            Message::parse(Bytes::from(raw)).unwrap()
        };
        let invite = req("", "sip:1002@d", "INVITE");
        assert_eq!(owner_core(&invite, 4), Some(shard_of(b"1002", 4)));
        let escaped = req("", "sip:%31002@d", "INVITE");
        assert_eq!(owner_core(&escaped, 4), Some(shard_of(b"1002", 4)));
        let bye = req(
            "Route: <sip:127.0.0.1;lr;sbc=2>\r\n",
            "sip:1002@10.0.0.2",
            "BYE",
        );
        assert_eq!(owner_core(&bye, 4), Some(2));
        let options = req("", "sip:127.0.0.1", "OPTIONS");
        assert_eq!(owner_core(&options, 4), None);
        // In a dialog, a Request-URI without a user (the callee's own
        // Contact) leaves the To's agent to name the core.
        let unrouted = |uri: &str| {
            let raw = format!(
                "BYE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK2\r\nFrom: <sip:1001@d>;tag=1\r\n\
                 To: <sip:1003@d>;tag=2\r\nCall-ID: c\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
            );
            owner_core(&Message::parse(Bytes::from(raw)).unwrap(), 4)
        };
        assert_eq!(unrouted("sip:10.0.0.3:5062"), Some(shard_of(b"1003", 4)));
        assert_eq!(unrouted("sip:1002@10.0.0.3"), Some(shard_of(b"1002", 4)));
        let reg = req("", "sip:d", "REGISTER");
        assert_eq!(owner_core(&reg, 4), Some(shard_of(b"1002", 4)));
    }
}
