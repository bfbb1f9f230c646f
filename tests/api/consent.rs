//! Contacts by consent, last seen by the day, and hiding one's last seen (issue 21, items 3–4):
//! what a requester, the one asked, a contact and a stranger each see of a user.

use crate::common::{Engine, TestApp, TestUser, WsClient};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

scenarios!(
    a_conversation_is_a_request_until_the_other_member_replies,
    only_the_member_asked_accepts_a_request,
    by_consent_the_requester_sees_nothing_of_the_recipient_until_accepted,
    without_consent_every_conversation_partner_is_a_contact,
    hiding_last_seen_shows_everyone_offline_at_the_epoch,
    privacy_settings_refuse_bad_input,
    a_stranger_learns_nothing_under_the_production_defaults,
);

const CONSENT: &[(&str, &str)] = &[("CONTACTS_BY_CONSENT", "true")];

async fn list_entry(app: &TestApp, user: &TestUser, other: &TestUser) -> Value {
    let (status, list) = app.get("/api/conversations", &user.token).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list.as_array()
        .expect("array")
        .iter()
        .find(|c| c["participant_id"] == other.id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no conversation with {} in {list}", other.id))
}

async fn send_message(ws: &mut WsClient, to: &TestUser) -> Value {
    ws.send(
        "message",
        json!({"recipientId": to.id, "messageType": "text", "sessionId": "s"}),
    )
    .await;
    ws.expect("message_ack").await
}

async fn accept(app: &TestApp, user: &TestUser, conversation: &Value) -> (StatusCode, Value) {
    let path = format!(
        "/api/conversations/{}/accept",
        conversation["id"].as_str().expect("present")
    );
    app.post(&path, &user.token, json!({})).await
}

async fn presence(app: &TestApp, viewer: &TestUser, user: &TestUser) -> (StatusCode, Value) {
    app.get(&format!("/api/presence/{}", user.id), &viewer.token)
        .await
}

async fn set_presence(app: &TestApp, user: &TestUser, status: &str) {
    let (code, body) = app
        .post("/api/presence", &user.token, json!({"status": status}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

pub async fn story_ids(app: &TestApp, viewer: &TestUser) -> Vec<String> {
    let (status, list) = app.get("/api/stories", &viewer.token).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list.as_array()
        .expect("array")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_owned())
        .collect()
}

pub async fn post_story(app: &TestApp, user: &TestUser) -> String {
    let (status, story) = app
        .post(
            "/api/stories",
            &user.token,
            json!({"content_text": "hello", "media_type": "image"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{story}");
    story["id"].as_str().expect("id").to_owned()
}

async fn typing(ws: &mut WsClient, conversation: &Value, is_typing: bool) {
    ws.send(
        "typing_indicator",
        json!({"conversationId": conversation["id"], "isTyping": is_typing}),
    )
    .await;
}

async fn set_hidden(app: &TestApp, user: &TestUser, hide: bool) -> (StatusCode, Value) {
    app.request(
        Method::PUT,
        "/api/settings/privacy",
        Some(&user.token),
        Some(json!({"hide_last_seen": hide})),
    )
    .await
}

/// The list says who asked whom until the one asked replies; the requester's own messages do
/// not accept it, and neither does the one asked opening the conversation (the app calls
/// `POST /api/conversations` for every contact at each start).
async fn a_conversation_is_a_request_until_the_other_member_replies(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let opened = app.conversation(&alice, &bob).await;
    assert_eq!(opened["status"], "request");
    assert_eq!(opened["requested_by"], alice.id.as_str());

    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;
    send_message(&mut alice_ws, &bob).await;
    bob_ws.expect("message").await;
    let again = app.conversation(&bob, &alice).await;
    assert_eq!(again["status"], "request", "get-or-create is not consent");
    for (user, other) in [(&alice, &bob), (&bob, &alice)] {
        let entry = list_entry(&app, user, other).await;
        assert_eq!(entry["status"], "request", "{entry}");
        assert_eq!(entry["requested_by"], alice.id.as_str());
    }

    // A reply the server refuses (it names another conversation) accepts nothing.
    bob_ws
        .send(
            "message",
            json!({"recipientId": alice.id, "messageType": "text", "conversationId": uuid::Uuid::now_v7()}),
        )
        .await;
    bob_ws.expect("error").await;
    assert_eq!(list_entry(&app, &alice, &bob).await["status"], "request");

    send_message(&mut bob_ws, &alice).await;
    for (user, other) in [(&alice, &bob), (&bob, &alice)] {
        let entry = list_entry(&app, user, other).await;
        assert_eq!(entry["status"], "accepted", "{entry}");
        assert!(entry["requested_by"].is_null());
    }
}

async fn only_the_member_asked_accepts_a_request(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let conversation = app.conversation(&alice, &bob).await;

    let (status, body) = accept(&app, &alice, &conversation).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, body) = accept(&app, &carol, &conversation).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(list_entry(&app, &bob, &alice).await["status"], "request");

    let (status, accepted) = accept(&app, &bob, &conversation).await;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    assert_eq!(accepted["status"], "accepted");
    assert_eq!(accepted["participant_id"], alice.id.as_str());
    // Idempotent, and the requester may call it once accepted.
    assert_eq!(accept(&app, &bob, &conversation).await.0, StatusCode::OK);
    assert_eq!(accept(&app, &alice, &conversation).await.0, StatusCode::OK);
    assert_eq!(list_entry(&app, &alice, &bob).await["status"], "accepted");
}

/// With `CONTACTS_BY_CONSENT`, a requester's messages reach the one asked, who sees the
/// requester's last seen by the day; the requester sees nothing of the one asked (presence,
/// stories, typing, identity changes) until they accept.
async fn by_consent_the_requester_sees_nothing_of_the_recipient_until_accepted(engine: Engine) {
    let app = TestApp::spawn_with(engine, CONSENT).await;
    let alice = app.register("alice").await; // the requester
    let bob = app.register("bob").await; // the one asked
    let conversation = app.conversation(&alice, &bob).await;
    let mut alice_ws = app.ws(&alice).await;
    let mut bob_ws = app.ws(&bob).await;

    // Messages flow.
    send_message(&mut alice_ws, &bob).await;
    assert_eq!(
        bob_ws.expect("message").await["senderId"],
        alice.id.as_str()
    );

    // Bob's presence, story, typing and new identity stay hidden from Alice.
    assert_eq!(presence(&app, &alice, &bob).await.0, StatusCode::NOT_FOUND);
    let entry = list_entry(&app, &alice, &bob).await;
    assert_eq!(entry["participant_status"], "offline", "{entry}");
    set_presence(&app, &bob, "busy").await;
    let story = post_story(&app, &bob).await;
    assert!(!story_ids(&app, &alice).await.contains(&story));
    let (status, _) = app
        .post(
            &format!("/api/stories/{story}/view"),
            &alice.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    typing(&mut bob_ws, &conversation, true).await;
    put_identity(&app, &bob, 0xB1).await;
    put_identity(&app, &bob, 0xB2).await;

    // Alice shows herself to the one she asked: typing live, last seen by the day.
    typing(&mut alice_ws, &conversation, true).await;
    let typed = bob_ws.next_about("typing_indicator", &alice.id).await;
    assert_eq!(typed["isTyping"], true);
    let (status, seen) = presence(&app, &bob, &alice).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["status"], "offline", "{seen}");
    assert!(
        seen["last_seen"]
            .as_str()
            .expect("present")
            .contains("T00:00:00"),
        "by the day: {seen}"
    );
    let alice_story = post_story(&app, &alice).await;
    assert!(story_ids(&app, &bob).await.contains(&alice_story));

    assert_eq!(email_found(&app, &alice, "bob").await, "");
    assert_eq!(email_found(&app, &bob, "alice").await, alice.email);

    // Bob accepts: from now on Alice sees him as a contact. The first typing and presence
    // frames she gets about Bob are the ones after the acceptance: the earlier ones never came.
    let (status, _) = accept(&app, &bob, &conversation).await;
    assert_eq!(status, StatusCode::OK);
    typing(&mut bob_ws, &conversation, false).await;
    let typed = alice_ws.next_about("typing_indicator", &bob.id).await;
    assert_eq!(
        typed["isTyping"], false,
        "the typing before acceptance leaked"
    );
    set_presence(&app, &bob, "away").await;
    let update = alice_ws.next_about("presence_update", &bob.id).await;
    assert_eq!(
        update["status"], "away",
        "a presence before acceptance leaked"
    );
    let (status, seen) = presence(&app, &alice, &bob).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["status"], "away");
    assert!(story_ids(&app, &alice).await.contains(&story));
    // Bob's earlier identity change never reached Alice: she hears of this one only.
    put_identity(&app, &bob, 0xB3).await;
    let changes = durable_frames(&mut alice_ws).await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["type"], "identity_changed");
    assert_eq!(changes[0]["payload"]["userId"], bob.id.as_str());
    assert_eq!(email_found(&app, &alice, "bob").await, bob.email);
    // And Bob now sees Alice's last seen as it is.
    let (_, seen) = presence(&app, &bob, &alice).await;
    assert_eq!(seen["status"], "online", "{seen}");
}

/// The default in development: any conversation partner sees presence and stories, as the app
/// expects, whichever side opened it.
async fn without_consent_every_conversation_partner_is_a_contact(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let conversation = app.conversation(&alice, &bob).await;
    assert_eq!(conversation["status"], "request");
    let mut alice_ws = app.ws(&alice).await;
    set_presence(&app, &bob, "busy").await;
    assert_eq!(
        alice_ws.next_about("presence_update", &bob.id).await["status"],
        "busy"
    );
    let (status, seen) = presence(&app, &alice, &bob).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["status"], "busy");
    assert!(
        !seen["last_seen"]
            .as_str()
            .expect("present")
            .contains("T00:00:00")
    );
    let story = post_story(&app, &bob).await;
    assert!(story_ids(&app, &alice).await.contains(&story));
}

/// A user who hides their last seen shows everyone `offline` at the Unix epoch, sends no live
/// presence, and sees their own as it is; showing it again tells contacts at once.
async fn hiding_last_seen_shows_everyone_offline_at_the_epoch(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    app.conversation(&alice, &bob).await;
    let mut alice_ws = app.ws(&alice).await;
    let _bob_ws = app.ws(&bob).await;
    assert_eq!(
        alice_ws.next_about("presence_update", &bob.id).await["status"],
        "online"
    );

    let (status, body) = set_hidden(&app, &bob, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"hide_last_seen": true}));
    let (status, body) = app.get("/api/settings/privacy", &bob.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["hide_last_seen"], true);
    let hidden = alice_ws.next_about("presence_update", &bob.id).await;
    assert_eq!(hidden["status"], "offline");
    assert_eq!(hidden["lastSeen"], "1970-01-01T00:00:00Z");

    let (_, seen) = presence(&app, &alice, &bob).await;
    assert_eq!(seen["status"], "offline");
    assert_eq!(seen["last_seen"], "1970-01-01T00:00:00Z");
    assert_eq!(seen["updated_at"], "1970-01-01T00:00:00Z");
    assert_eq!(
        list_entry(&app, &alice, &bob).await["participant_status"],
        "offline"
    );
    let (_, own) = presence(&app, &bob, &bob).await;
    assert_eq!(
        own["status"], "online",
        "one's own presence is not hidden from oneself"
    );

    // While hidden, changes are not sent; shown again, the real presence is.
    set_presence(&app, &bob, "busy").await;
    let (status, _) = set_hidden(&app, &bob, false).await;
    assert_eq!(status, StatusCode::OK);
    let shown = alice_ws.next_about("presence_update", &bob.id).await;
    assert_eq!(
        shown["status"], "busy",
        "a presence sent while hidden leaked"
    );
    let (_, seen) = presence(&app, &alice, &bob).await;
    assert_eq!(seen["status"], "busy");
    assert_ne!(seen["last_seen"], "1970-01-01T00:00:00Z");
}

/// `APP_ENV=production` (directory `search`, contacts by consent): someone who was never
/// accepted learns nothing of a user's presence, last seen, stories or email, whether they
/// wrote to them or not; their messages still arrive.
async fn a_stranger_learns_nothing_under_the_production_defaults(engine: Engine) {
    // The harness sets JWT_SECRET, which production requires.
    let app = TestApp::spawn_with(engine, &[("APP_ENV", "production")]).await;
    let bob = app.register("bob_target").await;
    let mallory = app.register("mallory").await;
    let mut bob_ws = app.ws(&bob).await;
    let mut mallory_ws = app.ws(&mallory).await;
    set_presence(&app, &bob, "busy").await;
    let story = post_story(&app, &bob).await;

    let stranger_sees_nothing = async |when: &str| {
        assert_eq!(
            presence(&app, &mallory, &bob).await.0,
            StatusCode::NOT_FOUND,
            "{when}"
        );
        assert!(story_ids(&app, &mallory).await.is_empty(), "{when}");
        let (status, _) = app
            .post(
                &format!("/api/stories/{story}/view"),
                &mallory.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{when}");
        assert_eq!(
            email_found(&app, &mallory, "bob_target").await,
            "",
            "{when}"
        );
        let (status, _) = app.get("/api/users/search", &mallory.token).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{when}: no listing of everyone"
        );
    };
    stranger_sees_nothing("before writing").await;

    // Writing makes Mallory a requester, not a contact.
    let conversation = app.conversation(&mallory, &bob).await;
    send_message(&mut mallory_ws, &bob).await;
    assert_eq!(
        bob_ws.expect("message").await["senderId"],
        mallory.id.as_str()
    );
    stranger_sees_nothing("after writing").await;
    let entry = list_entry(&app, &mallory, &bob).await;
    assert_eq!(entry["participant_status"], "offline");
    assert_eq!(entry["status"], "request");
    set_presence(&app, &bob, "away").await;
    typing(&mut bob_ws, &conversation, true).await;
    put_identity(&app, &bob, 0xB1).await;
    put_identity(&app, &bob, 0xB2).await;
    for frame in durable_frames(&mut mallory_ws).await {
        assert_ne!(frame["type"], "identity_changed", "{frame}");
    }
    // Nor any typing or presence of Bob's, which take their own path (given a moment to come).
    while let Some(frame) = mallory_ws
        .try_recv(std::time::Duration::from_millis(300))
        .await
    {
        assert_ne!(frame["payload"]["userId"], bob.id.as_str(), "{frame}");
    }
}

async fn privacy_settings_refuse_bad_input(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    for body in [json!({}), json!({"hide_last_seen": "yes"}), json!([true])] {
        let (status, answer) = app
            .request(
                Method::PUT,
                "/api/settings/privacy",
                Some(&alice.token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(answer["error"]["code"].is_string());
    }
    let (_, body) = app.get("/api/settings/privacy", &alice.token).await;
    assert_eq!(
        body["hide_last_seen"], false,
        "a refused change changes nothing"
    );
    let (status, _) = app
        .request(Method::GET, "/api/settings/privacy", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Uploads device 1's keys with identity key bytes `identity` (a new identity each time).
async fn put_identity(app: &TestApp, user: &TestUser, identity: u8) {
    let (status, body) = app
        .request(
            Method::PUT,
            "/api/keys",
            Some(&user.token),
            Some(crate::keys::full_upload(1, identity, 1..=2)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The `email` of the one user a search for `query` by `viewer` finds.
async fn email_found(app: &TestApp, viewer: &TestUser, query: &str) -> String {
    let (status, found) = app
        .get(&format!("/api/users/search?q={query}"), &viewer.token)
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    let found = found.as_array().expect("array");
    assert_eq!(found.len(), 1, "{found:?}");
    found[0]["email"]
        .as_str()
        .expect("email is a string")
        .to_owned()
}

/// Every frame queued for `ws` so far but presence and typing (ephemeral, on their own
/// schedule).
async fn durable_frames(ws: &mut WsClient) -> Vec<Value> {
    let ephemeral = |f: &Value| f["type"] == "presence_update" || f["type"] == "typing_indicator";
    ws.queued_frames()
        .await
        .into_iter()
        .filter(|f| !ephemeral(f))
        .collect()
}
