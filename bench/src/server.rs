//! The system under test: a `kisse-backend` process started here (or one already running), or
//! the minimal relay.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::Target;

#[derive(Clone)]
pub struct User {
    pub id: String,
    pub token: String,
    pub email: String,
}

pub struct Running {
    /// `http://127.0.0.1:port`
    pub base: String,
    pub engine: String,
    /// Whether this is the relay (no registration, `?u=` sockets).
    pub relay: bool,
    child: Option<Child>,
    _database: Option<tempfile_path::TempPath>,
}

impl Running {
    pub async fn start(target: &Target) -> anyhow::Result<Self> {
        Self::start_with(target, &[]).await
    }

    /// Starts the server with `settings` added to its environment (they override the
    /// caller's); with `--url`, the running server is taken as it is.
    pub async fn start_with(target: &Target, settings: &[(&str, String)]) -> anyhow::Result<Self> {
        Self::start_seeded(target, settings, None).await
    }

    /// Starts the server on the SQLite file at `database` when given, in place (a database
    /// another server left closed: the grown one of a comparison), else on a new one (the
    /// default without `--database-url`).
    pub async fn start_on(target: &Target, database: Option<&Path>) -> anyhow::Result<Self> {
        Self::start_seeded(target, &[], database).await
    }

    async fn start_seeded(
        target: &Target,
        settings: &[(&str, String)],
        database: Option<&Path>,
    ) -> anyhow::Result<Self> {
        if let Some(url) = &target.url {
            return Ok(Self {
                base: url.trim_end_matches('/').to_owned(),
                engine: "external".into(),
                relay: false,
                child: None,
                _database: None,
            });
        }
        let port = free_port()?;
        let (database_url, database) = match (&target.database_url, database) {
            (_, Some(path)) => (format!("sqlite://{}", path.display()), None),
            (Some(url), None) => (url.clone(), None),
            (None, None) => {
                let path = tempfile_path::TempPath::new("kisse-bench", "db");
                (format!("sqlite://{}", path.display()), Some(path))
            }
        };
        let engine = if database_url.starts_with("sqlite") {
            "sqlite"
        } else {
            "postgres"
        };
        let mut command = Command::new(&target.server_bin);
        // A load test from one address trips the abuse limits meant for the internet; lift them
        // unless the caller set them.
        for (key, value) in [
            ("WS_MESSAGES_PER_SECOND", "1000000"),
            ("WS_FRAMES_PER_SECOND", "1000000"),
            ("LOGIN_RATE_PER_MINUTE", "1000000"),
            ("LOGIN_RATE_PER_ACCOUNT_PER_MINUTE", "1000000"),
            ("LOGIN_FAILURES_PER_ADDRESS", "1000000"),
            ("WRITE_RATE_PER_USER_PER_MINUTE", "1000000"),
            ("LOOKUP_RATE_PER_USER_PER_MINUTE", "1000000"),
            ("MAX_SOCKETS_PER_USER", "1000000"),
        ] {
            if std::env::var_os(key).is_none() {
                command.env(key, value);
            }
        }
        command.envs(settings.iter().cloned());
        let child = command
            .env("SERVER_ADDRESS", format!("127.0.0.1:{port}"))
            .env("DATABASE_URL", &database_url)
            .env(
                "JWT_SECRET",
                format!("bench-{}", uuid::Uuid::new_v4().simple()),
            )
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it: cargo build --release)",
                    target.server_bin
                )
            })?;
        let running = Self {
            base: format!("http://127.0.0.1:{port}"),
            engine: engine.into(),
            relay: false,
            child: Some(child),
            _database: database,
        };
        running.wait_ready("/health").await?;
        Ok(running)
    }

    /// Starts the minimal relay (this binary's `relay` command) on a free port.
    pub async fn relay() -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new(std::env::current_exe()?)
            .args(["relay", "--port", &port.to_string()])
            .kill_on_drop(true)
            .spawn()?;
        let running = Self {
            base: format!("http://127.0.0.1:{port}"),
            engine: "relay".into(),
            relay: true,
            child: Some(child),
            _database: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("the relay did not start");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(running)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The SQLite file the bench made for this server, if it made one.
    pub fn database_file(&self) -> Option<&Path> {
        self._database.as_ref().map(|path| path.path())
    }

    /// Stops the server as an operator stops it (SIGTERM, through `kill`: no unsafe code here),
    /// so that its SQLite database is left closed, its log copied in; killed after 60 s. Killed
    /// at once instead, it left up to the backstop's log for the next server on the database to
    /// recover and copy in its first seconds, a start no running server has.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let stopped = match child.id() {
            Some(pid) => {
                let term = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
                term.is_ok_and(|status| status.success())
                    && tokio::time::timeout(Duration::from_secs(60), child.wait())
                        .await
                        .is_ok()
            }
            None => true,
        };
        if !stopped {
            child.kill().await?;
        }
        Ok(())
    }

    /// Stops the server (`stop`) and keeps its SQLite files at `to` instead of removing them.
    pub async fn stop_keeping_database(mut self, to: &Path) -> anyhow::Result<()> {
        let database = self
            ._database
            .take()
            .context("not a SQLite file of the bench's")?;
        self.stop().await?;
        database.move_to(to)
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.base))
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    pub fn ws_base(&self) -> String {
        self.base.replacen("http", "ws", 1)
    }

    async fn wait_ready(&self, path: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::get(format!("{}{path}", self.base))
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the server did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Registers `n` users (password `bench-password`), `REGISTER_AT_ONCE` at a time: the
    /// server sheds password hashing beyond its queue, as it should under a registration storm.
    pub async fn register(&self, n: usize) -> anyhow::Result<Vec<User>> {
        const REGISTER_AT_ONCE: usize = 32;
        let http = reqwest::Client::new();
        let run = uuid::Uuid::new_v4().simple().to_string();
        let mut users = Vec::with_capacity(n);
        let mut pending = Vec::new();
        for i in 0..n {
            if pending.len() == REGISTER_AT_ONCE {
                for handle in pending.drain(..) {
                    users.push(handle.await??);
                }
            }
            let http = http.clone();
            let base = self.base.clone();
            let name = format!("b{}_{i}", &run[..8]);
            pending.push(tokio::spawn(async move {
                let body = json!({"email": format!("{name}@bench.test"), "username": name, "password": "bench-password", "name": null});
                let value: Value = http
                    .post(format!("{base}/api/auth/register"))
                    .json(&body)
                    .send()
                    .await?
                    .json()
                    .await?;
                let id = value["user"]["id"].as_str().context("register failed")?.to_owned();
                let token = value["token"].as_str().context("no token")?.to_owned();
                anyhow::Ok(User { id, token, email: format!("{name}@bench.test") })
            }));
        }
        for handle in pending {
            users.push(handle.await??);
        }
        Ok(users)
    }

    /// Resident memory of the started process, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

/// What process `pid` has used so far, from `/proc`. Besides CPU time, two counts that a
/// noisy machine does not move: they follow the work, where CPU time also follows how fast the
/// host lets it run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// CPU time, user and system.
    pub cpu: Duration,
    /// Bytes passed to `write`-family calls (the SQLite log's and the checkpoints' writes; not
    /// socket sends): what the disk has to take.
    pub written: u64,
    /// Context switches of the threads alive when read (voluntary and not): a thread that
    /// ended in between takes its own with it.
    pub switches: u64,
}

impl Usage {
    pub fn of(pid: u32) -> Option<Self> {
        Some(Self {
            cpu: cpu_time(pid)?,
            written: io_field(pid, "wchar:").unwrap_or(0),
            switches: context_switches(pid).unwrap_or(0),
        })
    }

    /// Per message, over `messages`: CPU µs, KiB written, context switches.
    pub fn per_message(&self, messages: u64) -> [f64; 3] {
        let per_message = |n: f64| n / messages.max(1) as f64;
        [
            per_message(self.cpu.as_secs_f64() * 1e6),
            per_message(self.written as f64 / 1024.0),
            per_message(self.switches as f64),
        ]
    }

    /// What was used between `start` and `self`.
    pub fn since(self, start: Self) -> Self {
        Self {
            cpu: self.cpu.saturating_sub(start.cpu),
            written: self.written.saturating_sub(start.written),
            switches: self.switches.saturating_sub(start.switches),
        }
    }
}

/// CPU time (user and system) that process `pid` has used so far, from `/proc`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces), utime and stime are the 12th and 13th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let ticks: u64 = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    // In USER_HZ, 100 per second on Linux whatever the kernel's own tick rate.
    Some(Duration::from_millis(ticks * 10))
}

/// A counter of `/proc/PID/io`.
fn io_field(pid: u32, name: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix(name))?
        .trim()
        .parse()
        .ok()
}

/// Context switches of every thread of process `pid`.
fn context_switches(pid: u32) -> Option<u64> {
    let mut switches = 0;
    for thread in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(status) = std::fs::read_to_string(thread.ok()?.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        switches += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(switches)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Size in bytes of a SQLite database with its write-ahead log: (database, log).
pub fn sqlite_size(path: &Path) -> (u64, u64) {
    let size = |suffix| std::fs::metadata(with_suffix(path, suffix)).map_or(0, |m| m.len());
    (size(""), size("-wal"))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut path = path.to_path_buf().into_os_string();
    path.push(suffix);
    path.into()
}

/// A temporary SQLite file path removed on drop (with SQLite's side files).
pub mod tempfile_path {
    use std::path::{Path, PathBuf};

    use super::with_suffix;

    /// The files of one SQLite database: the side files go with it.
    const FILES: [&str; 3] = ["", "-wal", "-shm"];

    pub struct TempPath(Option<PathBuf>);

    impl TempPath {
        pub fn new(prefix: &str, ext: &str) -> Self {
            let name = format!("{prefix}-{}.{ext}", uuid::Uuid::new_v4());
            Self(Some(std::env::temp_dir().join(name)))
        }
        pub fn path(&self) -> &Path {
            self.0.as_deref().expect("kept until dropped")
        }
        pub fn display(&self) -> std::path::Display<'_> {
            self.path().display()
        }

        /// Moves the database (and its log) to `to`, which is then the caller's to remove.
        pub fn move_to(mut self, to: &Path) -> anyhow::Result<()> {
            let from = self.0.take().expect("kept until dropped");
            for suffix in FILES {
                let _ = std::fs::remove_file(with_suffix(to, suffix));
            }
            for suffix in &FILES[..2] {
                let file = with_suffix(&from, suffix);
                if file.exists() {
                    std::fs::rename(file, with_suffix(to, suffix))?;
                }
            }
            let _ = std::fs::remove_file(with_suffix(&from, "-shm"));
            Ok(())
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            if let Some(path) = &self.0 {
                for suffix in FILES {
                    let _ = std::fs::remove_file(with_suffix(path, suffix));
                }
            }
        }
    }
}
