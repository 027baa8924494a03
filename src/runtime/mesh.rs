//! The channels between cores: one bounded inbox per core, which every
//! other core sends into.
//!
//! flume rather than glommio's channel mesh, for two reasons. A glommio
//! shared channel's receiver wakes the sending executor after every message
//! it takes (to say there is room), so each hand-off woke two sleeping
//! cores where one is needed; a flume receiver wakes only a sender that
//! waits for room. And a core's index is the one it was started with, not
//! the order in which the cores joined a mesh, so it matches the core's
//! socket in the SO_REUSEPORT group that the steering program indexes
//! ([`super::steer`]).

use std::sync::Arc;

use flume::{Receiver, SendError, Sender, TrySendError};

use super::core::CoreMsg;

/// One core's handle on the mesh: it can send to any core's inbox.
#[derive(Clone)]
pub(crate) struct Mesh {
    inboxes: Arc<[Sender<CoreMsg>]>,
}

impl Mesh {
    /// A mesh of `cores` inboxes of `capacity` messages each: the handle
    /// every core sends with, and each core's inbox, by index.
    pub(crate) fn build(cores: usize, capacity: usize) -> (Mesh, Vec<Receiver<CoreMsg>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..cores).map(|_| flume::bounded(capacity)).unzip();
        let mesh = Mesh {
            inboxes: senders.into(),
        };
        (mesh, receivers)
    }

    /// Queues `msg` for `core` if its inbox has room; gives it back if not
    /// (or if there is no such core).
    #[allow(clippy::result_large_err)] // the message comes back to be answered (503) or retried
    pub(crate) fn try_send_to(
        &self,
        core: usize,
        msg: CoreMsg,
    ) -> Result<(), TrySendError<CoreMsg>> {
        match self.inboxes.get(core) {
            Some(inbox) => inbox.try_send(msg),
            None => Err(TrySendError::Disconnected(msg)),
        }
    }

    /// Queues `msg` for `core`, waiting for room.
    #[allow(clippy::result_large_err)] // as for try_send_to
    pub(crate) async fn send_to(
        &self,
        core: usize,
        msg: CoreMsg,
    ) -> Result<(), SendError<CoreMsg>> {
        match self.inboxes.get(core) {
            Some(inbox) => inbox.send_async(msg).await,
            None => Err(SendError(msg)),
        }
    }
}
