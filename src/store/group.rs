//! What a group commit (`batch`) writes: new messages (`NewMessage`), read receipts, their inbox
//! entries, and the delivery marks that sockets reported (`FirstDelivery`: what they return).
//! The types are shared by both engines; each engine writes a group its own way: SQLite as
//! cached single-row statements on the writer's thread (`sqlite::group`), PostgreSQL in one
//! statement (`postgres::group`). `contract_tests` feeds both the same groups and compares what
//! they return.

use chrono::{DateTime, Utc};

use crate::model::{ConversationId, Message, MessageId, UserId};

/// A validated message, ready to store.
pub struct NewMessage {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub recipient_id: UserId,
    pub message_type: String,
    pub session_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Its recipient blocks its sender: stored for the sender alone, in the same commit as any
    /// other message (no inbox entry, no unread count, the conversation untouched), so that
    /// nothing is pushed.
    pub withheld: bool,
}

impl NewMessage {
    /// The message as a fresh insert stores it, numbered `seq`.
    pub(super) fn stored_as(&self, seq: i64) -> Message {
        Message {
            id: self.id,
            seq,
            conversation_id: self.conversation_id,
            sender_id: self.sender_id,
            recipient_id: self.recipient_id,
            message_type: self.message_type.clone(),
            session_id: self.session_id.clone(),
            created_at: self.created_at,
            is_read: false,
            read_at: None,
            delivered_at: None,
            status: "sent".into(),
            withheld: self.withheld,
        }
    }
}

/// A message that just reached its recipient for the first time: what its sender is told.
#[derive(sqlx::FromRow)]
pub struct FirstDelivery {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub recipient_id: UserId,
    pub delivered_at: DateTime<Utc>,
}

/// A message as a group stored it, with its recipient's inbox number (`None` for a withheld
/// message, which has no inbox entry); `None` when its id was already taken.
pub(super) type Inserted = Option<(Message, Option<i64>)>;

/// A recipient reading one of their messages.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReadMark {
    pub message: MessageId,
    pub reader: UserId,
    /// The message's conversation, whose row PostgreSQL locks (in id order, with the group's
    /// others) before the mark; required there. SQLite's single writer locks nothing, so a mark
    /// can be queued without reading the message first.
    pub conversation: Option<ConversationId>,
}

/// A message a group marked read, with the inbox number of the receipt for its sender; `None`
/// when it was not unread (read already, or not the reader's).
pub(super) type Read = Option<(Message, i64)>;

/// What a group wrote, in the order of its inputs.
pub(super) struct Written {
    pub inserted: Vec<Inserted>,
    pub read: Vec<Read>,
    pub delivered: Vec<FirstDelivery>,
}

/// The rows of one group commit.
#[derive(Clone, Copy)]
pub(super) struct Group<'a> {
    pub messages: &'a [NewMessage],
    pub reads: &'a [ReadMark],
    /// Inbox events that reached a socket of their user at `at`.
    pub events: &'a [(UserId, i64)],
    pub at: DateTime<Utc>,
}
