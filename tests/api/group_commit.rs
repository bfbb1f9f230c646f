//! A group commit that the database refuses because of some of its rows fails only the jobs at
//! fault: everybody else's messages and read marks in the same group are committed as usual.
//! A message that fails, in its commit or before, is named in its `error` frame.

use std::collections::HashSet;

use crate::common::{Engine, ServerProcess, TestApp, TestUser, WsClient, eventually};
use serde_json::{Value, json};
use sqlx::Connection;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

scenarios!(
    a_message_whose_rows_are_gone_fails_alone_beside_other_users_traffic,
    the_same_when_groups_wait_for_more_messages,
    a_message_refused_before_its_commit_is_named_in_its_error,
);

/// Innocent messages alice sends bob.
const INNOCENT: usize = 200;
/// One message of carol's to dave every `FAULTY_EVERY` innocent ones.
const FAULTY_EVERY: usize = 10;
/// Messages bob reads during the burst (sent to him before it).
const READS: usize = 20;

/// Dave's account is deleted from the database behind the server's back, while the server
/// still has his conversation with carol in memory (as when an account deletion races a send):
/// carol's messages to him reach the group commit and break a foreign key. Alice and bob, who
/// message and read at the same time, share groups with them: every one of their messages is
/// acknowledged and every read mark relayed, and carol gets one `error` frame per message she
/// sent, naming it by the id she gave it or, without one, by the server's.
async fn a_message_whose_rows_are_gone_fails_alone_beside_other_users_traffic(engine: Engine) {
    rows_gone_beside_traffic(engine, "0").await;
}

/// The same with SQLite's group commits gathering messages (`GROUP_COMMIT_WAIT_MS`): larger
/// groups, refused and halved the same way, every innocent message acknowledged once.
async fn the_same_when_groups_wait_for_more_messages(engine: Engine) {
    rows_gone_beside_traffic(engine, "5").await;
}

async fn rows_gone_beside_traffic(engine: Engine, group_commit_wait_ms: &str) {
    let app = TestApp::spawn_with(
        engine,
        &[
            // One group writer on PostgreSQL (half the pool): two conversations share a group
            // only on the same writer, and these would otherwise go to either of two.
            ("DB_MAX_CONNECTIONS", "2"),
            ("WS_MESSAGES_PER_SECOND", "10000"),
            ("WS_FRAMES_PER_SECOND", "10000"),
            ("GROUP_COMMIT_WAIT_MS", group_commit_wait_ms),
        ],
    )
    .await;
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    let (carol, dave) = (app.register("carol").await, app.register("dave").await);
    app.conversation(&alice, &bob).await;
    app.conversation(&carol, &dave).await;
    let (mut alice_ws, mut bob_ws) = (app.ws(&alice).await, app.ws(&bob).await);
    let mut carol_ws = app.ws(&carol).await;

    let mut to_read = Vec::new();
    for _ in 0..READS {
        to_read.push(send(&mut alice_ws, &bob, Some(Uuid::now_v7())).await);
        alice_ws.expect("message_ack").await;
        bob_ws.expect("message").await;
    }
    delete_user(&app, &dave).await;

    let (mut innocent, mut faulty_ids, mut faulty_without_id) = (HashSet::new(), HashSet::new(), 0);
    let mut reads = to_read.iter();
    for i in 0..INNOCENT {
        innocent.insert(send(&mut alice_ws, &bob, Some(Uuid::now_v7())).await);
        if i % FAULTY_EVERY == FAULTY_EVERY / 2 {
            if faulty_ids.len() <= faulty_without_id {
                faulty_ids.insert(send(&mut carol_ws, &dave, Some(Uuid::now_v7())).await);
            } else {
                send(&mut carol_ws, &dave, None).await;
                faulty_without_id += 1;
            }
        }
        if i % 2 == 0
            && let Some(id) = reads.next()
        {
            bob_ws.send("read_receipt", json!({"messageId": id})).await;
        }
    }
    for id in reads {
        bob_ws.send("read_receipt", json!({"messageId": id})).await;
    }

    // Alice: every message acknowledged, every read relayed.
    let (mut acked, mut read) = (HashSet::new(), HashSet::new());
    while acked.len() < INNOCENT || read.len() < READS {
        let frame = alice_ws.recv().await;
        let payload = &frame["payload"];
        match frame["type"].as_str() {
            Some("message_ack") => {
                assert_eq!(payload["id"], payload["clientId"], "{frame}");
                acked.insert(text(&payload["clientId"]));
            }
            Some("read_receipt") => {
                read.insert(text(&payload["messageId"]));
            }
            Some("delivery_receipt" | "presence_update") => {}
            _ => panic!("alice got {frame}"),
        }
    }
    assert_eq!(acked, innocent);
    assert_eq!(read, to_read.iter().cloned().collect());

    // Bob: every message, and no error about his reads.
    let mut received = HashSet::new();
    while received.len() < INNOCENT {
        let frame = bob_ws.recv().await;
        match frame["type"].as_str() {
            Some("message") => {
                received.insert(text(&frame["payload"]["id"]));
            }
            Some("delivery_receipt" | "presence_update") => {}
            _ => panic!("bob got {frame}"),
        }
    }
    assert_eq!(received, innocent);
    bob_ws.expect_quiet().await;

    // Carol: an error for each message, naming it.
    let (mut named, mut server_ids) = (HashSet::new(), HashSet::new());
    while named.len() + server_ids.len() < faulty_ids.len() + faulty_without_id {
        let error = carol_ws.expect("error").await;
        let id = text(&error["id"]);
        match error.get("clientId") {
            Some(client_id) => {
                assert_eq!((&error["client_id"], &error["id"]), (client_id, client_id));
                named.insert(id);
            }
            None => {
                assert!(error.get("client_id").is_none(), "{error}");
                server_ids.insert(id);
            }
        }
    }
    assert_eq!(named, faulty_ids);
    assert_eq!(server_ids.len(), faulty_without_id, "one server id each");
    assert!(server_ids.is_disjoint(&faulty_ids));
    carol_ws.expect_quiet().await;
}

/// A message refused before it is queued (a recipient that does not exist) is named by the id
/// its client gave it; other frames' errors stay `{code, message}`.
async fn a_message_refused_before_its_commit_is_named_in_its_error(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let mut socket = app.ws(&alice).await;
    let id = Uuid::now_v7();
    let nobody = json!({"recipientId": Uuid::now_v7(), "messageType": "text", "id": id});
    socket.send("message", nobody).await;
    let error = socket.expect("error").await;
    assert_eq!(
        error,
        json!({"code": "not_found", "message": "user not found", "id": id, "client_id": id,
               "clientId": id})
    );
    socket.send("read_receipt", json!({"messageId": id})).await;
    let error = socket.expect("error").await;
    assert_eq!(
        error,
        json!({"code": "not_found", "message": "message not found"})
    );
}

/// Sends a `message` frame from `socket` to `to`, with the client id `id`; returns its text.
async fn send(socket: &mut WsClient, to: &TestUser, id: Option<Uuid>) -> String {
    let mut payload = json!({"recipientId": to.id, "messageType": "text"});
    if let Some(id) = id {
        payload["id"] = json!(id);
    }
    socket.send("message", payload).await;
    id.map(|id| id.to_string()).unwrap_or_default()
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("a string, not {value}"))
        .to_owned()
}

/// Deletes `user`'s row straight from the database (cascading to their conversations), which
/// the server does not hear of.
async fn delete_user(app: &TestApp, user: &TestUser) {
    let url = &app.settings()["DATABASE_URL"];
    let id: Uuid = user.id.parse().expect("uuid");
    let sql = "DELETE FROM users WHERE id = $1";
    let deleted = if url.starts_with("sqlite:") {
        let mut db = sqlx::SqliteConnection::connect(url).await.expect("SQLite");
        sqlx::query(sql)
            .bind(id)
            .execute(&mut db)
            .await
            .map(|done| done.rows_affected())
    } else {
        let mut db = sqlx::PgConnection::connect(url).await.expect("PostgreSQL");
        sqlx::query(sql)
            .bind(id)
            .execute(&mut db)
            .await
            .map(|done| done.rows_affected())
    };
    assert_eq!(deleted.expect("delete"), 1);
}

/// Messages sent in one burst.
const BURST: usize = 600;

/// SQLite's writer gathers each commit's log pages in memory and writes them just before the
/// fsync (`store/sqlite/coalescing_vfs.rs`; its unit test covers commits of megabytes). An
/// acknowledgement means the message is on disk: once a burst is acknowledged, the server
/// process is killed without warning, and another server on the same file replays every message,
/// in order, from a database that passes SQLite's integrity check. (SQLite only: PostgreSQL has
/// no such writer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_burst_survives_the_process_being_killed() {
    let mut app = TestApp::spawn_with(
        Engine::Sqlite,
        &[
            ("WS_MESSAGES_PER_SECOND", "10000"),
            ("WS_FRAMES_PER_SECOND", "10000"),
        ],
    )
    .await;
    let (alice, bob) = (app.register("alice").await, app.register("bob").await);
    app.conversation(&alice, &bob).await;

    let process = ServerProcess::spawn(&app);
    let health = format!("http://{}/health", process.addr);
    eventually("the process serves", || async {
        reqwest::get(&health)
            .await
            .is_ok_and(|response| response.status().is_success())
    })
    .await;
    let request = format!("ws://{}/ws?token={}", process.addr, alice.token)
        .into_client_request()
        .expect("ws request");
    let mut alice_ws = WsClient::connect(request).await.expect("socket opens");
    let mut sent = Vec::with_capacity(BURST);
    for _ in 0..BURST {
        sent.push(send(&mut alice_ws, &bob, Some(Uuid::now_v7())).await);
    }
    let mut acked = HashSet::new();
    while acked.len() < BURST {
        let ack = alice_ws.expect("message_ack").await;
        acked.insert(text(&ack["id"]));
    }
    assert_eq!(acked, sent.iter().cloned().collect::<HashSet<_>>());
    drop(process); // SIGKILL

    app.restart().await;
    let mut bob_ws = app
        .ws_url(&format!("/ws?token={}&since=0", bob.token))
        .await
        .expect("socket opens");
    for id in &sent {
        assert_eq!(&text(&bob_ws.expect("message").await["id"]), id);
    }
    let url = &app.settings()["DATABASE_URL"];
    let mut db = sqlx::SqliteConnection::connect(url).await.expect("SQLite");
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut db)
        .await
        .expect("integrity check");
    assert_eq!(check, "ok");
}
