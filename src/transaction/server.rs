//! Server transactions (RFC 3261 §17.2, RFC 6026 §7.1).

use std::time::Duration;

use bytes::Bytes;

use super::{Backoff, Peer, TimerConfig, Transmit, earliest};

/// How long a deferred 100 Trying waits for the transaction user's own
/// response: RFC 3261 §17.2.1 spares the 100 when the TU answers within
/// 200 ms.
pub const TRYING_DELAY: Duration = Duration::from_millis(200);

/// Server transaction states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE received, nothing sent yet.
    Trying,
    /// A provisional was sent (INVITE starts here: the proxy sends 100).
    Proceeding,
    /// INVITE answered 2xx: retransmitted INVITEs are absorbed (RFC 6026).
    Accepted,
    /// Final response sent; INVITE: waiting for the ACK.
    Completed,
    /// INVITE: the ACK arrived; absorbing ACK retransmissions.
    Confirmed,
    /// Done; the transaction can be dropped.
    Terminated,
}

/// What a timer meant for the transaction user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    /// Timer H: the ACK to a non-2xx final never came.
    AckTimeout,
}

/// One server transaction.
#[derive(Debug, Clone)]
pub struct ServerTx {
    invite: bool,
    state: ServerState,
    peer: Peer,
    timers: TimerConfig,
    /// The last response sent, for retransmissions.
    last: Option<Bytes>,
    /// Timer G: retransmit a non-2xx final to an INVITE.
    retransmit: Option<Backoff>,
    /// Timer H (INVITE, Completed).
    ack_timeout: Option<Duration>,
    /// Timer I, J or L: when the state ends.
    linger: Option<Duration>,
    /// A 100 Trying held back ([`ServerTx::defer_trying`]) and when it is
    /// due.
    deferred_trying: Option<(Duration, Bytes)>,
}

impl ServerTx {
    /// A transaction for a request received from `peer`.
    pub fn new(invite: bool, peer: Peer, timers: TimerConfig) -> Self {
        ServerTx {
            invite,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            peer,
            timers,
            last: None,
            retransmit: None,
            ack_timeout: None,
            linger: None,
            deferred_trying: None,
        }
    }

    /// Holds the INVITE's 100 Trying `data` for [`TRYING_DELAY`]: it goes
    /// out then only if no response has, or at once if the INVITE is
    /// retransmitted first. A peer blade's INVITE gets its callee's 180
    /// well within that, and one datagram fewer for both blades.
    pub fn defer_trying(&mut self, now: Duration, data: Bytes) {
        if self.state == ServerState::Proceeding && self.last.is_none() {
            self.deferred_trying = Some((now + TRYING_DELAY, data));
        }
    }

    /// Sends the deferred 100 Trying, if it is still wanted.
    fn send_deferred_trying(&mut self, out: &mut Vec<Transmit>) {
        if let Some((_, data)) = self.deferred_trying.take() {
            if self.state == ServerState::Proceeding && self.last.is_none() {
                out.push(Transmit {
                    to: self.peer,
                    data: data.clone(),
                });
                self.last = Some(data);
            }
        }
    }

    /// The state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// Where responses go.
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// Whether a final response was sent.
    pub fn is_final(&self) -> bool {
        matches!(
            self.state,
            ServerState::Accepted
                | ServerState::Completed
                | ServerState::Confirmed
                | ServerState::Terminated
        )
    }

    /// The next deadline, if any.
    pub fn deadline(&self) -> Option<Duration> {
        earliest(&[
            self.retransmit.map(|b| b.at),
            self.ack_timeout,
            self.linger,
            self.deferred_trying.as_ref().map(|(at, _)| *at),
        ])
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    /// The request arrived again: resend the last response, if any
    /// (§17.2.1, §17.2.2). In Trying and Accepted it is absorbed silently.
    pub fn on_retransmission(&mut self, out: &mut Vec<Transmit>) {
        if self.deferred_trying.is_some() {
            // The sender is retransmitting: it needs the 100 now.
            return self.send_deferred_trying(out);
        }
        if matches!(self.state, ServerState::Proceeding | ServerState::Completed) {
            if let Some(last) = &self.last {
                out.push(Transmit {
                    to: self.peer,
                    data: last.clone(),
                });
            }
        }
    }

    /// An ACK matched this INVITE transaction: Completed → Confirmed.
    /// Returns whether it was the first (the TU may want to know).
    pub fn on_ack(&mut self, now: Duration) -> bool {
        if self.state != ServerState::Completed {
            return false;
        }
        self.state = ServerState::Confirmed;
        self.retransmit = None;
        self.ack_timeout = None;
        let reliable = self.peer.transport.is_reliable();
        self.linger = Some(
            now + if reliable {
                Duration::ZERO
            } else {
                self.timers.t4
            },
        );
        true
    }

    /// Sends a response with status `status`. Provisionals after a final
    /// and a second final are refused (returns false, sends nothing), except
    /// 2xx retransmissions in Accepted, which pass (RFC 6026).
    pub fn respond(
        &mut self,
        now: Duration,
        status: u16,
        data: Bytes,
        out: &mut Vec<Transmit>,
    ) -> bool {
        let reliable = self.peer.transport.is_reliable();
        match (self.state, status) {
            (ServerState::Trying | ServerState::Proceeding, 100..=199) => {
                self.state = ServerState::Proceeding;
            }
            (ServerState::Proceeding, 200..=299) if self.invite => {
                self.state = ServerState::Accepted;
                self.linger = Some(now + self.timers.timeout());
            }
            (ServerState::Accepted, 200..=299) => {}
            (ServerState::Proceeding, 300..=699) if self.invite => {
                self.state = ServerState::Completed;
                if !reliable {
                    self.retransmit = Some(Backoff::start(now, self.timers.t1));
                }
                self.ack_timeout = Some(now + self.timers.timeout());
            }
            (ServerState::Trying | ServerState::Proceeding, 200..=699) if !self.invite => {
                self.state = ServerState::Completed;
                self.linger = Some(
                    now + if reliable {
                        Duration::ZERO
                    } else {
                        self.timers.timeout()
                    },
                );
            }
            _ => return false,
        }
        self.deferred_trying = None;
        out.push(Transmit {
            to: self.peer,
            data: data.clone(),
        });
        self.last = Some(data);
        true
    }

    /// The transaction user gives up without a final response: a proxy
    /// whose non-INVITE branch timed out must not answer 408 (RFC 4320
    /// §4.2); the client's own timer F ends its side.
    pub fn abandon(&mut self) {
        self.terminate();
    }

    /// Runs the timers due at `now`.
    pub fn on_timeout(&mut self, now: Duration, out: &mut Vec<Transmit>) -> Option<ServerEvent> {
        if self
            .deferred_trying
            .as_ref()
            .is_some_and(|(at, _)| *at <= now)
        {
            self.send_deferred_trying(out);
        }
        if self.linger.is_some_and(|at| at <= now) {
            self.terminate();
            return None;
        }
        if self.ack_timeout.is_some_and(|at| at <= now) {
            self.terminate();
            return Some(ServerEvent::AckTimeout);
        }
        if let Some(b) = self.retransmit.as_mut().filter(|b| b.at <= now) {
            if let Some(last) = &self.last {
                out.push(Transmit {
                    to: self.peer,
                    data: last.clone(),
                });
            }
            b.double(now, Some(self.timers.t2));
        }
        None
    }

    fn terminate(&mut self) {
        self.state = ServerState::Terminated;
        self.deferred_trying = None;
        self.retransmit = None;
        self.ack_timeout = None;
        self.linger = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Transport;

    fn peer(transport: Transport) -> Peer {
        Peer::new("127.0.0.12:5061".parse().unwrap(), transport)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn invite_non_2xx_retransmits_with_g_until_ack() {
        let mut tx = ServerTx::new(true, peer(Transport::Udp), TimerConfig::default());
        let mut out = Vec::new();
        assert!(tx.respond(ms(0), 100, Bytes::from_static(b"100"), &mut out));
        tx.on_retransmission(&mut out);
        assert_eq!(out.len(), 2, "a retransmitted INVITE gets the 100 again");
        assert!(tx.respond(ms(10), 486, Bytes::from_static(b"486"), &mut out));
        assert!(
            !tx.respond(ms(11), 180, Bytes::from_static(b"180"), &mut out),
            "no provisional after a final"
        );
        let mut fired = Vec::new();
        for _ in 0..3 {
            let at = tx.deadline().unwrap();
            tx.on_timeout(at, &mut out);
            fired.push(at.as_millis());
        }
        assert_eq!(fired, [510, 1510, 3510], "timer G doubles");
        assert!(tx.on_ack(ms(4000)));
        assert!(!tx.on_ack(ms(4001)), "ACK retransmissions absorbed");
        assert_eq!(tx.state(), ServerState::Confirmed);
        assert_eq!(tx.deadline(), Some(ms(9000)), "timer I = T4");
        tx.on_timeout(ms(9000), &mut out);
        assert!(tx.is_terminated());
    }

    #[test]
    fn a_deferred_trying_is_spared_by_an_earlier_response() {
        let mut tx = ServerTx::new(true, peer(Transport::Udp), TimerConfig::default());
        let mut out = Vec::new();
        tx.defer_trying(ms(0), Bytes::from_static(b"100"));
        assert_eq!(tx.deadline(), Some(TRYING_DELAY));
        assert!(tx.respond(ms(30), 180, Bytes::from_static(b"180"), &mut out));
        assert_eq!(tx.deadline(), None, "nothing left to send");
        tx.on_timeout(ms(250), &mut out);
        let sent: Vec<_> = out.iter().map(|t| &t.data[..]).collect();
        assert_eq!(sent, [b"180"]);
    }

    #[test]
    fn a_deferred_trying_goes_out_when_due_or_when_the_invite_comes_again() {
        let mut tx = ServerTx::new(true, peer(Transport::Udp), TimerConfig::default());
        let mut out = Vec::new();
        tx.defer_trying(ms(0), Bytes::from_static(b"100"));
        tx.on_timeout(ms(199), &mut out);
        assert!(out.is_empty(), "not due yet");
        tx.on_timeout(ms(200), &mut out);
        assert_eq!(out.len(), 1);
        tx.on_retransmission(&mut out);
        assert_eq!(out.len(), 2, "then resent like any 100");
        assert_eq!(tx.deadline(), None);

        let mut tx = ServerTx::new(true, peer(Transport::Udp), TimerConfig::default());
        let mut out = Vec::new();
        tx.defer_trying(ms(0), Bytes::from_static(b"100"));
        tx.on_retransmission(&mut out);
        assert_eq!(out.len(), 1, "a retransmission asks for it at once");
        tx.on_timeout(ms(200), &mut out);
        assert_eq!(out.len(), 1, "and it goes out once");
        assert!(tx.respond(ms(300), 486, Bytes::from_static(b"486"), &mut out));
        assert_eq!(tx.state(), ServerState::Completed);
    }

    #[test]
    fn timer_g_caps_at_t2_and_h_ends_it() {
        let mut tx = ServerTx::new(true, peer(Transport::Udp), TimerConfig::default());
        let mut out = Vec::new();
        tx.respond(ms(0), 500, Bytes::from_static(b"500"), &mut out);
        let mut last = None;
        let mut intervals = Vec::new();
        let mut prev = 0;
        while let Some(at) = tx.deadline() {
            last = tx.on_timeout(at, &mut out);
            intervals.push(at.as_millis() - prev);
            prev = at.as_millis();
        }
        assert_eq!(last, Some(ServerEvent::AckTimeout));
        assert_eq!(prev, 32_000, "timer H = 64*T1");
        assert!(
            intervals.iter().all(|&i| i <= 4000),
            "G never exceeds T2: {intervals:?}"
        );
    }

    #[test]
    fn accepted_absorbs_invite_and_passes_2xx() {
        let mut tx = ServerTx::new(true, peer(Transport::Udp), TimerConfig::default());
        let mut out = Vec::new();
        assert!(tx.respond(ms(0), 200, Bytes::from_static(b"200"), &mut out));
        tx.on_retransmission(&mut out);
        assert_eq!(out.len(), 1, "retransmitted INVITE absorbed in Accepted");
        assert!(
            tx.respond(ms(500), 200, Bytes::from_static(b"200"), &mut out),
            "2xx retransmission passes"
        );
        tx.on_timeout(ms(32_000), &mut out);
        assert!(tx.is_terminated(), "timer L");
    }

    #[test]
    fn non_invite_completed_until_j() {
        let mut tx = ServerTx::new(false, peer(Transport::Udp), TimerConfig::default());
        let mut out = Vec::new();
        tx.on_retransmission(&mut out);
        assert!(out.is_empty(), "Trying absorbs retransmissions");
        tx.respond(ms(5), 200, Bytes::from_static(b"200"), &mut out);
        tx.on_retransmission(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(tx.deadline(), Some(ms(32_005)));
        let mut tcp = ServerTx::new(false, peer(Transport::Tcp), TimerConfig::default());
        tcp.respond(ms(5), 200, Bytes::from_static(b"200"), &mut out);
        assert_eq!(tcp.deadline(), Some(ms(5)), "timer J is 0 on TCP");
    }
}
