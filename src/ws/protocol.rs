//! Client → server frames: `{"type": "...", "payload": {...}}`, payload keys in camelCase (the
//! app) or snake_case (the seed README). Keys are normalized to snake_case here, once.

use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::{Map, Value};
use utoipa::{
    ToSchema,
    openapi::{
        RefOr,
        schema::{ObjectBuilder, Schema, SchemaType, Type},
    },
};

use crate::{
    domain::{calls::CallResponse, channels::ChannelPost, messages::SendMessage},
    error::Error,
    events::camel_to_snake,
    model::{CallType, ChannelId, ConversationId, MessageId, UserId},
};

/// Deepest nesting of objects and arrays in a frame (`{"payload": {...}}` needs 2).
pub const MAX_DEPTH: usize = 8;
/// Longest JSON string in a frame, in bytes as sent (ids, types, session ids are far shorter),
/// but for the `content` of a `message`'s envelopes (ciphertexts, bounded by
/// `ENVELOPE_MAX_BYTES` and the frame's own limit).
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
    Ack(AckFrame),
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
            Self::Ack(_) => "ack",
        }
    }
}

/// `channel_message` `{channelId, messageType, id?}`: the same post as the REST endpoint.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChannelFrame {
    pub channel_id: ChannelId,
    #[serde(flatten)]
    pub post: ChannelPost,
}

/// `ack` `{id}` or `{cursor}`: this device has the envelope of message `id`, or every envelope
/// of its queue up to `cursor` (an envelope's `cursor`); they are deleted from its queue.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AckFrame {
    #[serde(default)]
    pub id: Option<MessageId>,
    #[serde(default)]
    pub cursor: Option<i64>,
}

/// `sync` `{since}`: send me again every inbox event after this cursor.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SyncFrame {
    /// A `cursor` from a `message` or `read_receipt` frame; 0 (the default) for everything.
    #[serde(default)]
    pub since: i64,
}

/// `call_request`: ring the recipient (or join the call made over `POST /api/calls`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct CallRequestFrame {
    pub recipient_id: UserId,
    pub call_type: CallType,
    /// The app's own id for the call (a millisecond timestamp, as a string or a number).
    #[serde(deserialize_with = "string_or_number")]
    #[schema(schema_with = string_or_number_schema)]
    pub call_id: String,
}

/// `call_response`: answer, refuse or end a call.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CallResponseFrame {
    #[serde(deserialize_with = "string_or_number")]
    #[schema(schema_with = string_or_number_schema)]
    pub call_id: String,
    pub response: CallResponse,
}

/// `typing_indicator`: relayed to the other participant of the conversation.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Typing {
    pub conversation_id: ConversationId,
    pub is_typing: bool,
}

/// `read_receipt`: the recipient read the message. `readAt` from the app is ignored: the
/// server's clock decides.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ReadReceipt {
    pub message_id: MessageId,
}

/// `presence_update`: stored and relayed to the user's contacts.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PresenceUpdate {
    #[schema(value_type = crate::model::Presence)]
    pub status: String,
}

/// `heartbeat`: answered with `heartbeat_response`; its payload is ignored.
#[derive(ToSchema)]
pub struct Heartbeat {}

/// Every frame type `decode` knows, with its payload's schema (the types it decodes into), for
/// the AsyncAPI document; `components` collects the schemas those refer to. A test checks that
/// `decode` knows exactly these types.
pub fn frame_schemas(
    components: &mut Vec<(String, RefOr<Schema>)>,
) -> Vec<(&'static str, RefOr<Schema>)> {
    fn schema<T: ToSchema>(components: &mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema> {
        T::schemas(components);
        T::schema()
    }
    vec![
        ("message", schema::<SendMessage>(components)),
        ("typing_indicator", schema::<Typing>(components)),
        ("read_receipt", schema::<ReadReceipt>(components)),
        ("presence_update", schema::<PresenceUpdate>(components)),
        ("call_request", schema::<CallRequestFrame>(components)),
        ("call_response", schema::<CallResponseFrame>(components)),
        ("channel_message", schema::<ChannelFrame>(components)),
        ("sync", schema::<SyncFrame>(components)),
        ("heartbeat", schema::<Heartbeat>(components)),
        ("ack", schema::<AckFrame>(components)),
    ]
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
    check_strings(&kind, &payload)?;
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
        "ack" => Inbound::Ack(parse(&kind, payload)?),
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

/// What `string_or_number` accepts.
fn string_or_number_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Number]))
        .into()
}

/// Echoed names stay short, whatever the client sent.
fn truncate(s: &str) -> &str {
    s.char_indices().nth(40).map_or(s, |(i, _)| &s[..i])
}

fn too_complex(what: &str) -> Error {
    Error::Invalid {
        code: "frame_too_complex",
        message: format!(
            "frames may nest {MAX_DEPTH} levels and strings {MAX_STRING} bytes: {what}"
        ),
    }
}

/// Refuses a payload with a string above `MAX_STRING` bytes, but for the ciphertexts of a
/// `message`'s envelopes (`envelopes[].content`).
fn check_strings(kind: &str, payload: &Map<String, Value>) -> Result<(), Error> {
    fn walk(value: &Value, allowed_long: bool) -> Result<(), Error> {
        match value {
            Value::String(s) if s.len() > MAX_STRING && !allowed_long => {
                Err(too_complex("string too long"))
            }
            Value::Array(items) => items.iter().try_for_each(|v| walk(v, false)),
            Value::Object(fields) => fields.values().try_for_each(|v| walk(v, false)),
            _ => Ok(()),
        }
    }
    for (key, value) in payload {
        match (kind, key.as_str(), value) {
            ("message", "envelopes", Value::Array(envelopes)) => {
                for envelope in envelopes {
                    match envelope {
                        Value::Object(fields) => fields
                            .iter()
                            .try_for_each(|(k, v)| walk(v, k == "content"))?,
                        other => walk(other, false)?,
                    }
                }
            }
            _ => walk(value, false)?,
        }
    }
    Ok(())
}

/// Refuses a frame nested deeper than `MAX_DEPTH`, without building it (a cheap scan; the
/// parser then only sees bounded input). Strings are checked once parsed (`check_strings`):
/// the frame's size bounds them meanwhile.
fn check_shape(text: &str) -> Result<(), Error> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for byte in text.bytes() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(too_complex("nested too deeply"));
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
        let long = "x".repeat(MAX_STRING + 1);
        let typing = format!(r#"{{"type":"message","payload":{{"messageType":"{long}"}}}}"#);
        assert_eq!(
            decode(&typing).expect_err("long").code(),
            "frame_too_complex"
        );
        // An envelope's ciphertext may be long; nothing else in it may.
        let user = uuid::Uuid::new_v4();
        let envelope = |key: &str| {
            format!(
                r#"{{"type":"message","payload":{{"recipientId":"{user}","messageType":"t","envelopes":[{{"deviceId":1,"type":1,"{key}":"{long}"}}]}}}}"#
            )
        };
        assert!(matches!(
            decode(&envelope("content")),
            Ok(Inbound::Message(_))
        ));
        let other = decode(&envelope("other")).expect_err("long elsewhere");
        assert_eq!(other.code(), "frame_too_complex");
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

    /// The document lists what `decode` knows: every listed type decodes (an empty payload is
    /// at worst `invalid_payload`), and a type that is not listed is `unknown_type`.
    #[test]
    fn documented_frame_types_are_the_decoded_ones() {
        let documented = frame_schemas(&mut Vec::new());
        for (kind, _) in &documented {
            let frame = format!(r#"{{"type":"{kind}","payload":{{}}}}"#);
            match decode(&frame) {
                Ok(inbound) => assert_eq!(inbound.kind(), *kind),
                Err(error) => assert_eq!(error.code(), "invalid_payload", "{kind}"),
            }
        }
        // Every type the server sends, and near misses: none is a client frame unless listed.
        for kind in [
            "message_ack",
            "delivery_receipt",
            "call_request_full",
            "call_response_full",
            "channel_message_ack",
            "identity_changed",
            "prekeys_low",
            "heartbeat_response",
            "queue_empty",
            "envelopes_dropped",
            "error",
            "typingIndicator",
            "Message",
            "ping",
            "",
        ] {
            let frame = format!(r#"{{"type":"{kind}","payload":{{}}}}"#);
            let error = decode(&frame).expect_err(kind);
            assert_eq!(error.code(), "unknown_type", "{kind}");
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
