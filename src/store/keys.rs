//! The key directory: each device's public prekey bundle, and one-time prekeys that are handed
//! out once. Key material is opaque bytes here; nothing is parsed.

use chrono::{DateTime, Utc};
use sqlx::QueryBuilder;

use super::{Db, Keys, with_pool};
use crate::{
    error::{Error, Result},
    model::UserId,
};

/// A one-time prekey: handed out once, then deleted.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PreKey {
    pub key_id: i64,
    pub public_key: Vec<u8>,
}

/// A prekey signed with the device's identity key (the signed prekey, the Kyber last-resort).
#[derive(Clone, Debug)]
pub struct SignedPreKey {
    pub key_id: i64,
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// The long-lived part of a device's bundle, as one full upload sets it.
#[derive(Clone, Debug)]
pub struct DeviceKeys {
    pub device_id: i64,
    pub registration_id: Option<i64>,
    pub identity_key: Vec<u8>,
    pub signed_prekey: SignedPreKey,
    pub pq_prekey: Option<SignedPreKey>,
}

/// What a later upload may change without replacing the identity key (`None`: unchanged).
#[derive(Clone, Debug)]
pub struct KeyRefresh {
    pub device_id: i64,
    pub registration_id: Option<i64>,
    pub signed_prekey: Option<SignedPreKey>,
    pub pq_prekey: Option<SignedPreKey>,
}

/// One device's bundle as handed to a fetcher.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub device_id: i64,
    pub registration_id: Option<i64>,
    pub identity_key: Vec<u8>,
    pub signed_prekey: SignedPreKey,
    /// `None` when the device had no one-time prekey left.
    pub one_time_prekey: Option<PreKey>,
    pub pq_prekey: Option<SignedPreKey>,
    /// One-time prekeys the device has left after this fetch.
    pub remaining: i64,
}

#[derive(sqlx::FromRow)]
struct DeviceRow {
    device_id: i64,
    registration_id: Option<i64>,
    identity_key: Vec<u8>,
    signed_prekey_id: i64,
    signed_prekey: Vec<u8>,
    signed_prekey_signature: Vec<u8>,
    pq_prekey_id: Option<i64>,
    pq_prekey: Option<Vec<u8>>,
    pq_prekey_signature: Option<Vec<u8>>,
}

impl DeviceRow {
    fn into_bundle(self, one_time_prekey: Option<PreKey>, remaining: i64) -> Bundle {
        let pq_prekey = match (self.pq_prekey_id, self.pq_prekey, self.pq_prekey_signature) {
            (Some(key_id), Some(public_key), Some(signature)) => Some(SignedPreKey {
                key_id,
                public_key,
                signature,
            }),
            _ => None,
        };
        Bundle {
            device_id: self.device_id,
            registration_id: self.registration_id,
            identity_key: self.identity_key,
            signed_prekey: SignedPreKey {
                key_id: self.signed_prekey_id,
                public_key: self.signed_prekey,
                signature: self.signed_prekey_signature,
            },
            one_time_prekey,
            pq_prekey,
            remaining,
        }
    }
}

macro_rules! select_devices {
    () => {
        "SELECT device_id, registration_id, identity_key, signed_prekey_id, signed_prekey,
             signed_prekey_signature, pq_prekey_id, pq_prekey, pq_prekey_signature
         FROM devices WHERE user_id = $1 AND ($2 IS NULL OR device_id = $2) ORDER BY device_id"
    };
}
/// On PostgreSQL the device rows are share-locked while their keys are taken, so that an
/// upload replacing them waits: a bundle never mixes keys of two uploads.
const SELECT_DEVICES_SQLITE: &str = select_devices!();
const SELECT_DEVICES_POSTGRES: &str = concat!(select_devices!(), " FOR SHARE");

/// Deletes and returns the device's lowest one-time prekey, in one statement. On PostgreSQL
/// `SKIP LOCKED` makes concurrent fetchers take different rows instead of queueing on the same
/// one and then finding it gone; SQLite has a single writer, so the statement alone suffices.
const TAKE_PREKEY_SQLITE: &str = "DELETE FROM one_time_prekeys
     WHERE user_id = $1 AND device_id = $2 AND key_id = (
         SELECT key_id FROM one_time_prekeys WHERE user_id = $1 AND device_id = $2
         ORDER BY key_id LIMIT 1)
     RETURNING key_id, public_key";
const TAKE_PREKEY_POSTGRES: &str = "DELETE FROM one_time_prekeys
     WHERE user_id = $1 AND device_id = $2 AND key_id = (
         SELECT key_id FROM one_time_prekeys WHERE user_id = $1 AND device_id = $2
         ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED)
     RETURNING key_id, public_key";

const COUNT_PREKEYS: &str =
    "SELECT COUNT(*) FROM one_time_prekeys WHERE user_id = $1 AND device_id = $2";

/// The error for a one-time prekey id the device already has stored.
fn prekey_id_taken(e: sqlx::Error) -> Error {
    if super::unique_violation(&e).is_some() {
        Error::Conflict {
            code: "prekey_id_taken",
            message: "a one-time prekey with this id is already stored for this device",
        }
    } else {
        e.into()
    }
}

impl Keys<'_> {
    /// Sets a device's whole bundle: identity, signed prekey, Kyber last-resort (cleared when
    /// absent) and one-time prekeys (all previous ones dropped), in one transaction. Returns the
    /// identity key it replaced, if the device had one.
    pub async fn replace_device_keys(
        self,
        user: UserId,
        keys: &DeviceKeys,
        prekeys: &[PreKey],
        at: DateTime<Utc>,
    ) -> Result<Option<Vec<u8>>> {
        let pq = keys.pq_prekey.as_ref();
        Ok(with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            // Locks an existing row (PostgreSQL) and reads the identity it is about to replace.
            let previous: Option<Vec<u8>> = sqlx::query_scalar(
                "UPDATE devices SET updated_at = $3 WHERE user_id = $1 AND device_id = $2
                 RETURNING identity_key",
            )
            .bind(user)
            .bind(keys.device_id)
            .bind(at)
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO devices (user_id, device_id, registration_id, identity_key,
                     signed_prekey_id, signed_prekey, signed_prekey_signature,
                     pq_prekey_id, pq_prekey, pq_prekey_signature, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
                 ON CONFLICT (user_id, device_id) DO UPDATE SET
                     registration_id = excluded.registration_id,
                     identity_key = excluded.identity_key,
                     signed_prekey_id = excluded.signed_prekey_id,
                     signed_prekey = excluded.signed_prekey,
                     signed_prekey_signature = excluded.signed_prekey_signature,
                     pq_prekey_id = excluded.pq_prekey_id,
                     pq_prekey = excluded.pq_prekey,
                     pq_prekey_signature = excluded.pq_prekey_signature,
                     updated_at = excluded.updated_at",
            )
            .bind(user)
            .bind(keys.device_id)
            .bind(keys.registration_id)
            .bind(&keys.identity_key)
            .bind(keys.signed_prekey.key_id)
            .bind(&keys.signed_prekey.public_key)
            .bind(&keys.signed_prekey.signature)
            .bind(pq.map(|k| k.key_id))
            .bind(pq.map(|k| &k.public_key))
            .bind(pq.map(|k| &k.signature))
            .bind(at)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM one_time_prekeys WHERE user_id = $1 AND device_id = $2")
                .bind(user)
                .bind(keys.device_id)
                .execute(&mut *tx)
                .await?;
            if !prekeys.is_empty() {
                let mut insert = QueryBuilder::new(
                    "INSERT INTO one_time_prekeys (user_id, device_id, key_id, public_key) ",
                );
                insert.push_values(prekeys, |mut row, key| {
                    row.push_bind(user)
                        .push_bind(keys.device_id)
                        .push_bind(key.key_id)
                        .push_bind(&key.public_key);
                });
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(previous)
        })?)
    }

    /// Changes what `refresh` carries and adds `prekeys` to the device's one-time prekeys, in
    /// one transaction, unless the device would then hold more than `max_stored`. Returns how
    /// many one-time prekeys the device has, or `None` when it has no keys at all.
    pub async fn refresh_device_keys(
        self,
        user: UserId,
        refresh: &KeyRefresh,
        prekeys: &[PreKey],
        max_stored: i64,
        at: DateTime<Utc>,
    ) -> Result<Option<i64>> {
        let signed = refresh.signed_prekey.as_ref();
        let pq = refresh.pq_prekey.as_ref();
        with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            // Also locks the row (PostgreSQL), so that concurrent uploads count one at a time.
            let found: Option<i64> = sqlx::query_scalar(
                "UPDATE devices SET updated_at = $3,
                     registration_id = COALESCE($4, registration_id),
                     signed_prekey_id = COALESCE($5, signed_prekey_id),
                     signed_prekey = COALESCE($6, signed_prekey),
                     signed_prekey_signature = COALESCE($7, signed_prekey_signature),
                     pq_prekey_id = COALESCE($8, pq_prekey_id),
                     pq_prekey = COALESCE($9, pq_prekey),
                     pq_prekey_signature = COALESCE($10, pq_prekey_signature)
                 WHERE user_id = $1 AND device_id = $2
                 RETURNING device_id",
            )
            .bind(user)
            .bind(refresh.device_id)
            .bind(at)
            .bind(refresh.registration_id)
            .bind(signed.map(|k| k.key_id))
            .bind(signed.map(|k| &k.public_key))
            .bind(signed.map(|k| &k.signature))
            .bind(pq.map(|k| k.key_id))
            .bind(pq.map(|k| &k.public_key))
            .bind(pq.map(|k| &k.signature))
            .fetch_optional(&mut *tx)
            .await?;
            if found.is_none() {
                return Ok(None);
            }
            let stored: i64 = sqlx::query_scalar(COUNT_PREKEYS)
                .bind(user)
                .bind(refresh.device_id)
                .fetch_one(&mut *tx)
                .await?;
            let total = stored + prekeys.len() as i64;
            if total > max_stored {
                return Err(Error::Invalid {
                    code: "too_many_prekeys",
                    message: format!(
                        "a device holds at most {max_stored} one-time prekeys; it has {stored}"
                    ),
                });
            }
            if !prekeys.is_empty() {
                let mut insert = QueryBuilder::new(
                    "INSERT INTO one_time_prekeys (user_id, device_id, key_id, public_key) ",
                );
                insert.push_values(prekeys, |mut row, key| {
                    row.push_bind(user)
                        .push_bind(refresh.device_id)
                        .push_bind(key.key_id)
                        .push_bind(&key.public_key);
                });
                insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(prekey_id_taken)?;
            }
            tx.commit().await?;
            Ok(Some(total))
        })
    }

    /// The bundle of each device of `user` (or of `device` only), each with one one-time prekey
    /// taken (deleted) atomically: concurrent fetches never get the same one.
    pub async fn take_bundles(self, user: UserId, device: Option<i64>) -> Result<Vec<Bundle>> {
        let (select, take) = match &self.0.db {
            Db::Sqlite(_) => (SELECT_DEVICES_SQLITE, TAKE_PREKEY_SQLITE),
            Db::Postgres(_) => (SELECT_DEVICES_POSTGRES, TAKE_PREKEY_POSTGRES),
        };
        Ok(with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            let devices = sqlx::query_as::<_, DeviceRow>(select)
                .bind(user)
                .bind(device)
                .fetch_all(&mut *tx)
                .await?;
            let mut bundles = Vec::with_capacity(devices.len());
            for row in devices {
                let taken = sqlx::query_as::<_, PreKey>(take)
                    .bind(user)
                    .bind(row.device_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let remaining: i64 = sqlx::query_scalar(COUNT_PREKEYS)
                    .bind(user)
                    .bind(row.device_id)
                    .fetch_one(&mut *tx)
                    .await?;
                bundles.push(row.into_bundle(taken, remaining));
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(bundles)
        })?)
    }

    /// How many one-time prekeys a device has left; `None` when it has no keys at all.
    pub async fn prekey_count(self, user: UserId, device: i64) -> Result<Option<i64>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_scalar(
                "SELECT (SELECT COUNT(*) FROM one_time_prekeys p
                         WHERE p.user_id = d.user_id AND p.device_id = d.device_id)
                 FROM devices d WHERE d.user_id = $1 AND d.device_id = $2",
            )
            .bind(user)
            .bind(device)
            .fetch_optional(pool)
            .await
        })?)
    }
}
