//! `/api/channels`: create, list mine, join, leave, add a member, history, post.

use axum::{extract::State, http::StatusCode};
use serde::Deserialize;

use super::{
    extract::{Json, Path, Query},
    paging::PageQuery,
};
use crate::{
    AppState,
    auth::AuthUser,
    domain::channels::{self, ChannelPost, CreateChannel},
    error::Result,
    model::{Channel, ChannelId, ChannelMessage, ChannelMessageId, UserId},
};

pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<CreateChannel>,
) -> Result<(StatusCode, axum::Json<Channel>)> {
    let channel = channels::create(&state, user, body).await?;
    Ok((StatusCode::CREATED, axum::Json(channel)))
}

pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(page): Query<PageQuery<ChannelId>>,
) -> Result<axum::Json<Vec<Channel>>> {
    let list = channels::list(&state, user, page.before, page.limit).await?;
    Ok(axum::Json(list))
}

pub async fn join(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<ChannelId>,
) -> Result<axum::Json<Channel>> {
    Ok(axum::Json(channels::join(&state, user, id).await?))
}

pub async fn leave(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<ChannelId>,
) -> Result<axum::Json<Channel>> {
    Ok(axum::Json(channels::leave(&state, user, id).await?))
}

#[derive(Deserialize)]
pub struct AddMember {
    user_id: UserId,
}

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
