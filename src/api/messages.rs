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
pub async fn mark_read(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<MessageId>,
) -> Result<axum::Json<Message>> {
    Ok(axum::Json(messages::mark_read(&state, user, id).await?))
}

/// Stores the sender's ciphertext for a message.
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

pub async fn get_content(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(id): Path<MessageId>,
) -> Result<axum::Json<ContentBody>> {
    Ok(axum::Json(content::fetch(&state, user, id).await?))
}
