//! SQLite's log under a writer that never stops: the checkpoint beside the writer and the
//! writer's own part of it (`Store::checkpoint_wal`, `sqlite::group::Writer::finish_checkpoint`).

use super::{EnvelopeMessage, NewEnvelope, NewMessage, NewUser, Store};
use crate::model::{MessageId, UserId, now};

/// Frames in the SQLite log of the database at `path`, as its index says (`mxFrame`, a
/// native-endian `u32` at byte 16 of the `-shm` file): reading them must not checkpoint.
/// (Closing the file drops this process's POSIX locks on it: harmless in a test that no
/// other process shares.)
fn frames_in_log(path: &std::path::Path) -> u32 {
    let index = std::fs::read(format!("{}-shm", path.display())).expect("log index");
    u32::from_ne_bytes(index[16..20].try_into().expect("4 bytes"))
}

/// What a test sends: each kind goes through a loop of its own that holds the writer.
#[derive(Clone, Copy)]
enum Traffic {
    /// Plain messages, through the group commit.
    Messages,
    /// One envelope a message, to the recipient's device 1, through the envelope writer.
    Envelopes,
}

/// A store on a database file of its own, with two users and their conversation.
struct Scratch {
    store: Store,
    path: std::path::PathBuf,
    conversation: crate::model::ConversationId,
    from: UserId,
    to: UserId,
}

impl Scratch {
    async fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("kisse-ckpt-{}.db", uuid::Uuid::new_v4().simple()));
        let store = Store::connect(
            &format!("sqlite://{}", path.display()),
            2,
            std::time::Duration::ZERO,
        )
        .await
        .expect("store");
        let mut users = Vec::new();
        for name in ["alice", "bob"] {
            let new = NewUser {
                id: UserId(uuid::Uuid::now_v7()),
                email: format!("{name}@example.com"),
                username: name.into(),
                name: None,
                password_hash: "x".into(),
                created_at: now(),
            };
            users.push(store.users().create_user(&new).await.expect("user").id);
        }
        let (conversation, _) = store
            .conversations()
            .get_or_create_conversation(users[0], users[1], now())
            .await
            .expect("conversation");
        // The recipient's device 1, which envelopes are for.
        store
            .devices()
            .upsert(users[1], 1, None, now())
            .await
            .expect("device");
        Self {
            store,
            path,
            conversation: conversation.id,
            from: users[0],
            to: users[1],
        }
    }

    /// Sends `n` messages, each committed alone.
    async fn send(&self, traffic: Traffic, n: usize) {
        for _ in 0..n {
            match traffic {
                Traffic::Messages => self.send_message().await,
                Traffic::Envelopes => self.send_envelope().await,
            }
        }
    }

    async fn send_message(&self) {
        let message = NewMessage {
            id: MessageId(uuid::Uuid::now_v7()),
            conversation_id: self.conversation,
            sender_id: self.from,
            recipient_id: self.to,
            message_type: "text".into(),
            session_id: None,
            created_at: now(),
            withheld: false,
        };
        self.store
            .messages()
            .insert_message(message)
            .await
            .expect("sent");
    }

    async fn send_envelope(&self) {
        let message = EnvelopeMessage {
            id: MessageId(uuid::Uuid::now_v7()),
            sender_id: self.from,
            sender_device: 1,
            recipient_id: self.to,
            conversation_id: Some(self.conversation),
            message_type: "text".into(),
            created_at: now(),
            envelopes: vec![NewEnvelope {
                device_id: 1,
                kind: 1,
                content: vec![7; 200],
            }],
        };
        let pending = self
            .store
            .envelopes()
            .queue(message, 1000)
            .await
            .expect("queued");
        pending.stored().await.expect("stored");
    }

    /// Sends two messages: the writer finishes the checkpoint after the first, and the second
    /// starts the log over.
    async fn log_starts_over_within_two_groups(&self, traffic: Traffic) {
        let before = frames_in_log(&self.path);
        self.send(traffic, 2).await;
        let after = frames_in_log(&self.path);
        assert!(
            after < before,
            "the log started over: {after} frames after, {before} before"
        );
    }

    async fn remove(self) {
        self.store.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.path.display()));
        }
    }
}

/// A checkpoint beside the writer that readers held back leaves part of the log uncopied;
/// the writer copies the rest after its next group, so the group after that starts the log
/// over instead of growing it until the backstop (`WAL_BACKSTOP_PAGES`), where the writer
/// copied and synced at once all the checkpoints beside it had not (4–9 ms, twice a second
/// at 10,000 msg/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_starts_over_after_a_checkpoint_readers_held_back() {
    let db = Scratch::new().await;
    db.send(Traffic::Messages, 50).await;
    // A reader in a transaction keeps the log from being copied past where it started.
    let reader = rusqlite::Connection::open(&db.path).expect("reader");
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM messages;")
        .expect("read");
    db.send(Traffic::Messages, 50).await;
    db.store.checkpoint_wal().await.expect("checkpoint");
    reader.execute_batch("COMMIT").expect("read ends");
    db.log_starts_over_within_two_groups(Traffic::Messages)
        .await;
    db.remove().await;
}

/// A checkpoint beside the writer that copied the whole log while a transaction was being
/// written: that transaction commits after it, so the log is not whole any more and SQLite
/// would not start it over; the writer copies the rest after its next group, so the group
/// after that starts the log over. Left alone, the log grew to the backstop every third of a
/// second at 10,000 msg/s, where the writer copied thousands of frames at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_starts_over_after_a_whole_checkpoint_a_commit_followed() {
    a_whole_checkpoint_a_commit_followed(Traffic::Messages).await;
}

/// The same with envelopes alone (the next app's traffic): the envelope writer finishes the
/// checkpoint as the group commit does. It did not: under envelopes alone the log grew to the
/// backstop, where the writer copied and synced it all at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_starts_over_under_envelopes_alone() {
    a_whole_checkpoint_a_commit_followed(Traffic::Envelopes).await;
}

async fn a_whole_checkpoint_a_commit_followed(traffic: Traffic) {
    let db = Scratch::new().await;
    db.send(traffic, 50).await;
    // Another writer, as the group loop is when a group is being written during the pass.
    let in_flight = rusqlite::Connection::open(&db.path).expect("second writer");
    in_flight
        .execute_batch("BEGIN IMMEDIATE; UPDATE users SET name = 'in flight';")
        .expect("write");
    db.store.checkpoint_wal().await.expect("checkpoint");
    in_flight.execute_batch("COMMIT").expect("commit");
    db.log_starts_over_within_two_groups(traffic).await;
    db.remove().await;
}
