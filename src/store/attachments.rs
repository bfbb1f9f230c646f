//! Attachment rows: whose each upload is, how far it got, when it expires (the bytes are files,
//! `attachment_files.rs`).

use chrono::{DateTime, Utc};

use super::{Attachments, with_pool};
use crate::{error::Result, model::UserId};

/// An upload to record.
pub struct NewAttachment {
    pub id: String,
    pub owner: UserId,
    pub length: i64,
    /// The client's `Upload-Metadata`, kept opaque.
    pub metadata: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Attachment {
    pub id: String,
    pub owner_id: UserId,
    pub length: i64,
    /// Bytes stored so far (the tus `Upload-Offset`).
    pub received: i64,
    pub metadata: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl Attachments<'_> {
    /// Records `new` unless the owner's unexpired attachments (finished or not, by their
    /// declared lengths) and it would exceed `quota` bytes: then `false`, nothing recorded.
    /// One statement, so that the check and the insert see the same rows.
    pub async fn create(self, new: &NewAttachment, quota: u64) -> Result<bool> {
        let quota = i64::try_from(quota).unwrap_or(i64::MAX);
        let done = with_pool!(self.0, write, |pool| {
            sqlx::query(
                "INSERT INTO attachments (id, owner_id, length, received, metadata, created_at,
                     expires_at)
                 SELECT $1, $2, $3, 0, $4, $5, $6
                 WHERE (SELECT COALESCE(SUM(length), 0) FROM attachments
                        WHERE owner_id = $2 AND expires_at > $5) + $3 <= $7",
            )
            .bind(&new.id)
            .bind(new.owner)
            .bind(new.length)
            .bind(&new.metadata)
            .bind(new.created_at)
            .bind(new.expires_at)
            .bind(quota)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// The unexpired attachment `id`.
    pub async fn get(self, id: &str, now: DateTime<Utc>) -> Result<Option<Attachment>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, Attachment>(
                "SELECT id, owner_id, length, received, metadata, expires_at, completed_at
                 FROM attachments WHERE id = $1 AND expires_at > $2",
            )
            .bind(id)
            .bind(now)
            .fetch_optional(pool)
            .await
        })?)
    }

    /// Records that `received` bytes of `id` are stored, and when it completed if it did.
    pub async fn record_progress(
        self,
        id: &str,
        received: i64,
        completed_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        with_pool!(self.0, write, |pool| {
            sqlx::query("UPDATE attachments SET received = $1, completed_at = $2 WHERE id = $3")
                .bind(received)
                .bind(completed_at)
                .bind(id)
                .execute(pool)
                .await
                .map(drop)
        })?;
        Ok(())
    }

    /// Forgets `id`; whether it was there.
    pub async fn delete(self, id: &str) -> Result<bool> {
        let done = with_pool!(self.0, write, |pool| {
            sqlx::query("DELETE FROM attachments WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(done > 0)
    }

    /// The ids of `owner`'s attachments (to remove their files with the account).
    pub async fn ids_of(self, owner: UserId) -> Result<Vec<String>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_scalar("SELECT id FROM attachments WHERE owner_id = $1")
                .bind(owner)
                .fetch_all(pool)
                .await
        })?)
    }

    /// Forgets the attachments expired at `now`, finished or not; returns their ids.
    pub async fn delete_expired(self, now: DateTime<Utc>) -> Result<Vec<String>> {
        Ok(with_pool!(self.0, write, |pool| {
            sqlx::query_scalar("DELETE FROM attachments WHERE expires_at <= $1 RETURNING id")
                .bind(now)
                .fetch_all(pool)
                .await
        })?)
    }

    /// Bytes stored for every attachment (for the `kisse_attachment_bytes` gauge at start).
    pub async fn stored_bytes(self) -> Result<i64> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_scalar("SELECT CAST(COALESCE(SUM(received), 0) AS BIGINT) FROM attachments")
                .fetch_one(pool)
                .await
        })?)
    }
}
