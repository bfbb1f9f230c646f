//! `/api/users`: search and lookup by email.

use axum::extract::State;
use serde::Deserialize;

use super::{extract::Query, paging::saturating_limit};
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
    params(("q" = Option<String>, Query, description = "part of a username, name or email"), ("limit" = Option<i64>, Query, description = "page size"), ("after" = Option<String>, Query, description = "username of the last user already seen")),
    security(("bearer" = [])),
    responses((status = 200, description = "users, caller excluded", body = Value), (status = 401, description = "missing or bad token (empty body)"))
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
    responses((status = 200, description = "the user", body = Value), (status = 400, description = "the caller's own email", body = Value), (status = 404, description = "not found", body = Value), (status = 401, description = "missing or bad token (empty body)"))
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
