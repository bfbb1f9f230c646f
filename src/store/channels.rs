//! Channels, their members, and channel message metadata.

use chrono::{DateTime, Utc};

use super::{Channels, with_pool};
use crate::{
    error::Result,
    model::{Channel, ChannelId, ChannelMessage, ChannelMessageId, UserId, social::display_name},
};

/// A channel with its creator's name and its member count as `$viewer` is told it; `WHERE ...`
/// follows. Withheld members (added by a creator they block) count for the creator alone: the
/// creator sees the count any add gives, everyone else the members there really are.
macro_rules! channel_select {
    ($viewer:literal, $join:literal) => {
        concat!(
            "SELECT c.seq, c.id, c.name, c.description, c.creator_id,
                    u.username AS creator_username, u.name AS creator_display_name,
                    c.avatar_url, c.is_private, c.last_message_at, c.created_at,
                    (SELECT COUNT(*) FROM channel_members m
                     WHERE m.channel_id = c.id AND (NOT m.withheld OR c.creator_id = ",
            $viewer,
            ")) AS member_count
             FROM channels c JOIN users u ON u.id = c.creator_id ",
            $join
        )
    };
}

/// A channel message with its sender's name; `WHERE ...` follows.
macro_rules! channel_message_select {
    () => {
        "SELECT cm.seq, cm.id, cm.channel_id, cm.sender_id, u.username, u.name, cm.message_type,
                cm.created_at
         FROM channel_messages cm JOIN users u ON u.id = cm.sender_id "
    };
}

/// A validated channel, ready to store; its creator becomes its first member.
pub struct NewChannel {
    pub id: ChannelId,
    pub name: String,
    pub description: Option<String>,
    pub avatar_url: Option<String>,
    pub is_private: bool,
    pub creator_id: UserId,
    pub created_at: DateTime<Utc>,
}

/// A validated channel message, ready to store.
pub struct NewChannelMessage {
    pub id: ChannelMessageId,
    pub channel_id: ChannelId,
    pub sender_id: UserId,
    pub message_type: String,
    pub created_at: DateTime<Utc>,
}

/// What decides whether a user may act on a channel.
#[derive(Debug, sqlx::FromRow)]
pub struct ChannelAccess {
    pub is_private: bool,
    pub creator_id: UserId,
    pub is_member: bool,
}

#[derive(sqlx::FromRow)]
struct ChannelRow {
    seq: i64,
    id: ChannelId,
    name: String,
    description: Option<String>,
    creator_id: UserId,
    creator_username: String,
    creator_display_name: Option<String>,
    avatar_url: Option<String>,
    is_private: bool,
    last_message_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    member_count: i64,
}

impl From<ChannelRow> for Channel {
    fn from(row: ChannelRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            description: row.description,
            creator_id: row.creator_id,
            creator_name: display_name(row.creator_username, row.creator_display_name),
            avatar_url: row.avatar_url,
            is_private: row.is_private,
            member_count: row.member_count,
            last_message_time: row.last_message_at,
            created_at: row.created_at,
            seq: row.seq,
        }
    }
}

#[derive(sqlx::FromRow)]
struct ChannelMessageRow {
    seq: i64,
    id: ChannelMessageId,
    channel_id: ChannelId,
    sender_id: UserId,
    username: String,
    name: Option<String>,
    message_type: String,
    created_at: DateTime<Utc>,
}

impl From<ChannelMessageRow> for ChannelMessage {
    fn from(row: ChannelMessageRow) -> Self {
        Self {
            id: row.id,
            channel_id: row.channel_id,
            sender_id: row.sender_id,
            sender_name: display_name(row.username, row.name),
            message_type: row.message_type,
            created_at: row.created_at,
            timestamp: row.created_at,
            seq: row.seq,
        }
    }
}

impl Channels<'_> {
    /// Stores a channel and its creator's membership, in one transaction.
    pub async fn create_channel(self, new: &NewChannel) -> Result<()> {
        with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO channels (id, name, description, avatar_url, is_private, creator_id,
                                       created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(new.id)
            .bind(&new.name)
            .bind(&new.description)
            .bind(&new.avatar_url)
            .bind(new.is_private)
            .bind(new.creator_id)
            .bind(new.created_at)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO channel_members (channel_id, user_id, joined_at) VALUES ($1, $2, $3)",
            )
            .bind(new.id)
            .bind(new.creator_id)
            .bind(new.created_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })?;
        Ok(())
    }

    /// The channel as `viewer` is told it (see `channel_select!` for its member count).
    pub async fn channel(self, id: ChannelId, viewer: UserId) -> Result<Option<Channel>> {
        let row = with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, ChannelRow>(channel_select!("$2", "WHERE c.id = $1"))
                .bind(id)
                .bind(viewer)
                .fetch_optional(pool)
                .await
        })?;
        Ok(row.map(Into::into))
    }

    /// Whether the channel exists, and what `user` may do in it (a withheld member is none).
    pub async fn channel_access(
        self,
        id: ChannelId,
        user: UserId,
    ) -> Result<Option<ChannelAccess>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, ChannelAccess>(
                "SELECT c.is_private, c.creator_id,
                        EXISTS (SELECT 1 FROM channel_members m
                                WHERE m.channel_id = c.id AND m.user_id = $2
                                  AND NOT m.withheld) AS is_member
                 FROM channels c WHERE c.id = $1",
            )
            .bind(id)
            .bind(user)
            .fetch_optional(pool)
            .await
        })?)
    }

    /// Up to `limit` of `user`'s channels, newest first, older than `before_seq` if set.
    pub async fn user_channels(
        self,
        user: UserId,
        before_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Channel>> {
        let rows = with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, ChannelRow>(channel_select!(
                "$1",
                "JOIN channel_members me
                   ON me.channel_id = c.id AND me.user_id = $1 AND NOT me.withheld
                 WHERE c.seq < $2 ORDER BY c.seq DESC LIMIT $3"
            ))
            .bind(user)
            .bind(before_seq.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Adds a member, or with `withheld` a row only the channel's creator counts (see the
    /// migration `0016_withheld_channel_members.sql`). A member added for real replaces a
    /// withheld row; a withheld add leaves an existing row as it is. `false` if nothing
    /// changed.
    pub async fn add_channel_member(
        self,
        channel: ChannelId,
        user: UserId,
        at: DateTime<Utc>,
        withheld: bool,
    ) -> Result<bool> {
        let changed = with_pool!(self.0, write, |pool| {
            sqlx::query(
                "INSERT INTO channel_members (channel_id, user_id, joined_at, withheld)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (channel_id, user_id) DO UPDATE
                     SET withheld = FALSE, joined_at = excluded.joined_at
                     WHERE channel_members.withheld AND NOT excluded.withheld",
            )
            .bind(channel)
            .bind(user)
            .bind(at)
            .bind(withheld)
            .execute(pool)
            .await
            .map(|result| result.rows_affected() > 0)
        })?;
        Ok(changed)
    }

    /// Removes a member; `false` if they were not one.
    pub async fn remove_channel_member(self, channel: ChannelId, user: UserId) -> Result<bool> {
        let changed = with_pool!(self.0, write, |pool| {
            sqlx::query("DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2")
                .bind(channel)
                .bind(user)
                .execute(pool)
                .await
                .map(|result| result.rows_affected() > 0)
        })?;
        Ok(changed)
    }

    /// The channel's members (withheld rows are none).
    pub async fn channel_member_ids(self, channel: ChannelId) -> Result<Vec<UserId>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_scalar(
                "SELECT user_id FROM channel_members WHERE channel_id = $1 AND NOT withheld",
            )
            .bind(channel)
            .fetch_all(pool)
            .await
        })?)
    }

    /// Stores a channel message and bumps its channel, in one transaction. `false` when the id
    /// was already stored (the caller decides whether that is a retry or a conflict).
    pub async fn insert_channel_message(self, new: &NewChannelMessage) -> Result<bool> {
        Ok(with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            // The channel row is locked first, so that within a channel `seq` order is commit
            // order (as for conversations).
            sqlx::query("UPDATE channels SET last_message_at = $2 WHERE id = $1")
                .bind(new.channel_id)
                .bind(new.created_at)
                .execute(&mut *tx)
                .await?;
            let inserted = sqlx::query(
                "INSERT INTO channel_messages (id, channel_id, sender_id, message_type, created_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(new.id)
            .bind(new.channel_id)
            .bind(new.sender_id)
            .bind(&new.message_type)
            .bind(new.created_at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            // A retry must not move `last_message_at`: dropping `tx` rolls the bump back.
            if inserted {
                tx.commit().await?;
            }
            Ok::<_, sqlx::Error>(inserted)
        })?)
    }

    pub async fn channel_message(self, id: ChannelMessageId) -> Result<Option<ChannelMessage>> {
        let row = with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, ChannelMessageRow>(concat!(
                channel_message_select!(),
                "WHERE cm.id = $1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await
        })?;
        Ok(row.map(Into::into))
    }

    /// Up to `limit` messages of a channel, newest first, older than `before_seq` if set.
    pub async fn channel_messages_page(
        self,
        channel: ChannelId,
        before_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ChannelMessage>> {
        let rows = with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, ChannelMessageRow>(concat!(
                channel_message_select!(),
                "WHERE cm.channel_id = $1 AND cm.seq < $2 ORDER BY cm.seq DESC LIMIT $3"
            ))
            .bind(channel)
            .bind(before_seq.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}
