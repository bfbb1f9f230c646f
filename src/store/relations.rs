//! Who may see what a user shows their contacts (presence, last seen, stories, typing, identity
//! changes, email): the one rule, in SQL, that every area's query shares.

use super::{Relations, with_pool};
use crate::{error::Result, model::UserId};

/// SQL that is true when the user `$viewer` may see what `$subject` shows their contacts: the
/// two share a conversation, neither blocks the other, and, when `$consent` (a boolean
/// parameter, `CONTACTS_BY_CONSENT`) holds, the conversation is accepted or `$subject` opened
/// it (a requester shows themself to the one they asked, not the other way round). Each
/// argument is an SQL expression (a column or a placeholder).
macro_rules! sees {
    ($viewer:literal, $subject:literal, $consent:literal) => {
        concat!(
            "(EXISTS (SELECT 1 FROM conversations rc
                      WHERE ((rc.user_a = ",
            $viewer,
            " AND rc.user_b = ",
            $subject,
            ")
                             OR (rc.user_a = ",
            $subject,
            " AND rc.user_b = ",
            $viewer,
            "))
                        AND (NOT ",
            $consent,
            " OR rc.requested_by IS NULL
                             OR rc.requested_by = ",
            $subject,
            "))
              AND NOT EXISTS (SELECT 1 FROM blocks rb
                      WHERE (rb.blocker_id = ",
            $viewer,
            " AND rb.blocked_id = ",
            $subject,
            ")
                         OR (rb.blocker_id = ",
            $subject,
            " AND rb.blocked_id = ",
            $viewer,
            ")))"
        )
    };
}
pub(crate) use sees;

/// How much of a user's presence a viewer may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closeness {
    /// An accepted contact (or any conversation partner without `CONTACTS_BY_CONSENT`):
    /// status and last seen as they are, live.
    Contact,
    /// The one a request was sent to, looking at the requester: last seen by the day only.
    Requested,
}

impl Relations<'_> {
    /// Who may see `subject`'s presence (and stories, typing, identity changes), and how
    /// closely; `consent` is `CONTACTS_BY_CONSENT`.
    pub async fn audience(
        self,
        subject: UserId,
        consent: bool,
    ) -> Result<Vec<(UserId, Closeness)>> {
        let rows: Vec<(UserId, bool)> = with_pool!(self.0, read, |pool| {
            sqlx::query_as(
                "SELECT CASE WHEN c.user_a = $1 THEN c.user_b ELSE c.user_a END,
                        (NOT $2 OR c.requested_by IS NULL)
                 FROM conversations c
                 WHERE (c.user_a = $1 OR c.user_b = $1)
                   AND (NOT $2 OR c.requested_by IS NULL OR c.requested_by = $1)
                   AND NOT EXISTS (SELECT 1 FROM blocks b
                        WHERE (b.blocker_id = c.user_a AND b.blocked_id = c.user_b)
                           OR (b.blocker_id = c.user_b AND b.blocked_id = c.user_a))",
            )
            .bind(subject)
            .bind(consent)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(user, exact)| (user, closeness(exact)))
            .collect())
    }

    /// How closely `viewer` may see `subject` (`None`: not at all).
    pub async fn closeness(
        self,
        viewer: UserId,
        subject: UserId,
        consent: bool,
    ) -> Result<Option<Closeness>> {
        let exact: Option<bool> = with_pool!(self.0, read, |pool| {
            sqlx::query_scalar(concat!(
                "SELECT (NOT $3 OR c.requested_by IS NULL) FROM conversations c
                 WHERE ((c.user_a = $1 AND c.user_b = $2) OR (c.user_a = $2 AND c.user_b = $1))
                   AND ",
                sees!("$1", "$2", "$3")
            ))
            .bind(viewer)
            .bind(subject)
            .bind(consent)
            .fetch_optional(pool)
            .await
        })?;
        Ok(exact.map(closeness))
    }

    /// Sets whether `user` hides their last seen; `false` if the user is gone.
    pub async fn set_hide_last_seen(self, user: UserId, hide: bool) -> Result<bool> {
        let done = with_pool!(self.0, write, |pool| {
            sqlx::query("UPDATE users SET hide_last_seen = $2 WHERE id = $1")
                .bind(user)
                .bind(hide)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(done > 0)
    }
}

fn closeness(exact: bool) -> Closeness {
    if exact {
        Closeness::Contact
    } else {
        Closeness::Requested
    }
}
