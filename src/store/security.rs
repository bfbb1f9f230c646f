//! Sessions and refresh tokens (stored as hashes only), password hash upgrades, account
//! deletion, retention sweeps, and a dump of every table for audits and tests.

use chrono::{DateTime, Utc};

use super::{Db, Security, with_pool};
use crate::{
    error::Result,
    model::{SessionId, UserId},
};

/// What presenting a refresh token led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// The token was current: it is now used, and `new_hash` is the session's next one.
    Rotated {
        session: SessionId,
        user: UserId,
        /// The session's device, if it is bound to one (kept across refreshes).
        device: Option<i64>,
    },
    /// The token was used at `rotated_at`, within the grace, and the token it was traded for
    /// is still unused: nothing changed (a client retrying after a lost answer).
    Repeated {
        session: SessionId,
        user: UserId,
        device: Option<i64>,
        rotated_at: DateTime<Utc>,
    },
    /// The token had already been used: the whole session is now revoked.
    Reused { session: SessionId, user: UserId },
    /// Unknown token, or its session is revoked or expired.
    Invalid,
}

/// What a retention sweep deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub messages: u64,
    pub calls: u64,
    pub stories: u64,
    pub sessions: u64,
    /// Envelopes no device acknowledged within `ENVELOPE_TTL`.
    pub envelopes: u64,
    /// Attachments, finished or not, past `ATTACHMENT_TTL` (rows and files).
    pub attachments: u64,
}

/// Cut-off instants for a retention sweep; `None` keeps those rows.
#[derive(Debug, Default)]
pub struct RetentionCutoffs {
    pub messages_before: Option<DateTime<Utc>>,
    pub calls_before: Option<DateTime<Utc>>,
    pub stories_expired_before: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
}

impl Security<'_> {
    /// Starts a session whose first refresh token hashes to `refresh_hash`, bound to `device`
    /// when given.
    pub async fn create_session(
        self,
        session: SessionId,
        user: UserId,
        device: Option<i64>,
        refresh_hash: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO sessions (id, user_id, created_at, refreshed_at, expires_at, device_id)
                 VALUES ($1, $2, $3, $3, $4, $5)",
            )
            .bind(session)
            .bind(user)
            .bind(now)
            .bind(expires_at)
            .bind(device)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, session_id, created_at) VALUES ($1, $2, $3)",
            )
            .bind(refresh_hash)
            .bind(session)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Uses the refresh token hashing to `old_hash` once: a current token is replaced by
    /// `new_hash` (valid until `expires_at`); a used one revokes its whole session, unless it
    /// was used since `grace_since` and traded for `new_hash`, still unused (`Repeated`).
    pub async fn rotate_refresh_token(
        self,
        old_hash: &str,
        new_hash: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        grace_since: Option<DateTime<Utc>>,
    ) -> Result<Rotation> {
        with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            // Atomic: of two concurrent uses, one finds the token already used.
            let fresh: Option<SessionId> = sqlx::query_scalar(
                "UPDATE refresh_tokens SET used_at = $2
                 WHERE token_hash = $1 AND used_at IS NULL RETURNING session_id",
            )
            .bind(old_hash)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let outcome = if let Some(session) = fresh {
                let user: Option<(UserId, Option<i64>)> = sqlx::query_as(
                    "UPDATE sessions SET refreshed_at = $2, expires_at = $3
                     WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2
                     RETURNING user_id, device_id",
                )
                .bind(session)
                .bind(now)
                .bind(expires_at)
                .fetch_optional(&mut *tx)
                .await?;
                match user {
                    Some((user, device)) => {
                        sqlx::query(
                            "INSERT INTO refresh_tokens (token_hash, session_id, created_at)
                             VALUES ($1, $2, $3)",
                        )
                        .bind(new_hash)
                        .bind(session)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                        Rotation::Rotated {
                            session,
                            user,
                            device,
                        }
                    }
                    None => Rotation::Invalid,
                }
            } else {
                let known: Option<(SessionId, Option<DateTime<Utc>>)> = sqlx::query_as(
                    "SELECT session_id, used_at FROM refresh_tokens WHERE token_hash = $1",
                )
                .bind(old_hash)
                .fetch_optional(&mut *tx)
                .await?;
                // Within the grace, the pair it was traded for is answered again, as long as
                // that pair's refresh token is still unused and its session alive.
                let repeat = match (known, grace_since) {
                    (Some((session, Some(used_at))), Some(since)) if used_at >= since => {
                        let user: Option<(UserId, Option<i64>)> = sqlx::query_as(
                            "SELECT s.user_id, s.device_id FROM refresh_tokens t
                             JOIN sessions s ON s.id = t.session_id
                             WHERE t.token_hash = $1 AND t.session_id = $2 AND t.used_at IS NULL
                               AND s.revoked_at IS NULL AND s.expires_at > $3",
                        )
                        .bind(new_hash)
                        .bind(session)
                        .bind(now)
                        .fetch_optional(&mut *tx)
                        .await?;
                        user.map(|(user, device)| Rotation::Repeated {
                            session,
                            user,
                            device,
                            rotated_at: used_at,
                        })
                    }
                    _ => None,
                };
                match (repeat, known) {
                    (Some(repeat), _) => repeat,
                    (None, Some((session, _))) => {
                        let user: Option<UserId> = sqlx::query_scalar(
                            "UPDATE sessions SET revoked_at = coalesce(revoked_at, $2)
                             WHERE id = $1 RETURNING user_id",
                        )
                        .bind(session)
                        .bind(now)
                        .fetch_optional(&mut *tx)
                        .await?;
                        user.map_or(Rotation::Invalid, |user| Rotation::Reused { session, user })
                    }
                    (None, None) => Rotation::Invalid,
                }
            };
            tx.commit().await?;
            Ok(outcome)
        })
    }

    /// Whether `session` belongs to `user` (who still exists and is not suspended) and is not
    /// revoked. Suspension is read here too, not only through the sessions it revokes: a login
    /// that passed its check just before the suspension still gets tokens nothing accepts.
    pub async fn session_active(self, session: SessionId, user: UserId) -> Result<bool> {
        let found: Option<i32> = with_pool!(self.0, read, |pool| {
            sqlx::query_scalar(
                "SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL
                   AND u.suspended_at IS NULL",
            )
            .bind(session)
            .bind(user)
            .fetch_optional(pool)
            .await
        })?;
        Ok(found.is_some())
    }

    /// Whether the refresh token hashing to `hash` (used or not) belongs to a suspended user.
    pub async fn refresh_token_suspended(self, hash: &str) -> Result<bool> {
        let found: Option<i32> = with_pool!(self.0, read, |pool| {
            sqlx::query_scalar(
                "SELECT 1 FROM refresh_tokens t
                 JOIN sessions s ON s.id = t.session_id
                 JOIN users u ON u.id = s.user_id
                 WHERE t.token_hash = $1 AND u.suspended_at IS NOT NULL",
            )
            .bind(hash)
            .fetch_optional(pool)
            .await
        })?;
        Ok(found.is_some())
    }

    /// Revokes one session of `user`; whether it was active.
    pub async fn revoke_session(
        self,
        session: SessionId,
        user: UserId,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        Ok(with_pool!(self.0, write, |pool| {
            sqlx::query(
                "UPDATE sessions SET revoked_at = $3
                 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
            )
            .bind(session)
            .bind(user)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() > 0)
        })?)
    }

    /// Revokes every session of `user`; how many were active.
    pub async fn revoke_sessions(self, user: UserId, now: DateTime<Utc>) -> Result<u64> {
        Ok(with_pool!(self.0, write, |pool| {
            sqlx::query(
                "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(user)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?)
    }

    /// The stored password hash of `user`.
    pub async fn password_hash(self, user: UserId) -> Result<Option<String>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
                .bind(user)
                .fetch_optional(pool)
                .await
        })?)
    }

    /// Replaces the password hash of `user` (an upgrade from a legacy hash) if it is still
    /// `previous`, so that a concurrent password change is never overwritten.
    pub async fn upgrade_password_hash(
        self,
        user: UserId,
        previous: &str,
        hash: &str,
    ) -> Result<bool> {
        Ok(with_pool!(self.0, write, |pool| {
            sqlx::query("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2")
                .bind(user)
                .bind(previous)
                .bind(hash)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() > 0)
        })?)
    }

    /// Sets a new password hash and revokes every session of `user`, in one transaction.
    pub async fn change_password(
        self,
        user: UserId,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            let changed = sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
                .bind(user)
                .bind(hash)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            sqlx::query(
                "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(user)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(changed)
        })
    }

    /// Deletes `user` and, through `ON DELETE CASCADE`, every row that names them: sessions,
    /// devices and keys, conversations with their messages and contents, calls, stories and
    /// views, channel memberships and posts, and the channels they created.
    pub async fn delete_user(self, user: UserId) -> Result<bool> {
        Ok(with_pool!(self.0, write, |pool| {
            sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(user)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() > 0)
        })?)
    }

    /// Deletes what retention no longer allows to keep.
    pub async fn sweep_retention(self, cut: &RetentionCutoffs) -> Result<Swept> {
        let mut swept = Swept::default();
        with_pool!(self.0, write, |pool| {
            if let Some(before) = cut.messages_before {
                let mut tx = pool.begin().await?;
                // Unread messages that go stop counting as unread (withheld ones never counted).
                sqlx::query(
                    "UPDATE conversations SET
                        unread_a = unread_a - (SELECT count(*) FROM messages m
                            WHERE m.conversation_id = conversations.id AND m.created_at < $1
                              AND m.is_read = FALSE AND m.withheld = FALSE
                              AND m.recipient_id = conversations.user_a),
                        unread_b = unread_b - (SELECT count(*) FROM messages m
                            WHERE m.conversation_id = conversations.id AND m.created_at < $1
                              AND m.is_read = FALSE AND m.withheld = FALSE
                              AND m.recipient_id <> conversations.user_a)
                     WHERE id IN (SELECT conversation_id FROM messages
                                  WHERE created_at < $1 AND is_read = FALSE)",
                )
                .bind(before)
                .execute(&mut *tx)
                .await?;
                swept.messages = sqlx::query("DELETE FROM messages WHERE created_at < $1")
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
            }
            if let Some(before) = cut.calls_before {
                swept.calls = sqlx::query(
                    "DELETE FROM calls WHERE created_at < $1 AND status NOT IN ('ringing', 'active')",
                )
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected();
            }
            if let Some(before) = cut.stories_expired_before {
                swept.stories = sqlx::query("DELETE FROM stories WHERE expires_at <= $1")
                    .bind(before)
                    .execute(pool)
                    .await?
                    .rows_affected();
            }
            // A revoked session is kept until its refresh token would have expired, so a reuse
            // of a stolen token is still recognized (and refused) until then.
            swept.sessions = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
                .bind(cut.now)
                .execute(pool)
                .await?
                .rows_affected();
            Ok::<_, sqlx::Error>(())
        })?;
        Ok(swept)
    }

    /// Every row of every table, one line per row: `(table, row)`. SQLite rows are the hex of
    /// each column's bytes; PostgreSQL rows are `row_to_json` text. For audits and tests that
    /// check that no secret was stored.
    pub async fn dump_tables(self) -> Result<Vec<(String, String)>> {
        let out = match &self.0.db {
            Db::Sqlite(pools) => super::sqlite::dump_tables(&pools.read).await?,
            Db::Postgres(pg) => super::postgres::dump_tables(pg).await?,
        };
        Ok(out)
    }
}
