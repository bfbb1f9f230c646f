//! Settings read once from the environment (and an optional `.env`), validated, then passed down.

use std::{fmt, net::SocketAddr, time::Duration};

use anyhow::{Context, bail};
use rand::RngCore;

/// Default database: an SQLite file next to the process, created on first run.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://kisse.db";
const MIN_SECRET_LEN: usize = 32;

/// A secret that never shows up in `Debug` or `Display` output.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One setting read from the environment: its name, default and meaning. `--help`,
/// `check-config` and the README list exactly these.
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

const fn setting(name: &'static str, default: &'static str, help: &'static str) -> Setting {
    Setting {
        name,
        default,
        help,
    }
}

/// Every setting, in the order they are documented.
pub const SETTINGS: &[Setting] = &[
    setting(
        "APP_ENV",
        "development",
        "development or production (production requires JWT_SECRET)",
    ),
    setting("SERVER_ADDRESS", "0.0.0.0:8080", "listen address"),
    setting(
        "DATABASE_URL",
        DEFAULT_DATABASE_URL,
        "sqlite://<file> or postgres://user:pass@host/db",
    ),
    setting("DB_MAX_CONNECTIONS", "10", "database pool size"),
    setting(
        "REDIS_URL",
        "(none)",
        "redis://host:port, or rediss:// (TLS); when set: cluster mode",
    ),
    setting(
        "JWT_SECRET",
        "(random per run in development)",
        "HS256 key, at least 32 bytes",
    ),
    setting("JWT_EXPIRATION", "86400", "token lifetime in seconds"),
    setting("RUST_LOG", "info", "log filter (tracing EnvFilter syntax)"),
    setting(
        "LOG_FORMAT",
        "text",
        "text (human-readable) or json (one object per line)",
    ),
    setting(
        "METRICS_TOKEN",
        "(none)",
        "when set, GET /metrics requires Authorization: Bearer <token>",
    ),
    setting(
        "CORS_ALLOWED_ORIGINS",
        "(none)",
        "comma-separated origins allowed by CORS, e.g. https://app.example.com",
    ),
    setting(
        "WS_MAX_FRAME_BYTES",
        "65536",
        "larger frames close the socket with 1009",
    ),
    setting(
        "WS_QUEUE_LEN",
        "1024",
        "frames queued per socket before it is closed with 1013",
    ),
    setting("WS_PING_INTERVAL", "25", "seconds between server pings"),
    setting(
        "WS_IDLE_TIMEOUT",
        "60",
        "seconds of silence before a socket is closed",
    ),
    setting(
        "HASH_CONCURRENCY",
        "(CPU count - 1, at least 1)",
        "password-hashing threads (run below the priority of message routing)",
    ),
    setting(
        "CONTENT_MAX_BYTES",
        "1048576",
        "largest content blob accepted, in bytes",
    ),
    setting(
        "CONTENT_QUOTA_BYTES",
        "268435456",
        "unread content a sender may have stored at once, in bytes (413 beyond)",
    ),
    setting(
        "CONTENT_TTL",
        "2592000",
        "seconds an unread content blob is kept",
    ),
    setting(
        "CONTENT_WAIT_MS",
        "10000",
        "milliseconds a content GET waits for a blob not yet uploaded",
    ),
    setting(
        "CALL_RING_TIMEOUT",
        "60",
        "seconds before an unanswered call is missed",
    ),
    setting(
        "ACCESS_TOKEN_TTL",
        "(JWT_EXPIRATION)",
        "access token lifetime in seconds",
    ),
    setting(
        "REFRESH_TOKEN_TTL",
        "2592000",
        "refresh token lifetime in seconds (an unused session ends with it)",
    ),
    setting(
        "LOGIN_RATE_PER_MINUTE",
        "1000",
        "register, login and refresh requests per client IP and minute",
    ),
    setting(
        "LOGIN_RATE_PER_ACCOUNT_PER_MINUTE",
        "200",
        "failed logins per account and minute, from all addresses together (also the burst)",
    ),
    setting(
        "LOGIN_FAILURES_PER_ADDRESS",
        "20",
        "failed logins in a row for one account from one client address before 429 (then one a minute; a success resets)",
    ),
    setting(
        "TRUSTED_PROXIES",
        "(none)",
        "comma-separated addresses or CIDRs of reverse proxies trusted to name the client (per-address limits use that address)",
    ),
    setting(
        "TRUSTED_PROXY_HEADER",
        "x-forwarded-for",
        "the header trusted proxies append the client address to: x-forwarded-for or forwarded (RFC 7239)",
    ),
    setting(
        "WRITE_RATE_PER_USER_PER_MINUTE",
        "600",
        "REST writes (POST, PUT, DELETE) per signed-in user and minute (also the burst)",
    ),
    setting(
        "LOOKUP_RATE_PER_USER_PER_MINUTE",
        "300",
        "user searches and find-by-email lookups per signed-in user and minute (also the burst)",
    ),
    setting(
        "REFRESH_REUSE_GRACE",
        "10",
        "seconds a used refresh token still returns the pair it was traded for (a retry after a lost response); 0: never",
    ),
    setting(
        "CALL_MAX_SILENCE",
        "60",
        "seconds an active call lasts with neither party connected",
    ),
    setting(
        "MAX_SOCKETS_PER_USER",
        "32",
        "sockets one user may have open on a node",
    ),
    setting(
        "WS_FRAMES_PER_SECOND",
        "200",
        "frames a socket may send per second (twice that as a burst)",
    ),
    setting(
        "WS_MESSAGES_PER_SECOND",
        "100",
        "message, channel_message and call_request frames per socket and second",
    ),
    setting(
        "WS_EPHEMERAL_PER_SECOND",
        "20",
        "typing, presence and call answer frames a socket may send per second (twice that as a burst)",
    ),
    setting(
        "WS_EPHEMERAL_DELIVERED_PER_SECOND",
        "100",
        "ephemeral frames written to a socket per second (twice that as a burst); more wait, coalesced",
    ),
    setting(
        "WS_CATCH_UP_MAX",
        "5000",
        "inbox events a connect or sync frame sends at most (the latest ones)",
    ),
    setting(
        "RETENTION_MESSAGES_DAYS",
        "0",
        "days message metadata is kept (0: forever)",
    ),
    setting(
        "RETENTION_CALLS_DAYS",
        "90",
        "days finished calls stay in the history (0: forever)",
    ),
    setting(
        "RETENTION_STORIES_HOURS",
        "0",
        "hours an expired story is kept after it expired",
    ),
    setting(
        "RETENTION_SWEEP_INTERVAL",
        "3600",
        "seconds between retention sweeps",
    ),
    setting(
        "REDIS_PREFIX",
        "kisse",
        "prefix of every Redis key and channel",
    ),
    setting(
        "PRESENCE_TTL",
        "30",
        "seconds a node's presence keys live without a refresh",
    ),
    setting(
        "REDIS_PUBLISH_QUEUE",
        "16384",
        "frames waiting to be published to Redis; beyond it they are dropped (recipients refill)",
    ),
    setting(
        "KEY_FETCH_PER_MINUTE",
        "120",
        "prekey bundle fetches per caller and minute",
    ),
    setting(
        "PREKEY_LOW_THRESHOLD",
        "10",
        "fewer one-time prekeys than this sends prekeys_low",
    ),
];

/// The settings as a help text (for `--help`).
pub fn settings_help() -> String {
    let width = SETTINGS.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut out = String::from(
        "Settings (environment variables, or a .env file in the working directory):\n",
    );
    for s in SETTINGS {
        out.push_str(&format!(
            "  {:width$}  {} [default: {}]\n",
            s.name, s.help, s.default
        ));
    }
    out
}

/// The header trusted reverse proxies append the client address to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, ...`
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`
    Forwarded,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the server runs: development tolerates a generated secret, production does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub app_env: AppEnv,
    pub server_address: SocketAddr,
    pub database_url: String,
    /// Optional Redis, checked by `/ready` (nothing else uses it yet).
    pub redis_url: Option<Secret>,
    pub jwt_secret: Secret,
    /// True when `jwt_secret` was generated at start-up (tokens die with the process).
    pub jwt_secret_generated: bool,
    pub jwt_expiration: Duration,
    /// Largest WebSocket text frame accepted; above it the socket is closed with 1009.
    pub ws_max_frame_bytes: usize,
    /// Outgoing frames queued per socket before it is considered too slow and closed.
    pub ws_queue_len: usize,
    /// Interval between server pings on an otherwise quiet socket.
    pub ws_ping_interval: Duration,
    /// A socket that sends nothing (not even a pong) for this long is closed.
    pub ws_idle_timeout: Duration,
    /// Password hashes computed at once; the rest wait, so a login storm cannot starve routing.
    pub hash_concurrency: usize,
    pub db_max_connections: u32,
    /// Largest decoded content blob accepted by the mailbox.
    pub content_max_bytes: usize,
    /// Unread, unexpired content a sender may have stored at once (their uploads beyond wait
    /// until the recipients read some): one account cannot fill the disk.
    pub content_quota_bytes: u64,
    /// How long a blob is kept when nobody reads it (`expires_at` may only shorten it).
    pub content_ttl: Duration,
    /// How long a content GET waits for a blob the sender has not uploaded yet.
    pub content_wait: Duration,
    /// An unanswered call becomes `missed` after this long.
    pub call_ring_timeout: Duration,
    /// Prekey bundle fetches allowed per caller and minute (each one uses up a one-time prekey).
    pub key_fetch_per_minute: u32,
    /// A device with fewer one-time prekeys left than this is told to upload more.
    pub prekey_low_threshold: i64,
    /// How long a refresh token (and so a signed-in session left unused) lives.
    pub refresh_token_ttl: Duration,
    /// Register, login and refresh requests per client IP and minute (also the burst).
    pub login_rate_per_minute: u32,
    /// Failed logins per account (email) and minute, from all addresses (also the burst).
    pub login_rate_per_account_per_minute: u32,
    /// Failed logins in a row for one account from one client address before 429.
    pub login_failures_per_address: u32,
    /// Peers whose forwarded header names the client (none: the peer is the client).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Which header those proxies write; the other one is client-controlled and ignored.
    pub trusted_proxy_header: ForwardedHeader,
    /// REST writes per signed-in user and minute (also the burst).
    pub write_rate_per_user_per_minute: u32,
    /// User searches and find-by-email lookups per signed-in user and minute (also the burst).
    pub lookup_rate_per_user_per_minute: u32,
    /// How long a used refresh token still answers the pair it was traded for.
    pub refresh_reuse_grace: Duration,
    /// An active call with neither party connected for this long ends.
    pub call_max_silence: Duration,
    /// Sockets one user may have open at once on this node.
    pub max_sockets_per_user: usize,
    /// Frames of any type a socket may send per second (twice that as a burst).
    pub ws_frames_per_second: u32,
    /// `message`, `channel_message` and `call_request` frames per socket and second (twice that
    /// as a burst).
    pub ws_messages_per_second: u32,
    /// Typing, presence and call answer frames per socket and second (twice that as a burst).
    pub ws_ephemeral_per_second: u32,
    /// Ephemeral frames written to one socket per second (twice that as a burst); the rest
    /// wait, coalesced per key, so many senders together cannot flood a recipient.
    pub ws_ephemeral_delivered_per_second: u32,
    /// Inbox events a connect or `sync` sends at most: the latest ones (bounded work per
    /// request; older ones stay readable over REST).
    pub ws_catch_up_max: i64,
    /// Message metadata older than this is deleted; `None` keeps it.
    pub retention_messages: Option<Duration>,
    /// Finished calls older than this are deleted from the history; `None` keeps them.
    pub retention_calls: Option<Duration>,
    /// How long an expired story (and who viewed it) is kept after it expired.
    pub retention_stories: Duration,
    /// Interval between retention sweeps.
    pub retention_sweep_interval: Duration,
    pub log_format: LogFormat,
    /// When set, `/metrics` requires `Authorization: Bearer <token>`.
    pub metrics_token: Option<Secret>,
    /// Origins allowed by CORS (none: no CORS headers, browsers refuse cross-origin calls).
    pub cors_allowed_origins: Vec<String>,
    /// Prefix of every Redis key and channel, so several deployments (or tests) can share one.
    pub redis_prefix: String,
    /// How long a node's presence keys live without a refresh: a node that dies takes its
    /// users offline within about this long.
    pub presence_ttl: Duration,
    /// Frames waiting for the publisher task at most (cluster mode).
    pub redis_publish_queue: usize,
}

impl Config {
    /// Reads `.env` (if present) then the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        // A missing .env is normal; a malformed one is worth failing on.
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(e).context("reading .env"),
        }
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Builds the configuration from any key → value source (the environment, or a test's map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        let app_env = match get("APP_ENV")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("development" | "dev" | "test") => AppEnv::Development,
            Some("production" | "prod") => AppEnv::Production,
            Some(other) => bail!("APP_ENV must be development or production, not {other:?}"),
        };
        let (jwt_secret, jwt_secret_generated) = match get("JWT_SECRET") {
            Some(s) if s.len() >= MIN_SECRET_LEN => (Secret::new(s), false),
            Some(_) if app_env == AppEnv::Production => {
                bail!("JWT_SECRET must be at least {MIN_SECRET_LEN} bytes in production")
            }
            None if app_env == AppEnv::Production => {
                bail!("JWT_SECRET is required in production (at least {MIN_SECRET_LEN} bytes)")
            }
            Some(s) => (Secret::new(s), false),
            None => (Secret::new(random_secret()), true),
        };
        let database_url = get("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
        crate::store::Engine::of_url(&database_url)?;
        let redis_url = get("REDIS_URL");
        if let Some(url) = &redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                bail!("REDIS_URL must start with redis:// (or rediss:// for TLS)");
            }
            redis::Client::open(url.as_str())
                .map_err(|e| anyhow::anyhow!("REDIS_URL is invalid: {e}"))?;
        }
        let log_format = match get("LOG_FORMAT")
            .map(|f| f.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("LOG_FORMAT must be text or json, not {other:?}"),
        };
        Ok(Self {
            app_env,
            server_address: parse(&get, "SERVER_ADDRESS", "0.0.0.0:8080")?,
            database_url,
            redis_url: redis_url.map(Secret::new),
            jwt_secret,
            jwt_secret_generated,
            // ACCESS_TOKEN_TTL is the new name; JWT_EXPIRATION still works.
            jwt_expiration: Duration::from_secs(match get("ACCESS_TOKEN_TTL") {
                Some(_) => positive(&get, "ACCESS_TOKEN_TTL", 86_400)?,
                None => positive(&get, "JWT_EXPIRATION", 86_400)?,
            }),
            ws_max_frame_bytes: positive(&get, "WS_MAX_FRAME_BYTES", 64 * 1024)? as usize,
            ws_queue_len: positive(&get, "WS_QUEUE_LEN", 1024)? as usize,
            ws_ping_interval: Duration::from_secs(positive(&get, "WS_PING_INTERVAL", 25)?),
            ws_idle_timeout: Duration::from_secs(positive(&get, "WS_IDLE_TIMEOUT", 60)?),
            hash_concurrency: positive(&get, "HASH_CONCURRENCY", default_hash_concurrency())?
                as usize,
            db_max_connections: positive(&get, "DB_MAX_CONNECTIONS", 10)? as u32,
            content_max_bytes: positive(&get, "CONTENT_MAX_BYTES", 1024 * 1024)? as usize,
            content_quota_bytes: positive(&get, "CONTENT_QUOTA_BYTES", 256 * 1024 * 1024)?,
            content_ttl: Duration::from_secs(positive(&get, "CONTENT_TTL", 30 * 86_400)?),
            content_wait: Duration::from_millis(positive(&get, "CONTENT_WAIT_MS", 10_000)?),
            call_ring_timeout: Duration::from_secs(positive(&get, "CALL_RING_TIMEOUT", 60)?),
            key_fetch_per_minute: u32::try_from(positive(&get, "KEY_FETCH_PER_MINUTE", 120)?)
                .context("KEY_FETCH_PER_MINUTE is too large")?,
            prekey_low_threshold: i64::try_from(positive(&get, "PREKEY_LOW_THRESHOLD", 10)?)
                .context("PREKEY_LOW_THRESHOLD is too large")?,
            refresh_token_ttl: Duration::from_secs(positive(
                &get,
                "REFRESH_TOKEN_TTL",
                30 * 86_400,
            )?),
            login_rate_per_minute: small(&get, "LOGIN_RATE_PER_MINUTE", 1000)?,
            login_rate_per_account_per_minute: small(
                &get,
                "LOGIN_RATE_PER_ACCOUNT_PER_MINUTE",
                200,
            )?,
            login_failures_per_address: small(&get, "LOGIN_FAILURES_PER_ADDRESS", 20)?,
            trusted_proxies: trusted_proxies(get("TRUSTED_PROXIES").as_deref())?,
            trusted_proxy_header: match get("TRUSTED_PROXY_HEADER")
                .map(|h| h.trim().to_ascii_lowercase())
                .as_deref()
            {
                None | Some("x-forwarded-for") => ForwardedHeader::XForwardedFor,
                Some("forwarded") => ForwardedHeader::Forwarded,
                Some(other) => {
                    bail!(
                        "TRUSTED_PROXY_HEADER must be x-forwarded-for or forwarded, not {other:?}"
                    )
                }
            },
            write_rate_per_user_per_minute: small(&get, "WRITE_RATE_PER_USER_PER_MINUTE", 600)?,
            lookup_rate_per_user_per_minute: small(&get, "LOOKUP_RATE_PER_USER_PER_MINUTE", 300)?,
            refresh_reuse_grace: Duration::from_secs(parse(&get, "REFRESH_REUSE_GRACE", "10")?),
            call_max_silence: Duration::from_secs(positive(&get, "CALL_MAX_SILENCE", 60)?),
            max_sockets_per_user: positive(&get, "MAX_SOCKETS_PER_USER", 32)? as usize,
            ws_frames_per_second: small(&get, "WS_FRAMES_PER_SECOND", 200)?,
            ws_messages_per_second: small(&get, "WS_MESSAGES_PER_SECOND", 100)?,
            ws_ephemeral_per_second: small(&get, "WS_EPHEMERAL_PER_SECOND", 20)?,
            ws_ephemeral_delivered_per_second: small(
                &get,
                "WS_EPHEMERAL_DELIVERED_PER_SECOND",
                100,
            )?,
            ws_catch_up_max: i64::try_from(positive(&get, "WS_CATCH_UP_MAX", 5000)?)
                .context("WS_CATCH_UP_MAX is too large")?,
            retention_messages: days(&get, "RETENTION_MESSAGES_DAYS", 0)?,
            retention_calls: days(&get, "RETENTION_CALLS_DAYS", 90)?,
            retention_stories: Duration::from_secs(
                parse::<u64>(&get, "RETENTION_STORIES_HOURS", "0")?.saturating_mul(3600),
            ),
            retention_sweep_interval: Duration::from_secs(positive(
                &get,
                "RETENTION_SWEEP_INTERVAL",
                3600,
            )?),
            log_format,
            metrics_token: get("METRICS_TOKEN").map(|t| Secret::new(t.trim())),
            cors_allowed_origins: origins(get("CORS_ALLOWED_ORIGINS").as_deref(), app_env)?,
            redis_prefix: get("REDIS_PREFIX").unwrap_or_else(|| "kisse".to_owned()),
            presence_ttl: Duration::from_secs(positive(&get, "PRESENCE_TTL", 30)?),
            redis_publish_queue: small(&get, "REDIS_PUBLISH_QUEUE", 16 * 1024)? as usize,
        })
    }

    /// The effective settings, secrets redacted (for `check-config`).
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let redacted = |set: bool| if set { "<redacted>" } else { "(none)" }.to_owned();
        vec![
            (
                "APP_ENV",
                format!("{:?}", self.app_env).to_ascii_lowercase(),
            ),
            ("SERVER_ADDRESS", self.server_address.to_string()),
            ("DATABASE_URL", redact_url(&self.database_url)),
            ("DB_MAX_CONNECTIONS", self.db_max_connections.to_string()),
            (
                "REDIS_URL",
                self.redis_url.as_ref().map_or_else(
                    || "(none)".to_owned(),
                    |u| redact_url(&String::from_utf8_lossy(u.expose())),
                ),
            ),
            (
                "JWT_SECRET",
                if self.jwt_secret_generated {
                    "<generated for this run>".to_owned()
                } else {
                    redacted(true)
                },
            ),
            ("JWT_EXPIRATION", self.jwt_expiration.as_secs().to_string()),
            (
                "LOG_FORMAT",
                format!("{:?}", self.log_format).to_ascii_lowercase(),
            ),
            ("METRICS_TOKEN", redacted(self.metrics_token.is_some())),
            (
                "CORS_ALLOWED_ORIGINS",
                if self.cors_allowed_origins.is_empty() {
                    "(none)".to_owned()
                } else {
                    self.cors_allowed_origins.join(",")
                },
            ),
            ("WS_MAX_FRAME_BYTES", self.ws_max_frame_bytes.to_string()),
            ("WS_QUEUE_LEN", self.ws_queue_len.to_string()),
            (
                "WS_PING_INTERVAL",
                self.ws_ping_interval.as_secs().to_string(),
            ),
            (
                "WS_IDLE_TIMEOUT",
                self.ws_idle_timeout.as_secs().to_string(),
            ),
            ("HASH_CONCURRENCY", self.hash_concurrency.to_string()),
            ("CONTENT_MAX_BYTES", self.content_max_bytes.to_string()),
            ("CONTENT_QUOTA_BYTES", self.content_quota_bytes.to_string()),
            ("CONTENT_TTL", self.content_ttl.as_secs().to_string()),
            ("CONTENT_WAIT_MS", self.content_wait.as_millis().to_string()),
            (
                "CALL_RING_TIMEOUT",
                self.call_ring_timeout.as_secs().to_string(),
            ),
            (
                "KEY_FETCH_PER_MINUTE",
                self.key_fetch_per_minute.to_string(),
            ),
            (
                "PREKEY_LOW_THRESHOLD",
                self.prekey_low_threshold.to_string(),
            ),
            ("REDIS_PREFIX", self.redis_prefix.clone()),
            ("PRESENCE_TTL", self.presence_ttl.as_secs().to_string()),
            ("REDIS_PUBLISH_QUEUE", self.redis_publish_queue.to_string()),
            (
                "ACCESS_TOKEN_TTL",
                self.jwt_expiration.as_secs().to_string(),
            ),
            (
                "REFRESH_TOKEN_TTL",
                self.refresh_token_ttl.as_secs().to_string(),
            ),
            (
                "LOGIN_RATE_PER_MINUTE",
                self.login_rate_per_minute.to_string(),
            ),
            (
                "LOGIN_RATE_PER_ACCOUNT_PER_MINUTE",
                self.login_rate_per_account_per_minute.to_string(),
            ),
            (
                "LOGIN_FAILURES_PER_ADDRESS",
                self.login_failures_per_address.to_string(),
            ),
            (
                "TRUSTED_PROXIES",
                if self.trusted_proxies.is_empty() {
                    "(none)".to_owned()
                } else {
                    let nets: Vec<String> = self
                        .trusted_proxies
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    nets.join(",")
                },
            ),
            (
                "TRUSTED_PROXY_HEADER",
                match self.trusted_proxy_header {
                    ForwardedHeader::XForwardedFor => "x-forwarded-for",
                    ForwardedHeader::Forwarded => "forwarded",
                }
                .to_owned(),
            ),
            (
                "WRITE_RATE_PER_USER_PER_MINUTE",
                self.write_rate_per_user_per_minute.to_string(),
            ),
            (
                "LOOKUP_RATE_PER_USER_PER_MINUTE",
                self.lookup_rate_per_user_per_minute.to_string(),
            ),
            (
                "REFRESH_REUSE_GRACE",
                self.refresh_reuse_grace.as_secs().to_string(),
            ),
            (
                "CALL_MAX_SILENCE",
                self.call_max_silence.as_secs().to_string(),
            ),
            (
                "MAX_SOCKETS_PER_USER",
                self.max_sockets_per_user.to_string(),
            ),
            (
                "WS_FRAMES_PER_SECOND",
                self.ws_frames_per_second.to_string(),
            ),
            (
                "WS_MESSAGES_PER_SECOND",
                self.ws_messages_per_second.to_string(),
            ),
            (
                "WS_EPHEMERAL_PER_SECOND",
                self.ws_ephemeral_per_second.to_string(),
            ),
            (
                "WS_EPHEMERAL_DELIVERED_PER_SECOND",
                self.ws_ephemeral_delivered_per_second.to_string(),
            ),
            ("WS_CATCH_UP_MAX", self.ws_catch_up_max.to_string()),
            (
                "RETENTION_MESSAGES_DAYS",
                days_text(self.retention_messages),
            ),
            ("RETENTION_CALLS_DAYS", days_text(self.retention_calls)),
            (
                "RETENTION_STORIES_HOURS",
                (self.retention_stories.as_secs() / 3600).to_string(),
            ),
            (
                "RETENTION_SWEEP_INTERVAL",
                self.retention_sweep_interval.as_secs().to_string(),
            ),
        ]
    }
}

/// A retention in days, as configured (`0`: kept forever).
fn days_text(retention: Option<Duration>) -> String {
    retention.map_or(0, |d| d.as_secs() / 86_400).to_string()
}

/// `CORS_ALLOWED_ORIGINS`: `scheme://host[:port]` entries; `*` only in development.
fn origins(raw: Option<&str>, env: AppEnv) -> anyhow::Result<Vec<String>> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for origin in raw
        .split(',')
        .map(|o| o.trim().trim_end_matches('/'))
        .filter(|o| !o.is_empty())
    {
        if origin == "*" {
            if env == AppEnv::Production {
                bail!("CORS_ALLOWED_ORIGINS=* is refused in production: list the origins");
            }
        } else {
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let valid = rest.is_some_and(|host| {
                !host.is_empty()
                    && !host.contains('/')
                    && host.chars().all(|c| c.is_ascii_graphic())
            });
            if !valid {
                bail!(
                    "CORS_ALLOWED_ORIGINS: {origin:?} is not an origin (expected http(s)://host[:port], no path)"
                );
            }
        }
        out.push(origin.to_owned());
    }
    Ok(out)
}

/// `TRUSTED_PROXIES`: comma-separated CIDRs (`10.0.0.0/8`) or single addresses (`10.0.0.2`).
fn trusted_proxies(raw: Option<&str>) -> anyhow::Result<Vec<ipnet::IpNet>> {
    raw.unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| anyhow::anyhow!("TRUSTED_PROXIES: {p:?} is not an address or a CIDR"))
        })
        .collect()
}

/// Hides the password of `scheme://user:password@host/...`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:<redacted>@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

fn parse<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: &str,
) -> anyhow::Result<T>
where
    T::Err: fmt::Display,
{
    let raw = get(key).unwrap_or_else(|| default.to_owned());
    raw.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{key}={raw:?} is invalid: {e}"))
}

fn positive(get: &impl Fn(&str) -> Option<String>, key: &str, default: u64) -> anyhow::Result<u64> {
    let value: u64 = parse(get, key, &default.to_string())?;
    if value == 0 {
        bail!("{key} must be greater than zero");
    }
    Ok(value)
}

fn small(get: &impl Fn(&str) -> Option<String>, key: &str, default: u64) -> anyhow::Result<u32> {
    u32::try_from(positive(get, key, default)?).with_context(|| format!("{key} is too large"))
}

/// A number of days, 0 meaning "forever" (`None`).
fn days(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: u64,
) -> anyhow::Result<Option<Duration>> {
    let days: u64 = parse(get, key, &default.to_string())?;
    Ok((days > 0).then(|| Duration::from_secs(days.saturating_mul(86_400))))
}

/// Every core but one (at least one): hashing never takes the core that routes messages. Below
/// routing's priority alone, two hashing threads on two cores still raised routing p99 3–8× in a
/// storm of 50 logins/s; one kept it within 1.4×, and still hashed the 50 logins/s.
fn default_hash_concurrency() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1) as u64)
}

fn random_secret() -> Vec<u8> {
    let mut bytes = vec![0u8; 64];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> anyhow::Result<Config> {
        Config::from_lookup(|k| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn development_generates_a_secret_and_uses_sqlite() {
        let c = config(&[]).expect("defaults are valid");
        assert!(c.jwt_secret_generated);
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.server_address.to_string(), "0.0.0.0:8080");
        assert!(!format!("{c:?}").contains(&format!("{:?}", c.jwt_secret.expose())));
    }

    #[test]
    fn production_refuses_missing_or_short_secret() {
        assert!(config(&[("APP_ENV", "production")]).is_err());
        assert!(config(&[("APP_ENV", "production"), ("JWT_SECRET", "short")]).is_err());
        let long = "x".repeat(32);
        assert!(config(&[("APP_ENV", "production"), ("JWT_SECRET", &long)]).is_ok());
    }

    #[test]
    fn every_setting_read_is_documented_and_every_documented_one_is_read() {
        let asked = std::sync::Mutex::new(Vec::new());
        Config::from_lookup(|k| {
            asked.lock().expect("lock").push(k.to_owned());
            None
        })
        .expect("defaults are valid");
        let mut asked = asked.into_inner().expect("lock");
        asked.push("RUST_LOG".to_owned()); // read by the log filter, not by Config
        asked.sort();
        asked.dedup();
        let mut documented: Vec<String> = SETTINGS.iter().map(|s| s.name.to_owned()).collect();
        documented.sort();
        assert_eq!(asked, documented);
        let described: Vec<&str> = config(&[])
            .expect("valid")
            .describe()
            .iter()
            .map(|d| d.0)
            .collect();
        for name in &documented {
            assert!(
                name == "RUST_LOG" || described.contains(&name.as_str()),
                "{name}"
            );
        }
    }

    #[test]
    fn secrets_are_redacted_when_described() {
        let c = config(&[
            ("JWT_SECRET", "a-very-secret-value-of-32-bytes-or-more"),
            ("DATABASE_URL", "postgres://kisse:hunter2@db:5432/kisse"),
            ("REDIS_URL", "redis://:redispass@cache:6379/0"),
            ("METRICS_TOKEN", "scrape-me"),
        ])
        .expect("valid");
        let text = format!("{:?}", c.describe());
        for secret in ["a-very-secret", "hunter2", "redispass", "scrape-me"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("postgres://kisse:<redacted>@db:5432/kisse"));
    }

    #[test]
    fn cors_origins_are_validated() {
        let c = config(&[(
            "CORS_ALLOWED_ORIGINS",
            "https://app.example.com, http://localhost:3000/",
        )])
        .expect("valid");
        assert_eq!(
            c.cors_allowed_origins,
            ["https://app.example.com", "http://localhost:3000"]
        );
        assert!(config(&[]).expect("valid").cors_allowed_origins.is_empty());
        assert!(config(&[("CORS_ALLOWED_ORIGINS", "app.example.com")]).is_err());
        assert!(config(&[("CORS_ALLOWED_ORIGINS", "https://a.example/path")]).is_err());
        let long = "x".repeat(32);
        assert!(
            config(&[
                ("APP_ENV", "production"),
                ("JWT_SECRET", &long),
                ("CORS_ALLOWED_ORIGINS", "*")
            ])
            .is_err()
        );
        assert!(config(&[("LOG_FORMAT", "xml")]).is_err());
        assert!(config(&[("DATABASE_URL", "mysql://x")]).is_err());
        assert!(config(&[("REDIS_URL", "http://x")]).is_err());
    }

    #[test]
    fn redis_may_be_reached_over_tls() {
        let c = config(&[("REDIS_URL", "rediss://:redispass@cache.example.com:6380/0")])
            .expect("rediss:// is valid");
        let described = format!("{:?}", c.describe());
        assert!(described.contains("rediss://:<redacted>@cache.example.com:6380/0"));
        assert!(config(&[("REDIS_URL", "rediss://cache.example.com")]).is_ok());
    }

    #[test]
    fn bad_values_are_named_in_the_error() {
        let err = config(&[("JWT_EXPIRATION", "soon")]).expect_err("not a number");
        assert!(err.to_string().contains("JWT_EXPIRATION"));
        assert!(config(&[("JWT_EXPIRATION", "0")]).is_err());
    }

    #[test]
    fn access_token_ttl_overrides_jwt_expiration_and_retention_zero_keeps_forever() {
        let c = config(&[("JWT_EXPIRATION", "600")]).expect("valid");
        assert_eq!(c.jwt_expiration, Duration::from_secs(600));
        let c = config(&[("JWT_EXPIRATION", "600"), ("ACCESS_TOKEN_TTL", "300")]).expect("valid");
        assert_eq!(c.jwt_expiration, Duration::from_secs(300));
        let c = config(&[
            ("RETENTION_MESSAGES_DAYS", "0"),
            ("RETENTION_CALLS_DAYS", "2"),
        ])
        .expect("valid");
        assert_eq!(c.retention_messages, None);
        assert_eq!(c.retention_calls, Some(Duration::from_secs(2 * 86_400)));
        assert!(config(&[("LOGIN_RATE_PER_MINUTE", "0")]).is_err());
    }

    #[test]
    fn trusted_proxies_are_cidrs_or_addresses() {
        let c =
            config(&[("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1 ,::1,fd00::/8")]).expect("valid");
        let nets: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.0/8", "127.0.0.1/32", "::1/128", "fd00::/8"]);
        assert!(config(&[]).expect("valid").trusted_proxies.is_empty());
        assert!(config(&[("TRUSTED_PROXIES", "10.0.0.0/33")]).is_err());
        assert!(config(&[("TRUSTED_PROXIES", "nginx")]).is_err());
        assert!(config(&[("TRUSTED_PROXY_HEADER", "x-real-ip")]).is_err());
        let c = config(&[("TRUSTED_PROXY_HEADER", "Forwarded")]).expect("valid");
        assert_eq!(c.trusted_proxy_header, ForwardedHeader::Forwarded);
    }
}
