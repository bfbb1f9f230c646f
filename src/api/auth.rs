//! `/api/auth`: register, login, refresh, logout, password change, me (and its deletion).

use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};

use super::{
    docs::ErrorBody,
    extract::{ClientIp, Json},
};
use crate::{
    AppState,
    auth::{AuthSession, AuthUser},
    domain::{
        accounts::{self, Credentials, Deletion, PasswordChange, Registration, Session},
        sessions::{self, Tokens},
    },
    error::{Error, Result},
    model::User,
};

/// `token` and `user` are what the app reads; the rest are additions for clients that refresh.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionBody {
    /// The access token (a JWT, URL-safe).
    token: String,
    user: User,
    refresh_token: String,
    /// Always `Bearer`.
    #[schema(value_type = String, example = "Bearer")]
    token_type: &'static str,
    /// Seconds until `token` expires.
    expires_in: u64,
}

impl SessionBody {
    fn new(tokens: Tokens, user: User) -> Self {
        Self {
            token: tokens.token,
            user,
            refresh_token: tokens.refresh_token,
            token_type: "Bearer",
            expires_in: tokens.expires_in,
        }
    }
}

impl From<Session> for SessionBody {
    fn from(s: Session) -> Self {
        Self::new(s.tokens, s.user)
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct RefreshForm {
    refresh_token: String,
}

/// Requests that can guess passwords or mint sessions are limited per client IP.
fn limit_ip(state: &AppState, ip: &ClientIp) -> Result<()> {
    ip.0.map_or(Ok(()), |ip| state.auth_by_ip.take(ip))
}

#[utoipa::path(
    post,
    path = "/auth/register",
    tag = "auth",
    summary = "Create an account",
    request_body = Registration,
    responses(
        (status = 201, description = "the new account and its session", body = SessionBody),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 409, description = "email or username taken", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many requests from this address (Retry-After)", body = ErrorBody),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    ip: ClientIp,
    Json(form): Json<Registration>,
) -> Result<(StatusCode, axum::Json<SessionBody>)> {
    limit_ip(&state, &ip)?;
    let session = accounts::register(&state, form).await?;
    Ok((StatusCode::CREATED, axum::Json(session.into())))
}

#[utoipa::path(
    post,
    path = "/auth/login",
    tag = "auth",
    summary = "Log in",
    request_body = Credentials,
    responses(
        (status = 200, description = "a new session", body = SessionBody),
        (status = 400, description = "not a JSON object with both fields, or a device_id out of 1..=127 (`invalid_device`) or a device_name too long", body = ErrorBody),
        (status = 401, description = "unknown email or wrong password (empty body)"),
        (status = 403, description = "the right password, but the account is suspended (`suspended`)", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many failed logins for this account from this address, or too many requests from it (Retry-After)", body = ErrorBody),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ip: ClientIp,
    Json(form): Json<Credentials>,
) -> Result<axum::Json<SessionBody>> {
    limit_ip(&state, &ip)?;
    Ok(axum::Json(
        accounts::login(&state, form, ip.0).await?.into(),
    ))
}

/// `{refresh_token}` → new tokens; the presented refresh token is used up. A second use of
/// the same refresh token revokes the session (401), unless it is a retry within
/// `REFRESH_REUSE_GRACE` while the new pair is unused: that pair is answered again.
#[utoipa::path(
    post,
    path = "/auth/refresh",
    tag = "auth",
    summary = "Trade a refresh token for new tokens (rotation; reuse revokes the session, but a retry within a few seconds gets the same pair)",
    request_body = RefreshForm,
    responses(
        (status = 200, description = "the new tokens", body = SessionBody),
        (status = 400, description = "not a JSON object with `refresh_token`", body = ErrorBody),
        (status = 401, description = "unknown, expired or reused refresh token (empty body)"),
        (status = 403, description = "the token's account is suspended (`suspended`)", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many attempts from this address (Retry-After)", body = ErrorBody),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    ip: ClientIp,
    Json(form): Json<RefreshForm>,
) -> Result<axum::Json<SessionBody>> {
    limit_ip(&state, &ip)?;
    let (tokens, user) = sessions::refresh(&state, &form.refresh_token).await?;
    Ok(axum::Json(SessionBody::new(tokens, user)))
}

/// Signs out this device's session: its tokens stop working, its sockets close (4001).
#[utoipa::path(
    post,
    path = "/auth/logout",
    tag = "auth",
    summary = "Sign out this session",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "signed out"),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    AuthSession(claims): AuthSession,
) -> Result<StatusCode> {
    sessions::logout(&state, claims).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Signs out every session of the caller.
#[utoipa::path(
    post,
    path = "/auth/logout-all",
    tag = "auth",
    summary = "Sign out every session",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "signed out everywhere"),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn logout_all(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<StatusCode> {
    sessions::logout_everywhere(&state, user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `{current_password, new_password}`: every session is revoked; the answer is a new one.
#[utoipa::path(
    post,
    path = "/auth/password",
    tag = "auth",
    summary = "Change the password (revokes every session, answers a new one)",
    security(("bearer" = [])),
    request_body = PasswordChange,
    responses(
        (status = 200, description = "a new session (every other one is revoked)", body = SessionBody),
        (status = 400, description = "invalid new password", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "wrong current password", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many writes, or too many wrong passwords for this account (Retry-After)", body = ErrorBody),
    )
)]
pub async fn change_password(
    State(state): State<AppState>,
    AuthSession(claims): AuthSession,
    Json(form): Json<PasswordChange>,
) -> Result<axum::Json<SessionBody>> {
    // The caller's new session speaks for the same device as the one it replaces.
    Ok(axum::Json(
        accounts::change_password(&state, claims.user_id, claims.device, form)
            .await?
            .into(),
    ))
}

#[utoipa::path(
    get,
    path = "/auth/me",
    tag = "auth",
    summary = "The caller",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the caller", body = User),
        (status = 401, description = "missing or bad token (empty body)"),
    )
)]
pub async fn me(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<axum::Json<User>> {
    // The token was checked against an existing user; a deletion in between is a 401.
    let user = state
        .store
        .users()
        .user(user)
        .await?
        .ok_or(Error::Unauthorized)?;
    Ok(axum::Json(user))
}

/// `{password}`: deletes the account and everything that names it → 204.
#[utoipa::path(
    delete,
    path = "/auth/me",
    tag = "auth",
    summary = "Delete the account and every row that names it",
    security(("bearer" = [])),
    request_body = Deletion,
    responses(
        (status = 204, description = "deleted"),
        (status = 400, description = "not a JSON object with `password`", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "wrong password", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many writes, or too many wrong passwords for this account (Retry-After)", body = ErrorBody),
    )
)]
pub async fn delete_me(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(form): Json<Deletion>,
) -> Result<StatusCode> {
    accounts::delete(&state, user, form).await?;
    Ok(StatusCode::NO_CONTENT)
}
