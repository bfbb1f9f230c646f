//! TURN credentials (`GET /api/calls/turn`): checked by a real coturn, started here on loopback
//! with the same shared secret, that allocates a relay with a credential the server handed out
//! and refuses a forged, borrowed or expired one.

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use kisse_backend::domain::turn::CREDENTIALS_PER_MINUTE;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha1::Sha1;
use tokio::process::{Child, Command};

use super::limits::assert_rate_limited;
use crate::common::{Engine, LogCapture, TestApp, TestUser};

scenarios!(
    without_turn_settings_the_endpoint_is_404_turn_unavailable,
    credentials_name_the_caller_and_expire_after_the_ttl,
    coturn_allocates_a_relay_with_a_credential_and_refuses_forged_borrowed_or_expired_ones,
    credentials_are_rate_limited_per_user,
);

const SECRET: &str = "turn-shared-secret-for-tests";
/// Longest a coturn start or a client run may take.
const TURN_WAIT: Duration = Duration::from_secs(20);

/// base64(HMAC-SHA-1(secret, username)): what coturn computes with `use-auth-secret`.
fn hmac_sha1(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn turn_credentials(app: &TestApp, user: &TestUser) -> Value {
    let (status, body) = app.get("/api/calls/turn", &user.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn without_turn_settings_the_endpoint_is_404_turn_unavailable(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let alice = app.register("alice").await;
    let (status, body) = app.get("/api/calls/turn", &alice.token).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "turn_unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("TURN")),
        "{body}"
    );
    let (status, body) = app
        .request(Method::GET, "/api/calls/turn", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

async fn credentials_name_the_caller_and_expire_after_the_ttl(engine: Engine) {
    let capture = LogCapture::start();
    let uris = "turn:turn.example.com:3478?transport=udp, turns:turn.example.com:5349,stun:stun.example.com";
    let app = TestApp::spawn_with(
        engine,
        &[
            ("TURN_URIS", uris),
            ("TURN_SECRET", SECRET),
            ("TURN_TTL", "600"),
        ],
    )
    .await;
    let alice = app.register("alice").await;
    let (status, _) = app
        .request(Method::GET, "/api/calls/turn", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let before = unix_now();
    let body = turn_credentials(&app, &alice).await;
    let after = unix_now();
    assert_eq!(
        body["urls"],
        serde_json::json!([
            "turn:turn.example.com:3478?transport=udp",
            "turns:turn.example.com:5349",
            "stun:stun.example.com"
        ]),
        "{body}"
    );
    assert_eq!(body["ttl"], 600, "{body}");
    let username = body["username"].as_str().expect("username");
    let (expiry, user) = username.split_once(':').expect("<expiry>:<user id>");
    assert_eq!(user, alice.id, "{body}");
    let expiry: i64 = expiry.parse().expect("unix time");
    assert!(
        (before + 600..=after + 600).contains(&expiry),
        "{expiry} not now + 600"
    );
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().expect("expires_at"))
            .expect("RFC 3339");
    assert_eq!(expires_at.timestamp(), expiry, "{body}");
    let credential = body["credential"].as_str().expect("credential");
    assert_eq!(credential, hmac_sha1(SECRET, username), "{body}");

    // Another user's credential names them.
    let bob = app.register("bob").await;
    let theirs = turn_credentials(&app, &bob).await;
    assert!(
        theirs["username"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!(":{}", bob.id))),
        "{theirs}"
    );

    let logs = capture.text();
    for secret in [SECRET, credential] {
        assert!(!logs.contains(secret), "{secret} logged");
    }
}

async fn credentials_are_rate_limited_per_user(engine: Engine) {
    let app = TestApp::spawn_with(
        engine,
        &[
            ("TURN_URIS", "turn:turn.example.com"),
            ("TURN_SECRET", SECRET),
        ],
    )
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    // The burst is the minute's budget.
    for _ in 0..CREDENTIALS_PER_MINUTE {
        turn_credentials(&app, &alice).await;
    }
    let response = app
        .http
        .get(app.url("/api/calls/turn"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("request");
    assert_rate_limited(response).await;
    // Others have their own budget.
    turn_credentials(&app, &bob).await;
}

async fn coturn_allocates_a_relay_with_a_credential_and_refuses_forged_borrowed_or_expired_ones(
    engine: Engine,
) {
    let coturn = Coturn::start(SECRET).await;
    let uri = format!("turn:127.0.0.1:{}?transport=udp", coturn.port);
    let app = TestApp::spawn_with(engine, &[("TURN_URIS", &uri), ("TURN_SECRET", SECRET)]).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let body = turn_credentials(&app, &alice).await;
    // The client reaches the TURN server the answer names.
    let url = body["urls"][0].as_str().expect("url");
    let port: u16 = url
        .strip_prefix("turn:127.0.0.1:")
        .and_then(|rest| rest.split('?').next())
        .and_then(|p| p.parse().ok())
        .expect("turn:127.0.0.1:<port>");
    let username = body["username"].as_str().expect("username");
    let credential = body["credential"].as_str().expect("credential");

    coturn.assert_allocates(port, username, credential).await;

    // One character of the credential changed.
    let mut forged = credential.to_owned();
    let first = if forged.starts_with('A') { "B" } else { "A" };
    forged.replace_range(..1, first);
    coturn.assert_refused(port, username, &forged).await;
    // Alice's credential under Bob's name.
    let (expiry, _) = username.split_once(':').expect("<expiry>:<user id>");
    let borrowed = format!("{expiry}:{}", bob.id);
    coturn.assert_refused(port, &borrowed, credential).await;
    // Rightly signed, but expired a minute ago.
    let expired = format!("{}:{}", unix_now() - 60, alice.id);
    coturn
        .assert_refused(port, &expired, &hmac_sha1(SECRET, &expired))
        .await;
    // A secret other than the TURN server's signs nothing it accepts.
    let other = TestApp::spawn_with(
        engine,
        &[
            ("TURN_URIS", &uri),
            ("TURN_SECRET", "not-the-turn-servers-secret"),
        ],
    )
    .await;
    let carol = other.register("carol").await;
    let body = turn_credentials(&other, &carol).await;
    coturn
        .assert_refused(
            port,
            body["username"].as_str().expect("username"),
            body["credential"].as_str().expect("credential"),
        )
        .await;
}

/// A coturn `turnserver` on a free loopback port, checking credentials with the shared secret
/// (`use-auth-secret`); killed when dropped.
struct Coturn {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Coturn {
    async fn start(secret: &str) -> Self {
        if !on_path("turnserver") || !on_path("turnutils_uclient") {
            panic!(
                "coturn is not installed (turnserver, turnutils_uclient): apt-get install coturn"
            );
        }
        let dir = std::env::temp_dir().join(format!("kisse-coturn-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("coturn dir");
        let port = free_port();
        let log = std::fs::File::create(dir.join("turnserver.log")).expect("coturn log");
        let child = Command::new("turnserver")
            .args([
                "-n", // no configuration file
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--use-auth-secret",
                &format!("--static-auth-secret={secret}"),
                "--realm=kisse.test",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                // Both test clients, and so the peers relayed to, are on loopback.
                "--allow-loopback-peers",
                "--log-file=stdout",
                "--simple-log",
                &format!("--pidfile={}", dir.join("turnserver.pid").display()),
                &format!("--userdb={}", dir.join("turndb").display()),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start turnserver");
        let mut coturn = Self { port, dir, child };
        // Listening once its TCP listener (opened with the UDP one) accepts.
        let ready = tokio::time::timeout(TURN_WAIT, async {
            loop {
                if let Ok(Some(status)) = coturn.child.try_wait() {
                    return Err(status);
                }
                if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => coturn,
            Ok(Err(status)) => panic!("turnserver exited ({status}):\n{}", coturn.log()),
            Err(_) => panic!("turnserver did not listen in time:\n{}", coturn.log()),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
    }

    /// Runs `turnutils_uclient` (two clients relaying to each other over UDP, one message
    /// each): its exit status and output.
    async fn allocate(&self, port: u16, username: &str, credential: &str) -> (bool, String) {
        let run = Command::new("turnutils_uclient")
            .args(["-v", "-y", "-c", "-n", "1"])
            .args(["-p", &port.to_string(), "-u", username, "-w", credential])
            .arg("127.0.0.1")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(TURN_WAIT, run)
            .await
            .expect("turnutils_uclient finished in time")
            .expect("run turnutils_uclient");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    async fn assert_allocates(&self, port: u16, username: &str, credential: &str) {
        let (success, output) = self.allocate(port, username, credential).await;
        assert!(
            success && output.contains("Received relay addr: 127.0.0.1:"),
            "no relay for a fresh credential:\n{output}\nturnserver:\n{}",
            self.log()
        );
        // Both clients' messages went through the relays.
        assert!(output.contains("tot_recv_msgs=2"), "{output}");
    }

    async fn assert_refused(&self, port: u16, username: &str, credential: &str) {
        let (success, output) = self.allocate(port, username, credential).await;
        assert!(
            !success && !output.contains("Received relay addr"),
            "{username} was given a relay:\n{output}"
        );
        assert!(output.contains("Cannot complete Allocation"), "{output}");
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A loopback port free for both UDP and TCP right now (coturn listens on both).
fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}
