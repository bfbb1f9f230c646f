//! Message metadata: insert (idempotent per sender and id), history pages, read state.

use super::{Engine, Messages, Store, columns::message_cols, group::NewMessage, with_pool};
use crate::{
    error::{Error, Result},
    model::{ConversationId, Message, MessageId, UserId},
};

/// A message on its way to a commit (`Messages::queue_message`).
pub struct PendingMessage {
    id: MessageId,
    sender: UserId,
    committed: super::batch::Committed,
}

impl PendingMessage {
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// Waits for the commit. Returns the stored message and its inbox number for the
    /// recipient (`None` when it is withheld from them), or — when this sender already stored
    /// this id (a retry) — the existing message and `None`. The id taken by another sender is a
    /// `Conflict`.
    pub async fn stored(self, store: &Store) -> Result<(Message, Option<i64>)> {
        if let Some(inserted) = self.committed.wait().await? {
            return Ok(inserted);
        }
        match store.messages().message(self.id).await? {
            Some(existing) if existing.sender_id == self.sender => Ok((existing, None)),
            _ => Err(Error::Conflict {
                code: "id_taken",
                message: "this message id is already used",
            }),
        }
    }
}

impl Messages<'_> {
    /// Stores a message, bumps its conversation and puts it in the recipient's inbox, in one
    /// transaction (shared with the messages sent meanwhile). See `PendingMessage::stored`.
    pub async fn insert_message(self, new: NewMessage) -> Result<(Message, Option<i64>)> {
        self.queue_message(new).await?.stored(self.0).await
    }

    /// Queues a message for the next group commit without waiting for it: a socket can go on
    /// reading while its earlier messages commit (in the order they were queued).
    pub async fn queue_message(self, new: NewMessage) -> Result<PendingMessage> {
        let (id, sender) = (new.id, new.sender_id);
        let committed = self.0.batcher.enqueue(new).await?;
        Ok(PendingMessage {
            id,
            sender,
            committed,
        })
    }

    pub async fn message(self, id: MessageId) -> Result<Option<Message>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, Message>(concat!(
                "SELECT ",
                message_cols!(),
                " FROM messages WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await
        })?)
    }

    /// Up to `limit` messages of a conversation as `viewer` sees it (without those withheld
    /// from them), newest first, older than `before_seq` if set.
    pub async fn messages_page(
        self,
        conversation: ConversationId,
        viewer: UserId,
        before_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Message>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, Message>(concat!(
                "SELECT ",
                message_cols!(),
                " FROM messages WHERE conversation_id = $1 AND seq < $2
                    AND (withheld = FALSE OR sender_id = $4)
                  ORDER BY seq DESC LIMIT $3"
            ))
            .bind(conversation)
            .bind(before_seq.unwrap_or(i64::MAX))
            .bind(limit)
            .bind(viewer)
            .fetch_all(pool)
            .await
        })?)
    }

    /// Marks message `id` read if `reader` is its recipient and it was unread, deletes its
    /// content (the mailbox keeps ciphertext only until it is read) and puts the receipt in the
    /// sender's inbox, in the next group commit. Returns the updated message and the receipt's
    /// inbox number for the sender when this call changed it. `conversation`, the message's,
    /// is required on PostgreSQL (its row is locked first); SQLite does without.
    pub async fn mark_read(
        self,
        id: MessageId,
        reader: UserId,
        conversation: Option<ConversationId>,
    ) -> Result<Option<(Message, i64)>> {
        if conversation.is_none() && self.0.engine() == Engine::Postgres {
            let why = "a PostgreSQL read mark needs its conversation";
            return Err(Error::Internal(anyhow::anyhow!(why)));
        }
        let read = super::group::ReadMark {
            message: id,
            reader,
            conversation,
        };
        self.0.batcher.read(read).await
    }
}
