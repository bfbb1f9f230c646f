//! Totals for operators (`GET /api/admin/stats`).

use super::{Stats, with_pool};
use crate::{error::Result, model::Totals};

impl Stats<'_> {
    /// The totals. Cost: each count reads its whole table (or an index of it) once; the
    /// pending messages scan `messages`, which has no index of undelivered rows (see migration
    /// 0009: one would cost every message two index writes). Meant for an operator now and
    /// then, not for a scraper.
    pub async fn totals(self) -> Result<Totals> {
        Ok(with_pool!(self.0, read, |pool| {
            sqlx::query_as::<_, Totals>(
                "SELECT
                    (SELECT count(*) FROM users) AS users,
                    (SELECT count(*) FROM users WHERE suspended_at IS NOT NULL) AS suspended_users,
                    (SELECT count(*) FROM user_devices) AS devices,
                    (SELECT count(*) FROM messages
                     WHERE delivered_at IS NULL AND withheld = FALSE) AS messages_pending,
                    (SELECT count(*) FROM envelopes) AS envelopes_pending,
                    (SELECT coalesce(sum(size_bytes), 0) FROM message_contents) AS content_bytes,
                    (SELECT coalesce(sum(length(content)), 0) FROM envelopes) AS envelope_bytes,
                    (SELECT CAST(coalesce(sum(received), 0) AS BIGINT) FROM attachments)
                        AS attachment_bytes",
            )
            .fetch_one(pool)
            .await
        })?)
    }
}
