//! Sending messages (metadata only) and read state. A message's whole life is here: `submit`
//! checks it and queues it for the group commit; `Submitted::complete` waits for the commit and
//! pushes it to the recipient's sockets (the hub); a socket's messages go through its `Acks`,
//! which acknowledge them to the sender in the order sent. What the recipient's socket then
//! writes is reported through `delivery`, which tells the sender.

use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use tokio::{sync::mpsc, task::JoinHandle};
use uuid::Uuid;

use super::push::Devices;
use crate::{
    AppState,
    error::{Error, Result},
    events::Event,
    hub::{self, CloseSignal, Outgoing},
    model::{ConversationId, InboxKind, Message, MessageId, UserId, now},
    push::Urgency,
    store::{Engine, NewMessage, PendingMessage},
};

const MAX_MESSAGE_TYPE_LEN: usize = 32;
const MAX_SESSION_ID_LEN: usize = 256;

/// A `message` frame's payload.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
    /// One end-to-end-encrypted envelope per device of the recipient (see `envelopes`): the
    /// message then waits in each device's queue instead of the recipient's inbox.
    #[serde(default)]
    pub envelopes: Option<Vec<super::envelopes::EnvelopeIn>>,
}

/// Stores a message with envelopes in its recipient's device queues and pushes each to its
/// device's sockets; `sender_device` is the device that sent it.
pub async fn send_envelopes(
    state: &AppState,
    sender: UserId,
    sender_device: i64,
    request: SendMessage,
) -> Result<super::envelopes::Sent> {
    match submit(state, sender, sender_device, request).await? {
        Submitted::Envelopes(submitted) => submitted.complete(state).await,
        Submitted::Inbox(_) => Err(Error::invalid("envelopes are required")),
    }
}

/// A message checked and queued for commit: for the recipient's inbox (the current app's
/// single-blob flow), or for their devices' queues (envelopes).
pub enum Submitted {
    Inbox(InboxSubmitted),
    Envelopes(super::envelopes::Submitted),
}

impl Submitted {
    /// The message's id: the client's, or the one the server made.
    pub fn id(&self) -> MessageId {
        match self {
            Self::Inbox(s) => s.id(),
            Self::Envelopes(s) => s.id(),
        }
    }

    /// Finishes sending it; returns the sender's `message_ack`, and the recipient to wake by
    /// push once the ack is on its way (an inbox message pushed for the first time).
    async fn acknowledge(
        self,
        state: &AppState,
        client_id: Option<MessageId>,
    ) -> Result<(Event, Option<UserId>)> {
        Ok(match self {
            Self::Inbox(s) => {
                let (message, new) = s.complete(state).await?;
                let ack = Event::MessageAck {
                    id: message.id,
                    client_id,
                    conversation_id: Some(message.conversation_id),
                    timestamp: message.created_at,
                    seq: Some(message.seq),
                };
                (ack, new.then_some(message.recipient_id))
            }
            Self::Envelopes(s) => (s.complete(state).await?.ack(client_id), None),
        })
    }
}

/// A message checked and queued for commit into its recipient's inbox; `complete` finishes
/// sending it.
pub struct InboxSubmitted(PendingMessage);

impl InboxSubmitted {
    /// The message's id: the client's, or the one the server made.
    pub fn id(&self) -> MessageId {
        self.0.id()
    }

    /// Waits for the commit, then pushes the message to the recipient's sockets (once: a retry
    /// is not pushed again, nor a message withheld from its recipient: neither has an inbox
    /// number). Returns the message and whether it was pushed.
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

/// One socket's messages between their frame and their ack: acknowledged in the order the socket
/// sent them, each once committed (and pushed to its recipient). The task doing it starts with
/// the socket's first message, so that sockets that only listen carry none.
#[derive(Default)]
pub struct Acks(OnceLock<(mpsc::Sender<PendingAck>, JoinHandle<()>)>);

/// A message waiting for its commit, and the id its sender gave it. Boxed: a channel allocates
/// room for 32 items when it is made, and every socket has one, idle or not.
type PendingAck = Box<(Submitted, Option<MessageId>)>;

/// Messages of one socket waiting for their commit at once; past that the reader waits.
const MESSAGES_IN_FLIGHT: usize = 256;

impl Acks {
    /// Checks and queues a `message` frame's message for commit, without waiting for it (the
    /// socket's next messages can share the commit); its ack (or `error` frame) goes to
    /// `replies`, the sender's socket queue, once it is committed.
    pub async fn send(
        &self,
        state: &AppState,
        sender: UserId,
        sender_device: i64,
        request: SendMessage,
        replies: &hub::queue::Sender<Outgoing>,
        close: &Arc<CloseSignal>,
    ) -> Result<()> {
        let client_id = request.id;
        let submitted = submit(state, sender, sender_device, request).await?;
        let (acks, _) = self.0.get_or_init(|| {
            let (acks, pending) = mpsc::channel(MESSAGES_IN_FLIGHT);
            let task = ack_in_order(state.clone(), pending, replies.clone(), close.clone());
            (acks, tokio::spawn(task))
        });
        acks.send(Box::new((submitted, client_id)))
            .await
            .map_err(|_| Error::Internal(anyhow::anyhow!("the ack pipeline stopped")))
    }

    /// Waits until the messages already queued are committed, pushed and acknowledged (the
    /// socket is closing: they still reach their recipients).
    pub async fn finish(self) {
        if let Some((acks, task)) = self.0.into_inner() {
            drop(acks);
            let _ = task.await;
        }
    }
}

/// Acknowledges a socket's messages in the order it sent them, each once committed (and pushed
/// to its recipient); a message that could not be stored gets an `error` frame instead.
async fn ack_in_order(
    state: AppState,
    mut pending: mpsc::Receiver<PendingAck>,
    replies: hub::queue::Sender<Outgoing>,
    close: Arc<CloseSignal>,
) {
    while let Some(pending_ack) = pending.recv().await {
        let (submitted, client_id) = *pending_ack;
        let id = submitted.id();
        let (answer, to_wake) = match Box::pin(submitted.acknowledge(&state, client_id)).await {
            Ok(acknowledged) => acknowledged,
            Err(e) => {
                let e = e.context(format!("sending message {id}"));
                e.log_if_internal();
                (Event::message_error(&e, Some(id), client_id), None)
            }
        };
        hub::push(&replies, &close, Outgoing::Frame(answer.encode()));
        // After the ack: the wake-up task must not delay it (the sender hears of the commit
        // before the recipient's delivery receipt, as ever).
        if let Some(recipient) = to_wake {
            super::push::wake(&state, recipient, Devices::All, Urgency::Normal);
        }
    }
}

/// Checks a message and queues it for commit, without waiting for the commit: a socket's
/// later messages can join the same commit. `sender_device` sent it (the source of its
/// envelopes, if it has some).
pub async fn submit(
    state: &AppState,
    sender: UserId,
    sender_device: i64,
    mut request: SendMessage,
) -> Result<Submitted> {
    let Some(envelopes) = request.envelopes.take() else {
        return Ok(Submitted::Inbox(
            submit_to_inbox(state, sender, request).await?,
        ));
    };
    let message_type = check_message_type(&request.message_type)?;
    // To oneself: a copy of what one sent for one's other devices, in no conversation.
    let conversation = if request.recipient_id == sender {
        None
    } else {
        let (conversation, _) =
            super::conversations::with_participant(state, sender, request.recipient_id).await?;
        Some(conversation)
    };
    let conversation_id = conversation.as_ref().map(|c| c.id);
    if request.conversation_id.is_some() && request.conversation_id != conversation_id {
        return Err(Error::invalid(
            "conversationId does not match the recipient",
        ));
    }
    let outgoing = super::envelopes::Outgoing {
        id: request.id.unwrap_or_else(|| MessageId(Uuid::now_v7())),
        sender,
        sender_device,
        recipient: request.recipient_id,
        conversation_id,
        message_type,
        envelopes,
    };
    let submitted = super::envelopes::submit(state, outgoing).await?;
    // Only a message the server took is a reply (a refused one changes nothing).
    if let Some(conversation) = &conversation {
        super::conversations::replied(state, conversation, sender).await?;
    }
    Ok(Submitted::Envelopes(submitted))
}

/// The message type, trimmed, if it is 1 to 32 bytes long.
fn check_message_type(raw: &str) -> Result<&str> {
    let message_type = raw.trim();
    if message_type.is_empty() || message_type.len() > MAX_MESSAGE_TYPE_LEN {
        return Err(Error::invalid(format!(
            "messageType must be 1 to {MAX_MESSAGE_TYPE_LEN} characters"
        )));
    }
    Ok(message_type)
}

/// `submit` for a message without envelopes: into the recipient's inbox, through the next
/// group commit.
async fn submit_to_inbox(
    state: &AppState,
    sender: UserId,
    request: SendMessage,
) -> Result<InboxSubmitted> {
    let message_type = check_message_type(&request.message_type)?;
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
    let message = NewMessage {
        id: request.id.unwrap_or_else(|| MessageId(Uuid::now_v7())),
        conversation_id: conversation.id,
        sender_id: sender,
        recipient_id: request.recipient_id,
        message_type: message_type.to_owned(),
        session_id: request.session_id,
        created_at: now(),
        // The recipient blocks the sender: stored for the sender alone, in the same commit
        // (a flood of them costs the writer what any messages cost).
        withheld: super::blocks::blocks(state, request.recipient_id, sender).await?,
    };
    let pending = state.store.messages().queue_message(message).await?;
    // Only a message the server took is a reply (a refused one changes nothing).
    super::conversations::replied(state, &conversation, sender).await?;
    Ok(InboxSubmitted(pending))
}

/// Marks a message read on behalf of its recipient and tells the sender. Idempotent; a call by
/// the sender changes nothing; a stranger, and the recipient of a message withheld from them,
/// get "not found".
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
                Some(m) if m.sender_id == reader || (m.recipient_id == reader && !m.withheld) => m,
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
    super::push::wake(state, updated.sender_id, Devices::All, Urgency::Normal);
    Ok(updated)
}
