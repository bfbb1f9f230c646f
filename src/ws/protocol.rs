//! Client → server frames: `{"type": "...", "payload": {...}}`, payload keys in camelCase (the
//! app) or snake_case (the seed README). Keys are normalized to snake_case here, once.

use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::{Map, Value};

use crate::{
    domain::{calls::CallResponse, channels::ChannelPost, messages::SendMessage},
    error::Error,
    events::camel_to_snake,
    model::{CallType, ChannelId, ConversationId, MessageId, UserId},
};

/// Deepest nesting of objects and arrays in a frame (`{"payload": {...}}` needs 2).
pub const MAX_DEPTH: usize = 8;
/// Longest JSON string in a frame, in bytes as sent (ids, types, session ids are far shorter).
pub const MAX_STRING: usize = 1024;
#[derive(Debug)]
pub enum Inbound {
    Message(SendMessage),
    TypingIndicator(Typing),
    ReadReceipt(ReadReceipt),
    PresenceUpdate(PresenceUpdate),
    CallRequest(CallRequestFrame),
    CallResponse(CallResponseFrame),
    Sync(SyncFrame),
    Heartbeat,
    ChannelMessage(ChannelFrame),
}

impl Inbound {
    /// The frame's `type`, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Message(_) => "message",
            Self::TypingIndicator(_) => "typing_indicator",
            Self::ReadReceipt(_) => "read_receipt",
            Self::PresenceUpdate(_) => "presence_update",
            Self::CallRequest(_) => "call_request",
            Self::CallResponse(_) => "call_response",
            Self::Sync(_) => "sync",
            Self::Heartbeat => "heartbeat",
            Self::ChannelMessage(_) => "channel_message",
        }
    }
}

/// `channel_message` `{channelId, messageType, id?}`: the same post as the REST endpoint.
#[derive(Debug, Deserialize)]
pub struct ChannelFrame {
    pub channel_id: ChannelId,
    #[serde(flatten)]
    pub post: ChannelPost,
}

/// `sync` `{since}`: send me again every inbox event after this cursor.
#[derive(Debug, Deserialize)]
pub struct SyncFrame {
    #[serde(default)]
    pub since: i64,
}

#[derive(Debug, Deserialize)]
pub struct CallRequestFrame {
    pub recipient_id: UserId,
    pub call_type: CallType,
    /// The app's own id for the call (a millisecond timestamp, as a string or a number).
    #[serde(deserialize_with = "string_or_number")]
    pub call_id: String,
}

#[derive(Debug, Deserialize)]
pub struct CallResponseFrame {
    #[serde(deserialize_with = "string_or_number")]
    pub call_id: String,
    pub response: CallResponse,
}

#[derive(Debug, Deserialize)]
pub struct Typing {
    pub conversation_id: ConversationId,
    pub is_typing: bool,
}

/// `readAt` from the app is ignored: the server's clock decides.
#[derive(Debug, Deserialize)]
pub struct ReadReceipt {
    pub message_id: MessageId,
}

#[derive(Debug, Deserialize)]
pub struct PresenceUpdate {
    pub status: String,
}

/// Parses one text frame. Errors are meant for an `error` frame; the socket stays open.
pub fn decode(text: &str) -> Result<Inbound, Error> {
    let invalid_frame = || Error::Invalid {
        code: "invalid_frame",
        message: "expected a JSON object {\"type\": ..., \"payload\": {...}}".into(),
    };
    check_shape(text)?;
    let Ok(Value::Object(mut frame)) = serde_json::from_str::<Value>(text) else {
        return Err(invalid_frame());
    };
    let Some(Value::String(kind)) = frame.remove("type") else {
        return Err(invalid_frame());
    };
    let payload = match frame.remove("payload") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(payload)) => payload,
        Some(_) => return Err(invalid_frame()),
    };
    let payload: Map<String, Value> = payload
        .into_iter()
        .map(|(key, value)| (camel_to_snake(&key), value))
        .collect();
    Ok(match kind.as_str() {
        "message" => Inbound::Message(parse(&kind, payload)?),
        "typing_indicator" => Inbound::TypingIndicator(parse(&kind, payload)?),
        "read_receipt" => Inbound::ReadReceipt(parse(&kind, payload)?),
        "presence_update" => Inbound::PresenceUpdate(parse(&kind, payload)?),
        "call_request" => Inbound::CallRequest(parse(&kind, payload)?),
        "call_response" => Inbound::CallResponse(parse(&kind, payload)?),
        "sync" => Inbound::Sync(parse(&kind, payload)?),
        "heartbeat" => Inbound::Heartbeat,
        "channel_message" => Inbound::ChannelMessage(parse(&kind, payload)?),
        _ => {
            return Err(Error::Invalid {
                code: "unknown_type",
                message: format!("unknown frame type {:?}", truncate(&kind)),
            });
        }
    })
}

fn parse<T: DeserializeOwned>(kind: &str, payload: Map<String, Value>) -> Result<T, Error> {
    serde_json::from_value(Value::Object(payload)).map_err(|e| Error::Invalid {
        code: "invalid_payload",
        message: format!("{kind}: {e}"),
    })
}

fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(match Id::deserialize(deserializer)? {
        Id::Text(text) => text,
        Id::Number(number) => number.to_string(),
    })
}

/// Echoed names stay short, whatever the client sent.
fn truncate(s: &str) -> &str {
    s.char_indices().nth(40).map_or(s, |(i, _)| &s[..i])
}

/// Refuses a frame nested deeper than `MAX_DEPTH` or with a string above `MAX_STRING` bytes,
/// without building it (a cheap scan; the parser then only sees bounded input).
fn check_shape(text: &str) -> Result<(), Error> {
    let too_big = |what: &str| Error::Invalid {
        code: "frame_too_complex",
        message: format!(
            "frames may nest {MAX_DEPTH} levels and strings {MAX_STRING} bytes: {what}"
        ),
    };
    let (mut depth, mut in_string, mut escaped, mut string_len) = (0usize, false, false, 0usize);
    for byte in text.bytes() {
        if in_string {
            string_len += 1;
            if string_len > MAX_STRING {
                return Err(too_big("string too long"));
            }
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => {
                in_string = true;
                string_len = 0;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(too_big("nested too deeply"));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_limits_refuse_deep_or_long_input() {
        assert!(check_shape(r#"{"type":"heartbeat","payload":{"a":[1,{"b":"\"}"}]}}"#).is_ok());
        assert!(check_shape(&"[".repeat(MAX_DEPTH + 1)).is_err());
        assert!(check_shape(&"[".repeat(MAX_DEPTH)).is_ok());
        let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(MAX_STRING + 1));
        assert!(check_shape(&long).is_err());
    }

    #[test]
    fn app_and_seed_key_styles_decode_alike() {
        let recipient = uuid::Uuid::new_v4();
        for key in ["recipientId", "recipient_id"] {
            let text = format!(
                r#"{{"type":"message","payload":{{"{key}":"{recipient}","messageType":"text","sessionId":"s","timestamp":"2025-11-24T21:03:04.123456"}}}}"#
            );
            let Ok(Inbound::Message(m)) = decode(&text) else {
                panic!("{text}")
            };
            assert_eq!(m.recipient_id.0, recipient);
        }
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        for text in [
            "",
            "[]",
            "null",
            "{}",
            r#"{"type":1}"#,
            r#"{"type":"message","payload":3}"#,
        ] {
            assert_eq!(decode(text).expect_err(text).code(), "invalid_frame");
        }
        assert_eq!(
            decode(r#"{"type":"nope"}"#).expect_err("unknown").code(),
            "unknown_type"
        );
        let missing = decode(r#"{"type":"message","payload":{}}"#).expect_err("missing fields");
        assert_eq!(missing.code(), "invalid_payload");
        assert!(matches!(
            decode(r#"{"type":"heartbeat"}"#),
            Ok(Inbound::Heartbeat)
        ));
    }
}
