//! Channels: many members, message metadata fanned out to the online ones.
//!
//! Access rule, the same for every endpoint: an unknown channel is a 404; a channel that
//! exists but that the caller may not use (not a member, or joining a private one) is a 403.
//! Channel ids are random UUIDs, so a 403 only tells what the holder of the id already knows.

use serde::Deserialize;
use uuid::Uuid;

use super::input::{optional_http_url, optional_text, page_limit};
use crate::{
    AppState,
    error::{Error, Result},
    events::{EphemeralKey, Event},
    model::{Channel, ChannelId, ChannelMessage, ChannelMessageId, UserId, now},
    store::{ChannelAccess, NewChannel, NewChannelMessage},
};

const MAX_NAME_LEN: usize = 100;
const MAX_DESCRIPTION_LEN: usize = 1000;
const MAX_MESSAGE_TYPE_LEN: usize = 32;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateChannel {
    /// Not blank.
    #[schema(max_length = 100, pattern = "\\S")]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: Option<String>,
    /// An http(s) link (blank means none).
    #[serde(default)]
    #[schema(
        max_length = 2048,
        pattern = "^\\s*([Hh][Tt][Tt][Pp][Ss]?://[^\\s/?#@:\\x00-\\x1f\\x7f-\\x9f][^\\s/?#@\\x00-\\x1f\\x7f-\\x9f]*([/?#][^\\s\\x00-\\x1f\\x7f-\\x9f]*)?)?\\s*$"
    )]
    pub avatar_url: Option<String>,
    /// Absent or null means public.
    #[serde(default)]
    pub is_private: Option<bool>,
}

/// A message posted to a channel (the channel comes from the path or the frame).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChannelPost {
    /// Not blank; at most 32 characters once trimmed.
    #[schema(max_length = 32, pattern = "\\S")]
    pub message_type: String,
    /// Chosen by the client: makes retries idempotent and becomes the message's id.
    #[serde(default)]
    pub id: Option<ChannelMessageId>,
}

pub async fn create(state: &AppState, user: UserId, request: CreateChannel) -> Result<Channel> {
    let name = optional_text(Some(request.name), "name", MAX_NAME_LEN)?
        .ok_or_else(|| Error::invalid("name must not be empty"))?;
    let description = optional_text(request.description, "description", MAX_DESCRIPTION_LEN)?;
    let avatar_url = optional_http_url(request.avatar_url, "avatar_url")?;
    let id = ChannelId(Uuid::now_v7());
    state
        .store
        .channels()
        .create_channel(&NewChannel {
            id,
            name,
            description,
            avatar_url,
            is_private: request.is_private.unwrap_or(false),
            creator_id: user,
            created_at: now(),
        })
        .await?;
    channel(state, id, user).await
}

/// A page of the channels `user` is a member of, newest first; `before` is the id of the last
/// channel already seen.
pub async fn list(
    state: &AppState,
    user: UserId,
    before: Option<ChannelId>,
    limit: Option<i64>,
) -> Result<Vec<Channel>> {
    let before_seq = match before {
        None => None,
        Some(cursor) => Some(
            state
                .store
                .channels()
                .channel(cursor, user)
                .await?
                .ok_or_else(|| Error::invalid("`before` is not a channel"))?
                .seq,
        ),
    };
    state
        .store
        .channels()
        .user_channels(user, before_seq, page_limit(limit))
        .await
}

/// Joins a public channel (idempotent). A private channel is joined only by being added.
pub async fn join(state: &AppState, user: UserId, id: ChannelId) -> Result<Channel> {
    let access = access(state, id, user).await?;
    if !access.is_member {
        if access.is_private {
            return Err(Error::Forbidden("this channel is private"));
        }
        state
            .store
            .channels()
            .add_channel_member(id, user, now(), false)
            .await?;
    }
    channel(state, id, user).await
}

/// Leaves a channel the caller is a member of.
pub async fn leave(state: &AppState, user: UserId, id: ChannelId) -> Result<Channel> {
    member(state, id, user).await?;
    state
        .store
        .channels()
        .remove_channel_member(id, user)
        .await?;
    channel(state, id, user).await
}

/// Adds `new_member` to the channel; only its creator may (the way into a private channel).
/// A new member who blocks the creator is only counted, for the creator alone: the creator's
/// answers (this one, their list of channels) are those of any add, while the new member is
/// not in the channel (not listed, not reached by its posts, no access). The row stays
/// withheld after an unblock, as withheld messages do; a later add, once unblocked, or the
/// member joining a public channel makes them a member.
pub async fn add_member(
    state: &AppState,
    user: UserId,
    id: ChannelId,
    new_member: UserId,
) -> Result<Channel> {
    let access = access(state, id, user).await?;
    if access.creator_id != user {
        return Err(Error::Forbidden(
            "only the channel's creator can add members",
        ));
    }
    if !state.store.users().user_exists(new_member).await? {
        return Err(Error::NotFound("user"));
    }
    let withheld = super::blocks::blocks(state, new_member, user).await?;
    state
        .store
        .channels()
        .add_channel_member(id, new_member, now(), withheld)
        .await?;
    channel(state, id, user).await
}

/// A page of a channel's messages, newest first; `before` is the id of the oldest one seen.
pub async fn history(
    state: &AppState,
    user: UserId,
    id: ChannelId,
    before: Option<ChannelMessageId>,
    limit: Option<i64>,
) -> Result<Vec<ChannelMessage>> {
    member(state, id, user).await?;
    let before_seq = match before {
        None => None,
        Some(cursor) => match state.store.channels().channel_message(cursor).await? {
            Some(m) if m.channel_id == id => Some(m.seq),
            _ => {
                return Err(Error::invalid("`before` is not a message of this channel"));
            }
        },
    };
    state
        .store
        .channels()
        .channel_messages_page(id, before_seq, page_limit(limit))
        .await
}

/// Stores a message's metadata and pushes `channel_message` to every online member but the
/// sender. Returns the message and whether it is new (`false`: a retry, not pushed again).
pub async fn post(
    state: &AppState,
    sender: UserId,
    id: ChannelId,
    request: ChannelPost,
) -> Result<(ChannelMessage, bool)> {
    let message_type = request.message_type.trim();
    if message_type.is_empty() || message_type.chars().count() > MAX_MESSAGE_TYPE_LEN {
        return Err(Error::invalid(format!(
            "message_type must be 1 to {MAX_MESSAGE_TYPE_LEN} characters"
        )));
    }
    member(state, id, sender).await?;
    let message_id = request
        .id
        .unwrap_or_else(|| ChannelMessageId(Uuid::now_v7()));
    let created = state
        .store
        .channels()
        .insert_channel_message(&NewChannelMessage {
            id: message_id,
            channel_id: id,
            sender_id: sender,
            message_type: message_type.to_owned(),
            created_at: now(),
        })
        .await?;
    let message = match state.store.channels().channel_message(message_id).await? {
        Some(m) if m.sender_id == sender && m.channel_id == id => m,
        _ => {
            return Err(Error::Conflict {
                code: "id_taken",
                message: "this message id is already used",
            });
        }
    };
    if created {
        let members = state.store.channels().channel_member_ids(id).await?;
        // Ephemeral: channel posts are not in the inbox (no catch-up would follow a close);
        // a member who is behind reads them from the history.
        super::deliver_ephemeral(
            state,
            members
                .into_iter()
                .filter(|m| *m != sender && state.hub.is_online(*m)),
            EphemeralKey::ChannelPost(message.id),
            &Event::ChannelMessage(message.clone()),
        );
        crate::metrics::message_routed("channel", message.created_at);
    }
    Ok((message, created))
}

/// The caller's access to a channel. A private channel the caller is not in answers like a
/// channel that does not exist: outsiders learn nothing of it. (A public channel is open to
/// anyone who joins, so a non-member is told 403, as the app expects.)
async fn access(state: &AppState, id: ChannelId, user: UserId) -> Result<ChannelAccess> {
    match state.store.channels().channel_access(id, user).await? {
        Some(access) if access.is_member || !access.is_private => Ok(access),
        _ => Err(Error::NotFound("channel")),
    }
}

async fn member(state: &AppState, id: ChannelId, user: UserId) -> Result<()> {
    if access(state, id, user).await?.is_member {
        Ok(())
    } else {
        Err(Error::Forbidden("you are not a member of this channel"))
    }
}

/// The channel as `viewer` is told it (its member count depends on who asks).
async fn channel(state: &AppState, id: ChannelId, viewer: UserId) -> Result<Channel> {
    state
        .store
        .channels()
        .channel(id, viewer)
        .await?
        .ok_or(Error::NotFound("channel"))
}
