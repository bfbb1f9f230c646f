//! PostgreSQL's group commit of messages and read marks: one statement, which runs as its own
//! transaction. A group written as separate statements between BEGIN and COMMIT made five to
//! eight round trips to the database, each a wake-up on both sides; at 10,000 msg/s on a
//! 2-core machine those round trips, not the work, set the latency.
//!
//! Every array is bound whole (`unnest`), so the statement text is the same whatever the
//! group's size: parsed and planned once per connection.

use std::collections::HashMap;

use sqlx::PgConnection;

use chrono::{DateTime, Utc};

use crate::store::{
    columns::message_cols,
    group::{FirstDelivery, Group, Inserted, NewMessage, Read, ReadMark, Written},
};
use crate::{
    error::{Error, Result},
    model::{Message, MessageId, UserId},
};

/// A message the statement stored (`pass` 0) or marked read (`pass` 1), with the number of
/// its inbox entry (the recipient's for a stored message, the sender's receipt for a read).
#[derive(sqlx::FromRow)]
struct Row {
    pass: i32,
    inbox_number: Option<i64>,
    #[sqlx(flatten)]
    message: Message,
}

/// Writes `group`: its messages and reads in one statement, its delivery marks (which come
/// alone: see `Batcher`) in another. Each statement is atomic without BEGIN and COMMIT.
pub(crate) async fn write(conn: &mut PgConnection, group: Group<'_>) -> Result<Written> {
    let (inserted, read) = if group.messages.is_empty() && group.reads.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        store_and_mark_read(conn, group).await?
    };
    let delivered = if group.events.is_empty() {
        Vec::new()
    } else {
        mark_delivered(conn, group.events, group.at).await?
    };
    Ok(Written {
        inserted,
        read,
        delivered,
    })
}

/// Stores `group`'s messages and marks its reads, with their conversations' counters and their
/// inbox entries, in one statement. Returns what was stored (batch order; `None` for an id
/// already taken; no inbox number for a withheld message, stored for its sender only) and read (`reads` order; `None` when not unread by that reader, and for a
/// second read of the same message; a message withheld from its recipient is never read).
async fn store_and_mark_read(
    conn: &mut PgConnection,
    group: Group<'_>,
) -> Result<(Vec<Inserted>, Vec<Read>)> {
    let Group {
        messages,
        reads,
        at,
        ..
    } = group;
    let mut conversations: Vec<_> = messages
        .iter()
        .map(|m| m.conversation_id.0)
        .chain(reads.iter().filter_map(|r| r.conversation.map(|c| c.0)))
        .collect();
    conversations.sort_unstable();
    conversations.dedup();
    let column = |f: fn(&NewMessage) -> uuid::Uuid| messages.iter().map(f).collect::<Vec<_>>();
    let read_column = |f: fn(&ReadMark) -> uuid::Uuid| reads.iter().map(f).collect::<Vec<_>>();

    // Locks are taken in one order by every group (conversations by id, then the messages
    // read by seq, then users by id), so that concurrent groups never wait for each other in
    // a cycle; each step reads a count of the one before it, and that data dependency is what
    // orders them. A row is updated at most once per statement (a second update in the same
    // statement would be lost), hence one update of the conversations for both the stored
    // messages (+1 unread, latest time) and the read ones (-1).
    let rows: Vec<Row> = sqlx::query_as(concat!(
        "WITH locked AS MATERIALIZED (
             SELECT id FROM conversations WHERE id = ANY($8) ORDER BY id FOR NO KEY UPDATE),
         stored AS (
             INSERT INTO messages (id, conversation_id, sender_id, recipient_id,
                                   message_type, session_id, created_at, withheld)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[],
                                  $5::text[], $6::text[], $7::timestamptz[], $12::bool[])
             WHERE (SELECT count(*) FROM locked) >= 0
             ON CONFLICT (id) DO NOTHING
             RETURNING ",
        message_cols!(),
        "),
         target AS MATERIALIZED (
             SELECT m.seq AS target_seq
             FROM messages m
             JOIN unnest($9::uuid[], $10::uuid[]) AS marked (message_id, reader_id)
               ON m.id = marked.message_id AND m.recipient_id = marked.reader_id
             WHERE m.is_read = FALSE AND m.withheld = FALSE
               AND (SELECT count(*) FROM locked) >= 0
             ORDER BY m.seq
             FOR NO KEY UPDATE OF m),
         marked_read AS (
             UPDATE messages m SET is_read = TRUE, read_at = $11
             FROM target WHERE m.seq = target.target_seq AND m.is_read = FALSE
             RETURNING ",
        message_cols!(m),
        "),
         touched AS (
             UPDATE conversations c
             SET last_message_at = coalesce(n.latest, c.last_message_at),
                 unread_a = c.unread_a + n.to_a, unread_b = c.unread_b + n.to_b
             FROM (SELECT d.conversation_id, max(d.latest) AS latest,
                          sum(CASE WHEN d.recipient_id = cc.user_a THEN d.delta ELSE 0 END) AS to_a,
                          sum(CASE WHEN d.recipient_id = cc.user_a THEN 0 ELSE d.delta END) AS to_b
                   FROM (SELECT conversation_id, recipient_id, created_at AS latest, 1 AS delta
                         FROM stored WHERE NOT withheld
                         UNION ALL
                         SELECT conversation_id, recipient_id, NULL, -1 FROM marked_read) AS d
                   JOIN conversations cc ON cc.id = d.conversation_id
                   GROUP BY d.conversation_id) AS n
             WHERE c.id = n.conversation_id),
         contents_gone AS (
             DELETE FROM message_contents WHERE message_id IN (SELECT id FROM marked_read)),
         entries AS (
             SELECT 0 AS pass, recipient_id AS owner, s.* FROM stored s WHERE NOT s.withheld
             UNION ALL
             SELECT 1, sender_id, r.* FROM marked_read r),
         counts AS (
             SELECT owner, count(*) AS n FROM entries GROUP BY owner),
         owners AS MATERIALIZED (
             SELECT id FROM users WHERE id IN (SELECT owner FROM counts)
             ORDER BY id FOR NO KEY UPDATE),
         bumped AS (
             UPDATE users SET inbox_seq = users.inbox_seq + counts.n
             FROM counts
             WHERE users.id = counts.owner AND (SELECT count(*) FROM owners) >= 0
             RETURNING users.id, users.inbox_seq),
         numbered AS MATERIALIZED (
             SELECT e.*, b.inbox_seq - c.n
                         + row_number() OVER (PARTITION BY e.owner ORDER BY e.pass, e.seq)
                         AS inbox_number
             FROM entries e JOIN counts c USING (owner) JOIN bumped b ON b.id = e.owner),
         appended AS (
             INSERT INTO inbox (user_id, seq, kind, message_seq, created_at)
             SELECT owner, inbox_number,
                    CASE pass WHEN 0 THEN 'message' ELSE 'read_receipt' END, seq,
                    CASE pass WHEN 0 THEN created_at ELSE $11 END
             FROM numbered)
         SELECT pass, inbox_number, ",
        message_cols!(),
        " FROM numbered
         UNION ALL
         SELECT 0, NULL, ",
        message_cols!(),
        " FROM stored WHERE withheld"
    ))
    .bind(column(|m| m.id.0))
    .bind(column(|m| m.conversation_id.0))
    .bind(column(|m| m.sender_id.0))
    .bind(column(|m| m.recipient_id.0))
    .bind(
        messages
            .iter()
            .map(|m| m.message_type.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        messages
            .iter()
            .map(|m| m.session_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(messages.iter().map(|m| m.created_at).collect::<Vec<_>>())
    .bind(conversations)
    .bind(read_column(|r| r.message.0))
    .bind(read_column(|r| r.reader.0))
    .bind(at)
    .bind(messages.iter().map(|m| m.withheld).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;

    let mut stored: HashMap<MessageId, (Message, Option<i64>)> = HashMap::new();
    let mut read: HashMap<MessageId, (Message, i64)> = HashMap::new();
    for row in rows {
        match (row.pass, row.inbox_number) {
            (0, number) => {
                stored.insert(row.message.id, (row.message, number));
            }
            (_, Some(number)) => {
                read.insert(row.message.id, (row.message, number));
            }
            (_, None) => {
                return Err(anyhow::anyhow!("a read receipt without an inbox number").into());
            }
        }
    }
    // A repeated id is stored (or read) by the first of its jobs.
    let inserted = messages.iter().map(|m| stored.remove(&m.id)).collect();
    let read = reads.iter().map(|r| read.remove(&r.message)).collect();
    Ok((inserted, read))
}

/// Marks the reported inbox events delivered, and the messages of those that are messages (not
/// receipts); returns the messages it marked (their first delivery), in the order they were
/// sent.
async fn mark_delivered(
    conn: &mut PgConnection,
    events: &[(UserId, i64)],
    at: DateTime<Utc>,
) -> Result<Vec<FirstDelivery>> {
    // The messages are locked in `seq` order, as read marks lock theirs.
    sqlx::query_as(
        "WITH marked AS (
             UPDATE inbox SET delivered_at = $3
             FROM unnest($1::uuid[], $2::bigint[]) AS reported (user_id, seq)
             WHERE inbox.user_id = reported.user_id AND inbox.seq = reported.seq
               AND inbox.delivered_at IS NULL
             RETURNING inbox.message_seq, inbox.kind),
         locked AS MATERIALIZED (
             SELECT seq AS locked_seq FROM messages
             WHERE delivered_at IS NULL
               AND seq IN (SELECT message_seq FROM marked WHERE kind = 'message')
             ORDER BY seq
             FOR NO KEY UPDATE),
         delivered AS (
             UPDATE messages SET delivered_at = $3
             FROM locked WHERE seq = locked.locked_seq AND delivered_at IS NULL
             RETURNING seq, id, conversation_id, sender_id, recipient_id, delivered_at)
         SELECT id, conversation_id, sender_id, recipient_id, delivered_at
         FROM delivered ORDER BY seq",
    )
    .bind(events.iter().map(|(user, _)| user.0).collect::<Vec<_>>())
    .bind(events.iter().map(|(_, seq)| *seq).collect::<Vec<_>>())
    .bind(at)
    .fetch_all(conn)
    .await
    .map_err(Error::from)
}
