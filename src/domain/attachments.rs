//! Encrypted attachments, uploaded with tus 1.0 (`api/attachments.rs` speaks the protocol):
//! the rules of an upload (its owner, size, quota, offset and expiry) and the streaming of its
//! bytes to storage (`store::AttachmentStorage`: files or an S3 bucket, whichever is set up).
//! The bytes are the client's ciphertext: never parsed, never logged, and never held whole in
//! memory (each chunk the connection delivers is written before the next is read; S3 buffers
//! one part at most).

use std::{collections::HashSet, ops::Range, sync::Mutex, time::Duration};

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};

use crate::{
    AppState,
    error::{Error, Result},
    metrics,
    model::{UserId, now},
    store::{Attachment, ByteStream, Leftover, NewAttachment, Upload},
};

/// Longest `Upload-Metadata` kept (the client's opaque names and types of its files).
pub const MAX_METADATA_LEN: usize = 4096;
/// Longest a PATCH may wait for its next bytes. A PATCH of 100 MiB on a slow link takes far
/// longer than a REST request may (`api::REQUEST_TIMEOUT`), so uploads are exempt from that
/// limit and bounded by their silence instead: a stalled client frees the upload.
const IDLE: Duration = Duration::from_secs(30);
/// Random bytes of an id: 128 bits, as hex. The id is the capability to download.
const ID_BYTES: usize = 16;

/// One answer for unknown, expired, and someone else's unfinished upload: an id reveals
/// nothing to whoever may not use it.
const NOT_FOUND: Error = Error::NotFound("attachment");

/// An upload's state, as tus reports it.
#[derive(Debug)]
pub struct Progress {
    pub offset: u64,
    pub length: u64,
    pub expires_at: DateTime<Utc>,
    /// The client's `Upload-Metadata`, as it gave it.
    pub metadata: Option<String>,
}

impl From<&Attachment> for Progress {
    fn from(a: &Attachment) -> Self {
        Self {
            offset: u64::try_from(a.received).unwrap_or(0),
            length: u64::try_from(a.length).unwrap_or(0),
            expires_at: a.expires_at,
            metadata: a.metadata.clone(),
        }
    }
}

/// A new upload: its id and when it expires.
#[derive(Debug)]
pub struct Created {
    pub id: String,
    pub expires_at: DateTime<Utc>,
}

/// Uploads a request is writing or deleting on this node: one at a time per upload, or two
/// PATCHes at the same offset would interleave their bytes.
#[derive(Debug, Default)]
pub struct UploadsInFlight(Mutex<HashSet<String>>);

/// An upload claimed by one request, released (and uncounted) when dropped.
struct Claim<'a> {
    uploads: &'a UploadsInFlight,
    id: String,
}

impl UploadsInFlight {
    fn claim(&self, id: &str) -> Result<Claim<'_>> {
        let mut ids = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !ids.insert(id.to_owned()) {
            return Err(Error::Conflict {
                code: "upload_busy",
                message: "another request is writing this upload: retry once it ends",
            });
        }
        metrics::attachment_upload_in_flight(1.0);
        Ok(Claim {
            uploads: self,
            id: id.to_owned(),
        })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut ids = (self.uploads.0.lock()).unwrap_or_else(|e| e.into_inner());
        ids.remove(&self.id);
        metrics::attachment_upload_in_flight(-1.0);
    }
}

/// Whether `id` is shaped like the ids this server makes (so also a safe file name).
pub fn valid_id(id: &str) -> bool {
    id.len() == ID_BYTES * 2 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn new_id() -> String {
    let bytes: [u8; ID_BYTES] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts an upload of `length` bytes for `owner`: refused (nothing stored) above
/// `ATTACHMENT_MAX_BYTES` or when the owner's unexpired attachments would exceed
/// `ATTACHMENT_QUOTA_BYTES`.
pub async fn create(
    state: &AppState,
    owner: UserId,
    length: u64,
    metadata: Option<String>,
) -> Result<Created> {
    let config = &state.config;
    if length > config.attachment_max_bytes {
        return Err(Error::PayloadTooLarge);
    }
    if metadata
        .as_ref()
        .is_some_and(|m| m.len() > MAX_METADATA_LEN)
    {
        return Err(Error::invalid(format!(
            "Upload-Metadata must be at most {MAX_METADATA_LEN} bytes"
        )));
    }
    let created_at = now();
    let upload = NewAttachment {
        id: new_id(),
        owner,
        length: i64::try_from(length).map_err(|_| Error::PayloadTooLarge)?,
        metadata,
        created_at,
        expires_at: created_at + config.attachment_ttl,
    };
    if !(state.store.attachments())
        .create(&upload, config.attachment_quota_bytes)
        .await?
    {
        return Err(Error::QuotaExceeded(
            "your attachments use up your storage quota: retry once some expire or are deleted",
        ));
    }
    let storage = &state.attachment_storage;
    let made = async {
        storage.create(&upload.id).await?;
        if length == 0 {
            // Nothing to PATCH: complete at once.
            let row = state
                .store
                .attachments()
                .get(&upload.id, created_at)
                .await?;
            storage
                .resume(&row.context("the new attachment")?)
                .await?
                .finish()
                .await?;
        }
        anyhow::Ok(())
    };
    if let Err(e) = made.await {
        state.store.attachments().delete(&upload.id).await?;
        return Err(Error::Internal(e.context("creating an attachment")));
    }
    if length == 0 {
        (state.store.attachments())
            .record_progress(&upload.id, 0, Some(created_at))
            .await?;
    }
    Ok(Created {
        id: upload.id,
        expires_at: upload.expires_at,
    })
}

/// `user`'s upload `id` (only its owner may resume, inspect or abandon it).
async fn owned(state: &AppState, user: UserId, id: &str) -> Result<Attachment> {
    if !valid_id(id) {
        return Err(NOT_FOUND);
    }
    match state.store.attachments().get(id, now()).await? {
        Some(a) if a.owner_id == user => Ok(a),
        _ => Err(NOT_FOUND),
    }
}

/// Where `user`'s upload `id` stands (tus HEAD).
pub async fn progress(state: &AppState, user: UserId, id: &str) -> Result<Progress> {
    Ok(Progress::from(&owned(state, user, id).await?))
}

/// Appends `body` to `user`'s upload `id` at `offset`, which must be where it stands (409
/// otherwise). `declared` (the request's `Content-Length`), when beyond what the upload lacks,
/// refuses the request before a byte is read; a body that turns out longer is cut where the
/// upload is complete, the rest refused (413). What arrived before the client went away or
/// stalled is kept: the client resumes from there (tus HEAD).
pub async fn append<B, E>(
    state: &AppState,
    user: UserId,
    id: &str,
    offset: u64,
    declared: Option<u64>,
    body: impl Stream<Item = std::result::Result<B, E>>,
) -> Result<Progress>
where
    B: AsRef<[u8]>,
{
    owned(state, user, id).await?;
    // Read again once claimed: a PATCH that ended meanwhile moved the offset.
    let _claim = state.uploads.claim(id)?;
    let upload = owned(state, user, id).await?;
    let mut progress = Progress::from(&upload);
    if offset != progress.offset {
        return Err(Error::Conflict {
            code: "offset_mismatch",
            message: "Upload-Offset is not where the upload stands: ask with HEAD",
        });
    }
    let missing = progress.length - progress.offset;
    if declared.is_some_and(|d| d > missing) {
        return Err(Error::PayloadTooLarge);
    }
    if upload.completed_at.is_some() {
        // A repeated last PATCH whose answer was lost: nothing left to write.
        return Ok(progress);
    }
    let mut bytes = state.attachment_storage.resume(&upload).await?;
    let (written, stopped) = write_body(&mut bytes, body, missing).await;
    let written = written?;
    progress.offset += written;
    let completed = progress.offset == progress.length;
    if completed {
        bytes.finish().await?;
    } else {
        // What the database counts must be stored: a resumption after a crash starts there.
        bytes.pause().await?;
    }
    let received = i64::try_from(progress.offset).unwrap_or(i64::MAX);
    (state.store.attachments())
        .record_progress(id, received, completed.then(now))
        .await?;
    metrics::attachment_bytes_written(written);
    match stopped {
        None => Ok(progress),
        Some(why) => Err(why),
    }
}

/// Writes `body` to `upload` as it arrives, at most `room` bytes: how many it wrote, and why it
/// stopped early if it did.
async fn write_body<B, E>(
    upload: &mut Upload,
    body: impl Stream<Item = std::result::Result<B, E>>,
    room: u64,
) -> (anyhow::Result<u64>, Option<Error>)
where
    B: AsRef<[u8]>,
{
    let mut body = std::pin::pin!(body);
    let mut written = 0u64;
    let stopped = loop {
        let chunk = match tokio::time::timeout(IDLE, body.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => break None,
            Ok(Some(Err(_))) | Err(_) => {
                break Some(Error::Invalid {
                    code: "upload_interrupted",
                    message: "the upload stopped before its end: resume it from Upload-Offset"
                        .into(),
                });
            }
        };
        let chunk = chunk.as_ref();
        if written + chunk.len() as u64 > room {
            break Some(Error::PayloadTooLarge);
        }
        if let Err(e) = upload.write(chunk).await {
            return (Err(e), None);
        }
        written += chunk.len() as u64;
    };
    (Ok(written), stopped)
}

/// Abandons (or deletes) `user`'s upload `id`: its row and its bytes go.
pub async fn delete(state: &AppState, user: UserId, id: &str) -> Result<()> {
    owned(state, user, id).await?;
    let _claim = state.uploads.claim(id)?;
    let leftover = state.store.attachments().delete(id).await?;
    remove_bytes(state, leftover).await;
    Ok(())
}

/// The size of the finished attachment `id`, for any signed-in user who has the id.
pub async fn size(state: &AppState, id: &str) -> Result<u64> {
    if !valid_id(id) {
        return Err(NOT_FOUND);
    }
    match state.store.attachments().get(id, now()).await? {
        Some(a) if a.completed_at.is_some() => Ok(u64::try_from(a.length).unwrap_or(0)),
        _ => Err(NOT_FOUND),
    }
}

/// `range` of the finished attachment `id` (all of it: `None`), streamed from storage.
pub async fn read(state: &AppState, id: &str, range: Option<Range<u64>>) -> Result<ByteStream> {
    if !valid_id(id) {
        return Err(NOT_FOUND);
    }
    (state.attachment_storage.read(id, range).await?).ok_or(NOT_FOUND)
}

/// Deletes the attachments expired at `at`, finished or not, and their bytes; how many.
pub async fn sweep(state: &AppState, at: DateTime<Utc>) -> Result<u64> {
    let expired = state.store.attachments().delete_expired(at).await?;
    let count = expired.len() as u64;
    remove_bytes(state, expired).await;
    Ok(count)
}

/// Removes the bytes of attachments whose rows are gone. A failure is logged and the rest go
/// on: the row, the capability to read them, is gone already.
pub async fn remove_bytes(state: &AppState, leftovers: impl IntoIterator<Item = Leftover>) {
    for leftover in leftovers {
        match state.attachment_storage.remove(&leftover).await {
            Ok(()) => {
                metrics::attachment_bytes_deleted(u64::try_from(leftover.received).unwrap_or(0))
            }
            Err(e) => tracing::error!("{:#}", e.context("removing an attachment's bytes")),
        }
    }
}
