//! Delivery state: each socket's writer notes in its `SocketReports` the inbox events it
//! wrote, and reports them here once flushed; this task records them in batches and tells each
//! sender when their message first reached the recipient.

use std::{sync::Mutex, time::Duration};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    AppState,
    error::Result,
    events::{Event, Frame},
    model::{UserId, now},
    store::FirstDelivery,
};

/// The number of `user`'s latest inbox event: where a socket's catch-up ends.
pub async fn inbox_head(state: &AppState, user: UserId) -> Result<i64> {
    state.store.inbox().inbox_head(user).await
}

/// Up to `limit` of `user`'s inbox events numbered in `(after, upto]`, in order, as the frames
/// a socket writes (only those no socket was sent yet when `undelivered_only`).
pub async fn inbox_frames(
    state: &AppState,
    user: UserId,
    after: i64,
    upto: i64,
    undelivered_only: bool,
    limit: i64,
) -> Result<Vec<(i64, Frame)>> {
    let entries = (state.store.inbox())
        .inbox_entries(user, after, upto, undelivered_only, limit)
        .await?;
    Ok(entries
        .iter()
        .map(|e| (e.seq, Event::inbox(&e.message, e.seq, e.kind).encode()))
        .collect())
}

/// Delivered events a socket keeps while the delivery queue is full, before it waits for room.
const UNREPORTED_MAX: usize = 4096;
/// Reports queued before a writer has to wait for the recorder.
const QUEUE: usize = 16 * 1024;
/// Reports recorded in one transaction at most.
const BATCH: usize = 4096;
/// Pauses between attempts to record a batch while the database fails, doubling up to the
/// second.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Where socket writers report what they delivered.
pub struct DeliveryLog {
    reports: mpsc::Sender<(UserId, i64)>,
    /// Taken by the recording task when the server starts.
    pending: Mutex<Option<mpsc::Receiver<(UserId, i64)>>>,
    /// Cancelled at shutdown once every socket is closed: the task records what is queued, then
    /// ends.
    closing: CancellationToken,
}

impl Default for DeliveryLog {
    fn default() -> Self {
        Self::with_capacity(QUEUE)
    }
}

impl DeliveryLog {
    fn with_capacity(reports_queued: usize) -> Self {
        let (reports, pending) = mpsc::channel(reports_queued);
        Self {
            reports,
            pending: Mutex::new(Some(pending)),
            closing: CancellationToken::new(),
        }
    }

    /// Tells the recording task that no socket reports any more (see `run`).
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Reports that inbox events `seqs` of `user` were written to one of their sockets,
    /// waiting for room in the queue.
    pub async fn delivered(&self, user: UserId, seqs: impl IntoIterator<Item = i64>) {
        for seq in seqs {
            // Closed only at shutdown; the events then stay undelivered and are sent again.
            let _ = self.reports.send((user, seq)).await;
        }
    }

    /// Reports what the queue has room for now, in order, and leaves the rest in `written`
    /// for a later report. A socket's writer must not stop writing while the store is slow to
    /// record deliveries: its queue would fill and the socket be closed as too slow (seen on
    /// PostgreSQL at saturation, every recipient's socket closed).
    pub fn report_without_waiting(&self, user: UserId, written: &mut Vec<i64>) {
        let queued = written
            .iter()
            .take_while(|&&seq| self.reports.try_send((user, seq)).is_ok())
            .count();
        written.drain(..queued);
    }
}

/// What one socket wrote of its user's inbox and has not reported as delivered yet.
#[derive(Default)]
pub struct SocketReports {
    /// Inbox events written since the last flush, reported as delivered after it.
    written: Vec<i64>,
    /// Inbox events flushed that the delivery queue had no room for yet.
    unreported: Vec<i64>,
    /// Inbox events up to this number were already reported by this socket: written again (a
    /// `sync`), they are not reported again.
    reported_upto: i64,
}

impl SocketReports {
    /// Inbox event `seq` was written to the socket (not flushed yet).
    pub fn wrote(&mut self, seq: i64) {
        // Written again by a `sync`: already reported, and marking it delivered again would
        // only cost the store a lookup per event.
        if seq > self.reported_upto {
            self.written.push(seq);
        }
    }

    /// Every inbox event up to `seq` is accounted for by this socket (written, or delivered
    /// before it opened): none is reported again.
    pub fn accounted_upto(&mut self, seq: i64) {
        self.reported_upto = self.reported_upto.max(seq);
    }

    /// The socket flushed what it wrote: reports it as delivered, without waiting while the
    /// queue has room or the backlog is short.
    pub async fn flushed(&mut self, log: &DeliveryLog, user: UserId) {
        if self.written.is_empty() {
            return;
        }
        self.unreported.append(&mut self.written);
        log.report_without_waiting(user, &mut self.unreported);
        // Far behind: wait for the recorder rather than keep an ever longer list.
        if self.unreported.len() > UNREPORTED_MAX {
            log.delivered(user, self.unreported.drain(..)).await;
        }
    }

    /// The socket closed: reports what it flushed but could not report yet (unreported, it
    /// would be sent again on a later connect).
    pub async fn closed(mut self, log: &DeliveryLog, user: UserId) {
        log.delivered(user, self.unreported.drain(..)).await;
    }
}

/// Records reports until `DeliveryLog::close`, and what is queued by then: a shutdown that
/// dropped them would have every socket's last deliveries sent again on the next connect.
pub async fn run(state: AppState) {
    let Some(mut pending) = state
        .delivery
        .pending
        .lock()
        .ok()
        .and_then(|mut p| p.take())
    else {
        return;
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            biased;
            n = pending.recv_many(&mut batch, BATCH) => n,
            _ = state.delivery.closing.cancelled() => return,
        };
        if received == 0 {
            return;
        }
        let Some(delivered) = record(&state, &batch).await else {
            return; // shutting down while the database does not answer
        };
        for message in delivered {
            let receipt = Event::DeliveryReceipt {
                message_id: message.id,
                conversation_id: message.conversation_id,
                recipient_id: message.recipient_id,
                delivered_at: message.delivered_at,
                device_id: None,
            };
            (state.hub).send_receipt(message.sender_id, &receipt.encode());
        }
        batch.clear();
    }
}

/// Records `batch`, retrying while the database does not answer (it restarts, say): a batch
/// dropped would have its events sent again on the user's next connect without a cursor, a
/// duplicate of what the app showed already, and its senders never get their receipts. Reports
/// queue meanwhile (writers keep their own when the queue is full). `None` at shutdown.
async fn record(state: &AppState, batch: &[(UserId, i64)]) -> Option<Vec<FirstDelivery>> {
    let mut pause = RETRY_FIRST;
    loop {
        match state.store.inbox().mark_delivered(batch, now()).await {
            Ok(delivered) => return Some(delivered),
            // Refused rows would be refused again: the events are sent again on a later
            // connect, as before.
            Err(e) if crate::store::is_about_rows(&e) => {
                e.context("recording deliveries").log_if_internal();
                return Some(Vec::new());
            }
            Err(e) => e.context("recording deliveries").log_if_internal(),
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = state.delivery.closing.cancelled() => return None,
        }
        pause = (pause * 2).min(RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_without_room_wait_in_order_for_the_next_report() {
        let log = DeliveryLog::with_capacity(2);
        let mut queue = log.pending.lock().ok().and_then(|mut p| p.take());
        let user = UserId(uuid::Uuid::new_v4());
        let mut written = vec![1, 2, 3];
        log.report_without_waiting(user, &mut written);
        assert_eq!(written, [3]);

        let queue = queue.as_mut().expect("queue");
        assert_eq!(queue.try_recv().ok(), Some((user, 1)));
        written.push(4);
        log.report_without_waiting(user, &mut written);
        assert_eq!(written, [4]);
        assert_eq!(queue.try_recv().ok(), Some((user, 2)));
        assert_eq!(queue.try_recv().ok(), Some((user, 3)));
    }
}
