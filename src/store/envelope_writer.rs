//! Writing the per-device envelope queues (`envelopes.rs` reads them): stores and acks go
//! through a writing task (`EnvelopeWriter`; the recipient's) that commits whatever queued
//! meanwhile in one transaction (one fsync on SQLite); a batch the database refuses is written
//! again job by job, so one bad job fails alone. Each envelope is numbered in its device's queue in commit
//! order (`user_devices.queue_head`, bumped in the inserting transaction, whose row lock orders
//! a device's commits).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, QueryBuilder};
use tokio::sync::{mpsc, oneshot};

use super::{
    batch::hold_writer_until,
    db::{Db, SqlitePools},
    faults::is_about_rows,
    sqlite,
};
use crate::{
    error::{DeviceMismatch, Error, Result},
    model::{ConversationId, MessageId, UserId},
};

/// Appends `(a = $1 AND b = $2) OR (...)`, one group of column values per row: a batch's
/// keys in one statement, in SQL both engines read (PostgreSQL types the values from the
/// columns they are compared with).
macro_rules! any_of {
    ($sql:expr, $rows:expr, |$row:pat_param| $first:literal = $value:expr $(, $column:literal = $more:expr)*) => {{
        let mut terms = $sql.separated(" OR ");
        for $row in $rows {
            terms.push(concat!("(", $first, " = "));
            terms.push_bind_unseparated($value);
            $(
                terms.push_unseparated(concat!(" AND ", $column, " = "));
                terms.push_bind_unseparated($more);
            )*
            terms.push_unseparated(")");
        }
    }};
}

/// Jobs committed together at most.
const MAX_BATCH: usize = 512;
/// Jobs waiting for the writer before callers wait to queue.
const QUEUE: usize = 4096;
/// Envelope rows one INSERT carries (11 parameters each: SQLite takes 32,766 at most).
const ROWS_PER_INSERT: usize = 1000;
/// (recipient, message) pairs one lookup or delete names (2 or 3 parameters each).
const PAIRS_PER_STATEMENT: usize = 1000;

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

pub(super) enum Job {
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

/// A message's envelopes queued for a batch: `stored` waits for its commit.
pub struct PendingEnvelopes(oneshot::Receiver<Result<Stored>>);

impl PendingEnvelopes {
    pub async fn stored(self) -> Result<Stored> {
        self.0.await.map_err(|_| stopped())?
    }
}

/// A device's ack queued for a batch: `deleted` waits for its commit.
pub struct PendingAck(oneshot::Receiver<Result<Vec<AckedEnvelope>>>);

impl PendingAck {
    pub async fn deleted(self) -> Result<Vec<AckedEnvelope>> {
        self.0.await.map_err(|_| stopped())?
    }
}

/// The queues of the tasks that write envelopes: one on SQLite (one writer), as many as the
/// group commit's writers on PostgreSQL, where a batch's round trips would otherwise bound the
/// rate. A user's stores and acks always go to the same task.
#[derive(Clone, Debug)]
pub(super) struct EnvelopeWriter(Vec<mpsc::Sender<Job>>);

impl EnvelopeWriter {
    pub(super) fn spawn(db: Db, writers: usize) -> Self {
        let queues = (0..writers.max(1))
            .map(|_| {
                let (jobs, queue) = mpsc::channel(QUEUE);
                tokio::spawn(run(db.clone(), queue));
                jobs
            })
            .collect();
        Self(queues)
    }

    /// The writer of `user`'s queues.
    fn writer(&self, user: UserId) -> &mpsc::Sender<Job> {
        // The random half of the id spreads users evenly over the writers.
        let (_, random) = user.0.as_u64_pair();
        &self.0[(random % self.0.len() as u64) as usize]
    }

    /// Queues `message`'s envelopes for the next batch, each to be numbered in its device's
    /// queue, which keeps its latest `queue_max` numbers; the answer comes once committed.
    pub(super) async fn queue(
        &self,
        message: EnvelopeMessage,
        queue_max: i64,
    ) -> Result<PendingEnvelopes> {
        let (reply, answer) = oneshot::channel();
        let writer = self.writer(message.recipient_id);
        let job = Job::Store {
            message,
            queue_max,
            reply,
        };
        writer.send(job).await.map_err(|_| stopped())?;
        Ok(PendingEnvelopes(answer))
    }

    /// Queues the deletion of what `device` of `user` acknowledges for the next batch; the
    /// answer (what was deleted) comes once committed.
    pub(super) async fn queue_ack(
        &self,
        user: UserId,
        device: i64,
        target: AckTarget,
    ) -> Result<PendingAck> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Ack {
            user,
            device,
            target,
            reply,
        };
        self.writer(user).send(job).await.map_err(|_| stopped())?;
        Ok(PendingAck(answer))
    }
}

async fn run(db: Db, mut queue: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match &db {
            Db::Sqlite(pools) => write_back_to_back(pools, &mut batch, &mut queue).await,
            Db::Postgres(pool) => settle(&mut batch, &mut On::Postgres(pool)).await,
        }
    }
}

/// SQLite: writes `batch`, then the batches that come next, on the same locked writer
/// connection, as long as `batch::hold_writer_until` allows (as the group commit does, and for the same reasons: each lock costs round
/// trips to sqlx's thread and parsing the statements anew).
async fn write_back_to_back(
    pools: &SqlitePools,
    batch: &mut Vec<Job>,
    queue: &mut mpsc::Receiver<Job>,
) {
    let mut conn = match pools.write.acquire().await {
        Ok(conn) => conn,
        Err(e) => return fail(batch, e.into()),
    };
    let mut writer = match sqlite::group::Writer::lock(&mut conn).await {
        Ok(writer) => writer,
        Err(e) => return fail(batch, e),
    };
    let locked = tokio::time::Instant::now();
    loop {
        settle(batch, &mut On::Sqlite(&mut writer)).await;
        writer.finish_checkpoint(&pools.checkpoint_due);
        match tokio::time::timeout_at(hold_writer_until(locked), queue.recv_many(batch, MAX_BATCH))
            .await
        {
            Ok(received) if received > 0 => {}
            Ok(_) | Err(_) => return,
        }
    }
}

/// Writes `batch` through `on` (one transaction) and answers each job, emptying `batch`. When
/// the database refused some job's rows, or a device named is gone, each job is written alone,
/// so that only the faulty one fails.
async fn settle(batch: &mut Vec<Job>, on: &mut On<'_, '_>) {
    match on.write(batch).await {
        Ok(answers) => {
            for (job, answer) in batch.drain(..).zip(answers) {
                job.answer(answer.unwrap_or_else(|| Err(mixed_up())));
            }
        }
        Err(e) if batch.len() > 1 && (is_about_rows(&e) || gone_device(&e).is_some()) => {
            for job in batch.drain(..) {
                let answer = on
                    .write(std::slice::from_ref(&job))
                    .await
                    .and_then(|mut a| a.pop().flatten().unwrap_or_else(|| Err(mixed_up())));
                job.answer(answer.map_err(name_gone_device));
            }
        }
        Err(e) => fail(batch, e),
    }
}

/// Where a batch is written: SQLite's locked writer, or a PostgreSQL pool.
enum On<'a, 'c> {
    Sqlite(&'a mut sqlite::group::Writer<'c>),
    Postgres(&'a PgPool),
}

impl On<'_, '_> {
    /// Writes `jobs` in one transaction; each job's answer, in order (`None`: none given).
    async fn write(&mut self, jobs: &[Job]) -> Result<Vec<Option<Result<Answer>>>> {
        match self {
            Self::Sqlite(writer) => sqlite::envelopes::write(writer, jobs),
            Self::Postgres(pool) => write_postgres(pool, jobs).await,
        }
    }
}

/// Answers every job of `batch` with `e`, emptying it.
fn fail(batch: &mut Vec<Job>, e: Error) {
    let copy = name_gone_device(e).shared();
    for job in batch.drain(..) {
        job.answer(Err(copy()));
    }
}

/// What one job got.
pub(super) enum Answer {
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
pub(super) struct DeviceGone(pub(super) i64);

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

/// The store jobs of a batch: (index in the batch, message, its queue bound).
pub(super) fn stores(jobs: &[Job]) -> Vec<(usize, &EnvelopeMessage, i64)> {
    (jobs.iter().enumerate())
        .filter_map(|(i, job)| match job {
            Job::Store {
                message, queue_max, ..
            } => Some((i, message, *queue_max)),
            Job::Ack { .. } => None,
        })
        .collect()
}

/// PostgreSQL: `jobs` in one transaction, a few statements for the whole batch (each a round
/// trip); each job's answer, in order. (SQLite runs the same steps a row at a time on its
/// locked writer: `sqlite::envelopes`.)
async fn write_postgres(pool: &PgPool, jobs: &[Job]) -> Result<Vec<Option<Result<Answer>>>> {
    let stores = stores(jobs);
    let mut tx = pool.begin().await?;
    let mut answers: Vec<Option<Result<Answer>>> = jobs.iter().map(|_| None).collect();

    // Retries: a message id this recipient already holds is stored once; another
    // sender's is refused.
    let mut held: HashMap<(UserId, MessageId), UserId> = HashMap::new();
    for chunk in stores.chunks(PAIRS_PER_STATEMENT) {
        let mut select = QueryBuilder::new(
            "SELECT DISTINCT user_id, message_id, sender_id FROM envelopes WHERE ",
        );
        any_of!(
            select,
            chunk,
            |(_, m, _)| "user_id" = m.recipient_id,
            "message_id" = m.id
        );
        let rows: Vec<(UserId, MessageId, UserId)> =
            select.build_query_as().fetch_all(&mut *tx).await?;
        held.extend(rows.into_iter().map(|(u, m, s)| ((u, m), s)));
    }
    let mut fresh = Vec::with_capacity(stores.len());
    for &(i, m, max) in &stores {
        match held.insert((m.recipient_id, m.id), m.sender_id) {
            Some(sender) if sender != m.sender_id => {
                held.insert((m.recipient_id, m.id), sender);
                answers[i] = Some(Err(Error::Conflict {
                    code: "id_taken",
                    message: "this message id is taken",
                }));
            }
            Some(_) => answers[i] = Some(Ok(Answer::Stored(Stored::Retry))),
            None => fresh.push((i, m, max)),
        }
    }

    // Numbers: each device's row is bumped once for the batch, all in one statement,
    // its rows locked in (user, device) order first, so that concurrent batches (other
    // nodes) never lock two rows in opposite orders.
    let mut wanted: BTreeMap<(UserId, i64), (i64, i64)> = BTreeMap::new();
    for &(_, m, max) in &fresh {
        for e in &m.envelopes {
            let entry = wanted
                .entry((m.recipient_id, e.device_id))
                .or_insert((0, max));
            entry.0 += 1;
        }
    }
    // Per device: the next number to give, and the head and queue bound after the batch.
    let mut next: HashMap<(UserId, i64), i64> = HashMap::with_capacity(wanted.len());
    let mut heads = Vec::with_capacity(wanted.len());
    let wanted: Vec<_> = wanted.into_iter().collect();
    for chunk in wanted.chunks(PAIRS_PER_STATEMENT / 4) {
        let pairs = |sql: &mut QueryBuilder<_>| {
            any_of!(
                sql,
                chunk,
                |((user, device), _)| "user_id" = *user,
                "device_id" = *device
            );
        };
        let mut update = QueryBuilder::new("");
        update.push("WITH locked AS (SELECT user_id FROM user_devices WHERE ");
        pairs(&mut update);
        update.push(" ORDER BY user_id, device_id FOR UPDATE) ");
        update.push("UPDATE user_devices SET queue_head = queue_head + CASE");
        for ((user, device), (count, _)) in chunk {
            update.push(" WHEN user_id = ");
            update.push_bind(*user);
            update.push(" AND device_id = ");
            update.push_bind(*device);
            update.push(" THEN CAST(");
            update.push_bind(*count);
            update.push(" AS BIGINT)");
        }
        update.push(" END WHERE (");
        pairs(&mut update);
        update.push(")");
        // Read first, so the locks above are taken before this scan's.
        update.push(" AND (SELECT COUNT(*) FROM locked) >= 0");
        update.push(" RETURNING user_id, device_id, queue_head");
        let bumped: Vec<(UserId, i64, i64)> = update.build_query_as().fetch_all(&mut *tx).await?;
        let bumped: HashMap<(UserId, i64), i64> = bumped
            .into_iter()
            .map(|(u, d, head)| ((u, d), head))
            .collect();
        for &((user, device), (count, max)) in chunk {
            let Some(&head) = bumped.get(&(user, device)) else {
                return Err(Error::Internal(DeviceGone(device).into()));
            };
            next.insert((user, device), head - count + 1);
            heads.push((user, device, head, max));
        }
    }
    let mut rows = Vec::new();
    for &(i, m, _) in &fresh {
        let mut numbered = Vec::with_capacity(m.envelopes.len());
        for e in &m.envelopes {
            let Some(seq) = next.get_mut(&(m.recipient_id, e.device_id)) else {
                return Err(Error::Internal(DeviceGone(e.device_id).into()));
            };
            rows.push((m, e, *seq));
            numbered.push((e.device_id, *seq));
            *seq += 1;
        }
        answers[i] = Some(Ok(Answer::Stored(Stored::New(numbered))));
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut insert = QueryBuilder::new(
            "INSERT INTO envelopes (user_id, device_id, seq, message_id, sender_id,
                 sender_device, conversation_id, message_type, kind, content, created_at) ",
        );
        insert.push_values(chunk, |mut row, (m, e, seq)| {
            row.push_bind(m.recipient_id)
                .push_bind(e.device_id)
                .push_bind(*seq)
                .push_bind(m.id)
                .push_bind(m.sender_id)
                .push_bind(m.sender_device)
                .push_bind(m.conversation_id)
                .push_bind(&m.message_type)
                .push_bind(e.kind)
                .push_bind(&e.content)
                .push_bind(m.created_at);
        });
        insert.build().execute(&mut *tx).await?;
    }

    // Acks by id, in one statement (per chunk); acks up to a number, one each.
    let by_id: Vec<(usize, UserId, i64, MessageId)> = (jobs.iter().enumerate())
        .filter_map(|(i, job)| match job {
            Job::Ack {
                user,
                device,
                target: AckTarget::Message(id),
                ..
            } => Some((i, *user, *device, *id)),
            _ => None,
        })
        .collect();
    let mut deleted: HashMap<(UserId, i64, MessageId), AckedEnvelope> = HashMap::new();
    for chunk in by_id.chunks(PAIRS_PER_STATEMENT) {
        let mut delete = QueryBuilder::new("DELETE FROM envelopes WHERE ");
        any_of!(
            delete,
            chunk,
            |(_, user, device, id)| "user_id" = *user,
            "message_id" = *id,
            "device_id" = *device
        );
        delete.push(" RETURNING user_id, device_id, message_id, sender_id, conversation_id");
        let rows: Vec<DeletedRow> = delete.build_query_as().fetch_all(&mut *tx).await?;
        deleted.extend(rows.into_iter().map(|r| {
            let acked = AckedEnvelope {
                message_id: r.message_id,
                sender_id: r.sender_id,
                conversation_id: r.conversation_id,
            };
            ((r.user_id, r.device_id, r.message_id), acked)
        }));
    }
    for (i, user, device, id) in by_id {
        let acked = deleted.remove(&(user, device, id)).into_iter().collect();
        answers[i] = Some(Ok(Answer::Acked(acked)));
    }
    for (i, job) in jobs.iter().enumerate() {
        if let Job::Ack {
            user,
            device,
            target: AckTarget::Upto(cursor),
            ..
        } = job
        {
            let acked = sqlx::query_as::<_, AckedEnvelope>(
                "DELETE FROM envelopes
                 WHERE user_id = $1 AND device_id = $2 AND seq <= $3
                 RETURNING message_id, sender_id, conversation_id",
            )
            .bind(user)
            .bind(device)
            .bind(cursor)
            .fetch_all(&mut *tx)
            .await?;
            answers[i] = Some(Ok(Answer::Acked(acked)));
        }
    }

    // A queue holds its latest `queue_max` numbers: older envelopes are dropped, and
    // counted for the device to be told.
    for &(user, device, head, max) in heads.iter().filter(|(.., head, max)| head > max) {
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
    tx.commit().await?;
    Ok(answers)
}

/// An envelope an ack deleted, with the device it was for.
#[derive(sqlx::FromRow)]
struct DeletedRow {
    user_id: UserId,
    device_id: i64,
    message_id: MessageId,
    sender_id: UserId,
    conversation_id: Option<ConversationId>,
}
