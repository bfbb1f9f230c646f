//! `/api/messages`: read state, the encrypted content mailbox, and messages with envelopes
//! (one ciphertext per device of the recipient) sent over HTTP.

use axum::{extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};

use super::{
    docs::ErrorBody,
    extract::{Json, Path},
};
use crate::{
    AppState,
    auth::AuthSession,
    auth::AuthUser,
    domain::{
        content::{self, ContentBody, ContentUpload},
        envelopes::EnvelopeIn,
        messages::{self, SendMessage},
    },
    error::Result,
    model::{ConversationId, Message, MessageId, UserId},
};

/// A message for every device of the recipient, as `PUT /messages/{recipient_id}` takes it
/// (the same fields as a `message` frame with envelopes).
#[derive(Deserialize, utoipa::ToSchema)]
pub struct EnvelopeMessageBody {
    /// Chosen by the client: makes retries idempotent and becomes the message's id.
    #[serde(default)]
    id: Option<MessageId>,
    /// Not blank; at most 32 bytes once trimmed.
    #[serde(alias = "messageType")]
    #[schema(max_length = 32, pattern = "\\S")]
    message_type: String,
    #[serde(default, alias = "conversationId")]
    conversation_id: Option<ConversationId>,
    /// One per device of the recipient (for oneself: one per other device of one's own).
    envelopes: Vec<EnvelopeIn>,
}

/// What `PUT /messages/{recipient_id}` answers: as the `message_ack` frame.
#[derive(Serialize, utoipa::ToSchema)]
pub struct EnvelopeMessageSent {
    id: MessageId,
    /// Absent for a message to oneself.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    conversation_id: Option<ConversationId>,
    timestamp: chrono::DateTime<chrono::Utc>,
}

/// Sends a message with one envelope per device of the recipient (Signal's
/// `PUT /v1/messages/{destination}`): the door for messages too large for a socket frame.
#[utoipa::path(
    put,
    path = "/messages/{recipient_id}",
    tag = "messages",
    summary = "Send a message with one end-to-end-encrypted envelope per device of the recipient",
    params(("recipient_id" = Uuid, Path, description = "the recipient (the caller: a copy for their other devices)")),
    request_body = EnvelopeMessageBody,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "stored in each device's queue (or already, for a retry)", body = EnvelopeMessageSent),
        (status = 400, description = "invalid input (bad base64, a device id out of 1..=127, twice the same device)", body = ErrorBody),
        (status = 401, description = "missing or bad token (empty body)"),
        (status = 404, description = "no such user, or another user with no device", body = ErrorBody),
        (status = 409, description = "`mismatched_devices` (with `missing_devices` and `extra_devices`), or `id_taken`: nothing stored", body = ErrorBody),
        (status = 410, description = "`stale_devices` (with `stale_devices`): nothing stored", body = ErrorBody),
        (status = 413, description = "an envelope above ENVELOPE_MAX_BYTES", body = ErrorBody),
        (status = 429, description = "too many writes (Retry-After)", body = ErrorBody),
    )
)]
pub async fn send_envelopes(
    State(state): State<AppState>,
    AuthSession(claims): AuthSession,
    Path(recipient): Path<UserId>,
    Json(body): Json<EnvelopeMessageBody>,
) -> Result<axum::Json<EnvelopeMessageSent>> {
    let request = SendMessage {
        recipient_id: recipient,
        message_type: body.message_type,
        session_id: None,
        id: body.id,
        conversation_id: body.conversation_id,
        envelopes: Some(body.envelopes),
    };
    // A device-bound session speaks for its device; an unbound one for device 1.
    let device = claims.device.unwrap_or(1);
    let sent = messages::send_envelopes(&state, claims.user_id, device, request).await?;
    Ok(axum::Json(EnvelopeMessageSent {
        id: sent.id,
        conversation_id: sent.conversation_id,
        timestamp: sent.timestamp,
    }))
}

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
