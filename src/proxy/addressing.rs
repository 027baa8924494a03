//! Who a request is for: this blade, a peer blade, an agent, a loop.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use super::Proxy;
use super::route;
use crate::registrar::location::{AgentState, Binding};
use crate::sip::Message;
use crate::transaction::Peer;

impl Proxy {
    /// Loop detection (RFC 3261 §16.3 step 4): a Via of ours whose branch
    /// carries the loop hash this very request would get means the request
    /// came back unchanged: a loop. A different hash is a spiral (the
    /// request was retargeted), which is fine.
    ///
    /// Any core's Via counts (each names its own port), so a Via of ours
    /// is one with our IP and a sipblade branch; the loop hash in the
    /// branch makes a match specific to this request.
    pub(super) fn is_loop(&self, msg: &Message) -> bool {
        // Most requests carry no Via of a sipblade: a substring search of
        // the Via lines rules that out before anything is parsed.
        if !msg
            .header_values(crate::sip::HeaderName::Via)
            .any(|v| self.branch_finder.find(v).is_some())
        {
            return false;
        }
        let hash = route::loop_hash(msg);
        msg.vias().any(|v| {
            v.ip() == Some(self.settings.local.ip())
                && v.branch().and_then(route::loop_hash_of_branch) == Some(hash)
        })
    }

    /// A strict router's request made loose (RFC 3261 §16.4): a router
    /// of RFC 2543's kind before this blade put the blade's Record-Route
    /// URI (no user, this blade's address) in the Request-URI and the real
    /// target last in Route. The blade puts that last Route back into the
    /// Request-URI, as the RFC requires; forwarded as it came, the request
    /// would reach the next hop addressed to the blade. `None` for any
    /// other request (a Request-URI with a user part, the common case, is
    /// ruled out first; then one without the `lr` every Record-Route of
    /// ours carries). Rare, so the rewrite copies the message.
    pub(super) fn strict_route_fixup(&self, msg: &Message) -> Option<Message> {
        let uri = msg.request_uri()?;
        if uri.user().is_some()
            || !uri.is_loose_route()
            || !route::uri_peer(&uri)
                .is_some_and(|p| self.is_us_at(p.addr) || self.is_core_port_at(p.addr))
        {
            return None;
        }
        let routes: Vec<_> = msg.routes().collect();
        let (last, kept) = routes.split_last()?;
        let src = msg.as_bytes();
        let mut text = Vec::with_capacity(src.len());
        text.extend_from_slice(msg.method_str()?.as_bytes());
        text.push(b' ');
        text.extend_from_slice(last.uri().as_str().as_bytes());
        text.extend_from_slice(b" SIP/2.0\r\n");
        let mut routes_written = false;
        for h in msg.header_fields() {
            if h.name != crate::sip::HeaderName::Route {
                text.extend_from_slice(h.line().of(src));
            } else if !routes_written && !kept.is_empty() {
                routes_written = true;
                text.extend_from_slice(b"Route: ");
                for (i, r) in kept.iter().enumerate() {
                    if i > 0 {
                        text.extend_from_slice(b", ");
                    }
                    text.extend_from_slice(r.as_bytes());
                }
                text.extend_from_slice(b"\r\n");
            }
        }
        text.extend_from_slice(&src[msg.headers_end() - 2..msg.body_span().end as usize]);
        Message::parse(bytes::Bytes::from(text)).ok()
    }

    /// The sent-by of a Via for a request that goes over `transport`.
    pub(super) fn sent_by(&self, transport: crate::sip::Transport) -> &str {
        match transport {
            crate::sip::Transport::Udp => &self.udp_sent_by,
            _ => &self.sent_by,
        }
    }

    /// How many of the top Routes name this blade: one, or two where it
    /// record-routed twice to change transport (RFC 5658).
    pub(super) fn our_routes(&self, msg: &Message) -> usize {
        self.route_split(msg).0
    }

    /// Loose routing (RFC 3261 §16.4): how many top Routes name this blade
    /// (ours to remove: its address, or the domain with no user part), and
    /// where the next one leads. One pass over the
    /// Route values, each URI read once.
    pub(super) fn route_split(&self, msg: &Message) -> (usize, Option<Peer>) {
        let mut ours = 0;
        for route in msg.routes() {
            let uri = route.uri();
            let next = route::uri_peer(&uri);
            let is_ours = match next {
                Some(p) => self.is_us_at(p.addr),
                // A phone whose outbound proxy is set to the domain
                // preloads `Route: <sip:DOMAIN;lr>`: the domain's proxy is
                // this blade. Looked at only when the Route names no IP.
                None => {
                    uri.user().is_none() && uri.host().eq_ignore_ascii_case(&self.settings.domain)
                }
            };
            if !is_ours {
                return (ours, next);
            }
            ours += 1;
        }
        (ours, None)
    }

    /// Whether `uri` names this blade: its address (a default port is
    /// 5060), or this core's own port, which our UDP Record-Routes name.
    pub(super) fn is_us(&self, uri: &crate::sip::Uri<'_>) -> bool {
        route::uri_peer(uri).is_some_and(|p| self.is_us_at(p.addr))
    }

    /// [`Proxy::is_us`] for an address.
    pub(super) fn is_us_at(&self, addr: SocketAddr) -> bool {
        let local = self.settings.local;
        addr == local || (addr.ip() == local.ip() && Some(addr.port()) == self.settings.via_port)
    }

    /// Whether `uri` names another core's own UDP port on our IP. Kept
    /// apart from [`Proxy::is_us`]: a Route naming another core is that
    /// core's to pop, as it owns the dialog.
    pub(super) fn is_core_port(&self, uri: &crate::sip::Uri<'_>) -> bool {
        route::uri_peer(uri).is_some_and(|p| self.is_core_port_at(p.addr))
    }

    /// [`Proxy::is_core_port`] for an address.
    pub(super) fn is_core_port_at(&self, addr: SocketAddr) -> bool {
        addr.ip() == self.settings.local.ip() && self.settings.core_ports.contains(&addr.port())
    }

    /// Whether a Request-URI host names the cluster's agents (SPEC §5):
    /// the domain (an IP literal in any spelling), our address, or a peer
    /// blade's address.
    pub(super) fn is_our_host(&self, uri: &crate::sip::Uri<'_>) -> bool {
        if uri.host().eq_ignore_ascii_case(&self.settings.domain) {
            return true;
        }
        let Some(ip) = uri.ip() else {
            return false;
        };
        ip == self.settings.local.ip() || Some(ip) == self.domain_ip || self.is_peer_blade_ip(ip)
    }

    /// Whether `ip` is a peer blade's (on any port: each of its cores
    /// sends from a Via port of its own).
    pub(super) fn is_peer_blade_ip(&self, ip: IpAddr) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.peer_by_ip(ip).is_some())
    }

    /// A request to the blade itself: no user part, our host, and on our IP
    /// no port or one of ours (the SIP port, or a core's own UDP port).
    /// Another port on our IP is another SIP endpoint on this host (RFC
    /// 3261 §19.1.4: the port is part of the URI), which the blade must not
    /// answer for. A peer blade's IP matches on any port, as its core ports
    /// are not known here.
    pub(super) fn is_to_blade(&self, msg: &Message) -> bool {
        msg.request_uri().is_some_and(|u| {
            let elsewhere_on_our_ip = u.port().is_some()
                && u.ip() == Some(self.settings.local.ip())
                && !self.is_us(&u)
                && !self.is_core_port(&u);
            u.user().is_none() && self.is_our_host(&u) && !elsewhere_on_our_ip
        })
    }

    /// Whether `addr` is a peer blade's SIP address.
    pub(super) fn is_peer_blade_sip(&self, addr: SocketAddr) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.peer_by_sip(addr).is_some())
    }

    /// The binding of the agent a request is addressed to, when this core
    /// owns that agent and it is registered: the agent its Request-URI
    /// names by user or, for a Request-URI without one (a terminal's own
    /// Contact, which many UAs write as `sip:IP:PORT`), the agent its To
    /// names on our host (SPEC §5).
    pub(super) fn addressed_binding(&self, msg: &Message) -> Option<&Binding> {
        let agent = self.addressed_agent(msg)?;
        self.registrar.location().get(&agent)?.binding.as_ref()
    }

    /// The extension a request is addressed to: its Request-URI's user or,
    /// without one, its To's user on our host (SPEC §5).
    pub(super) fn addressed_agent<'m>(&self, msg: &'m Message) -> Option<Cow<'m, str>> {
        let uri = msg.request_uri()?;
        if uri.user().is_some() {
            return uri.user_str();
        }
        let to = msg.to().uri();
        if !self.is_our_host(&to) {
            return None;
        }
        to.user_str()
    }

    /// For an unrouted in-dialog request (its sender kept no route set:
    /// a terminal that did not copy the Record-Route), the core its session
    /// lives on when that is another: this core owns the agent the request
    /// goes to, and that agent is in the call there.
    pub(super) fn session_core_elsewhere(&self, msg: &Message) -> Option<usize> {
        let call_id = msg.call_id();
        if self.sessions.get(call_id).is_some() {
            return None;
        }
        let core = *self.remote_sessions.get(call_id)?;
        let agent = self.addressed_agent(msg)?;
        let in_this_call = matches!(
            &self.registrar.location().get(&agent)?.state,
            AgentState::InCall { call_id: c } if c == call_id
        );
        in_this_call.then_some(core)
    }

    /// Where an unrouted in-dialog request of a session on this core goes
    /// when it is addressed to the session's hosted agent at its terminal:
    /// to the agent's blade, which takes it on to the terminal (SPEC §2
    /// step 5), as a routed one would go.
    pub(super) fn hosted_agent_blade(&self, msg: &Message) -> Option<Peer> {
        let hosted = self.sessions.get(msg.call_id())?.hosted.as_ref()?;
        let to = msg.to().uri();
        if *to.user_str()? != *hosted.extension || !self.is_our_host(&to) {
            return None;
        }
        let uri = msg.request_uri()?;
        let info = hosted.info.as_ref()?;
        let at_terminal = info.contact == uri.as_str()
            || route::uri_peer(&uri).is_some_and(|p| p.addr == info.addr);
        if !at_terminal {
            return None;
        }
        let blade = self.cluster.as_ref()?.peer(hosted.blade.as_deref()?)?;
        Some(Peer::new(blade.sip, crate::sip::Transport::Udp))
    }

    /// The binding of the agent the Request-URI names, when this core owns
    /// that agent and it is registered.
    pub(super) fn request_uri_binding(&self, msg: &Message) -> Option<&Binding> {
        let agent = msg.request_uri()?.user_str()?;
        self.registrar.location().get(&agent)?.binding.as_ref()
    }

    /// Where the Request-URI points. When it is the registered contact of
    /// an agent this core owns, the binding's peer: over TCP that is the
    /// agent's own connection, which its ephemeral port alone would not
    /// reach. Else, over a stream, when it is the Contact of the caller
    /// of this core's session, the connection the caller called on
    /// ([`Proxy::callers_stream`]).
    pub(super) fn request_uri_peer(&self, msg: &Message) -> Option<Peer> {
        let uri = msg.request_uri()?;
        let named = route::uri_peer(&uri);
        match self.addressed_binding(msg) {
            Some(b) if b.uri == uri.as_str() || named.is_some_and(|p| p.addr == b.peer.addr) => {
                Some(b.peer)
            }
            // A Contact naming a host (never resolved: the agent is reached
            // where it registered from) written otherwise than registered,
            // with a parameter more or in another case: the same host and
            // port are that agent's terminal. Looked at only for a
            // Request-URI that names no IP.
            Some(b)
                if named.is_none()
                    && crate::sip::Uri::parse(b.uri.as_bytes())
                        .is_some_and(|r| r.same_host(&uri) && r.port() == uri.port()) =>
            {
                Some(b.peer)
            }
            _ => named.map(|p| self.callers_stream(msg, &uri, p)),
        }
    }

    /// `named`, the peer the Request-URI `uri` of `msg` names, with the
    /// connection of the caller of `msg`'s session on this core when it
    /// is that caller's Contact and the caller called over a stream: a
    /// caller behind NAT names its private address, reachable only
    /// through its connection, and a Contact with no `transport` (UDP by
    /// RFC 3263) names a phone that registered and called over a stream
    /// and listens there only, as Kamailio reaches it on the socket it
    /// registered on. That connection serves while it lasts; once it has
    /// closed, a new one goes to `named` (RFC 3261 §18.1.1). The caller's
    /// binding may be another core's (the session lives on the callee's),
    /// so the binding cannot tell. Not a caller whose INVITE a peer blade
    /// relayed: that connection is the peer's. Not a Contact that asks for
    /// UDP in so many words. Cheapest first: a UDP caller is ruled out
    /// before anything is parsed.
    fn callers_stream(&self, msg: &Message, uri: &crate::sip::Uri<'_>, named: Peer) -> Peer {
        let Some((from, contact)) = self
            .sessions
            .get(msg.call_id())
            .and_then(|s| s.caller_contact.as_ref())
        else {
            return named;
        };
        let Some(stream) = self.phones_stream(*from, uri, named) else {
            return named;
        };
        let at_contact = crate::sip::Uri::parse(contact.as_bytes())
            .and_then(|uri| route::uri_peer(&uri))
            .is_some_and(|p| p.addr == named.addr);
        if at_contact { stream } else { named }
    }

    /// `named`, the peer a phone's Contact `uri` names, reached over the
    /// stream `from` that the phone sent on: when `from` is a stream from
    /// a phone (not a peer blade's connection) and the Contact asks for no
    /// other transport (no `transport`, which RFC 3263 reads as UDP, names
    /// a phone that listens on its stream only). `None` otherwise.
    pub(super) fn phones_stream(
        &self,
        from: Peer,
        uri: &crate::sip::Uri<'_>,
        named: Peer,
    ) -> Option<Peer> {
        if from.conn.is_none() || self.is_peer_blade_ip(from.addr.ip()) {
            return None;
        }
        if !named.transport.is_reliable() && uri.param("transport").is_some() {
            return None;
        }
        Some(Peer {
            conn: from.conn,
            transport: from.transport,
            ..named
        })
    }

    /// The binding of the agent this core owns that the Request-URI names
    /// by its address of record (our domain or address, SPEC §5) rather
    /// than by its contact.
    pub(super) fn aor_binding(&self, msg: &Message) -> Option<&Binding> {
        let uri = msg.request_uri()?;
        self.request_uri_binding(msg)
            .filter(|b| b.uri != uri.as_str() && self.is_our_host(&uri))
    }

    /// Whether `extension` is logged in on this blade (on any core).
    pub(super) fn logged_in_on_blade(&self, extension: &str) -> bool {
        let local = self
            .registrar
            .location()
            .get(extension)
            .map(|r| r.is_logged_in());
        local.unwrap_or_else(|| self.logged_in_elsewhere.contains_key(extension))
    }

    /// Where requests for `extension`, logged in on this core, go.
    pub(super) fn terminal_of(&self, extension: &str) -> Option<SocketAddr> {
        let binding = self.registrar.location().get(extension)?.binding.as_ref()?;
        Some(binding.peer.addr)
    }

    /// Whether `target` is the terminal of the agent `msg` is addressed
    /// to, logged in on this core or (known from its notices) another:
    /// the agent its Request-URI names, or else the one its To names. A
    /// phone's Contact, the Request-URI of the requests it is sent, need
    /// not carry its extension (its badge, the login id it authenticates
    /// with, or a token of its own), but the To of a request in its
    /// dialogs is its address of record. Either way `target` is an
    /// agent's registered terminal.
    pub(super) fn is_addressed_terminal(&self, msg: &Message, target: Peer) -> bool {
        let terminal_is = |agent: &str| {
            let terminal = self
                .terminal_of(agent)
                .or_else(|| self.logged_in_elsewhere.get(agent).copied());
            terminal == Some(target.addr)
        };
        if self.addressed_agent(msg).is_some_and(|a| terminal_is(&a)) {
            return true;
        }
        let to = msg.to().uri();
        self.is_our_host(&to) && to.user_str().is_some_and(|a| terminal_is(&a))
    }
}
