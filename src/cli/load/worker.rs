//! One load worker: a thread with one UDP socket that is the Contact of its
//! share of the agents, callers and callees alike (pair `i` belongs to
//! worker `i % threads`). It registers them, then paces its share of the
//! calls and runs both ends of each: the caller (UAC: INVITE, ACK, BYE, with
//! RFC 3261 timers A and E) and the callee (UAS: 180 and 200 at once,
//! retransmitting the 200 until the ACK; 200 to the BYE).
//!
//! Cheap per call by construction: messages are written into buffers each
//! slot keeps from call to call, a Call-ID names its pair so a message finds
//! its state without a map, and timers live in one binary heap whose stale
//! entries are skipped by generation number.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::{ErrorKind, Write as _};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::{Plan, Shared, extension};
use crate::sip::{HeaderName, Message, Method};

/// RFC 3261 T1: the first retransmission interval.
const T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2: the cap of non-INVITE (and 2xx) retransmission intervals.
const T2: Duration = Duration::from_secs(4);
/// How long the UAS retransmits a 2xx that gets no ACK (64·T1).
const UAS_GIVE_UP: Duration = Duration::from_secs(32);
/// REGISTERs in flight per worker.
const REGISTER_WINDOW: usize = 128;
/// A call started later than this after its due time counts as late.
const LATE: Duration = Duration::from_millis(1);

/// What one worker measured.
#[derive(Debug, Default)]
pub(crate) struct WorkerReport {
    /// Calls that ended with a 200 to the BYE.
    pub ok: u64,
    /// Failed calls by reason: a final status ("486", "503"), "timeout",
    /// "BYE 481", "not_started".
    pub failures: BTreeMap<String, u64>,
    /// Setup latency of each successful call (INVITE sent → 200), µs.
    pub setup_us: Vec<u32>,
    /// How late each call started after its due time, µs.
    pub lag_us: Vec<u32>,
    /// Calls started more than [`LATE`] after their due time.
    pub late: u64,
    /// Calls that waited for a free pair.
    pub pair_waits: u64,
    /// When this worker sent its first INVITE.
    pub first_invite: Option<Instant>,
    /// When its last successful call ended.
    pub last_ok: Option<Instant>,
    /// Datagrams sent and received.
    pub sent: u64,
    /// Datagrams received.
    pub received: u64,
    /// Requests and responses sent again (timers A, E, G).
    pub retransmits: u64,
    /// Datagrams that did not parse.
    pub malformed: u64,
    /// Messages that matched no call (late retransmissions and the like).
    pub stray: u64,
    /// Sends or receives the socket refused.
    pub socket_errors: u64,
    /// Why the agents could not be registered, if they could not.
    pub register_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UacState {
    Idle,
    /// INVITE sent, nothing heard: retransmitting (timer A).
    Calling,
    /// A provisional response came: waiting for the final one.
    Proceeding,
    /// 200 received and ACKed; the BYE goes at `hold_until`.
    Holding,
    /// BYE sent: retransmitting (timer E) until its final response.
    Terminating,
}

/// The caller's side of one pair.
struct Uac {
    caller: String,
    callee: String,
    state: UacState,
    call_id: String,
    /// Counts this pair's calls: tags.
    serial: u64,
    sent_at: Instant,
    deadline: Instant,
    retx_at: Instant,
    interval: Duration,
    hold_until: Instant,
    generation: u32,
    /// The INVITE, and then the BYE: what timer A or E resends.
    request: Vec<u8>,
    /// The ACK of the 200: sent again when the 200 is.
    ack: Vec<u8>,
    /// Where `request` and `ack` go: the blade for the INVITE, then the
    /// dialog's first Route (RFC 3261 §12.2.1.1), which may name another
    /// port of the blade than its SIP port.
    next_hop: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UasState {
    Idle,
    /// 200 sent, no ACK yet: retransmitting it.
    Answered,
    /// ACK received.
    Confirmed,
    /// BYE answered.
    Ended,
}

/// The callee's side of one pair.
struct Uas {
    callee: String,
    state: UasState,
    call_id: String,
    peer: SocketAddr,
    retx_at: Instant,
    interval: Duration,
    give_up: Instant,
    generation: u32,
    /// The 200 to the INVITE, then the 200 to the BYE: what a
    /// retransmitted request is answered with again.
    response: Vec<u8>,
}

/// Which side a timer belongs to.
const SIDE_UAC: u8 = 0;
const SIDE_UAS: u8 = 1;

/// A timer: when, which side, which slot, which generation of it.
type TimerEntry = Reverse<(Instant, u8, u32, u32)>;

/// One worker thread's state.
pub(crate) struct Worker {
    index: usize,
    socket: UdpSocket,
    local: SocketAddr,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    /// `{nonce}.{index}.`: the start of every Call-ID of ours.
    prefix: String,
    sdp: String,
    uac: Vec<Uac>,
    uas: Vec<Uas>,
    idle: VecDeque<u32>,
    timers: BinaryHeap<TimerEntry>,
    scratch: Vec<u8>,
    scratch_bytes: BytesMut,
    report: WorkerReport,
    /// Calls finished (ok or failed).
    finished: u64,
    /// Counts the callees' answers: To tags.
    answers: u64,
    /// Slots waiting for a message: callers with a transaction open,
    /// callees waiting for an ACK. While none is, nothing can arrive and
    /// the worker may sleep precisely until its next due time.
    expecting: u32,
}

impl Worker {
    /// A worker for pairs `index, index + threads, …` on `socket`.
    pub(crate) fn new(
        index: usize,
        socket: UdpSocket,
        plan: Arc<Plan>,
        shared: Arc<Shared>,
    ) -> Worker {
        let local = socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 0));
        let now = Instant::now();
        let mut uac = Vec::new();
        let mut uas = Vec::new();
        for i in (index..plan.pairs).step_by(plan.threads) {
            uac.push(Uac {
                caller: extension(plan.first, i, false).to_string(),
                callee: extension(plan.first, i, true).to_string(),
                state: UacState::Idle,
                call_id: String::with_capacity(40),
                serial: 0,
                sent_at: now,
                deadline: now,
                retx_at: now,
                interval: T1,
                hold_until: now,
                generation: 0,
                request: Vec::with_capacity(768),
                ack: Vec::with_capacity(384),
                next_hop: plan.blade,
            });
            uas.push(Uas {
                callee: extension(plan.first, i, true).to_string(),
                state: UasState::Idle,
                call_id: String::with_capacity(40),
                peer: plan.blade,
                retx_at: now,
                interval: T1,
                give_up: now,
                generation: 0,
                response: Vec::with_capacity(768),
            });
        }
        let idle = (0..uac.len() as u32).collect();
        let ip_kind = if local.is_ipv4() { "IP4" } else { "IP6" };
        let ip = local.ip();
        let sdp = format!(
            "v=0\r\no=- 1 1 IN {ip_kind} {ip}\r\ns=-\r\nc=IN {ip_kind} {ip}\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        Worker {
            index,
            socket,
            local,
            prefix: format!("{:08x}.{index}.", plan.nonce),
            plan,
            shared,
            sdp,
            uac,
            uas,
            idle,
            timers: BinaryHeap::new(),
            scratch: Vec::with_capacity(1024),
            scratch_bytes: BytesMut::with_capacity(1024),
            report: WorkerReport::default(),
            finished: 0,
            answers: 0,
            expecting: 0,
        }
    }

    /// Registers, waits for the other workers, places this worker's calls;
    /// returns what it measured.
    pub(crate) fn run(mut self) -> WorkerReport {
        if let Err(e) = self.register_all() {
            self.report.register_error = Some(e);
            self.shared.abort.store(true, Ordering::SeqCst);
        }
        self.shared.registered.wait();
        if self.shared.abort.load(Ordering::SeqCst) {
            return self.report;
        }
        let t0 = *self.shared.t0.get_or_init(Instant::now);
        self.place_calls(t0);
        self.report
    }

    // Sockets.

    fn send(&mut self, data: &[u8], to: SocketAddr) {
        match self.socket.send_to(data, to) {
            Ok(_) => self.report.sent += 1,
            // The retransmission timers recover a lost datagram.
            Err(_) => self.report.socket_errors += 1,
        }
    }

    /// One datagram, waiting at most about a scheduler tick; `None` when
    /// none came.
    fn recv(&mut self, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        match self.socket.recv_from(buf) {
            Ok(got) => {
                self.report.received += 1;
                Some(got)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(_) => {
                // E.g. ECONNREFUSED from an ICMP error: count it and go on.
                self.report.socket_errors += 1;
                None
            }
        }
    }

    // Registration.

    /// The REGISTER of agent `idx` of this worker's list (callers first,
    /// then callees) into `scratch`; returns where it goes.
    fn register_text(&mut self, idx: usize) -> SocketAddr {
        let n = self.uac.len();
        let (ext, domain, to) = if idx < n {
            (&self.uac[idx].caller, &self.plan.domain, self.plan.blade)
        } else {
            (
                &self.uas[idx - n].callee,
                &self.plan.callee_domain,
                self.plan.callee_blade,
            )
        };
        self.scratch.clear();
        let _ = write!(
            self.scratch,
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-r{prefix}{idx};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{ext}@{domain}>;tag=r{ext}\r\n\
             To: <sip:{ext}@{domain}>\r\n\
             Call-ID: r{prefix}{idx}\r\n\
             CSeq: 1 REGISTER\r\n\
             Contact: <sip:{ext}@{local}>\r\n\
             Expires: 3600\r\n\
             User-Agent: sipblade-load\r\n\
             Content-Length: 0\r\n\r\n",
            local = self.local,
            prefix = self.prefix,
        );
        to
    }

    fn send_register(&mut self, idx: usize) {
        let to = self.register_text(idx);
        let data = std::mem::take(&mut self.scratch);
        self.send(&data, to);
        self.scratch = data;
    }

    /// Registers this worker's callers and callees, a window at a time,
    /// retransmitting per timer E.
    fn register_all(&mut self) -> Result<(), String> {
        let n = 2 * self.uac.len();
        // Per agent: (next retransmission, interval, deadline); None once done.
        let mut pending: Vec<Option<(Instant, Duration, Instant)>> = vec![None; n];
        let mut outstanding: Vec<usize> = Vec::with_capacity(REGISTER_WINDOW);
        let mut next = 0;
        let mut done = 0;
        let mut buf = vec![0u8; 65_535];
        while done < n {
            while outstanding.len() < REGISTER_WINDOW && next < n {
                self.send_register(next);
                let now = Instant::now();
                pending[next] = Some((now + T1, T1, now + self.plan.timeout));
                outstanding.push(next);
                next += 1;
            }
            if let Some((len, _)) = self.recv(&mut buf) {
                let data = Bytes::copy_from_slice(&buf[..len]);
                match Message::parse(data) {
                    Err(_) => self.report.malformed += 1,
                    Ok(msg) => {
                        let idx = msg
                            .call_id()
                            .strip_prefix('r')
                            .and_then(|c| c.strip_prefix(self.prefix.as_str()))
                            .and_then(|c| c.parse::<usize>().ok())
                            .filter(|&i| i < n && pending[i].is_some());
                        match (idx, msg.status()) {
                            (Some(i), Some(200..=299)) => {
                                pending[i] = None;
                                outstanding.retain(|&o| o != i);
                                done += 1;
                            }
                            (Some(_), Some(100..=199)) => {}
                            (Some(i), Some(status)) => {
                                let ext = self.agent_ext(i);
                                let hint = if status == 401 || status == 407 {
                                    ": run the blade with auth = false"
                                } else {
                                    ""
                                };
                                return Err(format!(
                                    "REGISTER of {ext} answered {status} {}{hint}",
                                    String::from_utf8_lossy(msg.reason().unwrap_or_default())
                                ));
                            }
                            _ => self.report.stray += 1,
                        }
                    }
                }
            }
            let now = Instant::now();
            for &i in &outstanding {
                if let Some((at, interval, deadline)) = pending[i] {
                    if now >= deadline {
                        return Err(format!(
                            "REGISTER of {} got no answer from the blade within {} s",
                            self.agent_ext(i),
                            self.plan.timeout.as_secs()
                        ));
                    }
                    if now >= at {
                        self.send_register(i);
                        self.report.retransmits += 1;
                        let interval = (interval * 2).min(T2);
                        pending[i] = Some((now + interval, interval, deadline));
                    }
                }
            }
        }
        Ok(())
    }

    fn agent_ext(&self, idx: usize) -> &str {
        let n = self.uac.len();
        if idx < n {
            &self.uac[idx].caller
        } else {
            &self.uas[idx - n].callee
        }
    }

    // Calls.

    /// How many of the run's calls are this worker's: calls `k` with
    /// `k % threads == index`.
    fn my_calls(&self) -> u64 {
        let (calls, t, w) = (self.plan.calls, self.plan.threads as u64, self.index as u64);
        if calls > w {
            (calls - w - 1) / t + 1
        } else {
            0
        }
    }

    /// When this worker's `k`-th call is due: global call `index + k·threads`
    /// at `t0 + that / rate`.
    fn due(&self, t0: Instant, k: u64) -> Instant {
        let global = self.index as f64 + (k * self.plan.threads as u64) as f64;
        t0 + Duration::from_secs_f64(global / self.plan.rate)
    }

    fn place_calls(&mut self, t0: Instant) {
        let total = self.my_calls();
        let run_for = Duration::from_secs_f64(self.plan.calls as f64 / self.plan.rate);
        let hard_deadline =
            t0 + run_for + self.plan.timeout + self.plan.hold + Duration::from_secs(10);
        let mut started = 0u64;
        let mut next_due = self.due(t0, 0);
        let mut waiting_for_pair = false;
        let mut buf = vec![0u8; 65_535];
        self.report.setup_us.reserve(total as usize);
        self.report.lag_us.reserve(total as usize);
        loop {
            let now = Instant::now();
            // Start every call that is due: a batch when we are behind.
            while started < total && next_due <= now {
                let Some(p) = self.idle.pop_front() else {
                    if !waiting_for_pair {
                        waiting_for_pair = true;
                        self.report.pair_waits += 1;
                    }
                    break;
                };
                waiting_for_pair = false;
                let lag = now - next_due;
                self.report.lag_us.push(micros(lag));
                if lag > LATE {
                    self.report.late += 1;
                }
                self.start_call(p as usize, now);
                started += 1;
                next_due = self.due(t0, started);
            }
            while let Some(&Reverse((at, side, slot, generation))) = self.timers.peek() {
                if at > now {
                    break;
                }
                self.timers.pop();
                if side == SIDE_UAC {
                    self.uac_timer(slot as usize, generation, now);
                } else {
                    self.uas_timer(slot as usize, generation, now);
                }
            }
            if self.finished >= total {
                break;
            }
            if now >= hard_deadline {
                for p in 0..self.uac.len() {
                    if self.uac[p].state != UacState::Idle {
                        self.fail(p, "timeout");
                    }
                }
                let left = total - started;
                if left > 0 {
                    *self
                        .report
                        .failures
                        .entry("not_started".to_owned())
                        .or_default() += left;
                }
                break;
            }
            if self.expecting == 0 {
                // Nothing can arrive (no transaction of ours is open): sleep
                // precisely (hrtimer) to the next due call or timer, rather
                // than for a scheduler tick in a timed-out receive.
                let call = (started < total && !self.idle.is_empty()).then_some(next_due);
                let timer = self.timers.peek().map(|Reverse((at, ..))| *at);
                let wake = match (call, timer) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if let Some(wake) = wake {
                    let now = Instant::now();
                    if wake > now {
                        std::thread::sleep((wake - now).min(Duration::from_millis(50)));
                    }
                    continue;
                }
            }
            if let Some((len, from)) = self.recv(&mut buf) {
                let data = Bytes::copy_from_slice(&buf[..len]);
                match Message::parse(data) {
                    Ok(msg) if msg.is_request() => {
                        // As a phone does (RFC 3261 §18.2.2): to the
                        // source IP and the top Via's port.
                        let port = msg.top_via().port().unwrap_or(5060);
                        self.uas_request(&msg, SocketAddr::new(from.ip(), port));
                    }
                    Ok(msg) => self.uac_response(&msg),
                    Err(_) => self.report.malformed += 1,
                }
            }
        }
    }

    /// Moves caller slot `p` to `state`, keeping `expecting` right.
    fn set_uac(&mut self, p: usize, state: UacState) {
        let waits = |s| {
            matches!(
                s,
                UacState::Calling | UacState::Proceeding | UacState::Terminating
            )
        };
        let old = std::mem::replace(&mut self.uac[p].state, state);
        self.expecting = self.expecting + u32::from(waits(state)) - u32::from(waits(old));
    }

    /// Moves callee slot `p` to `state`, keeping `expecting` right.
    fn set_uas(&mut self, p: usize, state: UasState) {
        let waits = |s| s == UasState::Answered;
        let old = std::mem::replace(&mut self.uas[p].state, state);
        self.expecting = self.expecting + u32::from(waits(state)) - u32::from(waits(old));
    }

    /// The pair a Call-ID of ours names, if it is one of this worker's.
    fn slot_of(&self, call_id: &str) -> Option<usize> {
        let rest = call_id.strip_prefix(self.prefix.as_str())?;
        let (slot, _) = rest.split_once('.')?;
        slot.parse::<usize>().ok().filter(|&p| p < self.uac.len())
    }

    fn push_timer(&mut self, side: u8, p: usize, at: Instant) {
        let generation = if side == SIDE_UAC {
            self.uac[p].generation
        } else {
            self.uas[p].generation
        };
        self.timers.push(Reverse((at, side, p as u32, generation)));
    }

    fn start_call(&mut self, p: usize, now: Instant) {
        self.set_uac(p, UacState::Calling);
        let s = &mut self.uac[p];
        s.serial += 1;
        s.call_id.clear();
        let _ = std::fmt::Write::write_fmt(
            &mut s.call_id,
            format_args!("{}{p}.{}", self.prefix, s.serial),
        );
        s.request.clear();
        s.next_hop = self.plan.blade;
        let domain = &self.plan.domain;
        let _ = write!(
            s.request,
            "INVITE sip:{callee}@{domain} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-{cid}-i;rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{caller}@{domain}>;tag=f{serial}\r\n\
             To: <sip:{callee}@{domain}>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:{caller}@{local}>\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: {len}\r\n\r\n{sdp}",
            callee = s.callee,
            caller = s.caller,
            local = self.local,
            cid = s.call_id,
            serial = s.serial,
            len = self.sdp.len(),
            sdp = self.sdp,
        );
        s.sent_at = now;
        s.deadline = now + self.plan.timeout + self.plan.hold;
        self.report.first_invite.get_or_insert(now);
        self.send_first(p, now);
    }

    /// Sends slot `p`'s stored request (INVITE or BYE) the first time and
    /// arms its retransmission (timer A or E) from T1.
    fn send_first(&mut self, p: usize, now: Instant) {
        let s = &mut self.uac[p];
        s.interval = T1;
        s.retx_at = now + T1;
        s.generation = s.generation.wrapping_add(1);
        let at = s.retx_at.min(s.deadline);
        let data = std::mem::take(&mut s.request);
        let to = s.next_hop;
        self.send(&data, to);
        self.uac[p].request = data;
        self.push_timer(SIDE_UAC, p, at);
    }

    /// Sends slot `p`'s stored request (INVITE or BYE) again.
    fn resend_request(&mut self, p: usize) {
        let data = std::mem::take(&mut self.uac[p].request);
        self.send(&data, self.uac[p].next_hop);
        self.uac[p].request = data;
        self.report.retransmits += 1;
    }

    fn uac_timer(&mut self, p: usize, generation: u32, now: Instant) {
        let s = &self.uac[p];
        if s.generation != generation || s.state == UacState::Idle {
            return;
        }
        if now >= s.deadline {
            return self.fail(p, "timeout");
        }
        match s.state {
            UacState::Calling | UacState::Terminating => {
                if now >= s.retx_at {
                    self.resend_request(p);
                    let s = &mut self.uac[p];
                    // Timer A doubles without a cap; timer E caps at T2.
                    s.interval = if s.state == UacState::Calling {
                        s.interval * 2
                    } else {
                        (s.interval * 2).min(T2)
                    };
                    s.retx_at = now + s.interval;
                }
                let s = &self.uac[p];
                let at = s.retx_at.min(s.deadline);
                self.push_timer(SIDE_UAC, p, at);
            }
            UacState::Proceeding => {
                let at = s.deadline;
                self.push_timer(SIDE_UAC, p, at);
            }
            UacState::Holding => {
                if now >= s.hold_until {
                    self.send_bye(p, now);
                } else {
                    let at = s.hold_until.min(s.deadline);
                    self.push_timer(SIDE_UAC, p, at);
                }
            }
            UacState::Idle => {}
        }
    }

    fn send_bye(&mut self, p: usize, now: Instant) {
        self.set_uac(p, UacState::Terminating);
        self.send_first(p, now);
    }

    /// Ends slot `p`'s call as failed for `why`.
    fn fail(&mut self, p: usize, why: &str) {
        self.set_uac(p, UacState::Idle);
        let s = &mut self.uac[p];
        s.generation = s.generation.wrapping_add(1);
        self.idle.push_back(p as u32);
        self.finished += 1;
        match self.report.failures.get_mut(why) {
            Some(n) => *n += 1,
            None => {
                self.report.failures.insert(why.to_owned(), 1);
            }
        }
    }

    fn uac_response(&mut self, msg: &Message) {
        let Some(status) = msg.status() else { return };
        let call_id = msg.call_id();
        let Some(p) = self
            .slot_of(call_id)
            .filter(|&p| self.uac[p].state != UacState::Idle && self.uac[p].call_id == call_id)
        else {
            self.report.stray += 1;
            return;
        };
        let now = Instant::now();
        let state = self.uac[p].state;
        match (msg.cseq().method, state) {
            (Method::Invite, UacState::Calling | UacState::Proceeding) => match status {
                100..=199 => self.set_uac(p, UacState::Proceeding),
                200..=299 => {
                    let setup = now - self.uac[p].sent_at;
                    self.report.setup_us.push(micros(setup));
                    self.build_dialog_requests(p, msg);
                    let data = std::mem::take(&mut self.uac[p].ack);
                    self.send(&data, self.uac[p].next_hop);
                    self.uac[p].ack = data;
                    if self.plan.hold.is_zero() {
                        self.send_bye(p, now);
                    } else {
                        self.set_uac(p, UacState::Holding);
                        let s = &mut self.uac[p];
                        s.hold_until = now + self.plan.hold;
                        s.generation = s.generation.wrapping_add(1);
                        let at = s.hold_until.min(s.deadline);
                        self.push_timer(SIDE_UAC, p, at);
                    }
                }
                _ => {
                    self.ack_failure(p, msg);
                    let key = if status == 408 {
                        "timeout".to_owned()
                    } else {
                        status.to_string()
                    };
                    self.fail(p, &key);
                }
            },
            // A retransmitted 200: its ACK again.
            (Method::Invite, UacState::Holding | UacState::Terminating) => {
                if (200..300).contains(&status) {
                    let data = std::mem::take(&mut self.uac[p].ack);
                    self.send(&data, self.uac[p].next_hop);
                    self.uac[p].ack = data;
                    self.report.retransmits += 1;
                }
            }
            (Method::Bye, UacState::Terminating) => match status {
                100..=199 => {}
                200..=299 => {
                    self.set_uac(p, UacState::Idle);
                    let s = &mut self.uac[p];
                    s.generation = s.generation.wrapping_add(1);
                    self.idle.push_back(p as u32);
                    self.finished += 1;
                    self.report.ok += 1;
                    self.report.last_ok = Some(now);
                }
                _ => self.fail(p, &format!("BYE {status}")),
            },
            _ => self.report.stray += 1,
        }
    }

    /// From the 200 to slot `p`'s INVITE: its ACK into `ack` and the BYE
    /// into `request`, both to the remote target (the 200's Contact) along
    /// the route set (its Record-Route, reversed).
    fn build_dialog_requests(&mut self, p: usize, ok: &Message) {
        let src = ok.as_bytes();
        let mut routes: SmallVec<[&[u8]; 4]> = ok.record_routes().map(|r| r.as_bytes()).collect();
        routes.reverse();
        let first_route = ok.record_routes().last().map(|r| r.uri());
        self.uac[p].next_hop = first_route
            .as_ref()
            .and_then(crate::proxy::route::uri_peer)
            .map_or(self.plan.blade, |peer| peer.addr);
        let to_line = ok
            .header_fields()
            .iter()
            .find(|h| h.name == HeaderName::To)
            .map(|h| h.value.of(src))
            .unwrap_or_default();
        let s = &mut self.uac[p];
        let target: &[u8] = match ok.contacts().next() {
            Some(c) => c.uri().as_bytes(),
            None => b"",
        };
        for (buf, method, seq, suffix) in
            [(&mut s.ack, "ACK", 1, 'a'), (&mut s.request, "BYE", 2, 'b')]
        {
            buf.clear();
            buf.extend_from_slice(method.as_bytes());
            buf.push(b' ');
            if target.is_empty() {
                let _ = write!(buf, "sip:{}@{}", s.callee, self.plan.domain);
            } else {
                buf.extend_from_slice(target);
            }
            let _ = write!(
                buf,
                " SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{cid}-{suffix};rport\r\n",
                local = self.local,
                cid = s.call_id,
            );
            for r in &routes {
                buf.extend_from_slice(b"Route: ");
                buf.extend_from_slice(r);
                buf.extend_from_slice(b"\r\n");
            }
            let _ = write!(
                buf,
                "Max-Forwards: 70\r\nFrom: <sip:{caller}@{domain}>;tag=f{serial}\r\nTo: ",
                caller = s.caller,
                domain = self.plan.domain,
                serial = s.serial,
            );
            buf.extend_from_slice(to_line);
            let _ = write!(
                buf,
                "\r\nCall-ID: {cid}\r\nCSeq: {seq} {method}\r\nContent-Length: 0\r\n\r\n",
                cid = s.call_id,
            );
        }
    }

    /// The ACK of a non-2xx final response to slot `p`'s INVITE (RFC 3261
    /// §17.1.1.3: same branch, To from the response).
    fn ack_failure(&mut self, p: usize, response: &Message) {
        let src = response.as_bytes();
        let to = response
            .header_fields()
            .iter()
            .find(|h| h.name == HeaderName::To)
            .map(|h| h.value.of(src))
            .unwrap_or_default();
        let s = &self.uac[p];
        self.scratch.clear();
        let _ = write!(
            self.scratch,
            "ACK sip:{callee}@{domain} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-{cid}-i;rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{caller}@{domain}>;tag=f{serial}\r\nTo: ",
            callee = s.callee,
            caller = s.caller,
            domain = self.plan.domain,
            local = self.local,
            cid = s.call_id,
            serial = s.serial,
        );
        self.scratch.extend_from_slice(to);
        let _ = write!(
            self.scratch,
            "\r\nCall-ID: {cid}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            cid = s.call_id
        );
        let data = std::mem::take(&mut self.scratch);
        self.send(&data, self.plan.blade);
        self.scratch = data;
    }

    // The callee's side.

    fn uas_request(&mut self, msg: &Message, from: SocketAddr) {
        let Some(method) = msg.method() else { return };
        let call_id = msg.call_id();
        let slot = self.slot_of(call_id);
        let current =
            slot.filter(|&p| self.uas[p].state != UasState::Idle && self.uas[p].call_id == call_id);
        match method {
            Method::Invite => {
                let Some(p) = slot else {
                    self.report.stray += 1;
                    return self.answer(msg, 404, "Not Found", from);
                };
                if current.is_some() {
                    // A retransmission: the 200 again, if it is still the answer.
                    if self.uas[p].state == UasState::Answered
                        || self.uas[p].state == UasState::Confirmed
                    {
                        let data = std::mem::take(&mut self.uas[p].response);
                        self.send(&data, from);
                        self.uas[p].response = data;
                        self.report.retransmits += 1;
                    }
                    return;
                }
                self.answer_invite(p, msg, from);
            }
            Method::Ack => match current {
                Some(p) if self.uas[p].state == UasState::Answered => {
                    self.set_uas(p, UasState::Confirmed);
                    let s = &mut self.uas[p];
                    s.generation = s.generation.wrapping_add(1);
                }
                Some(_) => {}
                None => self.report.stray += 1,
            },
            Method::Bye => match current {
                Some(p) if self.uas[p].state == UasState::Ended => {
                    let data = std::mem::take(&mut self.uas[p].response);
                    self.send(&data, from);
                    self.uas[p].response = data;
                    self.report.retransmits += 1;
                }
                Some(p) => {
                    let mut out = std::mem::take(&mut self.scratch_bytes);
                    out.clear();
                    msg.response(200, "OK", None, &[], &mut out);
                    self.send(&out, from);
                    self.set_uas(p, UasState::Ended);
                    let s = &mut self.uas[p];
                    s.response.clear();
                    s.response.extend_from_slice(&out);
                    s.generation = s.generation.wrapping_add(1);
                    self.scratch_bytes = out;
                }
                None => {
                    self.report.stray += 1;
                    self.answer(msg, 481, "Call/Transaction Does Not Exist", from);
                }
            },
            // We answer at once, so there is nothing left to cancel.
            Method::Cancel => self.answer(msg, 200, "OK", from),
            _ => {
                self.report.stray += 1;
                self.answer(msg, 501, "Not Implemented", from);
            }
        }
    }

    /// A response that copies the request's Via, From, To, Call-ID, CSeq.
    fn answer(&mut self, msg: &Message, status: u16, reason: &str, to: SocketAddr) {
        let mut out = std::mem::take(&mut self.scratch_bytes);
        out.clear();
        msg.response(status, reason, Some("load"), &[], &mut out);
        self.send(&out, to);
        self.scratch_bytes = out;
    }

    /// 180 then 200 (with SDP) to a new INVITE for pair `p`'s callee.
    fn answer_invite(&mut self, p: usize, invite: &Message, from: SocketAddr) {
        let now = Instant::now();
        self.answers += 1;
        let tag = self.answers;
        self.set_uas(p, UasState::Answered);
        let s = &mut self.uas[p];
        s.call_id.clear();
        s.call_id.push_str(invite.call_id());
        s.peer = from;
        self.scratch.clear();
        invite_response(
            invite,
            180,
            "Ringing",
            (&s.callee, tag),
            self.local,
            None,
            &mut self.scratch,
        );
        invite_response(
            invite,
            200,
            "OK",
            (&s.callee, tag),
            self.local,
            Some(&self.sdp),
            &mut s.response,
        );
        s.interval = T1;
        s.retx_at = now + T1;
        s.give_up = now + UAS_GIVE_UP;
        s.generation = s.generation.wrapping_add(1);
        let at = s.retx_at;
        let ringing = std::mem::take(&mut self.scratch);
        self.send(&ringing, from);
        self.scratch = ringing;
        let ok = std::mem::take(&mut self.uas[p].response);
        self.send(&ok, from);
        self.uas[p].response = ok;
        self.push_timer(SIDE_UAS, p, at);
    }

    fn uas_timer(&mut self, p: usize, generation: u32, now: Instant) {
        let s = &self.uas[p];
        if s.generation != generation || s.state != UasState::Answered {
            return;
        }
        if now >= s.give_up {
            self.set_uas(p, UasState::Idle);
            let s = &mut self.uas[p];
            s.generation = s.generation.wrapping_add(1);
            return;
        }
        let s = &mut self.uas[p];
        s.interval = (s.interval * 2).min(T2);
        s.retx_at = now + s.interval;
        let (at, peer) = (s.retx_at, s.peer);
        let data = std::mem::take(&mut s.response);
        self.send(&data, peer);
        self.uas[p].response = data;
        self.report.retransmits += 1;
        self.push_timer(SIDE_UAS, p, at);
    }
}

/// A response to `invite` with To tag `t{tag}`, the Record-Route copied (RFC 3261
/// §12.1.1), our Contact, and `sdp` as body if any, appended to `out`
/// (cleared first).
fn invite_response(
    invite: &Message,
    status: u16,
    reason: &str,
    (callee, tag): (&str, u64),
    local: SocketAddr,
    sdp: Option<&str>,
    out: &mut Vec<u8>,
) {
    let src = invite.as_bytes();
    out.clear();
    let _ = write!(out, "SIP/2.0 {status} {reason}\r\n");
    let has_tag = invite.to().tag().is_some();
    for h in invite.header_fields() {
        match h.name {
            HeaderName::To if !has_tag => {
                out.extend_from_slice(&src[h.line().start as usize..h.value.end as usize]);
                let _ = write!(out, ";tag=t{tag}\r\n");
            }
            HeaderName::Via
            | HeaderName::RecordRoute
            | HeaderName::From
            | HeaderName::To
            | HeaderName::CallId
            | HeaderName::CSeq => out.extend_from_slice(h.line().of(src)),
            _ => {}
        }
    }
    let _ = write!(out, "Contact: <sip:{callee}@{local}>\r\n");
    match sdp {
        Some(body) => {
            let _ = write!(
                out,
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
        None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
    }
}

/// A duration in whole microseconds, saturating.
fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}
