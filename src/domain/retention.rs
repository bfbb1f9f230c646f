//! Retention: a background sweep deletes message metadata, call history and expired stories
//! older than configured, sessions whose refresh token expired, and envelopes no device
//! acknowledged within `ENVELOPE_TTL`, and attachments (finished or not) past `ATTACHMENT_TTL`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{
    AppState,
    error::Result,
    model::now,
    store::{RetentionCutoffs, Swept},
};

/// Runs until shutdown, one sweep every `RETENTION_SWEEP_INTERVAL` (the first at start-up).
pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(state.config.retention_sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sweep(&state, now()).await {
            Ok(swept) if swept != Swept::default() => tracing::info!(
                messages = swept.messages,
                calls = swept.calls,
                stories = swept.stories,
                sessions = swept.sessions,
                envelopes = swept.envelopes,
                attachments = swept.attachments,
                "retention sweep"
            ),
            Ok(_) => {}
            Err(e) => e.context("retention sweep").log_if_internal(),
        }
    }
}

/// One sweep, as if the clock read `at`.
pub async fn sweep(state: &AppState, at: DateTime<Utc>) -> Result<Swept> {
    let config = &state.config;
    // A period too long to subtract keeps everything.
    let before = |keep: Duration| {
        chrono::Duration::from_std(keep)
            .ok()
            .and_then(|keep| at.checked_sub_signed(keep))
    };
    let cut = RetentionCutoffs {
        messages_before: config.retention_messages.and_then(before),
        calls_before: config.retention_calls.and_then(before),
        stories_expired_before: before(config.retention_stories),
        now: at,
    };
    let mut swept = state.store.security().sweep_retention(&cut).await?;
    swept.envelopes = (state.store.envelopes())
        .expire(at - state.config.envelope_ttl)
        .await?;
    swept.attachments = super::attachments::sweep(state, at).await?;
    Ok(swept)
}
