//! The device registry (`user_devices`): every device of a user that uploaded keys or signed
//! in as itself, whether or not it has keys. The key directory (`devices`, `keys.rs`) holds
//! the keys of those that published them; a listing joins the two.

use chrono::{DateTime, NaiveDate, Utc};

use super::{Devices, with_pool};
use crate::{
    error::Result,
    model::{SessionId, UserId},
};

/// A registered device, as its owner sees it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DeviceRecord {
    pub device_id: i64,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    /// A day, never finer: when the device last signed in or opened a socket.
    pub last_seen: NaiveDate,
    /// From the key directory, when the device published keys.
    pub registration_id: Option<i64>,
    /// Keys' last upload; `None` when the device has no keys.
    pub keys_updated_at: Option<DateTime<Utc>>,
    /// One-time prekeys left (0 without keys).
    pub one_time_prekeys: i64,
    /// The kind of its push registration, if any.
    pub push: Option<String>,
}

/// What unlinking a device removed.
#[derive(Debug, Default)]
pub struct Unlinked {
    /// The device was registered or had keys (otherwise nothing was there to unlink).
    pub found: bool,
    /// The sessions bound to it that were active, now revoked.
    pub sessions: Vec<SessionId>,
}

impl Devices<'_> {
    /// Registers `device` of `user` (created `at`, seen that day), or marks it seen that day;
    /// a `name` given replaces the stored one, none keeps it.
    pub async fn upsert(
        self,
        user: UserId,
        device: i64,
        name: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self.0, write, |pool| {
            sqlx::query(
                "INSERT INTO user_devices (user_id, device_id, name, created_at, last_seen)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_id, device_id) DO UPDATE SET
                     name = COALESCE(excluded.name, user_devices.name),
                     last_seen = excluded.last_seen",
            )
            .bind(user)
            .bind(device)
            .bind(name)
            .bind(at)
            .bind(at.date_naive())
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// Sets the day a registered device was last seen to `day`, writing only when the stored
    /// day differs: a device connecting all day long costs one write a day, and a read per
    /// connect. Nothing for a device that is not registered.
    pub async fn touch(self, user: UserId, device: i64, day: NaiveDate) -> Result<()> {
        let stored: Option<NaiveDate> = with_pool!(self.0, read, |pool| {
            sqlx::query_scalar(
                "SELECT last_seen FROM user_devices WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user)
            .bind(device)
            .fetch_optional(pool)
            .await
        })?;
        if stored.is_none_or(|stored| stored == day) {
            return Ok(());
        }
        with_pool!(self.0, write, |pool| {
            sqlx::query(
                "UPDATE user_devices SET last_seen = $3
                 WHERE user_id = $1 AND device_id = $2 AND last_seen <> $3",
            )
            .bind(user)
            .bind(device)
            .bind(day)
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// Each registered device of `user`, with the registration id its keys carry (if any).
    pub async fn registrations(self, user: UserId) -> Result<Vec<(i64, Option<i64>)>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as(
                "SELECT r.device_id, k.registration_id FROM user_devices r
                 LEFT JOIN devices k ON k.user_id = r.user_id AND k.device_id = r.device_id
                 WHERE r.user_id = $1 ORDER BY r.device_id",
            )
            .bind(user)
            .fetch_all(pool)
            .await
        })?)
    }

    /// The registered devices of `user`, by device id, with what the key directory knows.
    pub async fn list(self, user: UserId) -> Result<Vec<DeviceRecord>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, DeviceRecord>(
                "SELECT u.device_id, u.name, u.created_at, u.last_seen, d.registration_id,
                     d.updated_at AS keys_updated_at,
                     (SELECT COUNT(*) FROM one_time_prekeys p
                      WHERE p.user_id = u.user_id AND p.device_id = u.device_id)
                         AS one_time_prekeys,
                     (SELECT kind FROM push_registrations r
                      WHERE r.user_id = u.user_id AND r.device_id = u.device_id) AS push
                 FROM user_devices u
                 LEFT JOIN devices d ON d.user_id = u.user_id AND d.device_id = u.device_id
                 WHERE u.user_id = $1 ORDER BY u.device_id",
            )
            .bind(user)
            .fetch_all(pool)
            .await
        })?)
    }

    /// Unlinks `device` of `user` in one transaction: its registry row (and by cascade its
    /// envelope queue), its keys (and by cascade its one-time prekeys), and the sessions bound
    /// to it, revoked `at` (their sockets are the caller's to close).
    pub async fn unlink(self, user: UserId, device: i64, at: DateTime<Utc>) -> Result<Unlinked> {
        Ok(with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            let registered =
                sqlx::query("DELETE FROM user_devices WHERE user_id = $1 AND device_id = $2")
                    .bind(user)
                    .bind(device)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            let keys = sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id = $2")
                .bind(user)
                .bind(device)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let sessions: Vec<SessionId> = sqlx::query_scalar(
                "UPDATE sessions SET revoked_at = $3
                 WHERE user_id = $1 AND device_id = $2 AND revoked_at IS NULL RETURNING id",
            )
            .bind(user)
            .bind(device)
            .bind(at)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(Unlinked {
                found: registered + keys > 0,
                sessions,
            })
        })?)
    }
}
