//! What the hub, the broker and the metrics share about frames: the encoded frame itself, the
//! key that coalesces ephemeral ones, and why a socket is closed. Kept at the bottom so that
//! none of them has to import another.

use axum::extract::ws::Utf8Bytes;

use crate::model::{CallId, ChannelMessageId, ConversationId, UserId};

/// An encoded text frame; cloning it shares the bytes, so one encoding serves all recipients.
pub type Frame = Utf8Bytes;

/// The state an ephemeral frame describes: a newer frame with the same key replaces one that
/// was not written yet (the recipient only needs the latest state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EphemeralKey {
    /// `sender` is (or stopped) typing in `conversation`.
    Typing {
        conversation: ConversationId,
        sender: UserId,
    },
    /// A user's presence.
    Presence(UserId),
    /// A call that was not answered yet (ringing, then cancelled, rejected, busy or missed).
    Call(CallId),
    /// A channel post: one slot each (nothing to coalesce), dropped first when the slots are
    /// full. Channel history is kept and served over REST.
    ChannelPost(ChannelMessageId),
}

impl EphemeralKey {
    /// A compact text form without spaces, for the cluster broker.
    pub fn encode(self) -> String {
        match self {
            Self::Typing {
                conversation,
                sender,
            } => format!("t:{}:{}", conversation.0, sender.0),
            Self::Presence(user) => format!("p:{}", user.0),
            Self::Call(call) => format!("c:{}", call.0),
            Self::ChannelPost(post) => format!("m:{}", post.0),
        }
    }

    /// The key `encode` wrote, or `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let kind = parts.next()?;
        let mut id = || parts.next()?.parse::<uuid::Uuid>().ok();
        let key = match kind {
            "t" => Self::Typing {
                conversation: ConversationId(id()?),
                sender: UserId(id()?),
            },
            "p" => Self::Presence(UserId(id()?)),
            "c" => Self::Call(CallId(id()?)),
            "m" => Self::ChannelPost(ChannelMessageId(id()?)),
            _ => return None,
        };
        parts.next().is_none().then_some(key)
    }
}

/// Why the server closes a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Its outgoing queue filled up: the client reads too slowly.
    TooSlow,
    /// It sent a frame above the configured maximum.
    TooBig,
    /// Nothing (not even a pong) came from it for too long.
    Idle,
    TokenExpired,
    /// The server could not read what the socket must be sent; the client catches up later.
    ServerError,
    /// Its session was signed out, revoked, or its account deleted.
    Revoked,
    /// It kept sending frames above its rate limit.
    RateLimited,
    /// It sent a text frame that is not UTF-8 (RFC 6455 §8.1).
    InvalidData,
    ShuttingDown,
    /// The client closed it or the connection broke: nothing left to say.
    PeerGone,
}

impl CloseReason {
    /// The close code sent to the client, if one can still be sent.
    pub fn code(self) -> Option<(u16, &'static str)> {
        match self {
            Self::TooSlow => Some((1013, "too slow: reconnect to catch up")),
            Self::TooBig => Some((1009, "frame too large")),
            Self::Idle => Some((1001, "idle timeout")),
            Self::TokenExpired => Some((4001, "token expired")),
            Self::ServerError => Some((1011, "server error: reconnect to catch up")),
            Self::Revoked => Some((4001, "session revoked")),
            Self::RateLimited => Some((1008, "rate limit exceeded")),
            Self::InvalidData => Some((1007, "text frame is not valid UTF-8")),
            Self::ShuttingDown => Some((1001, "server shutting down")),
            Self::PeerGone => None,
        }
    }
}
