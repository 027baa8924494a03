//! The report of `sipblade load run`: the workers' results merged, printed
//! as text or as one JSON object.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Plan;
use super::worker::WorkerReport;

/// `/proc` reports CPU time in clock ticks of `USER_HZ`, 100 on Linux.
const USER_HZ: f64 = 100.0;

/// CPU time of this process so far, all threads (living and ended):
/// `(user, system)` seconds from `/proc/self/stat`; `None` off Linux.
pub(crate) fn cpu_time() -> Option<CpuTime> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. utime and stime are fields 14 and 15 of the line.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some(CpuTime {
        user: user / USER_HZ,
        system: system / USER_HZ,
    })
}

/// CPU seconds, user and system.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuTime {
    /// User-mode seconds.
    pub user: f64,
    /// Kernel-mode seconds.
    pub system: f64,
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;
    fn sub(self, rhs: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - rhs.user,
            system: self.system - rhs.system,
        }
    }
}

/// Percentiles of a sample, milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    /// Of `us` (microseconds), sorting it; zeros when empty.
    fn of(us: &mut [u32]) -> Percentiles {
        if us.is_empty() {
            return Percentiles::default();
        }
        us.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * us.len() as f64).ceil() as usize).clamp(1, us.len());
            f64::from(us[rank - 1]) / 1000.0
        };
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    fn json(&self) -> Value {
        json!({"p50": round3(self.p50), "p90": round3(self.p90),
               "p99": round3(self.p99), "max": round3(self.max)})
    }

    fn text(&self) -> String {
        format!(
            "p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            self.p50, self.p90, self.p99, self.max
        )
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The whole run.
pub(crate) struct Summary {
    offered_cps: f64,
    achieved_cps: f64,
    calls: u64,
    pairs: usize,
    threads: usize,
    /// Calls that completed (200 to the BYE).
    pub ok: u64,
    /// Calls that did not.
    pub failed: u64,
    failures: BTreeMap<String, u64>,
    setup: Percentiles,
    lag: Percentiles,
    late: u64,
    pair_waits: u64,
    calls_s: f64,
    wall_s: f64,
    cpu: Option<CpuTime>,
    sent: u64,
    received: u64,
    retransmits: u64,
    malformed: u64,
    stray: u64,
    socket_errors: u64,
}

impl Summary {
    /// Merges the workers' reports.
    pub(crate) fn merge(
        plan: &Plan,
        reports: Vec<WorkerReport>,
        wall: Duration,
        cpu: Option<CpuTime>,
    ) -> Summary {
        let mut failures = BTreeMap::new();
        let mut setup = Vec::new();
        let mut lag = Vec::new();
        let mut first: Option<Instant> = None;
        let mut last: Option<Instant> = None;
        let mut s = Summary {
            offered_cps: plan.rate,
            achieved_cps: 0.0,
            calls: plan.calls,
            pairs: plan.pairs,
            threads: plan.threads,
            ok: 0,
            failed: 0,
            failures: BTreeMap::new(),
            setup: Percentiles::default(),
            lag: Percentiles::default(),
            late: 0,
            pair_waits: 0,
            calls_s: 0.0,
            wall_s: wall.as_secs_f64(),
            cpu,
            sent: 0,
            received: 0,
            retransmits: 0,
            malformed: 0,
            stray: 0,
            socket_errors: 0,
        };
        for r in reports {
            s.ok += r.ok;
            for (why, n) in r.failures {
                s.failed += n;
                *failures.entry(why).or_insert(0) += n;
            }
            setup.extend_from_slice(&r.setup_us);
            lag.extend_from_slice(&r.lag_us);
            s.late += r.late;
            s.pair_waits += r.pair_waits;
            s.sent += r.sent;
            s.received += r.received;
            s.retransmits += r.retransmits;
            s.malformed += r.malformed;
            s.stray += r.stray;
            s.socket_errors += r.socket_errors;
            first = match (first, r.first_invite) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            last = match (last, r.last_ok) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        if let (Some(first), Some(last)) = (first, last) {
            s.calls_s = last.saturating_duration_since(first).as_secs_f64();
            if s.calls_s > 0.0 {
                s.achieved_cps = s.ok as f64 / s.calls_s;
            }
        }
        s.failures = failures;
        s.setup = Percentiles::of(&mut setup);
        s.lag = Percentiles::of(&mut lag);
        s
    }

    fn cpu_per_1000(&self) -> Option<f64> {
        let cpu = self.cpu?;
        let done = self.ok + self.failed;
        (done > 0).then(|| (cpu.user + cpu.system) * 1000.0 / done as f64)
    }

    /// One JSON object.
    pub(crate) fn json(&self) -> String {
        let cpu = self.cpu.map(|c| {
            json!({"user_s": round3(c.user), "system_s": round3(c.system),
                   "total_s": round3(c.user + c.system),
                   "per_1000_calls_s": self.cpu_per_1000().map(round3)})
        });
        json!({
            "offered_cps": self.offered_cps,
            "achieved_cps": round3(self.achieved_cps),
            "calls": self.calls,
            "ok": self.ok,
            "failed": self.failed,
            "failures": self.failures,
            "setup_ms": self.setup.json(),
            "pacing_lag_ms": self.lag.json(),
            "late_starts": self.late,
            "pair_waits": self.pair_waits,
            "calls_s": round3(self.calls_s),
            "wall_s": round3(self.wall_s),
            "cpu": cpu,
            "pairs": self.pairs,
            "threads": self.threads,
            "datagrams": {"sent": self.sent, "received": self.received,
                          "retransmits": self.retransmits, "malformed": self.malformed,
                          "stray": self.stray, "socket_errors": self.socket_errors},
        })
        .to_string()
    }

    /// A few human lines.
    pub(crate) fn text(&self) -> String {
        let failures = if self.failures.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = self
                .failures
                .iter()
                .map(|(why, n)| format!("{why}: {n}"))
                .collect();
            format!(" ({})", list.join(", "))
        };
        let cpu = match (self.cpu, self.cpu_per_1000()) {
            (Some(c), Some(per)) => format!(
                "{:.2} s user + {:.2} s system ({per:.3} s per 1000 calls)",
                c.user, c.system
            ),
            (Some(c), None) => format!("{:.2} s user + {:.2} s system", c.user, c.system),
            _ => "unknown".to_owned(),
        };
        format!(
            "offered        {} calls/s, {} calls over {} pairs, {} threads\n\
             achieved       {:.1} calls/s ({} ok in {:.3} s)\n\
             calls          {} ok, {} failed{failures}\n\
             setup (ms)     {}\n\
             pacing lag(ms) {}  ({} late > 1 ms, {} waits for a free pair)\n\
             datagrams      {} sent, {} received, {} retransmitted, {} malformed, {} stray, {} socket errors\n\
             generator cpu  {cpu}\n\
             wall           {:.3} s",
            self.offered_cps,
            self.calls,
            self.pairs,
            self.threads,
            self.achieved_cps,
            self.ok,
            self.calls_s,
            self.ok,
            self.failed,
            self.setup.text(),
            self.lag.text(),
            self.late,
            self.pair_waits,
            self.sent,
            self.received,
            self.retransmits,
            self.malformed,
            self.stray,
            self.socket_errors,
            self.wall_s,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50.0, 90.0, 99.0, 100.0));
        let p = Percentiles::of(&mut []);
        assert_eq!(p.max, 0.0);
    }

    #[test]
    fn cpu_time_reads_proc() {
        if cfg!(target_os = "linux") {
            let c = cpu_time().expect("/proc/self/stat");
            assert!(c.user >= 0.0 && c.system >= 0.0);
        }
    }
}
