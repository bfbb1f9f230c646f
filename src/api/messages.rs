//! `/api/messages`: read state.

use axum::extract::State;

use super::extract::Path;
use crate::{
    AppState,
    auth::AuthUser,
    domain::messages,
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
