//! Users, their credentials and their presence.

use chrono::{DateTime, Utc};

use super::{Users, unique_violation, with_pool};
use crate::{
    error::{Error, Result},
    model::{Presence, PresenceState, User, UserId},
};

/// A validated registration, ready to store.
pub struct NewUser {
    pub id: UserId,
    pub email: String,
    pub username: String,
    pub name: Option<String>,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct PresenceRow {
    id: UserId,
    presence: String,
    last_seen: DateTime<Utc>,
    presence_updated_at: DateTime<Utc>,
    hide_last_seen: bool,
}

/// A user's presence as stored, and whether they hide it from everyone.
pub struct StoredPresence {
    pub state: PresenceState,
    pub hidden: bool,
}

impl From<PresenceRow> for StoredPresence {
    fn from(row: PresenceRow) -> Self {
        let state = PresenceState {
            user_id: row.id,
            // Only `Presence::as_str` values are written; anything else reads as offline.
            status: Presence::parse(&row.presence).unwrap_or(Presence::Offline),
            last_seen: row.last_seen,
            updated_at: row.presence_updated_at,
        };
        Self {
            state,
            hidden: row.hide_last_seen,
        }
    }
}

impl Users<'_> {
    /// Stores a new user; a taken email or username is a `Conflict`.
    pub async fn create_user(self, new: &NewUser) -> Result<User> {
        let inserted = with_pool!(self.0, write, |pool| {
            sqlx::query_as::<_, User>(
                "INSERT INTO users (id, email, username, name, password_hash, presence, last_seen,
                                    presence_updated_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, 'offline', $6, $6, $6)
                 RETURNING id, email, username, name, avatar_url, created_at",
            )
            .bind(new.id)
            .bind(&new.email)
            .bind(&new.username)
            .bind(&new.name)
            .bind(&new.password_hash)
            .bind(new.created_at)
            .fetch_one(pool)
            .await
        });
        inserted.map_err(|e| match unique_violation(&e) {
            Some(which) if which.contains("email") => Error::Conflict {
                code: "email_taken",
                message: "this email is already registered",
            },
            Some(_) => Error::Conflict {
                code: "username_taken",
                message: "this username is taken",
            },
            None => e.into(),
        })
    }

    /// The user with this (lower-cased) email and their password hash.
    pub async fn credentials_by_email(self, email: &str) -> Result<Option<(User, String)>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            user: User,
            password_hash: String,
        }
        let row = with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, Row>(
                "SELECT id, email, username, name, avatar_url, created_at, password_hash
                 FROM users WHERE email = $1",
            )
            .bind(email)
            .fetch_optional(pool)
            .await
        })?;
        Ok(row.map(|r| (r.user, r.password_hash)))
    }

    pub async fn user(self, id: UserId) -> Result<Option<User>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, User>(
                "SELECT id, email, username, name, avatar_url, created_at FROM users WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await
        })?)
    }

    /// Users other than `caller` whose username, name or email contains `query` (any case),
    /// by username, after the username `after` when paging.
    pub async fn search_users(
        self,
        caller: UserId,
        query: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<User>> {
        let pattern = format!("%{}%", escape_like(&query.to_lowercase()));
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, User>(
                "SELECT id, email, username, name, avatar_url, created_at FROM users
                  WHERE id <> $1
                    AND (lower(username) LIKE $2 ESCAPE '!' OR lower(coalesce(name, '')) LIKE $2 ESCAPE '!'
                         OR email LIKE $2 ESCAPE '!')
                    AND lower(username) > $3
                  ORDER BY lower(username)
                  LIMIT $4",
            )
            .bind(caller)
            .bind(&pattern)
            .bind(after.unwrap_or("").to_lowercase())
            .bind(limit)
            .fetch_all(pool)
            .await
        })?)
    }

    /// The user with this (lower-cased) email.
    pub async fn user_by_email(self, email: &str) -> Result<Option<User>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, User>(
                "SELECT id, email, username, name, avatar_url, created_at FROM users WHERE email = $1",
            )
            .bind(email)
            .fetch_optional(pool)
            .await
        })?)
    }

    pub async fn user_exists(self, id: UserId) -> Result<bool> {
        let found: Option<i32> = with_pool!(self.0, read, |pool| {
            sqlx::query_scalar("SELECT 1 FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
        })?;
        Ok(found.is_some())
    }

    /// Records `status` for `user`; `last_seen` moves to `at`. `None` if the user is gone.
    pub async fn set_presence(
        self,
        user: UserId,
        status: Presence,
        at: DateTime<Utc>,
    ) -> Result<Option<StoredPresence>> {
        let row = with_pool!(self.0, write, |pool| {
            sqlx::query_as::<_, PresenceRow>(
                "UPDATE users SET presence = $2, last_seen = $3, presence_updated_at = $3
                 WHERE id = $1
                 RETURNING id, presence, last_seen, presence_updated_at, hide_last_seen",
            )
            .bind(user)
            .bind(status.as_str())
            .bind(at)
            .fetch_optional(pool)
            .await
        })?;
        Ok(row.map(Into::into))
    }

    pub async fn presence(self, user: UserId) -> Result<Option<StoredPresence>> {
        let row = with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, PresenceRow>(
                "SELECT id, presence, last_seen, presence_updated_at, hide_last_seen
                 FROM users WHERE id = $1",
            )
            .bind(user)
            .fetch_optional(pool)
            .await
        })?;
        Ok(row.map(Into::into))
    }

    /// Marks everyone offline: at start-up of a single node, no socket is open yet.
    pub async fn reset_presence(self, at: DateTime<Utc>) -> Result<()> {
        with_pool!(self.0, write, |pool| {
            sqlx::query(
                "UPDATE users SET presence = 'offline', last_seen = $1, presence_updated_at = $1
                 WHERE presence <> 'offline'",
            )
            .bind(at)
            .execute(pool)
            .await
            .map(drop)
        })?;
        Ok(())
    }
}

/// Makes `%`, `_` and `!` match themselves in a `LIKE ... ESCAPE '!'` pattern.
fn escape_like(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if matches!(c, '%' | '_' | '!') {
            out.push('!');
        }
        out.push(c);
    }
    out
}
