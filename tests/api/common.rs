//! Test harness: the real server on an ephemeral port, over real HTTP and WebSocket, on a fresh
//! SQLite file or a fresh PostgreSQL schema (when `TEST_DATABASE_URL` is set).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use kisse_backend::{App, AppState, config::Config};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::{net::TcpStream, task::JoinHandle};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{Message, client::IntoClientRequest, protocol::frame::coding::CloseCode},
};
use tracing::{Level, level_filters::LevelFilter};
use tracing_subscriber::{EnvFilter, filter, fmt, prelude::*};
use uuid::Uuid;

pub const JWT_SECRET: &str = "test-secret-that-is-at-least-32-bytes-long";
/// Upper bound for any single wait on the network.
pub const WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// PostgreSQL runs when `TEST_DATABASE_URL` is set (`.ci/run` always sets it).
    pub fn available(self) -> bool {
        self == Engine::Sqlite || std::env::var("TEST_DATABASE_URL").is_ok()
    }
}

/// Runs each named scenario `async fn name(engine: Engine)` once per engine.
#[macro_export]
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Engine::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if !$crate::common::Engine::Postgres.available() {
                        eprintln!("TEST_DATABASE_URL is not set: PostgreSQL variant not run");
                        return;
                    }
                    super::$name($crate::common::Engine::Postgres).await;
                }
            )*
        }
    };
}

/// An HTTP client for the tests. reqwest shares the server's build, whose TLS comes without a
/// crypto provider (the server brings ring's): install it for the process first.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Where a test's data lives; removed when the test ends.
enum Database {
    SqliteFile(PathBuf),
    /// Held for its drop, which removes the schema.
    PostgresSchema {
        _schema: PgSchema,
    },
    /// Another node's: this node only shares it.
    Shared,
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub state: AppState,
    pub http: reqwest::Client,
    database: Database,
    config: Config,
    /// The settings `config` was built from, for more nodes on the same database.
    settings: HashMap<String, String>,
    server: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    pub async fn spawn(engine: Engine) -> Self {
        Self::spawn_with(engine, &[]).await
    }

    /// Starts a server whose settings are the test defaults overridden by `settings`.
    pub async fn spawn_with(engine: Engine, settings: &[(&str, &str)]) -> Self {
        init_tracing();
        let (database_url, database) = match engine {
            Engine::Sqlite => {
                let path = std::env::temp_dir().join(format!("kisse-test-{}.db", Uuid::new_v4()));
                (
                    format!("sqlite://{}", path.display()),
                    Database::SqliteFile(path),
                )
            }
            Engine::Postgres => {
                let schema = PgSchema::create().await;
                (schema.url(), Database::PostgresSchema { _schema: schema })
            }
        };
        Self::start_with(test_env(&database_url, settings), database).await
    }

    /// Starts a server on the PostgreSQL database at `database_url`, which the test owns (a
    /// private server it stops and starts): nothing is created or dropped here.
    pub async fn spawn_on_database(database_url: &str, settings: &[(&str, &str)]) -> Self {
        init_tracing();
        Self::start_with(test_env(database_url, settings), Database::Shared).await
    }

    async fn start_with(settings: HashMap<String, String>, database: Database) -> Self {
        let config = Config::from_lookup(|key| settings.get(key).cloned()).expect("test config");
        let (addr, state, server) = start(config.clone()).await;
        Self {
            addr,
            state,
            http: http_client(),
            database,
            config,
            settings,
            server,
        }
    }

    /// Starts another node on this one's database, with this one's settings overridden by
    /// `settings`, on its own listener (a cluster in one process). Drop it before `self`.
    pub async fn spawn_node(&self, settings: &[(&str, &str)]) -> Self {
        let mut env = self.settings.clone();
        env.extend(
            settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Self::start_with(env, Database::Shared).await
    }

    /// The settings this server was started with (to start it elsewhere, e.g. as a process).
    pub fn settings(&self) -> &HashMap<String, String> {
        &self.settings
    }

    /// Stops the server (as SIGTERM would) and starts a new one on the same database, on a new
    /// port: what survives is what was committed.
    pub async fn restart(&mut self) {
        self.state.shutdown.cancel();
        let _ = tokio::time::timeout(WAIT, &mut self.server).await;
        let (addr, state, server) = start(self.config.clone()).await;
        (self.addr, self.state, self.server) = (addr, state, server);
    }

    /// Stops the server as SIGTERM would, and waits until it has closed its database.
    pub async fn stop(mut self) {
        self.state.shutdown.cancel();
        let _ = tokio::time::timeout(WAIT * 3, &mut self.server).await;
    }

    /// `restart`, with this server's settings overridden by `settings` from now on (a setting
    /// an operator changed between two runs).
    pub async fn restart_with(&mut self, settings: &[(&str, &str)]) {
        self.settings.extend(
            settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self.config =
            Config::from_lookup(|key| self.settings.get(key).cloned()).expect("test config");
        self.restart().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a request; returns the status and the JSON body (`Null` when empty).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path)).timeout(WAIT * 3);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.request(Method::POST, path, Some(token), Some(body))
            .await
    }

    /// Logs `user` in, as the app does (email and password).
    pub async fn login(&self, user: &TestUser) -> (StatusCode, Value) {
        let body = json!({"email": user.email, "password": user.password});
        self.request(Method::POST, "/api/auth/login", None, Some(body))
            .await
    }

    /// Logs `user` in once more: the new session's access and refresh tokens.
    pub async fn new_session(&self, user: &TestUser) -> (String, String) {
        let (status, body) = self.login(user).await;
        assert_eq!(status, StatusCode::OK, "login {}: {body}", user.email);
        let token = |key: &str| body[key].as_str().expect(key).to_owned();
        (token("token"), token("refresh_token"))
    }

    /// Deletes `user`'s account as the app does (`DELETE /api/auth/me` with the password).
    pub async fn delete_account(&self, user: &TestUser) {
        let body = json!({"password": user.password});
        let (status, answer) = self
            .request(
                Method::DELETE,
                "/api/auth/me",
                Some(&user.token),
                Some(body),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::NO_CONTENT,
            "delete {}: {answer}",
            user.email
        );
    }

    /// Registers `username` (email `<username>@example.com`, password `password-<username>`).
    pub async fn register(&self, username: &str) -> TestUser {
        self.register_as(username, &format!("{username}@example.com"), None)
            .await
    }

    /// Registers `username` with this email and display name (password `password-<username>`).
    pub async fn register_as(&self, username: &str, email: &str, name: Option<&str>) -> TestUser {
        let password = format!("password-{username}");
        let body =
            json!({"email": email, "username": username, "password": password, "name": name});
        let (status, value) = self
            .request(Method::POST, "/api/auth/register", None, Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "register {username}: {value}");
        TestUser {
            id: value["user"]["id"].as_str().expect("user id").to_owned(),
            token: value["token"].as_str().expect("token").to_owned(),
            email: email.to_lowercase(),
            password,
        }
    }

    /// The conversation between two users, as `a` sees it.
    pub async fn conversation(&self, a: &TestUser, b: &TestUser) -> Value {
        let (status, value) = self
            .post(
                "/api/conversations",
                &a.token,
                json!({"participant_id": b.id}),
            )
            .await;
        assert!(status.is_success(), "open conversation: {status} {value}");
        value
    }

    /// Opens an authenticated socket the way the app does (`/ws?token=`).
    pub async fn ws(&self, user: &TestUser) -> WsClient {
        self.ws_url(&format!("/ws?token={}", user.token))
            .await
            .expect("socket opens")
    }

    /// Opens a socket on `path_and_query`; the HTTP status when the upgrade is refused.
    pub async fn ws_url(&self, path_and_query: &str) -> Result<WsClient, StatusCode> {
        let request = format!("ws://{}{path_and_query}", self.addr)
            .into_client_request()
            .expect("ws request");
        WsClient::connect(request).await
    }
}

/// Server errors show up in a failing test's output (RUST_LOG widens the filter); while a
/// [`LogCapture`] is alive, every server's logs are also kept at debug level. One subscriber
/// for the whole test binary: a process has only one.
fn init_tracing() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let shown = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        // Dynamic: asked at each event, where a plain `filter_fn`'s answer is cached per
        // call site, so a line first seen while nothing captured would never be kept.
        let captured = filter::dynamic_filter_fn(|meta, _| {
            CAPTURING.load(Ordering::Relaxed) > 0 && *meta.level() <= Level::DEBUG
        })
        .with_max_level_hint(LevelFilter::DEBUG);
        let _ = tracing_subscriber::registry()
            .with(
                fmt::layer()
                    .with_test_writer()
                    .with_filter(EnvFilter::new(shown)),
            )
            .with(
                fmt::layer()
                    .with_ansi(false)
                    .with_writer(|| CaptureWriter)
                    .with_filter(captured),
            )
            .try_init();
    });
}

/// How many [`LogCapture`]s are alive.
static CAPTURING: AtomicUsize = AtomicUsize::new(0);
static CAPTURED: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// While alive, every log line of every server of this binary, debug level and above, is
/// kept, for tests that check what is never logged (lines of tests running meanwhile too).
pub struct LogCapture;

impl LogCapture {
    pub fn start() -> Self {
        init_tracing();
        CAPTURING.fetch_add(1, Ordering::SeqCst);
        Self
    }

    /// What was logged while a capture was alive.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&CAPTURED.lock().expect("log capture")).into_owned()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        CAPTURING.fetch_sub(1, Ordering::SeqCst);
    }
}

struct CaptureWriter;

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut logs) = CAPTURED.lock() {
            logs.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A test server's settings: `database_url`, the tests' secret and pool size, then `settings`.
fn test_env(database_url: &str, settings: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = HashMap::from([
        ("DATABASE_URL".to_owned(), database_url.to_owned()),
        ("JWT_SECRET".to_owned(), JWT_SECRET.to_owned()),
        ("DB_MAX_CONNECTIONS".to_owned(), "5".to_owned()),
    ]);
    env.extend(
        settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

async fn start(config: Config) -> (SocketAddr, AppState, JoinHandle<anyhow::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let state = App::new(config).await.expect("start server");
    let server = tokio::spawn(kisse_backend::serve(state.clone(), listener));
    (addr, state, server)
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
        self.server.abort();
        match &self.database {
            Database::SqliteFile(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            // Its own drop removes it.
            Database::PostgresSchema { .. } | Database::Shared => {}
        }
    }
}

/// A fresh schema of the `TEST_DATABASE_URL` database, dropped with everything in it when this
/// is dropped.
pub struct PgSchema {
    admin_url: String,
    schema: String,
}

impl PgSchema {
    pub async fn create() -> Self {
        let admin_url = std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL");
        let schema = format!("kt_{}", Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&admin_url)
            .await
            .expect("TEST_DATABASE_URL must reach PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .expect("create test schema");
        admin.close().await;
        Self { admin_url, schema }
    }

    /// A `DATABASE_URL` whose tables are this schema's.
    pub fn url(&self) -> String {
        let sep = if self.admin_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{sep}options=-c%20search_path%3D{}",
            self.admin_url, self.schema
        )
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, sql) = (
            self.admin_url.clone(),
            format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
        );
        // Drop cannot await: use a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = sqlx::PgPool::connect(&url).await?;
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&admin)
                    .await?;
                admin.close().await;
                Ok::<_, sqlx::Error>(())
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
    }
}

pub struct TestUser {
    pub id: String,
    pub token: String,
    pub email: String,
    pub password: String,
}

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    pub async fn connect(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Self, StatusCode> {
        match tokio::time::timeout(WAIT, connect_async(request))
            .await
            .expect("connect in time")
        {
            Ok((stream, _)) => Ok(Self { stream }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(StatusCode::from_u16(response.status().as_u16()).expect("status"))
            }
            Err(e) => panic!("websocket connect failed: {e}"),
        }
    }

    /// Connects with a tiny TCP receive buffer, for a client that will stop reading.
    pub async fn connect_slow(addr: SocketAddr, path_and_query: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(2048).expect("small buffer");
        let stream = socket.connect(addr).await.expect("connect");
        let url = format!("ws://{addr}{path_and_query}");
        let (stream, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("upgrade");
        Self { stream }
    }

    /// The next text frame if one comes within `wait`.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(wait, self.stream.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Some(serde_json::from_str(text.as_str()).expect("JSON frame"));
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => return None,
            }
        }
    }

    pub async fn send(&mut self, kind: &str, payload: Value) {
        self.send_text(json!({"type": kind, "payload": payload}).to_string())
            .await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.stream
            .send(Message::Text(text.into()))
            .await
            .expect("send frame");
    }

    /// Sends any WebSocket message as is (binary, or a raw frame the client would refuse to
    /// build, such as a text frame that is not UTF-8).
    pub async fn send_message(
        &mut self,
        message: Message,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.stream.send(message).await
    }

    /// The next frame `{type, payload}` from the server, within `WAIT`.
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("a frame within the wait")
                .expect("socket open")
                .expect("frame");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("JSON frame");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// `expect`, for a frame that takes longer than `WAIT` by design.
    pub async fn expect_within(&mut self, kind: &str, wait: Duration) -> Value {
        tokio::time::timeout(wait, self.expect(kind))
            .await
            .expect("frame in time")
    }

    /// The payload of the next frame, which must be of type `kind`; frames that come on their
    /// own schedule (`presence_update` of contacts, `delivery_receipt` of messages sent, the
    /// `queue_empty` that ends the connect of a socket naming its device) are skipped unless
    /// `kind` is one of them.
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind {
                return frame["payload"].clone();
            }
            assert!(
                ["presence_update", "delivery_receipt", "queue_empty"]
                    .contains(&frame["type"].as_str().unwrap_or_default()),
                "expected {kind}, got {frame}"
            );
        }
    }

    /// Proves that nothing but presence changes, delivery receipts and `queue_empty` was
    /// queued for this socket so far: a heartbeat
    /// goes through the same queue, so its answer comes after anything queued before it.
    /// Ephemeral frames (typing, presence, unanswered calls, channel posts) do not use that
    /// queue and may come after the answer.
    pub async fn expect_quiet(&mut self) {
        self.send(
            "heartbeat",
            json!({"timestamp": "2025-11-24T21:03:04.123456"}),
        )
        .await;
        self.expect("heartbeat_response").await;
    }

    /// Every frame queued for this socket so far (see `expect_quiet`): those before the answer
    /// to a heartbeat sent now.
    pub async fn queued_frames(&mut self) -> Vec<Value> {
        self.send("heartbeat", json!({})).await;
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame["type"] == "heartbeat_response" {
                return frames;
            }
            frames.push(frame);
        }
    }

    /// The payload of the next `kind` frame about the user `user_id` (its `userId`), skipping
    /// every other frame.
    pub async fn next_about(&mut self, kind: &str, user_id: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["type"] == kind && frame["payload"]["userId"] == user_id {
                return frame["payload"].clone();
            }
        }
    }

    /// Proves that nothing at all was queued for this socket so far (see `expect_quiet`).
    pub async fn expect_silent(&mut self) {
        self.send("heartbeat", json!({})).await;
        let frame = self.recv().await;
        assert_eq!(
            frame["type"], "heartbeat_response",
            "expected silence, got {frame}"
        );
    }

    /// Waits for the server to close the socket; returns the close code.
    pub async fn closed(&mut self) -> Option<CloseCode> {
        loop {
            match tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// Polls `check` until it holds, for at most three times `WAIT`.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The server binary as a process of its own, with `like`'s settings (so on its database) on a
/// port of its own; killed (SIGKILL) when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts it, without waiting for it to serve.
    pub fn spawn(like: &TestApp) -> Self {
        let port = free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_kisse-backend"))
            .envs(like.settings())
            .env("SERVER_ADDRESS", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the server binary");
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
