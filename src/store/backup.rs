//! `kisse-backend backup <file>`: a consistent copy of a live SQLite database.
//!
//! `VACUUM INTO` reads the database in one read transaction: in WAL mode that neither blocks
//! the server's writer nor is blocked by it, and the copy is the database as of one commit
//! (later commits are simply not in it). The copy is a complete database, compacted, that a
//! server starts on as it is.

use std::{path::Path, str::FromStr, time::Duration};

use anyhow::{Context, bail};
use rusqlite::OpenFlags;
use sqlx::sqlite::SqliteConnectOptions;

use crate::store::Engine;

/// Writes a copy of the SQLite database at `database_url` to `file`, which must not exist.
/// Returns the size of the copy in bytes.
pub fn backup_sqlite(database_url: &str, file: &Path) -> anyhow::Result<u64> {
    if Engine::of_url(database_url)? != Engine::Sqlite {
        bail!(
            "backup copies SQLite databases, and DATABASE_URL is a PostgreSQL database: \
             back it up with PostgreSQL's own tools (pg_dump, or a base backup with WAL archiving)"
        );
    }
    if database_url.contains(":memory:") || database_url.contains("mode=memory") {
        bail!("DATABASE_URL is an in-memory SQLite database: there is no file to back up");
    }
    if file.exists() {
        bail!(
            "{} already exists: backup never overwrites a file",
            file.display()
        );
    }
    let Some(target) = file.to_str() else {
        bail!("the backup file's name must be UTF-8");
    };
    let options = SqliteConnectOptions::from_str(database_url).context("parsing DATABASE_URL")?;
    let source = options.get_filename();
    if !source.exists() {
        bail!("no SQLite database at {}", source.display());
    }
    // Without create: a mistyped DATABASE_URL must not back up a new, empty database.
    let conn = rusqlite::Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening the SQLite database {}", source.display()))?;
    // A checkpoint of the server may hold the database's lock for a moment.
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute("VACUUM INTO ?1", [target])
        .with_context(|| format!("copying the database into {}", file.display()))?;
    drop(conn);
    // VACUUM INTO does not sync what it wrote: the copy is on disk once this returns.
    let copy = std::fs::File::open(file).context("opening the copy")?;
    copy.sync_all().context("syncing the copy to disk")?;
    Ok(copy.metadata()?.len())
}
