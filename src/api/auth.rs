//! `/api/auth`: register, login, me.

use axum::{extract::State, http::StatusCode};
use serde::Serialize;

use super::extract::Json;
use crate::{
    AppState,
    auth::AuthUser,
    domain::accounts::{self, Credentials, Registration, Session},
    error::{Error, Result},
    model::User,
};

#[derive(Serialize)]
pub struct SessionBody {
    token: String,
    user: User,
}

impl From<Session> for SessionBody {
    fn from(s: Session) -> Self {
        Self {
            token: s.token,
            user: s.user,
        }
    }
}

pub async fn register(
    State(state): State<AppState>,
    Json(form): Json<Registration>,
) -> Result<(StatusCode, axum::Json<SessionBody>)> {
    let session = accounts::register(&state, form).await?;
    Ok((StatusCode::CREATED, axum::Json(session.into())))
}

pub async fn login(
    State(state): State<AppState>,
    Json(form): Json<Credentials>,
) -> Result<axum::Json<SessionBody>> {
    Ok(axum::Json(accounts::login(&state, form).await?.into()))
}

pub async fn me(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<axum::Json<User>> {
    // The token was checked against an existing user; a deletion in between is a 401.
    let user = state.store.user(user).await?.ok_or(Error::Unauthorized)?;
    Ok(axum::Json(user))
}
