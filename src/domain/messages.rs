//! Sending messages (metadata only) and read state.

use serde::Deserialize;
use uuid::Uuid;

use crate::{
    AppState,
    error::{Error, Result},
    events::Event,
    model::{ConversationId, Message, MessageId, UserId, now},
    store::{Engine, InboxKind, NewMessage, PendingMessage},
};

const MAX_MESSAGE_TYPE_LEN: usize = 32;
const MAX_SESSION_ID_LEN: usize = 256;

/// A `message` frame's payload.
#[derive(Debug, Deserialize)]
pub struct SendMessage {
    pub recipient_id: UserId,
    pub message_type: String,
    #[serde(default)]
    pub session_id: Option<String>,
    /// Chosen by the client: makes retries idempotent and becomes the message's id.
    #[serde(default)]
    pub id: Option<MessageId>,
    #[serde(default)]
    pub conversation_id: Option<ConversationId>,
}

/// Stores a message and pushes it to the recipient's sockets. Returns the message and whether
/// it is new (`false`: a retry of a stored message, which is not pushed again).
pub async fn send(
    state: &AppState,
    sender: UserId,
    request: SendMessage,
) -> Result<(Message, bool)> {
    submit(state, sender, request).await?.complete(state).await
}

/// A message checked and queued for commit; `complete` finishes sending it.
pub struct Submitted(PendingMessage);

impl Submitted {
    /// The message's id: the client's, or the one the server made.
    pub fn id(&self) -> MessageId {
        self.0.id()
    }

    /// Waits for the commit, then pushes the message to the recipient's sockets (once: a retry
    /// is not pushed again). Returns the message and whether it is new.
    pub async fn complete(self, state: &AppState) -> Result<(Message, bool)> {
        let (message, cursor) = self.0.stored(&state.store).await?;
        if let Some(cursor) = cursor {
            let event = Event::inbox(&message, cursor, InboxKind::Message);
            state
                .hub
                .send_inbox(message.recipient_id, cursor, &event.encode());
            crate::metrics::message_routed("direct", message.created_at);
        }
        Ok((message, cursor.is_some()))
    }
}

/// Checks a message and queues it for the next group commit, without waiting for the commit:
/// a socket's later messages can join the same commit.
pub async fn submit(state: &AppState, sender: UserId, request: SendMessage) -> Result<Submitted> {
    let message_type = request.message_type.trim();
    if message_type.is_empty() || message_type.len() > MAX_MESSAGE_TYPE_LEN {
        return Err(Error::invalid(format!(
            "messageType must be 1 to {MAX_MESSAGE_TYPE_LEN} characters"
        )));
    }
    if request
        .session_id
        .as_ref()
        .is_some_and(|s| s.len() > MAX_SESSION_ID_LEN)
    {
        return Err(Error::invalid(format!(
            "sessionId must be at most {MAX_SESSION_ID_LEN} bytes"
        )));
    }
    let (conversation, _) =
        super::conversations::with_participant(state, sender, request.recipient_id).await?;
    if request
        .conversation_id
        .is_some_and(|id| id != conversation.id)
    {
        return Err(Error::invalid(
            "conversationId does not match the recipient",
        ));
    }
    let pending = state
        .store
        .messages()
        .queue_message(NewMessage {
            id: request.id.unwrap_or_else(|| MessageId(Uuid::now_v7())),
            conversation_id: conversation.id,
            sender_id: sender,
            recipient_id: request.recipient_id,
            message_type: message_type.to_owned(),
            session_id: request.session_id,
            created_at: now(),
        })
        .await?;
    Ok(Submitted(pending))
}

/// Marks a message read on behalf of its recipient and tells the sender. Idempotent; a call by
/// the sender changes nothing; a stranger gets "not found".
pub async fn mark_read(state: &AppState, reader: UserId, id: MessageId) -> Result<Message> {
    // SQLite's single writer needs no conversation to lock: the mark goes first, and the usual
    // call (the recipient's first read) costs no read. Otherwise the message is read first.
    let marked = match state.store.engine() {
        Engine::Sqlite => state.store.messages().mark_read(id, reader, None).await?,
        Engine::Postgres => None,
    };
    let (updated, cursor) = match marked {
        Some(marked) => marked,
        None => {
            let message = match state.store.messages().message(id).await? {
                Some(m) if m.sender_id == reader || m.recipient_id == reader => m,
                _ => return Err(Error::NotFound("message")),
            };
            if message.recipient_id != reader || message.is_read {
                return Ok(message);
            }
            let conversation = Some(message.conversation_id);
            let Some(marked) = state
                .store
                .messages()
                .mark_read(id, reader, conversation)
                .await?
            else {
                // Another device of the reader marked it read in between.
                return Ok(state.store.messages().message(id).await?.unwrap_or(message));
            };
            marked
        }
    };
    let receipt = Event::inbox(&updated, cursor, InboxKind::ReadReceipt);
    state
        .hub
        .send_inbox(updated.sender_id, cursor, &receipt.encode());
    Ok(updated)
}
