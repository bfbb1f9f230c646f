//! Group commit: messages, read receipts, the delivery marks of what sockets wrote and (on
//! SQLite) content uploads, that arrive while a commit is running wait for the next one and
//! share it, so a burst costs one transaction (one fsync) instead of one per message, receipt,
//! upload and delivery report. Alone, a
//! message is committed at once: batching adds no delay when there is nothing to group. A
//! delivery report alone waits up to `DELIVERY_WAIT` for a message to share its commit.
//! A group the database refuses because of some of its rows is committed again in halves
//! until only the jobs at fault fail (`Pending::settle`): one job never fails its neighbours.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use super::{
    db::{Db, SqlitePools},
    faults,
    group::{FirstDelivery, Group, Inserted, NewMessage, Read, ReadMark, Written},
    postgres, sqlite,
    upload::ContentUpload,
};
use crate::{
    error::{Error, Result},
    model::{ConversationId, MessageId, UserId},
};

/// Messages committed together at most.
const MAX_BATCH: usize = 4096;
/// Content bytes a group commit carries at most (SQLite's uploads join the group): a burst of
/// large uploads is split over several groups instead of making one huge transaction that
/// holds the writer, and the messages behind it, for long. A single upload above it (with
/// `CONTENT_MAX_BYTES` set higher) still goes, alone.
const MAX_GROUP_UPLOAD_BYTES: usize = 8 * 1024 * 1024;
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
/// queue of delivery reports. On SQLite its one writer puts a report in every group, ahead of
/// the queued messages, so that recording deliveries keeps pace with the messages however long
/// the message queue is. On PostgreSQL a task of its own records them, each report one
/// statement (its own transaction), and both it and the read marks lock messages in `seq`
/// order. A report inside a group kept its messages locked while the group went on to lock
/// user rows, and the read marks of another group, locking the same messages in another order,
/// deadlocked with it (PostgreSQL fails one of the two after a second).
#[derive(Clone, Debug)]
pub(super) struct Batcher {
    writers: Vec<mpsc::Sender<Job>>,
    deliveries: mpsc::Sender<DeliveryJob>,
}

impl Batcher {
    /// Starts `writers` committing tasks on `db`.
    /// Writers commit in parallel without waiting for each other's locks: a conversation's
    /// messages all go to the same writer, which locks that conversation's row.
    /// On SQLite, a group commit after one of several jobs waits up to `gather_wait` after its
    /// start for more (`GATHER`).
    pub(super) fn spawn(db: Db, writers: usize, gather_wait: Duration) -> Self {
        let (deliveries, delivery_queue) = mpsc::channel(DELIVERY_QUEUE);
        let mut delivery_queue = Some(delivery_queue);
        if let Db::Postgres(_) = db
            && let Some(reports) = delivery_queue.take()
        {
            tokio::spawn(record_deliveries(db.clone(), reports));
        }
        let writers = (0..writers.max(1))
            .map(|_| {
                let (messages, message_queue) = mpsc::channel(QUEUE);
                // The first writer takes the reports (SQLite); the others get a closed queue.
                let reports = delivery_queue.take().unwrap_or_else(|| mpsc::channel(1).1);
                tokio::spawn(run(db.clone(), message_queue, reports, gather_wait));
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
        let writer = match read.conversation {
            Some(conversation) => self.writer(conversation),
            None => &self.writers[0], // SQLite: the only one
        };
        ask(writer, |reply| Job::Read { read, reply }).await
    }

    /// Stores a content upload in the next group commit (SQLite only: see `sqlite::group`) and
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
    /// `Inbox::mark_delivered`).
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

/// Inserts `messages`, marks `reads` read and records the delivery marks `events` in one
/// transaction on `db` (`Store::write_group`).
pub(super) async fn write_group(
    db: &Db,
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
    let (written, _) = write_group_with_uploads(db, group, &[]).await?;
    Ok(written)
}

/// `write_group`, with content `uploads` in the same transaction on SQLite; returns each
/// upload's answer, in order. (PostgreSQL stores an upload in a transaction of its own:
/// `Contents::attach_content` queues none here.)
async fn write_group_with_uploads(
    db: &Db,
    group: Group<'_>,
    uploads: &[ContentUpload],
) -> Result<(Written, Vec<Result<MessageId>>)> {
    let started = Instant::now();
    let written = match db {
        Db::Sqlite(pools) => sqlite::group::write(&pools.write, group, uploads).await,
        Db::Postgres(pool) => {
            let written = postgres::group::write(&mut *pool.acquire().await?, group).await?;
            let ungrouped = || {
                let why = "content uploads are not grouped on PostgreSQL";
                Err(Error::Internal(anyhow::anyhow!(why)))
            };
            Ok((written, uploads.iter().map(|_| ungrouped()).collect()))
        }
    };
    record(group, uploads, started);
    written
}

/// The metrics of a group commit that started at `started`.
fn record(group: Group<'_>, uploads: &[ContentUpload], started: Instant) {
    let rows = [
        group.messages.len(),
        group.reads.len(),
        group.events.len(),
        uploads.len(),
    ];
    crate::metrics::group_commit(rows, started.elapsed());
}

async fn run(
    db: Db,
    messages: mpsc::Receiver<Job>,
    deliveries: mpsc::Receiver<DeliveryJob>,
    gather_wait: Duration,
) {
    let mut queues = Queues {
        messages,
        deliveries,
        jobs: Vec::with_capacity(MAX_BATCH),
        held: None,
    };
    while let Some(pending) = queues.wait().await {
        match &db {
            Db::Sqlite(pools) => {
                write_back_to_back(pools, pending, &mut queues, gather_wait).await;
            }
            Db::Postgres(_) => {
                // The group, then the halves of a group refused for some of its rows, first
                // half first (see `Pending::settle`).
                let mut groups = vec![pending];
                while let Some(pending) = groups.pop() {
                    let result =
                        write_group_with_uploads(&db, pending.group(), &pending.uploads).await;
                    if let Some((first, second)) = pending.settle(result) {
                        groups.extend([second, first]);
                    }
                }
            }
        }
    }
}

/// PostgreSQL: records each delivery report as a statement of its own (see `Batcher`).
async fn record_deliveries(db: Db, mut reports: mpsc::Receiver<DeliveryJob>) {
    while let Some(report) = reports.recv().await {
        let pending = Pending {
            delivery: Some(report),
            ..Pending::default()
        };
        let result = write_group_with_uploads(&db, pending.group(), &[]).await;
        pending.answer(result);
    }
}

/// How long the SQLite group loop keeps the writer connection after a group, waiting for the
/// next one (the envelope writer holds it the same way between its batches). At 10,000 msg/s,
/// 10 ms raised p999 (21–34 ms against 14–20 without holding); 2 ms did not.
const HOLD_WRITER: Duration = Duration::from_millis(2);
/// How long the group loop keeps the writer connection at most while groups keep coming: other
/// writes through the pool (a registration, the envelope writer's batches) wait at most about
/// this long plus a group, and the group loop as long behind the envelope writer. Taking the
/// connection again costs two round trips to sqlx's thread and parsing the group's statements
/// anew: released every 2 ms at 5,000 msg/s, 10 ms gave CPU per message x0.86 (one alternated
/// set of three runs).
const HOLD_WRITER_MAX: Duration = Duration::from_millis(10);

/// SQLite: until when a writer locked at `locked` waits for more work before letting the
/// connection go back to the pool (`HOLD_WRITER`, `HOLD_WRITER_MAX`).
pub(super) fn hold_writer_until(locked: tokio::time::Instant) -> tokio::time::Instant {
    (tokio::time::Instant::now() + HOLD_WRITER).min(locked + HOLD_WRITER_MAX)
}

/// SQLite: commits `first`, then the groups that come next, on the same locked writer
/// connection (see `sqlite::group::Writer`), until none comes within `HOLD_WRITER` of the
/// previous one or `HOLD_WRITER_MAX` after the lock. A group after one of several jobs gathers
/// up to `GATHER` of them for at most `gather_wait` after that one started.
async fn write_back_to_back(
    pools: &SqlitePools,
    first: Pending,
    queues: &mut Queues,
    gather_wait: Duration,
) {
    let mut conn = match pools.write.acquire().await {
        Ok(conn) => conn,
        Err(e) => return first.answer(Err(e.into())),
    };
    let mut writer = match sqlite::group::Writer::lock(&mut conn).await {
        Ok(writer) => writer,
        Err(e) => return first.answer(Err(e)),
    };
    let locked = tokio::time::Instant::now();
    let mut pending = first;
    loop {
        let (started, jobs) = (tokio::time::Instant::now(), pending.queued_jobs());
        commit(&mut writer, pending);
        writer.finish_checkpoint(&pools.checkpoint_due);
        // The next group usually comes within the hold (at 5,000 msg/s, a fraction of a
        // millisecond): waiting for it keeps the lock and its prepared statements.
        let until = hold_writer_until(locked);
        // Gathering ends with the hold at the latest, so that the group it gathered is
        // committed on this lock (the inner future is polled first when both times are up).
        let gather =
            (jobs > 1 && !gather_wait.is_zero()).then(|| (started + gather_wait).min(until));
        match tokio::time::timeout_at(until, queues.wait_gathering(gather)).await {
            Ok(Some(next)) => pending = next,
            Ok(None) | Err(_) => return,
        }
    }
}

/// SQLite: commits `pending` on `writer`, then, if the database refused some of its rows, its
/// halves, first half first, on the same writer (see `Pending::settle`).
fn commit(writer: &mut sqlite::group::Writer<'_>, pending: Pending) {
    let mut groups = vec![pending];
    while let Some(pending) = groups.pop() {
        let (group, started) = (pending.group(), Instant::now());
        let result = writer.write(group, &pending.uploads);
        record(group, &pending.uploads, started);
        if let Some((first, second)) = pending.settle(result) {
            groups.extend([second, first]);
        }
    }
}

/// How long a delivery report with no message to share a group with waits for one before it is
/// committed alone. At moderate rates a message's delivery mark was otherwise a commit of its
/// own, an fsync, right after the message's: 1.7 commits per message at 1,000 msg/s. Nobody
/// waits on it but the sender's "delivered" tick.
const DELIVERY_WAIT: Duration = Duration::from_millis(2);

/// Jobs (messages, read marks, uploads) a SQLite group commit waits for, after a group of more
/// than one, until `GROUP_COMMIT_WAIT_MS` after that group started (rounded up to the runtime
/// timer's millisecond; 0 waits for nothing). What a group costs beyond its rows (the log's
/// fsync, the pages its messages share: about 140 µs of CPU a commit) is then paid once for more
/// of them: with the default 1 ms, at 5,000 msg/s, groups of 3.7 messages became 7–8, CPU per
/// message x0.85–0.87, bytes written x0.84–0.86 and fsyncs halved, for p50 +0.5 ms; at 10,000
/// msg/s, where groups are about this size already, CPU x0.96–0.98 and p99 within the noise
/// (x0.92–1.43 over four alternated sets on two VMs; grown, x0.88 on both). A lone sender's
/// messages (groups of one) never wait (docs/PERFORMANCE.md, "Issue 25", ninth and tenth rounds).
const GATHER: usize = 8;

/// The queues of one writer.
struct Queues {
    messages: mpsc::Receiver<Job>,
    deliveries: mpsc::Receiver<DeliveryJob>,
    /// Reused between groups.
    jobs: Vec<Job>,
    /// A delivery report taken from its queue, kept here while it waits for messages
    /// (`DELIVERY_WAIT`), so that a `wait` dropped meanwhile does not lose it.
    held: Option<DeliveryJob>,
}

impl Queues {
    /// Waits for either kind of work, then takes whatever else is ready; `None` once the store
    /// is gone (nobody can queue anything any more). Cancel-safe: what it took from a queue is
    /// kept in `self` until it returns it.
    async fn wait(&mut self) -> Option<Pending> {
        self.wait_gathering(None).await
    }

    /// `wait`; then, with `gather`, while fewer than `GATHER` jobs are ready, waits for more
    /// until then.
    async fn wait_gathering(&mut self, gather: Option<tokio::time::Instant>) -> Option<Pending> {
        if !self.jobs.is_empty() {
            // Left over by the previous group's upload bound.
            let delivery = self.held.take();
            return Some(self.take(delivery));
        }
        if self.held.is_none() {
            tokio::select! {
                biased;
                Some(job) = self.deliveries.recv() => self.held = Some(job),
                received = self.messages.recv_many(&mut self.jobs, MAX_BATCH) => {
                    if received == 0 {
                        return None;
                    }
                }
            }
        }
        if self.jobs.is_empty() {
            // A delivery report alone: its marks ride with the next message's group if one
            // comes soon. (`recv_many` is cancel-safe; 0 means the queue closed.)
            let _ = tokio::time::timeout(
                DELIVERY_WAIT,
                self.messages.recv_many(&mut self.jobs, MAX_BATCH),
            )
            .await;
        }
        if let Some(until) = gather {
            while self.jobs.len() < GATHER {
                let more = self.messages.recv_many(&mut self.jobs, MAX_BATCH);
                match tokio::time::timeout_at(until, more).await {
                    Ok(received) if received > 0 => {}
                    _ => break, // the time is up, or the queue closed
                }
            }
        }
        let delivery = self.held.take();
        Some(self.take(delivery))
    }

    /// `delivery` (or the next delivery report ready) and the jobs ready, up to `MAX_BATCH`
    /// and `MAX_GROUP_UPLOAD_BYTES` (the jobs past it stay first in line for the next group).
    fn take(&mut self, delivery: Option<DeliveryJob>) -> Pending {
        let mut pending = Pending {
            delivery: delivery.or_else(|| self.deliveries.try_recv().ok()),
            ..Pending::default()
        };
        while self.jobs.len() < MAX_BATCH {
            let Ok(job) = self.messages.try_recv() else {
                break;
            };
            self.jobs.push(job);
        }
        let mut upload_bytes = 0;
        let fit = self
            .jobs
            .iter()
            .position(|job| {
                let Job::Content { upload, .. } = job else {
                    return false;
                };
                upload_bytes += upload.size();
                upload_bytes > MAX_GROUP_UPLOAD_BYTES && upload_bytes > upload.size()
            })
            .unwrap_or(self.jobs.len());
        for job in self.jobs.drain(..fit) {
            match job {
                Job::Message { message, reply } => {
                    pending.messages.push(message);
                    pending.stored.push(reply);
                }
                Job::Read { read, reply } => {
                    pending.reads.push(read);
                    pending.read.push(reply);
                }
                Job::Content { upload, reply } => {
                    pending.uploads.push(upload);
                    pending.attached.push(reply);
                }
            }
        }
        pending
    }
}

/// The jobs of one group, and where their answers go.
#[derive(Default)]
struct Pending {
    messages: Vec<NewMessage>,
    stored: Vec<oneshot::Sender<Result<Inserted>>>,
    reads: Vec<ReadMark>,
    read: Vec<oneshot::Sender<Result<Read>>>,
    uploads: Vec<ContentUpload>,
    attached: Vec<oneshot::Sender<Result<MessageId>>>,
    delivery: Option<DeliveryJob>,
}

impl Pending {
    fn group(&self) -> Group<'_> {
        let (events, at) = match &self.delivery {
            Some(job) => (&job.events[..], job.at),
            None => (&[][..], crate::model::now()),
        };
        Group {
            messages: &self.messages,
            reads: &self.reads,
            events,
            at,
        }
    }

    /// Answers every job from `result`; or, when the database refused some of the group's rows
    /// (a message whose conversation was deleted, say), returns its two halves, to be committed
    /// apart, first half first. Halving again each half that fails, down to a lone job, leaves
    /// only the jobs at fault failing, each with its own error, and everybody else's answered
    /// as usual: nothing of a failed group was committed. Costs nothing while groups commit;
    /// a database that is down is not retried (see `faults`).
    fn settle(self, result: GroupResult) -> Option<(Pending, Pending)> {
        match result {
            Err(e) if self.jobs() > 1 && faults::is_about_rows(&e) => {
                let jobs = self.jobs();
                tracing::debug!(
                    jobs,
                    "group commit refused, committing its halves apart: {e:#}"
                );
                Some(self.split())
            }
            result => {
                self.answer(result);
                None
            }
        }
    }

    /// The queued jobs the group holds: its messages, read marks and uploads.
    fn queued_jobs(&self) -> usize {
        self.messages.len() + self.reads.len() + self.uploads.len()
    }

    /// How many answers the group owes: each message, read mark, upload, and the delivery report.
    fn jobs(&self) -> usize {
        self.queued_jobs() + usize::from(self.delivery.is_some())
    }

    /// The first half of the jobs, in the order a group writes them (messages, read marks, the
    /// delivery report, uploads), and the rest. Both halves hold a job when there are two.
    fn split(mut self) -> (Pending, Pending) {
        let mut left = self.jobs() / 2;
        let mut first = Pending::default();
        let n = left.min(self.messages.len());
        first.messages = self.messages.drain(..n).collect();
        first.stored = self.stored.drain(..n).collect();
        left -= n;
        let n = left.min(self.reads.len());
        first.reads = self.reads.drain(..n).collect();
        first.read = self.read.drain(..n).collect();
        left -= n;
        if left > 0 && self.delivery.is_some() {
            first.delivery = self.delivery.take();
            left -= 1;
        }
        let n = left.min(self.uploads.len());
        first.uploads = self.uploads.drain(..n).collect();
        first.attached = self.attached.drain(..n).collect();
        (first, self)
    }

    /// Sends each job its part of `result`.
    fn answer(self, result: GroupResult) {
        match result {
            Ok((written, answers)) => {
                for (reply, answer) in self.attached.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
                for (reply, result) in self.stored.into_iter().zip(written.inserted) {
                    let _ = reply.send(Ok(result));
                }
                for (reply, result) in self.read.into_iter().zip(written.read) {
                    let _ = reply.send(Ok(result));
                }
                if let Some(job) = self.delivery {
                    let _ = job.reply.send(Ok(written.delivered));
                }
            }
            Err(e) => {
                // Nothing was committed, so no message is acknowledged and no receipt is sent:
                // the database is unreachable, say, or this lone job's rows were refused.
                let failed = e.context("group commit failed").shared();
                for reply in self.stored {
                    let _ = reply.send(Err(failed()));
                }
                for reply in self.read {
                    let _ = reply.send(Err(failed()));
                }
                for reply in self.attached {
                    let _ = reply.send(Err(failed()));
                }
                if let Some(job) = self.delivery {
                    let _ = job.reply.send(Err(failed()));
                }
            }
        }
    }
}

/// What a group commit returns: what it wrote, and each upload's answer.
type GroupResult = Result<(Written, Vec<Result<MessageId>>)>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::now, store::NewContent};

    fn upload(bytes: usize) -> (MessageId, Job) {
        let requested = MessageId(uuid::Uuid::new_v4());
        let content = NewContent {
            bytes: vec![0; bytes],
            hash: None,
            created_at: now(),
            expires_at: now(),
        };
        let upload = ContentUpload {
            sender: UserId(uuid::Uuid::new_v4()),
            requested,
            content,
            quota: u64::MAX,
        };
        let (reply, _) = oneshot::channel();
        (requested, Job::Content { upload, reply })
    }

    fn queues() -> (mpsc::Sender<Job>, Queues) {
        let (queue, messages) = mpsc::channel(QUEUE);
        let (_reports, deliveries) = mpsc::channel(1);
        let queues = Queues {
            messages,
            deliveries,
            jobs: Vec::new(),
            held: None,
        };
        (queue, queues)
    }

    /// The first group taken, waiting for more until `wait` from now, while a small job is
    /// queued every millisecond (and the queues, for the next).
    async fn first_group_gathered_for(wait: Duration) -> (Pending, Queues) {
        let (queue, mut queues) = queues();
        tokio::spawn(async move {
            for _ in 0..3 * GATHER {
                assert!(queue.send(upload(1).1).await.is_ok());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let until = tokio::time::Instant::now() + wait;
        let group = queues.wait_gathering(Some(until)).await;
        (group.expect("queue open"), queues)
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_gathers_up_to_its_count_of_jobs_while_it_may_wait() {
        let (group, mut queues) = first_group_gathered_for(Duration::from_secs(60)).await;
        let jobs = group.queued_jobs();
        assert_eq!(jobs, GATHER, "gathered up to the count, not beyond");
        // Without a wait, what is ready goes at once: the next job alone.
        let group = queues.wait().await.expect("queue open");
        assert_eq!(group.queued_jobs(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_goes_with_what_it_has_once_its_wait_is_over() {
        let (group, mut queues) = first_group_gathered_for(Duration::from_millis(3)).await;
        let jobs = group.queued_jobs();
        assert!(
            jobs > 1 && jobs < GATHER,
            "{jobs} jobs in 3 ms, one a millisecond"
        );
        // A wait already over gathers nothing more.
        let over = tokio::time::Instant::now();
        let group = queues.wait_gathering(Some(over)).await.expect("queue open");
        assert_eq!(group.queued_jobs(), 1);
    }

    #[tokio::test]
    async fn a_burst_of_large_uploads_is_split_over_groups_of_bounded_bytes() {
        let (queue, mut queues) = queues();
        // Twenty 1 MiB uploads, then one above the bound on its own.
        let sizes = [vec![1 << 20; 20], vec![MAX_GROUP_UPLOAD_BYTES + 1]].concat();
        let mut queued = Vec::new();
        for size in &sizes {
            let (id, job) = upload(*size);
            queued.push(id);
            assert!(queue.send(job).await.is_ok());
        }
        let mut taken = Vec::new();
        let mut groups = 0;
        while taken.len() < queued.len() {
            // What a group left behind is taken at once, without waiting for more work.
            let pending = tokio::time::timeout(Duration::from_secs(5), queues.wait())
                .await
                .expect("the jobs left over are taken without waiting")
                .expect("queue open");
            let bytes: usize = pending.uploads.iter().map(ContentUpload::size).sum();
            assert!(
                bytes <= MAX_GROUP_UPLOAD_BYTES || pending.uploads.len() == 1,
                "a group of {} uploads carries {bytes} bytes",
                pending.uploads.len()
            );
            taken.extend(pending.uploads.iter().map(|u| u.requested));
            groups += 1;
        }
        assert_eq!(taken, queued, "every upload is taken once, in order");
        assert!(groups >= 4, "{groups} groups");
    }
}
