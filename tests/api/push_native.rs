//! FCM and APNs wake-ups through the real server: fake Google and Apple endpoints on loopback
//! (their signatures are checked by the unit tests of `src/push/{fcm,apns}.rs`); here, that
//! the settings enable the kinds, that an offline device gets exactly one push of the right
//! shape for a burst, and that a call ring is urgent.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{Path, State},
    http::HeaderMap,
    routing::post,
};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{Value, json};

use crate::common::{Engine, TestApp, TestUser};

/// What the fakes received: (path, headers, JSON body).
type Received = Arc<Mutex<Vec<(String, HeaderMap, Value)>>>;

/// Google's token endpoint, FCM's send endpoint and APNs' device endpoint, on one listener.
async fn fake_services() -> (String, Received) {
    let received: Received = Arc::default();
    async fn token(
        State(r): State<Received>,
        headers: HeaderMap,
        body: String,
    ) -> axum::Json<Value> {
        r.lock()
            .expect("lock")
            .push(("/token".into(), headers, json!(body)));
        axum::Json(json!({"access_token": "access-1", "expires_in": 3600, "token_type": "Bearer"}))
    }
    async fn fcm(
        State(r): State<Received>,
        Path(project): Path<String>,
        headers: HeaderMap,
        body: axum::Json<Value>,
    ) -> axum::Json<Value> {
        r.lock()
            .expect("lock")
            .push((format!("/fcm/{project}"), headers, body.0));
        axum::Json(json!({"name": "projects/p/messages/1"}))
    }
    async fn apns(
        State(r): State<Received>,
        Path(token): Path<String>,
        headers: HeaderMap,
        body: axum::Json<Value>,
    ) {
        r.lock()
            .expect("lock")
            .push((format!("/apns/{token}"), headers, body.0));
    }
    let app = Router::new()
        .route("/token", post(token))
        .route("/v1/projects/{project}/messages:send", post(fcm))
        .route("/3/device/{token}", post(apns))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, received)
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("kisse-{}-{name}", uuid::Uuid::new_v4()));
    std::fs::write(&path, contents).expect("write a temp file");
    path
}

async fn server(engine: Engine, base: &str) -> TestApp {
    let pem = std::fs::read_to_string("tests/fixtures/fcm-test-key.pem").expect("fixture key");
    let account = json!({
        "type": "service_account", "project_id": "kisse-test", "private_key": pem,
        "client_email": "push@kisse-test.iam.gserviceaccount.com", "token_uri": format!("{base}/token"),
    });
    let account = temp_file("fcm.json", &account.to_string());
    let p8 = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng)
        .to_pkcs8_pem(LineEnding::LF)
        .expect("pem");
    let p8 = temp_file("apns.p8", &p8);
    TestApp::spawn_with(
        engine,
        &[
            (
                "FCM_SERVICE_ACCOUNT_FILE",
                account.to_str().expect("utf-8 path"),
            ),
            ("FCM_BASE_URL", base),
            ("APNS_KEY_FILE", p8.to_str().expect("utf-8 path")),
            ("APNS_KEY_ID", "KEYID12345"),
            ("APNS_TEAM_ID", "TEAMID1234"),
            ("APNS_TOPIC", "app.kisse.ios"),
            ("APNS_BASE_URL", base),
        ],
    )
    .await
}

async fn register(app: &TestApp, user: &TestUser, body: Value) {
    let (status, answer) = app
        .request(
            reqwest::Method::PUT,
            "/api/devices/1/push",
            Some(&user.token),
            Some(body),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
}

/// Waits until the fakes got `n` requests for a path starting with `prefix`, then a little
/// longer to see that no more come.
async fn settled(received: &Received, prefix: &str, n: usize) -> Vec<(String, HeaderMap, Value)> {
    let matching = || -> Vec<_> {
        let all = received.lock().expect("lock");
        all.iter()
            .filter(|(p, _, _)| p.starts_with(prefix))
            .cloned()
            .collect()
    };
    for _ in 0..100 {
        if matching().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    matching()
}

async fn an_offline_device_gets_one_fcm_or_apns_wake_and_a_ring_is_urgent(engine: Engine) {
    let (base, received) = fake_services().await;
    let app = server(engine, &base).await;
    let (alice, bob, carol) = (
        app.register("alice").await,
        app.register("bob").await,
        app.register("carol").await,
    );
    register(&app, &bob, json!({"kind": "fcm", "token": "fcm-token-bob"})).await;
    let (status, answer) = app
        .request(
            reqwest::Method::PUT,
            "/api/devices/1/push",
            Some(&carol.token),
            Some(json!({"kind": "apns", "token": "../../3/device/other"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{answer}");
    register(
        &app,
        &carol,
        json!({"kind": "apns", "token": "00aa11bb22cc"}),
    )
    .await;
    app.conversation(&alice, &bob).await;
    app.conversation(&alice, &carol).await;

    let mut ws = app.ws(&alice).await;
    for to in [&bob, &carol, &bob, &carol, &bob] {
        ws.send(
            "message",
            json!({"recipientId": to.id, "messageType": "text", "sessionId": "s"}),
        )
        .await;
        ws.expect("message_ack").await;
    }
    let fcm = settled(&received, "/fcm/", 1).await;
    assert_eq!(fcm.len(), 1, "one FCM wake for a burst: {fcm:?}");
    let (path, headers, body) = &fcm[0];
    assert_eq!(path, "/fcm/kisse-test");
    assert_eq!(headers["authorization"], "Bearer access-1");
    assert_eq!(
        body["message"]["data"],
        json!({"type": "wake", "urgency": "normal"}),
        "nothing but the marker: {body}"
    );
    assert_eq!(body["message"]["token"], "fcm-token-bob");
    assert!(body["message"].get("notification").is_none(), "{body}");
    let apns = settled(&received, "/apns/", 1).await;
    assert_eq!(apns.len(), 1, "one APNs wake for a burst: {apns:?}");
    let (path, headers, body) = &apns[0];
    assert_eq!(path, "/apns/00aa11bb22cc");
    assert_eq!(headers["apns-topic"], "app.kisse.ios");
    assert_eq!(headers["apns-push-type"], "background");
    assert!(
        headers["authorization"]
            .to_str()
            .expect("ascii")
            .starts_with("bearer ")
    );
    assert_eq!(body["aps"], json!({"content-available": 1}), "{body}");

    // A ring is urgent, and is not held back by the wake just sent.
    let (status, call) = app
        .post(
            "/api/calls",
            &alice.token,
            json!({"recipient_id": bob.id, "call_type": "audio"}),
        )
        .await;
    assert!(status.is_success(), "{call}");
    let fcm = settled(&received, "/fcm/", 2).await;
    assert_eq!(fcm.len(), 2, "{fcm:?}");
    assert_eq!(fcm[1].2["message"]["data"]["urgency"], "high");
    assert_eq!(fcm[1].2["message"]["android"]["priority"], "HIGH");
    drop(ws);
}

scenarios!(an_offline_device_gets_one_fcm_or_apns_wake_and_a_ring_is_urgent);
