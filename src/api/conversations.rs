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

#[utoipa::path(
    get,
    path = "/conversations",
    tag = "conversations",
    summary = "The caller's conversations",
    security(("bearer" = [])),
    responses((status = 200, description = "conversations with participant_*, last_message_time, unread_count, participant_status", body = Value), (status = 401, description = "missing or bad token (empty body)"))
)]
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
#[utoipa::path(
    post,
    path = "/conversations",
    tag = "conversations",
    summary = "Get or create the conversation with a user",
    request_body(content = Value, description = "{participant_id}"),
    security(("bearer" = [])),
    responses((status = 201, description = "created", body = Value), (status = 200, description = "existing", body = Value), (status = 400, description = "the caller themself", body = Value), (status = 404, description = "not found", body = Value), (status = 401, description = "missing or bad token (empty body)"))
)]
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

#[utoipa::path(
    get,
    path = "/conversations/{id}/messages",
    tag = "conversations",
    summary = "Message history (metadata)",
    params(("id" = Uuid, Path, description = "conversation id"), ("limit" = Option<i64>, Query, description = "page size, default 50, clamped to 1..=200"), ("before" = Option<Uuid>, Query, description = "id of the last message already seen (newest first)")),
    security(("bearer" = [])),
    responses((status = 200, description = "messages, newest first", body = Value), (status = 404, description = "not found", body = Value), (status = 401, description = "missing or bad token (empty body)"))
)]
pub async fn messages(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<ConversationId>,
    Query(page): Query<PageQuery<MessageId>>,
) -> Result<axum::Json<Vec<Message>>> {
    let page = conversations::history(&state, user, id, page.before, page.limit).await?;
    Ok(axum::Json(page))
}
