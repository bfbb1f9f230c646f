//! Whom each user blocks, as last read (see `blocks.rs`): every message, envelope, call and
//! channel invitation asks about its recipient, and most users block nobody.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;

use crate::model::UserId;

/// How long whom a user blocks is trusted without asking the database again: a change made on
/// this node is seen at once, one made on another node as soon as its `Control::BlocksChanged`
/// arrives (or, if that was lost while Redis was away, at the resubscription that follows),
/// and at worst after this.
pub(super) const CACHED_FOR: Duration = Duration::from_secs(60);
/// Users remembered at most; past it the memory starts over.
pub(super) const CACHED_MAX: usize = 100_000;

/// The users each user blocks (sorted), as last read.
#[derive(Debug, Default)]
pub struct BlockedUsers {
    lists: DashMap<UserId, (Arc<[UserId]>, Instant)>,
    /// Bumped by every forget: a read that began before it must not be remembered, or a list
    /// read just before a block was committed would outlive the block's forget.
    forgets: AtomicU64,
}

impl BlockedUsers {
    /// `blocker`'s list, if remembered and fresh.
    pub(super) fn get(&self, blocker: UserId) -> Option<Arc<[UserId]>> {
        let entry = self.lists.get(&blocker)?;
        (entry.1.elapsed() < CACHED_FOR).then(|| entry.0.clone())
    }

    /// Where the forgets stand: take it before reading a list from the database.
    pub(super) fn version(&self) -> u64 {
        self.forgets.load(Ordering::SeqCst)
    }

    /// Remembers `blocker`'s list, read after `version` was taken, unless something was
    /// forgotten since (the list may predate that change).
    pub(super) fn remember(&self, blocker: UserId, list: Arc<[UserId]>, version: u64) {
        if self.lists.len() >= CACHED_MAX {
            self.lists.clear();
        }
        // Checked under the entry's lock: a forget bumps the count before it removes, so
        // either it sees this entry and removes it, or this sees its bump.
        let entry = self.lists.entry(blocker);
        if self.version() == version {
            entry.insert((list, Instant::now()));
        }
    }

    /// Forgets `blocker`'s list (it changed, maybe on another node).
    pub(super) fn forget(&self, blocker: UserId) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        self.lists.remove(&blocker);
    }

    /// Forgets every list (changes may have gone unheard of).
    pub(super) fn forget_all(&self) {
        self.forgets.fetch_add(1, Ordering::SeqCst);
        self.lists.clear();
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn a_list_read_before_a_forget_is_not_remembered() {
        let cache = BlockedUsers::default();
        let (alice, bob) = (UserId(Uuid::new_v4()), UserId(Uuid::new_v4()));
        let version = cache.version();
        cache.forget(alice); // a block committed while alice's old list was being read
        cache.remember(alice, Arc::from([]), version);
        assert!(cache.get(alice).is_none(), "the stale list was dropped");

        let version = cache.version();
        cache.remember(alice, Arc::from([bob]), version);
        assert_eq!(cache.get(alice).as_deref(), Some(&[bob][..]));
        cache.forget_all();
        assert!(cache.get(alice).is_none());
    }
}
