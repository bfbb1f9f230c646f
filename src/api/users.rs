//! `/api/users`: search and lookup by email.

use axum::extract::State;
use serde::Deserialize;

use super::{
    docs::ErrorBody,
    extract::Query,
    paging::{Limit, saturating_limit},
};
use crate::{AppState, auth::AuthUser, domain::users, error::Result, model::User};

#[derive(Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
    #[serde(default, deserialize_with = "saturating_limit")]
    limit: Option<i64>,
    /// The last username of the previous page.
    after: Option<String>,
}

#[utoipa::path(
    get,
    path = "/users/search",
    tag = "users",
    summary = "Search users",
    params(("q" = Option<String>, Query, description = "part of a username, name or email"), ("limit" = Option<Limit>, Query, description = "page size (the app asks for 10, 50 or 1000); any integer is accepted and clamped"), ("after" = Option<String>, Query, description = "username of the last user already seen")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "users, caller excluded", body = Vec<User>),
        (status = 400, description = "a `limit` that is not an integer", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 429, description = "too many lookups (Retry-After)", body = ErrorBody),
    )
)]
pub async fn search(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(query): Query<SearchQuery>,
) -> Result<axum::Json<Vec<User>>> {
    let found = users::search(
        &state,
        user,
        query.q.as_deref(),
        query.after.as_deref(),
        query.limit,
    )
    .await?;
    Ok(axum::Json(found))
}

#[derive(Deserialize)]
pub struct EmailQuery {
    email: String,
}

#[utoipa::path(
    get,
    path = "/users/find-by-email",
    tag = "users",
    summary = "Find a user by exact email",
    params(("email" = String, Query, description = "exact email")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the user", body = User),
        (status = 400, description = "the caller's own email, or no `email`", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "not found", body = ErrorBody),
        (status = 429, description = "too many lookups (Retry-After)", body = ErrorBody),
    )
)]
pub async fn find_by_email(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(query): Query<EmailQuery>,
) -> Result<axum::Json<User>> {
    Ok(axum::Json(
        users::find_by_email(&state, user, &query.email).await?,
    ))
}
