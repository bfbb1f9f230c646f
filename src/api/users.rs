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
    description = "Who is found depends on the server's `USER_DIRECTORY`:\n\n\
        - `open` (the development default): anyone; an empty `q` lists everyone, paged with \
        `after`, `limit` up to 1000. `q` matches part of a username or name, any case, and an \
        email only whole (part of it for the caller's contacts).\n\
        - `search` (the production default): `q` of at least 3 characters (400 \
        `query_too_short`), matched on username and name only (an email only through \
        find-by-email); at most 20 users and no next page (`after` is 400 \
        `paging_unavailable`).\n\
        - `contacts`: only users the caller shares a conversation with, matched as under \
        `open`.\n\n\
        Whatever the policy, users the caller blocks are left out, and a user's `email` is \
        `\"\"` unless the caller is their contact (see `CONTACTS_BY_CONSENT`) or typed that \
        email whole.",
    params(
        ("q" = Option<String>, Query, max_length = 100, description = "part of a username or name; or an email (see above)"),
        ("limit" = Option<Limit>, Query, description = "page size (the app asks for 10, 50 or 1000); any integer is accepted and clamped (to 20 under `search`)"),
        ("after" = Option<String>, Query, description = "username of the last user already seen (not under `search`)"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "users, caller excluded", body = Vec<User>),
        (status = 400, description = "a `limit` that is not an integer, a `q` over 100 characters; under `search`, a `q` under 3 characters (`query_too_short`) or an `after` (`paging_unavailable`)", body = ErrorBody),
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
    description = "Answers under every `USER_DIRECTORY` policy: the way to reach someone whose address one knows. A user the caller blocks is not found (404), as in search.",
    params(("email" = String, Query, description = "exact email")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the user, email included (whatever `USER_DIRECTORY` says)", body = User),
        (status = 400, description = "the caller's own email, or no `email`", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "not found, or a user the caller blocks", body = ErrorBody),
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
