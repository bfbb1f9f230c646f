//! Password hashing with Argon2id (OWASP parameters: m = 19 MiB, t = 2, p = 1), computed on the
//! blocking pool under a semaphore so that a burst of logins never starves the async workers.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use argon2::{
    Argon2,
    password_hash::{PasswordHasher as _, PasswordVerifier as _},
};
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    /// Verified against when the email is unknown, so both failures cost the same time.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub fn new(concurrency: usize) -> anyhow::Result<Self> {
        let dummy_hash = hash_now("not a real password").context("computing the dummy hash")?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(concurrency)),
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
        let _permit = self.permits.acquire().await.context("hasher closed")?;
        tokio::task::spawn_blocking(work)
            .await
            .context("hashing task failed")
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
