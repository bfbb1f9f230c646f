//! Channels over REST and WebSocket: the app's shape, membership, fan-out, history, paging and
//! who may do what (unknown channel → 404, existing one you may not use → 403).

use crate::common::{Engine, TestApp, TestUser};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

scenarios!(
    a_created_channel_has_the_app_shape_and_is_listed_for_its_creator,
    bad_channels_are_rejected_with_400,
    anyone_may_join_a_public_channel_and_members_may_leave,
    private_channels_are_entered_only_when_the_creator_adds_you,
    a_third_user_can_use_no_channel_they_are_not_in,
    unknown_channels_are_404_everywhere,
    a_post_reaches_online_members_except_the_sender_in_both_key_styles,
    a_retried_message_id_is_stored_once_and_cannot_be_taken_by_another_sender,
    a_channel_message_frame_is_acked_fanned_out_and_refused_to_non_members,
    history_is_newest_first_and_pages_with_limit_and_before,
    the_channel_list_pages_and_shows_the_last_message_time,
);

pub async fn create_channel(app: &TestApp, user: &TestUser, name: &str, private: bool) -> Value {
    let (status, channel) = app
        .post(
            "/api/channels",
            &user.token,
            json!({"name": name, "description": null, "avatar_url": null, "is_private": private}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{channel}");
    channel
}

fn id(value: &Value) -> &str {
    value["id"].as_str().expect("id")
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array().expect("array").iter().map(id).collect()
}

pub async fn post_message(app: &TestApp, user: &TestUser, channel: &str) -> (StatusCode, Value) {
    app.post(
        &format!("/api/channels/{channel}/messages"),
        &user.token,
        json!({"message_type": "text"}),
    )
    .await
}

async fn a_created_channel_has_the_app_shape_and_is_listed_for_its_creator(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let (status, channel) = app
        .post(
            "/api/channels",
            &alice.token,
            json!({"name": "  Rustaceans ", "description": "crabs", "avatar_url": "https://cdn.example.com/c.png", "is_private": false}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{channel}");
    for key in [
        "id",
        "name",
        "description",
        "creator_id",
        "creator_name",
        "avatar_url",
        "is_private",
        "member_count",
        "last_message_time",
        "created_at",
    ] {
        assert!(channel.get(key).is_some(), "missing {key}: {channel}");
    }
    assert_eq!(channel["name"], "Rustaceans");
    assert_eq!(channel["description"], "crabs");
    assert_eq!(channel["creator_id"], alice.id);
    assert_eq!(
        channel["creator_name"], "alice",
        "falls back to the username"
    );
    assert_eq!(channel["avatar_url"], "https://cdn.example.com/c.png");
    assert_eq!(channel["is_private"], false);
    assert_eq!(channel["member_count"], 1);
    assert!(channel["last_message_time"].is_null());
    assert!(
        channel["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    // `is_private` may be left out: public.
    let (status, minimal) = app
        .post("/api/channels", &alice.token, json!({"name": "minimal"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(minimal["is_private"], false);
    assert!(minimal["description"].is_null() && minimal["avatar_url"].is_null());

    let (status, list) = app.get("/api/channels", &alice.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([minimal, channel]), "newest first, same shape");
}

async fn bad_channels_are_rejected_with_400(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    for body in [
        json!({"name": "", "is_private": false}),
        json!({"name": "   ", "is_private": false}),
        json!({"name": "x".repeat(101), "is_private": false}),
        json!({"is_private": false}),
        json!({"name": null}),
        json!({"name": "ok", "is_private": "yes"}),
        json!({"name": "ok", "avatar_url": "ftp://example.com/a.png"}),
        json!({"name": "ok", "avatar_url": "javascript:alert(1)"}),
        json!({"name": "ok", "description": "d".repeat(1001)}),
    ] {
        let (status, error) = app.post("/api/channels", &alice.token, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert!(error["error"]["code"].is_string());
    }
    let (_, list) = app.get("/api/channels", &alice.token).await;
    assert_eq!(list, json!([]));
}

async fn anyone_may_join_a_public_channel_and_members_may_leave(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let channel = create_channel(&app, &alice, "public", false).await;
    let cid = id(&channel);
    for _ in 0..2 {
        let (status, joined) = app
            .request(
                Method::POST,
                &format!("/api/channels/{cid}/join"),
                Some(&bob.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "joining is idempotent: {joined}");
        assert_eq!(joined["member_count"], 2);
    }
    let (_, list) = app.get("/api/channels", &bob.token).await;
    assert_eq!(ids(&list), [cid]);
    let (status, _) = app
        .get(&format!("/api/channels/{cid}/messages"), &bob.token)
        .await;
    assert_eq!(status, StatusCode::OK);

    let leave = format!("/api/channels/{cid}/leave");
    let (status, left) = app.post(&leave, &bob.token, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(left["member_count"], 1);
    let (_, list) = app.get("/api/channels", &bob.token).await;
    assert_eq!(list, json!([]));
    let (status, _) = app
        .get(&format!("/api/channels/{cid}/messages"), &bob.token)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no longer a member");
    let (status, _) = app.post(&leave, &bob.token, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "cannot leave twice");
}

async fn private_channels_are_entered_only_when_the_creator_adds_you(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let channel = create_channel(&app, &alice, "secret", true).await;
    assert_eq!(channel["is_private"], true);
    let cid = id(&channel);
    let (status, body) = app
        .post(&format!("/api/channels/{cid}/join"), &bob.token, json!({}))
        .await;
    // Outsiders learn nothing of a private channel: the same answer as for no channel.
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found");

    let members = format!("/api/channels/{cid}/members");
    let (status, added) = app
        .post(&members, &alice.token, json!({"user_id": bob.id}))
        .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(added["member_count"], 2);
    let (_, list) = app.get("/api/channels", &bob.token).await;
    assert_eq!(ids(&list), [cid]);
    let (status, _) = post_message(&app, &bob, cid).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = app
        .post(&format!("/api/channels/{cid}/join"), &bob.token, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "a member's join is a no-op");

    // Only the creator adds members; an unknown user is a 404.
    let (status, _) = app
        .post(&members, &bob.token, json!({"user_id": carol.id}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .post(
            &members,
            &alice.token,
            json!({"user_id": Uuid::new_v4().to_string()}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = app.get("/api/channels", &carol.token).await;
    assert_eq!(list, json!([]));
}

/// A public channel answers 403 to a non-member (it is open to anyone who joins); a private one
/// answers 404, as if it did not exist.
async fn a_third_user_can_use_no_channel_they_are_not_in(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let mallory = app.register("mallory").await;
    let private = create_channel(&app, &alice, "private", true).await;
    let public = create_channel(&app, &alice, "public", false).await;
    let (status, _) = post_message(&app, &alice, id(&private)).await;
    assert_eq!(status, StatusCode::CREATED);

    for (channel, refused) in [
        (&private, StatusCode::NOT_FOUND),
        (&public, StatusCode::FORBIDDEN),
    ] {
        let cid = id(channel);
        let (status, body) = app
            .get(&format!("/api/channels/{cid}/messages"), &mallory.token)
            .await;
        assert_eq!(status, refused, "{body}");
        let (status, _) = post_message(&app, &mallory, cid).await;
        assert_eq!(status, refused);
        let (status, _) = app
            .post(
                &format!("/api/channels/{cid}/leave"),
                &mallory.token,
                json!({}),
            )
            .await;
        assert_eq!(status, refused);
        let (status, _) = app
            .post(
                &format!("/api/channels/{cid}/members"),
                &mallory.token,
                json!({"user_id": mallory.id}),
            )
            .await;
        assert_eq!(status, refused, "cannot add themself");
    }
    let (status, _) = app
        .post(
            &format!("/api/channels/{}/join", id(&private)),
            &mallory.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = app.get("/api/channels", &mallory.token).await;
    assert_eq!(list, json!([]));
    // Nothing mallory tried changed the channels.
    let (_, list) = app.get("/api/channels", &alice.token).await;
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .all(|c| c["member_count"] == 1)
    );
    let (_, history) = app
        .get(
            &format!("/api/channels/{}/messages", id(&private)),
            &alice.token,
        )
        .await;
    assert_eq!(history.as_array().expect("array").len(), 1);
}

async fn unknown_channels_are_404_everywhere(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    for cid in [Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let (status, _) = app
            .get(&format!("/api/channels/{cid}/messages"), &alice.token)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        for action in ["join", "leave", "messages"] {
            let (status, _) = app
                .post(
                    &format!("/api/channels/{cid}/{action}"),
                    &alice.token,
                    json!({"message_type": "text"}),
                )
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{action} {cid}");
        }
    }
}

async fn a_post_reaches_online_members_except_the_sender_in_both_key_styles(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let dave = app.register("dave").await;
    let channel = create_channel(&app, &alice, "news", false).await;
    let cid = id(&channel);
    for member in [&bob, &carol] {
        let (status, _) = app
            .post(
                &format!("/api/channels/{cid}/join"),
                &member.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_phone = app.ws(&bob).await;
    let mut bob_tablet = app.ws(&bob).await;
    let mut carol_ws = app.ws(&carol).await;
    let mut dave_ws = app.ws(&dave).await;

    let (status, message) = post_message(&app, &alice, cid).await;
    assert_eq!(status, StatusCode::CREATED, "{message}");
    for key in [
        "id",
        "channel_id",
        "sender_id",
        "sender_name",
        "message_type",
        "created_at",
        "timestamp",
    ] {
        assert!(message.get(key).is_some(), "missing {key}: {message}");
    }
    assert_eq!(message["channel_id"], cid);
    assert_eq!(message["sender_id"], alice.id);
    assert_eq!(message["sender_name"], "alice");
    assert_eq!(message["message_type"], "text");
    assert!(
        message["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    for socket in [&mut bob_phone, &mut bob_tablet, &mut carol_ws] {
        let pushed = socket.expect("channel_message").await;
        assert_eq!(pushed["id"], message["id"]);
        for (camel, snake) in [
            ("channelId", "channel_id"),
            ("senderId", "sender_id"),
            ("senderName", "sender_name"),
            ("messageType", "message_type"),
            ("createdAt", "created_at"),
        ] {
            assert!(!pushed[camel].is_null(), "missing {camel}: {pushed}");
            assert_eq!(pushed[camel], pushed[snake]);
            assert_eq!(pushed[snake], message[snake]);
        }
        assert_eq!(pushed["timestamp"], message["timestamp"]);
    }
    // Not echoed to the sender, nothing for a non-member.
    alice_ws.expect_silent().await;
    dave_ws.expect_silent().await;
    bob_phone.expect_silent().await;
}

async fn a_retried_message_id_is_stored_once_and_cannot_be_taken_by_another_sender(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let channel = create_channel(&app, &alice, "news", false).await;
    let cid = id(&channel);
    app.post(&format!("/api/channels/{cid}/join"), &bob.token, json!({}))
        .await;
    let mut bob_ws = app.ws(&bob).await;
    let client_id = Uuid::new_v4().to_string();
    let path = format!("/api/channels/{cid}/messages");
    let body = json!({"message_type": "text", "id": client_id});
    let (status, first) = app.post(&path, &alice.token, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        first["id"], client_id,
        "the client's id becomes the message id"
    );
    let (status, again) = app.post(&path, &alice.token, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "a retry");
    assert_eq!(again, first);
    assert_eq!(bob_ws.expect("channel_message").await["id"], client_id);
    bob_ws.expect_silent().await;

    let (status, error) = app.post(&path, &bob.token, body).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error["error"]["code"], "id_taken");
    let (_, history) = app.get(&path, &alice.token).await;
    assert_eq!(ids(&history), [client_id.as_str()]);
}

async fn a_channel_message_frame_is_acked_fanned_out_and_refused_to_non_members(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mallory = app.register("mallory").await;
    let channel = create_channel(&app, &alice, "news", true).await;
    let cid = id(&channel);
    app.post(
        &format!("/api/channels/{cid}/members"),
        &alice.token,
        json!({"user_id": bob.id}),
    )
    .await;
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;
    let mut mallory_ws = app.ws(&mallory).await;

    // The app's style: camelCase, with a client id and a zone-less local timestamp.
    let client_id = Uuid::new_v4().to_string();
    alice_ws
        .send(
            "channel_message",
            json!({"channelId": cid, "messageType": "image", "id": client_id, "timestamp": "2025-11-24T21:03:04.123456"}),
        )
        .await;
    let ack = alice_ws.expect("channel_message_ack").await;
    assert_eq!(ack["id"], client_id);
    assert_eq!(ack["clientId"], client_id);
    assert_eq!(ack["channelId"], cid);
    let pushed = bob_ws.expect("channel_message").await;
    assert_eq!(pushed["id"], client_id);
    assert_eq!(pushed["messageType"], "image");
    assert_eq!(pushed["senderId"], alice.id);
    assert_eq!(pushed["timestamp"], ack["timestamp"]);
    alice_ws.expect_quiet().await;

    // snake_case works too, without an id.
    bob_ws
        .send(
            "channel_message",
            json!({"channel_id": cid, "message_type": "text"}),
        )
        .await;
    let ack = bob_ws.expect("channel_message_ack").await;
    assert!(ack.get("clientId").is_none());
    assert_eq!(alice_ws.expect("channel_message").await["id"], ack["id"]);

    mallory_ws
        .send(
            "channel_message",
            json!({"channelId": cid, "messageType": "text"}),
        )
        .await;
    assert_eq!(mallory_ws.expect("error").await["code"], "not_found");
    mallory_ws
        .send("channel_message", json!({"channelId": cid}))
        .await;
    assert_eq!(mallory_ws.expect("error").await["code"], "invalid_payload");
    alice_ws.expect_quiet().await;
    bob_ws.expect_quiet().await;
}

async fn history_is_newest_first_and_pages_with_limit_and_before(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let channel = create_channel(&app, &alice, "log", false).await;
    let other = create_channel(&app, &alice, "other", false).await;
    let cid = id(&channel);
    let mut posted = Vec::new();
    for _ in 0..5 {
        let (_, message) = post_message(&app, &alice, cid).await;
        posted.push(id(&message).to_owned());
    }
    let (_, foreign) = post_message(&app, &alice, id(&other)).await;
    let newest_first: Vec<&str> = posted.iter().rev().map(String::as_str).collect();
    let path = format!("/api/channels/{cid}/messages");
    let (status, all) = app.get(&path, &alice.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&all), newest_first);

    let (_, page1) = app.get(&format!("{path}?limit=2"), &alice.token).await;
    assert_eq!(ids(&page1), newest_first[..2]);
    let (_, page2) = app
        .get(
            &format!("{path}?limit=2&before={}", newest_first[1]),
            &alice.token,
        )
        .await;
    assert_eq!(ids(&page2), newest_first[2..4]);
    for (limit, expected) in [("-1", 1), ("100000", 5), ("99999999999999999999", 5)] {
        let (status, page) = app
            .get(&format!("{path}?limit={limit}"), &alice.token)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page.as_array().expect("array").len(), expected, "{limit}");
    }
    let foreign_cursor = format!("before={}", id(&foreign));
    let unknown_cursor = format!("before={}", Uuid::new_v4());
    for bad in ["limit=abc", "before=nope", &foreign_cursor, &unknown_cursor] {
        let (status, _) = app.get(&format!("{path}?{bad}"), &alice.token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

async fn the_channel_list_pages_and_shows_the_last_message_time(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let mut created = Vec::new();
    for i in 0..3 {
        created.push(id(&create_channel(&app, &alice, &format!("c{i}"), i == 1).await).to_owned());
    }
    let newest_first: Vec<&str> = created.iter().rev().map(String::as_str).collect();
    let (_, page1) = app.get("/api/channels?limit=2", &alice.token).await;
    assert_eq!(ids(&page1), newest_first[..2]);
    let (_, page2) = app
        .get(
            &format!("/api/channels?limit=2&before={}", newest_first[1]),
            &alice.token,
        )
        .await;
    assert_eq!(ids(&page2), newest_first[2..]);
    for limit in ["0", "-7", "9999999999999999999999"] {
        let (status, _) = app
            .get(&format!("/api/channels?limit={limit}"), &alice.token)
            .await;
        assert_eq!(status, StatusCode::OK, "{limit}");
    }
    let (status, _) = app.get("/api/channels?limit=x", &alice.token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (_, message) = post_message(&app, &alice, &created[0]).await;
    let (_, list) = app.get("/api/channels", &alice.token).await;
    let oldest = list
        .as_array()
        .expect("array")
        .iter()
        .find(|c| c["id"] == created[0])
        .expect("listed");
    assert_eq!(oldest["last_message_time"], message["created_at"]);
}
