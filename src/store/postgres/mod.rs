//! What PostgreSQL does its own way: its pool, its group commit in one statement (`group`),
//! its content uploads (`content`), and the statements with no text in common with SQLite's.

pub(super) mod content;
pub(super) mod group;

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Longest a PostgreSQL query waits for a connection, connecting included. While the database
/// is unreachable every query waits this long before it fails, and a group commit's senders
/// hear nothing until then: with the former 10 s, two groups in a row kept a sender waiting
/// 20 s for an `error`. Busy, the pool hands a connection over within milliseconds.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Group commits that run at once on PostgreSQL: up to half the pool (reads, REST writes and
/// delivery marks keep the rest), and no more than the cores of a small database server.
pub(super) fn group_writers(pool_size: u32) -> usize {
    (pool_size / 2).clamp(1, 4) as usize
}

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

/// Connects to the database at `url`.
pub(super) async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url).context("parsing DATABASE_URL")?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")?;
    warn_if_autovacuum_is_off(&pool).await;
    Ok(pool)
}

/// `Security::dump_tables`: each row as `row_to_json` text.
pub(super) async fn dump_tables(pool: &PgPool) -> Result<Vec<(String, String)>, sqlx::Error> {
    let mut out = Vec::new();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await?;
    for table in tables {
        let sql = format!(
            "SELECT row_to_json(t)::text FROM \"{}\" t",
            table.replace('"', "\"\"")
        );
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await?;
        out.extend(rows.into_iter().map(|r| (table.clone(), r)));
    }
    Ok(out)
}
