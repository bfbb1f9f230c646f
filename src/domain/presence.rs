//! Presence: what a user shows their contacts (and only them).

use tokio::sync::mpsc;

use crate::{
    AppState,
    broker::NodeChange,
    error::{Error, Result},
    events::{EphemeralKey, Event},
    model::{Presence, PresenceState, UserId, now},
};

/// Records `status` for `user` and tells their contacts.
pub async fn set(state: &AppState, user: UserId, status: Presence) -> Result<PresenceState> {
    let presence = state
        .store
        .users()
        .set_presence(user, status, now())
        .await?
        .ok_or(Error::NotFound("user"))?;
    let contacts = state.store.users().contacts(user).await?;
    let event = Event::PresenceUpdate {
        user_id: user,
        status,
        last_seen: presence.last_seen,
    };
    super::deliver_ephemeral(
        state,
        contacts.into_iter().filter(|c| state.hub.is_online(*c)),
        EphemeralKey::Presence(user),
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
            .conversations()
            .conversation_between(viewer, user)
            .await?
            .is_none()
    {
        return Err(Error::NotFound("user"));
    }
    state
        .store
        .users()
        .presence(user)
        .await?
        .ok_or(Error::NotFound("user"))
}

/// `user`'s first socket on this node opened: they are online.
pub async fn connected(state: &AppState, user: UserId) {
    state.hub.announce(user).await;
    log(set(state, user, Presence::Online).await);
}

/// `user`'s last socket on this node closed: they are offline unless a socket of theirs is
/// open on another node of the cluster.
pub async fn disconnected(state: &AppState, user: UserId) {
    state.hub.retire(user).await;
    if state.hub.is_local(user) || state.hub.online_elsewhere(user).await {
        return;
    }
    log(set(state, user, Presence::Offline).await);
    // A socket that opened meanwhile (here or elsewhere) may have written `online` before us.
    if state.hub.is_local(user) || state.hub.online_elsewhere(user).await {
        log(set(state, user, Presence::Online).await);
    }
}

/// `user` was connected to a node that stopped without saying so (cluster mode): offline,
/// unless already shown so.
async fn lost(state: &AppState, user: UserId) {
    match state.store.users().presence(user).await {
        Ok(Some(p)) if p.status != Presence::Offline => {
            log(set(state, user, Presence::Offline).await);
        }
        Ok(_) => {}
        Err(e) => e.context("reading presence").log_if_internal(),
    }
}

/// `user` has a socket on this node but may have been taken offline by another node while this
/// one could not reach Redis: online again.
async fn reassert(state: &AppState, user: UserId) {
    if !state.hub.is_local(user) {
        return;
    }
    match state.store.users().presence(user).await {
        Ok(Some(p)) if p.status == Presence::Offline => {
            log(set(state, user, Presence::Online).await);
        }
        Ok(_) => {}
        Err(e) => e.context("reading presence").log_if_internal(),
    }
}

/// Acts on what the cluster broker reports about other nodes, until shutdown.
pub async fn follow_nodes(state: AppState, mut changes: mpsc::UnboundedReceiver<NodeChange>) {
    loop {
        let change = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            change = changes.recv() => change,
        };
        match change {
            Some(NodeChange::Lost(user)) => lost(&state, user).await,
            Some(NodeChange::Back(users)) => {
                for user in users {
                    reassert(&state, user).await;
                }
            }
            None => return,
        }
    }
}

fn log<T>(result: Result<T>) {
    if let Err(e) = result {
        e.context("setting presence").log_if_internal();
    }
}
