//! Sockets made with socket2 so options glommio does not expose can be set:
//! SO_REUSEPORT (one UDP socket per core on the same address) and a
//! receive buffer large enough to ride out bursts (RUNTIME-NOTES: the
//! default 208 KiB dropped 40k datagrams in 4 s at 100k pps; 4 MiB none).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// Receive and send buffer asked of the kernel for SIP UDP sockets.
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

/// A UDP socket bound to `addr` with SO_REUSEPORT and large buffers.
pub fn udp_reuseport(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    // The kernel caps these at net.core.rmem_max / wmem_max; a smaller
    // buffer is not an error, only a risk under bursts.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Binds one UDP socket per core on `addr`. With port 0 the first socket
/// picks a port and the others share it. The sockets join the SO_REUSEPORT
/// group in core order, which is what lets the steering program
/// (`runtime::steer`) name a core by its socket's index.
pub fn udp_per_core(addr: SocketAddr, cores: usize) -> io::Result<(SocketAddr, Vec<Socket>)> {
    let (first, bound) = first_udp_socket(addr)?;
    let mut sockets = vec![first];
    for _ in 1..cores {
        sockets.push(udp_reuseport(bound)?);
    }
    if cores > 1 {
        // Without steering every request still reaches its core, one hop
        // later; so a kernel that refuses the program is worth a warning,
        // not a failed start.
        if let Err(e) = super::steer::attach(&sockets[0], &super::steer::program(cores)) {
            tracing::warn!(
                "cannot steer INVITEs to their cores ({e}); the kernel's hash places them"
            );
        }
    }
    Ok((bound, sockets))
}

/// Binds the first UDP socket on `addr`. The SIP address serves TCP too,
/// so a port the kernel picks (port 0) must also be free for TCP: one
/// that a TCP connection of this host happens to hold is given back and
/// another one drawn.
fn first_udp_socket(addr: SocketAddr) -> io::Result<(Socket, SocketAddr)> {
    const TRIES: usize = 16;
    for _ in 0..TRIES {
        let socket = udp_reuseport(addr)?;
        let bound = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("UDP socket has no IP address"))?;
        if addr.port() != 0 || std::net::TcpListener::bind(bound).is_ok() {
            return Ok((socket, bound));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no port free for both UDP and TCP",
    ))
}

/// How long [`ensure_free`] waits for an address that is held: the kernel
/// closes an exited process's io_uring files in a worker of its own, so a
/// socket it was receiving on may stay bound for a moment after the exit.
const FREE_WAIT: Duration = Duration::from_secs(1);

/// Fails with `AddrInUse` when another socket holds UDP `addr`. SO_REUSEPORT
/// lets this blade's cores share an address, and would as quietly let a
/// second process on the same address take part of its traffic; a probe
/// bound without it finds any holder. (Only UDP is probed: every blade
/// holds its SIP address over UDP, and a TCP probe would also trip over
/// the TIME_WAIT connections a restarted blade leaves behind.) Port 0 is
/// always free.
pub fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let deadline = Instant::now() + FREE_WAIT;
    loop {
        match std::net::UdpSocket::bind(addr).map(drop) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_address_is_not_free_and_a_released_one_is() {
        let held = udp_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = held.local_addr().unwrap().as_socket().unwrap();
        // Our own per-core sockets could join it; a probe cannot.
        let err = ensure_free(addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(held);
        ensure_free(addr).unwrap();
        ensure_free("127.0.0.1:0".parse().unwrap()).unwrap();
    }
}
