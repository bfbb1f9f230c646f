//! The data the server keeps: identifiers, users, conversations and message metadata.
//! These types serialize to the REST shapes of the client contract (snake_case keys).

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
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
    /// A story: visible to its author and their contacts for 24 hours.
    StoryId,
    /// A channel: many members, messages fanned out to all of them.
    ChannelId,
    /// One channel message's metadata.
    ChannelMessageId,
);

pub(crate) mod social;
pub use social::{Channel, ChannelMessage, Story};

/// The server clock, truncated to milliseconds so that every engine stores and returns the
/// same instant and every timestamp serializes as `...T..:..:..(.mmm)Z`.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// A user as other users and the user themself see it (never the password hash).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub username: String,
    pub name: Option<String>,
    pub avatar_url: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl User {
    /// What the app shows for this user: the name, or the username when there is none.
    pub fn display_name(&self) -> &str {
        self.name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(&self.username)
    }
}

/// What the app can set as its presence; `Offline` is also set when the last socket closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Serialize)]
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
#[derive(Clone, Debug, Serialize)]
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
}

/// One message's metadata.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
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
}
