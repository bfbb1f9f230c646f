//! Calls as the app makes them: `POST /api/calls` then a WebSocket `call_request` with the app's
//! own id, answered and ended with either id.

use std::time::Duration;

use crate::common::{Engine, TestApp, TestUser, WsClient};
use reqwest::StatusCode;
use serde_json::{Value, json};

scenarios!(
    rest_then_socket_request_is_one_call_accepted_and_ended_with_either_id,
    a_rejected_call_is_recorded_and_frees_both_users,
    a_busy_recipient_answers_busy_and_a_second_post_is_409,
    the_caller_may_cancel_before_an_answer_and_call_again,
    an_unanswered_call_becomes_missed_after_the_timeout,
    a_socket_only_call_rings_with_the_app_id,
    a_third_user_cannot_touch_or_see_a_call,
    an_active_call_whose_parties_both_left_ends_after_the_silence,
    another_pair_reusing_a_call_id_cannot_touch_the_call,
);

/// `POST /api/calls` from `caller`, then the app's WebSocket `call_request` with its own id.
pub async fn app_call(
    app: &TestApp,
    caller: &TestUser,
    caller_ws: &mut WsClient,
    to: &TestUser,
    app_id: &str,
) -> Value {
    let (status, call) = app
        .post(
            "/api/calls",
            &caller.token,
            json!({"recipient_id": to.id, "call_type": "video"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{call}");
    caller_ws
        .send("call_request", json!({"recipientId": to.id, "callType": "video", "callId": app_id, "timestamp": "2025-11-24T21:03:04.123456"}))
        .await;
    // The request is handled before this heartbeat is answered: the two are one call by now.
    caller_ws.expect_quiet().await;
    call
}

async fn rest_then_socket_request_is_one_call_accepted_and_ended_with_either_id(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    let call = app_call(&app, &alice, &mut a, &bob, "1732480000000").await;
    for key in [
        "id",
        "call_id",
        "caller_id",
        "recipient_id",
        "call_type",
        "status",
        "started_at",
        "ended_at",
        "duration_seconds",
        "created_at",
        "updated_at",
    ] {
        assert!(call.get(key).is_some(), "missing {key}: {call}");
    }
    assert_eq!(call["status"], "ringing");
    let server_id = call["call_id"].as_str().expect("call_id").to_owned();

    let ring = b.expect("call_request_full").await;
    assert_eq!(ring["callId"], server_id);
    assert_eq!(ring["callerId"], alice.id);
    assert_eq!(ring["recipientId"], bob.id);
    assert_eq!(ring["callType"], "video");
    b.expect_quiet().await; // the WebSocket request did not ring a second time

    b.send(
        "call_response",
        json!({"callId": server_id, "response": "accept"}),
    )
    .await;
    let accepted = a.expect("call_response_full").await;
    assert_eq!(accepted["response"], "accept");
    assert_eq!(
        accepted["callId"], "1732480000000",
        "the caller hears of it under its own id"
    );
    let (status, active) = app.get("/api/calls/active", &bob.token).await;
    assert_eq!(
        (status, active["status"].clone()),
        (StatusCode::OK, json!("active"))
    );

    a.send(
        "call_response",
        json!({"callId": 1732480000000_u64, "response": "end"}),
    )
    .await;
    let ended = b.expect("call_response_full").await;
    assert_eq!(
        (ended["response"].clone(), ended["callId"].clone()),
        (json!("end"), json!(server_id))
    );

    let (_, alice_history) = app.get("/api/calls/history", &alice.token).await;
    let (_, bob_history) = app.get("/api/calls/history", &bob.token).await;
    assert_eq!(
        alice_history.as_array().expect("array").len(),
        1,
        "one call, not two"
    );
    assert_eq!(alice_history[0]["type"], "outgoing");
    assert_eq!(bob_history[0]["type"], "incoming");
    assert_eq!(bob_history[0]["status"], "ended");
    assert_eq!(bob_history[0]["caller_name"], "alice");
    assert_eq!(bob_history[0]["recipient_name"], "bob");
    assert!(
        bob_history[0]["duration_seconds"]
            .as_i64()
            .is_some_and(|d| d >= 0)
    );
    assert!(bob_history[0]["ended_at"].is_string());
    assert_eq!(
        app.get("/api/calls/active", &alice.token).await.0,
        StatusCode::NOT_FOUND
    );
}

async fn a_rejected_call_is_recorded_and_frees_both_users(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    let call = app_call(&app, &alice, &mut a, &bob, "1").await;
    b.expect("call_request_full").await;
    b.send(
        "call_response",
        json!({"callId": call["call_id"], "response": "reject"}),
    )
    .await;
    assert_eq!(a.expect("call_response_full").await["response"], "reject");
    let (_, history) = app.get("/api/calls/history", &alice.token).await;
    assert_eq!(history[0]["status"], "rejected");
    assert!(history[0]["duration_seconds"].is_null(), "never answered");
    assert_eq!(
        app.get("/api/calls/active", &bob.token).await.0,
        StatusCode::NOT_FOUND
    );
    // A late answer about a finished call changes nothing.
    b.send(
        "call_response",
        json!({"callId": call["call_id"], "response": "accept"}),
    )
    .await;
    b.expect_quiet().await;
    a.expect_quiet().await;
}

async fn a_busy_recipient_answers_busy_and_a_second_post_is_409(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let (mut a, mut b, mut c) = (
        app.ws(&alice).await,
        app.ws(&bob).await,
        app.ws(&carol).await,
    );
    app_call(&app, &alice, &mut a, &bob, "100").await;
    b.expect("call_request_full").await;

    let (status, error) = app
        .post(
            "/api/calls",
            &carol.token,
            json!({"recipient_id": bob.id, "call_type": "audio"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["error"]["code"], "busy");
    c.send(
        "call_request",
        json!({"recipientId": bob.id, "callType": "audio", "callId": "200"}),
    )
    .await;
    let busy = c.expect("call_response_full").await;
    assert_eq!(
        (busy["response"].clone(), busy["callId"].clone()),
        (json!("busy"), json!("200"))
    );
    b.expect_quiet().await; // bob's ongoing call is not disturbed
    let (_, history) = app.get("/api/calls/history", &carol.token).await;
    assert_eq!(history[0]["status"], "busy");

    // The callee's own "busy" answer ends the ringing call too.
    b.send(
        "call_response",
        json!({"callId": "100", "response": "busy"}),
    )
    .await;
    assert_eq!(a.expect("call_response_full").await["response"], "busy");
}

async fn the_caller_may_cancel_before_an_answer_and_call_again(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    app_call(&app, &alice, &mut a, &bob, "300").await;
    b.expect("call_request_full").await;
    a.send("call_response", json!({"callId": "300", "response": "end"}))
        .await;
    assert_eq!(b.expect("call_response_full").await["response"], "end");
    let (_, history) = app.get("/api/calls/history", &bob.token).await;
    assert_eq!(history[0]["status"], "cancelled");

    // A finished call never blocks the next one, in either direction.
    let next = app_call(&app, &bob, &mut b, &alice, "301").await;
    assert_eq!(next["status"], "ringing");
    a.expect("call_request_full").await;
}

async fn an_unanswered_call_becomes_missed_after_the_timeout(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("CALL_RING_TIMEOUT", "1")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    app_call(&app, &alice, &mut a, &bob, "400").await;
    b.expect("call_request_full").await;
    let to_caller = a.expect("call_response_full").await;
    let to_callee = b.expect("call_response_full").await;
    assert_eq!(
        (to_caller["callId"].clone(), to_caller["status"].clone()),
        (json!("400"), json!("missed"))
    );
    assert_eq!(to_callee["response"], "end");
    let (_, history) = app.get("/api/calls/history", &bob.token).await;
    assert_eq!(history[0]["status"], "missed");
    assert_eq!(
        app.get("/api/calls/active", &alice.token).await.0,
        StatusCode::NOT_FOUND
    );
}

async fn a_socket_only_call_rings_with_the_app_id(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    a.send(
        "call_request",
        json!({"recipientId": bob.id, "callType": "audio", "callId": "500"}),
    )
    .await;
    let ring = b.expect("call_request_full").await;
    assert_eq!(
        (ring["callId"].clone(), ring["callType"].clone()),
        (json!("500"), json!("audio"))
    );
    b.send(
        "call_response",
        json!({"callId": "500", "response": "accept"}),
    )
    .await;
    assert_eq!(a.expect("call_response_full").await["response"], "accept");
    b.send("call_response", json!({"callId": "500", "response": "end"}))
        .await;
    assert_eq!(a.expect("call_response_full").await["response"], "end");
}

async fn a_third_user_cannot_touch_or_see_a_call(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mallory = app.register("mallory").await;
    let (mut a, mut b, mut m) = (
        app.ws(&alice).await,
        app.ws(&bob).await,
        app.ws(&mallory).await,
    );
    let call = app_call(&app, &alice, &mut a, &bob, "600").await;
    b.expect("call_request_full").await;
    for id in [call["call_id"].clone(), json!("600")] {
        m.send("call_response", json!({"callId": id, "response": "end"}))
            .await;
        assert_eq!(m.expect("error").await["code"], "not_found");
    }
    assert_eq!(
        app.get("/api/calls/active", &mallory.token).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/api/calls/history", &mallory.token).await.1,
        json!([])
    );
    let (_, active) = app.get("/api/calls/active", &alice.token).await;
    assert_eq!(active["status"], "ringing", "still ringing");
    for (body, expected) in [
        (
            json!({"recipient_id": alice.id, "call_type": "audio"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"recipient_id": uuid::Uuid::new_v4(), "call_type": "audio"}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"recipient_id": bob.id, "call_type": "hologram"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        assert_eq!(app.post("/api/calls", &alice.token, body).await.0, expected);
    }
}

/// Both apps vanished (killed, out of coverage) during a call: nobody will say `end`. After
/// `CALL_MAX_SILENCE` without a socket of either, the call ends, and they can call again.
async fn an_active_call_whose_parties_both_left_ends_after_the_silence(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("CALL_MAX_SILENCE", "1")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (mut a, mut b) = (app.ws(&alice).await, app.ws(&bob).await);
    a.send(
        "call_request",
        json!({"recipientId": bob.id, "callType": "audio", "callId": "700"}),
    )
    .await;
    b.expect("call_request_full").await;
    b.send(
        "call_response",
        json!({"callId": "700", "response": "accept"}),
    )
    .await;
    assert_eq!(a.expect("call_response_full").await["response"], "accept");
    // One party still connected: the call goes on past the silence.
    a.close().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, active) = app.get("/api/calls/active", &alice.token).await;
    assert_eq!(active["status"], "active", "bob is still there");
    b.close().await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, active) = app.get("/api/calls/active", &alice.token).await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still live: {active}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, history) = app.get("/api/calls/history", &bob.token).await;
    assert_eq!(history[0]["status"], "ended");
    assert!(history[0]["ended_at"].is_string());
    // Neither is busy any more.
    let (status, call) = app
        .post(
            "/api/calls",
            &bob.token,
            json!({"recipient_id": alice.id, "call_type": "video"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{call}");
}

/// App call ids are the caller's clock in milliseconds: another pair may pick the same one.
/// It must not shadow the call going on, nor let a third party answer it.
async fn another_pair_reusing_a_call_id_cannot_touch_the_call(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let dave = app.register("dave").await;
    let (mut a, mut b, mut c, mut d) = (
        app.ws(&alice).await,
        app.ws(&bob).await,
        app.ws(&carol).await,
        app.ws(&dave).await,
    );
    let id = "1732480000123";
    a.send(
        "call_request",
        json!({"recipientId": bob.id, "callType": "audio", "callId": id}),
    )
    .await;
    b.expect("call_request_full").await;

    // Carol calls bob under the same id: refused, nothing recorded under it.
    c.send(
        "call_request",
        json!({"recipientId": bob.id, "callType": "audio", "callId": id}),
    )
    .await;
    assert_eq!(c.expect("error").await["code"], "call_id_taken");
    assert_eq!(
        app.get("/api/calls/history", &carol.token).await.1,
        json!([])
    );
    // Nor can she end it by that id.
    c.send("call_response", json!({"callId": id, "response": "end"}))
        .await;
    assert_eq!(c.expect("error").await["code"], "not_found");

    // Bob answers the call he was rung for, by its id: it is alice's.
    b.send("call_response", json!({"callId": id, "response": "accept"}))
        .await;
    let answer = a.expect("call_response_full").await;
    assert_eq!(
        (answer["callId"].as_str(), answer["response"].as_str()),
        (Some(id), Some("accept"))
    );
    let (_, active) = app.get("/api/calls/active", &bob.token).await;
    assert_eq!(
        (active["caller_id"].as_str(), active["status"].as_str()),
        (Some(alice.id.as_str()), Some("active"))
    );

    // The same id between two other people is their own call.
    c.send(
        "call_request",
        json!({"recipientId": dave.id, "callType": "video", "callId": id}),
    )
    .await;
    assert_eq!(d.expect("call_request_full").await["callId"], id);
    d.send("call_response", json!({"callId": id, "response": "reject"}))
        .await;
    assert_eq!(c.expect("call_response_full").await["response"], "reject");
    let (_, active) = app.get("/api/calls/active", &alice.token).await;
    assert_eq!(active["status"], "active", "untouched by carol and dave");
}
