//! Whether a core has fallen behind its UDP receive queue, so that it
//! sheds new work (503 with Retry-After, SPEC §5) before the kernel, once
//! the buffer is full, drops datagrams at random and with them the calls
//! already under way. The kernel says how much memory the queued
//! datagrams hold (`SO_MEMINFO`); the core looks every few datagrams, so
//! a core that keeps up pays one `getsockopt` per [`EVERY_KEEPING_UP`].
//!
//! The kernel gives back a UDP queue's memory in batches (a quarter of the
//! buffer at a time, or all of it once the reader has emptied the queue),
//! so the looks made while draining see more in use than is queued, and
//! the one that would see the queue empty is never made when no datagram
//! follows. So while shedding, the core also looks every [`WATCH_EVERY`]
//! whether datagrams come or not (the requests other cores hand it, and
//! TCP ones, come by other ways), and a datagram that comes after a pause
//! ([`PAUSE`]) is looked at at once: a burst's end does not leave the core
//! answering 503 to the next requests, however long after they come.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Shedding starts above this share of the receive buffer in use…
const ON: f64 = 0.5;
/// …and stops below this one: apart, so it does not flap.
const OFF: f64 = 0.125;

/// Datagrams between two looks at the queue while keeping up…
const EVERY_KEEPING_UP: u32 = 64;
/// …and while shedding, so that it stops soon after the queue drains.
const EVERY_SHEDDING: u32 = 8;
/// While shedding, a datagram received this long after the last look is
/// looked at at once: a core that is behind reads back to back, so a gap
/// means the queue ran dry (and it costs one look per gap at most).
const PAUSE: Duration = Duration::from_millis(1);
/// While shedding, the queue is also looked at this often, datagrams or
/// not.
pub const WATCH_EVERY: Duration = Duration::from_millis(10);

/// One socket's backlog watch.
pub(crate) struct Backlog {
    fd: RawFd,
    since_look: u32,
    last_look: Option<Instant>,
    shedding: bool,
    /// Whether a task looks every [`WATCH_EVERY`] (while shedding).
    watched: bool,
}

impl Backlog {
    pub fn new(fd: RawFd) -> Backlog {
        Backlog {
            fd,
            since_look: 0,
            last_look: None,
            shedding: false,
            watched: false,
        }
    }

    /// Whether the core sheds new requests.
    pub fn shedding(&self) -> bool {
        self.shedding
    }

    /// Whether a task that looks every [`WATCH_EVERY`] is to be started
    /// now (it was not watched); [`Backlog::unwatched`] when it ends.
    pub fn watch(&mut self) -> bool {
        !std::mem::replace(&mut self.watched, true)
    }

    /// The watching task has ended.
    pub fn unwatched(&mut self) {
        self.watched = false;
    }

    /// A datagram was received (`now` tells the time): the new state when
    /// shedding starts or stops. The clock is read only while shedding or
    /// for a look, not for every datagram of a core that keeps up.
    pub fn received(&mut self, now: impl Fn() -> Instant) -> Option<bool> {
        self.since_look += 1;
        if self.shedding {
            let now = now();
            let paused = self
                .last_look
                .is_none_or(|last| now.saturating_duration_since(last) >= PAUSE);
            if self.since_look < EVERY_SHEDDING && !paused {
                return None;
            }
            return self.look(now);
        }
        if self.since_look < EVERY_KEEPING_UP {
            return None;
        }
        self.look(now())
    }

    /// Looks at the queue at `now`: the new state when shedding starts or
    /// stops.
    pub fn look(&mut self, now: Instant) -> Option<bool> {
        self.since_look = 0;
        self.last_look = Some(now);
        let (queued, size) = queue_memory(self.fd)?;
        let next = shedding(self.shedding, queued, size);
        (next != self.shedding).then(|| {
            self.shedding = next;
            next
        })
    }
}

/// Whether to shed with `queued` bytes of a `size`-byte buffer in use.
fn shedding(now: bool, queued: u32, size: u32) -> bool {
    let fill = f64::from(queued) / f64::from(size.max(1));
    if now { fill > OFF } else { fill > ON }
}

/// `SO_MEMINFO`, as in Linux's asm-generic socket.h (x86_64 and aarch64;
/// the libc crate does not export it).
const SO_MEMINFO: libc::c_int = 55;

/// The memory the socket's queued datagrams hold, and its receive buffer's
/// size, both as the kernel counts them (`truesize`, the doubled
/// `SO_RCVBUF`): it drops datagrams once the first passes the second.
#[allow(unsafe_code)]
fn queue_memory(fd: RawFd) -> Option<(u32, u32)> {
    // Up to SK_MEMINFO_DROPS, the last the kernel defines today; an older
    // kernel writes fewer (and says so in `len`).
    let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes, which is all the
    // kernel writes; the call has no other effect.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0).then(|| {
        (
            info[libc::SK_MEMINFO_RMEM_ALLOC as usize],
            info[libc::SK_MEMINFO_RCVBUF as usize],
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shedding_starts_at_half_full_and_stops_near_empty() {
        let size = 8 << 20;
        assert!(!shedding(false, size / 4, size));
        assert!(shedding(false, size / 2 + 1, size));
        assert!(shedding(true, size / 4, size), "still behind");
        assert!(!shedding(true, size / 10, size));
        assert!(!shedding(false, 0, 0));
    }

    /// A small socket on 127.0.9.1 whose queue is more than half full.
    fn flooded() -> (socket2::Socket, std::net::UdpSocket) {
        let addr: std::net::SocketAddr = "127.0.9.1:0".parse().unwrap();
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        socket.set_recv_buffer_size(64 << 10).unwrap();
        socket.bind(&addr.into()).unwrap();
        socket.set_nonblocking(true).unwrap();
        let to = socket.local_addr().unwrap().as_socket().unwrap();
        let sender = std::net::UdpSocket::bind(addr).unwrap();
        for _ in 0..200 {
            let _ = sender.send_to(&[0u8; 1000], to);
        }
        std::thread::sleep(Duration::from_millis(20));
        (socket, sender)
    }

    #[test]
    fn shedding_stops_on_the_first_datagram_after_the_queue_ran_dry() {
        use std::os::fd::AsRawFd;
        let (socket, _sender) = flooded();
        let mut backlog = Backlog::new(socket.as_raw_fd());
        let start = Instant::now();
        let starts = (0..EVERY_KEEPING_UP).filter_map(|_| backlog.received(|| start));
        assert_eq!(starts.collect::<Vec<_>>(), [true], "more than half full");
        // Back to back while behind: looked at every few datagrams only.
        assert_eq!(backlog.received(|| start), None);
        // The core reads the queue dry (the kernel gives its memory back
        // once the queue is empty); then the burst is over.
        let mut buf = [std::mem::MaybeUninit::new(0u8); 2048];
        while socket.recv(&mut buf).is_ok() {}
        // The next request comes a while later, alone: it is not shed
        // (it used to wait for EVERY_SHEDDING datagrams, answering 503 to
        // all but the last however long after the burst they came).
        let later = start + Duration::from_secs(5);
        assert_eq!(backlog.received(|| later), Some(false));
        assert_eq!(backlog.received(|| later), None);
    }

    #[test]
    fn the_kernel_reports_a_sockets_queue() {
        use std::os::fd::AsRawFd;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (queued, size) = queue_memory(socket.as_raw_fd()).unwrap();
        assert_eq!(queued, 0);
        assert!(size > 0);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender
            .send_to(&[0u8; 500], socket.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (queued, _) = queue_memory(socket.as_raw_fd()).unwrap();
        assert!(queued >= 500, "{queued}");
    }
}
