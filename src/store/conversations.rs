//! One-to-one conversations and their per-member summaries.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Conversations, with_pool};
use crate::{
    error::Result,
    model::{
        Conversation, ConversationId, ConversationStatus, ConversationSummary, Presence, UserId,
    },
};

/// The summary query for member `$1`; `$filter` narrows it (or is empty).
macro_rules! summary_sql {
    ($filter:literal) => {
        concat!(
            "SELECT c.id, c.created_at, c.last_message_at,
                    u.id AS participant_id, u.username, u.name, u.avatar_url, u.presence,
                    CASE WHEN c.user_a = $1 THEN c.unread_a ELSE c.unread_b END AS unread_count,
                    c.requested_by,
                    (u.hide_last_seen OR EXISTS (SELECT 1 FROM blocks b
                        WHERE (b.blocker_id = $1 AND b.blocked_id = u.id)
                           OR (b.blocker_id = u.id AND b.blocked_id = $1))) AS hides_status
             FROM conversations c
             JOIN users u ON u.id = CASE WHEN c.user_a = $1 THEN c.user_b ELSE c.user_a END
             WHERE (c.user_a = $1 OR c.user_b = $1) ",
            $filter,
            " ORDER BY c.last_message_at DESC NULLS LAST, c.created_at DESC"
        )
    };
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    id: ConversationId,
    created_at: DateTime<Utc>,
    last_message_at: Option<DateTime<Utc>>,
    participant_id: UserId,
    username: String,
    name: Option<String>,
    avatar_url: Option<String>,
    presence: String,
    unread_count: i64,
    requested_by: Option<UserId>,
    /// The participant hides their status, or one of the two blocks the other.
    hides_status: bool,
}

impl SummaryRow {
    /// The row as `member` lists it; `consent` is `CONTACTS_BY_CONSENT`. The participant's
    /// status shows only as it would to an accepted contact: not hidden by them, no block,
    /// and (by consent) not a request, whichever side opened it (the one asked sees the
    /// requester's last seen by the day only, so not their live status either).
    fn shown_to(self, consent: bool) -> ConversationSummary {
        let status_hidden = self.hides_status || (consent && self.requested_by.is_some());
        let participant_name = crate::model::display_name(self.username.clone(), self.name);
        ConversationSummary {
            id: self.id,
            participant_id: self.participant_id,
            participant_name,
            participant_username: self.username,
            participant_avatar: self.avatar_url,
            participant_status: match Presence::parse(&self.presence) {
                Some(status) if !status_hidden => status,
                _ => Presence::Offline,
            },
            last_message: None,
            last_message_time: self.last_message_at,
            unread_count: self.unread_count,
            created_at: self.created_at,
            status: match self.requested_by {
                Some(_) => ConversationStatus::Request,
                None => ConversationStatus::Accepted,
            },
            requested_by: self.requested_by,
        }
    }
}

impl Conversations<'_> {
    /// The conversation between `a` and `b`, created if missing (a request by `a`). Race-free: a unique pair
    /// constraint decides, and the loser of a race reads the winner's row. `true` if created.
    pub async fn get_or_create_conversation(
        self,
        a: UserId,
        b: UserId,
        at: DateTime<Utc>,
    ) -> Result<(Conversation, bool)> {
        if let Some(known) = self.0.conversations.between(a, b) {
            return Ok((known, false));
        }
        let (user_a, user_b) = if a < b { (a, b) } else { (b, a) };
        let created = with_pool!(self.0, write, |pool| {
            sqlx::query_as::<_, Conversation>(
                "INSERT INTO conversations (id, user_a, user_b, created_at, requested_by)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_a, user_b) DO NOTHING
                 RETURNING id, user_a, user_b, created_at, requested_by",
            )
            .bind(ConversationId(Uuid::now_v7()))
            .bind(user_a)
            .bind(user_b)
            .bind(at)
            .bind(a)
            .fetch_optional(pool)
            .await
        })?;
        if let Some(conversation) = created {
            self.0.conversations.remember(&conversation);
            return Ok((conversation, true));
        }
        let existing = self.conversation_between(a, b).await?;
        let existing =
            existing.ok_or_else(|| anyhow::anyhow!("conversation vanished after a conflict"))?;
        Ok((existing, false))
    }

    /// The conversation between `a` and `b`, if they have one.
    pub async fn conversation_between(self, a: UserId, b: UserId) -> Result<Option<Conversation>> {
        if let Some(known) = self.0.conversations.between(a, b) {
            return Ok(Some(known));
        }
        let (user_a, user_b) = if a < b { (a, b) } else { (b, a) };
        let found = with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, Conversation>(
                "SELECT id, user_a, user_b, created_at, requested_by FROM conversations
                 WHERE user_a = $1 AND user_b = $2",
            )
            .bind(user_a)
            .bind(user_b)
            .fetch_optional(pool)
            .await
        })?;
        if let Some(conversation) = &found {
            self.0.conversations.remember(conversation);
        }
        Ok(found)
    }

    pub async fn conversation(self, id: ConversationId) -> Result<Option<Conversation>> {
        if let Some(known) = self.0.conversations.by_id.get(&id) {
            return Ok(Some(known.clone()));
        }
        let found = with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, Conversation>(
                "SELECT id, user_a, user_b, created_at, requested_by FROM conversations WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await
        })?;
        if let Some(conversation) = &found {
            self.0.conversations.remember(conversation);
        }
        Ok(found)
    }

    /// Forgets cached conversations of `user` (their account is going away).
    pub fn forget_conversations_of(self, user: UserId) {
        self.0.conversations.forget_user(user);
    }

    /// Forgets every cached conversation (an account may have been deleted unheard of).
    pub fn forget_all_conversations(self) {
        self.0.conversations.forget_all();
    }

    /// Every conversation of `user`, most recently active first; `consent` is
    /// `CONTACTS_BY_CONSENT`.
    pub async fn conversation_summaries(
        self,
        user: UserId,
        consent: bool,
    ) -> Result<Vec<ConversationSummary>> {
        let rows = with_pool!(self.0, read, |pool| {
            // A request from someone the member blocks is not listed (opening it is allowed).
            sqlx::query_as::<_, SummaryRow>(summary_sql!(
                "AND NOT (c.requested_by IS NOT NULL AND c.requested_by = u.id
                          AND EXISTS (SELECT 1 FROM blocks b
                                      WHERE b.blocker_id = $1 AND b.blocked_id = u.id))"
            ))
            .bind(user)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows.into_iter().map(|row| row.shown_to(consent)).collect())
    }

    /// One conversation as `user` sees it in their list (`None` if they are not a member).
    pub async fn conversation_summary(
        self,
        user: UserId,
        id: ConversationId,
        consent: bool,
    ) -> Result<Option<ConversationSummary>> {
        let row = with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, SummaryRow>(summary_sql!("AND c.id = $2"))
                .bind(user)
                .bind(id)
                .fetch_optional(pool)
                .await
        })?;
        Ok(row.map(|row| row.shown_to(consent)))
    }

    /// Accepts the request `id` on behalf of `member`, the one it was sent to. `None` if it
    /// was not such a request (already accepted, or opened by `member`).
    pub async fn accept_conversation(
        self,
        id: ConversationId,
        member: UserId,
    ) -> Result<Option<Conversation>> {
        let accepted = with_pool!(self.0, write, |pool| {
            sqlx::query_as::<_, Conversation>(
                "UPDATE conversations SET requested_by = NULL
                 WHERE id = $1 AND requested_by IS NOT NULL AND requested_by <> $2
                   AND (user_a = $2 OR user_b = $2)
                 RETURNING id, user_a, user_b, created_at, requested_by",
            )
            .bind(id)
            .bind(member)
            .fetch_optional(pool)
            .await
        })?;
        if let Some(conversation) = &accepted {
            self.0.conversations.remember(conversation);
        }
        Ok(accepted)
    }

    /// The conversation as stored now, bypassing (and refreshing) the cache: a request may
    /// have been accepted through another node of a cluster.
    pub async fn fresh_conversation(self, id: ConversationId) -> Result<Option<Conversation>> {
        self.0.conversations.forget(id);
        self.conversation(id).await
    }
}
