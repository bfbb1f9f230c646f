//! `/api/presence`: set one's own, read a contact's.

use axum::extract::State;
use serde::Deserialize;

use super::{
    docs::ErrorBody,
    extract::{Json, Path},
};
use crate::{
    AppState,
    auth::AuthUser,
    domain::presence,
    error::{Error, Result},
    model::{Presence, PresenceState, UserId},
};

#[derive(Deserialize, utoipa::ToSchema)]
pub struct SetPresence {
    #[schema(value_type = Presence)]
    status: String,
}

#[utoipa::path(
    post,
    path = "/presence",
    tag = "presence",
    summary = "Set the caller's presence",
    request_body = SetPresence,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the caller's presence", body = PresenceState),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn set(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<SetPresence>,
) -> Result<axum::Json<PresenceState>> {
    let status = Presence::parse(&body.status)
        .ok_or_else(|| Error::invalid("status must be online, offline, away or busy"))?;
    Ok(axum::Json(presence::set(&state, user, status).await?))
}

#[utoipa::path(
    get,
    path = "/presence/{id}",
    tag = "presence",
    summary = "A user's presence",
    params(("id" = Uuid, Path, description = "user id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the user's presence", body = PresenceState),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "not found", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    AuthUser(viewer): AuthUser,
    Path(user): Path<UserId>,
) -> Result<axum::Json<PresenceState>> {
    Ok(axum::Json(presence::get(&state, viewer, user).await?))
}
