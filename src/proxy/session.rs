//! Sessions: the calls this core owns, and the agent states they drive.
//!
//! A session starts as one call (one dialog) between two agents. Agents
//! join it later with INVITEs carrying a Join header (RFC 3911): a
//! supervisor monitoring a call, or a third party of a conference
//! (SPEC §2 step 9). Each such *join leg* is a dialog of its own between
//! the joiner and the party it targeted, kept here as a session that names
//! the one it joins, so its requests, its end and the hosting of its joiner
//! work as for any call. The session ends when its own dialog and every
//! join leg have ended.
//!
//! A call opened by an INVITE with a Replaces header (RFC 3891: attended
//! transfer, call pickup) is a session of its own, which names the one it
//! replaces. When the replaced session hosts its target, the new one rides
//! on that grant and is listed among the replaced session's `joined`, so
//! that the replaced session (and its grant) lasts until both have ended.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::dialog::Dialog;
use crate::cluster::codec::LoginInfo;
use crate::transaction::Peer;

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// INVITE forwarded, no final answer yet.
    Setup,
    /// Answered 2xx: the dialog is up.
    Confirmed,
}

/// A call between two agents that this core owns, or a join leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The calling agent's extension (a join leg's joiner).
    pub caller: String,
    /// The called agent's extension (a join leg's target).
    pub callee: String,
    /// Setup or confirmed.
    pub phase: Phase,
    /// The agent of this dialog hosted from another blade: the callee of a
    /// call, or the joiner of a join leg.
    pub hosted: Option<Hosted>,
    /// The caller's From tag and, once answered, the callee's To tag: the
    /// dialog a Join must name.
    pub from_tag: String,
    /// See `from_tag`.
    pub to_tag: Option<String>,
    /// The caller's terminal (where its INVITE came from, and its Contact;
    /// once answered, as target refreshes moved it), for a Join that
    /// targets the caller and the blade's own BYE.
    pub caller_contact: Option<(Peer, String)>,
    /// A join leg: the session it joins. `None` for a call.
    pub joins: Option<String>,
    /// A call opened by a Replaces INVITE: the session it replaces.
    pub replaces: Option<String>,
    /// A join leg: where its INVITE goes (the target's terminal, or the
    /// target's blade with the hosting token), once the joiner is hosted.
    pub join_dest: Option<(Peer, String)>,
    /// A call: its join legs still up, by Call-ID, and the calls replacing
    /// it that ride on its hosting grant.
    pub joined: Vec<String>,
    /// A call whose own dialog ended while join legs lived on: the parties
    /// that have left already (the others are in a join leg still).
    pub left: Option<Vec<String>>,
    /// Once answered: what the blade needs to send each party a BYE of
    /// its own if it ends the dialog itself ([`super::hangup`]). Boxed and
    /// filled once, at the 2xx: a ringing session pays one pointer.
    pub dialog: Option<Box<Dialog>>,
    /// When the session is ended even without a BYE (a lost BYE must not
    /// leave its agents in a call, or hosted, for ever), and a serial
    /// that tells it from another session ending at the same time.
    expires: (Duration, u64),
    /// Answered, its 2xx sent again, and no ACK passed since: the
    /// session then ends 64×T1 after the first 2xx instead (see
    /// [`Sessions::confirm`]); this is the `max_call_secs` end it goes
    /// back to once an ACK passes.
    unacked: Option<Duration>,
    /// 64×T1 after the first 2xx: when its callee gives up retransmitting
    /// it.
    ack_by: Option<Duration>,
}

/// An agent hosted from another blade (SPEC §2 step 4): its blade, and once
/// granted, its login information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosted {
    /// The hosted agent.
    pub extension: String,
    /// The agent's blade id, once a grant names it.
    pub blade: Option<String>,
    /// The login information the grant carried.
    pub info: Option<LoginInfo>,
}

impl Session {
    /// Whether the in-dialog request `msg` belongs to this session's
    /// dialog: its From and To tags are the caller's and the callee's, in
    /// either direction (only the caller's while no 2xx has named the
    /// callee's). A request under the Call-ID with other tags is of no
    /// dialog this session knows (the far UA answers it 481).
    pub fn is_dialog_of(&self, msg: &crate::sip::Message) -> bool {
        let caller = Some(self.from_tag.as_str());
        match self.to_tag.as_deref() {
            Some(callee) => has_tags(msg, caller, Some(callee)),
            None => msg.from().tag() == caller || msg.to().tag() == caller,
        }
    }

    /// Whether `extension` is one of this dialog's two parties and has not
    /// left.
    pub fn has_party(&self, extension: &str) -> bool {
        (self.caller == extension || self.callee == extension)
            && !self
                .left
                .as_ref()
                .is_some_and(|l| l.iter().any(|e| e == extension))
    }
}

/// The sessions of one core, by Call-ID.
#[derive(Debug, Default)]
pub struct Sessions {
    /// ahash: see [`super::AgentTable`].
    by_call_id: HashMap<String, Session, ahash::RandomState>,
    /// Call-IDs by when they expire.
    expiry: BTreeMap<(Duration, u64), String>,
    serial: u64,
}

impl Sessions {
    /// Starts a session: a call from `caller` (From tag `from_tag`) to
    /// `callee`, ended at `until` if nothing ends it before. Returns it, to
    /// fill in.
    pub fn open(
        &mut self,
        call_id: &str,
        caller: &str,
        callee: &str,
        from_tag: &str,
        until: Duration,
    ) -> &mut Session {
        self.serial += 1;
        let expires = (until, self.serial);
        self.expiry.insert(expires, call_id.to_owned());
        let session = Session {
            caller: caller.to_owned(),
            callee: callee.to_owned(),
            phase: Phase::Setup,
            hosted: None,
            from_tag: from_tag.to_owned(),
            to_tag: None,
            caller_contact: None,
            joins: None,
            replaces: None,
            join_dest: None,
            joined: Vec::new(),
            left: None,
            dialog: None,
            expires,
            unacked: None,
            ack_by: None,
        };
        let slot = self.by_call_id.entry(call_id.to_owned());
        if let std::collections::hash_map::Entry::Occupied(old) = &slot {
            // A Call-ID reused while its session lives: the new one wins.
            self.expiry.remove(&old.get().expires);
        }
        slot.insert_entry(session).into_mut()
    }

    /// The session of `call_id`, to update.
    pub fn get_mut(&mut self, call_id: &str) -> Option<&mut Session> {
        self.by_call_id.get_mut(call_id)
    }

    /// Marks a session answered by the callee with To tag `to_tag`;
    /// returns whether this answered it (it exists and was not answered
    /// yet), so that a retransmitted 2xx does not count as another call.
    ///
    /// `ack_by` (64×T1 after this 2xx) is when its callee gives up
    /// retransmitting it. Once the 2xx comes again ([`Sessions::await_ack`])
    /// the callee has had no ACK, and until one passes the session ends
    /// then rather than at `max_call_secs`: a 2xx retransmitted and never
    /// ACKed is a dialog both phones gave up on, whose callee should have
    /// sent a BYE (RFC 3261 §13.3.1.4) and did not, so its agents are
    /// ready again then, not hours later. A 2xx the callee does not send
    /// again was ACKed, whichever way the ACK went (past the blade, or
    /// through another of its cores): that call stays up.
    pub fn confirm(&mut self, call_id: &str, to_tag: Option<&str>, ack_by: Duration) -> bool {
        match self.by_call_id.get_mut(call_id) {
            Some(s) if s.phase == Phase::Setup => {
                s.phase = Phase::Confirmed;
                if s.to_tag.is_none() {
                    s.to_tag = to_tag.map(str::to_owned);
                }
                s.ack_by = Some(ack_by);
                true
            }
            _ => false,
        }
    }

    /// The callee of session `call_id` sent its 2xx again: the ACK that
    /// passed, if one did, was lost on its way, and a live caller ACKs
    /// this copy too. Until it does, the session ends when the callee
    /// gives up retransmitting (the `ack_by` of [`Sessions::confirm`]).
    pub fn await_ack(&mut self, call_id: &str) {
        let Some(s) = self.by_call_id.get_mut(call_id) else {
            return;
        };
        let Some(ack_by) = s.ack_by else {
            return;
        };
        if s.unacked.is_none() && ack_by < s.expires.0 {
            self.expiry.remove(&s.expires);
            s.unacked = Some(s.expires.0);
            s.expires.0 = ack_by;
            self.expiry.insert(s.expires, call_id.to_owned());
        }
    }

    /// An ACK of the session's 2xx passed: it expires at `max_call_secs`
    /// again, unless the 2xx comes again ([`Sessions::await_ack`]).
    pub fn acked(&mut self, call_id: &str) {
        let Some(s) = self.by_call_id.get_mut(call_id) else {
            return;
        };
        if let Some(until) = s.unacked.take() {
            self.expiry.remove(&s.expires);
            s.expires.0 = until;
            self.expiry.insert(s.expires, call_id.to_owned());
        }
    }

    /// Whether session `call_id` is answered and its 2xx not yet ACKed.
    pub fn is_unacked(&self, call_id: &str) -> bool {
        self.by_call_id
            .get(call_id)
            .is_some_and(|s| s.unacked.is_some())
    }

    /// Ends a session and returns it.
    pub fn close(&mut self, call_id: &str) -> Option<Session> {
        let session = self.by_call_id.remove(call_id)?;
        self.expiry.remove(&session.expires);
        Some(session)
    }

    /// Puts back a session taken with [`Sessions::close`].
    pub fn restore(&mut self, call_id: &str, session: Session) {
        self.expiry.insert(session.expires, call_id.to_owned());
        self.by_call_id.insert(call_id.to_owned(), session);
    }

    /// When the next session expires.
    pub fn next_expiry(&self) -> Option<Duration> {
        self.expiry.first_key_value().map(|(&(at, _), _)| at)
    }

    /// A session whose time ran out by `now`, if any: its Call-ID. It stays
    /// open until [`Sessions::close`]d, but is not returned again.
    pub fn pop_expired(&mut self, now: Duration) -> Option<String> {
        let (&key, _) = self.expiry.first_key_value()?;
        if key.0 > now {
            return None;
        }
        self.expiry.remove(&key)
    }

    /// The session of `call_id`.
    pub fn get(&self, call_id: &str) -> Option<&Session> {
        self.by_call_id.get(call_id)
    }

    /// Every session with its Call-ID, join legs included.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Session)> {
        self.by_call_id.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of live sessions and join legs.
    pub fn len(&self) -> usize {
        self.by_call_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_call_id.is_empty()
    }
}

/// Whether `msg`'s From and To tags are `one` and `other`, in either
/// direction (either party may send an in-dialog request).
pub(super) fn has_tags(msg: &crate::sip::Message, one: Option<&str>, other: Option<&str>) -> bool {
    let (from, to) = (msg.from().tag(), msg.to().tag());
    (from == one && to == other) || (from == other && to == one)
}
