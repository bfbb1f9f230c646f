//! Stories and channels as the app reads them (snake_case REST shapes).

use chrono::{DateTime, Utc};
use serde::Serialize;

pub(crate) use super::display_name;
use super::{ChannelId, ChannelMessageId, StoryId, UserId};

/// A story as one viewer sees it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Story {
    pub id: StoryId,
    pub user_id: UserId,
    pub user_name: String,
    pub user_avatar: Option<String>,
    pub content_text: Option<String>,
    pub media_url: Option<String>,
    pub media_type: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Whether this viewer has marked it viewed.
    pub is_viewed: bool,
    /// Paging order (newest first); the cursor the client sends back is the id.
    #[serde(skip)]
    pub seq: i64,
}

/// A channel as its members list it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Channel {
    pub id: ChannelId,
    pub name: String,
    pub description: Option<String>,
    pub creator_id: UserId,
    pub creator_name: String,
    pub avatar_url: Option<String>,
    pub is_private: bool,
    pub member_count: i64,
    pub last_message_time: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub seq: i64,
}

/// One channel message's metadata (its content, if any, travels end to end elsewhere).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelMessage {
    pub id: ChannelMessageId,
    pub channel_id: ChannelId,
    pub sender_id: UserId,
    pub sender_name: String,
    pub message_type: String,
    pub created_at: DateTime<Utc>,
    /// Same instant as `created_at`, under the name the app reads for direct messages.
    pub timestamp: DateTime<Utc>,
    /// Position in the server's order of channel messages.
    pub seq: i64,
}
