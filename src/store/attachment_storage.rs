//! Where attachment bytes live: files under `ATTACHMENT_DIR` (`attachment_files.rs`), or an
//! S3-compatible bucket when `ATTACHMENT_S3_BUCKET` is set (`attachment_objects.rs`). An enum
//! of the two, so that `domain::attachments` never knows which: each method does one job on
//! either, with the same promises (what a paused upload counts is durable; a finished
//! attachment appears whole or not at all).

use std::ops::Range;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt, stream::BoxStream};

use super::{
    Store,
    attachment_files::{AttachmentFiles, FileUpload},
    attachment_objects::{AttachmentObjects, ObjectUpload},
    attachments::{Attachment, Leftover},
};
use crate::config::Config;

/// An attachment's bytes as they are read, a chunk at a time.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

#[derive(Clone, Debug)]
pub enum AttachmentStorage {
    Files(AttachmentFiles),
    Objects(AttachmentObjects),
}

/// An upload open for one PATCH: `write` the body's chunks, then `pause` (more to come) or
/// `finish` (complete).
pub enum Upload {
    File(FileUpload),
    Object(ObjectUpload),
}

impl AttachmentStorage {
    /// The storage `config` names; `store` records an S3 upload's parts.
    pub fn new(config: &Config, store: Store) -> anyhow::Result<Self> {
        Ok(match &config.attachment_s3 {
            Some(s3) => Self::Objects(AttachmentObjects::new(s3, store)?),
            None => Self::Files(AttachmentFiles::new(&config.attachment_path)),
        })
    }

    /// Prepares for a new upload `id`: an empty partial file (S3 gets nothing before bytes).
    pub async fn create(&self, id: &str) -> anyhow::Result<()> {
        match self {
            Self::Files(files) => files.create(id).await,
            Self::Objects(_) => Ok(()),
        }
    }

    /// `upload`, to append to from where its row says it stands.
    pub async fn resume(&self, upload: &Attachment) -> anyhow::Result<Upload> {
        let received = u64::try_from(upload.received)?;
        Ok(match self {
            Self::Files(files) => Upload::File(files.resume(&upload.id, received).await?),
            Self::Objects(objects) => Upload::Object(objects.resume(upload).await?),
        })
    }

    /// `range` of the finished attachment `id` (all of it: `None`); `None` if it has no bytes.
    pub async fn read(
        &self,
        id: &str,
        range: Option<Range<u64>>,
    ) -> anyhow::Result<Option<ByteStream>> {
        Ok(match self {
            Self::Files(files) => files.read(id, range).await?.map(StreamExt::boxed),
            Self::Objects(objects) => (objects.read(id, range).await?)
                .map(|bytes| bytes.map_err(std::io::Error::from).boxed()),
        })
    }

    /// Removes whatever the deleted attachment `leftover` has stored.
    pub async fn remove(&self, leftover: &Leftover) -> anyhow::Result<()> {
        match self {
            Self::Files(files) => files.remove(&leftover.id).await,
            Self::Objects(objects) => objects.remove(leftover).await,
        }
    }
}

impl Upload {
    pub async fn write(&mut self, chunk: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::File(file) => file.write(chunk).await,
            Self::Object(object) => object.write(chunk).await,
        }
    }

    /// Makes every byte written durable, for the row to count them.
    pub async fn pause(self) -> anyhow::Result<()> {
        match self {
            Self::File(file) => file.pause().await,
            Self::Object(object) => object.pause().await,
        }
    }

    /// Makes the complete attachment durable and readable.
    pub async fn finish(self) -> anyhow::Result<()> {
        match self {
            Self::File(file) => file.finish().await,
            Self::Object(object) => object.finish().await,
        }
    }
}
