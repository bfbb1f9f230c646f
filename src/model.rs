//! The data the server keeps: identifiers, users, conversations and message metadata.
//! These types serialize to the REST shapes of the client contract (snake_case keys).

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub Uuid);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

id_type!(
    /// A registered user.
    UserId,
    /// A one-to-one conversation between two users.
    ConversationId,
    /// One message's metadata (its content, if any, is an opaque blob elsewhere).
    MessageId,
    /// A call between two users.
    CallId,
    /// A story: visible to its author and their contacts for 24 hours.
    StoryId,
    /// A channel: many members, messages fanned out to all of them.
    ChannelId,
    /// One channel message's metadata.
    ChannelMessageId,
    /// A signed-in device: its refresh token chain and the access tokens issued from it.
    SessionId,
);

pub(crate) mod social;
pub use social::{Channel, ChannelMessage, Story};

/// The server clock, truncated to milliseconds so that every engine stores and returns the
/// same instant and every timestamp serializes as `...T..:..:..(.mmm)Z`.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// The name the app shows: `name`, or the username when the name is missing or blank.
pub fn display_name(username: String, name: Option<String>) -> String {
    name.filter(|n| !n.trim().is_empty()).unwrap_or(username)
}

/// A user as other users and the user themself see it (never the password hash).
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct User {
    pub id: UserId,
    /// Another user's email is shown only to their contacts (`CONTACTS_BY_CONSENT` decides
    /// who counts) and to whoever typed it whole; to anyone else it is `""`.
    pub email: String,
    pub username: String,
    pub name: Option<String>,
    pub avatar_url: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// What the app can set as its presence; `Offline` is also set when the last socket closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Online,
    Offline,
    Away,
    Busy,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
            Self::Away => "away",
            Self::Busy => "busy",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "online" => Some(Self::Online),
            "offline" => Some(Self::Offline),
            "away" => Some(Self::Away),
            "busy" => Some(Self::Busy),
            _ => None,
        }
    }
}

/// A user's presence as stored.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PresenceState {
    pub user_id: UserId,
    pub status: Presence,
    pub last_seen: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The two members of a conversation, stored in a canonical order (`user_a < user_b`).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Conversation {
    pub id: ConversationId,
    pub user_a: UserId,
    pub user_b: UserId,
    pub created_at: DateTime<Utc>,
    /// The member who opened it, while it is a request (the other one has neither replied nor
    /// accepted); `None` once accepted.
    pub requested_by: Option<UserId>,
}

impl Conversation {
    pub fn has_member(&self, user: UserId) -> bool {
        self.user_a == user || self.user_b == user
    }

    /// The member who is not `user` (for a member `user`).
    pub fn other(&self, user: UserId) -> UserId {
        if self.user_a == user {
            self.user_b
        } else {
            self.user_a
        }
    }
}

/// A conversation as listed for one of its members.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationSummary {
    pub id: ConversationId,
    pub participant_id: UserId,
    pub participant_name: String,
    pub participant_username: String,
    pub participant_avatar: Option<String>,
    pub participant_status: Presence,
    /// Always null: the server never sees content.
    pub last_message: Option<String>,
    pub last_message_time: Option<DateTime<Utc>>,
    pub unread_count: i64,
    pub created_at: DateTime<Utc>,
    /// `request` while the member who did not open it has neither replied nor accepted it.
    pub status: ConversationStatus,
    /// Who opened it, while it is a request (`null` once accepted).
    pub requested_by: Option<UserId>,
}

/// A user the caller blocks, with what anyone may see of them (never their email).
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct BlockedUser {
    pub user_id: UserId,
    pub username: String,
    pub name: Option<String>,
    pub avatar_url: Option<String>,
    /// When the block began (blocking again keeps the first time).
    pub blocked_at: DateTime<Utc>,
}

/// Whether a conversation is still a contact request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConversationStatus {
    Request,
    Accepted,
}

/// One message's metadata.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Message {
    pub id: MessageId,
    /// Position in the server's total order of messages: increases with every message.
    pub seq: i64,
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub recipient_id: UserId,
    pub message_type: String,
    pub session_id: Option<String>,
    #[serde(rename = "timestamp")]
    pub created_at: DateTime<Utc>,
    pub is_read: bool,
    pub read_at: Option<DateTime<Utc>>,
    /// When the first socket of the recipient was sent it.
    pub delivered_at: Option<DateTime<Utc>>,
    /// `sent` → `delivered` → `read`.
    pub status: String,
    /// Sent by someone its recipient blocks: kept for the sender only (never delivered to,
    /// listed for or readable by the recipient). Never serialized: the sender must not learn
    /// of the block.
    #[serde(skip)]
    pub withheld: bool,
}

/// Where a call stands. `Ringing` and `Active` are live; the others are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallStatus {
    Ringing,
    Active,
    Ended,
    Rejected,
    Busy,
    Missed,
    Cancelled,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ringing => "ringing",
            Self::Active => "active",
            Self::Ended => "ended",
            Self::Rejected => "rejected",
            Self::Busy => "busy",
            Self::Missed => "missed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::Ringing,
            Self::Active,
            Self::Ended,
            Self::Rejected,
            Self::Busy,
            Self::Missed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }

    pub fn is_live(self) -> bool {
        matches!(self, Self::Ringing | Self::Active)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallType {
    Audio,
    Video,
}

impl CallType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
        }
    }
}

/// A call, with the two ids it may be known by (see the two-ids rule of the contract).
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Call {
    pub id: CallId,
    /// The server's id, given by `POST /api/calls` and used when ringing.
    pub call_id: String,
    /// The caller app's own id, when it sent a WebSocket `call_request`.
    pub client_call_id: Option<String>,
    /// Whether the callee was rung with `client_call_id` (a call made over the WebSocket).
    #[serde(skip)]
    pub rung_with_client_id: bool,
    pub caller_id: UserId,
    pub recipient_id: UserId,
    pub call_type: String,
    #[sqlx(try_from = "String")]
    pub status: CallStatus,
    pub created_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// Made by someone the callee blocks: the callee is never rung, booked, told or shown it;
    /// the caller sees an unanswered call. Never serialized, like `Message::withheld`.
    #[serde(skip)]
    pub withheld: bool,
}

impl TryFrom<String> for CallStatus {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        Self::parse(&raw).ok_or_else(|| format!("unknown call status {raw:?}"))
    }
}

impl Call {
    pub fn has_member(&self, user: UserId) -> bool {
        self.caller_id == user || self.recipient_id == user
    }

    pub fn other(&self, user: UserId) -> UserId {
        if self.caller_id == user {
            self.recipient_id
        } else {
            self.caller_id
        }
    }

    /// The id `user`'s app knows this call by: the caller's own id if it made one up; the id the
    /// callee was rung with.
    pub fn id_for(&self, user: UserId) -> &str {
        match &self.client_call_id {
            Some(client) if user == self.caller_id || self.rung_with_client_id => client,
            _ => &self.call_id,
        }
    }

    /// Seconds from answer to end; `None` for a call never answered or still going.
    pub fn duration_seconds(&self) -> Option<i64> {
        Some((self.ended_at? - self.answered_at?).num_seconds().max(0))
    }
}

/// What an inbox entry tells its user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboxKind {
    /// A message they received.
    Message,
    /// Their message was read.
    ReadReceipt,
}

/// What the database holds, counted at one moment (each number by its own subquery).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema,
)]
pub struct Totals {
    pub users: i64,
    /// Of `users`, those suspended.
    pub suspended_users: i64,
    /// Registered devices (`user_devices`: a device that published keys or signed in as one).
    pub devices: i64,
    /// Messages never written to a socket of their recipient (withheld ones excepted).
    pub messages_pending: i64,
    /// Envelopes waiting for their device's acknowledgement.
    pub envelopes_pending: i64,
    /// Bytes of the content mailbox: blobs (message bodies and attachments, encrypted) not
    /// yet read or expired.
    pub content_bytes: i64,
    /// Bytes of the ciphertexts of `envelopes_pending`.
    pub envelope_bytes: i64,
    /// Bytes of attachments stored (finished uploads and the received part of unfinished ones).
    pub attachment_bytes: i64,
}
