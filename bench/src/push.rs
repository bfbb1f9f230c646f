//! Push wake-ups under load (issue 20): a push service stand-in inside the bench, each
//! recipient's device 1 registered with it, and, optionally, users who never connect and so are
//! woken by pushes while the pairs run.
//!
//! The sink is a UnifiedPush endpoint in miniature: it answers `201` to every request and
//! notes when each came, per registration (`/r/<n>`). Hand-rolled HTTP/1.1 (headers, then
//! `Content-Length` bytes of body, keep-alive) is all the server's push client speaks to it.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

use crate::server::{Running, User};

/// One message in this many from each sender goes to an offline user (with `--push-offline`).
pub const OFFLINE_EVERY: u64 = 50;

/// What the server needs to send pushes to the sink: plain-http loopback endpoints, and a
/// short interval so that a run of seconds sees several pushes per sleeping device.
pub fn server_env(min_interval: Duration) -> [(&'static str, String); 2] {
    [
        ("PUSH_ALLOW_INSECURE_ENDPOINTS", "true".into()),
        ("PUSH_MIN_INTERVAL", min_interval.as_secs().to_string()),
    ]
}

/// The push run's shape: how many users never connect, and the server's push interval.
pub struct Plan {
    pub offline: usize,
    /// Whether devices register with the sink (`--offline`, the baseline, registers none).
    register: bool,
    pub min_interval: Duration,
    sink: Sink,
}

impl Plan {
    pub async fn start(
        offline: usize,
        register: bool,
        min_interval: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            offline,
            register,
            min_interval,
            sink: Sink::start().await?,
        })
    }

    /// Registers `self.offline` more users who will never connect, and (unless this is the
    /// baseline) `recipients`' device 1 and theirs with the sink: returns the offline users'
    /// ids. Sink slots: recipients first, in order, then the offline users.
    pub async fn prepare(
        &self,
        server: &Running,
        recipients: &[User],
    ) -> anyhow::Result<Arc<[String]>> {
        let offline = match self.offline {
            0 => Vec::new(),
            n => server.register(n).await?,
        };
        let http = reqwest::Client::new();
        let registering = match self.register {
            true => recipients.len() + offline.len(),
            false => 0,
        };
        for (slot, user) in recipients
            .iter()
            .chain(&offline)
            .enumerate()
            .take(registering)
        {
            let endpoint = format!("{}/r/{slot}", self.sink.base);
            let response = http
                .put(format!("{}/api/devices/1/push", server.base))
                .bearer_auth(&user.token)
                .json(&json!({"kind": "unifiedpush", "endpoint": endpoint}))
                .send()
                .await?;
            if !response.status().is_success() {
                let status = response.status();
                bail!(
                    "registering a push endpoint: {status} {}",
                    response.text().await.unwrap_or_default()
                );
            }
        }
        self.sink.slots(recipients.len() + offline.len());
        Ok(offline.into_iter().map(|u| u.id).collect())
    }

    /// Prints what the sink received. `online` is the number of recipients (the first slots),
    /// `sent_for` how long the senders sent.
    pub fn print(&self, online: usize, sent_for: Duration) {
        let pushes = self.sink.pushes();
        let counts: Vec<u64> = pushes.iter().map(|p| p.len() as u64).collect();
        let (to_online, to_offline) = counts.split_at(online.min(counts.len()));
        let sum = |c: &[u64]| c.iter().sum::<u64>();
        let max = |c: &[u64]| c.iter().copied().max().unwrap_or(0);
        let min = |c: &[u64]| c.iter().copied().min().unwrap_or(0);
        println!(
            "  pushes: {} received by the sink | to the {online} online recipients {} (max {} per recipient; expected 0)",
            sum(&counts) + self.sink.unmatched(),
            sum(to_online),
            max(to_online),
        );
        if self.offline > 0 {
            // A sleeping device is pushed at once, then at most once per interval while
            // messages keep coming.
            let per_user = match self.register {
                true => (sent_for.as_secs_f64() / self.min_interval.as_secs_f64()).ceil(),
                false => 0.0,
            };
            println!(
                "  to the {} offline users {} (per user min {}, max {}; expected at most about {} × {per_user} = {})",
                self.offline,
                sum(to_offline),
                min(to_offline),
                max(to_offline),
                self.offline,
                self.offline as f64 * per_user,
            );
            // How far apart a user's pushes came: the interval, or later when the server's
            // wake-ups fall behind.
            let mut gaps: Vec<Duration> = (pushes.iter().skip(online))
                .flat_map(|at| at.windows(2).map(|w| w[1] - w[0]))
                .collect();
            gaps.sort_unstable();
            if let (Some(first), Some(last)) = (gaps.first(), gaps.last()) {
                println!(
                    "  between two pushes to one user: min {:.2} s, median {:.2} s, max {:.2} s (PUSH_MIN_INTERVAL {} s)",
                    first.as_secs_f64(),
                    gaps[gaps.len() / 2].as_secs_f64(),
                    last.as_secs_f64(),
                    self.min_interval.as_secs(),
                );
            }
        }
        if self.sink.unmatched() > 0 {
            println!(
                "  requests to no registered endpoint: {}",
                self.sink.unmatched()
            );
        }
    }
}

/// The push service stand-in.
struct Sink {
    /// `http://127.0.0.1:port`
    base: String,
    received: Arc<Received>,
}

#[derive(Default)]
struct Received {
    /// When each request to `/r/<n>` arrived, per `n`; sized by `Sink::slots` before the run.
    slots: Mutex<Vec<Vec<Instant>>>,
    /// Requests to any other path (or past the slots): should stay 0.
    unmatched: AtomicU64,
}

impl Sink {
    async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let received = Arc::new(Received::default());
        let accepting = received.clone();
        // Ends with the process (the bench's run is the sink's lifetime).
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let received = accepting.clone();
                tokio::spawn(async move {
                    // A connection the server drops mid-request is no error of the run's.
                    let _ = serve(stream, &received).await;
                });
            }
        });
        Ok(Self { base, received })
    }

    fn slots(&self, n: usize) {
        if let Ok(mut slots) = self.received.slots.lock() {
            slots.resize_with(n, Vec::new);
        }
    }

    fn pushes(&self) -> Vec<Vec<Instant>> {
        (self.received.slots.lock())
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    fn unmatched(&self) -> u64 {
        self.received.unmatched.load(Ordering::Relaxed)
    }
}

/// Answers every request on one keep-alive connection with `201`, noting each.
async fn serve(stream: TcpStream, received: &Received) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut length = 0usize;
        loop {
            line.clear();
            if stream.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().context("Content-Length")?;
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        record(received, &path);
        stream
            .get_mut()
            .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
            .await?;
    }
}

fn record(received: &Received, path: &str) {
    let slot = path
        .strip_prefix("/r/")
        .and_then(|n| n.parse::<usize>().ok());
    let recorded = received.slots.lock().is_ok_and(|mut slots| {
        slot.and_then(|n| slots.get_mut(n))
            .map(|at| at.push(Instant::now()))
            .is_some()
    });
    if !recorded {
        received.unmatched.fetch_add(1, Ordering::Relaxed);
    }
}
