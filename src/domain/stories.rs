//! Stories: posted by a user, visible to them and their contacts for 24 hours (contacts as
//! `store::sees!` defines them: no block, and by consent when `CONTACTS_BY_CONSENT`).

use chrono::TimeDelta;
use serde::Deserialize;
use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, Schema};
use uuid::Uuid;

use super::input::{optional_http_url, optional_text, page_limit};
use crate::{
    AppState,
    error::{Error, Result},
    model::{Story, StoryId, UserId, now},
    store::NewStory,
};

/// How long a story stays visible.
pub const LIFETIME: TimeDelta = TimeDelta::hours(24);
const MAX_TEXT_LEN: usize = 2000;

#[derive(Debug, Deserialize)]
pub struct NewStoryRequest {
    #[serde(default)]
    pub content_text: Option<String>,
    #[serde(default)]
    pub media_url: Option<String>,
    pub media_type: String,
}

/// Written by hand, not derived: a story needs `content_text` or `media_url` (not blank), a rule
/// across two fields that only `anyOf` can state. The other rules are those `create` checks
/// (surrounding whitespace trimmed, `media_type` in any case).
impl utoipa::PartialSchema for NewStoryRequest {
    fn schema() -> utoipa::openapi::RefOr<Schema> {
        let schema = serde_json::json!({
            "type": "object",
            "required": ["media_type"],
            "properties": {
                "content_text": {"type": ["string", "null"], "maxLength": MAX_TEXT_LEN},
                "media_url": {
                    "type": ["string", "null"],
                    "maxLength": 2048,
                    "pattern": "^\\s*([Hh][Tt][Tt][Pp][Ss]?://[^\\s/?#@:\\x00-\\x1f\\x7f-\\x9f][^\\s/?#@\\x00-\\x1f\\x7f-\\x9f]*([/?#][^\\s\\x00-\\x1f\\x7f-\\x9f]*)?)?\\s*$",
                    "description": "An http(s) link (blank means none)",
                },
                "media_type": {
                    "type": "string",
                    "pattern": "^\\s*([Ii][Mm][Aa][Gg][Ee]|[Vv][Ii][Dd][Ee][Oo])\\s*$",
                    "description": "image or video",
                },
            },
            "example": {"content_text": "Hello", "media_type": "image"},
        });
        // utoipa's object model has no `anyOf` of its own: the rule wraps the object.
        let text = serde_json::json!({"type": "object", "required": ["content_text"], "properties": {"content_text": {"type": "string", "pattern": "\\S"}}});
        let media = serde_json::json!({"type": "object", "required": ["media_url"], "properties": {"media_url": {"type": "string", "pattern": "^\\s*[Hh][Tt][Tt][Pp][Ss]?://[^\\s/?#@:\\x00-\\x1f\\x7f-\\x9f][^\\s/?#@\\x00-\\x1f\\x7f-\\x9f]*([/?#][^\\s\\x00-\\x1f\\x7f-\\x9f]*)?\\s*$"}}});
        let parse = |value| {
            serde_json::from_value::<Schema>(value).expect("the story request schema is valid")
        };
        AllOfBuilder::new()
            .item(parse(schema))
            .item(AnyOfBuilder::new().item(parse(text)).item(parse(media)))
            .into()
    }
}

impl utoipa::ToSchema for NewStoryRequest {}

pub async fn create(state: &AppState, user: UserId, request: NewStoryRequest) -> Result<Story> {
    let media_type = request.media_type.trim().to_ascii_lowercase();
    if media_type != "image" && media_type != "video" {
        return Err(Error::invalid("media_type must be image or video"));
    }
    let content_text = optional_text(request.content_text, "content_text", MAX_TEXT_LEN)?;
    let media_url = optional_http_url(request.media_url, "media_url")?;
    if content_text.is_none() && media_url.is_none() {
        return Err(Error::invalid("a story needs content_text or a media_url"));
    }
    let created_at = now();
    let id = StoryId(Uuid::now_v7());
    state
        .store
        .stories()
        .insert_story(&NewStory {
            id,
            user_id: user,
            content_text,
            media_url,
            media_type,
            created_at,
            expires_at: created_at + LIFETIME,
        })
        .await?;
    state
        .store
        .stories()
        .visible_story(user, id, created_at, state.config.contacts_by_consent)
        .await?
        .ok_or(Error::NotFound("story"))
}

/// A page of unexpired stories of `user` and their contacts, newest first; `before` is the id
/// of the last story already seen.
pub async fn list(
    state: &AppState,
    user: UserId,
    before: Option<StoryId>,
    limit: Option<i64>,
) -> Result<Vec<Story>> {
    let before_seq = match before {
        None => None,
        Some(cursor) => Some(
            state
                .store
                .stories()
                .story_cursor(user, cursor, state.config.contacts_by_consent)
                .await?
                .ok_or_else(|| Error::invalid("`before` is not a story you can see"))?,
        ),
    };
    state
        .store
        .stories()
        .visible_stories(
            user,
            now(),
            before_seq,
            page_limit(limit),
            state.config.contacts_by_consent,
        )
        .await
}

/// Marks a story viewed by `user`. Unknown, expired and not-visible stories all get the same
/// 404, so that the answer reveals nothing.
pub async fn view(state: &AppState, user: UserId, id: StoryId) -> Result<Story> {
    let at = now();
    let mut story = state
        .store
        .stories()
        .visible_story(user, id, at, state.config.contacts_by_consent)
        .await?
        .ok_or(Error::NotFound("story"))?;
    state
        .store
        .stories()
        .mark_story_viewed(id, user, at)
        .await?;
    story.is_viewed = true;
    Ok(story)
}
