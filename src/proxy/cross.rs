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

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::dialog::Dialog;
use super::hangup::HangUp;
use super::session::Hosted;
use super::{Output, Proxy};
use crate::cluster::codec::{Class, DirectoryEntry, Message as LinkMessage, Refusal, Token};
use crate::cluster::hosting::{Directory, HostSecret, Source, SourceEvent, Target};
use crate::cluster::link::ReplyTo;
use crate::sip::{Message, Method, Uri};
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
    peers: Vec<PeerBlade>,
    pub(super) target: Target,
    pub(super) source: Source,
    directory: Directory,
    /// S: INVITEs waiting for a grant, by Call-ID.
    awaiting_grant: HashMap<String, usize>,
    /// T: INVITEs waiting for the hosting blade's verdict, by redirect id.
    pub(super) awaiting_redirect: HashMap<u64, usize>,
    /// S: requests waiting for leave to be relayed, by Call-ID.
    awaiting_relay: HashMap<String, Vec<usize>>,
    /// T: the answered calls relayed to this core's hosted agents, by
    /// agent; one each (a join leg to a hosted agent adds one), until its
    /// grant ends or a BYE passes.
    hosted_dialogs: HashMap<String, Vec<HostedDialog>>,
    /// S: while a BYE on its way to a peer blade ends its session, the
    /// time its hostings are released at the latest, and the sessions
    /// whose hostings wait for it so ([`Proxy::release_hosting`]).
    bye_holds: Option<(Duration, Vec<String>)>,
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

    /// Whether `ip` is a peer blade's SIP address and its link is down.
    pub(super) fn link_down_at(&self, ip: IpAddr) -> bool {
        self.peer_by_ip(ip).is_some_and(|p| {
            !self
                .directory
                .peers()
                .any(|up| up.eq_ignore_ascii_case(&p.id))
        })
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
    /// may hold a login, and neither is known to be the later one.
    fn moved_to_peer(&mut self, peer: &str, entries: &[DirectoryEntry], out: &mut Output) {
        for entry in entries {
            let ext = entry.extension.as_str();
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
    pub(super) fn announce_login(&mut self, extension: &str, out: &mut Output) {
        self.announce_terminal(extension, out);
        if let Some(c) = self.cluster.as_mut() {
            out.cluster.push(ClusterSend {
                to: Dest::AllPeers,
                msg: c.target.logged_in(extension),
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

    /// S: the callee is not registered here; host it from its blade
    /// (SPEC §2 step 3). The INVITE waits, answered 100 Trying.
    pub(super) fn host_remote(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        caller: &str,
        callee: &str,
        out: &mut Output,
    ) {
        let call_id = msg.call_id().to_owned();
        self.open_session(now, source, &msg, caller, callee, out)
            .hosted = Some(Hosted {
            extension: callee.to_owned(),
            blade: None,
            info: None,
        });
        let id = self.hold(now, source, msg, Waiting::Grant { since: now }, out);
        self.start_hosting(now, id, &call_id, callee, false, out);
    }

    /// S: a new call for an agent this blade already hosts in a session
    /// ([`Source::hosts`]). Its blade would refuse it (already hosted),
    /// and would hand any call for it that reached it here to be decided
    /// (SPEC §2 step 6): while hosted, the agent's state is the hosting
    /// blade's. So this blade answers 486 itself, without the round trip,
    /// and without waiting on a blade that may be dead but not yet
    /// noticed (the link's idle timeout), which would turn the answer
    /// into a 503.
    pub(super) fn busy_hosted_here(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        out: &mut Output,
    ) {
        self.metrics.refused(Refusal::AlreadyHosted);
        self.metrics.cross_blade.busy += 1;
        let busy = super::Refusal::new(486, "Busy Here");
        self.refuse(now, source, msg, &busy, out);
    }

    /// S: hosts `extension` for `call_id` while transaction `id` waits for
    /// the grant; `newcomer`: the agent sent the INVITE (a Join or
    /// Replaces), and may be in a call on its blade.
    pub(super) fn start_hosting(
        &mut self,
        now: Duration,
        id: usize,
        call_id: &str,
        extension: &str,
        newcomer: bool,
        out: &mut Output,
    ) {
        if let Some(c) = self.cluster.as_mut() {
            c.awaiting_grant.insert(call_id.to_owned(), id);
            if newcomer {
                c.source
                    .host_newcomer(now, &c.directory, call_id, extension);
            } else {
                c.source.host(now, &c.directory, call_id, extension);
            }
        }
        self.reschedule(id);
        self.pump_source(now, out);
    }

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

    /// S: an out-of-dialog request that is not a call (MESSAGE, SUBSCRIBE,
    /// REFER, ...) for an agent registered on another blade. No hosting:
    /// the request is held while the agent's blade gives leave to relay it
    /// (a token bound to this blade, the agent and the Call-ID, as the
    /// SPEC trusts peer requests only through tokens), then sent there.
    pub(super) fn relay_remote(
        &mut self,
        now: Duration,
        source: Peer,
        msg: Message,
        callee: &str,
        out: &mut Output,
    ) {
        let call_id = msg.call_id().to_owned();
        let id = self.hold(now, source, msg, Waiting::Relay, out);
        if let Some(c) = self.cluster.as_mut() {
            c.awaiting_relay
                .entry(call_id.clone())
                .or_default()
                .push(id);
            c.source.relay(now, &c.directory, &call_id, callee);
        }
        self.reschedule(id);
        self.pump_source(now, out);
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

    /// S: the session `call_id` ended; its hosted agent goes back. While
    /// a BYE ends it ([`Proxy::end_session_by_bye`]), not yet: the hosting
    /// waits for that BYE ([`Source::end_after`]).
    pub(super) fn release_hosting(&mut self, now: Duration, call_id: &str, out: &mut Output) {
        if let Some(c) = self.cluster.as_mut() {
            c.awaiting_grant.remove(call_id);
            let held = match c.bye_holds.as_mut() {
                Some((until, held)) if c.source.end_after(call_id, *until) > 0 => {
                    held.push(call_id.to_owned());
                    true
                }
                _ => false,
            };
            if !held {
                c.source.end(call_id);
            }
        }
        self.pump_source(now, out);
    }

    /// S: ends the session of `bye`, a BYE about to be relayed to
    /// `target` ([`Proxy::end_session`]). Its agents on this blade are
    /// free at once; but when the BYE goes to a peer blade, the hostings
    /// it ends are held until the BYE has passed that blade, or their
    /// unhost could overtake it (the unhost reaches the target over the
    /// link while the BYE still has the target's hop to the phone ahead):
    /// the target would free the agent while the BYE is on its way to
    /// the agent's phone, and a new call in between would ring a phone
    /// still in this call. A BYE to a phone (the hosted agent's own,
    /// going to the caller) releases at once: that phone left the call.
    /// Returns the sessions whose hostings wait, for
    /// [`Proxy::release_held_hostings`] once the BYE's transaction has its
    /// final response or ends; 64×T1 after now, when that transaction
    /// times out, the source releases them anyway.
    pub(super) fn end_session_by_bye(
        &mut self,
        now: Duration,
        bye: &Message,
        target: Peer,
        out: &mut Output,
    ) -> Option<Box<[String]>> {
        if self
            .sessions
            .get(bye.call_id())
            .is_some_and(|s| !s.is_dialog_of(bye))
        {
            // A BYE with the Call-ID but not the tags of the session's
            // dialog (stale, forged, or a broken phone's): the far UA
            // answers it 481, and the call goes on.
            return None;
        }
        let held = if self.cluster.is_some() && self.is_peer_blade_ip(target.addr.ip()) {
            self.end_session_holding_hostings(now, bye.call_id(), out)
        } else {
            self.end_session(now, bye.call_id(), out);
            None
        };
        if let Some(c) = self.cluster.as_mut() {
            c.hosted_dialog_ended(bye);
        }
        held
    }

    /// S: [`Proxy::end_session`] for `call_id`, whose BYE is on its way to
    /// a peer blade: the hostings it ends wait for that BYE (for 64×T1 at
    /// most). Returns the sessions whose hostings wait, for
    /// [`Proxy::release_held_hostings`].
    pub(super) fn end_session_holding_hostings(
        &mut self,
        now: Duration,
        call_id: &str,
        out: &mut Output,
    ) -> Option<Box<[String]>> {
        let until = now + self.settings.timers.timeout();
        if let Some(c) = self.cluster.as_mut() {
            c.bye_holds = Some((until, Vec::new()));
        }
        self.end_session(now, call_id, out);
        let (_, held) = self.cluster.as_mut()?.bye_holds.take()?;
        (!held.is_empty()).then(|| held.into_boxed_slice())
    }

    /// S: the BYE that the hostings of `sessions` waited for has passed
    /// the target blade (its final response came back), or its
    /// transaction ended without one: they are released now.
    pub(super) fn release_held_hostings(
        &mut self,
        now: Duration,
        sessions: &[String],
        out: &mut Output,
    ) {
        if let Some(c) = self.cluster.as_mut() {
            for call_id in sessions {
                c.source.end_held(call_id);
            }
        }
        self.pump_source(now, out);
    }

    /// Moves what the source side produced to the output, and acts on its
    /// events, until both queues are empty.
    fn pump_source(&mut self, now: Duration, out: &mut Output) {
        loop {
            let Some(c) = self.cluster.as_mut() else {
                return;
            };
            while let Some((peer, msg)) = c.source.poll_transmit() {
                out.cluster.push(ClusterSend {
                    to: Dest::Peer(peer),
                    msg,
                });
            }
            let Some(event) = c.source.poll_event() else {
                return;
            };
            self.on_source_event(now, event, out);
        }
    }

    fn on_source_event(&mut self, now: Duration, event: SourceEvent, out: &mut Output) {
        match event {
            SourceEvent::Granted {
                call_id,
                extension,
                peer,
                info,
                token,
                lease_secs: _,
            } => self.on_granted(now, &call_id, &extension, peer, info, token, out),
            SourceEvent::Refused {
                call_id,
                extension,
                reason,
            } => self.on_refused(now, &call_id, &extension, reason, out),
            SourceEvent::Lost {
                call_id,
                extension,
                peer,
            } => {
                tracing::warn!(%call_id, agent = %extension, %peer, "hosting lost: session ended");
                // The phones are still in the call: the blade hangs it up
                // on the parties it can reach (not through a lost link).
                // The dialogs that ride on its grant to the lost agent go
                // with it: calls that replaced it, and join legs to the
                // agent (they reach it through its blade under this
                // grant). Legs to the other party go on.
                let riders: Vec<String> = self
                    .sessions
                    .get(&call_id)
                    .map(|s| s.joined.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|j| self.sessions.get(j).is_some_and(|r| r.callee == extension))
                    .collect();
                let lost = self
                    .cluster
                    .as_ref()
                    .and_then(|c| c.peer(&peer))
                    .map(|p| p.sip.ip());
                // A re-INVITE on its way to the lost blade gets its final
                // answer now, in the call or a rider.
                if let Some(ip) = lost {
                    let calls: Vec<(&str, IpAddr)> = riders
                        .iter()
                        .chain([&call_id])
                        .map(|c| (c.as_str(), ip))
                        .collect();
                    self.fail_reinvites_to(now, &calls, out);
                }
                for rider in riders {
                    self.hang_up(now, &rider, HangUp::PeerLost(lost), out);
                    self.end_session(now, &rider, out);
                }
                // A call still ringing has no dialog to hang up: its
                // caller gets its final answer now.
                self.fail_unanswered_call(now, &call_id, 503, out);
                self.hang_up(now, &call_id, HangUp::PeerLost(lost), out);
                self.end_session(now, &call_id, out);
            }
            SourceEvent::Relayed {
                call_id,
                extension,
                peer,
                token,
            } => self.on_relayed(now, &call_id, &extension, &peer, token, out),
            SourceEvent::Redirected {
                peer, request_id, ..
            } => {
                // The agent is in a session this blade hosts: busy.
                if let Some(c) = self.cluster.as_mut() {
                    c.source.answer_redirect(&peer, request_id, 486);
                }
            }
        }
    }

    /// S: the grant came (SPEC §2 steps 4–5): save the agent's login
    /// information and send the INVITE to the target with the token.
    #[allow(clippy::too_many_arguments)]
    fn on_granted(
        &mut self,
        now: Duration,
        call_id: &str,
        extension: &str,
        peer: String,
        info: crate::cluster::codec::LoginInfo,
        token: Token,
        out: &mut Output,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let id = c.awaiting_grant.remove(call_id);
        let target = c.peer(&peer).map(|p| p.sip);
        let pending = id.and_then(|id| {
            let pair = self.txs.get_mut(id)?;
            let Some(Waiting::Grant { since }) = pair.waiting else {
                return None;
            };
            pair.waiting = None;
            let request = pair.request.clone().filter(|_| !pair.server.is_final())?;
            Some((id, since, request, pair.server.peer().transport))
        });
        let (Some((id, since, request, upstream)), Some(target)) = (pending, target) else {
            // The caller gave up meanwhile (or the peer has no SIP address):
            // hand the agent back at once.
            if let Some(id) = id {
                self.answer_pending(now, id, 503, out);
            }
            self.end_session(now, call_id, out);
            return;
        };
        self.metrics.hosting_rtt.observe(now.saturating_sub(since));
        let mut join_dest = None;
        if let Some(session) = self.sessions.get_mut(call_id) {
            session.hosted = Some(Hosted {
                extension: extension.to_owned(),
                blade: Some(peer),
                info: Some(info),
            });
            join_dest = session.join_dest.clone();
        }
        // A call goes to the hosted callee through its blade; a join leg,
        // whose joiner was hosted, to the party it joins.
        let (target, uri) = join_dest.unwrap_or_else(|| {
            let uri = format!("sip:{extension}@{target};{TOKEN_PARAM}={}", token.to_hex());
            (Peer::udp(target), uri)
        });
        let upstream = Some(upstream);
        let method = request.method().unwrap_or(Method::Other);
        match self.build_forward(&request, target, Some(&uri), 0, upstream) {
            Ok(forwarded) => self.start_client(now, id, method, forwarded, out),
            Err(refusal) => {
                self.answer_pending(now, id, refusal.status, out);
                if let Some(o) = self.outcomes(call_id) {
                    o.failed += 1;
                }
                self.end_session(now, call_id, out);
            }
        }
    }

    /// S: leave to relay came: the requests waiting for it go to the
    /// agent's blade with the token in their Request-URI.
    fn on_relayed(
        &mut self,
        now: Duration,
        call_id: &str,
        extension: &str,
        peer: &str,
        token: Token,
        out: &mut Output,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let ids = c.awaiting_relay.remove(call_id).unwrap_or_default();
        let target = c.peer(peer).map(|p| p.sip);
        for id in ids {
            let Some(pair) = self.txs.get_mut(id) else {
                continue;
            };
            if pair.waiting != Some(Waiting::Relay) {
                continue;
            }
            pair.waiting = None;
            let Some(request) = pair.request.clone().filter(|_| !pair.server.is_final()) else {
                continue;
            };
            let upstream = pair.server.peer().transport;
            let Some(target) = target else {
                self.answer_pending(now, id, 503, out);
                continue;
            };
            let uri = format!("sip:{extension}@{target};{TOKEN_PARAM}={}", token.to_hex());
            // A relayed Join INVITE starts a dialog, as SUBSCRIBE and REFER do.
            let record_route = matches!(
                request.method(),
                Some(Method::Invite | Method::Subscribe | Method::Refer)
            )
            .then_some(upstream);
            let target = Peer::udp(target);
            let method = request.method().unwrap_or(Method::Other);
            match self.build_forward(&request, target, Some(&uri), 0, record_route) {
                Ok(forwarded) => self.start_client(now, id, method, forwarded, out),
                Err(refusal) => self.answer_pending(now, id, refusal.status, out),
            }
        }
    }

    /// S: the callee cannot be hosted (or a request to it relayed): the
    /// caller gets the matching status.
    fn on_refused(
        &mut self,
        now: Duration,
        call_id: &str,
        extension: &str,
        reason: Refusal,
        out: &mut Output,
    ) {
        let relays = self
            .cluster
            .as_mut()
            .and_then(|c| c.awaiting_relay.remove(call_id));
        if let Some(ids) = relays {
            tracing::debug!(%call_id, agent = extension, %reason, "relay refused");
            for id in ids {
                if let Some(pair) = self.txs.get_mut(id) {
                    pair.waiting = None;
                }
                self.answer_pending(now, id, reason.status(), out);
            }
            return;
        }
        tracing::debug!(%call_id, agent = extension, %reason, "hosting refused");
        self.metrics.refused(reason);
        let id = self
            .cluster
            .as_mut()
            .and_then(|c| c.awaiting_grant.remove(call_id));
        if let Some(id) = id {
            if let Some(pair) = self.txs.get_mut(id) {
                pair.waiting = None;
            }
            self.answer_pending(now, id, reason.status(), out);
            if let Some(o) = self.outcomes(call_id) {
                o.ended_with(reason.status());
            }
        }
        self.end_session(now, call_id, out);
    }
}
