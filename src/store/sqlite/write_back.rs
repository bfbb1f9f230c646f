//! Syncing the database file after a checkpoint without starving the log.
//!
//! A checkpoint beside the writer copies the pages changed since the last one into the
//! database file (at 10,000 msg/s, hundreds to thousands of pages, scattered over the file), and
//! the file must then be synced before the writer may start the log over. One `fdatasync` of
//! all of them put hundreds of writes in the disk's queue at once: for its 5–8 ms, every group
//! commit's log fsync waited behind them (3–6 ms instead of 0.3), and the messages of those
//! moments were most of the p99. Written back a slice of the file at a time, with a pause as
//! long as the slice took after each one that had pages to write, the log's writes and flushes
//! pass between them; the final sync then only flushes what is left, and the writer still
//! starts the log over only once it has returned.

use std::fs::File;

/// Syncs `file` as `File::sync_data` does (on return, what was written to it is durable),
/// writing its dirty pages back a slice at a time first where the system allows it (Linux).
/// Blocks the calling thread for about twice as long as the disk takes to write them.
pub(crate) fn sync_gently(file: &File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    linux::write_back_in_slices(file)?;
    file.sync_data()
}

#[cfg(target_os = "linux")]
mod linux {
    use std::{
        fs::File,
        os::fd::AsRawFd,
        time::{Duration, Instant},
    };

    /// Bytes written back at a time (256 pages). Slices of a sixty-fourth of the file put
    /// every page appended since the last checkpoint (they are all at the end) into one or two
    /// slices of a large database: a thousand writes queued at once in a grown one, the log's
    /// behind them (docs/PERFORMANCE.md, issue 25, eighth round).
    const SLICE: u64 = 1 << 20;
    /// Slices at most: past 4 GiB they grow instead. A slice with nothing to write back costs a
    /// few microseconds: 4,096 of them are a few milliseconds of CPU a second.
    const MAX_SLICES: u64 = 4096;
    /// A slice written back faster than this had (almost) nothing to write: no pause after it.
    const CLEAN: Duration = Duration::from_micros(50);
    /// A slice that wrote pages back is followed by a pause as long as it took, but no longer
    /// than this: the log's writes and flushes have the disk about half of the time.
    const MAX_PAUSE: Duration = Duration::from_millis(2);

    /// Writes `file`'s dirty pages back, a slice of the file at a time, waiting for each.
    pub(super) fn write_back_in_slices(file: &File) -> std::io::Result<()> {
        let len = file.metadata()?.len();
        let slice = SLICE.max(len.div_ceil(MAX_SLICES).next_multiple_of(4096));
        let mut offset = 0;
        while offset < len {
            let started = Instant::now();
            write_back(file, offset, slice)?;
            offset += slice;
            let took = started.elapsed();
            if took > CLEAN {
                std::thread::sleep(took.min(MAX_PAUSE));
            }
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
