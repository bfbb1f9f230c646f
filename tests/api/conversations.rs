//! Conversations over REST: get-or-create, the list the app shows, and history.

use crate::common::{Engine, TestApp};
use reqwest::StatusCode;
use serde_json::{Value, json};

scenarios!(
    concurrent_get_or_create_yields_one_conversation,
    opening_a_conversation_with_self_or_a_stranger_fails,
    list_shows_participant_name_unread_count_and_status,
    concurrent_reads_each_send_one_receipt_and_clear_unread,
    a_third_user_cannot_read_a_conversation,
    history_is_newest_first_and_pages_with_before,
);

async fn concurrent_get_or_create_yields_one_conversation(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let calls = (0..12).map(|i| {
        let (from, to) = if i % 2 == 0 {
            (&alice, &bob)
        } else {
            (&bob, &alice)
        };
        app.post(
            "/api/conversations",
            &from.token,
            json!({"participant_id": to.id}),
        )
    });
    let results = futures_util::future::join_all(calls).await;
    let created = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "exactly one call creates it: {results:?}");
    assert!(results.iter().all(|(status, _)| status.is_success()));
    let first_id = &results[0].1["id"];
    assert!(results.iter().all(|(_, c)| &c["id"] == first_id));
    let (_, list) = app.get("/api/conversations", &alice.token).await;
    assert_eq!(list.as_array().expect("array").len(), 1);
}

async fn opening_a_conversation_with_self_or_a_stranger_fails(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let (status, _) = app
        .post(
            "/api/conversations",
            &alice.token,
            json!({"participant_id": alice.id}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let unknown = uuid::Uuid::new_v4().to_string();
    let (status, _) = app
        .post(
            "/api/conversations",
            &alice.token,
            json!({"participant_id": unknown}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post(
            "/api/conversations",
            &alice.token,
            json!({"participant_id": "nope"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, list) = app.get("/api/conversations", &alice.token).await;
    assert_eq!(list, json!([]));
}

async fn list_shows_participant_name_unread_count_and_status(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let opened = app.conversation(&alice, &bob).await;
    for key in [
        "id",
        "participant_id",
        "participant_name",
        "participant_avatar",
        "last_message",
        "last_message_time",
        "unread_count",
        "participant_status",
    ] {
        assert!(opened.get(key).is_some(), "missing {key}: {opened}");
    }
    assert_eq!(opened["participant_id"], bob.id);
    assert_eq!(
        opened["participant_name"], "bob",
        "falls back to the username"
    );
    assert_eq!(opened["unread_count"], 0);
    assert_eq!(opened["participant_status"], "offline");
    assert!(opened["last_message"].is_null() && opened["last_message_time"].is_null());

    let mut bob_socket = app.ws(&bob).await;
    let mut alice_socket = app.ws(&alice).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = uuid::Uuid::new_v4();
        ids.push(id);
        alice_socket
            .send(
                "message",
                json!({"id": id, "recipientId": bob.id, "messageType": "text", "sessionId": "s"}),
            )
            .await;
        alice_socket.expect("message_ack").await;
        bob_socket.expect("message").await;
    }
    // A retry of a stored message is not a second unread message.
    alice_socket
        .send(
            "message",
            json!({"id": ids[0], "recipientId": bob.id, "messageType": "text", "sessionId": "s"}),
        )
        .await;
    alice_socket.expect("message_ack").await;
    let (_, list) = app.get("/api/conversations", &bob.token).await;
    let entry = &list[0];
    assert_eq!(entry["participant_id"], alice.id);
    assert_eq!(entry["unread_count"], 2);
    assert_eq!(entry["participant_status"], "online");
    assert!(
        entry["last_message_time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let (_, alice_list) = app.get("/api/conversations", &alice.token).await;
    assert_eq!(
        alice_list[0]["unread_count"], 0,
        "own messages are not unread"
    );

    // Reading counts down, once per message; a reply counts for its own recipient only.
    for _ in 0..2 {
        let (status, _) = app
            .post(
                &format!("/api/messages/{}/read", ids[0]),
                &bob.token,
                json!({}),
            )
            .await;
        assert!(status.is_success());
    }
    bob_socket
        .send(
            "message",
            json!({"recipientId": alice.id, "messageType": "text", "sessionId": "s"}),
        )
        .await;
    bob_socket.expect("message_ack").await;
    let (_, list) = app.get("/api/conversations", &bob.token).await;
    assert_eq!(list[0]["unread_count"], 1);
    let (_, alice_list) = app.get("/api/conversations", &alice.token).await;
    assert_eq!(alice_list[0]["unread_count"], 1);
}

async fn concurrent_reads_each_send_one_receipt_and_clear_unread(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    app.conversation(&alice, &bob).await;
    let mut alice_socket = app.ws(&alice).await;
    let ids: Vec<uuid::Uuid> = (0..12).map(|_| uuid::Uuid::new_v4()).collect();
    for id in &ids {
        alice_socket
            .send(
                "message",
                json!({"id": id, "recipientId": bob.id, "messageType": "text"}),
            )
            .await;
        alice_socket.expect("message_ack").await;
    }
    // Every message read twice at once (two devices): the reads share group commits.
    let paths: Vec<String> = ids
        .iter()
        .chain(&ids)
        .map(|id| format!("/api/messages/{id}/read"))
        .collect();
    let reads = paths
        .iter()
        .map(|path| app.post(path, &bob.token, json!({})));
    let answers = futures_util::future::join_all(reads).await;
    for (status, message) in &answers {
        assert!(status.is_success(), "{message}");
        assert_eq!(message["is_read"], true, "{message}");
    }
    let mut receipts = std::collections::HashSet::new();
    for _ in 0..ids.len() {
        let receipt = alice_socket.expect("read_receipt").await;
        let id = receipt["messageId"]
            .as_str()
            .expect("message id")
            .to_owned();
        assert!(receipts.insert(id), "one receipt per message: {receipt}");
    }
    alice_socket.expect_quiet().await;
    let (_, list) = app.get("/api/conversations", &bob.token).await;
    assert_eq!(list[0]["unread_count"], 0);
    // A stranger's read changes nothing.
    let carol = app.register("carol").await;
    let (status, _) = app
        .post(
            &format!("/api/messages/{}/read", ids[0]),
            &carol.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn a_third_user_cannot_read_a_conversation(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mallory = app.register("mallory").await;
    let conversation = app.conversation(&alice, &bob).await;
    let id = conversation["id"].as_str().expect("id");
    let (status, body) = app
        .get(&format!("/api/conversations/{id}/messages"), &mallory.token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let missing = uuid::Uuid::new_v4();
    let (status_missing, body_missing) = app
        .get(
            &format!("/api/conversations/{missing}/messages"),
            &mallory.token,
        )
        .await;
    assert_eq!(
        (status, body),
        (status_missing, body_missing),
        "same answer: learns nothing"
    );
    let (_, list) = app.get("/api/conversations", &mallory.token).await;
    assert_eq!(list, json!([]));
}

async fn history_is_newest_first_and_pages_with_before(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut socket = app.ws(&alice).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        socket
            .send(
                "message",
                json!({"recipientId": bob.id, "messageType": "text", "sessionId": format!("s{i}")}),
            )
            .await;
        ids.push(socket.expect("message_ack").await["id"].clone());
    }
    let conversation = app.conversation(&bob, &alice).await;
    let path = format!(
        "/api/conversations/{}/messages",
        conversation["id"].as_str().expect("id")
    );
    let (status, all) = app.get(&path, &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    let all_ids: Vec<&Value> = all
        .as_array()
        .expect("array")
        .iter()
        .map(|m| &m["id"])
        .collect();
    let newest_first: Vec<&Value> = ids.iter().rev().collect();
    assert_eq!(all_ids, newest_first);
    let m = &all[0];
    for key in [
        "id",
        "conversation_id",
        "sender_id",
        "recipient_id",
        "message_type",
        "timestamp",
        "session_id",
        "is_read",
        "read_at",
    ] {
        assert!(m.get(key).is_some(), "missing {key}: {m}");
    }
    assert_eq!(m["sender_id"], alice.id);
    assert_eq!(m["is_read"], false);

    let (_, page1) = app.get(&format!("{path}?limit=2"), &bob.token).await;
    assert_eq!(page1.as_array().expect("page").len(), 2);
    let cursor = page1[1]["id"].as_str().expect("cursor");
    let (_, page2) = app
        .get(&format!("{path}?limit=2&before={cursor}"), &bob.token)
        .await;
    assert_eq!(page2[0]["id"], ids[2]);
    assert_eq!(page2[1]["id"], ids[1]);
    let (_, huge) = app.get(&format!("{path}?limit=100000"), &bob.token).await;
    assert_eq!(
        huge.as_array().expect("all").len(),
        5,
        "a huge limit is clamped, not an error"
    );
    let (status, _) = app.get(&format!("{path}?limit=abc"), &bob.token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
