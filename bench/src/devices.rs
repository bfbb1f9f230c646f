//! `routing --devices N` (issue 19): every recipient is N devices, each with a device-bound
//! session and a socket of its own, and every message carries one envelope per device, as a
//! Signal client sends it. Each device checks that it gets only its own envelope, acknowledges
//! it (`ack`), and at the end every device queue must be empty.
//!
//! Kept apart from `client::routing` so that the one-device run stays the same code, frame for
//! frame.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    client::{self, DRAIN, Figures, Socket, connect, connect_url, field},
    server::{Running, Usage, User},
    stats::Latencies,
};

/// Bytes of each envelope's ciphertext: a short text message as a Signal `SignalMessage`
/// (version byte, ratchet key, counters, padded body, MAC) is about this size.
const CIPHERTEXT_BYTES: usize = 200;
/// Signal-Server's `Envelope.Type.CIPHERTEXT`; the server does not interpret it.
const ENVELOPE_TYPE: u8 = 1;
/// How long a device may take to say `queue_empty` after it connects: its queue is empty or
/// short, so this is only a bound for a server that never says it.
const QUEUE_EMPTY_WAIT: Duration = Duration::from_secs(2);
/// How often an idle device socket looks whether sending has stopped.
const POLL: Duration = Duration::from_millis(100);
/// The longest the bench waits for the device acks to be processed once the envelopes are all
/// delivered (while the server makes progress on them).
const ACK_CATCH_UP_MAX: Duration = Duration::from_secs(120);
/// At the start, the first connect of a device also waits for the server's setup work.
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
pub struct Load {
    pub pairs: usize,
    pub devices: u8,
    /// Messages per second in all; `None`: closed loop at saturation.
    pub rate: Option<u64>,
    pub window: usize,
    pub duration: Duration,
    /// Senders name their messages (random UUIDv4) instead of letting the server do it.
    pub client_ids: bool,
}

/// One device of a recipient: its device-bound session.
struct Device {
    pair: usize,
    id: u8,
    token: String,
}

/// What one device socket saw during the run.
struct Tally {
    pair: usize,
    id: u8,
    token: String,
    latencies: Vec<u64>,
    duplicates: u64,
    /// Envelopes labelled for another device, or whose bytes were another device's.
    misdirected: u64,
    /// `error` frames (answers to acks: there should be none).
    errors: u64,
    /// Envelopes the server reported dropped (`envelopes_dropped`).
    dropped: u64,
    last: Duration,
    /// The socket, whole again once its acks are written (`None` if that failed).
    socket: Option<Socket>,
}

pub struct Report {
    load: Load,
    sent: u64,
    acked: u64,
    /// Messages the server refused (`error` frames to the senders), and the first such frame.
    refused: u64,
    first_refusal: Option<String>,
    delivered: u64,
    lost: u64,
    duplicates: u64,
    misdirected: u64,
    device_errors: u64,
    dropped: u64,
    /// `delivery_receipt`s the senders got: one per device ack the server processed.
    receipts: u64,
    /// When sending stopped: envelopes stored (messages acknowledged × devices), and device
    /// acks the server had processed by then; the difference is the queues' backlog.
    at_stop: (u64, u64),
    /// How long after sending stopped every delivered envelope's ack was processed (`None`:
    /// never, within the bench's patience).
    acks_done: Option<Duration>,
    elapsed: Duration,
    latencies: Latencies,
    server: Option<Usage>,
    /// Devices whose queue was empty at the end, devices that still had envelopes (and how
    /// many in all), devices that never said `queue_empty` on reconnect.
    queues_empty: u64,
    queues_left: (u64, u64),
    queues_silent: u64,
}

impl Report {
    pub fn print(&self, what: &str) {
        let load = &self.load;
        let devices = u64::from(load.devices);
        let seconds = self.elapsed.as_secs_f64();
        let plural = if load.devices == 1 { "" } else { "s" };
        let mode = match load.rate {
            Some(rate) => format!(
                "{} pairs × {} device{plural} at {rate} msg/s for {:?}",
                load.pairs, load.devices, load.duration
            ),
            None => format!(
                "{} pairs × {} device{plural} saturated (window {}) for {:?}",
                load.pairs, load.devices, load.window, load.duration
            ),
        };
        println!(
            "{what}: {mode} | sent {} acked {} refused {} | envelopes delivered {} ({:.0}/s, {:.0} msg/s to every device) lost {} duplicates {} misdirected {} | device acks confirmed {} | {}",
            self.sent,
            self.acked,
            self.refused,
            self.delivered,
            self.delivered as f64 / seconds,
            self.delivered as f64 / devices as f64 / seconds,
            self.lost,
            self.duplicates,
            self.misdirected,
            self.receipts,
            self.latencies.summary(),
        );
        if let Some(used) = self.server {
            let [cpu, written, switches] = used.per_message(self.acked);
            let [per_envelope, ..] = used.per_message(self.delivered);
            println!(
                "  server CPU: {:.1} s, {cpu:.1} us per message ({per_envelope:.1} us per envelope); per message, {written:.1} KiB written to files (log, database) and {switches:.2} context switches",
                used.cpu.as_secs_f64(),
            );
        }
        let queues = self.queues_empty + self.queues_left.0 + self.queues_silent;
        println!(
            "  device queues at the end: {}/{queues} empty | {} with envelopes left ({} envelopes: their acks were lost) | {} without queue_empty within {:?}",
            self.queues_empty,
            self.queues_left.0,
            self.queues_left.1,
            self.queues_silent,
            QUEUE_EMPTY_WAIT,
        );
        println!(
            "  when sending stopped: {} envelopes stored, {} device acks processed ({} behind); {}",
            self.at_stop.0,
            self.at_stop.1,
            self.at_stop.0.saturating_sub(self.at_stop.1),
            match self.acks_done {
                Some(after) => format!(
                    "all acks processed {:.1} s after sending stopped",
                    after.as_secs_f64()
                ),
                None => format!(
                    "{} acks never processed",
                    self.delivered.saturating_sub(self.receipts)
                ),
            },
        );
        if self.device_errors > 0 || self.dropped > 0 {
            println!(
                "  devices got {} error frames and {} envelopes reported dropped",
                self.device_errors, self.dropped
            );
        }
        if let Some(frame) = &self.first_refusal {
            println!("  first refusal: {frame}");
        }
    }

    /// Whether every envelope reached its device exactly once, was acknowledged, and no queue
    /// kept any.
    /// The headline figures, for `--compare`: envelopes delivered per second; CPU, writes and
    /// context switches per message sent and acknowledged.
    pub fn figures(&self) -> Figures {
        let per_second = self.delivered as f64 / self.elapsed.as_secs_f64();
        let no_acks = Latencies::new(Vec::new());
        Figures::new(
            per_second,
            [&self.latencies, &no_acks],
            self.server,
            self.acked,
        )
    }

    pub fn clean(&self) -> bool {
        self.refused == 0
            && self.lost == 0
            && self.duplicates == 0
            && self.misdirected == 0
            && self.device_errors == 0
            && self.queues_left.0 == 0
            && self.queues_silent == 0
    }
}

pub async fn routing(server: &Running, load: &Load) -> anyhow::Result<Report> {
    if server.relay {
        bail!("the relay has no devices");
    }
    let users = server.register(2 * load.pairs).await?;
    let devices = login_devices(server, &users[load.pairs..], load.devices).await?;
    client::open_conversations(server, &users[..load.pairs], &users[load.pairs..]).await?;

    // As in the one-device run, every socket is open before the clock starts.
    let mut device_sockets = Vec::with_capacity(devices.len());
    for device in devices {
        let mut socket = connect_device(server, &device.token, device.id)
            .await
            .with_context(|| format!("device {} of recipient {}", device.id, device.pair))?;
        match until_queue_empty(&mut socket, FIRST_CONNECT_WAIT).await {
            Some(0) => {}
            Some(n) => bail!("a new device had {n} envelopes queued"),
            None => bail!(
                "no queue_empty on a device socket within {FIRST_CONNECT_WAIT:?}: does this server have envelopes (issue 19)?"
            ),
        }
        device_sockets.push((device, socket));
    }
    let mut sender_sockets = Vec::with_capacity(load.pairs);
    for sender in &users[..load.pairs] {
        sender_sockets.push(connect(server, sender).await?);
    }
    tokio::time::sleep(client::SETTLE).await;
    let clock = Instant::now();
    let used_at_start = server.pid().and_then(Usage::of);
    let stop = Arc::new(AtomicBool::new(false));
    let receivers: Vec<_> = device_sockets
        .into_iter()
        .map(|(device, socket)| tokio::spawn(receive(socket, device, clock, stop.clone())))
        .collect();

    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let receipts = Arc::new(AtomicU64::new(0));
    // When the last `delivery_receipt` came (microseconds on `clock`).
    let last_receipt = Arc::new(AtomicU64::new(0));
    let first_refusal = Arc::new(std::sync::Mutex::new(None::<String>));
    let acked: Vec<Arc<AtomicU64>> = (0..load.pairs).map(|_| Arc::default()).collect();
    let per_sender_interval = load
        .rate
        .map(|rate| Duration::from_secs_f64(load.pairs as f64 / rate.max(1) as f64));
    let mut senders = Vec::new();
    for (pair, (recipient, socket)) in users[load.pairs..].iter().zip(sender_sockets).enumerate() {
        let (mut sink, mut stream) = socket.split();
        let window = Arc::new(Semaphore::new(load.window));
        let (ack_window, ack_count) = (window.clone(), acked[pair].clone());
        let (refused, receipts, first_refusal) =
            (refused.clone(), receipts.clone(), first_refusal.clone());
        let last_receipt = last_receipt.clone();
        let answers = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let text = text.as_str();
                if text.contains("\"type\":\"message_ack\"") {
                    ack_count.fetch_add(1, Ordering::Relaxed);
                    ack_window.add_permits(1);
                } else if text.contains("\"type\":\"delivery_receipt\"") {
                    receipts.fetch_add(1, Ordering::Relaxed);
                    last_receipt.fetch_max(clock.elapsed().as_micros() as u64, Ordering::Relaxed);
                } else if text.contains("\"type\":\"error\"") {
                    // A refused message (mismatched_devices, say) is no longer in flight.
                    refused.fetch_add(1, Ordering::Relaxed);
                    ack_window.add_permits(1);
                    if let Ok(mut first) = first_refusal.lock() {
                        first.get_or_insert_with(|| text.chars().take(300).collect());
                    }
                }
            }
            // The server closed this socket: no ack will free the window.
            ack_window.close();
        });
        let (to, duration, devices) = (recipient.id.clone(), load.duration, load.devices);
        let (client_ids, pairs) = (load.client_ids, load.pairs);
        let sent = sent.clone();
        senders.push(tokio::spawn(async move {
            let mut random = Random::new();
            let mut tick =
                per_sender_interval.map(|every| client::ticks(every, pair, pairs, clock));
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
                let at = clock.elapsed().as_micros() as u64;
                let envelopes: Vec<Value> = (1..=devices)
                    .map(|device| {
                        json!({
                            "deviceId": device,
                            "type": ENVELOPE_TYPE,
                            "content": base64(&ciphertext(at, device, &mut random)),
                        })
                    })
                    .collect();
                let mut payload =
                    json!({"recipientId": to, "messageType": "text", "envelopes": envelopes});
                if client_ids {
                    payload["id"] = uuid::Uuid::new_v4().to_string().into();
                }
                let frame = json!({"type": "message", "payload": payload});
                if sink.send(Message::text(frame.to_string())).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            (sink, answers)
        }));
    }

    let mut open = Vec::new();
    for sender in senders {
        open.push(sender.await?);
    }
    let mut elapsed = clock.elapsed();
    let stopped = elapsed;
    stop.store(true, Ordering::Relaxed);
    let total_acked = || acked.iter().map(|a| a.load(Ordering::Relaxed)).sum::<u64>();
    let at_stop = (
        total_acked() * u64::from(load.devices),
        receipts.load(Ordering::Relaxed),
    );
    let expected = sent.load(Ordering::Relaxed);
    let deadline = Instant::now() + DRAIN;
    while total_acked() + refused.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut tallies = Vec::new();
    for receiver in receivers {
        tallies.push(receiver.await?);
    }
    let delivered: u64 = tallies.iter().map(|t| t.latencies.len() as u64).sum();
    // A receipt means the server processed the device's ack: waiting for them all is waiting
    // for the acks in flight, before the queues are checked. A server behind on acks gets as
    // long as it makes progress, so that what is left in the queues is acks it dropped, not
    // acks it was slow to process.
    let (mut seen, mut progress) = (receipts.load(Ordering::Relaxed), Instant::now());
    let give_up = Instant::now() + ACK_CATCH_UP_MAX;
    while seen < delivered && progress.elapsed() < DRAIN && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = receipts.load(Ordering::Relaxed);
        if now != seen {
            (seen, progress) = (now, Instant::now());
        }
    }
    let acks_done = (seen >= delivered).then(|| {
        Duration::from_micros(last_receipt.load(Ordering::Relaxed)).saturating_sub(stopped)
    });
    let used = server
        .pid()
        .and_then(Usage::of)
        .zip(used_at_start)
        .map(|(end, start)| end.since(start));
    for (_, answers) in open {
        answers.abort();
    }

    let mut report = Report {
        load: *load,
        sent: expected,
        acked: total_acked(),
        refused: refused.load(Ordering::Relaxed),
        first_refusal: first_refusal.lock().ok().and_then(|mut f| f.take()),
        delivered,
        lost: 0,
        duplicates: 0,
        misdirected: 0,
        device_errors: 0,
        dropped: 0,
        receipts: receipts.load(Ordering::Relaxed),
        at_stop,
        acks_done,
        elapsed,
        latencies: Latencies::new(Vec::new()),
        server: used,
        queues_empty: 0,
        queues_left: (0, 0),
        queues_silent: 0,
    };
    let mut latencies = Vec::with_capacity(delivered as usize);
    let mut checks = Vec::new();
    for mut tally in tallies {
        // Every message the server acknowledged to this device's sender is owed to it.
        let owed = acked[tally.pair].load(Ordering::Relaxed);
        report.lost += owed.saturating_sub(tally.latencies.len() as u64);
        report.duplicates += tally.duplicates;
        report.misdirected += tally.misdirected;
        report.device_errors += tally.errors;
        report.dropped += tally.dropped;
        elapsed = elapsed.max(tally.last);
        latencies.append(&mut tally.latencies);
        if let Some(mut socket) = tally.socket.take() {
            let _ = socket.close(None).await;
        }
        let base = server.ws_base();
        checks.push(tokio::spawn(async move {
            let mut socket = connect_url(&device_url(&base, &tally.token, tally.id))
                .await
                .ok()?;
            let left = until_queue_empty(&mut socket, QUEUE_EMPTY_WAIT).await;
            let _ = socket.close(None).await;
            left
        }));
    }
    for check in checks {
        match check.await? {
            Some(0) => report.queues_empty += 1,
            Some(n) => {
                report.queues_left.0 += 1;
                report.queues_left.1 += n;
            }
            None => report.queues_silent += 1,
        }
    }
    // Throughput counts until the last delivery: a backlog drained late is not free.
    report.elapsed = elapsed;
    report.latencies = Latencies::new(latencies);
    Ok(report)
}

/// Logs each recipient in once per device (`device_id` 1..=n), which binds the session to the
/// device and puts the device in the recipient's registry.
async fn login_devices(server: &Running, users: &[User], n: u8) -> anyhow::Result<Vec<Device>> {
    let http = reqwest::Client::new();
    let mut pending = Vec::new();
    for (pair, user) in users.iter().enumerate() {
        for id in 1..=n {
            let request = http
                .post(format!("{}/api/auth/login", server.base))
                .json(&json!({
                    "email": user.email,
                    "password": "bench-password",
                    "device_id": id,
                    "device_name": format!("bench device {id}"),
                }));
            pending.push(tokio::spawn(async move {
                let response = request.send().await?;
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let Some(token) = body["token"].as_str() else {
                    bail!("device login answered {status}: {body}");
                };
                anyhow::Ok(Device {
                    pair,
                    id,
                    token: token.to_owned(),
                })
            }));
        }
    }
    let mut devices = Vec::with_capacity(pending.len());
    for login in pending {
        devices.push(login.await??);
    }
    Ok(devices)
}

fn device_url(ws_base: &str, token: &str, device: u8) -> String {
    format!("{ws_base}/ws?token={token}&device_id={device}")
}

async fn connect_device(server: &Running, token: &str, device: u8) -> anyhow::Result<Socket> {
    connect_url(&device_url(&server.ws_base(), token, device)).await
}

/// Reads a freshly connected device socket until `queue_empty`: how many envelopes came
/// before it (left unacknowledged), or `None` if it did not come within `wait`.
async fn until_queue_empty(socket: &mut Socket, wait: Duration) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut envelopes = 0;
    loop {
        let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await else {
            return None;
        };
        let Message::Text(text) = message else {
            continue;
        };
        let text = text.as_str();
        if text.contains("\"type\":\"queue_empty\"") {
            return Some(envelopes);
        }
        if text.contains("\"type\":\"message\"") {
            envelopes += 1;
        }
    }
}

/// One device socket: checks each envelope is its own, times it, acknowledges it. Acks are
/// written by a task of their own, as a client does: a server slow to read them does not hold
/// back the reading (and timing) of the next envelopes.
async fn receive(socket: Socket, device: Device, clock: Instant, stop: Arc<AtomicBool>) -> Tally {
    let (mut sink, mut stream) = socket.split();
    let (acks, mut to_write) = tokio::sync::mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(ack) = to_write.recv().await {
            if sink.feed(ack).await.is_err() {
                break;
            }
            while let Ok(more) = to_write.try_recv() {
                if sink.feed(more).await.is_err() {
                    return sink;
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
        }
        sink
    });
    let mut seen = HashSet::new();
    let (mut latencies, mut last) = (Vec::new(), Duration::ZERO);
    let (mut duplicates, mut misdirected, mut errors, mut dropped) = (0, 0, 0, 0);
    // Reads until the socket has been quiet for `DRAIN` since sending stopped (or since its
    // last frame after that), looking at the stop flag every `POLL`.
    let (mut heard, mut stop_seen) = (Instant::now(), None);
    loop {
        let message = match tokio::time::timeout(POLL, stream.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(_) => break,
            Err(_) => {
                if stop.load(Ordering::Relaxed) {
                    let since = *stop_seen.get_or_insert_with(Instant::now);
                    if since.max(heard).elapsed() >= DRAIN {
                        break;
                    }
                }
                continue;
            }
        };
        heard = Instant::now();
        let Message::Text(text) = message else {
            continue;
        };
        let text = text.as_str();
        if !text.contains("\"type\":\"message\"") {
            if text.contains("\"type\":\"error\"") {
                errors += 1;
            } else if text.contains("\"type\":\"envelopes_dropped\"") {
                dropped += number(text, "count").unwrap_or(0);
            }
            continue;
        }
        let Some(id) = field(text, "id") else {
            continue;
        };
        let stamp = field(text, "content").and_then(unstamp);
        // Only this device's envelope: labelled for it, one envelope, and its own bytes.
        let labelled = number(text, "deviceId") == Some(u64::from(device.id));
        if !labelled
            || text.contains("\"envelopes\"")
            || stamp.is_none_or(|(_, to)| to != device.id)
        {
            misdirected += 1;
        }
        if seen.insert(id.to_owned()) {
            let now = clock.elapsed().as_micros() as u64;
            let sent_at = stamp.map_or(now, |(at, _)| at);
            latencies.push(now.saturating_sub(sent_at));
        } else {
            duplicates += 1;
        }
        // An ack of an id already acked is accepted: acknowledge duplicates too, or the server
        // keeps them.
        let ack = json!({"type": "ack", "payload": {"id": id}});
        if acks.send(Message::text(ack.to_string())).is_err() {
            break;
        }
        last = clock.elapsed();
    }
    drop(acks);
    let socket = match writer.await {
        Ok(sink) => stream.reunite(sink).ok(),
        Err(_) => None,
    };
    Tally {
        pair: device.pair,
        id: device.id,
        token: device.token,
        latencies,
        duplicates,
        misdirected,
        errors,
        dropped,
        last,
        socket,
    }
}

/// The value of `"key":<digits>` in a frame.
fn number(text: &str, key: &str) -> Option<u64> {
    let start = text.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits = text[start..]
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len() - start);
    text[start..start + digits].parse().ok()
}

/// A stand-in ciphertext for `device`: the send time (microseconds on the bench's clock, big
/// endian) and the device it is for, then random bytes, `CIPHERTEXT_BYTES` in all. The server
/// treats it as opaque; the device reads the time back for the latency and the device id to
/// check the envelope is its own.
fn ciphertext(at: u64, device: u8, random: &mut Random) -> [u8; CIPHERTEXT_BYTES] {
    let mut bytes = [0u8; CIPHERTEXT_BYTES];
    bytes[..8].copy_from_slice(&at.to_be_bytes());
    bytes[8] = device;
    for chunk in bytes[9..].chunks_mut(8) {
        let word = random.next().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    bytes
}

/// The send time and the device of a `ciphertext`, from its base64 (the first 12 characters
/// are its first 9 bytes).
fn unstamp(content: &str) -> Option<(u64, u8)> {
    let mut bytes = [0u8; 9];
    for (group, out) in content
        .as_bytes()
        .get(..12)?
        .chunks(4)
        .zip(bytes.chunks_mut(3))
    {
        let mut n = 0u32;
        for &c in group {
            n = n << 6 | u32::from(sextet(c)?);
        }
        out.copy_from_slice(&n.to_be_bytes()[1..]);
    }
    let at = u64::from_be_bytes(bytes[..8].try_into().ok()?);
    Some((at, bytes[8]))
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn sextet(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

/// Standard base64 with padding, as the server expects `content` (a dependency-free few lines
/// for the load generator's one use).
fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = u32::from(chunk[0]) << 16
            | u32::from(chunk.get(1).copied().unwrap_or(0)) << 8
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// xorshift64*: random enough for opaque bytes, and cheap for the load generator.
struct Random(u64);

impl Random {
    fn new() -> Self {
        Self(uuid::Uuid::new_v4().as_u64_pair().0 | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_standard_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn the_send_time_and_device_come_back_from_the_base64() {
        let mut random = Random::new();
        let bytes = ciphertext(123_456_789_012, 7, &mut random);
        let text = base64(&bytes);
        assert_eq!(text.len(), 268);
        assert_eq!(unstamp(&text), Some((123_456_789_012, 7)));
        assert_eq!(unstamp("AAAA"), None);
        assert_eq!(unstamp("!!!!!!!!!!!!!!!!"), None);
    }

    #[test]
    fn numbers_are_read_after_their_own_key_only() {
        let frame =
            r#"{"payload":{"source_device_id":9,"sourceDeviceId":9,"device_id":2,"deviceId":2}}"#;
        assert_eq!(number(frame, "deviceId"), Some(2));
        assert_eq!(number(r#"{"count":15}"#, "count"), Some(15));
        assert_eq!(number(r#"{"count":"x"}"#, "count"), None);
    }
}
