//! The dialogs the blade keeps so that it can hang a call up itself
//! ([`super::hangup`]): for each answered call, what a BYE to each party
//! takes, copied out of the 2xx and moved by target refreshes.
//!
//! - **What is kept.** At the 2xx that confirms a session
//!   [`Proxy::remember_dialog`] copies out the From and To values (the
//!   tags), the callee's Contact and the route set towards each party as
//!   seen from this blade ([`Dialog`]), in one string: one allocation per
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
//!   RFC 3581, or its TCP connection). Over TCP that connection serves
//!   while it lasts; once it has closed, a new one goes to the party's
//!   Contact, as to a registered binding (`reached_at`), not to the
//!   closed connection's ephemeral port.
//! - **The target blade** keeps no session for a call it relays to an
//!   agent that another blade hosts, only, from the 2xx to an INVITE that
//!   carried a live grant's token, the agent's side of that dialog
//!   ([`Proxy::remember_hosted_dialog`]: the same [`Proxy::dialog_of`]
//!   as above, nothing towards the caller), by agent and grant. It goes
//!   when a BYE of that dialog passes, or when the grant ends by an
//!   unhost. A BYE from the caller's side comes first: the hosting blade
//!   sends the unhost only once that BYE's final response is back
//!   through this blade (or its transaction ended without one,
//!   [`Proxy::end_session_by_bye`]), so the agent is not free while the
//!   BYE is still on its way to its phone. A grant whose lease lapses (the
//!   hosting blade stopped renewing it: killed, or cut off for a whole
//!   lease), or whose hosting blade came back as a new run, first hangs
//!   up the agent's phone with the same BYE the caller side would send
//!   ([`Proxy::pump_released`]). Built from the 2xx as it
//!   left the agent, it goes straight to the agent's Contact where the
//!   INVITE went, with no Route (the agent's phone adds none). Each such
//!   record costs the answered call one allocation on that blade.
//!   A hosted joiner (or Replaces newcomer) is the caller of its leg: its
//!   blade, which sent the leg's INVITE on from the agent's phone, keeps
//!   the agent's side the same way when the 2xx passes, if the agent's
//!   grant is bound to the leg's Call-ID ([`Dialog::towards_caller`]).
//!   With several cores, the core that relayed the leg (the core of the
//!   extension it is addressed to) hands that record to the joiner's own,
//!   which holds the grant ([`super::AgentEvent::HostedLeg`]). A leg to
//!   an agent of the joiner's own blade passes that blade twice (T, S,
//!   T): the joiner's side is read from the Record-Route entries of the
//!   pass nearest the joiner ([`Pass`]).

use std::net::SocketAddr;

use smallvec::SmallVec;

use super::cross::{self, HostedDialog, HostedLeg};
use super::join::Named;
use super::route;
use super::{AgentEvent, Output, Proxy};
use crate::cluster::codec::Token;
use crate::sip::{Message, NameAddr};
use crate::transaction::Peer;

/// A confirmed dialog as the blade would address each party with a BYE of
/// its own (RFC 3261 §12.2.1.1): copied out of the 2xx, so that no buffer
/// is kept, and moved by target refreshes (re-INVITE, UPDATE). The
/// caller's remote target is its INVITE's Contact (or a refresh's), kept
/// in [`super::session::Session::caller_contact`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    /// Back to back, in one allocation (one per answered call): the 2xx's
    /// From value as written (the caller's URI and tag), its To value (the
    /// callee's), the callee's remote target (the 2xx's Contact URI), and
    /// the Route values of a request from here to the callee and of one to
    /// the caller, each in order and joined with ", " (empty: none).
    text: Box<str>,
    /// Where each part but the last ends in `text`.
    ends: [u32; 4],
    /// The first hop of a request from here to the callee.
    callee_hop: Option<Peer>,
    /// The same toward the caller.
    caller_hop: Option<Peer>,
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

/// A BYE of the blade's own, as it goes to one party: where, along which
/// route, and written as the other party would write it.
#[derive(Clone, Copy)]
pub(super) struct ByeTo<'a> {
    /// The Request-URI: the party's remote target.
    pub(super) target: &'a str,
    /// The Route values ("" for none).
    pub(super) route: &'a str,
    /// Where the BYE is sent first.
    pub(super) hop: Peer,
    /// The From and To values as written.
    pub(super) from: &'a str,
    pub(super) to: &'a str,
}

impl Dialog {
    /// A dialog of its five parts, in [`FROM`] … [`CALLER_ROUTE`] order.
    fn of_parts(parts: [&str; 5], callee_hop: Option<Peer>, caller_hop: Option<Peer>) -> Dialog {
        let mut text = DialogText::with_capacity(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            text.text.push_str(part);
            text.end_part();
        }
        text.finish(callee_hop, caller_hop)
    }

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
    pub(super) fn bye_to_caller<'a>(&'a self, target: &'a str) -> Option<ByeTo<'a>> {
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
        Dialog::of_parts(parts, self.caller_hop, None)
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
        *self = Dialog::of_parts(parts, callee_hop, self.caller_hop);
        true
    }

    /// The callee's tag: the To tag the 2xx gave.
    pub(super) fn callee_tag(&self) -> Option<&str> {
        NameAddr::parse_value(self.part(TO).as_bytes())?.tag()
    }

    /// Whether `addr` is where this dialog reaches a party: the first hop
    /// towards either, or the callee's remote target.
    pub(super) fn reaches(&self, addr: SocketAddr) -> bool {
        self.callee_hop.is_some_and(|p| p.addr == addr)
            || self.caller_hop.is_some_and(|p| p.addr == addr)
            || crate::sip::Uri::parse(self.part(CALLEE_TARGET).as_bytes())
                .and_then(|uri| route::uri_peer(&uri))
                .is_some_and(|p| p.addr == addr)
    }

    /// Whether the in-dialog request `msg` carries this dialog's two tags
    /// (in either direction): a BYE with other tags ends nothing.
    pub(super) fn has_tags_of(&self, msg: &Message) -> bool {
        let tag = |i: usize| NameAddr::parse_value(self.part(i).as_bytes()).and_then(|n| n.tag());
        super::session::has_tags(msg, tag(FROM), tag(TO))
    }
}

/// Where a party whose request came from `source` and whose remote
/// target is `target` gets a request with no route past this blade. Over
/// a stream: on that connection while it lasts (a party behind NAT is
/// reachable only through it), and once it has closed on a new one to
/// the target's address (RFC 3261 §12.2.1.1, §18.1.1), as the registrar
/// reaches a binding; not to the connection's remote port, which is
/// ephemeral unless the Contact names it (sipp `-t tn`). Over UDP: where
/// the request came from (RFC 3581).
fn reached_at(source: Peer, target: &str) -> Peer {
    if !source.transport.is_reliable() {
        return source;
    }
    let contact = crate::sip::Uri::parse(target.as_bytes())
        .and_then(|uri| route::uri_peer(&uri))
        .map(|p| p.addr);
    Peer {
        addr: contact.unwrap_or(source.addr),
        ..source
    }
}

/// Which of this blade's Record-Route entries in a 2xx stand for the
/// transaction it answers. A request passes a blade twice when another
/// blade sends it back: a supervisor's join leg to an agent of the same
/// blade whose call another blade hosts goes T, S, T, and its 2xx carries
/// T's entries twice, the first for the pass towards the agent, the last
/// for the pass from the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// The first run of ours: the pass nearest the callee.
    NearestCallee,
    /// The last run of ours: the pass nearest the caller.
    NearestCaller,
}

impl Proxy {
    /// The dialog that the 2xx `ok` confirms: From, To, the callee's
    /// Contact, and the route towards it from this blade (`downstream`,
    /// where the INVITE went, when none leads past it); with `caller`, the
    /// route towards the caller too (`caller`'s address, where its INVITE
    /// came from, when none leads past this blade). `None` without a
    /// Contact: no request can be sent in that dialog. `pass` says which
    /// of this blade's Record-Route entries stand for the transaction
    /// `ok` answers, when the request passed this blade twice.
    pub(super) fn dialog_of(
        &self,
        ok: &Message,
        downstream: Peer,
        caller: Option<Option<Peer>>,
        pass: Pass,
    ) -> Option<Dialog> {
        let contact = ok.contacts().next()?;
        let rrs: SmallVec<[NameAddr<'_>; 4]> = ok.record_routes().collect();
        let us = |r: &NameAddr<'_>| self.is_us(&r.uri());
        // This pass's entries: one run of ours (two for a change of
        // transport, RFC 5658), from `start` to `end`.
        let run = match pass {
            Pass::NearestCallee => rrs.iter().position(us).map(|start| {
                let len = rrs[start..].iter().take_while(|r| us(r)).count();
                (start, start + len)
            }),
            Pass::NearestCaller => rrs.iter().rposition(us).map(|last| {
                let len = rrs[..=last].iter().rev().take_while(|r| us(r)).count();
                (last + 1 - len, last + 1)
            }),
        };
        let (past_callee, towards_caller) = match run {
            Some((start, end)) => (&rrs[..start], &rrs[end..]),
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
            .map(|(source, target)| reached_at(*source, target));
        let Some(dialog) = self.dialog_of(ok, downstream, Some(caller_source), Pass::NearestCallee)
        else {
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
        let target = uri.as_str();
        let hop = source.or_else(|| route::uri_peer(&uri));
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
                    d.caller_hop = Some(reached_at(hop, target));
                }
                session.caller_contact = Some((hop, target.to_owned()));
            } else if session.to_tag.as_deref() == Some(tag) {
                d.refresh_callee(target, hop.map(|h| reached_at(h, target)));
            }
            return;
        }
        let agent = party.uri().user_str();
        if let (Some(c), Some(agent)) = (self.cluster.as_mut(), agent) {
            let hop = hop.map(|h| reached_at(h, target));
            c.refresh_hosted_dialog(&agent, msg.call_id(), tag, target, hop);
        }
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
    /// [`Proxy::remember_dialog`] instead. With several cores the
    /// joiner's grant lives on the joiner's own core, and its leg's
    /// transaction on the core of the extension the leg is addressed to:
    /// that core hands the record over ([`AgentEvent::HostedLeg`]).
    pub(super) fn remember_hosted_dialog(
        &mut self,
        id: usize,
        ok: &Message,
        downstream: Peer,
        out: &mut Output,
    ) {
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
                    let dialog = self.dialog_of(ok, downstream, None, Pass::NearestCallee)?;
                    Some((agent, Some(token), dialog))
                }),
            // From the agent's phone: a hosted joiner's leg, if the
            // caller's grant names this Call-ID (as its own, or as a
            // rider's: a transferee already hosted).
            None => request.from().uri().user_str().and_then(|agent| {
                let grant = c
                    .target
                    .grant_of(&agent)
                    .filter(|g| g.covers(ok.call_id()))
                    .map(|g| g.token);
                // A leg this core relayed for a joiner another core owns
                // (no session of it here): that core holds the grant, if
                // any.
                let hand_over = grant.is_none()
                    && !self.owns(&agent)
                    && self.sessions.get(ok.call_id()).is_none()
                    && Named::of(request).is_some();
                if grant.is_none() && !hand_over {
                    return None;
                }
                let target = request.contacts().next()?.uri();
                let caller = reached_at(pair.server.peer(), target.as_str());
                // The leg went on from here to the session's blade, which
                // may have sent it back through here to the agent it
                // joins: the entries nearest the joiner are this pass's.
                let dialog =
                    self.dialog_of(ok, downstream, Some(Some(caller)), Pass::NearestCaller)?;
                Some((agent, grant, dialog.towards_caller(target.as_str())))
            }),
        };
        let Some((agent, grant, dialog)) = kept else {
            return;
        };
        let Some(grant) = grant else {
            let agent = agent.into_owned();
            let leg = HostedLeg {
                extension: agent.clone(),
                call_id: ok.call_id().into(),
                dialog,
            };
            self.tell_owner(&agent, AgentEvent::HostedLeg(Box::new(leg)), out);
            return;
        };
        let agent = agent.into_owned();
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

    /// The record of a hosted joiner's leg that the core which relayed the
    /// leg handed over: kept if the joiner's grant here is still the
    /// leg's (it may have ended on the way).
    pub(super) fn keep_handed_leg(&mut self, leg: HostedLeg) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let grant = c
            .target
            .grant_of(&leg.extension)
            .filter(|g| g.covers(&leg.call_id))
            .map(|g| g.token);
        if let Some(grant) = grant {
            let HostedLeg {
                extension,
                call_id,
                dialog,
            } = leg;
            c.keep_hosted_dialog(
                extension,
                HostedDialog {
                    call_id,
                    grant,
                    dialog,
                },
            );
        }
    }

    /// T: the INVITEs waiting for a hosting blade's verdict (tests).
    #[cfg(test)]
    pub(super) fn awaiting_redirects(&self) -> usize {
        self.cluster.as_ref().map_or(0, |c| c.awaiting_redirects())
    }

    /// T: the hosted agents' dialogs kept (tests).
    #[cfg(test)]
    pub(super) fn hosted_dialogs_kept(&self) -> usize {
        self.cluster.as_ref().map_or(0, |c| c.hosted_dialogs())
    }
}
