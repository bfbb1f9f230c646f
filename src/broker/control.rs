//! What one node asks all the others to do, on `{prefix}:control` (every node subscribes to
//! it): close revoked sockets and unlinked devices' sockets, forget a deleted account or a
//! user's cached push registrations or blocks, re-read a user's inbox.
//!
//! Unlike a frame's doorbell, a control message is not dropped when Redis is down or the
//! publish queue is full: revocations wait (within bounds) for Redis to come back, and the
//! refills asked for by dropped doorbells are coalesced per user.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Mutex, MutexGuard},
};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::model::{SessionId, UserId};

/// Revocations kept while Redis is down; past it the oldest are dropped (their sockets still
/// close when their access token expires, and at the next check of their session).
const MAX_WAITING: usize = 10_000;
/// Users named in refills before "every socket refills" replaces the list.
const MAX_REFILLS: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Close the sockets opened with this session's tokens (logout, refresh-token reuse).
    RevokeSession(SessionId),
    /// Close every socket of this user (logout everywhere, password change).
    RevokeUser(UserId),
    /// This device of the user was unlinked: close its sockets, whichever session opened them.
    CloseDevice(UserId, i64),
    /// The account is gone: close its sockets and forget its cached conversations, so that a
    /// message to it is refused instead of reaching the commit.
    AccountDeleted(UserId),
    /// This user's push registrations changed: forget what was cached about them.
    PushChanged(UserId),
    /// Whom this user blocks changed: forget what was cached about it.
    BlocksChanged(UserId),
    /// A doorbell of this user was dropped: their sockets re-read the inbox.
    Refill(UserId),
    /// Too many doorbells were dropped to name their users: every socket re-reads.
    RefillAll,
}

impl Control {
    /// `"{node} {kind} {id}"`.
    pub fn encode(self, node: &str) -> String {
        match self {
            Self::RevokeSession(session) => format!("{node} revoke-session {session}"),
            Self::RevokeUser(user) => format!("{node} revoke-user {user}"),
            Self::AccountDeleted(user) => format!("{node} account-deleted {user}"),
            Self::CloseDevice(user, device) => format!("{node} close-device {user}/{device}"),
            Self::PushChanged(user) => format!("{node} push-changed {user}"),
            Self::BlocksChanged(user) => format!("{node} blocks-changed {user}"),
            Self::Refill(user) => format!("{node} refill {user}"),
            Self::RefillAll => format!("{node} refill-all -"),
        }
    }

    /// The sending node and its message; `None` for anything else.
    pub fn decode(payload: &str) -> Option<(&str, Self)> {
        let mut parts = payload.split(' ');
        let (node, kind, id) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let raw = id;
        let id = || id.parse::<Uuid>().ok();
        let control = match kind {
            "revoke-session" => Self::RevokeSession(SessionId(id()?)),
            "revoke-user" => Self::RevokeUser(UserId(id()?)),
            "account-deleted" => Self::AccountDeleted(UserId(id()?)),
            "close-device" => {
                let (user, device) = raw.split_once('/')?;
                let device = device.parse().ok().filter(|d| (1..=127).contains(d))?;
                Self::CloseDevice(UserId(user.parse().ok()?), device)
            }
            "push-changed" => Self::PushChanged(UserId(id()?)),
            "blocks-changed" => Self::BlocksChanged(UserId(id()?)),
            "refill" => Self::Refill(UserId(id()?)),
            "refill-all" => Self::RefillAll,
            _ => return None,
        };
        Some((node, control))
    }
}

#[derive(Default)]
struct Waiting {
    revocations: VecDeque<Control>,
    refills: HashSet<UserId>,
    refill_all: bool,
}

/// Control messages waiting for the publisher task, which `ready` wakes.
#[derive(Default)]
pub struct ControlQueue {
    waiting: Mutex<Waiting>,
    pub ready: Notify,
}

impl ControlQueue {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // Nothing panics while holding it; a poisoned lock still holds consistent data.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, control: Control) {
        let mut waiting = self.lock();
        match control {
            Control::Refill(user) if !waiting.refill_all => {
                if waiting.refills.len() >= MAX_REFILLS {
                    waiting.refills.clear();
                    waiting.refill_all = true;
                } else {
                    waiting.refills.insert(user);
                }
            }
            Control::Refill(_) => {}
            Control::RefillAll => {
                waiting.refills.clear();
                waiting.refill_all = true;
            }
            revocation => {
                if waiting.revocations.len() >= MAX_WAITING {
                    waiting.revocations.pop_front();
                    tracing::warn!("too many revocations waiting for Redis: the oldest dropped");
                }
                waiting.revocations.push_back(revocation);
            }
        }
        drop(waiting);
        self.ready.notify_one();
    }

    /// Everything waiting, revocations first.
    pub fn take(&self) -> Vec<Control> {
        let mut waiting = self.lock();
        let mut taken: Vec<Control> = waiting.revocations.drain(..).collect();
        if std::mem::take(&mut waiting.refill_all) {
            taken.push(Control::RefillAll);
        }
        taken.extend(waiting.refills.drain().map(Control::Refill));
        taken
    }

    /// Puts back what could not be published, ahead of what came meanwhile. Refills are not
    /// kept: a node whose publications fail has every node refill when Redis is back (see
    /// `check_recovery`).
    pub fn put_back(&self, controls: Vec<Control>) {
        let mut waiting = self.lock();
        let revocations = controls
            .into_iter()
            .filter(|c| !matches!(c, Control::Refill(_) | Control::RefillAll));
        for (i, control) in revocations.enumerate() {
            waiting.revocations.insert(i, control);
        }
        waiting.revocations.truncate(MAX_WAITING);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_junk_is_ignored() {
        let (user, session) = (UserId(Uuid::new_v4()), SessionId(Uuid::new_v4()));
        for control in [
            Control::RevokeSession(session),
            Control::RevokeUser(user),
            Control::AccountDeleted(user),
            Control::CloseDevice(user, 7),
            Control::PushChanged(user),
            Control::BlocksChanged(user),
            Control::Refill(user),
            Control::RefillAll,
        ] {
            assert_eq!(
                Control::decode(&control.encode("node1")),
                Some(("node1", control))
            );
        }
        let bad_devices = [
            format!("n close-device {user}/0"),
            format!("n close-device {user}/128"),
            format!("n close-device {user}"),
        ];
        let junk = [
            "",
            "node1",
            "node1 revoke-user",
            "n revoke-user x",
            "n nuke -",
            "n blocks-changed x",
            "n close-device x/2",
        ];
        for junk in junk
            .into_iter()
            .chain(bad_devices.iter().map(String::as_str))
        {
            assert_eq!(Control::decode(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn refills_are_coalesced_and_revocations_put_back_first() {
        let queue = ControlQueue::default();
        let (a, b) = (UserId(Uuid::new_v4()), UserId(Uuid::new_v4()));
        queue.push(Control::Refill(a));
        queue.push(Control::Refill(a));
        queue.push(Control::RevokeUser(b));
        assert_eq!(
            queue.take(),
            [Control::RevokeUser(b), Control::Refill(a)],
            "revocations first, one refill per user"
        );
        queue.push(Control::AccountDeleted(a));
        queue.put_back(vec![Control::RevokeUser(b), Control::Refill(a)]);
        assert_eq!(
            queue.take(),
            [Control::RevokeUser(b), Control::AccountDeleted(a)]
        );
    }
}
