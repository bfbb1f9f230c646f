//! The SQLite statements of a group commit, all run on the calling thread.
//!
//! Through sqlx, every SQLite statement is a round trip to the connection's own thread: two
//! thread wake-ups per statement, four for BEGIN and COMMIT (which wait for an acknowledgement).
//! On a busy 2-core machine a wake-up costs about 150 µs, and a group's dozen of them were
//! about 40 % of its time at 10,000 msg/s. A group instead locks the handle out of that thread
//! (sqlx's `lock_handle`, made for direct calls) and runs its transaction here through
//! rusqlite, a cached single-row statement per kind of row: no round trip, and no statement
//! text that changes with the group's size. Content uploads join the group here too (SQLite
//! only: PostgreSQL's writers run in parallel, and an upload keeps its own transaction there).

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Row, params, types::Type};
use sqlx::{SqliteConnection, SqlitePool, sqlite::LockedSqliteHandle};
use uuid::Uuid;

use super::contents::{ALIAS_WINDOW_SECONDS, CONTENT_USED, Refused, within_quota};
use super::group::{self, Group, GroupStatements, NewInboxEntry, ReadMark, Received, Written};
use super::messages::message_cols;
use super::{FirstDelivery, NewContent, NewMessage};
use crate::{
    error::{Error, Result},
    model::{ConversationId, Message, MessageId, UserId},
};

/// A sender's upload of a message's content, waiting for the next group (see
/// `Store::attach_content`).
pub(super) struct ContentUpload {
    pub sender: UserId,
    /// The message id, an alias made earlier, or the app's own id for a new alias.
    pub requested: MessageId,
    pub content: NewContent,
    /// The sender's storage quota, in bytes (`CONTENT_QUOTA_BYTES`).
    pub quota: u64,
}

impl ContentUpload {
    /// Bytes of content it carries (see `batch::MAX_GROUP_UPLOAD_BYTES`).
    pub fn size(&self) -> usize {
        self.content.bytes.len()
    }
}

/// `group::write` on the pool's writer, then `uploads`, in one transaction (see
/// `Writer::write`).
pub(super) async fn write(
    pool: &SqlitePool,
    group: Group<'_>,
    uploads: &[ContentUpload],
) -> Result<(Written, Vec<Result<MessageId>>)> {
    let mut conn = pool.acquire().await?;
    Writer::lock(&mut conn).await?.write(group, uploads)
}

/// The writer connection, locked out of sqlx's thread for direct calls (see the module's doc).
/// Taking it from the pool and locking it costs two round trips to other tasks and threads
/// (150–300 µs on a busy 2-core machine): the group loop keeps it across back-to-back groups.
pub(super) struct Writer<'c>(LockedSqliteHandle<'c>);

impl<'c> Writer<'c> {
    pub(super) async fn lock(conn: &'c mut SqliteConnection) -> Result<Self> {
        Ok(Self(conn.lock_handle().await?))
    }

    /// `group::write`, then `uploads`, in one transaction. Each upload's answer: the message
    /// its content went to, or why it was refused.
    pub(super) fn write(
        &mut self,
        group: Group<'_>,
        uploads: &[ContentUpload],
    ) -> Result<(Written, Vec<Result<MessageId>>)> {
        let raw = self.0.as_raw_handle();
        let rows = group.messages.len() + group.reads.len() + group.events.len() + uploads.len();
        blocking(rows, || {
            // SAFETY: sqlx's worker thread makes no call on the handle while `self.0` lives;
            // `db` (and its cached statements) is dropped before it, and leaves the handle open.
            #[allow(unsafe_code)]
            let mut db = unsafe { Connection::from_handle(raw.as_ptr()) }?;
            in_transaction(&mut db, |db| {
                let written = group::write(&mut Statements(db), group)?;
                let attached = uploads
                    .iter()
                    .map(|upload| Ok(attach(db, upload)?.map_err(Error::from)))
                    .collect::<Result<_>>()?;
                Ok((written, attached))
            })
        })
    }
}

/// Runs `body` between BEGIN IMMEDIATE and COMMIT; rolls back when anything fails.
fn in_transaction<T>(
    db: &mut Connection,
    body: impl FnOnce(&mut Connection) -> Result<T>,
) -> Result<T> {
    db.execute_batch("BEGIN IMMEDIATE")?;
    let result = body(db).and_then(|value| {
        db.execute_batch("COMMIT")?;
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
        .prepare_cached(
            "SELECT m.id, m.sender_id FROM messages m WHERE m.id = ?1
             UNION ALL
             SELECT m.id, m.sender_id FROM message_aliases a JOIN messages m ON m.id = a.message_id
             WHERE a.alias_id = ?1",
        )?
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
                .prepare_cached(
                    "UPDATE messages SET content_received_at = coalesce(content_received_at, ?2)
                     WHERE id = ?1 RETURNING is_read",
                )?
                .query_row(params![id.as_bytes(), received_at], |row| row.get(0))?;
            (id, is_read)
        }
        None => {
            // One writer: nothing can claim the same message in between.
            let since = content.created_at - chrono::Duration::seconds(ALIAS_WINDOW_SECONDS);
            let claimed = db
                .prepare_cached(
                    "UPDATE messages SET content_received_at = ?3
                     WHERE id = (SELECT id FROM messages
                                 WHERE sender_id = ?1 AND content_received_at IS NULL
                                   AND created_at >= ?2
                                 ORDER BY seq LIMIT 1)
                     RETURNING id, is_read",
                )?
                .query_row(
                    params![sender.as_bytes(), timestamp(since), received_at],
                    |row| Ok((uuid_at(row, 0)?, row.get(1)?)),
                )
                .optional()?;
            let Some((id, is_read)) = claimed else {
                return Ok(Err(Refused::NotYours));
            };
            db.prepare_cached(
                "INSERT INTO message_aliases (alias_id, message_id) VALUES (?1, ?2)",
            )?
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
    db.prepare_cached(
        "INSERT INTO message_contents (message_id, content, content_hash, created_at, expires_at,
                                       sender_id, size_bytes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (message_id) DO UPDATE SET content = excluded.content,
             content_hash = excluded.content_hash, created_at = excluded.created_at,
             expires_at = excluded.expires_at, size_bytes = excluded.size_bytes",
    )?
    .execute(params![
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

/// The group's open transaction.
struct Statements<'a>(&'a mut Connection);

/// How sqlx stores a timestamp in SQLite (RFC 3339 text); the other statements compare these.
fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn uuid_at(row: &Row, column: usize) -> rusqlite::Result<Uuid> {
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
    })
}

impl GroupStatements for Statements<'_> {
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

    fn insert_messages(&mut self, batch: &[NewMessage]) -> Result<Vec<(MessageId, i64)>> {
        let mut stored = Vec::with_capacity(batch.len());
        let (mut received, mut latest) = (Received::new(), None);
        {
            let mut insert = self.0.prepare_cached(
                "INSERT INTO messages (id, conversation_id, sender_id, recipient_id, message_type,
                                       session_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
            )?;
            for m in batch {
                let inserted = insert.execute(params![
                    m.id.0.as_bytes(),
                    m.conversation_id.0.as_bytes(),
                    m.sender_id.0.as_bytes(),
                    m.recipient_id.0.as_bytes(),
                    m.message_type,
                    m.session_id,
                    timestamp(m.created_at)
                ])?;
                if inserted == 1 {
                    // `seq` is the table's row id.
                    stored.push((m.id, self.0.last_insert_rowid()));
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

    fn bump_inboxes(
        &mut self,
        counts: &std::collections::BTreeMap<UserId, i64>,
    ) -> Result<Vec<(UserId, i64)>> {
        let mut bump = self.0.prepare_cached(
            "UPDATE users SET inbox_seq = inbox_seq + ?2 WHERE id = ?1 RETURNING inbox_seq",
        )?;
        let mut ends = Vec::with_capacity(counts.len());
        for (user, count) in counts {
            let end = bump
                .query_row(params![user.0.as_bytes(), count], |row| row.get(0))
                .optional()?;
            ends.extend(end.map(|end| (*user, end)));
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

    fn mark_read(&mut self, reads: &[ReadMark], at: DateTime<Utc>) -> Result<Vec<Message>> {
        let mut mark = self.0.prepare_cached(concat!(
            "UPDATE messages SET is_read = TRUE, read_at = ?3
             WHERE id = ?1 AND recipient_id = ?2 AND is_read = FALSE
             RETURNING ",
            message_cols!()
        ))?;
        let at = timestamp(at);
        let mut marked = Vec::with_capacity(reads.len());
        for read in reads {
            let params = params![read.message.0.as_bytes(), read.reader.0.as_bytes(), at];
            marked.extend(mark.query_row(params, message).optional()?);
        }
        Ok(marked)
    }

    fn delete_contents(&mut self, messages: &[MessageId]) -> Result<()> {
        let mut delete = self
            .0
            .prepare_cached("DELETE FROM message_contents WHERE message_id = ?1")?;
        for id in messages {
            delete.execute(params![id.0.as_bytes()])?;
        }
        Ok(())
    }

    fn mark_delivered(
        &mut self,
        events: &[(UserId, i64)],
        at: DateTime<Utc>,
    ) -> Result<Vec<FirstDelivery>> {
        let mut mark_event = self.0.prepare_cached(
            "UPDATE inbox SET delivered_at = ?3
             WHERE user_id = ?1 AND seq = ?2 AND delivered_at IS NULL
             RETURNING message_seq, kind",
        )?;
        let mut mark_message = self.0.prepare_cached(
            "UPDATE messages SET delivered_at = ?1 WHERE seq = ?2 AND delivered_at IS NULL
             RETURNING id, conversation_id, sender_id, recipient_id, delivered_at",
        )?;
        let at = timestamp(at);
        let mut delivered = Vec::new();
        for (user, seq) in events {
            let event = mark_event
                .query_row(params![user.0.as_bytes(), seq, at], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })
                .optional()?;
            let Some((message, kind)) = event else {
                continue; // delivered already
            };
            if kind != "message" {
                continue; // a read receipt: no message to mark
            }
            let first = mark_message.query_row(params![at, message], |row| {
                Ok(FirstDelivery {
                    id: MessageId(uuid_at(row, 0)?),
                    conversation_id: ConversationId(uuid_at(row, 1)?),
                    sender_id: UserId(uuid_at(row, 2)?),
                    recipient_id: UserId(uuid_at(row, 3)?),
                    delivered_at: required_time_at(row, 4)?,
                })
            });
            delivered.extend(first.optional()?);
        }
        Ok(delivered)
    }
}
