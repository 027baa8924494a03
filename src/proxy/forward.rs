//! Forwarding requests: out of dialog to an agent's binding, in dialog
//! along the route set, and the ACK of a 2xx.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::route::{self, CORE_PARAM};
use super::{Handoff, Output, Proxy, UDP_MAX_PAYLOAD, UDP_MAX_TO_BLADES};
use crate::registrar::Refusal;
use crate::sip::edit::Forward;
use crate::sip::{Message, Method};
use crate::transaction::{Peer, Transmit};

/// A request built to go downstream.
pub(super) struct Forwarded {
    /// Its bytes.
    pub data: Bytes,
    /// Where it goes.
    pub target: Peer,
    /// The branch of its Via: the client transaction's key.
    pub branch: Bytes,
}

/// How long a refer subscription is kept after its REFER passed, with
/// no NOTIFY that ends it: a blind transfer's last NOTIFY comes when the
/// transfer target answers, within a few minutes of ringing (timer C).
const REFER_SUBSCRIPTION: Duration = Duration::from_secs(300);

/// The most refer subscriptions one core keeps ([`Proxy::note_refer`]).
const MAX_REFER_SUBSCRIPTIONS: usize = 4096;

/// A refer subscription kept on the transferor's side ([`Proxy::note_refer`]).
#[derive(Debug)]
pub(super) struct ReferSubscription {
    /// Where its NOTIFYs may go: the REFERs' Contacts, each with the
    /// transport and connection it is reached by.
    subscribers: Vec<Peer>,
    /// Until when it is kept.
    pub(super) until: Duration,
}

impl Proxy {
    /// Forwards `msg` to `target` through a new transaction pair, or
    /// answers it here when it cannot go (too many hops, too large).
    /// Returns the pair's id once its client transaction started.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        target: Peer,
        request_uri: Option<&str>,
        pop_routes: usize,
        record_route: bool,
        out: &mut Output,
    ) -> Option<usize> {
        let record_route = record_route.then_some(source.transport);
        let forwarded = self.build_forward(&msg, target, request_uri, pop_routes, record_route);
        let forwarded = match forwarded {
            Ok(f) => f,
            Err(refusal) => {
                // A new call refused here (too many hops, too large) ends
                // the session just opened for it, or its agents would
                // stay in_call.
                let call_id = msg.call_id().to_owned();
                let new_call = msg.method() == Some(Method::Invite) && msg.to().tag().is_none();
                if new_call && self.sessions.get(&call_id).is_some() {
                    if let Some(o) = self.outcomes(&call_id) {
                        o.failed += 1;
                    }
                    self.end_session(now, &call_id, out);
                }
                self.refuse(now, source, msg, &refusal, out);
                return None;
            }
        };
        let server = self.server_tx(now, source, &msg, out);
        let method = msg.method().unwrap_or(Method::Other);
        let id = self.insert(msg, server);
        self.start_client(now, id, method, forwarded, out);
        Some(id)
    }

    /// Our Record-Route entry for the side reached over `transport`.
    pub(super) fn record_route_over(&self, transport: crate::sip::Transport) -> String {
        let name = transport.to_string().to_ascii_lowercase();
        format!(
            "<sip:{};lr;{CORE_PARAM}={};transport={name}>",
            self.sent_by(transport),
            self.settings.core
        )
    }

    /// The request to send downstream, and where: a new Via, and the
    /// Record-Route, Request-URI and Route edits asked for. `record_route`
    /// names the transport the request came in on: when it differs from
    /// the target's, we record-route twice, one entry per side (RFC 5658),
    /// so each side's in-dialog requests use its own transport. A request
    /// too large for UDP to a peer blade goes over TCP instead
    /// ([`UDP_MAX_TO_BLADES`]).
    pub(super) fn build_forward(
        &mut self,
        msg: &Message,
        target: Peer,
        request_uri: Option<&str>,
        pop_routes: usize,
        record_route: Option<crate::sip::Transport>,
    ) -> Result<Forwarded, Refusal> {
        self.next_branch += 1;
        let mut via = std::mem::take(&mut self.via_scratch);
        via.clear();
        let branch_at = route::push_via_head(
            &mut via,
            target.transport,
            self.sent_by(target.transport),
            self.settings.core,
        );
        route::push_decimal(&mut via, self.next_branch);
        via.push('.');
        route::push_hex16(&mut via, route::loop_hash(msg));
        // Owned, so a lingering transaction does not pin the request buffer.
        let branch = Bytes::copy_from_slice(&via.as_bytes()[branch_at..]);
        let bridged;
        let record_route_value = match record_route {
            Some(upstream) if upstream != target.transport => {
                bridged = format!(
                    "{}, {}",
                    self.record_route_over(target.transport),
                    self.record_route_over(upstream)
                );
                Some(bridged.as_str())
            }
            Some(crate::sip::Transport::Udp) => Some(self.udp_record_route.as_str()),
            Some(_) => Some(self.tcp_record_route.as_str()),
            None => None,
        };
        // §16.4: the top Routes naming us are ours to remove, whatever the
        // route: an out-of-dialog request preloaded with the blade as its
        // outbound proxy (§8.1.2) is routed by its Request-URI, and its
        // callee must not get the blade's Route. An in-dialog request comes
        // with them counted already (`route_split`).
        let pop_routes = match pop_routes {
            0 => self.our_routes(msg),
            counted => counted,
        };
        let edit = Forward {
            via: Some(&via),
            record_route: record_route_value,
            request_uri,
            pop_routes,
            consume_credentials_of: Some(&self.settings.domain),
        };
        let mut buf = BytesMut::new();
        let edited = msg.forward(&edit, &mut buf);
        self.via_scratch = via;
        if edited.is_err() {
            return Err(Refusal::new(483, "Too Many Hops"));
        }
        if target.transport == crate::sip::Transport::Udp
            && buf.len() > UDP_MAX_TO_BLADES
            && self.is_peer_blade_sip(target.addr)
        {
            let tcp = Peer::new(target.addr, crate::sip::Transport::Tcp);
            return self.build_forward(msg, tcp, request_uri, pop_routes, record_route);
        }
        if target.transport == crate::sip::Transport::Udp && buf.len() > UDP_MAX_PAYLOAD {
            return Err(Refusal::new(513, "Message Too Large"));
        }
        // Not parsed again: the edit keeps a parsed message parseable
        // (tests/edit_props.rs), and the client transaction reads its
        // request only to build a CANCEL or an ACK.
        Ok(Forwarded {
            data: buf.freeze(),
            target,
            branch,
        })
    }

    pub(super) fn forward_in_dialog(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        pop_routes: usize,
        next_route: Option<Peer>,
        out: &mut Output,
    ) {
        if pop_routes == 0 && next_route.is_none() {
            if let Some(core) = self.session_core_elsewhere(&msg) {
                // Its session (whose end a BYE must see) lives there.
                out.handoffs.push(Handoff {
                    core,
                    source,
                    msg,
                    join: false,
                });
                return;
            }
        }
        // A UA may send its in-dialog requests to the agent's address of
        // record rather than the remote target: they reach the agent's
        // contact, retargeted like any request for the agent (RFC 3261
        // §16.5). Not an ACK (`forward_ack`): one to an AOR is a non-2xx
        // ACK on a branch of its own, which ends here.
        let contact = next_route
            .is_none()
            .then(|| self.aor_binding(&msg))
            .flatten()
            .map(|b| (b.peer, b.uri.clone()));
        let target = next_route
            .or(contact.as_ref().map(|(peer, _)| *peer))
            .or_else(|| self.hosted_agent_blade(&msg))
            .or_else(|| self.request_uri_peer(&msg));
        let Some(target) = target else {
            return self.refuse(now, source, msg, &Refusal::new(404, "Not Found"), out);
        };
        let target = if self.refer_subscriptions.is_empty() {
            target
        } else {
            self.over_refers_stream(&msg, target)
        };
        if pop_routes == 0 && !self.may_relay_unrouted(source, &msg, target) {
            let outside = Refusal::new(403, "Forbidden (not routed through this blade)");
            return self.refuse(now, source, msg, &outside, out);
        }
        if pop_routes > 0 && !self.may_relay_routed(&msg, target) {
            let outside = Refusal::new(403, "Forbidden (Route outside the cluster)");
            return self.refuse(now, source, msg, &outside, out);
        }
        let method = msg.method();
        if matches!(method, Some(Method::Invite | Method::Update)) && msg.to().tag().is_some() {
            // A target refresh: the kept dialog follows its sender.
            self.follow_target_refresh(&msg, Some(source));
        }
        match method {
            Some(Method::Refer) => self.note_refer(now, source, &msg),
            Some(Method::Notify) if !self.refer_subscriptions.is_empty() => {
                self.notify_passes(&msg);
            }
            _ => {}
        }
        let held = if method == Some(Method::Bye) {
            self.end_session_by_bye(now, &msg, target, out)
        } else {
            None
        };
        let request_uri = contact.as_ref().map(|(_, uri)| uri.as_str());
        let id = self.forward(
            now,
            source,
            msg,
            target,
            request_uri,
            pop_routes,
            false,
            out,
        );
        if let Some(held) = held {
            // The BYE's transaction holds them until it ends; a BYE that
            // could not go releases them now.
            match id.and_then(|id| self.txs.get_mut(id)) {
                Some(pair) => pair.held_hostings = Some(held),
                None => self.release_held_hostings(now, &held, out),
            }
        }
    }

    /// Whether a request from `source` with a To tag but no Route naming
    /// this blade may go to `target`. Every dialog sipblade sets up is
    /// record-routed, so its requests name the blade in their Route; one
    /// that does not is no dialog of ours, and may reach only an agent's
    /// registered contact (a phone that ignored the route set) or a peer
    /// blade. Anything else would make the blade an open relay for whoever
    /// writes a To tag.
    ///
    /// With `auth` on, an agent's phone is reached so only within a call
    /// this core holds, or from a peer blade (a hosted callee's in-dialog
    /// requests): a To tag must not carry a stranger's NOTIFY or INVITE to
    /// a phone past the challenge every out-of-dialog request gets.
    pub(super) fn may_relay_unrouted(&self, source: Peer, msg: &Message, target: Peer) -> bool {
        if self.is_peer_blade_sip(target.addr) {
            return true;
        }
        if self.is_callers_terminal(msg, target) {
            return true;
        }
        let to_agent = self
            .addressed_binding(msg)
            .is_some_and(|b| b.peer.addr == target.addr);
        to_agent
            && (!self.settings.auth
                || self.sessions.get(msg.call_id()).is_some()
                || self.is_peer_blade_ip(source.addr.ip()))
    }

    /// Whether a request that named this blade in its Route may go on to
    /// `target`, the next Route past ours or its Request-URI. Every
    /// dialog sipblade record-routes runs between the agents' terminals
    /// and the blades, so that is where such a request may go: a peer
    /// blade, a core of this one, the caller's terminal of a session here,
    /// the binding of the agent it is addressed to, or the remote target
    /// a dialog kept here has. Anywhere else would make the blade an open
    /// relay for whoever puts its Record-Route in a Route header.
    ///
    /// A peer blade matches on any port: its Record-Route names the port
    /// of the core that handled the request. Cheapest first: an
    /// agent-to-agent dialog's requests match the addressed binding,
    /// before the caller's Contact would be parsed.
    pub(super) fn may_relay_routed(&self, msg: &Message, target: Peer) -> bool {
        self.is_peer_blade_ip(target.addr.ip())
            || self.is_us_at(target.addr)
            || self.is_core_port_at(target.addr)
            || self.is_addressed_terminal(msg, target)
            || self.is_callers_terminal(msg, target)
            || self.is_kept_dialog_hop(msg, target)
            || self.is_refer_subscriber(msg, target)
    }

    /// An in-dialog REFER passes (RFC 3515): it opens a subscription whose
    /// NOTIFYs come back in the same dialog, to the REFER's Contact, and
    /// may come after the INVITE dialog ended (RFC 6665 §4.5.2: a blind
    /// transfer's last NOTIFY often follows the transferor's BYE). Keeps
    /// that Contact's address for NOTIFYs of this Call-ID
    /// ([`Proxy::is_refer_subscriber`]), when it is a party of the dialog
    /// now (the caller's terminal, or a hop of the dialog kept here), so
    /// the subscription stretches only in time what this blade relays
    /// already, never to a new address; with it, how the REFER's sender
    /// is reached (over the stream it sent on, [`Proxy::phones_stream`]).
    pub(super) fn note_refer(&mut self, now: Duration, source: Peer, msg: &Message) {
        let Some(contact) = msg.contacts().next() else {
            return;
        };
        let uri = contact.uri();
        let Some(subscriber) = route::uri_peer(&uri) else {
            return;
        };
        if !self.is_callers_terminal(msg, subscriber) && !self.is_kept_dialog_hop(msg, subscriber) {
            return;
        }
        let subscriber = self
            .phones_stream(source, &uri, subscriber)
            .unwrap_or(subscriber);
        let until = now + REFER_SUBSCRIPTION;
        if let Some(s) = self.refer_subscriptions.get_mut(msg.call_id()) {
            match s.subscribers.iter_mut().find(|p| p.addr == subscriber.addr) {
                Some(kept) => *kept = subscriber,
                None => s.subscribers.push(subscriber),
            }
            s.until = until;
            return;
        }
        if self.refer_subscriptions.len() >= MAX_REFER_SUBSCRIPTIONS {
            self.refer_subscriptions.retain(|_, s| s.until > now);
            if self.refer_subscriptions.len() >= MAX_REFER_SUBSCRIPTIONS {
                tracing::debug!(call_id = msg.call_id(), "too many refer subscriptions kept");
                return;
            }
        }
        self.refer_subscriptions.insert(
            msg.call_id().into(),
            ReferSubscription {
                subscribers: vec![subscriber],
                until,
            },
        );
    }

    /// `target` of `msg`, a NOTIFY of a refer subscription kept here, as
    /// its REFER's sender is reached ([`Proxy::note_refer`]) when it was
    /// to go by address alone (after the session's end, its Contact with
    /// no `transport` reads as UDP). Only while subscriptions are kept.
    fn over_refers_stream(&self, msg: &Message, target: Peer) -> Peer {
        if target.conn.is_some() || msg.method() != Some(Method::Notify) {
            return target;
        }
        self.refer_subscriptions
            .get(msg.call_id())
            .and_then(|s| {
                s.subscribers
                    .iter()
                    .find(|p| p.addr == target.addr && p.transport.is_reliable())
            })
            .copied()
            .unwrap_or(target)
    }

    /// A NOTIFY passes: the last of a refer subscription
    /// (`Subscription-State: terminated`) ends what [`Proxy::note_refer`]
    /// kept for its Call-ID.
    fn notify_passes(&mut self, msg: &Message) {
        let terminated = msg
            .header_named("Subscription-State")
            .is_some_and(|v| v.trim_ascii_start().starts_with(b"terminated"));
        if terminated {
            self.refer_subscriptions.remove(msg.call_id());
        }
    }

    /// Whether `msg` is a NOTIFY of a refer subscription kept for its
    /// Call-ID ([`Proxy::note_refer`]) and `target` is its subscriber.
    /// Last of the relay checks, and only with subscriptions kept.
    fn is_refer_subscriber(&self, msg: &Message, target: Peer) -> bool {
        !self.refer_subscriptions.is_empty()
            && msg.method() == Some(Method::Notify)
            && self
                .refer_subscriptions
                .get(msg.call_id())
                .is_some_and(|s| s.subscribers.iter().any(|p| p.addr == target.addr))
    }

    /// Whether `target` is where a dialog kept here for `msg`'s Call-ID
    /// (the session's, or on the agent's blade the hosted agent's side)
    /// reaches a party: the first hop towards either, or the callee's
    /// Contact as target refreshes moved it.
    fn is_kept_dialog_hop(&self, msg: &Message, target: Peer) -> bool {
        let call_id = msg.call_id();
        if self
            .sessions
            .get(call_id)
            .and_then(|s| s.dialog.as_deref())
            .is_some_and(|d| d.reaches(target.addr))
        {
            return true;
        }
        let Some(c) = self.cluster.as_ref() else {
            return false;
        };
        let reaches = |agent: &str| {
            c.hosted_dialog(agent, call_id)
                .is_some_and(|d| d.reaches(target.addr))
        };
        if self.addressed_agent(msg).is_some_and(|a| reaches(&a)) {
            return true;
        }
        // A Contact that names no extension: the To names the agent, as
        // in [`Proxy::is_addressed_terminal`].
        let to = msg.to().uri();
        self.is_our_host(&to) && to.user_str().is_some_and(|a| reaches(&a))
    }

    /// Whether `target` is the terminal the caller of `msg`'s session on
    /// this core called from (where its INVITE came from, or its Contact):
    /// the callee's requests go back there, routed or not.
    pub(super) fn is_callers_terminal(&self, msg: &Message, target: Peer) -> bool {
        let Some((from, contact)) = self
            .sessions
            .get(msg.call_id())
            .and_then(|s| s.caller_contact.as_ref())
        else {
            return false;
        };
        from.addr == target.addr
            || crate::sip::Uri::parse(contact.as_bytes())
                .and_then(|uri| route::uri_peer(&uri))
                .is_some_and(|p| p.addr == target.addr)
    }

    /// ACK for a 2xx travels end to end (§16.7 does not apply; the ACK has
    /// its own branch): forward it statelessly along Route / R-URI.
    pub(super) fn forward_ack(&mut self, source: Peer, msg: &Message, out: &mut Output) {
        // The call's 2xx is ACKed: it is not one both phones gave up on.
        self.sessions.acked(msg.call_id());
        let (pop_routes, next) = self.route_split(msg);
        let target = next
            .or_else(|| self.hosted_agent_blade(msg))
            .or_else(|| self.request_uri_peer(msg));
        let mut request_uri = None;
        let target = match target {
            Some(target) => target,
            // A 2xx's ACK that followed the route set but is addressed to
            // the callee's address of record, not the 2xx's Contact (some
            // phones write the To URI): it reaches the agent's contact,
            // retargeted, as any in-dialog request so addressed does. Not
            // one that named no Route of ours: that is a non-2xx's ACK on
            // a branch of its own, which ends here. Looked at only where
            // the ACK would otherwise be dropped.
            None if pop_routes > 0 => match self.aor_binding(msg) {
                Some(b) => {
                    request_uri = Some(b.uri.clone());
                    b.peer
                }
                None => return,
            },
            None => return,
        };
        if pop_routes == 0 && !self.may_relay_unrouted(source, msg, target) {
            return;
        }
        if pop_routes > 0 && !self.may_relay_routed(msg, target) {
            return;
        }
        // A stateless branch: derived from the incoming one, so every
        // retransmission of the ACK is forwarded alike (§16.11).
        let mut via = String::with_capacity(96);
        route::push_via_head(
            &mut via,
            target.transport,
            self.sent_by(target.transport),
            self.settings.core,
        );
        via.push('a');
        via.push_str(msg.top_via().branch().unwrap_or("0"));
        let edit = Forward {
            via: Some(&via),
            request_uri: request_uri.as_deref(),
            pop_routes,
            consume_credentials_of: Some(&self.settings.domain),
            ..Forward::default()
        };
        let mut buf = BytesMut::new();
        if msg.forward(&edit, &mut buf).is_ok() {
            out.transmits.push(Transmit {
                to: target,
                data: buf.freeze(),
            });
        }
    }
}
