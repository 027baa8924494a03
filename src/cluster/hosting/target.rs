//! The owning blade's side of hosting: grants, leases, tokens, relays.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use hmac::Mac;
use hmac::digest::KeyInit;

use super::{DEFAULT_REQUEST_TIMEOUT, HmacSha256, HostSecret, same_blade};
use crate::cluster::codec::{DirectoryEntry, LoginInfo, Message, Refusal, Token};
use crate::registrar::location::{AgentState, Location};

/// One live grant on the target: an agent handed over to a source blade
/// for one session, and for the sessions of that blade the agent came
/// into as a newcomer meanwhile (`riders`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The hosted agent.
    pub extension: String,
    /// The hosting (source) blade.
    pub source: String,
    /// The session's Call-ID.
    pub call_id: String,
    /// Further sessions of the same source that the agent, hosted by it,
    /// came into as a newcomer (a Join or Replaces of its own: the
    /// transferee of an attended transfer, whose held call the source
    /// already hosts it in), with their host requests' ids. They ride on
    /// this grant (one grant holds an agent): each is unhosted on its
    /// own, and the grant ends with the last of its sessions.
    pub riders: Vec<(String, u64)>,
    /// The token the source's INVITE must carry.
    pub token: Token,
    /// Whether the session's INVITE came in under the token: it admits
    /// one ([`Target::admit_invite`]).
    invited: bool,
    /// The `request_id` of the host request that won.
    pub request_id: u64,
    /// When the lease lapses unless renewed.
    pub expires_at: Duration,
    /// The lease granted, in seconds: each renewal extends it by as much.
    pub lease_secs: u32,
    /// Tells this grant from an earlier one of the same agent in the
    /// deadline index.
    serial: u64,
    /// The source's connection ([`Target::peer_up`]) the grant was last
    /// asked for or renewed over (or confirmed after): a restart of the
    /// source seen on a later connection ends it
    /// ([`Target::peer_restarted`]), and a later connection of the same
    /// run has it confirmed ([`Target::confirmed`]).
    link: u64,
}

impl Grant {
    /// Whether `call_id` is one of the grant's sessions: its own or a
    /// rider's.
    pub fn covers(&self, call_id: &str) -> bool {
        self.call_id == call_id || self.riders.iter().any(|(c, _)| c == call_id)
    }
}

/// How a grant ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ending {
    /// The source ended it with an unhost (or a later grant of the agent
    /// replaced one left over).
    Unhosted,
    /// Its lease ran out: the source stopped renewing it.
    Lapsed,
    /// The source blade restarted: its previous run, which held the
    /// grant, is gone.
    SourceRestarted,
    /// Asked after its link came back (same run, new connection), the
    /// source said it no longer holds the grant ([`Target::confirmed`]):
    /// it saw the link drop and ended the session, and the unhost was
    /// lost with the link.
    SourceDisowned,
}

impl Ending {
    /// Every way, in the order [`Ending::index`] numbers them.
    pub const ALL: [Ending; 4] = [
        Ending::Unhosted,
        Ending::Lapsed,
        Ending::SourceRestarted,
        Ending::SourceDisowned,
    ];

    /// The position in [`Ending::ALL`] (for counters).
    pub fn index(self) -> usize {
        match self {
            Ending::Unhosted => 0,
            Ending::Lapsed => 1,
            Ending::SourceRestarted => 2,
            Ending::SourceDisowned => 3,
        }
    }

    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Unhosted => "unhost",
            Ending::Lapsed => "lapsed",
            Ending::SourceRestarted => "peer_restarted",
            Ending::SourceDisowned => "peer_disowned",
        }
    }

    /// Whether the source went away without ending the calls on the
    /// grant towards the agent: the target then hangs them up on its
    /// agent's phone. A source that disowned a grant ended its session
    /// when the link dropped, and could not reach the agent's phone
    /// through the lost link.
    pub fn hangs_up(self) -> bool {
        matches!(
            self,
            Ending::Lapsed | Ending::SourceRestarted | Ending::SourceDisowned
        )
    }
}

/// A grant that ended, as [`Target::poll_released`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The grant, as it was.
    pub grant: Grant,
    /// How it ended.
    pub how: Ending,
}

/// What a successful [`Target::grant`] hands the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The agent's login information, state `Hosted` by the source.
    pub info: LoginInfo,
    /// The hosting token.
    pub token: Token,
    /// The lease granted, in seconds.
    pub lease_secs: u32,
}

/// Epochs at least this large are login times in microseconds since 1970
/// (this one is in 1973); smaller ones count logins from a start time in
/// milliseconds, as blades of earlier builds number them.
pub const LOGIN_TIME_EPOCHS: u64 = 100_000_000_000_000;

/// The owning blade's side of hosting (one per core: each core owns the
/// agents of its shard and their grants).
///
/// Three things take an agent back from a source that stopped talking:
/// the grant's lease; proof that the source restarted (a new instance id
/// in its [`Message::Hello`], [`Target::peer_restarted`]), since its new
/// run holds nothing its previous one did; and the source's own word,
/// asked for when its link comes back. Losing the link to the source
/// ([`Target::peer_lost`]) does not, because SIP may still be flowing, the
/// link may come back and renew, and a take-back while the source still
/// drives the call would let a second session in. The lease bounds the
/// wait (SPEC §2 step 8).
///
/// **Confirmation after a reconnection.** When the link to a source comes
/// back over a new connection ([`Target::peer_up`] with a higher number)
/// and the source is the same run, the two ends may have seen different
/// things: the source may have seen the link drop (it then ended the
/// sessions of every grant it held from here, and their unhosts were lost
/// with the link), or not (its old connection was merely replaced by the
/// new one, without a loss it could see: it still holds its grants and
/// renews them over the new connection). So nothing ends on the
/// reconnection itself; instead each grant the source was given, renewed
/// or confirmed over an earlier connection gets a [`Message::Confirm`]
/// ([`Target::poll_transmit`]), whose answer ([`Target::confirmed`])
/// decides:
/// - `held: false`: the grant ends at once, as a lapse would
///   ([`Ending::SourceDisowned`]: the agent is ready again and the phone
///   of a call on it gets this blade's BYE);
/// - `held: true`: the grant stays, tagged with the new connection, so it
///   is not asked about again on it;
/// - no answer within the request timeout (a source of an earlier build,
///   a link that dropped again): the grant stays, and its lease bounds it.
///
/// A grant asked for or renewed over the new connection (or a later one)
/// after the question went out is the source's own now: a `held: false`
/// that crossed the request never ends it. The question is only asked
/// when the link comes back, so this costs nothing per SIP message.
#[derive(Debug)]
pub struct Target {
    mac: HmacSha256,
    max_lease_secs: u32,
    max_grants: usize,
    serial: u64,
    grants: HashMap<String, Grant>,
    /// `(expires_at, serial)` → extension: exact deadlines, removed when a
    /// grant ends, so no stale wake-ups.
    deadlines: BTreeMap<(Duration, u64), String>,
    /// Login epochs of this shard's agents, for the directory.
    epochs: HashMap<String, u64>,
    next_epoch: u64,
    next_request: u64,
    /// Leave given to relay one request: (agent, Call-ID) → grant.
    relays: HashMap<(String, String), RelayGrant>,
    /// The same keys by expiry, oldest first (every leave lasts
    /// [`RELAY_TTL`], so insertion order is expiry order).
    relay_expiry: VecDeque<(Duration, (String, String))>,
    /// Grants ended by an unhost, a lapsed lease or a restart, until
    /// polled.
    released: VecDeque<Released>,
    /// The latest connection of each source blade (lowercased id), as
    /// [`Target::peer_up`] numbers them.
    links: HashMap<String, u64>,
    /// Confirmations awaiting their answer, by request id.
    confirms: HashMap<u64, Confirming>,
    /// Their request ids by deadline, oldest first (every one waits
    /// [`DEFAULT_REQUEST_TIMEOUT`], so sending order is deadline order).
    confirm_expiry: VecDeque<(Duration, u64)>,
    /// Messages to send: `(source blade, Confirm)`.
    transmits: VecDeque<(String, Message)>,
}

/// A [`Message::Confirm`] sent, awaiting its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Confirming {
    /// The blade asked: the grant's source.
    source: String,
    /// The grant asked about: its agent and token.
    extension: String,
    token: Token,
    /// The source's connection the question went out after: a grant
    /// asked for, renewed or confirmed over it (or a later one) since is
    /// not ended by the answer.
    link: u64,
}

/// How long leave to relay a request holds: a non-INVITE transaction's
/// lifetime (64 × T1), so retransmissions of the relayed request pass.
pub const RELAY_TTL: Duration = Duration::from_secs(32);

/// Leave to relay one out-of-dialog request to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RelayGrant {
    source: String,
    token: Token,
    expires_at: Duration,
}

impl Target {
    /// A target granting leases of at most `max_lease_secs` (the config's
    /// `cluster.lease_secs`), with tokens keyed by `secret`.
    pub fn new(secret: &HostSecret, max_lease_secs: u32) -> Target {
        // HMAC pads short keys to the block size anyway; padding here makes
        // keying infallible.
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(&secret.0);
        Target {
            mac: <HmacSha256 as KeyInit>::new(&key.into()),
            max_lease_secs: max_lease_secs.max(1),
            max_grants: usize::MAX,
            serial: 0,
            grants: HashMap::new(),
            deadlines: BTreeMap::new(),
            epochs: HashMap::new(),
            next_epoch: 1,
            next_request: 1,
            relays: HashMap::new(),
            relay_expiry: VecDeque::new(),
            released: VecDeque::new(),
            links: HashMap::new(),
            confirms: HashMap::new(),
            confirm_expiry: VecDeque::new(),
            transmits: VecDeque::new(),
        }
    }

    /// Refuses host requests with `Overloaded` (503) while `max` grants are
    /// live.
    pub fn with_max_grants(mut self, max: usize) -> Target {
        self.max_grants = max;
        self
    }

    /// Numbers login epochs from `base`. Seed it with something that grows
    /// across restarts (the start time in milliseconds), so a peer that
    /// missed the restart still sees the new logins as newer.
    pub fn with_epoch_base(mut self, base: u64) -> Target {
        self.next_epoch = base.max(1);
        self
    }

    /// Numbers this target's redirect and confirm requests from `base` (a
    /// multi-core driver gives each core its own range so answers route
    /// back).
    pub fn with_request_base(mut self, base: u64) -> Target {
        self.next_request = base;
        self
    }

    /// Hands `extension` over to blade `from` for the session `call_id`.
    ///
    /// Refuses an unknown agent (404), one not logged in (480), one in a
    /// call (486), one hosted by another session (486), and any request
    /// while the grant table is full (503). The same source asking again
    /// for the same Call-ID (a retry after a lost answer) gets the same
    /// grant back with a fresh lease. A grant whose lease lapsed is taken
    /// back first, whether or not [`Target::handle_timeout`] ran yet.
    ///
    /// `lease_secs` is what the source asks for: 0 means the target's
    /// maximum, and more is cut to it. A `newcomer` (the agent sent the
    /// session a Join or Replaces) in a call is handed over all the same:
    /// a transferee or a supervisor joins from within a call, and is in
    /// that call again when the hosting ends. A newcomer that the same
    /// source hosts already (in the call it transfers from) gets that
    /// grant, with `call_id` among its riders ([`Grant::riders`]): the
    /// agent is the source's to decide on either way.
    #[allow(clippy::too_many_arguments)] // One field per wire field.
    pub fn grant(
        &mut self,
        now: Duration,
        location: &mut Location,
        from: &str,
        request_id: u64,
        extension: &str,
        call_id: &str,
        lease_secs: u32,
        newcomer: bool,
    ) -> Result<Granted, Refusal> {
        self.expire_one(now, extension, location);
        let lease_secs = match lease_secs {
            0 => self.max_lease_secs,
            n => n.min(self.max_lease_secs),
        };
        let expires_at = now + Duration::from_secs(u64::from(lease_secs));
        let link = self.link_of(from);
        let record = location.get_mut(extension).ok_or(Refusal::Unknown)?;
        if !record.is_logged_in() {
            return Err(Refusal::NotLoggedIn);
        }
        match &record.state {
            AgentState::LoggedOut => return Err(Refusal::NotLoggedIn),
            AgentState::InCall { .. } if !newcomer => return Err(Refusal::Busy),
            AgentState::Hosted { .. } => {
                // A retry of the request that won: same source, same call.
                // Or a newcomer the same source hosts already: it rides.
                let Some(g) = self.grants.get_mut(extension) else {
                    return Err(Refusal::AlreadyHosted);
                };
                if !same_blade(&g.source, from) || !(g.covers(call_id) || newcomer) {
                    return Err(Refusal::AlreadyHosted);
                }
                if !g.covers(call_id) {
                    g.riders.push((call_id.to_owned(), request_id));
                }
                self.deadlines.remove(&(g.expires_at, g.serial));
                g.expires_at = expires_at;
                g.lease_secs = lease_secs;
                // Asked again: the source's current run holds it.
                g.link = link;
                self.deadlines
                    .insert((expires_at, g.serial), extension.to_owned());
                let token = g.token;
                let info = LoginInfo::from_record(record, now).ok_or(Refusal::NotLoggedIn)?;
                return Ok(Granted {
                    info,
                    token,
                    lease_secs,
                });
            }
            AgentState::Ready | AgentState::InCall { .. } => {}
        }
        if self.grants.len() >= self.max_grants {
            return Err(Refusal::Overloaded);
        }
        record.hand_over(from);
        let info = LoginInfo::from_record(record, now).ok_or(Refusal::NotLoggedIn)?;
        // A grant left while the state says Ready no longer holds the
        // agent (every release resets both; this keeps the two in step
        // should one ever be missed). It ends here, as an unhost would
        // end it: what the proxy keeps for it goes, and no BYE.
        if let Some(old) = self.grants.remove(extension) {
            self.deadlines.remove(&(old.expires_at, old.serial));
            self.released.push_back(Released {
                grant: old,
                how: Ending::Unhosted,
            });
        }
        self.serial += 1;
        let serial = self.serial;
        let token = self.token(from, call_id, extension, serial);
        self.grants.insert(
            extension.to_owned(),
            Grant {
                extension: extension.to_owned(),
                source: from.to_owned(),
                call_id: call_id.to_owned(),
                riders: Vec::new(),
                token,
                invited: false,
                request_id,
                expires_at,
                lease_secs,
                serial,
                link,
            },
        );
        self.deadlines
            .insert((expires_at, serial), extension.to_owned());
        Ok(Granted {
            info,
            token,
            lease_secs,
        })
    }

    /// HMAC(secret, source, Call-ID, agent, serial), truncated: unguessable
    /// without the secret and never repeated (the serial).
    fn token(&self, from: &str, call_id: &str, extension: &str, serial: u64) -> Token {
        let mut mac = self.mac.clone();
        mac.update(b"sipblade hosting token v1");
        for part in [from.to_ascii_lowercase().as_str(), call_id, extension] {
            // Length prefixes keep ("ab","c") and ("a","bc") apart.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(&serial.to_be_bytes());
        let tag = mac.finalize().into_bytes();
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&tag[..16]);
        Token(raw)
    }

    /// The live grant matching all of `from`, `extension`, `call_id` and
    /// `token` (compared in constant time).
    fn matching(
        &self,
        now: Duration,
        from: &str,
        extension: &str,
        call_id: &str,
        token: &Token,
    ) -> Option<&Grant> {
        let g = self.grants.get(extension)?;
        let ok = g.token.matches(token)
            && same_blade(&g.source, from)
            && g.covers(call_id)
            && g.expires_at > now;
        ok.then_some(g)
    }

    /// Gives blade `from` leave to relay one out-of-dialog request that is
    /// not a call (`call_id`) to `extension`, who must be logged in here;
    /// the agent's state does not change. The token expires after
    /// [`RELAY_TTL`].
    pub fn relay(
        &mut self,
        now: Duration,
        location: &Location,
        from: &str,
        extension: &str,
        call_id: &str,
    ) -> Result<Token, Refusal> {
        let record = location.get(extension).ok_or(Refusal::Unknown)?;
        if !record.is_logged_in() {
            return Err(Refusal::NotLoggedIn);
        }
        let key = (extension.to_owned(), call_id.to_owned());
        if let Some(r) = self.relays.get(&key) {
            if same_blade(&r.source, from) && r.expires_at > now {
                return Ok(r.token);
            }
        }
        self.forget_expired_relays(now);
        if self.relays.len() >= self.max_grants {
            return Err(Refusal::Overloaded);
        }
        self.serial += 1;
        let token = self.token(from, call_id, extension, self.serial);
        let expires_at = now + RELAY_TTL;
        self.relay_expiry.push_back((expires_at, key.clone()));
        self.relays.insert(
            key,
            RelayGrant {
                source: from.to_owned(),
                token,
                expires_at,
            },
        );
        Ok(token)
    }

    /// Whether a request from blade `from` for `extension` in `call_id`
    /// carrying `token` has leave to be relayed ([`Target::relay`]).
    pub fn check_relay(
        &self,
        now: Duration,
        from: &str,
        extension: &str,
        call_id: &str,
        token: &Token,
    ) -> bool {
        self.relays
            .get(&(extension.to_owned(), call_id.to_owned()))
            .is_some_and(|r| {
                r.token.matches(token) && same_blade(&r.source, from) && r.expires_at > now
            })
    }

    /// Whether an INVITE from blade `from` for `extension` in `call_id`
    /// carrying `token` is covered by a live grant (SPEC §2 step 5): a join
    /// leg's, which names the session in its Join (a session may have
    /// several; its own INVITE is [`Target::admit_invite`]'s). A token for
    /// another blade, call, agent, or a lapsed lease is refused.
    pub fn check_token(
        &self,
        now: Duration,
        from: &str,
        extension: &str,
        call_id: &str,
        token: &Token,
    ) -> bool {
        self.matching(now, from, extension, call_id, token)
            .is_some()
    }

    /// Admits the INVITE of the grant's own session (`call_id`), once. Its
    /// retransmissions are absorbed by its transaction before they get
    /// here, and the source sends one INVITE per grant, so another INVITE
    /// under the token is a copy replayed from a peer blade's address (the
    /// token crosses the network in the clear) and is refused.
    pub fn admit_invite(
        &mut self,
        now: Duration,
        from: &str,
        extension: &str,
        call_id: &str,
        token: &Token,
    ) -> bool {
        if self
            .matching(now, from, extension, call_id, token)
            .is_none()
        {
            return false;
        }
        match self.grants.get_mut(extension) {
            Some(g) if g.call_id == call_id && !g.invited => {
                g.invited = true;
                true
            }
            _ => false,
        }
    }

    /// Extends the lease of the matching grant; the new lease in seconds,
    /// or `None` when there is no such live grant (a renewal after the
    /// lease lapsed takes the agent back and is refused).
    pub fn renew(
        &mut self,
        now: Duration,
        location: &mut Location,
        from: &str,
        extension: &str,
        call_id: &str,
        token: &Token,
    ) -> Option<u32> {
        self.expire_one(now, extension, location);
        self.matching(now, from, extension, call_id, token)?;
        let link = self.link_of(from);
        let g = self.grants.get_mut(extension)?;
        let lease_secs = g.lease_secs;
        let expires_at = now + Duration::from_secs(u64::from(lease_secs));
        self.deadlines.remove(&(g.expires_at, g.serial));
        g.expires_at = expires_at;
        // Renewed: the source's current run holds it.
        g.link = link;
        self.deadlines
            .insert((expires_at, g.serial), extension.to_owned());
        Some(lease_secs)
    }

    /// Ends the matching grant: the agent goes back to ready (SPEC §2
    /// step 7). Returns whether a grant ended; a repeated or late unhost
    /// is harmless, and never ends a later grant of the same agent (its
    /// token differs). While other sessions ride on the grant, only
    /// `call_id` leaves it (a rider that is left becomes the grant's own
    /// session: confirmations ask about it, redirects go to its core),
    /// and the agent stays hosted; this returns `false` then.
    pub fn unhost(
        &mut self,
        location: &mut Location,
        from: &str,
        extension: &str,
        call_id: &str,
        token: &Token,
    ) -> bool {
        // Matching ignores the lease: an unhost just after it lapsed still
        // ends the grant.
        let Some(g) = self
            .grants
            .get_mut(extension)
            .filter(|g| g.token.matches(token) && same_blade(&g.source, from) && g.covers(call_id))
        else {
            return false;
        };
        if g.call_id == call_id {
            if g.riders.is_empty() {
                return self.release(extension, location, Ending::Unhosted);
            }
            let (next, request_id) = g.riders.remove(0);
            g.call_id = next;
            g.request_id = request_id;
        } else {
            g.riders.retain(|(c, _)| c != call_id);
        }
        false
    }

    /// Takes back every agent whose lease lapsed at `now`; returns their
    /// extensions. Confirmations unanswered by `now` are given up: their
    /// grants stay, until their leases lapse.
    pub fn handle_timeout(&mut self, now: Duration, location: &mut Location) -> Vec<String> {
        while let Some(&(at, id)) = self.confirm_expiry.front() {
            if at > now {
                break;
            }
            self.confirm_expiry.pop_front();
            self.confirms.remove(&id);
        }
        let mut released = Vec::new();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ext = entry.remove();
            if self.release(&ext, location, Ending::Lapsed) {
                released.push(ext);
            }
        }
        released
    }

    /// When the next lease lapses or a confirmation is given up, for the
    /// caller's timer.
    pub fn next_deadline(&self) -> Option<Duration> {
        let lease = self.deadlines.keys().next().map(|(at, _)| *at);
        let confirm = self.confirm_expiry.front().map(|(at, _)| *at);
        lease.into_iter().chain(confirm).min()
    }

    /// The link to `blade` went down. Its grants stay until their leases
    /// lapse (see the type's docs); returns how many it holds.
    pub fn peer_lost(&self, blade: &str) -> usize {
        self.grants
            .values()
            .filter(|g| same_blade(&g.source, blade))
            .count()
    }

    /// The link to `blade` is up over its connection number `link`
    /// (numbers grow with each connection to that blade). Grants asked
    /// for from now on are tagged with it.
    ///
    /// When `link` is newer than the connection known before, every grant
    /// of `blade` tagged with an older one is asked about: a
    /// [`Message::Confirm`] for each goes to `blade`
    /// ([`Target::poll_transmit`]), and the answers come to
    /// [`Target::confirmed`] (see the type's docs). Returns how many went.
    /// The same news again (another copy, a repeated event) asks nothing.
    pub fn peer_up(&mut self, now: Duration, blade: &str, link: u64) -> usize {
        let before = self.note_link(blade, link);
        if link <= before {
            return 0;
        }
        let mut asked: Vec<(String, String, Token, u64)> = self
            .grants
            .values()
            .filter(|g| same_blade(&g.source, blade) && g.link < link)
            .map(|g| {
                (
                    g.extension.clone(),
                    g.call_id.clone(),
                    g.token,
                    g.request_id,
                )
            })
            .collect();
        // Deterministic frames make ladders and tests reproducible.
        asked.sort_by(|a, b| a.0.cmp(&b.0));
        let deadline = now + DEFAULT_REQUEST_TIMEOUT;
        let n = asked.len();
        for (extension, call_id, token, grant) in asked {
            let request_id = self.next_request_id();
            self.confirms.insert(
                request_id,
                Confirming {
                    source: blade.to_owned(),
                    extension: extension.clone(),
                    token,
                    link,
                },
            );
            self.confirm_expiry.push_back((deadline, request_id));
            self.transmits.push_back((
                blade.to_owned(),
                Message::Confirm {
                    request_id,
                    grant,
                    token,
                    extension,
                    call_id,
                },
            ));
        }
        n
    }

    /// Records that `blade`'s latest connection is at least `link`;
    /// returns the number known before.
    fn note_link(&mut self, blade: &str, link: u64) -> u64 {
        let known = self.links.entry(blade.to_ascii_lowercase()).or_default();
        let before = *known;
        *known = before.max(link);
        before
    }

    /// Blade `from` answered the confirmation `request_id`
    /// ([`Target::peer_up`]): whether it still holds the grant. `false`
    /// ends the grant at once ([`Ending::SourceDisowned`],
    /// [`Target::poll_released`] has it), unless it was asked for, renewed
    /// or confirmed over the connection the question went out after (or a
    /// later one) since; `true` tags it with that connection, so it is not
    /// asked about again there. An answer to no pending question (given
    /// up, or about a grant that ended or was replaced meanwhile), or from
    /// another blade than the grant's source, changes nothing. Returns
    /// whether a grant ended.
    pub fn confirmed(
        &mut self,
        now: Duration,
        location: &mut Location,
        from: &str,
        request_id: u64,
        held: bool,
    ) -> bool {
        // Another blade's answer to this id leaves the question open for
        // the source's own.
        if !self
            .confirms
            .get(&request_id)
            .is_some_and(|asked| same_blade(&asked.source, from))
        {
            return false;
        }
        let Some(asked) = self.confirms.remove(&request_id) else {
            return false;
        };
        // A lease that lapsed meanwhile ends as a lapse.
        self.expire_one(now, &asked.extension, location);
        let Some(g) = self
            .grants
            .get_mut(&asked.extension)
            .filter(|g| g.token.matches(&asked.token))
        else {
            // The grant ended, or a later one holds the agent.
            return false;
        };
        if g.link >= asked.link {
            // Asked for, renewed or confirmed since over the new
            // connection: the source's current word.
            return false;
        }
        if held {
            g.link = asked.link;
            return false;
        }
        self.release(&asked.extension, location, Ending::SourceDisowned)
    }

    /// The next message to send, and the blade it goes to: the
    /// confirmations [`Target::peer_up`] asks. Poll after each call to it.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(String, Message)> {
        self.transmits.pop_front()
    }

    /// Confirmations awaiting their answer.
    pub fn confirming(&self) -> usize {
        self.confirms.len()
    }

    /// `blade` restarted: its [`Message::Hello`] on connection `link`
    /// carried an instance id other than its previous connection's. Every
    /// grant it was given over an earlier connection (and not renewed or
    /// asked for again since) belonged to its previous run and ends now,
    /// as if its lease lapsed; grants over `link` or later are its new
    /// run's and stay, whichever of the Hello and a host request the
    /// cores saw first. Returns how many ended ([`Target::poll_released`]
    /// has them).
    pub fn peer_restarted(&mut self, location: &mut Location, blade: &str, link: u64) -> usize {
        // Nothing to confirm: what predates `link` ends here, and so do
        // the questions asked about it (on `link` or before).
        self.note_link(blade, link);
        if !self.confirms.is_empty() {
            self.confirms
                .retain(|_, c| !(same_blade(&c.source, blade) && c.link <= link));
            let confirms = &self.confirms;
            self.confirm_expiry
                .retain(|(_, id)| confirms.contains_key(id));
        }
        let gone: Vec<String> = self
            .grants
            .values()
            .filter(|g| same_blade(&g.source, blade) && g.link < link)
            .map(|g| g.extension.clone())
            .collect();
        for ext in &gone {
            self.release(ext, location, Ending::SourceRestarted);
        }
        gone.len()
    }

    /// The latest connection of `blade`, 0 before any.
    fn link_of(&self, blade: &str) -> u64 {
        self.links
            .get(&blade.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Forgets the leaves to relay that expired by `now` (done at each new
    /// leave, and by the proxy's periodic tidy when none comes).
    pub fn forget_expired_relays(&mut self, now: Duration) {
        while let Some((at, _)) = self.relay_expiry.front() {
            if *at > now {
                break;
            }
            if let Some((at, key)) = self.relay_expiry.pop_front() {
                // Unless the key was given again since (by another blade).
                if self.relays.get(&key).is_some_and(|r| r.expires_at == at) {
                    self.relays.remove(&key);
                }
            }
        }
    }

    /// Leaves to relay still remembered, expired or not.
    pub fn relays_held(&self) -> usize {
        self.relays.len()
    }

    /// The live grant of `extension`, if hosted.
    pub fn grant_of(&self, extension: &str) -> Option<&Grant> {
        self.grants.get(extension)
    }

    /// Number of live grants.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Whether no agent is hosted.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// Takes back `extension` if its lease lapsed.
    fn expire_one(&mut self, now: Duration, extension: &str, location: &mut Location) {
        if self
            .grants
            .get(extension)
            .is_some_and(|g| g.expires_at <= now)
        {
            self.release(extension, location, Ending::Lapsed);
        }
    }

    /// Removes the grant of `extension`; the agent goes back to ready if
    /// it is still hosted by that grant's source (not if it logged out
    /// meanwhile). The grant is queued for [`Target::poll_released`] with
    /// how it ended. Returns whether there was a grant.
    fn release(&mut self, extension: &str, location: &mut Location, how: Ending) -> bool {
        let Some(g) = self.grants.remove(extension) else {
            return false;
        };
        self.deadlines.remove(&(g.expires_at, g.serial));
        if let Some(record) = location.get_mut(extension) {
            let hosted_by_it =
                matches!(&record.state, AgentState::Hosted { by } if same_blade(by, &g.source));
            if hosted_by_it {
                record.become_free();
            }
        }
        self.released.push_back(Released { grant: g, how });
        true
    }

    /// The next grant that ended, by [`Target::unhost`], by its lease
    /// lapsing (in [`Target::handle_timeout`], or found lapsed by a later
    /// request for the agent), by its source's restart
    /// ([`Target::peer_restarted`]) or by its source disowning it
    /// ([`Target::confirmed`]), oldest first. A driver polls after each of
    /// those calls and [`Target::handle_request`], so that what it keeps
    /// for a grant ends with it (the proxy's record of the hosted agent's
    /// dialog: the phone of a grant that lapsed, whose source restarted or
    /// disowned it gets a BYE).
    #[must_use]
    pub fn poll_released(&mut self) -> Option<Released> {
        self.released.pop_front()
    }

    /// Answers a request from blade `from` (Locate, HostRequest, Renew,
    /// Unhost); `None` for any other message. Every request gets exactly
    /// one answer, on the same exchange.
    pub fn handle_request(
        &mut self,
        now: Duration,
        location: &mut Location,
        from: &str,
        msg: &Message,
    ) -> Option<Message> {
        Some(match msg {
            Message::Locate {
                request_id,
                extension,
            } => Message::Located {
                request_id: *request_id,
                epoch: match location.get(extension) {
                    Some(r) if r.is_logged_in() => Some(self.epoch(extension)),
                    _ => None,
                },
            },
            Message::HostRequest {
                request_id,
                extension,
                call_id,
                lease_secs,
                newcomer,
            } => {
                match self.grant(
                    now,
                    location,
                    from,
                    *request_id,
                    extension,
                    call_id,
                    *lease_secs,
                    *newcomer,
                ) {
                    Ok(g) => Message::HostGranted {
                        request_id: *request_id,
                        call_id: call_id.clone(),
                        info: g.info,
                        token: g.token,
                        lease_secs: g.lease_secs,
                    },
                    Err(reason) => Message::HostRefused {
                        request_id: *request_id,
                        reason,
                    },
                }
            }
            Message::Renew {
                request_id,
                extension,
                call_id,
                token,
            } => match self.renew(now, location, from, extension, call_id, token) {
                Some(lease_secs) => Message::RenewAck {
                    request_id: *request_id,
                    lease_secs,
                },
                None => Message::RenewRefused {
                    request_id: *request_id,
                },
            },
            Message::Unhost {
                request_id,
                extension,
                call_id,
                token,
            } => {
                self.unhost(location, from, extension, call_id, token);
                Message::UnhostAck {
                    request_id: *request_id,
                }
            }
            Message::RelayRequest {
                request_id,
                extension,
                call_id,
            } => match self.relay(now, location, from, extension, call_id) {
                Ok(token) => Message::RelayGranted {
                    request_id: *request_id,
                    token,
                },
                Err(reason) => Message::HostRefused {
                    request_id: *request_id,
                    reason,
                },
            },
            _ => return None,
        })
    }

    /// A new request (`call_id`, from `caller`) reached this blade for a
    /// hosted agent: the message that hands the decision to the hosting
    /// blade, and that blade's id (SPEC §2 step 6). `None` when the agent
    /// is not hosted. The answer ([`Message::RedirectAnswer`]) comes back
    /// with the returned message's `request_id`; the proxy keeps the
    /// caller's transaction meanwhile and answers 486 itself if none comes.
    pub fn redirect(
        &mut self,
        extension: &str,
        call_id: &str,
        caller: &str,
    ) -> Option<(String, Message)> {
        let g = self.grants.get(extension)?;
        let (source, grant, token) = (g.source.clone(), g.request_id, g.token);
        let request_id = self.next_request_id();
        Some((
            source,
            Message::Redirect {
                request_id,
                grant,
                token,
                extension: extension.to_owned(),
                call_id: call_id.to_owned(),
                caller: caller.to_owned(),
            },
        ))
    }

    /// A fresh id for a request of this target's (redirect, confirm).
    fn next_request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        id
    }

    // -- directory announcements of this shard's agents --

    /// The epoch of `extension`'s current login, numbering it if new.
    fn epoch(&mut self, extension: &str) -> u64 {
        if let Some(e) = self.epochs.get(extension) {
            return *e;
        }
        let e = self.next_epoch;
        self.next_epoch += 1;
        self.epochs.insert(extension.to_owned(), e);
        e
    }

    /// `extension` logged in (or logged in again): the announcement for
    /// every peer. Each login gets a higher epoch: the login's wall-clock
    /// time in microseconds since 1970 when `at_micros` gives it (so that
    /// blades can tell which of two logins of one agent came later, see
    /// [`Target::later_than_peers`]), and never less than the last one.
    pub fn logged_in(&mut self, extension: &str, at_micros: Option<u64>) -> Message {
        self.epochs.remove(extension);
        self.next_epoch = self.next_epoch.max(at_micros.unwrap_or(0));
        let epoch = self.epoch(extension);
        Message::Announce {
            entries: vec![DirectoryEntry {
                extension: extension.to_owned(),
                epoch,
            }],
        }
    }

    /// Whether this shard's login of `extension` came after a peer's
    /// (`peer_epoch`, from its announcement), so it stays when that
    /// announcement comes in: both logins crossed on the link (two phones
    /// of the agent, or one registering with both blades), and the agent
    /// is the later one's. Compared only when both epochs are login times
    /// ([`LOGIN_TIME_EPOCHS`]; a peer of an earlier build numbers them
    /// from its start), else the peer's, the news, wins; a tie goes to the
    /// blade whose id sorts first.
    pub fn later_than_peers(&self, me: &str, peer: &str, extension: &str, peer_epoch: u64) -> bool {
        let Some(&ours) = self.epochs.get(extension) else {
            return false;
        };
        if ours < LOGIN_TIME_EPOCHS || peer_epoch < LOGIN_TIME_EPOCHS {
            return false;
        }
        ours > peer_epoch
            || ours == peer_epoch && me.to_ascii_lowercase() < peer.to_ascii_lowercase()
    }

    /// `extension` logged out or its registration lapsed: the withdrawal
    /// for every peer; `None` if it was not announced.
    pub fn logged_out(&mut self, extension: &str) -> Option<Message> {
        let epoch = self.epochs.remove(extension)?;
        Some(Message::Withdraw {
            entries: vec![DirectoryEntry {
                extension: extension.to_owned(),
                epoch,
            }],
        })
    }

    /// Every logged-in agent of `location` with its epoch: this shard's
    /// part of a [`Message::Resync`] (a multi-core driver concatenates the
    /// cores' parts into one message).
    pub fn entries(&mut self, location: &Location) -> Vec<DirectoryEntry> {
        let mut entries: Vec<DirectoryEntry> = location
            .iter()
            .filter(|r| r.is_logged_in())
            .map(|r| DirectoryEntry {
                extension: r.extension().to_owned(),
                epoch: self.epoch(r.extension()),
            })
            .collect();
        // Deterministic frames make ladders and tests reproducible.
        entries.sort_by(|a, b| a.extension.cmp(&b.extension));
        entries
    }

    /// The full resync to send a peer whose link (re)connected.
    pub fn resync(&mut self, location: &Location) -> Message {
        Message::Resync {
            entries: self.entries(location),
        }
    }
}
