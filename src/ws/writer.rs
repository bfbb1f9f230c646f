//! A socket's writer: catches the socket up from the user's inbox, then drains its bounded
//! queue in order, writing inbox events exactly once and in number order (fetching any it
//! missed), writes the latest ephemeral frames (typing, presence...) at a bounded rate when
//! the queue leaves it time, pings, and closes with the right code.

use std::{sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, stream::SplitSink};
use tokio::time::{Instant, sleep_until, timeout};

use super::limits::Bucket;
use crate::{
    AppState,
    domain::{
        delivery::{self, SocketReports},
        envelopes, push,
    },
    error::Result,
    events::{CloseReason, Event, Frame},
    hub::{CloseSignal, EphemeralSlots, Outgoing, queue},
    model::UserId,
};

/// Queued items written before one flush, so a burst costs one syscall, not one per frame.
const WRITE_BATCH: usize = 64;
/// Inbox events read from the store at once while catching up.
const CATCH_UP_PAGE: i64 = 256;
/// How long a close frame may take to leave before the connection is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a socket may take, at shutdown, to write what is already queued for it.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Where a new socket starts in its user's inbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// After the event the client names (`?since=`): exact, per device.
    Cursor(i64),
    /// Whatever no socket of the user was sent yet (clients that keep no cursor): among the
    /// events up to `live_after` (the inbox's end, read before the socket was attached), those
    /// not delivered; every later one, delivered elsewhere or not — it is live for this socket.
    Undelivered { live_after: i64 },
}

pub struct Writer {
    pub sink: SplitSink<WebSocket, Message>,
    pub queue: queue::Receiver<Outgoing>,
    pub ephemeral: Arc<EphemeralSlots>,
    pub close: Arc<CloseSignal>,
    pub state: AppState,
    pub user: UserId,
    /// The device whose envelopes this socket gets.
    pub device: i64,
    /// Whether the client named its device (a query `device_id`, or a device-bound session):
    /// only such clients know of device queues, and are told `queue_empty`.
    pub device_named: bool,
    pub expires_at: Instant,
    /// Where its catch-up starts.
    pub start: StartFrom,
}

/// Why writing stopped before the socket was told to close.
enum Stop {
    Peer,
    Store,
}

struct Progress {
    /// Number of the last inbox event this socket accounted for.
    last_sent: i64,
    /// Number of the last envelope of the device's queue this socket accounted for.
    envelope_last: i64,
    /// What it wrote, on its way to the domain's delivery log.
    reports: SocketReports,
}

impl Writer {
    /// Boxed: a task keeps room for its future's arguments all its life, and `self` by value
    /// was kept twice (the argument, and the local moved out of it).
    pub async fn run(mut self: Box<Self>) {
        let start = self.start;
        let mut progress = Progress {
            last_sent: 0,
            envelope_last: 0,
            reports: SocketReports::default(),
        };
        let mut reason = if self.close.is_closed() {
            // Closed before it started (its session was revoked meanwhile): nothing to write.
            Some(self.close.reason_or(CloseReason::PeerGone))
        } else {
            let caught_up = async {
                self.catch_up(&mut progress, start).await?;
                self.catch_up_envelopes(&mut progress, 0, true).await
            };
            match Box::pin(caught_up).await {
                Ok(()) => None,
                Err(stop) => Some(self.stop_reason(stop)),
            }
        };
        let ping_every = self.state.config.ws_ping_interval;
        let mut next_ping = Instant::now() + ping_every;
        // Per recipient: ephemeral frames are written at this rate at most; the rest wait in
        // their slots, where newer states replace older ones.
        let rate = self.state.config.ws_ephemeral_delivered_per_second;
        let mut budget = Bucket::new(rate, std::time::Instant::now());
        // Set while ephemeral frames wait for the budget to refill.
        let mut ephemeral_at: Option<Instant> = None;
        // Made once, not once a frame: each made anew registered a waiter (a timer, for the
        // expiry) and took it out again, a few locks per frame written.
        let (close, shutdown) = (self.close.clone(), self.state.shutdown.clone());
        let mut closed = std::pin::pin!(close.closed());
        let mut shutting_down = std::pin::pin!(shutdown.cancelled());
        // One timer for the next ping, the token's expiry and the ephemeral frames' next turn:
        // each timer is room in every socket's task, idle or not.
        let mut alarm = std::pin::pin!(sleep_until(next_ping.min(self.expires_at)));
        while reason.is_none() {
            let mut rang = false;
            let step = tokio::select! {
                biased;
                why = &mut closed => Err(why),
                _ = &mut shutting_down => Err(CloseReason::ShuttingDown),
                () = &mut alarm => {
                    // A fired timer stays ready until it is set again.
                    rang = true;
                    let now = Instant::now();
                    if now >= self.expires_at {
                        Err(CloseReason::TokenExpired)
                    } else if ephemeral_at.is_some_and(|at| at <= now) {
                        Box::pin(self.write_ephemeral(&mut budget)).await.map(|at| ephemeral_at = at).map_err(|s| self.stop_reason(s))
                    } else if now >= next_ping {
                        next_ping = now + ping_every;
                        Box::pin(self.send(Message::Ping(Default::default()))).await.map_err(|s| self.stop_reason(s))
                    } else {
                        Ok(())
                    }
                }
                // Boxed: the loop waits most of a socket's life, and a future keeps room for
                // its largest branch all along.
                item = self.queue.recv() => match item {
                    Some(item) => Box::pin(self.write_batch(&mut progress, item)).await.map_err(|s| self.stop_reason(s)),
                    None => Err(CloseReason::PeerGone),
                },
                // Durable frames first (above); ephemeral ones when the queue is empty.
                () = self.ephemeral.ready(), if ephemeral_at.is_none() => {
                    Box::pin(self.write_ephemeral(&mut budget)).await.map(|at| ephemeral_at = at).map_err(|s| self.stop_reason(s))
                }
            };
            let due = ephemeral_at.map_or(next_ping, |at| at.min(next_ping));
            let due = due.min(self.expires_at);
            if rang || alarm.deadline() != due {
                alarm.as_mut().reset(due);
            }
            reason = step.err();
        }
        let reason = reason.unwrap_or(CloseReason::PeerGone);
        if reason == CloseReason::ShuttingDown {
            // What was queued before shutdown still goes out, within a bound.
            // Boxed: once per socket at most, and the largest thing it waits for.
            let _ = timeout(FLUSH_GRACE, Box::pin(self.drain(&mut progress))).await;
        }
        self.close.close(reason);
        if let Some((code, why)) = reason.code() {
            let frame = Message::Close(Some(CloseFrame {
                code,
                reason: why.into(),
            }));
            let _ = timeout(CLOSE_GRACE, self.sink.send(frame)).await;
        }
        let _ = timeout(CLOSE_GRACE, self.sink.close()).await;
        // Boxed, as the drain above.
        let reported = Box::pin(progress.reports.closed(&self.state.delivery, self.user));
        let _ = timeout(CLOSE_GRACE, reported).await;
    }

    /// Writes the ephemeral frames waiting, as many as the budget allows; returns when to come
    /// back for the rest, if some are left.
    async fn write_ephemeral(&mut self, budget: &mut Bucket) -> Result<Option<Instant>, Stop> {
        let allowed = budget.take_up_to(WRITE_BATCH, std::time::Instant::now());
        let frames = self.ephemeral.take(allowed);
        // Tokens not used go back: the budget counts frames written, not wake-ups.
        budget.give_back(allowed - frames.len());
        if !frames.is_empty() {
            for frame in frames {
                self.feed(frame).await?;
            }
            unless_closed(&self.close, self.sink.flush()).await?;
        }
        Ok((!self.ephemeral.is_empty()).then(|| Instant::now() + budget.wait_for_one()))
    }

    /// Writes whatever is queued, without waiting for more.
    async fn drain(&mut self, progress: &mut Progress) {
        while let Some(item) = self.queue.try_recv() {
            if self.write_batch(progress, item).await.is_err() {
                return;
            }
        }
    }

    fn stop_reason(&self, stop: Stop) -> CloseReason {
        match stop {
            // A reason given meanwhile (too slow, shutting down...) explains the stop better.
            Stop::Peer => self.close.reason_or(CloseReason::PeerGone),
            Stop::Store => CloseReason::ServerError,
        }
    }

    /// Writes the inbox events `start` calls for, up to the inbox's current end, but only
    /// among the latest `WS_CATCH_UP_MAX`: a connect or `sync` reads a bounded part of the
    /// inbox however far behind (or at 0) it starts. Older events stay in the history (REST).
    async fn catch_up(&mut self, progress: &mut Progress, start: StartFrom) -> Result<(), Stop> {
        let head = self
            .store(delivery::inbox_head(&self.state, self.user))
            .await?;
        let max = self.state.config.ws_catch_up_max;
        match start {
            StartFrom::Cursor(since) => {
                self.write_inbox(progress, since.max(head - max), head, false)
                    .await?
            }
            StartFrom::Undelivered { live_after } => {
                // The window bounds the backlog found at the upgrade; what arrived while the
                // socket was opening is live for it, and none of it is skipped.
                let old = live_after.clamp(0, head);
                self.write_inbox(progress, (old - max).max(0), old, true)
                    .await?;
                self.write_inbox(progress, old, head, false).await?;
            }
        }
        // Later events arrive through the queue (or are fetched when one is missing).
        progress.last_sent = head;
        progress.reports.accounted_upto(head);
        Ok(())
    }

    /// Writes the device's envelopes after number `after` (its whole queue from 0), then, on
    /// connect (`connecting`) to a client that named its device, how many were dropped since
    /// it last heard (if any) and `queue_empty`.
    async fn catch_up_envelopes(
        &mut self,
        progress: &mut Progress,
        after: i64,
        connecting: bool,
    ) -> Result<(), Stop> {
        let queue = envelopes::queue_state(&self.state, self.user, self.device);
        let queue = self.store(queue).await?;
        if connecting && queue.push_pending {
            // Woken by a push, now here: its next wake-up needs no wait.
            let woken = push::connected(&self.state, self.user, self.device);
            self.store(woken).await?;
        }
        let announce = connecting && self.device_named;
        if announce && queue.dropped > 0 {
            let dropped = Event::EnvelopesDropped {
                device_id: self.device,
                count: queue.dropped,
            };
            self.feed(dropped.encode()).await?;
            let told =
                envelopes::forget_dropped(&self.state, self.user, self.device, queue.dropped);
            self.store(told).await?;
        }
        self.write_queue(after, queue.head).await?;
        progress.envelope_last = progress.envelope_last.max(queue.head);
        if announce {
            self.feed(Event::QueueEmpty {}.encode()).await?;
        }
        self.flush(progress).await
    }

    /// Writes the device's envelopes numbered in `(after, upto]` from the store, in order.
    async fn write_queue(&mut self, mut after: i64, upto: i64) -> Result<(), Stop> {
        while after < upto {
            let page = envelopes::queue_frames(
                &self.state,
                self.user,
                self.device,
                after,
                upto,
                CATCH_UP_PAGE,
            );
            let frames = self.store(page).await?;
            let Some(last) = frames.last().map(|(seq, _)| *seq) else {
                break;
            };
            for (_, frame) in frames {
                self.feed(frame).await?;
            }
            after = last;
        }
        Ok(())
    }

    /// Writes the inbox events numbered in `(after, upto]` from the store, in order.
    async fn write_inbox(
        &mut self,
        progress: &mut Progress,
        mut after: i64,
        upto: i64,
        undelivered_only: bool,
    ) -> Result<(), Stop> {
        while after < upto {
            let page = delivery::inbox_frames(
                &self.state,
                self.user,
                after,
                upto,
                undelivered_only,
                CATCH_UP_PAGE,
            );
            let frames = self.store(page).await?;
            let Some(last) = frames.last().map(|(seq, _)| *seq) else {
                break;
            };
            for (seq, frame) in frames {
                self.feed(frame).await?;
                progress.reports.wrote(seq);
            }
            self.flush(progress).await?;
            after = last;
        }
        Ok(())
    }

    /// Writes `first` and whatever else is already queued, then flushes once.
    async fn write_batch(&mut self, progress: &mut Progress, first: Outgoing) -> Result<(), Stop> {
        let mut item = Some(first);
        let mut taken = 0;
        while taken < WRITE_BATCH {
            let Some(current) = item.take().or_else(|| self.queue.try_recv()) else {
                break;
            };
            taken += 1;
            match current {
                Outgoing::Frame(frame) => self.feed(frame).await?,
                Outgoing::Inbox { seq, frame } => {
                    if seq <= progress.last_sent {
                        continue; // already written while catching up
                    }
                    if seq > progress.last_sent + 1 {
                        // An earlier event's push is late or lost: the store has it.
                        let after = progress.last_sent;
                        Box::pin(self.write_inbox(progress, after, seq, false)).await?;
                    } else {
                        self.feed(frame).await?;
                        progress.reports.wrote(seq);
                    }
                    progress.last_sent = seq;
                    progress.reports.accounted_upto(seq);
                }
                Outgoing::Envelope { seq, frame } => {
                    if seq <= progress.envelope_last {
                        continue; // already written while catching up
                    }
                    if seq > progress.envelope_last + 1 {
                        // An earlier envelope's push is late or lost: the store has it.
                        let after = progress.envelope_last;
                        Box::pin(self.write_queue(after, seq)).await?;
                    } else {
                        self.feed(frame).await?;
                    }
                    progress.envelope_last = seq;
                }
                Outgoing::Resync { since } => {
                    self.flush(progress).await?;
                    Box::pin(self.catch_up(progress, StartFrom::Cursor(since))).await?;
                    // Every envelope not acknowledged yet, again.
                    Box::pin(self.catch_up_envelopes(progress, 0, false)).await?;
                }
                Outgoing::Refill => {
                    let head =
                        Box::pin(self.store(delivery::inbox_head(&self.state, self.user))).await?;
                    if head > progress.last_sent {
                        self.flush(progress).await?;
                        let after = progress.last_sent;
                        Box::pin(self.write_inbox(progress, after, head, false)).await?;
                        progress.last_sent = head;
                        progress.reports.accounted_upto(head);
                    }
                    let after = progress.envelope_last;
                    Box::pin(self.catch_up_envelopes(progress, after, false)).await?;
                }
            }
        }
        crate::metrics::write_batch(taken);
        self.flush(progress).await
    }

    async fn feed(&mut self, frame: Frame) -> Result<(), Stop> {
        unless_closed(&self.close, self.sink.feed(Message::Text(frame))).await
    }

    /// Flushes, then reports the inbox events written as delivered.
    async fn flush(&mut self, progress: &mut Progress) -> Result<(), Stop> {
        unless_closed(&self.close, self.sink.flush()).await?;
        progress
            .reports
            .flushed(&self.state.delivery, self.user)
            .await;
        Ok(())
    }

    /// Sends one message unless the socket is told to close while the peer is not reading.
    async fn send(&mut self, message: Message) -> Result<(), Stop> {
        unless_closed(&self.close, self.sink.send(message)).await
    }

    async fn store<T>(&self, read: impl Future<Output = Result<T>>) -> Result<T, Stop> {
        read.await.map_err(|e| {
            e.context("reading what a socket must be sent")
                .log_if_internal();
            Stop::Store
        })
    }
}

/// Runs `write` on the socket unless it is told to close while the write waits (a peer that
/// does not read). The write is polled first: the close signal, whose every poll takes locks,
/// is looked at only while a write waits, not for every frame.
async fn unless_closed(
    close: &CloseSignal,
    write: impl Future<Output = Result<(), axum::Error>>,
) -> Result<(), Stop> {
    tokio::select! {
        biased;
        result = write => result.map_err(|_| Stop::Peer),
        _ = close.closed() => Err(Stop::Peer),
    }
}
