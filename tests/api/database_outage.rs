//! PostgreSQL going away under steady traffic and coming back, on a private PostgreSQL server
//! the test stops and starts: senders get `error` frames (never an ack) for what could not be
//! committed, `/ready` answers 503 meanwhile, and once the database is back routing resumes by
//! itself, with every acknowledged message delivered exactly once.
//!
//! The server is started from the PostgreSQL binaries (`PG_BIN_DIR`, or the newest
//! `/usr/lib/postgresql/*/bin`), as the `postgres` user when the test runs as root (PostgreSQL
//! refuses to run as root). Without the binaries the test is skipped with a note, unless
//! `TEST_DATABASE_URL` is set (as in CI): then it fails.

use std::{
    collections::{HashMap, HashSet},
    net::TcpListener,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::PathBuf,
    process::{Command, Output},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::common::{TestApp, TestUser, WAIT};
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};
use tokio_tungstenite::{connect_async, tungstenite::Message};
use uuid::Uuid;

/// A PostgreSQL server of the test's own, in a temporary directory, on a port of its own.
struct PrivatePostgres {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
}

/// The PostgreSQL binaries: `PG_BIN_DIR`, or the newest `/usr/lib/postgresql/<version>/bin`.
fn postgres_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return Some(dir.into());
    }
    let versions = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    versions
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

/// PostgreSQL refuses to run as root: its commands then run as the `postgres` user.
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn check(what: &str, output: std::io::Result<Output>) {
    let output = output.unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PrivatePostgres {
    /// Creates a cluster and starts it; `None` (with a note) when the binaries are missing and
    /// the test may be skipped.
    async fn start() -> Option<Self> {
        let Some(bin) = postgres_bin_dir().filter(|bin| bin.join("pg_ctl").exists()) else {
            assert!(
                std::env::var("TEST_DATABASE_URL").is_err(),
                "TEST_DATABASE_URL is set but no PostgreSQL binaries were found (set PG_BIN_DIR \
                 or install the postgresql package): the outage test cannot run"
            );
            eprintln!("no PostgreSQL binaries (PG_BIN_DIR): database outage test not run");
            return None;
        };
        let root = std::env::temp_dir().join(format!("kisse-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir(&root).expect("temporary directory");
        // The `postgres` user creates its data directory (and socket) in here.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777))
            .expect("open the temporary directory");
        let postgres = Self {
            root,
            bin,
            port: free_port(),
        };
        let data = postgres.data();
        let initdb = postgres
            .command("initdb")
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "--no-locale"])
            .args(["-E", "UTF8", "-D"])
            .arg(&data)
            .output();
        tokio::task::spawn_blocking(move || check("initdb", initdb))
            .await
            .expect("initdb");
        postgres.start_again().await;
        Some(postgres)
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl` with `args`, waiting for it (and for the server to start or stop).
    async fn pg_ctl(&self, args: &[&str]) -> std::io::Result<Output> {
        let mut command = self.command("pg_ctl");
        command.arg("-D").arg(self.data()).args(["-w", "-t", "60"]);
        command.args(args);
        tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("pg_ctl")
    }

    async fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.root.display()
        );
        let log = self.root.join("log").display().to_string();
        let started = self.pg_ctl(&["-l", &log, "-o", &options, "start"]).await;
        check("pg_ctl start", started);
    }

    /// Stops the server the way a restart does (fast shutdown: sessions are cut at once).
    async fn stop(&self) {
        check("pg_ctl stop", self.pg_ctl(&["-m", "fast", "stop"]).await);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// What the two users' sockets saw.
#[derive(Default)]
struct Log {
    /// Ids of the messages Alice sent, in order.
    sent: Vec<String>,
    /// Alice's answers, in order (one per message sent): `Some(id)` for an ack, `None` for an
    /// `error` frame.
    answers: Vec<Option<String>>,
    /// Messages whose `delivery_receipt` reached Alice (their delivery is recorded).
    receipts: HashSet<String>,
    /// Messages pushed to Bob, on all his sockets, in order.
    received: Vec<String>,
    /// Close codes of Bob's sockets (`None`: closed without a close frame).
    bob_closed: Vec<Option<u16>>,
    alice_closed: bool,
}

type Shared = Arc<Mutex<Log>>;

fn log(shared: &Shared) -> std::sync::MutexGuard<'_, Log> {
    shared.lock().expect("log")
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `user`'s socket as the app does, `since` a cursor if given; `None` while the server
/// refuses (its database is down, say).
async fn open(app: &TestApp, user: &TestUser, since: Option<i64>) -> Option<Socket> {
    let mut url = format!("ws://{}/ws?token={}", app.addr, user.token);
    if let Some(cursor) = since {
        url.push_str(&format!("&since={cursor}"));
    }
    match tokio::time::timeout(WAIT, connect_async(url)).await {
        Ok(Ok((socket, _))) => Some(socket),
        _ => None,
    }
}

fn text(message: Message) -> Option<Value> {
    match message {
        Message::Text(text) => serde_json::from_str(text.as_str()).ok(),
        _ => None,
    }
}

/// Alice's side: reads her answers and receipts into the log.
async fn read_alice(mut stream: futures_util::stream::SplitStream<Socket>, shared: Shared) {
    while let Some(Ok(message)) = stream.next().await {
        if let Message::Close(_) = message {
            break;
        }
        let Some(frame) = text(message) else { continue };
        let payload = &frame["payload"];
        let id = || payload["id"].as_str().map(str::to_owned);
        match frame["type"].as_str() {
            Some("message_ack") => log(&shared).answers.push(Some(id().expect("ack id"))),
            Some("error") => log(&shared).answers.push(None),
            Some("delivery_receipt") => {
                let id = payload["messageId"].as_str().expect("receipt id");
                log(&shared).receipts.insert(id.to_owned());
            }
            _ => {}
        }
    }
    log(&shared).alice_closed = true;
}

/// Alice's side: one message to Bob every 25 ms until `stop`.
async fn send_steadily(
    mut sink: futures_util::stream::SplitSink<Socket, Message>,
    bob: String,
    shared: Shared,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let id = Uuid::new_v4().to_string();
        let frame = json!({"type": "message", "payload": {
            "id": id, "recipientId": bob, "messageType": "text", "sessionId": "s"}});
        log(&shared).sent.push(id);
        if sink
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
        sleep(Duration::from_millis(25)).await;
    }
}

/// Bob's side, as the app: reads what is pushed to him; when the server closes the socket, he
/// reconnects (from his last cursor) until `stop`.
async fn read_bob(app: Arc<TestApp>, bob: TestUser, shared: Shared, stop: Arc<AtomicBool>) {
    let mut cursor = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(mut socket) = open(&app, &bob, cursor).await else {
            sleep(Duration::from_millis(200)).await;
            continue;
        };
        let code = loop {
            let next = tokio::select! {
                next = socket.next() => next,
                _ = sleep(Duration::from_millis(100)) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
                Some(Ok(message)) => {
                    let Some(frame) = text(message) else { continue };
                    if frame["type"] == "message" {
                        let payload = &frame["payload"];
                        cursor = payload["cursor"].as_i64().or(cursor);
                        let id = payload["id"].as_str().expect("message id").to_owned();
                        log(&shared).received.push(id);
                    }
                }
                Some(Err(_)) | None => break None,
            }
        };
        log(&shared).bob_closed.push(code);
    }
}

async fn ready_status(app: &TestApp) -> StatusCode {
    app.request(Method::GET, "/ready", None, None).await.0
}

/// Polls `check` every 50 ms until it holds; fails with `what` after `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_what_it_must_and_routing_resumes_exactly_once_after() {
    let Some(postgres) = PrivatePostgres::start().await else {
        return;
    };
    let app = Arc::new(TestApp::spawn_on_database(&postgres.url(), &[]).await);
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    app.conversation(&alice, &bob).await;
    let shared = Shared::default();
    let stop_sending = Arc::new(AtomicBool::new(false));
    let stop_reading = Arc::new(AtomicBool::new(false));

    let bob_reader = tokio::spawn(read_bob(
        app.clone(),
        clone_user(&bob),
        shared.clone(),
        stop_reading.clone(),
    ));
    let (sink, stream) = open(&app, &alice, None)
        .await
        .expect("alice's socket")
        .split();
    let alice_reader = tokio::spawn(read_alice(stream, shared.clone()));
    let sender = tokio::spawn(send_steadily(
        sink,
        bob.id.clone(),
        shared.clone(),
        stop_sending.clone(),
    ));
    let acks = || log(&shared).answers.iter().flatten().count();
    eventually("steady traffic is acknowledged", WAIT * 2, || async {
        acks() >= 20
    })
    .await;

    // The database goes away under traffic.
    postgres.stop().await;
    let down_from = log(&shared).sent.len();
    eventually("/ready reports the database down", WAIT * 2, || async {
        ready_status(&app).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    sleep(Duration::from_secs(2)).await;
    let down_until = log(&shared).sent.len();
    // Every message sent while it is down is answered while it is still down (with an error),
    // within seconds: the sender is not left waiting.
    eventually(
        "the sender hears about the messages sent while the database is down",
        WAIT * 2,
        || async { log(&shared).answers.len() >= down_until },
    )
    .await;
    {
        let log = log(&shared);
        let acked_while_down: Vec<_> = log.answers[down_from..down_until]
            .iter()
            .flatten()
            .collect();
        assert!(
            acked_while_down.is_empty(),
            "acked while the database was down: {acked_while_down:?}"
        );
        assert!(down_until > down_from, "traffic went on during the outage");
    }
    assert_eq!(ready_status(&app).await, StatusCode::SERVICE_UNAVAILABLE);

    // It comes back: routing resumes by itself, within seconds.
    postgres.start_again().await;
    let back_from = log(&shared).sent.len();
    eventually("/ready reports the database back", WAIT * 2, || async {
        ready_status(&app).await == StatusCode::OK
    })
    .await;
    eventually(
        "messages sent after the database came back are acknowledged",
        WAIT * 2,
        || async {
            let log = log(&shared);
            log.answers.len() > back_from && log.answers[back_from..].iter().any(Option::is_some)
        },
    )
    .await;
    sleep(Duration::from_secs(1)).await;
    stop_sending.store(true, Ordering::Relaxed);
    sender.await.expect("sender");
    eventually("every message is answered", WAIT * 3, || async {
        let log = log(&shared);
        log.answers.len() == log.sent.len()
    })
    .await;

    let (sent, acked): (Vec<String>, Vec<String>) = {
        let log = log(&shared);
        let acked = log.answers.iter().flatten().cloned().collect();
        (log.sent.clone(), acked)
    };
    assert!(
        log(&shared).answers[back_from..]
            .iter()
            .all(Option::is_some),
        "messages sent once the database was back are all acknowledged"
    );
    // Each acknowledged message reaches Bob, and its delivery is recorded (its receipt reaches
    // Alice): a later socket without a cursor is not sent it again.
    eventually("Bob gets every acknowledged message", WAIT * 3, || async {
        let received: HashSet<String> = log(&shared).received.iter().cloned().collect();
        acked.iter().all(|id| received.contains(id))
    })
    .await;
    eventually(
        "every acknowledged message's delivery is recorded",
        WAIT * 3,
        || async {
            let log = log(&shared);
            acked.iter().all(|id| log.receipts.contains(id))
        },
    )
    .await;
    stop_reading.store(true, Ordering::Relaxed);
    bob_reader.await.expect("bob's reader");

    // The app reconnects without a cursor: nothing it already had comes again.
    let mut again = open(&app, &bob, None).await.expect("bob reconnects");
    let heartbeat = json!({"type": "heartbeat", "payload": {}}).to_string();
    again
        .send(Message::Text(heartbeat.into()))
        .await
        .expect("heartbeat");
    loop {
        let message = tokio::time::timeout(WAIT, again.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        let Some(frame) = text(message) else { continue };
        match frame["type"].as_str() {
            Some("heartbeat_response") => break,
            Some("message") => {
                let id = frame["payload"]["id"].as_str().expect("id").to_owned();
                log(&shared).received.push(id);
            }
            _ => {}
        }
    }

    let log = log(&shared);
    eprintln!(
        "sent {}, acked {}, failed {}, received {}, bob closed {:?}, outage {down_from}..{down_until}, back {back_from}",
        log.sent.len(),
        acked.len(),
        log.answers.iter().filter(|a| a.is_none()).count(),
        log.received.len(),
        log.bob_closed
    );
    let mut times: HashMap<&str, usize> = HashMap::new();
    for id in &log.received {
        *times.entry(id).or_default() += 1;
    }
    for id in &acked {
        assert_eq!(times.get(id.as_str()), Some(&1), "acked message {id}");
    }
    let sent: HashSet<&str> = sent.iter().map(String::as_str).collect();
    for (id, n) in &times {
        assert!(sent.contains(id), "Bob got a message nobody sent: {id}");
        assert_eq!(*n, 1, "Bob got {id} {n} times");
    }
    assert!(
        log.answers.iter().any(Option::is_none),
        "some messages failed during the outage"
    );
    assert!(!log.alice_closed, "the sender's socket stays open");
    // Bob's sockets stay open, or close with a code the app reconnects on.
    for code in &log.bob_closed {
        assert!(
            matches!(code, Some(1011 | 1013 | 1001)),
            "Bob's socket closed with {code:?}"
        );
    }
    drop(log);
    alice_reader.abort();
    drop(app);
    drop(postgres);
}

fn clone_user(user: &TestUser) -> TestUser {
    TestUser {
        id: user.id.clone(),
        token: user.token.clone(),
        email: user.email.clone(),
        password: user.password.clone(),
    }
}
