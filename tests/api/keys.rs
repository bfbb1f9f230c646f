//! The key directory: publishing and fetching public prekey bundles, one-time prekey
//! consumption (also under concurrency), the `prekeys_low` and `identity_changed` frames,
//! bad input, authorization and rate limiting, devices.

use std::collections::HashSet;

use crate::common::{Engine, TestApp, TestUser};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures_util::future::join_all;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

scenarios!(
    a_published_bundle_is_fetched_with_one_one_time_prekey_per_device,
    one_time_prekeys_are_handed_out_once_then_the_bundle_comes_without_one,
    parallel_fetches_never_hand_out_the_same_one_time_prekey,
    a_device_running_low_on_prekeys_is_told_over_its_socket,
    a_new_identity_key_is_announced_to_contacts_and_replaces_every_key,
    later_uploads_add_prekeys_and_refresh_the_signed_prekey,
    bad_uploads_are_refused_and_change_nothing,
    keys_need_a_token_and_a_known_user,
    fetches_are_rate_limited_per_caller,
    deleting_a_device_deletes_its_keys,
);

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// A recognisable fake public key of `len` bytes.
fn key(tag: u8, len: usize) -> String {
    b64(&vec![tag; len])
}

/// A fake one-time prekey whose bytes name its id, so a fetched key can be checked.
fn prekey_bytes(id: u32) -> Vec<u8> {
    let mut bytes = vec![0x05];
    bytes.extend_from_slice(&id.to_be_bytes());
    bytes.resize(33, 0);
    bytes
}

fn prekeys(ids: impl IntoIterator<Item = u32>) -> Value {
    ids.into_iter()
        .map(|id| json!({"key_id": id, "public_key": b64(&prekey_bytes(id))}))
        .collect()
}

/// A full upload for `device` with identity key bytes `identity`.
pub fn full_upload(device: i64, identity: u8, ids: impl IntoIterator<Item = u32>) -> Value {
    json!({
        "device_id": device,
        "registration_id": 4000 + device,
        "identity_key": key(identity, 33),
        "signed_prekey": {"key_id": 7, "public_key": key(identity ^ 0x10, 33), "signature": key(identity ^ 0x20, 64)},
        "one_time_prekeys": prekeys(ids),
        "pq_last_resort_prekey": {"key_id": 9, "public_key": key(identity ^ 0x30, 1569), "signature": key(identity ^ 0x40, 64)},
    })
}

async fn put_keys(app: &TestApp, user: &TestUser, body: Value) -> (StatusCode, Value) {
    app.request(Method::PUT, "/api/keys", Some(&user.token), Some(body))
        .await
}

async fn upload_ok(app: &TestApp, user: &TestUser, body: Value) -> Value {
    let (status, value) = put_keys(app, user, body).await;
    assert_eq!(status, StatusCode::OK, "upload: {value}");
    value
}

async fn count(app: &TestApp, user: &TestUser, device: i64) -> i64 {
    let (status, value) = app
        .get(&format!("/api/keys/count?device_id={device}"), &user.token)
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    value["count"].as_i64().expect("count")
}

/// Fetches `path` as `user`; returns the `devices` array.
async fn fetch(app: &TestApp, user: &TestUser, path: &str) -> Vec<Value> {
    let (status, value) = app.get(path, &user.token).await;
    assert_eq!(status, StatusCode::OK, "fetch {path}: {value}");
    value["devices"].as_array().expect("devices").clone()
}

fn one_time_id(bundle: &Value) -> Option<u64> {
    let key = &bundle["one_time_prekey"];
    if key.is_null() {
        return None;
    }
    let id = key["key_id"].as_u64().expect("key_id");
    assert_eq!(key["public_key"], b64(&prekey_bytes(id as u32)));
    Some(id)
}

async fn a_published_bundle_is_fetched_with_one_one_time_prekey_per_device(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let uploaded = upload_ok(&app, &alice, full_upload(1, 0xA1, 1..=5)).await;
    assert_eq!(
        uploaded,
        json!({"device_id": 1, "count": 5, "threshold": 10})
    );
    // A second device, without a Kyber key; the id defaults to 1 only when absent.
    let mut second = full_upload(2, 0xA2, 100..=101);
    second["pq_last_resort_prekey"] = Value::Null;
    upload_ok(&app, &alice, second).await;

    let devices = fetch(&app, &bob, &format!("/api/keys/{}", alice.id)).await;
    assert_eq!(devices.len(), 2);
    let first = &devices[0];
    assert_eq!(first["device_id"], 1);
    assert_eq!(first["registration_id"], 4001);
    assert_eq!(first["identity_key"], key(0xA1, 33));
    assert_eq!(
        first["signed_prekey"],
        json!({"key_id": 7, "public_key": key(0xB1, 33), "signature": key(0x81, 64)})
    );
    assert_eq!(
        first["pq_last_resort_prekey"],
        json!({"key_id": 9, "public_key": key(0x91, 1569), "signature": key(0xE1, 64)})
    );
    assert_eq!(one_time_id(first), Some(1));
    assert_eq!(devices[1]["device_id"], 2);
    assert_eq!(devices[1]["identity_key"], key(0xA2, 33));
    assert_eq!(one_time_id(&devices[1]), Some(100));
    assert!(devices[1]["pq_last_resort_prekey"].is_null());

    // One key was taken from each device.
    assert_eq!(count(&app, &alice, 1).await, 4);
    assert_eq!(count(&app, &alice, 2).await, 1);
    let (_, default_device) = app.get("/api/keys/count", &alice.token).await;
    assert_eq!(default_device["device_id"], 1);
    assert_eq!(default_device["count"], 4);

    // One device only.
    let only = fetch(&app, &bob, &format!("/api/keys/{}/2", alice.id)).await;
    assert_eq!(only.len(), 1);
    assert_eq!(one_time_id(&only[0]), Some(101));
    assert_eq!(count(&app, &alice, 1).await, 4);
    assert_eq!(count(&app, &alice, 2).await, 0);
}

async fn one_time_prekeys_are_handed_out_once_then_the_bundle_comes_without_one(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    upload_ok(&app, &alice, full_upload(1, 0xA1, [3, 1, 2])).await;
    let path = format!("/api/keys/{}", alice.id);
    let mut seen = Vec::new();
    for fetcher in [&bob, &carol, &bob] {
        seen.push(one_time_id(&fetch(&app, fetcher, &path).await[0]));
    }
    assert_eq!(seen, [Some(1), Some(2), Some(3)]);
    assert_eq!(count(&app, &alice, 1).await, 0);

    // Exhausted: the bundle still comes, with the Kyber last-resort key and no one-time key.
    for _ in 0..2 {
        let bundle = &fetch(&app, &carol, &path).await[0];
        assert!(bundle["one_time_prekey"].is_null(), "{bundle}");
        assert_eq!(bundle["identity_key"], key(0xA1, 33));
        assert_eq!(bundle["pq_last_resort_prekey"]["key_id"], 9);
    }
}

async fn parallel_fetches_never_hand_out_the_same_one_time_prekey(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("KEY_FETCH_PER_MINUTE", "10000")]).await;
    let alice = app.register("alice").await;
    let fetchers = [
        app.register("bob").await,
        app.register("carol").await,
        app.register("dave").await,
        app.register("erin").await,
    ];
    upload_ok(&app, &alice, full_upload(1, 0xA1, 1..=100)).await;
    let mut second = full_upload(2, 0xA2, 1..=30);
    second["pq_last_resort_prekey"] = Value::Null;
    upload_ok(&app, &alice, second).await;

    // 120 fetches at once, from four users: more fetches than device 1 has keys.
    let path = format!("/api/keys/{}", alice.id);
    let answers = join_all((0..120).map(|i| app.get(&path, &fetchers[i % 4].token))).await;
    let mut handed_out: [Vec<u64>; 2] = Default::default();
    let mut without = [0; 2];
    for (status, body) in answers {
        assert_eq!(status, StatusCode::OK, "{body}");
        for (slot, bundle) in body["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .enumerate()
        {
            match one_time_id(bundle) {
                Some(id) => handed_out[slot].push(id),
                None => without[slot] += 1,
            }
        }
    }
    for (slot, stock) in [(0, 100), (1, 30)] {
        let unique: HashSet<u64> = handed_out[slot].iter().copied().collect();
        assert_eq!(unique.len(), handed_out[slot].len(), "a key went out twice");
        assert_eq!(unique.len(), stock, "every key went out exactly once");
        assert_eq!(without[slot], 120 - stock);
    }
    assert_eq!(count(&app, &alice, 1).await, 0);
    assert_eq!(count(&app, &alice, 2).await, 0);
}

async fn a_device_running_low_on_prekeys_is_told_over_its_socket(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    upload_ok(&app, &alice, full_upload(1, 0xA1, 1..=11)).await;
    // The app's socket names no device (device 1); a second device names itself.
    let mut phone = app.ws(&alice).await;
    let mut tablet = app
        .ws_url(&format!("/ws?token={}&deviceId=2", alice.token))
        .await
        .expect("socket opens");
    let path = format!("/api/keys/{}/1", alice.id);

    fetch(&app, &bob, &path).await; // 10 left: not below the threshold
    phone.expect_quiet().await;
    fetch(&app, &bob, &path).await; // 9 left
    let low = phone.expect("prekeys_low").await;
    assert_eq!(low["device_id"], 1);
    assert_eq!(low["deviceId"], 1);
    assert_eq!(low["count"], 9);
    assert_eq!(low["threshold"], 10);
    // Every socket of the user hears it; the payload names the device.
    assert_eq!(tablet.expect("prekeys_low").await["deviceId"], 1);

    // A device that connects while low is told at once; another device is not.
    let mut again = app
        .ws_url(&format!("/ws?device_id=1&token={}", alice.token))
        .await
        .expect("socket opens");
    assert_eq!(again.expect("prekeys_low").await["count"], 9);
    let mut other = app
        .ws_url(&format!("/ws?token={}&device_id=2", alice.token))
        .await
        .expect("socket opens");
    // A socket naming its device is told its (empty) queue is drained; nothing else.
    other.expect("queue_empty").await;
    other.expect_silent().await;

    // Once it uploads more, it is left alone.
    upload_ok(&app, &alice, json!({"one_time_prekeys": prekeys(100..150)})).await;
    assert_eq!(count(&app, &alice, 1).await, 59);
    let mut fresh = app.ws(&alice).await;
    fresh.expect_silent().await;
    fetch(&app, &bob, &path).await;
    phone.expect_quiet().await;

    // A bad device id is refused before the upgrade.
    for bad in ["device_id=0", "device_id=128", "deviceId=two"] {
        let refused = app
            .ws_url(&format!("/ws?token={}&{bad}", alice.token))
            .await
            .err();
        assert_eq!(refused, Some(StatusCode::BAD_REQUEST), "{bad}");
    }
}

async fn a_new_identity_key_is_announced_to_contacts_and_replaces_every_key(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    app.conversation(&alice, &bob).await;
    upload_ok(&app, &alice, full_upload(1, 0xA1, 1..=5)).await;
    let mut bob_ws = app.ws(&bob).await;
    let mut carol_ws = app.ws(&carol).await;

    // The same identity again (a reinstall that kept it): keys replaced, nobody told.
    upload_ok(&app, &alice, full_upload(1, 0xA1, 10..=12)).await;
    bob_ws.expect_quiet().await;
    let path = format!("/api/keys/{}", alice.id);
    assert_eq!(one_time_id(&fetch(&app, &carol, &path).await[0]), Some(10));

    // A new identity: contacts hear it, strangers do not.
    let mut renewed = full_upload(1, 0xC1, 20..=21);
    renewed["pq_last_resort_prekey"] = Value::Null;
    upload_ok(&app, &alice, renewed).await;
    let changed = bob_ws.expect("identity_changed").await;
    assert_eq!(changed["userId"], alice.id);
    assert_eq!(changed["user_id"], alice.id);
    assert_eq!(changed["deviceId"], 1);
    assert!(changed["timestamp"].is_string());
    carol_ws.expect_silent().await;

    // Every old key is gone, the Kyber key included.
    assert_eq!(count(&app, &alice, 1).await, 2);
    let bundle = &fetch(&app, &carol, &path).await[0];
    assert_eq!(bundle["identity_key"], key(0xC1, 33));
    assert_eq!(bundle["signed_prekey"]["public_key"], key(0xD1, 33));
    assert_eq!(one_time_id(bundle), Some(20));
    assert!(bundle["pq_last_resort_prekey"].is_null());

    // A first upload of a new device is not a change of identity.
    upload_ok(&app, &alice, full_upload(2, 0xE1, 1..=2)).await;
    bob_ws.expect_quiet().await;
}

async fn later_uploads_add_prekeys_and_refresh_the_signed_prekey(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    upload_ok(&app, &alice, full_upload(1, 0xA1, 1..=3)).await;
    let added = upload_ok(
        &app,
        &alice,
        json!({
            "signed_prekey": {"key_id": 8, "public_key": key(0x55, 33), "signature": key(0x66, 64)},
            "one_time_prekeys": prekeys(4..=6),
        }),
    )
    .await;
    assert_eq!(added["count"], 6);
    let path = format!("/api/keys/{}", alice.id);
    let bundle = &fetch(&app, &bob, &path).await[0];
    assert_eq!(bundle["identity_key"], key(0xA1, 33), "identity unchanged");
    assert_eq!(bundle["signed_prekey"]["key_id"], 8);
    assert_eq!(bundle["signed_prekey"]["public_key"], key(0x55, 33));
    assert_eq!(bundle["pq_last_resort_prekey"]["key_id"], 9, "kept");
    assert_eq!(one_time_id(bundle), Some(1));

    // Without an identity key there must be a device to add to.
    let (status, body) = put_keys(
        &app,
        &alice,
        json!({"device_id": 3, "one_time_prekeys": prekeys(1..=2)}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // A device holds at most 500 one-time prekeys.
    for batch in 0..4 {
        let start = 100 + batch * 100;
        upload_ok(
            &app,
            &alice,
            json!({"one_time_prekeys": prekeys(start..start + 100)}),
        )
        .await;
    }
    assert_eq!(count(&app, &alice, 1).await, 405);
    let (status, body) =
        put_keys(&app, &alice, json!({"one_time_prekeys": prekeys(900..996)})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "too_many_prekeys");
    assert_eq!(count(&app, &alice, 1).await, 405);
}

async fn bad_uploads_are_refused_and_change_nothing(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    upload_ok(&app, &alice, full_upload(1, 0xA1, 1..=3)).await;

    let with = |field: &str, value: Value| {
        let mut body = full_upload(1, 0xC1, 50..=52);
        body[field] = value;
        body
    };
    let signed = |public_key: String, signature: String| json!({"key_id": 1, "public_key": public_key, "signature": signature});
    let cases = [
        (with("identity_key", json!("not base64!")), "invalid_base64"),
        (with("identity_key", json!(key(1, 65))), "invalid_input"),
        (with("identity_key", json!("")), "invalid_input"),
        (
            with("signed_prekey", signed(key(1, 65), key(1, 64))),
            "invalid_input",
        ),
        (
            with("signed_prekey", signed(key(1, 33), key(1, 129))),
            "invalid_input",
        ),
        (
            with("signed_prekey", signed(key(1, 33), "%%".into())),
            "invalid_base64",
        ),
        (with("signed_prekey", Value::Null), "invalid_input"),
        (
            with("pq_last_resort_prekey", signed(key(1, 2049), key(1, 64))),
            "invalid_input",
        ),
        (
            with("pq_last_resort_prekey", signed(key(1, 1569), key(1, 129))),
            "invalid_input",
        ),
        (with("one_time_prekeys", prekeys(1..=101)), "invalid_input"),
        (
            with("one_time_prekeys", prekeys([1, 2, 1])),
            "invalid_input",
        ),
        (
            with(
                "one_time_prekeys",
                json!([{"key_id": 1, "public_key": key(1, 65)}]),
            ),
            "invalid_input",
        ),
        (
            with(
                "one_time_prekeys",
                json!([{"key_id": 1, "public_key": "@@"}]),
            ),
            "invalid_base64",
        ),
        (
            with(
                "one_time_prekeys",
                json!([{"key_id": -1, "public_key": key(1, 33)}]),
            ),
            "invalid_json",
        ),
        (with("device_id", json!(0)), "invalid_input"),
        (with("device_id", json!(128)), "invalid_input"),
        (with("identity_key", json!(42)), "invalid_json"),
        // An added key id the device already holds: refused, and the signed prekey not changed.
        (
            json!({"signed_prekey": signed(key(2, 33), key(2, 64)), "one_time_prekeys": prekeys([9, 2])}),
            "prekey_id_taken",
        ),
    ];
    for (body, code) in cases {
        let (status, answer) = put_keys(&app, &alice, body.clone()).await;
        assert!(status.is_client_error(), "{status} for {body}");
        assert_eq!(answer["error"]["code"], code, "{body}");
    }
    let (status, _) = app
        .request(Method::PUT, "/api/keys", Some(&alice.token), None)
        .await;
    assert!(status.is_client_error());

    assert_eq!(count(&app, &alice, 1).await, 3);
    let bundle = &fetch(&app, &bob, &format!("/api/keys/{}", alice.id)).await[0];
    assert_eq!(bundle["identity_key"], key(0xA1, 33));
    assert_eq!(bundle["signed_prekey"]["public_key"], key(0xB1, 33));
    assert_eq!(one_time_id(bundle), Some(1));
    // Unpadded base64 is accepted.
    let mut unpadded = full_upload(1, 0xA1, 1..=1);
    unpadded["identity_key"] = json!(key(0xA1, 33).trim_end_matches('='));
    upload_ok(&app, &alice, unpadded).await;
}

async fn keys_need_a_token_and_a_known_user(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let alice_keys = format!("/api/keys/{}", alice.id);
    for (method, path) in [
        (Method::PUT, "/api/keys"),
        (Method::GET, "/api/keys/count"),
        (Method::GET, alice_keys.as_str()),
        (Method::GET, "/api/devices"),
        (Method::DELETE, "/api/devices/1"),
    ] {
        for token in [None, Some("garbage")] {
            let (status, body) = app
                .request(method.clone(), path, token, Some(full_upload(1, 1, 1..=1)))
                .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert_eq!(body, Value::Null, "401 has an empty body");
        }
    }

    // Nobody's keys yet; unknown users and devices look the same as missing ones.
    let (status, body) = app.get(&alice_keys, &bob.token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    upload_ok(&app, &alice, full_upload(1, 0xA1, 1..=3)).await;
    let unknown = uuid::Uuid::new_v4();
    for path in [
        format!("/api/keys/{unknown}"),
        format!("/api/keys/{}/2", alice.id),
        format!("/api/keys/{}/0", alice.id),
        format!("/api/keys/{}/x", alice.id),
        "/api/keys/not-a-uuid".to_owned(),
    ] {
        let (status, _) = app.get(&path, &bob.token).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _) = app.get("/api/keys/count?device_id=0", &alice.token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // An upload only ever touches the caller's own devices; a user may fetch their own keys.
    upload_ok(&app, &bob, full_upload(1, 0xB0, 1..=1)).await;
    assert_eq!(count(&app, &alice, 1).await, 3);
    let own = fetch(&app, &alice, &alice_keys).await;
    assert_eq!(own[0]["identity_key"], key(0xA1, 33));
}

async fn fetches_are_rate_limited_per_caller(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("KEY_FETCH_PER_MINUTE", "3")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    upload_ok(&app, &alice, full_upload(1, 0xA1, 1..=10)).await;
    let path = format!("/api/keys/{}", alice.id);
    for _ in 0..3 {
        fetch(&app, &bob, &path).await;
    }
    let response = app
        .http
        .get(app.url(&path))
        .bearer_auth(&bob.token)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["error"]["code"], "rate_limited");
    // Probing unknown users counts too, and takes no key.
    let (status, _) = app
        .get(&format!("/api/keys/{}", uuid::Uuid::new_v4()), &bob.token)
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(count(&app, &alice, 1).await, 7);
    // Other callers have their own allowance.
    fetch(&app, &carol, &path).await;
}

async fn deleting_a_device_deletes_its_keys(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    upload_ok(&app, &alice, full_upload(1, 0xA1, 1..=3)).await;
    upload_ok(&app, &alice, full_upload(2, 0xA2, 1..=4)).await;
    let (status, devices) = app.get("/api/devices", &alice.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(devices[0]["device_id"], 1);
    assert_eq!(devices[0]["one_time_prekeys"], 3);
    assert_eq!(devices[1]["device_id"], 2);
    assert_eq!(devices[1]["registration_id"], 4002);
    assert!(devices[1]["created_at"].is_string());

    // Someone else cannot delete it.
    let (status, _) = app
        .request(Method::DELETE, "/api/devices/2", Some(&bob.token), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .request(Method::DELETE, "/api/devices/2", Some(&alice.token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .request(Method::DELETE, "/api/devices/2", Some(&alice.token), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let devices = fetch(&app, &bob, &format!("/api/keys/{}", alice.id)).await;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["device_id"], 1);
    let (status, _) = app
        .get(&format!("/api/keys/{}/2", alice.id), &bob.token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(count(&app, &alice, 2).await, 0);
    // Its prekeys went with it: the same device id starts from scratch.
    let (status, _) = put_keys(
        &app,
        &alice,
        json!({"device_id": 2, "one_time_prekeys": prekeys(9..=9)}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
