//! The built binary: `--help`, `check-config`, `migrate`, and `serve` with JSON logs that parse,
//! hold no secrets, and a graceful shutdown on SIGTERM that closes sockets with 1001.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use crate::common::{JWT_SECRET, WsClient};
use kisse_backend::config::SETTINGS;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    client::IntoClientRequest, protocol::frame::coding::CloseCode,
};

const BIN: &str = env!("CARGO_BIN_EXE_kisse-backend");

/// A scratch directory (no `.env` in it) removed at the end of the test.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("kisse-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
    pub fn database_url(&self) -> String {
        format!("sqlite://{}", self.0.join("kisse.db").display())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary with a clean environment: only `vars` are set.
fn command(scratch: &Scratch, args: &[&str], vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_clear()
        .current_dir(&scratch.0)
        .envs(vars.iter().copied());
    command
}

fn run(scratch: &Scratch, args: &[&str], vars: &[(&str, &str)]) -> Output {
    command(scratch, args, vars).output().expect("run binary")
}

#[test]
fn help_lists_every_setting_and_command() {
    let scratch = Scratch::new();
    let output = run(&scratch, &["--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("utf-8");
    for setting in SETTINGS {
        assert!(
            help.contains(setting.name),
            "{} missing:\n{help}",
            setting.name
        );
    }
    for command in [
        "serve",
        "migrate",
        "check-config",
        "port-db",
        "backup",
        "--config",
        "KISSE_CONFIG",
    ] {
        assert!(help.contains(command), "{command} missing:\n{help}");
    }
}

#[test]
fn check_config_lists_every_setting() {
    let scratch = Scratch::new();
    let output = run(&scratch, &["check-config"], &[]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    for setting in SETTINGS {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{}=", setting.name))),
            "{} missing:\n{stdout}",
            setting.name
        );
    }
}

/// The README's settings table (section "Configuration"): the name and default of each row.
fn readme_settings() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("a Configuration section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    section
        .lines()
        .skip_while(|l| !l.starts_with("| Variable |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let unquote = |cell: &str| cell.trim_matches('`').to_owned();
            (unquote(cells[1]), unquote(cells[2]))
        })
        .collect()
}

#[test]
fn the_readme_lists_every_setting_with_its_default_and_no_other() {
    let documented = readme_settings();
    let declared: Vec<(String, String)> = SETTINGS
        .iter()
        .map(|s| (s.name.to_owned(), s.default_text()))
        .collect();
    let extra: Vec<_> = documented
        .iter()
        .filter(|r| !declared.contains(r))
        .collect();
    let missing: Vec<_> = declared
        .iter()
        .filter(|s| !documented.contains(s))
        .collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "README.md's settings table differs from config::SETTINGS (name, default):\n\
         in the README only: {extra:?}\nin the code only: {missing:?}"
    );
    assert_eq!(documented.len(), declared.len(), "a row is repeated");
}

#[test]
fn a_config_file_is_read_and_the_environment_overrides_it() {
    let scratch = Scratch::new();
    let database = scratch.0.join("from-file.db");
    std::fs::write(
        scratch.0.join("kisse.toml"),
        format!(
            "# Settings, in lower case.\n\
             database_url = \"sqlite://{}\"\n\
             ws_queue_len = 77\n\
             redis_prefix = \"from-file\"\n\
             metrics_token = \"metrics-token-2\"\n\
             trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n",
            database.display()
        ),
    )
    .expect("write the file");

    // The file's database is the one migrated.
    let output = run(&scratch, &["migrate", "--config", "kisse.toml"], &[]);
    assert!(output.status.success(), "{output:?}");
    assert!(database.exists(), "{output:?}");

    let output = run(
        &scratch,
        &["--config", "kisse.toml", "check-config"],
        &[("WS_QUEUE_LEN", "55")],
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert!(stdout.contains("WS_QUEUE_LEN=55\n"), "{stdout}");
    assert!(stdout.contains("REDIS_PREFIX=from-file\n"), "{stdout}");
    assert!(
        stdout.contains("TRUSTED_PROXIES=10.0.0.0/8,::1/128\n"),
        "{stdout}"
    );
    assert!(stdout.contains("METRICS_TOKEN=<redacted>\n"), "{stdout}");
    assert!(!stdout.contains("metrics-token-2"), "{stdout}");

    // KISSE_CONFIG names the file too.
    let output = run(
        &scratch,
        &["check-config"],
        &[("KISSE_CONFIG", "kisse.toml")],
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert!(stdout.contains("WS_QUEUE_LEN=77\n"), "{stdout}");
}

#[test]
fn a_config_file_with_an_unknown_key_or_a_bad_value_is_refused_with_its_name() {
    let scratch = Scratch::new();
    let path = scratch.0.join("kisse.toml");
    std::fs::write(&path, "ws_queue_len = 10\nws_queue_length = 20\n").expect("write");
    let output = run(&scratch, &["check-config", "--config", "kisse.toml"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).expect("utf-8");
    assert!(
        stderr.contains("unknown setting \"ws_queue_length\"") && stderr.contains("kisse.toml"),
        "{stderr}"
    );

    std::fs::write(&path, "ws_queue_len = \"lots\"\n").expect("write");
    let output = run(&scratch, &["serve", "--config", "kisse.toml"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).expect("utf-8");
    assert!(
        stderr.contains("ws_queue_len = \"lots\" in kisse.toml"),
        "{stderr}"
    );

    let output = run(&scratch, &["check-config", "--config", "missing.toml"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.toml"));
}

#[test]
fn check_config_rejects_a_bad_value_with_a_clear_message() {
    let scratch = Scratch::new();
    let output = run(&scratch, &["check-config"], &[("WS_QUEUE_LEN", "lots")]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).expect("utf-8");
    assert!(
        stderr.contains("WS_QUEUE_LEN") && stderr.contains("lots"),
        "{stderr}"
    );

    let output = run(&scratch, &["check-config"], &[("APP_ENV", "production")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("JWT_SECRET"));
}

/// Half a TURN setup would hand out credentials no TURN server checks (or none at all): the
/// server refuses to start, naming what is missing or wrong.
#[test]
fn check_config_refuses_half_a_turn_setup_and_bad_turn_uris() {
    let scratch = Scratch::new();
    for (vars, expected) in [
        (
            &[("TURN_URIS", "turn:turn.example.com")][..],
            "TURN_URIS is set without TURN_SECRET",
        ),
        (
            &[("TURN_SECRET", "turn-secret-0123456789")][..],
            "TURN_SECRET is set without TURN_URIS",
        ),
        (
            &[
                ("TURN_URIS", "turn:turn.example.com"),
                ("TURN_SECRET", "turn-short"),
            ][..],
            "TURN_SECRET must be at least 16 bytes",
        ),
        (
            &[
                ("TURN_URIS", "turn://turn.example.com"),
                ("TURN_SECRET", "turn-secret-0123456789"),
            ][..],
            "is not a TURN/STUN URI",
        ),
    ] {
        let output = run(&scratch, &["check-config"], vars);
        assert_eq!(output.status.code(), Some(1), "{vars:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{vars:?}: {stderr}");
        assert!(!stderr.contains("turn-secret-0123456789") && !stderr.contains("turn-short"));
    }
}

#[test]
fn check_config_prints_the_settings_without_secrets() {
    let scratch = Scratch::new();
    let output = run(
        &scratch,
        &["check-config"],
        &[
            ("JWT_SECRET", JWT_SECRET),
            (
                "DATABASE_URL",
                "postgres://kisse:db-password-1@db:5432/kisse",
            ),
            ("METRICS_TOKEN", "metrics-token-1"),
            ("WS_QUEUE_LEN", "77"),
            ("TURN_URIS", "turn:turn.example.com"),
            ("TURN_SECRET", "turn-secret-0123456789"),
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert!(stdout.contains("WS_QUEUE_LEN=77"), "{stdout}");
    assert!(stdout.contains("DATABASE_URL=postgres://kisse:<redacted>@db:5432/kisse"));
    assert!(stdout.contains("TURN_SECRET=<redacted>\n"), "{stdout}");
    for secret in [
        JWT_SECRET,
        "db-password-1",
        "metrics-token-1",
        "turn-secret-0123456789",
    ] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
}

#[test]
fn check_config_accepts_redis_over_tls() {
    let scratch = Scratch::new();
    let output = run(
        &scratch,
        &["check-config"],
        &[(
            "REDIS_URL",
            "rediss://:redis-password-1@cache.example.com:6380/0",
        )],
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    assert!(
        stdout.contains("REDIS_URL=rediss://:<redacted>@cache.example.com:6380/0"),
        "{stdout}"
    );
    assert!(!stdout.contains("redis-password-1"), "{stdout}");
}

#[test]
fn migrate_applies_the_migrations_and_exits() {
    let scratch = Scratch::new();
    let url = scratch.database_url();
    let output = run(&scratch, &["migrate"], &[("DATABASE_URL", &url)]);
    assert!(output.status.success(), "{output:?}");
    assert!(scratch.0.join("kisse.db").exists());
    // Twice is fine: nothing left to apply.
    assert!(
        run(&scratch, &["migrate"], &[("DATABASE_URL", &url)])
            .status
            .success()
    );
}

/// A running `serve`, its log lines collected as they come.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Server {
    fn start(scratch: &Scratch) -> Self {
        let url = scratch.database_url();
        let mut child = command(
            scratch,
            &["serve"],
            &[
                ("DATABASE_URL", url.as_str()),
                ("JWT_SECRET", JWT_SECRET),
                ("SERVER_ADDRESS", "127.0.0.1:0"),
                ("LOG_FORMAT", "json"),
                ("RUST_LOG", "debug"),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start server");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line whose `message` is `message`; returns it parsed.
    fn wait_for(&mut self, message: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        if let Some(found) = self.seen.iter().find_map(|l| matching(l, message)) {
            return found;
        }
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {message:?} log line in:\n{:#?}", self.seen));
            self.seen.push(line.clone());
            if let Some(found) = matching(&line, message) {
                return found;
            }
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Collect what is left of the output.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn matching(line: &str, message: &str) -> Option<Value> {
    let value: Value = serde_json::from_str(line).ok()?;
    (value["message"] == message).then_some(value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_writes_json_logs_without_secrets_and_shuts_down_gracefully() {
    let scratch = Scratch::new();
    let mut server = Server::start(&scratch);
    let listening = server.wait_for("kisse-backend listening");
    let addr = listening["address"]
        .as_str()
        .expect("address field")
        .to_owned();
    let http = crate::common::http_client();
    let base = format!("http://{addr}");

    let password = "a-password-that-must-not-leak";
    let register = |username: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let response = http
                .post(format!("{base}/api/auth/register"))
                .json(&json!({"email": format!("{username}@example.com"), "username": username, "password": password}))
                .send()
                .await
                .expect("register");
            assert_eq!(response.status(), reqwest::StatusCode::CREATED);
            response.json::<Value>().await.expect("session")
        }
    };
    let alice = register("alice").await;
    let bob = register("bob").await;
    let alice_token = alice["token"].as_str().expect("token").to_owned();
    let bob_token = bob["token"].as_str().expect("token").to_owned();
    let bob_id = bob["user"]["id"].as_str().expect("id").to_owned();

    let connect = |token: String| {
        let addr = addr.clone();
        async move {
            let request = format!("ws://{addr}/ws?token={token}")
                .into_client_request()
                .expect("request");
            WsClient::connect(request).await.expect("socket opens")
        }
    };
    let mut alice_ws = connect(alice_token.clone()).await;
    let mut bob_ws = connect(bob_token.clone()).await;
    let session_id = "session-payload-that-must-not-leak";
    alice_ws
        .send(
            "message",
            json!({"recipientId": bob_id, "messageType": "text", "sessionId": session_id}),
        )
        .await;
    bob_ws.expect("message").await;
    alice_ws.expect("message_ack").await;
    alice_ws.close().await;
    let closed = server.wait_for("socket closed");
    assert!(closed["duration_ms"].is_u64(), "{closed}");
    assert!(closed["socket_id"].is_u64(), "{closed}");
    assert!(closed["user"].is_string(), "{closed}");

    // SIGTERM: the open socket is closed with 1001, then the process exits cleanly.
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (status, server)
    });
    assert_eq!(bob_ws.closed().await, Some(CloseCode::Away));
    let (status, mut server) = status.await.expect("join");
    assert!(status.success(), "exit status {status}");
    server.wait_for("shutdown complete");

    let opened = server.wait_for("socket opened");
    assert!(opened["socket_id"].is_u64(), "{opened}");
    let ws_request = server
        .seen
        .iter()
        .find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["message"] == "request" && v["route"] == "/ws").then_some(v)
        })
        .expect("the upgrade request is logged");
    assert!(ws_request["latency_ms"].is_number());

    for line in &server.seen {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not JSON: {line}");
        for secret in [
            alice_token.as_str(),
            bob_token.as_str(),
            password,
            JWT_SECRET,
            session_id,
            "token=",
        ] {
            assert!(!line.contains(secret), "log line leaks {secret:?}: {line}");
        }
    }
}
