//! The open-files limit, and how many TCP connections it leaves room for.
//!
//! Every SIP connection holds a file descriptor. A blade that accepts
//! connections until the process runs out of them can open nothing else:
//! not an outbound connection to an agent, not the admin port's next
//! client. So each core accepts at most its share of what the limit
//! leaves after a reserve, and refuses the rest at once.

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};

/// Descriptors kept for everything but accepted SIP connections (sockets,
/// io_uring rings, the admin port's clients, outbound connections to
/// agents): a quarter of the limit, but at least [`RESERVED_MIN`] (an idle
/// one-core blade holds about 15, and each admin client takes two) and at
/// most [`RESERVED_MAX`].
const RESERVED_MIN: u64 = 64;
const RESERVED_MAX: u64 = 1024;

/// The fewest connections a core accepts, however low the limit.
const MIN_PER_CORE: usize = 8;

/// Raises the soft open-files limit to the hard one, as servers do (the
/// usual soft default, 1024, is a few hundred phones). Returns the soft
/// limit in force afterwards; `None` if it cannot be read.
pub fn raise_open_files_limit() -> Option<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// The soft open-files limit in force, if it can be read.
pub fn open_files_limit() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// How many accepted connections an open-files `limit` leaves room for:
/// the limit less a reserve of a quarter, 64 to 1,024. `None` when the
/// limit is unknown or infinite.
pub fn connection_room(limit: Option<u64>) -> Option<usize> {
    let limit = limit.filter(|&l| l != RLIM_INFINITY)?;
    let reserve = (limit / 4).clamp(RESERVED_MIN, RESERVED_MAX);
    Some(usize::try_from(limit.saturating_sub(reserve)).unwrap_or(usize::MAX))
}

/// How many accepted connections each of `cores` cores may hold:
/// `configured` (`blade.max_tcp_connections`, for the whole blade) when
/// given, but never more than the descriptors leave `room` for (see
/// [`connection_room`]); unlimited when neither is known.
pub fn tcp_connections_per_core(
    configured: Option<usize>,
    room: Option<usize>,
    cores: usize,
) -> usize {
    let cores = cores.max(1);
    match (configured, room) {
        (Some(n), room) => n.min(room.unwrap_or(usize::MAX)).div_ceil(cores),
        (None, Some(room)) => (room / cores).max(MIN_PER_CORE),
        (None, None) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_leaves_a_reserve_and_is_shared_by_the_cores() {
        // A quarter of the limit, at least 64 and at most 1024.
        assert_eq!(connection_room(Some(64)), Some(0));
        assert_eq!(connection_room(Some(100)), Some(36));
        assert_eq!(connection_room(Some(1024)), Some(768));
        assert_eq!(connection_room(Some(20_000)), Some(18_976));
        assert_eq!(connection_room(Some(RLIM_INFINITY)), None);
        assert_eq!(connection_room(None), None);
        assert_eq!(tcp_connections_per_core(None, Some(768), 2), 384);
        // However low the limit, a core takes a few connections.
        assert_eq!(tcp_connections_per_core(None, Some(12), 4), MIN_PER_CORE);
        assert_eq!(tcp_connections_per_core(None, None, 2), usize::MAX);
    }

    #[test]
    fn a_configured_cap_is_shared_but_kept_within_the_room() {
        assert_eq!(tcp_connections_per_core(Some(3), Some(48), 1), 3);
        assert_eq!(tcp_connections_per_core(Some(101), None, 2), 51);
        assert_eq!(tcp_connections_per_core(Some(1000), Some(48), 2), 24);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let raised = raise_open_files_limit();
        assert_eq!(raised, open_files_limit());
        assert_eq!(
            raised,
            getrlimit(Resource::RLIMIT_NOFILE)
                .ok()
                .map(|(_, hard)| hard)
        );
    }
}
