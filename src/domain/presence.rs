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

/// `user`'s presence, for themself or a contact; anyone else gets "not found", as for an
/// unknown user.
pub async fn get(state: &AppState, viewer: UserId, user: UserId) -> Result<PresenceState> {
    if viewer != user
        && state
            .store
            .conversation_between(viewer, user)
            .await?
            .is_none()
    {
        return Err(Error::NotFound("user"));
    }
    state
        .store
        .presence(user)
        .await?
        .ok_or(Error::NotFound("user"))
}
