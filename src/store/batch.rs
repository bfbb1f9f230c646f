//! Group commit for messages: inserts that arrive while a commit is running wait for the next
//! one and share it, so a burst costs one transaction (one fsync) instead of one per message.
//! Alone, a message is committed at once: batching adds no delay when there is nothing to group.

use tokio::sync::{mpsc, oneshot};

use super::{NewMessage, Store};
use crate::{
    error::{Error, Result},
    model::Message,
};

/// Messages committed together at most.
const MAX_BATCH: usize = 1024;
/// Inserts waiting for a commit before callers wait to queue.
const QUEUE: usize = 4096;

type Inserted = Option<(Message, i64)>;

struct Job {
    message: NewMessage,
    reply: oneshot::Sender<Result<Inserted>>,
}

#[derive(Clone, Debug)]
pub(super) struct Batcher {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("message", &self.message.id)
            .finish()
    }
}

impl Batcher {
    /// Starts the committing task on `store` (a store without a batcher of its own).
    pub(super) fn spawn(store: Store) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, queue));
        Self { jobs }
    }

    /// Queues `message` for the next group commit; the answer comes once it is committed.
    pub(super) async fn enqueue(&self, message: NewMessage) -> Result<Committed> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { message, reply })
            .await
            .map_err(|_| stopped())?;
        Ok(Committed(answer))
    }
}

/// A message queued for a group commit (see `Batcher::enqueue`).
pub(super) struct Committed(oneshot::Receiver<Result<Inserted>>);

impl Committed {
    pub(super) async fn wait(self) -> Result<Inserted> {
        self.0.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Error {
    Error::Internal(anyhow::anyhow!("the message writer stopped"))
}

async fn run(store: Store, mut queue: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let (messages, replies): (Vec<_>, Vec<_>) =
            jobs.drain(..).map(|j| (j.message, j.reply)).unzip();
        match store.insert_messages(&messages).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                // The whole group failed (the database is unreachable, say): nothing was
                // committed, so no message is acknowledged.
                let reason = format!("{e:#}");
                for reply in replies {
                    let _ = reply.send(Err(Error::Internal(anyhow::anyhow!("{reason}"))));
                }
            }
        }
    }
}
