//! Sockets made with socket2 so options glommio does not expose can be set:
//! SO_REUSEPORT (one UDP socket per core on the same address) and a
//! receive buffer large enough to ride out bursts (RUNTIME-NOTES: the
//! default 208 KiB dropped 40k datagrams in 4 s at 100k pps; 4 MiB none).

use std::io;
use std::net::SocketAddr;

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
/// picks a port and the others share it.
pub fn udp_per_core(addr: SocketAddr, cores: usize) -> io::Result<(SocketAddr, Vec<Socket>)> {
    let first = udp_reuseport(addr)?;
    let bound = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("UDP socket has no IP address"))?;
    let mut sockets = vec![first];
    for _ in 1..cores {
        sockets.push(udp_reuseport(bound)?);
    }
    Ok((bound, sockets))
}
