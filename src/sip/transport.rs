//! Transports a SIP message travels over.

use std::fmt;

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
