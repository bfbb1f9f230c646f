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

pub async fn set(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<SetPresence>,
) -> Result<axum::Json<PresenceState>> {
    let status = Presence::parse(&body.status)
        .ok_or_else(|| Error::invalid("status must be online, offline, away or busy"))?;
    Ok(axum::Json(presence::set(&state, user, status).await?))
}

pub async fn get(
    State(state): State<AppState>,
    AuthUser(viewer): AuthUser,
    Path(user): Path<UserId>,
) -> Result<axum::Json<PresenceState>> {
    Ok(axum::Json(presence::get(&state, viewer, user).await?))
}
