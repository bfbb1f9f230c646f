//! What SQLite does its own way: its pools (one writer, many readers), its group commit
//! (`group`), and the statements with no text in common with PostgreSQL's.

mod coalescing_vfs;
pub(super) mod envelopes;
pub(super) mod group;
pub(super) mod write_back;

use std::{str::FromStr, sync::atomic::Ordering, time::Duration};

use anyhow::Context;
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::{
    error::{Error, Result},
    store::db::SqlitePools,
};

/// Pages the SQLite log may reach before the writer checkpoints it itself (about 390 MiB):
/// normally `Store::checkpoint_wal` starts it over well before (at 10,000 msg/s, every 60,000
/// pages or so); under a heavier load the writer copies and syncs the log at once here. The log
/// file keeps the largest size it reached (SQLite overwrites it from its start rather than
/// shrink it): at most this, and about the load's second of writes otherwise.
const WAL_BACKSTOP_PAGES: u32 = 100_000;
/// Rows an SQLite connection's thread may hand over before waiting for them to be read: more
/// than any one statement returns (a group commit, a catch-up page).
const ROW_BUFFER: usize = 4096;
/// Page cache of the SQLite writer, in KiB (64 MiB).
const WRITER_CACHE_KIB: u32 = 64 * 1024;
/// How often the SQLite log is checkpointed beside the writer. Each checkpoint ends with the
/// writer copying and syncing, between two groups, the pages committed during the last pass's
/// sync: a few hundred scattered pages (the leaves that every few groups change), whose sync
/// takes 3–4 ms however short the pass, and the messages of those moments are most of the p99.
/// Their count does not depend on how often it happens, so it happens once a second: at
/// 10,000 msg/s, p99 4.0 ms instead of 5.7–6.0 every 250 ms, before passes were held to where
/// the log was (2 s: 3.3 ms, but a log of twice the size; 100 ms, earlier: 7 % of the
/// saturation throughput, hot pages copied at every one).
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Where a checkpoint pass left the log: how many of its frames are in the database, and
/// whether any were committed since the previous pass.
pub(super) struct Checkpointed {
    pub(super) copied: i64,
    pub(super) grown: bool,
}

/// One PASSIVE checkpoint beside the writer, from a reading connection, of the log as it was
/// when the pass began.
///
/// A pass that copies the whole log has SQLite sync the database at once, hundreds to
/// thousands of scattered pages in one `fsync` (a grown database: 10 ms and more, every group
/// commit's log fsync waiting behind it). Held to where the log was when it began (a read
/// transaction opened first keeps it from copying further), a pass under load leaves the
/// groups committed meanwhile, and the sync to `Store::checkpoint_wal`, which writes the pages
/// back gently first. SQLite's own rule stays: the log starts over only after a checkpoint
/// that copied all of it synced the database.
pub(super) async fn checkpoint_pass(pools: &SqlitePools) -> Result<Checkpointed> {
    let Some(checkpointer) = pools.checkpointer.clone() else {
        // In memory: no log.
        return Ok(Checkpointed {
            copied: 0,
            grown: false,
        });
    };
    let mut held = pools.pin.begin().await?;
    sqlx::query("SELECT 1 FROM sqlite_master LIMIT 1")
        .fetch_optional(&mut *held)
        .await?;
    let pass = copy_at_low_priority(checkpointer).await;
    held.rollback().await?;
    let (_, log, copied): (i64, i64, i64) = pass?;
    Ok(Checkpointed {
        copied,
        grown: pools.log_at_last_pass.swap(log, Ordering::Relaxed) != log,
    })
}

/// Runs a `PASSIVE` checkpoint on `checkpointer`, on a thread of its own at the lowest
/// priority: (busy, frames in the log, frames of it copied into the database). A pass copies a
/// second of the log's pages into the database, a `pread` and a `pwrite` each: in a grown
/// database tens of milliseconds of CPU, which on a runtime worker's core delayed every message
/// of those moments (docs/PERFORMANCE.md, issue 25, tenth round). At the lowest priority the
/// copy yields to the runtime's workers and takes what CPU they leave. A thread per pass, once a
/// second: a thread whose priority was lowered may not raise it again unprivileged.
async fn copy_at_low_priority(
    checkpointer: std::sync::Arc<std::sync::Mutex<rusqlite::Connection>>,
) -> Result<(i64, i64, i64)> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kisse-checkpoint".into())
        .spawn(move || {
            crate::priority::lower_this_thread(crate::priority::Background::Lowest);
            let db = checkpointer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let pass = db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            });
            let _ = done.send(pass.map_err(Error::from));
        })
        .map_err(|e| Error::Internal(e.into()))?;
    result
        .await
        .map_err(|_| Error::Internal(anyhow::anyhow!("the checkpoint thread stopped")))?
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
    let (read, pin) = if in_memory(url) {
        (write.clone(), write.clone())
    } else {
        let pool = |size| {
            SqlitePoolOptions::new()
                .max_connections(size)
                .test_before_acquire(false)
        };
        let read = pool(max_connections)
            .connect_with(options.clone())
            .await
            .context("opening the SQLite database")?;
        // A connection of its own: with one reader, a pass could otherwise wait for itself.
        (read, pool(1).connect_lazy_with(options))
    };
    let (file, checkpointer) = match in_memory(url) {
        true => (None, None),
        false => {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {} to sync it", path.display()))?;
            let checkpointer = rusqlite::Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .with_context(|| format!("opening {} to checkpoint it", path.display()))?;
            let checkpointer = std::sync::Arc::new(std::sync::Mutex::new(checkpointer));
            (Some(std::sync::Arc::new(file)), Some(checkpointer))
        }
    };
    Ok(SqlitePools {
        read,
        write,
        pin,
        file,
        checkpointer,
        log_at_last_pass: Default::default(),
        checkpoint_due: Default::default(),
    })
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
