//! Syncing the database file after a checkpoint without starving the log.
//!
//! A checkpoint beside the writer copies the pages changed since the last one into the
//! database file (at 10,000 msg/s, hundreds to thousands of pages, scattered over the file), and
//! the file must then be synced before the writer may start the log over. One `fdatasync` of
//! all of them put hundreds of writes in the disk's queue at once: for its 5–8 ms, every group
//! commit's log fsync waited behind them (3–6 ms instead of 0.3), and the messages of those
//! moments were most of the p99. Written back a slice of the file at a time, with a pause
//! between slices, the log's writes and flushes pass between them; the final sync then only
//! flushes what is left, and the writer still starts the log over only once it has returned.

use std::fs::File;

/// Syncs `file` as `File::sync_data` does (on return, what was written to it is durable),
/// writing its dirty pages back a slice at a time first where the system allows it (Linux).
/// Blocks the calling thread for tens of milliseconds.
pub(crate) fn sync_gently(file: &File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    linux::write_back_in_slices(file)?;
    file.sync_data()
}

#[cfg(target_os = "linux")]
mod linux {
    use std::{fs::File, os::fd::AsRawFd, time::Duration};

    /// Slices the file is written back in.
    const SLICES: u64 = 64;
    /// Pause after each slice: the write-back spreads over at least 64 × 0.5 = 32 ms of the
    /// checkpoint's 250, and each pause leaves the disk to the group commits.
    const PAUSE: Duration = Duration::from_micros(500);

    /// Writes `file`'s dirty pages back, a slice of the file at a time, waiting for each.
    pub(super) fn write_back_in_slices(file: &File) -> std::io::Result<()> {
        let len = file.metadata()?.len();
        let slice = len.div_ceil(SLICES).next_multiple_of(4096).max(4096);
        let mut offset = 0;
        while offset < len {
            write_back(file, offset, slice)?;
            offset += slice;
            std::thread::sleep(PAUSE);
        }
        Ok(())
    }

    /// Writes back the dirty pages in `len` bytes of `file` from `offset` and waits for them:
    /// `sync_file_range` with WAIT_BEFORE, WRITE and WAIT_AFTER. It flushes no disk cache and
    /// makes nothing durable by itself: that is the final `fdatasync`'s.
    #[allow(unsafe_code)]
    fn write_back(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let (offset, len) = (offset as libc::off64_t, len as libc::off64_t);
        // SAFETY: a syscall on a descriptor that `file` owns and keeps open for the call; it
        // reads and writes no memory of ours.
        let done = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
        if done == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}
