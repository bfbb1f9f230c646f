//! Blocks: who no longer hears from whom. What a block withholds is decided by the areas that
//! deliver (messages, envelopes, calls, channel invitations) through `blocked_by`, which is
//! remembered (`blocks_cache.rs`) so that routing a message costs no query.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Blocks, with_pool};
use crate::{
    error::Result,
    model::{BlockedUser, UserId},
};

impl Blocks<'_> {
    /// `blocker` blocks `blocked` from `at`; blocking again keeps the first time. Returns when
    /// the block began, or `None` when `blocked` is not a user.
    pub async fn block(
        self,
        blocker: UserId,
        blocked: UserId,
        at: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>> {
        // The user's existence is checked by the insert itself: a missing user is `None`, not a
        // foreign-key error. On a repeat, the no-op update returns the existing row's time.
        let since = with_pool!(self.0, write, |pool| {
            sqlx::query_scalar(
                "INSERT INTO blocks (blocker_id, blocked_id, created_at)
                 SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM users WHERE id = $2)
                 ON CONFLICT (blocker_id, blocked_id) DO UPDATE SET created_at = blocks.created_at
                 RETURNING created_at",
            )
            .bind(blocker)
            .bind(blocked)
            .bind(at)
            .fetch_optional(pool)
            .await
        })?;
        self.0.blocked.forget(blocker);
        Ok(since)
    }

    /// Lifts `blocker`'s block of `blocked`; `false` if there was none.
    pub async fn unblock(self, blocker: UserId, blocked: UserId) -> Result<bool> {
        let removed = with_pool!(self.0, write, |pool| {
            sqlx::query("DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2")
                .bind(blocker)
                .bind(blocked)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        self.0.blocked.forget(blocker);
        Ok(removed > 0)
    }

    /// The users `blocker` blocks, the latest block first.
    pub async fn blocked_users(self, blocker: UserId) -> Result<Vec<BlockedUser>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, BlockedUser>(
                "SELECT u.id AS user_id, u.username, u.name, u.avatar_url,
                        b.created_at AS blocked_at
                 FROM blocks b JOIN users u ON u.id = b.blocked_id
                 WHERE b.blocker_id = $1
                 ORDER BY b.created_at DESC, u.username",
            )
            .bind(blocker)
            .fetch_all(pool)
            .await
        })?)
    }

    /// The ids of the users `blocker` blocks, sorted (remembered for a while; see
    /// `blocks_cache.rs`).
    pub async fn blocked_by(self, blocker: UserId) -> Result<Arc<[UserId]>> {
        let cache = &self.0.blocked;
        if let Some(list) = cache.get(blocker) {
            return Ok(list);
        }
        let version = cache.version();
        let mut list: Vec<UserId> = with_pool!(self.0, read, |pool| {
            sqlx::query_scalar("SELECT blocked_id FROM blocks WHERE blocker_id = $1")
                .bind(blocker)
                .fetch_all(pool)
                .await
        })?;
        // Sorted here, in the order `binary_search` uses.
        list.sort_unstable();
        let list: Arc<[UserId]> = list.into();
        cache.remember(blocker, list.clone(), version);
        Ok(list)
    }

    /// Forgets what is remembered of `blocker`'s blocks (they changed on another node).
    pub fn forget(self, blocker: UserId) {
        self.0.blocked.forget(blocker);
    }

    /// Forgets what is remembered of everyone's blocks (changes may have gone unheard of).
    pub fn forget_all(self) {
        self.0.blocked.forget_all();
    }
}
