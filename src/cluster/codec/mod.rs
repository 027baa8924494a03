//! The inter-blade wire format: the messages blades exchange over the
//! cluster link (SPEC §2 steps 3–8, §8 "Inter-blade link" and "Directory"),
//! and their versioned binary codec.
//!
//! A frame is one message:
//!
//! ```text
//! magic 0xB5 | version 1 | type u8 | fields…
//! ```
//!
//! Integers are big-endian, strings are a `u16` byte length and UTF-8
//! bytes, lists are a count (`u32` for directory entries, `u16` for a
//! configuration) and their items, an optional value is a `0`/`1` tag and
//! the value. A decoded frame must be consumed exactly: there is one
//! encoding per message, so `encode(decode(b)) == b` whenever decoding
//! succeeds (the fuzz target checks it).
//!
//! [`Message::decode`] never panics and never allocates more than the
//! input can fill: a count is checked against the bytes left before any
//! list is reserved. [`Message::encode`] is infallible; it clamps what no
//! frame may carry (a string over 65 535 bytes, more than
//! [`MAX_ENTRIES`] entries, more than [`MAX_CONFIG`] configuration pairs),
//! which the hosting layer never produces.
//!
//! The codec knows nothing of the transport. A QUIC driver may carry one
//! frame per stream (the stream's end delimits it) or many on one stream
//! with [`Message::encode_framed`] and [`split_frame`] (a `u32` length
//! prefix).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::{BufMut, BytesMut};

use crate::config::AgentKind;
use crate::registrar::location::{AgentRecord, AgentState};
use crate::sip::{Peer, Transport};

/// First byte of every frame: tells a cluster frame from stray bytes.
pub const MAGIC: u8 = 0xB5;
/// The format version this build writes and reads.
pub const VERSION: u8 = 1;
/// The largest frame [`split_frame`] accepts (a length prefix beyond it is
/// refused before anything is buffered).
pub const MAX_FRAME: usize = 16 << 20;
/// The most directory entries one frame carries.
pub const MAX_ENTRIES: usize = 1 << 20;
/// The most configuration pairs one [`LoginInfo`] carries.
pub const MAX_CONFIG: usize = 64;
/// The longest string a frame carries, in bytes.
pub const MAX_STR: usize = u16::MAX as usize;

/// The smallest encoding of a [`DirectoryEntry`]: an empty extension and
/// the epoch. Bounds a count by the bytes that remain.
const MIN_ENTRY: usize = 2 + 8;
/// The smallest encoding of a configuration pair: two empty strings.
const MIN_PAIR: usize = 2 + 2;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame ends inside a field (a truncated frame).
    #[error("frame ends unexpectedly")]
    UnexpectedEnd,
    /// The first byte is not [`MAGIC`]: not a cluster frame.
    #[error("not a cluster frame (first byte {0:#04x})")]
    BadMagic(u8),
    /// A version this build does not speak.
    #[error("unknown cluster protocol version {0} (this blade speaks {VERSION})")]
    UnknownVersion(u8),
    /// A message type this version does not define.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A string field is not UTF-8.
    #[error("field {0} is not UTF-8")]
    BadUtf8(&'static str),
    /// A count or length beyond the format's limits.
    #[error("field {0} is too long")]
    TooLong(&'static str),
    /// A field holds a value the format does not define.
    #[error("field {0} is invalid")]
    Invalid(&'static str),
    /// Bytes follow the message.
    #[error("{0} bytes after the message")]
    TrailingBytes(usize),
}

/// An unguessable hosting token: names one grant, bound by the target to
/// the source blade, the Call-ID and the agent.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub [u8; 16]);

impl Token {
    /// Whether `other` is this token, compared in constant time (a peer
    /// must not learn a token byte by byte from how long a refusal takes).
    pub fn matches(&self, other: &Token) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]))
    }

    /// The token as 32 lowercase hex digits (how the INVITE carries it).
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }

    /// Parses 32 hex digits (either case); `None` otherwise.
    pub fn from_hex(text: &[u8]) -> Option<Token> {
        if text.len() != 32 {
            return None;
        }
        let mut raw = [0u8; 16];
        for (byte, pair) in raw.iter_mut().zip(text.chunks_exact(2)) {
            let hi = hex_val(pair[0])?;
            let lo = hex_val(pair[1])?;
            *byte = hi << 4 | lo;
        }
        Some(Token(raw))
    }
}

impl std::fmt::Debug for Token {
    // A token is a bearer credential for one INVITE: logs get a prefix,
    // enough to correlate, not to replay.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({}…)", &self.to_hex()[..8])
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// One agent in a blade's directory announcement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DirectoryEntry {
    /// The agent's extension.
    pub extension: String,
    /// The announcing blade's number for this login: a higher epoch is a
    /// later login, so a withdrawal or announcement that arrives out of
    /// order is recognised as stale. A login's time in microseconds since
    /// 1970 (never below the blade's last epoch), so that two blades'
    /// logins of one agent compare too
    /// ([`crate::cluster::hosting::Target::later_than_peers`]); earlier
    /// builds count from their start time in milliseconds.
    pub epoch: u64,
}

/// Why a target will not hand an agent over (SPEC §2 step 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No such agent.
    Unknown,
    /// The agent is provisioned but not registered here.
    NotLoggedIn,
    /// The agent is in a call.
    Busy,
    /// Another session already hosts the agent.
    AlreadyHosted,
    /// The target cannot take the request now (also: no answer in time).
    Overloaded,
}

impl Refusal {
    /// The SIP status the source answers the caller with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Unknown => 404,
            Refusal::NotLoggedIn => 480,
            Refusal::Busy | Refusal::AlreadyHosted => 486,
            Refusal::Overloaded => 503,
        }
    }

    /// A short reason for logs and the ladder.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown",
            Refusal::NotLoggedIn => "not logged in",
            Refusal::Busy => "busy",
            Refusal::AlreadyHosted => "already hosted",
            Refusal::Overloaded => "overloaded",
        }
    }

    fn code(self) -> u8 {
        match self {
            Refusal::Unknown => 1,
            Refusal::NotLoggedIn => 2,
            Refusal::Busy => 3,
            Refusal::AlreadyHosted => 4,
            Refusal::Overloaded => 5,
        }
    }

    fn from_code(code: u8) -> Option<Refusal> {
        Some(match code {
            1 => Refusal::Unknown,
            2 => Refusal::NotLoggedIn,
            3 => Refusal::Busy,
            4 => Refusal::AlreadyHosted,
            5 => Refusal::Overloaded,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An agent's login information as the target hands it over (SPEC §1):
/// everything but the credential, which never leaves the blade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginInfo {
    /// Badge number.
    pub badge: String,
    /// Extension (telephone number).
    pub extension: String,
    /// Agent or supervisor.
    pub kind: AgentKind,
    /// The Contact URI as registered.
    pub contact: String,
    /// The registered IP and port requests for the agent go to.
    pub addr: SocketAddr,
    /// The registration's transport.
    pub transport: Transport,
    /// Seconds left on the registration when the information was taken.
    pub expires_secs: u32,
    /// The agent's state on the target (`Hosted` by the source once granted).
    pub state: AgentState,
    /// Per-agent configuration, as key/value pairs (at most [`MAX_CONFIG`]).
    pub config: Vec<(String, String)>,
}

impl LoginInfo {
    /// The login information of `record` at `now`; `None` while the agent
    /// is logged out (there is no registration to hand over).
    pub fn from_record(record: &AgentRecord, now: Duration) -> Option<LoginInfo> {
        let binding = record.binding.as_ref()?;
        let left = binding.expires_at.saturating_sub(now).as_secs();
        Some(LoginInfo {
            badge: record.badge().to_owned(),
            extension: record.extension().to_owned(),
            kind: record.kind(),
            contact: binding.uri.clone(),
            addr: binding.peer.addr,
            transport: binding.peer.transport,
            expires_secs: u32::try_from(left).unwrap_or(u32::MAX),
            state: record.state.clone(),
            // Provisioning holds nothing beyond badge, extension, kind and
            // the credential yet; the list carries future per-agent settings
            // without a format change.
            config: Vec::new(),
        })
    }

    /// Where the agent's terminal is reached, by address (a stream
    /// connection is the target's own and does not travel).
    pub fn peer(&self) -> Peer {
        Peer::new(self.addr, self.transport)
    }
}

/// A message on the cluster link.
///
/// Three families: directory notices (no reply), requests to the blade
/// that owns an agent (each answered once, echoing its `request_id`), and
/// the requests a target sends the hosting blade about a grant (a
/// redirect, a confirmation); and the [`Message::Hello`] that opens each
/// connection. Which blade sent a frame is the link's
/// authenticated peer (the certificate's blade id), never a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Agents that logged in on the sender (or logged in again).
    Announce {
        /// The agents and their login epochs.
        entries: Vec<DirectoryEntry>,
    },
    /// Agents that logged out of the sender or whose registration lapsed.
    Withdraw {
        /// The agents and the epochs of the logins that ended.
        entries: Vec<DirectoryEntry>,
    },
    /// Every agent logged in on the sender: replaces all the receiver knew
    /// of the sender. Sent when a link (re)connects.
    Resync {
        /// The sender's whole list.
        entries: Vec<DirectoryEntry>,
    },
    /// Is this agent logged in on you? (A directory miss or a stale entry.)
    Locate {
        /// Echoed by the answer.
        request_id: u64,
        /// The agent.
        extension: String,
    },
    /// The answer to [`Message::Locate`].
    Located {
        /// The request's id.
        request_id: u64,
        /// The login's epoch when the agent is logged in on the sender.
        epoch: Option<u64>,
    },
    /// Host request and information acquisition in one (SPEC §2 step 3).
    HostRequest {
        /// Echoed by the answer.
        request_id: u64,
        /// The agent to host.
        extension: String,
        /// The session's Call-ID, which the grant is bound to.
        call_id: String,
        /// The lease the source asks for; the target may shorten it.
        lease_secs: u32,
        /// The agent is a newcomer to the session (its own Join or
        /// Replaces INVITE is `call_id`): handed over even while in a
        /// call. Written as its own type, [`ty::HOST_NEWCOMER`].
        newcomer: bool,
    },
    /// The agent is handed over.
    HostGranted {
        /// The request's id.
        request_id: u64,
        /// The request's Call-ID, so a source that gave up on the request
        /// can still release the grant.
        call_id: String,
        /// The agent's full login information.
        info: LoginInfo,
        /// Carried by the INVITE the source sends the target.
        token: Token,
        /// The lease granted.
        lease_secs: u32,
    },
    /// The agent is not handed over.
    HostRefused {
        /// The request's id.
        request_id: u64,
        /// Why.
        reason: Refusal,
    },
    /// Extends a grant's lease.
    Renew {
        /// Echoed by the answer.
        request_id: u64,
        /// The hosted agent (lets a multi-core target route by owner).
        extension: String,
        /// The session's Call-ID.
        call_id: String,
        /// The grant's token.
        token: Token,
    },
    /// The lease runs again from the target's receipt of the renewal.
    RenewAck {
        /// The request's id.
        request_id: u64,
        /// The lease, from now.
        lease_secs: u32,
    },
    /// No such live grant: the lease lapsed or the agent was taken back.
    RenewRefused {
        /// The request's id.
        request_id: u64,
    },
    /// The session ended: give the agent back (SPEC §2 step 7).
    Unhost {
        /// Echoed by the answer.
        request_id: u64,
        /// The hosted agent.
        extension: String,
        /// The session's Call-ID.
        call_id: String,
        /// The grant's token.
        token: Token,
    },
    /// The grant is gone (also when it was gone already).
    UnhostAck {
        /// The request's id.
        request_id: u64,
    },
    /// A new request for a hosted agent reached the target, which hands
    /// the decision to the hosting blade (SPEC §2 step 6).
    Redirect {
        /// Echoed by the answer.
        request_id: u64,
        /// The `request_id` of the host request that won the grant, so a
        /// multi-core source routes this to the core hosting the session.
        grant: u64,
        /// The grant's token.
        token: Token,
        /// The hosted agent.
        extension: String,
        /// The new request's Call-ID.
        call_id: String,
        /// The new request's caller (From URI).
        caller: String,
    },
    /// The hosting blade's decision: a 3xx asks the target to proxy the
    /// request to the hosting blade; 4xx–6xx is the final answer to send.
    RedirectAnswer {
        /// The request's id.
        request_id: u64,
        /// A SIP status, 300 to 699.
        status: u16,
    },
    /// Asks the agent's blade for leave to relay one out-of-dialog request
    /// that is not a call (MESSAGE, SUBSCRIBE, REFER, ...) to the agent:
    /// no hosting, the agent's state is unchanged.
    RelayRequest {
        /// Echoed by the answer.
        request_id: u64,
        /// The agent.
        extension: String,
        /// The request's Call-ID.
        call_id: String,
    },
    /// Leave to relay: the request must carry `token` (refusals are
    /// [`Message::HostRefused`]).
    RelayGranted {
        /// The request's id.
        request_id: u64,
        /// The token, bound to the requesting blade, the agent and the
        /// Call-ID.
        token: Token,
    },
    /// Does the hosting blade still hold this grant? A target asks it of
    /// every grant its source was given over an earlier connection when
    /// that source's link comes back over a new one, same run: the source
    /// may have seen the link drop and ended those sessions, and their
    /// unhosts were lost with the link.
    Confirm {
        /// Echoed by the answer.
        request_id: u64,
        /// The `request_id` of the host request that won the grant, so a
        /// multi-core source routes this to the core holding the hosting.
        grant: u64,
        /// The grant's token.
        token: Token,
        /// The hosted agent.
        extension: String,
        /// The session's Call-ID.
        call_id: String,
    },
    /// The answer to [`Message::Confirm`].
    Confirmed {
        /// The request's id.
        request_id: u64,
        /// The source holds the grant, waits for it (its host request is
        /// unanswered), or holds it until its session's BYE has passed:
        /// the target keeps it. `false`: the target takes the agent back.
        held: bool,
    },
    /// The first message on each connection, one-way: which run of the
    /// sender this is. A peer that sees a new instance id from a blade
    /// knows the blade restarted, and that every grant its previous run
    /// held is dead (SPEC §2 step 8, without waiting for the leases).
    Hello {
        /// Drawn at random when the blade starts; the same on every
        /// connection of that run.
        instance: u64,
    },
}

/// The family a message belongs to: tells a driver where to hand it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A directory notice (Announce, Withdraw, Resync): no answer.
    Notice,
    /// A request to the blade owning an agent (Locate, HostRequest, Renew,
    /// Unhost): answered once.
    Request,
    /// The answer to a request (Located, HostGranted, HostRefused,
    /// RenewAck, RenewRefused, UnhostAck).
    Reply,
    /// A target's request to the hosting blade about one of its grants
    /// (Redirect, Confirm): one-way, answered by a one-way message of
    /// class [`Class::RedirectAnswer`].
    Redirect,
    /// The answer to a redirect or a confirmation (RedirectAnswer,
    /// Confirmed).
    RedirectAnswer,
    /// About the link itself ([`Message::Hello`]): the link's driver reads
    /// it; no hosting state does.
    Link,
}

mod ty {
    pub const ANNOUNCE: u8 = 1;
    pub const WITHDRAW: u8 = 2;
    pub const RESYNC: u8 = 3;
    pub const LOCATE: u8 = 4;
    pub const LOCATED: u8 = 5;
    pub const HOST_REQUEST: u8 = 6;
    pub const HOST_GRANTED: u8 = 7;
    pub const HOST_REFUSED: u8 = 8;
    pub const RENEW: u8 = 9;
    pub const RENEW_ACK: u8 = 10;
    pub const RENEW_REFUSED: u8 = 11;
    pub const UNHOST: u8 = 12;
    pub const UNHOST_ACK: u8 = 13;
    pub const REDIRECT: u8 = 14;
    pub const REDIRECT_ANSWER: u8 = 15;
    // Added within version 1: a blade that predates them refuses them as
    // unknown types and leaves the request unanswered, which its asker
    // times out as 503.
    pub const RELAY_REQUEST: u8 = 16;
    pub const RELAY_GRANTED: u8 = 17;
    // A blade that predates it logs it as undecodable and goes on: the
    // link stays up, and only the early release on a restart is lost.
    pub const HELLO: u8 = 18;
    // A HostRequest for a newcomer. A blade that predates it leaves it
    // unanswered (503), as for the relay request.
    pub const HOST_NEWCOMER: u8 = 19;
    // A target's question after a same-run reconnection, and its answer.
    // A blade that predates them logs the Confirm as undecodable and does
    // not answer: the asker gives up and keeps the grant (its lease still
    // ends it), as before they existed.
    pub const CONFIRM: u8 = 20;
    pub const CONFIRMED: u8 = 21;
}

impl Message {
    /// The message's name, for logs and the ladder.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Announce { .. } => "Announce",
            Message::Withdraw { .. } => "Withdraw",
            Message::Resync { .. } => "Resync",
            Message::Locate { .. } => "Locate",
            Message::Located { .. } => "Located",
            Message::HostRequest { .. } => "HostRequest",
            Message::HostGranted { .. } => "HostGranted",
            Message::HostRefused { .. } => "HostRefused",
            Message::Renew { .. } => "Renew",
            Message::RenewAck { .. } => "RenewAck",
            Message::RenewRefused { .. } => "RenewRefused",
            Message::Unhost { .. } => "Unhost",
            Message::UnhostAck { .. } => "UnhostAck",
            Message::Redirect { .. } => "Redirect",
            Message::RedirectAnswer { .. } => "RedirectAnswer",
            Message::RelayRequest { .. } => "RelayRequest",
            Message::RelayGranted { .. } => "RelayGranted",
            Message::Confirm { .. } => "Confirm",
            Message::Confirmed { .. } => "Confirmed",
            Message::Hello { .. } => "Hello",
        }
    }

    /// The message's family.
    pub fn class(&self) -> Class {
        match self {
            Message::Announce { .. } | Message::Withdraw { .. } | Message::Resync { .. } => {
                Class::Notice
            }
            Message::Locate { .. }
            | Message::HostRequest { .. }
            | Message::Renew { .. }
            | Message::Unhost { .. }
            | Message::RelayRequest { .. } => Class::Request,
            Message::Located { .. }
            | Message::HostGranted { .. }
            | Message::HostRefused { .. }
            | Message::RenewAck { .. }
            | Message::RenewRefused { .. }
            | Message::UnhostAck { .. }
            | Message::RelayGranted { .. } => Class::Reply,
            Message::Redirect { .. } | Message::Confirm { .. } => Class::Redirect,
            Message::RedirectAnswer { .. } | Message::Confirmed { .. } => Class::RedirectAnswer,
            Message::Hello { .. } => Class::Link,
        }
    }

    /// The exchange the message belongs to; `None` for notices and
    /// [`Message::Hello`].
    pub fn request_id(&self) -> Option<u64> {
        match self {
            Message::Announce { .. }
            | Message::Withdraw { .. }
            | Message::Resync { .. }
            | Message::Hello { .. } => None,
            Message::Locate { request_id, .. }
            | Message::Located { request_id, .. }
            | Message::HostRequest { request_id, .. }
            | Message::HostGranted { request_id, .. }
            | Message::HostRefused { request_id, .. }
            | Message::Renew { request_id, .. }
            | Message::RenewAck { request_id, .. }
            | Message::RenewRefused { request_id }
            | Message::Unhost { request_id, .. }
            | Message::UnhostAck { request_id }
            | Message::Redirect { request_id, .. }
            | Message::RedirectAnswer { request_id, .. }
            | Message::RelayRequest { request_id, .. }
            | Message::RelayGranted { request_id, .. }
            | Message::Confirm { request_id, .. }
            | Message::Confirmed { request_id, .. } => Some(*request_id),
        }
    }

    /// The agent a request is about, for routing it to the core that owns
    /// the agent; `None` for other messages.
    pub fn extension(&self) -> Option<&str> {
        match self {
            Message::Locate { extension, .. }
            | Message::HostRequest { extension, .. }
            | Message::Renew { extension, .. }
            | Message::Unhost { extension, .. }
            | Message::Redirect { extension, .. }
            | Message::RelayRequest { extension, .. }
            | Message::Confirm { extension, .. } => Some(extension),
            _ => None,
        }
    }

    /// Appends the message's frame to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(MAGIC);
        out.put_u8(VERSION);
        match self {
            Message::Announce { entries } => {
                out.put_u8(ty::ANNOUNCE);
                put_entries(out, entries);
            }
            Message::Withdraw { entries } => {
                out.put_u8(ty::WITHDRAW);
                put_entries(out, entries);
            }
            Message::Resync { entries } => {
                out.put_u8(ty::RESYNC);
                put_entries(out, entries);
            }
            Message::Locate {
                request_id,
                extension,
            } => {
                out.put_u8(ty::LOCATE);
                out.put_u64(*request_id);
                put_str(out, extension);
            }
            Message::Located { request_id, epoch } => {
                out.put_u8(ty::LOCATED);
                out.put_u64(*request_id);
                match epoch {
                    None => out.put_u8(0),
                    Some(e) => {
                        out.put_u8(1);
                        out.put_u64(*e);
                    }
                }
            }
            Message::HostRequest {
                request_id,
                extension,
                call_id,
                lease_secs,
                newcomer,
            } => {
                out.put_u8(if *newcomer {
                    ty::HOST_NEWCOMER
                } else {
                    ty::HOST_REQUEST
                });
                out.put_u64(*request_id);
                put_str(out, extension);
                put_str(out, call_id);
                out.put_u32(*lease_secs);
            }
            Message::HostGranted {
                request_id,
                call_id,
                info,
                token,
                lease_secs,
            } => {
                out.put_u8(ty::HOST_GRANTED);
                out.put_u64(*request_id);
                put_str(out, call_id);
                put_info(out, info);
                out.put_slice(&token.0);
                out.put_u32(*lease_secs);
            }
            Message::HostRefused { request_id, reason } => {
                out.put_u8(ty::HOST_REFUSED);
                out.put_u64(*request_id);
                out.put_u8(reason.code());
            }
            Message::Renew {
                request_id,
                extension,
                call_id,
                token,
            } => {
                out.put_u8(ty::RENEW);
                out.put_u64(*request_id);
                put_str(out, extension);
                put_str(out, call_id);
                out.put_slice(&token.0);
            }
            Message::RenewAck {
                request_id,
                lease_secs,
            } => {
                out.put_u8(ty::RENEW_ACK);
                out.put_u64(*request_id);
                out.put_u32(*lease_secs);
            }
            Message::RenewRefused { request_id } => {
                out.put_u8(ty::RENEW_REFUSED);
                out.put_u64(*request_id);
            }
            Message::Unhost {
                request_id,
                extension,
                call_id,
                token,
            } => {
                out.put_u8(ty::UNHOST);
                out.put_u64(*request_id);
                put_str(out, extension);
                put_str(out, call_id);
                out.put_slice(&token.0);
            }
            Message::UnhostAck { request_id } => {
                out.put_u8(ty::UNHOST_ACK);
                out.put_u64(*request_id);
            }
            Message::Redirect {
                request_id,
                grant,
                token,
                extension,
                call_id,
                caller,
            } => {
                out.put_u8(ty::REDIRECT);
                out.put_u64(*request_id);
                out.put_u64(*grant);
                out.put_slice(&token.0);
                put_str(out, extension);
                put_str(out, call_id);
                put_str(out, caller);
            }
            Message::RedirectAnswer { request_id, status } => {
                out.put_u8(ty::REDIRECT_ANSWER);
                out.put_u64(*request_id);
                out.put_u16(*status);
            }
            Message::RelayRequest {
                request_id,
                extension,
                call_id,
            } => {
                out.put_u8(ty::RELAY_REQUEST);
                out.put_u64(*request_id);
                put_str(out, extension);
                put_str(out, call_id);
            }
            Message::RelayGranted { request_id, token } => {
                out.put_u8(ty::RELAY_GRANTED);
                out.put_u64(*request_id);
                out.put_slice(&token.0);
            }
            Message::Confirm {
                request_id,
                grant,
                token,
                extension,
                call_id,
            } => {
                out.put_u8(ty::CONFIRM);
                out.put_u64(*request_id);
                out.put_u64(*grant);
                out.put_slice(&token.0);
                put_str(out, extension);
                put_str(out, call_id);
            }
            Message::Confirmed { request_id, held } => {
                out.put_u8(ty::CONFIRMED);
                out.put_u64(*request_id);
                out.put_u8(u8::from(*held));
            }
            Message::Hello { instance } => {
                out.put_u8(ty::HELLO);
                out.put_u64(*instance);
            }
        }
    }

    /// Appends the frame behind a `u32` big-endian length, for several
    /// frames on one stream (see [`split_frame`]).
    pub fn encode_framed(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        self.encode(out);
        let len = out.len() - start - 4;
        // A frame over u32::MAX cannot be built from clamped fields; the
        // receiver refuses anything over MAX_FRAME anyway.
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Decodes one whole frame.
    pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let magic = r.u8()?;
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let msg = match r.u8()? {
            ty::ANNOUNCE => Message::Announce {
                entries: r.entries()?,
            },
            ty::WITHDRAW => Message::Withdraw {
                entries: r.entries()?,
            },
            ty::RESYNC => Message::Resync {
                entries: r.entries()?,
            },
            ty::LOCATE => Message::Locate {
                request_id: r.u64()?,
                extension: r.str("extension")?,
            },
            ty::LOCATED => Message::Located {
                request_id: r.u64()?,
                epoch: match r.u8()? {
                    0 => None,
                    1 => Some(r.u64()?),
                    _ => return Err(DecodeError::Invalid("epoch")),
                },
            },
            t @ (ty::HOST_REQUEST | ty::HOST_NEWCOMER) => Message::HostRequest {
                request_id: r.u64()?,
                extension: r.str("extension")?,
                call_id: r.str("call_id")?,
                lease_secs: r.u32()?,
                newcomer: t == ty::HOST_NEWCOMER,
            },
            ty::HOST_GRANTED => Message::HostGranted {
                request_id: r.u64()?,
                call_id: r.str("call_id")?,
                info: r.info()?,
                token: r.token()?,
                lease_secs: r.u32()?,
            },
            ty::HOST_REFUSED => Message::HostRefused {
                request_id: r.u64()?,
                reason: Refusal::from_code(r.u8()?).ok_or(DecodeError::Invalid("reason"))?,
            },
            ty::RENEW => Message::Renew {
                request_id: r.u64()?,
                extension: r.str("extension")?,
                call_id: r.str("call_id")?,
                token: r.token()?,
            },
            ty::RENEW_ACK => Message::RenewAck {
                request_id: r.u64()?,
                lease_secs: r.u32()?,
            },
            ty::RENEW_REFUSED => Message::RenewRefused {
                request_id: r.u64()?,
            },
            ty::UNHOST => Message::Unhost {
                request_id: r.u64()?,
                extension: r.str("extension")?,
                call_id: r.str("call_id")?,
                token: r.token()?,
            },
            ty::UNHOST_ACK => Message::UnhostAck {
                request_id: r.u64()?,
            },
            ty::REDIRECT => Message::Redirect {
                request_id: r.u64()?,
                grant: r.u64()?,
                token: r.token()?,
                extension: r.str("extension")?,
                call_id: r.str("call_id")?,
                caller: r.str("caller")?,
            },
            ty::REDIRECT_ANSWER => Message::RedirectAnswer {
                request_id: r.u64()?,
                status: match r.u16()? {
                    s @ 300..=699 => s,
                    _ => return Err(DecodeError::Invalid("status")),
                },
            },
            ty::RELAY_REQUEST => Message::RelayRequest {
                request_id: r.u64()?,
                extension: r.str("extension")?,
                call_id: r.str("call_id")?,
            },
            ty::RELAY_GRANTED => Message::RelayGranted {
                request_id: r.u64()?,
                token: r.token()?,
            },
            ty::CONFIRM => Message::Confirm {
                request_id: r.u64()?,
                grant: r.u64()?,
                token: r.token()?,
                extension: r.str("extension")?,
                call_id: r.str("call_id")?,
            },
            ty::CONFIRMED => Message::Confirmed {
                request_id: r.u64()?,
                held: match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::Invalid("held")),
                },
            },
            ty::HELLO => Message::Hello { instance: r.u64()? },
            other => return Err(DecodeError::UnknownType(other)),
        };
        match r.buf.len() - r.pos {
            0 => Ok(msg),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Cuts the first length-prefixed frame off a stream buffer: `Ok(None)`
/// until the whole frame is there, then the frame (for
/// [`Message::decode`]) and how many bytes it took. A length over
/// [`MAX_FRAME`] is refused at once, so a peer cannot make the reader
/// buffer without bound.
pub fn split_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, DecodeError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let len = usize::try_from(u32::from_be_bytes(*prefix)).unwrap_or(usize::MAX);
    if len > MAX_FRAME {
        return Err(DecodeError::TooLong("frame"));
    }
    Ok(rest.get(..len).map(|frame| (frame, 4 + len)))
}

/// `s` cut to at most `max` bytes on a character boundary.
fn clamp(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_str(out: &mut BytesMut, s: &str) {
    let s = clamp(s, MAX_STR);
    // Clamped to MAX_STR == u16::MAX just above.
    out.put_u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
    out.put_slice(s.as_bytes());
}

fn put_entries(out: &mut BytesMut, entries: &[DirectoryEntry]) {
    let entries = &entries[..entries.len().min(MAX_ENTRIES)];
    out.put_u32(u32::try_from(entries.len()).unwrap_or(u32::MAX));
    for e in entries {
        put_str(out, &e.extension);
        out.put_u64(e.epoch);
    }
}

fn put_addr(out: &mut BytesMut, addr: SocketAddr) {
    // Flow info and scope id are the target's local business.
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.put_u8(4);
            out.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(6);
            out.put_slice(&ip.octets());
        }
    }
    out.put_u16(addr.port());
}

fn put_state(out: &mut BytesMut, state: &AgentState) {
    match state {
        AgentState::LoggedOut => out.put_u8(0),
        AgentState::Ready => out.put_u8(1),
        AgentState::InCall { call_id } => {
            out.put_u8(2);
            put_str(out, call_id);
        }
        AgentState::Hosted { by } => {
            out.put_u8(3);
            put_str(out, by);
        }
    }
}

fn put_info(out: &mut BytesMut, info: &LoginInfo) {
    put_str(out, &info.badge);
    put_str(out, &info.extension);
    out.put_u8(match info.kind {
        AgentKind::Agent => 0,
        AgentKind::Supervisor => 1,
    });
    put_str(out, &info.contact);
    put_addr(out, info.addr);
    out.put_u8(match info.transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
    });
    out.put_u32(info.expires_secs);
    put_state(out, &info.state);
    let config = &info.config[..info.config.len().min(MAX_CONFIG)];
    out.put_u16(u16::try_from(config.len()).unwrap_or(u16::MAX));
    for (k, v) in config {
        put_str(out, k);
        put_str(out, v);
    }
}

/// A cursor over a frame; every read checks the bytes left.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::UnexpectedEnd)?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::UnexpectedEnd)?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn token(&mut self) -> Result<Token, DecodeError> {
        Ok(Token(self.array()?))
    }

    fn str(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadUtf8(field))
    }

    /// Checks a count before anything is reserved: over `max`
    /// is `TooLong`; more items than the bytes left could hold is a
    /// truncated frame.
    fn check_count(
        &self,
        n: usize,
        max: usize,
        min_item: usize,
        field: &'static str,
    ) -> Result<usize, DecodeError> {
        if n > max {
            return Err(DecodeError::TooLong(field));
        }
        if n.saturating_mul(min_item) > self.remaining() {
            return Err(DecodeError::UnexpectedEnd);
        }
        Ok(n)
    }

    fn entries(&mut self) -> Result<Vec<DirectoryEntry>, DecodeError> {
        let n = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        let n = self.check_count(n, MAX_ENTRIES, MIN_ENTRY, "entries")?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(DirectoryEntry {
                extension: self.str("extension")?,
                epoch: self.u64()?,
            });
        }
        Ok(entries)
    }

    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => return Err(DecodeError::Invalid("address family")),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    fn state(&mut self) -> Result<AgentState, DecodeError> {
        Ok(match self.u8()? {
            0 => AgentState::LoggedOut,
            1 => AgentState::Ready,
            2 => AgentState::InCall {
                call_id: self.str("state call_id")?,
            },
            3 => AgentState::Hosted {
                by: self.str("hosted by")?,
            },
            _ => return Err(DecodeError::Invalid("state")),
        })
    }

    fn info(&mut self) -> Result<LoginInfo, DecodeError> {
        let badge = self.str("badge")?;
        let extension = self.str("extension")?;
        let kind = match self.u8()? {
            0 => AgentKind::Agent,
            1 => AgentKind::Supervisor,
            _ => return Err(DecodeError::Invalid("kind")),
        };
        let contact = self.str("contact")?;
        let addr = self.addr()?;
        let transport = match self.u8()? {
            0 => Transport::Udp,
            1 => Transport::Tcp,
            _ => return Err(DecodeError::Invalid("transport")),
        };
        let expires_secs = self.u32()?;
        let state = self.state()?;
        let n = usize::from(self.u16()?);
        let n = self.check_count(n, MAX_CONFIG, MIN_PAIR, "config")?;
        let mut config = Vec::with_capacity(n);
        for _ in 0..n {
            config.push((self.str("config key")?, self.str("config value")?));
        }
        Ok(LoginInfo {
            badge,
            extension,
            kind,
            contact,
            addr,
            transport,
            expires_secs,
            state,
            config,
        })
    }
}

#[cfg(test)]
mod tests;
