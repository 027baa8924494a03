//! Client transactions (RFC 3261 §17.1, RFC 6026 §7.2).

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::{Backoff, Peer, TimerConfig, Transmit, earliest};
use crate::sip::Message;

/// Client transaction states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE sent, no response yet.
    Calling,
    /// Non-INVITE sent, no response yet.
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// INVITE got a 2xx: further 2xx pass through (RFC 6026).
    Accepted,
    /// A final response arrived (non-2xx for INVITE); absorbing
    /// retransmissions.
    Completed,
    /// Done; the transaction can be dropped.
    Terminated,
}

/// What a response or timer means for the transaction user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEvent {
    /// Pass the response up (first provisional, final, or a 2xx
    /// retransmission in Accepted).
    Pass,
    /// A retransmission the transaction absorbed.
    Absorbed,
    /// No final response in time (timer B or F): the TU answers 408.
    Timeout,
}

/// One client transaction.
#[derive(Debug, Clone)]
pub struct ClientTx {
    invite: bool,
    state: ClientState,
    /// The request as sent: retransmitted, and parsed again in the rare
    /// case that an ACK or a CANCEL is built from it. Dropped once a final
    /// response arrives, so the transactions that linger to absorb
    /// retransmissions stay small.
    data: Bytes,
    peer: Peer,
    timers: TimerConfig,
    /// Timer A (INVITE) or E (non-INVITE).
    retransmit: Option<Backoff>,
    /// Timer B or F.
    timeout: Option<Duration>,
    /// Timer D, K or M: when Completed/Accepted ends.
    linger: Option<Duration>,
    /// The ACK for a non-2xx final response, kept to answer retransmissions.
    ack: Option<Bytes>,
}

impl ClientTx {
    /// Starts a transaction for the request encoded as `data` (an INVITE
    /// when `invite`) to `peer`; returns it and the first transmission.
    ///
    /// The request is not parsed here: the sender built it, and most
    /// transactions end with a 2xx (or a non-INVITE's final answer) without
    /// reading it again.
    pub fn start(
        now: Duration,
        invite: bool,
        data: Bytes,
        peer: Peer,
        timers: TimerConfig,
    ) -> (Self, Transmit) {
        let unreliable = !peer.transport.is_reliable();
        let tx = ClientTx {
            invite,
            state: if invite {
                ClientState::Calling
            } else {
                ClientState::Trying
            },
            data: data.clone(),
            peer,
            timers,
            retransmit: unreliable.then(|| Backoff::start(now, timers.t1)),
            timeout: Some(now + timers.timeout()),
            linger: None,
            ack: None,
        };
        (tx, Transmit { to: peer, data })
    }

    /// The state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// The request this transaction sent, parsed again, until a final
    /// response arrives.
    pub fn request(&self) -> Option<Message> {
        if self.data.is_empty() {
            return None;
        }
        Message::parse(self.data.clone()).ok()
    }

    /// Where the request went.
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// The next deadline, if any.
    pub fn deadline(&self) -> Option<Duration> {
        earliest(&[self.retransmit.map(|b| b.at), self.timeout, self.linger])
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    /// Handles a response matched to this transaction.
    pub fn on_response(
        &mut self,
        now: Duration,
        response: &Message,
        out: &mut Vec<Transmit>,
    ) -> ClientEvent {
        let status = response.status().unwrap_or(0);
        let reliable = self.peer.transport.is_reliable();
        match (self.state, status) {
            (ClientState::Calling | ClientState::Trying | ClientState::Proceeding, 100..=199) => {
                if self.state == ClientState::Calling {
                    // RFC 3261 §17.1.1.2: a provisional stops INVITE retransmission.
                    self.retransmit = None;
                }
                if self.state == ClientState::Trying {
                    // §17.1.2.2: keep retransmitting at T2 while Proceeding.
                    if let Some(b) = self.retransmit.as_mut() {
                        b.interval = self.timers.t2;
                    }
                }
                if self.invite {
                    // Timer B covers only Calling; the TU's own timer C
                    // bounds ringing.
                    self.timeout = None;
                }
                self.state = ClientState::Proceeding;
                ClientEvent::Pass
            }
            (ClientState::Calling | ClientState::Proceeding, 200..=299) if self.invite => {
                self.state = ClientState::Accepted;
                self.drop_request();
                self.retransmit = None;
                self.timeout = None;
                self.linger = Some(now + self.timers.timeout());
                ClientEvent::Pass
            }
            (ClientState::Accepted, 200..=299) => ClientEvent::Pass,
            (ClientState::Calling | ClientState::Proceeding, 300..=699) if self.invite => {
                let mut ack = BytesMut::new();
                if let Some(request) = self.request() {
                    request.ack_for(response, &mut ack);
                }
                self.drop_request();
                let ack = ack.freeze();
                out.push(Transmit {
                    to: self.peer,
                    data: ack.clone(),
                });
                self.ack = Some(ack);
                self.state = ClientState::Completed;
                self.retransmit = None;
                self.timeout = None;
                self.linger = Some(
                    now + if reliable {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(32)
                    },
                );
                ClientEvent::Pass
            }
            (ClientState::Completed, 300..=699) if self.invite => {
                if let Some(ack) = &self.ack {
                    out.push(Transmit {
                        to: self.peer,
                        data: ack.clone(),
                    });
                }
                ClientEvent::Absorbed
            }
            (ClientState::Trying | ClientState::Proceeding, 200..=699) => {
                self.state = ClientState::Completed;
                self.drop_request();
                self.retransmit = None;
                self.timeout = None;
                self.linger = Some(
                    now + if reliable {
                        Duration::ZERO
                    } else {
                        self.timers.t4
                    },
                );
                ClientEvent::Pass
            }
            _ => ClientEvent::Absorbed,
        }
    }

    /// Runs the timers due at `now`; `Some(Timeout)` when B or F fired.
    pub fn on_timeout(&mut self, now: Duration, out: &mut Vec<Transmit>) -> Option<ClientEvent> {
        if self.linger.is_some_and(|at| at <= now) {
            self.terminate();
            return None;
        }
        if self.timeout.is_some_and(|at| at <= now) {
            self.terminate();
            return Some(ClientEvent::Timeout);
        }
        if let Some(b) = self.retransmit.as_mut().filter(|b| b.at <= now) {
            out.push(Transmit {
                to: self.peer,
                data: self.data.clone(),
            });
            // Timer A doubles without a cap; E doubles up to T2, and stays
            // at T2 once a provisional arrived.
            let cap = if self.invite {
                None
            } else {
                Some(self.timers.t2)
            };
            if self.state == ClientState::Proceeding {
                b.at = now + self.timers.t2;
            } else {
                b.double(now, cap);
            }
        }
        None
    }

    /// The transaction user gives up on a final response (an INVITE still
    /// without one 64×T1 after its CANCEL, RFC 3261 §9.1): the transaction
    /// ends, so that nothing keeps it for ever.
    pub fn abandon(&mut self) {
        self.terminate();
    }

    /// Past the final response nothing is retransmitted or built from the
    /// request: lingering transactions keep only what absorbs retransmitted
    /// responses.
    fn drop_request(&mut self) {
        self.data = Bytes::new();
    }

    /// Whether the request is still held (tests).
    #[cfg(test)]
    pub(crate) fn holds_request(&self) -> bool {
        !self.data.is_empty()
    }

    fn terminate(&mut self) {
        self.state = ClientState::Terminated;
        self.drop_request();
        self.retransmit = None;
        self.timeout = None;
        self.linger = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Transport;

    fn invite() -> Message {
        let raw = "INVITE sip:1002@127.0.0.2:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKc1\r\n\
                   Max-Forwards: 69\r\nFrom: <sip:1001@cc.example>;tag=a\r\nTo: <sip:1002@cc.example>\r\n\
                   Call-ID: x1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n";
        Message::parse(Bytes::from(raw)).unwrap()
    }

    fn response(status: u16) -> Message {
        let raw = format!(
            "SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKc1\r\nFrom: <sip:1001@cc.example>;tag=a\r\n\
             To: <sip:1002@cc.example>;tag=b\r\nCall-ID: x1\r\nCSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(raw)).unwrap()
    }

    fn udp() -> Peer {
        Peer::udp("127.0.0.2:5062".parse().unwrap())
    }

    fn start(now: Duration) -> ClientTx {
        let data = invite().buffer().clone();
        ClientTx::start(now, true, data, udp(), TimerConfig::default()).0
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn timer_a_doubles_until_b() {
        let mut tx = start(Duration::ZERO);
        let mut out = Vec::new();
        let mut sent_at = Vec::new();
        let mut now = Duration::ZERO;
        while let Some(at) = tx.deadline() {
            now = at;
            let before = out.len();
            if tx.on_timeout(now, &mut out) == Some(ClientEvent::Timeout) {
                break;
            }
            if out.len() > before {
                sent_at.push(now.as_millis());
            }
        }
        assert_eq!(sent_at, [500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(now, ms(32_000), "timer B = 64*T1");
        assert!(tx.is_terminated());
    }

    #[test]
    fn a_lingering_transaction_no_longer_holds_its_request() {
        for status in [200, 486] {
            let mut tx = start(Duration::ZERO);
            let mut out = Vec::new();
            tx.on_response(ms(100), &response(180), &mut out);
            assert!(tx.holds_request(), "needed for a CANCEL while ringing");
            tx.on_response(ms(200), &response(status), &mut out);
            assert!(!tx.is_terminated(), "{status}: lingers");
            assert!(!tx.holds_request(), "{status}");
        }
    }

    #[test]
    fn provisional_stops_retransmission_and_non_2xx_is_acked() {
        let mut tx = start(Duration::ZERO);
        let mut out = Vec::new();
        assert_eq!(
            tx.on_response(ms(100), &response(180), &mut out),
            ClientEvent::Pass
        );
        assert_eq!(tx.deadline(), None, "no A, no B while proceeding");
        assert_eq!(
            tx.on_response(ms(200), &response(486), &mut out),
            ClientEvent::Pass
        );
        assert_eq!(out.len(), 1);
        let ack = Message::parse(out[0].data.clone()).unwrap();
        assert_eq!(ack.method(), Some(crate::sip::Method::Ack));
        assert_eq!(ack.to().tag(), Some("b"));
        assert_eq!(ack.top_via().branch(), Some("z9hG4bKc1"));
        assert_eq!(ack.cseq().seq, 7);
        assert_eq!(
            tx.on_response(ms(300), &response(486), &mut out),
            ClientEvent::Absorbed
        );
        assert_eq!(out.len(), 2, "a retransmitted final is ACKed again");
        assert_eq!(tx.deadline(), Some(ms(200 + 32_000)), "timer D");
        tx.on_timeout(ms(32_200), &mut out);
        assert!(tx.is_terminated());
    }

    #[test]
    fn accepted_passes_2xx_retransmissions() {
        let mut tx = start(Duration::ZERO);
        let mut out = Vec::new();
        assert_eq!(
            tx.on_response(ms(10), &response(200), &mut out),
            ClientEvent::Pass
        );
        assert_eq!(tx.state(), ClientState::Accepted);
        assert_eq!(
            tx.on_response(ms(510), &response(200), &mut out),
            ClientEvent::Pass
        );
        assert!(out.is_empty(), "the 2xx ACK is end to end, not ours");
        tx.on_timeout(ms(10 + 32_000), &mut out);
        assert!(tx.is_terminated(), "timer M");
    }

    #[test]
    fn non_invite_timer_e_caps_at_t2() {
        let raw = "BYE sip:1002@127.0.0.2:5062 SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKb\r\nFrom: <sip:a@b>;tag=a\r\n\
                   To: <sip:c@d>;tag=b\r\nCall-ID: y\r\nCSeq: 8 BYE\r\nContent-Length: 0\r\n\r\n";
        let data = Bytes::from(raw);
        let (mut tx, _) =
            ClientTx::start(Duration::ZERO, false, data, udp(), TimerConfig::default());
        let mut out = Vec::new();
        let mut sent_at = Vec::new();
        let mut fired = None;
        while let Some(at) = tx.deadline() {
            let before = out.len();
            fired = tx.on_timeout(at, &mut out);
            if out.len() > before {
                sent_at.push(at.as_millis());
            }
            if fired.is_some() {
                break;
            }
        }
        assert_eq!(&sent_at[..6], [500, 1500, 3500, 7500, 11500, 15500]);
        assert_eq!(fired, Some(ClientEvent::Timeout));
    }

    #[test]
    fn reliable_transport_has_no_retransmission() {
        let data = invite().buffer().clone();
        let tcp = Peer {
            transport: Transport::Tcp,
            ..udp()
        };
        let (tx, _) = ClientTx::start(Duration::ZERO, true, data, tcp, TimerConfig::default());
        assert_eq!(tx.deadline(), Some(ms(32_000)), "only timer B");
    }
}
