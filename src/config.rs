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
    /// Login attempts per account (email) and minute (also the burst).
    pub login_rate_per_account_per_minute: u32,
    /// Sockets one user may have open at once on this node.
    pub max_sockets_per_user: usize,
    /// Frames of any type a socket may send per second (twice that as a burst).
    pub ws_frames_per_second: u32,
    /// `message`, `channel_message` and `call_request` frames per socket and second (twice that
    /// as a burst).
    pub ws_messages_per_second: u32,
    /// Message metadata older than this is deleted; `None` keeps it.
    pub retention_messages: Option<Duration>,
    /// Finished calls older than this are deleted from the history; `None` keeps them.
    pub retention_calls: Option<Duration>,
    /// How long an expired story (and who viewed it) is kept after it expired.
    pub retention_stories: Duration,
    /// Interval between retention sweeps.
    pub retention_sweep_interval: Duration,
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
        Ok(Self {
            app_env,
            server_address: parse(&get, "SERVER_ADDRESS", "0.0.0.0:8080")?,
            database_url: get("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned()),
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
            hash_concurrency: positive(&get, "HASH_CONCURRENCY", default_parallelism())? as usize,
            db_max_connections: positive(&get, "DB_MAX_CONNECTIONS", 10)? as u32,
            content_max_bytes: positive(&get, "CONTENT_MAX_BYTES", 1024 * 1024)? as usize,
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
                30,
            )?,
            max_sockets_per_user: positive(&get, "MAX_SOCKETS_PER_USER", 32)? as usize,
            ws_frames_per_second: small(&get, "WS_FRAMES_PER_SECOND", 200)?,
            ws_messages_per_second: small(&get, "WS_MESSAGES_PER_SECOND", 100)?,
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
        })
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

fn default_parallelism() -> u64 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u64)
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
}
