//! Per-device queues of end-to-end-encrypted envelopes (Signal-style delivery): a message to a
//! user carries one envelope per device; each waits in its device's queue until that device
//! acknowledges it, then it is deleted. Written through `envelope_writer`; read here.

use chrono::{DateTime, Utc};

use super::{AckTarget, EnvelopeMessage, Envelopes, PendingAck, PendingEnvelopes, with_pool};
use crate::{
    error::Result,
    model::{ConversationId, MessageId, UserId},
};

/// An envelope waiting in a device's queue.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct QueuedEnvelope {
    pub seq: i64,
    pub message_id: MessageId,
    pub sender_id: UserId,
    pub sender_device: i64,
    pub recipient_id: UserId,
    pub device_id: i64,
    pub conversation_id: Option<ConversationId>,
    pub message_type: String,
    pub kind: i64,
    pub content: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

/// A device's place in its queue.
#[derive(Clone, Copy, Debug, Default, sqlx::FromRow)]
pub struct QueueState {
    /// Number of its latest envelope.
    pub head: i64,
    /// Envelopes dropped (queue full, expired) it was not told about yet.
    pub dropped: i64,
    /// It was woken by a push and has not connected since.
    pub push_pending: bool,
}

impl Envelopes<'_> {
    /// Queues `message`'s envelopes for the next batch, without waiting for it: a socket's
    /// next messages can share the commit. Each is numbered in its device's queue, which keeps
    /// its latest `queue_max` numbers.
    pub async fn queue(self, message: EnvelopeMessage, queue_max: i64) -> Result<PendingEnvelopes> {
        self.0.envelopes.queue(message, queue_max).await
    }

    /// Queues the deletion of what `device` of `user` acknowledges, without waiting for it:
    /// a device's acks (and other devices') share commits.
    pub async fn queue_ack(
        self,
        user: UserId,
        device: i64,
        target: AckTarget,
    ) -> Result<PendingAck> {
        self.0.envelopes.queue_ack(user, device, target).await
    }

    /// Where `device`'s queue stands (`None`: no such device).
    pub async fn queue_state(self, user: UserId, device: i64) -> Result<Option<QueueState>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as(
                "SELECT queue_head AS head, dropped,
                     EXISTS (SELECT 1 FROM push_registrations p
                             WHERE p.user_id = $1 AND p.device_id = $2 AND p.pushed_at IS NOT NULL)
                         AS push_pending
                 FROM user_devices WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user)
            .bind(device)
            .fetch_optional(pool)
            .await
        })?)
    }

    /// The device was told of `count` dropped envelopes.
    pub async fn forget_dropped(self, user: UserId, device: i64, count: i64) -> Result<()> {
        with_pool!(self.0, write, |pool| {
            sqlx::query(
                "UPDATE user_devices SET dropped = CASE WHEN dropped > $3 THEN dropped - $3 ELSE 0 END
                 WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user)
            .bind(device)
            .bind(count)
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// Up to `limit` envelopes of `device`'s queue numbered in `(after, upto]`, in order,
    /// created at `not_before` or later (older ones expired).
    pub async fn queue_page(
        self,
        user: UserId,
        device: i64,
        after: i64,
        upto: i64,
        not_before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<QueuedEnvelope>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as(
                "SELECT seq, message_id, sender_id, sender_device, user_id AS recipient_id,
                        device_id, conversation_id, message_type, kind, content, created_at
                 FROM envelopes
                 WHERE user_id = $1 AND device_id = $2 AND seq > $3 AND seq <= $4
                   AND created_at >= $5
                 ORDER BY seq LIMIT $6",
            )
            .bind(user)
            .bind(device)
            .bind(after)
            .bind(upto)
            .bind(not_before)
            .bind(limit)
            .fetch_all(pool)
            .await
        })?)
    }

    /// Deletes the envelopes created before `before` (nobody acknowledged them in time), and
    /// counts them for their devices to be told. Returns how many went.
    pub async fn expire(self, before: DateTime<Utc>) -> Result<u64> {
        Ok(with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            let counts: Vec<(UserId, i64, i64)> = sqlx::query_as(
                "SELECT user_id, device_id, COUNT(*) FROM envelopes WHERE created_at < $1
                 GROUP BY user_id, device_id ORDER BY user_id, device_id",
            )
            .bind(before)
            .fetch_all(&mut *tx)
            .await?;
            for (user, device, count) in &counts {
                sqlx::query(
                    "UPDATE user_devices SET dropped = dropped + $3
                     WHERE user_id = $1 AND device_id = $2",
                )
                .bind(user)
                .bind(device)
                .bind(count)
                .execute(&mut *tx)
                .await?;
            }
            let gone = sqlx::query("DELETE FROM envelopes WHERE created_at < $1")
                .bind(before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok::<_, sqlx::Error>(gone)
        })?)
    }
}
