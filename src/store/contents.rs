//! The encrypted content mailbox: opaque bytes per message, until read or expired. An upload is
//! written per engine (SQLite's joins the group commit, `sqlite::group`; PostgreSQL's has its
//! own transaction, `postgres::content`), with the statements and rules of `upload`.

use chrono::{DateTime, Utc};

use super::{
    Contents, Db,
    columns::message_cols,
    upload::{ContentUpload, NewContent},
    with_pool,
};
use crate::{
    error::Result,
    model::{Message, MessageId, UserId},
};

#[derive(sqlx::FromRow)]
pub struct StoredContent {
    pub content: Vec<u8>,
    pub content_hash: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Contents<'_> {
    /// Stores `content` for the message `requested` names, on behalf of `sender`: a message id,
    /// an alias made earlier, or else a new alias for the sender's oldest content-less message
    /// of the last minute. Returns the message the content went to. Refused (and nothing
    /// stored) when the message was read already (409) or when the sender's unread content
    /// would exceed `quota` bytes (413).
    pub async fn attach_content(
        self,
        sender: UserId,
        requested: MessageId,
        content: NewContent,
        quota: u64,
    ) -> Result<MessageId> {
        let upload = ContentUpload {
            sender,
            requested,
            content,
            quota,
        };
        match &self.0.db {
            // SQLite has one writer: the upload joins the next group commit instead of taking
            // the writer for a transaction of its own (see `sqlite::group`).
            Db::Sqlite(_) => self.0.batcher.attach_content(upload).await,
            Db::Postgres(pool) => super::postgres::content::attach(pool, upload).await,
        }
    }

    /// The message `id` names, directly or through an alias (the app's own id for it): one
    /// read for what a content fetch needs to know first.
    pub async fn message_named(self, id: MessageId) -> Result<Option<Message>> {
        Ok(with_pool!(self.0, read, |pool| {
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
        self,
        message: MessageId,
        now: DateTime<Utc>,
    ) -> Result<Option<StoredContent>> {
        Ok(with_pool!(self.0, read, |pool| {
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
    pub async fn delete_expired_contents(self, now: DateTime<Utc>) -> Result<u64> {
        Ok(with_pool!(self.0, write, |pool| {
            sqlx::query("DELETE FROM message_contents WHERE expires_at <= $1")
                .bind(now)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?)
    }
}
