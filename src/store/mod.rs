//! Storage: the only place with SQL. One `Store` interface, two engines behind it —
//! SQLite (the embedded default) and PostgreSQL. Most SQL text is shared (SQLite accepts
//! `$1` placeholders); `with_pool!` runs the same body against whichever engine is configured,
//! type-checked for each. What really differs per engine lives in `sqlite/` and `postgres/`:
//! connecting, the hot-path group commit (`group` holds the types both share) and the few
//! statements with no common text.

// Inside, files depend one way (scripts/check-layers): the types a group commit passes around
// (`group`, `upload`, `columns`, `faults`) and the engine's pools (`db`) import nothing of the
// store; the engines (`sqlite/`, `postgres/`) only those; then the group commit (`batch`), the
// envelope writer (`envelope_writer`) and the conversation cache; then this file (`Store`); the area files, on top, implement its
// accessors, beside the whole-database commands (`port`, `backup`).
mod attachment_files;
mod attachment_objects;
mod attachment_storage;
mod attachments;
mod backup;
mod batch;
mod blocks;
mod blocks_cache;
mod calls;
mod channels;
#[cfg(test)]
mod checkpoint_tests;
mod columns;
mod contents;
#[cfg(test)]
mod contract_tests;
mod conversation_cache;
mod conversations;
mod db;
mod devices;
mod envelope_writer;
mod envelopes;
mod faults;
pub use faults::is_about_rows;
mod group;
mod inbox;
mod keys;
mod messages;
mod port;
mod postgres;
mod push;
mod push_cache;
mod relations;
mod security;
mod sqlite;
mod stats;
mod stories;
mod upload;
mod users;

use std::{sync::atomic::Ordering, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

pub use attachment_storage::{AttachmentStorage, ByteStream, Upload};
pub use attachments::{Attachment, Leftover, NewAttachment};
pub use backup::backup_sqlite;
pub use calls::{CallRecord, CallRefused, NewCall};
pub use channels::{ChannelAccess, NewChannel, NewChannelMessage};
pub use contents::StoredContent;
pub use db::{Engine, PoolStats};
pub use devices::{DeviceRecord, Unlinked};
pub use envelope_writer::{
    AckTarget, AckedEnvelope, EnvelopeMessage, NewEnvelope, PendingAck, PendingEnvelopes, Stored,
};
pub use envelopes::{QueueState, QueuedEnvelope};
pub use group::{FirstDelivery, NewMessage};
pub use inbox::InboxEntry;
pub use keys::{Bundle, DeviceKeys, KeyRefresh, PreKey, SignedPreKey};
pub use messages::PendingMessage;
pub use port::port_to_postgres;
pub use relations::Closeness;
pub(crate) use relations::sees;
pub use security::{RetentionCutoffs, Rotation, Swept};
pub use stories::NewStory;
pub use upload::NewContent;
pub use users::{NewUser, StoredPresence, UserSearch};

use crate::{error::Result, model::UserId};
use db::{Db, with_pool};
use group::{ReadMark, Written};

/// The storage interface used by the domain. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    /// Conversations never change members, so they are remembered once read: typing
    /// indicators and messages check membership without a database round trip.
    conversations: std::sync::Arc<conversation_cache::ConversationCache>,
    /// Message inserts, committed in groups.
    batcher: batch::Batcher,
    /// Envelope stores and acks, committed in batches.
    envelopes: envelope_writer::EnvelopeWriter,
    /// Which devices of a user registered for pushes, remembered for a while: every durable
    /// event asks, and most users have none.
    push_devices: std::sync::Arc<push_cache::PushDevices>,
    /// Whom each user blocks, remembered: every message asks about its recipient, and most
    /// users block nobody.
    blocked: std::sync::Arc<blocks_cache::BlockedUsers>,
}

// The surface by concern: `store.users().create_user(..)`, `store.inbox().inbox_entries(..)`.
// Each accessor is a copied reference to the store; its methods live in the file of its area.
macro_rules! areas {
    ($($(#[$doc:meta])* $method:ident => $area:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Copy, Debug)]
            pub struct $area<'a>(&'a Store);
        )*
        impl Store {
            $(
                $(#[$doc])*
                pub fn $method(&self) -> $area<'_> {
                    $area(self)
                }
            )*
        }
    };
}

areas! {
    /// Accounts, search, presence and contacts (`users.rs`).
    users => Users,
    /// Sessions, passwords, account deletion, retention sweeps and audits (`security.rs`).
    security => Security,
    /// Call records (`calls.rs`).
    calls => Calls,
    /// Channels, their members and their posts (`channels.rs`).
    channels => Channels,
    /// The encrypted content mailbox (`contents.rs`).
    contents => Contents,
    /// One-to-one conversations and their summaries (`conversations.rs`).
    conversations => Conversations,
    /// Each device's queue of end-to-end-encrypted envelopes (`envelopes.rs`).
    envelopes => Envelopes,
    /// Each user's numbered inbox and its delivery marks (`inbox.rs`).
    inbox => Inbox,
    /// The device registry: names, last seen, unlinking (`devices.rs`).
    devices => Devices,
    /// Devices and their Signal keys (`keys.rs`).
    keys => Keys,
    /// Messages: the group commit, history pages, read marks (`messages.rs`).
    messages => Messages,
    /// Stories and their views (`stories.rs`).
    stories => Stories,
    /// Push registrations and the server's own keys (`push.rs`).
    push => Push,
    /// Who may see what a user shows their contacts, and the settings about it (`relations.rs`).
    relations => Relations,
    /// Who blocks whom (`blocks.rs`).
    blocks => Blocks,
    /// Totals for operators (`stats.rs`).
    stats => Stats,
    /// Attachment uploads: owners, progress, expiry (`attachments.rs`).
    attachments => Attachments,
}

impl Store {
    /// Connects to `url` (creating an SQLite file if needed) and applies pending migrations.
    /// `group_commit_wait`: SQLite's `GROUP_COMMIT_WAIT_MS` (see `batch::GATHER`).
    pub async fn connect(
        url: &str,
        max_connections: u32,
        group_commit_wait: Duration,
    ) -> anyhow::Result<Self> {
        let db = match Engine::of_url(url)? {
            Engine::Sqlite => Db::Sqlite(sqlite::connect(url, max_connections).await?),
            Engine::Postgres => Db::Postgres(postgres::connect(url, max_connections).await?),
        };
        let store = Self::new(db, group_commit_wait);
        store.migrate().await?;
        Ok(store)
    }

    /// Copies what the SQLite log holds into the database file, from a reading connection,
    /// without blocking the writer (PASSIVE), and syncs it; the writer then reuses the log from
    /// its start. Nothing to do on PostgreSQL.
    /// Each pass copies the log as it was when the pass began (`sqlite::checkpoint_pass`), so
    /// that SQLite syncs none of it under load: the first pass's pages are synced here gently
    /// (`sqlite::write_back`), a second pass copies and syncs at once what was committed
    /// meanwhile, and the writer copies, between two of its transactions, what came since
    /// (`sqlite::group::Writer::finish_checkpoint`), which lets the log start over: SQLite
    /// starts it over only once a checkpoint copied all of it, and left to the backstop the
    /// writer copied and synced thousands of frames at once.
    pub async fn checkpoint_wal(&self) -> Result<()> {
        let Db::Sqlite(pools) = &self.db else {
            return Ok(());
        };
        let first = sqlite::checkpoint_pass(pools).await?;
        if !first.grown {
            // Nothing committed since the last pass (a quiet server): nothing to sync.
            return Ok(());
        }
        sqlite::sync_database(pools, sqlite::write_back::sync_gently).await?;
        let second = sqlite::checkpoint_pass(pools).await?;
        if second.copied > first.copied {
            sqlite::sync_database(pools, std::fs::File::sync_data).await?;
        }
        pools.checkpoint_due.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Runs `checkpoint_wal` every `CHECKPOINT_EVERY` until `shutdown`.
    pub async fn checkpoint_periodically(self, shutdown: CancellationToken) {
        if !matches!(self.db, Db::Sqlite(_)) {
            return;
        }
        let mut every = tokio::time::interval(sqlite::CHECKPOINT_EVERY);
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

    fn new(db: Db, group_commit_wait: Duration) -> Self {
        let writers = match &db {
            Db::Sqlite(_) => 1,
            Db::Postgres(pool) => postgres::group_writers(pool.options().get_max_connections()),
        };
        Self {
            batcher: batch::Batcher::spawn(db.clone(), writers, group_commit_wait),
            envelopes: envelope_writer::EnvelopeWriter::spawn(db.clone(), writers),
            db,
            conversations: Default::default(),
            push_devices: Default::default(),
            blocked: Default::default(),
        }
    }

    /// Inserts `messages`, marks `reads` read and records the delivery marks `events` in one
    /// transaction.
    async fn write_group(
        &self,
        messages: &[NewMessage],
        reads: &[ReadMark],
        events: &[(UserId, i64)],
        at: DateTime<Utc>,
    ) -> Result<Written> {
        batch::write_group(&self.db, messages, reads, events, at).await
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
            Db::Sqlite(pools) => migrator(Engine::Sqlite).run(&pools.write).await,
            Db::Postgres(pg) => migrator(Engine::Postgres).run(pg).await,
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
                pools.pin.close().await;
                pools.read.close().await;
                pools.write.close().await;
            }
            Db::Postgres(pg) => pg.close().await,
        }
    }
}

/// The migrations of `engine` (`migrations/<engine>/`), embedded in the binary.
fn migrator(engine: Engine) -> &'static sqlx::migrate::Migrator {
    static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
    static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
    match engine {
        Engine::Sqlite => &SQLITE,
        Engine::Postgres => &POSTGRES,
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
