//! `kisse-backend backup <file>`: a consistent copy of a live SQLite database.
//!
//! `VACUUM INTO` reads the database in one read transaction: in WAL mode that neither blocks
//! the server's writer nor is blocked by it, and the copy is the database as of one commit
//! (later commits are simply not in it). The copy is a complete database, compacted, that a
//! server starts on as it is.

use std::path::Path;

use anyhow::{Context, bail};

use crate::store::{Engine, sqlite};

/// Writes a copy of the SQLite database at `database_url` to `file`, which must not exist.
/// Returns the size of the copy in bytes.
pub fn backup_sqlite(database_url: &str, file: &Path) -> anyhow::Result<u64> {
    if Engine::of_url(database_url)? != Engine::Sqlite {
        bail!(
            "backup copies SQLite databases, and DATABASE_URL is a PostgreSQL database: \
             back it up with PostgreSQL's own tools (pg_dump, or a base backup with WAL archiving)"
        );
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
    let conn = sqlite::open_existing(database_url)?;
    conn.execute("VACUUM INTO ?1", [target])
        .with_context(|| format!("copying the database into {}", file.display()))?;
    drop(conn);
    // VACUUM INTO does not sync what it wrote: the copy is on disk once this returns.
    let copy = std::fs::File::open(file).context("opening the copy")?;
    copy.sync_all().context("syncing the copy to disk")?;
    Ok(copy.metadata()?.len())
}
