//! Stories: insert (purging expired ones), what a viewer may see, and who viewed what.

use chrono::{DateTime, Utc};

use super::{Stories, sees, with_pool};
use crate::{
    error::Result,
    model::{Story, StoryId, UserId, social::display_name},
};

/// The columns of a story as viewer `$1` sees it; `FROM stories s JOIN users u` follows.
macro_rules! story_select {
    () => {
        "SELECT s.seq, s.id, s.user_id, u.username, u.name, u.avatar_url, s.content_text,
                s.media_url, s.media_type, s.created_at, s.expires_at,
                EXISTS (SELECT 1 FROM story_views v WHERE v.story_id = s.id AND v.viewer_id = $1)
                    AS is_viewed
         FROM stories s JOIN users u ON u.id = s.user_id "
    };
}

/// Stories viewer `$1` may see: their own and those of users who show them what they show
/// their contacts (`sees!`; `$consent` is the placeholder of `CONTACTS_BY_CONSENT`).
macro_rules! visible_to_viewer {
    ($consent:literal) => {
        concat!(
            " (s.user_id = $1 OR ",
            sees!("$1", "s.user_id", $consent),
            ") "
        )
    };
}

/// A validated story, ready to store.
pub struct NewStory {
    pub id: StoryId,
    pub user_id: UserId,
    pub content_text: Option<String>,
    pub media_url: Option<String>,
    pub media_type: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct StoryRow {
    seq: i64,
    id: StoryId,
    user_id: UserId,
    username: String,
    name: Option<String>,
    avatar_url: Option<String>,
    content_text: Option<String>,
    media_url: Option<String>,
    media_type: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    is_viewed: bool,
}

impl From<StoryRow> for Story {
    fn from(row: StoryRow) -> Self {
        Self {
            id: row.id,
            user_id: row.user_id,
            user_name: display_name(row.username, row.name),
            user_avatar: row.avatar_url,
            content_text: row.content_text,
            media_url: row.media_url,
            media_type: row.media_type,
            created_at: row.created_at,
            expires_at: row.expires_at,
            is_viewed: row.is_viewed,
            seq: row.seq,
        }
    }
}

impl Stories<'_> {
    /// Stores a story. Stories that expired by its creation time are deleted in the same
    /// transaction: nobody can see them any more, and their text should not linger.
    pub async fn insert_story(self, new: &NewStory) -> Result<()> {
        with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM stories WHERE expires_at <= $1")
                .bind(new.created_at)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO stories (id, user_id, content_text, media_url, media_type,
                                      created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(new.id)
            .bind(new.user_id)
            .bind(&new.content_text)
            .bind(&new.media_url)
            .bind(&new.media_type)
            .bind(new.created_at)
            .bind(new.expires_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })?;
        Ok(())
    }

    /// The story if `viewer` may see it and it has not expired at `now`; `consent` is
    /// `CONTACTS_BY_CONSENT`.
    pub async fn visible_story(
        self,
        viewer: UserId,
        id: StoryId,
        now: DateTime<Utc>,
        consent: bool,
    ) -> Result<Option<Story>> {
        let row = with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, StoryRow>(concat!(
                story_select!(),
                "WHERE s.id = $2 AND s.expires_at > $3 AND",
                visible_to_viewer!("$4")
            ))
            .bind(viewer)
            .bind(id)
            .bind(now)
            .bind(consent)
            .fetch_optional(pool)
            .await
        })?;
        Ok(row.map(Into::into))
    }

    /// Up to `limit` unexpired stories `viewer` may see, newest first, older than `before_seq`.
    pub async fn visible_stories(
        self,
        viewer: UserId,
        now: DateTime<Utc>,
        before_seq: Option<i64>,
        limit: i64,
        consent: bool,
    ) -> Result<Vec<Story>> {
        let rows = with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, StoryRow>(concat!(
                story_select!(),
                "WHERE s.expires_at > $2 AND s.seq < $3 AND",
                visible_to_viewer!("$5"),
                "ORDER BY s.seq DESC LIMIT $4"
            ))
            .bind(viewer)
            .bind(now)
            .bind(before_seq.unwrap_or(i64::MAX))
            .bind(limit)
            .bind(consent)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// The paging position of a story `viewer` may see, expired or not (a story may expire
    /// while the client pages past it).
    pub async fn story_cursor(
        self,
        viewer: UserId,
        id: StoryId,
        consent: bool,
    ) -> Result<Option<i64>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_scalar(concat!(
                "SELECT s.seq FROM stories s WHERE s.id = $2 AND",
                visible_to_viewer!("$3")
            ))
            .bind(viewer)
            .bind(id)
            .bind(consent)
            .fetch_optional(pool)
            .await
        })?)
    }

    /// Records that `viewer` saw the story (once; later calls change nothing). A story purged
    /// in the meantime records nothing instead of failing on its foreign key.
    pub async fn mark_story_viewed(
        self,
        story: StoryId,
        viewer: UserId,
        at: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self.0, write, |pool| {
            sqlx::query(
                "INSERT INTO story_views (story_id, viewer_id, viewed_at)
                 SELECT id, $2, $3 FROM stories WHERE id = $1
                 ON CONFLICT (story_id, viewer_id) DO NOTHING",
            )
            .bind(story)
            .bind(viewer)
            .bind(at)
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(())
    }
}
