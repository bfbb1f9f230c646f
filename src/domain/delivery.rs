//! Delivery state: sockets report the inbox events they wrote; this task records them in
//! batches and tells each sender when their message first reached the recipient.

use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::{
    AppState,
    events::Event,
    model::{UserId, now},
};

/// Reports queued before a writer has to wait for the recorder.
const QUEUE: usize = 16 * 1024;
/// Reports recorded in one transaction at most.
const BATCH: usize = 4096;

/// Where socket writers report what they delivered.
pub struct DeliveryLog {
    reports: mpsc::Sender<(UserId, i64)>,
    /// Taken by the recording task when the server starts.
    pending: Mutex<Option<mpsc::Receiver<(UserId, i64)>>>,
}

impl Default for DeliveryLog {
    fn default() -> Self {
        let (reports, pending) = mpsc::channel(QUEUE);
        Self {
            reports,
            pending: Mutex::new(Some(pending)),
        }
    }
}

impl DeliveryLog {
    /// Reports that inbox events `seqs` of `user` were written to one of their sockets.
    pub async fn delivered(&self, user: UserId, seqs: impl IntoIterator<Item = i64>) {
        for seq in seqs {
            // Closed only at shutdown; the events then stay undelivered and are sent again.
            let _ = self.reports.send((user, seq)).await;
        }
    }
}

/// Records reports until shutdown.
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
            _ = state.shutdown.cancelled() => return,
            n = pending.recv_many(&mut batch, BATCH) => n,
        };
        if received == 0 {
            return;
        }
        match state.store.mark_delivered(&batch, now()).await {
            Ok(delivered) => {
                for message in delivered {
                    let receipt = Event::DeliveryReceipt {
                        message_id: message.id,
                        conversation_id: message.conversation_id,
                        recipient_id: message.recipient_id,
                        delivered_at: message.delivered_at,
                    };
                    super::deliver(&state, [message.sender_id], &receipt);
                }
            }
            // Unrecorded deliveries only mean the events are sent again on a later connect.
            Err(e) => e.log_if_internal(),
        }
        batch.clear();
    }
}
