//! Who is connected: user → open sockets on this node, and delivery of encoded frames to them.
//! Each socket has a bounded queue; a socket that lets it fill up is told to close (it
//! catches up on reconnect) rather than slowing down everyone else.

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicU64, Ordering},
};

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use crate::model::UserId;

/// An encoded text frame; cloning it shares the bytes, so one encoding serves all recipients.
pub type Frame = Utf8Bytes;

/// Identifies one socket among a user's sockets on this node.
pub type SocketId = u64;

/// Why the server closes a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Its outgoing queue filled up: the client reads too slowly.
    TooSlow,
    /// It sent a frame above the configured maximum.
    TooBig,
    /// Nothing (not even a pong) came from it for too long.
    Idle,
    TokenExpired,
    ShuttingDown,
    /// The client closed it or the connection broke: nothing left to say.
    PeerGone,
}

impl CloseReason {
    /// The close code sent to the client, if one can still be sent.
    pub fn code(self) -> Option<(u16, &'static str)> {
        match self {
            Self::TooSlow => Some((1013, "too slow: reconnect to catch up")),
            Self::TooBig => Some((1009, "frame too large")),
            Self::Idle => Some((1001, "idle timeout")),
            Self::TokenExpired => Some((4001, "token expired")),
            Self::ShuttingDown => Some((1001, "server shutting down")),
            Self::PeerGone => None,
        }
    }
}

/// Asks a socket's session to close, remembering the first reason given.
#[derive(Debug, Default)]
pub struct CloseSignal {
    token: CancellationToken,
    reason: OnceLock<CloseReason>,
}

impl CloseSignal {
    pub fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Resolves once `close` was called, with its first reason.
    pub async fn closed(&self) -> CloseReason {
        self.token.cancelled().await;
        self.reason.get().copied().unwrap_or(CloseReason::PeerGone)
    }

    /// The reason given so far, or `fallback` when nobody asked to close.
    pub fn reason_or(&self, fallback: CloseReason) -> CloseReason {
        self.reason.get().copied().unwrap_or(fallback)
    }

    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }
}

struct SocketHandle {
    id: SocketId,
    queue: mpsc::Sender<Frame>,
    close: Arc<CloseSignal>,
}

#[derive(Default)]
pub struct Hub {
    users: DashMap<UserId, Vec<SocketHandle>>,
    next_id: AtomicU64,
}

impl Hub {
    /// Registers a socket; returns its id and whether it is the user's first on this node.
    pub fn attach(
        &self,
        user: UserId,
        queue: mpsc::Sender<Frame>,
        close: Arc<CloseSignal>,
    ) -> (SocketId, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut sockets = self.users.entry(user).or_default();
        sockets.push(SocketHandle { id, queue, close });
        (id, sockets.len() == 1)
    }

    /// Forgets a socket; returns whether it was the user's last on this node.
    pub fn detach(&self, user: UserId, id: SocketId) -> bool {
        self.users
            .remove_if_mut(&user, |_, sockets| {
                sockets.retain(|s| s.id != id);
                sockets.is_empty()
            })
            .is_some()
    }

    pub fn is_online(&self, user: UserId) -> bool {
        self.users.contains_key(&user)
    }

    /// Queues `frame` on every socket of `user`; returns how many sockets took it.
    pub fn send(&self, user: UserId, frame: &Frame) -> usize {
        let Some(sockets) = self.users.get(&user) else {
            return 0;
        };
        sockets.iter().filter(|socket| push(socket, frame)).count()
    }

    /// How many users have at least one socket open on this node.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// How many sockets are open on this node.
    pub fn socket_count(&self) -> usize {
        self.users.iter().map(|entry| entry.len()).sum()
    }
}

fn push(socket: &SocketHandle, frame: &Frame) -> bool {
    match socket.queue.try_send(frame.clone()) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            socket.close.close(CloseReason::TooSlow);
            false
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn first_and_last_socket_are_reported() {
        let hub = Hub::default();
        let user = UserId(Uuid::new_v4());
        let (tx, _rx) = mpsc::channel(4);
        let (a, first) = hub.attach(user, tx.clone(), Arc::default());
        let (b, second_is_first) = hub.attach(user, tx, Arc::default());
        assert!(first && !second_is_first);
        assert!(!hub.detach(user, a));
        assert!(hub.is_online(user));
        assert!(hub.detach(user, b));
        assert!(!hub.is_online(user));
    }

    #[test]
    fn a_full_queue_closes_the_socket_without_blocking() {
        let hub = Hub::default();
        let user = UserId(Uuid::new_v4());
        let (tx, _rx) = mpsc::channel(1);
        let close = Arc::new(CloseSignal::default());
        hub.attach(user, tx, close.clone());
        let frame = Frame::from("{}");
        assert_eq!(hub.send(user, &frame), 1);
        assert_eq!(hub.send(user, &frame), 0);
        assert!(close.is_closed());
    }
}
