//! BYEs the blade sends itself.
//!
//! Most sessions end with a phone's BYE, which the blade relays. Some end
//! without one: a session that outlives `max_call_secs` (its BYE was
//! lost, or a phone hung), one whose hosted party's blade was lost
//! (SPEC §2 step 7), and, on the hosted party's own blade, a call whose
//! hosting blade vanished, so that the lease lapsed (step 8). Freeing the
//! agents there would leave their phones in the call, so the blade then
//! tears the dialog down on them, as Kamailio's dialog module does on a
//! timeout: it sends each party it can reach an in-dialog BYE written as
//! the other party would write it (RFC 3261 §12.2.1.1, §15.1.1).
//!
//! - **What is kept.** At the 2xx that confirms a session
//!   [`Proxy::remember_dialog`] copies out the From and To values (the
//!   tags), the callee's Contact and the route set towards each party as
//!   seen from this blade ([`Dialog`]): a few small allocations per
//!   answered call, next to the dozen datagrams it sends and receives.
//! - **Target refresh** (RFC 3261 §12.2). A re-INVITE or UPDATE, or its
//!   2xx, whose Contact differs from the one kept moves its sender (or
//!   responder) there ([`Proxy::follow_target_refresh`]); where no route
//!   leads past this blade towards that party, the first hop moves too.
//!   Other requests are not looked at, and a refresh that keeps its
//!   Contact costs a comparison.
//! - **Route sets.** The 2xx's Record-Route holds, top first, the entries
//!   of the hops past this blade towards the callee, this blade's own
//!   (one, or two where it changed transport, RFC 5658), then those of
//!   the hops towards the caller. The caller's UA sends its requests along
//!   the reverse of that list, the callee's along it as it is (§12.1.1,
//!   §12.1.2); a request starting here takes the part of each past this
//!   blade. So a BYE to the callee of a cross-blade call carries
//!   `Route: <T>` and goes to the target blade, which takes it on to the
//!   agent's terminal as it would the caller's own BYE: that blade alone
//!   knows how to reach the terminal (its binding, behind NAT or on a TCP
//!   connection). Without a route past this blade (a local call, or a UA
//!   that copies no Record-Route) the BYE goes where the dialog's
//!   requests went: to the callee where the INVITE was sent, and to the
//!   caller where its INVITE came from (the address its responses go to,
//!   RFC 3581, or its TCP connection).
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
//! - **The target blade** keeps no session for a call it relays to an
//!   agent that another blade hosts, only, from the 2xx to an INVITE that
//!   carried a live grant's token, the agent's side of that dialog
//!   ([`Proxy::remember_hosted_dialog`]: the same [`Proxy::dialog_of`]
//!   as above, nothing towards the caller), by agent and grant. It goes
//!   when the grant ends by an unhost, or when a BYE of that dialog passes
//!   (its unhost may still be lost). A grant whose lease lapses (the
//!   hosting blade stopped renewing it: killed, or cut off for a whole
//!   lease) first hangs up the agent's phone with the same BYE the caller
//!   side would send ([`Proxy::pump_released`]). Built from the 2xx as it
//!   left the agent, it goes straight to the agent's Contact where the
//!   INVITE went, with no Route (the agent's phone adds none). Each such
//!   record costs the answered call a few small allocations on that blade.
//!   A hosted joiner (or Replaces newcomer) is the caller of its leg: its
//!   blade, which sent the leg's INVITE on from the agent's phone, keeps
//!   the agent's side the same way when the 2xx passes, if the agent's
//!   grant is bound to the leg's Call-ID ([`Dialog::towards_caller`]);
//!   with several cores, only where that INVITE's core (the core of the
//!   extension it is addressed to) is the joiner's own, which holds the
//!   grant.

use std::fmt::Write;
use std::time::Duration;

use bytes::Bytes;
use smallvec::SmallVec;

use super::cross::{self, HostedDialog};
use super::route::{self, BRANCH_PREFIX};
use super::session::{Dialog, Phase};
use super::{Output, Proxy};
use crate::cluster::codec::Token;
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
}

/// Appends route entries as one header value, in the order given
/// (nothing for none).
fn push_route<'a, 'm: 'a>(text: &mut String, entries: impl Iterator<Item = &'a NameAddr<'m>>) {
    for (i, r) in entries.enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        text.push_str(&String::from_utf8_lossy(r.as_bytes()));
    }
}

/// A [`Dialog`]'s text as it is written, part after part.
struct DialogText {
    text: String,
    ends: [u32; 4],
    parts: usize,
}

impl DialogText {
    fn with_capacity(len: usize) -> DialogText {
        DialogText {
            text: String::with_capacity(len),
            ends: [0; 4],
            parts: 0,
        }
    }

    /// Ends the part being written; the last one needs no end.
    fn end_part(&mut self) {
        if let Some(end) = self.ends.get_mut(self.parts) {
            *end = self.text.len() as u32;
        }
        self.parts += 1;
    }

    fn finish(self, callee_hop: Option<Peer>, caller_hop: Option<Peer>) -> Dialog {
        Dialog {
            text: self.text.into_boxed_str(),
            ends: self.ends,
            callee_hop,
            caller_hop,
        }
    }
}

/// The parts of a [`Dialog`]'s text, in order.
const FROM: usize = 0;
const TO: usize = 1;
const CALLEE_TARGET: usize = 2;
const CALLEE_ROUTE: usize = 3;
const CALLER_ROUTE: usize = 4;

/// Why a session is hung up, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HangUp {
    /// It outlived `max_call_secs`.
    Expired,
    /// Its hosted party's blade was lost.
    PeerLost,
}

impl HangUp {
    fn as_str(self) -> &'static str {
        match self {
            HangUp::Expired => "max_call_secs",
            HangUp::PeerLost => "peer lost",
        }
    }
}

/// A BYE of the blade's own, as it goes to one party: where, along which
/// route, and written as the other party would write it.
#[derive(Clone, Copy)]
pub(super) struct ByeTo<'a> {
    /// The Request-URI: the party's remote target.
    target: &'a str,
    /// The Route values ("" for none).
    route: &'a str,
    /// Where the BYE is sent first.
    hop: Peer,
    /// The From and To values as written.
    from: &'a str,
    to: &'a str,
}

impl Dialog {
    /// Part `i` of the text ([`FROM`] … [`CALLER_ROUTE`]).
    fn part(&self, i: usize) -> &str {
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] as usize,
        };
        let end = self.ends.get(i).map_or(self.text.len(), |&e| e as usize);
        self.text.get(start..end).unwrap_or_default()
    }

    /// The BYE to the callee, as from the caller; `None` when there is no
    /// way to reach it.
    pub(super) fn bye_to_callee(&self) -> Option<ByeTo<'_>> {
        Some(ByeTo {
            target: self.part(CALLEE_TARGET),
            route: self.part(CALLEE_ROUTE),
            hop: self.callee_hop?,
            from: self.part(FROM),
            to: self.part(TO),
        })
    }

    /// The BYE to the caller, whose remote target is `target` (its
    /// INVITE's Contact), as from the callee.
    fn bye_to_caller<'a>(&'a self, target: &'a str) -> Option<ByeTo<'a>> {
        Some(ByeTo {
            target,
            route: self.part(CALLER_ROUTE),
            hop: self.caller_hop?,
            from: self.part(TO),
            to: self.part(FROM),
        })
    }

    /// The same dialog seen from its callee: the caller, whose remote
    /// target is `target`, is addressed as the callee is
    /// ([`Dialog::bye_to_callee`]: a BYE as from the callee) and its
    /// tag is [`Dialog::callee_tag`]. For a hosted agent that placed
    /// the call, whose blade keeps only its side ([`HostedDialog`]).
    pub(super) fn towards_caller(&self, target: &str) -> Dialog {
        let parts = [
            self.part(TO),
            self.part(FROM),
            target,
            self.part(CALLER_ROUTE),
            "",
        ];
        let mut text = DialogText::with_capacity(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            text.text.push_str(part);
            text.end_part();
        }
        text.finish(self.caller_hop, None)
    }

    /// Whether a request from here reaches the caller with no Route.
    fn caller_direct(&self) -> bool {
        self.part(CALLER_ROUTE).is_empty()
    }

    /// The callee moved to `target` (a target refresh), reached at `hop`
    /// when no route leads past this blade towards it. Returns whether
    /// anything changed.
    pub(super) fn refresh_callee(&mut self, target: &str, hop: Option<Peer>) -> bool {
        if self.part(CALLEE_TARGET) == target {
            return false;
        }
        let callee_hop = match hop {
            Some(hop) if self.part(CALLEE_ROUTE).is_empty() => Some(hop),
            _ => self.callee_hop,
        };
        let parts = [FROM, TO, CALLEE_TARGET, CALLEE_ROUTE, CALLER_ROUTE].map(|i| {
            if i == CALLEE_TARGET {
                target
            } else {
                self.part(i)
            }
        });
        let mut text = DialogText::with_capacity(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            text.text.push_str(part);
            text.end_part();
        }
        *self = text.finish(callee_hop, self.caller_hop);
        true
    }

    /// The callee's tag: the To tag the 2xx gave.
    pub(super) fn callee_tag(&self) -> Option<&str> {
        NameAddr::parse_value(self.part(TO).as_bytes())?.tag()
    }
}

impl Proxy {
    /// The dialog that the 2xx `ok` confirms: From, To, the callee's
    /// Contact, and the route towards it from this blade (`downstream`,
    /// where the INVITE went, when none leads past it); with `caller`, the
    /// route towards the caller too (`caller`'s address, where its INVITE
    /// came from, when none leads past this blade). `None` without a
    /// Contact: no request can be sent in that dialog.
    pub(super) fn dialog_of(
        &self,
        ok: &Message,
        downstream: Peer,
        caller: Option<Option<Peer>>,
    ) -> Option<Dialog> {
        let contact = ok.contacts().next()?;
        let rrs: SmallVec<[NameAddr<'_>; 4]> = ok.record_routes().collect();
        let (past_callee, towards_caller) = match rrs.iter().position(|r| self.is_us(&r.uri())) {
            Some(first) => {
                let ours = rrs[first..]
                    .iter()
                    .take_while(|r| self.is_us(&r.uri()))
                    .count();
                (&rrs[..first], &rrs[first + ours..])
            }
            None => (&rrs[..], &[][..]),
        };
        let past_caller = if caller.is_some() {
            towards_caller
        } else {
            &[]
        };
        let (from, to) = (ok.from(), ok.to());
        let target = contact.uri().as_str();
        let routes: usize = rrs.iter().map(|r| r.as_bytes().len() + 2).sum();
        let len = from.as_bytes().len() + to.as_bytes().len() + target.len() + routes;
        let callee_hop = match past_callee.last() {
            Some(next) => route::uri_peer(&next.uri()),
            None => Some(downstream),
        };
        let caller_hop = match past_caller.first() {
            Some(next) => route::uri_peer(&next.uri()),
            None => caller.flatten(),
        };
        let mut text = DialogText::with_capacity(len);
        text.text
            .push_str(&String::from_utf8_lossy(from.as_bytes()));
        text.end_part();
        text.text.push_str(&String::from_utf8_lossy(to.as_bytes()));
        text.end_part();
        text.text.push_str(target);
        text.end_part();
        push_route(&mut text.text, past_callee.iter().rev());
        text.end_part();
        push_route(&mut text.text, past_caller.iter());
        Some(text.finish(callee_hop, caller_hop))
    }

    /// At the 2xx `ok` that confirmed session `call_id`, whose INVITE went
    /// to `downstream`: keeps what a BYE to each party takes (see the
    /// module's notes).
    pub(super) fn remember_dialog(&mut self, call_id: &str, ok: &Message, downstream: Peer) {
        let caller_source = self
            .sessions
            .get(call_id)
            .and_then(|s| s.caller_contact.as_ref())
            .map(|c| c.0);
        let Some(dialog) = self.dialog_of(ok, downstream, Some(caller_source)) else {
            return;
        };
        if let Some(session) = self.sessions.get_mut(call_id) {
            session.dialog = Some(Box::new(dialog));
        }
    }

    /// A target refresh (RFC 3261 §12.2): `msg` is an in-dialog re-INVITE
    /// or UPDATE that came from `source` (its sender moves to its
    /// Contact), or, with `source` `None`, a 2xx to one (its responder
    /// does). The kept dialog follows, so the blade's own BYE goes to the
    /// party's new Contact: the session's ([`Proxy::remember_dialog`]),
    /// or on a hosted agent's blade the agent's
    /// ([`Proxy::remember_hosted_dialog`]). Where no route leads past this
    /// blade towards the party, the BYE's first hop moves too: to where
    /// the request came from, or to the 2xx's Contact. Nothing changes
    /// when the Contact is the one kept, or the party is not one of a kept
    /// dialog's. The caller checks the method.
    pub(super) fn follow_target_refresh(&mut self, msg: &Message, source: Option<Peer>) {
        let Some(contact) = msg.contacts().next() else {
            return;
        };
        let party = if source.is_some() {
            msg.from()
        } else {
            msg.to()
        };
        let Some(tag) = party.tag() else {
            return;
        };
        let uri = contact.uri();
        let hop = source.or_else(|| route::uri_peer(&uri));
        let target = uri.as_str();
        if let Some(session) = self.sessions.get_mut(msg.call_id()) {
            let Some(d) = session.dialog.as_deref_mut() else {
                return;
            };
            if tag == session.from_tag {
                let known = session.caller_contact.as_ref();
                if known.is_some_and(|c| c.1 == target) {
                    return;
                }
                // Behind a hop before this blade, the caller is still
                // reached through that hop.
                let (direct, known) = (d.caller_direct(), known.map(|c| c.0));
                let hop = if direct { hop.or(known) } else { known.or(hop) };
                let Some(hop) = hop else {
                    return;
                };
                if direct {
                    d.caller_hop = Some(hop);
                }
                session.caller_contact = Some((hop, target.to_owned()));
            } else if session.to_tag.as_deref() == Some(tag) {
                d.refresh_callee(target, hop);
            }
            return;
        }
        let agent = party.uri().user_str();
        if let (Some(c), Some(agent)) = (self.cluster.as_mut(), agent) {
            c.refresh_hosted_dialog(agent, msg.call_id(), tag, target, hop);
        }
    }

    /// The blade ends session `call_id` itself (`why`): each party of its
    /// dialog, if confirmed and not hung up already, gets a BYE of the
    /// blade's own where it can be reached. Call before the session is
    /// closed.
    pub(super) fn hang_up(&mut self, now: Duration, call_id: &str, why: HangUp, out: &mut Output) {
        let Some(session) = self.sessions.get(call_id) else {
            return;
        };
        // `left`: the dialog itself ended (its BYE passed) while join legs
        // lived on.
        if session.phase != Phase::Confirmed || session.left.is_some() {
            return;
        }
        let Some(d) = session.dialog.clone() else {
            return;
        };
        let caller_target = session.caller_contact.as_ref().map(|c| c.1.clone());
        let (caller, callee) = (session.caller.clone(), session.callee.clone());
        let parties = [
            (
                caller,
                caller_target.as_deref().and_then(|t| d.bye_to_caller(t)),
            ),
            (callee, d.bye_to_callee()),
        ];
        for (agent, bye) in parties {
            let Some(bye) = bye else {
                tracing::debug!(%call_id, %agent, "no way to address a BYE to this party");
                continue;
            };
            if self.behind_lost_peer(bye.hop) {
                tracing::debug!(%call_id, %agent, "party behind a lost blade: no BYE");
                continue;
            }
            tracing::debug!(%call_id, %agent, why = why.as_str(), "sending BYE");
            self.send_own_bye(now, call_id, &bye, out);
        }
    }

    /// Whether `hop` is a peer blade whose link is down.
    fn behind_lost_peer(&self, hop: Peer) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.link_down_at(hop.addr.ip()))
    }

    /// Sends `bye` in dialog `call_id` over a client transaction of its
    /// own, with a fresh Via and [`BYE_CSEQ`], and counts it.
    pub(super) fn send_own_bye(
        &mut self,
        now: Duration,
        call_id: &str,
        bye: &ByeTo,
        out: &mut Output,
    ) {
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
        let msg = match Message::parse(data.clone()) {
            Ok(msg) => msg,
            Err(err) => {
                // Parts copied from a 2xx that parsed: not expected.
                tracing::warn!(%call_id, %err, "could not build a BYE");
                return;
            }
        };
        let (tx, first) = ClientTx::start(now, msg, data, hop, self.settings.timers);
        out.transmits.push(first);
        self.metrics.sessions_bye_sent += 1;
        self.own_byes.insert(
            n,
            OwnBye {
                tx,
                generation: 0,
                call_id: call_id.into(),
            },
        );
        self.reschedule_own_bye(n);
    }

    /// T: at the 2xx `ok` to the INVITE of transaction `id`, sent on to
    /// `downstream`: if that INVITE came from a hosting blade with the
    /// token of a live grant (SPEC §2 step 5), keeps the hosted agent's
    /// side of the dialog until the grant ends ([`HostedDialog`]), so
    /// that a lease that lapses hangs up the agent's phone. Likewise on
    /// the blade of a hosted joiner (or Replaces newcomer), which sent
    /// its agent's INVITE on to the session's blade: the agent is the
    /// caller there, hosted under a grant bound to this very Call-ID (the
    /// leg's). A session of this blade's own is kept by
    /// [`Proxy::remember_dialog`] instead.
    pub(super) fn remember_hosted_dialog(&mut self, id: usize, ok: &Message, downstream: Peer) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        // Gone at a retransmitted 2xx: the first one kept the dialog.
        let Some(pair) = self.txs.get(id) else {
            return;
        };
        let Some(request) = pair.request.as_deref() else {
            return;
        };
        let Some(uri) = request.request_uri() else {
            return;
        };
        let kept = match cross::hosting_token(&uri).and_then(Token::from_hex) {
            // The grant of the INVITE's token, still live: not a join
            // handed over by a blade that hosts the agent (no grant of
            // this blade's).
            Some(token) => uri
                .user_str()
                .filter(|agent| {
                    c.target
                        .grant_of(agent)
                        .is_some_and(|g| g.token.matches(&token))
                })
                .and_then(|agent| {
                    let dialog = self.dialog_of(ok, downstream, None)?;
                    Some((agent, token, dialog))
                }),
            // From the agent's phone: a hosted joiner's leg, if the
            // caller's grant names this Call-ID.
            None => request.from().uri().user_str().and_then(|agent| {
                let grant = c.target.grant_of(agent)?;
                if grant.call_id != ok.call_id() {
                    return None;
                }
                let target = request.contacts().next()?.uri();
                let dialog = self.dialog_of(ok, downstream, Some(Some(pair.server.peer())))?;
                Some((agent, grant.token, dialog.towards_caller(target.as_str())))
            }),
        };
        let Some((agent, grant, dialog)) = kept else {
            return;
        };
        let agent = agent.to_owned();
        let call_id = ok.call_id().into();
        if let Some(c) = self.cluster.as_mut() {
            c.keep_hosted_dialog(
                agent,
                HostedDialog {
                    call_id,
                    grant,
                    dialog,
                },
            );
        }
    }

    /// T: grants that ended, as the target reports them: the dialogs kept
    /// for each go with it. Those of a grant whose lease lapsed (its
    /// hosting blade vanished, or stopped renewing, without an unhost) are
    /// hung up first: the agent's phone gets a BYE of this blade's own, as
    /// from the caller. Call after anything that may end a grant.
    pub(super) fn pump_released(&mut self, now: Duration, out: &mut Output) {
        loop {
            let Some(c) = self.cluster.as_mut() else {
                return;
            };
            let Some(released) = c.target.poll_released() else {
                return;
            };
            let grant = released.grant;
            let dialogs = c.take_hosted_dialogs(&grant.extension, &grant.token);
            if !released.lapsed {
                continue;
            }
            for d in dialogs {
                let Some(bye) = d.dialog.bye_to_callee() else {
                    continue;
                };
                tracing::info!(
                    call_id = %d.call_id,
                    agent = %grant.extension,
                    source = %grant.source,
                    "hosting lease lapsed mid-call: BYE to the agent's phone"
                );
                self.send_own_bye(now, &d.call_id, &bye, out);
            }
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
        }
        self.reschedule_own_bye(n);
        true
    }

    /// An own BYE that could not be sent (no TCP connection): given up
    /// now rather than at timer F. Returns whether `msg` was one.
    pub(super) fn own_bye_unsent(&mut self, msg: &Message) -> bool {
        let Some(n) = msg.top_via().branch().and_then(|b| self.own_bye_of(b)) else {
            return false;
        };
        if let Some(bye) = self.own_byes.remove(&n) {
            tracing::info!(call_id = %bye.call_id, "the blade's BYE could not be sent");
            self.metrics.sessions_bye_failed += 1;
        }
        true
    }

    /// T: the hosted agents' dialogs kept (tests).
    #[cfg(test)]
    pub(super) fn hosted_dialogs_kept(&self) -> usize {
        self.cluster.as_ref().map_or(0, |c| c.hosted_dialogs())
    }

    /// The blade's own BYEs still in their transactions (tests).
    #[cfg(test)]
    pub(super) fn own_byes_open(&self) -> usize {
        self.own_byes.len()
    }
}
