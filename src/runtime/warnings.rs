//! Warnings about events that can come in floods (refused connections,
//! failed handshakes): one log line per [`WARN_EVERY`], carrying the count
//! since the last, so a flood does not flood the log.

use std::time::{Duration, Instant};

/// At most one warning of a kind per this long.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

/// Counts events of one kind and lets a warning through per
/// [`WARN_EVERY`], with the count since the last.
#[derive(Default)]
pub(crate) struct Warnings {
    last: Option<Instant>,
    count: u64,
}

impl Warnings {
    /// Counts one event; calls `log` with the count when a warning is due.
    pub(crate) fn warn(&mut self, log: impl FnOnce(u64)) {
        self.count += 1;
        let now = Instant::now();
        if self
            .last
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            log(self.count);
            self.last = Some(now);
            self.count = 0;
        }
    }
}
