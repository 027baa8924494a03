//! What `/status` shows of one core: its agents and sessions.

use std::net::SocketAddr;

use super::{Metrics, Proxy};
use crate::registrar::location::AgentState;

/// An agent's state as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    /// Badge number.
    pub badge: String,
    /// Extension.
    pub extension: String,
    /// `agent` or `supervisor`.
    pub kind: &'static str,
    /// `logged_out`, `ready`, `in_call` or `hosted`.
    pub state: &'static str,
    /// The hosting blade while hosted.
    pub hosted_by: Option<String>,
    /// The registered contact address.
    pub contact: Option<SocketAddr>,
}

/// A session as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    /// The Call-ID.
    pub call_id: String,
    /// Extensions of the agents in it.
    pub agents: Vec<String>,
    /// Extensions of hosted agents.
    pub hosted: Vec<String>,
}

/// An agent of another blade that this blade hosts in a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedAgent {
    /// Extension.
    pub extension: String,
    /// Its registered contact, from the login information its blade gave
    /// with the grant.
    pub contact: SocketAddr,
}

/// A core's share of `/status` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The agents this core owns.
    pub agents: Vec<AgentStatus>,
    /// The sessions this core owns.
    pub sessions: Vec<SessionStatus>,
    /// The agents of other blades that this core's sessions host: their
    /// state is unified here for the length of the session (SPEC §2 step
    /// 4), so `/status` shows them in a call, at their contact.
    pub hosted: Vec<HostedAgent>,
    /// Counters.
    pub metrics: Metrics,
    /// Live transactions.
    pub transactions: usize,
}

impl Proxy {
    /// This core's agents and sessions, for `/status`.
    pub fn snapshot(&self) -> Snapshot {
        let agents = self
            .registrar
            .location()
            .iter()
            .map(|r| AgentStatus {
                badge: r.badge().to_owned(),
                extension: r.extension().to_owned(),
                kind: r.kind().as_str(),
                state: r.state.as_str(),
                hosted_by: match &r.state {
                    AgentState::Hosted { by } => Some(by.clone()),
                    _ => None,
                },
                contact: r.binding.as_ref().map(|b| b.peer.addr),
            })
            .collect();
        // Join legs show as part of the session they joined. A call that
        // replaced another shows as its own session; the one it replaced,
        // kept only for the grant the new call rides on, not at all.
        let mut hosted = Vec::new();
        let mut host = |status: &mut SessionStatus, h: &super::session::Hosted| {
            if status.hosted.contains(&h.extension) {
                return;
            }
            status.hosted.push(h.extension.clone());
            // Granted: its login information is here.
            if let Some(info) = &h.info {
                hosted.push(HostedAgent {
                    extension: h.extension.clone(),
                    contact: info.addr,
                });
            }
        };
        let sessions = self
            .sessions
            .iter()
            .filter(|(_, s)| s.joins.is_none())
            .filter_map(|(call_id, s)| {
                let legs: Vec<_> = s
                    .joined
                    .iter()
                    .filter_map(|j| self.sessions.get(j))
                    .filter(|leg| leg.joins.is_some())
                    .collect();
                if s.left.is_some() && legs.is_empty() {
                    return None;
                }
                let mut status = SessionStatus {
                    call_id: call_id.to_owned(),
                    agents: Vec::new(),
                    hosted: Vec::new(),
                };
                for leg in std::iter::once(s).chain(legs) {
                    for party in [&leg.caller, &leg.callee] {
                        if leg.has_party(party) && !status.agents.contains(party) {
                            status.agents.push(party.clone());
                        }
                    }
                    if let Some(h) = leg.hosted.as_ref().filter(|h| leg.has_party(&h.extension)) {
                        host(&mut status, h);
                    }
                }
                // A replacing call's target hosted under the replaced
                // session's grant.
                let carried = s
                    .replaces
                    .as_ref()
                    .and_then(|r| self.sessions.get(r))
                    .and_then(|r| r.hosted.as_ref())
                    .filter(|h| h.extension == s.callee && s.has_party(&s.callee));
                if let Some(h) = carried {
                    host(&mut status, h);
                }
                Some(status)
            })
            .collect();
        Snapshot {
            agents,
            sessions,
            hosted,
            metrics: self.metrics.clone(),
            transactions: self.txs.len(),
        }
    }
}
