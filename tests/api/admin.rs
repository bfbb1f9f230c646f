//! The admin API: off without `ADMIN_TOKEN`, open to that token only, rate limited; suspension,
//! sign-out everywhere and deletion as the user and the app see them; the totals of
//! `GET /api/admin/stats` moving with what users do.

use std::time::Duration;

use crate::common::{Engine, LogCapture, TestApp, TestUser, WAIT, WsClient};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use uuid::Uuid;

use super::{envelopes::link_device, limits::assert_rate_limited};

scenarios!(
    the_admin_api_is_absent_without_a_token,
    only_the_admin_token_opens_it_and_it_is_never_logged,
    a_suspended_user_is_signed_out_everywhere_until_unsuspended,
    a_suspended_users_surviving_session_is_refused_all_the_same,
    revoking_sessions_signs_a_user_out_who_may_sign_in_again,
    deleting_a_user_is_the_cascade_of_self_deletion,
    stats_move_with_users_devices_sockets_and_what_waits,
    admin_calls_are_rate_limited_per_address,
);

pub const ADMIN_TOKEN: &str = "admin-token-that-is-at-least-32-bytes";

async fn admin_app(engine: Engine) -> TestApp {
    TestApp::spawn_with(engine, &[("ADMIN_TOKEN", ADMIN_TOKEN)]).await
}

/// An admin call with the admin token.
pub async fn admin(app: &TestApp, method: Method, path: &str) -> (StatusCode, Value) {
    app.request(method, path, Some(ADMIN_TOKEN), None).await
}

pub async fn stats(app: &TestApp) -> Value {
    let (status, body) = admin(app, Method::GET, "/api/admin/stats").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn refresh(app: &TestApp, refresh_token: &str) -> (StatusCode, Value) {
    let body = json!({"refresh_token": refresh_token});
    app.request(Method::POST, "/api/auth/refresh", None, Some(body))
        .await
}

fn assert_suspended(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "suspended", "{body}");
}

/// Sends a message frame with a client id and waits for its ack.
async fn send(ws: &mut WsClient, to: &TestUser) -> String {
    let id = Uuid::now_v7().to_string();
    let frame = json!({"recipientId": to.id, "messageType": "text", "id": id});
    ws.send("message", frame).await;
    assert_eq!(ws.expect("message_ack").await["id"], id.as_str());
    id
}

/// Polls the stats until `check` holds (delivery marks and acks are recorded in batches).
async fn stats_until(app: &TestApp, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = stats(app).await;
        if check(&stats) {
            return stats;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn the_admin_api_is_absent_without_a_token(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    // The answer of a route that does not exist, whatever the token.
    let (status, absent) = admin(&app, Method::GET, "/api/admin/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let user = format!("/api/admin/users/{}", alice.id);
    for (method, path) in [
        (Method::GET, "/api/admin/stats".to_owned()),
        (Method::POST, format!("{user}/suspend")),
        (Method::POST, format!("{user}/revoke-sessions")),
        (Method::DELETE, user.clone()),
    ] {
        for token in [Some(ADMIN_TOKEN), Some(alice.token.as_str()), None] {
            let (status, body) = app.request(method.clone(), &path, token, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(body, absent, "{method} {path}");
        }
    }
    // Nothing happened to her.
    assert_eq!(
        app.get("/api/auth/me", &alice.token).await.0,
        StatusCode::OK
    );
    // Nor is it in the document of what the server serves (clients and contract checkers
    // would expect its 401s); with the token it is.
    let admin_paths = |document: Value| -> Vec<String> {
        let paths = document["paths"].as_object().expect("paths").keys();
        paths
            .filter(|p| p.starts_with("/api/admin"))
            .cloned()
            .collect()
    };
    let (_, document) = app
        .request(Method::GET, "/api/openapi.json", None, None)
        .await;
    assert_eq!(admin_paths(document), Vec::<String>::new());
    let on = admin_app(engine).await;
    let (_, document) = on
        .request(Method::GET, "/api/openapi.json", None, None)
        .await;
    assert!(admin_paths(document).contains(&"/api/admin/stats".to_owned()));
}

async fn only_the_admin_token_opens_it_and_it_is_never_logged(engine: Engine) {
    let logs = LogCapture::start();
    let app = admin_app(engine).await;
    let alice = app.register("alice").await;
    let suspend = format!("/api/admin/users/{}/suspend", alice.id);
    let wrong = "wrong-admin-token-that-is-32-bytes-long";
    let near = &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1];
    for token in [None, Some(wrong), Some(near), Some(alice.token.as_str())] {
        for (method, path) in [(Method::GET, "/api/admin/stats"), (Method::POST, &suspend)] {
            let (status, body) = app.request(method, path, token, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} with {token:?}");
            assert_eq!(body, Value::Null, "401 bodies stay empty");
        }
    }
    // Refused calls changed nothing: alice is still signed in.
    assert_eq!(
        app.get("/api/auth/me", &alice.token).await.0,
        StatusCode::OK
    );

    let (status, body) = admin(&app, Method::POST, &suspend).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("admin action") && l.contains("suspend") && l.contains(&alice.id)),
        "the action is logged"
    );
    for secret in [ADMIN_TOKEN, wrong, near] {
        assert!(!text.contains(secret), "a token was logged");
    }
}

async fn a_suspended_user_is_signed_out_everywhere_until_unsuspended(engine: Engine) {
    let app = admin_app(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (token, refresh_token) = app.new_session(&alice).await;
    let mut socket = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;
    send(&mut socket, &bob).await;
    bob_ws.expect("message").await;

    let suspend = format!("/api/admin/users/{}/suspend", alice.id);
    let (status, body) = admin(&app, Method::POST, &suspend).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], alice.id);
    let since = body["suspended_at"]
        .as_str()
        .expect("suspended_at")
        .to_owned();
    assert_eq!(socket.closed().await, Some(CloseCode::Library(4001)));

    // Every token she holds is refused: REST, messages and sockets.
    for token in [&alice.token, &token] {
        assert_eq!(
            app.get("/api/auth/me", token).await.0,
            StatusCode::UNAUTHORIZED
        );
        let message = json!({"message_type": "text", "envelopes": []});
        let path = format!("/api/messages/{}", bob.id);
        let (status, _) = app
            .request(Method::PUT, &path, Some(token), Some(message))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let refused = app.ws_url(&format!("/ws?token={token}")).await.err();
        assert_eq!(refused, Some(StatusCode::UNAUTHORIZED));
    }
    bob_ws.expect_quiet().await;
    // The app then refreshes, and signs in: both say why they cannot.
    let (status, body) = refresh(&app, &refresh_token).await;
    assert_suspended(status, &body);
    let (status, body) = app.login(&alice).await;
    assert_suspended(status, &body);
    // Only to the owner: a wrong password is the usual 401.
    let wrong = json!({"email": alice.email, "password": "not her password"});
    let (status, _) = app
        .request(Method::POST, "/api/auth/login", None, Some(wrong))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Suspending again keeps the first time.
    let (status, body) = admin(&app, Method::POST, &suspend).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["suspended_at"], since.as_str());

    let (status, body) = admin(&app, Method::DELETE, &suspend).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"user_id": alice.id, "suspended_at": null}));
    let (status, _) = admin(&app, Method::DELETE, &suspend).await;
    assert_eq!(status, StatusCode::OK, "lifting it again is no error");
    // She signs in again and writes; her old sessions stay revoked.
    let (token, _) = app.new_session(&alice).await;
    let (status, _) = refresh(&app, &refresh_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut socket = app
        .ws_url(&format!("/ws?token={token}"))
        .await
        .expect("socket opens");
    send(&mut socket, &bob).await;
    bob_ws.expect("message").await;

    let unknown = format!("/api/admin/users/{}/suspend", Uuid::new_v4());
    for method in [Method::POST, Method::DELETE] {
        let (status, body) = admin(&app, method, &unknown).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
}

/// A login that passed its checks just before the suspension creates a session the
/// suspension's revocation did not see: the mark alone must refuse it.
async fn a_suspended_users_surviving_session_is_refused_all_the_same(engine: Engine) {
    let app = admin_app(engine).await;
    let alice = app.register("alice").await;
    let (_, refresh_token) = app.new_session(&alice).await;
    let id = kisse_backend::model::UserId(alice.id.parse().expect("uuid"));
    let users = app.state.store.users();
    users
        .suspend(id, chrono::Utc::now())
        .await
        .expect("suspend");
    assert_eq!(
        app.get("/api/auth/me", &alice.token).await.0,
        StatusCode::UNAUTHORIZED
    );
    let refused = app
        .ws_url(&format!("/ws?token={}", alice.token))
        .await
        .err();
    assert_eq!(refused, Some(StatusCode::UNAUTHORIZED));
    let (status, body) = refresh(&app, &refresh_token).await;
    assert_suspended(status, &body);
    // Lifted, the session is alive again: it was never revoked.
    users.unsuspend(id).await.expect("unsuspend");
    assert_eq!(
        app.get("/api/auth/me", &alice.token).await.0,
        StatusCode::OK
    );
}

async fn revoking_sessions_signs_a_user_out_who_may_sign_in_again(engine: Engine) {
    let app = admin_app(engine).await;
    let alice = app.register("alice").await;
    let (token, refresh_token) = app.new_session(&alice).await;
    let mut first = app.ws(&alice).await;
    let mut second = app
        .ws_url(&format!("/ws?token={token}"))
        .await
        .expect("socket opens");
    for socket in [&mut first, &mut second] {
        socket.expect_quiet().await;
    }

    let path = format!("/api/admin/users/{}/revoke-sessions", alice.id);
    let (status, body) = admin(&app, Method::POST, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"user_id": alice.id, "sessions_revoked": 2}));
    for socket in [&mut first, &mut second] {
        assert_eq!(socket.closed().await, Some(CloseCode::Library(4001)));
    }
    for token in [&alice.token, &token] {
        assert_eq!(
            app.get("/api/auth/me", token).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, _) = refresh(&app, &refresh_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Not a suspension: she signs in again.
    let (token, _) = app.new_session(&alice).await;
    assert_eq!(app.get("/api/auth/me", &token).await.0, StatusCode::OK);
    let (status, body) = admin(&app, Method::POST, &path).await;
    assert_eq!(body["sessions_revoked"], 1, "{status} {body}");

    let unknown = format!("/api/admin/users/{}/revoke-sessions", Uuid::new_v4());
    let (status, _) = admin(&app, Method::POST, &unknown).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn deleting_a_user_is_the_cascade_of_self_deletion(engine: Engine) {
    let app = admin_app(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;
    // Alice's node knows (and keeps in memory) her conversation with bob.
    send(&mut alice_ws, &bob).await;
    bob_ws.expect("message").await;

    let path = format!("/api/admin/users/{}", bob.id);
    let (status, body) = admin(&app, Method::DELETE, &path).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(bob_ws.closed().await, Some(CloseCode::Library(4001)));
    // Gone, as if he had deleted himself: no sign-in, no token, no conversation, no messages.
    assert_eq!(app.login(&bob).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.get("/api/auth/me", &bob.token).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, conversations) = app.get("/api/conversations", &alice.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(conversations, json!([]));
    alice_ws
        .send(
            "message",
            json!({"recipientId": bob.id, "messageType": "text"}),
        )
        .await;
    assert_eq!(alice_ws.expect("error").await["code"], "not_found");
    let (status, _) = admin(&app, Method::DELETE, &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(stats(&app).await["database"]["users"], 1);
}

async fn stats_move_with_users_devices_sockets_and_what_waits(engine: Engine) {
    let app = admin_app(engine).await;
    let empty = stats(&app).await;
    assert_eq!(
        empty,
        json!({
            "database": {
                "users": 0, "suspended_users": 0, "devices": 0, "messages_pending": 0,
                "envelopes_pending": 0, "content_bytes": 0, "envelope_bytes": 0,
                "attachment_bytes": 0,
            },
            "sockets": 0,
            "nodes": [{"node": "local", "sockets": 0, "this": true}],
        })
    );

    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut alice_ws = app.ws(&alice).await;
    // Answered once her session runs, so her socket is counted.
    alice_ws.expect_quiet().await;
    let before = stats(&app).await;
    assert_eq!(before["database"]["users"], 2);
    assert_eq!(before["sockets"], 1);
    assert_eq!(before["nodes"][0]["sockets"], 1);
    link_device(&app, &bob, 1).await;
    let linked = stats(&app).await;
    let devices = |s: &Value| s["database"]["devices"].as_i64().expect("devices");
    assert_eq!(devices(&linked), devices(&before) + 1);

    // A message to bob, offline, with 8 bytes of content.
    let id = send(&mut alice_ws, &bob).await;
    let content = json!({"message_id": id, "content_data": STANDARD.encode([7u8; 8])});
    let (status, body) = app
        .post(
            &format!("/api/messages/{id}/content"),
            &alice.token,
            content,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let waiting = stats(&app).await;
    assert_eq!(waiting["database"]["messages_pending"], 1, "{waiting}");
    assert_eq!(waiting["database"]["content_bytes"], 8, "{waiting}");

    // An envelope of 100 bytes for his device 1.
    let envelope = json!({"deviceId": 1, "type": 3, "content": STANDARD.encode([9u8; 100])});
    let message = json!({
        "recipientId": bob.id, "messageType": "signal", "id": Uuid::now_v7(),
        "envelopes": [envelope],
    });
    alice_ws.send("message", message).await;
    alice_ws.expect("message_ack").await;
    let queued = stats(&app).await;
    assert_eq!(queued["database"]["envelopes_pending"], 1, "{queued}");
    assert_eq!(queued["database"]["envelope_bytes"], 100, "{queued}");

    // Bob connects: the message is written to him, he acknowledges the envelope.
    let mut bob_ws = app
        .ws_url(&format!("/ws?token={}&device_id=1", bob.token))
        .await
        .expect("socket opens");
    bob_ws.expect("message").await;
    let frame = bob_ws.expect("message").await;
    bob_ws.send("ack", json!({"id": frame["id"]})).await;
    let done = stats_until(&app, "delivered and acknowledged", |s| {
        s["database"]["messages_pending"] == 0 && s["database"]["envelopes_pending"] == 0
    })
    .await;
    assert_eq!(done["database"]["envelope_bytes"], 0);
    assert_eq!(done["sockets"], 2);

    let suspend = format!("/api/admin/users/{}/suspend", bob.id);
    assert_eq!(admin(&app, Method::POST, &suspend).await.0, StatusCode::OK);
    assert_eq!(bob_ws.closed().await, Some(CloseCode::Library(4001)));
    let after = stats_until(&app, "his socket gone", |s| s["sockets"] == 1).await;
    assert_eq!(after["database"]["suspended_users"], 1);
}

async fn admin_calls_are_rate_limited_per_address(engine: Engine) {
    let app = TestApp::spawn_with(
        engine,
        &[("ADMIN_TOKEN", ADMIN_TOKEN), ("ADMIN_RATE_PER_MINUTE", "2")],
    )
    .await;
    let alice = app.register("alice").await;
    // Guesses spend the budget too.
    let (status, _) = app
        .request(Method::GET, "/api/admin/stats", Some("a-guess"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(stats(&app).await["database"]["users"], 1);
    let call = |method: Method, path: String| {
        app.http
            .request(method, app.url(&path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    assert_rate_limited(
        call(Method::GET, "/api/admin/stats".into())
            .await
            .expect("call"),
    )
    .await;
    let path = format!("/api/admin/users/{}/suspend", alice.id);
    assert_rate_limited(call(Method::POST, path).await.expect("call")).await;
    // Refused, it did nothing; users' own budgets are apart.
    assert_eq!(
        app.get("/api/auth/me", &alice.token).await.0,
        StatusCode::OK
    );
}
