//! BYEs the blade sends itself.
//!
//! Most sessions end with a phone's BYE, which the blade relays. Some end
//! without one: a session that outlives `max_call_secs` (its BYE was
//! lost, or a phone hung), one whose hosted party's blade was lost
//! (SPEC §2 step 7), and, on the hosted party's own blade, a call whose
//! hosting blade vanished, so that the lease lapsed or the hosting blade
//! came back as a new run without it (step 8). Freeing the
//! agents there would leave their phones in the call, so the blade then
//! tears the dialog down on them, as Kamailio's dialog module does on a
//! timeout: it sends each party it can reach an in-dialog BYE written as
//! the other party would write it (RFC 3261 §12.2.1.1, §15.1.1).
//!
//! - **Request-URI** is the party's remote target: the 2xx's Contact for
//!   the callee, the INVITE's for the caller, or a later target refresh's.
//! - **From / To** are the dialog seen from the far party: to the caller,
//!   From is the 2xx's To (the callee's tag) and To the INVITE's From (the
//!   caller's tag); the mirror to the callee.
//! - **CSeq** is [`BYE_CSEQ`]: a UAS refuses (500) a request whose number
//!   is below the last it got from the other side (§12.2.2), and the blade
//!   does not read every in-dialog request to learn that number (a
//!   re-INVITE or INFO after the 2xx raises it). The largest number a CSeq
//!   may start at (below 2³¹, §8.1.1.5) is above any a party will have
//!   sent, and nothing follows it in the dialog.
//! - **Transport.** Each BYE has a client transaction of its own: UDP
//!   retransmits it (timer E) until an answer or timer F. Its answer, or
//!   its timeout, is only logged and counted: the session is over here
//!   already.
//! - **Reach.** A party whose first hop is a peer blade whose link is down
//!   gets no BYE: nothing would carry it (the party on this blade does).
//!   Where its route goes on past that blade to one still up (a joiner on
//!   a third blade, its leg U, T, S, T), the BYE goes to that one, past
//!   the lost blade ([`Proxy::past_lost_peers`]).
//!
//! What each BYE is built from is kept in [`super::dialog`].

use std::collections::HashSet;
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::dialog::ByeTo;
use super::route::{self, BRANCH_PREFIX};
use super::session::Phase;
use super::{Output, Proxy};
use crate::sip::{Message, Method, NameAddr};
use crate::transaction::Peer;
use crate::transaction::client::{ClientEvent, ClientTx};

/// The CSeq number of the BYEs the blade sends itself: 2³¹ − 1, the
/// largest a request may carry as a first number (RFC 3261 §8.1.1.5), so
/// above any the party has seen from the other side.
pub const BYE_CSEQ: u32 = (1 << 31) - 1;

/// The timer ids of the blade's own BYEs carry this bit, apart from the
/// transaction pairs' slab keys that share the timer queue.
pub(super) const OWN_BYE_TIMER: u64 = 1 << 63;

/// A BYE the blade sent of its own accord, until its transaction ends.
pub(super) struct OwnBye {
    tx: ClientTx,
    generation: u32,
    call_id: Box<str>,
    /// S: sent to a peer blade, towards a hosted callee: the sessions
    /// whose hostings wait for it to pass there, released at its final
    /// response or when it ends without one ([`Proxy::hang_up_and_end`]).
    held_hostings: Option<Box<[String]>>,
}

/// Why a session is hung up, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HangUp {
    /// It outlived `max_call_secs`.
    Expired,
    /// Its hosted party's blade was lost: the one with this SIP address,
    /// if known (its link may still look up when the lease ran out
    /// first).
    PeerLost(Option<SocketAddr>),
    /// Its 2xx was never ACKed ([`super::session::Sessions::confirm`]).
    Unacked,
}

impl HangUp {
    fn as_str(self) -> &'static str {
        match self {
            HangUp::Expired => "max_call_secs",
            HangUp::PeerLost(_) => "peer lost",
            HangUp::Unacked => "no ACK",
        }
    }
}

impl Proxy {
    /// The blade ends session `call_id` itself (`why`): each party of its
    /// dialog, if confirmed and not hung up already, gets a BYE of the
    /// blade's own where it can be reached. Call before the session is
    /// closed. Returns the number of the BYE that went to a peer blade
    /// (towards a hosted callee), if one did.
    pub(super) fn hang_up(
        &mut self,
        now: Duration,
        call_id: &str,
        why: HangUp,
        out: &mut Output,
    ) -> Option<u64> {
        let session = self.sessions.get(call_id)?;
        // `left`: the dialog itself ended (its BYE passed) while join legs
        // lived on.
        if session.phase != Phase::Confirmed || session.left.is_some() {
            return None;
        }
        let d = session.dialog.clone()?;
        let caller_target = session.caller_contact.as_ref().map(|c| c.1.clone());
        let (caller, callee) = (session.caller.clone(), session.callee.clone());
        let parties = [
            (
                caller,
                caller_target.as_deref().and_then(|t| d.bye_to_caller(t)),
            ),
            (callee, d.bye_to_callee()),
        ];
        let mut to_peer_blade = None;
        for (agent, bye) in parties {
            let Some(bye) = bye else {
                tracing::debug!(%call_id, %agent, "no way to address a BYE to this party");
                continue;
            };
            let lost = match why {
                HangUp::PeerLost(lost) => lost,
                HangUp::Expired | HangUp::Unacked => None,
            };
            let Some(bye) = self.past_lost_peers(bye, lost) else {
                tracing::debug!(%call_id, %agent, "party behind a lost blade: no BYE");
                continue;
            };
            tracing::debug!(%call_id, %agent, why = why.as_str(), "sending BYE");
            let sent = self.send_own_bye(now, call_id, &bye, out);
            if self.cluster.is_some() && self.is_peer_blade_ip(bye.hop.addr.ip()) {
                to_peer_blade = to_peer_blade.or(sent);
            }
        }
        to_peer_blade
    }

    /// S: the hostings of `sessions` wait for own BYE `n` to pass the
    /// peer blade it went to; released now if that BYE is gone already.
    pub(super) fn hold_hostings_for_own_bye(
        &mut self,
        now: Duration,
        n: u64,
        sessions: Box<[String]>,
        out: &mut Output,
    ) {
        match self.own_byes.get_mut(&n) {
            Some(bye) => bye.held_hostings = Some(sessions),
            None => self.release_held_hostings(now, &sessions, out),
        }
    }

    /// Releases the hostings own BYE `n` held, if any: it was answered,
    /// or ended without an answer.
    fn release_own_bye_hostings(&mut self, now: Duration, n: u64, out: &mut Output) {
        let held = self
            .own_byes
            .get_mut(&n)
            .and_then(|b| b.held_hostings.take());
        if let Some(held) = held {
            self.release_held_hostings(now, &held, out);
        }
    }

    /// Whether `hop` is a peer blade whose link is down.
    fn behind_lost_peer(&self, hop: Peer) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.link_down_at(hop.addr))
    }

    /// `bye` as it can still go when its first hop is a lost peer blade
    /// (its link down, or `lost`, the blade whose hosting was lost):
    /// past the route entries of lost blades at the head of its route,
    /// to the first blade after them that is still up (a joiner's or
    /// newcomer's own blade: a leg U, T, S, T reaches the joiner through
    /// T and U, and U alone serves once T is lost). With none after them,
    /// through `lost` all the same while its link is up (a lease may run
    /// out with the blade alive, its renewals refused or late); `None`
    /// behind a link that is down: nothing would carry it (the lost
    /// blade's own party is its blade's to hang up).
    fn past_lost_peers<'a>(&self, bye: ByeTo<'a>, lost: Option<SocketAddr>) -> Option<ByeTo<'a>> {
        let is_lost = |hop: Peer| {
            lost.zip(self.cluster.as_ref())
                .is_some_and(|(lost, c)| c.hop_is_peer(hop.addr, lost))
        };
        let gone = |hop: Peer| self.behind_lost_peer(hop) || is_lost(hop);
        if !gone(bye.hop) {
            return Some(bye);
        }
        let fallback = (!self.behind_lost_peer(bye.hop)).then_some(bye);
        let mut rest = bye.route;
        loop {
            let Some(entry) = NameAddr::parse_value(rest.as_bytes()) else {
                return fallback;
            };
            let Some(hop) = route::uri_peer(&entry.uri()) else {
                return fallback;
            };
            if !gone(hop) {
                return Some(ByeTo {
                    route: rest,
                    hop,
                    ..bye
                });
            }
            // Past this entry and the ", " that joins it to the next.
            let end = entry.spans().all.end as usize;
            let next = rest.get(end..).map(str::trim_start);
            match next.and_then(|n| n.strip_prefix(',')) {
                Some(next) => rest = next.trim_start(),
                None => return fallback,
            }
        }
    }

    /// Sends `bye` in dialog `call_id` over a client transaction of its
    /// own, with a fresh Via and [`BYE_CSEQ`], and counts it. Returns its
    /// number, if sent.
    pub(super) fn send_own_bye(
        &mut self,
        now: Duration,
        call_id: &str,
        bye: &ByeTo,
        out: &mut Output,
    ) -> Option<u64> {
        let ByeTo {
            target,
            route,
            hop,
            from,
            to,
        } = *bye;
        self.next_branch += 1;
        let n = self.next_branch;
        let mut text = String::with_capacity(
            200 + target.len() + route.len() + from.len() + to.len() + call_id.len(),
        );
        let _ = write!(
            text,
            "BYE {target} SIP/2.0\r\nVia: SIP/2.0/{} {};branch={BRANCH_PREFIX}{}xb{n}\r\n\
             Max-Forwards: 70\r\n",
            hop.transport,
            self.sent_by(hop.transport),
            self.settings.core,
        );
        if !route.is_empty() {
            let _ = write!(text, "Route: {route}\r\n");
        }
        let _ = write!(
            text,
            "From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {BYE_CSEQ} BYE\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let data = Bytes::from(text);
        if let Err(err) = Message::parse(data.clone()) {
            // Parts copied from a 2xx that parsed: not expected.
            tracing::warn!(%call_id, %err, "could not build a BYE");
            return None;
        }
        let (tx, first) = ClientTx::start(now, false, data, hop, self.settings.timers);
        out.transmits.push(first);
        self.metrics.sessions_bye_sent += 1;
        self.own_byes.insert(
            n,
            OwnBye {
                tx,
                generation: 0,
                call_id: call_id.into(),
                held_hostings: None,
            },
        );
        self.reschedule_own_bye(n);
        Some(n)
    }

    /// T: grants that ended, as the target reports them: the dialogs kept
    /// for each go with it. Those of a grant whose lease lapsed or whose
    /// source restarted (its hosting blade vanished, or stopped renewing,
    /// without an unhost) are hung up first: the agent's phone gets a BYE
    /// of this blade's own, as from the caller. Each is counted by how it
    /// ended. Call after anything that may end a grant.
    pub(super) fn pump_released(&mut self, now: Duration, out: &mut Output) {
        // The grants that end without their source: an INVITE forwarded
        // under one that the phone has not answered yet is cancelled.
        let mut unanswered = HashSet::new();
        // And a re-INVITE of their calls on its way to the source.
        let mut reinvites = Vec::new();
        while let Some(c) = self.cluster.as_mut() {
            let Some(released) = c.target.poll_released() else {
                break;
            };
            let grant = released.grant;
            let dialogs = c.take_hosted_dialogs(&grant.extension, &grant.token);
            self.metrics.hosting_released[released.how.index()] += 1;
            if !released.how.hangs_up() {
                continue;
            }
            unanswered.insert(grant.token);
            if let Some(source) = c.peer(&grant.source).map(|p| p.sip) {
                reinvites.push((grant.call_id.clone(), source));
                reinvites.extend(dialogs.iter().map(|d| (d.call_id.to_string(), source)));
            }
            for d in dialogs {
                let Some(bye) = d.dialog.bye_to_callee() else {
                    continue;
                };
                tracing::info!(
                    call_id = %d.call_id,
                    agent = %grant.extension,
                    source = %grant.source,
                    ended = released.how.as_str(),
                    "hosting ended mid-call without its source: BYE to the agent's phone"
                );
                self.send_own_bye(now, &d.call_id, &bye, out);
            }
        }
        if !unanswered.is_empty() {
            self.cancel_under_grants(now, &unanswered, out);
        }
        if !reinvites.is_empty() {
            let lost: Vec<(&str, SocketAddr)> = reinvites
                .iter()
                .map(|(c, sip)| (c.as_str(), *sip))
                .collect();
            self.fail_reinvites_to(now, &lost, out);
        }
    }

    fn reschedule_own_bye(&mut self, n: u64) {
        let Some(bye) = self.own_byes.get_mut(&n) else {
            return;
        };
        if bye.tx.is_terminated() {
            self.own_byes.remove(&n);
            return;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        bye.generation = self.next_generation;
        if let Some(at) = bye.tx.deadline() {
            self.timers.schedule(at, OWN_BYE_TIMER | n, bye.generation);
        }
    }

    /// A timer of own BYE `n` (its timer id less [`OWN_BYE_TIMER`]).
    pub(super) fn own_bye_timeout(
        &mut self,
        now: Duration,
        n: u64,
        generation: u32,
        out: &mut Output,
    ) {
        let Some(bye) = self.own_byes.get_mut(&n) else {
            return;
        };
        if bye.generation != generation {
            return;
        }
        if bye.tx.on_timeout(now, &mut out.transmits) == Some(ClientEvent::Timeout) {
            tracing::info!(call_id = %bye.call_id, "the blade's BYE got no answer");
            self.metrics.sessions_bye_failed += 1;
            self.release_own_bye_hostings(now, n, out);
        }
        self.reschedule_own_bye(n);
    }

    /// The number of the blade's own BYE that `branch` names, on this core.
    fn own_bye_of(&self, branch: &str) -> Option<u64> {
        let (core, n) = branch.strip_prefix(BRANCH_PREFIX)?.split_once("xb")?;
        if core.parse::<usize>().ok()? != self.settings.core {
            return None;
        }
        let n = n.parse().ok()?;
        self.own_byes.contains_key(&n).then_some(n)
    }

    /// A response matching none of the pairs' client transactions: taken
    /// if it answers one of the blade's own BYEs (returns true).
    pub(super) fn handle_own_bye_response(
        &mut self,
        now: Duration,
        msg: &Message,
        out: &mut Output,
    ) -> bool {
        if msg.cseq().method != Method::Bye || self.own_byes.is_empty() {
            return false;
        }
        let Some(n) = msg.top_via().branch().and_then(|b| self.own_bye_of(b)) else {
            return false;
        };
        let Some(bye) = self.own_byes.get_mut(&n) else {
            return false;
        };
        let status = msg.status().unwrap_or(0);
        let pass = bye.tx.on_response(now, msg, &mut out.transmits) == ClientEvent::Pass;
        if pass && status >= 200 {
            if status < 300 {
                tracing::debug!(call_id = %bye.call_id, status, "the blade's BYE answered");
            } else {
                tracing::info!(call_id = %bye.call_id, status, "the blade's BYE refused");
                self.metrics.sessions_bye_failed += 1;
            }
            self.release_own_bye_hostings(now, n, out);
        }
        self.reschedule_own_bye(n);
        true
    }

    /// An own BYE that could not be sent (no TCP connection): given up
    /// now rather than at timer F. Returns whether `msg` was one.
    pub(super) fn own_bye_unsent(
        &mut self,
        now: Duration,
        msg: &Message,
        out: &mut Output,
    ) -> bool {
        let Some(n) = msg.top_via().branch().and_then(|b| self.own_bye_of(b)) else {
            return false;
        };
        self.release_own_bye_hostings(now, n, out);
        if let Some(bye) = self.own_byes.remove(&n) {
            tracing::info!(call_id = %bye.call_id, "the blade's BYE could not be sent");
            self.metrics.sessions_bye_failed += 1;
        }
        true
    }

    /// The blade's own BYEs still in their transactions (tests).
    #[cfg(test)]
    pub(super) fn own_byes_open(&self) -> usize {
        self.own_byes.len()
    }
}
