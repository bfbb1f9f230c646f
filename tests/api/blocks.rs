//! Blocking: the blocker stops hearing from the blocked user, who cannot tell. Messages,
//! envelopes and calls are answered to the sender exactly as usual, and withheld from the
//! blocker; a channel invitation adds nobody, though its creator counts a member as after any
//! add. Blocks are kept across restarts and seen on every node of a cluster.

use std::collections::BTreeSet;

use crate::common::{Engine, TestApp, TestUser, WAIT, WsClient};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    calls::app_call,
    channels::{create_channel, post_message},
    consent::{post_story, story_ids},
    envelopes::{device_socket, link_device},
};

scenarios!(
    blocks_are_listed_kept_once_and_lifted,
    blocking_refuses_oneself_unknown_users_and_strangers,
    blocking_and_unblocking_are_writes_within_the_write_budget,
    a_blocked_users_message_is_acked_as_usual_and_never_reaches_the_blocker,
    a_blocked_users_messages_wait_in_no_catch_up,
    messages_flow_again_after_unblocking_and_the_withheld_stay_withheld,
    envelopes_to_a_blocker_are_checked_and_acked_as_usual_and_never_queued,
    a_blocked_callers_call_never_rings_and_ends_missed_for_the_caller_alone,
    a_channel_invitation_from_a_blocked_user_adds_nobody,
    blocks_survive_a_restart,
    a_block_stops_presence_typing_stories_and_identity_changes_both_ways,
    the_blocker_no_longer_finds_the_blocked_user_nor_their_request,
    a_withheld_reply_does_not_accept_a_request,
);

async fn block(app: &TestApp, blocker: &TestUser, blocked: &TestUser) -> Value {
    let path = format!("/api/users/{}/block", blocked.id);
    let (status, body) = app.post(&path, &blocker.token, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn unblock(app: &TestApp, blocker: &TestUser, blocked: &TestUser) {
    let path = format!("/api/users/{}/block", blocked.id);
    let (status, body) = app
        .request(Method::DELETE, &path, Some(&blocker.token), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
}

/// Sends a `message` frame (with a client id) and returns its ack.
async fn send(ws: &mut WsClient, to: &TestUser) -> Value {
    let id = Uuid::now_v7().to_string();
    ws.send(
        "message",
        json!({"recipientId": to.id, "messageType": "text", "sessionId": "s", "id": id}),
    )
    .await;
    let ack = ws.expect("message_ack").await;
    assert_eq!(ack["id"], id.as_str(), "{ack}");
    ack
}

fn id_of(value: &Value) -> &str {
    value["id"].as_str().expect("id")
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().expect("object").keys().cloned().collect()
}

/// The ids of the messages of the conversation between `user` and `other`, as `user` sees
/// its history.
async fn history(app: &TestApp, user: &TestUser, other: &TestUser) -> Vec<String> {
    let conversation = app.conversation(user, other).await;
    let path = format!("/api/conversations/{}/messages", id_of(&conversation));
    let (status, page) = app.get(&path, &user.token).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page.as_array()
        .expect("array")
        .iter()
        .map(|m| id_of(m).to_owned())
        .collect()
}

/// The next `message` frame's id (frames of their own schedule skipped).
async fn next_message(ws: &mut WsClient) -> String {
    id_of(&ws.expect("message").await).to_owned()
}

async fn blocks_are_listed_kept_once_and_lifted(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;

    let first = block(&app, &alice, &bob).await;
    assert_eq!(first["user_id"], bob.id.as_str(), "{first}");
    assert!(first["blocked_at"].is_string(), "{first}");
    let again = block(&app, &alice, &bob).await;
    assert_eq!(again, first, "blocking again keeps the first time");
    block(&app, &alice, &carol).await;

    let (status, list) = app.get("/api/blocks", &alice.token).await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().expect("array").clone();
    let users: Vec<&str> = list
        .iter()
        .map(|b| b["user_id"].as_str().expect("user_id"))
        .collect();
    assert_eq!(users, [carol.id.as_str(), bob.id.as_str()], "latest first");
    assert_eq!(list[1]["username"], "bob");
    assert_eq!(list[1]["blocked_at"], first["blocked_at"]);
    assert_eq!(
        keys(&list[1]),
        ["avatar_url", "blocked_at", "name", "user_id", "username"]
            .map(String::from)
            .into(),
        "public fields only, never the email"
    );
    // A block is the blocker's own: the blocked user's list is theirs.
    assert_eq!(app.get("/api/blocks", &bob.token).await.1, json!([]));

    unblock(&app, &alice, &bob).await;
    unblock(&app, &alice, &bob).await; // nothing to lift: the same answer
    let (_, list) = app.get("/api/blocks", &alice.token).await;
    let users: Vec<&str> = (list.as_array().expect("array").iter())
        .map(|b| b["user_id"].as_str().expect("user_id"))
        .collect();
    assert_eq!(users, [carol.id.as_str()]);
    let later = block(&app, &alice, &bob).await;
    // Compared as times: a time on a whole second is written without its fraction.
    let at = |b: &Value| {
        let text = b["blocked_at"].as_str().expect("blocked_at");
        chrono::DateTime::parse_from_rfc3339(text).expect("RFC 3339")
    };
    assert!(
        at(&later) >= at(&first),
        "a new block starts anew: {later} {first}"
    );
}

async fn blocking_refuses_oneself_unknown_users_and_strangers(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let own = format!("/api/users/{}/block", alice.id);
    let unknown = format!("/api/users/{}/block", Uuid::new_v4());
    for method in [Method::POST, Method::DELETE] {
        let (status, body) = app
            .request(method.clone(), &own, Some(&alice.token), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} own: {body}");
        assert_eq!(body["error"]["code"], "invalid_input");
        let (status, body) = app
            .request(method.clone(), &unknown, Some(&alice.token), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} unknown: {body}");
        assert_eq!(body["error"]["code"], "not_found");
        let (status, _) = app
            .request(
                method.clone(),
                "/api/users/not-a-uuid/block",
                Some(&alice.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} not an id");
        let (status, body) = app.request(method.clone(), &own, None, None).await;
        assert_eq!(
            (status, body),
            (StatusCode::UNAUTHORIZED, Value::Null),
            "{method} without a token"
        );
    }
    let (status, _) = app.request(Method::GET, "/api/blocks", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/api/blocks", &alice.token).await.1, json!([]));
}

async fn blocking_and_unblocking_are_writes_within_the_write_budget(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("WRITE_RATE_PER_USER_PER_MINUTE", "2")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    block(&app, &alice, &bob).await;
    unblock(&app, &alice, &bob).await;
    let path = format!("/api/users/{}/block", bob.id);
    let response = app
        .http
        .post(app.url(&path))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    // Refused, it changed nothing; reading the list is not a write.
    assert_eq!(app.get("/api/blocks", &alice.token).await.1, json!([]));
    block(&app, &bob, &alice).await; // bob's budget is his own
}

async fn a_blocked_users_message_is_acked_as_usual_and_never_reaches_the_blocker(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let (mut a, mut b, mut c) = (
        app.ws(&alice).await,
        app.ws(&bob).await,
        app.ws(&carol).await,
    );
    let conversation = app.conversation(&alice, &bob).await;
    // Accepted: a request from a user one blocks is not even listed.
    let accept = format!("/api/conversations/{}/accept", id_of(&conversation));
    assert_eq!(
        app.post(&accept, &bob.token, json!({})).await.0,
        StatusCode::OK
    );
    block(&app, &bob, &alice).await;

    // What alice is told about her message to bob looks like what she is told about one to
    // carol, who does not block her.
    let to_carol = send(&mut a, &carol).await;
    c.expect("message").await;
    let to_bob = send(&mut a, &bob).await;
    assert_eq!(keys(&to_bob), keys(&to_carol), "{to_bob} {to_carol}");
    assert_eq!(to_bob["conversationId"], conversation["id"]);
    assert!(to_bob["seq"].as_i64().is_some(), "{to_bob}");
    let withheld = id_of(&to_bob).to_owned();
    // A retry is answered the same, and creates nothing.
    a.send(
        "message",
        json!({"recipientId": bob.id, "messageType": "text", "id": withheld}),
    )
    .await;
    let retry = a.expect("message_ack").await;
    assert_eq!(
        (&retry["id"], &retry["seq"]),
        (&to_bob["id"], &to_bob["seq"])
    );

    // Bob's socket never gets it: carol's later message is the next one he sees.
    let from_carol = id_of(&send(&mut c, &bob).await).to_owned();
    assert_eq!(next_message(&mut b).await, from_carol);
    b.expect_quiet().await;

    // Alice's history keeps it; bob's does not show it, and he has nothing unread.
    assert_eq!(history(&app, &alice, &bob).await, [withheld.as_str()]);
    assert_eq!(history(&app, &bob, &alice).await, Vec::<String>::new());
    let (_, list) = app.get("/api/conversations", &bob.token).await;
    let entry = (list.as_array().expect("array").iter())
        .find(|c| c["participant_id"] == alice.id.as_str())
        .expect("the conversation is listed")
        .clone();
    assert_eq!(entry["unread_count"], 0, "{entry}");

    // Her content upload works as usual; bob can neither fetch it nor mark the message read.
    let content = format!("/api/messages/{withheld}/content");
    let blob = json!({"message_id": withheld, "content_data": "q83vEjRWeJA=", "content_hash": null, "expires_at": null});
    assert_eq!(
        app.post(&content, &alice.token, blob).await.0,
        StatusCode::CREATED
    );
    assert_eq!(app.get(&content, &bob.token).await.0, StatusCode::NOT_FOUND);
    assert_eq!(app.get(&content, &alice.token).await.0, StatusCode::OK);
    let read = format!("/api/messages/{withheld}/read");
    let (status, body) = app.post(&read, &bob.token, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    b.send("read_receipt", json!({"messageId": withheld})).await;
    assert_eq!(b.expect("error").await["code"], "not_found");
    // No delivery or read receipt ever reaches alice; her copy stays `sent`.
    for frame in a.queued_frames().await {
        assert_ne!(frame["payload"]["messageId"], withheld.as_str(), "{frame}");
    }
    let (_, page) = app
        .get(
            &format!("/api/conversations/{}/messages", id_of(&conversation)),
            &alice.token,
        )
        .await;
    assert_eq!(page[0]["status"], "sent", "{page}");

    // One way only: bob can still write to alice.
    let from_bob = id_of(&send(&mut b, &alice).await).to_owned();
    assert_eq!(next_message(&mut a).await, from_bob);
}

async fn a_blocked_users_messages_wait_in_no_catch_up(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    block(&app, &bob, &alice).await;
    let (mut a, mut c) = (app.ws(&alice).await, app.ws(&carol).await);
    // Bob is offline: alice's messages, then carol's.
    for _ in 0..3 {
        send(&mut a, &bob).await;
    }
    let from_carol = id_of(&send(&mut c, &bob).await).to_owned();

    // His connect catches up on carol's message alone...
    let mut b = app.ws(&bob).await;
    let frame = b.expect("message").await;
    assert_eq!(
        (id_of(&frame), &frame["cursor"]),
        (from_carol.as_str(), &json!(1))
    );
    b.expect_quiet().await;
    // ...and so does a replay of his whole inbox.
    b.send("sync", json!({"since": 0})).await;
    assert_eq!(next_message(&mut b).await, from_carol);
    b.expect_quiet().await;
    // And on another socket, too.
    b.close().await;
    let mut b = app.ws(&bob).await;
    b.send("sync", json!({"since": 0})).await;
    assert_eq!(next_message(&mut b).await, from_carol);
    b.expect_quiet().await;
}

async fn messages_flow_again_after_unblocking_and_the_withheld_stay_withheld(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mut a = app.ws(&alice).await;
    let mut b = app.ws(&bob).await;
    let before = id_of(&send(&mut a, &bob).await).to_owned();
    assert_eq!(next_message(&mut b).await, before);

    block(&app, &bob, &alice).await;
    let during = id_of(&send(&mut a, &bob).await).to_owned();
    unblock(&app, &bob, &alice).await;
    let after = id_of(&send(&mut a, &bob).await).to_owned();
    assert_eq!(
        next_message(&mut b).await,
        after,
        "the withheld one never comes"
    );
    b.expect_quiet().await;
    // A retry of the withheld message after the unblock is still a retry: not delivered.
    a.send(
        "message",
        json!({"recipientId": bob.id, "messageType": "text", "id": during}),
    )
    .await;
    assert_eq!(a.expect("message_ack").await["id"], during.as_str());
    b.expect_quiet().await;

    assert_eq!(
        history(&app, &bob, &alice).await,
        [after.clone(), before.clone()]
    );
    assert_eq!(
        history(&app, &alice, &bob).await,
        [after.clone(), during.clone(), before.clone()]
    );
    b.close().await;
    let mut b = app.ws(&bob).await;
    b.send("sync", json!({"since": 0})).await;
    assert_eq!(next_message(&mut b).await, before);
    assert_eq!(next_message(&mut b).await, after);
    b.expect_quiet().await;
}

fn envelope(device: i64) -> Value {
    json!({"deviceId": device, "type": 3, "content": "AQIDBA=="})
}

async fn envelopes_to_a_blocker_are_checked_and_acked_as_usual_and_never_queued(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    for device in [1, 2] {
        link_device(&app, &bob, device).await;
    }
    block(&app, &bob, &alice).await;
    let mut a = device_socket(&app, &alice, 1).await;
    a.expect("queue_empty").await;

    // The device list is checked as ever: a missing device is still refused.
    let id = Uuid::now_v7();
    a.send(
        "message",
        json!({"recipientId": bob.id, "messageType": "signal", "id": id, "envelopes": [envelope(1)]}),
    )
    .await;
    assert_eq!(a.expect("error").await["code"], "mismatched_devices");
    let (status, body) = app
        .request(
            Method::PUT,
            &format!("/api/messages/{}", bob.id),
            Some(&alice.token),
            Some(json!({"messageType": "signal", "envelopes": [envelope(2)]})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["missing_devices"], json!([1]), "{body}");

    // A complete one is acknowledged on both doors, as usual.
    a.send(
        "message",
        json!({"recipientId": bob.id, "messageType": "signal", "id": id, "envelopes": [envelope(1), envelope(2)]}),
    )
    .await;
    let ack = a.expect("message_ack").await;
    assert_eq!(ack["id"], id.to_string());
    assert!(ack["conversationId"].is_string(), "{ack}");
    let (status, sent) = app
        .request(
            Method::PUT,
            &format!("/api/messages/{}", bob.id),
            Some(&alice.token),
            Some(json!({"messageType": "signal", "envelopes": [envelope(1), envelope(2)]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    assert_eq!(sent["conversation_id"], ack["conversationId"]);

    // Neither of bob's devices has anything waiting.
    for device in [1, 2] {
        let mut socket = device_socket(&app, &bob, device).await;
        socket.expect("queue_empty").await;
        socket.expect_silent().await;
    }
    // Once unblocked, her next envelope reaches him.
    unblock(&app, &bob, &alice).await;
    let next = Uuid::now_v7();
    a.send(
        "message",
        json!({"recipientId": bob.id, "messageType": "signal", "id": next, "envelopes": [envelope(1), envelope(2)]}),
    )
    .await;
    a.expect("message_ack").await;
    let mut phone = device_socket(&app, &bob, 1).await;
    let frame = phone.expect("message").await;
    assert_eq!(frame["id"], next.to_string(), "{frame}");
    assert_eq!(
        frame["envelope"]["cursor"], 1,
        "nothing was queued before: {frame}"
    );
    phone.expect("queue_empty").await;
}

async fn a_blocked_callers_call_never_rings_and_ends_missed_for_the_caller_alone(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("CALL_RING_TIMEOUT", "2")]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let (mut a, mut b, mut c) = (
        app.ws(&alice).await,
        app.ws(&bob).await,
        app.ws(&carol).await,
    );
    block(&app, &bob, &alice).await;

    // Alice's call looks like any call that rings.
    let call = app_call(&app, &alice, &mut a, &bob, "9001").await;
    assert_eq!(call["status"], "ringing");
    let server_id = call["call_id"].as_str().expect("call_id").to_owned();
    // Bob is not in it: he cannot answer it by either of its ids, and may call someone else
    // meanwhile (a call that booked him would make this a 409).
    for id in [server_id.as_str(), "9001"] {
        b.send("call_response", json!({"callId": id, "response": "accept"}))
            .await;
        assert_eq!(b.expect("error").await["code"], "not_found");
    }
    let his = app_call(&app, &bob, &mut b, &carol, "9002").await;
    let ring = c.expect("call_request_full").await;
    assert_eq!(ring["callId"], his["call_id"]);
    b.send(
        "call_response",
        json!({"callId": "9002", "response": "end"}),
    )
    .await;

    // Unanswered, it is missed after the timeout, and alice is told, as for any call.
    let missed = a.expect_within("call_response_full", WAIT * 2).await;
    assert_eq!(
        (
            missed["callId"].as_str(),
            missed["response"].as_str(),
            missed["status"].as_str()
        ),
        (Some("9001"), Some("end"), Some("missed"))
    );
    let (_, history) = app.get("/api/calls/history", &alice.token).await;
    assert_eq!(
        (history[0]["status"].as_str(), history[0]["type"].as_str()),
        (Some("missed"), Some("outgoing")),
        "{history}"
    );
    // Bob's history has his own call only.
    let (_, history) = app.get("/api/calls/history", &bob.token).await;
    let callers: Vec<&str> = (history.as_array().expect("array").iter())
        .map(|c| c["caller_id"].as_str().expect("caller_id"))
        .collect();
    assert_eq!(callers, [bob.id.as_str()], "{history}");

    // A socket-only call of hers is withheld too.
    a.send(
        "call_request",
        json!({"recipientId": bob.id, "callType": "audio", "callId": "9004"}),
    )
    .await;
    a.expect_quiet().await;
    let missed = a.expect_within("call_response_full", WAIT * 2).await;
    assert_eq!(missed["callId"], "9004");

    // Nothing of alice's calls ever reached bob (no ring, no end): carol's call is the first
    // call frame about anyone else's call that he sees.
    c.send(
        "call_request",
        json!({"recipientId": bob.id, "callType": "video", "callId": "9003"}),
    )
    .await;
    let next = loop {
        let frame = b.recv().await;
        let payload = &frame["payload"];
        assert_ne!(payload["callerId"], alice.id.as_str(), "{frame}");
        for id in [server_id.as_str(), "9001", "9004"] {
            assert_ne!(payload["callId"], id, "{frame}");
        }
        if frame["type"] == "call_request_full" {
            break frame;
        }
    };
    assert_eq!(next["payload"]["callId"], "9003", "{next}");
    assert_eq!(next["payload"]["callerId"], carol.id.as_str());
}

/// The member counts `user` is told for these channels, in their order (0: not listed).
async fn listed_counts(app: &TestApp, user: &TestUser, channels: &[&Value]) -> Vec<i64> {
    let (status, list) = app.get("/api/channels", &user.token).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let list = list.as_array().expect("array");
    (channels.iter())
        .map(|channel| {
            (list.iter())
                .find(|listed| listed["id"] == channel["id"])
                .map_or(0, |listed| listed["member_count"].as_i64().expect("count"))
        })
        .collect()
}

/// Adds `user` to `channel` as its creator; the answer must be a success.
async fn add_to(app: &TestApp, creator: &TestUser, channel: &Value, user: &TestUser) -> Value {
    let path = format!("/api/channels/{}/members", id_of(channel));
    let (status, answer) = app
        .post(&path, &creator.token, json!({"user_id": user.id}))
        .await;
    assert_eq!(status, StatusCode::OK, "the usual success: {answer}");
    answer
}

/// Alice adds bob, who blocks her, to `club`, and dave, who does not, to `control`: everything
/// she is told (the answers, again on a repeated add, her list of channels, her posts) is the
/// same for both. Bob is in no channel for it: not listed, no access, no posts. Carol, another
/// member, is told the members there really are. Unblocking changes none of it; an add after
/// the unblock, or bob joining a public channel, makes him a member.
async fn a_channel_invitation_from_a_blocked_user_adds_nobody(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let dave = app.register("dave").await;
    block(&app, &bob, &alice).await;
    let mut b = app.ws(&bob).await;
    let club = create_channel(&app, &alice, "club", true).await;
    let control = create_channel(&app, &alice, "control", true).await;

    for (channel, invitee) in [(&club, &bob), (&control, &dave)] {
        for _ in 0..2 {
            let answer = add_to(&app, &alice, channel, invitee).await;
            assert_eq!(answer["id"], channel["id"]);
            assert_eq!(keys(&answer), keys(channel), "{answer}");
            assert_eq!(answer["member_count"], 2, "{answer}");
        }
        let answer = add_to(&app, &alice, channel, &carol).await;
        assert_eq!(answer["member_count"], 3, "{answer}");
        let (status, post) = post_message(&app, &alice, id_of(channel)).await;
        assert_eq!(status, StatusCode::CREATED, "{post}");
    }
    assert_eq!(
        listed_counts(&app, &alice, &[&club, &control]).await,
        [3, 3]
    );
    assert_eq!(
        listed_counts(&app, &carol, &[&club, &control]).await,
        [2, 3],
        "other members are told the real count"
    );

    // Bob is a stranger to the club, and nothing of it reaches him: alice's post in a public
    // channel he joined, after hers in the club, is the first channel post he gets. She had
    // invited him there too; joining makes him the member she counted.
    a_stranger_to(&app, &bob, &club).await;
    let lobby = create_channel(&app, &alice, "lobby", false).await;
    assert_eq!(add_to(&app, &alice, &lobby, &bob).await["member_count"], 2);
    assert_eq!(listed_counts(&app, &bob, &[&lobby]).await, [0]);
    let join = format!("/api/channels/{}/join", id_of(&lobby));
    let (status, joined) = app.post(&join, &bob.token, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["member_count"], 2, "{joined}");
    assert_eq!(listed_counts(&app, &alice, &[&lobby]).await, [2]);
    assert_eq!(
        post_message(&app, &alice, id_of(&club)).await.0,
        StatusCode::CREATED
    );
    let (_, in_lobby) = post_message(&app, &alice, id_of(&lobby)).await;
    assert_eq!(b.expect("channel_message").await["id"], in_lobby["id"]);

    // Unblocking changes nothing (as for withheld messages); adding him again does.
    unblock(&app, &bob, &alice).await;
    a_stranger_to(&app, &bob, &club).await;
    assert_eq!(listed_counts(&app, &alice, &[&club]).await, [3]);
    assert_eq!(add_to(&app, &alice, &club, &bob).await["member_count"], 3);
    for user in [&alice, &bob, &carol] {
        assert_eq!(listed_counts(&app, user, &[&club]).await, [3]);
    }
    let (status, _) = app.get(&messages_of(&club), &bob.token).await;
    assert_eq!(status, StatusCode::OK);
}

/// The path of `channel`'s messages.
fn messages_of(channel: &Value) -> String {
    format!("/api/channels/{}/messages", id_of(channel))
}

/// `user` is not in the private `channel`: not listed, and it answers them as no channel.
async fn a_stranger_to(app: &TestApp, user: &TestUser, channel: &Value) {
    assert_eq!(listed_counts(app, user, &[channel]).await, [0]);
    let (status, _) = app.get(&messages_of(channel), &user.token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        post_message(app, user, id_of(channel)).await.0,
        StatusCode::NOT_FOUND
    );
    let leave = format!("/api/channels/{}/leave", id_of(channel));
    assert_eq!(
        app.post(&leave, &user.token, json!({})).await.0,
        StatusCode::NOT_FOUND
    );
}

/// After a restart (nothing remembered, the block read from the database) bob still hears
/// nothing from alice: no message, no ring, no envelope; carol's reach him.
async fn blocks_survive_a_restart(engine: Engine) {
    let mut app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    link_device(&app, &bob, 1).await;
    let blocked = block(&app, &bob, &alice).await;
    app.restart().await;

    let (_, list) = app.get("/api/blocks", &bob.token).await;
    assert_eq!(list[0]["user_id"], alice.id.as_str(), "{list}");
    assert_eq!(list[0]["blocked_at"], blocked["blocked_at"]);
    let (mut a, mut b, mut c) = (
        app.ws(&alice).await,
        app.ws(&bob).await,
        app.ws(&carol).await,
    );
    send(&mut a, &bob).await;
    let from_carol = id_of(&send(&mut c, &bob).await).to_owned();
    assert_eq!(next_message(&mut b).await, from_carol);
    b.expect_quiet().await;

    // Her call rings nobody and books nobody: carol's, made after it, is the first he sees.
    let call = json!({"recipient_id": bob.id, "call_type": "audio"});
    let (status, hers) = app.post("/api/calls", &alice.token, call).await;
    assert_eq!(
        (status, &hers["status"]),
        (StatusCode::CREATED, &json!("ringing"))
    );
    let call = json!({"recipient_id": bob.id, "call_type": "video"});
    let (status, carols) = app.post("/api/calls", &carol.token, call).await;
    assert_eq!(status, StatusCode::CREATED, "bob is not busy: {carols}");
    let ring = b.expect("call_request_full").await;
    assert_eq!(ring["callerId"], carol.id.as_str(), "{ring}");
    b.close().await;

    // Her envelope is acked and never queued: carol's is the first on bob's device.
    let envelopes = json!({"messageType": "signal", "envelopes": [envelope(1)]});
    for sender in [&alice, &carol] {
        let path = format!("/api/messages/{}", bob.id);
        let (status, sent) = app
            .request(
                Method::PUT,
                &path,
                Some(&sender.token),
                Some(envelopes.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{sent}");
    }
    let mut phone = device_socket(&app, &bob, 1).await;
    let first = phone.expect("message").await;
    assert_eq!(first["senderId"], carol.id.as_str(), "{first}");
    assert_eq!(first["envelope"]["cursor"], 1, "{first}");
    phone.expect("queue_empty").await;
}

// --- two nodes: PostgreSQL and Redis ------------------------------------------------------------

/// Two nodes on one PostgreSQL and one Redis, both with `settings` too (`b` drops first), or
/// `None` without PostgreSQL.
async fn cluster(settings: &[(&str, &str)]) -> Option<(TestApp, TestApp)> {
    if !Engine::Postgres.available() {
        eprintln!("TEST_DATABASE_URL is not set: blocks cluster test (PostgreSQL only) not run");
        return None;
    }
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("kt-{}", Uuid::new_v4().simple());
    let mut all = vec![
        ("REDIS_URL", redis.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
        ("PRESENCE_TTL", "2"),
    ];
    all.extend_from_slice(settings);
    let a = TestApp::spawn_with(Engine::Postgres, &all).await;
    let b = a.spawn_node(&[]).await;
    for node in [&a, &b] {
        let deadline = tokio::time::Instant::now() + WAIT * 3;
        loop {
            let health: Value = match reqwest::get(node.url("/health")).await {
                Ok(response) => response.json().await.unwrap_or_default(),
                Err(_) => Value::Null,
            };
            if health["redis"]["status"] == "ok" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the node did not reach Redis"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    Some((b, a))
}

/// `user`'s socket on `node`, once the node routes to it (it answers frames only then).
async fn ready_socket(node: &TestApp, user: &TestUser) -> WsClient {
    let mut ws = node.ws(user).await;
    ws.expect_quiet().await;
    ws
}

/// Node B remembered that bob blocks nobody (it routed alice's message to him); bob then
/// blocks her through node A: node B forgets, and her next message, sent through it, is
/// withheld.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_block_made_on_one_node_withholds_on_the_other() {
    let Some((b, a)) = cluster(&[]).await else {
        return;
    };
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let carol = a.register("carol").await;
    let mut bob_ws = ready_socket(&a, &bob).await;
    let mut alice_ws = ready_socket(&b, &alice).await;
    let mut carol_ws = ready_socket(&b, &carol).await;
    let before = id_of(&send(&mut alice_ws, &bob).await).to_owned();
    assert_eq!(next_message(&mut bob_ws).await, before);

    block(&a, &bob, &alice).await;
    // Bob writes to her through node A after the block: node A's publisher sends the block's
    // notice on the control channel ahead of this message, so once she has it, node B has
    // forgotten what it remembered.
    let from_bob = id_of(&send(&mut bob_ws, &alice).await).to_owned();
    assert_eq!(next_message(&mut alice_ws).await, from_bob);

    let withheld = send(&mut alice_ws, &bob).await;
    assert!(
        withheld["seq"].as_i64().is_some(),
        "acked as usual: {withheld}"
    );
    let from_carol = id_of(&send(&mut carol_ws, &bob).await).to_owned();
    assert_eq!(next_message(&mut bob_ws).await, from_carol);
    bob_ws.expect_quiet().await;
    assert_eq!(
        history(&a, &bob, &alice).await,
        [from_bob.clone(), before.clone()]
    );
    assert_eq!(history(&b, &bob, &alice).await, [from_bob, before]);

    // Unblocked through node A, her messages through node B flow again.
    unblock(&a, &bob, &alice).await;
    let ping = id_of(&send(&mut bob_ws, &alice).await).to_owned();
    assert_eq!(next_message(&mut alice_ws).await, ping);
    let after = id_of(&send(&mut alice_ws, &bob).await).to_owned();
    assert_eq!(next_message(&mut bob_ws).await, after);
}

/// A `call_request` frame from `ws` to `to` with the app's call id `id`.
async fn call(ws: &mut WsClient, to: &TestUser, id: &str) {
    ws.send(
        "call_request",
        json!({"recipientId": to.id, "callType": "audio", "callId": id}),
    )
    .await;
}

/// Node A remembered that bob blocks nobody (it rang him for alice's first call); bob then
/// blocks her through node B, where his socket is: her next call, made through node A, never
/// rings there, books nobody (carol's call through node A rings him) and ends `missed` for
/// her. Unblocked through node B, her calls ring again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_block_made_on_one_node_keeps_calls_on_the_other_from_ringing() {
    let Some((b, a)) = cluster(&[("CALL_RING_TIMEOUT", "2")]).await else {
        return;
    };
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let carol = a.register("carol").await;
    let mut alice_ws = ready_socket(&a, &alice).await;
    let mut carol_ws = ready_socket(&a, &carol).await;
    let mut bob_ws = ready_socket(&b, &bob).await;
    let answer = async |ws: &mut WsClient, id: &str, response: &str| {
        ws.send("call_response", json!({"callId": id, "response": response}))
            .await;
    };

    call(&mut alice_ws, &bob, "before").await;
    assert_eq!(bob_ws.expect("call_request_full").await["callId"], "before");
    answer(&mut bob_ws, "before", "reject").await;
    let rejected = alice_ws.expect("call_response_full").await;
    assert_eq!(rejected["response"], "reject", "{rejected}");

    block(&b, &bob, &alice).await;
    // Node B's publisher sends the block's notice on the control channel ahead of this
    // message: once alice has it, node A has forgotten what it remembered.
    let from_bob = id_of(&send(&mut bob_ws, &alice).await).to_owned();
    assert_eq!(next_message(&mut alice_ws).await, from_bob);

    call(&mut alice_ws, &bob, "during").await;
    alice_ws.expect_quiet().await;
    call(&mut carol_ws, &bob, "carols").await;
    let ring = bob_ws.expect("call_request_full").await;
    assert_eq!(
        (&ring["callId"], &ring["callerId"]),
        (&json!("carols"), &json!(carol.id)),
        "alice's call rang on node B: {ring}"
    );
    answer(&mut bob_ws, "carols", "end").await;
    carol_ws.expect("call_response_full").await;
    let missed = alice_ws.expect_within("call_response_full", WAIT * 2).await;
    assert_eq!(
        (&missed["callId"], &missed["status"]),
        (&json!("during"), &json!("missed")),
        "{missed}"
    );

    unblock(&b, &bob, &alice).await;
    let from_bob = id_of(&send(&mut bob_ws, &alice).await).to_owned();
    assert_eq!(next_message(&mut alice_ws).await, from_bob);
    call(&mut alice_ws, &bob, "after").await;
    let ring = bob_ws.expect("call_request_full").await;
    assert_eq!(ring["callId"], "after", "{ring}");
}

/// Contacts who block each other (either way) stop seeing each other's presence, typing,
/// stories and identity changes; unblocking brings them back.
async fn a_block_stops_presence_typing_stories_and_identity_changes_both_ways(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let conversation = app.conversation(&alice, &bob).await;
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;
    send(&mut bob_ws, &alice).await; // an accepted conversation
    let alice_story = post_story(&app, &alice).await;
    let bob_story = post_story(&app, &bob).await;
    block(&app, &alice, &bob).await;

    let typing = |on: bool| json!({"conversationId": conversation["id"], "isTyping": on});
    for (viewer, subject, story) in [(&alice, &bob, &bob_story), (&bob, &alice, &alice_story)] {
        let path = format!("/api/presence/{}", subject.id);
        assert_eq!(app.get(&path, &viewer.token).await.0, StatusCode::NOT_FOUND);
        assert!(!story_ids(&app, viewer).await.contains(story));
        let (_, list) = app.get("/api/conversations", &viewer.token).await;
        assert_eq!(list[0]["participant_status"], "offline", "{list}");
    }
    for (ws, status) in [(&mut alice_ws, "busy"), (&mut bob_ws, "away")] {
        ws.send("typing_indicator", typing(true)).await;
        ws.send("presence_update", json!({"status": status})).await;
    }
    // Identity changes: Bob's new key is not announced to Alice, nor hers to him.
    for (user, byte) in [(&bob, 0xB1), (&bob, 0xB2), (&alice, 0xA1), (&alice, 0xA2)] {
        let body = crate::keys::full_upload(1, byte, 1..=2);
        let (status, answer) = app
            .request(Method::PUT, "/api/keys", Some(&user.token), Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    for ws in [&mut alice_ws, &mut bob_ws] {
        for frame in ws.queued_frames().await {
            assert_ne!(frame["type"], "identity_changed", "{frame}");
        }
    }

    // Lifted: the first typing and presence frames each gets about the other are the new ones.
    unblock(&app, &alice, &bob).await;
    for (ws, status) in [(&mut alice_ws, "online"), (&mut bob_ws, "online")] {
        ws.send("typing_indicator", typing(false)).await;
        ws.send("presence_update", json!({"status": status})).await;
    }
    for (ws, other) in [(&mut alice_ws, &bob), (&mut bob_ws, &alice)] {
        let typed = ws.next_about("typing_indicator", &other.id).await;
        assert_eq!(typed["isTyping"], false, "typing across the block leaked");
    }
    for (ws, other) in [(&mut alice_ws, &bob), (&mut bob_ws, &alice)] {
        let presence = ws.next_about("presence_update", &other.id).await;
        assert_eq!(
            presence["status"], "online",
            "presence across the block leaked"
        );
    }
    assert!(story_ids(&app, &alice).await.contains(&bob_story));
}

/// The blocker's search and find-by-email leave the blocked user out, under every directory
/// policy; the blocked user still finds the blocker (leaving them out would reveal the block),
/// by search without their email. A conversation the blocked user opens is not listed for the
/// blocker.
async fn the_blocker_no_longer_finds_the_blocked_user_nor_their_request(engine: Engine) {
    for policy in ["open", "search", "contacts"] {
        let app = TestApp::spawn_with(engine, &[("USER_DIRECTORY", policy)]).await;
        let alice = app.register("alice_blocker").await;
        let bob = app.register("bob_blocked").await;
        app.conversation(&alice, &bob).await;
        let found = async |viewer: &TestUser, q: &str| {
            let (status, list) = app
                .get(&format!("/api/users/search?q={q}"), &viewer.token)
                .await;
            assert_eq!(status, StatusCode::OK, "{policy}: {list}");
            list.as_array().expect("array").clone()
        };
        let by_email = async |viewer: &TestUser, email: &str| {
            let path = format!(
                "/api/users/find-by-email?email={}",
                email.replace('@', "%40")
            );
            app.get(&path, &viewer.token).await
        };
        assert_eq!(found(&alice, "bob_bl").await.len(), 1, "{policy}");
        assert_eq!(by_email(&alice, &bob.email).await.0, StatusCode::OK);
        block(&app, &alice, &bob).await;
        assert!(found(&alice, "bob_bl").await.is_empty(), "{policy}");
        assert_eq!(
            by_email(&alice, &bob.email).await,
            by_email(&alice, "nobody@example.com").await,
            "{policy}: answered as an unknown address"
        );
        let blocker = found(&bob, "alice_bl").await;
        assert_eq!(blocker.len(), 1, "{policy}");
        assert_eq!(blocker[0]["email"], "", "{policy}");
        let (status, blocker) = by_email(&bob, &alice.email).await;
        assert_eq!(status, StatusCode::OK, "{policy}: {blocker}");
        assert_eq!(blocker["email"], alice.email.as_str(), "{policy}");
        unblock(&app, &alice, &bob).await;
        assert_eq!(found(&alice, "bob_bl").await.len(), 1, "{policy}");
        assert_eq!(by_email(&alice, &bob.email).await.0, StatusCode::OK);
    }

    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    block(&app, &alice, &bob).await;
    let mut bob_ws = app.ws(&bob).await;
    send(&mut bob_ws, &alice).await;
    let (_, list) = app.get("/api/conversations", &alice.token).await;
    assert_eq!(list, json!([]), "a blocked user's request is not listed");
    let (_, list) = app.get("/api/conversations", &bob.token).await;
    assert_eq!(
        list.as_array().expect("present").len(),
        1,
        "the sender sees their conversation"
    );
}

/// A reply the requester does not get (they block its sender) does not accept their request.
async fn a_withheld_reply_does_not_accept_a_request(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    app.conversation(&alice, &bob).await;
    block(&app, &alice, &bob).await;
    let mut bob_ws = app.ws(&bob).await;
    send(&mut bob_ws, &alice).await;
    let (_, list) = app.get("/api/conversations", &alice.token).await;
    assert_eq!(list[0]["status"], "request", "{list}");
}
