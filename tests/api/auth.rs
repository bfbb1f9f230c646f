//! Registration, login and `/api/auth/me`, as the app uses them.

use crate::common::{Engine, TestApp};
use kisse_backend::{
    auth::TokenKeys,
    config::Secret,
    model::{SessionId, UserId},
};
use reqwest::{Method, StatusCode, header};
use serde_json::json;
use uuid::Uuid;

scenarios!(
    register_login_and_me_return_the_same_user,
    registration_rejects_bad_input_with_400,
    duplicate_email_or_username_is_409_whatever_the_case,
    wrong_password_and_unknown_email_get_the_same_empty_401,
    me_refuses_missing_bad_and_orphan_tokens_with_an_empty_401,
    public_routes_ignore_a_stale_token,
);

async fn register_login_and_me_return_the_same_user(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let body = json!({"email": " Alice@Example.com ", "username": "alice", "password": "secret-pass", "name": "Alice"});
    let (status, registered) = app
        .request(Method::POST, "/api/auth/register", None, Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let user = &registered["user"];
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["username"], "alice");
    assert_eq!(user["name"], "Alice");
    assert!(user["avatar_url"].is_null());
    let created_at = user["created_at"].as_str().expect("created_at");
    assert!(created_at.ends_with('Z'), "UTC timestamp: {created_at}");
    assert!(user.get("password_hash").is_none() && user.get("password").is_none());

    let login = json!({"email": "ALICE@example.com", "password": "secret-pass"});
    let (status, logged_in) = app
        .request(Method::POST, "/api/auth/login", None, Some(login))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(logged_in["user"], registered["user"]);
    let token = logged_in["token"].as_str().expect("token");

    let response = app
        .http
        .get(app.url("/api/auth/me"))
        .bearer_auth(token)
        .send()
        .await
        .expect("me");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let me: serde_json::Value = response.json().await.expect("json");
    assert_eq!(me, registered["user"]);
}

async fn registration_rejects_bad_input_with_400(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let cases = [
        json!({"email": "not-an-email", "username": "bob", "password": "long-enough"}),
        json!({"email": "bob@example.com", "username": "b", "password": "long-enough"}),
        json!({"email": "bob@example.com", "username": "bob!", "password": "long-enough"}),
        json!({"email": "bob@example.com", "username": "bob", "password": "short"}),
        json!({"email": "bob@example.com", "username": "bob"}),
        json!({"email": 5, "username": "bob", "password": "long-enough"}),
    ];
    for body in cases {
        let (status, error) = app
            .request(Method::POST, "/api/auth/register", None, Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            error["error"]["code"].is_string() && error["error"]["message"].is_string(),
            "{error}"
        );
    }
    let response = app
        .http
        .post(app.url("/api/auth/register"))
        .header(header::CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Nothing was created: the name is still free.
    app.register("bob").await;
}

async fn duplicate_email_or_username_is_409_whatever_the_case(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    app.register("carol").await;
    for (email, username, code) in [
        ("CAROL@example.com", "carol2", "email_taken"),
        ("other@example.com", "CaRoL", "username_taken"),
    ] {
        let body =
            json!({"email": email, "username": username, "password": "long-enough", "name": null});
        let (status, error) = app
            .request(Method::POST, "/api/auth/register", None, Some(body))
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(error["error"]["code"], code);
    }
}

async fn wrong_password_and_unknown_email_get_the_same_empty_401(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let dave = app.register("dave").await;
    for body in [
        json!({"email": dave.email, "password": "wrong-password"}),
        json!({"email": "nobody@example.com", "password": "wrong-password"}),
    ] {
        let response = app
            .http
            .post(app.url("/api/auth/login"))
            .json(&body)
            .send()
            .await
            .expect("login");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(response.text().await.expect("body"), "");
    }
}

async fn me_refuses_missing_bad_and_orphan_tokens_with_an_empty_401(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let orphan = TokenKeys::new(
        &Secret::new(crate::common::JWT_SECRET),
        std::time::Duration::from_secs(60),
    )
    .issue(UserId(Uuid::new_v4()), SessionId(Uuid::new_v4()), None)
    .expect("token");
    let foreign = TokenKeys::new(
        &Secret::new("some-other-secret-of-32-bytes-or-more"),
        std::time::Duration::from_secs(60),
    )
    .issue(UserId(Uuid::new_v4()), SessionId(Uuid::new_v4()), None)
    .expect("token");
    for token in [
        None,
        Some("garbage"),
        Some(orphan.as_str()),
        Some(foreign.as_str()),
    ] {
        let mut request = app.http.get(app.url("/api/auth/me"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("me");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(
            response.text().await.expect("body"),
            "",
            "401 bodies stay empty"
        );
    }
}

async fn public_routes_ignore_a_stale_token(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let body = json!({"email": "erin@example.com", "username": "erin", "password": "long-enough", "name": null});
    let (status, _) = app
        .request(
            Method::POST,
            "/api/auth/register",
            Some("stale.token.here"),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let body = json!({"email": "erin@example.com", "password": "long-enough"});
    let (status, _) = app
        .request(
            Method::POST,
            "/api/auth/login",
            Some("stale.token.here"),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}
