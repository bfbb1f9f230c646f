//! Real-time routing over `/ws`: messages, acks, receipts, typing, presence, bad input.

use std::collections::BTreeSet;

use crate::common::{Engine, TestApp, WsClient};
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
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
    a_quiet_client_that_answers_the_pings_stays_connected,
    the_asyncapi_document_lists_every_frame_of_protocol_md_in_its_direction,
    real_frames_match_their_schemas_in_the_asyncapi_document,
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

/// Idle clients are kept by the server's pings: the client's library answers them, and the
/// answers count as traffic for the idle timeout.
async fn a_quiet_client_that_answers_the_pings_stays_connected(engine: Engine) {
    let app = TestApp::spawn_with(
        engine,
        &[("WS_PING_INTERVAL", "1"), ("WS_IDLE_TIMEOUT", "2")],
    )
    .await;
    let alice = app.register("alice").await;
    let url = format!("ws://{}/ws?token={}", app.addr, alice.token);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("socket opens");
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut pings = 0;
    // Read (which answers each ping) for twice the idle timeout and more.
    while let Ok(next) = tokio::time::timeout_at(until, ws.next()).await {
        match next {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
    assert!(pings >= 3, "pinged {pings} times in 5 s");
}

async fn asyncapi(app: &TestApp) -> Value {
    let response = app
        .http
        .get(app.url("/api/asyncapi.json"))
        .send()
        .await
        .expect("asyncapi");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("the document is JSON")
}

/// The frame types of the document whose operations have `action` (`receive`: client → server,
/// `send`: server → client).
fn documented_frames(doc: &Value, action: &str) -> BTreeSet<String> {
    let operations = doc["operations"].as_object().expect("operations");
    let mut frames = BTreeSet::new();
    for operation in operations.values().filter(|o| o["action"] == action) {
        assert_eq!(operation["channel"]["$ref"], "#/channels/ws");
        for reference in operation["messages"].as_array().expect("messages") {
            let message = resolve(doc, reference);
            let kind = message["name"].as_str().expect("name").to_owned();
            assert_eq!(message["payload"]["properties"]["type"]["const"], kind);
            frames.insert(kind);
        }
    }
    frames
}

/// The `type`s in the table under `heading` in docs/PROTOCOL.md (up to the next heading).
fn protocol_md_frames(heading: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md"))
        .expect("docs/PROTOCOL.md");
    let (_, section) = text.split_once(heading).expect(heading);
    section
        .lines()
        .skip(1)
        .take_while(|line| !line.starts_with('#'))
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|row| row.split_once('`'))
        .map(|(kind, _)| kind.to_owned())
        .filter(|kind| kind != "type")
        .collect()
}

async fn the_asyncapi_document_lists_every_frame_of_protocol_md_in_its_direction(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let doc = asyncapi(&app).await;
    assert_eq!(doc["asyncapi"], "3.0.0");
    let channel = &doc["channels"]["ws"];
    assert_eq!(channel["address"], "/ws");
    for parameter in ["token", "since", "device_id", "deviceId"] {
        assert!(
            channel["bindings"]["ws"]["query"]["properties"][parameter].is_object(),
            "query parameter {parameter}"
        );
    }

    let client = protocol_md_frames("### Client → server");
    let server = protocol_md_frames("### Server → client");
    assert!(
        client.len() >= 9 && server.len() >= 14,
        "{client:?} {server:?}"
    );
    assert_eq!(documented_frames(&doc, "receive"), client);
    assert_eq!(documented_frames(&doc, "send"), server);
    // The OpenAPI document points to it.
    let openapi: Value = app
        .http
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert!(
        openapi["paths"]["/ws"]["get"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("/api/asyncapi.json"))
    );
}

/// The target of a local `$ref`, or the value itself.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(target) => {
            let pointer = target.strip_prefix('#').expect("a local reference");
            resolve(doc, doc.pointer(pointer).expect(target))
        }
        None => value,
    }
}

/// Where `value` breaks `schema`: a small JSON Schema check, enough for the document (`$ref`,
/// `type`, `const`, `enum`, `format` uuid and date-time, `properties`, `required`,
/// `additionalProperties: false`, `allOf`, `anyOf`, `oneOf`).
fn violations(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut found = Vec::new();
    let fits = |s: &Value| violations(doc, s, value, at).is_empty();
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            other => other.as_str().into_iter().collect(),
        };
        let ok = types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            "array" => value.is_array(),
            other => panic!("type {other} in the document"),
        });
        if !ok {
            found.push(format!("{at}: {value} is not {types:?}"));
            return found;
        }
    }
    if let Some(constant) = schema.get("const").filter(|c| *c != value) {
        found.push(format!("{at}: {value} is not {constant}"));
    }
    if let Some(values) = schema["enum"].as_array().filter(|e| !e.contains(value)) {
        found.push(format!("{at}: {value} is not one of {values:?}"));
    }
    if let (Some(format), Some(text)) = (schema["format"].as_str(), value.as_str()) {
        let ok = match format {
            "uuid" => uuid::Uuid::parse_str(text).is_ok(),
            "date-time" => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
            _ => true,
        };
        if !ok {
            found.push(format!("{at}: {text} is not a {format}"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema["properties"].as_object();
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().expect("required name");
            if !object.contains_key(name) {
                found.push(format!("{at}: {name} is missing"));
            }
        }
        for (key, item) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(property) => {
                    found.extend(violations(doc, property, item, &format!("{at}.{key}")))
                }
                None if schema["additionalProperties"] == false => {
                    found.push(format!("{at}: {key} is not in the schema"));
                }
                None => {}
            }
        }
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        found.extend(violations(doc, part, value, at));
    }
    if let Some(parts) = schema["anyOf"].as_array().filter(|p| !p.iter().any(fits)) {
        found.push(format!(
            "{at}: {value} fits none of {}",
            Value::from(parts.clone())
        ));
    }
    if let Some(parts) = schema["oneOf"].as_array() {
        let fitting = parts.iter().filter(|p| fits(p)).count();
        if fitting != 1 {
            found.push(format!(
                "{at}: {value} fits {fitting} of {}",
                Value::from(parts.clone())
            ));
        }
    }
    found
}

/// Checks `frame` against the document's message `side.type` (`client` or `server`); returns
/// its type.
fn check_frame(doc: &Value, side: &str, frame: &Value) -> String {
    let kind = frame["type"].as_str().expect("type").to_owned();
    let message = &doc["components"]["messages"][format!("{side}.{kind}")];
    assert!(
        message.is_object(),
        "no {side} frame {kind} in the document"
    );
    let found = violations(doc, &message["payload"], frame, &kind);
    assert!(found.is_empty(), "{frame}\n{}", found.join("\n"));
    kind
}

/// The document, and the server frame types checked against it so far.
struct Checked {
    doc: Value,
    seen: BTreeSet<String>,
}

impl Checked {
    async fn send(&mut self, ws: &mut WsClient, kind: &str, payload: Value) {
        check_frame(
            &self.doc,
            "client",
            &json!({"type": kind, "payload": payload}),
        );
        ws.send(kind, payload).await;
    }

    /// Reads (and checks) every frame up to one of type `kind`; returns its payload.
    async fn expect(&mut self, ws: &mut WsClient, kind: &str) -> Value {
        loop {
            let frame = ws.recv().await;
            self.seen.insert(check_frame(&self.doc, "server", &frame));
            if frame["type"] == kind {
                return frame["payload"].clone();
            }
        }
    }
}

/// A message with its ack, delivery and read receipts, typing, presence, a call, a channel
/// post, sync, heartbeat and errors, over real sockets in both key styles: every frame sent
/// and received fits its schema in the document. The frames not produced here
/// (`identity_changed`, `prekeys_low`) and every other variant go through the real encoder.
async fn real_frames_match_their_schemas_in_the_asyncapi_document(engine: Engine) {
    use kisse_backend::{
        events::{EnvelopeBody, EnvelopePayload, Event},
        model::{
            CallStatus, ChannelId, ChannelMessage, ChannelMessageId, ConversationId, MessageId,
            Presence, UserId,
        },
    };

    let app = TestApp::spawn(engine).await;
    let mut check = Checked {
        doc: asyncapi(&app).await,
        seen: BTreeSet::new(),
    };
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    app.conversation(&alice, &bob).await;
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;

    // A message as the app sends it (camelCase, a local timestamp), then in snake_case.
    let id = uuid::Uuid::now_v7().to_string();
    let app_frame = json!({"recipientId": bob.id, "messageType": "text", "sessionId": "s-1",
                           "id": id, "timestamp": "2025-11-24T21:03:04.123456"});
    check.send(&mut alice_ws, "message", app_frame).await;
    let pushed = check.expect(&mut bob_ws, "message").await;
    // The check itself refuses a frame missing a key style, with a mistyped or an extra key.
    let schema = &check.doc["components"]["messages"]["server.message"]["payload"];
    for (key, value) in [
        ("messageId", None),
        ("seq", Some(json!("7"))),
        ("extra", Some(json!(1))),
    ] {
        let mut broken = pushed.clone();
        match value {
            Some(value) => broken[key] = value,
            None => drop(broken.as_object_mut().expect("payload").remove(key)),
        }
        let frame = json!({"type": "message", "payload": broken});
        assert!(
            !violations(&check.doc, schema, &frame, "message").is_empty(),
            "{key}"
        );
    }
    check.expect(&mut alice_ws, "message_ack").await;
    check.expect(&mut alice_ws, "delivery_receipt").await;
    let seed_frame = json!({"recipient_id": alice.id, "message_type": "text"});
    check.send(&mut bob_ws, "message", seed_frame).await;
    check.expect(&mut alice_ws, "message").await;
    check.expect(&mut bob_ws, "message_ack").await;

    let read = json!({"messageId": pushed["id"], "readAt": "2025-11-24T21:03:05"});
    check.send(&mut bob_ws, "read_receipt", read).await;
    check.expect(&mut alice_ws, "read_receipt").await;
    let typing = json!({"conversationId": pushed["conversationId"], "isTyping": true});
    check.send(&mut alice_ws, "typing_indicator", typing).await;
    check.expect(&mut bob_ws, "typing_indicator").await;
    check
        .send(&mut bob_ws, "presence_update", json!({"status": "away"}))
        .await;
    check.expect(&mut alice_ws, "presence_update").await;
    check.send(&mut alice_ws, "sync", json!({"since": 0})).await;
    check.expect(&mut alice_ws, "read_receipt").await;
    let heartbeat = json!({"timestamp": "2025-11-24T21:03:04.123456"});
    check.send(&mut alice_ws, "heartbeat", heartbeat).await;
    check.expect(&mut alice_ws, "heartbeat_response").await;

    // A call: the app's numeric id, answered with the id the callee was given.
    let call = json!({"recipientId": bob.id, "callType": "audio", "callId": 1732482184123_u64});
    check.send(&mut alice_ws, "call_request", call).await;
    let ring = check.expect(&mut bob_ws, "call_request_full").await;
    let answer = json!({"callId": ring["callId"], "response": "accept"});
    check.send(&mut bob_ws, "call_response", answer).await;
    check.expect(&mut alice_ws, "call_response_full").await;

    // A channel post over the socket.
    let (status, channel) = app
        .post(
            "/api/channels",
            &alice.token,
            json!({"name": "news", "description": null, "avatar_url": null, "is_private": false}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{channel}");
    let join = format!("/api/channels/{}/join", channel["id"].as_str().expect("id"));
    let (status, _) = app.post(&join, &bob.token, json!({})).await;
    assert!(status.is_success(), "{status}");
    let post = json!({"channelId": channel["id"], "messageType": "text"});
    check.send(&mut alice_ws, "channel_message", post).await;
    check.expect(&mut alice_ws, "channel_message_ack").await;
    check.expect(&mut bob_ws, "channel_message").await;

    // Errors: an unknown type, a payload missing its fields, a message that names itself.
    alice_ws.send("nope", json!({})).await;
    check.expect(&mut alice_ws, "error").await;
    alice_ws.send("message", json!({})).await;
    check.expect(&mut alice_ws, "error").await;
    let stranger = uuid::Uuid::new_v4();
    let doomed =
        json!({"recipientId": stranger, "messageType": "text", "id": uuid::Uuid::now_v7()});
    check.send(&mut alice_ws, "message", doomed).await;
    let error = check.expect(&mut alice_ws, "error").await;
    assert!(error["clientId"].is_string(), "{error}");

    // Every other variant, through the encoder the server uses.
    let at = chrono::Utc::now();
    let user = UserId(uuid::Uuid::new_v4());
    let message = MessageId(uuid::Uuid::now_v7());
    let conversation = ConversationId(uuid::Uuid::new_v4());
    let encoded = [
        Event::IdentityChanged {
            user_id: user,
            device_id: 2,
            timestamp: at,
        },
        Event::PrekeysLow {
            device_id: 1,
            count: 3,
            threshold: 10,
        },
        Event::MessageAck {
            id: message,
            client_id: None,
            conversation_id: Some(conversation),
            timestamp: at,
            seq: Some(1),
        },
        Event::QueueEmpty {},
        Event::EnvelopesDropped {
            device_id: 1,
            count: 2,
        },
        Event::Envelope(EnvelopePayload {
            id: message,
            message_id: message,
            conversation_id: None,
            sender_id: user,
            recipient_id: user,
            message_type: "signal".into(),
            timestamp: at,
            device_id: 2,
            envelope: EnvelopeBody {
                kind: 1,
                content: "AAE=".into(),
                source_device_id: 3,
                source_device_id_camel: 3,
                cursor: 4,
            },
        }),
        Event::ReadReceipt {
            message_id: message,
            conversation_id: conversation,
            reader_id: user,
            read_at: at,
            cursor: 2,
        },
        Event::DeliveryReceipt {
            message_id: message,
            conversation_id: conversation,
            recipient_id: user,
            delivered_at: at,
            device_id: Some(2),
        },
        Event::TypingIndicator {
            user_id: user,
            conversation_id: conversation,
            is_typing: false,
            timestamp: at,
        },
        Event::PresenceUpdate {
            user_id: user,
            status: Presence::Busy,
            last_seen: at,
        },
        Event::CallRequestFull {
            call_id: "c1".into(),
            caller_id: user,
            caller_name: None,
            recipient_id: user,
            call_type: "video".into(),
            timestamp: at,
        },
        Event::CallResponseFull {
            call_id: "c1".into(),
            response: "end",
            status: CallStatus::Missed,
            timestamp: at,
        },
        Event::HeartbeatResponse { timestamp: at },
        Event::ChannelMessage(ChannelMessage {
            id: ChannelMessageId(uuid::Uuid::new_v4()),
            channel_id: ChannelId(uuid::Uuid::new_v4()),
            sender_id: user,
            sender_name: "Ada".into(),
            message_type: "text".into(),
            created_at: at,
            timestamp: at,
            seq: 4,
        }),
        Event::ChannelMessageAck {
            id: ChannelMessageId(uuid::Uuid::new_v4()),
            client_id: None,
            channel_id: ChannelId(uuid::Uuid::new_v4()),
            timestamp: at,
            seq: 5,
        },
        Event::Error {
            code: "internal",
            message: "internal error".into(),
            id: Some(message),
            client_id: None,
            missing_devices: Some(vec![2]),
            extra_devices: Some(vec![3]),
            stale_devices: None,
        },
    ];
    for event in &encoded {
        let frame: Value = serde_json::from_str(event.encode().as_str()).expect("JSON frame");
        check.seen.insert(check_frame(&check.doc, "server", &frame));
    }
    assert_eq!(check.seen, documented_frames(&check.doc, "send"));
}
