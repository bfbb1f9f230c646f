//! Attachment bytes on the local filesystem: `<dir>/<id>.part` while an upload runs, renamed to
//! `<dir>/<id>` once complete and synced, so that a download never sees half a file (a rename
//! within a directory is atomic). Ids are checked by the caller (`domain::attachments`): hex
//! only, so a name never leaves the directory.

use std::{
    io::{ErrorKind, SeekFrom},
    ops::Range,
    path::PathBuf,
};

use anyhow::Context;
use tokio::{
    fs::{self, File, OpenOptions},
    io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, Take},
};
use tokio_util::io::ReaderStream;

/// The directory of attachment files (`ATTACHMENT_DIR`).
#[derive(Clone, Debug)]
pub struct AttachmentFiles {
    dir: PathBuf,
}

impl AttachmentFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn part(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.part"))
    }

    fn done(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Creates the empty partial file of a new upload (and the directory, on first use: a
    /// server that never receives an attachment writes nothing there).
    pub async fn create(&self, id: &str) -> anyhow::Result<()> {
        fs::create_dir_all(&self.dir)
            .await
            .with_context(|| format!("creating {}", self.dir.display()))?;
        File::create(self.part(id))
            .await
            .context("creating an attachment file")?;
        Ok(())
    }

    /// The partial file of `id`, positioned at `offset` and cut there: bytes past the recorded
    /// offset (an interrupted write the database never counted) are dropped.
    pub async fn resume(&self, id: &str, offset: u64) -> anyhow::Result<FileUpload> {
        let mut file = OpenOptions::new()
            .write(true)
            .open(self.part(id))
            .await
            .context("opening an attachment file")?;
        file.set_len(offset).await?;
        file.seek(SeekFrom::Start(offset)).await?;
        Ok(FileUpload {
            files: self.clone(),
            id: id.to_owned(),
            file,
        })
    }

    /// `range` of the finished file of `id` (all of it: `None`), read as it is sent; `None` if
    /// there is no such file.
    pub async fn read(
        &self,
        id: &str,
        range: Option<Range<u64>>,
    ) -> anyhow::Result<Option<ReaderStream<Take<File>>>> {
        let mut file = match File::open(self.done(id)).await {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("opening an attachment"),
        };
        let range = range.unwrap_or(0..u64::MAX);
        file.seek(SeekFrom::Start(range.start))
            .await
            .context("reading an attachment")?;
        Ok(Some(ReaderStream::new(file.take(range.end - range.start))))
    }

    /// Removes both names of `id` (either may exist).
    pub async fn remove(&self, id: &str) -> anyhow::Result<()> {
        for path in [self.part(id), self.done(id)] {
            match fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("removing an attachment file"),
            }
        }
        Ok(())
    }
}

/// An upload's partial file, open for one PATCH.
pub struct FileUpload {
    files: AttachmentFiles,
    id: String,
    file: File,
}

impl FileUpload {
    pub async fn write(&mut self, chunk: &[u8]) -> anyhow::Result<()> {
        self.file
            .write_all(chunk)
            .await
            .context("writing an attachment")
    }

    /// Makes what was written durable: what the database counts must be on disk, since a
    /// resumption after a crash starts there.
    pub async fn pause(mut self) -> anyhow::Result<()> {
        self.file.flush().await.context("writing an attachment")?;
        self.file.sync_data().await.context("syncing an attachment")
    }

    /// Makes the partial file durable and complete: synced, then renamed to its final name, the
    /// directory synced so that the rename survives a crash.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.file.flush().await.context("writing an attachment")?;
        self.file
            .sync_all()
            .await
            .context("syncing an attachment")?;
        drop(self.file);
        let files = &self.files;
        fs::rename(files.part(&self.id), files.done(&self.id))
            .await
            .context("renaming a finished attachment")?;
        File::open(&files.dir)
            .await?
            .sync_all()
            .await
            .context("syncing the attachment directory")?;
        Ok(())
    }
}
