//! Which engine the store runs on and its connection pools: what every other file of the store
//! is handed, and `with_pool!`, which runs one body against whichever engine is configured.

use sqlx::{PgPool, SqlitePool};

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

#[derive(Clone, Debug)]
pub(super) enum Db {
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

/// SQLite allows one writer at a time: writes go through a single connection so that they
/// queue in-process instead of failing with SQLITE_BUSY, while reads use a pool (WAL mode).
#[derive(Clone, Debug)]
pub(super) struct SqlitePools {
    pub read: SqlitePool,
    pub write: SqlitePool,
    /// One reading connection, whose read transaction holds a checkpoint pass to where the log
    /// was when it began (`sqlite::checkpoint_pass`); unused in memory.
    pub pin: SqlitePool,
    /// The database file, opened once for `Store::checkpoint_wal` to sync it (`None` in
    /// memory). Kept open as long as the pools: closing any descriptor of the file drops every
    /// POSIX lock this process holds on it, SQLite's connections' included, which another
    /// process (the `sqlite3` shell, a backup) would then not see.
    pub file: Option<std::sync::Arc<std::fs::File>>,
    /// The connection that checkpoint passes copy the log with, on a thread of their own
    /// (`sqlite::checkpoint_pass`; `None` in memory).
    pub checkpointer: Option<std::sync::Arc<std::sync::Mutex<rusqlite::Connection>>>,
    /// Frames in the log when the last checkpoint pass began (`sqlite::checkpoint_pass`).
    pub log_at_last_pass: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// Set when a checkpoint beside the writer left the rest of the log for the writer to copy
    /// (`Store::checkpoint_wal`); whichever loop holds the writer next does it, between two of
    /// its transactions (`sqlite::group::Writer::finish_checkpoint`).
    pub checkpoint_due: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Runs `$body` with `$pool` bound to the engine's pool for `read` or `write` work.
macro_rules! with_pool {
    ($store:expr, $kind:ident, |$pool:ident| $body:expr) => {
        match &$store.db {
            $crate::store::db::Db::Sqlite(pools) => {
                let $pool = &pools.$kind;
                $body
            }
            $crate::store::db::Db::Postgres(pg) => {
                let $pool = pg;
                $body
            }
        }
    };
}
pub(crate) use with_pool;
