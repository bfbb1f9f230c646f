//! The load: real WebSocket clients, each a task, timing with one clock.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{net::TcpSocket, sync::Semaphore};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, client_async, connect_async_with_config,
    tungstenite::{Message, protocol::WebSocketConfig},
};

use crate::{
    server::{Running, Usage, User},
    stats::Latencies,
};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// How long to wait for stragglers once sending stops.
pub(crate) const DRAIN: Duration = Duration::from_secs(5);
/// How long the server is left to finish what connecting the sockets started (presence,
/// catch-ups) before the clock starts.
pub(crate) const SETTLE: Duration = Duration::from_millis(200);

#[derive(Clone, Copy)]
pub struct Load {
    pub pairs: usize,
    /// Messages per second in all; `None`: closed loop at saturation.
    pub rate: Option<u64>,
    pub window: usize,
    pub duration: Duration,
    pub login_storm: u64,
    /// Recipients send a read receipt for every message, as the app does once it is shown.
    pub read_receipts: bool,
    /// Senders name their messages (random UUIDv4) instead of letting the server do it.
    pub client_ids: bool,
    /// Senders upload each acknowledged message's ciphertext, as the app does (under an id of
    /// their own, which the server matches to their oldest message without content).
    pub content: bool,
    /// Each recipient blocks its sender before the run: every message is withheld.
    pub blocked: bool,
}

impl Load {
    /// `pairs` pairs sending as fast as they are acknowledged for `duration`, and nothing else.
    pub fn saturating(pairs: usize, duration: Duration) -> Self {
        Self {
            pairs,
            rate: None,
            window: 64,
            duration,
            login_storm: 0,
            read_receipts: false,
            client_ids: false,
            content: false,
            blocked: false,
        }
    }
}

/// The app's ciphertext stand-in: 256 bytes, base64.
const CONTENT: &str = concat!(
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
);

/// HTTP requests of one kind (content uploads, content fetches): how many succeeded, how many
/// failed, and how long each successful one took from the moment it was due.
#[derive(Default)]
struct Requests {
    succeeded: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
    latencies: std::sync::Mutex<Vec<u64>>,
}

impl Requests {
    /// Sends `request` in a task of its own; success is answering `expected`. `due` is a time
    /// on `clock`; `then` runs after a success.
    fn spawn(
        self: &Arc<Self>,
        request: reqwest::RequestBuilder,
        expected: u16,
        (clock, due): (Instant, Duration),
        then: impl FnOnce() + Send + 'static,
    ) {
        let this = self.clone();
        this.in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let ok = matches!(request.send().await, Ok(r) if r.status().as_u16() == expected);
            if ok {
                let took = clock.elapsed().saturating_sub(due).as_micros() as u64;
                this.succeeded.fetch_add(1, Ordering::Relaxed);
                this.latencies.lock().map(|mut l| l.push(took)).ok();
                then();
            } else {
                this.failed.fetch_add(1, Ordering::Relaxed);
            }
            this.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Waits until none is in flight, for at most `DRAIN`.
    async fn drain(&self) {
        let deadline = Instant::now() + DRAIN;
        while self.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn tally(&self) -> (u64, u64, Latencies) {
        let latencies = self.latencies.lock().map(|mut l| std::mem::take(&mut *l));
        (
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            Latencies::new(latencies.unwrap_or_default()),
        )
    }
}

pub struct Report {
    sent: u64,
    acked: u64,
    delivered: u64,
    duplicates: u64,
    elapsed: Duration,
    latencies: Latencies,
    /// Send → `message_ack` at the sender: the message decoded, committed and acknowledged.
    acks: Latencies,
    mode: String,
    logins: u64,
    /// Messages sent to users who never connect (push runs): acknowledged, never delivered.
    offline: u64,
    /// Read receipts that reached the senders (when recipients send them).
    receipts: Option<u64>,
    /// Content uploads (stored, refused, latency from the ack) and recipients' fetches (got,
    /// failed, latency from the send), with `--content`.
    content: Option<[(u64, u64, Latencies); 2]>,
    /// What the server used from the first message sent to the last one delivered (and the
    /// receipts and uploads drained): its CPU time is steadier than throughput when the load
    /// generator shares the machine, its writes and context switches steadier still.
    server: Option<Usage>,
    /// Each delivered message's send time (from the start of the run) and latency, in µs.
    timeline: Vec<(u64, u64)>,
}

impl Report {
    /// Writes the timeline, a line `send_time_us latency_us` per delivered message in the
    /// order sent: where slow messages cluster in time (a periodic stall, a start-up cost).
    pub fn write_timeline(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use std::io::Write;
        let mut timeline = self.timeline.clone();
        timeline.sort_unstable();
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (sent, latency) in timeline {
            writeln!(out, "{sent} {latency}")?;
        }
        out.flush()?;
        Ok(())
    }

    pub fn delivered_per_second(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }

    pub fn figures(&self) -> Figures {
        Figures::new(
            self.delivered_per_second(),
            [&self.latencies, &self.acks],
            self.server,
            self.delivered,
        )
    }

    pub fn print(&self, what: &str) {
        println!(
            "{what}: {} | sent {} acked {} delivered {} ({:.0}/s) lost {} duplicates {}{}{}{} | {}",
            self.mode,
            self.sent,
            self.acked,
            self.delivered,
            self.delivered_per_second(),
            self.acked
                .saturating_sub(self.offline)
                .saturating_sub(self.delivered),
            self.duplicates,
            if self.offline > 0 {
                format!(" | to offline users {}", self.offline)
            } else {
                String::new()
            },
            if self.logins > 0 {
                format!(" | logins {}", self.logins)
            } else {
                String::new()
            },
            match self.receipts {
                Some(n) => format!(" | read receipts {n}"),
                None => String::new(),
            },
            self.latencies.summary(),
        );
        println!("  send → ack: {}", self.acks.summary());
        if let Some(used) = self.server {
            let [cpu, written, switches] = used.per_message(self.delivered);
            println!(
                "  server CPU: {:.1} s, {cpu:.1} us per delivered message; per message, {written:.1} KiB written to files (log, database) and {switches:.2} context switches",
                used.cpu.as_secs_f64(),
            );
        }
        if let Some([(stored, refused, uploads), (got, failed, fetches)]) = &self.content {
            println!(
                "  content uploads: {stored} stored, {refused} refused or failed | from ack: {}",
                uploads.summary()
            );
            println!(
                "  content fetches: {got} got, {failed} failed | from send: {}",
                fetches.summary()
            );
        }
    }
}

/// One run's headline figures, for comparing runs (`--compare`).
pub struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    /// Send → ack (zero where the run does not time acks: device runs).
    ack_p99: Duration,
    /// Server CPU microseconds per delivered message.
    cpu_per_message: Option<f64>,
    /// KiB the server wrote to files per delivered message.
    written_per_message: Option<f64>,
    /// Context switches of the server's threads per delivered message.
    switches_per_message: Option<f64>,
}

impl Figures {
    /// The figures of a run that delivered `per_second`, with `[latencies, acks]` and the
    /// server's usage `used`, counted over `messages` messages.
    pub fn new(
        per_second: f64,
        [latencies, acks]: [&Latencies; 2],
        used: Option<Usage>,
        messages: u64,
    ) -> Self {
        let per_message = used.map(|u| u.per_message(messages));
        Self {
            per_second,
            p50: latencies.percentile(50.0),
            p99: latencies.percentile(99.0),
            ack_p99: acks.percentile(99.0),
            cpu_per_message: per_message.map(|[cpu, ..]| cpu),
            written_per_message: per_message.map(|[_, written, _]| written),
            switches_per_message: per_message.map(|[.., switches]| switches),
        }
    }

    /// Means of throughput and CPU, medians of the latencies (tails are skewed by outliers).
    fn aggregate(runs: &[Self]) -> [f64; 7] {
        let mean = |f: &dyn Fn(&Self) -> f64| runs.iter().map(f).sum::<f64>() / runs.len() as f64;
        let median = |f: &dyn Fn(&Self) -> f64| {
            let mut values: Vec<f64> = runs.iter().map(f).collect();
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied().unwrap_or(0.0)
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        [
            mean(&|r| r.per_second),
            median(&|r| ms(r.p50)),
            median(&|r| ms(r.p99)),
            median(&|r| ms(r.ack_p99)),
            mean(&|r| r.cpu_per_message.unwrap_or(0.0)),
            mean(&|r| r.written_per_message.unwrap_or(0.0)),
            mean(&|r| r.switches_per_message.unwrap_or(0.0)),
        ]
    }

    pub fn summary(runs: &[Self]) -> String {
        let [rate, p50, p99, ack_p99, cpu, written, switches] = Self::aggregate(runs);
        let each = runs
            .iter()
            .map(|r| {
                format!(
                    "{:.0}/s p99 {:.2} ms",
                    r.per_second,
                    r.p99.as_secs_f64() * 1e3
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{} runs: mean {rate:.0} delivered/s, median p50 {p50:.2} ms, median p99 {p99:.2} ms, median ack p99 {ack_p99:.2} ms, mean {cpu:.1} us CPU, {written:.1} KiB written, {switches:.2} context switches per message [{each}]",
            runs.len()
        )
    }

    /// `second`'s figures divided by `first`'s.
    pub fn ratios(first: &[Self], second: &[Self]) -> String {
        let (a, b) = (Self::aggregate(first), Self::aggregate(second));
        // "-" where neither side measured it (acks in device runs).
        let ratio = |i: usize| match a[i] > 0.0 {
            true => format!("x{:.3}", b[i] / a[i]),
            false => "-".to_owned(),
        };
        format!(
            "delivered/s {}, p50 {}, p99 {}, ack p99 {}, CPU per message {}, written {}, context switches {}",
            ratio(0),
            ratio(1),
            ratio(2),
            ratio(3),
            ratio(4),
            ratio(5),
            ratio(6)
        )
    }
}

pub(crate) async fn connect(server: &Running, user: &User) -> anyhow::Result<Socket> {
    let url = if server.relay {
        format!("{}/?u={}", server.ws_base(), user.id)
    } else {
        format!("{}/ws?token={}", server.ws_base(), user.token)
    };
    connect_url(&url).await
}

/// Opens a socket as the generator's clients do.
pub(crate) async fn connect_url(url: &str) -> anyhow::Result<Socket> {
    // tungstenite zeroes the free part of its read buffer before each read: at its 128 KiB
    // default that memset was a quarter of the generator's CPU, taken from the server it
    // shares the machine with. The server's frames are small; a larger one grows the buffer.
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    // TCP_NODELAY: with Nagle's algorithm the load generator would hold its own frames back
    // and understate the server.
    Ok(connect_async_with_config(url, Some(config), true)
        .await
        .context("websocket connect")?
        .0)
}

/// The value of `"key":"..."` in a frame, without parsing all of it.
pub(crate) fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// Each recipient blocks its sender (`--blocked`).
/// Sender `index` of `senders`' ticks, `every` apart from `clock`'s start, the senders' spread
/// evenly over the interval: a fixed rate, not a burst of one message from every sender at
/// each tick (the senders start together, their sockets opened before the clock).
pub(crate) fn ticks(
    every: Duration,
    index: usize,
    senders: usize,
    clock: Instant,
) -> tokio::time::Interval {
    let phase = every.mul_f64(index as f64 / senders.max(1) as f64);
    tokio::time::interval_at(tokio::time::Instant::from_std(clock) + phase, every)
}

/// Each sender opens its conversation with its recipient before the clock starts, as the app
/// does when a chat is opened: the run measures messages between contacts, not the first
/// message's conversation being created (50 writes of their own, each with its commit, which
/// made the first 50–80 ms of every run its slowest, up to 50 ms a message).
pub(crate) async fn open_conversations(
    server: &Running,
    senders: &[User],
    recipients: &[User],
) -> anyhow::Result<()> {
    post_for_each_pair(
        server,
        senders,
        recipients,
        "opening a conversation",
        |s, r| {
            let body = json!({"participant_id": r.id});
            (s, "/api/conversations".to_owned(), Some(body))
        },
    )
    .await
}

async fn block_senders(
    server: &Running,
    senders: &[User],
    recipients: &[User],
) -> anyhow::Result<()> {
    post_for_each_pair(server, senders, recipients, "block", |s, r| {
        (r, format!("/api/users/{}/block", s.id), None)
    })
    .await
}

/// For each (sender, recipient) pair, the POST `request` names (whose token, the path, the JSON
/// body if any), one after the other; fails on the first that does not succeed.
async fn post_for_each_pair<'a>(
    server: &Running,
    senders: &'a [User],
    recipients: &'a [User],
    what: &str,
    request: impl Fn(&'a User, &'a User) -> (&'a User, String, Option<Value>),
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for (sender, recipient) in senders.iter().zip(recipients) {
        let (by, path, body) = request(sender, recipient);
        let mut post = http
            .post(format!("{}{path}", server.base))
            .bearer_auth(&by.token);
        if let Some(body) = body {
            post = post.json(&body);
        }
        let response = post.send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "{what}: {}",
            response.status()
        );
    }
    Ok(())
}

pub async fn routing(server: &Running, load: &Load) -> anyhow::Result<Report> {
    routing_with(server, load, None).await
}

/// The run above with push wake-ups (issue 20): the recipients' device 1 registered with
/// `push`'s sink before the run, and with `push.offline` users who never connect, each
/// sender's every `OFFLINE_EVERY`th message going to one of them.
pub async fn routing_with_push(
    server: &Running,
    load: &Load,
    push: &crate::push::Plan,
) -> anyhow::Result<Report> {
    routing_with(server, load, Some(push)).await
}

async fn routing_with(
    server: &Running,
    load: &Load,
    push: Option<&crate::push::Plan>,
) -> anyhow::Result<Report> {
    let users: Vec<User> = if server.relay {
        (0..2 * load.pairs)
            .map(|i| User {
                id: i.to_string(),
                token: String::new(),
                email: String::new(),
            })
            .collect()
    } else {
        server.register(2 * load.pairs + 1).await?
    };
    let offline: Arc<[String]> = match push {
        Some(push) => {
            push.prepare(server, &users[load.pairs..2 * load.pairs])
                .await?
        }
        None => Arc::from([]),
    };
    if !server.relay {
        open_conversations(
            server,
            &users[..load.pairs],
            &users[load.pairs..2 * load.pairs],
        )
        .await?;
    }
    if load.blocked && !server.relay {
        block_senders(
            server,
            &users[..load.pairs],
            &users[load.pairs..2 * load.pairs],
        )
        .await?;
    }
    let offline_sent = Arc::new(AtomicU64::new(0));
    // Every socket is open before the clock starts: connecting (authentication, presence, the
    // catch-up) is not the steady load measured, and senders that started while others were
    // still connecting made the first tens of milliseconds of every run its slowest.
    let mut recipient_sockets = Vec::with_capacity(load.pairs);
    for recipient in &users[load.pairs..2 * load.pairs] {
        recipient_sockets.push(connect(server, recipient).await?);
    }
    let mut sender_sockets = Vec::with_capacity(load.pairs);
    for sender in &users[..load.pairs] {
        sender_sockets.push(connect(server, sender).await?);
    }
    tokio::time::sleep(SETTLE).await;
    let clock = Instant::now();
    let used_at_start = server.pid().and_then(Usage::of);
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, acked) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let receipts = Arc::new(AtomicU64::new(0));
    let read = load.read_receipts && !server.relay;
    let content = load.content && !server.relay;
    let (uploads, fetches) = (Arc::new(Requests::default()), Arc::new(Requests::default()));
    let http = reqwest::Client::new();
    let content_url = format!("{}/api/messages", server.base);

    let mut receivers = Vec::new();
    for (recipient, mut socket) in users[load.pairs..2 * load.pairs]
        .iter()
        .zip(recipient_sockets)
    {
        let stop = stop.clone();
        let (fetches, http, content_url) = (fetches.clone(), http.clone(), content_url.clone());
        let token = recipient.token.clone();
        receivers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut seen = HashSet::new();
            let mut duplicates = 0u64;
            let mut last = Duration::ZERO;
            // With content, a message is read once its body is fetched, as in the app.
            let (shown, mut to_mark) = tokio::sync::mpsc::unbounded_channel::<String>();
            loop {
                let wait = if stop.load(Ordering::Relaxed) {
                    DRAIN
                } else {
                    Duration::from_secs(60)
                };
                let next = tokio::select! {
                    next = tokio::time::timeout(wait, socket.next()) => next,
                    Some(id) = to_mark.recv() => {
                        let receipt = json!({"type": "read_receipt", "payload": {"messageId": id}});
                        if socket.send(Message::text(receipt.to_string())).await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                let Ok(Some(Ok(message))) = next else {
                    break;
                };
                let Message::Text(text) = message else {
                    continue;
                };
                let text = text.as_str();
                if !text.contains("\"type\":\"message\"") {
                    continue;
                }
                let (Some(id), Some(sent_at)) = (field(text, "id"), field(text, "sessionId"))
                else {
                    continue;
                };
                if !seen.insert(id.to_owned()) {
                    duplicates += 1;
                    continue;
                }
                let sent_at: u64 = sent_at.parse().unwrap_or(0);
                let now = clock.elapsed().as_micros() as u64;
                latencies.push((sent_at, now.saturating_sub(sent_at)));
                if content {
                    // The app asks for the body at once; the server waits for the upload.
                    let request = http
                        .get(format!("{content_url}/{id}/content"))
                        .bearer_auth(&token);
                    let (id, shown) = (id.to_owned(), shown.clone());
                    let mark = move || {
                        if read {
                            let _ = shown.send(id);
                        }
                    };
                    let due = Duration::from_micros(sent_at);
                    fetches.spawn(request, 200, (clock, due), mark);
                } else if read {
                    let receipt = json!({"type": "read_receipt", "payload": {"messageId": id}});
                    if socket
                        .send(Message::text(receipt.to_string()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                last = clock.elapsed();
            }
            (latencies, duplicates, last)
        }));
    }

    let per_sender_interval = load
        .rate
        .map(|rate| Duration::from_secs_f64(load.pairs as f64 / rate.max(1) as f64));
    let mut senders = Vec::new();
    for (index, ((sender, recipient), socket)) in users[..load.pairs]
        .iter()
        .zip(&users[load.pairs..2 * load.pairs])
        .zip(sender_sockets)
        .enumerate()
    {
        let (mut sink, mut stream) = socket.split();
        let window = Arc::new(Semaphore::new(load.window));
        let sent = sent.clone();
        let ack_window = window.clone();
        let ack_count = acked.clone();
        let receipt_count = receipts.clone();
        let (uploads, http, content_url) = (uploads.clone(), http.clone(), content_url.clone());
        let token = sender.token.clone();
        // Send times, in the order sent: a socket's acks come in that order (one for each
        // message, or an error frame naming it).
        let (sent_at, mut ack_due) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let acks = tokio::spawn(async move {
            let mut ack_latencies = Vec::new();
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                if text.as_str().contains("\"type\":\"error\"") {
                    ack_due.try_recv().ok();
                } else if text.as_str().contains("message_ack") {
                    if let Ok(at) = ack_due.try_recv() {
                        let now = clock.elapsed().as_micros() as u64;
                        ack_latencies.push(now.saturating_sub(at));
                    }
                    ack_count.fetch_add(1, Ordering::Relaxed);
                    ack_window.add_permits(1);
                    if content {
                        // Under an id of the app's own, which the server resolves (FIFO).
                        let own_id = uuid::Uuid::new_v4();
                        let request = http
                            .post(format!("{content_url}/{own_id}/content"))
                            .bearer_auth(&token)
                            .json(&json!({"message_id": own_id.to_string(), "content_data": CONTENT, "content_hash": null, "expires_at": null}));
                        uploads.spawn(request, 201, (clock, clock.elapsed()), || {});
                    }
                } else if text.as_str().contains("\"type\":\"read_receipt\"") {
                    receipt_count.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The server closed this socket (as too slow, say): no ack will free the window,
            // and the sender must stop instead of waiting for one.
            ack_window.close();
            ack_latencies
        });
        let (to, relay, duration) = (recipient.id.clone(), server.relay, load.duration);
        let (client_ids, pairs) = (load.client_ids, load.pairs);
        let (offline, offline_sent) = (offline.clone(), offline_sent.clone());
        senders.push(tokio::spawn(async move {
            let mut numbered = 0u64;
            let mut tick = per_sender_interval.map(|every| ticks(every, index, pairs, clock));
            while clock.elapsed() < duration {
                match tick.as_mut() {
                    Some(tick) => {
                        tick.tick().await;
                    }
                    None => match window.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => break,
                    },
                }
                let at = clock.elapsed().as_micros();
                // With offline users (push runs), every OFFLINE_EVERY-th message is theirs,
                // in turn; none otherwise.
                let to = match offline.len() {
                    0 => &to,
                    n => {
                        numbered += 1;
                        if numbered.is_multiple_of(crate::push::OFFLINE_EVERY) {
                            offline_sent.fetch_add(1, Ordering::Relaxed);
                            let turn = index + (numbered / crate::push::OFFLINE_EVERY) as usize;
                            &offline[turn % n]
                        } else {
                            &to
                        }
                    }
                };
                let mut payload = json!({"recipientId": to, "messageType": "text", "sessionId": at.to_string()});
                // The relay has no store to name messages: the recipients count them by id.
                if client_ids || relay {
                    payload["id"] = uuid::Uuid::new_v4().to_string().into();
                }
                let frame = if relay {
                    json!({"to": to.parse::<u64>().unwrap_or(0), "type": "message", "payload": payload})
                } else {
                    json!({"type": "message", "payload": payload})
                };
                let _ = sent_at.send(at as u64);
                if sink.send(Message::text(frame.to_string())).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            (sink, acks)
        }));
    }

    let storm = (load.login_storm > 0 && !server.relay).then(|| {
        let (base, user, stop) = (
            server.base.clone(),
            users[2 * load.pairs].clone(),
            stop.clone(),
        );
        let every = Duration::from_secs_f64(1.0 / load.login_storm as f64);
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut tick = tokio::time::interval(every);
            let mut pending = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let request = http
                    .post(format!("{base}/api/auth/login"))
                    .json(&json!({"email": user.email, "password": "bench-password"}));
                pending.push(tokio::spawn(request.send()));
            }
            let mut ok = 0;
            for p in pending {
                if matches!(p.await, Ok(Ok(r)) if r.status().is_success()) {
                    ok += 1;
                }
            }
            ok
        })
    });

    let mut open = Vec::new();
    for sender in senders {
        open.push(sender.await?);
    }
    let elapsed = clock.elapsed();
    stop.store(true, Ordering::Relaxed);
    let expected = sent.load(Ordering::Relaxed);
    let deadline = Instant::now() + DRAIN;
    while !server.relay && acked.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut latencies = Vec::new();
    let mut duplicates = 0;
    // Throughput counts until the last delivery: a backlog drained late is not free.
    let mut elapsed = elapsed;
    for receiver in receivers {
        let (l, d, last) = receiver.await?;
        latencies.extend(l);
        duplicates += d;
        elapsed = elapsed.max(last);
    }
    let logins = match storm {
        Some(storm) => storm.await?,
        None => 0,
    };
    let delivered = latencies.len() as u64;
    let timeline = latencies;
    let latencies = timeline.iter().map(|&(_, latency)| latency).collect();
    let deadline = Instant::now() + DRAIN;
    while read && receipts.load(Ordering::Relaxed) < delivered && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    uploads.drain().await;
    fetches.drain().await;
    let used = server
        .pid()
        .and_then(Usage::of)
        .zip(used_at_start)
        .map(|(end, start)| end.since(start));
    // The ack tasks end once their socket is closed: drop the sink half.
    let mut ack_latencies = Vec::new();
    let deadline = tokio::time::Instant::now() + DRAIN;
    for (mut sink, acks) in open {
        let _ = tokio::time::timeout_at(deadline, sink.close()).await;
        drop(sink);
        if let Ok(Ok(mut l)) = tokio::time::timeout_at(deadline, acks).await {
            ack_latencies.append(&mut l);
        }
    }
    Ok(Report {
        sent: expected,
        acked: if server.relay {
            expected
        } else {
            acked.load(Ordering::Relaxed)
        },
        delivered,
        duplicates,
        elapsed,
        latencies: Latencies::new(latencies),
        acks: Latencies::new(ack_latencies),
        timeline,
        mode: match load.rate {
            Some(rate) => format!("{} pairs at {rate}/s for {:?}", load.pairs, load.duration),
            None => format!(
                "{} pairs saturated (window {}) for {:?}",
                load.pairs, load.window, load.duration
            ),
        },
        logins,
        offline: offline_sent.load(Ordering::Relaxed),
        receipts: read.then(|| receipts.load(Ordering::Relaxed)),
        content: content.then(|| [uploads.tally(), fetches.tally()]),
        server: used,
    })
}

/// Opens `sockets` authenticated sockets spread over `users` users and reports the server's
/// resident memory per socket.
pub async fn idle(
    server: &Running,
    sockets: usize,
    users: usize,
    settle: Duration,
    first_source: u8,
) -> anyhow::Result<()> {
    let users = server.register(users.max(1)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib();
    let mut open = Vec::with_capacity(sockets);
    let started = Instant::now();
    let port: u16 = server
        .base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("port")?;
    for i in 0..sockets {
        let user = &users[i % users.len()];
        // 20,000 sockets per source address stay well inside the ephemeral port range.
        let source = (usize::from(first_source) + i / 20_000).try_into();
        let source = std::net::Ipv4Addr::new(127, 0, 0, source.context("source addresses")?);
        let tcp = TcpSocket::new_v4()?;
        tcp.bind((source, 0).into())?;
        let stream = tcp
            .connect(([127, 0, 0, 1], port).into())
            .await
            .with_context(|| format!("socket {i}"))?;
        let url = format!("{}/ws?token={}", server.ws_base(), user.token);
        let (socket, _) = client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .with_context(|| format!("upgrade {i}"))?;
        open.push(socket);
    }
    let connect_time = started.elapsed();
    tokio::time::sleep(settle).await;
    let after = server.rss_kib();
    let health: Value = reqwest::get(format!("{}/health", server.base))
        .await?
        .json()
        .await?;
    println!(
        "idle: {} sockets open in {:.1} s (server reports {} sockets)",
        open.len(),
        connect_time.as_secs_f64(),
        health["sockets"]
    );
    if let (Some(before), Some(after)) = (before, after) {
        println!(
            "server RSS {before} KiB → {after} KiB: {:.2} KiB per idle socket",
            (after.saturating_sub(before)) as f64 / open.len().max(1) as f64
        );
    }
    Ok(())
}

/// One channel message to `members` online members, `rounds` times: time until the last one
/// has it.
pub async fn fanout(server: &Running, members: usize, rounds: usize) -> anyhow::Result<()> {
    let users = server.register(members + 1).await?;
    let http = reqwest::Client::new();
    let owner = &users[0];
    let channel: Value = http
        .post(format!("{}/api/channels", server.base))
        .bearer_auth(&owner.token)
        .json(&json!({"name": "bench", "is_private": false}))
        .send()
        .await?
        .json()
        .await?;
    let channel = channel["id"].as_str().context("channel")?.to_owned();
    let got = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for member in &users[1..] {
        http.post(format!("{}/api/channels/{channel}/join", server.base))
            .bearer_auth(&member.token)
            .send()
            .await?;
        let mut socket = connect(server, member).await?;
        let got = got.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message
                    && text.as_str().contains("\"type\":\"channel_message\"")
                {
                    got.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut samples = Vec::new();
    for round in 1..=rounds as u64 {
        let started = Instant::now();
        http.post(format!("{}/api/channels/{channel}/messages", server.base))
            .bearer_auth(&owner.token)
            .json(&json!({"message_type": "text"}))
            .send()
            .await?;
        let target = round * members as u64;
        while got.load(Ordering::Relaxed) < target && started.elapsed() < DRAIN {
            tokio::task::yield_now().await;
        }
        samples.push(started.elapsed().as_micros() as u64);
    }
    let total = got.load(Ordering::Relaxed);
    println!(
        "fan-out to {members} members, {rounds} rounds: {total}/{} delivered; time to the last member: {}",
        rounds * members,
        Latencies::new(samples).summary()
    );
    for reader in readers {
        reader.abort();
    }
    Ok(())
}
