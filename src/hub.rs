//! Who is connected: user → open sockets on this node, and delivery of encoded frames to them.
//! Each socket has a bounded queue of durable frames (inbox events, replies); a socket that
//! lets it fill up is told to close (it catches up on reconnect) rather than slowing down
//! everyone else. Ephemeral frames (typing, presence, unanswered calls, channel posts) never
//! enter that queue: each socket keeps only the latest one per [`EphemeralKey`], in a small
//! bounded set of slots, so another user cannot get a socket closed by flooding it with them.
//!
//! In cluster mode (`REDIS_URL`) the hub also hands every frame to the [`Broker`], which
//! publishes it for the nodes where the user may be connected, and delivers here what other
//! nodes publish for this node's users. Callers do not see the difference. Revocations
//! (closing a session's or a user's sockets) reach every node the same way.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::queue::TrySendError;

pub mod queue;

use crate::{
    broker::{Broker, Control},
    events::{CloseReason, EphemeralKey, Frame},
    model::{SessionId, UserId},
};

/// Identifies one socket among a user's sockets on this node.
pub type SocketId = u64;

/// Ephemeral frames waiting per socket; past this many distinct keys, the oldest is dropped.
const EPHEMERAL_SLOTS: usize = 128;

/// A socket's ephemeral frames not written yet, at most one per key: its writer takes them
/// when it has room (and within its per-recipient rate), so they never hold up or close it.
#[derive(Debug, Default)]
pub struct EphemeralSlots {
    pending: Mutex<VecDeque<(EphemeralKey, Frame)>>,
    ready: Notify,
}

impl EphemeralSlots {
    /// Keeps `frame` as the latest state of `key`, replacing an older one not yet written; an
    /// empty frame withdraws the state not yet written (see `Hub::withdraw_ephemeral`).
    fn put(&self, key: EphemeralKey, frame: Frame) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if frame.is_empty() {
            pending.retain(|(k, _)| *k != key);
            return;
        }
        if let Some(slot) = pending.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = frame;
        } else {
            if pending.len() >= EPHEMERAL_SLOTS {
                // Channel posts go first: their history is a REST call away, while a lost
                // state would stay wrong on the screen. Rings go last: a lost one is a call
                // never shown, while a lost typing or presence state is soon replaced.
                let rank = |key: &EphemeralKey| match key {
                    EphemeralKey::ChannelPost(_) => 0,
                    EphemeralKey::Call(_) => 2,
                    _ => 1,
                };
                let evicted =
                    (0..=2).find_map(|wanted| pending.iter().position(|(k, _)| rank(k) == wanted));
                if let Some(at) = evicted {
                    drop(pending.remove(at));
                }
                crate::metrics::ephemeral_dropped();
            }
            pending.push_back((key, frame));
        }
        drop(pending);
        self.ready.notify_one();
    }

    /// Takes up to `max` frames, oldest key first.
    pub fn take(&self, max: usize) -> Vec<Frame> {
        let Ok(mut pending) = self.pending.lock() else {
            return Vec::new();
        };
        let n = max.min(pending.len());
        pending.drain(..n).map(|(_, frame)| frame).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.lock().map_or(true, |p| p.is_empty())
    }

    /// Resolves when a frame was put since the last call (at once if one was meanwhile).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }
}

/// What a socket's writer is asked to do, in order.
#[derive(Debug)]
pub enum Outgoing {
    /// Write a frame that needs no bookkeeping (presence, typing, calls, replies).
    Frame(Frame),
    /// Write the user's inbox event number `seq` (a message or a read receipt), unless it was
    /// already written; an event that skips a number makes the writer fetch the missing ones.
    Inbox { seq: i64, frame: Frame },
    /// Write envelope number `seq` of the socket's device's queue, unless it was already
    /// written; one that skips a number makes the writer fetch the missing ones. Sockets of
    /// other devices never get it.
    Envelope { seq: i64, frame: Frame },
    /// Write again every inbox event after `since` (the client's `sync` frame).
    Resync { since: i64 },
    /// Write every inbox event after the last one written, up to the inbox's end now: pushes
    /// may have been lost (a fan-out outage, or a subscription that was not ready yet).
    Refill,
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
    /// The device the socket speaks for (1 for clients that name none): its envelopes.
    device: i64,
    queue: queue::Sender<Outgoing>,
    ephemeral: Arc<EphemeralSlots>,
    close: Arc<CloseSignal>,
}

/// Sockets reserved per user: taken before the upgrade, so parallel upgrades cannot exceed
/// the cap between the check and the attach.
type Reservations = DashMap<UserId, usize>;

/// A socket slot of a user, held from before the upgrade until the socket closes; dropping
/// it (the upgrade failed, or the socket closed) gives the slot back.
pub struct SocketSlot {
    reservations: Arc<Reservations>,
    user: UserId,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.reservations.remove_if_mut(&self.user, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

#[derive(Default)]
pub struct Hub {
    users: DashMap<UserId, Vec<SocketHandle>>,
    next_id: AtomicU64,
    /// Fan-out to the other nodes of a cluster; `None` on a single node.
    broker: Option<Broker>,
    /// The sockets opened with each session's tokens, to close them when it is revoked.
    sessions: DashMap<SessionId, TrackedSession>,
    reservations: Arc<Reservations>,
    /// Revocations applied on this node so far (see `revocation_mark`).
    revocations: AtomicU64,
}

/// A session's user and the sockets opened with its tokens on this node.
struct TrackedSession {
    user: UserId,
    sockets: Vec<(SocketId, Arc<CloseSignal>)>,
}

/// Keeps a socket listed under its session until dropped (see `Hub::track_session`).
pub struct SessionSocket<'h> {
    hub: &'h Hub,
    session: SessionId,
    socket: SocketId,
}

impl Drop for SessionSocket<'_> {
    fn drop(&mut self) {
        self.hub
            .sessions
            .remove_if_mut(&self.session, |_, tracked| {
                tracked.sockets.retain(|(id, _)| *id != self.socket);
                tracked.sockets.is_empty()
            });
    }
}

impl Hub {
    /// A hub that fans out through `broker` too (cluster mode), or in process only.
    pub fn new(broker: Option<Broker>) -> Self {
        Self {
            broker,
            ..Self::default()
        }
    }

    pub fn broker(&self) -> Option<&Broker> {
        self.broker.as_ref()
    }

    /// Registers a socket; returns its id and whether it is the user's first on this node.
    pub fn attach(
        &self,
        user: UserId,
        device: i64,
        queue: queue::Sender<Outgoing>,
        ephemeral: Arc<EphemeralSlots>,
        close: Arc<CloseSignal>,
    ) -> (SocketId, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Room for one: most users have one socket here, and a first push would make four.
        let mut sockets = self
            .users
            .entry(user)
            .or_insert_with(|| Vec::with_capacity(1));
        sockets.push(SocketHandle {
            id,
            device,
            queue,
            ephemeral,
            close,
        });
        let first = sockets.len() == 1;
        drop(sockets);
        if first && let Some(broker) = &self.broker {
            broker.interest_changed(user);
        }
        (id, first)
    }

    /// Forgets a socket; returns whether it was the user's last on this node.
    pub fn detach(&self, user: UserId, id: SocketId) -> bool {
        let last = self
            .users
            .remove_if_mut(&user, |_, sockets| {
                sockets.retain(|s| s.id != id);
                sockets.is_empty()
            })
            .is_some();
        if last && let Some(broker) = &self.broker {
            broker.interest_changed(user);
        }
        last
    }

    /// Whether frames sent to `user` may reach a socket: one is open on this node, or (in
    /// cluster mode) may be open on another node — Redis only carries a frame to the nodes
    /// that subscribed for the user, so publishing for an offline user costs little.
    pub fn is_online(&self, user: UserId) -> bool {
        self.broker.is_some() || self.is_local(user)
    }

    /// Whether `user` has a socket open on this node.
    pub fn is_local(&self, user: UserId) -> bool {
        self.users.contains_key(&user)
    }

    /// Users with a socket open on this node.
    pub fn local_users(&self) -> Vec<UserId> {
        self.users.iter().map(|entry| *entry.key()).collect()
    }

    /// Each user with a socket open on this node, with their devices (see `local_devices`).
    pub fn local_user_devices(&self) -> Vec<(UserId, Vec<i64>)> {
        self.local_users()
            .into_iter()
            .map(|user| (user, self.local_devices(user)))
            .collect()
    }

    /// Whether `device` of `user` has a socket open on this node.
    pub fn has_device(&self, user: UserId, device: i64) -> bool {
        self.users
            .get(&user)
            .is_some_and(|sockets| sockets.iter().any(|s| s.device == device))
    }

    /// The devices of `user` with a socket open on this node, in order, without repeats.
    pub fn local_devices(&self, user: UserId) -> Vec<i64> {
        let mut devices: Vec<i64> = self
            .users
            .get(&user)
            .map(|sockets| sockets.iter().map(|s| s.device).collect())
            .unwrap_or_default();
        devices.sort_unstable();
        devices.dedup();
        devices
    }

    /// Queues `frame` on every socket of `user` (here, and through the broker elsewhere);
    /// returns how many sockets of this node took it.
    pub fn send(&self, user: UserId, frame: &Frame) -> usize {
        if let Some(broker) = &self.broker {
            broker.publish(user, None, frame);
        }
        self.send_local(user, frame)
    }

    /// Queues inbox event `seq` of `user` on every socket of theirs (here and elsewhere).
    pub fn send_inbox(&self, user: UserId, seq: i64, frame: &Frame) -> usize {
        if let Some(broker) = &self.broker {
            broker.publish(user, Some(seq), frame);
        }
        self.send_inbox_local(user, seq, frame)
    }

    /// Offers `frame`, the latest state of `key`, to every socket of `user` (here and
    /// elsewhere): it replaces an older frame of the same key not yet written, and never
    /// counts toward closing a socket that is behind.
    pub fn send_ephemeral(&self, user: UserId, key: EphemeralKey, frame: &Frame) {
        if let Some(broker) = &self.broker {
            broker.publish_ephemeral(user, key, frame);
        }
        self.send_ephemeral_local(user, key, frame);
    }

    /// Drops the state of `key` not yet written to `user`'s sockets (here and elsewhere): a
    /// durable frame that supersedes it (an answered call's) must not be followed by it.
    pub fn withdraw_ephemeral(&self, user: UserId, key: EphemeralKey) {
        self.send_ephemeral(user, key, &Frame::from(""));
    }

    /// `send_ephemeral`, to this node's sockets only (what another node published).
    pub fn send_ephemeral_local(&self, user: UserId, key: EphemeralKey, frame: &Frame) {
        if let Some(sockets) = self.users.get(&user) {
            for socket in sockets.iter() {
                socket.ephemeral.put(key, frame.clone());
            }
        }
    }

    /// Queues a delivery receipt on every socket of `user` (here and elsewhere), dropping it
    /// (counted) where the queue is half full instead of closing the socket: receipts are not
    /// in the inbox, so a socket closed for being behind would not get them back on reconnect
    /// either, and a recipient catching up on thousands of messages would knock their sender
    /// offline. The other half stays for the frames that do count (acks, messages).
    pub fn send_receipt(&self, user: UserId, frame: &Frame) -> usize {
        if let Some(broker) = &self.broker {
            broker.publish_receipt(user, frame);
        }
        self.send_receipt_local(user, frame)
    }

    /// `send_receipt`, to this node's sockets only (what another node published).
    pub fn send_receipt_local(&self, user: UserId, frame: &Frame) -> usize {
        let Some(sockets) = self.users.get(&user) else {
            return 0;
        };
        let queued = |socket: &&SocketHandle| {
            let queue = &socket.queue;
            if queue.queued() >= queue.bound().div_ceil(2) {
                crate::metrics::receipt_dropped();
                return false;
            }
            queue.try_send(Outgoing::Frame(frame.clone())).is_ok()
        };
        sockets.iter().filter(queued).count()
    }

    /// `send`, to this node's sockets only (what another node published).
    pub fn send_local(&self, user: UserId, frame: &Frame) -> usize {
        self.push_all(user, || Outgoing::Frame(frame.clone()))
    }

    /// `send_inbox`, to this node's sockets only (what another node published).
    pub fn send_inbox_local(&self, user: UserId, seq: i64, frame: &Frame) -> usize {
        self.push_all(user, || Outgoing::Inbox {
            seq,
            frame: frame.clone(),
        })
    }

    /// Queues envelope `seq` of `device`'s queue on that device's sockets (here and
    /// elsewhere).
    pub fn send_envelope(&self, user: UserId, device: i64, seq: i64, frame: &Frame) -> usize {
        if let Some(broker) = &self.broker {
            broker.publish_envelope(user, device, seq, frame);
        }
        self.send_envelope_local(user, device, seq, frame)
    }

    /// `send_envelope`, to this node's sockets only (what another node published).
    pub fn send_envelope_local(&self, user: UserId, device: i64, seq: i64, frame: &Frame) -> usize {
        let Some(sockets) = self.users.get(&user) else {
            return 0;
        };
        let envelope = || Outgoing::Envelope {
            seq,
            frame: frame.clone(),
        };
        (sockets.iter())
            .filter(|socket| socket.device == device)
            .filter(|socket| push(&socket.queue, &socket.close, envelope()))
            .count()
    }

    /// Has every socket of `user` on this node read what it may have missed from the inbox.
    pub fn refill(&self, user: UserId) {
        self.push_all(user, || Outgoing::Refill);
    }

    /// `refill` for every socket of this node.
    pub fn refill_all(&self) {
        for entry in self.users.iter() {
            for socket in entry.value() {
                push(&socket.queue, &socket.close, Outgoing::Refill);
            }
        }
    }

    /// Records that `user` has sockets on this node, and of which devices (cluster presence):
    /// when their first socket here opens, and when the set of their devices here changes.
    pub async fn announce(&self, user: UserId) {
        if let Some(broker) = &self.broker {
            broker.announce(user, &self.local_devices(user)).await;
        }
    }

    /// Records that `user`'s last socket on this node closed (cluster presence).
    pub async fn retire(&self, user: UserId) {
        if let Some(broker) = &self.broker {
            broker.retire(user).await;
        }
    }

    /// Whether `user` has a socket open on another node (always `false` on a single node).
    pub async fn online_elsewhere(&self, user: UserId) -> bool {
        match &self.broker {
            Some(broker) => broker.online_on_other_nodes(user).await,
            None => false,
        }
    }

    fn push_all(&self, user: UserId, item: impl Fn() -> Outgoing) -> usize {
        let Some(sockets) = self.users.get(&user) else {
            return 0;
        };
        sockets
            .iter()
            .filter(|socket| push(&socket.queue, &socket.close, item()))
            .count()
    }

    /// Takes one of `user`'s `max` socket slots, or `None` when all are taken. Checked and
    /// taken in one step (under the map's shard lock), so parallel upgrades cannot overshoot.
    pub fn reserve_socket(&self, user: UserId, max: usize) -> Option<SocketSlot> {
        let mut taken = self.reservations.entry(user).or_insert(0);
        if *taken >= max {
            return None;
        }
        *taken += 1;
        drop(taken);
        Some(SocketSlot {
            reservations: self.reservations.clone(),
            user,
        })
    }

    /// How many sockets `user` has open on this node.
    pub fn user_socket_count(&self, user: UserId) -> usize {
        self.users.get(&user).map_or(0, |sockets| sockets.len())
    }

    /// Lists `socket` under `session` (of `user`) until the returned guard is dropped.
    pub fn track_session(
        &self,
        session: SessionId,
        user: UserId,
        socket: SocketId,
        close: Arc<CloseSignal>,
    ) -> SessionSocket<'_> {
        self.sessions
            .entry(session)
            .or_insert_with(|| TrackedSession {
                user,
                sockets: Vec::with_capacity(1),
            })
            .sockets
            .push((socket, close));
        SessionSocket {
            hub: self,
            session,
            socket,
        }
    }

    /// Closes every socket opened with `session`'s tokens, on every node.
    pub fn close_session(&self, session: SessionId, reason: CloseReason) {
        self.close_session_here(session, reason);
        if let Some(broker) = &self.broker {
            broker.control(Control::RevokeSession(session));
        }
    }

    /// Closes every socket of `user` (all their sessions were revoked) here, and on the other
    /// nodes those whose session the store says is revoked (a session started since, such as
    /// the one a password change answers with, may already have a socket there).
    pub fn close_user(&self, user: UserId, reason: CloseReason) {
        self.close_user_here(user, reason);
        if let Some(broker) = &self.broker {
            broker.control(Control::RevokeUser(user));
        }
    }

    /// Closes every socket of one of `user`'s devices, on every node (the device was
    /// unlinked), whichever session opened it.
    pub fn close_device(&self, user: UserId, device: i64, reason: CloseReason) {
        self.close_device_here(user, device, reason);
        if let Some(broker) = &self.broker {
            broker.control(Control::CloseDevice(user, device));
        }
    }

    /// `user`'s account was deleted: closes their sockets on every node, and has the other
    /// nodes forget what they cached about it (the caller forgets this node's).
    pub fn account_deleted(&self, user: UserId) {
        self.close_user_here(user, CloseReason::Revoked);
        if let Some(broker) = &self.broker {
            broker.control(Control::AccountDeleted(user));
        }
    }

    /// `close_session`, on this node only (what another node asked for).
    pub fn close_session_here(&self, session: SessionId, reason: CloseReason) {
        // Counted before the sockets are looked up: see `revocation_mark`.
        self.revocations.fetch_add(1, Ordering::SeqCst);
        if let Some(tracked) = self.sessions.get(&session) {
            tracked
                .sockets
                .iter()
                .for_each(|(_, close)| close.close(reason));
        }
    }

    /// Closes the sockets of one of `user`'s devices on this node (the device was unlinked).
    pub fn close_device_here(&self, user: UserId, device: i64, reason: CloseReason) {
        self.revocations.fetch_add(1, Ordering::SeqCst);
        if let Some(sockets) = self.users.get(&user) {
            (sockets.iter())
                .filter(|socket| socket.device == device)
                .for_each(|socket| socket.close.close(reason));
        }
    }

    /// `close_user`, on this node only (what another node asked for).
    pub fn close_user_here(&self, user: UserId, reason: CloseReason) {
        self.revocations.fetch_add(1, Ordering::SeqCst);
        if let Some(sockets) = self.users.get(&user) {
            sockets.iter().for_each(|socket| socket.close.close(reason));
        }
    }

    /// The sessions with a socket on this node, and their users (of `user` only, if given).
    /// Counts as a revocation (see `revocation_mark`): the caller is about to check them.
    pub fn sessions_to_check(&self, user: Option<UserId>) -> Vec<(SessionId, UserId)> {
        self.revocations.fetch_add(1, Ordering::SeqCst);
        self.sessions
            .iter()
            .filter(|entry| user.is_none_or(|user| entry.user == user))
            .map(|entry| (*entry.key(), entry.user))
            .collect()
    }

    /// A mark to take before a socket's token is checked. A revocation applied after the
    /// check but before the socket is tracked (`track_session`, `attach`) finds no socket to
    /// close; `revoked_since(mark)` after tracking tells whether one may have, so the session
    /// is checked again only then (revocations are rare, sockets opening are not).
    pub fn revocation_mark(&self) -> u64 {
        self.revocations.load(Ordering::SeqCst)
    }

    /// Whether a revocation was applied on this node since `mark` was taken.
    pub fn revoked_since(&self, mark: u64) -> bool {
        self.revocations.load(Ordering::SeqCst) != mark
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

/// Queues without waiting: a full queue means a reader too slow to keep, not a reason to wait.
pub fn push(queue: &queue::Sender<Outgoing>, close: &CloseSignal, item: Outgoing) -> bool {
    match queue.try_send(item) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            close.close(CloseReason::TooSlow);
            false
        }
        Err(TrySendError::Closed(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CallId, ChannelMessageId, ConversationId};
    use uuid::Uuid;

    #[test]
    fn first_and_last_socket_are_reported() {
        let hub = Hub::default();
        let user = UserId(Uuid::new_v4());
        let (tx, _rx) = queue::channel(4);
        let (a, first) = hub.attach(user, 1, tx.clone(), Arc::default(), Arc::default());
        let (b, second_is_first) = hub.attach(user, 1, tx, Arc::default(), Arc::default());
        assert!(first && !second_is_first);
        assert!(!hub.detach(user, a));
        assert!(hub.is_online(user));
        assert!(hub.detach(user, b));
        assert!(!hub.is_online(user));
    }

    #[test]
    fn a_socket_tracked_after_a_revocation_can_tell() {
        let hub = Hub::default();
        let (user, session) = (UserId(Uuid::new_v4()), SessionId(Uuid::new_v4()));
        let mark = hub.revocation_mark();
        assert!(!hub.revoked_since(mark));
        // Revoked while the socket was between its token check and its tracking.
        hub.close_session(session, CloseReason::Revoked);
        let close = Arc::new(CloseSignal::default());
        let tracked = hub.track_session(session, user, 1, close.clone());
        assert!(!close.is_closed() && hub.revoked_since(mark));
        hub.close_session(session, CloseReason::Revoked);
        assert!(close.is_closed());
        drop(tracked);
        assert!(hub.sessions_to_check(None).is_empty());
    }

    #[test]
    fn closing_a_device_closes_only_its_sockets() {
        let hub = Hub::default();
        let user = UserId(Uuid::new_v4());
        let (tx, _rx) = queue::channel(4);
        let (one, two) = (
            Arc::new(CloseSignal::default()),
            Arc::new(CloseSignal::default()),
        );
        hub.attach(user, 1, tx.clone(), Arc::default(), one.clone());
        hub.attach(user, 2, tx, Arc::default(), two.clone());
        hub.close_device(user, 2, CloseReason::Revoked);
        assert!(two.is_closed() && !one.is_closed());
    }

    #[test]
    fn a_full_queue_closes_the_socket_without_blocking() {
        let hub = Hub::default();
        let user = UserId(Uuid::new_v4());
        let (tx, _rx) = queue::channel(1);
        let close = Arc::new(CloseSignal::default());
        hub.attach(user, 1, tx, Arc::default(), close.clone());
        let frame = Frame::from("{}");
        assert_eq!(hub.send(user, &frame), 1);
        assert_eq!(hub.send(user, &frame), 0);
        assert!(close.is_closed());
    }

    #[test]
    fn ephemeral_frames_keep_the_latest_state_and_never_close_a_socket() {
        let hub = Hub::default();
        let user = UserId(Uuid::new_v4());
        let (tx, _rx) = queue::channel(1);
        let close = Arc::new(CloseSignal::default());
        let slots = Arc::new(EphemeralSlots::default());
        hub.attach(user, 1, tx, slots.clone(), close.clone());
        let typing = EphemeralKey::Typing {
            conversation: ConversationId(Uuid::new_v4()),
            sender: UserId(Uuid::new_v4()),
        };
        for n in 0..1000 {
            hub.send_ephemeral(user, typing, &Frame::from(n.to_string()));
        }
        for n in 0..2 * EPHEMERAL_SLOTS {
            let key = EphemeralKey::Presence(UserId(Uuid::from_u128(n as u128)));
            hub.send_ephemeral(user, key, &Frame::from(format!("p{n}")));
        }
        assert!(!close.is_closed());
        let pending = slots.take(usize::MAX);
        assert_eq!(pending.len(), EPHEMERAL_SLOTS, "bounded");
        // The oldest keys (the typing state among them) made room for the newest.
        assert_eq!(pending[0].as_str(), format!("p{}", EPHEMERAL_SLOTS));
        assert!(slots.is_empty());
        hub.send_ephemeral(user, typing, &Frame::from("a"));
        hub.send_ephemeral(user, typing, &Frame::from("b"));
        let latest: Vec<_> = slots.take(10).iter().map(|f| f.to_string()).collect();
        assert_eq!(latest, ["b"]);
    }

    #[test]
    fn a_ring_outlives_a_crowd_of_typing_and_presence_states() {
        let hub = Hub::default();
        let user = UserId(Uuid::new_v4());
        let (tx, _rx) = queue::channel(1);
        let slots = Arc::new(EphemeralSlots::default());
        hub.attach(user, 1, tx, slots.clone(), Arc::default());
        let ring = EphemeralKey::Call(CallId(Uuid::new_v4()));
        hub.send_ephemeral(user, ring, &Frame::from("ring"));
        for n in 0..2 * EPHEMERAL_SLOTS {
            let key = EphemeralKey::Presence(UserId(Uuid::from_u128(n as u128)));
            hub.send_ephemeral(user, key, &Frame::from(format!("p{n}")));
        }
        let pending = slots.take(usize::MAX);
        assert_eq!(pending.len(), EPHEMERAL_SLOTS, "bounded");
        assert_eq!(pending[0].as_str(), "ring", "the oldest, yet kept");
    }

    #[test]
    fn a_withdrawn_ring_is_not_written_after_the_answer() {
        let hub = Hub::default();
        let user = UserId(Uuid::new_v4());
        let (tx, _rx) = queue::channel(1);
        let slots = Arc::new(EphemeralSlots::default());
        hub.attach(user, 1, tx, slots.clone(), Arc::default());
        let (ring, other) = (
            EphemeralKey::Call(CallId(Uuid::new_v4())),
            EphemeralKey::Presence(UserId(Uuid::new_v4())),
        );
        hub.send_ephemeral(user, ring, &Frame::from("ring"));
        hub.send_ephemeral(user, other, &Frame::from("online"));
        hub.withdraw_ephemeral(user, ring);
        let left: Vec<_> = slots.take(10).iter().map(|f| f.to_string()).collect();
        assert_eq!(left, ["online"]);
    }

    #[test]
    fn parallel_reservations_never_exceed_the_cap() {
        let hub = Arc::new(Hub::default());
        let user = UserId(Uuid::new_v4());
        let slots: Vec<_> = std::thread::scope(|scope| {
            let tries: Vec<_> = (0..16)
                .map(|_| scope.spawn(|| hub.reserve_socket(user, 3)))
                .collect();
            tries
                .into_iter()
                .filter_map(|t| t.join().ok().flatten())
                .collect()
        });
        assert_eq!(slots.len(), 3);
        drop(slots);
        assert!(hub.reserve_socket(user, 3).is_some(), "given back on drop");
    }

    #[test]
    fn ephemeral_keys_survive_the_broker_encoding() {
        let keys = [
            EphemeralKey::Typing {
                conversation: ConversationId(Uuid::new_v4()),
                sender: UserId(Uuid::new_v4()),
            },
            EphemeralKey::Presence(UserId(Uuid::new_v4())),
            EphemeralKey::Call(CallId(Uuid::new_v4())),
            EphemeralKey::ChannelPost(ChannelMessageId(Uuid::new_v4())),
        ];
        for key in keys {
            assert_eq!(EphemeralKey::decode(&key.encode()), Some(key));
        }
        assert_eq!(EphemeralKey::decode("p:nope"), None);
        assert_eq!(EphemeralKey::decode("x:1"), None);
    }
}
