//! Multi-device delivery: a message carries one envelope per device of its recipient, checked
//! against their device list; each device gets only its own, keeps getting it on every connect
//! until it acknowledges it, then its sender is told that this device has it.

use std::time::Duration;

use crate::common::{Engine, TestApp, TestUser, WsClient};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use uuid::Uuid;

scenarios!(
    each_device_gets_only_its_own_envelope_until_it_acknowledges_it,
    a_device_list_that_does_not_match_stores_nothing_on_either_door,
    a_message_to_oneself_reaches_ones_other_devices_only,
    envelopes_wait_for_an_offline_device_across_a_restart,
    a_full_queue_drops_the_oldest_and_the_device_is_told,
    expired_envelopes_are_dropped_and_the_device_is_told,
    bad_envelopes_and_acks_are_refused_and_change_nothing,
    the_current_apps_flow_is_unchanged_beside_envelopes,
    an_unlinked_device_loses_its_queue_and_a_device_bound_session_sends_as_its_device,
);

/// Publishes keys for `device` of `user` (which registers the device), with registration id
/// `1000 + device`.
pub async fn link_device(app: &TestApp, user: &TestUser, device: i64) {
    let tag = device as u8;
    let key = |byte: u8, len: usize| STANDARD.encode(vec![byte; len]);
    let upload = json!({
        "device_id": device,
        "registration_id": 1000 + device,
        "identity_key": key(tag, 33),
        "signed_prekey": {"key_id": 1, "public_key": key(tag ^ 0x10, 33), "signature": key(tag ^ 0x20, 64)},
        // Above the low-prekey threshold: no `prekeys_low` frame in the way.
        "one_time_prekeys": (1..=20)
            .map(|id| json!({"key_id": id, "public_key": key(tag ^ id as u8, 33)}))
            .collect::<Vec<_>>(),
    });
    let (status, body) = app
        .request(Method::PUT, "/api/keys", Some(&user.token), Some(upload))
        .await;
    assert!(
        status.is_success(),
        "upload keys of device {device}: {status} {body}"
    );
}

/// A socket of `device` of `user`, naming its device.
pub async fn device_socket(app: &TestApp, user: &TestUser, device: i64) -> WsClient {
    app.ws_url(&format!("/ws?token={}&device_id={device}", user.token))
        .await
        .expect("socket opens")
}

/// Recognisable ciphertext bytes: every byte value, tagged.
fn ciphertext(tag: u8) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..=255).collect();
    bytes.extend_from_slice(&[tag; 64]);
    bytes
}

fn envelope(device: i64, bytes: &[u8]) -> Value {
    json!({"deviceId": device, "type": 3, "content": STANDARD.encode(bytes)})
}

/// A `message` frame's payload with `envelopes`.
fn message(to: &TestUser, id: Uuid, envelopes: Vec<Value>) -> Value {
    json!({"recipientId": to.id, "messageType": "signal", "id": id, "envelopes": envelopes})
}

/// The next `message` frame's envelope bytes, checking it is `device`'s and names `id`.
async fn expect_envelope(socket: &mut WsClient, device: i64, id: Uuid) -> (Vec<u8>, Value) {
    let frame = socket.expect("message").await;
    assert_eq!(frame["id"], id.to_string(), "{frame}");
    assert_eq!(frame["deviceId"], device, "{frame}");
    assert_eq!(frame["device_id"], device, "{frame}");
    let content = frame["envelope"]["content"].as_str().expect("content");
    (STANDARD.decode(content).expect("base64"), frame)
}

async fn each_device_gets_only_its_own_envelope_until_it_acknowledges_it(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    for device in [1, 2] {
        link_device(&app, &bob, device).await;
    }
    let mut phone = device_socket(&app, &bob, 1).await;
    let mut tablet = device_socket(&app, &bob, 2).await;
    for socket in [&mut phone, &mut tablet] {
        socket.expect("queue_empty").await;
    }
    let mut sender = device_socket(&app, &alice, 1).await;
    sender.expect("queue_empty").await;
    let id = Uuid::now_v7();
    let envelopes = vec![envelope(1, &ciphertext(1)), envelope(2, &ciphertext(2))];
    sender.send("message", message(&bob, id, envelopes)).await;
    let ack = sender.expect("message_ack").await;
    assert_eq!(ack["id"], id.to_string());
    assert!(ack["conversationId"].is_string(), "{ack}");
    assert!(ack.get("seq").is_none(), "no history number: {ack}");

    let (bytes, frame) = expect_envelope(&mut phone, 1, id).await;
    assert_eq!(bytes, ciphertext(1), "the phone's own ciphertext, intact");
    assert_eq!(frame["senderId"], alice.id);
    assert_eq!(frame["envelope"]["type"], 3);
    assert_eq!(frame["envelope"]["sourceDeviceId"], 1);
    assert_eq!(frame["envelope"]["cursor"], 1);
    let (bytes, _) = expect_envelope(&mut tablet, 2, id).await;
    assert_eq!(bytes, ciphertext(2), "the tablet's own ciphertext, intact");
    phone.expect_silent().await;
    tablet.expect_silent().await;

    // The phone acknowledges by id: the sender learns which device has it.
    phone.send("ack", json!({"id": id})).await;
    let receipt = sender.expect("delivery_receipt").await;
    assert_eq!(receipt["messageId"], id.to_string());
    assert_eq!(receipt["deviceId"], 1);
    assert_eq!(receipt["recipientId"], bob.id);
    phone.expect_quiet().await;
    phone.close().await;
    let mut phone = device_socket(&app, &bob, 1).await;
    phone.expect("queue_empty").await;
    phone.expect_silent().await;

    // The tablet did not acknowledge: it gets the envelope again on its next connect, once.
    tablet.close().await;
    let mut tablet = device_socket(&app, &bob, 2).await;
    let (bytes, frame) = expect_envelope(&mut tablet, 2, id).await;
    assert_eq!(bytes, ciphertext(2));
    tablet.expect("queue_empty").await;
    let cursor = frame["envelope"]["cursor"].as_i64().expect("cursor");
    tablet.send("ack", json!({"cursor": cursor})).await;
    assert_eq!(sender.expect("delivery_receipt").await["deviceId"], 2);
    tablet.expect_quiet().await;
    tablet.close().await;
    let mut tablet = device_socket(&app, &bob, 2).await;
    tablet.expect("queue_empty").await;
    tablet.expect_silent().await;
}

async fn a_device_list_that_does_not_match_stores_nothing_on_either_door(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    for device in [1, 2] {
        link_device(&app, &bob, device).await;
    }
    let mut sender = device_socket(&app, &alice, 1).await;
    sender.expect("queue_empty").await;
    let cases = [
        (
            vec![envelope(1, b"x")],
            "mismatched_devices",
            "missingDevices",
            json!([2]),
        ),
        (
            vec![envelope(1, b"x"), envelope(2, b"y"), envelope(3, b"z")],
            "mismatched_devices",
            "extraDevices",
            json!([3]),
        ),
        (
            vec![
                envelope(1, b"x"),
                json!({"deviceId": 2, "registrationId": 9, "type": 1, "content": "eQ=="}),
            ],
            "stale_devices",
            "staleDevices",
            json!([2]),
        ),
    ];
    for (envelopes, code, list, devices) in &cases {
        let id = Uuid::now_v7();
        sender
            .send("message", message(&bob, id, envelopes.clone()))
            .await;
        let error = sender.expect("error").await;
        assert_eq!(error["code"], *code, "{error}");
        assert_eq!(error[*list], *devices, "{error}");
        assert_eq!(
            error["clientId"],
            id.to_string(),
            "the error names the message"
        );

        let path = format!("/api/messages/{}", bob.id);
        let body = json!({"messageType": "signal", "envelopes": envelopes});
        let (status, body) = app
            .request(Method::PUT, &path, Some(&alice.token), Some(body))
            .await;
        let expected = if *code == "stale_devices" { 410 } else { 409 };
        assert_eq!(status.as_u16(), expected, "{body}");
        assert_eq!(body["error"]["code"], *code);
        let snake = list.replace("Devices", "_devices");
        assert_eq!(body["error"][snake.as_str()], *devices, "{body}");
    }
    // Someone with no device at all cannot be sent envelopes.
    let carol = app.register("carol").await;
    sender
        .send(
            "message",
            message(&carol, Uuid::now_v7(), vec![envelope(1, b"x")]),
        )
        .await;
    assert_eq!(sender.expect("error").await["code"], "not_found");
    // The right registration id is accepted.
    let right = vec![
        envelope(1, b"x"),
        json!({"deviceId": 2, "registrationId": 1002, "type": 1, "content": "eQ=="}),
    ];
    let path = format!("/api/messages/{}", bob.id);
    let body = json!({"messageType": "signal", "envelopes": right});
    let (status, sent) = app
        .request(Method::PUT, &path, Some(&alice.token), Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    // Nothing of the refused ones was stored: each device has the accepted message only.
    for device in [1, 2] {
        let mut socket = device_socket(&app, &bob, device).await;
        let frame = socket.expect("message").await;
        assert_eq!(frame["id"], sent["id"]);
        socket.expect("queue_empty").await;
    }
}

async fn a_message_to_oneself_reaches_ones_other_devices_only(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    for device in [1, 2, 3] {
        link_device(&app, &alice, device).await;
    }
    let mut laptop = device_socket(&app, &alice, 2).await;
    laptop.expect("queue_empty").await;
    let mut phone = device_socket(&app, &alice, 1).await;
    phone.expect("queue_empty").await;

    // Its own device is not a recipient.
    let id = Uuid::now_v7();
    let all = vec![envelope(1, b"a"), envelope(2, b"b"), envelope(3, b"c")];
    phone.send("message", message(&alice, id, all)).await;
    let error = phone.expect("error").await;
    assert_eq!(error["code"], "mismatched_devices");
    assert_eq!(error["extraDevices"], json!([1]));

    let id = Uuid::now_v7();
    let others = vec![envelope(2, b"b"), envelope(3, b"c")];
    phone.send("message", message(&alice, id, others)).await;
    let ack = phone.expect("message_ack").await;
    assert!(
        ack.get("conversationId").is_none(),
        "no conversation: {ack}"
    );
    let (bytes, frame) = expect_envelope(&mut laptop, 2, id).await;
    assert_eq!(bytes, b"b");
    assert!(frame.get("conversationId").is_none(), "{frame}");
    assert_eq!(frame["envelope"]["sourceDeviceId"], 1);
    laptop.send("ack", json!({"id": id})).await;
    laptop.expect_quiet().await;
    // A copy of one's own message is not "delivered" news for the sender.
    phone.expect_silent().await;
    let mut third = device_socket(&app, &alice, 3).await;
    assert_eq!(expect_envelope(&mut third, 3, id).await.0, b"c");
}

async fn envelopes_wait_for_an_offline_device_across_a_restart(engine: Engine) {
    let mut app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    for device in [1, 2] {
        link_device(&app, &bob, device).await;
    }
    // Three messages over REST while Bob is offline, the first one sent twice (a retry).
    let path = format!("/api/messages/{}", bob.id);
    let mut ids = Vec::new();
    for n in 0..3u8 {
        let id = Uuid::now_v7();
        let body = json!({"id": id, "messageType": "signal",
            "envelopes": [envelope(1, &[n, 1]), envelope(2, &[n, 2])]});
        let tries = if n == 0 { 2 } else { 1 };
        for _ in 0..tries {
            let (status, sent) = app
                .request(Method::PUT, &path, Some(&alice.token), Some(body.clone()))
                .await;
            assert_eq!(status, StatusCode::OK, "{sent}");
            assert_eq!(sent["id"], id.to_string());
        }
        ids.push(id);
    }
    app.restart().await;
    for device in [1, 2] {
        let mut socket = device_socket(&app, &bob, device).await;
        for (n, id) in ids.iter().enumerate() {
            let (bytes, _) = expect_envelope(&mut socket, device, *id).await;
            assert_eq!(bytes, [n as u8, device as u8], "in order, each once");
        }
        socket.expect("queue_empty").await;
        socket.expect_silent().await;
    }
}

async fn a_full_queue_drops_the_oldest_and_the_device_is_told(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("DEVICE_QUEUE_MAX", "3")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    link_device(&app, &bob, 1).await;
    let mut sender = device_socket(&app, &alice, 1).await;
    sender.expect("queue_empty").await;
    let mut ids = Vec::new();
    for n in 0..5u8 {
        let id = Uuid::now_v7();
        sender
            .send("message", message(&bob, id, vec![envelope(1, &[n])]))
            .await;
        sender.expect("message_ack").await;
        ids.push(id);
    }
    let mut socket = device_socket(&app, &bob, 1).await;
    let dropped = socket.expect("envelopes_dropped").await;
    assert_eq!(
        (dropped["count"].as_i64(), dropped["deviceId"].as_i64()),
        (Some(2), Some(1))
    );
    for id in &ids[2..] {
        expect_envelope(&mut socket, 1, *id).await;
    }
    socket.expect("queue_empty").await;
    // Told once.
    socket.close().await;
    let mut socket = device_socket(&app, &bob, 1).await;
    let frame = socket.recv().await;
    assert_eq!(frame["type"], "message", "no second notice: {frame}");
}

async fn expired_envelopes_are_dropped_and_the_device_is_told(engine: Engine) {
    let app = TestApp::spawn_with(
        engine,
        &[("ENVELOPE_TTL", "1"), ("RETENTION_SWEEP_INTERVAL", "1")],
    )
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    link_device(&app, &bob, 1).await;
    let path = format!("/api/messages/{}", bob.id);
    let body = json!({"messageType": "signal", "envelopes": [envelope(1, b"old")]});
    let (status, _) = app
        .request(Method::PUT, &path, Some(&alice.token), Some(body))
        .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut socket = device_socket(&app, &bob, 1).await;
    let dropped = socket.expect("envelopes_dropped").await;
    assert_eq!(dropped["count"], 1);
    socket.expect("queue_empty").await;
}

async fn bad_envelopes_and_acks_are_refused_and_change_nothing(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("ENVELOPE_MAX_BYTES", "100000")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    link_device(&app, &bob, 1).await;
    let mut sender = device_socket(&app, &alice, 1).await;
    sender.expect("queue_empty").await;
    let bad = [
        (
            json!([{"deviceId": 1, "type": 1, "content": "not base64!"}]),
            "invalid_input",
        ),
        (
            json!([{"deviceId": 0, "type": 1, "content": "eQ=="}]),
            "invalid_input",
        ),
        (
            json!([envelope(1, b"a"), envelope(1, b"b")]),
            "invalid_input",
        ),
        (
            json!([{"deviceId": 1, "type": 1, "content": ""}]),
            "invalid_input",
        ),
        (
            json!([{"deviceId": 1, "content": "eQ=="}]),
            "invalid_payload",
        ),
        (json!([envelope(1, &vec![7; 100_001])]), "payload_too_large"),
    ];
    for (envelopes, code) in bad {
        let payload =
            json!({"recipientId": bob.id, "messageType": "signal", "envelopes": envelopes});
        sender.send("message", payload).await;
        assert_eq!(sender.expect("error").await["code"], code);
    }
    for ack in [json!({}), json!({"id": Uuid::now_v7(), "cursor": 1})] {
        sender.send("ack", ack).await;
        assert_eq!(sender.expect("error").await["code"], "invalid_input");
    }
    // An ack of an unknown message changes nothing and is not an error.
    sender.send("ack", json!({"id": Uuid::now_v7()})).await;
    sender.expect_silent().await;

    // A message with envelopes may be larger than other frames (64 KiB)...
    let id = Uuid::now_v7();
    let big = vec![envelope(1, &vec![9; 90_000])];
    sender.send("message", message(&bob, id, big)).await;
    assert_eq!(sender.expect("message_ack").await["id"], id.to_string());
    // ...no other frame may.
    let typing =
        json!({"conversationId": Uuid::now_v7(), "isTyping": true, "pad": "x".repeat(70_000)});
    sender.send("typing_indicator", typing).await;
    assert_eq!(sender.closed().await, Some(CloseCode::Size));

    let mut socket = device_socket(&app, &bob, 1).await;
    let (bytes, _) = expect_envelope(&mut socket, 1, id).await;
    assert_eq!(bytes.len(), 90_000, "only the valid message was stored");
    socket.expect("queue_empty").await;
}

async fn the_current_apps_flow_is_unchanged_beside_envelopes(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    link_device(&app, &bob, 1).await;
    // The app's socket names no device: device 1, and no `queue_empty`.
    let mut app_socket = app.ws(&bob).await;
    let mut sender = app.ws(&alice).await;
    sender
        .send(
            "message",
            json!({"recipientId": bob.id, "messageType": "text", "sessionId": "s"}),
        )
        .await;
    let ack = sender.expect("message_ack").await;
    assert!(
        ack["seq"].is_i64() && ack["conversationId"].is_string(),
        "{ack}"
    );
    let frame = app_socket.expect("message").await;
    assert!(
        frame["cursor"].is_i64() && frame.get("envelope").is_none(),
        "{frame}"
    );
    assert_eq!(
        sender.expect("delivery_receipt").await.get("deviceId"),
        None
    );
    // An envelope for device 1 reaches the app's socket too (it is device 1).
    let id = Uuid::now_v7();
    sender
        .send("message", message(&bob, id, vec![envelope(1, b"e")]))
        .await;
    sender.expect("message_ack").await;
    expect_envelope(&mut app_socket, 1, id).await;
    app_socket.expect_silent().await;
}

async fn an_unlinked_device_loses_its_queue_and_a_device_bound_session_sends_as_its_device(
    engine: Engine,
) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    link_device(&app, &bob, 1).await;
    let (tablet, _) = crate::devices::login_as(&app, &bob, 2, Some("Tablet")).await;
    // Alice's laptop, a device-bound session: its socket and its REST sends are device 2.
    link_device(&app, &alice, 1).await;
    let (laptop, _) = crate::devices::login_as(&app, &alice, 2, None).await;
    let path = format!("/api/messages/{}", bob.id);
    let body =
        json!({"messageType": "signal", "envelopes": [envelope(1, b"p"), envelope(2, b"t")]});
    let (status, sent) = app
        .request(Method::PUT, &path, Some(&laptop.token), Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let mut socket = app.ws(&tablet).await;
    let frame = socket.expect("message").await;
    assert_eq!(frame["envelope"]["sourceDeviceId"], 2, "sent by the laptop");
    socket.expect("queue_empty").await;

    let (status, _) = app
        .request(Method::DELETE, "/api/devices/2", Some(&bob.token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(socket.closed().await, Some(CloseCode::Library(4001)));
    // Linked again, device 2 starts with an empty queue; device 1 still has its envelope.
    let (tablet, _) = crate::devices::login_as(&app, &bob, 2, None).await;
    let mut socket = app.ws(&tablet).await;
    socket.expect("queue_empty").await;
    socket.expect_silent().await;
    let mut phone = device_socket(&app, &bob, 1).await;
    assert_eq!(phone.expect("message").await["id"], sent["id"]);
}
