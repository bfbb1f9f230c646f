//! `/api/presence`: set one's own, read a contact's.

use axum::extract::State;
use serde::Deserialize;

use super::extract::{Json, Path};
use crate::{
    AppState,
    auth::AuthUser,
    domain::presence,
    error::{Error, Result},
    model::{Presence, PresenceState, UserId},
};

#[derive(Deserialize)]
pub struct SetPresence {
    status: String,
}

#[utoipa::path(
    post,
    path = "/presence",
    tag = "presence",
    summary = "Set the caller's presence",
    request_body(content = Value, description = "{status: online|offline|away|busy}"),
    security(("bearer" = [])),
    responses((status = 200, description = "{user_id, status, last_seen, updated_at}", body = Value), (status = 400, description = "invalid input", body = Value), (status = 401, description = "missing or bad token (empty body)"))
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
    responses((status = 200, description = "{user_id, status, last_seen, updated_at}", body = Value), (status = 404, description = "not found", body = Value), (status = 401, description = "missing or bad token (empty body)"))
)]
pub async fn get(
    State(state): State<AppState>,
    AuthUser(viewer): AuthUser,
    Path(user): Path<UserId>,
) -> Result<axum::Json<PresenceState>> {
    Ok(axum::Json(presence::get(&state, viewer, user).await?))
}
