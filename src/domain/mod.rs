//! The rules of the service. REST handlers and WebSocket frames are two doors into these same
//! functions, so each rule is written — and tested — once.

pub mod accounts;
pub mod admin;
pub mod attachments;
pub mod blocks;
pub mod calls;
pub mod channels;
pub mod content;
pub mod conversations;
pub mod delivery;
pub mod devices;
pub mod envelopes;
pub(crate) mod input;
pub mod keys;
pub mod messages;
pub mod presence;
pub mod push;
pub mod retention;
pub mod sessions;
pub mod stories;
pub mod sweeper;
pub mod turn;
pub mod users;

use crate::{
    AppState,
    events::{EphemeralKey, Event},
    model::UserId,
};

/// Encodes `event` once and queues it on every socket of each user.
pub(crate) fn deliver(state: &AppState, users: impl IntoIterator<Item = UserId>, event: &Event) {
    let frame = event.encode();
    for user in users {
        state.hub.send(user, &frame);
    }
}

/// Encodes `event` once and offers it to every socket of each user as the latest state of
/// `key`: a socket that is behind keeps only the newest, and is never closed for these.
pub(crate) fn deliver_ephemeral(
    state: &AppState,
    users: impl IntoIterator<Item = UserId>,
    key: EphemeralKey,
    event: &Event,
) {
    let frame = event.encode();
    for user in users {
        state.hub.send_ephemeral(user, key, &frame);
    }
}
