//! Writing the per-device envelope queues (`envelopes.rs` reads them): stores and acks go
//! through one task (`EnvelopeWriter`) that commits whatever queued meanwhile in one
//! transaction (one fsync on SQLite); a batch the database refuses is written again job by
//! job, so one bad job fails alone. Each envelope is numbered in its device's queue in commit
//! order (`user_devices.queue_head`, bumped in the inserting transaction, whose row lock orders
//! a device's commits).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use super::{
    db::{Db, with_pool},
    faults::is_about_rows,
};
use crate::{
    error::{DeviceMismatch, Error, Result},
    model::{ConversationId, MessageId, UserId},
};

/// Jobs committed together at most.
const MAX_BATCH: usize = 512;
/// Jobs waiting for the writer before callers wait to queue.
const QUEUE: usize = 4096;

/// One device's copy of a message, as sent.
#[derive(Clone, Debug)]
pub struct NewEnvelope {
    pub device_id: i64,
    /// The Signal ciphertext type, stored and handed back as is.
    pub kind: i64,
    pub content: Vec<u8>,
}

/// A message for some devices of `recipient_id`, one envelope each.
#[derive(Clone, Debug)]
pub struct EnvelopeMessage {
    pub id: MessageId,
    pub sender_id: UserId,
    pub sender_device: i64,
    pub recipient_id: UserId,
    /// `None` for a message to oneself (a sync of what one sent, for one's other devices).
    pub conversation_id: Option<ConversationId>,
    pub message_type: String,
    pub created_at: DateTime<Utc>,
    pub envelopes: Vec<NewEnvelope>,
}

/// What storing an envelope message did.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// Stored: each device and the number its envelope got in that device's queue.
    New(Vec<(i64, i64)>),
    /// Its id was already stored for this recipient by this sender: a retry, stored once.
    Retry,
}

/// Which envelopes of its queue a device acknowledges.
#[derive(Clone, Copy, Debug)]
pub enum AckTarget {
    /// The envelope of this message.
    Message(MessageId),
    /// Every envelope numbered up to this one.
    Upto(i64),
}

/// An envelope deleted by its device's ack: whom to tell.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AckedEnvelope {
    pub message_id: MessageId,
    pub sender_id: UserId,
    pub conversation_id: Option<ConversationId>,
}

enum Job {
    Store {
        message: EnvelopeMessage,
        queue_max: i64,
        reply: oneshot::Sender<Result<Stored>>,
    },
    Ack {
        user: UserId,
        device: i64,
        target: AckTarget,
        reply: oneshot::Sender<Result<Vec<AckedEnvelope>>>,
    },
}

/// The queue of the one task that writes envelopes.
#[derive(Clone, Debug)]
pub(super) struct EnvelopeWriter(mpsc::Sender<Job>);

impl EnvelopeWriter {
    pub(super) fn spawn(db: Db) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(OnDb { db }, queue));
        Self(jobs)
    }

    /// Stores `message`'s envelopes, each numbered in its device's queue, which keeps its
    /// latest `queue_max` numbers. Waits for the commit.
    pub(super) async fn store(&self, message: EnvelopeMessage, queue_max: i64) -> Result<Stored> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Store {
            message,
            queue_max,
            reply,
        };
        self.0.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Deletes what `device` of `user` acknowledges; returns what was deleted.
    pub(super) async fn ack(
        &self,
        user: UserId,
        device: i64,
        target: AckTarget,
    ) -> Result<Vec<AckedEnvelope>> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Ack {
            user,
            device,
            target,
            reply,
        };
        self.0.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The engine's pools, as `with_pool!` reads them.
struct OnDb {
    db: Db,
}

async fn run(on: OnDb, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match on.write(&batch).await {
            Ok(answers) => {
                for (job, answer) in batch.drain(..).zip(answers) {
                    job.answer(answer);
                }
            }
            // Some job's rows were refused: each alone, so only the faulty one fails.
            Err(e) if batch.len() > 1 && (is_about_rows(&e) || gone_device(&e).is_some()) => {
                for job in batch.drain(..) {
                    let answer = on.write(std::slice::from_ref(&job)).await;
                    job.answer(
                        answer
                            .and_then(|mut a| a.remove(0))
                            .map_err(name_gone_device),
                    );
                }
            }
            Err(e) => {
                let copy = name_gone_device(e).shared();
                for job in batch.drain(..) {
                    job.answer(Err(copy()));
                }
            }
        }
    }
}

/// What one job got.
enum Answer {
    Stored(Stored),
    Acked(Vec<AckedEnvelope>),
}

impl Job {
    fn answer(self, answer: Result<Answer>) {
        match self {
            Self::Store { reply, .. } => {
                let _ = reply.send(answer.and_then(|a| match a {
                    Answer::Stored(s) => Ok(s),
                    Answer::Acked(_) => Err(mixed_up()),
                }));
            }
            Self::Ack { reply, .. } => {
                let _ = reply.send(answer.and_then(|a| match a {
                    Answer::Acked(a) => Ok(a),
                    Answer::Stored(_) => Err(mixed_up()),
                }));
            }
        }
    }
}

fn mixed_up() -> Error {
    Error::Internal(anyhow::anyhow!("envelope writer answered the wrong job"))
}

fn stopped() -> Error {
    Error::Internal(anyhow::anyhow!("the envelope writer stopped"))
}

/// The device row a store job could not number: the device is gone (unlinked meanwhile).
#[derive(Debug, thiserror::Error)]
#[error("device {0} of the recipient is gone")]
struct DeviceGone(i64);

fn gone_device(e: &Error) -> Option<i64> {
    let Error::Internal(e) = e else {
        return None;
    };
    e.chain()
        .find_map(|c| c.downcast_ref::<DeviceGone>())
        .map(|g| g.0)
}

/// A job alone that named a device unlinked meanwhile: the sender's device list is stale.
fn name_gone_device(e: Error) -> Error {
    match gone_device(&e) {
        Some(device) => Error::Devices(DeviceMismatch {
            extra_devices: vec![device],
            ..DeviceMismatch::default()
        }),
        None => e,
    }
}

impl OnDb {
    /// Writes `jobs` in one transaction; answers in their order (a job whose id another sender
    /// holds is refused alone).
    async fn write(&self, jobs: &[Job]) -> Result<Vec<Result<Answer>>> {
        let answers = with_pool!(self, write, |pool| {
            let mut tx = pool.begin().await?;
            // Retries first: a message id this recipient already holds (or that an earlier
            // job of this batch stores) is stored once.
            let mut retry = vec![false; jobs.len()];
            let mut taken = vec![false; jobs.len()];
            let mut seen = std::collections::HashSet::new();
            for (i, job) in jobs.iter().enumerate() {
                let Job::Store { message: m, .. } = job else {
                    continue;
                };
                let held: Option<UserId> = sqlx::query_scalar(
                    "SELECT sender_id FROM envelopes WHERE user_id = $1 AND message_id = $2 LIMIT 1",
                )
                .bind(m.recipient_id)
                .bind(m.id)
                .fetch_optional(&mut *tx)
                .await?;
                match held {
                    Some(sender) if sender != m.sender_id => (retry[i], taken[i]) = (true, true),
                    Some(_) => retry[i] = true,
                    None => retry[i] = !seen.insert((m.recipient_id, m.id)),
                }
            }
            // Numbers: each device's row is bumped once for the batch, in (user, device)
            // order, so that concurrent batches (other nodes) never lock two rows in opposite
            // orders.
            let mut wanted: BTreeMap<(UserId, i64), i64> = BTreeMap::new();
            for (job, _) in jobs.iter().zip(&retry).filter(|(_, r)| !**r) {
                if let Job::Store { message: m, .. } = job {
                    for e in &m.envelopes {
                        *wanted.entry((m.recipient_id, e.device_id)).or_default() += 1;
                    }
                }
            }
            let mut next: BTreeMap<(UserId, i64), i64> = BTreeMap::new();
            let mut heads: BTreeMap<(UserId, i64), i64> = BTreeMap::new();
            for (&(user, device), &count) in &wanted {
                let head: Option<i64> = sqlx::query_scalar(
                    "UPDATE user_devices SET queue_head = queue_head + $3
                     WHERE user_id = $1 AND device_id = $2 RETURNING queue_head",
                )
                .bind(user)
                .bind(device)
                .bind(count)
                .fetch_optional(&mut *tx)
                .await?;
                let head = head.ok_or_else(|| Error::Internal(DeviceGone(device).into()))?;
                next.insert((user, device), head - count + 1);
                heads.insert((user, device), head);
            }
            let mut answers = Vec::with_capacity(jobs.len());
            for ((job, retry), taken) in jobs.iter().zip(retry).zip(taken) {
                match job {
                    Job::Store { .. } if taken => answers.push(Err(Error::Conflict {
                        code: "id_taken",
                        message: "this message id is taken",
                    })),
                    Job::Store { .. } if retry => answers.push(Ok(Answer::Stored(Stored::Retry))),
                    Job::Store { message: m, .. } => {
                        let mut numbered = Vec::with_capacity(m.envelopes.len());
                        for e in &m.envelopes {
                            let seq = next.get_mut(&(m.recipient_id, e.device_id));
                            let seq = seq.map(|n| {
                                *n += 1;
                                *n - 1
                            });
                            let seq =
                                seq.ok_or_else(|| Error::Internal(DeviceGone(e.device_id).into()))?;
                            sqlx::query(
                                "INSERT INTO envelopes (user_id, device_id, seq, message_id,
                                     sender_id, sender_device, conversation_id, message_type,
                                     kind, content, created_at)
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                            )
                            .bind(m.recipient_id)
                            .bind(e.device_id)
                            .bind(seq)
                            .bind(m.id)
                            .bind(m.sender_id)
                            .bind(m.sender_device)
                            .bind(m.conversation_id)
                            .bind(&m.message_type)
                            .bind(e.kind)
                            .bind(&e.content)
                            .bind(m.created_at)
                            .execute(&mut *tx)
                            .await?;
                            numbered.push((e.device_id, seq));
                        }
                        answers.push(Ok(Answer::Stored(Stored::New(numbered))));
                    }
                    Job::Ack {
                        user,
                        device,
                        target,
                        ..
                    } => {
                        let acked = match *target {
                            AckTarget::Message(id) => {
                                sqlx::query_as::<_, AckedEnvelope>(
                                    "DELETE FROM envelopes
                                     WHERE user_id = $1 AND device_id = $2 AND message_id = $3
                                     RETURNING message_id, sender_id, conversation_id",
                                )
                                .bind(user)
                                .bind(device)
                                .bind(id)
                                .fetch_all(&mut *tx)
                                .await?
                            }
                            AckTarget::Upto(cursor) => {
                                sqlx::query_as::<_, AckedEnvelope>(
                                    "DELETE FROM envelopes
                                     WHERE user_id = $1 AND device_id = $2 AND seq <= $3
                                     RETURNING message_id, sender_id, conversation_id",
                                )
                                .bind(user)
                                .bind(device)
                                .bind(cursor)
                                .fetch_all(&mut *tx)
                                .await?
                            }
                        };
                        answers.push(Ok(Answer::Acked(acked)));
                    }
                }
            }
            // A queue holds its latest `queue_max` numbers: older envelopes are dropped, and
            // counted for the device to be told.
            let queue_max = jobs.iter().find_map(|j| match j {
                Job::Store { queue_max, .. } => Some(*queue_max),
                Job::Ack { .. } => None,
            });
            if let Some(max) = queue_max {
                for (&(user, device), &head) in heads.iter().filter(|(_, h)| **h > max) {
                    let dropped = sqlx::query(
                        "DELETE FROM envelopes WHERE user_id = $1 AND device_id = $2 AND seq <= $3",
                    )
                    .bind(user)
                    .bind(device)
                    .bind(head - max)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if dropped > 0 {
                        sqlx::query(
                            "UPDATE user_devices SET dropped = dropped + $3
                             WHERE user_id = $1 AND device_id = $2",
                        )
                        .bind(user)
                        .bind(device)
                        .bind(dropped as i64)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
            tx.commit().await?;
            Ok::<_, Error>(answers)
        })?;
        Ok(answers)
    }
}
