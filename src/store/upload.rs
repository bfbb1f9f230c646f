//! A content upload, and the statements and rules it runs with, one text for both engines: SQLite
//! writes an upload in a group commit (`sqlite::group`), PostgreSQL in a transaction of its own
//! (`postgres::content`).

use chrono::{DateTime, Utc};

use crate::{
    error::Error,
    model::{MessageId, UserId},
};

/// Ciphertext to keep for a message.
pub struct NewContent {
    pub bytes: Vec<u8>,
    pub hash: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One answer for "someone else's message" and "no message of yours awaits this content": a
/// caller learns nothing about ids that are not theirs.
pub(super) const NOT_YOURS: &str = "no message of yours awaits this content";

/// A sender's upload of a message's content (see `Contents::attach_content`).
pub(super) struct ContentUpload {
    pub sender: UserId,
    /// The message id, an alias made earlier, or the app's own id for a new alias.
    pub requested: MessageId,
    pub content: NewContent,
    /// The sender's storage quota, in bytes (`CONTENT_QUOTA_BYTES`).
    pub quota: u64,
}

impl ContentUpload {
    /// Bytes of content it carries (see `batch::MAX_GROUP_UPLOAD_BYTES`).
    pub fn size(&self) -> usize {
        self.content.bytes.len()
    }
}

/// How far back an app-generated id may claim a content-less message.
pub(super) const ALIAS_WINDOW_SECONDS: i64 = 60;

/// Why an upload stored nothing, once its message is known (the claim of a message by an app id
/// stays: the app's next upload must not take this one's message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    NotYours,
    /// The recipient read the message already: its content would never be fetched, and would
    /// occupy the mailbox until it expires.
    AlreadyRead,
    /// The sender's unread content would exceed their quota.
    OverQuota,
}

impl From<Refused> for Error {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::NotYours => Error::Forbidden(NOT_YOURS),
            Refused::AlreadyRead => Error::Conflict {
                code: "already_read",
                message: "the message was read already: its content is no longer accepted",
            },
            Refused::OverQuota => Error::QuotaExceeded(
                "your unread content uses up your storage quota: \
                 retry once recipients have read some",
            ),
        }
    }
}

/// Whether storing `adding` bytes for one message, over `used` bytes of the sender's other
/// unread content, stays within `quota`.
pub(super) fn within_quota(used: i64, adding: usize, quota: u64) -> bool {
    u64::try_from(used)
        .unwrap_or(0)
        .saturating_add(adding as u64)
        <= quota
}

/// The sender's unread, unexpired content other than message `$2`'s, in bytes (`$3`: now).
pub(super) const CONTENT_USED: &str = "SELECT COALESCE(SUM(size_bytes), 0) FROM message_contents
     WHERE sender_id = $1 AND message_id <> $2 AND expires_at > $3";

// The statements of an upload, the same text on both engines (but `MARK_CONTENT_RECEIVED` and
// `CLAIM_MESSAGE`, which SQLite's group runs as a lookup and an update: see
// `sqlite::group::note_content_received`). Their parameters are numbered in order of first
// appearance: SQLite numbers a `$n` parameter that way (rusqlite binds by position),
// PostgreSQL by `n`.

/// The message `$1` names, directly or through an alias: `(id, sender_id)`.
pub(super) const KNOWN_MESSAGE: &str = "SELECT m.id, m.sender_id FROM messages m WHERE m.id = $1
     UNION ALL
     SELECT m.id, m.sender_id FROM message_aliases a JOIN messages m ON m.id = a.message_id
     WHERE a.alias_id = $1";

/// Notes when message `$2`'s content first came (`$1`); returns whether it is read.
pub(super) const MARK_CONTENT_RECEIVED: &str =
    "UPDATE messages SET content_received_at = COALESCE(content_received_at, $1)
     WHERE id = $2 RETURNING id, is_read";

/// Claims for content that came at `$1` the oldest content-less message that sender `$2` sent
/// since `$3`; returns its `(id, is_read)`. Re-checking the condition outside the subquery
/// makes a lost race (PostgreSQL) claim nothing instead of stealing.
pub(super) const CLAIM_MESSAGE: &str = "UPDATE messages SET content_received_at = $1
     WHERE id = (SELECT id FROM messages
                 WHERE sender_id = $2 AND content_received_at IS NULL AND created_at >= $3
                 ORDER BY seq LIMIT 1)
       AND content_received_at IS NULL
     RETURNING id, is_read";

/// Names message `$2` by the app's id `$1`.
pub(super) const ADD_ALIAS: &str =
    "INSERT INTO message_aliases (alias_id, message_id) VALUES ($1, $2)";

/// Stores (or replaces) message `$1`'s content.
pub(super) const STORE_CONTENT: &str = "INSERT INTO message_contents (message_id, content,
         content_hash, created_at, expires_at, sender_id, size_bytes)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (message_id) DO UPDATE SET content = excluded.content,
         content_hash = excluded.content_hash, created_at = excluded.created_at,
         expires_at = excluded.expires_at, size_bytes = excluded.size_bytes";
