//! The hosting protocol (SPEC §2), sans-IO: both sides and the directory.
//!
//! - [`Target`]: the blade that owns an agent. Answers host requests from
//!   its [`Location`](crate::registrar::location::Location) (grant or refuse), marks the agent hosted, checks the
//!   hosting token of the INVITE that follows, renews and ends grants, and
//!   takes agents back when a lease lapses, their source restarted, or
//!   their source, asked after its link came back, no longer holds them.
//!   It also numbers its own agents' logins for the directory
//!   announcements.
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

mod directory;
mod source;
mod target;
#[cfg(test)]
mod tests;

use std::time::Duration;

use hmac::Hmac;
use sha2::Sha256;

pub use directory::Directory;
pub use source::{Hosting, Source, SourceEvent};
pub use target::{Ending, Grant, Granted, RELAY_TTL, Released, Target};

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
