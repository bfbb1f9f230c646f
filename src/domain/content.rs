//! The encrypted content mailbox. Blobs are opaque: decoded from base64 only to check their size
//! and hash, never parsed or logged.

use std::{sync::Arc, time::Duration};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use chrono::{DateTime, NaiveDateTime, Utc};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::{sync::Notify, time::Instant};

use crate::{
    AppState,
    error::{Error, Result},
    model::{MessageId, UserId, now},
    store::NewContent,
};

/// Between notifications, a waiting GET still re-reads the store this often (a blob stored by
/// another node rings no local bell).
const RECHECK_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ContentUpload {
    /// The ciphertext in base64 (standard or URL-safe alphabet, padded or not).
    #[schema(
        pattern = "^\\s*(([A-Za-z0-9+/]{4})*([A-Za-z0-9+/][AQgw](==)?|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=?)?|([A-Za-z0-9_-]{4})*([A-Za-z0-9_-][AQgw](==)?|[A-Za-z0-9_-]{2}[AEIMQUYcgkosw048]=?)?)\\s*$"
    )]
    pub content_data: String,
    /// SHA-256 of the decoded bytes, in hex; blank or null means none.
    pub content_hash: Option<String>,
    /// Accepted with or without a zone (the app sends local time without one); it can only
    /// shorten the default retention.
    pub expires_at: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ContentBody {
    pub message_id: MessageId,
    pub content_data: String,
    pub content_hash: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// GETs waiting for a message's content, woken when it is stored.
#[derive(Default)]
pub struct ContentWaiters(DashMap<MessageId, Arc<Notify>>);

impl ContentWaiters {
    fn bell(&self, message: MessageId) -> Arc<Notify> {
        self.0.entry(message).or_default().clone()
    }

    fn ring(&self, message: MessageId) {
        if let Some((_, bell)) = self.0.remove(&message) {
            bell.notify_waiters();
        }
    }

    /// Forgets the bell once nobody else holds it.
    fn release(&self, message: MessageId, bell: Arc<Notify>) {
        drop(bell);
        self.0.remove_if(&message, |_, b| Arc::strong_count(b) == 1);
    }
}

/// Stores the blob the sender uploads for message `id` (or, for an id the server does not
/// know, for the sender's oldest message still awaiting content). Refused, storing nothing,
/// once the message was read (409: nobody will fetch it) and beyond the sender's quota of
/// unread content (413, `CONTENT_QUOTA_BYTES`).
pub async fn store(
    state: &AppState,
    sender: UserId,
    id: MessageId,
    upload: ContentUpload,
) -> Result<MessageId> {
    let max = state.config.content_max_bytes;
    // Refuse before decoding: base64 needs 4 characters per 3 bytes.
    if upload.content_data.len() > max.div_ceil(3) * 4 + 4 {
        return Err(Error::PayloadTooLarge);
    }
    let bytes = decode_base64(&upload.content_data)?;
    if bytes.len() > max {
        return Err(Error::PayloadTooLarge);
    }
    let hash = match upload
        .content_hash
        .as_deref()
        .map(str::trim)
        .filter(|h| !h.is_empty())
    {
        None => None,
        Some(claimed) => {
            let actual = hex(&Sha256::digest(&bytes));
            if !claimed.eq_ignore_ascii_case(&actual) {
                return Err(Error::invalid("content_hash does not match the content"));
            }
            Some(actual)
        }
    };
    let created_at = now();
    let default_expiry = created_at + state.config.content_ttl;
    let expires_at = upload
        .expires_at
        .as_deref()
        .and_then(parse_client_time)
        .filter(|at| *at > created_at)
        .map_or(default_expiry, |at| at.min(default_expiry));
    let content = NewContent {
        bytes,
        hash,
        created_at,
        expires_at,
    };
    let quota = state.config.content_quota_bytes;
    let message = state
        .store
        .contents()
        .attach_content(sender, id, content, quota)
        .await?;
    state.content_waiters.ring(message);
    Ok(message)
}

/// The content of message `id` for one of its two participants, waiting a bounded time for a
/// blob the sender has not uploaded yet.
/// An id the caller is not a participant of gets 403 whether or not the message exists, so the
/// answer tells nothing about other people's messages. The recipient of a message withheld
/// from them (they block its sender) gets 404 at once: there is nothing for them.
pub async fn fetch(state: &AppState, user: UserId, id: MessageId) -> Result<ContentBody> {
    let not_yours = || Error::Forbidden("not a participant of this message");
    let message = state
        .store
        .contents()
        .message_named(id)
        .await?
        .ok_or_else(not_yours)?;
    if message.sender_id != user && message.recipient_id != user {
        return Err(not_yours());
    }
    if message.withheld && message.sender_id != user {
        return Err(Error::NotFound("content"));
    }
    let message_id = message.id;
    let deadline = Instant::now() + state.config.content_wait;
    let bell = state.content_waiters.bell(message_id);
    let result = loop {
        let notified = bell.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(stored) = state.store.contents().content(message_id, now()).await? {
            break Ok(ContentBody {
                message_id: id,
                content_data: STANDARD.encode(&stored.content),
                content_hash: stored.content_hash,
                created_at: stored.created_at,
                expires_at: stored.expires_at,
            });
        }
        // Already read (and so deleted), or waited long enough.
        if message.is_read || Instant::now() >= deadline {
            break Err(Error::NotFound("content"));
        }
        let wake = deadline.min(Instant::now() + RECHECK_INTERVAL);
        let _ = tokio::time::timeout_at(wake, notified).await;
    };
    state.content_waiters.release(message_id, bell);
    result
}

/// Standard base64, with or without padding (URL-safe alphabet accepted too).
fn decode_base64(data: &str) -> Result<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let data = data.trim();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(data).ok())
        .ok_or_else(|| Error::invalid("content_data is not valid base64"))
}

/// RFC 3339, or the app's zone-less local time (read as UTC).
fn parse_client_time(raw: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc())
        })
        .ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_times_parse_with_or_without_zone() {
        assert!(parse_client_time("2025-11-24T21:03:04.123456").is_some());
        assert!(parse_client_time("2025-11-24T21:03:04Z").is_some());
        assert!(parse_client_time("2025-11-24T21:03:04+02:00").is_some());
        assert!(parse_client_time("tomorrow").is_none());
    }

    #[test]
    fn base64_variants_decode_and_garbage_does_not() {
        assert_eq!(decode_base64("aGk=").ok(), Some(b"hi".to_vec()));
        assert_eq!(decode_base64("aGk").ok(), Some(b"hi".to_vec()));
        assert!(decode_base64("not base64!").is_err());
    }
}
