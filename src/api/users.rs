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

pub async fn find_by_email(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(query): Query<EmailQuery>,
) -> Result<axum::Json<User>> {
    Ok(axum::Json(
        users::find_by_email(&state, user, &query.email).await?,
    ))
}
