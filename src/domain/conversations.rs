//! Conversations: get-or-create, listing, history, contact requests, and typing indicators
//! inside them.
//!
//! A conversation is opened by one member (`POST /api/conversations`, or a first message) and
//! is a *request* until the other member replies in it or accepts it. With
//! `CONTACTS_BY_CONSENT`, the requester sees nothing the other member shows their contacts
//! (presence, last seen, stories, typing, identity changes) until then; messages flow anyway.

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
    Ok((summary(state, user, conversation.id).await?, created))
}

/// One conversation as `user` lists it.
async fn summary(
    state: &AppState,
    user: UserId,
    id: ConversationId,
) -> Result<ConversationSummary> {
    state
        .store
        .conversations()
        .conversation_summary(user, id, state.config.contacts_by_consent)
        .await?
        .ok_or(Error::NotFound("conversation"))
}

/// `POST /api/conversations/{id}/accept`: the member a request was sent to accepts it
/// (idempotent). The requester cannot accept their own request.
pub async fn accept(
    state: &AppState,
    user: UserId,
    id: ConversationId,
) -> Result<ConversationSummary> {
    let conversation = member_of(state, user, id).await?;
    if conversation.requested_by == Some(user) {
        // The cache may be behind another node's acceptance: ask the database.
        let fresh = state.store.conversations().fresh_conversation(id).await?;
        if fresh.is_some_and(|c| c.requested_by == Some(user)) {
            return Err(Error::Forbidden(
                "only the member a request was sent to can accept it",
            ));
        }
    }
    state
        .store
        .conversations()
        .accept_conversation(id, user)
        .await?;
    summary(state, user, id).await
}

/// `sender` sent a message in `conversation`: if it is a request from the other member, that
/// is the reply that accepts it, unless the requester blocks `sender` (the reply is withheld
/// from them). Costs nothing once accepted, nor for the requester's own messages.
pub async fn replied(state: &AppState, conversation: &Conversation, sender: UserId) -> Result<()> {
    let Some(requester) = conversation.requested_by else {
        return Ok(());
    };
    if requester != sender && !super::blocks::blocks(state, requester, sender).await? {
        state
            .store
            .conversations()
            .accept_conversation(conversation.id, sender)
            .await?;
    }
    Ok(())
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
        .conversation_summaries(user, state.config.contacts_by_consent)
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

/// Tells the other member that `user` is (or stopped) typing, if `user` shows it to them:
/// not to a requester (by consent) nor across a block.
pub async fn typing(
    state: &AppState,
    user: UserId,
    id: ConversationId,
    is_typing: bool,
) -> Result<()> {
    let conversation = member_of(state, user, id).await?;
    if !shows_typing(state, &conversation, user).await? {
        return Ok(());
    }
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

/// Whether `user` shows the other member of `conversation` that they type (`store::sees!`,
/// answered from memory in the usual case: an accepted conversation and no block).
async fn shows_typing(state: &AppState, conversation: &Conversation, user: UserId) -> Result<bool> {
    let other = conversation.other(user);
    if super::blocks::blocks(state, user, other).await?
        || super::blocks::blocks(state, other, user).await?
    {
        return Ok(false);
    }
    if state.config.contacts_by_consent
        && conversation.requested_by == Some(other)
        // Another node may have seen the reply that accepted it.
        && state
            .store
            .conversations()
            .fresh_conversation(conversation.id)
            .await?
            .is_some_and(|c| c.requested_by == Some(other))
    {
        return Ok(false);
    }
    Ok(true)
}
