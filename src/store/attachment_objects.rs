//! Attachment bytes in an S3-compatible object store (`ATTACHMENT_S3_*`), for clusters whose
//! nodes share no disk. A finished attachment is the object `<id>`, built by S3's multipart
//! upload, whose parts must be 5 MiB at least (but the last) while tus PATCHes are any size:
//!
//! - bytes gather in a buffer of one part (`S3Settings::PART_BYTES`); a full buffer is stored as
//!   the next part, and the part's id and the new offset are recorded, before more is read;
//! - a PATCH that ends short of a part stores what gathered since the last part as the object
//!   `<id>.tail`, then `domain::attachments` records the offset; the next PATCH reads it back
//!   first. Between two parts the tail only grows, so a tail stored by a PATCH whose offset was
//!   never recorded (a crash in between) still begins with the recorded bytes: it is read only
//!   up to the offset, and a tail left from before the last part is not read at all;
//! - the last PATCH stores the rest as the last part and completes the upload (an upload that
//!   never filled a part is PUT whole instead), then deletes the tail (a tail it fails to delete
//!   is logged and left: the bucket's lifecycle rules are the backstop, README).
//!
//! The object `<id>` exists only once complete, so a download never sees half of it.

use std::{ops::Range, time::Duration};

use anyhow::{Context, ensure};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::{
    ClientOptions, GetOptions, GetRange, MultipartId, ObjectStore, ObjectStoreExt, RetryConfig,
    aws::{AmazonS3, AmazonS3Builder},
    client::{HttpClient, HttpConnector},
    multipart::{MultipartStore, PartId},
    path::Path,
};

use super::{
    Store,
    attachments::{Attachment, Leftover},
};
use crate::config::S3Settings;

const PART: usize = S3Settings::PART_BYTES;

/// The bucket of attachments, and the store that records their uploads' parts.
#[derive(Clone, Debug)]
pub struct AttachmentObjects {
    s3: AmazonS3,
    store: Store,
}

fn object(id: &str) -> Path {
    Path::from(id)
}

fn tail(id: &str) -> Path {
    Path::from(format!("{id}.tail"))
}

/// An S3 error as it may be logged: object_store's messages name the request's URL, and so the
/// attachment's id, a capability to read it; the id is replaced before anything sees it.
trait HidingId<T> {
    fn hiding(self, id: &str, doing: &'static str) -> anyhow::Result<T>;
}

impl<T> HidingId<T> for object_store::Result<T> {
    fn hiding(self, id: &str, doing: &'static str) -> anyhow::Result<T> {
        self.map_err(|e| {
            let message = format!("{:#}", anyhow::Error::new(e));
            anyhow::anyhow!(message.replace(id, "<attachment>")).context(doing)
        })
    }
}

/// Whether `result` failed for want of the thing it acted on (an object, an upload).
fn found<T>(result: object_store::Result<T>) -> object_store::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

impl AttachmentObjects {
    /// The client of the bucket `settings` name (nothing is asked of the store yet).
    pub fn new(settings: &S3Settings, store: Store) -> anyhow::Result<Self> {
        let allow_http = (settings.endpoint.as_deref()).is_some_and(|e| e.starts_with("http:"));
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.access_key_id)
            .with_secret_access_key(String::from_utf8_lossy(settings.secret_access_key.expose()))
            .with_virtual_hosted_style_request(false)
            .with_allow_http(allow_http)
            .with_http_connector(Connector { allow_http })
            // A PATCH or a download waits for these: a few quick retries, not object_store's
            // ten over three minutes.
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let s3 = builder.build().context("configuring the S3 client")?;
        Ok(Self { s3, store })
    }

    /// `upload` as it stands, to append to: its parts from the database, its tail read back.
    pub async fn resume(&self, upload: &Attachment) -> anyhow::Result<ObjectUpload> {
        let parts: Vec<PartId> = (self.store.attachments().parts(&upload.id).await?)
            .into_iter()
            .map(|content_id| PartId { content_id })
            .collect();
        let in_parts = parts.len() * PART;
        let tail_length = usize::try_from(upload.received)
            .ok()
            .and_then(|received| received.checked_sub(in_parts))
            .filter(|length| *length < PART)
            .context("an attachment's offset and its stored parts disagree")?;
        let mut buffer = Vec::new();
        if tail_length > 0 {
            let stored = self
                .s3
                .get_range(&tail(&upload.id), 0..tail_length as u64)
                .await
                .hiding(&upload.id, "reading an attachment's tail")?;
            ensure!(stored.len() == tail_length, "an attachment's tail is short");
            buffer.extend_from_slice(&stored);
        }
        Ok(ObjectUpload {
            objects: self.clone(),
            id: upload.id.clone(),
            multipart: upload.multipart_id.clone(),
            parts,
            buffer,
            tail_stored: tail_length,
        })
    }

    /// `range` of the finished object `id` (all of it: `None`), streamed as S3 sends it; `None`
    /// if there is no such object.
    pub async fn read(
        &self,
        id: &str,
        range: Option<Range<u64>>,
    ) -> anyhow::Result<Option<BoxStream<'static, object_store::Result<Bytes>>>> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let got = found(self.s3.get_opts(&object(id), options).await)
            .hiding(id, "reading an attachment")?;
        Ok(got.map(|got| got.into_stream()))
    }

    /// Removes what `leftover` left: its unfinished multipart upload (and the parts S3 keeps
    /// for it), its tail and its object, whichever exist.
    pub async fn remove(&self, leftover: &Leftover) -> anyhow::Result<()> {
        let id = &leftover.id;
        if let Some(multipart) = &leftover.multipart_id {
            found(self.s3.abort_multipart(&object(id), multipart).await)
                .hiding(id, "aborting an attachment's multipart upload")?;
        }
        for path in [tail(id), object(id)] {
            found(self.s3.delete(&path).await).hiding(id, "deleting an attachment object")?;
        }
        Ok(())
    }
}

/// An upload being appended to by one PATCH.
pub struct ObjectUpload {
    objects: AttachmentObjects,
    id: String,
    multipart: Option<MultipartId>,
    /// The parts stored, in order.
    parts: Vec<PartId>,
    /// The bytes after the parts: the tail read back, then this PATCH's. Never above one part.
    buffer: Vec<u8>,
    /// How many bytes of `buffer` the tail object holds already.
    tail_stored: usize,
}

impl ObjectUpload {
    pub async fn write(&mut self, mut chunk: &[u8]) -> anyhow::Result<()> {
        while !chunk.is_empty() {
            let (now, rest) = chunk.split_at(chunk.len().min(PART - self.buffer.len()));
            // One allocation a part, never more than a part. Its pages take memory as they
            // are written: a small upload costs its size, not 5 MiB.
            self.buffer.reserve_exact(PART - self.buffer.len());
            self.buffer.extend_from_slice(now);
            chunk = rest;
            if self.buffer.len() == PART {
                self.store_part().await?;
            }
        }
        Ok(())
    }

    /// Stores the full buffer as the next part and records it (the multipart upload begun and
    /// recorded first, for the upload's first part).
    async fn store_part(&mut self) -> anyhow::Result<()> {
        let s3 = &self.objects.s3;
        let attachments = self.objects.store.attachments();
        let path = object(&self.id);
        let multipart = match &self.multipart {
            Some(multipart) => multipart.clone(),
            None => {
                let multipart = (s3.create_multipart(&path).await)
                    .hiding(&self.id, "starting an attachment's multipart upload")?;
                attachments.record_multipart(&self.id, &multipart).await?;
                self.multipart.insert(multipart).clone()
            }
        };
        let index = self.parts.len();
        let bytes = std::mem::take(&mut self.buffer);
        let part = (s3.put_part(&path, &multipart, index, bytes.into()).await)
            .hiding(&self.id, "storing a part of an attachment")?;
        let received = i64::try_from((index + 1) * PART)?;
        (attachments.record_part(&self.id, i32::try_from(index)?, &part.content_id, received))
            .await?;
        self.parts.push(part);
        self.tail_stored = 0;
        Ok(())
    }

    /// Makes what was written durable: the bytes short of a part go to the tail object.
    pub async fn pause(self) -> anyhow::Result<()> {
        if self.buffer.len() > self.tail_stored {
            (self
                .objects
                .s3
                .put(&tail(&self.id), self.buffer.into())
                .await)
                .hiding(&self.id, "storing an attachment's tail")?;
        }
        Ok(())
    }

    /// Makes the object whole: the rest as the last part and the multipart upload completed,
    /// or, with no part stored, the object in one PUT; then the tail goes.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        let s3 = &self.objects.s3;
        let path = object(&self.id);
        match &self.multipart {
            None => {
                (s3.put(&path, self.buffer.into()).await)
                    .hiding(&self.id, "storing an attachment")?;
            }
            Some(multipart) => {
                if !self.buffer.is_empty() {
                    let last = std::mem::take(&mut self.buffer);
                    let part = (s3
                        .put_part(&path, multipart, self.parts.len(), last.into())
                        .await)
                        .hiding(&self.id, "storing the last part of an attachment")?;
                    self.parts.push(part);
                }
                (s3.complete_multipart(&path, multipart, self.parts).await)
                    .hiding(&self.id, "completing an attachment's multipart upload")?;
            }
        }
        // The object is whole now, whatever happens to the tail: a failure to delete it must
        // not fail the PATCH (the upload could not be completed again).
        let deleted = found(s3.delete(&tail(&self.id)).await);
        if let Err(e) = deleted.hiding(&self.id, "deleting a finished attachment's tail") {
            tracing::warn!("{e:#}");
        }
        Ok(())
    }
}

/// object_store's HTTP client, built on the server's TLS (`crate::tls`: ring, webpki roots)
/// rather than reqwest's default (the platform's CA store, which the runtime image lacks).
#[derive(Debug)]
struct Connector {
    allow_http: bool,
}

impl HttpConnector for Connector {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        let generic = |source: anyhow::Error| object_store::Error::Generic {
            store: "S3",
            source: source.into(),
        };
        let tls = crate::tls::client_config().map_err(generic)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(!self.allow_http)
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            // Between two reads, not for the whole request: a download streams for as long as
            // the client takes.
            .read_timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("kisse/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| generic(anyhow::Error::new(e).context("building the S3 HTTP client")))?;
        Ok(HttpClient::new(client))
    }
}
