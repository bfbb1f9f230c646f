//! `/api/settings/privacy`: what the caller shows others.

use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::{docs::ErrorBody, extract::Json};
use crate::{AppState, auth::AuthUser, domain::presence, error::Result};

/// The caller's privacy settings.
#[derive(Deserialize, Serialize, utoipa::ToSchema)]
pub struct PrivacySettings {
    /// Hide one's last seen and online status from everyone: others see `offline`, last seen
    /// at the Unix epoch, and get no live presence updates.
    hide_last_seen: bool,
}

#[utoipa::path(
    get,
    path = "/settings/privacy",
    tag = "settings",
    summary = "The caller's privacy settings",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the settings", body = PrivacySettings),
        (status = 401, description = "missing or bad token (empty body)"),
    )
)]
pub async fn get_privacy(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<axum::Json<PrivacySettings>> {
    let hide_last_seen = presence::hides_last_seen(&state, user).await?;
    Ok(axum::Json(PrivacySettings { hide_last_seen }))
}

#[utoipa::path(
    put,
    path = "/settings/privacy",
    tag = "settings",
    summary = "Change the caller's privacy settings",
    request_body = PrivacySettings,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the settings now", body = PrivacySettings),
        (status = 400, description = "not a JSON object with a boolean `hide_last_seen`", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn set_privacy(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<PrivacySettings>,
) -> Result<axum::Json<PrivacySettings>> {
    let hide_last_seen = presence::set_hide_last_seen(&state, user, body.hide_last_seen).await?;
    Ok(axum::Json(PrivacySettings { hide_last_seen }))
}
