//! Stories over REST: the app's shape, 24-hour expiry, visibility to contacts, views, paging.

use crate::common::{Engine, TestApp, TestUser};
use chrono::{DateTime, TimeDelta, Utc};
use kisse_backend::{
    model::{StoryId, UserId, now},
    store::NewStory,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

scenarios!(
    a_story_has_the_app_shape_and_expires_after_24_hours,
    user_name_falls_back_to_the_username_only_when_the_name_is_blank,
    bad_stories_are_rejected_with_400,
    the_list_holds_the_callers_and_contacts_stories_newest_first,
    viewing_sets_is_viewed_for_that_viewer_only,
    a_third_user_can_neither_see_nor_view_a_story,
    expired_stories_are_never_listed_and_viewing_one_is_404,
    stories_page_with_a_clamped_limit_and_a_before_cursor,
);

async fn post_story(app: &TestApp, user: &TestUser, text: &str) -> Value {
    let (status, story) = app
        .post(
            "/api/stories",
            &user.token,
            json!({"content_text": text, "media_url": "https://cdn.example.com/s.jpg", "media_type": "image"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{story}");
    story
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("array")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect()
}

fn time(value: &Value) -> DateTime<Utc> {
    let text = value.as_str().expect("timestamp");
    assert!(text.ends_with('Z'), "UTC with Z: {text}");
    DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

async fn a_story_has_the_app_shape_and_expires_after_24_hours(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let story = post_story(&app, &alice, "hello").await;
    for key in [
        "id",
        "user_id",
        "user_name",
        "user_avatar",
        "content_text",
        "media_url",
        "media_type",
        "created_at",
        "expires_at",
        "is_viewed",
    ] {
        assert!(story.get(key).is_some(), "missing {key}: {story}");
    }
    assert_eq!(story["user_id"], alice.id);
    assert_eq!(story["user_name"], "alice");
    assert!(story["user_avatar"].is_null());
    assert_eq!(story["content_text"], "hello");
    assert_eq!(story["media_url"], "https://cdn.example.com/s.jpg");
    assert_eq!(story["media_type"], "image");
    assert_eq!(story["is_viewed"], false);
    let created = time(&story["created_at"]);
    assert_eq!(time(&story["expires_at"]) - created, TimeDelta::hours(24));
    assert!((Utc::now() - created).num_seconds().abs() < 60);

    // A text-only video story, optional fields as explicit nulls (as the app sends them).
    let (status, text_only) = app
        .post(
            "/api/stories",
            &alice.token,
            json!({"content_text": "just words", "media_url": null, "media_type": "video"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text_only}");
    assert!(text_only["media_url"].is_null());
    assert_eq!(text_only["media_type"], "video");

    let (status, list) = app.get("/api/stories", &alice.token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list[1], story, "the list shows the same shape");
}

async fn user_name_falls_back_to_the_username_only_when_the_name_is_blank(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let mut tokens = Vec::new();
    for (username, name) in [("dora", json!("Dora D.")), ("eve", json!("   "))] {
        let (status, body) = app
            .request(
                Method::POST,
                "/api/auth/register",
                None,
                Some(
                    json!({"email": format!("{username}@example.com"), "username": username,
                            "password": "password-long", "name": name}),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        tokens.push(body["token"].as_str().expect("token").to_owned());
    }
    let body = json!({"content_text": "hi", "media_type": "image"});
    let (_, dora) = app.post("/api/stories", &tokens[0], body.clone()).await;
    let (_, eve) = app.post("/api/stories", &tokens[1], body).await;
    assert_eq!(dora["user_name"], "Dora D.");
    assert_eq!(eve["user_name"], "eve");
}

async fn bad_stories_are_rejected_with_400(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    for body in [
        json!({"media_url": "javascript:alert(1)", "media_type": "image"}),
        json!({"media_url": "ftp://example.com/a.jpg", "media_type": "image"}),
        json!({"media_url": "file:///etc/passwd", "media_type": "image"}),
        json!({"media_url": "/relative.jpg", "media_type": "image"}),
        json!({"media_url": "https://", "media_type": "image"}),
        json!({"content_text": "hi", "media_type": "gif"}),
        json!({"content_text": "hi"}),
        json!({"content_text": "hi", "media_type": null}),
        json!({"content_text": "   ", "media_type": "image"}),
        json!({"media_type": "image"}),
        json!({"content_text": "x".repeat(2001), "media_type": "image"}),
        json!({"content_text": 5, "media_type": "image"}),
        json!([]),
    ] {
        let (status, error) = app.post("/api/stories", &alice.token, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {error}");
        assert!(error["error"]["code"].is_string(), "{error}");
    }
    let (_, list) = app.get("/api/stories", &alice.token).await;
    assert_eq!(list, json!([]));
    let (status, _) = app
        .request(
            Method::POST,
            "/api/stories",
            None,
            Some(json!({"content_text": "hi", "media_type": "image"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn the_list_holds_the_callers_and_contacts_stories_newest_first(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    app.conversation(&alice, &bob).await;
    let a1 = post_story(&app, &alice, "a1").await;
    let b1 = post_story(&app, &bob, "b1").await;
    let c1 = post_story(&app, &carol, "c1").await;
    let a2 = post_story(&app, &alice, "a2").await;
    let id = |s: &Value| s["id"].as_str().expect("id").to_owned();

    let (_, for_alice) = app.get("/api/stories", &alice.token).await;
    assert_eq!(ids(&for_alice), [id(&a2), id(&b1), id(&a1)]);
    let (_, for_bob) = app.get("/api/stories", &bob.token).await;
    assert_eq!(ids(&for_bob), [id(&a2), id(&b1), id(&a1)]);
    let (_, for_carol) = app.get("/api/stories", &carol.token).await;
    assert_eq!(ids(&for_carol), [id(&c1)], "carol has no contacts");
}

async fn viewing_sets_is_viewed_for_that_viewer_only(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    app.conversation(&bob, &alice).await;
    let story = post_story(&app, &alice, "look").await;
    let path = format!("/api/stories/{}/view", story["id"].as_str().expect("id"));
    for _ in 0..2 {
        let (status, viewed) = app.post(&path, &bob.token, json!({})).await;
        assert_eq!(status, StatusCode::OK, "viewing is idempotent: {viewed}");
        assert_eq!(viewed["id"], story["id"]);
        assert_eq!(viewed["is_viewed"], true);
    }
    // The app may POST without a body.
    let (status, _) = app
        .request(Method::POST, &path, Some(&bob.token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, for_bob) = app.get("/api/stories", &bob.token).await;
    assert_eq!(for_bob[0]["is_viewed"], true);
    let (_, for_alice) = app.get("/api/stories", &alice.token).await;
    assert_eq!(for_alice[0]["is_viewed"], false, "per viewer");
}

async fn a_third_user_can_neither_see_nor_view_a_story(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let mallory = app.register("mallory").await;
    app.conversation(&alice, &bob).await;
    let story = post_story(&app, &alice, "friends only").await;
    let id = story["id"].as_str().expect("id");

    let (status, body) = app
        .post(
            &format!("/api/stories/{id}/view"),
            &mallory.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let unknown = Uuid::new_v4();
    let answer_for_unknown = app
        .post(
            &format!("/api/stories/{unknown}/view"),
            &mallory.token,
            json!({}),
        )
        .await;
    assert_eq!((status, body), answer_for_unknown, "learns nothing");
    let (status, _) = app
        .post("/api/stories/not-a-uuid/view", &mallory.token, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, list) = app.get("/api/stories", &mallory.token).await;
    assert_eq!(list, json!([]));
    // Nor can the story serve as a paging cursor: same answer as an unknown id.
    let (status, body) = app
        .get(&format!("/api/stories?before={id}"), &mallory.token)
        .await;
    let answer_for_unknown = app
        .get(&format!("/api/stories?before={unknown}"), &mallory.token)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!((status, body), answer_for_unknown);
    // Mallory's view did not count.
    let (_, for_alice) = app.get("/api/stories", &alice.token).await;
    assert_eq!(for_alice[0]["is_viewed"], false);
}

async fn expired_stories_are_never_listed_and_viewing_one_is_404(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    app.conversation(&alice, &bob).await;
    let author = UserId(alice.id.parse().expect("uuid"));
    let expired = StoryId(Uuid::now_v7());
    let created_at = now() - TimeDelta::hours(25);
    app.state
        .store
        .stories()
        .insert_story(&NewStory {
            id: expired,
            user_id: author,
            content_text: Some("old".into()),
            media_url: None,
            media_type: "image".into(),
            created_at,
            expires_at: created_at + TimeDelta::hours(24),
        })
        .await
        .expect("insert an expired story");
    for user in [&alice, &bob] {
        let (_, list) = app.get("/api/stories", &user.token).await;
        assert_eq!(list, json!([]), "expired stories are not listed");
        let (status, _) = app
            .post(
                &format!("/api/stories/{expired}/view"),
                &user.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    // A fresh story is listed; the expired one is purged when it is posted.
    let fresh = post_story(&app, &alice, "new").await;
    let (_, list) = app.get("/api/stories", &bob.token).await;
    assert_eq!(ids(&list), [fresh["id"].as_str().expect("id")]);
}

async fn stories_page_with_a_clamped_limit_and_a_before_cursor(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let mut posted = Vec::new();
    for i in 0..5 {
        posted.push(post_story(&app, &alice, &format!("s{i}")).await["id"].clone());
    }
    let newest_first: Vec<&str> = posted
        .iter()
        .rev()
        .map(|v| v.as_str().expect("id"))
        .collect();
    let (_, page1) = app.get("/api/stories?limit=2", &alice.token).await;
    assert_eq!(ids(&page1), newest_first[..2]);
    let cursor = newest_first[1];
    let (_, page2) = app
        .get(
            &format!("/api/stories?limit=2&before={cursor}"),
            &alice.token,
        )
        .await;
    assert_eq!(ids(&page2), newest_first[2..4]);
    let (_, last) = app
        .get(
            &format!("/api/stories?limit=2&before={}", newest_first[3]),
            &alice.token,
        )
        .await;
    assert_eq!(ids(&last), newest_first[4..]);

    for (limit, expected) in [
        ("-3", 1),
        ("0", 1),
        ("100000", 5),
        ("99999999999999999999999", 5),
        ("-99999999999999999999999", 1),
        ("", 5),
    ] {
        let (status, page) = app
            .get(&format!("/api/stories?limit={limit}"), &alice.token)
            .await;
        assert_eq!(status, StatusCode::OK, "limit={limit}: {page}");
        assert_eq!(
            page.as_array().expect("array").len(),
            expected,
            "limit={limit}"
        );
    }
    for bad in ["limit=abc", "limit=1.5", "before=nope"] {
        let (status, _) = app.get(&format!("/api/stories?{bad}"), &alice.token).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}
