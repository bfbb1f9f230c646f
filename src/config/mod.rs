//! Settings, each declared once below (name, default, help, how it is read), then read from the
//! environment (and an optional `.env`) over an optional TOML file, validated, and passed down.
//! `--help`, `check-config`, the file's keys and the README's table (a test compares it) all come
//! from the one declaration.

mod file;
pub mod kinds;
mod setting;
mod values;

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use rand::RngCore;

pub use file::ConfigFile;
use kinds::{
    Address, Count, DatabaseUrl, DaysOrForever, Flag, Hours, Key, Kind, Millis, MillisOrZero,
    Networks, OptionalText, OptionalUrl, Origins, RedisUrl, Seconds, SecondsOrZero, Text, Token,
    TurnUris,
};
pub use setting::{Fallback, Setting};
pub use values::{
    AppEnv, DirectoryPolicy, ForwardedHeader, LogFormat, S3Settings, Secret, redact_url,
};

/// Default database: an SQLite file next to the process, created on first run.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://kisse.db";
const MIN_SECRET_LEN: usize = 32;
/// Shortest `TURN_SECRET`: it signs every TURN credential, guessing it gives relays to anyone.
const MIN_TURN_SECRET_LEN: usize = 16;

fn setting(name: &str) -> anyhow::Result<&'static Setting> {
    SETTINGS
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| anyhow!("{name} is not a declared setting"))
}

/// Declares every setting once: a field of `Config` (of the type its kind reads), its entry in
/// `SETTINGS`, how it is read and how `check-config` prints it. `derived` fields are not settings:
/// `Config::check` works them out from the settings.
macro_rules! settings {
    (
        derived { $( $(#[doc = $ddoc:literal])* $dfield:ident: $dty:ty, )* }
        $(
            $(#[doc = $doc:literal])*
            $name:literal $field:ident: $kind:ty = $default:expr, $help:literal;
        )*
    ) => {
        /// The server's settings, read and validated once at start-up, then passed down.
        #[derive(Clone, Debug)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $field: <$kind as Kind>::Value, )*
            $( $(#[doc = $ddoc])* pub $dfield: $dty, )*
        }

        /// Every setting, in the order they are documented.
        pub const SETTINGS: &[Setting] = &[
            $( Setting { name: $name, default: $default, help: $help }, )*
        ];

        impl Config {
            /// Every setting read on its own; `check` then relates them.
            fn read(sources: &Sources<'_>) -> anyhow::Result<Self> {
                Ok(Self {
                    $( $field: sources.value::<$kind>($name)?, )*
                    $( $dfield: Default::default(), )*
                })
            }

            /// Every setting's effective value, secrets redacted.
            fn shown(&self) -> Vec<(&'static str, String)> {
                vec![ $( ($name, <$kind as Kind>::show(&self.$field)), )* ]
            }
        }
    };
}

use Fallback::{ByEnv, Computed, Same, Unset, Value};

settings! {
    derived {
        /// True when `jwt_secret` was generated at start-up (tokens die with the process).
        jwt_secret_generated: bool,
        /// Where attachment files go: `ATTACHMENT_DIR`, or `attachments/` next to the SQLite
        /// file (in the working directory with PostgreSQL).
        attachment_path: std::path::PathBuf,
        /// The object store attachments go to, when `ATTACHMENT_S3_BUCKET` is set.
        attachment_s3: Option<S3Settings>,
    }

    /// Where the server runs: development tolerates a generated secret, production does not.
    "APP_ENV" app_env: AppEnv = Value("development"),
        "development or production (production requires JWT_SECRET)";
    "SERVER_ADDRESS" server_address: Address = Value("0.0.0.0:8080"), "listen address";
    "DATABASE_URL" database_url: DatabaseUrl = Value(DEFAULT_DATABASE_URL),
        "sqlite://<file> or postgres://user:pass@host/db";
    "DB_MAX_CONNECTIONS" db_max_connections: Count<u32> = Value("10"), "database pool size";
    /// SQLite: how long a group commit may wait, after the previous one started, for more work
    /// to share its transaction (see `store::batch::GATHER`).
    "GROUP_COMMIT_WAIT_MS" group_commit_wait: MillisOrZero = Value("1"),
        "SQLite: milliseconds a group commit may wait for more messages to share its fsync (0: none)";
    /// Redis, when set: cluster mode (fan-out and presence across nodes; `/ready` checks it too).
    "REDIS_URL" redis_url: RedisUrl = Unset,
        "redis://host:port, or rediss:// (TLS); when set: cluster mode";
    /// The HS256 key; random (and `jwt_secret_generated`) when unset in development.
    "JWT_SECRET" jwt_secret: Key = Computed("(random per run in development)", random_secret),
        "HS256 key, at least 32 bytes";
    /// The access token lifetime: `ACCESS_TOKEN_TTL`, or this, its old name.
    "JWT_EXPIRATION" jwt_expiration: Seconds = Value("86400"), "token lifetime in seconds";
    "RUST_LOG" rust_log: Text = Value("info"), "log filter (tracing EnvFilter syntax)";
    "LOG_FORMAT" log_format: LogFormat = Value("text"),
        "text (human-readable) or json (one object per line)";
    /// When set, `/metrics` requires `Authorization: Bearer <token>`.
    "METRICS_TOKEN" metrics_token: Token = Unset,
        "when set, GET /metrics requires Authorization: Bearer <token>";
    /// When set, the admin API (`/api/admin/*`) answers to `Authorization: Bearer <token>`;
    /// unset, it does not exist (404).
    "ADMIN_TOKEN" admin_token: Token = Unset,
        "when set (at least 32 bytes), enables /api/admin/* for Authorization: Bearer <token>";
    /// Admin API requests per client address and minute (also the burst), the token's guesses
    /// included.
    "ADMIN_RATE_PER_MINUTE" admin_rate_per_minute: Count<u32> = Value("60"),
        "admin API requests per client address and minute (also the burst)";
    /// Origins allowed by CORS (none: no CORS headers, browsers refuse cross-origin calls).
    "CORS_ALLOWED_ORIGINS" cors_allowed_origins: Origins = Unset,
        "comma-separated origins allowed by CORS, e.g. https://app.example.com";
    /// Largest WebSocket text frame accepted; above it the socket is closed with 1009.
    "WS_MAX_FRAME_BYTES" ws_max_frame_bytes: Count<usize> = Value("65536"),
        "larger frames close the socket with 1009";
    /// Largest `message` frame that carries envelopes (one per device of the recipient);
    /// every other frame stays within `WS_MAX_FRAME_BYTES`.
    "WS_MAX_ENVELOPE_FRAME_BYTES" ws_max_envelope_frame_bytes: Count<usize> = Value("1048576"),
        "largest message frame with envelopes (other frames: WS_MAX_FRAME_BYTES)";
    /// Largest decoded envelope (one device's ciphertext).
    "ENVELOPE_MAX_BYTES" envelope_max_bytes: Count<usize> = Value("65536"),
        "largest envelope content (one device's ciphertext), in bytes";
    /// How long an envelope waits for its device's ack before it is dropped.
    "ENVELOPE_TTL" envelope_ttl: Seconds = Value("2592000"),
        "seconds an envelope waits for its device to acknowledge it (30 days)";
    /// Envelopes a device's queue keeps: past it the oldest are dropped (the device is told).
    "DEVICE_QUEUE_MAX" device_queue_max: Count<i64> = Value("10000"),
        "envelopes a device's queue keeps; past it the oldest are dropped";
    /// Outgoing frames queued per socket before it is considered too slow and closed.
    "WS_QUEUE_LEN" ws_queue_len: Count<usize> = Value("1024"),
        "frames queued per socket before it is closed with 1013";
    /// Interval between server pings on an otherwise quiet socket.
    "WS_PING_INTERVAL" ws_ping_interval: Seconds = Value("25"), "seconds between server pings";
    /// A socket that sends nothing (not even a pong) for this long is closed.
    "WS_IDLE_TIMEOUT" ws_idle_timeout: Seconds = Value("60"),
        "seconds of silence before a socket is closed";
    /// Password hashes computed at once; the rest wait, so a login storm cannot starve routing.
    "HASH_CONCURRENCY" hash_concurrency: Count<usize> =
        Computed("(CPU count - 1, at least 1)", default_hash_concurrency),
        "password-hashing threads (run below the priority of message routing)";
    /// Largest decoded content blob accepted by the mailbox.
    "CONTENT_MAX_BYTES" content_max_bytes: Count<usize> = Value("1048576"),
        "largest content blob accepted, in bytes";
    /// Unread, unexpired content a sender may have stored at once (their uploads beyond wait
    /// until the recipients read some): one account cannot fill the disk.
    "CONTENT_QUOTA_BYTES" content_quota_bytes: Count<u64> = Value("268435456"),
        "unread content a sender may have stored at once, in bytes (413 beyond)";
    /// How long a blob is kept when nobody reads it (`expires_at` may only shorten it).
    "CONTENT_TTL" content_ttl: Seconds = Value("2592000"),
        "seconds an unread content blob is kept";
    /// How long a content GET waits for a blob the sender has not uploaded yet.
    "CONTENT_WAIT_MS" content_wait: Millis = Value("10000"),
        "milliseconds a content GET waits for a blob not yet uploaded";
    /// Where tus attachment uploads are kept (files `<id>.part`, then `<id>` once complete);
    /// unset: `attachments/` next to the SQLite file (with PostgreSQL: in the working directory).
    "ATTACHMENT_DIR" attachment_dir: OptionalText = Unset,
        "directory of attachment files (default: attachments/ next to the SQLite file, ./attachments with PostgreSQL)";
    /// Largest attachment (`Upload-Length`) accepted.
    "ATTACHMENT_MAX_BYTES" attachment_max_bytes: Count<u64> = Value("104857600"),
        "largest attachment upload, in bytes (413 beyond, before any byte is stored)";
    /// How long an attachment, finished or not, is kept after its upload began.
    "ATTACHMENT_TTL" attachment_ttl: Seconds = Value("2592000"),
        "seconds an attachment (or an unfinished upload) is kept";
    /// Bytes of unexpired attachments, finished or not, a user may have at once (by their
    /// declared lengths): one account cannot fill the disk.
    "ATTACHMENT_QUOTA_BYTES" attachment_quota_bytes: Count<u64> = Value("1073741824"),
        "unexpired attachments one user may have at once, in bytes (413 beyond)";
    /// The bucket of an S3-compatible object store for attachments: set, they go there (a
    /// cluster's nodes then share no disk); unset, to files in `ATTACHMENT_DIR`.
    "ATTACHMENT_S3_BUCKET" attachment_s3_bucket: OptionalText = Unset,
        "S3 bucket for attachments (any S3-compatible store; needs the access key pair); unset: files in ATTACHMENT_DIR";
    /// The store's URL when it is not AWS; requests are path-style (`<endpoint>/<bucket>/<key>`).
    "ATTACHMENT_S3_ENDPOINT" attachment_s3_endpoint: OptionalUrl = Unset,
        "S3 endpoint for a store other than AWS (MinIO, R2, Ceph, ...): https://host[:port], requests path-style; default: AWS in ATTACHMENT_S3_REGION";
    "ATTACHMENT_S3_REGION" attachment_s3_region: Text = Value("us-east-1"),
        "S3 region (the one requests are signed for; R2: auto)";
    "ATTACHMENT_S3_ACCESS_KEY_ID" attachment_s3_access_key_id: OptionalText = Unset,
        "S3 access key id (with ATTACHMENT_S3_BUCKET)";
    "ATTACHMENT_S3_SECRET_ACCESS_KEY" attachment_s3_secret_access_key: Token = Unset,
        "S3 secret access key (with ATTACHMENT_S3_BUCKET)";
    /// Plain HTTP to the store, for an endpoint on loopback or a private network only: the
    /// keys still sign the requests, but the bytes travel unencrypted.
    "ATTACHMENT_S3_ALLOW_HTTP" attachment_s3_allow_http: Flag = Value("false"),
        "allow an http:// ATTACHMENT_S3_ENDPOINT (a store on loopback or a private network)";
    /// An unanswered call becomes `missed` after this long.
    "CALL_RING_TIMEOUT" call_ring_timeout: Seconds = Value("60"),
        "seconds before an unanswered call is missed";
    /// Same as `jwt_expiration`, which `Config::check` sets from it.
    "ACCESS_TOKEN_TTL" access_token_ttl: Seconds = Same("JWT_EXPIRATION"),
        "access token lifetime in seconds";
    /// How long a refresh token (and so a signed-in session left unused) lives.
    "REFRESH_TOKEN_TTL" refresh_token_ttl: Seconds = Value("2592000"),
        "refresh token lifetime in seconds (an unused session ends with it)";
    /// Register, login and refresh requests per client IP and minute (also the burst).
    "LOGIN_RATE_PER_MINUTE" login_rate_per_minute: Count<u32> = Value("1000"),
        "register, login and refresh requests per client IP and minute";
    /// Failed logins per account (email) and minute, from all addresses (also the burst).
    "LOGIN_RATE_PER_ACCOUNT_PER_MINUTE" login_rate_per_account_per_minute: Count<u32> =
        Value("200"),
        "failed logins per account and minute, from all addresses together (also the burst)";
    /// Failed logins in a row for one account from one client address before 429.
    "LOGIN_FAILURES_PER_ADDRESS" login_failures_per_address: Count<u32> = Value("20"),
        "failed logins in a row for one account from one client address before 429 (then one a minute; a success resets)";
    /// Peers whose forwarded header names the client (none: the peer is the client).
    "TRUSTED_PROXIES" trusted_proxies: Networks = Unset,
        "comma-separated addresses or CIDRs of reverse proxies trusted to name the client (per-address limits use that address)";
    /// Which header those proxies write; the other one is client-controlled and ignored.
    "TRUSTED_PROXY_HEADER" trusted_proxy_header: ForwardedHeader = Value("x-forwarded-for"),
        "the header trusted proxies append the client address to: x-forwarded-for or forwarded (RFC 7239)";
    /// REST writes per signed-in user and minute (also the burst).
    "WRITE_RATE_PER_USER_PER_MINUTE" write_rate_per_user_per_minute: Count<u32> = Value("600"),
        "REST writes (POST, PUT, DELETE) per signed-in user and minute (also the burst)";
    /// User searches and find-by-email lookups per signed-in user and minute (also the burst).
    "LOOKUP_RATE_PER_USER_PER_MINUTE" lookup_rate_per_user_per_minute: Count<u32> = Value("300"),
        "user searches and find-by-email lookups per signed-in user and minute (also the burst)";
    /// Who a user search may find; another user's email is shown only to their contacts (or
    /// to an exact find-by-email), whatever the policy.
    "USER_DIRECTORY" user_directory: DirectoryPolicy = ByEnv("open", "search"),
        "who GET /api/users/search finds: open (anyone, empty query too), search (a query of 3+ characters on username or name, 20 results) or contacts (users one shares a conversation with)";
    /// A conversation one side opened is a request until the other side replies or accepts:
    /// until then the requester sees none of the recipient's presence, stories, typing or
    /// identity changes.
    "CONTACTS_BY_CONSENT" contacts_by_consent: Flag = ByEnv("false", "true"),
        "a conversation is a request until the other side replies or accepts it; until then the requester sees nothing of the recipient's presence, stories, typing or identity changes";
    /// How long a used refresh token still answers the pair it was traded for.
    "REFRESH_REUSE_GRACE" refresh_reuse_grace: SecondsOrZero = Value("10"),
        "seconds a used refresh token still returns the pair it was traded for (a retry after a lost response); 0: never";
    /// An active call with neither party connected for this long ends.
    "CALL_MAX_SILENCE" call_max_silence: Seconds = Value("60"),
        "seconds an active call lasts with neither party connected";
    /// Sockets one user may have open at once on this node.
    "MAX_SOCKETS_PER_USER" max_sockets_per_user: Count<usize> = Value("32"),
        "sockets one user may have open on a node";
    /// Frames of any type a socket may send per second (twice that as a burst).
    "WS_FRAMES_PER_SECOND" ws_frames_per_second: Count<u32> = Value("200"),
        "frames a socket may send per second (twice that as a burst)";
    /// `message`, `channel_message` and `call_request` frames per socket and second (twice that
    /// as a burst).
    "WS_MESSAGES_PER_SECOND" ws_messages_per_second: Count<u32> = Value("100"),
        "message, channel_message and call_request frames per socket and second";
    /// Typing, presence and call answer frames per socket and second (twice that as a burst).
    "WS_EPHEMERAL_PER_SECOND" ws_ephemeral_per_second: Count<u32> = Value("20"),
        "typing, presence and call answer frames a socket may send per second (twice that as a burst)";
    /// Ephemeral frames written to one socket per second (twice that as a burst); the rest
    /// wait, coalesced per key, so many senders together cannot flood a recipient.
    "WS_EPHEMERAL_DELIVERED_PER_SECOND" ws_ephemeral_delivered_per_second: Count<u32> =
        Value("100"),
        "ephemeral frames written to a socket per second (twice that as a burst); more wait, coalesced";
    /// Inbox events a connect or `sync` sends at most: the latest ones (bounded work per
    /// request; older ones stay readable over REST).
    "WS_CATCH_UP_MAX" ws_catch_up_max: Count<i64> = Value("5000"),
        "inbox events a connect or sync frame sends at most (the latest ones)";
    /// Message metadata older than this is deleted; `None` keeps it.
    "RETENTION_MESSAGES_DAYS" retention_messages: DaysOrForever = Value("0"),
        "days message metadata is kept (0: forever)";
    /// Finished calls older than this are deleted from the history; `None` keeps them.
    "RETENTION_CALLS_DAYS" retention_calls: DaysOrForever = Value("90"),
        "days finished calls stay in the history (0: forever)";
    /// How long an expired story (and who viewed it) is kept after it expired.
    "RETENTION_STORIES_HOURS" retention_stories: Hours = Value("0"),
        "hours an expired story is kept after it expired";
    /// Interval between retention sweeps.
    "RETENTION_SWEEP_INTERVAL" retention_sweep_interval: Seconds = Value("3600"),
        "seconds between retention sweeps";
    /// Prefix of every Redis key and channel, so several deployments (or tests) can share one.
    "REDIS_PREFIX" redis_prefix: Text = Value("kisse"), "prefix of every Redis key and channel";
    /// How long a node's presence keys live without a refresh: a node that dies takes its
    /// users offline within about this long.
    "PRESENCE_TTL" presence_ttl: Seconds = Value("30"),
        "seconds a node's presence keys live without a refresh";
    /// Frames waiting for the publisher task at most (cluster mode).
    "REDIS_PUBLISH_QUEUE" redis_publish_queue: Count<usize> = Value("16384"),
        "frames waiting to be published to Redis; beyond it they are dropped (recipients refill)";
    /// Prekey bundle fetches allowed per caller and minute (each one uses up a one-time prekey).
    "KEY_FETCH_PER_MINUTE" key_fetch_per_minute: Count<u32> = Value("120"),
        "prekey bundle fetches per caller and minute";
    /// A device with fewer one-time prekeys left than this is told to upload more.
    "PREKEY_LOW_THRESHOLD" prekey_low_threshold: Count<i64> = Value("10"),
        "fewer one-time prekeys than this sends prekeys_low";
    /// After a device is woken by a push, further events wait this long (or until the device
    /// connects) before it is pushed again.
    "PUSH_MIN_INTERVAL" push_min_interval: Seconds = Value("30"),
        "seconds between two pushes to a device that did not connect in between";
    /// Lets devices register plain-http and loopback/private push endpoints (tests, private
    /// deployments); otherwise only https endpoints on public addresses are accepted.
    "PUSH_ALLOW_INSECURE_ENDPOINTS" push_allow_insecure_endpoints: Flag = Value("false"),
        "allow http:// and private-address push endpoints (tests, private networks)";
    /// Wake-ups waiting to be sent; past it new ones are dropped (counted), never blocking.
    "PUSH_QUEUE" push_queue: Count<usize> = Value("10000"),
        "wake-ups queued for the push services before new ones are dropped";
    /// Longest a push request may take (connecting included).
    "PUSH_TIMEOUT" push_timeout: Seconds = Value("10"),
        "seconds a request to a push service may take";
    /// The VAPID key (RFC 8292) as base64url of its 32-byte P-256 secret; when unset, one is
    /// generated on first start and kept in the database (shared by a cluster's nodes).
    "VAPID_PRIVATE_KEY" vapid_private_key: Token = Unset,
        "base64url P-256 secret for Web Push; default: generated once, kept in the database";
    /// Who push services may contact about this server's pushes (`mailto:` or `https:`).
    "VAPID_SUBJECT" vapid_subject: Text = Value("mailto:admin@localhost"),
        "contact sent in VAPID tokens (mailto: or https: URL)";
    /// A Google service-account JSON key: enables FCM registrations.
    "FCM_SERVICE_ACCOUNT_FILE" fcm_service_account_file: OptionalText = Unset,
        "path of the FCM service-account JSON key; enables kind fcm";
    "FCM_BASE_URL" fcm_base_url: Text = Value("https://fcm.googleapis.com"),
        "FCM HTTP v1 base URL";
    /// An APNs token-auth key (.p8): enables APNs registrations, with the three below.
    "APNS_KEY_FILE" apns_key_file: OptionalText = Unset,
        "path of the APNs .p8 signing key; enables kind apns";
    "APNS_KEY_ID" apns_key_id: OptionalText = Unset, "the .p8 key's id";
    "APNS_TEAM_ID" apns_team_id: OptionalText = Unset, "the Apple developer team id";
    "APNS_TOPIC" apns_topic: OptionalText = Unset,
        "the app's bundle id (a registration may name its own topic)";
    "APNS_BASE_URL" apns_base_url: Text = Value("https://api.push.apple.com"),
        "APNs base URL (https://api.sandbox.push.apple.com for development builds)";
    /// The TURN/STUN servers handed to the app for calls, with `TURN_SECRET`: both or neither.
    "TURN_URIS" turn_uris: TurnUris = Unset,
        "comma-separated turn:, turns:, stun: or stuns: URIs given to clients for calls (with TURN_SECRET)";
    /// The secret shared with the TURN server (coturn's `static-auth-secret`).
    "TURN_SECRET" turn_secret: Token = Unset,
        "secret shared with the TURN server (coturn static-auth-secret), at least 16 bytes";
    /// How long a TURN credential is valid.
    "TURN_TTL" turn_ttl: Seconds = Value("86400"),
        "seconds a TURN credential is valid";
}

/// `attachments/` in the directory of the SQLite file of `database_url` (its host's disk, which
/// a deployment already keeps: `/var/lib/kisse` under systemd), or of the working directory.
fn attachments_next_to(database_url: &str) -> std::path::PathBuf {
    let file = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or_default());
    let dir = file
        .filter(|f| *f != ":memory:")
        .and_then(|f| Path::new(f).parent())
        .unwrap_or(Path::new(""));
    dir.join("attachments")
}

/// The settings as a help text (for `--help`).
pub fn settings_help() -> String {
    let width = SETTINGS.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let mut out = String::from(
        "Settings (environment variables, or a .env file in the working directory; or, under \
         their lower-case names, keys of the --config TOML file, which the environment \
         overrides):\n",
    );
    for s in SETTINGS {
        out.push_str(&format!(
            "  {:width$}  {} [default: {}]\n",
            s.name,
            s.help,
            s.default_text()
        ));
    }
    out
}

/// Loads `.env` from the working directory into the environment, if there is one.
pub fn read_dotenv() -> anyhow::Result<()> {
    // A missing .env is normal; a malformed one is worth failing on.
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(e) => Err(e).context("reading .env"),
    }
}

/// Where a value came from, for error messages.
enum Origin<'a> {
    Env,
    File(&'a Path),
    Default,
}

/// Where settings are read from, strongest first: the environment (or a test's map), the file,
/// then each setting's default. An empty value counts as unset.
struct Sources<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file: Option<&'a ConfigFile>,
}

impl Sources<'_> {
    /// The value set for `setting`, and where, if the environment or the file sets it.
    fn given(&self, setting: &Setting) -> Option<(String, Origin<'_>)> {
        let set = |v: &str| !v.trim().is_empty();
        if let Some(value) = (self.env)(setting.name).filter(|v| set(v)) {
            return Some((value, Origin::Env));
        }
        let file = self.file?;
        let value = file.get(setting).filter(|v| set(v))?;
        Some((value.to_owned(), Origin::File(&file.path)))
    }

    /// The text to read for `setting`: given, or its default; and the setting it belongs to
    /// (another one for `Fallback::Same`).
    fn raw(
        &self,
        setting: &'static Setting,
    ) -> anyhow::Result<(String, Origin<'_>, &'static Setting)> {
        if let Some((value, origin)) = self.given(setting) {
            return Ok((value, origin, setting));
        }
        let value = match setting.default {
            Value(value) => value.to_owned(),
            Unset => String::new(),
            Computed(_, compute) => compute(),
            Same(other) => return self.raw(self::setting(other)?),
            ByEnv(development, production) => {
                let (env, _, _) = self.raw(self::setting("APP_ENV")?)?;
                match <AppEnv as Kind>::parse(&env) {
                    Ok(AppEnv::Production) => production.to_owned(),
                    _ => development.to_owned(),
                }
            }
        };
        Ok((value, Origin::Default, setting))
    }

    /// `name`'s value read as `K`; an error names the setting, the value (unless secret) and
    /// where it came from.
    fn value<K: Kind>(&self, name: &str) -> anyhow::Result<K::Value> {
        let (raw, origin, setting) = self.raw(setting(name)?)?;
        K::parse(&raw).map_err(|e| {
            let key = setting.key();
            let name = setting.name;
            let what = match origin {
                Origin::Env if K::SECRET => name.to_owned(),
                Origin::Env => format!("{name}={raw:?}"),
                Origin::File(path) if K::SECRET => format!("{key} in {}", path.display()),
                Origin::File(path) => format!("{key} = {raw:?} in {}", path.display()),
                Origin::Default => format!("the default of {name}"),
            };
            anyhow!("{what} is invalid: {e}")
        })
    }

    fn is_given(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self.given(setting(name)?).is_some())
    }
}

impl Config {
    /// Reads the environment over the configuration `file`, if any (call `read_dotenv` first
    /// for a `.env` to count as environment).
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let file = file
            .map(|path| ConfigFile::read(path, SETTINGS))
            .transpose()?;
        let env = |key: &str| std::env::var(key).ok();
        Self::from_sources(&Sources {
            env: &env,
            file: file.as_ref(),
        })
    }

    /// Builds the configuration from any key → value source (a test's map) alone.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        Self::from_sources(&Sources {
            env: &get,
            file: None,
        })
    }

    fn from_sources(sources: &Sources<'_>) -> anyhow::Result<Self> {
        Self::read(sources)?.check(sources)
    }

    /// What relates settings to each other.
    fn check(mut self, sources: &Sources<'_>) -> anyhow::Result<Self> {
        self.jwt_secret_generated = !sources.is_given("JWT_SECRET")?;
        if self.app_env == AppEnv::Production {
            if self.jwt_secret_generated {
                bail!("JWT_SECRET is required in production (at least {MIN_SECRET_LEN} bytes)");
            }
            if self.jwt_secret.expose().len() < MIN_SECRET_LEN {
                bail!("JWT_SECRET must be at least {MIN_SECRET_LEN} bytes in production");
            }
            if self.cors_allowed_origins.iter().any(|o| o == "*") {
                bail!("CORS_ALLOWED_ORIGINS=* is refused in production: list the origins");
            }
        }
        // An operator's token must not be guessable: the admin API can delete any account.
        if (self.admin_token.as_ref()).is_some_and(|t| t.expose().len() < MIN_SECRET_LEN) {
            bail!(
                "ADMIN_TOKEN must be at least {MIN_SECRET_LEN} bytes (e.g. openssl rand -hex 32)"
            );
        }
        match (self.turn_uris.is_empty(), &self.turn_secret) {
            (true, Some(_)) => bail!("TURN_SECRET is set without TURN_URIS: set both or neither"),
            (false, None) => bail!("TURN_URIS is set without TURN_SECRET: set both or neither"),
            (_, Some(secret)) if secret.expose().len() < MIN_TURN_SECRET_LEN => {
                bail!("TURN_SECRET must be at least {MIN_TURN_SECRET_LEN} bytes")
            }
            _ => {}
        }
        // ACCESS_TOKEN_TTL is the new name; JWT_EXPIRATION (its default) still works.
        self.jwt_expiration = self.access_token_ttl;
        self.attachment_path = match &self.attachment_dir {
            Some(dir) => dir.into(),
            None => attachments_next_to(&self.database_url),
        };
        self.attachment_s3 = self.s3_settings(sources)?;
        Ok(self)
    }

    /// The object store's settings, all or none: half a configuration is refused, not ignored
    /// (attachments would silently go to the local disk of one node).
    fn s3_settings(&self, sources: &Sources<'_>) -> anyhow::Result<Option<S3Settings>> {
        let Some(bucket) = self.attachment_s3_bucket.clone() else {
            for name in [
                "ATTACHMENT_S3_ENDPOINT",
                "ATTACHMENT_S3_REGION",
                "ATTACHMENT_S3_ACCESS_KEY_ID",
                "ATTACHMENT_S3_SECRET_ACCESS_KEY",
                "ATTACHMENT_S3_ALLOW_HTTP",
            ] {
                if sources.is_given(name)? {
                    bail!(
                        "{name} is set without ATTACHMENT_S3_BUCKET: set the bucket too (S3 \
                         storage), or remove it (files in ATTACHMENT_DIR)"
                    );
                }
            }
            return Ok(None);
        };
        let valid_name = (3..=63).contains(&bucket.len())
            && (bucket.bytes()).all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-'));
        if !valid_name {
            bail!(
                "ATTACHMENT_S3_BUCKET={bucket:?} is not a bucket name (3 to 63 lower-case \
                 letters, digits, dots and hyphens)"
            );
        }
        let (Some(access_key_id), Some(secret_access_key)) = (
            self.attachment_s3_access_key_id.clone(),
            self.attachment_s3_secret_access_key.clone(),
        ) else {
            bail!(
                "ATTACHMENT_S3_BUCKET needs ATTACHMENT_S3_ACCESS_KEY_ID and \
                 ATTACHMENT_S3_SECRET_ACCESS_KEY"
            );
        };
        let http = (self.attachment_s3_endpoint.as_deref()).is_some_and(|e| e.starts_with("http:"));
        match (http, self.attachment_s3_allow_http) {
            (true, false) => bail!(
                "ATTACHMENT_S3_ENDPOINT is plain http://: use https://, or set \
                 ATTACHMENT_S3_ALLOW_HTTP=true for a store on loopback or a private network"
            ),
            (false, true) => {
                bail!("ATTACHMENT_S3_ALLOW_HTTP=true needs an http:// ATTACHMENT_S3_ENDPOINT")
            }
            _ => {}
        }
        let most = S3Settings::PART_BYTES as u64 * S3Settings::MAX_PARTS;
        if self.attachment_max_bytes > most {
            bail!(
                "ATTACHMENT_MAX_BYTES may be at most {most} with S3 ({} parts of {} bytes)",
                S3Settings::MAX_PARTS,
                S3Settings::PART_BYTES
            );
        }
        Ok(Some(S3Settings {
            bucket,
            endpoint: self.attachment_s3_endpoint.clone(),
            region: self.attachment_s3_region.clone(),
            access_key_id,
            secret_access_key,
        }))
    }

    /// The effective settings, secrets redacted (for `check-config`).
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let mut shown = self.shown();
        if self.jwt_secret_generated {
            for (name, value) in &mut shown {
                if *name == "JWT_SECRET" {
                    "<generated for this run>".clone_into(value);
                }
            }
        }
        shown
    }
}

/// Every core but one (at least one): hashing never takes the core that routes messages. Below
/// routing's priority alone, two hashing threads on two cores still raised routing p99 3–8× in a
/// storm of 50 logins/s; one kept it within 1.4×, and still hashed the 50 logins/s.
fn default_hash_concurrency() -> String {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1).max(1))
        .to_string()
}

/// A key for this run only: 64 random bytes, as hex (a setting's value is text).
fn random_secret() -> String {
    let mut bytes = [0u8; 64];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn attachments_go_next_to_the_sqlite_file() {
        for (url, dir) in [
            (
                "sqlite:///var/lib/kisse/kisse.db",
                "/var/lib/kisse/attachments",
            ),
            ("sqlite://kisse.db", "attachments"),
            ("sqlite:data/kisse.db?mode=rwc", "data/attachments"),
            ("postgres://kisse@db/kisse", "attachments"),
        ] {
            assert_eq!(attachments_next_to(url), Path::new(dir), "{url}");
        }
        let set = Config::from_lookup(|k| (k == "ATTACHMENT_DIR").then(|| "/srv/files".into()));
        assert_eq!(
            set.expect("config").attachment_path,
            Path::new("/srv/files")
        );
    }

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
    fn a_short_admin_token_is_refused_without_being_repeated() {
        let err = config(&[("ADMIN_TOKEN", "hunter22")]).expect_err("too short");
        let text = format!("{err:#}");
        assert!(
            text.contains("ADMIN_TOKEN") && !text.contains("hunter22"),
            "{text}"
        );
        let long = "a".repeat(32);
        let c = config(&[("ADMIN_TOKEN", &long)]).expect("long enough");
        assert_eq!(
            c.admin_token.map(|t| t.expose().to_vec()),
            Some(long.into_bytes())
        );
        assert!(config(&[]).expect("valid").admin_token.is_none());
    }

    #[test]
    fn every_setting_is_read_and_described_once_in_declaration_order() {
        let asked = std::sync::Mutex::new(Vec::new());
        Config::from_lookup(|k| {
            asked.lock().expect("lock").push(k.to_owned());
            None
        })
        .expect("defaults are valid");
        let mut asked = asked.into_inner().expect("lock");
        asked.sort();
        asked.dedup();
        let declared: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
        let mut sorted: Vec<String> = declared.iter().map(|n| (*n).to_owned()).collect();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), declared.len(), "a setting is declared twice");
        assert_eq!(asked, sorted);
        let described: Vec<&str> = config(&[])
            .expect("valid")
            .describe()
            .iter()
            .map(|d| d.0)
            .collect();
        assert_eq!(described, declared);
        // Names are environment variables; in lower case, the file's keys.
        for setting in SETTINGS {
            assert!(!setting.help.is_empty(), "{}", setting.name);
            assert_eq!(setting.name.to_ascii_uppercase(), setting.name);
        }
    }

    fn file(text: &str) -> anyhow::Result<ConfigFile> {
        ConfigFile::parse(Path::new("/etc/kisse.toml"), text, SETTINGS)
    }

    fn with_file(pairs: &[(&str, &str)], file: &ConfigFile) -> anyhow::Result<Config> {
        let env = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        };
        Config::from_sources(&Sources {
            env: &env,
            file: Some(file),
        })
    }

    #[test]
    fn the_file_sets_values_and_the_environment_overrides_them() {
        let f = file(
            "ws_queue_len = 77\nredis_prefix = \"staging\"\n\
             trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\naccess_token_ttl = \"300\"\n",
        )
        .expect("valid file");
        let c = with_file(&[], &f).expect("valid");
        assert_eq!(c.ws_queue_len, 77);
        assert_eq!(c.redis_prefix, "staging");
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(c.jwt_expiration, Duration::from_secs(300));
        let c = with_file(&[("WS_QUEUE_LEN", "5"), ("REDIS_PREFIX", " ")], &f).expect("valid");
        assert_eq!(c.ws_queue_len, 5);
        // An empty variable counts as unset: the file's value stands.
        assert_eq!(c.redis_prefix, "staging");
        assert!(with_file(&[], &file("").expect("empty file")).is_ok());
    }

    #[test]
    fn the_file_names_what_is_wrong() {
        let err = file("ws_queue_len = 1\nwebsocket_queue = 2\n").expect_err("unknown key");
        assert!(err.to_string().contains("\"websocket_queue\""), "{err}");
        assert!(err.to_string().contains("/etc/kisse.toml"), "{err}");
        let err = file("DATABASE_URL = \"sqlite://x.db\"").expect_err("upper case");
        assert!(err.to_string().contains("database_url"), "{err}");
        let err = file("[server]\naddress = \"x\"").expect_err("a table");
        assert!(err.to_string().contains("\"server\""), "{err}");
        let err = file("ws_ping_interval = 2.5").expect_err("a float");
        assert!(err.to_string().contains("ws_ping_interval"), "{err}");
        assert!(file("ws_queue_len = ").is_err());

        let f = file("ws_queue_len = \"lots\"").expect("a string is fine here");
        let err = with_file(&[], &f).expect_err("not a number");
        let text = format!("{err:#}");
        assert!(
            text.contains("ws_queue_len") && text.contains("lots"),
            "{text}"
        );
        assert!(text.contains("/etc/kisse.toml"), "{text}");
        // The same value from the environment is named as the environment spells it.
        let err = with_file(&[("WS_QUEUE_LEN", "0")], &f).expect_err("zero");
        assert!(err.to_string().starts_with("WS_QUEUE_LEN=\"0\""), "{err}");
    }

    #[test]
    fn the_example_file_is_valid() {
        let example = include_str!("../../kisse.example.toml");
        let f = ConfigFile::parse(Path::new("kisse.example.toml"), example, SETTINGS)
            .expect("valid keys");
        let long = "x".repeat(32);
        let c = with_file(&[("JWT_SECRET", &long)], &f).expect("valid values");
        assert_eq!(c.app_env, AppEnv::Production);
    }

    #[test]
    fn errors_never_repeat_a_secret() {
        for (name, value) in [
            ("DATABASE_URL", "mysql://kisse:hunter2@db/kisse"),
            ("REDIS_URL", "http://:redispass@cache"),
        ] {
            let err = config(&[(name, value)]).expect_err("invalid");
            let text = format!("{err:#}");
            assert!(text.contains(name), "{text}");
            assert!(
                !text.contains("hunter2") && !text.contains("redispass"),
                "{text}"
            );
        }
        let f = file("redis_url = \"http://:redispass@cache\"").expect("valid file");
        let text = format!("{:#}", with_file(&[], &f).expect_err("invalid"));
        assert!(text.contains("redis_url in /etc/kisse.toml"), "{text}");
        assert!(!text.contains("redispass"), "{text}");
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
    fn turn_needs_uris_and_a_long_enough_secret_together() {
        let secret = ("TURN_SECRET", "sixteen-bytes-ok");
        let c = config(&[
            (
                "TURN_URIS",
                "turn:turn.example.com:3478?transport=udp, TURNS:t.example.com,stun:s",
            ),
            secret,
        ])
        .expect("valid");
        assert_eq!(c.turn_uris.len(), 3);
        assert_eq!(c.turn_ttl, Duration::from_secs(86_400));
        assert!(!format!("{:?}", c.describe()).contains(secret.1));
        let c = config(&[]).expect("valid");
        assert!(c.turn_uris.is_empty() && c.turn_secret.is_none());

        let err = config(&[("TURN_URIS", "turn:t.example.com")]).expect_err("no secret");
        assert!(err.to_string().contains("TURN_SECRET"), "{err}");
        let err = config(&[secret]).expect_err("no URIs");
        assert!(err.to_string().contains("TURN_URIS"), "{err}");
        let err = config(&[("TURN_URIS", "turn:t"), ("TURN_SECRET", "short")]).expect_err("short");
        assert!(err.to_string().contains("at least 16 bytes"), "{err}");
        assert!(!err.to_string().contains("short\""), "{err}");
        for bad in [
            "turn://t.example.com",
            "https://t.example.com",
            "t.example.com",
            "turn:",
        ] {
            let err = config(&[("TURN_URIS", bad), secret]).expect_err(bad);
            assert!(err.to_string().contains("is not a TURN/STUN URI"), "{err}");
        }
        assert!(config(&[("TURN_URIS", "turn:t"), secret, ("TURN_TTL", "0")]).is_err());
    }

    #[test]
    fn s3_storage_needs_a_whole_configuration() {
        let bucket = ("ATTACHMENT_S3_BUCKET", "kisse-files");
        let key_id = ("ATTACHMENT_S3_ACCESS_KEY_ID", "AKIDEXAMPLE");
        let secret = ("ATTACHMENT_S3_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-secret");
        assert!(config(&[]).expect("valid").attachment_s3.is_none());
        let c = config(&[bucket, key_id, secret]).expect("valid");
        let s3 = c.attachment_s3.as_ref().expect("S3 storage");
        assert_eq!(
            (s3.bucket.as_str(), s3.region.as_str()),
            ("kisse-files", "us-east-1")
        );
        assert_eq!(s3.endpoint, None);
        let described = format!("{:?}", c.describe());
        assert!(!described.contains(secret.1), "{described}");
        assert!(!format!("{c:?}").contains(secret.1));

        for half in [&[bucket][..], &[bucket, key_id], &[bucket, secret]] {
            let err = config(half).expect_err("no key pair");
            assert!(
                err.to_string().contains("ATTACHMENT_S3_SECRET_ACCESS_KEY"),
                "{err}"
            );
        }
        for (name, value) in [
            key_id,
            secret,
            ("ATTACHMENT_S3_ENDPOINT", "https://minio.internal:9000"),
            ("ATTACHMENT_S3_REGION", "eu-west-3"),
            ("ATTACHMENT_S3_ALLOW_HTTP", "true"),
        ] {
            let err = config(&[(name, value)]).expect_err("no bucket");
            let text = err.to_string();
            assert!(text.starts_with(&format!("{name} is set without ATTACHMENT_S3_BUCKET")));
            assert!(!text.contains(secret.1), "{text}");
        }

        let minio = ("ATTACHMENT_S3_ENDPOINT", "http://127.0.0.1:9000/");
        let err = config(&[bucket, key_id, secret, minio]).expect_err("plain http");
        assert!(
            err.to_string().contains("ATTACHMENT_S3_ALLOW_HTTP"),
            "{err}"
        );
        let allow = ("ATTACHMENT_S3_ALLOW_HTTP", "true");
        let c = config(&[bucket, key_id, secret, minio, allow]).expect("http allowed");
        let endpoint = c.attachment_s3.expect("S3").endpoint;
        assert_eq!(endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        let https = (
            "ATTACHMENT_S3_ENDPOINT",
            "https://account.r2.cloudflarestorage.com",
        );
        assert!(config(&[bucket, key_id, secret, https]).is_ok());
        assert!(config(&[bucket, key_id, secret, https, allow]).is_err());
        assert!(config(&[bucket, key_id, secret, allow]).is_err());
        for bad in [
            "minio:9000",
            "ftp://minio",
            "https://minio/bucket",
            "https://",
        ] {
            let err = config(&[bucket, key_id, secret, ("ATTACHMENT_S3_ENDPOINT", bad)]);
            assert!(err.is_err(), "{bad}");
        }
        for bad in ["Kisse", "ab", "kisse/files", "kisse_files"] {
            let err = config(&[("ATTACHMENT_S3_BUCKET", bad), key_id, secret]);
            assert!(err.is_err(), "{bad}");
        }
        // S3 takes 10,000 parts at most.
        let huge = ("ATTACHMENT_MAX_BYTES", "60000000000");
        let err = config(&[bucket, key_id, secret, huge]).expect_err("too many parts");
        assert!(err.to_string().contains("ATTACHMENT_MAX_BYTES"), "{err}");
        assert!(config(&[huge]).is_ok(), "files have no such limit");
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
