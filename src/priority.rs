//! Background threads below the runtime's workers: work that must not take turns with routing.
//! On Linux a thread's scheduling policy and nice value are its own, and a thread cannot raise
//! them back unprivileged: lower only threads that keep doing background work.

/// The nice value where a lower policy is not used or not allowed: the lowest, which gets under
/// 2 % of a core when routing wants it too, and any CPU routing leaves.
const LOWEST_NICENESS: i32 = 19;

/// How far below routing a background thread runs.
#[derive(Clone, Copy, Debug)]
pub enum Background {
    /// Only on a core nothing else wants (`SCHED_IDLE`; nice 19 where it is refused), and a
    /// waking socket task takes the core back at once: for work that may wait as long as
    /// routing keeps every core busy (password hashes).
    Idle,
    /// Nice 19: a small share of a core even when routing keeps every core busy, for work that
    /// must keep up with it (the copy of SQLite's log into the database, which at saturation
    /// would otherwise leave the log to grow to the writer's backstop).
    Lowest,
}

/// Lowers the calling thread to `level`, where the system allows it; it runs as it is otherwise.
pub fn lower_this_thread(level: Background) {
    #[cfg(target_os = "linux")]
    if matches!(level, Background::Idle) {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a plain system call on the calling thread (pid 0), with a valid parameter.
        #[allow(unsafe_code)]
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0 {
            return;
        }
    }
    // Linux's nice() sets the calling thread's value, not the process's.
    if let Err(error) = rustix::process::nice(LOWEST_NICENESS) {
        tracing::warn!(%error, ?level, "could not lower the priority of a background thread");
    }
}
