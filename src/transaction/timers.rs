//! A per-core deadline queue: a binary heap of `(deadline, id, generation)`
//! with lazy cancellation. Re-arming an entry bumps its generation, so the
//! stale heap entries are skipped when they surface instead of being
//! searched for and removed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// Deadlines for entries identified by `u64` ids.
#[derive(Debug, Default)]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<(Duration, u64, u32)>>,
}

impl TimerQueue {
    /// An empty queue.
    pub fn new() -> Self {
        TimerQueue::default()
    }

    /// Gives back room the queue no longer needs.
    pub fn shrink_to_fit(&mut self) {
        self.heap.shrink_to_fit();
    }

    /// Schedules `id` at `at` under `generation`; older generations of the
    /// same id are ignored when they come due.
    pub fn schedule(&mut self, at: Duration, id: u64, generation: u32) {
        self.heap.push(Reverse((at, id, generation)));
    }

    /// The earliest deadline (possibly stale), for the runtime's sleep.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.heap.peek().map(|Reverse((at, ..))| *at)
    }

    /// Pops one entry due at `now`: `(id, generation)`; the caller checks
    /// the generation against the entry's current one.
    pub fn pop_due(&mut self, now: Duration) -> Option<(u64, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, ..))) if *at <= now => {
                self.heap.pop().map(|Reverse((_, id, g))| (id, g))
            }
            _ => None,
        }
    }

    /// Number of scheduled entries, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_order_and_only_when_due() {
        let mut q = TimerQueue::new();
        let s = Duration::from_secs;
        q.schedule(s(5), 1, 0);
        q.schedule(s(2), 2, 0);
        q.schedule(s(9), 3, 0);
        assert_eq!(q.next_deadline(), Some(s(2)));
        assert_eq!(q.pop_due(s(1)), None);
        assert_eq!(q.pop_due(s(6)), Some((2, 0)));
        assert_eq!(q.pop_due(s(6)), Some((1, 0)));
        assert_eq!(q.pop_due(s(6)), None);
        assert_eq!(q.len(), 1);
    }
}
