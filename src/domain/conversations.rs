//! Conversations: get-or-create, listing, history, and typing indicators inside them.

use crate::{
    AppState,
    error::{Error, Result},
    events::{EphemeralKey, Event},
    model::{Conversation, ConversationId, ConversationSummary, Message, MessageId, UserId, now},
};

/// The conversation between `user` and `participant`, created on first use.
/// Returns it as `user` lists it, and whether it was created.
pub async fn open(
    state: &AppState,
    user: UserId,
    participant: UserId,
) -> Result<(ConversationSummary, bool)> {
    let (conversation, created) = with_participant(state, user, participant).await?;
    let summary = state
        .store
        .conversations()
        .conversation_summary(user, conversation.id)
        .await?
        .ok_or(Error::NotFound("conversation"))?;
    Ok((summary, created))
}

/// The conversation between two distinct, existing users, created if needed.
pub async fn with_participant(
    state: &AppState,
    user: UserId,
    participant: UserId,
) -> Result<(Conversation, bool)> {
    if participant == user {
        return Err(Error::invalid("a conversation needs another participant"));
    }
    // The usual case, answered from memory: the conversation (and so the user) exists.
    if let Some(existing) = state
        .store
        .conversations()
        .conversation_between(user, participant)
        .await?
    {
        return Ok((existing, false));
    }
    if !state.store.users().user_exists(participant).await? {
        return Err(Error::NotFound("user"));
    }
    state
        .store
        .conversations()
        .get_or_create_conversation(user, participant, now())
        .await
}

pub async fn list(state: &AppState, user: UserId) -> Result<Vec<ConversationSummary>> {
    state
        .store
        .conversations()
        .conversation_summaries(user)
        .await
}

/// The conversation if `user` is in it; a stranger gets the same answer as for a missing one.
pub async fn member_of(state: &AppState, user: UserId, id: ConversationId) -> Result<Conversation> {
    match state.store.conversations().conversation(id).await? {
        Some(c) if c.has_member(user) => Ok(c),
        _ => Err(Error::NotFound("conversation")),
    }
}

/// A page of history, newest first; `before` is the id of the oldest message already seen.
pub async fn history(
    state: &AppState,
    user: UserId,
    id: ConversationId,
    before: Option<MessageId>,
    limit: Option<i64>,
) -> Result<Vec<Message>> {
    let conversation = member_of(state, user, id).await?;
    let before_seq = match before {
        None => None,
        Some(cursor) => match state.store.messages().message(cursor).await? {
            Some(m) if m.conversation_id == conversation.id => Some(m.seq),
            _ => {
                return Err(Error::invalid(
                    "`before` is not a message of this conversation",
                ));
            }
        },
    };
    let limit = super::input::page_limit(limit);
    state
        .store
        .messages()
        .messages_page(conversation.id, user, before_seq, limit)
        .await
}

/// Tells the other member that `user` is (or stopped) typing.
pub async fn typing(
    state: &AppState,
    user: UserId,
    id: ConversationId,
    is_typing: bool,
) -> Result<()> {
    let conversation = member_of(state, user, id).await?;
    let event = Event::TypingIndicator {
        user_id: user,
        conversation_id: conversation.id,
        is_typing,
        timestamp: now(),
    };
    let key = EphemeralKey::Typing {
        conversation: conversation.id,
        sender: user,
    };
    super::deliver_ephemeral(state, [conversation.other(user)], key, &event);
    Ok(())
}
