//! Per-socket limits on what a client may send (the JSON shape is bounded by `protocol`): frames
//! per second (every frame, counted before it is decoded: binary and undecodable ones too),
//! messages per second, ephemeral frames (typing, presence, call answers) per second, and
//! coalescing of typing and presence frames (repeats of the same state are dropped instead of
//! relayed). A socket that keeps exceeding a rate is closed with 1008.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::protocol::Inbound;
use crate::{
    config::Config,
    error::{Error, Result},
    events::CloseReason,
    hub::CloseSignal,
    model::ConversationId,
};

/// A repeat of the same typing or presence state within this window is not relayed.
const COALESCE: Duration = Duration::from_secs(2);
/// Conversations whose last typing state is remembered per socket.
const MAX_TYPING_TRACKED: usize = 64;
/// Frames refused in a row (over the frame rate) before the socket is closed.
const MAX_REFUSALS: u32 = 50;

/// A token bucket of `rate` per second holding up to `2 × rate`.
#[derive(Debug)]
pub(super) struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: 2.0 * rate,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(2.0 * self.rate);
        self.at = now;
    }

    /// Takes up to `wanted` whole tokens; returns how many it took.
    pub(super) fn take_up_to(&mut self, wanted: usize, now: Instant) -> usize {
        self.refill(now);
        let taken = (self.tokens.floor() as usize).min(wanted);
        self.tokens -= taken as f64;
        taken
    }

    /// Returns tokens taken but not used.
    pub(super) fn give_back(&mut self, tokens: usize) {
        self.tokens = (self.tokens + tokens as f64).min(2.0 * self.rate);
    }

    /// How long until a whole token is back.
    pub(super) fn wait_for_one(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }

    /// Takes a token, or says how long until one is back.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[derive(Debug)]
struct State {
    frames: Bucket,
    messages: Bucket,
    ephemeral: Bucket,
    refusals: u32,
    typing: HashMap<ConversationId, (bool, Instant)>,
    presence: Option<(String, Instant)>,
}

/// The limits of one socket.
#[derive(Debug)]
pub struct FrameLimits {
    state: Mutex<State>,
}

impl FrameLimits {
    pub fn new(config: &Config) -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(State {
                frames: Bucket::new(config.ws_frames_per_second, now),
                messages: Bucket::new(config.ws_messages_per_second, now),
                ephemeral: Bucket::new(config.ws_ephemeral_per_second, now),
                refusals: 0,
                typing: HashMap::new(),
                presence: None,
            }),
        }
    }

    /// Counts any frame that arrived (text or binary, before it is decoded) against the
    /// frame rate: over it, the frame is refused with `rate_limited`, and too many refusals
    /// in a row close the socket.
    pub fn admit_frame(&self, close: &CloseSignal) -> Result<()> {
        self.admit_frame_at(close, Instant::now())
    }

    fn admit_frame_at(&self, close: &CloseSignal, now: Instant) -> Result<()> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(());
        };
        match state.frames.take(now) {
            Ok(()) => Ok(()),
            Err(wait) => refused(&mut state, close, wait),
        }
    }

    /// Whether a decoded frame (already counted by `admit_frame`) should be handled
    /// (`Ok(false)`: dropped silently, a coalesced repeat). Over the rate of its kind it is
    /// refused with `rate_limited`; too many refusals in a row close the socket.
    pub fn admit(&self, frame: &Inbound, close: &CloseSignal) -> Result<bool> {
        self.admit_at(frame, close, Instant::now())
    }

    fn admit_at(&self, frame: &Inbound, close: &CloseSignal, now: Instant) -> Result<bool> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(true);
        };
        let bucket = match frame {
            Inbound::Message(_) | Inbound::ChannelMessage(_) | Inbound::CallRequest(_) => {
                Some(&mut state.messages)
            }
            // What others are sent without being stored: limited per sender here, and per
            // recipient socket by its writer.
            Inbound::TypingIndicator(_) | Inbound::PresenceUpdate(_) | Inbound::CallResponse(_) => {
                Some(&mut state.ephemeral)
            }
            _ => None,
        };
        if let Some(Err(wait)) = bucket.map(|b| b.take(now)) {
            return refused(&mut state, close, wait).map(|()| false);
        }
        match frame {
            Inbound::TypingIndicator(t) => {
                let repeat = state
                    .typing
                    .get(&t.conversation_id)
                    .is_some_and(|(typing, at)| {
                        *typing == t.is_typing && now.saturating_duration_since(*at) < COALESCE
                    });
                if repeat {
                    state.refusals = 0;
                    return Ok(false);
                }
                if state.typing.len() >= MAX_TYPING_TRACKED {
                    state.typing.clear();
                }
                state.typing.insert(t.conversation_id, (t.is_typing, now));
            }
            Inbound::PresenceUpdate(p) => {
                let repeat = state.presence.as_ref().is_some_and(|(status, at)| {
                    *status == p.status && now.saturating_duration_since(*at) < COALESCE
                });
                if repeat {
                    state.refusals = 0;
                    return Ok(false);
                }
                state.presence = Some((p.status.clone(), now));
            }
            _ => {}
        }
        state.refusals = 0;
        Ok(true)
    }
}

/// Counts a refusal (closing the socket after too many in a row) and says when to retry.
fn refused(state: &mut State, close: &CloseSignal, wait: Duration) -> Result<()> {
    state.refusals += 1;
    if state.refusals > MAX_REFUSALS {
        close.close(CloseReason::RateLimited);
    }
    Err(Error::TooManyRequests {
        retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::protocol::decode;

    fn config(frames: &str, messages: &str) -> Config {
        Config::from_lookup(|k| match k {
            "WS_FRAMES_PER_SECOND" => Some(frames.into()),
            "WS_MESSAGES_PER_SECOND" => Some(messages.into()),
            _ => None,
        })
        .expect("config")
    }

    #[test]
    fn messages_are_limited_and_typing_repeats_coalesced() {
        let limits = FrameLimits::new(&config("1000", "1"));
        let close = CloseSignal::default();
        let now = Instant::now();
        let message = decode(&format!(
            r#"{{"type":"message","payload":{{"recipientId":"{}","messageType":"text"}}}}"#,
            uuid::Uuid::new_v4()
        ))
        .expect("frame");
        // A burst of two, then one per second.
        assert!(limits.admit_at(&message, &close, now).expect("first"));
        assert!(limits.admit_at(&message, &close, now).expect("second"));
        let refused = limits.admit_at(&message, &close, now).expect_err("third");
        assert_eq!(refused.code(), "rate_limited");
        assert!(
            limits
                .admit_at(&message, &close, now + Duration::from_secs(1))
                .expect("refilled")
        );

        let typing = |on: bool| {
            decode(&format!(
                r#"{{"type":"typing_indicator","payload":{{"conversationId":"{}","isTyping":{on}}}}}"#,
                uuid::Uuid::nil()
            ))
            .expect("frame")
        };
        assert!(limits.admit_at(&typing(true), &close, now).expect("first"));
        assert!(!limits.admit_at(&typing(true), &close, now).expect("repeat"));
        assert!(
            limits
                .admit_at(&typing(false), &close, now)
                .expect("change")
        );
        assert!(
            limits
                .admit_at(&typing(false), &close, now + COALESCE)
                .expect("after the window")
        );
        assert!(!close.is_closed());
    }

    #[test]
    fn a_flood_closes_the_socket() {
        let limits = FrameLimits::new(&config("1", "1"));
        let close = CloseSignal::default();
        let now = Instant::now();
        for _ in 0..2 {
            limits.admit_frame_at(&close, now).expect("burst");
        }
        for _ in 0..=MAX_REFUSALS {
            assert!(limits.admit_frame_at(&close, now).is_err());
        }
        assert!(close.is_closed());
    }

    #[test]
    fn alternating_typing_is_limited_per_sender() {
        let limits = FrameLimits::new(
            &Config::from_lookup(|k| (k == "WS_EPHEMERAL_PER_SECOND").then(|| "5".into()))
                .expect("config"),
        );
        let close = CloseSignal::default();
        let now = Instant::now();
        let typing = |on: bool| {
            decode(&format!(
                r#"{{"type":"typing_indicator","payload":{{"conversationId":"{}","isTyping":{on}}}}}"#,
                uuid::Uuid::nil()
            ))
            .expect("frame")
        };
        // Changes of state are not repeats, but still only a burst of twice the rate passes.
        let passed = (0..20)
            .filter(|n| limits.admit_at(&typing(n % 2 == 0), &close, now).is_ok())
            .count();
        assert_eq!(passed, 10);
        assert!(
            limits
                .admit_at(&typing(true), &close, now + Duration::from_secs(1))
                .is_ok()
        );
    }
}
