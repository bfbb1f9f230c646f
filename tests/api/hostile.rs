//! Hostile input: a property-based fuzz of the WebSocket frame decoder and of the REST JSON
//! bodies (no panic, no 5xx, no state change on error), and the authorization matrix (a third
//! user learns nothing about resources that are not theirs).

use std::time::Duration;

use crate::common::{Engine, TestApp, TestUser, WAIT, WsClient};
use proptest::{
    prelude::*,
    test_runner::{Config as RunnerConfig, TestRunner},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

scenarios!(
    a_third_user_gets_the_same_answer_as_for_nothing,
    a_flood_of_typing_presence_and_calls_never_closes_the_recipients_socket,
    binary_and_undecodable_frames_count_toward_the_frame_limit,
    parallel_upgrades_never_exceed_the_socket_cap,
    a_sync_from_zero_or_a_cursorless_connect_sends_a_bounded_window,
);

/// Arbitrary JSON, a few levels deep, with the keys the server looks for.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("type".to_owned()),
        Just("payload".to_owned()),
        Just("recipientId".to_owned()),
        Just("email".to_owned()),
        Just("password".to_owned()),
        Just("username".to_owned()),
        Just("refresh_token".to_owned()),
        Just("messageType".to_owned()),
        Just("id".to_owned()),
        Just("status".to_owned()),
        Just("conversationId".to_owned()),
        "[a-zA-Z_]{0,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from(uuid::Uuid::nil().to_string())),
        prop_oneof![
            Just("message"),
            Just("typing_indicator"),
            Just("heartbeat"),
            Just("read_receipt"),
            Just("presence_update"),
            Just("call_request"),
            Just("call_response"),
            Just("channel_message")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// Text that is JSON, almost JSON, or nothing like it.
fn frame_text() -> impl Strategy<Value = String> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string()),
        (json_value(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let text = v.to_string();
            let at = cut.index(text.len() + 1);
            text.get(..at).unwrap_or(&text).to_owned()
        }),
        ".{0,200}",
        "[\\[\\]{}\",:0-9a-z\\\\]{0,200}",
    ]
}

#[test]
fn the_frame_decoder_never_panics() {
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 4000,
        ..RunnerConfig::default()
    });
    runner
        .run(&frame_text(), |text| {
            let _ = kisse_backend::ws::protocol::decode(&text);
            Ok(())
        })
        .expect("no input makes the decoder panic");
    // Deep nesting is refused before it is parsed.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(kisse_backend::ws::protocol::decode(&deep).is_err());
}

/// (method, path, authenticated) of every route that takes a JSON body.
fn body_routes(conversation: &str) -> Vec<(Method, String, bool)> {
    vec![
        (Method::POST, "/api/auth/register".into(), false),
        (Method::POST, "/api/auth/login".into(), false),
        (Method::POST, "/api/auth/refresh".into(), false),
        (Method::POST, "/api/auth/password".into(), true),
        (Method::DELETE, "/api/auth/me".into(), true),
        (Method::POST, "/api/conversations".into(), true),
        (
            Method::POST,
            format!("/api/messages/{conversation}/content"),
            true,
        ),
        (Method::POST, "/api/calls".into(), true),
        (Method::POST, "/api/presence".into(), true),
        (Method::PUT, "/api/keys".into(), true),
        (Method::POST, "/api/stories".into(), true),
        (Method::POST, "/api/channels".into(), true),
        (
            Method::POST,
            format!("/api/channels/{conversation}/members"),
            true,
        ),
        (
            Method::POST,
            format!("/api/channels/{conversation}/messages"),
            true,
        ),
    ]
}

fn rest_bodies_never_fail_the_server_or_change_state(engine: Engine) {
    if !engine.available() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (app, alice) = runtime.block_on(async {
        let app = TestApp::spawn(engine).await;
        let alice = app.register("alice").await;
        (app, alice)
    });
    let routes = body_routes(&uuid::Uuid::new_v4().to_string());
    let before = runtime
        .block_on(app.state.store.security().dump_tables())
        .expect("dump");
    let strategy = (
        0..routes.len(),
        prop_oneof![json_value().prop_map(|v| v.to_string()), ".{0,120}",],
    );
    let mut runner = TestRunner::new(RunnerConfig {
        cases: 300,
        ..RunnerConfig::default()
    });
    runner
        .run(&strategy, |(route, body)| {
            let (method, path, authenticated) = &routes[route];
            let status = runtime.block_on(async {
                let mut request = app
                    .http
                    .request(method.clone(), app.url(path))
                    .header("content-type", "application/json")
                    .body(body.clone());
                if *authenticated {
                    request = request.bearer_auth(&alice.token);
                }
                request.send().await.expect("send").status()
            });
            prop_assert!(
                !status.is_server_error(),
                "{method} {path} {body:?} → {status}"
            );
            prop_assert!(!status.is_success(), "{method} {path} {body:?} → {status}");
            Ok(())
        })
        .expect("no body fails the server");
    let after = runtime
        .block_on(app.state.store.security().dump_tables())
        .expect("dump");
    assert_eq!(before, after, "refused bodies changed nothing");
    drop(app);
}

#[test]
fn rest_bodies_never_fail_the_server_sqlite() {
    rest_bodies_never_fail_the_server_or_change_state(Engine::Sqlite);
}

#[test]
fn rest_bodies_never_fail_the_server_postgres() {
    rest_bodies_never_fail_the_server_or_change_state(Engine::Postgres);
}

/// For each resource route, the third user's answer for a real resource of others must be the
/// answer for a random id: a 403 or 404 with the same body.
async fn a_third_user_gets_the_same_answer_as_for_nothing(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let eve: TestUser = app.register("eve").await;
    let conversation = app.conversation(&alice, &bob).await;
    let conversation = conversation["id"].as_str().expect("id").to_owned();
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    let message = uuid::Uuid::new_v4().to_string();
    a.send(
        "message",
        json!({"recipientId": bob.id, "messageType": "text", "id": message}),
    )
    .await;
    a.expect("message_ack").await;
    b.expect("message").await;
    let content = json!({"message_id": message, "content_data": "q83vEjRWeJA=", "content_hash": null, "expires_at": null});
    assert_eq!(
        app.post(
            &format!("/api/messages/{message}/content"),
            &alice.token,
            content.clone()
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let (_, story) = app
        .post(
            "/api/stories",
            &alice.token,
            json!({"content_text": "x", "media_type": "image"}),
        )
        .await;
    let story = story["id"].as_str().expect("story").to_owned();
    let (_, channel) = app
        .post(
            "/api/channels",
            &alice.token,
            json!({"name": "secret", "is_private": true}),
        )
        .await;
    let channel = channel["id"].as_str().expect("channel").to_owned();

    let nothing = uuid::Uuid::new_v4().to_string();
    let cases: Vec<(Method, &str, &str, Option<Value>)> = vec![
        (
            Method::GET,
            "/api/conversations/{}/messages",
            &conversation,
            None,
        ),
        (
            Method::POST,
            "/api/messages/{}/read",
            &message,
            Some(json!({})),
        ),
        (Method::GET, "/api/messages/{}/content", &message, None),
        (
            Method::POST,
            "/api/messages/{}/content",
            &message,
            Some(content.clone()),
        ),
        (
            Method::POST,
            "/api/stories/{}/view",
            &story,
            Some(json!({})),
        ),
        (Method::GET, "/api/channels/{}/messages", &channel, None),
        (
            Method::POST,
            "/api/channels/{}/messages",
            &channel,
            Some(json!({"message_type": "text"})),
        ),
        (
            Method::POST,
            "/api/channels/{}/join",
            &channel,
            Some(json!({})),
        ),
        (
            Method::POST,
            "/api/channels/{}/leave",
            &channel,
            Some(json!({})),
        ),
        (
            Method::POST,
            "/api/channels/{}/members",
            &channel,
            Some(json!({"user_id": eve.id})),
        ),
    ];
    let mut leaks = Vec::new();
    for (method, template, id, body) in cases {
        let real = app
            .request(
                method.clone(),
                &template.replace("{}", id),
                Some(&eve.token),
                body.clone(),
            )
            .await;
        let fake = app
            .request(
                method.clone(),
                &template.replace("{}", &nothing),
                Some(&eve.token),
                body,
            )
            .await;
        assert!(
            matches!(real.0, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND),
            "{method} {template}: {real:?}"
        );
        if real != fake {
            leaks.push(format!("{method} {template}"));
        }
    }
    assert_eq!(
        leaks,
        Vec::<String>::new(),
        "routes whose answer tells an existing id from a random one"
    );
    // And nothing changed for the owners.
    let (_, history) = app
        .get(
            &format!("/api/conversations/{conversation}/messages"),
            &bob.token,
        )
        .await;
    assert_eq!(history[0]["is_read"], false);
}

/// More frames than the socket buffers of a loopback connection hold (as in tests/delivery.rs).
const FLOOD: usize = 30_000;

/// Someone who shares a conversation with the victim floods it with what needs no storage
/// (typing, presence, calls rung and cancelled at once) while the victim reads nothing: the
/// victim's socket stays open, a real message reaches it promptly, and the typing state it
/// ends up with is the latest one.
async fn a_flood_of_typing_presence_and_calls_never_closes_the_recipients_socket(engine: Engine) {
    // A tiny queue, and the flooder's own limits lifted: the recipient's side must hold on
    // its own (many senders together are not limited by any one's limit).
    let settings = [
        ("WS_QUEUE_LEN", "8"),
        ("WS_FRAMES_PER_SECOND", "1000000"),
        ("WS_EPHEMERAL_PER_SECOND", "1000000"),
        ("WS_MESSAGES_PER_SECOND", "1000000"),
    ];
    let app = TestApp::spawn_with(engine, &settings).await;
    let mallory = app.register("mallory").await;
    let victim = app.register("victim").await;
    let alice = app.register("alice").await;
    let conversation = app.conversation(&mallory, &victim).await;
    let mut m = app.ws(&mallory).await;
    let mut a = app.ws(&alice).await;
    let path = format!("/ws?token={}", victim.token);
    let mut v = WsClient::connect_slow(app.addr, &path).await;
    v.expect_quiet().await;

    for i in 0..FLOOD {
        let typing = json!({"conversationId": conversation["id"], "isTyping": i % 2 == 0});
        m.send("typing_indicator", typing).await;
        if i % 100 == 0 {
            let status = if i % 200 == 0 { "away" } else { "online" };
            m.send("presence_update", json!({"status": status})).await;
        }
        if i % 1000 == 0 {
            let call = format!("call-{i}");
            let request = json!({"recipientId": victim.id, "callType": "audio", "callId": call});
            m.send("call_request", request).await;
            m.send("call_response", json!({"callId": call, "response": "end"}))
                .await;
        }
    }
    // Once mallory's heartbeat is answered, the whole flood was handled.
    m.send("heartbeat", json!({})).await;
    loop {
        let frame = m.try_recv(Duration::from_secs(60)).await.expect("answered");
        if frame["type"] == "heartbeat_response" {
            break;
        }
    }

    a.send(
        "message",
        json!({"recipientId": victim.id, "messageType": "text"}),
    )
    .await;
    a.expect("message_ack").await;
    let mut typing = None;
    let message = loop {
        let frame = v
            .try_recv(WAIT)
            .await
            .expect("the victim's socket stays open");
        match frame["type"].as_str() {
            Some("message") => break frame["payload"].clone(),
            Some("typing_indicator") => typing = Some(frame["payload"]["isTyping"].clone()),
            _ => {}
        }
    };
    assert_eq!(message["senderId"], alice.id);
    // States still waiting come after it, paced; the last one seen is the last one sent.
    while let Some(frame) = v.try_recv(Duration::from_secs(2)).await {
        if frame["type"] == "typing_indicator" {
            typing = Some(frame["payload"]["isTyping"].clone());
        }
    }
    assert_eq!(
        typing,
        Some(json!((FLOOD - 1).is_multiple_of(2))),
        "the latest state"
    );
    v.expect_quiet().await;
}

/// Binary frames and text that is not a frame are frames too: a flood of either ends in
/// `rate_limited` and then 1008, as a flood of valid frames does.
async fn binary_and_undecodable_frames_count_toward_the_frame_limit(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("WS_FRAMES_PER_SECOND", "1")]).await;
    let alice = app.register("alice").await;
    for flood in [
        Message::Binary(vec![0u8; 16].into()),
        Message::Text("not json".into()),
    ] {
        let mut ws = app.ws(&alice).await;
        for _ in 0..80 {
            // The server may close before the last ones are written.
            let _ = ws.send_message(flood.clone()).await;
        }
        assert_eq!(ws.closed().await, Some(CloseCode::Policy), "{flood:?}");
    }
    // Other sockets of the user are unaffected.
    app.ws(&alice).await.expect_quiet().await;
}

/// Upgrades that arrive together are counted together: never more sockets than the cap.
async fn parallel_upgrades_never_exceed_the_socket_cap(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("MAX_SOCKETS_PER_USER", "2")]).await;
    let alice = app.register("alice").await;
    let path = format!("/ws?token={}", alice.token);
    let attempts = (0..16).map(|_| app.ws_url(&path));
    let results = futures_util::future::join_all(attempts).await;
    let mut open = Vec::new();
    for result in results {
        match result {
            Ok(ws) => open.push(ws),
            Err(status) => assert_eq!(status, StatusCode::TOO_MANY_REQUESTS),
        }
    }
    for ws in &mut open {
        ws.expect_silent().await;
    }
    assert_eq!(open.len(), 2, "the cap, and no more");
    let id = kisse_backend::model::UserId(alice.id.parse().expect("uuid"));
    assert_eq!(app.state.hub.user_socket_count(id), 2);
}

/// A `sync` from 0 and a connect without a cursor read only the latest `WS_CATCH_UP_MAX`
/// events, however long the inbox: bounded work per request (older messages stay in the
/// history over REST).
async fn a_sync_from_zero_or_a_cursorless_connect_sends_a_bounded_window(engine: Engine) {
    const SENT: i64 = 12;
    const WINDOW: i64 = 5;
    let app = TestApp::spawn_with(engine, &[("WS_CATCH_UP_MAX", "5")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let mut a = app.ws(&alice).await;
    let mut b = app.ws(&bob).await;
    for _ in 0..SENT {
        for to in [&bob, &carol] {
            a.send(
                "message",
                json!({"recipientId": to.id, "messageType": "text"}),
            )
            .await;
            a.expect("message_ack").await;
        }
    }
    // Live events are not limited: bob got all of them.
    for cursor in 1..=SENT {
        assert_eq!(b.expect("message").await["cursor"], cursor);
    }
    async fn window(ws: &mut WsClient) {
        for cursor in SENT - WINDOW + 1..=SENT {
            assert_eq!(ws.expect("message").await["cursor"], cursor);
        }
        ws.expect_quiet().await;
    }
    b.send("sync", json!({"since": 0})).await;
    window(&mut b).await;
    // Carol, offline all along, connects as the app does (no cursor), then with `since=0`.
    window(&mut app.ws(&carol).await).await;
    let since_zero = format!("/ws?token={}&since=0", carol.token);
    window(&mut app.ws_url(&since_zero).await.expect("socket")).await;
    // The rest is in the history.
    let (_, conversation) = app
        .post(
            "/api/conversations",
            &carol.token,
            json!({"participant_id": alice.id}),
        )
        .await;
    let path = format!(
        "/api/conversations/{}/messages?limit=100",
        conversation["id"].as_str().expect("id")
    );
    let (_, history) = app.get(&path, &carol.token).await;
    assert_eq!(history.as_array().expect("array").len(), SENT as usize);
}
