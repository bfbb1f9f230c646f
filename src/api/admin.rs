//! `/api/admin`: the operator's API, enabled by `ADMIN_TOKEN` (unset: every route is a 404, as
//! if absent). Each call needs `Authorization: Bearer <ADMIN_TOKEN>` (a user's token is not
//! one), is limited per client address (`ADMIN_RATE_PER_MINUTE`, wrong tokens included) and is
//! logged with its action, never the token.

use axum::{
    extract::{FromRequestParts, State},
    http::{StatusCode, request::Parts},
};
use serde::Serialize;

use super::{
    docs::ErrorBody,
    extract::{ClientIp, Path},
};
use crate::{
    AppState, auth,
    domain::admin::{self, Stats, Suspension},
    error::{Error, Result},
    model::UserId,
};

/// An admin call: the API is enabled, the caller within its budget, the token right. The
/// checks run in that order, so a disabled API tells nothing and guesses spend the budget.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let Some(expected) = &state.config.admin_token else {
            // What the router answers for a route it does not have.
            return Err(Error::NotFound("route"));
        };
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        state.admin_calls.take(ip)?;
        if !auth::bearer_is(parts, expected.expose()) {
            tracing::warn!(client = ?ip, "admin call with a wrong or missing token");
            return Err(Error::Unauthorized);
        }
        Ok(Self)
    }
}

/// The audit line of an admin action (the request's own line follows with its status).
fn audit(action: &'static str, user: Option<UserId>) {
    match user {
        Some(user) => tracing::info!(action, %user, "admin action"),
        None => tracing::info!(action, "admin action"),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Revoked {
    pub user_id: UserId,
    /// Sessions that were active.
    pub sessions_revoked: u64,
}

#[utoipa::path(
    post,
    path = "/admin/users/{id}/suspend",
    tag = "admin",
    summary = "Suspend a user: every session revoked and socket closed (4001) on every node; login and refresh answer 403 `suspended` until unsuspended",
    params(("id" = Uuid, Path, description = "the user")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "suspended (or already: the first time is kept)", body = Suspension),
        (status = 401, description = "missing or wrong admin token (empty body)"),
        (status = 404, description = "no such user", body = ErrorBody),
        (status = 429, description = "too many admin calls from this address (Retry-After)", body = ErrorBody),
    )
)]
pub async fn suspend(
    _: Admin,
    State(state): State<AppState>,
    Path(user): Path<UserId>,
) -> Result<axum::Json<Suspension>> {
    audit("suspend", Some(user));
    Ok(axum::Json(admin::suspend(&state, user).await?))
}

#[utoipa::path(
    delete,
    path = "/admin/users/{id}/suspend",
    tag = "admin",
    summary = "Lift a user's suspension: they may sign in again (their old sessions stay revoked)",
    params(("id" = Uuid, Path, description = "the user")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "active (or already)", body = Suspension),
        (status = 401, description = "missing or wrong admin token (empty body)"),
        (status = 404, description = "no such user", body = ErrorBody),
        (status = 429, description = "too many admin calls from this address (Retry-After)", body = ErrorBody),
    )
)]
pub async fn unsuspend(
    _: Admin,
    State(state): State<AppState>,
    Path(user): Path<UserId>,
) -> Result<axum::Json<Suspension>> {
    audit("unsuspend", Some(user));
    Ok(axum::Json(admin::unsuspend(&state, user).await?))
}

#[utoipa::path(
    post,
    path = "/admin/users/{id}/revoke-sessions",
    tag = "admin",
    summary = "Sign a user out everywhere: every session revoked, every socket closed (4001) on every node; they may sign in again",
    params(("id" = Uuid, Path, description = "the user")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "revoked", body = Revoked),
        (status = 401, description = "missing or wrong admin token (empty body)"),
        (status = 404, description = "no such user", body = ErrorBody),
        (status = 429, description = "too many admin calls from this address (Retry-After)", body = ErrorBody),
    )
)]
pub async fn revoke_sessions(
    _: Admin,
    State(state): State<AppState>,
    Path(user): Path<UserId>,
) -> Result<axum::Json<Revoked>> {
    audit("revoke_sessions", Some(user));
    let sessions_revoked = admin::revoke_sessions(&state, user).await?;
    Ok(axum::Json(Revoked {
        user_id: user,
        sessions_revoked,
    }))
}

#[utoipa::path(
    delete,
    path = "/admin/users/{id}",
    tag = "admin",
    summary = "Delete a user's account and every row that names it, as its owner can (DELETE /api/auth/me)",
    params(("id" = Uuid, Path, description = "the user")),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, description = "missing or wrong admin token (empty body)"),
        (status = 404, description = "no such user", body = ErrorBody),
        (status = 429, description = "too many admin calls from this address (Retry-After)", body = ErrorBody),
    )
)]
pub async fn delete_user(
    _: Admin,
    State(state): State<AppState>,
    Path(user): Path<UserId>,
) -> Result<StatusCode> {
    audit("delete_user", Some(user));
    admin::delete(&state, user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Cost: one query of seven counts and sums, each over a whole table (see
/// `store::Stats::totals`), plus two Redis reads in a cluster. Not for frequent scraping:
/// `/metrics` has the live numbers.
#[utoipa::path(
    get,
    path = "/admin/stats",
    tag = "admin",
    summary = "Totals: users, devices, pending messages and envelopes, stored bytes, and the sockets open on each node",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "the totals", body = Stats),
        (status = 401, description = "missing or wrong admin token (empty body)"),
        (status = 404, description = "the admin API is off", body = ErrorBody),
        (status = 429, description = "too many admin calls from this address (Retry-After)", body = ErrorBody),
    )
)]
pub async fn stats(_: Admin, State(state): State<AppState>) -> Result<axum::Json<Stats>> {
    audit("stats", None);
    Ok(axum::Json(admin::stats(&state).await?))
}
