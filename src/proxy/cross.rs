//! Cross-blade calls (SPEC §2): the proxy's side of hosting.
//!
//! On the source blade S, an INVITE for an agent not registered here waits
//! (after 100 Trying) while [`Source`] hosts the agent; the grant's login
//! information is saved in the session and the INVITE goes to the target
//! blade T with the hosting token in its Request-URI
//! (`sip:2001@T;sbh=<token>`). On T, that token is checked against the
//! grant and the INVITE goes on to the agent's terminal. Both blades
//! Record-Route, so the dialog's requests follow the same path. When the
//! session ends, S releases the agent; when a BYE that S relays to T ends
//! it, only once that BYE has passed T ([`Proxy::end_session_by_bye`]).
//!
//! While an agent is hosted, a new INVITE for it reaching T is held and
//! handed to S ([`Target::redirect`]), whose answer (486 while the agent is
//! in the session) T relays to the caller.
//!
//! When the link to S comes back over a new connection (same run of S),
//! T asks S about each grant it gave over an older one
//! ([`Target::peer_up`], [`Source::still_holds`]): S may have seen the link
//! drop and ended those sessions, their unhosts lost with the link. A
//! grant S no longer holds ends at once, as a lapse would.
//!
//! Which core handles what: the session, its [`Source`] hostings and the
//! redirects for its agent live on the core the callee's extension hashes
//! to; the agent's record and grant on T live on that core of T. The
//! runtime routes link messages by extension or by request id
//! ([`request_core`]); a confirmation goes to the core of S that asked
//! for the grant, named by the host request's id.
//!
//! This module keeps what both sides share: the cluster's state on a core,
//! the link's messages, the directory's announcements. S's side of a call
//! is in `cross_source`, T's in `cross_target`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::dialog::Dialog;
use super::{Output, Proxy};
use crate::cluster::codec::{Class, DirectoryEntry, Message as LinkMessage, Refusal, Token};
use crate::cluster::hosting::{Directory, HostSecret, Source, Target};
use crate::cluster::link::ReplyTo;
use crate::sip::{Message, Uri};
use crate::transaction::Peer;

/// The Request-URI parameter carrying the hosting token from S to T.
pub const TOKEN_PARAM: &str = "sbh";

/// How long T holds a new INVITE for a hosted agent while the hosting
/// blade decides; then it answers 486 itself.
pub const REDIRECT_WAIT: Duration = Duration::from_secs(1);

/// Request ids carry the core that sent the request in their top bits, so
/// answers are routed back to it.
const CORE_SHIFT: u32 = 48;

/// Another blade of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerBlade {
    /// Its blade id (the one in its certificate).
    pub id: String,
    /// Its SIP address: where INVITEs for the agents it hosts out go.
    pub sip: SocketAddr,
}

/// What a proxy core needs to take part in hosting.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The other blades.
    pub peers: Vec<PeerBlade>,
    /// The lease this blade asks for and the longest it grants.
    pub lease_secs: u32,
    /// The key of this blade's hosting tokens (one per blade).
    pub secret: HostSecret,
    /// Where login epochs start: something that grows across restarts.
    pub epoch_base: u64,
}

/// Where a message for the link goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// One peer blade.
    Peer(String),
    /// Every peer blade (directory notices).
    AllPeers,
    /// The answer to a request that came over the link from `peer`.
    Reply {
        /// The peer that asked.
        peer: String,
        /// The exchange to answer on.
        reply: ReplyTo,
    },
}

/// A message for the inter-blade link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSend {
    /// Where it goes.
    pub to: Dest,
    /// What.
    pub msg: LinkMessage,
}

/// Why a transaction is held without a client transaction yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waiting {
    /// S: the INVITE waits for the callee's host grant (since when, for
    /// the round-trip histogram). The source's own request timeout bounds
    /// the wait.
    Grant { since: Duration },
    /// T: a new INVITE for a hosted agent waits for the hosting blade.
    Redirect { request_id: u64, until: Duration },
    /// S: an out-of-dialog request that is not a call waits for leave to
    /// relay it to the agent's blade; the source's request timeout bounds
    /// the wait.
    Relay,
    /// A Join naming a dialog this core does not know yet: the call-state
    /// notice that its party joined a call may still be on its way from
    /// the session's core ([`super::join`]).
    Notices { until: Duration },
}

impl Waiting {
    pub(super) fn deadline(&self) -> Option<Duration> {
        match self {
            Waiting::Grant { .. } | Waiting::Relay => None,
            Waiting::Redirect { until, .. } | Waiting::Notices { until } => Some(*until),
        }
    }
}

/// A core's hosting state: both sides and its shard of the directory.
pub(super) struct Cluster {
    pub(super) peers: Vec<PeerBlade>,
    pub(super) target: Target,
    pub(super) source: Source,
    pub(super) directory: Directory,
    /// S: INVITEs waiting for a grant, by Call-ID.
    pub(super) awaiting_grant: HashMap<String, usize>,
    /// T: INVITEs waiting for the hosting blade's verdict, by redirect id.
    pub(super) awaiting_redirect: HashMap<u64, usize>,
    /// S: requests waiting for leave to be relayed, by Call-ID.
    pub(super) awaiting_relay: HashMap<String, Vec<usize>>,
    /// T: the answered calls relayed to this core's hosted agents, by
    /// agent; one each (a join leg to a hosted agent adds one), until its
    /// grant ends or a BYE passes.
    hosted_dialogs: HashMap<String, Vec<HostedDialog>>,
    /// S: while a BYE on its way to a peer blade ends its session, the
    /// time its hostings are released at the latest, and the sessions
    /// whose hostings wait for it so ([`Proxy::release_hosting`]).
    pub(super) bye_holds: Option<(Duration, Vec<String>)>,
}

/// T: an answered call that a hosting blade brought to one of this
/// blade's agents, as far as the agent goes: what a BYE to the agent's
/// phone takes ([`Dialog::bye_to_callee`]) should the grant lapse. Also
/// the leg of a hosted joiner (or Replaces newcomer) of this blade's,
/// which placed it: kept as seen from its callee
/// ([`Dialog::towards_caller`]), so the agent is addressed the same way.
pub(super) struct HostedDialog {
    pub(super) call_id: Box<str>,
    /// The token of the grant the INVITE came with: the record lives no
    /// longer than that grant.
    pub(super) grant: Token,
    /// From, To, the agent's Contact and the way to it; nothing towards
    /// the other party (the hosting blade has that side).
    pub(super) dialog: Dialog,
}

/// The record of a hosted joiner's leg ([`HostedDialog`]), on its way
/// from the core that relayed the leg to the joiner's own core, which
/// holds the grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedLeg {
    pub(super) extension: String,
    pub(super) call_id: Box<str>,
    pub(super) dialog: Dialog,
}

impl Cluster {
    pub(super) fn new(settings: &ClusterSettings, core: usize) -> Cluster {
        let base = (core as u64) << CORE_SHIFT | 1;
        Cluster {
            peers: settings.peers.clone(),
            target: Target::new(&settings.secret, settings.lease_secs)
                .with_epoch_base(settings.epoch_base)
                .with_request_base(base),
            source: Source::new(settings.lease_secs).with_request_base(base),
            directory: Directory::new(),
            awaiting_grant: HashMap::new(),
            awaiting_redirect: HashMap::new(),
            awaiting_relay: HashMap::new(),
            hosted_dialogs: HashMap::new(),
            bye_holds: None,
        }
    }

    /// T: keeps `dialog` for `agent`. Records of an earlier grant of the
    /// agent that somehow outlived it go (only one grant holds an agent).
    pub(super) fn keep_hosted_dialog(&mut self, agent: String, dialog: HostedDialog) {
        let list = self.hosted_dialogs.entry(agent).or_default();
        list.retain(|d| d.grant.matches(&dialog.grant) && d.call_id != dialog.call_id);
        list.push(dialog);
    }

    /// T: takes the dialogs kept for `agent` under the grant of `token`.
    pub(super) fn take_hosted_dialogs(&mut self, agent: &str, token: &Token) -> Vec<HostedDialog> {
        let Some(list) = self.hosted_dialogs.get_mut(agent) else {
            return Vec::new();
        };
        if list.iter().all(|d| d.grant.matches(token)) {
            return self.hosted_dialogs.remove(agent).unwrap_or_default();
        }
        let (gone, kept) = std::mem::take(list)
            .into_iter()
            .partition(|d| d.grant.matches(token));
        *list = kept;
        gone
    }

    /// T: a BYE `msg` passes: the hosted agent's dialog it ends, if kept,
    /// is over (the agent is named in its From or To).
    /// T: the dialog kept for `agent` in `call_id`, if any.
    pub(super) fn hosted_dialog(&self, agent: &str, call_id: &str) -> Option<&Dialog> {
        self.hosted_dialogs
            .get(agent)?
            .iter()
            .find(|d| &*d.call_id == call_id)
            .map(|d| &d.dialog)
    }

    pub(super) fn hosted_dialog_ended(&mut self, msg: &Message) {
        if self.hosted_dialogs.is_empty() {
            return;
        }
        for uri in [msg.to().uri(), msg.from().uri()] {
            let Some(agent) = uri.user_str() else {
                continue;
            };
            if let Some(list) = self.hosted_dialogs.get_mut(&*agent) {
                list.retain(|d| &*d.call_id != msg.call_id() || !d.dialog.has_tags_of(msg));
                if list.is_empty() {
                    self.hosted_dialogs.remove(&*agent);
                }
            }
        }
    }

    /// T: a target refresh by `agent` (its tag `tag`) in dialog
    /// `call_id`, if that is a dialog kept for it: its BYE goes to
    /// `target` ([`Proxy::follow_target_refresh`]).
    pub(super) fn refresh_hosted_dialog(
        &mut self,
        agent: &str,
        call_id: &str,
        tag: &str,
        target: &str,
        hop: Option<Peer>,
    ) {
        let Some(list) = self.hosted_dialogs.get_mut(agent) else {
            return;
        };
        let kept = list
            .iter_mut()
            .find(|d| &*d.call_id == call_id && d.dialog.callee_tag() == Some(tag));
        if let Some(d) = kept {
            d.dialog.refresh_callee(target, hop);
        }
    }

    /// T: how many INVITEs wait for a hosting blade's verdict (tests).
    #[cfg(test)]
    pub(super) fn awaiting_redirects(&self) -> usize {
        self.awaiting_redirect.len()
    }

    /// T: how many hosted agents' dialogs are kept (tests).
    #[cfg(test)]
    pub(super) fn hosted_dialogs(&self) -> usize {
        self.hosted_dialogs.values().map(Vec::len).sum()
    }

    pub(super) fn next_deadline(&self) -> Option<Duration> {
        [self.target.next_deadline(), self.source.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The peer blade whose SIP address has this IP (the first, where
    /// several share it).
    pub(super) fn peer_by_ip(&self, ip: IpAddr) -> Option<&PeerBlade> {
        self.peers.iter().find(|p| p.sip.ip() == ip)
    }

    /// The peer blade whose SIP address this is.
    pub(super) fn peer_by_sip(&self, addr: SocketAddr) -> Option<&PeerBlade> {
        self.peers.iter().find(|p| p.sip == addr)
    }

    pub(super) fn peer(&self, id: &str) -> Option<&PeerBlade> {
        self.peers.iter().find(|p| p.id.eq_ignore_ascii_case(id))
    }

    /// Whether the peer blade `p`'s link is down.
    fn is_down(&self, p: &PeerBlade) -> bool {
        !self
            .directory
            .peers()
            .any(|up| up.eq_ignore_ascii_case(&p.id))
    }

    /// Whether a hop at `addr` is a peer blade whose link is down: the
    /// peer whose SIP address it is; else, on a peer's IP (a Record-Route
    /// names the port of the core that handled the request, which is not
    /// known here), every peer on that IP, as where several blades share
    /// an IP the hop may be any of them.
    pub(super) fn link_down_at(&self, addr: SocketAddr) -> bool {
        if let Some(p) = self.peer_by_sip(addr) {
            return self.is_down(p);
        }
        let mut at_ip = self
            .peers
            .iter()
            .filter(|p| p.sip.ip() == addr.ip())
            .peekable();
        at_ip.peek().is_some() && at_ip.all(|p| self.is_down(p))
    }

    /// Whether a hop at `addr` leads to the peer blade whose SIP address
    /// is `sip`: that address, or another port on its IP (a core's own,
    /// [`Cluster::link_down_at`]) that no other peer on that IP whose link
    /// is up may own.
    pub(super) fn hop_is_peer(&self, addr: SocketAddr, sip: SocketAddr) -> bool {
        if addr == sip {
            return true;
        }
        if addr.ip() != sip.ip() || self.peer_by_sip(addr).is_some() {
            return false;
        }
        self.peers
            .iter()
            .filter(|p| p.sip.ip() == addr.ip() && p.sip != sip)
            .all(|p| self.is_down(p))
    }
}

/// The hosting token a Request-URI carries, if any.
pub fn hosting_token<'a>(uri: &Uri<'a>) -> Option<&'a [u8]> {
    uri.param(TOKEN_PARAM).map(Option::unwrap_or_default)
}

/// The core a link message belongs to on this blade: by its agent's
/// extension for requests, notices of one agent and redirects, by its
/// request id for answers. A confirmation goes by the id of the host
/// request that won the grant, which names the core that sent it: the
/// core holding the hosting, and any request still waiting for it (a join
/// leg's hosting lives on its session's core, which the agent's extension
/// need not name). `None` for directory notices, which the runtime splits
/// by extension, and for what concerns the link itself.
pub fn request_core(msg: &LinkMessage, cores: usize) -> Option<usize> {
    let by_id = |id: u64| ((id >> CORE_SHIFT) as usize).min(cores.saturating_sub(1));
    if let LinkMessage::Confirm { grant, .. } = msg {
        return Some(by_id(*grant));
    }
    match msg.class() {
        Class::Notice | Class::Link => None,
        Class::Request | Class::Redirect => msg
            .extension()
            .map(|e| super::route::shard_of(e.as_bytes(), cores)),
        Class::Reply | Class::RedirectAnswer => msg.request_id().map(by_id),
    }
}

/// Splits a directory notice by the cores that own its agents. Every core
/// gets its part of a resync, even an empty one (it replaces what the core
/// knew of the peer); announcements and withdrawals go only where they
/// name an agent.
pub fn split_notice(msg: &LinkMessage, cores: usize) -> Vec<(usize, LinkMessage)> {
    let entries = match msg {
        LinkMessage::Announce { entries }
        | LinkMessage::Withdraw { entries }
        | LinkMessage::Resync { entries } => entries,
        _ => return Vec::new(),
    };
    let mut parts: Vec<Vec<DirectoryEntry>> = vec![Vec::new(); cores.max(1)];
    for e in entries {
        parts[super::route::shard_of(e.extension.as_bytes(), cores)].push(e.clone());
    }
    let resync = matches!(msg, LinkMessage::Resync { .. });
    parts
        .into_iter()
        .enumerate()
        .filter(|(_, part)| resync || !part.is_empty())
        .map(|(core, entries)| {
            let part = match msg {
                LinkMessage::Announce { .. } => LinkMessage::Announce { entries },
                LinkMessage::Withdraw { .. } => LinkMessage::Withdraw { entries },
                _ => LinkMessage::Resync { entries },
            };
            (core, part)
        })
        .collect()
}

impl Proxy {
    /// Handles a message from peer blade `from` (its certificate's id);
    /// `reply` is where a request's answer goes.
    pub fn handle_cluster(
        &mut self,
        now: Duration,
        from: &str,
        msg: LinkMessage,
        reply: Option<ReplyTo>,
        out: &mut Output,
    ) {
        let loaded = self.loaded();
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        match msg.class() {
            Class::Notice => {
                c.directory.apply(from, &msg);
                if let LinkMessage::Announce { entries } = &msg {
                    self.moved_to_peer(from, entries, out);
                }
            }
            Class::Request => {
                let answer = match &msg {
                    // A loaded core takes on no call from a peer either:
                    // the grant's INVITE would not be shed.
                    LinkMessage::HostRequest { request_id, .. } if loaded => {
                        Some(LinkMessage::HostRefused {
                            request_id: *request_id,
                            reason: Refusal::Overloaded,
                        })
                    }
                    _ => {
                        let location = self.registrar.location_mut();
                        c.target.handle_request(now, location, from, &msg)
                    }
                };
                if let Some(answer) = answer {
                    if let LinkMessage::HostGranted { info, .. } = &answer {
                        self.metrics.hosting_granted += 1;
                        tracing::debug!(agent = %info.extension, source = from, "agent hosted");
                    }
                    if let Some(reply) = reply {
                        out.cluster.push(ClusterSend {
                            to: Dest::Reply {
                                peer: from.to_owned(),
                                reply,
                            },
                            msg: answer,
                        });
                    }
                }
                // An unhost, or a lease found lapsed by a request.
                self.pump_released(now, out);
            }
            Class::Reply | Class::Redirect => {
                c.source.handle(now, &mut c.directory, from, msg);
                self.pump_source(now, out);
            }
            // The link's driver reads these (a Hello becomes
            // `peer_restarted` when it names a new run).
            Class::Link => {}
            Class::RedirectAnswer => {
                if let LinkMessage::Confirmed { request_id, held } = msg {
                    let location = self.registrar.location_mut();
                    if c.target.confirmed(now, location, from, request_id, held) {
                        tracing::info!(
                            peer = from,
                            "peer no longer holds a grant after its link came back: agent taken back"
                        );
                    }
                    self.pump_released(now, out);
                    return;
                }
                if let LinkMessage::RedirectAnswer { request_id, status } = msg {
                    let Some(id) = c.awaiting_redirect.remove(&request_id) else {
                        return;
                    };
                    let Some(pair) = self.txs.get_mut(id) else {
                        return;
                    };
                    pair.waiting = None;
                    if pair.server.is_final() {
                        return; // The caller cancelled meanwhile.
                    }
                    // Taking the request over (3xx) is not offered: the
                    // agent stays busy.
                    let status = if (400..700).contains(&status) {
                        status
                    } else {
                        486
                    };
                    // The call was for an agent of this blade: counted here.
                    self.metrics.local.ended_with(status);
                    self.answer_pending(now, id, status, out);
                }
            }
        }
    }

    /// `peer` announces fresh logins: an agent of these that is still
    /// logged in here moved to that blade (an extension is one agent in
    /// the cluster), so its registration here ends, or calls placed on
    /// this blade would still ring the phone it left. A call it is in goes
    /// on. A resync is not taken this way: after a partition both blades
    /// may hold a login, and neither is known to be the later one. Nor is
    /// an announcement of a login older than this blade's: the two crossed
    /// on the link, and the peer drops its own on hearing of this one.
    fn moved_to_peer(&mut self, peer: &str, entries: &[DirectoryEntry], out: &mut Output) {
        for entry in entries {
            let ext = entry.extension.as_str();
            let me = self.settings.blade_id.as_str();
            if self
                .cluster
                .as_ref()
                .is_some_and(|c| c.target.later_than_peers(me, peer, ext, entry.epoch))
            {
                tracing::info!(
                    agent = ext,
                    blade = peer,
                    "agent logged in on another blade before its login here: kept here"
                );
                continue;
            }
            if !self.registrar.location_mut().unbind(ext) {
                continue;
            }
            tracing::info!(
                agent = ext,
                blade = peer,
                "agent logged in on another blade: logged out here"
            );
            self.announce_logout(ext, out);
        }
    }

    /// The link to `peer` came up over its connection number `link`
    /// (`Some`: numbers grow with each connection to that peer; see
    /// [`Proxy::peer_restarted`]) or went down (`None`). On a new
    /// connection, the grants `peer` holds from an earlier one on this
    /// core are confirmed with it ([`Target::peer_up`]).
    pub fn peer_state(&mut self, now: Duration, peer: &str, link: Option<u64>, out: &mut Output) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if let Some(link) = link {
            c.directory.peer_up(peer);
            let asked = c.target.peer_up(now, peer, link);
            if asked > 0 {
                tracing::info!(
                    peer,
                    grants = asked,
                    "peer reconnected: confirming the grants it held"
                );
            }
            while let Some((to, msg)) = c.target.poll_transmit() {
                out.cluster.push(ClusterSend {
                    to: Dest::Peer(to),
                    msg,
                });
            }
        } else {
            c.directory.peer_down(peer);
            c.source.peer_lost(peer);
            let grants = c.target.peer_lost(peer);
            if grants > 0 {
                tracing::info!(
                    peer,
                    grants,
                    "peer lost; its grants end with their leases, or at once if it comes back as a new run"
                );
            }
            self.pump_source(now, out);
        }
    }

    /// `peer` restarted: the Hello on its connection number `link` named
    /// another run than before. The grants its previous run held on this
    /// core end now, as if their leases lapsed: the agents are ready
    /// again, and the phones of those in a call get this blade's BYE.
    pub fn peer_restarted(&mut self, now: Duration, peer: &str, link: u64, out: &mut Output) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let ended = c
            .target
            .peer_restarted(self.registrar.location_mut(), peer, link);
        if ended > 0 {
            tracing::info!(peer, grants = ended, "peer restarted: its grants end now");
        }
        self.pump_released(now, out);
    }

    /// This core's logged-in agents, for a full directory resync.
    pub fn directory_entries(&mut self) -> Vec<DirectoryEntry> {
        match self.cluster.as_mut() {
            Some(c) => c.target.entries(self.registrar.location()),
            None => Vec::new(),
        }
    }

    /// `extension`, this core's agent, logged in: the other cores and the
    /// peer blades learn it.
    pub(super) fn announce_login(&mut self, now: Duration, extension: &str, out: &mut Output) {
        self.announce_terminal(extension, out);
        let at_micros = self
            .registrar
            .unix_time(now)
            .and_then(|t| u64::try_from(t.as_micros()).ok());
        if let Some(c) = self.cluster.as_mut() {
            out.cluster.push(ClusterSend {
                to: Dest::AllPeers,
                msg: c.target.logged_in(extension, at_micros),
            });
        }
    }

    /// The other cores learn where the terminal of `extension`, this
    /// core's agent, now is.
    pub(super) fn announce_terminal(&mut self, extension: &str, out: &mut Output) {
        let Some(terminal) = self.terminal_of(extension) else {
            return;
        };
        out.notices.push(super::Notice {
            to: None,
            event: super::AgentEvent::LoggedIn {
                extension: extension.to_owned(),
                terminal,
            },
        });
    }

    /// `extension`, this core's agent, logged out: the other cores and the
    /// peer blades learn it.
    pub(super) fn announce_logout(&mut self, extension: &str, out: &mut Output) {
        out.notices.push(super::Notice {
            to: None,
            event: super::AgentEvent::LoggedOut(extension.to_owned()),
        });
        if let Some(msg) = self
            .cluster
            .as_mut()
            .and_then(|c| c.target.logged_out(extension))
        {
            out.cluster.push(ClusterSend {
                to: Dest::AllPeers,
                msg,
            });
        }
    }

    pub(super) fn cluster_timeout(&mut self, now: Duration, out: &mut Output) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        for ext in c.target.handle_timeout(now, self.registrar.location_mut()) {
            tracing::info!(agent = %ext, "hosting lease lapsed: agent taken back");
        }
        c.source.handle_timeout(now);
        self.pump_released(now, out);
        self.pump_source(now, out);
    }

    /// Holds `msg` for the cluster: a server transaction (an INVITE's has
    /// answered 100 Trying), with no client transaction until `waiting` is
    /// resolved. Returns the transaction's id.
    pub(super) fn hold(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        waiting: Waiting,
        out: &mut Output,
    ) -> usize {
        let server = self.server_tx(now, source, &msg, out);
        let id = self.insert(msg, server);
        if let Some(pair) = self.txs.get_mut(id) {
            pair.waiting = Some(waiting);
        }
        id
    }
}
