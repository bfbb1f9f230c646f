//! Background clean-up: unanswered calls become missed, expired content blobs go.

use crate::{AppState, model::now};

/// Runs until shutdown, every `calls::expiry_interval` of the ring timeout.
pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(super::calls::expiry_interval(
        state.config.call_ring_timeout,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = super::calls::expire_unanswered(&state).await {
            e.context("expiring unanswered calls").log_if_internal();
        }
        match state.store.delete_expired_contents(now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "expired contents deleted"),
            Err(e) => e.context("deleting expired contents").log_if_internal(),
        }
    }
}
