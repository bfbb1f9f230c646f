//! Group commit: messages, read receipts, the delivery marks of what sockets wrote and (on
//! SQLite) content uploads, that arrive while a commit is running wait for the next one and
//! share it, so a burst costs one transaction (one fsync) instead of one per message, receipt,
//! upload and delivery report. Alone, a
//! message is committed at once: batching adds no delay when there is nothing to group.

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use super::{
    Db, FirstDelivery, NewMessage, Store,
    group::{self, Group, Inserted, Read, ReadMark, Written},
    group_sqlite::{self, ContentUpload},
};
use crate::{
    error::{Error, Result},
    model::{ConversationId, MessageId, UserId},
};

/// Messages committed together at most.
const MAX_BATCH: usize = 4096;
/// Messages waiting for a commit before callers wait to queue.
const QUEUE: usize = 4096;
/// Delivery reports waiting for a commit (their one sender waits for each).
const DELIVERY_QUEUE: usize = 16;

/// Work for a writer: a message to store, one to mark read, or (SQLite) a content upload.
enum Job {
    Message {
        message: NewMessage,
        reply: oneshot::Sender<Result<Inserted>>,
    },
    Read {
        read: ReadMark,
        reply: oneshot::Sender<Result<Read>>,
    },
    Content {
        upload: ContentUpload,
        reply: oneshot::Sender<Result<MessageId>>,
    },
}

struct DeliveryJob {
    events: Vec<(UserId, i64)>,
    at: DateTime<Utc>,
    reply: oneshot::Sender<Result<Vec<FirstDelivery>>>,
}

/// One committing task per writer, each with its own share of the conversations, and a
/// queue of delivery reports that the first writer puts in every group, ahead of the queued
/// messages, so that recording deliveries keeps pace with the messages however long the
/// message queue is (SQLite, which has one writer, uses it).
#[derive(Clone, Debug)]
pub(super) struct Batcher {
    writers: Vec<mpsc::Sender<Job>>,
    deliveries: mpsc::Sender<DeliveryJob>,
}

impl Batcher {
    /// Starts `writers` committing tasks on `store` (a store without a batcher of its own).
    /// Writers commit in parallel without waiting for each other's locks: a conversation's
    /// messages all go to the same writer, which locks that conversation's row.
    pub(super) fn spawn(store: Store, writers: usize) -> Self {
        let (deliveries, delivery_queue) = mpsc::channel(DELIVERY_QUEUE);
        let mut delivery_queue = Some(delivery_queue);
        let writers = (0..writers.max(1))
            .map(|_| {
                let (messages, message_queue) = mpsc::channel(QUEUE);
                // The first writer takes the reports; the others get a closed queue.
                let reports = delivery_queue.take().unwrap_or_else(|| mpsc::channel(1).1);
                tokio::spawn(run(store.clone(), message_queue, reports));
                messages
            })
            .collect();
        Self {
            writers,
            deliveries,
        }
    }

    /// Queues `message` for the next group commit; the answer comes once it is committed.
    pub(super) async fn enqueue(&self, message: NewMessage) -> Result<Committed> {
        let (reply, answer) = oneshot::channel();
        let writer = self.writer(message.conversation_id);
        writer
            .send(Job::Message { message, reply })
            .await
            .map_err(|_| stopped())?;
        Ok(Committed(answer))
    }

    /// Marks a message read in the next group commit of its conversation's writer, and waits
    /// for it.
    pub(super) async fn read(&self, read: ReadMark) -> Result<Read> {
        let writer = self.writer(read.conversation);
        ask(writer, |reply| Job::Read { read, reply }).await
    }

    /// Stores a content upload in the next group commit (SQLite only: see `group_sqlite`) and
    /// waits for it.
    pub(super) async fn attach_content(&self, upload: ContentUpload) -> Result<MessageId> {
        ask(&self.writers[0], |reply| Job::Content { upload, reply }).await
    }

    /// The writer of `conversation`: always the same one, so that only it locks the row.
    fn writer(&self, conversation: ConversationId) -> &mpsc::Sender<Job> {
        // The random half of the id spreads conversations evenly over the writers.
        let (_, random) = conversation.0.as_u64_pair();
        &self.writers[(random % self.writers.len() as u64) as usize]
    }

    /// Records delivery marks in the next group commit and waits for it (see
    /// `Store::mark_delivered`).
    pub(super) async fn delivered(
        &self,
        events: Vec<(UserId, i64)>,
        at: DateTime<Utc>,
    ) -> Result<Vec<FirstDelivery>> {
        let (reply, answer) = oneshot::channel();
        self.deliveries
            .send(DeliveryJob { events, at, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// A message queued for a group commit (see `Batcher::enqueue`).
pub(super) struct Committed(oneshot::Receiver<Result<Inserted>>);

impl Committed {
    pub(super) async fn wait(self) -> Result<Inserted> {
        self.0.await.map_err(|_| stopped())?
    }
}

/// Queues the job `job` makes around its reply channel on `writer`, and waits for the answer.
async fn ask<T>(
    writer: &mpsc::Sender<Job>,
    job: impl FnOnce(oneshot::Sender<Result<T>>) -> Job,
) -> Result<T> {
    let (reply, answer) = oneshot::channel();
    writer.send(job(reply)).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

fn stopped() -> Error {
    Error::Internal(anyhow::anyhow!("the message writer stopped"))
}

impl Store {
    /// Inserts `messages`, marks `reads` read and records the delivery marks `events` in one
    /// transaction.
    pub(super) async fn write_group(
        &self,
        messages: &[NewMessage],
        reads: &[ReadMark],
        events: &[(UserId, i64)],
        at: DateTime<Utc>,
    ) -> Result<Written> {
        let group = Group {
            messages,
            reads,
            events,
            at,
        };
        let (written, _) = self.write_group_with_uploads(group, &[]).await?;
        Ok(written)
    }

    /// `write_group`, with content `uploads` in the same transaction on SQLite; returns each
    /// upload's answer, in order. (PostgreSQL stores an upload in a transaction of its own:
    /// `Store::attach_content` queues none here.)
    async fn write_group_with_uploads(
        &self,
        group: Group<'_>,
        uploads: &[ContentUpload],
    ) -> Result<(Written, Vec<Result<MessageId>>)> {
        let started = std::time::Instant::now();
        let written = match &self.db {
            Db::Sqlite(pools) => group_sqlite::write(&pools.write, group, uploads).await,
            Db::Postgres(pool) => {
                let written = if group.messages.is_empty() && group.reads.is_empty() {
                    // Delivery marks alone are one statement: atomic without BEGIN and
                    // COMMIT, two round trips fewer.
                    group::write(&mut *pool.acquire().await?, group).await?
                } else {
                    let mut tx = pool.begin().await?;
                    let written = group::write(&mut *tx, group).await?;
                    tx.commit().await?;
                    written
                };
                let ungrouped = || {
                    let why = "content uploads are not grouped on PostgreSQL";
                    Err(Error::Internal(anyhow::anyhow!(why)))
                };
                Ok((written, uploads.iter().map(|_| ungrouped()).collect()))
            }
        };
        let rows = [
            group.messages.len(),
            group.reads.len(),
            group.events.len(),
            uploads.len(),
        ];
        crate::metrics::group_commit(rows, started.elapsed());
        written
    }
}

async fn run(
    store: Store,
    mut messages: mpsc::Receiver<Job>,
    mut deliveries: mpsc::Receiver<DeliveryJob>,
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    loop {
        // Wait for either kind of work, then take whatever else is ready without waiting.
        let mut delivery = tokio::select! {
            biased;
            Some(job) = deliveries.recv() => Some(job),
            received = messages.recv_many(&mut jobs, MAX_BATCH) => {
                if received == 0 {
                    return; // the store is gone: nobody can queue anything any more
                }
                None
            }
        };
        if delivery.is_none() {
            delivery = deliveries.try_recv().ok();
        }
        while jobs.len() < MAX_BATCH {
            let Ok(job) = messages.try_recv() else { break };
            jobs.push(job);
        }
        let (mut new, mut stored) = (Vec::new(), Vec::new());
        let (mut reads, mut read) = (Vec::new(), Vec::new());
        let (mut uploads, mut attached) = (Vec::new(), Vec::new());
        for job in jobs.drain(..) {
            match job {
                Job::Message { message, reply } => {
                    new.push(message);
                    stored.push(reply);
                }
                Job::Read { read: mark, reply } => {
                    reads.push(mark);
                    read.push(reply);
                }
                Job::Content { upload, reply } => {
                    uploads.push(upload);
                    attached.push(reply);
                }
            }
        }
        let (events, at) = match &delivery {
            Some(job) => (&job.events[..], job.at),
            None => (&[][..], crate::model::now()),
        };
        let group = Group {
            messages: &new,
            reads: &reads,
            events,
            at,
        };
        match store.write_group_with_uploads(group, &uploads).await {
            Ok((written, answers)) => {
                for (reply, answer) in attached.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
                for (reply, result) in stored.into_iter().zip(written.inserted) {
                    let _ = reply.send(Ok(result));
                }
                for (reply, result) in read.into_iter().zip(written.read) {
                    let _ = reply.send(Ok(result));
                }
                if let Some(job) = delivery {
                    let _ = job.reply.send(Ok(written.delivered));
                }
            }
            Err(e) => {
                // The whole group failed (the database is unreachable, say): nothing was
                // committed, so no message is acknowledged and no receipt is sent.
                let reason = format!("{e:#}");
                let failed = || Error::Internal(anyhow::anyhow!("{reason}"));
                for reply in stored {
                    let _ = reply.send(Err(failed()));
                }
                for reply in read {
                    let _ = reply.send(Err(failed()));
                }
                for reply in attached {
                    let _ = reply.send(Err(failed()));
                }
                if let Some(job) = delivery {
                    let _ = job.reply.send(Err(failed()));
                }
            }
        }
    }
}
