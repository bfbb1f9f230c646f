//! End-to-end-encrypted messages for every device (Signal-style): a message carries one
//! envelope per device of its recipient, checked against their device list; each waits in its
//! device's queue until that device acknowledges it (`ack`), then its sender is told which
//! device has it. The server never reads an envelope: it checks sizes, stores and routes.

use std::{collections::BTreeMap, sync::OnceLock};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::Deserialize;
use tokio::{sync::mpsc, task::JoinHandle};

use super::push::Devices;
use crate::{
    AppState,
    error::{DeviceMismatch, Error, Result},
    events::{EnvelopeBody, EnvelopePayload, Event, Frame},
    model::{ConversationId, MessageId, UserId, now},
    push::Urgency,
    store::{
        AckTarget, EnvelopeMessage, NewEnvelope, PendingAck, PendingEnvelopes, QueueState,
        QueuedEnvelope, Stored,
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
    header: Header,
    /// Each envelope's device, type and content as the client sent it (canonical base64,
    /// checked by decoding): the live frames carry it as is, with no copy or re-encoding.
    bodies: Vec<(i64, i64, String)>,
    /// `None` when there is nobody to send it to (oneself, with no other device), or when
    /// its recipient blocks its sender.
    pending: Option<PendingEnvelopes>,
}

impl Submitted {
    pub fn id(&self) -> MessageId {
        self.header.id
    }

    /// Waits for the envelopes' commit, then queues each on its device's sockets (once: a
    /// retry is not pushed again).
    pub async fn complete(self, state: &AppState) -> Result<Sent> {
        let Submitted {
            header,
            bodies,
            pending,
        } = self;
        let sent = Sent {
            id: header.id,
            conversation_id: header.conversation_id,
            timestamp: header.created_at,
        };
        let Some(pending) = pending else {
            return Ok(sent);
        };
        let Stored::New(numbered) = pending.stored().await? else {
            return Ok(sent);
        };
        // The store numbers the envelopes in the order they were given.
        for ((device, kind, content), (_, seq)) in bodies.into_iter().zip(numbered) {
            let frame = frame(&header, kind, content, seq, device);
            state
                .hub
                .send_envelope(header.recipient_id, device, seq, &frame);
            super::push::wake(
                state,
                header.recipient_id,
                Devices::One(device),
                Urgency::Normal,
            );
        }
        crate::metrics::message_routed("envelopes", header.created_at);
        Ok(sent)
    }
}

/// What each device's frame of a message says besides its envelope.
struct Header {
    id: MessageId,
    conversation_id: Option<ConversationId>,
    sender_id: UserId,
    sender_device: i64,
    recipient_id: UserId,
    message_type: String,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// Checks an envelope message against its recipient's devices; nothing is stored when they
/// differ (`Error::Devices`). To a recipient who blocks the sender, the same checks answer the
/// same, and then nothing is stored: the sender is acknowledged as usual.
pub async fn submit(state: &AppState, out: Outgoing<'_>) -> Result<Submitted> {
    let max = state.config.envelope_max_bytes;
    let mut envelopes = Vec::with_capacity(out.envelopes.len());
    let mut bodies = Vec::with_capacity(out.envelopes.len());
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
        bodies.push((e.device_id, e.kind, e.content));
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
    let header = Header {
        id: out.id,
        conversation_id: out.conversation_id,
        sender_id: out.sender,
        sender_device: out.sender_device,
        recipient_id: out.recipient,
        message_type: out.message_type.to_owned(),
        created_at: now(),
    };
    let withheld = out.recipient != out.sender
        && super::blocks::blocks(state, out.recipient, out.sender).await?;
    // Queued now, not when its ack is due: a socket's messages share commits.
    let pending = match envelopes.is_empty() || withheld {
        true => None,
        false => {
            let message = EnvelopeMessage {
                id: header.id,
                sender_id: header.sender_id,
                sender_device: header.sender_device,
                recipient_id: header.recipient_id,
                conversation_id: header.conversation_id,
                message_type: header.message_type.clone(),
                created_at: header.created_at,
                envelopes,
            };
            let queue = state
                .store
                .envelopes()
                .queue(message, state.config.device_queue_max);
            Some(queue.await?)
        }
    };
    Ok(Submitted {
        header,
        bodies,
        pending,
    })
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

/// One socket's device acks between their frame and their commit: the reader queues each and
/// goes on (a device acks every envelope, and one commit at a time would be a few acks a
/// second at load); a task started with the first ack waits for the commits in order and tells
/// each sender that this device has its message (not for one's own messages to oneself).
#[derive(Default)]
pub struct DeviceAcks(OnceLock<(mpsc::Sender<PendingAck>, JoinHandle<()>)>);

/// Acks of one socket queued and not committed yet; past that the reader waits.
const ACKS_IN_FLIGHT: usize = 256;

impl DeviceAcks {
    /// Device `device` of `user` acknowledges `target`.
    pub async fn ack(
        &self,
        state: &AppState,
        user: UserId,
        device: i64,
        target: AckTarget,
    ) -> Result<()> {
        let pending = state
            .store
            .envelopes()
            .queue_ack(user, device, target)
            .await?;
        let (acks, _) = self.0.get_or_init(|| {
            let (acks, pending) = mpsc::channel(ACKS_IN_FLIGHT);
            (
                acks,
                tokio::spawn(tell_senders(state.clone(), user, device, pending)),
            )
        });
        acks.send(pending)
            .await
            .map_err(|_| Error::Internal(anyhow::anyhow!("the device ack task stopped")))
    }

    /// Waits until the acks already queued are committed (the socket is closing: a client
    /// that reconnects at once must not be sent what it acknowledged).
    pub async fn finish(self) {
        if let Some((acks, task)) = self.0.into_inner() {
            drop(acks);
            let _ = task.await;
        }
    }
}

/// Waits for a socket's acks to commit, in order, and sends each sender its receipt. An ack
/// that failed leaves its envelope queued: it is sent again on the device's next connect.
async fn tell_senders(
    state: AppState,
    user: UserId,
    device: i64,
    mut pending: mpsc::Receiver<PendingAck>,
) {
    while let Some(ack) = pending.recv().await {
        let acked = match ack.deleted().await {
            Ok(acked) => acked,
            Err(e) => {
                e.context("acknowledging envelopes").log_if_internal();
                continue;
            }
        };
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
    }
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
    let header = Header {
        id: e.message_id,
        conversation_id: e.conversation_id,
        sender_id: e.sender_id,
        sender_device: e.sender_device,
        recipient_id: e.recipient_id,
        message_type: e.message_type.clone(),
        created_at: e.created_at,
    };
    frame(
        &header,
        e.kind,
        STANDARD.encode(&e.content),
        e.seq,
        e.device_id,
    )
}

/// The `message` frame that puts `device`'s envelope (number `seq` in its queue, `content`
/// in base64) in front of it.
fn frame(header: &Header, kind: i64, content: String, seq: i64, device: i64) -> Frame {
    Event::Envelope(EnvelopePayload {
        id: header.id,
        message_id: header.id,
        conversation_id: header.conversation_id,
        sender_id: header.sender_id,
        recipient_id: header.recipient_id,
        message_type: header.message_type.clone(),
        timestamp: header.created_at,
        device_id: device,
        envelope: EnvelopeBody {
            kind,
            content,
            source_device_id: header.sender_device,
            source_device_id_camel: header.sender_device,
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
