//! Calls and who is in a live one.

use chrono::{DateTime, Utc};

use super::{Calls, with_pool};
use crate::{
    error::Result,
    model::{Call, CallId, CallStatus, UserId},
};

/// The columns of `Call`, qualified by the alias `c` in joins.
macro_rules! call_cols {
    () => {
        "id, call_id, client_call_id, rung_with_client_id, caller_id, recipient_id, call_type, \
         status, created_at, answered_at, ended_at, updated_at, withheld"
    };
    (c) => {
        "c.id, c.call_id, c.client_call_id, c.rung_with_client_id, c.caller_id, c.recipient_id, \
         c.call_type, c.status, c.created_at, c.answered_at, c.ended_at, c.updated_at, \
         c.withheld"
    };
}

pub struct NewCall {
    pub id: CallId,
    pub client_call_id: Option<String>,
    pub caller: UserId,
    pub recipient: UserId,
    pub call_type: &'static str,
    pub status: CallStatus,
    pub at: DateTime<Utc>,
    /// The callee blocks the caller: see `Call::withheld`.
    pub withheld: bool,
}

/// Why a call could not start.
#[derive(Debug, PartialEq, Eq)]
pub enum CallRefused {
    CallerBusy,
    RecipientBusy,
}

/// A call in someone's history, with both names.
#[derive(sqlx::FromRow)]
pub struct CallRecord {
    #[sqlx(flatten)]
    pub call: Call,
    pub caller_username: String,
    pub caller_name: Option<String>,
    pub recipient_username: String,
    pub recipient_name: Option<String>,
}

impl Calls<'_> {
    /// Stores a call. A live (`Ringing`) call first books both users, so that neither can be in
    /// two live calls at once, even under concurrent requests. A withheld call books its caller
    /// only: the callee never hears of it, so it must not make them busy.
    pub async fn create_call(self, new: &NewCall) -> Result<Result<Call, CallRefused>> {
        with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            let call = sqlx::query_as::<_, Call>(concat!(
                "INSERT INTO calls (id, call_id, client_call_id, rung_with_client_id, caller_id,
                                    recipient_id, call_type, status, created_at, updated_at,
                                    withheld)
                 VALUES ($1, $2, $3, $3 IS NOT NULL, $4, $5, $6, $7, $8, $8, $9)
                 RETURNING ",
                call_cols!()
            ))
            .bind(new.id)
            .bind(new.id.to_string())
            .bind(&new.client_call_id)
            .bind(new.caller)
            .bind(new.recipient)
            .bind(new.call_type)
            .bind(new.status.as_str())
            .bind(new.at)
            .bind(new.withheld)
            .fetch_one(&mut *tx)
            .await?;
            if new.status.is_live() {
                let mut parties = vec![(new.caller, CallRefused::CallerBusy)];
                if !new.withheld {
                    parties.push((new.recipient, CallRefused::RecipientBusy));
                }
                for (user, refusal) in parties {
                    let booked = sqlx::query(
                        "INSERT INTO call_participants (user_id, call_id) VALUES ($1, $2)
                         ON CONFLICT (user_id) DO NOTHING",
                    )
                    .bind(user)
                    .bind(new.id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if booked == 0 {
                        return Ok(Err(refusal));
                    }
                }
            }
            tx.commit().await?;
            Ok(Ok(call))
        })
    }

    /// The call `user` takes part in that is known by `id` (server or client id): their live
    /// call if it is the one, else the newest. (Client ids are chosen by apps and may repeat;
    /// another call under the same id must never shadow the call going on.) A call withheld
    /// from `user` is not theirs.
    pub async fn find_call(self, user: UserId, id: &str) -> Result<Option<Call>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, Call>(concat!(
                "SELECT ",
                call_cols!(c),
                " FROM calls c
                  WHERE (c.call_id = $1 OR c.client_call_id = $1)
                    AND (c.caller_id = $2 OR (c.recipient_id = $2 AND c.withheld = FALSE))
                  ORDER BY CASE WHEN c.status IN ('ringing', 'active') THEN 0 ELSE 1 END,
                           c.created_at DESC
                  LIMIT 1"
            ))
            .bind(id)
            .bind(user)
            .fetch_optional(pool)
            .await
        })?)
    }

    /// The live call `user` is in, if any.
    pub async fn live_call(self, user: UserId) -> Result<Option<Call>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, Call>(concat!(
                "SELECT ",
                call_cols!(c),
                " FROM call_participants p JOIN calls c ON c.id = p.call_id WHERE p.user_id = $1"
            ))
            .bind(user)
            .fetch_optional(pool)
            .await
        })?)
    }

    /// Gives the newest call from `caller` to `recipient` made over REST since `since` and not
    /// yet named by the app the caller app's id (the WebSocket request that follows
    /// `POST /api/calls`, even if the call already ended). `None` if there is none.
    pub async fn adopt_client_call_id(
        self,
        caller: UserId,
        recipient: UserId,
        client_call_id: &str,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Option<Call>> {
        Ok(with_pool!(self.0, write, |pool| {
            sqlx::query_as::<_, Call>(concat!(
                "UPDATE calls SET client_call_id = $3, updated_at = $4
                 WHERE id = (SELECT id FROM calls
                             WHERE caller_id = $1 AND recipient_id = $2 AND client_call_id IS NULL
                               AND created_at >= $5
                             ORDER BY created_at DESC LIMIT 1)
                 RETURNING ",
                call_cols!()
            ))
            .bind(caller)
            .bind(recipient)
            .bind(client_call_id)
            .bind(at)
            .bind(since)
            .fetch_optional(pool)
            .await
        })?)
    }

    /// Moves a call from `from` to `to` (setting answer or end time); when the call is over,
    /// frees both users. `None` if the call was not in `from` (someone else moved it first).
    pub async fn transition_call(
        self,
        id: CallId,
        from: CallStatus,
        to: CallStatus,
        at: DateTime<Utc>,
    ) -> Result<Option<Call>> {
        with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            let call = sqlx::query_as::<_, Call>(concat!(
                "UPDATE calls SET status = $3, updated_at = $4,
                     answered_at = CASE WHEN $3 = 'active' THEN $4 ELSE answered_at END,
                     ended_at = CASE WHEN $3 = 'active' THEN NULL ELSE $4 END
                 WHERE id = $1 AND status = $2
                 RETURNING ",
                call_cols!()
            ))
            .bind(id)
            .bind(from.as_str())
            .bind(to.as_str())
            .bind(at)
            .fetch_optional(&mut *tx)
            .await?;
            if call.is_some() && !to.is_live() {
                sqlx::query("DELETE FROM call_participants WHERE call_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(call)
        })
    }

    /// Ringing calls started before `cutoff`, now marked missed (both users freed).
    pub async fn expire_ringing_calls(
        self,
        cutoff: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Vec<Call>> {
        with_pool!(self.0, write, |pool| {
            let mut tx = pool.begin().await?;
            let calls = sqlx::query_as::<_, Call>(concat!(
                "UPDATE calls SET status = 'missed', ended_at = $2, updated_at = $2
                 WHERE status = 'ringing' AND created_at < $1
                 RETURNING ",
                call_cols!()
            ))
            .bind(cutoff)
            .bind(at)
            .fetch_all(&mut *tx)
            .await?;
            if !calls.is_empty() {
                sqlx::query(
                    "DELETE FROM call_participants WHERE call_id IN
                         (SELECT id FROM calls WHERE status NOT IN ('ringing', 'active'))",
                )
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(calls)
        })
    }

    /// Every answered call still going on.
    pub async fn active_calls(self) -> Result<Vec<Call>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, Call>(concat!(
                "SELECT ",
                call_cols!(),
                " FROM calls WHERE status = 'active'"
            ))
            .fetch_all(pool)
            .await
        })?)
    }

    /// `user`'s calls, newest first, older than the call `before` when paging; the calls
    /// withheld from them are left out.
    pub async fn call_history(
        self,
        user: UserId,
        before: Option<CallId>,
        limit: i64,
    ) -> Result<Vec<CallRecord>> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, CallRecord>(concat!(
                "SELECT ",
                call_cols!(c),
                ", cu.username AS caller_username, cu.name AS caller_name,
                   ru.username AS recipient_username, ru.name AS recipient_name
                 FROM calls c
                 JOIN users cu ON cu.id = c.caller_id
                 JOIN users ru ON ru.id = c.recipient_id
                 WHERE (c.caller_id = $1 OR (c.recipient_id = $1 AND c.withheld = FALSE))
                   AND ($2 IS NULL OR c.id < $2)
                 ORDER BY c.id DESC
                 LIMIT $3"
            ))
            .bind(user)
            .bind(before)
            .bind(limit)
            .fetch_all(pool)
            .await
        })?)
    }
}
