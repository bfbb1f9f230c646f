//! `kisse-backend port-db`: copies an SQLite database into a new PostgreSQL one, keeping every
//! id (Synapse's `synapse_port_db` is the model).
//!
//! Schema-driven, so that a future migration's table or column is copied without a change
//! here, or refused loudly: the tables come from the SQLite schema, each value is converted to
//! its PostgreSQL column's type (read from `information_schema`), and a table or column found
//! on one side only stops the port before anything is written. Tables are copied parents
//! first (PostgreSQL's foreign keys cannot be deferred), in batches, in one transaction: a
//! port that fails leaves the target migrated and empty, ready for another try.
//!
//! The source is read through rusqlite, whose values say how SQLite stored them (integer,
//! text, blob), inside one read transaction: one consistent snapshot. It is never written.

mod values;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use rusqlite::types::ValueRef;
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

use crate::store::{Engine, migrator, sqlite};
use values::{Cell, Kind};

/// Rows per INSERT, at most (PostgreSQL also caps a statement at 65,535 parameters).
const BATCH_ROWS: usize = 500;
const MAX_PARAMETERS: usize = 65_535;
/// Bytes of values per INSERT, at most: a batch of content blobs stays a few MiB in memory.
const BATCH_BYTES: usize = 8 << 20;
/// A progress line per table at least this often (and one when it is done).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Copies the SQLite database at `source_url` into the PostgreSQL database at `target_url`,
/// which must hold none of our rows and be at no other migration than this binary's: it is
/// migrated first. `progress` is told what happens, a line at a time.
pub async fn port_to_postgres(
    source_url: &str,
    target_url: &str,
    mut progress: impl FnMut(String),
) -> anyhow::Result<()> {
    if Engine::of_url(source_url)? != Engine::Sqlite {
        bail!(
            "port-db copies from SQLite, and DATABASE_URL is a PostgreSQL database \
             (to copy a PostgreSQL database, use pg_dump and pg_restore)"
        );
    }
    if Engine::of_url(target_url).ok() != Some(Engine::Postgres) {
        bail!("--to must be a PostgreSQL URL (postgres://...)");
    }
    let source = Source::open(source_url)?;
    source.check_migrations()?;
    let tables = source.tables()?;

    let options = PgConnectOptions::from_str(target_url).context("parsing the --to URL")?;
    let mut target = PgConnection::connect_with(&options)
        .await
        .context("connecting to the target PostgreSQL database")?;
    check_target_is_new(&mut target).await?;
    migrator(Engine::Postgres)
        .run(&mut target)
        .await
        .context("applying the PostgreSQL migrations to the target")?;
    progress(format!(
        "target migrated to version {}",
        latest_version(Engine::Postgres)
    ));
    let plan = plan(&mut target, &tables).await?;

    let mut tx = sqlx::Connection::begin(&mut target).await?;
    for table in &plan {
        copy_table(&source, &mut tx, table, &mut progress).await?;
    }
    restart_sequences(&mut tx, &plan, &source).await?;
    tx.commit().await.context("committing the copy")?;
    progress(format!(
        "done: {} tables, {} rows",
        plan.len(),
        plan.iter().map(|t| t.source.rows).sum::<u64>()
    ));
    Ok(())
}

/// The newest migration this binary has for `engine`.
fn latest_version(engine: Engine) -> i64 {
    migrator(engine)
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

/// The rows of the migrations table (version, checksum, success) of a database at exactly
/// this binary's migrations for `engine`.
fn applied_when_current(engine: Engine) -> Vec<(i64, Vec<u8>, bool)> {
    migrator(engine)
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m.checksum.to_vec(), true))
        .collect()
}

/// `name` as an SQL identifier, quoted (both engines).
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQLite database, open in one read transaction.
struct Source {
    conn: rusqlite::Connection,
    /// `sqlite_sequence`: the last number each AUTOINCREMENT table gave, even if its row is
    /// gone since (PostgreSQL must not hand it out again).
    sequences: HashMap<String, i64>,
}

/// A table of the source: its columns in order, its row count, and its INTEGER PRIMARY KEY
/// (an alias of the rowid, numbered by `sqlite_sequence` when AUTOINCREMENT).
struct SourceTable {
    name: String,
    columns: Vec<String>,
    rows: u64,
    integer_key: Option<String>,
}

impl Source {
    fn open(url: &str) -> anyhow::Result<Self> {
        let conn = sqlite::open_existing(url)?;
        // This connection never writes: the source stays the operator's copy as it was.
        conn.pragma_update(None, "query_only", true)?;
        // Every read below sees the same snapshot, even if a server writes meanwhile.
        conn.execute_batch("BEGIN")?;
        let mut source = Self {
            conn,
            sequences: HashMap::new(),
        };
        if source.has_table("sqlite_sequence")? {
            let mut stmt = source
                .conn
                .prepare("SELECT name, seq FROM sqlite_sequence")?;
            source.sequences = stmt
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
        }
        Ok(source)
    }

    fn has_table(&self, name: &str) -> rusqlite::Result<bool> {
        self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
            [name],
            |row| row.get(0),
        )
    }

    /// Refuses a source that is not at exactly this binary's migrations. It is not migrated
    /// here: the port never writes to the source, which stays the operator's copy until the
    /// port has succeeded (`kisse-backend migrate` does it, with the same binary).
    fn check_migrations(&self) -> anyhow::Result<()> {
        let table = &migrator(Engine::Sqlite).table_name;
        if !self.has_table(table)? {
            bail!(
                "the SQLite database has no migrations applied: it is empty or not a \
                 kisse-backend database"
            );
        }
        let mut stmt = self.conn.prepare(&format!(
            "SELECT version, checksum, success FROM {} ORDER BY version",
            quote(table)
        ))?;
        let applied: Vec<(i64, Vec<u8>, bool)> = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let ours = applied_when_current(Engine::Sqlite);
        if applied == ours {
            return Ok(());
        }
        let theirs = applied.last().map_or(0, |m| m.0);
        let latest = latest_version(Engine::Sqlite);
        if applied.len() < ours.len() && ours.starts_with(&applied) {
            bail!(
                "the SQLite database is at migration {theirs} and this binary at {latest}: \
                 run `kisse-backend migrate` with this binary first"
            );
        }
        bail!(
            "the SQLite database's migrations (up to {theirs}) differ from this binary's (up to \
             {latest}): port it with the kisse-backend version that last ran on it"
        )
    }

    /// Every table of ours, with its columns and row count.
    fn tables(&self) -> anyhow::Result<Vec<SourceTable>> {
        let migrations = &migrator(Engine::Sqlite).table_name;
        let mut stmt = self.conn.prepare(
            "SELECT name FROM sqlite_master
             WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> ?1
             ORDER BY name",
        )?;
        let names: Vec<String> = stmt
            .query_map([migrations.as_ref()], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        let mut tables = Vec::new();
        for name in names {
            // (name, declared type, position in the primary key)
            let mut info = self
                .conn
                .prepare("SELECT name, type, pk FROM pragma_table_info(?1)")?;
            let columns: Vec<(String, String, i64)> = info
                .query_map([&name], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let keys: Vec<_> = columns.iter().filter(|c| c.2 > 0).collect();
            let integer_key = match keys.as_slice() {
                [key] if key.1.eq_ignore_ascii_case("INTEGER") => Some(key.0.clone()),
                _ => None,
            };
            let rows: i64 = self.conn.query_row(
                &format!("SELECT count(*) FROM {}", quote(&name)),
                [],
                |row| row.get(0),
            )?;
            tables.push(SourceTable {
                name,
                columns: columns.into_iter().map(|c| c.0).collect(),
                rows: u64::try_from(rows).unwrap_or(0),
                integer_key,
            });
        }
        Ok(tables)
    }
}

/// Refuses a target that holds a row in any table, or whose migrations are not this binary's
/// (none at all is fine: it is migrated next).
async fn check_target_is_new(target: &mut PgConnection) -> anyhow::Result<()> {
    let migrations = migrator(Engine::Postgres).table_name.to_string();
    let tables = target_tables(target).await?;
    if tables.contains(&migrations) {
        let applied: Vec<(i64, Vec<u8>, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT version, checksum, success FROM {} ORDER BY version",
            quote(&migrations)
        )))
        .fetch_all(&mut *target)
        .await?;
        let ours = applied_when_current(Engine::Postgres);
        if !applied.is_empty() && applied != ours {
            bail!(
                "the target database is at migration {} and this binary at {}: port into a new \
                 database",
                applied.last().map_or(0, |m| m.0),
                latest_version(Engine::Postgres)
            );
        }
    }
    let mut filled = Vec::new();
    for table in tables.iter().filter(|t| **t != migrations) {
        let any: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM {})",
            quote(table)
        )))
        .fetch_one(&mut *target)
        .await?;
        if any {
            filled.push(table.as_str());
        }
    }
    if !filled.is_empty() {
        bail!(
            "the target database is not empty ({} hold rows): port-db copies only into a new, \
             empty database; nothing was changed",
            filled.join(", ")
        );
    }
    Ok(())
}

/// The tables of the target's current schema.
async fn target_tables(target: &mut PgConnection) -> anyhow::Result<BTreeSet<String>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut *target)
    .await
    .context("reading the target's tables")?;
    Ok(names.into_iter().collect())
}

/// A table to copy: the source's, with the kind of each of its columns in the target.
struct TablePlan<'a> {
    source: &'a SourceTable,
    kinds: Vec<Kind>,
}

/// Matches the source's tables and columns with the target's (every one on both sides, or an
/// error naming the differences) and orders them parents first.
async fn plan<'a>(
    target: &mut PgConnection,
    tables: &'a [SourceTable],
) -> anyhow::Result<Vec<TablePlan<'a>>> {
    let migrations = migrator(Engine::Postgres).table_name.to_string();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, udt_name::text
         FROM information_schema.columns c
         WHERE table_schema = current_schema()
           AND EXISTS (SELECT 1 FROM information_schema.tables t
                       WHERE t.table_schema = c.table_schema AND t.table_name = c.table_name
                         AND t.table_type = 'BASE TABLE')",
    )
    .fetch_all(&mut *target)
    .await
    .context("reading the target's columns")?;
    let mut columns: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
    for (table, column, udt) in rows.into_iter().filter(|r| r.0 != migrations) {
        columns.entry(table).or_default().insert(column, udt);
    }

    let mut faults = Vec::new();
    let mut plans = HashMap::new();
    for table in tables {
        let Some(target_columns) = columns.get(&table.name) else {
            faults.push(format!(
                "table {} has no counterpart in PostgreSQL",
                table.name
            ));
            continue;
        };
        let mut kinds = Vec::new();
        for column in &table.columns {
            match target_columns.get(column) {
                None => faults.push(format!(
                    "column {}.{column} is missing in PostgreSQL",
                    table.name
                )),
                Some(udt) => match Kind::of(udt) {
                    Some(kind) => kinds.push(kind),
                    None => faults.push(format!(
                        "column {}.{column} has the PostgreSQL type {udt}, which port-db cannot \
                         convert to",
                        table.name
                    )),
                },
            }
        }
        for column in target_columns.keys() {
            if !table.columns.contains(column) {
                faults.push(format!(
                    "column {}.{column} is missing in SQLite",
                    table.name
                ));
            }
        }
        plans.insert(
            table.name.as_str(),
            TablePlan {
                source: table,
                kinds,
            },
        );
    }
    for table in columns.keys() {
        if !tables.iter().any(|t| &t.name == table) {
            faults.push(format!("table {table} has no counterpart in SQLite"));
        }
    }
    if !faults.is_empty() {
        bail!(
            "the two schemas differ, nothing was copied:\n  {}",
            faults.join("\n  ")
        );
    }

    let references: Vec<(String, String)> = sqlx::query_as(
        "SELECT child.relname::text, parent.relname::text
         FROM pg_constraint c
         JOIN pg_class child ON child.oid = c.conrelid
         JOIN pg_class parent ON parent.oid = c.confrelid
         WHERE c.contype = 'f'
           AND c.connamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())",
    )
    .fetch_all(&mut *target)
    .await
    .context("reading the target's foreign keys")?;
    let order = parents_first(plans.keys().copied().collect(), &references)?;
    Ok(order
        .into_iter()
        .filter_map(|name| plans.remove(name))
        .collect())
}

/// `tables` ordered so that each comes after the tables it references (`(child, parent)`
/// pairs), by name among equals so that the order is the same every time.
fn parents_first<'a>(
    tables: BTreeSet<&'a str>,
    references: &[(String, String)],
) -> anyhow::Result<Vec<&'a str>> {
    let mut waiting: BTreeMap<&str, BTreeSet<&str>> = tables
        .iter()
        .map(|table| {
            let parents = references
                .iter()
                .filter(|(child, parent)| child == table && parent != table)
                .filter_map(|(_, parent)| tables.get(parent.as_str()).copied())
                .collect();
            (*table, parents)
        })
        .collect();
    let mut order = Vec::new();
    while !waiting.is_empty() {
        let ready: Vec<&str> = waiting
            .iter()
            .filter(|(_, parents)| parents.is_empty())
            .map(|(table, _)| *table)
            .collect();
        if ready.is_empty() {
            bail!(
                "the foreign keys between {} form a cycle: no order to copy them in",
                waiting.keys().copied().collect::<Vec<_>>().join(", ")
            );
        }
        for table in ready {
            waiting.remove(table);
            for parents in waiting.values_mut() {
                parents.remove(table);
            }
            order.push(table);
        }
    }
    Ok(order)
}

/// Copies one table in batches, then checks that the target holds as many rows.
async fn copy_table(
    source: &Source,
    target: &mut PgConnection,
    table: &TablePlan<'_>,
    progress: &mut impl FnMut(String),
) -> anyhow::Result<()> {
    let name = &table.source.name;
    let columns = &table.source.columns;
    let list = columns
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ");
    let max_rows = BATCH_ROWS.min(MAX_PARAMETERS / columns.len().max(1));
    let mut stmt = source
        .conn
        .prepare(&format!("SELECT {list} FROM {}", quote(name)))?;
    let mut rows = stmt.query([])?;
    let (total, mut done) = (table.source.rows, 0u64);
    let mut last_line = Instant::now();
    loop {
        let mut batch: Vec<Cell> = Vec::new();
        let (mut count, mut bytes) = (0usize, 0usize);
        while count < max_rows && bytes < BATCH_BYTES {
            let Some(row) = rows.next()? else { break };
            for (i, kind) in table.kinds.iter().enumerate() {
                let value = row.get_ref(i)?;
                bytes += match value {
                    ValueRef::Text(b) | ValueRef::Blob(b) => b.len(),
                    _ => 8,
                };
                let cell = kind.convert(value).map_err(|why| {
                    anyhow::anyhow!(
                        "{name}.{}, row {}: {why}",
                        columns[i],
                        done + count as u64 + 1
                    )
                })?;
                batch.push(cell);
            }
            count += 1;
        }
        if count == 0 {
            break;
        }
        insert(target, name, &list, columns.len(), count, batch).await?;
        done += count as u64;
        if last_line.elapsed() >= PROGRESS_EVERY && done < total {
            progress(format!("{name}: {done}/{total}"));
            last_line = Instant::now();
        }
    }
    let copied: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}",
        quote(name)
    )))
    .fetch_one(&mut *target)
    .await?;
    if u64::try_from(copied).ok() != Some(total) {
        bail!("{name}: {copied} rows in PostgreSQL after the copy, {total} in SQLite");
    }
    progress(format!("{name}: {done}/{total}"));
    Ok(())
}

/// One multi-row INSERT of `rows` rows of `width` cells. Ids are kept: OVERRIDING SYSTEM VALUE
/// writes the source's numbers into identity columns.
async fn insert(
    target: &mut PgConnection,
    table: &str,
    list: &str,
    width: usize,
    rows: usize,
    cells: Vec<Cell>,
) -> anyhow::Result<()> {
    let values = (0..rows)
        .map(|r| {
            let row = (1..=width)
                .map(|c| format!("${}", r * width + c))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({row})")
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO {} ({list}) OVERRIDING SYSTEM VALUE VALUES {values}",
        quote(table)
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for cell in cells {
        query = cell.bind(query);
    }
    query
        .execute(&mut *target)
        .await
        .with_context(|| format!("inserting into {table}"))?;
    Ok(())
}

/// Moves each identity (or serial) column's sequence past the largest number the source
/// gave: past its rows' numbers, and past `sqlite_sequence`'s (a number whose row was deleted
/// is not given again). Without it, the first new message after the port would collide.
async fn restart_sequences(
    target: &mut PgConnection,
    plan: &[TablePlan<'_>],
    source: &Source,
) -> anyhow::Result<()> {
    let serial: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema()
           AND pg_get_serial_sequence(quote_ident(table_name), column_name) IS NOT NULL",
    )
    .fetch_all(&mut *target)
    .await
    .context("reading the target's sequences")?;
    for (table, column) in serial {
        let given = plan
            .iter()
            .find(|t| t.source.name == table && t.source.integer_key.as_ref() == Some(&column))
            .and_then(|_| source.sequences.get(&table).copied())
            .unwrap_or(0);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence($1, $2),
                           GREATEST((SELECT max({col}) FROM {tab}), $3, 0) + 1, false)",
            col = quote(&column),
            tab = quote(&table),
        )))
        .bind(quote(&table))
        .bind(&column)
        .bind(given)
        .execute(&mut *target)
        .await
        .with_context(|| format!("restarting the sequence of {table}.{column}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_come_after_the_tables_they_reference() {
        let references = [
            ("messages".to_owned(), "conversations".to_owned()),
            ("conversations".to_owned(), "users".to_owned()),
            ("inbox".to_owned(), "messages".to_owned()),
            ("users".to_owned(), "users".to_owned()), // itself: no constraint on the order
        ];
        let order = parents_first(
            ["inbox", "messages", "users", "conversations", "blocks"].into(),
            &references,
        )
        .expect("an order");
        assert_eq!(
            order,
            ["blocks", "users", "conversations", "messages", "inbox"]
        );

        let cycle = [
            ("a".to_owned(), "b".to_owned()),
            ("b".to_owned(), "a".to_owned()),
        ];
        assert!(parents_first(["a", "b"].into(), &cycle).is_err());
    }
}
