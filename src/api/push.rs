//! `/api/devices/{device_id}/push` and `/api/push/vapid`: how a device without a socket is woken.

use axum::{extract::State, http::StatusCode};
use serde::Serialize;

use super::{
    docs::ErrorBody,
    extract::{Json, Path},
};
use crate::{
    AppState,
    auth::AuthSession,
    domain::push::{self, PushRegistered, PushRegistration},
    error::Result,
};

/// `PUT /api/devices/{device_id}/push`: register (or replace) the device's push registration.
#[utoipa::path(
    put,
    path = "/devices/{device_id}/push",
    tag = "push",
    summary = "Register how one of the caller's devices is woken when it has no socket (Web Push, UnifiedPush, FCM, APNs)",
    params(("device_id" = i64, Path, description = "the device (1..=127); a device-bound session may name only its own")),
    request_body = PushRegistration,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "registered (replacing any earlier registration)", body = PushRegistered),
        (status = 400, description = "bad registration (`invalid_input`), an endpoint that is not https or not public (`unsafe_endpoint`), a kind this server does not send (`push_unavailable`)", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "another device than the session's own (`wrong_device`)", body = ErrorBody),
        (status = 404, description = "no such device of the caller", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn register_push(
    State(state): State<AppState>,
    AuthSession(claims): AuthSession,
    Path(device): Path<i64>,
    Json(registration): Json<PushRegistration>,
) -> Result<axum::Json<PushRegistered>> {
    push::check_device(&claims, device)?;
    let registered = push::register(&state, &claims, device, registration).await?;
    Ok(axum::Json(registered))
}

/// `DELETE /api/devices/{device_id}/push`: stop waking the device.
#[utoipa::path(
    delete,
    path = "/devices/{device_id}/push",
    tag = "push",
    summary = "Remove a device's push registration",
    params(("device_id" = i64, Path, description = "the device (1..=127); a device-bound session may name only its own")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "removed (or there was none)"),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "another device than the session's own (`wrong_device`)", body = ErrorBody),
        (status = 404, description = "not a device id", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn unregister_push(
    State(state): State<AppState>,
    AuthSession(claims): AuthSession,
    Path(device): Path<i64>,
) -> Result<StatusCode> {
    push::check_device(&claims, device)?;
    push::unregister(&state, claims.user_id, device).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The server's VAPID public key.
#[derive(Serialize, utoipa::ToSchema)]
pub struct VapidKey {
    /// base64url (unpadded) of the uncompressed P-256 point: a browser's
    /// `applicationServerKey`, and the key Web Push services check pushes against.
    pub public_key: String,
}

/// `GET /api/push/vapid`: the key Web Push subscriptions must be made with.
#[utoipa::path(
    get,
    path = "/push/vapid",
    tag = "push",
    summary = "The server's VAPID public key (RFC 8292), for Web Push subscriptions",
    responses((status = 200, description = "the key", body = VapidKey))
)]
pub async fn vapid_key(State(state): State<AppState>) -> axum::Json<VapidKey> {
    axum::Json(VapidKey {
        public_key: state.push.vapid_public_key().to_owned(),
    })
}
