//! The group commit's fsync, on a thread of its own, behind the writer.
//!
//! With `synchronous=FULL` every COMMIT waits for an fsync of the log, and the writer, which
//! runs the next group's statements, waits with it: at 10,000 msg/s a group's fsync was about
//! three quarters of its time. The group loop instead commits with `synchronous=NORMAL` (the
//! log is written, not synced) and hands the group's answers here. This thread syncs the log
//! once for every group committed meanwhile, then answers them: nothing is acknowledged before
//! the fsync that makes it durable ("acknowledged = on disk" holds as with FULL), while the
//! writer already runs the next group. SQLite syncs the log itself before any checkpoint copies
//! it into the database, so a synced log is all a commit needs.
//!
//! What NORMAL changes: another connection can read a group between its COMMIT and its fsync
//! (a catch-up, a history page). A power cut (not a crash: the log is in the OS's cache then)
//! within that millisecond could lose a message a reader saw, whose sender was never
//! acknowledged, as with a message whose connection dropped before its ack.

use std::{
    fs::File,
    io,
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::{Arc, mpsc},
    time::Instant,
};

/// What a group does once the log holding it is synced (or the sync failed).
pub(crate) type Answer = Box<dyn FnOnce(Result<(), Arc<io::Error>>) + Send>;

/// The syncing thread's queue. Cloning shares the thread.
#[derive(Clone, Debug)]
pub(crate) struct WalSync(mpsc::Sender<Answer>);

impl WalSync {
    /// Starts the thread that syncs the log of the SQLite database `database` (its file).
    pub(crate) fn start(database: PathBuf) -> io::Result<Self> {
        let (queue, groups) = mpsc::channel();
        let log = Log::new(database);
        std::thread::Builder::new()
            .name("sqlite-log-sync".into())
            .spawn(move || run(log, groups))?;
        Ok(Self(queue))
    }

    /// Runs `answer` once what was committed before this call is on disk.
    pub(crate) fn after_sync(&self, answer: Answer) {
        if let Err(mpsc::SendError(answer)) = self.0.send(answer) {
            // The thread is gone (it only stops when every sender is dropped): say so rather
            // than acknowledge what may not be on disk.
            answer(Err(Arc::new(io::Error::other(
                "the log sync thread stopped",
            ))));
        }
    }
}

fn run(mut log: Log, groups: mpsc::Receiver<Answer>) {
    while let Ok(first) = groups.recv() {
        // Every group committed before this sync starts is covered by it.
        let mut answers = vec![first];
        answers.extend(groups.try_iter());
        let started = Instant::now();
        let synced = log.sync().map_err(Arc::new);
        crate::metrics::log_sync(answers.len(), started.elapsed());
        if let Err(e) = &synced {
            tracing::error!(groups = answers.len(), "syncing the SQLite log failed: {e}");
        }
        for answer in answers {
            answer(synced.clone());
        }
    }
}

/// The log file (`<database>-wal`), kept open between syncs.
struct Log {
    database: PathBuf,
    path: PathBuf,
    open: Option<(File, u64)>,
}

impl Log {
    fn new(database: PathBuf) -> Self {
        let mut path = database.clone().into_os_string();
        path.push("-wal");
        Self {
            database,
            path: path.into(),
            open: None,
        }
    }

    /// Syncs the log as it is on disk now. SQLite truncates and rewrites the log in place, but
    /// deletes it when its last connection closes (after copying it into the database, synced)
    /// and a new one starts a new file: a file that changed is opened again, and without a log
    /// the database file is synced instead.
    fn sync(&mut self) -> io::Result<()> {
        let inode = match std::fs::metadata(&self.path) {
            Ok(metadata) => metadata.ino(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.open = None;
                return File::open(&self.database)?.sync_data();
            }
            Err(e) => return Err(e),
        };
        if !matches!(&self.open, Some((_, open)) if *open == inode) {
            self.open = Some((File::open(&self.path)?, inode));
        }
        match &self.open {
            Some((file, _)) => file.sync_data(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::Mutex, time::Duration};

    use super::*;

    fn temp_database() -> PathBuf {
        std::env::temp_dir().join(format!("kisse-wal-sync-{}.db", uuid::Uuid::new_v4()))
    }

    fn remove(database: &Path) {
        for suffix in ["", "-wal"] {
            let mut path = database.as_os_str().to_owned();
            path.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(path));
        }
    }

    /// Queues `n` answers and returns what each was told, in the order they ran.
    fn answers(sync: &WalSync, n: usize) -> Vec<(usize, bool)> {
        let told = Arc::new(Mutex::new(Vec::new()));
        let (done, finished) = mpsc::channel();
        for i in 0..n {
            let (told, done) = (told.clone(), done.clone());
            sync.after_sync(Box::new(move |synced| {
                told.lock().expect("lock").push((i, synced.is_ok()));
                let _ = done.send(());
            }));
        }
        for _ in 0..n {
            finished
                .recv_timeout(Duration::from_secs(10))
                .expect("every answer runs");
        }
        std::mem::take(&mut *told.lock().expect("lock"))
    }

    #[test]
    fn groups_are_answered_in_order_once_the_log_is_synced() {
        let database = temp_database();
        std::fs::write(&database, b"db").expect("database file");
        let mut log = database.as_os_str().to_owned();
        log.push("-wal");
        std::fs::write(PathBuf::from(log), b"log").expect("log file");
        let sync = WalSync::start(database.clone()).expect("thread");
        let told = answers(&sync, 50);
        assert_eq!(told, (0..50).map(|i| (i, true)).collect::<Vec<_>>());
        remove(&database);
    }

    #[test]
    fn nothing_is_acknowledged_when_the_sync_fails() {
        // Neither the log nor the database can be opened: the sync fails.
        let database = std::env::temp_dir()
            .join(format!("kisse-missing-{}", uuid::Uuid::new_v4()))
            .join("kisse.db");
        let sync = WalSync::start(database).expect("thread");
        let told = answers(&sync, 3);
        assert_eq!(told, vec![(0, false), (1, false), (2, false)]);
    }

    #[test]
    fn a_log_replaced_or_removed_is_still_synced() {
        let database = temp_database();
        std::fs::write(&database, b"db").expect("database file");
        let mut log = Log::new(database.clone());
        std::fs::write(&log.path, b"first").expect("log file");
        log.sync().expect("sync");
        let first = std::fs::metadata(&log.path).expect("log").ino();
        assert_eq!(log.open.as_ref().map(|(_, inode)| *inode), Some(first));

        // The last connection closed: the log went into the database, which is synced.
        std::fs::remove_file(&log.path).expect("remove log");
        log.sync().expect("sync without a log");
        assert!(log.open.is_none());

        // A new connection made a new log: that file is synced, not the old one.
        std::fs::write(&log.path, b"second").expect("new log");
        let second = std::fs::metadata(&log.path).expect("log").ino();
        log.sync().expect("sync");
        assert_eq!(log.open.as_ref().map(|(_, inode)| *inode), Some(second));
        remove(&database);
    }
}
