//! Counters a core keeps; the admin port sums them over cores.

use std::time::Duration;

use crate::cluster::codec::Refusal;
use crate::cluster::hosting::Ending;

/// Upper bounds of the hosting round-trip histogram, in seconds: fine
/// below a millisecond, where a loopback or LAN round trip lands.
pub const RTT_BUCKETS: [f64; 10] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// Every refusal reason, in the order [`Metrics::hosting_refused`] counts
/// them.
pub const REFUSALS: [Refusal; 5] = [
    Refusal::Unknown,
    Refusal::NotLoggedIn,
    Refusal::Busy,
    Refusal::AlreadyHosted,
    Refusal::Overloaded,
];

/// How calls ended, for one route (local or cross-blade).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallOutcomes {
    /// Answered 2xx.
    pub answered: u64,
    /// Refused busy (486 / 600).
    pub busy: u64,
    /// Cancelled by the caller.
    pub cancelled: u64,
    /// Failed otherwise (final non-2xx, timeout, refusal).
    pub failed: u64,
}

impl CallOutcomes {
    /// Counts a call that ended with the final status `status` (300 or
    /// more): busy for 486 and 600, cancelled for 487, failed otherwise.
    pub fn ended_with(&mut self, status: u16) {
        match status {
            486 | 600 => self.busy += 1,
            487 => self.cancelled += 1,
            _ => self.failed += 1,
        }
    }

    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &CallOutcomes) {
        self.answered += other.answered;
        self.busy += other.busy;
        self.cancelled += other.cancelled;
        self.failed += other.failed;
    }
}

/// A fixed-bucket histogram (Prometheus `le` buckets, cumulative when
/// rendered).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations per bucket of [`RTT_BUCKETS`] (not cumulative); the
    /// last slot counts those above every bound.
    pub buckets: [u64; RTT_BUCKETS.len() + 1],
    /// Number of observations.
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, value: Duration) {
        let secs = value.as_secs_f64();
        let slot = RTT_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(RTT_BUCKETS.len());
        self.buckets[slot] += 1;
        self.count += 1;
        self.sum += secs;
    }

    /// Adds `other`'s observations to these.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
    }
}

/// Counters of one core.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Calls between agents of this blade.
    pub local: CallOutcomes,
    /// Calls to an agent hosted from another blade (counted on the source).
    pub cross_blade: CallOutcomes,
    /// REGISTERs accepted.
    pub registrations: u64,
    /// Datagrams dropped or refused as malformed.
    pub malformed: u64,
    /// Requests refused with 503 under overload.
    pub overloaded: u64,
    /// TCP connections closed at once: the core held its limit.
    pub tcp_refused: u64,
    /// TCP connections closed because they delivered no message in time,
    /// or stalled in the middle of one.
    pub tcp_timed_out: u64,
    /// Messages this core received for another core, and handed over.
    pub handoffs: u64,
    /// Host requests this blade's sessions got refused, by [`REFUSALS`];
    /// `AlreadyHosted` also counts calls refused for an agent this blade
    /// hosts already, without a request.
    pub hosting_refused: [u64; REFUSALS.len()],
    /// Grants this blade (as target) handed out.
    pub hosting_granted: u64,
    /// Grants this blade (as target) saw end, by how, in the order of
    /// [`Ending::ALL`]: unhosted by the source, lapsed, ended because
    /// the source restarted, or disowned by the source after a
    /// reconnection.
    pub hosting_released: [u64; Ending::ALL.len()],
    /// Host request to grant, as the source saw it.
    pub hosting_rtt: Histogram,
    /// Join legs answered: agents let into a session (conference,
    /// monitoring).
    pub joins: u64,
    /// Calls answered that replaced another (RFC 3891 Replaces: attended
    /// transfer, call pickup).
    pub replaces: u64,
    /// Sessions ended because they outlived `max_call_secs` (a lost BYE).
    pub sessions_expired: u64,
    /// Sessions ended because their 2xx was sent again and never ACKed
    /// within 64×T1 (both phones gave up on the dialog).
    pub sessions_unacked: u64,
    /// BYEs the blade sent itself to the parties of a call it ended (on
    /// `max_call_secs`, when a hosted party's blade was lost, or, on a
    /// hosted agent's own blade, when the lease of its hosting lapsed or
    /// the hosting blade restarted).
    pub sessions_bye_sent: u64,
    /// Of those, the ones no 2xx answered (an error response, no answer
    /// within timer F, or no way to send).
    pub sessions_bye_failed: u64,
}

impl Metrics {
    /// Adds another core's counters to these.
    pub fn merge(&mut self, other: &Metrics) {
        self.local.add(&other.local);
        self.cross_blade.add(&other.cross_blade);
        self.registrations += other.registrations;
        self.malformed += other.malformed;
        self.overloaded += other.overloaded;
        self.tcp_refused += other.tcp_refused;
        self.tcp_timed_out += other.tcp_timed_out;
        self.handoffs += other.handoffs;
        for (a, b) in self
            .hosting_refused
            .iter_mut()
            .zip(other.hosting_refused.iter())
        {
            *a += b;
        }
        self.hosting_granted += other.hosting_granted;
        for (a, b) in self
            .hosting_released
            .iter_mut()
            .zip(other.hosting_released.iter())
        {
            *a += b;
        }
        self.hosting_rtt.merge(&other.hosting_rtt);
        self.joins += other.joins;
        self.replaces += other.replaces;
        self.sessions_expired += other.sessions_expired;
        self.sessions_unacked += other.sessions_unacked;
        self.sessions_bye_sent += other.sessions_bye_sent;
        self.sessions_bye_failed += other.sessions_bye_failed;
    }

    /// Counts a refusal of a host request.
    pub fn refused(&mut self, reason: Refusal) {
        if let Some(i) = REFUSALS.iter().position(|r| *r == reason) {
            self.hosting_refused[i] += 1;
        }
    }
}
