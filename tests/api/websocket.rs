//! Real-time routing over `/ws`: messages, acks, receipts, typing, presence, bad input.

use crate::common::{Engine, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::{
    Message, client::IntoClientRequest, protocol::frame::coding::CloseCode,
};

scenarios!(
    message_reaches_the_recipient_in_both_key_styles_and_is_acked_to_the_sender,
    a_retried_client_id_is_acked_again_and_stored_once,
    every_socket_of_the_recipient_gets_the_message,
    reading_over_rest_or_socket_sends_one_receipt_to_the_sender,
    typing_reaches_only_the_other_participant,
    presence_reaches_contacts_only,
    bad_frames_get_error_frames_and_the_socket_stays_open,
    a_bad_token_is_refused_before_the_upgrade,
    token_in_authorization_header_is_accepted,
    an_oversized_frame_closes_the_socket_with_1009,
    a_text_frame_that_is_not_utf8_closes_the_socket_with_1007,
    a_socket_is_closed_when_its_token_expires,
);

async fn message_reaches_the_recipient_in_both_key_styles_and_is_acked_to_the_sender(
    engine: Engine,
) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;
    // Exactly the app's frame: camelCase, a zone-less local timestamp, no id.
    alice_ws
        .send("message", json!({"recipientId": bob.id, "messageType": "text", "sessionId": "sess-1", "timestamp": "2025-11-24T21:03:04.123456"}))
        .await;
    let pushed = bob_ws.expect("message").await;
    for (camel, snake) in [
        ("messageId", "message_id"),
        ("conversationId", "conversation_id"),
        ("senderId", "sender_id"),
        ("recipientId", "recipient_id"),
        ("messageType", "message_type"),
        ("sessionId", "session_id"),
        ("isRead", "is_read"),
    ] {
        assert!(!pushed[camel].is_null(), "missing {camel}: {pushed}");
        assert_eq!(pushed[camel], pushed[snake]);
    }
    assert_eq!(pushed["senderId"], alice.id);
    assert_eq!(pushed["recipientId"], bob.id);
    assert_eq!(pushed["messageType"], "text");
    assert_eq!(pushed["sessionId"], "sess-1");
    assert_eq!(pushed["isRead"], false);
    assert!(
        pushed["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    let ack = alice_ws.expect("message_ack").await;
    assert_eq!(ack["id"], pushed["id"]);
    assert_eq!(ack["conversationId"], pushed["conversationId"]);
    // The sender never gets its own message back as `message`.
    alice_ws.expect_quiet().await;

    let path = format!(
        "/api/conversations/{}/messages",
        pushed["conversationId"].as_str().expect("id")
    );
    let (_, history) = app.get(&path, &alice.token).await;
    assert_eq!(history[0]["id"], pushed["id"]);
}

async fn a_retried_client_id_is_acked_again_and_stored_once(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mallory = app.register("mallory").await;
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;
    let id = uuid::Uuid::new_v4().to_string();
    let frame =
        json!({"id": id, "recipient_id": bob.id, "message_type": "text", "session_id": "s"});
    alice_ws.send("message", frame.clone()).await;
    let first = alice_ws.expect("message_ack").await;
    alice_ws.send("message", frame).await;
    let second = alice_ws.expect("message_ack").await;
    assert_eq!(first["id"], id);
    assert_eq!(first["clientId"], id);
    assert_eq!(first, second);
    assert_eq!(bob_ws.expect("message").await["id"], id);
    bob_ws.expect_quiet().await;
    let path = format!(
        "/api/conversations/{}/messages",
        first["conversationId"].as_str().expect("id")
    );
    let (_, history) = app.get(&path, &bob.token).await;
    assert_eq!(history.as_array().expect("array").len(), 1);

    // Retries among new messages sent at once (they share group commits): each new message
    // reaches bob once, numbered in order right after the first.
    let fresh: Vec<String> = (0..5).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    for new_id in &fresh {
        for message_id in [&id, new_id] {
            let message = json!({"id": message_id, "recipientId": bob.id, "messageType": "text"});
            alice_ws.send("message", message).await;
        }
    }
    for _ in 0..2 * fresh.len() {
        alice_ws.expect("message_ack").await;
    }
    for (n, new_id) in fresh.iter().enumerate() {
        let pushed = bob_ws.expect("message").await;
        assert_eq!(pushed["id"], new_id.as_str());
        assert_eq!(pushed["cursor"], n + 2, "{pushed}");
    }
    bob_ws.expect_quiet().await;

    // Another sender cannot take over that id.
    let mut mallory_ws = app.ws(&mallory).await;
    mallory_ws
        .send(
            "message",
            json!({"id": id, "recipientId": bob.id, "messageType": "text"}),
        )
        .await;
    assert_eq!(mallory_ws.expect("error").await["code"], "id_taken");
    bob_ws.expect_quiet().await;
}

async fn every_socket_of_the_recipient_gets_the_message(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut alice_ws = app.ws(&alice).await;
    let mut phone = app.ws(&bob).await;
    let mut tablet = app.ws(&bob).await;
    alice_ws
        .send(
            "message",
            json!({"recipientId": bob.id, "messageType": "text", "sessionId": "s"}),
        )
        .await;
    let on_phone = phone.expect("message").await;
    let on_tablet = tablet.expect("message").await;
    assert_eq!(on_phone, on_tablet);

    // Closing one socket leaves the other working, and bob stays online.
    phone.close().await;
    alice_ws
        .send(
            "message",
            json!({"recipientId": bob.id, "messageType": "text", "sessionId": "s"}),
        )
        .await;
    tablet.expect("message").await;
    alice_ws.expect("message_ack").await;
    let (_, presence) = app.get("/api/conversations", &alice.token).await;
    assert_eq!(presence[0]["participant_status"], "online");
}

async fn reading_over_rest_or_socket_sends_one_receipt_to_the_sender(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mallory = app.register("mallory").await;
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        alice_ws
            .send(
                "message",
                json!({"recipientId": bob.id, "messageType": "text", "sessionId": "s"}),
            )
            .await;
        ids.push(
            bob_ws.expect("message").await["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
        alice_ws.expect("message_ack").await;
    }

    // A stranger and the sender change nothing.
    let (status, _) = app
        .post(
            &format!("/api/messages/{}/read", ids[0]),
            &mallory.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, unchanged) = app
        .post(
            &format!("/api/messages/{}/read", ids[0]),
            &alice.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(unchanged["is_read"], false);

    // Over REST.
    let (status, read) = app
        .post(
            &format!("/api/messages/{}/read", ids[0]),
            &bob.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(read["is_read"], true);
    assert!(read["read_at"].is_string());
    let receipt = alice_ws.expect("read_receipt").await;
    assert_eq!(receipt["messageId"], ids[0]);
    assert_eq!(receipt["readerId"], bob.id);
    assert_eq!(receipt["readAt"], read["read_at"]);

    // Over the socket, with the app's zone-less readAt; a second read sends nothing more.
    bob_ws
        .send(
            "read_receipt",
            json!({"messageId": ids[1], "readAt": "2025-11-24T21:03:04.123456"}),
        )
        .await;
    assert_eq!(alice_ws.expect("read_receipt").await["message_id"], ids[1]);
    app.post(
        &format!("/api/messages/{}/read", ids[1]),
        &bob.token,
        json!({}),
    )
    .await;
    alice_ws.expect_quiet().await;

    let (_, list) = app.get("/api/conversations", &bob.token).await;
    assert_eq!(list[0]["unread_count"], 0);
    let unknown = uuid::Uuid::new_v4();
    let (status, _) = app
        .post(
            &format!("/api/messages/{unknown}/read"),
            &bob.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn typing_reaches_only_the_other_participant(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let ab = app.conversation(&alice, &bob).await;
    app.conversation(&alice, &carol).await;
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;
    let mut carol_ws = app.ws(&carol).await;

    alice_ws.send("typing_indicator", json!({"conversationId": ab["id"], "isTyping": true, "timestamp": "2025-11-24T21:03:04.123456"})).await;
    let typing = bob_ws.expect("typing_indicator").await;
    assert_eq!(typing["userId"], alice.id);
    assert_eq!(typing["user_id"], alice.id);
    assert_eq!(typing["conversationId"], ab["id"]);
    assert_eq!(typing["isTyping"], true);
    alice_ws.expect_quiet().await;
    carol_ws.expect_quiet().await;

    // Carol cannot type into (or probe) a conversation she is not in; her claimed userId is ignored.
    carol_ws
        .send(
            "typing_indicator",
            json!({"conversationId": ab["id"], "isTyping": true, "userId": alice.id}),
        )
        .await;
    assert_eq!(carol_ws.expect("error").await["code"], "not_found");
    carol_ws.expect_quiet().await;
    bob_ws.expect_quiet().await;
}

async fn presence_reaches_contacts_only(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let stranger = app.register("stranger").await;
    app.conversation(&alice, &bob).await;
    let mut bob_ws = app.ws(&bob).await;
    let mut stranger_ws = app.ws(&stranger).await;

    let mut alice_ws = app.ws(&alice).await;
    let online = bob_ws.expect("presence_update").await;
    assert_eq!(online["userId"], alice.id);
    assert_eq!(online["status"], "online");
    assert!(online["lastSeen"].is_string(), "lastSeen is always present");

    alice_ws
        .send("presence_update", json!({"status": "away"}))
        .await;
    assert_eq!(bob_ws.expect("presence_update").await["status"], "away");
    alice_ws
        .send("presence_update", json!({"status": "sleeping"}))
        .await;
    assert_eq!(alice_ws.expect("error").await["code"], "invalid_input");

    alice_ws.close().await;
    let offline = bob_ws.expect("presence_update").await;
    assert_eq!(offline["status"], "offline");
    assert!(offline["last_seen"].is_string());

    stranger_ws.expect_silent().await;
}

async fn bad_frames_get_error_frames_and_the_socket_stays_open(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let mut ws = app.ws(&alice).await;
    let unknown_user = uuid::Uuid::new_v4();
    let cases = [
        ("not json".to_owned(), "invalid_frame"),
        ("[1,2]".to_owned(), "invalid_frame"),
        (json!({"type": "launch_rockets", "payload": {}}).to_string(), "unknown_type"),
        (json!({"type": "message", "payload": {"recipientId": "nope"}}).to_string(), "invalid_payload"),
        (json!({"type": "message", "payload": {"recipientId": alice.id, "messageType": "text"}}).to_string(), "invalid_input"),
        (json!({"type": "message", "payload": {"recipientId": unknown_user, "messageType": "text"}}).to_string(), "not_found"),
        (json!({"type": "message", "payload": {"recipientId": unknown_user, "messageType": ""}}).to_string(), "invalid_input"),
        (json!({"type": "read_receipt", "payload": {"messageId": unknown_user}}).to_string(), "not_found"),
    ];
    for (text, code) in cases {
        ws.send_text(text.clone()).await;
        let error = ws.expect("error").await;
        assert_eq!(error["code"], code, "{text}");
        assert!(error["message"].is_string());
    }
    ws.expect_quiet().await;
    let (_, list) = app.get("/api/conversations", &alice.token).await;
    assert_eq!(list, json!([]), "bad frames changed nothing");
}

async fn a_bad_token_is_refused_before_the_upgrade(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    for path in ["/ws", "/ws?token=", "/ws?token=garbage"] {
        let refused = app.ws_url(path).await.err();
        assert_eq!(refused, Some(StatusCode::UNAUTHORIZED), "{path}");
    }
}

async fn token_in_authorization_header_is_accepted(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let mut request = format!("ws://{}/ws", app.addr)
        .into_client_request()
        .expect("request");
    let bearer = format!("Bearer {}", alice.token).parse().expect("header");
    request.headers_mut().insert("authorization", bearer);
    let mut ws = crate::common::WsClient::connect(request)
        .await
        .expect("accepted");
    ws.expect_quiet().await;
}

async fn an_oversized_frame_closes_the_socket_with_1009(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("WS_MAX_FRAME_BYTES", "1024")]).await;
    let alice = app.register("alice").await;
    let mut ws = app.ws(&alice).await;
    ws.send("heartbeat", json!({"padding": "x".repeat(2048)}))
        .await;
    assert_eq!(ws.closed().await, Some(CloseCode::Size));
    // Other sockets of the same user are unaffected.
    let mut other = app.ws(&alice).await;
    other.expect_quiet().await;
}

async fn a_text_frame_that_is_not_utf8_closes_the_socket_with_1007(engine: Engine) {
    use tokio_tungstenite::tungstenite::protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    };
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let mut ws = app.ws(&alice).await;
    // RFC 6455 §8.1: a text frame must be UTF-8; 0xC3 0x28 is not.
    let invalid = Frame::message(vec![b'{', 0xC3, 0x28, b'}'], OpCode::Data(Data::Text), true);
    ws.send_message(Message::Frame(invalid))
        .await
        .expect("sent");
    assert_eq!(ws.closed().await, Some(CloseCode::Invalid));
    // Other sockets of the same user are unaffected.
    app.ws(&alice).await.expect_quiet().await;
}

async fn a_socket_is_closed_when_its_token_expires(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("JWT_EXPIRATION", "2")]).await;
    let alice = app.register("alice").await;
    let mut ws = app.ws(&alice).await;
    ws.expect_quiet().await;
    assert_eq!(ws.closed().await, Some(CloseCode::Library(4001)));
}
