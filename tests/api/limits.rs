//! Abuse limits that hold behind a reverse proxy and cannot lock out the owner: per client
//! address (as named by trusted proxies only), per (account, address) for failed logins, and
//! per user for writes and user lookups.

use crate::common::{Engine, TestApp, TestUser};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

scenarios!(
    only_a_trusted_proxy_names_the_client_address,
    wrong_passwords_from_one_address_do_not_lock_out_the_owner,
    writes_and_lookups_are_limited_per_user,
);

/// A request as if forwarded for `client` (`X-Forwarded-For`, as the shipped nginx sends it).
async fn post_from(
    app: &TestApp,
    path: &str,
    forwarded_for: &str,
    body: Value,
) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .header("x-forwarded-for", forwarded_for)
        .json(&body)
        .send()
        .await
        .expect("request")
}

async fn login_from(app: &TestApp, client: &str, email: &str, password: &str) -> reqwest::Response {
    post_from(
        app,
        "/api/auth/login",
        client,
        json!({"email": email, "password": password}),
    )
    .await
}

/// The response is a 429 with a `Retry-After` of a sane number of seconds and our error body.
pub async fn assert_rate_limited(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited");
}

async fn only_a_trusted_proxy_names_the_client_address(engine: Engine) {
    let refresh = json!({"refresh_token": "not-a-token"});
    // The test client (127.0.0.1) is not a trusted proxy: its X-Forwarded-For is its own
    // claim, and changing it does not give it a fresh bucket.
    let app = TestApp::spawn_with(
        engine,
        &[
            ("LOGIN_RATE_PER_MINUTE", "3"),
            ("TRUSTED_PROXIES", "10.0.0.0/8"),
        ],
    )
    .await;
    for n in 0..3 {
        let response = post_from(
            &app,
            "/api/auth/refresh",
            &format!("198.51.100.{n}"),
            refresh.clone(),
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_rate_limited(
        post_from(&app, "/api/auth/refresh", "198.51.100.99", refresh.clone()).await,
    )
    .await;
    drop(app);

    // Behind a trusted proxy, two clients have a bucket each; what a client writes left of the
    // address the proxy appended does not matter.
    let app = TestApp::spawn_with(
        engine,
        &[
            ("LOGIN_RATE_PER_MINUTE", "3"),
            ("TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    )
    .await;
    for spoof in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        let chain = format!("{spoof}, 203.0.113.7");
        let response = post_from(&app, "/api/auth/refresh", &chain, refresh.clone()).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_rate_limited(
        post_from(
            &app,
            "/api/auth/refresh",
            "4.4.4.4, 203.0.113.7",
            refresh.clone(),
        )
        .await,
    )
    .await;
    let other = post_from(&app, "/api/auth/refresh", "203.0.113.8", refresh.clone()).await;
    assert_eq!(
        other.status(),
        StatusCode::UNAUTHORIZED,
        "a bucket of its own"
    );
}

async fn wrong_passwords_from_one_address_do_not_lock_out_the_owner(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let alice = app.register("alice").await;
    let (attacker, owner, laptop) = ("203.0.113.66", "198.51.100.1", "198.51.100.2");
    for _ in 0..20 {
        let response = login_from(&app, attacker, &alice.email, "wrong-password").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // The 21st try from that address is refused before any password is checked, even the right
    // one.
    assert_rate_limited(login_from(&app, attacker, &alice.email, &alice.password).await).await;
    // The owner, elsewhere, is not locked out by someone else's failures.
    let response = login_from(&app, owner, &alice.email, &alice.password).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["user"]["id"], alice.id.as_str());

    // A success resets that address's count: 19 typos, a login, and the next typo is a plain
    // 401 (without the reset it would be the 21st attempt).
    for _ in 0..19 {
        let response = login_from(&app, laptop, &alice.email, "typo-password").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let response = login_from(&app, laptop, &alice.email, &alice.password).await;
    assert_eq!(response.status(), StatusCode::OK);
    for _ in 0..2 {
        let response = login_from(&app, laptop, &alice.email, "typo-password").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // The attacker's address is still refused.
    assert_rate_limited(login_from(&app, attacker, &alice.email, "wrong-password").await).await;
}

async fn conversation_count(app: &TestApp, user: &TestUser) -> usize {
    let (status, list) = app.get("/api/conversations", &user.token).await;
    assert_eq!(status, StatusCode::OK);
    list.as_array().expect("array").len()
}

async fn writes_and_lookups_are_limited_per_user(engine: Engine) {
    let app = TestApp::spawn_with(
        engine,
        &[
            ("WRITE_RATE_PER_USER_PER_MINUTE", "5"),
            ("LOOKUP_RATE_PER_USER_PER_MINUTE", "3"),
        ],
    )
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    for _ in 0..5 {
        let (status, body) = app
            .post("/api/presence", &alice.token, json!({"status": "online"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // The sixth write is refused and changes nothing.
    let response = app
        .http
        .post(app.url("/api/conversations"))
        .bearer_auth(&alice.token)
        .json(&json!({"participant_id": bob.id}))
        .send()
        .await
        .expect("request");
    assert_rate_limited(response).await;
    assert_eq!(
        conversation_count(&app, &alice).await,
        0,
        "reads still pass"
    );
    // Others write as before; a bad token is still a plain 401.
    app.conversation(&bob, &alice).await;
    let (status, body) = app
        .post("/api/presence", "not-a-token", json!({"status": "online"}))
        .await;
    assert_eq!((status, body), (StatusCode::UNAUTHORIZED, Value::Null));

    for _ in 0..3 {
        let (status, _) = app
            .get("/api/users/search?q=bo&limit=1000", &alice.token)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let response = app
        .http
        .request(
            Method::GET,
            app.url("/api/users/find-by-email?email=bob@example.com"),
        )
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("request");
    assert_rate_limited(response).await;
    let (status, found) = app
        .get(
            "/api/users/find-by-email?email=alice@example.com",
            &bob.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
}
