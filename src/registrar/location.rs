//! The location store: each agent's login information, keyed by extension.
//!
//! [`AgentRecord`] is the one record a blade keeps of an agent: what was
//! provisioned, where its terminal is registered, and its call state. The
//! hosting protocol ships it between blades, so it is plain data.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Agent, AgentKind};
use crate::sip::Peer;

/// Where an agent's terminal is registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The Contact URI as registered (without `<>` and header parameters).
    pub uri: String,
    /// Where requests for the agent go: over UDP, the Contact's IP and port
    /// when it names an IP, else the address the REGISTER came from; over
    /// TCP, the connection the REGISTER came on (the terminal listens on
    /// it, not on its Contact port).
    pub peer: Peer,
    /// When the binding lapses (on the caller's clock).
    pub expires_at: Duration,
    /// Call-ID of the REGISTER that made it (RFC 3261 §10.3 ordering).
    pub call_id: String,
    /// CSeq of that REGISTER.
    pub cseq: u32,
}

/// An agent's state (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentState {
    /// No registration.
    LoggedOut,
    /// Registered and free.
    Ready,
    /// Registered and in a call (the Call-ID).
    InCall {
        /// The call.
        call_id: String,
    },
    /// Handed over to another blade for the length of a session.
    Hosted {
        /// The hosting blade's id.
        by: String,
    },
}

impl AgentState {
    /// The name used in `/status`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AgentState::LoggedOut => "logged_out",
            AgentState::Ready => "ready",
            AgentState::InCall { .. } => "in_call",
            AgentState::Hosted { .. } => "hosted",
        }
    }
}

/// Everything a blade knows of one agent: its login information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// Provisioning: badge, extension, kind, credential.
    pub agent: Arc<Agent>,
    /// The terminal binding; `None` while logged out.
    pub binding: Option<Binding>,
    /// The call state.
    pub state: AgentState,
    /// Calls the agent is in besides the one (or the hosting) its state
    /// names: a consultation call placed during a call, or a call placed
    /// from its phone while another blade hosts it. When the state's call
    /// or hosting ends, the agent is in one of these, not free.
    pub other_calls: Vec<String>,
}

impl AgentRecord {
    /// A logged-out record for a provisioned agent.
    pub fn new(agent: Arc<Agent>) -> Self {
        AgentRecord {
            agent,
            binding: None,
            state: AgentState::LoggedOut,
            other_calls: Vec::new(),
        }
    }

    /// Badge number.
    pub fn badge(&self) -> &str {
        &self.agent.badge
    }

    /// Extension.
    pub fn extension(&self) -> &str {
        &self.agent.extension
    }

    /// Agent or supervisor.
    pub fn kind(&self) -> AgentKind {
        self.agent.kind
    }

    /// Whether the agent has a live registration.
    pub fn is_logged_in(&self) -> bool {
        self.binding.is_some()
    }

    /// Drops the binding. A call or a hosting the agent is in goes on
    /// (its dialog does not depend on the registration), so the state
    /// stays until it ends: logging out and in again mid-call must not
    /// make the agent `ready` for a second call.
    fn log_out(&mut self) {
        self.binding = None;
        if self.state == AgentState::Ready {
            self.state = AgentState::LoggedOut;
        }
    }

    /// The agent is in call `call_id`: its state if it was ready, else one
    /// of its other calls.
    pub fn enter_call(&mut self, call_id: &str) {
        match &self.state {
            AgentState::Ready => {
                self.state = AgentState::InCall {
                    call_id: call_id.to_owned(),
                };
            }
            AgentState::InCall { call_id: current } if current == call_id => {}
            // Logged out: no call reaches it.
            AgentState::LoggedOut => {}
            AgentState::InCall { .. } | AgentState::Hosted { .. } => {
                if !self.other_calls.iter().any(|c| c == call_id) {
                    self.other_calls.push(call_id.to_owned());
                }
            }
        }
    }

    /// Hands the agent over to blade `by` (hosting). A call it is in
    /// stays among its other calls, for when the hosting ends.
    pub fn hand_over(&mut self, by: &str) {
        let hosted = AgentState::Hosted { by: by.to_owned() };
        if let AgentState::InCall { call_id } = std::mem::replace(&mut self.state, hosted) {
            if !self.other_calls.contains(&call_id) {
                self.other_calls.push(call_id);
            }
        }
    }

    /// Call `call_id` ended: if it was the state's, the agent is in its
    /// next call, else ready while registered.
    pub fn leave_call(&mut self, call_id: &str) {
        if matches!(&self.state, AgentState::InCall { call_id: c } if c == call_id) {
            self.become_free();
        } else {
            self.other_calls.retain(|c| c != call_id);
        }
    }

    /// The state's call or hosting is over: the agent is in its next call
    /// if it has one, else ready while registered, else logged out.
    pub fn become_free(&mut self) {
        self.state = match self.other_calls.pop() {
            Some(call_id) => AgentState::InCall { call_id },
            None if self.is_logged_in() => AgentState::Ready,
            None => AgentState::LoggedOut,
        };
    }
}

/// The records of the agents one shard owns, keyed by extension.
#[derive(Debug, Default)]
pub struct Location {
    /// ahash: a few times cheaper than SipHash on short keys, and keyed
    /// per process, so chosen extensions cannot flood a bucket.
    records: HashMap<String, AgentRecord, ahash::RandomState>,
    /// No binding lapses before this (a lower bound: unbinding leaves it
    /// early, and the next sweep recomputes it). Lets the per-tick expiry
    /// check skip the scan.
    earliest_expiry: Option<Duration>,
}

impl Location {
    /// A store holding a logged-out record for each agent in `agents`.
    pub fn new(agents: impl IntoIterator<Item = Arc<Agent>>) -> Self {
        let records = agents
            .into_iter()
            .map(|a| (a.extension.clone(), AgentRecord::new(a)))
            .collect();
        Location {
            records,
            earliest_expiry: None,
        }
    }

    /// The record of `extension`.
    pub fn get(&self, extension: &str) -> Option<&AgentRecord> {
        self.records.get(extension)
    }

    /// The record of `extension`, mutable.
    pub fn get_mut(&mut self, extension: &str) -> Option<&mut AgentRecord> {
        self.records.get_mut(extension)
    }

    /// Every record, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &AgentRecord> {
        self.records.values()
    }

    /// Records `binding` for `extension`: the agent logs in (or refreshes).
    pub fn bind(&mut self, extension: &str, binding: Binding) {
        if let Some(record) = self.records.get_mut(extension) {
            let at = binding.expires_at;
            self.earliest_expiry = Some(self.earliest_expiry.map_or(at, |e| e.min(at)));
            record.binding = Some(binding);
            if record.state == AgentState::LoggedOut {
                record.state = AgentState::Ready;
            }
        }
    }

    /// Removes the binding of `extension`: the agent logs out. Returns
    /// whether it was logged in.
    pub fn unbind(&mut self, extension: &str) -> bool {
        match self.records.get_mut(extension) {
            Some(record) if record.binding.is_some() => {
                record.log_out();
                true
            }
            _ => false,
        }
    }

    /// Logs out every agent whose binding lapsed at `now`; returns their
    /// extensions.
    pub fn expire(&mut self, now: Duration) -> Vec<String> {
        if self.earliest_expiry.is_none_or(|at| at > now) {
            return Vec::new();
        }
        let mut gone = Vec::new();
        for record in self.records.values_mut() {
            if record.binding.as_ref().is_some_and(|b| b.expires_at <= now) {
                record.log_out();
                gone.push(record.agent.extension.clone());
            }
        }
        self.earliest_expiry = self.scan_next_expiry();
        gone
    }

    /// The earliest binding expiry, for the caller's timer.
    pub fn next_expiry(&self) -> Option<Duration> {
        self.earliest_expiry
    }

    fn scan_next_expiry(&self) -> Option<Duration> {
        self.records
            .values()
            .filter_map(|r| r.binding.as_ref().map(|b| b.expires_at))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Credential;

    fn ready_agent() -> AgentRecord {
        let mut record = AgentRecord::new(Arc::new(Agent {
            badge: "A1001".into(),
            extension: "1001".into(),
            kind: AgentKind::Agent,
            credential: Credential::Password("pw".into()),
        }));
        record.binding = Some(Binding {
            uri: "sip:1001@127.0.0.12:5061".into(),
            peer: Peer::udp(([127, 0, 0, 12], 5061).into()),
            expires_at: Duration::from_secs(3600),
            call_id: "reg".into(),
            cseq: 1,
        });
        record.state = AgentState::Ready;
        record
    }

    fn in_call(call_id: &str) -> AgentState {
        AgentState::InCall {
            call_id: call_id.into(),
        }
    }

    #[test]
    fn an_agent_in_two_calls_is_free_only_when_both_end() {
        for first_to_end in ["a", "b"] {
            let mut record = ready_agent();
            record.enter_call("a");
            record.enter_call("b");
            assert_eq!(record.state, in_call("a"));
            record.leave_call(first_to_end);
            assert!(
                matches!(record.state, AgentState::InCall { .. }),
                "{first_to_end} ended, the other goes on: {:?}",
                record.state
            );
            record.leave_call(if first_to_end == "a" { "b" } else { "a" });
            assert_eq!(record.state, AgentState::Ready);
        }
    }

    #[test]
    fn a_call_placed_while_hosted_outlasts_the_hosting() {
        let mut record = ready_agent();
        record.state = AgentState::Hosted {
            by: "blade-2".into(),
        };
        record.enter_call("c");
        record.become_free();
        assert_eq!(record.state, in_call("c"));
        record.log_out();
        record.leave_call("c");
        assert_eq!(record.state, AgentState::LoggedOut);
    }
}
