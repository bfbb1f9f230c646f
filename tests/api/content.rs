//! The encrypted content mailbox, including the app's two quirks (content under its own id,
//! and a recipient that asks before the sender has uploaded).

use std::time::Duration;

use crate::common::{Engine, TestApp, TestUser, WsClient};
use reqwest::StatusCode;
use serde_json::{Value, json};

scenarios!(
    content_round_trips_between_the_two_participants_only,
    content_under_an_app_id_goes_to_the_oldest_message_awaiting_content,
    concurrent_uploads_under_app_ids_each_take_their_own_message,
    a_fetch_before_the_upload_waits_for_it,
    a_fetch_for_content_that_never_comes_gives_up_with_404,
    bad_content_is_refused_and_stores_nothing,
    reading_the_message_deletes_its_content,
    content_expires_at_the_requested_time,
    an_upload_for_a_message_already_read_is_refused_and_stores_nothing,
    uploads_beyond_the_senders_quota_are_refused_until_recipients_read,
);

const BLOB: &str = "q83vEjRWeJA="; // 8 opaque bytes

/// Sends a message from `from` to `to` (optionally with a client id); returns the pushed id.
async fn send(
    from: &mut WsClient,
    to_ws: &mut WsClient,
    to: &TestUser,
    id: Option<String>,
) -> String {
    let mut payload = json!({"recipientId": to.id, "messageType": "text", "sessionId": "s"});
    if let Some(id) = id {
        payload["id"] = json!(id);
    }
    from.send("message", payload).await;
    from.expect("message_ack").await;
    to_ws.expect("message").await["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

fn upload(data: &str) -> Value {
    json!({"message_id": null, "content_data": data, "content_hash": null, "expires_at": null})
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn content_round_trips_between_the_two_participants_only(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mallory = app.register("mallory").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    let id = uuid::Uuid::new_v4().to_string();
    assert_eq!(send(&mut a, &mut b, &bob, Some(id.clone())).await, id);

    let hash = sha256_hex(&[0xab, 0xcd, 0xef, 0x12, 0x34, 0x56, 0x78, 0x90]);
    let body = json!({"message_id": id, "content_data": BLOB, "content_hash": hash.to_uppercase(), "expires_at": "2099-01-01T00:00:00.000"});
    let path = format!("/api/messages/{id}/content");
    let (status, _) = app.post(&path, &bob.token, body.clone()).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "only the sender stores content"
    );
    let (status, _) = app.post(&path, &alice.token, body).await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, fetched) = app.get(&path, &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["message_id"], id);
    assert_eq!(fetched["content_data"], BLOB);
    assert_eq!(fetched["content_hash"], hash);
    assert!(fetched["created_at"].is_string());
    let (status, _) = app.get(&path, &alice.token).await;
    assert_eq!(status, StatusCode::OK, "the sender may read it back");
    let (status, _) = app.get(&path, &mallory.token).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app.post(&path, &mallory.token, upload(BLOB)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn content_under_an_app_id_goes_to_the_oldest_message_awaiting_content(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    // The app sends frames without ids, then posts each body under an id of its own.
    let first = send(&mut a, &mut b, &bob, None).await;
    let second = send(&mut a, &mut b, &bob, None).await;
    let (app_id_1, app_id_2) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let (status, stored) = app
        .post(
            &format!("/api/messages/{app_id_1}/content"),
            &alice.token,
            upload("Zmlyc3Q="),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(stored["stored_for"], first);
    let (status, _) = app
        .post(
            &format!("/api/messages/{app_id_2}/content"),
            &alice.token,
            upload("c2Vjb25k"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (_, one) = app
        .get(&format!("/api/messages/{first}/content"), &bob.token)
        .await;
    assert_eq!(one["content_data"], "Zmlyc3Q=");
    let (_, two) = app
        .get(&format!("/api/messages/{second}/content"), &bob.token)
        .await;
    assert_eq!(two["content_data"], "c2Vjb25k");
    let (status, by_alias) = app
        .get(&format!("/api/messages/{app_id_2}/content"), &alice.token)
        .await;
    assert_eq!(
        (status, by_alias["content_data"].clone()),
        (StatusCode::OK, json!("c2Vjb25k"))
    );

    // A retry under the same app id replaces that message's content, not the next one's.
    let (status, again) = app
        .post(
            &format!("/api/messages/{app_id_1}/content"),
            &alice.token,
            upload("Zmlyc3Q="),
        )
        .await;
    assert_eq!(
        (status, again["stored_for"].clone()),
        (StatusCode::CREATED, json!(first))
    );
    // Nothing is left awaiting content: a further unknown id has nowhere to go.
    let stray = uuid::Uuid::new_v4();
    let (status, _) = app
        .post(
            &format!("/api/messages/{stray}/content"),
            &alice.token,
            upload(BLOB),
        )
        .await;
    // The same answer as for someone else's message: ids tell nothing.
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn concurrent_uploads_under_app_ids_each_take_their_own_message(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    let mut sent = Vec::new();
    for _ in 0..8 {
        sent.push(send(&mut a, &mut b, &bob, None).await);
    }
    // The app's uploads of a burst arrive together (on SQLite, they share a group commit).
    let app = &app;
    let uploads = (0..8).map(|i| {
        let path = format!("/api/messages/{}/content", uuid::Uuid::new_v4());
        let body = upload(&base64_of(&format!("body {i}")));
        let token = alice.token.clone();
        async move { app.post(&path, &token, body).await }
    });
    let answers = futures_util::future::join_all(uploads).await;
    let mut stored_for: Vec<String> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::CREATED, "{body}");
            body["stored_for"].as_str().expect("stored_for").to_owned()
        })
        .collect();
    stored_for.sort();
    sent.sort();
    assert_eq!(stored_for, sent, "every message got exactly one upload");
    // A ninth has nothing left to claim.
    let path = format!("/api/messages/{}/content", uuid::Uuid::new_v4());
    let (status, _) = app.post(&path, &alice.token, upload(BLOB)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn a_fetch_before_the_upload_waits_for_it(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    let id = send(&mut a, &mut b, &bob, None).await;
    let path = format!("/api/messages/{id}/content");
    let fetch = app.get(&path, &bob.token);
    let upload_later = async {
        // The app uploads about 300 ms after its frame; the recipient asked at once.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let app_id = uuid::Uuid::new_v4();
        app.post(
            &format!("/api/messages/{app_id}/content"),
            &alice.token,
            upload(BLOB),
        )
        .await
    };
    let ((status, fetched), (uploaded, _)) = tokio::join!(fetch, upload_later);
    assert_eq!(uploaded, StatusCode::CREATED);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["content_data"], BLOB);
}

async fn a_fetch_for_content_that_never_comes_gives_up_with_404(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("CONTENT_WAIT_MS", "300")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    let id = send(&mut a, &mut b, &bob, None).await;
    let (status, body) = app
        .get(&format!("/api/messages/{id}/content"), &bob.token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let unknown = uuid::Uuid::new_v4();
    let (status, _) = app
        .get(&format!("/api/messages/{unknown}/content"), &bob.token)
        .await;
    // An unknown id answers like someone else's message: 403, telling nothing.
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn bad_content_is_refused_and_stores_nothing(engine: Engine) {
    let app = TestApp::spawn_with(
        engine,
        &[("CONTENT_MAX_BYTES", "16"), ("CONTENT_WAIT_MS", "200")],
    )
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    let id = uuid::Uuid::new_v4().to_string();
    send(&mut a, &mut b, &bob, Some(id.clone())).await;
    let path = format!("/api/messages/{id}/content");
    let cases = [
        (upload("not base64!!"), StatusCode::BAD_REQUEST),
        (
            json!({"content_data": BLOB, "content_hash": "00".repeat(32)}),
            StatusCode::BAD_REQUEST,
        ),
        (upload(&"QUFB".repeat(8)), StatusCode::PAYLOAD_TOO_LARGE), // 24 bytes > 16
        (json!({"content_hash": null}), StatusCode::BAD_REQUEST),
    ];
    for (body, expected) in cases {
        let (status, error) = app.post(&path, &alice.token, body.clone()).await;
        assert_eq!(status, expected, "{body}");
        assert!(error["error"]["code"].is_string());
    }
    let (status, _) = app.get(&path, &bob.token).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was stored");
}

async fn reading_the_message_deletes_its_content(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("CONTENT_WAIT_MS", "200")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    for via_socket in [false, true] {
        let id = uuid::Uuid::new_v4().to_string();
        send(&mut a, &mut b, &bob, Some(id.clone())).await;
        let path = format!("/api/messages/{id}/content");
        app.post(&path, &alice.token, upload(BLOB)).await;
        assert_eq!(app.get(&path, &bob.token).await.0, StatusCode::OK);
        if via_socket {
            b.send("read_receipt", json!({"messageId": id})).await;
        } else {
            app.post(&format!("/api/messages/{id}/read"), &bob.token, json!({}))
                .await;
        }
        a.expect("read_receipt").await;
        assert_eq!(app.get(&path, &bob.token).await.0, StatusCode::NOT_FOUND);
        assert_eq!(app.get(&path, &alice.token).await.0, StatusCode::NOT_FOUND);
    }
}

async fn content_expires_at_the_requested_time(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("CONTENT_WAIT_MS", "200")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    let id = uuid::Uuid::new_v4().to_string();
    send(&mut a, &mut b, &bob, Some(id.clone())).await;
    // Wide enough that the upload and first fetch land before it on a loaded CI machine.
    let lifetime = Duration::from_secs(3);
    let expiry = chrono::Utc::now() + lifetime;
    let path = format!("/api/messages/{id}/content");
    let body = json!({"content_data": BLOB, "expires_at": expiry.to_rfc3339()});
    assert_eq!(
        app.post(&path, &alice.token, body).await.0,
        StatusCode::CREATED
    );
    assert_eq!(app.get(&path, &bob.token).await.0, StatusCode::OK);
    let until_expired = (expiry - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(until_expired + Duration::from_millis(200)).await;
    assert_eq!(app.get(&path, &bob.token).await.0, StatusCode::NOT_FOUND);
}

async fn an_upload_for_a_message_already_read_is_refused_and_stores_nothing(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("CONTENT_WAIT_MS", "200")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    let id = uuid::Uuid::new_v4().to_string();
    send(&mut a, &mut b, &bob, Some(id.clone())).await;
    app.post(&format!("/api/messages/{id}/read"), &bob.token, json!({}))
        .await;
    a.expect("read_receipt").await;
    let path = format!("/api/messages/{id}/content");
    let (status, body) = app.post(&path, &alice.token, upload(BLOB)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "already_read");
    assert_eq!(app.get(&path, &alice.token).await.0, StatusCode::NOT_FOUND);

    // Under an app id (the content-id quirk): the read message is still the one the upload was
    // for, so the next upload goes to the next message.
    let read = send(&mut a, &mut b, &bob, None).await;
    let unread = send(&mut a, &mut b, &bob, None).await;
    app.post(&format!("/api/messages/{read}/read"), &bob.token, json!({}))
        .await;
    a.expect("read_receipt").await;
    let app_id = uuid::Uuid::new_v4();
    let (status, body) = app
        .post(
            &format!("/api/messages/{app_id}/content"),
            &alice.token,
            upload(BLOB),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let path = format!("/api/messages/{read}/content");
    assert_eq!(app.get(&path, &alice.token).await.0, StatusCode::NOT_FOUND);
    let next = uuid::Uuid::new_v4();
    let (status, stored) = app
        .post(
            &format!("/api/messages/{next}/content"),
            &alice.token,
            upload("c2Vjb25k"),
        )
        .await;
    assert_eq!(
        (status, stored["stored_for"].as_str()),
        (StatusCode::CREATED, Some(unread.as_str()))
    );
}

async fn uploads_beyond_the_senders_quota_are_refused_until_recipients_read(engine: Engine) {
    // Room for two 8-byte blobs per sender, not three.
    let settings = [("CONTENT_QUOTA_BYTES", "20"), ("CONTENT_WAIT_MS", "200")];
    let app = TestApp::spawn_with(engine, &settings).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = uuid::Uuid::new_v4().to_string();
        send(&mut a, &mut b, &bob, Some(id.clone())).await;
        ids.push(id);
    }
    let path = |id: &str| format!("/api/messages/{id}/content");
    for id in &ids[..2] {
        assert_eq!(
            app.post(&path(id), &alice.token, upload(BLOB)).await.0,
            StatusCode::CREATED
        );
    }
    // Replacing a blob does not count it twice.
    assert_eq!(
        app.post(&path(&ids[0]), &alice.token, upload(BLOB)).await.0,
        StatusCode::CREATED
    );
    let (status, body) = app.post(&path(&ids[2]), &alice.token, upload(BLOB)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded");
    assert_eq!(
        app.get(&path(&ids[2]), &bob.token).await.0,
        StatusCode::NOT_FOUND
    );

    // Another sender has a quota of their own.
    let mut c = app.ws(&carol).await;
    let id = uuid::Uuid::new_v4().to_string();
    send(&mut c, &mut b, &bob, Some(id.clone())).await;
    assert_eq!(
        app.post(&path(&id), &carol.token, upload(BLOB)).await.0,
        StatusCode::CREATED
    );

    // Bob reads a message: its content is deleted, and Alice has room again.
    app.post(
        &format!("/api/messages/{}/read", ids[0]),
        &bob.token,
        json!({}),
    )
    .await;
    assert_eq!(
        app.post(&path(&ids[2]), &alice.token, upload(BLOB)).await.0,
        StatusCode::CREATED
    );
    let (status, fetched) = app.get(&path(&ids[2]), &bob.token).await;
    assert_eq!(
        (status, fetched["content_data"].as_str()),
        (StatusCode::OK, Some(BLOB))
    );
}
