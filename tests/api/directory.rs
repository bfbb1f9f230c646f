//! Who finds whom (`USER_DIRECTORY`), and who is shown whose email: only contacts (under
//! `CONTACTS_BY_CONSENT`, not the one who sent an unanswered request) and whoever typed it.

use crate::common::{Engine, TestApp, TestUser};
use reqwest::StatusCode;
use serde_json::{Value, json};

scenarios!(
    open_lists_everyone_but_matches_a_strangers_email_only_whole,
    search_needs_three_characters_matches_names_only_and_is_capped,
    contacts_finds_only_conversation_partners,
    find_by_email_answers_under_every_policy_with_the_email,
    with_consent_a_requester_does_not_see_the_recipients_email,
    production_defaults_hide_the_directory_and_strangers_emails,
);

/// `GET /api/users/search?{query}` as `user`.
async fn search(app: &TestApp, user: &TestUser, query: &str) -> (StatusCode, Value) {
    app.get(&format!("/api/users/search?{query}"), &user.token)
        .await
}

/// The (username, email) pairs of a successful search.
async fn found(app: &TestApp, user: &TestUser, query: &str) -> Vec<(String, String)> {
    let (status, list) = search(app, user, query).await;
    assert_eq!(status, StatusCode::OK, "{query}: {list}");
    list.as_array()
        .expect("array")
        .iter()
        .map(|u| {
            let field = |key: &str| u[key].as_str().expect("a string").to_owned();
            (field("username"), field("email"))
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(u, e)| ((*u).to_owned(), (*e).to_owned()))
        .collect()
}

fn assert_refused(status: StatusCode, body: &Value, code: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
}

async fn open_lists_everyone_but_matches_a_strangers_email_only_whole(engine: Engine) {
    // The development default, which the app's "new chat" screen relies on.
    let app = TestApp::spawn(engine).await;
    let me = app.register("me_user").await;
    app.register("alice").await;
    let zorro = app
        .register_as("zorro", "Zed@Mail.example", Some("Bob Builder"))
        .await;

    assert_eq!(
        found(&app, &me, "").await,
        pairs(&[("alice", ""), ("zorro", "")]),
        "an empty query lists everyone but the caller, strangers' emails blank"
    );
    assert_eq!(found(&app, &me, "q=builder").await, pairs(&[("zorro", "")]));
    for probe in ["zed%40mail", "mail.example", "zed"] {
        assert_eq!(
            found(&app, &me, &format!("q={probe}")).await,
            pairs(&[]),
            "part of a stranger's email finds nothing: {probe}"
        );
    }
    assert_eq!(
        found(&app, &me, "q=ZED%40mail.EXAMPLE").await,
        pairs(&[("zorro", "zed@mail.example")]),
        "a whole address (any case) finds them, and the caller typed it"
    );

    // A contact's email is shown, and matched in part.
    app.conversation(&me, &zorro).await;
    assert_eq!(
        found(&app, &me, "q=zed%40mail").await,
        pairs(&[("zorro", "zed@mail.example")])
    );
    assert_eq!(
        found(&app, &me, "").await,
        pairs(&[("alice", ""), ("zorro", "zed@mail.example")])
    );
    assert_eq!(
        found(&app, &zorro, "q=me_user").await,
        pairs(&[("me_user", "me_user@example.com")]),
        "both ways"
    );
    // The caller's own user object is unchanged.
    let (status, own) = app.get("/api/auth/me", &me.token).await;
    assert_eq!(
        (status, own["email"].clone()),
        (StatusCode::OK, json!(me.email))
    );
}

async fn search_needs_three_characters_matches_names_only_and_is_capped(engine: Engine) {
    let app = TestApp::spawn_with(engine, &[("USER_DIRECTORY", "search")]).await;
    let me = app.register("me_user").await;
    app.register_as("zorro", "zed@mail.example", Some("Bob Builder"))
        .await;

    for query in ["", "q=", "q=ab", "q=%20%20ab%20%20"] {
        let (status, body) = search(&app, &me, query).await;
        assert_refused(status, &body, "query_too_short");
    }
    assert_eq!(found(&app, &me, "q=ZOR").await, pairs(&[("zorro", "")]));
    assert_eq!(
        found(&app, &me, "q=%20builder%20").await,
        pairs(&[("zorro", "")]),
        "names match, trimmed"
    );
    for email in ["zed%40mail.example", "zed%40mail"] {
        assert_eq!(
            found(&app, &me, &format!("q={email}")).await,
            pairs(&[]),
            "emails are found through find-by-email only"
        );
    }

    for n in 0..21 {
        app.register(&format!("member_{n:02}")).await;
    }
    let list = found(&app, &me, "q=member&limit=1000").await;
    assert_eq!(list.len(), 20, "at most 20 users");
    assert_eq!(list[0].0, "member_00", "by username");
    let (status, body) = search(&app, &me, "q=member&after=member_19").await;
    assert_refused(status, &body, "paging_unavailable");
    assert_eq!(
        found(&app, &me, "q=member&limit=2&after=").await.len(),
        2,
        "an empty after is the first page"
    );
}

async fn contacts_finds_only_conversation_partners(engine: Engine) {
    let app = TestApp::spawn_with(
        engine,
        &[
            ("USER_DIRECTORY", "contacts"),
            ("CONTACTS_BY_CONSENT", "true"),
        ],
    )
    .await;
    let me = app.register("me_user").await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    // Either side may have opened it, and neither has answered (both still requests).
    app.conversation(&me, &alice).await;
    app.conversation(&bob, &me).await;

    assert_eq!(
        found(&app, &me, "").await,
        pairs(&[("alice", ""), ("bob", "bob@example.com")]),
        "an empty query lists the caller's conversation partners; the one who asked shows \
         their email, the one asked does not yet"
    );
    assert_eq!(found(&app, &me, "q=ALI").await, pairs(&[("alice", "")]));
    assert_eq!(
        found(&app, &me, "q=bob%40example").await,
        pairs(&[("bob", "bob@example.com")]),
        "a contact's email matches in part"
    );
    assert_eq!(found(&app, &me, "q=carol").await, pairs(&[]));
    assert_eq!(
        found(&app, &me, "q=carol%40example.com").await,
        pairs(&[]),
        "not even by the whole address"
    );
    assert_eq!(
        found(&app, &carol, "").await,
        pairs(&[]),
        "no conversation, nobody"
    );
    assert_eq!(found(&app, &me, "limit=1").await, pairs(&[("alice", "")]));
    assert_eq!(
        found(&app, &me, "limit=1&after=alice").await,
        pairs(&[("bob", "bob@example.com")]),
        "paged by username"
    );
    // Finding someone new goes through their email.
    let (status, user) = app
        .get(
            "/api/users/find-by-email?email=carol%40example.com",
            &me.token,
        )
        .await;
    assert_eq!(
        (status, user["id"].clone()),
        (StatusCode::OK, json!(carol.id))
    );
}

async fn find_by_email_answers_under_every_policy_with_the_email(engine: Engine) {
    for policy in ["open", "search", "contacts"] {
        let app = TestApp::spawn_with(
            engine,
            &[("USER_DIRECTORY", policy), ("CONTACTS_BY_CONSENT", "true")],
        )
        .await;
        let alice = app.register("alice").await;
        let bob = app.register("bob").await;
        let (status, user) = app
            .get(
                "/api/users/find-by-email?email=%20Bob%40Example.com%20",
                &alice.token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{policy}: {user}");
        assert_eq!(
            (user["id"].clone(), user["email"].clone()),
            (json!(bob.id), json!("bob@example.com")),
            "{policy}: the caller typed it"
        );
        let (status, _) = app
            .get("/api/users/find-by-email?email=bob%40example", &alice.token)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{policy}: exact only");
    }
}

async fn with_consent_a_requester_does_not_see_the_recipients_email(engine: Engine) {
    let app = TestApp::spawn_with(
        engine,
        &[("USER_DIRECTORY", "open"), ("CONTACTS_BY_CONSENT", "true")],
    )
    .await;
    let requester = app.register("requester").await;
    let recipient = app.register("recipient").await;
    app.conversation(&requester, &recipient).await;

    assert_eq!(
        found(&app, &requester, "q=recipient").await,
        pairs(&[("recipient", "")]),
        "an unanswered request shows the requester nothing of the recipient"
    );
    assert_eq!(
        found(&app, &requester, "q=recipient%40ex").await,
        pairs(&[]),
        "nor does part of the recipient's email find them"
    );
    assert_eq!(
        found(&app, &recipient, "q=requester").await,
        pairs(&[("requester", "requester@example.com")]),
        "the requester shows themself to the one they asked"
    );

    // The same conversation without the consent rule: contacts both ways.
    let mut app = app;
    app.restart_with(&[("CONTACTS_BY_CONSENT", "false")]).await;
    assert_eq!(
        found(&app, &requester, "q=recipient").await,
        pairs(&[("recipient", "recipient@example.com")])
    );
}

async fn production_defaults_hide_the_directory_and_strangers_emails(engine: Engine) {
    // The harness sets JWT_SECRET, which production requires.
    let app = TestApp::spawn_with(engine, &[("APP_ENV", "production")]).await;
    let me = app.register("me_user").await;
    let stranger = app.register("stranger").await;
    let requested = app.register("requested").await;

    let (status, body) = search(&app, &me, "").await;
    assert_refused(status, &body, "query_too_short");
    assert_eq!(
        found(&app, &me, "q=stranger").await,
        pairs(&[("stranger", "")]),
        "found by name, email hidden"
    );
    assert_eq!(
        found(&app, &me, "q=stranger%40example.com").await,
        pairs(&[]),
        "not by email"
    );
    // Consent is on: a request shows the requester nothing of the one asked.
    app.conversation(&me, &requested).await;
    assert_eq!(
        found(&app, &me, "q=requested").await,
        pairs(&[("requested", "")])
    );
    assert_eq!(
        found(&app, &requested, "q=me_user").await,
        pairs(&[("me_user", "me_user@example.com")])
    );
    let (status, user) = app
        .get(
            "/api/users/find-by-email?email=stranger%40example.com",
            &me.token,
        )
        .await;
    assert_eq!(
        (status, user["id"].clone(), user["email"].clone()),
        (
            StatusCode::OK,
            json!(stranger.id),
            json!("stranger@example.com")
        )
    );
}
