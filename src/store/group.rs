//! What a group commit (`batch`) writes: new messages, read receipts, their inbox entries, and
//! the delivery marks that sockets reported. The types are shared by both engines. The steps
//! (`write`) are SQLite's, over the single-row statements of `group_sqlite`; PostgreSQL writes
//! a group in one statement (`group_pg`).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use super::{FirstDelivery, NewMessage, faults::RowGone};
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

/// The statements of a group, each run inside its open transaction.
pub(super) trait GroupStatements {
    /// Adds to each member's unread count (a negative count for messages read), and sets the
    /// conversations' latest message time when `latest` is given.
    fn touch_conversations(
        &mut self,
        received: &Received,
        latest: Option<DateTime<Utc>>,
    ) -> Result<()>;

    /// Marks the messages read that are still unread by their reader; returns those it marked.
    fn mark_read(&mut self, reads: &[ReadMark], at: DateTime<Utc>) -> Result<Vec<Message>>;

    /// Deletes the stored contents of `messages` (kept only until the message is read).
    fn delete_contents(&mut self, messages: &[MessageId]) -> Result<()>;

    /// Inserts the messages whose id is free and touches their conversations (latest message
    /// time, one more unread for each recipient); returns the `(id, seq)` of those inserted.
    fn insert_messages(&mut self, batch: &[NewMessage]) -> Result<Vec<(MessageId, i64)>>;

    /// Adds `count` to each user's inbox number; returns each user's new number.
    fn bump_inboxes(&mut self, counts: &BTreeMap<UserId, i64>) -> Result<Vec<(UserId, i64)>>;

    fn insert_inbox(&mut self, entries: &[NewInboxEntry]) -> Result<()>;

    /// Marks undelivered inbox events delivered, and the messages of those that are messages
    /// (not receipts); returns the messages it marked (their first delivery).
    fn mark_delivered(
        &mut self,
        events: &[(UserId, i64)],
        at: DateTime<Utc>,
    ) -> Result<Vec<FirstDelivery>>;
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
/// senders to be told.
pub(super) fn write<C: GroupStatements>(conn: &mut C, group: Group<'_>) -> Result<Written> {
    let Group {
        messages,
        reads,
        events,
        at,
    } = group;
    let inserted = if messages.is_empty() {
        Vec::new()
    } else {
        insert(conn, messages)?
    };
    let read = if reads.is_empty() {
        Vec::new()
    } else {
        mark_read(conn, reads, at)?
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
    let mut cursors = append_inbox(conn, &wanted)?.into_iter();
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
        conn.mark_delivered(events, at)?
    };
    Ok(Written {
        inserted,
        read,
        delivered,
    })
}

/// Inserts the messages whose id is free, counting them unread;
/// `None` for the others.
fn insert<C: GroupStatements>(conn: &mut C, batch: &[NewMessage]) -> Result<Vec<Option<Message>>> {
    // Only the numbers come back: the rest of each row is what was just written.
    let mut stored: HashMap<MessageId, i64> = conn.insert_messages(batch)?.into_iter().collect();
    // In batch order; a repeated id (a retry in the same batch) is stored once.
    Ok(batch
        .iter()
        .map(|m| stored.remove(&m.id).map(|seq| m.stored_as(seq)))
        .collect())
}

/// Marks `reads` read (those still unread by their reader): their unread counts go down and
/// their contents go. Returns the messages marked.
fn mark_read<C: GroupStatements>(
    conn: &mut C,
    reads: &[ReadMark],
    at: DateTime<Utc>,
) -> Result<Vec<Message>> {
    let read = conn.mark_read(reads, at)?;
    if !read.is_empty() {
        let mut unread: Received = BTreeMap::new();
        for message in &read {
            *unread
                .entry((message.conversation_id, message.recipient_id))
                .or_default() -= 1;
        }
        conn.touch_conversations(&unread, None)?;
        let ids: Vec<MessageId> = read.iter().map(|m| m.id).collect();
        conn.delete_contents(&ids)?;
    }
    Ok(read)
}

/// Appends `wanted` (user, kind, message `seq`, time) to their users' inboxes; returns each
/// one's number, in order. Each user gets a range of numbers, in the order of `wanted`.
fn append_inbox<C: GroupStatements>(
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
    for (user, end) in conn.bump_inboxes(&per_user)? {
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
    conn.insert_inbox(&entries)?;
    Ok(entries.iter().map(|e| e.seq).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::now,
        store::{NewContent, Store, users::NewUser},
    };
    use uuid::Uuid;

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

    /// A message whose conversation is gone (deleted meanwhile) shares a group with a good
    /// message, a read mark, a content upload and a delivery report: it fails alone, and every
    /// other job gets the answer it would have had without it. (The group used to roll back
    /// whole, and all of them failed.)
    #[tokio::test]
    async fn a_refused_message_fails_alone_and_the_rest_of_its_group_commits() {
        let (store, alice, bob, conversation) = alice_and_bob().await;
        let mut earlier = Vec::new();
        for _ in 0..2 {
            let (stored, _) = (store
                .insert_message(message(conversation, alice, bob))
                .await)
                .expect("an earlier message");
            earlier.push(stored.id);
        }
        let [to_read, to_fill] = earlier[..] else {
            unreachable!()
        };
        let good = message(conversation, alice, bob);
        let nowhere = message(ConversationId(Uuid::now_v7()), alice, bob);
        let (good_id, nowhere_id) = (good.id, nowhere.id);
        let content = NewContent {
            bytes: b"ciphertext".to_vec(),
            hash: None,
            created_at: now(),
            expires_at: now() + chrono::Duration::days(1),
        };

        // All queued before the writer runs (one thread: it runs when this task waits), so
        // they make one group.
        let good = store.queue_message(good).await.expect("queue");
        let nowhere = store.queue_message(nowhere).await.expect("queue");
        let reported = [(bob, 1), (bob, 2)];
        let (good, nowhere, read, filled, delivered) = tokio::join!(
            good.stored(&store),
            nowhere.stored(&store),
            store.mark_read(to_read, bob, None),
            store.attach_content(alice, to_fill, content, u64::MAX),
            store.mark_delivered(&reported, now()),
        );

        let nowhere = nowhere.expect_err("a message of no conversation fails");
        assert_eq!(nowhere.code(), "internal");
        let Error::Internal(cause) = &nowhere else {
            unreachable!()
        };
        let cause = format!("{cause:#}");
        assert!(cause.starts_with("group commit failed: "), "{cause}");
        assert!(cause.contains("FOREIGN KEY constraint failed"), "{cause}");
        assert!(store.message(nowhere_id).await.expect("read").is_none());

        let (good, cursor) = good.expect("the good message is stored");
        assert_eq!((good.id, cursor), (good_id, Some(3)));
        assert!(store.message(good_id).await.expect("read").is_some());
        let (read, _) = read.expect("the read mark").expect("marked");
        assert!(read.id == to_read && read.is_read);
        assert_eq!(filled.expect("the upload"), to_fill);
        let delivered: Vec<MessageId> = delivered
            .expect("the delivery report")
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(delivered, [to_read, to_fill]);
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
