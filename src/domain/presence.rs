//! Presence: what a user shows their contacts (and only them).
//!
//! Who sees what (`store::sees!` decides who is a contact):
//! - an accepted contact (any conversation partner without `CONTACTS_BY_CONSENT`): the status
//!   and last seen as they are, live (`presence_update` frames);
//! - the one a request was sent to, looking at the requester: last seen by the day, shown
//!   `offline`, no live frames (as Signal stores last seen: a day, nothing finer);
//! - everyone, when the user hides their last seen: `offline`, last seen at the Unix epoch
//!   (the app reads `lastSeen` unguarded, so it is always a time), no live frames;
//! - anyone else (strangers, the requester looking at the one asked, either side of a
//!   block): "not found", as for an unknown user.

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::{
    AppState,
    broker::NodeChange,
    error::{Error, Result},
    events::{EphemeralKey, Event},
    model::{Presence, PresenceState, UserId, now},
    store::{Closeness, StoredPresence},
};

/// Records `status` for `user` and tells their contacts (unless they hide it).
pub async fn set(state: &AppState, user: UserId, status: Presence) -> Result<PresenceState> {
    let presence = state
        .store
        .users()
        .set_presence(user, status, now())
        .await?
        .ok_or(Error::NotFound("user"))?;
    if !presence.hidden {
        tell_contacts(state, &presence.state).await?;
    }
    Ok(presence.state)
}

/// Sends `presence` (of its user) to their accepted contacts who are online.
async fn tell_contacts(state: &AppState, presence: &PresenceState) -> Result<()> {
    let user = presence.user_id;
    let audience = state
        .store
        .relations()
        .audience(user, state.config.contacts_by_consent)
        .await?;
    let event = Event::PresenceUpdate {
        user_id: user,
        status: presence.status,
        last_seen: presence.last_seen,
    };
    super::deliver_ephemeral(
        state,
        audience
            .into_iter()
            .filter(|(c, closeness)| *closeness == Closeness::Contact && state.hub.is_online(*c))
            .map(|(c, _)| c),
        EphemeralKey::Presence(user),
        &event,
    );
    Ok(())
}

/// `user`'s presence as `viewer` may see it; anyone who may not gets "not found", as for an
/// unknown user.
pub async fn get(state: &AppState, viewer: UserId, user: UserId) -> Result<PresenceState> {
    let closeness = if viewer == user {
        None
    } else {
        let closeness = state
            .store
            .relations()
            .closeness(viewer, user, state.config.contacts_by_consent)
            .await?;
        Some(closeness.ok_or(Error::NotFound("user"))?)
    };
    let StoredPresence {
        state: presence,
        hidden,
    } = stored(state, user).await?;
    Ok(match closeness {
        None => presence,
        Some(_) if hidden => shown_as(presence, DateTime::UNIX_EPOCH),
        Some(Closeness::Contact) => presence,
        Some(Closeness::Requested) => {
            let day = presence
                .last_seen
                .date_naive()
                .and_time(chrono::NaiveTime::MIN);
            shown_as(presence, day.and_utc())
        }
    })
}

/// `presence` with its live parts replaced: `offline`, seen last at `last_seen`.
fn shown_as(presence: PresenceState, last_seen: DateTime<Utc>) -> PresenceState {
    PresenceState {
        status: Presence::Offline,
        last_seen,
        updated_at: last_seen,
        ..presence
    }
}

async fn stored(state: &AppState, user: UserId) -> Result<StoredPresence> {
    state
        .store
        .users()
        .presence(user)
        .await?
        .ok_or(Error::NotFound("user"))
}

/// Whether `user` hides their last seen (and status) from everyone.
pub async fn hides_last_seen(state: &AppState, user: UserId) -> Result<bool> {
    Ok(stored(state, user).await?.hidden)
}

/// Hides (or shows again) `user`'s last seen and status from everyone; their contacts are told
/// at once (`offline` at the epoch, or the real presence again).
pub async fn set_hide_last_seen(state: &AppState, user: UserId, hide: bool) -> Result<bool> {
    if !state
        .store
        .relations()
        .set_hide_last_seen(user, hide)
        .await?
    {
        return Err(Error::NotFound("user"));
    }
    let presence = stored(state, user).await?.state;
    let shown = if hide {
        shown_as(presence, DateTime::UNIX_EPOCH)
    } else {
        presence
    };
    tell_contacts(state, &shown).await?;
    Ok(hide)
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
        Ok(Some(p)) if p.state.status != Presence::Offline => {
            log(set(state, user, Presence::Offline).await);
            // The node was only late and has refreshed since (its `reassert` may have run
            // before this write), or the user reconnected elsewhere: online after all.
            if state.hub.online_elsewhere(user).await {
                log(set(state, user, Presence::Online).await);
            }
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
        Ok(Some(p)) if p.state.status == Presence::Offline => {
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
