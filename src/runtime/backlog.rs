//! Whether a core has fallen behind its UDP receive queue, so that it
//! sheds new work (503 with Retry-After, SPEC §5) before the kernel, once
//! the buffer is full, drops datagrams at random and with them the calls
//! already under way. The kernel says how much memory the queued
//! datagrams hold (`SO_MEMINFO`); the core looks every few datagrams, so
//! a core that keeps up pays one `getsockopt` per [`EVERY_KEEPING_UP`].

use std::os::fd::RawFd;

/// Shedding starts above this share of the receive buffer in use…
const ON: f64 = 0.5;
/// …and stops below this one: apart, so it does not flap.
const OFF: f64 = 0.125;

/// Datagrams between two looks at the queue while keeping up…
const EVERY_KEEPING_UP: u32 = 64;
/// …and while shedding, so that it stops soon after the queue drains.
const EVERY_SHEDDING: u32 = 8;

/// One socket's backlog watch.
pub(crate) struct Backlog {
    fd: RawFd,
    since_look: u32,
    shedding: bool,
}

impl Backlog {
    pub fn new(fd: RawFd) -> Backlog {
        Backlog {
            fd,
            since_look: 0,
            shedding: false,
        }
    }

    /// A datagram was received: the new state when shedding starts or
    /// stops.
    pub fn received(&mut self) -> Option<bool> {
        self.since_look += 1;
        let every = if self.shedding {
            EVERY_SHEDDING
        } else {
            EVERY_KEEPING_UP
        };
        if self.since_look < every {
            return None;
        }
        self.since_look = 0;
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
