//! Blocking: a user stops hearing from another. What the blocked user sends the blocker is
//! accepted as usual from the sender's point of view (acknowledged, so the block is not
//! revealed) and withheld: messages and envelopes are never delivered, calls never ring,
//! channel invitations make the blocker a member only in the inviter's count (see `blocks` and
//! its callers). One way only: the blocker can still reach the blocked user. The blocked user
//! is not told.

use chrono::{DateTime, Utc};

use crate::{
    AppState,
    broker::Control,
    error::{Error, Result},
    model::{BlockedUser, UserId, now},
};

/// `blocker` blocks `blocked` (again: nothing changes). Returns when the block began.
pub async fn block(state: &AppState, blocker: UserId, blocked: UserId) -> Result<DateTime<Utc>> {
    if blocker == blocked {
        return Err(Error::invalid("you cannot block yourself"));
    }
    let since = state
        .store
        .blocks()
        .block(blocker, blocked, now())
        .await?
        .ok_or(Error::NotFound("user"))?;
    changed(state, blocker);
    Ok(since)
}

/// `blocker` lifts their block of `blocked` (none: nothing changes). What was withheld
/// meanwhile stays withheld.
pub async fn unblock(state: &AppState, blocker: UserId, blocked: UserId) -> Result<()> {
    if blocker == blocked {
        return Err(Error::invalid("you cannot block yourself"));
    }
    if state.store.blocks().unblock(blocker, blocked).await? {
        changed(state, blocker);
    } else if !state.store.users().user_exists(blocked).await? {
        return Err(Error::NotFound("user"));
    }
    Ok(())
}

/// The users `blocker` blocks, the latest block first.
pub async fn list(state: &AppState, blocker: UserId) -> Result<Vec<BlockedUser>> {
    state.store.blocks().blocked_users(blocker).await
}

/// Whether `blocker` blocks `other`. Answered from memory for a user whose blocks were read in
/// the last minute: the question of every message, call and invitation.
pub async fn blocks(state: &AppState, blocker: UserId, other: UserId) -> Result<bool> {
    let blocked = state.store.blocks().blocked_by(blocker).await?;
    Ok(blocked.binary_search(&other).is_ok())
}

/// Other nodes forget what they remembered of `blocker`'s blocks (this node's store did).
fn changed(state: &AppState, blocker: UserId) {
    if let Some(broker) = state.hub.broker() {
        broker.control(Control::BlocksChanged(blocker));
    }
}
