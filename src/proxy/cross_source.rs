//! The source blade's side of a cross-blade call (SPEC §2 steps 3-4, 7):
//! hosting the callee (or a relay's leave) from its blade while the
//! request waits, sending it on with the grant's token, and releasing the
//! agent when the session ends. The overview is in [`super::cross`].

use std::net::SocketAddr;
use std::time::Duration;

use super::cross::{ClusterSend, Dest, TOKEN_PARAM, Waiting};
use super::hangup::HangUp;
use super::session::Hosted;
use super::{Output, Proxy};
use crate::cluster::codec::{Refusal, Token};
use crate::cluster::hosting::SourceEvent;
use crate::sip::{Message, Method};
use crate::transaction::Peer;

impl Proxy {
    /// S: the callee is not registered here; host it from its blade
    /// (SPEC §2 step 3). The INVITE waits, answered 100 Trying.
    pub(super) fn host_remote(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        caller: &str,
        callee: &str,
        out: &mut Output,
    ) {
        let call_id = msg.call_id().to_owned();
        self.open_session(now, source, &msg, caller, callee, out)
            .hosted = Some(Hosted {
            extension: callee.to_owned(),
            blade: None,
            info: None,
        });
        let id = self.hold(now, source, msg, Waiting::Grant { since: now }, out);
        self.start_hosting(now, id, &call_id, callee, false, out);
    }

    /// S: a new call for an agent this blade already hosts in a session
    /// ([`Source::hosts`]). Its blade would refuse it (already hosted),
    /// and would hand any call for it that reached it here to be decided
    /// (SPEC §2 step 6): while hosted, the agent's state is the hosting
    /// blade's. So this blade answers 486 itself, without the round trip,
    /// and without waiting on a blade that may be dead but not yet
    /// noticed (the link's idle timeout), which would turn the answer
    /// into a 503.
    pub(super) fn busy_hosted_here(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        out: &mut Output,
    ) {
        self.metrics.refused(Refusal::AlreadyHosted);
        self.metrics.cross_blade.busy += 1;
        let busy = super::Refusal::new(486, "Busy Here");
        self.refuse(now, source, msg, &busy, out);
    }

    /// S: hosts `extension` for `call_id` while transaction `id` waits for
    /// the grant; `newcomer`: the agent sent the INVITE (a Join or
    /// Replaces), and may be in a call on its blade.
    pub(super) fn start_hosting(
        &mut self,
        now: Duration,
        id: usize,
        call_id: &str,
        extension: &str,
        newcomer: bool,
        out: &mut Output,
    ) {
        if let Some(c) = self.cluster.as_mut() {
            c.awaiting_grant.insert(call_id.to_owned(), id);
            if newcomer {
                c.source
                    .host_newcomer(now, &c.directory, call_id, extension);
            } else {
                c.source.host(now, &c.directory, call_id, extension);
            }
        }
        self.reschedule(id);
        self.pump_source(now, out);
    }

    /// S: an out-of-dialog request that is not a call (MESSAGE, SUBSCRIBE,
    /// REFER, ...) for an agent registered on another blade. No hosting:
    /// the request is held while the agent's blade gives leave to relay it
    /// (a token bound to this blade, the agent and the Call-ID, as the
    /// SPEC trusts peer requests only through tokens), then sent there.
    pub(super) fn relay_remote(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        callee: &str,
        out: &mut Output,
    ) {
        let call_id = msg.call_id().to_owned();
        let id = self.hold(now, source, msg, Waiting::Relay, out);
        if let Some(c) = self.cluster.as_mut() {
            c.awaiting_relay
                .entry(call_id.clone())
                .or_default()
                .push(id);
            c.source.relay(now, &c.directory, &call_id, callee);
        }
        self.reschedule(id);
        self.pump_source(now, out);
    }

    /// S: the session `call_id` ended; its hosted agent goes back. While
    /// a BYE ends it ([`Proxy::end_session_by_bye`]), not yet: the hosting
    /// waits for that BYE ([`Source::end_after`]).
    pub(super) fn release_hosting(&mut self, now: Duration, call_id: &str, out: &mut Output) {
        if let Some(c) = self.cluster.as_mut() {
            c.awaiting_grant.remove(call_id);
            let held = match c.bye_holds.as_mut() {
                Some((until, held)) if c.source.end_after(call_id, *until) > 0 => {
                    held.push(call_id.to_owned());
                    true
                }
                _ => false,
            };
            if !held {
                c.source.end(call_id);
            }
        }
        self.pump_source(now, out);
    }

    /// S: ends the session of `bye`, a BYE about to be relayed to
    /// `target` ([`Proxy::end_session`]). Its agents on this blade are
    /// free at once; but when the BYE goes to a peer blade, the hostings
    /// it ends are held until the BYE has passed that blade, or their
    /// unhost could overtake it (the unhost reaches the target over the
    /// link while the BYE still has the target's hop to the phone ahead):
    /// the target would free the agent while the BYE is on its way to
    /// the agent's phone, and a new call in between would ring a phone
    /// still in this call. A BYE to a phone (the hosted agent's own,
    /// going to the caller) releases at once: that phone left the call.
    /// Returns the sessions whose hostings wait, for
    /// [`Proxy::release_held_hostings`] once the BYE's transaction has its
    /// final response or ends; 64×T1 after now, when that transaction
    /// times out, the source releases them anyway.
    pub(super) fn end_session_by_bye(
        &mut self,
        now: Duration,
        bye: &Message,
        target: Peer,
        out: &mut Output,
    ) -> Option<Box<[String]>> {
        if self
            .sessions
            .get(bye.call_id())
            .is_some_and(|s| !s.is_dialog_of(bye))
        {
            // A BYE with the Call-ID but not the tags of the session's
            // dialog (stale, forged, or a broken phone's): the far UA
            // answers it 481, and the call goes on.
            return None;
        }
        let held = if self.cluster.is_some() && self.is_peer_blade_ip(target.addr.ip()) {
            self.end_session_holding_hostings(now, bye.call_id(), out)
        } else {
            self.end_session(now, bye.call_id(), out);
            None
        };
        if let Some(c) = self.cluster.as_mut() {
            c.hosted_dialog_ended(bye);
        }
        held
    }

    /// S: [`Proxy::end_session`] for `call_id`, whose BYE is on its way to
    /// a peer blade: the hostings it ends wait for that BYE (for 64×T1 at
    /// most). Returns the sessions whose hostings wait, for
    /// [`Proxy::release_held_hostings`].
    pub(super) fn end_session_holding_hostings(
        &mut self,
        now: Duration,
        call_id: &str,
        out: &mut Output,
    ) -> Option<Box<[String]>> {
        let until = now + self.settings.timers.timeout();
        if let Some(c) = self.cluster.as_mut() {
            c.bye_holds = Some((until, Vec::new()));
        }
        self.end_session(now, call_id, out);
        let (_, held) = self.cluster.as_mut()?.bye_holds.take()?;
        (!held.is_empty()).then(|| held.into_boxed_slice())
    }

    /// S: the BYE that the hostings of `sessions` waited for has passed
    /// the target blade (its final response came back), or its
    /// transaction ended without one: they are released now.
    pub(super) fn release_held_hostings(
        &mut self,
        now: Duration,
        sessions: &[String],
        out: &mut Output,
    ) {
        if let Some(c) = self.cluster.as_mut() {
            for call_id in sessions {
                c.source.end_held(call_id);
            }
        }
        self.pump_source(now, out);
    }

    /// Moves what the source side produced to the output, and acts on its
    /// events, until both queues are empty.
    pub(super) fn pump_source(&mut self, now: Duration, out: &mut Output) {
        loop {
            let Some(c) = self.cluster.as_mut() else {
                return;
            };
            while let Some((peer, msg)) = c.source.poll_transmit() {
                out.cluster.push(ClusterSend {
                    to: Dest::Peer(peer),
                    msg,
                });
            }
            let Some(event) = c.source.poll_event() else {
                return;
            };
            self.on_source_event(now, event, out);
        }
    }

    fn on_source_event(&mut self, now: Duration, event: SourceEvent, out: &mut Output) {
        match event {
            SourceEvent::Granted {
                call_id,
                extension,
                peer,
                info,
                token,
                lease_secs: _,
            } => self.on_granted(now, &call_id, &extension, peer, info, token, out),
            SourceEvent::Refused {
                call_id,
                extension,
                reason,
            } => self.on_refused(now, &call_id, &extension, reason, out),
            SourceEvent::Lost {
                call_id,
                extension,
                peer,
            } => {
                tracing::warn!(%call_id, agent = %extension, %peer, "hosting lost: session ended");
                // The phones are still in the call: the blade hangs it up
                // on the parties it can reach (not through a lost link).
                // The dialogs that ride on its grant to the lost agent go
                // with it: calls that replaced it, and join legs to the
                // agent (they reach it through its blade under this
                // grant). Legs to the other party go on.
                let riders: Vec<String> = self
                    .sessions
                    .get(&call_id)
                    .map(|s| s.joined.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|j| self.sessions.get(j).is_some_and(|r| r.callee == extension))
                    .collect();
                let lost = self
                    .cluster
                    .as_ref()
                    .and_then(|c| c.peer(&peer))
                    .map(|p| p.sip);
                // A re-INVITE on its way to the lost blade gets its final
                // answer now, in the call or a rider.
                if let Some(sip) = lost {
                    let calls: Vec<(&str, SocketAddr)> = riders
                        .iter()
                        .chain([&call_id])
                        .map(|c| (c.as_str(), sip))
                        .collect();
                    self.fail_reinvites_to(now, &calls, out);
                }
                for rider in riders {
                    self.hang_up(now, &rider, HangUp::PeerLost(lost), out);
                    self.end_session(now, &rider, out);
                }
                // A call still ringing has no dialog to hang up: its
                // caller gets its final answer now.
                self.fail_unanswered_call(now, &call_id, 503, out);
                self.hang_up(now, &call_id, HangUp::PeerLost(lost), out);
                self.end_session(now, &call_id, out);
            }
            SourceEvent::Relayed {
                call_id,
                extension,
                peer,
                token,
            } => self.on_relayed(now, &call_id, &extension, &peer, token, out),
            SourceEvent::Redirected {
                peer, request_id, ..
            } => {
                // The agent is in a session this blade hosts: busy.
                if let Some(c) = self.cluster.as_mut() {
                    c.source.answer_redirect(&peer, request_id, 486);
                }
            }
        }
    }

    /// S: the grant came (SPEC §2 steps 4–5): save the agent's login
    /// information and send the INVITE to the target with the token.
    #[allow(clippy::too_many_arguments)]
    fn on_granted(
        &mut self,
        now: Duration,
        call_id: &str,
        extension: &str,
        peer: String,
        info: crate::cluster::codec::LoginInfo,
        token: Token,
        out: &mut Output,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let id = c.awaiting_grant.remove(call_id);
        let target = c.peer(&peer).map(|p| p.sip);
        let pending = id.and_then(|id| {
            let pair = self.txs.get_mut(id)?;
            let Some(Waiting::Grant { since }) = pair.waiting else {
                return None;
            };
            pair.waiting = None;
            let request = pair.request.clone().filter(|_| !pair.server.is_final())?;
            Some((id, since, request, pair.server.peer().transport))
        });
        let (Some((id, since, request, upstream)), Some(target)) = (pending, target) else {
            // The caller gave up meanwhile (or the peer has no SIP address):
            // hand the agent back at once.
            if let Some(id) = id {
                self.answer_pending(now, id, 503, out);
            }
            self.end_session(now, call_id, out);
            return;
        };
        self.metrics.hosting_rtt.observe(now.saturating_sub(since));
        let mut join_dest = None;
        if let Some(session) = self.sessions.get_mut(call_id) {
            session.hosted = Some(Hosted {
                extension: extension.to_owned(),
                blade: Some(peer),
                info: Some(info),
            });
            join_dest = session.join_dest.clone();
        }
        // A call goes to the hosted callee through its blade; a join leg,
        // whose joiner was hosted, to the party it joins.
        let (target, uri) = join_dest.unwrap_or_else(|| {
            let uri = format!("sip:{extension}@{target};{TOKEN_PARAM}={}", token.to_hex());
            (Peer::udp(target), uri)
        });
        let upstream = Some(upstream);
        let method = request.method().unwrap_or(Method::Other);
        match self.build_forward(&request, target, Some(&uri), 0, upstream) {
            Ok(forwarded) => self.start_client(now, id, method, forwarded, out),
            Err(refusal) => {
                self.answer_pending(now, id, refusal.status, out);
                if let Some(o) = self.outcomes(call_id) {
                    o.failed += 1;
                }
                self.end_session(now, call_id, out);
            }
        }
    }

    /// S: leave to relay came: the requests waiting for it go to the
    /// agent's blade with the token in their Request-URI.
    fn on_relayed(
        &mut self,
        now: Duration,
        call_id: &str,
        extension: &str,
        peer: &str,
        token: Token,
        out: &mut Output,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let ids = c.awaiting_relay.remove(call_id).unwrap_or_default();
        let target = c.peer(peer).map(|p| p.sip);
        for id in ids {
            let Some(pair) = self.txs.get_mut(id) else {
                continue;
            };
            if pair.waiting != Some(Waiting::Relay) {
                continue;
            }
            pair.waiting = None;
            let Some(request) = pair.request.clone().filter(|_| !pair.server.is_final()) else {
                continue;
            };
            let upstream = pair.server.peer().transport;
            let Some(target) = target else {
                self.answer_pending(now, id, 503, out);
                continue;
            };
            let uri = format!("sip:{extension}@{target};{TOKEN_PARAM}={}", token.to_hex());
            // A relayed Join INVITE starts a dialog, as SUBSCRIBE and REFER do.
            let record_route = matches!(
                request.method(),
                Some(Method::Invite | Method::Subscribe | Method::Refer)
            )
            .then_some(upstream);
            let target = Peer::udp(target);
            let method = request.method().unwrap_or(Method::Other);
            match self.build_forward(&request, target, Some(&uri), 0, record_route) {
                Ok(forwarded) => self.start_client(now, id, method, forwarded, out),
                Err(refusal) => self.answer_pending(now, id, refusal.status, out),
            }
        }
    }

    /// S: the callee cannot be hosted (or a request to it relayed): the
    /// caller gets the matching status.
    fn on_refused(
        &mut self,
        now: Duration,
        call_id: &str,
        extension: &str,
        reason: Refusal,
        out: &mut Output,
    ) {
        let relays = self
            .cluster
            .as_mut()
            .and_then(|c| c.awaiting_relay.remove(call_id));
        if let Some(ids) = relays {
            tracing::debug!(%call_id, agent = extension, %reason, "relay refused");
            for id in ids {
                if let Some(pair) = self.txs.get_mut(id) {
                    pair.waiting = None;
                }
                self.answer_pending(now, id, reason.status(), out);
            }
            return;
        }
        tracing::debug!(%call_id, agent = extension, %reason, "hosting refused");
        self.metrics.refused(reason);
        let id = self
            .cluster
            .as_mut()
            .and_then(|c| c.awaiting_grant.remove(call_id));
        if let Some(id) = id {
            if let Some(pair) = self.txs.get_mut(id) {
                pair.waiting = None;
            }
            self.answer_pending(now, id, reason.status(), out);
            if let Some(o) = self.outcomes(call_id) {
                o.ended_with(reason.status());
            }
        }
        self.end_session(now, call_id, out);
    }
}
