//! Storage: the only place with SQL. One `Store` interface, two engines behind it —
//! SQLite (the embedded default) and PostgreSQL. Most SQL text is shared (SQLite accepts
//! `$1` placeholders); `with_pool!` runs the same body against whichever engine is configured,
//! type-checked for each.

mod batch;
mod calls;
mod channels;
mod contents;
mod conversations;
mod faults;
pub use faults::is_about_rows;
mod group;
mod group_pg;
mod group_sqlite;
mod inbox;
mod keys;
mod messages;
mod security;
mod stories;
mod users;

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    PgPool, SqlitePool,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokio_util::sync::CancellationToken;

pub use calls::{CallRecord, CallRefused, NewCall};
pub use channels::{ChannelAccess, NewChannel, NewChannelMessage};
pub use contents::{NewContent, StoredContent};
pub use inbox::{FirstDelivery, InboxEntry};
pub use keys::{Bundle, DeviceInfo, DeviceKeys, KeyRefresh, PreKey, SignedPreKey};
pub use messages::{NewMessage, PendingMessage};
pub use security::{RetentionCutoffs, Rotation, Swept};
pub use stories::NewStory;
pub use users::NewUser;

use crate::error::Result;

/// Which database engine a URL selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    pub fn of_url(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            anyhow::bail!("DATABASE_URL must start with sqlite: or postgres://")
        }
    }
}

/// Pages the SQLite log may reach before the writer checkpoints it itself (40 MiB): normally
/// `Store::checkpoint_wal` keeps it well below.
const WAL_BACKSTOP_PAGES: u32 = 10_000;
/// Rows an SQLite connection's thread may hand over before waiting for them to be read: more
/// than any one statement returns (a group commit, a catch-up page).
const ROW_BUFFER: usize = 4096;
/// Page cache of the SQLite writer, in KiB (64 MiB).
const WRITER_CACHE_KIB: u32 = 64 * 1024;
/// How often the SQLite log is checkpointed beside the writer.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Longest a PostgreSQL query waits for a connection, connecting included. While the database
/// is unreachable every query waits this long before it fails, and a group commit's senders
/// hear nothing until then: with the former 10 s, two groups in a row kept a sender waiting
/// 20 s for an `error`. Busy, the pool hands a connection over within milliseconds.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Group commits that run at once on PostgreSQL: up to half the pool (reads, REST writes and
/// delivery marks keep the rest), and no more than the cores of a small database server.
fn group_writers(pool_size: u32) -> usize {
    (pool_size / 2).clamp(1, 4) as usize
}

/// SQLite allows one writer at a time: writes go through a single connection so that they
/// queue in-process instead of failing with SQLITE_BUSY, while reads use a pool (WAL mode).
#[derive(Clone, Debug)]
struct SqlitePools {
    read: SqlitePool,
    write: SqlitePool,
}

#[derive(Clone, Debug)]
enum Db {
    Sqlite(SqlitePools),
    Postgres(PgPool),
}

/// One connection pool's usage.
#[derive(Clone, Copy, Debug)]
pub struct PoolStats {
    pub name: &'static str,
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// The storage interface used by the domain. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    /// Conversations never change members, so they are remembered once read: typing
    /// indicators and messages check membership without a database round trip.
    conversations: std::sync::Arc<conversations::ConversationCache>,
    /// Message inserts, committed in groups (absent in the store the batcher itself uses).
    batcher: Option<batch::Batcher>,
}

/// Runs `$body` with `$pool` bound to the engine's pool for `read` or `write` work.
macro_rules! with_pool {
    ($store:expr, $kind:ident, |$pool:ident| $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite(pools) => {
                let $pool = &pools.$kind;
                $body
            }
            $crate::store::Db::Postgres(pg) => {
                let $pool = pg;
                $body
            }
        }
    };
}
pub(crate) use with_pool;

/// Without autovacuum, PostgreSQL never refreshes its statistics on the message and inbox tables:
/// once they hold a few million rows, the planner takes a batch of delivery marks for a scan of
/// the whole inbox (measured: 1 s for 2,000 marks instead of 17 ms), and delivery reports and
/// receipts fall behind the messages.
async fn warn_if_autovacuum_is_off(pool: &PgPool) {
    let setting: Result<String, _> = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(pool)
        .await;
    if matches!(setting.as_deref(), Ok("off")) {
        tracing::warn!(
            "PostgreSQL's autovacuum is off: table statistics will go stale and message \
             routing slow down as tables grow; turn it on, or run ANALYZE regularly"
        );
    }
}

impl Store {
    /// Connects to `url` (creating an SQLite file if needed) and applies pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let store = match Engine::of_url(url)? {
            Engine::Sqlite => Self::connect_sqlite(url, max_connections).await?,
            Engine::Postgres => {
                let options = PgConnectOptions::from_str(url).context("parsing DATABASE_URL")?;
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    .context("connecting to PostgreSQL")?;
                warn_if_autovacuum_is_off(&pool).await;
                Self::new(Db::Postgres(pool))
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Copies what the SQLite log holds into the database file, from a reading connection,
    /// without blocking the writer (PASSIVE); the writer then reuses the log from its start.
    /// Nothing to do on PostgreSQL.
    pub async fn checkpoint_wal(&self) -> Result<()> {
        if let Db::Sqlite(pools) = &self.db {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&pools.read)
                .await?;
        }
        Ok(())
    }

    /// Runs `checkpoint_wal` every `CHECKPOINT_EVERY` until `shutdown`.
    pub async fn checkpoint_periodically(self, shutdown: CancellationToken) {
        if !matches!(self.db, Db::Sqlite(_)) {
            return;
        }
        let mut every = tokio::time::interval(CHECKPOINT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            if let Err(e) = self.checkpoint_wal().await {
                e.context("checkpointing the SQLite log").log_if_internal();
            }
        }
    }

    async fn connect_sqlite(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .context("parsing DATABASE_URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged message survives a power cut, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // The connection's thread hands rows over through a channel of this size; when it
            // is full the thread waits for the reader task, which costs a thread hand-off per
            // few rows of a batch's RETURNING or a catch-up page.
            .row_buffer_size(ROW_BUFFER);
        // No ping before a pool hands out a connection: it is a file in this process, and the
        // ping is a round trip to the connection's thread, paid by every group commit.
        // The writer checkpoints only as a backstop: `checkpoint_wal` runs beside it, so
        // copying the log into the database does not stall commits.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(
                options
                    .clone()
                    .pragma("wal_autocheckpoint", WAL_BACKSTOP_PAGES.to_string())
                    // A group commit dirties pages all over the message and inbox indexes; with
                    // SQLite's default 2 MiB cache it spills and rereads them mid-transaction.
                    .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
                    // A group's statements each keep a journal of the pages they change (to undo
                    // that statement alone); past 64 KiB SQLite spills it to a temporary file,
                    // a write syscall per page. Kept in memory instead.
                    .pragma("temp_store", "MEMORY"),
            )
            .await
            .context("opening the SQLite database")?;
        // An in-memory database exists once per connection: share the writer for reads.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let read = if in_memory {
            write.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(max_connections)
                .test_before_acquire(false)
                .connect_with(options)
                .await
                .context("opening the SQLite database")?
        };
        Ok(Self::new(Db::Sqlite(SqlitePools { read, write })))
    }

    fn new(db: Db) -> Self {
        let writers = match &db {
            Db::Sqlite(_) => 1,
            Db::Postgres(pool) => group_writers(pool.options().get_max_connections()),
        };
        let store = Self {
            db,
            conversations: Default::default(),
            batcher: None,
        };
        Self {
            batcher: Some(batch::Batcher::spawn(store.clone(), writers)),
            ..store
        }
    }

    pub fn engine(&self) -> Engine {
        match self.db {
            Db::Sqlite(_) => Engine::Sqlite,
            Db::Postgres(_) => Engine::Postgres,
        }
    }

    /// Applies the migrations of `migrations/<engine>/`, embedded in the binary.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match &self.db {
            Db::Sqlite(pools) => {
                sqlx::migrate!("./migrations/sqlite")
                    .run(&pools.write)
                    .await
            }
            Db::Postgres(pg) => sqlx::migrate!("./migrations/postgres").run(pg).await,
        }
        .context("applying database migrations")
    }

    /// Cheap round trip used by health checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_pool!(self, read, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(drop))
    }

    /// Size and idle connections of each pool, for metrics.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        fn stats<DB: sqlx::Database>(name: &'static str, pool: &sqlx::Pool<DB>) -> PoolStats {
            PoolStats {
                name,
                size: pool.size(),
                idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
                max: pool.options().get_max_connections(),
            }
        }
        match &self.db {
            Db::Sqlite(pools) => vec![
                stats("sqlite_read", &pools.read),
                stats("sqlite_write", &pools.write),
            ],
            Db::Postgres(pg) => vec![stats("postgres", pg)],
        }
    }

    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(pools) => {
                pools.read.close().await;
                pools.write.close().await;
            }
            Db::Postgres(pg) => pg.close().await,
        }
    }
}

/// The constraint (PostgreSQL) or message (SQLite) of a unique violation, if `e` is one.
fn unique_violation(e: &sqlx::Error) -> Option<String> {
    let db = e.as_database_error()?;
    if !db.is_unique_violation() {
        return None;
    }
    Some(
        db.constraint()
            .map_or_else(|| db.message().to_owned(), str::to_owned),
    )
}
