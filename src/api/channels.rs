//! `/api/channels`: create, list mine, join, leave, add a member, history, post.

use axum::{extract::State, http::StatusCode};
use serde::Deserialize;

use super::{
    docs::ErrorBody,
    extract::{Json, Path, Query},
    paging::{Limit, PageQuery},
};
use crate::{
    AppState,
    auth::AuthUser,
    domain::channels::{self, ChannelPost, CreateChannel},
    error::Result,
    model::{Channel, ChannelId, ChannelMessage, ChannelMessageId, UserId},
};

#[utoipa::path(
    post,
    path = "/channels",
    tag = "channels",
    summary = "Create a channel",
    request_body = CreateChannel,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "the channel", body = Channel),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<CreateChannel>,
) -> Result<(StatusCode, axum::Json<Channel>)> {
    let channel = channels::create(&state, user, body).await?;
    Ok((StatusCode::CREATED, axum::Json(channel)))
}

#[utoipa::path(
    get,
    path = "/channels",
    tag = "channels",
    summary = "The caller's channels",
    params(("limit" = Option<Limit>, Query, description = "page size, default 50; any integer is accepted and clamped to 1..=200"), ("before" = Option<Uuid>, Query, description = "id of the last channel already seen (newest first)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "channels, newest first", body = Vec<Channel>),
        (status = 400, description = "a `limit` that is not an integer, or a `before` that is not a UUID", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(page): Query<PageQuery<ChannelId>>,
) -> Result<axum::Json<Vec<Channel>>> {
    let list = channels::list(&state, user, page.before, page.limit).await?;
    Ok(axum::Json(list))
}

#[utoipa::path(
    post,
    path = "/channels/{id}/join",
    tag = "channels",
    summary = "Join a public channel",
    params(("id" = Uuid, Path, description = "channel id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the channel", body = Channel),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "private channel", body = ErrorBody),
        (status = 404, description = "not found", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn join(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<ChannelId>,
) -> Result<axum::Json<Channel>> {
    Ok(axum::Json(channels::join(&state, user, id).await?))
}

#[utoipa::path(
    post,
    path = "/channels/{id}/leave",
    tag = "channels",
    summary = "Leave a channel",
    params(("id" = Uuid, Path, description = "channel id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the channel", body = Channel),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "not a member", body = ErrorBody),
        (status = 404, description = "not found", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn leave(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<ChannelId>,
) -> Result<axum::Json<Channel>> {
    Ok(axum::Json(channels::leave(&state, user, id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct AddMember {
    user_id: UserId,
}

#[utoipa::path(
    post,
    path = "/channels/{id}/members",
    tag = "channels",
    summary = "Add a member (creator only)",
    params(("id" = Uuid, Path, description = "channel id")),
    request_body = AddMember,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the channel", body = Channel),
        (status = 400, description = "not a JSON object with `user_id`", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "not allowed", body = ErrorBody),
        (status = 404, description = "not found", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn add_member(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<ChannelId>,
    Json(body): Json<AddMember>,
) -> Result<axum::Json<Channel>> {
    Ok(axum::Json(
        channels::add_member(&state, user, id, body.user_id).await?,
    ))
}

#[utoipa::path(
    get,
    path = "/channels/{id}/messages",
    tag = "channels",
    summary = "A channel's message metadata",
    params(("id" = Uuid, Path, description = "channel id"), ("limit" = Option<Limit>, Query, description = "page size, default 50; any integer is accepted and clamped to 1..=200"), ("before" = Option<Uuid>, Query, description = "id of the last message already seen (newest first)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "messages, newest first", body = Vec<ChannelMessage>),
        (status = 400, description = "a `limit` that is not an integer, or a `before` that is not a UUID", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "not a member", body = ErrorBody),
        (status = 404, description = "not found", body = ErrorBody),
    )
)]
pub async fn messages(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<ChannelId>,
    Query(page): Query<PageQuery<ChannelMessageId>>,
) -> Result<axum::Json<Vec<ChannelMessage>>> {
    let page = channels::history(&state, user, id, page.before, page.limit).await?;
    Ok(axum::Json(page))
}

/// 201 when the message was stored, 200 when it is a retry of a stored one.
#[utoipa::path(
    post,
    path = "/channels/{id}/messages",
    tag = "channels",
    summary = "Post a message (metadata) to a channel",
    params(("id" = Uuid, Path, description = "channel id")),
    request_body = ChannelPost,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "stored and pushed to online members", body = ChannelMessage),
        (status = 200, description = "a retry of the same client id", body = ChannelMessage),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "not a member", body = ErrorBody),
        (status = 404, description = "not found", body = ErrorBody),
        (status = 409, description = "id taken by another sender", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn post(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<ChannelId>,
    Json(body): Json<ChannelPost>,
) -> Result<(StatusCode, axum::Json<ChannelMessage>)> {
    let (message, created) = channels::post(&state, user, id, body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(message)))
}
