//! Finding users, and presence over REST.

use crate::common::{Engine, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

scenarios!(
    search_matches_username_and_name_in_any_case_and_email_whole,
    search_limits_are_clamped_and_pages_follow_the_username,
    find_by_email_answers_404_unknown_and_400_self,
    presence_set_over_rest_reaches_contacts_and_is_readable_by_them_only,
    messages_to_a_deleted_account_are_refused_and_others_still_flow,
);

fn usernames(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("array")
        .iter()
        .map(|u| u["username"].as_str().expect("username"))
        .collect()
}

async fn search_matches_username_and_name_in_any_case_and_email_whole(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let me = app.register("searcher").await;
    app.register("alice_w").await;
    let body = json!({"email": "Zed@Mail.example", "username": "zorro", "password": "long-enough", "name": "Bob Builder"});
    app.request(Method::POST, "/api/auth/register", None, Some(body))
        .await;

    let (status, all) = app.get("/api/users/search", &me.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        usernames(&all),
        ["alice_w", "zorro"],
        "empty q lists everyone but the caller"
    );
    let (_, by_username) = app.get("/api/users/search?q=ALICE", &me.token).await;
    assert_eq!(usernames(&by_username), ["alice_w"]);
    let (_, by_name) = app.get("/api/users/search?q=builder", &me.token).await;
    assert_eq!(usernames(&by_name), ["zorro"]);
    let (_, by_part) = app.get("/api/users/search?q=zed%40mail", &me.token).await;
    assert_eq!(
        by_part,
        json!([]),
        "part of a stranger's email finds nothing (directory.rs)"
    );
    let (_, by_email) = app
        .get("/api/users/search?q=zed%40mail.EXAMPLE", &me.token)
        .await;
    assert_eq!(usernames(&by_email), ["zorro"]);
    let entry = &by_email[0];
    for key in [
        "id",
        "username",
        "name",
        "email",
        "avatar_url",
        "created_at",
    ] {
        assert!(entry.get(key).is_some(), "missing {key}");
    }
    let (_, wildcard) = app.get("/api/users/search?q=%25", &me.token).await;
    assert_eq!(wildcard, json!([]), "% is a character, not a wildcard");
    let (_, underscore) = app.get("/api/users/search?q=_", &me.token).await;
    assert_eq!(usernames(&underscore), ["alice_w"]);
    let (_, myself) = app.get("/api/users/search?q=searcher", &me.token).await;
    assert_eq!(myself, json!([]), "the caller is excluded");
    let response = app
        .http
        .get(app.url("/api/users/search"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

async fn search_limits_are_clamped_and_pages_follow_the_username(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let me = app.register("me_user").await;
    for name in ["user_a", "user_b", "user_c"] {
        app.register(name).await;
    }
    for (limit, expected) in [
        ("1", 1),
        ("-5", 1),
        ("0", 1),
        ("1000", 3),
        ("99999999999999999999999", 3),
    ] {
        let (status, list) = app
            .get(
                &format!("/api/users/search?q=user_&limit={limit}"),
                &me.token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "limit={limit}");
        assert_eq!(
            list.as_array().expect("array").len(),
            expected,
            "limit={limit}"
        );
    }
    let (status, _) = app.get("/api/users/search?limit=lots", &me.token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, page1) = app
        .get("/api/users/search?q=user_&limit=2", &me.token)
        .await;
    assert_eq!(usernames(&page1), ["user_a", "user_b"]);
    let (_, page2) = app
        .get("/api/users/search?q=user_&limit=2&after=user_b", &me.token)
        .await;
    assert_eq!(usernames(&page2), ["user_c"]);
}

async fn find_by_email_answers_404_unknown_and_400_self(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (status, found) = app
        .get(
            "/api/users/find-by-email?email=BOB%40example.com",
            &alice.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["id"], bob.id);
    let (status, _) = app
        .get(
            "/api/users/find-by-email?email=nobody%40example.com",
            &alice.token,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .get(
            &format!("/api/users/find-by-email?email={}", alice.email),
            &alice.token,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app.get("/api/users/find-by-email", &alice.token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn presence_set_over_rest_reaches_contacts_and_is_readable_by_them_only(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let stranger = app.register("stranger").await;
    app.conversation(&alice, &bob).await;
    let mut bob_ws = app.ws(&bob).await;
    let mut stranger_ws = app.ws(&stranger).await;

    let (status, presence) = app
        .post("/api/presence", &alice.token, json!({"status": "busy"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(presence["user_id"], alice.id);
    assert_eq!(presence["status"], "busy");
    assert!(presence["last_seen"].is_string() && presence["updated_at"].is_string());
    let pushed = bob_ws.expect("presence_update").await;
    assert_eq!(
        (pushed["userId"].clone(), pushed["status"].clone()),
        (json!(alice.id), json!("busy"))
    );

    let (status, seen) = app
        .get(&format!("/api/presence/{}", alice.id), &bob.token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["status"], "busy");
    let (status, own) = app
        .get(&format!("/api/presence/{}", alice.id), &alice.token)
        .await;
    assert_eq!(
        (status, own["status"].clone()),
        (StatusCode::OK, json!("busy"))
    );

    let (hidden, hidden_body) = app
        .get(&format!("/api/presence/{}", alice.id), &stranger.token)
        .await;
    let unknown = uuid::Uuid::new_v4();
    let (missing, missing_body) = app
        .get(&format!("/api/presence/{unknown}"), &stranger.token)
        .await;
    assert_eq!(hidden, StatusCode::NOT_FOUND);
    assert_eq!(
        (hidden, hidden_body),
        (missing, missing_body),
        "a stranger learns nothing"
    );
    stranger_ws.expect_silent().await;

    let (status, _) = app
        .post("/api/presence", &alice.token, json!({"status": "sleeping"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn messages_to_a_deleted_account_are_refused_and_others_still_flow(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let mut ws = app.ws(&alice).await;
    let mut bobs = app.ws(&bob).await;
    // The server now knows (and keeps in memory) their conversation.
    ws.send(
        "message",
        json!({"recipientId": bob.id, "messageType": "text"}),
    )
    .await;
    ws.expect("message_ack").await;

    app.delete_account(&bob).await;
    assert_eq!(bobs.closed().await, Some(CloseCode::Library(4001)));

    ws.send(
        "message",
        json!({"recipientId": bob.id, "messageType": "text"}),
    )
    .await;
    let refused = ws.expect("error").await;
    assert_eq!(refused["code"], "not_found", "{refused}");
    ws.send(
        "message",
        json!({"recipientId": carol.id, "messageType": "text"}),
    )
    .await;
    ws.expect("message_ack").await;
}
