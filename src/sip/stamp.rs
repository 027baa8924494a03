//! What a server adds to a request's top Via on receipt (RFC 3261 §18.2.1,
//! RFC 3581 §4): `received` with the source IP when the sent-by names
//! another host or the sender asked for `rport`, and the `rport` value, the
//! source port. The request keeps its bytes; the stamp is spliced in where
//! the request's top Via is emitted again (the request forwarded, or a
//! response built from it), so the sender learns the address it was seen
//! at, and responses find their way back through NAT.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use bytes::{BufMut, BytesMut};

use super::header::via::Via;
use super::message::Message;

/// The additions to one request's top Via, by offset in its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ViaStamp {
    /// Just after a valueless `rport`: where `=port` goes.
    rport_end: Option<u32>,
    /// The source port.
    port: u16,
    /// The end of the top Via value: where `;received=ip` goes.
    via_end: u32,
    /// The source IP, when `received` is to be added.
    received: Option<IpAddr>,
}

impl ViaStamp {
    /// What `msg`, a request received from `source`, needs; `None` when
    /// its top Via needs nothing.
    pub(crate) fn of(msg: &Message, source: SocketAddr) -> Option<ViaStamp> {
        ViaStamp::of_via(msg.top_via(), source)
    }

    /// What a request's top Via `via`, received from `source`, needs.
    pub(crate) fn of_via(via: Via<'_>, source: SocketAddr) -> Option<ViaStamp> {
        let spans = via.spans();
        let rport = via.rport();
        let seen_elsewhere = via.ip() != Some(source.ip());
        let received = (via.received().is_none() && (rport.is_some() || seen_elsewhere))
            .then_some(source.ip());
        (spans.rport_end.is_some() || received.is_some()).then_some(ViaStamp {
            rport_end: spans.rport_end,
            port: source.port(),
            via_end: spans.all.end,
            received,
        })
    }

    /// Emits `src[from..to]` (a stretch of the message holding the top
    /// Via value) with the stamp spliced in.
    pub(crate) fn emit(&self, src: &[u8], from: usize, to: usize, out: &mut BytesMut) {
        let mut at = from;
        if let Some(end) = self.rport_end {
            let end = end as usize;
            out.put_slice(&src[at..end]);
            // Written in place: no allocation per request.
            let _ = write!(out, "={}", self.port);
            at = end;
        }
        if let Some(ip) = self.received {
            let end = self.via_end as usize;
            out.put_slice(&src[at..end]);
            let _ = write!(out, ";received={ip}");
            at = end;
        }
        out.put_slice(&src[at..to]);
    }

    /// The end of the top Via value, the last offset the stamp touches.
    pub(crate) fn via_end(&self) -> usize {
        self.via_end as usize
    }
}
