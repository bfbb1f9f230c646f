//! Sessions (refresh rotation, reuse, logout, password change), WebSocket auth without URLs,
//! abuse limits, legacy password hashes and retention.

use crate::common::{Engine, TestApp, TestUser, WAIT};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    client::IntoClientRequest, http::HeaderValue, protocol::frame::coding::CloseCode,
};

scenarios!(
    login_answers_refresh_tokens_next_to_the_app_fields,
    refresh_rotates_and_a_reused_token_revokes_the_chain,
    a_refresh_retried_within_the_grace_gets_the_same_pair,
    a_refresh_token_reused_after_the_grace_revokes_the_session,
    logout_ends_this_session_and_logout_all_every_session,
    a_password_change_revokes_every_session,
    the_socket_token_may_come_in_a_header_or_the_subprotocol,
    login_and_register_are_rate_limited_per_account_and_ip,
    sockets_per_user_are_capped,
    socket_frames_are_rate_limited_and_shape_checked,
    legacy_bcrypt_hashes_log_in_and_are_upgraded,
    retention_sweeps_old_metadata_and_expired_stories,
);

async fn login(app: &TestApp, email: &str, password: &str) -> (StatusCode, Value) {
    app.request(
        Method::POST,
        "/api/auth/login",
        None,
        Some(json!({"email": email, "password": password})),
    )
    .await
}

async fn refresh(app: &TestApp, refresh_token: &str) -> (StatusCode, Value) {
    app.request(
        Method::POST,
        "/api/auth/refresh",
        None,
        Some(json!({"refresh_token": refresh_token})),
    )
    .await
}

async fn me_status(app: &TestApp, token: &str) -> StatusCode {
    app.get("/api/auth/me", token).await.0
}

fn field(value: &Value, key: &str) -> String {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {value}"))
        .to_owned()
}

async fn login_answers_refresh_tokens_next_to_the_app_fields(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("ACCESS_TOKEN_TTL", "900")]).await;
    let alice = app.register("alice").await;
    let (status, body) = login(&app, &alice.email, &alice.password).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["token"].is_string() && body["user"]["id"] == alice.id.as_str());
    assert!(
        body["refresh_token"]
            .as_str()
            .is_some_and(|t| t.len() >= 43)
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
}

async fn refresh_rotates_and_a_reused_token_revokes_the_chain(engine: Engine) {
    // No grace: any second use is a reuse (the grace has scenarios of its own below).
    let app = TestApp::spawn_with(engine, &[("REFRESH_REUSE_GRACE", "0")]).await;
    let alice = app.register("alice").await;
    let (_, first) = login(&app, &alice.email, &alice.password).await;
    let r1 = field(&first, "refresh_token");

    let (status, second) = refresh(&app, &r1).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["user"]["id"], alice.id.as_str());
    let (r2, t2) = (field(&second, "refresh_token"), field(&second, "token"));
    assert_ne!(r1, r2);
    assert_eq!(me_status(&app, &t2).await, StatusCode::OK);
    let mut socket = app
        .ws_url(&format!("/ws?token={t2}"))
        .await
        .expect("socket");
    socket.expect_silent().await;

    // r1 again: someone copied it. The whole chain dies, the socket closes.
    let (status, body) = refresh(&app, &r1).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.is_null(), "401 stays empty");
    assert_eq!(socket.closed().await, Some(CloseCode::Library(4001)));
    assert_eq!(refresh(&app, &r2).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(me_status(&app, &t2).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        me_status(&app, &field(&first, "token")).await,
        StatusCode::UNAUTHORIZED
    );
    // Other sessions are untouched; garbage is a plain 401.
    assert_eq!(me_status(&app, &alice.token).await, StatusCode::OK);
    assert_eq!(
        refresh(&app, "not-a-token").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = app
        .request(Method::POST, "/api/auth/refresh", None, Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// A client whose refresh answer was lost retries with the same token: within the grace it
/// gets the very pair it missed, and the session lives on. Once that pair's refresh token has
/// been used, the old one is a reuse again.
async fn a_refresh_retried_within_the_grace_gets_the_same_pair(engine: Engine) {
    let app = TestApp::spawn(engine).await; // the default grace: 10 s
    let alice = app.register("alice").await;
    let (_, first) = login(&app, &alice.email, &alice.password).await;
    let r1 = field(&first, "refresh_token");
    let (status, lost) = refresh(&app, &r1).await;
    assert_eq!(status, StatusCode::OK, "{lost}");
    let (status, retried) = refresh(&app, &r1).await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried, lost, "the same answer, tokens included");
    let (r2, t2) = (field(&retried, "refresh_token"), field(&retried, "token"));
    assert_eq!(me_status(&app, &t2).await, StatusCode::OK);

    // The session goes on with the pair.
    let (status, next) = refresh(&app, &r2).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    let t3 = field(&next, "token");
    assert_eq!(me_status(&app, &t3).await, StatusCode::OK);
    // r1 again now that its pair was used: not a retry any more. The session is revoked.
    assert_eq!(refresh(&app, &r1).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(me_status(&app, &t3).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refresh(&app, &field(&next, "refresh_token")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(me_status(&app, &alice.token).await, StatusCode::OK);
}

/// The grace is short: a retry inside it is answered, the same token later is a reuse.
async fn a_refresh_token_reused_after_the_grace_revokes_the_session(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("REFRESH_REUSE_GRACE", "3")]).await;
    let alice = app.register("alice").await;
    let (_, first) = login(&app, &alice.email, &alice.password).await;
    let r1 = field(&first, "refresh_token");
    let (status, second) = refresh(&app, &r1).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(refresh(&app, &r1).await, (StatusCode::OK, second.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    let (status, body) = refresh(&app, &r1).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.is_null(), "401 stays empty");
    assert_eq!(
        me_status(&app, &field(&second, "token")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&app, &field(&second, "refresh_token")).await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn logout_ends_this_session_and_logout_all_every_session(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let (_, phone) = login(&app, &alice.email, &alice.password).await;
    let (_, laptop) = login(&app, &alice.email, &alice.password).await;
    let (phone_token, laptop_token) = (field(&phone, "token"), field(&laptop, "token"));
    let mut phone_ws = app
        .ws_url(&format!("/ws?token={phone_token}"))
        .await
        .expect("ws");
    let mut laptop_ws = app
        .ws_url(&format!("/ws?token={laptop_token}"))
        .await
        .expect("ws");
    phone_ws.expect_silent().await;
    laptop_ws.expect_silent().await;

    let (status, _) = app
        .request(Method::POST, "/api/auth/logout", Some(&phone_token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(phone_ws.closed().await, Some(CloseCode::Library(4001)));
    assert_eq!(
        me_status(&app, &phone_token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        refresh(&app, &field(&phone, "refresh_token")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(me_status(&app, &laptop_token).await, StatusCode::OK);
    laptop_ws.expect_silent().await;
    assert_eq!(
        app.ws_url(&format!("/ws?token={phone_token}")).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );

    let (status, _) = app
        .request(
            Method::POST,
            "/api/auth/logout-all",
            Some(&laptop_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(laptop_ws.closed().await, Some(CloseCode::Library(4001)));
    for token in [&laptop_token, &alice.token] {
        assert_eq!(me_status(&app, token).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        refresh(&app, &field(&laptop, "refresh_token")).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Signing in again works.
    assert_eq!(
        login(&app, &alice.email, &alice.password).await.0,
        StatusCode::OK
    );
}

async fn a_password_change_revokes_every_session(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let (_, other) = login(&app, &alice.email, &alice.password).await;
    let mut ws = app.ws(&alice).await;
    ws.expect_silent().await;

    let change =
        |current: &str| json!({"current_password": current, "new_password": "a-new-password"});
    let (status, _) = app
        .post("/api/auth/password", &alice.token, change("wrong-password"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .post(
            "/api/auth/password",
            &alice.token,
            json!({"current_password": alice.password, "new_password": "short"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        me_status(&app, &alice.token).await,
        StatusCode::OK,
        "errors change nothing"
    );

    let (status, fresh) = app
        .post("/api/auth/password", &alice.token, change(&alice.password))
        .await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    assert_eq!(ws.closed().await, Some(CloseCode::Library(4001)));
    for token in [&alice.token, &field(&other, "token")] {
        assert_eq!(me_status(&app, token).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        refresh(&app, &field(&other, "refresh_token")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        me_status(&app, &field(&fresh, "token")).await,
        StatusCode::OK
    );
    assert_eq!(
        login(&app, &alice.email, &alice.password).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&app, &alice.email, "a-new-password").await.0,
        StatusCode::OK
    );
}

async fn the_socket_token_may_come_in_a_header_or_the_subprotocol(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let url = format!("ws://{}/ws", app.addr);

    let mut request = url.as_str().into_client_request().expect("request");
    request.headers_mut().insert(
        header::AUTHORIZATION.as_str(),
        HeaderValue::from_str(&format!("Bearer {}", alice.token)).expect("header"),
    );
    let mut socket = crate::common::WsClient::connect(request)
        .await
        .expect("header auth");
    socket.expect_silent().await;

    let mut request = url.as_str().into_client_request().expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("bearer, {}", alice.token)).expect("header"),
    );
    let (_stream, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("in time")
        .expect("subprotocol auth");
    assert_eq!(response.headers()["sec-websocket-protocol"], "bearer");

    let mut request = url.as_str().into_client_request().expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("bearer, not.a.token"),
    );
    assert_eq!(
        crate::common::WsClient::connect(request).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
}

async fn login_and_register_are_rate_limited_per_account_and_ip(engine: Engine) {
    let app = TestApp::spawn_with(
        engine,
        &[
            ("LOGIN_RATE_PER_ACCOUNT_PER_MINUTE", "3"),
            ("LOGIN_RATE_PER_MINUTE", "8"),
        ],
    )
    .await;
    let alice = app.register("alice").await; // 1 per IP
    for _ in 0..3 {
        assert_eq!(
            login(&app, &alice.email, "wrong-password").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // The account is locked for a while, even with the right password; others are not.
    let response = app
        .http
        .post(app.url("/api/auth/login"))
        .json(&json!({"email": alice.email, "password": alice.password}))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
    // 5 requests so far from this IP; 3 more pass, then the IP is refused.
    let bob = app.register("bob").await;
    assert_eq!(
        login(&app, &bob.email, &bob.password).await.0,
        StatusCode::OK
    );
    assert_eq!(refresh(&app, "whatever").await.0, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .request(
            Method::POST,
            "/api/auth/register",
            None,
            Some(json!({"email": "carol@example.com", "username": "carol", "password": "long-enough"})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Nothing was created by the refused registration.
    assert!(
        app.state
            .store
            .users()
            .user_by_email("carol@example.com")
            .await
            .expect("query")
            .is_none()
    );
}

async fn sockets_per_user_are_capped(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("MAX_SOCKETS_PER_USER", "2")]).await;
    let alice = app.register("alice").await;
    let mut first = app.ws(&alice).await;
    let mut second = app.ws(&alice).await;
    first.expect_silent().await;
    second.expect_silent().await;
    let path = format!("/ws?token={}", alice.token);
    assert_eq!(
        app.ws_url(&path).await.err(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
    first.close().await;
    // The slot comes back once the server has seen the close.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match app.ws_url(&path).await {
            Ok(mut third) => break third.expect_silent().await,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(status) => panic!("still refused: {status}"),
        }
    }
}

async fn socket_frames_are_rate_limited_and_shape_checked(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("WS_MESSAGES_PER_SECOND", "2")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.ws(&alice).await;
    // A burst of 4 (twice the rate) is stored, the rest of a quick flood is refused.
    for _ in 0..8 {
        a.send(
            "message",
            json!({"recipientId": bob.id, "messageType": "text"}),
        )
        .await;
    }
    let (mut acks, mut refused) = (0, 0);
    while acks + refused < 8 {
        let frame = a.recv().await;
        match frame["type"].as_str() {
            Some("message_ack") => acks += 1,
            Some("error") => {
                assert_eq!(frame["payload"]["code"], "rate_limited");
                refused += 1;
            }
            _ => {}
        }
    }
    assert!((4..=5).contains(&acks), "{acks} acked");
    assert!(refused >= 3);

    // Too deep, too long: an error frame, the socket stays open.
    a.send_text(format!("{}{}", "[".repeat(64), "]".repeat(64)))
        .await;
    assert_eq!(a.expect("error").await["code"], "frame_too_complex");
    a.send("presence_update", json!({"status": "x".repeat(5000)}))
        .await;
    assert_eq!(a.expect("error").await["code"], "frame_too_complex");
    a.expect_quiet().await;
}

async fn legacy_bcrypt_hashes_log_in_and_are_upgraded(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let id = kisse_backend::model::UserId(alice.id.parse().expect("uuid"));
    let store = &app.state.store;
    let current = store
        .security()
        .password_hash(id)
        .await
        .expect("query")
        .expect("user");
    // As the original deployment stored it (bcrypt, cost 10, `$2b$`).
    let legacy = bcrypt::hash("legacy-password", 10).expect("bcrypt");
    assert!(
        store
            .security()
            .upgrade_password_hash(id, &current, &legacy)
            .await
            .expect("update")
    );

    assert_eq!(
        login(&app, &alice.email, "wrong-password").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        store.security().password_hash(id).await.expect("q"),
        Some(legacy.clone())
    );
    assert_eq!(
        login(&app, &alice.email, "legacy-password").await.0,
        StatusCode::OK
    );
    let upgraded = store
        .security()
        .password_hash(id)
        .await
        .expect("q")
        .expect("user");
    assert!(upgraded.starts_with("$argon2id$v=19$"), "{upgraded}");
    assert_eq!(
        login(&app, &alice.email, "legacy-password").await.0,
        StatusCode::OK
    );
}

async fn retention_sweeps_old_metadata_and_expired_stories(engine: Engine) {
    let app = TestApp::spawn_with(
        engine,
        &[
            ("RETENTION_MESSAGES_DAYS", "2"),
            ("RETENTION_CALLS_DAYS", "3"),
        ],
    )
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let conversation = app.conversation(&alice, &bob).await;
    let mut a = app.ws(&alice).await;
    a.send(
        "message",
        json!({"recipientId": bob.id, "messageType": "text"}),
    )
    .await;
    a.expect("message_ack").await;
    let (status, call) = app
        .post(
            "/api/calls",
            &alice.token,
            json!({"recipient_id": bob.id, "call_type": "audio"}),
        )
        .await;
    assert!(status.is_success(), "{call}");
    let (status, story) = app
        .post(
            "/api/stories",
            &alice.token,
            json!({"content_text": "hi", "media_type": "image"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{story}");

    let state = &app.state;
    let now = kisse_backend::model::now();
    let swept = kisse_backend::domain::retention::sweep(state, now)
        .await
        .expect("sweep");
    assert_eq!((swept.messages, swept.calls, swept.stories), (0, 0, 0));
    // A day and a half later the story has expired (kept 0 h after expiry); the message is
    // not two days old yet; the call is still ringing, so never swept.
    let later = now + chrono::Duration::hours(36);
    let swept = kisse_backend::domain::retention::sweep(state, later)
        .await
        .expect("sweep");
    assert_eq!((swept.messages, swept.calls, swept.stories), (0, 0, 1));
    let history = format!(
        "/api/conversations/{}/messages",
        conversation["id"].as_str().expect("id")
    );
    assert_eq!(
        app.get(&history, &bob.token)
            .await
            .1
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    // End the call, then four days later everything old is gone.
    let call_id = call["call_id"].as_str().expect("call id");
    let mut b = app.ws(&bob).await;
    b.expect("message").await; // caught up: it was sent while bob was away
    b.send(
        "call_response",
        json!({"callId": call_id, "response": "reject"}),
    )
    .await;
    b.expect_quiet().await;
    let (_, list) = app.get("/api/conversations", &bob.token).await;
    assert_eq!(list[0]["unread_count"], 1);
    let swept = kisse_backend::domain::retention::sweep(state, now + chrono::Duration::days(4))
        .await
        .expect("sweep");
    assert_eq!((swept.messages, swept.calls), (1, 1), "{swept:?}");
    let (_, list) = app.get("/api/conversations", &bob.token).await;
    assert_eq!(
        list[0]["unread_count"], 0,
        "a swept message is no longer unread"
    );
    assert_eq!(
        app.get(&history, &bob.token)
            .await
            .1
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    let (_, calls) = app.get("/api/calls/history", &bob.token).await;
    assert_eq!(calls.as_array().map(Vec::len), Some(0), "{calls}");
    let _: &TestUser = &alice;
}
