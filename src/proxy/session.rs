//! Sessions: the calls this core owns, and the agent states they drive.

use std::collections::HashMap;

use crate::cluster::codec::LoginInfo;

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// INVITE forwarded, no final answer yet.
    Setup,
    /// Answered 2xx: the dialog is up.
    Confirmed,
}

/// A call between two agents that this core owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The calling agent's extension.
    pub caller: String,
    /// The called agent's extension.
    pub callee: String,
    /// Setup or confirmed.
    pub phase: Phase,
    /// The callee, when it is registered on another blade and hosted here
    /// for this session.
    pub hosted: Option<Hosted>,
}

/// A callee hosted from another blade (SPEC §2 step 4): its blade, and
/// once granted, its login information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosted {
    /// The target blade's id, once a grant names it.
    pub blade: Option<String>,
    /// The login information the grant carried.
    pub info: Option<LoginInfo>,
}

/// The sessions of one core, by Call-ID.
#[derive(Debug, Default)]
pub struct Sessions {
    by_call_id: HashMap<String, Session>,
}

impl Sessions {
    /// Starts a session.
    pub fn open(&mut self, call_id: &str, caller: &str, callee: &str) {
        let session = Session {
            caller: caller.to_owned(),
            callee: callee.to_owned(),
            phase: Phase::Setup,
            hosted: None,
        };
        self.by_call_id.insert(call_id.to_owned(), session);
    }

    /// The session of `call_id`, to update.
    pub fn get_mut(&mut self, call_id: &str) -> Option<&mut Session> {
        self.by_call_id.get_mut(call_id)
    }

    /// Marks a session answered; returns whether it exists.
    pub fn confirm(&mut self, call_id: &str) -> bool {
        match self.by_call_id.get_mut(call_id) {
            Some(s) => {
                s.phase = Phase::Confirmed;
                true
            }
            None => false,
        }
    }

    /// Ends a session and returns it.
    pub fn close(&mut self, call_id: &str) -> Option<Session> {
        self.by_call_id.remove(call_id)
    }

    /// The session of `call_id`.
    pub fn get(&self, call_id: &str) -> Option<&Session> {
        self.by_call_id.get(call_id)
    }

    /// Every session with its Call-ID.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Session)> {
        self.by_call_id.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.by_call_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_call_id.is_empty()
    }
}
