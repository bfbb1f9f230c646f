//! `/api/conversations`: list, get-or-create, history, accepting a request.

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
    responses(
        (status = 200, description = "the caller's conversations, most recent first", body = Vec<ConversationSummary>),
        (status = 401, description = "missing or bad token (empty body)"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<axum::Json<Vec<ConversationSummary>>> {
    Ok(axum::Json(conversations::list(&state, user).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct OpenConversation {
    participant_id: UserId,
}

/// 201 when the conversation was created, 200 when it existed.
#[utoipa::path(
    post,
    path = "/conversations",
    tag = "conversations",
    summary = "Get or create the conversation with a user",
    request_body = OpenConversation,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "created", body = ConversationSummary),
        (status = 200, description = "existing", body = ConversationSummary),
        (status = 400, description = "the caller themself, or not a JSON object with `participant_id`", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "no such user", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
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
    params(("id" = Uuid, Path, description = "conversation id"), ("limit" = Option<Limit>, Query, description = "page size, default 50; any integer is accepted and clamped to 1..=200"), ("before" = Option<Uuid>, Query, description = "id of the last message already seen (newest first)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "messages, newest first", body = Vec<Message>),
        (status = 400, description = "a `limit` that is not an integer, or a `before` that is not a UUID", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "no such conversation of the caller's", body = ErrorBody),
    )
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

#[utoipa::path(
    post,
    path = "/conversations/{id}/accept",
    tag = "conversations",
    summary = "Accept a contact request",
    description = "The member a conversation was opened with accepts it (replying in it does too). Until then, with `CONTACTS_BY_CONSENT`, the member who opened it sees none of their presence, last seen, stories, typing or identity changes. Idempotent.",
    params(("id" = Uuid, Path, description = "conversation id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the conversation, `status: accepted`", body = ConversationSummary),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "the caller opened it: the other member accepts", body = ErrorBody),
        (status = 404, description = "no such conversation of the caller", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn accept(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<ConversationId>,
) -> Result<axum::Json<ConversationSummary>> {
    Ok(axum::Json(conversations::accept(&state, user, id).await?))
}
