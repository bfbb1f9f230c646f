//! One socket: a reader (this task) that decodes frames and calls the domain, and a writer task
//! (`writer.rs`) that catches the socket up, drains its bounded queue, pings and closes it.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::{Message, WebSocket};
use futures_util::{
    StreamExt,
    stream::{SplitSink, SplitStream},
};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::{
    limits::FrameLimits,
    protocol::{self, Inbound},
    writer::{StartFrom, Writer},
};
use crate::{
    AppState,
    auth::TokenClaims,
    domain::{self, envelopes::DeviceAcks, messages::Acks},
    error::{Error, Result},
    events::{CloseReason, Event},
    hub::{self, CloseSignal, EphemeralSlots, Outgoing, SocketId, SocketSlot, queue},
    model::{MessageId, Presence, UserId, now},
    store::AckTarget,
};

/// What a session's reader needs to answer its own socket.
struct Socket {
    user: UserId,
    /// The device it speaks for: the source of its envelopes, the queue its acks empty.
    device: i64,
    replies: queue::Sender<Outgoing>,
    close: Arc<CloseSignal>,
    limits: FrameLimits,
    /// This socket's messages on their way to commit and ack (the domain's).
    acks: Acks,
    /// This socket's device acks on their way to commit (the domain's).
    device_acks: DeviceAcks,
    /// The upgrade request's id, for the log lines about this socket.
    request_id: Box<str>,
}

impl Socket {
    fn span(&self, socket_id: SocketId) -> tracing::Span {
        socket_span(&self.request_id, self.user, socket_id)
    }

    /// Queues a frame for this socket only, behind what is already queued for it.
    fn reply(&self, event: &Event) {
        hub::push(&self.replies, &self.close, Outgoing::Frame(event.encode()));
    }
}

/// A socket listed in the hub before its upgrade is answered: whatever is sent to its user
/// from the moment the client sees the upgrade succeed reaches it (queued until its session
/// runs). Without it, a contact coming online between the answer and the session's start was
/// never shown to this socket. Dropped unused (the upgrade failed), it is taken out again.
pub struct Attached {
    queue: queue::Sender<Outgoing>,
    queue_rx: queue::Receiver<Outgoing>,
    ephemeral: Arc<EphemeralSlots>,
    close: Arc<CloseSignal>,
    listed: Listed,
}

impl Attached {
    pub fn new(state: &AppState, user: UserId, device: i64) -> Self {
        let (queue, queue_rx) = queue::channel(state.config.ws_queue_len);
        let close = Arc::new(CloseSignal::default());
        let ephemeral = Arc::new(EphemeralSlots::default());
        let (id, first) = (state.hub).attach(
            user,
            device,
            queue.clone(),
            ephemeral.clone(),
            close.clone(),
        );
        Self {
            queue,
            queue_rx,
            ephemeral,
            close,
            listed: Listed {
                state: Some(state.clone()),
                user,
                id,
                first,
            },
        }
    }
}

/// A socket's place in the hub, given up on drop unless its session took it over.
struct Listed {
    /// `None` once the session took it over.
    state: Option<AppState>,
    user: UserId,
    id: SocketId,
    /// Whether it was the user's first socket on this node: the session shows them online.
    first: bool,
}

impl Listed {
    /// The socket's id and whether it was the user's first; the session takes it out itself.
    fn take_over(mut self) -> (SocketId, bool) {
        self.state = None;
        (self.id, self.first)
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else {
            return;
        };
        let (user, last) = (self.user, state.hub.detach(self.user, self.id));
        // Sockets of the user attached meanwhile left showing them online to this one.
        if self.first
            && !last
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move { domain::presence::connected(&state, user).await });
        }
    }
}

/// What the upgrade resolved for a socket, handed to its session once the upgrade is done.
pub struct Upgraded {
    pub state: AppState,
    /// The upgrade request's id (`x-request-id`), named in the socket's log lines.
    pub request_id: Box<str>,
    pub attached: Attached,
    pub claims: TokenClaims,
    /// The hub's revocation mark taken before the token was checked.
    pub revocations: u64,
    pub device: i64,
    pub device_named: bool,
    pub start: StartFrom,
    /// One of the user's socket slots, taken before the upgrade, given back when the session
    /// ends.
    pub slot: SocketSlot,
}

/// Runs an attached socket until it closes.
///
/// Its future lives as long as the socket, and an async fn keeps room for its arguments all
/// along: what the upgrade resolved comes boxed, and the socket already split in two small
/// halves (the whole `WebSocket`, moved into the halves' shared lock, was carried twice).
pub async fn run(
    upgraded: Box<Upgraded>,
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
) {
    let Upgraded {
        state,
        request_id,
        attached,
        claims,
        revocations,
        device,
        device_named,
        start,
        slot: _slot,
    } = *upgraded;
    // Only these outlive the start (the whole claims would keep their room in the future).
    let (user, session_id, expires_at) = (claims.user_id, claims.session_id, claims.expires_at);
    let Attached {
        queue,
        queue_rx,
        ephemeral,
        close,
        listed,
    } = attached;
    let (socket_id, first) = listed.take_over();
    // Security: revoking the session (logout, refresh token reuse) closes this socket.
    let _session = (state.hub).track_session(session_id, user, socket_id, close.clone());
    // A revocation since the token was checked found this socket untracked: check again.
    if state.hub.revoked_since(revocations) {
        // Boxed: the session's future would otherwise keep room for the query all its life.
        match Box::pin(domain::sessions::is_active(&state, session_id, user)).await {
            Ok(true) => {}
            Ok(false) => close.close(CloseReason::Revoked),
            Err(e) => {
                socket_span(&request_id, user, socket_id).in_scope(|| e.log_if_internal());
                close.close(CloseReason::ServerError);
            }
        }
    }

    let expires_in = Duration::from_secs(
        u64::try_from(expires_at - chrono::Utc::now().timestamp()).unwrap_or(0),
    );
    let writer = Box::new(Writer {
        sink,
        queue: queue_rx,
        ephemeral,
        close: close.clone(),
        state: state.clone(),
        user,
        device,
        device_named,
        expires_at: Instant::now() + expires_in,
        start,
    });
    domain::push::socket_opened(&state, user, device);
    // Online before the socket is sent anything: whoever hears from this user sees them online.
    let span = socket_span(&request_id, user, socket_id);
    if first {
        Box::pin(domain::presence::connected(&state, user).instrument(span)).await;
    } else {
        // Other nodes learn which of the user's devices are here (for push wake-ups).
        // Boxed, as above (a cluster's broker call).
        Box::pin(state.hub.announce(user).instrument(span)).await;
    }
    // Attached before catching up: whatever is committed later reaches the queue, and the
    // writer skips what the catch-up already wrote.
    let writer = tokio::spawn(writer.run());
    let opened = Instant::now();
    tracing::info!(request_id = &*request_id, %user, socket_id, device, "socket opened");

    let socket = Socket {
        user,
        device,
        replies: queue,
        close: close.clone(),
        limits: FrameLimits::new(&state.config),
        acks: Acks::default(),
        device_acks: DeviceAcks::default(),
        request_id,
    };
    // A device that was offline while its one-time prekeys ran low learns it now.
    let low_prekeys =
        domain::keys::low_prekeys(&state, user, device).instrument(socket.span(socket_id));
    if let Some(low) = Box::pin(low_prekeys).await {
        socket.reply(&low);
    }
    read_loop(&state, &socket, socket_id, stream).await;
    // Messages and device acks already queued still commit (and reach their recipients). (The
    // braces move the whole socket: its queue sender and limits are dropped before the wait.)
    let Socket {
        acks,
        device_acks,
        request_id,
        ..
    } = { socket };
    acks.finish().await;
    device_acks.finish().await;
    close.close(CloseReason::PeerGone);
    let _ = writer.await;

    let span = socket_span(&request_id, user, socket_id);
    if state.hub.detach(user, socket_id) {
        Box::pin(domain::presence::disconnected(&state, user).instrument(span)).await;
    } else {
        Box::pin(state.hub.announce(user).instrument(span)).await;
    }
    let reason = crate::metrics::socket_closed(close.reason_or(CloseReason::PeerGone));
    let duration_ms = opened.elapsed().as_millis() as u64;
    tracing::info!(
        request_id = &*request_id,
        %user,
        socket_id,
        device,
        reason,
        duration_ms,
        "socket closed"
    );
}

/// The span of a socket's log lines. Made for the moments that may log, not kept for the
/// socket's life: a live span holds a few hundred bytes in the log's registry, per socket.
fn socket_span(request_id: &str, user: UserId, socket_id: SocketId) -> tracing::Span {
    tracing::error_span!("socket", request_id, %user, socket_id)
}

async fn read_loop(
    state: &AppState,
    socket: &Socket,
    socket_id: SocketId,
    mut stream: SplitStream<WebSocket>,
) {
    let idle = state.config.ws_idle_timeout;
    // One timer for the socket's life, moved on only when it fires: set anew for every frame
    // (a `timeout` each), it was registered and taken out again, a few locks per frame.
    let mut last_read = Instant::now();
    let mut idle_check = std::pin::pin!(tokio::time::sleep(idle));
    let mut closed = std::pin::pin!(socket.close.closed());
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut closed => return,
            next = stream.next() => next,
            () = &mut idle_check => {
                let idle_until = last_read + idle;
                if idle_until <= Instant::now() {
                    return socket.close.close(CloseReason::Idle);
                }
                idle_check.as_mut().reset(idle_until);
                continue;
            }
        };
        last_read = Instant::now();
        let message = match next {
            None => return,
            Some(Err(e)) => {
                if let Some(reason) = close_reason(e) {
                    socket.close.close(reason);
                }
                return;
            }
            Some(Ok(message)) => message,
        };
        if matches!(message, Message::Text(_) | Message::Binary(_)) {
            // Counted before decoding: binary and undecodable frames are frames too.
            if let Err(e) = socket.limits.admit_frame(&socket.close) {
                socket.reply(&Event::error(&e));
                continue;
            }
        }
        match message {
            Message::Text(text) => {
                // Boxed: a future holds the state of its largest branch for as long as it
                // lives; an idle socket should not carry the biggest handler's.
                if let Err(Refused { error, client_id }) =
                    Box::pin(handle(state, socket, text.as_str())).await
                {
                    socket.span(socket_id).in_scope(|| error.log_if_internal());
                    socket.reply(&match client_id {
                        Some(_) => Event::message_error(&error, None, client_id),
                        None => Event::error(&error),
                    });
                }
            }
            Message::Binary(_) => socket.reply(&Event::error(&Error::Invalid {
                code: "invalid_frame",
                message: "frames are JSON text".into(),
            })),
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

/// A frame that failed, and the id the client gave the message it carried (a `message` frame),
/// for the `error` frame to name it.
struct Refused {
    error: Error,
    client_id: Option<MessageId>,
}

impl From<Error> for Refused {
    fn from(error: Error) -> Self {
        Self {
            error,
            client_id: None,
        }
    }
}

/// Answers one text frame.
async fn handle(state: &AppState, socket: &Socket, text: &str) -> Result<(), Refused> {
    let decoded = protocol::decode(text);
    // Only a message with envelopes (one ciphertext per device) may exceed the frame limit.
    if text.len() > state.config.ws_max_frame_bytes
        && !matches!(&decoded, Ok(Inbound::Message(m)) if m.envelopes.is_some())
    {
        socket.close.close(CloseReason::TooBig);
        return Ok(());
    }
    let inbound = decoded?;
    let kind = inbound.kind();
    crate::metrics::frame_received(kind);
    let client_id = match &inbound {
        Inbound::Message(request) => request.id,
        _ => None,
    };
    // Security: per-socket rate limits and coalescing (ws/limits.rs).
    let answered = match socket.limits.admit(&inbound, &socket.close) {
        Ok(false) => return Ok(()),
        Ok(true) => answer(state, socket, inbound).await,
        Err(e) => Err(e),
    };
    answered.map_err(|error| Refused {
        error: error.context(format!("answering a {kind} frame")),
        client_id,
    })
}

/// Does what a decoded, admitted frame asks.
async fn answer(state: &AppState, socket: &Socket, inbound: Inbound) -> Result<()> {
    let user = socket.user;
    match inbound {
        Inbound::Message(request) => {
            // Queued, not awaited: the socket's next messages can share the same commit.
            (socket.acks)
                .send(
                    state,
                    user,
                    socket.device,
                    request,
                    &socket.replies,
                    &socket.close,
                )
                .await?;
        }
        Inbound::TypingIndicator(t) => {
            domain::conversations::typing(state, user, t.conversation_id, t.is_typing).await?;
        }
        Inbound::ReadReceipt(r) => {
            domain::messages::mark_read(state, user, r.message_id).await?;
        }
        Inbound::PresenceUpdate(p) => {
            let status = Presence::parse(&p.status)
                .ok_or_else(|| Error::invalid("status must be online, offline, away or busy"))?;
            domain::presence::set(state, user, status).await?;
        }
        Inbound::CallRequest(c) => {
            domain::calls::request(state, user, c.recipient_id, c.call_type, c.call_id).await?;
        }
        Inbound::CallResponse(c) => {
            domain::calls::respond(state, user, &c.call_id, c.response).await?;
        }
        Inbound::Sync(sync) => {
            hub::push(
                &socket.replies,
                &socket.close,
                Outgoing::Resync { since: sync.since },
            );
        }
        Inbound::Ack(ack) => {
            let target = match (ack.id, ack.cursor) {
                (Some(id), None) => AckTarget::Message(id),
                (None, Some(cursor)) => AckTarget::Upto(cursor),
                _ => return Err(Error::invalid("ack names an id or a cursor")),
            };
            (socket.device_acks)
                .ack(state, user, socket.device, target)
                .await?;
        }
        Inbound::Heartbeat => socket.reply(&Event::HeartbeatResponse { timestamp: now() }),
        Inbound::ChannelMessage(frame) => {
            let client_id = frame.post.id;
            let (message, _) =
                domain::channels::post(state, user, frame.channel_id, frame.post).await?;
            socket.reply(&Event::ChannelMessageAck {
                id: message.id,
                client_id,
                channel_id: message.channel_id,
                timestamp: message.created_at,
                seq: message.seq,
            });
        }
    }
    Ok(())
}

/// The close code a failed read calls for: a frame above the configured maximum (1009), a
/// text frame that is not UTF-8 (1007); `None` when the connection itself broke.
fn close_reason(error: axum::Error) -> Option<CloseReason> {
    match error.into_inner().downcast_ref::<tungstenite::Error>()? {
        tungstenite::Error::Capacity(_) => Some(CloseReason::TooBig),
        tungstenite::Error::Utf8(_) => Some(CloseReason::InvalidData),
        _ => None,
    }
}
