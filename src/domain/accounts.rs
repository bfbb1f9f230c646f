//! Registration and login.

use serde::Deserialize;
use uuid::Uuid;

use crate::{
    AppState,
    error::{Error, Result},
    model::{User, UserId, now},
    store::NewUser,
};

const MAX_EMAIL_LEN: usize = 254;
const MIN_PASSWORD_LEN: usize = 8;
/// Bounds the work a single request can ask of the hasher.
const MAX_PASSWORD_LEN: usize = 1024;
const MAX_NAME_LEN: usize = 100;

#[derive(Debug, Deserialize)]
pub struct Registration {
    pub email: String,
    pub username: String,
    pub password: String,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

/// A signed-in user and their access token.
pub struct Session {
    pub token: String,
    pub user: User,
}

pub async fn register(state: &AppState, form: Registration) -> Result<Session> {
    let email = normalize_email(&form.email).ok_or_else(|| Error::invalid("email is not valid"))?;
    let username = form.username.trim();
    if !valid_username(username) {
        return Err(Error::invalid(
            "username must be 3 to 50 letters, digits or underscores",
        ));
    }
    check_password(&form.password)?;
    let name = form
        .name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NAME_LEN)
    {
        return Err(Error::invalid(format!(
            "name must be at most {MAX_NAME_LEN} characters"
        )));
    }
    let password_hash = state.hasher.hash(form.password).await?;
    let user = state
        .store
        .create_user(&NewUser {
            id: UserId(Uuid::now_v7()),
            email,
            username: username.to_owned(),
            name,
            password_hash,
            created_at: now(),
        })
        .await?;
    let token = state.tokens.issue(user.id)?;
    Ok(Session { token, user })
}

/// Unknown email and wrong password get the same answer after the same amount of hashing.
pub async fn login(state: &AppState, form: Credentials) -> Result<Session> {
    let found = match normalize_email(&form.email) {
        Some(email) => state.store.credentials_by_email(&email).await?,
        None => None,
    };
    let password = if form.password.len() > MAX_PASSWORD_LEN {
        String::new()
    } else {
        form.password
    };
    let (user, hash) = found.map_or((None, None), |(user, hash)| (Some(user), Some(hash)));
    let matches = state.hasher.verify(password, hash).await?;
    match user {
        Some(user) if matches => {
            let token = state.tokens.issue(user.id)?;
            Ok(Session { token, user })
        }
        _ => Err(Error::Unauthorized),
    }
}

/// Trimmed, lower-cased, and shaped like `local@domain`; `None` otherwise.
fn normalize_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let well_formed = !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && email.len() <= MAX_EMAIL_LEN
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    well_formed.then_some(email)
}

/// The app's own rule: `^[A-Za-z0-9_]{3,50}$`.
fn valid_username(username: &str) -> bool {
    (3..=50).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(Error::invalid(format!(
            "password must be at least {MIN_PASSWORD_LEN} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(Error::invalid(format!(
            "password must be at most {MAX_PASSWORD_LEN} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email("  Alice@Example.COM ").as_deref(),
            Some("alice@example.com")
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "a@b@c",
            "a b@c.d",
            "a@.com",
        ] {
            assert_eq!(normalize_email(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn usernames_follow_the_app_rule() {
        assert!(valid_username("alice_01"));
        for bad in ["al", "alice!", "élise", &"a".repeat(51)] {
            assert!(!valid_username(bad), "{bad:?}");
        }
    }
}
