//! SQLite's log under a writer that never stops: the checkpoint beside the writer and the
//! writer's own part of it (`Store::checkpoint_wal`, `Batcher::finish_checkpoint`).

use super::{NewMessage, NewUser, Store};
use crate::model::{MessageId, UserId, now};

/// Frames in the SQLite log of the database at `path`, as its index says (`mxFrame`, a
/// native-endian `u32` at byte 16 of the `-shm` file): reading them must not checkpoint.
/// (Closing the file drops this process's POSIX locks on it: harmless in a test that no
/// other process shares.)
fn frames_in_log(path: &std::path::Path) -> u32 {
    let index = std::fs::read(format!("{}-shm", path.display())).expect("log index");
    u32::from_ne_bytes(index[16..20].try_into().expect("4 bytes"))
}

/// A checkpoint beside the writer that readers held back leaves part of the log uncopied;
/// the writer copies the rest after its next group, so the group after that starts the log
/// over instead of growing it until the backstop (`WAL_BACKSTOP_PAGES`), where the writer
/// copied and synced at once all the checkpoints beside it had not (4–9 ms, twice a second
/// at 10,000 msg/s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_starts_over_after_a_checkpoint_readers_held_back() {
    let path =
        std::env::temp_dir().join(format!("kisse-ckpt-{}.db", uuid::Uuid::new_v4().simple()));
    let url = format!("sqlite://{}", path.display());
    let store = Store::connect(&url, 2).await.expect("store");
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
    let (from, to) = (users[0], users[1]);
    let send = |n: usize| {
        let store = store.clone();
        async move {
            for _ in 0..n {
                let message = NewMessage {
                    id: MessageId(uuid::Uuid::now_v7()),
                    conversation_id: conversation.id,
                    sender_id: from,
                    recipient_id: to,
                    message_type: "text".into(),
                    session_id: None,
                    created_at: now(),
                    withheld: false,
                };
                store
                    .messages()
                    .insert_message(message)
                    .await
                    .expect("sent");
            }
        }
    };
    send(50).await;
    // A reader in a transaction keeps the log from being copied past where it started.
    let reader = rusqlite::Connection::open(&path).expect("reader");
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM messages;")
        .expect("read");
    send(50).await;
    store.checkpoint_wal().await.expect("checkpoint");
    reader.execute_batch("COMMIT").expect("read ends");
    let before = frames_in_log(&path);

    send(2).await;
    let after = frames_in_log(&path);
    assert!(
        after < before,
        "the log started over: {after} frames after, {before} before"
    );
    store.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
