//! Server → client WebSocket frames, and their one encoding: `{"type", "payload"}` where every
//! payload field appears under its snake_case name (seed README) and its camelCase name (app).

use chrono::{DateTime, Utc};
use serde::Serialize;

mod both_keys;
mod frame;

pub use frame::{CloseReason, EphemeralKey, Frame};

use crate::model::{
    CallStatus, ChannelId, ChannelMessage, ChannelMessageId, ConversationId, InboxKind, Message,
    MessageId, Presence, UserId,
};

/// Each variant's schema (derived as the encoding is) is published, both key styles added, by
/// the AsyncAPI document (`api/asyncapi.rs`). There, a skipped `None` is absent, never `null`,
/// and a `None` that is not skipped is sent as `null`: hence the `schema` attributes.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum Event {
    /// A new message, for the recipient's sockets only (never echoed to the sender).
    Message(MessagePayload),
    /// One device's envelope of an end-to-end-encrypted message, for that device's sockets
    /// only; it stays queued until the device sends `ack`.
    #[serde(rename = "message")]
    Envelope(EnvelopePayload),
    /// The sender's message is stored. A message with envelopes has no `seq` (it is in no
    /// conversation's history), and no `conversation_id` when sent to oneself.
    MessageAck {
        id: MessageId,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        client_id: Option<MessageId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        conversation_id: Option<ConversationId>,
        timestamp: DateTime<Utc>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        seq: Option<i64>,
    },
    /// The device's queue is drained: every envelope waiting when the socket opened was sent.
    QueueEmpty {},
    /// Envelopes of this device were dropped unacknowledged (its queue was full, or they
    /// expired) since it last heard: their senders' messages are lost to it.
    EnvelopesDropped {
        device_id: i64,
        count: i64,
    },
    TypingIndicator {
        user_id: UserId,
        conversation_id: ConversationId,
        is_typing: bool,
        timestamp: DateTime<Utc>,
    },
    PresenceUpdate {
        user_id: UserId,
        status: Presence,
        last_seen: DateTime<Utc>,
    },
    /// The sender's message was read (an inbox event of the sender: it carries a `cursor`).
    ReadReceipt {
        message_id: MessageId,
        conversation_id: ConversationId,
        reader_id: UserId,
        read_at: DateTime<Utc>,
        cursor: i64,
    },
    /// The sender's message reached a socket of the recipient for the first time; for a
    /// message with envelopes, device `device_id` acknowledged its envelope.
    DeliveryReceipt {
        message_id: MessageId,
        conversation_id: ConversationId,
        recipient_id: UserId,
        delivered_at: DateTime<Utc>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        device_id: Option<i64>,
    },
    /// An incoming call, for the recipient's sockets.
    CallRequestFull {
        call_id: String,
        caller_id: UserId,
        #[schema(required = true)]
        caller_name: Option<String>,
        recipient_id: UserId,
        call_type: String,
        timestamp: DateTime<Utc>,
    },
    /// What the other party (or the server, for a missed call) said about a call.
    CallResponseFull {
        call_id: String,
        response: &'static str,
        status: CallStatus,
        timestamp: DateTime<Utc>,
    },
    HeartbeatResponse {
        timestamp: DateTime<Utc>,
    },
    /// A contact's device replaced its identity key: its safety number changed, and sessions
    /// with that device must be started again from a fresh bundle.
    IdentityChanged {
        user_id: UserId,
        device_id: i64,
        timestamp: DateTime<Utc>,
    },
    /// One of the user's devices is running out of one-time prekeys and should upload more.
    PrekeysLow {
        device_id: i64,
        count: i64,
        threshold: i64,
    },
    /// A new channel message, for the online members other than its sender.
    ChannelMessage(ChannelMessage),
    /// The sender's channel message (sent over the socket) is stored.
    ChannelMessageAck {
        id: ChannelMessageId,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        client_id: Option<ChannelMessageId>,
        channel_id: ChannelId,
        timestamp: DateTime<Utc>,
        seq: i64,
    },
    /// The socket's frame failed. An error about a `message` frame names the message: `id`,
    /// its id (the client's when it chose one, else the server's once it made one), and
    /// `client_id`, the id the client sent, as in `message_ack`; a client with many messages
    /// in flight knows which one failed.
    Error {
        code: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        id: Option<MessageId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        client_id: Option<MessageId>,
        /// `mismatched_devices`: the recipient's devices the message had no envelope for.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        missing_devices: Option<Vec<i64>>,
        /// `mismatched_devices`: envelopes for devices the recipient does not have.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        extra_devices: Option<Vec<i64>>,
        /// `stale_devices`: devices whose registration id changed.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[schema(nullable = false)]
        stale_devices: Option<Vec<i64>>,
    },
}

/// A device's envelope and the message's metadata.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnvelopePayload {
    pub id: MessageId,
    pub message_id: MessageId,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub conversation_id: Option<ConversationId>,
    pub sender_id: UserId,
    pub recipient_id: UserId,
    pub message_type: String,
    pub timestamp: DateTime<Utc>,
    /// The recipient's device this envelope is for.
    pub device_id: i64,
    pub envelope: EnvelopeBody,
}

/// The ciphertext for one device, as its sender's device made it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EnvelopeBody {
    /// The Signal ciphertext type, as the sender gave it.
    #[serde(rename = "type")]
    pub kind: i64,
    /// Standard base64 of the ciphertext.
    pub content: String,
    /// The sender's device.
    pub source_device_id: i64,
    #[serde(rename = "sourceDeviceId")]
    pub source_device_id_camel: i64,
    /// The envelope's number in its device's queue: `ack` with `cursor` acknowledges every
    /// envelope up to it.
    pub cursor: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessagePayload {
    id: MessageId,
    message_id: MessageId,
    conversation_id: ConversationId,
    sender_id: UserId,
    recipient_id: UserId,
    message_type: String,
    #[schema(required = true)]
    session_id: Option<String>,
    timestamp: DateTime<Utc>,
    is_read: bool,
    seq: i64,
    /// The recipient's inbox number: give it back as `since` to catch up from here.
    cursor: i64,
}

impl Event {
    /// The frame that puts inbox event `cursor` about `message` in front of `user`: the
    /// message itself for its recipient, its read receipt for its sender.
    pub fn inbox(message: &Message, cursor: i64, kind: InboxKind) -> Self {
        match kind {
            InboxKind::Message => Self::Message(MessagePayload::new(message, cursor)),
            InboxKind::ReadReceipt => Self::ReadReceipt {
                message_id: message.id,
                conversation_id: message.conversation_id,
                reader_id: message.recipient_id,
                read_at: message.read_at.unwrap_or(message.created_at),
                cursor,
            },
        }
    }
}

impl Event {
    /// The `error` frame that answers a frame failing with `error`.
    pub fn error(error: &crate::error::Error) -> Self {
        Self::message_error(error, None, None)
    }

    /// The `error` frame for a `message` frame that failed with `error`: the message's `id`
    /// (when known), and the id its client gave it (`client_id`, if any).
    pub fn message_error(
        error: &crate::error::Error,
        id: Option<MessageId>,
        client_id: Option<MessageId>,
    ) -> Self {
        let (missing_devices, extra_devices, stale_devices) = match error {
            crate::error::Error::Devices(d) if d.is_stale() => {
                (None, None, Some(d.stale_devices.clone()))
            }
            crate::error::Error::Devices(d) => (
                Some(d.missing_devices.clone()),
                Some(d.extra_devices.clone()),
                None,
            ),
            _ => (None, None, None),
        };
        Self::Error {
            code: error.code(),
            message: error.to_string(),
            id: id.or(client_id),
            client_id,
            missing_devices,
            extra_devices,
            stale_devices,
        }
    }
}

impl MessagePayload {
    fn new(m: &Message, cursor: i64) -> Self {
        Self {
            id: m.id,
            message_id: m.id,
            conversation_id: m.conversation_id,
            sender_id: m.sender_id,
            recipient_id: m.recipient_id,
            message_type: m.message_type.clone(),
            session_id: m.session_id.clone(),
            timestamp: m.created_at,
            is_read: m.is_read,
            seq: m.seq,
            cursor,
        }
    }
}

impl Event {
    /// The frame's text, encoded once however many sockets receive it.
    pub fn encode(&self) -> Frame {
        Frame::from(both_keys::to_json(self))
    }
}

/// `foo_bar` as the encoder writes its second name, `fooBar` (for the AsyncAPI document).
pub fn snake_to_camel(key: &str) -> String {
    let mut buffer = [0; 64];
    both_keys::camel_case(key, &mut buffer).to_owned()
}

/// Rewrites `fooBar` keys as `foo_bar` (for frames the app sends in camelCase).
pub fn camel_to_snake(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use uuid::Uuid;

    #[test]
    fn every_payload_key_comes_in_both_styles() {
        let user = UserId(Uuid::new_v4());
        let frame = Event::PresenceUpdate {
            user_id: user,
            status: Presence::Online,
            last_seen: crate::model::now(),
        }
        .encode();
        let value: Value = serde_json::from_str(frame.as_str()).expect("json");
        assert_eq!(value["type"], "presence_update");
        assert_eq!(value["payload"]["user_id"], user.to_string());
        assert_eq!(value["payload"]["userId"], user.to_string());
        assert_eq!(value["payload"]["lastSeen"], value["payload"]["last_seen"]);
        assert_eq!(value["payload"]["status"], "online");
    }

    #[test]
    fn message_frames_carry_both_styles_and_nulls() {
        let at = crate::model::now();
        let id = MessageId(Uuid::now_v7());
        let payload = MessagePayload {
            id,
            message_id: id,
            conversation_id: ConversationId(Uuid::new_v4()),
            sender_id: UserId(Uuid::new_v4()),
            recipient_id: UserId(Uuid::new_v4()),
            message_type: "text".into(),
            session_id: None,
            timestamp: at,
            is_read: false,
            seq: 7,
            cursor: 3,
        };
        let frame = Event::Message(payload).encode();
        let value: Value = serde_json::from_str(frame.as_str()).expect("json");
        assert_eq!(value["type"], "message");
        let payload = value["payload"].as_object().expect("payload");
        assert_eq!(payload["messageId"], id.to_string());
        assert_eq!(payload["message_id"], id.to_string());
        assert_eq!(payload["isRead"], false);
        assert!(payload["session_id"].is_null() && payload["sessionId"].is_null());
        assert_eq!(payload["cursor"], 3);
        // Each field under each name once; `seq`, `cursor`, `id` and `timestamp` have one name.
        assert_eq!(payload.len(), 18);

        let ack = Event::MessageAck {
            id,
            client_id: None,
            conversation_id: Some(ConversationId(Uuid::new_v4())),
            timestamp: at,
            seq: Some(7),
        }
        .encode();
        let value: Value = serde_json::from_str(ack.as_str()).expect("json");
        assert_eq!(value["type"], "message_ack");
        assert!(value["payload"].get("clientId").is_none());
        assert_eq!(
            value["payload"]["conversationId"],
            value["payload"]["conversation_id"]
        );
    }

    /// Every kind of frame: the derive's payload (through `serde_json::Value`), and beside each
    /// snake_case key the same value under its camelCase name, nothing else.
    #[test]
    fn every_frame_is_the_derive_plus_camel_case_copies() {
        let at = crate::model::now();
        let user = UserId(Uuid::new_v4());
        let message = MessageId(Uuid::now_v7());
        let conversation = ConversationId(Uuid::new_v4());
        let events = [
            Event::MessageAck {
                id: message,
                client_id: Some(message),
                conversation_id: Some(conversation),
                timestamp: at,
                seq: Some(1),
            },
            Event::MessageAck {
                id: message,
                client_id: None,
                conversation_id: None,
                timestamp: at,
                seq: None,
            },
            Event::Envelope(EnvelopePayload {
                id: message,
                message_id: message,
                conversation_id: Some(conversation),
                sender_id: user,
                recipient_id: user,
                message_type: "signal".into(),
                timestamp: at,
                device_id: 2,
                envelope: EnvelopeBody {
                    kind: 3,
                    content: "AAE=".into(),
                    source_device_id: 1,
                    source_device_id_camel: 1,
                    cursor: 5,
                },
            }),
            Event::QueueEmpty {},
            Event::EnvelopesDropped {
                device_id: 2,
                count: 3,
            },
            Event::TypingIndicator {
                user_id: user,
                conversation_id: conversation,
                is_typing: true,
                timestamp: at,
            },
            Event::ReadReceipt {
                message_id: message,
                conversation_id: conversation,
                reader_id: user,
                read_at: at,
                cursor: 2,
            },
            Event::DeliveryReceipt {
                message_id: message,
                conversation_id: conversation,
                recipient_id: user,
                delivered_at: at,
                device_id: None,
            },
            Event::DeliveryReceipt {
                message_id: message,
                conversation_id: conversation,
                recipient_id: user,
                delivered_at: at,
                device_id: Some(2),
            },
            Event::CallRequestFull {
                call_id: "c1".into(),
                caller_id: user,
                caller_name: None,
                recipient_id: user,
                call_type: "video".into(),
                timestamp: at,
            },
            Event::CallResponseFull {
                call_id: "c1".into(),
                response: "accept",
                status: CallStatus::Active,
                timestamp: at,
            },
            Event::HeartbeatResponse { timestamp: at },
            Event::IdentityChanged {
                user_id: user,
                device_id: 2,
                timestamp: at,
            },
            Event::PrekeysLow {
                device_id: 1,
                count: 3,
                threshold: 10,
            },
            Event::ChannelMessage(ChannelMessage {
                id: ChannelMessageId(Uuid::new_v4()),
                channel_id: ChannelId(Uuid::new_v4()),
                sender_id: user,
                sender_name: "Ada \"Lovelace\"".into(),
                message_type: "text".into(),
                created_at: at,
                timestamp: at,
                seq: 4,
            }),
            Event::Error {
                code: "invalid_frame",
                message: "bad \n input".into(),
                id: None,
                client_id: None,
                missing_devices: None,
                extra_devices: None,
                stale_devices: None,
            },
            Event::Error {
                code: "internal",
                message: "internal error".into(),
                id: Some(message),
                client_id: Some(message),
                missing_devices: Some(vec![2]),
                extra_devices: Some(vec![]),
                stale_devices: None,
            },
        ];
        for event in &events {
            let derived = serde_json::to_value(event).expect("value");
            let frame: Value = serde_json::from_str(event.encode().as_str()).expect("json");
            assert_eq!(frame["type"], derived["type"]);
            let (Some(derived), Some(payload)) =
                (derived["payload"].as_object(), frame["payload"].as_object())
            else {
                panic!("no payload in {frame}");
            };
            let mut expected = derived.clone();
            for (key, value) in derived.iter().filter(|(key, _)| key.contains('_')) {
                let mut buffer = [0; 64];
                let camel = both_keys::camel_case(key, &mut buffer);
                expected.insert(camel.to_owned(), value.clone());
            }
            assert_eq!(payload, &expected, "{frame}");
        }
    }

    /// An error about a message names it (both key styles, as everywhere); other errors stay
    /// `{code, message}`, and the cause of an internal error stays in the server's log.
    #[test]
    fn error_frames_name_the_message_they_are_about() {
        let payload = |event: Event| {
            let frame: Value = serde_json::from_str(event.encode().as_str()).expect("json");
            assert_eq!(frame["type"], "error");
            frame["payload"].clone()
        };
        let id = MessageId(Uuid::now_v7());
        let failed = crate::error::Error::Internal(anyhow::anyhow!("FOREIGN KEY constraint"));
        assert_eq!(
            payload(Event::message_error(&failed, Some(id), Some(id))),
            serde_json::json!({"code": "internal", "message": "internal error", "id": id,
                               "client_id": id, "clientId": id})
        );
        assert_eq!(
            payload(Event::message_error(&failed, Some(id), None)),
            serde_json::json!({"code": "internal", "message": "internal error", "id": id})
        );
        let refused = crate::error::Error::NotFound("user");
        assert_eq!(
            payload(Event::message_error(&refused, None, Some(id))),
            serde_json::json!({"code": "not_found", "message": "user not found", "id": id,
                               "client_id": id, "clientId": id})
        );
        assert_eq!(
            payload(Event::error(&refused)),
            serde_json::json!({"code": "not_found", "message": "user not found"})
        );
    }

    #[test]
    fn camel_case_keys_become_snake_case() {
        assert_eq!(camel_to_snake("recipientId"), "recipient_id");
        assert_eq!(camel_to_snake("recipient_id"), "recipient_id");
    }
}
