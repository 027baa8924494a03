//! Calls' agent states: how a session's end frees its agents (and hands a
//! hosted one back), and the call-state notices between cores that keep an
//! agent's record, on its own core, in step with the sessions elsewhere.

use std::time::Duration;

use smallvec::SmallVec;

use super::hangup::HangUp;
use super::session::Session;
use super::{AgentEvent, Notice, Output, Proxy, metrics, route};
use crate::sip::Message;
use crate::transaction::Peer;

impl Proxy {
    /// Opens the session of the INVITE `msg` from `caller` (at `source`) to
    /// `callee`, and tells the caller's core the caller is in it. The
    /// session keeps what a later Join needs (the From tag, the caller's
    /// terminal) and expires after `max_call`. Returns it, to fill in.
    pub(super) fn open_session(
        &mut self,
        now: Duration,
        source: Peer,
        msg: &Message,
        caller: &str,
        callee: &str,
        out: &mut Output,
    ) -> &mut Session {
        let call_id = msg.call_id();
        self.agent_in_call(caller, call_id, out);
        let from_tag = msg.from().tag().unwrap_or_default();
        let until = now + self.settings.max_call;
        let session = self.sessions.open(call_id, caller, callee, from_tag, until);
        // The caller's terminal as its INVITE shows it: where the request
        // came from, and its Contact URI.
        session.caller_contact = msg
            .contacts()
            .next()
            .map(|c| (source, c.uri().as_str().to_owned()));
        session
    }

    /// Applies an agent event from another core; what it makes this core
    /// tell others goes to `out`.
    pub fn handle_notice(&mut self, event: AgentEvent, out: &mut Output) {
        match event {
            AgentEvent::LoggedIn {
                extension,
                terminal,
            } => {
                self.enter_hosted_calls(&extension, out);
                self.logged_in_elsewhere.insert(extension, terminal);
            }
            AgentEvent::LoggedOut(ext) => {
                self.logged_in_elsewhere.remove(&ext);
            }
            AgentEvent::InCall {
                extension,
                call_id,
                session_core,
            } => {
                if session_core != self.settings.core {
                    self.remote_sessions.insert(call_id.clone(), session_core);
                }
                self.set_in_call(&extension, &call_id);
            }
            AgentEvent::Free { extension, call_id } => self.free_here(&extension, &call_id),
            AgentEvent::HostedLeg(leg) => self.keep_handed_leg(*leg),
        }
    }

    /// The counters of `call_id`'s route: cross-blade when its session
    /// hosts an agent, local otherwise. `None` without a session here: a
    /// target blade relaying a hosted callee's call leaves the count to
    /// the source, which owns the call (one count per call in a cluster).
    pub(super) fn outcomes(&mut self, call_id: &str) -> Option<&mut metrics::CallOutcomes> {
        let hosted = self.sessions.get(call_id)?.hosted.is_some();
        Some(if hosted {
            &mut self.metrics.cross_blade
        } else {
            &mut self.metrics.local
        })
    }

    /// Ends a call's dialog: both agents become ready again, and a hosted
    /// one goes back to its blade (SPEC §2 step 7; once the BYE that ends
    /// it has passed that blade, [`Proxy::end_session_by_bye`]). A party
    /// that a join leg still connects stays until that leg ends; a join
    /// leg's end lets its joiner go. A hosted party that a call replacing
    /// this one still connects stays hosted (under this session's grant)
    /// until that call ends; a replacing call's end lets the session it
    /// replaced finish.
    pub(super) fn end_session(&mut self, now: Duration, call_id: &str, out: &mut Output) {
        let Some(mut session) = self.sessions.close(call_id) else {
            return;
        };
        if let Some(main) = session.joins.clone() {
            return self.end_join_leg(now, call_id, session, &main, out);
        }
        // With join legs left the session stays, noting who left it.
        let left: Option<SmallVec<[String; 2]>> = {
            let leaving = self.unconnected_parties(&session);
            let hosted = session.hosted.as_ref().map(|h| h.extension.as_str());
            self.let_go(now, call_id, hosted, &leaving, out);
            (!session.joined.is_empty()).then(|| leaving.iter().map(|&p| p.to_owned()).collect())
        };
        if let Some(left) = left {
            session.left.get_or_insert_default().extend(left);
            self.sessions.restore(call_id, session);
            return;
        }
        if let Some(replaced) = &session.replaces {
            // The replaced session waited for this one, if it rode on its
            // grant: it may finish now.
            let finish = match self.sessions.get_mut(replaced) {
                Some(old) if old.joined.iter().any(|j| j == call_id) => {
                    old.joined.retain(|j| j != call_id);
                    old.left.is_some() && old.joined.is_empty()
                }
                _ => false,
            };
            if finish {
                self.end_session(now, &replaced.clone(), out);
            }
        }
    }

    /// Ends a session whose time ran out, its join legs first (else it
    /// would wait for them). Each answered dialog among them is hung up
    /// on its phones with the blade's own BYEs.
    pub(super) fn expire_session(
        &mut self,
        now: Duration,
        call_id: &str,
        why: HangUp,
        out: &mut Output,
    ) {
        let legs = self
            .sessions
            .get(call_id)
            .map(|s| s.joined.clone())
            .unwrap_or_default();
        for leg in legs {
            self.hang_up_and_end(now, &leg, why, out);
        }
        self.hang_up_and_end(now, call_id, why, out);
    }

    /// Hangs `call_id` up on its phones and ends its session. Where a BYE
    /// of the blade's own goes to a peer blade (towards a hosted callee),
    /// the hostings the session ends wait for that BYE to pass there, as
    /// for a BYE relayed there ([`Proxy::end_session_by_bye`]).
    fn hang_up_and_end(&mut self, now: Duration, call_id: &str, why: HangUp, out: &mut Output) {
        match self.hang_up(now, call_id, why, out) {
            Some(bye) => {
                let held = self.end_session_holding_hostings(now, call_id, out);
                if let Some(held) = held {
                    self.hold_hostings_for_own_bye(now, bye, held, out);
                }
            }
            None => self.end_session(now, call_id, out),
        }
    }

    /// `extension` is in the call `call_id`, whose session is on this core:
    /// marked here when this core owns the agent, else by a notice to its
    /// owner (the notice's owned strings are only for crossing cores).
    pub(super) fn agent_in_call(&mut self, extension: &str, call_id: &str, out: &mut Output) {
        if self.owns(extension) {
            self.set_in_call(extension, call_id);
        } else {
            let event = AgentEvent::InCall {
                extension: extension.to_owned(),
                call_id: call_id.to_owned(),
                session_core: self.settings.core,
            };
            self.tell_owner(extension, event, out);
        }
    }

    /// An agent this core hosts from another blade logged in on this
    /// blade mid-call (its phone moved to the hosting blade), here or on
    /// another core: its record, on its own core, was logged out and would
    /// now be `ready`, rung for a second call. It is in the calls this
    /// core hosts it in instead, until they end (SPEC §2 step 6: busy while
    /// in the session); each core does this for its own sessions when told
    /// of the login (a joiner's leg may live on another core than its
    /// record). Only sessions still live with the agent in them: a grant
    /// that waits for its session's BYE to pass the agent's blade outlives
    /// the session, whose end would never free the agent again. A refresh
    /// that moved the terminal tells the owner again, which changes
    /// nothing.
    pub(super) fn enter_hosted_calls(&mut self, extension: &str, out: &mut Output) {
        let Some(c) = self.cluster.as_ref().filter(|c| c.source.hosts(extension)) else {
            return;
        };
        let calls: SmallVec<[String; 1]> = c
            .source
            .sessions_hosting(extension)
            .filter(|call_id| {
                self.sessions
                    .get(call_id)
                    .is_some_and(|s| s.has_party(extension))
            })
            .map(str::to_owned)
            .collect();
        for call_id in calls {
            self.agent_in_call(extension, &call_id, out);
        }
    }

    /// `extension` left the call `call_id`: as [`Proxy::agent_in_call`].
    pub(super) fn agent_free(&mut self, extension: &str, call_id: &str, out: &mut Output) {
        if self.owns(extension) {
            self.free_here(extension, call_id);
        } else {
            let event = AgentEvent::Free {
                extension: extension.to_owned(),
                call_id: call_id.to_owned(),
            };
            self.tell_owner(extension, event, out);
        }
    }

    /// The parties of `session` (its caller and callee, while in it) that
    /// no live join leg of it connects any more.
    pub(super) fn unconnected_parties<'s>(&self, session: &'s Session) -> SmallVec<[&'s str; 2]> {
        let connected = |party: &str| {
            session.joined.iter().any(|j| {
                self.sessions
                    .get(j)
                    .is_some_and(|leg| leg.left.is_none() && leg.callee == party)
            })
        };
        [session.caller.as_str(), session.callee.as_str()]
            .into_iter()
            .filter(|p| session.has_party(p) && !connected(p))
            .collect()
    }

    /// Lets `parties` of call `call_id` go: the one the call hosts
    /// (`hosted`) goes back to its blade, and each is free.
    pub(super) fn let_go(
        &mut self,
        now: Duration,
        call_id: &str,
        hosted: Option<&str>,
        parties: &[&str],
        out: &mut Output,
    ) {
        for &party in parties {
            if hosted == Some(party) {
                self.release_hosting(now, call_id, out);
            }
            self.agent_free(party, call_id, out);
        }
    }

    /// Applies `event` to `extension` here if this core owns it, else sends
    /// it to the owner.
    pub(super) fn tell_owner(&mut self, extension: &str, event: AgentEvent, out: &mut Output) {
        let owner = self.owner_of(extension);
        if owner == self.settings.core {
            self.handle_notice(event, out);
        } else {
            out.notices.push(Notice {
                to: Some(owner),
                event,
            });
        }
    }

    /// The core that owns agent `extension`.
    fn owner_of(&self, extension: &str) -> usize {
        route::shard_of(extension.as_bytes(), self.settings.cores)
    }

    /// Whether this core owns agent `extension`.
    pub(super) fn owns(&self, extension: &str) -> bool {
        self.owner_of(extension) == self.settings.core
    }

    pub(super) fn set_in_call(&mut self, extension: &str, call_id: &str) {
        if let Some(record) = self.registrar.location_mut().get_mut(extension) {
            record.enter_call(call_id);
        }
    }

    /// This core's agent `extension` left the call `call_id`.
    fn free_here(&mut self, extension: &str, call_id: &str) {
        self.remote_sessions.remove(call_id);
        self.set_free(extension, call_id);
    }

    pub(super) fn set_free(&mut self, extension: &str, call_id: &str) {
        if let Some(record) = self.registrar.location_mut().get_mut(extension) {
            record.leave_call(call_id);
        }
    }
}
