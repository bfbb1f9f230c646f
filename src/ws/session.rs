//! One socket: a reader (this task) that decodes frames and calls the domain, and a writer task
//! that drains the socket's bounded queue, pings, and closes with the right code.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use tokio::{
    sync::mpsc,
    time::{Instant, sleep_until, timeout},
};

use super::protocol::{self, Inbound};
use crate::{
    AppState,
    auth::TokenClaims,
    domain,
    error::{Error, Result},
    events::Event,
    hub::{CloseReason, CloseSignal, Frame},
    model::{Presence, UserId, now},
};

/// Frames written before one flush, so a burst costs one syscall, not one per frame.
const WRITE_BATCH: usize = 64;
/// How long a close frame may take to leave before the connection is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What a session's reader needs to answer its own socket.
struct Socket {
    user: UserId,
    replies: mpsc::Sender<Frame>,
    close: Arc<CloseSignal>,
}

impl Socket {
    fn reply(&self, event: &Event) {
        if self.replies.try_send(event.encode()).is_err() {
            self.close.close(CloseReason::TooSlow);
        }
    }
}

pub async fn run(state: AppState, socket: WebSocket, claims: TokenClaims, device: i64) {
    let user = claims.user_id;
    let (queue, queue_rx) = mpsc::channel(state.config.ws_queue_len);
    let close = Arc::new(CloseSignal::default());
    let (socket_id, first) = state.hub.attach(user, queue.clone(), close.clone());
    let (sink, stream) = socket.split();

    let expires_in = Duration::from_secs(
        u64::try_from(claims.expires_at - chrono::Utc::now().timestamp()).unwrap_or(0),
    );
    let writer = tokio::spawn(write_loop(
        sink,
        queue_rx,
        close.clone(),
        state.clone(),
        Instant::now() + expires_in,
    ));
    let opened = Instant::now();
    tracing::info!(%user, socket_id, device, "socket opened");
    if first {
        set_presence(&state, user, Presence::Online).await;
    }

    let socket = Socket {
        user,
        replies: queue,
        close: close.clone(),
    };
    // A device that was offline while its one-time prekeys ran low learns it now.
    if let Some(low) = domain::keys::low_prekeys(&state, user, device).await {
        socket.reply(&low);
    }
    read_loop(&state, &socket, stream).await;
    close.close(CloseReason::PeerGone);
    let _ = writer.await;

    if state.hub.detach(user, socket_id) {
        set_presence(&state, user, Presence::Offline).await;
    }
    let reason = crate::metrics::socket_closed(close.reason_or(CloseReason::PeerGone));
    let duration_ms = opened.elapsed().as_millis() as u64;
    tracing::info!(%user, socket_id, device, reason, duration_ms, "socket closed");
}

async fn set_presence(state: &AppState, user: UserId, status: Presence) {
    if let Err(e) = domain::presence::set(state, user, status).await {
        e.log_if_internal();
    }
}

async fn read_loop(state: &AppState, socket: &Socket, mut stream: SplitStream<WebSocket>) {
    let idle = state.config.ws_idle_timeout;
    loop {
        let next = tokio::select! {
            biased;
            _ = socket.close.closed() => return,
            next = timeout(idle, stream.next()) => next,
        };
        let message = match next {
            Err(_) => return socket.close.close(CloseReason::Idle),
            Ok(None) => return,
            Ok(Some(Err(e))) => {
                if is_too_big(e) {
                    socket.close.close(CloseReason::TooBig);
                }
                return;
            }
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::Text(text) => {
                if let Err(e) = handle(state, socket, text.as_str()).await {
                    e.log_if_internal();
                    socket.reply(&Event::Error {
                        code: e.code(),
                        message: e.to_string(),
                    });
                }
            }
            Message::Binary(_) => socket.reply(&Event::Error {
                code: "invalid_frame",
                message: "frames are JSON text".into(),
            }),
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

/// Answers one text frame.
async fn handle(state: &AppState, socket: &Socket, text: &str) -> Result<()> {
    let user = socket.user;
    let frame = protocol::decode(text)?;
    crate::metrics::frame_received(frame.kind());
    match frame {
        Inbound::Message(request) => {
            let client_id = request.id;
            let (message, _) = domain::messages::send(state, user, request).await?;
            socket.reply(&Event::MessageAck {
                id: message.id,
                client_id,
                conversation_id: message.conversation_id,
                timestamp: message.created_at,
                seq: message.seq,
            });
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

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Frame>,
    close: Arc<CloseSignal>,
    state: AppState,
    expires_at: Instant,
) {
    let mut ping = tokio::time::interval(state.config.ws_ping_interval);
    ping.reset();
    let reason = loop {
        let sent = tokio::select! {
            biased;
            reason = close.closed() => break reason,
            _ = state.shutdown.cancelled() => break CloseReason::ShuttingDown,
            _ = sleep_until(expires_at) => break CloseReason::TokenExpired,
            frame = queue.recv() => match frame {
                Some(frame) => write_batch(&mut sink, &mut queue, frame, &close).await,
                None => break CloseReason::PeerGone,
            },
            _ = ping.tick() => send_or_abort(&mut sink, Message::Ping(Default::default()), &close).await,
        };
        if !sent {
            break close.reason_or(CloseReason::PeerGone);
        }
    };
    close.close(reason);
    if let Some((code, why)) = reason.code() {
        let frame = Message::Close(Some(CloseFrame {
            code,
            reason: why.into(),
        }));
        let _ = timeout(CLOSE_GRACE, sink.send(frame)).await;
    }
    let _ = timeout(CLOSE_GRACE, sink.close()).await;
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    queue: &mut mpsc::Receiver<Frame>,
    first: Frame,
    close: &CloseSignal,
) -> bool {
    let write = async {
        sink.feed(Message::Text(first)).await?;
        let mut frames = 1;
        while frames < WRITE_BATCH {
            let Ok(frame) = queue.try_recv() else { break };
            sink.feed(Message::Text(frame)).await?;
            frames += 1;
        }
        crate::metrics::write_batch(frames);
        sink.flush().await
    };
    tokio::select! {
        result = write => result.is_ok(),
        _ = close.closed() => false,
    }
}

/// Sends one message unless the socket is told to close while the peer is not reading.
async fn send_or_abort(
    sink: &mut SplitSink<WebSocket, Message>,
    message: Message,
    close: &CloseSignal,
) -> bool {
    tokio::select! {
        result = sink.send(message) => result.is_ok(),
        _ = close.closed() => false,
    }
}

/// Whether a read failed because the client sent a frame above the configured maximum.
fn is_too_big(error: axum::Error) -> bool {
    error
        .into_inner()
        .downcast_ref::<tungstenite::Error>()
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}
