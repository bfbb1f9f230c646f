//! Each user's inbox: the durable, gap-free, per-user numbered list of events addressed to them
//! (messages they receive, read receipts for messages they sent). Sockets are fed from it.
//! Group commits (`group.rs`) hand the numbers out by bumping `users.inbox_seq`, which locks the
//! user's row until commit: once number n is visible, every number below it is too.

use chrono::{DateTime, Utc};

use super::{Inbox, columns::message_cols, group::FirstDelivery, with_pool};
use crate::{
    error::Result,
    model::{InboxKind, Message, UserId},
};

#[derive(sqlx::FromRow)]
struct InboxRow {
    /// Aliased: the message's own `seq` comes along under its own name.
    #[sqlx(rename = "inbox_seq")]
    seq: i64,
    kind: String,
    #[sqlx(flatten)]
    message: Message,
}

pub struct InboxEntry {
    pub seq: i64,
    pub kind: InboxKind,
    pub message: Message,
}

impl From<InboxRow> for InboxEntry {
    fn from(row: InboxRow) -> Self {
        let kind = if row.kind == "read_receipt" {
            InboxKind::ReadReceipt
        } else {
            InboxKind::Message
        };
        Self {
            seq: row.seq,
            kind,
            message: row.message,
        }
    }
}

impl Inbox<'_> {
    /// The number of the user's latest inbox event (0 when there is none).
    pub async fn inbox_head(self, user: UserId) -> Result<i64> {
        let head: Option<i64> = with_pool!(self.0, read, |pool| {
            sqlx::query_scalar("SELECT inbox_seq FROM users WHERE id = $1")
                .bind(user)
                .fetch_optional(pool)
                .await
        })?;
        Ok(head.unwrap_or(0))
    }

    /// Up to `limit` inbox events of `user` numbered in `(after, upto]`, in order; only those
    /// not yet delivered to any socket when `undelivered_only`.
    pub async fn inbox_entries(
        self,
        user: UserId,
        after: i64,
        upto: i64,
        undelivered_only: bool,
        limit: i64,
    ) -> Result<Vec<InboxEntry>> {
        let rows = with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, InboxRow>(concat!(
                "SELECT i.seq AS inbox_seq, i.kind, ",
                message_cols!(m),
                " FROM inbox i JOIN messages m ON m.seq = i.message_seq
                  WHERE i.user_id = $1 AND i.seq > $2 AND i.seq <= $3
                    AND ($4 = FALSE OR i.delivered_at IS NULL)
                  ORDER BY i.seq LIMIT $5"
            ))
            .bind(user)
            .bind(after)
            .bind(upto)
            .bind(undelivered_only)
            .bind(limit)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Records that these inbox events reached a socket of their user at `at`; returns the
    /// messages that became delivered by it (first delivery), for their senders to be told.
    pub async fn mark_delivered(
        self,
        events: &[(UserId, i64)],
        at: DateTime<Utc>,
    ) -> Result<Vec<FirstDelivery>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // SQLite has one writer: joining the group commit saves a transaction and an fsync.
        // PostgreSQL writes in parallel: a transaction of their own overlaps the group's.
        if self.0.engine() == super::Engine::Sqlite {
            self.0.batcher.delivered(events.to_vec(), at).await
        } else {
            self.0
                .write_group(&[], &[], events, at)
                .await
                .map(|written| written.delivered)
        }
    }
}
