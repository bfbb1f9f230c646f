//! Push registrations (one per device) and the server's own keys.

use std::{sync::Arc, time::Instant};

use chrono::{DateTime, Utc};

use super::{
    Push,
    push_cache::{CACHED_FOR, CACHED_MAX},
    with_pool,
};
use crate::{error::Result, model::UserId, push::Target};

/// A registration as stored: the columns of its kind are set, the others `NULL`.
#[derive(sqlx::FromRow)]
struct Row {
    kind: String,
    endpoint: Option<String>,
    p256dh: Option<String>,
    auth: Option<String>,
    token: Option<String>,
    topic: Option<String>,
}

impl Row {
    fn target(self) -> Option<Target> {
        Some(match self.kind.as_str() {
            "webpush" => Target::WebPush {
                endpoint: self.endpoint?,
                p256dh: self.p256dh?,
                auth: self.auth?,
            },
            "unifiedpush" => Target::UnifiedPush {
                endpoint: self.endpoint?,
            },
            "fcm" => Target::Fcm { token: self.token? },
            "apns" => Target::Apns {
                token: self.token?,
                topic: self.topic,
            },
            _ => return None,
        })
    }
}

/// The columns of `target`: (endpoint, p256dh, auth, token, topic).
type Columns<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

fn columns(target: &Target) -> Columns<'_> {
    match target {
        Target::WebPush {
            endpoint,
            p256dh,
            auth,
        } => (Some(endpoint), Some(p256dh), Some(auth), None, None),
        Target::UnifiedPush { endpoint } => (Some(endpoint), None, None, None, None),
        Target::Fcm { token } => (None, None, None, Some(token), None),
        Target::Apns { token, topic } => (None, None, None, Some(token), topic.as_deref()),
    }
}

impl Push<'_> {
    /// What is remembered of `user`'s devices with a registration, without asking the database
    /// (`None`: not known, or too old).
    pub fn cached_devices(self, user: UserId) -> Option<Arc<[i64]>> {
        let entry = self.0.push_devices.map().get(&user)?;
        (entry.1.elapsed() < CACHED_FOR).then(|| entry.0.clone())
    }

    /// Forgets what is remembered of `user`'s registrations (they changed, maybe elsewhere).
    pub fn forget(self, user: UserId) {
        self.0.push_devices.map().remove(&user);
    }

    /// The devices of `user` that registered for pushes (remembered for a while).
    pub async fn devices(self, user: UserId) -> Result<Arc<[i64]>> {
        if let Some(devices) = self.cached_devices(user) {
            return Ok(devices);
        }
        let devices: Vec<i64> = with_pool!(self.0, read, |pool| {
            sqlx::query_scalar(
                "SELECT device_id FROM push_registrations WHERE user_id = $1 ORDER BY device_id",
            )
            .bind(user)
            .fetch_all(pool)
            .await
        })?;
        let cache = &self.0.push_devices.map();
        if cache.len() >= CACHED_MAX {
            cache.clear();
        }
        let devices: Arc<[i64]> = devices.into();
        cache.insert(user, (devices.clone(), Instant::now()));
        Ok(devices)
    }

    /// Sets `device`'s registration to `target` (replacing any); `false` when the device is not
    /// in `user`'s registry.
    pub async fn set(
        self,
        user: UserId,
        device: i64,
        target: &Target,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let (endpoint, p256dh, auth, token, topic) = columns(target);
        let kind = target.kind();
        let written = with_pool!(self.0, write, |pool| {
            sqlx::query(
                "INSERT INTO push_registrations
                     (user_id, device_id, kind, endpoint, p256dh, auth, token, topic, created_at)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM user_devices
                 WHERE user_id = $1 AND device_id = $2
                 ON CONFLICT (user_id, device_id) DO UPDATE SET
                     kind = excluded.kind, endpoint = excluded.endpoint,
                     p256dh = excluded.p256dh, auth = excluded.auth, token = excluded.token,
                     topic = excluded.topic, created_at = excluded.created_at, pushed_at = NULL",
            )
            .bind(user)
            .bind(device)
            .bind(kind)
            .bind(endpoint)
            .bind(p256dh)
            .bind(auth)
            .bind(token)
            .bind(topic)
            .bind(at)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        self.forget(user);
        Ok(written > 0)
    }

    /// Removes `device`'s registration; `false` when it had none.
    pub async fn remove(self, user: UserId, device: i64) -> Result<bool> {
        let removed = with_pool!(self.0, write, |pool| {
            sqlx::query("DELETE FROM push_registrations WHERE user_id = $1 AND device_id = $2")
                .bind(user)
                .bind(device)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        self.forget(user);
        Ok(removed > 0)
    }

    /// Removes `device`'s registration if it is still `target` (the push service said it is
    /// gone; the device may have registered anew meanwhile).
    pub async fn remove_gone(self, user: UserId, device: i64, target: &Target) -> Result<bool> {
        let (endpoint, _, _, token, _) = columns(target);
        let removed = with_pool!(self.0, write, |pool| {
            sqlx::query(
                "DELETE FROM push_registrations
                 WHERE user_id = $1 AND device_id = $2 AND kind = $3
                     AND COALESCE(endpoint, token) = $4",
            )
            .bind(user)
            .bind(device)
            .bind(target.kind())
            .bind(endpoint.or(token))
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        self.forget(user);
        Ok(removed > 0)
    }

    /// Claims the right to wake `device` now (`at`): succeeds, with where to push, unless it
    /// was already woken after `since` and has not connected since. One claim wins however
    /// many nodes try: this is what makes a wake-up sent once in a cluster.
    pub async fn claim(
        self,
        user: UserId,
        device: i64,
        at: DateTime<Utc>,
        since: DateTime<Utc>,
    ) -> Result<Option<Target>> {
        let row: Option<Row> = with_pool!(self.0, write, |pool| {
            sqlx::query_as(
                "UPDATE push_registrations SET pushed_at = $3
                 WHERE user_id = $1 AND device_id = $2 AND (pushed_at IS NULL OR pushed_at <= $4)
                 RETURNING kind, endpoint, p256dh, auth, token, topic",
            )
            .bind(user)
            .bind(device)
            .bind(at)
            .bind(since)
            .fetch_optional(pool)
            .await
        })?;
        Ok(row.and_then(Row::target))
    }

    /// `device` connected: its next event wakes it again at once (if it has a socket no more).
    pub async fn connected(self, user: UserId, device: i64) -> Result<()> {
        with_pool!(self.0, write, |pool| {
            sqlx::query(
                "UPDATE push_registrations SET pushed_at = NULL
                 WHERE user_id = $1 AND device_id = $2 AND pushed_at IS NOT NULL",
            )
            .bind(user)
            .bind(device)
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// The server key `name`, created with `make` if there is none yet (the first node to
    /// store one wins; every node then reads the same).
    pub async fn server_key(
        self,
        name: &str,
        make: impl FnOnce() -> String,
        at: DateTime<Utc>,
    ) -> Result<String> {
        let read = async || -> Result<Option<String>> {
            Ok(with_pool!(self.0, read, |pool| {
                sqlx::query_scalar("SELECT value FROM server_keys WHERE name = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await
            })?)
        };
        if let Some(value) = read().await? {
            return Ok(value);
        }
        let value = make();
        with_pool!(self.0, write, |pool| {
            sqlx::query(
                "INSERT INTO server_keys (name, value, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(&value)
            .bind(at)
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(read().await?.unwrap_or(value))
    }
}
