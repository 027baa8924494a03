//! Responses: relaying them upstream, and the ones the proxy writes itself.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::route::{self, BRANCH_PREFIX};
use super::transactions::send_cancel;
use super::{Output, Proxy, TIMER_C};
use crate::registrar::{self, Refusal};
use crate::sip::edit::best_effort_response;
use crate::sip::{Message, Method};
use crate::transaction::client::{ClientEvent, ClientState, ClientTx};
use crate::transaction::server::{ServerState, ServerTx};
use crate::transaction::{Peer, Transmit};

impl Proxy {
    pub(super) fn handle_response(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        out: &mut Output,
    ) {
        let Some(branch) = msg.top_via().branch() else {
            return;
        };
        if !branch.starts_with(BRANCH_PREFIX) {
            return;
        }
        let cancel = msg.cseq().method == Method::Cancel;
        let key = (msg.buffer().slice_ref(branch.as_bytes()), cancel);
        let Some(&id) = self.by_client.get(&key) else {
            if self.handle_own_bye_response(now, &msg, out) {
                return;
            }
            return self.forward_stray_2xx(&msg, out);
        };
        let Some(pair) = self.txs.get_mut(id) else {
            return;
        };
        // Only the hop the request went to answers it: a response under a
        // live branch from any other address (the branch is in every
        // Via the far side sees) must neither answer the caller nor end
        // the call.
        let sent_to = pair.client.as_ref().map(|c| &c.tx).or(pair.cancel.as_ref());
        let sent_to = sent_to.map(ClientTx::peer);
        if sent_to.is_some_and(|p| !answers_for(p, source)) {
            tracing::debug!(from = %source.addr, "response from another address than its request went to: dropped");
            return;
        }
        if cancel {
            if let Some(c) = pair.cancel.as_mut() {
                c.on_response(now, &msg, &mut out.transmits);
            }
            return self.reschedule(id);
        }
        let Some(client) = pair.client.as_mut() else {
            return;
        };
        if msg.cseq().method != client.method {
            // Same branch, another method: not this transaction's response
            // (a 200 for BYE must not answer an INVITE).
            return;
        }
        let status = msg.status().unwrap_or(0);
        let answered_already = !matches!(
            pair.server.state(),
            ServerState::Trying | ServerState::Proceeding | ServerState::Accepted
        );
        if client.method == Method::Invite && (200..300).contains(&status) && answered_already {
            // We answered the caller with a failure already (a CANCEL the
            // callee ignored, timer C, a stopping blade), and the callee
            // answers after all: RFC 3261 §16.7 step 5 forwards any 2xx to
            // an INVITE even then, so the caller can ACK it and hang up,
            // and the callee stops retransmitting it.
            client.tx.on_response(now, &msg, &mut out.transmits);
            let to = pair.server.peer();
            if msg.has_more_vias() {
                let mut buf = BytesMut::new();
                msg.strip_top_via(&mut buf);
                out.transmits.push(Transmit {
                    to,
                    data: buf.freeze(),
                });
            }
            return self.reschedule(id);
        }
        if status > 100 && !msg.has_more_vias() {
            // Only our Via: nowhere to relay it (§16.7 step 3), and not an
            // answer the transaction may take, or the caller would wait
            // for a response that never comes.
            self.metrics.malformed += 1;
            return;
        }
        if client.tx.on_response(now, &msg, &mut out.transmits) != ClientEvent::Pass {
            return self.reschedule(id);
        }
        let (invite, call, cancelled) = (pair.invite, pair.call, pair.cancelled);
        let downstream = client.tx.peer();
        // A 2xx to a re-INVITE or UPDATE: a target refresh of its responder.
        let refresh = !call
            && (200..300).contains(&status)
            && matches!(client.method, Method::Invite | Method::Update);
        if status > 100 {
            // §16.7 step 3: remove our Via and pass the response upstream.
            let mut buf = BytesMut::new();
            msg.strip_top_via(&mut buf);
            let (relayed, data) = upstream_status(status, buf.freeze());
            pair.server.respond(now, relayed, data, &mut out.transmits);
        }
        if invite && status < 200 {
            if pair.cancel_pending && client.tx.state() == ClientState::Proceeding {
                send_cancel(now, self.settings.timers, pair, &mut out.transmits);
            } else if pair.ringing_until.is_some() && pair.cancel.is_none() && !pair.cancel_pending
            {
                // Timer C restarts with each provisional, but not once the
                // INVITE is cancelled: its 64×T1 limit stands.
                pair.ringing_until = Some(now + TIMER_C);
            }
        }
        if invite && status >= 200 {
            pair.ringing_until = None;
        }
        if call && status >= 200 {
            let call_id = pair.call_id.clone();
            if status < 300 {
                let ack_by = now + self.settings.timers.timeout();
                if self.sessions.confirm(&call_id, msg.to().tag(), ack_by) {
                    self.remember_dialog(&call_id, &msg, downstream);
                    if let Some(o) = self.outcomes(&call_id) {
                        o.answered += 1;
                    }
                    if let Some(s) = self.sessions.get(&call_id) {
                        if s.joins.is_some() {
                            self.metrics.joins += 1;
                        } else if s.replaces.is_some() {
                            self.metrics.replaces += 1;
                        }
                    }
                } else {
                    // A retransmitted 2xx: its callee has no ACK yet.
                    self.sessions.await_ack(&call_id);
                    if self.cluster.is_some() {
                        // No session here: perhaps a call a hosting blade
                        // brought to one of this blade's agents.
                        self.remember_hosted_dialog(id, &msg, downstream, out);
                    }
                }
            } else {
                if let Some(o) = self.outcomes(&call_id) {
                    if cancelled {
                        o.cancelled += 1;
                    } else {
                        o.ended_with(status);
                    }
                }
                self.end_session(now, &call_id, out);
            }
        }
        if refresh {
            self.follow_target_refresh(&msg, None);
        }
        if status >= 200 {
            // A BYE's final response came back through the target blade:
            // the hostings it held may go ([`Proxy::end_session_by_bye`]).
            self.release_pair_hostings(now, id, out);
        }
        self.reschedule(id);
    }

    /// A request this core forwarded could not be sent (no connection to
    /// the agent could be made over TCP). RFC 3261 §16.9: as if the hop
    /// answered 503; the caller gets 480 (the agent cannot be reached) at
    /// once instead of a 408 after timer B, and a call ends as failed.
    pub fn handle_unsent(&mut self, now: Duration, msg: &Message, out: &mut Output) {
        if !msg.is_request() || matches!(msg.method(), Some(Method::Ack | Method::Cancel)) {
            return;
        }
        let Some(branch) = msg.top_via().branch() else {
            return;
        };
        let key = (msg.buffer().slice_ref(branch.as_bytes()), false);
        let Some(&id) = self.by_client.get(&key) else {
            self.own_bye_unsent(now, msg, out);
            return;
        };
        let Some(pair) = self.txs.get_mut(id) else {
            return;
        };
        if pair.server.is_final() {
            return;
        }
        pair.ringing_until = None;
        self.fail_pending(now, id, 480, out);
        self.reschedule(id);
    }

    /// A 2xx to an INVITE whose client transaction is gone (a late
    /// retransmission): forward it upstream statelessly (§16.7 step 10
    /// with RFC 6026).
    pub(super) fn forward_stray_2xx(&mut self, msg: &Message, out: &mut Output) {
        let is_2xx = msg.status().is_some_and(|s| (200..300).contains(&s));
        if !is_2xx || msg.cseq().method != Method::Invite {
            return;
        }
        if let Some(to) = route::via_peer(msg) {
            let mut buf = BytesMut::new();
            msg.strip_top_via(&mut buf);
            out.transmits.push(Transmit {
                to,
                data: buf.freeze(),
            });
        }
    }

    /// Answers `msg` locally through a new server transaction, so that
    /// retransmissions get the same answer and an ACK is absorbed.
    pub(super) fn refuse(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        refusal: &Refusal,
        out: &mut Output,
    ) {
        let mut buf = BytesMut::new();
        refusal.respond(&msg, &registrar::tag(&msg), &mut buf);
        self.respond_new(now, source, msg, refusal.status, buf.freeze(), out);
    }

    pub(super) fn respond_new(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        status: u16,
        data: Bytes,
        out: &mut Output,
    ) {
        let invite = msg.method() == Some(Method::Invite);
        let mut server = ServerTx::new(invite, route::response_peer(source), self.settings.timers);
        server.respond(now, status, data, &mut out.transmits);
        let id = self.insert(msg, server);
        self.reschedule(id);
    }
}

/// The status and bytes a response of the next hop goes upstream with.
/// RFC 3261 §16.7 step 6: a 503 is not passed upstream, as it would say
/// that this blade is unavailable (the caller would back off from it, for
/// every request); it is the only answer (one branch), so it becomes a 500
/// and keeps the rest of the response (To tag, Retry-After).
fn upstream_status(status: u16, relayed: Bytes) -> (u16, Bytes) {
    if status != 503 {
        return (status, relayed);
    }
    let Some(end) = relayed.windows(2).position(|w| w == b"\r\n") else {
        return (status, relayed);
    };
    let mut buf = BytesMut::with_capacity(relayed.len());
    buf.extend_from_slice(b"SIP/2.0 500 ");
    buf.extend_from_slice(reason_phrase(500).as_bytes());
    buf.extend_from_slice(&relayed[end..]);
    (500, buf.freeze())
}

/// The reason phrase sipblade sends with `status`.
pub(super) fn reason_phrase(status: u16) -> &'static str {
    match status {
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        600 => "Busy Everywhere",
        _ => "Request Failed",
    }
}

/// The best-effort answer to a request that failed to parse, or to frame
/// on a stream: 400 whose reason phrase says what is wrong (the sender's
/// operator has nothing else to go by), 505 for another SIP version, 513
/// for a message over the size limit. `None` when there is nothing to
/// answer (a response, an ACK, junk: see
/// [`crate::sip::edit::best_effort_response`]).
pub fn malformed_response(
    data: &[u8],
    err: &crate::sip::ParseError,
    source: SocketAddr,
) -> Option<Bytes> {
    let reason = match err.status() {
        505 => "Version Not Supported".to_owned(),
        513 => "Message Too Large".to_owned(),
        _ => format!("Bad Request ({})", err.kind),
    };
    let mut buf = BytesMut::new();
    best_effort_response(data, err.status(), &reason, source, &mut buf).then(|| buf.freeze())
}

/// The stateless 503 a blade answers a request with when it cannot take
/// it on (a core's queue at its bound); `None` for responses and ACKs,
/// which are never answered.
pub fn overload_response(msg: &Message) -> Option<Bytes> {
    if !msg.is_request() || msg.method() == Some(Method::Ack) {
        return None;
    }
    let mut buf = BytesMut::new();
    msg.response(
        503,
        "Service Unavailable",
        Some(&registrar::tag(msg)),
        &[("Retry-After", "1")],
        &mut buf,
    );
    Some(buf.freeze())
}

/// Whether a response from `source` comes from where its request went,
/// `sent_to`. Compared by IP: a blade answers from its core's own port,
/// and a phone need not answer from the port it listens on. Or, over a
/// stream, on the very connection the request went out on: an agent
/// registered over TCP is reached on its connection, whose far end (a
/// NAT's public address) need not be the IP its Contact names (its
/// private one), which is the address the request is filed under.
fn answers_for(sent_to: Peer, source: Peer) -> bool {
    sent_to.addr.ip() == source.addr.ip() || (sent_to.conn.is_some() && sent_to.conn == source.conn)
}
