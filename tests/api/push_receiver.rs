//! A real Web Push receiver for the push tests: `tests/push/receiver.py` as a child process on
//! loopback. It decrypts with Python's `http_ece` and checks VAPID tokens with `cryptography`
//! (code that is not ours), and records every request, which the tests then read through its
//! control API. Its Python packages live in a virtualenv under `target/`, installed at the
//! pinned versions of `tests/push/requirements.txt` once and reused while that file is unchanged.
//!
//! Without Python, a virtualenv or PyPI the tests PANIC: a push test that skipped silently would
//! prove nothing.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use crate::venv::Venv;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The receiver's Python and its packages, installed once per test binary run.
static PYTHON: Venv = Venv::new("push-venv", "tests/push/requirements.txt", "the push tests");

pub struct PushReceiver {
    base: String,
    http: reqwest::Client,
    /// Killed when the receiver is dropped; its standard input closing also stops it.
    _child: Child,
}

/// A browser's push subscription, made by the receiver: where to push and the keys to
/// encrypt for.
#[derive(Clone, Debug)]
pub struct Subscription {
    pub id: String,
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
}

impl Subscription {
    /// The body of `PUT /api/devices/{id}/push` that registers this subscription.
    pub fn registration(&self) -> Value {
        json!({
            "kind": "webpush",
            "endpoint": self.endpoint,
            "keys": {"p256dh": self.p256dh, "auth": self.auth},
        })
    }
}

impl PushReceiver {
    /// Starts a receiver on 127.0.0.1 (an ephemeral port), installing its packages first if
    /// needed.
    pub async fn start() -> Self {
        let python = python().await;
        let mut child = Command::new(&python)
            .arg(script())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script().display()));
        let stdout = child.stdout.take().expect("receiver stdout");
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("the push receiver prints its port within 30 s")
        .expect("read the receiver's port line");
        let port = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .unwrap_or_else(|| panic!("the push receiver printed {line:?}, not {{\"port\": N}}"));
        Self {
            base: format!("http://127.0.0.1:{port}"),
            http: crate::common::http_client(),
            _child: child,
        }
    }

    /// `http://127.0.0.1:N`: the origin of every endpoint of this receiver.
    pub fn origin(&self) -> &str {
        &self.base
    }

    /// A new subscription (a fresh P-256 key pair and auth secret), answering 201 until told
    /// otherwise.
    pub async fn subscribe(&self) -> Subscription {
        let body = self
            .control(reqwest::Method::POST, "/_subscriptions", None)
            .await;
        let text = |v: &Value| v.as_str().expect("a string").to_owned();
        Subscription {
            id: text(&body["id"]),
            endpoint: text(&body["endpoint"]),
            p256dh: text(&body["keys"]["p256dh"]),
            auth: text(&body["keys"]["auth"]),
        }
    }

    /// How the subscription's endpoint answers from now on: `{"status": 410}`,
    /// `{"status": 429, "retry_after": 1}`, `{"status": 307, "location": …}`, `{"hang": true}`
    /// (takes the request and never answers until the mode changes), `{}` for 201.
    pub async fn set_mode(&self, id: &str, mode: Value) {
        self.control(
            reqwest::Method::POST,
            &format!("/_subscriptions/{id}/mode"),
            Some(mode),
        )
        .await;
    }

    /// Every push received for the subscription so far, in order: `path`, `headers` (lower-case
    /// names), `encoding`, `plaintext`, `error` (a failed decryption), `vapid` (`valid`, `k`,
    /// `claims`, `error`, or null without an Authorization header) and `answered` (the status,
    /// null while hanging).
    pub async fn received(&self, id: &str) -> Vec<Value> {
        let body = self
            .control(
                reqwest::Method::GET,
                &format!("/_subscriptions/{id}/received"),
                None,
            )
            .await;
        body.as_array().expect("a list").clone()
    }

    /// Polls until at least `n` pushes were received for the subscription; panics after
    /// `timeout`, with what did arrive.
    pub async fn wait_received(&self, id: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received(id).await;
            if received.len() >= n {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "{n} push(es) expected for {id} within {timeout:?}, {} received: {received:#?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits `quiet`, then checks that still exactly `n` pushes were received for the
    /// subscription (nothing more came meanwhile).
    pub async fn assert_count_stays(&self, id: &str, n: usize, quiet: Duration) -> Vec<Value> {
        tokio::time::sleep(quiet).await;
        let received = self.received(id).await;
        assert_eq!(
            received.len(),
            n,
            "exactly {n} push(es) expected for {id}: {received:#?}"
        );
        received
    }

    /// Every request made to the receiver outside its control API, any path and method.
    pub async fn requests(&self) -> Vec<Value> {
        let body = self.control(reqwest::Method::GET, "/_requests", None).await;
        body.as_array().expect("a list").clone()
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = (self.http.request(method, format!("{}{path}", self.base)))
            .timeout(Duration::from_secs(10));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("push receiver reachable");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON from the push receiver");
        assert!(status.is_success(), "push receiver {path}: {status} {body}");
        body
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/push/receiver.py")
}

/// The virtualenv's Python, the virtualenv made first if missing or stale.
pub async fn python() -> PathBuf {
    PYTHON.python().await
}

/// Runs `receiver.py` with `args` (its one-shot modes) and returns its last stdout line as JSON.
async fn receiver_tool(args: &[&str]) -> Value {
    let output = Command::new(python().await)
        .arg(script())
        .args(args)
        .output()
        .await
        .expect("run receiver.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "receiver.py {args:?}: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a JSON line")
}

/// The receiver is trustworthy before it judges the server: it decrypts RFC 8291's published
/// message, and a message encrypted and signed by code that is not the server's (http_ece and
/// `cryptography` in `receiver.py --send`); it reports a bad VAPID signature as invalid, records
/// plain bodies, answers as its mode says, hangs when told, and lists every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_decrypts_an_independent_senders_pushes_and_checks_vapid() {
    assert_eq!(
        receiver_tool(&["--selftest"]).await,
        json!({"selftest": "ok"})
    );

    let receiver = PushReceiver::start().await;
    let sub = receiver.subscribe().await;
    assert!(sub.endpoint.starts_with(receiver.origin()), "{sub:?}");
    assert_eq!(sub.registration()["keys"]["auth"], sub.auth.as_str());
    for extra in [None, Some("--bad-signature")] {
        let mut args = vec!["--send", &sub.endpoint, &sub.p256dh, &sub.auth];
        args.extend(extra);
        assert_eq!(receiver_tool(&args).await, json!({"status": 201}));
    }
    receiver
        .wait_received(&sub.id, 2, Duration::from_secs(5))
        .await;
    let received = receiver
        .assert_count_stays(&sub.id, 2, Duration::from_millis(100))
        .await;
    for push in &received {
        assert_eq!(push["encoding"], "aes128gcm", "{push}");
        assert_eq!(push["error"], Value::Null, "{push}");
        assert_eq!(
            push["plaintext"], r#"{"type": "selftest", "via": "http_ece"}"#,
            "{push}"
        );
        assert_eq!(push["vapid"]["claims"]["aud"], receiver.origin(), "{push}");
        assert_eq!(push["answered"], 201);
    }
    assert_eq!(received[0]["vapid"]["valid"], true, "{}", received[0]);
    assert_eq!(received[1]["vapid"]["valid"], false, "{}", received[1]);
    let error = received[1]["vapid"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("bad signature"), "{error}");

    // Another subscription's keys do not decrypt this one's pushes.
    let other = receiver.subscribe().await;
    let args = ["--send", &other.endpoint, &sub.p256dh, &sub.auth];
    assert_eq!(receiver_tool(&args).await, json!({"status": 201}));
    let received = receiver
        .wait_received(&other.id, 1, Duration::from_secs(5))
        .await;
    assert_eq!(received[0]["plaintext"], Value::Null);
    assert!(received[0]["error"].is_string(), "{}", received[0]);

    // Plain bodies (UnifiedPush) are recorded as they are; modes shape the answers.
    let http = reqwest::Client::new();
    let post = || http.post(&sub.endpoint).body("plain body");
    receiver
        .set_mode(&sub.id, json!({"status": 429, "retry_after": 1}))
        .await;
    let response = post().send().await.expect("push");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let elsewhere = format!("{}/elsewhere", receiver.origin());
    receiver
        .set_mode(&sub.id, json!({"status": 307, "location": elsewhere}))
        .await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = no_redirects
        .post(&sub.endpoint)
        .body("plain body")
        .send()
        .await
        .expect("push");
    assert_eq!(response.status(), 307);
    assert_eq!(response.headers()["location"], elsewhere.as_str());

    // A hanging endpoint answers nothing until its mode changes: the client's timeout cuts it.
    receiver.set_mode(&sub.id, json!({"hang": true})).await;
    let cut = post().timeout(Duration::from_millis(300)).send().await;
    assert!(cut.is_err_and(|e| e.is_timeout()), "the hang was answered");
    receiver.set_mode(&sub.id, json!({})).await;
    assert_eq!(post().send().await.expect("push").status(), 201);

    let received = receiver.received(&sub.id).await;
    let answered: Vec<Value> = received[2..]
        .iter()
        .map(|r| r["answered"].clone())
        .collect();
    // The hanging request (the third) is answered once the mode changes, to a client gone by
    // then, perhaps not yet.
    assert_eq!(answered.len(), 4, "{received:#?}");
    assert_eq!(answered[..2], [json!(429), json!(307)]);
    assert_eq!(answered[3], json!(201));
    for push in &received[2..] {
        assert_eq!(push["plaintext"], "plain body");
        assert_eq!(push["encoding"], Value::Null);
        assert_eq!(push["vapid"], Value::Null);
    }
    let paths: Vec<Value> = receiver
        .requests()
        .await
        .iter()
        .map(|r| r["path"].clone())
        .collect();
    assert_eq!(paths.len(), 7, "{paths:?}");
    assert!(!paths.contains(&json!("/elsewhere")), "{paths:?}");
}
