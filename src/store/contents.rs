//! The encrypted content mailbox: opaque bytes per message, until read or expired.

use chrono::{DateTime, Utc};

use super::{Store, group_sqlite::ContentUpload, messages::message_cols, with_pool};
use crate::{
    error::{Error, Result},
    model::{Message, MessageId, UserId},
};

/// Ciphertext to keep for a message.
pub struct NewContent {
    pub bytes: Vec<u8>,
    pub hash: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub struct StoredContent {
    pub content: Vec<u8>,
    pub content_hash: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One answer for "someone else's message" and "no message of yours awaits this content": a
/// caller learns nothing about ids that are not theirs.
pub(super) const NOT_YOURS: &str = "no message of yours awaits this content";

/// How far back an app-generated id may claim a content-less message.
pub(super) const ALIAS_WINDOW_SECONDS: i64 = 60;
/// Claim attempts when concurrent uploads race for the same oldest message.
const CLAIM_ATTEMPTS: usize = 3;

/// Why an upload stored nothing, once its message is known (the claim of a message by an app id
/// stays: the app's next upload must not take this one's message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    NotYours,
    /// The recipient read the message already: its content would never be fetched, and would
    /// occupy the mailbox until it expires.
    AlreadyRead,
    /// The sender's unread content would exceed their quota.
    OverQuota,
}

impl From<Refused> for Error {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::NotYours => Error::Forbidden(NOT_YOURS),
            Refused::AlreadyRead => Error::Conflict {
                code: "already_read",
                message: "the message was read already: its content is no longer accepted",
            },
            Refused::OverQuota => Error::QuotaExceeded(
                "your unread content uses up your storage quota: \
                 retry once recipients have read some",
            ),
        }
    }
}

/// Whether storing `adding` bytes for one message, over `used` bytes of the sender's other
/// unread content, stays within `quota`.
pub(super) fn within_quota(used: i64, adding: usize, quota: u64) -> bool {
    u64::try_from(used)
        .unwrap_or(0)
        .saturating_add(adding as u64)
        <= quota
}

/// The sender's unread, unexpired content other than message `$2`'s, in bytes (`$3`: now).
pub(super) const CONTENT_USED: &str = "SELECT COALESCE(SUM(size_bytes), 0) FROM message_contents
     WHERE sender_id = $1 AND message_id <> $2 AND expires_at > $3";

/// The advisory lock that serializes `sender`'s uploads (PostgreSQL): their id's first half.
/// Two senders that share it only wait for each other.
fn upload_lock_key(sender: UserId) -> i64 {
    sender.0.as_u64_pair().0 as i64
}

impl Store {
    /// Stores `content` for the message `requested` names, on behalf of `sender`: a message id,
    /// an alias made earlier, or else a new alias for the sender's oldest content-less message
    /// of the last minute. Returns the message the content went to. Refused (and nothing
    /// stored) when the message was read already (409) or when the sender's unread content
    /// would exceed `quota` bytes (413).
    pub async fn attach_content(
        &self,
        sender: UserId,
        requested: MessageId,
        content: NewContent,
        quota: u64,
    ) -> Result<MessageId> {
        // SQLite has one writer: the upload joins the next group commit instead of taking the
        // writer for a transaction of its own (see `group_sqlite`).
        if let (Some(batcher), super::Engine::Sqlite) = (&self.batcher, self.engine()) {
            let upload = ContentUpload {
                sender,
                requested,
                content,
                quota,
            };
            return batcher.attach_content(upload).await;
        }
        let since = content.created_at - chrono::Duration::seconds(ALIAS_WINDOW_SECONDS);
        let postgres = self.engine() == super::Engine::Postgres;
        let outcome = with_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            if postgres {
                // A sender's uploads run one at a time, each after the previous one committed:
                // concurrent claims (a burst of the app's messages) would all pick the same
                // oldest message, and all but one lose; and concurrent uploads would each see
                // the quota's room before the others used it. (A row lock taken with SKIP
                // LOCKED would also skip a message that a group commit is marking delivered,
                // and give its content to the next message.)
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(upload_lock_key(sender))
                    .execute(&mut *tx)
                    .await?;
            }
            let known: Option<(MessageId, UserId)> = sqlx::query_as(
                "SELECT m.id, m.sender_id FROM messages m WHERE m.id = $1
                 UNION ALL
                 SELECT m.id, m.sender_id FROM message_aliases a JOIN messages m ON m.id = a.message_id
                 WHERE a.alias_id = $1",
            )
            .bind(requested)
            .fetch_optional(&mut *tx)
            .await?;
            // The message, and whether it is read, from the update that locks its row: a read
            // mark committed meanwhile is seen, and one that comes later waits for this upload.
            // (A group statement that started before this commit and marks the message read
            // does not see the new content to delete it: that blob stays until it expires.)
            let target: Option<(MessageId, bool)> = match known {
                Some((_, owner)) if owner != sender => None,
                Some((id, _)) => sqlx::query_as(
                    "UPDATE messages SET content_received_at = COALESCE(content_received_at, $2)
                         WHERE id = $1 RETURNING id, is_read",
                )
                .bind(id)
                .bind(content.created_at)
                .fetch_optional(&mut *tx)
                .await?,
                None => {
                    let mut claimed = None;
                    for _ in 0..CLAIM_ATTEMPTS {
                        // Re-checking the condition outside the subquery makes a lost race
                        // claim nothing (and try the next message) instead of stealing.
                        claimed = sqlx::query_as::<_, (MessageId, bool)>(
                            "UPDATE messages SET content_received_at = $3
                             WHERE id = (SELECT id FROM messages
                                         WHERE sender_id = $1 AND content_received_at IS NULL
                                           AND created_at >= $2
                                         ORDER BY seq LIMIT 1)
                               AND content_received_at IS NULL
                             RETURNING id, is_read",
                        )
                        .bind(sender)
                        .bind(since)
                        .bind(content.created_at)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if claimed.is_some() {
                            break;
                        }
                    }
                    if let Some((id, _)) = claimed {
                        sqlx::query(
                            "INSERT INTO message_aliases (alias_id, message_id) VALUES ($1, $2)",
                        )
                        .bind(requested)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    claimed
                }
            };
            let outcome = match target {
                None => Err(Refused::NotYours),
                Some((_, true)) => Err(Refused::AlreadyRead),
                Some((id, false)) => {
                    let used: i64 = sqlx::query_scalar(CONTENT_USED)
                        .bind(sender)
                        .bind(id)
                        .bind(content.created_at)
                        .fetch_one(&mut *tx)
                        .await?;
                    if within_quota(used, content.bytes.len(), quota) {
                        Ok(id)
                    } else {
                        Err(Refused::OverQuota)
                    }
                }
            };
            if let Ok(target) = outcome {
                sqlx::query(
                    "INSERT INTO message_contents (message_id, content, content_hash, created_at,
                                                   expires_at, sender_id, size_bytes)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (message_id) DO UPDATE SET content = excluded.content,
                         content_hash = excluded.content_hash, created_at = excluded.created_at,
                         expires_at = excluded.expires_at, size_bytes = excluded.size_bytes",
                )
                .bind(target)
                .bind(&content.bytes)
                .bind(&content.hash)
                .bind(content.created_at)
                .bind(content.expires_at)
                .bind(sender)
                .bind(i32::try_from(content.bytes.len()).unwrap_or(i32::MAX))
                .execute(&mut *tx)
                .await?;
            }
            // A refused upload's claim of a message (and its alias) is kept.
            if matches!(outcome, Err(Refused::NotYours)) {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
            Ok::<_, Error>(outcome)
        })?;
        Ok(outcome?)
    }

    /// The message `id` names, directly or through an alias (the app's own id for it): one
    /// read for what a content fetch needs to know first.
    pub async fn message_named(&self, id: MessageId) -> Result<Option<Message>> {
        Ok(with_pool!(self, read, |pool| {
            sqlx::query_as::<_, Message>(concat!(
                "SELECT ",
                message_cols!(m),
                " FROM messages m WHERE m.id = $1
                  UNION ALL
                  SELECT ",
                message_cols!(m),
                " FROM message_aliases a JOIN messages m ON m.id = a.message_id
                  WHERE a.alias_id = $1
                  LIMIT 1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await
        })?)
    }

    /// The unexpired content of a message.
    pub async fn content(
        &self,
        message: MessageId,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredContent>> {
        Ok(with_pool!(self, read, |pool| {
            sqlx::query_as::<_, StoredContent>(
                "SELECT content, content_hash, created_at, expires_at FROM message_contents
                 WHERE message_id = $1 AND expires_at > $2",
            )
            .bind(message)
            .bind(now)
            .fetch_optional(pool)
            .await
        })?)
    }

    /// Deletes contents past their expiry; returns how many went.
    pub async fn delete_expired_contents(&self, now: DateTime<Utc>) -> Result<u64> {
        Ok(with_pool!(self, write, |pool| {
            sqlx::query("DELETE FROM message_contents WHERE expires_at <= $1")
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?)
    }
}
