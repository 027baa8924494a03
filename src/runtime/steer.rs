//! Kernel-side steering of a call's first request to the core that owns it.
//!
//! Every core has a UDP socket on the blade's SIP address (SO_REUSEPORT),
//! and by default the kernel picks one by a hash of the 4-tuple: all the
//! requests of one trunk, SBC or sipp socket land on one core, and each
//! INVITE for an agent another core owns is handed over the channel mesh,
//! which wakes that core (`core.rs`; BENCHMARKS.md measures the cost). A
//! classic BPF program attached to the group (SO_ATTACH_REUSEPORT_CBPF)
//! reads the Request-URI user of an INVITE or CANCEL, hashes it as
//! [`shard_of`](crate::proxy::route::shard_of) does, and picks the owning
//! core's socket; the kernel's hash places everything else.
//!
//! Steering only saves the hop: each core still checks
//! [`owner_core`](crate::proxy::route::owner_core) and hands over what is
//! not its own, so a datagram the program misplaces costs what it costs
//! today and is never lost.

use std::io;
use std::os::fd::AsRawFd;

use libc::sock_filter;
use socket2::Socket;

use crate::proxy::route::{SHARD_HASH_BASIS, SHARD_HASH_PRIME};

/// The longest Request-URI user the program hashes; a longer one is left
/// to the kernel's hash. Extensions and badge numbers are far shorter, and
/// classic BPF jumps reach at most 255 instructions ahead.
pub const MAX_USER: u32 = 32;

/// Where the Request-URI user starts: `INVITE sip:` and `CANCEL sip:` are
/// both 11 bytes, so one hashing sequence serves both methods.
const USER_OFFSET: u32 = 11;

/// What the program returns for a datagram it does not place: an index
/// past the group's sockets, so the kernel falls back to its hash.
pub const UNPLACED: u32 = u32::MAX;

/// Instructions per hashed byte: load, two end tests, xor, multiply, move.
const PER_BYTE: usize = 6;
/// Instructions before the first hashed byte.
const PROLOGUE: usize = 10;
/// Index of `ret UNPLACED`, after the per-byte steps and the end test of
/// the byte after the longest user.
const FALLBACK: usize = PROLOGUE + PER_BYTE * MAX_USER as usize + 3;
/// Index of the sequence that turns the hash into a socket index.
const DONE: usize = FALLBACK + 1;

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

/// The steering program for a group of `cores` sockets, bound in core
/// order (socket `i` is core `i`'s).
pub fn program(cores: usize) -> Vec<sock_filter> {
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_IMM, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_LDX,
        BPF_MISC, BPF_MOD, BPF_MUL, BPF_RET, BPF_TAX, BPF_TXA, BPF_W, BPF_X, BPF_XOR,
    };
    let cores = u32::try_from(cores.max(1)).unwrap_or(u32::MAX);
    let jeq = BPF_JMP | BPF_JEQ | BPF_K;
    let mut p = Vec::with_capacity(DONE + 3);
    // The method, as two words: "INVI" "TE s" or "CANC" "EL s".
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, 0));
    p.push(jump(1, jeq, word(b"INVI"), 3, 2));
    p.push(jump(2, jeq, word(b"CANC"), 5, FALLBACK));
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, 4));
    p.push(jump(4, jeq, word(b"TE s"), 7, FALLBACK));
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, 4));
    p.push(jump(6, jeq, word(b"EL s"), 7, FALLBACK));
    // Then the scheme: only `sip:` (a `sips:` URI is left to the hash).
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, 7));
    p.push(jump(8, jeq, word(b"sip:"), 9, FALLBACK));
    // X holds the hash, FNV-1a over the user's bytes.
    p.push(stmt(BPF_LDX | BPF_W | BPF_IMM, SHARD_HASH_BASIS));
    debug_assert_eq!(p.len(), PROLOGUE);
    for i in 0..MAX_USER {
        let at = p.len();
        p.push(stmt(BPF_LD | BPF_B | BPF_ABS, USER_OFFSET + i));
        // The user part ends at the `@` (or the `:` of a password).
        p.push(jump(at + 1, jeq, u32::from(b'@'), DONE, at + 2));
        p.push(jump(at + 2, jeq, u32::from(b':'), DONE, at + 3));
        p.push(stmt(BPF_ALU | BPF_XOR | BPF_X, 0));
        p.push(stmt(BPF_ALU | BPF_MUL | BPF_K, SHARD_HASH_PRIME));
        p.push(stmt(BPF_MISC | BPF_TAX, 0));
    }
    let at = p.len();
    p.push(stmt(BPF_LD | BPF_B | BPF_ABS, USER_OFFSET + MAX_USER));
    p.push(jump(at + 1, jeq, u32::from(b'@'), DONE, at + 2));
    p.push(jump(at + 2, jeq, u32::from(b':'), DONE, FALLBACK));
    debug_assert_eq!(p.len(), FALLBACK);
    p.push(stmt(BPF_RET | BPF_K, UNPLACED));
    p.push(stmt(BPF_MISC | BPF_TXA, 0));
    p.push(stmt(BPF_ALU | BPF_MOD | BPF_K, cores));
    p.push(stmt(BPF_RET | BPF_A, 0));
    p
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
    fn invites_and_cancels_go_to_the_core_of_their_user() {
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
                for method in ["INVITE", "CANCEL"] {
                    let uri = format!("sip:{user}@cc.example");
                    assert_eq!(run(&p, &invite(method, &uri)), want, "{method} {uri}");
                    let uri = format!("sip:{user}:secret@10.0.0.9:5062;transport=udp");
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
            ("ACK", "sip:1002@cc.example"),
            ("BYE", "sip:1002@cc.example"),
            ("OPTIONS", "sip:1002@cc.example"),
            ("INVITE", "sips:1002@cc.example"),
            ("INVITE", "tel:+15551234"),
            ("INVITE", &format!("sip:{long}@cc.example")),
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
        ) {
            let uri = format!("sip:{user}@cc.example");
            prop_assert_eq!(
                run(&program(cores), &invite("INVITE", &uri)),
                shard_of(user.as_bytes(), cores) as u32
            );
        }
    }

    /// The kernel itself: three sockets in a group, INVITEs from one
    /// source socket (which the 4-tuple hash would put on one core), each
    /// received by the socket of its user's core.
    #[test]
    fn the_kernel_delivers_each_invite_to_its_users_core() {
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
            let packet = invite("INVITE", &format!("sip:{user}@cc.example"));
            sender.send_to(&packet, addr).unwrap();
        }
        let mut buf = [0u8; 2048];
        let mut placed = 0;
        for (core, r) in receivers.iter().enumerate() {
            while let Ok(n) = r.recv(&mut buf) {
                let text = std::str::from_utf8(&buf[..n]).unwrap();
                let user = &text["INVITE sip:".len()..text.find('@').unwrap()];
                assert_eq!(shard_of(user.as_bytes(), cores), core, "{user}");
                placed += 1;
            }
        }
        assert_eq!(placed, users.len());
    }
}
