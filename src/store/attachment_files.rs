//! Attachment bytes on the local filesystem: `<dir>/<id>.part` while an upload runs, renamed to
//! `<dir>/<id>` once complete and synced, so that a download never sees half a file (a rename
//! within a directory is atomic). Ids are checked by the caller (`domain::attachments`): hex
//! only, so a name never leaves the directory.

use std::{
    io::{ErrorKind, SeekFrom},
    path::PathBuf,
};

use anyhow::Context;
use tokio::{
    fs::{self, File, OpenOptions},
    io::AsyncSeekExt,
};

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
    pub async fn resume(&self, id: &str, offset: u64) -> anyhow::Result<File> {
        let mut file = OpenOptions::new()
            .write(true)
            .open(self.part(id))
            .await
            .context("opening an attachment file")?;
        file.set_len(offset).await?;
        file.seek(SeekFrom::Start(offset)).await?;
        Ok(file)
    }

    /// Makes the partial file of `id`, written through `file`, durable and complete: synced,
    /// then renamed to its final name, the directory synced so that the rename survives a crash.
    pub async fn finish(&self, id: &str, file: File) -> anyhow::Result<()> {
        file.sync_all().await.context("syncing an attachment")?;
        drop(file);
        fs::rename(self.part(id), self.done(id))
            .await
            .context("renaming a finished attachment")?;
        File::open(&self.dir)
            .await?
            .sync_all()
            .await
            .context("syncing the attachment directory")?;
        Ok(())
    }

    /// The finished file of `id` and its size; `None` if there is none.
    pub async fn open(&self, id: &str) -> anyhow::Result<Option<(File, u64)>> {
        match File::open(self.done(id)).await {
            Ok(file) => {
                let size = file.metadata().await?.len();
                Ok(Some((file, size)))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("opening an attachment"),
        }
    }

    /// Removes both names of `id` (either may exist); the bytes freed.
    pub async fn remove(&self, id: &str) -> anyhow::Result<u64> {
        let mut freed = 0;
        for path in [self.part(id), self.done(id)] {
            let size = fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(&path).await {
                Ok(()) => freed += size,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("removing an attachment file"),
            }
        }
        Ok(freed)
    }
}
