//! Devices as first-class: logins bound to a device (their tokens and sockets are that
//! device, refresh keeps it), the list of devices with a day-granular `last_seen`, and
//! unlinking (sockets closed with 4001, tokens revoked, keys forgotten; the primary kept).

use crate::common::{Engine, TestApp, TestUser, WsClient};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use kisse_backend::model::UserId;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

scenarios!(
    a_login_as_a_device_binds_its_tokens_and_sockets_to_it,
    bad_device_logins_are_refused_with_a_json_error,
    devices_are_listed_with_the_day_they_were_last_seen,
    unlinking_a_device_closes_its_sockets_revokes_its_tokens_and_forgets_its_keys,
    the_primary_cannot_be_unlinked_and_a_linked_device_unlinks_only_itself,
);

/// A session of `user` signed in as `device` (named `name`): the same user, other tokens.
/// Also returns the refresh token.
pub async fn login_as(
    app: &TestApp,
    user: &TestUser,
    device: i64,
    name: Option<&str>,
) -> (TestUser, String) {
    let mut body = json!({"email": user.email, "password": user.password, "device_id": device});
    if let Some(name) = name {
        body["device_name"] = json!(name);
    }
    let (status, value) = app
        .request(Method::POST, "/api/auth/login", None, Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "login as device {device}: {value}");
    let session = TestUser {
        id: user.id.clone(),
        token: value["token"].as_str().expect("token").to_owned(),
        email: user.email.clone(),
        password: user.password.clone(),
    };
    let refresh = value["refresh_token"].as_str().expect("refresh").to_owned();
    (session, refresh)
}

fn key(tag: u8, len: usize) -> String {
    STANDARD.encode(vec![tag; len])
}

/// One-time prekeys per upload: above the `prekeys_low` threshold, so sockets stay quiet.
const PREKEYS: i64 = 12;

/// A full key upload; `device` absent lets the server pick the session's.
fn full_upload(device: Option<i64>, tag: u8) -> Value {
    let mut body = json!({
        "registration_id": 4000 + i64::from(tag),
        "identity_key": key(tag, 33),
        "signed_prekey": {"key_id": 7, "public_key": key(tag ^ 0x10, 33), "signature": key(tag ^ 0x20, 64)},
        "one_time_prekeys": (1..=PREKEYS)
            .map(|id| json!({"key_id": id, "public_key": key(tag ^ id as u8, 33)}))
            .collect::<Vec<_>>(),
    });
    if let Some(device) = device {
        body["device_id"] = json!(device);
    }
    body
}

async fn put_keys(app: &TestApp, user: &TestUser, body: Value) -> (StatusCode, Value) {
    app.request(Method::PUT, "/api/keys", Some(&user.token), Some(body))
        .await
}

async fn socket(app: &TestApp, user: &TestUser, query: &str) -> Result<WsClient, StatusCode> {
    app.ws_url(&format!("/ws?token={}{query}", user.token))
        .await
}

async fn unlink(app: &TestApp, user: &TestUser, device: i64) -> (StatusCode, Value) {
    app.request(
        Method::DELETE,
        &format!("/api/devices/{device}"),
        Some(&user.token),
        None,
    )
    .await
}

async fn devices(app: &TestApp, user: &TestUser) -> Vec<Value> {
    let (status, value) = app.get("/api/devices", &user.token).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    value.as_array().expect("a list").clone()
}

fn today() -> String {
    chrono::Utc::now().date_naive().to_string()
}

async fn a_login_as_a_device_binds_its_tokens_and_sockets_to_it(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let (laptop, refresh) = login_as(&app, &alice, 2, Some("  Laptop  ")).await;

    // Its socket is device 2: naming it is fine, naming another is refused before the upgrade.
    socket(&app, &laptop, "&device_id=2")
        .await
        .expect("opens")
        .close()
        .await;
    socket(&app, &laptop, "")
        .await
        .expect("opens")
        .close()
        .await;
    for query in ["&device_id=3", "&deviceId=1"] {
        let refused = socket(&app, &laptop, query).await.err();
        assert_eq!(refused, Some(StatusCode::BAD_REQUEST), "{query}");
    }
    // An unbound session still names any device.
    socket(&app, &alice, "&device_id=3")
        .await
        .expect("opens")
        .close()
        .await;

    // Keys go to the session's device; another device is not its to publish for.
    let (status, body) = put_keys(&app, &laptop, full_upload(Some(3), 0xA3)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "wrong_device");
    let (status, body) = put_keys(&app, &laptop, full_upload(None, 0xA2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["device_id"], 2);
    let (_, count) = app.get("/api/keys/count", &laptop.token).await;
    assert_eq!(
        (count["device_id"].clone(), count["count"].clone()),
        (json!(2), json!(PREKEYS))
    );

    // A refresh keeps the binding.
    let (status, body) = app
        .request(
            Method::POST,
            "/api/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refreshed = TestUser {
        token: body["token"].as_str().expect("token").to_owned(),
        ..laptop
    };
    let refused = socket(&app, &refreshed, "&device_id=3").await.err();
    assert_eq!(refused, Some(StatusCode::BAD_REQUEST));
    socket(&app, &refreshed, "&device_id=2")
        .await
        .expect("opens")
        .close()
        .await;

    let listed = devices(&app, &alice).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], 2);
    assert_eq!(listed[0]["device_id"], 2);
    assert_eq!(listed[0]["name"], "Laptop", "trimmed");
    assert_eq!(listed[0]["registration_id"], 4000 + 0xA2);
    assert_eq!(listed[0]["one_time_prekeys"], PREKEYS);
}

async fn bad_device_logins_are_refused_with_a_json_error(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let long = "x".repeat(65);
    for (device, name) in [
        (json!(0), json!(null)),
        (json!(128), json!(null)),
        (json!(-1), json!(null)),
        (json!(2.5), json!(null)),
        (json!("two"), json!(null)),
        (json!(2), json!(long)),
        (json!(2), json!(7)),
        (json!(null), json!(long)),
    ] {
        let body = json!({"email": alice.email, "password": alice.password,
                          "device_id": device, "device_name": name});
        let (status, value) = app
            .request(Method::POST, "/api/auth/login", None, Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{device} {name}: {value}");
        assert!(value["error"]["code"].is_string(), "{value}");
    }
    // Nothing was registered; a plain login still registers nothing, and is unbound.
    assert!(devices(&app, &alice).await.is_empty());
    let (status, body) = app
        .request(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"email": alice.email, "password": alice.password})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(devices(&app, &alice).await.is_empty());
    let plain = TestUser {
        token: body["token"].as_str().expect("token").to_owned(),
        id: alice.id.clone(),
        email: alice.email.clone(),
        password: alice.password.clone(),
    };
    socket(&app, &plain, "&device_id=5")
        .await
        .expect("opens")
        .close()
        .await;
    // 64 characters is fine.
    login_as(&app, &alice, 2, Some(&"y".repeat(64))).await;
    // JSON has one number type: 3.0 is the integer 3 (JSON Schema agrees).
    let body = json!({"email": alice.email, "password": alice.password, "device_id": 3.0});
    let (status, value) = app
        .request(Method::POST, "/api/auth/login", None, Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    let ids: Vec<Value> = devices(&app, &alice)
        .await
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    assert_eq!(ids, [json!(2), json!(3)]);
}

async fn devices_are_listed_with_the_day_they_were_last_seen(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (status, body) = put_keys(&app, &alice, full_upload(Some(1), 0xA1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (phone, _) = login_as(&app, &alice, 3, Some("Phone")).await;

    let listed = devices(&app, &alice).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let (primary, linked) = (&listed[0], &listed[1]);
    assert_eq!(
        (primary["id"].clone(), linked["id"].clone()),
        (json!(1), json!(3))
    );
    assert!(primary.get("name").is_none(), "no name given: {primary}");
    assert_eq!(primary["registration_id"], 4000 + 0xA1);
    assert_eq!(primary["one_time_prekeys"], PREKEYS);
    assert!(primary["updated_at"].is_string());
    assert_eq!(linked["name"], "Phone");
    assert!(linked.get("registration_id").is_none(), "no keys: {linked}");
    assert_eq!(linked["one_time_prekeys"], 0);
    for device in &listed {
        assert_eq!(device["last_seen"], today(), "a day, never finer: {device}");
        assert!(device["created_at"].is_string());
    }
    // Someone else's devices are not listed.
    assert!(devices(&app, &bob).await.is_empty());

    // Seen long ago; a connect marks it seen today (and only that device).
    let user = UserId(alice.id.parse().expect("uuid"));
    let long_ago = chrono::NaiveDate::from_ymd_opt(2020, 1, 2).expect("date");
    for device in [1, 3] {
        app.state
            .store
            .devices()
            .touch(user, device, long_ago)
            .await
            .expect("set last_seen");
    }
    let listed = devices(&app, &alice).await;
    assert_eq!(listed[1]["last_seen"], "2020-01-02");
    let ws = socket(&app, &phone, "").await.expect("opens");
    let listed = devices(&app, &alice).await;
    assert_eq!(
        listed[0]["last_seen"], "2020-01-02",
        "device 1 did not connect"
    );
    assert_eq!(listed[1]["last_seen"], today());
    ws.close().await;
}

async fn unlinking_a_device_closes_its_sockets_revokes_its_tokens_and_forgets_its_keys(
    engine: Engine,
) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (laptop, refresh) = login_as(&app, &alice, 2, Some("Laptop")).await;
    let (status, body) = put_keys(&app, &laptop, full_upload(None, 0xA2)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut primary = socket(&app, &alice, "").await.expect("opens");
    let mut bound = socket(&app, &laptop, "").await.expect("opens");
    let mut unbound = socket(&app, &alice, "&device_id=2").await.expect("opens");
    for ws in [&mut primary, &mut bound, &mut unbound] {
        ws.expect_quiet().await;
    }

    let (status, body) = unlink(&app, &alice, 2).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(bound.closed().await, Some(CloseCode::Library(4001)));
    assert_eq!(unbound.closed().await, Some(CloseCode::Library(4001)));
    primary.expect_quiet().await;

    // Its tokens stopped working, its refresh token too.
    let (status, _) = app.get("/api/auth/me", &laptop.token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        socket(&app, &laptop, "").await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    let (status, _) = app
        .request(
            Method::POST,
            "/api/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The primary's session is untouched.
    let (status, _) = app.get("/api/auth/me", &alice.token).await;
    assert_eq!(status, StatusCode::OK);

    // Its keys and its registry row are gone.
    assert!(devices(&app, &alice).await.is_empty());
    let (status, _) = app
        .get(&format!("/api/keys/{}/2", alice.id), &bob.token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = unlink(&app, &alice, 2).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    primary.close().await;
}

async fn the_primary_cannot_be_unlinked_and_a_linked_device_unlinks_only_itself(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (status, body) = put_keys(&app, &alice, full_upload(Some(1), 0xA1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (laptop, _) = login_as(&app, &alice, 2, None).await;
    let (phone, _) = login_as(&app, &alice, 3, None).await;

    for who in [&alice, &laptop] {
        let (status, body) = unlink(&app, who, 1).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "primary_device");
    }
    let (status, body) = unlink(&app, &laptop, 3).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "wrong_device");
    // Unknown devices, and other users' devices, are not found.
    for device in [9, 0, 128] {
        let (status, body) = unlink(&app, &alice, device).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{device}: {body}");
    }
    let (status, _) = unlink(&app, &bob, 3).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let ids: Vec<Value> = devices(&app, &alice)
        .await
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    assert_eq!(ids, [json!(1), json!(2), json!(3)], "nothing was unlinked");

    // A linked device may unlink itself: its own session ends with it.
    let mut ws = socket(&app, &phone, "").await.expect("opens");
    let (status, body) = unlink(&app, &phone, 3).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(ws.closed().await, Some(CloseCode::Library(4001)));
    let (status, _) = app.get("/api/auth/me", &phone.token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The primary (unbound) unlinks any other.
    let (status, _) = unlink(&app, &alice, 2).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let ids: Vec<Value> = devices(&app, &alice)
        .await
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    assert_eq!(ids, [json!(1)]);
}
