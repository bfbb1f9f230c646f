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
    /// Cluster mode: the Redis that carries fan-out between nodes and cross-node presence.
    /// `None`: a single node, fan-out in process. A secret: the URL may carry a password.
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key and channel, so several deployments (or tests) can share one.
    pub redis_prefix: String,
    /// How long a node's presence keys live without a refresh: a node that dies takes its
    /// users offline within about this long.
    pub presence_ttl: Duration,
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
            jwt_expiration: Duration::from_secs(positive(&get, "JWT_EXPIRATION", 86_400)?),
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
            redis_url: get("REDIS_URL").map(Secret::new),
            redis_prefix: get("REDIS_PREFIX").unwrap_or_else(|| "kisse".to_owned()),
            presence_ttl: Duration::from_secs(positive(&get, "PRESENCE_TTL", 30)?),
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
}
