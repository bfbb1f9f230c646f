//! The writer's SQLite VFS: the unix one, but for the log (`-wal` file), whose writes are
//! gathered in memory and go to the file in a few large `pwrite`s (`CHUNK`) when SQLite syncs
//! it.
//!
//! SQLite writes each page of a commit to the log with two `pwrite`s (a 24-byte frame header,
//! then the page), so a group commit of ~60 pages made ~120 syscalls, each touching one or two
//! page-cache folios: 14 % of the server's CPU at 10,000 msg/s. The same bytes written at once
//! cost about a third of the CPU (a C loop of 58 frames: 137 → 36 µs per commit without the
//! fsync, 295 → 115 µs with it). What reaches the disk, and when, does not change: every byte
//! is in the file before the `fsync` that makes a commit durable, and the commit is visible to
//! other connections only after it (SQLite updates the log's index after the sync).
//!
//! That last point holds only with `synchronous=FULL` (with NORMAL SQLite would publish a commit
//! without syncing, hence without flushing here), which is why only the writer pool opens the
//! database through this VFS (`sqlite::connect`), always with FULL. Readers use the plain unix VFS;
//! both share the unix VFS's locks and shared memory, since every file but the log is opened
//! by it, unchanged.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name to open the writer with (`SqliteConnectOptions::vfs`), once `register` returned Ok.
pub(super) const NAME: &str = "kisse-coalescing";
const C_NAME: &CStr = c"kisse-coalescing";

/// Bytes gathered at most before they are written anyway (a group of thousands of messages).
const MAX_GATHERED: usize = 4 << 20;
/// Bytes per write: the unix VFS writes less than 128 KiB per call (it masks the length with
/// 0x1ffff, and answers SQLITE_FULL to a longer write); chunks end at multiples of this in the
/// file.
const CHUNK: usize = 64 << 10;

/// Registers the VFS (once per process); fails if SQLite has no unix VFS.
pub(super) fn register() -> Result<(), &'static str> {
    static REGISTERED: OnceLock<Result<(), &'static str>> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        // SAFETY: SQLite's VFS list is only read here; the unix VFS is static in SQLite and
        // lives as long as the process. Our copy is leaked, so it does too, as SQLite requires
        // of a registered VFS.
        #[allow(unsafe_code)]
        unsafe {
            let unix = ffi::sqlite3_vfs_find(c"unix".as_ptr());
            if unix.is_null() {
                return Err("SQLite has no unix VFS");
            }
            // The unix VFS's own functions get our VFS as their argument: a copy of theirs
            // (same `pAppData`, `mxPathname`), so they find what they expect. Only `xOpen`
            // and the file size differ.
            let mut ours = *unix;
            ours.zName = C_NAME.as_ptr();
            ours.pNext = ptr::null_mut();
            ours.szOsFile = c_int::try_from(std::mem::size_of::<LogFile>())
                .map_err(|_| "VFS file too large")?
                + (*unix).szOsFile;
            ours.xOpen = Some(open);
            UNIX.set(Unix(unix)).map_err(|_| "VFS registered twice")?;
            let ours = Box::into_raw(Box::new(ours));
            match ffi::sqlite3_vfs_register(ours, 0) {
                ffi::SQLITE_OK => Ok(()),
                _ => Err("SQLite refused the VFS"),
            }
        }
    })
}

/// The unix VFS, which opens every file.
struct Unix(*mut ffi::sqlite3_vfs);
// SAFETY: a pointer to SQLite's static, immutable unix VFS.
#[allow(unsafe_code)]
unsafe impl Send for Unix {}
#[allow(unsafe_code)]
unsafe impl Sync for Unix {}
static UNIX: OnceLock<Unix> = OnceLock::new();

/// A log file: our methods, the bytes gathered, then the unix VFS's file, in the memory
/// SQLite allocates (`szOsFile`).
#[repr(C)]
struct LogFile {
    base: ffi::sqlite3_file,
    /// Bytes not yet written, which go at `at` in the file.
    gathered: Vec<u8>,
    at: i64,
}

#[allow(unsafe_code)]
mod methods {
    use super::*;

    fn unix() -> *mut ffi::sqlite3_vfs {
        UNIX.get().map_or(ptr::null_mut(), |unix| unix.0)
    }

    /// SAFETY (for every function below): SQLite calls them with a file it opened through
    /// `open` with our methods, which is a `LogFile` followed by the unix file, and never from
    /// two threads at once for one file.
    unsafe fn inner(file: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
        unsafe { file.cast::<u8>().add(std::mem::size_of::<LogFile>()).cast() }
    }

    unsafe fn log<'a>(file: *mut ffi::sqlite3_file) -> &'a mut LogFile {
        unsafe { &mut *file.cast::<LogFile>() }
    }

    unsafe fn io(file: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
        unsafe { &*(*inner(file)).pMethods }
    }

    /// Writes what was gathered; afterwards nothing is.
    unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
        unsafe {
            let log = log(file);
            if log.gathered.is_empty() {
                return ffi::SQLITE_OK;
            }
            let Some(write) = io(file).xWrite else {
                return ffi::SQLITE_IOERR_WRITE;
            };
            let mut rc = ffi::SQLITE_OK;
            let (mut at, mut rest) = (log.at, &log.gathered[..]);
            while rc == ffi::SQLITE_OK && !rest.is_empty() {
                // Up to the next multiple of `CHUNK` in the file.
                let room = CHUNK - usize::try_from(at).unwrap_or(0) % CHUNK;
                let (chunk, after) = rest.split_at(room.min(rest.len()));
                // A chunk is at most 64 KiB: it fits in a c_int.
                rc = write(inner(file), chunk.as_ptr().cast(), chunk.len() as c_int, at);
                (at, rest) = (at + chunk.len() as i64, after);
            }
            log.gathered.clear();
            if log.gathered.capacity() > MAX_GATHERED {
                log.gathered = Vec::new();
            }
            rc
        }
    }

    pub(super) unsafe extern "C" fn open(
        _ours: *mut ffi::sqlite3_vfs,
        name: *const c_char,
        file: *mut ffi::sqlite3_file,
        flags: c_int,
        out_flags: *mut c_int,
    ) -> c_int {
        unsafe {
            let unix = unix();
            let Some(unix_open) = (!unix.is_null()).then(|| (*unix).xOpen).flatten() else {
                return ffi::SQLITE_CANTOPEN;
            };
            if flags & ffi::SQLITE_OPEN_WAL == 0 {
                // Any other file is the unix VFS's own, in the (larger) memory given.
                return unix_open(unix, name, file, flags, out_flags);
            }
            let rc = unix_open(unix, name, inner(file), flags, out_flags);
            if rc != ffi::SQLITE_OK {
                (*file).pMethods = ptr::null();
                return rc;
            }
            ptr::write(
                file.cast::<LogFile>(),
                LogFile {
                    base: ffi::sqlite3_file { pMethods: &METHODS },
                    gathered: Vec::new(),
                    at: 0,
                },
            );
            ffi::SQLITE_OK
        }
    }

    unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
        unsafe {
            let flushed = flush(file);
            ptr::drop_in_place(&mut log(file).gathered);
            let closed = io(file).xClose.map_or(ffi::SQLITE_OK, |f| f(inner(file)));
            if flushed != ffi::SQLITE_OK {
                flushed
            } else {
                closed
            }
        }
    }

    unsafe extern "C" fn write(
        file: *mut ffi::sqlite3_file,
        data: *const c_void,
        amount: c_int,
        offset: i64,
    ) -> c_int {
        unsafe {
            let Ok(len) = usize::try_from(amount) else {
                return ffi::SQLITE_IOERR_WRITE;
            };
            let log = log(file);
            let next = log.at + log.gathered.len() as i64;
            if !log.gathered.is_empty() && (offset != next || log.gathered.len() >= MAX_GATHERED) {
                let rc = flush(file);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
            }
            let log = self::log(file);
            if log.gathered.is_empty() {
                log.at = offset;
            }
            log.gathered
                .extend_from_slice(std::slice::from_raw_parts(data.cast::<u8>(), len));
            ffi::SQLITE_OK
        }
    }

    /// Flushes, then passes the call on: reads, syncs, truncations and sizes see every byte
    /// written before them.
    macro_rules! flushing {
        ($name:ident, $method:ident, ($($arg:ident: $ty:ty),*)) => {
            unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
                unsafe {
                    let rc = flush(file);
                    if rc != ffi::SQLITE_OK {
                        return rc;
                    }
                    match io(file).$method {
                        Some(f) => f(inner(file), $($arg),*),
                        None => ffi::SQLITE_MISUSE,
                    }
                }
            }
        };
    }
    flushing!(read, xRead, (data: *mut c_void, amount: c_int, offset: i64));
    flushing!(truncate, xTruncate, (size: i64));
    flushing!(sync, xSync, (flags: c_int));
    flushing!(file_size, xFileSize, (size: *mut i64));
    flushing!(file_control, xFileControl, (op: c_int, arg: *mut c_void));
    flushing!(lock, xLock, (level: c_int));
    flushing!(unlock, xUnlock, (level: c_int));
    flushing!(check_reserved_lock, xCheckReservedLock, (out: *mut c_int));

    unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
        unsafe { io(file).xSectorSize.map_or(4096, |f| f(inner(file))) }
    }

    unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
        unsafe {
            io(file)
                .xDeviceCharacteristics
                .map_or(0, |f| f(inner(file)))
        }
    }

    /// Version 1: a log file has no shared memory or memory map of its own.
    pub(super) static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
        iVersion: 1,
        xClose: Some(close),
        xRead: Some(read),
        xWrite: Some(write),
        xTruncate: Some(truncate),
        xSync: Some(sync),
        xFileSize: Some(file_size),
        xLock: Some(lock),
        xUnlock: Some(unlock),
        xCheckReservedLock: Some(check_reserved_lock),
        xFileControl: Some(file_control),
        xSectorSize: Some(sector_size),
        xDeviceCharacteristics: Some(device_characteristics),
        xShmMap: None,
        xShmLock: None,
        xShmBarrier: None,
        xShmUnmap: None,
        xFetch: None,
        xUnfetch: None,
    };
}

use methods::open;

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, OpenFlags, params};

    /// A database file of its own in the temporary directory, removed (with its log) on drop.
    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut path = self.0.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn writer(path: &std::path::Path) -> Connection {
        super::register().expect("register the VFS");
        let db = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), super::NAME)
            .expect("open through the VFS");
        db.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB NOT NULL);",
        )
        .expect("set up");
        db
    }

    /// Commits far larger than one write of the unix VFS (under 128 KiB), a transaction that
    /// spills pages to the log before its commit and one rolled back after spilling: a reader
    /// through the unix VFS sees exactly the committed rows, and the file is sound.
    #[test]
    fn what_is_committed_is_in_the_log_for_the_other_connections() {
        let scratch = Scratch(
            std::env::temp_dir().join(format!("kisse-vfs-{}.db", uuid::Uuid::new_v4().simple())),
        );
        let mut db = writer(&scratch.0);
        let body = |i: i64| vec![u8::try_from(i % 251).unwrap_or(0); 3000 + (i as usize % 5000)];

        // Two commits of ~4 MiB each.
        for round in 0..2 {
            let tx = db.transaction().expect("begin");
            for i in round * 1000..(round + 1) * 1000 {
                tx.execute(
                    "INSERT INTO t (id, body) VALUES (?1, ?2)",
                    params![i, body(i)],
                )
                .expect("insert");
            }
            tx.commit().expect("commit");
        }
        // A cache of 20 pages: the transaction spills dirty pages to the log, reads them back
        // and rewrites some.
        db.execute_batch("PRAGMA cache_size = 20")
            .expect("small cache");
        let tx = db.transaction().expect("begin");
        for i in 0..500 {
            tx.execute(
                "UPDATE t SET body = ?2 WHERE id = ?1",
                params![i, body(i + 7)],
            )
            .expect("update");
        }
        tx.commit().expect("commit");
        let tx = db.transaction().expect("begin");
        for i in 2000..2600 {
            tx.execute(
                "INSERT INTO t (id, body) VALUES (?1, ?2)",
                params![i, body(i)],
            )
            .expect("insert");
        }
        tx.rollback().expect("rollback");

        let reader = Connection::open(&scratch.0).expect("open through the unix VFS");
        let (count, sum): (i64, i64) = reader
            .query_row("SELECT count(*), sum(length(body)) FROM t", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .expect("read");
        let expected: i64 = (0..2000)
            .map(|i| body(if i < 500 { i + 7 } else { i }).len() as i64)
            .sum();
        assert_eq!((count, sum), (2000, expected));
        let updated: Vec<u8> = reader
            .query_row("SELECT body FROM t WHERE id = 3", [], |row| row.get(0))
            .expect("read one");
        assert_eq!(updated, body(10));
        let check: String = reader
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .expect("check");
        assert_eq!(check, "ok");
    }
}
