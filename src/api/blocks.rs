//! `/api/users/{id}/block` and `/api/blocks`: block and unblock a user, list whom one blocks.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{docs::ErrorBody, extract::Path};
use crate::{
    AppState,
    auth::AuthUser,
    domain::blocks,
    error::Result,
    model::{BlockedUser, UserId},
};

/// A block: whom, and since when.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Block {
    pub user_id: UserId,
    /// When the block began (blocking again keeps the first time).
    pub blocked_at: DateTime<Utc>,
}

/// `POST /api/users/{id}/block`: the caller stops hearing from the user.
#[utoipa::path(
    post,
    path = "/users/{id}/block",
    tag = "users",
    summary = "Block a user: their messages, envelopes, calls and channel invitations to the caller are accepted from them as usual but never delivered (they are not told)",
    params(("id" = Uuid, Path, description = "the user to block")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "blocked (or already: the first time is kept)", body = Block),
        (status = 400, description = "the caller's own id", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "no such user", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn block_user(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(blocked): Path<UserId>,
) -> Result<axum::Json<Block>> {
    let blocked_at = blocks::block(&state, user, blocked).await?;
    Ok(axum::Json(Block {
        user_id: blocked,
        blocked_at,
    }))
}

/// `DELETE /api/users/{id}/block`: the caller hears from the user again.
#[utoipa::path(
    delete,
    path = "/users/{id}/block",
    tag = "users",
    summary = "Unblock a user: what they send from now on is delivered (what was withheld stays withheld)",
    params(("id" = Uuid, Path, description = "the user to unblock")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "unblocked (or was not blocked)"),
        (status = 400, description = "the caller's own id", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "no such user", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn unblock_user(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(blocked): Path<UserId>,
) -> Result<StatusCode> {
    blocks::unblock(&state, user, blocked).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/blocks`: whom the caller blocks.
#[utoipa::path(
    get,
    path = "/blocks",
    tag = "users",
    summary = "The users the caller blocks, the latest block first",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the blocked users", body = Vec<BlockedUser>),
        (status = 401, description = "missing or bad token (empty body)"),
    )
)]
pub async fn list_blocks(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<axum::Json<Vec<BlockedUser>>> {
    Ok(axum::Json(blocks::list(&state, user).await?))
}
