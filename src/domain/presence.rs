//! Presence: what a user shows their contacts (and only them).

use crate::{
    AppState,
    error::{Error, Result},
    events::Event,
    model::{Presence, PresenceState, UserId, now},
};

/// Records `status` for `user` and tells their contacts.
pub async fn set(state: &AppState, user: UserId, status: Presence) -> Result<PresenceState> {
    let presence = state
        .store
        .set_presence(user, status, now())
        .await?
        .ok_or(Error::NotFound("user"))?;
    let contacts = state.store.contacts(user).await?;
    let event = Event::PresenceUpdate {
        user_id: user,
        status,
        last_seen: presence.last_seen,
    };
    super::deliver(
        state,
        contacts.into_iter().filter(|c| state.hub.is_online(*c)),
        &event,
    );
    Ok(presence)
}

pub async fn get(state: &AppState, user: UserId) -> Result<PresenceState> {
    state
        .store
        .presence(user)
        .await?
        .ok_or(Error::NotFound("user"))
}
