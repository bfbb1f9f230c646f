//! `/api/conversations`: list, get-or-create, history.

use axum::{extract::State, http::StatusCode};
use serde::Deserialize;

use super::{
    extract::{Json, Path, Query},
    paging::PageQuery,
};
use crate::{
    AppState,
    auth::AuthUser,
    domain::conversations,
    error::Result,
    model::{ConversationId, ConversationSummary, Message, MessageId, UserId},
};

pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<axum::Json<Vec<ConversationSummary>>> {
    Ok(axum::Json(conversations::list(&state, user).await?))
}

#[derive(Deserialize)]
pub struct OpenConversation {
    participant_id: UserId,
}

/// 201 when the conversation was created, 200 when it existed.
pub async fn open(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Json(body): Json<OpenConversation>,
) -> Result<(StatusCode, axum::Json<ConversationSummary>)> {
    let (summary, created) = conversations::open(&state, user, body.participant_id).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(summary)))
}

pub async fn messages(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<ConversationId>,
    Query(page): Query<PageQuery<MessageId>>,
) -> Result<axum::Json<Vec<Message>>> {
    let page = conversations::history(&state, user, id, page.before, page.limit).await?;
    Ok(axum::Json(page))
}
