//! Attachment rows: whose each upload is, how far it got, when it expires, and with S3 the
//! multipart upload's parts stored so far (the bytes are `attachment_storage.rs`'s).

use chrono::{DateTime, Utc};

use super::{Attachments, with_pool};
use crate::{error::Result, model::UserId, store::db::Db};

/// Serializes a user's attachment creations on PostgreSQL, so that each one's quota check sees
/// the ones before it: `pg_advisory_xact_lock(ATTACHMENT_LOCKS, <32 bits of the user id>)`.
/// The two-key lock space is apart from the one-key space of content uploads'
/// (`postgres/content.rs`); users sharing the 32 bits only wait for each other.
const ATTACHMENT_LOCKS: i32 = 23;

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
    /// S3's multipart upload id, once the upload's first part is stored there.
    pub multipart_id: Option<String>,
}

/// What a deleted attachment leaves in storage, to remove: its bytes (the `received` ones, by
/// which the metrics count it) and, in S3, an unfinished multipart upload.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Leftover {
    pub id: String,
    pub received: i64,
    pub multipart_id: Option<String>,
}

impl Attachments<'_> {
    /// Records `new` unless the owner's unexpired attachments (finished or not, by their
    /// declared lengths) and it would exceed `quota` bytes: then `false`, nothing recorded.
    /// One statement, so that the check and the insert see the same rows; on PostgreSQL, where
    /// two transactions may each not see the other's row (read committed), after a lock on the
    /// owner's creations, so that concurrent ones are checked one after the other. (SQLite has a
    /// single writer: its statements never overlap.)
    pub async fn create(self, new: &NewAttachment, quota: u64) -> Result<bool> {
        let quota = i64::try_from(quota).unwrap_or(i64::MAX);
        let owner_lock = match self.0.db {
            Db::Sqlite(_) => None,
            Db::Postgres(_) => Some(new.owner.0.as_u64_pair().1 as i32),
        };
        let done = with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            if let Some(key) = owner_lock {
                sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                    .bind(ATTACHMENT_LOCKS)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
            let done = sqlx::query(
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
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            done
        });
        Ok(done == 1)
    }

    /// The unexpired attachment `id`.
    pub async fn get(self, id: &str, now: DateTime<Utc>) -> Result<Option<Attachment>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, Attachment>(
                "SELECT id, owner_id, length, received, metadata, expires_at, completed_at,
                     multipart_id
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

    /// Records the multipart upload `multipart_id` S3 began for `id`'s bytes.
    pub async fn record_multipart(self, id: &str, multipart_id: &str) -> Result<()> {
        with_pool!(self.0, write, |pool| {
            sqlx::query("UPDATE attachments SET multipart_id = $1 WHERE id = $2")
                .bind(multipart_id)
                .bind(id)
                .execute(pool)
                .await
                .map(drop)
        })?;
        Ok(())
    }

    /// Records that part `index` of `id`'s multipart upload is stored as `content_id` (a part
    /// stored again after a crash replaces its id), and that `received` bytes now are.
    pub async fn record_part(
        self,
        id: &str,
        index: i32,
        content_id: &str,
        received: i64,
    ) -> Result<()> {
        with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO attachment_parts (attachment_id, part_index, content_id)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (attachment_id, part_index) DO UPDATE
                     SET content_id = excluded.content_id",
            )
            .bind(id)
            .bind(index)
            .bind(content_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE attachments SET received = $1 WHERE id = $2")
                .bind(received)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })?;
        Ok(())
    }

    /// The ids of `id`'s stored parts, in order.
    pub async fn parts(self, id: &str) -> Result<Vec<String>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_scalar(
                "SELECT content_id FROM attachment_parts WHERE attachment_id = $1
                 ORDER BY part_index",
            )
            .bind(id)
            .fetch_all(pool)
            .await
        })?)
    }

    /// Forgets `id`; what it leaves in storage, if it was there.
    pub async fn delete(self, id: &str) -> Result<Option<Leftover>> {
        Ok(with_pool!(self.0, write, |pool| {
            sqlx::query_as(
                "DELETE FROM attachments WHERE id = $1 RETURNING id, received, multipart_id",
            )
            .bind(id)
            .fetch_optional(pool)
            .await
        })?)
    }

    /// What `owner`'s attachments have in storage (to remove with the account).
    pub async fn leftovers_of(self, owner: UserId) -> Result<Vec<Leftover>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as("SELECT id, received, multipart_id FROM attachments WHERE owner_id = $1")
                .bind(owner)
                .fetch_all(pool)
                .await
        })?)
    }

    /// Forgets the attachments expired at `now`, finished or not; what they leave in storage.
    pub async fn delete_expired(self, now: DateTime<Utc>) -> Result<Vec<Leftover>> {
        Ok(with_pool!(self.0, write, |pool| {
            sqlx::query_as(
                "DELETE FROM attachments WHERE expires_at <= $1
                 RETURNING id, received, multipart_id",
            )
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
