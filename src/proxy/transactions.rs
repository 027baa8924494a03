//! The transaction table: server and client transactions paired, their
//! timers, and CANCEL.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;

use super::cross::{self, Waiting};
use super::forward::Forwarded;
use super::hangup::{HangUp, OWN_BYE_TIMER};
use super::responses::reason_phrase;
use super::route;
use super::{Client, Output, Proxy, ServerKey, TIMER_C, TxPair};
use crate::cluster::codec::Token;
use crate::registrar;
use crate::sip::{Message, Method};
use crate::transaction::client::{ClientEvent, ClientState, ClientTx};
use crate::transaction::server::ServerTx;
use crate::transaction::{Peer, TimerConfig, Transmit};

/// Transaction slots a core keeps allocated when it has none in use; past
/// this, an idle core gives the room back ([`Proxy::shrink_when_idle`]).
pub(super) const IDLE_TABLE_CAPACITY: usize = 1024;

impl Proxy {
    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Duration, out: &mut Output) {
        self.tidy(now);
        for ext in self.registrar.expire(now) {
            self.announce_logout(&ext, out);
        }
        self.cluster_timeout(now, out);
        while let Some(call_id) = self.sessions.pop_expired(now) {
            if self.sessions.is_unacked(&call_id) {
                tracing::warn!(%call_id, "answered call never ACKed within 64×T1: ended");
                self.metrics.sessions_unacked += 1;
                self.expire_session(now, &call_id, HangUp::Unacked, out);
                continue;
            }
            tracing::warn!(%call_id, "session outlived max_call_secs without a BYE: ended");
            self.metrics.sessions_expired += 1;
            self.expire_session(now, &call_id, HangUp::Expired, out);
        }
        while let Some((id, generation)) = self.timers.pop_due(now) {
            if id & OWN_BYE_TIMER != 0 {
                self.own_bye_timeout(now, id & !OWN_BYE_TIMER, generation, out);
                continue;
            }
            let id = id as usize;
            let Some(pair) = self.txs.get_mut(id) else {
                continue;
            };
            if pair.generation != generation {
                continue;
            }
            pair.server.on_timeout(now, &mut out.transmits);
            // The caller had cancelled: a branch given up now ends as
            // cancelled (487), not as timed out.
            let cancelled = pair.cancel.is_some() || pair.cancel_pending;
            let mut timed_out = false;
            if let Some(client) = pair.client.as_mut() {
                timed_out =
                    client.tx.on_timeout(now, &mut out.transmits) == Some(ClientEvent::Timeout);
            }
            if let Some(cancel) = pair.cancel.as_mut() {
                cancel.on_timeout(now, &mut out.transmits);
            }
            if pair.ringing_until.is_some_and(|at| at <= now) {
                timed_out = true;
                if cancelled {
                    // 64×T1 after the CANCEL without a final response: the
                    // branch is over (RFC 3261 §9.1), or nothing would end
                    // its transaction. A late 2xx is still relayed
                    // (`handle_response`).
                    pair.ringing_until = None;
                    if let Some(client) = pair.client.as_mut() {
                        client.tx.abandon();
                    }
                } else {
                    // Timer C (§16.8): cancel the branch, and give it 64×T1
                    // to end as a cancelled one would.
                    send_cancel(now, self.settings.timers, pair, &mut out.transmits);
                    let give_up = now + 64 * self.settings.timers.t1;
                    pair.ringing_until = pair.cancel.is_some().then_some(give_up);
                }
            }
            if let Some(Waiting::Notices { until }) = pair.waiting {
                if until <= now {
                    pair.waiting = None;
                    self.retry_join(now, id, out);
                    continue;
                }
            }
            if let Some(Waiting::Redirect { request_id, until }) = pair.waiting {
                if until <= now {
                    // The hosting blade never answered: the agent is hosted,
                    // so it is busy (SPEC §2 step 6).
                    pair.waiting = None;
                    if let Some(c) = self.cluster.as_mut() {
                        c.awaiting_redirect.remove(&request_id);
                    }
                    self.metrics.local.busy += 1;
                    self.answer_pending(now, id, 486, out);
                }
            }
            let Some(pair) = self.txs.get_mut(id) else {
                continue;
            };
            let client_over = pair.client.as_ref().is_some_and(|c| c.tx.is_terminated());
            if pair.held_hostings.is_some() && (timed_out || client_over) {
                // A BYE whose hostings waited for it got no final
                // response: it will not pass the target blade now.
                self.release_pair_hostings(now, id, out);
            }
            let Some(pair) = self.txs.get_mut(id) else {
                continue;
            };
            if timed_out && !pair.server.is_final() {
                if pair.invite {
                    self.fail_pending(now, id, if cancelled { 487 } else { 408 }, out);
                } else {
                    // RFC 4320 §4.2: no 408 to a non-INVITE request.
                    pair.server.abandon();
                }
            }
            self.reschedule(id);
        }
        self.shrink_when_idle();
    }

    /// Gives back the room the transaction tables grew to under a burst,
    /// once its last lingering transaction is gone: their capacity would
    /// otherwise hold the core's memory at the burst's size for good.
    fn shrink_when_idle(&mut self) {
        if !self.txs.is_empty() || self.txs.capacity() <= IDLE_TABLE_CAPACITY {
            return;
        }
        self.txs.shrink_to_fit();
        self.by_server.shrink_to_fit();
        self.by_client.shrink_to_fit();
        self.handed_off.shrink_to_fit();
        self.timers.shrink_to_fit();
    }

    /// The blade is stopping and cannot wait any longer: every request
    /// still without a final answer gets 503 (Retry-After), a forwarded
    /// INVITE is cancelled downstream, and its call ends (a hosted callee
    /// is handed back).
    pub fn abandon_pending(&mut self, now: Duration, out: &mut Output) {
        let open: Vec<usize> = self
            .txs
            .iter()
            .filter(|(_, pair)| !pair.server.is_final() && pair.request.is_some())
            .map(|(id, _)| id)
            .collect();
        for id in open {
            if let Some(pair) = self.txs.get_mut(id) {
                if pair.invite && pair.client.is_some() {
                    send_cancel(now, self.settings.timers, pair, &mut out.transmits);
                }
            }
            self.fail_pending(now, id, 503, out);
            self.reschedule(id);
        }
    }

    /// T: grants that ended without their source (the lease lapsed, the
    /// source came back as a new run or disowned them): each INVITE this
    /// blade forwarded to the agent's phone under one of them and that
    /// has no final answer yet is cancelled downstream, as the caller's
    /// CANCEL would have been (RFC 3261 §16.10), so the phone stops
    /// ringing for a call nobody can take. Without it the phone rang on
    /// until timer C, and answered meanwhile it would put an agent that
    /// is `ready` again into a call with no caller.
    pub(super) fn cancel_under_grants(
        &mut self,
        now: Duration,
        tokens: &HashSet<Token>,
        out: &mut Output,
    ) {
        let open = self.unanswered(|pair| {
            pair.invite
                && pair.client.is_some()
                && pair
                    .request
                    .as_deref()
                    .and_then(Message::request_uri)
                    .and_then(|uri| cross::hosting_token(&uri).and_then(Token::from_hex))
                    .is_some_and(|token| tokens.contains(&token))
        });
        for id in open {
            self.cancel_downstream(now, id, out);
        }
    }

    /// S: the hosting of call `call_id`'s callee was lost (its blade, or
    /// the lease): an INVITE of the call still without a final answer is
    /// cancelled downstream (the callee's blade may still carry it) and
    /// answered `status` at once (487 if its caller had cancelled it),
    /// rather than left to timer C with its session already gone.
    pub(super) fn fail_unanswered_call(
        &mut self,
        now: Duration,
        call_id: &str,
        status: u16,
        out: &mut Output,
    ) {
        for id in self.unanswered(|pair| pair.call && &*pair.call_id == call_id) {
            self.cancel_and_answer(now, id, status, out);
        }
    }

    /// Each blade in `lost` (by its SIP address) left its call (S: its
    /// hosted callee's blade, the hosting lost; T: the source of a grant
    /// that ended without it): a re-INVITE of that call forwarded to that
    /// blade and still without a final answer is cancelled there and
    /// answered 408 at once, as the blade hangs the call up with BYEs of
    /// its own (RFC 3261 §12.2.1.2: a 408 ends the dialog at its sender
    /// too). Left to its timers, one the lost blade had answered 100
    /// waited for timer C and the CANCEL after it, over three minutes. A
    /// hop is that blade by its full address ([`Cluster::hop_is_peer`]):
    /// where blades share an IP, a re-INVITE on its way to another one,
    /// which is up, goes on. One scan for all of them: a lost blade ends
    /// many calls at once.
    ///
    /// [`Cluster::hop_is_peer`]: super::cross::Cluster::hop_is_peer
    pub(super) fn fail_reinvites_to(
        &mut self,
        now: Duration,
        lost: &[(&str, SocketAddr)],
        out: &mut Output,
    ) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let open = self.unanswered(|pair| {
            pair.invite
                && !pair.call
                && pair.client.as_ref().is_some_and(|c| {
                    let hop = c.tx.peer().addr;
                    lost.iter().any(|&(call_id, sip)| {
                        *pair.call_id == *call_id && cluster.hop_is_peer(hop, sip)
                    })
                })
        });
        for id in open {
            self.cancel_and_answer(now, id, 408, out);
        }
    }

    /// The transactions `which` picks among those whose caller has no
    /// final answer yet (a scan of the table: for the rare ends of a
    /// hosting, never per message).
    fn unanswered(&self, which: impl Fn(&TxPair) -> bool) -> Vec<usize> {
        self.txs
            .iter()
            .filter(|(_, pair)| !pair.server.is_final() && which(pair))
            .map(|(id, _)| id)
            .collect()
    }

    /// Cancels transaction `id`'s forwarded INVITE, if it was forwarded,
    /// and answers its caller `status` at once; 487 if the caller had
    /// cancelled it already, as its INVITE then ends.
    fn cancel_and_answer(&mut self, now: Duration, id: usize, status: u16, out: &mut Output) {
        let mut answer = status;
        if let Some(pair) = self.txs.get_mut(id) {
            if pair.client.is_some() {
                cancel_and_give_up(now, self.settings.timers, pair, out);
            }
            if pair.cancelled {
                answer = 487;
            }
        }
        self.fail_pending(now, id, answer, out);
        self.reschedule(id);
    }

    /// Cancels the forwarded INVITE of transaction `id` downstream, once
    /// (a retransmitted CANCEL finds the CANCEL already sent or due).
    fn cancel_downstream(&mut self, now: Duration, id: usize, out: &mut Output) {
        let Some(pair) = self.txs.get_mut(id) else {
            return;
        };
        let first = pair.cancel.is_none() && !pair.cancel_pending;
        if !pair.server.is_final() && first {
            cancel_and_give_up(now, self.settings.timers, pair, out);
            // Counted when the INVITE ends: a 200 may yet cross the CANCEL.
            pair.cancelled = true;
        }
        self.reschedule(id);
    }

    /// Answers transaction `id`'s caller `status` for a failure on our
    /// side (no answer, no way to send); a call then ends as failed.
    pub(super) fn fail_pending(&mut self, now: Duration, id: usize, status: u16, out: &mut Output) {
        let Some(pair) = self.txs.get(id) else {
            return;
        };
        let (call, call_id, cancelled) = (pair.call, pair.call_id.clone(), pair.cancelled);
        self.answer_pending(now, id, status, out);
        self.release_pair_hostings(now, id, out);
        if call {
            if let Some(o) = self.outcomes(&call_id) {
                if cancelled {
                    o.cancelled += 1;
                } else {
                    o.failed += 1;
                }
            }
            self.end_session(now, &call_id, out);
        }
    }

    /// Releases the hostings that transaction `id`, a BYE relayed to a
    /// peer blade, held ([`Proxy::end_session_by_bye`]): its final
    /// response came back, or it ended without one.
    pub(super) fn release_pair_hostings(&mut self, now: Duration, id: usize, out: &mut Output) {
        let held = self.txs.get_mut(id).and_then(|p| p.held_hostings.take());
        if let Some(held) = held {
            self.release_held_hostings(now, &held, out);
        }
    }

    /// Answers the request of transaction `id` with `status`, unless it
    /// already has a final answer.
    pub(super) fn answer_pending(
        &mut self,
        now: Duration,
        id: usize,
        status: u16,
        out: &mut Output,
    ) {
        let Some(pair) = self.txs.get_mut(id) else {
            return;
        };
        if pair.server.is_final() {
            return;
        }
        let Some(request) = &pair.request else {
            return;
        };
        let mut buf = BytesMut::new();
        let retry: &[(&str, &str)] = if status == 503 {
            &[("Retry-After", "1")]
        } else {
            &[]
        };
        request.response(
            status,
            reason_phrase(status),
            Some(&registrar::tag(request)),
            retry,
            &mut buf,
        );
        pair.server
            .respond(now, status, buf.freeze(), &mut out.transmits);
        self.reschedule(id);
    }

    /// A new server transaction for `request`, without a client yet.
    pub(super) fn insert(&mut self, request: Message, server: ServerTx) -> usize {
        let key = ServerKey::of(&request).owned();
        self.pending += 1;
        let pair = TxPair {
            generation: 0,
            key: key.clone(),
            invite: request.method() == Some(Method::Invite),
            call: request.method() == Some(Method::Invite) && request.to().tag().is_none(),
            call_id: request.call_id().into(),
            request: Some(Box::new(request)),
            server,
            client: None,
            cancel: None,
            cancel_pending: false,
            cancelled: false,
            ringing_until: None,
            waiting: None,
            held_hostings: None,
        };
        let id = self.txs.insert(pair);
        self.by_server.insert(key, id);
        id
    }

    /// Re-arms the timer of transaction `id`, or drops it when done.
    /// Removes transaction `id` and its index entries; returns it.
    pub(super) fn take_tx(&mut self, id: usize) -> Option<TxPair> {
        let pair = self.txs.try_remove(id)?;
        if pair.request.is_some() {
            self.pending -= 1;
        }
        self.by_server.remove(&pair.key);
        if let Some(c) = &pair.client {
            self.by_client.remove(&(c.branch.clone(), false));
            self.by_client.remove(&(c.branch.clone(), true));
        }
        Some(pair)
    }

    pub(super) fn reschedule(&mut self, id: usize) {
        let Some(pair) = self.txs.get_mut(id) else {
            return;
        };
        if pair.is_done() {
            self.take_tx(id);
            return;
        }
        if pair.server.is_final() && pair.request.take().is_some() {
            self.pending -= 1;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        pair.generation = self.next_generation;
        if let Some(at) = pair.deadline() {
            self.timers.schedule(at, id as u64, pair.generation);
        }
    }

    /// The server transaction for request `msg`: an INVITE's has answered
    /// 100 Trying (§16.2: at once, so the caller stops retransmitting). A
    /// peer blade's INVITE has its 100 deferred instead: the callee's 180
    /// nearly always comes first and makes it needless, which spares both
    /// blades a datagram per cross-blade call; a slow callee still gets the
    /// peer its 100 well before its first retransmission.
    pub(super) fn server_tx(
        &self,
        now: Duration,
        source: Peer,
        msg: &Message,
        out: &mut Output,
    ) -> ServerTx {
        let invite = msg.method() == Some(Method::Invite);
        let mut server = ServerTx::new(invite, route::response_peer(source), self.settings.timers);
        if invite {
            // §8.2.6.1: the 100 carries the request's Timestamp, so the
            // caller can measure the round trip.
            let stamp = msg
                .header_named("Timestamp")
                .and_then(|v| std::str::from_utf8(v).ok());
            let extra: &[(&str, &str)] = match &stamp {
                Some(value) => &[("Timestamp", value)],
                None => &[],
            };
            let mut trying = BytesMut::new();
            msg.response(100, "Trying", None, extra, &mut trying);
            if self.is_peer_blade_ip(source.addr.ip()) {
                server.defer_trying(now, trying.freeze());
            } else {
                server.respond(now, 100, trying.freeze(), &mut out.transmits);
            }
        }
        server
    }

    /// Sends `forwarded` to `target` through a new client transaction of
    /// pair `id`.
    pub(super) fn start_client(
        &mut self,
        now: Duration,
        id: usize,
        method: Method,
        forwarded: Forwarded,
        out: &mut Output,
    ) {
        let Forwarded {
            data,
            target,
            branch,
        } = forwarded;
        let invite = method == Method::Invite;
        let (client, first) = ClientTx::start(now, invite, data, target, self.settings.timers);
        out.transmits.push(first);
        let Some(pair) = self.txs.get_mut(id) else {
            return;
        };
        if pair.invite {
            // A CANCEL we send downstream (the caller's, or timer C's)
            // shares the INVITE's branch; its responses find the pair so.
            self.by_client.insert((branch.clone(), true), id);
            pair.ringing_until = Some(now + TIMER_C);
        }
        self.by_client.insert((branch.clone(), false), id);
        pair.client = Some(Client {
            tx: client,
            branch,
            method,
        });
        self.reschedule(id);
    }

    pub(super) fn handle_cancel(
        &mut self,
        now: Duration,
        source: Peer,
        msg: &Message,
        out: &mut Output,
    ) {
        let invite_key = ServerKey {
            method: Method::Invite,
            ..ServerKey::of(msg)
        };
        let tag = registrar::tag(msg);
        let mut buf = BytesMut::new();
        let Some(&id) = self.by_server.get(&invite_key) else {
            msg.response(
                481,
                "Call/Transaction Does Not Exist",
                Some(&tag),
                &[],
                &mut buf,
            );
            out.transmits.push(Transmit {
                to: route::response_peer(source),
                data: buf.freeze(),
            });
            return;
        };
        // §16.10: answer the CANCEL, then cancel the branch downstream.
        msg.response(200, "OK", Some(&tag), &[], &mut buf);
        out.transmits.push(Transmit {
            to: route::response_peer(source),
            data: buf.freeze(),
        });
        let Some(pair) = self.txs.get_mut(id) else {
            return;
        };
        if pair.client.is_none() && pair.waiting.is_some() && !pair.server.is_final() {
            // Nothing went downstream yet (the INVITE waits on the cluster):
            // end it here.
            let call_id = pair.call_id.clone();
            if let Some(Waiting::Redirect { request_id, .. }) = pair.waiting.take() {
                // Its answer may never come (the hosting blade gone): the
                // entry would outlive the transaction, and a late answer
                // could find its slot reused by another one.
                if let Some(c) = self.cluster.as_mut() {
                    c.awaiting_redirect.remove(&request_id);
                }
            }
            self.answer_pending(now, id, 487, out);
            if let Some(o) = self.outcomes(&call_id) {
                o.cancelled += 1;
            }
            self.end_session(now, &call_id, out);
            return;
        }
        self.cancel_downstream(now, id, out);
    }
}

/// Sends the CANCEL of a forwarded INVITE, or marks it due once a
/// provisional arrives (a CANCEL may not overtake the first response, §9.1).
/// Cancels `pair`'s forwarded INVITE ([`send_cancel`]); a callee that
/// never answers the CANCEL with a final response is given up 64×T1 later
/// (RFC 3261 §9.1), not at timer C.
fn cancel_and_give_up(now: Duration, timers: TimerConfig, pair: &mut TxPair, out: &mut Output) {
    send_cancel(now, timers, pair, &mut out.transmits);
    let give_up = now + 64 * timers.t1;
    pair.ringing_until = Some(pair.ringing_until.map_or(give_up, |at| at.min(give_up)));
}

pub(super) fn send_cancel(
    now: Duration,
    timers: TimerConfig,
    pair: &mut TxPair,
    out: &mut Vec<Transmit>,
) {
    let Some(client) = pair.client.as_ref() else {
        return;
    };
    if pair.cancel.is_some() {
        return;
    }
    match client.tx.state() {
        ClientState::Proceeding => {
            let mut buf = BytesMut::new();
            let Some(request) = client.tx.request() else {
                return;
            };
            request.cancel_for(&mut buf);
            let (tx, first) = ClientTx::start(now, false, buf.freeze(), client.tx.peer(), timers);
            out.push(first);
            pair.cancel = Some(tx);
            pair.cancel_pending = false;
        }
        ClientState::Calling => pair.cancel_pending = true,
        _ => {}
    }
}
