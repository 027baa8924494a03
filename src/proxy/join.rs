//! Many-party sessions (SPEC §2 step 9): an agent joins a live call with an
//! INVITE carrying a Join header (RFC 3911): a supervisor monitoring or
//! barging in, or a third party brought into a conference. And the call
//! that takes another's place: an INVITE carrying a Replaces header
//! (RFC 3891), for attended transfer and call pickup.
//!
//! The blade and core that own the session handle every join into it, and
//! host the joiner when it is registered on another blade, by the same
//! steps as a called agent: the organiser's blade hosts every added
//! participant. A Join INVITE reaches that blade:
//! - directly, when the joiner is registered there;
//! - relayed by the joiner's blade to the target's blade (with leave, as a
//!   MESSAGE is), when the target is registered elsewhere;
//! - handed over by the target's blade with its grant's token, when the
//!   target is hosted by the session's blade (SPEC §2 step 6: only the
//!   hosting blade decides on a hosted agent).
//!
//! The join leg then goes to the target's terminal, or, for a hosted
//! target, to the target's blade with the session's hosting token.
//!
//! A Replaces INVITE takes the same way to the same place, and is checked
//! against the dialog it names by RFC 3891 §3's rules rather than
//! RFC 3911's. It opens a session of its own between the newcomer and the
//! target (not a join leg): the target is in two calls until its phone
//! ends the replaced dialog with a BYE (or a CANCEL), which frees the
//! replaced dialog's other party. A target hosted in the replaced session
//! stays hosted under that session's grant (bound to its Call-ID on the
//! target's blade): the new session rides on it, listed in the replaced
//! session's `joined`, so the grant is released only when both have ended.
//!
//! Only INVITEs that carry a Join or Replaces header come here: the check
//! is one pass over the message's unknown headers.

use std::borrow::Cow;
use std::time::Duration;

use super::cross::{TOKEN_PARAM, Waiting};
use super::session::{Hosted, Phase, Session};
use super::{Output, Proxy};
use crate::registrar::Refusal;
use crate::registrar::location::AgentState;
use crate::sip::{Join, Message};
use crate::transaction::Peer;

/// The dialog a Join or Replaces header names, owned (the request moves
/// on while this is still needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Named {
    pub call_id: String,
    from_tag: String,
    to_tag: String,
    early_only: bool,
    /// A Replaces (RFC 3891), not a Join.
    pub replaces: bool,
}

impl Named {
    /// The Join or Replaces of `msg`: `None` without either, `Some(None)`
    /// when malformed, repeated (RFC 3911 §4 and RFC 3891 §3 allow one),
    /// or both are there (RFC 3891 §3: 400).
    pub(super) fn of(msg: &Message) -> Option<Option<Named>> {
        let mut found = None;
        let mut count = 0;
        // Raw fields: most messages have neither header, and naming every
        // field as text would check each name's UTF-8 first.
        let src = msg.as_bytes();
        for h in msg.header_fields() {
            if h.name != crate::sip::HeaderName::Other {
                continue;
            }
            let name = h.name_span.of(src);
            let replaces = name.eq_ignore_ascii_case(b"Replaces");
            if replaces || name.eq_ignore_ascii_case(b"Join") {
                count += 1;
                found = Some((h.value.of(src), replaces));
            }
        }
        let (value, replaces) = found?;
        if count > 1 {
            return Some(None);
        }
        Some(Join::parse(value).map(|j| Named {
            call_id: j.call_id.to_owned(),
            from_tag: j.from_tag.to_owned(),
            to_tag: j.to_tag.to_owned(),
            // A Replaces flag only: a Join's grammar has no such
            // parameter (RFC 3911 §7), so there it is a generic one.
            early_only: replaces && j.early_only,
            replaces,
        }))
    }

    fn join(&self) -> Join<'_> {
        Join {
            call_id: &self.call_id,
            to_tag: &self.to_tag,
            from_tag: &self.from_tag,
            early_only: self.early_only,
        }
    }
}

/// How long a Join that names no dialog known here waits for the
/// call-state notices of other cores: they go out on the next timer grain
/// (50 ms, `runtime::core`), so twice that covers them.
const NOTICES_LAG: Duration = Duration::from_millis(100);

/// The answer to a Join that names no dialog sipblade can join (RFC 3911
/// §4).
fn no_such_dialog() -> Refusal {
    Refusal::new(481, "Call/Transaction Does Not Exist")
}

/// RFC 3911 §4: only a confirmed dialog, named by both its tags, with the
/// target still in it, and the joiner not.
fn joinable(dialog: &Session, named: &Named, joiner: &str, target: &str) -> Result<(), Refusal> {
    let ok = dialog.phase == Phase::Confirmed
        && dialog.left.is_none()
        && dialog
            .to_tag
            .as_deref()
            .is_some_and(|to| named.join().names(&named.call_id, &dialog.from_tag, to))
        && dialog.has_party(target)
        && !dialog.has_party(joiner);
    if ok { Ok(()) } else { Err(no_such_dialog()) }
}

/// RFC 3891 §3, as far as the blade can tell: a dialog the target is (still)
/// a party of, and the newcomer not; a confirmed one named by both its
/// tags (in either order, as for a Join), unless `early-only` asks for an
/// early one (486); an early one only where the target initiated it (its
/// caller: call pickup of its own ringing call), named by the caller's tag
/// as the target's own (to-tag). The other tag of an early dialog is the
/// callee's provisional's, which the blade does not keep: the phone checks
/// it. A dialog whose BYE has passed is gone (481; RFC 3891 allows 603,
/// but the blade cannot tell such a dialog from one it never saw once it
/// has forgotten it). Join legs whose target is hosted are not replaced:
/// the grant they ride is the joiner's, which the leg's end releases.
fn replaceable(dialog: &Session, named: &Named, joiner: &str, target: &str) -> Result<(), Refusal> {
    if dialog.left.is_some() || !dialog.has_party(target) || dialog.has_party(joiner) {
        return Err(no_such_dialog());
    }
    if dialog.joins.is_some() && dialog.hosted.is_some() {
        return Err(no_such_dialog());
    }
    match dialog.phase {
        Phase::Confirmed => {
            let named_right = dialog
                .to_tag
                .as_deref()
                .is_some_and(|to| named.join().names(&named.call_id, &dialog.from_tag, to));
            if !named_right {
                Err(no_such_dialog())
            } else if named.early_only {
                Err(Refusal::new(486, "Busy Here"))
            } else {
                Ok(())
            }
        }
        Phase::Setup if dialog.caller == target && named.to_tag == dialog.from_tag => Ok(()),
        Phase::Setup => Err(no_such_dialog()),
    }
}

impl Proxy {
    /// An out-of-dialog INVITE from `joiner` for `target` with a Join (or a
    /// Replaces) naming `named`. `handed_over`: it came from a peer blade
    /// (relayed or handed over), so it is not relayed again. A Replaces
    /// that names no dialog known here, for a target in a call, is 481 as
    /// a Join is: the blade knows its agents' calls, and letting it
    /// through would ring a busy agent on the strength of a header.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn route_join(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        joiner: &str,
        target: &str,
        named: &Named,
        handed_over: bool,
        out: &mut Output,
    ) {
        if self.sessions.get(&named.call_id).is_some() {
            return self.join_here(now, source, msg, joiner, target, named, out);
        }
        if let Some(&core) = self.remote_sessions.get(&named.call_id) {
            // The target is this core's agent, but the call's session lives
            // on the core of its other party: the transaction will live
            // there too, so its retransmissions, ACK and CANCEL follow.
            self.remember_handoff(now, &msg, core);
            out.handoffs.push(super::Handoff {
                core,
                source,
                msg,
                join: true,
            });
            return;
        }
        let record = self.registrar.location().get(target);
        let hosted_by = record.and_then(|r| match &r.state {
            AgentState::Hosted { by } => Some(by.clone()),
            _ => None,
        });
        if let Some(by) = hosted_by {
            return self.hand_join_to_host(now, source, msg, target, &by, out);
        }
        let registered_here = record.is_some_and(|r| r.binding.is_some());
        if !registered_here && !handed_over && self.cluster.is_some() {
            return self.relay_remote(now, source, msg, target, out);
        }
        if registered_here && self.settings.cores > 1 {
            // The call may be new: that this core's agent is in it, and
            // on which core, comes with the call-state notices, which
            // cores batch (a timer grain). A Join sent as the call is
            // answered (a recorder's, say) waits for them before 481.
            let until = now + NOTICES_LAG;
            let id = self.hold(now, source, msg, Waiting::Notices { until }, out);
            return self.reschedule(id);
        }
        self.refuse(now, source, msg, &no_such_dialog(), out);
    }

    /// A Join held for the call-state notices ([`Waiting::Notices`]): sent
    /// on if the dialog it names is known by now, else answered 481.
    pub(super) fn retry_join(&mut self, now: Duration, id: usize, out: &mut Output) {
        let named = self
            .txs
            .get(id)
            .and_then(|pair| pair.request.as_deref())
            .and_then(Named::of)
            .flatten()
            .filter(|n| {
                self.sessions.get(&n.call_id).is_some()
                    || self.remote_sessions.contains_key(&n.call_id)
            });
        let Some(named) = named else {
            self.answer_pending(now, id, 481, out);
            return self.reschedule(id);
        };
        let Some(pair) = self.take_tx(id) else { return };
        let source = pair.server.peer();
        let Some(msg) = pair.request else { return };
        let joiner = msg.from().uri().user_str().unwrap_or_default().into_owned();
        let target = msg
            .request_uri()
            .and_then(|u| u.user_str())
            .unwrap_or_default()
            .into_owned();
        self.route_join(now, source, *msg, &joiner, &target, &named, false, out);
    }

    /// A Join (or Replaces) INVITE another core of this blade checked and
    /// handed over ([`super::Output::handoffs`]): this core owns the
    /// session it names.
    pub fn handle_join_handoff(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        out: &mut Output,
    ) {
        let joiner = msg.from().uri().user_str().map(Cow::into_owned);
        let target = msg
            .request_uri()
            .and_then(|u| u.user_str())
            .map(Cow::into_owned);
        let (Some(joiner), Some(target), Some(Some(named))) = (joiner, target, Named::of(&msg))
        else {
            return self.refuse(now, source, msg, &no_such_dialog(), out);
        };
        self.join_here(now, source, msg, &joiner, &target, &named, out);
    }

    /// T: a Join for an agent that blade `by` hosts goes to `by`, which
    /// owns the session; the grant's token shows `by` that this blade may
    /// hand it over.
    fn hand_join_to_host(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        target: &str,
        by: &str,
        out: &mut Output,
    ) {
        let dest = self.cluster.as_ref().and_then(|c| {
            let grant = c.target.grant_of(target)?;
            let sip = c.peer(by)?.sip;
            Some((
                sip,
                format!("sip:{target}@{sip};{TOKEN_PARAM}={}", grant.token.to_hex()),
            ))
        });
        let Some((sip, uri)) = dest else {
            let busy = Refusal::new(486, "Busy Here");
            return self.refuse(now, source, msg, &busy, out);
        };
        self.forward(now, source, msg, Peer::udp(sip), Some(&uri), 0, true, out);
    }

    /// The session's own core: checks the Join (or Replaces) against the
    /// dialog it names, opens the join leg (or the replacing session), and
    /// sends it on, hosting the joiner first when it is registered on
    /// another blade.
    #[allow(clippy::too_many_arguments)]
    fn join_here(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        joiner: &str,
        target: &str,
        named: &Named,
        out: &mut Output,
    ) {
        let Some(dialog) = self.sessions.get(&named.call_id) else {
            return self.refuse(now, source, msg, &no_such_dialog(), out);
        };
        let check = if named.replaces {
            replaceable(dialog, named, joiner, target)
        } else {
            joinable(dialog, named, joiner, target)
        };
        if let Err(refusal) = check {
            return self.refuse(now, source, msg, &refusal, out);
        }
        // A replacing session whose target the replaced one hosts rides on
        // that session's grant ([`super::join`]).
        let rides = named.replaces
            && dialog
                .hosted
                .as_ref()
                .is_some_and(|h| h.extension == target);
        let main = match (&dialog.joins, named.replaces) {
            (Some(main), false) => main.clone(),
            _ => named.call_id.clone(),
        };
        let leg_id = msg.call_id().to_owned();
        if self.sessions.get(&leg_id).is_some() {
            let reused = Refusal::new(400, "Bad Request");
            return self.refuse(now, source, msg, &reused, out);
        }
        let Some(dest) = self.join_dest(&named.call_id, target) else {
            let gone = Refusal::new(480, "Temporarily Unavailable");
            return self.refuse(now, source, msg, &gone, out);
        };
        let joiner_here = self.logged_in_on_blade(joiner);
        let leg = self.open_session(now, source, &msg, joiner, target, out);
        if named.replaces {
            leg.replaces = Some(main.clone());
        } else {
            leg.joins = Some(main.clone());
        }
        leg.join_dest = Some(dest.clone());
        if !joiner_here {
            leg.hosted = Some(Hosted {
                extension: joiner.to_owned(),
                blade: None,
                info: None,
            });
        }
        if named.replaces {
            // The target is in this call too now: still in a call when its
            // phone hangs the replaced one up.
            self.agent_in_call(target, &leg_id, out);
        }
        if !named.replaces || rides {
            if let Some(main) = self.sessions.get_mut(&main) {
                main.joined.push(leg_id.clone());
            }
        }
        tracing::debug!(session = %main, %joiner, %target, hosted = !joiner_here,
            replaces = named.replaces, "join");
        if joiner_here {
            let (peer, uri) = dest;
            self.forward(now, source, msg, peer, Some(&uri), 0, true, out);
            return;
        }
        let id = self.hold(now, source, msg, Waiting::Grant { since: now }, out);
        self.start_hosting(now, id, &leg_id, joiner, true, out);
    }

    /// Where a join leg for `target`, a party of the dialog `dialog_id`,
    /// goes: through the target's blade with the hosting token when this
    /// blade hosts it, else to its terminal.
    fn join_dest(&self, dialog_id: &str, target: &str) -> Option<(Peer, String)> {
        let dialog = self.sessions.get(dialog_id)?;
        if dialog
            .hosted
            .as_ref()
            .is_some_and(|h| h.extension == target)
        {
            let c = self.cluster.as_ref()?;
            let hosting = c.source.hosting(dialog_id, target)?;
            let sip = c.peer(&hosting.peer)?.sip;
            let uri = format!(
                "sip:{target}@{sip};{TOKEN_PARAM}={}",
                hosting.token.to_hex()
            );
            return Some((Peer::udp(sip), uri));
        }
        if dialog.callee == target {
            let binding = self.registrar.location().get(target)?.binding.as_ref()?;
            return Some((binding.peer, binding.uri.clone()));
        }
        dialog.caller_contact.clone()
    }

    /// A join leg ended: its joiner leaves (and goes back to its blade if
    /// hosted); the session it joined ends with it when that was the last
    /// of it.
    pub(super) fn end_join_leg(
        &mut self,
        now: Duration,
        leg_id: &str,
        leg: super::session::Session,
        main: &str,
        out: &mut Output,
    ) {
        let mut leg = leg;
        if leg.left.is_none() && self.is_join_target(main, leg_id, &leg.caller) {
            // A join of this leg targets its joiner, which stays in that
            // leg (hosted under this leg's grant) until it ends too.
            leg.left = Some(vec![leg.callee.clone()]);
            self.sessions.restore(leg_id, leg);
            return self.free_unconnected(now, main, out);
        }
        if leg.hosted.is_some() {
            self.release_hosting(now, leg_id, out);
        }
        self.agent_free(&leg.caller, leg_id, out);
        let finish = match self.sessions.get_mut(main) {
            Some(session) => {
                session.joined.retain(|j| j != leg_id);
                session.left.is_some() && session.joined.is_empty()
            }
            None => false,
        };
        if finish {
            return self.end_session(now, main, out);
        }
        // Legs kept for their joiner, which this leg targeted: done now
        // unless another leg still targets it.
        let waiting: Vec<String> = self
            .sessions
            .get(main)
            .map(|m| {
                m.joined
                    .iter()
                    .filter(|j| {
                        self.sessions
                            .get(j.as_str())
                            .is_some_and(|l| l.left.is_some())
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for j in waiting {
            let joiner = self.sessions.get(&j).map(|l| l.caller.clone());
            if joiner.is_some_and(|c| !self.is_join_target(main, &j, &c)) {
                self.end_session(now, &j, out);
            }
        }
        self.free_unconnected(now, main, out);
    }

    /// Whether a live join leg of `main` other than `except` targets
    /// `extension`.
    fn is_join_target(&self, main: &str, except: &str, extension: &str) -> bool {
        self.sessions.get(main).is_some_and(|m| {
            m.joined.iter().any(|j| {
                j != except
                    && self
                        .sessions
                        .get(j)
                        .is_some_and(|l| l.left.is_none() && l.callee == extension)
            })
        })
    }

    /// A call whose own dialog has ended, some of its join legs still up:
    /// each of its parties that no leg connects any more leaves now (a
    /// hosted one goes back), not with the session's last leg.
    fn free_unconnected(&mut self, now: Duration, main: &str, out: &mut Output) {
        let Some(session) = self.sessions.get(main).filter(|s| s.left.is_some()) else {
            return;
        };
        let leaving: Vec<String> = self
            .unconnected_parties(session)
            .iter()
            .map(|&p| p.to_owned())
            .collect();
        let hosted = session.hosted.as_ref().map(|h| h.extension.clone());
        let parties: Vec<&str> = leaving.iter().map(String::as_str).collect();
        self.let_go(now, main, hosted.as_deref(), &parties, out);
        if let Some(session) = self.sessions.get_mut(main) {
            session.left.get_or_insert_default().extend(leaving);
        }
    }
}
