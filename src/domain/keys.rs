//! The Signal key directory: devices publish the *public* half of their prekey bundles, other
//! users fetch them to start a session (X3DH / PQXDH) while the device is offline. Keys are
//! opaque bytes with size limits; the server cannot use them to decrypt anything.

use std::collections::HashSet;

use serde::Serialize;

use crate::{
    AppState,
    error::{Error, Result},
    events::Event,
    model::{UserId, now},
    store::{Bundle, DeviceKeys, KeyRefresh, PreKey, SignedPreKey},
};

/// The device of clients that do not name one.
pub const DEFAULT_DEVICE_ID: i64 = 1;
/// libsignal device ids are 1..=127.
pub const MAX_DEVICE_ID: i64 = 127;
pub const MAX_PREKEYS_PER_UPLOAD: usize = 100;
/// Bounds what one device can make the server store.
pub const MAX_STORED_PREKEYS: i64 = 500;
/// A Curve25519 public key is 33 bytes with its type byte; leave room, refuse blobs.
pub const MAX_PUBLIC_KEY_BYTES: usize = 64;
pub const MAX_SIGNATURE_BYTES: usize = 128;
/// A Kyber-1024 public key is 1569 bytes with its type byte.
pub const MAX_PQ_KEY_BYTES: usize = 2048;

/// One upload by a device, base64 already decoded. With `identity_key` it is a full upload
/// that replaces every key of the device; without, it refreshes the signed prekey or the
/// last-resort key and adds one-time prekeys to those still stored.
#[derive(Debug)]
pub struct KeyUpload {
    pub device_id: i64,
    pub registration_id: Option<i64>,
    pub identity_key: Option<Vec<u8>>,
    pub signed_prekey: Option<SignedPreKey>,
    pub pq_prekey: Option<SignedPreKey>,
    pub one_time_prekeys: Vec<PreKey>,
}

/// How many one-time prekeys a device has left.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyCount {
    pub device_id: i64,
    pub count: i64,
    /// Below this, the device is sent `prekeys_low`.
    pub threshold: i64,
}

/// The device id a client named, or the default one.
pub fn device_id(raw: Option<i64>) -> Result<i64> {
    let id = raw.unwrap_or(DEFAULT_DEVICE_ID);
    if (1..=MAX_DEVICE_ID).contains(&id) {
        Ok(id)
    } else {
        Err(Error::invalid(format!(
            "device_id must be between 1 and {MAX_DEVICE_ID}"
        )))
    }
}

/// The device a request acts for: the one a device-bound session (`bound`) is signed in as,
/// which a request may not name another than (403 `wrong_device`); else the one `named`, or
/// device 1.
pub fn own_device(bound: Option<i64>, named: Option<i64>) -> Result<i64> {
    let named = named.map(|d| device_id(Some(d))).transpose()?;
    match (bound, named) {
        (Some(bound), Some(named)) if named != bound => Err(Error::Refused {
            code: "wrong_device",
            message: "this session is signed in as another device",
        }),
        (Some(bound), _) => Ok(bound),
        (None, named) => Ok(named.unwrap_or(DEFAULT_DEVICE_ID)),
    }
}

/// Stores `upload` for the caller's device, which joins the device registry (or is marked
/// seen there). A changed identity key is announced to the
/// caller's contacts (`identity_changed`): their safety number with this device changed.
pub async fn upload(state: &AppState, user: UserId, upload: KeyUpload) -> Result<KeyCount> {
    upload.validate()?;
    let at = now();
    let device_id = upload.device_id;
    let count = match upload.identity_key {
        Some(identity_key) => {
            let signed_prekey = upload.signed_prekey.ok_or_else(|| {
                Error::invalid("signed_prekey is required when identity_key is uploaded")
            })?;
            let keys = DeviceKeys {
                device_id,
                registration_id: upload.registration_id,
                identity_key,
                signed_prekey,
                pq_prekey: upload.pq_prekey,
            };
            let previous = state
                .store
                .keys()
                .replace_device_keys(user, &keys, &upload.one_time_prekeys, at)
                .await?;
            if previous.is_some_and(|old| old != keys.identity_key) {
                // Everyone who may see this user as a contact (a requester's safety number
                // matters to the one they asked too), not across a block.
                let audience = state
                    .store
                    .relations()
                    .audience(user, state.config.contacts_by_consent)
                    .await?;
                let contacts = audience.into_iter().map(|(contact, _)| contact);
                let event = Event::IdentityChanged {
                    user_id: user,
                    device_id,
                    timestamp: at,
                };
                super::deliver(state, contacts, &event);
            }
            upload.one_time_prekeys.len() as i64
        }
        None => {
            let refresh = KeyRefresh {
                device_id,
                registration_id: upload.registration_id,
                signed_prekey: upload.signed_prekey,
                pq_prekey: upload.pq_prekey,
            };
            state
                .store
                .keys()
                .refresh_device_keys(
                    user,
                    &refresh,
                    &upload.one_time_prekeys,
                    MAX_STORED_PREKEYS,
                    at,
                )
                .await?
                // Nothing to refresh: the first upload of a device must carry its identity.
                .ok_or(Error::NotFound("device"))?
        }
    };
    // After the keys: a refresh of a device without keys (404) registers nothing. A device
    // whose keys were stored but whose registration failed is registered at its next upload.
    state
        .store
        .devices()
        .upsert(user, device_id, None, at)
        .await?;
    Ok(KeyCount {
        device_id,
        count,
        threshold: state.config.prekey_low_threshold,
    })
}

/// The bundles of `target`'s devices (or of one device), each taking one one-time prekey.
/// Rate-limited per caller, since every fetch uses up a key of the target. A device left with
/// few one-time prekeys is told over WebSocket (`prekeys_low`).
pub async fn fetch(
    state: &AppState,
    caller: UserId,
    target: UserId,
    device: Option<i64>,
) -> Result<Vec<Bundle>> {
    if let Err(wait) = state.key_fetches.check(caller) {
        return Err(Error::TooManyRequests {
            retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
        });
    }
    may_fetch(state, caller, target).await?;
    if device.is_some_and(|d| !(1..=MAX_DEVICE_ID).contains(&d)) {
        return Err(Error::NotFound("device"));
    }
    let bundles = state.store.keys().take_bundles(target, device).await?;
    if bundles.is_empty() {
        return Err(Error::NotFound(if device.is_some() {
            "device"
        } else {
            "keys"
        }));
    }
    let threshold = state.config.prekey_low_threshold;
    for bundle in &bundles {
        // Only a fetch that took a key can cross the threshold; a device that reconnects
        // while low is told again (see `low_prekeys`).
        if bundle.one_time_prekey.is_some() && bundle.remaining < threshold {
            let event = Event::PrekeysLow {
                device_id: bundle.device_id,
                count: bundle.remaining,
                threshold,
            };
            super::deliver(state, [target], &event);
        }
    }
    Ok(bundles)
}

/// Who may fetch whose keys: whoever may message them. Today any user may message any
/// existing user (a user may also fetch their own, for their other devices).
async fn may_fetch(state: &AppState, _caller: UserId, target: UserId) -> Result<()> {
    if state.store.users().user_exists(target).await? {
        Ok(())
    } else {
        Err(Error::NotFound("user"))
    }
}

pub async fn count(state: &AppState, user: UserId, device: i64) -> Result<KeyCount> {
    Ok(KeyCount {
        device_id: device,
        count: state
            .store
            .keys()
            .prekey_count(user, device)
            .await?
            .unwrap_or(0),
        threshold: state.config.prekey_low_threshold,
    })
}

/// `prekeys_low` for a device that just connected, if it has keys and too few one-time ones.
pub async fn low_prekeys(state: &AppState, user: UserId, device: i64) -> Option<Event> {
    let threshold = state.config.prekey_low_threshold;
    match state.store.keys().prekey_count(user, device).await {
        Ok(Some(count)) if count < threshold => Some(Event::PrekeysLow {
            device_id: device,
            count,
            threshold,
        }),
        Ok(_) => None,
        Err(e) => {
            e.context("counting prekeys").log_if_internal();
            None
        }
    }
}

impl KeyUpload {
    /// Sizes, counts and unique ids; nothing is stored when any of it is wrong.
    fn validate(&self) -> Result<()> {
        device_id(Some(self.device_id))?;
        if let Some(key) = &self.identity_key {
            check_len("identity_key", key, MAX_PUBLIC_KEY_BYTES)?;
        }
        if let Some(signed) = &self.signed_prekey {
            check_len(
                "signed_prekey.public_key",
                &signed.public_key,
                MAX_PUBLIC_KEY_BYTES,
            )?;
            check_len(
                "signed_prekey.signature",
                &signed.signature,
                MAX_SIGNATURE_BYTES,
            )?;
        }
        if let Some(pq) = &self.pq_prekey {
            check_len(
                "pq_last_resort_prekey.public_key",
                &pq.public_key,
                MAX_PQ_KEY_BYTES,
            )?;
            check_len(
                "pq_last_resort_prekey.signature",
                &pq.signature,
                MAX_SIGNATURE_BYTES,
            )?;
        }
        if self.one_time_prekeys.len() > MAX_PREKEYS_PER_UPLOAD {
            return Err(Error::invalid(format!(
                "at most {MAX_PREKEYS_PER_UPLOAD} one-time prekeys per upload"
            )));
        }
        let mut ids = HashSet::with_capacity(self.one_time_prekeys.len());
        for key in &self.one_time_prekeys {
            check_len(
                "one_time_prekeys.public_key",
                &key.public_key,
                MAX_PUBLIC_KEY_BYTES,
            )?;
            if !ids.insert(key.key_id) {
                return Err(Error::invalid(format!(
                    "one-time prekey id {} appears twice",
                    key.key_id
                )));
            }
        }
        Ok(())
    }
}

fn check_len(field: &str, bytes: &[u8], max: usize) -> Result<()> {
    if bytes.is_empty() || bytes.len() > max {
        return Err(Error::invalid(format!("{field} must be 1 to {max} bytes")));
    }
    Ok(())
}
