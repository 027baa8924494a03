//! The hosting blade's side: find the target, host, renew, release.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use super::{DEFAULT_REQUEST_TIMEOUT, Directory, REDIRECT_NOT_HOSTED, same_blade};
use crate::cluster::codec::{LoginInfo, Message, Refusal, Token};

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
    /// target went down. The session should end the call. Not raised for
    /// a hosting whose session ended already ([`Source::end_after`]).
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
    /// The session ended, but what ended it (its BYE) may not have passed
    /// the target yet: the hosting is released at this time at the latest,
    /// or before by [`Source::end_held`] ([`Source::end_after`]).
    pub ending: Option<Duration>,
    /// The wake-up this hosting holds in the deadline index.
    wake: Duration,
    serial: u64,
}

impl Hosting {
    /// When this hosting next needs the timer: a renewal, the lease's
    /// end, or the end of its wait for its session's BYE.
    fn next_wake(&self) -> Duration {
        let wake = self.next_renew.min(self.lease_until);
        self.ending.map_or(wake, |at| wake.min(at))
    }
}

/// (Call-ID, extension): one hosted agent of one session.
type Key = (String, String);

/// What a request to an agent's blade asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// Host a called agent.
    Host,
    /// Host a newcomer: the agent sent the INVITE (a Join or Replaces)
    /// and may be in a call on its blade, as a transferee or a
    /// supervisor is.
    Newcomer,
    /// Leave to relay an out-of-dialog request ([`Source::relay`]).
    Relay,
}

#[derive(Debug)]
enum Pending {
    /// A host request (or, for [`Ask::Relay`], a relay request) to `peer`.
    Host {
        peer: String,
        key: Key,
        /// The peer came from the directory: a 404/480 means the entry
        /// was stale, so ask the other peers.
        from_directory: bool,
        sent_at: Duration,
        ask: Ask,
    },
    /// A Locate sent to every peer in `waiting` under one request id,
    /// before a host (or, for [`Ask::Relay`], a relay) request.
    Locate {
        key: Key,
        waiting: BTreeSet<String>,
        /// A peer went away before answering: a miss everywhere else is
        /// then 503, not 480 (that peer may have had the agent).
        unanswered: bool,
        ask: Ask,
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
    /// How many of `hostings` hold each agent: whether this blade hosts an
    /// agent is one lookup ([`Source::hosts`]).
    hosted: HashMap<String, u32>,
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
            hosted: HashMap::new(),
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
        self.start(now, directory, call_id, extension, Ask::Host);
    }

    /// [`Source::host`] for a newcomer to a session, the agent whose own
    /// INVITE (a Join or Replaces, RFC 3911 / 3891) is `call_id`: its
    /// blade hands it over even while it is in a call there.
    pub fn host_newcomer(
        &mut self,
        now: Duration,
        directory: &Directory,
        call_id: &str,
        extension: &str,
    ) {
        self.start(now, directory, call_id, extension, Ask::Newcomer);
    }

    /// Asks the blade of `extension` for leave to relay the out-of-dialog
    /// request `call_id` (not a call: no hosting), found the same way as
    /// for [`Source::host`]. The outcome comes as a
    /// [`SourceEvent::Relayed`] or [`SourceEvent::Refused`].
    pub fn relay(&mut self, now: Duration, directory: &Directory, call_id: &str, extension: &str) {
        self.start(now, directory, call_id, extension, Ask::Relay);
    }

    fn start(
        &mut self,
        now: Duration,
        directory: &Directory,
        call_id: &str,
        extension: &str,
        ask: Ask,
    ) {
        let key = (call_id.to_owned(), extension.to_owned());
        match directory.lookup(extension) {
            Some(peer) => {
                let peer = peer.to_owned();
                self.send_host(now, peer, key, true, ask);
            }
            None => self.locate(now, directory, key, Vec::new(), ask),
        }
    }

    fn send_host(&mut self, now: Duration, peer: String, key: Key, from_directory: bool, ask: Ask) {
        let request_id = self.request_id();
        let msg = if ask == Ask::Relay {
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
                newcomer: ask == Ask::Newcomer,
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
                ask,
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
        ask: Ask,
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
                ask,
            },
        );
    }

    /// Handles a reply from `from` to one of this source's requests, a
    /// redirect, or a confirmation (answered at once: see
    /// [`Source::still_holds`]); returns false (and changes nothing) for
    /// other messages. Answers from the wrong peer or to unknown requests
    /// are ignored, except a grant nobody waits for any more, which is
    /// released at once so the agent is not stranded until its lease
    /// lapses.
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
            Message::Confirm {
                request_id,
                grant: _,
                token,
                extension,
                call_id,
            } => {
                let held = self.still_holds(from, &call_id, &extension, &token);
                self.transmits
                    .push_back((from.to_owned(), Message::Confirmed { request_id, held }));
            }
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
            ask,
            ..
        }) = self.take_pending(request_id)
        else {
            return;
        };
        match epoch {
            Some(epoch) => {
                directory.learn(&peer, &key.1, epoch);
                self.send_host(now, peer, key, false, ask);
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
            |p| matches!(p, Pending::Host { peer, ask, .. } if *ask != Ask::Relay && same_blade(peer, from)),
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
            ending: None,
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
        } else {
            *self.hosted.entry(key.1.clone()).or_default() += 1;
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
            |p| matches!(p, Pending::Host { peer, ask: Ask::Relay, .. } if same_blade(peer, from)),
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
            ask,
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
            self.locate(now, directory, key, vec![peer], ask);
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
                let wake = h.next_wake();
                if wake != h.wake {
                    self.wakes.remove(&(h.wake, h.serial));
                    h.wake = wake;
                    self.wakes.insert((wake, h.serial), key);
                }
            }
            None => {
                if let Some(h) = self.drop_hosting(&key) {
                    self.lost(key, h);
                }
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

    /// `h`, the hosting `key` just dropped, ended without its session
    /// asking: the session learns it, unless it ended already (the
    /// hosting only waited for its BYE, [`Source::end_after`]).
    fn lost(&mut self, key: Key, h: Hosting) {
        if h.ending.is_some() {
            return;
        }
        self.events.push_back(SourceEvent::Lost {
            call_id: key.0,
            extension: key.1,
            peer: h.peer,
        });
    }

    fn drop_hosting(&mut self, key: &Key) -> Option<Hosting> {
        let h = self.hostings.remove(key)?;
        self.wakes.remove(&(h.wake, h.serial));
        if let Some(n) = self.hosted.get_mut(&key.1) {
            *n -= 1;
            if *n == 0 {
                self.hosted.remove(&key.1);
            }
        }
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

    /// The session `call_id` ended with a BYE that is on its way to the
    /// target blade, through which its hosted agents' phones are reached
    /// (SPEC §2 step 7). Its unanswered host requests are given up as by
    /// [`Source::end`], but its hostings stay held, and renewed, until the
    /// BYE has passed the target: [`Source::end_held`] releases them when
    /// the BYE's final response comes back (or its transaction ends any
    /// other way), and they are released at `until` if that never comes.
    /// Meanwhile the agent is still this blade's ([`Source::hosts`]), as
    /// it is still hosted on the target: an unhost that overtook the BYE
    /// would let a new call ring a phone that is still in this one.
    /// Returns how many hostings wait so (none: nothing to release later).
    pub fn end_after(&mut self, call_id: &str, until: Duration) -> usize {
        self.cancel_pending(|k| k.0 == call_id);
        let mut held = 0;
        for (key, h) in self
            .hostings
            .range_mut((call_id.to_owned(), String::new())..)
            .take_while(|((c, _), _)| c == call_id)
        {
            held += 1;
            h.ending = Some(h.ending.map_or(until, |at| at.min(until)));
            let wake = h.next_wake();
            if wake != h.wake {
                self.wakes.remove(&(h.wake, h.serial));
                h.wake = wake;
                self.wakes.insert((wake, h.serial), key.clone());
            }
        }
        held
    }

    /// Releases the hostings of the session `call_id` that wait for its
    /// BYE ([`Source::end_after`]); a hosting a later session of the same
    /// Call-ID holds is left alone. Returns how many ended; calling it
    /// again is harmless.
    pub fn end_held(&mut self, call_id: &str) -> usize {
        let keys: Vec<Key> = self
            .hostings
            .range((call_id.to_owned(), String::new())..)
            .take_while(|((c, _), _)| c == call_id)
            .filter(|(_, h)| h.ending.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            self.release_key(key);
        }
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
            if h.ending.is_some_and(|at| now >= at) {
                // Its session's BYE got no answer in time.
                self.release_key(&key);
                continue;
            }
            if now >= h.lease_until {
                let Some(h) = self.drop_hosting(&key) else {
                    continue;
                };
                self.send_unhost(h.peer.clone(), &key.1, &key.0, h.token);
                self.lost(key, h);
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
                h.wake = h.next_wake();
                self.wakes.insert((h.wake, h.serial), key);
            }
        }
    }

    /// The earliest timer, for the caller's sleep.
    pub fn next_deadline(&self) -> Option<Duration> {
        let pending = self.pending_deadlines.first().map(|(at, _)| *at);
        let wake = self.wakes.keys().next().map(|(at, _)| *at);
        pending.into_iter().chain(wake).min()
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
                self.lost(key, h);
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

    /// The answer to `from`'s [`Message::Confirm`], asked after its link
    /// to this blade came back: whether this blade still counts on the
    /// grant of `extension` for the session `call_id` with `token`. It
    /// does while it holds the grant ([`Source::holds`], also while the
    /// hosting only waits for its session's BYE to pass the target,
    /// [`Source::end_after`]), and while a host request for that agent
    /// and session to `from` is unanswered: the grant may be that
    /// request's, its answer still on its way, and must not be released
    /// under it. Otherwise the target may take the agent back: this
    /// blade dropped the hosting (it saw the link drop, and its unhost
    /// was lost with the link) or never had it.
    pub fn still_holds(&self, from: &str, call_id: &str, extension: &str, token: &Token) -> bool {
        self.holds(from, call_id, extension, token)
            || self.pending.values().any(|(_, p)| {
                matches!(p, Pending::Host { peer, key, ask, .. }
                    if *ask != Ask::Relay
                        && same_blade(peer, from)
                        && key.0 == call_id
                        && key.1 == extension)
            })
    }

    /// Whether this blade holds a grant for `extension` in any session
    /// (a call, a join leg, or a call riding on another's grant): the
    /// agent is in a session that this blade, its host, decides on
    /// (SPEC §2 step 6), so a new call to it is busy without asking its
    /// blade. One hash lookup.
    pub fn hosts(&self, extension: &str) -> bool {
        self.hosted.contains_key(extension)
    }

    /// The sessions in which this blade holds a grant for `extension`. A
    /// scan of the grants: for the rare caller that [`Source::hosts`]
    /// answered yes.
    pub fn sessions_hosting<'a>(&'a self, extension: &'a str) -> impl Iterator<Item = &'a str> {
        self.hostings
            .keys()
            .filter(move |(_, e)| e == extension)
            .map(|(call_id, _)| call_id.as_str())
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
