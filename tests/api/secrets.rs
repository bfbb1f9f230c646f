//! What the server keeps and writes: after full scenarios, a dump of every table and the log
//! output (captured at debug level) are scanned for the passwords, tokens and content bytes
//! used. Deleting an account leaves no row that names it.

use crate::common::{Engine, LogCapture, TestApp};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    client::IntoClientRequest, http::HeaderValue, protocol::frame::coding::CloseCode,
};

scenarios!(
    no_secret_is_stored_or_logged,
    deleting_an_account_removes_every_row_that_names_it,
);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The forms a secret may take in a dump (SQLite: hex of the bytes; PostgreSQL: JSON text,
/// bytea as `\x` hex) or a log line.
fn forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_lowercase(), hex(secret.as_bytes())];
    if let Ok(id) = uuid::Uuid::parse_str(secret) {
        forms.push(hex(id.as_bytes()));
    }
    forms
}

fn found_in(haystack: &str, secret: &str) -> bool {
    let haystack = haystack.to_lowercase();
    forms(secret)
        .iter()
        .any(|form| haystack.contains(form.as_str()))
}

async fn no_secret_is_stored_or_logged(engine: Engine) {
    let capture = LogCapture::start();
    // Push endpoints on loopback: a closed port, so the push below fails.
    let app = TestApp::spawn_with(engine, &[("PUSH_ALLOW_INSECURE_ENDPOINTS", "true")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut secrets: Vec<String> = vec![
        alice.password.clone(),
        bob.password.clone(),
        alice.token.clone(),
        bob.token.clone(),
    ];
    let (_, session) = app
        .request(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": alice.email, "password": alice.password})),
        )
        .await;
    let first_refresh = session["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let (status, refreshed) = app
        .request(
            Method::POST,
            "/api/auth/refresh",
            None,
            Some(json!({"refresh_token": first_refresh})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for value in [
        &session["token"],
        &refreshed["token"],
        &refreshed["refresh_token"],
    ] {
        secrets.push(value.as_str().expect("token").to_owned());
    }
    secrets.push(first_refresh);
    let alice_token = refreshed["token"].as_str().expect("token").to_owned();

    // Alice's socket with the token in the URL, Bob's in the subprotocol.
    let mut a = app
        .ws_url(&format!("/ws?token={alice_token}"))
        .await
        .expect("ws");
    let mut request = format!("ws://{}/ws", app.addr)
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("bearer, {}", bob.token)).expect("header"),
    );
    let mut b = crate::common::WsClient::connect(request).await.expect("ws");
    let id = uuid::Uuid::new_v4().to_string();
    a.send(
        "message",
        json!({"recipientId": bob.id, "messageType": "text", "sessionId": "s", "id": id}),
    )
    .await;
    a.expect("message_ack").await;
    b.expect("message").await;

    // Carol is woken by a push (to an endpoint that refuses it): the endpoint is stored, since
    // the device needs it, but never logged.
    let carol = app.register("carol").await;
    let endpoint = format!("http://127.0.0.1:9/up/{}", uuid::Uuid::new_v4().simple());
    let registration = json!({"kind": "unifiedpush", "endpoint": endpoint});
    let (status, _) = app
        .request(
            Method::PUT,
            "/api/devices/1/push",
            Some(&carol.token),
            Some(registration),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    a.send(
        "message",
        json!({"recipientId": carol.id, "messageType": "text"}),
    )
    .await;
    a.expect("message_ack").await;

    // Content: 48 random bytes, the only thing allowed in `message_contents`.
    let content: Vec<u8> = (0..48).map(|_| rand::random::<u8>()).collect();
    let encoded = STANDARD.encode(&content);
    let path = format!("/api/messages/{id}/content");
    let (status, _) = app
        .post(&path, &alice_token, json!({"message_id": id, "content_data": encoded, "content_hash": null, "expires_at": null}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, fetched) = app.get(&path, &bob.token).await;
    assert_eq!(
        (status, fetched["content_data"].as_str()),
        (StatusCode::OK, Some(encoded.as_str()))
    );

    // Bob changes his password (his socket closes), Alice logs out.
    let new_password = format!("new-password-{}", uuid::Uuid::new_v4().simple());
    let (status, changed) = app
        .post(
            "/api/auth/password",
            &bob.token,
            json!({"current_password": bob.password, "new_password": new_password}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b.closed().await, Some(CloseCode::Library(4001)));
    secrets.push(new_password);
    secrets.push(changed["token"].as_str().expect("token").to_owned());
    secrets.push(
        changed["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_owned(),
    );
    let (status, _) = app
        .request(Method::POST, "/api/auth/logout", Some(&alice_token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(a.closed().await, Some(CloseCode::Library(4001)));
    // Failed attempts are logged without what was tried.
    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let (status, _) = app
        .request(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": alice.email, "password": wrong})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    secrets.push(wrong);

    let dump = app
        .state
        .store
        .security()
        .dump_tables()
        .await
        .expect("dump");
    assert!(
        dump.iter().any(|(table, _)| table == "sessions"),
        "the dump covers every table"
    );
    for (table, row) in &dump {
        for secret in &secrets {
            assert!(!found_in(row, secret), "{table} stores a secret: {row}");
        }
        // Content bytes only in the mailbox (and nowhere as base64).
        assert!(
            !row.to_lowercase().contains(&encoded.to_lowercase()) && !row.contains(&encoded),
            "{table}: {row}"
        );
        if table != "message_contents" {
            assert!(
                !row.to_lowercase().contains(&hex(&content)),
                "{table} stores content"
            );
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let logs = capture.text();
    assert!(logs.contains("request"), "logs were captured");
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret was logged");
    }
    assert!(!logs.contains(&encoded) && !logs.to_lowercase().contains(&hex(&content)));
    assert!(logs.contains("push registered"), "the push was logged");
    assert!(!logs.contains(&endpoint), "a push endpoint was logged");
    assert!(
        !logs.contains("token="),
        "no URL with its query string was logged"
    );
}

async fn deleting_an_account_removes_every_row_that_names_it(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("PUSH_ALLOW_INSECURE_ENDPOINTS", "true")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    app.conversation(&alice, &bob).await;
    app.conversation(&bob, &carol).await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    let id = uuid::Uuid::new_v4().to_string();
    a.send(
        "message",
        json!({"recipientId": bob.id, "messageType": "text", "id": id}),
    )
    .await;
    a.expect("message_ack").await;
    b.expect("message").await;
    b.send(
        "message",
        json!({"recipientId": alice.id, "messageType": "text"}),
    )
    .await;
    b.expect("message_ack").await;
    b.send(
        "message",
        json!({"recipientId": carol.id, "messageType": "text"}),
    )
    .await;
    b.expect("message_ack").await;
    let push = json!({"kind": "unifiedpush", "endpoint": "http://127.0.0.1:9/up/alice"});
    let (status, _) = app
        .request(
            Method::PUT,
            "/api/devices/1/push",
            Some(&alice.token),
            Some(push),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let content = json!({"message_id": id, "content_data": "q83vEjRWeJA=", "content_hash": null, "expires_at": null});
    assert_eq!(
        app.post(
            &format!("/api/messages/{id}/content"),
            &alice.token,
            content
        )
        .await
        .0,
        StatusCode::CREATED
    );
    // Stories seen both ways, channels both ways, a call, keys, an extra session.
    let story = |text: &str| json!({"content_text": text, "media_type": "image"});
    let (_, alice_story) = app.post("/api/stories", &alice.token, story("a")).await;
    let (_, bob_story) = app.post("/api/stories", &bob.token, story("b")).await;
    for (token, story) in [(&bob.token, &alice_story), (&alice.token, &bob_story)] {
        let path = format!("/api/stories/{}/view", story["id"].as_str().expect("id"));
        assert_eq!(app.post(&path, token, json!({})).await.0, StatusCode::OK);
    }
    let channel = |name: &str| json!({"name": name, "is_private": false});
    let (_, alice_channel) = app
        .post("/api/channels", &alice.token, channel("alices"))
        .await;
    let (_, bob_channel) = app.post("/api/channels", &bob.token, channel("bobs")).await;
    for (token, channel) in [(&bob.token, &alice_channel), (&alice.token, &bob_channel)] {
        let id = channel["id"].as_str().expect("id");
        assert_eq!(
            app.post(&format!("/api/channels/{id}/join"), token, json!({}))
                .await
                .0,
            StatusCode::OK
        );
        let (status, _) = app
            .post(
                &format!("/api/channels/{id}/messages"),
                token,
                json!({"message_type": "text"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let (status, _) = app
        .post(
            "/api/calls",
            &alice.token,
            json!({"recipient_id": bob.id, "call_type": "video"}),
        )
        .await;
    assert!(status.is_success());
    let key = |byte: u8, len: usize| STANDARD.encode(vec![byte; len]);
    let keys = json!({"device_id": 1, "registration_id": 7, "identity_key": key(5, 33),
        "signed_prekey": {"key_id": 1, "public_key": key(6, 33), "signature": key(7, 64)},
        "one_time_prekeys": [{"key_id": 1, "public_key": key(8, 33)}]});
    let (status, body) = app
        .request(Method::PUT, "/api/keys", Some(&alice.token), Some(keys))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Blocks both ways.
    for (blocker, blocked) in [(&alice, &carol), (&carol, &alice)] {
        let path = format!("/api/users/{}/block", blocked.id);
        assert_eq!(
            app.post(&path, &blocker.token, json!({})).await.0,
            StatusCode::OK
        );
    }
    let (_, login) = app
        .request(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": alice.email, "password": alice.password})),
        )
        .await;

    let needles = [alice.id.clone(), alice.email.clone(), "alice".to_owned()];
    let names_alice = |dump: &[(String, String)]| {
        dump.iter()
            .filter(|(_, row)| needles.iter().any(|n| found_in(row, n)))
            .map(|(table, _)| table.clone())
            .collect::<Vec<_>>()
    };
    let before = app
        .state
        .store
        .security()
        .dump_tables()
        .await
        .expect("dump");
    let tables: std::collections::BTreeSet<_> = names_alice(&before).into_iter().collect();
    for table in [
        "users",
        "sessions",
        "conversations",
        "messages",
        "message_contents",
        "stories",
        "story_views",
        "channels",
        "channel_members",
        "channel_messages",
        "calls",
        "devices",
        "one_time_prekeys",
        "push_registrations",
        "blocks",
    ] {
        let named = tables.contains(table)
            || before
                .iter()
                .any(|(t, _)| t == table && table == "message_contents");
        assert!(named, "the scenario puts alice in {table}: {tables:?}");
    }

    // A wrong password changes nothing.
    let (status, _) = app
        .request(
            Method::DELETE,
            "/api/auth/me",
            Some(&alice.token),
            Some(json!({"password": "wrong-password"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.state
            .store
            .security()
            .dump_tables()
            .await
            .expect("dump")
            .len(),
        before.len()
    );

    app.delete_account(&alice).await;
    assert_eq!(a.closed().await, Some(CloseCode::Library(4001)));
    let after = app
        .state
        .store
        .security()
        .dump_tables()
        .await
        .expect("dump");
    assert_eq!(
        names_alice(&after),
        Vec::<String>::new(),
        "rows still name alice"
    );
    assert!(
        !after.iter().any(|(t, _)| t == "message_contents"),
        "her content is gone"
    );
    for token in [
        alice.token.as_str(),
        login["token"].as_str().expect("token"),
    ] {
        assert_eq!(
            app.get("/api/auth/me", token).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // Bob keeps what is his: his account, his channel and story, his conversation with Carol.
    assert_eq!(app.get("/api/auth/me", &bob.token).await.0, StatusCode::OK);
    let (_, conversations) = app.get("/api/conversations", &bob.token).await;
    assert_eq!(
        conversations.as_array().map(Vec::len),
        Some(1),
        "{conversations}"
    );
    let (_, channels) = app.get("/api/channels", &bob.token).await;
    assert_eq!(channels.as_array().map(Vec::len), Some(1), "{channels}");
    let (_, stories) = app.get("/api/stories", &bob.token).await;
    let authors: Vec<&Value> = stories
        .as_array()
        .map(|s| s.iter().map(|s| &s["user_id"]).collect())
        .unwrap_or_default();
    assert_eq!(authors, [&Value::from(bob.id.clone())], "{stories}");
    drop(b);
    // The address is free again.
    let (status, _) = app
        .request(
            Method::POST,
            "/api/auth/register",
            None,
            Some(json!({"email": alice.email, "username": "alice", "password": "long-enough"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
}
