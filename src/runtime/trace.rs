//! An optional tap on what a blade sends: every SIP message and every
//! cluster-link message, with the time. `sipblade demo` draws its ladder
//! from it; a blade started without a tracer pays one branch per send.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Where a blade reports what it sends.
pub type Tracer = flume::Sender<TraceEvent>;

/// One message a blade sent.
#[derive(Debug, Clone)]
pub struct TraceEvent {
    /// When it was handed to the socket or the link.
    pub at: Instant,
    /// The sending blade's id.
    pub blade: Arc<str>,
    /// What was sent.
    pub sent: Sent,
}

/// What a blade sent.
#[derive(Debug, Clone)]
pub enum Sent {
    /// A SIP message (datagram or stream frame).
    Sip {
        /// The blade's SIP address.
        from: SocketAddr,
        /// Where it went.
        to: SocketAddr,
        /// The start line (`INVITE sip:…`, `SIP/2.0 200 OK`).
        start_line: String,
        /// The CSeq header value (`1 INVITE`).
        cseq: String,
    },
    /// A message on the inter-blade link.
    Cluster {
        /// The peer blade it went to.
        peer: String,
        /// The message's name and its salient fields
        /// (`HostRequest 2001`, `HostGranted 2001 lease 30s`).
        summary: String,
    },
}
