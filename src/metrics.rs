//! Prometheus metrics. One recorder per process (tests start several servers in one process),
//! installed on first use; the helpers below are the only places metric names are spelled.
//!
//! Labels have bounded values only (route templates, frame types, error codes, close reasons):
//! never a user id, a token or a raw URL. The process's own (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, ...) come from `metrics-process`, read
//! at each scrape. `deploy/grafana/kisse-dashboard.json` charts them.

use std::{sync::OnceLock, time::Duration};

use metrics::{Counter, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::events::CloseReason;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

fn process() -> &'static metrics_process::Collector {
    PROCESS.get_or_init(metrics_process::Collector::default)
}

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Frames written per flush (at most `WRITE_BATCH` = 64).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
/// Rows of each kind per group commit (at most 4,096 messages and receipts).
const GROUP_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];

/// The process's recorder handle, installing the recorder on first call.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("kisse_ws_write_batch_frames".into()),
                        BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("kisse_store_group_rows".into()),
                        GROUP_BUCKETS,
                    )
                })
                // Only fails on empty bucket lists: fall back to summaries.
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed: /metrics stays empty");
            }
            describe();
            process().describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "kisse_ws_connections",
        "WebSocket connections open on this node"
    );
    describe_gauge!(
        "kisse_users_online",
        "Users with at least one socket on this node"
    );
    describe_counter!(
        "kisse_ws_connections_total",
        "WebSocket connections closed, by close reason"
    );
    describe_counter!(
        "kisse_messages_routed_total",
        "New messages stored and pushed to their recipients, by kind (direct, channel)"
    );
    describe_histogram!(
        "kisse_message_delivery_seconds",
        Unit::Seconds,
        "From accepting a message to queueing it on the recipients' sockets (store commit included)"
    );
    describe_counter!(
        "kisse_ws_frames_total",
        "WebSocket frames received, by type"
    );
    describe_counter!(
        "kisse_ws_ephemeral_dropped_total",
        "Ephemeral frames (typing, presence, unanswered calls, channel posts) dropped because a socket had too many waiting"
    );
    describe_counter!(
        "kisse_ws_receipts_dropped_total",
        "Delivery receipts dropped because the sender's socket queue was full (the socket is kept)"
    );
    describe_histogram!(
        "kisse_ws_write_batch_frames",
        Unit::Count,
        "Frames written per socket flush"
    );
    describe_histogram!(
        "kisse_store_group_rows",
        Unit::Count,
        "Rows per group commit, by kind (messages, read receipts, delivery marks, content uploads)"
    );
    describe_histogram!(
        "kisse_store_group_commit_seconds",
        Unit::Seconds,
        "Duration of a group commit (its transaction, fsync included)"
    );
    describe_histogram!(
        "kisse_store_writer_checkpoint_seconds",
        Unit::Seconds,
        "SQLite: duration of the rest of a checkpoint that the writer copies between two groups"
    );
    describe_gauge!(
        "kisse_attachment_bytes",
        Unit::Bytes,
        "Attachment bytes stored, in files or S3 (finished, and what unfinished uploads received), as this node counts them"
    );
    describe_gauge!(
        "kisse_attachment_uploads_in_flight",
        "Attachment PATCH requests streaming bytes to storage right now"
    );
    describe_counter!("kisse_errors_total", "Errors answered to clients, by code");
    describe_counter!(
        "kisse_http_requests_total",
        "HTTP requests, by method, route template and status"
    );
    describe_histogram!(
        "kisse_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency, by method and route template"
    );
    describe_gauge!(
        "kisse_db_pool_connections",
        "Database pool connections, by pool and state (idle, in_use)"
    );
    describe_gauge!(
        "kisse_db_pool_max_connections",
        "Database pool size limit, by pool"
    );
    describe_counter!(
        "kisse_push_total",
        "Wake-up pushes, by kind (webpush, unifiedpush, fcm, apns) and outcome (sent, failed, retried, removed: the service said the registration is gone)"
    );
    describe_counter!(
        "kisse_push_dropped_total",
        "Wake-ups dropped because the push queue was full (PUSH_QUEUE)"
    );
    describe_gauge!("kisse_push_queue", "Wake-ups waiting to be handled");
    exported_from_the_start();
}

/// The series that only move under pressure (drops) or with push set up, exported at zero from
/// the start: a dashboard then shows 0 instead of "no data", and alerts on them work.
fn exported_from_the_start() {
    for name in [
        "kisse_push_dropped_total",
        "kisse_ws_ephemeral_dropped_total",
        "kisse_ws_receipts_dropped_total",
    ] {
        counter!(name).absolute(0);
    }
    gauge!("kisse_push_queue").set(0.0);
    gauge!("kisse_attachment_uploads_in_flight").set(0.0);
    for kind in ["webpush", "unifiedpush", "fcm", "apns"] {
        for outcome in ["sent", "failed", "retried", "removed"] {
            counter!("kisse_push_total", "kind" => kind, "outcome" => outcome).absolute(0);
        }
    }
}

/// The attachment bytes stored, as counted at start-up.
pub fn attachment_bytes_stored(bytes: i64) {
    gauge!("kisse_attachment_bytes").set(bytes as f64);
}

/// `bytes` more attachment bytes were written.
pub fn attachment_bytes_written(bytes: u64) {
    gauge!("kisse_attachment_bytes").increment(bytes as f64);
}

/// `bytes` attachment bytes were deleted.
pub fn attachment_bytes_deleted(bytes: u64) {
    gauge!("kisse_attachment_bytes").decrement(bytes as f64);
}

/// An attachment upload began (`1.0`) or ended (`-1.0`) streaming.
pub fn attachment_upload_in_flight(change: f64) {
    gauge!("kisse_attachment_uploads_in_flight").increment(change);
}

/// A push of `kind` ended (or will be tried again) with `outcome`.
fn push(kind: &'static str, outcome: &'static str) {
    counter!("kisse_push_total", "kind" => kind, "outcome" => outcome).increment(1);
}

pub fn push_sent(kind: &'static str) {
    push(kind, "sent");
}

pub fn push_failed(kind: &'static str) {
    push(kind, "failed");
}

pub fn push_retried(kind: &'static str) {
    push(kind, "retried");
}

/// The push service said the registration is gone: it was removed.
pub fn push_removed(kind: &'static str) {
    push(kind, "removed");
}

pub fn push_dropped() {
    counter!("kisse_push_dropped_total").increment(1);
}

pub fn push_queue(waiting: usize) {
    gauge!("kisse_push_queue").set(waiting as f64);
}

/// Open sockets and users with one, on this node (read from the hub by the scrape handler).
pub fn connections(sockets: usize, users: usize) {
    gauge!("kisse_ws_connections").set(sockets as f64);
    gauge!("kisse_users_online").set(users as f64);
}

/// One database pool's connections: `size` open, `idle` of them idle, `max` allowed.
pub fn db_pool(name: &'static str, size: u32, idle: u32, max: u32) {
    gauge!("kisse_db_pool_connections", "pool" => name, "state" => "idle").set(f64::from(idle));
    gauge!("kisse_db_pool_connections", "pool" => name, "state" => "in_use")
        .set(f64::from(size.saturating_sub(idle)));
    gauge!("kisse_db_pool_max_connections", "pool" => name).set(f64::from(max));
}

/// Drains histograms and renders the text format (the caller set the live gauges first).
pub fn render() -> String {
    let handle = handle();
    process().collect();
    handle.run_upkeep();
    handle.render()
}

/// Keeps histogram storage bounded between scrapes, until `shutdown`.
pub async fn upkeep(shutdown: tokio_util::sync::CancellationToken) {
    let handle = handle();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// The handle `make` looks up, looked up once. For the metrics recorded for every message,
/// frame and group commit: a look-up by name builds the key, hashes it and reads the registry
/// under a lock, seven or eight times a message. The recorder is installed first (`handle`):
/// a handle taken from the no-op recorder would record nothing, ever.
fn once<T>(cell: &'static OnceLock<T>, make: impl FnOnce() -> T) -> &'static T {
    cell.get_or_init(|| {
        handle();
        make()
    })
}

/// `once` per value of one label, for metrics with a few fixed values (frame types, message
/// kinds): up to `N` values keep their handles; past that, each record looks its handle up.
struct ByLabel<T: 'static, const N: usize>([OnceLock<(&'static str, T)>; N]);

impl<T, const N: usize> ByLabel<T, N> {
    const fn new() -> Self {
        Self([const { OnceLock::new() }; N])
    }

    /// Calls `record` with the handle of `value`, which `make` looks up.
    fn with(&'static self, value: &'static str, make: impl Fn() -> T, record: impl FnOnce(&T)) {
        for slot in &self.0 {
            // Two threads may fill two slots with one value: both handles record one series.
            let (label, handle) = once(slot, || (value, make()));
            if *label == value {
                return record(handle);
            }
        }
        // Every slot holds another value: looked up by name, as without this.
        record(&make())
    }
}

/// A new message was stored and pushed: `kind` is `direct`, `channel` or `envelopes`.
pub fn message_routed(kind: &'static str, accepted_at: chrono::DateTime<chrono::Utc>) {
    static ROUTED: ByLabel<(Counter, Histogram), 4> = ByLabel::new();
    let elapsed = (chrono::Utc::now() - accepted_at)
        .to_std()
        .unwrap_or_default();
    let make = || {
        (
            counter!("kisse_messages_routed_total", "kind" => kind),
            histogram!("kisse_message_delivery_seconds", "kind" => kind),
        )
    };
    ROUTED.with(kind, make, |(routed, delivery)| {
        routed.increment(1);
        delivery.record(elapsed.as_secs_f64());
    });
}

pub fn frame_received(kind: &'static str) {
    static FRAMES_IN: ByLabel<Counter, 16> = ByLabel::new();
    let make = || counter!("kisse_ws_frames_total", "direction" => "in", "type" => kind);
    FRAMES_IN.with(kind, make, |frames| frames.increment(1));
}

/// A socket that was behind had no slot left for an ephemeral frame: the oldest was dropped.
pub fn ephemeral_dropped() {
    counter!("kisse_ws_ephemeral_dropped_total").increment(1);
}

/// A sender's socket queue was full when a delivery receipt came: the receipt was dropped.
pub fn receipt_dropped() {
    counter!("kisse_ws_receipts_dropped_total").increment(1);
}

pub fn write_batch(frames: usize) {
    static BATCH: OnceLock<Histogram> = OnceLock::new();
    once(&BATCH, || histogram!("kisse_ws_write_batch_frames")).record(frames as f64);
}

/// A group commit of `[messages, read receipts, delivery marks, content uploads]` rows took
/// `elapsed`.
pub fn group_commit(rows: [usize; 4], elapsed: Duration) {
    static GROUP: OnceLock<([Histogram; 4], Histogram)> = OnceLock::new();
    let (by_kind, commit) = once(&GROUP, || {
        let kinds = [
            "messages",
            "read_receipts",
            "delivery_marks",
            "content_uploads",
        ];
        (
            kinds.map(|kind| histogram!("kisse_store_group_rows", "kind" => kind)),
            histogram!("kisse_store_group_commit_seconds"),
        )
    });
    for (histogram, count) in by_kind.iter().zip(rows) {
        histogram.record(count as f64);
    }
    commit.record(elapsed.as_secs_f64());
}

/// The SQLite writer finished a checkpoint of the log between two groups, in `elapsed`.
pub fn writer_checkpoint(elapsed: Duration) {
    histogram!("kisse_store_writer_checkpoint_seconds").record(elapsed.as_secs_f64());
}

/// Counts a closed socket; returns the reason's name (for the log line).
pub fn socket_closed(reason: CloseReason) -> &'static str {
    let name = match reason {
        CloseReason::TooSlow => "too_slow",
        CloseReason::TooBig => "too_big",
        CloseReason::Idle => "idle",
        CloseReason::TokenExpired => "token_expired",
        CloseReason::ShuttingDown => "shutting_down",
        CloseReason::PeerGone => "peer_gone",
        CloseReason::ServerError => "server_error",
        CloseReason::Revoked => "revoked",
        CloseReason::RateLimited => "rate_limited",
        CloseReason::InvalidData => "invalid_data",
    };
    counter!("kisse_ws_connections_total", "reason" => name).increment(1);
    name
}

pub fn error(code: &'static str) {
    counter!("kisse_errors_total", "code" => code).increment(1);
}

/// `method` is the request's, as sent: any token is a valid method, so anything but the
/// standard ones is counted as `other` (a client must not create series at will).
pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let method = http_method_label(method);
    let route = route.to_owned();
    counter!(
        "kisse_http_requests_total",
        "method" => method,
        "route" => route.clone(),
        "status" => status.to_string()
    )
    .increment(1);
    histogram!("kisse_http_request_duration_seconds", "method" => method, "route" => route)
        .record(elapsed.as_secs_f64());
}

fn http_method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use metrics::{Counter, counter};

    use super::{ByLabel, render};

    #[test]
    fn label_values_beyond_the_kept_handles_count_in_their_own_series() {
        static COUNTED: ByLabel<Counter, 2> = ByLabel::new();
        let kinds = ["by_label_a", "by_label_b", "by_label_c"];
        for (times, kind) in kinds.into_iter().enumerate() {
            for _ in 0..=times {
                let make = || counter!("kisse_test_by_label_total", "kind" => kind);
                COUNTED.with(kind, make, |counted| counted.increment(1));
            }
        }
        let text = render();
        for (times, kind) in kinds.into_iter().enumerate() {
            let line = format!("kisse_test_by_label_total{{kind=\"{kind}\"}} {}", times + 1);
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }
}
