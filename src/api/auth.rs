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

#[utoipa::path(
    post,
    path = "/auth/register",
    tag = "auth",
    summary = "Create an account",
    request_body(content = Value, description = "{email, username, password, name?}", example = json!({"email": "ada@example.com", "username": "ada", "password": "correct horse", "name": "Ada"})),
    responses((status = 201, description = "{token, user}", body = Value), (status = 400, description = "invalid input", body = Value), (status = 409, description = "email or username taken", body = Value))
)]
pub async fn register(
    State(state): State<AppState>,
    Json(form): Json<Registration>,
) -> Result<(StatusCode, axum::Json<SessionBody>)> {
    let session = accounts::register(&state, form).await?;
    Ok((StatusCode::CREATED, axum::Json(session.into())))
}

#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "auth",
    summary = "Log in",
    request_body(content = Value, description = "{email, password}", example = json!({"email": "ada@example.com", "password": "correct horse"})),
    responses((status = 200, description = "{token, user}", body = Value), (status = 401, description = "unknown email or wrong password (empty body)"))
)]
pub async fn login(
    State(state): State<AppState>,
    Json(form): Json<Credentials>,
) -> Result<axum::Json<SessionBody>> {
    Ok(axum::Json(accounts::login(&state, form).await?.into()))
}

#[utoipa::path(
    get,
    path = "/auth/me",
    tag = "auth",
    summary = "The caller",
    security(("bearer" = [])),
    responses((status = 200, description = "the caller's user object", body = Value), (status = 401, description = "missing or bad token (empty body)"))
)]
pub async fn me(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<axum::Json<User>> {
    // The token was checked against an existing user; a deletion in between is a 401.
    let user = state.store.user(user).await?.ok_or(Error::Unauthorized)?;
    Ok(axum::Json(user))
}
