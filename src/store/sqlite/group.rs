//! SQLite's group commit: the steps of a group (`Statements::write`), each a cached single-row
//! statement run on the calling thread, and content uploads in the same transaction.
//!
//! Through sqlx, every SQLite statement is a round trip to the connection's own thread: two
//! thread wake-ups per statement, four for BEGIN and COMMIT (which wait for an acknowledgement).
//! On a busy 2-core machine a wake-up costs about 150 µs, and a group's dozen of them were
//! about 40 % of its time at 10,000 msg/s. A group instead locks the handle out of that thread
//! (sqlx's `lock_handle`, made for direct calls) and runs its transaction here through
//! rusqlite, a cached single-row statement per kind of row: no round trip, and no statement
//! text that changes with the group's size. Content uploads join the group here too (SQLite
//! only: PostgreSQL's writers run in parallel, and an upload keeps its own transaction there).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params, types::Type};
use sqlx::{SqliteConnection, SqlitePool, sqlite::LockedSqliteHandle};
use uuid::Uuid;

use crate::store::columns::message_cols;
use crate::store::faults::RowGone;
use crate::store::group::{FirstDelivery, Group, NewMessage, ReadMark, Written};
use crate::store::upload::{
    ADD_ALIAS, ALIAS_WINDOW_SECONDS, CONTENT_USED, ContentUpload, KNOWN_MESSAGE, Refused,
    STORE_CONTENT, within_quota,
};
use crate::{
    error::{Error, Result},
    model::{ConversationId, Message, MessageId, UserId},
};

/// `Statements::write` on the pool's writer, then `uploads`, in one transaction (see
/// `Writer::write`).
pub(crate) async fn write(
    pool: &SqlitePool,
    group: Group<'_>,
    uploads: &[ContentUpload],
) -> Result<(Written, Vec<Result<MessageId>>)> {
    let mut conn = pool.acquire().await?;
    Writer::lock(&mut conn).await?.write(group, uploads)
}

/// The writer connection, locked out of sqlx's thread for direct calls (see the module's doc).
/// Taking it from the pool and locking it costs two round trips to other tasks and threads
/// (150–300 µs on a busy 2-core machine): the group loop keeps it across back-to-back groups,
/// and with it rusqlite's cache of prepared statements: parsing a group's eight statements
/// anew for each group was a tenth of the server's CPU at 5,000 msg/s.
pub(crate) struct Writer<'c> {
    // Declared first, so dropped first: its cached statements are finalized while the handle
    // is still ours.
    db: Connection,
    _handle: LockedSqliteHandle<'c>,
}

impl<'c> Writer<'c> {
    pub(crate) async fn lock(conn: &'c mut SqliteConnection) -> Result<Self> {
        let mut handle = conn.lock_handle().await?;
        let raw = handle.as_raw_handle();
        // SAFETY: sqlx's worker thread makes no call on the handle while `handle` lives; `db`
        // (and its cached statements) is dropped before it, and leaves the handle open.
        #[allow(unsafe_code)]
        let db = unsafe { Connection::from_handle(raw.as_ptr()) }?;
        Ok(Self {
            db,
            _handle: handle,
        })
    }

    /// `Statements::write`, then `uploads`, in one transaction. Each upload's answer: the message
    /// its content went to, or why it was refused.
    pub(crate) fn write(
        &mut self,
        group: Group<'_>,
        uploads: &[ContentUpload],
    ) -> Result<(Written, Vec<Result<MessageId>>)> {
        let rows = group.messages.len() + group.reads.len() + group.events.len() + uploads.len();
        let db = &mut self.db;
        blocking(rows, || {
            in_transaction(db, |db| {
                let written = Statements(db).write(group)?;
                let attached = uploads
                    .iter()
                    .map(|upload| Ok(attach(db, upload)?.map_err(Error::from)))
                    .collect::<Result<_>>()?;
                Ok((written, attached))
            })
        })
    }
}

impl Writer<'_> {
    /// Runs `body`, which writes `rows` rows, in one transaction on this writer (the envelope
    /// writer's batches: `sqlite::envelopes`).
    pub(crate) fn transaction<T>(
        &mut self,
        rows: usize,
        body: impl FnOnce(&mut Connection) -> Result<T>,
    ) -> Result<T> {
        let db = &mut self.db;
        blocking(rows, || in_transaction(db, body))
    }

    /// When a checkpoint beside the writer left the rest of the log to it (`due`, set by
    /// `Store::checkpoint_wal`), copies into the database what the log holds beyond it. Nothing
    /// is written meanwhile, so it copies the whole log, SQLite syncs the database, and the next
    /// transaction starts the log over; without it the log started over only at the backstop,
    /// where the writer copied and synced thousands of frames at once. Both loops that hold the
    /// writer call it between two of their transactions (the group commit's and the envelope
    /// writer's: a server with only envelope traffic must not grow its log to the backstop).
    pub(crate) fn finish_checkpoint(&mut self, due: &AtomicBool) {
        if !due.swap(false, Ordering::Relaxed) {
            return;
        }
        let started = std::time::Instant::now();
        if let Err(e) = self
            .db
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            Error::from(e)
                .context("finishing a checkpoint of the SQLite log")
                .log_if_internal();
        }
        crate::metrics::writer_checkpoint(started.elapsed());
    }
}

/// Runs `body` between BEGIN IMMEDIATE and COMMIT; rolls back when anything fails.
fn in_transaction<T>(
    db: &mut Connection,
    body: impl FnOnce(&mut Connection) -> Result<T>,
) -> Result<T> {
    // Cached like the group's statements: parsed once per lock, not once per group.
    db.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let result = body(db).and_then(|value| {
        db.prepare_cached("COMMIT")?.execute([])?;
        Ok(value)
    });
    if result.is_err() && !db.is_autocommit() {
        // The handle goes back to sqlx's pool: it must not stay inside a transaction.
        let _ = db.execute_batch("ROLLBACK");
    }
    result
}

/// Rows up to which a group runs right on its runtime worker, holding up that worker's other
/// tasks meanwhile (the other worker takes what it can): a few milliseconds (groups of about
/// 110 rows took 3.7 ms on average at 10,000 msg/s with read receipts). Larger groups first
/// hand those tasks to another thread (`block_in_place`), which costs a thread wake-up: about
/// 0.6 ms of median latency at 10,000 msg/s, 2 ms with read receipts (measured against 128).
const INLINE_ROWS: usize = 256;

/// Runs `work`, which blocks its thread for the transaction of a group of `rows` rows.
fn blocking<T>(rows: usize, work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|runtime| runtime.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) if rows > INLINE_ROWS => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// Stores `upload`'s content for the message it names: a message id, an alias made earlier,
/// or else a new alias for the sender's oldest content-less message of the last minute (the
/// app's content-id quirk). Refused when no message of the sender's fits, when the message was
/// read already, or beyond the sender's quota (a claim by an app id stays; nothing is stored).
fn attach(db: &Connection, upload: &ContentUpload) -> Result<Result<MessageId, Refused>> {
    let (sender, requested, content) = (upload.sender.0, upload.requested.0, &upload.content);
    let known = db
        .prepare_cached(KNOWN_MESSAGE)?
        .query_row(params![requested.as_bytes()], |row| {
            Ok((uuid_at(row, 0)?, uuid_at(row, 1)?))
        })
        .optional()?;
    let received_at = timestamp(content.created_at);
    // One writer: nothing marks the message read between this update and the content's insert.
    let (target, is_read) = match known {
        Some((_, owner)) if owner != sender => return Ok(Err(Refused::NotYours)),
        Some((id, _)) => {
            let is_read = db
                .prepare_cached("SELECT is_read FROM messages WHERE id = ?1")?
                .query_row(params![id.as_bytes()], |row| row.get(0))?;
            note_content_received(db, id, &received_at)?;
            (id, is_read)
        }
        None => {
            // One writer: nothing can claim the same message in between.
            let since = content.created_at - chrono::Duration::seconds(ALIAS_WINDOW_SECONDS);
            let claimed = db
                .prepare_cached(
                    "SELECT id, is_read FROM messages
                     WHERE sender_id = ?1 AND content_received_at IS NULL AND created_at >= ?2
                     ORDER BY seq LIMIT 1",
                )?
                .query_row(params![sender.as_bytes(), timestamp(since)], |row| {
                    Ok((uuid_at(row, 0)?, row.get(1)?))
                })
                .optional()?;
            let Some((id, is_read)) = claimed else {
                return Ok(Err(Refused::NotYours));
            };
            note_content_received(db, id, &received_at)?;
            db.prepare_cached(ADD_ALIAS)?
                .execute(params![requested.as_bytes(), id.as_bytes()])?;
            (id, is_read)
        }
    };
    if is_read {
        return Ok(Err(Refused::AlreadyRead));
    }
    let used: i64 = db.prepare_cached(CONTENT_USED)?.query_row(
        params![sender.as_bytes(), target.as_bytes(), received_at],
        |row| row.get(0),
    )?;
    if !within_quota(used, content.bytes.len(), upload.quota) {
        return Ok(Err(Refused::OverQuota));
    }
    db.prepare_cached(STORE_CONTENT)?.execute(params![
        target.as_bytes(),
        content.bytes,
        content.hash,
        received_at,
        timestamp(content.expires_at),
        sender.as_bytes(),
        i64::try_from(content.bytes.len()).unwrap_or(i64::MAX)
    ])?;
    Ok(Ok(MessageId(target)))
}

/// Notes when message `id`'s content first came. The upload's statements are lookups, then
/// this update, where PostgreSQL runs `MARK_CONTENT_RECEIVED` and `CLAIM_MESSAGE` (see
/// `Statements::mark_delivered` for why not RETURNING on SQLite; one writer: nothing changes
/// the message in between).
fn note_content_received(db: &Connection, id: Uuid, received_at: &str) -> Result<()> {
    db.prepare_cached(
        "UPDATE messages SET content_received_at = coalesce(content_received_at, ?2)
         WHERE id = ?1",
    )?
    .execute(params![id.as_bytes(), received_at])?;
    Ok(())
}

/// The group's open transaction.
struct Statements<'a>(&'a mut Connection);

/// How sqlx stores a timestamp in SQLite (RFC 3339 text); the other statements compare these.
pub(super) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

pub(super) fn uuid_at(row: &Row, column: usize) -> rusqlite::Result<Uuid> {
    Uuid::from_slice(row.get_ref(column)?.as_blob()?)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(column, Type::Blob, e.into()))
}

fn time_at(row: &Row, column: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let Some(text) = row.get_ref(column)?.as_str_or_null()? else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(text)
        .map(|at| Some(at.to_utc()))
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(column, Type::Text, e.into()))
}

fn required_time_at(row: &Row, column: usize) -> rusqlite::Result<DateTime<Utc>> {
    time_at(row, column)?.ok_or(rusqlite::Error::InvalidColumnType(
        column,
        "timestamp".into(),
        Type::Null,
    ))
}

/// A row of `message_cols!()`.
fn message(row: &Row) -> rusqlite::Result<Message> {
    Ok(Message {
        seq: row.get(0)?,
        id: MessageId(uuid_at(row, 1)?),
        conversation_id: ConversationId(uuid_at(row, 2)?),
        sender_id: UserId(uuid_at(row, 3)?),
        recipient_id: UserId(uuid_at(row, 4)?),
        message_type: row.get(5)?,
        session_id: row.get(6)?,
        created_at: required_time_at(row, 7)?,
        is_read: row.get(8)?,
        read_at: time_at(row, 9)?,
        delivered_at: time_at(row, 10)?,
        status: row.get(11)?,
        withheld: row.get(12)?,
    })
}

/// A new inbox entry: a received message or a read receipt.
struct NewInboxEntry {
    user: UserId,
    seq: i64,
    kind: &'static str,
    /// The message's `seq`.
    message: i64,
    at: DateTime<Utc>,
}

/// Change to each member's unread count, per conversation and member: + for messages stored
/// for them, − for messages they read.
type Received = BTreeMap<(ConversationId, UserId), i64>;

impl Statements<'_> {
    /// Inside the open transaction: inserts the group's messages (their conversations' latest
    /// time, an inbox entry for each recipient), marks its reads read at `at` (a receipt in each
    /// sender's inbox) and records its delivered events. Returns what was stored and read
    /// (`Written`), and the messages that the marks delivered for the first time, for their
    /// senders to be told.
    fn write(&mut self, group: Group<'_>) -> Result<Written> {
        let Group {
            messages,
            reads,
            events,
            at,
        } = group;
        let inserted = if messages.is_empty() {
            Vec::new()
        } else {
            self.insert(messages)?
        };
        let read = if reads.is_empty() {
            Vec::new()
        } else {
            self.read(reads, at)?
        };

        // One inbox entry per stored message (its recipient's) and per read (its sender's
        // receipt).
        let wanted: Vec<(UserId, &'static str, i64, DateTime<Utc>)> = inserted
            .iter()
            .flatten()
            .filter(|m| !m.withheld)
            .map(|m| (m.recipient_id, "message", m.seq, m.created_at))
            .chain(
                read.iter()
                    .map(|m| (m.sender_id, "read_receipt", m.seq, at)),
            )
            .collect();
        // One number per entry, in the order of `wanted`: the stored messages', then the
        // receipts'.
        let mut cursors = self.append_inbox(&wanted)?.into_iter();
        let mut next_cursor = || {
            cursors
                .next()
                .ok_or_else(|| Error::Internal(anyhow::anyhow!("an inbox entry went missing")))
        };
        let inserted = inserted
            .into_iter()
            .map(|m| {
                m.map(|m| match m.withheld {
                    true => Ok((m, None)),
                    false => Ok((m, Some(next_cursor()?))),
                })
                .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        let mut read = read
            .into_iter()
            .map(|m| Ok((m.id, (m, next_cursor()?))))
            .collect::<Result<HashMap<MessageId, (Message, i64)>>>()?;
        // In the order asked; a message read twice in one group is read by the first.
        let read = reads.iter().map(|r| read.remove(&r.message)).collect();

        let delivered = if events.is_empty() {
            Vec::new()
        } else {
            self.mark_delivered(events, at)?
        };
        Ok(Written {
            inserted,
            read,
            delivered,
        })
    }

    /// Inserts the messages whose id is free, counting them unread; `None` for the others.
    fn insert(&mut self, batch: &[NewMessage]) -> Result<Vec<Option<Message>>> {
        // Only the numbers come back: the rest of each row is what was just written.
        let mut stored: HashMap<MessageId, i64> =
            self.insert_messages(batch)?.into_iter().collect();
        // In batch order; a repeated id (a retry in the same batch) is stored once.
        Ok(batch
            .iter()
            .map(|m| stored.remove(&m.id).map(|seq| m.stored_as(seq)))
            .collect())
    }

    /// Marks `reads` read (those still unread by their reader): their unread counts go down and
    /// their contents go. Returns the messages marked.
    fn read(&mut self, reads: &[ReadMark], at: DateTime<Utc>) -> Result<Vec<Message>> {
        let read = self.mark_read(reads, at)?;
        if !read.is_empty() {
            let mut unread: Received = BTreeMap::new();
            for message in &read {
                *unread
                    .entry((message.conversation_id, message.recipient_id))
                    .or_default() -= 1;
            }
            self.touch_conversations(&unread, None)?;
            let ids: Vec<MessageId> = read.iter().map(|m| m.id).collect();
            self.delete_contents(&ids)?;
        }
        Ok(read)
    }

    /// Appends `wanted` (user, kind, message `seq`, time) to their users' inboxes; returns each
    /// one's number, in order. Each user gets a range of numbers, in the order of `wanted`.
    fn append_inbox(
        &mut self,
        wanted: &[(UserId, &'static str, i64, DateTime<Utc>)],
    ) -> Result<Vec<i64>> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut per_user: BTreeMap<UserId, i64> = BTreeMap::new();
        for (user, ..) in wanted {
            *per_user.entry(*user).or_default() += 1;
        }
        let mut next_seq: HashMap<UserId, i64> = HashMap::new();
        for (user, end) in self.bump_inboxes(&per_user)? {
            let count = per_user.get(&user).copied().unwrap_or(0);
            next_seq.insert(user, end - count + 1);
        }
        let mut entries = Vec::with_capacity(wanted.len());
        for &(user, kind, message, at) in wanted {
            let Some(seq) = next_seq.get_mut(&user) else {
                return Err(Error::Internal(RowGone("user vanished mid-batch").into()));
            };
            entries.push(NewInboxEntry {
                user,
                seq: *seq,
                kind,
                message,
                at,
            });
            *seq += 1;
        }
        self.insert_inbox(&entries)?;
        Ok(entries.iter().map(|e| e.seq).collect())
    }

    /// Adds to each member's unread count (a negative count for messages read), and sets the
    /// conversations' latest message time when `latest` is given.
    fn touch_conversations(
        &mut self,
        received: &Received,
        latest: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let mut touch = self.0.prepare_cached(
            "UPDATE conversations SET last_message_at = coalesce(?2, last_message_at),
                 unread_a = unread_a + CASE WHEN user_a = ?3 THEN ?4 ELSE 0 END,
                 unread_b = unread_b + CASE WHEN user_a = ?3 THEN 0 ELSE ?4 END
             WHERE id = ?1",
        )?;
        let latest = latest.map(timestamp);
        for ((conversation, recipient), count) in received {
            touch.execute(params![
                conversation.0.as_bytes(),
                latest,
                recipient.0.as_bytes(),
                count
            ])?;
        }
        Ok(())
    }

    /// Inserts the messages whose id is free and touches their conversations (latest message
    /// time, one more unread for each recipient, but for withheld messages: stored for their
    /// sender only); returns the `(id, seq)` of those inserted.
    fn insert_messages(&mut self, batch: &[NewMessage]) -> Result<Vec<(MessageId, i64)>> {
        let mut stored = Vec::with_capacity(batch.len());
        let (mut received, mut latest) = (Received::new(), None);
        {
            let mut insert = self.0.prepare_cached(
                "INSERT INTO messages (id, conversation_id, sender_id, recipient_id, message_type,
                                       session_id, created_at, withheld)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
            )?;
            for m in batch {
                let inserted = insert.execute(params![
                    m.id.0.as_bytes(),
                    m.conversation_id.0.as_bytes(),
                    m.sender_id.0.as_bytes(),
                    m.recipient_id.0.as_bytes(),
                    m.message_type,
                    m.session_id,
                    timestamp(m.created_at),
                    m.withheld
                ])?;
                if inserted == 1 {
                    // `seq` is the table's row id.
                    stored.push((m.id, self.0.last_insert_rowid()));
                }
                if inserted == 1 && !m.withheld {
                    *received
                        .entry((m.conversation_id, m.recipient_id))
                        .or_default() += 1;
                    latest = latest.max(Some(m.created_at));
                }
            }
        }
        self.touch_conversations(&received, latest)?;
        Ok(stored)
    }

    /// Adds `count` to each user's inbox number; returns each user's new number.
    fn bump_inboxes(&mut self, counts: &BTreeMap<UserId, i64>) -> Result<Vec<(UserId, i64)>> {
        // A lookup, then an update (see `mark_delivered` for why not RETURNING).
        let mut head = self
            .0
            .prepare_cached("SELECT inbox_seq FROM users WHERE id = ?1")?;
        let mut set = self
            .0
            .prepare_cached("UPDATE users SET inbox_seq = ?2 WHERE id = ?1")?;
        let mut ends = Vec::with_capacity(counts.len());
        for (user, count) in counts {
            let id = user.0.as_bytes();
            let Some(head) = head
                .query_row(params![id], |row| row.get::<_, i64>(0))
                .optional()?
            else {
                continue; // the user is gone
            };
            set.execute(params![id, head + count])?;
            ends.push((*user, head + count));
        }
        Ok(ends)
    }

    fn insert_inbox(&mut self, entries: &[NewInboxEntry]) -> Result<()> {
        let mut insert = self.0.prepare_cached(
            "INSERT INTO inbox (user_id, seq, kind, message_seq, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for entry in entries {
            insert.execute(params![
                entry.user.0.as_bytes(),
                entry.seq,
                entry.kind,
                entry.message,
                timestamp(entry.at)
            ])?;
        }
        Ok(())
    }

    /// Marks the messages read that are still unread by their reader; returns those it marked.
    /// A message withheld from its recipient (they block its sender) is not theirs to read.
    fn mark_read(&mut self, reads: &[ReadMark], at: DateTime<Utc>) -> Result<Vec<Message>> {
        // A lookup, then an update (see `mark_delivered` for why not RETURNING).
        let mut find = self.0.prepare_cached(concat!(
            "SELECT ",
            message_cols!(),
            " FROM messages
             WHERE id = ?1 AND recipient_id = ?2 AND is_read = FALSE AND withheld = FALSE"
        ))?;
        let mut mark = self
            .0
            .prepare_cached("UPDATE messages SET is_read = TRUE, read_at = ?2 WHERE seq = ?1")?;
        let at_text = timestamp(at);
        let mut marked = Vec::with_capacity(reads.len());
        for read in reads {
            let params = params![read.message.0.as_bytes(), read.reader.0.as_bytes()];
            let Some(mut found) = find.query_row(params, message).optional()? else {
                continue;
            };
            mark.execute(params![found.seq, at_text])?;
            (found.is_read, found.read_at, found.status) = (true, Some(at), "read".into());
            marked.push(found);
        }
        Ok(marked)
    }

    /// Deletes the stored contents of `messages` (kept only until the message is read).
    fn delete_contents(&mut self, messages: &[MessageId]) -> Result<()> {
        let mut delete = self
            .0
            .prepare_cached("DELETE FROM message_contents WHERE message_id = ?1")?;
        for id in messages {
            delete.execute(params![id.0.as_bytes()])?;
        }
        Ok(())
    }

    /// Marks undelivered inbox events delivered, and the messages of those that are messages
    /// (not receipts); returns the messages it marked (their first delivery).
    ///
    /// Each mark is a lookup, then an update by key, rather than one `UPDATE … RETURNING`:
    /// SQLite gathers a RETURNING statement's rows in a temporary table, which opens and closes
    /// a page cache of its own each time it runs; at three such statements per message that was
    /// 2–4 % of the server's CPU at 10,000 msg/s. The group is the only writer: nothing changes
    /// a row between its lookup and its update.
    fn mark_delivered(
        &mut self,
        events: &[(UserId, i64)],
        at: DateTime<Utc>,
    ) -> Result<Vec<FirstDelivery>> {
        let mut find_event = self.0.prepare_cached(
            "SELECT message_seq, kind FROM inbox
             WHERE user_id = ?1 AND seq = ?2 AND delivered_at IS NULL",
        )?;
        let mut mark_event = self
            .0
            .prepare_cached("UPDATE inbox SET delivered_at = ?3 WHERE user_id = ?1 AND seq = ?2")?;
        let mut find_message = self.0.prepare_cached(
            "SELECT id, conversation_id, sender_id, recipient_id FROM messages
             WHERE seq = ?1 AND delivered_at IS NULL",
        )?;
        let mut mark_message = self
            .0
            .prepare_cached("UPDATE messages SET delivered_at = ?2 WHERE seq = ?1")?;
        let at_text = timestamp(at);
        let mut delivered = Vec::new();
        for (user, seq) in events {
            let event = find_event
                .query_row(params![user.0.as_bytes(), seq], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get_ref(1)?.as_str()? == "message",
                    ))
                })
                .optional()?;
            let Some((message, is_message)) = event else {
                continue; // delivered already
            };
            mark_event.execute(params![user.0.as_bytes(), seq, at_text])?;
            if !is_message {
                continue; // a read receipt: no message to mark
            }
            let first = find_message
                .query_row(params![message], |row| {
                    Ok(FirstDelivery {
                        id: MessageId(uuid_at(row, 0)?),
                        conversation_id: ConversationId(uuid_at(row, 1)?),
                        sender_id: UserId(uuid_at(row, 2)?),
                        recipient_id: UserId(uuid_at(row, 3)?),
                        delivered_at: at,
                    })
                })
                .optional()?;
            if let Some(first) = first {
                mark_message.execute(params![message, at_text])?;
                delivered.push(first);
            }
        }
        Ok(delivered)
    }
}
