//! Kisse backend: a blind gateway for an end-to-end-encrypted messenger. It authenticates
//! users, routes message metadata, presence, typing and receipts over WebSockets, and stores
//! metadata only.

pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod domain;
pub mod error;
pub mod events;
pub mod hub;
pub mod jwt;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod priority;
pub mod push;
pub mod rate_limit;
pub mod store;
pub mod tls;
pub mod ws;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{PasswordHasher, TokenKeys},
    broker::Broker,
    config::Config,
    hub::Hub,
    rate_limit::RateLimiter,
    store::Store,
};

/// How long open sockets get to close cleanly once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long requests in flight get to finish once shutdown starts (the server exits anyway).
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a request or socket needs, shared by all of them.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub hub: Hub,
    pub tokens: TokenKeys,
    pub hasher: PasswordHasher,
    pub content_waiters: domain::content::ContentWaiters,
    /// What sockets delivered, on its way to the database.
    pub delivery: domain::delivery::DeliveryLog,
    /// Per-caller limit on prekey bundle fetches.
    pub key_fetches: RateLimiter,
    /// Register, login and refresh requests per client IP.
    pub auth_by_ip: RateLimiter<IpAddr>,
    /// Failed logins per account (normalized email, or user id for re-authentication), from
    /// every address together: a ceiling far above `login_failures`, so that the owner, on
    /// another address, is locked out only by a flood from many addresses.
    pub auth_by_account: RateLimiter<String>,
    /// Failed logins in a row per (account, client address); a success resets the pair.
    pub login_failures: RateLimiter<(String, Option<IpAddr>)>,
    /// REST writes per signed-in user.
    pub writes: RateLimiter,
    /// User searches and find-by-email lookups per signed-in user.
    pub lookups: RateLimiter,
    /// Admin API requests per client address (none: one shared bucket).
    pub admin_calls: RateLimiter<Option<IpAddr>>,
    /// TURN credentials handed out per signed-in user.
    pub turn_credentials: RateLimiter,
    /// Cancelled when the server begins to shut down.
    pub shutdown: CancellationToken,
    /// Checked by `/ready` when `REDIS_URL` is set.
    pub redis: Option<redis::Client>,
    /// Push wake-ups for devices without a socket.
    pub push: domain::push::Waker,
    /// When the process started serving (for `/health`).
    pub started: std::time::Instant,
    /// Where attachment bytes go: files in `ATTACHMENT_DIR`, or an S3 bucket.
    pub attachment_storage: store::AttachmentStorage,
    /// Attachment uploads being written on this node.
    pub uploads: domain::attachments::UploadsInFlight,
}

pub type AppState = Arc<App>;

impl App {
    /// Connects to the database (applying migrations) and prepares the shared state.
    pub async fn new(config: Config) -> anyhow::Result<AppState> {
        let store = Store::connect(
            &config.database_url,
            config.db_max_connections,
            config.group_commit_wait,
        )
        .await?;
        metrics::handle();
        // `/ready` pings Redis with a client of its own; fan-out goes through the broker.
        let redis = match &config.redis_url {
            Some(url) => Some(
                redis::Client::open(String::from_utf8_lossy(url.expose()).as_ref())
                    .context("REDIS_URL")?,
            ),
            None => None,
        };
        let broker = match &config.redis_url {
            Some(url) => Some(Broker::new(
                std::str::from_utf8(url.expose()).context("REDIS_URL is not UTF-8")?,
                &config.redis_prefix,
                config.presence_ttl,
                config.redis_publish_queue,
            )?),
            None => {
                // A single node starts with no socket open: nobody is online yet. (In a
                // cluster other nodes hold sockets; a dead node's users are taken offline by
                // the survivors, see `broker`.)
                store.users().reset_presence(model::now()).await?;
                None
            }
        };
        let vapid = match &config.vapid_private_key {
            Some(key) => push::Vapid::from_base64(&String::from_utf8_lossy(key.expose()))
                .context("VAPID_PRIVATE_KEY")?,
            None => {
                let stored = (store.push())
                    .server_key(
                        "vapid",
                        || push::Vapid::generate().to_base64(),
                        model::now(),
                    )
                    .await?;
                push::Vapid::from_base64(&stored).context("the stored VAPID key")?
            }
        };
        let pushers = push::Pushers::new(&config, vapid)?;
        metrics::attachment_bytes_stored(store.attachments().stored_bytes().await?);
        Ok(Arc::new(Self {
            push: domain::push::Waker::new(pushers, config.push_queue, config.push_min_interval),
            redis,
            started: std::time::Instant::now(),
            attachment_storage: store::AttachmentStorage::new(&config, store.clone())?,
            uploads: Default::default(),
            tokens: TokenKeys::new(&config.jwt_secret, config.jwt_expiration),
            hasher: PasswordHasher::new(config.hash_concurrency)?,
            hub: Hub::new(broker),
            content_waiters: Default::default(),
            delivery: Default::default(),
            key_fetches: RateLimiter::new(config.key_fetch_per_minute),
            auth_by_ip: RateLimiter::new(config.login_rate_per_minute),
            auth_by_account: RateLimiter::new(config.login_rate_per_account_per_minute),
            // After the burst, one more guess a minute per pair.
            login_failures: RateLimiter::with_burst(config.login_failures_per_address, 1),
            writes: RateLimiter::new(config.write_rate_per_user_per_minute),
            lookups: RateLimiter::new(config.lookup_rate_per_user_per_minute),
            admin_calls: RateLimiter::new(config.admin_rate_per_minute),
            turn_credentials: RateLimiter::new(domain::turn::CREDENTIALS_PER_MINUTE),
            shutdown: CancellationToken::new(),
            store,
            config,
        }))
    }
}

/// Serves HTTP and WebSockets on `listener` until `state.shutdown` is cancelled, then stops
/// accepting, closes open sockets (close code 1001, after writing what was queued for them)
/// and waits for them at most `DRAIN_TIMEOUT` (requests in flight: `HTTP_DRAIN_TIMEOUT`).
pub async fn serve(state: AppState, listener: TcpListener) -> anyhow::Result<()> {
    tokio::spawn(domain::sweeper::run(state.clone()));
    let delivery_recorder = tokio::spawn(domain::delivery::run(state.clone()));
    tokio::spawn(
        state
            .store
            .clone()
            .checkpoint_periodically(state.shutdown.clone()),
    );
    tokio::spawn(domain::retention::run(state.clone()));
    tokio::spawn(domain::push::run(state.clone()));
    tokio::spawn(metrics::upkeep(state.shutdown.clone()));
    if let Some(node_changes) = broker::spawn(&state) {
        tokio::spawn(domain::presence::follow_nodes(state.clone(), node_changes));
    }
    let app = api::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    // Frames are small and each should leave at once: without TCP_NODELAY, a frame written
    // while the previous one is unacknowledged waits for the peer's delayed ACK (up to 40 ms).
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(state.shutdown.clone().cancelled_owned())
        .into_future();
    let overdue = async {
        state.shutdown.cancelled().await;
        tokio::time::sleep(HTTP_DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        served = server => served.context("serving HTTP")?,
        () = overdue => tracing::warn!("requests still running at shutdown: abandoned"),
    }
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while state.hub.socket_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(broker) = state.hub.broker() {
        broker.leave().await;
    }
    let left = state.hub.socket_count();
    if left > 0 {
        tracing::warn!(sockets = left, "drain timeout: sockets still open");
    }
    // What the closed sockets delivered is recorded before the store closes.
    state.delivery.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, delivery_recorder)
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: deliveries left unrecorded will be sent again");
    }
    state.store.close().await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Applies pending database migrations, then returns (`kisse-backend migrate`).
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let store = Store::connect(&config.database_url, 1, Duration::ZERO).await?;
    tracing::info!(
        database = store.engine().name(),
        "database migrations are up to date"
    );
    store.close().await;
    Ok(())
}

/// Copies the configured SQLite database into the new PostgreSQL database at `to`
/// (`kisse-backend port-db --to <url>`), telling the operator how it goes on stdout.
pub async fn port_db(config: &Config, to: &str) -> anyhow::Result<()> {
    println!(
        "porting {} into {}",
        config::redact_url(&config.database_url),
        config::redact_url(to)
    );
    println!(
        "(stop every server on this database first: what they write once the copy has begun \
         is not ported)"
    );
    store::port_to_postgres(&config.database_url, to, |line| println!("{line}")).await?;
    println!("the PostgreSQL database is ready: start the servers with DATABASE_URL set to it");
    Ok(())
}

/// Writes a consistent copy of the configured SQLite database, which a server may be using, to
/// `file` (`kisse-backend backup <file>`).
pub fn backup(config: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let bytes = store::backup_sqlite(&config.database_url, file)?;
    println!(
        "backup written to {}: {bytes} bytes in {:.2} s",
        file.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs the server with `config` until SIGINT or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.server_address)
        .await
        .with_context(|| format!("binding {}", config.server_address))?;
    let state = App::new(config).await?;
    tracing::info!(
        address = %listener.local_addr()?,
        database = state.store.engine().name(),
        "kisse-backend listening"
    );
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    serve(state, listener).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
