//! The engines' contract: the same groups (messages, read marks, delivery marks, content
//! uploads, refused rows and the halving that isolates them) fed to SQLite and to PostgreSQL
//! give the same answers — acks, inbox numbers, errors, inbox entries. Each scenario writes a
//! transcript of what the store returned, with ids replaced by names and message `seq`s left
//! out (PostgreSQL's sequence skips the numbers of refused and duplicate inserts; only inbox
//! numbers are gap-free). Each scenario also asserts its expected answers, so the SQLite run
//! alone checks them too. PostgreSQL runs when `TEST_DATABASE_URL` is set, as for the
//! integration tests: each run gets a fresh schema, dropped at the end.

use std::{collections::HashMap, fmt::Write as _};

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::{
    Engine, NewContent, NewMessage, Store, faults::is_about_rows, group::ReadMark, users::NewUser,
};
use crate::{
    error::{Error, Result},
    model::{ConversationId, Message, MessageId, UserId, now},
};

/// A store on a fresh database of `engine`; `None` for PostgreSQL without `TEST_DATABASE_URL`.
struct TestStore {
    store: Store,
    /// PostgreSQL: the admin URL and the schema to drop.
    schema: Option<(String, String)>,
}

impl TestStore {
    async fn open(engine: Engine) -> Option<Self> {
        match engine {
            Engine::Sqlite => {
                let store = Store::connect("sqlite::memory:", 1, std::time::Duration::ZERO)
                    .await
                    .expect("store");
                Some(Self {
                    store,
                    schema: None,
                })
            }
            Engine::Postgres => {
                let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") else {
                    eprintln!("TEST_DATABASE_URL is not set: PostgreSQL variant not run");
                    return None;
                };
                let schema = format!("kst_{}", Uuid::new_v4().simple());
                let admin = sqlx::PgPool::connect(&admin_url).await.expect("PostgreSQL");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&admin)
                    .await
                    .expect("create test schema");
                admin.close().await;
                let sep = if admin_url.contains('?') { '&' } else { '?' };
                let url = format!("{admin_url}{sep}options=-c%20search_path%3D{schema}");
                // Two connections: one group writer (see `group_writers`), so that what is
                // queued together commits together, as on SQLite.
                let store = Store::connect(&url, 2, std::time::Duration::ZERO)
                    .await
                    .expect("store");
                Some(Self {
                    store,
                    schema: Some((admin_url, schema)),
                })
            }
        }
    }

    async fn close(self) {
        self.store.close().await;
        if let Some((admin_url, schema)) = self.schema {
            let admin = sqlx::PgPool::connect(&admin_url).await.expect("PostgreSQL");
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&admin)
                .await
                .expect("drop test schema");
            admin.close().await;
        }
    }
}

/// Runs `scenario` on each engine and checks that every engine's transcript is SQLite's.
macro_rules! on_both_engines {
    ($scenario:ident) => {{
        let start = DateTime::from_timestamp(now().timestamp(), 0).expect("time");
        let mut transcripts: Vec<(Engine, String)> = Vec::new();
        for engine in [Engine::Sqlite, Engine::Postgres] {
            let Some(test) = TestStore::open(engine).await else {
                continue;
            };
            let mut names = Names::default();
            let transcript = $scenario(&test.store, &mut names, start).await;
            test.close().await;
            transcripts.push((engine, transcript));
        }
        let (_, sqlite) = &transcripts[0];
        for (engine, transcript) in &transcripts[1..] {
            assert_eq!(
                transcript,
                sqlite,
                "{} answers differently from SQLite",
                engine.name()
            );
        }
    }};
}

/// Names for the ids of one run, so that transcripts of two runs compare.
#[derive(Default)]
struct Names(HashMap<Uuid, String>);

impl Names {
    fn name(&mut self, id: Uuid, name: &str) {
        self.0.insert(id, name.to_owned());
    }

    fn of(&self, id: Uuid) -> &str {
        self.0.get(&id).map_or("?", String::as_str)
    }

    fn message(&self, m: &Message) -> String {
        format!(
            "{} in {} {}->{} {} {} read={} read_at={:?} delivered_at={:?} at={}",
            self.of(m.id.0),
            self.of(m.conversation_id.0),
            self.of(m.sender_id.0),
            self.of(m.recipient_id.0),
            m.message_type,
            m.status,
            m.is_read,
            m.read_at,
            m.delivered_at,
            m.created_at,
        )
    }

    fn numbered<N: std::fmt::Debug>(&self, answer: &Option<(Message, N)>) -> String {
        match answer {
            Some((m, number)) => format!("#{number:?} {}", self.message(m)),
            None => "none".into(),
        }
    }
}

/// What an error tells a caller: its code, and whether its rows were at fault.
fn error(e: &Error) -> String {
    format!("error {} about_rows={}", e.code(), is_about_rows(e))
}

async fn user(store: &Store, names: &mut Names, name: &str, at: DateTime<Utc>) -> UserId {
    let new = NewUser {
        id: UserId(Uuid::now_v7()),
        email: format!("{name}@example.com"),
        username: name.into(),
        name: None,
        password_hash: "x".into(),
        created_at: at,
    };
    let id = store.users().create_user(&new).await.expect("user").id;
    names.name(id.0, name);
    id
}

/// Alice, Bob and their conversation.
async fn alice_and_bob(
    store: &Store,
    names: &mut Names,
    at: DateTime<Utc>,
) -> (UserId, UserId, ConversationId) {
    let alice = user(store, names, "alice", at).await;
    let bob = user(store, names, "bob", at).await;
    let (conversation, _) = store
        .conversations()
        .get_or_create_conversation(alice, bob, at)
        .await
        .expect("conversation");
    names.name(conversation.id.0, "conversation");
    (alice, bob, conversation.id)
}

fn message(
    names: &mut Names,
    name: &str,
    conversation: ConversationId,
    from: UserId,
    to: UserId,
    at: DateTime<Utc>,
) -> NewMessage {
    let id = MessageId(Uuid::new_v4());
    names.name(id.0, name);
    NewMessage {
        id,
        conversation_id: conversation,
        sender_id: from,
        recipient_id: to,
        message_type: "text".into(),
        session_id: None,
        created_at: at,
        withheld: false,
    }
}

fn read_mark(message: &NewMessage, reader: UserId) -> ReadMark {
    ReadMark {
        message: message.id,
        reader,
        conversation: Some(message.conversation_id),
    }
}

/// Each user's inbox, entry by entry.
async fn inboxes(store: &Store, names: &Names, users: &[UserId]) -> String {
    let mut out = String::new();
    for user in users {
        let head = store.inbox().inbox_head(*user).await.expect("head");
        let entries = store
            .inbox()
            .inbox_entries(*user, 0, head, false, 100)
            .await
            .expect("inbox");
        for e in entries {
            let _ = writeln!(
                out,
                "{} #{} {:?} {}",
                names.of(user.0),
                e.seq,
                e.kind,
                names.message(&e.message)
            );
        }
    }
    out
}

/// Groups written one after the other: retries (in the group and of an earlier one), reads
/// (twice in one group, by someone who is not the recipient, of an unknown message), then
/// messages, reads and delivery marks (repeated, of a receipt, unknown) in one group.
async fn groups_of_messages_reads_and_marks(
    store: &Store,
    names: &mut Names,
    start: DateTime<Utc>,
) -> String {
    let (alice, bob, conversation) = alice_and_bob(store, names, start).await;
    let mut out = String::new();
    let m1 = message(names, "m1", conversation, alice, bob, start);
    let written = store
        .write_group(std::slice::from_ref(&m1), &[], &[], start)
        .await
        .expect("first group");
    let _ = writeln!(out, "m1: {}", names.numbered(&written.inserted[0]));

    let retry = NewMessage {
        id: m1.id,
        message_type: "image".into(),
        ..message(names, "unused", conversation, alice, bob, start)
    };
    let m2 = message(names, "m2", conversation, alice, bob, start);
    let m3 = message(names, "m3", conversation, bob, alice, start);
    let m2_again = NewMessage {
        id: m2.id,
        ..message(names, "unused", conversation, alice, bob, start)
    };
    let group = [retry, m2, m3, m2_again];
    let written = store
        .write_group(&group, &[], &[], start)
        .await
        .expect("retries");
    let numbers: Vec<Option<(MessageId, UserId, Option<i64>)>> = written
        .inserted
        .iter()
        .map(|m| m.as_ref().map(|(m, n)| (m.id, m.recipient_id, *n)))
        .collect();
    assert_eq!(
        numbers,
        [
            None,
            Some((group[1].id, bob, Some(2))),
            Some((group[2].id, alice, Some(1))),
            None
        ]
    );
    for answer in &written.inserted {
        let _ = writeln!(out, "stored: {}", names.numbered(answer));
    }
    let [_, m2, m3, _] = group;

    let unknown = message(names, "unknown", conversation, alice, bob, start);
    let reads = [
        read_mark(&m1, bob),
        read_mark(&m3, alice),
        read_mark(&m1, bob),
        read_mark(&m2, alice),
        read_mark(&unknown, bob),
    ];
    let read_at = start + Duration::seconds(1);
    let written = store
        .write_group(&[], &reads, &[], read_at)
        .await
        .expect("reads");
    let receipts: Vec<Option<(MessageId, i64)>> = written
        .read
        .iter()
        .map(|r| r.as_ref().map(|(m, n)| (m.id, *n)))
        .collect();
    // Receipts go to the senders: alice's inbox holds bob's message (1), so her receipt is 2;
    // bob's holds m1 and m2, so his is 3. A second read of the same message, a read by
    // someone who is not the recipient and a read of no message change nothing.
    assert_eq!(
        receipts,
        [Some((m1.id, 2)), Some((m3.id, 3)), None, None, None]
    );
    for answer in &written.read {
        let _ = writeln!(out, "read: {}", names.numbered(answer));
    }

    let m4 = message(names, "m4", conversation, alice, bob, start);
    let marked_at = start + Duration::seconds(2);
    let events = [
        (bob, 1),
        (bob, 2),
        (bob, 1),
        (alice, 1),
        (alice, 2),
        (bob, 4),
        (bob, 99),
    ];
    let written = store
        .write_group(
            std::slice::from_ref(&m4),
            &[read_mark(&m2, bob)],
            &events,
            marked_at,
        )
        .await
        .expect("mixed group");
    let _ = writeln!(out, "m4: {}", names.numbered(&written.inserted[0]));
    let _ = writeln!(out, "m2 read: {}", names.numbered(&written.read[0]));
    let delivered: Vec<&str> = written.delivered.iter().map(|d| names.of(d.id.0)).collect();
    // m1, m2 and m3 reach their recipient for the first time; alice's #2 is a receipt, bob's
    // #4 is m4, stored by the same group.
    assert_eq!(delivered, ["m1", "m2", "m3", "m4"]);
    for d in &written.delivered {
        let _ = writeln!(
            out,
            "delivered: {} in {} {}->{} at {}",
            names.of(d.id.0),
            names.of(d.conversation_id.0),
            names.of(d.sender_id.0),
            names.of(d.recipient_id.0),
            d.delivered_at
        );
    }
    let again = store
        .write_group(&[], &[], &events, marked_at)
        .await
        .expect("marks again");
    assert!(again.delivered.is_empty(), "delivered once");

    out + &inboxes(store, names, &[alice, bob]).await
}

#[tokio::test]
async fn the_engines_answer_groups_of_messages_reads_and_marks_alike() {
    on_both_engines!(groups_of_messages_reads_and_marks);
}

/// A withheld message (its recipient blocks its sender) shares a group with ordinary ones: it
/// is stored with no inbox number (so nothing is pushed), and leaves no inbox entry and no
/// unread count; it cannot be read by its recipient.
async fn withheld_messages_in_a_group(
    store: &Store,
    names: &mut Names,
    start: DateTime<Utc>,
) -> String {
    let (alice, bob, conversation) = alice_and_bob(store, names, start).await;
    let plain = message(names, "plain", conversation, alice, bob, start);
    let withheld = NewMessage {
        withheld: true,
        ..message(names, "withheld", conversation, alice, bob, start)
    };
    let withheld_id = withheld.id;
    let written = store
        .write_group(&[withheld, plain], &[], &[], start)
        .await
        .expect("group");
    let mut out = String::new();
    for answer in &written.inserted {
        let _ = writeln!(out, "stored: {}", names.numbered(answer));
    }
    assert!(
        matches!(written.inserted[0], Some((_, None))),
        "stored, with no inbox entry"
    );
    assert!(matches!(written.inserted[1], Some((_, Some(1)))));
    let stored = store.messages().message(withheld_id).await.expect("read");
    let stored = stored.expect("the withheld message is stored");
    assert!(stored.withheld);
    let _ = writeln!(out, "withheld: {}", names.message(&stored));
    out.push_str(&inboxes(store, names, &[alice, bob]).await);
    let unread = store
        .conversations()
        .conversation_summary(bob, conversation, false)
        .await
        .expect("summary")
        .expect("listed")
        .unread_count;
    let _ = writeln!(out, "bob's unread: {unread}");
    assert_eq!(unread, 1, "only the plain message counts");
    let mark = ReadMark {
        message: withheld_id,
        reader: bob,
        conversation: Some(conversation),
    };
    let read = store
        .write_group(&[], &[mark], &[], start)
        .await
        .expect("read");
    assert!(read.read[0].is_none(), "the recipient cannot read it");
    out
}

#[tokio::test]
async fn the_engines_store_withheld_messages_alike() {
    on_both_engines!(withheld_messages_in_a_group);
}

/// Through the group commit as senders use it: a message whose conversation is gone (deleted
/// meanwhile) shares a group with good messages, another refused one, a read mark, a content
/// upload and a delivery report: the refused ones fail alone (the group is committed again in
/// halves), and every other job gets the answer it would have had without them. (The group
/// used to roll back whole, and all of them failed.)
async fn refused_rows_fail_alone(store: &Store, names: &mut Names, start: DateTime<Utc>) -> String {
    let (alice, bob, conversation) = alice_and_bob(store, names, start).await;
    let mut out = String::new();
    let mut earlier = Vec::new();
    for name in ["to_read", "to_fill"] {
        let new = message(names, name, conversation, alice, bob, start);
        let (stored, _) = store
            .messages()
            .insert_message(new)
            .await
            .expect("an earlier message");
        earlier.push(stored.id);
    }
    let [to_read, to_fill] = earlier[..] else {
        unreachable!()
    };
    let nowhere = ConversationId(Uuid::now_v7());
    names.name(nowhere.0, "nowhere");
    let jobs = [
        message(names, "good1", conversation, alice, bob, start),
        message(names, "bad1", nowhere, alice, bob, start),
        message(names, "good2", conversation, bob, alice, start),
        message(names, "good3", conversation, alice, bob, start),
        message(names, "bad2", nowhere, bob, alice, start),
    ];
    let ids: Vec<MessageId> = jobs.iter().map(|m| m.id).collect();
    let content = NewContent {
        bytes: b"ciphertext".to_vec(),
        hash: None,
        created_at: start + Duration::seconds(3),
        expires_at: start + Duration::days(1),
    };

    // All queued before the writer runs (one thread: it runs when this task waits), so they
    // make one group.
    let mut queued = Vec::new();
    for job in jobs {
        queued.push(store.messages().queue_message(job).await.expect("queue"));
    }
    let reported = [(bob, 1), (bob, 2)];
    let stored = futures_util::future::join_all(queued.into_iter().map(|q| q.stored(store)));
    let (stored, read, filled, delivered) = tokio::join!(
        stored,
        store.messages().mark_read(to_read, bob, Some(conversation)),
        store
            .contents()
            .attach_content(alice, to_fill, content, u64::MAX),
        store
            .inbox()
            .mark_delivered(&reported, start + Duration::seconds(2)),
    );

    for (id, answer) in ids.iter().zip(&stored) {
        let line = match answer {
            Ok((m, cursor)) => {
                assert_eq!(m.id, *id);
                format!("stored #{cursor:?}")
            }
            Err(e) => {
                assert!(is_about_rows(e), "{e:#}");
                let Error::Internal(cause) = e else {
                    unreachable!()
                };
                assert!(format!("{cause:#}").starts_with("group commit failed: "));
                error(e)
            }
        };
        let _ = writeln!(out, "{}: {line}", names.of(id.0));
    }
    for bad in [1, 4] {
        assert!(stored[bad].is_err());
        let message = store.messages().message(ids[bad]).await.expect("read");
        assert!(message.is_none(), "a refused message is not stored");
    }
    let cursors: Vec<Option<i64>> = stored
        .iter()
        .map(|s| s.as_ref().ok().and_then(|(_, c)| *c))
        .collect();
    // Bob's inbox held to_read and to_fill; alice's nothing.
    assert_eq!(cursors, [Some(3), None, Some(1), Some(4), None]);

    let (read, receipt) = read.expect("the read mark").expect("marked");
    assert!(read.id == to_read && read.is_read);
    let _ = writeln!(out, "read: {} receipt #{receipt}", names.of(read.id.0));
    assert_eq!(filled.as_ref().ok(), Some(&to_fill));
    let _ = writeln!(out, "upload: {}", answer(names, &filled));
    let delivered: Vec<&str> = delivered
        .expect("the delivery report")
        .iter()
        .map(|d| names.of(d.id.0))
        .collect();
    assert_eq!(delivered, ["to_read", "to_fill"]);
    let _ = writeln!(out, "delivered: {delivered:?}");
    out
}

#[tokio::test]
async fn the_engines_fail_refused_rows_alone_alike() {
    on_both_engines!(refused_rows_fail_alone);
}

fn answer(names: &Names, result: &Result<MessageId>) -> String {
    match result {
        Ok(id) => format!("ok {}", names.of(id.0)),
        Err(e) => error(e),
    }
}

/// Content uploads: by message id, by someone else, by the app's own ids (each claims the
/// sender's oldest content-less message, and names it from then on), with no message left to
/// claim, for a message read already, and beyond the sender's quota.
async fn uploads(store: &Store, names: &mut Names, start: DateTime<Utc>) -> String {
    let (alice, bob, conversation) = alice_and_bob(store, names, start).await;
    for name in ["a1", "a2", "a3", "a4"] {
        let new = message(names, name, conversation, alice, bob, start);
        store.messages().insert_message(new).await.expect("message");
    }
    let content = |bytes: &[u8]| NewContent {
        bytes: bytes.to_vec(),
        hash: Some("hash".into()),
        created_at: start + Duration::seconds(3),
        expires_at: start + Duration::days(1),
    };
    let id = |store_names: &Names, name: &str| {
        let id = store_names
            .0
            .iter()
            .find_map(|(id, n)| (n == name).then_some(*id))
            .expect("named");
        MessageId(id)
    };
    let (a1, a4) = (id(names, "a1"), id(names, "a4"));
    let (app_x, app_y, app_z) = (
        MessageId(Uuid::new_v4()),
        MessageId(Uuid::new_v4()),
        MessageId(Uuid::new_v4()),
    );
    names.name(app_x.0, "app_x");
    names.name(app_y.0, "app_y");
    names.name(app_z.0, "app_z");

    let mut out = String::new();
    let mut upload = async |names: &Names, who: UserId, to: MessageId, bytes: &[u8], quota| {
        let result = store
            .contents()
            .attach_content(who, to, content(bytes), quota)
            .await;
        let line = answer(names, &result);
        let _ = writeln!(out, "{} -> {}: {line}", names.of(who.0), names.of(to.0));
        line
    };
    assert_eq!(upload(names, alice, a1, b"one", u64::MAX).await, "ok a1");
    assert_eq!(
        upload(names, bob, a1, b"not bob's", u64::MAX).await,
        "error forbidden about_rows=false"
    );
    assert_eq!(upload(names, alice, app_x, b"two", u64::MAX).await, "ok a2");
    assert_eq!(
        upload(names, alice, app_x, b"two'", u64::MAX).await,
        "ok a2"
    );
    assert_eq!(
        upload(names, alice, app_y, b"three", u64::MAX).await,
        "ok a3"
    );
    // a4 is taken by id first: no content-less message is left for app_z.
    assert_eq!(upload(names, alice, a4, b"four", u64::MAX).await, "ok a4");
    assert_eq!(
        upload(names, alice, app_z, b"five", u64::MAX).await,
        "error forbidden about_rows=false"
    );
    // Over quota: the other unread contents (a2, a3, a4) count, a1's own does not.
    let used = ["two'", "three", "four"]
        .map(str::len)
        .iter()
        .sum::<usize>() as u64;
    assert_eq!(
        upload(names, alice, a1, b"0123456789", used + 9).await,
        "error quota_exceeded about_rows=false"
    );
    assert_eq!(
        upload(names, alice, a1, b"0123456789", used + 10).await,
        "ok a1"
    );
    let read = ReadMark {
        message: a1,
        reader: bob,
        conversation: Some(conversation),
    };
    store
        .write_group(&[], &[read], &[], start + Duration::seconds(4))
        .await
        .expect("read a1");
    assert_eq!(
        upload(names, alice, a1, b"late", u64::MAX).await,
        "error already_read about_rows=false"
    );

    let later = start + Duration::seconds(5);
    for name in ["a1", "a2", "a3", "a4"] {
        let message = id(names, name);
        let stored = store
            .contents()
            .content(message, later)
            .await
            .expect("content");
        let stored = stored.map(|c| {
            (
                String::from_utf8_lossy(&c.content).into_owned(),
                c.content_hash,
            )
        });
        let _ = writeln!(out, "{name} content: {stored:?}");
    }
    let named = store.contents().message_named(app_x).await.expect("named");
    let _ = writeln!(
        out,
        "app_x names {:?}",
        named.map(|m| names.of(m.id.0).to_owned())
    );
    out
}

#[tokio::test]
async fn the_engines_answer_content_uploads_alike() {
    on_both_engines!(uploads);
}
