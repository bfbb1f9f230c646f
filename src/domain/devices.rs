//! Devices as first-class: the registry of a user's devices (ids 1..=127), which a device
//! joins by uploading keys or signing in as itself (`POST /api/auth/login` with `device_id`),
//! and unlinking one. Device 1 is the primary: what unbound sessions (the app) speak for.

use serde::Serialize;

use super::keys::{DEFAULT_DEVICE_ID, MAX_DEVICE_ID};
use crate::{
    AppState,
    auth::TokenClaims,
    error::{Error, Result},
    events::CloseReason,
    model::{UserId, now},
    store::DeviceRecord,
};

/// A device name is for its owner's eyes (a list of their devices): short, one line.
pub const MAX_NAME_CHARS: usize = 64;

/// A device of the caller, as `GET /api/devices` lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceInfo {
    /// The device id (1..=127); `device_id` says the same.
    pub id: i64,
    pub device_id: i64,
    /// The name given at login, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, max_length = 64)]
    pub name: Option<String>,
    /// When the device was registered (first key upload or login as itself).
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The day (`YYYY-MM-DD`, UTC) it last signed in or connected: never finer.
    #[schema(value_type = String, format = Date, example = "2026-12-03")]
    pub last_seen: chrono::NaiveDate,
    /// From its published keys; absent when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub registration_id: Option<i64>,
    /// One-time prekeys it has left (0 without keys).
    pub one_time_prekeys: i64,
    /// When its keys were last uploaded; absent when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// How it is woken when it has no socket (`PUT /api/devices/{id}/push`): `webpush`,
    /// `unifiedpush`, `fcm`, `apns`, or null.
    #[schema(nullable = true)]
    pub push: Option<String>,
}

impl From<DeviceRecord> for DeviceInfo {
    fn from(d: DeviceRecord) -> Self {
        Self {
            id: d.device_id,
            device_id: d.device_id,
            name: d.name,
            created_at: d.created_at,
            last_seen: d.last_seen,
            registration_id: d.registration_id,
            one_time_prekeys: d.one_time_prekeys,
            updated_at: d.keys_updated_at,
            push: d.push,
        }
    }
}

/// The device a login names, and its name (trimmed; blank is none). Both are checked even
/// when only one is given, so a malformed request is refused the same way either way.
pub fn login_device(
    device_id: Option<i64>,
    name: Option<String>,
) -> Result<Option<(i64, Option<String>)>> {
    if device_id.is_some_and(|device| !(1..=MAX_DEVICE_ID).contains(&device)) {
        return Err(Error::Invalid {
            code: "invalid_device",
            message: format!("device_id must be between 1 and {MAX_DEVICE_ID}"),
        });
    }
    let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    if name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NAME_CHARS)
    {
        return Err(Error::invalid(format!(
            "device_name must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    Ok(device_id.map(|device| (device, name)))
}

/// Registers (or marks seen) a device that signed in as itself or uploaded keys.
pub async fn register(
    state: &AppState,
    user: UserId,
    device: i64,
    name: Option<&str>,
) -> Result<()> {
    state
        .store
        .devices()
        .upsert(user, device, name, now())
        .await
}

/// The device a socket speaks for: a device-bound session's own (a query naming another is
/// refused), else the one the query names, else device 1. Also whether the socket named its
/// device (bound, or named in the query).
pub fn socket_device(claims: &TokenClaims, named: Option<i64>) -> Result<(i64, bool)> {
    match (claims.device, named) {
        (Some(bound), Some(named)) if named != bound => Err(Error::Invalid {
            code: "wrong_device",
            message: format!("this session is signed in as device {bound}, not {named}"),
        }),
        (Some(bound), _) => Ok((bound, true)),
        (None, Some(named)) => Ok((super::keys::device_id(Some(named))?, true)),
        (None, None) => Ok((DEFAULT_DEVICE_ID, false)),
    }
}

/// Marks a connecting device seen today. Never fails the connect: a database hiccup here
/// only leaves the day stale, so it is logged and forgotten.
pub async fn seen(state: &AppState, user: UserId, device: i64) {
    let today = now().date_naive();
    if let Err(e) = state.store.devices().touch(user, device, today).await {
        e.context("marking a device seen").log_if_internal();
    }
}

/// The caller's registered devices, by id.
pub async fn list(state: &AppState, user: UserId) -> Result<Vec<DeviceInfo>> {
    let devices = state.store.devices().list(user).await?;
    Ok(devices.into_iter().map(Into::into).collect())
}

/// Unlinks one of the caller's devices: its registry row and queue, its keys, the sessions
/// bound to it (revoked: their tokens stop working), and every socket of that device on every
/// node (closed with 4001), whichever session opened it. The primary device cannot be
/// unlinked, and a session bound to another device may only unlink its own.
pub async fn unlink(state: &AppState, claims: &TokenClaims, device: i64) -> Result<()> {
    let user = claims.user_id;
    if !(1..=MAX_DEVICE_ID).contains(&device) {
        return Err(Error::NotFound("device"));
    }
    if device == DEFAULT_DEVICE_ID {
        return Err(Error::Refused {
            code: "primary_device",
            message: "the primary device (1) cannot be unlinked",
        });
    }
    if let Some(own) = claims.device
        && own != DEFAULT_DEVICE_ID
        && own != device
    {
        return Err(Error::Refused {
            code: "wrong_device",
            message: "a linked device may only unlink itself",
        });
    }
    let unlinked = state.store.devices().unlink(user, device, now()).await?;
    if !unlinked.found {
        return Err(Error::NotFound("device"));
    }
    // The revocation path of a logout, for each bound session: their sockets close on every
    // node, and a socket between its token check and its tracking is caught too.
    for session in unlinked.sessions {
        state.hub.close_session(session, CloseReason::Revoked);
    }
    // Unbound sessions' sockets that named this device go too.
    state.hub.close_device(user, device, CloseReason::Revoked);
    tracing::info!(%user, device, "device unlinked");
    Ok(())
}
