//! Via (RFC 3261 §20.42): `sent-protocol LWS sent-by *( SEMI via-params )`.

use super::super::chars::TOKEN;
use super::super::scan::{Cursor, parse_u32};
use super::super::span::Span;
use super::super::uri::{self, HostKind};
use super::{HeaderParams, is_param, params};

/// The spans of one Via value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViaSpans {
    /// The whole value.
    pub all: Span,
    /// Protocol name (`SIP`).
    pub protocol: Span,
    /// Protocol version (`2.0`).
    pub version: Span,
    /// Transport (`UDP`, `TCP`, … or an extension token).
    pub transport: Span,
    /// The sent-by host (IPv6 with brackets).
    pub host: Span,
    /// The kind of sent-by host.
    pub host_kind: HostKind,
    /// The sent-by port.
    pub port: Option<u16>,
    /// The parameters, from the first `;`.
    pub params: Span,
    /// `branch`.
    pub branch: Option<Span>,
    /// `received` (brackets kept if the sender wrote them).
    pub received: Option<Span>,
    /// `rport`: `Some(None)` when present without a value.
    pub rport: Option<Option<u16>>,
    /// For an `rport` without a value, the offset just past its name:
    /// where a server splices in `=port` (RFC 3581).
    pub rport_end: Option<u32>,
    /// `maddr`.
    pub maddr: Option<Span>,
    /// `ttl`.
    pub ttl: Option<u8>,
}

/// A parsed Via value.
#[derive(Debug, Clone, Copy)]
pub struct Via<'a> {
    src: &'a [u8],
    spans: ViaSpans,
}

impl<'a> Via<'a> {
    pub(crate) fn new(src: &'a [u8], spans: ViaSpans) -> Self {
        Via { src, spans }
    }

    /// The spans, to store without the borrow.
    pub fn spans(&self) -> ViaSpans {
        self.spans
    }

    /// The whole value as written.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.spans.all.of(self.src)
    }

    /// Protocol name and version, e.g. `("SIP", "2.0")`.
    pub fn protocol(&self) -> (&'a str, &'a str) {
        (
            self.spans.protocol.str(self.src),
            self.spans.version.str(self.src),
        )
    }

    /// The transport token as written.
    pub fn transport(&self) -> &'a str {
        self.spans.transport.str(self.src)
    }

    /// The sent-by host (IPv6 with brackets).
    pub fn host(&self) -> &'a str {
        self.spans.host.str(self.src)
    }

    /// The kind of sent-by host.
    pub fn host_kind(&self) -> HostKind {
        self.spans.host_kind
    }

    /// The sent-by host's address when it is written as one.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        uri::host_ip(self.spans.host.of(self.src), self.spans.host_kind)
    }

    /// The sent-by port.
    pub fn port(&self) -> Option<u16> {
        self.spans.port
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.spans.branch.map(|s| s.str(self.src))
    }

    /// The branch as bytes: what transaction keys hold, without the UTF-8
    /// check that [`Via::branch`] makes.
    pub fn branch_bytes(&self) -> Option<&'a [u8]> {
        self.spans.branch.map(|s| s.of(self.src))
    }

    /// Whether the branch starts with the RFC 3261 magic cookie `z9hG4bK`.
    pub fn is_rfc3261_branch(&self) -> bool {
        self.branch_bytes()
            .is_some_and(|b| b.starts_with(b"z9hG4bK"))
    }

    /// The received parameter.
    pub fn received(&self) -> Option<&'a str> {
        self.spans.received.map(|s| s.str(self.src))
    }

    /// The rport parameter: `Some(None)` when present without a value.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.spans.rport
    }

    /// The maddr parameter.
    pub fn maddr(&self) -> Option<&'a str> {
        self.spans.maddr.map(|s| s.str(self.src))
    }

    /// The ttl parameter.
    pub fn ttl(&self) -> Option<u8> {
        self.spans.ttl
    }

    /// All parameters.
    pub fn params(&self) -> HeaderParams<'a> {
        HeaderParams::new(self.src, self.spans.params)
    }
}

/// Parses one via-parm at the cursor; stops before `,` or the end.
pub(crate) fn parse(c: &mut Cursor<'_>) -> Option<ViaSpans> {
    let src = c.src;
    c.lws();
    let start = c.pos;
    let (protocol, version) = if is_sip_2_0(c.rest()) {
        c.pos += 8;
        c.lws(); // SLASH = SWS "/" SWS
        (Span::new(start, start + 3), Span::new(start + 4, start + 7))
    } else {
        let protocol = c.take1(TOKEN)?;
        if !c.sep(b'/') {
            return None;
        }
        let version = c.take1(TOKEN)?;
        if !c.sep(b'/') {
            return None;
        }
        (protocol, version)
    };
    let transport = c.take1(TOKEN)?;
    if !c.lws() {
        return None;
    }
    let (host, host_kind) = uri::host(c)?;
    let port = if c.sep(b':') {
        Some(c.number(65535)? as u16)
    } else {
        None
    };
    let (mut branch, mut received, mut rport, mut maddr, mut ttl) = (None, None, None, None, None);
    let mut rport_end = None;
    let params = params(c, |name, value| {
        if is_param(src, name, b"branch") {
            branch = Some(value?);
        } else if is_param(src, name, b"received") {
            let v = value?;
            let text = v.of(src);
            // RFC 3261 writes a bare address; RFC 5118 §4.5 asks parsers to
            // take a bracketed IPv6 one too (but not a bracketed IPv4 one).
            let ok = if text.starts_with(b"[") {
                uri::ipv6_reference_ok(text)
            } else {
                uri::ipv4_ok(text) || uri::ipv6_ok(text)
            };
            if !ok {
                return None;
            }
            received = Some(v);
        } else if is_param(src, name, b"rport") {
            rport = Some(match value {
                Some(v) => Some(parse_u32(v.of(src), 65535)? as u16),
                None => None,
            });
            rport_end = value.is_none().then_some(name.end);
        } else if is_param(src, name, b"maddr") {
            let v = value?;
            let text = v.of(src);
            // `maddr = host`: a name, an IPv4 address or an IPv6reference.
            if !(uri::host_kind(text).is_some() || uri::ipv6_reference_ok(text)) {
                return None;
            }
            maddr = Some(v);
        } else if is_param(src, name, b"ttl") {
            ttl = Some(parse_u32(value?.of(src), 255)? as u8);
        }
        Some(())
    })?;
    let all = c.span_from(start);
    Some(ViaSpans {
        all,
        protocol,
        version,
        transport,
        host,
        host_kind,
        port,
        params,
        branch,
        received,
        rport,
        rport_end,
        maddr,
        ttl,
    })
}

/// Whether `s` starts with `SIP/2.0/` ("SIP" in any case), as nearly every
/// Via does: one word compare instead of the general `sent-protocol` path.
#[inline]
fn is_sip_2_0(s: &[u8]) -> bool {
    s.first_chunk::<8>()
        .is_some_and(|w| u64::from_le_bytes(*w) | 0x0020_2020 == u64::from_le_bytes(*b"sip/2.0/"))
}

/// Parses a comma-separated Via list, calling `each` per value.
pub(crate) fn parse_list(c: &mut Cursor<'_>, mut each: impl FnMut(ViaSpans)) -> Option<()> {
    loop {
        each(parse(c)?);
        c.lws();
        if c.at_end() {
            return Some(());
        }
        if !c.sep(b',') {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vias(s: &str) -> Option<Vec<ViaSpans>> {
        let mut out = Vec::new();
        let mut c = Cursor::new(s.as_bytes(), Span::new(0, s.len()));
        parse_list(&mut c, |v| out.push(v))?;
        Some(out)
    }

    #[test]
    fn folded_and_spaced() {
        let s = "SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239";
        let v = vias(s).unwrap();
        assert_eq!(v.len(), 2);
        let first = Via::new(s.as_bytes(), v[0]);
        assert_eq!(first.transport(), "TCP");
        assert_eq!(first.host(), "spindle.example.com");
        assert_eq!(first.branch(), Some("z9hG4bK9ikj8"));
        assert_eq!(Via::new(s.as_bytes(), v[1]).branch(), Some("z9hG4bK30239"));
    }

    #[test]
    fn sent_protocol_in_any_case_and_spacing() {
        for (s, protocol, transport) in [
            ("SIP/2.0/UDP h", "SIP", "UDP"),
            ("sip/2.0/tcp h", "sip", "tcp"),
            ("SIP/2.0/ TLS h", "SIP", "TLS"),
            ("SIP/2.0 /WS h", "SIP", "WS"),
            ("SIP/2.00/UDP h", "SIP", "UDP"),
            ("SIPS/2.0/UDP h", "SIPS", "UDP"),
        ] {
            let v = vias(s).unwrap_or_else(|| panic!("{s}"));
            let via = Via::new(s.as_bytes(), v[0]);
            assert_eq!((via.protocol().0, via.transport()), (protocol, transport));
            assert_eq!(via.host(), "h");
        }
        assert_eq!(
            Via::new(b"SIP/2.00/UDP h", vias("SIP/2.00/UDP h").unwrap()[0]).protocol(),
            ("SIP", "2.00")
        );
        assert!(vias("SIP/2.0/ h").is_none());
        assert!(vias("SIP/2.0/").is_none());
        assert!(vias("SIP/2.0/UDP").is_none());
    }

    #[test]
    fn params_and_ipv6() {
        let s = "SIP/2.0/UDP [2001:db8::9:1]:6050;rport;received=[2001:db8::9:255];branch=z9hG4bKas3;ttl=16";
        let v = vias(s).unwrap();
        let via = Via::new(s.as_bytes(), v[0]);
        assert_eq!(via.host(), "[2001:db8::9:1]");
        assert_eq!(via.port(), Some(6050));
        assert_eq!(via.rport(), Some(None));
        assert_eq!(via.received(), Some("[2001:db8::9:255]"));
        assert_eq!(via.ttl(), Some(16));
        assert!(via.is_rfc3261_branch());
        assert!(vias("SIP/2.0/UDP h;received=2001:db8::9:255").is_some());
    }

    #[test]
    fn ipv6_is_checked_in_sent_by_received_and_maddr() {
        for good in [
            "SIP/2.0/UDP [::1]",
            "SIP/2.0/UDP [::ffff:192.0.2.10]:19823",
            "SIP/2.0/UDP [2001:db8:::192.0.2.1]",
            "SIP/2.0/UDP h;received=::1",
            "SIP/2.0/UDP h;received=[::1]",
            "SIP/2.0/UDP h;received=192.0.2.1",
            "SIP/2.0/UDP h;received=::ffff:192.0.2.1",
            "SIP/2.0/UDP h;maddr=[FF02::1]",
            "SIP/2.0/UDP h;maddr=224.0.0.1",
            "SIP/2.0/UDP h;maddr=mcast.example",
        ] {
            assert!(vias(good).is_some(), "{good}");
        }
        for bad in [
            "SIP/2.0/UDP [1::2::3]",
            "SIP/2.0/UDP [1:2:3:4:5:6:7:8:9]:5060",
            "SIP/2.0/UDP [::1.2.3.999]",
            "SIP/2.0/UDP h;received=1::2::3",
            "SIP/2.0/UDP h;received=[12345::1]",
            "SIP/2.0/UDP h;received=[2001:::1]",
            "SIP/2.0/UDP h;received=[192.0.2.1]",
            "SIP/2.0/UDP h;received=[::1",
            "SIP/2.0/UDP h;maddr=[:::]",
            "SIP/2.0/UDP h;maddr=[::1.2.3]",
            "SIP/2.0/UDP h;maddr=[nothing]",
            "SIP/2.0/UDP h;maddr=[",
            "SIP/2.0/UDP h;maddr=::1",
        ] {
            assert!(vias(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn malformed() {
        assert!(vias("SIP/2.0/UDP 192.0.2.15;;,;,,").is_none());
        assert!(vias("SIP/2.0/UDP").is_none());
        assert!(vias("SIP/2.0 host").is_none());
        assert!(vias("SIP/2.0/UDP host;branch").is_none());
        assert!(vias("SIP/2.0/UDP host;ttl=300").is_none());
        assert!(vias("SIP/2.0/UDP host:70000").is_none());
        assert!(vias("SIP/2.0/UDP host,").is_none());
        assert!(vias("SIP/2.0/UDP host;received=nothost").is_none());
    }
}
