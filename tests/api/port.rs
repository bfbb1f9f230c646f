//! `port-db` and `backup`, run as the built binary: a database written on SQLite, ported,
//! then served from PostgreSQL keeps its logins, ids, history and pending deliveries, and
//! routes new messages; a backup taken while the server writes starts a server with what was
//! acknowledged before it began.

use std::{
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::{
    calls::app_call,
    cli::Scratch,
    common::{Engine, PgSchema, TestApp, TestUser, WsClient},
    consent::{post_story, story_ids},
    keys::full_upload,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_kisse-backend");
const BLOB: &str = "q83vEjRWeJA="; // 8 opaque bytes

/// Runs the binary in `scratch` with only `DATABASE_URL` set.
async fn kisse(scratch: &Scratch, args: &[&str], database_url: &str) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env_clear()
        .env("DATABASE_URL", database_url)
        .current_dir(&scratch.0)
        .output()
        .await
        .expect("run the binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Sends a message from `from` to `to` over their sockets; returns its id.
async fn send(from: &mut WsClient, to_ws: &mut WsClient, to: &TestUser) -> String {
    let id = Uuid::new_v4().to_string();
    from.send(
        "message",
        json!({"recipientId": to.id, "messageType": "text", "sessionId": "s", "id": id}),
    )
    .await;
    from.expect("message_ack").await;
    assert_eq!(to_ws.expect("message").await["id"], id.as_str());
    id
}

async fn get_ok(app: &TestApp, path: &str, user: &TestUser) -> Value {
    let (status, body) = app.get(path, &user.token).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

fn ids(list: &Value) -> Vec<Value> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|item| item["id"].clone())
        .collect()
}

async fn login(app: &TestApp, user: &TestUser) -> Value {
    let (status, session) = app.login(user).await;
    assert_eq!(status, StatusCode::OK, "login {}: {session}", user.email);
    session
}

/// What the users see, compared before and after the port.
#[derive(Debug, PartialEq)]
struct Seen {
    history: Value,
    conversations: Vec<Value>,
    channel_history: Value,
    calls: Vec<Value>,
    devices: Value,
    stories: Vec<String>,
}

async fn seen(
    app: &TestApp,
    alice: &TestUser,
    bob: &TestUser,
    conversation: &str,
    channel: &str,
) -> Seen {
    Seen {
        history: get_ok(
            app,
            &format!("/api/conversations/{conversation}/messages"),
            alice,
        )
        .await,
        conversations: ids(&get_ok(app, "/api/conversations", alice).await),
        channel_history: get_ok(app, &format!("/api/channels/{channel}/messages"), alice).await,
        calls: ids(&get_ok(app, "/api/calls/history", alice).await),
        devices: get_ok(app, "/api/devices", alice).await,
        stories: story_ids(app, bob).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ported_database_serves_the_same_accounts_ids_and_history_from_postgresql() {
    if !Engine::Postgres.available() {
        eprintln!("TEST_DATABASE_URL is not set: port-db test not run");
        return;
    }
    let scratch = Scratch::new();
    let sqlite = scratch.database_url();
    let app = TestApp::spawn_on_database(&sqlite, &[]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    for (user, tag) in [(&alice, 1), (&bob, 2)] {
        let (status, body) = app
            .request(
                Method::PUT,
                "/api/keys",
                Some(&user.token),
                Some(full_upload(1, tag, 1..=30)),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.push(send(&mut a, &mut b, &bob).await);
    }
    send(&mut b, &mut a, &alice).await; // a reply: they are contacts, and see each other's stories
    let path = format!("/api/messages/{}/content", sent[1]);
    let upload = json!({"message_id": sent[1], "content_data": BLOB, "content_hash": null, "expires_at": "2099-01-01T00:00:00.000"});
    let (status, body) = app.post(&path, &alice.token, upload).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Carol is offline: her message waits in her inbox.
    let pending = Uuid::new_v4().to_string();
    a.send(
        "message",
        json!({"recipientId": carol.id, "messageType": "text", "id": pending}),
    )
    .await;
    a.expect("message_ack").await;
    app_call(&app, &alice, &mut a, &bob, "1732480000000").await;
    let story = post_story(&app, &alice).await;
    let (status, channel) = app
        .post(
            "/api/channels",
            &alice.token,
            json!({"name": "news", "is_private": false}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{channel}");
    let channel = channel["id"].as_str().expect("id").to_owned();
    let channel_path = format!("/api/channels/{channel}/messages");
    let (status, _) = app
        .post(&channel_path, &alice.token, json!({"message_type": "text"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app
        .post(
            &format!("/api/messages/{}/read", sent[0]),
            &bob.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let conversation = app.conversation(&alice, &bob).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let before = seen(&app, &alice, &bob, &conversation, &channel).await;
    assert_eq!(before.history.as_array().map(Vec::len), Some(4));
    assert!(before.stories.contains(&story));
    a.close().await;
    b.close().await;
    app.stop().await;

    let target = PgSchema::create().await;
    let ported = kisse(&scratch, &["port-db", "--to", &target.url()], &sqlite).await;
    let stdout = text(&ported.stdout);
    assert!(ported.status.success(), "{ported:?}");
    for line in [
        "users: 3/3",
        "messages: 5/5",
        "inbox: ",
        "calls: 1/1",
        "stories: 1/1",
    ] {
        assert!(stdout.contains(line), "{line:?} missing:\n{stdout}");
    }

    let app = TestApp::spawn_on_database(&target.url(), &[]).await;
    assert_eq!(login(&app, &alice).await["user"]["id"], alice.id.as_str());
    // Sessions came along: the tokens of before still work, and see the same.
    let after = seen(&app, &alice, &bob, &conversation, &channel).await;
    assert_eq!(after, before);
    let (status, content) = app.get(&path, &bob.token).await;
    assert_eq!(status, StatusCode::OK, "{content}");
    assert_eq!(content["content_data"], BLOB);
    let bundle = get_ok(&app, &format!("/api/keys/{}", alice.id), &bob).await;
    assert!(bundle.to_string().contains("one_time_prekey"), "{bundle}");

    // What was pending is delivered on connect.
    let mut c = app.ws(&carol).await;
    assert_eq!(c.expect("message").await["id"], pending.as_str());

    // New rows get numbers after the old ones (the sequences moved past them).
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    let new = send(&mut a, &mut b, &bob).await;
    let history = get_ok(
        &app,
        &format!("/api/conversations/{conversation}/messages"),
        &alice,
    )
    .await;
    assert_eq!(history[0]["id"], new.as_str());
    assert!(
        history[0]["seq"].as_i64() > before.history[0]["seq"].as_i64(),
        "{history}"
    );
    assert_eq!(
        history.as_array().expect("list")[1..],
        before.history.as_array().expect("list")[..]
    );
    let (status, post) = app
        .post(&channel_path, &alice.token, json!({"message_type": "text"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{post}");
    assert!(post["seq"].as_i64() > before.channel_history[0]["seq"].as_i64());
    post_story(&app, &alice).await;
    app.register("dave").await;

    // A second port into the now filled database is refused and changes nothing.
    let again = kisse(&scratch, &["port-db", "--to", &target.url()], &sqlite).await;
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(text(&again.stderr).contains("not empty"), "{again:?}");
    let unchanged = get_ok(
        &app,
        &format!("/api/conversations/{conversation}/messages"),
        &alice,
    )
    .await;
    // The same messages (the new one's delivery may have been recorded meanwhile).
    let rows = |history: &Value| -> Vec<(Value, Value)> {
        let list = history.as_array().expect("list").iter();
        list.map(|m| (m["id"].clone(), m["seq"].clone())).collect()
    };
    assert_eq!(rows(&unchanged), rows(&history));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_db_refuses_a_target_at_other_migrations_and_changes_nothing() {
    if !Engine::Postgres.available() {
        eprintln!("TEST_DATABASE_URL is not set: port-db test not run");
        return;
    }
    let scratch = Scratch::new();
    let sqlite = scratch.database_url();
    assert!(
        kisse(&scratch, &["migrate"], &sqlite)
            .await
            .status
            .success()
    );
    let target = PgSchema::create().await;
    // Migrated by this binary and empty: that target is fine, and stays so for a retry.
    assert!(
        kisse(&scratch, &["migrate"], &target.url())
            .await
            .status
            .success()
    );
    let target_db = sqlx::PgPool::connect(&target.url()).await.expect("target");
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&target_db)
    .await
    .expect("forget the last migration");
    let refused = kisse(&scratch, &["port-db", "--to", &target.url()], &sqlite).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        text(&refused.stderr).contains("target database is at migration"),
        "{refused:?}"
    );
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
        .fetch_all(&target_db)
        .await
        .expect("versions");
    let latest = applied.iter().max().copied().unwrap_or_default();
    assert_eq!(applied.len() as i64, latest, "no migration was applied");

    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         SELECT version + 1, 'back', TRUE, checksum, 0 FROM _sqlx_migrations
         WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&target_db)
    .await
    .expect("put a migration back (with another checksum)");
    let refused = kisse(&scratch, &["port-db", "--to", &target.url()], &sqlite).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    target_db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_the_server_writes_starts_a_server_with_what_was_acknowledged() {
    let scratch = Scratch::new();
    let live = scratch.database_url();
    let app = TestApp::spawn_on_database(&live, &[]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.ws(&alice).await;
    let message = |id: &str| json!({"recipientId": bob.id, "messageType": "text", "id": id});
    let mut acked = Vec::new();
    for _ in 0..20 {
        let id = Uuid::new_v4().to_string();
        a.send("message", message(&id)).await;
        a.expect("message_ack").await;
        acked.push(id);
    }

    // A writer keeps sending while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let (writing, started) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn({
        let stop = stop.clone();
        let bob = bob.id.clone();
        async move {
            let mut writing = Some(writing);
            while !stop.load(Ordering::SeqCst) {
                let id = Uuid::new_v4().to_string();
                a.send(
                    "message",
                    json!({"recipientId": bob, "messageType": "text", "id": id}),
                )
                .await;
                a.expect("message_ack").await;
                if let Some(writing) = writing.take() {
                    let _ = writing.send(());
                }
            }
        }
    });
    started.await.expect("the writer is writing");
    let file = scratch.0.join("backup.db");
    let backup = kisse(&scratch, &["backup", file.to_str().expect("UTF-8")], &live).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("the writer");
    assert!(backup.status.success(), "{backup:?}");
    assert!(
        text(&backup.stdout).contains("backup written to"),
        "{backup:?}"
    );
    app.stop().await;

    let restored = TestApp::spawn_on_database(&format!("sqlite://{}", file.display()), &[]).await;
    login(&restored, &alice).await;
    let conversation = restored.conversation(&alice, &bob).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let history = get_ok(
        &restored,
        &format!("/api/conversations/{conversation}/messages?limit=200"),
        &alice,
    )
    .await;
    let kept: Vec<&str> = history
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    for id in &acked {
        assert!(kept.contains(&id.as_str()), "{id} lost in the backup");
    }
}

#[tokio::test]
async fn backup_and_port_db_refuse_bad_input_and_change_nothing() {
    let scratch = Scratch::new();
    let sqlite = scratch.database_url();
    assert!(
        kisse(&scratch, &["migrate"], &sqlite)
            .await
            .status
            .success()
    );

    // A backup never overwrites a file.
    let existing = scratch.0.join("existing.db");
    std::fs::write(&existing, "keep me").expect("write");
    let refused = kisse(&scratch, &["backup", "existing.db"], &sqlite).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        text(&refused.stderr).contains("already exists"),
        "{refused:?}"
    );
    assert_eq!(std::fs::read(&existing).expect("read"), b"keep me");

    // PostgreSQL has its own tools; its password is never printed.
    let postgres = "postgres://kisse:db-password-1@127.0.0.1:1/kisse";
    let refused = kisse(&scratch, &["backup", "copy.db"], postgres).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(text(&refused.stderr).contains("pg_dump"), "{refused:?}");
    assert!(!scratch.0.join("copy.db").exists());
    let refused = kisse(&scratch, &["port-db", "--to", postgres], postgres).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("copies from SQLite"), "{stderr}");
    for output in [&refused.stdout, &refused.stderr] {
        assert!(!text(output).contains("db-password-1"), "{refused:?}");
    }

    // A source behind this binary's migrations is refused, and left as it was.
    let behind = sqlx::SqlitePool::connect(&sqlite).await.expect("open");
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(&behind)
    .await
    .expect("forget the last migration");
    let refused = kisse(&scratch, &["port-db", "--to", postgres], &sqlite).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        text(&refused.stderr).contains("run `kisse-backend migrate`"),
        "{refused:?}"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&behind)
        .await
        .expect("count");
    assert_eq!(
        left as usize,
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
            .expect("dir")
            .count()
            - 1
    );
    behind.close().await;

    // The target must be PostgreSQL; the source must exist (and is not created).
    let refused = kisse(&scratch, &["port-db", "--to", "sqlite://other.db"], &sqlite).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        text(&refused.stderr).contains("PostgreSQL URL"),
        "{refused:?}"
    );
    let missing = format!("sqlite://{}", scratch.0.join("missing.db").display());
    let refused = kisse(&scratch, &["port-db", "--to", postgres], &missing).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        text(&refused.stderr).contains("no SQLite database"),
        "{refused:?}"
    );
    assert!(!scratch.0.join("missing.db").exists());
}
