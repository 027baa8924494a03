//! The target blade's side of a cross-blade call (SPEC §2 steps 5-6): a
//! request from a peer blade under a hosting token goes to the agent's
//! terminal once the token checks out, and a new call for an agent another
//! blade hosts is handed to that blade. The overview is in
//! [`super::cross`].

use std::borrow::Cow;
use std::time::Duration;

use super::cross::{ClusterSend, Dest, REDIRECT_WAIT, Waiting, hosting_token};
use super::{Output, Proxy};
use crate::cluster::codec::Token;
use crate::sip::{Message, Method};
use crate::transaction::Peer;

impl Proxy {
    /// Whether `msg` comes from a peer blade's SIP address under a
    /// hosting token (the INVITE of a grant, a relayed request): this
    /// blade admitted it when it granted, so overload does not shed it (a
    /// 503 would waste the grant and fail a call it already took on). A
    /// forged token is refused by its check all the same.
    pub(crate) fn granted_by_peer(&self, source: Peer, msg: &Message) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.peer_by_ip(source.addr.ip()).is_some())
            && msg
                .request_uri()
                .is_some_and(|uri| hosting_token(&uri).is_some())
    }

    /// T: an INVITE from a peer blade with a hosting token. Checked
    /// against the grant, then sent to the agent's terminal; anything
    /// else is 403.
    pub(super) fn accept_hosted(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        callee: &str,
        token: &[u8],
        out: &mut Output,
    ) {
        let forbidden = super::Refusal::new(403, "Forbidden");
        let method = msg.method().unwrap_or(Method::Other);
        let invite = method == Method::Invite;
        let join = invite
            .then(|| super::join::Named::of(&msg))
            .flatten()
            .flatten();
        let token = Token::from_hex(token);
        let peer = token
            .as_ref()
            .and_then(|t| self.peer_vouched(now, source, &msg, callee, join.as_ref(), t));
        let (Some(token), Some(peer), Some(c)) = (token, peer, self.cluster.as_mut()) else {
            tracing::debug!(agent = callee, from = %source.addr, "hosting token refused");
            return self.refuse(now, source, msg, &forbidden, out);
        };
        if let Some(named) = &join {
            // A join (or a Replaces) from another blade: handed over by the
            // blade of an agent this blade hosts, or relayed by the
            // joiner's blade.
            let handed_over = c.source.holds(&peer, &named.call_id, callee, &token)
                || c.target
                    .check_relay(now, &peer, callee, msg.call_id(), &token);
            if handed_over {
                let joiner = msg
                    .from()
                    .uri()
                    .user_str()
                    .filter(|u| self.agents.contains_key(&**u))
                    .map(Cow::into_owned);
                let Some(joiner) = joiner else {
                    return self.refuse(now, source, msg, &forbidden, out);
                };
                return self.route_join(now, source, msg, &joiner, callee, named, true, out);
            }
        }
        let granted = if let Some(j) = &join {
            // A join leg (or a replacing call) to a hosted agent names the
            // hosting session in its Join (Replaces), not in its own Call-ID;
            // a session may have several.
            c.target.check_token(now, &peer, callee, &j.call_id, &token)
        } else if invite {
            c.target
                .admit_invite(now, &peer, callee, msg.call_id(), &token)
        } else {
            c.target
                .check_relay(now, &peer, callee, msg.call_id(), &token)
        };
        if !granted && join.is_some() {
            // A Join or Replaces from a peer blade whose token names no
            // grant or leave here any more: the hosting of the dialog it
            // names ended while it was on its way (the blade that handed
            // it over still held the grant, its unhost not yet in; or the
            // grant under a join leg lapsed). The dialog is gone, so the
            // answer is the phone's own to a dialog it no longer has:
            // 481 (RFC 3891 §3, RFC 3911 §4; 603 would also do for a
            // dialog ended, but a forgotten dialog looks like an unknown
            // one, as in `join::replaceable`). It is not routed as an
            // ordinary call: the header is what brought it past a busy
            // agent, and nothing here can check it. Refusing trusts the
            // peer with nothing, so no 403 is needed.
            tracing::debug!(agent = callee, from = %source.addr, "join or replaces for an ended hosting");
            let gone = super::Refusal::new(481, "Call/Transaction Does Not Exist");
            return self.refuse(now, source, msg, &gone, out);
        }
        if !granted {
            tracing::debug!(agent = callee, from = %source.addr, "hosting token refused");
            return self.refuse(now, source, msg, &forbidden, out);
        }
        let binding = self
            .registrar
            .location()
            .get(callee)
            .and_then(|r| r.binding.clone());
        let Some(binding) = binding else {
            let gone = super::Refusal::new(480, "Temporarily Unavailable");
            return self.refuse(now, source, msg, &gone, out);
        };
        let record_route = matches!(method, Method::Invite | Method::Subscribe | Method::Refer);
        self.forward(
            now,
            source,
            msg,
            binding.peer,
            Some(&binding.uri),
            0,
            record_route,
            out,
        );
    }

    /// The peer blade a request from `source` under `token` comes from:
    /// the peer with the source's IP, or where several peers share that
    /// IP (blades on one host, told apart by port), the one the token was
    /// given to (a request comes from a core's own port, which is not
    /// known here). One peer per IP, the usual case, is taken without a
    /// token check (the caller checks it).
    fn peer_vouched(
        &self,
        now: Duration,
        source: Peer,
        msg: &Message,
        callee: &str,
        join: Option<&super::join::Named>,
        token: &Token,
    ) -> Option<String> {
        let c = self.cluster.as_ref()?;
        let ip = source.addr.ip();
        let mut at_ip = c.peers.iter().filter(|p| p.sip.ip() == ip);
        let first = at_ip.next()?;
        let Some(second) = at_ip.next() else {
            return Some(first.id.clone());
        };
        let session = join.map_or(msg.call_id(), |j| j.call_id.as_str());
        let vouched = |id: &str| {
            c.target.check_token(now, id, callee, session, token)
                || c.target.check_relay(now, id, callee, msg.call_id(), token)
                || join.is_some_and(|j| c.source.holds(id, &j.call_id, callee, token))
        };
        [first, second]
            .into_iter()
            .chain(at_ip)
            .find(|p| vouched(&p.id))
            .or(Some(first))
            .map(|p| p.id.clone())
    }

    /// T: whether a new INVITE for `callee`, this blade's agent that is
    /// hosted but no longer registered here, is still the hosting blade's
    /// to decide (SPEC §2 step 6). It is while the agent, logged out or
    /// lapsed mid-call, is in the call (README: it stays `hosted` until
    /// the call ends); not once another blade announced a login of it
    /// (an agent that moved on mid-call is reached there).
    pub(super) fn hosted_without_login(&self, callee: &str) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.directory.lookup(callee).is_none())
    }

    /// T: a new INVITE for an agent another blade hosts (SPEC §2 step 6):
    /// held, answered 100 Trying, while the hosting blade decides.
    pub(super) fn redirect_to_host(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        callee: &str,
        caller: &str,
        out: &mut Output,
    ) {
        let redirect = self
            .cluster
            .as_mut()
            .and_then(|c| c.target.redirect(callee, msg.call_id(), caller));
        let Some((peer, redirect)) = redirect else {
            self.metrics.local.busy += 1;
            let busy = super::Refusal::new(486, "Busy Here");
            return self.refuse(now, source, msg, &busy, out);
        };
        let request_id = redirect.request_id().unwrap_or_default();
        out.cluster.push(ClusterSend {
            to: Dest::Peer(peer),
            msg: redirect,
        });
        let until = now + REDIRECT_WAIT;
        let id = self.hold(
            now,
            source,
            msg,
            Waiting::Redirect { request_id, until },
            out,
        );
        if let Some(c) = self.cluster.as_mut() {
            c.awaiting_redirect.insert(request_id, id);
        }
        self.reschedule(id);
    }
}
