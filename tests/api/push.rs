//! Push wake-ups (issue #20), end to end: the server pushes to a real Web Push receiver on
//! loopback (`push_receiver.rs`), which decrypts with an RFC 8291 implementation that is not
//! ours and checks the VAPID token against `GET /api/push/vapid`. A device without a socket is
//! woken once per burst, with nothing but `{"type":"wake",...}`; a connected device never; dead,
//! throttled, redirecting and hanging endpoints are handled without slowing routing; unsafe
//! endpoints are refused; registrations go with their device. Then two nodes of a cluster.
//!
//! Checks that something did NOT happen wait for a later push that must come after it (the
//! wake-up queue is handled in order), or for `QUIET` where nothing later can be pushed.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::common::{Engine, TestApp, TestUser, WAIT, WsClient};
use crate::devices::login_as;
use crate::envelopes::{device_socket, link_device};
use crate::push_receiver::{PushReceiver, Subscription};

scenarios!(
    a_burst_to_a_device_without_a_socket_wakes_it_once_with_an_empty_wake,
    after_the_interval_the_next_message_wakes_the_device_again,
    after_the_device_connects_the_next_message_wakes_it_without_waiting,
    a_connected_device_and_typing_wake_nobody,
    a_call_ring_wakes_with_high_urgency,
    a_unifiedpush_endpoint_gets_the_wake_as_plain_json,
    an_envelope_wakes_only_the_device_it_is_for,
    a_gone_endpoint_is_removed_and_not_tried_again,
    a_throttled_push_is_retried_and_a_redirect_is_not_followed,
    a_hanging_endpoint_does_not_slow_routing,
    unsafe_endpoints_are_refused_and_not_pushed_to_once_insecure_endpoints_are_off,
    bad_registrations_are_refused_and_a_deleted_one_is_not_pushed_to,
    unlinking_the_device_or_deleting_the_account_drops_its_registration,
    a_blocked_users_message_envelope_and_call_wake_nothing,
);

/// The test servers: loopback `http://` endpoints allowed (the receiver), a short interval.
const SETTINGS: &[(&str, &str)] = &[
    ("PUSH_ALLOW_INSECURE_ENDPOINTS", "true"),
    ("PUSH_MIN_INTERVAL", "2"),
];
/// `PUSH_MIN_INTERVAL` above, and a little more.
const PAST_INTERVAL: Duration = Duration::from_millis(2500);
/// How long a push may take to arrive (generous: a debug build on 2 cores, retries).
const PUSH_WAIT: Duration = Duration::from_secs(10);
/// How long to watch for a push that must not come, where no later push can prove it.
const QUIET: Duration = Duration::from_millis(1500);

const NORMAL_WAKE: &str = r#"{"type":"wake","urgency":"normal"}"#;
const HIGH_WAKE: &str = r#"{"type":"wake","urgency":"high"}"#;

async fn spawn(engine: Engine) -> TestApp {
    TestApp::spawn_with(engine, SETTINGS).await
}

/// `PUT /api/devices/{device}/push` as `user`.
async fn put_push(app: &TestApp, user: &TestUser, device: i64, body: Value) -> (StatusCode, Value) {
    app.request(
        Method::PUT,
        &format!("/api/devices/{device}/push"),
        Some(&user.token),
        Some(body),
    )
    .await
}

/// Registers `sub` for `device` of `user`, which must succeed.
async fn register_push(app: &TestApp, user: &TestUser, device: i64, sub: &Subscription) {
    let (status, body) = put_push(app, user, device, sub.registration()).await;
    assert_eq!(status, StatusCode::OK, "register push: {body}");
    assert_eq!(body, json!({"device_id": device, "kind": "webpush"}));
}

/// A user with device 1 registered for pushes to a new subscription, and no socket.
async fn sleeper(app: &TestApp, receiver: &PushReceiver, name: &str) -> (TestUser, Subscription) {
    let user = app.register(name).await;
    let sub = receiver.subscribe().await;
    register_push(app, &user, 1, &sub).await;
    (user, sub)
}

async fn vapid_key(app: &TestApp) -> String {
    let (status, body) = app
        .request(Method::GET, "/api/push/vapid", None, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["public_key"].as_str().expect("public_key").to_owned()
}

/// Sends a text message and waits for its ack (so it is committed).
async fn send(ws: &mut WsClient, to: &TestUser) {
    ws.send(
        "message",
        json!({"recipientId": to.id, "messageType": "text"}),
    )
    .await;
    ws.expect("message_ack").await;
}

/// The `push` of `user`'s device `device` in `GET /api/devices`.
async fn listed_push(app: &TestApp, user: &TestUser, device: i64) -> Value {
    let (status, listed) = app.get("/api/devices", &user.token).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let entry = listed
        .as_array()
        .expect("a list")
        .iter()
        .find(|d| d["id"] == device)
        .unwrap_or_else(|| panic!("device {device} listed: {listed}"))
        .clone();
    entry["push"].clone()
}

/// A push as RFC 8030/8291/8292 and the spec want it: the exact wake body, decrypted by the
/// independent receiver; a valid VAPID token signed with the server's published key, for the
/// endpoint's origin; TTL, Urgency and Topic.
fn check_wake(push: &Value, vapid: &str, origin: &str, urgency: &str) {
    let body = if urgency == "high" {
        HIGH_WAKE
    } else {
        NORMAL_WAKE
    };
    assert_eq!(push["encoding"], "aes128gcm", "{push:#}");
    assert_eq!(push["error"], Value::Null, "decrypted: {push:#}");
    assert_eq!(push["plaintext"], body, "nothing but the wake: {push:#}");
    let token = &push["vapid"];
    assert_eq!(token["valid"], true, "VAPID: {push:#}");
    assert_eq!(token["k"], vapid, "signed with GET /api/push/vapid's key");
    assert_eq!(token["claims"]["aud"], origin);
    assert_eq!(token["claims"]["sub"], "mailto:admin@localhost");
    let headers = &push["headers"];
    assert!(
        headers["ttl"]
            .as_str()
            .is_some_and(|t| t.parse::<u64>().is_ok()),
        "TTL: {headers}"
    );
    assert_eq!(headers["urgency"], urgency, "{headers}");
    assert!(
        headers["topic"].as_str().is_some_and(|t| !t.is_empty()),
        "Topic: {headers}"
    );
}

async fn a_burst_to_a_device_without_a_socket_wakes_it_once_with_an_empty_wake(engine: Engine) {
    let app = spawn(engine).await;
    let receiver = PushReceiver::start().await;
    let alice = app.register("alice").await;
    let (bob, sub) = sleeper(&app, &receiver, "bob").await;
    assert_eq!(listed_push(&app, &bob, 1).await, "webpush");
    let mut a = app.ws(&alice).await;
    for _ in 0..20 {
        send(&mut a, &bob).await;
    }
    receiver.wait_received(&sub.id, 1, PUSH_WAIT).await;
    let pushes = receiver.assert_count_stays(&sub.id, 1, QUIET).await;
    check_wake(
        &pushes[0],
        &vapid_key(&app).await,
        receiver.origin(),
        "normal",
    );
    assert_eq!(pushes[0]["answered"], 201);
    assert_eq!(pushes[0]["path"], format!("/push/{}", sub.id));
}

async fn after_the_interval_the_next_message_wakes_the_device_again(engine: Engine) {
    let app = spawn(engine).await;
    let receiver = PushReceiver::start().await;
    let alice = app.register("alice").await;
    let (bob, sub) = sleeper(&app, &receiver, "bob").await;
    let mut a = app.ws(&alice).await;
    send(&mut a, &bob).await;
    receiver.wait_received(&sub.id, 1, PUSH_WAIT).await;
    tokio::time::sleep(PAST_INTERVAL).await;
    for _ in 0..5 {
        send(&mut a, &bob).await;
    }
    receiver.wait_received(&sub.id, 2, PUSH_WAIT).await;
    let pushes = receiver.assert_count_stays(&sub.id, 2, QUIET).await;
    check_wake(
        &pushes[1],
        &vapid_key(&app).await,
        receiver.origin(),
        "normal",
    );
}

/// The interval is an hour here: only the device's connect lets the second push through.
async fn after_the_device_connects_the_next_message_wakes_it_without_waiting(engine: Engine) {
    let settings = [
        ("PUSH_ALLOW_INSECURE_ENDPOINTS", "true"),
        ("PUSH_MIN_INTERVAL", "3600"),
    ];
    let app = TestApp::spawn_with(engine, &settings).await;
    let receiver = PushReceiver::start().await;
    let alice = app.register("alice").await;
    let (bob, sub) = sleeper(&app, &receiver, "bob").await;
    let mut a = app.ws(&alice).await;
    send(&mut a, &bob).await;
    receiver.wait_received(&sub.id, 1, PUSH_WAIT).await;
    send(&mut a, &bob).await; // coalesced: the device was woken and has not come
    // Woken, the device connects (and gets its messages), then goes away again.
    let mut b = app.ws(&bob).await;
    for _ in 0..2 {
        b.expect("message").await;
    }
    b.expect_quiet().await;
    b.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut a, &bob).await;
    receiver.wait_received(&sub.id, 2, PUSH_WAIT).await;
    receiver.assert_count_stays(&sub.id, 2, QUIET).await;
}

async fn a_connected_device_and_typing_wake_nobody(engine: Engine) {
    let app = spawn(engine).await;
    let receiver = PushReceiver::start().await;
    let alice = app.register("alice").await;
    let (bob, bobs) = sleeper(&app, &receiver, "bob").await;
    let (carol, carols) = sleeper(&app, &receiver, "carol").await;
    let (dave, daves) = sleeper(&app, &receiver, "dave").await;
    let conversation = app.conversation(&alice, &carol).await;
    let mut b = app.ws(&bob).await;
    b.expect_quiet().await;
    let mut a = app.ws(&alice).await;

    // Bob is here: his messages reach his socket, no push.
    for _ in 0..3 {
        send(&mut a, &bob).await;
        b.expect("message").await;
    }
    // Typing to Carol, who is away: ephemeral, no push.
    for typing in [true, false] {
        a.send(
            "typing_indicator",
            json!({"conversationId": conversation["id"], "isTyping": typing}),
        )
        .await;
    }
    a.expect_quiet().await;
    // Dave's push comes after anything the events above would have caused.
    send(&mut a, &dave).await;
    receiver.wait_received(&daves.id, 1, PUSH_WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received(&bobs.id).await, Vec::<Value>::new());
    assert_eq!(receiver.received(&carols.id).await, Vec::<Value>::new());
}

async fn a_call_ring_wakes_with_high_urgency(engine: Engine) {
    let app = spawn(engine).await;
    let receiver = PushReceiver::start().await;
    let alice = app.register("alice").await;
    let (bob, sub) = sleeper(&app, &receiver, "bob").await;
    let (status, call) = app
        .post(
            "/api/calls",
            &alice.token,
            json!({"recipient_id": bob.id, "call_type": "audio"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{call}");
    receiver.wait_received(&sub.id, 1, PUSH_WAIT).await;
    let pushes = receiver.assert_count_stays(&sub.id, 1, QUIET).await;
    check_wake(
        &pushes[0],
        &vapid_key(&app).await,
        receiver.origin(),
        "high",
    );
}

async fn a_unifiedpush_endpoint_gets_the_wake_as_plain_json(engine: Engine) {
    let app = spawn(engine).await;
    let receiver = PushReceiver::start().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let sub = receiver.subscribe().await;
    let body = json!({"kind": "unifiedpush", "endpoint": sub.endpoint});
    let (status, answer) = put_push(&app, &bob, 1, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer, json!({"device_id": 1, "kind": "unifiedpush"}));
    assert_eq!(listed_push(&app, &bob, 1).await, "unifiedpush");
    let mut a = app.ws(&alice).await;
    send(&mut a, &bob).await;
    let pushes = receiver.wait_received(&sub.id, 1, PUSH_WAIT).await;
    let push = &pushes[0];
    assert_eq!(push["encoding"], Value::Null, "not encrypted: {push:#}");
    assert_eq!(push["plaintext"], NORMAL_WAKE, "{push:#}");
    let headers = &push["headers"];
    assert!(
        (headers["content-type"].as_str()).is_some_and(|t| t.starts_with("application/json")),
        "{headers}"
    );
    assert!(headers["ttl"].is_string(), "TTL: {headers}");
    assert_eq!(headers["urgency"], "normal", "{headers}");
    receiver.assert_count_stays(&sub.id, 1, QUIET).await;
}

async fn an_envelope_wakes_only_the_device_it_is_for(engine: Engine) {
    let app = spawn(engine).await;
    let receiver = PushReceiver::start().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (phone_sub, tablet_sub) = (receiver.subscribe().await, receiver.subscribe().await);
    for device in [1, 2] {
        link_device(&app, &bob, device).await;
    }
    register_push(&app, &bob, 1, &phone_sub).await;
    register_push(&app, &bob, 2, &tablet_sub).await;
    assert_eq!(listed_push(&app, &bob, 2).await, "webpush");
    // The phone is here, the tablet is not.
    let mut phone = device_socket(&app, &bob, 1).await;
    phone.expect("queue_empty").await;
    let mut sender = device_socket(&app, &alice, 1).await;
    sender.expect("queue_empty").await;

    let id = Uuid::now_v7();
    let envelope = |device: i64| json!({"deviceId": device, "type": 3, "content": "AAECAw=="});
    sender
        .send(
            "message",
            json!({"recipientId": bob.id, "messageType": "signal", "id": id,
                   "envelopes": [envelope(1), envelope(2)]}),
        )
        .await;
    sender.expect("message_ack").await;
    phone.expect("message").await;

    let pushes = receiver.wait_received(&tablet_sub.id, 1, PUSH_WAIT).await;
    check_wake(
        &pushes[0],
        &vapid_key(&app).await,
        receiver.origin(),
        "normal",
    );
    receiver.assert_count_stays(&tablet_sub.id, 1, QUIET).await;
    assert_eq!(receiver.received(&phone_sub.id).await, Vec::<Value>::new());
}

async fn a_gone_endpoint_is_removed_and_not_tried_again(engine: Engine) {
    let app = spawn(engine).await;
    let receiver = PushReceiver::start().await;
    let alice = app.register("alice").await;
    let (bob, sub) = sleeper(&app, &receiver, "bob").await;
    receiver.set_mode(&sub.id, json!({"status": 410})).await;
    let mut a = app.ws(&alice).await;
    send(&mut a, &bob).await;
    let pushes = receiver.wait_received(&sub.id, 1, PUSH_WAIT).await;
    assert_eq!(pushes[0]["answered"], 410);
    let deadline = Instant::now() + WAIT;
    while listed_push(&app, &bob, 1).await != Value::Null {
        assert!(
            Instant::now() < deadline,
            "the gone registration was not removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the interval, more messages: nobody is pushed.
    tokio::time::sleep(PAST_INTERVAL).await;
    for _ in 0..3 {
        send(&mut a, &bob).await;
    }
    receiver.assert_count_stays(&sub.id, 1, QUIET).await;
}

async fn a_throttled_push_is_retried_and_a_redirect_is_not_followed(engine: Engine) {
    let app = spawn(engine).await;
    let receiver = PushReceiver::start().await;
    let alice = app.register("alice").await;
    let (bob, bobs) = sleeper(&app, &receiver, "bob").await;
    let (carol, carols) = sleeper(&app, &receiver, "carol").await;
    let vapid = vapid_key(&app).await;
    let mut a = app.ws(&alice).await;

    // 429, then 201: retried until it gets through, once.
    receiver
        .set_mode(&bobs.id, json!({"status": 429, "retry_after": 1}))
        .await;
    send(&mut a, &bob).await;
    receiver.wait_received(&bobs.id, 1, PUSH_WAIT).await;
    receiver.set_mode(&bobs.id, json!({})).await;
    receiver.wait_received(&bobs.id, 2, PUSH_WAIT).await;
    let pushes = receiver.assert_count_stays(&bobs.id, 2, QUIET).await;
    assert_eq!(pushes[0]["answered"], 429);
    assert_eq!(pushes[1]["answered"], 201);
    for push in &pushes {
        check_wake(push, &vapid, receiver.origin(), "normal");
    }

    // A redirect is not followed: its Location is never asked for.
    let elsewhere = format!("{}/elsewhere", receiver.origin());
    receiver
        .set_mode(&carols.id, json!({"status": 307, "location": elsewhere}))
        .await;
    send(&mut a, &carol).await;
    let pushes = receiver.wait_received(&carols.id, 1, PUSH_WAIT).await;
    assert_eq!(pushes[0]["answered"], 307);
    tokio::time::sleep(QUIET).await;
    let paths: Vec<Value> = (receiver.requests().await.iter())
        .map(|r| r["path"].clone())
        .collect();
    assert!(!paths.contains(&json!("/elsewhere")), "{paths:?}");
}

/// The only timed check, as the issue asks: pushes must never hold up routing.
async fn a_hanging_endpoint_does_not_slow_routing(engine: Engine) {
    let app = spawn(engine).await;
    let receiver = PushReceiver::start().await;
    let alice = app.register("alice").await;
    let carol = app.register("carol").await;
    let (bob, sub) = sleeper(&app, &receiver, "bob").await;
    receiver.set_mode(&sub.id, json!({"hang": true})).await;
    let mut a = app.ws(&alice).await;
    let mut c = app.ws(&carol).await;
    c.expect_quiet().await;
    send(&mut a, &bob).await;
    // Bob's push service has the request and sits on it.
    receiver.wait_received(&sub.id, 1, PUSH_WAIT).await;

    let bound = Duration::from_secs(2);
    for round in 0..5 {
        let started = Instant::now();
        send(&mut a, &bob).await;
        assert!(
            started.elapsed() < bound,
            "round {round}: Bob's ack took {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        send(&mut a, &carol).await;
        c.expect("message").await;
        assert!(
            started.elapsed() < bound,
            "round {round}: Carol's message took {:?}",
            started.elapsed()
        );
    }
    receiver.set_mode(&sub.id, json!({})).await;
}

async fn unsafe_endpoints_are_refused_and_not_pushed_to_once_insecure_endpoints_are_off(
    engine: Engine,
) {
    let receiver = PushReceiver::start().await;
    let sub = receiver.subscribe().await;
    {
        let app = TestApp::spawn(engine).await;
        let bob = app.register("bob").await;
        for endpoint in [
            sub.endpoint.clone(),
            "https://127.0.0.1/push/1".to_owned(),
            "https://localhost/push/1".to_owned(),
            "https://169.254.169.254/latest/meta-data".to_owned(),
            "https://[::1]/push/1".to_owned(),
            "https://10.0.0.1/push/1".to_owned(),
        ] {
            let mut body = sub.registration();
            body["endpoint"] = json!(endpoint);
            let (status, answer) = put_push(&app, &bob, 1, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{endpoint}: {answer}");
            assert_eq!(answer["error"]["code"], "unsafe_endpoint", "{endpoint}");
            let unified = json!({"kind": "unifiedpush", "endpoint": endpoint});
            let (status, answer) = put_push(&app, &bob, 1, unified).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{endpoint}: {answer}");
            assert_eq!(answer["error"]["code"], "unsafe_endpoint", "{endpoint}");
        }
    }

    // Accepted while allowed; the operator turns it off: the server does not push there.
    let mut app = spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    register_push(&app, &bob, 1, &sub).await;
    app.restart_with(&[("PUSH_ALLOW_INSECURE_ENDPOINTS", "false")])
        .await;
    let mut a = app.ws(&alice).await;
    for _ in 0..3 {
        send(&mut a, &bob).await;
    }
    receiver.assert_count_stays(&sub.id, 0, QUIET * 2).await;
    assert!(receiver.requests().await.is_empty());
}

async fn bad_registrations_are_refused_and_a_deleted_one_is_not_pushed_to(engine: Engine) {
    let app = spawn(engine).await;
    let receiver = PushReceiver::start().await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let sub = receiver.subscribe().await;
    let with_keys = |p256dh: Value, auth: Value| json!({"kind": "webpush", "endpoint": sub.endpoint, "keys": {"p256dh": p256dh, "auth": auth}});
    let not_a_point = {
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
        let mut bytes = vec![4_u8];
        bytes.extend([0xFF; 64]);
        URL_SAFE_NO_PAD.encode(bytes)
    };
    for (what, body, code) in [
        (
            "unknown kind",
            json!({"kind": "pigeon", "endpoint": sub.endpoint}),
            None,
        ),
        ("no kind", json!({"endpoint": sub.endpoint}), None),
        (
            "missing keys",
            json!({"kind": "webpush", "endpoint": sub.endpoint}),
            None,
        ),
        (
            "missing endpoint",
            json!({"kind": "webpush", "keys": {"p256dh": sub.p256dh, "auth": sub.auth}}),
            None,
        ),
        (
            "p256dh not base64url",
            with_keys(json!("not base64!"), json!(sub.auth)),
            None,
        ),
        (
            "p256dh too short",
            with_keys(json!("BAAA"), json!(sub.auth)),
            None,
        ),
        (
            "p256dh not on the curve",
            with_keys(json!(not_a_point), json!(sub.auth)),
            None,
        ),
        (
            "auth of 15 bytes",
            with_keys(json!(sub.p256dh), json!("AAAAAAAAAAAAAAAAAAAA")),
            None,
        ),
        (
            "auth of 17 bytes",
            with_keys(json!(sub.p256dh), json!("AAAAAAAAAAAAAAAAAAAAAAA")),
            None,
        ),
        (
            "endpoint not a URL",
            json!({"kind": "unifiedpush", "endpoint": "not a url"}),
            None,
        ),
        (
            "fcm unconfigured",
            json!({"kind": "fcm", "token": "abc"}),
            Some("push_unavailable"),
        ),
        (
            "apns unconfigured",
            json!({"kind": "apns", "token": "abc"}),
            Some("push_unavailable"),
        ),
    ] {
        let (status, answer) = put_push(&app, &bob, 1, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        let got = answer["error"]["code"].as_str();
        assert!(got.is_some(), "{what}: a JSON error: {answer}");
        if let Some(code) = code {
            assert_eq!(got, Some(code), "{what}");
        }
    }

    // Devices that are not the caller's: unknown, out of range, someone else's.
    link_device(&app, &alice, 2).await;
    for device in [2, 5, 0, 128] {
        let (status, answer) = put_push(&app, &bob, device, sub.registration()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "device {device}: {answer}");
    }
    // A device-bound session manages only its own device.
    let (laptop, _) = login_as(&app, &bob, 2, Some("Laptop")).await;
    let (status, answer) = put_push(&app, &laptop, 1, sub.registration()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(answer["error"]["code"], "wrong_device");
    // Nothing was registered.
    let (_, listed) = app.get("/api/devices", &bob.token).await;
    let pushes: Vec<&Value> = (listed.as_array().expect("a list").iter())
        .map(|d| &d["push"])
        .collect();
    assert!(pushes.iter().all(|p| p.is_null()), "{listed}");

    // Registered, then deleted: not pushed to.
    let (carol, carols) = sleeper(&app, &receiver, "carol").await;
    register_push(&app, &bob, 1, &sub).await;
    let (status, _) = app
        .request(
            Method::DELETE,
            "/api/devices/1/push",
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(listed_push(&app, &bob, 1).await, Value::Null);
    let mut a = app.ws(&alice).await;
    send(&mut a, &bob).await;
    send(&mut a, &carol).await;
    receiver.wait_received(&carols.id, 1, PUSH_WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received(&sub.id).await, Vec::<Value>::new());
}

async fn unlinking_the_device_or_deleting_the_account_drops_its_registration(engine: Engine) {
    let app = spawn(engine).await;
    let receiver = PushReceiver::start().await;
    let alice = app.register("alice").await;
    let (bob, phone_sub) = sleeper(&app, &receiver, "bob").await;
    let (laptop, _) = login_as(&app, &bob, 2, Some("Laptop")).await;
    let laptop_sub = receiver.subscribe().await;
    register_push(&app, &laptop, 2, &laptop_sub).await;
    assert_eq!(listed_push(&app, &bob, 2).await, "webpush");

    let (status, _) = app
        .request(Method::DELETE, "/api/devices/2", Some(&bob.token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut a = app.ws(&alice).await;
    send(&mut a, &bob).await;
    // The phone is woken; the unlinked laptop is not.
    receiver.wait_received(&phone_sub.id, 1, PUSH_WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received(&laptop_sub.id).await, Vec::<Value>::new());

    // The account goes, its registrations with it.
    let user = kisse_backend::model::UserId(bob.id.parse().expect("uuid"));
    app.delete_account(&bob).await;
    let push = app.state.store.push();
    push.forget(user);
    let left = push.devices(user).await.expect("read registrations");
    assert!(left.is_empty(), "registrations left: {left:?}");
}

/// Bob blocks alice and has no socket: her message, envelope and call wake none of his devices
/// (withheld, they are nothing waiting for him). Carol's message then wakes his device at once:
/// nothing of alice's took the device's interval either.
async fn a_blocked_users_message_envelope_and_call_wake_nothing(engine: Engine) {
    let app = spawn(engine).await;
    let receiver = PushReceiver::start().await;
    let alice = app.register("alice").await;
    let carol = app.register("carol").await;
    let (bob, bobs) = sleeper(&app, &receiver, "bob").await;
    let (dave, daves) = sleeper(&app, &receiver, "dave").await;
    link_device(&app, &bob, 1).await;
    let (status, body) = app
        .post(
            &format!("/api/users/{}/block", alice.id),
            &bob.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut a = app.ws(&alice).await;
    send(&mut a, &bob).await;
    let envelopes = json!({"messageType": "signal",
        "envelopes": [{"deviceId": 1, "type": 3, "content": "AAECAw=="}]});
    let (status, sent) = app
        .request(
            Method::PUT,
            &format!("/api/messages/{}", bob.id),
            Some(&alice.token),
            Some(envelopes),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let call = json!({"recipient_id": bob.id, "call_type": "audio"});
    let (status, call) = app.post("/api/calls", &alice.token, call).await;
    assert_eq!(status, StatusCode::CREATED, "{call}");
    // Dave's push comes after anything alice's events would have caused.
    send(&mut a, &dave).await;
    receiver.wait_received(&daves.id, 1, PUSH_WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received(&bobs.id).await, Vec::<Value>::new());

    let mut c = app.ws(&carol).await;
    send(&mut c, &bob).await;
    let pushes = receiver.wait_received(&bobs.id, 1, PUSH_WAIT).await;
    check_wake(
        &pushes[0],
        &vapid_key(&app).await,
        receiver.origin(),
        "normal",
    );
    receiver.assert_count_stays(&bobs.id, 1, QUIET).await;
}

// --- two nodes: PostgreSQL and Redis ------------------------------------------------------------

/// Two nodes on one PostgreSQL and one Redis, with the push settings (`b` drops first), or
/// `None` without PostgreSQL.
async fn push_cluster() -> Option<(TestApp, TestApp)> {
    if !Engine::Postgres.available() {
        eprintln!("TEST_DATABASE_URL is not set: push cluster tests (PostgreSQL only) not run");
        return None;
    }
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("kt-{}", Uuid::new_v4().simple());
    let mut settings = vec![
        ("REDIS_URL", redis.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
        ("PRESENCE_TTL", "2"),
    ];
    settings.extend_from_slice(SETTINGS);
    let a = TestApp::spawn_with(Engine::Postgres, &settings).await;
    let b = a.spawn_node(&[]).await;
    for node in [&a, &b] {
        let deadline = Instant::now() + WAIT * 3;
        loop {
            let health: Value = match reqwest::get(node.url("/health")).await {
                Ok(response) => response.json().await.unwrap_or_default(),
                Err(_) => Value::Null,
            };
            if health["redis"]["status"] == "ok" {
                break;
            }
            assert!(Instant::now() < deadline, "the node did not reach Redis");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Some((b, a))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_registration_made_on_one_node_is_pushed_once_for_a_message_on_the_other() {
    let Some((b, a)) = push_cluster().await else {
        return;
    };
    let receiver = PushReceiver::start().await;
    let alice = a.register("alice").await;
    let (bob, sub) = sleeper(&b, &receiver, "bob").await;
    let mut ws = a.ws(&alice).await;
    for _ in 0..5 {
        send(&mut ws, &bob).await;
    }
    let pushes = receiver.wait_received(&sub.id, 1, PUSH_WAIT).await;
    check_wake(
        &pushes[0],
        &vapid_key(&b).await,
        receiver.origin(),
        "normal",
    );
    assert_eq!(
        vapid_key(&a).await,
        vapid_key(&b).await,
        "one VAPID key per cluster"
    );
    receiver.assert_count_stays(&sub.id, 1, QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_device_connected_to_another_node_is_not_pushed() {
    let Some((b, a)) = push_cluster().await else {
        return;
    };
    let receiver = PushReceiver::start().await;
    let alice = a.register("alice").await;
    let (bob, bobs) = sleeper(&a, &receiver, "bob").await;
    let (carol, carols) = sleeper(&a, &receiver, "carol").await;
    let mut on_b = b.ws(&bob).await;
    on_b.expect_quiet().await;
    let mut ws = a.ws(&alice).await;
    for _ in 0..3 {
        send(&mut ws, &bob).await;
        on_b.expect("message").await;
    }
    // Carol's push comes after anything Bob's messages would have caused.
    send(&mut ws, &carol).await;
    receiver.wait_received(&carols.id, 1, PUSH_WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received(&bobs.id).await, Vec::<Value>::new());
}
