//! Transports a SIP message travels over.

use std::fmt;
use std::net::SocketAddr;

/// The transport of a SIP hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// Datagrams: RFC 3261 timers retransmit.
    #[default]
    Udp,
    /// A stream: framed by Content-Length, reliable.
    Tcp,
}

impl Transport {
    /// The token used in Via and `transport=` (upper case).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    /// Parses a Via or URI transport token (any case); `None` if unknown.
    pub fn parse(token: &[u8]) -> Option<Transport> {
        if token.eq_ignore_ascii_case(b"udp") {
            Some(Transport::Udp)
        } else if token.eq_ignore_ascii_case(b"tcp") {
            Some(Transport::Tcp)
        } else {
            None
        }
    }

    /// Whether the transport is reliable (no retransmission timers).
    pub fn is_reliable(self) -> bool {
        self == Transport::Tcp
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stream connection, named by the core that owns it and a number that
/// core gave it. Responses to a request that came over a stream go back on
/// the same connection (RFC 3261 §18.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    /// The core whose executor owns the connection.
    pub core: u16,
    /// The connection's number on that core.
    pub id: u32,
}

/// Where a message goes: an address, a transport, and for streams the
/// connection to use if one exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The remote address.
    pub addr: SocketAddr,
    /// The transport.
    pub transport: Transport,
    /// The stream connection to reuse; `None` opens (or finds) one by
    /// address. Always `None` for UDP.
    pub conn: Option<ConnId>,
}

impl Peer {
    /// A peer reached by address alone.
    pub fn new(addr: SocketAddr, transport: Transport) -> Self {
        Peer {
            addr,
            transport,
            conn: None,
        }
    }

    /// A UDP peer.
    pub fn udp(addr: SocketAddr) -> Self {
        Peer::new(addr, Transport::Udp)
    }
}
