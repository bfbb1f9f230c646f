//! PostgreSQL's content upload: a transaction of its own, beside the group commits (its writers
//! run in parallel), serialized per sender.

use sqlx::PgPool;

use crate::store::upload::{
    ADD_ALIAS, ALIAS_WINDOW_SECONDS, CLAIM_MESSAGE, CONTENT_USED, ContentUpload, KNOWN_MESSAGE,
    MARK_CONTENT_RECEIVED, Refused, STORE_CONTENT, within_quota,
};
use crate::{
    error::Result,
    model::{MessageId, UserId},
};

/// Claim attempts when concurrent uploads race for the same oldest message.
const CLAIM_ATTEMPTS: usize = 3;

/// The advisory lock that serializes `sender`'s uploads: their id's first half. Two senders
/// that share it only wait for each other.
fn upload_lock_key(sender: UserId) -> i64 {
    sender.0.as_u64_pair().0 as i64
}

/// Stores `upload` (see `Contents::attach_content`).
pub(crate) async fn attach(pool: &PgPool, upload: ContentUpload) -> Result<MessageId> {
    let ContentUpload {
        sender,
        requested,
        content,
        quota,
    } = upload;
    let since = content.created_at - chrono::Duration::seconds(ALIAS_WINDOW_SECONDS);
    let mut tx = pool.begin().await?;
    // A sender's uploads run one at a time, each after the previous one committed: concurrent
    // claims (a burst of the app's messages) would all pick the same oldest message, and all but
    // one lose; and concurrent uploads would each see the quota's room before the others used
    // it. (A row lock taken with SKIP LOCKED would also skip a message that a group commit is
    // marking delivered, and give its content to the next message.)
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(upload_lock_key(sender))
        .execute(&mut *tx)
        .await?;
    let known: Option<(MessageId, UserId)> = sqlx::query_as(KNOWN_MESSAGE)
        .bind(requested)
        .fetch_optional(&mut *tx)
        .await?;
    // The message, and whether it is read, from the update that locks its row: a read mark
    // committed meanwhile is seen, and one that comes later waits for this upload. (A group
    // statement that started before this commit and marks the message read does not see the new
    // content to delete it: that blob stays until it expires.)
    let target: Option<(MessageId, bool)> = match known {
        Some((_, owner)) if owner != sender => None,
        Some((id, _)) => {
            sqlx::query_as(MARK_CONTENT_RECEIVED)
                .bind(content.created_at)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
        }
        None => {
            let mut claimed = None;
            for _ in 0..CLAIM_ATTEMPTS {
                // A lost race claims nothing (see `CLAIM_MESSAGE`): try the next message.
                claimed = sqlx::query_as::<_, (MessageId, bool)>(CLAIM_MESSAGE)
                    .bind(content.created_at)
                    .bind(sender)
                    .bind(since)
                    .fetch_optional(&mut *tx)
                    .await?;
                if claimed.is_some() {
                    break;
                }
            }
            if let Some((id, _)) = claimed {
                sqlx::query(ADD_ALIAS)
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
        sqlx::query(STORE_CONTENT)
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
    Ok(outcome?)
}
