//! What an operator may do to any account (the admin API): suspend and lift a suspension,
//! sign a user out everywhere, delete an account; and the service's totals.
//!
//! A suspension is a mark on the user (`users.suspended_at`) plus the revocation of every
//! session: the sockets close on every node (4001), the app's refresh and login then answer
//! 403 `suspended`. Tokens are also refused while the mark is set (`session_active` reads it),
//! so a login that raced the suspension gets nothing usable either.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{accounts, sessions};
use crate::{
    AppState,
    error::{Error, Result},
    model::{Totals, UserId, now},
};

/// A user's suspension state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Suspension {
    pub user_id: UserId,
    /// Since when the user is suspended; `null`: active.
    pub suspended_at: Option<DateTime<Utc>>,
}

/// Suspends `user` (again: the first time is kept) and signs them out everywhere.
pub async fn suspend(state: &AppState, user: UserId) -> Result<Suspension> {
    let since = (state.store.users().suspend(user, now()).await?).ok_or(Error::NotFound("user"))?;
    sessions::logout_everywhere(state, user).await?;
    Ok(Suspension {
        user_id: user,
        suspended_at: Some(since),
    })
}

/// Lifts the suspension of `user` (if any): they may sign in again. Their old sessions stay
/// revoked.
pub async fn unsuspend(state: &AppState, user: UserId) -> Result<Suspension> {
    if !state.store.users().unsuspend(user).await? {
        return Err(Error::NotFound("user"));
    }
    Ok(Suspension {
        user_id: user,
        suspended_at: None,
    })
}

/// Revokes every session of `user` (their sockets close on every node); how many were active.
pub async fn revoke_sessions(state: &AppState, user: UserId) -> Result<u64> {
    if !state.store.users().user_exists(user).await? {
        return Err(Error::NotFound("user"));
    }
    sessions::logout_everywhere(state, user).await
}

/// Deletes the account of `user` as its owner would (the same cascade), without a password.
pub async fn delete(state: &AppState, user: UserId) -> Result<()> {
    if !accounts::remove(state, user).await? {
        return Err(Error::NotFound("user"));
    }
    Ok(())
}

/// The service's totals: what the database holds and the sockets open on each node.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub database: Totals,
    /// Open sockets on every node together.
    pub sockets: u64,
    /// Each node's open sockets: this node's counted now, the others' as they last published
    /// them (every third of `PRESENCE_TTL`). While Redis is down, this node's alone.
    pub nodes: Vec<NodeSockets>,
}

#[derive(Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct NodeSockets {
    /// The node's id in the cluster (`redis.node` of its `/health`); `local` for a single
    /// node.
    pub node: String,
    pub sockets: u64,
    /// Whether this is the node that answered.
    pub this: bool,
}

pub async fn stats(state: &AppState) -> Result<Stats> {
    let database = state.store.stats().totals().await?;
    let here = state.hub.socket_count() as u64;
    let mut nodes = Vec::new();
    let name = match state.hub.broker() {
        Some(broker) => {
            let others = broker.sockets_per_node().await.unwrap_or_default();
            nodes.extend(
                (others.into_iter())
                    .filter(|(node, _)| node != broker.node())
                    .map(|(node, sockets)| NodeSockets {
                        node,
                        sockets,
                        this: false,
                    }),
            );
            broker.node().to_owned()
        }
        None => "local".to_owned(),
    };
    nodes.push(NodeSockets {
        node: name,
        sockets: here,
        this: true,
    });
    Ok(Stats {
        database,
        sockets: nodes.iter().map(|n| n.sockets).sum(),
        nodes,
    })
}
