//! What SQLite does its own way: its pools (one writer, many readers), its group commit
//! (`group`), and the statements with no text in common with PostgreSQL's.

mod coalescing_vfs;
pub(super) mod envelopes;
pub(super) mod group;
pub(super) mod write_back;

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::{
    error::{Error, Result},
    store::db::SqlitePools,
};

/// Pages the SQLite log may reach before the writer checkpoints it itself (80 MiB): normally
/// `Store::checkpoint_wal` starts it over well before (at 10,000 msg/s, every 12,500 pages).
const WAL_BACKSTOP_PAGES: u32 = 20_000;
/// Rows an SQLite connection's thread may hand over before waiting for them to be read: more
/// than any one statement returns (a group commit, a catch-up page).
const ROW_BUFFER: usize = 4096;
/// Page cache of the SQLite writer, in KiB (64 MiB).
const WRITER_CACHE_KIB: u32 = 64 * 1024;
/// How often the SQLite log is checkpointed beside the writer. At 10,000 msg/s the writer adds
/// about 50,000 pages a second to the log. Every 100 ms (with a backstop of 10,000 pages) cost
/// 7 % of the saturation throughput: pages changed by every group (the indexes' right edges)
/// were copied at each checkpoint, twice (beside the writer, then by it); every 250 ms, none
/// lost, and p99 at 10,000 msg/s x0.74 against the backstop alone (100 ms: x0.87).
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Where a checkpoint left the log: its frames, and how many of them are in the database.
pub(super) struct Checkpointed {
    log: i64,
    pub(super) copied: i64,
}

impl Checkpointed {
    /// The whole log is in the database (or there is none): SQLite synced the database when it
    /// copied the last of it, and the writer's next group starts the log over by itself.
    pub(super) fn is_whole(&self) -> bool {
        self.copied >= self.log
    }
}

/// One PASSIVE checkpoint beside the writer, from a reading connection.
pub(super) async fn checkpoint_pass(pools: &SqlitePools) -> Result<Checkpointed> {
    // (busy, frames in the log, frames of it copied into the database)
    let (_, log, copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(&pools.read)
        .await?;
    Ok(Checkpointed { log, copied })
}

/// Syncs the database file with `sync`, on a blocking thread (in memory: nothing to do).
pub(super) async fn sync_database(
    pools: &SqlitePools,
    sync: fn(&std::fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let Some(file) = pools.file.clone() else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || sync(&file))
        .await
        .map_err(|e| Error::Internal(e.into()))?
        .map_err(|e| Error::Internal(e.into()))
}

/// Opens the database at `url` (creating the file if needed).
pub(super) async fn connect(url: &str, max_connections: u32) -> anyhow::Result<SqlitePools> {
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
    // `checkpoint_wal` copies the log beside the writer, which only copies, between two
    // groups, what came meanwhile; its own checkpoint after a commit is a backstop.
    // The writer's log writes are gathered (`coalescing_vfs`), unless the URL names a VFS of
    // its own: the writer and the readers must share one VFS's locks.
    let path = options.get_filename().to_owned();
    let mut write_options = options.clone();
    if !in_memory(url) && !url.contains("vfs=") {
        coalescing_vfs::register().map_err(|e| anyhow::anyhow!("SQLite VFS: {e}"))?;
        write_options = write_options.vfs(coalescing_vfs::NAME);
    }
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect_with(
            write_options
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
    let read = if in_memory(url) {
        write.clone()
    } else {
        SqlitePoolOptions::new()
            .max_connections(max_connections)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .context("opening the SQLite database")?
    };
    let file = match in_memory(url) {
        true => None,
        false => {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {} to sync it", path.display()))?;
            Some(std::sync::Arc::new(file))
        }
    };
    Ok(SqlitePools { read, write, file })
}

fn in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Opens the existing SQLite database file of `url` through rusqlite, for the commands that
/// work on a whole database (`port-db`, `backup`), without creating it: a mistyped URL must
/// not port or back up a new, empty database. Read-write even for a reader: a read-only
/// connection to a database in WAL mode fails when the log's index file is missing.
pub(super) fn open_existing(url: &str) -> anyhow::Result<rusqlite::Connection> {
    if in_memory(url) {
        anyhow::bail!("DATABASE_URL is an in-memory SQLite database, which has no file");
    }
    let options = SqliteConnectOptions::from_str(url).context("parsing DATABASE_URL")?;
    let path = options.get_filename();
    if !path.exists() {
        anyhow::bail!("no SQLite database at {}", path.display());
    }
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening the SQLite database {}", path.display()))?;
    // A checkpoint of a running server may hold the database's lock for a moment.
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

/// `Security::dump_tables`: each column's bytes in hex.
pub(super) async fn dump_tables(pool: &SqlitePool) -> Result<Vec<(String, String)>, sqlx::Error> {
    let mut out = Vec::new();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .fetch_all(pool)
    .await?;
    for table in tables {
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
            .bind(&table)
            .fetch_all(pool)
            .await?;
        let row = columns
            .iter()
            .map(|c| format!("hex(\"{}\")", c.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(" || ',' || ");
        let sql = format!("SELECT {row} FROM \"{}\"", table.replace('"', "\"\""));
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await?;
        out.extend(rows.into_iter().map(|r| (table.clone(), r)));
    }
    Ok(out)
}
