//! The hosting protocol (SPEC §2), sans-IO: both sides and the directory.
//!
//! - [`Target`]: the blade that owns an agent. Answers host requests from
//!   its [`Location`] (grant or refuse), marks the agent hosted, checks the
//!   hosting token of the INVITE that follows, renews and ends grants, and
//!   takes agents back when a lease lapses. It also numbers its own agents'
//!   logins for the directory announcements.
//! - [`Source`]: the blade that hosts. Finds the target (directory, else
//!   asking every peer), sends the host request, keeps the grants of live
//!   sessions renewed, and releases them when the session ends.
//! - [`Directory`]: which peer each remote agent is logged in on.
//!
//! Nothing here reads a clock, draws randomness or touches a socket: time
//! comes in as `now: Duration` (since an epoch the caller picks), messages
//! come in decoded with the authenticated peer's blade id, and what to send
//! comes out as `(peer, Message)` pairs ([`Source::poll_transmit`]) or as
//! the reply to a request ([`Target::handle_request`]). The driver turns
//! them into frames ([`crate::cluster::codec`]) on the QUIC link.
//!
//! Blade ids are compared without regard to case, as certificates' DNS
//! names are; the driver should hand over one spelling per peer (the
//! configured one) so maps keyed by id agree.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::codec::{DirectoryEntry, LoginInfo, Message, Refusal, Token};
use crate::registrar::location::{AgentState, Location};

type HmacSha256 = Hmac<Sha256>;

/// How long a source waits for a peer's answer before it gives up on the
/// request (a host request then fails with 503).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// The SIP status a source answers a redirect with when it no longer hosts
/// the agent: an unhost is on its way, so the agent is still busy.
pub const REDIRECT_NOT_HOSTED: u16 = 486;

/// The secret a target keys its hosting tokens with. Random, private to the
/// blade; every core of a blade may share one.
#[derive(Clone)]
pub struct HostSecret([u8; 32]);

impl HostSecret {
    /// A fresh 256-bit secret from the operating system.
    pub fn random() -> Result<HostSecret, getrandom::Error> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)?;
        Ok(HostSecret(raw))
    }

    /// A secret from bytes the caller drew (tests use fixed ones).
    pub fn from_bytes(raw: [u8; 32]) -> HostSecret {
        HostSecret(raw)
    }
}

impl std::fmt::Debug for HostSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostSecret(..)")
    }
}

fn same_blade(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

// ---------------------------------------------------------------------------
// Target side
// ---------------------------------------------------------------------------

/// One live grant on the target: an agent handed over to a source blade
/// for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The hosted agent.
    pub extension: String,
    /// The hosting (source) blade.
    pub source: String,
    /// The session's Call-ID.
    pub call_id: String,
    /// The token the source's INVITE must carry.
    pub token: Token,
    /// The `request_id` of the host request that won.
    pub request_id: u64,
    /// When the lease lapses unless renewed.
    pub expires_at: Duration,
    /// The lease granted, in seconds: each renewal extends it by as much.
    pub lease_secs: u32,
    /// Tells this grant from an earlier one of the same agent in the
    /// deadline index.
    serial: u64,
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

/// The owning blade's side of hosting (one per core: each core owns the
/// agents of its shard and their grants).
///
/// A grant's lease is the only thing that takes an agent back from a
/// source that stopped talking: losing the link to the source
/// ([`Target::peer_lost`]) does not, because SIP may still be flowing, the
/// link may come back and renew, and a take-back while the source still
/// drives the call would let a second session in. The lease bounds the
/// wait (SPEC §2 step 8).
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

    /// Numbers this target's redirect requests from `base` (a multi-core
    /// driver gives each core its own range so answers route back).
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
    /// maximum, and more is cut to it.
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
    ) -> Result<Granted, Refusal> {
        self.expire_one(now, extension, location);
        let lease_secs = match lease_secs {
            0 => self.max_lease_secs,
            n => n.min(self.max_lease_secs),
        };
        let expires_at = now + Duration::from_secs(u64::from(lease_secs));
        let record = location.get_mut(extension).ok_or(Refusal::Unknown)?;
        if !record.is_logged_in() {
            return Err(Refusal::NotLoggedIn);
        }
        match &record.state {
            AgentState::LoggedOut => return Err(Refusal::NotLoggedIn),
            AgentState::InCall { .. } => return Err(Refusal::Busy),
            AgentState::Hosted { .. } => {
                // A retry of the request that won: same source, same call.
                let Some(g) = self.grants.get_mut(extension) else {
                    return Err(Refusal::AlreadyHosted);
                };
                if !same_blade(&g.source, from) || g.call_id != call_id {
                    return Err(Refusal::AlreadyHosted);
                }
                self.deadlines.remove(&(g.expires_at, g.serial));
                g.expires_at = expires_at;
                g.lease_secs = lease_secs;
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
            AgentState::Ready => {}
        }
        if self.grants.len() >= self.max_grants {
            return Err(Refusal::Overloaded);
        }
        record.state = AgentState::Hosted {
            by: from.to_owned(),
        };
        let info = LoginInfo::from_record(record, now).ok_or(Refusal::NotLoggedIn)?;
        // A grant left from before the agent logged out and in again is
        // stale: the state said Ready, so it no longer holds the agent.
        if let Some(old) = self.grants.remove(extension) {
            self.deadlines.remove(&(old.expires_at, old.serial));
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
                token,
                request_id,
                expires_at,
                lease_secs,
                serial,
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
            && g.call_id == call_id
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
    /// carrying `token` is covered by a live grant (SPEC §2 step 5). A
    /// token for another blade, call, agent, or a lapsed lease is refused.
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
        let g = self.grants.get_mut(extension)?;
        let lease_secs = g.lease_secs;
        let expires_at = now + Duration::from_secs(u64::from(lease_secs));
        self.deadlines.remove(&(g.expires_at, g.serial));
        g.expires_at = expires_at;
        self.deadlines
            .insert((expires_at, g.serial), extension.to_owned());
        Some(lease_secs)
    }

    /// Ends the matching grant: the agent goes back to ready (SPEC §2
    /// step 7). Returns whether a grant ended; a repeated or late unhost
    /// is harmless, and never ends a later grant of the same agent (its
    /// token differs).
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
        let found = self.grants.get(extension).is_some_and(|g| {
            g.token.matches(token) && same_blade(&g.source, from) && g.call_id == call_id
        });
        if found {
            self.release(extension, location);
        }
        found
    }

    /// Takes back every agent whose lease lapsed at `now`; returns their
    /// extensions.
    pub fn handle_timeout(&mut self, now: Duration, location: &mut Location) -> Vec<String> {
        let mut released = Vec::new();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ext = entry.remove();
            if self.release(&ext, location) {
                released.push(ext);
            }
        }
        released
    }

    /// When the next lease lapses, for the caller's timer.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.deadlines.keys().next().map(|(at, _)| *at)
    }

    /// The link to `blade` went down. Its grants stay until their leases
    /// lapse (see the type's docs); returns how many it holds.
    pub fn peer_lost(&self, blade: &str) -> usize {
        self.grants
            .values()
            .filter(|g| same_blade(&g.source, blade))
            .count()
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
            self.release(extension, location);
        }
    }

    /// Removes the grant of `extension`; the agent goes back to ready if
    /// it is still hosted by that grant's source (not if it logged out
    /// meanwhile). Returns whether there was a grant.
    fn release(&mut self, extension: &str, location: &mut Location) -> bool {
        let Some(g) = self.grants.remove(extension) else {
            return false;
        };
        self.deadlines.remove(&(g.expires_at, g.serial));
        if let Some(record) = location.get_mut(extension) {
            let hosted_by_it =
                matches!(&record.state, AgentState::Hosted { by } if same_blade(by, &g.source));
            if hosted_by_it {
                record.state = if record.is_logged_in() {
                    AgentState::Ready
                } else {
                    AgentState::LoggedOut
                };
            }
        }
        true
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
            } => {
                match self.grant(
                    now,
                    location,
                    from,
                    *request_id,
                    extension,
                    call_id,
                    *lease_secs,
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
        let request_id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        Some((
            g.source.clone(),
            Message::Redirect {
                request_id,
                grant: g.request_id,
                token: g.token,
                extension: extension.to_owned(),
                call_id: call_id.to_owned(),
                caller: caller.to_owned(),
            },
        ))
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
    /// every peer. Each login gets a higher epoch.
    pub fn logged_in(&mut self, extension: &str) -> Message {
        self.epochs.remove(extension);
        let epoch = self.epoch(extension);
        Message::Announce {
            entries: vec![DirectoryEntry {
                extension: extension.to_owned(),
                epoch,
            }],
        }
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

// ---------------------------------------------------------------------------
// Directory
// ---------------------------------------------------------------------------

/// Which peer blade each remote agent is logged in on, from the peers'
/// announcements. The local blade's own agents are not in it.
///
/// An entry is a hint: a stale one (the agent moved or logged out and the
/// withdrawal is late) is caught when the target refuses with 404 or 480,
/// and the source then asks every peer ([`Source::host`]).
#[derive(Debug, Default, Clone)]
pub struct Directory {
    by_extension: HashMap<String, (String, u64)>,
    peers: BTreeSet<String>,
}

impl Directory {
    /// An empty directory with no peer up.
    pub fn new() -> Directory {
        Directory::default()
    }

    /// Applies a directory notice from `from`; returns false (and changes
    /// nothing) for any other message.
    pub fn apply(&mut self, from: &str, msg: &Message) -> bool {
        match msg {
            Message::Announce { entries } => self.announce(from, entries),
            Message::Withdraw { entries } => self.withdraw(from, entries),
            Message::Resync { entries } => self.resync(from, entries),
            _ => return false,
        }
        true
    }

    /// `from` announces logins. An older epoch of the same peer is stale
    /// and ignored; an announcement by another peer wins (the agent
    /// logged in there later).
    pub fn announce(&mut self, from: &str, entries: &[DirectoryEntry]) {
        for e in entries {
            self.learn(from, &e.extension, e.epoch);
        }
    }

    /// `from` withdraws logins; only an entry of that peer with the same
    /// or an older epoch goes (a withdrawal that crossed a newer login
    /// does not remove it).
    pub fn withdraw(&mut self, from: &str, entries: &[DirectoryEntry]) {
        for e in entries {
            let stale = self
                .by_extension
                .get(&e.extension)
                .is_some_and(|(blade, epoch)| same_blade(blade, from) && *epoch <= e.epoch);
            if stale {
                self.by_extension.remove(&e.extension);
            }
        }
    }

    /// `from`'s full list replaces everything known of `from`.
    pub fn resync(&mut self, from: &str, entries: &[DirectoryEntry]) {
        self.drop_peer_entries(from);
        for e in entries {
            self.by_extension
                .insert(e.extension.clone(), (from.to_owned(), e.epoch));
        }
    }

    /// Records that `extension` is logged in on `from` at `epoch` (an
    /// announcement or a positive [`Message::Located`]).
    pub fn learn(&mut self, from: &str, extension: &str, epoch: u64) {
        if let Some((blade, old)) = self.by_extension.get(extension) {
            if same_blade(blade, from) && *old > epoch {
                return;
            }
        }
        self.by_extension
            .insert(extension.to_owned(), (from.to_owned(), epoch));
    }

    /// Drops `extension`'s entry if it names `from` (a stale entry).
    pub fn forget(&mut self, from: &str, extension: &str) {
        if self
            .by_extension
            .get(extension)
            .is_some_and(|(blade, _)| same_blade(blade, from))
        {
            self.by_extension.remove(extension);
        }
    }

    /// The peer `extension` is logged in on, as far as announced.
    pub fn lookup(&self, extension: &str) -> Option<&str> {
        self.by_extension.get(extension).map(|(b, _)| b.as_str())
    }

    /// The announced epoch of `extension`'s login.
    pub fn epoch(&self, extension: &str) -> Option<u64> {
        self.by_extension.get(extension).map(|(_, e)| *e)
    }

    /// The link to `peer` is up (expect its resync).
    pub fn peer_up(&mut self, peer: &str) {
        self.peers.insert(peer.to_owned());
    }

    /// The link to `peer` is down: forget it and its agents (it cannot
    /// host anyone now; its resync restores them).
    pub fn peer_down(&mut self, peer: &str) {
        self.peers.retain(|p| !same_blade(p, peer));
        self.drop_peer_entries(peer);
    }

    /// The peers whose link is up, in id order.
    pub fn peers(&self) -> impl Iterator<Item = &str> {
        self.peers.iter().map(String::as_str)
    }

    /// Number of remote agents known.
    pub fn len(&self) -> usize {
        self.by_extension.len()
    }

    /// Whether no remote agent is known.
    pub fn is_empty(&self) -> bool {
        self.by_extension.is_empty()
    }

    fn drop_peer_entries(&mut self, peer: &str) {
        self.by_extension
            .retain(|_, (blade, _)| !same_blade(blade, peer));
    }
}

// ---------------------------------------------------------------------------
// Source side
// ---------------------------------------------------------------------------

/// What the source side tells the session layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// The agent is handed over: save its login information, then send
    /// the INVITE to `peer` carrying `token` (SPEC §2 steps 4–5).
    Granted {
        /// The session.
        call_id: String,
        /// The hosted agent.
        extension: String,
        /// The target blade.
        peer: String,
        /// The agent's login information.
        info: LoginInfo,
        /// The hosting token for the INVITE.
        token: Token,
        /// The lease granted, in seconds.
        lease_secs: u32,
    },
    /// Leave to relay the request `call_id` to the agent: send it to
    /// `peer` carrying `token` ([`Source::relay`]).
    Relayed {
        /// The request's Call-ID.
        call_id: String,
        /// The agent.
        extension: String,
        /// The agent's blade.
        peer: String,
        /// The relay token for the request.
        token: Token,
    },
    /// The agent cannot be hosted (or a request to it relayed): answer
    /// the caller with `reason.status()` (404, 480, 486, 503).
    Refused {
        /// The session.
        call_id: String,
        /// The agent.
        extension: String,
        /// Why.
        reason: Refusal,
    },
    /// A live hosting ended without the session asking: the target
    /// refused a renewal, the lease ran out unrenewed, or the link to the
    /// target went down. The session should end the call.
    Lost {
        /// The session.
        call_id: String,
        /// The agent.
        extension: String,
        /// The target blade.
        peer: String,
    },
    /// The target handed over a new request for an agent this blade hosts
    /// (SPEC §2 step 6): decide, then [`Source::answer_redirect`].
    Redirected {
        /// The target blade.
        peer: String,
        /// The redirect's id, for the answer.
        request_id: u64,
        /// The hosting session's Call-ID.
        session: String,
        /// The hosted agent.
        extension: String,
        /// The new request's Call-ID.
        call_id: String,
        /// The new request's caller.
        caller: String,
    },
}

/// A grant this blade holds for one session and agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosting {
    /// The target blade.
    pub peer: String,
    /// The grant's token.
    pub token: Token,
    /// The host request's id (the grant's name in redirects).
    pub grant: u64,
    /// The current lease.
    pub lease: Duration,
    /// When the next renewal goes out.
    pub next_renew: Duration,
    /// When the target's lease surely lapsed unless a renewal is answered
    /// (counted from when the request was sent, so never later than the
    /// target's own deadline).
    pub lease_until: Duration,
    /// The wake-up this hosting holds in the deadline index.
    wake: Duration,
    serial: u64,
}

/// (Call-ID, extension): one hosted agent of one session.
type Key = (String, String);

#[derive(Debug)]
enum Pending {
    /// A host request (or, with `relay`, a relay request) to `peer`.
    Host {
        peer: String,
        key: Key,
        /// The peer came from the directory: a 404/480 means the entry
        /// was stale, so ask the other peers.
        from_directory: bool,
        sent_at: Duration,
        relay: bool,
    },
    /// A Locate sent to every peer in `waiting` under one request id,
    /// before a host (or, with `relay`, a relay) request.
    Locate {
        key: Key,
        waiting: BTreeSet<String>,
        /// A peer went away before answering: a miss everywhere else is
        /// then 503, not 480 (that peer may have had the agent).
        unanswered: bool,
        relay: bool,
    },
    /// A renewal of the hosting `key` with `token`.
    Renew {
        peer: String,
        key: Key,
        token: Token,
        sent_at: Duration,
    },
}

/// The hosting blade's side (one per core: the core that owns the
/// session).
#[derive(Debug)]
pub struct Source {
    lease_secs: u32,
    timeout: Duration,
    next_id: u64,
    next_serial: u64,
    pending: HashMap<u64, (Duration, Pending)>,
    /// `(deadline, request_id)` of pending requests.
    pending_deadlines: BTreeSet<(Duration, u64)>,
    hostings: BTreeMap<Key, Hosting>,
    /// `(wake, serial)` → hosting: renewals and lease checks.
    wakes: BTreeMap<(Duration, u64), Key>,
    transmits: VecDeque<(String, Message)>,
    events: VecDeque<SourceEvent>,
}

impl Source {
    /// A source asking for leases of `lease_secs` (the config's
    /// `cluster.lease_secs`).
    pub fn new(lease_secs: u32) -> Source {
        Source {
            lease_secs: lease_secs.max(1),
            timeout: DEFAULT_REQUEST_TIMEOUT,
            next_id: 1,
            next_serial: 0,
            pending: HashMap::new(),
            pending_deadlines: BTreeSet::new(),
            hostings: BTreeMap::new(),
            wakes: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// How long to wait for a peer's answer.
    pub fn with_timeout(mut self, timeout: Duration) -> Source {
        self.timeout = timeout;
        self
    }

    /// Numbers requests from `base` (a multi-core driver gives each core
    /// its own range, e.g. `core << 48`, so answers route back by id).
    pub fn with_request_base(mut self, base: u64) -> Source {
        self.next_id = base;
        self
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    fn add_pending(&mut self, now: Duration, id: u64, p: Pending) {
        let deadline = now + self.timeout;
        self.pending.insert(id, (deadline, p));
        self.pending_deadlines.insert((deadline, id));
    }

    /// Takes pending request `id` if `answers` accepts it (the right kind,
    /// sent to the peer that answered); otherwise leaves it waiting.
    fn take_if(&mut self, id: u64, answers: impl Fn(&Pending) -> bool) -> Option<Pending> {
        let (_, pending) = self.pending.get(&id)?;
        if answers(pending) {
            self.take_pending(id)
        } else {
            None
        }
    }

    fn take_pending(&mut self, id: u64) -> Option<Pending> {
        let (deadline, p) = self.pending.remove(&id)?;
        self.pending_deadlines.remove(&(deadline, id));
        Some(p)
    }

    /// Starts hosting `extension` for the session `call_id` (SPEC §2
    /// step 3): a host request to the peer the directory names, else a
    /// Locate to every peer that is up. The outcome comes as a
    /// [`SourceEvent::Granted`] or [`SourceEvent::Refused`].
    pub fn host(&mut self, now: Duration, directory: &Directory, call_id: &str, extension: &str) {
        self.start(now, directory, call_id, extension, false);
    }

    /// Asks the blade of `extension` for leave to relay the out-of-dialog
    /// request `call_id` (not a call: no hosting), found the same way as
    /// for [`Source::host`]. The outcome comes as a
    /// [`SourceEvent::Relayed`] or [`SourceEvent::Refused`].
    pub fn relay(&mut self, now: Duration, directory: &Directory, call_id: &str, extension: &str) {
        self.start(now, directory, call_id, extension, true);
    }

    fn start(
        &mut self,
        now: Duration,
        directory: &Directory,
        call_id: &str,
        extension: &str,
        relay: bool,
    ) {
        let key = (call_id.to_owned(), extension.to_owned());
        match directory.lookup(extension) {
            Some(peer) => {
                let peer = peer.to_owned();
                self.send_host(now, peer, key, true, relay);
            }
            None => self.locate(now, directory, key, Vec::new(), relay),
        }
    }

    fn send_host(
        &mut self,
        now: Duration,
        peer: String,
        key: Key,
        from_directory: bool,
        relay: bool,
    ) {
        let request_id = self.request_id();
        let msg = if relay {
            Message::RelayRequest {
                request_id,
                extension: key.1.clone(),
                call_id: key.0.clone(),
            }
        } else {
            Message::HostRequest {
                request_id,
                extension: key.1.clone(),
                call_id: key.0.clone(),
                lease_secs: self.lease_secs,
            }
        };
        self.transmits.push_back((peer.clone(), msg));
        self.add_pending(
            now,
            request_id,
            Pending::Host {
                peer,
                key,
                from_directory,
                sent_at: now,
                relay,
            },
        );
    }

    /// Asks every peer that is up, but those in `tried`, for `key`'s agent.
    fn locate(
        &mut self,
        now: Duration,
        directory: &Directory,
        key: Key,
        tried: Vec<String>,
        relay: bool,
    ) {
        let waiting: BTreeSet<String> = directory
            .peers()
            .filter(|p| !tried.iter().any(|t| same_blade(t, p)))
            .map(str::to_owned)
            .collect();
        if waiting.is_empty() {
            self.events.push_back(SourceEvent::Refused {
                call_id: key.0,
                extension: key.1,
                reason: Refusal::NotLoggedIn,
            });
            return;
        }
        let request_id = self.request_id();
        for peer in &waiting {
            self.transmits.push_back((
                peer.clone(),
                Message::Locate {
                    request_id,
                    extension: key.1.clone(),
                },
            ));
        }
        self.add_pending(
            now,
            request_id,
            Pending::Locate {
                key,
                waiting,
                unanswered: false,
                relay,
            },
        );
    }

    /// Handles a reply from `from` to one of this source's requests, or a
    /// redirect; returns false (and changes nothing) for other messages.
    /// Answers from the wrong peer or to unknown requests are ignored,
    /// except a grant nobody waits for any more, which is released at once
    /// so the agent is not stranded until its lease lapses.
    pub fn handle(
        &mut self,
        now: Duration,
        directory: &mut Directory,
        from: &str,
        msg: Message,
    ) -> bool {
        match msg {
            Message::Located { request_id, epoch } => {
                self.on_located(now, directory, from, request_id, epoch)
            }
            Message::HostGranted {
                request_id,
                call_id,
                info,
                token,
                lease_secs,
            } => self.on_granted(now, from, request_id, call_id, info, token, lease_secs),
            Message::HostRefused { request_id, reason } => {
                self.on_refused(now, directory, from, request_id, reason)
            }
            Message::RelayGranted { request_id, token } => {
                self.on_relay_granted(from, request_id, token)
            }
            Message::RenewAck {
                request_id,
                lease_secs,
            } => self.on_renew_answer(from, request_id, Some(lease_secs)),
            Message::RenewRefused { request_id } => self.on_renew_answer(from, request_id, None),
            // Unhosts are fire-and-forget: the lease covers a lost one.
            Message::UnhostAck { .. } => {}
            Message::Redirect {
                request_id,
                grant: _,
                token,
                extension,
                call_id,
                caller,
            } => self.on_redirect(from, request_id, token, extension, call_id, caller),
            _ => return false,
        }
        true
    }

    fn on_located(
        &mut self,
        now: Duration,
        directory: &mut Directory,
        from: &str,
        request_id: u64,
        epoch: Option<u64>,
    ) {
        let Some((_, Pending::Locate { waiting, .. })) = self.pending.get_mut(&request_id) else {
            return;
        };
        let Some(peer) = waiting.iter().find(|p| same_blade(p, from)).cloned() else {
            return;
        };
        waiting.remove(&peer);
        if epoch.is_none() && !waiting.is_empty() {
            return;
        }
        let Some(Pending::Locate {
            key,
            unanswered,
            relay,
            ..
        }) = self.take_pending(request_id)
        else {
            return;
        };
        match epoch {
            Some(epoch) => {
                directory.learn(&peer, &key.1, epoch);
                self.send_host(now, peer, key, false, relay);
            }
            None => self.events.push_back(SourceEvent::Refused {
                call_id: key.0,
                extension: key.1,
                reason: if unanswered {
                    Refusal::Overloaded
                } else {
                    Refusal::NotLoggedIn
                },
            }),
        }
    }

    #[allow(clippy::too_many_arguments)] // The grant's fields.
    fn on_granted(
        &mut self,
        now: Duration,
        from: &str,
        request_id: u64,
        call_id: String,
        info: LoginInfo,
        token: Token,
        lease_secs: u32,
    ) {
        let pending = self.take_if(
            request_id,
            |p| matches!(p, Pending::Host { peer, relay: false, .. } if same_blade(peer, from)),
        );
        let Some(Pending::Host {
            peer, key, sent_at, ..
        }) = pending
        else {
            // Nobody waits for this grant (timed out, cancelled, peer
            // lost and back): hand the agent back now.
            self.send_unhost(from.to_owned(), &info.extension, &call_id, token);
            return;
        };
        let lease = Duration::from_secs(u64::from(lease_secs.max(1)));
        let next_renew = now + lease / 3;
        let lease_until = sent_at + lease;
        self.next_serial += 1;
        let hosting = Hosting {
            peer: peer.clone(),
            token,
            grant: request_id,
            lease,
            next_renew,
            lease_until,
            wake: next_renew.min(lease_until),
            serial: self.next_serial,
        };
        self.wakes
            .insert((hosting.wake, hosting.serial), key.clone());
        // A second grant for the same key replaces the first, which is
        // released so the target does not keep it until its lease lapses;
        // unless it is the same grant (a retried request), still needed.
        if let Some(old) = self.hostings.insert(key.clone(), hosting) {
            self.wakes.remove(&(old.wake, old.serial));
            if old.token != token || !same_blade(&old.peer, &peer) {
                self.send_unhost(old.peer, &key.1, &key.0, old.token);
            }
        }
        self.events.push_back(SourceEvent::Granted {
            call_id: key.0,
            extension: key.1,
            peer,
            info,
            token,
            lease_secs,
        });
    }

    fn on_relay_granted(&mut self, from: &str, request_id: u64, token: Token) {
        let pending = self.take_if(
            request_id,
            |p| matches!(p, Pending::Host { peer, relay: true, .. } if same_blade(peer, from)),
        );
        // Leave nobody waits for any more lapses by itself.
        let Some(Pending::Host { peer, key, .. }) = pending else {
            return;
        };
        self.events.push_back(SourceEvent::Relayed {
            call_id: key.0,
            extension: key.1,
            peer,
            token,
        });
    }

    fn on_refused(
        &mut self,
        now: Duration,
        directory: &mut Directory,
        from: &str,
        request_id: u64,
        reason: Refusal,
    ) {
        let Some(Pending::Host {
            peer,
            key,
            from_directory,
            relay,
            ..
        }) = self.take_if(
            request_id,
            |p| matches!(p, Pending::Host { peer, .. } if same_blade(peer, from)),
        )
        else {
            return;
        };
        let stale = matches!(reason, Refusal::Unknown | Refusal::NotLoggedIn);
        if stale && from_directory {
            // A stale directory entry: ask everyone else.
            directory.forget(&peer, &key.1);
            self.locate(now, directory, key, vec![peer], relay);
            return;
        }
        self.events.push_back(SourceEvent::Refused {
            call_id: key.0,
            extension: key.1,
            reason,
        });
    }

    fn on_renew_answer(&mut self, from: &str, request_id: u64, lease_secs: Option<u32>) {
        let Some(Pending::Renew {
            key,
            token,
            sent_at,
            ..
        }) = self.take_if(
            request_id,
            |p| matches!(p, Pending::Renew { peer, .. } if same_blade(peer, from)),
        )
        else {
            return;
        };
        // The hosting may have ended or been replaced meanwhile.
        let Some(h) = self.hostings.get_mut(&key).filter(|h| h.token == token) else {
            return;
        };
        match lease_secs {
            Some(secs) => {
                h.lease = Duration::from_secs(u64::from(secs.max(1)));
                // Renewals may be answered out of order: never move the
                // lease back.
                h.lease_until = h.lease_until.max(sent_at + h.lease);
                // A shorter lease than planned for: renew in time for it.
                h.next_renew = h.next_renew.min(sent_at + h.lease / 3);
                let wake = h.next_renew.min(h.lease_until);
                if wake != h.wake {
                    self.wakes.remove(&(h.wake, h.serial));
                    h.wake = wake;
                    self.wakes.insert((wake, h.serial), key);
                }
            }
            None => {
                let peer = h.peer.clone();
                self.drop_hosting(&key);
                self.events.push_back(SourceEvent::Lost {
                    call_id: key.0,
                    extension: key.1,
                    peer,
                });
            }
        }
    }

    fn on_redirect(
        &mut self,
        from: &str,
        request_id: u64,
        token: Token,
        extension: String,
        call_id: String,
        caller: String,
    ) {
        let session = self
            .hostings
            .iter()
            .find(|((_, ext), h)| {
                *ext == extension && h.token == token && same_blade(&h.peer, from)
            })
            .map(|((session, _), _)| session.clone());
        match session {
            Some(session) => self.events.push_back(SourceEvent::Redirected {
                peer: from.to_owned(),
                request_id,
                session,
                extension,
                call_id,
                caller,
            }),
            None => self.answer_redirect(from, request_id, REDIRECT_NOT_HOSTED),
        }
    }

    /// Answers a redirect with a SIP status: 3xx to take the request over
    /// (the target proxies it here), 4xx–6xx as the caller's final answer.
    pub fn answer_redirect(&mut self, peer: &str, request_id: u64, status: u16) {
        self.transmits.push_back((
            peer.to_owned(),
            Message::RedirectAnswer { request_id, status },
        ));
    }

    fn send_unhost(&mut self, peer: String, extension: &str, call_id: &str, token: Token) {
        let request_id = self.request_id();
        self.transmits.push_back((
            peer,
            Message::Unhost {
                request_id,
                extension: extension.to_owned(),
                call_id: call_id.to_owned(),
                token,
            },
        ));
    }

    fn drop_hosting(&mut self, key: &Key) -> Option<Hosting> {
        let h = self.hostings.remove(key)?;
        self.wakes.remove(&(h.wake, h.serial));
        Some(h)
    }

    /// The session `call_id` ended (SPEC §2 step 7): releases every agent
    /// it hosts and gives up on its unanswered host requests (a grant that
    /// still arrives is released on arrival). Returns how many hostings
    /// ended; calling it again is harmless.
    pub fn end(&mut self, call_id: &str) -> usize {
        let keys: Vec<Key> = self
            .hostings
            .range((call_id.to_owned(), String::new())..)
            .take_while(|((c, _), _)| c == call_id)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            self.release_key(key);
        }
        self.cancel_pending(|k| k.0 == call_id);
        keys.len()
    }

    /// One participant of the session `call_id` left (a many-party
    /// session): releases that agent only. Returns whether it was hosted.
    pub fn release(&mut self, call_id: &str, extension: &str) -> bool {
        let key = (call_id.to_owned(), extension.to_owned());
        self.cancel_pending(|k| *k == key);
        self.release_key(&key)
    }

    fn release_key(&mut self, key: &Key) -> bool {
        match self.drop_hosting(key) {
            Some(h) => {
                self.send_unhost(h.peer, &key.1, &key.0, h.token);
                true
            }
            None => false,
        }
    }

    /// Forgets host requests and locates of the sessions `which` picks.
    fn cancel_pending(&mut self, which: impl Fn(&Key) -> bool) {
        let ids: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (_, p))| match p {
                Pending::Host { key, .. } | Pending::Locate { key, .. } => which(key),
                Pending::Renew { .. } => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.take_pending(id);
        }
    }

    /// Runs the timers due at `now`: unanswered requests fail (a host
    /// request with 503), renewals go out at a third of the lease, and a
    /// hosting whose lease ran out unrenewed is lost (and released, in
    /// case only the answers were lost).
    pub fn handle_timeout(&mut self, now: Duration) {
        while let Some(&(deadline, id)) = self.pending_deadlines.first() {
            if deadline > now {
                break;
            }
            let Some(p) = self.take_pending(id) else {
                continue;
            };
            match p {
                Pending::Host { key, .. } => self.events.push_back(SourceEvent::Refused {
                    call_id: key.0,
                    extension: key.1,
                    reason: Refusal::Overloaded,
                }),
                // Someone never answered, and nobody had the agent.
                Pending::Locate { key, .. } => self.events.push_back(SourceEvent::Refused {
                    call_id: key.0,
                    extension: key.1,
                    reason: Refusal::Overloaded,
                }),
                // The next renewal retries; the lease check catches the rest.
                Pending::Renew { .. } => {}
            }
        }
        while let Some(entry) = self.wakes.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            let Some(h) = self.hostings.get_mut(&key) else {
                continue;
            };
            if now >= h.lease_until {
                let (peer, token) = (h.peer.clone(), h.token);
                self.hostings.remove(&key);
                self.send_unhost(peer.clone(), &key.1, &key.0, token);
                self.events.push_back(SourceEvent::Lost {
                    call_id: key.0,
                    extension: key.1,
                    peer,
                });
                continue;
            }
            if now >= h.next_renew {
                h.next_renew = now + h.lease / 3;
                let (peer, token) = (h.peer.clone(), h.token);
                let request_id = self.request_id();
                self.transmits.push_back((
                    peer.clone(),
                    Message::Renew {
                        request_id,
                        extension: key.1.clone(),
                        call_id: key.0.clone(),
                        token,
                    },
                ));
                self.add_pending(
                    now,
                    request_id,
                    Pending::Renew {
                        peer,
                        key: key.clone(),
                        token,
                        sent_at: now,
                    },
                );
            }
            if let Some(h) = self.hostings.get_mut(&key) {
                h.wake = h.next_renew.min(h.lease_until);
                self.wakes.insert((h.wake, h.serial), key);
            }
        }
    }

    /// The earliest timer, for the caller's sleep.
    pub fn next_deadline(&self) -> Option<Duration> {
        let pending = self.pending_deadlines.first().map(|(at, _)| *at);
        let wake = self.wakes.keys().next().map(|(at, _)| *at);
        match (pending, wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The link to `peer` went down mid-exchange: its unanswered host
    /// requests fail with 503, a Locate stops waiting for it, and every
    /// agent hosted from it is lost (the session should end; the target
    /// takes the agent back when the lease lapses). Call
    /// [`Directory::peer_down`] too.
    pub fn peer_lost(&mut self, peer: &str) {
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            let Some((_, p)) = self.pending.get_mut(&id) else {
                continue;
            };
            match p {
                Pending::Host { peer: p, key, .. } if same_blade(p, peer) => {
                    let key = key.clone();
                    self.take_pending(id);
                    self.events.push_back(SourceEvent::Refused {
                        call_id: key.0,
                        extension: key.1,
                        reason: Refusal::Overloaded,
                    });
                }
                Pending::Renew { peer: p, .. } if same_blade(p, peer) => {
                    self.take_pending(id);
                }
                Pending::Locate {
                    waiting,
                    unanswered,
                    key,
                    ..
                } => {
                    let before = waiting.len();
                    waiting.retain(|p| !same_blade(p, peer));
                    if waiting.len() == before {
                        continue;
                    }
                    *unanswered = true;
                    if waiting.is_empty() {
                        let key = key.clone();
                        self.take_pending(id);
                        self.events.push_back(SourceEvent::Refused {
                            call_id: key.0,
                            extension: key.1,
                            reason: Refusal::Overloaded,
                        });
                    }
                }
                _ => {}
            }
        }
        let lost: Vec<Key> = self
            .hostings
            .iter()
            .filter(|(_, h)| same_blade(&h.peer, peer))
            .map(|(k, _)| k.clone())
            .collect();
        for key in lost {
            if let Some(h) = self.drop_hosting(&key) {
                self.events.push_back(SourceEvent::Lost {
                    call_id: key.0,
                    extension: key.1,
                    peer: h.peer,
                });
            }
        }
        // Nothing queued for a dead link would arrive.
        self.transmits.retain(|(p, _)| !same_blade(p, peer));
    }

    /// The next message to send, and the peer it goes to.
    pub fn poll_transmit(&mut self) -> Option<(String, Message)> {
        self.transmits.pop_front()
    }

    /// The next event for the session layer.
    pub fn poll_event(&mut self) -> Option<SourceEvent> {
        self.events.pop_front()
    }

    /// The grant held for `extension` in the session `call_id`.
    pub fn hosting(&self, call_id: &str, extension: &str) -> Option<&Hosting> {
        self.hostings
            .get(&(call_id.to_owned(), extension.to_owned()))
    }

    /// Whether blade `from` presented the token of the grant this blade
    /// holds for `extension` in the session `call_id`: the target blade
    /// handing over a request that only the hosting blade may decide on
    /// (a Join for a hosted agent, SPEC §2 steps 6 and 9).
    pub fn holds(&self, from: &str, call_id: &str, extension: &str, token: &Token) -> bool {
        self.hosting(call_id, extension)
            .is_some_and(|h| same_blade(&h.peer, from) && h.token.matches(token))
    }

    /// Number of live hostings.
    pub fn len(&self) -> usize {
        self.hostings.len()
    }

    /// Whether nothing is hosted.
    pub fn is_empty(&self) -> bool {
        self.hostings.is_empty()
    }

    /// Number of requests awaiting an answer.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use bytes::BytesMut;

    use super::*;
    use crate::config::{Agent, AgentKind, Credential};
    use crate::registrar::location::Binding;
    use crate::sip::Peer;

    const LEASE: u32 = 30;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    /// The shared provisioning: every blade knows every agent.
    fn location() -> Location {
        Location::new(["1001", "2001", "2002", "3001"].map(|ext| {
            Arc::new(Agent {
                badge: format!("B{ext}"),
                extension: ext.to_owned(),
                kind: AgentKind::Agent,
                credential: Credential::Password("pw".into()),
            })
        }))
    }

    fn bind(loc: &mut Location, ext: &str) {
        let addr: SocketAddr = "192.0.2.7:5062".parse().unwrap();
        loc.bind(
            ext,
            Binding {
                uri: format!("sip:{ext}@192.0.2.7:5062"),
                peer: Peer::udp(addr),
                expires_at: secs(3600),
                call_id: format!("reg-{ext}"),
                cseq: 1,
            },
        );
    }

    fn state(loc: &Location, ext: &str) -> AgentState {
        loc.get(ext).unwrap().state.clone()
    }

    fn hosted_by(by: &str) -> AgentState {
        AgentState::Hosted { by: by.into() }
    }

    fn target() -> Target {
        Target::new(&HostSecret::from_bytes([7; 32]), LEASE)
    }

    /// Through the codec, as on the link.
    fn wire(m: Message) -> Message {
        let mut out = BytesMut::new();
        m.encode(&mut out);
        Message::decode(&out).unwrap()
    }

    /// A blade: both sides, its directory and its agents.
    struct Blade {
        id: &'static str,
        target: Target,
        source: Source,
        dir: Directory,
        loc: Location,
    }

    impl Blade {
        fn new(id: &'static str, n: u8) -> Blade {
            Blade {
                id,
                target: Target::new(&HostSecret::from_bytes([n; 32]), LEASE),
                source: Source::new(LEASE),
                dir: Directory::new(),
                loc: location(),
            }
        }

        fn events(&mut self) -> Vec<SourceEvent> {
            std::iter::from_fn(|| self.source.poll_event()).collect()
        }

        fn tick(&mut self, now: Duration) {
            self.source.handle_timeout(now);
            self.target.handle_timeout(now, &mut self.loc);
        }
    }

    /// A cluster whose links are all up, each blade knowing the others'
    /// logged-in agents (the resync at connect).
    fn cluster(ids: &[&'static str]) -> Vec<Blade> {
        let mut blades: Vec<Blade> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Blade::new(id, i as u8 + 1))
            .collect();
        for b in &mut blades {
            for id in ids {
                if *id != b.id {
                    b.dir.peer_up(id);
                }
            }
        }
        blades
    }

    fn idx(blades: &[Blade], id: &str) -> usize {
        blades.iter().position(|b| b.id == id).unwrap()
    }

    /// Logs `ext` in on blade `at` and announces it to the others.
    fn login(blades: &mut [Blade], at: &str, ext: &str) {
        let i = idx(blades, at);
        bind(&mut blades[i].loc, ext);
        let msg = wire(blades[i].target.logged_in(ext));
        for b in blades.iter_mut().filter(|b| b.id != at) {
            assert!(b.dir.apply(at, &msg));
        }
    }

    /// Delivers every queued message (and the answers) until quiet.
    /// Redirect answers are returned as (to, message).
    fn pump(now: Duration, blades: &mut [Blade]) -> Vec<(String, Message)> {
        let mut answers = Vec::new();
        loop {
            let mut moved = false;
            for i in 0..blades.len() {
                while let Some((to, msg)) = blades[i].source.poll_transmit() {
                    moved = true;
                    let j = idx(blades, &to);
                    let from = blades[i].id;
                    let msg = wire(msg);
                    if msg.class() == codec::Class::RedirectAnswer {
                        answers.push((to, msg));
                        continue;
                    }
                    let t = &mut blades[j];
                    let reply = t
                        .target
                        .handle_request(now, &mut t.loc, from, &msg)
                        .unwrap();
                    let by = blades[j].id;
                    let s = &mut blades[i];
                    assert!(s.source.handle(now, &mut s.dir, by, wire(reply)));
                }
            }
            if !moved {
                return answers;
            }
        }
    }

    use super::super::codec;

    fn granted(ev: &SourceEvent) -> Option<Token> {
        match ev {
            SourceEvent::Granted { token, .. } => Some(*token),
            _ => None,
        }
    }

    // -- target side --

    #[test]
    fn grant_marks_hosted_and_unhost_restores_ready() {
        let mut t = target();
        let mut loc = location();
        bind(&mut loc, "2001");
        assert_eq!(state(&loc, "2001"), AgentState::Ready);
        let g = t
            .grant(secs(5), &mut loc, "blade-s", 11, "2001", "call-1", 20)
            .unwrap();
        assert_eq!(state(&loc, "2001"), hosted_by("blade-s"));
        assert_eq!(g.lease_secs, 20);
        assert_eq!(g.info.extension, "2001");
        assert_eq!(g.info.badge, "B2001");
        assert_eq!(g.info.state, hosted_by("blade-s"));
        assert_eq!(g.info.expires_secs, 3595);
        let grant = t.grant_of("2001").unwrap();
        assert_eq!(
            (
                grant.source.as_str(),
                grant.call_id.as_str(),
                grant.request_id
            ),
            ("blade-s", "call-1", 11)
        );
        assert_eq!(grant.expires_at, secs(25));
        assert_eq!(t.next_deadline(), Some(secs(25)));

        assert!(t.unhost(&mut loc, "blade-s", "2001", "call-1", &g.token));
        assert_eq!(state(&loc, "2001"), AgentState::Ready);
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
        // Again (a crossing or repeated unhost): harmless.
        assert!(!t.unhost(&mut loc, "blade-s", "2001", "call-1", &g.token));
        assert_eq!(state(&loc, "2001"), AgentState::Ready);
    }

    #[test]
    fn relay_leave_needs_a_logged_in_agent_and_changes_no_state() {
        let mut t = target();
        let mut loc = location();
        assert_eq!(
            t.relay(secs(0), &loc, "s", "9999", "m1"),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            t.relay(secs(0), &loc, "s", "2001", "m1"),
            Err(Refusal::NotLoggedIn)
        );
        bind(&mut loc, "2001");
        let token = t.relay(secs(0), &loc, "s", "2001", "m1").unwrap();
        assert_eq!(state(&loc, "2001"), AgentState::Ready, "not hosted");
        // Asked again (a retried request): the same leave.
        assert_eq!(t.relay(secs(1), &loc, "s", "2001", "m1"), Ok(token));
        assert!(t.check_relay(secs(1), "s", "2001", "m1", &token));
        assert!(!t.check_relay(secs(1), "other", "2001", "m1", &token));
        assert!(!t.check_relay(secs(1), "s", "2001", "m2", &token));
        assert!(!t.check_relay(secs(1), "s", "2002", "m1", &token));
        assert!(!t.check_relay(secs(1), "s", "2001", "m1", &Token([0; 16])));
        assert!(
            !t.check_token(secs(1), "s", "2001", "m1", &token),
            "no call"
        );
        assert!(
            !t.check_relay(RELAY_TTL, "s", "2001", "m1", &token),
            "expired"
        );
        // A busy agent may still get a message.
        let g = t
            .grant(secs(2), &mut loc, "s", 3, "2001", "c1", 10)
            .unwrap();
        assert!(t.relay(secs(2), &loc, "s", "2001", "m3").is_ok());
        assert!(t.unhost(&mut loc, "s", "2001", "c1", &g.token));
    }

    #[test]
    fn a_relay_round_trip_gives_the_source_a_token_the_target_accepts() {
        let mut blades = cluster(&["s", "t"]);
        login(&mut blades, "t", "2001");
        let now = secs(1);
        let s = idx(&blades, "s");
        let Blade { source, dir, .. } = &mut blades[s];
        source.relay(now, dir, "msg-1", "2001");
        pump(now, &mut blades);
        let events = blades[s].events();
        let [
            SourceEvent::Relayed {
                call_id,
                extension,
                peer,
                token,
            },
        ] = events.as_slice()
        else {
            panic!("{events:?}");
        };
        assert_eq!(
            (call_id.as_str(), extension.as_str(), peer.as_str()),
            ("msg-1", "2001", "t")
        );
        let t = idx(&blades, "t");
        assert!(
            blades[t]
                .target
                .check_relay(now, "s", "2001", "msg-1", token)
        );
        assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
        assert_eq!(blades[s].source.pending(), 0);

        // An agent logged in nowhere: the Locate finds nobody.
        let Blade { source, dir, .. } = &mut blades[s];
        source.relay(now, dir, "msg-2", "2002");
        pump(now, &mut blades);
        let events = blades[s].events();
        assert!(
            matches!(
                events.as_slice(),
                [SourceEvent::Refused {
                    reason: Refusal::NotLoggedIn,
                    ..
                }]
            ),
            "{events:?}"
        );
    }

    #[test]
    fn leases_are_clamped_to_the_configured_maximum() {
        let mut t = target();
        let mut loc = location();
        bind(&mut loc, "2001");
        bind(&mut loc, "2002");
        let g = t.grant(secs(0), &mut loc, "s", 1, "2001", "c1", 0).unwrap();
        assert_eq!(g.lease_secs, LEASE);
        let g = t
            .grant(secs(0), &mut loc, "s", 2, "2002", "c2", 99_999)
            .unwrap();
        assert_eq!(g.lease_secs, LEASE);
    }

    #[test]
    fn refusals_and_their_statuses() {
        let mut t = target().with_max_grants(1);
        let mut loc = location();
        let now = secs(1);
        let ask = |t: &mut Target, loc: &mut Location, ext: &str| {
            t.grant(now, loc, "s", 1, ext, "c", LEASE).map(|g| g.token)
        };
        assert_eq!(ask(&mut t, &mut loc, "9999"), Err(Refusal::Unknown));
        assert_eq!(ask(&mut t, &mut loc, "2001"), Err(Refusal::NotLoggedIn));
        bind(&mut loc, "2001");
        loc.get_mut("2001").unwrap().state = AgentState::InCall {
            call_id: "local".into(),
        };
        assert_eq!(ask(&mut t, &mut loc, "2001"), Err(Refusal::Busy));
        loc.get_mut("2001").unwrap().state = AgentState::Ready;
        assert!(ask(&mut t, &mut loc, "2001").is_ok());
        bind(&mut loc, "2002");
        assert_eq!(ask(&mut t, &mut loc, "2002"), Err(Refusal::Overloaded));
        assert_eq!(state(&loc, "2002"), AgentState::Ready);
        let statuses: Vec<u16> = [
            Refusal::Unknown,
            Refusal::NotLoggedIn,
            Refusal::Busy,
            Refusal::AlreadyHosted,
            Refusal::Overloaded,
        ]
        .iter()
        .map(Refusal::status)
        .collect();
        assert_eq!(statuses, [404, 480, 486, 486, 503]);
    }

    #[test]
    fn token_check_binds_blade_call_agent_and_lease() {
        let mut t = target();
        let mut loc = location();
        bind(&mut loc, "2001");
        let tok = t
            .grant(secs(0), &mut loc, "blade-s", 1, "2001", "call-1", LEASE)
            .unwrap()
            .token;
        let now = secs(1);
        assert!(t.check_token(now, "blade-s", "2001", "call-1", &tok));
        // Blade ids compare as DNS names do.
        assert!(t.check_token(now, "Blade-S", "2001", "call-1", &tok));
        assert!(!t.check_token(now, "blade-x", "2001", "call-1", &tok));
        assert!(!t.check_token(now, "blade-s", "2001", "call-2", &tok));
        assert!(!t.check_token(now, "blade-s", "2002", "call-1", &tok));
        let mut wrong = tok;
        wrong.0[15] ^= 1;
        assert!(!t.check_token(now, "blade-s", "2001", "call-1", &wrong));
        assert!(!t.check_token(secs(30), "blade-s", "2001", "call-1", &tok));

        // A fresh grant for the same blade and call has a fresh token.
        assert!(t.unhost(&mut loc, "blade-s", "2001", "call-1", &tok));
        let again = t
            .grant(now, &mut loc, "blade-s", 2, "2001", "call-1", LEASE)
            .unwrap()
            .token;
        assert_ne!(again, tok);
        assert!(!t.check_token(now, "blade-s", "2001", "call-1", &tok));
        assert!(t.check_token(now, "blade-s", "2001", "call-1", &again));
        // Another secret, another token.
        let mut other = Target::new(&HostSecret::from_bytes([8; 32]), LEASE);
        let mut loc1 = location();
        bind(&mut loc1, "2001");
        let mut loc2 = location();
        bind(&mut loc2, "2001");
        let t1 = target()
            .grant(now, &mut loc1, "s", 1, "2001", "c", LEASE)
            .unwrap()
            .token;
        let t2 = other
            .grant(now, &mut loc2, "s", 1, "2001", "c", LEASE)
            .unwrap()
            .token;
        assert_ne!(t1, t2);
    }

    #[test]
    fn a_retried_request_gets_the_same_grant_and_a_fresh_lease() {
        let mut t = target();
        let mut loc = location();
        bind(&mut loc, "2001");
        let g1 = t
            .grant(secs(0), &mut loc, "s", 1, "2001", "c", LEASE)
            .unwrap();
        let g2 = t
            .grant(secs(10), &mut loc, "s", 1, "2001", "c", LEASE)
            .unwrap();
        assert_eq!(g1.token, g2.token);
        assert_eq!(t.grant_of("2001").unwrap().expires_at, secs(40));
        assert_eq!(t.next_deadline(), Some(secs(40)));
        // Another call from the same blade is another session.
        assert_eq!(
            t.grant(secs(10), &mut loc, "s", 2, "2001", "c2", LEASE)
                .map(|g| g.token),
            Err(Refusal::AlreadyHosted)
        );
    }

    #[test]
    fn a_lapsed_lease_takes_the_agent_back() {
        let mut t = target();
        let mut loc = location();
        bind(&mut loc, "2001");
        let tok = t
            .grant(secs(0), &mut loc, "s", 1, "2001", "c", LEASE)
            .unwrap()
            .token;
        assert!(t.handle_timeout(secs(29), &mut loc).is_empty());
        assert_eq!(state(&loc, "2001"), hosted_by("s"));
        assert_eq!(
            t.handle_timeout(secs(30), &mut loc),
            vec!["2001".to_owned()]
        );
        assert_eq!(state(&loc, "2001"), AgentState::Ready);
        assert!(!t.check_token(secs(30), "s", "2001", "c", &tok));
        assert_eq!(t.next_deadline(), None);
        // A renewal after the lapse is refused; so is a late INVITE.
        assert_eq!(t.renew(secs(31), &mut loc, "s", "2001", "c", &tok), None);
    }

    #[test]
    fn a_renewal_after_the_lapse_is_refused_even_before_the_timer_ran() {
        let mut t = target();
        let mut loc = location();
        bind(&mut loc, "2001");
        let tok = t
            .grant(secs(0), &mut loc, "s", 1, "2001", "c", LEASE)
            .unwrap()
            .token;
        assert_eq!(
            t.renew(secs(20), &mut loc, "s", "2001", "c", &tok),
            Some(LEASE)
        );
        assert_eq!(t.next_deadline(), Some(secs(50)));
        // Lapsed at 50; the timer has not run yet.
        assert_eq!(t.renew(secs(50), &mut loc, "s", "2001", "c", &tok), None);
        assert_eq!(state(&loc, "2001"), AgentState::Ready);
        assert!(t.is_empty());
        assert!(t.handle_timeout(secs(60), &mut loc).is_empty());
        // And the agent can be hosted again at once.
        assert!(
            t.grant(secs(50), &mut loc, "s2", 2, "2001", "c2", LEASE)
                .is_ok()
        );
    }

    #[test]
    fn renewals_and_unhosts_must_match_the_grant() {
        let mut t = target();
        let mut loc = location();
        bind(&mut loc, "2001");
        let tok = t
            .grant(secs(0), &mut loc, "s", 1, "2001", "c", LEASE)
            .unwrap()
            .token;
        let now = secs(1);
        assert_eq!(t.renew(now, &mut loc, "x", "2001", "c", &tok), None);
        assert_eq!(t.renew(now, &mut loc, "s", "2001", "other", &tok), None);
        assert_eq!(
            t.renew(now, &mut loc, "s", "2001", "c", &Token([0; 16])),
            None
        );
        // A rogue or confused peer cannot release someone else's grant.
        assert!(!t.unhost(&mut loc, "x", "2001", "c", &tok));
        assert!(!t.unhost(&mut loc, "s", "2001", "c", &Token([0; 16])));
        assert_eq!(state(&loc, "2001"), hosted_by("s"));
    }

    #[test]
    fn the_target_keeps_grants_of_a_lost_peer_until_the_lease() {
        let mut t = target();
        let mut loc = location();
        bind(&mut loc, "2001");
        t.grant(secs(0), &mut loc, "s", 1, "2001", "c", LEASE)
            .unwrap();
        assert_eq!(t.peer_lost("s"), 1);
        assert_eq!(t.peer_lost("other"), 0);
        assert_eq!(state(&loc, "2001"), hosted_by("s"));
        assert_eq!(
            t.handle_timeout(secs(30), &mut loc),
            vec!["2001".to_owned()]
        );
        assert_eq!(state(&loc, "2001"), AgentState::Ready);
    }

    #[test]
    fn logout_while_hosted_is_not_undone_by_the_release() {
        let mut t = target();
        let mut loc = location();
        bind(&mut loc, "2001");
        let tok = t
            .grant(secs(0), &mut loc, "s", 1, "2001", "c", LEASE)
            .unwrap()
            .token;
        loc.unbind("2001");
        assert!(t.unhost(&mut loc, "s", "2001", "c", &tok));
        assert_eq!(state(&loc, "2001"), AgentState::LoggedOut);

        // Logged out and back in while a grant lingers: the agent is
        // ready, and a new grant replaces the stale one.
        let tok = t
            .grant(secs(1), &mut loc, "s", 2, "2001", "c", LEASE)
            .map(|g| g.token);
        assert_eq!(tok, Err(Refusal::NotLoggedIn));
        bind(&mut loc, "2001");
        let old = t
            .grant(secs(1), &mut loc, "s", 3, "2001", "c", LEASE)
            .unwrap()
            .token;
        loc.unbind("2001");
        bind(&mut loc, "2001");
        assert_eq!(state(&loc, "2001"), AgentState::Ready);
        let new = t
            .grant(secs(2), &mut loc, "s2", 4, "2001", "c2", LEASE)
            .unwrap()
            .token;
        assert!(!t.check_token(secs(2), "s", "2001", "c", &old));
        assert!(t.check_token(secs(2), "s2", "2001", "c2", &new));
        assert_eq!(t.len(), 1);
        assert_eq!(t.next_deadline(), Some(secs(32)));
    }

    #[test]
    fn requests_are_answered_once_each() {
        let mut t = target();
        let mut loc = location();
        bind(&mut loc, "2001");
        let now = secs(0);
        let ask = |t: &mut Target, loc: &mut Location, m: Message| {
            t.handle_request(now, loc, "s", &wire(m)).map(wire)
        };
        assert_eq!(
            ask(
                &mut t,
                &mut loc,
                Message::Locate {
                    request_id: 1,
                    extension: "2002".into()
                }
            ),
            Some(Message::Located {
                request_id: 1,
                epoch: None
            })
        );
        let Some(Message::Located { epoch: Some(e), .. }) = ask(
            &mut t,
            &mut loc,
            Message::Locate {
                request_id: 2,
                extension: "2001".into(),
            },
        ) else {
            panic!("2001 is here");
        };
        let req = Message::HostRequest {
            request_id: 3,
            extension: "2001".into(),
            call_id: "c".into(),
            lease_secs: 10,
        };
        let Some(Message::HostGranted {
            request_id: 3,
            call_id,
            info,
            token,
            lease_secs: 10,
        }) = ask(&mut t, &mut loc, req)
        else {
            panic!("granted");
        };
        assert_eq!((call_id.as_str(), info.state), ("c", hosted_by("s")));
        let renew = Message::Renew {
            request_id: 4,
            extension: "2001".into(),
            call_id: "c".into(),
            token,
        };
        assert_eq!(
            ask(&mut t, &mut loc, renew.clone()),
            Some(Message::RenewAck {
                request_id: 4,
                lease_secs: 10
            })
        );
        let unhost = Message::Unhost {
            request_id: 5,
            extension: "2001".into(),
            call_id: "c".into(),
            token,
        };
        assert_eq!(
            ask(&mut t, &mut loc, unhost.clone()),
            Some(Message::UnhostAck { request_id: 5 })
        );
        assert_eq!(
            ask(&mut t, &mut loc, unhost),
            Some(Message::UnhostAck { request_id: 5 })
        );
        assert_eq!(
            ask(&mut t, &mut loc, renew),
            Some(Message::RenewRefused { request_id: 4 })
        );
        // Not requests: no answer.
        assert_eq!(
            ask(&mut t, &mut loc, Message::UnhostAck { request_id: 1 }),
            None
        );
        assert_eq!(
            ask(&mut t, &mut loc, Message::Resync { entries: vec![] }),
            None
        );
        // The Locate epoch is the announced one.
        assert_eq!(
            t.resync(&loc),
            Message::Resync {
                entries: vec![DirectoryEntry {
                    extension: "2001".into(),
                    epoch: e
                }]
            }
        );
    }

    #[test]
    fn announcements_number_each_login() {
        let mut t = target();
        let mut loc = location();
        let Message::Announce { entries } = t.logged_in("2001") else {
            panic!()
        };
        let first = entries[0].epoch;
        let Message::Announce { entries } = t.logged_in("2001") else {
            panic!()
        };
        let second = entries[0].epoch;
        assert!(second > first);
        assert_eq!(
            t.logged_out("2001"),
            Some(Message::Withdraw {
                entries: vec![DirectoryEntry {
                    extension: "2001".into(),
                    epoch: second
                }]
            })
        );
        assert_eq!(t.logged_out("2001"), None);
        // The resync lists logged-in agents only, numbering unknown ones.
        bind(&mut loc, "2002");
        bind(&mut loc, "1001");
        let entries = t.entries(&loc);
        let exts: Vec<&str> = entries.iter().map(|e| e.extension.as_str()).collect();
        assert_eq!(exts, ["1001", "2002"]);
        assert!(entries.iter().all(|e| e.epoch > second));
        assert_eq!(t.entries(&loc), entries, "stable until the next login");
        let mut t = target().with_epoch_base(1_000);
        let Message::Announce { entries } = t.logged_in("2001") else {
            panic!()
        };
        assert_eq!(entries[0].epoch, 1_000);
    }

    // -- directory --

    fn entry(ext: &str, epoch: u64) -> DirectoryEntry {
        DirectoryEntry {
            extension: ext.into(),
            epoch,
        }
    }

    #[test]
    fn directory_announce_withdraw_resync() {
        let mut d = Directory::new();
        d.peer_up("t1");
        d.peer_up("t2");
        assert_eq!(d.peers().collect::<Vec<_>>(), ["t1", "t2"]);
        d.announce("t1", &[entry("2001", 5), entry("2002", 6)]);
        assert_eq!(d.lookup("2001"), Some("t1"));
        assert_eq!(d.epoch("2001"), Some(5));
        // An older announcement of the same blade is stale.
        d.announce("t1", &[entry("2001", 4)]);
        assert_eq!(d.epoch("2001"), Some(5));
        // A withdrawal of an older login does not remove the newer one.
        d.withdraw("t1", &[entry("2001", 4)]);
        assert_eq!(d.lookup("2001"), Some("t1"));
        // Another blade's withdrawal does not remove t1's entry.
        d.withdraw("t2", &[entry("2001", 99)]);
        assert_eq!(d.lookup("2001"), Some("t1"));
        d.withdraw("t1", &[entry("2001", 5)]);
        assert_eq!(d.lookup("2001"), None);
        // The agent moved: the later announcement wins.
        d.announce("t1", &[entry("3001", 9)]);
        d.announce("t2", &[entry("3001", 1)]);
        assert_eq!(d.lookup("3001"), Some("t2"));
        // A resync replaces all of that peer's entries, nobody else's.
        d.resync("t1", &[entry("1001", 1)]);
        assert_eq!(d.lookup("2002"), None);
        assert_eq!(d.lookup("1001"), Some("t1"));
        assert_eq!(d.lookup("3001"), Some("t2"));
        assert_eq!(d.len(), 2);
        // Apply routes notices and only notices.
        assert!(d.apply(
            "t2",
            &Message::Withdraw {
                entries: vec![entry("3001", 1)]
            }
        ));
        assert!(!d.apply("t2", &Message::UnhostAck { request_id: 1 }));
        assert_eq!(d.lookup("3001"), None);
        // A lost peer takes its agents with it.
        d.peer_down("T1");
        assert_eq!(d.lookup("1001"), None);
        assert!(d.is_empty());
        assert_eq!(d.peers().collect::<Vec<_>>(), ["t2"]);
    }

    #[test]
    fn a_reconnecting_peer_resyncs_and_own_agents_stay_local() {
        let mut blades = cluster(&["s", "t"]);
        login(&mut blades, "t", "2001");
        login(&mut blades, "t", "2002");
        login(&mut blades, "s", "1001");
        let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
        assert_eq!(blades[s].dir.lookup("2001"), Some("t"));
        assert_eq!(
            blades[s].dir.lookup("1001"),
            None,
            "own agents are not in it"
        );
        assert_eq!(blades[t].dir.lookup("1001"), Some("s"));
        // The link drops; meanwhile 2002 logs out, unannounced.
        blades[s].dir.peer_down("t");
        assert_eq!(blades[s].dir.lookup("2001"), None);
        blades[t].loc.unbind("2002");
        blades[s].dir.peer_up("t");
        let tb = &mut blades[t];
        let resync = wire(tb.target.resync(&tb.loc));
        assert!(blades[s].dir.apply("t", &resync));
        assert_eq!(blades[s].dir.lookup("2001"), Some("t"));
        assert_eq!(blades[s].dir.lookup("2002"), None);
    }

    // -- both sides, in virtual time --

    #[test]
    fn cross_blade_hosting_end_to_end() {
        let mut blades = cluster(&["s", "t"]);
        login(&mut blades, "t", "2001");
        let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
        let now = secs(100);
        let dir = blades[s].dir.clone();
        blades[s].source.host(now, &dir, "call-1", "2001");
        assert_eq!(blades[s].source.pending(), 1);
        assert_eq!(blades[s].source.next_deadline(), Some(now + secs(1)));
        pump(now, &mut blades);
        let ev = blades[s].events();
        let [
            SourceEvent::Granted {
                call_id,
                extension,
                peer,
                info,
                token,
                lease_secs,
            },
        ] = &ev[..]
        else {
            panic!("{ev:?}");
        };
        assert_eq!(
            (call_id.as_str(), extension.as_str(), peer.as_str()),
            ("call-1", "2001", "t")
        );
        assert_eq!(*lease_secs, LEASE);
        assert_eq!(info.state, hosted_by("s"));
        assert_eq!(info.addr, "192.0.2.7:5062".parse().unwrap());
        assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s"));
        // The INVITE S sends carries the token; T checks it.
        assert!(
            blades[t]
                .target
                .check_token(now, "s", "2001", "call-1", token)
        );
        // T can hand S a request for the agent by showing the grant's
        // token; nobody else, and nothing else, passes.
        assert!(blades[s].source.holds("t", "call-1", "2001", token));
        assert!(blades[s].source.holds("T", "call-1", "2001", token));
        assert!(!blades[s].source.holds("u", "call-1", "2001", token));
        assert!(!blades[s].source.holds("t", "call-2", "2001", token));
        assert!(!blades[s].source.holds("t", "call-1", "2002", token));
        assert!(
            !blades[s]
                .source
                .holds("t", "call-1", "2001", &Token([0; 16]))
        );
        let h = blades[s].source.hosting("call-1", "2001").unwrap();
        assert_eq!(h.next_renew, now + secs(10));
        assert_eq!(blades[s].source.next_deadline(), Some(now + secs(10)));

        // The session ends: host cancelled, then ready.
        assert_eq!(blades[s].source.end("call-1"), 1);
        pump(now, &mut blades);
        assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
        assert!(blades[s].source.is_empty());
        assert!(blades[t].target.is_empty());
        assert_eq!(blades[s].source.pending(), 0);
        assert_eq!(blades[s].source.next_deadline(), None);
    }

    #[test]
    fn two_blades_host_the_same_agent_at_once_one_wins() {
        let mut blades = cluster(&["s1", "s2", "t"]);
        login(&mut blades, "t", "2001");
        let now = secs(1);
        for id in ["s1", "s2"] {
            let i = idx(&blades, id);
            let dir = blades[i].dir.clone();
            blades[i]
                .source
                .host(now, &dir, &format!("call-{id}"), "2001");
        }
        // Both requests are in flight before either is answered.
        pump(now, &mut blades);
        let e1 = blades[0].events();
        let e2 = blades[1].events();
        let wins = e1
            .iter()
            .chain(&e2)
            .filter(|e| granted(e).is_some())
            .count();
        assert_eq!(wins, 1, "{e1:?} {e2:?}");
        let [
            SourceEvent::Refused {
                reason, call_id, ..
            },
        ] = &e2[..]
        else {
            panic!("{e2:?}");
        };
        assert_eq!((*reason, reason.status()), (Refusal::AlreadyHosted, 486));
        assert_eq!(call_id, "call-s2");
        let t = idx(&blades, "t");
        assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s1"));
        // The loser holds nothing and has nothing to renew.
        assert!(blades[1].source.is_empty());
        assert_eq!(blades[1].source.next_deadline(), None);
    }

    #[test]
    fn live_sessions_are_renewed_and_never_lapse() {
        let mut blades = cluster(&["s", "t"]);
        login(&mut blades, "t", "2001");
        let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "c", "2001");
        pump(secs(0), &mut blades);
        let token = granted(&blades[s].events()[0]).unwrap();
        let mut renewals = 0;
        for step in 1..=1200 {
            let now = ms(step * 100);
            blades[s].tick(now);
            blades[t].tick(now);
            if blades[s].source.pending() > 0 {
                renewals += 1;
            }
            pump(now, &mut blades);
            assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s"), "at {now:?}");
            assert!(blades[t].target.check_token(now, "s", "2001", "c", &token));
        }
        // Every 10 s over 120 s.
        assert_eq!(renewals, 12);
        assert!(blades[s].events().is_empty());
    }

    #[test]
    fn an_unrenewed_lease_lapses_on_both_sides() {
        let mut blades = cluster(&["s", "t"]);
        login(&mut blades, "t", "2001");
        let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "c", "2001");
        pump(secs(0), &mut blades);
        let token = granted(&blades[s].events()[0]).unwrap();
        // A partition: renewals from S go nowhere.
        for step in 1..=300 {
            let now = ms(step * 100);
            blades[s].tick(now);
            blades[t].tick(now);
            while blades[s].source.poll_transmit().is_some() {}
        }
        assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
        assert!(
            !blades[t]
                .target
                .check_token(secs(30), "s", "2001", "c", &token)
        );
        // S gave up on the hosting at the same time, never later.
        let ev = blades[s].events();
        assert_eq!(
            ev,
            [SourceEvent::Lost {
                call_id: "c".into(),
                extension: "2001".into(),
                peer: "t".into()
            }]
        );
        assert!(blades[s].source.is_empty());
    }

    #[test]
    fn a_renewal_after_the_lapse_ends_the_session() {
        let mut blades = cluster(&["s", "t"]);
        login(&mut blades, "t", "2001");
        let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "c", "2001");
        pump(secs(0), &mut blades);
        blades[s].events();
        // T took the agent back early (e.g. a shorter lease on its side).
        let grant = blades[t].target.grant_of("2001").unwrap().clone();
        let tok = grant.token;
        let tb = &mut blades[t];
        assert!(tb.target.unhost(&mut tb.loc, "s", "2001", "c", &tok));
        blades[s].tick(secs(10));
        pump(secs(10), &mut blades);
        assert_eq!(
            blades[s].events(),
            [SourceEvent::Lost {
                call_id: "c".into(),
                extension: "2001".into(),
                peer: "t".into()
            }]
        );
        assert!(blades[s].source.is_empty());
        assert_eq!(blades[s].source.next_deadline(), None);
    }

    #[test]
    fn an_unhost_crossing_a_late_bye_is_harmless() {
        let mut blades = cluster(&["s", "s2", "t"]);
        login(&mut blades, "t", "2001");
        let (s, s2, t) = (idx(&blades, "s"), idx(&blades, "s2"), idx(&blades, "t"));
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "c", "2001");
        pump(secs(0), &mut blades);
        let token = granted(&blades[s].events()[0]).unwrap();
        // S ends the session (its own BYE); the unhost is in flight.
        assert_eq!(blades[s].source.end("c"), 1);
        let (to, unhost) = blades[s].source.poll_transmit().unwrap();
        assert_eq!(to, "t");
        // The late BYE from B reaches S now: ending again is a no-op.
        assert_eq!(blades[s].source.end("c"), 0);
        assert!(blades[s].source.poll_transmit().is_none());
        // T meanwhile still routes in-dialog requests; the unhost lands.
        let unhost = wire(unhost);
        let t_blade = &mut blades[t];
        let ack = t_blade
            .target
            .handle_request(secs(1), &mut t_blade.loc, "s", &unhost);
        assert!(matches!(ack, Some(Message::UnhostAck { .. })));
        assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
        // The old token no longer admits an INVITE.
        assert!(
            !blades[t]
                .target
                .check_token(secs(1), "s", "2001", "c", &token)
        );
        // Another blade hosts B; a duplicate of the old unhost arrives.
        let dir = blades[s2].dir.clone();
        blades[s2].source.host(secs(2), &dir, "c2", "2001");
        pump(secs(2), &mut blades);
        assert!(granted(&blades[s2].events()[0]).is_some());
        let t_blade = &mut blades[t];
        let ack = t_blade
            .target
            .handle_request(secs(3), &mut t_blade.loc, "s", &unhost);
        assert!(matches!(ack, Some(Message::UnhostAck { .. })));
        assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s2"));
        // The ack reaching S after all this changes nothing.
        let s_blade = &mut blades[s];
        assert!(
            s_blade
                .source
                .handle(secs(3), &mut s_blade.dir, "t", ack.unwrap())
        );
        assert!(blades[s].events().is_empty());
    }

    #[test]
    fn an_unanswered_host_request_fails_503_and_a_late_grant_is_released() {
        let mut blades = cluster(&["s", "t"]);
        login(&mut blades, "t", "2001");
        let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "c", "2001");
        let (_, request) = blades[s].source.poll_transmit().unwrap();
        blades[s].tick(ms(999));
        assert!(blades[s].events().is_empty());
        blades[s].tick(ms(1000));
        let ev = blades[s].events();
        let [SourceEvent::Refused { reason, .. }] = &ev[..] else {
            panic!("{ev:?}");
        };
        assert_eq!((*reason, reason.status()), (Refusal::Overloaded, 503));
        assert_eq!(blades[s].source.pending(), 0);
        assert_eq!(blades[s].source.next_deadline(), None);
        // The request was only slow: T grants after S gave up.
        let t_blade = &mut blades[t];
        let grant = t_blade
            .target
            .handle_request(ms(1500), &mut t_blade.loc, "s", &wire(request))
            .unwrap();
        assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s"));
        let s_blade = &mut blades[s];
        assert!(
            s_blade
                .source
                .handle(ms(1500), &mut s_blade.dir, "t", wire(grant))
        );
        assert!(blades[s].events().is_empty());
        assert!(blades[s].source.is_empty());
        // S releases it at once rather than stranding B for a lease.
        pump(ms(1500), &mut blades);
        assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
    }

    #[test]
    fn a_session_ended_before_the_grant_releases_it_on_arrival() {
        let mut blades = cluster(&["s", "t"]);
        login(&mut blades, "t", "2001");
        let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "c", "2001");
        let (_, request) = blades[s].source.poll_transmit().unwrap();
        // CANCEL from the caller before T answered.
        assert_eq!(blades[s].source.end("c"), 0);
        assert_eq!(blades[s].source.pending(), 0);
        let t_blade = &mut blades[t];
        let grant = t_blade
            .target
            .handle_request(ms(10), &mut t_blade.loc, "s", &wire(request))
            .unwrap();
        let s_blade = &mut blades[s];
        s_blade
            .source
            .handle(ms(10), &mut s_blade.dir, "t", wire(grant));
        pump(ms(10), &mut blades);
        assert!(blades[s].events().is_empty());
        assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
    }

    #[test]
    fn a_peer_lost_mid_exchange_fails_pending_and_drops_hostings() {
        let mut blades = cluster(&["s", "t"]);
        login(&mut blades, "t", "2001");
        login(&mut blades, "t", "2002");
        let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "c1", "2001");
        pump(secs(0), &mut blades);
        assert!(granted(&blades[s].events()[0]).is_some());
        // A second request is in flight when the link dies.
        blades[s].source.host(secs(1), &dir, "c2", "2002");
        blades[s].source.peer_lost("t");
        blades[s].dir.peer_down("t");
        assert!(
            blades[s].source.poll_transmit().is_none(),
            "nothing for a dead link"
        );
        let mut ev = blades[s].events();
        ev.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(
            ev,
            [
                SourceEvent::Lost {
                    call_id: "c1".into(),
                    extension: "2001".into(),
                    peer: "t".into()
                },
                SourceEvent::Refused {
                    call_id: "c2".into(),
                    extension: "2002".into(),
                    reason: Refusal::Overloaded
                },
            ]
        );
        assert!(blades[s].source.is_empty());
        assert_eq!(blades[s].source.pending(), 0);
        assert_eq!(blades[s].source.next_deadline(), None);
        // T does not take B back on link loss, only when the lease lapses.
        assert_eq!(blades[t].target.peer_lost("s"), 1);
        blades[t].tick(secs(29));
        assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s"));
        blades[t].tick(secs(30));
        assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
        // With the peer gone, a new call finds nobody to ask: 480.
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(31), &dir, "c3", "2001");
        let ev = blades[s].events();
        assert!(matches!(
            &ev[..],
            [SourceEvent::Refused {
                reason: Refusal::NotLoggedIn,
                ..
            }]
        ));
    }

    #[test]
    fn a_directory_miss_asks_every_peer() {
        let mut blades = cluster(&["s", "t1", "t2"]);
        let t2 = idx(&blades, "t2");
        // Logged in on t2, but the announcement never reached s.
        bind(&mut blades[t2].loc, "2001");
        let s = idx(&blades, "s");
        assert_eq!(blades[s].dir.lookup("2001"), None);
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "c", "2001");
        pump(secs(0), &mut blades);
        let ev = blades[s].events();
        let [SourceEvent::Granted { peer, .. }] = &ev[..] else {
            panic!("{ev:?}");
        };
        assert_eq!(peer, "t2");
        assert_eq!(blades[s].dir.lookup("2001"), Some("t2"), "learned");
        assert_eq!(state(&blades[t2].loc, "2001"), hosted_by("s"));
    }

    #[test]
    fn a_stale_entry_falls_back_to_asking_the_others() {
        let mut blades = cluster(&["s", "t1", "t2"]);
        login(&mut blades, "t1", "2001");
        // 2001 moves to t2; t1's withdrawal and t2's announcement are late.
        let t1 = idx(&blades, "t1");
        let t2 = idx(&blades, "t2");
        blades[t1].loc.unbind("2001");
        bind(&mut blades[t2].loc, "2001");
        let s = idx(&blades, "s");
        assert_eq!(blades[s].dir.lookup("2001"), Some("t1"));
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "c", "2001");
        pump(secs(0), &mut blades);
        let ev = blades[s].events();
        let [SourceEvent::Granted { peer, .. }] = &ev[..] else {
            panic!("{ev:?}");
        };
        assert_eq!(peer, "t2");
        assert_eq!(blades[s].dir.lookup("2001"), Some("t2"));
    }

    #[test]
    fn nobody_has_the_agent_is_480_and_a_silent_peer_503() {
        let mut blades = cluster(&["s", "t1", "t2"]);
        let s = idx(&blades, "s");
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "c", "2001");
        pump(secs(0), &mut blades);
        let ev = blades[s].events();
        assert!(
            matches!(
                &ev[..],
                [SourceEvent::Refused {
                    reason: Refusal::NotLoggedIn,
                    ..
                }]
            ),
            "{ev:?}"
        );
        // t2 never answers the Locate: 503 at the timeout.
        blades[s].source.host(secs(10), &dir, "c2", "2001");
        let mut to_t2 = None;
        while let Some((to, m)) = blades[s].source.poll_transmit() {
            if to == "t2" {
                to_t2 = Some(m);
                continue;
            }
            let j = idx(&blades, &to);
            let tb = &mut blades[j];
            let reply = tb
                .target
                .handle_request(secs(10), &mut tb.loc, "s", &m)
                .unwrap();
            let sb = &mut blades[s];
            sb.source.handle(secs(10), &mut sb.dir, &to, reply);
        }
        assert!(to_t2.is_some());
        assert!(blades[s].events().is_empty());
        blades[s].tick(secs(11));
        let ev = blades[s].events();
        assert!(
            matches!(
                &ev[..],
                [SourceEvent::Refused {
                    reason: Refusal::Overloaded,
                    ..
                }]
            ),
            "{ev:?}"
        );
        // Or t2's link drops while it is being asked: 503 at once.
        blades[s].source.host(secs(20), &dir, "c3", "2001");
        let queued: Vec<(String, Message)> =
            std::iter::from_fn(|| blades[s].source.poll_transmit()).collect();
        for (to, m) in queued.into_iter().filter(|(to, _)| to == "t1") {
            let j = idx(&blades, &to);
            let tb = &mut blades[j];
            let reply = tb
                .target
                .handle_request(secs(20), &mut tb.loc, "s", &m)
                .unwrap();
            let sb = &mut blades[s];
            sb.source.handle(secs(20), &mut sb.dir, &to, reply);
        }
        blades[s].source.peer_lost("t2");
        let ev = blades[s].events();
        assert!(
            matches!(
                &ev[..],
                [SourceEvent::Refused {
                    reason: Refusal::Overloaded,
                    ..
                }]
            ),
            "{ev:?}"
        );
        assert_eq!(blades[s].source.pending(), 0);
    }

    #[test]
    fn answers_from_the_wrong_peer_are_ignored() {
        let mut blades = cluster(&["s", "t", "x"]);
        login(&mut blades, "t", "2001");
        let s = idx(&blades, "s");
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "c", "2001");
        let (_, req) = blades[s].source.poll_transmit().unwrap();
        let id = req.request_id().unwrap();
        let sb = &mut blades[s];
        let forged = Message::HostRefused {
            request_id: id,
            reason: Refusal::Busy,
        };
        assert!(sb.source.handle(secs(0), &mut sb.dir, "x", forged));
        assert!(sb.events().is_empty());
        assert_eq!(sb.source.pending(), 1);
        // Non-replies are not the source's.
        assert!(!sb.source.handle(
            secs(0),
            &mut sb.dir,
            "t",
            Message::Resync { entries: vec![] }
        ));
    }

    #[test]
    fn a_new_call_for_a_hosted_agent_is_redirected_to_the_host() {
        let mut blades = cluster(&["s", "t"]);
        login(&mut blades, "t", "2001");
        let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
        assert!(
            blades[t]
                .target
                .redirect("2001", "c9", "sip:3001@cc")
                .is_none()
        );
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "c", "2001");
        pump(secs(0), &mut blades);
        blades[s].events();
        // A third party calls B on T: T hands the decision to S.
        let (to, redirect) = blades[t]
            .target
            .redirect("2001", "c9", "sip:3001@cc")
            .unwrap();
        assert_eq!(to, "s");
        let rid = redirect.request_id().unwrap();
        let sb = &mut blades[s];
        assert!(
            sb.source
                .handle(secs(1), &mut sb.dir, "t", wire(redirect.clone()))
        );
        let ev = sb.events();
        let [
            SourceEvent::Redirected {
                peer,
                request_id,
                session,
                extension,
                call_id,
                caller,
            },
        ] = &ev[..]
        else {
            panic!("{ev:?}");
        };
        assert_eq!(
            (
                peer.as_str(),
                *request_id,
                session.as_str(),
                extension.as_str()
            ),
            ("t", rid, "c", "2001")
        );
        assert_eq!((call_id.as_str(), caller.as_str()), ("c9", "sip:3001@cc"));
        sb.source.answer_redirect("t", rid, 486);
        let answers = pump(secs(1), &mut blades);
        assert_eq!(
            answers,
            [(
                "t".to_owned(),
                Message::RedirectAnswer {
                    request_id: rid,
                    status: 486
                }
            )]
        );
        // After the session ended, S answers a late redirect itself.
        blades[s].source.end("c");
        pump(secs(2), &mut blades);
        let sb = &mut blades[s];
        sb.source.handle(secs(2), &mut sb.dir, "t", wire(redirect));
        assert!(sb.events().is_empty());
        let answers = pump(secs(2), &mut blades);
        assert_eq!(
            answers,
            [(
                "t".to_owned(),
                Message::RedirectAnswer {
                    request_id: rid,
                    status: 486
                }
            )]
        );
    }

    #[test]
    fn a_short_lease_is_renewed_by_its_own_length() {
        let mut blades = cluster(&["s", "t"]);
        blades[0].source = Source::new(9);
        login(&mut blades, "t", "2001");
        let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "c", "2001");
        pump(secs(0), &mut blades);
        let ev = blades[s].events();
        assert!(matches!(
            &ev[..],
            [SourceEvent::Granted { lease_secs: 9, .. }]
        ));
        for step in 1..=600 {
            let now = ms(step * 100);
            blades[s].tick(now);
            blades[t].tick(now);
            pump(now, &mut blades);
            let g = blades[t].target.grant_of("2001").unwrap();
            assert_eq!(g.lease_secs, 9);
            assert!(g.expires_at > now && g.expires_at <= now + secs(9));
        }
        assert!(blades[s].events().is_empty());
    }

    #[test]
    fn hosting_the_same_agent_twice_for_one_session_keeps_the_grant() {
        let mut blades = cluster(&["s", "t"]);
        login(&mut blades, "t", "2001");
        let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "c", "2001");
        pump(secs(0), &mut blades);
        blades[s].source.host(secs(1), &dir, "c", "2001");
        pump(secs(1), &mut blades);
        let ev = blades[s].events();
        assert_eq!(ev.len(), 2);
        assert_eq!(granted(&ev[0]), granted(&ev[1]));
        assert_eq!(state(&blades[t].loc, "2001"), hosted_by("s"));
        assert_eq!(blades[s].source.len(), 1);
        assert_eq!(blades[s].source.end("c"), 1);
        pump(secs(2), &mut blades);
        assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
    }

    #[test]
    fn a_conference_hosts_participants_one_by_one() {
        let mut blades = cluster(&["s", "t"]);
        login(&mut blades, "t", "2001");
        login(&mut blades, "t", "2002");
        let (s, t) = (idx(&blades, "s"), idx(&blades, "t"));
        let dir = blades[s].dir.clone();
        blades[s].source.host(secs(0), &dir, "conf", "2001");
        blades[s].source.host(secs(0), &dir, "conf", "2002");
        pump(secs(0), &mut blades);
        assert_eq!(blades[s].source.len(), 2);
        // One participant leaves, then the conference ends.
        assert!(blades[s].source.release("conf", "2001"));
        assert!(!blades[s].source.release("conf", "2001"));
        pump(secs(1), &mut blades);
        assert_eq!(state(&blades[t].loc, "2001"), AgentState::Ready);
        assert_eq!(state(&blades[t].loc, "2002"), hosted_by("s"));
        assert_eq!(blades[s].source.end("conf"), 1);
        pump(secs(1), &mut blades);
        assert_eq!(state(&blades[t].loc, "2002"), AgentState::Ready);
    }
}
