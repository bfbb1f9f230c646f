//! End-to-end-encrypted messages for every device (Signal-style): a message carries one
//! envelope per device of its recipient, checked against their device list; each waits in its
//! device's queue until that device acknowledges it (`ack`), then its sender is told which
//! device has it. The server never reads an envelope: it checks sizes, stores and routes.

use std::collections::BTreeMap;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::Deserialize;

use crate::{
    AppState,
    error::{DeviceMismatch, Error, Result},
    events::{EnvelopeBody, EnvelopePayload, Event, Frame},
    model::{ConversationId, MessageId, UserId, now},
    store::{
        AckTarget, EnvelopeMessage, NewEnvelope, PendingEnvelopes, QueueState, QueuedEnvelope,
        Stored,
    },
};

use super::keys::MAX_DEVICE_ID;

/// One device's envelope, as a client sends it.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct EnvelopeIn {
    /// The recipient's device (1–127).
    #[serde(alias = "deviceId")]
    #[schema(minimum = 1, maximum = 127)]
    pub device_id: i64,
    /// The registration id the sender's session with that device knows; a device whose
    /// registration changed since is `stale`.
    #[serde(default, alias = "registrationId")]
    pub registration_id: Option<i64>,
    /// The Signal ciphertext type; not interpreted.
    #[serde(rename = "type")]
    pub kind: i64,
    /// Standard base64 of the ciphertext (not empty; at most `ENVELOPE_MAX_BYTES` decoded).
    #[schema(min_length = 4)]
    pub content: String,
}

/// An envelope message to store: what `messages::submit` hands over.
pub struct Outgoing<'a> {
    pub id: MessageId,
    pub sender: UserId,
    pub sender_device: i64,
    pub recipient: UserId,
    pub conversation_id: Option<ConversationId>,
    pub message_type: &'a str,
    pub envelopes: Vec<EnvelopeIn>,
}

/// A message stored in its devices' queues: what its sender's `message_ack` says.
pub struct Sent {
    pub id: MessageId,
    pub conversation_id: Option<ConversationId>,
    pub timestamp: chrono::DateTime<chrono::Utc>,
}

impl Sent {
    pub fn ack(&self, client_id: Option<MessageId>) -> Event {
        Event::MessageAck {
            id: self.id,
            client_id,
            conversation_id: self.conversation_id,
            timestamp: self.timestamp,
            seq: None,
        }
    }
}

/// An envelope message checked and queued for commit; `complete` finishes sending it.
pub struct Submitted {
    message: EnvelopeMessage,
    /// `None` when there is nobody to send it to (oneself, with no other device).
    pending: Option<PendingEnvelopes>,
}

impl Submitted {
    pub fn id(&self) -> MessageId {
        self.message.id
    }

    /// Waits for the envelopes' commit, then queues each on its device's sockets (once: a
    /// retry is not pushed again).
    pub async fn complete(self, state: &AppState) -> Result<Sent> {
        let Submitted { message, pending } = self;
        let sent = Sent {
            id: message.id,
            conversation_id: message.conversation_id,
            timestamp: message.created_at,
        };
        let Some(pending) = pending else {
            return Ok(sent);
        };
        let Stored::New(numbered) = pending.stored().await? else {
            return Ok(sent);
        };
        for (envelope, (device, seq)) in message.envelopes.iter().zip(numbered) {
            let frame = frame(&message, envelope.kind, &envelope.content, seq, device);
            state
                .hub
                .send_envelope(message.recipient_id, device, seq, &frame);
        }
        crate::metrics::message_routed("envelopes", message.created_at);
        Ok(sent)
    }
}

/// Checks an envelope message against its recipient's devices; nothing is stored when they
/// differ (`Error::Devices`).
pub async fn submit(state: &AppState, out: Outgoing<'_>) -> Result<Submitted> {
    let max = state.config.envelope_max_bytes;
    let mut envelopes = Vec::with_capacity(out.envelopes.len());
    let mut sent_to = BTreeMap::new();
    for e in out.envelopes {
        if !(1..=MAX_DEVICE_ID).contains(&e.device_id) {
            return Err(Error::invalid(format!(
                "deviceId must be between 1 and {MAX_DEVICE_ID}"
            )));
        }
        if sent_to.insert(e.device_id, e.registration_id).is_some() {
            return Err(Error::invalid(format!(
                "two envelopes for device {}",
                e.device_id
            )));
        }
        // Refused before decoding: base64 needs 4 characters per 3 bytes.
        if e.content.len() > max.div_ceil(3) * 4 {
            return Err(Error::PayloadTooLarge);
        }
        let content = STANDARD
            .decode(e.content.as_bytes())
            .map_err(|_| Error::invalid("envelope content must be base64"))?;
        if content.is_empty() {
            return Err(Error::invalid("envelope content must not be empty"));
        }
        if content.len() > max {
            return Err(Error::PayloadTooLarge);
        }
        envelopes.push(NewEnvelope {
            device_id: e.device_id,
            kind: e.kind,
            content,
        });
    }
    let devices = state.store.devices().registrations(out.recipient).await?;
    // To oneself: a copy for each of one's other devices.
    let expected: BTreeMap<i64, Option<i64>> = devices
        .into_iter()
        .filter(|(device, _)| out.recipient != out.sender || *device != out.sender_device)
        .collect();
    // Someone else with no device at all cannot be sent envelopes (the current app's flow,
    // without them, still reaches them).
    if expected.is_empty() && out.recipient != out.sender {
        return Err(Error::NotFound("recipient device"));
    }
    check_devices(&expected, &sent_to)?;
    let message = EnvelopeMessage {
        id: out.id,
        sender_id: out.sender,
        sender_device: out.sender_device,
        recipient_id: out.recipient,
        conversation_id: out.conversation_id,
        message_type: out.message_type.to_owned(),
        created_at: now(),
        envelopes,
    };
    // Queued now, not when its ack is due: a socket's messages share commits.
    let pending = match message.envelopes.is_empty() {
        true => None,
        false => Some(
            (state.store.envelopes())
                .queue(message.clone(), state.config.device_queue_max)
                .await?,
        ),
    };
    Ok(Submitted { message, pending })
}

/// The devices a message must reach (`expected`, with their registration ids) against those
/// it has envelopes for (`sent_to`, with the registration ids the sender named).
fn check_devices(
    expected: &BTreeMap<i64, Option<i64>>,
    sent_to: &BTreeMap<i64, Option<i64>>,
) -> Result<()> {
    let mismatch = DeviceMismatch {
        missing_devices: (expected.keys())
            .filter(|d| !sent_to.contains_key(d))
            .copied()
            .collect(),
        extra_devices: (sent_to.keys())
            .filter(|d| !expected.contains_key(d))
            .copied()
            .collect(),
        stale_devices: (sent_to.iter())
            .filter(|(d, named)| match (named, expected.get(d)) {
                (Some(named), Some(Some(current))) => named != current,
                _ => false,
            })
            .map(|(d, _)| *d)
            .collect(),
    };
    if mismatch == DeviceMismatch::default() {
        Ok(())
    } else {
        Err(Error::Devices(mismatch))
    }
}

/// Device `device` of `user` acknowledges `target`: the envelopes go, and their senders learn
/// that this device has them (not for one's own messages to oneself).
pub async fn ack(state: &AppState, user: UserId, device: i64, target: AckTarget) -> Result<()> {
    let acked = state.store.envelopes().ack(user, device, target).await?;
    let at = now();
    for envelope in acked {
        let Some(conversation_id) = envelope.conversation_id else {
            continue;
        };
        let receipt = Event::DeliveryReceipt {
            message_id: envelope.message_id,
            conversation_id,
            recipient_id: user,
            delivered_at: at,
            device_id: Some(device),
        };
        state
            .hub
            .send_receipt(envelope.sender_id, &receipt.encode());
    }
    Ok(())
}

/// Where `device`'s queue stands; a device that is not registered has an empty one.
pub async fn queue_state(state: &AppState, user: UserId, device: i64) -> Result<QueueState> {
    Ok((state.store.envelopes().queue_state(user, device).await?).unwrap_or_default())
}

/// The device heard of `count` dropped envelopes.
pub async fn forget_dropped(state: &AppState, user: UserId, device: i64, count: i64) -> Result<()> {
    state
        .store
        .envelopes()
        .forget_dropped(user, device, count)
        .await
}

/// Up to `limit` of `device`'s unexpired envelopes numbered in `(after, upto]`, in order, as
/// the frames a socket writes.
pub async fn queue_frames(
    state: &AppState,
    user: UserId,
    device: i64,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<(i64, Frame)>> {
    let not_before = now() - state.config.envelope_ttl;
    let page = (state.store.envelopes())
        .queue_page(user, device, after, upto, not_before, limit)
        .await?;
    Ok(page.iter().map(|e| (e.seq, queued_frame(e))).collect())
}

fn queued_frame(e: &QueuedEnvelope) -> Frame {
    let message = EnvelopeMessage {
        id: e.message_id,
        sender_id: e.sender_id,
        sender_device: e.sender_device,
        recipient_id: e.recipient_id,
        conversation_id: e.conversation_id,
        message_type: e.message_type.clone(),
        created_at: e.created_at,
        envelopes: Vec::new(),
    };
    frame(&message, e.kind, &e.content, e.seq, e.device_id)
}

/// The `message` frame that puts `device`'s envelope (number `seq` in its queue) in front of it.
fn frame(message: &EnvelopeMessage, kind: i64, content: &[u8], seq: i64, device: i64) -> Frame {
    Event::Envelope(EnvelopePayload {
        id: message.id,
        message_id: message.id,
        conversation_id: message.conversation_id,
        sender_id: message.sender_id,
        recipient_id: message.recipient_id,
        message_type: message.message_type.clone(),
        timestamp: message.created_at,
        device_id: device,
        envelope: EnvelopeBody {
            kind,
            content: STANDARD.encode(content),
            source_device_id: message.sender_device,
            source_device_id_camel: message.sender_device,
            cursor: seq,
        },
    })
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(list: &[(i64, Option<i64>)]) -> BTreeMap<i64, Option<i64>> {
        list.iter().copied().collect()
    }

    #[test]
    fn the_envelopes_must_name_exactly_the_devices_with_their_current_registration() {
        let expected = devices(&[(1, Some(10)), (2, None)]);
        assert!(check_devices(&expected, &devices(&[(1, Some(10)), (2, Some(5))])).is_ok());
        assert!(check_devices(&expected, &devices(&[(1, None), (2, None)])).is_ok());
        let Err(Error::Devices(d)) = check_devices(&expected, &devices(&[(1, None), (3, None)]))
        else {
            panic!("a mismatch");
        };
        assert_eq!((d.missing_devices, d.extra_devices), (vec![2], vec![3]));
        let stale = check_devices(&expected, &devices(&[(1, Some(11)), (2, None)]));
        let Err(e @ Error::Devices(_)) = stale else {
            panic!("stale");
        };
        assert_eq!((e.code(), e.status().as_u16()), ("stale_devices", 410));
    }
}
