//! `/api/messages`: read state and the encrypted content mailbox.

use axum::{extract::State, http::StatusCode};
use serde::Serialize;

use super::{
    docs::ErrorBody,
    extract::{Json, Path},
};
use crate::{
    AppState,
    auth::AuthUser,
    domain::{
        content::{self, ContentBody, ContentUpload},
        messages,
    },
    error::Result,
    model::{Message, MessageId},
};

/// Marks the message read (when the caller is its recipient) and returns it.
#[utoipa::path(
    post,
    path = "/messages/{id}/read",
    tag = "messages",
    summary = "Mark a message read (recipient only)",
    params(("id" = Uuid, Path, description = "message id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the message", body = Message),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "no such message of the caller's", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn mark_read(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<MessageId>,
) -> Result<axum::Json<Message>> {
    Ok(axum::Json(messages::mark_read(&state, user, id).await?))
}

/// What `POST /messages/{id}/content` answers.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ContentStored {
    /// The id in the path.
    message_id: MessageId,
    /// The message the content was attached to: the path's id, or the message it was matched
    /// to when the path named the app's own id (see the contract's content-id rule).
    stored_for: MessageId,
}

/// Stores the sender's ciphertext for a message.
#[utoipa::path(
    post,
    path = "/messages/{id}/content",
    tag = "messages",
    summary = "Upload a message's encrypted content blob",
    params(("id" = Uuid, Path, description = "message id")),
    request_body = ContentUpload,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "stored", body = ContentStored),
        (status = 400, description = "invalid input (bad base64, or a hash that does not match)", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "not the sender", body = ErrorBody),
        (status = 404, description = "no such message, and none of the caller's recent ones waits for content", body = ErrorBody),
        (status = 409, description = "the message was read already (`already_read`): nothing stored", body = ErrorBody),
        (status = 413, description = "too large (`payload_too_large`), or the sender's unread content would exceed CONTENT_QUOTA_BYTES (`quota_exceeded`): nothing stored", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn put_content(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<MessageId>,
    Json(upload): Json<ContentUpload>,
) -> Result<(StatusCode, axum::Json<ContentStored>)> {
    let stored_for = content::store(&state, user, id, upload).await?;
    let body = ContentStored {
        message_id: id,
        stored_for,
    };
    Ok((StatusCode::CREATED, axum::Json(body)))
}

#[utoipa::path(
    get,
    path = "/messages/{id}/content",
    tag = "messages",
    summary = "Fetch a message's encrypted content blob",
    params(("id" = Uuid, Path, description = "message id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the content", body = ContentBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 403, description = "not a participant", body = ErrorBody),
        (status = 404, description = "missing or expired", body = ErrorBody),
    )
)]
pub async fn get_content(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<MessageId>,
) -> Result<axum::Json<ContentBody>> {
    Ok(axum::Json(content::fetch(&state, user, id).await?))
}
