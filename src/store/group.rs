//! The statements of a group commit (`batch`): new messages, read receipts, their inbox
//! entries, and the delivery marks that sockets reported. The logic is written once (`write`);
//! each engine supplies its statements. SQLite runs a cached single-row statement per row, on
//! the calling thread (`group_sqlite`); PostgreSQL binds one array per column (`unnest`), so
//! that its statement texts are the same whatever the group's size: parsed and planned once
//! per connection instead of once per group.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::messages::message_cols;
use super::{FirstDelivery, NewMessage};
use crate::{
    error::{Error, Result},
    model::{ConversationId, Message, MessageId, UserId},
};

/// A message as a group stored it, with its recipient's inbox number; `None` when its id was
/// already taken.
pub(super) type Inserted = Option<(Message, i64)>;

/// A recipient reading one of their messages.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReadMark {
    pub message: MessageId,
    pub reader: UserId,
    /// The message's conversation, whose row PostgreSQL locks (in id order, with the group's
    /// others) before the mark; required there. SQLite's single writer locks nothing, so a mark
    /// can be queued without reading the message first.
    pub conversation: Option<ConversationId>,
}

/// A message a group marked read, with the inbox number of the receipt for its sender; `None`
/// when it was not unread (read already, or not the reader's).
pub(super) type Read = Option<(Message, i64)>;

/// What a group wrote, in the order of its inputs.
pub(super) struct Written {
    pub inserted: Vec<Inserted>,
    pub read: Vec<Read>,
    pub delivered: Vec<FirstDelivery>,
}

/// A new inbox entry: a received message or a read receipt.
pub(super) struct NewInboxEntry {
    pub user: UserId,
    pub seq: i64,
    pub kind: &'static str,
    /// The message's `seq`.
    pub message: i64,
    pub at: DateTime<Utc>,
}

/// Change to each member's unread count, per conversation and member: + for messages stored
/// for them, − for messages they read.
pub(super) type Received = BTreeMap<(ConversationId, UserId), i64>;

/// One engine's statements, each run inside the group's open transaction (on PostgreSQL, a
/// group of delivery marks alone is one statement, which runs as its own transaction).
pub(super) trait GroupStatements: Send {
    /// Locks the conversations' rows (in id order) before their messages are numbered, so that
    /// within a conversation the order of `seq` is the order of commits (a group without new
    /// messages; `insert_messages` takes the locks of the others).
    fn lock_conversations(
        &mut self,
        ids: &[ConversationId],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Adds to each member's unread count (a negative count for messages read), and sets the
    /// conversations' latest message time when `latest` is given.
    fn touch_conversations(
        &mut self,
        received: &Received,
        latest: Option<DateTime<Utc>>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Marks the messages read that are still unread by their reader; returns those it marked.
    fn mark_read(
        &mut self,
        reads: &[ReadMark],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<Message>>> + Send;

    /// Deletes the stored contents of `messages` (kept only until the message is read).
    fn delete_contents(
        &mut self,
        messages: &[MessageId],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Locks `lock` as `lock_conversations` does, inserts the messages whose id is free and
    /// touches their conversations (latest message time, one more unread for each recipient);
    /// returns the `(id, seq)` of those inserted.
    fn insert_messages(
        &mut self,
        lock: &[ConversationId],
        batch: &[NewMessage],
    ) -> impl Future<Output = Result<Vec<(MessageId, i64)>>> + Send;

    /// Adds `count` to each user's inbox number (locking their rows in id order); returns each
    /// user's new number.
    fn bump_inboxes(
        &mut self,
        counts: &BTreeMap<UserId, i64>,
    ) -> impl Future<Output = Result<Vec<(UserId, i64)>>> + Send;

    fn insert_inbox(
        &mut self,
        entries: &[NewInboxEntry],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Marks undelivered inbox events delivered, and the messages of those that are messages
    /// (not receipts); returns the messages it marked (their first delivery).
    fn mark_delivered(
        &mut self,
        events: &[(UserId, i64)],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<FirstDelivery>>> + Send;
}

/// The rows of one group commit.
#[derive(Clone, Copy)]
pub(super) struct Group<'a> {
    pub messages: &'a [NewMessage],
    pub reads: &'a [ReadMark],
    /// Inbox events that reached a socket of their user at `at`.
    pub events: &'a [(UserId, i64)],
    pub at: DateTime<Utc>,
}

/// Inside the open transaction `conn`: inserts the group's messages (their conversations'
/// latest time, an inbox entry for each recipient), marks its reads read at `at` (a receipt in
/// each sender's inbox) and records its delivered events. Returns what was stored and read
/// (`Written`), and the messages that the marks delivered for the first time, for their
/// senders to be told. A handful of statements whatever the group's size.
pub(super) async fn write<C: GroupStatements>(conn: &mut C, group: Group<'_>) -> Result<Written> {
    let Group {
        messages,
        reads,
        events,
        at,
    } = group;
    let mut conversations: Vec<ConversationId> = messages
        .iter()
        .map(|m| m.conversation_id)
        .chain(reads.iter().filter_map(|r| r.conversation))
        .collect();
    conversations.sort_unstable();
    conversations.dedup();
    let inserted = if messages.is_empty() {
        if !conversations.is_empty() {
            conn.lock_conversations(&conversations).await?;
        }
        Vec::new()
    } else {
        insert(conn, &conversations, messages).await?
    };
    let read = if reads.is_empty() {
        Vec::new()
    } else {
        mark_read(conn, reads, at).await?
    };

    // One inbox entry per stored message (its recipient's) and per read (its sender's receipt).
    let wanted: Vec<(UserId, &'static str, i64, DateTime<Utc>)> = inserted
        .iter()
        .flatten()
        .map(|m| (m.recipient_id, "message", m.seq, m.created_at))
        .chain(
            read.iter()
                .map(|m| (m.sender_id, "read_receipt", m.seq, at)),
        )
        .collect();
    // One number per entry, in the order of `wanted`: the stored messages', then the receipts'.
    let mut cursors = append_inbox(conn, &wanted).await?.into_iter();
    let mut next_cursor = || {
        cursors
            .next()
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("an inbox entry went missing")))
    };
    let inserted = inserted
        .into_iter()
        .map(|m| m.map(|m| Ok((m, next_cursor()?))).transpose())
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
        conn.mark_delivered(events, at).await?
    };
    Ok(Written {
        inserted,
        read,
        delivered,
    })
}

/// Locks `conversations` and inserts the messages whose id is free, counting them unread;
/// `None` for the others.
async fn insert<C: GroupStatements>(
    conn: &mut C,
    conversations: &[ConversationId],
    batch: &[NewMessage],
) -> Result<Vec<Option<Message>>> {
    // Only the numbers come back: the rest of each row is what was just written.
    let mut stored: HashMap<MessageId, i64> = conn
        .insert_messages(conversations, batch)
        .await?
        .into_iter()
        .collect();
    // In batch order; a repeated id (a retry in the same batch) is stored once.
    Ok(batch
        .iter()
        .map(|m| stored.remove(&m.id).map(|seq| m.stored_as(seq)))
        .collect())
}

/// Marks `reads` read (those still unread by their reader): their unread counts go down and
/// their contents go. Returns the messages marked.
async fn mark_read<C: GroupStatements>(
    conn: &mut C,
    reads: &[ReadMark],
    at: DateTime<Utc>,
) -> Result<Vec<Message>> {
    let read = conn.mark_read(reads, at).await?;
    if !read.is_empty() {
        let mut unread: Received = BTreeMap::new();
        for message in &read {
            *unread
                .entry((message.conversation_id, message.recipient_id))
                .or_default() -= 1;
        }
        conn.touch_conversations(&unread, None).await?;
        let ids: Vec<MessageId> = read.iter().map(|m| m.id).collect();
        conn.delete_contents(&ids).await?;
    }
    Ok(read)
}

/// Appends `wanted` (user, kind, message `seq`, time) to their users' inboxes; returns each
/// one's number, in order. Each user gets a range of numbers, in the order of `wanted`.
async fn append_inbox<C: GroupStatements>(
    conn: &mut C,
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
    for (user, end) in conn.bump_inboxes(&per_user).await? {
        let count = per_user.get(&user).copied().unwrap_or(0);
        next_seq.insert(user, end - count + 1);
    }
    let mut entries = Vec::with_capacity(wanted.len());
    for &(user, kind, message, at) in wanted {
        let Some(seq) = next_seq.get_mut(&user) else {
            return Err(Error::Internal(anyhow::anyhow!("user vanished mid-batch")));
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
    conn.insert_inbox(&entries).await?;
    Ok(entries.iter().map(|e| e.seq).collect())
}

/// The raw ids of `items`, for an array parameter.
fn uuids<T>(items: &[T], id: impl Fn(&T) -> Uuid) -> Vec<Uuid> {
    items.iter().map(id).collect()
}

impl GroupStatements for PgConnection {
    async fn lock_conversations(&mut self, ids: &[ConversationId]) -> Result<()> {
        // Groups commit at once (several writers per node, several nodes): each locks the
        // rows it needs in id order, so that no two ever wait for each other in a cycle. The
        // lock is the one an UPDATE takes (NO KEY UPDATE): FOR UPDATE would also wait for the
        // KEY SHARE locks that other groups' foreign-key checks hold, and deadlock with them.
        sqlx::query("SELECT 1 FROM conversations WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
            .bind(uuids(ids, |c| c.0))
            .execute(self)
            .await
            .map(drop)
            .map_err(Error::from)
    }

    async fn touch_conversations(
        &mut self,
        received: &Received,
        latest: Option<DateTime<Utc>>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE conversations c SET last_message_at = coalesce($1, c.last_message_at),
                    unread_a = c.unread_a + n.to_a, unread_b = c.unread_b + n.to_b
             FROM (SELECT r.conversation_id,
                          sum(CASE WHEN r.recipient_id = cc.user_a THEN r.count ELSE 0 END) AS to_a,
                          sum(CASE WHEN r.recipient_id = cc.user_a THEN 0 ELSE r.count END) AS to_b
                   FROM unnest($2::uuid[], $3::uuid[], $4::bigint[])
                        AS r (conversation_id, recipient_id, count)
                   JOIN conversations cc ON cc.id = r.conversation_id
                   GROUP BY r.conversation_id) AS n
             WHERE c.id = n.conversation_id",
        )
        .bind(latest)
        .bind(received.keys().map(|(c, _)| c.0).collect::<Vec<_>>())
        .bind(received.keys().map(|(_, r)| r.0).collect::<Vec<_>>())
        .bind(received.values().copied().collect::<Vec<_>>())
        .execute(self)
        .await
        .map(drop)
        .map_err(Error::from)
    }

    async fn insert_messages(
        &mut self,
        lock: &[ConversationId],
        batch: &[NewMessage],
    ) -> Result<Vec<(MessageId, i64)>> {
        // One statement instead of three (lock, insert, touch), each a round trip and an
        // executor start. The insert reads a count of the locked rows before its first row:
        // that data dependency is what makes the locks come first.
        sqlx::query_as(
            "WITH locked AS MATERIALIZED (
                 SELECT id FROM conversations WHERE id = ANY($8) ORDER BY id FOR NO KEY UPDATE),
             stored AS (
                 INSERT INTO messages (id, conversation_id, sender_id, recipient_id,
                                       message_type, session_id, created_at)
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[],
                                      $5::text[], $6::text[], $7::timestamptz[])
                 WHERE (SELECT count(*) FROM locked) >= 0
                 ON CONFLICT (id) DO NOTHING
                 RETURNING id, seq, conversation_id, recipient_id, created_at),
             touched AS (
                 UPDATE conversations c SET last_message_at = n.latest,
                        unread_a = c.unread_a + n.to_a, unread_b = c.unread_b + n.to_b
                 FROM (SELECT s.conversation_id, max(s.created_at) AS latest,
                              count(*) FILTER (WHERE s.recipient_id = cc.user_a) AS to_a,
                              count(*) FILTER (WHERE s.recipient_id <> cc.user_a) AS to_b
                       FROM stored s JOIN conversations cc ON cc.id = s.conversation_id
                       GROUP BY s.conversation_id) AS n
                 WHERE c.id = n.conversation_id)
             SELECT id, seq FROM stored",
        )
        .bind(uuids(batch, |m| m.id.0))
        .bind(uuids(batch, |m| m.conversation_id.0))
        .bind(uuids(batch, |m| m.sender_id.0))
        .bind(uuids(batch, |m| m.recipient_id.0))
        .bind(
            batch
                .iter()
                .map(|m| m.message_type.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|m| m.session_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(batch.iter().map(|m| m.created_at).collect::<Vec<_>>())
        .bind(uuids(lock, |c| c.0))
        .fetch_all(self)
        .await
        .map_err(Error::from)
    }

    async fn bump_inboxes(&mut self, counts: &BTreeMap<UserId, i64>) -> Result<Vec<(UserId, i64)>> {
        // Locked in id order, as conversations are, before the update (which reads a count of
        // the locked rows first).
        sqlx::query_as(
            "WITH locked AS MATERIALIZED (
                 SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE)
             UPDATE users SET inbox_seq = users.inbox_seq + n.count
             FROM unnest($1::uuid[], $2::bigint[]) AS n (id, count)
             WHERE users.id = n.id AND (SELECT count(*) FROM locked) >= 0
             RETURNING users.id, users.inbox_seq",
        )
        .bind(counts.keys().map(|u| u.0).collect::<Vec<Uuid>>())
        .bind(counts.values().copied().collect::<Vec<i64>>())
        .fetch_all(self)
        .await
        .map_err(Error::from)
    }

    async fn insert_inbox(&mut self, entries: &[NewInboxEntry]) -> Result<()> {
        sqlx::query(
            "INSERT INTO inbox (user_id, seq, kind, message_seq, created_at)
             SELECT user_id, seq, kind, message_seq, created_at
             FROM unnest($1::uuid[], $2::bigint[], $5::text[], $3::bigint[], $4::timestamptz[])
                  AS e (user_id, seq, kind, message_seq, created_at)",
        )
        .bind(uuids(entries, |e| e.user.0))
        .bind(entries.iter().map(|e| e.seq).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.message).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.at).collect::<Vec<_>>())
        .bind(entries.iter().map(|e| e.kind).collect::<Vec<_>>())
        .execute(self)
        .await
        .map(drop)
        .map_err(Error::from)
    }

    async fn mark_read(&mut self, reads: &[ReadMark], at: DateTime<Utc>) -> Result<Vec<Message>> {
        // The rows are locked in `seq` order, as the delivery marks lock theirs (which run
        // beside the groups): two statements that lock the same messages in different orders
        // deadlock, and PostgreSQL then fails one of them after a second.
        sqlx::query_as(concat!(
            "WITH target AS MATERIALIZED (
                 SELECT m.seq AS target_seq
                 FROM messages m
                 JOIN unnest($1::uuid[], $2::uuid[]) AS marked (message_id, reader_id)
                   ON m.id = marked.message_id AND m.recipient_id = marked.reader_id
                 WHERE m.is_read = FALSE
                 ORDER BY m.seq
                 FOR NO KEY UPDATE OF m)
             UPDATE messages m SET is_read = TRUE, read_at = $3
             FROM target WHERE m.seq = target.target_seq AND m.is_read = FALSE
             RETURNING ",
            message_cols!(m)
        ))
        .bind(uuids(reads, |r| r.message.0))
        .bind(uuids(reads, |r| r.reader.0))
        .bind(at)
        .fetch_all(self)
        .await
        .map_err(Error::from)
    }

    async fn delete_contents(&mut self, messages: &[MessageId]) -> Result<()> {
        sqlx::query("DELETE FROM message_contents WHERE message_id = ANY($1)")
            .bind(uuids(messages, |m| m.0))
            .execute(self)
            .await
            .map(drop)
            .map_err(Error::from)
    }

    async fn mark_delivered(
        &mut self,
        events: &[(UserId, i64)],
        at: DateTime<Utc>,
    ) -> Result<Vec<FirstDelivery>> {
        // One statement, which runs as its own transaction (see `Batcher::spawn`). Senders hear
        // of their messages' delivery in the order they were sent. The messages are locked in
        // `seq` order, as read marks lock theirs.
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
        .bind(uuids(events, |(user, _)| user.0))
        .bind(events.iter().map(|(_, seq)| *seq).collect::<Vec<_>>())
        .bind(at)
        .fetch_all(self)
        .await
        .map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::now, store::Store, store::users::NewUser};

    async fn user(store: &Store, name: &str) -> UserId {
        let new = NewUser {
            id: UserId(Uuid::now_v7()),
            email: format!("{name}@example.com"),
            username: name.into(),
            name: None,
            password_hash: "x".into(),
            created_at: now(),
        };
        store.create_user(&new).await.expect("user").id
    }

    /// An in-memory store with two users and their conversation.
    async fn alice_and_bob() -> (Store, UserId, UserId, ConversationId) {
        let store = Store::connect("sqlite::memory:", 1).await.expect("store");
        let (alice, bob) = (user(&store, "alice").await, user(&store, "bob").await);
        let (conversation, _) = store
            .get_or_create_conversation(alice, bob, now())
            .await
            .expect("conversation");
        (store, alice, bob, conversation.id)
    }

    fn message(conversation: ConversationId, from: UserId, to: UserId) -> NewMessage {
        NewMessage {
            id: MessageId(Uuid::new_v4()),
            conversation_id: conversation,
            sender_id: from,
            recipient_id: to,
            message_type: "text".into(),
            session_id: None,
            created_at: now(),
        }
    }

    /// A group that fails stores none of its messages, and the writer's next group commits.
    #[tokio::test]
    async fn a_failed_group_stores_nothing_and_the_next_one_commits() {
        let (store, alice, bob, conversation) = alice_and_bob().await;
        let good = message(conversation, alice, bob);
        let nowhere = message(ConversationId(Uuid::now_v7()), alice, bob);
        let id = good.id;
        let failed = store.write_group(&[good, nowhere], &[], &[], now()).await;
        assert!(failed.is_err(), "a message of no conversation");
        assert!(store.message(id).await.expect("read").is_none());

        let again = NewMessage {
            id,
            ..message(conversation, alice, bob)
        };
        let written = store
            .write_group(&[again], &[], &[], now())
            .await
            .expect("the next group");
        assert!(matches!(written.inserted[..], [Some((_, 1))]));
        assert!(store.message(id).await.expect("read").is_some());
    }

    /// A retry and new messages in one group, then reads (one twice) in one group: every entry
    /// gets the inbox number that was written for it.
    #[tokio::test]
    async fn retries_and_reads_in_one_group_keep_their_own_numbers() {
        let (store, alice, bob, conversation) = alice_and_bob().await;
        let first = message(conversation, alice, bob);
        store
            .write_group(std::slice::from_ref(&first), &[], &[], now())
            .await
            .expect("first");

        let retry = NewMessage {
            id: first.id,
            ..message(conversation, alice, bob)
        };
        let (second, third) = (
            message(conversation, alice, bob),
            message(conversation, bob, alice),
        );
        let group = [retry, second, third];
        let written = store
            .write_group(&group, &[], &[], now())
            .await
            .expect("group");
        let numbers: Vec<Option<(MessageId, UserId, i64)>> = written
            .inserted
            .iter()
            .map(|m| m.as_ref().map(|(m, n)| (m.id, m.recipient_id, *n)))
            .collect();
        assert_eq!(
            numbers,
            [
                None,
                Some((group[1].id, bob, 2)),
                Some((group[2].id, alice, 1))
            ]
        );

        let read = |message: &NewMessage, reader| ReadMark {
            message: message.id,
            reader,
            conversation: Some(conversation),
        };
        let reads = [
            read(&first, bob),
            read(&group[2], alice),
            read(&first, bob),
            read(&group[1], alice),
        ];
        let written = store
            .write_group(&[], &reads, &[], now())
            .await
            .expect("reads");
        let receipts: Vec<Option<(MessageId, i64)>> = written
            .read
            .iter()
            .map(|r| r.as_ref().map(|(m, n)| (m.id, *n)))
            .collect();
        // Receipts go to the senders: alice's inbox holds bob's message (1), so her receipt is
        // 2; bob's holds first and second, so his is 3. A second read of the same message, and
        // a read by someone who is not the recipient, change nothing.
        assert_eq!(
            receipts,
            [Some((first.id, 2)), Some((group[2].id, 3)), None, None]
        );
    }
}
