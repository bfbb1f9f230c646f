//! Password hashing with Argon2id (OWASP parameters: m = 19 MiB, t = 2, p = 1).
//!
//! Hashes run on a few dedicated threads at the idle scheduling policy: a storm of logins then
//! uses the CPU time that routing leaves, instead of taking turns with it, and the 19 MiB a hash
//! needs stays in those threads' allocator arenas instead of one arena per blocking-pool thread.

use std::sync::{Arc, Mutex, TryLockError, mpsc};

use anyhow::{Context, anyhow};
use argon2::{
    Argon2,
    password_hash::{PasswordHasher as _, PasswordVerifier as _},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::{
    memory,
    priority::{self, Background},
};

type Job = Box<dyn FnOnce() + Send>;

#[derive(Clone)]
pub struct PasswordHasher {
    /// One permit per hashing thread, so waiting happens in async code, not in the job queue.
    permits: Arc<Semaphore>,
    /// Dropped with the last clone, which ends the threads.
    jobs: mpsc::Sender<(Job, OwnedSemaphorePermit)>,
    /// Verified against when the email is unknown, so both failures cost the same time.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub fn new(threads: usize) -> anyhow::Result<Self> {
        let dummy_hash = hash_now("not a real password").context("computing the dummy hash")?;
        let (jobs, queue) = mpsc::channel::<(Job, OwnedSemaphorePermit)>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("kisse-hash-{index}"))
                .spawn(move || run_hashing_thread(&queue))
                .context("starting a hashing thread")?;
        }
        Ok(Self {
            permits: Arc::new(Semaphore::new(threads.max(1))),
            jobs,
            dummy_hash: dummy_hash.into(),
        })
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`) for `password`.
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        self.blocking(move || hash_now(&password)).await?
    }

    /// Whether `password` matches `stored`; with no stored hash, spends the same effort and
    /// answers `false`.
    pub async fn verify(&self, password: String, stored: Option<String>) -> anyhow::Result<bool> {
        Ok(self.check(password, stored).await? == Check::Matches)
    }

    /// Like `verify`, and also says when a matching `stored` hash is a legacy bcrypt hash (from
    /// the original deployment) or Argon2 with other parameters, to be replaced by a new hash.
    pub async fn check(&self, password: String, stored: Option<String>) -> anyhow::Result<Check> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let check = self.blocking(move || check_now(&password, &stored)).await?;
        Ok(if known { check } else { Check::Mismatch })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .context("hasher closed")?;
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        self.jobs
            .send((job, permit))
            .map_err(|_| anyhow!("hashing threads stopped"))?;
        result.await.context("hashing job failed")
    }
}

fn run_hashing_thread(queue: &Mutex<mpsc::Receiver<(Job, OwnedSemaphorePermit)>>) {
    // SCHED_IDLE: at nice 19 a hash still took turns with routing; in a storm of 50 logins a
    // second at 2,000 msg/s, routing's p99 rose 1.3–1.8× instead of 1.8–2.2× (alternated runs).
    priority::lower_this_thread(Background::Idle);
    let mut hashed_since_given_back = false;
    loop {
        // Not `lock`: the lock is held by a thread waiting for work, which would keep this one
        // from giving its memory back until the next job came.
        let waiting = match queue.try_lock() {
            Ok(queue) => queue.try_recv().ok(),
            Err(TryLockError::WouldBlock) => None,
            Err(TryLockError::Poisoned(_)) => return,
        };
        let next = match waiting {
            Some(next) => next,
            None => {
                // Idle now: the hashes' memory goes back to the system, not at the next login
                // (between two jobs of a storm it would only be taken again).
                if std::mem::take(&mut hashed_since_given_back) {
                    memory::give_back_unused();
                }
                // The lock is held only while waiting for the next job, never while hashing.
                let next = match queue.lock() {
                    Ok(queue) => queue.recv(),
                    Err(_) => return,
                };
                let Ok(next) = next else { return };
                next
            }
        };
        let (job, _permit) = next;
        // A panic in the hash must not take the thread (and its share of the pool) with it.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        hashed_since_given_back = true;
    }
}

/// The outcome of checking a password against a stored hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Mismatch,
    Matches,
    /// Matches, but the hash is legacy (bcrypt) or outdated: store a new one.
    MatchesOutdated,
}

fn check_now(password: &str, stored: &str) -> Check {
    if is_bcrypt(stored) {
        // bcrypt only ever verifies here: hashes of the original deployment.
        return match bcrypt::verify(password, stored) {
            Ok(true) => Check::MatchesOutdated,
            _ => Check::Mismatch,
        };
    }
    let Ok(parsed) = argon2::PasswordHash::new(stored) else {
        return Check::Mismatch;
    };
    if Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_err()
    {
        return Check::Mismatch;
    }
    let current = parsed.algorithm == argon2::Algorithm::Argon2id.ident()
        && argon2::Params::try_from(&parsed).is_ok_and(|p| {
            let current = argon2::Params::default();
            (p.m_cost(), p.t_cost(), p.p_cost())
                == (current.m_cost(), current.t_cost(), current.p_cost())
        });
    if current {
        Check::Matches
    } else {
        Check::MatchesOutdated
    }
}

/// `$2a$`, `$2b$`, `$2x$` or `$2y$`: a bcrypt hash.
fn is_bcrypt(stored: &str) -> bool {
    matches!(stored.get(..4), Some("$2a$" | "$2b$" | "$2x$" | "$2y$"))
}

fn hash_now(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| anyhow!("hashing failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn legacy_bcrypt_hashes_verify_and_ask_for_an_upgrade() {
        let hasher = PasswordHasher::new(2).expect("hasher");
        let legacy = bcrypt::hash("old password", 4).expect("bcrypt");
        assert_eq!(
            hasher
                .check("old password".into(), Some(legacy.clone()))
                .await
                .expect("check"),
            Check::MatchesOutdated
        );
        assert_eq!(
            hasher
                .check("wrong password".into(), Some(legacy))
                .await
                .expect("check"),
            Check::Mismatch
        );
        let current = hasher.hash("new password".into()).await.expect("hash");
        assert_eq!(
            hasher
                .check("new password".into(), Some(current))
                .await
                .expect("check"),
            Check::Matches
        );
        assert_eq!(
            hasher
                .check("x".into(), Some("not a hash".into()))
                .await
                .expect("check"),
            Check::Mismatch
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_runs_below_the_priority_of_the_async_workers() {
        let hasher = PasswordHasher::new(1).expect("hasher");
        let ours = scheduling_policy();
        let theirs = hasher.blocking(scheduling_policy).await.expect("job");
        assert_eq!(ours, libc::SCHED_OTHER);
        assert_eq!(theirs, libc::SCHED_IDLE);
    }

    /// The calling thread's scheduling policy: field 41 of `/proc/thread-self/stat`, the 39th
    /// after the command name's closing parenthesis.
    #[cfg(target_os = "linux")]
    fn scheduling_policy() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        let (_, fields) = stat.rsplit_once(')').expect("command name");
        let policy = fields.split_whitespace().nth(38).expect("policy field");
        policy.parse().expect("a number")
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let hasher = PasswordHasher::new(2).expect("hasher");
        let hash = hasher.hash("correct horse".into()).await.expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            hasher
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .expect("verify")
        );
        assert!(
            !hasher
                .verify("wrong horse".into(), Some(hash))
                .await
                .expect("verify")
        );
        assert!(
            !hasher
                .verify("not a real password".into(), None)
                .await
                .expect("verify")
        );
    }
}
