//! Background clean-up: unanswered calls become missed, active calls nobody is connected to
//! end, expired content blobs go.

use std::collections::HashMap;

use crate::{AppState, model::now};

/// Runs until shutdown, every `calls::expiry_interval` of the shorter of the ring timeout and
/// the longest silence of an active call.
pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(super::calls::expiry_interval(
        state
            .config
            .call_ring_timeout
            .min(state.config.call_max_silence),
    ));
    let mut silent_calls = HashMap::new();
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = super::calls::expire_unanswered(&state).await {
            e.context("expiring unanswered calls").log_if_internal();
        }
        if let Err(e) = super::calls::end_abandoned(&state, &mut silent_calls).await {
            e.log_if_internal();
        }
        match state.store.contents().delete_expired_contents(now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "expired contents deleted"),
            Err(e) => e.context("deleting expired contents").log_if_internal(),
        }
    }
}
