//! Kernel-side steering of a call's first request to the core that owns it.
//!
//! Every core has a UDP socket on the blade's SIP address (SO_REUSEPORT),
//! and by default the kernel picks one by a hash of the 4-tuple: all the
//! requests of one trunk, SBC or sipp socket land on one core, and each
//! INVITE for an agent another core owns is handed over the channel mesh,
//! which wakes that core (`core.rs`; BENCHMARKS.md measures the cost). A
//! classic BPF program attached to the group (SO_ATTACH_REUSEPORT_CBPF)
//! reads the Request-URI user of an INVITE, CANCEL or ACK, hashes it as
//! [`shard_of`](crate::proxy::route::shard_of) does, and picks the owning
//! core's socket; the kernel's hash places everything else.
//!
//! Steering only saves the hop: each core still checks
//! [`owner_core`](crate::proxy::route::owner_core) and hands over what is
//! not its own, so a datagram the program misplaces costs what it costs
//! today and is never lost.

use std::io;
use std::os::fd::AsRawFd;

use libc::{
    BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_IMM, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_LDX, BPF_MISC,
    BPF_MOD, BPF_MUL, BPF_RET, BPF_TAX, BPF_TXA, BPF_W, BPF_X, BPF_XOR, sock_filter,
};
use socket2::Socket;

use crate::proxy::route::{SHARD_HASH_BASIS, SHARD_HASH_PRIME};

/// The longest Request-URI user the program hashes; a longer one is left
/// to the kernel's hash. Extensions and badge numbers are far shorter, and
/// classic BPF jumps reach at most 255 instructions ahead.
pub const MAX_USER: u32 = 32;

/// Where the Request-URI user starts in `INVITE sip:` and `CANCEL sip:`
/// (both 11 bytes, so one hashing block serves both methods) ...
const LONG_METHOD_USER: u32 = 11;
/// ... and in `ACK sip:`.
const ACK_USER: u32 = 8;

/// What the program returns for a datagram it does not place: an index
/// past the group's sockets, so the kernel falls back to its hash.
pub const UNPLACED: u32 = u32::MAX;

/// Instructions before the first hashing block: the method and scheme tests.
const PROLOGUE: usize = 12;
/// Instructions per hashed byte: load, two end tests, xor, multiply, move.
const PER_BYTE: usize = 6;
/// Offset in a hashing block of its `ret UNPLACED`: after the hash's
/// initial value, the per-byte steps, and the end test of the byte after
/// the longest user.
const BLOCK_FALLBACK: usize = 1 + PER_BYTE * MAX_USER as usize + 2;
/// Length of a hashing block: then the three instructions that turn the
/// hash into a socket index.
const BLOCK: usize = BLOCK_FALLBACK + 1 + 3;

/// Where the block for INVITE and CANCEL starts.
const LONG_METHOD_BLOCK: usize = PROLOGUE;
/// That block's `ret UNPLACED`, where the prologue sends what it does not
/// place.
const FALLBACK: usize = LONG_METHOD_BLOCK + BLOCK_FALLBACK;
/// Where the block for ACK starts.
const ACK_BLOCK: usize = PROLOGUE + BLOCK;

fn word(bytes: &[u8; 4]) -> u32 {
    // Classic BPF word loads are big-endian.
    u32::from_be_bytes(*bytes)
}

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A conditional jump at index `at` to `yes` or `no`, both forward.
fn jump(at: usize, code: u32, k: u32, yes: usize, no: usize) -> sock_filter {
    // Cannot fail: every target is a fixed layout position, the farthest
    // 204 instructions ahead (the method test to FALLBACK), under 255. The
    // tests build the program for 2 to 16 cores, so a layout change that
    // broke this would fail them.
    let offset = |to: usize| {
        u8::try_from(to - at - 1).unwrap_or_else(|_| unreachable!("jump from {at} to {to}"))
    };
    sock_filter {
        code: code as u16,
        jt: offset(yes),
        jf: offset(no),
        k,
    }
}

/// Jump if A equals the constant.
const JEQ: u32 = BPF_JMP | BPF_JEQ | BPF_K;

/// The steering program for a group of `cores` sockets, bound in core
/// order (socket `i` is core `i`'s).
pub fn program(cores: usize) -> Vec<sock_filter> {
    let cores = u32::try_from(cores.max(1)).unwrap_or(u32::MAX);
    let load_word = |at| stmt(BPF_LD | BPF_W | BPF_ABS, at);
    let mut p = Vec::with_capacity(ACK_BLOCK + BLOCK);
    // The method, as words: "INVI" "TE s", "CANC" "EL s" or "ACK ";
    // then the scheme: only `sip:` (a `sips:` URI is left to the hash).
    p.push(load_word(0));
    p.push(jump(1, JEQ, word(b"INVI"), 4, 2));
    p.push(jump(2, JEQ, word(b"CANC"), 6, 3));
    p.push(jump(3, JEQ, word(b"ACK "), 10, FALLBACK));
    p.push(load_word(4));
    p.push(jump(5, JEQ, word(b"TE s"), 8, FALLBACK));
    p.push(load_word(4));
    p.push(jump(7, JEQ, word(b"EL s"), 8, FALLBACK));
    p.push(load_word(7));
    p.push(jump(9, JEQ, word(b"sip:"), LONG_METHOD_BLOCK, FALLBACK));
    p.push(load_word(4));
    p.push(jump(11, JEQ, word(b"sip:"), ACK_BLOCK, FALLBACK));
    debug_assert_eq!(p.len(), LONG_METHOD_BLOCK);
    hash_block(&mut p, LONG_METHOD_USER, cores);
    debug_assert_eq!(p.len(), ACK_BLOCK);
    hash_block(&mut p, ACK_USER, cores);
    p
}

/// Appends a block that hashes the user starting at byte `user` as
/// `shard_of` does (FNV-1a, the hash in X) and returns the hash modulo
/// `cores`, or [`UNPLACED`] when no `@` ends the user in time or a `:`
/// comes first. A `:` before any `@` is a Request-URI without a user
/// (`sip:10.0.0.3:5062`, a terminal's own Contact, which in-dialog
/// requests such as the 2xx's ACK often name) or one with a password
/// (which RFC 3261 §19.1.1 advises against): hashing what comes before
/// it would place an ACK by its host, away from the kernel-hashed
/// requests of its dialog, and let a later INFO overtake it.
fn hash_block(p: &mut Vec<sock_filter>, user: u32, cores: u32) {
    let start = p.len();
    let (fallback, done) = (start + BLOCK_FALLBACK, start + BLOCK_FALLBACK + 1);
    p.push(stmt(BPF_LDX | BPF_W | BPF_IMM, SHARD_HASH_BASIS));
    for i in 0..=MAX_USER {
        let at = p.len();
        p.push(stmt(BPF_LD | BPF_B | BPF_ABS, user + i));
        // The user part ends at the `@`; a `:` first means no user.
        let next = if i == MAX_USER { fallback } else { at + 2 };
        p.push(jump(at + 1, JEQ, u32::from(b'@'), done, next));
        if i == MAX_USER {
            break;
        }
        p.push(jump(at + 2, JEQ, u32::from(b':'), fallback, at + 3));
        p.push(stmt(BPF_ALU | BPF_XOR | BPF_X, 0));
        p.push(stmt(BPF_ALU | BPF_MUL | BPF_K, SHARD_HASH_PRIME));
        p.push(stmt(BPF_MISC | BPF_TAX, 0));
    }
    debug_assert_eq!(p.len(), fallback);
    p.push(stmt(BPF_RET | BPF_K, UNPLACED));
    p.push(stmt(BPF_MISC | BPF_TXA, 0));
    p.push(stmt(BPF_ALU | BPF_MOD | BPF_K, cores));
    p.push(stmt(BPF_RET | BPF_A, 0));
    debug_assert_eq!(p.len(), start + BLOCK);
}

/// Attaches `program` to the SO_REUSEPORT group `socket` belongs to.
#[allow(unsafe_code)]
pub fn attach(socket: &Socket, program: &[sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    let size = libc::socklen_t::try_from(std::mem::size_of::<libc::sock_fprog>())
        .map_err(|_| io::Error::other("sock_fprog size"))?;
    // SAFETY: `fprog` is a valid `sock_fprog` whose `filter` points at
    // `program.len()` instructions that outlive the call; the kernel only
    // reads them (it copies the program during the call and keeps no
    // pointer), and `size` is the size of the value passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            size,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::route::shard_of;
    use proptest::prelude::*;

    /// Runs a program the way the kernel does over a UDP payload, for the
    /// instructions [`program`] uses; a load past the end returns 0.
    fn run(program: &[sock_filter], packet: &[u8]) -> u32 {
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        loop {
            let f = program[pc];
            pc += 1;
            let k = f.k as usize;
            match u32::from(f.code) {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    let Some(b) = packet.get(k..k + 4) else {
                        return 0;
                    };
                    a = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                }
                c if c == libc::BPF_LD | libc::BPF_B | libc::BPF_ABS => {
                    let Some(&b) = packet.get(k) else { return 0 };
                    a = u32::from(b);
                }
                c if c == libc::BPF_LDX | libc::BPF_W | libc::BPF_IMM => x = f.k,
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += usize::from(if a == f.k { f.jt } else { f.jf });
                }
                c if c == libc::BPF_ALU | libc::BPF_XOR | libc::BPF_X => a ^= x,
                c if c == libc::BPF_ALU | libc::BPF_MUL | libc::BPF_K => {
                    a = a.wrapping_mul(f.k);
                }
                c if c == libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K => a %= f.k,
                c if c == libc::BPF_MISC | libc::BPF_TAX => x = a,
                c if c == libc::BPF_MISC | libc::BPF_TXA => a = x,
                c if c == libc::BPF_RET | libc::BPF_K => return f.k,
                c if c == libc::BPF_RET | libc::BPF_A => return a,
                other => panic!("instruction {other:#x} not modelled"),
            }
        }
    }

    fn invite(method: &str, uri: &str) -> Vec<u8> {
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
             Max-Forwards: 70\r\nTo: <{uri}>\r\nFrom: <sip:9@cc.example>;tag=1\r\n\
             Call-ID: c\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn invites_cancels_and_acks_go_to_the_core_of_their_user() {
        for cores in 2..=9 {
            let p = program(cores);
            for user in [
                "1001",
                "1002",
                "7",
                "agent.42",
                "a-very-long-badge-number-1234567",
            ] {
                let want = shard_of(user.as_bytes(), cores) as u32;
                for method in ["INVITE", "CANCEL", "ACK"] {
                    let uri = format!("sip:{user}@cc.example");
                    assert_eq!(run(&p, &invite(method, &uri)), want, "{method} {uri}");
                    let uri = format!("sip:{user}@10.0.0.9:5062;transport=udp");
                    assert_eq!(run(&p, &invite(method, &uri)), want, "{method} {uri}");
                }
            }
        }
    }

    #[test]
    fn what_it_cannot_place_is_left_to_the_kernel() {
        let p = program(4);
        let long = "1".repeat(MAX_USER as usize + 1);
        for (method, uri) in [
            ("REGISTER", "sip:cc.example"),
            ("BYE", "sip:1002@cc.example"),
            ("OPTIONS", "sip:1002@cc.example"),
            ("INVITE", "sips:1002@cc.example"),
            ("INVITE", "tel:+15551234"),
            ("INVITE", &format!("sip:{long}@cc.example")),
            ("ACK", &format!("sip:{long}@cc.example")),
            ("ACK", "sips:1002@cc.example"),
            // No user: a terminal's own Contact, with or without a port.
            ("ACK", "sip:10.0.0.9:5062;transport=udp"),
            ("ACK", "sip:10.0.0.9"),
            ("INVITE", "sip:10.0.0.9:5062"),
            // A password (RFC 3261 §19.1.1: not recommended).
            ("ACK", "sip:1002:secret@10.0.0.9:5062"),
        ] {
            assert_eq!(run(&p, &invite(method, uri)), UNPLACED, "{method} {uri}");
        }
        // A response, and bytes too short to hold a method.
        assert_eq!(run(&p, b"SIP/2.0 200 OK\r\n\r\n"), UNPLACED);
        assert_eq!(run(&p, b"INV"), 0);
    }

    proptest! {
        #[test]
        fn any_short_user_is_placed_as_shard_of_places_it(
            user in "[0-9a-zA-Z._~!*()-]{1,32}",
            cores in 2usize..17,
            method in prop::sample::select(vec!["INVITE", "CANCEL", "ACK"]),
        ) {
            let uri = format!("sip:{user}@cc.example");
            prop_assert_eq!(
                run(&program(cores), &invite(method, &uri)),
                shard_of(user.as_bytes(), cores) as u32
            );
        }
    }

    /// The kernel itself: three sockets in a group, INVITEs and ACKs from
    /// one source socket (which the 4-tuple hash would put on one core),
    /// each received by the socket of its user's core.
    #[test]
    fn the_kernel_delivers_each_request_to_its_users_core() {
        use std::net::UdpSocket;
        use std::time::Duration;

        let cores = 3;
        let (addr, sockets) =
            super::super::socket::udp_per_core("127.0.0.1:0".parse().unwrap(), cores).unwrap();
        let receivers: Vec<UdpSocket> = sockets.into_iter().map(UdpSocket::from).collect();
        for r in &receivers {
            r.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
        }
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let users: Vec<String> = (1000..1030).map(|n| n.to_string()).collect();
        for user in &users {
            for method in ["INVITE", "ACK"] {
                let packet = invite(method, &format!("sip:{user}@cc.example"));
                sender.send_to(&packet, addr).unwrap();
            }
        }
        let mut buf = [0u8; 2048];
        let mut placed = 0;
        for (core, r) in receivers.iter().enumerate() {
            while let Ok(n) = r.recv(&mut buf) {
                let text = std::str::from_utf8(&buf[..n]).unwrap();
                let user = &text[text.find(':').unwrap() + 1..text.find('@').unwrap()];
                assert_eq!(shard_of(user.as_bytes(), cores), core, "{user}");
                placed += 1;
            }
        }
        assert_eq!(placed, 2 * users.len());
    }
}
