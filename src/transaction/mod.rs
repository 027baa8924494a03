//! Transactions (RFC 3261 §17, with the RFC 6026 Accepted states),
//! sans-IO: each transaction is a state machine that takes messages and
//! the time, writes what to transmit, and names its next deadline. Time is
//! passed in as a `Duration` since an epoch the caller picks.
//!
//! - [`client::ClientTx`]: INVITE (timers A, B, D, M) and non-INVITE (E, F, K).
//! - [`server::ServerTx`]: INVITE (G, H, I, L) and non-INVITE (J).
//! - [`timers::TimerQueue`]: the per-core deadline queue that drives them.

pub mod client;
pub mod server;
pub mod timers;

use std::time::Duration;

use bytes::Bytes;

pub use crate::sip::Peer;

/// The RFC 3261 timer base values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate (500 ms).
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE
    /// responses (4 s).
    pub t2: Duration,
    /// Longest time a message stays in the network (5 s).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    /// 64·T1: the transaction timeout (timers B, F, H, J, L, M).
    pub fn timeout(&self) -> Duration {
        self.t1 * 64
    }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: Peer,
    /// The bytes.
    pub data: Bytes,
}

/// A retransmission timer: the next deadline and the current interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub at: Duration,
    pub interval: Duration,
}

impl Backoff {
    pub fn start(now: Duration, interval: Duration) -> Self {
        Backoff {
            at: now + interval,
            interval,
        }
    }

    /// Doubles the interval (capped at `cap`) and re-arms from `now`.
    pub fn double(&mut self, now: Duration, cap: Option<Duration>) {
        self.interval = cap.map_or(self.interval * 2, |c| (self.interval * 2).min(c));
        self.at = now + self.interval;
    }
}

/// The earliest of several optional deadlines.
pub(crate) fn earliest(deadlines: &[Option<Duration>]) -> Option<Duration> {
    deadlines.iter().flatten().min().copied()
}
