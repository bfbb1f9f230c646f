//! Several nodes on one PostgreSQL and one Redis: cross-node messages, receipts, typing, calls
//! and presence; a node that stops or dies; Redis that goes away and comes back.
//!
//! PostgreSQL only (SQLite is single-node): skipped, with a note, when `TEST_DATABASE_URL` is
//! not set. They need Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`) and, for the
//! outage test, the `redis-server` binary. Each test uses its own key prefix.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::common::{
    Engine, ServerProcess, TestApp, TestUser, WAIT, WsClient, eventually, free_port,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    client::IntoClientRequest, protocol::frame::coding::CloseCode,
};
use uuid::Uuid;

/// Presence TTL of the test nodes, in seconds: a dead node's users go offline within it.
const TTL: &str = "2";

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Two nodes on one database and one Redis. Fields drop in order: `b`, then `a` (which owns
/// the database).
struct Cluster {
    b: TestApp,
    a: TestApp,
}

/// Starts two nodes on `redis` (the shared one by default), or `None` without PostgreSQL.
async fn cluster_on(redis: Option<&str>) -> Option<Cluster> {
    cluster_with(redis, &[]).await
}

/// `cluster_on`, both nodes with `settings` too.
async fn cluster_with(redis: Option<&str>, settings: &[(&str, &str)]) -> Option<Cluster> {
    if !Engine::Postgres.available() {
        eprintln!("TEST_DATABASE_URL is not set: cluster tests (PostgreSQL only) not run");
        return None;
    }
    let url = redis.map_or_else(redis_url, str::to_owned);
    let prefix = format!("kt-{}", Uuid::new_v4().simple());
    let mut all = vec![
        ("REDIS_URL", url.as_str()),
        ("REDIS_PREFIX", prefix.as_str()),
        ("PRESENCE_TTL", TTL),
    ];
    all.extend_from_slice(settings);
    let a = TestApp::spawn_with(Engine::Postgres, &all).await;
    let b = a.spawn_node(&[]).await;
    for node in [&a, &b] {
        eventually("the node reaches Redis", || async {
            redis_status(node.addr).await == "ok"
        })
        .await;
    }
    Some(Cluster { b, a })
}

async fn cluster() -> Option<Cluster> {
    cluster_on(None).await
}

/// The `redis.status` of the `/health` of the node at `addr` (empty while it does not answer).
async fn redis_status(addr: SocketAddr) -> String {
    let Ok(response) = reqwest::get(format!("http://{addr}/health")).await else {
        return String::new();
    };
    let health: Value = response.json().await.unwrap_or_default();
    health["redis"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Opens `user`'s socket on `node`, with nothing waiting for them, and waits until the node is
/// ready to route to it (a session answers frames only once its user's channel is subscribed).
/// Alice and Bob, registered through `node`, with their conversation.
async fn alice_and_bob(node: &TestApp) -> (TestUser, TestUser, Value) {
    let alice = node.register("alice").await;
    let bob = node.register("bob").await;
    let conversation = node.conversation(&alice, &bob).await;
    (alice, bob, conversation)
}

async fn connect(node: &TestApp, user: &TestUser, query: &str) -> WsClient {
    connect_to(node.addr, user, query).await
}

async fn connect_to(addr: SocketAddr, user: &TestUser, query: &str) -> WsClient {
    let mut ws = reconnect_to(addr, user, query).await;
    ws.send("heartbeat", json!({})).await;
    ws.expect("heartbeat_response").await;
    ws
}

/// Opens `user`'s socket on `addr` without waiting: what they missed comes first.
async fn reconnect_to(addr: SocketAddr, user: &TestUser, query: &str) -> WsClient {
    let request = format!("ws://{addr}/ws?token={}{query}", user.token)
        .into_client_request()
        .expect("ws request");
    WsClient::connect(request).await.expect("socket opens")
}

/// Sends a message and waits for its ack; returns its id.
async fn send(ws: &mut WsClient, to: &TestUser, kind: &str) -> String {
    ws.send(
        "message",
        json!({"recipientId": to.id, "messageType": kind}),
    )
    .await;
    ws.expect("message_ack").await["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// The next `presence_update` about `user`, skipping other frames of their own schedule.
async fn presence_of(ws: &mut WsClient, user: &TestUser, wait: Duration) -> String {
    tokio::time::timeout(wait, async {
        loop {
            let update = ws.expect("presence_update").await;
            if update["userId"] == user.id.as_str() {
                return update["status"].as_str().expect("status").to_owned();
            }
        }
    })
    .await
    .expect("presence update in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_crosses_nodes_with_ack_delivery_and_read_receipts() {
    let Some(c) = cluster().await else { return };
    let (alice, bob, _) = alice_and_bob(&c.a).await;
    let mut a = connect(&c.a, &alice, "").await;
    let mut b = connect(&c.b, &bob, "").await;

    let id = send(&mut a, &bob, "text").await;
    let message = b.expect("message").await;
    assert_eq!(message["id"], id.as_str());
    assert_eq!(message["cursor"], 1);
    // Node B records the delivery and tells the sender on node A.
    assert_eq!(a.expect("delivery_receipt").await["messageId"], id.as_str());

    let (status, _) =
        c.b.post(&format!("/api/messages/{id}/read"), &bob.token, json!({}))
            .await;
    assert_eq!(status, StatusCode::OK);
    let receipt = a.expect("read_receipt").await;
    assert_eq!(receipt["messageId"], id.as_str());
    assert_eq!(receipt["cursor"], 1);

    // And back, from B to A.
    let back = send(&mut b, &alice, "text").await;
    assert_eq!(a.expect("message").await["id"], back.as_str());
}

/// A node sees only its own sockets: an active call whose parties sit on different nodes is
/// not "abandoned" when one leaves. It ends once neither has a socket on any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_call_ends_only_when_both_parties_left_every_node() {
    let Some(c) = cluster_with(None, &[("CALL_MAX_SILENCE", "1")]).await else {
        return;
    };
    let (alice, bob, _) = alice_and_bob(&c.a).await;
    let mut a = connect(&c.a, &alice, "").await;
    let mut b = connect(&c.b, &bob, "").await;
    a.send(
        "call_request",
        json!({"recipientId": bob.id, "callType": "audio", "callId": "silent-1"}),
    )
    .await;
    b.expect("call_request_full").await;
    b.send(
        "call_response",
        json!({"callId": "silent-1", "response": "accept"}),
    )
    .await;
    assert_eq!(a.expect("call_response_full").await["response"], "accept");
    a.close().await;
    // Node a has neither party now; bob is on node b.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, active) = c.a.get("/api/calls/active", &alice.token).await;
    assert_eq!(
        active["status"], "active",
        "bob is still there, on the other node"
    );
    b.close().await;
    eventually("the call ends", || async {
        c.a.get("/api/calls/active", &alice.token).await.0 == StatusCode::NOT_FOUND
    })
    .await;
    let (_, history) = c.b.get("/api/calls/history", &bob.token).await;
    assert_eq!(history[0]["status"], "ended");
}

/// With contacts by consent, a request accepted through one node is a contact on the other at
/// once: the other node's memory of the conversation (a request) is not trusted for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_accepted_on_one_node_is_a_contact_on_the_other() {
    let Some(c) = cluster_with(None, &[("CONTACTS_BY_CONSENT", "true")]).await else {
        return;
    };
    // Alice opens it on node a, which remembers it as her request.
    let (alice, bob, conversation) = alice_and_bob(&c.a).await;
    let mut a = connect(&c.a, &alice, "").await;
    let mut b = connect(&c.a, &bob, "").await;
    let typing =
        |is_typing: bool| json!({"conversationId": conversation["id"], "isTyping": is_typing});
    b.send("typing_indicator", typing(true)).await;
    // Handled (a socket's frames are, in order) before the acceptance below.
    b.expect_quiet().await;

    let path = format!(
        "/api/conversations/{}/accept",
        conversation["id"].as_str().expect("present")
    );
    let (status, body) = c.b.post(&path, &bob.token, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    b.send("typing_indicator", typing(false)).await;
    loop {
        let frame = a.recv().await;
        if frame["type"] == "typing_indicator" {
            assert_eq!(frame["payload"]["userId"], bob.id.as_str());
            assert_eq!(
                frame["payload"]["isTyping"], false,
                "the typing before acceptance leaked"
            );
            break;
        }
    }
    // Online, once node A is not (on a loaded machine) taken for dead meanwhile: see
    // `a_node_taken_for_dead_while_alive_puts_its_users_back_online`.
    eventually("alice sees bob online", || async {
        let (status, presence) =
            c.a.get(&format!("/api/presence/{}", bob.id), &alice.token)
                .await;
        assert_eq!(status, StatusCode::OK, "{presence}");
        presence["status"] == "online"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_call_signalling_cross_nodes() {
    let Some(c) = cluster().await else { return };
    let (alice, bob, conversation) = alice_and_bob(&c.a).await;
    let mut a = connect(&c.a, &alice, "").await;
    let mut b = connect(&c.b, &bob, "").await;

    a.send(
        "typing_indicator",
        json!({"conversationId": conversation["id"], "isTyping": true}),
    )
    .await;
    let typing = b.expect("typing_indicator").await;
    assert_eq!(typing["userId"], alice.id.as_str());
    assert_eq!(typing["isTyping"], true);

    a.send(
        "call_request",
        json!({"recipientId": bob.id, "callType": "audio", "callId": "cross-1"}),
    )
    .await;
    let ring = b.expect("call_request_full").await;
    assert_eq!(ring["callerId"], alice.id.as_str());
    b.send(
        "call_response",
        json!({"callId": "cross-1", "response": "accept"}),
    )
    .await;
    assert_eq!(a.expect("call_response_full").await["response"], "accept");
    a.send(
        "call_response",
        json!({"callId": "cross-1", "response": "end"}),
    )
    .await;
    assert_eq!(b.expect("call_response_full").await["response"], "end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_online_while_any_socket_on_any_node_is_open() {
    let Some(c) = cluster().await else { return };
    let (alice, bob, _) = alice_and_bob(&c.a).await;
    let mut a = connect(&c.a, &alice, "").await;

    let on_b = connect(&c.b, &bob, "").await;
    assert_eq!(presence_of(&mut a, &bob, WAIT).await, "online");
    let on_a = connect(&c.a, &bob, "").await;

    // The socket on B goes: bob still has one on A.
    on_b.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, presence) =
        c.b.get(&format!("/api/presence/{}", bob.id), &alice.token)
            .await;
    assert_eq!(presence["status"], "online");
    while let Some(frame) = a.try_recv(Duration::from_millis(200)).await {
        assert_ne!(frame["payload"]["status"], "offline", "{frame}");
    }

    // The last one goes: offline, everywhere.
    on_a.close().await;
    assert_eq!(presence_of(&mut a, &bob, WAIT).await, "offline");
    let (_, presence) =
        c.b.get(&format!("/api/presence/{}", bob.id), &alice.token)
            .await;
    assert_eq!(presence["status"], "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_closes_with_1001_and_its_users_lose_nothing_on_another() {
    let Some(c) = cluster().await else { return };
    let (alice, bob, _) = alice_and_bob(&c.a).await;
    let mut a = connect(&c.a, &alice, "").await;
    let mut b = connect(&c.b, &bob, "").await;
    let first = send(&mut a, &bob, "text").await;
    assert_eq!(b.expect("message").await["id"], first.as_str());

    // SIGTERM, as far as the node can tell.
    c.b.state.shutdown.cancel();
    assert_eq!(b.closed().await, Some(CloseCode::Away));
    let second = send(&mut a, &bob, "text").await;

    // The app reconnects through the load balancer, now to node A, without a cursor...
    let mut again = reconnect_to(c.a.addr, &bob, "").await;
    assert_eq!(again.expect("message").await["id"], second.as_str());
    let third = send(&mut a, &bob, "text").await;
    assert_eq!(again.expect("message").await["id"], third.as_str());
    // ...or with one: everything after it, in order.
    let mut device = reconnect_to(c.a.addr, &bob, "&since=1&device_id=2").await;
    let replay: Vec<Value> = vec![
        device.expect("message").await,
        device.expect("message").await,
    ];
    assert_eq!(replay[0]["id"], second.as_str());
    assert_eq!(replay[0]["cursor"], 2);
    assert_eq!(replay[1]["id"], third.as_str());
    assert_eq!(replay[1]["cursor"], 3);
}

/// Starts the server binary with `like`'s settings on a port of its own.
async fn spawn_process(like: &TestApp) -> ServerProcess {
    let process = ServerProcess::spawn(like);
    eventually("the process serves and reaches Redis", || async {
        redis_status(process.addr).await == "ok"
    })
    .await;
    process
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_takes_its_users_offline_within_the_ttl_and_they_lose_nothing() {
    let Some(c) = cluster().await else { return };
    let (alice, bob, _) = alice_and_bob(&c.a).await;
    let mut a = connect(&c.a, &alice, "").await;

    let mut process = spawn_process(&c.a).await;
    let mut b = connect_to(process.addr, &bob, "").await;
    assert_eq!(presence_of(&mut a, &bob, WAIT).await, "online");
    let first = send(&mut a, &bob, "text").await;
    let got = b.expect("message").await;
    assert_eq!(got["id"], first.as_str());
    let cursor = got["cursor"].as_i64().expect("cursor");

    // The node dies without a word: nobody closes bob's socket or writes his presence.
    process.child.kill().expect("kill the node");
    let _ = process.child.wait();
    assert_eq!(b.closed().await, None);
    // Survivors notice within the TTL (plus one sweep).
    let ttl = Duration::from_secs(TTL.parse().expect("ttl"));
    assert_eq!(presence_of(&mut a, &bob, ttl * 2 + WAIT).await, "offline");

    let second = send(&mut a, &bob, "text").await;
    let mut again = reconnect_to(c.a.addr, &bob, &format!("&since={cursor}")).await;
    let got = again.expect("message").await;
    assert_eq!(got["id"], second.as_str());
    assert_eq!(got["cursor"], cursor + 1);
    assert_eq!(presence_of(&mut a, &bob, WAIT).await, "online");
}

/// A node that refreshes its keys later than the TTL (a stall, a slow Redis) is taken for dead by
/// the others, which take its users offline; it notices at its next refresh and puts them back
/// online, though nothing happened to their sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_taken_for_dead_while_alive_puts_its_users_back_online() {
    let Some(c) = cluster().await else { return };
    let (alice, bob, _) = alice_and_bob(&c.a).await;
    let mut a = connect(&c.b, &alice, "").await;
    let mut b = connect(&c.a, &bob, "").await;
    assert_eq!(presence_of(&mut a, &bob, WAIT).await, "online");

    // Node A's keys expire as if it had stalled: tried until node B sweeps before node A's next
    // refresh writes them again (each has a third of the TTL).
    let prefix = &c.a.state.config.redis_prefix;
    let node = broker_status(&c.a).node;
    let node_key = format!("{prefix}:node:{node}");
    let online_key = format!("{prefix}:online:{}:{node}", bob.id);
    let ttl = Duration::from_secs(TTL.parse().expect("ttl"));
    let mut swept = false;
    for _ in 0..20 {
        let deleted = Command::new("redis-cli")
            .args(["-u", &redis_url(), "DEL", &node_key, &online_key])
            .output()
            .expect("redis-cli");
        assert!(deleted.status.success(), "{deleted:?}");
        if let Ok(status) = tokio::time::timeout(ttl / 2, presence_of(&mut a, &bob, ttl)).await {
            assert_eq!(status, "offline");
            swept = true;
            break;
        }
    }
    assert!(swept, "node B never took node A for dead");

    assert_eq!(presence_of(&mut a, &bob, ttl + WAIT).await, "online");
    let (status, presence) =
        c.b.get(&format!("/api/presence/{}", bob.id), &alice.token)
            .await;
    assert_eq!(status, StatusCode::OK, "{presence}");
    assert_eq!(presence["status"], "online");
    // Bob's socket was never touched.
    let id = send(&mut a, &bob, "text").await;
    assert_eq!(b.expect("message").await["id"], id.as_str());
}

/// A Redis of the test's own, to stop and start again on the same port.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    async fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the outage test");
        let redis = Self {
            port,
            child: Some(child),
        };
        eventually("the private Redis listens", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_local_delivery_goes_on_and_cross_node_delivery_resumes_after() {
    if !Engine::Postgres.available() {
        eprintln!("TEST_DATABASE_URL is not set: cluster tests (PostgreSQL only) not run");
        return;
    }
    let mut redis = PrivateRedis::start(free_port()).await;
    let Some(c) = cluster_on(Some(&redis.url())).await else {
        return;
    };
    let alice = c.a.register("alice").await;
    let bob = c.a.register("bob").await;
    let carol = c.a.register("carol").await;
    c.a.conversation(&alice, &bob).await;
    c.a.conversation(&alice, &carol).await;
    let mut a = connect(&c.a, &alice, "").await;
    let mut on_a = connect(&c.a, &carol, "").await;
    let mut on_b = connect(&c.b, &bob, "").await;
    let before = send(&mut a, &bob, "text").await;
    assert_eq!(on_b.expect("message").await["id"], before.as_str());

    redis.stop();
    for node in [&c.a, &c.b] {
        eventually("the node reports Redis down", || async {
            redis_status(node.addr).await == "down"
        })
        .await;
    }

    // Users of the same node still talk, live.
    let local = send(&mut a, &carol, "text").await;
    assert_eq!(on_a.expect("message").await["id"], local.as_str());
    // A message to another node's user is stored and acknowledged; it cannot ring over there.
    let during = send(&mut a, &bob, "text").await;

    // Redis comes back on the same address: the nodes resubscribe and refill from the store.
    let _redis = PrivateRedis::start(redis.port).await;
    let got = on_b.expect_within("message", WAIT * 3).await;
    assert_eq!(got["id"], during.as_str());
    assert_eq!(got["cursor"], 2);
    for node in [&c.a, &c.b] {
        eventually("the node reports Redis up", || async {
            redis_status(node.addr).await == "ok"
        })
        .await;
    }
    let after = send(&mut a, &bob, "text").await;
    assert_eq!(on_b.expect("message").await["id"], after.as_str());
    // Both ways: node B's publications reach node A again too.
    let back = send(&mut on_b, &alice, "text").await;
    assert_eq!(a.expect("message").await["id"], back.as_str());
    on_a.expect_quiet().await;
}

/// A socket of `user` (opened with `token`) on node B closes with 4001 once `revoke` (run
/// against node A) revoked its session.
async fn closes_on_b_when(
    c: &Cluster,
    user: &TestUser,
    token: &str,
    what: &str,
    revoke: impl AsyncFnOnce(&TestApp),
) {
    let session = TestUser {
        token: token.to_owned(),
        id: user.id.clone(),
        email: user.email.clone(),
        password: user.password.clone(),
    };
    let mut on_b = connect_to(c.b.addr, &session, "").await;
    revoke(&c.a).await;
    assert_eq!(
        on_b.closed().await,
        Some(CloseCode::Library(4001)),
        "{what} on node A closes the socket on node B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_revocation_on_one_node_closes_the_sockets_on_the_other() {
    let Some(c) = cluster().await else { return };

    let user = c.a.register("logout").await;
    closes_on_b_when(&c, &user, &user.token, "logout", async |a| {
        let (status, _) = a.post("/api/auth/logout", &user.token, json!({})).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    })
    .await;

    let user = c.a.register("logoutall").await;
    let (other_session, _) = c.a.new_session(&user).await;
    closes_on_b_when(&c, &user, &other_session, "logout-all", async |a| {
        let (status, _) = a.post("/api/auth/logout-all", &user.token, json!({})).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    })
    .await;

    let user = c.a.register("password").await;
    closes_on_b_when(&c, &user, &user.token, "a password change", async |a| {
        let body = json!({"current_password": user.password, "new_password": "a-new-password"});
        let (status, _) = a.post("/api/auth/password", &user.token, body).await;
        assert_eq!(status, StatusCode::OK);
    })
    .await;

    let user = c.a.register("reuse").await;
    let (token, refresh) = c.a.new_session(&user).await;
    closes_on_b_when(&c, &user, &token, "refresh-token reuse", async |a| {
        let body = json!({"refresh_token": refresh});
        let (status, renewed) = a
            .request(Method::POST, "/api/auth/refresh", None, Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::OK);
        // The rightful client moves on to its new token; the old one, shown again, is a copy
        // (within the retry grace too, once its successor was used).
        let next = json!({"refresh_token": renewed["refresh_token"]});
        let (status, _) = a
            .request(Method::POST, "/api/auth/refresh", None, Some(next))
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = a
            .request(Method::POST, "/api/auth/refresh", None, Some(body))
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "a copied refresh token came back"
        );
    })
    .await;

    let user = c.a.register("deleted").await;
    closes_on_b_when(&c, &user, &user.token, "account deletion", async |a| {
        a.delete_account(&user).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_a_deleted_account_is_refused_on_every_node_and_others_flow() {
    let Some(c) = cluster().await else { return };
    let alice = c.a.register("alice").await;
    let bob = c.a.register("bob").await;
    let carol = c.a.register("carol").await;
    let dave = c.a.register("dave").await;
    let mut on_a = connect(&c.a, &alice, "").await;
    let mut on_b = connect(&c.b, &carol, "").await;
    let mut bob_on_b = connect(&c.b, &bob, "").await;
    // Both nodes know (and keep in memory) a conversation with bob.
    send(&mut on_a, &bob, "text").await;
    send(&mut on_b, &bob, "text").await;

    c.a.delete_account(&bob).await;
    // Node B heard of it: his socket there closes.
    assert_eq!(bob_on_b.closed().await, Some(CloseCode::Library(4001)));

    for ws in [&mut on_a, &mut on_b] {
        ws.send(
            "message",
            json!({"recipientId": bob.id, "messageType": "text"}),
        )
        .await;
        let refused = ws.expect("error").await;
        assert_eq!(refused["code"], "not_found", "{refused}");
        // Traffic to others still commits and is acknowledged.
        send(ws, &dave, "text").await;
    }
    let (status, _) =
        c.b.post(
            "/api/conversations",
            &carol.token,
            json!({"participant_id": bob.id}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinking_a_device_on_one_node_closes_its_sockets_on_the_other() {
    let Some(c) = cluster().await else { return };
    let alice = c.a.register("alice").await;
    let (laptop, _) = crate::devices::login_as(&c.a, &alice, 2, Some("Laptop")).await;
    // On node B: the linked device's own session, an unbound session naming device 2, and
    // the primary.
    let mut bound = connect(&c.b, &laptop, "").await;
    let mut unbound = connect(&c.b, &alice, "&device_id=2").await;
    let mut primary = connect(&c.b, &alice, "").await;

    let (status, body) =
        c.a.request(Method::DELETE, "/api/devices/2", Some(&alice.token), None)
            .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(bound.closed().await, Some(CloseCode::Library(4001)));
    assert_eq!(unbound.closed().await, Some(CloseCode::Library(4001)));
    primary.expect_quiet().await;
    let (status, _) = c.b.get("/api/auth/me", &laptop.token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_revoked_while_its_socket_opens_gets_the_socket_closed() {
    let Some(c) = cluster().await else { return };
    let alice = c.a.register("alice").await;
    let database = c.a.settings()["DATABASE_URL"].clone();
    let db = sqlx::PgPool::connect(&database).await.expect("connect");

    // The upgrade checks the token (sessions, and users for a suspension), reads the inbox's
    // end, then marks the device seen (user_devices): holding `user_devices` stops it right
    // between the check and the socket being attached.
    let mut hold = db.begin().await.expect("begin");
    sqlx::query("LOCK TABLE user_devices IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .expect("lock user_devices");
    let request = format!("ws://{}/ws?token={}", c.b.addr, alice.token)
        .into_client_request()
        .expect("ws request");
    let opening = tokio::spawn(WsClient::connect(request));
    eventually("node B's upgrade waits on the lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE NOT l.granted AND l.relation = 'user_devices'::regclass
               AND a.query LIKE 'SELECT last_seen FROM user_devices%'",
        )
        .fetch_one(&db)
        .await
        .expect("pg_locks");
        waiting > 0
    })
    .await;

    // Signed out (on node A) after the check: no socket to close yet, anywhere.
    let (status, _) = c.a.post("/api/auth/logout", &alice.token, json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    hold.rollback().await.expect("release user_devices");

    let mut socket = opening
        .await
        .expect("task")
        .expect("the upgrade had passed");
    assert_eq!(socket.closed().await, Some(CloseCode::Library(4001)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doorbell_dropped_for_a_full_publish_queue_still_rings() {
    if !Engine::Postgres.available() {
        eprintln!("TEST_DATABASE_URL is not set: cluster tests (PostgreSQL only) not run");
        return;
    }
    let redis = PrivateRedis::start(free_port()).await;
    let Some(c) = cluster_with(Some(&redis.url()), &[("REDIS_PUBLISH_QUEUE", "1")]).await else {
        return;
    };
    let (alice, bob, _) = alice_and_bob(&c.a).await;
    let mut a = connect(&c.a, &alice, "").await;
    let mut b = connect(&c.b, &bob, "").await;
    let first = send(&mut a, &bob, "text").await;
    assert_eq!(b.expect("message").await["id"], first.as_str());

    // Redis stops answering for a second (within the broker's timeout: no outage): node A's
    // publisher waits on one doorbell, one more fits in its queue, the rest are dropped.
    let before = broker_status(&c.a);
    let outages = broker_status(&c.b).outages;
    let paused = Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "CLIENT",
            "PAUSE",
            "1000",
            "ALL",
        ])
        .output()
        .expect("redis-cli");
    assert!(paused.status.success(), "{paused:?}");
    // All at once: they commit together and ring within microseconds of each other.
    for _ in 0..5 {
        a.send(
            "message",
            json!({"recipientId": bob.id, "messageType": "text"}),
        )
        .await;
    }
    let mut sent = Vec::new();
    for _ in 0..5 {
        let ack = a.expect("message_ack").await;
        sent.push(ack["id"].as_str().expect("id").to_owned());
    }
    assert!(
        broker_status(&c.a).dropped > before.dropped,
        "doorbells were dropped"
    );

    // Bob gets every one of them, without a next event to notice the gap.
    for id in &sent {
        let got = b.expect_within("message", WAIT * 2).await;
        assert_eq!(got["id"], id.as_str());
    }
    // Not an outage's refill of every socket.
    assert_eq!(broker_status(&c.a).outages, before.outages);
    assert_eq!(broker_status(&c.b).outages, outages);
}

/// What the broker of `node` did so far.
fn broker_status(node: &TestApp) -> kisse_backend::broker::Status {
    node.state.hub.broker().expect("cluster mode").status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_published_while_a_node_was_unsubscribed_still_closes_its_sockets() {
    if !Engine::Postgres.available() {
        eprintln!("TEST_DATABASE_URL is not set: cluster tests (PostgreSQL only) not run");
        return;
    }
    let redis = PrivateRedis::start(free_port()).await;
    let Some(c) = cluster_on(Some(&redis.url())).await else {
        return;
    };
    let alice = c.a.register("alice").await;
    let mut on_b = connect(&c.b, &alice, "").await;

    // Node B's subscription breaks (the one with alice's channel: control plus hers; node A
    // listens to the control channel only), and the logout on node A goes out meanwhile.
    let port = redis.port.to_string();
    let redis_cli = |args: &[&str]| {
        let output = Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("redis-cli");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let clients = redis_cli(&["CLIENT", "LIST", "TYPE", "pubsub"]);
    let node_b = clients
        .lines()
        .find(|line| line.contains(" sub=2 "))
        .and_then(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .unwrap_or_else(|| panic!("node B's subscription among {clients}"))
        .to_owned();
    assert_eq!(redis_cli(&["CLIENT", "KILL", "ID", &node_b]).trim(), "1");
    let (status, _) = c.a.post("/api/auth/logout", &alice.token, json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Node B missed it, but checks its sessions when it subscribes again.
    assert_eq!(on_b.closed().await, Some(CloseCode::Library(4001)));
}

/// A device's envelope sent on one node reaches that device's socket on the other at once (and
/// no other device's socket); its ack there deletes it for every node and tells the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_crosses_nodes_to_its_device_only_and_an_ack_anywhere_deletes_it() {
    let Some(c) = cluster().await else { return };
    let (alice, bob, _) = alice_and_bob(&c.a).await;
    for device in [1, 2] {
        crate::envelopes::link_device(&c.a, &bob, device).await;
    }
    // Named sockets: `queue_empty` first, then the heartbeat proves the node routes to them.
    let open = |addr, user, query| async move {
        let mut ws = reconnect_to(addr, user, query).await;
        ws.expect("queue_empty").await;
        ws.expect_quiet().await;
        ws
    };
    let mut phone = open(c.a.addr, &bob, "&device_id=1").await;
    let mut tablet = open(c.b.addr, &bob, "&device_id=2").await;
    let mut sender = open(c.a.addr, &alice, "&device_id=1").await;

    let id = Uuid::now_v7();
    let envelope = |device: i64| json!({"deviceId": device, "type": 1, "content": STANDARD_B64[device as usize]});
    sender
        .send(
            "message",
            json!({"recipientId": bob.id, "messageType": "signal", "id": id,
                   "envelopes": [envelope(1), envelope(2)]}),
        )
        .await;
    sender.expect("message_ack").await;
    for (socket, device) in [(&mut tablet, 2), (&mut phone, 1)] {
        let frame = socket.expect("message").await;
        assert_eq!(frame["id"], id.to_string());
        assert_eq!(frame["deviceId"], device);
        assert_eq!(frame["envelope"]["content"], STANDARD_B64[device as usize]);
        socket.expect_silent().await;
    }

    tablet.send("ack", json!({"id": id})).await;
    let receipt = sender.expect("delivery_receipt").await;
    assert_eq!(
        (receipt["messageId"].as_str(), receipt["deviceId"].as_i64()),
        (Some(id.to_string().as_str()), Some(2))
    );
    tablet.expect_quiet().await;
    tablet.close().await;
    phone.close().await;
    // Acknowledged on B: gone on A too. Not acknowledged on A: sent again on B.
    let mut tablet = reconnect_to(c.a.addr, &bob, "&device_id=2").await;
    tablet.expect("queue_empty").await;
    let mut phone = reconnect_to(c.b.addr, &bob, "&device_id=1").await;
    assert_eq!(phone.expect("message").await["id"], id.to_string());
    phone.expect("queue_empty").await;
}

/// Base64 ciphertexts of devices 1 and 2 (index 0 unused).
const STANDARD_B64: [&str; 3] = ["", "AQEBAQ==", "AgICAg=="];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_suspension_on_one_node_closes_the_socket_on_the_other_and_stats_count_both() {
    use super::admin::{ADMIN_TOKEN, admin, stats};
    let Some(c) = cluster_with(None, &[("ADMIN_TOKEN", ADMIN_TOKEN)]).await else {
        return;
    };
    let alice = c.a.register("alice").await;
    let bob = c.a.register("bob").await;
    let mut alice_on_b = connect(&c.b, &alice, "").await;
    let _bob_on_a = connect(&c.a, &bob, "").await;
    let _bob_on_b = connect(&c.b, &bob, "").await;

    // Either node answers for both: a's one socket and b's two.
    let node_of = |node: &TestApp| broker_status(node).node;
    for (asked, here, other, there) in [(&c.a, 1, &c.b, 2), (&c.b, 2, &c.a, 1)] {
        let expected = json!([
            {"node": node_of(other), "sockets": there, "this": false},
            {"node": node_of(asked), "sockets": here, "this": true},
        ]);
        eventually("each node's sockets are published", || async {
            let stats = stats(asked).await;
            stats["nodes"] == expected && stats["sockets"] == 3
        })
        .await;
    }

    let suspend = format!("/api/admin/users/{}/suspend", alice.id);
    let (status, body) = admin(&c.a, Method::POST, &suspend).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        alice_on_b.closed().await,
        Some(CloseCode::Library(4001)),
        "a suspension on node A closes her socket on node B"
    );
    let credentials = json!({"email": alice.email, "password": alice.password});
    let (status, body) =
        c.b.request(Method::POST, "/api/auth/login", None, Some(credentials))
            .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "suspended");
    eventually("node B counts one socket less", || async {
        stats(&c.a).await["sockets"] == 2
    })
    .await;
}
