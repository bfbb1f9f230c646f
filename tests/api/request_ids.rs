//! Request ids (issue 24, item 2): every HTTP answer carries an `x-request-id`, the client's
//! when it is a plain token, a new UUID otherwise, and every log line of the request (the
//! socket's whole session for a WebSocket upgrade) names it.

use crate::common::{Engine, LogCapture, TestApp, WAIT, WsClient};
use reqwest::{Method, StatusCode};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};
use uuid::Uuid;

scenarios!(
    every_answer_carries_a_request_id_kept_from_the_client_when_usable,
    the_request_id_names_the_requests_log_lines_and_its_sockets_session,
);

/// The `x-request-id` answered to a GET of `path` sent with `sent` (if any).
async fn answered_id(app: &TestApp, path: &str, sent: Option<&str>) -> (StatusCode, String) {
    let mut request = app.http.request(Method::GET, app.url(path));
    if let Some(sent) = sent {
        request = request.header("x-request-id", sent);
    }
    let response = request.send().await.expect("request");
    let id = response
        .headers()
        .get("x-request-id")
        .expect("an x-request-id in every answer")
        .to_str()
        .expect("ASCII")
        .to_owned();
    (response.status(), id)
}

async fn every_answer_carries_a_request_id_kept_from_the_client_when_usable(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (status, made) = answered_id(&app, "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(Uuid::parse_str(&made).is_ok(), "a new UUID: {made}");
    let (_, again) = answered_id(&app, "/health", None).await;
    assert_ne!(made, again, "one per request");

    let kept = "lb-7f3a:req_42.x";
    assert_eq!(answered_id(&app, "/health", Some(kept)).await.1, kept);
    // Errors too, the empty 401 included.
    let (status, id) = answered_id(&app, "/api/auth/me", Some(kept)).await;
    assert_eq!((status, id.as_str()), (StatusCode::UNAUTHORIZED, kept));
    let (status, id) = answered_id(&app, "/api/nowhere", Some(kept)).await;
    assert_eq!((status, id.as_str()), (StatusCode::NOT_FOUND, kept));

    // Anything else would go into the logs as sent: replaced.
    let long = "a".repeat(129);
    for unusable in [
        "two words",
        "line\tbreak",
        "quote\"d",
        "{json}",
        long.as_str(),
    ] {
        let (_, id) = answered_id(&app, "/health", Some(unusable)).await;
        assert!(Uuid::parse_str(&id).is_ok(), "{unusable:?} replaced: {id}");
    }
}

async fn the_request_id_names_the_requests_log_lines_and_its_sockets_session(engine: Engine) {
    let capture = LogCapture::start();
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let rest_id = format!("rest-{}", Uuid::new_v4().simple());
    let response = app
        .http
        .get(app.url("/api/conversations"))
        .bearer_auth(&alice.token)
        .header("x-request-id", &rest_id)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);

    let ws_id = format!("ws-{}", Uuid::new_v4().simple());
    let mut request = format!("ws://{}/ws?token={}", app.addr, alice.token)
        .into_client_request()
        .expect("ws request");
    request.headers_mut().insert(
        "x-request-id",
        HeaderValue::from_str(&ws_id).expect("header"),
    );
    let ws = WsClient::connect(request).await.expect("socket opens");
    ws.close().await;

    // Logged by the server's tasks: given until the usual wait to appear.
    let lines_with = async |id: &str, what: &str| {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = capture.text();
            if text.lines().any(|l| l.contains(id) && l.contains(what)) {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    assert!(
        lines_with(&rest_id, "/api/conversations").await,
        "the request's line"
    );
    assert!(
        lines_with(&ws_id, "socket opened").await,
        "the session's first line"
    );
    assert!(
        lines_with(&ws_id, "socket closed").await,
        "the session's last line"
    );
}
