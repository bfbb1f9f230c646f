//! `/api/messages`: read state and the encrypted content mailbox.

use axum::{extract::State, http::StatusCode};
use serde_json::{Value, json};

use super::extract::{Json, Path};
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
    responses((status = 200, description = "the message", body = Value), (status = 404, description = "not found", body = Value), (status = 401, description = "missing or bad token (empty body)"))
)]
pub async fn mark_read(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<MessageId>,
) -> Result<axum::Json<Message>> {
    Ok(axum::Json(messages::mark_read(&state, user, id).await?))
}

/// Stores the sender's ciphertext for a message.
#[utoipa::path(
    post,
    path = "/messages/{id}/content",
    tag = "messages",
    summary = "Upload a message's encrypted content blob",
    params(("id" = Uuid, Path, description = "message id")),
    request_body(content = Value, description = "{content_data (base64), content_hash?, expires_at?}"),
    security(("bearer" = [])),
    responses((status = 201, description = "stored", body = Value), (status = 400, description = "invalid input", body = Value), (status = 403, description = "not the sender", body = Value), (status = 409, description = "the message was read already (`already_read`): nothing stored", body = Value), (status = 413, description = "too large (`payload_too_large`), or the sender's unread content would exceed CONTENT_QUOTA_BYTES (`quota_exceeded`): nothing stored", body = Value), (status = 401, description = "missing or bad token (empty body)"))
)]
pub async fn put_content(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<MessageId>,
    Json(upload): Json<ContentUpload>,
) -> Result<(StatusCode, axum::Json<Value>)> {
    let stored_for = content::store(&state, user, id, upload).await?;
    let body = json!({ "message_id": id, "stored_for": stored_for });
    Ok((StatusCode::CREATED, axum::Json(body)))
}

#[utoipa::path(
    get,
    path = "/messages/{id}/content",
    tag = "messages",
    summary = "Fetch a message's encrypted content blob",
    params(("id" = Uuid, Path, description = "message id")),
    security(("bearer" = [])),
    responses((status = 200, description = "{message_id, content_data, content_hash, created_at}", body = Value), (status = 403, description = "not a participant", body = Value), (status = 404, description = "missing or expired", body = Value), (status = 401, description = "missing or bad token (empty body)"))
)]
pub async fn get_content(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<MessageId>,
) -> Result<axum::Json<ContentBody>> {
    Ok(axum::Json(content::fetch(&state, user, id).await?))
}
